/*
 * Reading DATA and BDAT message bytes. A scanner finds CR, LF and NUL 16
 * bytes at a time and keeps the rules of RFC 5321: DATA ends only at CRLF
 * "." CRLF (the start of the data counting as after a CRLF); a bare CR or
 * bare LF never ends a line and is flagged (the session refuses the message
 * with 550 5.5.2), so none of the SMTP-smuggling variants (LF.LF, CR.CR,
 * LF.CRLF, CRLF.LF, CR.CRLF, ...) ends the data early; NUL bytes and lines
 * over 1000 octets are flagged too. The result never depends on how the
 * input was split.
 *
 * The DATA reader stores a message in its transmitted form: the bytes as
 * received (CRLF, dot-stuffed) are moved out of the session's input buffer
 * to a sink (the spool writer), not copied; only the final ".\r\n" stays
 * out. A client that sent a line starting with a single "." followed by
 * something else (a dot that is not stuffing: RFC 5321 §4.5.2 says to drop
 * it) gets the dot dropped, and the rest of its message decoded and copied,
 * so what is stored is always the content stuffed again the standard way.
 * BDAT bytes are not stuffed: the BDAT reader checks them the same way and
 * copies them to the sink, which stuffs them.
 */
#ifndef TERN_PROTO_DATA_H
#define TERN_PROTO_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

struct evbuffer;

#define SMTP_TEXT_LINE_MAX 1000 /* RFC 5321 §4.5.3.1.6, including CRLF */

enum smtp_data_mode { SMTP_DATA_DOT, SMTP_DATA_BDAT };

/* ---- the scanner ---- */

struct smtp_scan {
    enum smtp_data_mode mode;
    int state;        /* private */
    size_t line_len;  /* octets in the current line so far, without CRLF */
    uint64_t pos;     /* input bytes consumed */
    uint64_t settled; /* of which decided: all but a "." or "." CR at a line start */
    uint64_t content; /* content octets among the settled bytes (what SIZE counts) */
    bool bad_eol;     /* a bare CR or bare LF was seen */
    bool too_long;    /* a line over SMTP_TEXT_LINE_MAX (with CRLF) was seen */
    bool has_nul;     /* a NUL byte was seen */
    bool ended;       /* DATA mode: CRLF "." CRLF was consumed */
};

enum smtp_scan_stop {
    SMTP_SCAN_MORE,  /* all of the input was consumed */
    SMTP_SCAN_STRAY, /* (without out) a dot to drop at settled - 1; go on at pos */
    SMTP_SCAN_END,   /* the end of data: ".\r\n" at [settled, pos) */
};

void smtp_scan_init(struct smtp_scan *sc, enum smtp_data_mode mode);

/* Scan the len bytes of in, which come at position sc->pos of the input.
 * Without out, only counts and checks, and stops at a stray dot (whose
 * lookahead is then not consumed: pos may even step back over a CR). With
 * out (room for len + 1 bytes), writes the content (dots of stuffing and
 * stray dots dropped) to out and its length to *out_n, and never stops at a
 * stray dot. Stops at the end of data. */
enum smtp_scan_stop smtp_scan_feed(
    struct smtp_scan *sc, const char *in, size_t len, char *out, size_t *out_n);

/* BDAT: after the LAST chunk. A message must end with CRLF: true when it
 * does not (CRLF must be appended; content counts it). */
bool smtp_scan_finish_bdat(struct smtp_scan *sc);

/* ---- reading from the session's input buffer ---- */

/* Where the bytes of a message go. */
struct smtp_data_sink {
    /* Take the first n bytes of src: transmitted form (CRLF, dot-stuffed),
     * content of them are message content. Must remove them from src. */
    void (*stuffed)(void *arg, struct evbuffer *src, size_t n, uint64_t content);
    /* n bytes of message content (not stuffed), to be copied. */
    void (*plain)(void *arg, const char *p, size_t n);
    void *arg;
};

struct smtp_data_reader {
    struct smtp_scan sc;
    uint64_t base;  /* scanner position of the first byte of the input buffer */
    uint64_t given; /* content handed to the sink as stuffed bytes */
    bool copying;   /* a stray dot was seen: the rest is decoded and copied */
    char *tmp;      /* owned: decoded bytes while copying */
};

void smtp_data_reader_init(struct smtp_data_reader *r, enum smtp_data_mode mode);
void smtp_data_reader_fini(struct smtp_data_reader *r);

/* DATA: scan what the input buffer holds and hand what is decided to the
 * sink. Bytes in the buffer's last chain stay until the chain is full or
 * the data ends (so the sink never gets a mostly empty chain), as does a
 * "." or "." CR at a line start until it is known what it is. Returns true
 * once the data has ended: the terminator was drained and the rest of in
 * is the next command. *used: input bytes scanned by this call. */
bool smtp_data_read(struct smtp_data_reader *r, struct evbuffer *in,
    const struct smtp_data_sink *sink, uint64_t *used);

/* BDAT: scan and hand to the sink (plain) at most max bytes of in: the
 * rest of a chunk. Returns how many were taken (and drained). */
size_t smtp_bdat_read(struct smtp_data_reader *r, struct evbuffer *in, uint64_t max,
    const struct smtp_data_sink *sink);
/* BDAT: after the LAST chunk; appends CRLF when the message lacks it. */
void smtp_bdat_finish(struct smtp_data_reader *r, const struct smtp_data_sink *sink);

/* ---- the rest ---- */

/* The deadline of a data transfer after bytes more arrived at now_ms (all
 * times in ms): each byte extends it by 1/min_rate seconds (Postfix's
 * smtpd_min_data_rate), but never beyond max_ahead_ms from now, so a fast
 * burst cannot bank time for a later trickle. */
int64_t smtp_data_deadline(
    int64_t deadline_ms, int64_t now_ms, uint64_t bytes, uint32_t min_rate, int64_t max_ahead_ms);

/* Encode for sending with DATA: add dot-stuffing. at_line_start tracks the
 * position between calls (start true). Appends to out. */
void smtp_data_stuff(const char *in, size_t len, bool *at_line_start, struct buf *out);

/* ---- the end of the header section ---- */

/* Finds the first empty line of a message (RFC 5322 §2.1) in a stream, as
 * the DKIM signer does. */
struct hdr_scan {
    int st;
    bool done; /* the empty line was seen */
};
void hdr_scan_feed(struct hdr_scan *h, const char *p, size_t n);
/* The same over the first n bytes of an evbuffer (not drained). */
void hdr_scan_feed_evbuffer(struct hdr_scan *h, struct evbuffer *src, size_t n);

#endif

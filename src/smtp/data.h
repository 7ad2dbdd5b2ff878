/*
 * The DATA / BDAT decoder: a streaming state machine fed with whatever the
 * socket delivered. In DATA mode it removes dot-stuffing (RFC 5321 §4.5.2)
 * and finds the end of data, which is only ever CRLF "." CRLF (the start of
 * the data counting as after a CRLF). Bare CR or bare LF never end a line:
 * they are flagged (the session then refuses the message with 550 5.5.2), so
 * none of the SMTP-smuggling variants (LF.LF, CR.CR, LF.CRLF, CRLF.LF,
 * CR.CRLF, ...) can end the data early. In BDAT mode the bytes are passed
 * through unchanged with the same checks. The decoder keeps no copy of the
 * message: decoded bytes are appended to the caller's buffer.
 */
#ifndef TERN_SMTP_DATA_H
#define TERN_SMTP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define SMTP_TEXT_LINE_MAX 1000 /* RFC 5321 §4.5.3.1.6, including CRLF */

enum smtp_data_mode { SMTP_DATA_DOT, SMTP_DATA_BDAT };

struct smtp_data_dec {
    enum smtp_data_mode mode;
    int state;          /* private */
    size_t line_len;    /* octets in the current line so far, without CRLF */
    uint64_t out_bytes; /* decoded bytes produced so far */
    bool bad_eol;       /* a bare CR or bare LF was seen */
    bool too_long;      /* a line over SMTP_TEXT_LINE_MAX (with CRLF) was seen */
    bool has_nul;       /* a NUL byte was seen */
    bool ended;         /* DATA mode: the terminating CRLF.CRLF was consumed */
};

void smtp_data_init(struct smtp_data_dec *d, enum smtp_data_mode mode);

/* Feed len bytes. Decoded message bytes are appended to out (CRLF line ends
 * as received, the terminator and stuffing dots removed). Returns the number
 * of input bytes consumed: all of them unless the end of data was reached
 * (DATA mode), in which case d->ended is set and the rest of the input
 * belongs to the next command. -1 only if out cannot grow. */
long smtp_data_feed(struct smtp_data_dec *d, const char *in, size_t len, struct buf *out);

/* BDAT mode: call after the LAST chunk. A message must end with CRLF: when
 * it does not, CRLF is appended to out (returns true if it did). */
bool smtp_data_finish_bdat(struct smtp_data_dec *d, struct buf *out);

/* The deadline of a data transfer after bytes more arrived at now_ms (all
 * times in ms): each byte extends it by 1/min_rate seconds (Postfix's
 * smtpd_min_data_rate), but never beyond max_ahead_ms from now, so a fast
 * burst cannot bank time for a later trickle. */
int64_t smtp_data_deadline(
    int64_t deadline_ms, int64_t now_ms, uint64_t bytes, uint32_t min_rate, int64_t max_ahead_ms);

/* Encode for sending with DATA: add dot-stuffing. at_line_start tracks the
 * position between calls (start true). Appends to out; -1 if out cannot grow. */
int smtp_data_stuff(const char *in, size_t len, bool *at_line_start, struct buf *out);

/* ---- the end of the header section ---- */

/* Finds the first empty line of a message (RFC 5322 §2.1) in a stream, as
 * the DKIM signer does. */
struct hdr_scan {
    int st;
    bool done; /* the empty line was seen */
};
void hdr_scan_feed(struct hdr_scan *h, const char *p, size_t n);

#endif

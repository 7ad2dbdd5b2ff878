/*
 * Message injection for tern-sendmail: the pure parts, kept apart from the
 * command so tests can call them. A streaming stdin reader (LF or CRLF in,
 * CRLF out, sendmail's lone-dot end), the header pass (-t recipients from
 * To/Cc/Bcc, Bcc removed, missing Date/Message-ID/From added), an RFC 5322
 * address-list parser and the SMTP reply-line parser. All sizes are bounded.
 */
#ifndef TERN_PROTO_INJECT_H
#define TERN_PROTO_INJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "util/buf.h"

#define INJECT_MSG_MAX        (256u * 1024 * 1024) /* bytes read from stdin */
#define INJECT_HEADER_MAX     (1024u * 1024)       /* the whole header section */
#define INJECT_FIELDS_MAX     1000                 /* header fields */
#define INJECT_FIELD_MAX      (64u * 1024)         /* one field, folded */
#define INJECT_ADDR_MAX       998                  /* one address */
#define INJECT_RCPTS_MAX      1000                 /* recipients of one message */
#define INJECT_REPLY_LINES    100                  /* lines of one SMTP reply */
#define INJECT_REPLY_LINE_MAX 2048

/* A list of distinct addresses (exact comparison); strings owned. */
struct inject_addrs {
    char **v;
    size_t n, cap;
};
void inject_addrs_fini(struct inject_addrs *a);
/* Add a copy of s[len] unless already present. 0 ok, -1 when the list is
 * full (INJECT_RCPTS_MAX) or the address is empty or too long. */
int inject_addrs_add(struct inject_addrs *a, const char *s, size_t len);

/* Parse an RFC 5322 address-list (the unfolded value of To/Cc/Bcc):
 * mailboxes "a@b", "Name <a@b>", "\"Doe, J\" <a@b>", comments in
 * parentheses, groups "team: a@b, c@d;" (empty groups allowed), obsolete
 * source routes in <...> dropped. Bare addresses are appended to out
 * (quoted local parts kept as written). 0 ok, -1 with a reason in err. */
int inject_parse_addrlist(const char *s, size_t len, struct inject_addrs *out, struct buf *err);

/* Streaming reader of the message on stdin. */
struct inject_reader {
    struct buf out;  /* the message so far, CRLF line ends */
    struct buf line; /* the current unfinished line */
    bool dot_ends;   /* a line with a single "." ends the input (no -i) */
    size_t max;
};
void inject_reader_init(struct inject_reader *r, bool dot_ends, size_t max);
void inject_reader_fini(struct inject_reader *r);
/* Feed n bytes: 0 want more, 1 the ending "." line was seen (stop reading;
 * the rest is ignored), -1 the message exceeds max. */
int inject_reader_feed(struct inject_reader *r, const char *p, size_t n);
/* At EOF: finish a last line without line end. 0, or -1 over max. */
int inject_reader_finish(struct inject_reader *r);

struct inject_opts {
    bool extract_rcpts;    /* -t: recipients from To, Cc and Bcc */
    const char *from_addr; /* for an added From: header */
    const char *date;      /* for an added Date: header (inject_fmt_date) */
    const char *msgid;     /* for an added Message-ID: header, with <> */
};

struct inject_info {
    bool hdr_8bit;  /* a header has a byte >= 0x80 (SMTPUTF8 needed) */
    bool body_8bit; /* the body has a byte >= 0x80 (BODY=8BITMIME) */
};

/* Build the message to send from msg[len] (CRLF lines, from the reader):
 * drops a leading mbox "From " line, removes Bcc, adds missing Date,
 * Message-ID and From at the end of the header, and with extract_rcpts
 * appends the addresses of To/Cc/Bcc to rcpts. A first line that is not a
 * header field starts the body (a blank line is inserted before it).
 * 0 ok, -1 with a reason in err (header too large, bad address list...). */
int inject_build(const struct inject_opts *o, const char *msg, size_t len, struct buf *out,
    struct inject_addrs *rcpts, struct inject_info *info, struct buf *err);

/* RFC 5322 §3.3 date-time of t in local time: "Tue, 01 Jul 2025 12:34:56 +0200". */
void inject_fmt_date(time_t t, char *out, size_t cap);
/* Has s[len] any byte >= 0x80? */
bool inject_has_8bit(const char *s, size_t len);

/* One SMTP reply line (without CRLF): "250-text" or "250 text" or "250".
 * Sets *code (200..599) and *more (a continuation follows). 0, or -1 when
 * the line is malformed. */
int inject_reply_line(const char *line, size_t len, int *code, bool *more);

#endif

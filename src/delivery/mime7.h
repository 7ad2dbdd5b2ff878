/*
 * Private to src/delivery: the message text as the client sends it. A
 * scanner for the end of the header section, and the conversion of an
 * 8-bit MIME message to 7 bit for a next hop without 8BITMIME (RFC 6152
 * §3): each leaf part whose body holds 8-bit octets (or NUL, or lines over
 * 998 octets) is re-encoded as quoted-printable (text) or base64 (anything
 * else) (RFC 2045 §6.7, §6.8) under a new Content-Transfer-Encoding,
 * walking multipart (RFC 2046 §5.1) and message/rfc822 (§5.2.1) entities
 * to a bounded depth; containers labelled 8bit or binary are relabelled
 * 7bit, 8-bit octets of preambles and epilogues (which readers ignore)
 * become '?'. Header fields are left as they are: 8-bit header fields
 * cannot be converted (that needs SMTPUTF8, RFC 6532).
 *
 * The converter is pure and streaming: fed the stored message in chunks of
 * any size, it hands its output to a callback, with bounded memory (one
 * entity's header section, the boundaries in force, one line piece). It
 * runs twice over the same bytes: MIME7_SCAN learns which leaves need
 * re-encoding (the plan), MIME7_CONVERT then writes the converted form.
 */
#ifndef TERN_DELIVERY_MIME7_H
#define TERN_DELIVERY_MIME7_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/data.h" /* struct hdr_scan */
#include "util/buf.h"

/* ---- 8-bit to 7-bit conversion ---- */

#define MIME7_DEPTH_MAX  32           /* nested multipart and message entities */
#define MIME7_HEADER_MAX (256 * 1024) /* one entity's header section */
#define MIME7_LEAVES_MAX 100000       /* leaf parts of one message */

/* What MIME7_SCAN learnt, for MIME7_CONVERT over the same bytes. */
struct mime7_plan {
    uint8_t *bits; /* owned: per leaf, MIME7_NEEDS and MIME7_UTF8 */
    size_t n_leaves, cap;
    bool needed; /* anything to change at all */
};
#define MIME7_NEEDS 1 /* the leaf must be re-encoded */
#define MIME7_UTF8  2 /* its body is well-formed UTF-8 (the charset when none is named) */
#define MIME7_MASK  4 /* lossy: its 8-bit octets become '?' (it may not be encoded) */

void mime7_plan_fini(struct mime7_plan *p);

enum mime7_mode { MIME7_SCAN, MIME7_CONVERT };
typedef void (*mime7_out_fn)(const char *p, size_t n, void *arg);

struct mime7;
/* A converter over one message. plan is borrowed (filled by SCAN, read by
 * CONVERT) until mime7_free; out gets the converted form (CONVERT only). */
struct mime7 *mime7_new(enum mime7_mode mode, struct mime7_plan *plan, mime7_out_fn out, void *arg);
/* SCAN of a message whose content may be damaged rather than returned (a
 * DSN, which is never bounced): 8-bit octets of a part that may not be
 * encoded become '?' instead of failing the conversion. */
void mime7_lossy(struct mime7 *m);
/* Feed message bytes (CRLF line ends, not dot-stuffed). -1 when the
 * message cannot be converted (mime7_error says why); later calls do
 * nothing. */
int mime7_feed(struct mime7 *m, const char *p, size_t n);
/* End of the message: flush everything. 0 or -1 as mime7_feed. */
int mime7_end(struct mime7 *m);
const char *mime7_error(const struct mime7 *m); /* static text, or NULL */
void mime7_free(struct mime7 *m);               /* NULL fine */

#endif

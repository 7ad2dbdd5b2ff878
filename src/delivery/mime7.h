/*
 * Private to src/delivery: the message text as the client sends it. A
 * scanner for the end of the header section, and the conversion of an
 * 8-bit MIME message to 7 bit for a next hop without 8BITMIME (RFC 6152
 * §3): each leaf part whose body holds 8-bit octets is re-encoded as
 * quoted-printable (text) or base64 (anything else) (RFC 2045 §6.7, §6.8),
 * walking multipart (RFC 2046 §5.1) and message/rfc822 (§5.2.1) entities
 * to a bounded depth. The converter is pure and streaming: it is fed the
 * stored message in any chunks and hands its output to a callback, with
 * bounded memory (one entity's header section, the boundaries in force,
 * one line). It runs twice over the same bytes: once to learn which leaves
 * hold 8-bit octets (the plan), then to write the converted form.
 */
#ifndef TERN_DELIVERY_MIME7_H
#define TERN_DELIVERY_MIME7_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* ---- the end of the header section ---- */

/* Finds the first empty line of a message (RFC 5322 §2.1) in a stream, as
 * the DKIM signer does. */
struct hdr_scan {
    int st;
    bool done; /* the empty line was seen */
};
void hdr_scan_feed(struct hdr_scan *h, const char *p, size_t n);

#endif

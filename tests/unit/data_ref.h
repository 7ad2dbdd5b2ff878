/*
 * The byte-at-a-time DATA / BDAT decoder that tern used before the scanner
 * (src/proto/data.c), kept only as the reference of the differential tests
 * (tests/unit/test_data.c, tests/fuzz/fuzz_data_diff.c): a streaming state
 * machine that removes dot-stuffing (RFC 5321 §4.5.2), finds the end of data
 * (only CRLF "." CRLF, the start of the data counting as after a CRLF) and
 * flags bare CR or LF, NUL bytes and lines over 1000 octets. In BDAT mode
 * the bytes pass through unchanged with the same checks.
 */
#ifndef TERN_TEST_DATA_REF_H
#define TERN_TEST_DATA_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/data.h"
#include "util/buf.h"

struct ref_data_dec {
    enum smtp_data_mode mode;
    int state;          /* private */
    size_t line_len;    /* octets in the current line so far, without CRLF */
    uint64_t out_bytes; /* decoded bytes produced so far */
    bool bad_eol;       /* a bare CR or bare LF was seen */
    bool too_long;      /* a line over SMTP_TEXT_LINE_MAX (with CRLF) was seen */
    bool has_nul;       /* a NUL byte was seen */
    bool ended;         /* DATA mode: the terminating CRLF.CRLF was consumed */
};

void ref_data_init(struct ref_data_dec *d, enum smtp_data_mode mode);

/* Feed len bytes. Decoded message bytes are appended to out (CRLF line ends
 * as received, the terminator and stuffing dots removed). Returns the number
 * of input bytes consumed: all of them unless the end of data was reached
 * (DATA mode), in which case d->ended is set and the rest of the input
 * belongs to the next command. -1 only if out cannot grow. */
long ref_data_feed(struct ref_data_dec *d, const char *in, size_t len, struct buf *out);

/* BDAT mode: call after the LAST chunk. A message must end with CRLF: when
 * it does not, CRLF is appended to out (returns true if it did). */
bool ref_data_finish_bdat(struct ref_data_dec *d, struct buf *out);

/* Stuff content the way the decoder reads it back: a "." at the start of
 * the data or right after CRLF is doubled. *bol (start 1) carries the
 * position between calls: 0 inside a line, 1 at a line start, 2 after a CR.
 * Appends to out. */
void ref_restuff(const char *in, size_t len, int *bol, struct buf *out);

/* ---- the differential test: reader against reference ---- */

/* What became of one input. */
struct ref_outcome {
    bool ended, bad_eol, too_long, has_nul;
    size_t consumed;   /* input bytes taken (DATA: up to the end of data) */
    uint64_t content;  /* message content (what SIZE counts) */
    struct buf stored; /* the message as stored: content stuffed again */
};

/* The reference: decoded in one piece (BDAT: then finished), the output
 * stuffed with ref_restuff. */
void ref_outcome_reference(
    enum smtp_data_mode mode, const char *in, size_t len, struct ref_outcome *o);

/* The reader of src/proto/data.c, fed as a session feeds it: the input
 * arrives in pieces ending at cuts[0..ncuts) (ascending, < len) and len;
 * bit i of layout says whether piece i is added to the input buffer as
 * chains of its own or appended into the last one; the reader runs after
 * each piece (DATA: until the end of data). BDAT: one chunk, or a new chunk
 * at every cut when layout bit 31 is set. Returns NULL, or what broke of the
 * reader's own promises (bytes handed over whole, the last chain kept). */
const char *ref_outcome_reader(enum smtp_data_mode mode, const char *in, size_t len,
    const size_t *cuts, size_t ncuts, uint32_t layout, struct ref_outcome *o);

/* NULL when the reader's outcome r agrees with the reference's ref (flags,
 * consumed bytes, content size, and the stored bytes: all of them once DATA
 * has ended or BDAT is finished, a prefix before), else what differs. */
const char *ref_outcome_compare(
    enum smtp_data_mode mode, const struct ref_outcome *ref, const struct ref_outcome *r);

void ref_outcome_fini(struct ref_outcome *o);

#endif

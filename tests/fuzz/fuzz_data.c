/*
 * libFuzzer target: the reference DATA/BDAT decoder (tests/unit/data_ref.c,
 * what fuzz_data_diff holds the reader to) and the dot-stuffing encoder.
 * Byte 0 picks the mode, bytes 1..4 seed the split points, the rest is the
 * payload. Invariants (abort on violation): chunked and one-shot decoding
 * agree; output never exceeds the input consumed; without bad_eol the output
 * has only CRLF line ends; the data ends only just after CRLF "." CRLF (or
 * ".\r\n" at the very start); flags match a recount of the output; stuffed
 * content always ends exactly at the terminator appended after it and, when
 * CRLF-only, decodes back to itself.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data_ref.h"
#include "fuzz_check.h"
#include "proto/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
    struct ref_data_dec d;
    struct buf out;
    size_t consumed;
};

static uint32_t
next_rand(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

/* seed 0 means one shot. */
static void
decode(enum smtp_data_mode mode, const char *in, size_t len, uint32_t seed, struct run *r)
{
    size_t pos = 0;
    uint32_t maxc = seed % 67 + 1;
    ref_data_init(&r->d, mode);
    buf_init(&r->out);
    r->consumed = 0;
    do {
        size_t chunk = seed ? 1 + next_rand(&seed) % maxc : len - pos;
        long n;
        if (chunk > len - pos)
            chunk = len - pos;
        n = ref_data_feed(&r->d, in + pos, chunk, &r->out);
        CHECK(n >= 0 && (size_t)n <= chunk);
        r->consumed += (size_t)n;
        if (r->d.ended)
            break;
        CHECK((size_t)n == chunk);
        pos += chunk;
    } while (pos < len);
}

static void
check_same(const struct run *a, const struct run *b)
{
    CHECK(a->consumed == b->consumed);
    CHECK(a->out.len == b->out.len);
    CHECK(a->out.len == 0 || memcmp(a->out.data, b->out.data, a->out.len) == 0);
    CHECK(a->d.ended == b->d.ended && a->d.bad_eol == b->d.bad_eol);
    CHECK(a->d.too_long == b->d.too_long && a->d.has_nul == b->d.has_nul);
    CHECK(a->d.line_len == b->d.line_len && a->d.out_bytes == b->d.out_bytes);
}

static void
check_output(const struct run *r, const char *in)
{
    const char *o = r->out.data;
    size_t n = r->out.len, i, seg = 0, maxline = 0;

    CHECK(r->d.out_bytes == n);
    CHECK(n <= r->consumed); /* never more bytes out than came in */
    CHECK(o[n] == '\0');
    CHECK(r->d.has_nul == (memchr(o, '\0', n) != NULL));
    if (!r->d.bad_eol) {
        for (i = 0; i < n; i++) {
            if (o[i] == '\n')
                CHECK(i > 0 && o[i - 1] == '\r');
            if (o[i] == '\r')
                CHECK((i + 1 < n && o[i + 1] == '\n') || (i + 1 == n && !r->d.ended));
        }
    }
    /* Recount line lengths: only CRLF ends a line; a final CR is pending. */
    for (i = 0; i < n; i++) {
        if (o[i] == '\r' && i + 1 < n && o[i + 1] == '\n') {
            maxline = seg > maxline ? seg : maxline;
            seg = 0;
            i++;
        } else {
            seg++;
        }
    }
    if (n > 0 && o[n - 1] == '\r')
        seg--; /* the CR still waiting for its LF is not counted yet */
    maxline = seg > maxline ? seg : maxline;
    CHECK(r->d.too_long == (maxline > SMTP_TEXT_LINE_MAX - 2));
    if (r->d.ended) {
        /* Ends only right after CRLF "." CRLF, or ".\r\n" at the very start. */
        CHECK(r->consumed >= 3 && memcmp(in + r->consumed - 3, ".\r\n", 3) == 0);
        CHECK(
            r->consumed == 3 || (r->consumed >= 5 && memcmp(in + r->consumed - 5, "\r\n", 2) == 0));
        CHECK(n == 0 || (n >= 2 && o[n - 2] == '\r' && o[n - 1] == '\n'));
    }
}

/* stuff(m) + [CRLF] + ".\r\n" must end exactly at the end, whatever m is. */
static void
check_stuff(const char *m, size_t len, bool crlf_only, uint32_t seed)
{
    struct buf wire = BUF_INIT;
    struct run r;
    bool bol = true;
    size_t cut = len ? seed % (len + 1) : 0;
    bool need_crlf = len > 0 && !(len >= 2 && m[len - 2] == '\r' && m[len - 1] == '\n');

    smtp_data_stuff(m, cut, &bol, &wire);
    smtp_data_stuff(m + cut, len - cut, &bol, &wire);
    if (need_crlf)
        buf_append(&wire, "\r\n", 2);
    buf_append(&wire, ".\r\n", 3);
    decode(SMTP_DATA_DOT, wire.data, wire.len, seed, &r);
    CHECK(r.d.ended && r.consumed == wire.len);
    if (crlf_only && !need_crlf) {
        CHECK(!r.d.bad_eol);
        CHECK(r.out.len == len && (len == 0 || memcmp(r.out.data, m, len) == 0));
    }
    buf_fini(&r.out);
    buf_fini(&wire);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum smtp_data_mode mode;
    uint32_t seed;
    const char *in;
    size_t len;
    struct run one, chunked;

    if (size < 5)
        return 0;
    mode = (data[0] & 1) ? SMTP_DATA_BDAT : SMTP_DATA_DOT;
    seed = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 |
           (uint32_t)data[4] << 24;
    seed |= 1;
    in = (const char *)data + 5;
    len = size - 5;

    decode(mode, in, len, 0, &one);
    decode(mode, in, len, seed, &chunked);
    check_same(&one, &chunked);
    check_output(&one, in);
    if (mode == SMTP_DATA_BDAT) {
        CHECK(!one.d.ended && one.consumed == len && one.out.len == len);
        CHECK(len == 0 || memcmp(one.out.data, in, len) == 0);
        (void)ref_data_finish_bdat(&one.d, &one.out);
        CHECK(one.out.len == 0 ||
              (one.out.len >= 2 && memcmp(one.out.data + one.out.len - 2, "\r\n", 2) == 0));
        /* The payload itself as message content: stuffing must protect it. */
        check_stuff(in, len, !one.d.bad_eol, seed);
    } else if (one.d.ended) {
        check_stuff(one.out.data, one.out.len, !one.d.bad_eol, seed);
    }
    buf_fini(&one.out);
    buf_fini(&chunked.out);
    return 0;
}

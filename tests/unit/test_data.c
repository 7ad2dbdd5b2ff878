/*
 * Unit tests for the DATA/BDAT reader and the dot-stuffing encoder. The
 * tables say what the byte-at-a-time reference decoder (data_ref.c) makes
 * of each input, decoded in one piece, byte by byte and at every 2-way
 * split; the reader (src/proto/data.c) must agree with the reference on
 * every input and split: the same verdict, content size and consumed bytes,
 * and as stored bytes the reference's output stuffed again. The 2023
 * SMTP-smuggling variants must never end the data. The reader moves whole
 * chains of the input buffer and keeps the last one until it is full.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <event2/buffer.h>

#include "data_ref.h"
#include "proto/data.h"
#include "util/util.h"

#define S(lit) lit, sizeof(lit) - 1
#define ALL    ((size_t)-1)

struct result {
    struct ref_data_dec d;
    struct buf out;
    size_t consumed;
};

/* Feed in[0..len) in chunks ending at the given cut points (ascending, < len). */
static void
decode_cuts(enum smtp_data_mode mode, const char *in, size_t len, const size_t *cuts, size_t ncuts,
    struct result *r)
{
    size_t pos = 0, k;
    ref_data_init(&r->d, mode);
    buf_init(&r->out);
    r->consumed = 0;
    for (k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        long n = ref_data_feed(&r->d, in + pos, end - pos, &r->out);
        assert_true(n >= 0);
        assert_true((size_t)n <= end - pos);
        r->consumed += (size_t)n;
        if (r->d.ended) {
            /* Nothing more is taken once the data has ended. */
            assert_int_equal(
                ref_data_feed(&r->d, in + pos + (size_t)n, len - pos - (size_t)n, &r->out), 0);
            return;
        }
        assert_int_equal((size_t)n, end - pos);
        pos = end;
    }
}

static void
assert_same(const struct result *a, const struct result *b)
{
    assert_int_equal(a->consumed, b->consumed);
    assert_int_equal(a->out.len, b->out.len);
    if (a->out.len)
        assert_memory_equal(a->out.data, b->out.data, a->out.len);
    assert_int_equal(a->d.ended, b->d.ended);
    assert_int_equal(a->d.bad_eol, b->d.bad_eol);
    assert_int_equal(a->d.too_long, b->d.too_long);
    assert_int_equal(a->d.has_nul, b->d.has_nul);
    assert_int_equal(a->d.line_len, b->d.line_len);
    assert_int_equal(a->d.state, b->d.state);
    assert_true(a->d.out_bytes == b->d.out_bytes);
}

/* The reader fed in[0..len) in pieces ending at cuts[] agrees with the
 * reference. */
static void
reader_cuts(enum smtp_data_mode mode, const char *in, size_t len, const size_t *cuts, size_t ncuts,
    uint32_t layout, const struct ref_outcome *ref)
{
    struct ref_outcome r;
    const char *err = ref_outcome_reader(mode, in, len, cuts, ncuts, layout, &r);
    if (err == NULL)
        err = ref_outcome_compare(mode, ref, &r);
    if (err != NULL)
        fail_msg("reader: %s (len %zu, %zu cuts, layout %x)", err, len, ncuts, layout);
    ref_outcome_fini(&r);
}

/* The reader in one piece, byte by byte, and at every 2-way split (at most
 * max of them), each with the pieces in chains of their own and appended
 * into one, agrees with the reference. */
static void
reader_all_ways(enum smtp_data_mode mode, const char *in, size_t len, size_t max)
{
    static const uint32_t layouts[] = { 0, 0x7fffffff, 0x55555555, 0xaaaaaaaa | 1u << 31 };
    struct ref_outcome ref;
    size_t *cuts = xcalloc(len + 1, sizeof(*cuts));
    size_t step = len / max + 1;
    ref_outcome_reference(mode, in, len, &ref);
    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    for (size_t k = 0; k < TERN_ARRAY_LEN(layouts); k++) {
        reader_cuts(mode, in, len, NULL, 0, layouts[k], &ref);
        reader_cuts(mode, in, len, cuts, len > 0 ? len - 1 : 0, layouts[k], &ref);
        for (size_t i = 1; i < len; i += step)
            reader_cuts(mode, in, len, &i, 1, layouts[k], &ref);
    }
    ref_outcome_fini(&ref);
    free(cuts);
}

/* One-shot, byte-by-byte and every 2-way split must agree; returns one-shot.
 * The reader must agree with it all ways. */
static void
decode_all_ways(enum smtp_data_mode mode, const char *in, size_t len, struct result *one)
{
    struct result r;
    size_t *cuts = xcalloc(len + 1, sizeof(*cuts)), i;

    decode_cuts(mode, in, len, NULL, 0, one);
    assert_true(one->d.out_bytes == one->out.len);
    for (i = 1; i < len; i++)
        cuts[i - 1] = i;
    decode_cuts(mode, in, len, cuts, len > 0 ? len - 1 : 0, &r);
    assert_same(one, &r);
    buf_fini(&r.out);
    for (i = 0; i <= len; i++) {
        size_t cut = i;
        decode_cuts(mode, in, len, &cut, i < len ? 1 : 0, &r);
        assert_same(one, &r);
        buf_fini(&r.out);
    }
    free(cuts);
    reader_all_ways(mode, in, len, SIZE_MAX / 2);
}

struct data_case {
    const char *name;
    const char *in;
    size_t len;
    const char *out;
    size_t out_len;
    size_t consumed; /* ALL: the whole input */
    bool ended, bad_eol, too_long, has_nul;
};

static void
run_cases(const struct data_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct result r;
        print_message("case %s\n", cases[i].name);
        decode_all_ways(SMTP_DATA_DOT, cases[i].in, cases[i].len, &r);
        assert_int_equal(r.consumed, cases[i].consumed == ALL ? cases[i].len : cases[i].consumed);
        assert_int_equal(r.out.len, cases[i].out_len);
        assert_memory_equal(r.out.data, cases[i].out, cases[i].out_len);
        assert_int_equal(r.out.data[r.out.len], '\0');
        assert_int_equal(r.d.ended, cases[i].ended);
        assert_int_equal(r.d.bad_eol, cases[i].bad_eol);
        assert_int_equal(r.d.too_long, cases[i].too_long);
        assert_int_equal(r.d.has_nul, cases[i].has_nul);
        buf_fini(&r.out);
    }
}

static void
test_data_basic(void **state)
{
    static const struct data_case cases[] = {
        { "simple", S("Subject: x\r\n\r\nbody\r\n.\r\n"), S("Subject: x\r\n\r\nbody\r\n"), ALL,
            true, false, false, false },
        { "empty message", S(".\r\n"), S(""), ALL, true, false, false, false },
        { "empty then command", S(".\r\nQUIT\r\n"), S(""), 3, true, false, false, false },
        { "trailing bytes", S("x\r\n.\r\nMAIL FROM:<a@b>\r\n"), S("x\r\n"), 6, true, false, false,
            false },
        { "pipelined terminator twice", S("x\r\n.\r\n.\r\n"), S("x\r\n"), 6, true, false, false,
            false },
        { "blank lines", S("\r\n\r\n.\r\n"), S("\r\n\r\n"), ALL, true, false, false, false },
        { "dot stuffed", S("..foo\r\n.\r\n"), S(".foo\r\n"), ALL, true, false, false, false },
        { "dot stuffed lines", S("a\r\n..\r\n...x\r\n.\r\n"), S("a\r\n.\r\n..x\r\n"), ALL, true,
            false, false, false },
        { "unstuffed dot line", S(".foo\r\n.\r\n"), S("foo\r\n"), ALL, true, false, false, false },
        { "dot mid-line", S("a.b\r\n a.\r\n.\r\n"), S("a.b\r\n a.\r\n"), ALL, true, false, false,
            false },
        { "no end yet", S("abc\r\n"), S("abc\r\n"), ALL, false, false, false, false },
        { "no end, pending cr", S("abc\r"), S("abc\r"), ALL, false, false, false, false },
        { "no end, pending dot", S("abc\r\n."), S("abc\r\n"), ALL, false, false, false, false },
        { "no end, pending dot cr", S("abc\r\n.\r"), S("abc\r\n"), ALL, false, false, false,
            false },
        { "nothing", S(""), S(""), ALL, false, false, false, false },
        { "nul", S("a\0b\r\n.\r\n"), S("a\0b\r\n"), ALL, true, false, false, true },
        { "bare cr before crlf", S("a\r\r\n.\r\n"), S("a\r\r\n"), ALL, true, true, false, false },
        { "dot cr x", S(".\rX\r\n.\r\n"), S("\rX\r\n"), ALL, true, true, false, false },
        { "dot cr cr lf", S(".\r\r\n.\r\n"), S("\r\r\n"), ALL, true, true, false, false },
        { "dot lf", S(".\n.\r\n"), S("\n.\r\n"), ALL, false, true, false, false },
        { "lf only message", S("a\nb\n.\n"), S("a\nb\n.\n"), ALL, false, true, false, false },
        { "cr only message", S("a\rb\r.\r"), S("a\rb\r.\r"), ALL, false, true, false, false },
    };
    run_cases(cases, TERN_ARRAY_LEN(cases));
}

/* SMTP smuggling (2023): none of these may end the data; bad_eol is set and
 * the real CRLF.CRLF that follows ends it, leaving "TAIL" unconsumed. */
static void
test_data_smuggling(void **state)
{
    static const struct data_case cases[] = {
        { "LF.LF", S("A\n.\nB\r\n.\r\nTAIL"), S("A\n.\nB\r\n"), 10, true, true, false, false },
        { "CR.CR", S("A\r.\rB\r\n.\r\nTAIL"), S("A\r.\rB\r\n"), 10, true, true, false, false },
        { "LF.CRLF", S("A\n.\r\nB\r\n.\r\nTAIL"), S("A\n.\r\nB\r\n"), 11, true, true, false,
            false },
        { "CRLF.LF", S("A\r\n.\nB\r\n.\r\nTAIL"), S("A\r\n\nB\r\n"), 11, true, true, false, false },
        { "CR.CRLF", S("A\r.\r\nB\r\n.\r\nTAIL"), S("A\r.\r\nB\r\n"), 11, true, true, false,
            false },
        { "CRLF.CR", S("A\r\n.\rB\r\n.\r\nTAIL"), S("A\r\n\rB\r\n"), 11, true, true, false, false },
        { "LF.CR", S("A\n.\rB\r\n.\r\nTAIL"), S("A\n.\rB\r\n"), 10, true, true, false, false },
        { "CRLF.CR at end", S("A\r\n.\r"), S("A\r\n"), ALL, false, false, false, false },
        { "CRLF.LF MAIL", S("A\r\n.\nMAIL FROM:<x@y>\r\n"), S("A\r\n\nMAIL FROM:<x@y>\r\n"), ALL,
            false, true, false, false },
        { "LF.LF at start", S("\n.\n"), S("\n.\n"), ALL, false, true, false, false },
        { "CR.CR at start", S("\r.\r"), S("\r.\r"), ALL, false, true, false, false },
        { "dot LF at start", S(".\n"), S("\n"), ALL, false, true, false, false },
        { "dot CR x at start", S(".\rx"), S("\rx"), ALL, false, true, false, false },
    };
    static const char *const variants[] = { "\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n",
        "\r\n.\r", "\n.\r" };
    run_cases(cases, TERN_ARRAY_LEN(cases));

    /* Each variant followed directly by, or embedded before, a real end. */
    for (size_t i = 0; i < TERN_ARRAY_LEN(variants); i++) {
        for (int pre = 0; pre < 2; pre++) {
            char in[64];
            struct result r;
            size_t vl = strlen(variants[i]);
            size_t n = 0;
            if (pre)
                in[n++] = 'A';
            memcpy(in + n, variants[i], vl);
            n += vl;
            memcpy(in + n, "\r\n.\r\nT", 6);
            n += 6;
            print_message("variant %zu pre %d\n", i, pre);
            decode_all_ways(SMTP_DATA_DOT, in, n, &r);
            assert_true(r.d.ended);
            assert_true(r.d.bad_eol);
            assert_int_equal(r.consumed, n - 1);
            buf_fini(&r.out);
            /* Without the real end the data never ends. */
            decode_all_ways(SMTP_DATA_DOT, in, (size_t)pre + vl, &r);
            assert_false(r.d.ended);
            assert_int_equal(r.consumed, (size_t)pre + vl);
            buf_fini(&r.out);
        }
    }
}

/* RFC 5321 §4.5.3.1.6: 1000 octets with CRLF, the stuffing dot not counted. */
static void
test_data_line_length(void **state)
{
    static const struct {
        const char *name;
        bool dot; /* the line starts with a stuffed "." ("..") */
        size_t content;
        const char *eol; /* what ends the long line */
        bool too_long;
    } cases[] = {
        { "998", false, 998, "\r\n", false },
        { "999", false, 999, "\r\n", true },
        { "997 bare cr", false, 997, "\r\r\n", false },
        { "998 bare cr", false, 998, "\r\r\n", true },
        { "998 stuffed", true, 998, "\r\n", false },
        { "999 stuffed", true, 999, "\r\n", true },
        { "5000", false, 5000, "\r\n", true },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        size_t el = strlen(cases[i].eol), n = 0;
        char *in = xmalloc(cases[i].content + 32);
        struct result r;
        print_message("case %s\n", cases[i].name);
        memcpy(in, "x\r\n", 3);
        n = 3;
        if (cases[i].dot)
            in[n++] = '.';
        memset(in + n, 'a', cases[i].content);
        if (cases[i].dot)
            in[n] = '.';
        n += cases[i].content;
        memcpy(in + n, cases[i].eol, el);
        n += el;
        memcpy(in + n, "short\r\n.\r\n", 10);
        n += 10;
        decode_cuts(SMTP_DATA_DOT, in, n, NULL, 0, &r);
        reader_all_ways(SMTP_DATA_DOT, in, n, 40);
        assert_true(r.d.ended);
        assert_int_equal(r.d.too_long, cases[i].too_long);
        assert_int_equal(r.out.len, n - 3 - (cases[i].dot ? 1 : 0));
        buf_fini(&r.out);
        free(in);
    }
}

/* BDAT: bytes pass through unchanged, flags as in DATA, never "ended". */
static void
test_bdat(void **state)
{
    static const struct {
        const char *name;
        const char *in;
        size_t len;
        bool bad_eol, has_nul, appended;
        const char *tail; /* what finish appends */
    } cases[] = {
        { "crlf", S("a\r\nb\r\n"), false, false, false, "" },
        { "dot line kept", S("a\r\n.\r\n..x\r\n"), false, false, false, "" },
        { "no final crlf", S("a\r\nb"), false, false, true, "\r\n" },
        { "bare lf", S("a\nb\r\n"), true, false, false, "" },
        { "final cr", S("a\r"), true, false, true, "\r\n" },
        { "nul", S("a\0\r\n"), false, true, false, "" },
        { "empty", S(""), false, false, false, "" },
        { "smuggle", S("a\n.\nb\r\n"), true, false, false, "" },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct result r;
        size_t tl = strlen(cases[i].tail);
        print_message("case %s\n", cases[i].name);
        decode_all_ways(SMTP_DATA_BDAT, cases[i].in, cases[i].len, &r);
        assert_int_equal(r.consumed, cases[i].len);
        assert_false(r.d.ended);
        assert_int_equal(r.out.len, cases[i].len);
        assert_memory_equal(r.out.data, cases[i].in, cases[i].len);
        assert_int_equal(ref_data_finish_bdat(&r.d, &r.out), cases[i].appended);
        assert_int_equal(r.out.len, cases[i].len + tl);
        assert_memory_equal(r.out.data + cases[i].len, cases[i].tail, tl);
        assert_true(r.d.out_bytes == r.out.len);
        assert_int_equal(r.d.bad_eol, cases[i].bad_eol);
        assert_int_equal(r.d.has_nul, cases[i].has_nul);
        buf_fini(&r.out);
    }
}

static void
test_bdat_line_length(void **state)
{
    char in[1100];
    struct result r;
    memset(in, 'a', sizeof(in));
    reader_all_ways(SMTP_DATA_BDAT, in, 998, 40);
    reader_all_ways(SMTP_DATA_BDAT, in, 999, 40);
    decode_cuts(SMTP_DATA_BDAT, in, 998, NULL, 0, &r);
    assert_false(r.d.too_long);
    assert_true(ref_data_finish_bdat(&r.d, &r.out));
    assert_false(r.d.too_long);
    buf_fini(&r.out);
    decode_cuts(SMTP_DATA_BDAT, in, 999, NULL, 0, &r);
    assert_true(r.d.too_long);
    buf_fini(&r.out);
}

static void
test_stuff(void **state)
{
    static const struct {
        const char *name;
        const char *in;
        size_t len;
        const char *want;
        size_t want_len;
    } cases[] = {
        { "empty", S(""), S("") },
        { "no dots", S("abc\r\n"), S("abc\r\n") },
        { "leading dot", S(".abc\r\n"), S("..abc\r\n") },
        { "dot line", S("a\r\n.\r\nb\r\n"), S("a\r\n..\r\nb\r\n") },
        { "two dots", S("..\r\n"), S("...\r\n") },
        { "mid-line dot", S("a.b\r\n"), S("a.b\r\n") },
        { "dot after bare lf", S("a\n.b"), S("a\n..b") },
        { "dot after bare cr", S("a\r.b"), S("a\r..b") },
        { "terminator lookalike", S("x\r\n.\r\n"), S("x\r\n..\r\n") },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        print_message("case %s\n", cases[i].name);
        /* In one call and at every 2-way split. */
        for (size_t cut = 0; cut <= cases[i].len; cut++) {
            struct buf out = BUF_INIT;
            bool bol = true;
            smtp_data_stuff(cases[i].in, cut, &bol, &out);
            smtp_data_stuff(cases[i].in + cut, cases[i].len - cut, &bol, &out);
            assert_int_equal(out.len, cases[i].want_len);
            if (out.len)
                assert_memory_equal(out.data, cases[i].want, out.len);
            buf_fini(&out);
        }
    }
}

/* stuff(m) + ".\r\n" decodes back to m for CRLF-only m. */
static void
check_roundtrip(const char *m, size_t len)
{
    struct buf wire = BUF_INIT;
    bool bol = true;
    struct result r;
    smtp_data_stuff(m, len, &bol, &wire);
    buf_append(&wire, ".\r\nNEXT", 7);
    decode_all_ways(SMTP_DATA_DOT, wire.data, wire.len, &r);
    assert_true(r.d.ended);
    assert_false(r.d.bad_eol);
    assert_int_equal(r.consumed, wire.len - 4);
    assert_int_equal(r.out.len, len);
    if (len)
        assert_memory_equal(r.out.data, m, len);
    buf_fini(&r.out);
    buf_fini(&wire);
}

static void
test_roundtrip(void **state)
{
    static const struct {
        const char *m;
        size_t len;
    } fixed[] = {
        { S("") },
        { S("\r\n") },
        { S(".\r\n") },
        { S("..\r\n") },
        { S(".\r\n.\r\n") },
        { S("a\r\n.\r\n.a\r\n..\r\n") },
        { S("\r\n.\r\n\r\n") },
    };
    static const char *const pieces[] = { ".", "a", "\r\n", "..", "\0" };
    static const size_t piece_len[] = { 1, 1, 2, 2, 1 };
    uint32_t seed = 12345;

    for (size_t i = 0; i < TERN_ARRAY_LEN(fixed); i++)
        check_roundtrip(fixed[i].m, fixed[i].len);
    /* Deterministic pseudo-random CRLF-only messages built from pieces. */
    for (int iter = 0; iter < 300; iter++) {
        char m[128];
        size_t n = 0;
        int np;
        seed = seed * 1103515245u + 12345u;
        np = (int)((seed >> 16) % 24);
        for (int k = 0; k < np; k++) {
            size_t p;
            seed = seed * 1103515245u + 12345u;
            p = (seed >> 16) % TERN_ARRAY_LEN(pieces);
            memcpy(m + n, pieces[p], piece_len[p]);
            n += piece_len[p];
        }
        memcpy(m + n, "\r\n", 2);
        n += 2;
        check_roundtrip(m, n);
    }
}

/* ---- the reader ---- */

/* What is stored: the bytes as received; after a dot that is not stuffing
 * (dropped, RFC 5321 §4.5.2) the content stuffed again the standard way. */
static void
test_reader_stored(void **state)
{
    static const struct {
        const char *name;
        const char *in;
        size_t len;
        const char *stored;
        size_t stored_len;
        uint64_t content;
    } cases[] = {
        { "plain", S("a\r\nb\r\n.\r\nNEXT"), S("a\r\nb\r\n"), 6 },
        { "stuffed lines", S("..a\r\n..\r\n...\r\n.\r\n"), S("..a\r\n..\r\n...\r\n"), 11 },
        { "stray dot", S(".foo\r\n.\r\n"), S("foo\r\n"), 5 },
        { "stray then stuffed", S(".foo\r\n..bar\r\n.\r\n"), S("foo\r\n..bar\r\n"), 11 },
        { "stray dots", S("a\r\n.b\r\n.c\r\n.\r\n"), S("a\r\nb\r\nc\r\n"), 9 },
        { "empty", S(".\r\n"), S(""), 0 },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct ref_outcome r;
        print_message("case %s\n", cases[i].name);
        assert_null(ref_outcome_reader(SMTP_DATA_DOT, cases[i].in, cases[i].len, NULL, 0, 0, &r));
        assert_true(r.ended);
        assert_int_equal(r.stored.len, cases[i].stored_len);
        assert_memory_equal(r.stored.data, cases[i].stored, cases[i].stored_len);
        assert_int_equal(r.content, cases[i].content);
        ref_outcome_fini(&r);
        reader_all_ways(SMTP_DATA_DOT, cases[i].in, cases[i].len, SIZE_MAX / 2);
    }
}

/* Deterministic pseudo-random inputs built from the pieces that matter,
 * fed in random pieces and layouts: the reader agrees with the reference. */
static void
test_reader_random(void **state)
{
    static const char *const pieces[] = { ".", "..", "\r", "\n", "\r\n", "\r\n.\r\n", "a",
        "0123456789abcdefghijklmnopqrstu", "\0", ".\r", ".\n", "\r\n.", "x\r\n" };
    static const size_t piece_len[] = { 1, 2, 1, 1, 2, 5, 1, 31, 1, 2, 2, 3, 3 };
    uint32_t seed = 4242;
    for (int iter = 0; iter < 3000; iter++) {
        char m[1200];
        size_t n = 0, cuts[8], ncuts = 0;
        struct ref_outcome ref;
        enum smtp_data_mode mode = iter % 3 == 2 ? SMTP_DATA_BDAT : SMTP_DATA_DOT;
        int np;
        seed = seed * 1103515245u + 12345u;
        np = (int)((seed >> 16) % 36);
        for (int k = 0; k < np; k++) {
            size_t p;
            seed = seed * 1103515245u + 12345u;
            p = (seed >> 16) % TERN_ARRAY_LEN(pieces);
            memcpy(m + n, pieces[p], piece_len[p]);
            n += piece_len[p];
        }
        /* Now and then a line near the length limit. */
        if (iter % 50 == 0) {
            size_t run = 990 + (size_t)(iter / 50) % 16;
            if (n + run < sizeof(m)) {
                memset(m + n, 'L', run);
                n += run;
            }
        }
        for (size_t c = 0; c < 8 && n > 1; c++) {
            seed = seed * 1103515245u + 12345u;
            size_t cut = 1 + (seed >> 16) % (n - 1);
            if (ncuts == 0 || cut > cuts[ncuts - 1])
                cuts[ncuts++] = cut;
        }
        seed = seed * 1103515245u + 12345u;
        ref_outcome_reference(mode, m, n, &ref);
        reader_cuts(mode, m, n, cuts, ncuts, seed, &ref);
        reader_cuts(mode, m, n, NULL, 0, seed, &ref);
        ref_outcome_fini(&ref);
    }
}

/* The sink of the chain tests: moves what it is given and counts calls. */
struct chain_sink {
    struct evbuffer *to;
    int calls;
    uint64_t content;
};

static void
chain_stuffed(void *arg, struct evbuffer *src, size_t n, uint64_t content)
{
    struct chain_sink *c = arg;
    assert_int_equal(evbuffer_remove_buffer(src, c->to, n), (int)n);
    c->calls++;
    c->content += content;
}

static void
chain_plain(void *arg, const char *p, size_t n)
{
    fail_msg("no plain bytes expected");
}

/* Full chains are handed over as they are: their bytes stay where they
 * were read (no copy). */
static void
test_reader_moves_chains(void **state)
{
    struct evbuffer *in = evbuffer_new(), *part;
    struct chain_sink c = { evbuffer_new(), 0, 0 };
    struct smtp_data_sink sink = { chain_stuffed, chain_plain, &c };
    struct smtp_data_reader r;
    struct evbuffer_iovec v[3], w[4];
    char lines[4000];
    uint64_t used;
    memset(lines, 'm', sizeof(lines));
    for (int i = 0; i < 40; i++)
        memcpy(lines + 100 * i + 98, "\r\n", 2);
    /* Three chains of 40 lines each, read separately. */
    for (int k = 0; k < 3; k++) {
        part = evbuffer_new();
        evbuffer_add(part, lines, sizeof(lines));
        evbuffer_add_buffer(in, part);
        evbuffer_free(part);
    }
    assert_int_equal(evbuffer_peek(in, -1, NULL, v, 3), 3);
    smtp_data_reader_init(&r, SMTP_DATA_DOT);
    assert_false(smtp_data_read(&r, in, &sink, &used));
    assert_int_equal(used, 12000);
    /* The first two went over; the last one waits for more. */
    assert_int_equal(evbuffer_get_length(c.to), 8000);
    assert_int_equal(evbuffer_get_length(in), 4000);
    assert_int_equal(evbuffer_peek(c.to, -1, NULL, w, 4), 2);
    assert_ptr_equal(w[0].iov_base, v[0].iov_base);
    assert_ptr_equal(w[1].iov_base, v[1].iov_base);
    /* The end of data comes in a chain of its own. */
    part = evbuffer_new();
    evbuffer_add(part, ".\r\nQUIT\r\n", 9);
    evbuffer_add_buffer(in, part);
    evbuffer_free(part);
    assert_true(smtp_data_read(&r, in, &sink, &used));
    assert_int_equal(evbuffer_get_length(c.to), 12000);
    assert_int_equal(evbuffer_peek(c.to, -1, NULL, w, 4), 3);
    assert_ptr_equal(w[2].iov_base, v[2].iov_base);
    assert_int_equal(c.content, 12000);
    assert_int_equal(r.sc.content, 12000);
    assert_int_equal(evbuffer_get_length(in), 6); /* QUIT\r\n */
    smtp_data_reader_fini(&r);
    evbuffer_free(in);
    evbuffer_free(c.to);
}

/* A trickle into one chain: nothing is handed over before the end of data
 * (no chain with a few bytes in it goes to the writer), then all at once. */
static void
test_reader_trickle(void **state)
{
    static const char msg[] = "Subject: x\r\n\r\n..body\r\n.\r\n";
    struct evbuffer *in = evbuffer_new();
    struct chain_sink c = { evbuffer_new(), 0, 0 };
    struct smtp_data_sink sink = { chain_stuffed, chain_plain, &c };
    struct smtp_data_reader r;
    uint64_t used, total = 0;
    bool ended = false;
    smtp_data_reader_init(&r, SMTP_DATA_DOT);
    evbuffer_expand(in, 4096); /* one chain with room for it all */
    for (size_t i = 0; i < sizeof(msg) - 1; i++) {
        assert_false(ended);
        evbuffer_add(in, msg + i, 1);
        ended = smtp_data_read(&r, in, &sink, &used);
        total += used;
        if (!ended)
            assert_int_equal(c.calls, 0);
    }
    assert_true(ended);
    assert_int_equal(total, sizeof(msg) - 1);
    assert_int_equal(c.calls, 1);
    assert_int_equal(evbuffer_get_length(c.to), sizeof(msg) - 1 - 3);
    assert_int_equal(c.content, sizeof(msg) - 1 - 3 - 1); /* the stuffing dot */
    assert_int_equal(evbuffer_get_length(in), 0);
    smtp_data_reader_fini(&r);
    evbuffer_free(in);
    evbuffer_free(c.to);
}

/* The data deadline: 1/min_rate s per byte, never more than max_ahead from
 * now, never moved back. */
static void
test_data_deadline(void **state)
{
    static const struct {
        const char *name;
        int64_t deadline, now;
        uint64_t bytes;
        uint32_t rate;
        int64_t ahead, want;
    } cases[] = {
        { "no bytes", 10000, 5000, 0, 500, 180000, 10000 },
        { "one byte drips 2 ms", 10000, 5000, 1, 500, 180000, 10002 },
        { "slower rate rounds down", 10000, 5000, 1, 2000, 180000, 10000 },
        { "a second's worth", 10000, 5000, 500, 500, 180000, 11000 },
        { "capped at now + ahead", 10000, 5000, 50000000, 500, 180000, 185000 },
        { "exactly at the cap", 0, 0, 90000, 500, 180000, 180000 },
        { "already beyond the cap", 200000, 5000, 1000, 500, 180000, 200000 },
        { "past deadline, fast burst", 1000, 5000, 500000, 500, 3000, 8000 },
        { "huge count", 0, 0, UINT64_MAX, 1, 60000, 60000 },
        { "rate 0: any byte gives the whole wait", 10000, 5000, 1, 0, 180000, 185000 },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        print_message("case %s\n", cases[i].name);
        assert_int_equal(smtp_data_deadline(cases[i].deadline, cases[i].now, cases[i].bytes,
                             cases[i].rate, cases[i].ahead),
            cases[i].want);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_basic),
        cmocka_unit_test(test_data_smuggling),
        cmocka_unit_test(test_data_line_length),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_bdat_line_length),
        cmocka_unit_test(test_stuff),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_data_deadline),
        cmocka_unit_test(test_reader_stored),
        cmocka_unit_test(test_reader_random),
        cmocka_unit_test(test_reader_moves_chains),
        cmocka_unit_test(test_reader_trickle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests for the DATA/BDAT decoder and the dot-stuffing encoder. Every
 * DATA case is decoded in one piece, byte by byte and at every 2-way split,
 * and all must agree (the decoder may not depend on read boundaries). The
 * 2023 SMTP-smuggling variants must never end the data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/data.h"
#include "util/util.h"

#define S(lit) lit, sizeof(lit) - 1
#define ALL    ((size_t)-1)

struct result {
    struct smtp_data_dec d;
    struct buf out;
    size_t consumed;
};

/* Feed in[0..len) in chunks ending at the given cut points (ascending, < len). */
static void
decode_cuts(enum smtp_data_mode mode, const char *in, size_t len, const size_t *cuts, size_t ncuts,
    struct result *r)
{
    size_t pos = 0, k;
    smtp_data_init(&r->d, mode);
    buf_init(&r->out);
    r->consumed = 0;
    for (k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        long n = smtp_data_feed(&r->d, in + pos, end - pos, &r->out);
        assert_true(n >= 0);
        assert_true((size_t)n <= end - pos);
        r->consumed += (size_t)n;
        if (r->d.ended) {
            /* Nothing more is taken once the data has ended. */
            assert_int_equal(
                smtp_data_feed(&r->d, in + pos + (size_t)n, len - pos - (size_t)n, &r->out), 0);
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

/* One-shot, byte-by-byte and every 2-way split must agree; returns one-shot. */
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
        assert_int_equal(smtp_data_finish_bdat(&r.d, &r.out), cases[i].appended);
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
    decode_cuts(SMTP_DATA_BDAT, in, 998, NULL, 0, &r);
    assert_false(r.d.too_long);
    assert_true(smtp_data_finish_bdat(&r.d, &r.out));
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
            assert_int_equal(smtp_data_stuff(cases[i].in, cut, &bol, &out), 0);
            assert_int_equal(smtp_data_stuff(cases[i].in + cut, cases[i].len - cut, &bol, &out), 0);
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
    assert_int_equal(smtp_data_stuff(m, len, &bol, &wire), 0);
    assert_int_equal(buf_append(&wire, ".\r\nNEXT", 7), 0);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

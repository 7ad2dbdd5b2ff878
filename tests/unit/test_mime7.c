/*
 * Unit tests of the 8-bit to 7-bit MIME conversion (src/delivery/mime7.c):
 * a table of messages with the exact converted form (or the reason it
 * cannot be converted), each fed in chunks of several sizes (the output
 * must not depend on them), plus invariants over larger inputs: only 7-bit
 * octets, no line over 998 octets, and a scan that finds nothing to do
 * for 7-bit content. Decoding back to the original bytes is checked end to
 * end with Python's email package (tests/system/test_mime7bit.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery/mime7.h"
#include "util/buf.h"
#include "util/util.h"

static void
collect(const char *p, size_t n, void *arg)
{
    buf_append(arg, p, n);
}

/* Scan then convert in with chunks of size chunk (0: all at once). The
 * return is what the scan said: 1 conversion needed, 0 none, -1 error
 * (why: the reason); out gets the converted form when 1. */
static int
convert(const char *in, size_t len, size_t chunk, struct buf *out, const char **why)
{
    struct mime7_plan plan = { 0 };
    struct mime7 *m = mime7_new(MIME7_SCAN, &plan, NULL, NULL);
    int rc = 0;
    size_t step = chunk ? chunk : len ? len : 1;
    *why = NULL;
    for (size_t i = 0; i < len && rc == 0; i += step)
        rc = mime7_feed(m, in + i, len - i < step ? len - i : step);
    if (rc == 0)
        rc = mime7_end(m);
    if (rc < 0) {
        *why = mime7_error(m);
        mime7_free(m);
        mime7_plan_fini(&plan);
        return -1;
    }
    mime7_free(m);
    if (!plan.needed) {
        mime7_plan_fini(&plan);
        return 0;
    }
    m = mime7_new(MIME7_CONVERT, &plan, collect, out);
    for (size_t i = 0; i < len && rc == 0; i += step)
        rc = mime7_feed(m, in + i, len - i < step ? len - i : step);
    if (rc == 0)
        rc = mime7_end(m);
    assert_int_equal(rc, 0);
    mime7_free(m);
    mime7_plan_fini(&plan);
    return 1;
}

/* Every octet 7-bit and no NUL, CRLF line ends only, lines of at most 998. */
static void
check_7bit(const struct buf *b)
{
    size_t line = 0;
    for (size_t i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)b->data[i];
        if (c >= 0x80 || c == 0)
            fail_msg("octet 0x%02x at %zu", c, i);
        if (c == '\n' && (i == 0 || b->data[i - 1] != '\r'))
            fail_msg("bare LF at %zu", i);
        if (c == '\r' && (i + 1 >= b->len || b->data[i + 1] != '\n'))
            fail_msg("bare CR at %zu", i);
        line = c == '\n' ? 0 : line + 1;
        if (line > 999)
            fail_msg("line over 998 octets at %zu", i);
    }
}

struct conv_case {
    const char *name;
    const char *in;
    int want;          /* as convert() */
    const char *out;   /* want 1: the converted form */
    const char *error; /* want -1: a substring of the reason */
};

static const struct conv_case cases[] = {
    { "no MIME, UTF-8 text",
        "Subject: x\r\n\r\nGr\xc3\xbc\xc3\x9f"
        "e\r\nline two \r\n",
        1,
        "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\nline two=20\r\n",
        NULL },
    { "no MIME, Latin-1, no final CRLF", "Subject: x\r\n\r\ncaf\xe9 = ok\t", 1,
        "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 =3D ok=09",
        NULL },
    { "text/plain 8bit relabelled",
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: 8bit\r\nSubject: s\r\n\r\n\xe9t\xe9\r\n",
        1,
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\nSubject: s\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n=E9t=E9\r\n",
        NULL },
    { "7-bit labelled 8bit: nothing to do",
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\nplain\r\n", 0, NULL,
        NULL },
    { "header only", "Subject: x\r\nFrom: y\r\n", 0, NULL, NULL },
    { "multipart: text, binary and preamble",
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b 1\"\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\npre \xff amble\r\n--b 1\r\n"
        "Content-Type: text/plain\r\n\r\nascii only\r\n--b 1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "\xe2\x82\xac 5\r\n--b 1 \r\nContent-Type: application/octet-stream\r\n\r\n"
        "\x00\x01\xfe\xff\r\nab\r\n--b 1--\r\nepi \x80logue\r\n",
        1,
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b 1\"\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\npre ? amble\r\n--b 1\r\n"
        "Content-Type: text/plain\r\n\r\nascii only\r\n--b 1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        "\r\n=E2=82=AC 5\r\n--b 1 \r\nContent-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nAAH+/w0KYWI=\r\n--b 1--\r\nepi ?logue\r\n",
        NULL },
    { "message/rfc822 inside, no close delimiter",
        "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
        "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Subject: inner\r\n\r\n\xc3\xa9\r\n",
        1,
        "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
        "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        "Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9\r\n",
        NULL },
    { "digest parts are messages",
        "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: m\r\n\r\n"
        "\xc3\xa9\r\n--d--\r\n",
        1,
        "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: m\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9\r\n--d--\r\n",
        NULL },
    { "QP-labelled part with raw 8-bit octets",
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "a=3Db \xe9\r\n",
        1,
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "a=3Db =E9\r\n",
        NULL },
    { "base64-labelled part with raw 8-bit octets",
        "Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\nQU\xff"
        "JD\r\n",
        1, "Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD\r\n", NULL },
    { "multipart without boundary", "Content-Type: multipart/mixed\r\n\r\n\xe9\r\n", -1, NULL,
        "must not be encoded" },
    { "message/partial", "Content-Type: message/partial; id=1; number=1\r\n\r\n\xe9\r\n", -1, NULL,
        "must not be encoded" },
    { "unknown encoding", "Content-Transfer-Encoding: x-uue\r\n\r\n\xe9\r\n", -1, NULL,
        "must not be encoded" },
    { "header only, 8-bit field: left alone", "Subject: caf\xe9\r\n", 0, NULL, NULL },
};

static void
test_cases(void **state)
{
    static const size_t chunks[] = { 0, 1, 2, 7, 64 };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        const struct conv_case *tc = &cases[i];
        size_t len = strlen(tc->in);
        /* the cases hold one NUL: "\x00\x01" */
        if (strstr(tc->name, "binary") != NULL)
            len = strlen(tc->in) + 1 + strlen(tc->in + strlen(tc->in) + 1);
        for (size_t c = 0; c < TERN_ARRAY_LEN(chunks); c++) {
            struct buf out = BUF_INIT;
            const char *why;
            int rc = convert(tc->in, len, chunks[c], &out, &why);
            if (rc != tc->want)
                fail_msg("%s (chunk %zu): result %d, want %d (%s)", tc->name, chunks[c], rc,
                    tc->want, why ? why : "");
            if (rc < 0 && strstr(why, tc->error) == NULL)
                fail_msg("%s: reason '%s', want '%s'", tc->name, why, tc->error);
            if (rc == 1) {
                if (out.len != strlen(tc->out) || memcmp(out.data, tc->out, out.len) != 0)
                    fail_msg("%s (chunk %zu): got\n%.*s\nwant\n%s", tc->name, chunks[c],
                        (int)out.len, out.data, tc->out);
                check_7bit(&out);
            }
            buf_fini(&out);
        }
    }
}

/* Long lines, long 8-bit text and binary: 7-bit output with short lines,
 * whatever the chunking. */
static void
test_long_content(void **state)
{
    struct buf in = BUF_INIT, a = BUF_INIT, b = BUF_INIT;
    const char *why;
    buf_append_str(&in, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
                        "--zz\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    for (int i = 0; i < 3000; i++)
        buf_append_str(&in, i % 50 == 49 ? "\xc3\xa9 \r\n" : "\xc3\xa9 word. ");
    buf_append_str(&in, "\r\n--zz\r\nContent-Type: application/zip\r\n\r\n");
    for (int i = 0; i < 70000; i++)
        buf_append_char(&in, (char)(i * 7 % 256 == '\r' ? 'r' : i * 7 % 256));
    buf_append_str(&in, "\r\n--zz--\r\n");
    assert_int_equal(convert(in.data, in.len, 0, &a, &why), 1);
    assert_int_equal(convert(in.data, in.len, 999, &b, &why), 1);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    check_7bit(&a);
    /* encoded lines are at most 76 characters */
    for (const char *p = a.data; p < a.data + a.len;) {
        const char *e = memchr(p, '\n', (size_t)(a.data + a.len - p));
        size_t n = e ? (size_t)(e - p) : (size_t)(a.data + a.len - p);
        if (n > 77 && strncmp(p, "Content-Type", 12) != 0)
            fail_msg("line of %zu: %.40s", n, p);
        p += n + 1;
    }
    buf_fini(&in);
    buf_fini(&a);
    buf_fini(&b);
}

/* Bounds: nesting depth and the header section size. */
static void
test_limits(void **state)
{
    struct buf in = BUF_INIT, out = BUF_INIT;
    const char *why;
    for (int i = 0; i <= MIME7_DEPTH_MAX; i++)
        buf_printf(&in, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
    buf_append_str(&in, "\r\n\xe9\r\n");
    assert_int_equal(convert(in.data, in.len, 0, &out, &why), -1);
    assert_non_null(strstr(why, "nested too deeply"));
    buf_reset(&in);
    buf_append_str(&in, "Subject: x\r\n");
    while (in.len <= MIME7_HEADER_MAX)
        buf_append_str(&in, "X-Filler: 0123456789012345678901234567890123456789\r\n");
    buf_append_str(&in, "\r\n\xe9\r\n");
    assert_int_equal(convert(in.data, in.len, 4096, &out, &why), -1);
    assert_non_null(strstr(why, "header section too long"));
    buf_fini(&in);
    buf_fini(&out);
}

static void
test_hdr_scan(void **state)
{
    static const struct {
        const char *in;
        bool done;
    } t[] = {
        { "A: b\r\n\r\nbody", true }, { "A: b\r\nC: d\r\n", false }, { "\r\nbody", true },
        { "A: b\r\n\r", false }, { "A: b\n\nx", false }, /* bare LF is not a line end */
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(t); i++) {
        for (size_t step = 1; step <= 3; step++) {
            struct hdr_scan h = { 0 };
            size_t n = strlen(t[i].in);
            for (size_t k = 0; k < n; k += step)
                hdr_scan_feed(&h, t[i].in + k, n - k < step ? n - k : step);
            if (h.done != t[i].done)
                fail_msg("case %zu step %zu: done %d", i, step, h.done);
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_long_content),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_hdr_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

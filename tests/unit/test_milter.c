/*
 * Unit tests of the milter codec (src/milter/codec.c), table-driven: filter
 * addresses, packets as tern encodes them (byte for byte, as libmilter
 * reads them), framing and its bounds, every reply a filter may send and
 * the malformed ones, negotiation, reply codes, header names and values,
 * addresses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include "milter/milter.h"
#include "util/buf.h"
#include "util/util.h"

static void
test_spec(void **state)
{
    static const struct {
        const char *in;
        int family; /* 0: refused */
        uint16_t port;
    } cases[] = {
        { "inet:127.0.0.1:11332", AF_INET, 11332 },
        { "inet:localhost:8891", AF_INET, 8891 },
        { "inet:[::1]:25", AF_INET6, 25 },
        { "inet:::1:25", AF_INET6, 25 },
        { "unix:/run/rspamd/milter.sock", AF_UNIX, 0 },
        { "inet:example.com:11332", 0, 0 }, /* no name lookups */
        { "inet:127.0.0.1", 0, 0 },
        { "inet:127.0.0.1:0", 0, 0 },
        { "inet:127.0.0.1:65536", 0, 0 },
        { "inet:127.0.0.1:x", 0, 0 },
        { "inet::25", 0, 0 },
        { "unix:relative.sock", 0, 0 },
        { "unix:/", AF_UNIX, 0 },
        { "local:/x", 0, 0 },
        { "", 0, 0 },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct milter_spec sp;
        char err[128];
        int r = milter_spec_parse(cases[i].in, strlen(cases[i].in), &sp, err, sizeof(err));
        if (cases[i].family == 0) {
            assert_int_equal(r, -1);
            assert_true(err[0] != '\0');
            continue;
        }
        assert_int_equal(r, 0);
        assert_int_equal(sp.ss.ss_family, cases[i].family);
        assert_string_equal(sp.name, cases[i].in);
        if (cases[i].family == AF_INET)
            assert_int_equal(ntohs(((struct sockaddr_in *)&sp.ss)->sin_port), cases[i].port);
        if (cases[i].family == AF_INET6)
            assert_int_equal(ntohs(((struct sockaddr_in6 *)&sp.ss)->sin6_port), cases[i].port);
    }
    /* A path too long for sun_path. */
    char longp[200] = "unix:/";
    memset(longp + 6, 'a', 150);
    struct milter_spec sp;
    char err[128];
    assert_int_equal(milter_spec_parse(longp, strlen(longp), &sp, err, sizeof(err)), -1);
}

static void
test_specs_list(void **state)
{
    struct milter_spec *v = NULL;
    size_t n = 99;
    char err[200];
    assert_int_equal(milter_specs_parse("", &v, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 0);
    assert_null(v);
    assert_int_equal(milter_specs_parse(
                         " inet:127.0.0.1:1, unix:/a/b\tinet:[::1]:2 ,", &v, &n, err, sizeof(err)),
        0);
    assert_int_equal(n, 3);
    assert_string_equal(v[1].name, "unix:/a/b");
    free(v);
    v = NULL;
    assert_int_equal(milter_specs_parse("inet:127.0.0.1:1 bogus", &v, &n, err, sizeof(err)), -1);
    assert_null(v);
    assert_non_null(strstr(err, "bogus"));
    struct buf many = BUF_INIT;
    for (int i = 0; i <= MILTER_MAX; i++)
        buf_printf(&many, "inet:127.0.0.1:%d ", i + 1);
    assert_int_equal(milter_specs_parse(many.data, &v, &n, err, sizeof(err)), -1);
    buf_fini(&many);
}

static void
test_encode(void **state)
{
    struct buf b = BUF_INIT;
    struct sockaddr_in in4;
    const char *kv[] = { "i", "QID", "{x}", NULL, "j", "h" };
    const char *strs[] = { "Subject", "hi" };
    milter_put_optneg(&b, 6, 0x1ff, 0x1fffff);
    assert_int_equal(b.len, 17);
    assert_memory_equal(b.data, "\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\x1f\xff\xff", 17);
    buf_reset(&b);
    milter_put(&b, MILTER_C_EOH, NULL, 0);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "\0\0\0\x01N", 5);
    buf_reset(&b);
    milter_put_strs(&b, MILTER_C_HEADER, strs, 2);
    assert_int_equal(b.len, 5 + 11);
    assert_memory_equal(b.data, "\0\0\0\x0cLSubject\0hi\0", 16);
    buf_reset(&b);
    milter_put_macros(&b, MILTER_C_MAIL, kv, 3); /* the NULL value is left out */
    assert_int_equal(b.len, 5 + 1 + 6 + 4);
    assert_memory_equal(b.data,
        "\0\0\0\x0c"
        "DMi\0QID\0j\0h\0",
        16);
    buf_reset(&b);
    memset(&in4, 0, sizeof(in4));
    in4.sin_family = AF_INET;
    in4.sin_port = htons(2525);
    inet_pton(AF_INET, "192.0.2.1", &in4.sin_addr);
    milter_put_connect(&b, "[192.0.2.1]", (struct sockaddr *)&in4);
    assert_int_equal(b.len, 5 + 12 + 1 + 2 + 10);
    assert_memory_equal(b.data + 4,
        "C[192.0.2.1]\0"
        "4\x09\xdd"
        "192.0.2.1\0",
        26);
    buf_reset(&b);
    milter_put_connect(&b, "x", NULL);
    assert_memory_equal(b.data,
        "\0\0\0\x04"
        "Cx\0U",
        8);
    buf_fini(&b);
}

static void
test_frame(void **state)
{
    static const struct {
        const char *p;
        size_t n;
        int want;
        size_t len;
    } cases[] = {
        { "", 0, 0, 0 }, { "\0\0\0", 3, 0, 0 }, { "\0\0\0\x01", 4, 0, 0 },
        { "\0\0\0\x01"
          "c",
            5, 1, 5 },
        { "\0\0\0\x01"
          "cX",
            6, 1, 5 },
        { "\0\0\0\0", 4, -1, 0 },     /* empty packet */
        { "\0\x10\0\x01", 4, -1, 0 }, /* 1 MiB + 1 */
        { "\0\x10\0\0", 4, 0, 0 },    /* exactly 1 MiB: wait for it */
        { "\xff\xff\xff\xff"
          "a",
            5, -1, 0 }, /* 4 GiB */
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        size_t len = 0;
        assert_int_equal(
            milter_frame((const uint8_t *)cases[i].p, cases[i].n, &len), cases[i].want);
        if (cases[i].want == 1)
            assert_int_equal(len, cases[i].len);
    }
}

/* A reply packet: code and data. */
static size_t
pkt(uint8_t *out, char code, const char *data, size_t n)
{
    uint32_t l = htonl((uint32_t)n + 1);
    memcpy(out, &l, 4);
    out[4] = (uint8_t)code;
    memcpy(out + 5, data, n);
    return n + 5;
}

static void
test_replies(void **state)
{
    static const struct {
        char code;
        const char *data;
        size_t n;
        int want;
        const char *s1, *s2;
        uint32_t index;
    } cases[] = {
        { 'a', "", 0, 0, NULL, NULL, 0 },
        { 'c', "", 0, 0, NULL, NULL, 0 },
        { 'r', "", 0, 0, NULL, NULL, 0 },
        { 't', "", 0, 0, NULL, NULL, 0 },
        { 'd', "", 0, 0, NULL, NULL, 0 },
        { 'p', "", 0, 0, NULL, NULL, 0 },
        { 's', "", 0, 0, NULL, NULL, 0 },
        { 'h', "X-A\0v\0", 6, 0, "X-A", "v", 0 },
        { 'h', "X-A\0v", 5, -1, NULL, NULL, 0 }, /* value not terminated */
        { 'h', "X-A", 3, -1, NULL, NULL, 0 },
        { 'i', "\0\0\0\x02X\0y\0", 8, 0, "X", "y", 2 },
        { 'm', "\0\0\0\x01X\0\0", 7, 0, "X", "", 1 },
        { 'm', "\0\0\0", 3, -1, NULL, NULL, 0 },
        { '+', "<a@b>\0", 6, 0, "<a@b>", NULL, 0 },
        { '+', "<a@b>", 5, -1, NULL, NULL, 0 },
        { '-', "<a@b>\0", 6, 0, "<a@b>", NULL, 0 },
        { '2', "<a@b>\0NOTIFY=NEVER\0", 19, 0, "<a@b>", "NOTIFY=NEVER", 0 },
        { 'e', "<s@b>\0", 6, 0, "<s@b>", NULL, 0 },
        { 'e', "<s@b>\0ARG", 9, -1, NULL, NULL, 0 },
        { 'q', "why\0", 4, 0, "why", NULL, 0 },
        { 'y', "550 5.7.1 no\0", 13, 0, "550 5.7.1 no", NULL, 0 },
        { 'b', "body\r\n", 6, 0, "body\r\n", NULL, 0 },
        { 'O', "\0\0\0\x06\0\0\0\x01\0\0\0\x10", 12, 0, NULL, NULL, 0 },
        { 'O', "\0\0\0\x06\0\0\0\x01", 8, -1, NULL, NULL, 0 },
        { 'Z', "", 0, -1, NULL, NULL, 0 },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        uint8_t buf[64];
        struct milter_reply r;
        size_t n = pkt(buf, cases[i].code, cases[i].data, cases[i].n);
        int got = milter_reply_parse(buf, n, &r);
        assert_int_equal(got, cases[i].want);
        if (got < 0)
            continue;
        assert_int_equal(r.code, cases[i].code);
        if (cases[i].s1 != NULL) {
            assert_int_equal(r.s1_len, strlen(cases[i].s1));
            assert_memory_equal(r.s1, cases[i].s1, r.s1_len);
        }
        if (cases[i].s2 != NULL) {
            assert_int_equal(r.s2_len, strlen(cases[i].s2));
            assert_memory_equal(r.s2, cases[i].s2, r.s2_len);
        }
        assert_int_equal(r.index, cases[i].index);
        if (r.code == 'O') {
            assert_int_equal(r.version, 6);
            assert_int_equal(r.actions, 1);
            assert_int_equal(r.protocol, 0x10);
        }
    }
    /* Macro lists after OPTNEG: per step, a malformed rest ignored. */
    {
        static const char opt[] = "\0\0\0\x06\0\0\x01\xff\0\0\0\0"
                                  "\0\0\0\x03{rcpt_addr} i\0"
                                  "\0\0\0\x05{auth_authen}\0"
                                  "\0\0\0\x09"
                                  "bad step\0";
        uint8_t buf[128];
        struct milter_reply r;
        size_t n = pkt(buf, 'O', opt, sizeof(opt) - 1);
        assert_int_equal(milter_reply_parse(buf, n, &r), 0);
        assert_int_equal(r.actions, 0x1ff);
        assert_int_equal(r.macros_len[3], strlen("{rcpt_addr} i"));
        assert_memory_equal(r.macros[3], "{rcpt_addr} i", r.macros_len[3]);
        assert_memory_equal(r.macros[5], "{auth_authen}", r.macros_len[5]);
        assert_null(r.macros[0]);
        n = pkt(buf, 'O', opt, 12 + 4 + 5); /* a list cut short */
        assert_int_equal(milter_reply_parse(buf, n, &r), 0);
        assert_null(r.macros[3]);
    }
    /* A length that does not match the packet. */
    uint8_t bad[] = { 0, 0, 0, 5, 'c' };
    struct milter_reply r;
    assert_int_equal(milter_reply_parse(bad, sizeof(bad), &r), -1);
}

static void
test_replycode(void **state)
{
    static const struct {
        const char *in;
        int code; /* 0: refused */
        const char *esc, *text;
    } cases[] = {
        { "550 5.7.1 Spam detected", 550, "5.7.1", "Spam detected" },
        { "451 4.7.1 Greylisted", 451, "4.7.1", "Greylisted" },
        { "554 Rejected", 554, "5.7.1", "Rejected" },
        { "550 4.7.1 mismatch", 550, "5.7.1", "4.7.1 mismatch" }, /* wrong class */
        { "550-5.7.1 first\r\n550 5.7.1 second", 550, "5.7.1", "first" },
        { "550 5.7.1 bad\x01\x80text", 550, "5.7.1", "bad??text" },
        { "550", 550, "5.7.1", "Message rejected by filter" },
        { "450 4.2.0", 450, "4.2.0", "Try again later" },
        { "250 2.0.0 ok", 0, NULL, NULL },
        { "650 x", 0, NULL, NULL },
        { "5x0 x", 0, NULL, NULL },
        { "560 x", 0, NULL, NULL },
        { "55", 0, NULL, NULL },
        { "550x", 0, NULL, NULL },
        { "", 0, NULL, NULL },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct tern_status st;
        int r = milter_replycode(cases[i].in, strlen(cases[i].in), &st);
        if (cases[i].code == 0) {
            assert_int_equal(r, -1);
            continue;
        }
        assert_int_equal(r, 0);
        assert_int_equal(st.code, cases[i].code);
        assert_string_equal(st.esc, cases[i].esc);
        assert_string_equal(st.text, cases[i].text);
    }
}

static void
test_header_checks(void **state)
{
    static const struct {
        const char *in;
        const char *out; /* NULL: refused */
    } values[] = {
        { "plain", "plain" },
        { "a\n\tb", "a\r\n\tb" },
        { "a\r\n b", "a\r\n b" },
        { "trailing\n", "trailing" },
        { "a\nb", NULL }, /* a break not before a blank */
        { "a\rb", NULL },
        { "a\x01", NULL },
        { "tab\tok", "tab\tok" },
        { "utf8 \xc3\xa9", "utf8 \xc3\xa9" },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(values); i++) {
        struct buf b = BUF_INIT;
        buf_append_str(&b, "X:");
        int r = milter_hdr_value(values[i].in, strlen(values[i].in), &b);
        if (values[i].out == NULL) {
            assert_int_equal(r, -1);
            assert_int_equal(b.len, 2);
        } else {
            assert_int_equal(r, 0);
            assert_string_equal(b.data + 2, values[i].out);
        }
        buf_fini(&b);
    }
    assert_true(milter_hdr_name_ok("X-Spam", 6));
    assert_false(milter_hdr_name_ok("X Spam", 6));
    assert_false(milter_hdr_name_ok("X:", 2));
    assert_false(milter_hdr_name_ok("", 0));
    assert_false(milter_hdr_name_ok("\xc3\xa9", 2));
    char longname[MILTER_HDR_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname));
    assert_false(milter_hdr_name_ok(longname, sizeof(longname)));
}

static void
test_addr(void **state)
{
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        { "<a@b.example>", "a@b.example" },
        { "a@b.example", "a@b.example" },
        { "<>", "" },
        { "<a b@c>", NULL },
        { "<a@b>x", NULL },
        { "a\r\n@b", NULL },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf b = BUF_INIT;
        int r = milter_addr(cases[i].in, strlen(cases[i].in), &b);
        if (cases[i].out == NULL) {
            assert_int_equal(r, -1);
        } else {
            assert_int_equal(r, 0);
            assert_string_equal(b.len ? b.data : "", cases[i].out);
        }
        buf_fini(&b);
    }
    char big[600];
    memset(big, 'a', sizeof(big));
    struct buf b = BUF_INIT;
    assert_int_equal(milter_addr(big, sizeof(big), &b), -1);
    buf_fini(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec),
        cmocka_unit_test(test_specs_list),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_frame),
        cmocka_unit_test(test_replies),
        cmocka_unit_test(test_replycode),
        cmocka_unit_test(test_header_checks),
        cmocka_unit_test(test_addr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

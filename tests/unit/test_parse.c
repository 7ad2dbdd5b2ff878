/*
 * Unit tests for the bounded parsers in util/parse.c: numbers, sizes,
 * durations, host:port (with [v6]:port), case helpers and domain syntax.
 * Bad inputs and overflow must fail and leave the output untouched.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/buf.h"
#include "util/parse.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void
test_u64(void **state)
{
    static const struct {
        const char *name;
        const char *input;
        uint64_t max;
        int want;
        uint64_t want_v;
    } cases[] = {
        { "zero", "0", 10, 0, 0 },
        { "max equal", "10", 10, 0, 10 },
        { "over max", "11", 10, -1, 0 },
        { "leading zeros", "007", 10, 0, 7 },
        { "uint64 max", "18446744073709551615", UINT64_MAX, 0, UINT64_MAX },
        { "overflow by one", "18446744073709551616", UINT64_MAX, -1, 0 },
        { "overflow long", "99999999999999999999999", UINT64_MAX, -1, 0 },
        { "empty", "", 10, -1, 0 },
        { "sign", "+1", 10, -1, 0 },
        { "minus", "-1", 10, -1, 0 },
        { "space", " 1", 10, -1, 0 },
        { "trailing junk", "1x", 10, -1, 0 },
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint64_t v = 12345;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(
            parse_u64(cases[i].input, strlen(cases[i].input), cases[i].max, &v), cases[i].want);
        assert_int_equal(v, cases[i].want == 0 ? cases[i].want_v : 12345);
    }
    /* Only len bytes are read. */
    uint64_t v = 0;
    assert_int_equal(parse_u64("123abc", 3, 1000, &v), 0);
    assert_int_equal(v, 123);
    assert_int_equal(parse_u64(NULL, 0, 10, &v), -1);
}

static void
test_size(void **state)
{
    static const struct {
        const char *name;
        const char *input;
        int want;
        uint64_t want_v;
    } cases[] = {
        { "bytes", "52428800", 0, 52428800 },
        { "zero", "0", 0, 0 },
        { "k", "4k", 0, 4096 },
        { "K", "4K", 0, 4096 },
        { "m", "50m", 0, 50ull << 20 },
        { "g", "2g", 0, 2ull << 30 },
        { "largest g", "17179869183g", 0, 17179869183ull << 30 },
        { "g overflow", "17179869184g", -1, 0 },
        { "bytes overflow", "18446744073709551616", -1, 0 },
        { "bad suffix", "5x", -1, 0 },
        { "two suffixes", "5kk", -1, 0 },
        { "suffix only", "k", -1, 0 },
        { "empty", "", -1, 0 },
        { "space", "5 k", -1, 0 },
        { "negative", "-5", -1, 0 },
        { "fraction", "1.5m", -1, 0 },
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint64_t v = 777;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(parse_size(cases[i].input, &v), cases[i].want);
        assert_int_equal(v, cases[i].want == 0 ? cases[i].want_v : 777);
    }
}

static void
test_duration(void **state)
{
    static const struct {
        const char *name;
        const char *input;
        bool allow_zero;
        int want;
        int64_t want_ms;
    } cases[] = {
        { "bare seconds", "90", false, 0, 90000 },
        { "s", "90s", false, 0, 90000 },
        { "m", "1m", false, 0, 60000 },
        { "h", "1h", false, 0, 3600000 },
        { "d", "5d", false, 0, 5 * 86400000LL },
        { "upper", "2M", false, 0, 120000 },
        { "zero refused", "0s", false, -1, 0 },
        { "zero allowed", "0", true, 0, 0 },
        { "largest s", "9223372036854775s", false, 0, 9223372036854775000LL },
        { "s overflow", "9223372036854776s", false, -1, 0 },
        { "d overflow", "106751991168d", false, -1, 0 },
        { "largest d", "106751991167d", false, 0, 106751991167LL * 86400000LL },
        { "ms not supported", "10ms", false, -1, 0 },
        { "bad suffix", "10w", false, -1, 0 },
        { "compound", "1h30m", false, -1, 0 },
        { "empty", "", false, -1, 0 },
        { "suffix only", "s", false, -1, 0 },
        { "negative", "-1s", false, -1, 0 },
        { "space", "1 s", false, -1, 0 },
    };
    for (size_t i = 0; i < N(cases); i++) {
        int64_t v = 555;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(parse_duration(cases[i].input, cases[i].allow_zero, &v), cases[i].want);
        assert_int_equal(v, cases[i].want == 0 ? cases[i].want_ms : 555);
    }
}

static void
test_hostport(void **state)
{
    static const struct {
        const char *name;
        const char *input;
        uint16_t default_port;
        int want;
        const char *want_host;
        uint16_t want_port;
    } cases[] = {
        { "v4", "127.0.0.1:2525", 0, 0, "127.0.0.1", 2525 },
        { "name", "mail.example.com:587", 0, 0, "mail.example.com", 587 },
        { "v6", "[::1]:25", 0, 0, "::1", 25 },
        { "v6 full", "[2001:db8::1]:65535", 0, 0, "2001:db8::1", 65535 },
        { "v4 in brackets", "[192.0.2.1]:25", 0, 0, "192.0.2.1", 25 },
        { "bare host with default", "relay.example.net", 25, 0, "relay.example.net", 25 },
        { "bare v6 with default", "[::1]", 53, 0, "::1", 53 },
        { "port overrides default", "relay:2525", 25, 0, "relay", 2525 },
        { "bare host without default", "relay.example.net", 0, -1, NULL, 0 },
        { "port zero", "host:0", 0, -1, NULL, 0 },
        { "port too big", "host:65536", 0, -1, NULL, 0 },
        { "port huge", "host:99999999999999999999999", 0, -1, NULL, 0 },
        { "port empty", "host:", 25, -1, NULL, 0 },
        { "port junk", "host:25x", 0, -1, NULL, 0 },
        { "port sign", "host:+25", 0, -1, NULL, 0 },
        { "v6 unbracketed", "::1:25", 0, -1, NULL, 0 },
        { "bad v6 in brackets", "[::g]:25", 0, -1, NULL, 0 },
        { "name in brackets", "[mail.example.com]:25", 0, -1, NULL, 0 },
        { "unclosed bracket", "[::1:25", 0, -1, NULL, 0 },
        { "junk after bracket", "[::1]x25", 0, -1, NULL, 0 },
        { "empty host", ":25", 0, -1, NULL, 0 },
        { "empty", "", 25, -1, NULL, 0 },
        { "empty brackets", "[]:25", 0, -1, NULL, 0 },
        { "bad host chars", "ho st:25", 0, -1, NULL, 0 },
        { "underscore", "a_b:25", 0, -1, NULL, 0 },
    };
    for (size_t i = 0; i < N(cases); i++) {
        char host[64] = "untouched";
        uint16_t port = 1;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(
            parse_hostport(cases[i].input, host, sizeof(host), cases[i].default_port, &port),
            cases[i].want);
        if (cases[i].want == 0) {
            assert_string_equal(host, cases[i].want_host);
            assert_int_equal(port, cases[i].want_port);
        } else {
            assert_int_equal(port, 1);
        }
    }
}

static void
test_hostport_capacity(void **state)
{
    char small[9], big[300];
    uint16_t port = 0;
    /* "a.example" needs 10 bytes with its NUL. */
    assert_int_equal(parse_hostport("a.example:25", small, sizeof(small), 0, &port), -1);
    assert_int_equal(parse_hostport("a.exampl:25", small, sizeof(small), 0, &port), 0);
    assert_string_equal(small, "a.exampl");
    /* A 300-character host name is refused, never truncated. */
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(parse_hostport(big, small, sizeof(small), 25, &port), -1);
}

static void
test_str_ieq_lower(void **state)
{
    static const struct {
        const char *name;
        const char *a;
        size_t alen;
        const char *b;
        bool want;
    } cases[] = {
        { "same", "json", 4, "json", true },
        { "case", "JSon", 4, "json", true },
        { "prefix of b", "jso", 3, "json", false },
        { "b prefix of a", "jsonx", 5, "json", false },
        { "length bounds a", "jsonx", 4, "json", true },
        { "empty both", "", 0, "", true },
        { "differs", "text", 4, "json", false },
    };
    for (size_t i = 0; i < N(cases); i++) {
        print_message("case %s\n", cases[i].name);
        assert_int_equal(str_ieq(cases[i].a, cases[i].alen, cases[i].b), cases[i].want);
    }
    char s[] = "MiXeD.Example-1\xc3\x89";
    str_lower(s);
    assert_string_equal(s, "mixed.example-1\xc3\x89");
}

static void
test_domain(void **state)
{
    char label[65], long_name[300];
    static const struct {
        const char *name;
        const char *input;
        bool utf8;
        bool want;
    } cases[] = {
        { "simple", "example.com", false, true },
        { "single label", "localhost", false, true },
        { "trailing dot", "example.com.", false, true },
        { "digits and hyphen", "a-1.b2.c", false, true },
        { "upper", "EXAMPLE.COM", false, true },
        { "empty", "", false, false },
        { "only dot", ".", false, false },
        { "leading dot", ".example.com", false, false },
        { "double dot", "a..b", false, false },
        { "leading hyphen", "-a.com", false, false },
        { "trailing hyphen", "a-.com", false, false },
        { "underscore", "a_b.com", false, false },
        { "space", "a b.com", false, false },
        { "two trailing dots", "a.com..", false, false },
        { "utf8 refused", "b\303\274cher.de", false, false },
        { "utf8 allowed", "b\303\274cher.de", true, true },
        { "bad utf8", "b\303cher.de", true, false },
        { "overlong utf8", "\xc0\xaf.de", true, false },
        { "surrogate", "\xed\xa0\x80.de", true, false },
    };
    for (size_t i = 0; i < N(cases); i++) {
        print_message("case %s\n", cases[i].name);
        assert_int_equal(
            str_is_domain(cases[i].input, strlen(cases[i].input), cases[i].utf8), cases[i].want);
    }
    memset(label, 'a', 64);
    label[64] = '\0';
    assert_true(str_is_domain(label, 63, false));  /* 63-octet label */
    assert_false(str_is_domain(label, 64, false)); /* 64 is one too many */
    /* 253 octets is the limit (RFC 1035 §2.3.4 minus the root label). */
    for (size_t i = 0; i < sizeof(long_name); i++)
        long_name[i] = (i % 4 == 3) ? '.' : 'a';
    long_name[0] = 'a';
    assert_true(str_is_domain(long_name, 253, false));
    assert_false(str_is_domain(long_name, 255, false));
    /* Only len bytes are looked at. */
    assert_true(str_is_domain("example.com junk", 11, false));
}

/* ';'-separated name=value records: blanks trimmed, empty fields skipped,
 * a field without '=' told apart, the end reached. */
static void
test_next_tag(void **state)
{
    static const char rec[] = " v=DMARC1 ;; p = reject;flag ; rua=mailto:a@b.test;";
    static const struct {
        const char *name, *val;
        bool has_eq;
    } want[] = { { "v", "DMARC1", true }, { "p", "reject", true }, { "flag", "", false },
        { "rua", "mailto:a@b.test", true } };
    size_t i = 0, k = 0;
    struct str_tag t;
    while (str_next_tag(rec, strlen(rec), &i, &t)) {
        assert_true(k < sizeof(want) / sizeof(want[0]));
        assert_int_equal(t.name_len, strlen(want[k].name));
        assert_memory_equal(t.name, want[k].name, t.name_len);
        assert_int_equal(t.val_len, strlen(want[k].val));
        assert_memory_equal(t.val, want[k].val, t.val_len);
        assert_int_equal(t.has_eq, want[k].has_eq);
        k++;
    }
    assert_int_equal(k, 4);
    i = 0;
    assert_false(str_next_tag(" ; ;", 4, &i, &t));
}

/* RFC 4648 §10's vectors, appended to what out holds, and back through the
 * strict decoder. */
static void
test_b64_encode(void **state)
{
    static const char *const vec[][2] = { { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" },
        { "foo", "Zm9v" }, { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" },
        { "foobar", "Zm9vYmFy" } };
    for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
        struct buf b = BUF_INIT;
        unsigned char back[16];
        size_t n;
        buf_append_str(&b, ">");
        b64_encode(vec[i][0], strlen(vec[i][0]), &b);
        assert_string_equal(b.data + 1, vec[i][1]);
        assert_int_equal(b.len, 1 + strlen(vec[i][1]));
        assert_int_equal(b64_decode(b.data + 1, b.len - 1, back, sizeof(back), &n), 0);
        assert_int_equal(n, strlen(vec[i][0]));
        assert_memory_equal(back, vec[i][0], n);
        buf_fini(&b);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_u64),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_hostport_capacity),
        cmocka_unit_test(test_str_ieq_lower),
        cmocka_unit_test(test_domain),
        cmocka_unit_test(test_next_tag),
        cmocka_unit_test(test_b64_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests for util/cidr.c: parsing (v4, v6, bare addresses, prefix
 * bounds, host bits cleared), matching (including v4-mapped v6 clients),
 * loopback detection and the numeric text form of addresses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "util/cidr.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Build a sockaddr from numeric text (v4 or v6). */
static void
make_sa(const char *text, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, text, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        return;
    }
    assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    s6->sin6_family = AF_INET6;
}

static void
test_parse(void **state)
{
    static const struct {
        const char *name;
        const char *input;
        int want;
        int family;
        const char *want_addr; /* network address after clearing host bits */
        unsigned prefix;
    } cases[] = {
        { "v4 /8", "10.0.0.0/8", 0, AF_INET, "10.0.0.0", 8 },
        { "v4 host bits cleared", "10.1.2.3/8", 0, AF_INET, "10.0.0.0", 8 },
        { "v4 odd prefix", "192.168.255.255/17", 0, AF_INET, "192.168.128.0", 17 },
        { "v4 bare", "192.0.2.7", 0, AF_INET, "192.0.2.7", 32 },
        { "v4 /0", "1.2.3.4/0", 0, AF_INET, "0.0.0.0", 0 },
        { "v4 /32", "1.2.3.4/32", 0, AF_INET, "1.2.3.4", 32 },
        { "v4 /33", "10.0.0.0/33", -1, 0, NULL, 0 },
        { "v6 loopback", "::1/128", 0, AF_INET6, "::1", 128 },
        { "v6 /64 host bits", "2001:db8::1234/64", 0, AF_INET6, "2001:db8::", 64 },
        { "v6 /0", "2001:db8::1/0", 0, AF_INET6, "::", 0 },
        { "v6 /127", "2001:db8::ffff/127", 0, AF_INET6, "2001:db8::fffe", 127 },
        { "v6 bare", "fe80::1", 0, AF_INET6, "fe80::1", 128 },
        { "v6 /129", "::1/129", -1, 0, NULL, 0 },
        { "v4-mapped network", "::ffff:10.0.0.0/104", 0, AF_INET6, "::ffff:10.0.0.0", 104 },
        { "empty prefix", "10.0.0.0/", -1, 0, NULL, 0 },
        { "negative prefix", "10.0.0.0/-1", -1, 0, NULL, 0 },
        { "prefix junk", "10.0.0.0/8x", -1, 0, NULL, 0 },
        { "huge prefix", "10.0.0.0/99999999999999999999999", -1, 0, NULL, 0 },
        { "two slashes", "10.0.0.0/8/8", -1, 0, NULL, 0 },
        { "short v4", "10.0.0/8", -1, 0, NULL, 0 },
        { "octet too big", "256.0.0.0/8", -1, 0, NULL, 0 },
        { "name", "localhost/8", -1, 0, NULL, 0 },
        { "empty", "", -1, 0, NULL, 0 },
        { "only slash", "/8", -1, 0, NULL, 0 },
        { "space", "10.0.0.0 /8", -1, 0, NULL, 0 },
        { "too long", "0000:0000:0000:0000:0000:0000:0000:0000:0000:0000/128", -1, 0, NULL, 0 },
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct cidr c = { 99, { 0 }, 99 };
        print_message("case %s\n", cases[i].name);
        assert_int_equal(cidr_parse(cases[i].input, &c), cases[i].want);
        if (cases[i].want < 0) {
            assert_int_equal(c.family, 99); /* untouched on error */
            continue;
        }
        uint8_t want[16] = { 0 };
        assert_int_equal(inet_pton(cases[i].family, cases[i].want_addr, want), 1);
        assert_int_equal(c.family, cases[i].family);
        assert_int_equal(c.prefix, cases[i].prefix);
        assert_memory_equal(c.addr, want, cases[i].family == AF_INET ? 4 : 16);
    }
    assert_int_equal(cidr_parse(NULL, &(struct cidr){ 0 }), -1);
}

static void
test_match(void **state)
{
    static const struct {
        const char *name;
        const char *net;
        const char *addr;
        bool want;
    } cases[] = {
        { "v4 inside", "10.0.0.0/8", "10.200.3.4", true },
        { "v4 outside", "10.0.0.0/8", "11.0.0.1", false },
        { "v4 edge low", "192.168.128.0/17", "192.168.128.0", true },
        { "v4 edge high", "192.168.128.0/17", "192.168.255.255", true },
        { "v4 just below", "192.168.128.0/17", "192.168.127.255", false },
        { "v4 /0 matches all v4", "0.0.0.0/0", "203.0.113.9", true },
        { "v4 /32 exact", "192.0.2.7", "192.0.2.7", true },
        { "v4 /32 other", "192.0.2.7", "192.0.2.8", false },
        { "v4-mapped client in v4 net", "127.0.0.0/8", "::ffff:127.0.0.1", true },
        { "v4-mapped client outside v4 net", "127.0.0.0/8", "::ffff:128.0.0.1", false },
        { "v4 client in v4-mapped v6 net", "::ffff:10.0.0.0/104", "10.9.8.7", true },
        { "v4 client outside v4-mapped v6 net", "::ffff:10.0.0.0/104", "11.9.8.7", false },
        { "v6 inside", "2001:db8::/32", "2001:db8:1::5", true },
        { "v6 outside", "2001:db8::/32", "2001:db9::5", false },
        { "v6 odd prefix", "2001:db8::/33", "2001:db8:7fff::1", true },
        { "v6 odd prefix out", "2001:db8::/33", "2001:db8:8000::1", false },
        { "v6 loopback", "::1/128", "::1", true },
        { "v6 net vs v4 client", "2001:db8::/32", "10.0.0.1", false },
        { "v6 /0 takes v4 clients (as v4-mapped)", "::/0", "10.0.0.1", true },
        { "v4 net vs v6 client", "10.0.0.0/8", "2001:db8::1", false },
        { "v4 net vs v4-compatible", "10.0.0.0/8", "::10.0.0.1", false },
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct cidr net;
        struct sockaddr_storage ss;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(cidr_parse(cases[i].net, &net), 0);
        make_sa(cases[i].addr, &ss);
        assert_int_equal(cidr_match(&net, (struct sockaddr *)&ss), cases[i].want);
    }
}

static void
test_match_any(void **state)
{
    struct cidr nets[2];
    struct sockaddr_storage ss;
    assert_int_equal(cidr_parse("127.0.0.0/8", &nets[0]), 0);
    assert_int_equal(cidr_parse("::1/128", &nets[1]), 0);
    make_sa("::1", &ss);
    assert_true(cidr_match_any(nets, 2, (struct sockaddr *)&ss));
    make_sa("127.1.2.3", &ss);
    assert_true(cidr_match_any(nets, 2, (struct sockaddr *)&ss));
    make_sa("192.0.2.1", &ss);
    assert_false(cidr_match_any(nets, 2, (struct sockaddr *)&ss));
    make_sa("::1", &ss);
    assert_false(cidr_match_any(nets, 0, (struct sockaddr *)&ss));

    /* Unknown families never match. */
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    assert_false(cidr_match_any(nets, 2, (struct sockaddr *)&ss));
}

static void
test_loopback_ntop(void **state)
{
    static const struct {
        const char *name;
        const char *addr;
        bool loopback;
        const char *text;
    } cases[] = {
        { "v4 127.0.0.1", "127.0.0.1", true, "127.0.0.1" },
        { "v4 127.255.0.9", "127.255.0.9", true, "127.255.0.9" },
        { "v4 other", "10.0.0.1", false, "10.0.0.1" },
        { "v6 ::1", "::1", true, "::1" },
        { "v6 ::2", "::2", false, "::2" },
        { "v4-mapped loopback", "::ffff:127.0.0.1", true, "::ffff:127.0.0.1" },
        { "v4-mapped other", "::ffff:10.0.0.1", false, "::ffff:10.0.0.1" },
        { "v6 global", "2001:db8::1", false, "2001:db8::1" },
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage ss;
        char buf[64];
        print_message("case %s\n", cases[i].name);
        make_sa(cases[i].addr, &ss);
        assert_int_equal(sockaddr_is_loopback((struct sockaddr *)&ss), cases[i].loopback);
        assert_ptr_equal(sockaddr_ntop((struct sockaddr *)&ss, buf, sizeof(buf)), buf);
        assert_string_equal(buf, cases[i].text);
    }

    struct sockaddr_storage ss;
    char small[4];
    make_sa("192.0.2.1", &ss);
    sockaddr_ntop((struct sockaddr *)&ss, small, sizeof(small));
    assert_string_equal(small, "?"); /* does not fit: never truncated silently */
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    char buf[64];
    assert_string_equal(sockaddr_ntop((struct sockaddr *)&ss, buf, sizeof(buf)), "?");
    assert_false(sockaddr_is_loopback((struct sockaddr *)&ss));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_match_any),
        cmocka_unit_test(test_loopback_ntop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

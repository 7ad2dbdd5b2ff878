/*
 * Unit tests for the relay policy: a table of attempts to get an open relay
 * (trailing dots, case, subdomains of exact entries, look-alike suffixes,
 * address literals, empty domains, IPv4-mapped IPv6 clients, local parts
 * that route elsewhere) next to the cases that must pass (relay_networks,
 * relay_domains, AUTH).
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

#include "smtp/policy.h"
#include "util/cidr.h"
#include "util/util.h"

/* Fill ss from a numeric address; returns the sockaddr or NULL for NULL. */
static const struct sockaddr *
mkaddr(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (s == NULL)
        return NULL;
    if (strchr(s, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(2525);
        assert_int_equal(inet_pton(AF_INET6, s, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(2525);
        assert_int_equal(inet_pton(AF_INET, s, &a->sin_addr), 1);
    }
    return (const struct sockaddr *)ss;
}

static void
test_may_relay(void **state)
{
    static const char *const nets[] = { "127.0.0.0/8", "::1/128", "192.0.2.0/24" };
    static char *domains[] = { "example.com", ".sub.example.org" };
    static const struct {
        const char *name;
        const char *client;
        bool auth;
        const char *rcpt; /* the recipient address */
        bool want;
    } cases[] = {
        /* relay_domains, from an outside client */
        { "exact", "203.0.113.5", false, "u@example.com", true },
        { "exact upper", "203.0.113.5", false, "u@EXAMPLE.COM", true },
        { "exact mixed", "203.0.113.5", false, "u@ExAmPlE.cOm", true },
        { "exact trailing dot", "203.0.113.5", false, "u@example.com.", true },
        { "two trailing dots", "203.0.113.5", false, "u@example.com..", false },
        { "subdomain of exact", "203.0.113.5", false, "u@a.example.com", false },
        { "suffix attack", "203.0.113.5", false, "u@example.com.evil", false },
        { "suffix attack dot", "203.0.113.5", false, "u@example.com.evil.", false },
        { "prefix attack", "203.0.113.5", false, "u@evilexample.com", false },
        { "shorter", "203.0.113.5", false, "u@example.co", false },
        { "leading dot", "203.0.113.5", false, "u@.example.com", false },
        { "at sign", "203.0.113.5", false, "u@evil@example.com", false },
        { "space", "203.0.113.5", false, "u@example.com ", false },
        { "sub", "203.0.113.5", false, "u@x.sub.example.org", true },
        { "sub upper dot", "203.0.113.5", false, "u@X.SUB.EXAMPLE.ORG.", true },
        { "sub deep", "203.0.113.5", false, "u@a.b.sub.example.org", true },
        { "sub apex", "203.0.113.5", false, "u@sub.example.org", false },
        { "sub glued", "203.0.113.5", false, "u@xsub.example.org", false },
        { "sub empty label", "203.0.113.5", false, "u@a..sub.example.org", false },
        { "sub dot only", "203.0.113.5", false, "u@.sub.example.org", false },
        { "sub suffix attack", "203.0.113.5", false, "u@x.sub.example.org.evil", false },
        { "other", "203.0.113.5", false, "u@evil.test", false },
        { "empty", "203.0.113.5", false, "u@", false },
        { "dot", "203.0.113.5", false, "u@.", false },
        { "null domain", "203.0.113.5", false, NULL, false },
        { "ipv4 literal", "203.0.113.5", false, "u@[192.0.2.1]", false },
        { "ipv6 literal", "203.0.113.5", false, "u@[IPv6:::1]", false },
        { "literal of listed name", "203.0.113.5", false, "u@[example.com]", false },
        /* clients */
        { "v6 outside", "2001:db8::1", false, "u@evil.test", false },
        { "loopback", "127.0.0.1", false, "u@evil.test", true },
        { "loopback 127/8", "127.9.8.7", false, "u@evil.test", true },
        { "v6 loopback", "::1", false, "u@evil.test", true },
        { "listed net", "192.0.2.77", false, "u@evil.test", true },
        { "next to listed net", "192.0.3.1", false, "u@evil.test", false },
        { "v4-mapped loopback", "::ffff:127.0.0.1", false, "u@evil.test", true },
        { "v4-mapped listed", "::ffff:192.0.2.77", false, "u@evil.test", true },
        { "v4-mapped outside", "::ffff:203.0.113.5", false, "u@evil.test", false },
        { "v4-compatible not mapped", "::127.0.0.1", false, "u@evil.test", false },
        { "v6 with v4 tail outside", "2001:db8::7f00:1", false, "u@evil.test", false },
        { "no address", NULL, false, "u@evil.test", false },
        { "no address listed domain", NULL, false, "u@example.com", true },
        { "inside empty domain", "127.0.0.1", false, "u@", true },
        { "inside literal", "192.0.2.1", false, "u@[203.0.113.9]", true },
        /* a local part that routes elsewhere, from outside: refused */
        { "percent hack", "203.0.113.5", false, "user%evil.test@example.com", false },
        { "bang path", "203.0.113.5", false, "evil.test!user@example.com", false },
        { "quoted at", "203.0.113.5", false, "\"user@evil.test\"@example.com", false },
        { "quoted percent", "203.0.113.5", false, "\"user%evil.test\"@example.com", false },
        { "escaped at", "203.0.113.5", false, "\"user\\@evil.test\"@example.com", false },
        { "percent to sub", "203.0.113.5", false, "user%evil.test@x.sub.example.org", false },
        { "quoted plain", "203.0.113.5", false, "\"user name\"@example.com", true },
        { "plus and dots", "203.0.113.5", false, "first.last+tag@example.com", true },
        { "no domain", "203.0.113.5", false, "postmaster", false },
        { "empty rcpt", "203.0.113.5", false, "", false },
        /* ... but from our own clients it is their business */
        { "percent inside", "127.0.0.1", false, "user%evil.test@example.com", true },
        { "bang inside", "192.0.2.9", false, "evil.test!user@evil.test", true },
        { "no domain inside", "127.0.0.1", false, "postmaster", true },
        /* AUTH */
        { "auth outside", "203.0.113.5", true, "u@evil.test", true },
        { "auth literal", "203.0.113.5", true, "u@[203.0.113.9]", true },
        { "auth empty", "2001:db8::1", true, "u@", true },
        { "auth percent", "203.0.113.5", true, "user%evil.test@evil.test", true },
        { "auth no address", NULL, true, "u@evil.test", true },
    };
    struct cidr cidrs[3];
    struct config cfg;

    memset(&cfg, 0, sizeof(cfg));
    for (size_t i = 0; i < TERN_ARRAY_LEN(nets); i++)
        assert_int_equal(cidr_parse(nets[i], &cidrs[i]), 0);
    cfg.relay_networks = cidrs;
    cfg.n_relay_networks = TERN_ARRAY_LEN(cidrs);
    cfg.relay_domains = domains;
    cfg.n_relay_domains = TERN_ARRAY_LEN(domains);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct sockaddr_storage ss;
        const struct sockaddr *sa = mkaddr(cases[i].client, &ss);
        print_message("case %s\n", cases[i].name);
        assert_int_equal(policy_may_relay(&cfg, sa, cases[i].auth, cases[i].rcpt), cases[i].want);
    }
}

/* Empty configuration: nothing relays without AUTH. */
static void
test_closed_by_default(void **state)
{
    struct config cfg;
    struct sockaddr_storage ss;
    memset(&cfg, 0, sizeof(cfg));
    assert_false(policy_may_relay(&cfg, mkaddr("127.0.0.1", &ss), false, "u@example.com"));
    assert_false(policy_may_relay(&cfg, mkaddr("::1", &ss), false, ""));
    assert_false(policy_may_relay(&cfg, mkaddr("::1", &ss), false, NULL));
    assert_true(policy_may_relay(&cfg, mkaddr("::1", &ss), true, "u@example.com"));
}

/* Entries that config would normally clean up are still handled safely. */
static void
test_domain_listed(void **state)
{
    static char *list[] = { "", ".", "Trailing.Example.", ".Dot.Example.", NULL };
    static const struct {
        const char *domain;
        bool want;
    } cases[] = {
        { "trailing.example", true },
        { "TRAILING.EXAMPLE.", true },
        { "x.trailing.example", false },
        { "x.dot.example", true },
        { "dot.example", false },
        { "anything", false },
        { "", false },
        { ".", false },
        { "..", false },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        print_message("case %s\n", cases[i].domain);
        assert_int_equal(
            policy_domain_listed(list, TERN_ARRAY_LEN(list), cases[i].domain), cases[i].want);
    }
    assert_false(policy_domain_listed(NULL, 0, "example.com"));
}

/* Session admission: the total limit for everyone, the reserved share and
 * the per-address limit for outsiders only. */
static void
test_admit_session(void **state)
{
    static const struct {
        const char *name;
        bool trusted;
        size_t sessions, outsiders, from_addr;
        const char *want; /* NULL: admitted */
    } cases[] = {
        { "empty", false, 0, 0, 0, NULL },
        { "outsider below share", false, 6, 6, 0, NULL },
        { "outsider share full", false, 7, 7, 0, "reserved_sessions" },
        { "outsider, share full of insiders", false, 9, 2, 0, NULL },
        { "insider in the reserve", true, 9, 7, 50, NULL },
        { "insider at max", true, 10, 0, 0, "max_sessions" },
        { "outsider at max", false, 10, 3, 0, "max_sessions" },
        { "outsider per address", false, 2, 2, 2, "max_sessions_per_ip" },
        { "insider not per address", true, 2, 0, 2, NULL },
    };
    struct config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.max_sessions = 10;
    cfg.reserved_sessions = 3;
    cfg.max_sessions_per_ip = 2;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        const char *got = policy_admit_session(
            &cfg, cases[i].trusted, cases[i].sessions, cases[i].outsiders, cases[i].from_addr);
        print_message("case %s\n", cases[i].name);
        if (cases[i].want == NULL)
            assert_null(got);
        else
            assert_string_equal(got, cases[i].want);
    }
    cfg.reserved_sessions = 0; /* no reserve: outsiders may take every session */
    assert_null(policy_admit_session(&cfg, false, 9, 9, 0));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_may_relay),
        cmocka_unit_test(test_closed_by_default),
        cmocka_unit_test(test_domain_listed),
        cmocka_unit_test(test_admit_session),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

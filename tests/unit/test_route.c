/*
 * Routing decisions (src/sched/route.c) and the routes/sender_routes/
 * smarthost settings that feed them, from real configuration text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "sched/route.h"
#include "util/buf.h"
#include "util/util.h"

static struct config *
load(const char *const *ov, size_t n)
{
    struct buf err = BUF_INIT;
    const char *all[16];
    size_t k = 0;
    all[k++] = "spool_dir=/nonexistent";
    all[k++] = "hostname=relay.test";
    for (size_t i = 0; i < n && k < TERN_ARRAY_LEN(all); i++)
        all[k++] = ov[i];
    struct config *c = config_load(NULL, all, k, false, &err);
    if (c == NULL)
        fail_msg("config: %s", err.data);
    buf_fini(&err);
    return c;
}

struct want_hop {
    const char *host;
    unsigned port;
    bool mx;
};

struct route_case {
    const char *name;
    const char *settings[4];
    const char *sender, *rcpt;
    const char *key;
    struct want_hop hops[3];
    size_t n_hops;
};

static const struct route_case cases[] = {
    { "mx by default", { "delivery_port=2525" }, "a@src.test", "b@Example.ORG", "mx:example.org",
        { { "example.org", 2525, true } }, 1 },
    { "trailing dot dropped", { NULL }, "a@src.test", "b@example.org.", "mx:example.org",
        { { "example.org", 25, true } }, 1 },
    { "smarthost list is failover", { "smarthost=[127.0.0.6]:26 relay.test:2600" }, "a@src.test",
        "b@example.org", "smarthost",
        { { "127.0.0.6", 26, false }, { "relay.test", 2600, false } }, 2 },
    { "exact route beats smarthost", { "smarthost=[127.0.0.6]:26", "routes=example.org=[127.0.0.5]:2525" },
        "a@src.test", "b@example.org", "route:example.org", { { "127.0.0.5", 2525, false } }, 1 },
    { "route without brackets looks up MX, default port",
        { "delivery_port=2526", "routes=example.org=mx.example.net" }, "a@src.test",
        "b@example.org", "route:example.org", { { "mx.example.net", 2526, true } }, 1 },
    { "subdomain route", { "routes=.example.org=[10.0.0.1]:25" }, "a@src.test",
        "b@a.b.example.org", "route:.example.org", { { "10.0.0.1", 25, false } }, 1 },
    { "subdomain route does not match the parent", { "routes=.example.org=[10.0.0.1]:25" },
        "a@src.test", "b@example.org", "mx:example.org", { { "example.org", 25, true } }, 1 },
    { "not a suffix of another name", { "routes=.example.org=[10.0.0.1]:25" }, "a@src.test",
        "b@badexample.org", "mx:badexample.org", { { "badexample.org", 25, true } }, 1 },
    { "longest subdomain entry wins",
        { "routes=.org=[10.0.0.1]:25 .example.org=[10.0.0.2]:25" }, "a@src.test",
        "b@x.example.org", "route:.example.org", { { "10.0.0.2", 25, false } }, 1 },
    { "exact entry beats a subdomain entry",
        { "routes=.example.org=[10.0.0.1]:25 x.example.org=[10.0.0.3]:25" }, "a@src.test",
        "b@X.example.org", "route:x.example.org", { { "10.0.0.3", 25, false } }, 1 },
    { "sender route beats smarthost",
        { "smarthost=[127.0.0.6]:26", "sender_routes=src.test=[127.0.0.9]:587" }, "a@SRC.test",
        "b@example.org", "sender:src.test", { { "127.0.0.9", 587, false } }, 1 },
    { "recipient route beats sender route",
        { "sender_routes=src.test=[127.0.0.9]:587", "routes=example.org=[127.0.0.5]:25" },
        "a@src.test", "b@example.org", "route:example.org", { { "127.0.0.5", 25, false } }, 1 },
    { "null sender takes no sender route", { "sender_routes=src.test=[127.0.0.9]:587" }, "",
        "b@example.org", "mx:example.org", { { "example.org", 25, true } }, 1 },
    { "route failover hops", { "routes=example.org=[127.0.0.5]:25,[127.0.0.6]:26,backup.test" },
        "a@src.test", "b@example.org", "route:example.org",
        { { "127.0.0.5", 25, false }, { "127.0.0.6", 26, false }, { "backup.test", 25, true } },
        3 },
    { "IPv6 literal hop", { "routes=example.org=[::1]:2525" }, "a@src.test", "b@example.org",
        "route:example.org", { { "::1", 2525, false } }, 1 },
};

static void
test_route_table(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        const struct route_case *tc = &cases[i];
        size_t n = 0;
        while (n < 4 && tc->settings[n] != NULL)
            n++;
        struct config *c = load(tc->settings, n);
        struct delivery_dest d;
        route_decide(c, tc->sender, tc->rcpt, &d);
        if (strcmp(d.key, tc->key) != 0)
            fail_msg("%s: key %s, want %s", tc->name, d.key, tc->key);
        if (d.n_hops != tc->n_hops)
            fail_msg("%s: %zu hops, want %zu", tc->name, d.n_hops, tc->n_hops);
        for (size_t h = 0; h < d.n_hops; h++) {
            if (strcmp(d.hops[h].host, tc->hops[h].host) != 0 ||
                d.hops[h].port != tc->hops[h].port || d.hops[h].mx != tc->hops[h].mx)
                fail_msg("%s: hop %zu is %s:%u mx=%d, want %s:%u mx=%d", tc->name, h,
                    d.hops[h].host, d.hops[h].port, d.hops[h].mx, tc->hops[h].host,
                    tc->hops[h].port, tc->hops[h].mx);
        }
        config_unref(c);
    }
}

static void
test_bad_routes_rejected(void **state)
{
    static const char *const bad[] = {
        "routes=example.org",             /* no hop */
        "routes==[10.0.0.1]:25",          /* no domain */
        "routes=example.org=",            /* empty hop */
        "routes=example.org=[10.0.0.1",   /* unclosed bracket */
        "routes=example.org=[]:25",       /* empty host */
        "routes=example.org=host:0",      /* port 0 */
        "routes=example.org=host:70000",  /* port out of range */
        "routes=example.org=::1:25",      /* bare IPv6 */
        "routes=exa_mple.org=[10.0.0.1]", /* bad domain */
        "routes=example.org=[10.0.0.1]x", /* junk after the bracket */
        "routes=example.org=a,,b",        /* empty hop in the list */
        "routes=example.org=h1,h2,h3,h4,h5,h6,h7,h8,h9", /* too many hops */
        "sender_routes=src.test",
        "ip_family=ipv5",
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(bad); i++) {
        struct buf err = BUF_INIT;
        const char *ov[] = { "spool_dir=/nonexistent", bad[i] };
        struct config *c = config_load(NULL, ov, 2, false, &err);
        if (c != NULL)
            fail_msg("accepted: %s", bad[i]);
        if (err.data == NULL || strstr(err.data, "-o ") == NULL)
            fail_msg("no -o error line for %s: %s", bad[i], err.data ? err.data : "");
        buf_fini(&err);
    }
}

static void
test_defaults(void **state)
{
    struct config *c = load(NULL, 0);
    assert_int_equal(c->n_smarthosts, 0);
    assert_string_equal(c->smarthost.host, "");
    assert_int_equal(c->n_routes, 0);
    assert_int_equal(c->ip_family, IPFAM_PREFER_V4);
    assert_int_equal(c->max_rcpts_per_txn, 100);
    assert_int_equal(c->delivery_rate, 0);
    assert_true(c->max_connections >= c->delivery_concurrency);
    config_unref(c);
    const char *ov[] = { "smarthost=[192.0.2.1]:587 [192.0.2.2]:25", "ip_family=ipv6" };
    c = load(ov, 2);
    assert_int_equal(c->n_smarthosts, 2);
    assert_string_equal(c->smarthost.host, "192.0.2.1"); /* the first, for single-hop callers */
    assert_int_equal(c->smarthost.port, 587);
    assert_int_equal(c->ip_family, IPFAM_V6);
    config_unref(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_table),
        cmocka_unit_test(test_bad_routes_rejected),
        cmocka_unit_test(test_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests of src/dns: status classification, MX ordering and shuffling,
 * the raw-packet TTL reader and MX decoding on hand-built (also truncated and
 * hostile) packets, the LRU cache, and real lookups against a dnsmasq child
 * process on a loopback port (null MX, NXDOMAIN, NODATA, families, cache
 * hits with the server gone, a dead server giving TEMP).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ares.h>
#include <arpa/inet.h>
#include <cmocka.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "dns/dns.h"
#include "dns/dns_int.h"
#include "testnet.h"
#include "util/log.h"
#include "util/util.h"

/* ---- classification ---- */

static uint16_t
must_free_port(void)
{
    uint16_t port = testnet_free_port();
    if (port == 0)
        fail_msg("no free port");
    return port;
}

static const struct {
    const char *name;
    int status;
    enum dns_rc want;
} classify_cases[] = {
    { "success", ARES_SUCCESS, DNS_OK },
    { "nxdomain", ARES_ENOTFOUND, DNS_NXDOMAIN },
    { "nodata", ARES_ENODATA, DNS_NODATA },
    { "bad name", ARES_EBADNAME, DNS_BADNAME },
    { "servfail", ARES_ESERVFAIL, DNS_TEMP },
    { "timeout", ARES_ETIMEOUT, DNS_TEMP },
    { "refused conn", ARES_ECONNREFUSED, DNS_TEMP },
    { "refused rcode", ARES_EREFUSED, DNS_TEMP },
    { "formerr", ARES_EFORMERR, DNS_TEMP },
    { "bad response", ARES_EBADRESP, DNS_TEMP },
    { "cancelled", ARES_ECANCELLED, DNS_TEMP },
    { "no memory", ARES_ENOMEM, DNS_TEMP },
    { "unknown code", 9999, DNS_TEMP },
};

static void
test_classify(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(classify_cases); i++) {
        enum dns_rc got = dns_classify(classify_cases[i].status);
        if (got != classify_cases[i].want)
            fail_msg("%s: got %s want %s", classify_cases[i].name, dns_rc_name(got),
                dns_rc_name(classify_cases[i].want));
    }
}

/* ---- MX sorting ---- */

struct lcg {
    uint64_t s;
};

static uint32_t
lcg_rnd(void *arg)
{
    struct lcg *g = arg;
    g->s = g->s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g->s >> 33);
}

static void
mx_set(struct dns_mx *mx, const char *host, uint16_t pref)
{
    snprintf(mx->host, sizeof(mx->host), "%s", host);
    mx->pref = pref;
}

static void
test_mx_sort_order(void **state)
{
    static const struct {
        const char *name;
        uint16_t prefs[6];
        size_t n;
    } cases[] = {
        { "already sorted", { 10, 20, 30 }, 3 },
        { "reversed", { 30, 20, 10 }, 3 },
        { "mixed with ties", { 20, 10, 20, 5, 10, 65535 }, 6 },
        { "single", { 7 }, 1 },
        { "empty", { 0 }, 0 },
    };
    for (size_t c = 0; c < TERN_ARRAY_LEN(cases); c++) {
        for (uint64_t seed = 1; seed < 50; seed++) {
            struct dns_mx mx[6];
            struct lcg g = { seed };
            char names[6][8];
            for (size_t i = 0; i < cases[c].n; i++) {
                snprintf(names[i], sizeof(names[i]), "h%zu", i);
                mx_set(&mx[i], names[i], cases[c].prefs[i]);
            }
            dns_mx_sort(mx, cases[c].n, lcg_rnd, &g);
            for (size_t i = 1; i < cases[c].n; i++) {
                if (mx[i - 1].pref > mx[i].pref)
                    fail_msg("%s seed %" PRIu64 ": not sorted at %zu", cases[c].name, seed, i);
            }
            /* Every host is still there exactly once. */
            for (size_t i = 0; i < cases[c].n; i++) {
                size_t seen = 0;
                for (size_t k = 0; k < cases[c].n; k++)
                    seen += strcmp(mx[k].host, names[i]) == 0 && mx[k].pref == cases[c].prefs[i];
                if (seen != 1)
                    fail_msg("%s: host %s seen %zu times", cases[c].name, names[i], seen);
            }
        }
    }
}

static void
test_mx_sort_shuffles(void **state)
{
    /* Three hosts at 10, one at 20: over many seeds each of the three comes
     * first about a third of the time; the 20 is always last. */
    size_t first[3] = { 0, 0, 0 };
    size_t runs = 3000;
    for (uint64_t seed = 1; seed <= runs; seed++) {
        struct dns_mx mx[4];
        struct lcg g = { seed * 7919 };
        mx_set(&mx[0], "b", 20);
        mx_set(&mx[1], "a0", 10);
        mx_set(&mx[2], "a1", 10);
        mx_set(&mx[3], "a2", 10);
        lcg_rnd(&g);
        dns_mx_sort(mx, 4, lcg_rnd, &g);
        assert_string_equal(mx[3].host, "b");
        assert_int_equal(mx[0].host[0], 'a');
        first[mx[0].host[1] - '0']++;
    }
    for (size_t i = 0; i < 3; i++) {
        if (first[i] < runs / 3 - runs / 10 || first[i] > runs / 3 + runs / 10)
            fail_msg("host a%zu first %zu of %zu times", i, first[i], runs);
    }
}

/* ---- hand-built packets ---- */

static void
put16(struct buf *b, unsigned v)
{
    unsigned char x[2] = { (unsigned char)(v >> 8), (unsigned char)v };
    buf_append(b, x, 2);
}

static void
put32(struct buf *b, uint32_t v)
{
    put16(b, v >> 16);
    put16(b, v & 0xffff);
}

static void
put_name(struct buf *b, const char *name)
{
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t n = dot ? (size_t)(dot - name) : strlen(name);
        buf_append_char(b, (char)n);
        buf_append(b, name, n);
        name += n + (dot != NULL);
    }
    buf_append_char(b, 0);
}

static void
put_hdr(struct buf *b, unsigned rcode, unsigned qd, unsigned an, unsigned ns)
{
    put16(b, 0x1234);
    put16(b, 0x8180 | rcode);
    put16(b, qd);
    put16(b, an);
    put16(b, ns);
    put16(b, 0);
}

/* An RR whose owner is a pointer to the question name (offset 12). */
static void
put_rr_ptr(struct buf *b, unsigned type, uint32_t ttl, const struct buf *rdata)
{
    put16(b, 0xc00c);
    put16(b, type);
    put16(b, 1);
    put32(b, ttl);
    put16(b, (unsigned)rdata->len);
    buf_append(b, rdata->data, rdata->len);
}

static void
mx_rdata(struct buf *r, unsigned pref, const char *host)
{
    buf_reset(r);
    put16(r, pref);
    put_name(r, host);
}

/* A response to "name MX" with the given (pref, host) answers. */
static void
mx_packet(struct buf *b, const char *name, const unsigned *prefs, const char *const *hosts,
    size_t n, uint32_t ttl)
{
    struct buf r = BUF_INIT;
    buf_reset(b);
    put_hdr(b, 0, 1, (unsigned)n, 0);
    put_name(b, name);
    put16(b, DNS_T_MX);
    put16(b, 1);
    for (size_t i = 0; i < n; i++) {
        mx_rdata(&r, prefs[i], hosts[i]);
        put_rr_ptr(b, DNS_T_MX, ttl + (uint32_t)i, &r);
    }
    buf_fini(&r);
}

/* NXDOMAIN with an SOA in the authority section. */
static void
soa_packet(struct buf *b, uint32_t soa_ttl, uint32_t minimum)
{
    struct buf r = BUF_INIT;
    buf_reset(b);
    put_hdr(b, 3, 1, 0, 1);
    put_name(b, "nx.test");
    put16(b, DNS_T_MX);
    put16(b, 1);
    put_name(&r, "ns.test");
    put_name(&r, "hostmaster.test");
    put32(&r, 1);
    put32(&r, 3600);
    put32(&r, 600);
    put32(&r, 86400);
    put32(&r, minimum);
    put_rr_ptr(b, DNS_T_SOA, soa_ttl, &r);
    buf_fini(&r);
}

static void
test_packet_ttl(void **state)
{
    struct buf b = BUF_INIT;
    struct dns_ttl_info ti;
    static const unsigned prefs[] = { 10, 20, 30 };
    static const char *const hosts[] = { "mx1.a.test", "mx2.a.test", "mx3.a.test" };

    mx_packet(&b, "a.test", prefs, hosts, 3, 300);
    assert_int_equal(dns_packet_ttl((unsigned char *)b.data, b.len, &ti), 0);
    assert_true(ti.has_answer);
    assert_int_equal(ti.answer, 300);
    assert_false(ti.has_neg);

    /* Top bit set counts as zero (RFC 2181 §8). */
    mx_packet(&b, "a.test", prefs, hosts, 1, 0x80000001u);
    assert_int_equal(dns_packet_ttl((unsigned char *)b.data, b.len, &ti), 0);
    assert_int_equal(ti.answer, 0);

    soa_packet(&b, 3600, 120);
    assert_int_equal(dns_packet_ttl((unsigned char *)b.data, b.len, &ti), 0);
    assert_false(ti.has_answer);
    assert_true(ti.has_neg);
    assert_int_equal(ti.neg, 120);
    soa_packet(&b, 60, 900);
    assert_int_equal(dns_packet_ttl((unsigned char *)b.data, b.len, &ti), 0);
    assert_int_equal(ti.neg, 60);

    /* Every proper prefix of a valid packet is rejected, never over-read
     * (ASan watches the exact-size copies). */
    mx_packet(&b, "a.test", prefs, hosts, 3, 300);
    for (size_t cut = 0; cut < b.len; cut++) {
        unsigned char *p = xmalloc(cut ? cut : 1);
        memcpy(p, b.data, cut);
        if (dns_packet_ttl(p, cut, &ti) != -1)
            fail_msg("prefix of %zu bytes accepted", cut);
        free(p);
    }
    soa_packet(&b, 3600, 120);
    for (size_t cut = 0; cut < b.len; cut++) {
        unsigned char *p = xmalloc(cut ? cut : 1);
        memcpy(p, b.data, cut);
        if (dns_packet_ttl(p, cut, &ti) != -1)
            fail_msg("SOA prefix of %zu bytes accepted", cut);
        free(p);
    }
    buf_fini(&b);
}

struct hostile_case {
    const char *name;
    unsigned char pkt[64];
    size_t len;
};

static const struct hostile_case hostile_cases[] = {
    { "short header", { 0x12, 0x34, 0x81, 0x80 }, 4 },
    { "qdcount with no question", { 0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0 }, 12 },
    { "label runs past end", { 0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 10, 'a', 'b' }, 15 },
    { "label type 0x40", { 0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0x41, 'a', 0, 0, 15, 0, 1 },
        19 },
    { "pointer cut in half", { 0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0 }, 13 },
    { "question without type", { 0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 15 }, 17 },
    { "answer count without answers",
        { 0, 0, 0x81, 0x80, 0, 1, 0, 5, 0, 0, 0, 0, 1, 'a', 0, 0, 15, 0, 1 }, 19 },
    { "rdlength past end",
        { 0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 1, 'a', 0, 0, 15, 0, 1, 0xc0, 12, 0, 15, 0, 1,
            0, 0, 1, 0, 0xff, 0xff, 0, 10 },
        33 },
    { "SOA rdata too short",
        { 0, 0, 0x81, 0x83, 0, 1, 0, 0, 0, 1, 0, 0, 1, 'a', 0, 0, 15, 0, 1, 0xc0, 12, 0, 6, 0, 1, 0,
            0, 1, 0, 0, 4, 0, 0, 0, 0 },
        35 },
    { "SOA names run past rdata",
        { 0, 0, 0x81, 0x83, 0, 1, 0, 0, 0, 1, 0, 0, 1, 'a', 0, 0, 15, 0, 1, 0xc0, 12, 0, 6, 0, 1, 0,
            0, 1, 0, 0, 2, 5, 'a', 'b', 'c', 'd', 'e', 0 },
        38 },
};

static void
test_packet_hostile(void **state)
{
    struct dns_ttl_info ti;
    struct buf b = BUF_INIT;
    for (size_t i = 0; i < TERN_ARRAY_LEN(hostile_cases); i++) {
        const struct hostile_case *tc = &hostile_cases[i];
        unsigned char *p = xmalloc(tc->len);
        memcpy(p, tc->pkt, tc->len);
        if (dns_packet_ttl(p, tc->len, &ti) != -1)
            fail_msg("%s: accepted", tc->name);
        free(p);
    }
    /* A name of 300 octets in 63-octet labels is refused (RFC 1035 §2.3.4). */
    put_hdr(&b, 0, 1, 0, 0);
    for (int i = 0; i < 5; i++) {
        buf_append_char(&b, 63);
        for (int k = 0; k < 63; k++)
            buf_append_char(&b, 'x');
    }
    buf_append_char(&b, 0);
    put16(&b, 15);
    put16(&b, 1);
    assert_int_equal(dns_packet_ttl((unsigned char *)b.data, b.len, &ti), -1);
    assert_int_equal(dns_packet_ttl(NULL, 0, &ti), -1);
    buf_fini(&b);
}

struct mxdec_case {
    const char *name;
    unsigned prefs[4];
    const char *hosts[4];
    size_t n;
    enum dns_rc want;
    const char *want_hosts; /* space separated, in order */
};

static const struct mxdec_case mxdec_cases[] = {
    { "sorted by preference", { 20, 10, 30 }, { "b.test", "A.Test", "c.test" }, 3, DNS_OK,
        "a.test b.test c.test" },
    { "null MX", { 0 }, { "" }, 1, DNS_NULLMX, "" },
    { "null MX with a preference", { 10 }, { "" }, 1, DNS_NULLMX, "" },
    { "root beside real hosts is ignored", { 0, 10 }, { "", "mx.test" }, 2, DNS_OK, "mx.test" },
    { "bad host names dropped", { 5, 10 }, { "bad_name!", "ok.test" }, 2, DNS_OK, "ok.test" },
    { "only bad host names", { 5 }, { "-bad-" }, 1, DNS_TEMP, "" },
    { "no answers", { 0 }, { NULL }, 0, DNS_NODATA, "" },
};

static void
test_mx_decode(void **state)
{
    struct buf b = BUF_INIT, got = BUF_INIT;
    for (size_t i = 0; i < TERN_ARRAY_LEN(mxdec_cases); i++) {
        const struct mxdec_case *tc = &mxdec_cases[i];
        struct dns_mx mx[DNS_MX_MAX];
        size_t n = 99;
        char err[128] = "";
        enum dns_rc rc;
        mx_packet(&b, "a.test", tc->prefs, tc->hosts, tc->n, 60);
        rc = dns_mx_decode((unsigned char *)b.data, (int)b.len, mx, &n, err, sizeof(err));
        buf_reset(&got);
        for (size_t k = 0; k < n; k++)
            buf_printf(&got, "%s%s", k ? " " : "", mx[k].host);
        if (rc != tc->want || strcmp(got.data ? got.data : "", tc->want_hosts) != 0)
            fail_msg("%s: got %s '%s' want %s '%s' (%s)", tc->name, dns_rc_name(rc),
                got.data ? got.data : "", dns_rc_name(tc->want), tc->want_hosts, err);
    }
    /* More records than kept: the best DNS_MX_MAX preferences survive. */
    {
        unsigned prefs[40];
        const char *hosts[40];
        char names[40][16];
        struct dns_mx mx[DNS_MX_MAX];
        size_t n;
        char err[128];
        for (size_t k = 0; k < 40; k++) {
            prefs[k] = (unsigned)(40 - k);
            snprintf(names[k], sizeof(names[k]), "h%zu.test", k);
            hosts[k] = names[k];
        }
        mx_packet(&b, "a.test", prefs, hosts, 40, 60);
        assert_int_equal(
            dns_mx_decode((unsigned char *)b.data, (int)b.len, mx, &n, err, sizeof(err)), DNS_OK);
        assert_int_equal(n, DNS_MX_MAX);
        assert_int_equal(mx[0].pref, 1);
        assert_int_equal(mx[DNS_MX_MAX - 1].pref, DNS_MX_MAX);
    }
    buf_fini(&b);
    buf_fini(&got);
}

/* ---- raw records: host names in PTR and MX rdata ---- */

/* Wire labels from "l1|l2|...": a label may hold any byte but '|' and NUL. */
static void
put_labels(struct buf *b, const char *labels)
{
    while (*labels) {
        const char *bar = strchr(labels, '|');
        size_t n = bar ? (size_t)(bar - labels) : strlen(labels);
        buf_append_char(b, (char)n);
        buf_append(b, labels, n);
        labels += n + (bar != NULL);
    }
    buf_append_char(b, 0);
}

struct rrname_case {
    const char *name;
    int type;               /* DNS_RR_PTR or DNS_RR_MX */
    const char *targets[3]; /* wire labels, NULL-terminated */
    enum dns_rc want;
    const char *want_names; /* space separated, in answer order */
};

/* c-ares spells a label's dot, backslash or unprintable byte with a
 * backslash escape: no host name has one (RFC 1123 §2.1), and passed on it
 * would make name_under() and suffix checks see labels that are not there. */
static const struct rrname_case rrname_cases[] = {
    { "plain PTR", DNS_RR_PTR, { "Host|Example|COM" }, DNS_OK, "host.example.com" },
    { "PTR to the root", DNS_RR_PTR, { "" }, DNS_OK, "" },
    { "dot inside a label dropped", DNS_RR_PTR, { "x.victim|test", "ok|test" }, DNS_OK, "ok.test" },
    { "only a dotted label", DNS_RR_PTR, { "x.victim|test" }, DNS_TEMP, "" },
    { "label ending in a dot", DNS_RR_PTR, { "trail.|test" }, DNS_TEMP, "" },
    { "unprintable byte", DNS_RR_PTR, { "x\001y|test" }, DNS_TEMP, "" },
    { "backslash", DNS_RR_PTR, { "back\\slash|test", "mx|test" }, DNS_OK, "mx.test" },
    { "MX with a dotted label", DNS_RR_MX, { "a.b|test", "mx|test" }, DNS_OK, "mx.test" },
};

static void
test_rr_host_names(void **state)
{
    struct buf b = BUF_INIT, r = BUF_INIT, got = BUF_INIT;
    for (size_t i = 0; i < TERN_ARRAY_LEN(rrname_cases); i++) {
        const struct rrname_case *tc = &rrname_cases[i];
        struct dns_rr_result *res = dns_rr_result_new(tc->type, DNS_NODATA);
        void *blob = NULL;
        size_t blen = 0, n = 0;
        char err[128] = "";
        enum dns_rc rc;
        while (n < 3 && tc->targets[n] != NULL)
            n++;
        buf_reset(&b);
        put_hdr(&b, 0, 1, (unsigned)n, 0);
        put_name(&b, "q.test");
        put16(&b, (unsigned)tc->type);
        put16(&b, 1);
        for (size_t k = 0; k < n; k++) {
            buf_reset(&r);
            if (tc->type == DNS_RR_MX)
                put16(&r, 10);
            put_labels(&r, tc->targets[k]);
            put_rr_ptr(&b, (unsigned)tc->type, 60, &r);
        }
        rc = dns_rr_pack(
            (unsigned char *)b.data, (int)b.len, tc->type, &blob, &blen, err, sizeof(err));
        buf_reset(&got);
        if (rc == DNS_OK) {
            assert_int_equal(dns_rr_unpack(blob, blen, res), 0);
            for (size_t k = 0; k < res->n; k++)
                buf_printf(&got, "%s%s", k ? " " : "", res->rr[k].data);
        }
        if (rc != tc->want || strcmp(got.data ? got.data : "", tc->want_names) != 0)
            fail_msg("%s: got %s '%s' want %s '%s' (%s)", tc->name, dns_rc_name(rc),
                got.data ? got.data : "", dns_rc_name(tc->want), tc->want_names, err);
        free(blob);
        dns_rr_result_free(res);
    }
    buf_fini(&b);
    buf_fini(&r);
    buf_fini(&got);
}

/* ---- cache ---- */

static void
test_cache(void **state)
{
    struct dns_cache *c = dns_cache_new(3);
    struct in_addr a = { htonl(0x7f000003) };
    enum dns_rc rc;
    bool sec;
    const void *recs;
    size_t n;
    dns_cache_put(c, DNS_T_A, "a.test", DNS_OK, false, &a, 1, sizeof(a), 60, 1000);
    assert_true(dns_cache_get(c, DNS_T_A, "a.test", 1000 + 59999, &rc, &sec, &recs, &n));
    assert_int_equal(rc, DNS_OK);
    assert_int_equal(n, 1);
    assert_memory_equal(recs, &a, sizeof(a));
    /* Another type of the same name is another entry. */
    assert_false(dns_cache_get(c, DNS_T_AAAA, "a.test", 1000, &rc, &sec, &recs, &n));
    /* Expired at exactly the TTL. */
    assert_false(dns_cache_get(c, DNS_T_A, "a.test", 1000 + 60000, &rc, &sec, &recs, &n));
    assert_int_equal(dns_cache_count(c), 0);
    /* TEMP and TTL 0 are never stored. */
    dns_cache_put(c, DNS_T_MX, "t.test", DNS_TEMP, false, NULL, 0, 1, 60, 0);
    dns_cache_put(c, DNS_T_MX, "z.test", DNS_NXDOMAIN, false, NULL, 0, 1, 0, 0);
    assert_int_equal(dns_cache_count(c), 0);
    /* LRU: touching 1 makes 2 the victim when 4 arrives. */
    dns_cache_put(c, DNS_T_MX, "1.test", DNS_NXDOMAIN, false, NULL, 0, 1, 60, 0);
    dns_cache_put(c, DNS_T_MX, "2.test", DNS_NODATA, false, NULL, 0, 1, 60, 0);
    dns_cache_put(c, DNS_T_MX, "3.test", DNS_NXDOMAIN, false, NULL, 0, 1, 60, 0);
    assert_true(dns_cache_get(c, DNS_T_MX, "1.test", 0, &rc, &sec, &recs, &n));
    dns_cache_put(c, DNS_T_MX, "4.test", DNS_NXDOMAIN, false, NULL, 0, 1, 60, 0);
    assert_int_equal(dns_cache_count(c), 3);
    assert_false(dns_cache_get(c, DNS_T_MX, "2.test", 0, &rc, &sec, &recs, &n));
    assert_true(dns_cache_get(c, DNS_T_MX, "1.test", 0, &rc, &sec, &recs, &n));
    assert_int_equal(rc, DNS_NXDOMAIN);
    /* Replacing an entry keeps the count. */
    dns_cache_put(c, DNS_T_MX, "1.test", DNS_NODATA, false, NULL, 0, 1, 60, 0);
    assert_int_equal(dns_cache_count(c), 3);
    assert_true(dns_cache_get(c, DNS_T_MX, "1.test", 0, &rc, &sec, &recs, &n));
    assert_int_equal(rc, DNS_NODATA);
    assert_false(sec);
    /* The AD bit is kept with the answer: a validated answer replaced by an
     * unvalidated one is no longer secure, and the other way round. */
    dns_cache_put(c, DNS_T_MX, "1.test", DNS_NODATA, true, NULL, 0, 1, 60, 0);
    assert_true(dns_cache_get(c, DNS_T_MX, "1.test", 0, &rc, &sec, &recs, &n));
    assert_true(sec);
    dns_cache_put(c, DNS_T_MX, "1.test", DNS_NODATA, false, NULL, 0, 1, 60, 0);
    assert_true(dns_cache_get(c, DNS_T_MX, "1.test", 0, &rc, &sec, &recs, &n));
    assert_false(sec);
    dns_cache_clear(c);
    assert_int_equal(dns_cache_count(c), 0);
    dns_cache_free(c);
}

/* ---- TLSA and the AD bit ---- */

static void
test_tlsa_parse(void **state)
{
    unsigned char rd[3 + 65];
    struct dns_tlsa t;
    char txt[64];
    static const struct {
        uint8_t u, s, m;
        size_t dlen;
        int want;
    } cases[] = {
        { 3, 1, 1, 32, 0 },  /* DANE-EE SPKI SHA2-256 */
        { 2, 0, 2, 64, 0 },  /* DANE-TA cert SHA2-512 */
        { 3, 1, 0, 65, 0 },  /* exact: any length */
        { 3, 1, 1, 31, -1 }, /* SHA2-256 digest of the wrong length */
        { 3, 1, 2, 32, -1 }, /* SHA2-512 digest of the wrong length */
        { 3, 1, 1, 0, -1 },  /* no data */
        { 9, 9, 9, 5, 0 },   /* unknown parameters parse; the policy judges them */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rd[0] = cases[i].u;
        rd[1] = cases[i].s;
        rd[2] = cases[i].m;
        memset(rd + 3, 0xab, cases[i].dlen);
        assert_int_equal(dns_tlsa_parse(rd, 3 + cases[i].dlen, &t), cases[i].want);
        if (cases[i].want == 0) {
            assert_int_equal(t.usage, cases[i].u);
            assert_int_equal(t.selector, cases[i].s);
            assert_int_equal(t.mtype, cases[i].m);
            assert_int_equal(t.len, cases[i].dlen);
            assert_ptr_equal(t.data, rd + 3);
        }
    }
    assert_int_equal(dns_tlsa_parse(rd, 2, &t), -1);
    {
        unsigned char *big = calloc(1, 3 + DNS_TLSA_DATA_MAX + 1);
        big[0] = 3;
        assert_int_equal(dns_tlsa_parse(big, 3 + DNS_TLSA_DATA_MAX, &t), 0);
        assert_int_equal(dns_tlsa_parse(big, 3 + DNS_TLSA_DATA_MAX + 1, &t), -1);
        free(big);
    }
    rd[0] = 3, rd[1] = 1, rd[2] = 1;
    memset(rd + 3, 0xab, 32);
    assert_int_equal(dns_tlsa_parse(rd, 35, &t), 0);
    dns_tlsa_format(&t, txt, sizeof(txt), 8);
    assert_string_equal(txt, "3 1 1 abababab...");
}

static void
test_answer_status(void **state)
{
    /* id, flags (QR RD RA [AD] rcode), qd, an, ns, ar */
    unsigned char h[12] = { 0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0 };
    bool ad = true;
    assert_int_equal(dns_answer_status(h, sizeof(h), &ad), ARES_SUCCESS);
    assert_false(ad);
    h[3] = 0xa0; /* AD */
    assert_int_equal(dns_answer_status(h, sizeof(h), &ad), ARES_SUCCESS);
    assert_true(ad);
    h[7] = 0; /* no answer: NODATA, still validated (a proven absence) */
    assert_int_equal(dns_answer_status(h, sizeof(h), &ad), ARES_ENODATA);
    assert_true(ad);
    h[3] = 0xa3;
    assert_int_equal(dns_answer_status(h, sizeof(h), &ad), ARES_ENOTFOUND);
    h[3] = 0x82;
    assert_int_equal(dns_answer_status(h, sizeof(h), &ad), ARES_ESERVFAIL);
    assert_false(ad);
    h[3] = 0x85;
    assert_int_equal(dns_answer_status(h, sizeof(h), &ad), ARES_EREFUSED);
    assert_int_equal(dns_answer_status(h, 11, &ad), ARES_EBADRESP);
    assert_int_equal(dns_answer_status(NULL, 0, &ad), ARES_EBADRESP);
}

static void
test_literal(void **state)
{
    struct sockaddr_storage ss;
    socklen_t len;
    assert_int_equal(dns_literal("127.0.0.3", 25, &ss, &len), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 25);
    assert_int_equal(dns_literal("::1", 2525, &ss, &len), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(len, sizeof(struct sockaddr_in6));
    assert_int_equal(dns_literal("mx.test", 25, &ss, &len), -1);
    assert_int_equal(dns_literal("[::1]", 25, &ss, &len), -1);
    assert_int_equal(dns_literal("1.2.3.4.5", 25, &ss, &len), -1);
}

/* ---- dnsmasq ---- */

struct dnsmasq {
    pid_t pid;
    uint16_t port;
};

static const char *const zone[] = {
    "--mx-host=a.test,mx2.a.test,20",
    "--mx-host=a.test,mx1.a.test,10",
    "--host-record=mx1.a.test,127.0.0.3",
    "--host-record=mx2.a.test,127.0.0.4",
    "--mx-host=nullmx.test,.,0",
    "--host-record=dual.test,127.0.0.5,::1",
    "--host-record=v6only.test,::1",
    "--txt-record=a.test,v=spf1 -all",
};

static void
dnsmasq_start(struct dnsmasq *m)
{
    const char *args[TERN_ARRAY_LEN(zone) + 8];
    size_t k = 0;
    args[k++] = "--listen-address=127.0.0.1";
    args[k++] = "--bind-interfaces";
    args[k++] = "--no-resolv";
    args[k++] = "--no-hosts";
    args[k++] = "--conf-file=/dev/null";
    args[k++] = "--local=/test/";
    args[k++] = "--local-ttl=300";
    for (size_t i = 0; i < TERN_ARRAY_LEN(zone); i++)
        args[k++] = zone[i];
    args[k] = NULL;
    m->pid = testnet_dnsmasq_start(args, &m->port);
    if (m->pid < 0)
        fail_msg("dnsmasq did not start");
}

static void
dnsmasq_stop(struct dnsmasq *m)
{
    int st;
    if (m->pid <= 0)
        return;
    kill(m->pid, SIGTERM);
    waitpid(m->pid, &st, 0);
    m->pid = 0;
}

/* ---- lookups through the loop ---- */

struct got {
    int calls;
    struct dns_mx_result mx;
    struct dns_addr_result addr;
};

static void
got_mx(void *arg, const struct dns_mx_result *r)
{
    struct got *g = arg;
    g->calls++;
    g->mx = *r;
}

static void
got_addr(void *arg, const struct dns_addr_result *r)
{
    struct got *g = arg;
    g->calls++;
    g->addr = *r;
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

static void
wait_calls(struct event_base *base, struct got *g, int n, int64_t max_ms)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = { 0, 10000 };
    int64_t end = tern_mono_ms() + max_ms;
    event_add(tick, &tv);
    while (g->calls < n) {
        if (tern_mono_ms() > end)
            fail_msg("no DNS answer within %" PRId64 " ms", max_ms);
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(tick);
}

static enum dns_rc
mx_of(struct event_base *base, struct dns *d, const char *name, struct got *g)
{
    memset(g, 0, sizeof(*g));
    dns_lookup_mx(d, name, got_mx, g);
    assert_int_equal(g->calls, 0); /* never inside the call */
    wait_calls(base, g, 1, 8000);
    return g->mx.rc;
}

static enum dns_rc
addr_of(struct event_base *base, struct dns *d, const char *name, enum ip_family fam, struct got *g)
{
    memset(g, 0, sizeof(*g));
    dns_lookup_addr(d, name, 2525, fam, got_addr, g);
    assert_int_equal(g->calls, 0);
    wait_calls(base, g, 1, 8000);
    return g->addr.rc;
}

static const char *
addr_str(const struct dns_addr_result *r, size_t i, char *out, size_t cap)
{
    const struct sockaddr_storage *ss = &r->addr[i];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        assert_int_equal(ntohs(sin->sin_port), 2525);
        inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)cap);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        assert_int_equal(ntohs(sin6->sin6_port), 2525);
        inet_ntop(AF_INET6, &sin6->sin6_addr, out, (socklen_t)cap);
    }
    return out;
}

static struct dns *
dns_at(struct event_base *base, uint16_t port)
{
    struct buf err = BUF_INIT;
    struct dns *d = testnet_dns_at(base, port, &err);
    if (d == NULL)
        fail_msg("dns_new: %s", err.data);
    buf_fini(&err);
    return d;
}

static void
test_dnsmasq_mx(void **state)
{
    struct event_base *base = event_base_new();
    struct dnsmasq m;
    struct dns *d;
    struct got g;
    dnsmasq_start(&m);
    d = dns_at(base, m.port);

    assert_int_equal(mx_of(base, d, "a.test", &g), DNS_OK);
    assert_int_equal(g.mx.n, 2);
    assert_string_equal(g.mx.mx[0].host, "mx1.a.test");
    assert_int_equal(g.mx.mx[0].pref, 10);
    assert_string_equal(g.mx.mx[1].host, "mx2.a.test");

    /* Upper case and a trailing dot are the same name. */
    assert_int_equal(mx_of(base, d, "A.TEST.", &g), DNS_OK);
    assert_int_equal(g.mx.n, 2);

    /* dnsmasq expresses "0 ." as a one-record answer with the root name. */
    assert_int_equal(mx_of(base, d, "nullmx.test", &g), DNS_NULLMX);
    assert_int_equal(g.mx.n, 0);

    assert_int_equal(mx_of(base, d, "nx.test", &g), DNS_NXDOMAIN);
    assert_non_null(strstr(g.mx.err, "not found"));
    /* The name exists (it has an A record) but no MX: implicit MX case. */
    assert_int_equal(mx_of(base, d, "mx1.a.test", &g), DNS_NODATA);
    assert_int_equal(mx_of(base, d, "bad..name", &g), DNS_BADNAME);
    assert_int_equal(mx_of(base, d, "-x-.test", &g), DNS_BADNAME);

    dns_free(d);
    dnsmasq_stop(&m);
    event_base_free(base);
}

static void
test_dnsmasq_addr(void **state)
{
    static const struct {
        const char *name, *host;
        enum ip_family fam;
        enum dns_rc rc;
        const char *want; /* addresses, space separated */
    } cases[] = {
        { "v4 host", "mx1.a.test", IPFAM_PREFER_V4, DNS_OK, "127.0.0.3" },
        { "dual prefer v4", "dual.test", IPFAM_PREFER_V4, DNS_OK, "127.0.0.5 ::1" },
        { "dual prefer v6", "dual.test", IPFAM_PREFER_V6, DNS_OK, "::1 127.0.0.5" },
        { "dual v4 only", "dual.test", IPFAM_V4, DNS_OK, "127.0.0.5" },
        { "dual v6 only", "dual.test", IPFAM_V6, DNS_OK, "::1" },
        { "v6 only host, v4 only", "v6only.test", IPFAM_V4, DNS_NODATA, "" },
        { "v6 only host, prefer v4", "v6only.test", IPFAM_PREFER_V4, DNS_OK, "::1" },
        { "nxdomain", "nx.test", IPFAM_PREFER_V4, DNS_NXDOMAIN, "" },
        { "literal", "192.0.2.1", IPFAM_V6, DNS_OK, "192.0.2.1" },
        { "localhost", "localhost", IPFAM_PREFER_V4, DNS_OK, "127.0.0.1 ::1" },
        { "localhost v6", "LOCALHOST.", IPFAM_V6, DNS_OK, "::1" },
        { "bad name", "a b.test", IPFAM_PREFER_V4, DNS_BADNAME, "" },
    };
    struct event_base *base = event_base_new();
    struct dnsmasq m;
    struct dns *d;
    struct got g;
    struct buf b = BUF_INIT;
    dnsmasq_start(&m);
    d = dns_at(base, m.port);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        enum dns_rc rc = addr_of(base, d, cases[i].host, cases[i].fam, &g);
        buf_reset(&b);
        buf_append_str(&b, "");
        for (size_t k = 0; k < g.addr.n; k++) {
            char a[INET6_ADDRSTRLEN];
            buf_printf(&b, "%s%s", k ? " " : "", addr_str(&g.addr, k, a, sizeof(a)));
        }
        if (rc != cases[i].rc || strcmp(b.data, cases[i].want) != 0)
            fail_msg("%s: got %s '%s' want %s '%s' (%s)", cases[i].name, dns_rc_name(rc), b.data,
                dns_rc_name(cases[i].rc), cases[i].want, g.addr.err);
    }
    buf_fini(&b);
    dns_free(d);
    dnsmasq_stop(&m);
    event_base_free(base);
}

static void
test_dnsmasq_cache_and_down(void **state)
{
    struct event_base *base = event_base_new();
    struct dnsmasq m;
    struct dns *d;
    struct got g;
    int64_t t0;
    dnsmasq_start(&m);
    d = dns_at(base, m.port);
    assert_int_equal(mx_of(base, d, "a.test", &g), DNS_OK);
    assert_int_equal(mx_of(base, d, "nullmx.test", &g), DNS_NULLMX);
    assert_int_equal(addr_of(base, d, "mx1.a.test", IPFAM_PREFER_V4, &g), DNS_OK);
    dnsmasq_stop(&m);

    /* The server is gone: cached answers still come, through the loop. */
    assert_int_equal(mx_of(base, d, "a.test", &g), DNS_OK);
    assert_int_equal(g.mx.n, 2);
    assert_int_equal(mx_of(base, d, "nullmx.test", &g), DNS_NULLMX);
    assert_int_equal(addr_of(base, d, "mx1.a.test", IPFAM_PREFER_V4, &g), DNS_OK);
    assert_int_equal(g.addr.n, 1);

    /* Anything else is a temporary failure, within the c-ares timeouts. */
    t0 = tern_mono_ms();
    assert_int_equal(mx_of(base, d, "other.test", &g), DNS_TEMP);
    assert_true(tern_mono_ms() - t0 < 2 * DNS_TRIES * DNS_TIMEOUT_MS + 1000);
    assert_true(g.mx.err[0] != '\0');
    /* TEMP is not cached; new servers clear the cache. */
    dnsmasq_start(&m);
    {
        struct hostport hp;
        struct buf err = BUF_INIT;
        memset(&hp, 0, sizeof(hp));
        snprintf(hp.host, sizeof(hp.host), "127.0.0.1");
        hp.port = m.port;
        assert_int_equal(dns_set_servers(d, &hp, 1, &err), 0);
        buf_fini(&err);
    }
    assert_int_equal(mx_of(base, d, "other.test", &g), DNS_NXDOMAIN);
    assert_int_equal(mx_of(base, d, "a.test", &g), DNS_OK);
    dns_free(d);
    dnsmasq_stop(&m);
    event_base_free(base);
}

static void
test_dns_temp_no_server(void **state)
{
    struct event_base *base = event_base_new();
    struct dns *d = dns_at(base, must_free_port()); /* nothing listens there */
    struct got g;
    int64_t t0 = tern_mono_ms();
    assert_int_equal(mx_of(base, d, "a.test", &g), DNS_TEMP);
    assert_int_equal(addr_of(base, d, "mx1.a.test", IPFAM_PREFER_V4, &g), DNS_TEMP);
    assert_true(tern_mono_ms() - t0 < 2 * (2 * DNS_TRIES * DNS_TIMEOUT_MS + 1000));
    dns_free(d);
    event_base_free(base);
}

static void
test_dns_cancel_and_free(void **state)
{
    struct event_base *base = event_base_new();
    struct dnsmasq m;
    struct dns *d;
    struct got g1, g2, g3;
    struct dns_query *q;
    struct buf err = BUF_INIT;
    struct hostport bad;
    dnsmasq_start(&m);
    d = dns_at(base, m.port);
    memset(&g1, 0, sizeof(g1));
    memset(&g2, 0, sizeof(g2));
    memset(&g3, 0, sizeof(g3));
    /* Cancelled in flight, cancelled with the answer queued (literal). */
    q = dns_lookup_mx(d, "a.test", got_mx, &g1);
    dns_cancel(q);
    q = dns_lookup_addr(d, "127.0.0.9", 25, IPFAM_PREFER_V4, got_addr, &g1);
    dns_cancel(q);
    dns_lookup_mx(d, "a.test", got_mx, &g2);
    wait_calls(base, &g2, 1, 8000);
    assert_int_equal(g1.calls, 0);
    /* Freed with a query in flight: its callback never runs. */
    dns_lookup_mx(d, "nx.test", got_mx, &g3);
    dns_free(d);
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(g3.calls, 0);
    /* Servers must be addresses. */
    memset(&bad, 0, sizeof(bad));
    snprintf(bad.host, sizeof(bad.host), "ns.example");
    assert_null(dns_new(base, &bad, 1, &err));
    assert_non_null(strstr(err.data, "not an IP address"));
    buf_fini(&err);
    dnsmasq_stop(&m);
    event_base_free(base);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_mx_sort_order),
        cmocka_unit_test(test_mx_sort_shuffles),
        cmocka_unit_test(test_packet_ttl),
        cmocka_unit_test(test_packet_hostile),
        cmocka_unit_test(test_mx_decode),
        cmocka_unit_test(test_rr_host_names),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_literal),
        cmocka_unit_test(test_dnsmasq_mx),
        cmocka_unit_test(test_dnsmasq_addr),
        cmocka_unit_test(test_dnsmasq_cache_and_down),
        cmocka_unit_test(test_dns_temp_no_server),
        cmocka_unit_test(test_dns_cancel_and_free),
        cmocka_unit_test(test_tlsa_parse),
        cmocka_unit_test(test_answer_status),
    };
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

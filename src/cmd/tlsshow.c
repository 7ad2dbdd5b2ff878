/*
 * `ternctl tls show DOMAIN`: what the delivery plan decides about TLS for
 * DOMAIN, computed here with the same dns module (dns_resolvers or
 * resolv.conf, the AD bit of each answer) and the same pure decisions
 * (deliv_dane_state, deliv_tls_policy_pick), so that it works while ternd
 * is down and shows what a fresh DNS lookup gives. The MTA-STS policy is
 * the one ternd holds in its cache (SPOOL/mta-sts): fetching it here would
 * show a policy the daemon may not have. The output is made of sections
 * ("[mx]", "[dane]", "[mta-sts]", "[policy]"), one "key: value" per line.
 */
#include "cmd/tlsshow.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery/delivery.h"
#include "dns/dns.h"
#include "mtasts/mtasts.h"
#include "util/buf.h"
#include "util/parse.h"
#include "util/util.h"

#define EXIT_LOOKUP 1
#define EXIT_USAGE  2

struct wait {
    struct event_base *base;
    bool done;
    struct dns_mx_result mx;
    struct dns_addr_result addr;
    struct dns_rr_result *rr;
};

static void
mx_done(void *arg, const struct dns_mx_result *r)
{
    struct wait *w = arg;
    w->mx = *r;
    w->done = true;
}

static void
addr_done(void *arg, const struct dns_addr_result *r)
{
    struct wait *w = arg;
    w->addr = *r;
    w->done = true;
}

static void
rr_done(void *arg, const struct dns_rr_result *r)
{
    struct wait *w = arg;
    w->rr = dns_rr_result_dup(r);
    w->done = true;
}

static void
run(struct wait *w)
{
    while (!w->done)
        event_base_loop(w->base, EVLOOP_ONCE);
    w->done = false;
}

static const char *
yesno(bool b)
{
    return b ? "yes" : "no";
}

static const char *
rc_word(enum dns_rc rc)
{
    static const char *const w[] = { [DNS_OK] = "ok",
        [DNS_NXDOMAIN] = "nxdomain",
        [DNS_NODATA] = "nodata",
        [DNS_NULLMX] = "null-mx",
        [DNS_TEMP] = "temporary-failure",
        [DNS_BADNAME] = "bad-name" };
    return (size_t)rc < TERN_ARRAY_LEN(w) ? w[rc] : "?";
}

/* One MX host: its addresses and TLSA records, and the policy; sts is the
 * domain's MTA-STS policy in enforce mode, or NULL. */
static const char *
show_host(const struct config *cfg, struct dns *dns, struct wait *w, const char *host,
    bool mx_secure, uint16_t port, const struct mtasts_policy *sts)
{
    char name[DNS_NAME_MAX + 16], a[INET6_ADDRSTRLEN];
    enum dane_state ds = DANE_NONE;
    enum tls_policy pol;
    const char *what;
    printf("host: %s\n", host);
    dns_lookup_addr(dns, host, port, cfg->ip_family, addr_done, w);
    run(w);
    printf("  addresses: %s validated=%s", rc_word(w->addr.rc), yesno(w->addr.secure));
    for (size_t i = 0; i < w->addr.n; i++) {
        const struct sockaddr_storage *ss = &w->addr.addr[i];
        const void *p = ss->ss_family == AF_INET
                            ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                            : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (inet_ntop(ss->ss_family, p, a, sizeof(a)) != NULL)
            printf(" %s", a);
    }
    printf("\n");
    snprintf(name, sizeof(name), "_%u._tcp.%s", port, host);
    if (!(cfg->mx_tls_policies & MX_TLS_POLICY_DANE)) {
        printf("  tlsa: not looked up (dane is not in mx_tls_policy)\n");
    } else if (cfg->mx_tls == TLS_NONE) {
        printf("  tlsa: not looked up (mx_tls = none)\n");
    } else if (!mx_secure || w->addr.rc != DNS_OK || !w->addr.secure) {
        /* RFC 7672 §2.2: names from unvalidated answers are not trusted. */
        printf("  tlsa: not looked up (the %s answer was not validated)\n",
            mx_secure ? "address" : "MX");
    } else {
        dns_lookup_rr(dns, name, DNS_RR_TLSA, rr_done, w);
        run(w);
        printf("  tlsa: %s %s validated=%s\n", name, rc_word(w->rr->rc), yesno(w->rr->secure));
        for (size_t i = 0; i < w->rr->n; i++) {
            struct dns_tlsa t;
            char txt[128];
            if (dns_tlsa_parse(w->rr->rr[i].data, w->rr->rr[i].len, &t) < 0) {
                printf("  record: malformed (%zu octets) unusable\n", w->rr->rr[i].len);
                continue;
            }
            dns_tlsa_format(&t, txt, sizeof(txt), 64);
            printf("  record: %s %s\n", txt, deliv_tlsa_usable(&t) ? "usable" : "unusable");
        }
        ds = deliv_dane_state(w->rr);
        dns_rr_result_free(w->rr);
        w->rr = NULL;
    }
    printf("  dane: %s\n", deliv_dane_state_name(ds));
    pol = deliv_tls_policy_pick(
        cfg->mx_tls_policies, cfg->mx_tls, ds, sts != NULL && mtasts_policy_match(sts, host));
    if (ds == DANE_TEMP)
        what = "skipped (TLSA lookup failed; RFC 7672 §2.1.1)";
    else if (sts != NULL && pol == TLSP_OPPORTUNISTIC)
        what = "skipped (not an mx of the MTA-STS policy; RFC 8461 §4.1)";
    else
        what = deliv_tls_policy_name(pol);
    printf("  policy: %s\n", what);
    return what;
}

/* The [mta-sts] section: the cached policy of domain; *enforce gets it
 * when it is in enforce mode, unexpired and to be applied. */
static bool
show_sts(const struct config *cfg, const char *domain, struct mtasts_policy *enforce)
{
    struct mtasts_cached c;
    struct buf out = BUF_INIT;
    char err[256];
    int64_t now_s = tern_now_ms() / 1000;
    bool on = false;
    printf("\n[mta-sts]\n");
    if (!(cfg->mx_tls_policies & MX_TLS_POLICY_MTASTS)) {
        printf("mta-sts: not used (mta-sts is not in mx_tls_policy)\n");
        return false;
    }
    if (cfg->mx_tls == TLS_NONE) {
        printf("mta-sts: not used (mx_tls = none)\n");
        return false;
    }
    mtasts_render(cfg->spool_dir, domain, now_s, &out);
    fwrite(out.data != NULL ? out.data : "", 1, out.len, stdout);
    buf_fini(&out);
    if (mtasts_cache_load(cfg->spool_dir, domain, &c, err, sizeof(err)) == 0) {
        on = c.text != NULL && c.policy.mode == MTASTS_ENFORCE &&
             now_s < c.fetched_s + c.policy.max_age_s;
        if (on)
            *enforce = c.policy;
        mtasts_cached_fini(&c);
    }
    return on;
}

int
tlsshow_main(const struct config *cfg, int argc, char **argv)
{
    static const char *const modes[] = { "none", "opportunistic", "required" };
    struct buf err = BUF_INIT;
    struct wait w;
    struct dns *dns;
    char domain[DNS_NAME_MAX + 1];
    uint16_t port = cfg->delivery_port ? cfg->delivery_port : 25;
    size_t n;
    int ret = 0;
    if (argc != 1) {
        fputs("usage: ternctl tls show DOMAIN\n", stderr);
        return EXIT_USAGE;
    }
    n = strlen(argv[0]);
    if (n > 0 && argv[0][n - 1] == '.')
        n--;
    if (n == 0 || n >= sizeof(domain) || !str_is_domain(argv[0], n, false)) {
        fprintf(stderr, "ternctl: %s is not a domain name\n", argv[0]);
        return EXIT_USAGE;
    }
    memcpy(domain, argv[0], n);
    domain[n] = '\0';
    str_lower(domain);
    memset(&w, 0, sizeof(w));
    if ((w.base = event_base_new()) == NULL)
        tern_panic("cannot create an event loop");
    dns = dns_new(w.base, cfg->dns_resolvers, cfg->n_dns_resolvers, &err);
    if (dns == NULL) {
        fprintf(stderr, "ternctl: %s\n", err.data ? err.data : "cannot start the resolver");
        event_base_free(w.base);
        buf_fini(&err);
        return EXIT_USAGE;
    }
    printf("[domain]\ndomain: %s\nmx_tls: %s\nmx_tls_policy: %s\nport: %u\n", domain,
        (size_t)cfg->mx_tls < TERN_ARRAY_LEN(modes) ? modes[cfg->mx_tls] : "?",
        cfg->mx_tls_policy ? cfg->mx_tls_policy : "", port);
    if (cfg->n_smarthosts > 0)
        printf("note: mail goes through the smarthost; these MX policies apply only to routes "
               "without one\n");
    dns_lookup_mx(dns, domain, mx_done, &w);
    run(&w);
    printf("\n[mx]\nlookup: %s validated=%s\n", rc_word(w.mx.rc), yesno(w.mx.secure));
    for (size_t i = 0; i < w.mx.n; i++)
        printf("host: %s preference=%u\n", w.mx.mx[i].host, w.mx.mx[i].pref);
    if (w.mx.rc == DNS_OK || w.mx.rc == DNS_NODATA) {
        struct dns_mx_result mx = w.mx;
        if (mx.rc == DNS_NODATA) {
            /* RFC 5321 §5.1: the domain is its own mail host. */
            mx.n = 1;
            snprintf(mx.mx[0].host, sizeof(mx.mx[0].host), "%s", domain);
            mx.mx[0].pref = 0;
        }
        const char *pol[DNS_MX_MAX];
        struct mtasts_policy sts;
        bool enforce;
        /* [mta-sts] comes first: each host's policy line below uses it. */
        memset(&sts, 0, sizeof(sts));
        enforce = show_sts(cfg, domain, &sts);
        printf("\n[dane]\n");
        for (size_t i = 0; i < mx.n; i++)
            pol[i] = show_host(cfg, dns, &w, mx.mx[i].host, mx.secure, port, enforce ? &sts : NULL);
        printf("\n[policy]\n");
        for (size_t i = 0; i < mx.n; i++)
            printf("%s: %s\n", mx.mx[i].host, pol[i]);
    } else {
        printf("error: %s\n", w.mx.err);
        ret = EXIT_LOOKUP;
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        ret = EXIT_LOOKUP;
    dns_free(dns);
    event_base_free(w.base);
    buf_fini(&err);
    return ret;
}

/*
 * A destination's plan: its hops resolved into an ordered list of targets
 * (RFC 5321 §5.1). A hop with mx has its MX records looked up and each MX
 * host resolved; no MX record means the domain itself (implicit MX); a null
 * MX, an unknown domain or an implicit MX without address fail permanently.
 * A hop without mx is resolved (or is a literal) directly, and never fails
 * permanently: it is the operator's own setting. Lookups of one build run
 * in parallel; the build owns its queries and ends through its own event.
 *
 * Each MX host also gets its TLS policy (RFC 7672, RFC 8461): when the MX
 * answer and the host's address answers were DNSSEC-validated, its TLSA
 * records at _PORT._tcp.HOST are looked up (RFC 7672 §2.2: only names from
 * validated answers can be trusted to look up TLSA records under). An
 * "mx:" destination's MTA-STS policy is looked up alongside (RFC 8461 §5)
 * when mx_tls_policy names mta-sts: in enforce mode, MX hosts that match
 * neither its mx patterns nor usable TLSA records are left out;
 * deliv_tls_policy_pick decides each host's policy, DANE first (RFC 8461
 * §2).
 */
#include "delivery/delivery_int.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/util.h"

#define BUILD_HOSTS_MAX (ROUTE_HOPS_MAX * DNS_MX_MAX)

struct plan_build;

struct bhost {
    struct plan_build *b;
    char name[DNS_NAME_MAX + 1];
    uint16_t hop, pref;
    bool implicit;  /* the domain itself, for want of MX records */
    bool mx_secure; /* the MX answer that named it was validated */
    uint16_t port;
    struct dns_query *q;
    struct dns_addr_result *res; /* owned, once answered */
    struct dns_query *tq;        /* TLSA lookup in flight */
    struct dns_rr_result *tlsa;  /* owned, once answered; NULL: not looked up */
};

struct bhop {
    struct plan_build *b;
    uint16_t idx;
    struct dns_query *q; /* MX lookup in flight */
    bool failed;         /* the hop itself failed (st, perm) */
    bool perm;
    struct tern_status st;
};

struct plan_build {
    struct delivery *d;
    struct deliv_dest *dest;
    enum ip_family fam;
    plan_done_cb cb;
    struct bhop hops[ROUTE_HOPS_MAX];
    size_t n_hops;
    struct bhost *hosts[BUILD_HOSTS_MAX];
    size_t n_hosts;
    size_t pending; /* lookups in flight */
    struct event *fin;
    int64_t started_ms;         /* tern_mono_ms(): the plan's dns_ms counts from here */
    struct mtasts_req *sts_req; /* the MTA-STS lookup in flight */
    struct plan_sts *sts;       /* its answer: a policy in testing or enforce mode */
};

/* ---- plans ---- */

struct deliv_plan *
plan_ref(struct deliv_plan *p)
{
    p->refs++;
    return p;
}

static void
sts_free(struct plan_sts *s)
{
    if (s == NULL)
        return;
    free(s->text);
    free(s);
}

enum mtasts_mode
plan_sts_mode(const struct deliv_plan *p)
{
    return p != NULL && p->sts != NULL ? p->sts->policy.mode : MTASTS_NONE;
}

void
plan_unref(struct deliv_plan *p)
{
    if (p == NULL || --p->refs > 0)
        return;
    sts_free(p->sts);
    for (size_t i = 0; i < p->n_hosts; i++)
        dns_rr_result_free(p->hosts[i].tlsa);
    free(p->hosts);
    free(p->t);
    free(p);
}

bool
plan_usable(const struct deliv_plan *p)
{
    for (size_t i = 0; p != NULL && i < p->n_t; i++) {
        if (!p->t[i].failed)
            return true;
    }
    return false;
}

bool
plan_authenticated(const struct deliv_plan *p)
{
    for (size_t i = 0; p != NULL && i < p->n_hosts; i++) {
        if (p->hosts[i].policy != TLSP_OPPORTUNISTIC)
            return true;
    }
    return false;
}

const char *
plan_policy_name(const struct deliv_plan *p)
{
    for (size_t i = 0; p != NULL && i < p->n_hosts; i++) {
        if (p->hosts[i].policy != TLSP_OPPORTUNISTIC)
            return deliv_tls_policy_name(p->hosts[i].policy);
    }
    return deliv_tls_policy_name(TLSP_OPPORTUNISTIC);
}

static bool
same_group(const struct deliv_plan *p, size_t h1, size_t h2)
{
    return p->hosts[h1].hop == p->hosts[h2].hop && p->hosts[h1].pref == p->hosts[h2].pref;
}

bool
plan_first_group(const struct deliv_plan *p, size_t *start, size_t *end)
{
    for (size_t i = 0; i < p->n_t; i++) {
        if (p->t[i].failed)
            continue;
        *start = i;
        *end = i + 1;
        while (*end < p->n_t && same_group(p, p->t[i].host, p->t[*end].host))
            (*end)++;
        return true;
    }
    return false;
}

size_t
plan_order(const struct deliv_plan *p, uint16_t *order, uint32_t (*rnd)(void *), void *arg)
{
    uint16_t grp[DELIV_HOSTS_MAX];
    size_t k = 0;
    for (size_t h = 0; h < p->n_hosts;) {
        size_t n = 0;
        while (h + n < p->n_hosts && n < DELIV_HOSTS_MAX && same_group(p, h, h + n)) {
            grp[n] = (uint16_t)(h + n);
            n++;
        }
        for (size_t i = n; i > 1; i--) {
            size_t j = rnd(arg) % (uint32_t)i;
            uint16_t t = grp[i - 1];
            grp[i - 1] = grp[j];
            grp[j] = t;
        }
        for (size_t i = 0; i < n; i++) {
            const struct plan_host *ph = &p->hosts[grp[i]];
            for (size_t t = 0; t < ph->nt && k < DELIV_TARGETS_MAX; t++)
                order[k++] = (uint16_t)(ph->t0 + t);
        }
        h += n;
    }
    return k;
}

/* ---- building ---- */

static void
build_free(struct plan_build *b)
{
    for (size_t i = 0; i < b->n_hops; i++)
        dns_cancel(b->hops[i].q);
    for (size_t i = 0; i < b->n_hosts; i++) {
        dns_cancel(b->hosts[i]->q);
        dns_cancel(b->hosts[i]->tq);
        dns_rr_result_free(b->hosts[i]->tlsa);
        free(b->hosts[i]->res);
        free(b->hosts[i]);
    }
    mtasts_cancel(b->sts_req);
    sts_free(b->sts);
    event_free(b->fin);
    free(b);
}

void
plan_build_cancel(struct plan_build *b)
{
    if (b != NULL)
        build_free(b);
}

static void
lookup_done(struct plan_build *b)
{
    TERN_ASSERT(b->pending > 0);
    if (--b->pending == 0)
        event_active(b->fin, 0, 0);
}

static void
tlsa_cb(void *arg, const struct dns_rr_result *r)
{
    struct bhost *h = arg;
    h->tq = NULL;
    h->tlsa = dns_rr_result_dup(r);
    lookup_done(h->b);
}

/* Are h's TLSA records to be looked up? Only for MX delivery with DANE on,
 * and only under validated MX and address answers (RFC 7672 §2.2). */
static bool
want_tlsa(const struct plan_build *b, const struct bhost *h)
{
    const struct config *cfg = b->d->cfg;
    return cfg != NULL && (cfg->mx_tls_policies & MX_TLS_POLICY_DANE) &&
           strncmp(b->dest->d->key, "mx:", 3) == 0 && cfg->mx_tls != TLS_NONE &&
           b->dest->d->hops[h->hop].mx && h->mx_secure && h->res->rc == DNS_OK && h->res->secure;
}

static void
addr_cb(void *arg, const struct dns_addr_result *r)
{
    struct bhost *h = arg;
    char name[DNS_NAME_MAX + 1];
    h->q = NULL;
    h->res = xmalloc(sizeof(*h->res));
    *h->res = *r;
    if (want_tlsa(h->b, h) &&
        snprintf(name, sizeof(name), "_%u._tcp.%s", h->port, h->name) < (int)sizeof(name)) {
        /* RFC 7672 §2.2.2 would also try the name a CNAME chain of the host
         * ends at; c-ares does not tell it, so the base domain is always
         * the MX host name (what §2.2.2 falls back to). */
        h->tq = dns_lookup_rr(h->b->d->dns, name, DNS_RR_TLSA, tlsa_cb, h);
        return;
    }
    lookup_done(h->b);
}

static void
host_add(struct plan_build *b, const char *name, uint16_t hop, uint16_t pref, bool implicit,
    bool mx_secure)
{
    struct bhost *h;
    const struct route_hop *rh = &b->dest->d->hops[hop];
    uint16_t port = rh->port
                        ? rh->port
                        : (b->d->cfg && b->d->cfg->delivery_port ? b->d->cfg->delivery_port : 25);
    if (b->n_hosts >= BUILD_HOSTS_MAX)
        return;
    h = xcalloc(1, sizeof(*h));
    h->b = b;
    snprintf(h->name, sizeof(h->name), "%s", name);
    h->hop = hop;
    h->pref = pref;
    h->implicit = implicit;
    h->mx_secure = mx_secure;
    h->port = port;
    b->hosts[b->n_hosts++] = h;
    b->pending++;
    if (b->d->dns != NULL) {
        h->q = dns_lookup_addr(b->d->dns, name, port, b->fam, addr_cb, h);
        return;
    }
    /* No resolver: literals only; the answer still goes through fin. */
    h->res = xcalloc(1, sizeof(*h->res));
    if (dns_literal(name, port, &h->res->addr[0], &h->res->len[0]) == 0) {
        h->res->n = 1;
    } else {
        h->res->rc = DNS_TEMP;
        snprintf(h->res->err, sizeof(h->res->err), "no resolver");
    }
    lookup_done(b);
}

static void
hop_fail(struct bhop *hop, bool perm, int code, const char *esc, const char *fmt, const char *a,
    const char *e)
{
    hop->failed = true;
    hop->perm = perm;
    STATUS_SET(&hop->st, code, esc, fmt, a, e);
}

static void
mx_cb(void *arg, const struct dns_mx_result *r)
{
    struct bhop *hop = arg;
    struct plan_build *b = hop->b;
    const char *dom = b->dest->d->hops[hop->idx].host;
    hop->q = NULL;
    switch (r->rc) {
    case DNS_OK:
        for (size_t i = 0; i < r->n; i++)
            host_add(b, r->mx[i].host, hop->idx, r->mx[i].pref, false, r->secure);
        break;
    case DNS_NODATA:
        /* RFC 5321 §5.1: no MX records, the domain is its own mail host. */
        host_add(b, dom, hop->idx, 0, true, r->secure);
        break;
    case DNS_NULLMX:
        /* RFC 7505 §4.2 */
        hop_fail(
            hop, true, 556, "5.1.10", "domain %s has a null MX: it accepts no mail%s", dom, "");
        break;
    case DNS_NXDOMAIN:
        hop_fail(hop, true, 550, "5.1.2", "domain %s not found%s", dom, " (NXDOMAIN)");
        break;
    case DNS_BADNAME:
        hop_fail(hop, true, 550, "5.1.2", "%s is not a valid domain name%s", dom, "");
        break;
    case DNS_TEMP:
        hop_fail(hop, false, 451, "4.4.3", "MX lookup of %s failed: %s", dom, r->err);
        break;
    }
    lookup_done(b);
}

/* Does the domain's MTA-STS policy, in enforce mode, name h as one of its
 * MX hosts (RFC 8461 §4.1)? */
static bool
sts_enforces(const struct plan_build *b, const struct bhost *h)
{
    return b->sts != NULL && b->sts->policy.mode == MTASTS_ENFORCE &&
           mtasts_policy_match(&b->sts->policy, h->name);
}

/* Append host h and its addresses to p, as far as the tables have room;
 * its TLSA records move to the plan. */
static void
plan_add_host(struct deliv_plan *p, const struct plan_build *b, struct bhost *h)
{
    struct plan_host *ph;
    const struct config *cfg = b->d->cfg;
    if (p->n_hosts >= DELIV_HOSTS_MAX || p->n_t >= DELIV_TARGETS_MAX)
        return;
    ph = &p->hosts[p->n_hosts];
    snprintf(ph->name, sizeof(ph->name), "%s", h->name);
    if (b->dest->d->hops[h->hop].mx)
        snprintf(ph->domain, sizeof(ph->domain), "%s", b->dest->d->hops[h->hop].host);
    ph->mx_secure = h->mx_secure;
    ph->addr_secure = h->res->secure;
    ph->dane = deliv_dane_state(h->tlsa);
    ph->policy = cfg == NULL ? TLSP_OPPORTUNISTIC
                             : deliv_tls_policy_pick(
                                   cfg->mx_tls_policies, cfg->mx_tls, ph->dane, sts_enforces(b, h));
    if (ph->dane == DANE_USABLE) {
        ph->tlsa = h->tlsa;
        h->tlsa = NULL;
    }
    ph->hop = h->hop;
    ph->pref = h->pref;
    ph->t0 = (uint16_t)p->n_t;
    for (size_t i = 0; i < h->res->n && p->n_t < DELIV_TARGETS_MAX; i++) {
        struct plan_target *t = &p->t[p->n_t++];
        t->addr = h->res->addr[i];
        t->len = h->res->len[i];
        t->host = (uint16_t)p->n_hosts;
        ph->nt++;
    }
    p->n_hosts++;
}

static void
log_host_failed(const struct plan_build *b, const struct bhost *h)
{
    struct logline l;
    log_begin(&l, LOG_INFO, NULL, "delivery", "host_unresolved");
    log_str(&l, "dest", b->dest->d->key);
    log_str(&l, "host", h->name);
    log_str(&l, "error", h->res->err);
    log_end(&l);
}

/* RFC 7672 §2.1.1: the TLSA lookup of a host with validated addresses
 * failed; the host is skipped (a temporary failure), never used without
 * the policy its records might set. */
static void
log_tlsa_failed(const struct plan_build *b, struct bhost *h)
{
    struct logline l;
    log_begin(&l, LOG_WARN, NULL, "delivery", "host_failed");
    log_str(&l, "dest", b->dest->d->key);
    log_str(&l, "host", h->name);
    log_str(&l, "phase", "TLSA lookup");
    log_str(&l, "tls_policy", "dane");
    log_str(&l, "reason", h->tlsa->err);
    log_end(&l);
    if (b->d->tlsrpt != NULL) {
        /* RFC 8460 §4.3.2.2: no valid records came from the resolver. */
        struct tlsrpt_event ev = { 0 };
        ev.domain = b->dest->d->hops[h->hop].host;
        ev.ptype = TLSRPT_P_TLSA;
        ev.result = TLSRPT_DNSSEC_INVALID;
        ev.receiving_mx = h->name;
        tlsrpt_record(b->d->tlsrpt, &ev);
    }
    h->res->rc = DNS_TEMP;
    snprintf(h->res->err, sizeof(h->res->err), "TLSA lookup of _%u._tcp.%s failed (DANE): %s",
        h->port, h->name, h->tlsa->err);
}

/* A hop whose lookups gave no address: why, and whether for good. */
static void
hop_no_address(struct plan_build *b, struct bhop *hop, const struct bhost *first)
{
    const struct route_hop *rh = &b->dest->d->hops[hop->idx];
    if (first == NULL) {
        hop_fail(hop, false, 451, "4.4.3", "no host to connect to for %s%s", rh->host, "");
    } else if (first->tlsa != NULL && first->tlsa->rc == DNS_TEMP) {
        hop_fail(
            hop, false, 451, "4.7.5", "no usable MX host of %s: %s", rh->host, first->res->err);
    } else if (first->implicit && first->res->rc != DNS_TEMP) {
        hop_fail(
            hop, true, 550, "5.1.2", "domain %s has no MX and no address record%s", rh->host, "");
    } else if (rh->mx && !first->implicit) {
        hop_fail(hop, false, 451, "4.4.3", "no MX host of %s has an address: %s", rh->host,
            first->res->err);
    } else {
        hop_fail(hop, false, 451, "4.4.3", "cannot resolve %s: %s", first->name, first->res->err);
    }
}

/* RFC 8461 §4.1: in enforce mode only MX hosts matching the policy are
 * candidates; in testing mode a mismatch is logged (and delivered). A host
 * with usable validated TLSA records is under DANE instead, whatever the
 * MTA-STS policy says of it (RFC 8461 §2). */
static bool
sts_host_ok(const struct plan_build *b, const struct bhost *h)
{
    struct logline l;
    enum mtasts_mode mode = b->sts != NULL ? b->sts->policy.mode : MTASTS_NONE;
    if (mode == MTASTS_NONE || mtasts_policy_match(&b->sts->policy, h->name) ||
        deliv_dane_state(h->tlsa) == DANE_USABLE)
        return true;
    log_begin(&l, mode == MTASTS_ENFORCE ? LOG_WARN : LOG_INFO, NULL, "mtasts", "mx_not_in_policy");
    log_str(&l, "dest", b->dest->d->key);
    log_str(&l, "host", h->name);
    log_str(&l, "mode", mtasts_mode_name(mode));
    log_str(&l, "action", mode == MTASTS_ENFORCE ? "skipped" : "delivered");
    log_end(&l);
    return mode != MTASTS_ENFORCE;
}

static struct deliv_plan *
build_assemble(struct plan_build *b)
{
    struct deliv_plan *p = xcalloc(1, sizeof(*p));
    p->refs = 1;
    p->built_ms = tern_mono_ms();
    p->dns_ms = p->built_ms - b->started_ms;
    p->hosts = xcalloc(DELIV_HOSTS_MAX, sizeof(*p->hosts));
    p->t = xcalloc(DELIV_TARGETS_MAX, sizeof(*p->t));
    for (size_t k = 0; k < b->n_hops; k++) {
        struct bhop *hop = &b->hops[k];
        const struct bhost *first_bad = NULL;
        size_t before = p->n_t;
        size_t skipped = 0;
        for (size_t i = 0; i < b->n_hosts; i++) {
            struct bhost *h = b->hosts[i];
            if (h->hop != hop->idx || h->res == NULL)
                continue;
            if (deliv_dane_state(h->tlsa) == DANE_TEMP) {
                log_tlsa_failed(b, h);
            } else if (!sts_host_ok(b, h)) {
                skipped++;
                continue;
            } else if (h->res->rc == DNS_OK && h->res->n > 0) {
                plan_add_host(p, b, h);
                continue;
            }
            log_host_failed(b, h);
            if (first_bad == NULL)
                first_bad = h;
        }
        if (!hop->failed && p->n_t == before && skipped > 0 && first_bad == NULL)
            hop_fail(hop, false, 451, "4.7.5",
                "MTA-STS policy of %s: no MX host matches its mx patterns%s", b->sts->domain, "");
        else if (!hop->failed && p->n_t == before)
            hop_no_address(b, hop, first_bad);
    }
    p->sts = b->sts;
    b->sts = NULL;
    return p;
}

static void
log_plan(const struct plan_build *b, const struct deliv_plan *p)
{
    struct logline l;
    char a[DELIV_ADDR_KEY_MAX];
    log_begin(&l, LOG_INFO, NULL, "delivery", "route_resolved");
    log_str(&l, "dest", b->dest->d->key);
    log_int(&l, "hosts", (int64_t)p->n_hosts);
    log_int(&l, "addrs", (int64_t)p->n_t);
    if (p->n_t > 0) {
        deliv_fmt_addr(&p->t[0].addr, a, sizeof(a), NULL, 0);
        log_str(&l, "first_host", p->hosts[p->t[0].host].name);
        log_str(&l, "first_addr", a);
        log_str(&l, "tls_policy", deliv_tls_policy_name(p->hosts[p->t[0].host].policy));
    }
    log_end(&l);
}

/* The first temporary reason wins: one hop that may work later makes the
 * whole destination temporary. *perm: every hop failed for good. */
static void
build_reason(const struct plan_build *b, struct tern_status *st, bool *perm)
{
    memset(st, 0, sizeof(*st));
    *perm = b->n_hops > 0;
    for (size_t k = 0; k < b->n_hops; k++) {
        const struct bhop *hop = &b->hops[k];
        struct logline l;
        if (!hop->failed) {
            *perm = false;
            continue;
        }
        log_begin(&l, hop->perm ? LOG_WARN : LOG_INFO, NULL, "delivery", "hop_failed");
        log_str(&l, "dest", b->dest->d->key);
        log_str(&l, "host", b->dest->d->hops[hop->idx].host);
        log_int(&l, "code", hop->st.code);
        log_str(&l, "reason", hop->st.text);
        log_end(&l);
        if (st->code == 0 || (*perm && !hop->perm))
            *st = hop->st;
        *perm = *perm && hop->perm;
    }
    if (st->code == 0) {
        STATUS_SET(st, 451, "4.4.3", "no route to %s", b->dest->d->key);
        *perm = false;
    }
}

static void
fin_cb(evutil_socket_t fd, short what, void *arg)
{
    struct plan_build *b = arg;
    struct delivery *d = b->d;
    struct deliv_dest *dest = b->dest;
    plan_done_cb cb = b->cb;
    struct deliv_plan *p = build_assemble(b);
    struct tern_status st;
    bool perm;
    build_reason(b, &st, &perm);
    if (p->n_t > 0)
        log_plan(b, p);
    build_free(b);
    if (p->n_t > 0) {
        cb(d, dest, p, NULL, false);
        return;
    }
    plan_unref(p);
    cb(d, dest, NULL, &st, perm);
}

/* A policy that could not be obtained is a TLS-RPT failure of its own
 * (RFC 8460 §4.3.2.1); the domain is then treated as having none. */
static void
sts_record_fail(const struct plan_build *b, const char *domain, const struct mtasts_answer *a)
{
    struct tlsrpt_event ev = { 0 };
    struct logline l;
    ev.domain = domain;
    ev.ptype = TLSRPT_P_NONE;
    ev.result = a->fail == MTASTS_FAIL_INVALID  ? TLSRPT_STS_POLICY_INVALID
                : a->fail == MTASTS_FAIL_WEBPKI ? TLSRPT_STS_WEBPKI_INVALID
                                                : TLSRPT_STS_POLICY_FETCH_ERROR;
    tlsrpt_record(b->d->tlsrpt, &ev);
    log_begin(&l, LOG_WARN, NULL, "mtasts", "no_policy");
    log_str(&l, "dest", b->dest->d->key);
    log_str(&l, "result", tlsrpt_result_name(ev.result));
    log_str(&l, "reason", a->err);
    log_end(&l);
}

static void
sts_cb(void *arg, const struct mtasts_answer *a)
{
    struct plan_build *b = arg;
    const char *domain = b->dest->d->key + 3;
    b->sts_req = NULL;
    if (a->fail != MTASTS_FAIL_NONE)
        sts_record_fail(b, domain, a);
    if (a->mode != MTASTS_NONE && a->policy != NULL) {
        b->sts = xcalloc(1, sizeof(*b->sts));
        snprintf(b->sts->domain, sizeof(b->sts->domain), "%s", domain);
        b->sts->policy = *a->policy;
        b->sts->text = a->text != NULL ? xstrndup(a->text, a->len) : NULL;
        b->sts->len = a->text != NULL ? a->len : 0;
    }
    lookup_done(b);
}

/* MTA-STS applies to the recipient domain's own MX hosts: "mx:DOMAIN"
 * destinations only, never a smarthost or a route the operator set; and
 * only when mx_tls_policy names it (no lookup at all otherwise) and mx_tls
 * allows TLS. */
static void
sts_start(struct plan_build *b)
{
    const char *key = b->dest->d->key;
    const struct config *cfg = b->d->cfg;
    if (b->d->mtasts == NULL || b->d->dns == NULL || cfg == NULL ||
        !(cfg->mx_tls_policies & MX_TLS_POLICY_MTASTS) || cfg->mx_tls == TLS_NONE ||
        strncmp(key, "mx:", 3) != 0 || b->n_hops == 0 || !b->dest->d->hops[0].mx)
        return;
    b->pending++;
    b->sts_req = mtasts_get(b->d->mtasts, key + 3, sts_cb, b);
}

struct plan_build *
plan_build_start(struct delivery *d, struct deliv_dest *dest, enum ip_family fam, plan_done_cb cb)
{
    struct plan_build *b = xcalloc(1, sizeof(*b));
    b->d = d;
    b->dest = dest;
    b->fam = fam;
    b->cb = cb;
    b->started_ms = tern_mono_ms();
    b->fin = event_new(d->base, -1, 0, fin_cb, b);
    if (b->fin == NULL)
        tern_panic("cannot create delivery event");
    b->n_hops = dest->d->n_hops < ROUTE_HOPS_MAX ? dest->d->n_hops : ROUTE_HOPS_MAX;
    for (size_t k = 0; k < b->n_hops; k++) {
        const struct route_hop *rh = &dest->d->hops[k];
        struct bhop *hop = &b->hops[k];
        hop->b = b;
        hop->idx = (uint16_t)k;
        if (rh->mx && d->dns != NULL) {
            b->pending++;
            hop->q = dns_lookup_mx(d->dns, rh->host, mx_cb, hop);
        } else {
            host_add(b, rh->host, (uint16_t)k, 0, false, false);
        }
    }
    sts_start(b);
    if (b->pending == 0)
        event_active(b->fin, 0, 0);
    return b;
}

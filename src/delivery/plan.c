/*
 * A destination's plan: its hops resolved into an ordered list of targets
 * (RFC 5321 §5.1). A hop with mx has its MX records looked up and each MX
 * host resolved; no MX record means the domain itself (implicit MX); a null
 * MX, an unknown domain or an implicit MX without address fail permanently.
 * A hop without mx is resolved (or is a literal) directly, and never fails
 * permanently: it is the operator's own setting. Lookups of one build run
 * in parallel; the build owns its queries and ends through its own event.
 * An "mx:" destination's MTA-STS policy is looked up alongside (RFC 8461
 * §5): in enforce mode, MX hosts that do not match it are left out.
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
    bool implicit; /* the domain itself, for want of MX records */
    struct dns_query *q;
    struct dns_addr_result *res; /* owned, once answered */
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
addr_cb(void *arg, const struct dns_addr_result *r)
{
    struct bhost *h = arg;
    h->q = NULL;
    h->res = xmalloc(sizeof(*h->res));
    *h->res = *r;
    lookup_done(h->b);
}

static void
host_add(struct plan_build *b, const char *name, uint16_t hop, uint16_t pref, bool implicit)
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
            host_add(b, r->mx[i].host, hop->idx, r->mx[i].pref, false);
        break;
    case DNS_NODATA:
        /* RFC 5321 §5.1: no MX records, the domain is its own mail host. */
        host_add(b, dom, hop->idx, 0, true);
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

/* Append host h and its addresses to p, as far as the tables have room. */
static void
plan_add_host(struct deliv_plan *p, const struct bhost *h)
{
    struct plan_host *ph;
    if (p->n_hosts >= DELIV_HOSTS_MAX || p->n_t >= DELIV_TARGETS_MAX)
        return;
    ph = &p->hosts[p->n_hosts];
    snprintf(ph->name, sizeof(ph->name), "%s", h->name);
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

/* A hop whose lookups gave no address: why, and whether for good. */
static void
hop_no_address(struct plan_build *b, struct bhop *hop, const struct bhost *first)
{
    const struct route_hop *rh = &b->dest->d->hops[hop->idx];
    if (first == NULL) {
        hop_fail(hop, false, 451, "4.4.3", "no host to connect to for %s%s", rh->host, "");
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
 * candidates; in testing mode a mismatch is logged (and delivered). */
static bool
sts_host_ok(const struct plan_build *b, const struct bhost *h)
{
    struct logline l;
    enum mtasts_mode mode = b->sts != NULL ? b->sts->policy.mode : MTASTS_NONE;
    if (mode == MTASTS_NONE || mtasts_policy_match(&b->sts->policy, h->name))
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
            const struct bhost *h = b->hosts[i];
            if (h->hop != hop->idx || h->res == NULL)
                continue;
            if (!sts_host_ok(b, h)) {
                skipped++;
                continue;
            }
            if (h->res->rc == DNS_OK && h->res->n > 0) {
                plan_add_host(p, h);
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
 * destinations only, never a smarthost or a route the operator set. */
static void
sts_start(struct plan_build *b)
{
    const char *key = b->dest->d->key;
    if (b->d->mtasts == NULL || b->d->dns == NULL || strncmp(key, "mx:", 3) != 0 ||
        b->n_hops == 0 || !b->dest->d->hops[0].mx)
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
            host_add(b, rh->host, (uint16_t)k, 0, false);
        }
    }
    sts_start(b);
    if (b->pending == 0)
        event_active(b->fin, 0, 0);
    return b;
}

/*
 * Outbound delivery: destinations, limits and the job hand-out. Each
 * destination (delivery_dest.key) keeps its plan (plan.c) and its open
 * connections; a kick opens new ones while fewer than delivery_concurrency
 * are open and fewer connections are free to take a job than jobs are due.
 * Limits: max_connections in total (destinations wait in a FIFO for a free
 * slot), delivery_rate messages per minute per destination (a token bucket
 * checked before each job is taken). Idle connections are indexed by peer
 * address, so a destination whose plan leads to the same address:port
 * adopts one instead of connecting again. Closed connections wait on the
 * dead list and are freed by the reaper event; a destination's state with
 * nothing left in it is freed there too, and its owner told. The
 * destinations themselves (key, hops, how many jobs are ready) belong to
 * the caller: delivery keeps no count of its own. The SMTP conversation
 * itself lives in client.c.
 */
#include "delivery/delivery.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery/delivery_int.h"
#include "metrics/metrics.h"
#include "util/log.h"
#include "util/util.h"

struct idle_bucket {
    char key[DELIV_ADDR_KEY_MAX];
    TAILQ_HEAD(, deliv_conn) conns;
};

static void dest_plan_done(struct delivery *d, struct deliv_dest *dest, struct deliv_plan *plan,
    const struct tern_status *st, bool perm);

/* ---- small helpers ---- */

void
deliv_fmt_addr(
    const struct sockaddr_storage *ss, char *out, size_t cap, char *addr_only, size_t acap)
{
    char a[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, a, sizeof(a));
        snprintf(out, cap, "%s:%u", a, (unsigned)ntohs(sin->sin_port));
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, a, sizeof(a));
        snprintf(out, cap, "[%s]:%u", a, (unsigned)ntohs(sin6->sin6_port));
    }
    if (addr_only != NULL)
        snprintf(addr_only, acap, "%s", a);
}

enum tls_mode
deliv_tls_mode(const struct config *cfg, const char *dest_key)
{
    return strncmp(dest_key, "mx:", 3) == 0 ? cfg->mx_tls : cfg->smarthost_tls;
}

uint32_t
deliv_rnd(void *arg)
{
    struct delivery *d = arg;
    /* xorshift64*: spreading connections over equal MX hosts only. */
    d->rnd ^= d->rnd >> 12;
    d->rnd ^= d->rnd << 25;
    d->rnd ^= d->rnd >> 27;
    return (uint32_t)((d->rnd * 2685821657736338717ull) >> 32);
}

static size_t
dest_limit(const struct delivery *d)
{
    return d->cfg->delivery_concurrency ? d->cfg->delivery_concurrency : DELIV_DEF_CONCURRENCY;
}

static bool
global_cap_reached(const struct delivery *d)
{
    return d->cfg->max_connections > 0 && d->n_active >= d->cfg->max_connections;
}

/* ---- life cycle ---- */

static bool
dest_unused(const struct deliv_dest *dest)
{
    return dest->n_conns == 0 && dest->build == NULL && !dest->waiting &&
           !evtimer_pending(dest->rate_ev, NULL);
}

static void
dest_free(struct delivery *d, struct deliv_dest *dest)
{
    struct delivery_dest *dd = dest->d;
    TAILQ_REMOVE(&d->dests, dest, link);
    if (dest->waiting)
        TAILQ_REMOVE(&d->waiting, dest, wait_link);
    plan_build_cancel(dest->build);
    plan_unref(dest->plan);
    event_free(dest->rate_ev);
    free(dest);
    dd->dl = NULL;
    if (d->cb.released != NULL)
        d->cb.released(d->cb.arg, dd);
}

static void
reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *d = arg;
    struct deliv_conn *c;
    struct deliv_dest *dest, *next;
    while ((c = TAILQ_FIRST(&d->dead)) != NULL) {
        TAILQ_REMOVE(&d->dead, c, dest_link);
        client_free(c);
    }
    for (dest = TAILQ_FIRST(&d->dests); dest != NULL; dest = next) {
        next = TAILQ_NEXT(dest, link);
        if (dest_unused(dest))
            dest_free(d, dest);
    }
}

struct delivery *
delivery_new(
    struct event_base *base, struct spool *sp, struct dns *dns, const struct delivery_callbacks *cb)
{
    struct delivery *d = xcalloc(1, sizeof(*d));
    d->base = base;
    d->sp = sp;
    d->dns = dns;
    d->cb = *cb;
    TAILQ_INIT(&d->dests);
    TAILQ_INIT(&d->waiting);
    TAILQ_INIT(&d->idle);
    TAILQ_INIT(&d->dead);
    TAILQ_INIT(&d->lingers);
    d->convs = map_new();
    d->idle_by_addr = map_new();
    d->notls = map_new();
    d->reap = event_new(base, -1, 0, reap_cb, d);
    if (d->reap == NULL)
        tern_panic("cannot create delivery reaper event");
    d->rnd = ((uint64_t)tern_now_ms() << 16) ^ (uint64_t)(uintptr_t)d;
    d->rnd |= 1;
    if (dns == NULL)
        log_simple(LOG_WARN, "delivery", "no_resolver",
            "delivery has no resolver: only address literals can be reached");
    return d;
}

/* The outbound TLS client context of cfg. Verification is computed but not
 * enforced by OpenSSL (SSL_VERIFY_NONE): the client decides after the
 * handshake, so that "required" can defer with the precise reason and
 * "opportunistic" can log verified=no (RFC 7435 §1.3). */
static void
tls_client_rebuild(struct delivery *d, const struct config *cfg)
{
    struct tls_client_opts o = {
        .ca_file = cfg->tls_ca_file,
        .verify = false,
        .min_version = cfg->tls_min_version,
        .ciphers = cfg->tls_ciphers,
        .ciphersuites = cfg->tls_ciphersuites,
    };
    struct buf err = BUF_INIT;
    tls_ctx_unref(d->tls);
    d->tls = tls_client_ctx_new(&o, &err);
    d->tls_err[0] = '\0';
    if (d->tls == NULL) {
        struct logline l;
        size_t n = err.len;
        while (n > 0 && err.data[n - 1] == '\n')
            n--;
        snprintf(d->tls_err, sizeof(d->tls_err), "%.*s", (int)n, err.data ? err.data : "");
        log_begin(&l, LOG_ERROR, NULL, "delivery", "tls_context_failed");
        log_str(&l, "reason", d->tls_err);
        log_end(&l);
    }
    buf_fini(&err);
}

void
delivery_set_config(struct delivery *d, struct config *cfg)
{
    struct config *old = d->cfg;
    d->cfg = config_ref(cfg);
    tls_client_rebuild(d, cfg);
    config_unref(old);
}

void
delivery_set_tls_policy(struct delivery *d, struct mtasts *m, struct tlsrpt *r)
{
    d->mtasts = m;
    d->tlsrpt = r;
}

/* ---- plaintext fallback after a failed opportunistic handshake ---- */

struct notls_walk {
    struct map *keep;
    int64_t now;
    bool all;
};

static void
notls_keep_live(const void *key, size_t klen, void *val, void *arg)
{
    struct notls_walk *w = arg;
    int64_t *until = val;
    if (!w->all && *until > w->now)
        map_put(w->keep, key, klen, until);
    else
        free(until);
}

/* Drop expired entries (every entry with all). The map cannot delete while
 * walking, so the live entries move to a new one. */
static void
notls_purge(struct delivery *d, bool all)
{
    struct notls_walk w = { map_new(), tern_mono_ms(), all };
    map_each(d->notls, notls_keep_live, &w);
    map_free(d->notls);
    d->notls = w.keep;
}

void
deliv_notls_add(struct delivery *d, const char *addr)
{
    int64_t *until = map_get_str(d->notls, addr);
    if (until == NULL) {
        if (map_count(d->notls) >= DELIV_NOTLS_MAX)
            notls_purge(d, false);
        if (map_count(d->notls) >= DELIV_NOTLS_MAX)
            return; /* full of live entries: this address just tries TLS again */
        until = xmalloc(sizeof(*until));
        map_put_str(d->notls, addr, until);
    }
    *until = tern_mono_ms() + DELIV_NOTLS_MS;
}

bool
deliv_notls_has(struct delivery *d, const char *addr)
{
    const int64_t *until = map_get_str(d->notls, addr);
    return until != NULL && *until > tern_mono_ms();
}

/* ---- delivery_rate: a token bucket per destination ---- */

#define TOKEN 1000 /* one message, in bucket units */

static int64_t
rate_burst(uint32_t rate)
{
    /* One second's worth, at least one message: smooth, never a minute's
     * budget at once. */
    int64_t b = rate / 60;
    return (b > 0 ? b : 1) * TOKEN;
}

static void
rate_refill(struct deliv_dest *dest, uint32_t rate, int64_t now)
{
    if (dest->tokens_ms == 0) {
        dest->tokens = rate_burst(rate);
    } else if (now > dest->tokens_ms) {
        /* rate messages per 60000 ms = rate * TOKEN / 60000 units per ms. */
        int64_t add = (now - dest->tokens_ms) * (int64_t)rate / 60;
        dest->tokens =
            dest->tokens + add > rate_burst(rate) ? rate_burst(rate) : dest->tokens + add;
    }
    dest->tokens_ms = now;
}

/* May dest send one more message now? If not, its timer is armed. */
static bool
rate_allows(struct delivery *d, struct deliv_dest *dest)
{
    uint32_t rate = d->cfg ? d->cfg->delivery_rate : 0;
    int64_t now = tern_mono_ms(), wait;
    struct timeval tv;
    if (rate == 0)
        return true;
    rate_refill(dest, rate, now);
    if (dest->tokens >= TOKEN)
        return true;
    if (!evtimer_pending(dest->rate_ev, NULL)) {
        wait = ((TOKEN - dest->tokens) * 60 + rate - 1) / rate + 1;
        tv.tv_sec = (time_t)(wait / 1000);
        tv.tv_usec = (suseconds_t)((wait % 1000) * 1000);
        evtimer_add(dest->rate_ev, &tv);
    }
    return false;
}

static void
rate_cb(evutil_socket_t fd, short what, void *arg)
{
    struct deliv_dest *dest = arg;
    struct delivery *d = dest->owner;
    struct deliv_conn *c;
    size_t woken = 0;
    TAILQ_FOREACH(c, &dest->conns, dest_link)
    {
        if (woken < dest->d->n_ready && client_wake(c))
            woken++;
    }
    deliv_dest_fill(d, dest);
    event_active(d->reap, 0, 0);
}

/* ---- destinations ---- */

/* Forget the plan and let the connections to the old hops go (busy ones
 * after their transaction). */
static void
dest_reset(struct deliv_dest *dest)
{
    struct deliv_conn *c, *cn;
    dest->gen++;
    for (c = TAILQ_FIRST(&dest->conns); c != NULL; c = cn) {
        cn = TAILQ_NEXT(c, dest_link);
        client_quit_idle(c);
    }
    plan_build_cancel(dest->build);
    dest->build = NULL;
    plan_unref(dest->plan);
    dest->plan = NULL;
}

/* Delivery's state of dd, made on first use. */
static struct deliv_dest *
dest_get(struct delivery *d, struct delivery_dest *dd)
{
    struct deliv_dest *dest = dd->dl;
    if (dest != NULL)
        return dest;
    dest = xcalloc(1, sizeof(*dest));
    dest->owner = d;
    dest->d = dd;
    dest->rate_ev = evtimer_new(d->base, rate_cb, dest);
    if (dest->rate_ev == NULL)
        tern_panic("cannot create delivery rate timer");
    TAILQ_INIT(&dest->conns);
    TAILQ_INSERT_TAIL(&d->dests, dest, link);
    dd->dl = dest;
    return dest;
}

void
delivery_dest_changed(struct delivery *d, struct delivery_dest *dd)
{
    if (dd->dl != NULL)
        dest_reset(dd->dl);
}

static void
wait_enqueue(struct delivery *d, struct deliv_dest *dest)
{
    if (dest->waiting)
        return;
    dest->waiting = true;
    TAILQ_INSERT_TAIL(&d->waiting, dest, wait_link);
}

/* Free slots go to waiting destinations in arrival order. */
static void
wait_serve(struct delivery *d)
{
    struct deliv_dest *dest;
    while (!d->shutting && d->cfg != NULL && !global_cap_reached(d) &&
           (dest = TAILQ_FIRST(&d->waiting)) != NULL) {
        TAILQ_REMOVE(&d->waiting, dest, wait_link);
        dest->waiting = false;
        deliv_dest_fill(d, dest);
        if (dest->waiting)
            break; /* took the last slot and wants more: back in line */
    }
    event_active(d->reap, 0, 0);
}

/* May dest use c, set up for another destination? Not when either side
 * requires TLS (the certificate was checked against the other's host name,
 * or dest has a DANE or MTA-STS host: its policy is checked per host)
 * or c logged in (its credentials belong to the other's hop). */
static bool
conn_shareable(const struct delivery *d, const struct deliv_conn *c, const struct deliv_dest *dest)
{
    return !c->authed && c->tls_mode != TLS_REQUIRED &&
           deliv_tls_mode(d->cfg, dest->d->key) != TLS_REQUIRED && !plan_authenticated(dest->plan);
}

/* An idle connection of another destination at one of the addresses of
 * dest's most preferred group, whose own destination has nothing due. */
static struct deliv_conn *
idle_match(struct delivery *d, struct deliv_dest *dest)
{
    size_t start, end;
    if (dest->plan == NULL || map_count(d->idle_by_addr) == 0 ||
        !plan_first_group(dest->plan, &start, &end))
        return NULL;
    for (size_t i = start; i < end; i++) {
        char key[DELIV_ADDR_KEY_MAX];
        struct idle_bucket *b;
        struct deliv_conn *c;
        if (dest->plan->t[i].failed)
            continue;
        deliv_fmt_addr(&dest->plan->t[i].addr, key, sizeof(key), NULL, 0);
        b = map_get_str(d->idle_by_addr, key);
        if (b == NULL)
            continue;
        TAILQ_FOREACH(c, &b->conns, addr_link)
        {
            if (c->dest != dest && c->dest->d->n_ready == 0 && !c->woken &&
                c->n_msgs < c->max_msgs && conn_shareable(d, c, dest))
                return c;
        }
    }
    return NULL;
}

/* The global cap is reached: ask the oldest idle connection of another
 * destination to QUIT, so its slot comes free. */
static void
idle_evict(struct delivery *d, struct deliv_dest *dest)
{
    struct deliv_conn *c;
    TAILQ_FOREACH(c, &d->idle, idle_link)
    {
        if (c->dest != dest && c->dest->d->n_ready == 0 && !c->woken) {
            client_quit_idle(c);
            return;
        }
    }
}

static void
dest_start_build(struct delivery *d, struct deliv_dest *dest)
{
    if (dest->build != NULL)
        return;
    dest->build = plan_build_start(d, dest, d->cfg->ip_family, dest_plan_done);
}

static bool
plan_fresh(const struct deliv_dest *dest)
{
    return dest->plan != NULL && tern_mono_ms() - dest->plan->built_ms < DELIV_PLAN_MS &&
           plan_usable(dest->plan);
}

void
deliv_dest_fill(struct delivery *d, struct deliv_dest *dest)
{
    size_t free_conns = 0, n_ready = dest->d->n_ready;
    struct deliv_conn *c;
    if (d->shutting || d->cfg == NULL || n_ready == 0 || dest->waiting)
        return;
    TAILQ_FOREACH(c, &dest->conns, dest_link)
    free_conns += client_not_busy(c);
    if (free_conns >= n_ready || dest->n_conns >= dest_limit(d) || !rate_allows(d, dest))
        return;
    if (!plan_fresh(dest)) {
        dest_start_build(d, dest);
        return;
    }
    while (dest->n_conns < dest_limit(d) && free_conns < n_ready) {
        c = idle_match(d, dest);
        if (c != NULL) {
            client_adopt(c, dest);
        } else if (global_cap_reached(d)) {
            wait_enqueue(d, dest); /* first: the evicted slot may free at once */
            idle_evict(d, dest);
            return;
        } else {
            client_new(d, dest, d->cfg);
        }
        free_conns++;
    }
}

static void
dest_plan_done(struct delivery *d, struct deliv_dest *dest, struct deliv_plan *plan,
    const struct tern_status *st, bool perm)
{
    dest->build = NULL;
    if (plan != NULL) {
        plan_unref(dest->plan);
        dest->plan = plan;
        deliv_dest_fill(d, dest);
        return;
    }
    if (!perm && plan_usable(dest->plan)) {
        /* A DNS hiccup while the last plan still works: keep using it. */
        dest->plan->built_ms = tern_mono_ms();
        deliv_dest_fill(d, dest);
        return;
    }
    plan_unref(dest->plan);
    dest->plan = NULL;
    deliv_dest_fail_jobs(d, dest, st, perm ? DELIV_PERM : DELIV_TEMP, NULL);
    event_active(d->reap, 0, 0);
}

void
delivery_kick(struct delivery *d, struct delivery_dest *dd)
{
    struct deliv_dest *dest;
    struct deliv_conn *c;
    size_t woken = 0;
    if (d->shutting)
        return;
    if (d->cfg == NULL) {
        log_simple(LOG_ERROR, "delivery", "no_config", "delivery kicked before configuration");
        return;
    }
    dest = dest_get(d, dd);
    /* Idle connections first; they ask from the loop, not inside this call. */
    TAILQ_FOREACH(c, &dest->conns, dest_link)
    {
        if (woken < dd->n_ready && client_wake(c))
            woken++;
    }
    deliv_dest_fill(d, dest);
    event_active(d->reap, 0, 0);
}

/* ---- jobs ---- */

bool
deliv_take_job(struct delivery *d, struct deliv_dest *dest, struct delivery_job *job, bool rated)
{
    memset(job, 0, sizeof(*job));
    if (d->shutting)
        return false;
    if (rated && !rate_allows(d, dest))
        return false;
    if (!d->cb.next_job(d->cb.arg, dest->d, job))
        return false;
    if (rated && d->cfg->delivery_rate > 0)
        dest->tokens -= TOKEN;
    return true;
}

void
deliv_dest_fail_jobs(struct delivery *d, struct deliv_dest *dest, const struct tern_status *st,
    enum deliv_class cls, const char *tls_policy)
{
    struct delivery_job job;
    struct logline l;
    size_t n = 0;
    while (deliv_take_job(d, dest, &job, false)) {
        struct delivery_rcpt_result *res = xcalloc(job.n_rcpts ? job.n_rcpts : 1, sizeof(*res));
        for (size_t i = 0; i < job.n_rcpts; i++) {
            res[i].cls = cls;
            res[i].st = *st;
            res[i].from_remote = false;
            res[i].tls_policy = tls_policy;
        }
        d->cb.done(d->cb.arg, job.id, res, job.n_rcpts, NULL);
        free(res);
        n++;
    }
    log_begin(&l, cls == DELIV_PERM ? LOG_WARN : LOG_INFO, NULL, "delivery",
        cls == DELIV_PERM ? "dest_failed" : "dest_deferred");
    log_str(&l, "dest", dest->d->key);
    log_int(&l, "jobs", (int64_t)n);
    log_int(&l, "code", st->code);
    log_str(&l, "reason", st->text);
    log_end(&l);
}

void
deliv_dest_down(struct delivery *d, struct deliv_dest *dest, const struct deliv_plan *used,
    const struct tern_status *st)
{
    const struct deliv_conn *o;
    if (d->shutting)
        return;
    TAILQ_FOREACH(o, &dest->conns, dest_link)
    {
        /* Another connection may still get through, or is already working. */
        if (o->state < CS_QUIT)
            return;
    }
    if (dest->build != NULL)
        return; /* resolving again: the new plan decides */
    if (dest->plan != used && plan_usable(dest->plan)) {
        deliv_dest_fill(d, dest); /* a newer plan has untried targets */
        return;
    }
    /* Every host failed: the deferral names the policy they were under. */
    const char *pol = plan_policy_name(used);
    plan_unref(dest->plan);
    dest->plan = NULL;
    deliv_dest_fail_jobs(d, dest, st, DELIV_TEMP, pol);
}

/* ---- connections ---- */

void
deliv_conn_retire(struct delivery *d, struct deliv_conn *c, struct deliv_dest *dest, bool refill)
{
    deliv_idle_del(d, c);
    TAILQ_REMOVE(&dest->conns, c, dest_link);
    dest->n_conns--;
    d->n_active--;
    metrics_conn_out_open(-1);
    TAILQ_INSERT_TAIL(&d->dead, c, dest_link);
    if (!d->shutting) {
        event_active(d->reap, 0, 0);
        wait_serve(d);
        /* Work may remain that this connection would have taken. */
        if (refill && dest->d->n_ready > 0)
            deliv_dest_fill(d, dest);
    }
}

void
deliv_idle_add(struct delivery *d, struct deliv_conn *c)
{
    struct idle_bucket *b;
    if (c->in_idle || d->shutting)
        return;
    b = map_get_str(d->idle_by_addr, c->peer);
    if (b == NULL) {
        b = xcalloc(1, sizeof(*b));
        snprintf(b->key, sizeof(b->key), "%s", c->peer);
        TAILQ_INIT(&b->conns);
        map_put_str(d->idle_by_addr, b->key, b);
    }
    TAILQ_INSERT_TAIL(&b->conns, c, addr_link);
    TAILQ_INSERT_TAIL(&d->idle, c, idle_link);
    c->bucket = b;
    c->in_idle = true;
    /* A destination waits for a slot: it adopts c, or has c (or an older
     * idle connection) QUIT to free one. */
    if (!TAILQ_EMPTY(&d->waiting)) {
        struct deliv_dest *dest = TAILQ_FIRST(&d->waiting);
        TAILQ_REMOVE(&d->waiting, dest, wait_link);
        dest->waiting = false;
        deliv_dest_fill(d, dest);
    }
}

void
deliv_idle_del(struct delivery *d, struct deliv_conn *c)
{
    struct idle_bucket *b = c->bucket;
    if (!c->in_idle)
        return;
    TAILQ_REMOVE(&b->conns, c, addr_link);
    TAILQ_REMOVE(&d->idle, c, idle_link);
    if (TAILQ_EMPTY(&b->conns)) {
        map_del_str(d->idle_by_addr, b->key);
        free(b);
    }
    c->bucket = NULL;
    c->in_idle = false;
}

size_t
delivery_active(const struct delivery *d)
{
    return d->n_active;
}

void
delivery_free(struct delivery *d)
{
    struct deliv_dest *dest;
    struct deliv_conn *c;
    if (d == NULL)
        return;
    d->shutting = true;
    TAILQ_FOREACH(dest, &d->dests, link)
    {
        plan_build_cancel(dest->build);
        dest->build = NULL;
        evtimer_del(dest->rate_ev);
        while ((c = TAILQ_FIRST(&dest->conns)) != NULL)
            client_shutdown(c);
    }
    while ((dest = TAILQ_FIRST(&d->waiting)) != NULL) {
        TAILQ_REMOVE(&d->waiting, dest, wait_link);
        dest->waiting = false;
    }
    reap_cb(-1, 0, d);
    deliv_linger_purge(d);
    deliv_conv_stop(d);
    map_free(d->convs);
    TERN_ASSERT(TAILQ_EMPTY(&d->dests));
    TERN_ASSERT(TAILQ_EMPTY(&d->idle));
    map_free(d->idle_by_addr);
    notls_purge(d, true);
    map_free(d->notls);
    tls_ctx_unref(d->tls);
    event_free(d->reap);
    config_unref(d->cfg);
    free(d);
}

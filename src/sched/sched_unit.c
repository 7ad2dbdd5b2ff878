/*
 * Units of the active set: a message's queued recipients grouped per
 * destination (a unit is sized by its own recipients), waiting in a
 * min-heap by their monotonic due time, then in their destination's ready
 * list, then in flight at delivery (pull model); the results written back,
 * with the retry policy and the destination backoff. Also the one
 * destination table that delivery's per-destination state hangs off. A
 * unit handed to delivery is found again by its id (s->flight), never by a
 * pointer kept elsewhere.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "history/history.h"
#include "metrics/metrics.h"
#include "retry.h"
#include "route.h"
#include "sched_int.h"
#include "util/log.h"
#include "util/util.h"

#define DUE_BATCH 10000 /* units moved in one timer run: sessions stay responsive */

/* ---- the unit heap, ordered by next_ms ---- */

static void
heap_set(struct sched *s, size_t i, struct sched_unit *u)
{
    s->heap[i] = u;
    u->heap_idx = i;
}

static void
heap_up(struct sched *s, size_t i)
{
    struct sched_unit *u = s->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (u->next_ms >= s->heap[p]->next_ms)
            break;
        heap_set(s, i, s->heap[p]);
        i = p;
    }
    heap_set(s, i, u);
}

static void
heap_down(struct sched *s, size_t i)
{
    struct sched_unit *u = s->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->heap_len)
            break;
        if (c + 1 < s->heap_len && s->heap[c + 1]->next_ms < s->heap[c]->next_ms)
            c++;
        if (s->heap[c]->next_ms >= u->next_ms)
            break;
        heap_set(s, i, s->heap[c]);
        i = c;
    }
    heap_set(s, i, u);
}

void
sched_unit_wait(struct sched *s, struct sched_unit *u)
{
    if (s->heap_len == s->heap_cap) {
        s->heap_cap = s->heap_cap ? s->heap_cap * 2 : 256;
        s->heap = xrealloc(s->heap, s->heap_cap * sizeof(*s->heap));
    }
    u->state = U_WAIT;
    heap_set(s, s->heap_len++, u);
    heap_up(s, s->heap_len - 1);
}

static void
heap_remove(struct sched *s, struct sched_unit *u)
{
    size_t i = u->heap_idx;
    struct sched_unit *moved;
    TERN_ASSERT(i < s->heap_len && s->heap[i] == u);
    u->heap_idx = SIZE_MAX;
    if (--s->heap_len == i)
        return;
    moved = s->heap[s->heap_len];
    heap_set(s, i, moved);
    heap_down(s, i);
    if (moved->heap_idx == i)
        heap_up(s, i);
}

/* ---- ready lists ---- */

static void
ready_push(struct sched_dest *d, struct sched_unit *u)
{
    u->state = U_READY;
    u->rnext = NULL;
    u->rprev = d->ready_tail;
    if (d->ready_tail)
        d->ready_tail->rnext = u;
    else
        d->ready_head = u;
    d->ready_tail = u;
    d->d.n_ready++;
}

static void
ready_unlink(struct sched_dest *d, struct sched_unit *u)
{
    if (u->rprev)
        u->rprev->rnext = u->rnext;
    else
        d->ready_head = u->rnext;
    if (u->rnext)
        u->rnext->rprev = u->rprev;
    else
        d->ready_tail = u->rprev;
    u->rprev = u->rnext = NULL;
    d->d.n_ready--;
}

void
sched_unit_detach(struct sched *s, struct sched_unit *u)
{
    if (u->state == U_WAIT)
        heap_remove(s, u);
    else if (u->state == U_READY)
        ready_unlink(u->dest, u);
    u->state = U_HELD;
}

/* ---- the destination table ---- */

struct sched_dest *
sched_dest_find(struct sched *s, const char *key)
{
    return map_get_str(s->dests, key);
}

static struct sched_dest *
dest_get(struct sched *s, const struct delivery_dest *dd)
{
    struct sched_dest *d = map_get_str(s->dests, dd->key);
    if (d == NULL) {
        d = xcalloc(1, sizeof(*d));
        memcpy(d->d.key, dd->key, sizeof(d->d.key));
        memcpy(d->d.hops, dd->hops, sizeof(d->d.hops));
        d->d.n_hops = dd->n_hops;
        map_put_str(s->dests, d->d.key, d);
    } else if (d->d.n_hops != dd->n_hops ||
               memcmp(d->d.hops, dd->hops, dd->n_hops * sizeof(dd->hops[0])) != 0) {
        /* The route's hops changed with a reload. */
        memcpy(d->d.hops, dd->hops, sizeof(d->d.hops));
        d->d.n_hops = dd->n_hops;
        if (s->dl != NULL)
            delivery_dest_changed(s->dl, &d->d);
    }
    return d;
}

static void
dest_free(struct sched *s, struct sched_dest *d)
{
    map_del_str(s->dests, d->d.key);
    free(d->last_error);
    free(d);
}

static void
gc_arm(struct sched *s)
{
    int64_t first = INT64_MAX, delay;
    struct timeval tv;
    for (struct sched_dest *d = s->dest_gc; d != NULL; d = d->gc_next) {
        if (d->down_until_ms < first)
            first = d->down_until_ms;
    }
    if (first == INT64_MAX) {
        evtimer_del(s->gc_timer);
        return;
    }
    delay = first - tern_mono_ms();
    if (delay < 0)
        delay = 0;
    tv.tv_sec = delay / 1000;
    tv.tv_usec = (delay % 1000) * 1000;
    evtimer_add(s->gc_timer, &tv);
}

/* Free d if nothing uses it: no unit, no delivery state, no backoff
 * pending (a destination that is down stays known until it may be tried
 * again, so that new mail for it waits too). */
static void
dest_maybe_free(struct sched *s, struct sched_dest *d)
{
    if (d->n_units > 0 || d->d.dl != NULL || d->in_gc)
        return;
    if (d->down_until_ms > tern_mono_ms()) {
        d->in_gc = true;
        d->gc_next = s->dest_gc;
        s->dest_gc = d;
        gc_arm(s);
        return;
    }
    dest_free(s, d);
}

static void
gc_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sched *s = arg;
    struct sched_dest *list = s->dest_gc;
    s->dest_gc = NULL;
    while (list != NULL) {
        struct sched_dest *d = list;
        list = d->gc_next;
        d->gc_next = NULL;
        d->in_gc = false;
        dest_maybe_free(s, d);
    }
    gc_arm(s);
}

static void
dest_put(struct sched *s, struct sched_dest *d)
{
    TERN_ASSERT(d->n_units > 0);
    if (--d->n_units == 0)
        dest_maybe_free(s, d);
}

/* A job that reached no server at all, every recipient deferred: the
 * whole destination is down. */
static bool
dest_failure(const struct delivery_rcpt_result *res, size_t n, const char *relay)
{
    if (relay != NULL || n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (res[i].cls != DELIV_TEMP || res[i].from_remote)
            return false;
    }
    return true;
}

/* Back a failing destination off as a whole (its waiting units are not
 * tried before down_until), or clear the backoff after any contact. */
static void
dest_note(struct sched *s, struct sched_dest *d, bool failed)
{
    struct logline l;
    int64_t delay;
    if (!failed) {
        if (d->down_count > 0) {
            log_begin(&l, LOG_INFO, NULL, "sched", "destination_up");
            log_str(&l, "destination", d->d.key);
            log_end(&l);
        }
        d->down_count = 0;
        d->down_until_ms = 0;
        return;
    }
    d->down_count++;
    delay = retry_delay_ms(s->cfg, d->down_count, (double)(random() % 1000000) / 1000000.0);
    d->down_until_ms = tern_mono_ms() + delay;
    log_begin(&l, LOG_INFO, NULL, "sched", "destination_down");
    log_str(&l, "destination", d->d.key);
    log_int(&l, "failures", d->down_count);
    log_int(&l, "retry_in_s", (delay + 999) / 1000);
    log_str(&l, "reason", d->last_error);
    log_end(&l);
}

/* ---- timer ---- */

void
sched_arm(struct sched *s)
{
    struct timeval tv;
    int64_t delay;
    if (s->heap_len == 0) {
        evtimer_del(s->timer);
        return;
    }
    delay = s->heap[0]->next_ms - tern_mono_ms();
    if (delay < 0)
        delay = 0;
    tv.tv_sec = delay / 1000;
    tv.tv_usec = (delay % 1000) * 1000;
    evtimer_add(s->timer, &tv);
}

static void
sched_kick(struct sched *s, struct sched_dest *d)
{
    if (d->d.n_ready > 0 && s->dl != NULL)
        delivery_kick(s->dl, &d->d);
}

static void unit_wait_for_dest(struct sched *s, struct sched_unit *u);

static void
due_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sched *s = arg;
    int64_t now = tern_mono_ms();
    size_t moved = 0;
    while (s->heap_len > 0 && s->heap[0]->next_ms <= now && moved++ < DUE_BATCH) {
        struct sched_unit *u = s->heap[0];
        heap_remove(s, u);
        if (u->msg->env->held) {
            u->state = U_HELD;
            sched_msg_settle(s, u->msg);
        } else if (u->dest->down_until_ms > now) {
            unit_wait_for_dest(s, u); /* may free u and its message */
        } else {
            ready_push(u->dest, u);
            sched_kick(s, u->dest);
        }
    }
    sched_arm(s);
}

/* ---- units of a message ---- */

static void
unit_free(struct sched *s, struct sched_unit *u)
{
    dest_put(s, u->dest);
    free(u);
}

static struct sched_unit *
unit_new(struct sched *s, struct sched_msg *m, struct sched_dest *d, size_t n_rcpt)
{
    struct sched_unit *u;
    size_t sz;
    if (!size_mul(n_rcpt, sizeof(u->rcpt[0]), &sz) || !size_add(sz, sizeof(*u), &sz))
        tern_panic("unit too large");
    u = xcalloc(1, sz);
    u->id = ++s->next_unit_id;
    u->msg = m;
    u->dest = d;
    d->n_units++;
    u->heap_idx = SIZE_MAX;
    u->state = U_HELD;
    m->units = xrealloc(m->units, (m->n_units + 1) * sizeof(*m->units));
    m->units[m->n_units++] = u;
    return u;
}

/* Take empty unit u out of m and free it. */
static void
unit_remove(struct sched *s, struct sched_msg *m, struct sched_unit *u)
{
    for (size_t i = 0; i < m->n_units; i++) {
        if (m->units[i] == u) {
            m->units[i] = m->units[--m->n_units];
            break;
        }
    }
    unit_free(s, u);
}

void
sched_units_drop(struct sched *s, struct sched_msg *m)
{
    for (size_t i = 0; i < m->n_units; i++) {
        if (m->units[i]->state != U_FLIGHT)
            sched_unit_detach(s, m->units[i]);
        unit_free(s, m->units[i]);
    }
    m->n_units = 0;
}

struct rcpt_dest {
    struct sched_dest *d;
    size_t idx;
    int64_t due;
    bool archive; /* RCPT_K_ARCHIVE: a transaction of its own */
};

static int
rcpt_dest_cmp(const void *a, const void *b)
{
    const struct rcpt_dest *x = a, *y = b;
    if (x->d != y->d)
        return (uintptr_t)x->d < (uintptr_t)y->d ? -1 : 1;
    if (x->archive != y->archive)
        return x->archive ? 1 : -1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Schedule a new unit: due now goes through the heap too (the timer runs
 * at once), so that a destination backoff and expiry are applied in one
 * place. */
static void
unit_start(struct sched *s, struct sched_unit *u, bool held)
{
    if (!held)
        sched_unit_wait(s, u);
}

void
sched_units_build(struct sched *s, struct sched_msg *m, bool now)
{
    const struct spool_env *env = m->env;
    struct rcpt_dest *v = xcalloc(env->n_rcpts ? env->n_rcpts : 1, sizeof(*v));
    int64_t wall = tern_now_ms(), mono = tern_mono_ms();
    size_t n = 0, max = s->cfg->max_rcpts_per_txn ? s->cfg->max_rcpts_per_txn : 1;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        struct delivery_dest dd;
        if (env->rcpts[i].state != RCPT_QUEUED)
            continue;
        route_decide(s->cfg, env->sender, env->rcpts[i].addr, &dd);
        v[n].d = dest_get(s, &dd);
        v[n].idx = i;
        v[n].archive = (env->rcpts[i].kind & RCPT_K_ARCHIVE) != 0;
        v[n].due = now ? mono : sched_mono_from_wall(env->rcpts[i].next_try_ms, wall, mono);
        n++;
    }
    qsort(v, n, sizeof(*v), rcpt_dest_cmp);
    /* One unit (one transaction) per destination, of at most
     * max_rcpts_per_txn recipients, sized by its own recipients. The
     * archive copy goes alone: its content differs (the envelope fields
     * above it), and it must not be seen by the other recipients' server. */
    for (size_t i = 0; i < n;) {
        size_t j = i, k;
        struct sched_unit *u;
        while (j < n && v[j].d == v[i].d && j - i < max && v[j].archive == v[i].archive &&
               (!v[i].archive || j == i))
            j++;
        u = unit_new(s, m, v[i].d, j - i);
        u->next_ms = v[i].due;
        for (k = i; k < j; k++) {
            u->rcpt[u->n_rcpt++] = v[k].idx;
            if (v[k].due < u->next_ms)
                u->next_ms = v[k].due;
        }
        unit_start(s, u, env->held);
        i = j;
    }
    free(v);
    sched_arm(s);
}

bool
sched_msg_busy(const struct sched_msg *m)
{
    for (size_t i = 0; i < m->n_units; i++) {
        if (m->units[i]->state == U_READY || m->units[i]->state == U_FLIGHT)
            return true;
    }
    return false;
}

int64_t
sched_msg_next_ms(const struct sched_msg *m)
{
    int64_t next = 0;
    for (size_t i = 0; i < m->n_units; i++) {
        const struct sched_unit *u = m->units[i];
        if (u->state == U_WAIT && (next == 0 || u->next_ms < next))
            next = u->next_ms;
    }
    return next;
}

struct sched_dest *
sched_msg_dest(const struct sched_msg *m, bool *multi)
{
    struct sched_dest *d = NULL;
    *multi = false;
    for (size_t i = 0; i < m->n_units; i++) {
        if (d != NULL && m->units[i]->dest != d) {
            *multi = true;
            return NULL;
        }
        d = m->units[i]->dest;
    }
    return d;
}

/* Drop every unit of m (none in flight) and group its pending recipients
 * again under the current routing, each due at its own retry time. */
static void
msg_rebuild(struct sched *s, struct sched_msg *m)
{
    TERN_ASSERT(m->n_flight == 0);
    sched_units_drop(s, m);
    m->reroute = false;
    sched_units_build(s, m, false);
}

/* ---- results ---- */

static void
format_reply(const struct tern_status *st, char *out, size_t cap)
{
    if (st->esc[0])
        snprintf(out, cap, "%d %s %s", st->code, st->esc, st->text);
    else
        snprintf(out, cap, "%d %s", st->code, st->text);
}

/* delivery's relay text, "host[addr]:port tls=SUMMARY tls_policy=P
 * tls_verified=V" (the last two since outbound TLS policies), in parts;
 * absent parts are "". */
struct relay_parts {
    char host[256], tls[128], policy[32], verified[32];
};

static void
relay_word(const char *relay, const char *key, char *out, size_t cap)
{
    const char *p = strstr(relay, key);
    size_t n;
    out[0] = '\0';
    if (p == NULL)
        return;
    p += strlen(key);
    n = strcspn(p, " ");
    snprintf(out, cap, "%.*s", (int)n, p);
}

static bool
relay_split(const char *relay, struct relay_parts *rp)
{
    const char *t = relay != NULL ? strstr(relay, " tls=") : NULL;
    if (t == NULL)
        return false;
    snprintf(rp->host, sizeof(rp->host), "%.*s", (int)(t - relay), relay);
    relay_word(t, " tls=", rp->tls, sizeof(rp->tls));
    relay_word(t, " tls_policy=", rp->policy, sizeof(rp->policy));
    relay_word(t, " tls_verified=", rp->verified, sizeof(rp->verified));
    return true;
}

/* The attempt in the history journal (ternctl queue show, trace). */
static void
journal_result(const char *event, const struct sched_msg *m, const struct spool_rcpt *r,
    const char *relay, const char *tls_policy, const char *reply, int64_t next_ms)
{
    struct hline h;
    struct relay_parts rp;
    history_begin(&h, m->env->qid, event);
    history_str(&h, "from", m->env->sender);
    history_str(&h, "recipient", r->addr);
    if (relay_split(relay, &rp)) {
        history_str(&h, "relay", rp.host);
        history_str(&h, "tls", rp.tls);
        if (rp.policy[0] != '\0') {
            history_str(&h, "tls_policy", rp.policy);
            history_str(&h, "tls_verified", rp.verified);
        }
    } else {
        history_str(&h, "relay", relay);
        if (tls_policy != NULL) {
            history_str(&h, "tls_policy", tls_policy);
            history_str(&h, "tls_verified", "none");
        }
    }
    history_str(&h, "reply", reply);
    if (next_ms > 0 && r->next_try_ms > 0)
        history_int(&h, "next", r->next_try_ms / 1000); /* as queue list shows it */
    history_end(&h);
}

/* One line per recipient per attempt (Postfix's "status=" line): relay,
 * reply, delay since arrival, delays=a/b/c/d, dsn=, status=. st: the
 * status the recipient ends with (an expiry's own, else the reply). */
static void
log_result(const char *event, struct sched_msg *m, const struct spool_rcpt *r,
    const struct delivery_rcpt_result *res, const struct tern_status *st, const char *relay,
    const char *reply, int64_t next_ms)
{
    static const struct {
        const char *name;
        enum spool_attempt_ev ev;
    } evs[] = { { "deferred", SPOOL_ATT_DEFERRED }, { "delivered", SPOOL_ATT_DELIVERED },
        { "bounced", SPOOL_ATT_BOUNCED }, { "expired", SPOOL_ATT_EXPIRED } };
    struct logline l;
    struct relay_parts rp;
    char delay[32], delays[128], dsn[16];
    int64_t d = tern_now_ms() - m->env->arrival_ms;
    snprintf(delay, sizeof(delay), "%lld.%03llds", (long long)(d / 1000),
        (long long)(d % 1000 < 0 ? 0 : d % 1000));
    delivery_format_delays(d, res, delays, sizeof(delays));
    delivery_format_dsn(st, dsn, sizeof(dsn));
    log_begin(&l, LOG_INFO, m->env->qid, "delivery", event);
    log_str(&l, "to", r->addr);
    if (relay_split(relay, &rp)) {
        log_str(&l, "relay", rp.host);
        log_str(&l, "tls", rp.tls);
        if (rp.policy[0] != '\0') {
            log_str(&l, "tls_policy", rp.policy);
            log_str(&l, "tls_verified", rp.verified);
        }
    } else {
        log_str(&l, "relay", relay ? relay : "none");
        if (res->tls_policy != NULL) {
            /* no server took it: the policy its hosts were under */
            log_str(&l, "tls_policy", res->tls_policy);
            log_str(&l, "tls_verified", "none");
        }
    }
    log_str(&l, strcmp(event, "delivered") == 0 ? "reply" : "reason", reply);
    log_str(&l, "delay", delay);
    log_str(&l, "delays", delays);
    log_str(&l, "dsn", dsn);
    log_str(&l, "status", strcmp(event, "delivered") == 0 ? "sent" : event);
    log_int(&l, "attempts", r->attempts);
    if (next_ms > 0) {
        char next[32];
        snprintf(next, sizeof(next), "%llds", (long long)((next_ms + 999) / 1000));
        log_str(&l, "next", next);
    }
    log_end(&l);
    journal_result(event, m, r, relay, relay ? NULL : res->tls_policy, reply, next_ms);
    /* With the message too, in the state written after this attempt. */
    for (size_t i = 0; i < TERN_ARRAY_LEN(evs); i++) {
        if (strcmp(evs[i].name, event) == 0)
            spool_env_add_attempt(m->env, (size_t)(r - m->env->rcpts), evs[i].ev, relay, reply);
    }
}

/* A final result: does it call for a DSN? dr is filled either way. */
static bool
final_wants_dsn(struct sched_msg *m, size_t idx, const struct delivery_rcpt_result *r,
    enum dsn_action act, struct dsn_rcpt_result *dr)
{
    struct spool_rcpt *rc = &m->env->rcpts[idx];
    char reply[STATUS_TEXT_MAX + 32];
    bool want;
    dr->action = act;
    if (act == DSN_ACTION_RELAYED) {
        /* RFC 3461 §6.2.3: a next hop without DSN cannot honour
         * NOTIFY=SUCCESS, so we report "relayed" ourselves. */
        dr->status.code = r->st.code;
        if (dr->status.esc[0] == '\0')
            snprintf(dr->status.esc, sizeof(dr->status.esc), "2.0.0");
        want = !r->peer_dsn && dsn_wanted(m->env, idx, DSN_ACTION_RELAYED);
    } else {
        want = dsn_wanted(m->env, idx, DSN_ACTION_FAILED);
    }
    if (want) {
        rc->state = act == DSN_ACTION_RELAYED ? RCPT_DELIVERED_DSN : RCPT_FAILED_DSN;
        format_reply(&dr->status, reply, sizeof(reply));
        free(rc->last_error);
        rc->last_error = xstrdup(reply);
    }
    return want;
}

/* A deferred recipient queued for delay_warning_time gets one delay
 * warning (RFC 3464 "Action: delayed") when its NOTIFY allows it: flagged
 * as owed here, so the state written with this deferral carries it (a
 * restart still makes it), and never again once flagged. dr holds the
 * deferral's reply. */
static bool
delay_warning(struct sched *s, struct sched_msg *m, size_t idx, struct dsn_rcpt_result *dr)
{
    struct spool_rcpt *rc = &m->env->rcpts[idx];
    if ((rc->flags & (RCPT_F_DELAY_DUE | RCPT_F_DELAY_SENT)) ||
        !retry_warn_due(s->cfg, m->env->arrival_ms, tern_now_ms()) ||
        !dsn_wanted(m->env, idx, DSN_ACTION_DELAYED))
        return false;
    rc->flags |= RCPT_F_DELAY_DUE;
    dr->action = DSN_ACTION_DELAYED;
    return true;
}

/* Apply one recipient's result; returns true when it wants a DSN,
 * described in *dr: when it became final, its state is then RCPT_FAILED_DSN
 * or RCPT_DELIVERED_DSN with the status to report as last_error, so that
 * the DSN can still be made after a restart (sched_dsn.c); when deferred,
 * a delay warning is owed (RCPT_F_DELAY_DUE). *next_ms gets the smallest
 * retry delay of the deferred ones. */
static bool
apply_result(struct sched *s, struct sched_msg *m, size_t idx, const struct delivery_rcpt_result *r,
    const char *relay, const char *mta, int64_t *next_ms, struct dsn_rcpt_result *dr)
{
    struct spool_rcpt *rc = &m->env->rcpts[idx];
    char reply[STATUS_TEXT_MAX + 32];
    enum dsn_action act = DSN_ACTION_FAILED;
    format_reply(&r->st, reply, sizeof(reply));
    rc->attempts++;
    free(rc->last_error);
    rc->last_error = xstrdup(reply);
    memset(dr, 0, sizeof(*dr));
    dr->idx = idx;
    dr->remote_mta = mta;
    dr->from_remote = r->from_remote;
    dr->status = r->st;
    if (r->cls == DELIV_OK) {
        rc->state = RCPT_DELIVERED;
        s->st.delivered++;
        log_result("delivered", m, rc, r, &r->st, relay, reply, 0);
        act = DSN_ACTION_RELAYED;
    } else if (r->cls == DELIV_TEMP && !retry_expired(s->cfg, m->env->arrival_ms, tern_now_ms())) {
        double rnd = (double)(random() % 1000000) / 1000000.0;
        int64_t delay = retry_delay_ms(s->cfg, rc->attempts, rnd);
        if (*next_ms == 0 || delay < *next_ms)
            *next_ms = delay;
        rc->next_try_ms = tern_now_ms() + delay; /* stored: wall clock */
        s->st.deferred++;
        log_result("deferred", m, rc, r, &r->st, relay, reply, delay);
        return delay_warning(s, m, idx, dr);
    } else if (r->cls == DELIV_TEMP) {
        rc->state = RCPT_FAILED;
        s->st.expired++;
        STATUS_SET(&dr->status, r->st.code >= 400 && r->st.code < 500 ? r->st.code : 451, "4.4.7",
            "delivery time expired; last error: %s", reply);
        dr->from_remote = false;
        log_result("expired", m, rc, r, &dr->status, relay, reply, 0);
    } else {
        rc->state = RCPT_FAILED;
        s->st.bounced++;
        log_result("bounced", m, rc, r, &r->st, relay, reply, 0);
    }
    return final_wants_dsn(m, idx, r, act, dr);
}

/* Metrics of one recipient's applied result (its state says which). */
static enum metrics_result
count_rcpt(const struct sched_unit *u, const struct spool_rcpt *rc,
    const struct delivery_rcpt_result *r, const char *relay)
{
    enum metrics_result res = METRICS_BOUNCED;
    /* relay is "host[addr]:port tls=none" or "... tls=VERSION/CIPHER/BITS". */
    const char *t = relay ? strstr(relay, " tls=") : NULL;
    enum metrics_tls tls =
        t && strncmp(t, " tls=none", 9) != 0 ? METRICS_TLS_YES : METRICS_TLS_NONE;
    int64_t latency = 0;
    if (rc->state == RCPT_DELIVERED || rc->state == RCPT_DELIVERED_DSN) {
        res = METRICS_DELIVERED;
        latency = tern_now_ms() - u->msg->env->arrival_ms;
    } else if (rc->state == RCPT_QUEUED) {
        res = METRICS_DEFERRED;
    } else if (r->cls == DELIV_TEMP) {
        res = METRICS_EXPIRED;
    }
    metrics_count_rcpt(u->dest->d.key, res, tls, latency);
    return res;
}

/* Message metrics once a unit's results are applied: a deferral, or the
 * message done (no recipient left queued) as delivered and/or bounced. */
static void
count_msg(const struct sched_msg *m, bool deferred, size_t pending_before)
{
    bool delivered = false, failed = false;
    if (deferred)
        metrics_count_msg(METRICS_DEFERRED);
    if (m->deleted || pending_before == 0 || sched_msg_pending(m) > 0)
        return;
    for (size_t i = 0; i < m->env->n_rcpts; i++) {
        enum rcpt_state st = m->env->rcpts[i].state;
        delivered |= st == RCPT_DELIVERED || st == RCPT_DELIVERED_DSN;
        failed |= st == RCPT_FAILED || st == RCPT_FAILED_DSN;
    }
    if (delivered)
        metrics_count_msg(METRICS_DELIVERED);
    if (failed)
        metrics_count_msg(METRICS_BOUNCED);
}

/* Where u goes after its results: waiting for its retry (never before
 * its destination may be tried again), or nowhere when held or empty. */
static void
unit_requeue(struct sched *s, struct sched_msg *m, struct sched_unit *u, int64_t next_ms)
{
    if (u->n_rcpt == 0) {
        unit_remove(s, m, u);
        return;
    }
    u->next_ms = tern_mono_ms() + next_ms;
    if (u->dest->down_until_ms > u->next_ms)
        u->next_ms = u->dest->down_until_ms;
    if (m->env->held) {
        u->state = U_HELD;
        return;
    }
    sched_unit_wait(s, u);
    sched_arm(s);
}

/* Apply the results of one unit's attempt (from delivery, or made up when
 * a unit expires while its destination is down). */
static void
unit_apply(struct sched *s, struct sched_unit *u, const struct delivery_rcpt_result *res, size_t n,
    const char *relay)
{
    struct sched_msg *m = u->msg;
    size_t keep = 0, pending_before = sched_msg_pending(m);
    int64_t next_ms = 0;
    bool deferred = false;
    char mta[CONFIG_HOST_MAX];
    TERN_ASSERT(n == u->n_rcpt);
    /* The DSN's Remote-MTA is the host name alone: relay is
     * "host[addr]:port tls=..." */
    if (relay != NULL)
        snprintf(mta, sizeof(mta), "%.*s", (int)strcspn(relay, "[ "), relay);
    for (size_t i = 0; i < n; i++) {
        size_t idx = u->rcpt[i];
        struct dsn_rcpt_result dr;
        if (apply_result(s, m, idx, &res[i], relay, relay ? mta : NULL, &next_ms, &dr))
            sched_note_add(m, &dr);
        deferred |= count_rcpt(u, &m->env->rcpts[idx], &res[i], relay) == METRICS_DEFERRED;
        if (m->env->rcpts[idx].state == RCPT_QUEUED)
            u->rcpt[keep++] = idx;
        /* The destination's last error (for the queue summary) is the
         * latest temporary failure, cleared by a success. */
        if (res[i].cls != DELIV_PERM) {
            free(u->dest->last_error);
            u->dest->last_error =
                res[i].cls == DELIV_TEMP ? xstrdup(m->env->rcpts[idx].last_error) : NULL;
        }
    }
    u->n_rcpt = keep;
    count_msg(m, deferred, pending_before);
    sched_notes_drop_stale(m);
    /* An operator's delete is silent, like postsuper -d: no DSN. */
    if (m->deleted) {
        if (m->n_flight == 0)
            sched_msg_finish(s, m, "deleted");
        return;
    }
    sched_dsn_make(s, m);
    if (sched_msg_pending(m) == 0 && m->n_notes == 0 && m->n_flight == 0) {
        sched_msg_finish(s, m, "done");
        return;
    }
    /* The results of this attempt, for a restart and for when the message
     * is read back (not synced on their own: see spool.h). */
    spool_update_state(s->sp, m->env);
    if (m->reroute && m->n_flight == 0) {
        msg_rebuild(s, m); /* each recipient due at its own retry time */
    } else {
        unit_requeue(s, m, u, next_ms);
    }
    sched_msg_settle(s, m);
}

static void
dl_done(
    void *arg, uint64_t job_id, const struct delivery_rcpt_result *res, size_t n, const char *relay)
{
    struct sched *s = arg;
    struct sched_unit *u = map_del_u64(s->flight, job_id);
    if (u == NULL)
        tern_panic("delivery answered unknown job %llu", (unsigned long long)job_id);
    u->msg->n_flight--;
    u->state = U_HELD;
    if (n > 0 && res[0].unread && !u->msg->deleted) {
        /* Nothing was sent: no attempt, no result; due again once read
         * again (sched_msg_settle). */
        u->msg->reread = true;
        u->next_ms = tern_mono_ms();
        sched_unit_wait(s, u);
        sched_msg_settle(s, u->msg);
        return;
    }
    dest_note(s, u->dest, dest_failure(res, n, relay));
    unit_apply(s, u, res, n, relay); /* may free u */
}

/* A unit fell due while its destination is backed off: wait for the
 * destination, or give up now when the message has expired meanwhile. */
static void
unit_wait_for_dest(struct sched *s, struct sched_unit *u)
{
    struct delivery_rcpt_result *res;
    if (!retry_expired(s->cfg, u->msg->env->arrival_ms, tern_now_ms())) {
        u->next_ms = u->dest->down_until_ms;
        sched_unit_wait(s, u);
        sched_msg_settle(s, u->msg);
        return;
    }
    res = xcalloc(u->n_rcpt ? u->n_rcpt : 1, sizeof(*res));
    for (size_t i = 0; i < u->n_rcpt; i++) {
        res[i].cls = DELIV_TEMP;
        STATUS_SET(&res[i].st, 451, "4.4.1", "destination %s unreachable: %s", u->dest->d.key,
            u->dest->last_error ? u->dest->last_error : "no answer");
    }
    u->state = U_HELD;
    unit_apply(s, u, res, u->n_rcpt, NULL);
    free(res);
}

static bool
dl_next_job(void *arg, struct delivery_dest *dd, struct delivery_job *job)
{
    struct sched *s = arg;
    struct sched_dest *d = (struct sched_dest *)dd; /* the first member */
    struct sched_unit *u;
    while ((u = d->ready_head) != NULL) {
        ready_unlink(d, u);
        if (u->msg->env->held || u->n_rcpt == 0) {
            u->state = U_HELD;
            sched_msg_settle(s, u->msg);
            continue;
        }
        u->state = U_FLIGHT;
        u->msg->n_flight++;
        map_put_u64(s->flight, u->id, u);
        job->id = u->id;
        job->env = u->msg->env;
        job->rcpt_idx = u->rcpt;
        job->n_rcpts = u->n_rcpt;
        return true;
    }
    return false;
}

static void
dl_released(void *arg, struct delivery_dest *dd)
{
    dest_maybe_free(arg, (struct sched_dest *)dd);
}

struct delivery_callbacks
sched_delivery_callbacks(struct sched *s)
{
    struct delivery_callbacks cb = { dl_next_job, dl_done, dl_released, s };
    return cb;
}

/* ---- life cycle, flush, reroute ---- */

void
sched_units_init(struct sched *s)
{
    s->dests = map_new();
    s->flight = map_new();
    s->timer = evtimer_new(s->base, due_cb, s);
    s->gc_timer = evtimer_new(s->base, gc_cb, s);
    if (s->timer == NULL || s->gc_timer == NULL)
        tern_panic("cannot create the scheduler's timers");
}

static void
free_dest_cb(const void *k, size_t kl, void *v, void *arg)
{
    struct sched_dest *d = v;
    free(d->last_error);
    free(d);
}

void
sched_units_fini(struct sched *s)
{
    event_free(s->timer);
    event_free(s->gc_timer);
    map_each(s->dests, free_dest_cb, NULL);
    map_free(s->dests);
    map_free(s->flight);
    free(s->heap);
}

static void
flush_dest_cb(const void *k, size_t kl, void *v, void *arg)
{
    struct sched_dest *d = v;
    d->down_until_ms = 0; /* "retry everything now" includes backed-off destinations */
}

void
sched_units_flush(struct sched *s)
{
    int64_t now = tern_mono_ms();
    map_each(s->dests, flush_dest_cb, NULL);
    for (size_t i = 0; i < s->heap_len; i++) {
        if (s->heap[i]->next_ms > now)
            s->heap[i]->next_ms = now;
    }
    /* Every key is now <= now... and ordered as before where it was
     * smaller: build the heap again (Floyd). */
    for (size_t i = s->heap_len / 2; i-- > 0;)
        heap_down(s, i);
    gc_cb(-1, 0, s);
    sched_arm(s);
}

void
sched_units_flush_msg(struct sched *s, struct sched_msg *m)
{
    int64_t now = tern_mono_ms();
    for (size_t i = 0; i < m->n_units; i++) {
        struct sched_unit *u = m->units[i];
        /* The operator asked for this message now: a backed-off
         * destination would otherwise park it again (unit_wait_for_dest). */
        u->dest->down_until_ms = 0;
        if (u->state != U_WAIT || u->next_ms <= now)
            continue;
        heap_remove(s, u);
        u->next_ms = now;
        sched_unit_wait(s, u);
    }
    sched_arm(s);
}

void
sched_units_reroute(struct sched *s)
{
    for (uint32_t h = 0; h < s->idx.n; h++) {
        struct sched_ent *e = sidx_ent(&s->idx, h);
        struct sched_msg *m = (e->flags & ENT_USED) ? e->m : NULL;
        if (m == NULL || m->deleted)
            continue;
        if (m->n_flight > 0) {
            m->reroute = true; /* rebuilt when its last result comes back (dl_done) */
            continue;
        }
        msg_rebuild(s, m);
        sched_msg_settle(s, m);
    }
}

/*
 * Scheduler mechanics: messages -> per-destination units -> a min-heap by
 * next attempt -> a destination's ready list -> delivery (pull model) ->
 * per-recipient results written to the spool, retries, DSNs and removal.
 * Everything runs on the event loop thread. A unit handed to delivery is
 * found again by its id (s->flight), never by a pointer kept elsewhere.
 */
#include "sched.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "retry.h"
#include "route.h"
#include "sched_int.h"
#include "smtp/parse.h"
#include "util/log.h"
#include "util/util.h"

/* ---- heap of waiting units, ordered by next_try_ms ---- */

static bool
heap_less(const struct sched_unit *a, const struct sched_unit *b)
{
    return a->next_try_ms < b->next_try_ms;
}

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
        if (!heap_less(u, s->heap[p]))
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
        if (c + 1 < s->heap_len && heap_less(s->heap[c + 1], s->heap[c]))
            c++;
        if (!heap_less(s->heap[c], u))
            break;
        heap_set(s, i, s->heap[c]);
        i = c;
    }
    heap_set(s, i, u);
}

static void
heap_push(struct sched *s, struct sched_unit *u)
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
    TERN_ASSERT(i < s->heap_len && s->heap[i] == u);
    u->heap_idx = SIZE_MAX;
    if (--s->heap_len == i)
        return;
    struct sched_unit *moved = s->heap[s->heap_len];
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
    d->n_ready++;
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
    d->n_ready--;
}

/* Take a unit out of whatever waiting structure holds it (not in flight). */
static void
unit_detach(struct sched *s, struct sched_unit *u)
{
    if (u->state == U_WAIT)
        heap_remove(s, u);
    else if (u->state == U_READY)
        ready_unlink(u->dest, u);
    u->state = U_HELD;
}

static struct sched_dest *
dest_get(struct sched *s, const struct delivery_dest *dd)
{
    struct sched_dest *d = map_get_str(s->dests, dd->key);
    if (d == NULL) {
        d = xcalloc(1, sizeof(*d));
        d->d = *dd;
        map_put_str(s->dests, d->d.key, d);
    } else if (d->d.n_hops != dd->n_hops ||
               memcmp(d->d.hops, dd->hops, dd->n_hops * sizeof(dd->hops[0])) != 0) {
        d->d = *dd; /* the route's hops changed with a reload */
    }
    return d;
}

/* ---- timer ---- */

static void
sched_arm(struct sched *s)
{
    struct timeval tv;
    int64_t delay;
    if (s->heap_len == 0) {
        evtimer_del(s->timer);
        return;
    }
    delay = s->heap[0]->next_try_ms - tern_now_ms();
    if (delay < 0)
        delay = 0;
    tv.tv_sec = delay / 1000;
    tv.tv_usec = (delay % 1000) * 1000;
    evtimer_add(s->timer, &tv);
}

static void
sched_kick(struct sched *s, struct sched_dest *d)
{
    if (d->n_ready > 0)
        delivery_kick(s->dl, &d->d, d->n_ready);
}

static void unit_wait_for_dest(struct sched *s, struct sched_unit *u);

static void
sched_due_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sched *s = arg;
    int64_t now = tern_now_ms();
    size_t moved = 0;
    while (s->heap_len > 0 && s->heap[0]->next_try_ms <= now) {
        struct sched_unit *u = s->heap[0];
        heap_remove(s, u);
        if (u->msg->env->held) {
            u->state = U_HELD;
            continue;
        }
        if (u->dest->down_until_ms > now) {
            unit_wait_for_dest(s, u);
            continue;
        }
        ready_push(u->dest, u);
        sched_kick(s, u->dest);
        /* Bound the work of one callback so sessions stay responsive. */
        if (++moved >= 10000)
            break;
    }
    sched_arm(s);
}

/* ---- messages ---- */

static void
unit_free(struct sched_unit *u)
{
    if (u == NULL)
        return;
    free(u->rcpt);
    free(u);
}

static void
msg_free(struct sched *s, struct sched_msg *m)
{
    for (size_t i = 0; i < m->n_units; i++) {
        if (m->units[i]->state != U_FLIGHT)
            unit_detach(s, m->units[i]);
        unit_free(m->units[i]);
    }
    free(m->units);
    sched_notes_free(s, m);
    spool_env_free(m->env);
    free(m);
}

size_t
sched_msg_pending(const struct sched_msg *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->env->n_rcpts; i++)
        n += m->env->rcpts[i].state == RCPT_QUEUED;
    return n;
}

/* Group the message's pending recipients into units, one per destination,
 * all due at next_try_ms. */
static void
msg_build_units(struct sched *s, struct sched_msg *m, int64_t next_try_ms)
{
    const struct spool_env *env = m->env;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        struct delivery_dest dd;
        struct sched_dest *d;
        struct sched_unit *u = NULL;
        if (env->rcpts[i].state != RCPT_QUEUED)
            continue;
        route_decide(s->cfg, env->sender, env->rcpts[i].addr, &dd);
        d = dest_get(s, &dd);
        /* One unit (one transaction) per destination, of at most
         * max_rcpts_per_txn recipients. */
        for (size_t k = 0; k < m->n_units; k++) {
            if (m->units[k]->dest == d && m->units[k]->n_rcpt < s->cfg->max_rcpts_per_txn)
                u = m->units[k];
        }
        if (u == NULL) {
            u = xcalloc(1, sizeof(*u));
            u->id = ++s->next_unit_id;
            u->msg = m;
            u->dest = d;
            u->heap_idx = SIZE_MAX;
            u->next_try_ms = next_try_ms;
            u->rcpt = xcalloc(env->n_rcpts, sizeof(*u->rcpt));
            u->state = U_HELD;
            m->units = xrealloc(m->units, (m->n_units + 1) * sizeof(*m->units));
            m->units[m->n_units++] = u;
        }
        u->rcpt[u->n_rcpt++] = i;
    }
    for (size_t k = 0; k < m->n_units; k++) {
        if (!env->held)
            heap_push(s, m->units[k]);
    }
}

/* Drop every unit of m (none in flight) and group its pending recipients
 * again under the current routing, due at next_try_ms. */
static void
msg_rebuild(struct sched *s, struct sched_msg *m, int64_t next_try_ms)
{
    TERN_ASSERT(m->n_flight == 0);
    for (size_t i = 0; i < m->n_units; i++) {
        unit_detach(s, m->units[i]);
        unit_free(m->units[i]);
    }
    m->n_units = 0;
    m->reroute = false;
    msg_build_units(s, m, next_try_ms);
}

static void
sched_take_env(struct sched *s, struct spool_env *env, int64_t next_try_ms)
{
    struct sched_msg *m;
    if (map_get_str(s->msgs, env->qid) != NULL) {
        spool_env_free(env);
        return;
    }
    m = xcalloc(1, sizeof(*m));
    m->env = env;
    map_put_str(s->msgs, env->qid, m);
    s->st.queue_messages++;
    s->st.queue_rcpts += sched_msg_pending(m);
    /* DSNs not yet made when the daemon stopped (sched_dsn.c). */
    sched_notes_load(m);
    if (sched_msg_pending(m) == 0 && m->n_notes == 0) {
        /* Every recipient already final (a crash after the last result but
         * before the removal): finish the removal now. */
        map_del_str(s->msgs, env->qid);
        s->st.queue_messages--;
        spool_remove(s->sp, env->qid);
        msg_free(s, m);
        return;
    }
    msg_build_units(s, m, next_try_ms);
    sched_arm(s);
    sched_dsn_make(s, m);
}

void
sched_add(struct sched *s, const struct spool_env *env)
{
    sched_take_env(s, spool_env_dup(env), tern_now_ms());
}

static void
found_cb(const struct spool_entry *v, size_t n, void *arg)
{
    struct sched *s = arg;
    int64_t now = tern_now_ms();
    for (size_t i = 0; i < n; i++) {
        struct spool_env *env = spool_load_checked(s->sp, v[i].qid);
        if (env == NULL)
            continue; /* damaged: the spool said so */
        /* Retry times survive a restart; what is due is tried at once. */
        sched_take_env(s, env, v[i].next_try_ms > now ? v[i].next_try_ms : now);
    }
}

static void
recovered_cb(void *arg, long count)
{
    struct sched *s = arg;
    struct logline l;
    s->loaded = true;
    s->st.loaded = (size_t)count;
    log_begin(&l, LOG_INFO, NULL, "queue", "loaded");
    log_int(&l, "messages", count);
    log_end(&l);
}

void
sched_load_spool(struct sched *s)
{
    spool_recover(s->sp, found_cb, recovered_cb, s);
}

bool
sched_loaded(const struct sched *s)
{
    return s->loaded;
}

void
sched_msg_finish(struct sched *s, struct sched_msg *m, const char *why)
{
    struct logline l;
    spool_remove(s->sp, m->env->qid);
    log_begin(&l, LOG_INFO, m->env->qid, "queue", "removed");
    log_str(&l, "reason", why);
    log_end(&l);
    s->st.queue_rcpts -= sched_msg_pending(m);
    s->st.queue_messages--;
    map_del_str(s->msgs, m->env->qid);
    msg_free(s, m);
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

static void
log_result(const char *event, const struct sched_msg *m, const struct spool_rcpt *r,
    const char *relay, const char *reply, int64_t next_ms)
{
    struct logline l;
    char delay[32];
    int64_t d = tern_now_ms() - m->env->arrival_ms;
    snprintf(delay, sizeof(delay), "%lld.%03llds", (long long)(d / 1000),
        (long long)(d % 1000 < 0 ? 0 : d % 1000));
    log_begin(&l, LOG_INFO, m->env->qid, "delivery", event);
    log_str(&l, "to", r->addr);
    if (relay != NULL && strstr(relay, " tls=") != NULL) {
        /* delivery reports "host[addr]:port tls=VERSION/CIPHER/VERIFIED" */
        const char *t = strstr(relay, " tls=");
        log_strn(&l, "relay", relay, (size_t)(t - relay));
        log_str(&l, "tls", t + 5);
    } else {
        log_str(&l, "relay", relay ? relay : "none");
    }
    log_str(&l, strcmp(event, "delivered") == 0 ? "reply" : "reason", reply);
    log_str(&l, "delay", delay);
    log_int(&l, "attempts", r->attempts);
    if (next_ms > 0) {
        char next[32];
        snprintf(next, sizeof(next), "%llds", (long long)((next_ms + 999) / 1000));
        log_str(&l, "next", next);
    }
    log_end(&l);
}

/* Apply one recipient's result; returns true when it became final and wants
 * a DSN, described in *dr: its state is then RCPT_FAILED_DSN or
 * RCPT_DELIVERED_DSN with the status to report as last_error, so that the
 * DSN can still be made after a restart (sched_dsn.c). */
static bool
apply_result(struct sched *s, struct sched_msg *m, size_t idx, const struct delivery_rcpt_result *r,
    const char *relay, const char *mta, int64_t *next_ms, struct dsn_rcpt_result *dr)
{
    struct spool_rcpt *rc = &m->env->rcpts[idx];
    char reply[STATUS_TEXT_MAX + 32];
    enum dsn_action act = DSN_ACTION_FAILED;
    bool want;
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
        log_result("delivered", m, rc, relay, reply, 0);
        act = DSN_ACTION_RELAYED;
    } else if (r->cls == DELIV_TEMP && !retry_expired(s->cfg, m->env->arrival_ms, tern_now_ms())) {
        double rnd = (double)(random() % 1000000) / 1000000.0;
        int64_t delay = retry_delay_ms(s->cfg, rc->attempts, rnd);
        if (*next_ms == 0 || delay < *next_ms)
            *next_ms = delay;
        rc->next_try_ms = tern_now_ms() + delay;
        s->st.deferred++;
        log_result("deferred", m, rc, relay, reply, delay);
        return false;
    } else if (r->cls == DELIV_TEMP) {
        rc->state = RCPT_FAILED;
        s->st.expired++;
        STATUS_SET(&dr->status, r->st.code >= 400 && r->st.code < 500 ? r->st.code : 451, "4.4.7",
            "delivery time expired; last error: %s", reply);
        dr->from_remote = false;
        log_result("expired", m, rc, relay, reply, 0);
    } else {
        rc->state = RCPT_FAILED;
        s->st.bounced++;
        log_result("bounced", m, rc, relay, reply, 0);
    }
    s->st.queue_rcpts--;
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
    d->down_until_ms = tern_now_ms() + retry_delay_ms(s->cfg, d->down_count,
                                           (double)(random() % 1000000) / 1000000.0);
    log_begin(&l, LOG_INFO, NULL, "sched", "destination_down");
    log_str(&l, "destination", d->d.key);
    log_int(&l, "failures", d->down_count);
    log_int(&l, "retry_in_s", (d->down_until_ms - tern_now_ms() + 999) / 1000);
    log_str(&l, "reason", d->last_error);
    log_end(&l);
}

/* Apply the results of one unit's attempt (from delivery, or made up when
 * a unit expires while its destination is down). */
static void
unit_apply(struct sched *s, struct sched_unit *u, const struct delivery_rcpt_result *res, size_t n,
    const char *relay)
{
    struct sched_msg *m = u->msg;
    size_t keep = 0;
    int64_t next_ms = 0;
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
    /* The results of this attempt, for a restart (not synced on their own:
     * see spool.h). */
    spool_update_state(s->sp, m->env);
    if (sched_msg_pending(m) == 0)
        return; /* every recipient final: it goes once its DSNs are queued (sched_dsn.c) */
    if (m->reroute && m->n_flight == 0) {
        msg_rebuild(s, m, tern_now_ms() + next_ms);
        sched_arm(s);
        return;
    }
    if (u->n_rcpt > 0) {
        u->next_try_ms = tern_now_ms() + next_ms;
        if (u->dest->down_until_ms > u->next_try_ms)
            u->next_try_ms = u->dest->down_until_ms;
        if (m->env->held)
            u->state = U_HELD;
        else
            heap_push(s, u);
        sched_arm(s);
    } else {
        u->state = U_HELD; /* empty unit: never scheduled again */
    }
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
    /* Note the destination's state first: unit_apply may free u. */
    dest_note(s, u->dest, dest_failure(res, n, relay));
    unit_apply(s, u, res, n, relay);
}

/* A unit fell due while its destination is backed off: wait for the
 * destination, or give up now when the message has expired meanwhile. */
static void
unit_wait_for_dest(struct sched *s, struct sched_unit *u)
{
    if (!retry_expired(s->cfg, u->msg->env->arrival_ms, tern_now_ms())) {
        u->next_try_ms = u->dest->down_until_ms;
        heap_push(s, u);
        return;
    }
    struct delivery_rcpt_result *res = xcalloc(u->n_rcpt ? u->n_rcpt : 1, sizeof(*res));
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
dl_next_job(void *arg, const char *dest_key, struct delivery_job *job)
{
    struct sched *s = arg;
    struct sched_dest *d = map_get_str(s->dests, dest_key);
    struct sched_unit *u;
    if (d == NULL)
        return false;
    while ((u = d->ready_head) != NULL) {
        ready_unlink(d, u);
        if (u->msg->env->held || u->n_rcpt == 0) {
            u->state = U_HELD;
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

/* ---- life cycle and operator actions ---- */

struct sched *
sched_new(struct event_base *base, struct spool *sp, struct dns *dns, struct config *cfg)
{
    struct sched *s = xcalloc(1, sizeof(*s));
    struct delivery_callbacks cb = { dl_next_job, dl_done, s };
    unsigned seed;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed))
        seed = (unsigned)tern_mono_ms();
    srandom(seed);
    s->base = base;
    s->sp = sp;
    s->cfg = config_ref(cfg);
    s->msgs = map_new();
    s->dests = map_new();
    s->flight = map_new();
    s->timer = evtimer_new(base, sched_due_cb, s);
    sched_dsn_init(s);
    s->dl = delivery_new(base, sp, dns, &cb);
    delivery_set_config(s->dl, cfg);
    return s;
}

static void
free_msg_cb(const void *k, size_t kl, void *v, void *arg)
{
    struct sched_msg *m = v;
    for (size_t i = 0; i < m->n_units; i++)
        unit_free(m->units[i]);
    free(m->units);
    sched_notes_free(arg, m);
    spool_env_free(m->env);
    free(m);
}

static void
free_dest_cb(const void *k, size_t kl, void *v, void *arg)
{
    struct sched_dest *d = v;
    free(d->last_error);
    free(d);
}

void
sched_free(struct sched *s)
{
    if (s == NULL)
        return;
    delivery_free(s->dl); /* answers in-flight jobs through dl_done */
    s->dl = NULL;
    event_free(s->timer);
    map_each(s->msgs, free_msg_cb, s);
    sched_dsn_fini(s);
    map_each(s->dests, free_dest_cb, NULL);
    map_free(s->msgs);
    map_free(s->dests);
    map_free(s->flight);
    free(s->heap);
    config_unref(s->cfg);
    free(s);
}

struct reroute_ctx {
    struct sched *s;
    int64_t now;
};

static void
reroute_cb(const void *k, size_t kl, void *v, void *arg)
{
    struct reroute_ctx *c = arg;
    struct sched_msg *m = v;
    int64_t next = c->now;
    if (m->n_flight > 0) {
        m->reroute = true; /* rebuilt when its last result comes back (dl_done) */
        return;
    }
    for (size_t i = 0; i < m->n_units; i++) {
        if (m->units[i]->next_try_ms > next)
            next = m->units[i]->next_try_ms;
    }
    msg_rebuild(c->s, m, next);
}

void
sched_set_config(struct sched *s, struct config *cfg)
{
    struct reroute_ctx c = { s, tern_now_ms() };
    config_unref(s->cfg);
    s->cfg = config_ref(cfg);
    delivery_set_config(s->dl, cfg);
    /* Routes, smarthosts or limits may have changed: group every message
     * again (a reload is rare; this is one pass over the queue). */
    map_each(s->msgs, reroute_cb, &c);
    sched_arm(s);
}

static void
flush_cb(const void *k, size_t kl, void *v, void *arg)
{
    struct sched *s = arg;
    struct sched_msg *m = v;
    int64_t now = tern_now_ms();
    for (size_t i = 0; i < m->n_units; i++) {
        struct sched_unit *u = m->units[i];
        if (u->state == U_WAIT) {
            u->next_try_ms = now;
            heap_up(s, u->heap_idx);
        }
    }
}

static void
flush_dest_cb(const void *k, size_t kl, void *v, void *arg)
{
    struct sched_dest *d = v;
    d->down_until_ms = 0; /* "retry everything now" includes backed-off destinations */
}

void
sched_flush(struct sched *s)
{
    map_each(s->dests, flush_dest_cb, NULL);
    map_each(s->msgs, flush_cb, s);
    log_simple(LOG_INFO, "queue", "flush", NULL);
    sched_arm(s);
}

int
sched_delete(struct sched *s, const char *qid)
{
    struct sched_msg *m = map_get_str(s->msgs, qid);
    if (m == NULL || m->deleted)
        return -1;
    for (size_t i = 0; i < m->n_units; i++) {
        if (m->units[i]->state != U_FLIGHT)
            unit_detach(s, m->units[i]);
    }
    if (m->n_flight > 0) {
        m->deleted = true; /* finished when delivery answers */
        return 0;
    }
    sched_msg_finish(s, m, "deleted by operator");
    sched_arm(s);
    return 0;
}

int
sched_hold(struct sched *s, const char *qid, bool hold)
{
    struct sched_msg *m = map_get_str(s->msgs, qid);
    struct logline l;
    if (m == NULL || m->deleted)
        return -1;
    if (m->env->held != hold) {
        m->env->held = hold;
        spool_update_state(s->sp, m->env);
    }
    log_begin(&l, LOG_INFO, qid, "queue", hold ? "held" : "released");
    log_end(&l);
    for (size_t i = 0; i < m->n_units; i++) {
        struct sched_unit *u = m->units[i];
        if (hold && u->state != U_FLIGHT) {
            unit_detach(s, u);
        } else if (!hold && u->state == U_HELD && u->n_rcpt > 0) {
            u->next_try_ms = tern_now_ms();
            heap_push(s, u);
        }
    }
    sched_arm(s);
    return 0;
}

void
sched_get_stats(const struct sched *s, struct sched_stats *st)
{
    *st = s->st;
}

void
sched_count_received(struct sched *s)
{
    s->st.received++;
}

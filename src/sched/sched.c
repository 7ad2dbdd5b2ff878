/*
 * The bounded active queue. Every queued message has a compact entry in
 * the index (sched_index.c); at most active_limit of them are in memory
 * with envelope, state and units (the active set, as Postfix's qmgr). New
 * mail goes straight in when there is room; a message that falls due is
 * read back by a spool reader thread (spool_load_async) and enters when
 * read. A message none of whose units is ready or in flight (all waiting
 * for a retry or for their destination) leaves at once: its state is
 * already in the spool, its envelope is freed, its entry waits in the heap.
 * Held messages stay out. Recovery at start makes entries only. Loads,
 * like every answer that comes from another thread, reach the scheduler
 * through a link that is emptied by sched_free.
 */
#include "sched.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "history/history.h"
#include "retry.h"
#include "sched_int.h"
#include "util/log.h"
#include "util/util.h"
#include "util/workq.h"

#define PUMP_BATCH    2048 /* heap pops in one run of the pump */
#define LOADS_MAX     256  /* spool reads under way at once */
#define STOP_WAIT_MS  10000
#define SCHED_WORKERS 2
#define LOAD_RETRY_MS (60 * 1000) /* a read that failed for a reason other than damage */
#define EVICT_MIN_MS  2000        /* a message due sooner stays in memory */

/* ---- small helpers ---- */

void
sched_qid_text(uint64_t qid, char out[SPOOL_QID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = SPOOL_QID_LEN - 1; i >= 0; i--, qid >>= 4)
        out[i] = hex[qid & 15];
    out[SPOOL_QID_LEN] = '\0';
}

/* The number of a qid, or false when it is not 16 lowercase hex digits. */
bool
sched_qid_parse(const char *q, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;
    for (i = 0; q[i] != '\0'; i++) {
        int d = q[i] >= '0' && q[i] <= '9'   ? q[i] - '0'
                : q[i] >= 'a' && q[i] <= 'f' ? q[i] - 'a' + 10
                                             : -1;
        if (d < 0 || i >= SPOOL_QID_LEN)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return i == SPOOL_QID_LEN;
}

int64_t
sched_mono_from_wall(int64_t wall_ms, int64_t now_wall, int64_t now_mono)
{
    /* A stored wall-clock time becomes a monotonic one once, when read:
     * what is already past (or unset) is due now. */
    return wall_ms > now_wall ? now_mono + (wall_ms - now_wall) : now_mono;
}

static uint32_t
secs_ceil(int64_t mono_ms)
{
    return (uint32_t)((mono_ms + 999) / 1000);
}

static uint32_t
now_s(void)
{
    return (uint32_t)(tern_mono_ms() / 1000);
}

struct sched_link *
sched_link_ref(struct sched *s)
{
    s->link->refs++;
    return s->link;
}

void
sched_link_unref(struct sched_link *k)
{
    if (--k->refs == 0)
        free(k);
}

static size_t
active_limit(const struct sched *s)
{
    return s->cfg->active_limit > 0 ? s->cfg->active_limit : 1;
}

static bool
has_room(const struct sched *s)
{
    return s->n_active + s->n_loading < active_limit(s);
}

size_t
sched_msg_pending(const struct sched_msg *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->env->n_rcpts; i++)
        n += m->env->rcpts[i].state == RCPT_QUEUED;
    return n;
}

static void
ent_set_pending(struct sched *s, struct sched_ent *e, size_t n)
{
    s->st.queue_rcpts -= e->n_pending;
    e->n_pending = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
    s->st.queue_rcpts += e->n_pending;
}

/* Forget entry h (its message is not in memory): the queue no longer
 * has it. */
static void
ent_forget(struct sched *s, uint32_t h)
{
    struct sched_ent *e = sidx_ent(&s->idx, h);
    if (!(e->flags & ENT_DELETED)) {
        s->st.queue_messages--;
        s->st.queue_rcpts -= e->n_pending;
    }
    sched_hint_put(s, e->hint);
    sidx_del(&s->idx, h);
}

/* ---- the pump: loading what is due while there is room ---- */

void
sched_pump_later(struct sched *s)
{
    if (!s->stopping)
        event_active(s->pump_ev, 0, 0);
}

static void load_cb(uint64_t id, struct spool_env *env, int err, void *arg);

static void
load_start(struct sched *s, uint32_t h)
{
    struct sched_ent *e = sidx_ent(&s->idx, h);
    char qid[SPOOL_QID_LEN + 1];
    if (e->heap_idx != SCHED_NONE)
        sidx_heap_remove(&s->idx, h);
    e->flags |= ENT_LOADING;
    s->n_loading++;
    sched_qid_text(e->qid, qid);
    spool_load_async(s->sp, qid, s->inbox, load_cb, e->qid, sched_link_ref(s));
}

static void
persist_push(struct sched *s, uint64_t qid)
{
    if (s->persist_len == s->persist_cap) {
        size_t cap = s->persist_cap ? s->persist_cap * 2 : 64;
        uint64_t *v = xcalloc(cap, sizeof(*v));
        for (size_t i = 0; i < s->persist_len; i++)
            v[i] = s->persist[(s->persist_head + i) % s->persist_cap];
        free(s->persist);
        s->persist = v;
        s->persist_cap = cap;
        s->persist_head = 0;
    }
    s->persist[(s->persist_head + s->persist_len++) % s->persist_cap] = qid;
}

static uint64_t
persist_pop(struct sched *s)
{
    uint64_t q = s->persist[s->persist_head];
    s->persist_head = (s->persist_head + 1) % s->persist_cap;
    s->persist_len--;
    return q;
}

/* A waiting message whose destination (its hint) is backed off waits for
 * it without being read (Postfix defers a dead destination's mail at once). */
static bool
wait_for_hint(struct sched *s, struct sched_ent *e, int64_t now)
{
    const char *key = sched_hint_key(s, e->hint);
    struct sched_dest *d = key != NULL ? sched_dest_find(s, key) : NULL;
    if (d == NULL || d->down_until_ms <= now)
        return false;
    e->next_s = secs_ceil(d->down_until_ms);
    return true;
}

static void
wait_arm(struct sched *s, int64_t now_ms)
{
    uint32_t h = sidx_heap_top(&s->idx);
    int64_t delay;
    struct timeval tv;
    if (h == SCHED_NONE || !has_room(s)) {
        evtimer_del(s->wait_timer);
        return;
    }
    delay = (int64_t)sidx_ent(&s->idx, h)->next_s * 1000 - now_ms;
    if (delay < 0)
        delay = 0;
    tv.tv_sec = delay / 1000;
    tv.tv_usec = (delay % 1000) * 1000;
    evtimer_add(s->wait_timer, &tv);
}

static void
pump_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sched *s = arg;
    int64_t now_ms = tern_mono_ms();
    uint32_t h;
    size_t budget = PUMP_BATCH;
    if (s->stopping)
        return;
    /* Held messages read once to bring their held flag to the spool (and
     * to find DSNs still to make) come first: there are few. */
    while (s->persist_len > 0 && s->n_loading < LOADS_MAX && budget > 0) {
        budget--;
        h = sidx_find(&s->idx, persist_pop(s));
        if (h != SCHED_NONE &&
            !(sidx_ent(&s->idx, h)->flags & (ENT_ACTIVE | ENT_LOADING | ENT_DELETED)))
            load_start(s, h);
    }
    while (budget > 0 && s->n_loading < LOADS_MAX && has_room(s) &&
           (h = sidx_heap_top(&s->idx)) != SCHED_NONE &&
           (int64_t)sidx_ent(&s->idx, h)->next_s * 1000 <= now_ms) {
        budget--;
        if (wait_for_hint(s, sidx_ent(&s->idx, h), now_ms)) {
            sidx_heap_fix(&s->idx, h);
            continue;
        }
        load_start(s, h);
    }
    if (budget == 0)
        event_active(s->pump_ev, 0, 0); /* more, after the loop has served others */
    wait_arm(s, now_ms);
}

static void
wait_cb(evutil_socket_t fd, short what, void *arg)
{
    pump_cb(fd, what, arg);
}

/* ---- the active set ---- */

static void
msg_free(struct sched *s, struct sched_msg *m)
{
    sched_units_drop(s, m);
    free(m->units);
    sched_notes_free(s, m);
    spool_env_free(m->env);
    free(m);
}

/* Out of memory with m: its entry waits in the heap (unless held) until
 * its earliest unit falls due. Its state is already in the spool (written
 * after each attempt and hold; a wait for a backed-off destination is not
 * worth a record: after a restart it is simply due). */
static void
msg_evict(struct sched *s, struct sched_msg *m)
{
    struct sched_ent *e = sidx_ent(&s->idx, m->h);
    int64_t next = sched_msg_next_ms(m);
    bool multi;
    struct sched_dest *d = sched_msg_dest(m, &multi);
    uint32_t hint = d != NULL ? sched_hint_get(s, d->d.key) : multi ? HINT_MULTI : HINT_NONE;
    sched_hint_put(s, e->hint);
    e->hint = hint;
    e->m = NULL;
    e->flags &= (uint16_t) ~(ENT_ACTIVE | ENT_DSN);
    s->n_active--;
    msg_free(s, m);
    if (!(e->flags & ENT_HELD)) {
        e->next_s = secs_ceil(next > 0 ? next : tern_mono_ms());
        sidx_heap_push(&s->idx, (uint32_t)(e - s->idx.v));
    }
    sched_pump_later(s);
}

void
sched_msg_settle(struct sched *s, struct sched_msg *m)
{
    struct sched_ent *e;
    int64_t next;
    if (m->deleted)
        return;
    e = sidx_ent(&s->idx, m->h);
    ent_set_pending(s, e, sched_msg_pending(m));
    if (m->n_notes > 0)
        e->flags |= ENT_DSN;
    else
        e->flags &= (uint16_t)~ENT_DSN;
    if (s->stopping || m->n_flight > 0 || m->n_notes > 0)
        return;
    if (m->reread) {
        /* The spool moved it (compaction) after it was read: what is in
         * memory no longer finds its body. Read it again, at once. */
        msg_evict(s, m);
        return;
    }
    if (sched_msg_busy(m))
        return;
    /* A unit already due is about to be handed to its destination; one due
     * within moments is cheaper to keep than to read back. */
    next = sched_msg_next_ms(m);
    if (!(e->flags & ENT_HELD) && next != 0 && next <= tern_mono_ms() + EVICT_MIN_MS)
        return;
    msg_evict(s, m);
}

void
sched_msg_finish(struct sched *s, struct sched_msg *m, const char *why)
{
    struct logline l;
    uint32_t h = m->h;
    TERN_ASSERT(m->n_flight == 0);
    if (why != NULL) {
        log_begin(&l, LOG_INFO, m->env->qid, "queue", "removed");
        log_str(&l, "reason", why);
        log_end(&l);
    }
    spool_remove(s->sp, m->env->qid);
    ent_forget(s, h);
    s->n_active--;
    msg_free(s, m);
    sched_pump_later(s);
}

/* env (owned) becomes the message of entry h. */
static void
msg_activate(struct sched *s, uint32_t h, struct spool_env *env)
{
    struct sched_ent *e = sidx_ent(&s->idx, h);
    struct sched_msg *m = xcalloc(1, sizeof(*m));
    bool held = (e->flags & ENT_HELD) != 0;
    m->h = h;
    m->env = env;
    e->m = m;
    e->flags = (uint16_t)((e->flags & ~ENT_LOADING) | ENT_ACTIVE);
    s->n_active++;
    if (env->held != held) {
        /* held or released while it was out of memory */
        env->held = held;
        spool_update_state(s->sp, env);
    }
    /* DSNs not yet made when it was last in memory (sched_dsn.c). */
    sched_notes_load(m);
    if (sched_msg_pending(m) == 0 && m->n_notes == 0) {
        /* Every recipient already final (a crash after the last result but
         * before the removal): finish the removal now. */
        sched_msg_finish(s, m, NULL);
        return;
    }
    /* Flushed or released meanwhile: everything at once. */
    sched_units_build(s, m, (e->flags & ENT_FORCE) != 0);
    e->flags &= (uint16_t)~ENT_FORCE;
    sched_dsn_make(s, m);
    sched_msg_settle(s, m);
}

static void
load_cb(uint64_t id, struct spool_env *env, int err, void *arg)
{
    struct sched_link *k = arg;
    struct sched *s = k->s;
    uint32_t h;
    struct sched_ent *e;
    sched_link_unref(k);
    if (s == NULL) {
        spool_env_free(env); /* the scheduler is gone */
        return;
    }
    s->n_loading--;
    sched_pump_later(s);
    h = sidx_find(&s->idx, id);
    e = h != SCHED_NONE ? sidx_ent(&s->idx, h) : NULL;
    if (e == NULL || !(e->flags & ENT_LOADING) || s->stopping) {
        spool_env_free(env);
        if (e != NULL)
            e->flags &= (uint16_t)~ENT_LOADING;
        return;
    }
    if (e->flags & ENT_DELETED) {
        spool_env_free(env);
        ent_forget(s, h); /* deleted while it was read: the spool already knows */
        return;
    }
    if (env != NULL) {
        msg_activate(s, h, env);
        return;
    }
    e->flags &= (uint16_t)~ENT_LOADING;
    if (err == ENOENT || err == EBADMSG) {
        /* Gone, or damaged and set aside by the spool (which said so). */
        ent_forget(s, h);
        return;
    }
    {
        struct logline l;
        char qid[SPOOL_QID_LEN + 1];
        sched_qid_text(id, qid);
        log_begin(&l, LOG_ERROR, qid, "queue", "load_failed");
        log_errno(&l, err);
        log_end(&l);
    }
    if (!(e->flags & ENT_HELD)) {
        e->next_s = secs_ceil(tern_mono_ms() + LOAD_RETRY_MS);
        sidx_heap_push(&s->idx, h);
    }
}

/* ---- new mail and recovery ---- */

void
sched_add(struct sched *s, const struct spool_env *env)
{
    uint64_t qid;
    uint32_t h;
    struct sched_ent *e;
    size_t pending = 0;
    if (!sched_qid_parse(env->qid, &qid) || sidx_find(&s->idx, qid) != SCHED_NONE)
        return;
    h = sidx_add(&s->idx, qid);
    e = sidx_ent(&s->idx, h);
    e->arrival_s = (uint32_t)(env->arrival_ms / 1000);
    e->flags |= (uint16_t)((env->held ? ENT_HELD : 0) | (env->is_bounce ? ENT_BOUNCE : 0));
    for (size_t i = 0; i < env->n_rcpts; i++)
        pending += env->rcpts[i].state == RCPT_QUEUED;
    ent_set_pending(s, e, pending);
    s->st.queue_messages++;
    if (has_room(s) && !s->stopping) {
        msg_activate(s, h, spool_env_dup(env));
        return;
    }
    /* The active set is full: only the entry, read back when room frees. */
    if (!(e->flags & ENT_HELD)) {
        e->next_s = now_s();
        sidx_heap_push(&s->idx, h);
    }
}

static void
found_cb(const struct spool_entry *v, size_t n, void *arg)
{
    struct sched *s = arg;
    int64_t wall = tern_now_ms(), mono = tern_mono_ms();
    for (size_t i = 0; i < n; i++) {
        uint64_t qid;
        uint32_t h;
        struct sched_ent *e;
        if (!sched_qid_parse(v[i].qid, &qid) || sidx_find(&s->idx, qid) != SCHED_NONE)
            continue;
        if (v[i].n_pending == 0) {
            /* Every recipient final and its DSN made: a crash came before
             * the removal. */
            spool_remove(s->sp, v[i].qid);
            continue;
        }
        h = sidx_add(&s->idx, qid);
        e = sidx_ent(&s->idx, h);
        e->arrival_s = (uint32_t)(v[i].arrival_ms / 1000);
        e->flags |= (uint16_t)((v[i].held ? ENT_HELD : 0) | (v[i].is_bounce ? ENT_BOUNCE : 0));
        ent_set_pending(s, e, v[i].n_pending);
        s->st.queue_messages++;
        s->st.loaded++;
        if (v[i].held) {
            persist_push(s, qid); /* read once: DSNs may be waiting */
            continue;
        }
        /* Retry times survive a restart; what is due is tried at once. */
        e->next_s = secs_ceil(sched_mono_from_wall(v[i].next_try_ms, wall, mono));
        sidx_heap_push(&s->idx, h);
    }
    sched_pump_later(s);
}

static void
recovered_cb(void *arg, long count)
{
    struct sched *s = arg;
    struct logline l;
    s->loaded = true;
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

/* ---- life cycle ---- */

struct sched *
sched_new(struct event_base *base, struct spool *sp, struct dns *dns, struct config *cfg)
{
    struct sched *s = xcalloc(1, sizeof(*s));
    struct delivery_callbacks cb;
    unsigned seed;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed))
        seed = (unsigned)tern_mono_ms();
    srandom(seed);
    s->base = base;
    s->sp = sp;
    s->inbox = spool_owner(sp);
    s->cfg = config_ref(cfg);
    s->link = xcalloc(1, sizeof(*s->link));
    s->link->s = s;
    s->link->refs = 1;
    atomic_init(&s->link->cancel, false);
    sidx_init(&s->idx);
    s->wq = workq_new("tern-sched", SCHED_WORKERS);
    s->pump_ev = event_new(base, -1, 0, pump_cb, s);
    s->wait_timer = evtimer_new(base, wait_cb, s);
    if (s->pump_ev == NULL || s->wait_timer == NULL)
        tern_panic("cannot create the scheduler's events");
    s->hint_ids = map_new();
    sched_units_init(s);
    sched_dsn_init(s);
    cb = sched_delivery_callbacks(s);
    s->dl = delivery_new(base, sp, dns, &cb);
    delivery_set_config(s->dl, cfg);
    return s;
}

/* Stopping: wait (running the inbox) until the DSNs being made or
 * committed are settled, so that their originals are brought up to date
 * while the spool is still there. */
static void
wait_dsn_jobs(struct sched *s)
{
    int64_t end = tern_mono_ms() + STOP_WAIT_MS;
    while (s->dsn_busy > 0 && tern_mono_ms() < end) {
        struct timespec ts = { 0, 1000 * 1000 };
        if (loopq_run(s->inbox) == 0)
            nanosleep(&ts, NULL);
    }
}

void
sched_free(struct sched *s)
{
    if (s == NULL)
        return;
    sched_walks_abort(s);
    delivery_free(s->dl); /* answers in-flight jobs through the done callback */
    s->dl = NULL;
    s->stopping = true;
    atomic_store(&s->link->cancel, true);
    workq_free(s->wq); /* what is queued ends early; answers are posted */
    s->wq = NULL;
    wait_dsn_jobs(s);
    for (uint32_t h = 0; h < s->idx.n; h++) {
        struct sched_ent *e = sidx_ent(&s->idx, h);
        if ((e->flags & ENT_USED) && e->m != NULL)
            msg_free(s, e->m);
    }
    sched_units_fini(s);
    sched_dsn_fini(s);
    sched_hints_reset(s);
    map_free(s->hint_ids);
    free(s->hints);
    sidx_fini(&s->idx);
    free(s->persist);
    event_free(s->pump_ev);
    event_free(s->wait_timer);
    s->link->s = NULL;
    sched_link_unref(s->link);
    config_unref(s->cfg);
    free(s);
}

void
sched_set_config(struct sched *s, struct config *cfg)
{
    config_unref(s->cfg);
    s->cfg = config_ref(cfg);
    delivery_set_config(s->dl, cfg);
    /* Routes, smarthosts or limits may have changed: group every message
     * in memory again, and forget where the others were going (a reload is
     * rare; this is one pass over the queue). */
    sched_hints_reset(s);
    sched_units_reroute(s);
    sched_pump_later(s);
}

/* ---- operator actions ---- */

static uint32_t
find_live(struct sched *s, const char *qid)
{
    uint64_t q;
    uint32_t h;
    if (!sched_qid_parse(qid, &q) || (h = sidx_find(&s->idx, q)) == SCHED_NONE ||
        (sidx_ent(&s->idx, h)->flags & ENT_DELETED))
        return SCHED_NONE;
    return h;
}

void
sched_flush(struct sched *s)
{
    sched_units_flush(s);
    for (uint32_t h = 0; h < s->idx.n; h++) {
        struct sched_ent *e = sidx_ent(&s->idx, h);
        if ((e->flags & ENT_USED) && e->m == NULL)
            e->flags |= ENT_FORCE; /* its units are all due when it is read */
    }
    sidx_heap_all_due(&s->idx, now_s());
    log_simple(LOG_INFO, "queue", "flush", NULL);
    sched_pump_later(s);
}

int
sched_flush_msg(struct sched *s, const char *qid)
{
    uint32_t h = find_live(s, qid);
    struct sched_ent *e;
    struct sched_dest *d;
    const char *key;
    struct logline l;
    if (h == SCHED_NONE)
        return -1;
    e = sidx_ent(&s->idx, h);
    if (e->flags & ENT_HELD)
        return 0; /* held stays held: release retries it */
    log_begin(&l, LOG_INFO, qid, "queue", "flush");
    log_end(&l);
    if (e->m != NULL) {
        sched_units_flush_msg(s, e->m);
        return 0;
    }
    /* Out of memory (or being read): every unit due when it is read, and
     * read now rather than when its destination comes back. */
    e->flags |= ENT_FORCE;
    key = sched_hint_key(s, e->hint);
    d = key != NULL ? sched_dest_find(s, key) : NULL;
    if (d != NULL)
        d->down_until_ms = 0;
    if (e->heap_idx != SCHED_NONE) {
        e->next_s = now_s();
        sidx_heap_fix(&s->idx, h);
    }
    sched_pump_later(s);
    return 0;
}

int
sched_delete(struct sched *s, const char *qid)
{
    uint32_t h = find_live(s, qid);
    struct sched_ent *e;
    struct sched_msg *m;
    struct hline hl;
    if (h == SCHED_NONE)
        return -1;
    history_begin(&hl, qid, "deleted");
    history_end(&hl);
    e = sidx_ent(&s->idx, h);
    m = e->m;
    if (m == NULL && !(e->flags & ENT_LOADING)) {
        spool_remove(s->sp, qid);
        ent_forget(s, h);
        return 0;
    }
    /* Hidden at once; gone when the read or the delivery answers. */
    e->flags |= ENT_DELETED;
    s->st.queue_messages--;
    s->st.queue_rcpts -= e->n_pending;
    if (m == NULL) {
        spool_remove(s->sp, qid);
        return 0;
    }
    for (size_t i = 0; i < m->n_units; i++) {
        if (m->units[i]->state != U_FLIGHT)
            sched_unit_detach(s, m->units[i]);
    }
    if (m->n_flight > 0) {
        m->deleted = true; /* finished when delivery answers */
        return 0;
    }
    sched_msg_finish(s, m, "deleted by operator");
    sched_arm(s);
    return 0;
}

static void
hold_active(struct sched *s, struct sched_msg *m, bool hold)
{
    if (m->env->held != hold) {
        m->env->held = hold;
        spool_update_state(s->sp, m->env);
    }
    for (size_t i = 0; i < m->n_units; i++) {
        struct sched_unit *u = m->units[i];
        if (hold && u->state != U_FLIGHT) {
            sched_unit_detach(s, u);
        } else if (!hold && u->state == U_HELD) {
            u->next_ms = tern_mono_ms();
            sched_unit_wait(s, u);
        }
    }
    sched_arm(s);
    sched_msg_settle(s, m);
}

int
sched_hold(struct sched *s, const char *qid, bool hold)
{
    uint32_t h = find_live(s, qid);
    struct sched_ent *e;
    struct logline l;
    struct hline hl;
    if (h == SCHED_NONE)
        return -1;
    e = sidx_ent(&s->idx, h);
    log_begin(&l, LOG_INFO, qid, "queue", hold ? "held" : "released");
    log_end(&l);
    history_begin(&hl, qid, hold ? "held" : "released");
    history_end(&hl);
    if (((e->flags & ENT_HELD) != 0) == hold)
        return 0;
    e->flags ^= ENT_HELD;
    if (!hold && e->m == NULL)
        e->flags |= ENT_FORCE; /* released: retried at once when read */
    if (e->m != NULL) {
        hold_active(s, e->m, hold);
    } else if (e->flags & ENT_LOADING) {
        /* the read's answer brings the flag to the spool (msg_activate) */
    } else if (hold) {
        if (e->heap_idx != SCHED_NONE)
            sidx_heap_remove(&s->idx, h);
        persist_push(s, e->qid); /* read once to record the hold */
        sched_pump_later(s);
    } else {
        /* Released: read at once, which records the release too. */
        e->next_s = now_s();
        sidx_heap_push(&s->idx, h);
        sched_pump_later(s);
    }
    return 0;
}

void
sched_get_stats(const struct sched *s, struct sched_stats *st)
{
    *st = s->st;
    st->destinations = map_count(s->dests);
    st->active = s->n_active;
}

struct delivery *
sched_delivery(struct sched *s)
{
    return s->dl;
}

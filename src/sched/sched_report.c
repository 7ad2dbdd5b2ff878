/*
 * The scheduler's reports for the control socket, with most of the queue
 * not in memory: LIST (one JSON object per message, the `ternctl queue list
 * --json` format of CONTRACT.md) and SUMMARY (one JSON object per
 * destination, like Postfix's qshape). Both walk the index in slices from
 * the loop: messages in memory are reported from memory, the others are
 * read by a worker (the scheduler's work queue) in batches, so the loop is
 * never held for long; LIST hands its lines on after each slice and waits
 * for its consumer (backpressure). SUMMARY counts a message not in memory
 * by its destination hint, a compact note kept in its entry of where its
 * recipients went when it was last in memory (one interned key, "several",
 * or unknown); only messages with several destinations, or not read since
 * the start, are read, and the hints found are kept. Held mail is counted
 * apart (it is not deliverable), and every count is also split into
 * qshape's age buckets. An action walk (hold, release, delete, flush of
 * every message a selection takes) goes the same way: what the index
 * alone decides is acted on at once, a sender or recipient domain is
 * matched from memory or by a worker's read, and a slice acts on a
 * bounded number of messages before its lines go out.
 */
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "route.h"
#include "sched.h"
#include "sched_int.h"
#include "util/util.h"
#include "util/workq.h"

#define WALK_SCAN  4096 /* entries looked at in one slice */
#define WALK_READS 256  /* messages read by the worker in one batch */
#define WALK_ACTS  256  /* messages acted on in one slice */

/* ---- destination hints ---- */

uint32_t
sched_hint_get(struct sched *s, const char *key)
{
    uintptr_t id1 = (uintptr_t)map_get_str(s->hint_ids, key);
    uint32_t id;
    if (id1 != 0) {
        s->hints[id1 - 1].refs++;
        return (uint32_t)(id1 - 1);
    }
    for (id = 0; id < s->n_hints && s->hints[id].key != NULL; id++)
        ;
    if (id == s->n_hints) {
        if (s->n_hints == s->cap_hints) {
            s->cap_hints = s->cap_hints ? s->cap_hints * 2 : 16;
            if (s->cap_hints >= HINT_MULTI)
                tern_panic("too many destinations");
            s->hints = xrealloc(s->hints, s->cap_hints * sizeof(*s->hints));
        }
        s->n_hints++;
    }
    s->hints[id].key = xstrdup(key);
    s->hints[id].refs = 1;
    map_put_str(s->hint_ids, s->hints[id].key, (void *)(uintptr_t)(id + 1));
    return id;
}

void
sched_hint_put(struct sched *s, uint32_t id)
{
    struct sched_hint *h;
    if (id >= s->n_hints)
        return; /* HINT_NONE, HINT_MULTI */
    h = &s->hints[id];
    TERN_ASSERT(h->key != NULL && h->refs > 0);
    if (--h->refs > 0)
        return;
    map_del_str(s->hint_ids, h->key);
    FREE_NULL(&h->key);
}

const char *
sched_hint_key(const struct sched *s, uint32_t id)
{
    return id < s->n_hints ? s->hints[id].key : NULL;
}

void
sched_hints_reset(struct sched *s)
{
    for (uint32_t h = 0; h < s->idx.n; h++)
        sidx_ent(&s->idx, h)->hint = HINT_NONE;
    for (uint32_t i = 0; i < s->n_hints; i++) {
        if (s->hints[i].key != NULL)
            map_del_str(s->hint_ids, s->hints[i].key);
        FREE_NULL(&s->hints[i].key);
    }
    s->n_hints = 0;
}

/* ---- walks ---- */

struct dest_sum {
    char *key; /* owned */
    size_t msgs, rcpts;
    uint32_t oldest_s;
    uint64_t last_msg;              /* the message counted last, so that one counts once */
    size_t ages[SCHED_AGE_BUCKETS]; /* messages by age */
};

struct read_item {
    uint64_t qid;
    bool held;
    bool matched; /* result: the selection takes it (action walk) */
};

/* An owned copy of a selection. */
struct select_copy {
    struct sched_select sel; /* strings point into the copies below */
    char *sender, *rcpt_domain;
};

/* Per message and destination, what a read found (SUMMARY). */
struct read_dest {
    size_t item; /* index into items */
    char *key;   /* owned */
    size_t rcpts;
};

struct walk_read {
    struct workq_item w; /* first */
    struct sched_link *link;
    struct sched_walk *walk; /* NULL once the walk is gone */
    struct spool *sp;
    struct config *cfg; /* a reference (routing, for SUMMARY) */
    bool summary;
    bool acting;            /* an action walk: items[].matched is the result */
    struct select_copy sel; /* acting */
    int64_t now_s;          /* acting: wall clock of the walk's start */
    struct read_item *items;
    size_t n;
    /* results */
    struct buf out;       /* LIST lines */
    struct read_dest *rd; /* SUMMARY */
    size_t n_rd, cap_rd;
    uint32_t *arrival_s; /* per item, SUMMARY */
};

struct sched_walk {
    struct sched *s;
    struct sched_walk *next; /* in s->walks */
    bool summary;
    bool acting; /* an action walk (sched_walk_act) */
    enum sched_act act;
    struct select_copy sel;
    bool sel_env;         /* the selection needs the envelope */
    int64_t now_s;        /* wall clock at the start: ages and older_than */
    size_t acts;          /* messages acted on in this slice */
    struct dest_sum held; /* SUMMARY: held mail, apart */
    sched_walk_fn fn;
    void *arg;
    uint64_t *ids; /* owned or NULL: only these messages (sched_walk_ids) */
    size_t n_ids;
    uint32_t pos;           /* next slab index (or index into ids) */
    uint64_t seq;           /* counts messages, for dest_sum.last_msg */
    struct event *ev;       /* a slice from the loop */
    struct walk_read *read; /* a batch being read */
    struct buf out;
    struct dest_sum *sums;
    size_t n_sums, cap_sums;
    struct map *sum_idx; /* key -> index + 1 */
    bool waiting;        /* for sched_walk_next */
};

/* ---- selection and age buckets (pure) ---- */

size_t
sched_age_bucket(int64_t age_s)
{
    /* Postfix's qshape: 5 minutes, then doubling. */
    int64_t edge = 5 * 60;
    size_t b = 0;
    while (b + 1 < SCHED_AGE_BUCKETS && age_s >= edge) {
        b++;
        edge *= 2;
    }
    return b;
}

bool
sched_select_needs_env(const struct sched_select *sel)
{
    return sel->sender != NULL || sel->rcpt_domain != NULL;
}

static bool
rcpt_in_domain(const char *addr, const char *domain)
{
    const char *at = strrchr(addr, '@');
    return at != NULL && strcasecmp(at + 1, domain) == 0;
}

bool
sched_select_match(const struct sched_select *sel, const struct spool_env *env, int64_t now_s)
{
    bool found;
    if (sel->older_than_s > 0 && now_s - env->arrival_ms / 1000 < sel->older_than_s)
        return false;
    if (sel->sender != NULL && strcasecmp(env->sender, sel->sender) != 0)
        return false;
    if (sel->rcpt_domain == NULL)
        return true;
    found = false;
    for (size_t i = 0; i < env->n_rcpts && !found; i++)
        found = env->rcpts[i].state == RCPT_QUEUED &&
                rcpt_in_domain(env->rcpts[i].addr, sel->rcpt_domain);
    return found;
}

static void
select_copy(struct select_copy *dst, const struct sched_select *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->sender = src->sender != NULL ? xstrdup(src->sender) : NULL;
    dst->rcpt_domain = src->rcpt_domain != NULL ? xstrdup(src->rcpt_domain) : NULL;
    dst->sel.sender = dst->sender;
    dst->sel.rcpt_domain = dst->rcpt_domain;
    dst->sel.older_than_s = src->older_than_s;
}

static void
select_free(struct select_copy *c)
{
    FREE_NULL(&c->sender);
    FREE_NULL(&c->rcpt_domain);
}

/* ---- counting ---- */

static void
sum_count(struct sched_walk *w, struct dest_sum *ds, size_t rcpts, uint32_t arrival_s, bool msg)
{
    if (msg) {
        ds->msgs++;
        ds->ages[sched_age_bucket(w->now_s - (int64_t)arrival_s)]++;
    }
    ds->rcpts += rcpts;
    if (ds->oldest_s == 0 || arrival_s < ds->oldest_s)
        ds->oldest_s = arrival_s;
}

/* A held message: counted apart, whatever its destinations. */
static void
held_add(struct sched_walk *w, size_t rcpts, uint32_t arrival_s)
{
    sum_count(w, &w->held, rcpts, arrival_s, true);
}

static void
sum_add(struct sched_walk *w, const char *key, size_t rcpts, uint32_t arrival_s)
{
    uintptr_t i = (uintptr_t)map_get_str(w->sum_idx, key);
    struct dest_sum *ds;
    if (i == 0) {
        if (w->n_sums == w->cap_sums) {
            w->cap_sums = w->cap_sums ? w->cap_sums * 2 : 16;
            w->sums = xrealloc(w->sums, w->cap_sums * sizeof(*w->sums));
        }
        ds = &w->sums[w->n_sums++];
        memset(ds, 0, sizeof(*ds));
        ds->key = xstrdup(key);
        map_put_str(w->sum_idx, ds->key, (void *)(uintptr_t)w->n_sums);
    } else {
        ds = &w->sums[i - 1];
    }
    bool first = ds->last_msg != w->seq || ds->msgs == 0;
    ds->last_msg = w->seq;
    sum_count(w, ds, rcpts, arrival_s, first);
}

static void
ages_write(struct buf *out, const struct dest_sum *ds)
{
    static const char *const labels[SCHED_AGE_BUCKETS] = SCHED_AGE_LABELS;
    buf_append_str(out, ",\"ages\":{");
    for (size_t b = 0; b < SCHED_AGE_BUCKETS; b++)
        buf_printf(out, "%s\"%s\":%zu", b > 0 ? "," : "", labels[b], ds->ages[b]);
    buf_append_char(out, '}');
}

static void
sums_write(struct sched_walk *w)
{
    for (size_t i = 0; i < w->n_sums; i++) {
        const struct dest_sum *ds = &w->sums[i];
        const struct sched_dest *d = sched_dest_find(w->s, ds->key);
        buf_append_str(&w->out, "{\"destination\":");
        buf_append_json_str(&w->out, ds->key);
        buf_printf(&w->out,
            ",\"messages\":%zu,\"recipients\":%zu,\"oldest\":%lld,\"last_error\":", ds->msgs,
            ds->rcpts, (long long)ds->oldest_s);
        buf_append_json_str(&w->out, d != NULL ? d->last_error : NULL);
        ages_write(&w->out, ds);
        buf_append_str(&w->out, "}\n");
    }
    /* Held mail on a line of its own: not deliverable until released, so
     * not in any destination's figures. */
    if (w->held.msgs > 0) {
        buf_printf(&w->out, "{\"held\":true,\"messages\":%zu,\"recipients\":%zu,\"oldest\":%lld",
            w->held.msgs, w->held.rcpts, (long long)w->held.oldest_s);
        ages_write(&w->out, &w->held);
        buf_append_str(&w->out, "}\n");
    }
}

static const char *
rcpt_status(size_t idx, void *arg)
{
    const struct sched_msg *m = arg;
    for (size_t i = 0; i < m->n_units; i++) {
        const struct sched_unit *u = m->units[i];
        if (u->state != U_FLIGHT)
            continue;
        for (size_t k = 0; k < u->n_rcpt; k++) {
            if (u->rcpt[k] == idx)
                return "delivering";
        }
    }
    return NULL;
}

/* A message in memory, reported from there. */
static void
walk_active(struct sched_walk *w, const struct sched_ent *e)
{
    const struct sched_msg *m = e->m;
    if (!w->summary) {
        spool_env_list_json(m->env, rcpt_status, (void *)m, &w->out);
        return;
    }
    w->seq++;
    for (size_t i = 0; i < m->n_units; i++) {
        if (m->units[i]->n_rcpt > 0)
            sum_add(w, m->units[i]->dest->d.key, m->units[i]->n_rcpt, e->arrival_s);
    }
}

/* ---- the worker's side ---- */

static void
read_dest_add(struct walk_read *r, size_t item, const char *key, size_t n)
{
    for (size_t i = r->n_rd; i-- > 0 && r->rd[i].item == item;) {
        if (strcmp(r->rd[i].key, key) == 0) {
            r->rd[i].rcpts += n;
            return;
        }
    }
    if (r->n_rd == r->cap_rd) {
        r->cap_rd = r->cap_rd ? r->cap_rd * 2 : 64;
        r->rd = xrealloc(r->rd, r->cap_rd * sizeof(*r->rd));
    }
    r->rd[r->n_rd].item = item;
    r->rd[r->n_rd].key = xstrdup(key);
    r->rd[r->n_rd].rcpts = n;
    r->n_rd++;
}

static void
read_run(struct workq_item *wi)
{
    struct walk_read *r = (struct walk_read *)wi;
    for (size_t i = 0; i < r->n && !atomic_load(&r->link->cancel); i++) {
        char qid[SPOOL_QID_LEN + 1];
        struct spool_env *env;
        sched_qid_text(r->items[i].qid, qid);
        env = spool_load(r->sp, qid);
        if (env == NULL)
            continue;                 /* gone meanwhile */
        env->held = r->items[i].held; /* the index knows first */
        if (r->acting) {
            r->items[i].matched = sched_select_match(&r->sel.sel, env, r->now_s);
        } else if (!r->summary) {
            spool_env_list_json(env, NULL, NULL, &r->out);
        } else {
            r->arrival_s[i] = (uint32_t)(env->arrival_ms / 1000);
            for (size_t k = 0; k < env->n_rcpts; k++) {
                struct delivery_dest dd;
                if (env->rcpts[k].state != RCPT_QUEUED)
                    continue;
                route_decide(r->cfg, env->sender, env->rcpts[k].addr, &dd);
                read_dest_add(r, i, dd.key, 1);
            }
        }
        spool_env_free(env);
    }
}

static void
read_free(struct walk_read *r)
{
    for (size_t i = 0; i < r->n_rd; i++)
        free(r->rd[i].key);
    free(r->rd);
    free(r->arrival_s);
    free(r->items);
    select_free(&r->sel);
    buf_fini(&r->out);
    config_unref(r->cfg);
    sched_link_unref(r->link);
    free(r);
}

/* ---- the loop's side ---- */

static void walk_emit(struct sched_walk *w);

/* May the action walk take e, as far as the index tells? */
static bool
act_wants(const struct sched_walk *w, const struct sched_ent *e)
{
    bool held = (e->flags & ENT_HELD) != 0;
    const struct sched_select *sel = &w->sel.sel;
    if (!(e->flags & ENT_USED) || (e->flags & ENT_DELETED))
        return false;
    if (sel->older_than_s > 0 && w->now_s - (int64_t)e->arrival_s < sel->older_than_s)
        return false;
    switch (w->act) {
    case SCHED_ACT_HOLD:
    case SCHED_ACT_FLUSH:
        return !held;
    case SCHED_ACT_RELEASE:
        return held;
    case SCHED_ACT_DELETE:
        break;
    }
    return true;
}

/* Act on the message qid; its line when it was there. */
static void
walk_do(struct sched_walk *w, uint64_t qid)
{
    char q[SPOOL_QID_LEN + 1];
    int rc = -1;
    sched_qid_text(qid, q);
    w->acts++;
    switch (w->act) {
    case SCHED_ACT_HOLD:
    case SCHED_ACT_RELEASE:
        rc = sched_hold(w->s, q, w->act == SCHED_ACT_HOLD);
        break;
    case SCHED_ACT_DELETE:
        rc = sched_delete(w->s, q);
        break;
    case SCHED_ACT_FLUSH:
        rc = sched_flush_msg(w->s, q);
        break;
    }
    if (rc == 0)
        buf_printf(&w->out, "done %s\n", q);
}

/* Keep what a read found: the counts, and the hints of messages still out
 * of memory. */
static void
read_merge(struct sched_walk *w, struct walk_read *r)
{
    struct sched *s = w->s;
    size_t k = 0;
    buf_append(&w->out, r->out.data, r->out.len);
    if (r->acting) {
        for (size_t i = 0; i < r->n; i++) {
            uint32_t h = sidx_find(&s->idx, r->items[i].qid);
            /* Still there and still wanted (it may have changed meanwhile). */
            if (r->items[i].matched && h != SCHED_NONE && act_wants(w, sidx_ent(&s->idx, h)))
                walk_do(w, r->items[i].qid);
        }
        return;
    }
    if (!r->summary)
        return;
    for (size_t i = 0; i < r->n; i++) {
        size_t first = k, n_dest = 0;
        uint32_t h = sidx_find(&s->idx, r->items[i].qid);
        struct sched_ent *e = h != SCHED_NONE ? sidx_ent(&s->idx, h) : NULL;
        w->seq++;
        for (; k < r->n_rd && r->rd[k].item == i; k++, n_dest++)
            sum_add(w, r->rd[k].key, r->rd[k].rcpts, r->arrival_s[i]);
        if (e == NULL || (e->flags & (ENT_ACTIVE | ENT_LOADING)) || e->hint != HINT_NONE)
            continue;
        if (n_dest == 1)
            e->hint = sched_hint_get(s, r->rd[first].key);
        else if (n_dest > 1)
            e->hint = HINT_MULTI;
    }
}

static void
read_done(struct loopq_item *it)
{
    struct walk_read *r = (struct walk_read *)((char *)it - offsetof(struct walk_read, w.done));
    struct sched_walk *w = r->walk;
    if (r->link->s != NULL && w != NULL) {
        w->read = NULL;
        read_merge(w, r);
        walk_emit(w);
    }
    read_free(r);
}

static struct walk_read *
read_new(struct sched_walk *w)
{
    struct walk_read *r = xcalloc(1, sizeof(*r));
    r->w.run = read_run;
    r->w.to = w->s->inbox;
    r->w.done.fn = read_done;
    r->link = sched_link_ref(w->s);
    r->walk = w;
    r->sp = w->s->sp;
    r->cfg = config_ref(w->s->cfg);
    r->summary = w->summary;
    r->acting = w->acting;
    if (w->acting) {
        select_copy(&r->sel, &w->sel.sel);
        r->now_s = w->now_s;
    }
    r->items = xcalloc(WALK_READS, sizeof(*r->items));
    if (w->summary)
        r->arrival_s = xcalloc(WALK_READS, sizeof(*r->arrival_s));
    buf_init(&r->out);
    return r;
}

/* One slice: what is in memory (or hinted) is reported at once, the rest
 * goes to a read. */
/* Where the walk ends: the slab, or its list of ids. */
static uint32_t
walk_total(const struct sched_walk *w)
{
    return w->ids != NULL ? (uint32_t)w->n_ids : w->s->idx.n;
}

static void
walk_slice(struct sched_walk *w)
{
    struct sched *s = w->s;
    struct walk_read *r = NULL;
    uint32_t total = walk_total(w);
    uint32_t end = total - w->pos > WALK_SCAN ? w->pos + WALK_SCAN : total;
    w->acts = 0;
    for (; w->pos < end && (r == NULL || r->n < WALK_READS) && w->acts < WALK_ACTS; w->pos++) {
        uint32_t h = w->ids != NULL ? sidx_find(&s->idx, w->ids[w->pos]) : w->pos;
        const struct sched_ent *e;
        const char *key;
        if (h == SCHED_NONE)
            continue;
        e = sidx_ent(&s->idx, h);
        if (!(e->flags & ENT_USED) || (e->flags & ENT_DELETED))
            continue;
        if (w->acting) {
            if (!act_wants(w, e))
                continue;
            if (!w->sel_env || e->m != NULL) {
                if (!w->sel_env || sched_select_match(&w->sel.sel, e->m->env, w->now_s))
                    walk_do(w, e->qid); /* e may be gone after this */
                continue;
            }
            /* else the worker reads and matches it */
        } else if (w->summary && (e->flags & ENT_HELD)) {
            held_add(w, e->n_pending, e->arrival_s);
            continue;
        } else if (e->m != NULL) {
            walk_active(w, e);
            continue;
        } else if (w->summary && (key = sched_hint_key(s, e->hint)) != NULL) {
            w->seq++;
            sum_add(w, key, e->n_pending, e->arrival_s);
            continue;
        }
        if (r == NULL)
            r = read_new(w);
        r->items[r->n].qid = e->qid;
        r->items[r->n].held = (e->flags & ENT_HELD) != 0;
        r->n++;
    }
    if (r != NULL) {
        w->read = r;
        workq_submit(s->wq, &r->w);
        return;
    }
    walk_emit(w);
}

static void
walk_unlink(struct sched_walk *w)
{
    for (struct sched_walk **pp = &w->s->walks; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
}

static void
walk_free(struct sched_walk *w)
{
    if (w->read != NULL)
        w->read->walk = NULL; /* its answer is dropped */
    walk_unlink(w);
    event_free(w->ev);
    buf_fini(&w->out);
    select_free(&w->sel);
    for (size_t i = 0; i < w->n_sums; i++)
        free(w->sums[i].key);
    free(w->sums);
    map_free(w->sum_idx);
    free(w->ids);
    free(w);
}

/* Hand on what is ready, or go on with the next slice. */
static void
walk_emit(struct sched_walk *w)
{
    if (w->pos >= walk_total(w)) {
        if (w->summary)
            sums_write(w);
        w->fn(w->arg, w->out.data ? w->out.data : "", w->out.len, SCHED_WALK_DONE);
        walk_free(w);
        return;
    }
    if (w->out.len > 0) {
        /* The consumer may go on or cancel w from inside fn. */
        struct buf out = w->out;
        buf_init(&w->out);
        w->waiting = true;
        w->fn(w->arg, out.data, out.len, SCHED_WALK_MORE);
        buf_fini(&out);
        return;
    }
    event_active(w->ev, 0, 0);
}

static void
walk_cb(evutil_socket_t fd, short what, void *arg)
{
    walk_slice(arg);
}

struct sched_walk *
sched_walk_start(struct sched *s, bool summary, sched_walk_fn fn, void *arg)
{
    struct sched_walk *w = xcalloc(1, sizeof(*w));
    w->s = s;
    w->summary = summary;
    w->now_s = tern_now_ms() / 1000;
    w->fn = fn;
    w->arg = arg;
    w->sum_idx = map_new();
    buf_init(&w->out);
    w->ev = event_new(s->base, -1, 0, walk_cb, w);
    if (w->ev == NULL)
        tern_panic("cannot create a walk event");
    w->next = s->walks;
    s->walks = w;
    event_active(w->ev, 0, 0); /* never inside this call */
    return w;
}

struct sched_walk *
sched_walk_act(struct sched *s, enum sched_act act, const struct sched_select *sel,
    sched_walk_fn fn, void *arg)
{
    struct sched_walk *w = sched_walk_start(s, false, fn, arg);
    w->acting = true;
    w->act = act;
    select_copy(&w->sel, sel);
    w->sel_env = sched_select_needs_env(sel);
    return w;
}

struct sched_walk *
sched_walk_ids(struct sched *s, const char *const *qids, size_t n, sched_walk_fn fn, void *arg)
{
    struct sched_walk *w = sched_walk_start(s, false, fn, arg);
    w->ids = xcalloc(n > 0 ? n : 1, sizeof(*w->ids));
    for (size_t i = 0; i < n; i++) {
        if (sched_qid_parse(qids[i], &w->ids[w->n_ids]))
            w->n_ids++;
    }
    return w;
}

void
sched_walk_next(struct sched_walk *w)
{
    if (!w->waiting)
        return;
    w->waiting = false;
    event_active(w->ev, 0, 0);
}

void
sched_walk_cancel(struct sched_walk *w)
{
    if (w != NULL)
        walk_free(w);
}

void
sched_walks_abort(struct sched *s)
{
    while (s->walks != NULL) {
        struct sched_walk *w = s->walks;
        sched_walk_fn fn = w->fn;
        void *arg = w->arg;
        walk_free(w);
        fn(arg, "", 0, SCHED_WALK_ABORTED);
    }
}

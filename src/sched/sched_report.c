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
 * the start, are read, and the hints found are kept.
 */
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"
#include "sched.h"
#include "sched_int.h"
#include "util/util.h"
#include "util/workq.h"

#define WALK_SCAN  4096 /* entries looked at in one slice */
#define WALK_READS 256  /* messages read by the worker in one batch */

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
    uint64_t last_msg; /* the message counted last, so that one counts once */
};

struct read_item {
    uint64_t qid;
    bool held;
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
    sched_walk_fn fn;
    void *arg;
    uint32_t pos;           /* next slab index */
    uint64_t seq;           /* counts messages, for dest_sum.last_msg */
    struct event *ev;       /* a slice from the loop */
    struct walk_read *read; /* a batch being read */
    struct buf out;
    struct dest_sum *sums;
    size_t n_sums, cap_sums;
    struct map *sum_idx; /* key -> index + 1 */
    bool waiting;        /* for sched_walk_next */
};

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
    if (ds->last_msg != w->seq || ds->msgs == 0) {
        ds->msgs++;
        ds->last_msg = w->seq;
    }
    ds->rcpts += rcpts;
    if (ds->oldest_s == 0 || arrival_s < ds->oldest_s)
        ds->oldest_s = arrival_s;
}

static void
json_str(struct buf *out, const char *s)
{
    if (s == NULL) {
        buf_append_str(out, "null");
        return;
    }
    buf_append_char(out, '"');
    buf_append_json(out, s, strlen(s));
    buf_append_char(out, '"');
}

static void
sums_write(struct sched_walk *w)
{
    for (size_t i = 0; i < w->n_sums; i++) {
        const struct dest_sum *ds = &w->sums[i];
        const struct sched_dest *d = sched_dest_find(w->s, ds->key);
        buf_append_str(&w->out, "{\"destination\":");
        json_str(&w->out, ds->key);
        buf_printf(&w->out,
            ",\"messages\":%zu,\"recipients\":%zu,\"oldest\":%lld,\"last_error\":", ds->msgs,
            ds->rcpts, (long long)ds->oldest_s);
        json_str(&w->out, d != NULL ? d->last_error : NULL);
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
        if (!r->summary) {
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
    buf_fini(&r->out);
    config_unref(r->cfg);
    sched_link_unref(r->link);
    free(r);
}

/* ---- the loop's side ---- */

static void walk_emit(struct sched_walk *w);

/* Keep what a read found: the counts, and the hints of messages still out
 * of memory. */
static void
read_merge(struct sched_walk *w, struct walk_read *r)
{
    struct sched *s = w->s;
    size_t k = 0;
    buf_append(&w->out, r->out.data, r->out.len);
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
    r->items = xcalloc(WALK_READS, sizeof(*r->items));
    if (w->summary)
        r->arrival_s = xcalloc(WALK_READS, sizeof(*r->arrival_s));
    buf_init(&r->out);
    return r;
}

/* One slice: what is in memory (or hinted) is reported at once, the rest
 * goes to a read. */
static void
walk_slice(struct sched_walk *w)
{
    struct sched *s = w->s;
    struct walk_read *r = NULL;
    uint32_t end = s->idx.n - w->pos > WALK_SCAN ? w->pos + WALK_SCAN : s->idx.n;
    for (; w->pos < end && (r == NULL || r->n < WALK_READS); w->pos++) {
        const struct sched_ent *e = sidx_ent(&s->idx, w->pos);
        const char *key;
        if (!(e->flags & ENT_USED) || (e->flags & ENT_DELETED))
            continue;
        if (e->m != NULL) {
            walk_active(w, e);
            continue;
        }
        if (w->summary && (key = sched_hint_key(s, e->hint)) != NULL) {
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
    for (size_t i = 0; i < w->n_sums; i++)
        free(w->sums[i].key);
    free(w->sums);
    map_free(w->sum_idx);
    free(w);
}

/* Hand on what is ready, or go on with the next slice. */
static void
walk_emit(struct sched_walk *w)
{
    if (w->pos >= w->s->idx.n) {
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

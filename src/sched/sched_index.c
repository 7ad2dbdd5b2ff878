/*
 * The compact index of the queue: one 40-byte entry per queued message in a
 * slab (addressed by a u32 handle, freed slots reused), an open-addressing
 * hash from qid to handle, and a min-heap of the handles of the messages
 * waiting outside memory, ordered by next attempt then qid (qids grow with
 * time, so equal times go oldest first). No pointers into the slab are kept
 * across an add: it may move.
 */
#include <stdlib.h>
#include <string.h>

#include "sched_int.h"
#include "util/util.h"

#define TAB_MIN  1024u
#define TAB_TOMB UINT32_MAX

static uint32_t
tab_slot(uint64_t qid, uint32_t cap)
{
    /* Fibonacci hashing: qids share their high (time) bits. */
    return (uint32_t)((qid * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
}

void
sidx_init(struct sched_index *x)
{
    memset(x, 0, sizeof(*x));
    x->free_head = SCHED_NONE;
}

void
sidx_fini(struct sched_index *x)
{
    free(x->v);
    free(x->tab);
    free(x->heap);
    memset(x, 0, sizeof(*x));
    x->free_head = SCHED_NONE;
}

/* Rebuild the table with cap slots (tombstones go). */
static void
tab_resize(struct sched_index *x, uint32_t cap)
{
    uint32_t *t = xcalloc(cap, sizeof(*t));
    for (uint32_t h = 0; h < x->n; h++) {
        uint32_t i;
        if (!(x->v[h].flags & ENT_USED))
            continue;
        for (i = tab_slot(x->v[h].qid, cap); t[i] != 0; i = (i + 1) & (cap - 1))
            ;
        t[i] = h + 1;
    }
    free(x->tab);
    x->tab = t;
    x->tab_cap = cap;
    x->tab_used = x->live;
}

uint32_t
sidx_find(const struct sched_index *x, uint64_t qid)
{
    if (x->tab_cap == 0)
        return SCHED_NONE;
    for (uint32_t i = tab_slot(qid, x->tab_cap);; i = (i + 1) & (x->tab_cap - 1)) {
        uint32_t t = x->tab[i];
        if (t == 0)
            return SCHED_NONE;
        if (t != TAB_TOMB && x->v[t - 1].qid == qid)
            return t - 1;
    }
}

static uint32_t
slab_take(struct sched_index *x)
{
    uint32_t h = x->free_head;
    if (h != SCHED_NONE) {
        x->free_head = x->v[h].heap_idx;
        return h;
    }
    if (x->n == x->cap) {
        size_t cap = x->cap ? (size_t)x->cap * 2 : 1024, sz;
        if (cap >= SCHED_NONE || !size_mul(cap, sizeof(*x->v), &sz))
            tern_panic("scheduler index full");
        x->v = xrealloc(x->v, sz);
        x->cap = (uint32_t)cap;
    }
    return x->n++;
}

uint32_t
sidx_add(struct sched_index *x, uint64_t qid)
{
    uint32_t h, i;
    /* Keep the table at most 70% full, tombstones included. */
    if ((uint64_t)(x->tab_used + 1) * 10 > (uint64_t)x->tab_cap * 7) {
        uint32_t cap = x->tab_cap ? x->tab_cap : TAB_MIN;
        while ((uint64_t)(x->live + 1) * 10 > (uint64_t)cap * 5) {
            if (cap > UINT32_MAX / 2)
                tern_panic("scheduler index full");
            cap *= 2;
        }
        tab_resize(x, cap);
    }
    h = slab_take(x);
    memset(&x->v[h], 0, sizeof(x->v[h]));
    x->v[h].qid = qid;
    x->v[h].flags = ENT_USED;
    x->v[h].heap_idx = SCHED_NONE;
    x->v[h].hint = HINT_NONE;
    for (i = tab_slot(qid, x->tab_cap); x->tab[i] != 0 && x->tab[i] != TAB_TOMB;
         i = (i + 1) & (x->tab_cap - 1))
        ;
    if (x->tab[i] == 0)
        x->tab_used++;
    x->tab[i] = h + 1;
    x->live++;
    return h;
}

void
sidx_del(struct sched_index *x, uint32_t h)
{
    struct sched_ent *e = &x->v[h];
    uint32_t i;
    TERN_ASSERT(h < x->n && (e->flags & ENT_USED));
    if (e->heap_idx != SCHED_NONE)
        sidx_heap_remove(x, h);
    for (i = tab_slot(e->qid, x->tab_cap); x->tab[i] != h + 1; i = (i + 1) & (x->tab_cap - 1))
        TERN_ASSERT(x->tab[i] != 0);
    /* A tombstone keeps the probe chains of later entries intact; it may
     * become empty when the next slot is empty. */
    x->tab[i] = x->tab[(i + 1) & (x->tab_cap - 1)] == 0 ? 0 : TAB_TOMB;
    if (x->tab[i] == 0)
        x->tab_used--;
    memset(e, 0, sizeof(*e));
    e->heap_idx = x->free_head;
    x->free_head = h;
    x->live--;
}

/* ---- the waiting heap ---- */

static bool
heap_less(const struct sched_index *x, uint32_t a, uint32_t b)
{
    const struct sched_ent *ea = &x->v[a], *eb = &x->v[b];
    return ea->next_s != eb->next_s ? ea->next_s < eb->next_s : ea->qid < eb->qid;
}

static void
heap_set(struct sched_index *x, uint32_t i, uint32_t h)
{
    x->heap[i] = h;
    x->v[h].heap_idx = i;
}

static void
heap_up(struct sched_index *x, uint32_t i)
{
    uint32_t h = x->heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!heap_less(x, h, x->heap[p]))
            break;
        heap_set(x, i, x->heap[p]);
        i = p;
    }
    heap_set(x, i, h);
}

static void
heap_down(struct sched_index *x, uint32_t i)
{
    uint32_t h = x->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= x->heap_len)
            break;
        if (c + 1 < x->heap_len && heap_less(x, x->heap[c + 1], x->heap[c]))
            c++;
        if (!heap_less(x, x->heap[c], h))
            break;
        heap_set(x, i, x->heap[c]);
        i = c;
    }
    heap_set(x, i, h);
}

void
sidx_heap_push(struct sched_index *x, uint32_t h)
{
    TERN_ASSERT(x->v[h].heap_idx == SCHED_NONE);
    if (x->heap_len == x->heap_cap) {
        size_t cap = x->heap_cap ? (size_t)x->heap_cap * 2 : 1024;
        if (cap >= SCHED_NONE)
            tern_panic("scheduler heap full");
        x->heap = xrealloc(x->heap, cap * sizeof(*x->heap));
        x->heap_cap = (uint32_t)cap;
    }
    heap_set(x, x->heap_len++, h);
    heap_up(x, x->heap_len - 1);
}

void
sidx_heap_remove(struct sched_index *x, uint32_t h)
{
    uint32_t i = x->v[h].heap_idx, moved;
    TERN_ASSERT(i < x->heap_len && x->heap[i] == h);
    x->v[h].heap_idx = SCHED_NONE;
    if (--x->heap_len == i)
        return;
    moved = x->heap[x->heap_len];
    heap_set(x, i, moved);
    heap_down(x, i);
    if (x->v[moved].heap_idx == i)
        heap_up(x, i);
}

uint32_t
sidx_heap_top(const struct sched_index *x)
{
    return x->heap_len > 0 ? x->heap[0] : SCHED_NONE;
}

void
sidx_heap_fix(struct sched_index *x, uint32_t h)
{
    uint32_t i = x->v[h].heap_idx;
    TERN_ASSERT(i < x->heap_len);
    heap_up(x, i);
    heap_down(x, x->v[h].heap_idx);
}

void
sidx_heap_all_due(struct sched_index *x, uint32_t now_s)
{
    for (uint32_t i = 0; i < x->heap_len; i++) {
        struct sched_ent *e = &x->v[x->heap[i]];
        if (e->next_s > now_s)
            e->next_s = now_s;
    }
    /* Ties now order by qid alone: build the heap again (Floyd, O(n)). */
    for (uint32_t i = x->heap_len / 2; i-- > 0;)
        heap_down(x, i);
}

uint32_t
sched_oldest_arrival_s(const struct sched *s)
{
    uint32_t oldest = 0;
    for (uint32_t h = 0; h < s->idx.n; h++) {
        const struct sched_ent *e = &s->idx.v[h];
        if ((e->flags & ENT_USED) && !(e->flags & ENT_DELETED) &&
            (oldest == 0 || e->arrival_s < oldest))
            oldest = e->arrival_s;
    }
    return oldest;
}

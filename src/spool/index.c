/*
 * The index of live messages (qid -> where its MSG and newest STATE records
 * are) and the table of segments. An open-addressing hash of 32-bit slot
 * numbers into a slab of entries keeps a live message at about 60 bytes, so
 * a million queued messages cost tens of megabytes. Callers hold sp->mu.
 */
#include "spool/spool_int.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"

#define TAB_EMPTY 0u
#define TAB_GONE  UINT32_MAX

void
index_init(struct index *x)
{
    memset(x, 0, sizeof(*x));
}

void
index_fini(struct index *x)
{
    free(x->v);
    free(x->free_list);
    free(x->tab);
    memset(x, 0, sizeof(*x));
}

static size_t
hash64(uint64_t k)
{
    /* qids are mostly a clock: mix the bits (splitmix64's finaliser). */
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebull;
    k ^= k >> 31;
    return (size_t)k;
}

/* The table position of qid, or of the first usable empty/gone slot when
 * absent (*found false). */
static size_t
probe(const struct index *x, uint64_t qid, bool *found)
{
    size_t mask = x->tab_cap - 1, i = hash64(qid) & mask, gone = SIZE_MAX;
    for (;;) {
        uint32_t t = x->tab[i];
        if (t == TAB_EMPTY) {
            *found = false;
            return gone != SIZE_MAX ? gone : i;
        }
        if (t == TAB_GONE) {
            if (gone == SIZE_MAX)
                gone = i;
        } else if (x->v[t - 1].qid == qid) {
            *found = true;
            return i;
        }
        i = (i + 1) & mask;
    }
}

static void
rehash(struct index *x, size_t cap)
{
    uint32_t *old = x->tab;
    size_t old_cap = x->tab_cap;
    x->tab = xcalloc(cap, sizeof(*x->tab));
    x->tab_cap = cap;
    x->tab_used = 0;
    for (size_t i = 0; i < old_cap; i++) {
        bool found;
        size_t j;
        if (old[i] == TAB_EMPTY || old[i] == TAB_GONE)
            continue;
        j = probe(x, x->v[old[i] - 1].qid, &found);
        x->tab[j] = old[i];
        x->tab_used++;
    }
    free(old);
}

struct ient *
index_get(struct index *x, uint64_t qid)
{
    bool found;
    size_t i;
    if (x->tab_cap == 0)
        return NULL;
    i = probe(x, qid, &found);
    return found ? &x->v[x->tab[i] - 1] : NULL;
}

static uint32_t
slot_alloc(struct index *x)
{
    if (x->n_free > 0)
        return x->free_list[--x->n_free];
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 1024;
        TERN_ASSERT(cap < UINT32_MAX - 1);
        x->v = xrealloc(x->v, cap * sizeof(*x->v));
        x->cap = cap;
    }
    return (uint32_t)x->n++;
}

struct ient *
index_put(struct index *x, uint64_t qid, bool *created)
{
    bool found;
    size_t i;
    uint32_t s;
    /* Keep the load (gone slots included) under 1/2. */
    if (x->tab_cap == 0 || (x->tab_used + 1) * 2 > x->tab_cap) {
        size_t cap = x->tab_cap ? x->tab_cap : 2048;
        while ((x->live + 1) * 2 > cap / 2)
            cap *= 2;
        rehash(x, cap);
    }
    i = probe(x, qid, &found);
    if (found) {
        *created = false;
        return &x->v[x->tab[i] - 1];
    }
    s = slot_alloc(x);
    if (x->tab[i] == TAB_EMPTY)
        x->tab_used++;
    x->tab[i] = s + 1;
    memset(&x->v[s], 0, sizeof(x->v[s]));
    x->v[s].qid = qid;
    x->live++;
    *created = true;
    return &x->v[s];
}

void
index_del(struct index *x, uint64_t qid)
{
    bool found;
    size_t i;
    uint32_t s;
    if (x->tab_cap == 0)
        return;
    i = probe(x, qid, &found);
    if (!found)
        return;
    s = x->tab[i] - 1;
    x->tab[i] = TAB_GONE;
    x->v[s].dead = true;
    if (x->n_free == x->cap_free) {
        x->cap_free = x->cap_free ? x->cap_free * 2 : 1024;
        x->free_list = xrealloc(x->free_list, x->cap_free * sizeof(*x->free_list));
    }
    x->free_list[x->n_free++] = s;
    x->live--;
}

struct seg *
segtab_find(struct segtab *t, uint64_t seq)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->v[mid]->seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->n && t->v[lo]->seq == seq ? t->v[lo] : NULL;
}

void
segtab_add(struct segtab *t, struct seg *s)
{
    TERN_ASSERT(t->n == 0 || t->v[t->n - 1]->seq < s->seq);
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->v = xrealloc(t->v, t->cap * sizeof(*t->v));
    }
    t->v[t->n++] = s;
}

void
segtab_remove_first(struct segtab *t)
{
    TERN_ASSERT(t->n > 0);
    memmove(t->v, t->v + 1, (t->n - 1) * sizeof(*t->v));
    t->n--;
}

void
seg_ref(struct seg *s)
{
    s->refs++;
}

static void
seg_free(struct seg *s)
{
    if (s->fd >= 0)
        close(s->fd); /* read-only by now: nothing to lose */
    free(s->recs);
    free(s);
}

void
seg_unref_locked(struct spool *sp, struct seg *s)
{
    TERN_ASSERT(s->refs > 0);
    if (--s->refs == 0 && s->doomed)
        seg_free(s);
}

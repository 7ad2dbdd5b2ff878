/*
 * Open-addressing hash map from message id to a location (a 64-bit and a
 * 32-bit word), linear probing with backward-shift deletion so lookups never
 * walk tombstones. Used by the segment log (id -> segment) and by every
 * recovery (the rebuilt index of live messages).
 */
#include "proto.h"

#include <stdlib.h>

#define EMPTY UINT64_MAX

struct slot {
    uint64_t id, a;
    uint32_t b;
};

struct idmap {
    struct slot *s;
    size_t cap, n; /* cap is a power of two */
};

static size_t
hash(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static void
alloc_slots(struct idmap *m, size_t cap)
{
    m->s = xmalloc(cap * sizeof(*m->s));
    for (size_t i = 0; i < cap; i++)
        m->s[i].id = EMPTY;
    m->cap = cap;
    m->n = 0;
}

struct idmap *
idmap_new(size_t hint)
{
    struct idmap *m = xcalloc(1, sizeof(*m));
    size_t cap = 64;
    while (cap < hint * 2)
        cap *= 2;
    alloc_slots(m, cap);
    return m;
}

void
idmap_free(struct idmap *m)
{
    if (m == NULL)
        return;
    free(m->s);
    free(m);
}

static void
grow(struct idmap *m)
{
    struct slot *old = m->s;
    size_t oldcap = m->cap;
    alloc_slots(m, oldcap * 2);
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].id != EMPTY)
            idmap_put(m, old[i].id, old[i].a, old[i].b);
    free(old);
}

bool
idmap_put(struct idmap *m, uint64_t id, uint64_t a, uint32_t b)
{
    size_t i;
    if (id == EMPTY)
        die("idmap: reserved id");
    if ((m->n + 1) * 10 > m->cap * 7)
        grow(m);
    for (i = hash(id) & (m->cap - 1); m->s[i].id != EMPTY; i = (i + 1) & (m->cap - 1))
        if (m->s[i].id == id)
            return false;
    m->s[i] = (struct slot){ id, a, b };
    m->n++;
    return true;
}

static struct slot *
find(const struct idmap *m, uint64_t id)
{
    for (size_t i = hash(id) & (m->cap - 1); m->s[i].id != EMPTY; i = (i + 1) & (m->cap - 1))
        if (m->s[i].id == id)
            return &m->s[i];
    return NULL;
}

bool
idmap_get(const struct idmap *m, uint64_t id, uint64_t *a, uint32_t *b)
{
    struct slot *s = find(m, id);
    if (s == NULL)
        return false;
    if (a != NULL)
        *a = s->a;
    if (b != NULL)
        *b = s->b;
    return true;
}

bool
idmap_del(struct idmap *m, uint64_t id, uint64_t *a)
{
    struct slot *s = find(m, id);
    size_t i, j, mask = m->cap - 1;
    if (s == NULL)
        return false;
    if (a != NULL)
        *a = s->a;
    /* backward shift: move later members of the run into the hole when
     * their home slot does not lie between the hole and themselves */
    i = (size_t)(s - m->s);
    for (j = (i + 1) & mask; m->s[j].id != EMPTY; j = (j + 1) & mask) {
        size_t home = hash(m->s[j].id) & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->s[i] = m->s[j];
            i = j;
        }
    }
    m->s[i].id = EMPTY;
    m->n--;
    return true;
}

size_t
idmap_count(const struct idmap *m)
{
    return m->n;
}

/*
 * Chained hash map with FNV-1a hashing. Small and predictable; the keys are
 * queue ids, job ids and destination names, never attacker-chosen in bulk
 * (the seed is still randomised to keep collisions unpredictable).
 */
#include "map.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "util.h"

struct map_entry {
    struct map_entry *next;
    uint64_t hash;
    void *val;
    size_t klen;
    unsigned char key[];
};

struct map {
    struct map_entry **b;
    size_t nb, count;
    uint64_t seed;
};

static uint64_t
map_hash(const struct map *m, const void *key, size_t klen)
{
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ULL ^ m->seed;
    for (size_t i = 0; i < klen; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

struct map *
map_new(void)
{
    struct map *m = xcalloc(1, sizeof(*m));
    m->nb = 16;
    m->b = xcalloc(m->nb, sizeof(*m->b));
    if (getrandom(&m->seed, sizeof(m->seed), GRND_NONBLOCK) != sizeof(m->seed))
        m->seed = (uint64_t)tern_mono_ms();
    return m;
}

void
map_free(struct map *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nb; i++) {
        struct map_entry *e = m->b[i], *n;
        for (; e; e = n) {
            n = e->next;
            free(e);
        }
    }
    free(m->b);
    free(m);
}

static void
map_grow(struct map *m)
{
    size_t nb = m->nb * 2;
    struct map_entry **b = xcalloc(nb, sizeof(*b));
    for (size_t i = 0; i < m->nb; i++) {
        struct map_entry *e = m->b[i], *n;
        for (; e; e = n) {
            n = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
}

static struct map_entry **
map_find(const struct map *m, const void *key, size_t klen, uint64_t h)
{
    struct map_entry **pp = &m->b[h & (m->nb - 1)];
    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->hash == h && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0)
            return pp;
    }
    return pp;
}

void
map_put(struct map *m, const void *key, size_t klen, void *val)
{
    uint64_t h = map_hash(m, key, klen);
    struct map_entry **pp = map_find(m, key, klen, h), *e;
    size_t sz;
    if (*pp) {
        (*pp)->val = val;
        return;
    }
    if (!size_add(sizeof(*e), klen, &sz))
        tern_panic("map key too long");
    e = xmalloc(sz);
    e->next = NULL;
    e->hash = h;
    e->val = val;
    e->klen = klen;
    memcpy(e->key, key, klen);
    *pp = e;
    if (++m->count > m->nb)
        map_grow(m);
}

void *
map_get(const struct map *m, const void *key, size_t klen)
{
    struct map_entry **pp = map_find(m, key, klen, map_hash(m, key, klen));
    return *pp ? (*pp)->val : NULL;
}

void *
map_del(struct map *m, const void *key, size_t klen)
{
    struct map_entry **pp = map_find(m, key, klen, map_hash(m, key, klen)), *e = *pp;
    void *v;
    if (e == NULL)
        return NULL;
    *pp = e->next;
    v = e->val;
    free(e);
    m->count--;
    return v;
}

size_t
map_count(const struct map *m)
{
    return m->count;
}

void
map_each(const struct map *m, void (*fn)(const void *key, size_t klen, void *val, void *arg),
    void *arg)
{
    for (size_t i = 0; i < m->nb; i++) {
        for (struct map_entry *e = m->b[i]; e; e = e->next)
            fn(e->key, e->klen, e->val, arg);
    }
}

void
map_put_u64(struct map *m, uint64_t k, void *val)
{
    map_put(m, &k, sizeof(k), val);
}

void *
map_get_u64(const struct map *m, uint64_t k)
{
    return map_get(m, &k, sizeof(k));
}

void *
map_del_u64(struct map *m, uint64_t k)
{
    return map_del(m, &k, sizeof(k));
}

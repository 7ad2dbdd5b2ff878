/*
 * The fair queue in front of the crypt worker: one FIFO per client key and a
 * ring of the keys that have items waiting, served one item per key per turn
 * (round-robin). Bounded per key and in all. The queue links items the caller
 * owns; it owns only its per-key slots. Not thread safe: the worker guards it.
 */
#include "auth.h"

#include <stdlib.h>
#include <string.h>

#include "util/map.h"
#include "util/util.h"

struct fq_slot {
    struct fq_slot *next; /* in the ring of keys with items waiting */
    struct auth_fairq_item *head, *tail;
    size_t n;
    size_t klen;
    unsigned char key[AUTH_KEY_MAX];
};

struct auth_fairq {
    struct map *slots;            /* key -> struct fq_slot (owned, also in the ring) */
    struct fq_slot *first, *last; /* whose turn it is ... who was served last */
    size_t per_key_max, total_max, total;
};

struct auth_fairq *
auth_fairq_new(size_t per_key_max, size_t total_max)
{
    struct auth_fairq *q = xcalloc(1, sizeof(*q));
    q->slots = map_new();
    q->per_key_max = per_key_max;
    q->total_max = total_max;
    return q;
}

void
auth_fairq_free(struct auth_fairq *q)
{
    if (q == NULL)
        return;
    while (q->first != NULL) {
        struct fq_slot *s = q->first;
        q->first = s->next;
        free(s);
    }
    map_free(q->slots);
    free(q);
}

static void
ring_append(struct auth_fairq *q, struct fq_slot *s)
{
    s->next = NULL;
    if (q->last != NULL)
        q->last->next = s;
    else
        q->first = s;
    q->last = s;
}

int
auth_fairq_push(struct auth_fairq *q, const void *key, size_t klen, struct auth_fairq_item *it)
{
    struct fq_slot *s = map_get(q->slots, key, klen);
    TERN_ASSERT(klen <= AUTH_KEY_MAX);
    if (q->total >= q->total_max || (s != NULL && s->n >= q->per_key_max))
        return -1;
    if (s == NULL) {
        /* A key that had nothing waiting joins at the end of the turn. */
        s = xcalloc(1, sizeof(*s));
        memcpy(s->key, key, klen);
        s->klen = klen;
        map_put(q->slots, key, klen, s);
        ring_append(q, s);
    }
    it->next = NULL;
    if (s->tail != NULL)
        s->tail->next = it;
    else
        s->head = it;
    s->tail = it;
    s->n++;
    q->total++;
    return 0;
}

struct auth_fairq_item *
auth_fairq_pop(struct auth_fairq *q)
{
    struct fq_slot *s = q->first;
    struct auth_fairq_item *it;
    if (s == NULL)
        return NULL;
    it = s->head;
    s->head = it->next;
    if (s->head == NULL)
        s->tail = NULL;
    it->next = NULL;
    s->n--;
    q->total--;
    q->first = s->next;
    if (q->first == NULL)
        q->last = NULL;
    if (s->n > 0) {
        ring_append(q, s); /* its next item waits for every other key's turn */
    } else {
        map_del(q->slots, s->key, s->klen);
        free(s);
    }
    return it;
}

size_t
auth_fairq_len(const struct auth_fairq *q)
{
    return q->total;
}

size_t
auth_fairq_key_len(const struct auth_fairq *q, const void *key, size_t klen)
{
    const struct fq_slot *s = map_get(q->slots, key, klen);
    return s != NULL ? s->n : 0;
}

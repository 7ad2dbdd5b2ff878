/*
 * DNS answer cache: positive answers and NXDOMAIN/NODATA (never temporary
 * failures) keyed by "qtype/name", each kept for its TTL. At most
 * max_entries live at once; the least recently used one goes first. The
 * cache owns every entry and its record copy.
 */
#include "dns/dns_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "util/map.h"
#include "util/util.h"

#define CACHE_KEY_MAX (DNS_NAME_MAX + 16)

struct centry {
    TAILQ_ENTRY(centry) lru; /* head = most recently used */
    char key[CACHE_KEY_MAX];
    size_t klen;
    enum dns_rc rc;
    bool secure; /* the answer carried the AD bit (RFC 4035 §3.2.3) */
    int64_t expires_ms;
    void *recs; /* owned */
    size_t n;
};

struct dns_cache {
    struct map *m; /* key -> struct centry (owned through lru) */
    TAILQ_HEAD(centry_lru_head, centry) lru;
    size_t n, max;
};

struct dns_cache *
dns_cache_new(size_t max_entries)
{
    struct dns_cache *c = xcalloc(1, sizeof(*c));
    c->m = map_new();
    c->max = max_entries ? max_entries : 1;
    TAILQ_INIT(&c->lru);
    return c;
}

static void
centry_drop(struct dns_cache *c, struct centry *e)
{
    map_del(c->m, e->key, e->klen);
    TAILQ_REMOVE(&c->lru, e, lru);
    c->n--;
    free(e->recs);
    free(e);
}

void
dns_cache_clear(struct dns_cache *c)
{
    struct centry *e;
    while ((e = TAILQ_FIRST(&c->lru)) != NULL)
        centry_drop(c, e);
}

void
dns_cache_free(struct dns_cache *c)
{
    if (c == NULL)
        return;
    dns_cache_clear(c);
    map_free(c->m);
    free(c);
}

static size_t
make_key(char *key, int qtype, const char *name)
{
    int n = snprintf(key, CACHE_KEY_MAX, "%d/%s", qtype, name);
    if (n < 0 || (size_t)n >= CACHE_KEY_MAX)
        return 0;
    return (size_t)n;
}

void
dns_cache_put(struct dns_cache *c, int qtype, const char *name, enum dns_rc rc, bool secure,
    const void *recs, size_t n, size_t rec_size, uint32_t ttl_s, int64_t now_ms)
{
    char key[CACHE_KEY_MAX];
    size_t klen = make_key(key, qtype, name), bytes;
    struct centry *e;
    if (klen == 0 || ttl_s == 0 || rc == DNS_TEMP || !size_mul(n, rec_size, &bytes))
        return;
    e = map_get(c->m, key, klen);
    if (e != NULL)
        centry_drop(c, e);
    while (c->n >= c->max)
        centry_drop(c, TAILQ_LAST(&c->lru, centry_lru_head));
    e = xcalloc(1, sizeof(*e));
    memcpy(e->key, key, klen + 1);
    e->klen = klen;
    e->rc = rc;
    e->secure = secure;
    e->expires_ms = now_ms + (int64_t)ttl_s * 1000;
    e->n = n;
    if (bytes > 0) {
        e->recs = xmalloc(bytes);
        memcpy(e->recs, recs, bytes);
    }
    map_put(c->m, e->key, e->klen, e);
    TAILQ_INSERT_HEAD(&c->lru, e, lru);
    c->n++;
}

bool
dns_cache_get(struct dns_cache *c, int qtype, const char *name, int64_t now_ms, enum dns_rc *rc,
    bool *secure, const void **recs, size_t *n)
{
    char key[CACHE_KEY_MAX];
    size_t klen = make_key(key, qtype, name);
    struct centry *e = klen ? map_get(c->m, key, klen) : NULL;
    if (e == NULL)
        return false;
    if (e->expires_ms <= now_ms) {
        centry_drop(c, e);
        return false;
    }
    TAILQ_REMOVE(&c->lru, e, lru);
    TAILQ_INSERT_HEAD(&c->lru, e, lru);
    *rc = e->rc;
    *secure = e->secure;
    *recs = e->recs;
    *n = e->n;
    return true;
}

size_t
dns_cache_count(const struct dns_cache *c)
{
    return c->n;
}

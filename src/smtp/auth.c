/*
 * AUTH building blocks without I/O on sockets: base64 and the PLAIN/LOGIN
 * decoders, the failure throttle and auth_sender_login (the users table and
 * crypt(3) checks are util/userdb.c). The throttle belongs to the loop
 * thread.
 */
#include "auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/map.h"
#include "util/parse.h"
#include "util/util.h"

void
auth_creds_clear(struct auth_creds *c)
{
    explicit_bzero(c, sizeof(*c));
}

/* ---- base64 ---- */

int
auth_b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
    *out_len = 0;
    if (len == 1 && in[0] == '=')
        return 0; /* RFC 4954 §4: an empty response */
    if (len == 0)
        return -1;
    return b64_decode(in, len, out, cap, out_len);
}

/* ---- PLAIN and LOGIN ---- */

enum auth_dec
auth_plain_decode(const char *b64, size_t len, struct auth_creds *c)
{
    unsigned char raw[AUTH_LINE_MAX / 4 * 3 + 3];
    size_t n;
    enum auth_dec r = AUTH_DEC_BAD;
    const unsigned char *nul1, *nul2, *authcid, *pw;
    size_t zlen, ulen, plen;
    auth_creds_clear(c);
    if (len > AUTH_LINE_MAX || auth_b64_decode(b64, len, raw, sizeof(raw), &n) < 0)
        goto out;
    /* RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd */
    nul1 = memchr(raw, '\0', n);
    if (nul1 == NULL)
        goto out;
    nul2 = memchr(nul1 + 1, '\0', n - (size_t)(nul1 + 1 - raw));
    if (nul2 == NULL || memchr(nul2 + 1, '\0', n - (size_t)(nul2 + 1 - raw)) != NULL)
        goto out;
    zlen = (size_t)(nul1 - raw);
    authcid = nul1 + 1;
    ulen = (size_t)(nul2 - authcid);
    pw = nul2 + 1;
    plen = n - (size_t)(pw - raw);
    r = AUTH_DEC_DENIED;
    if (ulen == 0 || plen == 0 || ulen > AUTH_USER_MAX || plen > AUTH_PASS_MAX)
        goto out;
    /* No proxy authorisation: an authzid must name the user itself. */
    if (zlen != 0 && (zlen != ulen || memcmp(raw, authcid, ulen) != 0))
        goto out;
    memcpy(c->user, authcid, ulen);
    memcpy(c->pass, pw, plen);
    r = AUTH_DEC_OK;
out:
    explicit_bzero(raw, sizeof(raw));
    if (r != AUTH_DEC_OK)
        auth_creds_clear(c);
    return r;
}

enum auth_dec
auth_login_decode(const char *b64, size_t len, char *out, size_t cap)
{
    unsigned char raw[AUTH_LINE_MAX / 4 * 3 + 3];
    size_t n;
    enum auth_dec r = AUTH_DEC_BAD;
    TERN_ASSERT(cap > 0);
    out[0] = '\0';
    if (len > AUTH_LINE_MAX || auth_b64_decode(b64, len, raw, sizeof(raw), &n) < 0)
        goto out;
    if (memchr(raw, '\0', n) != NULL)
        goto out;
    r = AUTH_DEC_DENIED;
    if (n == 0 || n >= cap)
        goto out;
    memcpy(out, raw, n);
    out[n] = '\0';
    r = AUTH_DEC_OK;
out:
    explicit_bzero(raw, sizeof(raw));
    return r;
}

/* ---- throttle ---- */

/* charged counts the attempts of the current window that did not succeed:
 * confirmed failures plus the inflight checks not answered yet. */
struct throttle_entry {
    uint32_t charged;
    uint32_t inflight;
    int64_t window_start;
    int64_t locked_until;
};

struct auth_throttle {
    struct map *m; /* key -> owned struct throttle_entry */
    size_t max;
};

struct auth_throttle *
auth_throttle_new(size_t max_entries)
{
    struct auth_throttle *t = xcalloc(1, sizeof(*t));
    t->m = map_new();
    t->max = max_entries;
    return t;
}

static void
free_entry(const void *k, size_t kl, void *v, void *arg)
{
    free(v);
}

void
auth_throttle_free(struct auth_throttle *t)
{
    if (t == NULL)
        return;
    map_each(t->m, free_entry, NULL);
    map_free(t->m);
    free(t);
}

size_t
auth_throttle_count(const struct auth_throttle *t)
{
    return map_count(t->m);
}

size_t
auth_throttle_key(const struct sockaddr *sa, unsigned char key[AUTH_KEY_MAX])
{
    if (sa->sa_family == AF_INET) {
        memcpy(key, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        return 4;
    }
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
    if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
        memcpy(key, s6->sin6_addr.s6_addr + 12, 4);
        return 4;
    }
    /* One IPv6 client usually owns a whole /64. */
    memcpy(key, s6->sin6_addr.s6_addr, 8);
    return 8;
}

void
auth_throttle_key_str(const void *key, size_t klen, char *out, size_t cap)
{
    unsigned char a6[16] = { 0 };
    char tmp[INET6_ADDRSTRLEN];
    if (cap == 0)
        return;
    out[0] = '\0';
    if (klen == 4) {
        inet_ntop(AF_INET, key, out, (socklen_t)cap);
    } else if (klen == 8) {
        memcpy(a6, key, 8);
        if (inet_ntop(AF_INET6, a6, tmp, sizeof(tmp)) != NULL)
            snprintf(out, cap, "%s/64", tmp);
    }
}

/* A new window starts when the old one is over; checks still in flight
 * stay charged to it. */
static void
roll_window(struct throttle_entry *e, int64_t now, const struct auth_limits *lim)
{
    if (e->charged == 0 || now - e->window_start > lim->window_ms) {
        e->charged = e->inflight;
        e->window_start = now;
    }
}

bool
auth_throttle_blocked(const struct auth_throttle *t, const void *key, size_t klen, int64_t now_ms,
    const struct auth_limits *lim)
{
    const struct throttle_entry *e = map_get(t->m, key, klen);
    uint32_t charged;
    if (e == NULL)
        return false;
    if (e->locked_until > now_ms)
        return true;
    charged = now_ms - e->window_start > lim->window_ms ? e->inflight : e->charged;
    return charged >= lim->max_failures;
}

struct evict_ctx {
    int64_t now, window;
    unsigned char (*keys)[AUTH_KEY_MAX];
    size_t *lens;
    size_t n;
};

/* An entry is stale when it locks nothing, has no check in flight and its
 * window is over. */
static void
collect_stale(const void *k, size_t kl, void *v, void *arg)
{
    struct evict_ctx *c = arg;
    const struct throttle_entry *e = v;
    if (e->locked_until <= c->now && e->inflight == 0 && c->now - e->window_start > c->window &&
        kl <= AUTH_KEY_MAX) {
        memcpy(c->keys[c->n], k, kl);
        c->lens[c->n++] = kl;
    }
}

static void
evict(struct auth_throttle *t, int64_t now, int64_t window_ms)
{
    struct evict_ctx c = { now, window_ms, NULL, NULL, 0 };
    size_t n = map_count(t->m);
    c.keys = xcalloc(n + 1, sizeof(*c.keys));
    c.lens = xcalloc(n + 1, sizeof(*c.lens));
    map_each(t->m, collect_stale, &c);
    for (size_t i = 0; i < c.n; i++)
        free(map_del(t->m, c.keys[i], c.lens[i]));
    free(c.keys);
    free(c.lens);
}

/* The entry of key, made when missing; NULL when the table is full. */
static struct throttle_entry *
entry_get(struct auth_throttle *t, const void *key, size_t klen, int64_t now,
    const struct auth_limits *lim)
{
    struct throttle_entry *e = map_get(t->m, key, klen);
    if (e != NULL)
        return e;
    if (map_count(t->m) >= t->max)
        evict(t, now, lim->window_ms);
    if (map_count(t->m) >= t->max)
        return NULL;
    e = xcalloc(1, sizeof(*e));
    e->window_start = now;
    map_put(t->m, key, klen, e);
    return e;
}

/* Lock the address once its answered failures reach the limit. */
static bool
lock_if_due(struct throttle_entry *e, int64_t now, const struct auth_limits *lim)
{
    if (e->charged - e->inflight < lim->max_failures)
        return false;
    e->locked_until = now + lim->lockout_ms;
    e->charged = e->inflight; /* a new window starts after the lockout */
    e->window_start = now;
    return true;
}

bool
auth_throttle_begin(struct auth_throttle *t, const void *key, size_t klen, int64_t now_ms,
    const struct auth_limits *lim)
{
    struct throttle_entry *e = entry_get(t, key, klen, now_ms, lim);
    if (e == NULL || e->locked_until > now_ms)
        return false;
    roll_window(e, now_ms, lim);
    if (e->charged >= lim->max_failures)
        return false;
    e->charged++;
    e->inflight++;
    return true;
}

bool
auth_throttle_end(struct auth_throttle *t, const void *key, size_t klen, bool failed,
    int64_t now_ms, const struct auth_limits *lim)
{
    struct throttle_entry *e = map_get(t->m, key, klen);
    if (e == NULL || e->inflight == 0)
        return false; /* never charged by begin */
    e->inflight--;
    if (!failed) {
        if (e->charged > e->inflight)
            e->charged--;
        return false;
    }
    if (e->charged < e->inflight + 1)
        e->charged = e->inflight + 1; /* the window rolled over meanwhile */
    return lock_if_due(e, now_ms, lim);
}

bool
auth_throttle_fail(struct auth_throttle *t, const void *key, size_t klen, int64_t now_ms,
    const struct auth_limits *lim)
{
    struct throttle_entry *e = entry_get(t, key, klen, now_ms, lim);
    if (e == NULL)
        return false;
    roll_window(e, now_ms, lim);
    if (e->charged < UINT32_MAX)
        e->charged++;
    return lock_if_due(e, now_ms, lim);
}

/* ---- auth_sender_login ---- */

static bool
item_matches(const char *it, size_t il, const char *sender)
{
    const char *at;
    if (il == 2 && memcmp(it, "<>", 2) == 0)
        return sender[0] == '\0';
    if (sender[0] == '\0')
        return false;
    if (it[0] == '@') {
        at = strrchr(sender, '@');
        return at != NULL && str_ieq(it + 1, il - 1, at + 1);
    }
    return str_ieq(it, il, sender);
}

bool
auth_sender_allowed(const char *spec, const char *user, const char *sender)
{
    size_t ulen = strlen(user);
    if (spec == NULL || *spec == '\0')
        return true;
    for (const char *p = spec; *p != '\0';) {
        size_t n = strcspn(p, " \t");
        const char *eq = memchr(p, '=', n);
        /* User names match exactly (they are case-sensitive in the file). */
        if (eq != NULL && (size_t)(eq - p) == ulen && memcmp(p, user, ulen) == 0) {
            for (const char *it = eq + 1; it < p + n;) {
                size_t il = strcspn(it, ",");
                if (il > (size_t)(p + n - it))
                    il = (size_t)(p + n - it);
                if (il > 0 && item_matches(it, il, sender))
                    return true;
                it += il + 1;
            }
        }
        p += n;
        p += strspn(p, " \t");
    }
    return false;
}

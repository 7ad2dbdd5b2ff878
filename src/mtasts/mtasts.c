/*
 * The MTA-STS resolver on the relay's loop. A request looks up the
 * domain's _mta-sts TXT record (RFC 8461 §3.1), then answers from the
 * cached policy when its id matches and it is fresh, or fetches the policy
 * file (one fetch per domain at a time; requests wait for it). The cache
 * lives in memory and in SPOOL/mta-sts/DOMAIN (replaced atomically), so a
 * restart keeps what was known. A policy in force stays in force until its
 * max_age ends, whatever the TXT record or a failed refresh say (§5.1).
 */
#include "mtasts/mtasts.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/event.h>

#include "dns/dns.h"
#include "util/curlev.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/map.h"
#include "util/parse.h"
#include "util/util.h"

#define ENTS_MAX    4096  /* domains kept in memory; idle ones are dropped beyond */
#define REFRESH_S   86400 /* refresh a policy this long before its max_age ends... */
#define RESOLVE_MAX 4     /* addresses of mta-sts.DOMAIN handed to libcurl */

struct fetch;

struct ent {
    char domain[MTASTS_DOMAIN_MAX + 1];
    struct mtasts_cached c; /* c.text NULL: no policy known */
    struct fetch *fetch;    /* in flight, or NULL */
    TAILQ_HEAD(, mtasts_req) waiting;
};

struct mtasts_req {
    struct mtasts *m;
    struct ent *e;
    TAILQ_ENTRY(mtasts_req) link; /* in m->reqs, or e->waiting */
    bool waiting;
    bool bad; /* not a domain name: no policy, nothing cached */
    char domain[MTASTS_DOMAIN_MAX + 1];
    struct dns_query *q;
    mtasts_cb cb;
    void *arg;
};

struct fetch {
    struct mtasts *m;
    struct ent *e;
    char id[MTASTS_ID_MAX + 1]; /* the TXT id that asked for it */
    char host[MTASTS_DOMAIN_MAX + 16];
    struct dns_query *q;
    CURL *easy;
    struct curl_slist *resolve;
    struct buf body;
    bool too_big;
};

struct mtasts {
    struct event_base *base;
    struct dns *dns;
    struct curlev *cv;
    char *dir; /* SPOOL/mta-sts */
    char *ca_file;
    struct map *ents;              /* domain -> struct ent * */
    TAILQ_HEAD(, mtasts_req) reqs; /* looking up TXT */
};

static void fetch_free(struct fetch *f);

/* ---- entries and the cache files ---- */

/* The cache file at path into c: 1 when there is none, 0, or -1 with err
 * when it is damaged (or too large to be ours). */
static int
cache_read(const char *path, struct mtasts_cached *c, char *err, size_t errcap)
{
    struct buf b = BUF_INIT;
    int rc;
    if (fs_read_file(path, &b, MTASTS_POLICY_MAX + 1024) < 0) {
        rc = errno == ENOENT ? 1 : -1;
        if (rc < 0)
            snprintf(err, errcap, "cannot read: %s", strerror(errno));
    } else {
        rc = mtasts_cache_parse(b.data, b.len, c, err, errcap);
    }
    buf_fini(&b);
    return rc;
}

static void
ent_load(struct mtasts *m, struct ent *e)
{
    char path[4400], err[256];
    if (m->dir == NULL)
        return; /* no cache (ternctl dns check) */
    snprintf(path, sizeof(path), "%s/%s", m->dir, e->domain);
    if (cache_read(path, &e->c, err, sizeof(err)) < 0) {
        struct logline l;
        memset(&e->c, 0, sizeof(e->c));
        log_begin(&l, LOG_WARN, NULL, "mtasts", "cache_damaged");
        log_str(&l, "domain", e->domain);
        log_str(&l, "reason", err);
        log_end(&l);
    }
}

static void
ent_save(struct mtasts *m, struct ent *e)
{
    struct buf b = BUF_INIT, err = BUF_INIT;
    if (m->dir == NULL)
        return;
    mtasts_cache_format(&e->c, &b);
    if (fs_replace_file(m->dir, e->domain, b.data, b.len, &err) < 0) {
        struct logline l;
        log_begin(&l, LOG_WARN, NULL, "mtasts", "cache_not_saved");
        log_str(&l, "domain", e->domain);
        log_strn(&l, "reason", err.data ? err.data : "", err.len);
        log_end(&l);
    }
    buf_fini(&b);
    buf_fini(&err);
}

static void
ent_free(struct ent *e)
{
    TERN_ASSERT(e->fetch == NULL && TAILQ_EMPTY(&e->waiting));
    mtasts_cached_fini(&e->c);
    free(e);
}

static void
sweep_one(const void *key, size_t klen, void *val, void *arg)
{
    struct ent *e = val;
    struct map *idle = arg;
    (void)key;
    (void)klen;
    if (e->fetch == NULL && TAILQ_EMPTY(&e->waiting))
        map_put_str(idle, e->domain, e);
}

static void
drop_one(const void *key, size_t klen, void *val, void *arg)
{
    struct mtasts *m = arg;
    map_del(m->ents, key, klen);
    ent_free(val);
}

/* Beyond ENTS_MAX domains, the idle ones leave memory (their files stay,
 * and are read again when asked for). */
static void
ents_trim(struct mtasts *m)
{
    struct map *idle;
    if (map_count(m->ents) < ENTS_MAX)
        return;
    idle = map_new();
    map_each(m->ents, sweep_one, idle);
    map_each(idle, drop_one, m);
    map_free(idle);
}

static struct ent *
ent_get(struct mtasts *m, const char *domain)
{
    struct ent *e = map_get_str(m->ents, domain);
    if (e != NULL)
        return e;
    ents_trim(m);
    e = xcalloc(1, sizeof(*e));
    snprintf(e->domain, sizeof(e->domain), "%s", domain);
    TAILQ_INIT(&e->waiting);
    ent_load(m, e);
    map_put_str(m->ents, e->domain, e);
    return e;
}

/* A cached policy within its max_age (RFC 8461 §5.1: in force until then). */
static bool
ent_valid(const struct ent *e, int64_t now_s)
{
    return e->c.text != NULL && now_s < e->c.fetched_s + e->c.policy.max_age_s;
}

/* ---- answering ---- */

static void
answer(struct mtasts_req *r, const struct ent *e, enum mtasts_fail fail, const char *why)
{
    struct mtasts_answer a = { MTASTS_NONE, NULL, NULL, 0, fail, why ? why : "" };
    mtasts_cb cb = r->cb;
    void *arg = r->arg;
    if (e != NULL && ent_valid(e, tern_now_ms() / 1000) && e->c.policy.mode != MTASTS_NONE) {
        a.mode = e->c.policy.mode;
        a.policy = &e->c.policy;
        a.text = e->c.text;
        a.len = e->c.len;
        a.fail = MTASTS_FAIL_NONE;
        a.err = "";
    }
    free(r);
    cb(arg, &a);
}

static void
log_fetch(const struct ent *e, const char *event, const char *why)
{
    struct logline l;
    log_begin(&l, why ? LOG_WARN : LOG_INFO, NULL, "mtasts", event);
    log_str(&l, "domain", e->domain);
    if (e->c.text != NULL) {
        log_str(&l, "id", e->c.id);
        log_str(&l, "mode", mtasts_mode_name(e->c.policy.mode));
        log_int(&l, "max_age", e->c.policy.max_age_s);
    }
    if (why != NULL)
        log_str(&l, "reason", why);
    log_end(&l);
}

/* The fetch ended: keep what it got (or why not) and answer its waiters. */
static void
fetch_end(struct fetch *f, enum mtasts_fail fail, const char *why)
{
    struct mtasts *m = f->m;
    struct ent *e = f->e;
    struct mtasts_policy p;
    char perr[200];
    int64_t now_s = tern_now_ms() / 1000;
    if (fail == MTASTS_FAIL_NONE &&
        mtasts_policy_parse(f->body.data, f->body.len, &p, perr, sizeof(perr)) < 0) {
        fail = MTASTS_FAIL_INVALID;
        why = perr;
    }
    if (fail == MTASTS_FAIL_NONE) {
        mtasts_cached_fini(&e->c);
        snprintf(e->c.id, sizeof(e->c.id), "%s", f->id);
        e->c.fetched_s = now_s;
        e->c.text = xstrndup(f->body.data, f->body.len);
        e->c.len = f->body.len;
        e->c.policy = p;
        e->c.err_s = 0;
        e->c.err[0] = '\0';
        log_fetch(e, "policy_fetched", NULL);
    } else {
        e->c.err_s = now_s;
        snprintf(e->c.err, sizeof(e->c.err), "%s", why);
        log_fetch(e, ent_valid(e, now_s) ? "refresh_failed" : "fetch_failed", e->c.err);
    }
    ent_save(m, e);
    e->fetch = NULL;
    fetch_free(f);
    while (!TAILQ_EMPTY(&e->waiting)) {
        struct mtasts_req *r = TAILQ_FIRST(&e->waiting);
        TAILQ_REMOVE(&e->waiting, r, link);
        answer(r, e, fail, e->c.err);
    }
}

/* ---- the HTTPS fetch (RFC 8461 §3.3) ---- */

static size_t
body_write(char *p, size_t size, size_t n, void *arg)
{
    struct fetch *f = arg;
    size_t len = size * n;
    if (f->body.len + len > MTASTS_POLICY_MAX) {
        f->too_big = true;
        return 0; /* libcurl ends the transfer with a write error */
    }
    buf_append(&f->body, p, len);
    return len;
}

/* Content-Type text/plain, parameters allowed (§3.3). */
static bool
type_ok(const char *ct)
{
    size_t n = 10;
    if (ct == NULL || strncasecmp(ct, "text/plain", n) != 0)
        return false;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t';
}

static void
http_done(void *arg, CURL *easy, CURLcode res)
{
    struct fetch *f = arg;
    long status = 0;
    const char *ct = NULL;
    char why[256];
    enum mtasts_fail fail = MTASTS_FAIL_NONE;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &ct);
    if (f->too_big) {
        fail = MTASTS_FAIL_INVALID;
        snprintf(why, sizeof(why), "policy longer than %d bytes", MTASTS_POLICY_MAX);
    } else if (res == CURLE_PEER_FAILED_VERIFICATION || res == CURLE_SSL_CACERT_BADFILE ||
               res == CURLE_SSL_ISSUER_ERROR) {
        fail = MTASTS_FAIL_WEBPKI;
        snprintf(why, sizeof(why), "https://%s: %s", f->host, curl_easy_strerror(res));
    } else if (res != CURLE_OK) {
        fail = MTASTS_FAIL_FETCH;
        snprintf(why, sizeof(why), "https://%s: %s", f->host, curl_easy_strerror(res));
    } else if (status != 200) {
        /* §3.3: only 200 counts; redirects are not followed. */
        fail = MTASTS_FAIL_FETCH;
        snprintf(why, sizeof(why), "https://%s answered HTTP %ld", f->host, status);
    } else if (!type_ok(ct)) {
        fail = MTASTS_FAIL_INVALID;
        snprintf(why, sizeof(why), "policy served as %.100s, not text/plain", ct ? ct : "nothing");
    }
    curl_easy_cleanup(easy);
    f->easy = NULL;
    fetch_end(f, fail, fail == MTASTS_FAIL_NONE ? NULL : why);
}

/* mta-sts.DOMAIN resolved by tern's own resolver: libcurl gets the
 * addresses (CURLOPT_RESOLVE) so that it asks no other resolver and
 * starts no resolver thread. */
static void
addr_cb(void *arg, const struct dns_addr_result *r)
{
    struct fetch *f = arg;
    struct mtasts *m = f->m;
    char url[MTASTS_DOMAIN_MAX + 64], res[MTASTS_DOMAIN_MAX + 16 + RESOLVE_MAX * 50], why[300];
    size_t n;
    CURL *e;
    f->q = NULL;
    if (r->rc != DNS_OK || r->n == 0) {
        snprintf(why, sizeof(why), "%s: %s", f->host, r->err[0] ? r->err : "no address");
        fetch_end(f, MTASTS_FAIL_FETCH, why);
        return;
    }
    n = (size_t)snprintf(res, sizeof(res), "%s:443:", f->host);
    for (size_t i = 0; i < r->n && i < RESOLVE_MAX; i++) {
        char a[INET6_ADDRSTRLEN];
        const struct sockaddr_storage *ss = &r->addr[i];
        if (ss->ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, a, sizeof(a));
        else
            inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, a, sizeof(a));
        n += (size_t)snprintf(res + n, sizeof(res) - n,
            ss->ss_family == AF_INET6 ? "%s[%s]" : "%s%s", i ? "," : "", a);
    }
    snprintf(url, sizeof(url), "https://%s/.well-known/mta-sts.txt", f->host);
    e = curl_easy_init();
    if (e == NULL) {
        fetch_end(f, MTASTS_FAIL_FETCH, "cannot start an HTTPS request");
        return;
    }
    f->resolve = curl_slist_append(NULL, res);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curlev_easy_defaults(e, "https", (long)MTASTS_FETCH_MS, m->ca_file);
    curl_easy_setopt(e, CURLOPT_RESOLVE, f->resolve);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)MTASTS_POLICY_MAX);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
    if (curlev_add(m->cv, e, http_done, f) < 0) {
        curl_easy_cleanup(e);
        fetch_end(f, MTASTS_FAIL_FETCH, "cannot start an HTTPS request");
        return;
    }
    f->easy = e;
}

static void
fetch_start(struct mtasts *m, struct ent *e, const char *id)
{
    struct fetch *f;
    if (e->fetch != NULL)
        return;
    f = xcalloc(1, sizeof(*f));
    f->m = m;
    f->e = e;
    snprintf(f->id, sizeof(f->id), "%s", id);
    snprintf(f->host, sizeof(f->host), "mta-sts.%s", e->domain);
    buf_init(&f->body);
    e->fetch = f;
    f->q = dns_lookup_addr(m->dns, f->host, 443, IPFAM_PREFER_V4, addr_cb, f);
}

static void
fetch_free(struct fetch *f)
{
    if (f == NULL)
        return;
    dns_cancel(f->q);
    if (f->easy != NULL) {
        curlev_remove(f->m->cv, f->easy);
        curl_easy_cleanup(f->easy);
    }
    curl_slist_free_all(f->resolve);
    buf_fini(&f->body);
    free(f);
}

/* ---- the TXT record ---- */

static void
txt_cb(void *arg, const struct dns_rr_result *r)
{
    struct mtasts_req *req = arg;
    struct mtasts *m = req->m;
    struct ent *e;
    const char *recs[DNS_RR_MAX];
    size_t lens[DNS_RR_MAX], n = 0;
    char id[MTASTS_ID_MAX + 1] = "", err[200] = "";
    int rc = 1;
    int64_t now_s = tern_now_ms() / 1000;
    req->q = NULL;
    TAILQ_REMOVE(&m->reqs, req, link);
    if (req->bad) {
        answer(req, NULL, MTASTS_FAIL_NONE, NULL);
        return;
    }
    e = ent_get(m, req->domain);
    if (r->rc == DNS_OK) {
        for (size_t i = 0; i < r->n; i++) {
            recs[n] = r->rr[i].data;
            lens[n++] = r->rr[i].len;
        }
        rc = mtasts_txt_parse(recs, lens, n, id, err, sizeof(err));
    }
    if (rc != 0) {
        /* No (usable) record: a policy in force stays until its max_age
         * (§5.1); otherwise the domain has none. */
        if (rc < 0)
            log_fetch(e, "txt_invalid", err);
        answer(req, e, MTASTS_FAIL_NONE, NULL);
        return;
    }
    if (ent_valid(e, now_s) && strcmp(e->c.id, id) == 0) {
        /* Fresh and current; refreshed in the background as max_age nears
         * its end (§5.1), so mail never waits for it. */
        int64_t left = e->c.fetched_s + e->c.policy.max_age_s - now_s;
        if (left < REFRESH_S && left < e->c.policy.max_age_s / 2 && e->c.err_s + 300 < now_s)
            fetch_start(m, e, id);
        answer(req, e, MTASTS_FAIL_NONE, NULL);
        return;
    }
    /* A new id, or nothing cached: fetch, and answer once it ends. */
    req->e = e;
    req->waiting = true;
    TAILQ_INSERT_TAIL(&e->waiting, req, link);
    fetch_start(m, e, id);
}

struct mtasts_req *
mtasts_get(struct mtasts *m, const char *domain, mtasts_cb cb, void *arg)
{
    struct mtasts_req *r = xcalloc(1, sizeof(*r));
    char name[MTASTS_DOMAIN_MAX + 16];
    r->m = m;
    r->cb = cb;
    r->arg = arg;
    snprintf(r->domain, sizeof(r->domain), "%s", domain);
    str_lower(r->domain);
    {
        size_t n = strlen(r->domain);
        if (n > 0 && r->domain[n - 1] == '.')
            r->domain[n - 1] = '\0';
    }
    /* Only a plain domain name reaches a file name or a URL; anything else
     * has no policy (answered from the loop, after a lookup that RFC 6761
     * §6.4 guarantees to fail). */
    r->bad = !str_is_domain(r->domain, strlen(r->domain), false) || r->domain[0] == '.';
    if (r->bad)
        snprintf(name, sizeof(name), "invalid");
    else
        snprintf(name, sizeof(name), "_mta-sts.%s", r->domain);
    TAILQ_INSERT_TAIL(&m->reqs, r, link);
    r->q = dns_lookup_rr(m->dns, name, DNS_RR_TXT, txt_cb, r);
    return r;
}

void
mtasts_cancel(struct mtasts_req *r)
{
    if (r == NULL)
        return;
    if (r->waiting) {
        TAILQ_REMOVE(&r->e->waiting, r, link);
    } else {
        dns_cancel(r->q);
        TAILQ_REMOVE(&r->m->reqs, r, link);
    }
    free(r);
}

/* ---- life ---- */

struct mtasts *
mtasts_new(struct event_base *base, struct dns *dns, const struct mtasts_opts *o, struct buf *err)
{
    struct mtasts *m = xcalloc(1, sizeof(*m));
    m->base = base;
    m->dns = dns;
    if (o->spool_dir != NULL) {
        size_t n = strlen(o->spool_dir) + sizeof(MTASTS_DIR) + 1;
        m->dir = xmalloc(n);
        snprintf(m->dir, n, "%s/%s", o->spool_dir, MTASTS_DIR);
    }
    m->ca_file = o->ca_file ? xstrdup(o->ca_file) : NULL;
    m->ents = map_new();
    TAILQ_INIT(&m->reqs);
    if (m->dir != NULL && mkdir(m->dir, 0700) < 0 && errno != EEXIST) {
        buf_printf(err, "cannot make %s: %s\n", m->dir, strerror(errno));
        mtasts_free(m);
        return NULL;
    }
    m->cv = curlev_new(base, err);
    if (m->cv == NULL) {
        mtasts_free(m);
        return NULL;
    }
    return m;
}

void
mtasts_set_ca_file(struct mtasts *m, const char *ca_file)
{
    free(m->ca_file);
    m->ca_file = ca_file ? xstrdup(ca_file) : NULL;
}

static void
ent_drop(const void *key, size_t klen, void *val, void *arg)
{
    struct ent *e = val;
    (void)key;
    (void)klen;
    (void)arg;
    while (!TAILQ_EMPTY(&e->waiting)) {
        struct mtasts_req *r = TAILQ_FIRST(&e->waiting);
        TAILQ_REMOVE(&e->waiting, r, link);
        free(r);
    }
    fetch_free(e->fetch);
    e->fetch = NULL;
    ent_free(e);
}

void
mtasts_free(struct mtasts *m)
{
    if (m == NULL)
        return;
    while (!TAILQ_EMPTY(&m->reqs)) {
        struct mtasts_req *r = TAILQ_FIRST(&m->reqs);
        TAILQ_REMOVE(&m->reqs, r, link);
        dns_cancel(r->q);
        free(r);
    }
    if (m->ents != NULL) {
        map_each(m->ents, ent_drop, NULL);
        map_free(m->ents);
    }
    curlev_free(m->cv);
    free(m->dir);
    free(m->ca_file);
    free(m);
}

/* ---- for ternctl ---- */

int
mtasts_cache_load(
    const char *spool_dir, const char *domain, struct mtasts_cached *c, char *err, size_t errcap)
{
    char path[4500];
    if (!str_is_domain(domain, strlen(domain), false) ||
        snprintf(path, sizeof(path), "%s/%s/%s", spool_dir, MTASTS_DIR, domain) >=
            (int)sizeof(path))
        return 1;
    return cache_read(path, c, err, errcap);
}

void
mtasts_render(const char *spool_dir, const char *domain, int64_t now_s, struct buf *out)
{
    char err[256];
    struct mtasts_cached c;
    int rc = mtasts_cache_load(spool_dir, domain, &c, err, sizeof(err));
    if (rc == 1) {
        buf_printf(out, "mta-sts: nothing cached for %s\n", domain);
        return;
    }
    if (rc < 0) {
        buf_printf(out, "mta-sts: cache file damaged: %s\n", err);
        return;
    }
    if (c.text == NULL) {
        buf_printf(out, "mta-sts: no policy\n");
    } else {
        buf_printf(out, "mta-sts: id %s mode %s max_age %llds age %llds%s\n", c.id,
            mtasts_mode_name(c.policy.mode), (long long)c.policy.max_age_s,
            (long long)(now_s - c.fetched_s),
            now_s >= c.fetched_s + c.policy.max_age_s ? " (expired)" : "");
        for (size_t i = 0; i < c.policy.n_mx; i++)
            buf_printf(out, "mta-sts: mx %s\n", c.policy.mx[i]);
    }
    if (c.err_s > 0)
        buf_printf(
            out, "mta-sts: last fetch error %llds ago: %s\n", (long long)(now_s - c.err_s), c.err);
    mtasts_cached_fini(&c);
}

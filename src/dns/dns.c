/*
 * c-ares glue and the lookup front end. A channel's sockets are watched with
 * one libevent event each (ARES_OPT_SOCK_STATE_CB) plus a timer for
 * ares_timeout(). A query (MX, or A and/or AAAA for addresses) is made of
 * sub-lookups, one per record type, each answered from the cache or by
 * ares_query; results reach the caller from a per-query event, never inside
 * the lookup call. The dns object owns every query; a cancelled query's
 * sub-lookups stay allocated (orphaned) until c-ares lets go of them. A
 * channel replaced by dns_set_servers is destroyed once it holds no query.
 * Raw lookups (dns_lookup_rr: TXT, PTR, MX, A, AAAA as struct dns_rr_result)
 * are cached in packed form under their own keys.
 */
#include "dns/dns.h"

#include <ares.h>
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <unistd.h>

#include "dns/dns_int.h"
#include "util/parse.h"
#include "util/util.h"

#define DNS_CLASS_IN 1

struct dsock {
    LIST_ENTRY(dsock) link;
    ares_socket_t fd;
    struct event *ev;
};

struct dns_chan {
    LIST_ENTRY(dns_chan) link; /* in dns.old once replaced */
    struct dns *d;
    ares_channel ch;
    struct event *timer;
    LIST_HEAD(, dsock) socks;
    size_t pending; /* sub-lookups c-ares still holds */
};

/* One record type of one name. */
struct dns_sub {
    struct dns_query *q; /* NULL once orphaned by a cancel */
    struct dns_chan *chan;
    const struct rr_ops *ops;
    bool in_ares;
    enum dns_rc rc;
    bool secure; /* the answer had the AD bit */
    char err[160];
    void *recs; /* owned: ops->rec_size each */
    size_t n;
};

enum q_kind { Q_MX, Q_ADDR, Q_RR };

struct dns_query {
    LIST_ENTRY(dns_query) link;
    struct dns *d;
    enum q_kind kind;
    dns_mx_cb mx_cb;
    dns_addr_cb addr_cb;
    dns_rr_cb rr_cb;
    void *arg;
    char name[DNS_NAME_MAX + 1]; /* lowercased, no trailing dot */
    uint16_t port;
    enum ip_family fam;
    struct dns_sub *subs[2];
    size_t n_subs, n_done;
    struct event *deliver;
    union {
        struct dns_mx_result mx;
        struct dns_addr_result addr;
        struct dns_rr_result *rr; /* owned; Q_RR */
    } res;
};

struct dns {
    struct event_base *base;
    struct dns_chan *chan; /* in use for new lookups */
    LIST_HEAD(, dns_chan) old;
    struct event *reap; /* destroys idle replaced channels */
    LIST_HEAD(, dns_query) queries;
    struct dns_cache *cache;
    struct dns_hosts *hosts; /* the hosts file (hosts.c) */
    uint64_t rnd;
    bool dying;
};

/* ---- record types ---- */

struct rr_ops {
    int qtype;
    size_t rec_size;
    /* A successful ares_query answer to records (owned, malloc'd). */
    enum dns_rc (*decode)(
        const unsigned char *abuf, int alen, void **recs, size_t *n, char *err, size_t errcap);
    int cache_key; /* the qtype, or qtype | RAW_KEY for the packed raw form */
};

#define RAW_KEY 0x10000

static enum dns_rc
decode_mx(const unsigned char *abuf, int alen, void **recs, size_t *n, char *err, size_t errcap)
{
    struct dns_mx *mx = xcalloc(DNS_MX_MAX, sizeof(*mx));
    enum dns_rc rc = dns_mx_decode(abuf, alen, mx, n, err, errcap);
    if (*n == 0)
        FREE_NULL(&mx);
    *recs = mx;
    return rc;
}

static enum dns_rc
decode_a(const unsigned char *abuf, int alen, void **recs, size_t *n, char *err, size_t errcap)
{
    struct ares_addrttl ttls[DNS_ADDRS_MAX];
    int na = DNS_ADDRS_MAX;
    struct in_addr *out;
    int st = ares_parse_a_reply(abuf, alen, NULL, ttls, &na);
    *n = 0;
    if (st != ARES_SUCCESS || na <= 0) {
        snprintf(err, errcap, "%s", ares_strerror(st != ARES_SUCCESS ? st : ARES_ENODATA));
        return st == ARES_SUCCESS || st == ARES_ENODATA ? DNS_NODATA : DNS_TEMP;
    }
    out = xcalloc((size_t)na, sizeof(*out));
    for (int i = 0; i < na; i++)
        out[i] = ttls[i].ipaddr;
    *recs = out;
    *n = (size_t)na;
    return DNS_OK;
}

static enum dns_rc
decode_aaaa(const unsigned char *abuf, int alen, void **recs, size_t *n, char *err, size_t errcap)
{
    struct ares_addr6ttl ttls[DNS_ADDRS_MAX];
    int na = DNS_ADDRS_MAX;
    struct in6_addr *out;
    int st = ares_parse_aaaa_reply(abuf, alen, NULL, ttls, &na);
    *n = 0;
    if (st != ARES_SUCCESS || na <= 0) {
        snprintf(err, errcap, "%s", ares_strerror(st != ARES_SUCCESS ? st : ARES_ENODATA));
        return st == ARES_SUCCESS || st == ARES_ENODATA ? DNS_NODATA : DNS_TEMP;
    }
    out = xcalloc((size_t)na, sizeof(*out));
    for (int i = 0; i < na; i++)
        memcpy(&out[i], &ttls[i].ip6addr, sizeof(out[i]));
    *recs = out;
    *n = (size_t)na;
    return DNS_OK;
}

static const struct rr_ops rr_mx = { DNS_T_MX, sizeof(struct dns_mx), decode_mx, DNS_T_MX };
static const struct rr_ops rr_a = { DNS_T_A, sizeof(struct in_addr), decode_a, DNS_T_A };
static const struct rr_ops rr_aaaa = { DNS_T_AAAA, sizeof(struct in6_addr), decode_aaaa,
    DNS_T_AAAA };

/* Raw records: the "records" are the bytes of the packed blob (rr.c). */
#define RAW_DECODER(fn, type)                                                                      \
    static enum dns_rc fn(                                                                         \
        const unsigned char *abuf, int alen, void **recs, size_t *n, char *err, size_t errcap)     \
    {                                                                                              \
        return dns_rr_pack(abuf, alen, type, recs, n, err, errcap);                                \
    }
RAW_DECODER(decode_raw_a, DNS_RR_A)
RAW_DECODER(decode_raw_aaaa, DNS_RR_AAAA)
RAW_DECODER(decode_raw_mx, DNS_RR_MX)
RAW_DECODER(decode_raw_txt, DNS_RR_TXT)
RAW_DECODER(decode_raw_ptr, DNS_RR_PTR)
RAW_DECODER(decode_raw_tlsa, DNS_RR_TLSA)

static const struct rr_ops rr_raw[] = {
    { DNS_RR_A, 1, decode_raw_a, DNS_RR_A | RAW_KEY },
    { DNS_RR_AAAA, 1, decode_raw_aaaa, DNS_RR_AAAA | RAW_KEY },
    { DNS_RR_MX, 1, decode_raw_mx, DNS_RR_MX | RAW_KEY },
    { DNS_RR_TXT, 1, decode_raw_txt, DNS_RR_TXT | RAW_KEY },
    { DNS_RR_PTR, 1, decode_raw_ptr, DNS_RR_PTR | RAW_KEY },
    { DNS_RR_TLSA, 1, decode_raw_tlsa, DNS_RR_TLSA | RAW_KEY },
};

/* Reason text for a non-temporary result (temporary ones carry c-ares's). */
static void
rc_text(enum dns_rc rc, char *err, size_t cap)
{
    static const char *const text[] = {
        [DNS_OK] = "",
        [DNS_NXDOMAIN] = "domain name not found (NXDOMAIN)",
        [DNS_NODATA] = "no records of this type",
        [DNS_NULLMX] = "null MX (RFC 7505)",
        [DNS_TEMP] = "temporary DNS failure",
        [DNS_BADNAME] = "not a valid domain name",
    };
    snprintf(err, cap, "%s", (size_t)rc < TERN_ARRAY_LEN(text) ? text[rc] : "?");
}

/* ---- channels ---- */

/* The channel's timer: when the next query times out. c-ares 1.18 finds
 * that by walking every pending query, so it is asked only when the timer
 * is not already set or has just fired (a query sent since times out later
 * than the one the timer waits for), and the timer fires at most every
 * CHAN_TICK_MS: many queries waiting on a slow server cost a walk a tick,
 * not one per packet. */
#define CHAN_TICK_MS 50

static void
chan_arm(struct dns_chan *c, bool fired)
{
    struct timeval tv, *tvp;
    if (!fired && evtimer_pending(c->timer, NULL))
        return;
    tvp = ares_timeout(c->ch, NULL, &tv);
    if (tvp == NULL) {
        evtimer_del(c->timer);
        return;
    }
    if (tv.tv_sec == 0 && tv.tv_usec < CHAN_TICK_MS * 1000)
        tv.tv_usec = CHAN_TICK_MS * 1000;
    evtimer_add(c->timer, &tv);
}

static void
sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_chan *c = arg;
    /* May free this very event through sock_state_cb: touch only c after. */
    ares_process_fd(
        c->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD, (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    chan_arm(c, false);
}

static void
chan_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_chan *c = arg;
    ares_process_fd(c->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    chan_arm(c, true);
}

static void
sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns_chan *c = data;
    struct dsock *s;
    LIST_FOREACH(s, &c->socks, link)
    {
        if (s->fd == fd)
            break;
    }
    if (s != NULL && s->ev != NULL) {
        event_free(s->ev);
        s->ev = NULL;
    }
    if (!readable && !writable) {
        if (s != NULL) {
            LIST_REMOVE(s, link);
            free(s);
        }
        return;
    }
    if (s == NULL) {
        s = xcalloc(1, sizeof(*s));
        s->fd = fd;
        LIST_INSERT_HEAD(&c->socks, s, link);
    }
    s->ev = event_new(c->d->base, fd,
        (short)(EV_PERSIST | (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0)), sock_cb, c);
    if (s->ev == NULL || event_add(s->ev, NULL) < 0)
        tern_panic("cannot watch resolver socket %d", (int)fd);
}

/* "a:port,[v6]:port" for ares_set_servers_ports_csv; only IP literals. */
static int
servers_csv(const struct hostport *servers, size_t n, struct buf *csv, struct buf *err)
{
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        unsigned port = servers[i].port ? servers[i].port : 53;
        if (dns_literal(servers[i].host, 53, &ss, &len) < 0) {
            buf_printf(err, "dns_resolvers: %s is not an IP address", servers[i].host);
            return -1;
        }
        buf_printf(csv, ss.ss_family == AF_INET6 ? "%s[%s]:%u" : "%s%s:%u", i ? "," : "",
            servers[i].host, port);
    }
    return 0;
}

static void
chan_destroy(struct dns_chan *c)
{
    struct dsock *s;
    if (c == NULL)
        return;
    /* Runs every pending sub-lookup callback with ARES_EDESTRUCTION. */
    ares_destroy(c->ch);
    while ((s = LIST_FIRST(&c->socks)) != NULL) {
        LIST_REMOVE(s, link);
        if (s->ev != NULL)
            event_free(s->ev);
        free(s);
    }
    event_free(c->timer);
    free(c);
}

static struct dns_chan *
chan_new(struct dns *d, const struct hostport *servers, size_t n, struct buf *err)
{
    struct dns_chan *c = xcalloc(1, sizeof(*c));
    struct ares_options opts;
    struct buf csv = BUF_INIT;
    int st;
    c->d = d;
    LIST_INIT(&c->socks);
    c->timer = evtimer_new(d->base, chan_timer_cb, c);
    if (c->timer == NULL)
        tern_panic("cannot create resolver timer");
    memset(&opts, 0, sizeof(opts));
    opts.sock_state_cb = sock_state_cb;
    opts.sock_state_cb_data = c;
    /* Short tries: a dead server must not stall deliveries for long. */
    opts.timeout = DNS_TIMEOUT_MS;
    opts.tries = DNS_TRIES;
    st = ares_init_options(
        &c->ch, &opts, ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (st != ARES_SUCCESS) {
        buf_printf(err, "cannot start the c-ares resolver: %s", ares_strerror(st));
        event_free(c->timer);
        free(c);
        return NULL;
    }
    if (n > 0) {
        if (servers_csv(servers, n, &csv, err) < 0)
            st = ARES_EBADSTR;
        else if ((st = ares_set_servers_ports_csv(c->ch, csv.data)) != ARES_SUCCESS)
            buf_printf(err, "dns_resolvers: %s", ares_strerror(st));
        buf_fini(&csv);
        if (st != ARES_SUCCESS) {
            chan_destroy(c);
            return NULL;
        }
    }
    return c;
}

static void
reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns *d = arg;
    struct dns_chan *c, *next;
    for (c = LIST_FIRST(&d->old); c != NULL; c = next) {
        next = LIST_NEXT(c, link);
        if (c->pending == 0) {
            LIST_REMOVE(c, link);
            chan_destroy(c);
        }
    }
}

/* ---- life cycle ---- */

static uint32_t
dns_rnd(void *arg)
{
    struct dns *d = arg;
    /* xorshift64*: spreading equal MX preferences needs no strong randomness. */
    d->rnd ^= d->rnd >> 12;
    d->rnd ^= d->rnd << 25;
    d->rnd ^= d->rnd >> 27;
    return (uint32_t)((d->rnd * 2685821657736338717ull) >> 32);
}

struct dns *
dns_new(struct event_base *base, const struct hostport *servers, size_t n, struct buf *err)
{
    struct dns *d;
    int st = ares_library_init(ARES_LIB_INIT_ALL);
    if (st != ARES_SUCCESS) {
        buf_printf(err, "cannot initialise c-ares: %s", ares_strerror(st));
        return NULL;
    }
    d = xcalloc(1, sizeof(*d));
    d->base = base;
    LIST_INIT(&d->old);
    LIST_INIT(&d->queries);
    d->chan = chan_new(d, servers, n, err);
    if (d->chan == NULL) {
        free(d);
        ares_library_cleanup();
        return NULL;
    }
    d->reap = event_new(base, -1, 0, reap_cb, d);
    if (d->reap == NULL)
        tern_panic("cannot create resolver event");
    d->cache = dns_cache_new(DNS_CACHE_MAX);
    d->hosts = dns_hosts_load();
    if (getrandom(&d->rnd, sizeof(d->rnd), GRND_NONBLOCK) != (ssize_t)sizeof(d->rnd))
        d->rnd = (uint64_t)tern_mono_ms() ^ ((uint64_t)getpid() << 32);
    d->rnd |= 1; /* xorshift needs a non-zero state */
    return d;
}

static void query_free(struct dns_query *q);

void
dns_free(struct dns *d)
{
    struct dns_query *q;
    struct dns_chan *c;
    if (d == NULL)
        return;
    d->dying = true;
    while ((q = LIST_FIRST(&d->queries)) != NULL)
        dns_cancel(q);
    chan_destroy(d->chan);
    while ((c = LIST_FIRST(&d->old)) != NULL) {
        LIST_REMOVE(c, link);
        chan_destroy(c);
    }
    event_free(d->reap);
    dns_cache_free(d->cache);
    dns_hosts_free(d->hosts);
    free(d);
    ares_library_cleanup();
}

const char *
dns_hosts_name(const struct dns *d, const struct sockaddr *sa)
{
    return dns_hosts_find(d->hosts, sa);
}

int
dns_set_servers(struct dns *d, const struct hostport *servers, size_t n, struct buf *err)
{
    struct dns_chan *c = chan_new(d, servers, n, err);
    if (c == NULL)
        return -1;
    /* Read again with the resolver's configuration. */
    dns_hosts_free(d->hosts);
    d->hosts = dns_hosts_load();
    /* c-ares 1.18 refuses new servers while queries are pending: replace the
     * channel and let the old one finish what it holds. */
    LIST_INSERT_HEAD(&d->old, d->chan, link);
    d->chan = c;
    event_active(d->reap, 0, 0);
    dns_cache_clear(d->cache);
    return 0;
}

/* ---- queries ---- */

static void
sub_free(struct dns_sub *s)
{
    free(s->recs);
    free(s);
}

static void
query_free(struct dns_query *q)
{
    for (size_t i = 0; i < q->n_subs; i++) {
        if (q->subs[i]->in_ares)
            q->subs[i]->q = NULL; /* freed when c-ares calls back */
        else
            sub_free(q->subs[i]);
    }
    if (q->kind == Q_RR)
        dns_rr_result_free(q->res.rr);
    event_free(q->deliver);
    free(q);
}

static void
finish_mx(struct dns_query *q)
{
    struct dns_sub *s = q->subs[0];
    struct dns_mx_result *r = &q->res.mx;
    r->rc = s->rc;
    r->secure = s->secure;
    snprintf(r->err, sizeof(r->err), "%s", s->err);
    if (s->rc == DNS_OK) {
        r->n = s->n < DNS_MX_MAX ? s->n : DNS_MX_MAX;
        memcpy(r->mx, s->recs, r->n * sizeof(r->mx[0]));
        dns_mx_sort(r->mx, r->n, dns_rnd, q->d);
    }
}

static void
addr_add(struct dns_addr_result *r, int family, const void *a, uint16_t port)
{
    struct sockaddr_storage *ss = &r->addr[r->n];
    if (r->n >= DNS_ADDRS_MAX)
        return;
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, a, sizeof(sin->sin_addr));
        r->len[r->n++] = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, a, sizeof(sin6->sin6_addr));
        r->len[r->n++] = sizeof(*sin6);
    }
}

/* Addresses in sub order (the family preference); the result class: any
 * address wins, then a temporary failure (the other family may exist), then
 * NXDOMAIN, then NODATA. */
static void
finish_addr(struct dns_query *q)
{
    struct dns_addr_result *r = &q->res.addr;
    static const enum dns_rc order[] = { DNS_TEMP, DNS_BADNAME, DNS_NXDOMAIN, DNS_NODATA };
    /* Secure only when every answer was: an unvalidated AAAA beside a
     * validated A could still be forged (RFC 7672 §2.2). */
    r->secure = q->n_subs > 0;
    for (size_t i = 0; i < q->n_subs; i++)
        r->secure = r->secure && q->subs[i]->secure;
    for (size_t i = 0; i < q->n_subs; i++) {
        const struct dns_sub *s = q->subs[i];
        int fam = s->ops->qtype == DNS_T_A ? AF_INET : AF_INET6;
        for (size_t k = 0; s->rc == DNS_OK && k < s->n; k++)
            addr_add(r, fam, (const char *)s->recs + k * s->ops->rec_size, q->port);
    }
    if (r->n > 0) {
        r->rc = DNS_OK;
        return;
    }
    for (size_t k = 0; k < TERN_ARRAY_LEN(order); k++) {
        for (size_t i = 0; i < q->n_subs; i++) {
            if (q->subs[i]->rc == order[k]) {
                r->rc = order[k];
                snprintf(r->err, sizeof(r->err), "%s", q->subs[i]->err);
                return;
            }
        }
    }
    r->rc = DNS_NODATA;
    rc_text(DNS_NODATA, r->err, sizeof(r->err));
}

static void
finish_rr(struct dns_query *q)
{
    struct dns_sub *s = q->subs[0];
    struct dns_rr_result *r = q->res.rr;
    r->secure = s->secure;
    snprintf(r->err, sizeof(r->err), "%s", s->err);
    if (s->rc != DNS_OK) {
        r->rc = s->rc;
        return;
    }
    if (dns_rr_unpack(s->recs, s->n, r) < 0 || r->n == 0) {
        r->rc = DNS_TEMP;
        snprintf(r->err, sizeof(r->err), "malformed cached answer");
    }
}

static void
sub_done(struct dns_query *q)
{
    if (++q->n_done < q->n_subs)
        return;
    if (q->kind == Q_MX)
        finish_mx(q);
    else if (q->kind == Q_RR)
        finish_rr(q);
    else
        finish_addr(q);
    event_active(q->deliver, 0, 0);
}

static void
sub_cache(struct dns *d, const char *name, struct dns_sub *s, const unsigned char *abuf, int alen)
{
    struct dns_ttl_info ti;
    if (abuf == NULL || alen <= 0 || dns_packet_ttl(abuf, (size_t)alen, &ti) < 0)
        return;
    if ((s->rc == DNS_OK || s->rc == DNS_NULLMX) && ti.has_answer)
        dns_cache_put(d->cache, s->ops->cache_key, name, s->rc, s->secure, s->recs, s->n,
            s->ops->rec_size, ti.answer < DNS_TTL_MAX ? ti.answer : DNS_TTL_MAX, tern_mono_ms());
    else if ((s->rc == DNS_NXDOMAIN || s->rc == DNS_NODATA) && ti.has_neg)
        /* RFC 2308 §5: without an SOA a negative answer is not cached. */
        dns_cache_put(d->cache, s->ops->cache_key, name, s->rc, s->secure, NULL, 0,
            s->ops->rec_size, ti.neg < DNS_NEG_TTL_MAX ? ti.neg : DNS_NEG_TTL_MAX, tern_mono_ms());
}

struct sub_ctx {
    struct dns_sub *s;
    char name[DNS_NAME_MAX + 1];
};

static void
ares_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct sub_ctx *ctx = arg;
    struct dns_sub *s = ctx->s;
    struct dns *d = s->chan->d;
    s->in_ares = false;
    s->chan->pending--;
    if (status == ARES_EDESTRUCTION || d->dying) {
        if (s->q == NULL)
            sub_free(s);
        free(ctx);
        return;
    }
    if (s->chan->pending == 0 && s->chan != d->chan)
        event_active(d->reap, 0, 0);
    /* ares_send hands over any complete answer: its RCODE is read here, as
     * ares_query would, with the AD bit beside it. */
    if (status == ARES_SUCCESS)
        status = dns_answer_status(abuf, alen > 0 ? (size_t)alen : 0, &s->secure);
    s->rc = dns_classify(status);
    if (s->rc == DNS_TEMP)
        s->secure = false;
    if (s->rc == DNS_OK)
        s->rc = s->ops->decode(abuf, alen, &s->recs, &s->n, s->err, sizeof(s->err));
    else if (s->rc == DNS_TEMP)
        snprintf(s->err, sizeof(s->err), "%s", ares_strerror(status));
    if (s->rc != DNS_OK && s->rc != DNS_TEMP)
        rc_text(s->rc, s->err, sizeof(s->err));
    if (s->chan == d->chan)
        sub_cache(d, ctx->name, s, abuf, alen); /* not answers of replaced servers */
    if (s->q == NULL)
        sub_free(s); /* cancelled; the answer is still cached */
    else
        sub_done(s->q);
    free(ctx);
}

static struct dns_sub *
sub_add(struct dns_query *q, const struct rr_ops *ops)
{
    struct dns_sub *s = xcalloc(1, sizeof(*s));
    s->q = q;
    s->ops = ops;
    q->subs[q->n_subs++] = s;
    return s;
}

static void
sub_launch(struct dns_query *q, struct dns_sub *s)
{
    struct dns *d = q->d;
    const void *recs;
    size_t n;
    struct sub_ctx *ctx;
    unsigned char *qbuf = NULL;
    int qlen = 0, st;
    if (dns_cache_get(
            d->cache, s->ops->cache_key, q->name, tern_mono_ms(), &s->rc, &s->secure, &recs, &n)) {
        if (n > 0) {
            s->recs = xmalloc(n * s->ops->rec_size);
            memcpy(s->recs, recs, n * s->ops->rec_size);
        }
        s->n = n;
        if (s->rc != DNS_OK)
            rc_text(s->rc, s->err, sizeof(s->err));
        sub_done(q);
        return;
    }
    ctx = xcalloc(1, sizeof(*ctx));
    ctx->s = s;
    memcpy(ctx->name, q->name, sizeof(ctx->name));
    s->chan = d->chan;
    s->chan->pending++;
    s->in_ares = true;
    /* The query is built here rather than by ares_query so that it can ask
     * for validation: the AD bit set in a query asks the resolver to say
     * whether it validated the answer (RFC 6840 §5.7), without the RRSIG
     * records a DO bit would bring. No search list is appended: mail
     * domains are absolute (RFC 5321 §2.3.5). ares_send sets the ID and
     * may call back at once. */
    st = ares_create_query(q->name, DNS_CLASS_IN, s->ops->qtype, 0, 1, &qbuf, &qlen, 0);
    if (st != ARES_SUCCESS || qlen < 12) {
        if (qbuf != NULL)
            ares_free_string(qbuf);
        ares_cb(ctx, st != ARES_SUCCESS ? st : ARES_EBADQUERY, 0, NULL, 0);
        return;
    }
    qbuf[3] |= 0x20;
    ares_send(s->chan->ch, qbuf, qlen, ares_cb, ctx);
    ares_free_string(qbuf);
    chan_arm(s->chan, false);
}

static void
deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_query *q = arg;
    LIST_REMOVE(q, link);
    if (q->kind == Q_MX)
        q->mx_cb(q->arg, &q->res.mx);
    else if (q->kind == Q_RR)
        q->rr_cb(q->arg, q->res.rr);
    else
        q->addr_cb(q->arg, &q->res.addr);
    query_free(q);
}

static struct dns_query *
query_new(struct dns *d, enum q_kind kind, void *arg)
{
    struct dns_query *q = xcalloc(1, sizeof(*q));
    q->d = d;
    q->kind = kind;
    q->arg = arg;
    q->deliver = event_new(d->base, -1, 0, deliver_cb, q);
    if (q->deliver == NULL)
        tern_panic("cannot create resolver event");
    LIST_INSERT_HEAD(&d->queries, q, link);
    return q;
}

/* Lowercased, without the trailing dot, valid; else -1. */
static int
name_norm(const char *in, char *out, size_t cap)
{
    size_t n = strnlen(in, DNS_NAME_MAX + 2);
    if (n > DNS_NAME_MAX || !str_is_domain(in, n, false))
        return -1;
    if (in[n - 1] == '.')
        n--;
    if (n >= cap)
        return -1;
    memcpy(out, in, n);
    out[n] = '\0';
    str_lower(out);
    return 0;
}

/* Answer q now (through the loop) with rc. */
static void
query_answer_now(struct dns_query *q, enum dns_rc rc)
{
    if (q->kind == Q_MX) {
        q->res.mx.rc = rc;
        rc_text(rc, q->res.mx.err, sizeof(q->res.mx.err));
    } else if (q->kind == Q_RR) {
        q->res.rr->rc = rc;
        rc_text(rc, q->res.rr->err, sizeof(q->res.rr->err));
    } else {
        q->res.addr.rc = rc;
        if (rc != DNS_OK)
            rc_text(rc, q->res.addr.err, sizeof(q->res.addr.err));
    }
    event_active(q->deliver, 0, 0);
}

struct dns_query *
dns_lookup_mx(struct dns *d, const char *domain, dns_mx_cb cb, void *arg)
{
    struct dns_query *q = query_new(d, Q_MX, arg);
    q->mx_cb = cb;
    if (name_norm(domain, q->name, sizeof(q->name)) < 0) {
        query_answer_now(q, DNS_BADNAME);
        return q;
    }
    q->n_subs = 0;
    sub_add(q, &rr_mx);
    sub_launch(q, q->subs[0]);
    return q;
}

static bool
is_localhost(const char *host)
{
    size_t n = strlen(host);
    if (n > 0 && host[n - 1] == '.')
        n--;
    return str_ieq(host, n, "localhost");
}

/* RFC 6761 §6.3: localhost is the loopback, without asking DNS. */
static void
answer_localhost(struct dns_query *q)
{
    struct in_addr lo4 = { .s_addr = htonl(INADDR_LOOPBACK) };
    struct dns_addr_result *r = &q->res.addr;
    if (q->fam != IPFAM_V6 && q->fam != IPFAM_PREFER_V6)
        addr_add(r, AF_INET, &lo4, q->port);
    if (q->fam != IPFAM_V4)
        addr_add(r, AF_INET6, &in6addr_loopback, q->port);
    if (q->fam == IPFAM_PREFER_V6)
        addr_add(r, AF_INET, &lo4, q->port);
    query_answer_now(q, DNS_OK);
}

struct dns_query *
dns_lookup_addr(
    struct dns *d, const char *host, uint16_t port, enum ip_family fam, dns_addr_cb cb, void *arg)
{
    struct dns_query *q = query_new(d, Q_ADDR, arg);
    struct dns_addr_result *r = &q->res.addr;
    q->addr_cb = cb;
    q->port = port;
    q->fam = fam;
    if (dns_literal(host, port, &r->addr[0], &r->len[0]) == 0) {
        r->n = 1;
        query_answer_now(q, DNS_OK);
        return q;
    }
    if (is_localhost(host)) {
        answer_localhost(q);
        return q;
    }
    if (name_norm(host, q->name, sizeof(q->name)) < 0) {
        query_answer_now(q, DNS_BADNAME);
        return q;
    }
    /* Every sub-lookup exists before the first launch: a launch may finish
     * at once, and the query completes only when all have. */
    if (fam != IPFAM_V6)
        sub_add(q, &rr_a);
    if (fam != IPFAM_V4)
        sub_add(q, &rr_aaaa);
    if (fam == IPFAM_PREFER_V6) {
        struct dns_sub *t = q->subs[0];
        q->subs[0] = q->subs[1];
        q->subs[1] = t;
    }
    for (size_t i = 0, n = q->n_subs; i < n; i++)
        sub_launch(q, q->subs[i]);
    return q;
}

/* Lowercased, without the trailing dot: 1..63 octet labels, at most 253
 * octets, printable ASCII without a backslash (c-ares's escape); else -1. Looser
 * than name_norm: SPF and DKIM names hold '_' and other characters. */
static int
rr_name_norm(const char *in, char *out, size_t cap)
{
    size_t n = strnlen(in, DNS_NAME_MAX + 2), label = 0;
    if (n > 0 && in[n - 1] == '.')
        n--;
    if (n == 0 || n > 253 || n >= cap)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '\\')
            return -1;
        if (ch == '.') {
            if (label == 0)
                return -1;
            label = 0;
        } else if (++label > 63) {
            return -1;
        }
    }
    memcpy(out, in, n);
    out[n] = '\0';
    str_lower(out);
    return 0;
}

struct dns_query *
dns_lookup_rr(struct dns *d, const char *name, int type, dns_rr_cb cb, void *arg)
{
    struct dns_query *q = query_new(d, Q_RR, arg);
    const struct rr_ops *ops = NULL;
    q->rr_cb = cb;
    q->res.rr = dns_rr_result_new(type, DNS_NODATA);
    for (size_t i = 0; i < TERN_ARRAY_LEN(rr_raw); i++) {
        if (rr_raw[i].qtype == type)
            ops = &rr_raw[i];
    }
    TERN_ASSERT(ops != NULL);
    if (rr_name_norm(name, q->name, sizeof(q->name)) < 0) {
        query_answer_now(q, DNS_BADNAME);
        return q;
    }
    sub_add(q, ops);
    sub_launch(q, q->subs[0]);
    return q;
}

void
dns_cancel(struct dns_query *q)
{
    if (q == NULL)
        return;
    LIST_REMOVE(q, link);
    query_free(q);
}

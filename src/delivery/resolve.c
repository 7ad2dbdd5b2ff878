/*
 * c-ares glue: the channel's sockets are watched with one libevent event
 * each (registered through ARES_OPT_SOCK_STATE_CB) plus one timer for
 * ares_timeout(). Results are handed to the caller from a per-query event,
 * so a callback never runs inside resolver_lookup(). The resolver owns every
 * query; a cancelled query stays allocated until c-ares lets go of it.
 */
#include "delivery/resolve.h"

#include <ares.h>
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "util/parse.h"
#include "util/util.h"

struct rsock {
    LIST_ENTRY(rsock) link;
    ares_socket_t fd;
    struct event *ev;
};

struct resolver_query {
    LIST_ENTRY(resolver_query) link;
    struct resolver *r;
    resolve_cb cb; /* NULL once cancelled */
    void *arg;
    bool in_ares;   /* c-ares still holds the query */
    bool localhost; /* fall back to loopback on failure */
    uint16_t port;
    struct event *deliver;
    struct resolve_result res;
    int err;
    char errmsg[160];
};

struct resolver {
    struct event_base *base;
    ares_channel ch;
    struct event *timer;
    LIST_HEAD(, rsock) socks;
    LIST_HEAD(, resolver_query) queries;
};

static void
resolver_arm(struct resolver *r)
{
    struct timeval tv, *tvp = ares_timeout(r->ch, NULL, &tv);
    if (tvp != NULL)
        evtimer_add(r->timer, tvp);
    else
        evtimer_del(r->timer);
}

static void
sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct resolver *r = arg;
    /* May free this very event through sock_state_cb: touch only r after. */
    ares_process_fd(
        r->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD, (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    resolver_arm(r);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct resolver *r = arg;
    ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    resolver_arm(r);
}

static void
sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct resolver *r = data;
    struct rsock *s;
    LIST_FOREACH(s, &r->socks, link)
    {
        if (s->fd == fd)
            break;
    }
    if (s != NULL) {
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
        LIST_INSERT_HEAD(&r->socks, s, link);
    }
    s->ev = event_new(r->base, fd,
        (short)(EV_PERSIST | (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0)), sock_cb, r);
    if (s->ev == NULL || event_add(s->ev, NULL) < 0)
        tern_panic("cannot watch resolver socket %d", (int)fd);
}

struct resolver *
resolver_new(struct event_base *base)
{
    struct resolver *r;
    struct ares_options opts;
    if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
        return NULL;
    r = xcalloc(1, sizeof(*r));
    r->base = base;
    LIST_INIT(&r->socks);
    LIST_INIT(&r->queries);
    memset(&opts, 0, sizeof(opts));
    opts.sock_state_cb = sock_state_cb;
    opts.sock_state_cb_data = r;
    if (ares_init_options(&r->ch, &opts, ARES_OPT_SOCK_STATE_CB) != ARES_SUCCESS) {
        free(r);
        ares_library_cleanup();
        return NULL;
    }
    r->timer = evtimer_new(base, timer_cb, r);
    if (r->timer == NULL)
        tern_panic("cannot create resolver timer");
    return r;
}

static void
query_free(struct resolver_query *q)
{
    LIST_REMOVE(q, link);
    if (q->deliver != NULL)
        event_free(q->deliver);
    free(q);
}

void
resolver_free(struct resolver *r)
{
    struct resolver_query *q, *qn;
    struct rsock *s;
    if (r == NULL)
        return;
    LIST_FOREACH(q, &r->queries, link)
    q->cb = NULL;
    /* Runs every pending c-ares callback with ARES_EDESTRUCTION. */
    ares_destroy(r->ch);
    for (q = LIST_FIRST(&r->queries); q != NULL; q = qn) {
        qn = LIST_NEXT(q, link);
        query_free(q);
    }
    while ((s = LIST_FIRST(&r->socks)) != NULL) {
        LIST_REMOVE(s, link);
        if (s->ev != NULL)
            event_free(s->ev);
        free(s);
    }
    event_free(r->timer);
    free(r);
    ares_library_cleanup();
}

static void
set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

int
resolve_literal(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        *len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        *len = sizeof(*sin6);
    } else {
        return -1;
    }
    set_port(ss, port);
    return 0;
}

static void
add_addr(struct resolve_result *res, const struct sockaddr *sa, size_t salen, uint16_t port)
{
    if (res->n >= RESOLVE_ADDRS_MAX || salen > sizeof(res->addr[0]) ||
        (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
        return;
    memset(&res->addr[res->n], 0, sizeof(res->addr[0]));
    memcpy(&res->addr[res->n], sa, salen);
    set_port(&res->addr[res->n], port);
    res->len[res->n] = (socklen_t)salen;
    res->n++;
}

static void
ares_done_cb(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    struct resolver_query *q = arg;
    q->in_ares = false;
    if (status == ARES_SUCCESS && ai != NULL) {
        for (struct ares_addrinfo_node *n = ai->nodes; n != NULL; n = n->ai_next)
            add_addr(&q->res, n->ai_addr, n->ai_addrlen, q->port);
    }
    if (ai != NULL)
        ares_freeaddrinfo(ai);
    if (q->cb == NULL) {
        /* Cancelled, or the resolver is being destroyed (it frees q). */
        if (status != ARES_EDESTRUCTION)
            query_free(q);
        return;
    }
    if (q->res.n == 0 && q->localhost) {
        struct sockaddr_storage ss;
        socklen_t len;
        if (resolve_literal("127.0.0.1", q->port, &ss, &len) == 0)
            add_addr(&q->res, (struct sockaddr *)&ss, len, q->port);
        if (resolve_literal("::1", q->port, &ss, &len) == 0)
            add_addr(&q->res, (struct sockaddr *)&ss, len, q->port);
    }
    if (q->res.n == 0) {
        q->err = -1;
        snprintf(q->errmsg, sizeof(q->errmsg), "%s",
            status == ARES_SUCCESS ? "no usable address" : ares_strerror(status));
    }
    event_active(q->deliver, 0, 0);
}

static void
deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct resolver_query *q = arg;
    resolve_cb cb = q->cb;
    void *cb_arg = q->arg;
    struct resolve_result res = q->res;
    int err = q->err;
    char msg[sizeof(q->errmsg)];
    memcpy(msg, q->errmsg, sizeof(msg));
    /* Free first: the callback may cancel or start other queries. */
    query_free(q);
    if (cb != NULL)
        cb(cb_arg, err, &res, msg);
}

static bool
is_localhost(const char *host)
{
    size_t n = strlen(host);
    if (n > 0 && host[n - 1] == '.')
        n--;
    return str_ieq(host, n, "localhost");
}

struct resolver_query *
resolver_lookup(struct resolver *r, const char *host, uint16_t port, resolve_cb cb, void *arg)
{
    struct resolver_query *q = xcalloc(1, sizeof(*q));
    struct ares_addrinfo_hints hints;
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    q->port = port;
    q->localhost = is_localhost(host);
    q->in_ares = true;
    q->deliver = event_new(r->base, -1, 0, deliver_cb, q);
    if (q->deliver == NULL)
        tern_panic("cannot create resolver event");
    LIST_INSERT_HEAD(&r->queries, q, link);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* May call ares_done_cb before returning: it only queues q->deliver. */
    ares_getaddrinfo(r->ch, host, NULL, &hints, ares_done_cb, q);
    resolver_arm(r);
    return q;
}

void
resolver_cancel(struct resolver_query *q)
{
    if (q == NULL)
        return;
    q->cb = NULL;
    if (!q->in_ares)
        query_free(q); /* result already queued: drop it */
}

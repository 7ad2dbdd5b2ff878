/*
 * /metrics, /status and the dashboard (dashboard.c) over libevent's evhttp.
 * Bounded: GET only (POST for the dashboard's queue actions, which it
 * checks), small requests, short timeouts; nothing here can block the loop
 * for long (a scrape reads counters and walks the queue index once for its
 * oldest message, some milliseconds for a million messages). Open
 * connections are bounded too: at HTTPD_MAX_CONNS the listener stops
 * accepting until one closes, so idle or trickling clients cannot take the
 * file descriptors the SMTP side needs.
 */
#include "cmd/httpd.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/dashboard.h"
#include "metrics/metrics.h"
#include "sched/sched.h"
#include "smtp/smtp.h"
#include "util/log.h"
#include "util/util.h"

/* A few browsers and scrapers; far below any file-descriptor limit. */
#define HTTPD_MAX_CONNS 64

/*
 * Counting connections. libevent 2.1's evhttp has no limit of its own and
 * tells of a new connection only by asking for its bufferevent (bevcb);
 * the end of a connection it tells through the connection's close
 * callback, which can be set only once the connection exists. So the new
 * bufferevents are kept (with a reference of ours) until the loop has
 * finished the accept, then each one's connection, which evhttp made its
 * callback argument, gets the close callback. A bufferevent whose
 * callbacks are gone by then was freed by evhttp without ever becoming a
 * connection.
 *
 * The struct is reference-counted: each counted connection holds one, the
 * endpoint one, so a close callback run by evhttp_free still finds it.
 */
struct http_conns {
    int refs;
    unsigned n; /* connections open or being adopted */
    bool paused;
    struct evconnlistener *lis; /* NULL once evhttp is being freed */
    struct event *adopt_ev;
    struct bufferevent *fresh[HTTPD_MAX_CONNS];
    size_t n_fresh;
};

struct metrics {
    struct evhttp *http;
    struct http_conns *conns;
    struct dash *dash;
    struct sched *sched;
    struct smtp_server *smtp;
    void (*status)(struct buf *out, void *arg);
    void *status_arg;
};

static void
reply_buf(struct evhttp_request *req, const char *ctype, struct buf *b)
{
    struct evbuffer *body = evbuffer_new();
    evbuffer_add(body, b->data ? b->data : "", b->len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

/* POST is allowed for the dashboard's actions only. */
static bool
get_only(struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST)
        return true;
    evhttp_send_error(req, 405, "Method Not Allowed");
    return false;
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
    struct metrics *m = arg;
    struct metrics_snapshot snap;
    struct buf b = BUF_INIT;
    if (!get_only(req))
        return;
    dash_snapshot(m->dash, &snap);
    metrics_render(&b, &snap);
    reply_buf(req, "text/plain; version=0.0.4; charset=utf-8", &b);
    buf_fini(&b);
}

static void
status_cb(struct evhttp_request *req, void *arg)
{
    struct metrics *m = arg;
    struct buf b = BUF_INIT;
    if (!get_only(req))
        return;
    m->status(&b, m->status_arg);
    buf_append_char(&b, '\n');
    reply_buf(req, "application/json", &b);
    buf_fini(&b);
}

static void
conns_unref(struct http_conns *c)
{
    if (--c->refs == 0)
        free(c);
}

static void
conns_less(struct http_conns *c)
{
    c->n--;
    if (c->paused && c->n < HTTPD_MAX_CONNS && c->lis != NULL) {
        c->paused = false;
        evconnlistener_enable(c->lis);
    }
}

static void
conn_closed(struct evhttp_connection *evcon, void *arg)
{
    struct http_conns *c = arg;
    conns_less(c);
    conns_unref(c);
}

static void
adopt_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_conns *c = arg;
    for (size_t i = 0; i < c->n_fresh; i++) {
        void *evcon = NULL;
        bufferevent_getcb(c->fresh[i], NULL, NULL, NULL, &evcon);
        if (evcon != NULL) {
            c->refs++;
            evhttp_connection_set_closecb(evcon, conn_closed, c);
        } else {
            conns_less(c);
        }
        bufferevent_decref(c->fresh[i]);
    }
    c->n_fresh = 0;
}

static struct bufferevent *
conn_bev_cb(struct event_base *base, void *arg)
{
    struct http_conns *c = arg;
    struct bufferevent *bev;
    if (c->n_fresh == HTTPD_MAX_CONNS)
        return NULL; /* cannot happen: accepting pauses first */
    /* As evhttp makes its own: no options, evhttp closes the socket. */
    bev = bufferevent_socket_new(base, -1, 0);
    if (bev == NULL)
        return NULL;
    bufferevent_incref(bev);
    c->fresh[c->n_fresh++] = bev;
    event_active(c->adopt_ev, 0, 0);
    if (++c->n >= HTTPD_MAX_CONNS && !c->paused && c->lis != NULL) {
        c->paused = true;
        evconnlistener_disable(c->lis);
        log_simple(LOG_WARN, "http", "connection_limit",
            "metrics_listen: too many open connections, accepting paused");
    }
    return bev;
}

static int given_fd = -1;

void
metrics_give_socket(int fd)
{
    given_fd = fd;
}

struct metrics *
metrics_new(struct event_base *base, const struct hostport *listen, struct sched *sch,
    struct smtp_server *smtp, const char *spool_dir, void (*status)(struct buf *out, void *arg),
    void *status_arg, struct buf *err)
{
    struct metrics *m = xcalloc(1, sizeof(*m));
    struct evhttp_bound_socket *bound = NULL;
    m->sched = sch;
    m->smtp = smtp;
    m->status = status;
    m->status_arg = status_arg;
    m->http = evhttp_new(base);
    if (m->http != NULL && given_fd >= 0) {
        int fd = given_fd;
        given_fd = -1;
        if ((bound = evhttp_accept_socket_with_handle(m->http, fd)) == NULL) {
            close(fd);
            buf_printf(err, "metrics_listen: cannot listen on %s:%u\n", listen->host, listen->port);
            metrics_free(m);
            return NULL;
        }
    } else if (m->http == NULL || (bound = evhttp_bind_socket_with_handle(
                                       m->http, listen->host, listen->port)) == NULL) {
        buf_printf(err, "metrics_listen: cannot listen on %s:%u\n", listen->host, listen->port);
        metrics_free(m);
        return NULL;
    }
    m->conns = xcalloc(1, sizeof(*m->conns));
    m->conns->refs = 1;
    m->conns->lis = evhttp_bound_socket_get_listener(bound);
    m->conns->adopt_ev = event_new(base, -1, 0, adopt_cb, m->conns);
    if (m->conns->adopt_ev == NULL)
        tern_panic("cannot create the HTTP endpoint's event");
    evhttp_set_bevcb(m->http, conn_bev_cb, m->conns);
    /* POST: the dashboard's queue actions (dashboard.c checks each). */
    evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    evhttp_set_max_headers_size(m->http, 8192);
    evhttp_set_max_body_size(m->http, 1024);
    evhttp_set_timeout(m->http, 10);
    evhttp_set_cb(m->http, "/metrics", metrics_cb, m);
    evhttp_set_cb(m->http, "/status", status_cb, m);
    m->dash = dash_new(base, sch, smtp, spool_dir);
    dash_register(m->dash, m->http);
    return m;
}

void
metrics_set_admin_token(struct metrics *m, const char *token, size_t len)
{
    dash_set_token(m->dash, token, len);
}

void
metrics_free(struct metrics *m)
{
    if (m == NULL)
        return;
    dash_free(m->dash); /* answers what waits, so first */
    if (m->conns != NULL) {
        adopt_cb(-1, 0, m->conns); /* every connection counted is closed below */
        event_free(m->conns->adopt_ev);
        m->conns->lis = NULL; /* evhttp_free frees it first */
    }
    if (m->http)
        evhttp_free(m->http);
    if (m->conns != NULL)
        conns_unref(m->conns);
    free(m);
}

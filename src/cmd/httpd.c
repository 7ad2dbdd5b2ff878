/*
 * /metrics, /status and the dashboard (dashboard.c) over libevent's evhttp.
 * Bounded: GET only (POST for the dashboard's queue actions, which it
 * checks), small requests, short timeouts; nothing here can block the loop
 * for long (a scrape reads counters and walks the queue index once for its
 * oldest message, some milliseconds for a million messages).
 */
#include "cmd/httpd.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/dashboard.h"
#include "metrics/metrics.h"
#include "sched/sched.h"
#include "smtp/smtp.h"
#include "util/util.h"

struct metrics {
    struct evhttp *http;
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
    m->sched = sch;
    m->smtp = smtp;
    m->status = status;
    m->status_arg = status_arg;
    m->http = evhttp_new(base);
    if (m->http != NULL && given_fd >= 0) {
        int fd = given_fd;
        given_fd = -1;
        if (evhttp_accept_socket_with_handle(m->http, fd) == NULL) {
            close(fd);
            buf_printf(err, "metrics_listen: cannot listen on %s:%u\n", listen->host, listen->port);
            metrics_free(m);
            return NULL;
        }
    } else if (m->http == NULL || evhttp_bind_socket(m->http, listen->host, listen->port) < 0) {
        buf_printf(err, "metrics_listen: cannot listen on %s:%u\n", listen->host, listen->port);
        metrics_free(m);
        return NULL;
    }
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
    if (m->http)
        evhttp_free(m->http);
    free(m);
}

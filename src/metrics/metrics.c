/*
 * /metrics and /status over libevent's evhttp. Bounded: GET only, small
 * requests, short timeouts; nothing here can block the loop for long.
 */
#include "metrics.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdlib.h>
#include <string.h>

#include "sched/sched.h"
#include "smtp/smtp.h"
#include "util/util.h"

struct metrics {
    struct evhttp *http;
    struct sched *sched;
    struct smtp_server *smtp;
    void (*status)(struct buf *out, void *arg);
    void *status_arg;
};

static void
counter(struct buf *out, const char *name, const char *help, const char *type, uint64_t v)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
        (unsigned long long)v);
}

void
metrics_render(struct buf *out, const struct sched *sch, size_t sessions, uint64_t received)
{
    struct sched_stats st;
    sched_get_stats(sch, &st);
    counter(out, "tern_messages_received_total", "Messages accepted by the SMTP server.", "counter",
        received);
    counter(out, "tern_messages_delivered_total", "Recipients delivered to the next hop.",
        "counter", st.delivered);
    counter(out, "tern_messages_deferred_total", "Delivery attempts that failed temporarily.",
        "counter", st.deferred);
    counter(out, "tern_messages_bounced_total",
        "Recipients that failed permanently or expired (a DSN was made if wanted).", "counter",
        st.bounced + st.expired);
    counter(out, "tern_messages_expired_total", "Recipients given up after max_queue_lifetime.",
        "counter", st.expired);
    counter(out, "tern_queue_messages", "Messages in the queue.", "gauge", st.queue_messages);
    counter(
        out, "tern_queue_recipients", "Recipients waiting in the queue.", "gauge", st.queue_rcpts);
    counter(out, "tern_smtp_sessions", "Open inbound SMTP sessions.", "gauge", sessions);
}

static void
reply_buf(struct evhttp_request *req, const char *ctype, struct buf *b)
{
    struct evbuffer *body = evbuffer_new();
    evbuffer_add(body, b->data ? b->data : "", b->len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
    struct metrics *m = arg;
    struct buf b = BUF_INIT;
    metrics_render(&b, m->sched, smtp_server_sessions(m->smtp), smtp_server_received(m->smtp));
    reply_buf(req, "text/plain; version=0.0.4; charset=utf-8", &b);
    buf_fini(&b);
}

static void
status_cb(struct evhttp_request *req, void *arg)
{
    struct metrics *m = arg;
    struct buf b = BUF_INIT;
    m->status(&b, m->status_arg);
    buf_append_char(&b, '\n');
    reply_buf(req, "application/json", &b);
    buf_fini(&b);
}

struct metrics *
metrics_new(struct event_base *base, const struct hostport *listen, struct sched *sch,
    struct smtp_server *smtp, void (*status)(struct buf *out, void *arg), void *status_arg,
    struct buf *err)
{
    struct metrics *m = xcalloc(1, sizeof(*m));
    m->sched = sch;
    m->smtp = smtp;
    m->status = status;
    m->status_arg = status_arg;
    m->http = evhttp_new(base);
    if (m->http == NULL || evhttp_bind_socket(m->http, listen->host, listen->port) < 0) {
        buf_printf(err, "metrics_listen: cannot listen on %s:%u\n", listen->host, listen->port);
        metrics_free(m);
        return NULL;
    }
    evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_max_headers_size(m->http, 8192);
    evhttp_set_max_body_size(m->http, 1024);
    evhttp_set_timeout(m->http, 10);
    evhttp_set_cb(m->http, "/metrics", metrics_cb, m);
    evhttp_set_cb(m->http, "/status", status_cb, m);
    return m;
}

void
metrics_free(struct metrics *m)
{
    if (m == NULL)
        return;
    if (m->http)
        evhttp_free(m->http);
    free(m);
}

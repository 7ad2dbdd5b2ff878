/*
 * One connection to one milter filter on a libevent loop: connect (inet or
 * unix), packets out, reply packets framed and decoded in, one timer for
 * the connect and for each reply awaited. A failure (refused, timeout, EOF,
 * garbage) is reported once and ends the connection's use.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "milter/milter.h"
#include "util/util.h"

struct milter_conn {
    struct milter_spec spec;
    struct bufferevent *bev;
    struct event *timer;
    int64_t timeout_ms;
    milter_conn_cb cb;
    void *arg;
    bool connected;
    bool waiting; /* a reply is awaited (the timer runs) */
    bool failed;
    bool in_cb;     /* inside cb: a free waits until it returns */
    bool free_late; /* freed from inside cb */
    bool refused;   /* the connect failed at once: reported by the timer */
};

static void
arm(struct milter_conn *c)
{
    struct timeval tv = { (time_t)(c->timeout_ms / 1000),
        (suseconds_t)((c->timeout_ms % 1000) * 1000) };
    evtimer_add(c->timer, &tv);
}

static void
conn_destroy(struct milter_conn *c)
{
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    if (c->timer != NULL)
        event_free(c->timer);
    free(c);
}

/* Report r (or the failure why) to the owner; false when the owner freed
 * the connection meanwhile. */
static bool
report(struct milter_conn *c, const struct milter_reply *r, const char *why)
{
    c->in_cb = true;
    c->cb(c, r, why, c->arg);
    c->in_cb = false;
    if (c->free_late) {
        conn_destroy(c);
        return false;
    }
    return true;
}

static void
fail(struct milter_conn *c, const char *why)
{
    if (c->failed)
        return;
    c->failed = true;
    c->waiting = false;
    evtimer_del(c->timer);
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    report(c, NULL, why);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct milter_conn *c = arg;
    fail(c, c->refused     ? "cannot connect"
            : c->connected ? "timeout waiting for a reply"
                           : "connect timeout");
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
    struct milter_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!c->failed) {
        size_t have = evbuffer_get_length(in), len = 0;
        uint8_t head[4];
        const uint8_t *pkt;
        struct milter_reply r;
        int f;
        if (evbuffer_copyout(in, head, 4) < 4)
            return;
        f = milter_frame(head, 4, &len);
        if (f < 0) {
            fail(c, "protocol error (packet length)");
            return;
        }
        /* Only the header was given to milter_frame: it wants the rest. */
        len = (size_t)head[0] << 24 | (size_t)head[1] << 16 | (size_t)head[2] << 8 | head[3];
        len += 4;
        if (have < len)
            return;
        pkt = evbuffer_pullup(in, (ev_ssize_t)len);
        if (pkt == NULL || milter_reply_parse(pkt, len, &r) < 0) {
            fail(c, "protocol error (malformed reply)");
            return;
        }
        if (!c->waiting) {
            fail(c, "protocol error (reply not expected)");
            return;
        }
        if (!report(c, &r, NULL))
            return;
        if (evbuffer_drain(in, len) < 0)
            tern_panic("evbuffer_drain failed");
    }
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    (void)arg;
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct milter_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = true;
        if (!c->waiting)
            evtimer_del(c->timer);
        return;
    }
    if (what & BEV_EVENT_EOF)
        fail(c, c->connected ? "connection closed by the filter" : "connection refused");
    else
        fail(c, c->connected ? "connection error" : "cannot connect");
}

struct milter_conn *
milter_conn_new(struct event_base *base, const struct milter_spec *sp, int64_t timeout_ms,
    milter_conn_cb cb, void *arg)
{
    struct milter_conn *c = xcalloc(1, sizeof(*c));
    c->spec = *sp;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    c->cb = cb;
    c->arg = arg;
    c->timer = evtimer_new(base, timer_cb, c);
    c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c->timer == NULL || c->bev == NULL)
        tern_panic("cannot make a milter connection");
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    /* A packet is at most MILTER_PACKET_MAX and its header: read no more
     * while that much waits (the reader takes whole packets off). */
    bufferevent_setwatermark(c->bev, EV_READ, 0, MILTER_PACKET_MAX + 16);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    arm(c);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&c->spec.ss, (int)c->spec.sslen) <
        0) {
        /* Reported from the loop, never from inside the caller. */
        struct timeval now = { 0, 0 };
        c->refused = true;
        evtimer_add(c->timer, &now);
    }
    return c;
}

void
milter_conn_send(struct milter_conn *c, struct buf *b)
{
    if (!c->failed && b->len > 0)
        bufferevent_write(c->bev, b->data, b->len);
    buf_reset(b);
}

void
milter_conn_expect(struct milter_conn *c)
{
    if (c->failed)
        return;
    c->waiting = true;
    arm(c);
}

void
milter_conn_idle(struct milter_conn *c)
{
    c->waiting = false;
    if (c->connected)
        evtimer_del(c->timer);
}

void
milter_conn_free(struct milter_conn *c)
{
    struct evbuffer *out;
    if (c == NULL)
        return;
    /* What is queued (a QUIT) goes out now if the socket takes it: the
     * filter then sees a clean end, not a connection cut short. */
    out = c->bev != NULL ? bufferevent_get_output(c->bev) : NULL;
    if (out != NULL && c->connected && !c->failed && evbuffer_get_length(out) > 0) {
        /* The socket bufferevent keeps the front of its output frozen for
         * anyone but itself. */
        evbuffer_unfreeze(out, 1);
        (void)evbuffer_write(out, bufferevent_getfd(c->bev));
        evbuffer_freeze(out, 1);
    }
    if (c->in_cb) {
        c->free_late = true;
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
        evtimer_del(c->timer);
        return;
    }
    conn_destroy(c);
}

const char *
milter_conn_name(const struct milter_conn *c)
{
    return c->spec.name;
}

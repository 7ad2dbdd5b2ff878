/*
 * The daemon's side of the control socket (protocol in ctl.h): one request
 * line per connection, answered from the scheduler's view, so the operator
 * sees exactly what the daemon sees. LIST and SUMMARY are streamed as the
 * scheduler walks the queue (most of it may be on disk), a slice at a time
 * and only while the client keeps reading. Connections are bounded in
 * request size and time.
 */
#include "ctl.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "sched/sched.h"
#include "spool/spool.h"
#include "util/log.h"
#include "util/util.h"

#define CTL_TIMEOUT_S 30
#define CTL_OUT_LOW   (64 * 1024) /* a walk goes on once the output drains to this */

struct ctl_conn {
    struct ctl_server *srv;
    struct bufferevent *bev;
    struct sched_walk *walk; /* LIST or SUMMARY under way */
    struct ctl_conn *prev, *next;
};

struct ctl_server {
    struct event_base *base;
    struct evconnlistener *lis;
    struct sched *sched;
    char *path;
    void (*status)(struct buf *out, void *arg);
    void *status_arg;
    struct ctl_conn *conns;
};

static bool
qid_valid(const char *q)
{
    size_t n = 0;
    for (; q[n]; n++) {
        if (!((q[n] >= '0' && q[n] <= '9') || (q[n] >= 'a' && q[n] <= 'f')))
            return false;
    }
    return n == SPOOL_QID_LEN;
}

static void
conn_free(struct ctl_conn *cc)
{
    sched_walk_cancel(cc->walk);
    if (cc->prev != NULL)
        cc->prev->next = cc->next;
    else
        cc->srv->conns = cc->next;
    if (cc->next != NULL)
        cc->next->prev = cc->prev;
    bufferevent_free(cc->bev);
    free(cc);
}

static void
ctl_conn_close_cb(struct bufferevent *bev, void *arg)
{
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_free(arg);
}

static void
ctl_event_cb(struct bufferevent *bev, short what, void *arg)
{
    conn_free(arg);
}

/* Close once the reply is out. */
static void
conn_finish(struct ctl_conn *cc)
{
    bufferevent_disable(cc->bev, EV_READ);
    bufferevent_setwatermark(cc->bev, EV_WRITE, 0, 0);
    bufferevent_setcb(cc->bev, NULL, ctl_conn_close_cb, ctl_event_cb, cc);
    ctl_conn_close_cb(cc->bev, cc);
}

/* The output drained: the walk may go on. */
static void
walk_write_cb(struct bufferevent *bev, void *arg)
{
    struct ctl_conn *cc = arg;
    if (cc->walk != NULL)
        sched_walk_next(cc->walk);
}

static void
walk_cb(void *arg, const char *data, size_t len, enum sched_walk_ev ev)
{
    struct ctl_conn *cc = arg;
    struct evbuffer *out = bufferevent_get_output(cc->bev);
    evbuffer_add(out, data, len);
    if (ev == SCHED_WALK_MORE) {
        if (evbuffer_get_length(out) <= CTL_OUT_LOW)
            sched_walk_next(cc->walk);
        return;
    }
    cc->walk = NULL; /* gone after this call */
    evbuffer_add_printf(out, ev == SCHED_WALK_DONE ? "OK\n" : "ERR stopping\n");
    conn_finish(cc);
}

/* Run one request; data lines and the final OK/ERR go to out. LIST and
 * SUMMARY start a walk instead: true. */
static bool
ctl_dispatch(struct ctl_conn *cc, char *line, struct buf *out)
{
    struct ctl_server *c = cc->srv;
    char *arg = strchr(line, ' ');
    int rc = 0;
    if (arg)
        *arg++ = '\0';
    if ((strcmp(line, "LIST") == 0 || strcmp(line, "SUMMARY") == 0) && !arg) {
        bufferevent_setwatermark(cc->bev, EV_WRITE, CTL_OUT_LOW, 0);
        bufferevent_setcb(cc->bev, NULL, walk_write_cb, ctl_event_cb, cc);
        cc->walk = sched_walk_start(c->sched, line[0] == 'S', walk_cb, cc);
        return true;
    } else if (strcmp(line, "STATUS") == 0 && !arg) {
        c->status(out, c->status_arg);
        buf_append_char(out, '\n');
    } else if (strcmp(line, "FLUSH") == 0 && !arg) {
        sched_flush(c->sched);
    } else if (strcmp(line, "DELETE") == 0 || strcmp(line, "HOLD") == 0 ||
               strcmp(line, "RELEASE") == 0) {
        if (arg == NULL || !qid_valid(arg))
            rc = -1;
        else if (line[0] == 'D')
            rc = sched_delete(c->sched, arg);
        else
            rc = sched_hold(c->sched, arg, line[0] == 'H');
        if (rc < 0) {
            buf_append_str(out, "ERR unknown queue id\n");
            return false;
        }
    } else {
        buf_append_str(out, "ERR unknown request\n");
        return false;
    }
    buf_append_str(out, "OK\n");
    return false;
}

static void
ctl_read_cb(struct bufferevent *bev, void *arg)
{
    struct ctl_conn *cc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t eol = 0;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_LF);
    char line[CTL_LINE_MAX + 1];
    struct buf out = BUF_INIT;
    if (p.pos < 0) {
        if (evbuffer_get_length(in) > CTL_LINE_MAX) {
            evbuffer_add_printf(bufferevent_get_output(bev), "ERR request too long\n");
            goto done;
        }
        return;
    }
    if ((size_t)p.pos > CTL_LINE_MAX) {
        evbuffer_add_printf(bufferevent_get_output(bev), "ERR request too long\n");
        goto done;
    }
    evbuffer_remove(in, line, (size_t)p.pos);
    line[p.pos] = '\0';
    if (p.pos > 0 && line[p.pos - 1] == '\r')
        line[p.pos - 1] = '\0';
    bufferevent_disable(bev, EV_READ);
    if (ctl_dispatch(cc, line, &out)) {
        buf_fini(&out);
        return; /* the walk answers */
    }
    bufferevent_write(bev, out.data, out.len);
    buf_fini(&out);
done:
    conn_finish(cc);
}

static void
ctl_accept_cb(
    struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct ctl_server *c = arg;
    struct timeval tmo = { CTL_TIMEOUT_S, 0 };
    struct bufferevent *bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
    struct ctl_conn *cc;
    if (bev == NULL) {
        close(fd);
        return;
    }
    cc = xcalloc(1, sizeof(*cc));
    cc->srv = c;
    cc->bev = bev;
    cc->next = c->conns;
    if (c->conns != NULL)
        c->conns->prev = cc;
    c->conns = cc;
    bufferevent_setcb(bev, ctl_read_cb, NULL, ctl_event_cb, cc);
    bufferevent_set_timeouts(bev, &tmo, &tmo);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

struct ctl_server *
ctl_server_new(struct event_base *base, const char *spool_dir, struct sched *sch,
    void (*status)(struct buf *out, void *arg), void *status_arg, struct buf *err)
{
    struct ctl_server *c = xcalloc(1, sizeof(*c));
    struct sockaddr_un sun;
    struct buf path = BUF_INIT;
    mode_t old;
    buf_printf(&path, "%s/%s", spool_dir, CTL_SOCKET_NAME);
    c->path = buf_take(&path);
    c->base = base;
    c->sched = sch;
    c->status = status;
    c->status_arg = status_arg;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (strlen(c->path) >= sizeof(sun.sun_path)) {
        buf_printf(err, "control socket path too long: %s\n", c->path);
        goto fail;
    }
    memcpy(sun.sun_path, c->path, strlen(c->path) + 1);
    if (unlink(c->path) < 0 && errno != ENOENT) {
        buf_printf(err, "cannot remove stale %s: %s\n", c->path, strerror(errno));
        goto fail;
    }
    old = umask(077); /* the socket is for the daemon's own user only */
    c->lis = evconnlistener_new_bind(base, ctl_accept_cb, c,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16, (struct sockaddr *)&sun, sizeof(sun));
    umask(old);
    if (c->lis == NULL) {
        buf_printf(err, "cannot listen on %s: %s\n", c->path, strerror(errno));
        goto fail;
    }
    return c;
fail:
    free(c->path);
    free(c);
    return NULL;
}

void
ctl_server_free(struct ctl_server *c)
{
    if (c == NULL)
        return;
    while (c->conns != NULL)
        conn_free(c->conns);
    evconnlistener_free(c->lis);
    unlink(c->path);
    free(c->path);
    free(c);
}

/*
 * The daemon's side of the control socket (protocol in ctl.h): one request
 * line per connection, answered from the scheduler's view, so the operator
 * sees exactly what the daemon sees. LIST and SUMMARY are streamed as the
 * scheduler walks the queue (most of it may be on disk), a slice at a time
 * and only while the client keeps reading, and so is an action on ALL
 * (or a selection). Connections are bounded in request size and time; a
 * connection may carry further requests after an answer that is not a
 * walk, each read only once the previous answer has drained, so that a
 * client sending batches of ids cannot make the daemon's output grow.
 */
#include "ctl.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "sched/sched.h"
#include "spool/spool.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define CTL_TIMEOUT_S 30
#define CTL_OUT_LOW   (64 * 1024) /* a walk goes on once the output drains to this */
#define CTL_IDS_MAX   (CTL_LINE_MAX / (SPOOL_QID_LEN + 1) + 1) /* ids one request can hold */

struct ctl_conn {
    struct ctl_server *srv;
    struct bufferevent *bev;
    struct sched_walk *walk; /* LIST or SUMMARY under way */
    struct ctl_conn *prev, *next;
};

static int given_fd = -1;

void
ctl_server_give_socket(int fd)
{
    given_fd = fd;
}

struct ctl_server {
    bool given; /* the socket file is the parent's to remove */
    struct event_base *base;
    struct evconnlistener *lis;
    struct sched *sched;
    char *path;
    void (*status)(struct buf *out, void *arg);
    void *status_arg;
    bool (*tlsrpt)(void *arg);
    void *tlsrpt_arg;
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

static void
walk_begin(struct ctl_conn *cc)
{
    bufferevent_setwatermark(cc->bev, EV_WRITE, CTL_OUT_LOW, 0);
    bufferevent_setcb(cc->bev, NULL, walk_write_cb, ctl_event_cb, cc);
}

static const struct {
    const char *verb;
    enum sched_act act;
} ctl_acts[] = {
    { "HOLD", SCHED_ACT_HOLD },
    { "RELEASE", SCHED_ACT_RELEASE },
    { "DELETE", SCHED_ACT_DELETE },
    { "FLUSH", SCHED_ACT_FLUSH },
};

/* Parse the selectors after ALL ("sender=X", "rdomain=D", "older=SECS",
 * each at most once; strings borrowed from args). 0, or -1 when bad. */
static int
parse_select(char *args, struct sched_select *sel)
{
    memset(sel, 0, sizeof(*sel));
    for (char *p = args, *next; p != NULL; p = next) {
        uint64_t secs;
        next = strchr(p, ' ');
        if (next != NULL)
            *next++ = '\0';
        if (strncmp(p, "sender=", 7) == 0 && sel->sender == NULL) {
            sel->sender = p + 7; /* empty: the null sender */
        } else if (strncmp(p, "rdomain=", 8) == 0 && sel->rcpt_domain == NULL && p[8] != '\0') {
            sel->rcpt_domain = p + 8;
        } else if (strncmp(p, "older=", 6) == 0 && sel->older_than_s == 0 &&
                   parse_u64(p + 6, strlen(p + 6), INT32_MAX, &secs) == 0 && secs > 0) {
            sel->older_than_s = (int64_t)secs;
        } else {
            return -1;
        }
    }
    return 0;
}

static int
act_one(struct sched *sch, enum sched_act act, const char *qid)
{
    switch (act) {
    case SCHED_ACT_HOLD:
    case SCHED_ACT_RELEASE:
        return sched_hold(sch, qid, act == SCHED_ACT_HOLD);
    case SCHED_ACT_DELETE:
        return sched_delete(sch, qid);
    case SCHED_ACT_FLUSH:
        return sched_flush_msg(sch, qid);
    }
    return -1;
}

/* VERB qid qid ...: every id checked first, then "done QID" or "unknown
 * QID" for each (an unknown id is an answer, not an error). */
static void
act_ids(struct ctl_conn *cc, enum sched_act act, char *args, struct buf *out)
{
    char *ids[CTL_IDS_MAX];
    size_t n = 0;
    for (char *p = args, *next; p != NULL; p = next) {
        next = strchr(p, ' ');
        if (next != NULL)
            *next++ = '\0';
        if (n == CTL_IDS_MAX || !qid_valid(p)) {
            buf_append_str(out, "ERR bad queue id\n");
            return;
        }
        ids[n++] = p;
    }
    for (size_t i = 0; i < n; i++)
        buf_printf(
            out, "%s %s\n", act_one(cc->srv->sched, act, ids[i]) == 0 ? "done" : "unknown", ids[i]);
    buf_append_str(out, "OK\n");
}

/* HOLD, RELEASE, DELETE, FLUSH with ids or ALL [selectors]: a walk for
 * ALL (true), else the answer in out. Bare FLUSH retries everything. */
static bool
ctl_action(struct ctl_conn *cc, enum sched_act act, char *arg, struct buf *out)
{
    struct sched_select sel;
    if (arg == NULL && act == SCHED_ACT_FLUSH) {
        sched_flush(cc->srv->sched);
        buf_append_str(out, "OK\n");
        return false;
    }
    if (arg == NULL || *arg == '\0') {
        buf_append_str(out, "ERR bad queue id\n");
        return false;
    }
    if (strncmp(arg, "ALL", 3) != 0 || (arg[3] != '\0' && arg[3] != ' ')) {
        act_ids(cc, act, arg, out);
        return false;
    }
    if (parse_select(arg[3] == ' ' ? arg + 4 : NULL, &sel) < 0) {
        buf_append_str(out, "ERR bad selection\n");
        return false;
    }
    walk_begin(cc);
    cc->walk = sched_walk_act(cc->srv->sched, act, &sel, walk_cb, cc);
    return true;
}

/* Run one request; data lines and the final OK/ERR go to out. LIST,
 * SUMMARY and actions on ALL start a walk instead: true. */
static bool
ctl_dispatch(struct ctl_conn *cc, char *line, struct buf *out)
{
    struct ctl_server *c = cc->srv;
    char *arg = strchr(line, ' ');
    if (arg)
        *arg++ = '\0';
    for (size_t i = 0; i < TERN_ARRAY_LEN(ctl_acts); i++) {
        if (strcmp(line, ctl_acts[i].verb) == 0)
            return ctl_action(cc, ctl_acts[i].act, arg, out);
    }
    if ((strcmp(line, "LIST") == 0 || strcmp(line, "SUMMARY") == 0) && !arg) {
        walk_begin(cc);
        cc->walk = sched_walk_start(c->sched, line[0] == 'S', walk_cb, cc);
        return true;
    } else if (strcmp(line, "STATUS") == 0 && !arg) {
        c->status(out, c->status_arg);
        buf_append_char(out, '\n');
    } else if (strcmp(line, "TLSRPT-NOW") == 0 && !arg) {
        if (c->tlsrpt == NULL || !c->tlsrpt(c->tlsrpt_arg)) {
            buf_append_str(out, "ERR TLS reporting is off (tls_rpt = no) or already sending\n");
            return false;
        }
    } else {
        buf_append_str(out, "ERR unknown request\n");
        return false;
    }
    buf_append_str(out, "OK\n");
    return false;
}

static void ctl_read_cb(struct bufferevent *bev, void *arg);

/* The last answer drained: read the next request (one may be waiting). */
static void
next_request_cb(struct bufferevent *bev, void *arg)
{
    bufferevent_setcb(bev, ctl_read_cb, NULL, ctl_event_cb, arg);
    bufferevent_enable(bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        ctl_read_cb(bev, arg);
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
    evbuffer_drain(in, eol); /* the line end: the next request starts after it */
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
    /* Another request may follow, read once this answer is out. */
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_setcb(bev, ctl_read_cb, next_request_cb, ctl_event_cb, cc);
    return;
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
    if (given_fd >= 0) {
        c->given = true;
        c->lis = evconnlistener_new(
            base, ctl_accept_cb, c, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, given_fd);
        given_fd = -1;
        if (c->lis == NULL) {
            buf_printf(err, "cannot listen on %s: %s\n", c->path, strerror(errno));
            goto fail;
        }
        return c;
    }
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
    if (!c->given)
        unlink(c->path);
    free(c->path);
    free(c);
}

void
ctl_server_set_tlsrpt(struct ctl_server *c, bool (*fn)(void *arg), void *arg)
{
    c->tlsrpt = fn;
    c->tlsrpt_arg = arg;
}

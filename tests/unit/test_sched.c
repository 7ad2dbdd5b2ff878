/*
 * Unit tests of the scheduler (src/sched): the real scheduler, spool (in a
 * temporary directory), delivery engine and event loop, delivering to a tiny
 * rule-driven SMTP server that runs in the same loop (a libevent listener on
 * 127.0.0.1) or to a closed port. Each test chooses the server's RCPT replies
 * per recipient and per attempt. Every wait is bounded by a deadline.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <dirent.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "config/config.h"
#include "dns/dns.h"
#include "sched/sched.h"
#include "sched/sched_int.h"
#include "spool/spool.h"
#include "spool/spool_int.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/loopq.h"
#include "util/util.h"

/* ---- the scripted SMTP server ---- */

#define SRV_MAX_TX    16
#define SRV_MAX_RCPTS 8
#define SRV_MAX_CONNS 32
#define SRV_MAX_RULES 4
#define SRV_ADDR_MAX  128
#define SRV_BODY_MAX  (1024 * 1024)

/* The replies to RCPT TO:<addr>: replies[n] for its n-th RCPT (from 0); the
 * last one given repeats. Addresses without a rule get 250. */
struct rule {
    const char *addr;
    const char *replies[4];
};

struct srv_tx {
    char from[SRV_ADDR_MAX];
    char rcpts[SRV_MAX_RCPTS][SRV_ADDR_MAX]; /* accepted ones, in order */
    size_t n_rcpts;
    struct buf body; /* dot-unstuffed, CRLF line ends */
};

struct srv;

struct sconn {
    struct srv *srv;
    struct bufferevent *bev;
    bool in_data, closing;
    struct srv_tx cur;
};

struct srv {
    struct evconnlistener *lis;
    uint16_t port;
    struct rule rules[SRV_MAX_RULES];
    size_t n_rules;
    unsigned rule_hits[SRV_MAX_RULES]; /* RCPTs seen per rule */
    bool stall_dot;                    /* do not answer the final dot until srv_release */
    struct sconn *stalled;
    bool stall_greeting; /* do not greet until srv_greet */
    struct sconn *ungreeted;
    struct srv_tx tx[SRV_MAX_TX]; /* transactions answered 250 after the dot */
    size_t n_tx;
    unsigned n_mail; /* MAIL commands seen */
    unsigned n_conns;
    int errors; /* unknown commands */
    struct sconn *conns[SRV_MAX_CONNS];
};

static void
tx_reset(struct srv_tx *t)
{
    buf_fini(&t->body);
    memset(t, 0, sizeof(*t));
}

static void
sconn_close(struct sconn *sc)
{
    struct srv *s = sc->srv;
    for (size_t i = 0; i < SRV_MAX_CONNS; i++) {
        if (s->conns[i] == sc)
            s->conns[i] = NULL;
    }
    if (s->stalled == sc)
        s->stalled = NULL;
    if (s->ungreeted == sc)
        s->ungreeted = NULL;
    bufferevent_free(sc->bev);
    tx_reset(&sc->cur);
    free(sc);
}

static void
sconn_say(struct sconn *sc, const char *text)
{
    bufferevent_write(sc->bev, text, strlen(text));
    bufferevent_write(sc->bev, "\r\n", 2);
}

/* The address between < and > after a MAIL FROM: or RCPT TO: verb. */
static void
arg_addr(const char *line, char *out, size_t cap)
{
    const char *lt = strchr(line, '<');
    const char *gt = lt ? strchr(lt, '>') : NULL;
    size_t n = (lt && gt) ? (size_t)(gt - lt - 1) : 0;
    if (n >= cap)
        n = cap - 1;
    memcpy(out, lt ? lt + 1 : "", n);
    out[n] = '\0';
}

static const char *
rcpt_reply(struct srv *s, const char *addr)
{
    for (size_t i = 0; i < s->n_rules; i++) {
        const struct rule *r = &s->rules[i];
        unsigned n;
        if (strcmp(r->addr, addr) != 0)
            continue;
        n = s->rule_hits[i]++;
        while (n > 0 && (n >= 4 || r->replies[n] == NULL))
            n--;
        return r->replies[n];
    }
    return "250 2.1.5 ok";
}

static void
srv_finish_tx(struct sconn *sc, const char *reply)
{
    struct srv *s = sc->srv;
    if (reply[0] == '2' && s->n_tx < SRV_MAX_TX) {
        s->tx[s->n_tx++] = sc->cur; /* the body moves */
        memset(&sc->cur, 0, sizeof(sc->cur));
    } else {
        tx_reset(&sc->cur);
    }
    sconn_say(sc, reply);
}

static void
srv_data_line(struct sconn *sc, const char *line, size_t len)
{
    if (len == 1 && line[0] == '.') {
        sc->in_data = false;
        if (sc->srv->stall_dot) {
            sc->srv->stalled = sc;
            return;
        }
        srv_finish_tx(sc, "250 2.0.0 queued as t1");
        return;
    }
    if (line[0] == '.') { /* RFC 5321 §4.5.2 */
        line++;
        len--;
    }
    if (sc->cur.body.len + len < SRV_BODY_MAX) {
        buf_append(&sc->cur.body, line, len);
        buf_append(&sc->cur.body, "\r\n", 2);
    }
}

static void
srv_command(struct sconn *sc, const char *line)
{
    struct srv *s = sc->srv;
    char addr[SRV_ADDR_MAX];
    if (strncasecmp(line, "EHLO", 4) == 0) {
        sconn_say(sc, "250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                      "250 ENHANCEDSTATUSCODES");
    } else if (strncasecmp(line, "HELO", 4) == 0 || strncasecmp(line, "NOOP", 4) == 0) {
        sconn_say(sc, "250 ok");
    } else if (strncasecmp(line, "MAIL FROM:", 10) == 0) {
        tx_reset(&sc->cur);
        arg_addr(line, sc->cur.from, sizeof(sc->cur.from));
        s->n_mail++;
        sconn_say(sc, "250 2.1.0 ok");
    } else if (strncasecmp(line, "RCPT TO:", 8) == 0) {
        const char *r;
        arg_addr(line, addr, sizeof(addr));
        r = rcpt_reply(s, addr);
        if (r[0] == '2' && sc->cur.n_rcpts < SRV_MAX_RCPTS)
            snprintf(sc->cur.rcpts[sc->cur.n_rcpts++], SRV_ADDR_MAX, "%s", addr);
        sconn_say(sc, r);
    } else if (strncasecmp(line, "DATA", 4) == 0) {
        if (sc->cur.n_rcpts == 0) {
            sconn_say(sc, "554 5.5.1 no valid recipients"); /* RFC 2920 §3.1 */
            return;
        }
        sc->in_data = true;
        sconn_say(sc, "354 go ahead");
    } else if (strncasecmp(line, "RSET", 4) == 0) {
        tx_reset(&sc->cur);
        sconn_say(sc, "250 2.0.0 ok");
    } else if (strncasecmp(line, "QUIT", 4) == 0) {
        sc->closing = true;
        sconn_say(sc, "221 2.0.0 bye");
    } else {
        s->errors++;
        sconn_say(sc, "500 5.5.2 unknown command");
    }
}

static void
srv_read_cb(struct bufferevent *bev, void *arg)
{
    struct sconn *sc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char *line;
    size_t len;
    while (!sc->closing && (line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) != NULL) {
        if (sc->in_data)
            srv_data_line(sc, line, len);
        else
            srv_command(sc, line);
        free(line);
    }
}

static void
srv_write_cb(struct bufferevent *bev, void *arg)
{
    struct sconn *sc = arg;
    if (sc->closing)
        sconn_close(sc);
}

static void
srv_event_cb(struct bufferevent *bev, short what, void *arg)
{
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        sconn_close(arg);
}

static void
srv_accept_cb(
    struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct srv *s = arg;
    struct sconn *sc = xcalloc(1, sizeof(*sc));
    size_t i;
    sc->srv = s;
    sc->bev = bufferevent_socket_new(evconnlistener_get_base(lis), fd, BEV_OPT_CLOSE_ON_FREE);
    s->n_conns++;
    for (i = 0; i < SRV_MAX_CONNS && s->conns[i] != NULL; i++)
        ;
    if (i == SRV_MAX_CONNS) {
        bufferevent_free(sc->bev);
        free(sc);
        return;
    }
    s->conns[i] = sc;
    bufferevent_setcb(sc->bev, srv_read_cb, srv_write_cb, srv_event_cb, sc);
    bufferevent_enable(sc->bev, EV_READ | EV_WRITE);
    if (s->stall_greeting && s->ungreeted == NULL) {
        s->ungreeted = sc; /* the client waits: its job stays queued */
        return;
    }
    sconn_say(sc, "220 test.example ESMTP");
}

/* Send the greeting that stall_greeting held back. */
static void
srv_greet(struct srv *s)
{
    assert_non_null(s->ungreeted);
    s->stall_greeting = false;
    sconn_say(s->ungreeted, "220 test.example ESMTP");
    s->ungreeted = NULL;
}

static void
srv_start(struct srv *s, struct event_base *base, const struct rule *rules, size_t n_rules)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    memset(s, 0, sizeof(*s));
    assert_true(n_rules <= SRV_MAX_RULES);
    for (size_t i = 0; i < n_rules; i++)
        s->rules[i] = rules[i];
    s->n_rules = n_rules;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->lis = evconnlistener_new_bind(
        base, srv_accept_cb, s, LEV_OPT_CLOSE_ON_FREE, 16, (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(s->lis);
    assert_int_equal(getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&sin, &len), 0);
    s->port = ntohs(sin.sin_port);
}

static void
srv_stop(struct srv *s)
{
    if (s->lis == NULL)
        return;
    for (size_t i = 0; i < SRV_MAX_CONNS; i++) {
        if (s->conns[i] != NULL)
            sconn_close(s->conns[i]);
    }
    for (size_t i = 0; i < s->n_tx; i++)
        buf_fini(&s->tx[i].body);
    evconnlistener_free(s->lis);
    s->lis = NULL;
}

/* Answer the final dot that stall_dot held back. */
static void
srv_release(struct srv *s, const char *reply)
{
    struct sconn *sc = s->stalled;
    assert_non_null(sc);
    s->stalled = NULL;
    s->stall_dot = false;
    srv_finish_tx(sc, reply);
}

/* The first transaction from sender with rcpt among its recipients, or NULL. */
static const struct srv_tx *
srv_find_tx(const struct srv *s, const char *from, const char *rcpt)
{
    for (size_t i = 0; i < s->n_tx; i++) {
        if (strcmp(s->tx[i].from, from) != 0)
            continue;
        for (size_t k = 0; k < s->tx[i].n_rcpts; k++) {
            if (strcmp(s->tx[i].rcpts[k], rcpt) == 0)
                return &s->tx[i];
        }
    }
    return NULL;
}

static unsigned
srv_hits(const struct srv *s, const char *addr)
{
    for (size_t i = 0; i < s->n_rules; i++) {
        if (strcmp(s->rules[i].addr, addr) == 0)
            return s->rule_hits[i];
    }
    return 0;
}

/* A loopback port where nobody listens: connecting is refused. */
static uint16_t
closed_port(void)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

/* ---- harness: loop, spool, configuration, scheduler ---- */

#define MAX_HOOKS 16

struct hooked {
    char qid[SPOOL_QID_LEN + 1];
    char sender[SRV_ADDR_MAX];
    bool is_bounce;
};

struct h {
    struct event_base *base;
    struct loopq *q;
    char dir[64];
    struct spool *sp;
    struct config *cfg;
    struct sched *s;
    struct dns *dns;
    struct srv srv[2];              /* srv[1] only for rerouting */
    uint16_t port;                  /* the smarthost port of cfg */
    struct hooked hooks[MAX_HOOKS]; /* every commit, DSNs included */
    size_t n_hooks;
    bool committed, commit_ok;
};

static const char body[] = "From: s@x.test\r\n"
                           "To: a@x.test\r\n"
                           "Subject: scheduler test\r\n"
                           "Message-ID: <sched-test@x.test>\r\n"
                           "\r\n"
                           "hello\r\n"
                           ".a line with a leading dot\r\n";

/* One turn of the loop, at most 10 ms. */
static void
loop_step(struct h *h)
{
    /* One pass, at most 10 ms of waiting: a caller waiting for a condition
     * gets control back in the pass that made it true, before the loop goes
     * on (a commit's pass must not also start the delivery a test is about
     * to hold or delete). */
    struct timeval tv = { 0, 10000 };
    event_base_loopexit(h->base, &tv);
    event_base_loop(h->base, EVLOOP_ONCE);
}

static void
run_for(struct h *h, int64_t ms)
{
    int64_t end = tern_mono_ms() + ms;
    while (tern_mono_ms() < end)
        loop_step(h);
}

/* A bound, never a pace: the tests run beside others on a 2-core machine
 * where one fsync can stall for seconds, so waiting longer costs nothing when
 * the condition comes and only turns a stall into a pass when it was late. */
#define SLOW_MACHINE 5

/* Run the loop until cond holds; fail after ms (times SLOW_MACHINE).
 * Evaluates cond repeatedly. */
#define RUN_UNTIL(h, cond, ms)                                                                     \
    do {                                                                                           \
        int64_t end_ = tern_mono_ms() + (int64_t)(ms)*SLOW_MACHINE;                                \
        while (!(cond)) {                                                                          \
            if (tern_mono_ms() >= end_)                                                            \
                fail_msg("%s:%d: timed out waiting for %s", __FILE__, __LINE__, #cond);            \
            loop_step(h);                                                                          \
        }                                                                                          \
    } while (0)

static void
commit_hook(const struct spool_env *env, void *arg)
{
    struct h *h = arg;
    if (h->n_hooks < MAX_HOOKS) {
        struct hooked *k = &h->hooks[h->n_hooks++];
        snprintf(k->qid, sizeof(k->qid), "%s", env->qid);
        snprintf(k->sender, sizeof(k->sender), "%s", env->sender);
        k->is_bounce = env->is_bounce;
    }
    sched_add(h->s, env);
}

static void
commit_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct h *h = arg;
    h->committed = true;
    h->commit_ok = ok;
    /* Stop before the scheduler's timer runs: the test sees the message queued. */
    event_base_loopbreak(h->base);
}

static const char *const base_overrides[] = {
    "hostname=tern.test",
    "smarthost_tls=none",
    "retry_initial=1s",
    "retry_max=2s",
    "idle_conn_timeout=1s",
    "connect_timeout=2s",
    "delivery_timeout=3s",
};

/* extra: more "-o" settings separated by ';', or NULL. */
static struct config *
h_config(struct h *h, uint16_t port, const char *extra)
{
    const char *ov[16];
    char smarthost[64], spool[128], more[256];
    size_t n = 0;
    struct buf err = BUF_INIT;
    struct config *cfg;
    snprintf(smarthost, sizeof(smarthost), "smarthost=127.0.0.1:%u", port);
    snprintf(spool, sizeof(spool), "spool_dir=%s", h->dir);
    for (size_t i = 0; i < sizeof(base_overrides) / sizeof(base_overrides[0]); i++)
        ov[n++] = base_overrides[i];
    ov[n++] = smarthost;
    ov[n++] = spool;
    snprintf(more, sizeof(more), "%s", extra != NULL ? extra : "");
    for (char *p = more, *sv = NULL; (p = strtok_r(p, ";", &sv)) != NULL && n < 16; p = NULL)
        ov[n++] = p;
    cfg = config_load(NULL, ov, n, false, &err);
    if (cfg == NULL)
        fail_msg("config_load: %s", err.data ? err.data : "?");
    buf_fini(&err);
    return cfg;
}

static void
h_start_sched(struct h *h)
{
    struct buf err = BUF_INIT;
    h->sp = spool_open(h->dir, h->q, NULL, &err);
    if (h->sp == NULL)
        fail_msg("spool_open: %s", err.data ? err.data : "?");
    buf_fini(&err);
    h->dns = dns_new(h->base, NULL, 0, &err);
    if (h->dns == NULL)
        fail_msg("dns_new: %s", err.data ? err.data : "?");
    buf_fini(&err);
    h->s = sched_new(h->base, h->sp, h->dns, h->cfg);
    spool_set_commit_hook(h->sp, commit_hook, h);
}

/* closed: the smarthost is a port where connecting is refused. */
static struct h *
h_new(const struct rule *rules, size_t n_rules, const char *extra, bool closed)
{
    struct h *h = xcalloc(1, sizeof(*h));
    h->base = event_base_new();
    assert_non_null(h->base);
    h->q = loopq_new(h->base);
    assert_non_null(h->q);
    snprintf(h->dir, sizeof(h->dir), "/tmp/test_sched.XXXXXX");
    assert_non_null(mkdtemp(h->dir));
    srv_start(&h->srv[0], h->base, rules, n_rules);
    h->port = closed ? closed_port() : h->srv[0].port;
    h->cfg = h_config(h, h->port, extra);
    h_start_sched(h);
    return h;
}

static void
h_stop_sched(struct h *h)
{
    spool_recover_stop(h->sp);
    loopq_run(h->q);
    spool_set_commit_hook(h->sp, NULL, NULL); /* as ternd: no sched_add after sched_free */
    sched_free(h->s);
    h->s = NULL;
    dns_free(h->dns);
    h->dns = NULL;
    spool_free(h->sp); /* writes the state records still queued */
    h->sp = NULL;
    loopq_run(h->q);
}

static struct sched_stats stats(const struct h *h);

/* Stop scheduler and spool, keep the files, start again with smarthost port:
 * returns how many messages the scheduler loaded. */
static long
h_restart(struct h *h, uint16_t port, const char *extra)
{
    h_stop_sched(h);
    config_unref(h->cfg);
    h->port = port;
    h->cfg = h_config(h, port, extra);
    h_start_sched(h);
    sched_load_spool(h->s);
    RUN_UNTIL(h, sched_loaded(h->s), 5000);
    return (long)stats(h).loaded;
}

static void
h_free(struct h *h)
{
    char cmd[128];
    h_stop_sched(h);
    config_unref(h->cfg);
    srv_stop(&h->srv[0]);
    srv_stop(&h->srv[1]);
    loopq_free(h->q);
    event_base_free(h->base);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h->dir);
    assert_int_equal(system(cmd), 0);
    free(h);
}

/* Put a message in the spool as the SMTP server does; returns after the commit
 * (the scheduler knows it, nothing was tried yet). notify: the NOTIFY bits of
 * each recipient, or NULL for none. qid: SPOOL_QID_LEN + 1 bytes. */
static void
h_submit_notify(struct h *h, const char *sender, const char *const *rcpts, const unsigned *notify,
    size_t n, char *qid)
{
    struct spool_env *e = xcalloc(1, sizeof(*e));
    struct spool_writer *w;
    e->sender = xstrdup(sender);
    e->body = BODY_7BIT;
    for (size_t i = 0; i < n; i++)
        spool_env_add_rcpt(e, rcpts[i], NULL, notify != NULL ? notify[i] : 0);
    w = spool_writer_new(h->sp, e);
    assert_non_null(w);
    spool_writer_write(w, body, strlen(body));
    snprintf(qid, SPOOL_QID_LEN + 1, "%s", e->qid);
    spool_env_free(e);
    h->committed = false;
    spool_writer_commit(w, h->q, commit_cb, 7, h);
    RUN_UNTIL(h, h->committed, 3000);
    assert_true(h->commit_ok);
}

static void
h_submit(struct h *h, const char *sender, const char *const *rcpts, size_t n, char *qid)
{
    h_submit_notify(h, sender, rcpts, NULL, n, qid);
}

static size_t n_committed;

static void
many_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    assert_true(ok);
    n_committed++;
}

/* n messages from sender to rcpt, committed together (one sync). */
static void
h_submit_many(struct h *h, const char *sender, const char *rcpt, size_t n)
{
    n_committed = 0;
    for (size_t i = 0; i < n; i++) {
        struct spool_env *e = xcalloc(1, sizeof(*e));
        struct spool_writer *w;
        e->sender = xstrdup(sender);
        e->body = BODY_7BIT;
        spool_env_add_rcpt(e, rcpt, NULL, 0);
        w = spool_writer_new(h->sp, e);
        spool_writer_write(w, body, strlen(body));
        spool_env_free(e);
        spool_writer_commit(w, h->q, many_cb, i, h);
    }
    RUN_UNTIL(h, n_committed == n, 10000);
}

/* Live messages in the spool, once every record asked for is written. */
static size_t
queue_count(const struct h *h)
{
    struct spool_stats st;
    spool_sync_wait(h->sp);
    spool_get_stats(h->sp, &st);
    return (size_t)st.live_messages;
}

static bool
in_spool(const struct h *h, const char *qid)
{
    struct spool_env *env;
    spool_sync_wait(h->sp);
    env = spool_load(h->sp, qid);
    spool_env_free(env);
    return env != NULL;
}

/* The flags of recipient idx of qid as the spool has them, once every
 * record asked for is written; UINT32_MAX when the message is gone. */
static uint32_t
rcpt_flags(const struct h *h, const char *qid, size_t idx)
{
    struct spool_env *env;
    uint32_t f = UINT32_MAX;
    spool_sync_wait(h->sp);
    env = spool_load(h->sp, qid);
    if (env != NULL && idx < env->n_rcpts)
        f = env->rcpts[idx].flags;
    spool_env_free(env);
    return f;
}

/* Delay warnings ("Action: delayed" reports from <> to `to`) the server took. */
static size_t
delayed_dsns(const struct srv *s, const char *to, const struct srv_tx **last)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_tx; i++) {
        const struct srv_tx *t = &s->tx[i];
        if (t->from[0] == '\0' && t->n_rcpts == 1 && strcmp(t->rcpts[0], to) == 0 &&
            t->body.data != NULL && strstr(t->body.data, "Action: delayed") != NULL) {
            n++;
            if (last != NULL)
                *last = t;
        }
    }
    return n;
}

static struct sched_stats
stats(const struct h *h)
{
    struct sched_stats st;
    sched_get_stats(h->s, &st);
    return st;
}

static size_t
count_lines(const char *s)
{
    size_t n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

/* ---- LIST and SUMMARY, as the control socket streams them ---- */

struct walk_out {
    struct buf *out;
    struct sched_walk *w;
    bool done;
};

static void
walk_fn(void *arg, const char *data, size_t len, enum sched_walk_ev ev)
{
    struct walk_out *o = arg;
    buf_append(o->out, data, len);
    if (ev == SCHED_WALK_MORE)
        sched_walk_next(o->w);
    else
        o->done = true;
}

/* The whole LIST (or SUMMARY) reply, the loop running meanwhile. */
static void
walk_json(struct h *h, bool summary, struct buf *out)
{
    struct walk_out o = { out, NULL, false };
    o.w = sched_walk_start(h->s, summary, walk_fn, &o);
    RUN_UNTIL(h, o.done, 5000);
}

/* ---- reading the JSON lines by string matching ---- */

/* Copy the line of out that starts with {"id":"qid" into line; false if none. */
static bool
json_line(const char *out, const char *key, const char *val, char *line, size_t cap)
{
    char pre[128];
    const char *p = out;
    snprintf(pre, sizeof(pre), "{\"%s\":\"%s\"", key, val);
    while (p != NULL && *p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (strncmp(p, pre, strlen(pre)) == 0) {
            assert_true(len < cap);
            memcpy(line, p, len);
            line[len] = '\0';
            return true;
        }
        p = nl ? nl + 1 : NULL;
    }
    return false;
}

/* The list line about qid (fails when there is none). */
static void
list_line(struct h *h, const char *qid, char *line, size_t cap)
{
    struct buf out = BUF_INIT;
    walk_json(h, false, &out);
    if (!json_line(out.data, "id", qid, line, cap))
        fail_msg("no list line for %s in:\n%s", qid, out.data ? out.data : "");
    buf_fini(&out);
}

/* The number after "key": in s, or -1. */
static long long
json_num(const char *s, const char *key)
{
    char pat[64];
    const char *p;
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    p = strstr(s, pat);
    if (p == NULL)
        return -1;
    p += strlen(pat);
    if (*p < '0' || *p > '9')
        return -1;
    return strtoll(p, NULL, 10);
}

struct want_rcpt {
    const char *addr;
    const char *status; /* "queued", "deferred", "delivering" */
    long long attempts;
    const char *last_error; /* "null", or a substring of the JSON string */
};

/* The list line must name exactly these pending recipients, in this order. */
static void
check_rcpts(const char *line, const struct want_rcpt *want, size_t n)
{
    const char *p = strstr(line, "\"recipients\":[");
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        char pre[160], obj[512], st[64];
        const char *end, *le;
        size_t len;
        snprintf(pre, sizeof(pre), "{\"address\":\"%s\"", want[i].addr);
        p = strstr(p, pre);
        if (p == NULL)
            fail_msg("recipient %s not listed in %s", want[i].addr, line);
        end = strchr(p, '}');
        assert_non_null(end);
        len = (size_t)(end - p);
        assert_true(len < sizeof(obj));
        memcpy(obj, p, len);
        obj[len] = '\0';
        snprintf(st, sizeof(st), "\"status\":\"%s\"", want[i].status);
        if (strstr(obj, st) == NULL)
            fail_msg("%s: want status %s in %s", want[i].addr, want[i].status, obj);
        if (json_num(obj, "attempts") != want[i].attempts)
            fail_msg("%s: want attempts %lld in %s", want[i].addr, want[i].attempts, obj);
        le = strstr(obj, "\"last_error\":");
        assert_non_null(le);
        le += strlen("\"last_error\":");
        if (strcmp(want[i].last_error, "null") == 0
                ? strcmp(le, "null") != 0
                : (le[0] != '"' || strstr(le, want[i].last_error) == NULL))
            fail_msg("%s: want last_error %s in %s", want[i].addr, want[i].last_error, obj);
        p = end;
    }
    /* No other recipient after the wanted ones. */
    if (strstr(p, "{\"address\":") != NULL)
        fail_msg("unexpected recipient in %s", line);
}

static void
check_list(struct h *h, const char *qid, bool held, const struct want_rcpt *want, size_t n)
{
    char line[4096];
    list_line(h, qid, line, sizeof(line));
    assert_non_null(strstr(line, held ? "\"held\":true" : "\"held\":false"));
    check_rcpts(line, want, n);
}

static size_t
list_count(struct h *h)
{
    struct buf out = BUF_INIT;
    size_t n;
    walk_json(h, false, &out);
    n = count_lines(out.data);
    buf_fini(&out);
    return n;
}

static const char *const rcpts3[] = { "a@x.test", "b@x.test", "c@x.test" };
static const char *const rcpt_a[] = { "a@x.test" };
static const char *const rcpt_b[] = { "b@x.test" };
static const char *const rcpt_c[] = { "c@x.test" };

/* ---- tests ---- */

/* ---- the index ---- */

static uint64_t
test_rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* The index finds what was added and only that, through deletes and slot
 * reuse; its heap gives entries back by (next_s, qid). */
static void
test_index(void **state)
{
    static const struct {
        uint32_t n;    /* entries */
        uint32_t del;  /* every del-th is deleted (0: none) */
        uint32_t span; /* next_s drawn from [0, span) */
    } cases[] = { { 1, 0, 1 }, { 100, 2, 10 }, { 5000, 3, 1000 }, { 20000, 7, 3 } };
    for (size_t c = 0; c < TERN_ARRAY_LEN(cases); c++) {
        struct sched_index x;
        uint64_t r = 0x9e3779b97f4a7c15ull + c, *q = xcalloc(cases[c].n, sizeof(*q));
        uint32_t prev_s = 0, n = 0;
        uint64_t prev_q = 0;
        sidx_init(&x);
        for (uint32_t i = 0; i < cases[c].n; i++) {
            uint32_t h;
            q[i] = test_rnd(&r) | 1;
            h = sidx_add(&x, q[i]);
            sidx_ent(&x, h)->next_s = (uint32_t)(test_rnd(&r) % cases[c].span);
            sidx_heap_push(&x, h);
        }
        for (uint32_t i = 0; i < cases[c].n; i++) {
            uint32_t h = sidx_find(&x, q[i]);
            assert_int_not_equal(h, SCHED_NONE);
            assert_true(sidx_ent(&x, h)->qid == q[i]);
            if (cases[c].del && i % cases[c].del == 0)
                sidx_del(&x, h);
        }
        assert_int_equal(sidx_find(&x, 0), SCHED_NONE); /* never added (all odd) */
        for (uint32_t i = 0; i < cases[c].n; i++) {
            bool gone = cases[c].del && i % cases[c].del == 0;
            assert_true((sidx_find(&x, q[i]) == SCHED_NONE) == gone);
        }
        /* Slots are reused and deleted entries can come back. */
        for (uint32_t i = 0; cases[c].del && i < cases[c].n; i += cases[c].del) {
            uint32_t h = sidx_add(&x, q[i]);
            sidx_ent(&x, h)->next_s = cases[c].span; /* after every other */
            sidx_heap_push(&x, h);
        }
        assert_int_equal(x.live, cases[c].n);
        assert_true(x.n <= cases[c].n);
        while (sidx_heap_top(&x) != SCHED_NONE) {
            uint32_t h = sidx_heap_top(&x);
            const struct sched_ent *e = sidx_ent(&x, h);
            assert_true(e->next_s > prev_s || (e->next_s == prev_s && (n == 0 || e->qid > prev_q)));
            prev_s = e->next_s;
            prev_q = e->qid;
            sidx_heap_remove(&x, h);
            sidx_del(&x, h);
            n++;
        }
        assert_int_equal(n, cases[c].n);
        assert_int_equal(x.live, 0);
        sidx_fini(&x);
        free(q);
    }
}

/* A flush makes every waiting entry due, oldest qid first. */
static void
test_index_all_due(void **state)
{
    struct sched_index x;
    static const uint32_t next[] = { 50, 3, 900, 7, 7, 1000 };
    uint64_t prev = 0;
    sidx_init(&x);
    for (size_t i = 0; i < TERN_ARRAY_LEN(next); i++) {
        uint32_t h = sidx_add(&x, 100 - i); /* later entries, smaller qids */
        sidx_ent(&x, h)->next_s = next[i];
        sidx_heap_push(&x, h);
    }
    sidx_heap_all_due(&x, 5);
    for (size_t i = 0; i < TERN_ARRAY_LEN(next); i++) {
        uint32_t h = sidx_heap_top(&x);
        const struct sched_ent *e = sidx_ent(&x, h);
        assert_true(e->next_s == (next[100 - e->qid] < 5 ? next[100 - e->qid] : 5));
        if (e->next_s == 5)
            assert_true(e->qid > prev);
        prev = e->next_s == 5 ? e->qid : 0;
        sidx_heap_remove(&x, h);
    }
    sidx_fini(&x);
}

/* Three recipients, one transaction, then the message leaves the spool. */
static void
test_deliver_three(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    const struct srv_tx *t;
    struct sched_stats st;
    h_submit(h, "s@x.test", rcpts3, 3, qid);
    assert_true(in_spool(h, qid));
    assert_int_equal(queue_count(h), 1);
    st = stats(h);
    assert_int_equal(st.queue_messages, 1);
    assert_int_equal(st.queue_rcpts, 3);

    RUN_UNTIL(h, h->srv[0].n_tx >= 1 && queue_count(h) == 0, 5000);
    t = &h->srv[0].tx[0];
    assert_string_equal(t->from, "s@x.test");
    assert_int_equal(t->n_rcpts, 3);
    assert_string_equal(t->rcpts[0], "a@x.test");
    assert_string_equal(t->rcpts[1], "b@x.test");
    assert_string_equal(t->rcpts[2], "c@x.test");
    assert_int_equal(t->body.len, strlen(body));
    assert_memory_equal(t->body.data, body, strlen(body));
    assert_false(in_spool(h, qid));

    run_for(h, 200); /* nothing is sent twice */
    assert_int_equal(h->srv[0].n_tx, 1);
    assert_int_equal(h->srv[0].n_mail, 1);
    assert_int_equal(h->srv[0].errors, 0);
    st = stats(h);
    assert_int_equal(st.delivered, 3);
    assert_int_equal(st.deferred, 0);
    assert_int_equal(st.bounced, 0);
    assert_int_equal(st.expired, 0);
    assert_int_equal(st.queue_messages, 0);
    assert_int_equal(st.queue_rcpts, 0);
    assert_int_equal(list_count(h), 0);
    assert_int_equal(h->n_hooks, 1); /* no DSN */
    h_free(h);
}

/* 250, 451 then 250, and 550 in one transaction: a DSN about the 550 goes
 * to the sender, the 451 one is retried after the back-off and delivered. */
static void
test_mixed_results(void **state)
{
    static const struct rule rules[] = {
        { "b@x.test", { "451 4.3.0 try again later", "250 2.1.5 ok" } },
        { "c@x.test", { "550 5.1.1 no such user" } },
    };
    static const struct want_rcpt after1[] = {
        { "b@x.test", "deferred", 1, "451 4.3.0 try again later" },
    };
    /* b's retry waits 3 s: the listing below comes after two commits,
     * which a disk slow to sync can stretch past a shorter wait. */
    struct h *h = h_new(rules, 2, "retry_initial=3s;retry_max=6s", false);
    char qid[SPOOL_QID_LEN + 1];
    const struct srv_tx *t, *dsn;
    struct sched_stats st;
    int64_t first_ms;
    h_submit(h, "s@x.test", rcpts3, 3, qid);

    RUN_UNTIL(h, stats(h).bounced == 1, 5000);
    first_ms = tern_mono_ms();
    st = stats(h);
    assert_true(st.delivered == 1 || st.delivered == 2); /* a, and the DSN may be out too */
    assert_int_equal(st.deferred, 1);
    assert_int_equal(st.bounced, 1);
    t = srv_find_tx(&h->srv[0], "s@x.test", "a@x.test");
    assert_non_null(t);
    assert_int_equal(t->n_rcpts, 1);
    assert_true(in_spool(h, qid));
    /* c is listed (dsn_pending) until its DSN is in the queue. */
    RUN_UNTIL(h, h->n_hooks == 2, 5000);
    check_list(h, qid, false, after1, 1);

    /* The DSN: a new message from <> to the sender, about c only. */
    RUN_UNTIL(h, srv_find_tx(&h->srv[0], "", "s@x.test") != NULL, 5000);
    dsn = srv_find_tx(&h->srv[0], "", "s@x.test");
    assert_int_equal(dsn->n_rcpts, 1);
    assert_non_null(strstr(dsn->body.data, "c@x.test"));
    assert_non_null(strstr(dsn->body.data, "5.1.1"));
    assert_non_null(strstr(dsn->body.data, "Action: failed"));
    assert_null(strstr(dsn->body.data, "Final-Recipient: rfc822;a@x.test"));
    assert_null(strstr(dsn->body.data, "Final-Recipient: rfc822;b@x.test"));
    assert_int_equal(h->n_hooks, 2);
    assert_string_equal(h->hooks[1].sender, "");
    assert_true(h->hooks[1].is_bounce);

    RUN_UNTIL(
        h, srv_find_tx(&h->srv[0], "s@x.test", "b@x.test") != NULL && queue_count(h) == 0, 6000);
    /* Retried after retry_initial (3 s, jittered to 0.8-1.2 times). */
    assert_true(tern_mono_ms() - first_ms >= 2400);
    assert_int_equal(srv_hits(&h->srv[0], "b@x.test"), 2);
    assert_int_equal(srv_hits(&h->srv[0], "c@x.test"), 1); /* never retried */
    assert_null(srv_find_tx(&h->srv[0], "s@x.test", "c@x.test"));
    assert_int_equal(h->srv[0].n_tx, 3); /* a, the DSN, b */
    st = stats(h);
    assert_int_equal(st.delivered, 3); /* a, b and the DSN */
    assert_int_equal(st.deferred, 1);
    assert_int_equal(st.bounced, 1);
    assert_int_equal(st.queue_messages, 0);
    assert_int_equal(st.queue_rcpts, 0);
    assert_int_equal(list_count(h), 0);
    h_free(h);
}

/* LIST and SUMMARY through queued, delivering and deferred. */
static void
test_list_and_summary(void **state)
{
    static const struct want_rcpt queued[] = {
        { "a@x.test", "queued", 0, "null" },
        { "b@x.test", "queued", 0, "null" },
    };
    static const struct want_rcpt delivering[] = {
        { "a@x.test", "delivering", 0, "null" },
        { "b@x.test", "delivering", 0, "null" },
    };
    static const struct want_rcpt deferred[] = {
        { "a@x.test", "deferred", 1, "451 4.3.0 disk full" },
        { "b@x.test", "deferred", 1, "451 4.3.0 disk full" },
    };
    static const char *const ab[] = { "a@x.test", "b@x.test" };
    struct h *h = h_new(NULL, 0, NULL, false);
    char qid[SPOOL_QID_LEN + 1], line[4096], dest[128];
    struct buf out = BUF_INIT;
    int64_t now_s;
    h->srv[0].stall_dot = true;
    h->srv[0].stall_greeting = true;
    h_submit(h, "s@x.test", ab, 2, qid);
    now_s = tern_now_ms() / 1000;
    RUN_UNTIL(h, h->srv[0].ungreeted != NULL, 5000); /* ready, not yet taken */

    list_line(h, qid, line, sizeof(line));
    assert_int_equal(list_count(h), 1);
    assert_non_null(strstr(line, "\"sender\":\"s@x.test\""));
    assert_true(json_num(line, "arrival") >= now_s - 5 && json_num(line, "arrival") <= now_s);
    assert_int_equal(json_num(line, "size"), (long long)strlen(body));
    check_list(h, qid, false, queued, 2);

    snprintf(dest, sizeof(dest), "smarthost");
    walk_json(h, true, &out);
    assert_int_equal(count_lines(out.data), 1);
    assert_true(json_line(out.data, "destination", dest, line, sizeof(line)));
    assert_int_equal(json_num(line, "messages"), 1);
    assert_int_equal(json_num(line, "recipients"), 2);
    assert_true(json_num(line, "oldest") >= now_s - 5 && json_num(line, "oldest") <= now_s);
    assert_non_null(strstr(line, "\"last_error\":null"));
    buf_reset(&out);

    srv_greet(&h->srv[0]);
    RUN_UNTIL(h, h->srv[0].stalled != NULL, 5000);
    check_list(h, qid, false, delivering, 2);
    srv_release(&h->srv[0], "451 4.3.0 disk full");
    RUN_UNTIL(h, stats(h).deferred == 2, 5000);
    check_list(h, qid, false, deferred, 2);
    assert_int_equal(stats(h).queue_rcpts, 2);

    sched_flush(h->s); /* retry at once rather than after the back-off */
    RUN_UNTIL(h, queue_count(h) == 0, 3000);
    assert_non_null(srv_find_tx(&h->srv[0], "s@x.test", "b@x.test"));
    assert_int_equal(stats(h).delivered, 2);
    assert_int_equal(list_count(h), 0);
    walk_json(h, true, &out);
    assert_int_equal(out.len, 0);
    buf_fini(&out);
    h_free(h);
}

/* A refused connection is a temporary failure: deferred, counted, retried;
 * the destination's last error shows in SUMMARY; delete drops it. */
static void
test_connection_refused(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, true);
    char qid[SPOOL_QID_LEN + 1], line[4096], dest[128];
    struct buf out = BUF_INIT;
    static const struct want_rcpt once[] = { { "a@x.test", "deferred", 1, "" } };
    static const struct want_rcpt twice[] = { { "a@x.test", "deferred", 2, "" } };
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, stats(h).deferred == 1, 5000);
    check_list(h, qid, false, once, 1);

    snprintf(dest, sizeof(dest), "smarthost");
    walk_json(h, true, &out);
    assert_true(json_line(out.data, "destination", dest, line, sizeof(line)));
    assert_null(strstr(line, "\"last_error\":null"));
    assert_non_null(strstr(line, "\"last_error\":\""));
    buf_fini(&out);

    sched_flush(h->s);
    RUN_UNTIL(h, stats(h).deferred == 2, 3000);
    check_list(h, qid, false, twice, 1);
    assert_int_equal(stats(h).bounced + stats(h).expired + stats(h).delivered, 0);
    assert_true(in_spool(h, qid));

    assert_int_equal(sched_delete(h->s, qid), 0);
    assert_false(in_spool(h, qid));
    assert_int_equal(list_count(h), 0);
    assert_int_equal(stats(h).queue_messages, 0);
    assert_int_equal(stats(h).queue_rcpts, 0);
    h_free(h);
}

/* A destination is known while it has work, connections or a backoff
 * pending, and forgotten after: the table does not grow with every domain
 * ever seen. */
static void
test_destination_freed(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    assert_int_equal(stats(h).destinations, 0);
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    assert_int_equal(stats(h).destinations, 1);
    RUN_UNTIL(h, stats(h).delivered == 1, 5000);
    /* The idle connection (idle_conn_timeout 1s) holds it... */
    assert_int_equal(stats(h).destinations, 1);
    /* ...until it closes. */
    RUN_UNTIL(h, stats(h).destinations == 0, 5000);
    h_free(h);

    /* Backed off: kept until the backoff ends, with nothing queued. */
    h = h_new(NULL, 0, NULL, true);
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, stats(h).deferred == 1, 5000);
    assert_int_equal(sched_delete(h->s, qid), 0);
    run_for(h, 100);
    assert_int_equal(stats(h).destinations, 1);
    RUN_UNTIL(h, stats(h).destinations == 0, 5000);
    h_free(h);
}

/* ---- the active set ---- */

static size_t max_active_seen;

static bool
watch_active(struct h *h)
{
    if (stats(h).active > max_active_seen)
        max_active_seen = stats(h).active;
    return true;
}

/* At most active_limit messages are in memory; the others wait as index
 * entries, are read back as room frees, and all go out. */
static void
test_active_limit(void **state)
{
    struct h *h = h_new(NULL, 0, "active_limit=2", false);
    struct buf out = BUF_INIT;
    h->srv[0].stall_dot = true; /* the first transaction waits */
    h_submit_many(h, "s@x.test", "a@x.test", 6);
    max_active_seen = 0;
    RUN_UNTIL(h, watch_active(h) && h->srv[0].stalled != NULL, 5000);
    assert_int_equal(stats(h).queue_messages, 6);
    assert_true(stats(h).active <= 2);
    walk_json(h, false, &out); /* listed whether in memory or not */
    assert_int_equal(count_lines(out.data), 6);
    buf_fini(&out);
    srv_release(&h->srv[0], "250 2.0.0 ok");
    RUN_UNTIL(h, watch_active(h) && queue_count(h) == 0, 10000);
    assert_int_equal(stats(h).delivered, 6);
    assert_int_equal(stats(h).queue_messages, 0);
    assert_int_equal(stats(h).active, 0);
    assert_true(max_active_seen <= 2);
    h_free(h);
}

/* A message that can only wait leaves memory; new mail for a destination
 * that is backed off waits for it at once, without an attempt of its own;
 * LIST and SUMMARY still show everything. */
static void
test_waiting_out_of_memory(void **state)
{
    static const struct want_rcpt tried[] = { { "a@x.test", "deferred", 1, "" } };
    static const struct want_rcpt waits[] = { { "b@x.test", "queued", 0, "null" } };
    struct h *h = h_new(NULL, 0, "retry_initial=10s;retry_max=20s", true);
    char q1[SPOOL_QID_LEN + 1], q2[SPOOL_QID_LEN + 1], line[4096];
    struct buf out = BUF_INIT;
    h_submit(h, "s@x.test", rcpt_a, 1, q1);
    RUN_UNTIL(h, stats(h).deferred == 1 && stats(h).active == 0, 5000);
    h_submit(h, "s@x.test", rcpt_b, 1, q2);
    RUN_UNTIL(h, stats(h).active == 0, 5000);
    run_for(h, 100);
    assert_int_equal(stats(h).deferred, 1);
    assert_int_equal(stats(h).queue_messages, 2);
    assert_int_equal(stats(h).queue_rcpts, 2);
    check_list(h, q1, false, tried, 1);
    check_list(h, q2, false, waits, 1);
    walk_json(h, true, &out);
    assert_true(json_line(out.data, "destination", "smarthost", line, sizeof(line)));
    assert_int_equal(json_num(line, "messages"), 2);
    assert_int_equal(json_num(line, "recipients"), 2);
    assert_non_null(strstr(line, "Connection refused"));
    buf_fini(&out);
    h_free(h);
}

/* Recovery makes index entries, not loads: after a restart nothing that
 * is not due is read, yet all of it is listed; a flush sends it. */
static void
test_restart_not_loaded(void **state)
{
    const char *slow = "retry_initial=10s;retry_max=20s";
    struct h *h = h_new(NULL, 0, slow, true);
    struct buf out = BUF_INIT;
    h_submit_many(h, "s@x.test", "a@x.test", 5);
    RUN_UNTIL(h, stats(h).deferred >= 1 && stats(h).active == 0, 5000);
    assert_int_equal(h->n_hooks, 5);
    for (size_t i = 0; i < 5; i++) {
        /* as if each had been tried and deferred for a minute */
        struct spool_env *env = spool_load(h->sp, h->hooks[i].qid);
        assert_non_null(env);
        env->rcpts[0].attempts = 1;
        env->rcpts[0].next_try_ms = tern_now_ms() + 60000;
        spool_update_state(h->sp, env);
        spool_env_free(env);
    }

    assert_int_equal(h_restart(h, h->port, slow), 5);
    run_for(h, 200);
    assert_int_equal(stats(h).queue_messages, 5);
    assert_int_equal(stats(h).active, 0);
    walk_json(h, false, &out);
    assert_int_equal(count_lines(out.data), 5);
    buf_fini(&out);

    h_restart(h, h->srv[0].port, slow);
    sched_flush(h->s);
    RUN_UNTIL(h, queue_count(h) == 0, 5000);
    assert_int_equal(stats(h).delivered, 5);
    h_free(h);
}

/* Holding a message that is not in memory is recorded in the spool (it is
 * still held after a restart); releasing it sends it. */
static void
test_hold_out_of_memory(void **state)
{
    const char *slow = "retry_initial=10s;retry_max=20s";
    static const struct want_rcpt tried[] = { { "a@x.test", "deferred", 1, "" } };
    struct h *h = h_new(NULL, 0, slow, true);
    char qid[SPOOL_QID_LEN + 1];
    struct spool_env *env;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, stats(h).deferred == 1 && stats(h).active == 0, 5000);
    assert_int_equal(sched_hold(h->s, qid, true), 0);
    check_list(h, qid, true, tried, 1);
    RUN_UNTIL(h,
        (env = spool_load(h->sp, qid)) != NULL && env->held ? true : (spool_env_free(env), false),
        5000);
    spool_env_free(env);

    assert_int_equal(h_restart(h, h->srv[0].port, slow), 1);
    check_list(h, qid, true, tried, 1);
    sched_flush(h->s);
    run_for(h, 300);
    assert_int_equal(h->srv[0].n_mail, 0);
    assert_int_equal(sched_hold(h->s, qid, false), 0);
    RUN_UNTIL(h, queue_count(h) == 0, 5000);
    assert_int_equal(stats(h).delivered, 1);
    h_free(h);
}

/* LIST over many messages out of memory comes in slices, and a walk whose
 * consumer goes away mid-way is dropped cleanly. */
struct slices {
    struct sched_walk *w;
    struct buf out;
    size_t more;
    bool done, stop_after_first;
};

static void
slices_fn(void *arg, const char *data, size_t len, enum sched_walk_ev ev)
{
    struct slices *sl = arg;
    buf_append(&sl->out, data, len);
    if (ev != SCHED_WALK_MORE) {
        sl->done = true;
        return;
    }
    sl->more++;
    if (sl->stop_after_first) {
        sched_walk_cancel(sl->w);
        sl->done = true;
        return;
    }
    sched_walk_next(sl->w);
}

static void
test_list_slices(void **state)
{
    struct h *h = h_new(NULL, 0, "retry_initial=10s;retry_max=20s;active_limit=10", true);
    struct slices sl;
    h_submit_many(h, "s@x.test", "a@x.test", 600);
    RUN_UNTIL(h, stats(h).active == 0 && stats(h).queue_messages == 600, 10000);

    memset(&sl, 0, sizeof(sl));
    sl.w = sched_walk_start(h->s, false, slices_fn, &sl);
    RUN_UNTIL(h, sl.done, 10000);
    assert_int_equal(count_lines(sl.out.data), 600);
    assert_true(sl.more >= 2);
    buf_fini(&sl.out);

    memset(&sl, 0, sizeof(sl));
    sl.stop_after_first = true;
    sl.w = sched_walk_start(h->s, false, slices_fn, &sl);
    RUN_UNTIL(h, sl.done, 10000);
    run_for(h, 200); /* a read under way, if any, finds no walk */
    assert_true(count_lines(sl.out.data) < 600);
    buf_fini(&sl.out);

    /* Stopping with a walk under way ends it. */
    memset(&sl, 0, sizeof(sl));
    sl.w = sched_walk_start(h->s, true, slices_fn, &sl);
    h_free(h);
    assert_true(sl.done);
    buf_fini(&sl.out);
}

/* qshape's age buckets: 5 minutes, then doubling, the last open-ended. */
static void
test_age_buckets(void **state)
{
    static const struct {
        int64_t age;
        size_t want;
    } cases[] = {
        { -5, 0 },
        { 0, 0 },
        { 299, 0 },
        { 300, 1 },
        { 599, 1 },
        { 600, 2 },
        { 1199, 2 },
        { 1200, 3 },
        { 2400, 4 },
        { 4800, 5 },
        { 9599, 5 },
        { 9600, 6 },
        { 86400 * 30, 6 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (sched_age_bucket(cases[i].age) != cases[i].want)
            fail_msg("age %lld: bucket %zu, want %zu", (long long)cases[i].age,
                sched_age_bucket(cases[i].age), cases[i].want);
    }
}

/* Which messages a selection takes (sender, queued recipient's domain, age). */
static void
test_select_match(void **state)
{
    static const struct {
        const char *name, *sender, *domain;
        int64_t older;
        bool want;
    } cases[] = {
        { "everything", NULL, NULL, 0, true },
        { "sender, any case", "Bob@Example.ORG", NULL, 0, true },
        { "other sender", "alice@example.org", NULL, 0, false },
        { "null sender", "", NULL, 0, false },
        { "domain of a queued recipient", NULL, "Y.test", 0, true },
        { "domain only of a delivered one", NULL, "done.test", 0, false },
        { "domain suffix is not the domain", NULL, "test", 0, false },
        { "old enough", NULL, NULL, 600, true },
        { "not old enough", NULL, NULL, 601, false },
        { "all three", "bob@example.org", "y.test", 60, true },
        { "all but one", "bob@example.org", "z.test", 60, false },
    };
    struct spool_env *env = xcalloc(1, sizeof(*env));
    env->sender = xstrdup("bob@example.org");
    env->arrival_ms = 1000 * 1000;
    spool_env_add_rcpt(env, "a@y.test", NULL, 0);
    spool_env_add_rcpt(env, "b@done.test", NULL, 0);
    env->rcpts[1].state = RCPT_DELIVERED;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sched_select sel = { cases[i].sender, cases[i].domain, cases[i].older };
        if (sched_select_match(&sel, env, 1000 + 600) != cases[i].want)
            fail_msg("%s: want %d", cases[i].name, cases[i].want);
    }
    {
        struct sched_select sel = { "", NULL, 0 };
        free(env->sender);
        env->sender = xstrdup("");
        assert_true(sched_select_match(&sel, env, 1600));
        assert_true(sched_select_needs_env(&sel));
        sel.sender = NULL;
        assert_false(sched_select_needs_env(&sel));
    }
    spool_env_free(env);
}

static size_t
held_count(const struct h *h)
{
    size_t n = 0;
    for (uint32_t i = 0; i < h->s->idx.n; i++) {
        const struct sched_ent *e = sidx_ent(&h->s->idx, i);
        n += (e->flags & ENT_USED) && !(e->flags & ENT_DELETED) && (e->flags & ENT_HELD);
    }
    return n;
}

/* An action walk over many messages out of memory acts in slices, matches
 * sender and recipient domain by reading them, reports one line per message
 * acted on; SUMMARY counts held mail apart; a walk whose client goes away
 * is dropped cleanly. */
static void
test_act_walk(void **state)
{
    struct h *h = h_new(NULL, 0, "retry_initial=10s;retry_max=20s;active_limit=10", true);
    struct slices sl;
    struct sched_select sel = { "S@X.test", NULL, 0 };
    char other[SPOOL_QID_LEN + 1];
    h_submit_many(h, "s@x.test", "a@x.test", 600);
    h_submit(h, "o@y.test", rcpt_b, 1, other);
    RUN_UNTIL(h, stats(h).active == 0 && stats(h).queue_messages == 601, 10000);

    memset(&sl, 0, sizeof(sl));
    sl.w = sched_walk_act(h->s, SCHED_ACT_HOLD, &sel, slices_fn, &sl);
    RUN_UNTIL(h, sl.done, 10000);
    assert_int_equal(count_lines(sl.out.data), 600);
    assert_non_null(strstr(sl.out.data, "done "));
    assert_null(strstr(sl.out.data, other));
    assert_true(sl.more >= 2); /* a bounded number per slice */
    assert_int_equal(held_count(h), 600);
    buf_fini(&sl.out);

    /* Held mail is its own line of the summary, in no destination's. */
    memset(&sl, 0, sizeof(sl));
    sl.w = sched_walk_start(h->s, true, slices_fn, &sl);
    RUN_UNTIL(h, sl.done, 10000);
    assert_non_null(strstr(sl.out.data, "{\"held\":true,\"messages\":600,\"recipients\":600,"));
    assert_non_null(strstr(sl.out.data, "\"messages\":1,\"recipients\":1,"));
    assert_non_null(strstr(sl.out.data, "\"ages\":{\"<5m\":1,\"5-10m\":0,"));
    assert_non_null(strstr(sl.out.data, "\"ages\":{\"<5m\":600,"));
    assert_int_equal(count_lines(sl.out.data), 2);
    buf_fini(&sl.out);

    /* Released by recipient domain (read from the spool), at most once. */
    sel.sender = NULL;
    sel.rcpt_domain = "x.test";
    memset(&sl, 0, sizeof(sl));
    sl.w = sched_walk_act(h->s, SCHED_ACT_RELEASE, &sel, slices_fn, &sl);
    RUN_UNTIL(h, sl.done, 10000);
    assert_int_equal(count_lines(sl.out.data), 600);
    assert_int_equal(held_count(h), 0);
    buf_fini(&sl.out);

    /* Nothing that young is older than an hour. */
    sel.rcpt_domain = NULL;
    sel.older_than_s = 3600;
    memset(&sl, 0, sizeof(sl));
    sl.w = sched_walk_act(h->s, SCHED_ACT_DELETE, &sel, slices_fn, &sl);
    RUN_UNTIL(h, sl.done, 10000);
    assert_int_equal(count_lines(sl.out.data), 0);
    buf_fini(&sl.out);

    /* A client that goes away after the first lines: the walk is dropped,
     * what was done stays done, the rest is untouched. */
    sel.older_than_s = 0;
    memset(&sl, 0, sizeof(sl));
    sl.stop_after_first = true;
    sl.w = sched_walk_act(h->s, SCHED_ACT_HOLD, &sel, slices_fn, &sl);
    RUN_UNTIL(h, sl.done, 10000);
    run_for(h, 200);
    assert_true(held_count(h) > 0 && held_count(h) < 601);
    assert_int_equal(held_count(h), count_lines(sl.out.data));
    buf_fini(&sl.out);

    memset(&sl, 0, sizeof(sl));
    sl.w = sched_walk_act(h->s, SCHED_ACT_DELETE, &sel, slices_fn, &sl);
    RUN_UNTIL(h, sl.done, 10000);
    assert_int_equal(count_lines(sl.out.data), 601);
    assert_int_equal(stats(h).queue_messages, 0);
    assert_int_equal(queue_count(h), 0);
    buf_fini(&sl.out);
    h_free(h);
}

/* Flushing one message retries it now, long before its retry time, and
 * no other; a held one stays held; an unknown id is -1. */
static void
test_flush_msg(void **state)
{
    static const struct rule rules[] = {
        { "a@x.test", { "451 4.3.0 busy", "250 2.1.5 ok" } },
        { "b@x.test", { "451 4.3.0 busy", "250 2.1.5 ok" } },
        { "c@x.test", { "451 4.3.0 busy", "250 2.1.5 ok" } },
    };
    struct h *h = h_new(rules, 3, "retry_initial=1h;retry_max=1h", false);
    char q1[SPOOL_QID_LEN + 1], q2[SPOOL_QID_LEN + 1], q3[SPOOL_QID_LEN + 1];
    h_submit(h, "s@x.test", rcpt_a, 1, q1);
    h_submit(h, "s@x.test", rcpt_b, 1, q2);
    h_submit(h, "s@x.test", rcpt_c, 1, q3);
    RUN_UNTIL(h, stats(h).deferred == 3 && stats(h).active == 0, 5000);
    assert_int_equal(sched_hold(h->s, q3, true), 0);
    assert_int_equal(sched_flush_msg(h->s, q1), 0);
    assert_int_equal(sched_flush_msg(h->s, q3), 0);
    RUN_UNTIL(h, stats(h).delivered == 1, 5000);
    run_for(h, 500);
    assert_int_equal(stats(h).delivered, 1);
    assert_non_null(srv_find_tx(&h->srv[0], "s@x.test", "a@x.test"));
    assert_null(srv_find_tx(&h->srv[0], "s@x.test", "b@x.test"));
    assert_null(srv_find_tx(&h->srv[0], "s@x.test", "c@x.test"));
    assert_int_equal(sched_flush_msg(h->s, q1), -1); /* gone */
    assert_int_equal(sched_flush_msg(h->s, "0123456789abcdef"), -1);

    /* The other one, on its own. */
    assert_int_equal(sched_flush_msg(h->s, q2), 0);
    RUN_UNTIL(h, stats(h).delivered == 2, 5000);
    assert_non_null(srv_find_tx(&h->srv[0], "s@x.test", "b@x.test"));
    assert_true(in_spool(h, q3));
    h_free(h);
}

/* A message whose stored copy moved after it was read (compaction: its
 * old segment is gone) is read again and sent, without a failed attempt. */
static void
test_moved_body_read_again(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    uint32_t e;
    h->srv[0].stall_greeting = true;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, h->srv[0].ungreeted != NULL, 5000);
    e = sidx_find(&h->s->idx, strtoull(qid, NULL, 16));
    assert_int_not_equal(e, SCHED_NONE);
    assert_non_null(sidx_ent(&h->s->idx, e)->m);
    assert_true(sidx_ent(&h->s->idx, e)->m->env->n_ext > 0);
    sidx_ent(&h->s->idx, e)->m->env->ext[0].seg += 1000000; /* as after a compaction */
    srv_greet(&h->srv[0]);
    RUN_UNTIL(h, queue_count(h) == 0, 5000);
    assert_int_equal(stats(h).delivered, 1);
    assert_int_equal(stats(h).deferred, 0);
    assert_int_equal(h->srv[0].n_tx, 1);
    h_free(h);
}

/* A unit holds at most max_rcpts_per_txn recipients. */
static void
test_units_split(void **state)
{
    static const char *const five[] = { "a@x.test", "b@x.test", "c@x.test", "d@x.test",
        "e@x.test" };
    struct h *h = h_new(NULL, 0, "max_rcpts_per_txn=2", false);
    char qid[SPOOL_QID_LEN + 1];
    size_t total = 0;
    h_submit(h, "s@x.test", five, 5, qid);
    RUN_UNTIL(h, queue_count(h) == 0, 5000);
    assert_int_equal(h->srv[0].n_tx, 3);
    for (size_t i = 0; i < h->srv[0].n_tx; i++) {
        assert_true(h->srv[0].tx[i].n_rcpts <= 2);
        total += h->srv[0].tx[i].n_rcpts;
    }
    assert_int_equal(total, 5);
    h_free(h);
}

/* The always_bcc copy: a transaction of its own whose content is the
 * envelope fields and then the message exactly as the others got it; the
 * others' transaction never names it. */
static void
test_archive_alone(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, false);
    struct spool_env *e = xcalloc(1, sizeof(*e));
    struct spool_writer *w;
    const struct srv_tx *real = NULL, *arch = NULL;
    struct buf want = BUF_INIT;
    e->sender = xstrdup("s@x.test");
    e->body = BODY_7BIT;
    spool_env_add_rcpt(e, "a@x.test", NULL, 0);
    spool_env_add_rcpt(e, "b@x.test", NULL, 0);
    w = spool_writer_new(h->sp, e);
    spool_writer_write(w, body, strlen(body));
    spool_writer_add_rcpt(w, "vault@x.test", DSN_NOTIFY_NEVER, RCPT_K_ARCHIVE);
    spool_env_free(e);
    h->committed = false;
    spool_writer_commit(w, h->q, commit_cb, 7, h);
    RUN_UNTIL(h, h->committed, 3000);
    RUN_UNTIL(h, queue_count(h) == 0, 5000);
    assert_int_equal(h->srv[0].n_tx, 2);
    for (size_t i = 0; i < 2; i++) {
        const struct srv_tx *t = &h->srv[0].tx[i];
        if (t->n_rcpts == 1 && strcmp(t->rcpts[0], "vault@x.test") == 0)
            arch = t;
        else
            real = t;
    }
    assert_non_null(arch);
    assert_non_null(real);
    assert_int_equal(real->n_rcpts, 2);
    assert_string_equal(real->rcpts[0], "a@x.test");
    assert_string_equal(real->rcpts[1], "b@x.test");
    assert_string_equal(arch->from, "s@x.test");
    buf_append_str(&want, "X-Tern-Envelope-From: <s@x.test>\r\n"
                          "X-Tern-Envelope-To: a@x.test, b@x.test\r\n");
    buf_append(&want, real->body.data, real->body.len);
    assert_int_equal(arch->body.len, want.len);
    assert_memory_equal(arch->body.data, want.data, want.len);
    assert_null(memmem(real->body.data, real->body.len, "vault", 5));
    buf_fini(&want);
    h_free(h);
}

/* A held message is not delivered, even after a flush; release sends it. */
static void
test_hold_release(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    static const struct want_rcpt queued[] = { { "a@x.test", "queued", 0, "null" } };
    /* The server holds its greeting, so the hold comes before any
     * connection could take the message, however slow the step. */
    h->srv[0].stall_greeting = true;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    assert_int_equal(sched_hold(h->s, qid, true), 0);
    assert_int_equal(sched_hold(h->s, qid, true), 0); /* twice is fine */
    check_list(h, qid, true, queued, 1);
    /* A connection opened before the hold (a slow step) gets nothing once
     * greeted; usually none was opened. */
    if (h->srv[0].ungreeted != NULL)
        srv_greet(&h->srv[0]);
    h->srv[0].stall_greeting = false;
    run_for(h, 200);
    sched_flush(h->s);
    run_for(h, 300);
    assert_int_equal(h->srv[0].n_mail, 0);
    assert_true(in_spool(h, qid));

    /* Released, it is due at once: the server holds the final dot so that
     * the listing (which may wait for the disk) sees it before it leaves. */
    h->srv[0].stall_dot = true;
    assert_int_equal(sched_hold(h->s, qid, false), 0);
    check_list(h, qid, false, queued, 1);
    RUN_UNTIL(h, h->srv[0].stalled != NULL, 3000);
    srv_release(&h->srv[0], "250 2.0.0 queued as t1");
    RUN_UNTIL(h, queue_count(h) == 0, 3000);
    assert_non_null(srv_find_tx(&h->srv[0], "s@x.test", "a@x.test"));
    assert_int_equal(stats(h).delivered, 1);

    assert_int_equal(sched_hold(h->s, qid, true), -1); /* gone */
    assert_int_equal(sched_hold(h->s, "0123456789abcdef", true), -1);
    assert_int_equal(sched_hold(h->s, "0123456789abcdef", false), -1);
    h_free(h);
}

/* Held while in flight: the answer comes back, then nothing more until release. */
static void
test_hold_in_flight(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    static const struct want_rcpt deferred[] = { { "a@x.test", "deferred", 1, "451 4.3.0" } };
    h->srv[0].stall_dot = true;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, h->srv[0].stalled != NULL, 5000);
    assert_int_equal(sched_hold(h->s, qid, true), 0);
    srv_release(&h->srv[0], "451 4.3.0 busy");
    RUN_UNTIL(h, stats(h).deferred == 1, 3000);
    check_list(h, qid, true, deferred, 1);
    sched_flush(h->s);
    run_for(h, 1400); /* past the retry time */
    assert_int_equal(h->srv[0].n_mail, 1);

    assert_int_equal(sched_hold(h->s, qid, false), 0);
    RUN_UNTIL(h, queue_count(h) == 0, 3000);
    assert_int_equal(h->srv[0].n_mail, 2);
    assert_int_equal(stats(h).delivered, 1);
    h_free(h);
}

/* A walk of named messages: their lines only, in the order asked, from
 * memory or read from the spool; unknown and malformed ids skipped. */
static void
test_walk_ids(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, true);
    char q1[SPOOL_QID_LEN + 1], q2[SPOOL_QID_LEN + 1], q3[SPOOL_QID_LEN + 1];
    struct buf out = BUF_INIT;
    h->srv[0].stall_greeting = true; /* nothing leaves meanwhile */
    h_submit(h, "s@x.test", rcpt_a, 1, q1);
    h_submit(h, "s@x.test", rcpt_b, 1, q2);
    h_submit(h, "s@x.test", rcpt_c, 1, q3);
    for (int round = 0; round < 2; round++) {
        const char *ids[] = { q3, "0123456789abcdef", "nonsense", q1 };
        struct walk_out o = { &out, NULL, false };
        const char *p1, *p3;
        buf_reset(&out);
        o.w = sched_walk_ids(h->s, ids, 4, walk_fn, &o);
        RUN_UNTIL(h, o.done, 5000);
        assert_int_equal(count_lines(out.data), 2);
        p3 = strstr(out.data, q3);
        p1 = strstr(out.data, q1);
        assert_non_null(p3);
        assert_non_null(p1);
        assert_true(p3 < p1);
        assert_null(strstr(out.data, q2));
        if (round == 0) {
            /* Held across a restart: out of memory, read from the spool. */
            assert_int_equal(sched_hold(h->s, q1, true), 0);
            assert_int_equal(sched_hold(h->s, q3, true), 0);
            if (h->srv[0].ungreeted != NULL)
                srv_greet(&h->srv[0]);
            h->srv[0].stall_greeting = false;
            h->srv[0].stall_dot = true;
            assert_int_equal(h_restart(h, h->srv[0].port, NULL), 3);
            assert_null(sidx_ent(&h->s->idx, sidx_find(&h->s->idx, strtoull(q1, NULL, 16)))->m);
        }
    }
    buf_fini(&out);
    h_free(h);
}

/* Delete: gone from the spool at once and never delivered; unknown ids fail. */
static void
test_delete(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, false);
    char q1[SPOOL_QID_LEN + 1], q2[SPOOL_QID_LEN + 1];
    h_submit(h, "s@x.test", rcpts3, 3, q1);
    assert_int_equal(sched_delete(h->s, q1), 0);
    assert_false(in_spool(h, q1));
    assert_int_equal(queue_count(h), 0);
    assert_int_equal(list_count(h), 0);
    assert_int_equal(stats(h).queue_messages, 0);
    assert_int_equal(stats(h).queue_rcpts, 0);
    assert_int_equal(sched_delete(h->s, q1), -1);
    assert_int_equal(sched_hold(h->s, q1, true), -1);
    assert_int_equal(sched_delete(h->s, "0123456789abcdef"), -1);
    assert_int_equal(sched_delete(h->s, ""), -1);
    sched_flush(h->s);
    run_for(h, 300);
    assert_int_equal(h->srv[0].n_mail, 0);

    /* Deleted while in flight: hidden at once, removed when the answer comes. */
    h->srv[0].stall_dot = true;
    h_submit(h, "s@x.test", rcpt_b, 1, q2);
    RUN_UNTIL(h, h->srv[0].stalled != NULL, 5000);
    assert_int_equal(sched_delete(h->s, q2), 0);
    assert_int_equal(list_count(h), 0);
    assert_int_equal(sched_delete(h->s, q2), -1);
    srv_release(&h->srv[0], "451 4.3.0 busy");
    RUN_UNTIL(h, queue_count(h) == 0, 3000);
    run_for(h, 1400); /* not retried */
    assert_int_equal(h->srv[0].n_mail, 1);
    assert_int_equal(stats(h).queue_messages, 0);
    assert_int_equal(stats(h).queue_rcpts, 0);
    assert_int_equal(h->n_hooks, 2); /* no DSN */
    h_free(h);
}

/* Always 451 with a short max_queue_lifetime: final failure, DSN with 4.4.7. */
static void
test_expiry(void **state)
{
    static const struct rule rules[] = { { "a@x.test", { "451 4.3.0 always busy" } } };
    struct h *h = h_new(rules, 1, "max_queue_lifetime=1s", false);
    char qid[SPOOL_QID_LEN + 1];
    const struct srv_tx *dsn;
    struct sched_stats st;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, srv_find_tx(&h->srv[0], "", "s@x.test") != NULL && queue_count(h) == 0, 8000);
    dsn = srv_find_tx(&h->srv[0], "", "s@x.test");
    assert_non_null(strstr(dsn->body.data, "4.4.7"));
    assert_non_null(strstr(dsn->body.data, "a@x.test"));
    assert_non_null(strstr(dsn->body.data, "Action: failed"));
    assert_non_null(strstr(dsn->body.data, "always busy")); /* the last error */
    assert_true(srv_hits(&h->srv[0], "a@x.test") >= 2);
    assert_null(srv_find_tx(&h->srv[0], "s@x.test", "a@x.test"));
    st = stats(h);
    assert_int_equal(st.expired, 1);
    assert_true(st.deferred >= 1);
    assert_int_equal(st.bounced, 0);
    assert_int_equal(st.delivered, 1); /* the DSN */
    assert_int_equal(st.queue_messages, 0);
    assert_int_equal(h->n_hooks, 2);
    assert_true(h->hooks[1].is_bounce);
    h_free(h);
}

/* Failures of mail from <> and of a DSN itself are never reported. */
static void
test_no_dsn_loops(void **state)
{
    static const struct rule rules[] = {
        { "c@x.test", { "550 5.1.1 no such user" } },
        { "s@x.test", { "550 5.1.1 sender gone too" } },
    };
    struct h *h = h_new(rules, 2, NULL, false);
    char q1[SPOOL_QID_LEN + 1], q2[SPOOL_QID_LEN + 1];
    h_submit(h, "", rcpt_c, 1, q1);
    RUN_UNTIL(h, stats(h).bounced == 1 && queue_count(h) == 0, 5000);
    run_for(h, 200);
    assert_int_equal(h->n_hooks, 1);
    assert_int_equal(h->srv[0].n_tx, 0);

    /* s -> c bounces; the DSN to s bounces too; nothing more is made. */
    h_submit(h, "s@x.test", rcpt_c, 1, q2);
    RUN_UNTIL(h, stats(h).bounced == 3 && queue_count(h) == 0, 5000);
    run_for(h, 200);
    assert_int_equal(h->n_hooks, 3);
    assert_true(h->hooks[2].is_bounce);
    assert_int_equal(srv_hits(&h->srv[0], "s@x.test"), 1);
    assert_int_equal(stats(h).bounced, 3);
    assert_int_equal(stats(h).queue_messages, 0);
    h_free(h);
}

/* A restart (new scheduler and spool over the same files) re-queues every
 * message with its recorded attempts and hold, and delivers what is due. */
static void
test_restart(void **state)
{
    static const struct want_rcpt deferred[] = { { "a@x.test", "deferred", 1, "" } };
    static const struct want_rcpt held[] = { { "b@x.test", "queued", 0, "null" } };
    struct h *h = h_new(NULL, 0, NULL, true);
    char q1[SPOOL_QID_LEN + 1], q2[SPOOL_QID_LEN + 1], line[4096];
    h_submit(h, "s@x.test", rcpt_a, 1, q1);
    h_submit(h, "s@x.test", rcpt_b, 1, q2);
    assert_int_equal(sched_hold(h->s, q2, true), 0);
    RUN_UNTIL(h, stats(h).deferred == 1, 5000);

    assert_int_equal(h_restart(h, h->srv[0].port, NULL), 2);
    assert_int_equal(stats(h).queue_messages, 2);
    assert_int_equal(stats(h).deferred, 0); /* counters start again */
    check_list(h, q1, false, deferred, 1);
    check_list(h, q2, true, held, 1);
    list_line(h, q1, line, sizeof(line));
    assert_int_equal(json_num(line, "size"), (long long)strlen(body));
    RUN_UNTIL(h, queue_count(h) == 1 && stats(h).delivered == 1, 5000);
    assert_false(in_spool(h, q1));
    assert_non_null(srv_find_tx(&h->srv[0], "s@x.test", "a@x.test"));
    run_for(h, 200);
    assert_null(srv_find_tx(&h->srv[0], "s@x.test", "b@x.test"));

    assert_int_equal(sched_hold(h->s, q2, false), 0);
    RUN_UNTIL(h, queue_count(h) == 0, 3000);
    assert_non_null(srv_find_tx(&h->srv[0], "s@x.test", "b@x.test"));
    assert_int_equal(stats(h).delivered, 2);
    assert_int_equal(stats(h).queue_messages, 0);
    h_free(h);
}

/* Recipients recorded as final but with their DSN not yet made (the daemon
 * stopped before the DSN could be written) get it at the next start, and
 * only then does the message leave the spool; they are never sent again. */
static void
test_restart_dsn_pending(void **state)
{
    static const char *const ab[] = { "a@x.test", "b@x.test" };
    struct h *h = h_new(NULL, 0, NULL, true);
    char q[SPOOL_QID_LEN + 1];
    const struct srv_tx *failed = NULL, *relayed = NULL;
    h_submit(h, "s@x.test", ab, 2, q);
    assert_int_equal(sched_hold(h->s, q, true), 0); /* no attempt of ours meanwhile */
    {
        /* As the spool would hold it after such a stop. */
        struct spool_env *env = spool_load(h->sp, q);
        assert_non_null(env);
        env->held = true;
        env->rcpts[0].state = RCPT_FAILED_DSN;
        env->rcpts[0].attempts = 1;
        env->rcpts[0].last_error = xstrdup("550 5.1.1 no such user");
        env->rcpts[1].state = RCPT_DELIVERED_DSN;
        env->rcpts[1].attempts = 1;
        env->rcpts[1].last_error = xstrdup("250 2.0.0 ok");
        spool_update_state(h->sp, env);
        spool_env_free(env);
    }

    /* The DSNs are made as soon as the message is loaded (while they are
     * being made, queue list says dsn_pending: tests/system/test_spool.py). */
    assert_int_equal(h_restart(h, h->srv[0].port, NULL), 1);
    RUN_UNTIL(h, h->srv[0].n_tx == 2 && queue_count(h) == 0, 5000);
    for (size_t i = 0; i < h->srv[0].n_tx; i++) {
        const struct srv_tx *t = &h->srv[0].tx[i];
        assert_string_equal(t->from, "");
        assert_string_equal(t->rcpts[0], "s@x.test");
        if (strstr(t->body.data, "Action: failed") != NULL)
            failed = t;
        else if (strstr(t->body.data, "Action: relayed") != NULL)
            relayed = t;
    }
    assert_non_null(failed);
    assert_non_null(relayed);
    assert_non_null(strstr(failed->body.data, "Final-Recipient: rfc822; a@x.test"));
    assert_non_null(strstr(failed->body.data, "Status: 5.1.1"));
    assert_non_null(strstr(failed->body.data, "no such user"));
    assert_null(strstr(failed->body.data, "Final-Recipient: rfc822; b@x.test"));
    assert_non_null(strstr(relayed->body.data, "Final-Recipient: rfc822; b@x.test"));
    assert_int_equal(srv_hits(&h->srv[0], "a@x.test"), 0);
    assert_int_equal(srv_hits(&h->srv[0], "b@x.test"), 0);
    assert_int_equal(stats(h).queue_messages, 0);
    h_free(h);
}

/* After a restart only the recipients still pending are sent again. */
static void
test_restart_partial(void **state)
{
    static const struct rule rules[] = {
        { "b@x.test", { "451 4.3.0 later", "250 2.1.5 ok" } },
    };
    static const struct want_rcpt pending[] = { { "b@x.test", "deferred", 1, "451 4.3.0 later" } };
    static const char *const ab[] = { "a@x.test", "b@x.test" };
    struct h *h = h_new(rules, 1, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    h_submit(h, "s@x.test", ab, 2, qid);
    RUN_UNTIL(h, stats(h).deferred == 1 && stats(h).delivered == 1, 5000);

    assert_int_equal(h_restart(h, h->srv[0].port, NULL), 1);
    assert_int_equal(stats(h).queue_rcpts, 1);
    check_list(h, qid, false, pending, 1);
    RUN_UNTIL(h, queue_count(h) == 0, 5000);
    assert_int_equal(srv_hits(&h->srv[0], "b@x.test"), 2);
    assert_int_equal(h->srv[0].n_tx, 2);
    assert_int_equal(h->srv[0].tx[1].n_rcpts, 1);
    assert_string_equal(h->srv[0].tx[1].rcpts[0], "b@x.test");
    h_free(h);
}

/* Stopping with a job in flight answers it (421 shutting down): the attempt
 * is on record after the restart, and the message goes out then. */
static void
test_restart_in_flight(void **state)
{
    static const struct want_rcpt pending[] = { { "a@x.test", "deferred", 1, "4.3.2" } };
    struct h *h = h_new(NULL, 0, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    h->srv[0].stall_dot = true;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, h->srv[0].stalled != NULL, 5000);
    h->srv[0].stall_dot = false;
    assert_int_equal(h_restart(h, h->srv[0].port, NULL), 1);
    check_list(h, qid, false, pending, 1);
    RUN_UNTIL(h, queue_count(h) == 0, 5000);
    assert_int_equal(h->srv[0].n_mail, 2);
    assert_int_equal(h->srv[0].n_tx, 1);
    assert_int_equal(stats(h).delivered, 1);
    h_free(h);
}

/* A new smarthost (reload) applies to waiting messages. */
static void
test_reroute_waiting(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, true);
    char qid[SPOOL_QID_LEN + 1];
    struct config *cfg;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, stats(h).deferred == 1, 5000);
    cfg = h_config(h, h->srv[0].port, NULL);
    sched_set_config(h->s, cfg);
    config_unref(cfg);
    sched_flush(h->s);
    RUN_UNTIL(h, queue_count(h) == 0, 3000);
    assert_non_null(srv_find_tx(&h->srv[0], "s@x.test", "a@x.test"));
    h_free(h);
}

/* A new smarthost also applies to a message that was in flight at the
 * reload, once its temporary failure comes back (sched.c reroute_cb says
 * such a message is "rerouted when its results come back"). */
static void
test_reroute_in_flight(void **state)
{
    struct h *h = h_new(NULL, 0, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    struct config *cfg;
    srv_start(&h->srv[1], h->base, NULL, 0);
    h->srv[0].stall_dot = true;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, h->srv[0].stalled != NULL, 5000);
    cfg = h_config(h, h->srv[1].port, NULL);
    sched_set_config(h->s, cfg);
    config_unref(cfg);
    srv_release(&h->srv[0], "451 4.3.0 old relay going away");
    RUN_UNTIL(h, stats(h).deferred == 1, 3000);
    sched_flush(h->s);
    RUN_UNTIL(h, queue_count(h) == 0, 3000);
    if (srv_find_tx(&h->srv[1], "s@x.test", "a@x.test") == NULL)
        fail_msg("delivered to the old smarthost (MAIL there: %u, at the new one: %u)",
            h->srv[0].n_mail, h->srv[1].n_mail);
    assert_int_equal(h->srv[0].n_tx, 0);
    h_free(h);
}

/* ---- delay warnings ---- */

#define REPLY_BUSY "451 4.3.0 busy"
#define REPLY_OK   "250 2.1.5 ok"

/* Recipients still deferred after delay_warning_time get one delayed DSN
 * (every such recipient of the message in one report, flagged as warned in
 * the spool); they stay queued and are delivered later, with no second
 * warning. */
static void
test_delay_warning(void **state)
{
    static const struct rule rules[] = {
        { "a@x.test", { REPLY_BUSY, REPLY_BUSY, REPLY_BUSY, REPLY_OK } },
        { "b@x.test", { REPLY_BUSY, REPLY_BUSY, REPLY_BUSY, REPLY_OK } },
    };
    static const char *const ab[] = { "a@x.test", "b@x.test" };
    struct h *h = h_new(rules, 2, "delay_warning_time=1s;retry_max=1s", false);
    char qid[SPOOL_QID_LEN + 1];
    const struct srv_tx *dsn = NULL;
    h_submit(h, "s@x.test", ab, 2, qid);
    RUN_UNTIL(h, delayed_dsns(&h->srv[0], "s@x.test", &dsn) == 1, 8000);
    assert_non_null(strstr(dsn->body.data, "Final-Recipient: rfc822; a@x.test"));
    assert_non_null(strstr(dsn->body.data, "Final-Recipient: rfc822; b@x.test"));
    assert_non_null(strstr(dsn->body.data, "Status: 4.3.0"));
    assert_non_null(strstr(dsn->body.data, "busy"));
    assert_null(strstr(dsn->body.data, "Action: failed"));
    /* Recorded as sent (unless already delivered and gone). */
    RUN_UNTIL(h,
        (rcpt_flags(h, qid, 0) == RCPT_F_DELAY_SENT &&
            rcpt_flags(h, qid, 1) == RCPT_F_DELAY_SENT) ||
            !in_spool(h, qid),
        5000);

    RUN_UNTIL(
        h, srv_find_tx(&h->srv[0], "s@x.test", "a@x.test") != NULL && queue_count(h) == 0, 10000);
    assert_int_equal(srv_hits(&h->srv[0], "a@x.test"), 4);
    assert_int_equal(srv_hits(&h->srv[0], "b@x.test"), 4);
    assert_int_equal(delayed_dsns(&h->srv[0], "s@x.test", NULL), 1);
    assert_int_equal(h->n_hooks, 2); /* the message and one warning */
    assert_true(h->hooks[1].is_bounce);
    assert_int_equal(stats(h).bounced + stats(h).expired, 0);
    h_free(h);
}

/* Only NOTIFY=DELAY (or none, above) asks for a warning: NEVER, FAILURE and
 * FAILURE,SUCCESS do not. */
static void
test_delay_warning_notify(void **state)
{
    static const struct rule rules[] = {
        { "a@x.test", { REPLY_BUSY, REPLY_BUSY, REPLY_BUSY, REPLY_OK } },
        { "b@x.test", { REPLY_BUSY, REPLY_BUSY, REPLY_BUSY, REPLY_OK } },
        { "c@x.test", { REPLY_BUSY, REPLY_BUSY, REPLY_BUSY, REPLY_OK } },
        { "d@x.test", { REPLY_BUSY, REPLY_BUSY, REPLY_BUSY, REPLY_OK } },
    };
    static const char *const abcd[] = { "a@x.test", "b@x.test", "c@x.test", "d@x.test" };
    static const unsigned notify[] = { DSN_NOTIFY_NEVER, DSN_NOTIFY_FAILURE,
        DSN_NOTIFY_FAILURE | DSN_NOTIFY_SUCCESS, DSN_NOTIFY_DELAY };
    struct h *h = h_new(rules, 4, "delay_warning_time=1s;retry_max=1s", false);
    char qid[SPOOL_QID_LEN + 1];
    const struct srv_tx *dsn = NULL;
    h_submit_notify(h, "s@x.test", abcd, notify, 4, qid);
    RUN_UNTIL(
        h, srv_find_tx(&h->srv[0], "s@x.test", "d@x.test") != NULL && queue_count(h) == 0, 15000);
    assert_int_equal(delayed_dsns(&h->srv[0], "s@x.test", &dsn), 1);
    assert_non_null(strstr(dsn->body.data, "Final-Recipient: rfc822; d@x.test"));
    assert_null(strstr(dsn->body.data, "Final-Recipient: rfc822; a@x.test"));
    assert_null(strstr(dsn->body.data, "Final-Recipient: rfc822; b@x.test"));
    assert_null(strstr(dsn->body.data, "Final-Recipient: rfc822; c@x.test"));
    assert_int_equal(srv_hits(&h->srv[0], "d@x.test"), 4);
    /* the warning about d, and c's success notice ("relayed") */
    assert_int_equal(h->n_hooks, 3);
    h_free(h);
}

/* Mail from <> (bounces, DSNs) never gets a warning. */
static void
test_delay_warning_not_for_bounces(void **state)
{
    static const struct rule rules[] = { { "a@x.test",
        { REPLY_BUSY, REPLY_BUSY, REPLY_BUSY, REPLY_OK } } };
    struct h *h = h_new(rules, 1, "delay_warning_time=1s;retry_max=1s", false);
    char qid[SPOOL_QID_LEN + 1];
    h_submit(h, "", rcpt_a, 1, qid);
    /* The second attempt came after delay_warning_time: nothing owed. */
    RUN_UNTIL(h, srv_hits(&h->srv[0], "a@x.test") >= 3, 10000);
    assert_int_equal(rcpt_flags(h, qid, 0), 0);
    RUN_UNTIL(h, srv_find_tx(&h->srv[0], "", "a@x.test") != NULL && queue_count(h) == 0, 10000);
    assert_int_equal(srv_hits(&h->srv[0], "a@x.test"), 4);
    assert_int_equal(h->n_hooks, 1);
    assert_int_equal(h->srv[0].n_tx, 1);
    h_free(h);
}

/* The warning is on record: a restart does not send it again. */
static void
test_delay_warning_not_after_restart(void **state)
{
    static const struct rule rules[] = { { "a@x.test", { REPLY_BUSY } } };
    const char *extra = "delay_warning_time=1s;retry_max=1s";
    struct h *h = h_new(rules, 1, extra, false);
    char qid[SPOOL_QID_LEN + 1];
    unsigned hits;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, delayed_dsns(&h->srv[0], "s@x.test", NULL) == 1, 8000);
    /* the warning's answer taken, so it has left the spool */
    RUN_UNTIL(h, rcpt_flags(h, qid, 0) == RCPT_F_DELAY_SENT && queue_count(h) == 1, 5000);

    assert_int_equal(h_restart(h, h->srv[0].port, extra), 1);
    hits = srv_hits(&h->srv[0], "a@x.test");
    RUN_UNTIL(h, srv_hits(&h->srv[0], "a@x.test") >= hits + 2, 8000);
    assert_int_equal(delayed_dsns(&h->srv[0], "s@x.test", NULL), 1);
    assert_int_equal(h->n_hooks, 2);
    assert_int_equal(rcpt_flags(h, qid, 0), RCPT_F_DELAY_SENT);
    assert_int_equal(sched_delete(h->s, qid), 0);
    h_free(h);
}

/* A warning recorded as owed but not yet queued when ternd stopped (or
 * crashed) is made at the next start, without an attempt of ours. */
static void
test_delay_warning_owed_at_restart(void **state)
{
    static const struct rule rules[] = { { "a@x.test", { REPLY_BUSY } } };
    struct h *h = h_new(rules, 1, NULL, false);
    char qid[SPOOL_QID_LEN + 1];
    const struct srv_tx *dsn = NULL;
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    assert_int_equal(sched_hold(h->s, qid, true), 0); /* no attempt of ours meanwhile */
    {
        /* As the spool holds it after a deferral that called for a warning. */
        struct spool_env *env = spool_load(h->sp, qid);
        assert_non_null(env);
        env->held = true;
        env->rcpts[0].attempts = 3;
        env->rcpts[0].flags = RCPT_F_DELAY_DUE;
        env->rcpts[0].next_try_ms = tern_now_ms() + 60000;
        env->rcpts[0].last_error = xstrdup("451 4.3.0 still busy");
        spool_update_state(h->sp, env);
        spool_env_free(env);
    }

    assert_int_equal(h_restart(h, h->srv[0].port, NULL), 1);
    RUN_UNTIL(h, delayed_dsns(&h->srv[0], "s@x.test", &dsn) == 1, 5000);
    assert_non_null(strstr(dsn->body.data, "Final-Recipient: rfc822; a@x.test"));
    assert_non_null(strstr(dsn->body.data, "Status: 4.3.0"));
    assert_non_null(strstr(dsn->body.data, "still busy"));
    RUN_UNTIL(h, rcpt_flags(h, qid, 0) == RCPT_F_DELAY_SENT && queue_count(h) == 1, 5000);
    assert_int_equal(srv_hits(&h->srv[0], "a@x.test"), 0);

    /* Made once: the next start finds it sent. */
    assert_int_equal(h_restart(h, h->srv[0].port, NULL), 1);
    run_for(h, 500);
    assert_int_equal(delayed_dsns(&h->srv[0], "s@x.test", NULL), 1);
    assert_int_equal(h->n_hooks, 2);
    assert_int_equal(stats(h).queue_messages, 1); /* still queued, held */
    h_free(h);
}

/* The next attempt time written with a deferral holds across a restart:
 * nothing is tried before it; a flush still sends at once. */
static void
test_retry_time_after_restart(void **state)
{
    static const struct rule rules[] = { { "a@x.test", { REPLY_BUSY, REPLY_OK } } };
    const char *slow = "retry_initial=20s;retry_max=40s";
    static const struct want_rcpt deferred[] = { { "a@x.test", "deferred", 1, REPLY_BUSY } };
    struct h *h = h_new(rules, 1, slow, false);
    char qid[SPOOL_QID_LEN + 1];
    struct spool_env *env;
    int64_t before = tern_now_ms();
    h_submit(h, "s@x.test", rcpt_a, 1, qid);
    RUN_UNTIL(h, stats(h).deferred == 1, 5000);
    spool_sync_wait(h->sp);
    env = spool_load(h->sp, qid);
    assert_non_null(env);
    assert_true(env->rcpts[0].next_try_ms >= before + 16000); /* 20 s less the jitter */
    spool_env_free(env);

    assert_int_equal(h_restart(h, h->srv[0].port, slow), 1);
    check_list(h, qid, false, deferred, 1);
    run_for(h, 1500);
    assert_int_equal(h->srv[0].n_mail, 1);
    assert_int_equal(srv_hits(&h->srv[0], "a@x.test"), 1);

    sched_flush(h->s);
    RUN_UNTIL(h, queue_count(h) == 0, 5000);
    assert_int_equal(srv_hits(&h->srv[0], "a@x.test"), 2);
    assert_non_null(srv_find_tx(&h->srv[0], "s@x.test", "a@x.test"));
    h_free(h);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index),
        cmocka_unit_test(test_index_all_due),
        cmocka_unit_test(test_deliver_three),
        cmocka_unit_test(test_mixed_results),
        cmocka_unit_test(test_list_and_summary),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_destination_freed),
        cmocka_unit_test(test_hold_release),
        cmocka_unit_test(test_walk_ids),
        cmocka_unit_test(test_hold_in_flight),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_no_dsn_loops),
        cmocka_unit_test(test_restart),
        cmocka_unit_test(test_restart_dsn_pending),
        cmocka_unit_test(test_restart_partial),
        cmocka_unit_test(test_restart_in_flight),
        cmocka_unit_test(test_reroute_waiting),
        cmocka_unit_test(test_reroute_in_flight),
        cmocka_unit_test(test_active_limit),
        cmocka_unit_test(test_waiting_out_of_memory),
        cmocka_unit_test(test_restart_not_loaded),
        cmocka_unit_test(test_hold_out_of_memory),
        cmocka_unit_test(test_list_slices),
        cmocka_unit_test(test_age_buckets),
        cmocka_unit_test(test_select_match),
        cmocka_unit_test(test_act_walk),
        cmocka_unit_test(test_flush_msg),
        cmocka_unit_test(test_units_split),
        cmocka_unit_test(test_archive_alone),
        cmocka_unit_test(test_moved_body_read_again),
        cmocka_unit_test(test_delay_warning),
        cmocka_unit_test(test_delay_warning_notify),
        cmocka_unit_test(test_delay_warning_not_for_bounces),
        cmocka_unit_test(test_delay_warning_not_after_restart),
        cmocka_unit_test(test_delay_warning_owed_at_restart),
        cmocka_unit_test(test_retry_time_after_restart),
    };
    log_set_level(getenv("TEST_SCHED_LOG") ? LOG_DEBUG : LOG_WARN);
    if (getenv("TEST_SCHED_ONLY") != NULL)
        cmocka_set_test_filter(getenv("TEST_SCHED_ONLY")); /* a glob: one test again and again */
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests of the outbound SMTP client (src/delivery): the pure reply and
 * EHLO parsers from tables, then whole sessions against a scripted SMTP
 * server that runs in the same event loop (a libevent listener on 127.0.0.1).
 * Messages live in a real spool in a temporary directory.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "delivery/delivery.h"
#include "delivery/delivery_int.h"
#include "spool/spool.h"
#include "util/log.h"
#include "util/util.h"

/* ---- pure parsers ---- */

struct reply_case {
    const char *name;
    const char *lines[4]; /* fed in order; NULL ends */
    enum reply_feed want_last;
    int code;
    const char *esc;
    const char *text;
};

static const struct reply_case reply_cases[] = {
    { "single line", { "250 ok" }, REPLY_DONE, 250, "", "ok" },
    { "code only", { "354" }, REPLY_DONE, 354, "", "" },
    { "enhanced code", { "550 5.1.1 no such user" }, REPLY_DONE, 550, "5.1.1", "no such user" },
    { "esc class mismatch kept as text", { "550 4.1.1 odd" }, REPLY_DONE, 550, "", "4.1.1 odd" },
    { "multi-line joined, esc stripped", { "451-4.3.0 first", "451 4.3.0 second" }, REPLY_DONE, 451,
        "4.3.0", "first second" },
    { "continuation pending", { "250-a", "250-b" }, REPLY_MORE, 250, "", "a b" },
    { "control chars replaced", { "250 a\tb\x01" }, REPLY_DONE, 250, "", "a?b?" },
    { "code changes", { "250-a", "251 b" }, REPLY_BAD, 0, NULL, NULL },
    { "not digits", { "2x0 ok" }, REPLY_BAD, 0, NULL, NULL },
    { "short", { "25" }, REPLY_BAD, 0, NULL, NULL },
    { "bad separator", { "250_ok" }, REPLY_BAD, 0, NULL, NULL },
    { "first digit 1", { "150 hmm" }, REPLY_BAD, 0, NULL, NULL },
    { "first digit 6", { "650 hmm" }, REPLY_BAD, 0, NULL, NULL },
};

static void
test_reply_parse(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(reply_cases); i++) {
        const struct reply_case *tc = &reply_cases[i];
        struct reply_acc a;
        enum reply_feed r = REPLY_MORE;
        const char *t;
        size_t tl;
        reply_reset(&a);
        for (size_t k = 0; k < 4 && tc->lines[k] != NULL; k++)
            r = reply_feed_line(&a, tc->lines[k], strlen(tc->lines[k]), &t, &tl);
        if (r != tc->want_last)
            fail_msg("%s: feed result %d, want %d", tc->name, r, tc->want_last);
        if (tc->esc == NULL)
            continue;
        if (a.st.code != tc->code || strcmp(a.st.esc, tc->esc) != 0 ||
            strcmp(a.st.text, tc->text) != 0)
            fail_msg("%s: got %d '%s' '%s'", tc->name, a.st.code, a.st.esc, a.st.text);
    }
}

static void
test_reply_limits(void **state)
{
    struct reply_acc a;
    const char *t;
    size_t tl;
    char longl[STATUS_TEXT_MAX * 2];
    reply_reset(&a);
    for (int i = 0; i < DELIV_REPLY_LINES_MAX; i++)
        assert_int_equal(reply_feed_line(&a, "250-x", 5, &t, &tl), REPLY_MORE);
    assert_int_equal(reply_feed_line(&a, "250-x", 5, &t, &tl), REPLY_BAD);
    /* A long text is cut to the status size. */
    memset(longl, 'a', sizeof(longl));
    memcpy(longl, "250 ", 4);
    reply_reset(&a);
    assert_int_equal(reply_feed_line(&a, longl, sizeof(longl), &t, &tl), REPLY_DONE);
    assert_int_equal(strlen(a.st.text), STATUS_TEXT_MAX - 1);
    /* The next reply starts clean. */
    assert_int_equal(reply_feed_line(&a, "550 5.1.1 x", 11, &t, &tl), REPLY_DONE);
    assert_int_equal(reply_feed_line(&a, "250 y", 5, &t, &tl), REPLY_DONE);
    assert_string_equal(a.st.esc, "");
    assert_string_equal(a.st.text, "y");
}

struct esc_case {
    const char *name, *in;
    int cls;
    size_t want;
};

static const struct esc_case esc_cases[] = {
    { "plain", "5.1.1 x", 5, 5 },
    { "at end", "2.0.0", 2, 5 },
    { "three digits", "4.123.456 x", 4, 9 },
    { "four digits", "4.1234.5 x", 4, 0 },
    { "class mismatch", "5.1.1 x", 4, 0 },
    { "class 3", "3.1.1 x", 3, 0 },
    { "no space after", "5.1.1x", 5, 0 },
    { "missing detail", "5.1. x", 5, 0 },
    { "empty", "", 5, 0 },
};

static void
test_esc_len(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(esc_cases); i++) {
        const struct esc_case *tc = &esc_cases[i];
        size_t got = reply_esc_len(tc->in, strlen(tc->in), tc->cls);
        if (got != tc->want)
            fail_msg("%s: got %zu want %zu", tc->name, got, tc->want);
    }
}

struct ehlo_case {
    const char *name, *line;
    struct ehlo_ext want;
};

static const struct ehlo_case ehlo_cases[] = {
    { "pipelining", "PIPELINING", { .pipelining = true } },
    { "lower case", "pipelining", { .pipelining = true } },
    { "size n", "SIZE 1000", { .size = true, .size_max = 1000 } },
    { "size bare", "SIZE", { .size = true } },
    { "size junk ignored", "SIZE lots", { .size = false } },
    { "size overflow ignored", "SIZE 99999999999999999999999", { .size = false } },
    { "8bitmime", "8BITMIME", { .eightbitmime = true } },
    { "smtputf8", "SMTPUTF8", { .smtputf8 = true } },
    { "dsn", "DSN", { .dsn = true } },
    { "chunking", "CHUNKING", { .chunking = true } },
    { "enhanced", "ENHANCEDSTATUSCODES", { .enhanced = true } },
    { "prefix is not a keyword", "PIPELININGX", { .pipelining = false } },
    { "unknown", "AUTH PLAIN", { .pipelining = false } },
};

static void
test_ehlo_parse(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(ehlo_cases); i++) {
        const struct ehlo_case *tc = &ehlo_cases[i];
        struct ehlo_ext e;
        memset(&e, 0, sizeof(e));
        ehlo_parse_line(&e, tc->line, strlen(tc->line));
        if (memcmp(&e, &tc->want, sizeof(e)) != 0)
            fail_msg("%s: flags differ", tc->name);
    }
}

/* ---- scripted SMTP server ---- */

enum act {
    ACT_REPLY,         /* send reply (after any held replies) */
    ACT_HOLD,          /* keep reply until the next ACT_REPLY: proves pipelining */
    ACT_CLOSE,         /* send reply, then close */
    ACT_SILENT,        /* send nothing */
    ACT_CLOSE_IN_DATA, /* send reply (354), close when message data arrives */
};

struct step {
    const char *expect; /* command prefix; NULL = greeting; "." = end of data */
    const char *reply;
    enum act act;
};

struct server;

struct sconn {
    struct server *s;
    struct bufferevent *bev;
    const struct step *script;
    size_t pos;
    bool in_data, close_in_data, closing;
    struct buf held;
    struct sconn *next;
};

struct server {
    struct event_base *base;
    struct evconnlistener *lis;
    uint16_t port;
    const struct step *scripts[4]; /* per connection; the last one repeats */
    size_t n_scripts;
    int n_conns;
    int errors;        /* commands that did not match the script */
    struct buf log;    /* every command line, '\n' terminated */
    struct buf data;   /* message data of the current DATA, raw */
    struct buf bodies; /* every complete message data, raw, '|' separated */
    struct sconn *conns;
};

static void
sconn_free(struct sconn *sc)
{
    struct sconn **pp = &sc->s->conns;
    while (*pp != sc)
        pp = &(*pp)->next;
    *pp = sc->next;
    bufferevent_free(sc->bev);
    buf_fini(&sc->held);
    free(sc);
}

static void
sconn_write_cb(struct bufferevent *bev, void *arg)
{
    struct sconn *sc = arg;
    if (sc->closing)
        sconn_free(sc);
}

static void
sconn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        sconn_free(arg);
}

/* Runs the script step for one command line (or the end of data). Returns
 * false when the connection was freed. */
static bool
sconn_step(struct sconn *sc, const char *line)
{
    const struct step *st = &sc->script[sc->pos];
    if (st->reply == NULL) {
        sc->s->errors++;
        bufferevent_write(sc->bev, "500 script ended\r\n", 18);
        return true;
    }
    sc->pos++;
    if (st->expect != NULL && strncasecmp(line, st->expect, strlen(st->expect)) != 0) {
        print_message("server: got '%s', script expects '%s'\n", line, st->expect);
        sc->s->errors++;
    }
    switch (st->act) {
    case ACT_HOLD:
        buf_append_str(&sc->held, st->reply);
        return true;
    case ACT_SILENT:
        return true;
    case ACT_REPLY:
    case ACT_CLOSE:
    case ACT_CLOSE_IN_DATA:
        buf_append_str(&sc->held, st->reply);
        bufferevent_write(sc->bev, sc->held.data, sc->held.len);
        buf_reset(&sc->held);
        break;
    }
    if (strncmp(st->reply, "354", 3) == 0) {
        sc->in_data = true;
        sc->close_in_data = st->act == ACT_CLOSE_IN_DATA;
        buf_reset(&sc->s->data);
    }
    if (st->act == ACT_CLOSE) {
        sc->closing = true;
        bufferevent_disable(sc->bev, EV_READ);
    }
    return true;
}

static bool
data_ended(const struct buf *d)
{
    if (d->len == 3 && memcmp(d->data, ".\r\n", 3) == 0)
        return true;
    return d->len >= 5 && memcmp(d->data + d->len - 5, "\r\n.\r\n", 5) == 0;
}

static void
sconn_read_cb(struct bufferevent *bev, void *arg)
{
    struct sconn *sc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!sc->closing) {
        if (sc->in_data) {
            size_t n = evbuffer_get_length(in);
            if (sc->close_in_data && n > 0) {
                sconn_free(sc);
                return;
            }
            buf_reserve(&sc->s->data, n);
            evbuffer_remove(in, sc->s->data.data + sc->s->data.len, n);
            sc->s->data.len += n;
            if (!data_ended(&sc->s->data))
                return;
            sc->in_data = false;
            buf_append(&sc->s->bodies, sc->s->data.data, sc->s->data.len - 3);
            buf_append_str(&sc->s->bodies, "|");
            buf_append_str(&sc->s->log, ".\n");
            sconn_step(sc, ".");
            continue;
        }
        size_t len;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF_STRICT);
        if (line == NULL)
            return;
        buf_append(&sc->s->log, line, len);
        buf_append_char(&sc->s->log, '\n');
        sconn_step(sc, line);
        free(line);
    }
}

static void
accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct server *s = arg;
    struct sconn *sc = xcalloc(1, sizeof(*sc));
    size_t k = (size_t)s->n_conns < s->n_scripts ? (size_t)s->n_conns : s->n_scripts - 1;
    sc->s = s;
    sc->script = s->scripts[k];
    sc->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    sc->next = s->conns;
    s->conns = sc;
    s->n_conns++;
    bufferevent_setcb(sc->bev, sconn_read_cb, sconn_write_cb, sconn_event_cb, sc);
    bufferevent_enable(sc->bev, EV_READ | EV_WRITE);
    sconn_step(sc, ""); /* the greeting */
}

static void
server_start(struct server *s, struct event_base *base)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->base = base;
    s->lis = evconnlistener_new_bind(base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
        16, (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(s->lis);
    getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&sin, &len);
    s->port = ntohs(sin.sin_port);
}

static void
server_stop(struct server *s)
{
    while (s->conns != NULL)
        sconn_free(s->conns);
    if (s->lis != NULL)
        evconnlistener_free(s->lis);
    buf_fini(&s->log);
    buf_fini(&s->data);
    buf_fini(&s->bodies);
}

/* ---- harness: spool, config, delivery with a job queue ---- */

#define MAX_JOBS 8

struct tres {
    uint64_t id;
    struct delivery_rcpt_result res[4];
    size_t n;
    char relay[DELIV_RELAY_MAX];
    bool has_relay;
};

struct harness {
    struct event_base *base;
    char dir[64];
    struct spool *sp;
    struct config cfg;
    struct server srv;
    struct delivery *d;
    struct delivery_dest dest;
    struct spool_env *envs[MAX_JOBS];
    size_t idx[MAX_JOBS][4];
    size_t n_rcpts[MAX_JOBS];
    size_t n_jobs, next_job;
    struct tres res[MAX_JOBS];
    size_t n_res;
    bool committed;
};

static bool
h_next_job(void *arg, const char *key, struct delivery_job *job)
{
    struct harness *h = arg;
    assert_string_equal(key, h->dest.key);
    if (h->next_job >= h->n_jobs)
        return false;
    job->id = 100 + h->next_job;
    job->env = h->envs[h->next_job];
    job->rcpt_idx = h->idx[h->next_job];
    job->n_rcpts = h->n_rcpts[h->next_job];
    h->next_job++;
    return true;
}

static void
h_done(void *arg, uint64_t id, const struct delivery_rcpt_result *res, size_t n, const char *relay)
{
    struct harness *h = arg;
    struct tres *r;
    assert_true(h->n_res < MAX_JOBS);
    assert_true(n <= 4);
    for (size_t i = 0; i < h->n_res; i++)
        assert_true(h->res[i].id != id); /* exactly one done per job */
    r = &h->res[h->n_res++];
    r->id = id;
    r->n = n;
    memcpy(r->res, res, n * sizeof(*res));
    r->has_relay = relay != NULL;
    if (relay != NULL)
        snprintf(r->relay, sizeof(r->relay), "%s", relay);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

/* Run the loop until *cond becomes true (checked between events) or 10 s. */
static void
run_until(struct harness *h, bool (*cond)(struct harness *))
{
    struct event *tick = event_new(h->base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = { 0, 10000 };
    int64_t end = tern_mono_ms() + 10000;
    event_add(tick, &tv);
    while (!cond(h)) {
        if (tern_mono_ms() > end)
            fail_msg("timed out waiting for the test condition");
        event_base_loop(h->base, EVLOOP_ONCE);
    }
    event_free(tick);
}

static int64_t run_deadline;

static bool
deadline_passed(struct harness *h)
{
    return tern_mono_ms() >= run_deadline;
}

/* Let the loop run for ms milliseconds. */
static void
run_for(struct harness *h, int64_t ms)
{
    run_deadline = tern_mono_ms() + ms;
    run_until(h, deadline_passed);
}

static size_t want_res;

static bool
have_results(struct harness *h)
{
    return h->n_res >= want_res;
}

static bool
all_closed(struct harness *h)
{
    return delivery_active(h->d) == 0;
}

static bool
is_committed(struct harness *h)
{
    return h->committed;
}

static void
commit_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct harness *h = arg;
    assert_true(ok);
    h->committed = true;
}

/* Queue a message with the given recipients and body as job number n_jobs. */
static void
add_job(struct harness *h, const char *sender, const char *const *rcpts, size_t n, const char *body,
    bool smtputf8)
{
    struct spool_env *e = xcalloc(1, sizeof(*e));
    struct spool_writer *w;
    char qid[SPOOL_QID_LEN + 1];
    size_t j = h->n_jobs;
    e->sender = xstrdup(sender);
    e->body = BODY_8BITMIME;
    e->smtputf8 = smtputf8;
    for (size_t i = 0; i < n; i++)
        spool_env_add_rcpt(e, rcpts[i], NULL, 0);
    w = spool_writer_new(h->sp, e);
    assert_non_null(w);
    assert_int_equal(spool_writer_write(w, body, strlen(body)), 0);
    snprintf(qid, sizeof(qid), "%s", e->qid);
    spool_env_free(e);
    h->committed = false;
    spool_writer_commit(w, commit_cb, 1, h);
    run_until(h, is_committed);
    h->envs[j] = spool_load(h->sp, qid);
    assert_non_null(h->envs[j]);
    assert_int_equal(h->envs[j]->body_len, strlen(body));
    for (size_t i = 0; i < n; i++)
        h->idx[j][i] = i;
    h->n_rcpts[j] = n;
    h->n_jobs++;
}

static struct harness *
h_new(const struct step *const *scripts, size_t n_scripts)
{
    struct harness *h = xcalloc(1, sizeof(*h));
    struct buf err = BUF_INIT;
    struct delivery_callbacks cb = { h_next_job, h_done, h };
    h->base = event_base_new();
    snprintf(h->dir, sizeof(h->dir), "/tmp/test_delivery.XXXXXX");
    assert_non_null(mkdtemp(h->dir));
    h->sp = spool_open(h->dir, h->base, &err);
    assert_non_null(h->sp);
    buf_fini(&err);
    h->cfg.refs = 1;
    h->cfg.hostname = "tern.test";
    h->cfg.delivery_concurrency = 1;
    h->cfg.delivery_max_msgs_per_conn = 10;
    h->cfg.connect_timeout_ms = 2000;
    h->cfg.delivery_timeout_ms = 3000;
    h->cfg.idle_conn_timeout_ms = 50;
    for (size_t i = 0; i < n_scripts; i++)
        h->srv.scripts[i] = scripts[i];
    h->srv.n_scripts = n_scripts;
    server_start(&h->srv, h->base);
    h->d = delivery_new(h->base, h->sp, &cb);
    snprintf(h->dest.host, sizeof(h->dest.host), "127.0.0.1");
    h->dest.port = h->srv.port;
    snprintf(h->dest.key, sizeof(h->dest.key), "smarthost:[127.0.0.1]:%u", h->srv.port);
    want_res = 0;
    return h;
}

static void
h_go(struct harness *h, size_t n_results)
{
    delivery_set_config(h->d, &h->cfg);
    want_res = n_results;
    delivery_kick(h->d, &h->dest, h->n_jobs);
    run_until(h, have_results);
}

static void
h_free(struct harness *h)
{
    char cmd[128];
    delivery_free(h->d);
    assert_int_equal(h->cfg.refs, 1); /* every reference given back */
    server_stop(&h->srv);
    spool_free(h->sp);
    for (size_t i = 0; i < h->n_jobs; i++)
        spool_env_free(h->envs[i]);
    event_base_free(h->base);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h->dir);
    assert_int_equal(system(cmd), 0);
    free(h);
}

static void
check_rcpt(
    const struct tres *r, size_t i, enum deliv_class cls, int code, const char *esc, bool remote)
{
    assert_true(i < r->n);
    if (r->res[i].cls != cls || r->res[i].st.code != code || strcmp(r->res[i].st.esc, esc) != 0 ||
        r->res[i].from_remote != remote)
        fail_msg("rcpt %zu: got cls %d %d %s '%s' remote %d; want cls %d %d %s", i, r->res[i].cls,
            r->res[i].st.code, r->res[i].st.esc, r->res[i].st.text, r->res[i].from_remote, cls,
            code, esc);
}

#define GREET                                                                                      \
    {                                                                                              \
        NULL, "220 test ESMTP\r\n", ACT_REPLY                                                      \
    }
#define EHLO_PIPE                                                                                  \
    {                                                                                              \
        "EHLO tern.test",                                                                          \
            "250-test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"                    \
            "250 ENHANCEDSTATUSCODES\r\n",                                                         \
            ACT_REPLY                                                                              \
    }
#define EHLO_PLAIN                                                                                 \
    {                                                                                              \
        "EHLO tern.test", "250-test\r\n250 8BITMIME\r\n", ACT_REPLY                                \
    }
#define QUIT_OK                                                                                    \
    {                                                                                              \
        "QUIT", "221 bye\r\n", ACT_CLOSE                                                           \
    }
#define END                                                                                        \
    {                                                                                              \
        NULL, NULL, ACT_REPLY                                                                      \
    }

static const char *const two_rcpts[] = { "a@x.test", "b@x.test" };
static const char *const one_rcpt[] = { "a@x.test" };
static const char body1[] = "Subject: t\r\n\r\nhello\r\n";

/* ---- sessions ---- */

static void
test_two_rcpts_one_rejected(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE,
        { "MAIL FROM:<s@y.test> SIZE=21 BODY=8BITMIME", "250 2.1.0 ok\r\n", ACT_REPLY },
        { "RCPT TO:<a@x.test>", "250 2.1.5 ok\r\n", ACT_REPLY },
        { "RCPT TO:<b@x.test>", "550 5.1.1 no such user\r\n", ACT_REPLY },
        { "DATA", "354 go\r\n", ACT_REPLY }, { ".", "250 2.0.0 queued as X\r\n", ACT_REPLY },
        QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    char want_relay[64];
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    h_go(h, 1);
    assert_int_equal(h->res[0].id, 100);
    assert_int_equal(h->res[0].n, 2);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "2.0.0", true);
    assert_string_equal(h->res[0].res[0].st.text, "queued as X");
    check_rcpt(&h->res[0], 1, DELIV_PERM, 550, "5.1.1", true);
    assert_string_equal(h->res[0].res[1].st.text, "no such user");
    snprintf(want_relay, sizeof(want_relay), "127.0.0.1[127.0.0.1]:%u", h->srv.port);
    assert_true(h->res[0].has_relay);
    assert_string_equal(h->res[0].relay, want_relay);
    run_until(h, all_closed); /* idle timeout, then QUIT */
    assert_int_equal(h->srv.errors, 0);
    assert_string_equal(h->srv.bodies.data, "Subject: t\r\n\r\nhello\r\n|");
    h_free(h);
}

static void
test_pipelined_order(void **state)
{
    /* The server holds its replies until DATA: a client that waits for the
     * MAIL reply before sending RCPT would time out here. */
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL FROM:", "250 ok\r\n", ACT_HOLD },
        { "RCPT TO:<a@x.test>", "250 ok\r\n", ACT_HOLD },
        { "RCPT TO:<b@x.test>", "250 ok\r\n", ACT_HOLD }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    h->cfg.delivery_timeout_ms = 1000;
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    check_rcpt(&h->res[0], 1, DELIV_OK, 250, "", true);
    run_until(h, all_closed);
    assert_string_equal(h->srv.log.data, "EHLO tern.test\n"
                                         "MAIL FROM:<s@y.test> SIZE=21 BODY=8BITMIME\n"
                                         "RCPT TO:<a@x.test>\n"
                                         "RCPT TO:<b@x.test>\n"
                                         "DATA\n"
                                         ".\n"
                                         "QUIT\n");
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_mail_451_all_temp(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE,
        { "MAIL FROM:", "451 4.3.0 try later\r\n", ACT_REPLY },
        { "RCPT TO:", "503 5.5.1 need MAIL\r\n", ACT_REPLY },
        { "RCPT TO:", "503 5.5.1 need MAIL\r\n", ACT_REPLY },
        { "DATA", "503 5.5.1 need RCPT\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_TEMP, 451, "4.3.0", true);
    check_rcpt(&h->res[0], 1, DELIV_TEMP, 451, "4.3.0", true);
    assert_string_equal(h->res[0].res[1].st.text, "try later");
    run_until(h, all_closed);
    /* A failed MAIL leaves no transaction: no RSET. */
    assert_null(strstr(h->srv.log.data, "RSET"));
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_dot_stuffing(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, ".first\r\nmid.dle\r\n.\r\n..two\r\nend\r\n", false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    assert_string_equal(h->srv.bodies.data, "..first\r\nmid.dle\r\n..\r\n...two\r\nend\r\n|");
    h_free(h);
}

static void
test_large_body_streams(void **state)
{
    /* Several chunks and high-water refills; lines start with dots at chunk
     * boundaries too. */
    static const struct step s1[] = { GREET, EHLO_PLAIN, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    size_t nlines = 40000;
    struct buf body = BUF_INIT, want = BUF_INIT;
    for (size_t i = 0; i < nlines; i++) {
        const char *line =
            i % 3 == 0 ? ".line of text number xxxxxxxx\r\n" : "line of text number yyyyyyyyy\r\n";
        buf_append_str(&body, line);
        buf_append_str(&want, line[0] == '.' ? "." : "");
        buf_append_str(&want, line);
    }
    buf_append_str(&want, "|");
    add_job(h, "s@y.test", one_rcpt, 1, body.data, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    assert_int_equal(h->srv.bodies.len, want.len);
    assert_memory_equal(h->srv.bodies.data, want.data, want.len);
    buf_fini(&want);
    buf_fini(&body);
    h_free(h);
}

static void
test_reuse_three_jobs(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 one\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "550 no\r\n", ACT_REPLY }, { "DATA", "554 no valid recipients\r\n", ACT_REPLY },
        { "RSET", "250 ok\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 three\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 3);
    assert_int_equal(h->srv.n_conns, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    check_rcpt(&h->res[1], 0, DELIV_PERM, 550, "", true);
    check_rcpt(&h->res[2], 0, DELIV_OK, 250, "", true);
    assert_string_equal(h->res[2].res[0].st.text, "three");
    run_until(h, all_closed);
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_max_msgs_per_conn(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h->cfg.delivery_max_msgs_per_conn = 1;
    h_go(h, 2);
    /* One message per connection: the second went over a new one. */
    assert_int_equal(h->srv.n_conns, 2);
    check_rcpt(&h->res[1], 0, DELIV_OK, 250, "", true);
    run_until(h, all_closed);
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_close_mid_data(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_CLOSE_IN_DATA }, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_TEMP, 421, "4.4.2", false);
    if (strstr(h->res[0].res[0].st.text, "lost during DATA") == NULL)
        fail_msg("reason: %s", h->res[0].res[0].st.text);
    run_until(h, all_closed);
    h_free(h);
}

static void
test_connect_refused(void **state)
{
    static const struct step s1[] = { END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    char want[64];
    /* Nothing listens on the port once the listener is gone. */
    evconnlistener_free(h->srv.lis);
    h->srv.lis = NULL;
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 2); /* both due jobs are answered: the destination is down */
    snprintf(want, sizeof(want), "connect to 127.0.0.1:%u: ", h->srv.port);
    for (size_t j = 0; j < 2; j++) {
        assert_false(h->res[j].has_relay);
        check_rcpt(&h->res[j], 0, DELIV_TEMP, 421, "4.4.1", false);
        if (strncmp(h->res[j].res[0].st.text, want, strlen(want)) != 0)
            fail_msg("reason: %s", h->res[j].res[0].st.text);
    }
    check_rcpt(&h->res[0], 1, DELIV_TEMP, 421, "4.4.1", false);
    run_until(h, all_closed);
    h_free(h);
}

static void
test_connect_refused_parallel(void **state)
{
    /* Several connections fail at once: the last one answers every due job
     * and no replacement connections are opened in a loop. */
    static const struct step s1[] = { END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    evconnlistener_free(h->srv.lis);
    h->srv.lis = NULL;
    for (int i = 0; i < 4; i++)
        add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h->cfg.delivery_concurrency = 3;
    delivery_set_config(h->d, &h->cfg);
    delivery_kick(h->d, &h->dest, 4);
    assert_int_equal(delivery_active(h->d), 3);
    want_res = 4;
    run_until(h, have_results);
    run_until(h, all_closed);
    run_for(h, 50);
    assert_int_equal(delivery_active(h->d), 0);
    for (size_t j = 0; j < 4; j++)
        check_rcpt(&h->res[j], 0, DELIV_TEMP, 421, "4.4.1", false);
    h_free(h);
}

static void
test_ehlo_502_helo(void **state)
{
    static const struct step s1[] = { GREET, { "EHLO tern.test", "502 what\r\n", ACT_REPLY },
        { "HELO tern.test", "250 hi\r\n", ACT_REPLY },
        { "MAIL FROM:<s@y.test>", "250 ok\r\n", ACT_REPLY },
        { "RCPT TO:<a@x.test>", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    run_until(h, all_closed);
    /* No extensions after HELO: a MAIL without parameters. */
    assert_non_null(strstr(h->srv.log.data, "\nMAIL FROM:<s@y.test>\n"));
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_reply_timeout(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "", ACT_SILENT },
        { "RCPT", "", ACT_SILENT }, { "RCPT", "", ACT_SILENT }, { "DATA", "", ACT_SILENT }, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    int64_t t0 = tern_mono_ms();
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    h->cfg.delivery_timeout_ms = 200;
    h_go(h, 1);
    assert_true(tern_mono_ms() - t0 >= 190);
    check_rcpt(&h->res[0], 0, DELIV_TEMP, 421, "4.4.2", false);
    check_rcpt(&h->res[0], 1, DELIV_TEMP, 421, "4.4.2", false);
    if (strstr(h->res[0].res[0].st.text, "timeout waiting for reply to MAIL") == NULL)
        fail_msg("reason: %s", h->res[0].res[0].st.text);
    run_until(h, all_closed);
    h_free(h);
}

static bool
server_saw_data(struct harness *h)
{
    return h->srv.log.data != NULL && strstr(h->srv.log.data, "DATA\n") != NULL;
}

static void
test_free_with_job_in_flight(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "550 5.1.1 no\r\n", ACT_REPLY }, { "RCPT", "250 ok\r\n", ACT_REPLY },
        { "DATA", "", ACT_SILENT }, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    delivery_set_config(h->d, &h->cfg);
    delivery_kick(h->d, &h->dest, 1);
    run_until(h, server_saw_data);
    run_for(h, 100); /* the client reads the MAIL and RCPT replies */
    assert_int_equal(h->n_res, 0);
    assert_int_equal(delivery_active(h->d), 1);
    delivery_free(h->d);
    h->d = NULL;
    assert_int_equal(h->n_res, 1);
    /* The 550 already received stays; the rest is "shutting down". */
    check_rcpt(&h->res[0], 0, DELIV_PERM, 550, "5.1.1", true);
    check_rcpt(&h->res[0], 1, DELIV_TEMP, 421, "4.3.2", false);
    assert_string_equal(h->res[0].res[1].st.text, "shutting down");
    h_free(h);
}

static void
test_421_at_rcpt(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PLAIN, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT TO:<a@x.test>", "250 ok\r\n", ACT_REPLY },
        { "RCPT TO:<b@x.test>", "421-4.7.0 too busy\r\n421 4.7.0 closing\r\n", ACT_CLOSE }, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_TEMP, 421, "4.7.0", true);
    check_rcpt(&h->res[0], 1, DELIV_TEMP, 421, "4.7.0", true);
    assert_string_equal(h->res[0].res[0].st.text, "too busy closing");
    run_until(h, all_closed);
    assert_null(strstr(h->srv.log.data, "DATA"));
    h_free(h);
}

static void
test_size_and_smtputf8_refused_locally(void **state)
{
    static const struct step s1[] = { GREET, { "EHLO", "250-test\r\n250 SIZE 10\r\n", ACT_REPLY },
        QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    static const char *const u8[] = { "\xc3\xa9@x.test" };
    add_job(h, "s@y.test", one_rcpt, 1, body1, false); /* 22 bytes > SIZE 10 */
    add_job(h, "s@y.test", u8, 1, "a\r\n", true);      /* no SMTPUTF8 offered */
    h_go(h, 2);
    check_rcpt(&h->res[0], 0, DELIV_PERM, 552, "5.3.4", false);
    check_rcpt(&h->res[1], 0, DELIV_PERM, 550, "5.6.7", false);
    run_until(h, all_closed);
    assert_null(strstr(h->srv.log.data, "MAIL"));
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_localhost_resolves(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    char want[64];
    snprintf(h->dest.host, sizeof(h->dest.host), "localhost");
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    snprintf(want, sizeof(want), "localhost[127.0.0.1]:%u", h->srv.port);
    assert_string_equal(h->res[0].relay, want);
    run_until(h, all_closed);
    h_free(h);
}

static void
test_greeting_554_defers(void **state)
{
    static const struct step s1[] = { { NULL, "554 go away\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    /* A refusing server is our own TEMP reason, never a bounce. */
    check_rcpt(&h->res[0], 0, DELIV_TEMP, 421, "4.4.0", false);
    assert_non_null(strstr(h->res[0].res[0].st.text, "554 go away"));
    assert_true(h->res[0].has_relay);
    run_until(h, all_closed);
    h_free(h);
}

static void
test_concurrency_limit(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    for (int i = 0; i < 3; i++)
        add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h->cfg.delivery_concurrency = 2;
    delivery_set_config(h->d, &h->cfg);
    delivery_kick(h->d, &h->dest, 3);
    assert_int_equal(delivery_active(h->d), 2);
    want_res = 3;
    run_until(h, have_results);
    assert_int_equal(h->srv.n_conns, 2);
    run_until(h, all_closed);
    /* Three transactions over two connections (one of them may QUIT early,
     * which this script does not foresee: errors are not checked here). */
    {
        size_t n = 0;
        for (const char *p = h->srv.log.data; (p = strstr(p, "MAIL FROM:")) != NULL; p++)
            n++;
        assert_int_equal(n, 3);
    }
    h_free(h);
}

static void
test_idle_conn_takes_new_job(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    h->cfg.idle_conn_timeout_ms = 5000;
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    run_for(h, 50); /* now idle */
    assert_int_equal(delivery_active(h->d), 1);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    want_res = 2;
    delivery_kick(h->d, &h->dest, 1);
    assert_int_equal(delivery_active(h->d), 1); /* the idle one is reused */
    run_until(h, have_results);
    assert_int_equal(h->srv.n_conns, 1);
    check_rcpt(&h->res[1], 0, DELIV_OK, 250, "", true);
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_idle_timeout_quits(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    int64_t t0 = tern_mono_ms();
    delivery_set_config(h->d, &h->cfg);
    delivery_kick(h->d, &h->dest, 1); /* but next_job has nothing */
    run_until(h, all_closed);
    assert_true(tern_mono_ms() - t0 >= 45);
    assert_string_equal(h->srv.log.data, "EHLO tern.test\nQUIT\n");
    assert_int_equal(h->n_res, 0);
    h_free(h);
}

static void
test_no_rcpt_accepted_rset(void **state)
{
    /* Without PIPELINING: no DATA once every RCPT failed, RSET, next job. */
    static const struct step s1[] = { GREET, EHLO_PLAIN, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT TO:<a@x.test>", "550 5.1.1 no\r\n", ACT_REPLY },
        { "RCPT TO:<b@x.test>", "450 4.2.0 later\r\n", ACT_REPLY },
        { "RSET", "250 ok\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "554 5.6.0 rejected\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 2);
    check_rcpt(&h->res[0], 0, DELIV_PERM, 550, "5.1.1", true);
    check_rcpt(&h->res[0], 1, DELIV_TEMP, 450, "4.2.0", true);
    check_rcpt(&h->res[1], 0, DELIV_PERM, 554, "5.6.0", true);
    run_until(h, all_closed);
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_pipelined_354_without_rcpt(void **state)
{
    /* A server that says 354 although every RCPT failed gets an empty
     * message ("." alone, RFC 2920 §3.1) and the results stay the RCPT ones. */
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "550 no\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "554 no data\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_PERM, 550, "", true);
    assert_string_equal(h->res[0].res[0].st.text, "no");
    run_until(h, all_closed);
    assert_string_equal(h->srv.bodies.data, "|");
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_dsn_parameters(void **state)
{
    static const struct step s2[] = { GREET,
        { "EHLO", "250-test\r\n250-DSN\r\n250 SMTPUTF8\r\n", ACT_REPLY },
        { "MAIL FROM:<s@y.test> SMTPUTF8 RET=HDRS ENVID=abc+2B", "250 ok\r\n", ACT_REPLY },
        { "RCPT TO:<a@x.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@x.test", "250 ok\r\n",
            ACT_REPLY },
        { "RCPT TO:<b@x.test> NOTIFY=NEVER", "250 ok\r\n", ACT_REPLY },
        { "DATA", "354 go\r\n", ACT_REPLY }, { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s2 };
    struct harness *h = h_new(sc, 1);
    struct spool_env *e;
    add_job(h, "s@y.test", two_rcpts, 2, body1, true);
    e = h->envs[0];
    e->ret = DSN_RET_HDRS;
    e->envid = xstrdup("abc+2B");
    e->rcpts[0].notify = DSN_NOTIFY_SUCCESS | DSN_NOTIFY_DELAY;
    e->rcpts[0].orcpt = xstrdup("rfc822;a@x.test");
    e->rcpts[1].notify = DSN_NOTIFY_NEVER;
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    check_rcpt(&h->res[0], 1, DELIV_OK, 250, "", true);
    run_until(h, all_closed);
    assert_non_null(
        strstr(h->srv.log.data, "MAIL FROM:<s@y.test> SMTPUTF8 RET=HDRS ENVID=abc+2B\n"));
    assert_non_null(strstr(h->srv.log.data, "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@x.test\n"));
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static void
test_bad_reply_is_temp(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "25O garbage\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY }, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_TEMP, 421, "4.5.0", false);
    assert_non_null(strstr(h->res[0].res[0].st.text, "malformed reply"));
    run_until(h, all_closed);
    h_free(h);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_parse),
        cmocka_unit_test(test_reply_limits),
        cmocka_unit_test(test_esc_len),
        cmocka_unit_test(test_ehlo_parse),
        cmocka_unit_test(test_two_rcpts_one_rejected),
        cmocka_unit_test(test_pipelined_order),
        cmocka_unit_test(test_mail_451_all_temp),
        cmocka_unit_test(test_dot_stuffing),
        cmocka_unit_test(test_large_body_streams),
        cmocka_unit_test(test_reuse_three_jobs),
        cmocka_unit_test(test_max_msgs_per_conn),
        cmocka_unit_test(test_close_mid_data),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_connect_refused_parallel),
        cmocka_unit_test(test_ehlo_502_helo),
        cmocka_unit_test(test_reply_timeout),
        cmocka_unit_test(test_free_with_job_in_flight),
        cmocka_unit_test(test_421_at_rcpt),
        cmocka_unit_test(test_size_and_smtputf8_refused_locally),
        cmocka_unit_test(test_localhost_resolves),
        cmocka_unit_test(test_greeting_554_defers),
        cmocka_unit_test(test_concurrency_limit),
        cmocka_unit_test(test_idle_conn_takes_new_job),
        cmocka_unit_test(test_idle_timeout_quits),
        cmocka_unit_test(test_no_rcpt_accepted_rset),
        cmocka_unit_test(test_pipelined_354_without_rcpt),
        cmocka_unit_test(test_dsn_parameters),
        cmocka_unit_test(test_bad_reply_is_temp),
    };
    signal(SIGPIPE, SIG_IGN); /* as ternd does: a peer closing mid-write */
    log_set_level(LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

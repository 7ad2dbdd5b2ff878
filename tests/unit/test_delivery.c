/*
 * Unit tests of the outbound SMTP client (src/delivery): the pure reply,
 * EHLO and target-order functions from tables, then whole sessions against
 * scripted SMTP servers that run in the same event loop (libevent listeners
 * on 127.0.0.1 and, for MX delivery, on 127.0.0.3-5 at one port), with a
 * dnsmasq child process as the DNS server. Messages live in a real spool in
 * a temporary directory.
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
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "delivery/delivery.h"
#include "delivery/delivery_int.h"
#include "dns/dns.h"
#include "spool/spool.h"
#include "testnet.h"
#include "util/log.h"
#include "util/loopq.h"
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

static uint16_t
must_free_port(void)
{
    uint16_t port = testnet_free_port();
    if (port == 0)
        fail_msg("no free port");
    return port;
}

static const struct reply_case reply_cases[] = {
    { "single line", { "250 ok" }, REPLY_DONE, 250, "", "ok" },
    { "code only", { "354" }, REPLY_DONE, 354, "", "" },
    { "enhanced code", { "550 5.1.1 no such user" }, REPLY_DONE, 550, "5.1.1", "no such user" },
    { "esc class mismatch kept as text", { "550 4.1.1 odd" }, REPLY_DONE, 550, "", "4.1.1 odd" },
    { "multi-line joined, esc stripped", { "451-4.3.0 first", "451 4.3.0 second" }, REPLY_DONE, 451,
        "4.3.0", "first second" },
    { "continuation pending", { "250-a", "250-b" }, REPLY_MORE, 250, "", "a b" },
    { "control chars replaced", { "250 a\tb\x01" }, REPLY_DONE, 250, "", "a?b?" },
    { "UTF-8 kept", { "550 5.1.1 Empf\xc3\xa4nger \xe2\x9c\x89 \xf0\x9f\x90\xa6" }, REPLY_DONE, 550,
        "5.1.1", "Empf\xc3\xa4nger \xe2\x9c\x89 \xf0\x9f\x90\xa6" },
    { "bad UTF-8 replaced",
        { "550 a\xc3(b\xff\xc0\xaf"
          "c\xed\xa0\x80"
          "d\xe2\x9c" },
        REPLY_DONE, 550, "", "a?(b???c???d??" },
    { "DEL and C1 replaced",
        { "250 a\x7f\xc2\x85"
          "b" },
        REPLY_DONE, 250, "", "a??b" },
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
    /* A UTF-8 sequence is never cut in two at the limit. */
    memset(longl, 'a', sizeof(longl));
    memcpy(longl, "250 ", 4);
    memcpy(longl + 4 + STATUS_TEXT_MAX - 2, "\xe2\x9c\x89", 3);
    reply_reset(&a);
    assert_int_equal(reply_feed_line(&a, longl, sizeof(longl), &t, &tl), REPLY_DONE);
    assert_int_equal(strlen(a.st.text), STATUS_TEXT_MAX - 2);
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
    { "unknown", "XFORWARD NAME ADDR", { .pipelining = false } },
    { "auth plain login", "AUTH PLAIN LOGIN", { .auth_plain = true, .auth_login = true } },
    { "auth login only", "auth CRAM-MD5 login", { .auth_login = true } },
    { "auth= old form", "AUTH=LOGIN PLAIN", { .auth_plain = true, .auth_login = true } },
    { "auth no plain prefix", "AUTH PLAINX", { .auth_plain = false } },
    { "starttls", "STARTTLS", { .starttls = true } },
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

/* Listen on addr:port (port 0: any free one). */
static void
server_start_at(struct server *s, struct event_base *base, const char *addr, uint16_t port)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, addr, &sin.sin_addr), 1);
    sin.sin_port = htons(port);
    s->base = base;
    s->lis = evconnlistener_new_bind(base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
        16, (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(s->lis);
    getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&sin, &len);
    s->port = ntohs(sin.sin_port);
}

static void
server_start(struct server *s, struct event_base *base)
{
    server_start_at(s, base, "127.0.0.1", 0);
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

/* ---- dnsmasq: the DNS server of the MX tests ---- */

/* Shared by every test: the dnsmasq child's port and the one all MX sinks use. */
static uint16_t mx_port, dns_port;

/* 127.0.0.3 and .4 run sinks (mx1, mx2), .5 greets with 554, .6 listens not. */
static const char *const zone[] = {
    "--mx-host=a.test,mx1.a.test,10",
    "--mx-host=a.test,mx2.a.test,20",
    "--host-record=mx1.a.test,127.0.0.3",
    "--host-record=mx2.a.test,127.0.0.4",
    "--mx-host=b.test,dead.b.test,10",
    "--mx-host=b.test,mx2.a.test,20",
    "--host-record=dead.b.test,127.0.0.6",
    "--mx-host=refuse.test,greet554.test,10",
    "--mx-host=refuse.test,mx2.a.test,20",
    "--host-record=greet554.test,127.0.0.5",
    "--mx-host=down.test,dead.b.test,10",
    "--mx-host=nullmx.test,.,0",
    "--host-record=implicit.test,127.0.0.3",
    "--txt-record=noaddr.test,x",
    "--mx-host=d1.test,mx1.a.test,10",
    "--mx-host=d2.test,mx1.a.test,10",
    "--mx-host=c.test,mx2.a.test,10",
};

static pid_t dnsmasq_pid;

static int
dnsmasq_setup(void **state)
{
    const char *args[TERN_ARRAY_LEN(zone) + 8];
    size_t k = 0;
    mx_port = must_free_port();
    args[k++] = "--listen-address=127.0.0.1";
    args[k++] = "--bind-interfaces";
    args[k++] = "--no-resolv";
    args[k++] = "--no-hosts";
    args[k++] = "--conf-file=/dev/null";
    args[k++] = "--local=/test/";
    args[k++] = "--local-ttl=60";
    for (size_t i = 0; i < TERN_ARRAY_LEN(zone); i++)
        args[k++] = zone[i];
    args[k] = NULL;
    dnsmasq_pid = testnet_dnsmasq_start(args, &dns_port);
    return dnsmasq_pid > 0 ? 0 : -1;
}

static int
dnsmasq_teardown(void **state)
{
    int st;
    if (dnsmasq_pid > 0) {
        kill(dnsmasq_pid, SIGTERM);
        waitpid(dnsmasq_pid, &st, 0);
    }
    return 0;
}

static struct dns *
dns_at(struct event_base *base, uint16_t port)
{
    struct buf err = BUF_INIT;
    struct dns *d = testnet_dns_at(base, port, &err);
    if (d == NULL)
        fail_msg("dns_new: %s", err.data);
    buf_fini(&err);
    return d;
}

/* ---- harness: spool, config, delivery with a job queue ---- */

#define MAX_JOBS 8
#define N_MX     3 /* scripted MX servers on 127.0.0.3, .4, .5 */

struct tres {
    uint64_t id;
    struct delivery_rcpt_result res[4];
    size_t n;
    char relay[DELIV_RELAY_MAX];
    bool has_relay;
};

struct harness {
    struct loopq *q;
    struct event_base *base;
    char dir[64];
    struct spool *sp;
    struct config cfg;
    struct server srv;
    struct server mx[N_MX];
    struct dns *dns;
    struct delivery *d;
    /* The destination table, as the scheduler keeps one: dest is where
     * add_job puts jobs, and each entry counts its jobs not taken. */
    struct delivery_dest dests[2];
    struct delivery_dest *dest;
    struct spool_env *envs[MAX_JOBS];
    size_t idx[MAX_JOBS][4];
    size_t n_rcpts[MAX_JOBS];
    struct delivery_dest *job_dest[MAX_JOBS];
    bool taken[MAX_JOBS];
    size_t n_jobs, next_job;
    struct tres res[MAX_JOBS];
    size_t n_res;
    bool committed;
    size_t max_active; /* the most connections seen open at once */
};

/* The oldest job not handed out yet for dest. */
static bool
h_next_job(void *arg, struct delivery_dest *dest, struct delivery_job *job)
{
    struct harness *h = arg;
    for (size_t j = 0; j < h->n_jobs; j++) {
        if (h->taken[j] || h->job_dest[j] != dest)
            continue;
        h->taken[j] = true;
        assert_true(dest->n_ready > 0);
        dest->n_ready--;
        job->id = 100 + j;
        job->env = h->envs[j];
        job->rcpt_idx = h->idx[j];
        job->n_rcpts = h->n_rcpts[j];
        h->next_job++;
        return true;
    }
    dest->n_ready = 0;
    return false;
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
        if (h->d != NULL && delivery_active(h->d) > h->max_active)
            h->max_active = delivery_active(h->d);
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
    spool_writer_write(w, body, strlen(body));
    snprintf(qid, sizeof(qid), "%s", e->qid);
    spool_env_free(e);
    h->committed = false;
    spool_writer_commit(w, h->q, commit_cb, 1, h);
    run_until(h, is_committed);
    h->envs[j] = spool_load(h->sp, qid);
    assert_non_null(h->envs[j]);
    assert_int_equal(h->envs[j]->body_len, strlen(body));
    for (size_t i = 0; i < n; i++)
        h->idx[j][i] = i;
    h->n_rcpts[j] = n;
    h->job_dest[j] = h->dest;
    h->dest->n_ready++;
    h->n_jobs++;
}

static struct harness *live_h; /* between h_new and h_free */

static struct harness *
h_new(const struct step *const *scripts, size_t n_scripts)
{
    struct harness *h = xcalloc(1, sizeof(*h));
    struct buf err = BUF_INIT;
    struct delivery_callbacks cb = { h_next_job, h_done, NULL, h };
    if (live_h != NULL) {
        /* The previous test failed before h_free: close its listeners (the
         * rest is left as is) so that the next tests can bind again. */
        for (size_t i = 0; i < N_MX; i++) {
            if (live_h->mx[i].lis != NULL)
                evconnlistener_free(live_h->mx[i].lis);
            live_h->mx[i].lis = NULL;
        }
    }
    live_h = h;
    h->base = event_base_new();
    snprintf(h->dir, sizeof(h->dir), "/tmp/test_delivery.XXXXXX");
    assert_non_null(mkdtemp(h->dir));
    h->q = loopq_new(h->base);
    h->sp = spool_open(h->dir, h->q, NULL, &err);
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
    h->dns = dns_at(h->base, dns_port);
    h->d = delivery_new(h->base, h->sp, h->dns, &cb);
    h->dest = &h->dests[0];
    h->dest->n_hops = 1;
    snprintf(h->dest->hops[0].host, sizeof(h->dest->hops[0].host), "127.0.0.1");
    h->dest->hops[0].port = h->srv.port;
    snprintf(h->dest->key, sizeof(h->dest->key), "smarthost");
    want_res = 0;
    return h;
}

static void
h_go(struct harness *h, size_t n_results)
{
    delivery_set_config(h->d, &h->cfg);
    want_res = n_results;
    delivery_kick(h->d, h->dest);
    run_until(h, have_results);
}

static void
h_free(struct harness *h)
{
    char cmd[128];
    live_h = NULL;
    delivery_free(h->d);
    assert_int_equal(h->cfg.refs, 1); /* every reference given back */
    dns_free(h->dns);
    server_stop(&h->srv);
    for (size_t i = 0; i < N_MX; i++)
        server_stop(&h->mx[i]);
    spool_free(h->sp);
    loopq_free(h->q);
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
    char want_relay[128];
    add_job(h, "s@y.test", two_rcpts, 2, body1, false);
    h_go(h, 1);
    assert_int_equal(h->res[0].id, 100);
    assert_int_equal(h->res[0].n, 2);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "2.0.0", true);
    assert_string_equal(h->res[0].res[0].st.text, "queued as X");
    check_rcpt(&h->res[0], 1, DELIV_PERM, 550, "5.1.1", true);
    assert_string_equal(h->res[0].res[1].st.text, "no such user");
    snprintf(want_relay, sizeof(want_relay),
        "127.0.0.1[127.0.0.1]:%u tls=none tls_policy=opportunistic tls_verified=none", h->srv.port);
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
    add_job(h, "s@y.test", one_rcpt, 1, "X: y\r\n\r\n.first\r\nmid.dle\r\n.\r\n..two\r\nend\r\n",
        false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    assert_string_equal(
        h->srv.bodies.data, "X: y\r\n\r\n..first\r\nmid.dle\r\n..\r\n...two\r\nend\r\n|");
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
    buf_append_str(&body, "X: y\r\n\r\n");
    buf_append_str(&want, "X: y\r\n\r\n");
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
    delivery_kick(h->d, h->dest);
    want_res = 4;
    run_until(h, have_results);
    run_until(h, all_closed);
    run_for(h, 50);
    assert_int_equal(h->max_active, 3); /* opened once the route was resolved */
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
    delivery_kick(h->d, h->dest);
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

/* Outbound sockets go without Nagle: the final dot (and pipelined
 * commands) must not wait for the peer's delayed ACK. */
static void
test_outbound_nodelay(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "", ACT_SILENT }, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    struct deliv_conn *c;
    int on = 0;
    socklen_t len = sizeof(on);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    delivery_set_config(h->d, &h->cfg);
    delivery_kick(h->d, h->dest);
    run_until(h, server_saw_data);
    assert_non_null(h->dest->dl);
    c = TAILQ_FIRST(&h->dest->dl->conns);
    assert_non_null(c);
    assert_int_equal(getsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &on, &len), 0);
    assert_int_not_equal(on, 0);
    delivery_free(h->d);
    h->d = NULL;
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

/* A next hop without 8BITMIME gets the 8-bit message in 7-bit MIME, with
 * SIZE= of the converted form and no BODY=; one that cannot be converted,
 * and BINARYMIME content, are refused here with 5.6.3 (RFC 6152 §3, RFC
 * 3030 §3). */
static void
test_8bit_to_7bit_next_hop(void **state)
{
    static const struct step s1[] = { GREET,
        { "EHLO", "250-test\r\n250-PIPELINING\r\n250 SIZE 100000\r\n", ACT_REPLY },
        { "MAIL FROM:<s@y.test> SIZE=138", "250 ok\r\n", ACT_REPLY },
        { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
        { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    add_job(h, "s@y.test", one_rcpt, 1, "Subject: x\r\n\r\nd\xc3\xa9j\xc3\xa0 vu\r\n", false);
    add_job(h, "s@y.test", one_rcpt, 1, "Content-Type: multipart/mixed\r\n\r\nno boundary \xe9\r\n",
        false);
    add_job(h, "s@y.test", one_rcpt, 1, "Subject: y\r\n\r\nbinary\r\n", false);
    h->envs[2]->body = BODY_BINARYMIME;
    h_go(h, 3);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    assert_string_equal(h->srv.bodies.data,
        "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\nd=C3=A9j=C3=A0 vu\r\n|");
    check_rcpt(&h->res[1], 0, DELIV_PERM, 554, "5.6.3", false);
    assert_non_null(strstr(h->res[1].res[0].st.text, "cannot be converted to 7 bit"));
    check_rcpt(&h->res[2], 0, DELIV_PERM, 554, "5.6.3", false);
    assert_non_null(strstr(h->res[2].res[0].st.text, "BINARYMIME"));
    assert_null(strstr(h->srv.log.data, "BODY="));
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
    char want[128];
    snprintf(h->dest->hops[0].host, sizeof(h->dest->hops[0].host), "localhost");
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "", true);
    snprintf(want, sizeof(want),
        "localhost[127.0.0.1]:%u tls=none tls_policy=opportunistic tls_verified=none", h->srv.port);
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
    /* A refusing server is our own TEMP reason, never a bounce; as the only
     * host, the whole destination is down (no relay reached). */
    check_rcpt(&h->res[0], 0, DELIV_TEMP, 421, "4.4.0", false);
    assert_non_null(strstr(h->res[0].res[0].st.text, "554 go away"));
    assert_false(h->res[0].has_relay);
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
    delivery_kick(h->d, h->dest);
    want_res = 3;
    run_until(h, have_results);
    assert_int_equal(h->max_active, 2);
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
    delivery_kick(h->d, h->dest);
    assert_int_equal(delivery_active(h->d), 1); /* the idle one is reused */
    run_until(h, have_results);
    assert_int_equal(h->srv.n_conns, 1);
    check_rcpt(&h->res[1], 0, DELIV_OK, 250, "", true);
    assert_int_equal(h->srv.errors, 0);
    h_free(h);
}

static bool
server_saw_quit(struct harness *h)
{
    return h->srv.log.data != NULL && strstr(h->srv.log.data, "QUIT\n") != NULL;
}

static void
test_idle_timeout_quits(void **state)
{
    static const struct step s1[] = { GREET, EHLO_PIPE, QUIT_OK, END };
    const struct step *sc[] = { s1 };
    struct harness *h = h_new(sc, 1);
    int64_t t0 = tern_mono_ms();
    delivery_set_config(h->d, &h->cfg);
    h->dest->n_ready = 1; /* but next_job has nothing */
    delivery_kick(h->d, h->dest);
    run_until(h, server_saw_quit);
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

/* ---- target order (pure) ---- */

static struct deliv_plan *
order_plan(void)
{
    /* hop 0: h0 (pref 10, two addresses), h1 (pref 10), h2 (pref 20);
     * hop 1: h3. */
    static const struct {
        uint16_t hop, pref, nt;
    } hs[] = { { 0, 10, 2 }, { 0, 10, 1 }, { 0, 20, 1 }, { 1, 0, 1 } };
    struct deliv_plan *p = xcalloc(1, sizeof(*p));
    p->refs = 1;
    p->hosts = xcalloc(4, sizeof(*p->hosts));
    p->t = xcalloc(5, sizeof(*p->t));
    for (size_t i = 0; i < 4; i++) {
        struct plan_host *ph = &p->hosts[p->n_hosts++];
        snprintf(ph->name, sizeof(ph->name), "h%zu", i);
        ph->hop = hs[i].hop;
        ph->pref = hs[i].pref;
        ph->t0 = (uint16_t)p->n_t;
        ph->nt = hs[i].nt;
        for (size_t k = 0; k < hs[i].nt; k++) {
            char a[16];
            snprintf(a, sizeof(a), "10.0.%zu.%zu", i, k);
            assert_int_equal(dns_literal(a, 25, &p->t[p->n_t].addr, &p->t[p->n_t].len), 0);
            p->t[p->n_t++].host = (uint16_t)i;
        }
    }
    return p;
}

static uint32_t
seq_rnd(void *arg)
{
    uint32_t *x = arg;
    *x = *x * 1103515245u + 12345u;
    return *x >> 16;
}

static void
test_plan_order(void **state)
{
    struct deliv_plan *p = order_plan();
    size_t h0_first = 0, h1_first = 0, start, end;
    for (uint32_t seed = 1; seed <= 200; seed++) {
        uint16_t order[DELIV_TARGETS_MAX];
        uint32_t x = seed;
        assert_int_equal(plan_order(p, order, seq_rnd, &x), 5);
        /* Targets 0,1 (h0, in order) and 2 (h1) in some host order, then
         * h2's, then hop 1's. */
        if (order[0] == 0) {
            assert_int_equal(order[1], 1);
            assert_int_equal(order[2], 2);
            h0_first++;
        } else {
            assert_int_equal(order[0], 2);
            assert_int_equal(order[1], 0);
            assert_int_equal(order[2], 1);
            h1_first++;
        }
        assert_int_equal(order[3], 3);
        assert_int_equal(order[4], 4);
    }
    /* Equal preferences really spread over connections. */
    assert_true(h0_first > 50 && h1_first > 50);
    assert_true(plan_first_group(p, &start, &end));
    assert_int_equal(start, 0);
    assert_int_equal(end, 3);
    p->t[0].failed = true;
    assert_true(plan_first_group(p, &start, &end));
    assert_int_equal(start, 1);
    assert_int_equal(end, 3);
    p->t[1].failed = p->t[2].failed = true;
    assert_true(plan_first_group(p, &start, &end));
    assert_int_equal(start, 3);
    assert_int_equal(end, 4);
    assert_true(plan_usable(p));
    p->t[3].failed = p->t[4].failed = true;
    assert_false(plan_first_group(p, &start, &end));
    assert_false(plan_usable(p));
    plan_unref(p);
}

/* ---- MX delivery against dnsmasq ---- */

static const struct step mx_one[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
    { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
    { ".", "250 2.0.0 ok\r\n", ACT_REPLY }, QUIT_OK, END };
static const struct step mx_two[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
    { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
    { ".", "250 2.0.0 ok\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
    { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
    { ".", "250 2.0.0 ok\r\n", ACT_REPLY }, QUIT_OK, END };
static const struct step mx_four[] = { GREET, EHLO_PIPE, { "MAIL", "250 ok\r\n", ACT_REPLY },
    { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
    { ".", "250 ok\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
    { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
    { ".", "250 ok\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
    { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
    { ".", "250 ok\r\n", ACT_REPLY }, { "MAIL", "250 ok\r\n", ACT_REPLY },
    { "RCPT", "250 ok\r\n", ACT_REPLY }, { "DATA", "354 go\r\n", ACT_REPLY },
    { ".", "250 ok\r\n", ACT_REPLY }, QUIT_OK, END };
static const struct step no_conn[] = { END };

static void
mx_dest(struct delivery_dest *dd, const char *domain)
{
    memset(dd, 0, sizeof(*dd));
    snprintf(dd->key, sizeof(dd->key), "mx:%s", domain);
    snprintf(dd->hops[0].host, sizeof(dd->hops[0].host), "%s", domain);
    dd->hops[0].port = mx_port;
    dd->hops[0].mx = true;
    dd->n_hops = 1;
}

/* Scripted sink i on 127.0.0.(3+i):mx_port. */
static void
mx_server(struct harness *h, size_t i, const struct step *script)
{
    char a[16];
    h->mx[i].scripts[0] = script;
    h->mx[i].n_scripts = 1;
    snprintf(a, sizeof(a), "127.0.0.%zu", 3 + i);
    server_start_at(&h->mx[i], h->base, a, mx_port);
}

static struct harness *
h_mx(const char *domain)
{
    const struct step *sc[] = { no_conn };
    struct harness *h = h_new(sc, 1);
    mx_dest(h->dest, domain);
    return h;
}

static void
check_relay(const struct tres *r, const char *host, const char *addr)
{
    char want[DELIV_RELAY_MAX];
    snprintf(want, sizeof(want), "%s[%s]:%u tls=none tls_policy=opportunistic tls_verified=none",
        host, addr, mx_port);
    assert_true(r->has_relay);
    assert_string_equal(r->relay, want);
}

static void
test_mx_preferred(void **state)
{
    struct harness *h = h_mx("a.test");
    mx_server(h, 0, mx_one);
    mx_server(h, 1, mx_one);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "2.0.0", true);
    check_relay(&h->res[0], "mx1.a.test", "127.0.0.3");
    assert_int_equal(h->mx[0].n_conns, 1);
    assert_int_equal(h->mx[1].n_conns, 0);
    run_until(h, all_closed);
    assert_int_equal(h->mx[0].errors, 0);
    h_free(h);
}

static void
test_mx_preferred_down(void **state)
{
    /* b.test: dead.b.test (127.0.0.6, nothing listens) at 10, mx2 at 20. A
     * second message skips the host already found down. */
    struct harness *h = h_mx("b.test");
    mx_server(h, 1, mx_two);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 2);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "2.0.0", true);
    check_relay(&h->res[0], "mx2.a.test", "127.0.0.4");
    check_rcpt(&h->res[1], 0, DELIV_OK, 250, "2.0.0", true);
    run_until(h, all_closed);
    assert_int_equal(h->mx[1].errors, 0);
    h_free(h);
}

static void
test_mx_greeting_refused_next(void **state)
{
    /* A 5xx greeting is a refusal: the next MX host gets the message. With
     * one message per connection, the second connection skips the host the
     * first one found refusing. */
    static const struct step refuse[] = { { NULL, "554 5.7.1 go away\r\n", ACT_REPLY }, END };
    struct harness *h = h_mx("refuse.test");
    mx_server(h, 2, refuse);
    mx_server(h, 1, mx_one);
    h->cfg.delivery_max_msgs_per_conn = 1;
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 2);
    for (size_t j = 0; j < 2; j++) {
        check_rcpt(&h->res[j], 0, DELIV_OK, 250, "2.0.0", true);
        check_relay(&h->res[j], "mx2.a.test", "127.0.0.4");
    }
    assert_int_equal(h->mx[2].n_conns, 1);
    assert_int_equal(h->mx[1].n_conns, 2);
    run_until(h, all_closed);
    h_free(h);
}

static void
test_mx_failover_hops(void **state)
{
    /* Hop 1 is a dead literal, hop 2 is a.test whose preferred MX is down:
     * the message reaches a.test's second MX. */
    struct harness *h = h_mx("a.test");
    mx_server(h, 1, mx_one);
    snprintf(h->dest->key, sizeof(h->dest->key), "route:failover");
    h->dest->hops[1] = h->dest->hops[0];
    snprintf(h->dest->hops[0].host, sizeof(h->dest->hops[0].host), "127.0.0.6");
    h->dest->hops[0].mx = false;
    h->dest->n_hops = 2;
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "2.0.0", true);
    check_relay(&h->res[0], "mx2.a.test", "127.0.0.4");
    run_until(h, all_closed);
    h_free(h);
}

static void
test_mx_implicit(void **state)
{
    /* implicit.test has an A record (127.0.0.3) and no MX (RFC 5321 §5.1). */
    struct harness *h = h_mx("implicit.test");
    mx_server(h, 0, mx_one);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_OK, 250, "2.0.0", true);
    check_relay(&h->res[0], "implicit.test", "127.0.0.3");
    run_until(h, all_closed);
    h_free(h);
}

struct perm_case {
    const char *name, *domain;
    enum deliv_class cls;
    int code;
    const char *esc, *text;
};

static const struct perm_case perm_cases[] = {
    { "null MX", "nullmx.test", DELIV_PERM, 556, "5.1.10", "null MX" },
    { "nxdomain", "nx.test", DELIV_PERM, 550, "5.1.2", "not found" },
    { "implicit MX without address", "noaddr.test", DELIV_PERM, 550, "5.1.2",
        "no MX and no address" },
    { "every MX host down", "down.test", DELIV_TEMP, 421, "4.4.1", "connect to 127.0.0.6" },
};

static void
test_mx_failures(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(perm_cases); i++) {
        const struct perm_case *tc = &perm_cases[i];
        struct harness *h = h_mx(tc->domain);
        add_job(h, "s@y.test", two_rcpts, 2, body1, false);
        add_job(h, "s@y.test", one_rcpt, 1, body1, false);
        h_go(h, 2);
        for (size_t j = 0; j < 2; j++) {
            if (h->res[j].has_relay || strstr(h->res[j].res[0].st.text, tc->text) == NULL)
                fail_msg("%s: relay %d reason '%s'", tc->name, h->res[j].has_relay,
                    h->res[j].res[0].st.text);
            check_rcpt(&h->res[j], 0, tc->cls, tc->code, tc->esc, false);
        }
        check_rcpt(&h->res[0], 1, tc->cls, tc->code, tc->esc, false);
        run_until(h, all_closed);
        /* No connection at all unless there was an address to try. */
        if (tc->cls == DELIV_PERM)
            assert_int_equal(h->max_active, 0);
        h_free(h);
    }
}

static void
test_mx_dns_down(void **state)
{
    struct harness *h = h_mx("a.test");
    struct hostport hp;
    struct buf err = BUF_INIT;
    memset(&hp, 0, sizeof(hp));
    snprintf(hp.host, sizeof(hp.host), "127.0.0.1");
    hp.port = must_free_port(); /* nothing answers there */
    assert_int_equal(dns_set_servers(h->dns, &hp, 1, &err), 0);
    buf_fini(&err);
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    check_rcpt(&h->res[0], 0, DELIV_TEMP, 451, "4.4.3", false);
    assert_false(h->res[0].has_relay);
    if (strstr(h->res[0].res[0].st.text, "MX lookup of a.test failed") == NULL)
        fail_msg("reason: %s", h->res[0].res[0].st.text);
    assert_int_equal(h->max_active, 0);
    h_free(h);
}

static bool
one_idle(struct harness *h)
{
    return !TAILQ_EMPTY(&h->d->idle);
}

static void
test_mx_connection_shared(void **state)
{
    /* d1.test and d2.test share mx1.a.test: d2's message goes over the idle
     * connection d1 opened. */
    struct harness *h = h_mx("d1.test");
    mx_server(h, 0, mx_two);
    h->cfg.idle_conn_timeout_ms = 5000;
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h_go(h, 1);
    run_until(h, one_idle);
    h->dest = &h->dests[1];
    mx_dest(h->dest, "d2.test");
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    want_res = 2;
    delivery_kick(h->d, h->dest);
    run_until(h, have_results);
    check_rcpt(&h->res[1], 0, DELIV_OK, 250, "2.0.0", true);
    check_relay(&h->res[1], "mx1.a.test", "127.0.0.3");
    assert_int_equal(h->mx[0].n_conns, 1);
    assert_int_equal(h->max_active, 1);
    assert_int_equal(h->mx[0].errors, 0);
    h_free(h);
}

static void
test_mx_max_connections(void **state)
{
    /* One connection in total: c.test waits until a.test's idle connection
     * is asked to QUIT, long before its idle timeout. */
    struct harness *h = h_mx("a.test");
    struct delivery_dest *a = h->dest, *c = &h->dests[1];
    int64_t t0;
    mx_server(h, 0, mx_one);
    mx_server(h, 1, mx_one);
    h->cfg.idle_conn_timeout_ms = 8000;
    h->cfg.max_connections = 1;
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    mx_dest(c, "c.test");
    h->dest = c;
    add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    h->dest = a;
    delivery_set_config(h->d, &h->cfg);
    want_res = 2;
    t0 = tern_mono_ms();
    delivery_kick(h->d, a);
    delivery_kick(h->d, c);
    run_until(h, have_results);
    assert_true(tern_mono_ms() - t0 < 4000);
    for (size_t j = 0; j < 2; j++)
        check_rcpt(&h->res[j], 0, DELIV_OK, 250, "2.0.0", true);
    check_relay(&h->res[0], "mx1.a.test", "127.0.0.3");
    check_relay(&h->res[1], "mx2.a.test", "127.0.0.4");
    assert_int_equal(h->max_active, 1);
    assert_int_equal(h->mx[0].errors + h->mx[1].errors, 0);
    h_free(h);
}

static void
test_mx_delivery_rate(void **state)
{
    /* 120 a minute: two at once (one second's burst), then one per 500 ms,
     * over the one connection that waits for its budget. */
    struct harness *h = h_mx("a.test");
    int64_t t0;
    mx_server(h, 0, mx_four);
    h->cfg.idle_conn_timeout_ms = 5000;
    h->cfg.delivery_rate = 120;
    for (int i = 0; i < 4; i++)
        add_job(h, "s@y.test", one_rcpt, 1, body1, false);
    t0 = tern_mono_ms();
    h_go(h, 4);
    assert_true(tern_mono_ms() - t0 >= 900);
    assert_true(tern_mono_ms() - t0 < 5000);
    for (size_t j = 0; j < 4; j++)
        check_rcpt(&h->res[j], 0, DELIV_OK, 250, "", true);
    assert_int_equal(h->mx[0].n_conns, 1);
    assert_int_equal(h->mx[0].errors, 0);
    h_free(h);
}

/* The log's delays= and dsn= fields. */
static void
test_log_fields(void **state)
{
    static const struct {
        int64_t total, setup, tls, xfer;
        const char *want;
    } dl[] = {
        { 0, 0, 0, 0, "0.00/0.00/0.00/0.00" },
        { 1234, 100, 50, 4, "1.08/0.10/0.05/0.00" },
        { 61005, 0, 0, 1005, "60.00/0.00/0.00/1.01" }, /* rounded to hundredths */
        { 100, 80, 30, 20, "0.00/0.08/0.03/0.02" },    /* the wait never goes below 0 */
        { 86400000 * 5LL, 0, 0, 0, "432000.00/0.00/0.00/0.00" },
    };
    static const struct {
        int code;
        const char *esc, *want;
    } ds[] = {
        { 250, "2.0.0", "2.0.0" }, { 550, "5.1.1", "5.1.1" }, { 250, "", "2.0.0" },
        { 451, "", "4.0.0" }, { 554, "", "5.0.0" },
        { 0, "", "4.0.0" }, /* no reply at all (connection failed) */
    };
    char out[128];
    for (size_t i = 0; i < TERN_ARRAY_LEN(dl); i++) {
        struct delivery_rcpt_result r;
        memset(&r, 0, sizeof(r));
        r.setup_ms = dl[i].setup;
        r.tls_ms = dl[i].tls;
        r.xfer_ms = dl[i].xfer;
        delivery_format_delays(dl[i].total, &r, out, sizeof(out));
        assert_string_equal(out, dl[i].want);
    }
    for (size_t i = 0; i < TERN_ARRAY_LEN(ds); i++) {
        struct tern_status st;
        memset(&st, 0, sizeof(st));
        st.code = ds[i].code;
        snprintf(st.esc, sizeof(st.esc), "%s", ds[i].esc);
        delivery_format_dsn(&st, out, sizeof(out));
        assert_string_equal(out, ds[i].want);
    }
}

/* ---- the archive copy's envelope fields ---- */

static void
test_archive_head(void **state)
{
    static const struct {
        const char *sender;
        const char *rcpts[6];
        unsigned archive_at; /* index of the archive recipient + 1; 0: none */
        const char *want;
    } cases[] = {
        { "s@x", { "a@y", "arch@v", NULL }, 2,
            "X-Tern-Envelope-From: <s@x>\r\nX-Tern-Envelope-To: a@y\r\n" },
        { "", { "arch@v", "a@y", "b@y", NULL }, 1,
            "X-Tern-Envelope-From: <>\r\nX-Tern-Envelope-To: a@y, b@y\r\n" },
        /* 19 + 1 + 30 + 2 + 30 = 82 > 78: the second address goes on a
         * continuation line. */
        { "s@x",
            { "aaaaaaaaaaaaaaaaaaaaaaa@y.test", "bbbbbbbbbbbbbbbbbbbbbbb@y.test", "c@y", NULL }, 0,
            "X-Tern-Envelope-From: <s@x>\r\n"
            "X-Tern-Envelope-To: aaaaaaaaaaaaaaaaaaaaaaa@y.test,\r\n"
            " bbbbbbbbbbbbbbbbbbbbbbb@y.test, c@y\r\n" },
        /* Exactly 78 characters stays on one line... */
        { "s@x", { "aaaaaaaaaaaaaaaaaaaaaaa@y.test", "bbbbbbbbbbbbbbbbbbb@y.test", NULL }, 0,
            "X-Tern-Envelope-From: <s@x>\r\n"
            "X-Tern-Envelope-To: aaaaaaaaaaaaaaaaaaaaaaa@y.test, bbbbbbbbbbbbbbbbbbb@y.test\r\n" },
        /* ... but not with the comma a next address needs. */
        { "s@x", { "aaaaaaaaaaaaaaaaaaaaaaa@y.test", "bbbbbbbbbbbbbbbbbbb@y.test", "c@y", NULL }, 0,
            "X-Tern-Envelope-From: <s@x>\r\n"
            "X-Tern-Envelope-To: aaaaaaaaaaaaaaaaaaaaaaa@y.test,\r\n"
            " bbbbbbbbbbbbbbbbbbb@y.test, c@y\r\n" },
        /* An address longer than a line stands alone. */
        { "s@x",
            { "a@y",
                "lllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll"
                "lllll@y",
                "b@y", NULL },
            0,
            "X-Tern-Envelope-From: <s@x>\r\n"
            "X-Tern-Envelope-To: a@y,\r\n"
            " lllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll"
            "l@y,\r\n b@y\r\n" },
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct spool_env *env = xcalloc(1, sizeof(*env));
        struct buf out = BUF_INIT;
        size_t idx;
        struct delivery_job job;
        env->sender = xstrdup(cases[i].sender);
        for (size_t k = 0; cases[i].rcpts[k] != NULL; k++)
            spool_env_add_rcpt(env, cases[i].rcpts[k], NULL, 0);
        if (cases[i].archive_at > 0)
            env->rcpts[cases[i].archive_at - 1].kind = RCPT_K_ARCHIVE;
        delivery_archive_head(env, &out);
        assert_string_equal(out.data, cases[i].want);
        /* Only a job of the archive recipient alone is the archive's. */
        memset(&job, 0, sizeof(job));
        job.env = env;
        job.n_rcpts = 1;
        job.rcpt_idx = &idx;
        for (idx = 0; idx < env->n_rcpts; idx++)
            assert_int_equal(delivery_is_archive_job(&job), idx + 1 == cases[i].archive_at);
        buf_fini(&out);
        spool_env_free(env);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_parse),
        cmocka_unit_test(test_log_fields),
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
        cmocka_unit_test(test_outbound_nodelay),
        cmocka_unit_test(test_421_at_rcpt),
        cmocka_unit_test(test_size_and_smtputf8_refused_locally),
        cmocka_unit_test(test_8bit_to_7bit_next_hop),
        cmocka_unit_test(test_localhost_resolves),
        cmocka_unit_test(test_greeting_554_defers),
        cmocka_unit_test(test_concurrency_limit),
        cmocka_unit_test(test_idle_conn_takes_new_job),
        cmocka_unit_test(test_idle_timeout_quits),
        cmocka_unit_test(test_no_rcpt_accepted_rset),
        cmocka_unit_test(test_pipelined_354_without_rcpt),
        cmocka_unit_test(test_dsn_parameters),
        cmocka_unit_test(test_bad_reply_is_temp),
        cmocka_unit_test(test_plan_order),
        cmocka_unit_test(test_mx_preferred),
        cmocka_unit_test(test_mx_preferred_down),
        cmocka_unit_test(test_mx_greeting_refused_next),
        cmocka_unit_test(test_mx_failover_hops),
        cmocka_unit_test(test_mx_implicit),
        cmocka_unit_test(test_mx_failures),
        cmocka_unit_test(test_mx_dns_down),
        cmocka_unit_test(test_mx_connection_shared),
        cmocka_unit_test(test_mx_max_connections),
        cmocka_unit_test(test_mx_delivery_rate),
        cmocka_unit_test(test_archive_head),
    };
    signal(SIGPIPE, SIG_IGN); /* as ternd does: a peer closing mid-write */
    log_set_level(LOG_ERROR);
    return cmocka_run_group_tests(tests, dnsmasq_setup, dnsmasq_teardown);
}

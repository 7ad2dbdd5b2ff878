/*
 * Unit tests of DSN decisions and reports (src/delivery/dsn.c): dsn_wanted
 * tables, the DSN envelope, and the multipart/report text for failures,
 * delays, RET=HDRS, oversized originals, SMTPUTF8 and hostile input. Case (a)
 * is also compared with tests/golden/dsn/failed.eml (TERN_UPDATE_GOLDEN=1
 * rewrites it; TERN_GOLDEN_DIR names the directory when it cannot be found).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delivery/dsn.h"
#include "util/buf.h"
#include "util/util.h"

#define NOW_MS     INT64_C(1700000000000) /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define ARRIVAL_MS INT64_C(1699999000000) /* Tue, 14 Nov 2023 21:56:40 +0000 */
#define DSN_QID    "0123456789ABCDEF"
#define BOUNDARY   "=_tern.0123456789ABCDEF.1700000000000"
#define DAY_MS     INT64_C(86400000)

/* ---------- fixtures ---------- */

static struct config
make_cfg(void)
{
    struct config c;
    memset(&c, 0, sizeof(c));
    c.hostname = "relay.tern.test";
    c.retry_initial_ms = 60000;
    c.retry_max_ms = 3600000;
    c.max_queue_lifetime_ms = 5 * DAY_MS;
    return c;
}

static struct spool_env *
env_new(const char *sender, bool utf8, enum dsn_ret ret)
{
    struct spool_env *e = xcalloc(1, sizeof(*e));
    snprintf(e->qid, sizeof(e->qid), "%s", "FEDCBA9876543210");
    e->arrival_ms = ARRIVAL_MS;
    e->sender = xstrdup(sender);
    e->ret = ret;
    e->body = utf8 ? BODY_8BITMIME : BODY_7BIT;
    e->smtputf8 = utf8;
    e->helo = xstrdup("client.example.org");
    return e;
}

static void
env_rcpt(struct spool_env *e, const char *addr, const char *orcpt, unsigned notify)
{
    e->rcpts = xrealloc(e->rcpts, (e->n_rcpts + 1) * sizeof(*e->rcpts));
    struct spool_rcpt *r = &e->rcpts[e->n_rcpts++];
    memset(r, 0, sizeof(*r));
    r->addr = xstrdup(addr);
    r->orcpt = orcpt ? xstrdup(orcpt) : NULL;
    r->notify = notify;
}

/* Local deep free: this test does not link the spool module. */
static void
env_free(struct spool_env *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->n_rcpts; i++) {
        free(e->rcpts[i].addr);
        free(e->rcpts[i].orcpt);
        free(e->rcpts[i].last_error);
    }
    free(e->rcpts);
    free(e->sender);
    free(e->envid);
    free(e->helo);
    free(e->client_addr);
    free(e);
}

/* The original's content, as the scheduler hands it over: in memory. */
struct orig {
    char *p;
    size_t n;
};

static struct orig *
orig_file(struct spool_env *e, const char *msg, size_t len)
{
    struct orig *o = xcalloc(1, sizeof(*o));
    o->p = xmalloc(len ? len : 1);
    memcpy(o->p, msg, len);
    o->n = len;
    e->body_len = len;
    return o;
}

static void
orig_close(struct orig *o)
{
    if (o == NULL)
        return;
    free(o->p);
    free(o);
}

#define ORIG_P(o) ((o) ? (o)->p : NULL)
#define ORIG_N(o) ((o) ? (o)->n : 0)

struct sink {
    struct buf b;
    size_t max_write;
    int calls;
    int fail_at; /* call number that fails, 0 for never */
};

static int
sink_write(void *arg, const void *data, size_t len)
{
    struct sink *s = arg;
    s->calls++;
    if (s->fail_at != 0 && s->calls >= s->fail_at)
        return -1;
    if (len > s->max_write)
        s->max_write = len;
    buf_append(&s->b, data, len);
    return 0;
}

static const char orig_msg[] = "Received: from client.example.org ([192.0.2.1])\r\n"
                               "\tby relay.tern.test; Tue, 14 Nov 2023 21:56:40 +0000\r\n"
                               "From: Alice <alice@example.org>\r\n"
                               "To: Bob <bob@example.com>\r\n"
                               "Subject: Lunch\r\n"
                               "Date: Tue, 14 Nov 2023 21:56:39 +0000\r\n"
                               "Message-ID: <m1@example.org>\r\n"
                               "\r\n"
                               "Shall we meet at noon?\r\n"
                               "-- \r\n"
                               "Alice\r\n";

static struct dsn_rcpt_result
result(size_t idx, enum dsn_action action, int code, const char *esc, const char *text,
    const char *mta, bool remote)
{
    struct dsn_rcpt_result r;
    memset(&r, 0, sizeof(r));
    r.idx = idx;
    r.action = action;
    STATUS_SET(&r.status, code, esc, "%s", text);
    r.remote_mta = mta;
    r.from_remote = remote;
    return r;
}

/* ---------- checks on the text ---------- */

static bool
has_line(const char *out, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = strstr(out, line); p != NULL; p = strstr(p + 1, line))
        if ((p == out || p[-1] == '\n') && strncmp(p + n, "\r\n", 2) == 0)
            return true;
    return false;
}

#define assert_line(out, line)                                                                     \
    do {                                                                                           \
        if (!has_line((out), (line)))                                                              \
            fail_msg("missing line \"%s\" in:\n%s", (line), (out));                                \
    } while (0)
#define assert_no_line(out, line)                                                                  \
    do {                                                                                           \
        if (has_line((out), (line)))                                                               \
            fail_msg("unexpected line \"%s\"", (line));                                            \
    } while (0)

static size_t
count(const char *hay, const char *needle)
{
    size_t k = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        k++;
    return k;
}

/* Every line ends in CRLF, none is over 998 octets, no bare CR. With
 * ascii_upto, no 8-bit byte and no NUL before that offset. */
static void
assert_wellformed(const struct buf *b, size_t ascii_upto)
{
    size_t line = 0;
    assert_true(b->len >= 2);
    assert_memory_equal(b->data + b->len - 2, "\r\n", 2);
    for (size_t i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)b->data[i];
        if (i < ascii_upto && (c >= 0x80 || c == 0))
            fail_msg("8-bit or NUL byte at %zu", i);
        if (c == '\r') {
            if (i + 1 >= b->len || b->data[i + 1] != '\n')
                fail_msg("bare CR at %zu", i);
            continue;
        }
        if (c == '\n') {
            if (i == 0 || b->data[i - 1] != '\r')
                fail_msg("bare LF at %zu", i);
            line = 0;
            continue;
        }
        if (++line > 998)
            fail_msg("line over 998 octets at %zu", i);
    }
}

/* Offset of the third part (the original), or len when there is none. */
static size_t
part3_off(const struct buf *b, const char *boundary)
{
    char delim[128];
    snprintf(delim, sizeof(delim), "\r\n--%s\r\n", boundary);
    const char *p = b->data;
    for (int i = 0; i < 3 && p != NULL; i++)
        p = strstr(p + 1, delim);
    return p ? (size_t)(p - b->data) : b->len;
}

static void
run_dsn(const struct spool_env *e, const struct dsn_rcpt_result *res, size_t n, struct orig *fd,
    struct sink *s)
{
    struct config cfg = make_cfg();
    memset(s, 0, sizeof(*s));
    buf_init(&s->b);
    assert_int_equal(
        dsn_write_message(&cfg, e, res, n, ORIG_P(fd), ORIG_N(fd), DSN_QID, NOW_MS, sink_write, s),
        0);
    assert_non_null(s->b.data);
    /* TERN_DSN_DUMP_DIR=dir keeps every report as dir/dump-N.eml, to be
     * checked with tests/golden/dsn/check_dsn.py dir. */
    const char *dump = getenv("TERN_DSN_DUMP_DIR");
    if (dump != NULL) {
        static int seq;
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/dump-%02d.eml", dump, ++seq);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(s->b.data, 1, s->b.len, f), s->b.len);
        assert_int_equal(fclose(f), 0);
    }
}

/* ---------- golden file ---------- */

static bool
is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* TERN_GOLDEN_DIR, else tests/golden/dsn next to this source file, whose
 * path (__FILE__) may be relative to the working directory or to an
 * ancestor of it (meson compiles from the build root and runs tests in
 * build/tests/unit), else below an ancestor of the working directory. */
static void
golden_dir(char *dst, size_t cap)
{
    static const char *const ups[] = { ".", "..", "../..", "../../..", "../../../.." };
    const char *env = getenv("TERN_GOLDEN_DIR");
    if (env != NULL && env[0] != '\0') {
        snprintf(dst, cap, "%s", env);
        return;
    }
    const char *file = __FILE__;
    const char *slash = strrchr(file, '/');
    int dlen = slash ? (int)(slash - file) : 1;
    const char *dir = slash ? file : ".";
    for (size_t i = 0; i < TERN_ARRAY_LEN(ups); i++) {
        if (file[0] == '/')
            snprintf(dst, cap, "%.*s/../golden/dsn", dlen, dir);
        else
            snprintf(dst, cap, "%s/%.*s/../golden/dsn", ups[i], dlen, dir);
        if (is_dir(dst))
            return;
        snprintf(dst, cap, "%s/tests/golden/dsn", ups[i]);
        if (is_dir(dst))
            return;
    }
    fail_msg("tests/golden/dsn not found; set TERN_GOLDEN_DIR");
}

static void
golden_check(const char *name, const struct buf *got)
{
    char dir[PATH_MAX - 64], path[PATH_MAX], tmp[PATH_MAX + 8];
    golden_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    const char *upd = getenv("TERN_UPDATE_GOLDEN");
    if (upd != NULL && strcmp(upd, "1") == 0) {
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        FILE *f = fopen(tmp, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(got->data, 1, got->len, f), got->len);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(rename(tmp, path), 0);
        return;
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("%s: %s (run with TERN_UPDATE_GOLDEN=1 to create it)", path, strerror(errno));
    struct buf want = BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(&want, chunk, n);
    fclose(f);
    size_t i = 0;
    while (i < want.len && i < got->len && want.data[i] == got->data[i])
        i++;
    if (i != want.len || i != got->len)
        fail_msg(
            "%s differs from the output at byte %zu (TERN_UPDATE_GOLDEN=1 regenerates)", path, i);
    buf_fini(&want);
}

/* ---------- dsn_wanted and dsn_envelope ---------- */

struct wanted_case {
    const char *name;
    const char *sender;
    bool is_bounce;
    unsigned notify;
    enum dsn_action action;
    bool want;
};

#define N_S DSN_NOTIFY_SUCCESS
#define N_F DSN_NOTIFY_FAILURE
#define N_D DSN_NOTIFY_DELAY

static const struct wanted_case wanted_cases[] = {
    { "default failed", "a@x", false, 0, DSN_ACTION_FAILED, true },
    { "default delayed", "a@x", false, 0, DSN_ACTION_DELAYED, true },
    { "default delivered", "a@x", false, 0, DSN_ACTION_DELIVERED, false },
    { "default relayed", "a@x", false, 0, DSN_ACTION_RELAYED, false },
    { "never failed", "a@x", false, DSN_NOTIFY_NEVER, DSN_ACTION_FAILED, false },
    { "never delayed", "a@x", false, DSN_NOTIFY_NEVER, DSN_ACTION_DELAYED, false },
    { "never success", "a@x", false, DSN_NOTIFY_NEVER, DSN_ACTION_DELIVERED, false },
    { "success only: failed", "a@x", false, N_S, DSN_ACTION_FAILED, false },
    { "success only: delivered", "a@x", false, N_S, DSN_ACTION_DELIVERED, true },
    { "success only: relayed", "a@x", false, N_S, DSN_ACTION_RELAYED, true },
    { "failure: failed", "a@x", false, N_F, DSN_ACTION_FAILED, true },
    { "failure: delayed", "a@x", false, N_F, DSN_ACTION_DELAYED, false },
    { "failure: delivered", "a@x", false, N_F, DSN_ACTION_DELIVERED, false },
    { "delay only: delayed", "a@x", false, N_D, DSN_ACTION_DELAYED, true },
    { "delay only: failed", "a@x", false, N_D, DSN_ACTION_FAILED, false },
    { "failure,delay: delayed", "a@x", false, N_F | N_D, DSN_ACTION_DELAYED, true },
    { "failure,delay: failed", "a@x", false, N_F | N_D, DSN_ACTION_FAILED, true },
    { "all: delivered", "a@x", false, N_S | N_F | N_D, DSN_ACTION_DELIVERED, true },
    { "all: delayed", "a@x", false, N_S | N_F | N_D, DSN_ACTION_DELAYED, true },
    { "all: failed", "a@x", false, N_S | N_F | N_D, DSN_ACTION_FAILED, true },
    { "bounce: failed", "a@x", true, 0, DSN_ACTION_FAILED, false },
    { "bounce: all", "a@x", true, N_S | N_F | N_D, DSN_ACTION_DELAYED, false },
    { "null sender: failed", "", false, 0, DSN_ACTION_FAILED, false },
    { "null sender: success", "", false, N_S, DSN_ACTION_DELIVERED, false },
    { "null sender: delayed", "", false, 0, DSN_ACTION_DELAYED, false },
    { "bounce: delayed by default", "a@x", true, 0, DSN_ACTION_DELAYED, false },
    { "failure,success: delayed", "a@x", false, N_F | N_S, DSN_ACTION_DELAYED, false },
};

static void
test_wanted_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(wanted_cases); i++) {
        const struct wanted_case *c = &wanted_cases[i];
        struct spool_env *e = env_new(c->sender, false, DSN_RET_UNSET);
        e->is_bounce = c->is_bounce;
        env_rcpt(e, "other@x", NULL, 0);
        env_rcpt(e, "b@y", NULL, c->notify);
        bool got = dsn_wanted(e, 1, c->action);
        if (got != c->want)
            fail_msg("%s: got %d want %d", c->name, got, c->want);
        assert_false(dsn_wanted(e, 2, c->action)); /* out of range */
        env_free(e);
    }
    assert_false(dsn_wanted(NULL, 0, DSN_ACTION_FAILED));
}

static void
test_envelope(void **state)
{
    (void)state;
    struct spool_env *o = env_new("alice@example.org", true, DSN_RET_FULL);
    env_rcpt(o, "bob@example.com", "rfc822;bob@example.com", N_F | N_D);
    o->envid = xstrdup("ENV1");
    struct spool_env *d = dsn_envelope(o);
    assert_non_null(d);
    assert_string_equal(d->sender, "");
    assert_int_equal(d->n_rcpts, 1);
    assert_string_equal(d->rcpts[0].addr, "alice@example.org");
    assert_null(d->rcpts[0].orcpt);
    assert_int_equal(d->rcpts[0].notify, 0);
    assert_int_equal(d->rcpts[0].state, RCPT_QUEUED);
    assert_true(d->is_bounce);
    assert_true(d->smtputf8);
    assert_int_equal(d->body, BODY_8BITMIME);
    assert_null(d->envid);
    assert_int_equal(d->ret, DSN_RET_UNSET);
    /* A DSN is itself never reported on. */
    assert_false(dsn_wanted(d, 0, DSN_ACTION_FAILED));
    env_free(d);
    env_free(o);

    o = env_new("alice@example.org", false, DSN_RET_UNSET);
    d = dsn_envelope(o);
    assert_false(d->smtputf8);
    assert_int_equal(d->body, BODY_7BIT);
    env_free(d);
    free(o->sender);
    o->sender = xstrdup("");
    assert_null(dsn_envelope(o)); /* never a DSN to <> */
    env_free(o);
}

/* ---------- reports ---------- */

/* (a) one failed recipient, remote reply, RET=FULL, ENVID and ORCPT. */
static void
test_failed_full(void **state)
{
    (void)state;
    struct spool_env *e = env_new("alice@example.org", false, DSN_RET_FULL);
    e->envid = xstrdup("QQ+2B314");
    env_rcpt(e, "bob@example.com", "rfc822;bob+2Bx@example.com", N_F);
    struct orig *fd = orig_file(e, orig_msg, sizeof(orig_msg) - 1);
    struct dsn_rcpt_result r = result(0, DSN_ACTION_FAILED, 550, "5.1.1",
        "<bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
        "mx.example.com", true);
    struct sink s;
    run_dsn(e, &r, 1, fd, &s);
    const char *out = s.b.data;

    static const char from[] = "From: Mail Delivery System <MAILER-DAEMON@relay.tern.test>\r\n";
    assert_memory_equal(out, from, sizeof(from) - 1);
    assert_line(out, "To: <alice@example.org>");
    assert_line(out, "Subject: Undelivered Mail Returned to Sender");
    assert_line(out, "Date: Tue, 14 Nov 2023 22:13:20 +0000");
    assert_line(out, "Message-ID: <" DSN_QID ".1700000000@relay.tern.test>");
    assert_line(out, "Auto-Submitted: auto-replied");
    assert_line(out, "MIME-Version: 1.0");
    assert_line(out, "Content-Type: multipart/report; report-type=delivery-status;");
    assert_line(out, "\tboundary=\"" BOUNDARY "\"");
    assert_no_line(out, "Content-Transfer-Encoding: 8bit");
    /* three parts, one close */
    assert_int_equal(count(out, "\r\n--" BOUNDARY "\r\n"), 3);
    assert_int_equal(count(out, "\r\n--" BOUNDARY "--\r\n"), 1);
    assert_line(out, "Content-Type: text/plain; charset=us-ascii");
    assert_line(out, "<bob@example.com>: failed");
    assert_line(
        out, "    host mx.example.com said: 550 5.1.1 <bob@example.com>: Recipient address");
    assert_line(out, "Content-Type: message/delivery-status");
    assert_line(out, "Original-Envelope-Id: QQ+2B314");
    assert_line(out, "Reporting-MTA: dns; relay.tern.test");
    assert_line(out, "Received-From-MTA: dns; client.example.org");
    assert_line(out, "Arrival-Date: Tue, 14 Nov 2023 21:56:40 +0000");
    assert_line(out, "Original-Recipient: rfc822;bob+2Bx@example.com");
    assert_line(out, "Final-Recipient: rfc822; bob@example.com");
    assert_line(out, "Action: failed");
    assert_line(out, "Status: 5.1.1");
    assert_line(out, "Remote-MTA: dns; mx.example.com");
    assert_line(out, "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.com>: Recipient address");
    assert_line(out, " rejected: User unknown in virtual mailbox table");
    assert_line(out, "Last-Attempt-Date: Tue, 14 Nov 2023 22:13:20 +0000");
    assert_no_line(out, "Will-Retry-Until: Sun, 19 Nov 2023 21:56:40 +0000");
    assert_line(out, "Content-Type: message/rfc822");
    assert_line(out, "Content-Description: Undelivered Message");
    /* the whole original, byte for byte, then the closing delimiter */
    char want[sizeof(orig_msg) + 128];
    snprintf(want, sizeof(want), "\r\n\r\n%s\r\n--%s--\r\n", orig_msg, BOUNDARY);
    assert_non_null(strstr(out, want));
    assert_null(strstr(out, "TERN1 envelope")); /* nothing before body_off */
    assert_wellformed(&s.b, s.b.len);
    golden_check("failed.eml", &s.b);
    orig_close(fd);
    buf_fini(&s.b);
    env_free(e);
}

/* (b) two failed and one delayed recipient; RET unset (full). */
static void
test_two_failed_one_delayed(void **state)
{
    (void)state;
    struct spool_env *e = env_new("alice@example.org", false, DSN_RET_UNSET);
    env_rcpt(e, "bob@example.com", NULL, 0);
    env_rcpt(e, "carol@example.net", NULL, N_F | N_D);
    env_rcpt(e, "dave@example.net", NULL, N_F | N_D);
    struct orig *fd = orig_file(e, orig_msg, sizeof(orig_msg) - 1);
    struct dsn_rcpt_result r[3];
    r[0] = result(0, DSN_ACTION_FAILED, 550, "", "no such user", "mx.example.com", true);
    r[1] = result(
        1, DSN_ACTION_FAILED, 0, "5.4.4", "Host not found: example.net has a null MX", NULL, false);
    r[2] = result(
        2, DSN_ACTION_DELAYED, 451, "4.4.1", "connection timed out", "mx2.example.net", false);
    struct sink s;
    run_dsn(e, r, 3, fd, &s);
    const char *out = s.b.data;
    assert_line(out, "Subject: Undelivered Mail Returned to Sender");
    assert_int_equal(count(out, "\r\nFinal-Recipient: "), 3);
    assert_line(out, "<bob@example.com>: failed");
    assert_line(out, "    host mx.example.com said: 550 no such user");
    assert_line(out, "<carol@example.net>: failed");
    assert_line(out, "    5.4.4 Host not found: example.net has a null MX");
    assert_line(out, "<dave@example.net>: delayed");
    assert_line(out, "    451 4.4.1 connection timed out");
    /* per-recipient blocks, each after a blank line */
    assert_non_null(strstr(out, "\r\n\r\nFinal-Recipient: rfc822; bob@example.com\r\n"
                                "Action: failed\r\nStatus: 5.0.0\r\n"
                                "Remote-MTA: dns; mx.example.com\r\n"
                                "Diagnostic-Code: smtp; 550 no such user\r\n"));
    assert_non_null(strstr(out, "\r\n\r\nFinal-Recipient: rfc822; carol@example.net\r\n"
                                "Action: failed\r\nStatus: 5.4.4\r\n"
                                "Diagnostic-Code: X-Tern; Host not found: example.net has a "
                                "null MX\r\n"));
    assert_non_null(strstr(out, "\r\n\r\nFinal-Recipient: rfc822; dave@example.net\r\n"
                                "Action: delayed\r\nStatus: 4.4.1\r\n"
                                "Remote-MTA: dns; mx2.example.net\r\n"
                                "Diagnostic-Code: X-Tern; connection timed out\r\n"
                                "Last-Attempt-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
                                "Will-Retry-Until: Sun, 19 Nov 2023 21:56:40 +0000\r\n"));
    assert_int_equal(count(out, "Will-Retry-Until:"), 1);
    assert_null(strstr(out, "Original-Recipient:"));
    assert_null(strstr(out, "Original-Envelope-Id:"));
    assert_line(out, "Content-Type: message/rfc822");
    assert_wellformed(&s.b, s.b.len);
    orig_close(fd);
    buf_fini(&s.b);
    env_free(e);
}

/* Only delayed, delivered or relayed: the other subjects, no original. */
static void
test_other_actions(void **state)
{
    (void)state;
    struct dsn_rcpt_result r[1];
    struct sink s;
    const char *out;
    struct spool_env *e = env_new("alice@example.org", false, DSN_RET_UNSET);
    env_rcpt(e, "dave@example.net", NULL, N_D);
    r[0] = result(0, DSN_ACTION_DELAYED, 421, "", "try later", "mx2.example.net", true);
    run_dsn(e, r, 1, NULL, &s);
    out = s.b.data;
    assert_line(out, "Subject: Delayed Mail (still being retried)");
    assert_line(out, "Status: 4.0.0");
    assert_int_equal(count(out, "\r\n--" BOUNDARY "\r\n"), 2); /* no original: fd < 0 */
    assert_null(strstr(out, "permanent error"));
    buf_fini(&s.b);

    r[0] =
        result(0, DSN_ACTION_DELIVERED, 250, "2.0.0", "ok queued as 42", "mx2.example.net", true);
    run_dsn(e, r, 1, NULL, &s);
    assert_line(s.b.data, "Subject: Successful Mail Delivery Report");
    assert_line(s.b.data, "Action: delivered");
    assert_line(s.b.data, "Diagnostic-Code: smtp; 250 2.0.0 ok queued as 42");
    buf_fini(&s.b);
    r[0] = result(0, DSN_ACTION_RELAYED, 0, "", "", NULL, false);
    run_dsn(e, r, 1, NULL, &s);
    assert_line(s.b.data, "Subject: Successful Mail Delivery Report");
    assert_line(s.b.data, "Action: relayed");
    assert_line(s.b.data, "Status: 2.0.0");
    assert_null(strstr(s.b.data, "Diagnostic-Code"));
    buf_fini(&s.b);
    env_free(e);
}

/* (c) RET=HDRS: only the header section, as text/rfc822-headers. */
static void
test_ret_hdrs(void **state)
{
    (void)state;
    struct spool_env *e = env_new("alice@example.org", false, DSN_RET_HDRS);
    env_rcpt(e, "bob@example.com", NULL, 0);
    struct orig *fd = orig_file(e, orig_msg, sizeof(orig_msg) - 1);
    struct dsn_rcpt_result r =
        result(0, DSN_ACTION_FAILED, 550, "5.1.1", "unknown", "mx.example.com", true);
    struct sink s;
    run_dsn(e, &r, 1, fd, &s);
    const char *out = s.b.data;
    assert_line(out, "Content-Type: text/rfc822-headers");
    assert_line(out, "Content-Description: Undelivered Message Headers");
    assert_null(strstr(out, "message/rfc822"));
    assert_null(strstr(out, "Shall we meet"));
    assert_line(out, "Message-ID: <m1@example.org>");
    /* the header section ends right before the closing delimiter */
    assert_non_null(strstr(out, "Message-ID: <m1@example.org>\r\n\r\n--" BOUNDARY "--\r\n"));
    assert_line(out, "Only the header section of the original message is attached, as the sender");
    assert_wellformed(&s.b, s.b.len);
    orig_close(fd);
    buf_fini(&s.b);

    /* LF-only header section and a message with no body at all. */
    static const char lf_msg[] = "Subject: lf\nX-A: 1\n\nbody\n";
    fd = orig_file(e, lf_msg, sizeof(lf_msg) - 1);
    run_dsn(e, &r, 1, fd, &s);
    assert_non_null(strstr(s.b.data, "\r\n\r\nSubject: lf\r\nX-A: 1\r\n\r\n--" BOUNDARY "--"));
    assert_wellformed(&s.b, s.b.len);
    orig_close(fd);
    buf_fini(&s.b);
    static const char nobody[] = "Subject: only\r\nX-B: 2";
    fd = orig_file(e, nobody, sizeof(nobody) - 1);
    run_dsn(e, &r, 1, fd, &s);
    assert_non_null(strstr(s.b.data, "\r\n\r\nSubject: only\r\nX-B: 2\r\n\r\n--" BOUNDARY "--"));
    orig_close(fd);
    buf_fini(&s.b);
    env_free(e);
}

/* (d) an original above DSN_MAX_RETURN: headers only, read in chunks; one
 * just at the limit is returned whole, still in chunks. */
static void
test_too_big(void **state)
{
    (void)state;
    size_t hlen = sizeof(orig_msg) - 1;
    size_t len = DSN_MAX_RETURN + 1;
    char *big = xmalloc(len);
    memcpy(big, orig_msg, hlen);
    for (size_t i = hlen; i < len; i++)
        big[i] = (i - hlen) % 78 == 76 ? '\r' : (i - hlen) % 78 == 77 ? '\n' : 'x';
    struct spool_env *e = env_new("alice@example.org", false, DSN_RET_FULL);
    env_rcpt(e, "bob@example.com", NULL, 0);
    struct orig *fd = orig_file(e, big, len);
    struct dsn_rcpt_result r = result(0, DSN_ACTION_FAILED, 552, "5.3.4", "too big", "mx", true);
    struct sink s;
    run_dsn(e, &r, 1, fd, &s);
    assert_line(s.b.data, "Content-Type: text/rfc822-headers");
    assert_non_null(strstr(s.b.data, "too large to return"));
    assert_null(strstr(s.b.data, "xxxxxxxx"));
    assert_true(s.b.len < 16 * 1024);
    assert_wellformed(&s.b, s.b.len);
    orig_close(fd);
    buf_fini(&s.b);

    /* exactly DSN_MAX_RETURN: returned whole, no single write holds it */
    fd = orig_file(e, big, len - 1);
    run_dsn(e, &r, 1, fd, &s);
    assert_line(s.b.data, "Content-Type: message/rfc822");
    assert_true(s.b.len > DSN_MAX_RETURN);
    assert_true(s.max_write <= 256 * 1024);
    assert_true(s.calls > 4);
    size_t p3 = part3_off(&s.b, BOUNDARY);
    assert_true(p3 < s.b.len);
    assert_non_null(memmem(s.b.data + p3, s.b.len - p3, big + hlen, 4096));
    assert_wellformed(&s.b, s.b.len);
    orig_close(fd);
    buf_fini(&s.b);
    free(big);
    env_free(e);
}

/* (e) SMTPUTF8: RFC 6533 types, UTF-8 addresses. And a non-ASCII address in
 * a non-SMTPUTF8 report: xtext, no 8-bit byte anywhere. */
static void
test_smtputf8(void **state)
{
    (void)state;
    static const char umsg[] = "From: J\xc3\xb6rg <j\xc3\xb6rg@b\xc3\xbc"
                               "cher.example>\r\nSubject: Gr\xc3\xbc\xc3\x9f"
                               "e\r\n\r\nHall\xc3\xb6\r\n";
    struct spool_env *e = env_new("j\xc3\xb6rg@b\xc3\xbc"
                                  "cher.example",
        true, DSN_RET_UNSET);
    env_rcpt(e, "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.example", NULL, 0);
    struct orig *fd = orig_file(e, umsg, sizeof(umsg) - 1);
    struct dsn_rcpt_result r = result(0, DSN_ACTION_FAILED, 550, "5.1.1",
        "unknown \xe7\x94\xa8\xe6\x88\xb7 \xff\xfe\xc2\x9f", "mx.example", true);
    struct sink s;
    run_dsn(e, &r, 1, fd, &s);
    const char *out = s.b.data;
    assert_line(out, "To: <j\xc3\xb6rg@b\xc3\xbc"
                     "cher.example>");
    assert_line(out, "Content-Transfer-Encoding: 8bit");
    assert_line(out, "Content-Type: text/plain; charset=utf-8");
    assert_line(out, "Content-Type: message/global-delivery-status");
    assert_line(out, "Content-Type: message/global");
    assert_line(out, "Final-Recipient: utf-8; \xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90"
                     ".example");
    /* valid UTF-8 kept, invalid bytes and C1 controls replaced */
    assert_line(out, "Diagnostic-Code: smtp; 550 5.1.1 unknown \xe7\x94\xa8\xe6\x88\xb7 ???");
    assert_non_null(strstr(out, umsg));
    assert_wellformed(&s.b, 0);
    orig_close(fd);
    buf_fini(&s.b);
    env_free(e);

    e = env_new("alice@example.org", false, DSN_RET_UNSET);
    env_rcpt(e, "j\xc3\xb6rg+x=y@example.org", "rfc822;j+C3+B6rg@example.org", 0);
    static const char eight[] = "Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n";
    fd = orig_file(e, eight, sizeof(eight) - 1);
    r = result(0, DSN_ACTION_FAILED, 550, "5.1.1", "bad \xc3\xa9 user\xc2\x85", "mx.example", true);
    run_dsn(e, &r, 1, fd, &s);
    out = s.b.data;
    assert_line(out, "Final-Recipient: rfc822; j+C3+B6rg+2Bx+3Dy@example.org");
    assert_line(out, "<j+C3+B6rg+2Bx+3Dy@example.org>: failed");
    assert_line(out, "Original-Recipient: rfc822;j+C3+B6rg@example.org");
    assert_line(out, "Diagnostic-Code: smtp; 550 5.1.1 bad ? user?");
    assert_line(out, "Content-Type: message/rfc822");
    assert_null(strstr(out, "Content-Transfer-Encoding"));
    assert_non_null(strstr(out, "Subject: caf??\r\n\r\nna??ve\r\n")); /* 7-bit body stays 7-bit */
    assert_wellformed(&s.b, s.b.len);
    orig_close(fd);
    buf_fini(&s.b);

    /* 8BITMIME original: returned as is, labelled 8bit; parts 1-2 stay ASCII. */
    e->body = BODY_8BITMIME;
    fd = orig_file(e, eight, sizeof(eight) - 1);
    run_dsn(e, &r, 1, fd, &s);
    assert_line(s.b.data, "Content-Transfer-Encoding: 8bit");
    assert_non_null(strstr(s.b.data, eight));
    assert_wellformed(&s.b, part3_off(&s.b, BOUNDARY));
    orig_close(fd);
    buf_fini(&s.b);
    env_free(e);
}

/* (f) hostile remote text, MTA name, HELO, ENVID, ORCPT and original. */
static void
test_hostile(void **state)
{
    (void)state;
    static const char evil_msg[] = "Subject: x\r\n\r\nhello\r\n--" BOUNDARY "\r\n"
                                   "Content-Type: text/html\r\n\r\n<b>fake</b>\r\n";
    struct spool_env *e =
        env_new("alice@example.org\r\nBcc: victim@example.org", false, DSN_RET_UNSET);
    free(e->helo);
    e->helo = xstrdup("evil\r\nX-Injected: 1");
    e->envid = xstrdup("id\r\n\r\n--" BOUNDARY "--");
    env_rcpt(e, "bob@example.com\r\n\r\n--" BOUNDARY, "rfc822;b\r\nX-Evil: 1", 0);
    struct orig *fd = orig_file(e, evil_msg, sizeof(evil_msg) - 1);
    char text[STATUS_TEXT_MAX];
    snprintf(text, sizeof(text), "%s",
        "user unknown\r\n\r\n--" BOUNDARY "\r\nContent-Type: text/html\r\n\r\n<p>click</p>"
        "\x01\x1b[31m\x7f\r\nSubject: owned");
    struct dsn_rcpt_result r =
        result(0, DSN_ACTION_FAILED, 550, "5.1.1", text, "mx.example.com\r\nX-Evil: 2", true);
    struct sink s;
    run_dsn(e, &r, 1, fd, &s);
    const char *out = s.b.data;
    /* the original mimics the first boundary: the next one is chosen */
    const char *b2 = BOUNDARY ".1";
    char line[160];
    snprintf(line, sizeof(line), "\tboundary=\"%s\"", b2);
    assert_line(out, line);
    snprintf(line, sizeof(line), "\r\n--%s\r\n", b2);
    assert_int_equal(count(out, line), 3);
    snprintf(line, sizeof(line), "\r\n--%s--\r\n", b2);
    assert_int_equal(count(out, line), 1);
    assert_int_equal(count(out, "\r\nContent-Type: text/html"), 1); /* in the original */
    assert_int_equal(count(out, "\r\nContent-Type: "), 5); /* top, 3 parts, original's own */
    assert_null(strstr(out, "\r\nBcc:"));
    assert_null(strstr(out, "\r\nX-Injected:"));
    assert_null(strstr(out, "\r\nX-Evil:"));
    assert_null(strstr(out, "\r\nSubject: owned"));
    assert_null(strstr(out, "\x1b"));
    assert_null(strstr(out, "\x7f"));
    assert_line(out, "To: <alice@example.org Bcc: victim@example.org>");
    assert_line(out, "Received-From-MTA: dns; evil X-Injected: 1");
    assert_line(out, "Remote-MTA: dns; mx.example.com X-Evil: 2");
    assert_line(out, "Original-Recipient: rfc822;b X-Evil: 1");
    /* no line of parts 1-2 can start with "--" except the delimiters */
    size_t p3 = part3_off(&s.b, b2);
    for (size_t i = 2; i + 2 < p3; i++) {
        if (out[i - 2] == '\r' && out[i - 1] == '\n' && out[i] == '-' && out[i + 1] == '-' &&
            strncmp(out + i + 2, b2, strlen(b2)) != 0)
            fail_msg("a line of parts 1-2 starts with -- at %zu", i);
    }
    assert_wellformed(&s.b, s.b.len);
    orig_close(fd);
    buf_fini(&s.b);

    /* No original, but the reply mentions the first two candidates. */
    r = result(0, DSN_ACTION_FAILED, 550, "5.1.1", "x --" BOUNDARY " y --" BOUNDARY ".1 z",
        "mx.example.com", true);
    run_dsn(e, &r, 1, NULL, &s);
    assert_line(s.b.data, "\tboundary=\"" BOUNDARY ".2\"");
    assert_int_equal(count(s.b.data, "\r\n--" BOUNDARY ".2\r\n"), 2);
    assert_int_equal(count(s.b.data, "\r\n--" BOUNDARY ".2--\r\n"), 1);
    buf_fini(&s.b);
    env_free(e);
}

/* Lines: a long unbroken reply is cut below 998 octets; the original's long
 * lines, NULs and bare LFs are made safe. */
static void
test_long_lines(void **state)
{
    (void)state;
    char msg[3000];
    size_t n = 0;
    n += (size_t)snprintf(msg, sizeof(msg), "Subject: long\n\n");
    memset(msg + n, 'y', 2000);
    n += 2000;
    msg[n++] = '\0';
    static const char tail[] = "z\r\nbare\rcr\r\r\nend";
    memcpy(msg + n, tail, sizeof(tail) - 1);
    n += sizeof(tail) - 1;
    struct spool_env *e = env_new("alice@example.org", false, DSN_RET_UNSET);
    env_rcpt(e, "bob@example.com", NULL, 0);
    struct orig *fd = orig_file(e, msg, n);
    char text[STATUS_TEXT_MAX];
    memset(text, 'w', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    struct dsn_rcpt_result r = result(0, DSN_ACTION_FAILED, 550, "5.7.1", text, "mx", true);
    struct sink s;
    run_dsn(e, &r, 1, fd, &s);
    assert_wellformed(&s.b, s.b.len);
    assert_non_null(strstr(s.b.data, "Subject: long\r\n\r\nyyyy"));
    assert_non_null(strstr(s.b.data, "y\r\nbare\r\ncr\r\n\r\nend\r\n\r\n--" BOUNDARY "--\r\n"));
    orig_close(fd);
    buf_fini(&s.b);
    env_free(e);
}

/* Errors: a failing writer, a truncated spool file, bad arguments. */
static void
test_errors(void **state)
{
    (void)state;
    struct config cfg = make_cfg();
    struct spool_env *e = env_new("alice@example.org", false, DSN_RET_UNSET);
    env_rcpt(e, "bob@example.com", NULL, 0);
    struct orig *fd = orig_file(e, orig_msg, sizeof(orig_msg) - 1);
    struct dsn_rcpt_result r = result(0, DSN_ACTION_FAILED, 550, "5.1.1", "x", "mx", true);
    for (int at = 1; at <= 3; at++) {
        struct sink s = { BUF_INIT, 0, 0, at };
        int rc = dsn_write_message(
            &cfg, e, &r, 1, ORIG_P(fd), ORIG_N(fd), DSN_QID, NOW_MS, sink_write, &s);
        if (s.calls >= at)
            assert_int_equal(rc, -1);
        buf_fini(&s.b);
    }
    /* the spool file is shorter than the envelope says: nothing is written */
    e->body_len += 10;
    struct sink s = { BUF_INIT, 0, 0, 0 };
    assert_int_equal(
        dsn_write_message(&cfg, e, &r, 1, ORIG_P(fd), ORIG_N(fd), DSN_QID, NOW_MS, sink_write, &s),
        -1);
    assert_int_equal(s.calls, 0);
    e->body_len -= 10;
    /* bad arguments */
    r.idx = 1;
    assert_int_equal(
        dsn_write_message(&cfg, e, &r, 1, ORIG_P(fd), ORIG_N(fd), DSN_QID, NOW_MS, sink_write, &s),
        -1);
    assert_int_equal(errno, EINVAL);
    r.idx = 0;
    assert_int_equal(
        dsn_write_message(&cfg, e, &r, 0, ORIG_P(fd), ORIG_N(fd), DSN_QID, NOW_MS, sink_write, &s),
        -1);
    assert_int_equal(
        dsn_write_message(&cfg, e, &r, 1, ORIG_P(fd), ORIG_N(fd), NULL, NOW_MS, sink_write, &s),
        -1);
    assert_int_equal(s.calls, 0);
    orig_close(fd);
    env_free(e);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wanted_table),
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_failed_full),
        cmocka_unit_test(test_two_failed_one_delayed),
        cmocka_unit_test(test_other_actions),
        cmocka_unit_test(test_ret_hdrs),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_smtputf8),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests of the history journal on real files in a mkdtemp spool:
 * lines written whole and read back with hostile values intact, batching
 * on a loop, whole lines from many threads, rotation by size and by hour,
 * expiry by age and by total size (never the file being written), damaged
 * lines skipped by the reader, a write failure (logged once, only the cut
 * line lost), the time bound of a scan, and the trace
 * query (queue id, Message-ID with or without brackets, addresses with the
 * domain compared without case).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <dirent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "history/history.h"
#include "util/buf.h"
#include "util/json.h"
#include "util/log.h"
#include "util/util.h"

#define QID1 "0123456789abcdef"
#define QID2 "fedcba9876543210"
#define T0   1764700000000LL /* a fixed wall clock: 2025-12-02T18:26:40Z */

struct fx {
    char dir[64];
    char hdir[96];
};

static int
setup(void **state)
{
    struct fx *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/tern-hist-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->hdir, sizeof(f->hdir), "%s/history", f->dir);
    tern_clock_set_fake(T0);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fx *f = *state;
    DIR *d;
    struct dirent *de;
    history_close();
    tern_clock_set_fake(0);
    d = opendir(f->hdir);
    while (d != NULL && (de = readdir(d)) != NULL) {
        char p[512];
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", f->hdir, de->d_name);
        unlink(p);
    }
    if (d != NULL)
        closedir(d);
    rmdir(f->hdir);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void
open_journal(struct fx *f, int64_t retention_ms, uint64_t max_size, uint64_t file_max)
{
    struct buf err = BUF_INIT;
    struct history_opts o = { retention_ms, max_size, file_max, false, false, -1 };
    assert_int_equal(history_open(f->dir, &o, &err), 0);
    buf_fini(&err);
}

static size_t
count_files(struct fx *f)
{
    DIR *d = opendir(f->hdir);
    struct dirent *de;
    size_t n = 0;
    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        n += strstr(de->d_name, ".jsonl") != NULL;
    closedir(d);
    return n;
}

/* What a scan saw: events "id:event:recipient" joined by '|'. */
struct seen {
    struct buf s;
    size_t n;
    char last_reply[2048];
};

static int
collect(const struct history_rec *r, void *arg)
{
    struct seen *s = arg;
    buf_printf(
        &s->s, "%s%.4s:%s:%s", s->n ? "|" : "", r->id, r->event, r->recipient ? r->recipient : "-");
    if (r->reply != NULL)
        snprintf(s->last_reply, sizeof(s->last_reply), "%s", r->reply);
    s->n++;
    return 0;
}

static void
scan(struct fx *f, int64_t since, struct seen *s, struct history_scan_stats *st)
{
    struct buf err = BUF_INIT;
    memset(s, 0, sizeof(*s));
    buf_init(&s->s);
    assert_int_equal(history_scan(f->dir, since, collect, s, st, &err), 0);
    buf_fini(&err);
    if (s->s.data == NULL)
        buf_append_str(&s->s, "");
}

static void
event(const char *qid, const char *ev, const char *rcpt, const char *reply)
{
    struct hline h;
    history_begin(&h, qid, ev);
    history_str(&h, "recipient", rcpt);
    history_str(&h, "relay", rcpt ? "mx.example[192.0.2.1]:25" : NULL);
    history_str(&h, "reply", reply);
    history_end(&h);
}

static void
test_roundtrip_hostile(void **state)
{
    struct fx *f = *state;
    struct seen s;
    struct history_scan_stats st;
    struct stat sb;
    const char nasty[] = "451 4.3.0 \"quoted\" back\\slash\nnew line\r\x01\x1b[31m \xff\xfe end";
    open_journal(f, 86400000, 1u << 30, 0);
    assert_int_equal(stat(f->hdir, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    event(QID1, "received", NULL, NULL);
    event(QID1, "deferred", "a@example.org", nasty);
    event(QID1, "delivered", "a@example.org", "250 2.0.0 ok");
    history_flush();
    scan(f, 0, &s, &st);
    assert_string_equal(
        s.s.data, "0123:received:-|0123:deferred:a@example.org|0123:delivered:a@example.org");
    assert_int_equal(st.corrupt, 0);
    assert_string_equal(s.last_reply, "250 2.0.0 ok");
    buf_fini(&s.s);
    /* The hostile reply comes back byte for byte, on one line. */
    memset(&s, 0, sizeof(s));
    buf_init(&s.s);
    struct buf err = BUF_INIT;
    assert_int_equal(history_scan(f->dir, 0, collect, &s, &st, &err), 0);
    assert_int_equal(st.lines, 3);
    buf_fini(&err);
    buf_fini(&s.s);
}

static int
find_nasty(const struct history_rec *r, void *arg)
{
    if (strcmp(r->event, "deferred") == 0)
        snprintf(arg, 256, "%s", r->reply);
    return 0;
}

static void
test_value_escaped(void **state)
{
    struct fx *f = *state;
    char got[256] = "";
    struct buf err = BUF_INIT;
    const char nasty[] = "4\"5\\1\n2\r3\x01\x1b\xff";
    open_journal(f, 86400000, 1u << 30, 0);
    event(QID1, "deferred", "a@example.org", nasty);
    history_flush();
    assert_int_equal(history_scan(f->dir, 0, find_nasty, got, NULL, &err), 0);
    assert_string_equal(got, nasty);
    buf_fini(&err);
}

static void
test_long_value_cut(void **state)
{
    struct fx *f = *state;
    char *big = xmalloc(HISTORY_LINE_MAX * 2);
    struct seen s;
    struct history_scan_stats st;
    memset(big, 'x', HISTORY_LINE_MAX * 2 - 1);
    big[HISTORY_LINE_MAX * 2 - 1] = '\0';
    open_journal(f, 86400000, 1u << 30, 0);
    event(QID1, "deferred", "a@example.org", big);
    history_flush();
    scan(f, 0, &s, &st);
    assert_int_equal(s.n, 1);
    assert_int_equal(strlen(s.last_reply), HISTORY_VALUE_MAX);
    buf_fini(&s.s);
    free(big);
}

static void
test_batched_on_loop(void **state)
{
    struct fx *f = *state;
    struct event_base *base = event_base_new();
    struct seen s;
    open_journal(f, 86400000, 1u << 30, 0);
    assert_int_equal(history_attach_loop(base), 0);
    event(QID1, "held", NULL, NULL);
    event(QID1, "released", NULL, NULL);
    scan(f, 0, &s, NULL);
    assert_int_equal(s.n, 0); /* held back until the loop's pass ends */
    buf_fini(&s.s);
    event_base_loop(base, EVLOOP_NONBLOCK);
    scan(f, 0, &s, NULL);
    assert_string_equal(s.s.data, "0123:held:-|0123:released:-");
    buf_fini(&s.s);
    history_detach_loop();
    event_base_free(base);
}

#define THREADS      4
#define THREAD_LINES 400

static void *
writer(void *arg)
{
    const char *qid = arg;
    for (int i = 0; i < THREAD_LINES; i++)
        event(qid, "deferred", "someone@example.org", "451 4.7.1 greylisted, come back later");
    return NULL;
}

static void
test_threads_whole_lines(void **state)
{
    struct fx *f = *state;
    pthread_t th[THREADS];
    static const char *const qids[THREADS] = { QID1, QID2, "00000000000000aa", "00000000000000bb" };
    struct seen s;
    struct history_scan_stats st;
    open_journal(f, 86400000, 1u << 30, 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, writer, (void *)qids[i]), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    scan(f, 0, &s, &st);
    assert_int_equal(s.n, THREADS * THREAD_LINES);
    assert_int_equal(st.corrupt, 0);
    buf_fini(&s.s);
}

static void
test_rotate_size_and_hour(void **state)
{
    struct fx *f = *state;
    struct seen s;
    open_journal(f, 7 * 86400000LL, 1u << 30, 300);
    event(QID1, "received", NULL, NULL);
    history_maintain(T0, false);
    assert_int_equal(count_files(f), 1); /* still small */
    event(QID1, "deferred", "a@example.org", "451 4.3.0 a reply long enough to fill the file up");
    event(QID1, "deferred", "a@example.org", "451 4.3.0 a reply long enough to fill the file up");
    event(QID1, "deferred", "a@example.org", "451 4.3.0 a reply long enough to fill the file up");
    history_maintain(T0 + 1, false);
    assert_int_equal(count_files(f), 2); /* full */
    tern_clock_set_fake(T0 + 2);
    event(QID1, "delivered", "a@example.org", "250 ok");
    history_maintain(T0 + 2, false);
    assert_int_equal(count_files(f), 2);
    tern_clock_set_fake(T0 + 3600000);
    history_maintain(T0 + 3600000, false);
    assert_int_equal(count_files(f), 3); /* the hour turned */
    event(QID2, "received", NULL, NULL);
    history_flush();
    scan(f, 0, &s, NULL);
    assert_string_equal(s.s.data,
        "0123:received:-|0123:deferred:a@example.org|0123:deferred:a@example.org|"
        "0123:deferred:a@example.org|0123:delivered:a@example.org|fedc:received:-");
    buf_fini(&s.s);
    /* since: the first file's events are older */
    scan(f, T0 + 3600000, &s, NULL);
    assert_string_equal(s.s.data, "fedc:received:-");
    buf_fini(&s.s);
}

/* A journal file made by hand, its mtime set to mtime_ms. */
static void
put_file(struct fx *f, int64_t name_ms, const char *text, int64_t mtime_ms)
{
    char p[256];
    struct timespec ts[2];
    FILE *fp;
    snprintf(p, sizeof(p), "%s/%013lld.jsonl", f->hdir, (long long)name_ms);
    fp = fopen(p, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    ts[0].tv_sec = ts[1].tv_sec = (time_t)(mtime_ms / 1000);
    ts[0].tv_nsec = ts[1].tv_nsec = 0;
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
}

static bool
file_exists(struct fx *f, int64_t name_ms)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%013lld.jsonl", f->hdir, (long long)name_ms);
    return access(p, F_OK) == 0;
}

static void
test_expire_by_age(void **state)
{
    struct fx *f = *state;
    int64_t now = tern_now_ms(), day = 86400000;
    tern_clock_set_fake(0);
    now = tern_now_ms();
    open_journal(f, 7 * day, 1u << 30, 0);
    put_file(f, now - 9 * day, "{}\n", now - 9 * day + 3600000);
    put_file(f, now - 8 * day, "{}\n", now - 6 * day); /* written to within the week */
    history_maintain(now, true);
    assert_false(file_exists(f, now - 9 * day));
    assert_true(file_exists(f, now - 8 * day));
    assert_int_equal(count_files(f), 2); /* and the current one */
    /* A shorter retention after a reload. */
    history_set_limits(day, 1u << 30);
    history_maintain(now, true);
    assert_false(file_exists(f, now - 8 * day));
    assert_int_equal(count_files(f), 1);
}

static void
test_expire_by_size(void **state)
{
    struct fx *f = *state;
    char kb[1025];
    int64_t now;
    tern_clock_set_fake(0);
    now = tern_now_ms();
    memset(kb, 'x', 1023);
    kb[1023] = '\n';
    kb[1024] = '\0';
    open_journal(f, 7 * 86400000LL, 2500, 100000);
    put_file(f, now - 4000, kb, now);
    put_file(f, now - 3000, kb, now);
    put_file(f, now - 2000, kb, now);
    for (int i = 0; i < 4; i++)
        event(QID1, "deferred", "a@example.org", "451 4.3.0 try again later please");
    history_flush();
    history_maintain(now, true);
    /* The oldest go until the total fits; the current file stays. */
    assert_false(file_exists(f, now - 4000));
    assert_false(file_exists(f, now - 3000));
    assert_true(file_exists(f, now - 2000));
    assert_int_equal(count_files(f), 2);
    /* Even alone over the bound, the file being written is kept. */
    history_set_limits(7 * 86400000LL, 10);
    history_maintain(now, true);
    assert_int_equal(count_files(f), 1);
}

static void
test_corrupt_lines_skipped(void **state)
{
    struct fx *f = *state;
    struct buf text = BUF_INIT;
    struct seen s;
    struct history_scan_stats st;
    assert_int_equal(mkdir(f->hdir, 0700), 0);
    buf_append_str(&text, "{\"time\":"
                          "1764700000000,\"id\":\"" QID1 "\",\"event\":\"received\"}\n");
    buf_append_str(&text, "garbage that is no JSON\n");
    buf_append_str(&text, "{\"time\":1,\"id\":\"" QID1 "\",\"event\":\"exploded\"}\n");
    buf_append_str(&text, "{\"time\":1,\"id\":\"../../etc/passwd\",\"event\":\"held\"}\n");
    buf_append_str(&text, "{\"time\":\"soon\",\"id\":\"" QID1 "\",\"event\":\"held\"}\n");
    buf_append_str(&text, "[1,2,3]\n\n");
    for (size_t i = 0; i < HISTORY_LINE_MAX + 10; i++)
        buf_append_char(&text, i == 0 ? '{' : 'y');
    buf_append_str(&text,
        "\n{\"time\":"
        "1764700000001,\"id\":\"" QID1 "\",\"event\":\"deferred\",\"recipient\":\"r@x\"}\n");
    /* cut by a crash: no newline at the end */
    buf_append_str(&text, "{\"time\":"
                          "1764700000002,\"id\":\"" QID1 "\",\"event\":\"held\"}");
    put_file(f, 1764700000000LL, text.data, 1764700000000LL);
    scan(f, 0, &s, &st);
    assert_string_equal(s.s.data, "0123:received:-|0123:deferred:r@x|0123:held:-");
    assert_int_equal(st.corrupt, 7);
    buf_fini(&s.s);
    buf_fini(&text);
}

static void
test_no_journal(void **state)
{
    struct fx *f = *state;
    struct seen s;
    scan(f, 0, &s, NULL);
    assert_int_equal(s.n, 0);
    buf_fini(&s.s);
    /* Not open: lines are dropped quietly. */
    event(QID1, "received", NULL, NULL);
}

static void
test_open_refuses_untrusted_dir(void **state)
{
    struct fx *f = *state;
    struct buf err = BUF_INIT;
    struct history_opts o = { 86400000, 1u << 30, 0, false, false, -1 };
    char link[128];
    assert_int_equal(mkdir(f->hdir, 0777), 0);
    assert_int_equal(chmod(f->hdir, 0777), 0);
    assert_int_equal(history_open(f->dir, &o, &err), -1);
    assert_non_null(strstr(err.data, "not trusted"));
    buf_reset(&err);
    rmdir(f->hdir);
    snprintf(link, sizeof(link), "%s/elsewhere", f->dir);
    assert_int_equal(mkdir(link, 0700), 0);
    assert_int_equal(symlink("elsewhere", f->hdir), 0);
    assert_int_equal(history_open(f->dir, &o, &err), -1);
    unlink(f->hdir);
    rmdir(link);
    buf_fini(&err);
}

/* ternd's relay reaches the spool through the descriptor its parent
 * opened: the path is then only for messages. */
static void
test_open_by_spool_fd(void **state)
{
    struct fx *f = *state;
    struct buf err = BUF_INIT;
    int sfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct history_opts o = { 86400000, 1u << 30, 0, false, true, sfd };
    struct seen s;
    assert_true(sfd >= 0);
    assert_int_equal(history_open("/nonexistent/spool", &o, &err), 0);
    close(sfd);
    event(QID1, "released", NULL, NULL);
    scan(f, 0, &s, NULL);
    assert_string_equal(s.s.data, "0123:released:-");
    buf_fini(&s.s);
    buf_fini(&err);
}

static size_t
count_str(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* A full disk (here a file-size limit: EFBIG) drops history, is logged
 * once, and once writes work again the journal goes on on a fresh line:
 * only the line cut by the failure is lost. */
static void
test_write_failure_logged_once(void **state)
{
    struct fx *f = *state;
    struct rlimit old, lim;
    struct seen s;
    struct history_scan_stats st;
    struct stat sb;
    char path[256], logs[8192];
    int fds[2];
    ssize_t n;
    DIR *d;
    struct dirent *de;
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
    log_set_fd(fds[1]);
    signal(SIGXFSZ, SIG_IGN);
    open_journal(f, 86400000, 1u << 30, 0);
    event(QID1, "received", NULL, NULL);
    d = opendir(f->hdir);
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        if (strstr(de->d_name, ".jsonl") != NULL)
            snprintf(path, sizeof(path), "%s/%s", f->hdir, de->d_name);
    }
    closedir(d);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)sb.st_size + 10;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    event(QID1, "deferred", "a@example.org", "451 4.3.0 this line does not fit in the file");
    event(QID1, "deferred", "a@example.org", "451 4.3.0 nor does this one");
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    event(QID2, "held", NULL, NULL);
    log_set_fd(2);
    n = read(fds[0], logs, sizeof(logs) - 1);
    logs[n > 0 ? n : 0] = '\0';
    close(fds[0]);
    close(fds[1]);
    assert_int_equal(count_str(logs, "write_failed"), 1);
    assert_int_equal(count_str(logs, "write_resumed"), 1);
    scan(f, 0, &s, &st);
    assert_string_equal(s.s.data, "0123:received:-|fedc:held:-");
    assert_int_equal(st.corrupt, 1); /* the cut line */
    buf_fini(&s.s);
}

struct qcase {
    const char *query;
    const char *id, *event, *from, *rcpt, *mid;
    bool want;
};

static void
test_query(void **state)
{
    static const struct qcase cases[] = {
        { QID1, QID1, "held", NULL, NULL, NULL, true },
        { QID1, QID2, "held", NULL, NULL, NULL, false },
        { "<abc.123@host.example>", QID1, "received", "s@x", NULL, "<abc.123@host.example>", true },
        { "abc.123@host.example", QID1, "received", "s@x", NULL, "<abc.123@host.example>", true },
        { "abc.123@host.example", QID1, "received", "s@x", NULL, "<abc.124@host.example>", false },
        { "nobrackets", QID1, "received", NULL, NULL, "nobrackets", true },
        { "Bob@Example.ORG", QID1, "received", "Bob@example.org", NULL, NULL, true },
        { "bob@example.org", QID1, "received", "Bob@example.org", NULL, NULL, false },
        { "bob@EXAMPLE.org", QID1, "deferred", NULL, "bob@example.org", NULL, true },
        { "bob@example.org", QID1, "deferred", NULL, "bob@example.net", NULL, false },
        { "bob@example.org", QID1, "deferred", NULL, "xbob@example.org", NULL, false },
        /* a DSN's recipient is the sender of the message it reports on */
        { "bob@example.org", QID1, "dsn", NULL, "bob@example.org", NULL, false },
        { "example.org", QID1, "deferred", NULL, "bob@example.org", NULL, false },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        const struct qcase *c = &cases[i];
        struct history_query q;
        struct history_rec r;
        memset(&r, 0, sizeof(r));
        snprintf(r.id, sizeof(r.id), "%s", c->id);
        snprintf(r.event, sizeof(r.event), "%s", c->event);
        r.from = c->from;
        r.recipient = c->rcpt;
        r.message_id = c->mid;
        assert_int_equal(history_query_init(&q, c->query), 0);
        if (history_query_match(&q, &r) != c->want)
            fail_msg("case %zu: %s", i, c->query);
        history_query_fini(&q);
    }
}

static void
test_query_bad(void **state)
{
    struct history_query q;
    char big[1100];
    (void)state;
    assert_int_equal(history_query_init(&q, ""), -1);
    assert_int_equal(history_query_init(&q, "<>"), -1);
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(history_query_init(&q, big), -1);
}

static void
test_output_forms(void **state)
{
    struct history_rec r;
    struct buf b = BUF_INIT;
    struct json *j = NULL;
    (void)state;
    memset(&r, 0, sizeof(r));
    snprintf(r.id, sizeof(r.id), "%s", QID1);
    snprintf(r.event, sizeof(r.event), "deferred");
    r.time_ms = 1764700000999;
    r.recipient = "a@b";
    r.reply = "451 \x1b[2Jgone\n";
    r.next_s = -1;
    r.size = -1;
    history_rec_json(&r, &b);
    assert_string_equal(b.data, "{\"time\":1764700000,\"id\":\"" QID1
                                "\",\"event\":\"deferred\",\"recipient\":\"a@b\",\"relay\":null,"
                                "\"reply\":\"451 \\u001b[2Jgone\\n\"}\n");
    assert_int_equal(json_parse(b.data, b.len, &j, NULL), 0);
    json_free(j);
    buf_reset(&b);
    history_rec_text(&r, &b);
    assert_null(strchr(b.data, '\x1b'));
    assert_ptr_equal(strchr(b.data, '\n'), b.data + b.len - 1);
    /* The sender an attempt carries shows at reception only. */
    r.from = "s@x";
    buf_reset(&b);
    history_rec_text(&r, &b);
    assert_null(strstr(b.data, "from="));
    snprintf(r.event, sizeof(r.event), "received");
    buf_reset(&b);
    history_rec_text(&r, &b);
    assert_non_null(strstr(b.data, "from=<s@x>"));
    buf_fini(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_hostile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_value_escaped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_value_cut, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batched_on_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_whole_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotate_size_and_hour, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expire_by_age, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expire_by_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_lines_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_journal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refuses_untrusted_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure_logged_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_by_spool_fd, setup, teardown),
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_query_bad),
        cmocka_unit_test(test_output_forms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

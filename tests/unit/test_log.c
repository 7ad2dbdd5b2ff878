/*
 * Unit tests for the batching of log lines: without a loop every line is
 * written at once; on a loop's thread lines wait for the end of the loop
 * iteration and come out whole and in order, error lines (and the lines
 * before them) at once, lines of other threads after the batched ones, a
 * full batch early. A process that exits, aborts or faults with lines
 * batched still writes every one of them. Text lines start with an RFC
 * 3339 timestamp; the targets: a file opened for appending (and reopened
 * after a rename), syslog's datagram socket (one line per datagram with
 * its header), and what log_target refuses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"
#include "util/util.h"

struct pipe_log {
    int rd, wr;
    struct buf got;
};

static void
pipe_open(struct pipe_log *p)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
    /* Large enough for every test's lines: writes never block. */
    (void)fcntl(fds[1], F_SETPIPE_SZ, 1024 * 1024);
    p->rd = fds[0];
    p->wr = fds[1];
    buf_init(&p->got);
    log_set_fd(p->wr);
}

/* Everything written so far is appended to p->got. */
static void
pipe_drain(struct pipe_log *p)
{
    char tmp[4096];
    for (;;) {
        ssize_t n = read(p->rd, tmp, sizeof(tmp));
        if (n <= 0)
            break;
        buf_append(&p->got, tmp, (size_t)n);
    }
}

static void
pipe_close(struct pipe_log *p)
{
    log_set_fd(2);
    close(p->rd);
    close(p->wr);
    buf_fini(&p->got);
}

static void
line(enum log_level lvl, int n)
{
    struct logline l;
    log_begin(&l, lvl, NULL, "test", "line");
    log_int(&l, "n", n);
    log_end(&l);
}

/* Is p (at least 24 bytes) "YYYY-MM-DDTHH:MM:SS.mmmZ"? */
static bool
is_ts(const char *p)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; i < sizeof(shape) - 1; i++) {
        if (shape[i] == 'd' ? (p[i] < '0' || p[i] > '9') : p[i] != shape[i])
            return false;
    }
    return true;
}

/* The lines of got without their leading timestamp and its space (each
 * one checked). */
static void
strip_ts(const struct buf *got, struct buf *out)
{
    size_t off = 0;
    while (off < got->len) {
        const char *nl = memchr(got->data + off, '\n', got->len - off);
        size_t n = nl ? (size_t)(nl - (got->data + off)) + 1 : got->len - off;
        assert_true(n > 25);
        assert_true(is_ts(got->data + off));
        assert_int_equal(got->data[off + 24], ' ');
        buf_append(out, got->data + off + 25, n - 25);
        off += n;
    }
}

/* got holds exactly the lines "n=first".."n=last" of the given levels, in
 * order, each after a timestamp. */
static void
assert_lines(const struct buf *got, int first, int last)
{
    struct buf want = BUF_INIT, bare = BUF_INIT;
    for (int i = first; i <= last; i++)
        buf_printf(&want, "%s qid=- test line n=%d\n", i % 10 == 9 ? "error" : "info", i);
    strip_ts(got, &bare);
    assert_int_equal(bare.len, want.len);
    if (want.len > 0)
        assert_memory_equal(bare.data, want.data, want.len);
    buf_fini(&want);
    buf_fini(&bare);
}

static enum log_level
level_of(int i)
{
    return i % 10 == 9 ? LOG_ERROR : LOG_INFO;
}

static void
test_unbatched(void **state)
{
    struct pipe_log p;
    pipe_open(&p);
    line(LOG_INFO, 0);
    pipe_drain(&p);
    assert_lines(&p.got, 0, 0);
    pipe_close(&p);
}

static void
test_batched_until_loop_runs(void **state)
{
    struct event_base *base = event_base_new();
    struct pipe_log p;
    pipe_open(&p);
    assert_int_equal(log_attach_loop(base), 0);
    for (int i = 0; i < 5; i++)
        line(level_of(i), i);
    pipe_drain(&p);
    assert_int_equal(p.got.len, 0); /* nothing before the loop iteration ends */
    event_base_loop(base, EVLOOP_NONBLOCK);
    pipe_drain(&p);
    assert_lines(&p.got, 0, 4);
    /* The next burst too. */
    buf_reset(&p.got);
    line(LOG_INFO, 5);
    event_base_loop(base, EVLOOP_NONBLOCK);
    pipe_drain(&p);
    assert_lines(&p.got, 5, 5);
    log_detach_loop();
    /* Detached: at once again. */
    buf_reset(&p.got);
    line(LOG_INFO, 6);
    pipe_drain(&p);
    assert_lines(&p.got, 6, 6);
    pipe_close(&p);
    event_base_free(base);
}

/* An error line goes out at once, after the lines batched before it. */
static void
test_error_flushes(void **state)
{
    struct event_base *base = event_base_new();
    struct pipe_log p;
    pipe_open(&p);
    assert_int_equal(log_attach_loop(base), 0);
    for (int i = 0; i < 10; i++)
        line(level_of(i), i); /* n=9 is an error */
    pipe_drain(&p);
    assert_lines(&p.got, 0, 9);
    log_detach_loop();
    pipe_close(&p);
    event_base_free(base);
}

static void *
other_thread(void *arg)
{
    line(LOG_INFO, 3);
    return NULL;
}

/* A thread without a loop writes at once, after the lines batched before. */
static void
test_other_thread_keeps_order(void **state)
{
    struct event_base *base = event_base_new();
    struct pipe_log p;
    pthread_t t;
    pipe_open(&p);
    assert_int_equal(log_attach_loop(base), 0);
    for (int i = 0; i < 3; i++)
        line(LOG_INFO, i);
    assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    pipe_drain(&p);
    assert_lines(&p.got, 0, 3);
    line(LOG_INFO, 4);
    event_base_loop(base, EVLOOP_NONBLOCK);
    pipe_drain(&p);
    assert_lines(&p.got, 0, 4);
    log_detach_loop();
    pipe_close(&p);
    event_base_free(base);
}

/* More lines than the batch holds: the full batch goes out early, every
 * line whole and in order. */
static void
test_full_batch(void **state)
{
    struct event_base *base = event_base_new();
    struct pipe_log p;
    int n = 5000; /* about 140 kB of lines */
    pipe_open(&p);
    assert_int_equal(log_attach_loop(base), 0);
    for (int i = 0; i < n; i++) {
        line(level_of(i), i);
        if (i % 100 == 0)
            pipe_drain(&p); /* a pipe that could not grow never fills */
    }
    pipe_drain(&p);
    assert_true(p.got.len > 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    pipe_drain(&p);
    assert_lines(&p.got, 0, n - 1);
    log_detach_loop();
    pipe_close(&p);
    event_base_free(base);
}

/* RFC 3339 with milliseconds, UTC. */
static void
test_timestamp_format(void **state)
{
    static const struct {
        int64_t ms;
        const char *want;
    } cases[] = {
        { 0, "1970-01-01T00:00:00.000Z" }, { 1, "1970-01-01T00:00:00.001Z" },
        { 999, "1970-01-01T00:00:00.999Z" }, { 1796247001123, "2026-12-02T21:30:01.123Z" },
        { 951782400000, "2000-02-29T00:00:00.000Z" }, /* leap day */
        { 1703980799999, "2023-12-30T23:59:59.999Z" },
        { 4102444800000, "2100-01-01T00:00:00.000Z" },
        { -5, "1970-01-01T00:00:00.000Z" }, /* before the epoch: the epoch */
    };
    char out[LOG_TS_MAX];
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        assert_int_equal(log_format_ts(cases[i].ms, out, sizeof(out)), strlen(cases[i].want));
        assert_string_equal(out, cases[i].want);
    }
    assert_int_equal(log_format_ts(0, out, 24), 0); /* no room for the NUL */
}

/* The timestamp is now's, in text and (as a string) in JSON. */
static void
test_timestamp_in_lines(void **state)
{
    struct pipe_log p;
    char before[LOG_TS_MAX];
    pipe_open(&p);
    log_format_ts((int64_t)time(NULL) * 1000, before, sizeof(before));
    line(LOG_INFO, 0);
    log_set_json(true);
    line(LOG_INFO, 1);
    log_set_json(false);
    pipe_drain(&p);
    buf_append_char(&p.got, '\0');
    assert_true(is_ts(p.got.data));
    /* Same second or later: compare "YYYY-MM-DDTHH:MM:SS". */
    assert_true(memcmp(p.got.data, before, 19) >= 0);
    const char *json = strchr(p.got.data, '\n') + 1;
    assert_memory_equal(json, "{\"ts\":\"", 7);
    assert_true(is_ts(json + 7));
    assert_memory_equal(json + 31, "\",\"level\":\"info\"", 16);
    pipe_close(&p);
}

static char tmpdir[] = "/tmp/test_log.XXXXXX";

static void
read_file(const char *path, struct buf *out)
{
    char tmp[4096];
    int fd = open(path, O_RDONLY);
    ssize_t n;
    assert_true(fd >= 0);
    buf_reset(out);
    while ((n = read(fd, tmp, sizeof(tmp))) > 0)
        buf_append(out, tmp, (size_t)n);
    close(fd);
}

/* A file target: created 0640 (under umask 022), appended to (what was
 * there stays), and after a rename (logrotate) the reopened file gets the
 * new lines while the renamed one keeps every line written before. */
static void
test_file_target(void **state)
{
    char path[256], rotated[256];
    struct buf got = BUF_INIT;
    struct stat st;
    bool syslog = true;
    int fd;
    mode_t old = umask(022);
    snprintf(path, sizeof(path), "%s/mail.log", tmpdir);
    snprintf(rotated, sizeof(rotated), "%s/mail.log.1", tmpdir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    fd = log_target_open(path, &syslog, NULL);
    assert_true(fd > 2);
    assert_false(syslog);
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    log_use(fd, true, false);
    line(LOG_INFO, 0);
    line(LOG_INFO, 1);
    assert_int_equal(rename(path, rotated), 0);
    line(LOG_INFO, 2); /* before the reopen: into the renamed file */
    fd = log_target_open(path, &syslog, NULL);
    assert_true(fd > 2);
    log_use(fd, true, false);
    line(LOG_INFO, 3);
    read_file(rotated, &got);
    assert_lines(&got, 0, 2);
    read_file(path, &got);
    assert_lines(&got, 3, 3);
    /* Reopened again, the file is appended to, not truncated. */
    fd = log_target_open(path, &syslog, NULL);
    log_use(fd, true, false);
    line(LOG_INFO, 4);
    read_file(path, &got);
    assert_lines(&got, 3, 4);
    log_set_fd(2); /* closes the owned descriptor */
    assert_int_equal(fcntl(fd, F_GETFD), -1);
    unlink(path);
    unlink(rotated);
    buf_fini(&got);
    umask(old);
}

/* What log_target refuses, with the reason. */
static void
test_bad_targets(void **state)
{
    static const struct {
        const char *target, *want;
    } cases[] = {
        { "mail.log", "not stderr, syslog or an absolute path" },
        { "Syslog", "not stderr, syslog or an absolute path" },
        { "/nonexistent-dir/x/mail.log", "cannot open" },
        { "/tmp", "cannot open" }, /* a directory: open fails with EISDIR */
        { "/dev/null", "not a regular file" },
    };
    bool syslog;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf err = BUF_INIT;
        assert_int_equal(log_target_open(cases[i].target, &syslog, &err), -1);
        assert_non_null(err.data);
        assert_non_null(strstr(err.data, cases[i].want));
        buf_fini(&err);
    }
    assert_int_equal(log_target_open("stderr", &syslog, NULL), 2);
    assert_false(syslog);
}

/* syslog: one datagram per line, "<PRI>Mmm dd hh:mm:ss ternd[PID]: " then
 * the line without timestamp or newline; facility mail (2), severity of
 * the level. Batched lines are still one datagram each. No daemon: the
 * target cannot be opened. */
static void
test_syslog_target(void **state)
{
    struct sockaddr_un sun;
    char path[256], dgram[1024], want[64];
    struct buf err = BUF_INIT;
    struct event_base *base = event_base_new();
    bool syslog = false;
    int srv, fd;
    ssize_t n;
    snprintf(path, sizeof(path), "%s/log.sock", tmpdir);
    setenv("TERN_SYSLOG_PATH", path, 1);
    assert_int_equal(log_target_open("syslog", &syslog, &err), -1);
    assert_non_null(strstr(err.data, "cannot connect"));
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
    srv = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_int_equal(bind(srv, (struct sockaddr *)&sun, sizeof(sun)), 0);
    fd = log_target_open("syslog", &syslog, NULL);
    assert_true(fd > 2);
    assert_true(syslog);
    log_use(fd, true, true);
    line(LOG_INFO, 0);
    line(LOG_ERROR, 1);
    assert_int_equal(log_attach_loop(base), 0);
    line(LOG_INFO, 2);
    line(LOG_WARN, 3);
    event_base_loop(base, EVLOOP_NONBLOCK);
    log_detach_loop();
    static const struct {
        int pri;
        const char *level;
    } want_lines[] = { { 22, "info" }, { 19, "error" }, { 22, "info" }, { 20, "warn" } };
    for (int i = 0; i < 4; i++) {
        size_t head;
        n = recv(srv, dgram, sizeof(dgram) - 1, MSG_DONTWAIT);
        assert_true(n > 0);
        dgram[n] = '\0';
        snprintf(want, sizeof(want), "<%d>", want_lines[i].pri);
        head = strlen(want);
        assert_memory_equal(dgram, want, head);
        /* "Mmm dd hh:mm:ss" */
        assert_true(dgram[head] >= 'A' && dgram[head] <= 'Z');
        assert_int_equal(dgram[head + 9], ':');
        snprintf(want, sizeof(want), " ternd[%ld]: %s qid=- test line n=%d", (long)getpid(),
            want_lines[i].level, i);
        assert_string_equal(dgram + head + 15, want);
    }
    assert_true(recv(srv, dgram, sizeof(dgram), MSG_DONTWAIT) < 0); /* no more */
    log_set_fd(2);
    close(srv);
    unlink(path);
    unsetenv("TERN_SYSLOG_PATH");
    buf_fini(&err);
    event_base_free(base);
}

/* How a child process ends with lines batched: a fresh program (this one,
 * run again), so no handler of the test harness is in the way. */
static const char *const endings[] = { "exit", "abort", "fault", "signal", "panic" };

static int
child_ends(const char *how)
{
    struct event_base *base = event_base_new();
    log_set_fd(1);
    if (base == NULL || log_attach_loop(base) < 0)
        return 3;
    for (int i = 0; i < 5; i++)
        line(LOG_INFO, i);
    if (strcmp(how, "exit") == 0)
        exit(0);
    if (strcmp(how, "abort") == 0)
        abort();
    if (strcmp(how, "fault") == 0) {
        volatile uintptr_t bad = 8;
        *(volatile int *)bad = 1;
    }
    if (strcmp(how, "signal") == 0)
        raise(SIGSEGV);
    if (strcmp(how, "panic") == 0)
        tern_panic("test panic");
    return 4;
}

static void
test_nothing_lost_at_the_end(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(endings); i++) {
        struct pipe_log p;
        int status;
        pid_t pid;
        print_message("case %s\n", endings[i]);
        pipe_open(&p);
        log_set_fd(2);
        fflush(NULL);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            char *argv[] = { (char *)"test_log", (char *)"--end", (char *)endings[i], NULL };
            /* Quiet: a sanitizer's report of the fault is not the test. */
            int null = open("/dev/null", O_WRONLY);
            if (null >= 0)
                dup2(null, 2);
            dup2(p.wr, 1);
            execv("/proc/self/exe", argv);
            _exit(127);
        }
        close(p.wr);
        p.wr = -1;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (i == 0)
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        else
            assert_false(
                WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) >= 3));
        assert_int_equal(fcntl(p.rd, F_SETFL, 0), 0);
        pipe_drain(&p);
        assert_lines(&p.got, 0, 4);
        close(p.rd);
        buf_fini(&p.got);
    }
}

int
main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--end") == 0)
        return child_ends(argv[2]);
    if (mkdtemp(tmpdir) == NULL)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unbatched),
        cmocka_unit_test(test_batched_until_loop_runs),
        cmocka_unit_test(test_error_flushes),
        cmocka_unit_test(test_other_thread_keeps_order),
        cmocka_unit_test(test_full_batch),
        cmocka_unit_test(test_nothing_lost_at_the_end),
        cmocka_unit_test(test_timestamp_format),
        cmocka_unit_test(test_timestamp_in_lines),
        cmocka_unit_test(test_file_target),
        cmocka_unit_test(test_bad_targets),
        cmocka_unit_test(test_syslog_target),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(tmpdir);
    return rc;
}

/*
 * Unit tests for the batching of log lines: without a loop every line is
 * written at once; on a loop's thread lines wait for the end of the loop
 * iteration and come out whole and in order, error lines (and the lines
 * before them) at once, lines of other threads after the batched ones, a
 * full batch early. A process that exits, aborts or faults with lines
 * batched still writes every one of them.
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
#include <sys/wait.h>
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

/* got holds exactly the lines "n=first".."n=last" of the given levels, in
 * order. */
static void
assert_lines(const struct buf *got, int first, int last)
{
    struct buf want = BUF_INIT;
    for (int i = first; i <= last; i++)
        buf_printf(&want, "%s qid=- test line n=%d\n", i % 10 == 9 ? "error" : "info", i);
    assert_int_equal(got->len, want.len);
    if (want.len > 0)
        assert_memory_equal(got->data, want.data, want.len);
    buf_fini(&want);
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
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unbatched),
        cmocka_unit_test(test_batched_until_loop_runs),
        cmocka_unit_test(test_error_flushes),
        cmocka_unit_test(test_other_thread_keeps_order),
        cmocka_unit_test(test_full_batch),
        cmocka_unit_test(test_nothing_lost_at_the_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

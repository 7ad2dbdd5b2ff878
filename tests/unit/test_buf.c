/*
 * Unit tests for struct buf: appends keep the spare NUL, printf grows as
 * needed, JSON escaping, consume, take, and overflow of buf_reserve; and
 * the helpers that fill a buf or a string: whole-file reads with a bound,
 * UTC time formatting.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/buf.h"
#include "util/fsutil.h"
#include "util/util.h"

static void
test_append(void **state)
{
    static const struct {
        const char *name;
        const char *parts[4];
        const char *want;
    } cases[] = {
        { "empty", { NULL }, "" },
        { "one", { "abc", NULL }, "abc" },
        { "several", { "a", "", "bc", NULL }, "abc" },
        { "grows past first cap",
            { "0123456789012345678901234567890123456789",
                "0123456789012345678901234567890123456789", NULL },
            "01234567890123456789012345678901234567890123456789012345678901234567890123456789" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b = BUF_INIT;
        for (size_t j = 0; cases[i].parts[j] != NULL; j++)
            buf_append_str(&b, cases[i].parts[j]);
        print_message("case %s\n", cases[i].name);
        assert_int_equal(b.len, strlen(cases[i].want));
        if (b.len > 0) {
            assert_memory_equal(b.data, cases[i].want, b.len);
            assert_int_equal(b.data[b.len], '\0');
            assert_true(b.cap > b.len);
        }
        buf_fini(&b);
        assert_null(b.data);
        assert_int_equal(b.len, 0);
    }
}

static void
test_binary(void **state)
{
    struct buf b = BUF_INIT;
    buf_append(&b, "a\0b", 3);
    buf_append_char(&b, '\0');
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "a\0b\0", 5);
    buf_append(&b, NULL, 0);
    assert_int_equal(b.len, 4);
    buf_fini(&b);
}

static void
test_printf(void **state)
{
    static const struct {
        const char *name;
        const char *prefix;
        int num;
        const char *str;
        const char *want;
    } cases[] = {
        { "plain", "", 42, "x", "n=42 s=x" },
        { "after text", "pre:", -7, "", "pre:n=-7 s=" },
        { "long arg", "", 0,
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "n=0 s=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b = BUF_INIT;
        print_message("case %s\n", cases[i].name);
        buf_append_str(&b, cases[i].prefix);
        buf_printf(&b, "n=%d s=%s", cases[i].num, cases[i].str);
        assert_string_equal(b.data, cases[i].want);
        assert_int_equal(b.len, strlen(cases[i].want));
        buf_fini(&b);
    }
}

static void
test_json(void **state)
{
    static const struct {
        const char *name;
        const char *input;
        size_t len;
        const char *want;
    } cases[] = {
        { "plain", "hello", 5, "hello" },
        { "quote and backslash", "a\"b\\c", 5, "a\\\"b\\\\c" },
        { "newline cr tab", "\n\r\t", 3, "\\n\\r\\t" },
        { "control and del", "\x01\x1f\x7f", 3, "\\u0001\\u001f\\u007f" },
        { "nul byte", "a\0b", 3, "a\\u0000b" },
        { "utf8 kept", "\xc3\xa9", 2, "\xc3\xa9" },
        { "empty", "", 0, "" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b = BUF_INIT;
        print_message("case %s\n", cases[i].name);
        buf_append_json(&b, cases[i].input, cases[i].len);
        assert_int_equal(b.len, strlen(cases[i].want));
        if (b.len > 0)
            assert_string_equal(b.data, cases[i].want);
        buf_fini(&b);
    }
}

static void
test_consume(void **state)
{
    static const struct {
        const char *name;
        const char *input;
        size_t n;
        const char *want;
    } cases[] = {
        { "none", "abcdef", 0, "abcdef" },
        { "some", "abcdef", 2, "cdef" },
        { "all", "abcdef", 6, "" },
        { "more than all", "abcdef", 100, "" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b = BUF_INIT;
        print_message("case %s\n", cases[i].name);
        buf_append_str(&b, cases[i].input);
        buf_consume(&b, cases[i].n);
        assert_int_equal(b.len, strlen(cases[i].want));
        assert_string_equal(b.data, cases[i].want);
        buf_fini(&b);
    }
}

static void
test_reset_and_take(void **state)
{
    struct buf b = BUF_INIT;
    char *p;
    buf_append_str(&b, "hello");
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    buf_append_str(&b, "world");
    p = buf_take(&b);
    assert_string_equal(p, "world");
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    free(p);

    /* Taking an empty, never-allocated buf still hands out an owned "". */
    p = buf_take(&b);
    assert_non_null(p);
    assert_string_equal(p, "");
    free(p);
    buf_reset(&b); /* no data yet: must not crash */
    buf_fini(&b);
}

/* Does fn(arg) end the process (a panic) instead of returning? */
static bool
dies(void (*fn)(size_t), size_t n)
{
    int status;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* The child's panic message is expected: keep it off the report. */
        if (freopen("/dev/null", "w", stderr) == NULL)
            _exit(3);
        fn(n);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void
reserve_after_abc(size_t n)
{
    struct buf b = BUF_INIT;
    buf_append_str(&b, "abc");
    buf_reserve(&b, n);
    assert_int_equal(b.len, 3);
    assert_string_equal(b.data, "abc");
    buf_fini(&b);
}

static void
append_after_x(size_t n)
{
    struct buf b = BUF_INIT;
    buf_append_str(&b, "x");
    buf_append(&b, "y", n);
    buf_fini(&b);
}

/* A size past SIZE_MAX cannot be honoured: the process ends rather than
 * handing back a buffer smaller than asked for. */
static void
test_reserve_overflow(void **state)
{
    static const struct {
        const char *name;
        size_t n;
        bool die;
    } cases[] = {
        { "SIZE_MAX", SIZE_MAX, true },
        { "SIZE_MAX - len", SIZE_MAX - 3, true },
        { "SIZE_MAX - len - 1 (no room for NUL)", SIZE_MAX - 4, true },
        { "half of SIZE_MAX (more than memory)", SIZE_MAX / 2 + 1, true },
        { "small", 10, false },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("case %s\n", cases[i].name);
        assert_int_equal(dies(reserve_after_abc, cases[i].n), cases[i].die);
    }
    assert_true(dies(append_after_x, SIZE_MAX));
    assert_false(dies(append_after_x, 1));
}

/* A file is read whole when it fits, refused (EFBIG) when it does not,
 * and never through a symbolic link; a missing file is ENOENT. */
static void
test_read_file(void **state)
{
    char dir[] = "/tmp/test_buf.XXXXXX", path[64], link[64];
    struct buf b = BUF_INIT;
    FILE *f;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/f", dir);
    snprintf(link, sizeof(link), "%s/l", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 30000; i++) /* 150,000 bytes: several reads */
        fputs("abcd\n", f);
    fclose(f);
    buf_append_str(&b, "kept:");
    assert_int_equal(fs_read_file(path, &b, 150000), 0);
    assert_int_equal(b.len, 5 + 150000);
    assert_int_equal(memcmp(b.data, "kept:abcd\n", 10), 0);
    assert_int_equal(b.data[b.len], '\0');
    buf_reset(&b);
    errno = 0;
    assert_int_equal(fs_read_file(path, &b, 149999), -1);
    assert_int_equal(errno, EFBIG);
    assert_int_equal(symlink(path, link), 0);
    assert_int_equal(fs_read_file(link, &b, 150000), -1);
    assert_int_equal(errno, ELOOP);
    unlink(link);
    unlink(path);
    assert_int_equal(fs_read_file(path, &b, 150000), -1);
    assert_int_equal(errno, ENOENT);
    rmdir(dir);
    buf_fini(&b);
}

static void
test_fmt_utc(void **state)
{
    char out[64];
    tern_fmt_utc(0, TERN_RFC5322_DATE, out, sizeof(out));
    assert_string_equal(out, "Thu, 01 Jan 1970 00:00:00 +0000");
    tern_fmt_utc(1796288242, "%Y-%m-%dT%H:%M:%SZ", out, sizeof(out));
    assert_string_equal(out, "2026-12-03T08:57:22Z");
    tern_fmt_utc(1796288242, "%Y-%m-%dT%H:%M:%SZ", out, 10); /* does not fit */
    assert_string_equal(out, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_printf),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_consume),
        cmocka_unit_test(test_reset_and_take),
        cmocka_unit_test(test_reserve_overflow),
        cmocka_unit_test(test_read_file),
        cmocka_unit_test(test_fmt_utc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests of the maildrop (src/maildrop/): the drop-file parser against
 * a table of good and hostile files, the streaming message check, the
 * header writer round trip, names, the directory rule of tern-drop, and a
 * drop file written into a scratch directory.
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "maildrop/maildrop.h"
#include "util/buf.h"
#include "util/util.h"

#define MAX_SIZE 1000 /* max message size the parser is given */

struct file_case {
    const char *name;
    const char *input; /* NUL-free unless len says otherwise */
    size_t len;        /* 0: strlen(input) */
    int want;          /* 0 parses, -1 refused */
    const char *why;   /* a word of the reason when refused */
    const char *sender;
    size_t n_rcpts;
};

#define HDR "tern-maildrop 1\n"

static const struct file_case file_cases[] = {
    { "minimal", HDR "rcpt a@b.example\nsize 5\n\nx\r\n\r\nend\n", 0, 0, NULL, NULL, 1 },
    { "sender and two rcpts",
        HDR "sender s@x.example\nrcpt a@b.example\nrcpt c@d.example\nsize 2\n\n\r\nend\n", 0, 0,
        NULL, "s@x.example", 2 },
    { "null sender", HDR "sender <>\nrcpt a@b\nsize 0\n\nend\n", 0, 0, NULL, "", 1 },
    { "empty message", HDR "rcpt a@b\nsize 0\n\nend\n", 0, 0, NULL, NULL, 1 },
    { "quoted local part with space", HDR "rcpt \"j doe\"@b\nsize 0\n\nend\n", 0, 0, NULL, NULL,
        1 },
    { "utf8 address", HDR "rcpt caf\xc3\xa9@b\nsize 0\n\nend\n", 0, 0, NULL, NULL, 1 },
    { "empty input", "", 0, -1, "truncated", NULL, 0 },
    { "magic only", HDR, 0, -1, "truncated", NULL, 0 },
    { "wrong magic", "tern-maildrop 2\nrcpt a@b\nsize 0\n\nend\n", 0, -1, "not a tern", NULL, 0 },
    { "garbage", "hello world\n", 0, -1, "not a tern", NULL, 0 },
    { "magic with CR", "tern-maildrop 1\r\nrcpt a@b\nsize 0\n\nend\n", 0, -1, "not a tern", NULL,
        0 },
    { "no rcpt", HDR "size 0\n\nend\n", 0, -1, "no recipient", NULL, 0 },
    { "sender after rcpt", HDR "rcpt a@b\nsender s@x\nsize 0\n\nend\n", 0, -1, "unexpected", NULL,
        0 },
    { "two senders", HDR "sender s@x\nsender t@x\nrcpt a@b\nsize 0\n\nend\n", 0, -1, "no recipient",
        NULL, 0 },
    { "rcpt after size", HDR "rcpt a@b\nsize 0\nrcpt c@d\n\nend\n", 0, -1, "no empty line", NULL,
        0 },
    { "unknown keyword", HDR "rcpt a@b\nuid 0\nsize 0\n\nend\n", 0, -1, "unexpected", NULL, 0 },
    { "rcpt without domain", HDR "rcpt alice\nsize 0\n\nend\n", 0, -1, "bad recipient", NULL, 0 },
    { "rcpt with space", HDR "rcpt a b@c\nsize 0\n\nend\n", 0, -1, "bad recipient", NULL, 0 },
    { "rcpt with angle", HDR "rcpt <a@b>\nsize 0\n\nend\n", 0, -1, "bad recipient", NULL, 0 },
    { "rcpt with CR", HDR "rcpt a@b\r\nsize 0\n\nend\n", 0, -1, "bad recipient", NULL, 0 },
    { "empty rcpt", HDR "rcpt \nsize 0\n\nend\n", 0, -1, "bad recipient", NULL, 0 },
    { "bad sender", HDR "sender x\nrcpt a@b\nsize 0\n\nend\n", 0, -1, "bad sender", NULL, 0 },
    { "size with sign", HDR "rcpt a@b\nsize +1\n\nx\nend\n", 0, -1, "bad size", NULL, 0 },
    { "size leading zero", HDR "rcpt a@b\nsize 01\n\nx\nend\n", 0, -1, "bad size", NULL, 0 },
    { "size not a number", HDR "rcpt a@b\nsize x\n\nend\n", 0, -1, "bad size", NULL, 0 },
    { "size over the limit", HDR "rcpt a@b\nsize 1001\n\n", 0, -1, "too large", NULL, 0 },
    { "size overflows", HDR "rcpt a@b\nsize 99999999999999999999999\n\n", 0, -1, "bad size", NULL,
        0 },
    { "truncated message", HDR "rcpt a@b\nsize 10\n\nab\r\n", 0, -1, "truncated", NULL, 0 },
    { "no end marker", HDR "rcpt a@b\nsize 4\n\nab\r\nEND\n", 0, -1, "no end marker", NULL, 0 },
    { "bytes after the end", HDR "rcpt a@b\nsize 4\n\nab\r\nend\nx", 0, -1, "bytes after", NULL,
        0 },
    { "bare LF", HDR "rcpt a@b\nsize 4\n\nabc\nend\n", 0, -1, "bare LF", NULL, 0 },
    { "bare CR", HDR "rcpt a@b\nsize 4\n\na\rb\nend\n", 0, -1, "bare CR", NULL, 0 },
    { "smuggled end of data", HDR "rcpt a@b\nsize 7\n\na\n.\r\n\r\nend\n", 0, -1, "bare LF", NULL,
        0 },
    { "no final CRLF", HDR "rcpt a@b\nsize 2\n\nabend\n", 0, -1, "no CRLF", NULL, 0 },
    { "NUL in message", HDR "rcpt a@b\nsize 4\n\na\0\r\nend\n", sizeof(HDR) - 1 + 25, -1, "NUL",
        NULL, 0 },
    { "NUL in header", HDR "rcpt a@b\0\nsize 0\n\nend\n", sizeof(HDR) - 1 + 22, -1, "bad recipient",
        NULL, 0 },
};

static void
test_parse_file_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(file_cases); i++) {
        const struct file_case *c = &file_cases[i];
        struct maildrop_head h;
        struct buf err = BUF_INIT;
        size_t len = c->len ? c->len : strlen(c->input);
        int r = maildrop_parse_file(c->input, len, MAX_SIZE, &h, &err);
        if (r != c->want)
            fail_msg("%s: got %d (%s), want %d", c->name, r, err.data ? err.data : "", c->want);
        if (r == 0) {
            assert_int_equal(h.n_rcpts, c->n_rcpts);
            if (c->sender == NULL)
                assert_null(h.sender);
            else
                assert_string_equal(h.sender, c->sender);
            maildrop_head_fini(&h);
        } else if (err.data == NULL || strstr(err.data, c->why) == NULL) {
            fail_msg("%s: reason \"%s\" lacks \"%s\"", c->name, err.data ? err.data : "", c->why);
        }
        buf_fini(&err);
    }
}

/* A header cut anywhere before its empty line wants more; past
 * MAILDROP_HEAD_MAX it is refused. */
static void
test_parse_head_partial(void **state)
{
    const char *full = HDR "sender s@x\nrcpt a@b\nsize 0\n\n";
    struct maildrop_head h;
    struct buf err = BUF_INIT;
    (void)state;
    for (size_t n = 0; n < strlen(full); n++) {
        if (maildrop_parse_head(full, n, MAX_SIZE, &h, &err) != 0)
            fail_msg("prefix of %zu bytes: %s", n, err.data ? err.data : "not 0");
    }
    assert_int_equal(maildrop_parse_head(full, strlen(full), MAX_SIZE, &h, &err), 1);
    assert_int_equal(h.head_len, strlen(full));
    maildrop_head_fini(&h);

    struct buf big = BUF_INIT;
    buf_append_str(&big, HDR);
    while (big.len < MAILDROP_HEAD_MAX + 100)
        buf_append_str(&big, "rcpt aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@b.example\n");
    assert_int_equal(maildrop_parse_head(big.data, big.len, MAX_SIZE, &h, &err), -1);
    buf_fini(&big);
    buf_fini(&err);
}

static void
test_rcpt_limit(void **state)
{
    struct buf f = BUF_INIT, err = BUF_INIT;
    struct maildrop_head h;
    (void)state;
    buf_append_str(&f, HDR);
    for (int i = 0; i < MAILDROP_RCPTS_MAX; i++)
        buf_printf(&f, "rcpt r%d@b\n", i);
    size_t at = f.len;
    buf_append_str(&f, "size 0\n\nend\n");
    assert_int_equal(maildrop_parse_file(f.data, f.len, MAX_SIZE, &h, &err), 0);
    assert_int_equal(h.n_rcpts, MAILDROP_RCPTS_MAX);
    maildrop_head_fini(&h);
    f.len = at;
    buf_append_str(&f, "rcpt one@more\nsize 0\n\nend\n");
    assert_int_equal(maildrop_parse_file(f.data, f.len, MAX_SIZE, &h, &err), -1);
    assert_non_null(strstr(err.data, "too many"));
    buf_fini(&f);
    buf_fini(&err);
}

struct body_case {
    const char *name;
    const char *input;
    int want;
    bool hdr8, body8;
};

static const struct body_case body_cases[] = {
    { "plain", "Subject: x\r\n\r\nbody\r\n", 0, false, false },
    { "8bit header", "Subject: caf\xc3\xa9\r\n\r\nbody\r\n", 0, true, false },
    { "8bit body", "Subject: x\r\n\r\ncaf\xc3\xa9\r\n", 0, false, true },
    { "header only", "Subject: x\r\n", 0, false, false },
    { "bare LF", "a\nb\r\n", -1, false, false },
    { "bare CR", "a\rb\r\n", -1, false, false },
    { "unfinished line", "a\r\nb", -1, false, false },
    { "CR at the end", "a\r", -1, false, false },
};

/* Fed a byte at a time and all at once, the result is the same. */
static void
test_body_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(body_cases); i++) {
        const struct body_case *c = &body_cases[i];
        for (int split = 0; split < 2; split++) {
            struct maildrop_body b;
            struct buf err = BUF_INIT;
            size_t n = strlen(c->input);
            int r = 0;
            maildrop_body_init(&b);
            if (split) {
                for (size_t k = 0; k < n && r == 0; k++)
                    r = maildrop_body_feed(&b, c->input + k, 1, &err);
            } else {
                r = maildrop_body_feed(&b, c->input, n, &err);
            }
            if (r == 0)
                r = maildrop_body_end(&b, &err);
            if (r != c->want)
                fail_msg("%s (split %d): got %d (%s)", c->name, split, r, err.data);
            if (r == 0 && (b.hdr_8bit != c->hdr8 || b.body_8bit != c->body8))
                fail_msg("%s: 8-bit flags %d %d", c->name, b.hdr_8bit, b.body_8bit);
            buf_fini(&err);
        }
    }
}

static void
test_line_limit(void **state)
{
    struct buf m = BUF_INIT, err = BUF_INIT;
    struct maildrop_body b;
    (void)state;
    for (int i = 0; i < MAILDROP_LINE_MAX; i++)
        buf_append_char(&m, 'x');
    buf_append_str(&m, "\r\n");
    maildrop_body_init(&b);
    assert_int_equal(maildrop_body_feed(&b, m.data, m.len, &err), 0);
    buf_reset(&m);
    for (int i = 0; i <= MAILDROP_LINE_MAX; i++)
        buf_append_char(&m, 'x');
    assert_int_equal(maildrop_body_feed(&b, m.data, m.len, &err), -1);
    buf_fini(&m);
    buf_fini(&err);
}

/* What maildrop_format_head writes parses back to the same envelope. */
static void
test_format_roundtrip(void **state)
{
    char *rcpts[] = { "a@b.example", "\"x y\"@c.example" };
    const char *senders[] = { NULL, "", "s@x.example" };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(senders); i++) {
        struct buf f = BUF_INIT, err = BUF_INIT;
        struct maildrop_head h;
        assert_int_equal(maildrop_format_head(senders[i], rcpts, 2, 6, &f, &err), 0);
        buf_append_str(&f, "hi\r\n\r\nend\n");
        assert_int_equal(maildrop_parse_file(f.data, f.len, MAX_SIZE, &h, &err), 0);
        assert_int_equal(h.n_rcpts, 2);
        assert_string_equal(h.rcpts[1], rcpts[1]);
        if (senders[i] == NULL)
            assert_null(h.sender);
        else
            assert_string_equal(h.sender, senders[i]);
        maildrop_head_fini(&h);
        buf_fini(&f);
        buf_fini(&err);
    }
    struct buf f = BUF_INIT, err = BUF_INIT;
    char *bad[] = { "no-domain" };
    assert_int_equal(maildrop_format_head(NULL, bad, 1, 0, &f, &err), -1);
    assert_int_equal(maildrop_format_head(NULL, rcpts, 0, 0, &f, &err), -1);
    buf_fini(&f);
    buf_fini(&err);
}

struct name_case {
    const char *name;
    enum maildrop_name want;
    const char *qid;
};

static const struct name_case name_cases[] = {
    { "d.0123456789abcdef0123456789abcdef", MAILDROP_N_READY, NULL },
    { "t.0123456789abcdef0123456789abcdef", MAILDROP_N_TMP, NULL },
    { "c.0123456789abcdef0123456789abcdef.00112233aabbccdd", MAILDROP_N_CLAIMED,
        "00112233aabbccdd" },
    { "corrupt", MAILDROP_N_CORRUPT, NULL },
    { "d.0123456789ABCDEF0123456789abcdef", MAILDROP_N_OTHER, NULL },
    { "d.0123456789abcdef0123456789abcde", MAILDROP_N_OTHER, NULL },
    { "x.0123456789abcdef0123456789abcdef", MAILDROP_N_OTHER, NULL },
    { "c.0123456789abcdef0123456789abcdef.00112233aabbccd", MAILDROP_N_OTHER, NULL },
    { "c.0123456789abcdef0123456789abcdef-00112233aabbccdd", MAILDROP_N_OTHER, NULL },
    { "", MAILDROP_N_OTHER, NULL },
    { "..", MAILDROP_N_OTHER, NULL },
};

static void
test_names(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(name_cases); i++) {
        char qid[17] = "";
        enum maildrop_name k = maildrop_name_kind(name_cases[i].name, qid);
        if (k != name_cases[i].want)
            fail_msg("%s: kind %d", name_cases[i].name, (int)k);
        if (name_cases[i].qid != NULL)
            assert_string_equal(qid, name_cases[i].qid);
    }
}

static void
test_dir_usable(void **state)
{
    struct stat st;
    (void)state;
    memset(&st, 0, sizeof(st));
    st.st_mode = S_IFDIR | 01730;
    st.st_gid = 42;
    assert_true(maildrop_dir_usable(&st, 42));
    assert_false(maildrop_dir_usable(&st, 43));
    st.st_mode = S_IFDIR | 0730;
    assert_false(maildrop_dir_usable(&st, 42)); /* not sticky */
    st.st_mode = S_IFDIR | 01733;
    assert_false(maildrop_dir_usable(&st, 42)); /* writable by others */
    st.st_mode = S_IFREG | 01730;
    assert_false(maildrop_dir_usable(&st, 42));
}

/* A file written with maildrop_write is complete under its d. name, mode
 * 0644 whatever the umask, and nothing else is left. */
static void
test_write(void **state)
{
    char dir[] = "/tmp/test_maildrop.XXXXXX", name[MAILDROP_NAME_MAX], path[256];
    const char *data = HDR "rcpt a@b\nsize 0\n\nend\n";
    struct stat st;
    int fd, n = 0;
    DIR *d;
    struct dirent *de;
    (void)state;
    assert_non_null(mkdtemp(dir));
    fd = open(dir, O_RDONLY | O_DIRECTORY);
    assert_true(fd >= 0);
    mode_t old = umask(077);
    assert_int_equal(maildrop_write(fd, data, strlen(data), name), 0);
    umask(old);
    assert_int_equal(maildrop_name_kind(name, NULL), MAILDROP_N_READY);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, MAILDROP_FILE_MODE);
    assert_int_equal((size_t)st.st_size, strlen(data));
    d = opendir(dir);
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    assert_int_equal(n, 1);
    unlink(path);
    close(fd);
    rmdir(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_file_table),
        cmocka_unit_test(test_parse_head_partial),
        cmocka_unit_test(test_rcpt_limit),
        cmocka_unit_test(test_body_table),
        cmocka_unit_test(test_line_limit),
        cmocka_unit_test(test_format_roundtrip),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_dir_usable),
        cmocka_unit_test(test_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

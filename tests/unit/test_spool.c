/*
 * Unit tests of src/spool: the record codec (tables), and real files in a
 * mkdtemp directory for commit, load, status records, damage detection,
 * tmp/ clean-up, what the spool refuses to trust (directories others may
 * write to, queue entries ternd did not make) and the group-commit pipeline
 * (completions are received by running a libevent loop, as the daemon does).
 */
#include <setjmp.h> /* cmocka.h needs these first */
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool/spool.h"
#include "spool/spool_int.h"
#include "util/log.h"
#include "util/util.h"

/* --- fixture --- */

struct fx {
    char dir[64];
    char spool[128];
    struct event_base *base;
    struct spool *sp;
    int ncb, nok, nhook;
    int next_id;
    int last_err;
    char qids[1100][SPOOL_QID_LEN + 1];
};

static void
path_of(const struct fx *f, const char *sub, const char *name, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s/%s", f->spool, sub, name);
    assert_true(n > 0 && (size_t)n < cap);
}

static void
fx_open(struct fx *f)
{
    struct buf err = BUF_INIT;
    f->sp = spool_open(f->spool, f->base, &err);
    if (f->sp == NULL)
        fail_msg("spool_open: %s", err.data ? err.data : "?");
    buf_fini(&err);
}

static int
setup(void **state)
{
    struct fx *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_spool.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->spool, sizeof(f->spool), "%s/a/spool", f->dir);
    f->base = event_base_new();
    assert_non_null(f->base);
    log_set_level(LOG_CRIT); /* the tests check files, not log lines */
    fx_open(f);
    *state = f;
    return 0;
}

static void
rm_tree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *de;
    if (d == NULL) {
        unlink(path);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        char p[512];
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
        rm_tree(p);
    }
    closedir(d);
    rmdir(path);
}

static int
teardown(void **state)
{
    struct fx *f = *state;
    spool_free(f->sp);
    event_base_free(f->base);
    rm_tree(f->dir);
    free(f);
    return 0;
}

static void
commit_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct fx *f = arg;
    assert_true(id < TERN_ARRAY_LEN(f->qids));
    assert_string_equal(qid, f->qids[id]);
    f->ncb++;
    if (ok)
        f->nok++;
    else
        f->last_err = err;
}

static void
hook(const struct spool_env *env, void *arg)
{
    struct fx *f = arg;
    assert_true(spool_qid_valid(env->qid));
    f->nhook++;
}

static void
wait_cbs(struct fx *f, int n)
{
    int64_t deadline = tern_mono_ms() + 30000;
    while (f->ncb < n) {
        assert_true(tern_mono_ms() < deadline);
        event_base_loop(f->base, EVLOOP_ONCE);
    }
}

static int
count_dir(const struct fx *f, const char *sub)
{
    char p[256];
    DIR *d;
    struct dirent *de;
    int n = 0;
    snprintf(p, sizeof(p), "%s/%s", f->spool, sub);
    d = opendir(p);
    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static bool
exists(const struct fx *f, const char *sub, const char *qid)
{
    char p[256];
    path_of(f, sub, qid, p, sizeof(p));
    return access(p, F_OK) == 0;
}

static struct spool_env *
simple_env(void)
{
    struct spool_env *env = xcalloc(1, sizeof(*env));
    env->sender = xstrdup("a@example.org");
    spool_env_add_rcpt(env, "b@example.net", NULL, 0);
    return env;
}

/* Write and commit one message; returns its index in f->qids. */
static int
commit_one(struct fx *f, const struct spool_env *tmpl, const void *body, size_t len)
{
    struct spool_env *env = tmpl ? spool_env_dup(tmpl) : simple_env();
    struct spool_writer *w = spool_writer_new(f->sp, env);
    int id = f->next_id++ % (int)TERN_ARRAY_LEN(f->qids);
    assert_non_null(w);
    assert_string_equal(spool_writer_qid(w), env->qid);
    memcpy(f->qids[id], env->qid, sizeof(f->qids[id]));
    assert_int_equal(spool_writer_write(w, body, len), 0);
    assert_int_equal(spool_writer_size(w), len);
    spool_writer_commit(w, commit_cb, (uint64_t)id, f);
    spool_env_free(env);
    return id;
}

static void
reopen(struct fx *f)
{
    spool_free(f->sp); /* drains status updates too */
    fx_open(f);
}

/* --- codec tables --- */

static void
test_crc32c(void **state)
{
    assert_int_equal(spool_crc32c(0, "123456789", 9), 0xe3069283u);
    /* incremental == one shot, across the 8-byte fast path */
    const char *s = "The quick brown fox jumps over the lazy dog";
    uint32_t a = spool_crc32c(0, s, strlen(s));
    uint32_t b = spool_crc32c(spool_crc32c(0, s, 5), s + 5, strlen(s) - 5);
    assert_int_equal(a, b);
}

static void
test_escape(void **state)
{
    static const struct {
        const char *name, *input, *want;
    } cases[] = {
        { "plain", "user@example.org", "user@example.org" },
        { "empty", "", "" },
        { "space", "\"a b\"@x", "\"a%20b\"@x" },
        { "percent", "100%", "100%25" },
        { "crlf", "a\r\nb", "a%0D%0Ab" },
        { "tab del", "\t\x7f", "%09%7F" },
        { "utf8 raw", "j\xc3\xb6rg@b\xc3\xbc.de", "j\xc3\xb6rg@b\xc3\xbc.de" },
        { "lone dash", "-", "%2D" },
        { "dashes", "a-b-", "a-b-" },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf b = BUF_INIT;
        char *back = NULL;
        spool_esc(&b, cases[i].input, strlen(cases[i].input));
        buf_append_char(&b, '\0');
        if (strcmp(b.data, cases[i].want) != 0)
            fail_msg("%s: got '%s'", cases[i].name, b.data);
        assert_int_equal(spool_unesc(b.data, strlen(b.data), &back), 0);
        assert_string_equal(back, cases[i].input);
        free(back);
        buf_fini(&b);
    }
}

static void
test_unescape_bad(void **state)
{
    static const struct {
        const char *name, *input;
    } cases[] = {
        { "lone percent", "%" },
        { "short escape", "%4" },
        { "bad hex", "%ZZ" },
        { "nul", "a%00" },
        { "raw space", "a b" },
        { "raw cr", "a\rb" },
        { "raw del", "a\x7f" },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char *out = NULL;
        if (spool_unesc(cases[i].input, strlen(cases[i].input), &out) != -1)
            fail_msg("%s: accepted", cases[i].name);
        assert_null(out);
    }
}

static void
test_env_parse_lines(void **state)
{
    static const char *const good[] = { "Q 0123456789abcdef", "A 1700000000000", "S ", "E -", "R 0",
        "B 1", "U 0", "X 0", "H -", "C -" };
    static const struct {
        const char *name, *input;
        int want; /* of the line after the good prefix */
    } cases[] = {
        { "rcpt", "T a@b - 6", 0 },
        { "rcpt orcpt", "T a@b rfc822;a@b 15", 0 },
        { "rcpt empty addr", "T  - 0", 0 },
        { "notify too big", "T a@b - 16", -1 },
        { "missing field", "T a@b 6", -1 },
        { "extra field", "T a@b - 6 x", -1 },
        { "trailing space", "T a@b - 6 ", -1 },
        { "wrong tag", "Z x", -1 },
        { "no space", "Tx", -1 },
        { "raw CR", "T a\r@b - 6", -1 },
        { "number junk", "T a@b - 6x", -1 },
        { "negative", "T a@b - -1", -1 },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct spool_env_parser p;
        struct spool_env *env;
        spool_env_parser_init(&p);
        for (size_t k = 0; k < TERN_ARRAY_LEN(good); k++)
            assert_int_equal(spool_env_parse_line(&p, good[k], strlen(good[k])), 0);
        if (spool_env_parse_line(&p, cases[i].input, strlen(cases[i].input)) != cases[i].want)
            fail_msg("%s: unexpected result", cases[i].name);
        env = spool_env_parse_end(&p);
        assert_true((env != NULL) == (cases[i].want == 0));
        spool_env_free(env);
        spool_env_parser_fini(&p);
    }
    /* out of order and incomplete */
    struct spool_env_parser p;
    spool_env_parser_init(&p);
    assert_int_equal(spool_env_parse_line(&p, "A 1", 3), -1);
    assert_int_equal(spool_env_parse_line(&p, good[0], strlen(good[0])), 0);
    assert_null(spool_env_parse_end(&p));
    spool_env_parser_fini(&p);
}

static void
test_status_lines(void **state)
{
    struct spool_env *env = simple_env();
    struct buf b = BUF_INIT;
    spool_env_add_rcpt(env, "c@d", NULL, 0);
    spool_status_rcpt_line(&b, 1, RCPT_FAILED, 7, "550 5.1.1 no\r\nsuch user %");
    assert_int_equal(b.data[b.len - 1], '\n');
    assert_null(memchr(b.data, '\r', b.len));
    assert_int_equal(spool_status_apply(env, b.data, b.len - 1), 0);
    assert_int_equal(env->rcpts[1].state, RCPT_FAILED);
    assert_int_equal(env->rcpts[1].attempts, 7);
    assert_string_equal(env->rcpts[1].last_error, "550 5.1.1 no\r\nsuch user %");
    /* flipped byte: bad check */
    b.data[2] = '0';
    assert_int_equal(spool_status_apply(env, b.data, b.len - 1), 1);
    /* good check, index out of range: damaged */
    buf_reset(&b);
    spool_status_rcpt_line(&b, 2, RCPT_DELIVERED, 1, NULL);
    assert_int_equal(spool_status_apply(env, b.data, b.len - 1), -1);
    buf_reset(&b);
    spool_status_held_line(&b, true);
    assert_int_equal(spool_status_apply(env, b.data, b.len - 1), 0);
    assert_true(env->held);
    assert_int_equal(spool_status_apply(env, "h 1", 3), 1);
    /* long error text is cut at SPOOL_ERR_MAX on a UTF-8 boundary */
    char big[3000];
    memset(big, 'x', sizeof(big));
    memcpy(big + SPOOL_ERR_MAX - 1, "\xc3\xa9", 2);
    big[sizeof(big) - 1] = '\0';
    buf_reset(&b);
    spool_status_rcpt_line(&b, 0, RCPT_QUEUED, 1, big);
    assert_int_equal(spool_status_apply(env, b.data, b.len - 1), 0);
    assert_int_equal(strlen(env->rcpts[0].last_error), SPOOL_ERR_MAX - 1);
    buf_fini(&b);
    spool_env_free(env);
}

static void
test_env_dup_grow(void **state)
{
    struct spool_env *env = simple_env();
    for (int i = 0; i < 4; i++)
        spool_env_add_rcpt(env, "x@y", "rfc822;x@y", DSN_NOTIFY_DELAY);
    struct spool_env *d = spool_env_dup(env);
    for (int i = 0; i < 40; i++) /* grows past the copied capacity */
        spool_env_add_rcpt(d, "z@y", NULL, 0);
    assert_int_equal(d->n_rcpts, 45);
    assert_string_equal(d->rcpts[3].orcpt, "rfc822;x@y");
    assert_string_equal(d->rcpts[44].addr, "z@y");
    spool_env_free(d);
    spool_env_free(env);
    spool_env_free(NULL);
}

/* --- files --- */

static struct spool_env *
hostile_env(void)
{
    struct spool_env *env = xcalloc(1, sizeof(*env));
    env->sender = xstrdup("");
    env->envid = xstrdup("id%2Bx+2B-");
    env->ret = DSN_RET_HDRS;
    env->body = BODY_8BITMIME;
    env->smtputf8 = true;
    env->is_bounce = true;
    env->helo = xstrdup("evil\r\nhelo with spaces");
    env->client_addr = xstrdup("[::1]:25");
    spool_env_add_rcpt(env, "\"j\xc3\xb6rg s%20mith\"@b\xc3\xbc.example", "rfc822;j+F6rg@x",
        DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE);
    spool_env_add_rcpt(env, "-", NULL, DSN_NOTIFY_NEVER);
    spool_env_add_rcpt(env, "plain@example.com", "-", 0);
    return env;
}

static void
assert_env_equal(const struct spool_env *a, const struct spool_env *b)
{
    assert_string_equal(a->qid, b->qid);
    assert_int_equal(a->arrival_ms, b->arrival_ms);
    assert_string_equal(a->sender, b->sender);
    if (a->envid || b->envid)
        assert_string_equal(a->envid, b->envid);
    assert_int_equal(a->ret, b->ret);
    assert_int_equal(a->body, b->body);
    assert_int_equal(a->smtputf8, b->smtputf8);
    assert_int_equal(a->is_bounce, b->is_bounce);
    assert_string_equal(a->helo, b->helo);
    assert_string_equal(a->client_addr, b->client_addr);
    assert_int_equal(a->n_rcpts, b->n_rcpts);
    for (size_t i = 0; i < a->n_rcpts; i++) {
        assert_string_equal(a->rcpts[i].addr, b->rcpts[i].addr);
        assert_true((a->rcpts[i].orcpt == NULL) == (b->rcpts[i].orcpt == NULL));
        if (a->rcpts[i].orcpt)
            assert_string_equal(a->rcpts[i].orcpt, b->rcpts[i].orcpt);
        assert_int_equal(a->rcpts[i].notify, b->rcpts[i].notify);
    }
}

static void
test_roundtrip(void **state)
{
    struct fx *f = *state;
    struct spool_env *env = hostile_env(), *got;
    static const char body[] = "Subject: x\r\n\r\nnul\0byte\r\n.\r\nEND 0\n";
    char back[sizeof(body)];
    struct spool_writer *w;
    int fd;
    spool_set_commit_hook(f->sp, hook, f);
    w = spool_writer_new(f->sp, env);
    assert_non_null(w);
    assert_true(spool_qid_valid(env->qid));
    assert_true(env->arrival_ms > 0);
    memcpy(f->qids[0], env->qid, sizeof(f->qids[0]));
    assert_true(exists(f, "tmp", env->qid));
    /* in pieces, so the buffer is used */
    assert_int_equal(spool_writer_write(w, body, 10), 0);
    assert_int_equal(spool_writer_write(w, body + 10, sizeof(body) - 10), 0);
    spool_writer_commit(w, commit_cb, 0, f);
    wait_cbs(f, 1);
    assert_int_equal(f->nok, 1);
    assert_int_equal(f->nhook, 1);
    assert_false(exists(f, "tmp", env->qid));
    assert_true(exists(f, "queue", env->qid));

    got = spool_load(f->sp, env->qid);
    assert_non_null(got);
    assert_env_equal(env, got);
    assert_false(got->held);
    assert_int_equal(got->body_len, sizeof(body));
    fd = spool_open_message(f->sp, env->qid);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, back, sizeof(back), (off_t)got->body_off), sizeof(back));
    assert_memory_equal(back, body, sizeof(body));
    close(fd);
    spool_env_free(got);
    spool_env_free(env);
}

static void
test_large_body(void **state)
{
    struct fx *f = *state;
    size_t n = 3 * SPOOL_WBUF_SIZE + 123;
    char *body = xmalloc(n), *back = xmalloc(n);
    struct spool_env *got;
    int id, fd;
    for (size_t i = 0; i < n; i++)
        body[i] = (char)(i * 7 + (i >> 9));
    id = commit_one(f, NULL, body, n);
    wait_cbs(f, 1);
    got = spool_load(f->sp, f->qids[id]);
    assert_non_null(got);
    assert_int_equal(got->body_len, n);
    fd = spool_open_message(f->sp, f->qids[id]);
    assert_int_equal(pread(fd, back, n, (off_t)got->body_off), (ssize_t)n);
    assert_memory_equal(back, body, n);
    close(fd);
    spool_env_free(got);
    free(body);
    free(back);
}

static void
test_status_applied(void **state)
{
    struct fx *f = *state;
    struct spool_env *env = hostile_env(), *got;
    int id = commit_one(f, env, "x", 1);
    const char *qid = f->qids[id];
    wait_cbs(f, 1);
    spool_update_rcpt(f->sp, qid, 0, RCPT_QUEUED, 1, "421 busy\r\ntry later");
    spool_update_rcpt(f->sp, qid, 2, RCPT_DELIVERED, 1, NULL);
    spool_update_held(f->sp, qid, true);
    spool_update_rcpt(f->sp, qid, 0, RCPT_FAILED, 2, "550 no");
    spool_update_held(f->sp, qid, false);
    spool_update_held(f->sp, qid, true);
    reopen(f);
    got = spool_load(f->sp, qid);
    assert_non_null(got);
    assert_int_equal(got->rcpts[0].state, RCPT_FAILED);
    assert_int_equal(got->rcpts[0].attempts, 2);
    assert_string_equal(got->rcpts[0].last_error, "550 no");
    assert_int_equal(got->rcpts[1].state, RCPT_QUEUED);
    assert_null(got->rcpts[1].last_error);
    assert_int_equal(got->rcpts[2].state, RCPT_DELIVERED);
    assert_true(got->held);
    /* a loaded envelope committed again keeps its status */
    int id2 = commit_one(f, got, "y", 1);
    wait_cbs(f, 2);
    struct spool_env *again = spool_load(f->sp, f->qids[id2]);
    assert_non_null(again);
    assert_int_equal(again->rcpts[0].state, RCPT_FAILED);
    assert_string_equal(again->rcpts[0].last_error, "550 no");
    assert_true(again->held);
    spool_env_free(again);
    spool_env_free(got);
    spool_env_free(env);
}

static void
append_raw(const struct fx *f, const char *qid, const char *data, size_t n)
{
    char p[256];
    int fd;
    path_of(f, "queue", qid, p, sizeof(p));
    fd = open(p, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    assert_int_equal(close(fd), 0);
}

static void
test_torn_status(void **state)
{
    struct fx *f = *state;
    struct spool_env *got;
    struct buf b = BUF_INIT;
    int id = commit_one(f, NULL, "body", 4);
    const char *qid = f->qids[id];
    wait_cbs(f, 1);
    spool_update_rcpt(f->sp, qid, 0, RCPT_QUEUED, 3, "451 later");
    reopen(f);
    /* a torn record: half a line */
    spool_status_rcpt_line(&b, 0, RCPT_DELIVERED, 4, NULL);
    append_raw(f, qid, b.data, b.len / 2);
    got = spool_load(f->sp, qid);
    assert_non_null(got);
    assert_int_equal(got->rcpts[0].state, RCPT_QUEUED);
    assert_int_equal(got->rcpts[0].attempts, 3);
    spool_env_free(got);
    /* the next update trims the torn tail first, so the file stays good */
    spool_update_rcpt(f->sp, qid, 0, RCPT_QUEUED, 5, "451 again");
    reopen(f);
    got = spool_load(f->sp, qid);
    assert_non_null(got);
    assert_int_equal(got->rcpts[0].attempts, 5);
    spool_env_free(got);
    /* complete last line with a bad check: ignored too */
    append_raw(f, qid, "s 0 1 9 - 00000000\n", 19);
    got = spool_load(f->sp, qid);
    assert_non_null(got);
    assert_int_equal(got->rcpts[0].attempts, 5);
    spool_env_free(got);
    /* ... but not in the middle: the file is damaged */
    append_raw(f, qid, b.data, b.len);
    got = spool_load(f->sp, qid);
    assert_null(got);
    assert_int_equal(errno, EBADMSG);
    buf_fini(&b);
}

struct walk_seen {
    int n;
    char qids[8][SPOOL_QID_LEN + 1];
};

static void
walk_fn(struct spool_env *env, void *arg)
{
    struct walk_seen *s = arg;
    assert_true(s->n < 8);
    memcpy(s->qids[s->n++], env->qid, SPOOL_QID_LEN + 1);
    spool_env_free(env);
}

enum damage {
    DMG_TRUNC_END,
    DMG_TRUNC_BODY,
    DMG_FLIP_ENV,
    DMG_FLIP_BODY,
    DMG_FLIP_HDR,
    DMG_UNCOMMITTED,
    DMG_EMPTY,
    DMG_MID_STATUS
};

static void
damage(const struct fx *f, const char *qid, enum damage d)
{
    char p[256];
    struct stat st;
    int fd;
    char c;
    off_t at;
    path_of(f, "queue", qid, p, sizeof(p));
    fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    switch (d) {
    case DMG_TRUNC_END:
        assert_int_equal(ftruncate(fd, st.st_size - 2), 0);
        break;
    case DMG_TRUNC_BODY:
        assert_int_equal(ftruncate(fd, st.st_size - SPOOL_END_LEN - 3), 0);
        break;
    case DMG_EMPTY:
        assert_int_equal(ftruncate(fd, 0), 0);
        break;
    case DMG_UNCOMMITTED:
        assert_int_equal(pwrite(fd, SPOOL_HDR_PENDING "  ", 19, 0), 19);
        break;
    case DMG_MID_STATUS:
        assert_int_equal(pwrite(fd, "s 0 1 9 - 00000000\nh 0 3\n", 25, st.st_size), 25);
        break;
    default:
        at = d == DMG_FLIP_HDR ? 20 : d == DMG_FLIP_ENV ? SPOOL_HDR_LEN + 5 : st.st_size - 30;
        assert_int_equal(pread(fd, &c, 1, at), 1);
        c ^= 0x04;
        assert_int_equal(pwrite(fd, &c, 1, at), 1);
        break;
    }
    assert_int_equal(close(fd), 0);
}

static void
test_walk_corrupt(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *name;
        enum damage input;
    } cases[] = {
        { "truncated end marker", DMG_TRUNC_END },
        { "truncated body", DMG_TRUNC_BODY },
        { "flipped envelope byte", DMG_FLIP_ENV },
        { "flipped body byte", DMG_FLIP_BODY },
        { "flipped header digit", DMG_FLIP_HDR },
        { "uncommitted header", DMG_UNCOMMITTED },
        { "empty file", DMG_EMPTY },
        { "bad status mid-file", DMG_MID_STATUS },
    };
    char body[200];
    memset(body, 'b', sizeof(body));
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct walk_seen seen = { 0 };
        int good, bad;
        f->ncb = 0;
        good = commit_one(f, NULL, body, sizeof(body));
        bad = commit_one(f, NULL, body, sizeof(body));
        wait_cbs(f, 2);
        damage(f, f->qids[bad], cases[i].input);
        assert_int_equal(spool_walk(f->sp, walk_fn, &seen), 1);
        if (seen.n != 1 || strcmp(seen.qids[0], f->qids[good]) != 0)
            fail_msg("%s: good message not visited", cases[i].name);
        if (!exists(f, "corrupt", f->qids[bad]) || exists(f, "queue", f->qids[bad]))
            fail_msg("%s: not moved to corrupt/", cases[i].name);
        assert_int_equal(spool_remove(f->sp, f->qids[good]), 0);
    }
    assert_int_equal(count_dir(f, "corrupt"), (int)TERN_ARRAY_LEN(cases));
    assert_int_equal(count_dir(f, "queue"), 0);
}

/* Entries of queue/ that ternd could not have made are set aside without
 * being read: a FIFO (opening it must not block), a symbolic link to a good
 * message (never followed), and, as root, a good message of another owner. */
static void
test_walk_untrusted_entries(void **state)
{
    struct fx *f = *state;
    struct walk_seen seen = { 0 };
    char body[100], p[256], target[256], link_qid[SPOOL_QID_LEN + 1];
    int good, linked, foreign = -1, want_corrupt = 2;
    memset(body, 'u', sizeof(body));
    f->ncb = 0;
    good = commit_one(f, NULL, body, sizeof(body));
    linked = commit_one(f, NULL, body, sizeof(body));
    if (geteuid() == 0)
        foreign = commit_one(f, NULL, body, sizeof(body));
    wait_cbs(f, foreign >= 0 ? 3 : 2);
    /* The linked message moves out of queue/ and a link takes its place. */
    memcpy(link_qid, f->qids[linked], sizeof(link_qid));
    path_of(f, "queue", link_qid, p, sizeof(p));
    snprintf(target, sizeof(target), "%s/outside", f->dir);
    assert_int_equal(rename(p, target), 0);
    assert_int_equal(symlink(target, p), 0);
    path_of(f, "queue", "00000000000fff00", p, sizeof(p));
    assert_int_equal(mkfifo(p, 0600), 0);
    if (foreign >= 0) {
        path_of(f, "queue", f->qids[foreign], p, sizeof(p));
        assert_int_equal(chown(p, 65534, 65534), 0);
        want_corrupt++;
    }
    assert_int_equal(spool_walk(f->sp, walk_fn, &seen), 1);
    assert_int_equal(seen.n, 1);
    assert_string_equal(seen.qids[0], f->qids[good]);
    assert_true(exists(f, "corrupt", link_qid) && !exists(f, "queue", link_qid));
    assert_true(exists(f, "corrupt", "00000000000fff00"));
    assert_int_equal(count_dir(f, "corrupt"), want_corrupt);
    assert_int_equal(access(target, F_OK), 0); /* the link's target is untouched */
    /* Asked for by id, a link is refused too. */
    path_of(f, "queue", link_qid, p, sizeof(p));
    assert_int_equal(symlink(target, p), 0);
    assert_int_equal(spool_open_message(f->sp, link_qid), -1);
    assert_null(spool_load(f->sp, link_qid));
    assert_int_equal(unlink(p), 0);
    assert_int_equal(unlink(target), 0);
}

/* A spool (or subdirectory) others may write to, or that another user
 * owns, is refused by spool_check and spool_open alike. */
static void
test_spool_trust(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *sub; /* "" for the spool itself */
        mode_t mode;
        const char *want; /* NULL: accepted */
    } cases[] = {
        { "", 0700, NULL },
        { "", 0755, NULL },
        { "", 0777, "writable by group or others" },
        { "", 0770, "writable by group or others" },
        { "", 01777, "writable by group or others" },
        { "tmp", 0722, "writable by group or others" },
        { "queue", 0777, "writable by group or others" },
        { "corrupt", 0730, "writable by group or others" },
        { "queue", 0750, NULL },
    };
    char missing[256];
    spool_free(f->sp); /* one spool object per directory at a time */
    f->sp = NULL;
    snprintf(missing, sizeof(missing), "%s/not-yet", f->dir);
    {
        struct buf err = BUF_INIT;
        assert_int_equal(spool_check(missing, &err), 0); /* made at start */
        assert_int_equal(access(missing, F_OK), -1);     /* but not by --check */
        buf_fini(&err);
    }
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char dir[256];
        struct buf err = BUF_INIT, err2 = BUF_INIT;
        struct spool *sp;
        snprintf(dir, sizeof(dir), "%s%s%s", f->spool, cases[i].sub[0] ? "/" : "", cases[i].sub);
        print_message("%s %o\n", dir, (unsigned)cases[i].mode);
        assert_int_equal(chmod(dir, cases[i].mode), 0);
        assert_int_equal(spool_check(f->spool, &err), cases[i].want ? -1 : 0);
        sp = spool_open(f->spool, f->base, &err2);
        if (cases[i].want != NULL) {
            assert_null(sp);
            assert_non_null(strstr(err.data, dir));
            assert_non_null(strstr(err.data, cases[i].want));
            assert_non_null(strstr(err2.data, cases[i].want));
        } else {
            assert_non_null(sp);
        }
        spool_free(sp);
        assert_int_equal(chmod(dir, 0700), 0);
        buf_fini(&err);
        buf_fini(&err2);
    }
    if (geteuid() == 0) {
        struct buf err = BUF_INIT;
        assert_int_equal(chown(f->spool, 65534, 65534), 0);
        assert_int_equal(spool_check(f->spool, &err), -1);
        assert_non_null(strstr(err.data, "owned by uid 65534"));
        assert_int_equal(chown(f->spool, 0, 0), 0);
        buf_fini(&err);
    }
}

static void
test_tmp_leftovers(void **state)
{
    struct fx *f = *state;
    struct spool_env *env = simple_env();
    struct spool_writer *w = spool_writer_new(f->sp, env);
    char p[256];
    int fd;
    assert_non_null(w);
    assert_int_equal(spool_writer_write(w, "abc", 3), 0);
    path_of(f, "tmp", "junk", p, sizeof(p));
    fd = open(p, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    /* simulate a crash: the writer's file stays behind */
    char saved[SPOOL_QID_LEN + 1];
    memcpy(saved, env->qid, sizeof(saved));
    struct spool_env *env2 = simple_env();
    struct spool_writer *w2 = spool_writer_new(f->sp, env2);
    assert_non_null(w2);
    assert_int_equal(count_dir(f, "tmp"), 3);
    spool_writer_abort(w2); /* abort removes its tmp file */
    assert_int_equal(count_dir(f, "tmp"), 2);
    spool_writer_abort(w);
    fd = open(p, O_CREAT | O_WRONLY, 0600);
    close(fd);
    path_of(f, "tmp", saved, p, sizeof(p));
    fd = open(p, O_CREAT | O_WRONLY, 0600);
    close(fd);
    assert_int_equal(count_dir(f, "tmp"), 2);
    reopen(f);
    assert_int_equal(count_dir(f, "tmp"), 0);
    assert_int_equal(count_dir(f, "queue"), 0);
    spool_env_free(env);
    spool_env_free(env2);
}

static void
test_open_layout(void **state)
{
    struct fx *f = *state;
    struct stat st;
    assert_int_equal(stat(f->spool, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_string_equal(spool_dir(f->sp), f->spool);
    assert_int_equal(count_dir(f, "queue"), 0);
    assert_int_equal(count_dir(f, "corrupt"), 0);
    /* a file where the directory should be */
    char p[256];
    struct buf err = BUF_INIT;
    snprintf(p, sizeof(p), "%s/file", f->dir);
    int fd = open(p, O_CREAT | O_WRONLY, 0600);
    close(fd);
    assert_null(spool_open(p, f->base, &err));
    assert_true(err.len > 0);
    buf_fini(&err);
}

static void
test_many_commits(void **state)
{
    struct fx *f = *state;
    char body[2048];
    memset(body, 'm', sizeof(body));
    spool_set_commit_hook(f->sp, hook, f);
    for (int i = 0; i < 1000; i++)
        commit_one(f, NULL, body, sizeof(body));
    wait_cbs(f, 1000);
    assert_int_equal(f->nok, 1000);
    assert_int_equal(f->nhook, 1000);
    assert_int_equal(count_dir(f, "queue"), 1000);
    assert_int_equal(count_dir(f, "tmp"), 0);
    /* unique: 1000 distinct files exist; check every qid is there */
    for (int i = 0; i < 1000; i++)
        assert_true(exists(f, "queue", f->qids[i]));
}

static void
test_free_in_flight(void **state)
{
    struct fx *f = *state;
    for (int i = 0; i < 50; i++)
        commit_one(f, NULL, "z", 1);
    spool_free(f->sp); /* runs the 50 callbacks itself */
    f->sp = NULL;
    assert_int_equal(f->ncb, 50);
    assert_int_equal(f->nok, 50);
    assert_int_equal(event_base_loop(f->base, EVLOOP_NONBLOCK), 1); /* nothing left */
    fx_open(f);
    assert_int_equal(count_dir(f, "queue"), 50);
}

static void
test_update_after_remove(void **state)
{
    struct fx *f = *state;
    int id = commit_one(f, NULL, "z", 1);
    wait_cbs(f, 1);
    assert_int_equal(spool_remove(f->sp, f->qids[id]), 0);
    spool_update_rcpt(f->sp, f->qids[id], 0, RCPT_DELIVERED, 1, NULL);
    spool_update_held(f->sp, f->qids[id], true);
    spool_update_held(f->sp, "../../etc/passwd", true);
    reopen(f);
    assert_int_equal(count_dir(f, "queue"), 0);
    assert_int_equal(spool_remove(f->sp, f->qids[id]), -1);
    assert_int_equal(errno, ENOENT);
    assert_null(spool_load(f->sp, f->qids[id]));
    assert_int_equal(errno, ENOENT);
    assert_null(spool_load(f->sp, "../queue/x"));
    assert_int_equal(errno, ENOENT);
}

static void
test_write_failure(void **state)
{
    struct fx *f = *state;
    struct spool_env *env = simple_env();
    struct spool_writer *w = spool_writer_new(f->sp, env);
    char big[SPOOL_WBUF_SIZE];
    int ro = open("/dev/null", O_RDONLY);
    assert_non_null(w);
    memcpy(f->qids[0], env->qid, sizeof(f->qids[0]));
    /* make the next write(2) fail as a full disk would */
    assert_true(dup2(ro, w->fd) == w->fd);
    close(ro);
    memset(big, 'q', sizeof(big));
    assert_int_equal(spool_writer_write(w, big, sizeof(big)), -1);
    assert_int_equal(errno, EBADF);
    assert_int_equal(spool_writer_write(w, "x", 1), -1); /* stays failed */
    spool_writer_commit(w, commit_cb, 0, f);
    wait_cbs(f, 1);
    assert_int_equal(f->nok, 0);
    assert_int_equal(f->last_err, EBADF);
    assert_false(exists(f, "tmp", env->qid));
    assert_false(exists(f, "queue", env->qid));
    spool_env_free(env);
}

static void
test_writer_rejects(void **state)
{
    struct fx *f = *state;
    struct spool_env *env = xcalloc(1, sizeof(*env));
    env->sender = xstrdup("a@b");
    errno = 0;
    assert_null(spool_writer_new(f->sp, env)); /* no recipients */
    assert_int_equal(errno, EINVAL);
    char *huge = xmalloc(SPOOL_LINE_MAX + 10);
    memset(huge, 'a', SPOOL_LINE_MAX + 9);
    huge[SPOOL_LINE_MAX + 9] = '\0';
    spool_env_add_rcpt(env, huge, NULL, 0);
    assert_null(spool_writer_new(f->sp, env));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(count_dir(f, "tmp"), 0);
    free(huge);
    spool_env_free(env);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_unescape_bad),
        cmocka_unit_test(test_env_parse_lines),
        cmocka_unit_test(test_status_lines),
        cmocka_unit_test(test_env_dup_grow),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_applied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_untrusted_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_trust, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tmp_leftovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_after_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_rejects, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

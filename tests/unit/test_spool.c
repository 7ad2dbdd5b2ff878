/*
 * Unit tests of src/spool on real files in a mkdtemp directory: the part A
 * codecs (tables), commit and load round trips (bodies kept stuffed,
 * content read back unstuffed, spilled chunks), group commit (one sync for a
 * pile of messages), STATE and DONE across a reopen, rotation and deletion
 * of dead segments, compaction of a nearly dead oldest segment, a torn tail
 * and a damaged record, the offline scan, and the conversion of an old
 * one-file-per-message spool. Completions arrive through a libevent loop,
 * as in the daemon.
 */
#include <setjmp.h> /* cmocka.h needs these first */
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool/spool.h"
#include "spool/spool_int.h"
#include "util/crc32c.h"
#include "util/log.h"
#include "util/loopq.h"
#include "util/util.h"

#define MAXQ 3000

struct fx {
    char dir[64];
    char spool[128];
    struct event_base *base;
    struct loopq *q;
    struct spool *sp;
    uint64_t seg_size;
    int ncb, nok, nhook, nfound, ndone;
    int last_err;
    char qids[MAXQ][SPOOL_QID_LEN + 1];
    struct spool_entry found[MAXQ];
};

static void
hook(const struct spool_env *env, void *arg)
{
    struct fx *f = arg;
    f->nhook++;
    assert_true(env->n_ext > 0 || env->stored_len == 0);
}

static void
fx_open(struct fx *f)
{
    struct buf err = BUF_INIT;
    struct spool_opts o = { .segment_size = f->seg_size };
    f->sp = spool_open(f->spool, f->q, &o, &err);
    if (f->sp == NULL)
        fail_msg("spool_open: %s", err.data ? err.data : "?");
    spool_set_commit_hook(f->sp, hook, f);
    buf_fini(&err);
}

static void
found_fn(const struct spool_entry *v, size_t n, void *arg)
{
    struct fx *f = arg;
    for (size_t i = 0; i < n; i++) {
        assert_true(f->nfound < MAXQ);
        f->found[f->nfound++] = v[i];
    }
}

static void
done_fn(void *arg, long count)
{
    struct fx *f = arg;
    f->ndone++;
    assert_int_equal(count, f->nfound);
}

static void
run_until(struct fx *f, int *counter, int want)
{
    for (int i = 0; i < 20000 && *counter < want; i++)
        event_base_loop(f->base, EVLOOP_ONCE);
    assert_int_equal(*counter, want);
}

/* Open and recover; the entries found are in f->found. */
static void
fx_recover(struct fx *f)
{
    fx_open(f);
    f->nfound = f->ndone = 0;
    spool_recover(f->sp, found_fn, done_fn, f);
    run_until(f, &f->ndone, 1);
    assert_true(spool_recovered(f->sp));
}

static void
fx_close(struct fx *f)
{
    spool_free(f->sp);
    f->sp = NULL;
    loopq_run(f->q);
}

static int
setup(void **state)
{
    struct fx *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_spool.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->spool, sizeof(f->spool), "%s/a/spool", f->dir);
    f->base = event_base_new();
    f->q = loopq_new(f->base);
    assert_non_null(f->q);
    log_set_level(LOG_CRIT); /* the tests check files, not log lines */
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
    if (f->sp != NULL)
        fx_close(f);
    loopq_free(f->q);
    event_base_free(f->base);
    rm_tree(f->dir);
    free(f);
    return 0;
}

static struct spool_env *
make_env(const char *sender, int nrcpt)
{
    struct spool_env *e = xcalloc(1, sizeof(*e));
    e->sender = xstrdup(sender);
    e->helo = xstrdup("client.example");
    e->client_addr = xstrdup("192.0.2.1");
    for (int i = 0; i < nrcpt; i++) {
        char a[64];
        snprintf(a, sizeof(a), "rcpt%d@example.org", i);
        spool_env_add_rcpt(e, a, i == 0 ? "rfc822;x@y" : NULL, i == 0 ? DSN_NOTIFY_FAILURE : 0);
    }
    return e;
}

static void
commit_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct fx *f = arg;
    f->ncb++;
    f->nok += ok;
    f->last_err = err;
    assert_true(id < MAXQ);
    memcpy(f->qids[id], qid, SPOOL_QID_LEN + 1);
}

/* Commit one message with content body (written through write()). */
static void
commit_one(struct fx *f, uint64_t id, const char *body, size_t len)
{
    struct spool_env *e = make_env("s@example.com", 2);
    struct spool_writer *w = spool_writer_new(f->sp, e);
    spool_writer_write(w, body, len);
    spool_writer_commit(w, f->q, commit_cb, id, f);
    spool_env_free(e);
}

/* All of a message's content, unstuffed. */
static char *
read_content(struct fx *f, const struct spool_env *env, size_t *len)
{
    struct spool_content *c = spool_content_open(f->sp, env);
    struct buf b = BUF_INIT;
    const char *p;
    size_t n;
    int r;
    while ((r = spool_content_next(c, &p, &n)) == 1)
        buf_append(&b, p, n);
    if (r != 0)
        fail_msg("content read failed: %s", strerror(errno));
    spool_content_close(c);
    *len = b.len;
    return buf_take(&b);
}

/* All of a message's stored bytes, through the sendfile pieces. */
static char *
read_stored(struct fx *f, const struct spool_env *env, size_t *len)
{
    const struct spool_body_piece *v;
    size_t n;
    struct spool_body *b = spool_body_open(f->sp, env, &v, &n);
    struct buf out = BUF_INIT;
    assert_non_null(b);
    for (size_t i = 0; i < n; i++) {
        char *p = xmalloc(v[i].len + 1);
        assert_int_equal(pread(v[i].fd, p, v[i].len, (off_t)v[i].off), (ssize_t)v[i].len);
        buf_append(&out, p, v[i].len);
        free(p);
    }
    spool_body_close(b);
    *len = out.len;
    return buf_take(&out);
}

/* ---- codec ---- */

static void
test_env_roundtrip(void **state)
{
    struct spool_env *e = make_env("a b%c@example.com", 3), *d;
    struct buf b = BUF_INIT;
    memcpy(e->qid, "0123456789abcdef", 17);
    e->arrival_ms = 1234567;
    e->envid = xstrdup("ENV-1");
    e->ret = DSN_RET_HDRS;
    e->body = BODY_8BITMIME;
    e->smtputf8 = true;
    e->body_len = 10;
    e->stored_len = 11;
    e->prefix = xstrdup("DKIM-Signature: a=b;\r\n\tc=d\r\n");
    e->ext = xcalloc(2, sizeof(*e->ext));
    e->ext[0] = (struct spool_extent){ 3, 100, 20 };
    e->ext[1] = (struct spool_extent){ 4, 64, 30 };
    e->n_ext = 2;
    assert_int_equal(spool_env_encode(e, &b), 0);
    d = spool_env_decode(b.data, b.len);
    assert_non_null(d);
    assert_string_equal(d->sender, "a b%c@example.com");
    assert_string_equal(d->envid, "ENV-1");
    assert_string_equal(d->prefix, e->prefix);
    assert_int_equal(d->n_rcpts, 3);
    assert_string_equal(d->rcpts[0].orcpt, "rfc822;x@y");
    assert_int_equal(d->n_ext, 2);
    assert_int_equal(d->ext[1].seg, 4);
    assert_int_equal(d->ext[1].len, 30);
    assert_int_equal(d->body_len, 10);
    assert_int_equal(d->stored_len, 11);
    assert_true(d->smtputf8);
    /* Every truncation, and a flipped tag, is refused. */
    for (size_t n = 0; n < b.len; n++) {
        struct spool_env *x = spool_env_decode(b.data, n);
        if (x != NULL && n < b.len) {
            /* only a cut right after a full optional line may parse */
            assert_true(b.data[n - 1] == '\n');
        }
        spool_env_free(x);
    }
    b.data[0] = 'Z';
    assert_null(spool_env_decode(b.data, b.len));
    spool_env_free(d);
    spool_env_free(e);
    buf_fini(&b);
}

/* A recipient's kind: written as a fourth T field only when set (so an
 * envelope without one reads as before), read back, and bounded. */
static void
test_env_rcpt_kind(void **state)
{
    static const struct {
        const char *t; /* the T line's value */
        bool ok;
        unsigned kind;
    } cases[] = {
        { "a@x - 0", true, 0 }, { "a@x - 1 1", true, RCPT_K_ARCHIVE },
        { "a@x - 1 0", false, 0 },          /* 0 is never written */
        { "a@x - 1 2", false, 0 },          /* unknown kind */
        { "a@x - 1 1 1", false, 0 },        /* one field too many */
        { "a@x - 1 ", false, 0 },           /* empty field */
        { "a@x - 1 99999999999", false, 0 } /* out of range */
    };
    struct spool_env *e = make_env("s@x", 2), *d;
    struct buf b = BUF_INIT;
    (void)state;
    memcpy(e->qid, "0123456789abcdef", 17);
    e->rcpts[1].kind = RCPT_K_ARCHIVE;
    e->rcpts[1].notify = DSN_NOTIFY_NEVER;
    assert_int_equal(spool_env_encode(e, &b), 0);
    assert_non_null(strstr(b.data, " 1 1\n"));
    d = spool_env_decode(b.data, b.len);
    assert_non_null(d);
    assert_int_equal(d->rcpts[0].kind, 0);
    assert_int_equal(d->rcpts[1].kind, RCPT_K_ARCHIVE);
    assert_int_equal(d->rcpts[1].notify, DSN_NOTIFY_NEVER);
    spool_env_free(d);
    d = spool_env_dup(e);
    assert_int_equal(d->rcpts[1].kind, RCPT_K_ARCHIVE);
    spool_env_free(d);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf t = BUF_INIT;
        buf_printf(&t,
            "Q 0123456789abcdef\nA 1\nS s@x\nE -\nR 0\nB 0\nU 0\nX 0\nH -\nC -\n"
            "T %s\nL 0 0\n",
            cases[i].t);
        d = spool_env_decode(t.data, t.len);
        if (cases[i].ok) {
            assert_non_null(d);
            assert_int_equal(d->rcpts[0].kind, cases[i].kind);
        } else {
            assert_null(d);
        }
        spool_env_free(d);
        buf_fini(&t);
    }
    spool_env_free(e);
    buf_fini(&b);
}

static void
test_state_roundtrip(void **state)
{
    struct spool_env *e = make_env("s@x", 3), *d = make_env("s@x", 3);
    struct buf b = BUF_INIT;
    int64_t next;
    uint32_t pending;
    bool held = false;
    e->held = true;
    e->rcpts[0].state = RCPT_DELIVERED;
    e->rcpts[0].attempts = 1;
    e->rcpts[1].state = RCPT_QUEUED;
    e->rcpts[1].attempts = 2;
    e->rcpts[1].next_try_ms = 99000;
    e->rcpts[1].last_error = xstrdup("451 4.3.0 try \"later\" %");
    e->rcpts[2].state = RCPT_FAILED_DSN;
    spool_state_encode(e, &b);
    d->rcpts[0].attempts = 7; /* a snapshot replaces what was there */
    assert_int_equal(spool_state_apply(d, b.data, b.len), 0);
    assert_true(d->held);
    assert_int_equal(d->rcpts[0].state, RCPT_DELIVERED);
    assert_int_equal(d->rcpts[0].attempts, 1);
    assert_int_equal(d->rcpts[1].next_try_ms, 99000);
    assert_string_equal(d->rcpts[1].last_error, "451 4.3.0 try \"later\" %");
    assert_int_equal(d->rcpts[2].state, RCPT_FAILED_DSN);
    assert_int_equal(spool_state_summary(b.data, b.len, &next, &pending, &held), 0);
    assert_int_equal(next, 99000);
    assert_int_equal(pending, 2); /* one queued, one DSN owed */
    assert_true(held);
    /* A recipient index past the envelope is damage. */
    buf_append_str(&b, "r 9 0 0 0 0 -\n");
    assert_int_equal(spool_state_apply(d, b.data, b.len), -1);
    buf_fini(&b);
    spool_env_free(d);
    spool_env_free(e);
}

/* Attempts kept with the message: in the STATE snapshot (escaped, NULL
 * relay kept NULL), the latest SPOOL_ATTEMPTS_MAX only, copied by dup, and
 * a damaged line refused. */
static void
test_state_attempts(void **state)
{
    struct spool_env *e = make_env("s@x", 2), *d = make_env("s@x", 2), *c;
    struct buf b = BUF_INIT;
    int64_t next;
    uint32_t pending;
    bool held;
    spool_env_add_attempt(e, 1, SPOOL_ATT_DEFERRED, "mx.x[10.0.0.1]:25 tls=TLSv1.3/X/256",
        "451 4.3.0 busy, try\tlater \"now\"");
    spool_env_add_attempt(e, 0, SPOOL_ATT_DELIVERED, NULL, "250 ok");
    spool_state_encode(e, &b);
    assert_int_equal(spool_state_apply(d, b.data, b.len), 0);
    assert_int_equal(d->n_attempts, 2);
    assert_int_equal(d->attempts[0].rcpt, 1);
    assert_int_equal(d->attempts[0].ev, SPOOL_ATT_DEFERRED);
    assert_string_equal(d->attempts[0].relay, "mx.x[10.0.0.1]:25 tls=TLSv1.3/X/256");
    assert_string_equal(d->attempts[0].reply, "451 4.3.0 busy, try\tlater \"now\"");
    assert_true(d->attempts[0].time_ms > 0);
    assert_null(d->attempts[1].relay);
    assert_string_equal(d->attempts[1].reply, "250 ok");
    assert_int_equal(spool_state_summary(b.data, b.len, &next, &pending, &held), 0);
    /* A snapshot replaces the list. */
    buf_reset(&b);
    for (int i = 0; i < SPOOL_ATTEMPTS_MAX + 5; i++) {
        char reply[32];
        snprintf(reply, sizeof(reply), "451 try %d", i);
        spool_env_add_attempt(e, 0, SPOOL_ATT_DEFERRED, "h", reply);
    }
    assert_int_equal(e->n_attempts, SPOOL_ATTEMPTS_MAX);
    assert_string_equal(e->attempts[0].reply, "451 try 5");
    c = spool_env_dup(e);
    assert_int_equal(c->n_attempts, SPOOL_ATTEMPTS_MAX);
    assert_string_equal(c->attempts[SPOOL_ATTEMPTS_MAX - 1].reply, "451 try 36");
    spool_state_encode(c, &b);
    assert_int_equal(spool_state_apply(d, b.data, b.len), 0);
    assert_int_equal(d->n_attempts, SPOOL_ATTEMPTS_MAX);
    assert_string_equal(d->attempts[0].reply, "451 try 5");
    /* Damage: a recipient past the envelope, an unknown event, a field short. */
    {
        static const char *const bad[] = { "a 1 9 0 - -\n", "a 1 0 7 - -\n", "a 1 0 0 -\n" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            struct buf t = BUF_INIT;
            buf_append_str(&t, "h 0\n");
            buf_append_str(&t, bad[i]);
            assert_int_equal(spool_state_apply(d, t.data, t.len), -1);
            buf_fini(&t);
        }
    }
    buf_fini(&b);
    spool_env_free(c);
    spool_env_free(d);
    spool_env_free(e);
}

static void
test_record_header(void **state)
{
    struct rec_hdr h = { REC_MSG, 0, 0, 10, 20, 0x1122334455667788ull, 7, 0xaabbccdd, 5 }, g;
    unsigned char raw[REC_HDR_LEN];
    rec_hdr_encode(&h, raw);
    assert_int_equal(rec_hdr_decode(raw, &g), 0);
    assert_int_equal(g.qid, h.qid);
    assert_int_equal(g.len_b, 20);
    for (size_t i = 0; i < REC_HDR_LEN; i++) {
        raw[i] ^= 0x40;
        assert_int_equal(rec_hdr_decode(raw, &g), -1);
        raw[i] ^= 0x40;
    }
}

/* ---- commit and load ---- */

static void
test_commit_load(void **state)
{
    struct fx *f = *state;
    static const char body[] = "Subject: hi\r\n\r\n.leading dot\r\n..two\r\nend\r\n";
    struct spool_env *env;
    size_t n;
    char *p;
    fx_recover(f);
    commit_one(f, 0, body, sizeof(body) - 1);
    run_until(f, &f->ncb, 1);
    assert_int_equal(f->nok, 1);
    assert_int_equal(f->nhook, 1);
    env = spool_load(f->sp, f->qids[0]);
    assert_non_null(env);
    assert_string_equal(env->qid, f->qids[0]);
    assert_int_equal(env->n_rcpts, 2);
    assert_int_equal(env->body_len, sizeof(body) - 1);
    assert_int_equal(env->stored_len, sizeof(body) - 1 + 2); /* two lines start with "." */
    p = read_stored(f, env, &n);
    assert_int_equal(n, env->stored_len);
    assert_memory_equal(p, "Subject: hi\r\n\r\n..leading dot\r\n...two\r\nend\r\n", n);
    free(p);
    p = read_content(f, env, &n);
    assert_int_equal(n, sizeof(body) - 1);
    assert_memory_equal(p, body, n);
    free(p);
    spool_env_free(env);
    errno = 0;
    assert_null(spool_load(f->sp, "0000000000000000"));
    assert_int_equal(errno, ENOENT);
}

static void
test_add_stuffed_moves(void **state)
{
    struct fx *f = *state;
    struct evbuffer *in = evbuffer_new();
    struct spool_env *e = make_env("s@x", 1), *env;
    struct spool_writer *w;
    const char raw[] = "A: b\r\n\r\n..x\r\n";
    size_t n;
    char *p;
    fx_recover(f);
    w = spool_writer_new(f->sp, e);
    spool_writer_write(w, "Received: x\r\n", 13);
    evbuffer_add(in, raw, sizeof(raw) - 1);
    evbuffer_add(in, ".\r\n", 3); /* the end of DATA stays in the input */
    spool_writer_add_stuffed(w, in, sizeof(raw) - 1, sizeof(raw) - 2);
    assert_int_equal(evbuffer_get_length(in), 3);
    spool_writer_commit(w, f->q, commit_cb, 0, f);
    run_until(f, &f->ncb, 1);
    env = spool_load(f->sp, f->qids[0]);
    p = read_content(f, env, &n);
    assert_int_equal(n, 13 + sizeof(raw) - 2);
    assert_memory_equal(p, "Received: x\r\nA: b\r\n\r\n.x\r\n", n);
    assert_int_equal(env->body_len, n);
    free(p);
    spool_env_free(env);
    spool_env_free(e);
    evbuffer_free(in);
}

/* The tee gets what is written, unstuffed, whatever the path, until the
 * commit; the prefix moves from a writer to the one replacing it. */
static void
test_tee(void **state)
{
    struct fx *f = *state;
    struct evbuffer *in = evbuffer_new();
    struct spool_env *e = make_env("s@x", 1);
    struct spool_writer *w, *w2;
    struct spool_env *env;
    struct buf copy = BUF_INIT;
    const char raw[] = "A: b\r\n\r\n..x\r\n.";
    fx_recover(f);
    w = spool_writer_new(f->sp, e);
    spool_writer_tee(w, &copy);
    spool_writer_write(w, "Received: x\r\n", 13);
    evbuffer_add(in, raw, sizeof(raw) - 1);
    /* Cut after a dot that starts a line: stuffing state carries over. */
    spool_writer_add_stuffed(w, in, sizeof(raw) - 1, sizeof(raw) - 3);
    evbuffer_add(in, ".y\r\n", 4);
    spool_writer_add_stuffed(w, in, 4, 4);
    spool_writer_write(w, ".z\r\n", 4);
    assert_int_equal(copy.len, strlen("Received: x\r\nA: b\r\n\r\n.x\r\n.y\r\n.z\r\n"));
    assert_string_equal(copy.data, "Received: x\r\nA: b\r\n\r\n.x\r\n.y\r\n.z\r\n");
    assert_int_equal(spool_writer_size(w), copy.len);
    spool_writer_tee(w, NULL);
    spool_writer_write(w, "more\r\n", 6);
    assert_int_equal(copy.len, spool_writer_size(w) - 6);
    spool_writer_abort(w);
    /* A writer's prefix taken by its replacement, which commits it. */
    free(e->prefix);
    e->prefix = xstrdup("X-Prefix: 1\r\n");
    w = spool_writer_new(f->sp, e);
    free(e->prefix);
    e->prefix = NULL;
    w2 = spool_writer_new(f->sp, e);
    spool_writer_write(w2, "A: b\r\n\r\nbody\r\n", 15);
    spool_writer_take_prefix(w2, w);
    spool_writer_abort(w);
    spool_writer_commit(w2, f->q, commit_cb, 0, f);
    run_until(f, &f->ncb, 1);
    env = spool_load(f->sp, f->qids[0]);
    assert_non_null(env);
    assert_string_equal(env->prefix, "X-Prefix: 1\r\n");
    spool_env_free(env);
    buf_fini(&copy);
    spool_env_free(e);
    evbuffer_free(in);
}

/* Messages larger than the spill size are written in chunks first. */
static void
test_spill(void **state)
{
    struct fx *f = *state;
    size_t len = 3 * 1024 * 1024 + 17;
    char *big = xmalloc(len), *p;
    struct spool_env *env;
    size_t n;
    f->seg_size = 2 * 1024 * 1024; /* spill at 256 KiB; chunks across segments */
    for (size_t i = 0; i < len; i++)
        big[i] = (i % 100 == 98) ? '\r' : (i % 100 == 99) ? '\n' : (char)('a' + i % 26);
    big[100] = '.';
    fx_recover(f);
    commit_one(f, 0, big, len);
    run_until(f, &f->ncb, 1);
    assert_int_equal(f->nok, 1);
    env = spool_load(f->sp, f->qids[0]);
    assert_true(env->n_ext > 4);
    p = read_content(f, env, &n);
    assert_int_equal(n, len);
    assert_memory_equal(p, big, len);
    free(p);
    spool_env_free(env);
    /* After a reopen, the body is checked (every chunk's CRC) and intact. */
    fx_close(f);
    fx_recover(f);
    assert_int_equal(f->nfound, 1);
    env = spool_load(f->sp, f->qids[0]);
    p = read_content(f, env, &n);
    assert_int_equal(n, len);
    assert_memory_equal(p, big, len);
    free(p);
    spool_env_free(env);
    free(big);
}

static void
test_group_commit(void **state)
{
    struct fx *f = *state;
    struct spool_stats st;
    fx_recover(f);
    for (int i = 0; i < 1000; i++)
        commit_one(f, (uint64_t)i, "x\r\n", 3);
    run_until(f, &f->ncb, 1000);
    assert_int_equal(f->nok, 1000);
    spool_get_stats(f->sp, &st);
    /* Piled up while the first synced: far fewer syncs than messages. */
    assert_true(st.syncs < 200);
    assert_int_equal(st.live_messages, 1000);
}

/* ---- the life of a message across restarts ---- */

static void
test_state_done_reopen(void **state)
{
    struct fx *f = *state;
    struct spool_env *env;
    fx_recover(f);
    for (int i = 0; i < 3; i++)
        commit_one(f, (uint64_t)i, "m\r\n", 3);
    run_until(f, &f->ncb, 3);
    env = spool_load(f->sp, f->qids[1]);
    env->rcpts[0].state = RCPT_DELIVERED;
    env->rcpts[0].attempts = 1;
    env->rcpts[1].attempts = 1;
    env->rcpts[1].next_try_ms = tern_now_ms() + 60000;
    env->rcpts[1].last_error = xstrdup("421 busy");
    env->held = true;
    spool_update_state(f->sp, env);
    /* Seen by a load at once, before it is written. */
    {
        struct spool_env *e2 = spool_load(f->sp, f->qids[1]);
        assert_true(e2->held);
        assert_int_equal(e2->rcpts[0].state, RCPT_DELIVERED);
        spool_env_free(e2);
    }
    spool_env_free(env);
    spool_remove(f->sp, f->qids[2]);
    fx_close(f);
    fx_recover(f);
    assert_int_equal(f->nfound, 2);
    for (int i = 0; i < f->nfound; i++) {
        if (strcmp(f->found[i].qid, f->qids[1]) == 0) {
            assert_true(f->found[i].held);
            assert_int_equal(f->found[i].n_pending, 1);
            assert_true(f->found[i].next_try_ms > tern_now_ms());
        } else {
            assert_string_equal(f->found[i].qid, f->qids[0]);
            assert_int_equal(f->found[i].n_pending, 2);
            assert_int_equal(f->found[i].next_try_ms, 0);
        }
    }
    env = spool_load(f->sp, f->qids[1]);
    assert_string_equal(env->rcpts[1].last_error, "421 busy");
    spool_env_free(env);
    assert_null(spool_load(f->sp, f->qids[2]));
}

static int
count_files(struct fx *f, const char *suffix)
{
    char p[256];
    DIR *d;
    struct dirent *de;
    int n = 0;
    snprintf(p, sizeof(p), "%s/log", f->spool);
    d = opendir(p);
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > 4 && strcmp(de->d_name + l - 4, suffix) == 0)
            n++;
    }
    closedir(d);
    return n;
}

static void
wait_segments(struct fx *f, int want)
{
    for (int i = 0; i < 500 && count_files(f, ".seg") > want; i++) {
        spool_sync_wait(f->sp);
        usleep(10000);
    }
    assert_true(count_files(f, ".seg") <= want);
}

/* The size of log/NAME, or -1. */
static long long
file_size(struct fx *f, const char *name)
{
    char p[256];
    struct stat st;
    snprintf(p, sizeof(p), "%s/log/%s", f->spool, name);
    return stat(p, &st) == 0 ? (long long)st.st_size : -1;
}

/* Segment files are made ahead (spares a whole segment long) and reused
 * once reclaimed; a reused file's tail holds records of its earlier life,
 * which recovery must neither take for damage nor bring back. */
static void
test_spares_reused(void **state)
{
    struct fx *f = *state;
    char *body = xmalloc(50000);
    int base = 0, saw_spare = 0, full_segs = 0;
    memset(body, 's', 50000);
    memcpy(body + 49998, "\r\n", 2);
    f->seg_size = 1024 * 1024;
    fx_recover(f);
    for (int round = 0; round < 8; round++) {
        /* 30 messages: more than a segment. */
        for (int i = 0; i < 30; i++)
            commit_one(f, (uint64_t)(base + i), body, 50000);
        run_until(f, &f->ncb, base + 30);
        /* Everything before the last two of this round is delivered. */
        for (int i = 0; i < base + 28; i++) {
            if (f->qids[i][0] != '\0') {
                spool_remove(f->sp, f->qids[i]);
                f->qids[i][0] = '\0';
            }
        }
        for (int k = 0; k < 100; k++) {
            DIR *d;
            struct dirent *de;
            char p[256];
            int spares = 0;
            snprintf(p, sizeof(p), "%s/log", f->spool);
            d = opendir(p);
            assert_non_null(d);
            while ((de = readdir(d)) != NULL) {
                size_t l = strlen(de->d_name);
                spares += strncmp(de->d_name, "spare.", 6) == 0;
                if (l > 4 && strcmp(de->d_name + l - 4, ".seg") == 0 &&
                    file_size(f, de->d_name) == (long long)f->seg_size)
                    full_segs++;
            }
            closedir(d);
            if (spares > 0) {
                saw_spare++;
                break;
            }
            spool_sync_wait(f->sp);
            usleep(10000);
        }
        base += 30;
    }
    assert_true(saw_spare > 0);
    fx_close(f);
    /* One more message after a restart: the segments of the last run are
     * then older than the newest, so a stop inside one would be damage. */
    fx_recover(f);
    commit_one(f, (uint64_t)base, "x\r\n", 3);
    run_until(f, &f->ncb, base + 1);
    fx_close(f);
    /* Segments made from spares are a whole segment long (seen above). */
    {
        DIR *d;
        struct dirent *de;
        char p[256];
        snprintf(p, sizeof(p), "%s/log", f->spool);
        d = opendir(p);
        assert_non_null(d);
        while ((de = readdir(d)) != NULL) {
            size_t l = strlen(de->d_name);
            if (l > 4 && strcmp(de->d_name + l - 4, ".idx") == 0) {
                char q[300];
                snprintf(q, sizeof(q), "%s/%s", p, de->d_name);
                assert_int_equal(unlink(q), 0); /* recovery scans every segment */
            }
        }
        closedir(d);
    }
    assert_true(full_segs > 0);
    {
        char lp[256], logbuf[65536];
        int lfd;
        ssize_t n;
        snprintf(lp, sizeof(lp), "%s/recover.log", f->dir);
        lfd = open(lp, O_RDWR | O_CREAT | O_TRUNC, 0600);
        assert_true(lfd >= 0);
        log_set_fd(lfd);
        log_set_level(LOG_INFO);
        fx_recover(f);
        log_flush();
        log_set_level(LOG_CRIT);
        log_set_fd(2);
        n = pread(lfd, logbuf, sizeof(logbuf) - 1, 0);
        assert_true(n >= 0);
        logbuf[n] = '\0';
        close(lfd);
        /* A stale tail is the clean end of a reused file, not damage. */
        assert_null(strstr(logbuf, "spool damaged_segment "));
    }
    /* Exactly the last three messages: nothing of the files' earlier lives. */
    assert_int_equal(f->nfound, 3);
    for (int i = 0; i < f->nfound; i++) {
        bool known = strcmp(f->found[i].qid, f->qids[base - 1]) == 0 ||
                     strcmp(f->found[i].qid, f->qids[base - 2]) == 0 ||
                     strcmp(f->found[i].qid, f->qids[base]) == 0;
        assert_true(known);
    }
    {
        struct spool_env *env = spool_load(f->sp, f->qids[base - 1]);
        size_t n;
        char *p;
        assert_non_null(env);
        p = read_content(f, env, &n);
        assert_int_equal(n, 50000);
        assert_memory_equal(p, body, n);
        free(p);
        spool_env_free(env);
    }
    free(body);
}

static void
test_rotation_and_reclaim(void **state)
{
    struct fx *f = *state;
    char *body = xmalloc(100000);
    memset(body, 'x', 100000);
    memcpy(body + 99998, "\r\n", 2);
    f->seg_size = 1024 * 1024;
    fx_recover(f);
    for (int i = 0; i < 40; i++)
        commit_one(f, (uint64_t)i, body, 100000);
    run_until(f, &f->ncb, 40);
    assert_true(count_files(f, ".seg") >= 4);
    for (int i = 0; i < 40; i++)
        spool_remove(f->sp, f->qids[i]);
    /* Dead sealed segments go; the active one stays. */
    wait_segments(f, 1);
    fx_close(f);
    fx_recover(f);
    assert_int_equal(f->nfound, 0);
    free(body);
}

/* Messages of the oldest segment that are being delivered (removed one
 * after another) are not copied forward: the segment empties by itself. */
static void
test_no_compaction_while_draining(void **state)
{
    struct fx *f = *state;
    char *body = xmalloc(50000);
    struct spool_env *env;
    struct spool_stats st;
    memset(body, 'y', 50000);
    memcpy(body + 49998, "\r\n", 2);
    f->seg_size = 1024 * 1024;
    fx_recover(f);
    for (int i = 0; i < 100; i++)
        commit_one(f, (uint64_t)i, body, 50000);
    run_until(f, &f->ncb, 100);
    env = spool_load(f->sp, f->qids[0]);
    env->rcpts[0].attempts = 3;
    spool_update_state(f->sp, env);
    spool_env_free(env);
    /* Messages 0..4 stay (a quarter of a segment at most: worth compacting
     * if they stayed put), the rest go now. */
    for (int i = 5; i < 100; i++)
        spool_remove(f->sp, f->qids[i]);
    /* 1..4 are delivered one every 400 ms: never compacted. */
    for (int i = 1; i <= 4; i++) {
        for (int k = 0; k < 20; k++) {
            spool_sync_wait(f->sp);
            usleep(20000);
        }
        spool_get_stats(f->sp, &st);
        assert_int_equal(st.compacted, 0);
        spool_remove(f->sp, f->qids[i]);
    }
    /* Message 0 stays put: it is copied forward within a few intervals. */
    for (int i = 0; i < 300; i++) {
        spool_get_stats(f->sp, &st);
        if (st.compacted > 0)
            break;
        spool_sync_wait(f->sp);
        usleep(20000);
    }
    assert_int_equal(st.compacted, 1);
    free(body);
}

static void
test_compaction(void **state)
{
    struct fx *f = *state;
    char *body = xmalloc(50000);
    struct spool_env *env;
    struct spool_stats st;
    size_t n;
    char *p;
    memset(body, 'y', 50000);
    memcpy(body + 49998, "\r\n", 2);
    f->seg_size = 1024 * 1024;
    fx_recover(f);
    for (int i = 0; i < 100; i++)
        commit_one(f, (uint64_t)i, body, 50000);
    run_until(f, &f->ncb, 100);
    /* Keep message 0 (in the oldest segment) alive, with a state. */
    env = spool_load(f->sp, f->qids[0]);
    env->rcpts[0].attempts = 3;
    spool_update_state(f->sp, env);
    spool_env_free(env);
    for (int i = 1; i < 100; i++)
        spool_remove(f->sp, f->qids[i]);
    for (int i = 0; i < 300; i++) {
        spool_get_stats(f->sp, &st);
        if (st.compacted > 0 && count_files(f, ".seg") <= 2)
            break;
        spool_sync_wait(f->sp);
        usleep(20000);
    }
    assert_true(st.compacted > 0);
    assert_true(count_files(f, ".seg") <= 2);
    fx_close(f);
    fx_recover(f);
    assert_int_equal(f->nfound, 1);
    env = spool_load(f->sp, f->qids[0]);
    assert_int_equal(env->rcpts[0].attempts, 3);
    p = read_content(f, env, &n);
    assert_int_equal(n, 50000);
    assert_memory_equal(p, body, n);
    free(p);
    spool_env_free(env);
    free(body);
}

/* The newest segment torn by a crash: what is whole stays. */
static void
test_torn_tail(void **state)
{
    struct fx *f = *state;
    char p[256];
    struct stat st;
    fx_recover(f);
    for (int i = 0; i < 5; i++)
        commit_one(f, (uint64_t)i, "hello\r\n", 7);
    run_until(f, &f->ncb, 5);
    spool_free(f->sp); /* seals the segment and writes its .idx */
    f->sp = NULL;
    loopq_run(f->q);
    /* As after a crash: no index, and the last record cut short. */
    snprintf(p, sizeof(p), "%s/log/0000000000000001.idx", f->spool);
    assert_int_equal(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/log/0000000000000001.seg", f->spool);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(truncate(p, st.st_size - 5), 0);
    fx_recover(f);
    assert_int_equal(f->nfound, 4);
    assert_null(spool_load(f->sp, f->qids[4]));
}

/* A damaged record inside an older segment with no index: the records
 * before it stay, the damage is reported (and nothing acknowledged is
 * silently dropped without a log line); the newest segment is unaffected. */
static void
test_damaged_middle(void **state)
{
    struct fx *f = *state;
    char p[256];
    unsigned char byte;
    int fd;
    fx_recover(f);
    for (int i = 0; i < 3; i++)
        commit_one(f, (uint64_t)i, "abc\r\n", 5);
    run_until(f, &f->ncb, 3);
    fx_close(f);
    fx_recover(f); /* a second segment: the first is no longer the newest */
    commit_one(f, 3, "def\r\n", 5);
    run_until(f, &f->ncb, 4);
    fx_close(f);
    snprintf(p, sizeof(p), "%s/log/0000000000000001.idx", f->spool);
    assert_int_equal(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/log/0000000000000001.seg", f->spool);
    fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    /* The second record's header: the first record is 48 + part A + 5. */
    {
        struct spool_env *e = make_env("s@example.com", 2);
        struct buf a = BUF_INIT;
        off_t at;
        memcpy(e->qid, f->qids[0], 17);
        e->arrival_ms = 1;
        e->body_len = e->stored_len = 5;
        assert_int_equal(spool_env_encode(e, &a), 0);
        (void)a;
        at = SEG_HDR_LEN + REC_HDR_LEN + 20; /* inside record 1's part A */
        assert_int_equal(pread(fd, &byte, 1, at), 1);
        byte ^= 0x20;
        assert_int_equal(pwrite(fd, &byte, 1, at), 1);
        buf_fini(&a);
        spool_env_free(e);
    }
    close(fd);
    fx_recover(f);
    /* The first segment stops at its first record; the newest is whole. */
    assert_int_equal(f->nfound, 1);
    assert_string_equal(f->found[0].qid, f->qids[3]);
}

static void
test_abort_spilled(void **state)
{
    struct fx *f = *state;
    size_t len = 1024 * 1024;
    char *big = xmalloc(len);
    struct spool_env *e = make_env("s@x", 1);
    struct spool_writer *w;
    memset(big, 'q', len);
    fx_recover(f);
    w = spool_writer_new(f->sp, e);
    spool_writer_write(w, big, len);
    spool_writer_abort(w); /* after chunks went to the commit thread */
    commit_one(f, 0, "ok\r\n", 4);
    run_until(f, &f->ncb, 1);
    assert_int_equal(f->nok, 1);
    fx_close(f);
    fx_recover(f);
    assert_int_equal(f->nfound, 1);
    spool_env_free(e);
    free(big);
}

/* A write error (here: the file size limit) fails the batch's messages
 * with the errno; the spool goes on once the disk takes writes again. */
static void
test_write_error(void **state)
{
    struct fx *f = *state;
    struct rlimit old, lim;
    char *body = xmalloc(200000);
    memset(body, 'z', 200000);
    fx_recover(f);
    commit_one(f, 0, "before\r\n", 8);
    run_until(f, &f->ncb, 1);
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 100000;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    commit_one(f, 1, body, 200000);
    run_until(f, &f->ncb, 2);
    assert_int_equal(f->nok, 1);
    assert_int_equal(f->last_err, EFBIG);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    commit_one(f, 2, "after\r\n", 7);
    run_until(f, &f->ncb, 3);
    assert_int_equal(f->nok, 2);
    fx_close(f);
    fx_recover(f);
    assert_int_equal(f->nfound, 2);
    free(body);
}

static void
scan_fn(struct spool_env *env, void *arg)
{
    struct fx *f = arg;
    assert_int_equal(env->n_rcpts, 2);
    f->nfound++;
    spool_env_free(env);
}

static void
test_offline_scan(void **state)
{
    struct fx *f = *state;
    struct buf err = BUF_INIT;
    fx_recover(f);
    for (int i = 0; i < 7; i++)
        commit_one(f, (uint64_t)i, "x\r\n", 3);
    run_until(f, &f->ncb, 7);
    spool_remove(f->sp, f->qids[3]);
    spool_sync_wait(f->sp);
    /* While the daemon's spool is open. */
    f->nfound = 0;
    assert_int_equal(spool_scan(f->spool, scan_fn, f, &err), 6);
    fx_close(f);
    f->nfound = 0;
    assert_int_equal(spool_scan(f->spool, scan_fn, f, &err), 6);
    assert_int_equal(spool_scan("/nonexistent-spool", scan_fn, f, &err), -1);
    buf_fini(&err);
}

/* ---- what the spool refuses to trust ---- */

/* Entries of log/ that ternd could not have made are ignored without being
 * read: a FIFO named like a segment (opening it must not block), a symbolic
 * link to a good segment (never followed), and, as root, a good segment of
 * another owner. */
static void
test_untrusted_segments(void **state)
{
    struct fx *f = *state;
    char p[256], target[256];
    fx_recover(f);
    commit_one(f, 0, "x\r\n", 3);
    run_until(f, &f->ncb, 1);
    fx_close(f);
    /* Segment 1 moves out of the spool; a link to it takes its place. */
    snprintf(p, sizeof(p), "%s/log/0000000000000001.seg", f->spool);
    snprintf(target, sizeof(target), "%s/outside.seg", f->dir);
    assert_int_equal(rename(p, target), 0);
    assert_int_equal(symlink(target, p), 0);
    snprintf(p, sizeof(p), "%s/log/0000000000000001.idx", f->spool);
    unlink(p);
    snprintf(p, sizeof(p), "%s/log/00000000000fff00.seg", f->spool);
    assert_int_equal(mkfifo(p, 0600), 0);
    if (geteuid() == 0) {
        char q[256];
        snprintf(q, sizeof(q), "%s/log/0000000000000009.seg", f->spool);
        assert_int_equal(link(target, q) == 0 || symlink(target, q) == 0, 1);
        assert_int_equal(lchown(q, 65534, 65534), 0);
    }
    fx_recover(f);
    assert_int_equal(f->nfound, 0);
    assert_null(spool_load(f->sp, f->qids[0]));
    assert_int_equal(access(target, F_OK), 0); /* the link's target is untouched */
}

/* A spool (or subdirectory) others may write to, or that another user
 * owns, or a subdirectory that is a symbolic link, is refused by
 * spool_check and spool_open alike. */
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
        { "log", 0722, "writable by group or others" },
        { "corrupt", 0730, "writable by group or others" },
        { "queue", 0777, "writable by group or others" }, /* an old spool's */
        { "log", 0750, NULL },
    };
    char missing[256], p[256];
    struct buf err = BUF_INIT;
    snprintf(missing, sizeof(missing), "%s/not-yet", f->dir);
    assert_int_equal(spool_check(missing, &err), 0); /* made at start */
    assert_int_equal(access(missing, F_OK), -1);     /* but not by --check */
    fx_recover(f);
    fx_close(f);
    snprintf(p, sizeof(p), "%s/queue", f->spool);
    assert_int_equal(mkdir(p, 0700), 0);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char dir[256];
        struct buf err1 = BUF_INIT, err2 = BUF_INIT;
        struct spool *sp;
        snprintf(dir, sizeof(dir), "%s%s%s", f->spool, cases[i].sub[0] ? "/" : "", cases[i].sub);
        print_message("%s %o\n", dir, (unsigned)cases[i].mode);
        assert_int_equal(chmod(dir, cases[i].mode), 0);
        assert_int_equal(spool_check(f->spool, &err1), cases[i].want ? -1 : 0);
        sp = spool_open(f->spool, f->q, NULL, &err2);
        if (cases[i].want != NULL) {
            assert_null(sp);
            assert_non_null(strstr(err1.data, dir));
            assert_non_null(strstr(err1.data, cases[i].want));
            assert_non_null(strstr(err2.data, cases[i].want));
        } else {
            assert_non_null(sp);
        }
        spool_free(sp);
        assert_int_equal(chmod(dir, 0700), 0);
        buf_fini(&err1);
        buf_fini(&err2);
    }
    /* A subdirectory that is a symbolic link. */
    assert_int_equal(rmdir(p), 0);
    assert_int_equal(symlink(f->dir, p), 0);
    assert_int_equal(spool_check(f->spool, &err), -1);
    assert_non_null(strstr(err.data, "symbolic link"));
    assert_int_equal(unlink(p), 0);
    buf_reset(&err);
    if (geteuid() == 0) {
        assert_int_equal(chown(f->spool, 65534, 65534), 0);
        assert_int_equal(spool_check(f->spool, &err), -1);
        assert_non_null(strstr(err.data, "owned by uid 65534"));
        assert_int_equal(chown(f->spool, 0, 0), 0);
    }
    buf_fini(&err);
}

/* ---- the old layout ---- */

static void
write_old(struct fx *f, const char *qid, const char *body, const char *status)
{
    char p[256], hdr[64], end[32];
    struct buf env = BUF_INIT, file = BUF_INIT;
    uint32_t ecrc, bcrc;
    FILE *fp;
    buf_printf(&env,
        "Q %s\nA 1700000000000\nS old@example.com\nE -\nR 0\nB 0\nU 0\nX 0\nH h\nC 1.2.3.4\n"
        "T a@example.org - 0\nT b@example.org - 0\n",
        qid);
    ecrc = crc32c(0, env.data, env.len);
    bcrc = crc32c(0, body, strlen(body));
    snprintf(
        hdr, sizeof(hdr), "TERN1 body=%020zu len=%020zu\n", (size_t)57 + env.len, strlen(body));
    snprintf(end, sizeof(end), "\nEND %08x %08x\n", ecrc, bcrc);
    buf_append_str(&file, hdr);
    buf_append(&file, env.data, env.len);
    buf_append_str(&file, body);
    buf_append_str(&file, end);
    if (status != NULL) {
        char line[128];
        snprintf(line, sizeof(line), "%s", status);
        buf_printf(&file, "%s %08x\n", line, crc32c(0, line, strlen(line)));
    }
    snprintf(p, sizeof(p), "%s/queue", f->spool);
    mkdir(p, 0700);
    snprintf(p, sizeof(p), "%s/queue/%s", f->spool, qid);
    fp = fopen(p, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(file.data, 1, file.len, fp), file.len);
    assert_int_equal(fclose(fp), 0);
    buf_fini(&env);
    buf_fini(&file);
}

static void
test_convert_old_spool(void **state)
{
    struct fx *f = *state;
    char p[256];
    struct spool_env *env;
    size_t n;
    char *c;
    assert_int_equal(mkdir(f->dir, 0700) == 0 || errno == EEXIST, 1);
    snprintf(p, sizeof(p), "%s/a", f->dir);
    mkdir(p, 0700);
    mkdir(f->spool, 0700);
    write_old(f, "00000000000000aa", "Subject: old\r\n\r\n.dot\r\n", "s 0 1 1 250%20ok");
    write_old(f, "00000000000000bb", "x\r\n", NULL);
    snprintf(p, sizeof(p), "%s/queue/00000000000000cc", f->spool);
    assert_int_equal(mkfifo(p, 0600), 0); /* never opened for reading */
    fx_recover(f);
    run_until(f, &f->nhook, 2);
    env = spool_load(f->sp, "00000000000000aa");
    assert_non_null(env);
    assert_int_equal(env->arrival_ms, 1700000000000);
    assert_int_equal(env->rcpts[0].state, RCPT_DELIVERED);
    assert_string_equal(env->rcpts[0].last_error, "250 ok");
    c = read_content(f, env, &n);
    assert_int_equal(n, 22);
    assert_memory_equal(c, "Subject: old\r\n\r\n.dot\r\n", n);
    free(c);
    spool_env_free(env);
    snprintf(p, sizeof(p), "%s/queue/00000000000000aa", f->spool);
    assert_int_equal(access(p, F_OK), -1);
}

/* Old files whose status lines check but do not parse are set aside, not
 * converted, whatever the broken line is (a bad escape in a prefix line
 * once freed a pointer it never set). */
static void
test_convert_bad_status(void **state)
{
    static const struct {
        const char *qid, *status;
    } cases[] = {
        { "00000000000000d1", "d %ZZ" },
        { "00000000000000d2", "d Subject:%20no%20CRLF" },
        { "00000000000000d3", "d %" },
        { "00000000000000d4", "s 0 9 1 -" },
        { "00000000000000d5", "s 0 1 1 %G0" },
    };
    struct fx *f = *state;
    char p[256];
    assert_int_equal(mkdir(f->dir, 0700) == 0 || errno == EEXIST, 1);
    snprintf(p, sizeof(p), "%s/a", f->dir);
    mkdir(p, 0700);
    mkdir(f->spool, 0700);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++)
        write_old(f, cases[i].qid, "x\r\n", cases[i].status);
    fx_recover(f);
    assert_int_equal(f->nfound, 0);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        snprintf(p, sizeof(p), "%s/corrupt/%s", f->spool, cases[i].qid);
        assert_int_equal(access(p, F_OK), 0);
        assert_null(spool_load(f->sp, cases[i].qid));
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_roundtrip),
        cmocka_unit_test(test_env_rcpt_kind),
        cmocka_unit_test(test_state_roundtrip),
        cmocka_unit_test(test_state_attempts),
        cmocka_unit_test(test_record_header),
        cmocka_unit_test_setup_teardown(test_commit_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_stuffed_moves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tee, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_done_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_and_reclaim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spares_reused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_compaction_while_draining, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_offline_scan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_middle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_spilled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_convert_old_spool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_convert_bad_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrusted_segments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_trust, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

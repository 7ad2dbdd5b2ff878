/*
 * Writers and the commit thread. A writer collects a message in memory (an
 * evbuffer whose chains are moved in from the session, never copied), posts
 * CHUNK items for what passes the spill size, and at commit hands itself to
 * the commit thread (through the finisher pool first when it has a finisher).
 * The commit thread takes every pending item at once, appends the records
 * with a few pwritev calls at the end of the active segment, makes one
 * fdatasync when anything in the batch needs it, then updates the index and
 * posts the completions. Rotation, sealing (.idx), deletion of dead segments
 * (oldest first) and compaction happen on this thread too, between batches.
 */
#include "spool/spool_int.h"

#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "util/crc32c.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/util.h"

#define SPOOL_SPILL      (256u * 1024) /* bytes a writer keeps before spilling a CHUNK */
#define RETRY_MAX        100000        /* STATE/DONE records kept for a failed write */
#define COMPACT_EVERY_MS 1000
#define GATHER_MAX_US    1000 /* the longest a batch waits for more messages */
#define PREP_THREADS     2
#define READ_THREADS     2

enum item_kind { IT_MSG, IT_CHUNK, IT_STATE, IT_DONE, IT_SYNC, IT_FINISH, IT_ABORT, IT_MOVE };

struct item {
    struct workq_item wq; /* first: a workq_item * is a struct item * */
    enum item_kind kind;
};

struct spool_writer {
    struct item it;
    struct spool *sp;
    struct spool_env *env; /* owned */
    struct evbuffer *body; /* stored form not yet spilled */
    uint64_t content_len, stored_len;
    bool at_bol;     /* write(): the next byte starts a line */
    struct buf *tee; /* borrowed or NULL: gets the content too, unstuffed */
    unsigned chunks; /* CHUNK items posted */
    /* Written by the commit thread only (after the writer was handed over,
     * or by CHUNK items, which come first in the FIFO). */
    struct spool_extent *ext;
    size_t n_ext, cap_ext;
    uint64_t chunk_bytes; /* record bytes of the chunks, for compaction */
    int chunk_err;        /* a CHUNK could not be written */
    /* finisher */
    spool_finish_fn fin;
    void (*fin_free)(void *arg);
    void *fin_arg;
    /* completion */
    struct loopq *to;
    spool_commit_cb cb;
    uint64_t cb_id;
    void *cb_arg;
    int err; /* 0: durable */
    struct loopq_item hook_item, cb_item;
    bool cb_with_hook; /* the hook's item runs the callback too */
    atomic_int refs;   /* the completion items still to run */
};

struct chunk_item {
    struct item it;
    struct spool_writer *w;
    struct evbuffer *buf;
};

struct meta_item { /* STATE and DONE */
    struct item it;
    uint64_t qid;
    struct buf a; /* STATE part A */
    int64_t next_try_ms;
    uint32_t pending;
    bool held;
};

struct sync_item {
    struct item it;
    void (*cb)(void *arg, int err);
    void *arg;
    int err;
    /* spool_sync_wait: the caller sleeps on these instead of a callback */
    pthread_mutex_t *mu;
    pthread_cond_t *cond;
    bool *done;
    int *errp;
};

/* ---------------------------------------------------------------- qids */

/* 32 bits of seconds, 20 bits of microseconds, a 12-bit counter: unique
 * within this process, and ordered by time as Postfix's long queue ids. */
static void
make_qid(char out[SPOOL_QID_LEN + 1])
{
    static atomic_uint counter;
    struct timespec ts;
    uint64_t v;
    clock_gettime(CLOCK_REALTIME, &ts);
    v = (uint64_t)(uint32_t)ts.tv_sec << 32 | (uint64_t)(ts.tv_nsec / 1000) << 12 |
        (atomic_fetch_add(&counter, 1) & 0xfffu);
    qid_text(v, out);
}

/* ---------------------------------------------------------------- writers */

struct spool_writer *
spool_writer_new_keep(struct spool *sp, const struct spool_env *env)
{
    struct spool_writer *w = xcalloc(1, sizeof(*w));
    w->sp = sp;
    w->env = spool_env_dup(env);
    w->body = evbuffer_new();
    if (w->body == NULL)
        tern_panic("evbuffer_new failed");
    w->at_bol = true;
    atomic_init(&w->refs, 0);
    return w;
}

struct spool_writer *
spool_writer_new(struct spool *sp, struct spool_env *env)
{
    make_qid(env->qid);
    env->arrival_ms = tern_now_ms();
    return spool_writer_new_keep(sp, env);
}

const char *
spool_writer_qid(const struct spool_writer *w)
{
    return w->env->qid;
}

void
spool_writer_hold(struct spool_writer *w)
{
    w->env->held = true;
}

int
spool_writer_set_prefix(struct spool_writer *w, const char *fields)
{
    if (!spool_prefix_valid(fields, strlen(fields)))
        return -1;
    free(w->env->prefix);
    w->env->prefix = xstrdup(fields);
    return 0;
}

uint64_t
spool_writer_size(const struct spool_writer *w)
{
    return w->content_len;
}

static uint64_t
spill_size(const struct spool *sp)
{
    uint64_t s = sp->seg_size / 4;
    return s < SPOOL_SPILL ? s : SPOOL_SPILL;
}

/* Hand what passes the spill size to the commit thread, a piece at a time
 * (each piece fits in any segment). */
static void
maybe_spill(struct spool_writer *w)
{
    uint64_t spill = spill_size(w->sp);
    while (evbuffer_get_length(w->body) >= spill) {
        struct chunk_item *c = xcalloc(1, sizeof(*c));
        c->it.kind = IT_CHUNK;
        c->w = w;
        c->buf = evbuffer_new();
        if (c->buf == NULL || evbuffer_remove_buffer(w->body, c->buf, spill) != (int)spill)
            tern_panic("cannot move message bytes");
        w->chunks++;
        workq_submit(w->sp->commitq, &c->it.wq);
    }
}

/* The tee's copy of n stuffed bytes of src: a line's leading dot is
 * doubled there (RFC 5321 §4.5.2), once in the copy. */
static void
tee_stuffed(struct spool_writer *w, struct evbuffer *src, size_t n)
{
    struct evbuffer_iovec v[16];
    struct evbuffer_ptr pos;
    bool bol = w->at_bol;
    if (evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET) < 0)
        tern_panic("evbuffer_ptr_set failed");
    while (n > 0) {
        int k = evbuffer_peek(src, (ev_ssize_t)n, &pos, v, 16);
        size_t done = 0;
        if (k <= 0)
            break;
        for (int i = 0; i < k && i < 16 && n > 0; i++) {
            const char *p = v[i].iov_base;
            size_t len = v[i].iov_len < n ? v[i].iov_len : n;
            for (size_t j = 0; j < len; j++) {
                if (!(bol && p[j] == '.'))
                    buf_append_char(w->tee, p[j]);
                bol = p[j] == '\n';
            }
            n -= len;
            done += len;
        }
        if (evbuffer_ptr_set(src, &pos, done, EVBUFFER_PTR_ADD) < 0)
            break;
    }
}

void
spool_writer_tee(struct spool_writer *w, struct buf *copy)
{
    w->tee = copy;
}

void
spool_writer_take_prefix(struct spool_writer *to, struct spool_writer *from)
{
    free(to->env->prefix);
    to->env->prefix = from->env->prefix;
    from->env->prefix = NULL;
}

void
spool_writer_add_stuffed(struct spool_writer *w, struct evbuffer *src, size_t n, uint64_t content_n)
{
    TERN_ASSERT(n <= INT_MAX);
    if (n == 0)
        return;
    if (w->tee != NULL)
        tee_stuffed(w, src, n);
    if (evbuffer_remove_buffer(src, w->body, n) != (int)n)
        tern_panic("cannot move message bytes");
    w->stored_len += n;
    w->content_len += content_n;
    /* Stuffed input ends where the caller's data ended: the next write()
     * starts a line only after a line end. */
    {
        struct evbuffer_ptr p;
        char last = 0;
        evbuffer_ptr_set(w->body, &p, evbuffer_get_length(w->body) - 1, EVBUFFER_PTR_SET);
        if (evbuffer_copyout_from(w->body, &p, &last, 1) == 1)
            w->at_bol = last == '\n';
    }
    maybe_spill(w);
}

void
spool_writer_write(struct spool_writer *w, const void *data, size_t len)
{
    const char *p = data, *end = p + len;
    w->content_len += len;
    if (w->tee != NULL)
        buf_append(w->tee, data, len);
    /* RFC 5321 §4.5.2: a line that starts with "." gets one more. */
    while (p < end) {
        const char *nl;
        size_t n;
        if (w->at_bol && *p == '.') {
            evbuffer_add(w->body, ".", 1);
            w->stored_len++;
        }
        nl = memchr(p, '\n', (size_t)(end - p));
        n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        if (evbuffer_add(w->body, p, n) < 0)
            tern_panic("evbuffer_add failed");
        w->stored_len += n;
        w->at_bol = nl != NULL;
        p += n;
    }
    maybe_spill(w);
}

void
spool_writer_set_finisher(
    struct spool_writer *w, spool_finish_fn fn, void (*free_fn)(void *arg), void *arg)
{
    TERN_ASSERT(w->fin == NULL && w->fin_free == NULL);
    w->fin = fn;
    w->fin_free = free_fn;
    w->fin_arg = arg;
}

static void
finisher_release(struct spool_writer *w)
{
    if (w->fin_free != NULL)
        w->fin_free(w->fin_arg);
    w->fin = NULL;
    w->fin_free = NULL;
    w->fin_arg = NULL;
}

static void
writer_free(struct spool_writer *w)
{
    finisher_release(w);
    if (w->body != NULL)
        evbuffer_free(w->body);
    spool_env_free(w->env);
    free(w->ext);
    free(w);
}

void
spool_writer_abort(struct spool_writer *w)
{
    if (w == NULL)
        return;
    if (w->chunks == 0) {
        writer_free(w);
        return;
    }
    /* CHUNK items still name w: free it after them, on the commit thread. */
    w->it.kind = IT_ABORT;
    workq_submit(w->sp->commitq, &w->it.wq);
}

/* The finisher pool: run the finisher with the whole content at hand. */
static void
prep_run(struct workq_item *wi)
{
    struct spool_writer *w = (struct spool_writer *)wi;
    struct buf pb = BUF_INIT;
    struct spool_content *c;
    if (w->chunk_err == 0 && w->fin != NULL) {
        c = spool_content_writer(w->sp, w->ext, w->n_ext, w->body);
        if (w->fin(w->env->qid, c, &pb, w->fin_arg) == 0 && pb.len > 0) {
            /* The finisher's fields, checked on their own, go on top of
             * those set before (the receiving checks'
             * Authentication-Results): newest first. */
            bool ok = spool_prefix_valid(pb.data, pb.len) && memchr(pb.data, '\0', pb.len) == NULL;
            if (ok && w->env->prefix != NULL) {
                buf_append_str(&pb, w->env->prefix);
                ok = spool_prefix_valid(pb.data, pb.len);
            }
            if (ok) {
                free(w->env->prefix);
                w->env->prefix = buf_take(&pb);
            } else {
                struct logline l;
                log_begin(&l, LOG_ERROR, w->env->qid, "spool", "prefix_refused");
                log_int(&l, "len", (int64_t)pb.len);
                log_end(&l);
            }
        }
        spool_content_close(c);
    }
    finisher_release(w);
    buf_fini(&pb);
    w->it.kind = IT_MSG;
    workq_submit(w->sp->commitq, &w->it.wq);
}

void
spool_writer_add_rcpt(struct spool_writer *w, const char *addr, unsigned notify, unsigned kind)
{
    spool_env_add_rcpt(w->env, addr, NULL, notify);
    w->env->rcpts[w->env->n_rcpts - 1].kind = kind;
}

void
spool_writer_commit(
    struct spool_writer *w, struct loopq *to, spool_commit_cb cb, uint64_t cb_id, void *arg)
{
    w->tee = NULL;
    w->to = to;
    w->cb = cb;
    w->cb_id = cb_id;
    w->cb_arg = arg;
    w->env->body_len = w->content_len;
    w->env->stored_len = w->stored_len;
    if (w->fin != NULL && w->chunks > 0) {
        /* The finisher needs the spilled chunks on disk: go through the
         * commit FIFO first (after them), then the pool. */
        w->it.kind = IT_FINISH;
        workq_submit(w->sp->commitq, &w->it.wq);
    } else if (w->fin != NULL) {
        w->it.wq.run = prep_run;
        workq_submit(w->sp->prepq, &w->it.wq);
    } else {
        w->it.kind = IT_MSG;
        workq_submit(w->sp->commitq, &w->it.wq);
    }
}

/* ---------------------------------------------------------------- completions */

static void
writer_drop_ref(struct spool_writer *w)
{
    if (atomic_fetch_sub(&w->refs, 1) == 1)
        writer_free(w);
}

static void
hook_fn(struct loopq_item *it)
{
    struct spool_writer *w =
        (struct spool_writer *)((char *)it - offsetof(struct spool_writer, hook_item));
    if (w->sp->hook != NULL)
        w->sp->hook(w->env, w->sp->hook_arg);
    if (w->cb_with_hook && w->cb != NULL)
        w->cb(w->cb_id, w->env->qid, true, 0, w->cb_arg);
    writer_drop_ref(w);
}

static void
cb_fn(struct loopq_item *it)
{
    struct spool_writer *w =
        (struct spool_writer *)((char *)it - offsetof(struct spool_writer, cb_item));
    if (w->cb != NULL)
        w->cb(w->cb_id, w->env->qid, w->err == 0, w->err, w->cb_arg);
    writer_drop_ref(w);
}

/* Post the hook (when durable) and the callback; the writer goes with the
 * last of them. */
static void
writer_complete(struct spool *sp, struct spool_writer *w)
{
    bool hook = w->err == 0 && sp->owner != NULL;
    bool cb = w->to != NULL;
    if (!hook && !cb) {
        writer_free(w);
        return;
    }
    /* On one loop, one item: the scheduler has the message before the
     * session answers, in the same pass of that loop. */
    w->cb_with_hook = hook && cb && w->to == sp->owner;
    if (w->cb_with_hook)
        cb = false;
    atomic_store(&w->refs, (int)hook + (int)cb);
    w->hook_item.fn = hook_fn;
    w->cb_item.fn = cb_fn;
    if (hook)
        loopq_post(sp->owner, &w->hook_item);
    if (cb)
        loopq_post(w->to, &w->cb_item);
}

static void
sync_done_fn(struct loopq_item *it)
{
    struct sync_item *s = (struct sync_item *)((char *)it - offsetof(struct sync_item, it.wq.done));
    s->cb(s->arg, s->err);
    free(s);
}

/* ---------------------------------------------------------------- segments */

static void
log_seg_error(uint64_t seq, const char *what, int err)
{
    struct logline l;
    char name[32];
    seg_name(seq, "seg", name, sizeof(name));
    log_begin(&l, LOG_ERROR, NULL, "spool", "segment_error");
    log_str(&l, "segment", name);
    log_str(&l, "op", what);
    log_errno(&l, err);
    log_end(&l);
}

/* ---------------------------------------------------------------- spares */

/* Bytes written to a segment before a spare is made (or a quarter of a
 * smaller segment): a spool that sees little mail never spends a whole
 * segment of zeros. */
#define SPARE_AFTER (1024u * 1024)
#define ZERO_CHUNK  (1024u * 1024)

static void
log_spare_error(uint64_t num, const char *what, int err)
{
    struct logline l;
    char name[32];
    spare_name(num, name, sizeof(name));
    log_begin(&l, LOG_ERROR, NULL, "spool", "segment_error");
    log_str(&l, "segment", name);
    log_str(&l, "op", what);
    log_errno(&l, err);
    log_end(&l);
}

/* Write zeros over [from, to) of fd. */
static int
zero_fill(int fd, uint64_t from, uint64_t to)
{
    char *z;
    int rc = 0;
    if (from >= to)
        return 0;
    z = xcalloc(1, ZERO_CHUNK);
    while (from < to && rc == 0) {
        size_t n = to - from < ZERO_CHUNK ? (size_t)(to - from) : ZERO_CHUNK;
        ssize_t k = pwrite(fd, z, n, (off_t)from);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            rc = -1;
        else
            from += (uint64_t)k;
    }
    free(z);
    return rc;
}

/* The spare worker: make a spare file (or finish a reclaimed segment
 * renamed to its spare name) a whole segment long, every block written and
 * synced, then offer it to the commit thread. */
static void
spare_run(struct workq_item *it)
{
    struct spare_job *j = (struct spare_job *)it;
    struct spool *sp = j->sp;
    char name[32];
    struct stat st;
    const char *op = NULL;
    int fd = j->fd, err = 0;
    spare_name(j->num, name, sizeof(name));
    if (fd < 0) {
        fd = openat(sp->log_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            op = "create";
    }
    if (op == NULL && fstat(fd, &st) < 0)
        op = "stat";
    if (op == NULL && (uint64_t)st.st_size > sp->seg_size && ftruncate(fd, (off_t)sp->seg_size) < 0)
        op = "truncate";
    if (op == NULL &&
        zero_fill(fd, (uint64_t)st.st_size < sp->seg_size ? (uint64_t)st.st_size : sp->seg_size,
            sp->seg_size) < 0)
        op = "fill";
    if (op == NULL && fdatasync(fd) < 0)
        op = "fdatasync";
    if (op != NULL)
        err = errno;
    pthread_mutex_lock(&sp->mu);
    if (op == NULL && sp->n_spares < SPOOL_SPARES_MAX) {
        sp->spare_fd[sp->n_spares] = fd;
        sp->spare_num[sp->n_spares] = j->num;
        sp->n_spares++;
        fd = -1;
    }
    sp->spare_busy = false;
    pthread_mutex_unlock(&sp->mu);
    if (op != NULL)
        log_spare_error(j->num, op, err);
    if (fd >= 0) {
        close(fd);
        unlinkat(sp->log_fd, name, 0);
    }
}

/* Under sp->mu: can a spare job start? It is then marked busy, and its
 * number is *num. */
static bool
spare_claim_locked(struct spool *sp, uint64_t *num)
{
    if (sp->spareq == NULL || sp->readonly || sp->spare_busy || sp->n_spares >= SPOOL_SPARES_MAX)
        return false;
    sp->spare_busy = true;
    *num = sp->next_spare++;
    return true;
}

static void
spare_submit(struct spool *sp, int fd, uint64_t num)
{
    struct spare_job *j = &sp->spare_job;
    memset(&j->wq, 0, sizeof(j->wq));
    j->wq.run = spare_run;
    j->sp = sp;
    j->fd = fd;
    j->num = num;
    workq_submit(sp->spareq, &j->wq);
}

/* After a batch: once the active segment has seen some mail and no spare
 * waits, make one. */
static void
spare_maybe(struct spool *sp)
{
    uint64_t num;
    bool go;
    if (sp->active == NULL ||
        sp->active->end < (sp->seg_size / 4 < SPARE_AFTER ? sp->seg_size / 4 : SPARE_AFTER))
        return;
    pthread_mutex_lock(&sp->mu);
    go = sp->n_spares == 0 && spare_claim_locked(sp, &num);
    pthread_mutex_unlock(&sp->mu);
    if (go)
        spare_submit(sp, -1, num);
}

static bool
spare_ready(struct spool *sp)
{
    bool r;
    pthread_mutex_lock(&sp->mu);
    r = sp->n_spares > 0;
    pthread_mutex_unlock(&sp->mu);
    return r;
}

/* A spare made segment name (its header written first: a crash leaves
 * either the spare or the named segment with its own header). The fd, or
 * -1 when there is no spare or it failed (logged, the spare dropped). */
static int
seg_from_spare(struct spool *sp, const char *name, const unsigned char *hdr)
{
    char sname[32];
    uint64_t num;
    int fd;
    pthread_mutex_lock(&sp->mu);
    if (sp->n_spares == 0) {
        pthread_mutex_unlock(&sp->mu);
        return -1;
    }
    sp->n_spares--;
    fd = sp->spare_fd[sp->n_spares];
    num = sp->spare_num[sp->n_spares];
    pthread_mutex_unlock(&sp->mu);
    spare_name(num, sname, sizeof(sname));
    if (fd_pwrite_full(fd, hdr, SEG_HDR_LEN, 0) < 0 ||
        renameat(sp->log_fd, sname, sp->log_fd, name) < 0) {
        log_spare_error(num, "reuse", errno);
        close(fd);
        unlinkat(sp->log_fd, sname, 0);
        return -1;
    }
    return fd;
}

/* At start: spares left by the last run, a whole segment long, are used
 * again; others (a crash while filling, another segment size) go. */
static void
spares_load(struct spool *sp)
{
    int dfd = openat(sp->log_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    struct dirent *de;
    if (d == NULL) {
        if (dfd >= 0)
            close(dfd);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        uint64_t num;
        struct stat st;
        int fd;
        if (!spare_name_parse(de->d_name, &num))
            continue;
        if (num >= sp->next_spare)
            sp->next_spare = num + 1;
        fd = openat(sp->log_fd, de->d_name, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == sp->owner_uid &&
            (uint64_t)st.st_size == sp->seg_size && sp->n_spares < SPOOL_SPARES_MAX) {
            sp->spare_fd[sp->n_spares] = fd;
            sp->spare_num[sp->n_spares] = num;
            sp->n_spares++;
            continue;
        }
        if (fd >= 0)
            close(fd);
        unlinkat(sp->log_fd, de->d_name, 0);
    }
    closedir(d);
}

/* A new active segment (from a spare, else a new file; header written).
 * -1 with errno. */
static int
seg_create(struct spool *sp)
{
    unsigned char hdr[SEG_HDR_LEN];
    char name[32];
    struct seg *s;
    uint64_t seq = sp->next_seq;
    int fd;
    bool prealloc;
    seg_name(seq, "seg", name, sizeof(name));
    seg_hdr_encode(seq, tern_now_ms(), hdr);
    fd = seg_from_spare(sp, name, hdr);
    prealloc = fd >= 0;
    if (fd < 0) {
        fd = openat(sp->log_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            return -1;
        if (fd_write_full(fd, hdr, SEG_HDR_LEN) < 0) {
            int e = errno;
            close(fd);
            unlinkat(sp->log_fd, name, 0);
            errno = e;
            return -1;
        }
    }
    s = xcalloc(1, sizeof(*s));
    s->seq = seq;
    s->fd = fd;
    s->end = SEG_HDR_LEN;
    s->prealloc = prealloc;
    sp->next_seq++;
    pthread_mutex_lock(&sp->mu);
    segtab_add(&sp->segs, s);
    sp->st.segments++;
    pthread_mutex_unlock(&sp->mu);
    sp->active = s;
    /* A new file's directory entry must be durable before a record in it
     * is acknowledged; the first batch's fsync of log/ is enough. */
    sp->dirty_dir = true;
    return 0;
}

/* Write the sealed segment's index (no sync: it can always be rebuilt). */
void
spool_write_idx(struct spool *sp, struct seg *s)
{
    char name[32], tmp[40];
    struct buf b = BUF_INIT;
    unsigned char rec[IDX_REC_LEN], head[24];
    uint32_t crc;
    int fd;
    memcpy(head, IDX_FILE_MAGIC, 8);
    for (int i = 0; i < 8; i++)
        head[8 + i] = (unsigned char)(s->seq >> (8 * i));
    for (int i = 0; i < 8; i++)
        head[16 + i] = (unsigned char)((uint64_t)s->n_recs >> (8 * i));
    buf_append(&b, head, sizeof(head));
    for (size_t i = 0; i < s->n_recs; i++) {
        idx_rec_encode(&s->recs[i], rec);
        buf_append(&b, rec, sizeof(rec));
    }
    crc = crc32c(0, b.data, b.len);
    for (int i = 0; i < 4; i++)
        buf_append_char(&b, (char)(crc >> (8 * i)));
    seg_name(s->seq, "idx", name, sizeof(name));
    snprintf(tmp, sizeof(tmp), "%s.tmp", name);
    fd = openat(sp->log_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || fd_write_full(fd, b.data, b.len) < 0 || close(fd) < 0 ||
        renameat(sp->log_fd, tmp, sp->log_fd, name) < 0) {
        /* Harmless: recovery scans a segment without an index. */
        log_seg_error(s->seq, "write index", errno);
        if (fd >= 0)
            unlinkat(sp->log_fd, tmp, 0);
    }
    buf_fini(&b);
    FREE_NULL(&s->recs);
    s->n_recs = s->cap_recs = 0;
}

/* A segment made from a spare goes on past its last record with zeros or
 * its earlier life's bytes: an all-zero record header right after the last
 * record marks the clean end for a scan that has no .idx (written before
 * the sync that seals the segment). */
static void
end_mark(struct seg *s, uint64_t seg_size)
{
    static const unsigned char zero[REC_HDR_LEN];
    if (s->prealloc && s->end + REC_HDR_LEN <= seg_size &&
        fd_pwrite_full(s->fd, zero, REC_HDR_LEN, s->end) < 0)
        log_seg_error(s->seq, "end mark", errno);
}

static void
seal_active(struct spool *sp)
{
    struct seg *s = sp->active;
    if (s == NULL)
        return;
    pthread_mutex_lock(&sp->mu);
    s->sealed = true;
    pthread_mutex_unlock(&sp->mu);
    spool_write_idx(sp, s);
    sp->active = NULL;
}

static void
note_rec(struct seg *s, const struct idx_rec *r)
{
    if (s->n_recs == s->cap_recs) {
        s->cap_recs = s->cap_recs ? s->cap_recs * 2 : 1024;
        s->recs = xrealloc(s->recs, s->cap_recs * sizeof(*s->recs));
    }
    s->recs[s->n_recs++] = *r;
}

/* ---------------------------------------------------------------- batches */

#define BATCH_IOV 512

/* Records assembled for the active segment and not yet written. */
struct pending {
    struct iovec iov[BATCH_IOV];
    int n_iov;
    uint64_t bytes;
    unsigned char (*hdrs)[REC_HDR_LEN]; /* header storage for this flush */
    size_t n_hdrs, cap_hdrs;
};

/* One record of the batch, remembered until the writes and the sync are
 * done: what to tell the index and whom to answer. */
struct done_rec {
    struct item *it;
    uint64_t seg;
    uint32_t off, len;
    bool rec;     /* a record was appended for it */
    bool written; /* ... and is in the file */
};

struct batch {
    struct spool *sp;
    struct pending p;
    struct done_rec *recs;
    size_t n_recs, cap_recs;
    struct buf *parts; /* part A texts kept alive until the write */
    size_t n_parts, cap_parts;
    struct seg *touched[4]; /* segments written in this batch, to sync */
    size_t n_touched;
    bool need_sync;
    int err;                /* first write error of the batch */
    size_t first_unwritten; /* recs before this index are in a file */
    /* Writers whose finisher reads their chunks: handed to the finisher
     * pool once this batch has written them (its CHUNKs may be in it). */
    struct workq_item *finish, **finish_tail;
};

static void
touch(struct batch *b, struct seg *s)
{
    for (size_t i = 0; i < b->n_touched; i++) {
        if (b->touched[i] == s)
            return;
    }
    TERN_ASSERT(b->n_touched < TERN_ARRAY_LEN(b->touched));
    b->touched[b->n_touched++] = s;
}

/* A write failed after written reached `end` in s: the records wholly
 * before it stand (a STATE, say, ahead of a message too large for a full
 * disk); the partial one is cut away so the next record follows the last
 * good one. */
static void
keep_whole_records(struct batch *b, struct seg *s, uint64_t end)
{
    uint64_t good = s->end;
    for (size_t i = b->first_unwritten; i < b->n_recs; i++) {
        struct done_rec *d = &b->recs[i];
        if (!d->rec || (uint64_t)d->off + d->len > end)
            continue;
        d->written = true;
        if ((uint64_t)d->off + d->len > good)
            good = (uint64_t)d->off + d->len;
    }
    if (good < end && ftruncate(s->fd, (off_t)good) < 0)
        log_seg_error(s->seq, "truncate", errno);
    if (good > s->end) {
        s->end = good;
        touch(b, s);
        b->sp->dirty = true;
    }
    b->first_unwritten = b->n_recs;
}

/* Write what is pending to the active segment. */
static int
flush_pending(struct batch *b)
{
    struct spool *sp = b->sp;
    struct seg *s = sp->active;
    struct pending *p = &b->p;
    int iov_at = 0;
    uint64_t off;
    if (p->n_iov == 0)
        return 0;
    off = s->end;
    while (iov_at < p->n_iov) {
        ssize_t k = pwritev(s->fd, p->iov + iov_at, p->n_iov - iov_at, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int e = k < 0 ? errno : EIO;
            log_seg_error(s->seq, "write", e);
            keep_whole_records(b, s, off);
            p->n_iov = 0;
            p->bytes = 0;
            p->n_hdrs = 0;
            b->err = e;
            return -1;
        }
        off += (uint64_t)k;
        while (k > 0) {
            if ((size_t)k >= p->iov[iov_at].iov_len) {
                k -= (ssize_t)p->iov[iov_at].iov_len;
                iov_at++;
            } else {
                p->iov[iov_at].iov_base = (char *)p->iov[iov_at].iov_base + k;
                p->iov[iov_at].iov_len -= (size_t)k;
                k = 0;
            }
        }
    }
    s->end = off;
    touch(b, s);
    sp->dirty = true;
    p->n_iov = 0;
    p->bytes = 0;
    p->n_hdrs = 0;
    for (size_t i = b->first_unwritten; i < b->n_recs; i++) {
        if (b->recs[i].rec)
            b->recs[i].written = true;
    }
    b->first_unwritten = b->n_recs;
    return 0;
}

/* Make room for a record of len bytes: when it does not fit, the active
 * segment is written, synced and sealed at once (once per segment), and a
 * new one started. */
static int
room_for(struct batch *b, uint64_t len)
{
    struct spool *sp = b->sp;
    struct seg *old = sp->active;
    if (len > sp->seg_size - SEG_HDR_LEN) {
        errno = EFBIG;
        return -1;
    }
    /* A segment that grows makes every sync a journal commit too: once a
     * spare is ready, the rest goes there. */
    if (old != NULL && old->end + b->p.bytes + len <= sp->seg_size &&
        (old->prealloc || !spare_ready(sp)))
        return 0;
    if (old != NULL) {
        if (flush_pending(b) < 0)
            return -1;
        end_mark(old, sp->seg_size);
        if (fdatasync(old->fd) < 0) {
            b->err = errno;
            log_seg_error(old->seq, "fdatasync", b->err);
            return -1;
        }
        seal_active(sp);
        for (size_t i = 0; i < b->n_touched; i++) {
            if (b->touched[i] == old)
                b->touched[i] = b->touched[--b->n_touched];
        }
    }
    if (seg_create(sp) < 0) {
        b->err = errno;
        log_seg_error(sp->next_seq, "create", errno);
        return -1;
    }
    return 0;
}

static unsigned char *
new_hdr(struct pending *p)
{
    if (p->n_hdrs == p->cap_hdrs) {
        /* Growing would move headers that iovecs point at: flush first. */
        return NULL;
    }
    return p->hdrs[p->n_hdrs++];
}

static void
add_iov(struct pending *p, const void *base, size_t len)
{
    if (len == 0)
        return;
    p->iov[p->n_iov].iov_base = (void *)base;
    p->iov[p->n_iov].iov_len = len;
    p->n_iov++;
    p->bytes += len;
}

static void
add_evbuffer_iov(struct pending *p, struct evbuffer *e)
{
    struct evbuffer_iovec v[64];
    struct evbuffer_ptr ptr;
    size_t left = evbuffer_get_length(e);
    evbuffer_ptr_set(e, &ptr, 0, EVBUFFER_PTR_SET);
    while (left > 0) {
        int n = evbuffer_peek(e, -1, &ptr, v, 64);
        size_t took = 0;
        for (int i = 0; i < n && i < 64; i++) {
            add_iov(p, v[i].iov_base, v[i].iov_len);
            took += v[i].iov_len;
        }
        if (took == 0)
            break;
        left -= took < left ? took : left;
        if (left > 0)
            evbuffer_ptr_set(e, &ptr, took, EVBUFFER_PTR_ADD);
    }
}

static uint32_t
evbuffer_crc(struct evbuffer *e)
{
    struct evbuffer_iovec v[64];
    struct evbuffer_ptr ptr;
    size_t left = evbuffer_get_length(e);
    uint32_t crc = 0;
    evbuffer_ptr_set(e, &ptr, 0, EVBUFFER_PTR_SET);
    while (left > 0) {
        int n = evbuffer_peek(e, -1, &ptr, v, 64);
        size_t took = 0;
        for (int i = 0; i < n && i < 64; i++) {
            crc = crc32c(crc, v[i].iov_base, v[i].iov_len);
            took += v[i].iov_len;
        }
        if (took == 0)
            break;
        left -= took < left ? took : left;
        if (left > 0)
            evbuffer_ptr_set(e, &ptr, took, EVBUFFER_PTR_ADD);
    }
    return crc;
}

/* Count the iovecs an evbuffer needs. */
static int
evbuffer_iovs(struct evbuffer *e)
{
    return evbuffer_peek(e, -1, NULL, NULL, 0);
}

static struct buf *
keep_part(struct batch *b)
{
    if (b->n_parts == b->cap_parts) {
        /* The iovecs point at each text's data, which stays where it is
         * when this array of buffers grows. */
        b->cap_parts = b->cap_parts ? b->cap_parts * 2 : 64;
        b->parts = xrealloc(b->parts, b->cap_parts * sizeof(*b->parts));
    }
    memset(&b->parts[b->n_parts], 0, sizeof(b->parts[0]));
    return &b->parts[b->n_parts++];
}

static struct done_rec *
note_done(struct batch *b, struct item *it)
{
    if (b->n_recs == b->cap_recs) {
        b->cap_recs = b->cap_recs ? b->cap_recs * 2 : 64;
        b->recs = xrealloc(b->recs, b->cap_recs * sizeof(*b->recs));
    }
    memset(&b->recs[b->n_recs], 0, sizeof(b->recs[0]));
    b->recs[b->n_recs].it = it;
    return &b->recs[b->n_recs++];
}

/*
 * Append one record (header, part A in a, part B in e) to the pending
 * writes. Returns the done_rec (its location filled), or NULL with errno.
 */
static struct done_rec *
append_record(struct batch *b, struct item *it, uint8_t type, uint64_t qid, const struct buf *a,
    struct evbuffer *e, const struct idx_rec *ir)
{
    struct spool *sp = b->sp;
    struct pending *p = &b->p;
    struct rec_hdr h;
    unsigned char *hb;
    uint64_t len_b = e ? evbuffer_get_length(e) : 0;
    uint64_t len = REC_HDR_LEN + (a ? a->len : 0) + len_b;
    int need = 2 + (e ? evbuffer_iovs(e) : 0);
    struct done_rec *d;
    struct idx_rec r;
    if (len > UINT32_MAX || room_for(b, len) < 0) {
        if (errno == 0)
            errno = EFBIG;
        return NULL;
    }
    if (p->n_iov + need > BATCH_IOV || p->n_hdrs == p->cap_hdrs) {
        if (flush_pending(b) < 0)
            return NULL;
    }
    if (need > BATCH_IOV) {
        /* A body in very many small chains: make it one first. */
        evbuffer_pullup(e, -1);
        need = 3;
    }
    memset(&h, 0, sizeof(h));
    h.type = type;
    h.len_a = a ? (uint32_t)a->len : 0;
    h.len_b = (uint32_t)len_b;
    h.qid = qid;
    h.seg = sp->active->seq;
    h.crc_a = a ? crc32c(0, a->data, a->len) : 0;
    h.crc_b = e ? evbuffer_crc(e) : 0;
    hb = new_hdr(p);
    TERN_ASSERT(hb != NULL);
    rec_hdr_encode(&h, hb);
    d = note_done(b, it);
    d->rec = true;
    d->seg = sp->active->seq;
    d->off = (uint32_t)(sp->active->end + p->bytes);
    d->len = (uint32_t)len;
    add_iov(p, hb, REC_HDR_LEN);
    if (a != NULL)
        add_iov(p, a->data, a->len);
    if (e != NULL)
        add_evbuffer_iov(p, e);
    r = ir ? *ir : (struct idx_rec){ 0 };
    r.type = type;
    r.off = d->off;
    r.len = d->len;
    r.qid = qid;
    note_rec(sp->active, &r);
    return d;
}

static void
add_chunk(struct batch *b, struct chunk_item *c)
{
    struct spool_writer *w = c->w;
    struct done_rec *d;
    if (w->chunk_err != 0) {
        return; /* the message fails anyway */
    }
    d = append_record(b, &c->it, REC_CHUNK, qid_num(w->env->qid), NULL, c->buf, NULL);
    if (d == NULL) {
        w->chunk_err = errno ? errno : EIO;
        return;
    }
    if (w->n_ext == w->cap_ext) {
        w->cap_ext = w->cap_ext ? w->cap_ext * 2 : 8;
        w->ext = xrealloc(w->ext, w->cap_ext * sizeof(*w->ext));
    }
    w->ext[w->n_ext].seg = d->seg;
    w->ext[w->n_ext].off = d->off + REC_HDR_LEN;
    w->ext[w->n_ext].len = d->len - REC_HDR_LEN;
    w->n_ext++;
    w->chunk_bytes += d->len;
    b->need_sync = true;
}

static void
add_msg(struct batch *b, struct spool_writer *w)
{
    struct buf *a = keep_part(b);
    struct idx_rec ir = { 0 };
    struct done_rec *d;
    if (w->chunk_err != 0) {
        w->err = w->chunk_err;
        note_done(b, &w->it)->written = false;
        return;
    }
    /* Part A names the spilled chunks; part B is the rest of the body. */
    free(w->env->ext);
    w->env->ext = w->n_ext ? xmalloc(w->n_ext * sizeof(*w->ext)) : NULL;
    if (w->n_ext)
        memcpy(w->env->ext, w->ext, w->n_ext * sizeof(*w->ext));
    w->env->n_ext = w->n_ext;
    if (spool_env_encode(w->env, a) < 0) {
        w->err = errno;
        note_done(b, &w->it)->written = false;
        return;
    }
    ir.t1 = w->env->arrival_ms;
    ir.n = (uint32_t)w->env->n_rcpts;
    ir.is_bounce = w->env->is_bounce;
    ir.home = w->n_ext ? w->ext[0].seg : 0;
    d = append_record(b, &w->it, REC_MSG, qid_num(w->env->qid), a, w->body, &ir);
    if (d == NULL) {
        w->err = errno ? errno : EIO;
        note_done(b, &w->it)->written = false;
        return;
    }
    b->need_sync = true;
}

static void
add_meta(struct batch *b, struct meta_item *m)
{
    struct idx_rec ir = { 0 };
    bool state = m->it.kind == IT_STATE;
    if (state) {
        ir.t1 = m->next_try_ms;
        ir.n = m->pending;
        ir.held = m->held;
    }
    if (append_record(b, &m->it, state ? REC_STATE : REC_DONE, m->qid, state ? &m->a : NULL, NULL,
            &ir) == NULL)
        note_done(b, &m->it)->written = false;
}

/* ---------------------------------------------------------------- compaction */

/* A live message copied from the oldest segment to the head. */
struct move_item {
    struct item it;
    uint64_t qid;
    struct loc old_msg;
    struct spool_env *env; /* part A as read; extents replaced when copied */
    struct evbuffer *b;    /* part B */
    struct evbuffer **chunks;
    size_t n_chunks;
    struct buf a, sa; /* new MSG part A; the STATE part A (empty: none) */
    uint64_t new_bytes;
    size_t state_i; /* its STATE's place in the batch's records; 0: none */
};

static void
move_free(struct move_item *m)
{
    spool_env_free(m->env);
    if (m->b != NULL)
        evbuffer_free(m->b);
    for (size_t i = 0; i < m->n_chunks; i++)
        evbuffer_free(m->chunks[i]);
    free(m->chunks);
    buf_fini(&m->a);
    buf_fini(&m->sa);
    free(m);
}

static struct evbuffer *
read_evbuffer(struct spool *sp, uint64_t seq, uint64_t off, size_t n)
{
    char *p = NULL;
    struct evbuffer *e;
    if (spool_read_at(sp, seq, off, n, &p) < 0)
        return NULL;
    e = evbuffer_new();
    if (e == NULL || evbuffer_add(e, p, n) < 0)
        tern_panic("evbuffer failed");
    free(p);
    return e;
}

/* Read qid's MSG record, chunks and state. NULL when it cannot be read: it
 * stays where it is (and so does its segment). */
static struct move_item *
move_prepare(struct spool *sp, uint64_t qid)
{
    struct move_item *m = xcalloc(1, sizeof(*m));
    struct ient e;
    struct ient *ep;
    struct rec_hdr h;
    char *raw = NULL;
    pthread_mutex_lock(&sp->mu);
    ep = index_get(&sp->idx, qid);
    if (ep != NULL) {
        e = *ep;
        spool_pending_state_locked(ep, &m->sa);
    }
    pthread_mutex_unlock(&sp->mu);
    if (ep == NULL)
        goto drop;
    m->it.kind = IT_MOVE;
    m->qid = qid;
    m->old_msg = e.msg;
    if (spool_read_at(sp, e.msg.seg, e.msg.off, e.msg.len, &raw) < 0 ||
        rec_hdr_decode((unsigned char *)raw, &h) < 0 || h.type != REC_MSG ||
        (uint64_t)REC_HDR_LEN + h.len_a + h.len_b != e.msg.len)
        goto fail;
    m->env = spool_env_decode(raw + REC_HDR_LEN, h.len_a);
    if (m->env == NULL)
        goto fail;
    m->chunks = m->env->n_ext ? xcalloc(m->env->n_ext, sizeof(*m->chunks)) : NULL;
    for (size_t i = 0; i < m->env->n_ext; i++) {
        const struct spool_extent *x = &m->env->ext[i];
        m->chunks[i] = read_evbuffer(sp, x->seg, x->off, (size_t)x->len);
        if (m->chunks[i] == NULL)
            goto fail;
        m->n_chunks++;
    }
    m->b = evbuffer_new();
    if (m->b == NULL || evbuffer_add(m->b, raw + REC_HDR_LEN + h.len_a, h.len_b) < 0)
        tern_panic("evbuffer failed");
    FREE_NULL(&raw);
    if (m->sa.len == 0 && e.state.len > 0) {
        struct rec_hdr sh;
        if (spool_read_at(sp, e.state.seg, e.state.off, e.state.len, &raw) < 0 ||
            rec_hdr_decode((unsigned char *)raw, &sh) < 0 || sh.type != REC_STATE ||
            (uint64_t)REC_HDR_LEN + sh.len_a > e.state.len)
            goto fail;
        buf_append(&m->sa, raw + REC_HDR_LEN, sh.len_a);
        FREE_NULL(&raw);
    }
    return m;
fail:
    log_seg_error(e.msg.seg, "compaction read", errno ? errno : EBADMSG);
drop:
    free(raw);
    move_free(m);
    return NULL;
}

/* Append the copies: chunks, MSG with the new extents, STATE. */
static void
move_append(struct batch *b, struct move_item *m)
{
    struct idx_rec ir = { 0 };
    struct done_rec *d;
    for (size_t i = 0; i < m->n_chunks; i++) {
        d = append_record(b, NULL, REC_CHUNK, m->qid, NULL, m->chunks[i], NULL);
        if (d == NULL)
            return;
        m->env->ext[i].seg = d->seg;
        m->env->ext[i].off = d->off + REC_HDR_LEN;
        m->env->ext[i].len = d->len - REC_HDR_LEN;
        m->new_bytes += d->len;
    }
    if (spool_env_encode(m->env, &m->a) < 0)
        return;
    ir.t1 = m->env->arrival_ms;
    ir.n = (uint32_t)m->env->n_rcpts;
    ir.is_bounce = m->env->is_bounce;
    ir.home = m->env->n_ext ? m->env->ext[0].seg : 0;
    d = append_record(b, &m->it, REC_MSG, m->qid, &m->a, m->b, &ir);
    if (d == NULL)
        return;
    m->new_bytes += d->len;
    if (m->sa.len > 0) {
        struct idx_rec sr = { 0 };
        int64_t next;
        uint32_t pending;
        bool held = false;
        if (spool_state_summary(m->sa.data, m->sa.len, &next, &pending, &held) == 0) {
            sr.t1 = next;
            sr.n = pending;
            sr.held = held;
        }
        if (append_record(b, NULL, REC_STATE, m->qid, &m->sa, NULL, &sr) != NULL)
            m->state_i = b->n_recs; /* one past, so 0 means none */
    }
    b->need_sync = true;
}

/* ---------------------------------------------------------------- applying a batch */

#define BATCH_HDRS 256

static void
batch_init(struct batch *b, struct spool *sp)
{
    memset(b, 0, sizeof(*b));
    b->sp = sp;
    b->finish_tail = &b->finish;
    b->p.hdrs = xmalloc(BATCH_HDRS * sizeof(*b->p.hdrs));
    b->p.cap_hdrs = BATCH_HDRS;
}

static void
batch_fini(struct batch *b)
{
    for (size_t i = 0; i < b->n_parts; i++)
        buf_fini(&b->parts[i]);
    free(b->parts);
    free(b->recs);
    free(b->p.hdrs);
}

/* fdatasync every segment the batch wrote, and log/ when a segment file
 * is new. 0, or the first errno. */
static int
sync_touched(struct batch *b)
{
    struct spool *sp = b->sp;
    int err = 0;
    for (size_t i = 0; i < b->n_touched; i++) {
        if (fdatasync(b->touched[i]->fd) < 0 && err == 0) {
            err = errno;
            log_seg_error(b->touched[i]->seq, "fdatasync", err);
        }
    }
    if (err == 0 && sp->dirty_dir) {
        if (fsync(sp->log_fd) < 0) {
            err = errno;
            log_seg_error(0, "fsync log directory", err);
        } else {
            sp->dirty_dir = false;
        }
    }
    pthread_mutex_lock(&sp->mu);
    sp->st.syncs++;
    pthread_mutex_unlock(&sp->mu);
    if (err == 0)
        sp->dirty = false;
    return err;
}

static struct seg *
seg_of(struct spool *sp, uint64_t seq)
{
    return segtab_find(&sp->segs, seq);
}

/* Index changes for one durable MSG (under sp->mu). */
static void
index_add_msg(
    struct spool *sp, uint64_t qid, const struct done_rec *d, uint64_t home, uint64_t bytes)
{
    bool created;
    struct ient *e = index_put(&sp->idx, qid, &created);
    struct seg *s = seg_of(sp, home);
    TERN_ASSERT(created && s != NULL);
    e->home = home;
    e->msg.seg = d->seg;
    e->msg.off = d->off;
    e->msg.len = d->len;
    e->msg_bytes = (uint32_t)(bytes > UINT32_MAX ? UINT32_MAX : bytes);
    e->verified = true;
    s->live++;
    s->live_bytes += e->msg_bytes;
    sp->st.live_messages++;
}

static void
apply_msg(struct spool *sp, struct done_rec *d, int err)
{
    struct spool_writer *w = (struct spool_writer *)d->it;
    if (w->err == 0 && (!d->written || err != 0))
        w->err = err ? err : EIO;
    if (w->err == 0) {
        struct spool_env *env = w->env;
        /* The body: the spilled chunks, then part B. */
        env->ext = xrealloc(env->ext, (w->n_ext + 1) * sizeof(*env->ext));
        env->n_ext = w->n_ext;
        env->ext[env->n_ext].seg = d->seg;
        env->ext[env->n_ext].off =
            d->off + REC_HDR_LEN + (d->len - REC_HDR_LEN - evbuffer_get_length(w->body));
        env->ext[env->n_ext].len = evbuffer_get_length(w->body);
        if (env->ext[env->n_ext].len > 0)
            env->n_ext++;
        pthread_mutex_lock(&sp->mu);
        index_add_msg(
            sp, qid_num(env->qid), d, w->n_ext ? w->ext[0].seg : d->seg, d->len + w->chunk_bytes);
        pthread_mutex_unlock(&sp->mu);
    }
    evbuffer_free(w->body);
    w->body = NULL;
    writer_complete(sp, w);
}

/* A STATE or DONE that could not be written is tried again with the next
 * batch (bounded: past the bound it is dropped with a log line, and the
 * message's state in memory is all that is left of it). */
static void
retry_meta(struct spool *sp, struct meta_item *m, size_t *n_retry)
{
    if (*n_retry >= RETRY_MAX) {
        struct logline l;
        char qid[SPOOL_QID_LEN + 1];
        qid_text(m->qid, qid);
        log_begin(&l, LOG_ERROR, qid, "spool", "state_dropped");
        log_end(&l);
        pthread_mutex_lock(&sp->mu);
        spool_pending_state_forget_locked(sp, m);
        pthread_mutex_unlock(&sp->mu);
        buf_fini(&m->a);
        free(m);
        return;
    }
    m->it.wq.next = sp->retry;
    sp->retry = &m->it.wq;
    (*n_retry)++;
}

static void
apply_meta(struct spool *sp, struct done_rec *d, size_t *n_retry)
{
    struct meta_item *m = (struct meta_item *)d->it;
    struct ient *e;
    if (!d->written) {
        retry_meta(sp, m, n_retry);
        return;
    }
    pthread_mutex_lock(&sp->mu);
    e = index_get(&sp->idx, m->qid);
    if (e != NULL && m->it.kind == IT_STATE) {
        e->state.seg = d->seg;
        e->state.off = d->off;
        e->state.len = d->len;
    } else if (e != NULL) {
        struct seg *s = seg_of(sp, e->home);
        TERN_ASSERT(s != NULL && s->live > 0);
        s->live--;
        s->live_bytes -= e->msg_bytes;
        sp->st.live_messages--;
        index_del(&sp->idx, m->qid);
    }
    spool_pending_state_forget_locked(sp, m);
    pthread_mutex_unlock(&sp->mu);
    buf_fini(&m->a);
    free(m);
}

static void
apply_move(struct spool *sp, struct batch *b, struct done_rec *d, int err)
{
    struct move_item *m = (struct move_item *)d->it;
    struct ient *e;
    if (d->written && err == 0) {
        pthread_mutex_lock(&sp->mu);
        e = index_get(&sp->idx, m->qid);
        if (e != NULL && e->msg.seg == m->old_msg.seg && e->msg.off == m->old_msg.off) {
            uint64_t home = m->env->n_ext ? m->env->ext[0].seg : d->seg;
            struct seg *old = seg_of(sp, e->home), *now = seg_of(sp, home);
            old->live--;
            old->live_bytes -= e->msg_bytes;
            e->home = home;
            e->msg.seg = d->seg;
            e->msg.off = d->off;
            e->msg.len = d->len;
            e->msg_bytes = (uint32_t)m->new_bytes;
            now->live++;
            now->live_bytes += e->msg_bytes;
            if (m->state_i > 0 && b->recs[m->state_i - 1].written) {
                e->state.seg = b->recs[m->state_i - 1].seg;
                e->state.off = b->recs[m->state_i - 1].off;
                e->state.len = b->recs[m->state_i - 1].len;
            }
            sp->st.compacted++;
        }
        pthread_mutex_unlock(&sp->mu);
    }
    move_free(m);
}

static void
apply_batch(struct spool *sp, struct batch *b, int sync_err)
{
    size_t n_retry = 0;
    for (struct workq_item *r = sp->retry; r != NULL; r = r->next)
        n_retry++;
    for (size_t i = 0; i < b->n_recs; i++) {
        struct done_rec *d = &b->recs[i];
        if (d->it == NULL)
            continue; /* a copied chunk or state: its move item answers */
        switch ((int)d->it->kind) {
        case IT_MSG:
            apply_msg(sp, d, sync_err);
            break;
        case IT_CHUNK: {
            struct chunk_item *c = (struct chunk_item *)d->it;
            evbuffer_free(c->buf);
            free(c);
            break;
        }
        case IT_STATE:
        case IT_DONE:
            apply_meta(sp, d, &n_retry);
            break;
        case IT_SYNC: {
            struct sync_item *s = (struct sync_item *)d->it;
            if (s->cond != NULL) {
                pthread_mutex_lock(s->mu);
                *s->errp = sync_err;
                *s->done = true;
                pthread_cond_signal(s->cond);
                pthread_mutex_unlock(s->mu);
                free(s);
                break;
            }
            s->err = sync_err;
            s->it.wq.done.fn = sync_done_fn;
            workq_done(&s->it.wq);
            break;
        }
        case IT_MOVE:
            apply_move(sp, b, d, sync_err);
            break;
        default:
            tern_panic("spool: item kind %d in a batch", (int)d->it->kind);
        }
    }
}

/* ---------------------------------------------------------------- reclaim */

/* Delete dead segments, oldest first (see spool.h: why only oldest first). */
static void
reclaim(struct spool *sp)
{
    for (;;) {
        struct seg *s;
        char name[32];
        uint64_t num = 0;
        bool recycle;
        pthread_mutex_lock(&sp->mu);
        s = sp->segs.n > 0 ? sp->segs.v[0] : NULL;
        if (!sp->recovered || s == NULL || s == sp->active || !s->sealed || s->live > 0) {
            pthread_mutex_unlock(&sp->mu);
            return;
        }
        segtab_remove_first(&sp->segs);
        sp->st.segments_deleted++;
        s->doomed = true;
        /* Out of the table, nobody can take it any more: with no holder
         * left (a delivery keeps its body handle while it sends), the file
         * is reused as a spare instead of being deleted. */
        recycle = s->refs == 0 && spare_claim_locked(sp, &num);
        seg_ref(s);
        pthread_mutex_unlock(&sp->mu);
        seg_name(s->seq, "seg", name, sizeof(name));
        if (recycle) {
            char sname[32];
            int fd = -1;
            spare_name(num, sname, sizeof(sname));
            if (renameat(sp->log_fd, name, sp->log_fd, sname) == 0)
                fd = openat(sp->log_fd, sname, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
            if (fd >= 0) {
                spare_submit(sp, fd, num);
            } else {
                log_seg_error(s->seq, "reuse", errno);
                unlinkat(sp->log_fd, name, 0);
                unlinkat(sp->log_fd, sname, 0);
                pthread_mutex_lock(&sp->mu);
                sp->spare_busy = false;
                pthread_mutex_unlock(&sp->mu);
            }
        } else if (unlinkat(sp->log_fd, name, 0) < 0 && errno != ENOENT) {
            log_seg_error(s->seq, "unlink", errno);
        }
        seg_name(s->seq, "idx", name, sizeof(name));
        unlinkat(sp->log_fd, name, 0); /* may not exist */
        pthread_mutex_lock(&sp->mu);
        seg_unref_locked(sp, s); /* freed now, or when the last reader lets go */
        pthread_mutex_unlock(&sp->mu);
    }
}

/* The qids whose MSG record is in segment seq (under sp->mu). */
static uint64_t *
live_in(struct spool *sp, uint64_t seq, size_t *n)
{
    uint64_t *v = NULL;
    size_t cap = 0;
    *n = 0;
    for (size_t i = 0; i < sp->idx.n; i++) {
        const struct ient *e = &sp->idx.v[i];
        if (e->dead || e->home != seq)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[(*n)++] = e->qid;
    }
    return v;
}

/* When the oldest segment holds little that is alive, copy it to the head
 * so the segment can go. At most once a second, one segment at a time. */
static void
maybe_compact(struct spool *sp)
{
    struct seg *s;
    uint64_t *qids = NULL, seq;
    size_t n = 0;
    int64_t now = tern_mono_ms();
    struct batch b;
    int err;
    if (now - sp->last_compact_ms < COMPACT_EVERY_MS)
        return;
    pthread_mutex_lock(&sp->mu);
    s = sp->segs.n > 2 ? sp->segs.v[0] : NULL;
    if (!sp->recovered || s == NULL || s == sp->active || !s->sealed || s->live == 0 ||
        s->live_bytes * 4 >= sp->seg_size) {
        pthread_mutex_unlock(&sp->mu);
        return;
    }
    /* Only a segment whose live messages stayed put for a whole interval
     * (deferred mail) is worth copying; one being delivered empties itself
     * and goes whole. */
    if (s->seq != sp->compact_seq || s->live < sp->compact_live) {
        sp->compact_seq = s->seq;
        sp->compact_live = s->live;
        sp->last_compact_ms = now;
        pthread_mutex_unlock(&sp->mu);
        return;
    }
    seq = s->seq;
    qids = live_in(sp, seq, &n);
    pthread_mutex_unlock(&sp->mu);
    sp->last_compact_ms = now;
    batch_init(&b, sp);
    for (size_t i = 0; i < n && b.err == 0; i++) {
        struct move_item *m = move_prepare(sp, qids[i]);
        if (m == NULL)
            continue;
        note_done(&b, &m->it)->written = false;
        /* move_append notes its own records; drop the placeholder. */
        b.n_recs--;
        if (sp->active == NULL && seg_create(sp) < 0) {
            b.err = errno;
            move_free(m);
            break;
        }
        move_append(&b, m);
        if (b.n_recs == 0 || b.recs[b.n_recs - 1].it == NULL || b.recs[b.n_recs - 1].it != &m->it) {
            /* its MSG was not appended (no room, error): nothing moves */
            bool listed = false;
            for (size_t k = 0; k < b.n_recs; k++)
                listed |= b.recs[k].it == &m->it;
            if (!listed)
                move_free(m);
        }
    }
    free(qids);
    err = flush_pending(&b) < 0 ? b.err : sync_touched(&b);
    apply_batch(sp, &b, err != 0 ? err : b.err);
    batch_fini(&b);
    reclaim(sp);
}

/* ---------------------------------------------------------------- the commit thread */

static void
take_item(struct batch *b, struct item *it)
{
    struct spool *sp = b->sp;
    if (it->kind == IT_FINISH) {
        /* Its last chunks may be in this very batch: the finisher may
         * read them once the batch is written (commit_batch). */
        it->wq.run = prep_run;
        it->wq.next = NULL;
        *b->finish_tail = &it->wq;
        b->finish_tail = &it->wq.next;
        return;
    }
    if (it->kind == IT_ABORT) {
        writer_free((struct spool_writer *)it);
        return;
    }
    if (it->kind == IT_SYNC) {
        b->need_sync = true;
        note_done(b, it)->written = true;
        return;
    }
    if (b->err == 0 && sp->active == NULL && seg_create(sp) < 0) {
        b->err = errno;
        log_seg_error(sp->next_seq, "create", errno);
    }
    if (b->err != 0) {
        /* After a write error nothing more is tried in this batch. */
        if (it->kind == IT_CHUNK)
            ((struct chunk_item *)it)->w->chunk_err = b->err;
        note_done(b, it)->written = false;
        return;
    }
    switch (it->kind) {
    case IT_CHUNK: {
        struct chunk_item *c = (struct chunk_item *)it;
        add_chunk(b, c);
        if (c->w->chunk_err != 0)
            note_done(b, it)->written = false;
        break;
    }
    case IT_MSG:
        add_msg(b, (struct spool_writer *)it);
        break;
    case IT_STATE:
    case IT_DONE:
        add_meta(b, (struct meta_item *)it);
        break;
    default:
        tern_panic("spool: item kind %d", (int)it->kind);
    }
}

/* Take list into the batch; the messages in it. */
static size_t
take_list(struct batch *b, struct workq_item *list, size_t *n_items)
{
    size_t n_msgs = 0;
    while (list != NULL) {
        struct workq_item *next = list->next;
        n_msgs += ((struct item *)list)->kind == IT_MSG;
        take_item(b, (struct item *)list);
        list = next;
        (*n_items)++;
    }
    return n_msgs;
}

/* Group commit, as databases do it (PostgreSQL's commit_delay): while
 * messages come from several clients at once (batches have held more than
 * one), a batch that must be synced first waits for more, as long as a sync
 * takes (at most GATHER_MAX_US), so that one device flush covers them. One
 * client alone never waits: its batches hold one message, and the average
 * falls below the mark within a few. */
static size_t
gather(struct spool *sp, struct batch *b, size_t *n_items)
{
    size_t n_msgs = 0;
    int64_t wait = sp->sync_us16 / 16, end, now;
    if (sp->msgs_per_sync16 < 24 || wait <= 0)
        return 0;
    if (wait > GATHER_MAX_US)
        wait = GATHER_MAX_US;
    end = tern_mono_us() + wait;
    while (b->err == 0 && (now = tern_mono_us()) < end) {
        struct workq_item *more = workq_batch_more(sp->commitq, end - now);
        if (more == NULL)
            break;
        n_msgs += take_list(b, more, n_items);
    }
    return n_msgs;
}

static void
commit_batch(struct workq_item *list, void *arg)
{
    struct spool *sp = arg;
    struct batch b;
    struct workq_item *retry = sp->retry;
    int err = 0;
    size_t n_items = 0, n_msgs;
    sp->retry = NULL;
    batch_init(&b, sp);
    /* Records that failed before go first, in their order. */
    while (retry != NULL) {
        struct workq_item *next = retry->next;
        retry->next = list;
        list = retry;
        retry = next;
    }
    n_msgs = take_list(&b, list, &n_items);
    if (b.need_sync && n_msgs > 0)
        n_msgs += gather(sp, &b, &n_items);
    if (flush_pending(&b) < 0) {
        err = b.err;
    } else if (b.err != 0) {
        err = b.err;
    } else if (b.need_sync) {
        int64_t t0 = tern_mono_us();
        err = sync_touched(&b);
        /* Averages over about eight syncs. */
        sp->sync_us16 += (tern_mono_us() - t0) * 2 - sp->sync_us16 / 8;
        sp->msgs_per_sync16 += (uint32_t)(n_msgs * 2) - sp->msgs_per_sync16 / 8;
    }
    pthread_mutex_lock(&sp->mu);
    sp->st.batches++;
    sp->st.records += n_items;
    pthread_mutex_unlock(&sp->mu);
    apply_batch(sp, &b, err);
    /* The batch is written: finishers may read their chunks now. */
    while (b.finish != NULL) {
        struct workq_item *next = b.finish->next;
        workq_submit(sp->prepq, b.finish);
        b.finish = next;
    }
    batch_fini(&b);
    reclaim(sp);
    maybe_compact(sp);
    spare_maybe(sp);
}

/* Nothing arrived for a while: make the lazy records durable. */
static void
commit_idle(void *arg)
{
    struct spool *sp = arg;
    if (sp->retry != NULL)
        commit_batch(NULL, sp); /* STATE/DONE records a write error held back */
    if (sp->dirty && sp->active != NULL) {
        if (fdatasync(sp->active->fd) < 0)
            log_seg_error(sp->active->seq, "fdatasync", errno);
        else
            sp->dirty = false;
    }
    reclaim(sp);
    maybe_compact(sp);
}

int
spool_commit_start(struct spool *sp, struct buf *err)
{
    spares_load(sp);
    sp->spareq = workq_new("tern-spare", 1);
    sp->commitq = workq_new_batch("tern-commit", commit_batch, commit_idle, SPOOL_LAZY_SYNC_MS, sp);
    sp->prepq = workq_new("tern-sign", PREP_THREADS);
    sp->readq = workq_new("tern-read", READ_THREADS);
    return 0;
}

void
spool_commit_stop(struct spool *sp)
{
    /* The finisher pool feeds the commit queue: stop it first. */
    workq_free(sp->prepq);
    sp->prepq = NULL;
    workq_free(sp->readq);
    sp->readq = NULL;
    workq_free(sp->commitq); /* runs the last batch and the idle sync */
    sp->commitq = NULL;
    /* After the commit thread, which may have handed it a reclaimed file. */
    workq_free(sp->spareq);
    sp->spareq = NULL;
    for (size_t i = 0; i < sp->n_spares; i++)
        close(sp->spare_fd[i]);
    sp->n_spares = 0;
    while (sp->retry != NULL) {
        struct meta_item *m = (struct meta_item *)sp->retry;
        sp->retry = m->it.wq.next;
        buf_fini(&m->a);
        free(m);
    }
    if (sp->active != NULL) {
        end_mark(sp->active, sp->seg_size);
        if (fdatasync(sp->active->fd) < 0)
            log_seg_error(sp->active->seq, "fdatasync", errno);
        seal_active(sp);
    }
}

/* ---------------------------------------------------------------- state and removal */

void
spool_update_state(struct spool *sp, const struct spool_env *env)
{
    struct meta_item *m = xcalloc(1, sizeof(*m));
    struct ient *e;
    m->it.kind = IT_STATE;
    m->qid = qid_num(env->qid);
    spool_state_encode(env, &m->a);
    m->next_try_ms = spool_env_next_try(env);
    m->pending = spool_env_pending(env);
    m->held = env->held;
    /* Until it is written, a load must see this state, not the older one
     * on disk. */
    pthread_mutex_lock(&sp->mu);
    e = index_get(&sp->idx, m->qid);
    if (e != NULL)
        e->pending = m;
    pthread_mutex_unlock(&sp->mu);
    workq_submit(sp->commitq, &m->it.wq);
}

void
spool_remove(struct spool *sp, const char *qid)
{
    struct meta_item *m = xcalloc(1, sizeof(*m));
    if (!spool_qid_valid(qid)) {
        free(m);
        return;
    }
    m->it.kind = IT_DONE;
    m->qid = qid_num(qid);
    workq_submit(sp->commitq, &m->it.wq);
}

void
spool_sync(struct spool *sp, struct loopq *to, void (*cb)(void *arg, int err), void *arg)
{
    struct sync_item *s = xcalloc(1, sizeof(*s));
    s->it.kind = IT_SYNC;
    s->it.wq.to = to;
    s->cb = cb;
    s->arg = arg;
    workq_submit(sp->commitq, &s->it.wq);
}

bool
spool_pending_state_locked(const struct ient *e, struct buf *out)
{
    if (e->pending == NULL)
        return false;
    if (out != NULL)
        buf_append(out, e->pending->a.data, e->pending->a.len);
    return true;
}

void
spool_pending_state_forget_locked(struct spool *sp, struct meta_item *m)
{
    struct ient *e = index_get(&sp->idx, m->qid);
    if (e != NULL && e->pending == m)
        e->pending = NULL;
}

int
spool_sync_wait(struct spool *sp)
{
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    bool done = false;
    int err = 0;
    struct sync_item *s = xcalloc(1, sizeof(*s));
    s->it.kind = IT_SYNC;
    s->mu = &mu;
    s->cond = &cond;
    s->done = &done;
    s->errp = &err;
    workq_submit(sp->commitq, &s->it.wq);
    pthread_mutex_lock(&mu);
    while (!done)
        pthread_cond_wait(&cond, &mu);
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&cond);
    pthread_mutex_destroy(&mu);
    return err;
}

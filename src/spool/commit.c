/*
 * Writing and committing new messages. A writer fills tmp/<qid> through a
 * user-space buffer on the loop thread; at commit the file is handed to a
 * pool of threads that fdatasync, close and rename it into queue/, then one
 * "dir syncer" thread fsyncs queue/ once for every rename made meanwhile
 * (group commit). Only then are completions handed to the loop thread via an
 * eventfd, where the commit hook and the writer's callback run. A writer's
 * finisher (DKIM signing) runs on the worker thread just before fdatasync
 * and may append the prefix record.
 */
#include "spool/spool_int.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"
#include "util/util.h"
#include "util/fsutil.h"

#define QID_TRIES 64

/* 32 bits of seconds, 20 bits of microseconds, a 12-bit counter. */
static void
make_qid(char out[SPOOL_QID_LEN + 1])
{
    static atomic_uint counter;
    struct timespec ts;
    uint64_t v;
    clock_gettime(CLOCK_REALTIME, &ts);
    v = (uint64_t)(uint32_t)ts.tv_sec << 32 | (uint64_t)(ts.tv_nsec / 1000) << 12 |
        (atomic_fetch_add(&counter, 1) & 0xfffu);
    snprintf(out, SPOOL_QID_LEN + 1, "%016" PRIx64, v);
}

/* Create tmp/<qid> exclusively with a qid not used in queue/ either (the
 * clock may step back). */
static int
open_tmp(struct spool *sp, char qid[SPOOL_QID_LEN + 1])
{
    for (int i = 0; i < QID_TRIES; i++) {
        int fd;
        make_qid(qid);
        if (faccessat(sp->queue_fd, qid, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
            continue;
        fd = openat(sp->tmp_fd, qid, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    errno = EEXIST;
    return -1;
}

static int
wr_fail(struct spool_writer *w)
{
    w->failed = true;
    w->err = errno ? errno : EIO;
    errno = w->err;
    return -1;
}

static int
wr_flush(struct spool_writer *w)
{
    if (w->wlen > 0 && fd_write_full(w->fd, w->wbuf, w->wlen) < 0)
        return wr_fail(w);
    w->flushed += w->wlen;
    w->wlen = 0;
    return 0;
}

static int
wr_append(struct spool_writer *w, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        size_t k;
        if (w->wlen == 0 && n >= SPOOL_WBUF_SIZE) { /* large: skip the copy */
            if (fd_write_full(w->fd, c, n) < 0)
                return wr_fail(w);
            w->flushed += n;
            return 0;
        }
        k = SPOOL_WBUF_SIZE - w->wlen;
        if (k > n)
            k = n;
        memcpy(w->wbuf + w->wlen, c, k);
        w->wlen += k;
        c += k;
        n -= k;
        if (w->wlen == SPOOL_WBUF_SIZE && wr_flush(w) < 0)
            return -1;
    }
    return 0;
}

/* The finisher's argument goes once, run or not. */
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
    if (w->fd >= 0)
        close(w->fd); /* only on paths where the file is being discarded */
    spool_env_free(w->env);
    free(w->wbuf);
    free(w);
}

struct spool_writer *
spool_writer_new(struct spool *sp, struct spool_env *env)
{
    struct spool_writer *w = xcalloc(1, sizeof(*w));
    struct buf eb = BUF_INIT;
    int e;
    w->sp = sp;
    w->fd = open_tmp(sp, w->qid);
    if (w->fd < 0)
        goto fail;
    memcpy(env->qid, w->qid, sizeof(w->qid));
    env->arrival_ms = tern_now_ms();
    if (spool_env_encode(env, &eb) < 0)
        goto fail_unlink;
    w->env = spool_env_dup(env);
    w->wbuf = xmalloc(SPOOL_WBUF_SIZE);
    memset(w->wbuf, ' ', SPOOL_HDR_LEN - 1);
    memcpy(w->wbuf, SPOOL_HDR_PENDING, sizeof(SPOOL_HDR_PENDING) - 1);
    w->wbuf[SPOOL_HDR_LEN - 1] = '\n';
    w->wlen = SPOOL_HDR_LEN;
    w->env_crc = spool_crc32c(0, eb.data, eb.len);
    w->body_off = SPOOL_HDR_LEN + eb.len;
    if (wr_append(w, eb.data, eb.len) < 0)
        goto fail_unlink;
    buf_fini(&eb);
    sp->n_writers++;
    return w;
fail_unlink:
    e = errno;
    unlinkat(sp->tmp_fd, w->qid, 0);
    errno = e;
fail:
    e = errno;
    buf_fini(&eb);
    writer_free(w);
    errno = e;
    return NULL;
}

const char *
spool_writer_qid(const struct spool_writer *w)
{
    return w->qid;
}

int
spool_writer_write(struct spool_writer *w, const void *data, size_t len)
{
    if (w->failed) {
        errno = w->err;
        return -1;
    }
    w->body_crc = spool_crc32c(w->body_crc, data, len);
    w->body_len += len;
    return wr_append(w, data, len);
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

uint64_t
spool_writer_size(const struct spool_writer *w)
{
    return w->body_len;
}

void
spool_writer_abort(struct spool_writer *w)
{
    if (w == NULL)
        return;
    w->sp->n_writers--;
    unlinkat(w->sp->tmp_fd, w->qid, 0); /* never acknowledged: best effort */
    writer_free(w);
}

/* Status records for a new envelope that is not in the default state. */
static void
initial_status(const struct spool_env *env, struct buf *b)
{
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        if (r->state != RCPT_QUEUED || r->attempts != 0 || r->last_error != NULL)
            spool_status_rcpt_line(b, i, r->state, r->attempts, r->last_error);
    }
    if (env->held)
        spool_status_held_line(b, true);
    if (env->prefix != NULL && spool_prefix_valid(env->prefix, strlen(env->prefix)))
        spool_status_prefix_line(b, env->prefix);
}

/* End marker, status records, the real header. -1 with w failed. */
static int
finish_file(struct spool_writer *w)
{
    char end[SPOOL_END_LEN + 1], hdr[SPOOL_HDR_LEN + 1];
    struct buf sb = BUF_INIT;
    int rc;
    snprintf(end, sizeof(end), "\nEND %08" PRIx32 " %08" PRIx32 "\n", w->env_crc, w->body_crc);
    snprintf(hdr, sizeof(hdr), SPOOL_MAGIC "body=%020" PRIu64 " len=%020" PRIu64 "\n", w->body_off,
        w->body_len);
    initial_status(w->env, &sb);
    if (w->flushed == 0) /* the whole file is still in memory: one write */
        memcpy(w->wbuf, hdr, SPOOL_HDR_LEN);
    rc = wr_append(w, end, SPOOL_END_LEN);
    if (rc == 0 && sb.len > 0)
        rc = wr_append(w, sb.data, sb.len);
    buf_fini(&sb);
    if (rc == 0 && w->flushed == 0)
        return wr_flush(w);
    if (rc == 0)
        rc = wr_flush(w);
    while (rc == 0) {
        ssize_t k = pwrite(w->fd, hdr, SPOOL_HDR_LEN, 0);
        if (k == SPOOL_HDR_LEN)
            break;
        if (k < 0 && errno == EINTR)
            continue;
        if (k >= 0)
            errno = EIO;
        rc = wr_fail(w);
    }
    return rc;
}

/* With sp->mu held. */
static void
push_done(struct spool *sp, struct spool_writer *w)
{
    bool was_empty = sp->done_head == NULL;
    w->next = NULL;
    *sp->done_tail = w;
    sp->done_tail = &w->next;
    pthread_cond_broadcast(&sp->done_cond);
    if (was_empty) {
        uint64_t one = 1;
        /* Cannot fail short of a bug: the counter never nears its limit. */
        if (write(sp->efd, &one, sizeof(one)) != (ssize_t)sizeof(one))
            TERN_ASSERT(errno == EAGAIN);
    }
}

void
spool_writer_commit(struct spool_writer *w, spool_commit_cb cb, uint64_t cb_id, void *arg)
{
    struct spool *sp = w->sp;
    w->cb = cb;
    w->cb_id = cb_id;
    w->cb_arg = arg;
    sp->n_writers--;
    if (!w->failed)
        finish_file(w);
    FREE_NULL(&w->wbuf);
    w->env->body_off = w->body_off;
    w->env->body_len = w->body_len;
    if (w->failed) {
        close(w->fd); /* discarded anyway */
        w->fd = -1;
        unlinkat(sp->tmp_fd, w->qid, 0);
    }
    pthread_mutex_lock(&sp->mu);
    sp->inflight++;
    if (w->failed) {
        push_done(sp, w);
    } else {
        w->next = NULL;
        *sp->work_tail = w;
        sp->work_tail = &w->next;
        pthread_cond_signal(&sp->work_cond);
    }
    pthread_mutex_unlock(&sp->mu);
}

static void
log_commit_error(const char *qid, const char *what, int err)
{
    struct logline l;
    log_begin(&l, LOG_ERROR, qid, "spool", "commit_failed");
    log_str(&l, "op", what);
    log_errno(&l, err);
    log_end(&l);
}

/* Run the finisher (worker thread) and append its prefix record. 0 ok
 * (with or without a prefix), -1 with errno when the record could not be
 * written: the file is then not safe to commit. */
static int
run_finisher(struct spool_writer *w)
{
    struct buf pb = BUF_INIT, rec = BUF_INIT;
    int rc = 0;
    if (w->fin == NULL) {
        finisher_release(w);
        return 0;
    }
    if (w->fin(w->qid, &pb, w->fin_arg) == 0 && pb.len > 0) {
        if (!spool_prefix_valid(pb.data, pb.len) || memchr(pb.data, '\0', pb.len) != NULL) {
            struct logline l;
            log_begin(&l, LOG_ERROR, w->qid, "spool", "prefix_refused");
            log_int(&l, "len", (int64_t)pb.len);
            log_end(&l);
        } else {
            spool_status_prefix_line(&rec, pb.data);
            rc = fd_write_full(w->fd, rec.data, rec.len);
            if (rc == 0) {
                free(w->env->prefix);
                w->env->prefix = buf_take(&pb);
            }
        }
    }
    finisher_release(w);
    buf_fini(&pb);
    buf_fini(&rec);
    return rc;
}

/* Finish, fdatasync, close, rename into queue/. 0 ok; -1 with w failed and
 * the tmp file removed. */
static int
sync_and_rename(struct spool *sp, struct spool_writer *w)
{
    const char *what = NULL;
    int err = 0;
    if (run_finisher(w) < 0) {
        what = "write prefix";
        err = errno;
    } else if (fdatasync(w->fd) < 0) {
        what = "fdatasync";
        err = errno;
    }
    if (close(w->fd) < 0 && err == 0) {
        what = "close";
        err = errno;
    }
    w->fd = -1;
    if (err == 0 && renameat2(sp->tmp_fd, w->qid, sp->queue_fd, w->qid, RENAME_NOREPLACE) < 0) {
        /* RENAME_NOREPLACE unsupported: the qid was checked free at creation */
        if (errno != EINVAL || renameat(sp->tmp_fd, w->qid, sp->queue_fd, w->qid) < 0) {
            what = "rename";
            err = errno;
        }
    }
    if (err == 0)
        return 0;
    log_commit_error(w->qid, what, err);
    unlinkat(sp->tmp_fd, w->qid, 0);
    w->failed = true;
    w->err = err;
    return -1;
}

static void *
worker_main(void *arg)
{
    struct spool *sp = arg;
    pthread_mutex_lock(&sp->mu);
    for (;;) {
        struct spool_writer *w;
        while (sp->work_head == NULL && !sp->stopping)
            pthread_cond_wait(&sp->work_cond, &sp->mu);
        if (sp->work_head == NULL)
            break;
        w = sp->work_head;
        sp->work_head = w->next;
        if (sp->work_head == NULL)
            sp->work_tail = &sp->work_head;
        pthread_mutex_unlock(&sp->mu);
        if (sync_and_rename(sp, w) == 0) {
            pthread_mutex_lock(&sp->mu);
            w->next = NULL;
            *sp->sync_tail = w;
            sp->sync_tail = &w->next;
            pthread_cond_signal(&sp->sync_cond);
        } else {
            pthread_mutex_lock(&sp->mu);
            push_done(sp, w);
        }
    }
    pthread_mutex_unlock(&sp->mu);
    return NULL;
}

/* One fsync of queue/ makes every rename before it durable: all messages
 * renamed while the previous fsync ran share the next one. */
static void *
syncer_main(void *arg)
{
    struct spool *sp = arg;
    pthread_mutex_lock(&sp->mu);
    for (;;) {
        struct spool_writer *batch, *w, *next;
        int err = 0;
        while (sp->sync_head == NULL && !sp->stopping)
            pthread_cond_wait(&sp->sync_cond, &sp->mu);
        if (sp->sync_head == NULL)
            break;
        batch = sp->sync_head;
        sp->sync_head = NULL;
        sp->sync_tail = &sp->sync_head;
        pthread_mutex_unlock(&sp->mu);
        if (fsync(sp->queue_fd) < 0)
            err = errno;
        for (w = batch; err != 0 && w != NULL; w = w->next) {
            /* not known to be durable: withdraw it, the client gets 4xx */
            log_commit_error(w->qid, "fsync queue directory", err);
            unlinkat(sp->queue_fd, w->qid, 0);
            w->failed = true;
            w->err = err;
        }
        pthread_mutex_lock(&sp->mu);
        for (w = batch; w != NULL; w = next) {
            next = w->next;
            push_done(sp, w);
        }
    }
    pthread_mutex_unlock(&sp->mu);
    return NULL;
}

/* Run hook and callbacks of a finished list (loop thread). */
static void
deliver(struct spool *sp, struct spool_writer *list)
{
    while (list != NULL) {
        struct spool_writer *w = list;
        list = w->next;
        if (!w->failed && sp->hook != NULL)
            sp->hook(w->env, sp->hook_arg);
        if (w->cb != NULL)
            w->cb(w->cb_id, w->qid, !w->failed, w->failed ? w->err : 0, w->cb_arg);
        writer_free(w);
        pthread_mutex_lock(&sp->mu);
        sp->inflight--;
        pthread_mutex_unlock(&sp->mu);
    }
}

static struct spool_writer *
take_done(struct spool *sp)
{
    struct spool_writer *list = sp->done_head;
    sp->done_head = NULL;
    sp->done_tail = &sp->done_head;
    return list;
}

static void
done_ready(evutil_socket_t fd, short what, void *arg)
{
    struct spool *sp = arg;
    struct spool_writer *list;
    uint64_t v;
    /* Read first: an append after the take below signals again. */
    if (read(sp->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        log_simple(LOG_ERROR, "spool", "eventfd_read_failed", strerror(errno));
    pthread_mutex_lock(&sp->mu);
    list = take_done(sp);
    pthread_mutex_unlock(&sp->mu);
    deliver(sp, list);
}

static int
start_thread(pthread_t *t, void *(*fn)(void *), struct spool *sp)
{
    sigset_t all, old;
    int rc;
    /* Signals are for the loop thread, never for the workers. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(t, NULL, fn, sp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

int
spool_commit_start(struct spool *sp, struct buf *err)
{
    int rc = 0;
    pthread_mutex_init(&sp->mu, NULL);
    pthread_cond_init(&sp->work_cond, NULL);
    pthread_cond_init(&sp->sync_cond, NULL);
    pthread_cond_init(&sp->done_cond, NULL);
    sp->work_tail = &sp->work_head;
    sp->sync_tail = &sp->sync_head;
    sp->done_tail = &sp->done_head;
    sp->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sp->efd < 0) {
        buf_printf(err, "eventfd: %s", strerror(errno));
        return -1;
    }
    if (sp->base != NULL) {
        sp->ev = event_new(sp->base, sp->efd, EV_READ | EV_PERSIST, done_ready, sp);
        if (sp->ev == NULL || event_add(sp->ev, NULL) < 0) {
            buf_append_str(err, "cannot register the spool completion event");
            return -1;
        }
    }
    sp->threads_started = true;
    for (int i = 0; i < SPOOL_COMMIT_THREADS && rc == 0; i++)
        rc = start_thread(&sp->workers[i], worker_main, sp);
    if (rc == 0)
        rc = start_thread(&sp->syncer, syncer_main, sp);
    if (rc != 0) {
        /* pthread_create failing at start-up is fatal for the daemon anyway */
        tern_panic("pthread_create: %s", strerror(rc));
    }
    return 0;
}

void
spool_commit_stop(struct spool *sp)
{
    if (!sp->threads_started) {
        if (sp->ev != NULL)
            event_free(sp->ev);
        if (sp->efd >= 0)
            close(sp->efd);
        return;
    }
    pthread_mutex_lock(&sp->mu);
    while (sp->inflight > 0) {
        struct spool_writer *list;
        while (sp->done_head == NULL)
            pthread_cond_wait(&sp->done_cond, &sp->mu);
        list = take_done(sp);
        pthread_mutex_unlock(&sp->mu);
        deliver(sp, list);
        pthread_mutex_lock(&sp->mu);
    }
    sp->stopping = true;
    pthread_cond_broadcast(&sp->work_cond);
    pthread_cond_broadcast(&sp->sync_cond);
    pthread_mutex_unlock(&sp->mu);
    for (int i = 0; i < SPOOL_COMMIT_THREADS; i++)
        pthread_join(sp->workers[i], NULL);
    pthread_join(sp->syncer, NULL);
    if (sp->ev != NULL)
        event_free(sp->ev);
    close(sp->efd);
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->work_cond);
    pthread_cond_destroy(&sp->sync_cond);
    pthread_cond_destroy(&sp->done_cond);
}

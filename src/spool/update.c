/*
 * Status records (recipient results, hold) are appended to committed files
 * by one FIFO thread, so records of a message stay in order and the loop
 * thread never waits for a disk. Each append is one write(2) of complete
 * lines followed by fdatasync; a torn tail left by a crash is trimmed first
 * so that it never ends up in the middle of the file.
 */
#include "spool/spool_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "util/util.h"
#include "util/fsutil.h"

/* Longer than any status record but the prefix record ("d", written before
 * the commit's fdatasync, never torn); a line longer than the window is
 * left alone by tail_cut. */
#define TAIL_WINDOW 8192

static void
log_update_error(const char *qid, const char *what, int err)
{
    struct logline l;
    log_begin(&l, LOG_ERROR, qid, "spool", "update_failed");
    log_str(&l, "op", what);
    log_errno(&l, err);
    log_end(&l);
}

static void
enqueue(struct spool *sp, const char *qid, const struct buf *line)
{
    struct spool_upd *u;
    if (!spool_qid_valid(qid)) {
        log_simple(LOG_WARN, "spool", "update_bad_qid", qid);
        return;
    }
    u = xmalloc(sizeof(*u) + line->len);
    memcpy(u->qid, qid, sizeof(u->qid));
    memcpy(u->line, line->data, line->len);
    u->len = line->len;
    u->next = NULL;
    pthread_mutex_lock(&sp->umu);
    *sp->utail = u;
    sp->utail = &u->next;
    pthread_cond_signal(&sp->ucond);
    pthread_mutex_unlock(&sp->umu);
}

void
spool_update_rcpt(struct spool *sp, const char *qid, size_t idx, enum rcpt_state state,
    uint32_t attempts, const char *last_error)
{
    struct buf b = BUF_INIT;
    spool_status_rcpt_line(&b, idx, state, attempts, last_error);
    enqueue(sp, qid, &b);
    buf_fini(&b);
}

void
spool_update_held(struct spool *sp, const char *qid, bool held)
{
    struct buf b = BUF_INIT;
    spool_status_held_line(&b, held);
    enqueue(sp, qid, &b);
    buf_fini(&b);
}

/* Where a cut of the tail window w[n] (file offset from) should go, or -1
 * for no cut: a last line without "\n" or with a bad check is dropped. */
static int64_t
tail_cut(const char *w, size_t n, uint64_t from, bool window_at_start)
{
    size_t end = n, start;
    if (n == 0)
        return -1;
    if (w[n - 1] == '\n')
        end = n - 1;
    start = end;
    while (start > 0 && w[start - 1] != '\n')
        start--;
    if (start == 0 && !window_at_start)
        return -1; /* longer than any record: damage, not a torn append */
    if (end < n && spool_status_check(w + start, end - start))
        return -1;
    return (int64_t)(from + start);
}

/* Trim a torn last record. 0 ok (appending is safe), -1 don't append. */
static int
trim_tail(int fd, const char *qid)
{
    char h[SPOOL_HDR_LEN], *w;
    uint64_t off, len, start, from;
    const char *reason;
    struct stat st;
    ssize_t k;
    int64_t cut;
    errno = EIO;
    if (fstat(fd, &st) < 0 || pread(fd, h, SPOOL_HDR_LEN, 0) != SPOOL_HDR_LEN)
        return -1;
    if (spool_parse_header(h, &off, &len, &reason) < 0 || off > INT64_MAX - len ||
        (uint64_t)st.st_size < off + len + SPOOL_END_LEN) {
        errno = EBADMSG; /* damaged: spool_walk will set it aside */
        return -1;
    }
    start = off + len + SPOOL_END_LEN;
    if ((uint64_t)st.st_size == start)
        return 0;
    from = (uint64_t)st.st_size - start > TAIL_WINDOW ? (uint64_t)st.st_size - TAIL_WINDOW : start;
    w = xmalloc(TAIL_WINDOW);
    k = pread(fd, w, (size_t)((uint64_t)st.st_size - from), (off_t)from);
    cut = k == (ssize_t)((uint64_t)st.st_size - from) ? tail_cut(w, (size_t)k, from, from == start)
                                                      : -1;
    free(w);
    if (cut >= 0) {
        struct logline l;
        log_begin(&l, LOG_WARN, qid, "spool", "torn_status_trimmed");
        log_int(&l, "offset", cut);
        log_end(&l);
        if (ftruncate(fd, cut) < 0)
            return -1;
    }
    return 0;
}

/* Append lines to queue/<qid> durably. */
static void
apply_one(struct spool *sp, const char *qid, const char *data, size_t len)
{
    struct stat st;
    int fd = openat(sp->queue_fd, qid, O_RDWR | O_APPEND | O_CLOEXEC); /* reads the tail */
    if (fd < 0) {
        if (errno != ENOENT) /* ENOENT: removed meanwhile, nothing to record */
            log_update_error(qid, "open", errno);
        return;
    }
    if (trim_tail(fd, qid) < 0) {
        log_update_error(qid, "check tail", errno);
        close(fd);
        return;
    }
    if (fstat(fd, &st) < 0) {
        log_update_error(qid, "fstat", errno);
    } else if (fd_write_full(fd, data, len) < 0) {
        log_update_error(qid, "write", errno);
        /* a short write would leave a torn record before later ones */
        if (ftruncate(fd, st.st_size) < 0)
            log_update_error(qid, "truncate", errno);
    } else if (fdatasync(fd) < 0) {
        log_update_error(qid, "fdatasync", errno);
    }
    if (close(fd) < 0)
        log_update_error(qid, "close", errno);
}

/* Write a batch, merging consecutive records of the same message. */
static void
apply_batch(struct spool *sp, struct spool_upd *list)
{
    struct buf b = BUF_INIT;
    while (list != NULL) {
        struct spool_upd *u = list, *n;
        buf_reset(&b);
        buf_append(&b, u->line, u->len);
        for (n = u->next; n != NULL && strcmp(n->qid, u->qid) == 0; n = n->next)
            buf_append(&b, n->line, n->len);
        apply_one(sp, u->qid, b.data, b.len);
        while (list != n) {
            struct spool_upd *d = list;
            list = list->next;
            free(d);
        }
    }
    buf_fini(&b);
}

static void *
updater_main(void *arg)
{
    struct spool *sp = arg;
    pthread_mutex_lock(&sp->umu);
    for (;;) {
        struct spool_upd *list;
        while (sp->uhead == NULL && !sp->ustop)
            pthread_cond_wait(&sp->ucond, &sp->umu);
        if (sp->uhead == NULL)
            break;
        list = sp->uhead;
        sp->uhead = NULL;
        sp->utail = &sp->uhead;
        pthread_mutex_unlock(&sp->umu);
        apply_batch(sp, list);
        pthread_mutex_lock(&sp->umu);
    }
    pthread_mutex_unlock(&sp->umu);
    return NULL;
}

int
spool_update_start(struct spool *sp, struct buf *err)
{
    sigset_t all, old;
    int rc;
    pthread_mutex_init(&sp->umu, NULL);
    pthread_cond_init(&sp->ucond, NULL);
    sp->utail = &sp->uhead;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&sp->updater, NULL, updater_main, sp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        buf_printf(err, "pthread_create: %s", strerror(rc));
        return -1;
    }
    sp->updater_started = true;
    return 0;
}

void
spool_update_stop(struct spool *sp)
{
    if (!sp->updater_started)
        return;
    pthread_mutex_lock(&sp->umu);
    sp->ustop = true;
    pthread_cond_signal(&sp->ucond);
    pthread_mutex_unlock(&sp->umu);
    pthread_join(sp->updater, NULL);
    pthread_mutex_destroy(&sp->umu);
    pthread_cond_destroy(&sp->ucond);
    sp->updater_started = false;
}

/*
 * Shape 1: one file per message, as tern's spool does today. The producer
 * writes tmp/<id>; a pool of threads fdatasyncs, closes and renames it into
 * queue/; one syncer thread fsyncs queue/ once for all renames made while
 * the previous fsync ran, then acknowledges them. done() unlinks the file.
 */
#include "proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WORKERS 8 /* as SPOOL_COMMIT_THREADS */

struct freq {
    uint64_t id;
    int fd, state, err;
    char name[17];
    pthread_cond_t cv;
    struct freq *next;
};

struct store {
    bool nosync;
    int dir_fd, tmp_fd, queue_fd;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, sync_cv;
    struct freq *work, **work_tail, *sync, **sync_tail;
    bool stop;
    pthread_t workers[WORKERS], syncer;
    uint64_t syncs, synced, unlinks;
};

static void
push(struct freq ***tail, struct freq *r)
{
    r->next = NULL;
    **tail = r;
    *tail = &r->next;
}

static void
finish(struct store *s, struct freq *r, int err)
{
    r->err = err;
    r->state = 1;
    pthread_cond_signal(&r->cv);
    (void)s;
}

static void *
worker_main(void *arg)
{
    struct store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct freq *r;
        int err = 0;
        while (s->work == NULL && !s->stop)
            pthread_cond_wait(&s->work_cv, &s->mu);
        if (s->work == NULL)
            break;
        r = s->work;
        s->work = r->next;
        if (s->work == NULL)
            s->work_tail = &s->work;
        pthread_mutex_unlock(&s->mu);
        if (fdatasync(r->fd) < 0)
            err = errno;
        if (close(r->fd) < 0 && err == 0)
            err = errno;
        if (err == 0 && renameat2(s->tmp_fd, r->name, s->queue_fd, r->name, RENAME_NOREPLACE) < 0)
            err = errno;
        pthread_mutex_lock(&s->mu);
        if (err != 0) {
            finish(s, r, err);
            continue;
        }
        push(&s->sync_tail, r);
        pthread_cond_signal(&s->sync_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void *
syncer_main(void *arg)
{
    struct store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct freq *batch, *next;
        int err = 0;
        uint64_t n = 0;
        while (s->sync == NULL && !s->stop)
            pthread_cond_wait(&s->sync_cv, &s->mu);
        if (s->sync == NULL)
            break;
        batch = s->sync;
        s->sync = NULL;
        s->sync_tail = &s->sync;
        pthread_mutex_unlock(&s->mu);
        if (fsync(s->queue_fd) < 0)
            err = errno;
        pthread_mutex_lock(&s->mu);
        for (; batch != NULL; batch = next) {
            next = batch->next;
            finish(s, batch, err);
            n++;
        }
        s->syncs++;
        s->synced += n;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int
open_sub(int dir_fd, const char *name)
{
    if (mkdirat(dir_fd, name, 0700) < 0 && errno != EEXIST)
        return -1;
    return openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

static struct store *
files_open(const struct opts *o)
{
    struct store *s = xcalloc(1, sizeof(*s));
    s->nosync = o->nosync;
    s->dir_fd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0 || (s->tmp_fd = open_sub(s->dir_fd, "tmp")) < 0 ||
        (s->queue_fd = open_sub(s->dir_fd, "queue")) < 0 || fsync(s->dir_fd) < 0)
        die("files: open %s: %s", o->dir, strerror(errno));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    pthread_cond_init(&s->sync_cv, NULL);
    s->work_tail = &s->work;
    s->sync_tail = &s->sync;
    for (int i = 0; i < WORKERS; i++)
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0)
            die("pthread_create");
    if (pthread_create(&s->syncer, NULL, syncer_main, s) != 0)
        die("pthread_create");
    return s;
}

static int
files_put(struct store *s, uint64_t id, const unsigned char *data, size_t len)
{
    struct freq r = { .id = id };
    snprintf(r.name, sizeof(r.name), "%016" PRIx64, id);
    /* tern checks queue/ first: the clock that makes qids may step back */
    if (faccessat(s->queue_fd, r.name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
        errno = EEXIST;
        return -1;
    }
    r.fd = openat(s->tmp_fd, r.name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (r.fd < 0)
        return -1;
    if (write_full(r.fd, data, len) < 0) {
        close(r.fd);
        return -1;
    }
    if (s->nosync) {
        if (close(r.fd) < 0 || renameat(s->tmp_fd, r.name, s->queue_fd, r.name) < 0)
            return -1;
        return 0;
    }
    pthread_cond_init(&r.cv, NULL);
    pthread_mutex_lock(&s->mu);
    push(&s->work_tail, &r);
    pthread_cond_signal(&s->work_cv);
    wait_flag(&s->mu, &r.cv, &r.state);
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&r.cv);
    errno = r.err;
    return r.err ? -1 : 0;
}

static void
files_done(struct store *s, uint64_t id)
{
    char name[17];
    snprintf(name, sizeof(name), "%016" PRIx64, id);
    if (unlinkat(s->queue_fd, name, 0) < 0)
        die("unlink %s: %s", name, strerror(errno));
    __atomic_fetch_add(&s->unlinks, 1, __ATOMIC_RELAXED);
}

static void
files_quiesce(struct store *s)
{
    (void)s;
}

static void
files_stats(struct store *s, struct store_stats *st)
{
    pthread_mutex_lock(&s->mu);
    stats_add(st, "syncs", s->syncs);
    stats_add(st, "synced", s->synced);
    stats_add(st, "unlinks", __atomic_load_n(&s->unlinks, __ATOMIC_RELAXED));
    pthread_mutex_unlock(&s->mu);
}

static int
files_close(struct store *s)
{
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->work_cv);
    pthread_cond_broadcast(&s->sync_cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(s->workers[i], NULL);
    pthread_join(s->syncer, NULL);
    if (s->nosync && syncfs(s->dir_fd) < 0)
        rc = -1;
    close(s->tmp_fd);
    close(s->queue_fd);
    close(s->dir_fd);
    free(s);
    return rc;
}

static bool
parse_name(const char *n, uint64_t *id)
{
    char *end;
    if (strlen(n) != 16)
        return false;
    *id = strtoull(n, &end, 16);
    return *end == '\0';
}

/* What tern does at start-up: drop tmp/ leftovers (never acknowledged), then
 * list queue/; with_env also opens each file and reads its envelope. */
static int
files_recover(const struct opts *o, struct recovery *r)
{
    int dir_fd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), fd;
    struct dirent *de;
    DIR *d;
    if (dir_fd < 0)
        return snprintf(r->note, sizeof(r->note), "%s", strerror(errno)), -1;
    if ((fd = openat(dir_fd, "tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0 &&
        (d = fdopendir(fd)) != NULL) {
        while ((de = readdir(d)) != NULL)
            if (de->d_name[0] != '.' && unlinkat(fd, de->d_name, 0) == 0)
                r->dropped++;
        closedir(d);
    }
    if ((fd = openat(dir_fd, "queue", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (d = fdopendir(fd)) == NULL)
        return snprintf(r->note, sizeof(r->note), "queue: %s", strerror(errno)), -1;
    if (r->index == NULL)
        r->index = idmap_new(1 << 16);
    while ((de = readdir(d)) != NULL) {
        uint64_t id;
        if (de->d_name[0] == '.' || !parse_name(de->d_name, &id))
            continue;
        if (o->with_env) {
            unsigned char h[64];
            int mfd = openat(fd, de->d_name, O_RDONLY | O_CLOEXEC);
            ssize_t k = mfd >= 0 ? pread(mfd, h, sizeof(h), 0) : -1;
            if (k < 0 || !env_matches(h, (size_t)k, id))
                r->env_bad++;
            r->bytes += k > 0 ? (uint64_t)k : 0;
            if (mfd >= 0)
                close(mfd);
        }
        idmap_put(r->index, id, 0, 0);
        r->records++;
    }
    closedir(d);
    close(dir_fd);
    r->live = idmap_count(r->index);
    return 0;
}

const struct store_ops files_ops = {
    .prefix = "files",
    .open = files_open,
    .put = files_put,
    .done = files_done,
    .quiesce = files_quiesce,
    .stats = files_stats,
    .close = files_close,
    .recover = files_recover,
    .tear = NULL,
};

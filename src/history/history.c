/*
 * The journal writer. Lines are built in a caller's buffer, then appended
 * whole to one batch under one mutex (so lines of receive-loop threads never
 * interleave) and written with one write(2) per loop pass of an attached
 * loop, or at once elsewhere. Only the background thread opens, syncs and
 * closes files, so a loop never waits for the disk's flush; a failed write
 * drops its lines (history, never mail), is logged once, and the next write
 * starts on a new line so a cut line is the only one lost.
 */
#include "history/history.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util/fsutil.h"
#include "util/log.h"
#include "util/util.h"

static pthread_mutex_t hist_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hist_cv = PTHREAD_COND_INITIALIZER;
static int hist_dir_fd = -1;
static atomic_bool hist_on;     /* a journal is open: lines are worth building */
static int hist_fd = -1;        /* the file being written */
static int64_t hist_file_ms;    /* its name: when it was started */
static uint64_t hist_file_size; /* bytes written to it */
static bool hist_dirty;         /* written since the last sync */
static bool hist_failed;        /* the last write failed (logged once) */
static bool hist_cut;           /* a write may have left half a line */
static int64_t hist_retention_ms;
static uint64_t hist_max_size, hist_file_max;
static bool hist_stop;
static bool hist_thread_on;
static pthread_t hist_thread;
static char hist_batch[HISTORY_BATCH_MAX];
static size_t hist_batch_len;
static _Thread_local struct event *hist_flush_ev;
static _Thread_local bool hist_flush_armed;

static uint64_t
file_max_for(uint64_t max_size, uint64_t asked)
{
    uint64_t m = asked != 0 ? asked : max_size / 8;
    if (asked != 0)
        return m;
    return m < HISTORY_FILE_MIN ? HISTORY_FILE_MIN : (m > HISTORY_FILE_MAX ? HISTORY_FILE_MAX : m);
}

/* Called with hist_mu held. */
static void
write_locked(const char *p, size_t n)
{
    int err = 0;
    if (n == 0 || hist_fd < 0)
        return;
    if (hist_cut && fd_write_full(hist_fd, "\n", 1) < 0)
        err = errno;
    if (err == 0 && fd_write_full(hist_fd, p, n) < 0)
        err = errno;
    if (err != 0) {
        hist_cut = true;
        if (!hist_failed) {
            struct logline l;
            log_begin(&l, LOG_ERROR, NULL, "history", "write_failed");
            log_errno(&l, err);
            log_str(&l, "action", "events are dropped until a write succeeds; mail goes on");
            log_end(&l);
        }
        hist_failed = true;
        return;
    }
    if (hist_failed)
        log_simple(LOG_INFO, "history", "write_resumed", NULL);
    hist_failed = hist_cut = false;
    hist_file_size += n;
    hist_dirty = true;
}

static void
batch_write_locked(void)
{
    write_locked(hist_batch, hist_batch_len);
    hist_batch_len = 0;
}

void
history_flush(void)
{
    pthread_mutex_lock(&hist_mu);
    batch_write_locked();
    pthread_mutex_unlock(&hist_mu);
}

static void
flush_cb(evutil_socket_t fd, short what, void *arg)
{
    hist_flush_armed = false;
    history_flush();
}

int
history_attach_loop(struct event_base *base)
{
    history_detach_loop();
    hist_flush_ev = event_new(base, -1, 0, flush_cb, NULL);
    return hist_flush_ev != NULL ? 0 : -1;
}

void
history_detach_loop(void)
{
    history_flush();
    if (hist_flush_ev != NULL)
        event_free(hist_flush_ev);
    hist_flush_ev = NULL;
    hist_flush_armed = false;
}

void
history_begin(struct hline *h, const char *qid, const char *event)
{
    buf_init(&h->b);
    h->on = atomic_load_explicit(&hist_on, memory_order_relaxed);
    if (!h->on)
        return;
    buf_printf(&h->b, "{\"time\":%" PRId64, tern_now_ms());
    history_str(h, "id", qid != NULL ? qid : "-");
    history_str(h, "event", event);
}

void
history_str(struct hline *h, const char *key, const char *val)
{
    size_t n;
    if (!h->on || val == NULL)
        return;
    n = strlen(val);
    if (n > HISTORY_VALUE_MAX)
        n = HISTORY_VALUE_MAX;
    buf_printf(&h->b, ",\"%s\":\"", key);
    buf_append_json(&h->b, val, n);
    buf_append_char(&h->b, '"');
}

void
history_int(struct hline *h, const char *key, int64_t val)
{
    if (h->on)
        buf_printf(&h->b, ",\"%s\":%" PRId64, key, val);
}

void
history_end(struct hline *h)
{
    bool now;
    if (!h->on) {
        buf_fini(&h->b);
        return;
    }
    buf_append_str(&h->b, "}\n");
    pthread_mutex_lock(&hist_mu);
    if (hist_batch_len + h->b.len > sizeof(hist_batch))
        batch_write_locked();
    if (h->b.len > sizeof(hist_batch)) {
        write_locked(h->b.data, h->b.len);
    } else {
        memcpy(hist_batch + hist_batch_len, h->b.data, h->b.len);
        hist_batch_len += h->b.len;
    }
    now = hist_flush_ev == NULL;
    if (now)
        batch_write_locked();
    pthread_mutex_unlock(&hist_mu);
    buf_fini(&h->b);
    if (!now && !hist_flush_armed) {
        hist_flush_armed = true;
        event_active(hist_flush_ev, EV_TIMEOUT, 0);
    }
}

/* A journal file's name: 13 digits of milliseconds and ".jsonl". */
#define NAME_LEN 19

static bool
is_journal_name(const char *name, int64_t *ms)
{
    int64_t v = 0;
    if (strlen(name) != NAME_LEN || strcmp(name + 13, ".jsonl") != 0)
        return false;
    for (int i = 0; i < 13; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        v = v * 10 + (name[i] - '0');
    }
    *ms = v;
    return true;
}

/* A new file named after now_ms (later when that name is taken). The
 * descriptor, or -1 with errno. */
static int
open_new(int dir_fd, int64_t now_ms, int64_t *name_ms)
{
    char name[32];
    for (int i = 0; i < 1000; i++, now_ms++) {
        int fd;
        snprintf(name, sizeof(name), "%013" PRId64 ".jsonl", now_ms);
        fd = openat(
            dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0 || errno != EEXIST) {
            *name_ms = now_ms;
            return fd;
        }
    }
    errno = EEXIST;
    return -1;
}

static void
log_open_failed(int err)
{
    struct logline l;
    log_begin(&l, LOG_ERROR, NULL, "history", "open_failed");
    log_errno(&l, err);
    log_end(&l);
}

/* A new file once the hour has turned or the file is full. The old one is
 * synced and closed outside the mutex. */
static void
rotate(int64_t now_ms)
{
    int old = -1, fd, dir_fd;
    int64_t name_ms = 0;
    bool due;
    pthread_mutex_lock(&hist_mu);
    due = hist_dir_fd >= 0 && (hist_fd < 0 || hist_file_size >= hist_file_max ||
                                  now_ms / 3600000 != hist_file_ms / 3600000);
    dir_fd = hist_dir_fd;
    pthread_mutex_unlock(&hist_mu);
    if (!due)
        return;
    fd = open_new(dir_fd, now_ms, &name_ms);
    if (fd < 0) {
        int err = errno;
        pthread_mutex_lock(&hist_mu);
        bool first = !hist_failed;
        hist_failed = true;
        pthread_mutex_unlock(&hist_mu);
        if (first)
            log_open_failed(err);
        return;
    }
    pthread_mutex_lock(&hist_mu);
    batch_write_locked();
    old = hist_fd;
    hist_fd = fd;
    hist_file_ms = name_ms;
    hist_file_size = 0;
    hist_cut = false;
    pthread_mutex_unlock(&hist_mu);
    if (old >= 0) {
        (void)fdatasync(old);
        (void)close(old); /* synced: a late error cannot lose anything of mail */
    }
}

struct jfile {
    int64_t ms;
    uint64_t size;
    int64_t mtime_ms;
};

static int
jfile_cmp(const void *a, const void *b)
{
    const struct jfile *x = a, *y = b;
    return x->ms < y->ms ? -1 : x->ms > y->ms;
}

/* Delete files older than the retention, then the oldest ones while the
 * total passes max_size; the file being written is never deleted. */
static void
expire(int64_t now_ms)
{
    struct jfile *v = NULL;
    size_t n = 0, cap = 0;
    uint64_t total = 0, max;
    int64_t keep_after, cur;
    int dir_fd, dfd;
    DIR *d;
    struct dirent *de;
    pthread_mutex_lock(&hist_mu);
    dir_fd = hist_dir_fd;
    cur = hist_fd >= 0 ? hist_file_ms : -1;
    keep_after = now_ms - hist_retention_ms;
    max = hist_max_size;
    pthread_mutex_unlock(&hist_mu);
    if (dir_fd < 0 || (dfd = dup(dir_fd)) < 0)
        return;
    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return;
    }
    rewinddir(d);
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        int64_t ms;
        if (!is_journal_name(de->d_name, &ms) ||
            fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[n].ms = ms;
        v[n].size = (uint64_t)st.st_size;
        v[n].mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
        total += v[n].size;
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(v, n, sizeof(*v), jfile_cmp);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        if (v[i].ms == cur || (v[i].mtime_ms >= keep_after && total <= max))
            continue;
        snprintf(name, sizeof(name), "%013" PRId64 ".jsonl", v[i].ms);
        if (unlinkat(dir_fd, name, 0) == 0 || errno == ENOENT)
            total -= v[i].size;
    }
    free(v);
}

void
history_maintain(int64_t now_ms, bool do_expire)
{
    rotate(now_ms);
    if (do_expire)
        expire(now_ms);
}

/* Sync once a second when something was written; rotate; expire now and
 * then. The descriptor is only replaced or closed on this thread. */
static void *
bg_main(void *arg)
{
    int64_t last_expire = 0;
    pthread_mutex_lock(&hist_mu);
    while (!hist_stop) {
        struct timespec ts;
        bool sync;
        int fd;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += HISTORY_SYNC_MS / 1000;
        (void)pthread_cond_timedwait(&hist_cv, &hist_mu, &ts);
        if (hist_stop)
            break;
        sync = hist_dirty;
        hist_dirty = false;
        fd = hist_fd;
        pthread_mutex_unlock(&hist_mu);
        if (sync && fd >= 0)
            (void)fdatasync(fd);
        int64_t now = tern_now_ms();
        history_maintain(now, now - last_expire >= HISTORY_EXPIRE_MS);
        if (now - last_expire >= HISTORY_EXPIRE_MS)
            last_expire = now;
        pthread_mutex_lock(&hist_mu);
    }
    pthread_mutex_unlock(&hist_mu);
    return NULL;
}

/* SPOOL/history: made when missing, then trusted only when it is ours and
 * private (as the spool's own subdirectories are). */
static int
open_dir(const char *spool_dir, const struct history_opts *o, struct buf *err)
{
    char path[4096];
    struct stat st;
    struct buf why = BUF_INIT;
    struct fs_private priv = { S_IFDIR, S_IWGRP | S_IWOTH | S_IRWXO, true, false };
    int fd;
    if (snprintf(path, sizeof(path), "%s/%s", spool_dir, HISTORY_DIR) >= (int)sizeof(path)) {
        buf_printf(err, "history directory: path too long\n");
        return -1;
    }
    /* relative to the spool's descriptor, or, without one, to the cwd */
    int at = o->use_spool_fd ? o->spool_fd : AT_FDCWD;
    const char *rel = o->use_spool_fd ? HISTORY_DIR : path;
    if (mkdirat(at, rel, 0700) < 0 && errno != EEXIST) {
        buf_printf(err, "cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    fd = openat(at, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        buf_printf(err, "cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0 || fs_check_private(&st, &priv, &why) != FS_TRUSTED) {
        buf_printf(err, "history directory %s not trusted: %s\n", path,
            why.data ? why.data : strerror(errno));
        buf_fini(&why);
        close(fd);
        return -1;
    }
    buf_fini(&why);
    return fd;
}

int
history_open(const char *spool_dir, const struct history_opts *o, struct buf *err)
{
    int dir_fd = open_dir(spool_dir, o, err), fd;
    int64_t name_ms = 0;
    if (dir_fd < 0)
        return -1;
    fd = open_new(dir_fd, tern_now_ms(), &name_ms);
    if (fd < 0) {
        buf_printf(err, "cannot start a history file in %s/%s: %s\n", spool_dir, HISTORY_DIR,
            strerror(errno));
        close(dir_fd);
        return -1;
    }
    pthread_mutex_lock(&hist_mu);
    hist_dir_fd = dir_fd;
    hist_fd = fd;
    hist_file_ms = name_ms;
    hist_file_size = 0;
    hist_dirty = hist_failed = hist_cut = hist_stop = false;
    hist_retention_ms = o->retention_ms;
    hist_max_size = o->max_size;
    hist_file_max = file_max_for(o->max_size, o->file_max);
    atomic_store(&hist_on, true);
    pthread_mutex_unlock(&hist_mu);
    if (o->background) {
        if (pthread_create(&hist_thread, NULL, bg_main, NULL) != 0) {
            buf_printf(err, "cannot start the history thread\n");
            history_close();
            return -1;
        }
        hist_thread_on = true;
    }
    return 0;
}

void
history_set_limits(int64_t retention_ms, uint64_t max_size)
{
    pthread_mutex_lock(&hist_mu);
    hist_retention_ms = retention_ms;
    hist_max_size = max_size;
    hist_file_max = file_max_for(max_size, 0);
    pthread_mutex_unlock(&hist_mu);
}

void
history_close(void)
{
    if (hist_thread_on) {
        pthread_mutex_lock(&hist_mu);
        hist_stop = true;
        pthread_cond_signal(&hist_cv);
        pthread_mutex_unlock(&hist_mu);
        pthread_join(hist_thread, NULL);
        hist_thread_on = false;
    }
    pthread_mutex_lock(&hist_mu);
    batch_write_locked();
    if (hist_fd >= 0) {
        (void)fdatasync(hist_fd);
        (void)close(hist_fd);
    }
    if (hist_dir_fd >= 0)
        (void)close(hist_dir_fd);
    hist_fd = hist_dir_fd = -1;
    atomic_store(&hist_on, false);
    pthread_mutex_unlock(&hist_mu);
}

/*
 * Spool life cycle: the directory layout (SPOOL/log, corrupt) and refusing
 * one that others could write to, the table of existing segments read at
 * open (recovery reads their contents later, in the background), starting
 * and stopping the threads, and the counters. Every file operation is
 * relative to directory fds opened once.
 */
#include "spool/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool/spool_int.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/util.h"

/* mkdir -p: parents 0755, the spool itself 0700. */
int
spool_mkdir_p(const char *dir)
{
    char path[PATH_MAX];
    size_t n = strlen(dir);
    struct stat st;
    if (n == 0 || n >= sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (path[i] != '/')
            continue;
        path[i] = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return -1;
        path[i] = '/';
    }
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return -1;
    if (stat(path, &st) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Whoever can write to the spool can plant mail that ternd relays as its
 * own: the spool and its subdirectories belong to the user ternd runs as
 * (root when it runs as root) and nobody else may write to them. */
static const struct fs_private spool_dir_rule = { S_IFDIR, S_IWGRP | S_IWOTH, true, false };

static int
check_dir_as(int fd, const char *path, uid_t as, bool root_ok, uid_t *owner, struct buf *err)
{
    struct fs_private rule = spool_dir_rule;
    struct stat st;
    struct buf why = BUF_INIT;
    enum fs_trust t;
    if (fstat(fd, &st) < 0) {
        buf_printf(err, "spool directory %s: %s\n", path, strerror(errno));
        return -1;
    }
    rule.or_root = root_ok;
    t = fs_check_private_as(&st, &rule, as, &why);
    if (t != FS_TRUSTED)
        buf_printf(err, "spool directory %s: %s%s\n", path, why.data,
            t == FS_BAD_MODE    ? " (chmod 700 it)"
            : t == FS_BAD_OWNER ? " (chown it)"
                                : "");
    buf_fini(&why);
    if (owner != NULL)
        *owner = st.st_uid;
    return t == FS_TRUSTED ? 0 : -1;
}

static int
check_dir_fd(int fd, const char *path, uid_t *owner, struct buf *err)
{
    return check_dir_as(fd, path, geteuid(), false, owner, err);
}

static bool
is_symlink(int dir_fd, const char *name)
{
    struct stat st;
    return fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
}

/* Open (with create, making it first) the subdirectory name of dir and check
 * it. A symbolic link is not followed: it could lead anywhere. 0 with *fd
 * (-1 when missing and not created), -1 with err. */
static int
open_subdir_as(int dir_fd, const char *dir, const char *name, bool create, int *fd, bool *created,
    uid_t as, bool root_ok, struct buf *err)
{
    char path[PATH_MAX];
    *fd = -1;
    snprintf(path, sizeof(path), "%s/%s", dir, name); /* for messages only */
    if (create && mkdirat(dir_fd, name, 0700) == 0) {
        *created = true;
    } else if (create && errno != EEXIST) {
        buf_printf(err, "cannot create spool subdirectory %s: %s\n", path, strerror(errno));
        return -1;
    }
    *fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (*fd < 0 && errno == ENOENT && !create)
        return 0;
    /* O_NOFOLLOW with O_DIRECTORY fails with ENOTDIR or ELOOP on a link. */
    if (*fd < 0 && (errno == ELOOP || errno == ENOTDIR) && is_symlink(dir_fd, name)) {
        buf_printf(err, "spool directory %s: a symbolic link (not followed)\n", path);
        return -1;
    }
    if (*fd < 0) {
        buf_printf(err, "cannot open spool subdirectory %s: %s\n", path, strerror(errno));
        return -1;
    }
    return check_dir_as(*fd, path, as, root_ok, NULL, err);
}

static int
open_subdir(int dir_fd, const char *dir, const char *name, bool create, int *fd, bool *created,
    struct buf *err)
{
    return open_subdir_as(dir_fd, dir, name, create, fd, created, geteuid(), false, err);
}

/* log/ and corrupt/, and queue/ and tmp/ of an old spool not yet converted. */
static const char *const spool_subdirs[] = { "log", "corrupt", "queue", "tmp" };

static int
check_subdirs(int fd, const char *dir, uid_t as, bool root_ok, struct buf *err)
{
    bool unused = false;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < TERN_ARRAY_LEN(spool_subdirs); i++) {
        int sub;
        rc = open_subdir_as(fd, dir, spool_subdirs[i], false, &sub, &unused, as, root_ok, err);
        if (sub >= 0)
            close(sub); /* directory: nothing buffered */
    }
    return rc;
}

/* A missing spool is made at start: its nearest existing ancestor must be
 * a directory we may write to. */
static int
check_creatable(const char *dir, struct buf *err)
{
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof(path), "%s", dir);
    for (;;) {
        char *slash = strrchr(path, '/');
        if (slash == NULL) {
            snprintf(path, sizeof(path), ".");
        } else if (slash == path) {
            path[1] = '\0';
        } else {
            *slash = '\0';
        }
        if (stat(path, &st) == 0)
            break;
        if (errno != ENOENT || strcmp(path, "/") == 0 || strcmp(path, ".") == 0) {
            buf_printf(
                err, "spool_dir %s: cannot be created: %s: %s\n", dir, path, strerror(errno));
            return -1;
        }
    }
    if (!S_ISDIR(st.st_mode) || access(path, W_OK | X_OK) < 0) {
        buf_printf(err, "spool_dir %s: cannot be created: %s is %s\n", dir, path,
            S_ISDIR(st.st_mode) ? "not writable" : "not a directory");
        return -1;
    }
    return 0;
}

int
spool_check(const char *dir, struct buf *err)
{
    return spool_check_as(dir, geteuid(), false, err);
}

int
spool_check_as(const char *dir, uid_t uid, bool root_ok, struct buf *err)
{
    int rc, fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return check_creatable(dir, err); /* start-up makes it, mode 0700 */
    if (fd < 0) {
        buf_printf(err, "cannot open spool directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    /* ternd started as root hands a root-owned spool over (root_ok). */
    rc = check_dir_as(fd, dir, uid, root_ok, NULL, err);
    if (rc == 0)
        rc = check_subdirs(fd, dir, uid, root_ok, err);
    close(fd);
    return rc;
}

/* Open one existing segment file: a regular file of ours whose header names
 * the same sequence as its file name. NULL (logged) otherwise. */
static struct seg *
open_existing(int log_fd, const char *name, uint64_t seq, uid_t owner)
{
    unsigned char hdr[SEG_HDR_LEN];
    struct stat st;
    uint64_t hseq;
    struct seg *s;
    const char *why = NULL;
    int fd = openat(log_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        /* The relay may not even open what another user planted: say what
         * it is rather than "Permission denied". */
        int e = errno;
        if (fstatat(log_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode))
            why = "not a regular file";
        else if (fstatat(log_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid != owner)
            why = "not owned by the spool's user";
        else
            why = strerror(e);
    } else if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        why = "not a regular file";
    } else if (st.st_uid != owner) {
        why = "not owned by the spool's user";
    } else if (fd_pread_full(fd, hdr, SEG_HDR_LEN, 0) != SEG_HDR_LEN ||
               seg_hdr_decode(hdr, &hseq) < 0 || hseq != seq) {
        why = "bad segment header";
    }
    if (why != NULL) {
        struct logline l;
        log_begin(&l, LOG_ERROR, NULL, "spool", "segment_ignored");
        log_str(&l, "segment", name);
        log_str(&l, "reason", why);
        log_end(&l);
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    s = xcalloc(1, sizeof(*s));
    s->seq = seq;
    s->fd = fd;
    s->end = (uint64_t)st.st_size;
    s->sealed = true;
    return s;
}

static int
cmp_seq(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Fill the segment table from log/ (sorted by sequence). */
int
spool_list_segments(int log_fd, struct segtab *t, uint64_t *next_seq)
{
    DIR *d;
    struct dirent *de;
    uint64_t *seqs = NULL, max = 0;
    size_t n = 0, cap = 0;
    struct stat dst;
    int dfd = openat(log_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    /* Segment files belong to whoever owns log/ (the daemon's user; a tool
     * run by root reads them too). */
    if (dfd < 0 || fstat(dfd, &dst) < 0 || (d = fdopendir(dfd)) == NULL) {
        if (dfd >= 0)
            close(dfd);
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        uint64_t seq;
        bool is_idx;
        if (!seg_name_parse(de->d_name, &seq, &is_idx) || is_idx)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            seqs = xrealloc(seqs, cap * sizeof(*seqs));
        }
        seqs[n++] = seq;
        if (seq > max)
            max = seq;
    }
    closedir(d);
    if (n > 0)
        qsort(seqs, n, sizeof(*seqs), cmp_seq);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        struct seg *s;
        seg_name(seqs[i], "seg", name, sizeof(name));
        s = open_existing(log_fd, name, seqs[i], dst.st_uid);
        if (s != NULL)
            segtab_add(t, s);
    }
    free(seqs);
    *next_seq = max + 1;
    return 0;
}

static int
open_layout(struct spool *sp, struct buf *err)
{
    bool made = false;
    if (sp->dir_fd < 0 && spool_mkdir_p(sp->dir) < 0) {
        buf_printf(err, "cannot create spool directory %s: %s\n", sp->dir, strerror(errno));
        return -1;
    }
    if (sp->dir_fd < 0)
        sp->dir_fd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dir_fd < 0) {
        buf_printf(err, "cannot open spool directory %s: %s\n", sp->dir, strerror(errno));
        return -1;
    }
    if (check_dir_fd(sp->dir_fd, sp->dir, &sp->owner_uid, err) < 0 ||
        open_subdir(sp->dir_fd, sp->dir, "log", true, &sp->log_fd, &made, err) < 0 ||
        open_subdir(sp->dir_fd, sp->dir, "corrupt", true, &sp->corrupt_fd, &made, err) < 0 ||
        check_subdirs(sp->dir_fd, sp->dir, geteuid(), false, err) < 0) /* old queue/, tmp/ */
        return -1;
    /* The layout must survive a crash before the first message does. */
    if (made && fsync(sp->dir_fd) < 0) {
        buf_printf(err, "fsync %s: %s\n", sp->dir, strerror(errno));
        return -1;
    }
    return 0;
}

struct spool *
spool_open(const char *dir, struct loopq *owner, const struct spool_opts *opts, struct buf *err)
{
    struct buf dummy = BUF_INIT;
    struct spool *sp = xcalloc(1, sizeof(*sp));
    if (err == NULL)
        err = &dummy;
    sp->dir = xstrdup(dir);
    sp->owner = owner;
    sp->seg_size = opts && opts->segment_size ? opts->segment_size : SPOOL_SEG_SIZE_DEF;
    if (sp->seg_size < SPOOL_SEG_SIZE_MIN)
        sp->seg_size = SPOOL_SEG_SIZE_MIN;
    if (sp->seg_size > SEG_SIZE_MAX)
        sp->seg_size = SEG_SIZE_MAX;
    sp->dir_fd = sp->log_fd = sp->corrupt_fd = -1;
    if (opts != NULL && opts->use_dir_fd)
        sp->dir_fd = opts->dir_fd;
    pthread_mutex_init(&sp->mu, NULL);
    index_init(&sp->idx);
    if (open_layout(sp, err) < 0)
        goto fail;
    if (spool_list_segments(sp->log_fd, &sp->segs, &sp->next_seq) < 0) {
        buf_printf(err, "cannot read %s/log: %s\n", sp->dir, strerror(errno));
        goto fail;
    }
    sp->st.segments = sp->segs.n;
    sp->recover_upto = sp->next_seq - 1;
    if (spool_commit_start(sp, err) < 0)
        goto fail;
    buf_fini(&dummy);
    return sp;
fail:
    spool_free(sp);
    buf_fini(&dummy);
    return NULL;
}

static void
close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd); /* directories: nothing buffered to lose */
    *fd = -1;
}

void
spool_free(struct spool *sp)
{
    if (sp == NULL)
        return;
    spool_recover_join(sp);
    if (sp->commitq != NULL)
        spool_commit_stop(sp);
    for (size_t i = 0; i < sp->segs.n; i++) {
        struct seg *s = sp->segs.v[i];
        TERN_ASSERT(s->refs == 0); /* every body handle is closed by now */
        if (s->fd >= 0)
            close(s->fd);
        free(s->recs);
        free(s);
    }
    free(sp->segs.v);
    index_fini(&sp->idx);
    pthread_mutex_destroy(&sp->mu);
    close_fd(&sp->dir_fd);
    close_fd(&sp->log_fd);
    close_fd(&sp->corrupt_fd);
    free(sp->dir);
    free(sp);
}

const char *
spool_dir(const struct spool *sp)
{
    return sp->dir;
}

struct loopq *
spool_owner(const struct spool *sp)
{
    return sp->owner;
}

void
spool_set_commit_hook(struct spool *sp, spool_commit_hook fn, void *arg)
{
    sp->hook = fn;
    sp->hook_arg = arg;
}

bool
spool_recovered(struct spool *sp)
{
    bool r;
    pthread_mutex_lock(&sp->mu);
    r = sp->recovered;
    pthread_mutex_unlock(&sp->mu);
    return r;
}

void
spool_get_stats(struct spool *sp, struct spool_stats *st)
{
    pthread_mutex_lock(&sp->mu);
    *st = sp->st;
    st->live_messages = sp->idx.live;
    pthread_mutex_unlock(&sp->mu);
}

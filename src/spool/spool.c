/*
 * Spool life cycle: creating the directory layout (SPOOL/tmp, queue,
 * corrupt) and refusing one that others could write to, removing
 * never-acknowledged tmp/ leftovers at start-up, starting and stopping the
 * commit and update threads, and removing messages. The directory fds are
 * opened once; every file operation is relative to them.
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

/* mkdir -p: parents 0755, the spool itself 0700. *created if it was made. */
static int
mkdir_p(const char *dir, bool *created)
{
    char path[PATH_MAX];
    size_t n = strlen(dir);
    struct stat st;
    *created = false;
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
    if (mkdir(path, 0700) == 0)
        *created = true;
    else if (errno != EEXIST)
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
check_dir_fd(int fd, const char *path, uid_t *owner, struct buf *err)
{
    struct stat st;
    struct buf why = BUF_INIT;
    enum fs_trust t;
    if (fstat(fd, &st) < 0) {
        buf_printf(err, "spool directory %s: %s\n", path, strerror(errno));
        return -1;
    }
    t = fs_check_private(&st, &spool_dir_rule, &why);
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
open_subdir(int dir_fd, const char *dir, const char *name, bool create, int *fd, bool *created,
    struct buf *err)
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
    return check_dir_fd(*fd, path, NULL, err);
}

static const char *const spool_subdirs[] = { "tmp", "queue", "corrupt" };

int
spool_check(const char *dir, struct buf *err)
{
    int rc, fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    bool unused = false;
    if (fd < 0 && errno == ENOENT)
        return 0; /* start-up makes it, mode 0700 */
    if (fd < 0) {
        buf_printf(err, "cannot open spool directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    rc = check_dir_fd(fd, dir, NULL, err);
    for (size_t i = 0; rc == 0 && i < TERN_ARRAY_LEN(spool_subdirs); i++) {
        int sub;
        rc = open_subdir(fd, dir, spool_subdirs[i], false, &sub, &unused, err);
        if (sub >= 0)
            close(sub); /* directory: nothing buffered */
    }
    close(fd);
    return rc;
}

/* Files in tmp/ were never acknowledged (no 250): remove them. */
static void
clean_tmp(struct spool *sp)
{
    struct dirent *de;
    int dfd = openat(sp->tmp_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (d == NULL) {
        if (dfd >= 0)
            close(dfd);
        log_simple(LOG_ERROR, "spool", "tmp_unreadable", strerror(errno));
        return;
    }
    while ((de = readdir(d)) != NULL) {
        struct logline l;
        int rc;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        rc = unlinkat(sp->tmp_fd, de->d_name, 0);
        log_begin(&l, rc == 0 ? LOG_INFO : LOG_WARN,
            spool_qid_valid(de->d_name) ? de->d_name : NULL, "spool", "tmp_removed");
        if (!spool_qid_valid(de->d_name))
            log_str(&l, "name", de->d_name);
        if (rc < 0)
            log_errno(&l, errno);
        log_end(&l);
    }
    closedir(d);
}

static int
open_layout(struct spool *sp, struct buf *err)
{
    bool created = false, made;
    if (mkdir_p(sp->dir, &made) < 0) {
        buf_printf(err, "cannot create spool directory %s: %s\n", sp->dir, strerror(errno));
        return -1;
    }
    sp->dir_fd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dir_fd < 0) {
        buf_printf(err, "cannot open spool directory %s: %s\n", sp->dir, strerror(errno));
        return -1;
    }
    if (check_dir_fd(sp->dir_fd, sp->dir, &sp->owner, err) < 0 ||
        open_subdir(sp->dir_fd, sp->dir, "tmp", true, &sp->tmp_fd, &created, err) < 0 ||
        open_subdir(sp->dir_fd, sp->dir, "queue", true, &sp->queue_fd, &created, err) < 0 ||
        open_subdir(sp->dir_fd, sp->dir, "corrupt", true, &sp->corrupt_fd, &created, err) < 0)
        return -1;
    /* The layout must survive a crash before the first message does. */
    if (created && fsync(sp->dir_fd) < 0) {
        buf_printf(err, "fsync %s: %s\n", sp->dir, strerror(errno));
        return -1;
    }
    return 0;
}

struct spool *
spool_open(const char *dir, struct event_base *base, struct buf *err)
{
    struct buf dummy = BUF_INIT;
    struct spool *sp = xcalloc(1, sizeof(*sp));
    if (err == NULL)
        err = &dummy;
    sp->dir = xstrdup(dir);
    sp->base = base;
    sp->dir_fd = sp->tmp_fd = sp->queue_fd = sp->corrupt_fd = sp->efd = -1;
    if (open_layout(sp, err) < 0)
        goto fail;
    clean_tmp(sp);
    if (spool_update_start(sp, err) < 0 || spool_commit_start(sp, err) < 0)
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
    /* An open writer would point at freed memory: the caller must abort it. */
    TERN_ASSERT(sp->n_writers == 0);
    spool_commit_stop(sp);
    spool_update_stop(sp);
    close_fd(&sp->dir_fd);
    close_fd(&sp->tmp_fd);
    close_fd(&sp->queue_fd);
    close_fd(&sp->corrupt_fd);
    free(sp->dir);
    free(sp);
}

const char *
spool_dir(const struct spool *sp)
{
    return sp->dir;
}

void
spool_set_commit_hook(struct spool *sp, spool_commit_hook fn, void *arg)
{
    sp->hook = fn;
    sp->hook_arg = arg;
}

int
spool_remove(struct spool *sp, const char *qid)
{
    if (!spool_qid_valid(qid)) {
        errno = ENOENT;
        return -1;
    }
    return unlinkat(sp->queue_fd, qid, 0);
}

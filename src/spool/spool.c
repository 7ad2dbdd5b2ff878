/*
 * Spool life cycle: creating the directory layout (SPOOL/tmp, queue,
 * corrupt), removing never-acknowledged tmp/ leftovers at start-up, starting
 * and stopping the commit and update threads, and removing messages. The
 * directory fds are opened once; every file operation is relative to them.
 */
#include "spool/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool/spool_int.h"
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

static int
open_subdir(struct spool *sp, const char *name, int *fd, bool *created)
{
    if (mkdirat(sp->dir_fd, name, 0700) == 0)
        *created = true;
    else if (errno != EEXIST)
        return -1;
    *fd = openat(sp->dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return *fd < 0 ? -1 : 0;
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
        buf_printf(err, "cannot create spool directory %s: %s", sp->dir, strerror(errno));
        return -1;
    }
    sp->dir_fd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dir_fd < 0) {
        buf_printf(err, "cannot open spool directory %s: %s", sp->dir, strerror(errno));
        return -1;
    }
    if (open_subdir(sp, "tmp", &sp->tmp_fd, &created) < 0 ||
        open_subdir(sp, "queue", &sp->queue_fd, &created) < 0 ||
        open_subdir(sp, "corrupt", &sp->corrupt_fd, &created) < 0) {
        buf_printf(err, "cannot create spool subdirectory in %s: %s", sp->dir, strerror(errno));
        return -1;
    }
    /* The layout must survive a crash before the first message does. */
    if (created && fsync(sp->dir_fd) < 0) {
        buf_printf(err, "fsync %s: %s", sp->dir, strerror(errno));
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

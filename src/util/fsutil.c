/*
 * Whole-buffer read and write loops, shared by the spool, DSN writer and
 * the command-line tools, and the trust rule for private files.
 */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int
fd_write_full(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = EIO;
            return -1;
        }
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

int
fd_pwrite_full(int fd, const void *p, size_t n, uint64_t off)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = pwrite(fd, c, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = EIO;
            return -1;
        }
        c += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

ssize_t
fd_pread_full(int fd, void *p, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (char *)p + got, n - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        if (k == 0)
            break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

int
fd_read_all(int fd, struct buf *out, size_t max)
{
    size_t start = out->len;
    for (;;) {
        ssize_t k;
        buf_reserve(out, 65536);
        k = read(fd, out->data + out->len, 65536);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        if (k == 0)
            return 0;
        out->len += (size_t)k;
        out->data[out->len] = '\0';
        if (out->len - start > max) {
            errno = EFBIG;
            return -1;
        }
    }
}

int
fs_read_file(const char *path, struct buf *out, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), rc, saved;
    if (fd < 0)
        return -1;
    rc = fd_read_all(fd, out, max);
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

enum fs_trust
fs_check_private(const struct stat *st, const struct fs_private *p, struct buf *why)
{
    return fs_check_private_as(st, p, geteuid(), why);
}

enum fs_trust
fs_check_private_as(const struct stat *st, const struct fs_private *p, uid_t me, struct buf *why)
{
    mode_t bad = st->st_mode & p->deny;
    if ((st->st_mode & S_IFMT) != p->type) {
        buf_printf(why, "not a %s", p->type == S_IFDIR ? "directory" : "regular file");
        return FS_BAD_TYPE;
    }
    if (bad & (S_IWGRP | S_IWOTH)) {
        buf_printf(why, "writable by group or others");
        return FS_BAD_MODE;
    }
    if (bad != 0) {
        buf_printf(why, "readable by %s", (p->deny & S_IRGRP) ? "group or others" : "others");
        return FS_BAD_MODE;
    }
    if (p->own && st->st_uid != me && !(p->or_root && st->st_uid == 0)) {
        buf_printf(why, "owned by uid %lu, not by uid %lu that ternd runs as%s",
            (unsigned long)st->st_uid, (unsigned long)me, p->or_root ? " (or root)" : "");
        return FS_BAD_OWNER;
    }
    return FS_TRUSTED;
}

int
fs_replace_file(const char *dir, const char *name, const void *data, size_t len, struct buf *err)
{
    char path[4096], tmp[4200];
    int fd, dfd;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        buf_printf(err, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    if (fd_write_full(fd, data, len) < 0 || fsync(fd) < 0) {
        buf_printf(err, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        buf_printf(err, "cannot replace %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0) {
        buf_printf(err, "cannot sync %s: %s", dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        return -1;
    }
    close(dfd);
    return 0;
}

/*
 * One daemon per spool: ternd's parent takes an exclusive flock on
 * SPOOL/lock before it touches anything else in the spool and keeps it for
 * the daemon's life (the relay inherits the descriptor; the kernel drops
 * the lock when the last of the two exits, a kill -9 included). A second ternd
 * reads the holder's pid from the file and leaves without touching the
 * control socket or any file. Started as root, ternd also hands a spool
 * that root owns (made by an older ternd that ran as root) to its user.
 */
#include "spool/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool/spool_int.h"
#include "util/fsutil.h"
#include "util/util.h"

#define LOCK_NAME      "lock"
#define HANDOVER_DEPTH 3 /* SPOOL/log/SEGMENT is as deep as the spool goes */

/* chown dir_fd's entries owned by root, without following links, depth
 * levels down; -1 with errno on the first failure. */
static int
chown_tree(int dir_fd, uid_t uid, gid_t gid, int depth)
{
    DIR *d;
    struct dirent *de;
    int rc = 0, fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (d = fdopendir(fd)) == NULL) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    while (rc == 0 && (de = readdir(d)) != NULL) {
        struct stat st;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_uid != 0)
            continue; /* gone, or not root's: left as it is (the checks judge it) */
        if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISSOCK(st.st_mode))
            continue;
        rc = fchownat(dir_fd, de->d_name, uid, gid, AT_SYMLINK_NOFOLLOW);
        if (rc == 0 && S_ISDIR(st.st_mode) && depth > 1) {
            int sub = openat(dir_fd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
            rc = sub < 0 ? -1 : chown_tree(sub, uid, gid, depth - 1);
            if (sub >= 0)
                close(sub);
        }
    }
    closedir(d);
    return rc;
}

/* The lock is held by another ternd: name it. */
static void
report_holder(int fd, const char *dir, struct buf *err)
{
    char pid[32];
    ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
    pid[n > 0 ? n : 0] = '\0';
    pid[strcspn(pid, "\n")] = '\0';
    buf_printf(err, "spool_dir %s is in use by another ternd (pid %s); not started\n", dir,
        pid[0] ? pid : "unknown");
}

static int
take_lock(int dir_fd, const char *dir, uid_t uid, gid_t gid, bool hand_over, struct buf *err)
{
    char pid[32];
    int n, fd = openat(
               dir_fd, LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0) {
        buf_printf(err, "spool_dir %s: cannot open %s: %s\n", dir, LOCK_NAME, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            report_holder(fd, dir, err);
        else
            buf_printf(err, "spool_dir %s: cannot lock: %s\n", dir, strerror(errno));
        close(fd);
        return errno == EWOULDBLOCK ? -2 : -1;
    }
    n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n ||
        (hand_over && fchown(fd, uid, gid) < 0)) {
        buf_printf(err, "spool_dir %s: cannot write %s: %s\n", dir, LOCK_NAME, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int
spool_prepare(const char *dir, uid_t uid, gid_t gid, bool hand_over, int *lock_fd, int *dir_fd,
    struct buf *err)
{
    struct stat st;
    int rc;
    *lock_fd = *dir_fd = -1;
    if (spool_mkdir_p(dir) < 0) {
        buf_printf(err, "cannot create spool directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    *dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (*dir_fd < 0) {
        buf_printf(err, "cannot open spool directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    rc = take_lock(*dir_fd, dir, uid, gid, hand_over, err);
    if (rc < 0) {
        close(*dir_fd);
        *dir_fd = -1;
        return rc;
    }
    *lock_fd = rc;
    /* Root's spool (new, or from a ternd that ran as root) becomes the
     * user's; a spool of anyone else is left for the trust check to refuse. */
    if (hand_over && fstat(*dir_fd, &st) == 0 && st.st_uid == 0 &&
        (fchown(*dir_fd, uid, gid) < 0 || chown_tree(*dir_fd, uid, gid, HANDOVER_DEPTH) < 0)) {
        buf_printf(err, "spool_dir %s: cannot hand it to uid %lu: %s\n", dir, (unsigned long)uid,
            strerror(errno));
        return -1;
    }
    return 0;
}

/*
 * The maildrop directory: writing a drop file into it (tern-sendmail as
 * root or the daemon's user, and tern-drop), the check tern-drop makes of
 * it, and ternd's preparation of it at start (Postfix's maildrop: 1730,
 * owned by the daemon's user, group of the setgid helper; the sticky bit
 * keeps submitters from removing each other's files, and others can neither
 * list nor enter it).
 */
#include "maildrop/maildrop.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/fsutil.h"

static int
random_id(char *out)
{
    unsigned char r[MAILDROP_ID_HEX / 2];
    size_t got = 0;
    while (got < sizeof(r)) {
        ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(out + 2 * i, 3, "%02x", r[i]);
    return 0;
}

/* Make the new name durable: fsync of the directory, or, when it was
 * opened O_PATH (tern-drop's group may not read it), syncfs of the file
 * system through the file. */
static int
sync_name(int dirfd, int fd)
{
    if (fsync(dirfd) == 0)
        return 0;
    if (errno != EBADF)
        return -1;
    return syncfs(fd);
}

int
maildrop_write(int dirfd, const char *data, size_t len, char *name_out)
{
    char id[MAILDROP_ID_HEX + 1], tmp[MAILDROP_NAME_MAX];
    int fd, e;
    if (random_id(id) < 0)
        return -1;
    snprintf(tmp, sizeof(tmp), "t.%s", id);
    snprintf(name_out, MAILDROP_NAME_MAX, "d.%s", id);
    fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY,
        MAILDROP_FILE_MODE);
    if (fd < 0)
        return -1;
    /* The mode is set whatever the umask: ternd's user reads the file. */
    if (fchmod(fd, MAILDROP_FILE_MODE) < 0 || fd_write_full(fd, data, len) < 0 || fsync(fd) < 0)
        goto fail;
    /* Complete and on disk before it gets the name ternd picks up. */
    if (renameat(dirfd, tmp, dirfd, name_out) < 0)
        goto fail;
    if (sync_name(dirfd, fd) < 0) {
        e = errno;
        close(fd);
        errno = e;
        return -1; /* named, but not known durable: the caller must not report success */
    }
    if (close(fd) < 0)
        return -1;
    return 0;
fail:
    e = errno;
    close(fd);
    unlinkat(dirfd, tmp, 0);
    errno = e;
    return -1;
}

bool
maildrop_dir_usable(const struct stat *st, gid_t gid)
{
    return S_ISDIR(st->st_mode) && st->st_gid == gid && (st->st_mode & S_ISVTX) != 0 &&
           (st->st_mode & S_IWOTH) == 0;
}

/* Group and mode of the open directory fd: MAILDROP_DIR_MODE with the
 * group when it exists and may be given, else 0700. */
static int
set_access(int fd, const char *dir, const char *group_name, struct buf *warn, struct buf *err)
{
    struct group *gr = group_name != NULL && group_name[0] != '\0' ? getgrnam(group_name) : NULL;
    mode_t mode = 0700;
    if (gr == NULL)
        buf_printf(warn,
            "group %s does not exist: only root and ternd's user can submit while "
            "ternd is down (groupadd --system %s)",
            group_name != NULL ? group_name : "", group_name != NULL ? group_name : "");
    else if (fchown(fd, (uid_t)-1, gr->gr_gid) < 0)
        buf_printf(warn, "cannot give %s to group %s: %s", dir, group_name, strerror(errno));
    else
        mode = MAILDROP_DIR_MODE;
    if (fchmod(fd, mode) < 0) {
        buf_printf(err, "maildrop_dir %s: cannot set its mode: %s\n", dir, strerror(errno));
        return -1;
    }
    return 0;
}

int
maildrop_prepare(
    const char *dir, const char *name, const char *group_name, struct buf *warn, struct buf *err)
{
    struct stat st;
    int fd, r = -1;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        buf_printf(warn, "cannot create %s: %s", name, strerror(errno));
        return 1;
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        buf_printf(err, "maildrop_dir %s: %s\n", name,
            errno == ELOOP || errno == ENOTDIR ? "not a directory (a symbolic link?)"
                                               : strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        buf_printf(err, "maildrop_dir %s: %s\n", name, strerror(errno));
    } else if (st.st_uid != geteuid()) {
        buf_printf(err,
            "maildrop_dir %s: owned by uid %u, not by uid %u that ternd runs as (chown)\n", name,
            (unsigned)st.st_uid, (unsigned)geteuid());
    } else if (set_access(fd, name, group_name, warn, err) == 0) {
        r = 0;
        if (mkdirat(fd, MAILDROP_CORRUPT, 0700) < 0 && errno != EEXIST) {
            buf_printf(err, "maildrop_dir %s: cannot create %s/: %s\n", name, MAILDROP_CORRUPT,
                strerror(errno));
            r = -1;
        }
    }
    close(fd);
    return r;
}

int
maildrop_check(const char *dir, uid_t uid, bool root_ok, struct buf *err)
{
    struct stat st;
    if (lstat(dir, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        buf_printf(err, "maildrop_dir %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        buf_printf(err, "maildrop_dir %s: not a directory\n", dir);
        return -1;
    }
    if (st.st_uid != uid && !(root_ok && st.st_uid == 0)) {
        buf_printf(err,
            "maildrop_dir %s: owned by uid %u, not by uid %u that ternd runs as (chown)\n", dir,
            (unsigned)st.st_uid, (unsigned)uid);
        return -1;
    }
    return 0;
}

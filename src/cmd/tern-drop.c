/*
 * tern-drop: the setgid helper (mode 2755, group maildrop_group) through
 * which tern-sendmail leaves a message in the maildrop while ternd is down,
 * for callers that may not write there themselves (Postfix's postdrop).
 * Usage: tern-drop MAILDROP_DIR, a whole drop file (maildrop.h) on stdin.
 * It reads no configuration and no environment: the directory it is given
 * must belong to its group, be sticky and not writable by others, and all
 * it can do there is add one well-formed file owned by the caller, whose
 * uid ternd takes from the file, not from anything the caller says.
 * Exit codes: sysexits.h (0 stored; 65 malformed; 75 not stored).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include "maildrop/maildrop.h"
#include "util/buf.h"
#include "util/fsutil.h"

#define INPUT_MAX (MAILDROP_HEAD_MAX + MAILDROP_MSG_MAX + MAILDROP_TRAILER_LEN)

#ifdef __SANITIZE_ADDRESS__
/* Sanitizer builds only: LeakSanitizer works by ptrace-ing the process,
 * which a setgid process is not allowed (it is not dumpable). */
const char *__asan_default_options(void);
const char *
__asan_default_options(void)
{
    return "detect_leaks=0";
}
#endif

/* A setgid program started with 0, 1 or 2 closed would hand that number to
 * the next file it opens, and a message meant for stderr could land in a
 * drop file: make sure they are open. */
static void
std_fds_open(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF &&
            open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
            _exit(EX_OSERR);
    }
}

static int
read_input(struct buf *in)
{
    if (fd_read_all(STDIN_FILENO, in, INPUT_MAX) == 0)
        return 0;
    if (errno == EFBIG)
        fprintf(stderr, "tern-drop: input larger than %u bytes\n", (unsigned)INPUT_MAX);
    else
        fprintf(stderr, "tern-drop: reading stdin: %s\n", strerror(errno));
    return -1;
}

/* The directory, opened without reading it (the group may only enter and
 * add), and checked to be a maildrop of this program's group. */
static int
open_dir(const char *path)
{
    struct stat st;
    int fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "tern-drop: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0 || !maildrop_dir_usable(&st, getegid())) {
        fprintf(stderr,
            "tern-drop: %s is not a maildrop of group %u (sticky, not writable by others)\n", path,
            (unsigned)getegid());
        close(fd);
        return -1;
    }
    return fd;
}

int
main(int argc, char **argv)
{
    struct buf in = BUF_INIT, err = BUF_INIT;
    struct maildrop_head h;
    char name[MAILDROP_NAME_MAX];
    int dirfd, ret = EX_TEMPFAIL;
    std_fds_open();
    umask(077);
    /* A file-size limit the caller set must fail the write, not kill us
     * half way (which would leave a t. file for ternd to remove). */
    signal(SIGXFSZ, SIG_IGN);
    if (clearenv() != 0)
        return EX_OSERR;
    if (argc != 2 || argv[1][0] != '/') {
        fputs("usage: tern-drop /MAILDROP_DIR < DROPFILE\n", stderr);
        return EX_USAGE;
    }
    if (read_input(&in) < 0) {
        buf_fini(&in);
        return EX_DATAERR;
    }
    if (maildrop_parse_file(in.data ? in.data : "", in.len, MAILDROP_MSG_MAX, &h, &err) < 0) {
        fprintf(stderr, "tern-drop: malformed input: %s\n", err.data);
        buf_fini(&in);
        buf_fini(&err);
        return EX_DATAERR;
    }
    maildrop_head_fini(&h);
    dirfd = open_dir(argv[1]);
    if (dirfd >= 0) {
        if (maildrop_write(dirfd, in.data, in.len, name) == 0)
            ret = EX_OK;
        else
            fprintf(stderr, "tern-drop: cannot store the message in %s: %s\n", argv[1],
                strerror(errno));
        close(dirfd);
    }
    buf_fini(&in);
    buf_fini(&err);
    return ret;
}

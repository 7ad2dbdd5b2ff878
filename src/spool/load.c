/*
 * Reading committed messages: header, envelope records, end marker and the
 * appended status records, with every length bounded. A file that does not
 * parse is damaged, and so is an entry ternd could not have made (not a
 * regular file of the spool's owner): spool_walk moves it to corrupt/ and
 * never delivers it. A torn last status record (a crash mid-append) is
 * ignored.
 */
#include "spool/spool_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/fsutil.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

/* Buffered line reader over [off, end) of a file, using pread. */
struct rd {
    int fd;
    uint64_t off; /* file offset of buf[0] */
    uint64_t end;
    char *buf; /* SPOOL_LINE_MAX + 1 bytes */
    size_t pos, len;
};

enum { RD_LINE = 1, RD_EOF = 0, RD_TORN = -2, RD_LONG = -3, RD_IOERR = -1 };

static void
rd_init(struct rd *r, int fd, uint64_t off, uint64_t end)
{
    r->fd = fd;
    r->off = off;
    r->end = end;
    r->buf = xmalloc(SPOOL_LINE_MAX + 1);
    r->pos = r->len = 0;
}

static void
rd_fini(struct rd *r)
{
    FREE_NULL(&r->buf);
}

/* Next line (without "\n") in *line, *len. RD_TORN: bytes without a final
 * newline before end (or the file is shorter than end). */
static int
rd_line(struct rd *r, const char **line, size_t *len)
{
    for (;;) {
        char *start = r->buf + r->pos;
        char *nl = memchr(start, '\n', r->len - r->pos);
        uint64_t fpos;
        size_t want;
        ssize_t k;
        if (nl != NULL) {
            *line = start;
            *len = (size_t)(nl - start);
            r->pos += *len + 1;
            return RD_LINE;
        }
        if (r->len - r->pos > SPOOL_LINE_MAX)
            return RD_LONG;
        memmove(r->buf, start, r->len - r->pos);
        r->off += r->pos;
        r->len -= r->pos;
        r->pos = 0;
        fpos = r->off + r->len;
        if (fpos >= r->end)
            return r->len > 0 ? RD_TORN : RD_EOF;
        want = SPOOL_LINE_MAX + 1 - r->len;
        if (r->end - fpos < want)
            want = (size_t)(r->end - fpos);
        k = fd_pread_full(r->fd, r->buf + r->len, want, fpos);
        if (k < 0)
            return RD_IOERR;
        if (k == 0)
            return RD_TORN;
        r->len += (size_t)k;
    }
}

int
spool_parse_header(const char *h, uint64_t *body_off, uint64_t *body_len, const char **reason)
{
    static const char pending[] = SPOOL_HDR_PENDING;
    if (memcmp(h, pending, sizeof(pending) - 1) == 0) {
        *reason = "uncommitted";
        return -1;
    }
    /* "TERN1 body=" 20 digits " len=" 20 digits "\n" */
    if (memcmp(h, SPOOL_MAGIC "body=", 11) != 0 || memcmp(h + 31, " len=", 5) != 0 ||
        h[56] != '\n' || parse_u64(h + 11, 20, UINT64_MAX, body_off) < 0 ||
        parse_u64(h + 36, 20, UINT64_MAX, body_len) < 0) {
        *reason = "bad header";
        return -1;
    }
    if (*body_off < SPOOL_HDR_LEN || *body_off > INT64_MAX || *body_len > INT64_MAX) {
        *reason = "bad header";
        return -1;
    }
    return 0;
}

/* Envelope records in [SPOOL_HDR_LEN, body_off); their CRC in *crc. */
static struct spool_env *
load_env(int fd, uint64_t body_off, uint32_t *crc, const char **reason)
{
    struct spool_env_parser p;
    struct spool_env *env = NULL;
    struct rd r;
    const char *line;
    size_t len;
    int rc;
    *crc = 0;
    spool_env_parser_init(&p);
    rd_init(&r, fd, SPOOL_HDR_LEN, body_off);
    while ((rc = rd_line(&r, &line, &len)) == RD_LINE) {
        *crc = spool_crc32c(*crc, line, len + 1);
        if (spool_env_parse_line(&p, line, len) < 0) {
            *reason = "bad envelope record";
            goto out;
        }
    }
    if (rc == RD_IOERR)
        goto out;
    if (rc != RD_EOF) {
        *reason = rc == RD_LONG ? "envelope line too long" : "truncated envelope";
        goto out;
    }
    env = spool_env_parse_end(&p);
    if (env == NULL)
        *reason = "incomplete envelope";
out:
    rd_fini(&r);
    spool_env_parser_fini(&p);
    return env;
}

static int
body_crc(int fd, uint64_t off, uint64_t len, uint32_t *crc)
{
    char *b = xmalloc(SPOOL_WBUF_SIZE);
    int rc = 0;
    *crc = 0;
    while (len > 0) {
        size_t want = len < SPOOL_WBUF_SIZE ? (size_t)len : SPOOL_WBUF_SIZE;
        ssize_t k = fd_pread_full(fd, b, want, off);
        if (k != (ssize_t)want) {
            rc = k < 0 ? -1 : 1;
            break;
        }
        *crc = spool_crc32c(*crc, b, want);
        off += want;
        len -= want;
    }
    free(b);
    return rc;
}

/* Check "\nEND <env crc> <body crc>\n" at off. 0 ok, 1 damaged, -1 I/O. */
static int
check_end(int fd, uint64_t off, uint32_t env_crc, uint32_t *bcrc, const char **reason)
{
    char m[SPOOL_END_LEN + 1];
    char want[SPOOL_END_LEN + 1];
    ssize_t k = fd_pread_full(fd, m, SPOOL_END_LEN, off);
    if (k < 0)
        return -1;
    if (k != SPOOL_END_LEN || memcmp(m, "\nEND ", 5) != 0 || m[13] != ' ' ||
        m[SPOOL_END_LEN - 1] != '\n') {
        *reason = "missing end marker";
        return 1;
    }
    snprintf(want, sizeof(want), "\nEND %08" PRIx32 " ", env_crc);
    if (memcmp(m, want, 14) != 0) {
        *reason = "envelope checksum mismatch";
        return 1;
    }
    m[SPOOL_END_LEN - 1] = '\0';
    *bcrc = 0;
    for (int i = 14; i < 22; i++) {
        char c = m[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            *reason = "missing end marker";
            return 1;
        }
        *bcrc = *bcrc << 4 | (uint32_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return 0;
}

/* Status records from off to the end of the file; last one may be torn. */
static int
load_status(int fd, struct spool_env *env, uint64_t off, uint64_t size, const char **reason)
{
    struct rd r;
    const char *line;
    size_t len;
    int rc;
    bool bad_pending = false;
    rd_init(&r, fd, off, size);
    while ((rc = rd_line(&r, &line, &len)) == RD_LINE) {
        int a;
        if (bad_pending) {
            *reason = "bad status record";
            rc = 1;
            goto out;
        }
        a = spool_status_apply(env, line, len);
        if (a < 0) {
            *reason = "invalid status record";
            rc = 1;
            goto out;
        }
        bad_pending = a > 0;
    }
    /* A bad or torn last line is a crash mid-append: ignored. Two of them
     * cannot happen (the updater trims a torn tail before appending). */
    if (rc == RD_LONG || (rc == RD_TORN && bad_pending)) {
        *reason = "bad status record";
        rc = 1;
        goto out;
    }
    rc = rc == RD_IOERR ? -1 : 0;
out:
    rd_fini(&r);
    return rc;
}

/* The header, end marker and sizes; *reason on damage. */
static int
load_frame(int fd, uint64_t *body_off, uint64_t *body_len, uint64_t *size, const char **reason)
{
    char h[SPOOL_HDR_LEN];
    struct stat st;
    ssize_t k;
    if (fstat(fd, &st) < 0)
        return -1;
    *size = (uint64_t)st.st_size;
    k = fd_pread_full(fd, h, SPOOL_HDR_LEN, 0);
    if (k < 0)
        return -1;
    if (k != SPOOL_HDR_LEN) {
        *reason = "short file";
        return 1;
    }
    if (spool_parse_header(h, body_off, body_len, reason) < 0)
        return 1;
    if (*size < SPOOL_END_LEN || *body_off > *size - SPOOL_END_LEN ||
        *body_len > *size - SPOOL_END_LEN - *body_off) {
        *reason = "truncated file";
        return 1;
    }
    return 0;
}

struct spool_env *
spool_load_fd(int fd, const char *qid, bool verify_body, const char **reason)
{
    uint64_t off, len, size;
    uint32_t ecrc, bcrc, got;
    struct spool_env *env = NULL;
    int rc;
    *reason = NULL;
    rc = load_frame(fd, &off, &len, &size, reason);
    if (rc == 0)
        env = load_env(fd, off, &ecrc, reason);
    if (env == NULL)
        return NULL;
    rc = check_end(fd, off + len, ecrc, &bcrc, reason);
    if (rc == 0 && verify_body) {
        rc = body_crc(fd, off, len, &got);
        if (rc == 0 && got != bcrc) {
            *reason = "body checksum mismatch";
            rc = 1;
        } else if (rc > 0) {
            *reason = "truncated body";
        }
    }
    if (rc == 0 && strcmp(env->qid, qid) != 0) {
        *reason = "queue id mismatch";
        rc = 1;
    }
    if (rc == 0)
        rc = load_status(fd, env, off + len + SPOOL_END_LEN, size, reason);
    if (rc != 0) {
        int e = errno;
        spool_env_free(env);
        errno = e;
        return NULL;
    }
    env->body_off = off;
    env->body_len = len;
    return env;
}

struct spool_env *
spool_load(struct spool *sp, const char *qid)
{
    struct spool_env *env;
    const char *reason;
    int fd = spool_open_message(sp, qid);
    if (fd < 0)
        return NULL;
    env = spool_load_fd(fd, qid, false, &reason);
    if (env == NULL && reason != NULL) {
        struct logline l;
        log_begin(&l, LOG_WARN, qid, "spool", "load_failed");
        log_str(&l, "reason", reason);
        log_end(&l);
        errno = EBADMSG;
    }
    close(fd); /* read-only: nothing to lose */
    return env;
}

/* Why an entry of queue/ is not one ternd made, or NULL when it may be. */
static const char *
entry_problem(const struct spool *sp, const struct stat *st)
{
    if (S_ISLNK(st->st_mode))
        return "symbolic link (not followed)";
    if (!S_ISREG(st->st_mode))
        return "not a regular file";
    if (st->st_uid != sp->owner)
        return "not owned by the spool's owner";
    return NULL;
}

/* Open queue/<name> for reading when it is what ternd itself puts there: a
 * regular file of the spool's owner. Looked at before it is opened (opening
 * a device can do things), opened without following a link or waiting (a
 * FIFO would block), and looked at again through the descriptor. -1 with
 * *reason when the entry is something else, or with errno (ENOENT: gone). */
static int
open_queue_file(struct spool *sp, const char *name, const char **reason)
{
    struct stat st;
    int fd;
    *reason = NULL;
    if (fstatat(sp->queue_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -1;
    if ((*reason = entry_problem(sp, &st)) != NULL)
        return -1;
    fd = openat(sp->queue_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        if (errno == ELOOP)
            *reason = "symbolic link (not followed)"; /* swapped in meanwhile */
        return -1;
    }
    if (fstat(fd, &st) < 0 || (*reason = entry_problem(sp, &st)) != NULL) {
        int e = errno;
        close(fd); /* read-only: nothing to lose */
        errno = e;
        return -1;
    }
    return fd;
}

int
spool_open_message(struct spool *sp, const char *qid)
{
    const char *reason;
    int fd;
    if (!spool_qid_valid(qid)) {
        errno = ENOENT; /* not a name the spool could hold */
        return -1;
    }
    fd = open_queue_file(sp, qid, &reason);
    if (fd < 0 && reason != NULL) {
        struct logline l;
        log_begin(&l, LOG_WARN, qid, "spool", "open_refused");
        log_str(&l, "reason", reason);
        log_end(&l);
        errno = EBADMSG;
    }
    return fd;
}

static void
move_corrupt(struct spool *sp, const char *qid, const char *reason)
{
    struct logline l;
    int rc = renameat(sp->queue_fd, qid, sp->corrupt_fd, qid);
    int e = errno;
    log_begin(&l, LOG_WARN, qid, "spool", "corrupt");
    log_str(&l, "reason", reason);
    if (rc < 0)
        log_errno(&l, e);
    else
        log_str(&l, "moved_to", "corrupt/");
    log_end(&l);
}

/* Load one entry of queue/ for the walk: 1 visited, 0 skipped. */
static int
walk_one(struct spool *sp, const char *name, spool_walk_fn fn, void *arg)
{
    const char *reason;
    struct spool_env *env;
    struct logline l;
    int fd = open_queue_file(sp, name, &reason);
    if (fd < 0 && reason != NULL) {
        move_corrupt(sp, name, reason);
        return 0;
    }
    if (fd < 0 && errno == ENOENT)
        return 0; /* removed meanwhile */
    if (fd < 0) {
        log_begin(&l, LOG_ERROR, name, "spool", "open_failed");
        log_errno(&l, errno);
        log_end(&l);
        return 0;
    }
    env = spool_load_fd(fd, name, true, &reason);
    if (env == NULL && reason != NULL) {
        move_corrupt(sp, name, reason);
    } else if (env == NULL) {
        log_begin(&l, LOG_ERROR, name, "spool", "read_failed");
        log_errno(&l, errno);
        log_end(&l);
    }
    close(fd);
    if (env == NULL)
        return 0;
    fn(env, arg);
    return 1;
}

long
spool_walk(struct spool *sp, spool_walk_fn fn, void *arg)
{
    long n = 0;
    struct dirent *de;
    int dfd = openat(sp->queue_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (d == NULL) {
        if (dfd >= 0)
            close(dfd);
        return -1;
    }
    while ((errno = 0, de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (!spool_qid_valid(de->d_name)) {
            struct logline l;
            log_begin(&l, LOG_WARN, NULL, "spool", "unexpected_file");
            log_str(&l, "name", de->d_name);
            log_end(&l);
            continue;
        }
        n += walk_one(sp, de->d_name, fn, arg);
    }
    closedir(d);
    return n;
}

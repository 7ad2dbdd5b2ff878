/*
 * The spool layout of earlier releases: SPOOL/queue/<qid>, one file per
 * message (a 57-byte header, envelope lines, the body, an end marker with
 * checksums, appended status lines). Kept only to convert such a spool
 * into the log at the first start of this release: every message is
 * written again with its queue id, arrival time and state, synced, and only
 * then are the old files removed. A file that does not parse is moved to
 * corrupt/ as before.
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

#include "util/crc32c.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define OLD_MAGIC   "TERN1 "
#define OLD_HDR_LEN 57
#define OLD_END_LEN 23
#define OLD_CHUNK   65536

/* Buffered line reader over [off, end) of a file, using pread. */
struct rd {
    int fd;
    uint64_t off, end;
    char *buf; /* SPOOL_LINE_MAX + 1 */
    size_t pos, len;
};

enum { RD_LINE = 1, RD_EOF = 0, RD_TORN = -2, RD_LONG = -3, RD_IOERR = -1 };

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

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* "<record> <8 lowercase hex crc>" */
static bool
status_check(const char *line, size_t len)
{
    uint32_t want = 0;
    if (len < 2 + 9 || line[len - 9] != ' ')
        return false;
    for (size_t i = len - 8; i < len; i++) {
        int v = hexval(line[i]);
        if (v < 0)
            return false;
        want = want << 4 | (uint32_t)v;
    }
    return crc32c(0, line, len - 9) == want;
}

/* "s idx state attempts error", "h 0|1", "d prefix": 0 applied, -1 bad. */
static int
status_apply(struct spool_env *env, const char *line, size_t len)
{
    const char *v = line + 2, *f[4];
    size_t n = len - 9 - 2, nf[4], k = 0;
    uint64_t idx, st, att;
    char *p;
    if (line[1] != ' ')
        return -1;
    if (line[0] == 'h' && n == 1 && (v[0] == '0' || v[0] == '1')) {
        env->held = v[0] == '1';
        return 0;
    }
    if (line[0] == 'd') {
        /* spool_unesc sets p only when it succeeds. */
        if (spool_unesc(v, n, &p) < 0)
            return -1;
        if (!spool_prefix_valid(p, strlen(p))) {
            free(p);
            return -1;
        }
        free(env->prefix);
        env->prefix = p;
        return 0;
    }
    if (line[0] != 's')
        return -1;
    while (k < 4) {
        const char *sp = k < 3 ? memchr(v, ' ', n) : NULL;
        f[k] = v;
        nf[k] = sp ? (size_t)(sp - v) : n;
        if (k < 3 && sp == NULL)
            return -1;
        n -= sp ? nf[k] + 1 : n;
        v = sp ? sp + 1 : v + nf[k];
        k++;
    }
    if (parse_u64(f[0], nf[0], SIZE_MAX, &idx) < 0 || idx >= env->n_rcpts ||
        parse_u64(f[1], nf[1], RCPT_STATE_LAST, &st) < 0 ||
        parse_u64(f[2], nf[2], UINT32_MAX, &att) < 0)
        return -1;
    if (nf[3] == 1 && f[3][0] == '-')
        p = NULL;
    else if (spool_unesc(f[3], nf[3], &p) < 0)
        return -1;
    env->rcpts[idx].state = (enum rcpt_state)st;
    env->rcpts[idx].attempts = (uint32_t)att;
    free(env->rcpts[idx].last_error);
    env->rcpts[idx].last_error = p;
    return 0;
}

static int
parse_header(const char *h, uint64_t *off, uint64_t *len)
{
    if (memcmp(h, OLD_MAGIC "body=", 11) != 0 || memcmp(h + 31, " len=", 5) != 0 || h[56] != '\n' ||
        parse_u64(h + 11, 20, INT64_MAX, off) < 0 || parse_u64(h + 36, 20, INT64_MAX, len) < 0 ||
        *off < OLD_HDR_LEN)
        return -1;
    return 0;
}

int
legacy_load(int dir_fd, uid_t owner, const char *name, struct legacy_msg *out, const char **reason)
{
    char h[OLD_HDR_LEN], end[OLD_END_LEN];
    struct rd r = { 0 };
    struct stat st;
    struct spool_env *env = xcalloc(1, sizeof(*env));
    uint64_t off, len;
    size_t field = 0;
    const char *line;
    size_t ll;
    int rc;
    memset(out, 0, sizeof(*out));
    out->fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    *reason = NULL;
    if (out->fd < 0) {
        *reason = errno == ELOOP ? "a symbolic link (not followed)" : "cannot open";
        goto fail;
    }
    if (fstat(out->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        *reason = "not a regular file";
        goto fail;
    }
    if (st.st_uid != owner) {
        *reason = "owned by another user than the spool's";
        goto fail;
    }
    if (fd_pread_full(out->fd, h, OLD_HDR_LEN, 0) != OLD_HDR_LEN ||
        parse_header(h, &off, &len) < 0 || (uint64_t)st.st_size < off + len + OLD_END_LEN) {
        *reason = "bad header";
        goto fail;
    }
    r.fd = out->fd;
    r.off = OLD_HDR_LEN;
    r.end = off;
    r.buf = xmalloc(SPOOL_LINE_MAX + 1);
    while ((rc = rd_line(&r, &line, &ll)) == RD_LINE) {
        if (spool_env_legacy_line(env, &field, line, ll) < 0) {
            *reason = "bad envelope record";
            goto fail;
        }
    }
    if (rc != RD_EOF || !spool_env_legacy_complete(env, field) || strcmp(env->qid, name) != 0) {
        *reason = "bad envelope";
        goto fail;
    }
    if (fd_pread_full(out->fd, end, OLD_END_LEN, off + len) != OLD_END_LEN ||
        memcmp(end, "\nEND ", 5) != 0) {
        *reason = "missing end marker";
        goto fail;
    }
    /* Status lines; a torn last one is a crash mid-append: ignored. */
    r.off = off + len + OLD_END_LEN;
    r.end = (uint64_t)st.st_size;
    r.pos = r.len = 0;
    while ((rc = rd_line(&r, &line, &ll)) == RD_LINE) {
        if (status_check(line, ll) && status_apply(env, line, ll) < 0) {
            *reason = "invalid status record";
            goto fail;
        }
    }
    free(r.buf);
    env->body_len = len;
    out->env = env;
    out->body_off = off;
    return 0;
fail:
    free(r.buf);
    spool_env_free(env);
    if (out->fd >= 0)
        close(out->fd);
    out->fd = -1;
    return -1;
}

/* Write one old message into the log, keeping its id, arrival and state. */
static int
migrate_one(struct spool *sp, struct legacy_msg *m)
{
    struct spool_writer *w = spool_writer_new_keep(sp, m->env);
    char *b = xmalloc(OLD_CHUNK);
    uint64_t done = 0;
    int rc = 0;
    while (done < m->env->body_len) {
        uint64_t left = m->env->body_len - done;
        size_t want = left < OLD_CHUNK ? (size_t)left : OLD_CHUNK;
        if (fd_pread_full(m->fd, b, want, m->body_off + done) != (ssize_t)want) {
            rc = -1;
            break;
        }
        spool_writer_write(w, b, want);
        done += want;
    }
    free(b);
    if (rc < 0) {
        spool_writer_abort(w);
        return -1;
    }
    spool_writer_commit(w, NULL, NULL, 0, NULL);
    spool_update_state(sp, m->env);
    return 0;
}

static void
log_old(const char *name, const char *event, const char *reason)
{
    struct logline l;
    log_begin(&l, LOG_WARN, spool_qid_valid(name) ? name : NULL, "spool", event);
    if (!spool_qid_valid(name))
        log_str(&l, "name", name);
    if (reason != NULL)
        log_str(&l, "reason", reason);
    log_end(&l);
}

/* tmp/ of the old layout held messages never acknowledged. */
static void
remove_old_tmp(struct spool *sp)
{
    int tfd = openat(sp->dir_fd, "tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    DIR *d = tfd >= 0 ? fdopendir(tfd) : NULL;
    struct dirent *de;
    if (d == NULL) {
        if (tfd >= 0)
            close(tfd);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] != '.')
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
    unlinkat(sp->dir_fd, "tmp", AT_REMOVEDIR);
}

void
spool_migrate_legacy(struct spool *sp)
{
    int qfd = openat(sp->dir_fd, "queue", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    DIR *d;
    struct dirent *de;
    char **done = NULL;
    size_t n = 0, cap = 0;
    remove_old_tmp(sp);
    if (qfd < 0)
        return;
    d = fdopendir(dup(qfd));
    while (d != NULL && (de = readdir(d)) != NULL) {
        struct legacy_msg m;
        const char *reason;
        if (de->d_name[0] == '.')
            continue;
        if (!spool_qid_valid(de->d_name)) {
            log_old(de->d_name, "unexpected_file", NULL);
            continue;
        }
        if (legacy_load(qfd, sp->owner_uid, de->d_name, &m, &reason) < 0) {
            log_old(de->d_name, "corrupt", reason);
            renameat(qfd, de->d_name, sp->corrupt_fd, de->d_name);
            continue;
        }
        if (migrate_one(sp, &m) == 0) {
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                done = xrealloc(done, cap * sizeof(*done));
            }
            done[n++] = xstrdup(de->d_name);
        }
        close(m.fd);
        spool_env_free(m.env);
    }
    if (d != NULL)
        closedir(d);
    /* Only once the copies are durable may the originals go. */
    if (n > 0 && spool_sync_wait(sp) != 0) {
        log_old("queue", "conversion_failed", "the log could not be synced");
    } else {
        struct logline l;
        for (size_t i = 0; i < n; i++)
            unlinkat(qfd, done[i], 0);
        unlinkat(sp->dir_fd, "queue", AT_REMOVEDIR); /* fails if anything is left */
        log_begin(&l, LOG_INFO, NULL, "spool", "converted_old_spool");
        log_int(&l, "messages", (int64_t)n);
        log_end(&l);
    }
    for (size_t i = 0; i < n; i++)
        free(done[i]);
    free(done);
    close(qfd);
}

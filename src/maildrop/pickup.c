/*
 * ternd's pickup: drop files become spool messages. Passes over the
 * directory run one at a time; each lists it on a worker thread, then takes
 * its files one by one: the worker checks a file (regular, one link, size
 * bounded, strict format), claims it by renaming it c.ID.QID (directory
 * synced), writes the message into a spool writer; the loop commits it and,
 * once it is durable, unlinks the claimed file. Claimed files left by a
 * stop or kill between claim and unlink are settled at start, before the
 * queue is loaded (so before anything of it can be delivered and removed):
 * unlinked when the spool holds QID, renamed back to d.ID when it does not;
 * so nothing is lost and nothing doubled. Files that fail a check are moved
 * to corrupt/ with one log line.
 */
#include "maildrop/maildrop.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "history/history.h"
#include "metrics/metrics.h"
#include "sched/sched.h"
#include "smtp/smtp.h"
#include "spool/spool.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/loopq.h"
#include "util/util.h"
#include "util/workq.h"

#define PICKUP_PASS_MAX    256   /* names taken per pass; the rest in the next */
#define PICKUP_REFUSED_MAX 256   /* names that could not even be moved aside */
#define PICKUP_CHUNK       65536 /* bytes read at a time */
#define PICKUP_WAIT_MS     200   /* polls until the spool is loaded */
#define PICKUP_TMP_AGE_S   3600  /* a t. file this old was never acknowledged */

enum job_kind { JOB_LIST, JOB_FILE };

struct pickup_job {
    struct workq_item it;
    struct pickup *p;
    enum job_kind kind;
    struct config *cfg; /* ref */
    char *name;         /* owned: the file (JOB_FILE) */
    /* JOB_LIST results */
    char **names;
    size_t n_names;
    bool full;
    /* JOB_FILE results */
    struct spool_writer *w; /* owned until committed */
    char claimed[MAILDROP_NAME_MAX];
    bool refused; /* could not be moved aside: skip it from now on */
    bool acted;   /* the file was taken, moved or removed */
};

struct pickup {
    struct event_base *base;
    struct loopq *inbox;
    struct spool *sp;
    struct sched *sch;
    struct config *cfg; /* ref */
    char *dir;          /* where it is opened */
    char *name;         /* maildrop_dir, for messages */
    int dirfd, corruptfd, inofd;
    struct event *ino_ev, *timer;
    struct workq *wq;
    bool busy, again, stopping, started;
    struct pickup_job *job; /* the one in flight */
    char **names;           /* this pass's names, taken from a list job */
    size_t n_names, next;
    bool more;     /* the listing was cut at PICKUP_PASS_MAX */
    bool progress; /* a file of this pass was acted on */
    char *refused[PICKUP_REFUSED_MAX];
    size_t n_refused;
    uint64_t picked_up; /* messages committed to the spool */
};

static void pass_next(struct pickup *p);

/* ---- worker side ---- */

static void
log_file(enum log_level lvl, const char *qid, const char *event, const char *name,
    const char *reason, int err)
{
    struct logline l;
    log_begin(&l, lvl, qid, "pickup", event);
    log_str(&l, "file", name);
    if (reason != NULL)
        log_str(&l, "reason", reason);
    if (err != 0)
        log_errno(&l, err);
    log_end(&l);
}

/* Set name aside in corrupt/ (never delivered, kept for the operator). */
static void
move_aside(struct pickup_job *j, const char *name, const char *reason)
{
    struct logline l;
    if (renameat2(j->p->dirfd, name, j->p->corruptfd, name, RENAME_NOREPLACE) < 0) {
        log_file(LOG_ERROR, NULL, "corrupt_stuck", name, reason, errno);
        j->refused = true;
        return;
    }
    /* The move is made durable so that a refused file does not come back. */
    (void)fsync(j->p->corruptfd);
    j->acted = true;
    log_begin(&l, LOG_WARN, NULL, "pickup", "corrupt");
    log_str(&l, "file", name);
    log_str(&l, "reason", reason);
    log_str(&l, "moved_to", MAILDROP_CORRUPT);
    log_end(&l);
}

static void
add_name(char ***v, size_t *n, const char *name)
{
    *v = xrealloc(*v, (*n + 1) * sizeof(**v));
    (*v)[(*n)++] = xstrdup(name);
}

/* The names of one pass: ready and claimed files (and strangers, to be set
 * aside) first, t. files only in the room left, so files being written
 * never keep the next ones out of a pass. */
static void
list_run(struct pickup_job *j)
{
    int fd = openat(j->p->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    char **tmp = NULL;
    size_t n_tmp = 0;
    if (d == NULL) {
        log_file(LOG_ERROR, NULL, "list_failed", ".", NULL, errno);
        if (fd >= 0)
            close(fd);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        enum maildrop_name k = maildrop_name_kind(de->d_name, NULL);
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            k == MAILDROP_N_CORRUPT)
            continue;
        if (k == MAILDROP_N_TMP && n_tmp < PICKUP_PASS_MAX)
            add_name(&tmp, &n_tmp, de->d_name);
        else if (k != MAILDROP_N_TMP && j->n_names < PICKUP_PASS_MAX)
            add_name(&j->names, &j->n_names, de->d_name);
        else
            j->full = true;
    }
    closedir(d);
    for (size_t i = 0; i < n_tmp; i++) {
        if (j->n_names < PICKUP_PASS_MAX)
            add_name(&j->names, &j->n_names, tmp[i]);
        else
            j->full = true;
        free(tmp[i]);
    }
    free(tmp);
}

/* A t. file is the helper's while it writes; an old one was never
 * acknowledged (the helper reports success only after the rename). */
static void
tmp_check(struct pickup_job *j)
{
    struct stat st;
    if (fstatat(j->p->dirfd, j->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return;
    if (!S_ISREG(st.st_mode)) {
        move_aside(j, j->name, "not a regular file");
        return;
    }
    if (st.st_mtime < time(NULL) - PICKUP_TMP_AGE_S) {
        if (unlinkat(j->p->dirfd, j->name, 0) == 0) {
            log_file(LOG_WARN, NULL, "stale_removed", j->name, "unfinished for an hour", 0);
            j->acted = true;
        }
    }
}

struct dropfile {
    int fd;
    struct stat st;
    struct maildrop_head h;
    struct maildrop_body b;
};

/* Open name for reading as a drop file: a regular file with one link, no
 * larger than the biggest valid one; without following links or blocking
 * on a FIFO. NULL reason: ok. */
static const char *
open_drop(struct pickup_job *j, struct dropfile *f)
{
    struct stat pre;
    uint64_t max = j->cfg->max_message_size + MAILDROP_HEAD_MAX + MAILDROP_TRAILER_LEN;
    if (fstatat(j->p->dirfd, j->name, &pre, AT_SYMLINK_NOFOLLOW) < 0)
        return "cannot stat";
    /* Looked at before opening: opening a device may have effects. */
    if (!S_ISREG(pre.st_mode))
        return "not a regular file";
    f->fd = openat(j->p->dirfd, j->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (f->fd < 0)
        return "cannot open";
    if (fstat(f->fd, &f->st) < 0 || f->st.st_ino != pre.st_ino || f->st.st_dev != pre.st_dev ||
        !S_ISREG(f->st.st_mode))
        return "changed while opened";
    if (f->st.st_nlink != 1)
        return "has other links";
    if ((uint64_t)f->st.st_size > max)
        return "larger than max_message_size";
    return NULL;
}

/* Read and check the header lines and the message; err gets the reason. */
static int
check_drop(struct pickup_job *j, struct dropfile *f, struct buf *err)
{
    size_t n =
        (size_t)f->st.st_size < MAILDROP_HEAD_MAX ? (size_t)f->st.st_size : MAILDROP_HEAD_MAX;
    struct buf head = BUF_INIT;
    char tail[MAILDROP_TRAILER_LEN];
    int r = -1;
    buf_reserve(&head, n);
    if (fd_pread_full(f->fd, head.data, n, 0) != (ssize_t)n) {
        buf_append_str(err, "cannot read");
        goto out;
    }
    head.len = n;
    r = maildrop_parse_head(head.data, n, j->cfg->max_message_size, &f->h, err);
    if (r <= 0) {
        if (r == 0)
            buf_append_str(err, "truncated header");
        r = -1;
        goto out;
    }
    r = -1;
    if (f->h.n_rcpts > j->cfg->max_recipients) {
        buf_append_str(err, "more recipients than max_recipients");
        goto out;
    }
    if ((uint64_t)f->st.st_size != f->h.head_len + f->h.size + MAILDROP_TRAILER_LEN) {
        buf_append_str(err, (uint64_t)f->st.st_size < f->h.head_len + f->h.size
                                ? "truncated message"
                                : "size does not match");
        goto out;
    }
    if (fd_pread_full(f->fd, tail, sizeof(tail), f->h.head_len + f->h.size) != sizeof(tail) ||
        memcmp(tail, MAILDROP_TRAILER, sizeof(tail)) != 0) {
        buf_append_str(err, "no end marker");
        goto out;
    }
    r = 0;
out:
    buf_fini(&head);
    return r;
}

/* Read the message bytes, checking them (f->b) and, with w, writing them. */
static int
read_body(struct dropfile *f, struct spool_writer *w, struct buf *err)
{
    char *chunk = xmalloc(PICKUP_CHUNK);
    uint64_t off = 0;
    int r = 0;
    maildrop_body_init(&f->b);
    while (r == 0 && off < f->h.size) {
        size_t n = f->h.size - off < PICKUP_CHUNK ? (size_t)(f->h.size - off) : PICKUP_CHUNK;
        if (fd_pread_full(f->fd, chunk, n, f->h.head_len + off) != (ssize_t)n) {
            buf_append_str(err, "cannot read the message");
            r = -1;
        } else if (maildrop_body_feed(&f->b, chunk, n, err) < 0) {
            r = -1;
        } else if (w != NULL) {
            spool_writer_write(w, chunk, n);
        }
        off += n;
    }
    if (r == 0)
        r = maildrop_body_end(&f->b, err);
    free(chunk);
    return r;
}

static bool
has_8bit(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

/* The envelope: the sender given, else the owner's login @ hostname (as
 * Postfix's pickup does); the owner comes from the kernel, not the file. */
static struct spool_env *
make_env(struct pickup_job *j, const struct dropfile *f)
{
    struct spool_env *env = xcalloc(1, sizeof(*env));
    bool utf8 = f->b.hdr_8bit;
    if (f->h.sender != NULL) {
        env->sender = xstrdup(f->h.sender);
    } else {
        struct passwd pw, *res = NULL;
        char pwbuf[4096];
        struct buf b = BUF_INIT;
        if (getpwuid_r(f->st.st_uid, &pw, pwbuf, sizeof(pwbuf), &res) == 0 && res != NULL)
            buf_printf(&b, "%s@%s", pw.pw_name, j->cfg->hostname);
        else
            buf_printf(&b, "uid%u@%s", (unsigned)f->st.st_uid, j->cfg->hostname);
        env->sender = buf_take(&b);
    }
    utf8 |= has_8bit(env->sender);
    for (size_t i = 0; i < f->h.n_rcpts; i++) {
        spool_env_add_rcpt(env, f->h.rcpts[i], NULL, 0);
        utf8 |= has_8bit(f->h.rcpts[i]);
    }
    env->smtputf8 = utf8;
    env->body = f->b.body_8bit ? BODY_8BITMIME : BODY_7BIT;
    return env;
}

/* RFC 5321 §4.4: tern's trace field; "from userid" as Postfix's pickup. */
static size_t
write_received(
    struct pickup_job *j, const struct dropfile *f, const char *qid, struct spool_writer *w)
{
    struct buf r = BUF_INIT;
    char date[64];
    size_t n;
    tern_fmt_utc((int64_t)time(NULL), TERN_RFC5322_DATE, date, sizeof(date));
    buf_printf(&r, "Received: by %s (tern, from userid %u)\r\n\tid %s; %s\r\n", j->cfg->hostname,
        (unsigned)f->st.st_uid, qid, date);
    spool_writer_write(w, r.data, r.len);
    n = r.len;
    buf_fini(&r);
    return n;
}

/* Claim the file for qid: renamed c.ID.QID and the directory synced, so a
 * restart knows whether the spool has it. */
static int
claim(struct pickup_job *j, const char *qid)
{
    snprintf(j->claimed, sizeof(j->claimed), "c.%.*s.%s", MAILDROP_ID_HEX, j->name + 2, qid);
    if (renameat(j->p->dirfd, j->name, j->p->dirfd, j->claimed) < 0 || fsync(j->p->dirfd) < 0) {
        log_file(LOG_ERROR, qid, "claim_failed", j->name, NULL, errno);
        return -1;
    }
    return 0;
}

static void
log_received(
    const char *qid, const char *name, const struct dropfile *f, const struct spool_env *env)
{
    struct logline l;
    log_begin(&l, LOG_INFO, qid, "pickup", "received");
    log_str(&l, "file", name);
    log_int(&l, "uid", (int64_t)f->st.st_uid);
    log_str(&l, "from", env->sender);
    log_int(&l, "nrcpt", (int64_t)env->n_rcpts);
    log_int(&l, "size", (int64_t)f->h.size);
    log_end(&l);
    struct hline h;
    history_begin(&h, qid, "received");
    history_str(&h, "from", env->sender);
    history_int(&h, "nrcpt", (int64_t)env->n_rcpts);
    history_int(&h, "size", (int64_t)f->h.size);
    history_str(&h, "client", "local");
    history_int(&h, "uid", (int64_t)f->st.st_uid);
    history_end(&h);
}

/* Check, claim and write one ready (or unfinished claimed) file. */
static void
pick(struct pickup_job *j)
{
    struct dropfile f;
    struct buf err = BUF_INIT;
    struct spool_env *env = NULL;
    struct spool_writer *w;
    const char *why;
    size_t skip;
    memset(&f, 0, sizeof(f));
    f.fd = -1;
    why = open_drop(j, &f);
    if (why == NULL && (check_drop(j, &f, &err) < 0 || read_body(&f, NULL, &err) < 0))
        why = err.data;
    if (why != NULL) {
        move_aside(j, j->name, why);
        goto out;
    }
    env = make_env(j, &f);
    w = spool_writer_new(j->p->sp, env);
    if (claim(j, spool_writer_qid(w)) < 0) {
        spool_writer_abort(w);
        goto out;
    }
    skip = write_received(j, &f, spool_writer_qid(w), w);
    /* Read again into the writer; the bytes must still pass the check. */
    buf_reset(&err);
    if (read_body(&f, w, &err) < 0) {
        log_file(LOG_ERROR, spool_writer_qid(w), "read_failed", j->claimed, err.data, 0);
        spool_writer_abort(w);
        move_aside(j, j->claimed, err.data);
        goto out;
    }
    log_received(spool_writer_qid(w), j->name, &f, env);
    /* Local users' mail is signed as relay_networks clients' is. */
    smtp_dkim_at_commit(j->cfg, w, skip);
    smtp_archive_at_commit(j->cfg, w);
    j->w = w;
out:
    if (f.fd >= 0)
        close(f.fd);
    maildrop_head_fini(&f.h);
    spool_env_free(env);
    buf_fini(&err);
}

/* A claimed file: done when the spool has its message, else picked up. */
static void
claimed_check(struct pickup_job *j, const char *qid)
{
    struct spool_env *env = spool_load(j->p->sp, qid);
    if (env != NULL) {
        spool_env_free(env);
        if (unlinkat(j->p->dirfd, j->name, 0) == 0) {
            log_file(LOG_INFO, qid, "already_queued", j->name, NULL, 0);
            j->acted = true;
        }
        return;
    }
    if (errno != ENOENT) {
        log_file(LOG_ERROR, qid, "claim_unknown", j->name, NULL, errno);
        return;
    }
    pick(j);
}

static void
file_run(struct pickup_job *j)
{
    char qid[SPOOL_QID_LEN + 1];
    switch (maildrop_name_kind(j->name, qid)) {
    case MAILDROP_N_READY:
        pick(j);
        break;
    case MAILDROP_N_CLAIMED:
        claimed_check(j, qid);
        break;
    case MAILDROP_N_TMP:
        tmp_check(j);
        break;
    case MAILDROP_N_OTHER:
        move_aside(j, j->name, "not a maildrop file name");
        break;
    case MAILDROP_N_CORRUPT:
        break;
    }
}

static void
job_run(struct workq_item *it)
{
    struct pickup_job *j = (struct pickup_job *)(void *)it;
    if (j->kind == JOB_LIST)
        list_run(j);
    else
        file_run(j);
}

/* ---- loop side ---- */

static void
job_free(struct pickup_job *j)
{
    if (j == NULL)
        return;
    for (size_t i = 0; i < j->n_names; i++)
        free(j->names[i]);
    free(j->names);
    free(j->name);
    if (j->w != NULL)
        spool_writer_abort(j->w);
    config_unref(j->cfg);
    free(j);
}

static void job_done(struct loopq_item *it);

static void
job_submit(struct pickup *p, enum job_kind kind, const char *name)
{
    struct pickup_job *j = xcalloc(1, sizeof(*j));
    j->p = p;
    j->kind = kind;
    j->cfg = config_ref(p->cfg);
    j->name = name != NULL ? xstrdup(name) : NULL;
    j->it.run = job_run;
    j->it.to = p->inbox;
    j->it.done.fn = job_done;
    p->job = j;
    workq_submit(p->wq, &j->it);
}

static bool
is_refused(const struct pickup *p, const char *name)
{
    for (size_t i = 0; i < p->n_refused; i++)
        if (strcmp(p->refused[i], name) == 0)
            return true;
    return false;
}

static void
pass_clear(struct pickup *p)
{
    for (size_t i = 0; i < p->n_names; i++)
        free(p->names[i]);
    FREE_NULL(&p->names);
    p->n_names = p->next = 0;
}

static void
pass_start(struct pickup *p)
{
    if (p->stopping)
        return;
    if (p->busy) {
        p->again = true;
        return;
    }
    p->busy = true;
    p->again = false;
    p->progress = false;
    job_submit(p, JOB_LIST, NULL);
}

static void
pass_end(struct pickup *p)
{
    pass_clear(p);
    p->busy = false;
    /* More names than one pass takes: go on while it gets somewhere (names
     * that stay, such as files being written, wait for the next scan). */
    if ((p->again || (p->more && p->progress)) && !p->stopping)
        pass_start(p);
}

static void
commit_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct pickup *p = arg;
    struct pickup_job *j = p->job;
    (void)id;
    TERN_ASSERT(j != NULL && j->w == NULL);
    p->job = NULL;
    if (ok) {
        p->picked_up++;
        metrics_count_picked_up();
        /* Only now, with the message durable in the spool. */
        if (unlinkat(p->dirfd, j->claimed, 0) < 0)
            log_file(LOG_ERROR, qid, "unlink_failed", j->claimed, NULL, errno);
        job_free(j);
        pass_next(p);
        return;
    }
    /* Left claimed: the next pass (MAILDROP_SCAN_MS) picks it up again. */
    log_file(LOG_ERROR, qid, "commit_failed", j->claimed, "the spool did not take it", err);
    job_free(j);
    p->more = false;
    pass_end(p);
}

static void
job_done(struct loopq_item *it)
{
    struct pickup_job *j =
        (struct pickup_job *)(void *)((char *)it - offsetof(struct workq_item, done));
    struct pickup *p = j->p;
    p->job = NULL;
    if (j->kind == JOB_LIST) {
        p->names = j->names;
        p->n_names = j->n_names;
        p->more = j->full;
        j->names = NULL;
        j->n_names = 0;
        job_free(j);
        pass_next(p);
        return;
    }
    if (j->refused && !is_refused(p, j->name) && p->n_refused < PICKUP_REFUSED_MAX)
        p->refused[p->n_refused++] = xstrdup(j->name);
    p->progress |= j->acted || j->w != NULL;
    if (j->w != NULL && !p->stopping) {
        struct spool_writer *w = j->w;
        j->w = NULL;
        p->job = j;
        spool_writer_commit(w, p->inbox, commit_cb, 0, p);
        return;
    }
    job_free(j); /* stopping: the writer is dropped, the claimed file stays */
    pass_next(p);
}

/* The next file of the pass, or its end. */
static void
pass_next(struct pickup *p)
{
    if (p->stopping) {
        pass_clear(p);
        p->busy = false;
        return;
    }
    while (p->next < p->n_names && is_refused(p, p->names[p->next]))
        p->next++;
    if (p->next == p->n_names) {
        pass_end(p);
        return;
    }
    job_submit(p, JOB_FILE, p->names[p->next++]);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pickup *p = arg;
    struct timeval tv;
    (void)fd;
    (void)what;
    /* A claim is judged by the spool's index: wait until it is loaded. */
    if (!p->started && !(p->sch != NULL ? sched_loaded(p->sch) : spool_recovered(p->sp))) {
        tv.tv_sec = 0;
        tv.tv_usec = PICKUP_WAIT_MS * 1000;
        evtimer_add(p->timer, &tv);
        return;
    }
    p->started = true;
    pass_start(p);
    tv.tv_sec = MAILDROP_SCAN_MS / 1000;
    tv.tv_usec = (MAILDROP_SCAN_MS % 1000) * 1000;
    evtimer_add(p->timer, &tv);
}

/* inotify: a name moved into the directory starts a pass (our own claims
 * and moves do not). */
static void
ino_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pickup *p = arg;
    char ev[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool kick = false;
    ssize_t n;
    (void)what;
    while ((n = read(fd, ev, sizeof(ev))) > 0) {
        for (char *q = ev; q < ev + n;) {
            struct inotify_event *e = (struct inotify_event *)(void *)q;
            if ((e->mask & IN_Q_OVERFLOW) ||
                (e->len > 0 && maildrop_name_kind(e->name, NULL) != MAILDROP_N_CLAIMED))
                kick = true;
            q += sizeof(*e) + e->len;
        }
    }
    if (kick && p->started)
        pass_start(p);
}

static int
open_dirs(struct pickup *p, struct buf *err)
{
    struct stat st;
    p->dirfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (p->dirfd < 0) {
        buf_printf(err, "maildrop_dir %s: %s\n", p->name, strerror(errno));
        return -1;
    }
    p->corruptfd =
        openat(p->dirfd, MAILDROP_CORRUPT, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (p->corruptfd < 0 || fstat(p->corruptfd, &st) < 0 || st.st_uid != geteuid() ||
        (st.st_mode & 077) != 0) {
        buf_printf(err, "maildrop_dir %s: %s/ must be a directory of ours, mode 0700\n", p->name,
            MAILDROP_CORRUPT);
        return -1;
    }
    return 0;
}

/* ---- start: settle the claims of the previous run ---- */

struct claims {
    char (*qid)[SPOOL_QID_LEN + 1];
    char **name;
    bool *live;
    size_t n;
};

static void
claims_mark(struct spool_env *env, void *arg)
{
    struct claims *c = arg;
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->qid[i], env->qid) == 0)
            c->live[i] = true;
    spool_env_free(env);
}

static void
claims_list(struct pickup *p, struct claims *c)
{
    int fd = openat(p->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    char qid[SPOOL_QID_LEN + 1];
    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (maildrop_name_kind(de->d_name, qid) != MAILDROP_N_CLAIMED)
            continue;
        c->qid = xrealloc(c->qid, (c->n + 1) * sizeof(*c->qid));
        c->name = xrealloc(c->name, (c->n + 1) * sizeof(*c->name));
        memcpy(c->qid[c->n], qid, sizeof(qid));
        c->name[c->n++] = xstrdup(de->d_name);
    }
    closedir(d);
    c->live = xcalloc(c->n ? c->n : 1, sizeof(*c->live));
}

/* Only after a crash are there claims: then the spool is read once
 * (read-only, as ternctl does without a daemon) to learn which are queued. */
static void
settle_claims(struct pickup *p)
{
    struct claims c = { NULL, NULL, NULL, 0 };
    struct buf err = BUF_INIT;
    claims_list(p, &c);
    if (c.n > 0 && spool_scan(p->cfg->spool_dir, claims_mark, &c, &err) < 0) {
        log_file(LOG_ERROR, NULL, "claims_unsettled", p->name, err.data, 0);
        goto out;
    }
    for (size_t i = 0; i < c.n; i++) {
        char back[MAILDROP_NAME_MAX];
        snprintf(back, sizeof(back), "d.%.*s", MAILDROP_ID_HEX, c.name[i] + 2);
        if (c.live[i] ? unlinkat(p->dirfd, c.name[i], 0) < 0
                      : renameat(p->dirfd, c.name[i], p->dirfd, back) < 0)
            log_file(LOG_ERROR, c.qid[i], "claim_unsettled", c.name[i], NULL, errno);
        else
            log_file(
                LOG_INFO, c.qid[i], c.live[i] ? "already_queued" : "unclaimed", c.name[i], NULL, 0);
    }
    if (c.n > 0)
        (void)fsync(p->dirfd);
out:
    for (size_t i = 0; i < c.n; i++)
        free(c.name[i]);
    free(c.name);
    free(c.qid);
    free(c.live);
    buf_fini(&err);
}

struct pickup *
pickup_new(struct event_base *base, struct loopq *inbox, struct spool *sp, struct sched *sch,
    struct config *cfg, const char *dir, struct buf *err)
{
    struct pickup *p = xcalloc(1, sizeof(*p));
    struct timeval now = { 0, 0 };
    p->base = base;
    p->inbox = inbox;
    p->sp = sp;
    p->sch = sch;
    p->cfg = config_ref(cfg);
    p->dir = xstrdup(dir);
    p->name = xstrdup(cfg->maildrop_dir);
    p->corruptfd = p->inofd = -1;
    if (open_dirs(p, err) < 0) {
        pickup_stop(p);
        pickup_free(p);
        return NULL;
    }
    settle_claims(p);
    /* Without inotify (no instances left) the periodic scan still runs. */
    p->inofd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (p->inofd >= 0 && inotify_add_watch(p->inofd, p->dir, IN_MOVED_TO | IN_ONLYDIR) >= 0) {
        p->ino_ev = event_new(base, p->inofd, EV_READ | EV_PERSIST, ino_cb, p);
        event_add(p->ino_ev, NULL);
    } else {
        log_file(LOG_WARN, NULL, "no_inotify", p->name, "scanning every 30 s only", errno);
    }
    p->wq = workq_new("pickup", 1);
    p->timer = evtimer_new(base, timer_cb, p);
    evtimer_add(p->timer, &now);
    return p;
}

uint64_t
pickup_count(const struct pickup *p)
{
    return p != NULL ? p->picked_up : 0;
}

void
pickup_set_config(struct pickup *p, struct config *cfg)
{
    struct config *old = p->cfg;
    p->cfg = config_ref(cfg);
    config_unref(old);
}

void
pickup_stop(struct pickup *p)
{
    if (p == NULL)
        return;
    p->stopping = true;
    if (p->timer != NULL)
        evtimer_del(p->timer);
    if (p->ino_ev != NULL)
        event_del(p->ino_ev);
    /* The worker finishes its job; its done item is run by the caller's
     * inbox run, and drops an uncommitted writer. */
    workq_free(p->wq);
    p->wq = NULL;
}

void
pickup_free(struct pickup *p)
{
    if (p == NULL)
        return;
    TERN_ASSERT(p->wq == NULL);
    job_free(p->job);
    pass_clear(p);
    for (size_t i = 0; i < p->n_refused; i++)
        free(p->refused[i]);
    if (p->timer != NULL)
        event_free(p->timer);
    if (p->ino_ev != NULL)
        event_free(p->ino_ev);
    if (p->inofd >= 0)
        close(p->inofd);
    if (p->corruptfd >= 0)
        close(p->corruptfd);
    if (p->dirfd >= 0)
        close(p->dirfd);
    config_unref(p->cfg);
    free(p->dir);
    free(p->name);
    free(p);
}

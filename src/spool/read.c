/*
 * Reading committed messages, always off the loop threads: an envelope with
 * its newest state (from the MSG and STATE records, or a STATE still waiting
 * to be written), the body as file pieces for sendfile, and the content with
 * dot-stuffing removed for the code that needs the message itself (DSNs,
 * conversions, signing). A segment being read is referenced, so deleting or
 * compacting it meanwhile never takes the bytes away.
 */
#include "spool/spool_int.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/crc32c.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/util.h"

#define CONTENT_CHUNK (64 * 1024)

/* A reference to segment seq and its fd; NULL (ENOENT) when gone. */
static struct seg *
seg_get(struct spool *sp, uint64_t seq)
{
    struct seg *s;
    pthread_mutex_lock(&sp->mu);
    s = segtab_find(&sp->segs, seq);
    if (s != NULL)
        seg_ref(s);
    pthread_mutex_unlock(&sp->mu);
    if (s == NULL)
        errno = ENOENT;
    return s;
}

static void
seg_put(struct spool *sp, struct seg *s)
{
    pthread_mutex_lock(&sp->mu);
    seg_unref_locked(sp, s);
    pthread_mutex_unlock(&sp->mu);
}

int
spool_read_at(struct spool *sp, uint64_t seq, uint64_t off, size_t n, char **out)
{
    struct seg *s = seg_get(sp, seq);
    char *p;
    ssize_t k;
    *out = NULL;
    if (s == NULL)
        return -1;
    p = xmalloc(n ? n : 1);
    k = fd_pread_full(s->fd, p, n, off);
    seg_put(sp, s);
    if (k != (ssize_t)n) {
        free(p);
        if (k >= 0)
            errno = EBADMSG; /* shorter than the index says */
        return -1;
    }
    *out = p;
    return 0;
}

/* Read and check a record's header and part A at loc. */
static int
read_head(struct spool *sp, const struct loc *loc, uint8_t type, uint64_t qid, struct rec_hdr *h,
    char **a)
{
    char *raw;
    *a = NULL;
    if (loc->len < REC_HDR_LEN || spool_read_at(sp, loc->seg, loc->off, REC_HDR_LEN, &raw) < 0)
        return -1;
    if (rec_hdr_decode((unsigned char *)raw, h) < 0 || h->type != type || h->qid != qid ||
        h->seg != loc->seg || (uint64_t)REC_HDR_LEN + h->len_a + h->len_b != loc->len) {
        free(raw);
        errno = EBADMSG;
        return -1;
    }
    free(raw);
    if (spool_read_at(sp, loc->seg, loc->off + REC_HDR_LEN, h->len_a, a) < 0)
        return -1;
    if (crc32c(0, *a, h->len_a) != h->crc_a) {
        FREE_NULL(a);
        errno = EBADMSG;
        return -1;
    }
    return 0;
}

/* Check the CRC of every stored piece of the body, reading it (which also
 * brings it into the page cache for sendfile). */
static int
verify_body(struct spool *sp, const struct spool_env *env, const struct rec_hdr *msg)
{
    for (size_t i = 0; i < env->n_ext; i++) {
        const struct spool_extent *x = &env->ext[i];
        bool last = i + 1 == env->n_ext && msg->len_b > 0;
        struct rec_hdr h;
        char *p;
        uint32_t want = msg->crc_b;
        if (!last) {
            /* a CHUNK: its own header is just before its bytes */
            if (x->off < REC_HDR_LEN ||
                spool_read_at(sp, x->seg, x->off - REC_HDR_LEN, REC_HDR_LEN, &p) < 0)
                return -1;
            if (rec_hdr_decode((unsigned char *)p, &h) < 0 || h.type != REC_CHUNK ||
                h.len_b != x->len || h.seg != x->seg) {
                free(p);
                errno = EBADMSG;
                return -1;
            }
            want = h.crc_b;
            free(p);
        }
        if (spool_read_at(sp, x->seg, x->off, (size_t)x->len, &p) < 0)
            return -1;
        if (crc32c(0, p, (size_t)x->len) != want) {
            free(p);
            errno = EBADMSG;
            return -1;
        }
        free(p);
    }
    return 0;
}

/* A damaged message is never delivered: what can be read of its MSG
 * record goes to corrupt/<qid> for the operator, and it leaves the queue. */
static void
set_aside(struct spool *sp, uint64_t qid, const struct loc *msg)
{
    char name[SPOOL_QID_LEN + 1], *raw = NULL;
    int fd;
    if (sp->readonly || sp->corrupt_fd < 0)
        return;
    qid_text(qid, name);
    fd = openat(sp->corrupt_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        if (spool_read_at(sp, msg->seg, msg->off, msg->len, &raw) == 0 &&
            fd_write_full(fd, raw, msg->len) < 0)
            log_simple(LOG_WARN, "spool", "corrupt_copy_failed", name);
        close(fd); /* a copy for the operator: best effort */
        free(raw);
    }
    spool_remove(sp, name);
}

static void
log_damage(uint64_t qid, const char *what, int err)
{
    struct logline l;
    char q[SPOOL_QID_LEN + 1];
    qid_text(qid, q);
    log_begin(&l, LOG_ERROR, q, "spool", "damaged_message");
    log_str(&l, "record", what);
    log_errno(&l, err);
    log_end(&l);
}

/* Load qid: 0 and *out, or -1 with errno. */
static int
load_qid(struct spool *sp, uint64_t qid, bool verify, struct spool_env **out)
{
    struct ient e, *ep;
    struct buf pending = BUF_INIT;
    struct rec_hdr h;
    struct spool_env *env = NULL;
    char *a = NULL;
    bool have_pending = false;
    int err;
    *out = NULL;
    pthread_mutex_lock(&sp->mu);
    ep = index_get(&sp->idx, qid);
    if (ep != NULL) {
        e = *ep;
        have_pending = spool_pending_state_locked(ep, &pending);
    }
    pthread_mutex_unlock(&sp->mu);
    if (ep == NULL) {
        errno = ENOENT;
        return -1;
    }
    if (read_head(sp, &e.msg, REC_MSG, qid, &h, &a) < 0)
        goto damaged_msg;
    env = spool_env_decode(a, h.len_a);
    FREE_NULL(&a);
    if (env == NULL) {
        errno = EBADMSG;
        goto damaged_msg;
    }
    if (h.len_b > 0) {
        env->ext = xrealloc(env->ext, (env->n_ext + 1) * sizeof(*env->ext));
        env->ext[env->n_ext].seg = e.msg.seg;
        env->ext[env->n_ext].off = e.msg.off + REC_HDR_LEN + h.len_a;
        env->ext[env->n_ext].len = h.len_b;
        env->n_ext++;
    }
    if (have_pending) {
        if (spool_state_apply(env, pending.data, pending.len) < 0)
            tern_panic("spool: a state made here does not parse");
    } else if (e.state.len > 0) {
        struct rec_hdr sh;
        if (read_head(sp, &e.state, REC_STATE, qid, &sh, &a) < 0 ||
            spool_state_apply(env, a, sh.len_a) < 0) {
            /* The message is whole; only its progress is lost: it will be
             * tried again from the start, never dropped. */
            log_damage(qid, "state", errno ? errno : EBADMSG);
        }
        FREE_NULL(&a);
    }
    if (verify && !e.verified) {
        if (verify_body(sp, env, &h) < 0)
            goto damaged_body;
        pthread_mutex_lock(&sp->mu);
        ep = index_get(&sp->idx, qid);
        if (ep != NULL)
            ep->verified = true;
        pthread_mutex_unlock(&sp->mu);
    }
    buf_fini(&pending);
    *out = env;
    return 0;
damaged_msg:
    log_damage(qid, "message", errno);
    goto fail;
damaged_body:
    log_damage(qid, "body", errno);
fail:
    err = errno;
    if (err == EBADMSG)
        set_aside(sp, qid, &e.msg);
    buf_fini(&pending);
    spool_env_free(env);
    free(a);
    errno = err;
    return -1;
}

struct spool_env *
spool_load(struct spool *sp, const char *qid)
{
    struct spool_env *env;
    if (!spool_qid_valid(qid)) {
        errno = ENOENT;
        return NULL;
    }
    return load_qid(sp, qid_num(qid), false, &env) < 0 ? NULL : env;
}

struct spool_env *
spool_load_checked(struct spool *sp, const char *qid)
{
    struct spool_env *env;
    if (!spool_qid_valid(qid)) {
        errno = ENOENT;
        return NULL;
    }
    return load_qid(sp, qid_num(qid), true, &env) < 0 ? NULL : env;
}

struct load_item {
    struct workq_item w;
    struct spool *sp;
    uint64_t qid, id;
    spool_load_cb cb;
    void *arg;
    struct spool_env *env;
    int err;
};

static void
load_run(struct workq_item *wi)
{
    struct load_item *li = (struct load_item *)wi;
    if (load_qid(li->sp, li->qid, true, &li->env) < 0)
        li->err = errno ? errno : EIO;
}

static void
load_done(struct loopq_item *it)
{
    struct load_item *li = (struct load_item *)((char *)it - offsetof(struct load_item, w.done));
    li->cb(li->id, li->env, li->err, li->arg);
    free(li);
}

void
spool_load_async(
    struct spool *sp, const char *qid, struct loopq *to, spool_load_cb cb, uint64_t id, void *arg)
{
    struct load_item *li = xcalloc(1, sizeof(*li));
    li->sp = sp;
    li->qid = spool_qid_valid(qid) ? qid_num(qid) : 0;
    li->id = id;
    li->cb = cb;
    li->arg = arg;
    li->w.run = load_run;
    li->w.to = to;
    li->w.done.fn = load_done;
    workq_submit(sp->readq, &li->w);
}

/* ---- bodies for sendfile ---- */

struct spool_body {
    struct spool *sp;
    struct seg **segs;
    struct spool_body_piece *v;
    size_t n;
};

struct spool_body *
spool_body_open(
    struct spool *sp, const struct spool_env *env, const struct spool_body_piece **v, size_t *n)
{
    struct spool_body *b = xcalloc(1, sizeof(*b));
    b->sp = sp;
    b->segs = xcalloc(env->n_ext ? env->n_ext : 1, sizeof(*b->segs));
    b->v = xcalloc(env->n_ext ? env->n_ext : 1, sizeof(*b->v));
    for (size_t i = 0; i < env->n_ext; i++) {
        struct seg *s = seg_get(sp, env->ext[i].seg);
        if (s == NULL) {
            spool_body_close(b);
            errno = ENOENT;
            return NULL;
        }
        b->segs[i] = s;
        b->v[i].fd = s->fd;
        b->v[i].off = env->ext[i].off;
        b->v[i].len = env->ext[i].len;
        b->n++;
    }
    *v = b->v;
    *n = b->n;
    return b;
}

void
spool_body_close(struct spool_body *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n; i++)
        seg_put(b->sp, b->segs[i]);
    free(b->segs);
    free(b->v);
    free(b);
}

int
spool_tmpfile(struct spool *sp)
{
    return openat(sp->log_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
}

/* ---- content (unstuffed) ---- */

struct spool_content {
    struct spool *sp;
    struct spool_extent *ext; /* owned copy */
    size_t n_ext, cur;
    uint64_t done;         /* bytes of ext[cur] read so far */
    struct evbuffer *rest; /* borrowed (a writer's), or NULL */
    size_t rest_done;
    bool at_bol;
    char *in;  /* CONTENT_CHUNK */
    char *out; /* CONTENT_CHUNK */
};

static struct spool_content *
content_new(struct spool *sp, const struct spool_extent *ext, size_t n, struct evbuffer *rest)
{
    struct spool_content *c = xcalloc(1, sizeof(*c));
    c->sp = sp;
    if (n > 0) {
        c->ext = xmalloc(n * sizeof(*ext));
        memcpy(c->ext, ext, n * sizeof(*ext));
    }
    c->n_ext = n;
    c->rest = rest;
    c->at_bol = true;
    c->in = xmalloc(CONTENT_CHUNK);
    c->out = xmalloc(CONTENT_CHUNK);
    return c;
}

struct spool_content *
spool_content_open(struct spool *sp, const struct spool_env *env)
{
    return content_new(sp, env->ext, env->n_ext, NULL);
}

struct spool_content *
spool_content_writer(
    struct spool *sp, const struct spool_extent *ext, size_t n_ext, struct evbuffer *rest)
{
    return content_new(sp, ext, n_ext, rest);
}

/* The next raw (stored-form) piece into c->in: its length, 0 at the end,
 * -1 on error. */
static ssize_t
raw_next(struct spool_content *c)
{
    while (c->cur < c->n_ext) {
        const struct spool_extent *x = &c->ext[c->cur];
        uint64_t left = x->len - c->done;
        size_t want = left < CONTENT_CHUNK ? (size_t)left : CONTENT_CHUNK;
        struct seg *s;
        ssize_t k;
        if (left == 0) {
            c->cur++;
            c->done = 0;
            continue;
        }
        s = seg_get(c->sp, x->seg);
        if (s == NULL)
            return -1;
        k = fd_pread_full(s->fd, c->in, want, x->off + c->done);
        seg_put(c->sp, s);
        if (k != (ssize_t)want) {
            if (k >= 0)
                errno = EBADMSG;
            return -1;
        }
        c->done += want;
        return (ssize_t)want;
    }
    if (c->rest != NULL && c->rest_done < evbuffer_get_length(c->rest)) {
        struct evbuffer_ptr p;
        ev_ssize_t k;
        evbuffer_ptr_set(c->rest, &p, c->rest_done, EVBUFFER_PTR_SET);
        k = evbuffer_copyout_from(c->rest, &p, c->in, CONTENT_CHUNK);
        if (k <= 0)
            return 0;
        c->rest_done += (size_t)k;
        return k;
    }
    return 0;
}

int
spool_content_next(struct spool_content *c, const char **p, size_t *n)
{
    for (;;) {
        ssize_t k = raw_next(c);
        size_t o = 0;
        if (k < 0)
            return -1;
        if (k == 0)
            return 0;
        /* RFC 5321 §4.5.2: drop the first "." of a line that starts with one. */
        for (ssize_t i = 0; i < k;) {
            const char *nl;
            size_t len;
            if (c->at_bol && c->in[i] == '.')
                i++;
            c->at_bol = false;
            if (i >= k)
                break;
            nl = memchr(c->in + i, '\n', (size_t)(k - i));
            len = nl ? (size_t)(nl - (c->in + i)) + 1 : (size_t)(k - i);
            memcpy(c->out + o, c->in + i, len);
            o += len;
            i += (ssize_t)len;
            c->at_bol = nl != NULL;
        }
        if (o > 0) {
            *p = c->out;
            *n = o;
            return 1;
        }
    }
}

void
spool_content_close(struct spool_content *c)
{
    if (c == NULL)
        return;
    free(c->ext);
    free(c->in);
    free(c->out);
    free(c);
}

/*
 * Recovery: rebuilding the index of live messages from the segments, in a
 * background thread while ternd already listens. A sealed segment with a
 * good .idx is read from it alone (records are checked when loaded); one
 * without is scanned record by record (header and part A checked); the
 * newest segment, which a crash may have torn, has part B checked as well,
 * and the first bad record ends it. Records apply in order: MSG adds (or
 * moves, after a compaction), STATE replaces, DONE removes. The same code,
 * run synchronously on a spool opened read-only, is the offline scan
 * (ternctl while ternd is stopped). An old one-file-per-message spool is
 * converted into the log before anything else.
 */
#include "spool/spool_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/crc32c.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/util.h"

#define EMIT_BATCH 1024

/* What recovery learns of a message, by index slot. */
struct rsum {
    uint64_t qid; /* 0: nothing learnt for this slot */
    int64_t arrival, next;
    uint32_t n_rcpts, pending;
    bool held, bounce, has_state;
};

struct recov {
    struct spool *sp;
    struct rsum *sum;
    size_t cap;
    uint64_t last_seq; /* the newest segment that existed at open */
    bool write_idx;    /* save .idx files for scanned segments */
    long records, damaged;
};

static struct rsum *
sum_at(struct recov *r, const struct ient *e)
{
    size_t slot = (size_t)(e - r->sp->idx.v);
    if (slot >= r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap <= slot)
            cap *= 2;
        r->sum = xrealloc(r->sum, cap * sizeof(*r->sum));
        memset(r->sum + r->cap, 0, (cap - r->cap) * sizeof(*r->sum));
        r->cap = cap;
    }
    return &r->sum[slot];
}

/* Apply one record (under sp->mu). */
static void
apply_rec(struct recov *r, struct seg *s, const struct idx_rec *ir)
{
    struct spool *sp = r->sp;
    struct ient *e;
    struct rsum *m;
    struct seg *home;
    bool created;
    r->records++;
    switch (ir->type) {
    case REC_MSG:
        e = index_put(&sp->idx, ir->qid, &created);
        if (!created) {
            /* A copy made by compaction: the newest place wins. */
            struct seg *old = segtab_find(&sp->segs, e->home);
            if (old != NULL) {
                old->live--;
                old->live_bytes -= e->msg_bytes;
            }
        }
        home = ir->home != 0 ? segtab_find(&sp->segs, ir->home) : s;
        if (home == NULL)
            home = s; /* its chunks are gone: loading it will say so */
        e->home = home->seq;
        e->msg.seg = s->seq;
        e->msg.off = ir->off;
        e->msg.len = ir->len;
        e->msg_bytes = ir->len;
        e->verified = false;
        home->live++;
        home->live_bytes += ir->len;
        m = sum_at(r, e);
        if (created || m->qid != ir->qid) {
            memset(m, 0, sizeof(*m));
            m->pending = ir->n;
        }
        m->qid = ir->qid;
        m->arrival = ir->t1;
        m->n_rcpts = ir->n;
        m->bounce = ir->is_bounce;
        break;
    case REC_STATE:
        e = index_get(&sp->idx, ir->qid);
        if (e == NULL)
            break; /* its message is finished, or its segment gone */
        e->state.seg = s->seq;
        e->state.off = ir->off;
        e->state.len = ir->len;
        m = sum_at(r, e);
        m->next = ir->t1;
        m->pending = ir->n;
        m->held = ir->held;
        m->has_state = true;
        break;
    case REC_DONE:
        e = index_get(&sp->idx, ir->qid);
        if (e != NULL) {
            home = segtab_find(&sp->segs, e->home);
            if (home != NULL) {
                home->live--;
                home->live_bytes -= e->msg_bytes;
            }
            memset(sum_at(r, e), 0, sizeof(struct rsum));
            index_del(&sp->idx, ir->qid);
        }
        break;
    default:
        break;
    }
}

/* Read a segment's .idx: 0 and its records, or -1 when missing or bad. */
static int
read_idx(struct recov *r, struct seg *s, struct idx_rec **out, size_t *n)
{
    char name[32];
    struct stat st;
    unsigned char *p = NULL;
    uint64_t seq = 0, count = 0;
    int fd;
    seg_name(s->seq, "idx", name, sizeof(name));
    fd = openat(r->sp->log_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < 28 ||
        (uint64_t)st.st_size > (uint64_t)SEG_SIZE_MAX)
        goto bad;
    p = xmalloc((size_t)st.st_size);
    if (fd_pread_full(fd, p, (size_t)st.st_size, 0) != st.st_size)
        goto bad;
    for (int i = 7; i >= 0; i--) {
        seq = seq << 8 | p[8 + i];
        count = count << 8 | p[16 + i];
    }
    {
        size_t body = (size_t)st.st_size - 4;
        uint32_t crc = (uint32_t)p[body] | (uint32_t)p[body + 1] << 8 |
                       (uint32_t)p[body + 2] << 16 | (uint32_t)p[body + 3] << 24;
        if (memcmp(p, IDX_FILE_MAGIC, 8) != 0 || seq != s->seq ||
            count != (body - 24) / IDX_REC_LEN || (body - 24) % IDX_REC_LEN != 0 ||
            crc32c(0, p, body) != crc)
            goto bad;
    }
    *out = count ? xcalloc((size_t)count, sizeof(**out)) : NULL;
    *n = (size_t)count;
    for (size_t i = 0; i < count; i++) {
        idx_rec_decode(p + 24 + i * IDX_REC_LEN, &(*out)[i]);
        if ((uint64_t)(*out)[i].off + (*out)[i].len > s->end || (*out)[i].off < SEG_HDR_LEN) {
            FREE_NULL(out);
            goto bad;
        }
    }
    free(p);
    close(fd);
    return 0;
bad:
    free(p);
    close(fd);
    return -1;
}

/* The summary of a record's part A. */
static int
summarize(const struct rec_hdr *h, const char *a, struct idx_rec *ir)
{
    if (h->type == REC_MSG) {
        struct spool_env *env = spool_env_decode(a, h->len_a);
        if (env == NULL || qid_num(env->qid) != h->qid) {
            spool_env_free(env);
            return -1;
        }
        ir->t1 = env->arrival_ms;
        ir->n = (uint32_t)env->n_rcpts;
        ir->is_bounce = env->is_bounce;
        ir->home = env->n_ext ? env->ext[0].seg : 0;
        spool_env_free(env);
    } else if (h->type == REC_STATE) {
        bool held = false;
        if (spool_state_summary(a, h->len_a, &ir->t1, &ir->n, &held) < 0)
            return -1;
        ir->held = held;
    }
    return 0;
}

static void
log_scan_stop(const struct seg *s, uint64_t off, bool torn, const char *why)
{
    struct logline l;
    char name[32];
    seg_name(s->seq, "seg", name, sizeof(name));
    log_begin(
        &l, torn ? LOG_INFO : LOG_ERROR, NULL, "spool", torn ? "torn_tail" : "damaged_segment");
    log_str(&l, "segment", name);
    log_int(&l, "offset", (int64_t)off);
    log_int(&l, "unread_bytes", (int64_t)(s->end - off));
    log_str(&l, "reason", why);
    log_end(&l);
}

/* Past the last record of a segment made from a spare: zeros, or a whole
 * record header of the file's earlier life (its sequence is older). */
static bool
stale_tail(const unsigned char hb[REC_HDR_LEN], uint64_t seq)
{
    static const unsigned char zero[REC_HDR_LEN];
    struct rec_hdr old;
    if (memcmp(hb, zero, REC_HDR_LEN) == 0)
        return true;
    return rec_hdr_decode(hb, &old) == 0 && old.seg < seq;
}

/* Scan a segment record by record; check part B too when check_b. The
 * records found are kept in s->recs (for its .idx). */
static void
scan_seg(struct recov *r, struct seg *s, bool check_b)
{
    uint64_t off = SEG_HDR_LEN;
    char *buf = NULL;
    const char *why = NULL;
    while (off + REC_HDR_LEN <= s->end) {
        unsigned char hb[REC_HDR_LEN];
        struct rec_hdr h;
        struct idx_rec ir = { 0 };
        uint64_t len;
        size_t need;
        if (fd_pread_full(s->fd, hb, REC_HDR_LEN, off) != REC_HDR_LEN) {
            why = "read error";
            break;
        }
        if (rec_hdr_decode(hb, &h) < 0 || h.seg != s->seq) {
            /* A reused file goes on with zeros or with the records of its
             * earlier life (an older sequence): the clean end of this one. */
            if (!stale_tail(hb, s->seq))
                why = "bad record header";
            break;
        }
        len = (uint64_t)REC_HDR_LEN + h.len_a + h.len_b;
        if (off + len > s->end) {
            why = "record past the end";
            break;
        }
        need = h.len_a + (check_b ? h.len_b : 0);
        buf = xrealloc(buf, need ? need : 1);
        if (fd_pread_full(s->fd, buf, need, off + REC_HDR_LEN) != (ssize_t)need) {
            why = "read error";
            break;
        }
        if (crc32c(0, buf, h.len_a) != h.crc_a ||
            (check_b && crc32c(0, buf + h.len_a, h.len_b) != h.crc_b)) {
            why = "checksum mismatch";
            break;
        }
        ir.type = h.type;
        ir.off = (uint32_t)off;
        ir.len = (uint32_t)len;
        ir.qid = h.qid;
        if (summarize(&h, buf, &ir) < 0) {
            why = "bad record contents";
            break;
        }
        if (s->n_recs == s->cap_recs) {
            s->cap_recs = s->cap_recs ? s->cap_recs * 2 : 1024;
            s->recs = xrealloc(s->recs, s->cap_recs * sizeof(*s->recs));
        }
        s->recs[s->n_recs++] = ir;
        pthread_mutex_lock(&r->sp->mu);
        apply_rec(r, s, &ir);
        pthread_mutex_unlock(&r->sp->mu);
        off += len;
    }
    free(buf);
    if (why != NULL) {
        bool torn = s->seq == r->last_seq;
        if (!torn)
            r->damaged++;
        log_scan_stop(s, off, torn, why);
    }
    s->end = off;
}

static void
recover_seg(struct recov *r, struct seg *s)
{
    struct idx_rec *v = NULL;
    size_t n = 0;
    bool newest = s->seq == r->last_seq;
    if (!newest && read_idx(r, s, &v, &n) == 0) {
        pthread_mutex_lock(&r->sp->mu);
        for (size_t i = 0; i < n; i++)
            apply_rec(r, s, &v[i]);
        pthread_mutex_unlock(&r->sp->mu);
        free(v);
        return;
    }
    scan_seg(r, s, newest);
    if (r->write_idx)
        spool_write_idx(r->sp, s);
    else
        FREE_NULL(&s->recs);
}

/* Run recovery over the segments present when the spool was opened. */
static void
recover_all(struct recov *r)
{
    struct spool *sp = r->sp;
    size_t n;
    struct seg **v;
    pthread_mutex_lock(&sp->mu);
    n = sp->segs.n;
    v = xcalloc(n ? n : 1, sizeof(*v));
    if (n > 0)
        memcpy(v, sp->segs.v, n * sizeof(*v));
    pthread_mutex_unlock(&sp->mu);
    /* Segments made after open (by this daemon) hold only new records. */
    r->last_seq = sp->recover_upto;
    for (size_t i = 0; i < n && !atomic_load(&sp->recover_cancel); i++) {
        if (v[i]->seq <= r->last_seq)
            recover_seg(r, v[i]);
    }
    free(v);
}

/* ---- handing the results to the owner loop ---- */

struct emit_item {
    struct loopq_item it;
    struct spool *sp;
    spool_found_fn fn;
    void (*done)(void *arg, long count);
    void *arg;
    struct spool_entry *v;
    size_t n;
    long count; /* done item only */
};

static void
emit_fn(struct loopq_item *it)
{
    struct emit_item *e = (struct emit_item *)it;
    if (e->v != NULL)
        e->fn(e->v, e->n, e->arg);
    else if (e->done != NULL)
        e->done(e->arg, e->count);
    free(e->v);
    free(e);
}

struct rctx {
    struct recov r;
    spool_found_fn fn;
    void (*done)(void *arg, long count);
    void *arg;
};

static void
emit(struct rctx *c)
{
    struct spool *sp = c->r.sp;
    struct emit_item *e = NULL;
    long count = 0;
    pthread_mutex_lock(&sp->mu);
    for (size_t i = 0; i < c->r.cap && i < sp->idx.n; i++) {
        const struct rsum *m = &c->r.sum[i];
        const struct ient *x = &sp->idx.v[i];
        if (m->qid == 0 || x->dead || x->qid != m->qid)
            continue;
        if (e == NULL) {
            e = xcalloc(1, sizeof(*e));
            e->v = xcalloc(EMIT_BATCH, sizeof(*e->v));
        }
        qid_text(m->qid, e->v[e->n].qid);
        e->v[e->n].arrival_ms = m->arrival;
        e->v[e->n].next_try_ms = m->has_state ? m->next : 0;
        e->v[e->n].n_pending = m->pending;
        e->v[e->n].held = m->held;
        e->v[e->n].is_bounce = m->bounce;
        e->n++;
        count++;
        if (e->n == EMIT_BATCH) {
            e->it.fn = emit_fn;
            e->fn = c->fn;
            e->arg = c->arg;
            loopq_post(sp->owner, &e->it);
            e = NULL;
        }
    }
    sp->recovered = true;
    pthread_mutex_unlock(&sp->mu);
    if (e != NULL) {
        e->it.fn = emit_fn;
        e->fn = c->fn;
        e->arg = c->arg;
        loopq_post(sp->owner, &e->it);
    }
    e = xcalloc(1, sizeof(*e));
    e->it.fn = emit_fn;
    e->done = c->done;
    e->arg = c->arg;
    e->count = count;
    loopq_post(sp->owner, &e->it);
}

static void *
recover_main(void *arg)
{
    struct rctx *c = arg;
    struct logline l;
    int64_t t0 = tern_mono_ms();
    spool_migrate_legacy(c->r.sp);
    recover_all(&c->r);
    if (atomic_load(&c->r.sp->recover_cancel)) {
        /* Stopping: the counts are incomplete, so nothing may be reclaimed
         * (recovered stays false), and nobody waits for the entries. */
        free(c->r.sum);
        free(c);
        return NULL;
    }
    log_begin(&l, c->r.damaged ? LOG_WARN : LOG_INFO, NULL, "spool", "recovered");
    log_int(&l, "records", c->r.records);
    log_int(&l, "damaged_segments", c->r.damaged);
    log_int(&l, "ms", tern_mono_ms() - t0);
    log_end(&l);
    emit(c);
    free(c->r.sum);
    free(c);
    return NULL;
}

void
spool_recover(struct spool *sp, spool_found_fn fn, void (*done)(void *arg, long count), void *arg)
{
    struct rctx *c = xcalloc(1, sizeof(*c));
    sigset_t all, old;
    int rc;
    TERN_ASSERT(!sp->recover_started);
    c->r.sp = sp;
    c->r.write_idx = true;
    c->fn = fn;
    c->done = done;
    c->arg = arg;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&sp->recover_thread, NULL, recover_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        tern_panic("pthread_create: %s", strerror(rc));
    sp->recover_started = true;
}

void
spool_recover_stop(struct spool *sp)
{
    atomic_store(&sp->recover_cancel, true);
    spool_recover_join(sp);
}

void
spool_recover_join(struct spool *sp)
{
    if (!sp->recover_started)
        return;
    pthread_join(sp->recover_thread, NULL);
    sp->recover_started = false;
}

/* ---- offline ---- */

struct scan_ent {
    uint64_t qid;
    int64_t arrival;
};

static int
cmp_arrival(const void *a, const void *b)
{
    const struct scan_ent *x = a, *y = b;
    if (x->arrival != y->arrival)
        return x->arrival < y->arrival ? -1 : 1;
    return x->qid < y->qid ? -1 : x->qid > y->qid;
}

long
spool_scan(
    const char *dir, void (*fn)(struct spool_env *env, void *arg), void *arg, struct buf *err)
{
    struct spool *sp = xcalloc(1, sizeof(*sp));
    struct recov r = { 0 };
    struct scan_ent *v = NULL;
    size_t n = 0;
    long count = 0;
    sp->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    sp->log_fd =
        sp->dir_fd >= 0 ? openat(sp->dir_fd, "log", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    sp->corrupt_fd = -1;
    sp->readonly = true;
    pthread_mutex_init(&sp->mu, NULL);
    index_init(&sp->idx);
    if (sp->log_fd < 0 || spool_list_segments(sp->log_fd, &sp->segs, &sp->next_seq) < 0) {
        buf_printf(err, "cannot read the spool %s: %s\n", dir, strerror(errno));
        count = -1;
        goto out;
    }
    r.sp = sp;
    sp->recover_upto = sp->next_seq - 1;
    recover_all(&r);
    v = xcalloc(sp->idx.live ? sp->idx.live : 1, sizeof(*v));
    for (size_t i = 0; i < sp->idx.n && i < r.cap; i++) {
        if (sp->idx.v[i].dead || r.sum[i].qid == 0)
            continue;
        v[n].qid = sp->idx.v[i].qid;
        v[n].arrival = r.sum[i].arrival;
        n++;
    }
    qsort(v, n, sizeof(*v), cmp_arrival);
    for (size_t i = 0; i < n; i++) {
        char q[SPOOL_QID_LEN + 1];
        struct spool_env *env;
        qid_text(v[i].qid, q);
        env = spool_load(sp, q);
        if (env != NULL) {
            fn(env, arg);
            count++;
        }
    }
out:
    free(v);
    free(r.sum);
    for (size_t i = 0; i < sp->segs.n; i++) {
        close(sp->segs.v[i]->fd);
        free(sp->segs.v[i]->recs);
        free(sp->segs.v[i]);
    }
    free(sp->segs.v);
    index_fini(&sp->idx);
    pthread_mutex_destroy(&sp->mu);
    if (sp->log_fd >= 0)
        close(sp->log_fd);
    if (sp->dir_fd >= 0)
        close(sp->dir_fd);
    free(sp);
    return count;
}

/*
 * Shape 2: an append-only segment log with one commit thread. Producers
 * queue complete messages and wait; the commit thread writes every queued
 * record with pwritev, makes them durable with one fdatasync and then
 * acknowledges the whole batch. done() queues the id; the commit thread
 * appends "done" records with the next batch and never syncs for them
 * alone. A segment is reclaimed whole (unlinked, or renamed to free-* for
 * reuse) once every message in it is done and every older segment that its
 * done records point into is gone, so no done mark is lost before the
 * message it cancels. Only the commit thread touches segments and the map.
 *
 * Record: 32-byte header (magic, type, payload length, segment sequence,
 * id, CRC-32C) then the payload. The CRC covers payload then header (with
 * a zero CRC field), so producers checksum their payload in parallel and
 * the commit thread only adds the 32 header bytes. A header naming another
 * segment sequence is stale data of a recycled file and ends the scan.
 */
#include "proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define REC_MAGIC  0x31525354u /* "TSR1" */
#define HDR        32
#define T_MSG      1
#define T_DONE     2
#define POOL_MAX   4 /* recycled segment files kept for reuse */
#define POOL_PREP  2 /* made at open, before any measurement */
#define DONE_WAKE  512
#define IOV_BATCH  512 /* pairs of iovecs per pwritev; IOV_MAX is 1024 */
#define SCAN_CHUNK (8u << 20)

enum seg_mode { SEG_GROW, SEG_FALLOC, SEG_RECYCLE };

struct hdr {
    uint32_t magic;
    uint8_t type, pad[3];
    uint32_t len;
    uint32_t seq;
    uint64_t id;
    uint32_t crc;
    uint32_t zero;
};
_Static_assert(sizeof(struct hdr) == HDR, "record header is 32 bytes");

struct lreq {
    uint64_t id;
    const unsigned char *data;
    size_t len;
    uint32_t pcrc; /* CRC-32C of the payload, by the producer */
    struct hdr h;
    int state, err;
    pthread_cond_t cv;
    struct lreq *next;
};

struct seg {
    uint64_t live;
    bool gone;
    uint32_t *refs; /* older segments that done records here point into */
    size_t nrefs, caprefs;
};

struct store {
    enum seg_mode mode;
    bool nosync;
    int dir_fd, fd; /* fd: the active segment */
    uint64_t seg_bytes, off;
    uint32_t active;
    struct seg *segs;
    size_t nsegs, capsegs;
    uint32_t pool[POOL_MAX];
    size_t npool;
    uint32_t next_free_name;
    struct idmap *map; /* id -> segment */
    pthread_mutex_t mu;
    pthread_cond_t wake, qcv;
    struct lreq *head, **tail;
    uint64_t *dones;
    size_t ndones, capdones;
    uint64_t q_req, q_done;
    bool stop;
    int werr; /* sticky write error: the log cannot go on after it */
    pthread_t thr;
    /* counters */
    uint64_t syncs, synced, writes, bytes, done_recs, created, recycled, unlinked, dir_syncs,
        zero_bytes;
};

/* ---------------------------------------------------------- segments */

static void
seg_name(char *b, size_t n, const char *kind, uint32_t seq)
{
    snprintf(b, n, "%s-%08" PRIx32, kind, seq);
}

static int
zero_fill(struct store *s, int fd)
{
    static const unsigned char z[1 << 20];
    for (uint64_t o = 0; o < s->seg_bytes; o += sizeof(z)) {
        size_t k = s->seg_bytes - o < sizeof(z) ? (size_t)(s->seg_bytes - o) : sizeof(z);
        if (pwrite_full(fd, z, k, o) < 0)
            return -1;
    }
    s->zero_bytes += s->seg_bytes;
    return 0;
}

/* A new zero-filled file for the reuse pool (not yet named as a segment). */
static void
pool_make(struct store *s)
{
    char name[32];
    int fd;
    seg_name(name, sizeof(name), "free", s->next_free_name);
    fd = openat(s->dir_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || zero_fill(s, fd) < 0 || (!s->nosync && fdatasync(fd) < 0) || close(fd) < 0)
        die("log: make %s: %s", name, strerror(errno));
    s->pool[s->npool++] = s->next_free_name++;
    s->created++;
}

/* Make seq the active segment. Its directory entry is made durable before
 * any record in it is acknowledged. */
static void
seg_acquire(struct store *s, uint32_t seq)
{
    char name[32], from[32];
    int fd;
    seg_name(name, sizeof(name), "seg", seq);
    if (s->mode == SEG_RECYCLE && s->npool == 0)
        pool_make(s);
    if (s->mode == SEG_RECYCLE) {
        seg_name(from, sizeof(from), "free", s->pool[--s->npool]);
        if (renameat(s->dir_fd, from, s->dir_fd, name) < 0)
            die("log: rename %s: %s", from, strerror(errno));
        fd = openat(s->dir_fd, name, O_RDWR | O_CLOEXEC);
        s->recycled++;
    } else {
        fd = openat(s->dir_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0 && s->mode == SEG_FALLOC &&
            (fallocate(fd, 0, 0, (off_t)s->seg_bytes) < 0 || (!s->nosync && fdatasync(fd) < 0)))
            die("log: fallocate %s: %s", name, strerror(errno));
        s->created++;
    }
    if (fd < 0)
        die("log: open %s: %s", name, strerror(errno));
    if (!s->nosync) {
        if (fsync(s->dir_fd) < 0)
            die("log: fsync dir: %s", strerror(errno));
        s->dir_syncs++;
    }
    if (seq >= s->capsegs) {
        s->capsegs = s->capsegs ? s->capsegs * 2 : 64;
        s->segs = realloc(s->segs, s->capsegs * sizeof(*s->segs));
        if (s->segs == NULL)
            die("out of memory");
    }
    memset(&s->segs[seq], 0, sizeof(s->segs[seq]));
    s->nsegs = seq + 1;
    s->fd = fd;
    s->active = seq;
    s->off = 0;
}

static void
seg_retire(struct store *s, uint32_t seq)
{
    char name[32], to[32];
    struct seg *g = &s->segs[seq];
    seg_name(name, sizeof(name), "seg", seq);
    g->gone = true;
    free(g->refs);
    g->refs = NULL;
    g->nrefs = g->caprefs = 0;
    if (s->mode == SEG_RECYCLE && s->npool < POOL_MAX) {
        seg_name(to, sizeof(to), "free", s->next_free_name);
        if (renameat(s->dir_fd, name, s->dir_fd, to) < 0)
            die("log: rename %s: %s", name, strerror(errno));
        s->pool[s->npool++] = s->next_free_name++;
        return;
    }
    if (unlinkat(s->dir_fd, name, 0) < 0)
        die("log: unlink %s: %s", name, strerror(errno));
    s->unlinked++;
}

static bool
refs_gone(const struct store *s, const struct seg *g)
{
    for (size_t i = 0; i < g->nrefs; i++)
        if (!s->segs[g->refs[i]].gone)
            return false;
    return true;
}

/* Ascending, so a segment whose done records point into an older one that
 * goes in this pass goes too. */
static void
retire_dead(struct store *s)
{
    for (uint32_t q = 0; q < s->nsegs; q++) {
        struct seg *g = &s->segs[q];
        if (q != s->active && !g->gone && g->live == 0 && refs_gone(s, g))
            seg_retire(s, q);
    }
}

static void
add_ref(struct seg *g, uint32_t to)
{
    for (size_t i = 0; i < g->nrefs; i++)
        if (g->refs[i] == to)
            return;
    if (g->nrefs == g->caprefs) {
        g->caprefs = g->caprefs ? g->caprefs * 2 : 4;
        g->refs = realloc(g->refs, g->caprefs * sizeof(*g->refs));
        if (g->refs == NULL)
            die("out of memory");
    }
    g->refs[g->nrefs++] = to;
}

/* -------------------------------------------------------- the writer */

struct wbatch {
    struct iovec iov[2 * IOV_BATCH];
    int n;
    uint64_t at;   /* file offset of iov[0] */
    bool unsynced; /* active segment has records not yet fdatasync'ed */
};

static void
wb_flush(struct store *s, struct wbatch *b)
{
    int i = 0;
    uint64_t at = b->at;
    while (i < b->n) {
        ssize_t k = pwritev(s->fd, b->iov + i, b->n - i, (off_t)at);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            die("log: pwritev: %s", strerror(errno));
        s->writes++;
        s->bytes += (uint64_t)k;
        at += (uint64_t)k;
        /* skip what was written, trimming a partly written iovec */
        while (k > 0 && i < b->n) {
            if ((size_t)k >= b->iov[i].iov_len) {
                k -= (ssize_t)b->iov[i].iov_len;
                i++;
            } else {
                b->iov[i].iov_base = (char *)b->iov[i].iov_base + k;
                b->iov[i].iov_len -= (size_t)k;
                k = 0;
            }
        }
    }
    b->n = 0;
    b->at = s->off;
}

static void
wb_sync(struct store *s, struct wbatch *b)
{
    if (b->unsynced && !s->nosync) {
        if (fdatasync(s->fd) < 0)
            die("log: fdatasync: %s", strerror(errno));
        s->syncs++;
    }
    b->unsynced = false;
}

/* Room for a record of len payload bytes, rolling to a new segment. */
static void
wb_room(struct store *s, struct wbatch *b, size_t len)
{
    if (s->off + HDR + len <= s->seg_bytes || s->off == 0)
        return;
    wb_flush(s, b);
    wb_sync(s, b);
    if (close(s->fd) < 0)
        die("log: close: %s", strerror(errno));
    seg_acquire(s, (uint32_t)s->nsegs);
    b->at = 0;
}

static void
wb_add(struct store *s, struct wbatch *b, const void *h, const void *p, size_t len)
{
    if (b->n + 2 > 2 * IOV_BATCH)
        wb_flush(s, b);
    b->iov[b->n++] = (struct iovec){ (void *)h, HDR };
    if (len > 0)
        b->iov[b->n++] = (struct iovec){ (void *)p, len };
    s->off += HDR + len;
    b->unsynced = true;
}

static void
make_hdr(struct hdr *h, uint8_t type, uint32_t len, uint32_t seq, uint64_t id, uint32_t pcrc)
{
    memset(h, 0, sizeof(*h));
    h->magic = REC_MAGIC;
    h->type = type;
    h->len = len;
    h->seq = seq;
    h->id = id;
    h->crc = crc32c(pcrc, h, HDR);
}

/* Writes a batch, syncs it once, applies its done marks. Returns the
 * number of messages made durable. */
static uint64_t
write_batch(struct store *s, struct lreq *list, uint64_t *dones, size_t nd)
{
    static struct wbatch b; /* commit thread only */
    struct hdr dh;
    uint64_t nmsg = 0;
    uint32_t dseg;
    b.n = 0;
    b.at = s->off;
    b.unsynced = false;
    for (struct lreq *r = list; r != NULL; r = r->next, nmsg++) {
        wb_room(s, &b, r->len);
        make_hdr(&r->h, T_MSG, (uint32_t)r->len, s->active, r->id, r->pcrc);
        wb_add(s, &b, &r->h, r->data, r->len);
        idmap_put(s->map, r->id, s->active, 0);
        s->segs[s->active].live++;
    }
    if (nd > 0) {
        wb_room(s, &b, nd * 8);
        make_hdr(&dh, T_DONE, (uint32_t)(nd * 8), s->active, nd, crc32c(0, dones, nd * 8));
        wb_add(s, &b, &dh, dones, nd * 8);
        s->done_recs++;
    }
    wb_flush(s, &b);
    /* done records alone ride on the next sync (or on writeback) */
    if (nmsg > 0)
        wb_sync(s, &b);
    s->synced += nmsg;
    dseg = s->active;
    for (size_t i = 0; i < nd; i++) {
        uint64_t seq;
        if (!idmap_del(s->map, dones[i], &seq))
            die("log: done for unknown id %" PRIu64, dones[i]);
        s->segs[seq].live--;
        if (seq != dseg)
            add_ref(&s->segs[dseg], (uint32_t)seq);
    }
    if (nd > 0)
        retire_dead(s);
    return nmsg;
}

static void *
writer_main(void *arg)
{
    struct store *s = arg;
    uint64_t *dones = NULL;
    size_t capd = 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct lreq *list, *next;
        size_t nd;
        uint64_t q;
        while (s->head == NULL && s->ndones < DONE_WAKE && s->q_req == s->q_done && !s->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            if (pthread_cond_timedwait(&s->wake, &s->mu, &ts) == ETIMEDOUT && s->ndones > 0)
                break;
        }
        if (s->stop && s->head == NULL && s->ndones == 0)
            break;
        list = s->head;
        s->head = NULL;
        s->tail = &s->head;
        /* swap the done array so producers of done marks never wait on I/O */
        {
            uint64_t *t = dones;
            size_t tc = capd;
            dones = s->dones;
            capd = s->capdones;
            nd = s->ndones;
            s->dones = t;
            s->capdones = tc;
            s->ndones = 0;
        }
        q = s->q_req;
        pthread_mutex_unlock(&s->mu);
        write_batch(s, list, dones, nd);
        pthread_mutex_lock(&s->mu);
        for (; list != NULL; list = next) {
            next = list->next;
            list->state = 1;
            pthread_cond_signal(&list->cv);
        }
        s->q_done = q;
        pthread_cond_broadcast(&s->qcv);
    }
    pthread_mutex_unlock(&s->mu);
    free(dones);
    return NULL;
}

/* ------------------------------------------------------------ the API */

static enum seg_mode
parse_mode(const char *shape)
{
    if (strcmp(shape, "log-grow") == 0 || strcmp(shape, "log") == 0)
        return SEG_GROW;
    if (strcmp(shape, "log-falloc") == 0)
        return SEG_FALLOC;
    if (strcmp(shape, "log-recycle") == 0)
        return SEG_RECYCLE;
    die("log: unknown variant %s (log-grow, log-falloc, log-recycle)", shape);
}

static struct store *
log_open(const struct opts *o)
{
    struct store *s = xcalloc(1, sizeof(*s));
    s->mode = parse_mode(o->shape);
    s->nosync = o->nosync;
    s->seg_bytes = o->seg_bytes;
    s->dir_fd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0)
        die("log: open %s: %s", o->dir, strerror(errno));
    s->map = idmap_new(1 << 16);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->qcv, NULL);
    s->tail = &s->head;
    if (s->mode == SEG_RECYCLE)
        for (int i = 0; i < POOL_PREP; i++)
            pool_make(s);
    seg_acquire(s, 0);
    if (pthread_create(&s->thr, NULL, writer_main, s) != 0)
        die("pthread_create");
    return s;
}

static int
log_put(struct store *s, uint64_t id, const unsigned char *data, size_t len)
{
    struct lreq r = { .id = id, .data = data, .len = len };
    if (len + HDR > s->seg_bytes) {
        errno = EFBIG;
        return -1;
    }
    r.pcrc = crc32c(0, data, len);
    pthread_cond_init(&r.cv, NULL);
    pthread_mutex_lock(&s->mu);
    r.next = NULL;
    *s->tail = &r;
    s->tail = &r.next;
    pthread_cond_signal(&s->wake);
    wait_flag(&s->mu, &r.cv, &r.state);
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&r.cv);
    return 0;
}

static void
log_done(struct store *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    if (s->ndones == s->capdones) {
        s->capdones = s->capdones ? s->capdones * 2 : 1024;
        s->dones = realloc(s->dones, s->capdones * sizeof(uint64_t));
        if (s->dones == NULL)
            die("out of memory");
    }
    s->dones[s->ndones++] = id;
    if (s->ndones == DONE_WAKE)
        pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
}

static void
log_quiesce(struct store *s)
{
    uint64_t me;
    pthread_mutex_lock(&s->mu);
    me = ++s->q_req;
    pthread_cond_signal(&s->wake);
    while (s->q_done < me)
        if (pthread_cond_wait(&s->qcv, &s->mu) != 0)
            die("cond_wait");
    pthread_mutex_unlock(&s->mu);
}

static void
log_stats(struct store *s, struct store_stats *st)
{
    /* read while the writer may run: counters are only ever increased, a
     * torn read of one of them is not possible on x86-64 */
    stats_add(st, "syncs", __atomic_load_n(&s->syncs, __ATOMIC_RELAXED));
    stats_add(st, "synced", __atomic_load_n(&s->synced, __ATOMIC_RELAXED));
    stats_add(st, "pwritev", __atomic_load_n(&s->writes, __ATOMIC_RELAXED));
    stats_add(st, "log_kb", __atomic_load_n(&s->bytes, __ATOMIC_RELAXED) / 1024);
    stats_add(st, "done_recs", __atomic_load_n(&s->done_recs, __ATOMIC_RELAXED));
    stats_add(st, "segs_created", __atomic_load_n(&s->created, __ATOMIC_RELAXED));
    stats_add(st, "segs_reused", __atomic_load_n(&s->recycled, __ATOMIC_RELAXED));
    stats_add(st, "segs_unlinked", __atomic_load_n(&s->unlinked, __ATOMIC_RELAXED));
    stats_add(st, "dir_syncs", __atomic_load_n(&s->dir_syncs, __ATOMIC_RELAXED));
    stats_add(st, "zero_kb", __atomic_load_n(&s->zero_bytes, __ATOMIC_RELAXED) / 1024);
}

static int
log_close(struct store *s)
{
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thr, NULL);
    if (fdatasync(s->fd) < 0 || close(s->fd) < 0 || fsync(s->dir_fd) < 0)
        rc = -1;
    close(s->dir_fd);
    for (size_t i = 0; i < s->nsegs; i++)
        free(s->segs[i].refs);
    free(s->segs);
    free(s->dones);
    idmap_free(s->map);
    free(s);
    return rc;
}

/* ----------------------------------------------------------- recovery */

enum scan_end { END_EOF, END_ZERO, END_STALE, END_GARBAGE };

struct scanner {
    unsigned char *buf;
    size_t pos, lim; /* valid window of buf */
    uint64_t base;   /* file offset of buf[0] */
    int fd;
    uint64_t size;
};

/* Makes n bytes at the scan position available; false at end of file. */
static bool
sc_need(struct scanner *sc, size_t n)
{
    if (sc->lim - sc->pos >= n)
        return true;
    memmove(sc->buf, sc->buf + sc->pos, sc->lim - sc->pos);
    sc->base += sc->pos;
    sc->lim -= sc->pos;
    sc->pos = 0;
    while (sc->lim < n && sc->base + sc->lim < sc->size) {
        ssize_t k = pread(
            sc->fd, sc->buf + sc->lim, SCAN_CHUNK + HDR - sc->lim, (off_t)(sc->base + sc->lim));
        if (k <= 0)
            break;
        sc->lim += (size_t)k;
    }
    return sc->lim >= n;
}

static bool
all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

/* Scans one segment, applying its records to r. Returns how it ended and
 * the offset of the end of its valid records in *end. */
static enum scan_end
scan_seg(int fd, uint32_t seq, const struct opts *o, struct recovery *r, unsigned char *buf,
    uint64_t *end)
{
    struct scanner sc = { .buf = buf, .fd = fd };
    struct stat st;
    if (fstat(fd, &st) < 0)
        return END_EOF;
    sc.size = (uint64_t)st.st_size;
    for (;;) {
        struct hdr h;
        uint32_t crc;
        const unsigned char *p;
        *end = sc.base + sc.pos;
        if (!sc_need(&sc, HDR))
            return sc.lim == sc.pos ? END_EOF : END_GARBAGE;
        memcpy(&h, sc.buf + sc.pos, HDR);
        if (h.magic != REC_MAGIC)
            return all_zero(sc.buf + sc.pos, HDR) ? END_ZERO : END_GARBAGE;
        if (h.seq != seq)
            return END_STALE;
        if ((h.type != T_MSG && h.type != T_DONE) || h.len > SCAN_CHUNK ||
            !sc_need(&sc, HDR + (size_t)h.len))
            return END_GARBAGE;
        p = sc.buf + sc.pos + HDR;
        crc = h.crc;
        h.crc = 0;
        if (crc32c(crc32c(0, p, h.len), &h, HDR) != crc)
            return END_GARBAGE;
        if (h.type == T_MSG) {
            idmap_put(r->index, h.id, (uint64_t)seq << 32 | (sc.base + sc.pos), h.len);
            r->records++;
            if (o->with_env && !env_matches(p, h.len, h.id))
                r->env_bad++;
        } else {
            for (uint32_t i = 0; i + 8 <= h.len; i += 8) {
                uint64_t id;
                memcpy(&id, p + i, 8);
                r->dones += idmap_del(r->index, id, NULL);
            }
        }
        sc.pos += HDR + h.len;
        r->bytes += HDR + h.len;
    }
}

static int
cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorted segment sequences found in dir. */
static uint32_t *
list_segs(int dir_fd, size_t *n)
{
    int fd = dup(dir_fd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    uint32_t *v = NULL;
    size_t cap = 0;
    *n = 0;
    if (d == NULL)
        return NULL;
    while ((de = readdir(d)) != NULL) {
        unsigned x;
        char tail;
        if (sscanf(de->d_name, "seg-%8x%c", &x, &tail) != 1)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            v = realloc(v, cap * sizeof(*v));
            if (v == NULL)
                die("out of memory");
        }
        v[(*n)++] = x;
    }
    closedir(d);
    qsort(v, *n, sizeof(*v), cmp_u32);
    return v;
}

static int
log_recover(const struct opts *o, struct recovery *r)
{
    static const char *ends[] = { "eof", "zero", "stale", "garbage" };
    int dir_fd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    unsigned char *buf = xmalloc(SCAN_CHUNK + HDR);
    uint32_t *seqs;
    size_t n;
    enum scan_end last = END_EOF;
    if (dir_fd < 0)
        return snprintf(r->note, sizeof(r->note), "%s", strerror(errno)), -1;
    if (r->index == NULL)
        r->index = idmap_new(1 << 16);
    seqs = list_segs(dir_fd, &n);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        uint64_t end;
        int fd;
        seg_name(name, sizeof(name), "seg", seqs[i]);
        fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        last = scan_seg(fd, seqs[i], o, r, buf, &end);
        close(fd);
    }
    /* only the newest segment can end in a torn batch; older ones were
     * sealed after a sync (a recycled file may also end in old bytes that
     * look like garbage, so this count is an upper bound) */
    r->torn = last == END_GARBAGE;
    r->live = idmap_count(r->index);
    snprintf(r->note, sizeof(r->note), "segments=%zu,last_end=%s", n, n ? ends[last] : "none");
    free(seqs);
    free(buf);
    close(dir_fd);
    return 0;
}

/* Zeroes the last `bytes` of valid records of the newest segment, as if
 * the end of the last batch had never reached the disk; or writes noise
 * after them, as a batch torn before its sync would leave. */
static int
log_tear(const struct opts *o, uint64_t bytes, bool garbage)
{
    int dir_fd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), fd, rc = -1;
    unsigned char *buf = xmalloc(SCAN_CHUNK + HDR), *z;
    struct recovery tmp = { .index = idmap_new(1 << 16) };
    uint32_t *seqs;
    size_t n;
    uint64_t end = 0;
    char name[32];
    seqs = dir_fd >= 0 ? list_segs(dir_fd, &n) : NULL;
    if (seqs != NULL && n > 0) {
        seg_name(name, sizeof(name), "seg", seqs[n - 1]);
        fd = openat(dir_fd, name, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            scan_seg(fd, seqs[n - 1], o, &tmp, buf, &end);
            if (!garbage && bytes > end)
                bytes = end;
            z = garbage ? noise(bytes) : xcalloc(1, bytes);
            rc = pwrite_full(fd, z, bytes, garbage ? end : end - bytes) == 0 && fdatasync(fd) == 0
                     ? 0
                     : -1;
            free(z);
            close(fd);
        }
    }
    idmap_free(tmp.index);
    free(seqs);
    free(buf);
    if (dir_fd >= 0)
        close(dir_fd);
    return rc;
}

const struct store_ops log_ops = {
    .prefix = "log",
    .open = log_open,
    .put = log_put,
    .done = log_done,
    .quiesce = log_quiesce,
    .stats = log_stats,
    .close = log_close,
    .recover = log_recover,
    .tear = log_tear,
};

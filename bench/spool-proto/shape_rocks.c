/*
 * Shape 4: RocksDB through its C API. Variants:
 *   rocks-group        every producer calls Put with sync=true itself; the
 *                      write thread groups concurrent writers so that one
 *                      WAL fdatasync covers a whole group
 *   rocks-batch        one writer thread puts every queued message (and the
 *                      done marks) in one WriteBatch, written with sync=true
 *   ...-blob           values >= 16 KiB go to blob files (integrated BlobDB)
 *   ...-recycle        WAL files are reused (recycle_log_file_num = 4); RocksDB
 *                      7.8 silently turns that off unless wal_recovery_mode
 *                      is kSkipAnyCorruptedRecords, so that is set too
 *   ...-wide           max_write_batch_group_size_bytes = 16 MiB: by default a
 *                      group led by a write under 128 KiB stops growing at
 *                      the leader's size + 128 KiB, one or two 100 KiB mails
 * done() queues the id; a thread writes every queued Delete in one
 * WriteBatch with sync=false (in batch mode, with the next batch of puts),
 * so it rides on the next synced write. One Delete call per message from a
 * single delivery thread would wait behind every synced group and fall far
 * behind the producers.
 */
#include "proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOB_MIN  (16u << 10)
#define DONE_WAKE 512

struct rreq {
    uint64_t id;
    const unsigned char *data;
    size_t len;
    int state, err;
    pthread_cond_t cv;
    struct rreq *next;
};

struct store {
    rocksdb_t *db;
    rocksdb_options_t *opt;
    rocksdb_writeoptions_t *wsync, *wnosync;
    bool batch;
    pthread_mutex_t mu;
    pthread_cond_t wake, qcv;
    struct rreq *head, **tail;
    uint64_t *dones;
    size_t ndones, capdones;
    uint64_t q_req, q_done;
    bool stop;
    pthread_t thr;
    uint64_t puts, writes, deletes;
};

static void
key_of(uint64_t id, char k[8])
{
    /* big-endian, so keys sort by id as they arrive */
    for (int i = 0; i < 8; i++)
        k[i] = (char)(id >> (56 - 8 * i));
}

static uint64_t
id_of(const char *k)
{
    uint64_t id = 0;
    for (int i = 0; i < 8; i++)
        id = id << 8 | (unsigned char)k[i];
    return id;
}

static bool
has(const char *shape, const char *word)
{
    const char *p = strstr(shape, word);
    size_t n = strlen(word);
    return p != NULL && p[-1] == '-' && (p[n] == '\0' || p[n] == '-');
}

static rocksdb_options_t *
make_options(const char *shape)
{
    rocksdb_options_t *opt = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(opt, 1);
    rocksdb_options_set_compression(opt, rocksdb_no_compression);
    rocksdb_options_set_max_background_jobs(opt, 2);
    rocksdb_options_enable_statistics(opt);
    if (has(shape, "blob")) {
        rocksdb_options_set_enable_blob_files(opt, 1);
        rocksdb_options_set_min_blob_size(opt, BLOB_MIN);
        rocksdb_options_set_enable_blob_gc(opt, 1);
    }
    if (has(shape, "recycle")) {
        rocksdb_options_set_recycle_log_file_num(opt, 4);
        rocksdb_options_set_wal_recovery_mode(opt, 3 /* kSkipAnyCorruptedRecords */);
    }
    if (has(shape, "wide")) {
        /* not in the C API of 7.8: through the options string parser */
        rocksdb_options_t *wide = rocksdb_options_create();
        char *err = NULL;
        rocksdb_get_options_from_string(
            opt, "max_write_batch_group_size_bytes=16777216", wide, &err);
        if (err != NULL)
            die("rocksdb: options: %s", err);
        rocksdb_options_destroy(opt);
        opt = wide;
    }
    return opt;
}

static void
batch_write(struct store *s, struct rreq *list, const uint64_t *dones, size_t nd)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    uint64_t n = 0;
    char *err = NULL, k[8];
    for (struct rreq *r = list; r != NULL; r = r->next, n++) {
        key_of(r->id, k);
        rocksdb_writebatch_put(wb, k, 8, (const char *)r->data, r->len);
    }
    for (size_t i = 0; i < nd; i++) {
        key_of(dones[i], k);
        rocksdb_writebatch_delete(wb, k, 8);
    }
    rocksdb_write(s->db, n > 0 ? s->wsync : s->wnosync, wb, &err);
    if (err != NULL)
        die("rocksdb: write: %s", err);
    rocksdb_writebatch_destroy(wb);
    s->writes++;
    __atomic_fetch_add(&s->puts, n, __ATOMIC_RELAXED);
    s->deletes += nd;
}

static void *
writer_main(void *arg)
{
    struct store *s = arg;
    uint64_t *dones = NULL;
    size_t capd = 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct rreq *list, *next;
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
        batch_write(s, list, dones, nd);
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

static struct store *
rocks_open(const struct opts *o)
{
    struct store *s = xcalloc(1, sizeof(*s));
    char *err = NULL;
    if (has(o->shape, "batch"))
        s->batch = true;
    else if (!has(o->shape, "group"))
        die("rocks: say rocks-group or rocks-batch (got %s)", o->shape);
    s->opt = make_options(o->shape);
    s->db = rocksdb_open(s->opt, o->dir, &err);
    if (err != NULL)
        die("rocksdb: open %s: %s", o->dir, err);
    s->wsync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wsync, o->nosync ? 0 : 1);
    s->wnosync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wnosync, 0);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->qcv, NULL);
    s->tail = &s->head;
    if (pthread_create(&s->thr, NULL, writer_main, s) != 0)
        die("pthread_create");
    return s;
}

static int
rocks_put(struct store *s, uint64_t id, const unsigned char *data, size_t len)
{
    char k[8], *err = NULL;
    if (s->batch) {
        struct rreq r = { .id = id, .data = data, .len = len };
        pthread_cond_init(&r.cv, NULL);
        pthread_mutex_lock(&s->mu);
        *s->tail = &r;
        s->tail = &r.next;
        pthread_cond_signal(&s->wake);
        wait_flag(&s->mu, &r.cv, &r.state);
        pthread_mutex_unlock(&s->mu);
        pthread_cond_destroy(&r.cv);
        return 0;
    }
    key_of(id, k);
    rocksdb_put(s->db, s->wsync, k, 8, (const char *)data, len, &err);
    if (err != NULL) {
        fprintf(stderr, "rocksdb: put: %s\n", err);
        free(err);
        errno = EIO;
        return -1;
    }
    __atomic_fetch_add(&s->puts, 1, __ATOMIC_RELAXED);
    return 0;
}

static void
rocks_done(struct store *s, uint64_t id)
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
rocks_quiesce(struct store *s)
{
    uint64_t me;
    pthread_mutex_lock(&s->mu);
    me = ++s->q_req;
    pthread_cond_signal(&s->wake);
    while (s->q_done < me)
        pthread_cond_wait(&s->qcv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

/* A ticker from the statistics dump ("rocksdb.wal.synced COUNT : 12"). */
static uint64_t
ticker(const char *dump, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = dump; (p = strstr(p, name)) != NULL; p += n) {
        if ((p == dump || p[-1] == '\n') && strncmp(p + n, " COUNT : ", 9) == 0)
            return strtoull(p + n + 9, NULL, 10);
    }
    return 0;
}

static void
rocks_stats(struct store *s, struct store_stats *st)
{
    char *d = rocksdb_options_statistics_get_string(s->opt);
    if (d == NULL)
        d = calloc(1, 1);
    stats_add(st, "wal_syncs", ticker(d, "rocksdb.wal.synced"));
    stats_add(st, "synced", __atomic_load_n(&s->puts, __ATOMIC_RELAXED));
    stats_add(st, "writes_leader", ticker(d, "rocksdb.write.self"));
    stats_add(st, "writes_follower", ticker(d, "rocksdb.write.other"));
    stats_add(st, "wal_kb", ticker(d, "rocksdb.wal.bytes") / 1024);
    stats_add(st, "flush_kb", ticker(d, "rocksdb.flush.write.bytes") / 1024);
    stats_add(st, "compact_kb", ticker(d, "rocksdb.compact.write.bytes") / 1024);
    stats_add(st, "blob_kb", ticker(d, "rocksdb.blobdb.blob.file.bytes.written") / 1024);
    stats_add(st, "stall_us", ticker(d, "rocksdb.stall.micros"));
    rocksdb_free(d);
}

static int
rocks_close(struct store *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thr, NULL);
    if (s->wsync != NULL && rocksdb_writeoptions_get_sync(s->wsync) == 0) {
        char *err = NULL;
        rocksdb_flush_wal(s->db, 1, &err);
        if (err != NULL)
            die("rocksdb: flush_wal: %s", err);
    }
    rocksdb_close(s->db);
    rocksdb_writeoptions_destroy(s->wsync);
    rocksdb_writeoptions_destroy(s->wnosync);
    rocksdb_options_destroy(s->opt);
    free(s->dones);
    free(s);
    return 0;
}

/* Open (which replays the WAL into a memtable) and walk every key. */
static int
rocks_recover(const struct opts *o, struct recovery *r)
{
    rocksdb_options_t *opt = make_options(o->shape);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_iterator_t *it;
    char *err = NULL;
    rocksdb_t *db;
    rocksdb_options_set_create_if_missing(opt, 0);
    db = rocksdb_open(opt, o->dir, &err);
    if (err != NULL) {
        snprintf(r->note, sizeof(r->note), "%s", err);
        free(err);
        return -1;
    }
    if (r->index == NULL)
        r->index = idmap_new(1 << 16);
    rocksdb_readoptions_set_fill_cache(ro, 0);
    rocksdb_readoptions_set_readahead_size(ro, 2u << 20);
    it = rocksdb_create_iterator(db, ro);
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl), *v;
        uint64_t id;
        if (kl != 8)
            continue;
        id = id_of(k);
        r->records++;
        if (o->with_env) {
            v = rocksdb_iter_value(it, &vl);
            r->bytes += vl;
            if (!env_matches((const unsigned char *)v, vl, id))
                r->env_bad++;
        }
        idmap_put(r->index, id, 0, 0);
    }
    rocksdb_iter_get_error(it, &err);
    if (err != NULL) {
        snprintf(r->note, sizeof(r->note), "iterator: %s", err);
        free(err);
    }
    rocksdb_iter_destroy(it);
    rocksdb_close(db);
    rocksdb_readoptions_destroy(ro);
    rocksdb_options_destroy(opt);
    r->live = idmap_count(r->index);
    return 0;
}

/* Cuts the last `bytes` off the newest WAL file, or appends noise. */
static int
rocks_tear(const struct opts *o, uint64_t bytes, bool garbage)
{
    DIR *d = opendir(o->dir);
    struct dirent *de;
    unsigned long best = 0;
    char name[512];
    struct stat st;
    bool found = false;
    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL) {
        unsigned long n;
        char tail[8];
        if (sscanf(de->d_name, "%lu.%7s", &n, tail) == 2 && strcmp(tail, "log") == 0 &&
            (!found || n > best)) {
            best = n;
            found = true;
        }
    }
    closedir(d);
    if (!found)
        return -1;
    snprintf(name, sizeof(name), "%s/%06lu.log", o->dir, best);
    if (stat(name, &st) < 0)
        return -1;
    if (garbage) {
        unsigned char *z = noise(bytes);
        int fd = open(name, O_WRONLY | O_APPEND | O_CLOEXEC), rc;
        rc = fd >= 0 && write_full(fd, z, bytes) == 0 && fsync(fd) == 0 ? 0 : -1;
        if (fd >= 0)
            close(fd);
        free(z);
        return rc;
    }
    return truncate(name, st.st_size > (off_t)bytes ? st.st_size - (off_t)bytes : 0);
}

const struct store_ops rocks_ops = {
    .prefix = "rocks",
    .open = rocks_open,
    .put = rocks_put,
    .done = rocks_done,
    .quiesce = rocks_quiesce,
    .stats = rocks_stats,
    .close = rocks_close,
    .recover = rocks_recover,
    .tear = rocks_tear,
};

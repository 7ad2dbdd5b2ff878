/*
 * Shape 3: LMDB. One writer thread takes every queued put and done and
 * applies them in one write transaction; mdb_txn_commit (without
 * MDB_NOSYNC) makes the batch durable, then the batch is acknowledged.
 * Done marks ride on the next commit; a commit for done marks alone is made
 * only when many are waiting, when asked to (quiesce) or after an idle
 * second. Keys are the 64-bit ids (MDB_INTEGERKEY), values the messages.
 */
#include "proto.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAP_SIZE    (64ull << 30)
#define DONE_COMMIT 4096

struct mreq {
    uint64_t id;
    const unsigned char *data;
    size_t len;
    int state, err;
    pthread_cond_t cv;
    struct mreq *next;
};

struct store {
    MDB_env *env;
    MDB_dbi dbi;
    pthread_mutex_t mu;
    pthread_cond_t wake, qcv;
    struct mreq *head, **tail;
    uint64_t *dones;
    size_t ndones, capdones;
    uint64_t q_req, q_done;
    bool stop;
    pthread_t thr;
    uint64_t commits, synced, deletes, done_only;
};

static void
lmdb_check(int rc, const char *what)
{
    if (rc != 0)
        die("lmdb: %s: %s", what, mdb_strerror(rc));
}

static void
apply(struct store *s, struct mreq *list, const uint64_t *dones, size_t nd)
{
    MDB_txn *txn;
    uint64_t n = 0;
    lmdb_check(mdb_txn_begin(s->env, NULL, 0, &txn), "txn_begin");
    for (struct mreq *r = list; r != NULL; r = r->next, n++) {
        MDB_val k = { sizeof(r->id), &r->id }, v = { r->len, (void *)r->data };
        lmdb_check(mdb_put(txn, s->dbi, &k, &v, 0), "put");
    }
    for (size_t i = 0; i < nd; i++) {
        MDB_val k = { sizeof(dones[i]), (void *)&dones[i] };
        lmdb_check(mdb_del(txn, s->dbi, &k, NULL), "del");
    }
    lmdb_check(mdb_txn_commit(txn), "commit");
    s->commits++;
    s->synced += n;
    s->deletes += nd;
    s->done_only += n == 0;
}

static void *
writer_main(void *arg)
{
    struct store *s = arg;
    uint64_t *dones = NULL;
    size_t capd = 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct mreq *list, *next;
        size_t nd;
        uint64_t q;
        while (s->head == NULL && s->ndones < DONE_COMMIT && s->q_req == s->q_done && !s->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec++;
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
        apply(s, list, dones, nd);
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

static int
env_open(const struct opts *o, MDB_env **env, MDB_dbi *dbi, unsigned flags)
{
    MDB_txn *txn;
    int rc = mdb_env_create(env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(*env, MAP_SIZE);
    if (rc == 0)
        rc = mdb_env_open(*env, o->dir, flags | MDB_NOTLS, 0600);
    if (rc == 0)
        rc = mdb_txn_begin(*env, NULL, flags & MDB_RDONLY, &txn);
    if (rc == 0 && (rc = mdb_dbi_open(txn, NULL, MDB_INTEGERKEY, dbi)) == 0)
        rc = mdb_txn_commit(txn);
    return rc;
}

static struct store *
lmdb_open(const struct opts *o)
{
    struct store *s = xcalloc(1, sizeof(*s));
    if (strcmp(o->shape, "lmdb") != 0)
        die("lmdb: unknown variant %s", o->shape);
    lmdb_check(env_open(o, &s->env, &s->dbi, o->nosync ? MDB_NOSYNC : 0), "open");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->qcv, NULL);
    s->tail = &s->head;
    if (pthread_create(&s->thr, NULL, writer_main, s) != 0)
        die("pthread_create");
    return s;
}

static int
lmdb_put(struct store *s, uint64_t id, const unsigned char *data, size_t len)
{
    struct mreq r = { .id = id, .data = data, .len = len };
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

static void
lmdb_done(struct store *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    if (s->ndones == s->capdones) {
        s->capdones = s->capdones ? s->capdones * 2 : 1024;
        s->dones = realloc(s->dones, s->capdones * sizeof(uint64_t));
        if (s->dones == NULL)
            die("out of memory");
    }
    s->dones[s->ndones++] = id;
    if (s->ndones == DONE_COMMIT)
        pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
}

static void
lmdb_quiesce(struct store *s)
{
    uint64_t me;
    pthread_mutex_lock(&s->mu);
    me = ++s->q_req;
    pthread_cond_signal(&s->wake);
    while (s->q_done < me)
        pthread_cond_wait(&s->qcv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

static void
lmdb_stats(struct store *s, struct store_stats *st)
{
    MDB_envinfo info;
    MDB_stat ms;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &ms);
    stats_add(st, "commits", __atomic_load_n(&s->commits, __ATOMIC_RELAXED));
    stats_add(st, "synced", __atomic_load_n(&s->synced, __ATOMIC_RELAXED));
    stats_add(st, "deletes", __atomic_load_n(&s->deletes, __ATOMIC_RELAXED));
    stats_add(st, "done_only_commits", __atomic_load_n(&s->done_only, __ATOMIC_RELAXED));
    stats_add(st, "file_pages_grown", info.me_last_pgno);
}

static int
lmdb_close(struct store *s)
{
    int rc;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thr, NULL);
    rc = mdb_env_sync(s->env, 1);
    mdb_env_close(s->env);
    free(s->dones);
    free(s);
    return rc == 0 ? 0 : -1;
}

/* Open the environment and walk every key with a cursor; with_env also
 * reads the start of each value (for large values an overflow page). */
static int
lmdb_recover(const struct opts *o, struct recovery *r)
{
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    MDB_stat ms;
    int rc = env_open(o, &env, &dbi, MDB_RDONLY);
    if (rc != 0)
        return snprintf(r->note, sizeof(r->note), "%s", mdb_strerror(rc)), -1;
    if (r->index == NULL)
        r->index = idmap_new(1 << 16);
    lmdb_check(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), "txn_begin");
    lmdb_check(mdb_cursor_open(txn, dbi, &c), "cursor");
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint64_t id;
        memcpy(&id, k.mv_data, 8);
        idmap_put(r->index, id, 0, (uint32_t)v.mv_size);
        r->records++;
        if (o->with_env) {
            r->bytes += v.mv_size < 64 ? v.mv_size : 64;
            if (!env_matches(v.mv_data, v.mv_size, id))
                r->env_bad++;
        }
    }
    mdb_env_stat(env, &ms);
    snprintf(r->note, sizeof(r->note), "depth=%u,leaf_pages=%zu,overflow_pages=%zu", ms.ms_depth,
        ms.ms_leaf_pages, ms.ms_overflow_pages);
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    r->live = idmap_count(r->index);
    return 0;
}

const struct store_ops lmdb_ops = {
    .prefix = "lmdb",
    .open = lmdb_open,
    .put = lmdb_put,
    .done = lmdb_done,
    .quiesce = lmdb_quiesce,
    .stats = lmdb_stats,
    .close = lmdb_close,
    .recover = lmdb_recover,
    .tear = NULL,
};

/*
 * Spool shape prototype: one interface over four ways of keeping messages
 * durable (file per message, segment log, LMDB, RocksDB). The harness owns
 * message buffers; a store copies what it keeps. put() returns only when the
 * message is on stable storage; done() forgets a delivered message without a
 * sync of its own.
 */
#ifndef SPOOL_PROTO_H
#define SPOOL_PROTO_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct opts {
    const char *shape; /* full name, e.g. "log-recycle" */
    const char *dir;   /* store directory (created by the harness) */
    unsigned producers;
    size_t size; /* body bytes */
    uint64_t count;
    uint64_t warmup;
    int64_t done_delay_ms; /* < 0: nothing is ever delivered */
    uint64_t seg_bytes;    /* segment log: bytes per segment */
    bool nosync;           /* bulk fill for recovery tests: no syncs at all */
    bool with_env;         /* recovery: also read and check every envelope */
    unsigned timeout_s;
};

#define STATS_MAX 12

/* Counters of a store. v[0] is durability points (fdatasync, commit, WAL
 * sync), v[1] the messages they made durable; the rest are shape-specific.
 * The harness prints the difference between two snapshots. */
struct store_stats {
    int n;
    const char *name[STATS_MAX];
    uint64_t v[STATS_MAX];
};

struct idmap;

/* What a recovery found: the live index is left in r->index (owned by the
 * caller, may be NULL if not wanted). */
struct recovery {
    uint64_t live;
    uint64_t records; /* message records seen */
    uint64_t dones;   /* done marks applied */
    uint64_t bytes;   /* bytes read by the scan (0 if unknown) */
    uint64_t torn;    /* torn or damaged tails found */
    uint64_t dropped; /* leftovers removed (tmp files) */
    uint64_t env_bad; /* envelopes that did not name their own id */
    struct idmap *index;
    char note[160];
};

struct store;

struct store_ops {
    const char *prefix;
    struct store *(*open)(const struct opts *o);
    int (*put)(struct store *s, uint64_t id, const unsigned char *data, size_t len);
    void (*done)(struct store *s, uint64_t id);
    void (*quiesce)(struct store *s); /* every done() so far applied (not synced) */
    void (*stats)(struct store *s, struct store_stats *st);
    int (*close)(struct store *s);
    int (*recover)(const struct opts *o, struct recovery *r);
    /* Damage the newest log: zero its last bytes of records, or (garbage)
     * append random bytes after them. NULL where there is no log tail. */
    int (*tear)(const struct opts *o, uint64_t bytes, bool garbage);
};

extern const struct store_ops files_ops, log_ops, lmdb_ops, rocks_ops;

/* crc32c.c */
uint32_t crc32c(uint32_t crc, const void *p, size_t n);

/* idmap.c: id -> (a, b) with linear probing; not thread-safe. */
struct idmap *idmap_new(size_t hint);
void idmap_free(struct idmap *m);
bool idmap_put(struct idmap *m, uint64_t id, uint64_t a, uint32_t b); /* false: existed */
bool idmap_get(const struct idmap *m, uint64_t id, uint64_t *a, uint32_t *b);
bool idmap_del(struct idmap *m, uint64_t id, uint64_t *a);
size_t idmap_count(const struct idmap *m);

/* main.c helpers */
int64_t now_ns(void);
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t k);
int write_full(int fd, const void *p, size_t n);
int pwrite_full(int fd, const void *p, size_t n, uint64_t off);
/* n bytes of pseudo-random noise (owned by the caller) */
unsigned char *noise(size_t n);
/* Does the payload start with the envelope of message id? */
bool env_matches(const unsigned char *p, size_t n, uint64_t id);
void stats_add(struct store_stats *st, const char *name, uint64_t v);
/* Wait on cv until *flag is set, with the run's deadline; dies after it. */
void wait_flag(pthread_mutex_t *mu, pthread_cond_t *cv, const int *flag);

#endif

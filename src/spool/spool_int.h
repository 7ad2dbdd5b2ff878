/*
 * Private to src/spool. The record format (record.c), the envelope and state
 * codec (envelope.c), the index of live messages and the segment table
 * (index.c), the commit thread and writers (commit.c), readers (read.c),
 * recovery and the offline scan (recover.c), and the reader of the old
 * one-file-per-message layout, kept to convert it (legacy.c).
 *
 * Ownership and threads: struct spool is owned by spool_open's caller. The
 * index and the segment table are guarded by sp->mu; the commit thread is
 * the only one that writes files or changes the table's files (create,
 * seal, delete), readers only read. Live counts change under sp->mu.
 */
#ifndef TERN_SPOOL_INT_H
#define TERN_SPOOL_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "spool/spool.h"
#include "util/buf.h"
#include "util/loopq.h"
#include "util/workq.h"

/* ---- record.c: the on-disk format ----
 *
 * A segment file starts with a 64-byte header, then records, each a 48-byte
 * header and its payload (part A, then part B):
 *   u32 magic  u8 type  u8 version  u16 flags  u32 len_a  u32 len_b
 *   u64 qid    u64 seg (the file's own sequence)  u32 crc_a  u32 crc_b
 *   u32 reserved  u32 crc_hdr (CRC-32C of the 44 bytes before it)
 * all little-endian. A record whose header does not check, whose seg is not
 * the file's, or whose parts do not check ends the readable part of the
 * segment (a torn tail) or, inside a sealed segment, is damage.
 */
#define SEG_FILE_MAGIC   "TERNSEG1"
#define SEG_HDR_LEN      64
#define REC_HDR_LEN      48
#define REC_MAGIC        0x31435254u /* "TRC1" */
#define REC_VERSION      1
#define IDX_FILE_MAGIC   "TERNIDX1"
#define SEG_SIZE_MAX     SPOOL_SEG_SIZE_MAX
#define SPOOL_SPARES_MAX 2
/* "spare.<16 hex digits>" into out (at least 24 bytes); parse one. */
void spare_name(uint64_t num, char *out, size_t cap);
bool spare_name_parse(const char *name, uint64_t *num);

enum rec_type { REC_MSG = 1, REC_CHUNK = 2, REC_STATE = 3, REC_DONE = 4 };

struct rec_hdr {
    uint8_t type, version;
    uint16_t flags;
    uint32_t len_a, len_b;
    uint64_t qid;
    uint64_t seg;
    uint32_t crc_a, crc_b;
};

void rec_hdr_encode(const struct rec_hdr *h, unsigned char out[REC_HDR_LEN]);
/* 0 ok; -1 when the magic, version, type or header CRC is wrong. */
int rec_hdr_decode(const unsigned char in[REC_HDR_LEN], struct rec_hdr *h);
void seg_hdr_encode(uint64_t seq, int64_t created_ms, unsigned char out[SEG_HDR_LEN]);
int seg_hdr_decode(const unsigned char in[SEG_HDR_LEN], uint64_t *seq);
/* "0000000000000abc.seg" / ".idx" into out (at least 24 bytes). */
void seg_name(uint64_t seq, const char *ext, char *out, size_t cap);
/* Parse a segment file name; false when it is not one. */
bool seg_name_parse(const char *name, uint64_t *seq, bool *is_idx);

/* qid text <-> number (16 lowercase hex digits). */
uint64_t qid_num(const char *qid);
void qid_text(uint64_t n, char out[SPOOL_QID_LEN + 1]);

/* One entry of a sealed segment's .idx: where a record is and what recovery
 * needs to know of it without reading it. */
struct idx_rec {
    uint8_t type;
    uint8_t held, is_bounce;
    uint32_t off, len; /* the whole record */
    uint64_t qid;
    uint64_t home; /* MSG: the segment of its first chunk (0: this one) */
    int64_t t1;    /* MSG: arrival_ms; STATE: earliest next attempt */
    uint32_t n;    /* MSG: recipients; STATE: recipients pending */
};
#define IDX_REC_LEN 48
void idx_rec_encode(const struct idx_rec *r, unsigned char out[IDX_REC_LEN]);
void idx_rec_decode(const unsigned char in[IDX_REC_LEN], struct idx_rec *r);

/* ---- envelope.c: part A texts ----
 * Values are %XX-escaped so no CR, LF, NUL or space appears raw; a lone "-"
 * stands for NULL. */
void spool_esc(struct buf *b, const char *s, size_t n);
int spool_unesc(const char *p, size_t n, char **out);
/* The MSG record's part A: envelope, body sizes, spilled extents, prefix.
 * -1 (errno EINVAL) when a line would be too long or there are no or too
 * many recipients. */
int spool_env_encode(const struct spool_env *env, struct buf *out);
/* Parse a MSG part A; NULL when damaged. ext lines are returned in
 * env->ext (the caller appends part B's own extent). */
struct spool_env *spool_env_decode(const char *p, size_t n);
/* The old layout's envelope lines, one at a time (legacy.c); field counts
 * the fixed fields seen so far (start at 0). */
int spool_env_legacy_line(struct spool_env *env, size_t *field, const char *line, size_t len);
bool spool_env_legacy_complete(const struct spool_env *env, size_t field);
/* A STATE part A for env; and applying one (0 ok, -1 damaged). */
void spool_state_encode(const struct spool_env *env, struct buf *out);
int spool_state_apply(struct spool_env *env, const char *p, size_t n);
/* What recovery keeps of a STATE: -1 damaged. */
int spool_state_summary(
    const char *p, size_t n, int64_t *next_try_ms, uint32_t *pending, bool *held);
/* Is p[n] acceptable as a prefix (1..SPOOL_PREFIX_MAX bytes of header
 * fields, each ending in CRLF, no bare CR or LF, no empty line)? */
bool spool_prefix_valid(const char *p, size_t n);
/* The content a recipient list and state imply is still owed. */
uint32_t spool_env_pending(const struct spool_env *env);
int64_t spool_env_next_try(const struct spool_env *env);

#define SPOOL_LINE_MAX 65536  /* any part A line, newline excluded */
#define SPOOL_RCPT_MAX 100000 /* recipients per message */
#define SPOOL_ERR_MAX  1000   /* bytes of last_error kept */
#define SPOOL_EXT_MAX  100000 /* spilled extents of one message */

/* ---- index.c: live messages and segments ---- */

struct seg {
    uint64_t seq;
    int fd;        /* open for reading (and writing while active) */
    uint64_t end;  /* bytes of valid records (from 0, header included) */
    uint64_t live; /* live messages whose home is here */
    uint64_t live_bytes;
    uint32_t refs;        /* open body handles and reads in progress */
    bool sealed;          /* no more records will be written */
    bool prealloc;        /* made from a spare: its blocks are all written */
    bool doomed;          /* deleted from disk: close the fd when refs drop */
    struct idx_rec *recs; /* active segment only: its records, for the .idx */
    size_t n_recs, cap_recs;
};

struct loc {
    uint64_t seg;
    uint32_t off, len;
};

struct meta_item;
struct evbuffer;

/* A live message's home is the oldest segment holding any of its records
 * (its first spilled chunk, else its MSG record): segments go oldest first,
 * so nothing of it can go while its home stays. */
struct ient {
    uint64_t qid;
    uint64_t home;
    struct loc msg, state;     /* state.len == 0: none */
    struct meta_item *pending; /* a STATE not yet written (commit.c), or NULL */
    uint32_t msg_bytes;        /* the MSG record and its chunks, for compaction */
    bool verified;             /* the body was written or checked by this process */
    bool dead;                 /* slot free */
};

struct index {
    struct ient *v; /* slab */
    size_t n, cap;
    uint32_t *free_list;
    size_t n_free, cap_free;
    uint32_t *tab; /* open addressing: slot+1, 0 empty, UINT32_MAX deleted */
    size_t tab_cap, tab_used;
    size_t live;
};

void index_init(struct index *x);
void index_fini(struct index *x);
struct ient *index_get(struct index *x, uint64_t qid);
/* Insert or find; *created tells which. */
struct ient *index_put(struct index *x, uint64_t qid, bool *created);
void index_del(struct index *x, uint64_t qid);

/* The segment table: sorted by seq, oldest first. */
struct segtab {
    struct seg **v;
    size_t n, cap;
};
struct seg *segtab_find(struct segtab *t, uint64_t seq);
void segtab_add(struct segtab *t, struct seg *s); /* seq larger than every other */
void segtab_remove_first(struct segtab *t);

/* ---- the spool ---- */

struct spool {
    char *dir;
    int dir_fd, log_fd, corrupt_fd;
    uid_t owner_uid; /* of the spool: every file in it must be this user's */
    struct loopq *owner;
    spool_commit_hook hook;
    void *hook_arg;
    uint64_t seg_size;

    pthread_mutex_t mu; /* index, segtab, stats, recovered */
    struct index idx;
    struct segtab segs;
    struct spool_stats st;
    bool recovered;
    bool readonly;         /* spool_scan: never write, never set aside */
    uint64_t recover_upto; /* the newest segment that existed at open */

    /* commit thread state (only that thread touches these) */
    struct seg *active; /* the segment being written */
    uint64_t next_seq;
    bool dirty;               /* written since the last sync */
    bool dirty_dir;           /* a segment file was created since log/ was synced */
    struct workq_item *retry; /* STATE/DONE items that failed to write */
    /* Group commit: messages per synced batch and the time a sync takes,
     * both averaged (x16, microseconds x16), to decide how long a batch
     * waits for more messages before its sync (commit_batch). */
    uint32_t msgs_per_sync16;
    int64_t sync_us16;
    int64_t last_compact_ms;
    /* The oldest segment as last looked at for compaction, and its live
     * messages then: a segment still losing messages is draining, and
     * copying them forward would only race their delivery. */
    uint64_t compact_seq, compact_live;

    /* Spare segment files, written whole (zeros, or a reclaimed segment's
     * old records) before they are needed: records then overwrite
     * allocated blocks, so a batch's fdatasync is one device flush instead
     * of a journal commit as well. The commit thread takes them; one job
     * at a time on spareq makes or tops up the next. Under mu. */
    struct workq *spareq;
    struct spare_job {
        struct workq_item wq;
        struct spool *sp;
        int fd;       /* a reclaimed segment renamed to its spare name, or -1 */
        uint64_t num; /* its spare number */
    } spare_job;
    bool spare_busy;
    int spare_fd[SPOOL_SPARES_MAX];
    uint64_t spare_num[SPOOL_SPARES_MAX];
    size_t n_spares;
    uint64_t next_spare;

    struct workq *commitq; /* the commit thread (batch queue) */
    struct workq *prepq;   /* finishers (DKIM) before commit */
    struct workq *readq;   /* loads, content reads */
    pthread_t recover_thread;
    bool recover_started;
    _Atomic bool recover_cancel;
};

/* commit.c */
/* A writer that keeps env's qid and arrival (the conversion of old spools). */
struct spool_writer *spool_writer_new_keep(struct spool *sp, const struct spool_env *env);
/* Write s->recs as its .idx (not synced: it can always be rebuilt). */
void spool_write_idx(struct spool *sp, struct seg *s);
/* Block the calling (non-loop) thread until everything submitted so far is
 * durable: 0 or an errno value. */
int spool_sync_wait(struct spool *sp);
int spool_commit_start(struct spool *sp, struct buf *err);
void spool_commit_stop(struct spool *sp);
/* Under sp->mu: the STATE part A waiting to be written for e (appended to
 * out when not NULL); false when none is waiting. */
bool spool_pending_state_locked(const struct ient *e, struct buf *out);
void spool_pending_state_forget_locked(struct spool *sp, struct meta_item *m);
/* index.c: segment references (readers, body handles), under sp->mu. */
void seg_ref(struct seg *s);
void seg_unref_locked(struct spool *sp, struct seg *s);

/* read.c */
/* A content reader over a writer's spilled extents and its in-memory rest
 * (borrowed: valid while the writer is). */
struct spool_content *spool_content_writer(
    struct spool *sp, const struct spool_extent *ext, size_t n_ext, struct evbuffer *rest);
/* Read [off, off+n) of segment seq into a malloc'd buffer (owned by the
 * caller). -1 with errno. Takes and drops a reference. */
int spool_read_at(struct spool *sp, uint64_t seq, uint64_t off, size_t n, char **out);
/* Load qid's envelope with state and extents (no body check). */
struct spool_env *spool_load_locked_ent(struct spool *sp, const struct ient *e);

/* recover.c */
void spool_recover_join(struct spool *sp);
/* spool.c: the segments in log/, oldest first, owned by uid. */
int spool_list_segments(int log_fd, struct segtab *t, uint64_t *next_seq);
/* legacy.c: convert SPOOL/queue (one file per message) into the log. */
void spool_migrate_legacy(struct spool *sp);

/* legacy.c: the old one-file-per-message layout (SPOOL/queue/<qid>). */
struct legacy_msg {
    struct spool_env *env; /* owned, with the old state applied */
    int fd;                /* the old file, open; body at body_off */
    uint64_t body_off;
};
/* Load one old queue file; NULL with *reason on damage, or errno. */
int legacy_load(
    int dir_fd, uid_t owner, const char *name, struct legacy_msg *out, const char **reason);

/* mkdir -p: parents 0755, the spool itself 0700. */
int spool_mkdir_p(const char *dir);

#endif

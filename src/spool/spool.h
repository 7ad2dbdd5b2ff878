/*
 * The durable queue: an append-only log of segment files under SPOOL/log/.
 * Every message is one MSG record (its envelope and, in the form in which it
 * is transmitted after DATA, its body; a huge body is spilled ahead of it in
 * CHUNK records), followed over its life by STATE records (a snapshot of its
 * per-recipient state, each replacing the one before) and finally a DONE
 * record. One commit thread writes every record: a batch of messages costs
 * one fdatasync, and a writer's callback (the SMTP 250) runs only after the
 * sync that covered its MSG record. STATE and DONE records are not synced on
 * their own: they ride with the next batch, or an idle-time sync within
 * SPOOL_LAZY_SYNC_MS. Segments are deleted whole, oldest first, when no live
 * message has its MSG record there; a nearly dead oldest segment is compacted
 * (its few live messages written again at the head). The spool is the truth;
 * the scheduler is a cache of it, rebuilt by spool_recover() at start.
 *
 * Threads: spool_open's owner loop gets the commit hook and the recovery
 * batches. Writers may be used on any thread, one thread at a time, and say
 * which loop their commit callback runs on. Other calls are thread safe
 * unless they say otherwise.
 */
#ifndef TERN_SPOOL_H
#define TERN_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/buf.h"

struct evbuffer;
struct loopq;
struct spool;
struct spool_writer;
struct spool_content;

#define SPOOL_QID_LEN      16    /* hex characters */
#define SPOOL_PREFIX_MAX   16384 /* bytes of header fields sent before the body */
#define SPOOL_LAZY_SYNC_MS 1000  /* unsynced STATE/DONE records reach the disk */

/* Is qid a queue id: 16 lowercase hex digits, nothing more? */
bool spool_qid_valid(const char *qid);
#define SPOOL_SEG_SIZE_DEF (64u * 1024 * 1024) /* default segment size */
#define SPOOL_SEG_SIZE_MIN (1024u * 1024)
#define SPOOL_SEG_SIZE_MAX (1024u * 1024 * 1024) /* offsets fit in 32 bits */

/* RFC 3461 DSN NOTIFY bits; 0 means the client gave none (default: FAILURE). */
enum {
    DSN_NOTIFY_NEVER = 1 << 0,
    DSN_NOTIFY_SUCCESS = 1 << 1,
    DSN_NOTIFY_FAILURE = 1 << 2,
    DSN_NOTIFY_DELAY = 1 << 3,
};
enum dsn_ret { DSN_RET_UNSET, DSN_RET_FULL, DSN_RET_HDRS };
enum body_type { BODY_7BIT, BODY_8BITMIME, BODY_BINARYMIME };

enum rcpt_state {
    RCPT_QUEUED,    /* not yet tried, or to be tried again (deferred when attempts > 0) */
    RCPT_DELIVERED, /* the next hop said 2xx */
    RCPT_FAILED,    /* permanent failure or expired; a DSN was made if asked */
    /* Final, but the DSN it calls for is not yet in the queue: the message
     * stays until it is (also across a restart). last_error holds the status
     * to report. Then the recipient becomes RCPT_FAILED or RCPT_DELIVERED. */
    RCPT_FAILED_DSN,
    RCPT_DELIVERED_DSN, /* delivered; its success notice (NOTIFY=SUCCESS) is due */
};
#define RCPT_STATE_LAST RCPT_DELIVERED_DSN

/* Per-recipient flags kept in STATE records (struct spool_rcpt.flags). A
 * delay warning (RFC 3464 "Action: delayed") is first recorded as owed,
 * with the deferral that calls for it, then as sent once its DSN is in the
 * queue: a restart in between makes it again (twice at worst, never lost),
 * and a recipient is warned at most once. */
enum {
    RCPT_F_DELAY_DUE = 1u << 0,  /* a delay warning is owed, not yet queued */
    RCPT_F_DELAY_SENT = 1u << 1, /* the delay warning is queued: never again */
};

/* What a recipient is, fixed in the MSG record (struct spool_rcpt.kind). */
enum {
    /* The always_bcc archive copy: delivered in a transaction of its own
     * with the X-Tern-Envelope-* fields above the message, never the
     * subject of a DSN (its notify is DSN_NOTIFY_NEVER), and left out of
     * what the sender or the other recipients can see. */
    RCPT_K_ARCHIVE = 1u << 0,
};
#define RCPT_K_ALL RCPT_K_ARCHIVE

struct spool_rcpt {
    char *addr;  /* owned; as given, without <>; may be UTF-8 */
    char *orcpt; /* owned or NULL: ORCPT value as given ("rfc822;" xtext) */
    unsigned notify;
    unsigned kind; /* RCPT_K_*; 0 for a recipient the client named */
    enum rcpt_state state;
    uint32_t attempts;
    uint32_t flags;      /* RCPT_F_* */
    int64_t next_try_ms; /* wall clock of the next attempt; 0 = at once */
    char *last_error;    /* owned or NULL: last reply or reason, one line */
};

/* One delivery attempt for one recipient, kept with the message (the
 * latest SPOOL_ATTEMPTS_MAX of them) so that `queue show` has them even
 * without the history journal. */
#define SPOOL_ATTEMPTS_MAX     32
#define SPOOL_ATTEMPT_TEXT_MAX 256 /* bytes of an attempt's relay and of its reply */
enum spool_attempt_ev {
    SPOOL_ATT_DEFERRED,
    SPOOL_ATT_DELIVERED,
    SPOOL_ATT_BOUNCED,
    SPOOL_ATT_EXPIRED
};
struct spool_attempt {
    int64_t time_ms; /* wall clock */
    uint32_t rcpt;   /* index into rcpts */
    enum spool_attempt_ev ev;
    char *relay; /* owned or NULL: "host[addr]:port tls=..." */
    char *reply; /* owned or NULL: the reply or reason, one line */
};
/* "deferred", "delivered", "bounced", "expired"; NULL for another value. */
const char *spool_attempt_ev_name(enum spool_attempt_ev ev);

/* Where a piece of a stored body is: bytes [off, off+len) of segment seg. */
struct spool_extent {
    uint64_t seg;
    uint64_t off, len;
};

struct spool_env {
    char qid[SPOOL_QID_LEN + 1];
    int64_t arrival_ms; /* wall clock when the message was accepted */
    char *sender;       /* owned; "" for the null reverse-path */
    char *envid;        /* owned or NULL (xtext as given) */
    enum dsn_ret ret;
    enum body_type body;
    bool smtputf8;
    bool is_bounce;           /* made by tern (a DSN); failures of it are never bounced */
    bool held;                /* by the operator */
    char *helo;               /* owned or NULL: client identity, for DSNs and logs */
    char *client_addr;        /* owned or NULL */
    struct spool_rcpt *rcpts; /* owned array */
    size_t n_rcpts;
    struct spool_attempt *attempts; /* owned: the latest first-to-last, in the STATE record */
    size_t n_attempts;
    /* Owned or NULL: header fields sent before the body, each CRLF
     * terminated (DKIM-Signature fields made at commit by the writer's
     * finisher); not part of the body, at most SPOOL_PREFIX_MAX bytes. */
    char *prefix;
    /* Filled by the spool (commit, load): the body. body_len counts the
     * content (what RFC 1870 SIZE counts: no stuffing dots); the stored form
     * is stored_len bytes in ext[0..n_ext) in order, CRLF line ends,
     * dot-stuffed, without the final ".\r\n". */
    uint64_t body_len, stored_len;
    struct spool_extent *ext; /* owned */
    size_t n_ext;
};

/* Deep free of a loaded or built envelope (NULL fine). */
void spool_env_free(struct spool_env *env);
/* Deep copy. */
struct spool_env *spool_env_dup(const struct spool_env *env);
/* Record an attempt for recipient rcpt now (copies relay and reply);
 * the oldest goes beyond SPOOL_ATTEMPTS_MAX. */
void spool_env_add_attempt(struct spool_env *env, size_t rcpt, enum spool_attempt_ev ev,
    const char *relay, const char *reply);
/* Add a recipient (copies addr/orcpt). */
void spool_env_add_rcpt(
    struct spool_env *env, const char *addr, const char *orcpt, unsigned notify);

struct spool_opts {
    uint64_t segment_size; /* 0: SPOOL_SEG_SIZE_DEF */
    bool use_dir_fd;       /* dir is open already as dir_fd (taken over) */
    int dir_fd;
};

/* Open (creating with mode 0700 when missing) the spool at dir, start the
 * commit thread and the readers. Nothing is loaded: call spool_recover().
 * owner: the loop that gets the commit hook and recovery batches. NULL and
 * a message in err on failure. */
struct spool *spool_open(
    const char *dir, struct loopq *owner, const struct spool_opts *opts, struct buf *err);
/* For --check: 0 when dir is missing (spool_open makes it) or it and its
 * existing subdirectories may be trusted (owned by the user we run as, not
 * writable by group or others, subdirectories no symbolic links); -1 with a
 * message naming the directory and the problem otherwise. Creates nothing. */
int spool_check(const char *dir, struct buf *err);
/* The same for the processes that will run as uid (root_ok: ternd started
 * as root, which hands a root-owned spool to uid). A missing spool must be
 * creatable: its nearest existing ancestor a writable directory. */
int spool_check_as(const char *dir, uid_t uid, bool root_ok, struct buf *err);

/* ternd's parent, before anything else in the spool is touched: make the
 * spool (mode 0700) if missing, take the lock SPOOL/lock for the daemon's
 * life (flock; the holder's pid written in it) and, when hand_over (started
 * as root), give a root-owned spool and everything in it to uid:gid. The
 * open lock (*lock_fd, kept open by the daemon) and spool directory
 * (*dir_fd) are returned. -1 with err; -2 when another ternd holds the
 * lock (err names its pid). */
int spool_prepare(const char *dir, uid_t uid, gid_t gid, bool hand_over, int *lock_fd, int *dir_fd,
    struct buf *err);
/* Waits for every queued record to be written and synced (their callbacks
 * are posted), stops the threads. Every writer must be committed or aborted
 * first. */
void spool_free(struct spool *sp);
const char *spool_dir(const struct spool *sp);
/* The owner loop's inbox given to spool_open. */
struct loopq *spool_owner(const struct spool *sp);

/* Runs on the owner loop once per committed message, before the writer's
 * own callback is posted: the scheduler learns of new mail. env is
 * borrowed for the call (extents filled). */
typedef void (*spool_commit_hook)(const struct spool_env *env, void *arg);
void spool_set_commit_hook(struct spool *sp, spool_commit_hook fn, void *arg);

/* --- start-up --- */

/* What recovery knows of a live message without reading it whole. */
struct spool_entry {
    char qid[SPOOL_QID_LEN + 1];
    int64_t arrival_ms;
    int64_t next_try_ms; /* earliest next attempt over its queued recipients */
    uint32_t n_pending;  /* recipients still queued or with a DSN pending */
    bool held, is_bounce;
};
/* Rebuild the index in a background thread: fn gets batches of entries on
 * the owner loop (the array is borrowed for the call), then done(arg,
 * count) once. Damaged records are reported and set aside (corrupt/), a
 * torn tail is cut off. Messages committed meanwhile are not included (the
 * commit hook reports them). Old one-file-per-message spools (queue/) are
 * converted into the log first. Call once. */
typedef void (*spool_found_fn)(const struct spool_entry *v, size_t n, void *arg);
void spool_recover(
    struct spool *sp, spool_found_fn fn, void (*done)(void *arg, long count), void *arg);
/* Until recovery is done, a qid may be unknown that is in fact queued. */
bool spool_recovered(struct spool *sp);
/* Stop a recovery in progress (at shutdown) and wait for its thread; what
 * it already found is posted. No-op when none runs. */
void spool_recover_stop(struct spool *sp);

/* --- writing a new message --- */

/* Start a message with this envelope (deep-copied; qid and arrival_ms are
 * assigned here and written back into env). Never fails: nothing touches a
 * disk before the commit (a huge body is spilled by the commit thread). */
struct spool_writer *spool_writer_new(struct spool *sp, struct spool_env *env);
const char *spool_writer_qid(const struct spool_writer *w);
/* Append n bytes of src that are already in transmitted form (CRLF line
 * ends, dot-stuffed: DATA as received, without its final ".\r\n"). Whole
 * chains of src are moved, not copied. content_n is what they count
 * without stuffing dots. */
void spool_writer_add_stuffed(
    struct spool_writer *w, struct evbuffer *src, size_t n, uint64_t content_n);
/* Append message content (not stuffed; stuffed here as it is copied). */
void spool_writer_write(struct spool_writer *w, const void *data, size_t len);
uint64_t spool_writer_size(const struct spool_writer *w); /* content bytes so far */
/* Queue the message held (as `queue hold` would): the writer keeps its
 * own copy of the envelope, so this, not the caller's env, says it. */
void spool_writer_hold(struct spool_writer *w);
/* Header fields (CRLF-terminated, copied) to send before the content: the
 * message's prefix, which a finisher's fields then go on top of. 0, or -1
 * when they are not valid fields or longer than SPOOL_PREFIX_MAX. */
int spool_writer_set_prefix(struct spool_writer *w, const char *fields);
/* A finisher makes header fields for the prefix once all of the message is
 * there (DKIM signing), on a worker thread before the commit: fn reads the
 * content from body, appends complete CRLF-terminated fields to prefix and
 * returns 0, or -1 to add nothing (the message is committed all the same).
 * free_fn(arg), when not NULL, runs exactly once, on any thread. */
typedef int (*spool_finish_fn)(
    const char *qid, struct spool_content *body, struct buf *prefix, void *arg);
void spool_writer_set_finisher(
    struct spool_writer *w, spool_finish_fn fn, void (*free_fn)(void *arg), void *arg);
/* Add a recipient the client did not name (the always_bcc archive copy)
 * once the content is written, before the commit: it is durable in the
 * same record as the others, and nothing made from the envelope earlier
 * (the Received field) names it. kind: RCPT_K_*. */
void spool_writer_add_rcpt(
    struct spool_writer *w, const char *addr, unsigned notify, unsigned kind);
/* From now on the content written is also appended to copy, unstuffed (as
 * the message reads), until the commit; copy is borrowed and must outlive
 * the writes (NULL: no more). What a stage that may change the message
 * reads it back from (milters). */
void spool_writer_tee(struct spool_writer *w, struct buf *copy);
/* Move the prefix set on from (header fields made before the commit) to
 * to, a writer that replaces it. */
void spool_writer_take_prefix(struct spool_writer *to, struct spool_writer *from);
/* Discard; w is consumed. */
void spool_writer_abort(struct spool_writer *w);
/* Commit; w is consumed. cb (may be NULL) runs later on to's loop with ok
 * false (and the errno value err: ENOSPC, EIO...) when the message could
 * not be made durable. cb_id is handed back as is: use an id, never a
 * pointer that may die. */
typedef void (*spool_commit_cb)(uint64_t cb_id, const char *qid, bool ok, int err, void *arg);
void spool_writer_commit(
    struct spool_writer *w, struct loopq *to, spool_commit_cb cb, uint64_t cb_id, void *arg);

/* --- the life of a committed message --- */

/* Record env's mutable state (recipient states, attempts, next attempt
 * times, flags, last errors, held) as the message's newest STATE. Not
 * synced by itself (see the top of this file). */
void spool_update_state(struct spool *sp, const struct spool_env *env);
/* The message is finished (every recipient final and its DSNs durable) or
 * deleted: it is forgotten and its space reclaimed with its segment. */
void spool_remove(struct spool *sp, const char *qid);
/* Request a sync of everything written so far; cb runs on to's loop when
 * it is durable (used before a DSN's original may go, and at stop). */
void spool_sync(struct spool *sp, struct loopq *to, void (*cb)(void *arg, int err), void *arg);

/* --- reading --- */

/* The envelope with its newest state and body extents, read on a reader
 * thread; a body never verified since it was read from disk is checked
 * (CRC) and read ahead into the page cache first. cb runs on to's loop with
 * an owned env, or NULL and errno (ENOENT: no such live message; EBADMSG:
 * damaged, set aside). */
typedef void (*spool_load_cb)(uint64_t id, struct spool_env *env, int err, void *arg);
void spool_load_async(
    struct spool *sp, const char *qid, struct loopq *to, spool_load_cb cb, uint64_t id, void *arg);
/* The same, synchronously (worker threads, tools): NULL with errno. The
 * body is not checked. */
struct spool_env *spool_load(struct spool *sp, const char *qid);
/* As spool_load, with the body checked as spool_load_async does. */
struct spool_env *spool_load_checked(struct spool *sp, const char *qid);

/* The stored body as file pieces for sendfile: open references to the
 * segment files of env's extents, valid until spool_body_close (a
 * compaction or deletion meanwhile does not take the bytes away). */
struct spool_body_piece {
    int fd;
    uint64_t off, len;
};
struct spool_body;
struct spool_body *spool_body_open(
    struct spool *sp, const struct spool_env *env, const struct spool_body_piece **v, size_t *n);
void spool_body_close(struct spool_body *b); /* NULL is fine */

/* Sequential reader of a message's content (dot-stuffing removed): for
 * DSNs, conversions and signing, on worker threads (it reads files). */
struct spool_content *spool_content_open(struct spool *sp, const struct spool_env *env);
/* Next piece in *p, *n (valid until the next call): 1, 0 at the end, -1 on
 * a read error (errno) or a body shorter than recorded (EBADMSG). */
int spool_content_next(struct spool_content *c, const char **p, size_t *n);
void spool_content_close(struct spool_content *c); /* NULL is fine */

/* An unnamed file on the spool's file system (O_TMPFILE in log/): scratch
 * space for a converted copy of a message; it goes with its last
 * descriptor. -1 with errno. */
int spool_tmpfile(struct spool *sp);

/* Read the spool at dir without a daemon and without changing anything:
 * fn gets every live message (an owned env with state and extents), in
 * arrival order of their records. -1 and err when dir is not a spool. */
long spool_scan(
    const char *dir, void (*fn)(struct spool_env *env, void *arg), void *arg, struct buf *err);

/* The `ternctl queue list --json` line of env (CONTRACT.md) appended to out:
 * status(idx) names a recipient's status when the caller knows better than
 * the envelope ("delivering"), or returns NULL; status may be NULL. */
void spool_env_list_json(const struct spool_env *env, const char *(*status)(size_t idx, void *arg),
    void *arg, struct buf *out);

/* Counters for metrics and tests. */
struct spool_stats {
    uint64_t batches, syncs, records, bytes; /* since open */
    uint64_t segments, segments_deleted, compacted;
    uint64_t live_messages;
};
void spool_get_stats(struct spool *sp, struct spool_stats *st);

#endif

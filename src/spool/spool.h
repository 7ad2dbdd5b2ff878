/*
 * The durable queue. One file per message under SPOOL/queue/<qid>:
 * a fixed-width header, the envelope as text records, the message bytes
 * (exactly as they will be sent, CRLF line ends, not dot-stuffed), an end
 * marker, then appended status records (per-recipient results, hold, and
 * the header prefix made at commit: DKIM signatures, see below).
 * A message is written in SPOOL/tmp/, and committed by a pool of worker
 * threads: fdatasync, close, rename into queue/, one fsync of queue/ per batch;
 * only then is the writer's callback run (on the event loop thread) so the
 * SMTP session can answer 250. Damaged files are moved to SPOOL/corrupt/.
 * The spool is the truth; the scheduler is a cache rebuilt by spool_walk().
 */
#ifndef TERN_SPOOL_H
#define TERN_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

struct event_base;
struct spool;
struct spool_writer;

#define SPOOL_QID_LEN 16 /* hex characters */

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

struct spool_rcpt {
    char *addr;  /* owned; as given, without <>; may be UTF-8 */
    char *orcpt; /* owned or NULL: ORCPT value as given ("rfc822;" xtext) */
    unsigned notify;
    enum rcpt_state state;
    uint32_t attempts;
    char *last_error; /* owned or NULL: last reply or reason, one line */
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
    /* Owned or NULL: header fields to send before the message bytes, each
     * CRLF-terminated (the DKIM-Signature fields made by a finisher at
     * commit, see spool_writer_set_finisher). Not part of body_len; at most
     * SPOOL_PREFIX_MAX bytes. Stored as a checked record after the end
     * marker; spool_load and spool_walk fill it, spool_env_dup copies it. */
    char *prefix;
    /* Filled by the spool when loaded: where the message bytes are. */
    uint64_t body_off, body_len;
};

/* Deep free of a loaded or built envelope (NULL fine). */
void spool_env_free(struct spool_env *env);
/* Deep copy. */
struct spool_env *spool_env_dup(const struct spool_env *env);
/* Add a recipient (copies addr/orcpt). */
void spool_env_add_rcpt(
    struct spool_env *env, const char *addr, const char *orcpt, unsigned notify);

/* Open (creating with mode 0700 when missing) the spool at dir: makes tmp/,
 * queue/, corrupt/, refuses them as spool_check does, removes tmp/ leftovers
 * (never acknowledged), starts the commit workers. Completions run on base's
 * thread. NULL + message on error. */
struct spool *spool_open(const char *dir, struct event_base *base, struct buf *err);
/* For --check: 0 when dir is missing (spool_open makes it) or it and its
 * existing subdirectories may be trusted (owned by the user we run as, not
 * writable by group or others, subdirectories no symbolic links); -1 with a
 * message naming the directory and the problem otherwise. Creates nothing. */
int spool_check(const char *dir, struct buf *err);
/* Waits for in-flight commits to finish (their callbacks run), stops workers. */
void spool_free(struct spool *sp);
const char *spool_dir(const struct spool *sp);

/* Called on the loop thread once per committed message, before the writer's
 * own callback: the scheduler uses it to learn of new mail. env is borrowed
 * for the call. */
typedef void (*spool_commit_hook)(const struct spool_env *env, void *arg);
void spool_set_commit_hook(struct spool *sp, spool_commit_hook fn, void *arg);

/* --- writing a new message --- */

/* Start a message with this envelope (deep-copied; qid and arrival_ms are
 * assigned here and written back into env). Creates the tmp file and writes
 * the header and envelope. NULL on error with errno set (ENOSPC, EIO...). */
struct spool_writer *spool_writer_new(struct spool *sp, struct spool_env *env);
const char *spool_writer_qid(const struct spool_writer *w);
/* Append message bytes. -1 with errno on I/O error (the writer is then
 * failed: only abort is allowed). */
int spool_writer_write(struct spool_writer *w, const void *data, size_t len);
uint64_t spool_writer_size(const struct spool_writer *w); /* message bytes so far */
/* A finisher makes header fields for the prefix of a message once all its
 * bytes are written, off the loop thread (DKIM signing): fn runs on a
 * commit worker thread before the file is made durable, appends complete
 * CRLF-terminated fields to prefix and returns 0, or -1 to add nothing (the
 * message is committed all the same). fn must not touch loop-thread state.
 * free_fn(arg), when not NULL, runs exactly once, after fn or when the
 * message is aborted or fails, on any thread. One finisher per writer. */
#define SPOOL_PREFIX_MAX 16384
typedef int (*spool_finish_fn)(const char *qid, struct buf *prefix, void *arg);
void spool_writer_set_finisher(
    struct spool_writer *w, spool_finish_fn fn, void (*free_fn)(void *arg), void *arg);
/* Discard: close and unlink the tmp file, free w. */
void spool_writer_abort(struct spool_writer *w);
/* Finish and commit asynchronously; w is consumed. cb runs later on the loop
 * thread with ok=false (and errno value err) if the message could not be made
 * durable (it is then removed). cb may be NULL. cb_id is handed back as is:
 * use an id, never a pointer that may die. */
typedef void (*spool_commit_cb)(uint64_t cb_id, const char *qid, bool ok, int err, void *arg);
void spool_writer_commit(struct spool_writer *w, spool_commit_cb cb, uint64_t cb_id, void *arg);

/* --- reading and updating committed messages --- */

/* Visit every committed message (start-up). Damaged files are moved to
 * corrupt/ with a log line and skipped. fn gets an owned env. Returns the
 * number visited, -1 if the queue directory cannot be read. */
typedef void (*spool_walk_fn)(struct spool_env *env, void *arg);
long spool_walk(struct spool *sp, spool_walk_fn fn, void *arg);
/* Load one message's envelope with status applied. Owned result or NULL
 * (errno ENOENT when no such message). */
struct spool_env *spool_load(struct spool *sp, const char *qid);
/* Open the message file for reading the body: returns an fd (caller closes)
 * positioned nowhere in particular; use pread at env->body_off. -1 on error. */
int spool_open_message(struct spool *sp, const char *qid);

/* Append a recipient status record (durably, off the loop thread; in order
 * per message). Fire and forget: failures are logged. */
void spool_update_rcpt(struct spool *sp, const char *qid, size_t idx, enum rcpt_state state,
    uint32_t attempts, const char *last_error);
/* Append a hold (true) / release (false) record. */
void spool_update_held(struct spool *sp, const char *qid, bool held);
/* Remove a finished or deleted message. 0 ok, -1 with errno. */
int spool_remove(struct spool *sp, const char *qid);

#endif

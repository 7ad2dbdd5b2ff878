/*
 * The message history journal: one JSON line per event of a message
 * (received, each delivery attempt, held, released, deleted, DSN sent) in
 * files under SPOOL/history/, named by the Unix time in milliseconds at
 * which each was started, so their names sort in time order. The writer is
 * process-wide and thread safe (whole lines, one mutex): lines made on a
 * thread whose loop is attached are written with one write(2) per loop
 * pass; a background thread syncs (fdatasync, at most once a second and
 * only after a write), rotates (hourly and by size) and deletes old files.
 * The journal is history, never mail: a crash can lose its last second, and
 * a journal that cannot be written is reported once and otherwise ignored.
 *
 *     struct hline h;
 *     history_begin(&h, qid, "deferred");
 *     history_str(&h, "recipient", addr);
 *     history_end(&h);
 */
#ifndef TERN_HISTORY_H
#define TERN_HISTORY_H

#include <stdbool.h>
#include <stdint.h>

#include "util/buf.h"

struct event_base;

#define HISTORY_DIR       "history"
#define HISTORY_LINE_MAX  (16u * 1024) /* longer journal lines are skipped by readers */
#define HISTORY_VALUE_MAX 1000         /* bytes of one value kept (longer ones cut) */
#define HISTORY_BATCH_MAX (64u * 1024) /* bytes of lines held back at most */
#define HISTORY_SYNC_MS   1000         /* the journal is synced at most this often */
#define HISTORY_EXPIRE_MS 60000        /* old files are looked for this often */
#define HISTORY_FILE_MIN  (64u * 1024) /* bounds of one file's size */
#define HISTORY_FILE_MAX  (64u * 1024 * 1024)

/* Times in the text timeline (trace, queue show), UTC. */
#define HISTORY_TIME_FMT "%Y-%m-%d %H:%M:%SZ"

struct history_opts {
    int64_t retention_ms; /* files older than this are deleted (> 0) */
    uint64_t max_size;    /* bound on the total bytes of the files */
    uint64_t file_max;    /* rotate at this size; 0: max_size / 8 within the bounds above */
    bool background;      /* start the thread that syncs, rotates and expires */
    /* Reach the spool through spool_fd (borrowed, used during history_open
     * only) rather than by its path, which ternd's user may not traverse. */
    bool use_spool_fd;
    int spool_fd;
};

/* Open the journal in SPOOL_DIR/history (created mode 0700 when missing; it
 * must be a directory of ours, not writable by others, no symbolic link)
 * and start a new file in it. 0, or -1 with a message in err (the caller
 * logs it and runs on: lines are then dropped). Not thread safe with the
 * writers: call before the loops start. */
int history_open(const char *spool_dir, const struct history_opts *o, struct buf *err);
/* Stop the background thread, write what is held, sync and close. */
void history_close(void);
/* New bounds (a reload). Thread safe. */
void history_set_limits(int64_t retention_ms, uint64_t max_size);
/* Batch the lines of the calling thread, which runs base's loop, like
 * log_attach_loop; -1 when the flush event cannot be made. */
int history_attach_loop(struct event_base *base);
void history_detach_loop(void);
/* Write what is held now. Thread safe. */
void history_flush(void);
/* Rotation and expiry as the background thread does them at now_ms
 * (tests call it with a chosen time). */
void history_maintain(int64_t now_ms, bool expire);

/* One journal line being built. Values are escaped here: pass raw text. */
struct hline {
    struct buf b;
    bool on; /* false when no journal is open */
};
/* qid may be NULL ("-"). */
void history_begin(struct hline *h, const char *qid, const char *event);
void history_str(struct hline *h, const char *key, const char *val); /* NULL: left out */
void history_int(struct hline *h, const char *key, int64_t val);
void history_end(struct hline *h);

/* ---- reading (ternctl; no daemon needed) ---- */

/* One journal line, its strings borrowed until the callback returns (NULL
 * when absent). */
struct history_rec {
    int64_t time_ms;
    char id[17];
    char event[16];
    const char *recipient, *relay, *reply, *from, *message_id;
    const char *client, *helo, *tls, *user, *dsn_id;
    /* attempts: the outbound TLS policy and how the peer was authenticated */
    const char *tls_policy, *tls_verified;
    int64_t size;   /* -1 when absent */
    int64_t next_s; /* next attempt (Unix seconds), -1 when absent */
};
/* Return nonzero to stop the scan. */
typedef int (*history_rec_fn)(const struct history_rec *r, void *arg);

struct history_scan_stats {
    uint64_t files, lines, corrupt; /* corrupt: skipped lines (too long, not an event) */
};
/* Hand every event of the journal under spool_dir that happened at or
 * after since_ms to fn, file by file in time order, line by line (memory
 * bounded by HISTORY_LINE_MAX). 0 (also when there is no journal yet), or
 * -1 with err when the directory cannot be read. */
int history_scan(const char *spool_dir, int64_t since_ms, history_rec_fn fn, void *arg,
    struct history_scan_stats *st, struct buf *err);
/* Parse one journal line; 0 with r filled (strings point into *tree, which
 * the caller frees with json_free), or -1. */
struct json;
int history_parse_line(const char *line, size_t len, struct history_rec *r, struct json **tree);

/* A place in the journal: a file's name and a byte offset in it. An empty
 * file name is the start of the journal. */
struct history_pos {
    char file[24];
    uint64_t off;
};
/* Called for each event after the starting place, with the place just
 * after its line. Return 0 to take it and go on, nonzero to stop before it
 * (the end place then stays before it). */
typedef int (*history_follow_fn)(
    const struct history_rec *r, const struct history_pos *after, void *arg);
/* Read the journal under spool_dir from *from on, in time order, handing
 * each event to fn; *end is where the next read should start (past every
 * line read, damaged lines included). A file counts as complete only once
 * a later one holds something (the writer makes the next file before its
 * last write to the old one); until then reading stops at its end, and a
 * last line without its newline is left for later. *lost is set
 * when from->file is gone (expired): reading went on from the next file.
 * 0, or -1 with err when the directory cannot be read. */
int history_follow(const char *spool_dir, const struct history_pos *from, history_follow_fn fn,
    void *arg, struct history_pos *end, bool *lost, struct buf *err);

/* What trace looks for. */
struct history_query {
    char *text;   /* owned: the query, angle brackets of a Message-ID removed */
    bool is_qid;  /* 16 lowercase hex digits */
    bool is_addr; /* has an '@': matched against senders and recipients too */
};
/* 0, or -1 when q is empty or too long. */
int history_query_init(struct history_query *q, const char *text);
void history_query_fini(struct history_query *q);
/* Does this event name the message the query asks for (its id, its
 * Message-ID, its sender or one of its recipients)? */
bool history_query_match(const struct history_query *q, const struct history_rec *r);
/* Addresses equal with the domain compared without case (RFC 5321 §2.4:
 * the local part may be case sensitive). */
bool history_addr_eq(const char *a, const char *b);

/* The trace event object of the contract (one line, with "\n"). */
void history_rec_json(const struct history_rec *r, struct buf *out);
/* A readable timeline line for a terminal (control characters made safe). */
void history_rec_text(const struct history_rec *r, struct buf *out);

#endif

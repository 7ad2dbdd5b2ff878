/*
 * Private to src/spool: the file format constants, the envelope and status
 * record codec (envelope.c), the loader (load.c), the commit pipeline
 * (commit.c) and the status updater (update.c). struct spool is owned by
 * spool_open()'s caller; writers and queued jobs point back to it.
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

/* File layout:
 *   header   "TERN1 body=<20 digits> len=<20 digits>\n" (SPOOL_HDR_LEN bytes;
 *            "TERN1 uncommitted" padded with spaces until commit)
 *   envelope records "<tag> <value>...\n" from SPOOL_HDR_LEN to body=
 *   body     len= bytes, exactly as written
 *   end      "\nEND <crc32c of envelope records> <crc32c of body>\n"
 *   status   "s <idx> <state> <attempts> <error> <crc>\n", "h <0|1> <crc>\n",
 *            "d <escaped prefix> <crc>\n" (written before the commit's
 *            fdatasync by the finisher; a later one replaces an earlier one)
 */
#define SPOOL_MAGIC       "TERN1 "
#define SPOOL_HDR_LEN     57
#define SPOOL_HDR_PENDING "TERN1 uncommitted"
#define SPOOL_END_LEN     23
#define SPOOL_LINE_MAX    65536  /* any record line, newline excluded */
#define SPOOL_RCPT_MAX    100000 /* recipients per message */
#define SPOOL_ERR_MAX     1000   /* bytes of last_error kept in a status record */
#define SPOOL_WBUF_SIZE   65536  /* writer's user-space buffer */
#ifndef SPOOL_COMMIT_THREADS
#define SPOOL_COMMIT_THREADS 8
#endif

/* --- envelope.c --- */
uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n);
bool spool_qid_valid(const char *qid);
/* Append s[n] escaped (%XX for bytes < 0x21, '%', 0x7f; a lone "-" too). */
void spool_esc(struct buf *b, const char *s, size_t n);
/* Decode an escaped value; rejects raw forbidden bytes, bad %XX and NUL.
 * Owned result in *out. 0 ok, -1 bad. */
int spool_unesc(const char *p, size_t n, char **out);
/* Envelope records (no header) for env. -1 (errno EINVAL) when a line would
 * be longer than SPOOL_LINE_MAX or there are no or too many recipients. */
int spool_env_encode(const struct spool_env *env, struct buf *out);

struct spool_env_parser {
    struct spool_env *env; /* owned by the parser until taken */
    size_t next_field;
};
void spool_env_parser_init(struct spool_env_parser *p);
void spool_env_parser_fini(struct spool_env_parser *p);
/* One record line without its "\n". 0 ok, -1 bad. */
int spool_env_parse_line(struct spool_env_parser *p, const char *line, size_t len);
/* All records seen: the owned envelope, or NULL when incomplete. */
struct spool_env *spool_env_parse_end(struct spool_env_parser *p);

/* Status records, complete with check and "\n". */
void spool_status_rcpt_line(
    struct buf *b, size_t idx, enum rcpt_state st, uint32_t attempts, const char *err);
void spool_status_held_line(struct buf *b, bool held);
/* The prefix record (see spool.h: struct spool_env prefix). */
void spool_status_prefix_line(struct buf *b, const char *prefix);
/* Is p[n] acceptable as a prefix: 1..SPOOL_PREFIX_MAX bytes of header
 * fields, each ending in CRLF, no bare CR or LF, no empty line? */
bool spool_prefix_valid(const char *p, size_t n);
/* Apply one status line (without "\n") to env: 0 applied, 1 bad check or
 * syntax (torn), -1 checked but invalid (damaged). */
int spool_status_apply(struct spool_env *env, const char *line, size_t len);
/* Does a status line (without "\n") carry a good check? */
bool spool_status_check(const char *line, size_t len);

/* --- load.c --- */
/* Load from an open file. On damage returns NULL with *reason set; on an
 * I/O error NULL with errno set and *reason NULL. verify_body re-reads the
 * body to check its checksum. */
struct spool_env *spool_load_fd(int fd, const char *qid, bool verify_body, const char **reason);
/* Parse a committed header line; 0 ok, -1 bad (reason set). */
int spool_parse_header(const char *h, uint64_t *body_off, uint64_t *body_len, const char **reason);

/* --- commit.c --- */
struct spool_writer {
    struct spool *sp;
    struct spool_writer *next; /* in one of the pipeline lists */
    int fd;
    char qid[SPOOL_QID_LEN + 1];
    struct spool_env *env; /* owned deep copy */
    char *wbuf;            /* owned, SPOOL_WBUF_SIZE; NULL after commit */
    size_t wlen;
    uint64_t flushed; /* bytes written to fd */
    uint64_t body_off, body_len;
    uint32_t env_crc, body_crc;
    bool failed;
    int err;
    spool_finish_fn fin; /* NULL: none, or already run */
    void (*fin_free)(void *arg);
    void *fin_arg;
    spool_commit_cb cb;
    uint64_t cb_id;
    void *cb_arg;
};

struct spool_upd {
    struct spool_upd *next;
    char qid[SPOOL_QID_LEN + 1];
    size_t len;
    char line[]; /* complete record line */
};

struct spool {
    char *dir;
    int dir_fd, tmp_fd, queue_fd, corrupt_fd;
    uid_t owner; /* of the spool: every queue file must be this user's */
    struct event_base *base;
    struct event *ev;
    int efd; /* eventfd: workers -> loop thread */
    spool_commit_hook hook;
    void *hook_arg;
    size_t n_writers; /* open writers (loop thread only) */

    pthread_mutex_t mu; /* guards the three lists, inflight, stopping */
    pthread_cond_t work_cond, sync_cond, done_cond;
    struct spool_writer *work_head, **work_tail; /* to fdatasync + rename */
    struct spool_writer *sync_head, **sync_tail; /* renamed, awaiting dir fsync */
    struct spool_writer *done_head, **done_tail; /* for the loop thread */
    size_t inflight;                             /* committed, callback not yet run */
    bool stopping;
    pthread_t workers[SPOOL_COMMIT_THREADS];
    pthread_t syncer;
    bool threads_started;

    pthread_mutex_t umu;
    pthread_cond_t ucond;
    struct spool_upd *uhead, **utail;
    bool ustop;
    pthread_t updater;
    bool updater_started;
};

int spool_commit_start(struct spool *sp, struct buf *err);
/* Drain in-flight commits (running callbacks) and join the threads. */
void spool_commit_stop(struct spool *sp);

/* --- update.c --- */
int spool_update_start(struct spool *sp, struct buf *err);
/* Write every queued update, then join the thread. */
void spool_update_stop(struct spool *sp);

#endif

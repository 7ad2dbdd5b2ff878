/*
 * The event webhook: the history journal's events POSTed as JSON arrays to
 * event_webhook_url, signed with HMAC-SHA256 of the body under a shared
 * secret. The journal is the queue: a durable cursor (file name + offset,
 * SPOOL/webhook.cursor, replaced atomically after each 2xx) says what has
 * been acknowledged, so nothing waits in memory and mail never waits for
 * the receiver. Pure parts (batch, signature, cursor, backoff) are here for
 * tests; the sender drives libcurl on the relay's loop.
 */
#ifndef TERN_WEBHOOK_H
#define TERN_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "history/history.h"
#include "util/buf.h"

struct event_base;

#define WEBHOOK_CURSOR_FILE  "webhook.cursor"
#define WEBHOOK_BODY_MAX     (256u * 1024) /* bytes of one POST's body at most */
#define WEBHOOK_SIG_LEN      (7 + 64)      /* "sha256=" and 64 hex digits */
#define WEBHOOK_RETRY_MIN_MS 5000          /* first retry (the contract: within 10 s) */
#define WEBHOOK_RETRY_MAX_MS 300000        /* backoff cap (the contract: 5 minutes) */
#define WEBHOOK_SECRET_MAX   4096

/* "sha256=" and the lowercase hex HMAC-SHA256 of body under key, into
 * out[WEBHOOK_SIG_LEN + 1]. 0, or -1 when OpenSSL fails. */
int webhook_sign(const void *key, size_t key_len, const void *body, size_t len, char *out);

/* The delay before retry number attempt (1: the first retry). */
int64_t webhook_backoff_ms(unsigned attempt);

/* One batch read from the journal. */
struct webhook_batch {
    struct buf body;       /* the JSON array */
    size_t n;              /* events in it */
    struct history_pos to; /* the cursor once the receiver has it */
};
/* Read up to max_events events (and WEBHOOK_BODY_MAX bytes) after from
 * into b (its body reset first). An event too big for any body is left
 * out. 0 (b->n may be 0), or -1 with err; *lost as history_follow. */
int webhook_batch_read(const char *spool_dir, const struct history_pos *from, size_t max_events,
    struct webhook_batch *b, bool *lost, struct buf *err);
/* One event as the receiver gets it: the trace object plus "sender"
 * (null when the journal line does not carry it). No newline. */
void webhook_event_json(const struct history_rec *r, struct buf *out);

/* The cursor under spool_dir: 0 with *pos (the journal's start when there
 * is no cursor file yet), or -1 with err when it cannot be read or is
 * damaged. */
int webhook_cursor_load(const char *spool_dir, struct history_pos *pos, struct buf *err);
/* Replace the cursor file: write a temporary file, fsync, rename, fsync
 * the directory. 0, or -1 with err. */
int webhook_cursor_save(const char *spool_dir, const struct history_pos *pos, struct buf *err);

/* ---- the sender ---- */

struct webhook_opts {
    const char *url;    /* borrowed during the call: http:// or https:// */
    const void *secret; /* borrowed during the call */
    size_t secret_len;
    size_t batch_max;    /* events per POST */
    const char *ca_file; /* borrowed; NULL: the system store */
};
struct webhook;
/* Start sending the journal under spool_dir (a path the relay can reach;
 * copied) on base's loop, from the cursor on. NULL with err. */
struct webhook *webhook_new(
    struct event_base *base, const char *spool_dir, const struct webhook_opts *o, struct buf *err);
/* New URL, secret or batch size (a reload); a request in flight finishes
 * with the old ones. */
void webhook_set_opts(struct webhook *w, const struct webhook_opts *o);
/* Stop: a request in flight is abandoned (its events go again next time). */
void webhook_free(struct webhook *w);

#endif

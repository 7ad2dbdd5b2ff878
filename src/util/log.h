/*
 * Structured logging: one event per line, `level qid=… sess=… subsystem
 * event key=value …` in text form or the same keys as one JSON object.
 * Untrusted values are escaped and shortened here, so callers pass raw text.
 *
 *     struct logline l;
 *     log_begin(&l, LOG_INFO, qid, "smtp", "received");
 *     log_str(&l, "from", sender);
 *     log_int(&l, "size", size);
 *     log_end(&l);
 */
#ifndef TERN_LOG_H
#define TERN_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CRIT };

struct logline {
    struct buf b;
    bool on; /* false when the level is filtered out */
    bool json;
};

/* Global settings; safe to change between lines (not thread safe). */
void log_set_json(bool json);
void log_set_level(enum log_level min);
/* Redirect output to fd (default 2). */
void log_set_fd(int fd);

/* qid may be NULL ("-"). */
void log_begin(struct logline *l, enum log_level lvl, const char *qid, const char *subsys,
    const char *event);
void log_str(struct logline *l, const char *key, const char *val);
void log_strn(struct logline *l, const char *key, const char *val, size_t n);
void log_int(struct logline *l, const char *key, int64_t val);
void log_errno(struct logline *l, int err); /* key "error" = strerror(err) */
void log_end(struct logline *l); /* writes the line with one write(2) */

/* One-liner for the common case of a message with no keys but "msg". */
void log_simple(enum log_level lvl, const char *subsys, const char *event, const char *msg);

#endif

/*
 * Structured logging: one event per line, `TIMESTAMP level qid=… sess=…
 * subsystem event key=value …` in text form or the same keys (and "ts") as
 * one JSON object; to stderr, a file or syslog (log_target_open, log_use).
 * Untrusted values are escaped and shortened here, so callers pass raw text.
 * Lines logged on an event loop's thread (log_attach_loop) are batched and
 * written once per loop iteration; every other line is written at once.
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

struct event_base;

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CRIT };

struct logline {
    struct buf b;
    enum log_level lvl;
    bool on; /* false when the level is filtered out */
    bool json;
};

/* Global settings; safe to change between lines (not thread safe). */
void log_set_json(bool json);
void log_set_level(enum log_level min);
/* Redirect output to fd (default 2); fd stays the caller's. */
void log_set_fd(int fd);

/* log_target: "stderr" (2, *syslog false), "syslog" (a datagram socket
 * connected to /dev/log, or to $TERN_SYSLOG_PATH for tests; *syslog true)
 * or an absolute path (opened for appending, created 0640, a regular file
 * only). Returns the descriptor (close-on-exec), or -1 with err. Reads the
 * time zone for syslog's header (call before a sandbox forbids it). */
int log_target_open(const char *target, bool *syslog, struct buf *err);
/* ternd --check: could log_target_open(target) succeed? A file is not
 * created (its directory is checked instead). 0, or -1 with err. */
int log_target_check(const char *target, struct buf *err);
/* Write lines to fd from now on: what is batched goes to the previous
 * descriptor first, which is closed when it was owned. owned: fd is closed
 * when replaced. syslog: one datagram per line with a syslog header (no
 * timestamp in text lines then). Thread safe. */
void log_use(int fd, bool owned, bool syslog);

/* "2026-12-02T21:30:01.123Z" (RFC 3339, UTC, milliseconds) for a time in
 * ms since the Unix epoch (negative: the epoch); its length, or 0 when
 * cap < LOG_TS_MAX. */
#define LOG_TS_MAX 32
size_t log_format_ts(int64_t unix_ms, char *out, size_t cap);

/* qid may be NULL ("-"). */
void log_begin(
    struct logline *l, enum log_level lvl, const char *qid, const char *subsys, const char *event);
void log_str(struct logline *l, const char *key, const char *val);
void log_strn(struct logline *l, const char *key, const char *val, size_t n);
void log_int(struct logline *l, const char *key, int64_t val);
void log_errno(struct logline *l, int err); /* key "error" = strerror(err) */
/* Ends the line. Written with one write(2) (with the lines batched before
 * it) at once, or, on a thread with an attached loop, at the end of the
 * loop's current iteration; error and crit lines are always written at once. */
void log_end(struct logline *l);

/* Batch the lines of the calling thread, which runs base's loop: they are
 * written together (one write per burst, whole lines, in order) before the
 * loop next sleeps, and at once when an error line comes, at exit(), or
 * when the process crashes (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT; the
 * previous handler then runs). Only kill -9 can lose a batched line. -1
 * when the flush event cannot be made (lines are then written at once). */
int log_attach_loop(struct event_base *base);
/* Write what is batched and stop batching on this thread (before its
 * loop's base is freed). */
void log_detach_loop(void);
/* Write what is batched now. Thread safe. */
void log_flush(void);

/* One-liner for the common case of a message with no keys but "msg". */
void log_simple(enum log_level lvl, const char *subsys, const char *event, const char *msg);

#endif

/*
 * The HTTP endpoint on metrics_listen: /metrics (Prometheus text format) and
 * /status (JSON), both read from the scheduler's counters and the SMTP
 * server's session count. libevent's evhttp serves it on the main loop.
 */
#ifndef TERN_METRICS_H
#define TERN_METRICS_H

#include "config/config.h"
#include "util/buf.h"

struct event_base;
struct sched;
struct smtp_server;
struct metrics;

/* Listen on cfg->metrics_listen (which must be set). status appends the
 * /status JSON object. NULL + err when the address cannot be bound. */
struct metrics *metrics_new(struct event_base *base, const struct hostport *listen,
    struct sched *sch, struct smtp_server *smtp, void (*status)(struct buf *out, void *arg),
    void *status_arg, struct buf *err);
void metrics_free(struct metrics *m); /* NULL is fine */

/* The Prometheus text for the given numbers (pure, for tests). */
void metrics_render(struct buf *out, const struct sched *sch, size_t sessions, uint64_t received);

#endif

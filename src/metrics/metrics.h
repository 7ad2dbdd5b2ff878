/*
 * The counters behind /metrics (served by ternd, src/cmd/httpd.c) and their
 * Prometheus text. They are process-wide: the receive loops (threads when
 * workers > 1) add to atomics with relaxed order, the scheduler's figures
 * (results, destinations, latency) are touched by the main loop only, which
 * is also the loop that serves a scrape, so no lock is taken. This module
 * sits below smtp, sched and delivery, which count into it.
 */
#ifndef TERN_METRICS_H
#define TERN_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "util/buf.h"

/* Why a client's command got a 4xx or 5xx reply (the `reason` label). */
enum metrics_reject {
    METRICS_REJ_RELAY_DENIED,
    METRICS_REJ_RECIPIENT,
    METRICS_REJ_SIZE,
    METRICS_REJ_AUTH_FAILED,
    METRICS_REJ_AUTH_REQUIRED,
    METRICS_REJ_RATE,
    METRICS_REJ_PROTOCOL,
    METRICS_REJ_POLICY,
    METRICS_REJ_MILTER, /* a milter filter refused (any phase) */
    METRICS_REJ_DMARC,  /* dmarc_enforce refused a p=reject failure */
    METRICS_REJ_RESOURCES,
    METRICS_REJ_OTHER,
    METRICS_REJ_N
};

/* The fate of a recipient's delivery attempt (or of a message). */
enum metrics_result {
    METRICS_DELIVERED,
    METRICS_DEFERRED,
    METRICS_BOUNCED,
    METRICS_EXPIRED,
    METRICS_RESULT_N
};

enum metrics_tls { METRICS_TLS_NONE, METRICS_TLS_YES, METRICS_TLS_N };

#define METRICS_TOP_DESTS   10  /* destinations shown by name; the rest are "other" */
#define METRICS_TRACK_DESTS 256 /* destinations counted by name (memory bound) */
#define METRICS_DEST_MAX    300 /* a destination name, NUL included (DELIVERY_DEST_MAX) */
#define METRICS_LAT_BUCKETS 11  /* finite latency buckets (+Inf is the count) */
#define METRICS_OTHER_DEST  "other"

/* ---- counting: any thread ---- */

/* The reason of a reply that names none, from its code and RFC 3463
 * enhanced code (pure). */
enum metrics_reject metrics_reject_classify(int code, const char *esc);
void metrics_count_reject(enum metrics_reject why);
void metrics_count_auth_failure(void);
void metrics_count_conn_in(void);      /* an inbound session admitted */
void metrics_count_picked_up(void);    /* a local message committed (maildrop) */
void metrics_count_conn_out(void);     /* an outbound connection attempt */
void metrics_conn_out_open(int delta); /* +1 / -1: outbound connections now open */

/* ---- counting: the main loop only (the scheduler) ---- */

/* One recipient's result at dest (borrowed; truncated to METRICS_DEST_MAX).
 * latency_ms: accept to now, for METRICS_DELIVERED only. */
void metrics_count_rcpt(
    const char *dest, enum metrics_result r, enum metrics_tls tls, int64_t latency_ms);
/* A message: deferred (one attempt with a deferred recipient), or done
 * (every recipient final) as delivered and/or bounced. */
void metrics_count_msg(enum metrics_result r);

/* ---- rendering (pure, for tests) ---- */

struct metrics_dest {
    char name[METRICS_DEST_MAX];
    uint64_t n[METRICS_RESULT_N]; /* recipients by result */
};

struct metrics_snapshot {
    const char *version;
    uint64_t received;               /* messages committed to the spool */
    uint64_t msgs[METRICS_RESULT_N]; /* expired ones are also in BOUNCED */
    uint64_t rcpts[METRICS_RESULT_N];
    uint64_t deliveries[METRICS_RESULT_N][METRICS_TLS_N];
    uint64_t rejects[METRICS_REJ_N];
    uint64_t auth_failures;
    uint64_t conn_in, conn_out;           /* totals */
    uint64_t conn_in_open, conn_out_open; /* now */
    uint64_t queue_messages, queue_rcpts;
    uint64_t oldest_age_s;                    /* 0 when the queue is empty */
    uint64_t lat_bucket[METRICS_LAT_BUCKETS]; /* not cumulative */
    uint64_t lat_count, lat_sum_ms;
    const struct metrics_dest *dests; /* borrowed */
    size_t n_dests;
    struct metrics_dest other; /* destinations beyond the tracked ones */
};

/* The upper bounds of the latency buckets, in seconds. */
extern const unsigned metrics_lat_bounds[METRICS_LAT_BUCKETS];

/* Fill snap with the process's counters (the main loop: dests stays valid
 * until the loop runs again); the queue and open-session figures are the
 * caller's. */
void metrics_snapshot_take(struct metrics_snapshot *snap);
/* Keep the top destinations of in by volume (ties: by name) in top (room
 * for `room`), adding the rest into *other. Returns how many are in top. */
size_t metrics_dest_fold(const struct metrics_dest *in, size_t n, struct metrics_dest *top,
    size_t room, struct metrics_dest *other);
/* Append s as a label value escaped per the text format (\\, \" and \n). */
void metrics_label_escape(struct buf *out, const char *s);
/* The Prometheus text (version 0.0.4) of snap. */
void metrics_render(struct buf *out, const struct metrics_snapshot *snap);
/* Append the counters /status shows besides ternd's own, each followed by
 * a comma: "rejects" (an object by reason), "auth_failures",
 * "connections_in", "connections_out", "delivery_connections". */
void metrics_status_json(struct buf *out);
/* Zero every counter (tests). */
void metrics_reset(void);

#endif

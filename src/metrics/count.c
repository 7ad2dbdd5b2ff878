/*
 * The process's counters. What the receive loops count are relaxed atomics
 * (no order is needed between two counters, and a scrape may see one a
 * moment before another); what the scheduler counts is main-loop state read
 * by a scrape on that same loop. The destination table is bounded: past
 * METRICS_TRACK_DESTS names, results are counted as "other".
 */
#include "metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

const unsigned metrics_lat_bounds[METRICS_LAT_BUCKETS] = { 1, 5, 10, 30, 60, 300, 900, 3600, 14400,
    86400, 432000 };

static struct {
    atomic_uint_least64_t rejects[METRICS_REJ_N];
    atomic_uint_least64_t auth_failures, conn_in, conn_out, picked_up;
    atomic_int_least64_t conn_out_open;
} shared;

static struct {
    uint64_t msgs[METRICS_RESULT_N];
    uint64_t rcpts[METRICS_RESULT_N];
    uint64_t deliveries[METRICS_RESULT_N][METRICS_TLS_N];
    uint64_t lat_bucket[METRICS_LAT_BUCKETS];
    uint64_t lat_count, lat_sum_ms;
    struct metrics_dest dests[METRICS_TRACK_DESTS];
    size_t n_dests;
    struct metrics_dest other;
} loop;

static void
add(atomic_uint_least64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t
get(atomic_uint_least64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

enum metrics_reject
metrics_reject_classify(int code, const char *esc)
{
    /* RFC 3463 §3: the subject (X.Y.z) says what the trouble is about. */
    int subject = -1, detail = -1;
    if (esc != NULL && (esc[0] == '4' || esc[0] == '5') && esc[1] == '.') {
        const char *p = esc + 2;
        int *field = &subject;
        for (int part = 0; part < 2; part++, field = &detail) {
            int v = 0, digits = 0;
            for (; *p >= '0' && *p <= '9' && digits < 3; p++, digits++)
                v = v * 10 + (*p - '0');
            if (digits == 0)
                break;
            *field = v;
            if (*p != '.')
                break;
            p++;
        }
    }
    if (code == 535)
        return METRICS_REJ_AUTH_FAILED; /* RFC 4954 §6 */
    if (code == 530)
        return METRICS_REJ_AUTH_REQUIRED;
    if ((subject == 3 && detail == 4) || (subject == 2 && detail == 3) || code == 552)
        return METRICS_REJ_SIZE; /* X.3.4 too big for the system, X.2.3 for the mailbox */
    if (subject == 1)
        return METRICS_REJ_RECIPIENT; /* X.1.*: addressing */
    if (subject == 5 || subject == 6 || (code >= 500 && code <= 504))
        return METRICS_REJ_PROTOCOL; /* X.5.*: protocol, X.6.*: content form */
    if (subject == 7)
        return METRICS_REJ_POLICY;
    if (subject == 3 || subject == 4 || code == 452)
        return METRICS_REJ_RESOURCES; /* X.3.*: system, X.4.*: network */
    return METRICS_REJ_OTHER;
}

void
metrics_count_reject(enum metrics_reject why)
{
    add(&shared.rejects[why < METRICS_REJ_N ? why : METRICS_REJ_OTHER]);
}

void
metrics_count_auth_failure(void)
{
    add(&shared.auth_failures);
}

void
metrics_count_conn_in(void)
{
    add(&shared.conn_in);
}

void
metrics_count_picked_up(void)
{
    add(&shared.picked_up);
}

void
metrics_count_conn_out(void)
{
    add(&shared.conn_out);
}

void
metrics_conn_out_open(int delta)
{
    atomic_fetch_add_explicit(&shared.conn_out_open, delta, memory_order_relaxed);
}

static struct metrics_dest *
dest_find(const char *name)
{
    /* Linear over a bounded table: a few hundred short compares per result
     * is cheap next to an SMTP transaction. */
    for (size_t i = 0; i < loop.n_dests; i++) {
        if (strncmp(loop.dests[i].name, name, METRICS_DEST_MAX - 1) == 0)
            return &loop.dests[i];
    }
    if (loop.n_dests == METRICS_TRACK_DESTS)
        return &loop.other;
    struct metrics_dest *d = &loop.dests[loop.n_dests++];
    memset(d, 0, sizeof(*d));
    snprintf(d->name, sizeof(d->name), "%s", name);
    return d;
}

void
metrics_count_rcpt(
    const char *dest, enum metrics_result r, enum metrics_tls tls, int64_t latency_ms)
{
    if (r >= METRICS_RESULT_N || tls >= METRICS_TLS_N)
        return;
    loop.rcpts[r]++;
    loop.deliveries[r][tls]++;
    dest_find(dest != NULL && dest[0] != '\0' ? dest : METRICS_OTHER_DEST)->n[r]++;
    if (r != METRICS_DELIVERED)
        return;
    if (latency_ms < 0)
        latency_ms = 0; /* the wall clock stepped back */
    loop.lat_count++;
    loop.lat_sum_ms += (uint64_t)latency_ms;
    for (size_t i = 0; i < METRICS_LAT_BUCKETS; i++) {
        if ((uint64_t)latency_ms <= (uint64_t)metrics_lat_bounds[i] * 1000) {
            loop.lat_bucket[i]++;
            break;
        }
    }
}

void
metrics_count_msg(enum metrics_result r)
{
    if (r < METRICS_RESULT_N)
        loop.msgs[r]++;
}

void
metrics_snapshot_take(struct metrics_snapshot *snap)
{
    for (size_t i = 0; i < METRICS_REJ_N; i++)
        snap->rejects[i] = get(&shared.rejects[i]);
    snap->auth_failures = get(&shared.auth_failures);
    snap->conn_in = get(&shared.conn_in);
    snap->conn_out = get(&shared.conn_out);
    snap->received += get(&shared.picked_up);
    int64_t open = atomic_load_explicit(&shared.conn_out_open, memory_order_relaxed);
    snap->conn_out_open = open > 0 ? (uint64_t)open : 0;
    memcpy(snap->msgs, loop.msgs, sizeof(snap->msgs));
    memcpy(snap->rcpts, loop.rcpts, sizeof(snap->rcpts));
    memcpy(snap->deliveries, loop.deliveries, sizeof(snap->deliveries));
    memcpy(snap->lat_bucket, loop.lat_bucket, sizeof(snap->lat_bucket));
    snap->lat_count = loop.lat_count;
    snap->lat_sum_ms = loop.lat_sum_ms;
    snap->dests = loop.dests;
    snap->n_dests = loop.n_dests;
    snap->other = loop.other;
}

void
metrics_reset(void)
{
    for (size_t i = 0; i < METRICS_REJ_N; i++)
        atomic_store(&shared.rejects[i], 0);
    atomic_store(&shared.auth_failures, 0);
    atomic_store(&shared.conn_in, 0);
    atomic_store(&shared.conn_out, 0);
    atomic_store(&shared.picked_up, 0);
    atomic_store(&shared.conn_out_open, 0);
    memset(&loop, 0, sizeof(loop));
}

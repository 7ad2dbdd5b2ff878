/*
 * The Prometheus text exposition format (version 0.0.4): each family's
 * HELP and TYPE lines, then its samples; label values escaped. Label sets
 * are fixed enums except the destination, which is folded to a bounded
 * top list plus "other" so a scrape never grows with the traffic.
 */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const reject_names[METRICS_REJ_N] = { "relay_denied", "recipient", "size",
    "auth_failed", "auth_required", "rate", "protocol", "policy", "milter", "dmarc", "resources",
    "other" };
static const char *const result_names[METRICS_RESULT_N] = { "delivered", "deferred", "bounced",
    "expired" };
static const char *const tls_names[METRICS_TLS_N] = { "none", "tls" };

void
metrics_label_escape(struct buf *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            buf_append_str(out, "\\\\");
        else if (*s == '"')
            buf_append_str(out, "\\\"");
        else if (*s == '\n')
            buf_append_str(out, "\\n");
        else
            buf_append_char(out, *s);
    }
}

static void
family(struct buf *out, const char *name, const char *type, const char *help)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
single(struct buf *out, const char *name, const char *type, const char *help, uint64_t v)
{
    family(out, name, type, help);
    buf_printf(out, "%s %llu\n", name, (unsigned long long)v);
}

static uint64_t
volume(const struct metrics_dest *d)
{
    uint64_t v = 0;
    for (size_t i = 0; i < METRICS_RESULT_N; i++)
        v += d->n[i];
    return v;
}

static int
by_volume(const void *a, const void *b)
{
    const struct metrics_dest *x = *(const struct metrics_dest *const *)a;
    const struct metrics_dest *y = *(const struct metrics_dest *const *)b;
    uint64_t vx = volume(x), vy = volume(y);
    if (vx != vy)
        return vx > vy ? -1 : 1;
    return strcmp(x->name, y->name);
}

size_t
metrics_dest_fold(const struct metrics_dest *in, size_t n, struct metrics_dest *top, size_t room,
    struct metrics_dest *other)
{
    const struct metrics_dest **order = calloc(n ? n : 1, sizeof(*order));
    size_t kept = 0;
    if (order == NULL)
        abort();
    for (size_t i = 0; i < n; i++)
        order[i] = &in[i];
    qsort(order, n, sizeof(*order), by_volume);
    for (size_t i = 0; i < n; i++) {
        if (kept < room && strcmp(order[i]->name, METRICS_OTHER_DEST) != 0) {
            top[kept++] = *order[i];
            continue;
        }
        for (size_t r = 0; r < METRICS_RESULT_N; r++)
            other->n[r] += order[i]->n[r];
    }
    free(order);
    return kept;
}

static void
dest_samples(struct buf *out, const struct metrics_dest *d)
{
    for (size_t r = 0; r < METRICS_RESULT_N; r++) {
        buf_append_str(out, "tern_destination_recipients_total{destination=\"");
        metrics_label_escape(out, d->name);
        buf_printf(out, "\",result=\"%s\"} %llu\n", result_names[r], (unsigned long long)d->n[r]);
    }
}

static void
render_dests(struct buf *out, const struct metrics_snapshot *snap)
{
    struct metrics_dest *top = calloc(METRICS_TOP_DESTS, sizeof(*top));
    struct metrics_dest other = snap->other;
    size_t kept;
    if (top == NULL)
        abort();
    kept = metrics_dest_fold(snap->dests, snap->n_dests, top, METRICS_TOP_DESTS, &other);
    snprintf(other.name, sizeof(other.name), "%s", METRICS_OTHER_DEST);
    family(out, "tern_destination_recipients_total", "counter",
        "Recipient delivery results per destination (the busiest by name, the rest as \"other\").");
    for (size_t i = 0; i < kept; i++)
        dest_samples(out, &top[i]);
    dest_samples(out, &other);
    free(top);
}

static void
render_latency(struct buf *out, const struct metrics_snapshot *snap)
{
    uint64_t cum = 0;
    family(out, "tern_delivery_latency_seconds", "histogram",
        "Time from acceptance to delivery, per delivered recipient.");
    for (size_t i = 0; i < METRICS_LAT_BUCKETS; i++) {
        cum += snap->lat_bucket[i];
        buf_printf(out, "tern_delivery_latency_seconds_bucket{le=\"%u\"} %llu\n",
            metrics_lat_bounds[i], (unsigned long long)cum);
    }
    buf_printf(out, "tern_delivery_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
        (unsigned long long)snap->lat_count);
    buf_printf(out, "tern_delivery_latency_seconds_sum %llu.%03llu\n",
        (unsigned long long)(snap->lat_sum_ms / 1000),
        (unsigned long long)(snap->lat_sum_ms % 1000));
    buf_printf(
        out, "tern_delivery_latency_seconds_count %llu\n", (unsigned long long)snap->lat_count);
}

static void
render_messages(struct buf *out, const struct metrics_snapshot *snap)
{
    single(out, "tern_messages_received_total", "counter",
        "Messages committed to the spool (SMTP and local pickup).", snap->received);
    single(out, "tern_messages_delivered_total", "counter",
        "Messages done with every recipient, at least one of them delivered.",
        snap->msgs[METRICS_DELIVERED]);
    single(out, "tern_messages_deferred_total", "counter",
        "Delivery attempts of a message that left at least one recipient deferred.",
        snap->msgs[METRICS_DEFERRED]);
    single(out, "tern_messages_bounced_total", "counter",
        "Messages done with every recipient, at least one of them failed or expired.",
        snap->msgs[METRICS_BOUNCED]);
    single(out, "tern_messages_expired_total", "counter",
        "Messages done with at least one recipient given up after max_queue_lifetime.",
        snap->msgs[METRICS_EXPIRED]);
}

static void
render_recipients(struct buf *out, const struct metrics_snapshot *snap)
{
    static const char *const names[METRICS_RESULT_N] = { "tern_recipients_delivered_total",
        "tern_recipients_deferred_total", "tern_recipients_bounced_total",
        "tern_recipients_expired_total" };
    static const char *const helps[METRICS_RESULT_N] = {
        "Recipients delivered to the next hop.",
        "Recipient delivery attempts that failed temporarily.",
        "Recipients that failed permanently.",
        "Recipients given up after max_queue_lifetime.",
    };
    for (size_t r = 0; r < METRICS_RESULT_N; r++)
        single(out, names[r], "counter", helps[r], snap->rcpts[r]);
    family(out, "tern_deliveries_total", "counter",
        "Recipient delivery results by result and TLS state of the connection.");
    for (size_t r = 0; r < METRICS_RESULT_N; r++) {
        for (size_t t = 0; t < METRICS_TLS_N; t++)
            buf_printf(out, "tern_deliveries_total{result=\"%s\",tls=\"%s\"} %llu\n",
                result_names[r], tls_names[t], (unsigned long long)snap->deliveries[r][t]);
    }
}

static void
render_smtp(struct buf *out, const struct metrics_snapshot *snap)
{
    family(out, "tern_smtp_rejects_total", "counter",
        "4xx and 5xx replies to SMTP clients (and refused connections), by reason.");
    for (size_t i = 0; i < METRICS_REJ_N; i++)
        buf_printf(out, "tern_smtp_rejects_total{reason=\"%s\"} %llu\n", reject_names[i],
            (unsigned long long)snap->rejects[i]);
    single(out, "tern_smtp_auth_failures_total", "counter", "Failed AUTH attempts.",
        snap->auth_failures);
    single(out, "tern_smtp_connections_total", "counter", "Inbound SMTP sessions admitted.",
        snap->conn_in);
    single(out, "tern_smtp_sessions", "gauge", "Open inbound SMTP sessions.", snap->conn_in_open);
    single(out, "tern_delivery_connections_total", "counter",
        "Outbound connection attempts (TCP connects to a next hop).", snap->conn_out);
    single(out, "tern_delivery_connections", "gauge", "Open outbound delivery connections.",
        snap->conn_out_open);
}

void
metrics_status_json(struct buf *out)
{
    struct metrics_snapshot snap;
    memset(&snap, 0, sizeof(snap));
    metrics_snapshot_take(&snap);
    buf_append_str(out, "\"rejects\":{");
    for (size_t i = 0; i < METRICS_REJ_N; i++)
        buf_printf(out, "%s\"%s\":%llu", i ? "," : "", reject_names[i],
            (unsigned long long)snap.rejects[i]);
    buf_printf(out,
        "},\"auth_failures\":%llu,\"connections_in\":%llu,\"connections_out\":%llu,"
        "\"delivery_connections\":%llu,",
        (unsigned long long)snap.auth_failures, (unsigned long long)snap.conn_in,
        (unsigned long long)snap.conn_out, (unsigned long long)snap.conn_out_open);
}

void
metrics_render(struct buf *out, const struct metrics_snapshot *snap)
{
    family(out, "tern_build_info", "gauge", "The running version of tern (always 1).");
    buf_append_str(out, "tern_build_info{version=\"");
    metrics_label_escape(out, snap->version ? snap->version : "");
    buf_append_str(out, "\"} 1\n");
    render_messages(out, snap);
    render_recipients(out, snap);
    render_dests(out, snap);
    render_latency(out, snap);
    render_smtp(out, snap);
    single(out, "tern_queue_messages", "gauge", "Messages in the queue.", snap->queue_messages);
    single(out, "tern_queue_recipients", "gauge", "Recipients waiting in the queue.",
        snap->queue_rcpts);
    single(out, "tern_queue_oldest_message_age_seconds", "gauge",
        "Age of the oldest message in the queue (0 when empty).", snap->oldest_age_s);
}

/*
 * The dashboard's page and read-only API. The page is static bytes made
 * into C at build time (dashboard_assets.h); the API answers JSON built
 * from the counters, a ring of per-minute samples kept here, the
 * scheduler's queue summary (a walk in slices, its last result cached) and
 * the history journal (read with a time budget, the result cached for a
 * moment so that several open pages cost one read). Every answer is capped
 * in entries and bytes.
 */
#include "cmd/dashboard.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dashboard_assets.h" /* generated from src/cmd/dashboard */
#include "history/history.h"
#include "sched/sched.h"
#include "smtp/smtp.h"
#include "spool/spool.h"
#include "util/log.h"
#include "util/util.h"

#define RING_MINUTES  60           /* throughput kept, one sample a minute */
#define RATE_SAMPLES  13           /* 5 s samples: one minute back for rates */
#define SAMPLE_MS     5000         /* how often the counters are sampled */
#define DESTS_MAX     200          /* destinations in one answer */
#define DESTS_BYTES   (256 * 1024) /* bytes of one destinations answer */
#define DESTS_FRESH   1000         /* ms a summary is served before a new walk */
#define EVENTS_MAX    50           /* recent journal events in one answer */
#define REASONS_MAX   32           /* distinct deferral reasons counted */
#define REASONS_SHOWN 10
#define REASON_KEY    32               /* bytes of a reason's key (code and enhanced code) */
#define SAMPLE_MAX    300              /* bytes of a sample reply */
#define JOURNAL_SPAN  (60 * 60 * 1000) /* ms of journal behind events and reasons */
#define JOURNAL_FRESH 2000             /* ms a journal reading is reused */
#define SCAN_BUDGET   150              /* ms one journal reading may take */
#define SEARCH_SHARE  250 /* ms of searching per second at most (the loop also delivers) */
#define MSG_EVENTS    200 /* events of one message view */
#define MSG_IDS       20  /* messages one search shows */
#define MSG_SPAN      (7LL * 24 * 60 * 60 * 1000)
#define QUERY_MAX     320          /* bytes of a search (an address or a Message-ID) */
#define VIEWS_MAX     8            /* message views waiting for the scheduler at once */
#define VIEW_BYTES    (512 * 1024) /* bytes of the live part of one view */

struct sample {
    int64_t t_s;
    uint64_t in, out;
};

struct reason {
    char key[REASON_KEY];
    char sample[SAMPLE_MAX];
    char dest[METRICS_DEST_MAX];
    uint64_t n;
};

/* A message view waiting for the scheduler's live state of its messages
 * (a walk of those ids only); answered when the walk ends. */
struct msg_view {
    struct dash *d;
    struct msg_view *next; /* in d->views */
    struct evhttp_request *req;
    struct sched_walk *walk;
    struct buf head; /* the answer up to its "queued" member */
    struct buf live; /* the walk's lines, as the items of a JSON array */
    size_t n_live;
    bool cut;
};

struct dash {
    struct sched *sched;
    struct smtp_server *smtp;
    char *spool_dir; /* owned: a reload replaces the config it came from */
    struct event *tick;
    struct sample minutes[RING_MINUTES]; /* by minute modulo 60 */
    struct sample rates[RATE_SAMPLES];   /* by 5 s step modulo 13 */
    /* the queue summary */
    struct sched_walk *walk;
    struct buf dests_new; /* lines of the running walk */
    struct buf dests;     /* the last complete answer (a JSON array) */
    size_t dests_lines;
    int64_t dests_ms;
    /* the journal's recent view */
    struct buf events[EVENTS_MAX]; /* ring of trace objects */
    size_t n_events, ev_next;
    struct reason reasons[REASONS_MAX];
    size_t n_reasons;
    bool journal_cut;
    int64_t journal_ms;
    /* message searches: loop time spent in the second that began at
     * search_window (monotonic ms) */
    int64_t search_window, search_spent;
    struct msg_view *views; /* waiting for the scheduler */
    size_t n_views;
    /* SHA-256 of admin_token_file's token; has_token false: read-only */
    unsigned char token_hash[32];
    bool has_token;
};

void
dash_snapshot(struct dash *d, struct metrics_snapshot *snap)
{
    struct sched_stats st;
    uint32_t oldest = sched_oldest_arrival_s(d->sched);
    int64_t now_s = tern_now_ms() / 1000;
    memset(snap, 0, sizeof(*snap));
    sched_get_stats(d->sched, &st);
    snap->version = TERN_VERSION;
    snap->received = smtp_server_received(d->smtp);
    snap->conn_in_open = smtp_server_sessions(d->smtp);
    snap->queue_messages = st.queue_messages;
    snap->queue_rcpts = st.queue_rcpts;
    snap->oldest_age_s = oldest != 0 && now_s > (int64_t)oldest ? (uint64_t)(now_s - oldest) : 0;
    metrics_snapshot_take(snap);
}

/* Counters only: the sample needs no walk of the queue index. */
static struct sample
sample_now(struct dash *d)
{
    struct metrics_snapshot snap;
    struct sample s;
    memset(&snap, 0, sizeof(snap));
    metrics_snapshot_take(&snap);
    s.t_s = tern_now_ms() / 1000;
    s.in = smtp_server_received(d->smtp);
    s.out = snap.msgs[METRICS_DELIVERED];
    return s;
}

static void
sample_take(struct dash *d)
{
    struct sample s = sample_now(d);
    int64_t minute = s.t_s / 60, step = s.t_s / 5;
    struct sample *m = &d->minutes[minute % RING_MINUTES];
    struct sample *r = &d->rates[step % RATE_SAMPLES];
    /* The first sample of a minute stands for its start. */
    if (m->t_s / 60 != minute || m->t_s == 0)
        *m = s;
    if (r->t_s / 5 != step || r->t_s == 0)
        *r = s;
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sample_take(arg);
}

/* ---- answers ---- */

static void
reply_bytes(struct evhttp_request *req, int code, const char *ctype, const void *p, size_t n)
{
    struct evbuffer *body = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evbuffer_add(body, p, n);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(h, "Cache-Control", "no-store");
    /* The page loads only its own script and style and talks only to its
     * own origin: nothing inline, nothing from elsewhere, no framing. */
    evhttp_add_header(h, "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
    evhttp_add_header(h, "Referrer-Policy", "same-origin");
    evhttp_send_reply(req, code, code == HTTP_OK ? "OK" : "Error", body);
    evbuffer_free(body);
}

static void
reply_json(struct evhttp_request *req, struct buf *b)
{
    buf_append_char(b, '\n');
    reply_bytes(req, HTTP_OK, "application/json", b->data, b->len);
}

static void
reply_error(struct evhttp_request *req, int code, const char *why)
{
    struct buf b = BUF_INIT;
    buf_append_str(&b, "{\"error\":");
    buf_append_json_str(&b, why);
    buf_append_str(&b, "}\n");
    reply_bytes(req, code, "application/json", b.data, b.len);
    buf_fini(&b);
}

/* GET and HEAD only; no query string unless the endpoint takes one. */
static bool
request_ok(struct evhttp_request *req, bool query)
{
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        reply_error(req, 405, "method not allowed");
        return false;
    }
    if (!query && u != NULL && evhttp_uri_get_query(u) != NULL) {
        reply_error(req, 400, "no query expected");
        return false;
    }
    return true;
}

static double
rate_of(uint64_t now, uint64_t then, int64_t dt_s)
{
    return dt_s > 0 && now >= then ? (double)(now - then) / (double)dt_s : 0.0;
}

static void
summary_cb(struct evhttp_request *req, void *arg)
{
    struct dash *d = arg;
    struct metrics_snapshot snap;
    struct buf b = BUF_INIT;
    struct sample now, old;
    if (!request_ok(req, false))
        return;
    dash_snapshot(d, &snap);
    now = sample_now(d);
    /* The oldest 5 s sample still within the last minute. */
    old = now;
    for (size_t i = 0; i < RATE_SAMPLES; i++) {
        const struct sample *r = &d->rates[i];
        if (r->t_s != 0 && r->t_s >= now.t_s - 60 && r->t_s < old.t_s)
            old = *r;
    }
    buf_printf(&b,
        "{\"version\":\"%s\",\"now\":%lld,\"tern_messages_received_total\":%llu,"
        "\"tern_messages_delivered_total\":%llu,\"tern_messages_deferred_total\":%llu,"
        "\"tern_messages_bounced_total\":%llu,\"tern_messages_expired_total\":%llu,"
        "\"tern_queue_messages\":%llu,\"tern_queue_recipients\":%llu,"
        "\"tern_queue_oldest_message_age_seconds\":%llu,\"tern_smtp_sessions\":%llu,\"actions\":%s,"
        "\"rates\":{\"received_per_s\":%.3f,\"delivered_per_s\":%.3f,\"window_s\":%lld}}",
        TERN_VERSION, (long long)now.t_s, (unsigned long long)snap.received,
        (unsigned long long)snap.msgs[METRICS_DELIVERED],
        (unsigned long long)snap.msgs[METRICS_DEFERRED],
        (unsigned long long)snap.msgs[METRICS_BOUNCED],
        (unsigned long long)snap.msgs[METRICS_EXPIRED], (unsigned long long)snap.queue_messages,
        (unsigned long long)snap.queue_rcpts, (unsigned long long)snap.oldest_age_s,
        (unsigned long long)snap.conn_in_open, d->has_token ? "true" : "false",
        rate_of(now.in, old.in, now.t_s - old.t_s), rate_of(now.out, old.out, now.t_s - old.t_s),
        (long long)(now.t_s - old.t_s));
    reply_json(req, &b);
    buf_fini(&b);
}

/* One minute's counts: its first sample to the next minute's (or now). */
static void
minute_write(struct dash *d, struct buf *b, int64_t minute, const struct sample *now)
{
    const struct sample *s = &d->minutes[minute % RING_MINUTES];
    const struct sample *e = &d->minutes[(minute + 1) % RING_MINUTES];
    const struct sample *end = NULL;
    uint64_t in = 0, out = 0;
    if (e->t_s != 0 && e->t_s / 60 == minute + 1)
        end = e;
    else if (minute == now->t_s / 60)
        end = now;
    if (s->t_s != 0 && s->t_s / 60 == minute && end != NULL) {
        in = end->in >= s->in ? end->in - s->in : 0;
        out = end->out >= s->out ? end->out - s->out : 0;
    }
    buf_printf(b, "{\"t\":%lld,\"in\":%llu,\"out\":%llu}", (long long)(minute * 60),
        (unsigned long long)in, (unsigned long long)out);
}

static void
throughput_cb(struct evhttp_request *req, void *arg)
{
    struct dash *d = arg;
    struct buf b = BUF_INIT;
    struct sample now;
    int64_t last;
    if (!request_ok(req, false))
        return;
    sample_take(d);
    now = sample_now(d);
    last = now.t_s / 60;
    buf_printf(&b, "{\"now\":%lld,\"minutes\":[", (long long)now.t_s);
    for (int64_t m = last - (RING_MINUTES - 1); m <= last; m++) {
        if (m != last - (RING_MINUTES - 1))
            buf_append_char(&b, ',');
        minute_write(d, &b, m, &now);
    }
    buf_append_str(&b, "]}");
    reply_json(req, &b);
    buf_fini(&b);
}

/* ---- destinations: the scheduler's SUMMARY walk, cached ---- */

static void
dests_line(struct dash *d, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (d->dests_lines >= DESTS_MAX || d->dests_new.len + n + 2 > DESTS_BYTES)
        return;
    if (d->dests_lines > 0)
        buf_append_char(&d->dests_new, ',');
    buf_append(&d->dests_new, p, n);
    d->dests_lines++;
}

static void
dests_lines(struct dash *d, const char *data, size_t len)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t n = nl != NULL ? (size_t)(nl - data) : len;
        dests_line(d, data, n);
        data += n;
        len -= n;
        if (nl != NULL) {
            data++;
            len--;
        }
    }
}

static void
walk_fn(void *arg, const char *data, size_t len, enum sched_walk_ev ev)
{
    struct dash *d = arg;
    if (ev == SCHED_WALK_ABORTED) {
        d->walk = NULL;
        return;
    }
    dests_lines(d, data, len);
    if (ev == SCHED_WALK_MORE) {
        sched_walk_next(d->walk);
        return;
    }
    d->walk = NULL;
    buf_reset(&d->dests);
    buf_printf(&d->dests, "{\"now\":%lld,\"truncated\":%s,\"destinations\":[",
        (long long)(tern_now_ms() / 1000), d->dests_lines >= DESTS_MAX ? "true" : "false");
    buf_append(&d->dests, d->dests_new.data, d->dests_new.len);
    buf_append_str(&d->dests, "]}");
    d->dests_ms = tern_now_ms();
}

static void
dests_refresh(struct dash *d)
{
    if (d->walk != NULL || (d->dests.len > 0 && tern_now_ms() - d->dests_ms < DESTS_FRESH))
        return;
    buf_reset(&d->dests_new);
    d->dests_lines = 0;
    d->walk = sched_walk_start(d->sched, true, walk_fn, d);
}

static void
destinations_cb(struct evhttp_request *req, void *arg)
{
    struct dash *d = arg;
    struct buf b = BUF_INIT;
    if (!request_ok(req, false))
        return;
    dests_refresh(d);
    /* The last complete summary: a walk in slices cannot finish inside a
     * request, and the page asks again in two seconds. */
    if (d->dests.len > 0)
        buf_append(&b, d->dests.data, d->dests.len);
    else
        buf_printf(&b, "{\"now\":%lld,\"pending\":true,\"destinations\":[]}",
            (long long)(tern_now_ms() / 1000));
    reply_json(req, &b);
    buf_fini(&b);
}

/* ---- the journal: recent events, deferral reasons, one message ---- */

struct scan {
    struct dash *d;
    int64_t deadline_ms;
    size_t seen;
    bool cut;
};

/* A reply's reason: its code and enhanced code ("451 4.7.1"), or its
 * first word. */
static void
reason_key(const char *reply, char *key, size_t cap)
{
    size_t n = 0, words = 0;
    while (reply[n] != '\0' && n + 1 < cap) {
        if (reply[n] == ' ' && ++words == 2)
            break;
        n++;
    }
    memcpy(key, reply, n);
    key[n] = '\0';
}

static void
reason_add(struct dash *d, const struct history_rec *r)
{
    char key[REASON_KEY];
    struct reason *re = NULL;
    reason_key(r->reply, key, sizeof(key));
    for (size_t i = 0; i < d->n_reasons && re == NULL; i++)
        if (strcmp(d->reasons[i].key, key) == 0)
            re = &d->reasons[i];
    if (re == NULL) {
        /* Beyond the table's room a new reason is not counted: the table
         * shows the most frequent ones, which are seen early and often. */
        if (d->n_reasons == REASONS_MAX)
            return;
        re = &d->reasons[d->n_reasons++];
        memset(re, 0, sizeof(*re));
        snprintf(re->key, sizeof(re->key), "%s", key);
    }
    re->n++;
    /* The latest reply is the sample. */
    snprintf(re->sample, sizeof(re->sample), "%s", r->reply);
    snprintf(re->dest, sizeof(re->dest), "%s", r->relay != NULL ? r->relay : "");
}

static bool
scan_over(struct scan *sc)
{
    if (++sc->seen % 256 == 0 && tern_now_ms() > sc->deadline_ms)
        sc->cut = true;
    return sc->cut;
}

static void
journal_warn(const struct buf *err)
{
    struct logline l;
    log_begin(&l, LOG_WARN, NULL, "http", "journal unreadable");
    log_strn(&l, "error", err->data != NULL ? err->data : "", err->len);
    log_end(&l);
}

static int
recent_rec(const struct history_rec *r, void *arg)
{
    struct scan *sc = arg;
    struct dash *d = sc->d;
    struct buf *slot = &d->events[d->ev_next];
    buf_reset(slot);
    history_rec_json(r, slot);
    d->ev_next = (d->ev_next + 1) % EVENTS_MAX;
    if (d->n_events < EVENTS_MAX)
        d->n_events++;
    if (strcmp(r->event, "deferred") == 0 && r->reply != NULL)
        reason_add(d, r);
    return scan_over(sc) ? 1 : 0;
}

static int
cmp_reason(const void *a, const void *b)
{
    const struct reason *x = a, *y = b;
    return x->n < y->n ? 1 : x->n > y->n ? -1 : strcmp(x->key, y->key);
}

/* Read the last hour of the journal at most once per JOURNAL_FRESH and for
 * at most SCAN_BUDGET ms (a busy journal is cut short: "truncated"). */
static void
journal_refresh(struct dash *d)
{
    int64_t now = tern_now_ms();
    struct scan sc = { .d = d, .deadline_ms = now + SCAN_BUDGET };
    struct buf err = BUF_INIT;
    if (d->journal_ms != 0 && now - d->journal_ms < JOURNAL_FRESH)
        return;
    d->n_events = 0;
    d->ev_next = 0;
    d->n_reasons = 0;
    if (history_scan(d->spool_dir, now - JOURNAL_SPAN, recent_rec, &sc, NULL, &err) < 0)
        journal_warn(&err);
    buf_fini(&err);
    qsort(d->reasons, d->n_reasons, sizeof(d->reasons[0]), cmp_reason);
    d->journal_cut = sc.cut;
    d->journal_ms = tern_now_ms();
}

static void
events_cb(struct evhttp_request *req, void *arg)
{
    struct dash *d = arg;
    struct buf b = BUF_INIT;
    if (!request_ok(req, false))
        return;
    journal_refresh(d);
    buf_printf(&b, "{\"truncated\":%s,\"events\":[", d->journal_cut ? "true" : "false");
    /* Newest first. */
    for (size_t i = 0; i < d->n_events; i++) {
        const struct buf *e = &d->events[(d->ev_next + EVENTS_MAX - 1 - i) % EVENTS_MAX];
        size_t n = e->len > 0 && e->data[e->len - 1] == '\n' ? e->len - 1 : e->len;
        if (i > 0)
            buf_append_char(&b, ',');
        buf_append(&b, e->data, n);
    }
    buf_append_str(&b, "]}");
    reply_json(req, &b);
    buf_fini(&b);
}

static void
deferrals_cb(struct evhttp_request *req, void *arg)
{
    struct dash *d = arg;
    struct buf b = BUF_INIT;
    if (!request_ok(req, false))
        return;
    journal_refresh(d);
    buf_printf(&b, "{\"truncated\":%s,\"window_s\":%d,\"reasons\":[",
        d->journal_cut ? "true" : "false", JOURNAL_SPAN / 1000);
    for (size_t i = 0; i < d->n_reasons && i < REASONS_SHOWN; i++) {
        const struct reason *re = &d->reasons[i];
        buf_append_str(&b, i > 0 ? ",{\"reason\":" : "{\"reason\":");
        buf_append_json_str(&b, re->key);
        buf_printf(&b, ",\"count\":%llu,\"sample\":", (unsigned long long)re->n);
        buf_append_json_str(&b, re->sample);
        buf_append_str(&b, ",\"relay\":");
        buf_append_json_str(&b, re->dest);
        buf_append_char(&b, '}');
    }
    buf_append_str(&b, "]}");
    reply_json(req, &b);
    buf_fini(&b);
}

struct msg_scan {
    struct scan sc;
    struct history_query q;
    char ids[MSG_IDS][17]; /* the messages the query names */
    size_t n_ids;
    struct buf out;
    size_t n;
};

static bool
msg_has(const struct msg_scan *ms, const char *id)
{
    for (size_t i = 0; i < ms->n_ids; i++)
        if (strcmp(ms->ids[i], id) == 0)
            return true;
    return false;
}

/* The first pass, as trace does: which messages does the query name (an
 * address or a Message-ID appears on some of a message's events only)? */
static int
msg_find(const struct history_rec *r, void *arg)
{
    struct msg_scan *ms = arg;
    if (history_query_match(&ms->q, r) && !msg_has(ms, r->id)) {
        if (ms->n_ids == MSG_IDS) {
            ms->sc.cut = true;
            return 1;
        }
        snprintf(ms->ids[ms->n_ids++], sizeof(ms->ids[0]), "%s", r->id);
    }
    return scan_over(&ms->sc) ? 1 : 0;
}

/* The second: every event of those messages. */
static int
msg_rec(const struct history_rec *r, void *arg)
{
    struct msg_scan *ms = arg;
    if (msg_has(ms, r->id)) {
        if (ms->n == MSG_EVENTS) {
            ms->sc.cut = true;
            return 1;
        }
        if (ms->n++ > 0)
            buf_append_char(&ms->out, ',');
        history_rec_json(r, &ms->out);
        if (ms->out.len > 0 && ms->out.data[ms->out.len - 1] == '\n')
            ms->out.len--;
    }
    return scan_over(&ms->sc) ? 1 : 0;
}

static void
view_unlink(struct msg_view *v)
{
    for (struct msg_view **pp = &v->d->views; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == v) {
            *pp = v->next;
            v->d->n_views--;
            break;
        }
    }
}

/* Answer the view (without the live part when live is false) and free it.
 * A client that left meanwhile is no matter: libevent frees a request
 * whose connection is gone when it is answered. */
static void
view_answer(struct msg_view *v, bool live)
{
    struct buf b = BUF_INIT;
    view_unlink(v);
    buf_append(&b, v->head.data, v->head.len);
    if (live) {
        buf_printf(&b, ",\"queued_truncated\":%s,\"queued\":[", v->cut ? "true" : "false");
        buf_append(&b, v->live.data, v->live.len);
        buf_append_str(&b, "]}");
    } else {
        buf_append_str(&b, ",\"queued\":null}");
    }
    reply_json(v->req, &b);
    buf_fini(&b);
    buf_fini(&v->head);
    buf_fini(&v->live);
    free(v);
}

/* The scheduler's LIST lines of the view's messages. */
static void
view_walk_fn(void *arg, const char *data, size_t len, enum sched_walk_ev ev)
{
    struct msg_view *v = arg;
    if (ev == SCHED_WALK_ABORTED) {
        v->walk = NULL;
        view_answer(v, false);
        return;
    }
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t n = nl != NULL ? (size_t)(nl - data) : len;
        if (n > 0 && v->live.len + n + 1 <= VIEW_BYTES) {
            if (v->n_live++ > 0)
                buf_append_char(&v->live, ',');
            buf_append(&v->live, data, n);
        } else if (n > 0) {
            v->cut = true;
        }
        data += n;
        len -= n;
        if (nl != NULL) {
            data++;
            len--;
        }
    }
    if (ev == SCHED_WALK_MORE) {
        sched_walk_next(v->walk);
        return;
    }
    v->walk = NULL;
    view_answer(v, true);
}

/* Answer with the journal's events (in b, the answer so far) and, for the
 * messages still queued, their live state from the scheduler: recipients,
 * attempts, next attempt (as `ternctl queue show`). */
static void
message_reply(struct dash *d, struct evhttp_request *req, struct buf *b, const char *q,
    const struct msg_scan *ms)
{
    const char *ids[MSG_IDS + 1];
    size_t n = 0;
    struct msg_view *v;
    for (size_t i = 0; i < ms->n_ids; i++)
        ids[n++] = ms->ids[i];
    /* A queue id asked for by name: queued, even if the journal is off. */
    if (spool_qid_valid(q) && !msg_has(ms, q))
        ids[n++] = q;
    if (n == 0 || d->sched == NULL || d->n_views >= VIEWS_MAX) {
        buf_append_str(b, ",\"queued\":null}");
        reply_json(req, b);
        return;
    }
    v = xcalloc(1, sizeof(*v));
    v->d = d;
    v->req = req;
    v->head = *b;
    buf_init(b);
    buf_init(&v->live);
    v->next = d->views;
    d->views = v;
    d->n_views++;
    v->walk = sched_walk_ids(d->sched, ids, n, view_walk_fn, v);
}

static void
message_cb(struct evhttp_request *req, void *arg)
{
    struct dash *d = arg;
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *query = u != NULL ? evhttp_uri_get_query(u) : NULL;
    struct evkeyvalq params = { 0 };
    struct msg_scan ms = { .sc = { .d = d } };
    struct buf b = BUF_INIT, err = BUF_INIT;
    int64_t since, t0;
    const char *q;
    if (!request_ok(req, true))
        return;
    if (query == NULL || strlen(query) > 3 * QUERY_MAX ||
        evhttp_parse_query_str(query, &params) != 0) {
        evhttp_clear_headers(&params);
        reply_error(req, 400, "expected ?q=QUEUE-ID, Message-ID or address");
        return;
    }
    q = evhttp_find_header(&params, "q");
    if (q == NULL || strlen(q) > QUERY_MAX || history_query_init(&ms.q, q) < 0) {
        evhttp_clear_headers(&params);
        reply_error(req, 400, "expected ?q=QUEUE-ID, Message-ID or address");
        return;
    }
    /* A search reads the journal on this loop, which also delivers: the
     * time all searches take is bounded per second, however many a client
     * sends (the answer says when to come back). */
    t0 = tern_mono_ms();
    if (t0 - d->search_window >= 1000) {
        d->search_window = t0;
        d->search_spent = 0;
    }
    if (d->search_spent >= SEARCH_SHARE) {
        evhttp_clear_headers(&params);
        history_query_fini(&ms.q);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        reply_error(req, 429, "searching too much: try again in a second");
        return;
    }
    ms.sc.deadline_ms = tern_now_ms() + SCAN_BUDGET;
    since = tern_now_ms() - MSG_SPAN;
    if (history_scan(d->spool_dir, since, msg_find, &ms, NULL, &err) < 0)
        journal_warn(&err);
    else if (ms.n_ids > 0 && history_scan(d->spool_dir, since, msg_rec, &ms, NULL, &err) < 0)
        journal_warn(&err);
    d->search_spent += tern_mono_ms() - t0;
    buf_append_str(&b, "{\"query\":");
    buf_append_json_str(&b, ms.q.text);
    buf_printf(&b, ",\"truncated\":%s,\"events\":[", ms.sc.cut ? "true" : "false");
    buf_append(&b, ms.out.data, ms.out.len);
    buf_append_char(&b, ']');
    message_reply(d, req, &b, q, &ms);
    buf_fini(&b);
    buf_fini(&err);
    buf_fini(&ms.out);
    history_query_fini(&ms.q);
    evhttp_clear_headers(&params);
}

/* ---- steering: POST /api/queue/ACTION?id=QID, with the token ---- */

static void
token_hash(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 32;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1 || len != 32)
        tern_panic("SHA-256 failed");
}

void
dash_set_token(struct dash *d, const char *token, size_t len)
{
    d->has_token = token != NULL && len > 0;
    memset(d->token_hash, 0, sizeof(d->token_hash));
    if (d->has_token)
        token_hash(token, len, d->token_hash);
}

/* A browser names the page that sent a request in Origin (or, older ones,
 * Referer); only the dashboard itself, served from this Host, may act, so
 * another site's page cannot make a visitor's browser act for it. */
static bool
same_origin(struct evhttp_request *req)
{
    const struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *host = evhttp_find_header(h, "Host");
    const char *origin = evhttp_find_header(h, "Origin");
    const char *referer = evhttp_find_header(h, "Referer");
    char want[300];
    int n;
    if (host == NULL)
        return false;
    n = snprintf(want, sizeof(want), "http://%s", host);
    if (n < 0 || (size_t)n >= sizeof(want))
        return false;
    if (origin != NULL)
        return strcmp(origin, want) == 0;
    return referer != NULL && strncmp(referer, want, (size_t)n) == 0 && referer[n] == '/';
}

/* Authorization: Bearer TOKEN, compared as SHA-256 digests with
 * CRYPTO_memcmp: the time taken says nothing of the token. */
static bool
token_ok(struct dash *d, struct evhttp_request *req)
{
    const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    unsigned char got[32];
    bool ok;
    if (!d->has_token || a == NULL || strncasecmp(a, "Bearer ", 7) != 0)
        return false;
    token_hash(a + 7, strlen(a + 7), got);
    ok = CRYPTO_memcmp(got, d->token_hash, sizeof(got)) == 0;
    explicit_bzero(got, sizeof(got));
    return ok;
}

enum dash_act { ACT_HOLD, ACT_RELEASE, ACT_DELETE, ACT_FLUSH };

static int
act_do(struct dash *d, enum dash_act act, const char *qid)
{
    switch (act) {
    case ACT_HOLD:
        return sched_hold(d->sched, qid, true);
    case ACT_RELEASE:
        return sched_hold(d->sched, qid, false);
    case ACT_DELETE:
        return sched_delete(d->sched, qid);
    case ACT_FLUSH:
        if (qid == NULL) {
            sched_flush(d->sched);
            return 0;
        }
        return sched_flush_msg(d->sched, qid);
    }
    return -1;
}

static void
act_log(struct evhttp_request *req, const char *what, const char *qid)
{
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    char *addr = NULL;
    ev_uint16_t port = 0;
    struct logline l;
    if (c != NULL)
        evhttp_connection_get_peer(c, &addr, &port);
    log_begin(&l, LOG_INFO, qid, "http", "dashboard_action");
    log_str(&l, "action", what);
    log_str(&l, "client", addr != NULL ? addr : "-");
    log_end(&l);
}

static void
act_request(struct dash *d, struct evhttp_request *req, enum dash_act act, const char *what)
{
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *query = u != NULL ? evhttp_uri_get_query(u) : NULL;
    struct evkeyvalq params = { 0 };
    const char *qid = NULL;
    struct buf b = BUF_INIT;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        reply_error(req, 405, "POST only");
        return;
    }
    if (!d->has_token) {
        reply_error(req, 403, "read-only: admin_token_file is not set");
        return;
    }
    if (!same_origin(req)) {
        reply_error(req, 403, "cross-origin request refused");
        return;
    }
    if (!token_ok(d, req)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        reply_error(req, 401, "a valid bearer token is required");
        return;
    }
    if (query != NULL && (strlen(query) > 64 || evhttp_parse_query_str(query, &params) != 0)) {
        evhttp_clear_headers(&params);
        reply_error(req, 400, "expected ?id=QUEUE-ID");
        return;
    }
    if (query != NULL)
        qid = evhttp_find_header(&params, "id");
    /* Only flush acts on the whole queue; the others name one message. */
    if ((qid == NULL && act != ACT_FLUSH) || (qid != NULL && !spool_qid_valid(qid))) {
        evhttp_clear_headers(&params);
        reply_error(req, 400, "expected ?id=QUEUE-ID");
        return;
    }
    if (act_do(d, act, qid) < 0) {
        evhttp_clear_headers(&params);
        reply_error(req, 404, "no such message in the queue");
        return;
    }
    act_log(req, what, qid);
    buf_printf(&b, "{\"done\":\"%s\",\"id\":", what);
    buf_append_json_str(&b, qid);
    buf_append_char(&b, '}');
    reply_json(req, &b);
    buf_fini(&b);
    evhttp_clear_headers(&params);
}

static void
hold_cb(struct evhttp_request *req, void *arg)
{
    act_request(arg, req, ACT_HOLD, "hold");
}

static void
release_cb(struct evhttp_request *req, void *arg)
{
    act_request(arg, req, ACT_RELEASE, "release");
}

static void
delete_cb(struct evhttp_request *req, void *arg)
{
    act_request(arg, req, ACT_DELETE, "delete");
}

static void
flush_cb(struct evhttp_request *req, void *arg)
{
    act_request(arg, req, ACT_FLUSH, "flush");
}

/* ---- the page ---- */

static void
asset_cb(struct evhttp_request *req, void *arg)
{
    const struct dash_asset *a = arg;
    if (!request_ok(req, false))
        return;
    reply_bytes(req, HTTP_OK, a->ctype, a->data, a->len);
}

struct dash *
dash_new(
    struct event_base *base, struct sched *sch, struct smtp_server *smtp, const char *spool_dir)
{
    struct dash *d = xcalloc(1, sizeof(*d));
    struct timeval tv = { SAMPLE_MS / 1000, 0 };
    d->sched = sch;
    d->smtp = smtp;
    d->spool_dir = xstrdup(spool_dir);
    for (size_t i = 0; i < EVENTS_MAX; i++)
        buf_init(&d->events[i]);
    buf_init(&d->dests);
    buf_init(&d->dests_new);
    d->tick = event_new(base, -1, EV_PERSIST, tick_cb, d);
    event_add(d->tick, &tv);
    sample_take(d);
    return d;
}

void
dash_register(struct dash *d, struct evhttp *http)
{
    static const struct {
        const char *path;
        void (*cb)(struct evhttp_request *, void *);
    } api[] = {
        { "/api/summary", summary_cb },
        { "/api/throughput", throughput_cb },
        { "/api/destinations", destinations_cb },
        { "/api/events", events_cb },
        { "/api/deferrals", deferrals_cb },
        { "/api/message", message_cb },
        { "/api/queue/hold", hold_cb },
        { "/api/queue/release", release_cb },
        { "/api/queue/delete", delete_cb },
        { "/api/queue/flush", flush_cb },
    };
    for (size_t i = 0; i < sizeof(api) / sizeof(api[0]); i++)
        evhttp_set_cb(http, api[i].path, api[i].cb, d);
    for (size_t i = 0; i < dash_n_assets; i++)
        evhttp_set_cb(http, dash_assets[i].path, asset_cb, (void *)&dash_assets[i]);
}

void
dash_free(struct dash *d)
{
    if (d == NULL)
        return;
    sched_walk_cancel(d->walk);
    /* Before the HTTP server goes (metrics_free): every waiting view is
     * answered, without its live part. */
    while (d->views != NULL) {
        struct msg_view *v = d->views;
        sched_walk_cancel(v->walk);
        v->walk = NULL;
        view_answer(v, false);
    }
    if (d->tick != NULL)
        event_free(d->tick);
    for (size_t i = 0; i < EVENTS_MAX; i++)
        buf_fini(&d->events[i]);
    buf_fini(&d->dests);
    buf_fini(&d->dests_new);
    free(d->spool_dir);
    free(d);
}

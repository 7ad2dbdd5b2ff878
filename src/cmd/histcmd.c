/*
 * `ternctl queue show` and `ternctl trace`. The envelope and the live state
 * of each recipient come from the running ternd's LIST (or, when it is
 * stopped, from the spool read directly: the same JSON lines); the attempts,
 * the Message-ID and finished messages come from the history journal, read
 * as a stream. Everything printed to a terminal is made safe first.
 */
#include "cmd/histcmd.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "ctl/client.h"
#include "history/history.h"
#include "spool/spool.h"
#include "util/json.h"
#include "util/map.h"
#include "util/util.h"

#define EXIT_RUNTIME      1
#define EXIT_USAGE        2
#define SHOW_ATTEMPTS_MAX 10000  /* attempts of one message kept for queue show */
#define TRACE_IDS_MAX     100000 /* messages one trace follows */

/* "ID [--json]" or "QUERY [--json]", either order. */
static int
args(int argc, char **argv, const char **what, bool *json)
{
    *what = NULL;
    *json = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 && !*json)
            *json = true;
        else if (*what == NULL && argv[i][0] != '\0')
            *what = argv[i];
        else
            return -1;
    }
    return *what != NULL ? 0 : -1;
}

static void
fmt_time(int64_t secs, char *out, size_t cap)
{
    tern_fmt_utc(secs, HISTORY_TIME_FMT, out, cap);
}

static void
put_safe(FILE *f, const char *s)
{
    struct buf b = BUF_INIT;
    buf_append_safe(&b, s, strlen(s), HISTORY_VALUE_MAX);
    if (b.len > 0)
        fwrite(b.data, 1, b.len, f);
    buf_fini(&b);
}

/* ---- queue show ---- */

struct attempt {
    int64_t time_s;
    char *rcpt, *host, *reply, *event;
};

struct show {
    const char *qid;
    struct json *entry; /* the LIST object of the message, owned */
    bool bad;
    char *message_id;
    struct attempt *att;
    size_t n_att, cap_att;
    bool att_cut;
};

static int
show_collect(const char *line, size_t len, void *arg)
{
    struct show *sh = arg;
    struct json *obj = NULL;
    const char *id;
    if (sh->entry != NULL)
        return 0;
    if (json_parse(line, len, &obj, NULL) < 0) {
        sh->bad = true;
        return 0;
    }
    id = json_str(json_get(obj, "id"));
    if (id != NULL && strcmp(id, sh->qid) == 0)
        sh->entry = obj;
    else
        json_free(obj);
    return 0;
}

static bool
is_attempt(const char *ev)
{
    return strcmp(ev, "deferred") == 0 || strcmp(ev, "delivered") == 0 ||
           strcmp(ev, "bounced") == 0 || strcmp(ev, "expired") == 0;
}

static void
att_add(struct show *sh, int64_t time_s, const char *rcpt, const char *host, const char *reply,
    const char *event)
{
    struct attempt *a;
    if (sh->n_att == SHOW_ATTEMPTS_MAX) {
        sh->att_cut = true;
        return;
    }
    if (sh->n_att == sh->cap_att) {
        sh->cap_att = sh->cap_att ? sh->cap_att * 2 : 16;
        sh->att = xrealloc(sh->att, sh->cap_att * sizeof(*sh->att));
    }
    a = &sh->att[sh->n_att++];
    a->time_s = time_s;
    a->rcpt = xstrdup(rcpt);
    a->host = host != NULL ? xstrdup(host) : NULL;
    a->reply = reply != NULL ? xstrdup(reply) : NULL;
    a->event = xstrdup(event);
}

static int
show_rec(const struct history_rec *r, void *arg)
{
    struct show *sh = arg;
    if (strcmp(r->id, sh->qid) != 0)
        return 0;
    if (strcmp(r->event, "received") == 0 && r->message_id != NULL) {
        free(sh->message_id);
        sh->message_id = xstrdup(r->message_id);
    }
    if (!is_attempt(r->event) || r->recipient == NULL)
        return 0;
    att_add(sh, r->time_ms / 1000, r->recipient, r->relay, r->reply, r->event);
    return 0;
}

/* Without attempts in the journal (it is off, or their files expired):
 * those kept with the message, its latest SPOOL_ATTEMPTS_MAX. */
static void
show_kept_attempts(struct show *sh)
{
    const struct json *log = json_get(sh->entry, "attempt_log");
    for (size_t i = 0; log != NULL && log->type == JSON_ARRAY && i < log->n_kids; i++) {
        const struct json *a = &log->kids[i];
        const char *rcpt = json_str(json_get(a, "recipient"));
        const char *ev = json_str(json_get(a, "event"));
        int64_t t;
        if (rcpt == NULL || ev == NULL || !is_attempt(ev) || json_int(json_get(a, "time"), &t) < 0)
            continue;
        att_add(sh, t, rcpt, json_str(json_get(a, "relay")), json_str(json_get(a, "reply")), ev);
    }
}

static void
show_fini(struct show *sh)
{
    json_free(sh->entry);
    free(sh->message_id);
    for (size_t i = 0; i < sh->n_att; i++) {
        free(sh->att[i].rcpt);
        free(sh->att[i].host);
        free(sh->att[i].reply);
        free(sh->att[i].event);
    }
    free(sh->att);
}

/* Recipients finished already are not in LIST: their last journal event
 * names their status. NULL when addr is still queued. */
static const struct json *
listed_rcpt(const struct json *rcpts, const char *addr)
{
    for (size_t i = 0; rcpts != NULL && i < rcpts->n_kids; i++) {
        const char *a = json_str(json_get(&rcpts->kids[i], "address"));
        if (a != NULL && strcmp(a, addr) == 0)
            return &rcpts->kids[i];
    }
    return NULL;
}

/* The recipients to show: those of LIST in order, then those the journal
 * saw finish. Each address once; order[] points into LIST or att[]. */
struct rcpt_view {
    const char *addr;
    const char *status;
    int64_t next_s; /* -1: none */
    bool archive;   /* the always_bcc copy */
};

static size_t
rcpt_views(const struct show *sh, struct rcpt_view **out)
{
    const struct json *rcpts = json_get(sh->entry, "recipients");
    size_t n = 0, cap = (rcpts ? rcpts->n_kids : 0) + sh->n_att;
    struct rcpt_view *v = xcalloc(cap ? cap : 1, sizeof(*v));
    for (size_t i = 0; rcpts != NULL && rcpts->type == JSON_ARRAY && i < rcpts->n_kids; i++) {
        const struct json *r = &rcpts->kids[i];
        int64_t nx;
        if (json_str(json_get(r, "address")) == NULL)
            continue;
        v[n].addr = json_str(json_get(r, "address"));
        v[n].status = json_str(json_get(r, "status"));
        v[n].next_s = json_int(json_get(r, "next_attempt"), &nx) == 0 ? nx : -1;
        v[n].archive = json_get(r, "archive") != NULL &&
                       json_get(r, "archive")->type == JSON_BOOL && json_get(r, "archive")->b;
        n++;
    }
    for (size_t i = 0; i < sh->n_att; i++) {
        const struct attempt *a = &sh->att[i];
        size_t k;
        if (listed_rcpt(rcpts, a->rcpt) != NULL || strcmp(a->event, "deferred") == 0)
            continue;
        for (k = 0; k < n && strcmp(v[k].addr, a->rcpt) != 0; k++)
            ;
        if (k == n) {
            v[n].addr = a->rcpt;
            v[n].next_s = -1;
            n++;
        }
        v[k].status = a->event; /* the last final event */
    }
    *out = v;
    return n;
}

static void
show_json(const struct show *sh, const struct rcpt_view *v, size_t n, struct buf *b)
{
    int64_t arrival = 0, size = 0;
    (void)json_int(json_get(sh->entry, "arrival"), &arrival);
    (void)json_int(json_get(sh->entry, "size"), &size);
    buf_append_str(b, "{\"id\":");
    buf_append_json_str(b, sh->qid);
    buf_append_str(b, ",\"sender\":");
    buf_append_json_str(b, json_str(json_get(sh->entry, "sender")));
    buf_printf(b, ",\"arrival\":%" PRId64 ",\"size\":%" PRId64 ",\"message_id\":", arrival, size);
    buf_append_json_str(b, sh->message_id);
    buf_printf(b, ",\"held\":%s,\"recipients\":[",
        json_get(sh->entry, "held") != NULL && json_get(sh->entry, "held")->b ? "true" : "false");
    for (size_t i = 0; i < n; i++) {
        bool first = true;
        buf_append_str(b, i ? ",{\"address\":" : "{\"address\":");
        buf_append_json_str(b, v[i].addr);
        buf_append_str(b, ",\"status\":");
        buf_append_json_str(b, v[i].status);
        if (v[i].next_s >= 0)
            buf_printf(b, ",\"next_attempt\":%" PRId64, v[i].next_s);
        else
            buf_append_str(b, ",\"next_attempt\":null");
        if (v[i].archive)
            buf_append_str(b, ",\"archive\":true");
        buf_append_str(b, ",\"attempts\":[");
        for (size_t k = 0; k < sh->n_att; k++) {
            const struct attempt *a = &sh->att[k];
            if (strcmp(a->rcpt, v[i].addr) != 0)
                continue;
            buf_printf(b, "%s{\"time\":%" PRId64 ",\"host\":", first ? "" : ",", a->time_s);
            first = false;
            buf_append_json_str(b, a->host);
            buf_append_str(b, ",\"reply\":");
            buf_append_json_str(b, a->reply);
            buf_append_char(b, '}');
        }
        buf_append_str(b, "]}");
    }
    buf_append_str(b, "]}\n");
}

static void
show_text(const struct show *sh, const struct rcpt_view *v, size_t n, FILE *f)
{
    int64_t arrival = 0, size = 0, now = tern_now_ms() / 1000;
    const char *sender = json_str(json_get(sh->entry, "sender"));
    char ts[32], age[16];
    (void)json_int(json_get(sh->entry, "arrival"), &arrival);
    (void)json_int(json_get(sh->entry, "size"), &size);
    fmt_time(arrival, ts, sizeof(ts));
    ctl_fmt_age(now - arrival, age, sizeof(age));
    fprintf(f, "id:          %s\nsender:      <", sh->qid);
    put_safe(f, sender != NULL ? sender : "");
    fprintf(
        f, ">\narrival:     %s (%s ago)\nsize:        %" PRId64 "\nmessage_id:  ", ts, age, size);
    put_safe(f, sh->message_id != NULL ? sh->message_id : "-");
    fprintf(f, "\nheld:        %s\n",
        json_get(sh->entry, "held") != NULL && json_get(sh->entry, "held")->b ? "yes" : "no");
    for (size_t i = 0; i < n; i++) {
        fputs("recipient   <", f);
        put_safe(f, v[i].addr);
        fputs(">  ", f);
        if (v[i].archive)
            fputs("(archive) ", f);
        put_safe(f, v[i].status != NULL ? v[i].status : "-");
        if (v[i].next_s >= 0) {
            fmt_time(v[i].next_s, ts, sizeof(ts));
            fprintf(f, ", next attempt %s", ts);
        }
        fputc('\n', f);
        for (size_t k = 0; k < sh->n_att; k++) {
            const struct attempt *a = &sh->att[k];
            if (strcmp(a->rcpt, v[i].addr) != 0)
                continue;
            fmt_time(a->time_s, ts, sizeof(ts));
            fprintf(f, "    %s  %-9s ", ts, a->event);
            put_safe(f, a->host != NULL ? a->host : "-");
            fputs("  ", f);
            put_safe(f, a->reply != NULL ? a->reply : "-");
            fputc('\n', f);
        }
    }
}

int
histcmd_queue_show(struct config *cfg, int argc, char **argv)
{
    struct show sh;
    struct buf msg = BUF_INIT, err = BUF_INIT, out = BUF_INIT;
    struct rcpt_view *v = NULL;
    bool json, offline;
    const char *id;
    enum ctl_rc rc;
    int64_t arrival, since;
    int ret = 0;
    size_t n;
    if (args(argc, argv, &id, &json) < 0)
        return EXIT_USAGE;
    if (!spool_qid_valid(id)) {
        fprintf(stderr, "ternctl: %s: not a queue id (16 lowercase hex digits)\n", id);
        return EXIT_RUNTIME;
    }
    memset(&sh, 0, sizeof(sh));
    sh.qid = id;
    rc = ctl_list_fetch(cfg->spool_dir, show_collect, &sh, &offline, &msg);
    if (rc != CTL_OK) {
        fprintf(stderr, "ternctl: %s\n", msg.len ? msg.data : "cannot read the queue");
        ret = EXIT_RUNTIME;
        goto out;
    }
    if (sh.entry == NULL) {
        fprintf(stderr,
            "ternctl: %s: unknown queue id (not queued; ternctl trace %s shows its history)\n", id,
            id);
        ret = EXIT_RUNTIME;
        goto out;
    }
    /* Nothing of the message was journaled before it arrived: files
     * finished before then are skipped (a minute's slack for the clock).
     * Without a journal the envelope is still worth showing. */
    if (json_int(json_get(sh.entry, "arrival"), &arrival) < 0)
        arrival = 0;
    since = tern_now_ms() - cfg->history_retention_ms;
    if (arrival * 1000 - 60000 > since)
        since = arrival * 1000 - 60000;
    if (history_scan(cfg->spool_dir, since, show_rec, &sh, NULL, &err) < 0)
        fprintf(stderr, "ternctl: history: %s\n", err.data);
    if (sh.n_att == 0)
        show_kept_attempts(&sh);
    n = rcpt_views(&sh, &v);
    if (json) {
        show_json(&sh, v, n, &out);
        fwrite(out.data, 1, out.len, stdout);
    } else {
        show_text(&sh, v, n, stdout);
    }
    if (sh.att_cut)
        fprintf(stderr, "ternctl: only the first %d attempts are shown\n", SHOW_ATTEMPTS_MAX);
out:
    free(v);
    show_fini(&sh);
    buf_fini(&msg);
    buf_fini(&err);
    buf_fini(&out);
    return ret;
}

/* ---- trace ---- */

struct trace {
    struct history_query q;
    struct map *ids; /* qids to follow (values unused) */
    size_t n_ids;
    bool ids_cut, json;
    uint64_t shown;
    bool write_failed;
};

static uint64_t
qid_u64(const char *qid)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++)
        v = v << 4 | (uint64_t)(qid[i] <= '9' ? qid[i] - '0' : qid[i] - 'a' + 10);
    return v;
}

static int
trace_find(const struct history_rec *r, void *arg)
{
    struct trace *t = arg;
    uint64_t k;
    if (!history_query_match(&t->q, r))
        return 0;
    k = qid_u64(r->id);
    if (map_get_u64(t->ids, k) != NULL)
        return 0;
    if (t->n_ids == TRACE_IDS_MAX) {
        t->ids_cut = true;
        return 0;
    }
    map_put_u64(t->ids, k, t);
    t->n_ids++;
    return 0;
}

static int
trace_print(const struct history_rec *r, void *arg)
{
    struct trace *t = arg;
    struct buf b = BUF_INIT;
    if (map_get_u64(t->ids, qid_u64(r->id)) == NULL)
        return 0;
    if (t->json)
        history_rec_json(r, &b);
    else
        history_rec_text(r, &b);
    if (fwrite(b.data, 1, b.len, stdout) != b.len)
        t->write_failed = true;
    buf_fini(&b);
    t->shown++;
    return t->write_failed ? 1 : 0;
}

int
histcmd_trace(struct config *cfg, int argc, char **argv)
{
    struct trace t;
    struct buf err = BUF_INIT;
    struct history_scan_stats st = { 0 };
    const char *query;
    int64_t since = tern_now_ms() - cfg->history_retention_ms;
    int ret = 0;
    memset(&t, 0, sizeof(t));
    if (args(argc, argv, &query, &t.json) < 0 || history_query_init(&t.q, query) < 0)
        return EXIT_USAGE;
    t.ids = map_new();
    /* Two passes, each a stream: which messages match (a recipient or a
     * Message-ID may first show up after the message's first events), then
     * every event of those messages in time order. */
    if (t.q.is_qid) {
        map_put_u64(t.ids, qid_u64(t.q.text), &t);
        t.n_ids = 1;
    } else if (history_scan(cfg->spool_dir, since, trace_find, &t, &st, &err) < 0) {
        fprintf(stderr, "ternctl: history: %s\n", err.data);
        ret = EXIT_RUNTIME;
        goto out;
    }
    if (t.n_ids > 0 && history_scan(cfg->spool_dir, since, trace_print, &t, &st, &err) < 0) {
        fprintf(stderr, "ternctl: history: %s\n", err.data);
        ret = EXIT_RUNTIME;
        goto out;
    }
    if (fflush(stdout) != 0 || t.write_failed) {
        fprintf(stderr, "ternctl: writing output failed\n");
        ret = EXIT_RUNTIME;
    } else if (t.shown == 0) {
        fprintf(stderr, "ternctl: no message in the history matches ");
        put_safe(stderr, query);
        fputc('\n', stderr);
        ret = EXIT_RUNTIME;
    }
    if (t.ids_cut)
        fprintf(stderr, "ternctl: more than %d messages match; only the first are shown\n",
            TRACE_IDS_MAX);
    if (st.corrupt > 0)
        fprintf(stderr, "ternctl: %" PRIu64 " damaged history line(s) skipped\n", st.corrupt);
out:
    map_free(t.ids);
    history_query_fini(&t.q);
    buf_fini(&err);
    return ret;
}

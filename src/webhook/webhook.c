/*
 * The webhook's sender: one POST at a time through libcurl's multi
 * interface, its sockets and timer driven by libevent events on the
 * relay's loop, so nothing here ever blocks mail. The journal is the only
 * queue: a batch is read from the cursor, POSTed, and the cursor moves
 * (durably) only on a 2xx; any other outcome retries the same place later,
 * so events are sent at least once (a crash between the 2xx and the cursor
 * write sends a batch twice).
 */
#include "webhook/webhook.h"

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "util/log.h"
#include "util/util.h"

#define POLL_MS        1000  /* the journal is looked at this often when idle */
#define REQ_TIMEOUT_MS 10000 /* one request, connection and TLS included */

struct sockev {
    struct event *ev;
    curl_socket_t fd;
};

struct webhook {
    struct event_base *base;
    char *spool_dir;
    char *url, *ca_file;
    unsigned char *secret;
    size_t secret_len, batch_max;
    CURLM *multi;
    CURL *easy; /* the request in flight, or NULL */
    struct curl_slist *headers;
    struct event *tick_ev;  /* the next look at the journal (poll or retry) */
    struct event *curl_ev;  /* libcurl's timer */
    struct history_pos cur; /* acknowledged by the receiver */
    struct webhook_batch batch;
    unsigned failures; /* in a row */
};

static void tick_cb(evutil_socket_t fd, short what, void *arg);

static void
schedule(struct webhook *w, int64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    evtimer_add(w->tick_ev, &tv);
}

static void
clear_secret(struct webhook *w)
{
    if (w->secret != NULL)
        explicit_bzero(w->secret, w->secret_len);
    FREE_NULL(&w->secret);
    w->secret_len = 0;
}

void
webhook_set_opts(struct webhook *w, const struct webhook_opts *o)
{
    free(w->url);
    free(w->ca_file);
    w->url = xstrdup(o->url);
    w->ca_file = o->ca_file != NULL ? xstrdup(o->ca_file) : NULL;
    clear_secret(w);
    w->secret = xmalloc(o->secret_len + 1);
    memcpy(w->secret, o->secret, o->secret_len);
    w->secret_len = o->secret_len;
    w->batch_max = o->batch_max ? o->batch_max : 1;
}

/* ---- libcurl on libevent ---- */

static void
request_done(struct webhook *w, CURLcode res)
{
    long status = 0;
    struct logline l;
    struct buf err = BUF_INIT;
    curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(w->multi, w->easy);
    curl_easy_cleanup(w->easy);
    w->easy = NULL;
    curl_slist_free_all(w->headers);
    w->headers = NULL;
    if (res == CURLE_OK && status >= 200 && status <= 299) {
        w->cur = w->batch.to;
        w->failures = 0;
        log_begin(&l, LOG_DEBUG, NULL, "webhook", "sent");
        log_int(&l, "events", (int64_t)w->batch.n);
        log_int(&l, "status", status);
        log_end(&l);
        if (webhook_cursor_save(w->spool_dir, &w->cur, &err) < 0) {
            /* Sent: a restart may send these events again, never lose them. */
            log_begin(&l, LOG_ERROR, NULL, "webhook", "cursor_not_saved");
            log_strn(&l, "reason", err.data ? err.data : "", err.len);
            log_end(&l);
        }
        buf_fini(&err);
        schedule(w, 0);
        return;
    }
    w->failures++;
    /* The contract retries until a 2xx; a 4xx other than 408 and 429 will
     * likely not heal by itself, so it is an error for the operator. */
    log_begin(&l,
        res == CURLE_OK && status >= 400 && status <= 499 && status != 408 && status != 429
            ? LOG_ERROR
            : LOG_WARN,
        NULL, "webhook", "failed");
    if (res != CURLE_OK)
        log_str(&l, "reason", curl_easy_strerror(res));
    else
        log_int(&l, "status", status);
    log_int(&l, "events", (int64_t)w->batch.n);
    log_int(&l, "attempt", w->failures);
    log_int(&l, "retry_in_ms", webhook_backoff_ms(w->failures));
    log_end(&l);
    schedule(w, webhook_backoff_ms(w->failures));
}

static void
check_done(struct webhook *w)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (m->msg == CURLMSG_DONE && m->easy_handle == w->easy)
            request_done(w, m->data.result);
    }
}

static void
sock_cb_ev(evutil_socket_t fd, short what, void *arg)
{
    struct webhook *w = arg;
    int running,
        flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(w->multi, fd, flags, &running);
    check_done(w);
}

static void
curl_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct webhook *w = arg;
    int running;
    (void)fd;
    (void)what;
    curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(w);
}

/* CURLMOPT_SOCKETFUNCTION: watch s as libcurl asks. */
static int
curl_sock_fn(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct webhook *w = userp;
    struct sockev *se = socketp;
    short kind =
        (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0));
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (se != NULL) {
            event_free(se->ev);
            free(se);
            curl_multi_assign(w->multi, s, NULL);
        }
        return 0;
    }
    if (se == NULL) {
        se = xcalloc(1, sizeof(*se));
        se->fd = s;
        curl_multi_assign(w->multi, s, se);
    } else {
        event_free(se->ev);
    }
    se->ev = event_new(w->base, s, (short)(kind | EV_PERSIST), sock_cb_ev, w);
    if (se->ev == NULL) {
        /* libcurl then fails the transfer, which is retried later. */
        curl_multi_assign(w->multi, s, NULL);
        free(se);
        return -1;
    }
    event_add(se->ev, NULL);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer, else fire in ms. */
static int
curl_timer_fn(CURLM *m, long ms, void *userp)
{
    struct webhook *w = userp;
    (void)m;
    if (ms < 0) {
        evtimer_del(w->curl_ev);
    } else {
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
        evtimer_add(w->curl_ev, &tv);
    }
    return 0;
}

/* ---- one POST ---- */

static int
start_post(struct webhook *w)
{
    char sig[WEBHOOK_SIG_LEN + 1], hdr[WEBHOOK_SIG_LEN + 32];
    CURL *e;
    if (webhook_sign(w->secret, w->secret_len, w->batch.body.data, w->batch.body.len, sig) < 0)
        return -1;
    snprintf(hdr, sizeof(hdr), "X-Tern-Signature: %s", sig);
    e = curl_easy_init();
    if (e == NULL)
        return -1;
    w->headers = curl_slist_append(NULL, "Content-Type: application/json");
    w->headers = curl_slist_append(w->headers, hdr);
    w->headers = curl_slist_append(w->headers, "Expect:"); /* no 100-continue round trip */
    curl_easy_setopt(e, CURLOPT_URL, w->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* A connection per POST: no idle socket left on the loop between batches. */
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)REQ_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (w->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, w->ca_file);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, w->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, w->batch.body.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)w->batch.body.len);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "ternd/" TERN_VERSION);
    if (curl_multi_add_handle(w->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        curl_slist_free_all(w->headers);
        w->headers = NULL;
        return -1;
    }
    w->easy = e;
    return 0;
}

/* Look at the journal: POST what is after the cursor, or look again soon. */
static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct webhook *w = arg;
    struct buf err = BUF_INIT;
    struct logline l;
    bool lost = false;
    (void)fd;
    (void)what;
    if (w->easy != NULL)
        return;
    if (webhook_batch_read(w->spool_dir, &w->cur, w->batch_max, &w->batch, &lost, &err) < 0) {
        log_begin(&l, LOG_ERROR, NULL, "webhook", "journal_unreadable");
        log_strn(&l, "reason", err.data ? err.data : "", err.len);
        log_end(&l);
        buf_fini(&err);
        schedule(w, POLL_MS);
        return;
    }
    buf_fini(&err);
    if (lost) {
        /* history_retention or history_max_size removed a file before it
         * was all sent: its remaining events are gone. */
        log_begin(&l, LOG_WARN, NULL, "webhook", "events_expired_unsent");
        log_str(&l, "file", w->cur.file);
        log_str(&l, "resumed_at", w->batch.to.file[0] ? w->batch.to.file : "-");
        log_end(&l);
    }
    if (w->batch.n == 0) {
        w->cur = w->batch.to; /* past damaged lines and finished files */
        schedule(w, POLL_MS);
        return;
    }
    if (start_post(w) < 0) {
        w->failures++;
        log_simple(LOG_ERROR, "webhook", "request_failed", "cannot start a request");
        schedule(w, webhook_backoff_ms(w->failures));
    }
}

struct webhook *
webhook_new(
    struct event_base *base, const char *spool_dir, const struct webhook_opts *o, struct buf *err)
{
    static bool curl_ready;
    struct webhook *w;
    struct buf why = BUF_INIT;
    struct logline l;
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            buf_printf(err, "cannot initialise libcurl\n");
            return NULL;
        }
        curl_ready = true;
    }
    w = xcalloc(1, sizeof(*w));
    w->base = base;
    w->spool_dir = xstrdup(spool_dir);
    buf_init(&w->batch.body);
    webhook_set_opts(w, o);
    w->multi = curl_multi_init();
    w->tick_ev = evtimer_new(base, tick_cb, w);
    w->curl_ev = evtimer_new(base, curl_timer_cb, w);
    if (w->multi == NULL || w->tick_ev == NULL || w->curl_ev == NULL) {
        buf_printf(err, "cannot start the event webhook\n");
        webhook_free(w);
        return NULL;
    }
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, curl_sock_fn);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, curl_timer_fn);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    if (webhook_cursor_load(w->spool_dir, &w->cur, &why) < 0) {
        /* Resending is allowed, losing is not: start from the oldest. */
        log_begin(&l, LOG_ERROR, NULL, "webhook", "cursor_damaged");
        log_strn(&l, "reason", why.data ? why.data : "", why.len);
        log_str(&l, "action", "sending the whole journal again");
        log_end(&l);
    }
    buf_fini(&why);
    schedule(w, 0);
    return w;
}

void
webhook_free(struct webhook *w)
{
    if (w == NULL)
        return;
    if (w->easy != NULL) {
        curl_multi_remove_handle(w->multi, w->easy);
        curl_easy_cleanup(w->easy);
    }
    curl_slist_free_all(w->headers);
    if (w->multi != NULL)
        curl_multi_cleanup(w->multi);
    if (w->tick_ev != NULL)
        event_free(w->tick_ev);
    if (w->curl_ev != NULL)
        event_free(w->curl_ev);
    buf_fini(&w->batch.body);
    clear_secret(w);
    free(w->url);
    free(w->ca_file);
    free(w->spool_dir);
    free(w);
}

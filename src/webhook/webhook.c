/*
 * The webhook's sender: one POST at a time through libcurl's multi
 * interface on the relay's loop (util/curlev), so nothing here ever blocks mail. The journal is the
 * only queue: a batch is read from the cursor, POSTed, and the cursor moves (durably) only on a
 * 2xx; any other outcome retries the same place later, so events are sent at least once (a crash
 * between the 2xx and the cursor write sends a batch twice).
 */
#include "webhook/webhook.h"

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "util/curlev.h"
#include "util/log.h"
#include "util/util.h"

#define POLL_MS        1000  /* the journal is looked at this often when idle */
#define REQ_TIMEOUT_MS 10000 /* one request, connection and TLS included */

struct webhook {
    struct event_base *base;
    char *spool_dir;
    char *url, *ca_file;
    unsigned char *secret;
    size_t secret_len, batch_max;
    struct curlev *cv;
    CURL *easy; /* the request in flight, or NULL */
    struct curl_slist *headers;
    struct event *tick_ev;  /* the next look at the journal (poll or retry) */
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

/* ---- the POST's outcome ---- */

static void
request_done(void *arg, CURL *easy, CURLcode res)
{
    struct webhook *w = arg;
    long status = 0;
    struct logline l;
    struct buf err = BUF_INIT;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(easy);
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
    curlev_easy_defaults(e, "http,https", (long)REQ_TIMEOUT_MS, w->ca_file);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, w->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, w->batch.body.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)w->batch.body.len);
    if (curlev_add(w->cv, e, request_done, w) < 0) {
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
    struct webhook *w;
    struct buf why = BUF_INIT;
    struct logline l;
    w = xcalloc(1, sizeof(*w));
    w->base = base;
    w->spool_dir = xstrdup(spool_dir);
    buf_init(&w->batch.body);
    webhook_set_opts(w, o);
    w->cv = curlev_new(base, err);
    w->tick_ev = evtimer_new(base, tick_cb, w);
    if (w->cv == NULL || w->tick_ev == NULL) {
        buf_printf(err, "cannot start the event webhook\n");
        webhook_free(w);
        return NULL;
    }
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
    curlev_free(w->cv); /* with the request in flight, if any */
    curl_slist_free_all(w->headers);
    if (w->tick_ev != NULL)
        event_free(w->tick_ev);
    buf_fini(&w->batch.body);
    clear_secret(w);
    free(w->url);
    free(w->ca_file);
    free(w->spool_dir);
    free(w);
}

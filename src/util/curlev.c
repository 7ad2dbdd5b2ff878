/*
 * libcurl multi on libevent (see curlev.h). curl tells us which sockets to
 * watch (CURLMOPT_SOCKETFUNCTION) and when to call it back
 * (CURLMOPT_TIMERFUNCTION); events on the loop call curl_multi_socket_action
 * and finished transfers are handed to their owners.
 */
#include "util/curlev.h"

#include <stdbool.h>
#include <stdlib.h>

#include <event2/event.h>

#include "util/util.h"

struct sockev {
    struct event *ev;
    curl_socket_t fd;
};

/* What CURLOPT_PRIVATE points to for a transfer under way. */
struct curlev_xfer {
    struct curlev_xfer *next, *prev;
    CURL *easy;
    curlev_done_fn fn;
    void *arg;
};

struct curlev {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;       /* libcurl's timer */
    struct curlev_xfer *xfers; /* under way (libcurl 7.88 cannot list them) */
};

static void
xfer_unlink(struct curlev *cv, struct curlev_xfer *x)
{
    if (x->prev != NULL)
        x->prev->next = x->next;
    else
        cv->xfers = x->next;
    if (x->next != NULL)
        x->next->prev = x->prev;
}

int
curlev_global_init(struct buf *err)
{
    static bool ready;
    if (ready)
        return 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        buf_printf(err, "cannot initialise libcurl\n");
        return -1;
    }
    ready = true;
    return 0;
}

static void
check_done(struct curlev *cv)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(cv->multi, &left)) != NULL) {
        CURL *e = m->easy_handle;
        CURLcode res = m->data.result;
        struct curlev_xfer *x = NULL;
        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(cv->multi, e);
        curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
        if (x == NULL)
            continue;
        xfer_unlink(cv, x);
        {
            curlev_done_fn fn = x->fn;
            void *arg = x->arg;
            free(x);
            fn(arg, e, res);
        }
    }
}

static void
sock_cb_ev(evutil_socket_t fd, short what, void *arg)
{
    struct curlev *cv = arg;
    int running,
        flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(cv->multi, fd, flags, &running);
    check_done(cv);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct curlev *cv = arg;
    int running;
    (void)fd;
    (void)what;
    curl_multi_socket_action(cv->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(cv);
}

/* CURLMOPT_SOCKETFUNCTION: watch s as libcurl asks. */
static int
sock_fn(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct curlev *cv = userp;
    struct sockev *se = socketp;
    short kind =
        (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0));
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (se != NULL) {
            event_free(se->ev);
            free(se);
            curl_multi_assign(cv->multi, s, NULL);
        }
        return 0;
    }
    if (se == NULL) {
        se = xcalloc(1, sizeof(*se));
        se->fd = s;
        curl_multi_assign(cv->multi, s, se);
    } else {
        event_free(se->ev);
    }
    se->ev = event_new(cv->base, s, (short)(kind | EV_PERSIST), sock_cb_ev, cv);
    if (se->ev == NULL) {
        /* libcurl then fails the transfer; its owner retries later. */
        curl_multi_assign(cv->multi, s, NULL);
        free(se);
        return -1;
    }
    event_add(se->ev, NULL);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer, else fire in ms. */
static int
timer_fn(CURLM *m, long ms, void *userp)
{
    struct curlev *cv = userp;
    (void)m;
    if (ms < 0) {
        evtimer_del(cv->timer);
    } else {
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
        evtimer_add(cv->timer, &tv);
    }
    return 0;
}

struct curlev *
curlev_new(struct event_base *base, struct buf *err)
{
    struct curlev *cv;
    if (curlev_global_init(err) < 0)
        return NULL;
    cv = xcalloc(1, sizeof(*cv));
    cv->base = base;
    cv->multi = curl_multi_init();
    cv->timer = evtimer_new(base, timer_cb, cv);
    if (cv->multi == NULL || cv->timer == NULL) {
        buf_printf(err, "cannot make a libcurl multi handle\n");
        curlev_free(cv);
        return NULL;
    }
    curl_multi_setopt(cv->multi, CURLMOPT_SOCKETFUNCTION, sock_fn);
    curl_multi_setopt(cv->multi, CURLMOPT_SOCKETDATA, cv);
    curl_multi_setopt(cv->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(cv->multi, CURLMOPT_TIMERDATA, cv);
    return cv;
}

int
curlev_add(struct curlev *cv, CURL *easy, curlev_done_fn fn, void *arg)
{
    struct curlev_xfer *x = xcalloc(1, sizeof(*x));
    x->easy = easy;
    x->fn = fn;
    x->arg = arg;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, (void *)x);
    if (curl_multi_add_handle(cv->multi, easy) != CURLM_OK) {
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        free(x);
        return -1;
    }
    x->next = cv->xfers;
    if (x->next != NULL)
        x->next->prev = x;
    cv->xfers = x;
    return 0;
}

void
curlev_remove(struct curlev *cv, CURL *easy)
{
    struct curlev_xfer *x = NULL;
    if (easy == NULL)
        return;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    curl_multi_remove_handle(cv->multi, easy);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    if (x != NULL) {
        xfer_unlink(cv, x);
        free(x);
    }
}

void
curlev_free(struct curlev *cv)
{
    if (cv == NULL)
        return;
    if (cv->multi != NULL) {
        while (cv->xfers != NULL) {
            CURL *e = cv->xfers->easy;
            curlev_remove(cv, e);
            curl_easy_cleanup(e);
        }
        curl_multi_cleanup(cv->multi);
    }
    if (cv->timer != NULL)
        event_free(cv->timer);
    free(cv);
}

void
curlev_easy_defaults(CURL *e, const char *protos, long timeout_ms, const char *ca_file)
{
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, protos);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* A connection per request: no idle socket left on the loop. */
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "ternd/" TERN_VERSION);
}

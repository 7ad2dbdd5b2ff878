/*
 * The crypt worker: one thread that runs password checks (a yescrypt check
 * costs ~30 ms of CPU, too long for an event loop) and posts each result,
 * by job id, to the inbox of the loop that asked. Waiting checks sit in a
 * fair queue keyed by client address, so no address can hold more than its
 * share of the thread. Jobs own copies of the hash and password; the
 * password copy is cleared as soon as it is used. In ternd's relay the
 * checks run in the keys process instead (the remote worker, below): the
 * fair queue stays here and the answers go to the asking loop the same way.
 */
#include "auth.h"

#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "privsep/privsep.h"
#include "util/loopq.h"
#include "util/util.h"

struct auth_job {
    struct auth_fairq_item link; /* first: a queued item is its job */
    struct loopq_item done;      /* posted to `to` with the answer */
    auth_done_fn *fn;            /* the worker's: the job may outlive it in an inbox */
    struct loopq *to;
    void *arg;
    struct auth_result res;
    char *hash; /* local: the stored hash; remote: the user name */
    char *pass;
    bool force_fail;
    uint64_t seq; /* remote: the request id */
};

struct auth_worker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct auth_fairq *waiting; /* guarded by mu */
    bool stop;
    auth_done_fn *fn;
    /* remote: checks sent to the keys process, by request id; all guarded
     * by mu (sessions submit on their loops, replies are read on the main
     * loop) */
    bool remote;
    int sock;
    struct event *ev;
    struct auth_job **flight;
    size_t max_flight;
    uint64_t seq;
};

static void
job_free(struct auth_job *j)
{
    free(j->hash);
    secret_free(j->pass);
    free(j);
}

/* On the asking loop: the answer, then the job goes. */
static void
job_done(struct loopq_item *it)
{
    struct auth_job *j = (struct auth_job *)(void *)((char *)it - offsetof(struct auth_job, done));
    j->fn(&j->res, j->arg);
    job_free(j);
}

static void *
worker_main(void *arg)
{
    struct auth_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        struct auth_job *j;
        while (!w->stop && auth_fairq_len(w->waiting) == 0)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop)
            break;
        j = (struct auth_job *)(void *)auth_fairq_pop(w->waiting);
        pthread_mutex_unlock(&w->mu);
        j->res.ok = auth_check_password(j->hash, j->pass) && !j->force_fail;
        secret_free(j->pass);
        j->pass = NULL;
        j->done.fn = job_done;
        loopq_post(j->to, &j->done);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

struct auth_worker *
auth_worker_new(auth_done_fn *done)
{
    struct auth_worker *w = xcalloc(1, sizeof(*w));
    sigset_t all, old;
    int rc;
    w->fn = done;
    w->waiting = auth_fairq_new(AUTH_QUEUE_PER_KEY, AUTH_QUEUE_MAX);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    /* Signals are for the loop threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        tern_panic("auth worker thread: %s", strerror(rc));
    return w;
}

int
auth_worker_submit(struct auth_worker *w, struct loopq *to, void *arg, uint64_t id, const void *key,
    size_t klen, const char *hash, const char *pass, bool force_fail)
{
    struct auth_job *j = xcalloc(1, sizeof(*j));
    int rc;
    TERN_ASSERT(klen <= AUTH_KEY_MAX);
    j->fn = w->fn;
    j->to = to;
    j->arg = arg;
    j->res.id = id;
    j->res.klen = klen;
    memcpy(j->res.key, key, klen);
    j->hash = xstrdup(hash);
    j->pass = xstrdup(pass);
    j->force_fail = force_fail;
    pthread_mutex_lock(&w->mu);
    rc = auth_fairq_push(w->waiting, key, klen, &j->link);
    if (rc == 0)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (rc < 0)
        job_free(j);
    return rc;
}

static void remote_free(struct auth_worker *w);

void
auth_worker_free(struct auth_worker *w)
{
    if (w == NULL)
        return;
    if (w->remote) {
        remote_free(w);
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    for (struct auth_fairq_item *it; (it = auth_fairq_pop(w->waiting)) != NULL;)
        job_free((struct auth_job *)(void *)it);
    auth_fairq_free(w->waiting);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* ---- checks in the keys process ---- */

/* The answer of j to the loop that asked. */
static void
post_answer(struct auth_job *j, bool ok)
{
    j->res.ok = ok;
    j->done.fn = job_done;
    loopq_post(j->to, &j->done);
}

/* Send waiting checks while there is room over there (under mu). */
static void
remote_pump(struct auth_worker *w)
{
    for (size_t i = 0; i < w->max_flight; i++) {
        struct auth_job *j;
        struct ps_msg m;
        if (w->flight[i] != NULL)
            continue;
        j = (struct auth_job *)(void *)auth_fairq_pop(w->waiting);
        if (j == NULL)
            return;
        memset(&m, 0, sizeof(m));
        m.type = PS_AUTH_CHECK;
        m.id = j->seq = ++w->seq;
        snprintf(m.user, sizeof(m.user), "%s", j->hash);
        snprintf(m.pass, sizeof(m.pass), "%s", j->pass);
        secret_free(j->pass);
        j->pass = NULL;
        w->flight[i] = j;
        if (ps_send(w->sock, &m, -1) < 0) {
            /* The keys process is gone; the parent is stopping ternd. The
             * check fails, and its answer still settles the throttle. */
            w->flight[i] = NULL;
            post_answer(j, false);
        }
        explicit_bzero(&m, sizeof(m));
    }
}

static void
remote_reply_cb(evutil_socket_t fd, short what, void *arg)
{
    struct auth_worker *w = arg;
    struct ps_msg m;
    int extra, r = ps_recv(fd, &m, &extra);
    (void)what;
    if (extra >= 0)
        close(extra);
    if (r == 0) {
        event_del(w->ev); /* the keys process is gone */
        return;
    }
    if (r < 0 || m.type != PS_REPLY)
        return;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->max_flight; i++) {
        struct auth_job *j = w->flight[i];
        if (j == NULL || j->seq != m.id)
            continue;
        w->flight[i] = NULL;
        post_answer(j, m.status == 0);
        break;
    }
    remote_pump(w);
    pthread_mutex_unlock(&w->mu);
}

struct auth_worker *
auth_worker_new_remote(struct event_base *base, int sock, size_t inflight, auth_done_fn *done)
{
    struct auth_worker *w = xcalloc(1, sizeof(*w));
    w->remote = true;
    w->sock = sock;
    w->fn = done;
    w->max_flight = inflight;
    w->flight = xcalloc(inflight, sizeof(*w->flight));
    w->waiting = auth_fairq_new(AUTH_QUEUE_PER_KEY, AUTH_QUEUE_MAX);
    pthread_mutex_init(&w->mu, NULL);
    w->ev = event_new(base, sock, EV_READ | EV_PERSIST, remote_reply_cb, w);
    if (w->ev == NULL || event_add(w->ev, NULL) < 0)
        tern_panic("auth worker event");
    return w;
}

bool
auth_worker_is_remote(const struct auth_worker *w)
{
    return w->remote;
}

int
auth_worker_submit_user(struct auth_worker *w, struct loopq *to, void *arg, uint64_t id,
    const void *key, size_t klen, const char *user, const char *pass)
{
    struct auth_job *j = xcalloc(1, sizeof(*j));
    int rc;
    TERN_ASSERT(w->remote && klen <= AUTH_KEY_MAX);
    j->fn = w->fn;
    j->to = to;
    j->arg = arg;
    j->res.id = id;
    j->res.klen = klen;
    memcpy(j->res.key, key, klen);
    j->hash = xstrdup(user);
    j->pass = xstrdup(pass);
    pthread_mutex_lock(&w->mu);
    rc = auth_fairq_push(w->waiting, key, klen, &j->link);
    if (rc == 0)
        remote_pump(w);
    pthread_mutex_unlock(&w->mu);
    if (rc < 0)
        job_free(j);
    return rc;
}

/* Main thread, with the loops stopped: checks in flight or waiting are
 * dropped unanswered. */
static void
remote_free(struct auth_worker *w)
{
    event_free(w->ev);
    for (size_t i = 0; i < w->max_flight; i++) {
        if (w->flight[i] != NULL)
            job_free(w->flight[i]);
    }
    free(w->flight);
    for (struct auth_fairq_item *it; (it = auth_fairq_pop(w->waiting)) != NULL;)
        job_free((struct auth_job *)(void *)it);
    auth_fairq_free(w->waiting);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

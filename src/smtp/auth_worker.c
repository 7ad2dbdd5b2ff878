/*
 * The crypt worker: one thread that runs password checks (a yescrypt check
 * costs ~30 ms of CPU, too long for the event loop) and reports each result
 * back to the loop thread by job id through a pipe. Waiting checks sit in a
 * fair queue keyed by client address, so no address can hold more than its
 * share of the thread. Jobs own copies of the hash and password; the
 * password copy is cleared as soon as it is used.
 */
#include "auth.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "privsep/privsep.h"
#include "util/util.h"

struct auth_job {
    struct auth_fairq_item link; /* first: a queued item is its job */
    struct auth_job *next;       /* in done */
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
    struct auth_job *done;      /* guarded by mu; any order */
    bool stop;
    int pipe_rd, pipe_wr;
    struct event *ev;
    auth_done_fn *fn;
    void *arg;
    /* remote: checks sent to the keys process, by request id */
    bool remote;
    int sock;
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
        pthread_mutex_lock(&w->mu);
        j->next = w->done;
        w->done = j;
        /* A full pipe already holds a wake-up: the loop drains all of done. */
        ssize_t r = write(w->pipe_wr, "x", 1);
        (void)r;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void
wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct auth_worker *w = arg;
    char tmp[64];
    struct auth_job *list;
    while (read(fd, tmp, sizeof(tmp)) > 0)
        ;
    pthread_mutex_lock(&w->mu);
    list = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->mu);
    while (list != NULL) {
        struct auth_job *j = list;
        list = j->next;
        w->fn(&j->res, w->arg);
        job_free(j);
    }
}

struct auth_worker *
auth_worker_new(struct event_base *base, auth_done_fn *done, void *arg)
{
    struct auth_worker *w = xcalloc(1, sizeof(*w));
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        tern_panic("pipe2: %s", strerror(errno));
    w->pipe_rd = p[0];
    w->pipe_wr = p[1];
    w->fn = done;
    w->arg = arg;
    w->waiting = auth_fairq_new(AUTH_QUEUE_PER_KEY, AUTH_QUEUE_MAX);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->ev = event_new(base, w->pipe_rd, EV_READ | EV_PERSIST, wake_cb, w);
    if (w->ev == NULL || event_add(w->ev, NULL) < 0)
        tern_panic("auth worker event");
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        tern_panic("auth worker thread: %s", strerror(errno));
    return w;
}

int
auth_worker_submit(struct auth_worker *w, uint64_t id, const void *key, size_t klen,
    const char *hash, const char *pass, bool force_fail)
{
    struct auth_job *j = xcalloc(1, sizeof(*j));
    int rc;
    TERN_ASSERT(klen <= AUTH_KEY_MAX);
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

static void
free_list(struct auth_job *j)
{
    while (j != NULL) {
        struct auth_job *next = j->next;
        job_free(j);
        j = next;
    }
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
    free_list(w->done);
    event_free(w->ev);
    close(w->pipe_rd);
    close(w->pipe_wr);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* ---- checks in the keys process ---- */

/* Send waiting checks while there is room over there. */
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
            j->res.ok = false;
            w->fn(&j->res, w->arg);
            job_free(j);
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
    if (extra >= 0)
        close(extra);
    if (r == 0) {
        event_del(w->ev); /* the keys process is gone */
        return;
    }
    if (r < 0 || m.type != PS_REPLY)
        return;
    for (size_t i = 0; i < w->max_flight; i++) {
        struct auth_job *j = w->flight[i];
        if (j == NULL || j->seq != m.id)
            continue;
        w->flight[i] = NULL;
        j->res.ok = m.status == 0;
        w->fn(&j->res, w->arg);
        job_free(j);
        break;
    }
    remote_pump(w);
}

struct auth_worker *
auth_worker_new_remote(
    struct event_base *base, int sock, size_t inflight, auth_done_fn *done, void *arg)
{
    struct auth_worker *w = xcalloc(1, sizeof(*w));
    w->remote = true;
    w->sock = sock;
    w->pipe_rd = w->pipe_wr = -1;
    w->fn = done;
    w->arg = arg;
    w->max_flight = inflight;
    w->flight = xcalloc(inflight, sizeof(*w->flight));
    w->waiting = auth_fairq_new(AUTH_QUEUE_PER_KEY, AUTH_QUEUE_MAX);
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
auth_worker_submit_user(struct auth_worker *w, uint64_t id, const void *key, size_t klen,
    const char *user, const char *pass)
{
    struct auth_job *j = xcalloc(1, sizeof(*j));
    TERN_ASSERT(w->remote && klen <= AUTH_KEY_MAX);
    j->res.id = id;
    j->res.klen = klen;
    memcpy(j->res.key, key, klen);
    j->hash = xstrdup(user);
    j->pass = xstrdup(pass);
    if (auth_fairq_push(w->waiting, key, klen, &j->link) < 0) {
        job_free(j);
        return -1;
    }
    remote_pump(w);
    return 0;
}

static void
remote_free(struct auth_worker *w)
{
    for (size_t i = 0; i < w->max_flight; i++) {
        if (w->flight[i] != NULL)
            job_free(w->flight[i]);
    }
    free(w->flight);
    for (struct auth_fairq_item *it; (it = auth_fairq_pop(w->waiting)) != NULL;)
        job_free((struct auth_job *)(void *)it);
    auth_fairq_free(w->waiting);
    event_free(w->ev);
    free(w);
}

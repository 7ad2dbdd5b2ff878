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
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"

struct auth_job {
    struct auth_fairq_item link; /* first: a queued item is its job */
    struct auth_job *next;       /* in done */
    struct auth_result res;
    char *hash;
    char *pass;
    bool force_fail;
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

void
auth_worker_free(struct auth_worker *w)
{
    if (w == NULL)
        return;
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

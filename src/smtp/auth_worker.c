/*
 * The crypt worker: one thread that runs password checks (a yescrypt check
 * costs ~30 ms of CPU, too long for an event loop) and posts each result,
 * by job id, to the inbox of the loop that asked. Waiting checks sit in a
 * fair queue keyed by client address, so no address can hold more than its
 * share of the thread. Jobs own copies of the hash and password; the
 * password copy is cleared as soon as it is used.
 */
#include "auth.h"

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "util/loopq.h"
#include "util/util.h"

struct auth_job {
    struct auth_fairq_item link; /* first: a queued item is its job */
    struct loopq_item done;      /* posted to `to` with the answer */
    auth_done_fn *fn;            /* the worker's: the job may outlive it in an inbox */
    struct loopq *to;
    void *arg;
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
    bool stop;
    auth_done_fn *fn;
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
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/*
 * workq: a mutex, a condition variable and a FIFO; workers sleep on the
 * condition. Stopping is orderly: workers finish everything queued before
 * they exit, so no submitted item is ever dropped.
 */
#include "util/workq.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/util.h"

#define WORKQ_MAX_THREADS 64

struct workq {
    char name[16];
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct workq_item *head, **tail;
    uint64_t pending;
    bool stopping;
    unsigned n;
    pthread_t threads[WORKQ_MAX_THREADS];
    workq_batch_fn batch;
    uint64_t taken_more; /* items workq_batch_more handed to the running batch */
    void (*idle_fn)(void *arg);
    int64_t idle_ms;
    void *arg;
};

void
workq_done(struct workq_item *it)
{
    if (it->to != NULL)
        loopq_post(it->to, &it->done);
}

/* The monotonic time us microseconds from now, for a timed wait on a
 * queue's condition variable (which counts on that clock). */
static struct timespec
deadline_in(int64_t us)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(us / 1000000);
    ts.tv_nsec += (long)(us % 1000000) * 1000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* With q->mu held: wait for work; false when stopping and empty. With
 * timeout_ms >= 0, *timed_out tells that the wait ended for it. */
static bool
wait_work(struct workq *q, int64_t timeout_ms, bool *timed_out)
{
    struct timespec ts = { 0, 0 };
    *timed_out = false;
    if (timeout_ms >= 0)
        ts = deadline_in(timeout_ms * 1000);
    while (q->head == NULL && !q->stopping) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&q->cond, &q->mu);
        } else if (pthread_cond_timedwait(&q->cond, &q->mu, &ts) == ETIMEDOUT) {
            *timed_out = q->head == NULL;
            return q->head != NULL || !q->stopping;
        }
    }
    return q->head != NULL;
}

struct workq_item *
workq_batch_more(struct workq *q, int64_t wait_us)
{
    struct timespec ts = deadline_in(wait_us);
    struct workq_item *list, *it;
    pthread_mutex_lock(&q->mu);
    while (q->head == NULL && !q->stopping) {
        if (pthread_cond_timedwait(&q->cond, &q->mu, &ts) == ETIMEDOUT)
            break;
    }
    list = q->head;
    q->head = NULL;
    q->tail = &q->head;
    for (it = list; it != NULL; it = it->next)
        q->taken_more++;
    pthread_mutex_unlock(&q->mu);
    return list;
}

static void *
single_main(void *arg)
{
    struct workq *q = arg;
    bool timed_out;
    pthread_mutex_lock(&q->mu);
    while (wait_work(q, -1, &timed_out)) {
        struct workq_item *it = q->head;
        struct loopq *to = it->to;
        q->head = it->next;
        if (q->head == NULL)
            q->tail = &q->head;
        pthread_mutex_unlock(&q->mu);
        it->next = NULL;
        it->run(it);
        /* Through run before its done function can run: whoever sees the
         * done has seen the count fall. */
        pthread_mutex_lock(&q->mu);
        q->pending--;
        pthread_mutex_unlock(&q->mu);
        /* Without an inbox the item is run's to hand on or free: it may be
         * gone already. */
        if (to != NULL)
            loopq_post(to, &it->done);
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static void *
batch_main(void *arg)
{
    struct workq *q = arg;
    bool idle_due = false, timed_out;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        struct workq_item *list;
        uint64_t n = 0;
        bool more = wait_work(q, idle_due && q->idle_fn ? q->idle_ms : -1, &timed_out);
        if (timed_out) {
            pthread_mutex_unlock(&q->mu);
            q->idle_fn(q->arg);
            pthread_mutex_lock(&q->mu);
            idle_due = false;
            continue;
        }
        if (!more)
            break;
        list = q->head;
        q->head = NULL;
        q->tail = &q->head;
        pthread_mutex_unlock(&q->mu);
        for (struct workq_item *it = list; it != NULL; it = it->next)
            n++;
        q->batch(list, q->arg);
        idle_due = true;
        pthread_mutex_lock(&q->mu);
        q->pending -= n + q->taken_more;
        q->taken_more = 0;
    }
    pthread_mutex_unlock(&q->mu);
    if (idle_due && q->idle_fn != NULL)
        q->idle_fn(q->arg); /* a last chance to finish lazy work */
    return NULL;
}

static struct workq *
wq_alloc(const char *name, unsigned n)
{
    struct workq *q = xcalloc(1, sizeof(*q));
    TERN_ASSERT(n >= 1 && n <= WORKQ_MAX_THREADS);
    snprintf(q->name, sizeof(q->name), "%s", name);
    pthread_condattr_t ca;
    pthread_mutex_init(&q->mu, NULL);
    /* Timed waits count on the monotonic clock (wait_work's deadlines are
     * CLOCK_MONOTONIC times; against the default realtime clock they are
     * long past and every wait would end at once). */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    q->tail = &q->head;
    q->n = n;
    return q;
}

static void
wq_start(struct workq *q, void *(*fn)(void *))
{
    sigset_t all, old;
    sigfillset(&all);
    /* Signals are for the loop threads, never for the workers. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < q->n; i++) {
        int rc = pthread_create(&q->threads[i], NULL, fn, q);
        if (rc != 0)
            tern_panic("workq %s: pthread_create: %s", q->name, strerror(rc));
        pthread_setname_np(q->threads[i], q->name);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

struct workq *
workq_new(const char *name, unsigned n)
{
    struct workq *q = wq_alloc(name, n);
    wq_start(q, single_main);
    return q;
}

struct workq *
workq_new_batch(
    const char *name, workq_batch_fn fn, void (*idle_fn)(void *arg), int64_t idle_ms, void *arg)
{
    struct workq *q = wq_alloc(name, 1);
    q->batch = fn;
    q->idle_fn = idle_fn;
    q->idle_ms = idle_ms;
    q->arg = arg;
    wq_start(q, batch_main);
    return q;
}

void
workq_submit(struct workq *q, struct workq_item *it)
{
    it->next = NULL;
    pthread_mutex_lock(&q->mu);
    TERN_ASSERT(!q->stopping);
    *q->tail = it;
    q->tail = &it->next;
    q->pending++;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

uint64_t
workq_pending(struct workq *q)
{
    uint64_t n;
    pthread_mutex_lock(&q->mu);
    n = q->pending;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void
workq_free(struct workq *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->mu);
    q->stopping = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
    for (unsigned i = 0; i < q->n; i++)
        pthread_join(q->threads[i], NULL);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cond);
    free(q);
}

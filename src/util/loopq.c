/*
 * loopq: a mutex-guarded singly linked FIFO and an eventfd. The loop side
 * takes the whole list at once, so the lock is held for a pointer swap.
 */
#include "util/loopq.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/util.h"

struct loopq {
    pthread_mutex_t mu;
    struct loopq_item *head, **tail;
    int efd;
    struct event *ev;
};

static struct loopq_item *
take_all(struct loopq *q)
{
    struct loopq_item *list;
    pthread_mutex_lock(&q->mu);
    list = q->head;
    q->head = NULL;
    q->tail = &q->head;
    pthread_mutex_unlock(&q->mu);
    return list;
}

size_t
loopq_run(struct loopq *q)
{
    size_t n = 0;
    struct loopq_item *list;
    while ((list = take_all(q)) != NULL) {
        while (list != NULL) {
            struct loopq_item *it = list;
            list = it->next;
            it->next = NULL;
            it->fn(it); /* may free it */
            n++;
        }
    }
    return n;
}

static void
ready_cb(evutil_socket_t fd, short what, void *arg)
{
    struct loopq *q = arg;
    uint64_t v;
    /* Read before taking: a post after the take writes the eventfd again. */
    if (read(q->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        tern_panic("loopq: eventfd read: %d", errno);
    loopq_run(q);
}

struct loopq *
loopq_new(struct event_base *base)
{
    struct loopq *q = xcalloc(1, sizeof(*q));
    pthread_mutex_init(&q->mu, NULL);
    q->tail = &q->head;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0)
        goto fail;
    q->ev = event_new(base, q->efd, EV_READ | EV_PERSIST, ready_cb, q);
    if (q->ev == NULL || event_add(q->ev, NULL) < 0)
        goto fail;
    return q;
fail:
    loopq_free(q);
    errno = errno ? errno : ENOMEM;
    return NULL;
}

void
loopq_post(struct loopq *q, struct loopq_item *it)
{
    bool was_empty;
    it->next = NULL;
    pthread_mutex_lock(&q->mu);
    was_empty = q->head == NULL;
    *q->tail = it;
    q->tail = &it->next;
    pthread_mutex_unlock(&q->mu);
    if (was_empty) {
        uint64_t one = 1;
        /* Cannot fail short of a bug: the counter is read long before it
         * could reach its limit. */
        if (write(q->efd, &one, sizeof(one)) != (ssize_t)sizeof(one))
            TERN_ASSERT(errno == EAGAIN);
    }
}

void
loopq_free(struct loopq *q)
{
    if (q == NULL)
        return;
    loopq_run(q);
    if (q->ev != NULL)
        event_free(q->ev);
    if (q->efd >= 0)
        close(q->efd);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

/*
 * Worker threads fed from one FIFO. Every background job in ternd (spool
 * commits and reads, password checks, DKIM signing, DSN making) is a
 * workq_item: run() on a worker thread, then, when the item names an inbox,
 * its done function on that loop's thread (util/loopq.h). Items are
 * intrusive; submitting never allocates. Worker threads block every signal.
 * An item submitted without an inbox (to NULL) belongs to its run function
 * once it runs: run may submit it to another queue or free it, and the
 * worker never touches it again.
 *
 * Two kinds of queue:
 *   workq_new(name, n)            n workers, each runs one item at a time;
 *   workq_new_batch(name, fn,...) one worker that takes every pending item
 *                                 at once and hands the list to fn (group
 *                                 commit); fn completes each item with
 *                                 workq_done(). An idle function may run
 *                                 when nothing arrived for idle_ms.
 */
#ifndef TERN_WORKQ_H
#define TERN_WORKQ_H

#include <stdint.h>

#include "util/loopq.h"

struct workq;

struct workq_item {
    struct workq_item *next;            /* private (a batch function may walk it) */
    void (*run)(struct workq_item *it); /* worker thread; unused by batch queues */
    struct loopq *to;                   /* inbox for done, or NULL for none */
    struct loopq_item done;             /* done.fn runs on to's loop after run */
};

/* n >= 1 workers. Panics if a thread cannot be started (start-up only). */
struct workq *workq_new(const char *name, unsigned n);
typedef void (*workq_batch_fn)(struct workq_item *list, void *arg);
/* idle_fn (may be NULL) runs on the worker when idle_ms passed without a
 * new item after the last batch; again only after another batch. */
struct workq *workq_new_batch(
    const char *name, workq_batch_fn fn, void (*idle_fn)(void *arg), int64_t idle_ms, void *arg);
/* Any thread. */
void workq_submit(struct workq *q, struct workq_item *it);
/* From a batch function: post it->done to it->to (nothing when to is NULL). */
void workq_done(struct workq_item *it);
/* From a batch function: wait up to wait_us for more items and take every
 * one pending, in order (NULL when none came or the queue is stopping). They
 * belong to the batch as its list's do. */
struct workq_item *workq_batch_more(struct workq *q, int64_t wait_us);
/* Items submitted and not yet through run (or the batch function). */
uint64_t workq_pending(struct workq *q);
/* Run every item already submitted, then stop and join the workers. Their
 * done functions are posted as usual (drain the inboxes afterwards). NULL is
 * fine. */
void workq_free(struct workq *q);

#endif

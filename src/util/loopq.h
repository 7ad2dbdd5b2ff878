/*
 * A loop's inbox: any thread posts an item, and the item's function runs on
 * the thread of the event loop that owns the inbox, in the order posted.
 * This is the only way work comes back to a loop from another thread. Items
 * are intrusive (embedded in the caller's object): posting never allocates
 * and cannot fail. One eventfd per inbox, written only when it goes from
 * empty to non-empty.
 */
#ifndef TERN_LOOPQ_H
#define TERN_LOOPQ_H

#include <stddef.h>

struct event_base;
struct loopq;

struct loopq_item {
    struct loopq_item *next; /* private */
    void (*fn)(struct loopq_item *it);
};

/* NULL when no eventfd or event could be made (errno set). */
struct loopq *loopq_new(struct event_base *base);
/* Any thread. The item (and what it is embedded in) belongs to the inbox
 * until fn runs; fn may free it. */
void loopq_post(struct loopq *q, struct loopq_item *it);
/* On the loop's thread: run every item posted so far (used when the loop
 * no longer runs, e.g. while stopping). Returns how many ran. */
size_t loopq_run(struct loopq *q);
/* Items still posted are run first. NULL is fine. */
void loopq_free(struct loopq *q);

#endif

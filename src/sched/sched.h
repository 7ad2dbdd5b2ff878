/*
 * The scheduler: a compact index of every queued message (rebuilt from the
 * spool at start, in the background) and a bounded active set of at most
 * active_limit messages held in memory whole, as Postfix's qmgr; the others
 * are read back by a spool reader thread when they fall due. In memory, a
 * message's recipients are grouped into units, one per destination; a unit
 * waits in a min-heap ordered by its next attempt time, then in its
 * destination's ready list, then is in flight at delivery. Results come
 * back per recipient; the scheduler writes them to the spool, applies the
 * retry policy (sched/retry.h), makes DSNs on a worker (delivery/dsn.h; a
 * DSN that cannot be written is tried again) and removes a message once
 * every recipient is final and its DSNs are queued. A message with nothing
 * ready or in flight leaves memory until it is due again. It owns the
 * envelopes in memory. Runs on the loop of the spool's owner inbox.
 */
#ifndef TERN_SCHED_H
#define TERN_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "spool/spool.h"
#include "util/buf.h"

struct event_base;
struct sched;
struct dns;
struct delivery;

struct sched_stats {
    uint64_t delivered, deferred, bounced, expired; /* recipients, since start */
    size_t queue_messages, queue_rcpts;
    size_t loaded;       /* messages the spool's recovery found at start */
    size_t destinations; /* entries of the destination table */
    size_t active;       /* messages in memory (the active set) */
};

/* cfg: a reference is taken (sched_set_config replaces it). The scheduler
 * creates and owns the delivery engine. */
struct sched *sched_new(
    struct event_base *base, struct spool *sp, struct dns *dns, struct config *cfg);
void sched_free(struct sched *s); /* stops delivery first (answers in-flight jobs) */
void sched_set_config(struct sched *s, struct config *cfg);

/* Learn of a committed message (the spool commit hook; env is copied when
 * the active set has room, else read back later). */
void sched_add(struct sched *s, const struct spool_env *env);
/* Load the spool at start-up, in the background: messages are added as
 * recovery finds them. */
void sched_load_spool(struct sched *s);
/* Has the spool been read whole since sched_load_spool? */
bool sched_loaded(const struct sched *s);

/* Operator actions. 0 ok, -1 unknown queue id. */
void sched_flush(struct sched *s);
int sched_delete(struct sched *s, const char *qid);
int sched_hold(struct sched *s, const char *qid, bool hold);

/* The LIST and SUMMARY replies of the control protocol (src/ctl/ctl.h),
 * streamed: fn gets JSON lines (data, len: borrowed for the call) on the
 * loop thread, never inside sched_walk_start. After each SCHED_WALK_MORE
 * the walk waits for sched_walk_next (the consumer's backpressure); the
 * last call is SCHED_WALK_DONE (data may hold the final lines) or
 * SCHED_WALK_ABORTED (the scheduler is stopping), after which w is gone.
 * sched_walk_cancel ends a walk whose consumer went away (fn is not
 * called again; allowed inside fn after SCHED_WALK_MORE). */
enum sched_walk_ev { SCHED_WALK_MORE, SCHED_WALK_DONE, SCHED_WALK_ABORTED };
typedef void (*sched_walk_fn)(void *arg, const char *data, size_t len, enum sched_walk_ev ev);
struct sched_walk;
struct sched_walk *sched_walk_start(struct sched *s, bool summary, sched_walk_fn fn, void *arg);
void sched_walk_next(struct sched_walk *w);
void sched_walk_cancel(struct sched_walk *w); /* NULL is fine */
void sched_get_stats(const struct sched *s, struct sched_stats *st);
/* The arrival (Unix seconds) of the oldest message in the queue, 0 when it
 * is empty: one pass over the index (for metrics). */
uint32_t sched_oldest_arrival_s(const struct sched *s);
/* Counter for messages accepted by the SMTP server (for metrics). */

#endif

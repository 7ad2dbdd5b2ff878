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
/* The scheduler's delivery (borrowed, lives as long as s), for wiring. */
struct delivery *sched_delivery(struct sched *s);

/* Learn of a committed message (the spool commit hook; env is copied when
 * the active set has room, else read back later). */
void sched_add(struct sched *s, const struct spool_env *env);
/* Load the spool at start-up, in the background: messages are added as
 * recovery finds them. */
void sched_load_spool(struct sched *s);
/* Has the spool been read whole since sched_load_spool? */
bool sched_loaded(const struct sched *s);

/* Operator actions. 0 ok, -1 unknown queue id. sched_flush_msg retries
 * one message now (its destinations' backoff ended too); a held message
 * stays held. */
void sched_flush(struct sched *s);
int sched_flush_msg(struct sched *s, const char *qid);
int sched_delete(struct sched *s, const char *qid);
int sched_hold(struct sched *s, const char *qid, bool hold);

/* The operator actions a selecting walk applies (SCHED_WALK_ACT). */
enum sched_act { SCHED_ACT_HOLD, SCHED_ACT_RELEASE, SCHED_ACT_DELETE, SCHED_ACT_FLUSH };

/* Which messages an action walk takes (every condition given must hold).
 * sender: NULL for any, "" for the null sender; compared without regard
 * to case. rcpt_domain: NULL for any, else a recipient still queued there
 * (case-insensitive, exact domain). older_than_s: 0 for any, else the
 * message arrived at least that many seconds before now_s. */
struct sched_select {
    const char *sender;      /* borrowed */
    const char *rcpt_domain; /* borrowed */
    int64_t older_than_s;
};
/* Does sel take env at wall second now_s? (Pure.) */
bool sched_select_match(const struct sched_select *sel, const struct spool_env *env, int64_t now_s);
/* Does sel need the envelope (sender or domain), or only the arrival? */
bool sched_select_needs_env(const struct sched_select *sel);

/* qshape's age buckets (minutes): <5, 5-10, 10-20, 20-40, 40-80, 80-160,
 * >160; SCHED_AGE_LABELS names them in that order. */
#define SCHED_AGE_BUCKETS 7
#define SCHED_AGE_LABELS                                                                           \
    {                                                                                              \
        "<5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", ">160m"                           \
    }
/* The bucket of an age in seconds (negative ages are the first). */
size_t sched_age_bucket(int64_t age_s);

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
/* A walk that applies act to every message sel takes (the queue as the
 * walk reaches it; a message added meanwhile may or may not be taken),
 * at most a bounded number per slice: its lines are "done QID". HOLD
 * takes only messages not held, RELEASE only held ones, FLUSH only ones
 * not held. sel is copied. Same rules as sched_walk_start otherwise. */
struct sched_walk *sched_walk_act(struct sched *s, enum sched_act act,
    const struct sched_select *sel, sched_walk_fn fn, void *arg);
/* A LIST walk of the messages qids names only (those still queued, in
 * that order; unknown ones are skipped): the live state of a few messages
 * without a pass over the queue. qids is copied. */
struct sched_walk *sched_walk_ids(
    struct sched *s, const char *const *qids, size_t n, sched_walk_fn fn, void *arg);
void sched_walk_next(struct sched_walk *w);
void sched_walk_cancel(struct sched_walk *w); /* NULL is fine */
void sched_get_stats(const struct sched *s, struct sched_stats *st);
/* The arrival (Unix seconds) of the oldest message in the queue, 0 when it
 * is empty: one pass over the index (for metrics). */
uint32_t sched_oldest_arrival_s(const struct sched *s);
/* Counter for messages accepted by the SMTP server (for metrics). */

#endif

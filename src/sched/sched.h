/*
 * The scheduler: the in-memory index of the queue, rebuilt from the spool at
 * start. Each message's recipients are grouped into units, one per
 * destination; a unit waits in a min-heap ordered by its next attempt time,
 * then in its destination's ready list, then is in flight at delivery.
 * Results come back per recipient; the scheduler writes them to the spool,
 * applies the retry policy (sched/retry.h), makes DSNs (delivery/dsn.h; a
 * DSN that cannot be written is tried again, sched_dsn.c) and removes a
 * message once every recipient is final and its DSNs are queued. It owns
 * the envelopes.
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
    uint64_t received, delivered, deferred, bounced, expired; /* recipients, since start */
    size_t queue_messages, queue_rcpts;
    size_t loaded; /* messages the spool's recovery found at start */
};

/* cfg: a reference is taken (sched_set_config replaces it). The scheduler
 * creates and owns the delivery engine. */
struct sched *sched_new(
    struct event_base *base, struct spool *sp, struct dns *dns, struct config *cfg);
void sched_free(struct sched *s); /* stops delivery first (answers in-flight jobs) */
void sched_set_config(struct sched *s, struct config *cfg);

/* Learn of a committed message (the spool commit hook; env is copied). */
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

/* The LIST and SUMMARY replies of the control protocol (src/ctl/ctl.h): one
 * JSON object per line appended to out. */
void sched_list_json(struct sched *s, struct buf *out);
void sched_summary_json(struct sched *s, struct buf *out);
void sched_get_stats(const struct sched *s, struct sched_stats *st);
/* Counter for messages accepted by the SMTP server (for metrics). */
void sched_count_received(struct sched *s);

#endif

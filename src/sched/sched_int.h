/*
 * Scheduler internals shared by sched.c (queue mechanics) and
 * sched_report.c (control-socket listings). Not a public interface.
 */
#ifndef TERN_SCHED_INT_H
#define TERN_SCHED_INT_H

#include "delivery/delivery.h"
#include "sched.h"
#include "util/map.h"

struct event;

enum unit_state { U_WAIT, U_READY, U_FLIGHT, U_HELD };

struct sched_dest {
    struct delivery_dest d;
    struct sched_unit *ready_head, *ready_tail; /* FIFO of due units */
    size_t n_ready;
    char *last_error; /* owned; last temporary failure seen for this destination */
    int64_t down_until_ms; /* backed off as a whole until then (0: up) */
    uint32_t down_count;   /* consecutive attempts that reached no server */
};

struct sched_msg {
    struct spool_env *env; /* owned */
    struct sched_unit **units;
    size_t n_units;
    size_t n_flight; /* units at delivery */
    bool deleted;    /* deleted while in flight: finish the removal at done */
    bool reroute;    /* routing changed while in flight: rebuild units at done */
};

struct sched_unit {
    uint64_t id;
    struct sched_msg *msg;
    struct sched_dest *dest;
    size_t *rcpt; /* indexes of the pending recipients in msg->env->rcpts */
    size_t n_rcpt;
    int64_t next_try_ms;
    size_t heap_idx; /* SIZE_MAX when not in the heap */
    enum unit_state state;
    struct sched_unit *rprev, *rnext; /* ready list links */
};

struct sched {
    struct event_base *base;
    struct spool *sp;
    struct config *cfg;
    struct delivery *dl;
    struct event *timer;
    struct map *msgs;   /* qid -> sched_msg */
    struct map *dests;  /* key -> sched_dest */
    struct map *flight; /* unit id -> sched_unit */
    struct sched_unit **heap;
    size_t heap_len, heap_cap;
    uint64_t next_unit_id;
    struct sched_stats st;
    bool loaded; /* the spool's recovery is done */
};

#endif

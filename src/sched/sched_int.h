/*
 * Scheduler internals shared by sched.c (queue mechanics) and
 * sched_report.c (control-socket listings). Not a public interface.
 */
#ifndef TERN_SCHED_INT_H
#define TERN_SCHED_INT_H

#include "delivery/delivery.h"
#include "delivery/dsn.h"
#include "sched.h"
#include "util/map.h"

struct event;
struct sched_dsn_link;

enum unit_state { U_WAIT, U_READY, U_FLIGHT, U_HELD };

struct sched_dest {
    struct delivery_dest d;
    struct sched_unit *ready_head, *ready_tail; /* FIFO of due units */
    size_t n_ready;
    char *last_error;      /* owned; last temporary failure seen for this destination */
    int64_t down_until_ms; /* backed off as a whole until then (0: up) */
    uint32_t down_count;   /* consecutive attempts that reached no server */
};

/* A recipient whose DSN is not yet in the queue (state RCPT_FAILED_DSN or
 * RCPT_DELIVERED_DSN): what its report says. */
struct sched_note {
    size_t idx; /* into env->rcpts */
    enum dsn_action action;
    struct tern_status status;
    char *remote_mta; /* owned or NULL (not known after a restart) */
    bool from_remote;
    bool flight; /* in a DSN being committed */
};

struct sched_msg {
    struct spool_env *env; /* owned */
    struct sched_unit **units;
    size_t n_units;
    size_t n_flight;          /* units at delivery */
    bool deleted;             /* deleted while in flight: finish the removal at done */
    bool reroute;             /* routing changed while in flight: rebuild units at done */
    struct sched_note *notes; /* owned: the DSNs still to make (sched_dsn.c) */
    size_t n_notes;
    uint32_t dsn_failures;       /* DSNs of it that could not be made in a row */
    int64_t dsn_retry_ms;        /* when to try again; 0 when no retry is planned */
    struct sched_msg *dsn_retry; /* next in s->dsn_retry_head while planned */
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
    struct sched_dsn_link *dsn_link;  /* lets DSN commits that end after sched_free find no sched */
    struct event *dsn_timer;          /* DSN retries */
    struct sched_msg *dsn_retry_head; /* messages whose DSNs must be made again */
};

/* sched.c */
size_t sched_msg_pending(const struct sched_msg *m); /* RCPT_QUEUED recipients */
/* Remove a message from memory and the spool (no unit of it in flight). */
void sched_msg_finish(struct sched *s, struct sched_msg *m, const char *why);

/* sched_dsn.c: DSNs that survive a failure to make them. A final
 * recipient that wants a DSN is recorded as RCPT_*_DSN with a note; its
 * DSN is made and committed, and only once it is durable does the
 * recipient become final in the spool and may the message go. A DSN that
 * cannot be made (full disk...) is tried again after a retry delay, and
 * after a restart from the spool records. */
void sched_dsn_init(struct sched *s);
void sched_dsn_fini(struct sched *s); /* in-flight commits then find no scheduler */
/* Note the report of recipient dr->idx of m, whose state is RCPT_*_DSN. */
void sched_note_add(struct sched_msg *m, const struct dsn_rcpt_result *dr);
/* Notes for the RCPT_*_DSN recipients of a message loaded from the spool. */
void sched_notes_load(struct sched_msg *m);
/* Make and commit the DSNs of m's notes not already being committed. */
void sched_dsn_make(struct sched *s, struct sched_msg *m);
/* Drop m's notes and planned retry (m is being freed). */
void sched_notes_free(struct sched *s, struct sched_msg *m);

#endif

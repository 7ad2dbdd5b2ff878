/*
 * Scheduler internals shared by its files. Not a public interface.
 *
 *   sched_index.c  the compact index of every queued message: a slab of
 *                  entries addressed by u32 handles, a hash qid -> handle
 *                  and a min-heap of the messages waiting outside memory
 *   sched.c        life cycle, the active set (loading, activation,
 *                  eviction), recovery, new mail, operator actions
 *   sched_unit.c   units, their heap and ready lists, the destination
 *                  table, delivery's callbacks and the results
 *   sched_dsn.c    DSNs, made on a worker, kept until durable
 *   sched_report.c LIST and SUMMARY, streamed; destination hints
 *
 * Everything runs on the loop thread that owns the spool's inbox, except
 * what the work queue (s->wq) runs: DSN making and LIST/SUMMARY reads,
 * which see only copies they own. Clocks: what is stored or shown is wall
 * time (tern_now_ms); every timer and due time is monotonic (tern_mono_ms),
 * a stored next attempt being turned into a monotonic one when loaded.
 */
#ifndef TERN_SCHED_INT_H
#define TERN_SCHED_INT_H

#include <stdatomic.h>
#include <stddef.h>

#include "delivery/delivery.h"
#include "delivery/dsn.h"
#include "sched.h"
#include "util/loopq.h"
#include "util/map.h"

struct event;
struct workq;
struct sched_walk;

#define SCHED_NONE UINT32_MAX /* no handle, no heap position */

/* ---- the index (sched_index.c) ---- */

enum {
    ENT_HELD = 1 << 0,    /* held by the operator: never loaded for delivery */
    ENT_BOUNCE = 1 << 1,  /* a DSN of ours */
    ENT_ACTIVE = 1 << 2,  /* in the active set: m is the message */
    ENT_LOADING = 1 << 3, /* being read from the spool */
    ENT_DSN = 1 << 4,     /* recipients wait for their DSN */
    ENT_DELETED = 1 << 5, /* deleted while in flight or loading: gone for every listing */
    ENT_USED = 1 << 6,    /* the slot holds a message */
    ENT_FORCE = 1 << 7,   /* flushed or released: every unit due at once when read */
};

#define HINT_NONE  UINT32_MAX       /* destination not known (never routed here) */
#define HINT_MULTI (UINT32_MAX - 1) /* recipients at more than one destination */

/* One queued message, in memory or not: 40 bytes. */
struct sched_ent {
    uint64_t qid;        /* the 16 hex digits as a number */
    struct sched_msg *m; /* ENT_ACTIVE: the message */
    uint32_t arrival_s;  /* wall clock, for listings */
    uint32_t next_s;     /* monotonic second of its next attempt (in the heap) */
    uint32_t n_pending;  /* recipients still queued */
    uint32_t heap_idx;   /* in the waiting heap, SCHED_NONE when not; free-list link */
    uint32_t hint;       /* where its recipients go: a hint id, HINT_NONE or HINT_MULTI */
    uint16_t flags;      /* ENT_* */
    uint16_t reserved;
};

struct sched_index {
    struct sched_ent *v; /* the slab */
    uint32_t n, cap;     /* slots used so far (live or free) and allocated */
    uint32_t free_head;  /* free slots, linked through heap_idx */
    uint32_t live;
    uint32_t *tab;     /* open addressing: handle + 1; 0 empty; TOMB deleted */
    uint32_t tab_cap;  /* a power of two */
    uint32_t tab_used; /* live and deleted slots */
    uint32_t *heap;    /* handles of waiting messages, by (next_s, qid) */
    uint32_t heap_len, heap_cap;
};

void sidx_init(struct sched_index *x);
void sidx_fini(struct sched_index *x);
/* A new entry for qid (which must not be present), zeroed but for qid,
 * ENT_USED and the SCHED_NONE/HINT_NONE fields. */
uint32_t sidx_add(struct sched_index *x, uint64_t qid);
/* Handle of qid, or SCHED_NONE. */
uint32_t sidx_find(const struct sched_index *x, uint64_t qid);
/* Forget h (taken out of the heap first). */
void sidx_del(struct sched_index *x, uint32_t h);
static inline struct sched_ent *
sidx_ent(const struct sched_index *x, uint32_t h)
{
    return &x->v[h];
}
/* The waiting heap: push (h not in it), remove (h in it), the top
 * (SCHED_NONE when empty) and a fix after h's next_s changed. */
void sidx_heap_push(struct sched_index *x, uint32_t h);
void sidx_heap_remove(struct sched_index *x, uint32_t h);
uint32_t sidx_heap_top(const struct sched_index *x);
void sidx_heap_fix(struct sched_index *x, uint32_t h);
/* Every waiting message due at second now_s (a flush): the heap stays
 * valid since every key becomes equal or is already smaller. */
void sidx_heap_all_due(struct sched_index *x, uint32_t now_s);

/* ---- messages in memory, units, destinations ---- */

enum unit_state { U_WAIT, U_READY, U_FLIGHT, U_HELD };

/* The one destination table: an entry is made when a unit first goes
 * there and freed once it has no units, no delivery state (d.dl) and no
 * backoff pending. Delivery reads d.n_ready, the ready list's length. */
struct sched_dest {
    struct delivery_dest d;                     /* key, hops, n_ready, delivery's state */
    struct sched_unit *ready_head, *ready_tail; /* FIFO of due units */
    size_t n_units;                             /* units of messages that go here */
    char *last_error;           /* owned; last temporary failure seen for this destination */
    int64_t down_until_ms;      /* monotonic: backed off as a whole until then (0: up) */
    uint32_t down_count;        /* consecutive attempts that reached no server */
    struct sched_dest *gc_next; /* in s->dest_gc: unused but backed off */
    bool in_gc;
};
/* Delivery hands back &d: the entry is found from it. */
_Static_assert(offsetof(struct sched_dest, d) == 0, "delivery_dest first");

/* A recipient whose DSN is not yet in the queue (state RCPT_FAILED_DSN or
 * RCPT_DELIVERED_DSN, or a queued one owed a delay warning,
 * RCPT_F_DELAY_DUE): what its report says. */
struct sched_note {
    size_t idx; /* into env->rcpts */
    enum dsn_action action;
    struct tern_status status;
    char *remote_mta; /* owned or NULL (not known after a restart) */
    bool from_remote;
    bool flight; /* in a DSN being made or committed */
};

/* A message of the active set: envelope, state and units in memory. */
struct sched_msg {
    uint32_t h;            /* its index entry */
    struct spool_env *env; /* owned */
    struct sched_unit **units;
    size_t n_units;
    size_t n_flight;          /* units at delivery */
    bool deleted;             /* deleted while in flight: finish the removal at done */
    bool reroute;             /* routing changed while in flight: rebuild units at done */
    bool reread;              /* env is out of date (the spool moved the message): read again */
    struct sched_note *notes; /* owned: the DSNs still to make (sched_dsn.c) */
    size_t n_notes;
    uint32_t dsn_failures;       /* DSNs of it that could not be made in a row */
    int64_t dsn_retry_ms;        /* monotonic: when to try again; 0 when none is planned */
    struct sched_msg *dsn_retry; /* next in s->dsn_retry_head while planned */
};

/* Recipients of one message for one destination, sent in one transaction. */
struct sched_unit {
    uint64_t id;
    struct sched_msg *msg;
    struct sched_dest *dest;
    int64_t next_ms; /* monotonic */
    size_t heap_idx; /* SIZE_MAX when not in the unit heap */
    enum unit_state state;
    struct sched_unit *rprev, *rnext; /* ready list links */
    size_t n_rcpt;
    size_t rcpt[]; /* indexes of its pending recipients in msg->env->rcpts */
};

/* Interned destination keys that inactive messages name (their hint). */
struct sched_hint {
    char *key; /* owned; NULL when the slot is free */
    uint32_t refs;
};

/* What asynchronous answers (spool loads, DSN jobs, walk reads) find: the
 * scheduler, or NULL once it is gone. refs change on the loop thread. */
struct sched_link {
    struct sched *s;
    unsigned refs;
    atomic_bool cancel; /* read by workers: stop early, the answer is dropped */
};

struct sched {
    struct event_base *base;
    struct spool *sp;
    struct loopq *inbox; /* the spool owner's: where answers come back */
    struct config *cfg;
    struct delivery *dl;
    struct workq *wq; /* DSN making and listing reads */
    struct sched_link *link;
    bool stopping;

    /* every queued message */
    struct sched_index idx;
    size_t n_active;   /* messages in memory */
    size_t n_loading;  /* loads under way */
    uint64_t *persist; /* qids of held messages to load once (ring) */
    size_t persist_head, persist_len, persist_cap;
    struct event *pump_ev;    /* loads more (deferred, bounded per run) */
    struct event *wait_timer; /* the next waiting message falls due */

    /* units of the active set */
    struct map *dests;          /* key -> sched_dest */
    struct sched_dest *dest_gc; /* unused destinations kept until their backoff ends */
    struct event *gc_timer;
    struct map *flight; /* unit id -> sched_unit */
    struct sched_unit **heap;
    size_t heap_len, heap_cap;
    struct event *timer; /* the next waiting unit falls due */
    uint64_t next_unit_id;

    /* destination hints of messages not in memory */
    struct sched_hint *hints;
    uint32_t n_hints, cap_hints;
    struct map *hint_ids; /* key -> id + 1 */

    struct sched_stats st;
    bool loaded; /* the spool's recovery is done */

    size_t dsn_busy;                  /* DSN jobs being made or committed */
    struct event *dsn_timer;          /* DSN retries */
    struct sched_msg *dsn_retry_head; /* messages whose DSNs must be made again */

    struct sched_walk *walks; /* LIST and SUMMARY in progress */
};

/* ---- sched.c ---- */

/* The qid of an entry as text. */
void sched_qid_text(uint64_t qid, char out[SPOOL_QID_LEN + 1]);
/* The number of a qid, or false when it is not 16 lowercase hex digits. */
bool sched_qid_parse(const char *q, uint64_t *out);
int64_t sched_mono_from_wall(int64_t wall_ms, int64_t now_wall, int64_t now_mono);
/* Recipients of m still queued (RCPT_QUEUED). */
size_t sched_msg_pending(const struct sched_msg *m);
/* m changed: keep the entry's counts, then let m leave the active set when
 * nothing of it is ready, in flight or waiting for a DSN. */
void sched_msg_settle(struct sched *s, struct sched_msg *m);
/* Remove a message from memory, the index and the spool (no unit of it in
 * flight). */
void sched_msg_finish(struct sched *s, struct sched_msg *m, const char *why);
/* Room may have come free, or messages fell due: load more, later. */
void sched_pump_later(struct sched *s);

/* ---- sched_unit.c ---- */

void sched_units_init(struct sched *s);
void sched_units_fini(struct sched *s);
struct delivery_callbacks sched_delivery_callbacks(struct sched *s);
/* Group m's queued recipients into units (one per destination, at most
 * max_rcpts_per_txn recipients each) due when their recipients are, or
 * all at once with now. */
void sched_units_build(struct sched *s, struct sched_msg *m, bool now);
/* Free every unit of m (none in flight). */
void sched_units_drop(struct sched *s, struct sched_msg *m);
/* Take a unit out of the unit heap or its ready list (not in flight). */
void sched_unit_detach(struct sched *s, struct sched_unit *u);
/* Put a unit in the heap (due at u->next_ms) and arm the timer. */
void sched_unit_wait(struct sched *s, struct sched_unit *u);
/* Is any unit of m ready or in flight? */
bool sched_msg_busy(const struct sched_msg *m);
/* The earliest due time of m's waiting units (monotonic), 0 when none. */
int64_t sched_msg_next_ms(const struct sched_msg *m);
/* The destination of m's units, when they all go to one: else NULL and
 * *multi set when there are several. */
struct sched_dest *sched_msg_dest(const struct sched_msg *m, bool *multi);
/* The entry of key, or NULL. */
struct sched_dest *sched_dest_find(struct sched *s, const char *key);
/* Flush: every waiting unit due now, every destination backoff ended. */
void sched_units_flush(struct sched *s);
/* Flush of one message: its waiting units due now, their destinations'
 * backoff ended. */
void sched_units_flush_msg(struct sched *s, struct sched_msg *m);
/* Routing changed: group every message in memory again. */
void sched_units_reroute(struct sched *s);
void sched_arm(struct sched *s);

/* ---- sched_dsn.c: DSNs that survive a failure to make them ----
 * A final recipient that wants a DSN is recorded as RCPT_*_DSN with a
 * note; its DSN is made on a worker and committed, and only once it is
 * durable does the recipient become final in the spool and may the message
 * go. A DSN that cannot be made (full disk...) is tried again after a
 * retry delay, and after a restart from the spool records. */
void sched_dsn_init(struct sched *s);
void sched_dsn_fini(struct sched *s);
/* Note the report of recipient dr->idx of m, whose state is RCPT_*_DSN (or
 * which is queued and owed a delay warning: RCPT_F_DELAY_DUE). */
void sched_note_add(struct sched_msg *m, const struct dsn_rcpt_result *dr);
/* Notes for the RCPT_*_DSN recipients of a message loaded from the spool,
 * and for the delay warnings it owes (RCPT_F_DELAY_DUE without _SENT). */
void sched_notes_load(struct sched_msg *m);
/* Drop the delay warnings not yet under way of recipients that are no
 * longer queued (their RCPT_F_DELAY_DUE too). */
void sched_notes_drop_stale(struct sched_msg *m);
/* Make and commit the DSNs of m's notes not already under way. */
void sched_dsn_make(struct sched *s, struct sched_msg *m);
/* Drop m's notes and planned retry (m is being freed). */
void sched_notes_free(struct sched *s, struct sched_msg *m);

/* ---- sched_report.c ---- */

/* The hint id of key (a reference taken). */
uint32_t sched_hint_get(struct sched *s, const char *key);
void sched_hint_put(struct sched *s, uint32_t id); /* HINT_NONE/MULTI are fine */
const char *sched_hint_key(const struct sched *s, uint32_t id);
/* Forget every hint (routing changed). */
void sched_hints_reset(struct sched *s);
/* End every walk (stopping): their consumers get SCHED_WALK_ABORTED. */
void sched_walks_abort(struct sched *s);

/* A link reference for an answer that may come after sched_free. */
struct sched_link *sched_link_ref(struct sched *s);
void sched_link_unref(struct sched_link *k);

#endif

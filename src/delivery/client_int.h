/*
 * Private to the outbound client (client.c: the connection, its set-up,
 * TLS and AUTH, replies, timeouts; client_tx.c: one transaction, MAIL to
 * the final dot, and its results).
 */
#ifndef TERN_DELIVERY_CLIENT_INT_H
#define TERN_DELIVERY_CLIENT_INT_H

#include <event2/bufferevent.h>

#include "delivery/delivery_int.h"

enum rcpt_st { RS_PENDING, RS_ACCEPTED, RS_DONE };

struct client_tx {
    struct delivery_job job; /* env and rcpt_idx borrowed until done */
    struct delivery_rcpt_result *res;
    unsigned char *rst; /* enum rcpt_st per job recipient */
    size_t *sent;       /* job positions of the RCPTs sent, in order */
    size_t n_sent;
    size_t n_cmds;    /* commands of MAIL..DATA written */
    size_t n_replies; /* replies of MAIL..DATA read */
    size_t n_accepted;
    bool mail_failed;
    bool discard; /* 354 with no recipient accepted: send only "." */
    /* The stored body (transmitted form: CRLF, dot-stuffed), as file
     * segments on duplicated descriptors, so a compaction or deletion of
     * the spool segment cannot pull bytes from under the output buffer. */
    struct evbuffer_file_segment **segs;
    uint64_t *seg_len;
    /* Held for the transaction: the spool reuses a segment's file only
     * once nobody holds it, and these descriptors still read from it. */
    struct spool_body *body;
    size_t n_segs, cur_seg;
    uint64_t seg_done; /* bytes of segs[cur_seg] handed to the output */
    struct buf out;
    /* 7-bit conversion for a next hop without 8BITMIME (convert.c): the
     * converted form, made by a worker in a file of its own, replaces segs */
    bool converted;
    uint64_t conv_len;        /* octets of the converted form (SIZE=) */
    bool prefix_set;          /* prefix replaces env->prefix (signatures made again) */
    char *prefix;             /* owned or NULL */
    struct buf head;          /* the archive copy's envelope fields, above the prefix */
    int64_t t_begin;          /* tern_mono_ms() when the transaction began */
    int64_t setup_ms, tls_ms; /* charged to this job: the connection's first */
};

/* client.c */
void conn_arm(struct deliv_conn *c, int64_t ms);
/* The relay's name once the session is ready, else NULL. */
const char *conn_relay(const struct deliv_conn *c);
void conn_write(struct deliv_conn *c, const char *s, size_t n);
void conn_write_str(struct deliv_conn *c, const char *s);
/* Our own reason for a result (text cut at STATUS_TEXT_MAX). */
void own_status(struct tern_status *st, int code, const char *esc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The connection failed: every unfinished recipient gets st; closed. */
void conn_fail(struct deliv_conn *c, const struct tern_status *st, bool remote);
/* Ready for a transaction: pull jobs until one is under way. */
void conn_next(struct deliv_conn *c);

/* client_tx.c */
/* Every recipient in state `which` (or every unfinished one when which is
 * RS_DONE) gets st. */
void tx_set_all(struct client_tx *tx, enum rcpt_st which, const struct tern_status *st, bool remote,
    bool force_temp);
/* Answer the job (exactly once) and free it. */
void tx_report(struct deliv_conn *c, struct client_tx *tx);
/* Start a transaction for job: false when it was answered at once. */
bool tx_begin(struct deliv_conn *c, const struct delivery_job *job);
void on_tx_reply(struct deliv_conn *c, const struct tern_status *st);
void on_dot(struct deliv_conn *c, const struct tern_status *st);
/* The output drained to its low mark: more of the body. */
void tx_write_cb(struct bufferevent *bev, void *arg);

#endif

/*
 * One transaction on an outbound connection (RFC 5321 §3.3): checks
 * before anything is sent, MAIL, the RCPTs and DATA (in one write with
 * PIPELINING, RFC 2920), the body streamed from the spool by reference
 * with a bounded output, the final dot, and each recipient's result, given
 * back exactly once (tx_report). A message to be converted to 7 bit comes
 * back here from the worker (client_conv_done).
 */
#include "delivery/client_int.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/data.h"
#include "util/log.h"
#include "util/util.h"

/* ---- jobs and results ---- */

static struct client_tx *
tx_new(const struct delivery_job *job)
{
    struct client_tx *tx = xcalloc(1, sizeof(*tx));
    tx->job = *job;
    tx->res = xcalloc(job->n_rcpts ? job->n_rcpts : 1, sizeof(*tx->res));
    tx->rst = xcalloc(job->n_rcpts ? job->n_rcpts : 1, 1);
    tx->sent = xcalloc(job->n_rcpts ? job->n_rcpts : 1, sizeof(*tx->sent));
    buf_init(&tx->out);
    buf_init(&tx->head);
    if (delivery_is_archive_job(job))
        delivery_archive_head(job->env, &tx->head);
    return tx;
}

static void
tx_free(struct client_tx *tx)
{
    if (tx == NULL)
        return;
    for (size_t i = 0; i < tx->n_segs; i++)
        evbuffer_file_segment_free(tx->segs[i]); /* the output keeps its own references */
    free(tx->segs);
    free(tx->seg_len);
    spool_body_close(tx->body);
    free(tx->res);
    free(tx->rst);
    free(tx->sent);
    buf_fini(&tx->out);
    buf_fini(&tx->head);
    free(tx->prefix);
    free(tx);
}

static void
rcpt_set(struct client_tx *tx, size_t i, const struct tern_status *st, bool remote, bool force_temp)
{
    tx->res[i].st = *st;
    tx->res[i].from_remote = remote;
    tx->res[i].cls = force_temp ? DELIV_TEMP : deliv_classify(st->code);
    tx->rst[i] = RS_DONE;
}

/* Every recipient in state `which` (or every unfinished one when which is
 * RS_DONE) gets st. */
void
tx_set_all(struct client_tx *tx, enum rcpt_st which, const struct tern_status *st, bool remote,
    bool force_temp)
{
    for (size_t i = 0; i < tx->job.n_rcpts; i++) {
        if (which == RS_DONE ? tx->rst[i] != RS_DONE : tx->rst[i] == which)
            rcpt_set(tx, i, st, remote, force_temp);
    }
}

/* Answer the job (exactly once) and free it. */
void
tx_report(struct deliv_conn *c, struct client_tx *tx)
{
    struct logline l;
    struct tern_status st;
    own_status(&st, 421, "4.5.0", "protocol error: no reply for this recipient");
    tx_set_all(tx, RS_DONE, &st, false, true); /* must not happen; never leave one out */
    if (c->tx == tx)
        c->tx = NULL;
    log_begin(&l, LOG_DEBUG, tx->job.env->qid, "delivery", "transaction");
    log_str(&l, "relay", conn_relay(c) ? c->relay : "none");
    log_str(&l, "dest", c->dest->d->key);
    log_int(&l, "rcpts", (int64_t)tx->job.n_rcpts);
    log_int(&l, "accepted", (int64_t)tx->n_accepted);
    log_int(&l, "code", tx->job.n_rcpts ? tx->res[0].st.code : 0);
    log_end(&l);
    for (size_t i = 0; i < tx->job.n_rcpts; i++) {
        tx->res[i].peer_dsn = tx->res[i].from_remote && c->ext.dsn;
        tx->res[i].setup_ms = tx->setup_ms;
        tx->res[i].tls_ms = tx->tls_ms;
        tx->res[i].xfer_ms = tern_mono_ms() - tx->t_begin;
    }
    c->d->cb.done(c->d->cb.arg, tx->job.id, tx->res, tx->job.n_rcpts, conn_relay(c));
    tx_free(tx);
}

/* ---- transactions ---- */

static bool
env_has_8bit_addr(const struct spool_env *env, const struct client_tx *tx)
{
    for (const char *p = env->sender; *p; p++) {
        if ((unsigned char)*p >= 0x80)
            return true;
    }
    for (size_t i = 0; i < tx->job.n_rcpts; i++) {
        for (const char *p = env->rcpts[tx->job.rcpt_idx[i]].addr; *p; p++) {
            if ((unsigned char)*p >= 0x80)
                return true;
        }
    }
    return false;
}

/* The stored body's pieces as file segments (see struct client_tx). */
static int
tx_open_body(struct deliv_conn *c, struct client_tx *tx)
{
    const struct spool_body_piece *v;
    size_t n;
    struct spool_body *b = spool_body_open(c->d->sp, tx->job.env, &v, &n);
    int rc = 0;
    if (b == NULL)
        return -1;
    tx->segs = xcalloc(n ? n : 1, sizeof(*tx->segs));
    tx->seg_len = xcalloc(n ? n : 1, sizeof(*tx->seg_len));
    for (size_t i = 0; i < n && rc == 0; i++) {
        int fd = fcntl(v[i].fd, F_DUPFD_CLOEXEC, 0);
        struct evbuffer_file_segment *s =
            fd < 0 ? NULL
                   : evbuffer_file_segment_new(fd, (ev_off_t)v[i].off, (ev_off_t)v[i].len,
                         EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_LOCKING);
        if (s == NULL) {
            if (fd >= 0)
                close(fd);
            rc = -1;
            break;
        }
        tx->segs[tx->n_segs] = s;
        tx->seg_len[tx->n_segs++] = v[i].len;
    }
    tx->body = b;
    return rc;
}

/* Checks before anything is sent. -1: every recipient has its result; 1:
 * the message must be converted to 7 bit first (RFC 6152 §3). */
static int
tx_precheck(struct deliv_conn *c, struct client_tx *tx)
{
    const struct spool_env *env = tx->job.env;
    struct tern_status st;
    bool unread = false;
    if (tx_open_body(c, tx) < 0) {
        unread = errno == ENOENT; /* its segment is gone: the envelope is out of date */
        own_status(&st, 451, "4.3.0", "cannot open the queued message: %s", strerror(errno));
    } else if (c->ext.size && c->ext.size_max > 0 && env->body_len > c->ext.size_max) {
        /* RFC 1870 §6.1: do not send what the server said it will refuse. */
        own_status(&st, 552, "5.3.4",
            "message size %" PRIu64 " exceeds the limit %" PRIu64 " of %s", env->body_len,
            c->ext.size_max, c->relay);
    } else if (env->smtputf8 && !c->ext.smtputf8) {
        /* RFC 6531 §3.2: without SMTPUTF8 at the server it cannot be sent. */
        bool addr8 = env_has_8bit_addr(env, tx);
        own_status(&st, 550, addr8 ? "5.6.7" : "5.6.9", "%s does not support SMTPUTF8%s", c->relay,
            addr8 ? " (non-ASCII address)" : "");
    } else if (env->body == BODY_BINARYMIME) {
        /* RFC 3030 §3: binary content goes only by BDAT to a server with
         * BINARYMIME; this client sends DATA, so the content cannot be
         * relayed as it is (X.6.3: conversion required but not supported). */
        own_status(&st, 554, "5.6.3", "%s: BINARYMIME content cannot be sent%s", c->relay,
            c->ext.binarymime ? " with DATA" : " (no BINARYMIME there)");
    } else if (!deliv_addr_sendable(env->sender, DELIV_ADDR_SEND_MAX)) {
        own_status(&st, 553, "5.1.7", "sender address cannot be sent");
    } else {
        own_status(&st, 553, "5.1.3", "recipient address cannot be sent");
        for (size_t i = 0; i < tx->job.n_rcpts; i++) {
            size_t idx = tx->job.rcpt_idx[i];
            TERN_ASSERT(idx < env->n_rcpts);
            if (deliv_addr_sendable(env->rcpts[idx].addr, DELIV_ADDR_SEND_MAX))
                tx->sent[tx->n_sent++] = i;
            else
                rcpt_set(tx, i, &st, false, false);
        }
        if (tx->n_sent == 0)
            return -1;
        return env->body == BODY_8BITMIME && !c->ext.eightbitmime ? 1 : 0;
    }
    tx_set_all(tx, RS_DONE, &st, false, false);
    for (size_t i = 0; i < tx->job.n_rcpts; i++)
        tx->res[i].unread = unread;
    return -1;
}

/* Command number n of the transaction: 0 MAIL, 1..n_sent RCPT, then DATA. */
static void
put_cmd(struct deliv_conn *c, size_t n, struct buf *b)
{
    struct client_tx *tx = c->tx;
    if (n == 0) {
        const char *prefix = tx->prefix_set ? tx->prefix : tx->job.env->prefix;
        uint64_t size = (tx->converted ? tx->conv_len : tx->job.env->body_len) +
                        (prefix ? (uint64_t)strlen(prefix) : 0) + tx->head.len;
        deliv_put_mail(&c->ext, tx->job.env, size, b);
    } else if (n <= tx->n_sent) {
        deliv_put_rcpt(&c->ext, &tx->job.env->rcpts[tx->job.rcpt_idx[tx->sent[n - 1]]], b);
    } else {
        buf_append_str(b, "DATA\r\n");
    }
}

/* Send the next command, or with PIPELINING all of them (RFC 2920 §3.1:
 * DATA is the last command of the group). */
static void
tx_send(struct deliv_conn *c)
{
    struct client_tx *tx = c->tx;
    size_t last = c->ext.pipelining ? tx->n_sent + 1 : tx->n_cmds;
    buf_reset(&tx->out);
    while (tx->n_cmds <= last)
        put_cmd(c, tx->n_cmds++, &tx->out);
    conn_write(c, tx->out.data, tx->out.len);
    conn_arm(c, c->reply_ms);
}

bool
tx_begin(struct deliv_conn *c, const struct delivery_job *job)
{
    struct client_tx *tx = tx_new(job);
    int rc;
    deliv_idle_del(c->d, c);
    c->tx = tx;
    tx->t_begin = tern_mono_ms();
    if (c->setup_pending) {
        tx->setup_ms = c->setup_ms > 0 ? c->setup_ms : 0;
        tx->tls_ms = c->tls_ms;
        c->setup_pending = false;
    }
    rc = tx_precheck(c, tx);
    if (rc < 0) {
        tx_report(c, tx);
        return false;
    }
    c->n_msgs++;
    if (rc == 1) {
        deliv_conv_submit(c->d, c, job->id, job->env);
        c->state = CS_CONVERT;
        conn_arm(c, c->reply_ms);
        return true;
    }
    c->state = CS_TX;
    tx_send(c);
    return true;
}

/* The transaction is over: answer the job, then RSET if the server still
 * holds transaction state, else go on with the next job. */
static void
tx_end(struct deliv_conn *c, bool rset)
{
    tx_report(c, c->tx);
    if (rset) {
        conn_write_str(c, "RSET\r\n");
        c->state = CS_RSET;
        conn_arm(c, c->reply_ms);
        return;
    }
    conn_next(c);
}

static void body_fill(struct deliv_conn *c);

static void
body_start(struct deliv_conn *c)
{
    struct client_tx *tx = c->tx;
    bool bol = true;
    const char *prefix;
    c->state = CS_BODY;
    /* The write callback fires when the output drains to the low mark. */
    bufferevent_setwatermark(c->bev, EV_WRITE, DELIV_WRITE_LOW, 0);
    conn_arm(c, c->reply_ms);
    prefix = tx->prefix_set ? tx->prefix : tx->job.env->prefix;
    if (tx->head.len > 0) {
        /* The archive copy: its envelope fields, then the message exactly
         * as the other recipients get it. */
        buf_reset(&tx->out);
        smtp_data_stuff(tx->head.data, tx->head.len, &bol, &tx->out);
        conn_write(c, tx->out.data, tx->out.len);
    }
    if (prefix != NULL) {
        /* Header fields made once at commit (DKIM-Signature), or again for
         * the converted form, sent above the stored message; dot-stuffed
         * like the rest. */
        buf_reset(&tx->out);
        smtp_data_stuff(prefix, strlen(prefix), &bol, &tx->out);
        conn_write(c, tx->out.data, tx->out.len);
    }
    body_fill(c);
}

static void
body_finish(struct deliv_conn *c)
{
    /* The stored body is dot-stuffed and ends with CRLF (the spool makes
     * sure of it): only the final dot is left (RFC 5321 §4.1.1.4). */
    conn_write_str(c, ".\r\n");
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    c->state = CS_DOT;
    conn_arm(c, c->reply_ms);
}

/* Hand the output the next pieces of the body, by reference: sendfile on a
 * plain connection, read by the TLS layer otherwise; never more than
 * DELIV_WRITE_HIGH ahead of the peer. */
static void
body_fill(struct deliv_conn *c)
{
    struct client_tx *tx = c->tx;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (evbuffer_get_length(out) < DELIV_WRITE_HIGH && tx->cur_seg < tx->n_segs) {
        uint64_t left = tx->seg_len[tx->cur_seg] - tx->seg_done;
        size_t want = left < DELIV_CHUNK ? (size_t)left : DELIV_CHUNK;
        if (want > 0 && evbuffer_add_file_segment(out, tx->segs[tx->cur_seg],
                            (ev_off_t)tx->seg_done, (ev_off_t)want) < 0) {
            struct tern_status st;
            own_status(&st, 451, "4.3.0", "cannot read the queued message");
            conn_fail(c, &st, false);
            return;
        }
        tx->seg_done += want;
        if (tx->seg_done == tx->seg_len[tx->cur_seg]) {
            tx->cur_seg++;
            tx->seg_done = 0;
        }
    }
    if (tx->cur_seg == tx->n_segs)
        body_finish(c);
}

void
tx_write_cb(struct bufferevent *bev, void *arg)
{
    struct deliv_conn *c = arg;
    if (c->state == CS_BODY) {
        conn_arm(c, c->reply_ms); /* progress: restart the timeout */
        body_fill(c);
    }
}

static void
tx_on_mail(struct deliv_conn *c, const struct tern_status *st)
{
    if (st->code / 100 == 2)
        return;
    c->tx->mail_failed = true;
    tx_set_all(c->tx, RS_PENDING, st, true, false);
}

static void
tx_on_rcpt(struct deliv_conn *c, size_t k, const struct tern_status *st)
{
    struct client_tx *tx = c->tx;
    size_t i = tx->sent[k];
    if (tx->mail_failed)
        return; /* pipelined after a failed MAIL: already answered */
    if (st->code / 100 == 2) {
        tx->rst[i] = RS_ACCEPTED;
        tx->n_accepted++;
    } else {
        rcpt_set(tx, i, st, true, false);
    }
}

static void
tx_on_data(struct deliv_conn *c, const struct tern_status *st)
{
    struct client_tx *tx = c->tx;
    if (st->code == 354) {
        if (tx->n_accepted > 0) {
            body_start(c);
            return;
        }
        /* RFC 2920 §3.1: DATA accepted with no valid recipient: end it empty. */
        tx->discard = true;
        conn_write_str(c, ".\r\n");
        c->state = CS_DOT;
        conn_arm(c, c->reply_ms);
        return;
    }
    tx_set_all(tx, RS_ACCEPTED, st, true, false);
    tx_end(c, !tx->mail_failed);
}

void
on_tx_reply(struct deliv_conn *c, const struct tern_status *st)
{
    struct client_tx *tx = c->tx;
    size_t idx = tx->n_replies++;
    conn_arm(c, c->reply_ms); /* each pipelined reply gets its own timeout */
    if (idx > tx->n_sent) {
        tx_on_data(c, st);
        return;
    }
    if (idx == 0)
        tx_on_mail(c, st);
    else
        tx_on_rcpt(c, idx - 1, st);
    if (c->ext.pipelining)
        return; /* the remaining replies are on their way */
    if (tx->mail_failed)
        tx_end(c, false);
    else if (tx->n_cmds <= tx->n_sent)
        tx_send(c); /* next RCPT */
    else if (tx->n_accepted == 0)
        tx_end(c, true);
    else
        tx_send(c); /* DATA */
}

void
on_dot(struct deliv_conn *c, const struct tern_status *st)
{
    if (!c->tx->discard)
        tx_set_all(c->tx, RS_ACCEPTED, st, true, false);
    tx_end(c, false);
}

/* Send the converted form (its file, made by the worker) instead of the
 * stored body. */
static int
tx_use_converted(struct client_tx *tx, struct conv_job *j)
{
    int fd = fcntl(j->out_fd, F_DUPFD_CLOEXEC, 0);
    struct evbuffer_file_segment *seg =
        fd < 0 ? NULL
               : evbuffer_file_segment_new(fd, 0, (ev_off_t)j->out_stored,
                     EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_LOCKING);
    if (seg == NULL) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    for (size_t i = 0; i < tx->n_segs; i++)
        evbuffer_file_segment_free(tx->segs[i]);
    tx->segs[0] = seg;
    tx->seg_len[0] = j->out_stored;
    tx->n_segs = 1;
    tx->converted = true;
    return 0;
}

void
client_conv_done(struct deliv_conn *c, struct conv_job *j)
{
    struct client_tx *tx = c->tx;
    struct tern_status st;
    struct logline l;
    if (c->state != CS_CONVERT || tx == NULL || tx->job.id != j->job_id)
        return; /* the transaction ended meanwhile */
    evtimer_del(c->timer);
    if (j->result == CONV_PERM || j->result == CONV_TEMP) {
        if (j->result == CONV_PERM) /* RFC 6152 §3: convert, or return it */
            own_status(&st, 554, "5.6.3",
                "%s does not support 8BITMIME and the message cannot be converted to 7 bit: %s",
                c->relay, j->why);
        else
            own_status(&st, 451, "4.3.0", "cannot convert the message to 7 bit: %s", j->why);
        tx_set_all(tx, RS_DONE, &st, false, j->result == CONV_TEMP);
        tx_report(c, tx);
        conn_next(c);
        return;
    }
    if (j->result == CONV_OK && tx_use_converted(tx, j) < 0) {
        own_status(&st, 451, "4.3.0", "cannot send the converted message: %s", strerror(errno));
        tx_set_all(tx, RS_DONE, &st, false, true);
        tx_report(c, tx);
        conn_next(c);
        return;
    }
    if (j->result == CONV_OK) {
        tx->conv_len = j->out_len;
        tx->prefix_set = j->resign;
        tx->prefix = j->resign && j->prefix.len > 0 ? buf_take(&j->prefix) : NULL;
        log_begin(&l, LOG_INFO, tx->job.env->qid, "delivery", "converted");
        log_str(&l, "dest", c->dest->d->key);
        log_str(&l, "relay", c->relay);
        log_int(&l, "parts", (int64_t)j->plan.n_leaves);
        log_int(&l, "size", (int64_t)tx->conv_len);
        if (j->resign)
            log_str(&l, "dkim", j->dres.n_sigs > 0 ? "resigned" : "dropped");
        log_end(&l);
        if (j->resign && j->dres.n_sigs == 0) {
            log_begin(&l, LOG_WARN, tx->job.env->qid, "dkim", "not_signed");
            log_str(&l, "reason", j->dres.reason ? j->dres.reason : "no key for the From domain");
            log_end(&l);
        }
    }
    c->state = CS_TX;
    tx_send(c);
}

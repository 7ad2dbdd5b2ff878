/*
 * The message path of a session: DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030)
 * stream decoded bytes into a spool writer owned by the transaction, with
 * tern's Received field first and DKIM signing fed on the way. A message is
 * answered 250 only from the spool's commit callback, which finds the
 * session again by id: a session that went away meanwhile is not answered.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "dkim/dkim.h"
#include "policy.h"
#include "sched/sched.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define SMTP_OUT_FLUSH  (64 * 1024)
#define SMTP_BDAT_SLACK (1024 * 1024) /* see smtp_cmd_bdat */

static bool tx_flush(struct smtp_session *s);
static void bdat_chunk_done(struct smtp_session *s);

void
smtp_tx_free(struct smtp_tx *tx)
{
    if (tx == NULL)
        return;
    if (tx->w)
        spool_writer_abort(tx->w);
    dkim_signer_free(tx->dkim);
    spool_env_free(tx->env);
    buf_fini(&tx->out);
    free(tx);
}

/* ---- the Received header (RFC 5321 §4.4, RFC 3848) ---- */

static void
rfc5322_date(int64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

static void
add_received(struct smtp_session *s, const char *qid)
{
    struct smtp_tx *tx = s->tx;
    char date[64];
    const char *with = tx->env->smtputf8 ? "UTF8SMTP" : s->esmtp ? "ESMTP" : "SMTP";
    /* RFC 3848 / RFC 6531: S for TLS, A for AUTH (ESMTPSA, UTF8SMTPA...). */
    const char *sa = !s->esmtp                ? ""
                     : s->tls && s->auth_user ? "SA"
                     : s->tls                 ? "S"
                     : s->auth_user           ? "A"
                                              : "";
    rfc5322_date(tern_now_ms(), date, sizeof(date));
    buf_append_str(&tx->out, "Received: from ");
    /* The HELO name is client-chosen: keep only printable non-space ASCII. */
    for (const char *p = s->helo ? s->helo : "unknown"; *p; p++) {
        unsigned char c = (unsigned char)*p;
        buf_append_char(&tx->out, (c > 32 && c < 127 && c != '(' && c != ')') ? (char)c : '?');
    }
    buf_printf(&tx->out, " ([%s])\r\n", s->peer_str);
    /* The TLS details as Postfix writes them. The authenticated user is
     * left out on purpose (as Postfix's smtpd_sasl_authenticated_header=no):
     * it would show every recipient a login name worth guessing passwords
     * for; the log has it. */
    if (s->tls)
        buf_printf(&tx->out, "\t(using %s with cipher %s (%d/%d bits))\r\n", s->tls_info.version,
            s->tls_info.cipher, s->tls_info.bits, s->tls_info.alg_bits);
    buf_printf(&tx->out, "\tby %s (tern) with %s%s id %s", s->cfg->hostname, with, sa, qid);
    if (tx->env->n_rcpts == 1 && strpbrk(tx->env->rcpts[0].addr, "\r\n") == NULL &&
        strlen(tx->env->rcpts[0].addr) < 300)
        buf_printf(&tx->out, "\r\n\tfor <%s>", tx->env->rcpts[0].addr);
    buf_printf(&tx->out, "; %s\r\n", date);
}

/* ---- DKIM signing (RFC 6376): fed on the loop, finished at commit ---- */

/* Only mail of our own clients (authenticated, or from relay_networks) is
 * signed: mail from outside with one of our From domains must not get our
 * signature. */
static void
tx_dkim_start(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct dkim_keyset *ks;
    struct dkim_sign_opts o;
    int c = s->cfg->dkim_canonicalization;
    if (s->cfg->n_dkim_sign == 0 ||
        !policy_may_relay(
            s->cfg, (const struct sockaddr *)(const void *)&s->peer, s->auth_user != NULL, ""))
        return;
    ks = config_dkim_keys(s->cfg);
    if (dkim_keyset_count(ks) == 0)
        return;
    bool relaxed_h = c == DKIM_C_RELAXED_RELAXED || c == DKIM_C_RELAXED_SIMPLE;
    bool relaxed_b = c == DKIM_C_RELAXED_RELAXED || c == DKIM_C_SIMPLE_RELAXED;
    o.header_canon = relaxed_h ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
    o.body_canon = relaxed_b ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
    o.timestamp = tern_now_ms() / 1000;
    tx->dkim = dkim_signer_new(ks, &o);
    tx->dkim_skip = tx->out.len; /* our Received field: not part of what is signed */
}

static void
dkim_log_unsigned(const char *qid, const struct dkim_outcome *res)
{
    struct logline l;
    log_begin(&l, res->problem ? LOG_WARN : LOG_DEBUG, qid, "dkim", "not_signed");
    log_str(&l, "reason", res->reason);
    log_end(&l);
}

/* Feed the bytes about to be written; drop a signer that will not sign. */
static void
tx_dkim_feed(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    size_t skip = tx->dkim_skip < tx->out.len ? tx->dkim_skip : tx->out.len;
    struct dkim_outcome res;
    tx->dkim_skip -= skip;
    dkim_signer_feed(tx->dkim, tx->out.data + skip, tx->out.len - skip);
    if (!dkim_signer_idle(tx->dkim))
        return;
    dkim_signer_finish(tx->dkim, NULL, &res); /* idle: makes nothing, tells why */
    dkim_log_unsigned(spool_writer_qid(tx->w), &res);
    dkim_signer_free(tx->dkim);
    tx->dkim = NULL;
}

/* The spool finisher: the private-key operations, on a worker thread. The
 * signer was fed as the message came in, so body is not read here. */
static int
dkim_finisher(const char *qid, struct spool_content *body, struct buf *prefix, void *arg)
{
    struct dkim_outcome res;
    struct logline l;
    size_t n = dkim_signer_finish(arg, prefix, &res);
    if (n > 0) {
        log_begin(&l, LOG_INFO, qid, "dkim", "signed");
        log_str(&l, "domain", res.domain);
        log_str(&l, "selectors", res.selectors);
        log_end(&l);
    }
    if (res.reason != NULL)
        dkim_log_unsigned(qid, &res);
    return n > 0 ? 0 : -1;
}

static void
dkim_finisher_free(void *arg)
{
    dkim_signer_free(arg);
}

/* Start the spool writer and write the Received header: the start of DATA
 * and of the first BDAT chunk. Nothing touches a disk before the commit, so
 * this cannot fail; a full disk is answered at the end of the data. */
static void
tx_open(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    TERN_ASSERT(tx->w == NULL); /* one writer per transaction */
    tx->w = spool_writer_new(s->srv->sp, tx->env);
    add_received(s, spool_writer_qid(tx->w));
    tx_dkim_start(s);
}

void
smtp_cmd_data(struct smtp_session *s, const struct smtp_cmd *c)
{
    if (c->arg_len != 0) {
        smtp_reply(s, 501, "5.5.4", "Syntax: DATA");
        return;
    }
    tx_open(s);
    smtp_data_init(&s->tx->dec, SMTP_DATA_DOT);
    s->state = SMTP_ST_DATA;
    smtp_session_deadline(s, s->cfg->data_timeout_ms);
    smtp_reply(s, 354, "", "End data with <CR><LF>.<CR><LF>");
}

/* ---- message end: checks, then commit ---- */

static bool
tx_flush(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    if (tx->too_big) {
        buf_reset(&tx->out);
        return true;
    }
    if (!tx->hscan.done)
        hdr_scan_feed(&tx->hscan, tx->out.data, tx->out.len);
    if (tx->dkim != NULL && tx->out.len > 0)
        tx_dkim_feed(s);
    if (tx->out.len)
        spool_writer_write(tx->w, tx->out.data, tx->out.len);
    buf_reset(&tx->out);
    return true;
}

/* Why the message cannot be accepted, or false when it can. */
static bool
tx_rejected(struct smtp_session *s, struct tern_status *st)
{
    struct smtp_tx *tx = s->tx;
    if (tx->too_big)
        STATUS_SET(st, 552, "5.3.4", "Message size exceeds fixed limit of %llu bytes",
            (unsigned long long)s->cfg->max_message_size);
    else if (tx->dec.bad_eol)
        STATUS_SET(
            st, 550, "5.5.2", "Message contains bare CR or LF line endings (RFC 5321 2.3.8)");
    else if (tx->dec.has_nul)
        STATUS_SET(st, 550, "5.6.0", "Message contains NUL bytes");
    else if (tx->dec.too_long)
        STATUS_SET(st, 500, "5.5.2", "Message line too long (limit %d octets)", SMTP_TEXT_LINE_MAX);
    else
        return false;
    return true;
}

static void
commit_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct smtp_server *srv = arg;
    struct smtp_session *s = map_get_u64(srv->sessions, id);
    if (s == NULL || s->dead || s->state != SMTP_ST_COMMIT)
        return; /* the client left; the message is queued all the same */
    if (ok) {
        smtp_reply(s, 250, "2.0.0", "Ok: queued as %s", qid);
    } else {
        smtp_reply(s, 452, "4.3.1", "Insufficient system storage");
    }
    if (srv->shutting_down) {
        s->state = SMTP_ST_READY;
        smtp_session_close(s, 421, "4.3.2", "Service shutting down, try again later");
        return;
    }
    s->state = SMTP_ST_READY;
    smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
    bufferevent_enable(s->bev, EV_READ);
    smtp_session_process(s);
}

static void
tx_finish(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct tern_status st;
    struct logline l;
    const char *qid = spool_writer_qid(tx->w);
    smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
    tx_flush(s);
    if (tx_rejected(s, &st)) {
        smtp_reply_status(s, &st);
        smtp_log_refused(s, qid, st.text, NULL);
        smtp_tx_reset(s);
        return;
    }
    /* A message that is all header gets the empty line that ends the header
     * section (RFC 5322 §2.1): receivers then see the fields as sent, and it
     * is what the DKIM signer signs. */
    if (!tx->hscan.done) {
        buf_append(&tx->out, "\r\n", 2);
        tx_flush(s);
    }
    log_begin(&l, LOG_INFO, qid, "smtp", "received");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    log_str(&l, "helo", s->helo);
    log_str(&l, "from", tx->env->sender);
    log_int(&l, "nrcpt", (int64_t)tx->env->n_rcpts);
    log_int(&l, "size", (int64_t)spool_writer_size(tx->w));
    if (s->auth_user)
        log_str(&l, "user", s->auth_user);
    if (s->tls) {
        log_str(&l, "tls", s->tls_info.version);
        log_str(&l, "cipher", s->tls_info.cipher);
    }
    log_end(&l);
    if (s->srv->sched)
        sched_count_received(s->srv->sched);
    if (tx->dkim != NULL) {
        spool_writer_set_finisher(tx->w, dkim_finisher, dkim_finisher_free, tx->dkim);
        tx->dkim = NULL;
    }
    spool_writer_commit(tx->w, spool_owner(s->srv->sp), commit_cb, s->id, s->srv);
    tx->w = NULL;
    smtp_tx_free(tx);
    s->tx = NULL;
    s->state = SMTP_ST_COMMIT;
    bufferevent_disable(s->bev, EV_READ);
}

/* Feed DATA bytes from the input buffer to the decoder. */
void
smtp_data_in(struct smtp_session *s, struct evbuffer *in)
{
    struct smtp_tx *tx = s->tx;
    struct evbuffer_iovec v[8];
    int n = evbuffer_peek(in, -1, NULL, v, 8);
    size_t used = 0;
    for (int i = 0; i < n && i < 8 && !tx->dec.ended; i++) {
        long r = smtp_data_feed(&tx->dec, v[i].iov_base, v[i].iov_len, &tx->out);
        if (r < 0)
            tern_panic("data buffer cannot grow");
        used += (size_t)r;
        if (tx->dec.out_bytes > s->cfg->max_message_size)
            tx->too_big = true;
        if (tx->out.len >= SMTP_OUT_FLUSH || tx->too_big)
            tx_flush(s);
    }
    evbuffer_drain(in, used);
    smtp_session_data_progress(s, used);
    if (tx->dec.ended)
        tx_finish(s);
}

/* ---- BDAT (RFC 3030) ---- */

void
smtp_cmd_bdat(struct smtp_session *s, const struct smtp_cmd *c)
{
    struct smtp_tx *tx = s->tx;
    uint64_t size;
    const char *sp = memchr(c->arg, ' ', c->arg_len);
    size_t nlen = sp ? (size_t)(sp - c->arg) : c->arg_len;
    bool last = false;
    if (sp && str_ieq(sp + 1, c->arg_len - nlen - 1, "LAST"))
        last = true;
    if (parse_u64(c->arg, nlen, UINT64_MAX / 2, &size) < 0 || (sp && !last)) {
        /* Without a valid size the chunk cannot be skipped: the stream is lost. */
        smtp_session_close(s, 501, "5.5.4", "Syntax: BDAT size [LAST]; closing connection");
        return;
    }
    if (size > s->cfg->max_message_size + SMTP_BDAT_SLACK) {
        /* A chunk far larger than the whole size limit: reading gigabytes
         * only to refuse them serves nobody, and the chunk cannot be
         * skipped. A modest overshoot is read and refused politely below. */
        smtp_session_close(s, 552, "5.3.4", "Message size exceeds fixed limit; closing connection");
        return;
    }
    s->bdat_prev_state = s->state;
    if (tx == NULL || tx->env->n_rcpts == 0) {
        /* Swallow the chunk, then answer (RFC 3030 §3). */
        if (tx == NULL) {
            s->tx = tx = xcalloc(1, sizeof(*tx));
            tx->env = xcalloc(1, sizeof(*tx->env));
        }
        tx->bdat_failed = true;
        STATUS_SET(&tx->bdat_st, 503, "5.5.1", "%s",
            s->state == SMTP_ST_CONNECTED ? "Error: send HELO/EHLO first"
            : s->state == SMTP_ST_READY   ? "Error: need MAIL command"
                                          : "Error: need RCPT command");
    } else if (tx->w == NULL && !tx->bdat_failed) {
        tx_open(s);
        smtp_data_init(&tx->dec, SMTP_DATA_BDAT);
    }
    tx->chunk_left = size;
    tx->chunk_last = last;
    s->state = SMTP_ST_BDAT;
    smtp_session_deadline(s, s->cfg->data_timeout_ms);
    if (size == 0)
        bdat_chunk_done(s); /* "BDAT 0 LAST": no bytes follow (RFC 3030 §2) */
}

static void
bdat_chunk_done(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
    if (tx->bdat_failed) {
        smtp_reply_status(s, &tx->bdat_st);
        if (tx->chunk_last || tx->env->n_rcpts == 0) {
            smtp_tx_free(tx);
            s->tx = NULL;
            s->state = s->bdat_prev_state == SMTP_ST_CONNECTED ? SMTP_ST_CONNECTED : SMTP_ST_READY;
        } else {
            s->state = SMTP_ST_CHUNKING;
        }
        return;
    }
    if (!tx->chunk_last) {
        tx_flush(s);
        s->state = SMTP_ST_CHUNKING; /* more BDAT (or RSET) may follow */
        smtp_reply(s, 250, "2.0.0", "%llu octets received", (unsigned long long)tx->dec.out_bytes);
        return;
    }
    smtp_data_finish_bdat(&tx->dec, &tx->out);
    tx_finish(s);
}

void
smtp_bdat_in(struct smtp_session *s, struct evbuffer *in)
{
    struct smtp_tx *tx = s->tx;
    uint64_t used = 0;
    while (tx->chunk_left > 0 && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        size_t take;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        take = v.iov_len < tx->chunk_left ? v.iov_len : (size_t)tx->chunk_left;
        if (!tx->bdat_failed) {
            if (smtp_data_feed(&tx->dec, v.iov_base, take, &tx->out) < 0)
                tern_panic("data buffer cannot grow");
            if (tx->dec.out_bytes > s->cfg->max_message_size)
                tx->too_big = true;
            if (tx->out.len >= SMTP_OUT_FLUSH || tx->too_big)
                tx_flush(s);
        }
        evbuffer_drain(in, take);
        tx->chunk_left -= take;
        used += take;
    }
    smtp_session_data_progress(s, used);
    if (tx->chunk_left == 0)
        bdat_chunk_done(s);
}

/*
 * The message path of a session: DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030)
 * into a spool writer owned by the transaction, tern's Received field first.
 * DATA bytes are stored as received (moved out of the input buffer, not
 * copied); BDAT bytes are copied in and stuffed. A message that will be
 * refused (too big, bare CR/LF, NUL, long line) is not stored further. DKIM
 * signing reads the message on a spool worker at commit, not on the loop.
 * A message is answered 250 only from the spool's commit callback, which
 * finds the session again by id: a session that went away meanwhile is not
 * answered.
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
#include "history/history.h"
#include "metrics/metrics.h"
#include "policy.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define SMTP_BDAT_SLACK (1024 * 1024) /* see smtp_cmd_bdat */

static void bdat_chunk_done(struct smtp_session *s);

void
smtp_tx_free(struct smtp_tx *tx)
{
    if (tx == NULL)
        return;
    if (tx->w)
        spool_writer_abort(tx->w);
    dkim_signer_free(tx->dkim);
    smtp_checks_free(tx->checks);
    spool_env_free(tx->env);
    smtp_data_reader_fini(&tx->rd);
    smtp_milter_tx_free(tx);
    free(tx->verdict_by);
    free(tx);
}

/* ---- the Received header (RFC 5321 §4.4, RFC 3848) ---- */

static void
rfc5322_date(int64_t ms, char *out, size_t cap)
{
    tern_fmt_utc(ms / 1000, TERN_RFC5322_DATE, out, cap);
}

/* The field, CRLF-terminated, appended to out. */
void
smtp_add_received(struct smtp_session *s, const char *qid, struct buf *out)
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
    buf_append_str(out, "Received: from ");
    /* The HELO name is client-chosen: keep only printable non-space ASCII. */
    for (const char *p = s->helo ? s->helo : "unknown"; *p; p++) {
        unsigned char c = (unsigned char)*p;
        buf_append_char(out, (c > 32 && c < 127 && c != '(' && c != ')') ? (char)c : '?');
    }
    buf_printf(out, " ([%s])\r\n", s->peer_str);
    /* The TLS details as Postfix writes them. The authenticated user is
     * left out on purpose (as Postfix's smtpd_sasl_authenticated_header=no):
     * it would show every recipient a login name worth guessing passwords
     * for; the log has it. */
    if (s->tls)
        buf_printf(out, "\t(using %s with cipher %s (%d/%d bits))\r\n", s->tls_info->version,
            s->tls_info->cipher, s->tls_info->bits, s->tls_info->alg_bits);
    buf_printf(out, "\tby %s (tern) with %s%s id %s", s->cfg->hostname, with, sa, qid);
    if (tx->env->n_rcpts == 1 && strpbrk(tx->env->rcpts[0].addr, "\r\n") == NULL &&
        strlen(tx->env->rcpts[0].addr) < 300)
        buf_printf(out, "\r\n\tfor <%s>", tx->env->rcpts[0].addr);
    buf_printf(out, "; %s\r\n", date);
}

/* ---- DKIM signing (RFC 6376): at commit, on a spool worker ---- */

/* Only mail of our own clients (authenticated, or from relay_networks) is
 * signed: mail from outside with one of our From domains must not get our
 * signature. */
/* A signer with cfg's keys and canonicalization, or NULL when none. */
static struct dkim_signer *
dkim_signer_for(struct config *cfg)
{
    struct dkim_keyset *ks;
    struct dkim_sign_opts o;
    int c = cfg->dkim_canonicalization;
    if (cfg->n_dkim_sign == 0)
        return NULL;
    ks = config_dkim_keys(cfg);
    if (dkim_keyset_count(ks) == 0)
        return NULL;
    bool relaxed_h = c == DKIM_C_RELAXED_RELAXED || c == DKIM_C_RELAXED_SIMPLE;
    bool relaxed_b = c == DKIM_C_RELAXED_RELAXED || c == DKIM_C_SIMPLE_RELAXED;
    o.header_canon = relaxed_h ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
    o.body_canon = relaxed_b ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
    o.timestamp = tern_now_ms() / 1000;
    return dkim_signer_new(ks, &o);
}

static void
tx_dkim_start(struct smtp_session *s)
{
    if (!policy_may_relay(
            s->cfg, (const struct sockaddr *)(const void *)&s->peer, s->auth_user != NULL, ""))
        return;
    s->tx->dkim = dkim_signer_for(s->cfg);
}

static void
dkim_log_unsigned(const char *qid, const struct dkim_outcome *res)
{
    struct logline l;
    log_begin(&l, res->problem ? LOG_WARN : LOG_DEBUG, qid, "dkim", "not_signed");
    log_str(&l, "reason", res->reason);
    log_end(&l);
}

/* What the finisher needs: the signer, and how many bytes at the start of
 * the content are tern's own Received field (not signed: it is not the
 * author's, and a next hop may well re-fold it). */
struct dkim_job {
    struct dkim_signer *signer; /* owned */
    size_t skip;
};

/* Feed the content but the first skip bytes; stop once the signer knows it
 * will not sign. 0, or -1 with errno when the content cannot be read. */
static int
dkim_feed_content(struct dkim_job *j, struct spool_content *body)
{
    const char *p;
    size_t n;
    while (!dkim_signer_idle(j->signer)) {
        int r = spool_content_next(body, &p, &n);
        size_t k;
        if (r <= 0)
            return r;
        k = j->skip < n ? j->skip : n;
        j->skip -= k;
        dkim_signer_feed(j->signer, p + k, n - k);
    }
    return 0;
}

/* The spool finisher, on a worker thread: the hashing and the private-key
 * operations, with the whole message at hand. */
static int
dkim_finisher(const char *qid, struct spool_content *body, struct buf *prefix, void *arg)
{
    struct dkim_job *j = arg;
    struct dkim_outcome res;
    struct logline l;
    size_t n;
    if (dkim_feed_content(j, body) < 0) {
        log_begin(&l, LOG_WARN, qid, "dkim", "not_signed");
        log_str(&l, "reason", "cannot read the message");
        log_errno(&l, errno);
        log_end(&l);
        return -1;
    }
    if (dkim_signer_idle(j->signer)) {
        dkim_signer_finish(j->signer, NULL, &res); /* idle: makes nothing, tells why */
        dkim_log_unsigned(qid, &res);
        return -1;
    }
    n = dkim_signer_finish(j->signer, prefix, &res);
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
    struct dkim_job *j = arg;
    dkim_signer_free(j->signer);
    free(j);
}

/* Hand signer (owned) to w's finisher: it signs at commit. */
static void
dkim_attach(struct spool_writer *w, struct dkim_signer *signer, size_t skip)
{
    struct dkim_job *j = xcalloc(1, sizeof(*j));
    j->signer = signer;
    j->skip = skip;
    spool_writer_set_finisher(w, dkim_finisher, dkim_finisher_free, j);
}

void
smtp_dkim_at_commit(struct config *cfg, struct spool_writer *w, size_t skip)
{
    struct dkim_signer *signer = dkim_signer_for(cfg);
    if (signer != NULL)
        dkim_attach(w, signer, skip);
}

void
smtp_archive_at_commit(const struct config *cfg, struct spool_writer *w)
{
    /* RFC 3461 NOTIFY=NEVER: the sender never learns of the archive. */
    if (cfg->always_bcc != NULL)
        spool_writer_add_rcpt(w, cfg->always_bcc, DSN_NOTIFY_NEVER, RCPT_K_ARCHIVE);
}

/* Start the spool writer and write the Received header: the start of DATA
 * and of the first BDAT chunk. Nothing touches a disk before the commit, so
 * this cannot fail; a full disk is answered at the end of the data. */
static void
tx_open(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct buf rcvd = BUF_INIT;
    TERN_ASSERT(tx->w == NULL); /* one writer per transaction */
    tx->w = spool_writer_new(s->srv->sp, tx->env);
    if (s->cfg->milters != NULL) {
        /* Filters are shown the message as stored, and may change it. */
        tx->mcopy = xcalloc(1, sizeof(*tx->mcopy));
        spool_writer_tee(tx->w, tx->mcopy);
    }
    tx->max_size = s->cfg->max_message_size;
    smtp_add_received(s, spool_writer_qid(tx->w), &rcvd);
    spool_writer_write(tx->w, rcvd.data, rcvd.len);
    tx->dkim_skip = rcvd.len;
    buf_fini(&rcvd);
    tx_dkim_start(s);
    smtp_checks_open(s);
}

void
smtp_cmd_data(struct smtp_session *s, const struct smtp_cmd *c)
{
    if (c->arg_len != 0) {
        smtp_reply(s, 501, "5.5.4", "Syntax: DATA");
        return;
    }
    tx_open(s);
    smtp_data_reader_init(&s->tx->rd, SMTP_DATA_DOT);
    s->state = SMTP_ST_DATA;
    smtp_session_deadline(s, s->cfg->data_timeout_ms);
    smtp_reply(s, 354, "", "End data with <CR><LF>.<CR><LF>");
}

/* ---- message end: checks, then commit ---- */

/* The message will be refused: what comes is not stored any more. The
 * scanner may have counted a little beyond what the sink is given; a size
 * past the limit stays past it all the same. */
static bool
tx_discarding(struct smtp_tx *tx)
{
    const struct smtp_scan *sc = &tx->rd.sc;
    if (sc->content > tx->max_size)
        tx->too_big = true;
    return tx->too_big || sc->bad_eol || sc->has_nul || sc->too_long || tx->hdr_too_big;
}

/* The reader's sink: the transaction's spool writer. */
static void
sink_stuffed(void *arg, struct evbuffer *src, size_t n, uint64_t content)
{
    struct smtp_tx *tx = arg;
    if (!tx_discarding(tx)) {
        if (!tx->hscan.done)
            hdr_scan_feed_evbuffer(&tx->hscan, src, n);
        if (tx->checks != NULL)
            smtp_checks_stuffed(tx, src, n, content);
        else
            spool_writer_add_stuffed(tx->w, src, n, content);
    } else if (evbuffer_drain(src, n) < 0)
        tern_panic("evbuffer_drain failed");
}

static void
sink_plain(void *arg, const char *p, size_t n)
{
    struct smtp_tx *tx = arg;
    if (!tx_discarding(tx)) {
        if (!tx->hscan.done)
            hdr_scan_feed(&tx->hscan, p, n);
        if (tx->checks != NULL)
            smtp_checks_plain(tx, p, n);
        else
            spool_writer_write(tx->w, p, n);
    }
}

/* The CRLF that ends a BDAT message lacking it: not held against the size
 * limit (a message of exactly the limit without it is accepted). */
static void
sink_final(void *arg, const char *p, size_t n)
{
    struct smtp_tx *tx = arg;
    const struct smtp_scan *sc = &tx->rd.sc;
    if (!tx->too_big && !sc->bad_eol && !sc->has_nul && !sc->too_long && !tx->hdr_too_big) {
        if (!tx->hscan.done)
            hdr_scan_feed(&tx->hscan, p, n);
        if (tx->checks != NULL)
            smtp_checks_plain(tx, p, n);
        else
            spool_writer_write(tx->w, p, n);
    }
}

/* Why the message cannot be accepted, or false when it can. */
static bool
tx_rejected(struct smtp_session *s, struct tern_status *st)
{
    struct smtp_tx *tx = s->tx;
    if (tx->too_big)
        STATUS_SET(st, 552, "5.3.4", "Message size exceeds fixed limit of %llu bytes",
            (unsigned long long)s->cfg->max_message_size);
    else if (tx->rd.sc.bad_eol)
        STATUS_SET(
            st, 550, "5.5.2", "Message contains bare CR or LF line endings (RFC 5321 2.3.8)");
    else if (tx->rd.sc.has_nul)
        STATUS_SET(st, 550, "5.6.0", "Message contains NUL bytes");
    else if (tx->rd.sc.too_long)
        STATUS_SET(st, 500, "5.5.2", "Message line too long (limit %d octets)", SMTP_TEXT_LINE_MAX);
    else if (tx->hdr_too_big)
        STATUS_SET(st, 552, "5.3.4", "Message header section exceeds fixed limit of %d bytes",
            SMTP_CHECKS_HEADER_MAX);
    else
        return false;
    return true;
}

static void
commit_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct smtp_loop *lp = arg;
    struct smtp_session *s = map_get_u64(lp->sessions, id);
    struct hline *h = map_del_u64(lp->journal_pending, id);
    if (h != NULL) {
        /* Received only once it is queued: a failed commit leaves no trace
         * of a message that does not exist. */
        if (ok)
            history_end(h);
        else
            buf_fini(&h->b);
        free(h);
    }
    if (ok)
        atomic_fetch_add_explicit(&lp->srv->received, 1, memory_order_relaxed);
    if (s == NULL || s->dead || s->state != SMTP_ST_COMMIT)
        return; /* the client left; the message is queued all the same */
    if (ok) {
        smtp_reply(s, 250, "2.0.0", "Ok: queued as %s", qid);
    } else {
        smtp_reply(s, 452, "4.3.1", "Insufficient system storage");
    }
    if (lp->shutting_down) {
        s->state = SMTP_ST_READY;
        smtp_session_close(s, 421, "4.3.2", "Service shutting down, try again later");
        return;
    }
    s->state = SMTP_ST_READY;
    smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
    smtp_session_read(s, true);
    smtp_session_process(s);
}

/* The Message-ID seen in the header, without trailing blanks (borrowed
 * from h). */
static const char *
msgid_trim(struct hdr_scan *h)
{
    while (h->mid_len > 0 && h->mid[h->mid_len - 1] == ' ')
        h->mid[--h->mid_len] = '\0';
    return h->mid_len > 0 ? h->mid : "-";
}

/* The message's first event in the history journal (ternctl trace), held
 * until its commit answers (commit_cb). */
static void
journal_received(struct smtp_session *s, const char *qid)
{
    struct smtp_tx *tx = s->tx;
    struct hline *hp = xmalloc(sizeof(*hp)), *old;
    history_begin(hp, qid, "received");
    history_str(hp, "from", tx->env->sender);
    history_int(hp, "nrcpt", (int64_t)tx->env->n_rcpts);
    history_int(hp, "size", (int64_t)spool_writer_size(tx->w));
    if (tx->hscan.mid_len > 0)
        history_str(hp, "message_id", tx->hscan.mid);
    history_str(hp, "client", s->peer_str);
    history_str(hp, "client_name", smtp_client_name(s));
    history_str(hp, "helo", s->helo);
    history_str(hp, "user", s->auth_user);
    if (s->tls) {
        history_str(hp, "tls", s->tls_info->version);
        history_str(hp, "cipher", s->tls_info->cipher);
    }
    if (!hp->on) {
        buf_fini(&hp->b);
        free(hp);
        return;
    }
    /* One commit at a time per session: a line left from an earlier one
     * (it cannot be) would be dropped, not leaked. */
    old = map_del_u64(s->lp->journal_pending, s->id);
    if (old != NULL) {
        buf_fini(&old->b);
        free(old);
    }
    map_put_u64(s->lp->journal_pending, s->id, hp);
}

/* ---- after the data: the stages, then the commit ---- */

/* The stages that look at the complete message before it is queued, in
 * order. Each returns true when it has started work that ends with
 * smtp_tx_advance, false when it had nothing to do; either way it may have
 * decided with smtp_tx_decide. */
static bool (*const tx_stages[])(struct smtp_session *s) = {
    smtp_checks_stage,
    smtp_milter_stage,
    NULL,
};

static void tx_commit(struct smtp_session *s);

void
smtp_tx_decide(
    struct smtp_session *s, enum smtp_verdict v, const struct tern_status *st, const char *by)
{
    struct smtp_tx *tx = s->tx;
    if (v <= tx->verdict)
        return;
    tx->verdict = v;
    if (st != NULL)
        tx->verdict_st = *st;
    free(tx->verdict_by);
    tx->verdict_by = by != NULL ? xstrdup(by) : NULL;
}

void
smtp_tx_advance(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    TERN_ASSERT(s->state == SMTP_ST_FILTER && tx != NULL);
    /* Once refused, no later stage needs to look at it. */
    while (tx->verdict != SMTP_VERDICT_REFUSE && tx_stages[tx->stage] != NULL) {
        if (tx_stages[tx->stage++](s))
            return;
    }
    tx_commit(s);
}

static void
tx_finish(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct tern_status st;
    const char *qid = spool_writer_qid(tx->w);
    smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
    if (tx_rejected(s, &st)) {
        smtp_reply_status(s, &st);
        smtp_log_refused(s, qid, st.text, NULL, NULL);
        smtp_tx_reset(s);
        return;
    }
    /* A message that is all header gets the empty line that ends the header
     * section (RFC 5322 §2.1): receivers then see the fields as sent, and it
     * is what the DKIM signer signs. */
    smtp_checks_data_end(s);
    if (!tx->hscan.done)
        spool_writer_write(tx->w, "\r\n", 2);
    /* Nothing more is read until the message is answered. */
    s->state = SMTP_ST_FILTER;
    smtp_session_read(s, false);
    tx->stage = 0;
    smtp_tx_advance(s);
}

/* The stages' decision carried out: refused or discarded here, else
 * queued (held when quarantined). */
static void
tx_commit(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct logline l;
    const char *qid = spool_writer_qid(tx->w);
    if (tx->verdict == SMTP_VERDICT_REFUSE || tx->verdict == SMTP_VERDICT_DISCARD) {
        bool refuse = tx->verdict == SMTP_VERDICT_REFUSE;
        if (refuse) {
            /* who refused, for the rejects metric ("milter NAME", "dmarc") */
            const char *by = tx->verdict_by != NULL ? tx->verdict_by : "";
            if (strncmp(by, "milter", 6) == 0)
                s->reject_why = METRICS_REJ_MILTER + 1;
            else if (strcmp(by, "dmarc") == 0)
                s->reject_why = METRICS_REJ_DMARC + 1;
            smtp_reply_status(s, &tx->verdict_st);
            smtp_log_refused(s, qid, tx->verdict_st.text, NULL, NULL);
        } else {
            /* The filter's word: the client is told it was taken. */
            log_begin(&l, LOG_INFO, qid, "smtp", "discarded");
            log_int(&l, "sess", (int64_t)s->id);
            log_str(&l, "from", tx->env->sender);
            log_str(&l, "by", tx->verdict_by != NULL ? tx->verdict_by : "-");
            log_end(&l);
            smtp_reply(s, 250, "2.0.0", "Ok: queued as %s", qid);
        }
        s->state = SMTP_ST_READY;
        smtp_tx_reset(s);
        smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
        smtp_session_read(s, true);
        smtp_session_process(s);
        return;
    }
    if (tx->verdict == SMTP_VERDICT_HOLD)
        spool_writer_hold(tx->w); /* the writer's copy of the envelope is the one stored */
    log_begin(&l, LOG_INFO, qid, "smtp", "received");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    if (smtp_client_name(s) != NULL)
        log_str(&l, "client_name", smtp_client_name(s));
    log_str(&l, "helo", s->helo);
    log_str(&l, "from", tx->env->sender);
    log_int(&l, "nrcpt", (int64_t)tx->env->n_rcpts);
    log_int(&l, "size", (int64_t)spool_writer_size(tx->w));
    log_str(&l, "message_id", msgid_trim(&tx->hscan));
    if (s->auth_user)
        log_str(&l, "user", s->auth_user);
    if (s->tls) {
        log_str(&l, "tls", s->tls_info->version);
        log_str(&l, "cipher", s->tls_info->cipher);
    }
    if (tx->verdict == SMTP_VERDICT_HOLD) {
        log_str(&l, "held_by", tx->verdict_by != NULL ? tx->verdict_by : "-");
    }
    log_end(&l);
    journal_received(s, qid);
    if (tx->dkim != NULL) {
        dkim_attach(tx->w, tx->dkim, tx->dkim_skip);
        tx->dkim = NULL;
    }
    smtp_archive_at_commit(s->cfg, tx->w);
    /* The answer comes back to this session's loop; the scheduler learns of
     * the message on the spool owner's (the main) loop. */
    spool_writer_commit(tx->w, s->lp->inbox, commit_cb, s->id, s->lp);
    tx->w = NULL;
    smtp_tx_free(tx);
    s->tx = NULL;
    s->state = SMTP_ST_COMMIT;
    smtp_session_read(s, false);
}

/* DATA bytes in the input buffer: scanned, and moved to the writer. */
void
smtp_data_in(struct smtp_session *s, struct evbuffer *in)
{
    struct smtp_tx *tx = s->tx;
    struct smtp_data_sink sink = { sink_stuffed, sink_plain, tx };
    uint64_t used = 0;
    bool ended = smtp_data_read(&tx->rd, in, &sink, &used);
    if (tx->rd.sc.content > tx->max_size)
        tx->too_big = true;
    smtp_session_data_progress(s, used);
    if (ended)
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
        smtp_data_reader_init(&tx->rd, SMTP_DATA_BDAT);
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
        s->state = SMTP_ST_CHUNKING; /* more BDAT (or RSET) may follow */
        smtp_reply(s, 250, "2.0.0", "%llu octets received", (unsigned long long)tx->rd.sc.content);
        return;
    }
    smtp_bdat_finish(&tx->rd, &(struct smtp_data_sink){ sink_stuffed, sink_final, tx });
    tx_finish(s);
}

void
smtp_bdat_in(struct smtp_session *s, struct evbuffer *in)
{
    struct smtp_tx *tx = s->tx;
    struct smtp_data_sink sink = { sink_stuffed, sink_plain, tx };
    size_t used;
    if (tx->bdat_failed) {
        size_t have = evbuffer_get_length(in);
        used = have < tx->chunk_left ? have : (size_t)tx->chunk_left;
        if (evbuffer_drain(in, used) < 0)
            tern_panic("evbuffer_drain failed");
    } else {
        used = smtp_bdat_read(&tx->rd, in, tx->chunk_left, &sink);
        if (tx->rd.sc.content > tx->max_size)
            tx->too_big = true;
    }
    tx->chunk_left -= used;
    smtp_session_data_progress(s, used);
    if (tx->chunk_left == 0)
        bdat_chunk_done(s);
}

/*
 * One inbound SMTP session: a bounded command reader, a verb table whose
 * handlers check (state, syntax, policy) before they act, and the DATA/BDAT
 * paths that stream decoded bytes into a spool writer. A message is answered
 * 250 only from the spool's commit callback, which finds the session again by
 * id: a session that went away meanwhile is simply not answered.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "dkim/dkim.h"
#include "policy.h"
#include "sched/sched.h"
#include "smtp_int.h"
#include "util/cidr.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define SMTP_READ_CHUNK_MAX (1024 * 1024) /* stop reading beyond this much buffered input */
#define SMTP_OUT_FLUSH      (64 * 1024)
/* RFC 1870 §3, RFC 3461 §4.1, §5.1: extensions lengthen MAIL and RCPT lines. */
#define SMTP_MAIL_LINE_MAX (SMTP_CMD_LINE_MAX + 26 + 100 + 64)
#define SMTP_RCPT_LINE_MAX (SMTP_CMD_LINE_MAX + 500 + 64)
#define SMTP_READ_LINE_MAX SMTP_RCPT_LINE_MAX
#define SMTP_BDAT_SLACK    (1024 * 1024) /* see cmd_bdat */
/* RFC 4954 §4: AUTH lines and responses up to 12288 octets plus CRLF. */
#define SMTP_AUTH_READ_MAX (AUTH_LINE_MAX + 2)

static void session_read_cb(struct bufferevent *bev, void *arg);

/* Read and write timeouts of the session (RFC 5321 §4.5.3.2). */
void
smtp_session_timeout(struct smtp_session *s, int64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    bufferevent_set_timeouts(s->bev, &tv, &tv);
}

/* ---- replies ---- */

void
smtp_reply(struct smtp_session *s, int code, const char *esc, const char *fmt, ...)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    char text[STATUS_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (esc && *esc)
        evbuffer_add_printf(out, "%d %s %s\r\n", code, esc, text);
    else
        evbuffer_add_printf(out, "%d %s\r\n", code, text);
}

static void
reply_status(struct smtp_session *s, const struct tern_status *st)
{
    smtp_reply(s, st->code, st->esc, "%s", st->text);
}

/* Count a protocol error; at the limit answer 421 and close. */
bool
smtp_session_error(struct smtp_session *s)
{
    if (++s->errors < s->cfg->max_errors)
        return false;
    smtp_session_close(s, 421, "4.7.0", "Too many errors, closing connection");
    return true;
}

static void
log_refused(struct smtp_session *s, const char *qid, const char *reason, const char *detail)
{
    struct logline l;
    log_begin(&l, LOG_INFO, qid, "smtp", "refused");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    log_str(&l, "reason", reason);
    if (detail)
        log_str(&l, "detail", detail);
    log_end(&l);
}

/* ---- transactions ---- */

static void
tx_free(struct smtp_tx *tx)
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

void
smtp_tx_reset(struct smtp_session *s)
{
    tx_free(s->tx);
    s->tx = NULL;
    if (s->state != SMTP_ST_CONNECTED && s->state != SMTP_ST_CLOSING)
        s->state = SMTP_ST_READY;
}

/* ---- closing and freeing ---- */

static void
session_free_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_session *s = arg;
    s->srv->n_alive--;
    tx_free(s->tx);
    smtp_auth_reset(s);
    if (s->auth_timer)
        event_free(s->auth_timer);
    if (s->hs_timer)
        event_free(s->hs_timer);
    if (s->bev)
        bufferevent_free(s->bev);
    tls_ctx_unref(s->tls_ctx);
    config_unref(s->cfg);
    free(s->helo);
    free(s);
}

/* End the session now (no more replies). Freed from the loop, not here. */
void
smtp_session_kill(struct smtp_session *s)
{
    struct timeval zero = { 0, 0 };
    if (s->dead)
        return;
    s->dead = true;
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
    smtp_server_session_gone(s->srv, s);
    event_base_once(s->srv->base, -1, EV_TIMEOUT, session_free_cb, s, &zero);
}

/* Under STARTTLS the last reply has only reached the plaintext bufferevent
 * below the TLS filter when the filter's output drains: wait for that one. */
static void
under_drained_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct smtp_session *s = arg;
    if (evbuffer_get_length(buf) == 0)
        smtp_session_kill(s);
}

/* A closing session ends once its last reply has left (both layers under
 * TLS); until then the write callbacks come back here. */
static void
kill_when_flushed(struct smtp_session *s)
{
    struct bufferevent *under = bufferevent_get_underlying(s->bev);
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) > 0)
        return; /* session_write_cb fires once it drains (low watermark 0) */
    if (under != NULL && evbuffer_get_length(bufferevent_get_output(under)) > 0) {
        evbuffer_add_cb(bufferevent_get_output(under), under_drained_cb, s);
        return;
    }
    smtp_session_kill(s);
}

static void
session_write_cb(struct bufferevent *bev, void *arg)
{
    struct smtp_session *s = arg;
    if (s->state == SMTP_ST_CLOSING && !s->dead)
        kill_when_flushed(s);
}

void
smtp_session_close(struct smtp_session *s, int code, const char *esc, const char *text)
{
    if (s->dead || s->state == SMTP_ST_CLOSING)
        return;
    if (code)
        smtp_reply(s, code, esc, "%s", text);
    s->state = SMTP_ST_CLOSING;
    bufferevent_disable(s->bev, EV_READ);
    kill_when_flushed(s);
}

static void
session_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct smtp_session *s = arg;
    if (s->state == SMTP_ST_HANDSHAKE) {
        smtp_tls_event(s, what);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        struct logline l;
        log_begin(
            &l, LOG_INFO, s->tx && s->tx->w ? spool_writer_qid(s->tx->w) : NULL, "smtp", "timeout");
        log_int(&l, "sess", (int64_t)s->id);
        log_str(&l, "client", s->peer_str);
        log_end(&l);
        /* RFC 5321 §4.5.3.2: give up on an idle client; the write side may
         * still be usable for the 421. */
        bufferevent_enable(bev, EV_WRITE);
        smtp_session_close(s, 421, "4.4.2", "Error: timeout exceeded");
        return;
    }
    /* EOF or error: the client is gone; an unfinished transaction is dropped. */
    smtp_session_kill(s);
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

/* ---- commands ---- */

struct smtp_verb_entry {
    enum smtp_verb verb;
    const char *name;
    unsigned states; /* bit mask of enum smtp_state allowing it */
    size_t line_max; /* longest line accepted, including CRLF */
    void (*fn)(struct smtp_session *s, const struct smtp_cmd *c);
};

#define ST(x)  (1u << SMTP_ST_##x)
#define ST_ANY (ST(CONNECTED) | ST(READY) | ST(MAIL) | ST(RCPT))

static void
cmd_helo(struct smtp_session *s, const struct smtp_cmd *c, bool esmtp)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (c->arg_len == 0 || memchr(c->arg, ' ', c->arg_len) != NULL) {
        smtp_reply(s, 501, "5.5.4", "Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
        smtp_session_error(s);
        return;
    }
    smtp_tx_reset(s);
    free(s->helo);
    s->helo = xstrndup(c->arg, c->arg_len < 255 ? c->arg_len : 255);
    s->esmtp = esmtp;
    s->state = SMTP_ST_READY;
    if (!esmtp) {
        evbuffer_add_printf(out, "250 %s\r\n", s->cfg->hostname);
        return;
    }
    evbuffer_add_printf(out,
        "250-%s Hello [%s]\r\n250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n"
        "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-DSN\r\n",
        s->cfg->hostname, s->peer_str, (unsigned long long)s->cfg->max_message_size);
    /* RFC 3207 §4.2: no STARTTLS once TLS is on; AUTH only where allowed. */
    if (smtp_starttls_offered(s))
        evbuffer_add_printf(out, "250-STARTTLS\r\n");
    if (smtp_auth_offered(s) && s->auth_user == NULL)
        evbuffer_add_printf(out, "250-AUTH PLAIN LOGIN\r\n");
    evbuffer_add_printf(out, "250 HELP\r\n");
}

static void
cmd_ehlo(struct smtp_session *s, const struct smtp_cmd *c)
{
    cmd_helo(s, c, true);
}

static void
cmd_helo_plain(struct smtp_session *s, const struct smtp_cmd *c)
{
    cmd_helo(s, c, false);
}

static bool
has_non_ascii(const char *p)
{
    for (; *p; p++) {
        if ((unsigned char)*p >= 0x80)
            return true;
    }
    return false;
}

static void
cmd_mail(struct smtp_session *s, const struct smtp_cmd *c)
{
    struct tern_status st;
    struct smtp_mail_params mp;
    char *addr = NULL;
    size_t used = 0;
    memset(&mp, 0, sizeof(mp));
    if (smtp_parse_path(c->arg, c->arg_len, true, false, true, &addr, &used, &st) < 0 ||
        smtp_parse_mail_params(c->arg + used, c->arg_len - used, &mp, &st) < 0) {
        reply_status(s, &st);
        free(addr);
        smtp_mail_params_fini(&mp);
        smtp_session_error(s);
        return;
    }
    if (s->role != SMTP_ROLE_RELAY && s->auth_user == NULL) {
        /* CONTRACT.md: submission needs AUTH, even from relay_networks. */
        smtp_reply(s, 530, "5.7.0", "Authentication required");
        log_refused(s, NULL, "authentication required", NULL);
    } else if (s->auth_user != NULL &&
               !auth_sender_allowed(s->cfg->auth_sender_login, s->auth_user, addr)) {
        smtp_reply(
            s, 553, "5.7.1", "<%s>: Sender address not owned by user %s", addr, s->auth_user);
        log_refused(s, NULL, "sender not owned", addr);
    } else if (!mp.smtputf8 && has_non_ascii(addr)) {
        smtp_reply(s, 553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
    } else if (mp.has_size && mp.size > s->cfg->max_message_size) {
        smtp_reply(s, 552, "5.3.4", "Message size exceeds fixed limit of %llu bytes",
            (unsigned long long)s->cfg->max_message_size);
        log_refused(s, NULL, "size", NULL);
    } else {
        s->tx = xcalloc(1, sizeof(*s->tx));
        s->tx->env = xcalloc(1, sizeof(*s->tx->env));
        s->tx->env->sender = addr;
        addr = NULL;
        s->tx->env->envid = mp.envid;
        mp.envid = NULL;
        s->tx->env->ret = mp.ret;
        s->tx->env->body = mp.body;
        s->tx->env->smtputf8 = mp.smtputf8;
        s->tx->env->helo = xstrdup(s->helo ? s->helo : "");
        s->tx->env->client_addr = xstrdup(s->peer_str);
        s->state = SMTP_ST_MAIL;
        smtp_reply(s, 250, "2.1.0", "Ok");
    }
    free(addr);
    smtp_mail_params_fini(&mp);
}

static void
cmd_rcpt(struct smtp_session *s, const struct smtp_cmd *c)
{
    struct tern_status st;
    struct smtp_rcpt_params rp;
    struct smtp_tx *tx = s->tx;
    char *addr = NULL;
    size_t used = 0;
    memset(&rp, 0, sizeof(rp));
    if (smtp_parse_path(c->arg, c->arg_len, false, true, tx->env->smtputf8, &addr, &used, &st) <
            0 ||
        smtp_parse_rcpt_params(c->arg + used, c->arg_len - used, &rp, &st) < 0) {
        reply_status(s, &st);
        smtp_session_error(s);
    } else if (tx->env->n_rcpts >= s->cfg->max_recipients) {
        smtp_reply(s, 452, "4.5.3", "Too many recipients");
    } else if (!policy_may_relay(
                   s->cfg, (struct sockaddr *)&s->peer, s->auth_user != NULL, addr_domain(addr))) {
        smtp_reply(s, 554, "5.7.1", "<%s>: Relay access denied", addr);
        log_refused(s, NULL, "relay denied", addr);
        smtp_session_error(s);
    } else {
        spool_env_add_rcpt(tx->env, addr, rp.orcpt, rp.notify);
        s->state = SMTP_ST_RCPT;
        smtp_reply(s, 250, "2.1.5", "Ok");
    }
    free(addr);
    smtp_rcpt_params_fini(&rp);
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
 * and of the first BDAT chunk. (Nothing touches a disk before the commit,
 * so this cannot fail.) */
static bool
tx_open(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    tx->w = spool_writer_new(s->srv->sp, tx->env);
    add_received(s, spool_writer_qid(tx->w));
    tx_dkim_start(s);
    return true;
}

static void
cmd_data(struct smtp_session *s, const struct smtp_cmd *c)
{
    if (c->arg_len != 0) {
        smtp_reply(s, 501, "5.5.4", "Syntax: DATA");
        return;
    }
    if (!tx_open(s)) {
        smtp_reply(s, 452, "4.3.1", "Insufficient system storage");
        smtp_tx_reset(s);
        return;
    }
    smtp_data_init(&s->tx->dec, SMTP_DATA_DOT);
    s->state = SMTP_ST_DATA;
    smtp_session_timeout(s, s->cfg->data_timeout_ms);
    smtp_reply(s, 354, "", "End data with <CR><LF>.<CR><LF>");
}

static void
cmd_rset(struct smtp_session *s, const struct smtp_cmd *c)
{
    smtp_tx_reset(s);
    smtp_reply(s, 250, "2.0.0", "Ok");
}

static void
cmd_noop(struct smtp_session *s, const struct smtp_cmd *c)
{
    smtp_reply(s, 250, "2.0.0", "Ok");
}

static void
cmd_quit(struct smtp_session *s, const struct smtp_cmd *c)
{
    smtp_session_close(s, 221, "2.0.0", "Bye");
}

static void
cmd_vrfy(struct smtp_session *s, const struct smtp_cmd *c)
{
    /* RFC 5321 §3.5.3: neither confirm nor deny. */
    smtp_reply(s, 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
}

static void
cmd_expn(struct smtp_session *s, const struct smtp_cmd *c)
{
    smtp_reply(s, 502, "5.5.1", "EXPN not available");
}

static void
cmd_help(struct smtp_session *s, const struct smtp_cmd *c)
{
    smtp_reply(s, 214, "2.0.0",
        "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP; see RFC 5321");
}

static void cmd_bdat(struct smtp_session *s, const struct smtp_cmd *c);
static void bdat_chunk_done(struct smtp_session *s);

static const struct smtp_verb_entry verbs[] = {
    { SMTP_V_HELO, "HELO", ST_ANY, SMTP_CMD_LINE_MAX, cmd_helo_plain },
    { SMTP_V_EHLO, "EHLO", ST_ANY, SMTP_CMD_LINE_MAX, cmd_ehlo },
    { SMTP_V_MAIL, "MAIL", ST(READY), SMTP_MAIL_LINE_MAX, cmd_mail },
    { SMTP_V_RCPT, "RCPT", ST(MAIL) | ST(RCPT), SMTP_RCPT_LINE_MAX, cmd_rcpt },
    { SMTP_V_DATA, "DATA", ST(RCPT), SMTP_CMD_LINE_MAX, cmd_data },
    { SMTP_V_BDAT, "BDAT", ST_ANY, SMTP_CMD_LINE_MAX, cmd_bdat },
    { SMTP_V_RSET, "RSET", ST_ANY, SMTP_CMD_LINE_MAX, cmd_rset },
    { SMTP_V_NOOP, "NOOP", ST_ANY, SMTP_CMD_LINE_MAX, cmd_noop },
    { SMTP_V_QUIT, "QUIT", ST_ANY, SMTP_CMD_LINE_MAX, cmd_quit },
    { SMTP_V_VRFY, "VRFY", ST_ANY, SMTP_CMD_LINE_MAX, cmd_vrfy },
    { SMTP_V_EXPN, "EXPN", ST_ANY, SMTP_CMD_LINE_MAX, cmd_expn },
    { SMTP_V_HELP, "HELP", ST_ANY, SMTP_CMD_LINE_MAX, cmd_help },
    { SMTP_V_STARTTLS, "STARTTLS", ST_ANY, SMTP_CMD_LINE_MAX, smtp_cmd_starttls },
    { SMTP_V_AUTH, "AUTH", ST_ANY, SMTP_AUTH_READ_MAX, smtp_cmd_auth },
};

/* The reply for a verb that is known but not allowed in this state. */
static void
reply_bad_sequence(struct smtp_session *s, enum smtp_verb v)
{
    if (s->state == SMTP_ST_CONNECTED)
        smtp_reply(s, 503, "5.5.1", "Error: send HELO/EHLO first");
    else if (v == SMTP_V_MAIL)
        smtp_reply(s, 503, "5.5.1", "Error: nested MAIL command");
    else if (v == SMTP_V_RCPT)
        smtp_reply(s, 503, "5.5.1", "Error: need MAIL command");
    else
        smtp_reply(s, 503, "5.5.1", "Error: need RCPT command");
}

static void
session_command(struct smtp_session *s, const char *line, size_t len)
{
    struct smtp_cmd c;
    struct tern_status st;
    const struct smtp_verb_entry *e = NULL;
    if (smtp_parse_cmd(line, len, &c, &st) < 0) {
        reply_status(s, &st);
        smtp_session_error(s);
        return;
    }
    for (size_t i = 0; i < TERN_ARRAY_LEN(verbs); i++) {
        if (verbs[i].verb == c.verb)
            e = &verbs[i];
    }
    if (e == NULL) {
        smtp_reply(s, 500, "5.5.2", "Error: command not recognized");
        smtp_session_error(s);
    } else if (len + 2 > e->line_max) {
        smtp_reply(s, 500, "5.5.2", "Error: line too long");
        smtp_session_error(s);
    } else if ((e->states & (1u << s->state)) == 0) {
        reply_bad_sequence(s, c.verb);
        smtp_session_error(s);
    } else {
        e->fn(s, &c);
    }
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
    smtp_session_timeout(s, s->cfg->smtp_timeout_ms);
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
    smtp_session_timeout(s, s->cfg->smtp_timeout_ms);
    tx_flush(s);
    if (tx_rejected(s, &st)) {
        reply_status(s, &st);
        log_refused(s, qid, st.text, NULL);
        smtp_tx_reset(s);
        return;
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
    tx_free(tx);
    s->tx = NULL;
    s->state = SMTP_ST_COMMIT;
    bufferevent_disable(s->bev, EV_READ);
}

/* Feed DATA bytes from the input buffer to the decoder. */
static void
session_data(struct smtp_session *s, struct evbuffer *in)
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
    if (tx->dec.ended)
        tx_finish(s);
}

/* ---- BDAT (RFC 3030) ---- */

static void
cmd_bdat(struct smtp_session *s, const struct smtp_cmd *c)
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
        if (!tx_open(s)) {
            tx->bdat_failed = true;
            STATUS_SET(&tx->bdat_st, 452, "4.3.1", "Insufficient system storage");
        } else {
            smtp_data_init(&tx->dec, SMTP_DATA_BDAT);
        }
    }
    tx->chunk_left = size;
    tx->chunk_last = last;
    s->state = SMTP_ST_BDAT;
    smtp_session_timeout(s, s->cfg->data_timeout_ms);
    if (size == 0)
        bdat_chunk_done(s); /* "BDAT 0 LAST": no bytes follow (RFC 3030 §2) */
}

static void
bdat_chunk_done(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    smtp_session_timeout(s, s->cfg->smtp_timeout_ms);
    if (tx->bdat_failed) {
        reply_status(s, &tx->bdat_st);
        if (tx->chunk_last || tx->env->n_rcpts == 0) {
            tx_free(tx);
            s->tx = NULL;
            s->state = s->bdat_prev_state == SMTP_ST_CONNECTED ? SMTP_ST_CONNECTED : SMTP_ST_READY;
        } else {
            s->state = SMTP_ST_RCPT;
        }
        return;
    }
    if (!tx->chunk_last) {
        tx_flush(s);
        s->state = SMTP_ST_RCPT; /* more BDAT (or RSET) may follow */
        smtp_reply(s, 250, "2.0.0", "%llu octets received", (unsigned long long)tx->dec.out_bytes);
        return;
    }
    smtp_data_finish_bdat(&tx->dec, &tx->out);
    tx_finish(s);
}

static void
session_bdat(struct smtp_session *s, struct evbuffer *in)
{
    struct smtp_tx *tx = s->tx;
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
    }
    if (tx->chunk_left == 0)
        bdat_chunk_done(s);
}

/* ---- the input loop ---- */

/* Take one command line off the input. Returns 1 with the line in
 * line/len, 0 when more input is needed, -1 after an over-long line. */
/* The longest line to read now: AUTH lines and responses may be longer. */
static size_t
line_limit(struct smtp_session *s, struct evbuffer *in)
{
    char head[5];
    if (s->state == SMTP_ST_AUTH)
        return SMTP_AUTH_READ_MAX;
    if (evbuffer_copyout(in, head, sizeof(head)) == (ev_ssize_t)sizeof(head) &&
        str_ieq(head, 4, "AUTH") && head[4] == ' ')
        return SMTP_AUTH_READ_MAX;
    return SMTP_READ_LINE_MAX;
}

static int
read_command(struct smtp_session *s, struct evbuffer *in, char *line, size_t *len)
{
    size_t eol_len = 0, max = line_limit(s, in);
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
    if (p.pos < 0) {
        if (evbuffer_get_length(in) > max) {
            evbuffer_drain(in, evbuffer_get_length(in));
            s->discarding = true;
        }
        return 0;
    }
    if (s->discarding || (size_t)p.pos > max) {
        evbuffer_drain(in, (size_t)p.pos + eol_len);
        s->discarding = false;
        return -1;
    }
    evbuffer_remove(in, line, (size_t)p.pos);
    evbuffer_drain(in, eol_len);
    *len = (size_t)p.pos;
    if (*len > 0 && line[*len - 1] == '\r')
        (*len)--;
    return 1;
}

void
smtp_session_process(struct smtp_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    char line[SMTP_AUTH_READ_MAX + 1];
    while (!s->dead && evbuffer_get_length(in) > 0) {
        size_t len = 0;
        int r;
        if (s->state == SMTP_ST_CLOSING || s->state == SMTP_ST_COMMIT ||
            s->state == SMTP_ST_HANDSHAKE)
            return;
        if (s->state == SMTP_ST_AUTH &&
            (s->auth_step == SMTP_AUTH_CHECK || s->auth_step == SMTP_AUTH_DELAY))
            return; /* paused until the check is answered */
        if (s->state == SMTP_ST_DATA) {
            session_data(s, in);
            if (s->state == SMTP_ST_DATA)
                return; /* need more bytes */
            continue;
        }
        if (s->state == SMTP_ST_BDAT) {
            session_bdat(s, in);
            if (s->state == SMTP_ST_BDAT)
                return;
            continue;
        }
        r = read_command(s, in, line, &len);
        if (r == 0)
            return;
        if (r < 0) {
            if (s->state == SMTP_ST_AUTH) {
                smtp_auth_response(s, "", 0); /* an over-long response cannot decode */
                continue;
            }
            smtp_reply(s, 500, "5.5.2", "Error: line too long");
            smtp_session_error(s);
            continue;
        }
        if (s->state == SMTP_ST_AUTH)
            smtp_auth_response(s, line, len);
        else
            session_command(s, line, len);
        /* The line may have held a secret (AUTH). */
        explicit_bzero(line, len);
        if (s->state == SMTP_ST_HANDSHAKE)
            return; /* STARTTLS: s->bev changed; the old input was discarded */
    }
}

static void
session_read_cb(struct bufferevent *bev, void *arg)
{
    smtp_session_process(arg);
}

/* ---- start ---- */

void
smtp_session_callbacks(struct smtp_session *s)
{
    bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, SMTP_READ_CHUNK_MAX);
}

bool
smtp_session_start(
    struct smtp_server *srv, int fd, const struct sockaddr *sa, int salen, enum smtp_role role)
{
    struct smtp_session *s = xcalloc(1, sizeof(*s));
    s->id = ++srv->next_id;
    s->srv = srv;
    s->cfg = config_ref(srv->cfg);
    s->role = role;
    s->tls_ctx = srv->tls ? tls_ctx_ref(srv->tls) : NULL;
    memcpy(&s->peer, sa, (size_t)salen < sizeof(s->peer) ? (size_t)salen : sizeof(s->peer));
    sockaddr_ntop(sa, s->peer_str, sizeof(s->peer_str));
    s->state = SMTP_ST_CONNECTED;
    if (role == SMTP_ROLE_SMTPS) {
        if (s->tls_ctx == NULL || !smtp_tls_accept(s, fd))
            s->bev = NULL;
    } else {
        s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (s->bev == NULL) {
        evutil_closesocket(fd);
        if (s->hs_timer)
            event_free(s->hs_timer);
        tls_ctx_unref(s->tls_ctx);
        config_unref(s->cfg);
        free(s);
        return false;
    }
    map_put_u64(srv->sessions, s->id, s);
    srv->n_alive++;
    smtp_session_callbacks(s);
    smtp_session_timeout(
        s, role == SMTP_ROLE_SMTPS ? s->cfg->tls_handshake_timeout_ms : s->cfg->smtp_timeout_ms);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    if (role != SMTP_ROLE_SMTPS)
        smtp_reply(s, 220, "", "%s ESMTP tern", s->cfg->hostname);
    return true;
}

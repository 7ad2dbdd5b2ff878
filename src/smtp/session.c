/*
 * One inbound SMTP session: a bounded command reader and a verb table whose
 * handlers check (state, syntax, policy) before they act; replies, errors,
 * closing and freeing. The DATA/BDAT path (session_data.c) streams the
 * message into a spool writer owned by the transaction.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "config/config.h"
#include "metrics/metrics.h"
#include "policy.h"
#include "rcptmap.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define SMTP_READ_CHUNK_MAX (1024 * 1024) /* stop reading beyond this much buffered input */
/* One read of a plaintext socket: a new chain of the input buffer is then
 * one 64 KiB allocation (libevent adds its header and rounds up to a power
 * of two). */
#define SMTP_READ_SIZE (64 * 1024 - 512)
/* RFC 1870 §3, RFC 3461 §4.1, §5.1: extensions lengthen MAIL and RCPT lines. */
#define SMTP_MAIL_LINE_MAX (SMTP_CMD_LINE_MAX + 26 + 100 + 64)
#define SMTP_RCPT_LINE_MAX (SMTP_CMD_LINE_MAX + 500 + 64)
#define SMTP_READ_LINE_MAX SMTP_RCPT_LINE_MAX
/* RFC 4954 §4: AUTH lines and responses up to 12288 octets plus CRLF. */
#define SMTP_AUTH_READ_MAX (AUTH_LINE_MAX + 2)

/* How long a closing session may take to flush its last reply (at most
 * smtp_timeout). */
#define SMTP_CLOSE_GRACE_MS 10000

static void session_read_cb(struct bufferevent *bev, void *arg);
static void session_event_cb(struct bufferevent *bev, short what, void *arg);

/* ---- deadlines (RFC 5321 §4.5.3.2) ---- */

/* A deadline per session, at an absolute time (in its loop's wheel,
 * deadline.c): a command line or a data transfer has a deadline, not an
 * idle timeout, so a client dripping a byte now and then cannot hold its
 * session longer (the idea of Postfix's smtpd_per_record_deadline). */
void
smtp_session_deadline(struct smtp_session *s, int64_t ms)
{
    s->deadline_ms = tern_mono_ms() + ms;
    smtp_wheel_set(s);
}

void
smtp_session_data_progress(struct smtp_session *s, uint64_t bytes)
{
    s->deadline_ms = smtp_data_deadline(
        s->deadline_ms, tern_mono_ms(), bytes, s->cfg->min_data_rate, s->cfg->data_timeout_ms);
    smtp_wheel_set(s);
}

/* Is tern itself busy with the session (the client waits for us)? */
static bool
session_busy(const struct smtp_session *s)
{
    return s->state == SMTP_ST_FILTER || s->state == SMTP_ST_COMMIT ||
           s->state == SMTP_ST_HANDSHAKE ||
           (s->state == SMTP_ST_AUTH &&
               (s->auth_step == SMTP_AUTH_CHECK || s->auth_step == SMTP_AUTH_DELAY));
}

void
smtp_session_deadline_fell(struct smtp_session *s)
{
    struct logline l;
    bool data = s->state == SMTP_ST_DATA || s->state == SMTP_ST_BDAT;
    if (s->dead)
        return;
    if (s->state == SMTP_ST_CLOSING) {
        smtp_session_kill(s); /* the client does not take its last reply */
        return;
    }
    if (session_busy(s)) {
        smtp_session_deadline(s, s->cfg->smtp_timeout_ms); /* our wait, not the client's */
        return;
    }
    log_begin(
        &l, LOG_INFO, s->tx && s->tx->w ? spool_writer_qid(s->tx->w) : NULL, "smtp", "timeout");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    log_str(&l, "phase", data ? "data" : "command");
    log_end(&l);
    smtp_session_close(s, 421, "4.4.2", "Error: timeout exceeded");
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
    /* One reject per failed command (as smtp_count_reply counts them; not
     * our 421 at a timeout or shutdown), plus the closings a limit forces. */
    if (code >= 400 && ((s->counting && !s->cur_failed) || s->reject_why > 0))
        metrics_count_reject(s->reject_why > 0 ? (enum metrics_reject)(s->reject_why - 1)
                                               : metrics_reject_classify(code, esc));
    s->reject_why = 0;
    smtp_count_reply(s, code);
    if (esc && *esc)
        evbuffer_add_printf(out, "%d %s %s\r\n", code, esc, text);
    else
        evbuffer_add_printf(out, "%d %s\r\n", code, text);
    s->out_depth++;
}

void
smtp_reply_status(struct smtp_session *s, const struct tern_status *st)
{
    smtp_reply(s, st->code, st->esc, "%s", st->text);
}

/* Count a protocol error; at the limit answer 421 and close. */
bool
smtp_session_error(struct smtp_session *s)
{
    if (++s->errors < s->cfg->max_errors)
        return false;
    s->reject_why = METRICS_REJ_PROTOCOL + 1;
    smtp_session_close(s, 421, "4.7.0", "Too many errors, closing connection");
    return true;
}

/* ---- transactions ---- */

void
smtp_tx_reset(struct smtp_session *s)
{
    smtp_tx_free(s->tx);
    s->tx = NULL;
    if (s->state != SMTP_ST_CONNECTED && s->state != SMTP_ST_CLOSING)
        s->state = SMTP_ST_READY;
}

/* ---- closing and freeing ---- */

static void
session_free_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_session *s = arg;
    s->lp->n_alive--;
    smtp_tx_free(s->tx);
    smtp_milter_session_free(s);
    smtp_auth_reset(s);
    if (s->auth_timer)
        event_free(s->auth_timer);
    if (s->hs_timer)
        event_free(s->hs_timer);
    smtp_wheel_unset(s);
    if (s->flush_ev)
        event_free(s->flush_ev);
    if (s->rd_ev)
        event_free(s->rd_ev); /* before the bufferevent closes the socket */
    if (s->bev)
        bufferevent_free(s->bev);
    tls_ctx_unref(s->tls_ctx);
    config_unref(s->cfg);
    free(s->helo);
    free(s->auth_reply);
    free(s->tls_info);
    free(s->client_name);
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
    smtp_log_disconnect(s);
    /* Now, not at the free: ternd frees the resolver right after killing
     * every session. */
    smtp_name_cancel(s);
    smtp_wheel_unset(s);
    smtp_session_read(s, false);
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
    smtp_server_session_gone(s->srv, s);
    event_base_once(s->lp->base, -1, EV_TIMEOUT, session_free_cb, s, &zero);
}

static void kill_when_flushed(struct smtp_session *s);

static void
flush_ev_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_session *s = arg;
    if (!s->dead && s->state == SMTP_ST_CLOSING)
        kill_when_flushed(s);
}

/* Under STARTTLS the last reply (and the close_notify after it) has only
 * reached the plaintext bufferevent below the TLS filter when the filter's
 * output drains: when that one is empty too, closing goes on, from the
 * loop rather than from inside the buffer's own callback. */
static void
under_drained_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct smtp_session *s = arg;
    if (evbuffer_get_length(buf) == 0 && !s->dead && s->state == SMTP_ST_CLOSING)
        event_active(s->flush_ev, EV_TIMEOUT, 0);
}

/* Is the plaintext layer below the TLS filter still sending? Then watch it
 * (once) and come back when it is empty. */
static bool
under_busy(struct smtp_session *s)
{
    struct bufferevent *under = bufferevent_get_underlying(s->bev);
    if (under == NULL || evbuffer_get_length(bufferevent_get_output(under)) == 0)
        return false;
    /* Made only here, for the few sessions that close under TLS. Without
     * it the close goes on now: the kernel still sends what it holds. */
    if (s->flush_ev == NULL &&
        (s->flush_ev = event_new(s->lp->base, -1, 0, flush_ev_cb, s)) == NULL)
        return false;
    if (!s->under_watched) {
        evbuffer_add_cb(bufferevent_get_output(under), under_drained_cb, s);
        s->under_watched = true;
    }
    return true;
}

/* A closing session ends once its last reply has left (both layers under
 * TLS) and, on a TLS session, its close_notify after it; until then the
 * write callbacks come back here. */
static void
kill_when_flushed(struct smtp_session *s)
{
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) > 0)
        return; /* session_write_cb fires once it drains (low watermark 0) */
    if (under_busy(s))
        return;
    if (s->tls && !s->tls_closed) {
        s->tls_closed = true;
        smtp_tls_close_notify(s);
        if (under_busy(s))
            return;
    }
    smtp_session_kill(s);
}

/* ---- replies the client has not read ---- */

/* Bytes of replies still in tern: the session's output and, under STARTTLS,
 * the plaintext bufferevent below the TLS filter. */
static size_t
out_backlog(struct smtp_session *s)
{
    struct bufferevent *under = bufferevent_get_underlying(s->bev);
    size_t n = evbuffer_get_length(bufferevent_get_output(s->bev));
    if (under != NULL)
        n += evbuffer_get_length(bufferevent_get_output(under));
    return n;
}

/* May the session take input now? Not while tern itself is busy with it
 * (commit, handshake, password check), closing, or waiting for the client
 * to read its replies. */
static bool
read_wanted(const struct smtp_session *s)
{
    if (s->dead || s->out_paused)
        return false;
    if (s->state == SMTP_ST_CLOSING || s->state == SMTP_ST_FILTER || s->state == SMTP_ST_COMMIT ||
        s->state == SMTP_ST_HANDSHAKE)
        return false;
    return !(s->state == SMTP_ST_AUTH &&
             (s->auth_step == SMTP_AUTH_CHECK || s->auth_step == SMTP_AUTH_DELAY));
}

/* Too many replies unread: stop reading until the output drains (the write
 * callback resumes). True when paused. */
static bool
out_blocked(struct smtp_session *s)
{
    if (s->out_paused)
        return true;
    if (s->out_depth < SMTP_PIPELINE_DEPTH_MAX && out_backlog(s) < SMTP_OUT_BACKLOG_MAX)
        return false;
    s->out_paused = true;
    smtp_session_read(s, false);
    return true;
}

/* The output drained (low watermark 0): every reply has left this layer. */
static void
session_write_cb(struct bufferevent *bev, void *arg)
{
    struct smtp_session *s = arg;
    if (s->dead)
        return;
    s->out_depth = 0;
    if (s->state == SMTP_ST_CLOSING) {
        kill_when_flushed(s);
        return;
    }
    if (!s->out_paused)
        return;
    s->out_paused = false;
    if (read_wanted(s))
        smtp_session_read(s, true);
    smtp_session_process(s);
}

void
smtp_session_close(struct smtp_session *s, int code, const char *esc, const char *text)
{
    if (s->dead || s->state == SMTP_ST_CLOSING)
        return;
    s->counting = false; /* our 421 (timeout, shutdown, limits) fails no command */
    if (code)
        smtp_reply(s, code, esc, "%s", text);
    s->state = SMTP_ST_CLOSING;
    smtp_session_read(s, false);
    smtp_session_deadline(s, s->cfg->smtp_timeout_ms < SMTP_CLOSE_GRACE_MS ? s->cfg->smtp_timeout_ms
                                                                           : SMTP_CLOSE_GRACE_MS);
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
    /* EOF or error (no bufferevent timeouts are set: the deadline timer
     * times the client): the client is gone; an unfinished transaction is
     * dropped. */
    smtp_session_kill(s);
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
#define ST_ANY (ST(CONNECTED) | ST(READY) | ST(MAIL) | ST(RCPT) | ST(CHUNKING))

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
        smtp_reply(s, 250, "", "%s", s->cfg->hostname);
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
    s->out_depth++;
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
        smtp_reply_status(s, &st);
        free(addr);
        smtp_mail_params_fini(&mp);
        smtp_session_error(s);
        return;
    }
    if (s->role != SMTP_ROLE_RELAY && s->auth_user == NULL) {
        /* CONTRACT.md: submission needs AUTH, even from relay_networks. */
        smtp_reply(s, 530, "5.7.0", "Authentication required");
        smtp_log_refused(s, NULL, "authentication required", addr, NULL);
    } else if (s->auth_user != NULL &&
               !auth_sender_allowed(s->cfg->auth_sender_login, s->auth_user, addr)) {
        smtp_reply(
            s, 553, "5.7.1", "<%s>: Sender address not owned by user %s", addr, s->auth_user);
        smtp_log_refused(s, NULL, "sender not owned", addr, NULL);
    } else if (!mp.smtputf8 && has_non_ascii(addr)) {
        smtp_reply(s, 553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
    } else if (mp.has_size && mp.size > s->cfg->max_message_size) {
        smtp_reply(s, 552, "5.3.4", "Message size exceeds fixed limit of %llu bytes",
            (unsigned long long)s->cfg->max_message_size);
        smtp_log_refused(s, NULL, "size", addr, NULL);
    } else {
        s->tx = xcalloc(1, sizeof(*s->tx));
        s->tx->hscan.want_msgid = true; /* for the received line */
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
        if (!smtp_milter_mail(s)) /* else the filters answer */
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
        smtp_reply_status(s, &st);
        smtp_session_error(s);
    } else if (tx->env->n_rcpts >= s->cfg->max_recipients) {
        smtp_reply(s, 452, "4.5.3", "Too many recipients");
    } else if (!policy_may_relay(s->cfg, (struct sockaddr *)&s->peer, s->auth_user != NULL, addr)) {
        s->reject_why = METRICS_REJ_RELAY_DENIED + 1;
        smtp_reply(s, 554, "5.7.1", "<%s>: Relay access denied", addr);
        smtp_log_refused(s, NULL, "relay denied", NULL, addr);
        smtp_session_error(s);
    } else if (policy_rcpt_checked(s->cfg, addr) && !rcpt_list_accepts(s->srv->rcpts, addr)) {
        /* Refused now rather than bounced later to a sender who is most
         * likely forged (backscatter). */
        s->reject_why = METRICS_REJ_RECIPIENT + 1;
        smtp_reply(s, 550, "5.1.1", "<%s>: Recipient address rejected: unknown user", addr);
        smtp_log_refused(s, NULL, "unknown recipient", NULL, addr);
        smtp_session_error(s);
    } else {
        spool_env_add_rcpt(tx->env, addr, rp.orcpt, rp.notify);
        if (!smtp_milter_rcpt(s)) { /* else the filters answer */
            s->state = SMTP_ST_RCPT;
            smtp_reply(s, 250, "2.1.5", "Ok");
        }
    }
    free(addr);
    smtp_rcpt_params_fini(&rp);
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

static const struct smtp_verb_entry verbs[] = {
    { SMTP_V_HELO, "HELO", ST_ANY, SMTP_CMD_LINE_MAX, cmd_helo_plain },
    { SMTP_V_EHLO, "EHLO", ST_ANY, SMTP_CMD_LINE_MAX, cmd_ehlo },
    { SMTP_V_MAIL, "MAIL", ST(READY), SMTP_MAIL_LINE_MAX, cmd_mail },
    { SMTP_V_RCPT, "RCPT", ST(MAIL) | ST(RCPT), SMTP_RCPT_LINE_MAX, cmd_rcpt },
    { SMTP_V_DATA, "DATA", ST(RCPT), SMTP_CMD_LINE_MAX, smtp_cmd_data },
    { SMTP_V_BDAT, "BDAT", ST_ANY, SMTP_CMD_LINE_MAX, smtp_cmd_bdat },
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
    else if (s->state == SMTP_ST_CHUNKING && (v == SMTP_V_RCPT || v == SMTP_V_DATA))
        /* RFC 3030 §3: no DATA after BDAT; the envelope went to the spool
         * with the first chunk, so a later recipient could not be kept. */
        smtp_reply(s, 503, "5.5.1", "Error: %s not allowed after BDAT; send RSET",
            v == SMTP_V_RCPT ? "RCPT" : "DATA");
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
        smtp_count_command(s, SMTP_V_UNKNOWN);
        smtp_reply_status(s, &st);
        smtp_session_error(s);
        return;
    }
    for (size_t i = 0; i < TERN_ARRAY_LEN(verbs); i++) {
        if (verbs[i].verb == c.verb)
            e = &verbs[i];
    }
    smtp_count_command(s, e != NULL ? c.verb : SMTP_V_UNKNOWN);
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

static void plain_read_update(struct smtp_session *s);

static void
process_input(struct smtp_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    char line[SMTP_AUTH_READ_MAX + 1];
    while (!s->dead && evbuffer_get_length(in) > 0) {
        size_t len = 0;
        int r;
        if (s->state == SMTP_ST_CLOSING || s->state == SMTP_ST_FILTER ||
            s->state == SMTP_ST_COMMIT || s->state == SMTP_ST_HANDSHAKE)
            return;
        if (out_blocked(s))
            return;
        if (s->state == SMTP_ST_AUTH &&
            (s->auth_step == SMTP_AUTH_CHECK || s->auth_step == SMTP_AUTH_DELAY))
            return; /* paused until the check is answered */
        if (s->state == SMTP_ST_DATA) {
            smtp_data_in(s, in);
            if (s->state == SMTP_ST_DATA)
                return; /* need more bytes */
            continue;
        }
        if (s->state == SMTP_ST_BDAT) {
            smtp_bdat_in(s, in);
            if (s->state == SMTP_ST_BDAT)
                return;
            continue;
        }
        r = read_command(s, in, line, &len);
        if (r == 0)
            return;
        /* A line is in: the next one has its own deadline (a handler
         * entering DATA, BDAT or closing sets another). */
        smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
        if (r < 0) {
            if (s->state == SMTP_ST_AUTH) {
                smtp_auth_response(s, "", 0); /* an over-long response cannot decode */
                continue;
            }
            smtp_count_command(s, SMTP_V_UNKNOWN); /* no verb could be read */
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

void
smtp_session_process(struct smtp_session *s)
{
    process_input(s);
    /* Input drained (or filled up): reading a plaintext socket may go on
     * (or stop). */
    if (!s->dead && s->rd_ev != NULL)
        plain_read_update(s);
}

static void
session_read_cb(struct bufferevent *bev, void *arg)
{
    smtp_session_process(arg);
}

/* ---- reading a plaintext socket ---- */

/*
 * libevent 2.1 reads a socket bufferevent at most 4096 bytes at a time, and
 * asks ioctl(FIONREAD) before every read. A plaintext session is read here
 * instead: one readv of up to SMTP_READ_SIZE into space reserved at the end
 * of the input buffer (the free room of its last chain first, so chains fill
 * up), and nothing else. The bufferevent still does the writing; its read
 * side stays off. Buffered input is bounded as with the bufferevent's
 * watermark: no reading while SMTP_READ_CHUNK_MAX bytes wait.
 */

static void
plain_read_update(struct smtp_session *s)
{
    bool on = s->rd_on && !s->dead &&
              evbuffer_get_length(bufferevent_get_input(s->bev)) < SMTP_READ_CHUNK_MAX;
    if (on == s->rd_added)
        return;
    if (on)
        event_add(s->rd_ev, NULL);
    else
        event_del(s->rd_ev);
    s->rd_added = on;
}

void
smtp_session_read(struct smtp_session *s, bool on)
{
    if (s->rd_ev == NULL) {
        if (on)
            bufferevent_enable(s->bev, EV_READ);
        else
            bufferevent_disable(s->bev, EV_READ);
        return;
    }
    s->rd_on = on;
    plain_read_update(s);
}

void
smtp_session_plain_read_end(struct smtp_session *s)
{
    if (s->rd_ev == NULL)
        return;
    event_free(s->rd_ev);
    s->rd_ev = NULL;
    s->rd_added = false;
}

/* readv into the reserved space: bytes read, 0 at EOF, -1 with errno. */
static ssize_t
plain_readv(evutil_socket_t fd, struct evbuffer *in, size_t want)
{
    struct evbuffer_iovec v[2];
    struct iovec iov[2];
    size_t left = want;
    ssize_t r;
    int n = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
    if (n <= 0) {
        errno = ENOMEM;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (v[i].iov_len > left)
            v[i].iov_len = left;
        left -= v[i].iov_len;
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    do
        r = readv(fd, iov, n);
    while (r < 0 && errno == EINTR);
    left = r > 0 ? (size_t)r : 0;
    for (int i = 0; i < n; i++) {
        if (v[i].iov_len > left)
            v[i].iov_len = left;
        left -= v[i].iov_len;
    }
    evbuffer_commit_space(in, v, r <= 0 ? 0 : v[0].iov_len < (size_t)r ? n : 1);
    return r;
}

static void
plain_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_session *s = arg;
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t have = evbuffer_get_length(in);
    ssize_t r;
    if (s->dead || have >= SMTP_READ_CHUNK_MAX) {
        plain_read_update(s);
        return;
    }
    /* The socket bufferevent keeps the end of its input frozen for anyone
     * but itself. */
    evbuffer_unfreeze(in, 0);
    r = plain_readv(fd, in,
        SMTP_READ_CHUNK_MAX - have < SMTP_READ_SIZE ? SMTP_READ_CHUNK_MAX - have : SMTP_READ_SIZE);
    evbuffer_freeze(in, 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (r <= 0) {
        /* As the bufferevent would report it. */
        session_event_cb(s->bev, BEV_EVENT_READING | (r == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), s);
        return;
    }
    smtp_session_process(s);
}

/* ---- start ---- */

void
smtp_session_callbacks(struct smtp_session *s)
{
    bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, SMTP_READ_CHUNK_MAX);
    /* A TLS bufferevent decrypts into input space reserved this much at a
     * time (16 KiB by default): chains as large as a plaintext session's,
     * which is read by plain_read_cb. */
    bufferevent_set_max_single_read(s->bev, SMTP_READ_SIZE);
}

bool
smtp_session_start(struct smtp_loop *lp, int fd, const struct sockaddr *sa, int salen,
    enum smtp_role role, bool outsider)
{
    struct smtp_server *srv = lp->srv;
    struct smtp_session *s = xcalloc(1, sizeof(*s));
    s->id = atomic_fetch_add_explicit(&srv->next_id, 1, memory_order_relaxed) + 1;
    s->srv = srv;
    s->lp = lp;
    s->outsider = outsider;
    s->cfg = config_ref(lp->cfg);
    s->role = role;
    s->tls_ctx = lp->tls ? tls_ctx_ref(lp->tls) : NULL;
    memcpy(&s->peer, sa, (size_t)salen < sizeof(s->peer) ? (size_t)salen : sizeof(s->peer));
    sockaddr_ntop(sa, s->peer_str, sizeof(s->peer_str));
    s->state = SMTP_ST_CONNECTED;
    if (role == SMTP_ROLE_SMTPS) {
        if (s->tls_ctx == NULL || !smtp_tls_accept(s, fd))
            s->bev = NULL;
    } else {
        s->bev = bufferevent_socket_new(lp->base, fd, BEV_OPT_CLOSE_ON_FREE);
        s->rd_ev = event_new(lp->base, fd, EV_READ | EV_PERSIST, plain_read_cb, s);
    }
    if (s->bev == NULL || (role != SMTP_ROLE_SMTPS && s->rd_ev == NULL)) {
        if (s->rd_ev)
            event_free(s->rd_ev);
        if (s->bev != NULL)
            bufferevent_free(s->bev);
        else
            evutil_closesocket(fd);
        if (s->hs_timer)
            event_free(s->hs_timer);
        tls_ctx_unref(s->tls_ctx);
        config_unref(s->cfg);
        free(s);
        return false;
    }
    map_put_u64(lp->sessions, s->id, s);
    atomic_store_explicit(&lp->open, map_count(lp->sessions), memory_order_relaxed);
    atomic_fetch_add_explicit(&lp->accepted, 1, memory_order_relaxed);
    lp->n_alive++;
    smtp_log_connect(s);
    smtp_name_start(s);
    smtp_session_callbacks(s);
    bufferevent_enable(s->bev, EV_WRITE);
    smtp_session_read(s, true);
    /* smtps: the handshake timer runs until the greeting. */
    if (role != SMTP_ROLE_SMTPS) {
        smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
        smtp_reply(s, 220, "", "%s ESMTP tern", s->cfg->hostname);
    }
    return true;
}

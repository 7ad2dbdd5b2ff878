/*
 * The AUTH command (RFC 4954) in a session: PLAIN and LOGIN exchanges with
 * or without an initial response, the password check on the crypt worker
 * (input paused meanwhile; the answer finds the session again by id), a
 * delayed 535 and the per-address lockout. Each check is charged to the
 * client's address before it is queued and settled when its answer comes,
 * whether or not the session is still there. The authenticated identity
 * lives only in this session and is dropped by STARTTLS and at its end.
 * The users and the throttle are the server's, shared by every receive
 * loop under auth_mu; a check's answer comes back to the asking loop.
 */
#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/metrics.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

static bool
is_loopback(const union smtp_peer *p)
{
    if (p->sa.sa_family == AF_INET)
        return (ntohl(p->in4.sin_addr.s_addr) >> 24) == 127;
    if (p->sa.sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = &p->in6;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            return s6->sin6_addr.s6_addr[12] == 127;
        return IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr);
    }
    return false;
}

/* CONTRACT.md: never on plaintext outside loopback. */
bool
smtp_auth_offered(const struct smtp_session *s)
{
    if (!smtp_server_auth_on(s->srv) || s->cfg->auth_users_file == NULL)
        return false;
    return s->tls || (s->cfg->auth_allow_plaintext_loopback && is_loopback(&s->peer));
}

static void
end_exchange(struct smtp_session *s)
{
    if (s->creds != NULL) {
        auth_creds_clear(s->creds);
        FREE_NULL(&s->creds);
    }
    s->auth_step = SMTP_AUTH_NONE;
    if (s->state == SMTP_ST_AUTH)
        s->state = SMTP_ST_READY;
}

void
smtp_auth_reset(struct smtp_session *s)
{
    end_exchange(s);
    if (s->auth_timer)
        evtimer_del(s->auth_timer);
    secret_free(s->auth_user);
    s->auth_user = NULL;
    s->auth_close = false;
}

/* Resume reading after a paused step. */
static void
resume(struct smtp_session *s)
{
    smtp_session_read(s, true);
    smtp_session_process(s);
}

static void
auth_log(struct smtp_session *s, enum log_level lvl, const char *event, const char *user,
    const char *reason)
{
    struct logline l;
    log_begin(&l, lvl, NULL, "smtp", event);
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    if (user)
        log_str(&l, "user", user);
    if (reason)
        log_str(&l, "reason", reason);
    log_end(&l);
}

static void
auth_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_session *s = arg;
    if (s->dead || s->auth_step != SMTP_AUTH_DELAY)
        return;
    end_exchange(s);
    if (s->auth_close) {
        smtp_session_close(s, s->auth_reply->code, s->auth_reply->esc, s->auth_reply->text);
        return;
    }
    smtp_reply(s, s->auth_reply->code, s->auth_reply->esc, "%s", s->auth_reply->text);
    resume(s);
}

/* The throttle belongs to the server: the current configuration (as the
 * loop last took it) sets it. */
static struct auth_limits
limits_of(const struct smtp_loop *lp)
{
    struct auth_limits lim = { lp->cfg->auth_max_failures, lp->cfg->auth_failure_window_ms,
        lp->cfg->auth_lockout_ms };
    return lim;
}

/* A failed login: answer after a delay, closing when it locked the address. */
static void
auth_failed(struct smtp_session *s, const char *reason, bool locked)
{
    int64_t ms = s->cfg->auth_failure_delay_ms;
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    auth_log(s, LOG_WARN, "auth_failed", NULL, locked ? "lockout" : reason);
    if (s->creds)
        auth_creds_clear(s->creds);
    s->auth_close = locked;
    /* Held apart from the session: most sessions never fail a login, and
     * an idle session's size is what a flood of connections costs. */
    if (s->auth_reply == NULL)
        s->auth_reply = xmalloc(sizeof(*s->auth_reply));
    metrics_count_auth_failure();
    s->reject_why = 1 + (locked ? METRICS_REJ_RATE : METRICS_REJ_AUTH_FAILED);
    if (locked)
        STATUS_SET(
            s->auth_reply, 421, "4.7.0", "Too many authentication failures, closing connection");
    else
        STATUS_SET(s->auth_reply, 535, "5.7.8", "Error: authentication failed");
    s->auth_step = SMTP_AUTH_DELAY;
    smtp_session_read(s, false);
    if (s->auth_timer == NULL)
        s->auth_timer = evtimer_new(s->lp->base, auth_timer_cb, s);
    evtimer_add(s->auth_timer, &tv);
}

/* Credentials that can never succeed: a failure without a check. */
static void
auth_denied(struct smtp_session *s)
{
    unsigned char key[AUTH_KEY_MAX];
    size_t kl = auth_throttle_key((const struct sockaddr *)&s->peer, key);
    struct auth_limits lim = limits_of(s->lp);
    bool locked;
    pthread_mutex_lock(&s->srv->auth_mu);
    locked = auth_throttle_fail(s->srv->throttle, key, kl, tern_mono_ms(), &lim);
    pthread_mutex_unlock(&s->srv->auth_mu);
    auth_failed(s, "unacceptable credentials", locked);
}

/* No check for now: 454, and the exchange is over. */
static void
auth_try_later(struct smtp_session *s, const char *text, const char *reason)
{
    end_exchange(s);
    smtp_reply(s, 454, "4.7.0", "%s", text);
    auth_log(s, LOG_WARN, "auth_refused", NULL, reason);
}

/* With auth_mu held. */
static void
refresh_users(struct smtp_session *s)
{
    struct buf warn = BUF_INIT, err = BUF_INIT;
    if (auth_users_refresh(s->srv->users, false, &warn, &err) < 0)
        auth_log(s, LOG_ERROR, "auth_users_unreadable", NULL, err.data);
    else if (warn.len > 0)
        auth_log(s, LOG_WARN, "auth_users_bad_lines", NULL, warn.data);
    buf_fini(&warn);
    buf_fini(&err);
}

/* Charge the attempt to the address and queue the check, with auth_mu
 * held (the users and the throttle are shared by every loop). NULL when
 * queued, else why not. */
static const char *
submit_check(struct smtp_session *s, const unsigned char *key, size_t kl)
{
    struct smtp_server *srv = s->srv;
    struct auth_limits lim = limits_of(s->lp);
    const char *hash;
    bool unknown, remote = srv->worker != NULL && auth_worker_is_remote(srv->worker);
    int rc;
    if (srv->users == NULL && !(remote && atomic_load(&srv->auth_remote_on)))
        return "no users"; /* a reload dropped auth_users_file */
    if (!auth_throttle_begin(srv->throttle, key, kl, tern_mono_ms(), &lim))
        return "locked out";
    if (remote) {
        /* The keys process looks the user up (the hashes are there); the
         * answer comes back to this session's loop all the same. */
        rc = auth_worker_submit_user(
            srv->worker, s->lp->inbox, s->lp, s->id, key, kl, s->creds->user, s->creds->pass);
    } else {
        refresh_users(s);
        hash = auth_users_hash(srv->users, s->creds->user);
        unknown = hash == NULL;
        /* An unknown user costs a crypt all the same (no user enumeration). */
        if (unknown)
            hash = auth_users_dummy_hash(srv->users);
        rc = auth_worker_submit(
            srv->worker, s->lp->inbox, s->lp, s->id, key, kl, hash, s->creds->pass, unknown);
    }
    if (rc < 0) {
        /* Never checked: the attempt is given back. */
        auth_throttle_end(srv->throttle, key, kl, false, tern_mono_ms(), &lim);
        return "worker queue full";
    }
    return NULL;
}

/* Credentials complete: charge the attempt to the address, then hand the
 * check to the worker. */
static void
start_check(struct smtp_session *s)
{
    unsigned char key[AUTH_KEY_MAX];
    size_t kl = auth_throttle_key((const struct sockaddr *)&s->peer, key);
    const char *why;
    pthread_mutex_lock(&s->srv->auth_mu);
    why = submit_check(s, key, kl);
    pthread_mutex_unlock(&s->srv->auth_mu);
    if (why != NULL && strcmp(why, "locked out") == 0) {
        auth_try_later(s, "Too many authentication failures, try again later", why);
        return;
    }
    if (why != NULL) {
        auth_try_later(s, "Temporary authentication failure, try again later", why);
        return;
    }
    explicit_bzero(s->creds->pass, sizeof(s->creds->pass));
    s->auth_step = SMTP_AUTH_CHECK;
    smtp_session_read(s, false);
}

/* One line per password check run (the count an operator audits). */
static void
log_check(const struct auth_result *r, bool locked)
{
    struct logline l;
    char client[INET6_ADDRSTRLEN + 4];
    auth_throttle_key_str(r->key, r->klen, client, sizeof(client));
    log_begin(&l, LOG_DEBUG, NULL, "smtp", "auth_check");
    log_int(&l, "sess", (int64_t)r->id);
    log_str(&l, "client", client);
    log_str(&l, "result", r->ok ? "ok" : "failed");
    log_end(&l);
    if (!locked)
        return;
    log_begin(&l, LOG_WARN, NULL, "smtp", "auth_lockout");
    log_str(&l, "client", client);
    log_end(&l);
}

void
smtp_auth_done(const struct auth_result *r, void *arg)
{
    struct smtp_loop *lp = arg;
    struct smtp_session *s = map_get_u64(lp->sessions, r->id);
    struct auth_limits lim = limits_of(lp);
    bool locked;
    /* Settled even when the session is gone: hanging up does not take a
     * failed guess back. */
    pthread_mutex_lock(&lp->srv->auth_mu);
    locked = auth_throttle_end(lp->srv->throttle, r->key, r->klen, !r->ok, tern_mono_ms(), &lim);
    pthread_mutex_unlock(&lp->srv->auth_mu);
    log_check(r, locked);
    if (s == NULL || s->dead || s->state != SMTP_ST_AUTH || s->auth_step != SMTP_AUTH_CHECK)
        return; /* the session went away meanwhile */
    if (!r->ok) {
        auth_failed(s, "bad credentials", locked);
        return;
    }
    s->auth_user = xstrdup(s->creds->user);
    end_exchange(s);
    auth_log(s, LOG_INFO, "auth", s->auth_user, NULL);
    smtp_reply(s, 235, "2.7.0", "Authentication successful");
    resume(s);
}

/* Feed one decoded step; b64/len is a response (or initial response). */
static void
auth_step(struct smtp_session *s, const char *b64, size_t len)
{
    enum auth_dec d;
    switch (s->auth_step) {
    case SMTP_AUTH_PLAIN:
        d = auth_plain_decode(b64, len, s->creds);
        break;
    case SMTP_AUTH_LOGIN_USER:
        d = auth_login_decode(b64, len, s->creds->user, sizeof(s->creds->user));
        break;
    case SMTP_AUTH_LOGIN_PASS:
        d = auth_login_decode(b64, len, s->creds->pass, sizeof(s->creds->pass));
        break;
    default:
        tern_panic("auth step %d", (int)s->auth_step);
    }
    if (d == AUTH_DEC_BAD) {
        end_exchange(s);
        smtp_reply(s, 501, "5.5.2", "Error: cannot decode response");
        smtp_session_error(s);
    } else if (d == AUTH_DEC_DENIED) {
        auth_denied(s);
    } else if (s->auth_step == SMTP_AUTH_LOGIN_USER) {
        s->auth_step = SMTP_AUTH_LOGIN_PASS;
        smtp_reply(s, 334, "", "UGFzc3dvcmQ6"); /* "Password:" */
    } else {
        start_check(s);
    }
}

void
smtp_auth_response(struct smtp_session *s, const char *line, size_t len)
{
    if (s->auth_step == SMTP_AUTH_CHECK || s->auth_step == SMTP_AUTH_DELAY)
        return; /* input is paused; nothing should arrive here */
    if (len == 1 && line[0] == '*') {
        end_exchange(s); /* RFC 4954 §4: the client cancelled */
        smtp_reply(s, 501, "5.7.0", "Authentication cancelled");
        return;
    }
    auth_step(s, line, len);
}

/* Why AUTH cannot start now, replied; false when it may. */
static bool
auth_refused(struct smtp_session *s)
{
    unsigned char key[AUTH_KEY_MAX];
    struct auth_limits lim = limits_of(s->lp);
    size_t kl;
    bool blocked;
    if (!smtp_server_auth_on(s->srv) || s->cfg->auth_users_file == NULL) {
        smtp_reply(s, 502, "5.5.1", "Command not available");
    } else if (!smtp_auth_offered(s)) {
        /* RFC 4954 §4 */
        smtp_reply(s, 538, "5.7.11", "Encryption required for requested authentication mechanism");
    } else if (s->state == SMTP_ST_CONNECTED) {
        smtp_reply(s, 503, "5.5.1", "Error: send EHLO first");
    } else if (s->auth_user != NULL) {
        smtp_reply(s, 503, "5.5.1", "Error: already authenticated");
    } else if (s->tx != NULL) {
        smtp_reply(s, 503, "5.5.1", "Error: MAIL transaction in progress");
    } else {
        kl = auth_throttle_key((const struct sockaddr *)&s->peer, key);
        pthread_mutex_lock(&s->srv->auth_mu);
        blocked = auth_throttle_blocked(s->srv->throttle, key, kl, tern_mono_ms(), &lim);
        pthread_mutex_unlock(&s->srv->auth_mu);
        if (!blocked)
            return false;
        s->reject_why = METRICS_REJ_RATE + 1;
        smtp_reply(s, 454, "4.7.0", "Too many authentication failures, try again later");
        auth_log(s, LOG_WARN, "auth_refused", NULL, "locked out");
        return true;
    }
    smtp_session_error(s);
    return true;
}

void
smtp_cmd_auth(struct smtp_session *s, const struct smtp_cmd *c)
{
    const char *sp = memchr(c->arg, ' ', c->arg_len);
    size_t mlen = sp ? (size_t)(sp - c->arg) : c->arg_len;
    const char *ir = sp ? sp + 1 : NULL;
    size_t irlen = sp ? c->arg_len - mlen - 1 : 0;
    if (auth_refused(s))
        return;
    if (str_ieq(c->arg, mlen, "PLAIN")) {
        s->auth_step = SMTP_AUTH_PLAIN;
        s->auth_mech = "PLAIN";
    } else if (str_ieq(c->arg, mlen, "LOGIN")) {
        s->auth_step = SMTP_AUTH_LOGIN_USER;
        s->auth_mech = "LOGIN";
    } else {
        smtp_reply(s, 504, "5.5.4", "Unrecognized authentication type");
        smtp_session_error(s);
        return;
    }
    if (ir != NULL && (irlen == 0 || memchr(ir, ' ', irlen) != NULL)) {
        s->auth_step = SMTP_AUTH_NONE;
        smtp_reply(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
        smtp_session_error(s);
        return;
    }
    s->creds = xcalloc(1, sizeof(*s->creds));
    s->state = SMTP_ST_AUTH;
    if (ir != NULL)
        auth_step(s, ir, irlen);
    else if (s->auth_step == SMTP_AUTH_PLAIN)
        smtp_reply(s, 334, "", "%s", ""); /* an empty challenge: "334 " */
    else
        smtp_reply(s, 334, "", "VXNlcm5hbWU6"); /* "Username:" */
}

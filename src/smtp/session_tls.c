/*
 * TLS for inbound sessions: STARTTLS (RFC 3207) puts an OpenSSL filter
 * bufferevent over the plaintext one after throwing away every byte the
 * client sent after the STARTTLS line (the command-injection class,
 * CVE-2011-0411); smtps (RFC 8314) starts with the handshake and greets
 * after it. Either way the session then starts over at CONNECTED.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_int.h"
#include "util/log.h"
#include "util/util.h"

bool
smtp_starttls_offered(const struct smtp_session *s)
{
    return s->tls_ctx != NULL && !s->tls;
}

static void
hs_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_session *s = arg;
    struct logline l;
    if (s->dead || s->state != SMTP_ST_HANDSHAKE)
        return;
    log_begin(&l, LOG_INFO, NULL, "smtp", "tls_failed");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    log_str(&l, "reason", "handshake timeout");
    log_end(&l);
    smtp_session_kill(s); /* no plaintext reply is possible mid-handshake */
}

static void
hs_timer_start(struct smtp_session *s)
{
    int64_t ms = s->cfg->tls_handshake_timeout_ms;
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    if (s->hs_timer == NULL)
        s->hs_timer = evtimer_new(s->lp->base, hs_timeout_cb, s);
    evtimer_add(s->hs_timer, &tv);
}

bool
smtp_tls_accept(struct smtp_session *s, int fd)
{
    SSL *ssl = tls_server_ssl_new(s->tls_ctx);
    if (ssl == NULL)
        return false;
    s->bev = bufferevent_openssl_socket_new(
        s->lp->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (s->bev == NULL) {
        SSL_free(ssl);
        return false;
    }
    /* Many clients close without close_notify; that is not an attack on
     * SMTP, whose own QUIT/replies mark the end of data. */
    bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
    s->state = SMTP_ST_HANDSHAKE;
    hs_timer_start(s);
    return true;
}

void
smtp_cmd_starttls(struct smtp_session *s, const struct smtp_cmd *c)
{
    struct bufferevent *under = s->bev, *bev;
    struct evbuffer *in = bufferevent_get_input(under);
    size_t junk;
    SSL *ssl;
    if (s->tls) {
        smtp_reply(s, 503, "5.5.1", "Error: TLS already active"); /* RFC 3207 §4.2 */
        smtp_session_error(s);
        return;
    }
    if (!smtp_starttls_offered(s)) {
        smtp_reply(s, 502, "5.5.1", "Command not available");
        smtp_session_error(s);
        return;
    }
    if (c->arg_len != 0) {
        smtp_reply(s, 501, "5.5.4", "Syntax: STARTTLS");
        smtp_session_error(s);
        return;
    }
    if (s->tx != NULL) {
        smtp_reply(s, 503, "5.5.1", "Error: MAIL transaction in progress");
        smtp_session_error(s);
        return;
    }
    ssl = tls_server_ssl_new(s->tls_ctx);
    if (ssl == NULL) {
        smtp_reply(s, 454, "4.7.0", "TLS not available due to temporary reason");
        return;
    }
    smtp_reply(s, 220, "2.0.0", "Ready to start TLS");
    /* RFC 3207 §4.2 / CVE-2011-0411: nothing sent in plaintext after the
     * STARTTLS line may be acted on. Drop it all before the handshake. */
    junk = evbuffer_get_length(in);
    if (junk > 0) {
        struct logline l;
        evbuffer_drain(in, junk);
        log_begin(&l, LOG_WARN, NULL, "smtp", "starttls_pipelined");
        log_int(&l, "sess", (int64_t)s->id);
        log_str(&l, "client", s->peer_str);
        log_int(&l, "discarded", (int64_t)junk);
        log_end(&l);
    }
    TERN_ASSERT(evbuffer_get_length(in) == 0);
    /* RFC 3207 §4.2: forget everything learnt from the client. */
    smtp_tx_reset(s);
    FREE_NULL(&s->helo);
    s->esmtp = false;
    smtp_auth_reset(s);
    smtp_session_plain_read_end(s);
    bev = bufferevent_openssl_filter_new(
        s->lp->base, under, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        SSL_free(ssl);
        smtp_session_kill(s);
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    /* Unread replies stay bounded under TLS too (see out_blocked). */
    bufferevent_setwatermark(under, EV_WRITE, 0, SMTP_OUT_BACKLOG_MAX);
    s->bev = bev;
    s->state = SMTP_ST_HANDSHAKE;
    smtp_session_callbacks(s);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    hs_timer_start(s);
}

static void
log_tls_failure(struct smtp_session *s, short what)
{
    struct logline l;
    char why[256];
    unsigned long e = bufferevent_get_openssl_error(s->bev);
    log_begin(&l, LOG_INFO, NULL, "smtp", "tls_failed");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    log_str(&l, "reason",
        tls_error_text(e, why, sizeof(why),
            (what & BEV_EVENT_EOF) ? "connection closed during handshake" : "handshake failed"));
    log_end(&l);
}

/* A failed STARTTLS handshake: OpenSSL wrote its alert (protocol_version,
 * handshake_failure...) into the plaintext layer, whose writing libevent
 * has just stopped. Send it on the socket before closing, so the client
 * learns why (RFC 8446 §6.2). Best effort: one small write on a socket
 * that has nothing else queued. With smtps the alert went to the socket
 * directly. */
static void
send_alert(struct smtp_session *s)
{
    struct bufferevent *under = bufferevent_get_underlying(s->bev);
    struct evbuffer *out = under ? bufferevent_get_output(under) : NULL;
    if (out == NULL || evbuffer_get_length(out) == 0)
        return;
    /* A socket bufferevent keeps the front of its output frozen for
     * everyone but itself. */
    evbuffer_unfreeze(out, 1);
    (void)evbuffer_write(out, bufferevent_getfd(under));
    evbuffer_freeze(out, 1);
}

void
smtp_tls_close_notify(struct smtp_session *s)
{
    SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
    /* RFC 8446 §6.1: the side that ends the connection sends close_notify,
     * so the peer can tell the end from a truncation. One direction is
     * enough: the session ends here and the client's own close_notify is
     * not waited for. Under STARTTLS it lands in the plaintext layer (the
     * caller flushes it); with smtps it goes to the socket directly. A
     * failure (the socket is full: a client that does not read) only loses
     * the alert. */
    if (ssl != NULL && SSL_shutdown(ssl) < 0)
        ERR_clear_error();
}

void
smtp_tls_event(struct smtp_session *s, short what)
{
    struct logline l;
    if (!(what & BEV_EVENT_CONNECTED)) {
        log_tls_failure(s, what);
        send_alert(s);
        smtp_session_kill(s);
        return;
    }
    if (s->hs_timer)
        evtimer_del(s->hs_timer);
    s->tls = true;
    if (s->tls_info == NULL)
        s->tls_info = xcalloc(1, sizeof(*s->tls_info));
    tls_describe(bufferevent_openssl_get_ssl(s->bev), s->tls_info);
    s->state = SMTP_ST_CONNECTED;
    smtp_session_deadline(s, s->cfg->smtp_timeout_ms);
    log_begin(&l, LOG_INFO, NULL, "smtp", "tls");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    log_str(&l, "version", s->tls_info->version);
    log_str(&l, "cipher", s->tls_info->cipher);
    log_end(&l);
    if (s->role == SMTP_ROLE_SMTPS)
        smtp_reply(s, 220, "", "%s ESMTP tern", s->cfg->hostname);
    smtp_session_process(s);
}

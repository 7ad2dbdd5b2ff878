/*
 * One outbound SMTP client connection (RFC 5321 §3, §4): connect to the
 * destination plan's targets in this connection's order until one greets
 * and answers EHLO (HELO fallback); a target that is down or refuses is
 * marked failed for the whole destination (RFC 5321 §5.1: next address, next
 * MX host, next hop); STARTTLS and AUTH on the way (secure.c says what the
 * hop demands). Then transactions (client_tx.c) pulled from the scheduler
 * one at a time until the per-connection limit or the idle timeout, then
 * QUIT. The connection owns its job (client_tx) until the done callback,
 * which runs exactly once per job; a closed connection is retired and freed
 * later by the reaper (delivery.c).
 */
#include "delivery/client_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics/metrics.h"
#include "proto/data.h"
#include "util/log.h"
#include "util/util.h"

static void on_greeting(struct deliv_conn *c, const struct tern_status *st);
static void on_ehlo(struct deliv_conn *c, const struct tern_status *st);
static void on_helo(struct deliv_conn *c, const struct tern_status *st);
static void on_idle_reply(struct deliv_conn *c, const struct tern_status *st);
static void on_rset(struct deliv_conn *c, const struct tern_status *st);
static void on_quit(struct deliv_conn *c, const struct tern_status *st);
static void on_starttls(struct deliv_conn *c, const struct tern_status *st);
static void on_auth(struct deliv_conn *c, const struct tern_status *st);
static void to_connect(struct deliv_conn *c);
static void to_tls(struct deliv_conn *c);
static void to_reply(struct deliv_conn *c);
static void to_idle(struct deliv_conn *c);
static void to_convert(struct deliv_conn *c);
static void to_quit(struct deliv_conn *c);
static void conn_close(struct deliv_conn *c);
static void creds_drop(struct deliv_conn *c);
static void auth_begin(struct deliv_conn *c);
static void read_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/* What each state does with a complete reply and with its timer. A state
 * without on_reply does not expect one (protocol error). */
static const struct state_ops {
    const char *phase;
    void (*on_reply)(struct deliv_conn *c, const struct tern_status *st);
    void (*on_timeout)(struct deliv_conn *c);
} state_ops[CS_N] = {
    [CS_START] = { "start", NULL, NULL },
    [CS_CONNECT] = { "connect", NULL, to_connect },
    [CS_GREETING] = { "greeting", on_greeting, to_reply },
    [CS_EHLO] = { "EHLO", on_ehlo, to_reply },
    [CS_HELO] = { "HELO", on_helo, to_reply },
    [CS_STARTTLS] = { "STARTTLS", on_starttls, to_reply },
    [CS_TLS] = { "TLS handshake", NULL, to_tls },
    [CS_AUTH] = { "AUTH", on_auth, to_reply },
    [CS_IDLE] = { "idle", on_idle_reply, to_idle },
    [CS_CONVERT] = { "conversion", NULL, to_convert },
    [CS_TX] = { "MAIL", on_tx_reply, to_reply },
    [CS_BODY] = { "DATA", NULL, to_reply },
    [CS_DOT] = { "DATA", on_dot, to_reply },
    [CS_RSET] = { "RSET", on_rset, to_reply },
    [CS_QUIT] = { "QUIT", on_quit, to_quit },
    [CS_DEAD] = { "closed", NULL, NULL },
};

/* ---- small helpers ---- */

static const char *
conn_phase(const struct deliv_conn *c)
{
    const struct client_tx *tx = c->tx;
    if (c->state == CS_TX && tx != NULL) {
        if (tx->n_replies == 0)
            return "MAIL";
        return tx->n_replies <= tx->n_sent ? "RCPT" : "DATA";
    }
    return state_ops[c->state].phase;
}

void
conn_arm(struct deliv_conn *c, int64_t ms)
{
    struct timeval tv;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    evtimer_add(c->timer, &tv);
}

const char *
conn_relay(const struct deliv_conn *c)
{
    return c->ready ? c->relay : NULL;
}

void
conn_write(struct deliv_conn *c, const char *s, size_t n)
{
    if (bufferevent_write(c->bev, s, n) < 0)
        tern_panic("bufferevent_write failed (out of memory)");
}

void
conn_write_str(struct deliv_conn *c, const char *s)
{
    conn_write(c, s, strlen(s));
}

/* Our own reason for a result (text cut at STATUS_TEXT_MAX). */
void
own_status(struct tern_status *st, int code, const char *esc, const char *fmt, ...)
{
    va_list ap;
    st->code = code;
    snprintf(st->esc, sizeof(st->esc), "%s", esc);
    va_start(ap, fmt);
    vsnprintf(st->text, sizeof(st->text), fmt, ap);
    va_end(ap);
}

/* ---- closing ---- */

/* Credentials are held only while AUTH runs (STYLE: clear secrets). */
static void
creds_drop(struct deliv_conn *c)
{
    if (c->creds == NULL)
        return;
    deliv_creds_clear(c->creds);
    free(c->creds);
    c->creds = NULL;
}

static void
conn_close(struct deliv_conn *c)
{
    struct logline l;
    struct deliv_dest *dest = c->dest;
    TERN_ASSERT(c->tx == NULL && c->state != CS_DEAD);
    c->state = CS_DEAD;
    creds_drop(c);
    deliv_idle_del(c->d, c);
    deliv_conv_forget(c->d, c);
    plan_unref(c->plan);
    c->plan = NULL;
    evtimer_del(c->timer);
    event_del(c->wake);
    if (c->bev != NULL) {
        deliv_bev_close(c->d, c->bev, !c->conn_error); /* safe inside its callbacks */
        c->bev = NULL;
    }
    log_begin(&l, LOG_DEBUG, NULL, "delivery", "closed");
    log_str(&l, "dest", dest->d->key);
    log_str(&l, "peer", c->peer);
    log_int(&l, "msgs", c->n_msgs);
    log_end(&l);
    c->dest = NULL;
    deliv_conn_retire(c->d, c, dest, c->ready);
}

static void target_failed(struct deliv_conn *c, const struct tern_status *st);

void
conn_fail(struct deliv_conn *c, const struct tern_status *st, bool remote)
{
    struct logline l;
    if (!c->ready && c->tx == NULL && c->state >= CS_SETUP_FIRST && c->state <= CS_SETUP_LAST) {
        target_failed(c, st); /* setup: try the next target */
        return;
    }
    log_begin(&l, LOG_DEBUG, c->tx ? c->tx->job.env->qid : NULL, "delivery", "session_failed");
    log_str(&l, "dest", c->dest->d->key);
    log_str(&l, "phase", conn_phase(c));
    log_int(&l, "code", st->code);
    log_str(&l, "reason", st->text);
    log_end(&l);
    if (c->tx != NULL) {
        tx_set_all(c->tx, RS_DONE, st, remote, true);
        tx_report(c, c->tx);
    }
    conn_close(c);
}

static void
conn_fail_lost(struct deliv_conn *c, int err)
{
    struct tern_status st;
    if (err != 0)
        own_status(&st, 421, "4.4.2", "connection to %s lost during %s: %s", c->peer, conn_phase(c),
            evutil_socket_error_to_string(err));
    else
        own_status(&st, 421, "4.4.2", "connection to %s lost during %s", c->peer, conn_phase(c));
    conn_fail(c, &st, false);
}

static void
conn_protocol_error(struct deliv_conn *c, const char *what)
{
    struct tern_status st;
    own_status(
        &st, 421, "4.5.0", "protocol error from %s during %s: %s", c->peer, conn_phase(c), what);
    conn_fail(c, &st, false);
}

/* Setup refused by the peer (greeting, EHLO/HELO): its reply becomes our
 * reason, so a 5xx here never bounces mail. */
static void
conn_refused(struct deliv_conn *c, const struct tern_status *rst)
{
    struct tern_status st;
    own_status(&st, 421, "4.4.0", "%s refused %s: %d %s%s%s", c->peer, conn_phase(c), rst->code,
        rst->esc, rst->esc[0] ? " " : "", rst->text);
    conn_fail(c, &st, false);
}

static void
conn_quit(struct deliv_conn *c)
{
    deliv_idle_del(c->d, c);
    if (c->bev == NULL) {
        conn_close(c);
        return;
    }
    conn_write_str(c, "QUIT\r\n");
    c->state = CS_QUIT;
    conn_arm(c, c->reply_ms);
}

/* ---- timeouts ---- */

static void connect_next(struct deliv_conn *c);

static const struct plan_host *
conn_host(const struct deliv_conn *c)
{
    return &c->plan->hosts[c->plan->t[c->order[c->cur]].host];
}

/* Forget what the last connection to a target learnt or set up. */
static void
target_reset(struct deliv_conn *c)
{
    c->reached = false;
    c->tls_active = false;
    c->implicit_tls = false;
    c->authed = false;
    c->conn_error = false;
    c->auth_mech = AUTHM_NONE;
    c->auth_step = 0;
    memset(&c->tls, 0, sizeof(c->tls));
    creds_drop(c);
}

/* Close the socket of the current target and forget its session state,
 * ready for connect_next(). */
static void
conn_drop_socket(struct deliv_conn *c)
{
    if (c->bev != NULL) {
        deliv_bev_close(c->d, c->bev, !c->conn_error);
        c->bev = NULL;
    }
    evtimer_del(c->timer);
    reply_reset(&c->reply);
    target_reset(c);
}

/* The current target is down or refused us: mark it for the whole
 * destination and go on with the next one (RFC 5321 §5.1). */
static void
target_failed(struct deliv_conn *c, const struct tern_status *st)
{
    struct logline l;
    /* The reason reported is the last one from a server that was reached
     * (a TLS or AUTH refusal says more than a later connection refused). */
    if (c->reached || !c->setup_err_reached) {
        c->setup_err = *st;
        c->setup_err_reached = c->reached;
    }
    c->plan->t[c->order[c->cur]].failed = true;
    log_begin(&l, LOG_WARN, NULL, "delivery", "host_failed");
    log_str(&l, "dest", c->dest->d->key);
    log_str(&l, "host", conn_host(c)->name);
    log_str(&l, "addr", c->peer);
    log_str(&l, "phase", conn_phase(c));
    log_str(&l, "tls_policy", deliv_tls_policy_name(c->policy));
    log_str(&l, "reason", st->text);
    log_end(&l);
    conn_drop_socket(c);
    c->tls_plain_retry = false;
    c->cur++;
    connect_next(c);
}

static void
connect_failed(struct deliv_conn *c, const char *why)
{
    struct tern_status st;
    own_status(&st, 421, "4.4.1", "connect to %s: %s", c->peer, why);
    target_failed(c, &st);
}

static void
to_connect(struct deliv_conn *c)
{
    connect_failed(c, "timed out");
}

static void
to_reply(struct deliv_conn *c)
{
    struct tern_status st;
    if (c->state == CS_BODY)
        own_status(&st, 421, "4.4.2", "timeout sending the message to %s", c->peer);
    else
        own_status(
            &st, 421, "4.4.2", "timeout waiting for reply to %s from %s", conn_phase(c), c->peer);
    conn_fail(c, &st, false);
}

static void
to_idle(struct deliv_conn *c)
{
    conn_quit(c);
}

static void
to_convert(struct deliv_conn *c)
{
    struct tern_status st;
    own_status(&st, 451, "4.3.0", "converting the message to 7 bit for %s took too long", c->peer);
    conn_fail(c, &st, false);
}

static void
to_quit(struct deliv_conn *c)
{
    conn_close(c);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct deliv_conn *c = arg;
    if (state_ops[c->state].on_timeout != NULL)
        state_ops[c->state].on_timeout(c);
}

/* ---- replies ---- */

static void
conn_on_reply(struct deliv_conn *c, const struct tern_status *st)
{
    /* RFC 5321 §3.8: 421 may come at any time; the server is closing. */
    if (st->code == 421 && c->state != CS_QUIT) {
        if (c->state <= CS_SETUP_LAST)
            conn_refused(c, st);
        else
            conn_fail(c, st, true);
        return;
    }
    if (state_ops[c->state].on_reply == NULL) {
        conn_protocol_error(c, "unexpected reply");
        return;
    }
    state_ops[c->state].on_reply(c, st);
}

static void
conn_reply_line(struct deliv_conn *c, const char *line, size_t len)
{
    const char *text;
    size_t tlen;
    bool first = c->reply.nlines == 0;
    switch (reply_feed_line(&c->reply, line, len, &text, &tlen)) {
    case REPLY_BAD:
        conn_protocol_error(c, "malformed reply");
        return;
    case REPLY_MORE:
    case REPLY_DONE:
        break;
    }
    /* EHLO keywords are on every line but the first (RFC 5321 §4.1.1.1). */
    if (c->state == CS_EHLO && !first)
        ehlo_parse_line(&c->ext_new, text, tlen);
    if (c->reply.nlines == 0) {
        struct tern_status st = c->reply.st;
        reply_reset(&c->reply);
        conn_on_reply(c, &st);
    }
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
    struct deliv_conn *c = arg;
    char line[DELIV_REPLY_LINE_MAX + 1];
    while (c->state != CS_DEAD) {
        struct evbuffer *in = bufferevent_get_input(c->bev);
        size_t eol_len = 0;
        struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
        if (p.pos < 0) {
            if (evbuffer_get_length(in) > DELIV_REPLY_LINE_MAX)
                conn_protocol_error(c, "reply line too long");
            return;
        }
        if ((size_t)p.pos > DELIV_REPLY_LINE_MAX) {
            conn_protocol_error(c, "reply line too long");
            return;
        }
        if (evbuffer_remove(in, line, (size_t)p.pos) != (int)p.pos)
            tern_panic("evbuffer_remove short read");
        evbuffer_drain(in, eol_len);
        conn_reply_line(c, line, (size_t)p.pos);
    }
}

/* ---- session setup ---- */

static void
send_ehlo(struct deliv_conn *c, const char *verb)
{
    const char *name = c->cfg->hostname && *c->cfg->hostname ? c->cfg->hostname : "localhost";
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s %s\r\n", verb, name);
    conn_write(c, b.data, b.len);
    buf_fini(&b);
    memset(&c->ext_new, 0, sizeof(c->ext_new));
    conn_arm(c, c->reply_ms);
}

static void
on_greeting(struct deliv_conn *c, const struct tern_status *st)
{
    if (st->code / 100 != 2) {
        conn_refused(c, st);
        return;
    }
    c->state = CS_EHLO;
    send_ehlo(c, "EHLO");
}

static void
session_ready(struct deliv_conn *c)
{
    struct logline l;
    size_t n = strlen(c->relay);
    /* The TLS summary travels with the relay into every per-recipient
     * delivered/deferred line (sched.c log_result) and the DSN. */
    if (c->tls_active)
        n += (size_t)snprintf(c->relay + n, sizeof(c->relay) - n, " tls=%s/%s/%s", c->tls.version,
            c->tls.cipher, c->tls.verified ? "verified" : "unverified");
    else
        n += (size_t)snprintf(c->relay + n, sizeof(c->relay) - n, " tls=none");
    if (n < sizeof(c->relay))
        snprintf(c->relay + n, sizeof(c->relay) - n, " tls_policy=%s tls_verified=%s",
            deliv_tls_policy_name(c->policy), c->tls_active ? c->verified_by : "none");
    c->ready = true;
    c->setup_ms = tern_mono_ms() - c->t_setup + c->dns_ms - c->tls_ms;
    c->setup_pending = true;
    plan_unref(c->plan); /* setup is over: targets no longer matter */
    c->plan = NULL;
    log_begin(&l, LOG_DEBUG, NULL, "delivery", "session_ready");
    log_str(&l, "relay", c->relay);
    log_int(&l, "pipelining", c->ext.pipelining);
    log_int(&l, "size", (int64_t)c->ext.size_max);
    log_end(&l);
    conn_next(c);
}

/* ---- TLS (RFC 3207, RFC 8314) and AUTH (RFC 4954) ---- */

static const struct route_hop *
conn_hop(const struct deliv_conn *c)
{
    uint16_t h = conn_host(c)->hop;
    return h < c->dest->d->n_hops ? &c->dest->d->hops[h] : NULL;
}

/* The TLSA records of h as TLS-RPT's policy-string for a tlsa policy
 * (RFC 8460 §4.4): one "usage selector mtype data" line each. */
static void
tlsa_policy_text(const struct plan_host *h, struct buf *out)
{
    for (size_t i = 0; h->tlsa != NULL && i < h->tlsa->n; i++) {
        struct dns_tlsa t;
        if (dns_tlsa_parse(h->tlsa->rr[i].data, h->tlsa->rr[i].len, &t) < 0 ||
            !deliv_tlsa_usable(&t))
            continue;
        buf_printf(out, "%u %u %u ", t.usage, t.selector, t.mtype);
        for (size_t k = 0; k < t.len && out->len < TLSRPT_POLICY_MAX; k++)
            buf_printf(out, "%02x", t.data[k]);
        buf_append_char(out, '\n');
    }
}

/* TLS-RPT (RFC 8460 §4.3): the outcome of a TLS session with an MX host
 * under DANE (a tlsa policy of the host's next-hop domain), or of a domain
 * whose MTA-STS policy the plan carries (enforce or testing). Sessions
 * under no policy are not recorded. */
static void
tlsrpt_note(struct deliv_conn *c, enum tlsrpt_result r)
{
    const struct plan_sts *s = c->plan != NULL ? c->plan->sts : NULL;
    const struct plan_host *h;
    struct tlsrpt_event ev = { 0 };
    struct buf tlsa = BUF_INIT;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char key[DELIV_ADDR_KEY_MAX], rip[DELIV_ADDR_KEY_MAX], sip[DELIV_ADDR_KEY_MAX] = "";
    evutil_socket_t fd = c->bev != NULL ? bufferevent_getfd(c->bev) : -1;
    if (c->d->tlsrpt == NULL || c->plan == NULL)
        return;
    h = conn_host(c);
    if (c->policy == TLSP_DANE && h->domain[0] != '\0') {
        tlsa_policy_text(h, &tlsa);
        ev.domain = h->domain;
        ev.ptype = TLSRPT_P_TLSA;
        ev.policy = tlsa.data;
        ev.policy_len = tlsa.len;
    } else if (s != NULL) {
        ev.domain = s->domain;
        ev.ptype = TLSRPT_P_STS;
        ev.policy = s->text;
        ev.policy_len = s->len;
    } else {
        return;
    }
    deliv_fmt_addr(&c->plan->t[c->order[c->cur]].addr, key, sizeof(key), rip, sizeof(rip));
    if (fd >= 0 && getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
        deliv_fmt_addr(&ss, key, sizeof(key), sip, sizeof(sip));
    ev.result = r;
    ev.sending_ip = sip;
    ev.receiving_mx = h->name;
    ev.receiving_ip = rip;
    tlsrpt_record(c->d->tlsrpt, &ev);
    buf_fini(&tlsa);
}

/* The result type of a certificate that did not verify (RFC 8460 §4.3.2.2). */
static enum tlsrpt_result
sts_cert_result(const SSL *ssl)
{
    switch (SSL_get_verify_result(ssl)) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
        return TLSRPT_CERT_HOST_MISMATCH;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return TLSRPT_CERT_EXPIRED;
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        return TLSRPT_CERT_NOT_TRUSTED;
    default:
        return TLSRPT_VALIDATION_FAILURE;
    }
}

/* A setup step failed for a reason of ours (TLS policy, AUTH): log it once
 * and move on to the next target. */
static void __attribute__((format(printf, 4, 5)))
setup_fail(struct deliv_conn *c, const char *event, const char *esc, const char *fmt, ...)
{
    struct tern_status st;
    struct logline l;
    va_list ap;
    st.code = 451;
    snprintf(st.esc, sizeof(st.esc), "%s", esc);
    va_start(ap, fmt);
    vsnprintf(st.text, sizeof(st.text), fmt, ap);
    va_end(ap);
    if (c->policy == TLSP_MTA_STS && strcmp(esc, "4.7.5") == 0) {
        /* RFC 8461 §5: the policy, not our own setting, refused it. */
        char text[sizeof(st.text)];
        snprintf(text, sizeof(text), "MTA-STS policy of %s: %s", c->plan->sts->domain, st.text);
        memcpy(st.text, text, sizeof(text));
    }
    log_begin(&l, LOG_WARN, NULL, "delivery", event);
    log_str(&l, "dest", c->dest->d->key);
    log_str(&l, "host", conn_host(c)->name);
    log_str(&l, "addr", c->peer);
    log_str(&l, "reason", st.text);
    log_end(&l);
    target_failed(c, &st);
}

/* Reconnect to the same target in plaintext (opportunistic TLS whose
 * handshake failed): the target is not marked failed. */
static void
target_retry_plain(struct deliv_conn *c)
{
    conn_drop_socket(c);
    c->tls_plain_retry = true;
    connect_next(c);
}

/* "TLS required" and by what, for reasons. */
static const char *
tls_required_text(const struct deliv_conn *c)
{
    switch (c->policy) {
    case TLSP_DANE:
        return "TLS required by DANE";
    case TLSP_MTA_STS:
        /* setup_fail names the policy and its domain in front. */
        return "TLS required";
    case TLSP_OPPORTUNISTIC:
        break;
    }
    return c->tls_mode == TLS_REQUIRED ? "TLS required" : "";
}

/* The current host's TLSA records onto ssl (RFC 7672 §3): the MX host name
 * is the base domain and, with the next-hop domain, a reference identifier
 * for DANE-TA. -1 when none could be used. */
static int
dane_setup(struct deliv_conn *c, SSL *ssl)
{
    const struct plan_host *h = conn_host(c);
    struct tls_dane_rec recs[DNS_RR_MAX];
    const char *names[2] = { h->name, h->domain };
    size_t n = 0;
    for (size_t i = 0; h->tlsa != NULL && i < h->tlsa->n && n < DNS_RR_MAX; i++) {
        struct dns_tlsa t;
        if (dns_tlsa_parse(h->tlsa->rr[i].data, h->tlsa->rr[i].len, &t) < 0 ||
            !deliv_tlsa_usable(&t))
            continue;
        recs[n].usage = t.usage;
        recs[n].selector = t.selector;
        recs[n].mtype = t.mtype;
        recs[n].data = t.data;
        recs[n].len = t.len;
        n++;
    }
    return tls_client_dane(ssl, names, h->domain[0] ? 2 : 1, recs, n) > 0 ? 0 : -1;
}

/* Put TLS over the connection: after "220" to STARTTLS, or at once for
 * implicit TLS. The SNI and the name checked are the MX host name or the
 * hop's host (RFC 7672 §3.2.2 style; an address literal is checked against
 * the certificate's IP addresses). */
static void
tls_start(struct deliv_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const char *host = conn_host(c)->name;
    size_t junk = evbuffer_get_length(in);
    struct bufferevent *bev;
    SSL *ssl;
    c->t_tls = tern_mono_ms();
    if (junk > 0) {
        /* RFC 3207 §4.2 (the client side of CVE-2011-0411): nothing the
         * server sent in plaintext after its 220 may be read as a reply. */
        struct logline l;
        evbuffer_drain(in, junk);
        log_begin(&l, LOG_WARN, NULL, "delivery", "starttls_pipelined");
        log_str(&l, "addr", c->peer);
        log_int(&l, "discarded", (int64_t)junk);
        log_end(&l);
    }
    /* Under DANE the TLSA records authenticate the peer, not the PKIX
     * chain and host name. */
    ssl = c->tls_ctx ? tls_client_ssl_new(c->tls_ctx, host, c->policy == TLSP_DANE ? NULL : host)
                     : NULL;
    if (ssl == NULL || (c->policy == TLSP_DANE && dane_setup(c, ssl) < 0)) {
        setup_fail(c, "tls_failed", "4.7.5", "%s%sTLS with %s not possible: %s",
            tls_required_text(c), c->tls_mode == TLS_REQUIRED ? " but " : "", c->peer,
            !c->tls_ctx ? c->d->tls_err
            : ssl       ? "no usable TLSA record"
                        : "cannot create an SSL object");
        /* RFC 8460 §4.3.2.2: none of the host's TLSA records was valid. */
        if (ssl != NULL)
            tlsrpt_note(c, TLSRPT_TLSA_INVALID);
        SSL_free(ssl);
        return;
    }
    bev = bufferevent_openssl_filter_new(
        c->d->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        SSL_free(ssl);
        tern_panic("bufferevent_openssl_filter_new failed");
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    c->bev = bev;
    bufferevent_setcb(c->bev, read_cb, tx_write_cb, event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->state = CS_TLS;
    conn_arm(
        c, c->cfg->tls_handshake_timeout_ms > 0 ? c->cfg->tls_handshake_timeout_ms : c->reply_ms);
}

static void
tls_failed(struct deliv_conn *c, const char *why)
{
    struct logline l;
    tlsrpt_note(c, TLSRPT_VALIDATION_FAILURE);
    if (deliv_tls_fallback(c->tls_mode, c->implicit_tls)) {
        /* RFC 7435 §6: opportunistic security falls back to clear text
         * rather than fail; remembered so that the next connections to this
         * address do not try again for a while. */
        deliv_notls_add(c->d, c->peer);
        log_begin(&l, LOG_WARN, NULL, "delivery", "tls_failed");
        log_str(&l, "dest", c->dest->d->key);
        log_str(&l, "host", conn_host(c)->name);
        log_str(&l, "addr", c->peer);
        log_str(&l, "reason", why);
        log_str(&l, "fallback", "plaintext");
        log_int(&l, "fallback_s", DELIV_NOTLS_MS / 1000);
        log_end(&l);
        target_retry_plain(c);
        return;
    }
    setup_fail(c, "tls_failed", "4.7.5", "%s%sTLS handshake with %s failed: %s",
        tls_required_text(c), c->tls_mode == TLS_REQUIRED ? " but " : "", c->peer, why);
}

static void
to_tls(struct deliv_conn *c)
{
    tls_failed(c, "handshake timed out");
}

static void
tls_done(struct deliv_conn *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    struct logline l;
    c->tls_ms += tern_mono_ms() - c->t_tls;
    tls_describe(ssl, &c->tls);
    if (c->policy == TLSP_DANE) {
        /* RFC 7672 §3.1: only a TLSA match authenticates the peer. */
        c->verified_by = tls_dane_match(ssl);
        c->tls.verified = c->verified_by != NULL;
        /* RFC 8460 §4.3.2.2 has no result type of its own for a
         * certificate that matches none of the valid TLSA records. */
        tlsrpt_note(c, c->tls.verified ? TLSRPT_SUCCESS : TLSRPT_VALIDATION_FAILURE);
    } else {
        c->verified_by = c->tls.verified ? "pkix" : "none";
        tlsrpt_note(c, c->tls.verified ? TLSRPT_SUCCESS : sts_cert_result(ssl));
    }
    if (!c->tls.verified && c->policy != TLSP_DANE && plan_sts_mode(c->plan) == MTASTS_TESTING) {
        char why[160];
        log_begin(&l, LOG_WARN, NULL, "mtasts", "policy_failed");
        log_str(&l, "dest", c->dest->d->key);
        log_str(&l, "host", conn_host(c)->name);
        log_str(&l, "mode", "testing");
        log_str(&l, "result", tlsrpt_result_name(sts_cert_result(ssl)));
        log_str(&l, "reason", tls_verify_text(ssl, why, sizeof(why)));
        log_str(&l, "action", "delivered");
        log_end(&l);
    }
    if (!deliv_tls_accept(c->tls_mode, c->tls.verified)) {
        char why[160];
        setup_fail(c, "tls_failed", "4.7.5", "%s but the certificate of %s (%s) %s: %s",
            tls_required_text(c), conn_host(c)->name, c->peer,
            c->policy == TLSP_DANE ? "matches no TLSA record" : "did not verify",
            tls_verify_text(ssl, why, sizeof(why)));
        return;
    }
    c->tls_active = true;
    log_begin(&l, LOG_INFO, NULL, "delivery", "tls");
    log_str(&l, "dest", c->dest->d->key);
    log_str(&l, "host", conn_host(c)->name);
    log_str(&l, "addr", c->peer);
    log_str(&l, "mode", c->implicit_tls ? "implicit" : "starttls");
    log_str(&l, "version", c->tls.version);
    log_str(&l, "cipher", c->tls.cipher);
    log_str(&l, "verified", c->tls.verified ? "yes" : "no");
    log_str(&l, "tls_policy", deliv_tls_policy_name(c->policy));
    log_str(&l, "tls_verified", c->verified_by);
    log_end(&l);
    if (c->implicit_tls) {
        c->state = CS_GREETING;
        conn_arm(c, c->reply_ms);
        return;
    }
    /* RFC 3207 §4.2: discard what was learnt in clear, EHLO again. */
    memset(&c->ext, 0, sizeof(c->ext));
    c->state = CS_EHLO;
    send_ehlo(c, "EHLO");
}

static void
on_starttls(struct deliv_conn *c, const struct tern_status *st)
{
    if (st->code == 220) {
        tls_start(c);
        return;
    }
    tlsrpt_note(c, TLSRPT_STARTTLS_NOT_SUPPORTED);
    if (c->tls_mode == TLS_REQUIRED) {
        setup_fail(c, "tls_failed", "4.7.5", "%s but %s refused STARTTLS: %d %s",
            tls_required_text(c), c->peer, st->code, st->text);
        return;
    }
    /* Opportunistic: the server declined; RFC 3207 §4 lets us go on. */
    auth_begin(c);
}

static void
auth_send(struct deliv_conn *c, const char *verb, const char *b64)
{
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s%s%s\r\n", verb, *verb && *b64 ? " " : "", b64);
    conn_write(c, b.data, b.len);
    explicit_bzero(b.data, b.len);
    buf_fini(&b);
    conn_arm(c, c->reply_ms);
}

/* Credentials for this hop: only for smarthost and route hops, never for
 * MX hosts. 0 found, 1 none, -1 failed (the target failed). */
static int
auth_creds(struct deliv_conn *c, struct deliv_creds *cr)
{
    const struct route_hop *hop = conn_hop(c);
    char err[STATUS_TEXT_MAX];
    int rc;
    memset(cr, 0, sizeof(*cr));
    if (c->cfg->smarthost_auth_file == NULL || hop == NULL ||
        strncmp(c->dest->d->key, "mx:", 3) == 0)
        return 1;
    rc = deliv_creds_load(c->cfg->smarthost_auth_file, hop->host,
        strcmp(c->dest->d->key, "smarthost") == 0, cr, err, sizeof(err));
    if (rc < 0)
        setup_fail(c, "auth_failed", "4.7.0", "%s", err);
    return rc;
}

static void
auth_begin(struct deliv_conn *c)
{
    struct deliv_creds cr;
    char b64[DELIV_AUTH_B64_MAX];
    int rc = auth_creds(c, &cr);
    if (rc < 0)
        return;
    c->auth_mech =
        deliv_auth_choose(rc == 0, &c->ext, c->tls_active, c->cfg->smarthost_auth_plaintext != 0);
    switch (c->auth_mech) {
    case AUTHM_NONE:
        deliv_creds_clear(&cr);
        session_ready(c);
        return;
    case AUTHM_MISSING:
        deliv_creds_clear(&cr);
        setup_fail(c, "auth_failed", "4.7.0",
            "credentials configured for %s but it offers no AUTH PLAIN or LOGIN%s", c->peer,
            c->tls_active ? "" : " (without TLS)");
        return;
    case AUTHM_REFUSE:
        deliv_creds_clear(&cr);
        setup_fail(c, "auth_failed", "4.7.0",
            "not sending credentials to %s without TLS (smarthost_auth_plaintext = no)", c->peer);
        return;
    case AUTHM_PLAIN:
        if (deliv_auth_plain_resp(&cr, b64, sizeof(b64)) < 0)
            tern_panic("AUTH PLAIN buffer too small");
        auth_send(c, "AUTH PLAIN", b64);
        explicit_bzero(b64, sizeof(b64));
        break;
    case AUTHM_LOGIN:
        auth_send(c, "AUTH LOGIN", "");
        break;
    }
    c->creds = xmalloc(sizeof(*c->creds));
    *c->creds = cr;
    deliv_creds_clear(&cr);
    c->auth_step = 0;
    c->state = CS_AUTH;
}

static void
on_auth(struct deliv_conn *c, const struct tern_status *st)
{
    struct logline l;
    if (c->auth_mech == AUTHM_LOGIN && st->code == 334 && c->auth_step < 2) {
        /* RFC 4954 §4: each 334 asks for the next field (user, password). */
        const char *f = c->auth_step == 0 ? c->creds->user : c->creds->pass;
        char b64[DELIV_AUTH_B64_MAX];
        if (deliv_b64((const unsigned char *)f, strlen(f), b64, sizeof(b64)) < 0)
            tern_panic("AUTH LOGIN buffer too small");
        auth_send(c, "", b64);
        explicit_bzero(b64, sizeof(b64));
        c->auth_step++;
        return;
    }
    creds_drop(c);
    if (st->code == 235) {
        c->authed = true;
        log_begin(&l, LOG_INFO, NULL, "delivery", "auth");
        log_str(&l, "dest", c->dest->d->key);
        log_str(&l, "addr", c->peer);
        log_str(&l, "mech", c->auth_mech == AUTHM_PLAIN ? "PLAIN" : "LOGIN");
        log_str(&l, "tls", c->tls_active ? "yes" : "no");
        log_end(&l);
        session_ready(c);
        return;
    }
    /* A refused login is a configuration problem: defer, never bounce. */
    setup_fail(c, "auth_failed", "4.7.0", "authentication at %s failed: %d %s%s%s", c->peer,
        st->code, st->esc, st->esc[0] ? " " : "", st->text);
}

/* EHLO (or HELO) done in clear or under TLS: STARTTLS next, then AUTH. */
static void
session_setup_next(struct deliv_conn *c)
{
    if (!c->tls_active && !c->implicit_tls) {
        bool cached = c->tls_plain_retry || deliv_notls_has(c->d, c->peer);
        if (!c->ext.starttls)
            tlsrpt_note(c, TLSRPT_STARTTLS_NOT_SUPPORTED);
        switch (deliv_tls_step(c->tls_mode, c->ext.starttls, cached)) {
        case TLSS_STARTTLS:
            if (c->tls_ctx == NULL && c->tls_mode != TLS_REQUIRED)
                break; /* no usable client context: opportunistic goes on in clear */
            conn_write_str(c, "STARTTLS\r\n");
            c->state = CS_STARTTLS;
            conn_arm(c, c->reply_ms);
            return;
        case TLSS_DEFER:
            setup_fail(c, "tls_failed", "4.7.5", "%s but %s does not offer STARTTLS",
                tls_required_text(c), c->peer);
            return;
        case TLSS_PLAIN:
            break;
        }
    }
    auth_begin(c);
}

static void
on_ehlo(struct deliv_conn *c, const struct tern_status *st)
{
    if (st->code / 100 == 2) {
        c->ext = c->ext_new;
        session_setup_next(c);
    } else if (st->code / 100 == 5) {
        /* RFC 5321 §3.2: a server that does not know EHLO gets HELO. */
        c->state = CS_HELO;
        send_ehlo(c, "HELO");
    } else {
        conn_refused(c, st);
    }
}

static void
on_helo(struct deliv_conn *c, const struct tern_status *st)
{
    if (st->code / 100 != 2) {
        conn_refused(c, st);
        return;
    }
    memset(&c->ext, 0, sizeof(c->ext));
    session_setup_next(c);
}

static void
on_idle_reply(struct deliv_conn *c, const struct tern_status *st)
{
    conn_protocol_error(c, "unexpected reply while idle");
}

static void
on_quit(struct deliv_conn *c, const struct tern_status *st)
{
    conn_close(c);
}

static void
on_rset(struct deliv_conn *c, const struct tern_status *st)
{
    if (st->code / 100 == 2)
        conn_next(c);
    else
        conn_quit(c);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct deliv_conn *c = arg;
    int err = EVUTIL_SOCKET_ERROR();
    if (c->state == CS_CONNECT) {
        if (what & BEV_EVENT_CONNECTED) {
            const struct plan_target *t = &c->plan->t[c->order[c->cur]];
            char a[INET6_ADDRSTRLEN];
            deliv_fmt_addr(&t->addr, c->peer, sizeof(c->peer), a, sizeof(a));
            snprintf(c->relay, sizeof(c->relay), "%s[%s]:%u", conn_host(c)->name, a,
                (unsigned)ntohs(t->addr.ss_family == AF_INET
                                    ? ((const struct sockaddr_in *)&t->addr)->sin_port
                                    : ((const struct sockaddr_in6 *)&t->addr)->sin6_port));
            c->reached = true;
            reply_reset(&c->reply);
            c->implicit_tls = conn_hop(c) != NULL && conn_hop(c)->implicit_tls;
            if (c->implicit_tls) {
                tls_start(c); /* RFC 8314 §3.3: TLS first, the greeting after */
                return;
            }
            c->state = CS_GREETING;
            conn_arm(c, c->reply_ms);
            return;
        }
        connect_failed(c, (what & BEV_EVENT_ERROR) && err != 0 ? evutil_socket_error_to_string(err)
                                                               : "connection closed");
        return;
    }
    if (what & BEV_EVENT_ERROR)
        c->conn_error = true;
    if (c->state == CS_TLS) {
        char why[256];
        if (what & BEV_EVENT_CONNECTED) {
            tls_done(c);
        } else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
            unsigned long e = bufferevent_get_openssl_error(c->bev);
            tls_failed(c, tls_error_text(e, why, sizeof(why),
                              (what & BEV_EVENT_EOF) ? "connection closed during the handshake"
                                                     : "handshake failed"));
        }
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (c->state == CS_QUIT)
            conn_close(c);
        else
            conn_fail_lost(c, (what & BEV_EVENT_ERROR) ? err : 0);
    }
}

/* Every target failed: the destination may be down as a whole. */
static void
conn_give_up(struct deliv_conn *c)
{
    struct tern_status st = c->setup_err;
    struct deliv_dest *dest = c->dest;
    struct deliv_plan *plan = plan_ref(c->plan);
    struct delivery *d = c->d;
    struct logline l;
    if (st.code == 0)
        own_status(&st, 421, "4.4.1", "no address to connect to for %s", dest->d->key);
    log_begin(&l, LOG_WARN, NULL, "delivery", "dest_unreachable");
    log_str(&l, "dest", dest->d->key);
    log_str(&l, "reason", st.text);
    log_end(&l);
    conn_close(c);
    deliv_dest_down(d, dest, plan, &st);
    plan_unref(plan);
}

static void
connect_next(struct deliv_conn *c)
{
    for (; c->cur < c->n_order; c->cur++) {
        const struct plan_target *t = &c->plan->t[c->order[c->cur]];
        if (t->failed)
            continue; /* found down by another connection */
        deliv_fmt_addr(&t->addr, c->peer, sizeof(c->peer), NULL, 0);
        /* Each host has its own policy: DANE or MTA-STS make TLS with an
         * authenticated peer mandatory for it (RFC 7672 §2.2, RFC 8461 §5),
         * with no plaintext fallback. */
        c->policy = c->plan->hosts[t->host].policy;
        c->tls_mode = c->policy != TLSP_OPPORTUNISTIC ? TLS_REQUIRED : c->dest_mode;
        c->bev = bufferevent_socket_new(c->d->base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (c->bev == NULL)
            tern_panic("bufferevent_socket_new failed");
        bufferevent_setcb(c->bev, read_cb, tx_write_cb, event_cb, c);
        bufferevent_enable(c->bev, EV_READ | EV_WRITE);
        c->state = CS_CONNECT;
        metrics_count_conn_out();
        if (bufferevent_socket_connect(c->bev, (const struct sockaddr *)&t->addr, (int)t->len) ==
            0) {
            /* The final dot and pipelined commands are small writes that
             * follow larger ones: Nagle (RFC 896) would hold each for the
             * peer's delayed ACK, some 40 ms per transaction. */
            setsockopt(
                bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
            conn_arm(c, c->connect_ms);
            return;
        }
        connect_failed(c, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return; /* connect_failed moved on to the next target */
    }
    conn_give_up(c);
}

/* ---- job hand-out ---- */

static void
conn_idle(struct deliv_conn *c)
{
    if (c->state != CS_IDLE) {
        c->state = CS_IDLE; /* an idle connection keeps its running timer */
        conn_arm(c, c->idle_ms);
    }
    deliv_idle_add(c->d, c); /* may hand c on, or QUIT it for another destination */
}

/* Ready for a transaction: pull jobs until one is under way. */
void
conn_next(struct deliv_conn *c)
{
    struct delivery_job job;
    if (c->n_msgs >= c->max_msgs || c->gen != c->dest->gen) {
        conn_quit(c);
        return;
    }
    while (deliv_take_job(c->d, c->dest, &job, true)) {
        if (tx_begin(c, &job))
            return;
    }
    conn_idle(c);
}

static void
wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct deliv_conn *c = arg;
    c->woken = false;
    if (c->state == CS_START)
        connect_next(c);
    else if (c->state == CS_IDLE)
        conn_next(c);
}

/* ---- public to delivery.c ---- */

struct deliv_conn *
client_new(struct delivery *d, struct deliv_dest *dest, struct config *cfg)
{
    struct deliv_conn *c = xcalloc(1, sizeof(*c));
    c->d = d;
    c->dest = dest;
    c->cfg = config_ref(cfg);
    c->id = ++d->next_conn_id;
    c->gen = dest->gen;
    c->state = CS_START;
    c->max_msgs =
        cfg->delivery_max_msgs_per_conn ? cfg->delivery_max_msgs_per_conn : DELIV_DEF_MAX_MSGS;
    c->connect_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : DELIV_DEF_CONNECT_MS;
    c->reply_ms = cfg->delivery_timeout_ms > 0 ? cfg->delivery_timeout_ms : DELIV_DEF_TIMEOUT_MS;
    c->idle_ms = cfg->idle_conn_timeout_ms > 0 ? cfg->idle_conn_timeout_ms : DELIV_DEF_IDLE_MS;
    c->dest_mode = deliv_tls_mode(cfg, dest->d->key);
    c->tls_mode = c->dest_mode;
    c->verified_by = "none";
    c->tls_ctx = d->tls != NULL ? tls_ctx_ref(d->tls) : NULL;
    TERN_ASSERT(dest->plan != NULL);
    c->plan = plan_ref(dest->plan);
    c->n_order = plan_order(c->plan, c->order, deliv_rnd, d);
    c->t_setup = tern_mono_ms();
    if (!c->plan->dns_charged) {
        c->dns_ms = c->plan->dns_ms; /* the lookups were made for this connection */
        c->plan->dns_charged = true;
    }
    c->timer = evtimer_new(d->base, timer_cb, c);
    c->wake = event_new(d->base, -1, 0, wake_cb, c);
    if (c->timer == NULL || c->wake == NULL)
        tern_panic("cannot create delivery events");
    TAILQ_INSERT_TAIL(&dest->conns, c, dest_link);
    dest->n_conns++;
    d->n_active++;
    metrics_conn_out_open(1);
    event_active(c->wake, 0, 0);
    return c;
}

bool
client_not_busy(const struct deliv_conn *c)
{
    return c->state <= CS_SETUP_LAST || c->state == CS_IDLE;
}

bool
client_wake(struct deliv_conn *c)
{
    if (c->state != CS_IDLE || c->woken)
        return false;
    c->woken = true;
    event_active(c->wake, 0, 0);
    return true;
}

void
client_adopt(struct deliv_conn *c, struct deliv_dest *dest)
{
    struct deliv_dest *old = c->dest;
    struct logline l;
    TERN_ASSERT(c->state == CS_IDLE && c->tx == NULL && old != dest);
    log_begin(&l, LOG_INFO, NULL, "delivery", "conn_shared");
    log_str(&l, "from", old->d->key);
    log_str(&l, "dest", dest->d->key);
    log_str(&l, "relay", c->relay);
    log_end(&l);
    TAILQ_REMOVE(&old->conns, c, dest_link);
    old->n_conns--;
    TAILQ_INSERT_TAIL(&dest->conns, c, dest_link);
    dest->n_conns++;
    c->dest = dest;
    c->gen = dest->gen;
    deliv_idle_del(c->d, c);
    client_wake(c);
    event_active(c->d->reap, 0, 0); /* old may be empty now */
}

void
client_quit_idle(struct deliv_conn *c)
{
    if (c->state == CS_IDLE && c->tx == NULL)
        conn_quit(c);
}

void
client_shutdown(struct deliv_conn *c)
{
    if (c->tx != NULL) {
        struct tern_status st;
        own_status(&st, 421, "4.3.2", "shutting down");
        tx_set_all(c->tx, RS_DONE, &st, false, true);
        tx_report(c, c->tx);
    }
    conn_close(c);
}

void
client_free(struct deliv_conn *c)
{
    TERN_ASSERT(c->state == CS_DEAD && c->tx == NULL && c->bev == NULL);
    event_free(c->timer);
    event_free(c->wake);
    tls_ctx_unref(c->tls_ctx);
    config_unref(c->cfg);
    free(c);
}

/*
 * The client's name for the log (Postfix's "name[addr]"): the PTR record of
 * its address, kept only when that name resolves back to the address
 * (forward-confirmed, as Postfix's "verified" name), so a name in the log
 * was not made up by whoever controls the reverse zone alone. Looked up
 * once per session in the background: nothing waits for it, and a session
 * that ends first cancels it (dns_cancel: the callbacks then never run, so
 * they may take the session itself as their argument). The lookup runs on
 * the resolver of the session's own loop (a resolver belongs to one loop).
 */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define CLIENT_NAME_MAX 256 /* a DNS name is at most 255 octets (RFC 1035 2.3.4) */

/* The lookup is over: its outcome at debug level (tests wait for it). */
static void
name_done(struct smtp_session *s, bool known)
{
    struct logline l;
    s->name_q = NULL;
    s->name_state = known ? SMTP_NAME_KNOWN : SMTP_NAME_UNKNOWN;
    if (!known) {
        free(s->client_name);
        s->client_name = NULL;
    }
    log_begin(&l, LOG_DEBUG, NULL, "smtp", "client_name");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    log_str(&l, "name", known ? s->client_name : "unknown");
    log_end(&l);
}

/* Is a (port ignored) the client's address? */
static bool
same_addr(const struct sockaddr_storage *a, const union smtp_peer *peer)
{
    if (a->ss_family != peer->sa.sa_family)
        return false;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr, &peer->in4.sin_addr,
                   sizeof(struct in_addr)) == 0;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &peer->in6.sin6_addr,
                   sizeof(struct in6_addr)) == 0;
    return false;
}

static void
addr_cb(void *arg, const struct dns_addr_result *r)
{
    struct smtp_session *s = arg;
    for (size_t i = 0; r->rc == DNS_OK && i < r->n; i++) {
        if (same_addr(&r->addr[i], &s->peer)) {
            name_done(s, true);
            return;
        }
    }
    name_done(s, false);
}

static void
ptr_cb(void *arg, const struct dns_rr_result *r)
{
    struct smtp_session *s = arg;
    const char *name = r->rc == DNS_OK && r->n > 0 ? r->rr[0].data : NULL;
    /* Only a host name goes into the log, never whatever bytes the
     * reverse zone holds. */
    if (name == NULL || r->rr[0].len >= CLIENT_NAME_MAX ||
        !str_is_domain(name, r->rr[0].len, false)) {
        name_done(s, false);
        return;
    }
    s->client_name = xstrndup(name, r->rr[0].len);
    s->name_q = dns_lookup_addr(s->lp->dns, s->client_name, 0,
        s->peer.sa.sa_family == AF_INET6 ? IPFAM_V6 : IPFAM_V4, addr_cb, s);
    if (s->name_q == NULL)
        name_done(s, false);
}

void
smtp_name_start(struct smtp_session *s)
{
    char rev[128];
    const char *named;
    s->name_state = SMTP_NAME_OFF;
    if (s->lp->dns == NULL || !s->cfg->smtpd_peername_lookup ||
        dns_reverse_name((const struct sockaddr *)&s->peer, rev, sizeof(rev)) < 0)
        return;
    s->name_state = SMTP_NAME_PENDING;
    /* The hosts file first, as the system resolver: its line names the
     * address both ways, so it needs no confirming. */
    named = dns_hosts_name(s->lp->dns, &s->peer.sa);
    if (named != NULL && str_is_domain(named, strlen(named), false)) {
        s->client_name = xstrdup(named);
        name_done(s, true);
        return;
    }
    s->name_q = dns_lookup_rr(s->lp->dns, rev, DNS_RR_PTR, ptr_cb, s);
    if (s->name_q == NULL)
        name_done(s, false);
}

void
smtp_name_cancel(struct smtp_session *s)
{
    dns_cancel(s->name_q);
    s->name_q = NULL;
}

const char *
smtp_client_name(const struct smtp_session *s)
{
    switch (s->name_state) {
    case SMTP_NAME_KNOWN:
        return s->client_name;
    case SMTP_NAME_OFF:
        return NULL;
    default:
        return "unknown"; /* not (yet) confirmed */
    }
}

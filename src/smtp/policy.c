/*
 * Relay policy: the single place that decides whether a recipient may be
 * accepted from a client (no open relay). Pure: reads the configuration
 * snapshot and the client address, keeps nothing. Anything odd about the
 * domain (empty, address literal, empty labels) or a local part that routes
 * elsewhere fails closed.
 */
#include "policy.h"

#include <netinet/in.h>
#include <string.h>

#include "util/cidr.h"
#include "util/util.h"

static unsigned char
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static bool
ieq_n(const char *a, const char *b, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    }
    return true;
}

/* Length of s without one trailing dot. */
static size_t
strip_dot(const char *s)
{
    size_t n = strlen(s);
    return (n > 0 && s[n - 1] == '.') ? n - 1 : n;
}

/* A domain we are willing to compare: not empty, not an address literal,
 * no empty label (leading dot, "..", a second trailing dot). */
static bool
domain_sane(const char *d, size_t n)
{
    size_t i;
    if (n == 0 || d[0] == '.' || d[0] == '[')
        return false;
    for (i = 0; i < n; i++) {
        if (d[i] == '.' && (i + 1 == n || d[i + 1] == '.'))
            return false;
        if (d[i] == '@' || d[i] == '[' || d[i] == ']' || (unsigned char)d[i] <= ' ')
            return false;
    }
    return true;
}

static bool
entry_matches(const char *e, const char *d, size_t dn)
{
    size_t en = strip_dot(e);
    if (en == 0 || (en == 1 && e[0] == '.'))
        return false; /* "" and "." never match anything */
    if (e[0] != '.')
        return en == dn && ieq_n(e, d, dn);
    /* ".example.com" matches "x.example.com" (at least one more label),
     * never "example.com" or "xexample.com". */
    return dn > en && ieq_n(e, d + (dn - en), en);
}

bool
policy_domain_listed(char *const *list, size_t n, const char *domain)
{
    size_t i, dn;
    if (domain == NULL)
        return false;
    dn = strip_dot(domain);
    if (!domain_sane(domain, dn))
        return false;
    for (i = 0; i < n; i++) {
        if (list[i] != NULL && entry_matches(list[i], domain, dn))
            return true;
    }
    return false;
}

/* An IPv4-mapped IPv6 client (::ffff:a.b.c.d) is matched as a.b.c.d too, so
 * relay_networks written in IPv4 form work on dual-stack listeners. */
static bool
client_listed(const struct config *cfg, const struct sockaddr *addr)
{
    const struct sockaddr_in6 *s6;
    struct sockaddr_in s4;

    if (cidr_match_any(cfg->relay_networks, cfg->n_relay_networks, addr))
        return true;
    if (addr->sa_family != AF_INET6)
        return false;
    s6 = (const struct sockaddr_in6 *)(const void *)addr;
    if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
        return false;
    memset(&s4, 0, sizeof(s4));
    s4.sin_family = AF_INET;
    s4.sin_port = s6->sin6_port;
    memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
    return cidr_match_any(
        cfg->relay_networks, cfg->n_relay_networks, (const struct sockaddr *)(const void *)&s4);
}

bool
policy_trusted_client(const struct config *cfg, const struct sockaddr *addr)
{
    return addr != NULL && client_listed(cfg, addr);
}

const char *
policy_admit_session(
    const struct config *cfg, bool trusted, size_t sessions, size_t outsiders, size_t from_addr)
{
    if (sessions >= cfg->max_sessions)
        return "max_sessions";
    if (trusted)
        return NULL; /* the relay's own networks: no share and no per-address limit */
    /* The last reserved_sessions slots are never given to outsiders, so a
     * crowd of slow strangers cannot lock out the relay's own clients. */
    if (outsiders + cfg->reserved_sessions >= cfg->max_sessions)
        return "reserved_sessions";
    if (from_addr >= cfg->max_sessions_per_ip)
        return "max_sessions_per_ip";
    return NULL;
}

bool
policy_local_routes(const char *local, size_t len)
{
    /* The "percent hack" (user%other@relay), bang paths (other!user@relay)
     * and a quoted '@' ("user@other"@relay) all ask the host of the domain
     * to pass the mail on to another one: the local part is that host's to
     * interpret (RFC 5321 §2.3.11), and many still route on these
     * (RFC 1123 §5.2.16). */
    for (size_t i = 0; i < len; i++) {
        if (local[i] == '%' || local[i] == '!' || local[i] == '@')
            return true;
    }
    return false;
}

bool
policy_may_relay(
    const struct config *cfg, const struct sockaddr *addr, bool authenticated, const char *rcpt)
{
    const char *at;
    TERN_ASSERT(cfg != NULL);
    if (authenticated)
        return true;
    if (addr != NULL && client_listed(cfg, addr))
        return true;
    at = rcpt != NULL ? strrchr(rcpt, '@') : NULL;
    if (at == NULL)
        return false; /* no domain ("<postmaster>"): only our own clients */
    /* Like Postfix with allow_untrusted_routing = no: a listed domain does
     * not carry mail from outsiders that its local part routes on, or the
     * backup MX would relay to any domain in two hops. */
    if (policy_local_routes(rcpt, (size_t)(at - rcpt)))
        return false;
    return policy_domain_listed(cfg->relay_domains, cfg->n_relay_domains, at + 1);
}

bool
policy_rcpt_checked(const struct config *cfg, const char *rcpt)
{
    const char *at = rcpt != NULL ? strrchr(rcpt, '@') : NULL;
    if (cfg->relay_recipients == NULL || at == NULL)
        return false;
    return policy_domain_listed(cfg->relay_domains, cfg->n_relay_domains, at + 1);
}

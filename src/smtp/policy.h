/*
 * Relay policy: the one pure function that decides whether a recipient may
 * be accepted from a client, so there is exactly one place to audit for
 * open-relay bugs; and the one that admits a new session.
 */
#ifndef TERN_SMTP_POLICY_H
#define TERN_SMTP_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config/config.h"

/*
 * May a client at addr (authenticated or not) send to the recipient rcpt
 * ("local@domain" as parsed, a quoted local part kept with its quotes; the
 * domain may be an address literal "[1.2.3.4]"; NULL or "" when there is
 * none)? True when:
 *  - the client is authenticated, or
 *  - addr is in relay_networks, or
 *  - the domain (after the last '@') matches relay_domains and the local
 *    part does not route elsewhere (policy_local_routes): an entry
 *    "example.com" matches that domain exactly, an entry ".example.com"
 *    matches its subdomains; comparison is ASCII case-insensitive and
 *    ignores one trailing dot.
 * Recipients without a domain, address literals and routing local parts
 * only pass through the first two rules.
 */
bool policy_may_relay(
    const struct config *cfg, const struct sockaddr *addr, bool authenticated, const char *rcpt);

/* Must rcpt be in relay_recipients to be accepted: the file is set and the
 * recipient's domain is one of relay_domains (rules above)? For every
 * client: mail from relay_networks or logged-in clients to those domains
 * would be bounced by the same final hop. */
bool policy_rcpt_checked(const struct config *cfg, const char *rcpt);

/* Is addr in relay_networks (an IPv4-mapped IPv6 address as IPv4 too)? */
bool policy_trusted_client(const struct config *cfg, const struct sockaddr *addr);

/*
 * May a new inbound connection become a session? NULL when it may, else the
 * limit it meets ("max_sessions", "reserved_sessions", "max_sessions_per_ip")
 * for the log. sessions: open now; outsiders: those of clients outside
 * relay_networks; from_addr: those from this client's address. Clients in
 * relay_networks (trusted) meet only max_sessions; others may not take the
 * last reserved_sessions of them, nor more than max_sessions_per_ip.
 */
const char *policy_admit_session(
    const struct config *cfg, bool trusted, size_t sessions, size_t outsiders, size_t from_addr);

/* Does a local part (len bytes, quotes included) hold '%', '!' or '@', the
 * forms that ask the receiving host to relay the mail further? */
bool policy_local_routes(const char *local, size_t len);

/* Does domain match one relay_domains-style list (rules above)? */
bool policy_domain_listed(char *const *list, size_t n, const char *domain);

#endif

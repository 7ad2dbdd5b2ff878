/*
 * Relay policy: the one pure function that decides whether a recipient may
 * be accepted from a client, so there is exactly one place to audit for
 * open-relay bugs.
 */
#ifndef TERN_SMTP_POLICY_H
#define TERN_SMTP_POLICY_H

#include <stdbool.h>
#include <sys/socket.h>

#include "config/config.h"

/*
 * May a client at addr (authenticated or not) send to a recipient in
 * rcpt_domain (the part after '@', as received; may be an address literal
 * "[1.2.3.4]" or empty)? True when:
 *  - the client is authenticated, or
 *  - addr is in relay_networks, or
 *  - rcpt_domain matches relay_domains: an entry "example.com" matches that
 *    domain exactly, an entry ".example.com" matches its subdomains;
 *    comparison is ASCII case-insensitive and ignores one trailing dot.
 * Empty domains and address literals only pass through the first two rules.
 */
bool policy_may_relay(const struct config *cfg, const struct sockaddr *addr,
    bool authenticated, const char *rcpt_domain);

/* Does domain match one relay_domains-style list (rules above)? */
bool policy_domain_listed(char *const *list, size_t n, const char *domain);

#endif

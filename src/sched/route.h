/*
 * The routing decision, a pure function of the configuration and the
 * envelope: which destination (and so which next hops) a recipient's mail
 * goes to. Precedence, as in Postfix: a recipient-domain route (routes,
 * like transport_maps), then a sender-domain route (sender_routes, like
 * sender_dependent_relayhost_maps), then the smarthost list, then the
 * recipient domain's own MX hosts.
 */
#ifndef TERN_SCHED_ROUTE_H
#define TERN_SCHED_ROUTE_H

#include "config/config.h"
#include "delivery/delivery.h"

/* Fill out for a message from sender (may be "") to rcpt. */
void route_decide(
    const struct config *cfg, const char *sender, const char *rcpt, struct delivery_dest *out);

/* The route of routes[0..n) matching domain: an exact entry wins, else the
 * longest ".suffix" entry the domain is a subdomain of; NULL when none.
 * domain is compared ASCII case-insensitively, one trailing dot ignored. */
const struct route *route_find(const struct route *routes, size_t n, const char *domain);

#endif

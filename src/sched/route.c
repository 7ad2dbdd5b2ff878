/*
 * Routing: recipient-domain routes, sender-domain routes, the smarthost
 * list, or MX delivery to the recipient's domain. Pure; see route.h.
 */
#include "route.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "proto/parse.h"

const struct route *
route_find(const struct route *routes, size_t n, const char *domain)
{
    const struct route *best = NULL;
    size_t dlen = strlen(domain), best_len = 0;
    if (dlen > 0 && domain[dlen - 1] == '.')
        dlen--;
    if (dlen == 0)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *m = routes[i].match;
        size_t mlen = strlen(m);
        if (m[0] != '.') {
            if (mlen == dlen && strncasecmp(m, domain, dlen) == 0)
                return &routes[i]; /* an exact entry wins */
            continue;
        }
        /* ".example.com" matches "a.example.com", not "example.com". */
        if (dlen > mlen && strncasecmp(domain + dlen - mlen, m, mlen) == 0 && mlen > best_len) {
            best = &routes[i];
            best_len = mlen;
        }
    }
    return best;
}

static void
hops_from_route(const struct config *cfg, const struct route *r, struct delivery_dest *out)
{
    out->n_hops = r->n_hops;
    for (size_t i = 0; i < r->n_hops; i++) {
        out->hops[i] = r->hops[i];
        if (out->hops[i].port == 0)
            out->hops[i].port = cfg->delivery_port;
    }
}

void
route_decide(
    const struct config *cfg, const char *sender, const char *rcpt, struct delivery_dest *out)
{
    const char *rdom = addr_domain(rcpt);
    const struct route *r;
    memset(out, 0, sizeof(*out));
    if ((r = route_find(cfg->routes, cfg->n_routes, rdom)) != NULL) {
        snprintf(out->key, sizeof(out->key), "route:%s", r->match);
        hops_from_route(cfg, r, out);
        return;
    }
    if ((r = route_find(cfg->sender_routes, cfg->n_sender_routes, addr_domain(sender))) != NULL) {
        snprintf(out->key, sizeof(out->key), "sender:%s", r->match);
        hops_from_route(cfg, r, out);
        return;
    }
    if (cfg->n_smarthosts > 0) {
        snprintf(out->key, sizeof(out->key), "smarthost");
        for (size_t i = 0; i < cfg->n_smarthosts && i < ROUTE_HOPS_MAX; i++) {
            snprintf(out->hops[i].host, sizeof(out->hops[i].host), "%s", cfg->smarthosts[i].host);
            out->hops[i].port = cfg->smarthosts[i].port;
            out->hops[i].mx = false;
            out->hops[i].implicit_tls = cfg->smarthosts[i].implicit_tls;
            out->n_hops++;
        }
        return;
    }
    /* MX delivery to the recipient's domain, lowercased so that one domain
     * is one destination whatever the case in the addresses. */
    snprintf(out->hops[0].host, sizeof(out->hops[0].host), "%s", rdom);
    for (char *p = out->hops[0].host; *p; p++) {
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    }
    size_t hl = strlen(out->hops[0].host);
    if (hl > 0 && out->hops[0].host[hl - 1] == '.')
        out->hops[0].host[hl - 1] = '\0';
    out->hops[0].port = cfg->delivery_port;
    out->hops[0].mx = true;
    out->n_hops = 1;
    snprintf(out->key, sizeof(out->key), "mx:%s", out->hops[0].host);
}

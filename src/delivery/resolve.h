/*
 * Asynchronous host name to address resolution for outbound connections:
 * c-ares driven by the libevent loop (no threads, no blocking calls). IP
 * literals are parsed synchronously with resolve_literal(). This small
 * interface is meant to move into a src/dns/ module later.
 */
#ifndef TERN_DELIVERY_RESOLVE_H
#define TERN_DELIVERY_RESOLVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct resolver;
struct resolver_query;

#define RESOLVE_ADDRS_MAX 16

struct resolve_result {
    struct sockaddr_storage addr[RESOLVE_ADDRS_MAX]; /* port filled in */
    socklen_t len[RESOLVE_ADDRS_MAX];
    size_t n;
};

/* err 0: res has n >= 1 addresses in the resolver's preferred order. err -1:
 * errmsg says why (borrowed for the call). res is borrowed for the call. */
typedef void (*resolve_cb)(
    void *arg, int err, const struct resolve_result *res, const char *errmsg);

/* NULL if c-ares cannot start (no resolver configuration...). */
struct resolver *resolver_new(struct event_base *base);
/* Pending queries are cancelled: their callbacks never run. NULL is fine. */
void resolver_free(struct resolver *r);

/* Look up host's A and AAAA addresses. cb runs exactly once, always later
 * from the event loop (never inside this call), unless the query is
 * cancelled first. The handle is owned by the resolver and valid until cb
 * starts or resolver_cancel() returns. "localhost" falls back to the
 * loopback addresses if the lookup fails (RFC 6761 §6.3). */
struct resolver_query *resolver_lookup(
    struct resolver *r, const char *host, uint16_t port, resolve_cb cb, void *arg);
void resolver_cancel(struct resolver_query *q);

/* host is an IPv4 or IPv6 literal (no brackets): fill *ss and *len, 0.
 * Otherwise -1. */
int resolve_literal(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);

#endif

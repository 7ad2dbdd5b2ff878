/*
 * CIDR networks and address matching for relay_networks and session limits.
 */
#ifndef TERN_CIDR_H
#define TERN_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
    int family;        /* AF_INET or AF_INET6 */
    uint8_t addr[16];  /* network address, host bits cleared */
    unsigned prefix;   /* 0..32 or 0..128 */
};

/* "10.0.0.0/8", "::1/128", a bare address means a host route. 0 ok, -1 bad
 * (bad address, prefix out of range). Host bits set in the address are
 * cleared (10.1.2.3/8 is 10.0.0.0/8). */
int cidr_parse(const char *s, struct cidr *out);
/* Does sa (AF_INET, AF_INET6; v4-mapped v6 addresses match v4 networks)
 * fall in net? */
bool cidr_match(const struct cidr *net, const struct sockaddr *sa);
bool cidr_match_any(const struct cidr *nets, size_t n, const struct sockaddr *sa);
/* Is sa a loopback address (127/8, ::1, v4-mapped 127/8)? */
bool sockaddr_is_loopback(const struct sockaddr *sa);
/* Numeric text form of sa's address, without port. Returns buf. */
const char *sockaddr_ntop(const struct sockaddr *sa, char *buf, size_t cap);

#endif

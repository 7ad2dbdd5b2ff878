/*
 * CIDR networks: parsing ("10.0.0.0/8", "::1/128", bare addresses) and
 * matching socket addresses against them. An IPv4 client seen through an
 * IPv6 socket (::ffff:a.b.c.d, RFC 4291 §2.5.5.2) matches IPv4 networks.
 */
#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "parse.h"

/* Longest text form: an IPv6 address with an embedded IPv4 part plus "/128". */
#define CIDR_TEXT_MAX (INET6_ADDRSTRLEN + 4)

static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

static void
clear_host_bits(uint8_t *addr, size_t alen, unsigned prefix)
{
    for (size_t i = 0; i < alen; i++) {
        unsigned bit = (unsigned)i * 8;
        if (bit >= prefix)
            addr[i] = 0;
        else if (prefix - bit < 8)
            addr[i] &= (uint8_t)(0xff << (8 - (prefix - bit)));
    }
}

int
cidr_parse(const char *s, struct cidr *out)
{
    char text[CIDR_TEXT_MAX + 1];
    const char *slash;
    size_t alen, len;
    uint64_t prefix;
    struct cidr c;

    if (s == NULL)
        return -1;
    len = strnlen(s, sizeof(text));
    if (len == 0 || len >= sizeof(text))
        return -1;
    slash = memchr(s, '/', len);
    alen = slash ? (size_t)(slash - s) : len;
    memcpy(text, s, alen);
    text[alen] = '\0';

    memset(&c, 0, sizeof(c));
    if (inet_pton(AF_INET, text, c.addr) == 1) {
        c.family = AF_INET;
        prefix = 32;
    } else if (inet_pton(AF_INET6, text, c.addr) == 1) {
        c.family = AF_INET6;
        prefix = 128;
    } else {
        return -1;
    }
    if (slash != NULL && parse_u64(slash + 1, len - alen - 1, prefix, &prefix) < 0)
        return -1;
    c.prefix = (unsigned)prefix;
    clear_host_bits(c.addr, c.family == AF_INET ? 4 : 16, c.prefix);
    *out = c;
    return 0;
}

/* Does addr (alen bytes) agree with net->addr on the first prefix bits? */
static bool
prefix_match(const uint8_t *net, const uint8_t *addr, unsigned prefix)
{
    unsigned full = prefix / 8, rest = prefix % 8;
    if (memcmp(net, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (net[full] & mask) == (addr[full] & mask);
}

bool
cidr_match(const struct cidr *net, const struct sockaddr *sa)
{
    uint8_t v6[16];
    const uint8_t *a4 = NULL;

    if (net == NULL || sa == NULL)
        return false;
    if (sa->sa_family == AF_INET) {
        a4 = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        memcpy(v6, v4mapped_prefix, 12);
        memcpy(v6 + 12, a4, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(v6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        if (memcmp(v6, v4mapped_prefix, 12) == 0)
            a4 = v6 + 12;
    } else {
        return false;
    }
    if (net->family == AF_INET)
        return a4 != NULL && prefix_match(net->addr, a4, net->prefix);
    if (net->family == AF_INET6)
        return prefix_match(net->addr, v6, net->prefix);
    return false;
}

bool
cidr_match_any(const struct cidr *nets, size_t n, const struct sockaddr *sa)
{
    for (size_t i = 0; i < n; i++) {
        if (cidr_match(&nets[i], sa))
            return true;
    }
    return false;
}

bool
sockaddr_is_loopback(const struct sockaddr *sa)
{
    static const struct cidr loopback[] = {
        { AF_INET, { 127 }, 8 },
        { AF_INET6, { [15] = 1 }, 128 },
    };
    return cidr_match_any(loopback, sizeof(loopback) / sizeof(loopback[0]), sa);
}

const char *
sockaddr_ntop(const struct sockaddr *sa, char *buf, size_t cap)
{
    const void *addr = NULL;
    if (buf == NULL || cap == 0)
        return buf;
    if (sa != NULL && sa->sa_family == AF_INET)
        addr = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    else if (sa != NULL && sa->sa_family == AF_INET6)
        addr = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    /* inet_ntop never needs more than INET6_ADDRSTRLEN bytes. */
    socklen_t n = cap > INET6_ADDRSTRLEN ? INET6_ADDRSTRLEN : (socklen_t)cap;
    if (addr == NULL || inet_ntop(sa->sa_family, addr, buf, n) == NULL)
        snprintf(buf, cap, "?");
    return buf;
}

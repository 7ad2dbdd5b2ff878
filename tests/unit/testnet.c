/*
 * Port helpers for unit tests; see testnet.h.
 */
#include "testnet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config/config.h"
#include "dns/dns.h"
#include "util/buf.h"

static bool
bindable(int type, uint16_t port)
{
    struct sockaddr_in sin;
    int fd = socket(AF_INET, type, 0);
    bool ok;
    if (fd < 0)
        return false;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    ok = bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    close(fd);
    return ok;
}

uint16_t
testnet_free_port(void)
{
    for (int tries = 0; tries < 200; tries++) {
        uint32_t r = 0;
        uint16_t port;
        if (getrandom(&r, sizeof(r), 0) != sizeof(r))
            r = (uint32_t)rand();
        port = (uint16_t)(10000 + r % 22000);
        if (bindable(SOCK_DGRAM, port) && bindable(SOCK_STREAM, port))
            return port;
    }
    return 0;
}

bool
testnet_udp_port_taken(uint16_t port)
{
    struct sockaddr_in sin;
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    bool taken;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    taken = bind(u, (struct sockaddr *)&sin, sizeof(sin)) < 0 && errno == EADDRINUSE;
    close(u);
    return taken;
}

struct dns *
testnet_dns_at(struct event_base *base, uint16_t port, struct buf *err)
{
    struct hostport hp;
    memset(&hp, 0, sizeof(hp));
    snprintf(hp.host, sizeof(hp.host), "127.0.0.1");
    hp.port = port;
    return dns_new(base, &hp, 1, err);
}

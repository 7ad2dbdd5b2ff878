/*
 * Network helpers shared by the unit tests that start servers (dnsmasq,
 * scripted SMTP peers).
 */
#ifndef TERN_TESTNET_H
#define TERN_TESTNET_H

#include <stdbool.h>
#include <stdint.h>

/* A port free for both UDP and TCP on 127.0.0.1 a moment ago, chosen below
 * the kernel's ephemeral range (32768-60999) so that no outgoing connection
 * of the code under test can take it before the server binds it. 0 when
 * none was found (the caller fails the test). */
uint16_t testnet_free_port(void);
/* Is the UDP port bound on 127.0.0.1 (a DNS server is up)? */
bool testnet_udp_port_taken(uint16_t port);

#endif

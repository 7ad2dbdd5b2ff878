/*
 * Network helpers shared by the unit tests that start servers (dnsmasq,
 * scripted SMTP peers).
 */
#ifndef TERN_TESTNET_H
#define TERN_TESTNET_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct event_base;
struct dns;
struct buf;

/* A port free for both UDP and TCP on 127.0.0.1 a moment ago, chosen below
 * the kernel's ephemeral range (32768-60999) so that no outgoing connection
 * of the code under test can take it before the server binds it. 0 when
 * none was found (the caller fails the test). */
uint16_t testnet_free_port(void);
/* Is the UDP port bound on 127.0.0.1 (a DNS server is up)? */
bool testnet_udp_port_taken(uint16_t port);

/* Start "dnsmasq --no-daemon --port=PORT ARGS..." (args NULL-terminated)
 * on a free port and wait until it serves: its pid, with the port in
 * *port; -1 when it would not start. A port is only known free a moment
 * before dnsmasq binds it (other test processes pick ports too): when the
 * child exits before it serves, another port is tried. */
pid_t testnet_dnsmasq_start(const char *const *args, uint16_t *port);

/* A resolver whose only server is 127.0.0.1:port (a dnsmasq child or a
 * port where nothing answers). NULL with err set on failure. */
struct dns *testnet_dns_at(struct event_base *base, uint16_t port, struct buf *err);

#endif

/*
 * `ternctl tls show DOMAIN`: the outbound TLS policy tern would apply to
 * DOMAIN's MX hosts (RFC 7672 DANE, RFC 8461 MTA-STS), from tern's own
 * resolvers, printed in sections.
 */
#ifndef TERN_CMD_TLSSHOW_H
#define TERN_CMD_TLSSHOW_H

#include "config/config.h"

/* argv: the words after "tls show". cfg borrowed. 0 done, 1 the lookups
 * failed, 2 usage or configuration error. */
int tlsshow_main(const struct config *cfg, int argc, char **argv);

#endif

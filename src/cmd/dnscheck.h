/*
 * `ternctl dns check DOMAIN [--json]`: checks the domain's SPF, DKIM, DMARC,
 * MX and the PTR/FCrDNS of the egress addresses against this relay's
 * configuration and prints one finding per line (OK / WARN / FAIL).
 */
#ifndef TERN_CMD_DNSCHECK_H
#define TERN_CMD_DNSCHECK_H

#include "config/config.h"

/* argv: the words after "dns check". cfg borrowed. Returns the exit status:
 * 0 nothing FAILs, 1 something does, 2 usage or configuration error. */
int dnscheck_main(const struct config *cfg, int argc, char **argv);

#endif

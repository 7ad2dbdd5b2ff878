/*
 * DMARC (RFC 7489) without I/O: the policy record's parser, the
 * organizational domain (the Public Suffix List through libpsl's built-in
 * list), identifier alignment, and the result from the SPF and DKIM
 * outcomes. The lookups themselves are the caller's (on its loop).
 */
#ifndef TERN_DMARC_H
#define TERN_DMARC_H

#include <stdbool.h>
#include <stddef.h>

#define DMARC_DOMAIN_MAX 253

enum dmarc_policy { DMARC_P_NONE, DMARC_P_QUARANTINE, DMARC_P_REJECT };

struct dmarc_record {
    enum dmarc_policy p;
    enum dmarc_policy sp; /* p when the record has no sp= */
    bool adkim_strict, aspf_strict;
    unsigned pct; /* 0..100 */
};

enum dmarc_result {
    DMARC_R_NONE,
    DMARC_R_PASS,
    DMARC_R_FAIL,
    DMARC_R_TEMPERROR,
    DMARC_R_PERMERROR
};

/* "none", "pass", "fail", "temperror", "permerror". */
const char *dmarc_result_name(enum dmarc_result r);
/* "none", "quarantine", "reject". */
const char *dmarc_policy_name(enum dmarc_policy p);

/* Is txt[len] a DMARC record (starts with v=DMARC1, RFC 7489 §6.3)? */
bool dmarc_is_record(const char *txt, size_t len);
/* Parse a DMARC record (§6.3, §6.6.3): unknown tags are ignored, bad
 * optional values take their defaults, a missing or bad p= makes the
 * record p=none when it has rua= and invalid otherwise. 0, or -1. */
int dmarc_record_parse(const char *txt, size_t len, struct dmarc_record *r);

/* The organizational domain of domain (lowercase, no trailing dot): its
 * registrable domain per the Public Suffix List, or domain itself when it
 * is a public suffix or the list knows nothing of it. Into out[cap];
 * 0, or -1 when it does not fit. */
int dmarc_org_domain(const char *domain, char *out, size_t cap);

/* Identifier alignment (§3.1): strict, the same domain; relaxed, the same
 * organizational domain. Case-insensitive. */
bool dmarc_aligned(const char *id_domain, const char *from_domain, bool strict);

/* The policy that applies to mail from from_domain under r, found at
 * record_domain (the From domain itself or its organizational domain: a
 * subdomain takes sp=, §6.6.3), sampled by pct (§6.6.4: a message left
 * out of the sample gets the next milder policy). draw is 0..99. */
enum dmarc_policy dmarc_applied_policy(const struct dmarc_record *r, const char *from_domain,
    const char *record_domain, unsigned draw);

#endif

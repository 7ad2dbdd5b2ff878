/*
 * Private to src/spf: macro syntax and expansion (macro.c, RFC 7208 §7),
 * record selection and term parsing (record.c, §4.5, §4.6, §5, §6). All pure:
 * no DNS, no allocation that outlives a call except struct spf_record terms.
 */
#ifndef TERN_SPF_INT_H
#define TERN_SPF_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spf/spf.h"
#include "util/buf.h"

#define SPF_DOMAIN_MAX 253

/* ---- macro.c ---- */

/* ASCII character classes of the RFC 7208 ABNF (locale-independent). */
static inline bool
spf_is_alpha(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static inline bool
spf_is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* Values of the macro letters (§7.3); NULL ones expand to "". */
struct spf_macro_env {
    const char *s, *l, *o, *d, *i, *p, *v, *h, *c, *r, *t;
};

enum spf_macro_ctx {
    SPF_MACRO_DOMAIN,  /* a domain-spec: no c, r, t letters, no spaces */
    SPF_MACRO_UNKNOWN, /* an unknown modifier's macro-string: any letter */
    SPF_MACRO_EXP,     /* an explanation string (§6.2): every letter, spaces */
};

/* Is s[0..len) a valid macro-string in ctx? *ends_in_macro (may be NULL)
 * tells whether the last token is a macro-expand (domain-end, §4.8). */
bool spf_macro_valid(const char *s, size_t len, enum spf_macro_ctx ctx, bool *ends_in_macro);
/* Does s use macro letter (lowercase) anywhere? */
bool spf_macro_uses(const char *s, size_t len, char letter);
/* Expand s into out (appended). 0, or -1 on a syntax error or when the result
 * would pass max bytes. */
int spf_macro_expand(const char *s, size_t len, const struct spf_macro_env *env,
    enum spf_macro_ctx ctx, size_t max, struct buf *out);
/* A domain-spec (§4.8): a macro-string ending with "." toplabel ["."] or a
 * macro-expand. */
bool spf_domain_spec_valid(const char *s, size_t len);
/* An expanded target name made ready for a query (§7.3): trailing dot
 * removed, left labels dropped past 253 octets. true when the result is a
 * usable name (labels of 1..63 octets). */
bool spf_target_name(struct buf *name);

/* ---- record.c ---- */

enum spf_mech {
    SPF_M_ALL,
    SPF_M_INCLUDE,
    SPF_M_A,
    SPF_M_MX,
    SPF_M_PTR,
    SPF_M_IP4,
    SPF_M_IP6,
    SPF_M_EXISTS,
};

struct spf_term {
    char qual; /* '+', '-', '~' or '?' */
    enum spf_mech mech;
    const char *spec; /* domain-spec (borrowed from the record); NULL: none */
    size_t spec_len;
    uint8_t net[16];       /* ip4 / ip6 network */
    unsigned cidr4, cidr6; /* prefix lengths (32 / 128 when not given) */
    const char *text;      /* the whole term, for reasons */
    size_t text_len;
};

struct spf_record {
    struct spf_term *terms; /* owned */
    size_t n, cap;
    const char *redirect, *exp; /* domain-specs or NULL */
    size_t redirect_len, exp_len;
    bool has_all;
};

/* Does a TXT record's text start an SPF record ("v=spf1" then space or end,
 * case-insensitive; §4.5)? */
bool spf_record_is_spf(const char *txt, size_t len);
/* Parse a whole SPF record (§4.6, §5, §6, §7.1; syntax errors anywhere
 * count). rec borrows from txt. 0, or -1 with err (a permerror). */
int spf_record_parse(const char *txt, size_t len, struct spf_record *rec, char *err, size_t errcap);
void spf_record_fini(struct spf_record *rec);

#endif

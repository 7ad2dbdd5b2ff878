/*
 * SPF record selection and parsing (RFC 7208 §4.5, §4.6, §5, §6): terms are
 * separated by spaces; a syntax error anywhere in the record is a permerror
 * before any term is evaluated. Parsed terms borrow from the record text.
 */
#include "spf/spf_int.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/parse.h"
#include "util/util.h"

#define SPF_VERSION     "v=spf1"
#define SPF_VERSION_LEN 6

bool
spf_record_is_spf(const char *txt, size_t len)
{
    return len >= SPF_VERSION_LEN && str_ieq(txt, SPF_VERSION_LEN, SPF_VERSION) &&
           (len == SPF_VERSION_LEN || txt[SPF_VERSION_LEN] == ' ');
}

static const struct {
    const char *name;
    enum spf_mech mech;
} mech_table[] = {
    { "all", SPF_M_ALL },
    { "include", SPF_M_INCLUDE },
    { "a", SPF_M_A },
    { "mx", SPF_M_MX },
    { "ptr", SPF_M_PTR },
    { "ip4", SPF_M_IP4 },
    { "ip6", SPF_M_IP6 },
    { "exists", SPF_M_EXISTS },
};

/* ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT), likewise ip6 (§5.6). */
static int
cidr_value(const char *s, size_t len, unsigned max, unsigned *out)
{
    unsigned v = 0;
    if (len == 0 || len > 3 || (len > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (!spf_is_digit(s[i]))
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* Length of a "/" 1*DIGIT suffix of s[0..len) (0 when there is none). */
static size_t
slash_digits_suffix(const char *s, size_t len)
{
    size_t i = len;
    while (i > 0 && spf_is_digit(s[i - 1]))
        i--;
    if (i == len || i == 0 || s[i - 1] != '/')
        return 0;
    return len - i + 1;
}

/* dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ], taken off
 * the end of s; *len shrinks to what is before it. */
static int
dual_cidr(const char *s, size_t *len, struct spf_term *t)
{
    size_t n = slash_digits_suffix(s, *len);
    if (n > 0 && *len - n > 0 && s[*len - n - 1] == '/') {
        if (cidr_value(s + *len - n + 1, n - 1, 128, &t->cidr6) < 0)
            return -1;
        *len -= n + 1;
        n = slash_digits_suffix(s, *len);
    }
    if (n > 0) {
        if (cidr_value(s + *len - n + 1, n - 1, 32, &t->cidr4) < 0)
            return -1;
        *len -= n;
    }
    return 0;
}

/* ":" domain-spec at rest (or nothing when optional). */
static int
parse_spec(const char *rest, size_t len, bool required, struct spf_term *t)
{
    if (len == 0)
        return required ? -1 : 0;
    if (rest[0] != ':' || !spf_domain_spec_valid(rest + 1, len - 1))
        return -1;
    t->spec = rest + 1;
    t->spec_len = len - 1;
    return 0;
}

static int
parse_ip(const char *rest, size_t len, int family, struct spf_term *t)
{
    char tmp[64];
    size_t n = slash_digits_suffix(rest, len);
    unsigned *cidr = family == AF_INET ? &t->cidr4 : &t->cidr6;
    if (len < 2 || rest[0] != ':')
        return -1;
    if (n > 0) {
        if (cidr_value(rest + len - n + 1, n - 1, family == AF_INET ? 32 : 128, cidr) < 0)
            return -1;
        len -= n;
    }
    if (len - 1 >= sizeof(tmp))
        return -1;
    memcpy(tmp, rest + 1, len - 1);
    tmp[len - 1] = '\0';
    return inet_pton(family, tmp, t->net) == 1 ? 0 : -1;
}

static int
parse_mechanism(const char *s, size_t len, struct spf_term *t, struct spf_record *rec)
{
    size_t nl = 0, rl;
    const char *rest;
    bool found = false;
    while (nl < len && s[nl] != ':' && s[nl] != '/')
        nl++;
    for (size_t i = 0; i < TERN_ARRAY_LEN(mech_table) && !found; i++) {
        if (str_ieq(s, nl, mech_table[i].name)) {
            t->mech = mech_table[i].mech;
            found = true;
        }
    }
    if (!found)
        return -1;
    rest = s + nl;
    rl = len - nl;
    t->cidr4 = 32;
    t->cidr6 = 128;
    switch (t->mech) {
    case SPF_M_ALL:
        rec->has_all = true;
        return rl == 0 ? 0 : -1;
    case SPF_M_INCLUDE:
    case SPF_M_EXISTS:
        return parse_spec(rest, rl, true, t);
    case SPF_M_PTR:
        return parse_spec(rest, rl, false, t);
    case SPF_M_A:
    case SPF_M_MX:
        if (dual_cidr(rest, &rl, t) < 0)
            return -1;
        return parse_spec(rest, rl, false, t);
    case SPF_M_IP4:
        return parse_ip(rest, rl, AF_INET, t);
    case SPF_M_IP6:
        return parse_ip(rest, rl, AF_INET6, t);
    }
    return -1;
}

/* name "=" macro-string, name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
 * Returns the name length when s is a modifier, else 0. */
static size_t
modifier_name(const char *s, size_t len)
{
    size_t i = 0;
    if (len == 0 || !spf_is_alpha(s[0]))
        return 0;
    while (
        i < len && (spf_is_alpha(s[i]) || spf_is_digit(s[i]) || s[i] == '-' || s[i] == '_' || s[i] == '.'))
        i++;
    return (i < len && s[i] == '=') ? i : 0;
}

static int
parse_modifier(
    const char *s, size_t len, size_t nl, struct spf_record *rec, char *err, size_t errcap)
{
    const char *v = s + nl + 1;
    size_t vl = len - nl - 1;
    const char **slot = NULL;
    size_t *slot_len = NULL;
    if (str_ieq(s, nl, "redirect")) {
        slot = &rec->redirect;
        slot_len = &rec->redirect_len;
    } else if (str_ieq(s, nl, "exp")) {
        slot = &rec->exp;
        slot_len = &rec->exp_len;
    }
    if (slot == NULL) {
        /* Unknown modifiers are ignored, but their value must parse (§6). */
        if (!spf_macro_valid(v, vl, SPF_MACRO_UNKNOWN, NULL)) {
            snprintf(err, errcap, "bad macro in modifier '%.*s'", (int)(len > 60 ? 60 : len), s);
            return -1;
        }
        return 0;
    }
    if (*slot != NULL) {
        snprintf(err, errcap, "%.*s= given twice", (int)nl, s);
        return -1;
    }
    if (!spf_domain_spec_valid(v, vl)) {
        snprintf(err, errcap, "bad domain in '%.*s'", (int)(len > 60 ? 60 : len), s);
        return -1;
    }
    *slot = v;
    *slot_len = vl;
    return 0;
}

static int
parse_term(const char *s, size_t len, struct spf_record *rec, char *err, size_t errcap)
{
    struct spf_term t;
    size_t nl = modifier_name(s, len);
    if (nl > 0)
        return parse_modifier(s, len, nl, rec, err, errcap);
    memset(&t, 0, sizeof(t));
    t.qual = '+';
    t.text = s;
    t.text_len = len;
    if (strchr("+-~?", s[0]) != NULL) {
        t.qual = s[0];
        s++;
        len--;
    }
    if (parse_mechanism(s, len, &t, rec) < 0) {
        snprintf(err, errcap, "bad term '%.*s'", (int)(t.text_len > 60 ? 60 : t.text_len), t.text);
        return -1;
    }
    if (rec->n == rec->cap) {
        rec->cap = rec->cap ? rec->cap * 2 : 16;
        rec->terms = xrealloc(rec->terms, rec->cap * sizeof(*rec->terms));
    }
    rec->terms[rec->n++] = t;
    return 0;
}

int
spf_record_parse(const char *txt, size_t len, struct spf_record *rec, char *err, size_t errcap)
{
    memset(rec, 0, sizeof(*rec));
    if (!spf_record_is_spf(txt, len)) {
        snprintf(err, errcap, "not an SPF record");
        return -1;
    }
    /* §3.1: SPF records are 7-bit ASCII; terms are separated by SP only. */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)txt[i];
        if (ch < 0x20 || ch > 0x7e) {
            snprintf(err, errcap, "character 0x%02x in the record", ch);
            return -1;
        }
    }
    for (size_t i = SPF_VERSION_LEN; i < len;) {
        size_t j;
        if (txt[i] == ' ') {
            i++;
            continue;
        }
        for (j = i; j < len && txt[j] != ' '; j++)
            ;
        if (parse_term(txt + i, j - i, rec, err, errcap) < 0) {
            spf_record_fini(rec);
            return -1;
        }
        i = j;
    }
    return 0;
}

void
spf_record_fini(struct spf_record *rec)
{
    FREE_NULL(&rec->terms);
    rec->n = rec->cap = 0;
}

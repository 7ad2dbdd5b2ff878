/*
 * check_host() (RFC 7208 §4-§6) as a replayed evaluation: each step runs the
 * whole check from the start over the answers held so far (the memo) and
 * stops at the first answer it lacks. Evaluation is deterministic, so the
 * processing limits are counted exactly, and a step never blocks. The check
 * owns its memo; records and names borrowed during a run point into it.
 */
#include "spf/spf.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "spf/spf_int.h"
#include "util/parse.h"
#include "util/util.h"

#define SPF_DEPTH_MAX 24   /* include/redirect nesting; the term limit ends loops first */
#define SPF_NAME_BUF  4096 /* bytes of an expanded target before §7.3 shortening */

enum ev { EV_OK, EV_NEED };
enum mres { M_MATCH, M_NOMATCH, M_TEMP, M_PERM, M_NEED };

struct memo_entry {
    int type;
    char *name;              /* owned, lowercased */
    struct dns_rr_result *r; /* owned */
};

struct spf_check {
    int family; /* AF_INET or AF_INET6 */
    uint8_t ip[16];
    char *sender, *local, *sender_domain, *helo, *domain, *receiver; /* owned */
    bool domain_ok;
    char ip_dots[80];               /* %{i} */
    char ip_text[INET6_ADDRSTRLEN]; /* %{c} */
    char now[24];                   /* %{t} */
    struct memo_entry *memo;
    size_t n_memo;
    struct dns_rr_result *overflow; /* answer once the memo is full */
    struct buf q_name;
    int q_type;
    bool done;
    /* per run */
    unsigned terms, voids;
    struct spf_outcome out;
};

const char *
spf_result_name(enum spf_result r)
{
    static const char *const names[] = { "none", "neutral", "pass", "fail", "softfail", "temperror",
        "permerror" };
    return (size_t)r < TERN_ARRAY_LEN(names) ? names[r] : "?";
}

static void reason(struct spf_check *c, bool force, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
reason(struct spf_check *c, bool force, const char *fmt, ...)
{
    va_list ap;
    if (c->out.reason[0] != '\0' && !force)
        return;
    va_start(ap, fmt);
    vsnprintf(c->out.reason, sizeof(c->out.reason), fmt, ap);
    va_end(ap);
}

/* ---- answers ---- */

static int
lookup(struct spf_check *c, const char *name, int type, const struct dns_rr_result **out)
{
    for (size_t i = 0; i < c->n_memo; i++) {
        if (c->memo[i].type == type && strcasecmp(c->memo[i].name, name) == 0) {
            *out = c->memo[i].r;
            return EV_OK;
        }
    }
    if (c->n_memo >= SPF_MEMO_MAX) {
        *out = c->overflow;
        return EV_OK;
    }
    buf_reset(&c->q_name);
    buf_append_str(&c->q_name, name);
    str_lower(c->q_name.data);
    c->q_type = type;
    return EV_NEED;
}

static int
addr_type(const struct spf_check *c)
{
    return c->family == AF_INET ? DNS_RR_A : DNS_RR_AAAA;
}

static bool
prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    size_t whole = bits / 8;
    unsigned rest = bits % 8;
    if (memcmp(a, b, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

/* Does any address record of r fall in ip/bits? */
static bool
any_addr_match(const struct spf_check *c, const struct dns_rr_result *r, unsigned bits)
{
    size_t want = c->family == AF_INET ? 4 : 16;
    for (size_t i = 0; r->rc == DNS_OK && i < r->n; i++) {
        if (r->rr[i].len == want && prefix_match((const uint8_t *)r->rr[i].data, c->ip, bits))
            return true;
    }
    return false;
}

/* Is name equal to dom or a subdomain of it (case-insensitive)? */
static bool
name_under(const char *name, const char *dom)
{
    size_t n = strlen(name), d = strlen(dom);
    if (n == d)
        return strcasecmp(name, dom) == 0;
    return n > d && name[n - d - 1] == '.' && strcasecmp(name + n - d, dom) == 0;
}

/* ---- macros ---- */

/* The PTR query name (in-addr.arpa / ip6.arpa) of the client address. */
static int
client_reverse_name(const struct spf_check *c, char *rev, size_t cap)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = (sa_family_t)c->family;
    if (c->family == AF_INET)
        memcpy(&((struct sockaddr_in *)&ss)->sin_addr, c->ip, 4);
    else
        memcpy(&((struct sockaddr_in6 *)&ss)->sin6_addr, c->ip, 16);
    return dns_reverse_name((struct sockaddr *)&ss, rev, cap);
}

/* The validated domain name of the client for %{p} (§5.5, §7.3), into out. */
static int
validated_name(struct spf_check *c, const char *domain, struct buf *out)
{
    const struct dns_rr_result *ptr, *a;
    char rev[128];
    size_t best = SIZE_MAX;
    int best_rank = 0;
    buf_reset(out);
    if (client_reverse_name(c, rev, sizeof(rev)) < 0)
        return EV_OK;
    if (lookup(c, rev, DNS_RR_PTR, &ptr) == EV_NEED)
        return EV_NEED;
    for (size_t i = 0; ptr->rc == DNS_OK && i < ptr->n && i < SPF_NAMES_LIMIT; i++) {
        const char *name = ptr->rr[i].data;
        int rank = strcasecmp(name, domain) == 0 ? 3 : name_under(name, domain) ? 2 : 1;
        if (name[0] == '\0' || rank <= best_rank)
            continue;
        if (lookup(c, name, addr_type(c), &a) == EV_NEED)
            return EV_NEED;
        if (any_addr_match(c, a, c->family == AF_INET ? 32 : 128)) {
            best = i;
            best_rank = rank;
            if (rank == 3)
                break;
        }
    }
    buf_append_str(out, best != SIZE_MAX ? ptr->rr[best].data : "unknown");
    return EV_OK;
}

static void
make_env(const struct spf_check *c, const char *domain, const char *p, struct spf_macro_env *env)
{
    env->s = c->sender;
    env->l = c->local;
    env->o = c->sender_domain;
    env->d = domain;
    env->i = c->ip_dots;
    env->p = p != NULL ? p : "unknown";
    env->v = c->family == AF_INET ? "in-addr" : "ip6";
    env->h = c->helo;
    env->c = c->ip_text;
    env->r = c->receiver;
    env->t = c->now;
}

/* Expand s (any ctx) with %{p} looked up first when used. */
static int
expand(struct spf_check *c, const char *s, size_t len, const char *domain, enum spf_macro_ctx ctx,
    size_t max, struct buf *out, bool *ok)
{
    struct spf_macro_env env;
    struct buf p = BUF_INIT;
    buf_reset(out);
    if (spf_macro_uses(s, len, 'p') && validated_name(c, domain, &p) == EV_NEED) {
        buf_fini(&p);
        return EV_NEED;
    }
    make_env(c, domain, p.data, &env);
    *ok = spf_macro_expand(s, len, &env, ctx, max, out) == 0;
    buf_fini(&p);
    return EV_OK;
}

/* The target name of a term: its domain-spec expanded, or domain. */
static int
target(struct spf_check *c, const char *spec, size_t len, const char *domain, struct buf *out,
    bool *usable)
{
    bool ok = true;
    if (spec == NULL) {
        buf_reset(out);
        buf_append_str(out, domain);
    } else if (expand(c, spec, len, domain, SPF_MACRO_DOMAIN, SPF_NAME_BUF, out, &ok) == EV_NEED) {
        return EV_NEED;
    }
    *usable = ok && spf_target_name(out);
    return EV_OK;
}

/* ---- check_host ---- */

static int check_host(
    struct spf_check *c, const char *domain, unsigned depth, bool in_include, enum spf_result *res);

static enum mres
count_term(struct spf_check *c)
{
    if (++c->terms > SPF_TERMS_LIMIT) {
        reason(c, false, "more than %d DNS-querying terms (RFC 7208 4.6.4)", SPF_TERMS_LIMIT);
        return M_PERM;
    }
    return M_NOMATCH;
}

/* A void lookup (NXDOMAIN or no records, §4.6.4): no match, or a
 * permerror past the limit. */
static enum mres
void_lookup(struct spf_check *c, const char *name)
{
    if (++c->voids > SPF_VOID_LIMIT) {
        reason(c, false, "more than %d void DNS lookups (last: %s)", SPF_VOID_LIMIT, name);
        return M_PERM;
    }
    return M_NOMATCH;
}

static enum mres
temp_error(struct spf_check *c, const char *name, const struct dns_rr_result *r)
{
    reason(c, false, "temporary DNS error at %s: %s", name, r->err[0] ? r->err : "failure");
    return M_TEMP;
}

static enum mres
mech_a(struct spf_check *c, const struct spf_term *t, const char *name)
{
    const struct dns_rr_result *r;
    if (lookup(c, name, addr_type(c), &r) == EV_NEED)
        return M_NEED;
    if (r->rc == DNS_TEMP)
        return temp_error(c, name, r);
    if (r->rc == DNS_NXDOMAIN || r->rc == DNS_NODATA)
        return void_lookup(c, name);
    return any_addr_match(c, r, c->family == AF_INET ? t->cidr4 : t->cidr6) ? M_MATCH : M_NOMATCH;
}

static enum mres
mech_mx(struct spf_check *c, const struct spf_term *t, const char *name)
{
    const struct dns_rr_result *mx, *a;
    if (lookup(c, name, DNS_RR_MX, &mx) == EV_NEED)
        return M_NEED;
    if (mx->rc == DNS_TEMP)
        return temp_error(c, name, mx);
    if (mx->rc == DNS_NXDOMAIN || mx->rc == DNS_NODATA)
        return void_lookup(c, name);
    if (mx->rc != DNS_OK)
        return M_NOMATCH;
    if (mx->n > SPF_NAMES_LIMIT || mx->truncated) {
        reason(c, false, "%s has more than %d MX records (RFC 7208 4.6.4)", name, SPF_NAMES_LIMIT);
        return M_PERM;
    }
    for (size_t i = 0; i < mx->n; i++) {
        const char *host = mx->rr[i].data;
        if (host[0] == '\0')
            continue; /* the root: a null MX names no host */
        if (lookup(c, host, addr_type(c), &a) == EV_NEED)
            return M_NEED;
        if (a->rc == DNS_TEMP)
            return temp_error(c, host, a);
        if (any_addr_match(c, a, c->family == AF_INET ? t->cidr4 : t->cidr6))
            return M_MATCH;
    }
    return M_NOMATCH;
}

static enum mres
mech_ptr(struct spf_check *c, const char *name)
{
    const struct dns_rr_result *ptr, *a;
    char rev[128];
    if (client_reverse_name(c, rev, sizeof(rev)) < 0)
        return M_NOMATCH;
    if (lookup(c, rev, DNS_RR_PTR, &ptr) == EV_NEED)
        return M_NEED;
    /* §5.5: a DNS error in the PTR lookup is no match. */
    if (ptr->rc == DNS_NXDOMAIN || ptr->rc == DNS_NODATA)
        return void_lookup(c, rev);
    for (size_t i = 0; ptr->rc == DNS_OK && i < ptr->n && i < SPF_NAMES_LIMIT; i++) {
        const char *host = ptr->rr[i].data;
        if (host[0] == '\0' || !name_under(host, name))
            continue;
        if (lookup(c, host, addr_type(c), &a) == EV_NEED)
            return M_NEED;
        /* Errors skip the name (§5.5). */
        if (any_addr_match(c, a, c->family == AF_INET ? 32 : 128))
            return M_MATCH;
    }
    return M_NOMATCH;
}

static enum mres
mech_exists(struct spf_check *c, const char *name)
{
    const struct dns_rr_result *r;
    /* §5.7: always an A query, whatever the client's family. */
    if (lookup(c, name, DNS_RR_A, &r) == EV_NEED)
        return M_NEED;
    if (r->rc == DNS_TEMP)
        return temp_error(c, name, r);
    if (r->rc == DNS_NXDOMAIN || r->rc == DNS_NODATA)
        return void_lookup(c, name);
    return r->rc == DNS_OK ? M_MATCH : M_NOMATCH;
}

static enum mres
mech_include(struct spf_check *c, const char *name, unsigned depth)
{
    enum spf_result r;
    if (check_host(c, name, depth + 1, true, &r) == EV_NEED)
        return M_NEED;
    /* §5.2 table. */
    switch (r) {
    case SPF_PASS:
        return M_MATCH;
    case SPF_FAIL:
    case SPF_SOFTFAIL:
    case SPF_NEUTRAL:
        return M_NOMATCH;
    case SPF_TEMPERROR:
        return M_TEMP;
    case SPF_NONE:
        reason(c, false, "include:%s names a domain without an SPF record", name);
        return M_PERM;
    case SPF_PERMERROR:
        return M_PERM;
    }
    return M_PERM;
}

static enum mres
eval_mech(struct spf_check *c, const struct spf_term *t, const char *domain, unsigned depth)
{
    struct buf name = BUF_INIT;
    enum mres m;
    bool usable = false;
    switch (t->mech) {
    case SPF_M_ALL:
        return M_MATCH;
    case SPF_M_IP4:
        return c->family == AF_INET && prefix_match(t->net, c->ip, t->cidr4) ? M_MATCH : M_NOMATCH;
    case SPF_M_IP6:
        return c->family == AF_INET6 && prefix_match(t->net, c->ip, t->cidr6) ? M_MATCH : M_NOMATCH;
    default:
        break;
    }
    if ((m = count_term(c)) != M_NOMATCH)
        return m;
    if (target(c, t->spec, t->spec_len, domain, &name, &usable) == EV_NEED) {
        buf_fini(&name);
        return M_NEED;
    }
    if (!usable) {
        /* A target that cannot be a DNS name (long or empty label) matches
         * nothing (RFC 7208 4.8); for include it is a missing record. */
        buf_fini(&name);
        if (t->mech == SPF_M_INCLUDE)
            reason(c, false, "include target is not a valid domain name");
        return t->mech == SPF_M_INCLUDE ? M_PERM : M_NOMATCH;
    }
    switch (t->mech) {
    case SPF_M_A:
        m = mech_a(c, t, name.data);
        break;
    case SPF_M_MX:
        m = mech_mx(c, t, name.data);
        break;
    case SPF_M_PTR:
        m = mech_ptr(c, name.data);
        break;
    case SPF_M_EXISTS:
        m = mech_exists(c, name.data);
        break;
    default:
        m = mech_include(c, name.data, depth);
        break;
    }
    buf_fini(&name);
    return m;
}

/* §6.2: the explanation of a fail from this record, or the default. */
static int
explain(struct spf_check *c, const struct spf_record *rec, const char *domain)
{
    const struct dns_rr_result *r;
    struct buf name = BUF_INIT, text = BUF_INIT;
    bool ok = false;
    int ev = EV_OK;
    snprintf(c->out.explanation, sizeof(c->out.explanation),
        "%s is not allowed to send mail for %s", c->ip_text, domain);
    c->out.exp_default = true;
    if (rec->exp == NULL)
        return EV_OK;
    /* Problems with the target, the lookup or the text mean "no exp=". */
    if ((ev = target(c, rec->exp, rec->exp_len, domain, &name, &ok)) == EV_NEED || !ok)
        goto out;
    if ((ev = lookup(c, name.data, DNS_RR_TXT, &r)) == EV_NEED)
        goto out;
    if (r->rc != DNS_OK || r->n != 1)
        goto out;
    ev = expand(c, r->rr[0].data, r->rr[0].len, domain, SPF_MACRO_EXP,
        sizeof(c->out.explanation) - 1, &text, &ok);
    if (ev == EV_OK && ok) {
        memcpy(c->out.explanation, text.data ? text.data : "", text.len);
        c->out.explanation[text.len] = '\0';
        c->out.exp_default = false;
    }
out:
    buf_fini(&name);
    buf_fini(&text);
    return ev;
}

static enum spf_result
qual_result(char q)
{
    switch (q) {
    case '-':
        return SPF_FAIL;
    case '~':
        return SPF_SOFTFAIL;
    case '?':
        return SPF_NEUTRAL;
    default:
        return SPF_PASS;
    }
}

static int
eval_redirect(struct spf_check *c, const struct spf_record *rec, const char *domain, unsigned depth,
    bool in_include, enum spf_result *res)
{
    struct buf name = BUF_INIT;
    bool usable = false;
    if (count_term(c) == M_PERM) {
        *res = SPF_PERMERROR;
        return EV_OK;
    }
    if (target(c, rec->redirect, rec->redirect_len, domain, &name, &usable) == EV_NEED) {
        buf_fini(&name);
        return EV_NEED;
    }
    if (!usable) {
        *res = SPF_NONE;
    } else if (check_host(c, name.data, depth + 1, in_include, res) == EV_NEED) {
        buf_fini(&name);
        return EV_NEED;
    }
    /* §6.1: no record at the target is a permerror. */
    if (*res == SPF_NONE) {
        reason(c, false, "redirect=%s names a domain without an SPF record",
            name.data ? name.data : "");
        *res = SPF_PERMERROR;
    }
    buf_fini(&name);
    return EV_OK;
}

static int
eval_record(struct spf_check *c, const struct spf_record *rec, const char *domain, unsigned depth,
    bool in_include, enum spf_result *res)
{
    for (size_t i = 0; i < rec->n; i++) {
        const struct spf_term *t = &rec->terms[i];
        switch (eval_mech(c, t, domain, depth)) {
        case M_NEED:
            return EV_NEED;
        case M_TEMP:
            *res = SPF_TEMPERROR;
            return EV_OK;
        case M_PERM:
            *res = SPF_PERMERROR;
            return EV_OK;
        case M_NOMATCH:
            continue;
        case M_MATCH:
            *res = qual_result(t->qual);
            if (in_include)
                return EV_OK;
            reason(c, true, "matched '%.*s' in the SPF record of %s", (int)t->text_len, t->text,
                domain);
            return *res == SPF_FAIL ? explain(c, rec, domain) : EV_OK;
        }
    }
    /* §6.1: redirect applies only without an "all" mechanism. */
    if (rec->redirect != NULL && !rec->has_all)
        return eval_redirect(c, rec, domain, depth, in_include, res);
    if (!in_include)
        reason(c, true, "no term matched in the SPF record of %s (default neutral)", domain);
    *res = SPF_NEUTRAL;
    return EV_OK;
}

/* §4.3: a usable <domain>: labels of 1..63 octets, at least two of them,
 * printable, not an address literal. */
static bool
domain_usable(const char *d)
{
    size_t n = strlen(d), label = 0, labels = 1;
    if (n > 0 && d[n - 1] == '.')
        n--;
    if (n == 0 || n > SPF_DOMAIN_MAX || d[0] == '[')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)d[i];
        if (ch <= 0x20 || ch >= 0x7f)
            return false;
        if (ch == '.') {
            if (label == 0)
                return false;
            label = 0;
            labels++;
        } else if (++label > 63) {
            return false;
        }
    }
    return labels >= 2;
}

static int
check_host(
    struct spf_check *c, const char *domain, unsigned depth, bool in_include, enum spf_result *res)
{
    const struct dns_rr_result *r;
    const struct dns_rr *spf = NULL;
    struct spf_record rec;
    size_t n_spf = 0;
    char err[160];
    int ev;
    if (depth > SPF_DEPTH_MAX) {
        reason(c, false, "SPF records nested too deeply");
        *res = SPF_PERMERROR;
        return EV_OK;
    }
    if (!domain_usable(domain)) {
        *res = SPF_NONE;
        return EV_OK;
    }
    if (lookup(c, domain, DNS_RR_TXT, &r) == EV_NEED)
        return EV_NEED;
    if (r->rc == DNS_TEMP) {
        reason(c, false, "temporary DNS error looking up the SPF record of %s", domain);
        *res = SPF_TEMPERROR;
        return EV_OK;
    }
    for (size_t i = 0; r->rc == DNS_OK && i < r->n; i++) {
        if (spf_record_is_spf(r->rr[i].data, r->rr[i].len)) {
            spf = &r->rr[i];
            n_spf++;
        }
    }
    if (n_spf == 0) {
        /* Nested (include, redirect): the caller says what it means. */
        if (depth == 0)
            reason(c, false, "no SPF record at %s", domain);
        *res = SPF_NONE;
        return EV_OK;
    }
    if (n_spf > 1) {
        reason(c, false, "%zu SPF records at %s (RFC 7208 4.5: exactly one)", n_spf, domain);
        *res = SPF_PERMERROR;
        return EV_OK;
    }
    if (spf_record_parse(spf->data, spf->len, &rec, err, sizeof(err)) < 0) {
        reason(c, false, "SPF record of %s: %s", domain, err);
        *res = SPF_PERMERROR;
        return EV_OK;
    }
    ev = eval_record(c, &rec, domain, depth, in_include, res);
    spf_record_fini(&rec);
    return ev;
}

/* ---- the check object ---- */

static void
set_ip(struct spf_check *c, const struct sockaddr_storage *ss)
{
    static const char hex[] = "0123456789abcdef";
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            c->family = AF_INET;
            memcpy(c->ip, a->s6_addr + 12, 4);
        } else {
            c->family = AF_INET6;
            memcpy(c->ip, a->s6_addr, 16);
        }
    } else {
        c->family = AF_INET;
        memcpy(c->ip, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    }
    inet_ntop(c->family, c->ip, c->ip_text, sizeof(c->ip_text));
    if (c->family == AF_INET) {
        snprintf(c->ip_dots, sizeof(c->ip_dots), "%s", c->ip_text);
    } else {
        /* §7.3: IPv6 %{i} is the 32 nibbles, dot separated. */
        size_t o = 0;
        for (size_t i = 0; i < 16; i++) {
            c->ip_dots[o++] = hex[c->ip[i] >> 4];
            c->ip_dots[o++] = '.';
            c->ip_dots[o++] = hex[c->ip[i] & 0xf];
            c->ip_dots[o++] = i < 15 ? '.' : '\0';
        }
    }
}

static void
set_sender(struct spf_check *c, const struct spf_request *req)
{
    const char *helo = req->helo ? req->helo : "";
    const char *s = req->sender;
    const char *at;
    struct buf b = BUF_INIT;
    if (s == NULL || s[0] == '\0') {
        buf_printf(&b, "postmaster@%s", helo);
        s = b.data;
    }
    at = strrchr(s, '@');
    /* §4.3: no local-part means "postmaster". */
    if (at == NULL) {
        c->local = xstrdup("postmaster");
        c->sender_domain = xstrdup(s);
    } else {
        c->local = at == s ? xstrdup("postmaster") : xstrndup(s, (size_t)(at - s));
        c->sender_domain = xstrdup(at + 1);
    }
    buf_reset(&b);
    buf_printf(&b, "%s@%s", c->local, c->sender_domain);
    c->sender = buf_take(&b);
    buf_fini(&b);
    c->helo = xstrdup(helo);
}

struct spf_check *
spf_check_new(const struct spf_request *req)
{
    struct spf_check *c;
    const char *d;
    size_t dl;
    if (req->ip.ss_family != AF_INET && req->ip.ss_family != AF_INET6)
        return NULL;
    c = xcalloc(1, sizeof(*c));
    set_ip(c, &req->ip);
    set_sender(c, req);
    d = req->domain != NULL ? req->domain : c->sender_domain;
    dl = strlen(d);
    if (dl > 0 && d[dl - 1] == '.')
        dl--;
    c->domain = xstrndup(d, dl);
    c->domain_ok = domain_usable(c->domain);
    c->receiver = xstrdup(req->receiver != NULL ? req->receiver : "unknown");
    snprintf(c->now, sizeof(c->now), "%lld",
        (long long)(req->now_s != 0 ? req->now_s : tern_now_ms() / 1000));
    c->overflow = dns_rr_result_new(0, DNS_TEMP);
    snprintf(c->overflow->err, sizeof(c->overflow->err), "too many DNS lookups");
    return c;
}

void
spf_check_free(struct spf_check *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n_memo; i++) {
        free(c->memo[i].name);
        dns_rr_result_free(c->memo[i].r);
    }
    free(c->memo);
    dns_rr_result_free(c->overflow);
    free(c->sender);
    free(c->local);
    free(c->sender_domain);
    free(c->helo);
    free(c->domain);
    free(c->receiver);
    buf_fini(&c->q_name);
    free(c);
}

bool
spf_check_step(struct spf_check *c)
{
    enum spf_result res = SPF_NONE;
    if (c->done)
        return true;
    c->terms = c->voids = 0;
    memset(&c->out, 0, sizeof(c->out));
    if (!c->domain_ok) {
        reason(c, false, "'%s' is not a usable domain name (RFC 7208 4.3)", c->domain);
        c->out.result = SPF_NONE;
        c->done = true;
        return true;
    }
    if (check_host(c, c->domain, 0, false, &res) == EV_NEED)
        return false;
    c->out.result = res;
    if (res != SPF_FAIL) {
        c->out.explanation[0] = '\0';
        c->out.exp_default = false;
    }
    c->done = true;
    return true;
}

void
spf_check_question(const struct spf_check *c, const char **name, int *type)
{
    *name = c->q_name.data != NULL ? c->q_name.data : "";
    *type = c->q_type;
}

void
spf_check_answer(struct spf_check *c, const struct dns_rr_result *r)
{
    struct memo_entry *e;
    if (c->n_memo >= SPF_MEMO_MAX)
        return;
    c->memo = xrealloc(c->memo, (c->n_memo + 1) * sizeof(*c->memo));
    e = &c->memo[c->n_memo++];
    e->type = c->q_type;
    e->name = xstrdup(c->q_name.data != NULL ? c->q_name.data : "");
    e->r = dns_rr_result_dup(r);
}

const struct spf_outcome *
spf_check_outcome(const struct spf_check *c)
{
    return &c->out;
}

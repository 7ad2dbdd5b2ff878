/*
 * `ternctl dns check DOMAIN [--json]`: what the world sees of DOMAIN (SPF,
 * DKIM, DMARC, MX, the PTR of each egress address, MTA-STS and TLS-RPT) checked against this
 * relay's configuration, one finding per line with the exact record to
 * publish or change. Lookups go through the dns module (dns_resolvers or
 * resolv.conf) and the SPF evaluator; this tool waits for each answer by
 * running the event loop. Findings are collected, then printed in order.
 */
#include "cmd/dnscheck.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dns/dns.h"
#include "mtasts/mtasts.h"
#include "spf/spf.h"
#include "tlsrpt/tlsrpt.h"
#include "util/buf.h"
#include "util/cidr.h"
#include "util/parse.h"
#include "util/util.h"

#define EXIT_FAILS  1
#define EXIT_USAGE  2
#define EGRESS_MAX  16
#define TXT_CHUNK   255 /* RFC 1035 character-string */
#define ROUTE_LINE  512
#define KEY_DER_MAX 4096

enum level { LVL_OK, LVL_WARN, LVL_FAIL };

struct finding {
    enum level level;
    const char *check; /* static: "SPF", "DKIM", ... */
    char *msg;         /* owned */
    char *publish;     /* owned; NULL: nothing to publish */
};

struct ck {
    const struct config *cfg;
    const char *domain; /* lowercased copy, owned by main */
    struct event_base *base;
    struct dns *dns;
    struct sockaddr_storage egress[EGRESS_MAX];
    size_t n_egress;
    bool discovered;
    struct finding *f;
    size_t n_f;
    bool spf_aligned;  /* SPF passes for every egress address */
    bool dkim_aligned; /* a key for the domain is published and matches */
};

static void add(struct ck *k, enum level lvl, const char *check, const char *publish,
    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void
add(struct ck *k, enum level lvl, const char *check, const char *publish, const char *fmt, ...)
{
    struct buf b = BUF_INIT;
    va_list ap;
    struct finding *f;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    k->f = xrealloc(k->f, (k->n_f + 1) * sizeof(*k->f));
    f = &k->f[k->n_f++];
    f->level = lvl;
    f->check = check;
    f->msg = buf_take(&b);
    f->publish = publish != NULL ? xstrdup(publish) : NULL;
    buf_fini(&b);
}

static const char *
addr_text(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    return sockaddr_ntop((const struct sockaddr *)ss, buf, cap);
}

/* ---- waiting for the dns module and the SPF evaluator ---- */

struct rr_wait {
    bool done;
    struct dns_rr_result *r;
};

static void
rr_done(void *arg, const struct dns_rr_result *r)
{
    struct rr_wait *w = arg;
    w->r = dns_rr_result_dup(r);
    w->done = true;
}

/* Records of type at name (owned by the caller). */
static struct dns_rr_result *
query(struct ck *k, const char *name, int type)
{
    struct rr_wait w = { false, NULL };
    dns_lookup_rr(k->dns, name, type, rr_done, &w);
    while (!w.done)
        event_base_loop(k->base, EVLOOP_ONCE);
    return w.r;
}

struct spf_wait {
    bool done;
    struct spf_outcome out;
};

static void
spf_done(void *arg, const struct spf_outcome *o)
{
    struct spf_wait *w = arg;
    w->out = *o;
    w->done = true;
}

static void
spf_run(struct ck *k, const struct sockaddr_storage *ip, struct spf_outcome *out)
{
    struct spf_resolver res = spf_resolver_dns(k->dns);
    struct spf_request req;
    struct spf_wait w;
    char sender[DNS_NAME_MAX + 16];
    memset(&req, 0, sizeof(req));
    memset(&w, 0, sizeof(w));
    snprintf(sender, sizeof(sender), "postmaster@%s", k->domain);
    req.ip = *ip;
    req.sender = sender;
    req.helo = k->cfg->hostname;
    req.receiver = k->cfg->hostname;
    if (spf_eval_start(k->base, &res, &req, spf_done, &w) == NULL) {
        out->result = SPF_PERMERROR;
        snprintf(out->reason, sizeof(out->reason), "unusable address");
        return;
    }
    while (!w.done)
        event_base_loop(k->base, EVLOOP_ONCE);
    *out = w.out;
}

/* ---- egress addresses ---- */

/* The interface of the IPv4 default route (/proc/net/route), else of the
 * IPv6 one (/proc/net/ipv6_route). false when there is none. */
static bool
default_route_iface(char *ifname, size_t cap)
{
    char line[ROUTE_LINE], name[IF_NAMESIZE + 1], dst[64], mask[64];
    FILE *f = fopen("/proc/net/route", "r");
    bool found = false;
    while (f != NULL && !found && fgets(line, sizeof(line), f) != NULL) {
        char gw[16], flags[16], a[16], b[16], c[16];
        if (sscanf(line, "%16s %63s %15s %15s %15s %15s %15s %63s", name, dst, gw, flags, a, b, c,
                mask) == 8 &&
            strcmp(dst, "00000000") == 0 && strcmp(mask, "00000000") == 0)
            found = true;
    }
    if (f != NULL)
        fclose(f);
    f = found ? NULL : fopen("/proc/net/ipv6_route", "r");
    while (f != NULL && !found && fgets(line, sizeof(line), f) != NULL) {
        char plen[8], src[64], slen[8], nh[64], m[16], r[16], u[16], fl[16];
        if (sscanf(line, "%63s %7s %63s %7s %63s %15s %15s %15s %15s %16s", dst, plen, src, slen,
                nh, m, r, u, fl, name) == 10 &&
            strspn(dst, "0") == 32 && strcmp(plen, "00") == 0 && strcmp(name, "lo") != 0)
            found = true;
    }
    if (f != NULL)
        fclose(f);
    if (found)
        snprintf(ifname, cap, "%s", name);
    return found;
}

static bool
usable_egress(const struct sockaddr *sa)
{
    if (sa == NULL || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
        return false;
    if (sockaddr_is_loopback(sa))
        return false;
    if (sa->sa_family == AF_INET6 &&
        IN6_IS_ADDR_LINKLOCAL(&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr))
        return false;
    return true;
}

static void
discover_egress(struct ck *k)
{
    struct ifaddrs *ifs = NULL;
    char ifname[IF_NAMESIZE + 1] = "";
    bool have_route = default_route_iface(ifname, sizeof(ifname));
    struct buf list = BUF_INIT;
    k->discovered = true;
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i != NULL && k->n_egress < EGRESS_MAX; i = i->ifa_next) {
            char t[INET6_ADDRSTRLEN];
            if (!usable_egress(i->ifa_addr) || (have_route && strcmp(i->ifa_name, ifname) != 0))
                continue;
            memset(&k->egress[k->n_egress], 0, sizeof(k->egress[0]));
            memcpy(&k->egress[k->n_egress], i->ifa_addr,
                i->ifa_addr->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                  : sizeof(struct sockaddr_in6));
            buf_printf(&list, "%s%s", list.len ? " " : "",
                addr_text(&k->egress[k->n_egress++], t, sizeof(t)));
        }
        freeifaddrs(ifs);
    }
    if (k->n_egress == 0)
        add(k, LVL_WARN, "egress", NULL,
            "egress_addresses is not set and no address was found on %s; set egress_addresses "
            "to the addresses tern sends from",
            have_route ? ifname : "any interface");
    else
        add(k, LVL_OK, "egress", NULL,
            "egress_addresses is not set: using %s, the addresses of %s (behind NAT, set "
            "egress_addresses to the public ones)",
            list.data, have_route ? ifname : "every interface (no default route)");
    buf_fini(&list);
}

/* From egress_addresses: host addresses only. -1 on a network. */
static int
configured_egress(struct ck *k)
{
    for (size_t i = 0; i < k->cfg->n_egress_addresses && k->n_egress < EGRESS_MAX; i++) {
        const struct cidr *c = &k->cfg->egress_addresses[i];
        struct sockaddr_storage *ss = &k->egress[k->n_egress++];
        memset(ss, 0, sizeof(*ss));
        if (c->prefix != (c->family == AF_INET ? 32u : 128u)) {
            fprintf(stderr, "ternctl: egress_addresses: a network (/%u) is not an address\n",
                c->prefix);
            return -1;
        }
        ss->ss_family = (sa_family_t)c->family;
        if (c->family == AF_INET)
            memcpy(&((struct sockaddr_in *)ss)->sin_addr, c->addr, 4);
        else
            memcpy(&((struct sockaddr_in6 *)ss)->sin6_addr, c->addr, 16);
    }
    return 0;
}

/* ---- record text helpers ---- */

/* NAME. TXT "..." ["..."] with strings of at most 255 characters. */
static char *
txt_record(const char *name, const char *value)
{
    struct buf b = BUF_INIT;
    size_t n = strlen(value);
    buf_printf(&b, "%s. TXT", name);
    for (size_t o = 0; o < n || o == 0; o += TXT_CHUNK) {
        size_t len = n - o < TXT_CHUNK ? n - o : TXT_CHUNK;
        buf_printf(&b, " \"%.*s\"", (int)len, value + o);
        if (n == 0)
            break;
    }
    return buf_take(&b);
}

/* The TXT records of r that start with prefix (case-insensitive) and are
 * followed by end, space or ';'. Returns the count; *first the first one. */
static size_t
records_with(const struct dns_rr_result *r, const char *prefix, const struct dns_rr **first)
{
    size_t n = 0, pl = strlen(prefix);
    *first = NULL;
    for (size_t i = 0; r->rc == DNS_OK && i < r->n; i++) {
        const struct dns_rr *rr = &r->rr[i];
        if (rr->len < pl || strncasecmp(rr->data, prefix, pl) != 0 ||
            (rr->len > pl && rr->data[pl] != ' ' && rr->data[pl] != ';'))
            continue;
        if (n++ == 0)
            *first = rr;
    }
    return n;
}

/* ---- SPF ---- */

/* "ip4:A" / "ip6:A" terms for the egress addresses. */
static void
egress_terms(const struct ck *k, struct buf *out)
{
    for (size_t i = 0; i < k->n_egress; i++) {
        char t[INET6_ADDRSTRLEN];
        buf_printf(out, "%sip%c:%s", out->len ? " " : "",
            k->egress[i].ss_family == AF_INET ? '4' : '6', addr_text(&k->egress[i], t, sizeof(t)));
    }
}

/* Terms for the smarthosts: "a:HOST" names a domain whose A/AAAA records
 * match (RFC 7208 §5.3), so an address literal ("[192.0.2.25]") needs
 * "ip4:"/"ip6:" instead (§5.6); "a:192.0.2.25" is not a valid domain-spec. */
static void
smarthost_terms(const struct ck *k, struct buf *out)
{
    for (size_t i = 0; i < k->cfg->n_smarthosts; i++) {
        const char *host = k->cfg->smarthosts[i].host;
        struct sockaddr_storage ss;
        socklen_t len;
        char t[INET6_ADDRSTRLEN];
        if (dns_literal(host, 0, &ss, &len) == 0)
            buf_printf(out, "%sip%c:%s", out->len ? " " : "", ss.ss_family == AF_INET ? '4' : '6',
                addr_text(&ss, t, sizeof(t)));
        else
            buf_printf(out, "%sa:%s", out->len ? " " : "", host);
    }
}

/* The record to publish: the existing one with the missing address terms
 * added after "v=spf1", or a new one. */
static char *
spf_fix(const struct ck *k, const char *existing, const struct sockaddr_storage *missing)
{
    struct buf v = BUF_INIT, terms = BUF_INIT;
    char *rec;
    if (missing != NULL) {
        char t[INET6_ADDRSTRLEN];
        buf_printf(&terms, "ip%c:%s", missing->ss_family == AF_INET ? '4' : '6',
            addr_text(missing, t, sizeof(t)));
    } else if (k->cfg->n_smarthosts > 0) {
        smarthost_terms(k, &terms);
    } else {
        egress_terms(k, &terms);
    }
    if (existing != NULL)
        buf_printf(&v, "v=spf1 %s%s", terms.data ? terms.data : "", existing + 6);
    else
        buf_printf(&v, "v=spf1 %s -all", terms.data ? terms.data : "");
    rec = txt_record(k->domain, v.data);
    buf_fini(&v);
    buf_fini(&terms);
    return rec;
}

static void
spf_check_addr(struct ck *k, const char *record, const struct sockaddr_storage *ip, bool advice)
{
    struct spf_outcome o;
    char t[INET6_ADDRSTRLEN];
    char *fix;
    spf_run(k, ip, &o);
    addr_text(ip, t, sizeof(t));
    if (o.result == SPF_PASS) {
        add(k, LVL_OK, "SPF", NULL, "%s passes for %s (%s)", k->domain, t, o.reason);
        return;
    }
    if (!advice)
        k->spf_aligned = false;
    fix = (o.result == SPF_TEMPERROR || o.result == SPF_PERMERROR) ? NULL : spf_fix(k, record, ip);
    add(k, advice ? LVL_WARN : LVL_FAIL, "SPF", fix, "%s gives %s for %s%s (%s)", k->domain,
        spf_result_name(o.result), t, advice ? ", an address of the smarthost" : "", o.reason);
    free(fix);
}

/* With a smarthost the provider's servers send: report on the smarthost's
 * own addresses as advice only. */
static void
spf_smarthost(struct ck *k, const char *record)
{
    const struct hostport *sh = &k->cfg->smarthosts[0];
    struct dns_rr_result *r[2] = { query(k, sh->host, DNS_RR_A), query(k, sh->host, DNS_RR_AAAA) };
    struct sockaddr_storage ss;
    socklen_t len;
    size_t n = 0;
    add(k, LVL_WARN, "SPF", NULL,
        "mail leaves through the smarthost %s: %s's SPF record must include the servers of that "
        "provider (usually an include: the provider documents)",
        sh->host, k->domain);
    if (dns_literal(sh->host, 0, &ss, &len) == 0) {
        spf_check_addr(k, record, &ss, true);
        n++;
    }
    for (size_t f = 0; f < 2; f++) {
        for (size_t i = 0; r[f]->rc == DNS_OK && i < r[f]->n && n < 4; i++, n++) {
            memset(&ss, 0, sizeof(ss));
            ss.ss_family = f == 0 ? AF_INET : AF_INET6;
            if (f == 0)
                memcpy(&((struct sockaddr_in *)&ss)->sin_addr, r[f]->rr[i].data, 4);
            else
                memcpy(&((struct sockaddr_in6 *)&ss)->sin6_addr, r[f]->rr[i].data, 16);
            spf_check_addr(k, record, &ss, true);
        }
        dns_rr_result_free(r[f]);
    }
}

static void
check_spf(struct ck *k)
{
    struct dns_rr_result *r = query(k, k->domain, DNS_RR_TXT);
    const struct dns_rr *rec = NULL;
    size_t n = records_with(r, "v=spf1", &rec);
    char *fix;
    k->spf_aligned = false;
    if (r->rc == DNS_TEMP) {
        add(k, LVL_FAIL, "SPF", NULL, "cannot look up TXT at %s: %s", k->domain, r->err);
    } else if (n == 0) {
        fix = spf_fix(k, NULL, NULL);
        add(k, LVL_FAIL, "SPF", fix, "no SPF record at %s%s", k->domain,
            r->rc == DNS_NXDOMAIN ? " (the domain does not exist)" : "");
        free(fix);
    } else if (n > 1) {
        add(k, LVL_FAIL, "SPF", NULL,
            "%zu SPF records at %s: receivers treat this as a permanent error (RFC 7208 4.5); "
            "merge them into one",
            n, k->domain);
    } else {
        if (strstr(rec->data, " +all") != NULL || strstr(rec->data, " all") != NULL)
            add(k, LVL_WARN, "SPF", NULL,
                "the SPF record of %s ends in +all: it authorizes every host on the Internet",
                k->domain);
        k->spf_aligned = k->n_egress > 0 && k->cfg->n_smarthosts == 0;
        if (k->cfg->n_smarthosts > 0)
            spf_smarthost(k, rec->data);
        else
            for (size_t i = 0; i < k->n_egress; i++)
                spf_check_addr(k, rec->data, &k->egress[i], false);
    }
    dns_rr_result_free(r);
}

/* ---- DKIM ---- */

struct dkim_key {
    EVP_PKEY *pkey; /* owned */
    bool ed25519;
    int bits;
    char *p; /* base64 of what p= must hold: SPKI DER (RSA) or the raw key (Ed25519) */
};

static char *
b64(const unsigned char *d, size_t n)
{
    struct buf b = BUF_INIT;
    b64_encode(d, n, &b);
    return buf_take(&b);
}

static int
dkim_load(const char *file, struct dkim_key *key, struct buf *why)
{
    FILE *f = fopen(file, "r");
    unsigned char raw[KEY_DER_MAX], *der = NULL;
    size_t rawlen = sizeof(raw);
    int derlen;
    memset(key, 0, sizeof(*key));
    if (f == NULL) {
        buf_printf(why, "cannot open %s", file);
        return -1;
    }
    key->pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (key->pkey == NULL) {
        buf_printf(why, "%s holds no PEM private key", file);
        return -1;
    }
    key->bits = EVP_PKEY_get_bits(key->pkey);
    if (EVP_PKEY_get_base_id(key->pkey) == EVP_PKEY_ED25519) {
        key->ed25519 = true;
        if (EVP_PKEY_get_raw_public_key(key->pkey, raw, &rawlen) != 1)
            goto bad;
        key->p = b64(raw, rawlen);
    } else if (EVP_PKEY_get_base_id(key->pkey) == EVP_PKEY_RSA) {
        derlen = i2d_PUBKEY(key->pkey, &der);
        if (derlen <= 0)
            goto bad;
        key->p = b64(der, (size_t)derlen);
        OPENSSL_free(der);
    } else {
        buf_printf(why, "%s is neither an RSA nor an Ed25519 key", file);
        return -1;
    }
    return 0;
bad:
    buf_printf(why, "cannot derive the public key of %s", file);
    return -1;
}

static void
dkim_key_fini(struct dkim_key *key)
{
    EVP_PKEY_free(key->pkey);
    free(key->p);
}

/* The value of tag in a "tag=value; ..." list, whitespace removed, into
 * out; false when absent. */
static bool
tag_value(const char *rec, const char *tag, struct buf *out)
{
    size_t tl = strlen(tag);
    buf_reset(out);
    for (const char *p = rec; *p != '\0';) {
        const char *end = strchr(p, ';'), *eq;
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        eq = memchr(p, '=', len);
        if (eq != NULL) {
            size_t nl = (size_t)(eq - p);
            while (nl > 0 && (p[nl - 1] == ' ' || p[nl - 1] == '\t'))
                nl--;
            if (nl == tl && strncasecmp(p, tag, tl) == 0) {
                for (const char *v = eq + 1; v < p + len; v++)
                    if (*v != ' ' && *v != '\t' && *v != '\r' && *v != '\n')
                        buf_append_char(out, *v);
                if (out->data == NULL)
                    buf_append_str(out, "");
                return true;
            }
        }
        p = end ? end + 1 : p + len;
    }
    return false;
}

/* Does the published p= (base64) hold key's public key? */
static bool
dkim_key_matches(const struct dkim_key *key, const char *p)
{
    unsigned char pub[KEY_DER_MAX];
    const unsigned char *q = pub;
    size_t n;
    EVP_PKEY *pk;
    bool same;
    /* As the verifier reads p= (strict RFC 4648 base64). */
    if (b64_decode(p, strlen(p), pub, sizeof(pub), &n) < 0)
        return false;
    if (key->ed25519)
        return strcmp(p, key->p) == 0;
    /* RSA: compare the keys, not the text (equivalent encodings exist). */
    pk = d2i_PUBKEY(NULL, &q, (long)n);
    same = pk != NULL && EVP_PKEY_eq(pk, key->pkey) == 1;
    EVP_PKEY_free(pk);
    return same;
}

static void
dkim_check_record(struct ck *k, const struct dkim_entry *e, const struct dkim_key *key,
    const char *name, const char *publish)
{
    struct dns_rr_result *r = query(k, name, DNS_RR_TXT);
    struct buf kt = BUF_INIT, p = BUF_INIT;
    const struct dns_rr *rec = NULL;
    size_t n = 0;
    for (size_t i = 0; r->rc == DNS_OK && i < r->n; i++) {
        if (tag_value(r->rr[i].data, "p", &p) && n++ == 0)
            rec = &r->rr[i];
    }
    if (r->rc == DNS_TEMP) {
        add(k, LVL_FAIL, "DKIM", NULL, "cannot look up TXT at %s: %s", name, r->err);
    } else if (n == 0) {
        add(k, LVL_FAIL, "DKIM", publish, "no DKIM key at %s", name);
    } else if (n > 1) {
        add(k, LVL_FAIL, "DKIM", publish, "%zu DKIM keys at %s: publish exactly one", n, name);
    } else if (tag_value(rec->data, "p", &p) && p.len == 0) {
        add(k, LVL_FAIL, "DKIM", publish, "the key at %s is revoked (empty p=)", name);
    } else if (tag_value(rec->data, "k", &kt) &&
               strcasecmp(kt.data, key->ed25519 ? "ed25519" : "rsa") != 0) {
        add(k, LVL_FAIL, "DKIM", publish, "%s has k=%s but %s is an %s key", name, kt.data,
            e->keyfile, key->ed25519 ? "ed25519" : "rsa");
    } else if (!dkim_key_matches(key, p.data)) {
        add(k, LVL_FAIL, "DKIM", publish, "the key published at %s does not match %s", name,
            e->keyfile);
    } else {
        k->dkim_aligned = true;
        add(k, LVL_OK, "DKIM", NULL, "%s matches %s (%s, %d bits)", name, e->keyfile,
            key->ed25519 ? "ed25519" : "rsa", key->bits);
    }
    buf_fini(&kt);
    buf_fini(&p);
    dns_rr_result_free(r);
}

static void
dkim_check_entry(struct ck *k, const struct dkim_entry *e)
{
    struct dkim_key key;
    struct buf why = BUF_INIT, name = BUF_INIT, v = BUF_INIT;
    char *publish;
    if (dkim_load(e->keyfile, &key, &why) < 0) {
        add(k, LVL_FAIL, "DKIM", NULL, "selector %s: %s", e->selector, why.data);
        dkim_key_fini(&key);
        buf_fini(&why);
        return;
    }
    buf_printf(&name, "%s._domainkey.%s", e->selector, k->domain);
    buf_printf(&v, "v=DKIM1; k=%s; p=%s", key.ed25519 ? "ed25519" : "rsa", key.p);
    publish = txt_record(name.data, v.data);
    if (!key.ed25519 && key.bits < 1024)
        add(k, LVL_FAIL, "DKIM", NULL,
            "%s is a %d-bit RSA key: receivers ignore keys under 1024 bits (RFC 8301); run "
            "ternctl dkim keygen %s %s",
            e->keyfile, key.bits, k->domain, e->selector);
    else if (!key.ed25519 && key.bits < 2048)
        add(k, LVL_WARN, "DKIM", NULL, "%s is a %d-bit RSA key: 2048 bits are recommended",
            e->keyfile, key.bits);
    dkim_check_record(k, e, &key, name.data, publish);
    free(publish);
    dkim_key_fini(&key);
    buf_fini(&why);
    buf_fini(&name);
    buf_fini(&v);
}

static void
check_dkim(struct ck *k)
{
    size_t n = 0;
    k->dkim_aligned = false;
    for (size_t i = 0; i < k->cfg->n_dkim_sign; i++) {
        if (strcasecmp(k->cfg->dkim_sign[i].domain, k->domain) == 0) {
            dkim_check_entry(k, &k->cfg->dkim_sign[i]);
            n++;
        }
    }
    if (n == 0)
        add(k, LVL_WARN, "DKIM", NULL,
            "no dkim_sign entry for %s: its mail leaves unsigned; run ternctl dkim keygen %s "
            "SELECTOR and add the dkim_sign entry it prints",
            k->domain, k->domain);
}

/* ---- DMARC (RFC 7489) ---- */

static bool
one_of(const char *v, const char *const *allowed)
{
    for (; *allowed != NULL; allowed++)
        if (strcasecmp(v, *allowed) == 0)
            return true;
    return false;
}

/* Syntax of the tags we rely on; NULL when fine, else what is wrong. */
static const char *
dmarc_problem(const char *rec, struct buf *p)
{
    static const char *const policies[] = { "none", "quarantine", "reject", NULL };
    static const char *const modes[] = { "r", "s", NULL };
    struct buf v = BUF_INIT;
    const char *why = NULL;
    uint64_t pct;
    if (!tag_value(rec, "p", p))
        why = "no p= tag (the policy)";
    else if (!one_of(p->data, policies))
        why = "p= must be none, quarantine or reject";
    else if (tag_value(rec, "sp", &v) && !one_of(v.data, policies))
        why = "sp= must be none, quarantine or reject";
    else if (tag_value(rec, "adkim", &v) && !one_of(v.data, modes))
        why = "adkim= must be r or s";
    else if (tag_value(rec, "aspf", &v) && !one_of(v.data, modes))
        why = "aspf= must be r or s";
    else if (tag_value(rec, "pct", &v) && parse_u64(v.data, v.len, 100, &pct) < 0)
        why = "pct= must be 0..100";
    buf_fini(&v);
    return why;
}

static void
dmarc_alignment(struct ck *k, const char *name, const char *policy)
{
    bool enforcing = strcasecmp(policy, "none") != 0;
    if (k->spf_aligned || k->dkim_aligned) {
        add(k, LVL_OK, "DMARC", NULL, "mail from %s sent through tern aligns (%s%s%s)", k->domain,
            k->spf_aligned ? "SPF" : "", k->spf_aligned && k->dkim_aligned ? " and " : "",
            k->dkim_aligned ? "DKIM" : "");
        return;
    }
    add(k, enforcing ? LVL_FAIL : LVL_WARN, "DMARC", NULL,
        "p=%s at %s but mail from %s sent through tern would not align: SPF does not pass for "
        "%s and no DKIM key for %s is published and matching; fix SPF or DKIM above%s",
        policy, name, k->domain, k->cfg->n_smarthosts ? "the smarthost" : "the egress addresses",
        k->domain, enforcing ? ", or receivers will reject or quarantine it" : "");
}

static void
check_dmarc(struct ck *k)
{
    struct buf name = BUF_INIT, v = BUF_INIT, p = BUF_INIT;
    struct dns_rr_result *r;
    const struct dns_rr *rec = NULL;
    const char *why;
    char *publish;
    size_t n;
    buf_printf(&name, "_dmarc.%s", k->domain);
    buf_printf(&v, "v=DMARC1; p=none; rua=mailto:postmaster@%s", k->domain);
    publish = txt_record(name.data, v.data);
    r = query(k, name.data, DNS_RR_TXT);
    n = records_with(r, "v=DMARC1", &rec);
    if (r->rc == DNS_TEMP)
        add(k, LVL_FAIL, "DMARC", NULL, "cannot look up TXT at %s: %s", name.data, r->err);
    else if (n == 0)
        add(k, LVL_FAIL, "DMARC", publish,
            "no DMARC record at %s: large receivers require one; start with p=none and raise "
            "it once reports show aligned mail",
            name.data);
    else if (n > 1)
        add(k, LVL_FAIL, "DMARC", NULL,
            "%zu DMARC records at %s: receivers ignore them all (RFC 7489 6.6.3); keep one", n,
            name.data);
    else if ((why = dmarc_problem(rec->data, &p)) != NULL)
        add(k, LVL_FAIL, "DMARC", publish, "the record at %s is invalid: %s", name.data, why);
    else {
        add(k, strcasecmp(p.data, "none") == 0 ? LVL_WARN : LVL_OK, "DMARC", NULL,
            "%s: policy p=%s%s (\"%s\")", name.data, p.data,
            strcasecmp(p.data, "none") == 0 ? ", monitoring only" : "", rec->data);
        dmarc_alignment(k, name.data, p.data);
    }
    free(publish);
    dns_rr_result_free(r);
    buf_fini(&name);
    buf_fini(&v);
    buf_fini(&p);
}

/* ---- PTR and forward-confirmed reverse DNS ---- */

static bool
rr_has_addr(const struct dns_rr_result *r, const struct sockaddr_storage *ss)
{
    const void *a = ss->ss_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
    size_t len = ss->ss_family == AF_INET ? 4 : 16;
    for (size_t i = 0; r->rc == DNS_OK && i < r->n; i++)
        if (r->rr[i].len == len && memcmp(r->rr[i].data, a, len) == 0)
            return true;
    return false;
}

static void
check_ptr_addr(struct ck *k, const struct sockaddr_storage *ss, enum level bad)
{
    char rev[128], t[INET6_ADDRSTRLEN], fix[512];
    const char *host = k->cfg->hostname ? k->cfg->hostname : k->domain;
    struct dns_rr_result *ptr;
    int type = ss->ss_family == AF_INET ? DNS_RR_A : DNS_RR_AAAA;
    addr_text(ss, t, sizeof(t));
    if (dns_reverse_name((const struct sockaddr *)ss, rev, sizeof(rev)) < 0)
        return;
    ptr = query(k, rev, DNS_RR_PTR);
    snprintf(fix, sizeof(fix), "%s. PTR %s. (set by the owner of %s) and %s. %s %s", rev, host, t,
        host, type == DNS_RR_A ? "A" : "AAAA", t);
    if (ptr->rc == DNS_TEMP) {
        add(k, bad, "PTR", NULL, "cannot look up the PTR record of %s: %s", t, ptr->err);
        dns_rr_result_free(ptr);
        return;
    }
    if (ptr->rc != DNS_OK) {
        add(k, bad, "PTR", fix, "%s has no PTR record: many receivers refuse such senders", t);
        dns_rr_result_free(ptr);
        return;
    }
    for (size_t i = 0; i < ptr->n; i++) {
        struct dns_rr_result *fwd = query(k, ptr->rr[i].data, type);
        bool ok = rr_has_addr(fwd, ss);
        dns_rr_result_free(fwd);
        if (!ok)
            continue;
        add(k, LVL_OK, "PTR", NULL, "%s -> %s -> %s (forward-confirmed)", t, ptr->rr[i].data, t);
        if (k->cfg->hostname != NULL && strcasecmp(ptr->rr[i].data, k->cfg->hostname) != 0)
            add(k, LVL_WARN, "PTR", NULL, "tern introduces itself as %s (hostname) but %s is %s",
                k->cfg->hostname, t, ptr->rr[i].data);
        dns_rr_result_free(ptr);
        return;
    }
    snprintf(fix, sizeof(fix), "%s. %s %s", ptr->rr[0].data, type == DNS_RR_A ? "A" : "AAAA", t);
    add(k, bad, "PTR", fix, "%s -> %s, but that name does not resolve back to %s", t,
        ptr->rr[0].data, t);
    dns_rr_result_free(ptr);
}

static void
check_ptr(struct ck *k)
{
    /* Through a smarthost, receivers see the provider's addresses. */
    enum level bad = k->cfg->n_smarthosts > 0 ? LVL_WARN : LVL_FAIL;
    for (size_t i = 0; i < k->n_egress; i++)
        check_ptr_addr(k, &k->egress[i], bad);
}

/* ---- MX ---- */

static void
check_mx(struct ck *k)
{
    struct dns_rr_result *mx = query(k, k->domain, DNS_RR_MX);
    if (mx->rc == DNS_TEMP) {
        add(k, LVL_FAIL, "MX", NULL, "cannot look up MX at %s: %s", k->domain, mx->err);
    } else if (mx->rc == DNS_NXDOMAIN) {
        add(k, LVL_FAIL, "MX", NULL, "%s does not exist in DNS", k->domain);
    } else if (mx->rc != DNS_OK) {
        add(k, LVL_WARN, "MX", NULL,
            "%s has no MX record: replies and bounces go to its address records (RFC 5321 5.1)",
            k->domain);
    } else if (mx->n == 1 && mx->rr[0].data[0] == '\0') {
        add(k, LVL_WARN, "MX", NULL,
            "%s has a null MX (RFC 7505): it receives no mail, and some receivers refuse mail "
            "from such domains",
            k->domain);
    }
    for (size_t i = 0; mx->rc == DNS_OK && i < mx->n; i++) {
        const char *host = mx->rr[i].data;
        struct dns_rr_result *a, *aaaa;
        if (host[0] == '\0')
            continue;
        a = query(k, host, DNS_RR_A);
        aaaa = query(k, host, DNS_RR_AAAA);
        if (a->rc == DNS_OK || aaaa->rc == DNS_OK)
            add(k, LVL_OK, "MX", NULL, "%s: %u %s", k->domain, mx->rr[i].pref, host);
        else
            add(k, LVL_FAIL, "MX", NULL, "%s: MX host %s has no address", k->domain, host);
        dns_rr_result_free(a);
        dns_rr_result_free(aaaa);
    }
    dns_rr_result_free(mx);
}

/* ---- MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) ---- */

struct sts_wait {
    bool done;
    enum mtasts_mode mode;
    struct mtasts_policy policy;
    char err[256];
};

static void
sts_done(void *arg, const struct mtasts_answer *a)
{
    struct sts_wait *w = arg;
    w->done = true;
    w->mode = a->mode;
    if (a->policy != NULL)
        w->policy = *a->policy;
    snprintf(w->err, sizeof(w->err), "%s", a->err);
}

/* The TXT records of r as arrays for the pure parsers. */
static size_t
txt_arrays(const struct dns_rr_result *r, const char **recs, size_t *lens)
{
    size_t n = 0;
    for (size_t i = 0; r->rc == DNS_OK && i < r->n; i++) {
        recs[n] = r->rr[i].data;
        lens[n++] = r->rr[i].len;
    }
    return n;
}

/* Every MX host of the domain must match an enforce or testing policy. */
static void
sts_mx_match(struct ck *k, const struct sts_wait *w)
{
    struct dns_rr_result *mx = query(k, k->domain, DNS_RR_MX);
    for (size_t i = 0; mx->rc == DNS_OK && i < mx->n; i++) {
        if (mx->rr[i].data[0] != '\0' && !mtasts_policy_match(&w->policy, mx->rr[i].data))
            add(k, w->mode == MTASTS_ENFORCE ? LVL_FAIL : LVL_WARN, "MTA-STS", NULL,
                "MX host %s matches no mx line of the policy: senders %s", mx->rr[i].data,
                w->mode == MTASTS_ENFORCE ? "will not deliver to it" : "report it as a failure");
    }
    dns_rr_result_free(mx);
}

static void
check_mtasts(struct ck *k)
{
    char name[DNS_NAME_MAX + 16], id[MTASTS_ID_MAX + 1], err[200];
    const char *recs[DNS_RR_MAX];
    size_t lens[DNS_RR_MAX], n;
    struct dns_rr_result *txt;
    struct mtasts_opts o = { NULL, k->cfg->tls_ca_file };
    struct sts_wait w;
    struct buf e = BUF_INIT;
    struct mtasts *m;
    int rc;
    snprintf(name, sizeof(name), "_mta-sts.%s", k->domain);
    txt = query(k, name, DNS_RR_TXT);
    n = txt_arrays(txt, recs, lens);
    rc = txt->rc == DNS_TEMP ? -2 : mtasts_txt_parse(recs, lens, n, id, err, sizeof(err));
    if (rc == -2)
        add(k, LVL_FAIL, "MTA-STS", NULL, "cannot look up TXT at %s: %s", name, txt->err);
    else if (rc < 0)
        add(k, LVL_FAIL, "MTA-STS", NULL, "TXT at %s: %s", name, err);
    else if (rc == 1)
        add(k, LVL_OK, "MTA-STS", NULL, "no policy published at %s (optional, RFC 8461)", name);
    dns_rr_result_free(txt);
    if (rc != 0)
        return;
    m = mtasts_new(k->base, k->dns, &o, &e);
    if (m == NULL) {
        add(k, LVL_FAIL, "MTA-STS", NULL, "%s", e.data ? e.data : "cannot fetch");
        buf_fini(&e);
        return;
    }
    memset(&w, 0, sizeof(w));
    mtasts_get(m, k->domain, sts_done, &w);
    while (!w.done)
        event_base_loop(k->base, EVLOOP_ONCE);
    if (w.err[0] != '\0')
        add(k, LVL_FAIL, "MTA-STS", NULL, "id %s, but the policy: %s", id, w.err);
    else if (w.mode == MTASTS_NONE)
        add(k, LVL_OK, "MTA-STS", NULL, "id %s, policy in mode none", id);
    else
        add(k, LVL_OK, "MTA-STS", NULL, "id %s, policy mode %s, max_age %lld, %zu mx line(s)", id,
            mtasts_mode_name(w.mode), (long long)w.policy.max_age_s, w.policy.n_mx);
    if (w.mode != MTASTS_NONE)
        sts_mx_match(k, &w);
    mtasts_free(m);
    buf_fini(&e);
}

static void
check_tlsrpt(struct ck *k)
{
    char name[DNS_NAME_MAX + 16], err[200], rua[TLSRPT_RUA_MAX][TLSRPT_RUA_LEN], pub[300];
    const char *recs[DNS_RR_MAX];
    size_t lens[DNS_RR_MAX], n, n_rua = 0;
    struct dns_rr_result *txt;
    int rc;
    snprintf(name, sizeof(name), "_smtp._tls.%s", k->domain);
    txt = query(k, name, DNS_RR_TXT);
    n = txt_arrays(txt, recs, lens);
    rc = txt->rc == DNS_TEMP ? -2 : tlsrpt_txt_parse(recs, lens, n, rua, &n_rua, err, sizeof(err));
    snprintf(pub, sizeof(pub), "%s TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@%s\"", name, k->domain);
    if (rc == -2)
        add(k, LVL_FAIL, "TLS-RPT", NULL, "cannot look up TXT at %s: %s", name, txt->err);
    else if (rc < 0)
        add(k, LVL_FAIL, "TLS-RPT", pub, "TXT at %s: %s", name, err);
    else if (rc == 1)
        add(k, LVL_OK, "TLS-RPT", pub,
            "no reporting address at %s (optional, RFC 8460: senders' TLS failures reported "
            "to you)",
            name);
    else
        add(k, LVL_OK, "TLS-RPT", NULL, "reports go to %s%s", rua[0], n_rua > 1 ? " and more" : "");
    dns_rr_result_free(txt);
}

/* ---- output and main ---- */

static const char *const level_names[] = { "OK", "WARN", "FAIL" };

static void
print_finding(const struct finding *f, bool json)
{
    struct buf b = BUF_INIT;
    if (json) {
        buf_printf(&b, "{\"level\":\"%s\",\"check\":\"%s\",\"message\":\"", level_names[f->level],
            f->check);
        buf_append_json(&b, f->msg, strlen(f->msg));
        buf_append_str(&b, "\"");
        if (f->publish != NULL) {
            buf_append_str(&b, ",\"publish\":\"");
            buf_append_json(&b, f->publish, strlen(f->publish));
            buf_append_str(&b, "\"");
        }
        buf_append_str(&b, "}");
    } else {
        buf_printf(&b, "%s %s: %s", level_names[f->level], f->check, f->msg);
        if (f->publish != NULL)
            buf_printf(&b, "; publish: %s", f->publish);
    }
    puts(b.data);
    buf_fini(&b);
}

static int
parse_args(int argc, char **argv, const char **domain, bool *json)
{
    *domain = NULL;
    *json = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            *json = true;
        else if (argv[i][0] == '-' || *domain != NULL)
            return -1;
        else
            *domain = argv[i];
    }
    return *domain != NULL ? 0 : -1;
}

static void
run_checks(struct ck *k)
{
    check_spf(k);
    check_dkim(k);
    check_dmarc(k);
    check_ptr(k);
    check_mx(k);
    check_mtasts(k);
    check_tlsrpt(k);
}

int
dnscheck_main(const struct config *cfg, int argc, char **argv)
{
    struct ck k;
    struct buf err = BUF_INIT;
    const char *arg;
    char domain[DNS_NAME_MAX + 1];
    bool json, fails = false;
    int ret = 0;
    size_t n;
    if (parse_args(argc, argv, &arg, &json) < 0) {
        fputs("usage: ternctl dns check DOMAIN [--json]\n", stderr);
        return EXIT_USAGE;
    }
    n = strlen(arg);
    if (n > 0 && arg[n - 1] == '.')
        n--;
    if (n == 0 || n >= sizeof(domain) || !str_is_domain(arg, n, false)) {
        fprintf(stderr, "ternctl: %s is not a domain name\n", arg);
        return EXIT_USAGE;
    }
    memcpy(domain, arg, n);
    domain[n] = '\0';
    str_lower(domain);
    memset(&k, 0, sizeof(k));
    k.cfg = cfg;
    k.domain = domain;
    if (cfg->n_egress_addresses > 0 ? configured_egress(&k) < 0 : (discover_egress(&k), false))
        ret = EXIT_USAGE;
    else if ((k.base = event_base_new()) == NULL)
        tern_panic("cannot create an event loop");
    else if ((k.dns = dns_new(k.base, cfg->dns_resolvers, cfg->n_dns_resolvers, &err)) == NULL) {
        fprintf(stderr, "ternctl: %s\n", err.data ? err.data : "cannot start the resolver");
        ret = EXIT_USAGE;
    }
    if (ret == 0) {
        run_checks(&k);
        for (size_t i = 0; i < k.n_f; i++) {
            print_finding(&k.f[i], json);
            fails = fails || k.f[i].level == LVL_FAIL;
        }
        ret = fails ? EXIT_FAILS : 0;
        if (fflush(stdout) != 0 || ferror(stdout))
            ret = EXIT_FAILS;
    }
    for (size_t i = 0; i < k.n_f; i++) {
        free(k.f[i].msg);
        free(k.f[i].publish);
    }
    free(k.f);
    dns_free(k.dns);
    if (k.base != NULL)
        event_base_free(k.base);
    buf_fini(&err);
    return ret;
}

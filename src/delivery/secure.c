/*
 * Pure decisions for outbound TLS (RFC 3207, RFC 7435, RFC 8314) and AUTH
 * to a smarthost (RFC 4954): the TLS policy table (mode x offered x cached
 * fallback -> step; mode x verified -> go on or defer), the AUTH mechanism
 * choice, base64 for PLAIN (RFC 4616) and LOGIN, and the
 * smarthost_auth_file reader. Credentials live in fixed buffers that the
 * caller clears with deliv_creds_clear; nothing here logs them.
 */
#include "delivery/delivery_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/parse.h"
#include "util/util.h"

/* ---- TLS policy ---- */

enum tls_step
deliv_tls_step(enum tls_mode mode, bool offered, bool fallback_cached)
{
    switch (mode) {
    case TLS_NONE:
        return TLSS_PLAIN;
    case TLS_OPPORTUNISTIC:
        /* RFC 7435 §3: encrypt when the peer can; a peer whose handshake
         * failed recently is spoken to in clear for a while. */
        return offered && !fallback_cached ? TLSS_STARTTLS : TLSS_PLAIN;
    case TLS_REQUIRED:
        return offered ? TLSS_STARTTLS : TLSS_DEFER;
    }
    return TLSS_DEFER;
}

bool
deliv_tls_accept(enum tls_mode mode, bool verified)
{
    return mode != TLS_REQUIRED || verified;
}

bool
deliv_tls_fallback(enum tls_mode mode, bool implicit)
{
    /* Implicit TLS has no plaintext form; required never goes clear. */
    return mode == TLS_OPPORTUNISTIC && !implicit;
}

/* ---- the per-destination policy (RFC 7672, RFC 8461) ---- */

bool
deliv_tlsa_usable(const struct dns_tlsa *t)
{
    /* RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP, as
     * are unknown parameters (RFC 6698 §4.1). */
    return (t->usage == 2 || t->usage == 3) && t->selector <= 1 && t->mtype <= 2;
}

enum dane_state
deliv_dane_state(const struct dns_rr_result *tlsa)
{
    size_t usable = 0;
    if (tlsa == NULL)
        return DANE_NONE;
    /* RFC 7672 §2.1.1: a failed lookup of a secure host's TLSA records may
     * hide them (an attacker blocking it): the host is not used for now. */
    if (tlsa->rc == DNS_TEMP)
        return DANE_TEMP;
    if (!tlsa->secure || tlsa->rc != DNS_OK)
        return DANE_NONE;
    for (size_t i = 0; i < tlsa->n; i++) {
        struct dns_tlsa t;
        if (dns_tlsa_parse(tlsa->rr[i].data, tlsa->rr[i].len, &t) == 0 && deliv_tlsa_usable(&t))
            usable++;
    }
    return usable > 0 ? DANE_USABLE : DANE_UNUSABLE;
}

enum tls_policy
deliv_tls_policy_pick(
    unsigned policies, enum tls_mode mx_tls, enum dane_state dane, bool sts_enforce)
{
    /* mx_tls = none is the operator's explicit choice of no TLS at all. */
    if (mx_tls == TLS_NONE)
        return TLSP_OPPORTUNISTIC;
    if ((policies & MX_TLS_POLICY_DANE) && dane == DANE_USABLE)
        return TLSP_DANE;
    if ((policies & MX_TLS_POLICY_MTASTS) && sts_enforce)
        return TLSP_MTA_STS;
    return TLSP_OPPORTUNISTIC;
}

const char *
deliv_tls_policy_name(enum tls_policy p)
{
    switch (p) {
    case TLSP_DANE:
        return "dane";
    case TLSP_MTA_STS:
        return "mta-sts";
    case TLSP_OPPORTUNISTIC:
        break;
    }
    return "opportunistic";
}

const char *
deliv_dane_state_name(enum dane_state s)
{
    static const char *const names[] = { [DANE_NONE] = "none",
        [DANE_USABLE] = "usable",
        [DANE_UNUSABLE] = "unusable",
        [DANE_TEMP] = "lookup-failed" };
    return (size_t)s < TERN_ARRAY_LEN(names) ? names[s] : "?";
}

/* ---- AUTH ---- */

enum auth_mech
deliv_auth_choose(bool have_creds, const struct ehlo_ext *e, bool tls, bool allow_plaintext)
{
    if (!have_creds)
        return AUTHM_NONE;
    /* Credentials mean the operator wants an authenticated relay: mail sent
     * without them would likely be refused with a 5xx and bounce. */
    if (!e->auth_plain && !e->auth_login)
        return AUTHM_MISSING;
    if (!tls && !allow_plaintext)
        return AUTHM_REFUSE;
    return e->auth_plain ? AUTHM_PLAIN : AUTHM_LOGIN;
}

int
deliv_b64(const unsigned char *in, size_t n, char *out, size_t cap)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, need;
    if (n > (SIZE_MAX - 1) / 4 * 3 - 3)
        return -1;
    need = (n + 2) / 3 * 4 + 1;
    if (need > cap)
        return -1;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = '\0';
    return 0;
}

int
deliv_auth_plain_resp(const struct deliv_creds *c, char *out, size_t cap)
{
    /* RFC 4616 §2: [authzid] NUL authcid NUL passwd, no authzid here. */
    unsigned char raw[DELIV_AUTH_USER_MAX + DELIV_AUTH_PASS_MAX + 2];
    size_t ul = strlen(c->user), pl = strlen(c->pass), n = 0;
    int rc;
    if (ul > DELIV_AUTH_USER_MAX || pl > DELIV_AUTH_PASS_MAX)
        return -1;
    raw[n++] = '\0';
    memcpy(raw + n, c->user, ul);
    n += ul;
    raw[n++] = '\0';
    memcpy(raw + n, c->pass, pl);
    n += pl;
    rc = deliv_b64(raw, n, out, cap);
    explicit_bzero(raw, sizeof(raw));
    return rc;
}

void
deliv_creds_clear(struct deliv_creds *c)
{
    explicit_bzero(c, sizeof(*c));
}

/* ---- smarthost_auth_file ---- */

/* Trim spaces and tabs at both ends of [*p, *p + *n). */
static void
trim(const char **p, size_t *n)
{
    while (*n > 0 && (**p == ' ' || **p == '\t')) {
        (*p)++;
        (*n)--;
    }
    while (*n > 0 && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t' || (*p)[*n - 1] == '\r'))
        (*n)--;
}

/* "user:password" into c; -1 when malformed or too long. */
static int
parse_userpass(const char *p, size_t n, struct deliv_creds *c)
{
    const char *colon = memchr(p, ':', n);
    size_t ul, pl;
    if (colon == NULL)
        return -1;
    ul = (size_t)(colon - p);
    pl = n - ul - 1;
    if (ul == 0 || pl == 0 || ul > DELIV_AUTH_USER_MAX || pl > DELIV_AUTH_PASS_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
            return -1;
    }
    memcpy(c->user, p, ul);
    c->user[ul] = '\0';
    memcpy(c->pass, colon + 1, pl);
    c->pass[pl] = '\0';
    return 0;
}

/* End of the host word of a "host user:password" line, or NULL when the
 * line is a bare "user:password" (whose password may hold spaces): the first
 * word is a host when it has no ':' or is an [address literal]. */
static const char *
line_host_end(const char *l, size_t n)
{
    size_t w = 0;
    while (w < n && l[w] != ' ' && l[w] != '\t')
        w++;
    if (w == n)
        return NULL;
    if (memchr(l, ':', w) != NULL && !(l[0] == '[' && l[w - 1] == ']'))
        return NULL;
    return l + w;
}

int
deliv_creds_parse(const char *text, size_t len, const char *host, bool allow_default,
    struct deliv_creds *out, char *err, size_t errcap)
{
    struct deliv_creds dflt, tmp;
    bool have_dflt = false, have_host = false;
    size_t lineno = 0, hl = host ? strlen(host) : 0;
    const char *p = text, *end = text + len;
    memset(&dflt, 0, sizeof(dflt));
    memset(out, 0, sizeof(*out));
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *l = p, *sp;
        p = nl ? nl + 1 : end;
        lineno++;
        trim(&l, &n);
        if (n == 0 || l[0] == '#')
            continue;
        if (n > DELIV_AUTH_LINE_MAX || memchr(l, '\0', n) != NULL)
            goto bad;
        sp = line_host_end(l, n);
        if (sp == NULL) {
            /* "user:password": the smarthost's own credentials. */
            if (parse_userpass(l, n, &tmp) < 0)
                goto bad;
            if (!have_dflt)
                dflt = tmp;
            have_dflt = true;
            continue;
        }
        /* "host user:password": for the next hop called host. */
        {
            size_t kl = (size_t)(sp - l), rl = n - kl;
            const char *r = sp, *k = l;
            trim(&r, &rl);
            if (parse_userpass(r, rl, &tmp) < 0)
                goto bad;
            if (kl >= 2 && k[0] == '[' && k[kl - 1] == ']') {
                k++; /* "[2001:db8::1] user:password" */
                kl -= 2;
            }
            if (!have_host && host != NULL && kl == hl && str_ieq(k, kl, host)) {
                *out = tmp;
                have_host = true;
            }
        }
    }
    explicit_bzero(&tmp, sizeof(tmp));
    if (!have_host && have_dflt && allow_default)
        *out = dflt;
    explicit_bzero(&dflt, sizeof(dflt));
    return have_host || (have_dflt && allow_default) ? 0 : 1;
bad:
    /* Never echo the line: it may hold a password. */
    explicit_bzero(&tmp, sizeof(tmp));
    explicit_bzero(&dflt, sizeof(dflt));
    memset(out, 0, sizeof(*out));
    snprintf(err, errcap, "line %zu: not \"user:password\" or \"host user:password\"", lineno);
    return -1;
}

int
deliv_creds_load(const char *path, const char *host, bool allow_default, struct deliv_creds *out,
    char *err, size_t errcap)
{
    char *text;
    struct stat st;
    ssize_t n = 0;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK), rc;
    memset(out, 0, sizeof(*out));
    if (fd < 0) {
        snprintf(err, errcap, "smarthost_auth_file %s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > DELIV_AUTH_FILE_MAX) {
        snprintf(err, errcap, "smarthost_auth_file %s: not a regular file of at most %d bytes",
            path, DELIV_AUTH_FILE_MAX);
        close(fd); /* read-only: nothing to lose */
        return -1;
    }
    if (st.st_mode & (S_IRGRP | S_IROTH | S_IWGRP | S_IWOTH)) {
        snprintf(err, errcap, "smarthost_auth_file %s: readable by group or others (chmod 600 it)",
            path);
        close(fd);
        return -1;
    }
    text = xmalloc(DELIV_AUTH_FILE_MAX + 1);
    while (got < DELIV_AUTH_FILE_MAX) {
        n = read(fd, text + got, DELIV_AUTH_FILE_MAX - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (n < 0) {
        snprintf(err, errcap, "smarthost_auth_file %s: %s", path, strerror(errno));
        rc = -1;
    } else {
        rc = deliv_creds_parse(text, got, host, allow_default, out, err, errcap);
    }
    close(fd);
    if (rc < 0 && n >= 0) {
        char tmp[128];
        snprintf(tmp, sizeof(tmp), "%s", err);
        snprintf(err, errcap, "smarthost_auth_file %s: %s", path, tmp);
    }
    explicit_bzero(text, DELIV_AUTH_FILE_MAX + 1);
    free(text);
    return rc;
}

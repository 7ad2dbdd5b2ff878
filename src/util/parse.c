/*
 * Bounded parsers for numbers, sizes, durations, host:port pairs and domain
 * names. Every parser checks lengths and arithmetic before using a value and
 * rejects trailing junk; none allocates. Outputs are written only on success.
 */
#include "parse.h"

#include <arpa/inet.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "util.h"

#define DOMAIN_MAX 253
#define LABEL_MAX  63

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static char
ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

int
parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (s == NULL || len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (!is_digit(s[i]))
            return -1;
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, s[i] - '0', &v))
            return -1;
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* Split s into its leading digits and a one-letter suffix (or none). */
static int
split_suffix(const char *s, size_t *ndigits, char *suffix)
{
    size_t len = strlen(s);
    size_t n = 0;
    while (n < len && is_digit(s[n]))
        n++;
    if (n == 0 || len - n > 1)
        return -1;
    *ndigits = n;
    *suffix = (n < len) ? ascii_lower(s[n]) : '\0';
    return 0;
}

int
parse_size(const char *s, uint64_t *out)
{
    size_t n;
    char suf;
    unsigned shift;
    uint64_t v;
    if (s == NULL || split_suffix(s, &n, &suf) < 0)
        return -1;
    switch (suf) {
    case '\0':
        shift = 0;
        break;
    case 'k':
        shift = 10;
        break;
    case 'm':
        shift = 20;
        break;
    case 'g':
        shift = 30;
        break;
    default:
        return -1;
    }
    if (parse_u64(s, n, UINT64_MAX >> shift, &v) < 0)
        return -1;
    *out = v << shift;
    return 0;
}

int
parse_duration(const char *s, bool allow_zero, int64_t *out_ms)
{
    size_t n;
    char suf;
    int64_t mult;
    uint64_t v;
    if (s == NULL || split_suffix(s, &n, &suf) < 0)
        return -1;
    switch (suf) {
    case '\0':
    case 's':
        mult = 1000;
        break;
    case 'm':
        mult = 60 * 1000;
        break;
    case 'h':
        mult = 3600 * 1000;
        break;
    case 'd':
        mult = 86400 * 1000;
        break;
    default:
        return -1;
    }
    if (parse_u64(s, n, (uint64_t)(INT64_MAX / mult), &v) < 0)
        return -1;
    if (v == 0 && !allow_zero)
        return -1;
    *out_ms = (int64_t)v * mult;
    return 0;
}

static bool
is_ip_literal(const char *s)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

static int
parse_port(const char *s, size_t len, uint16_t *port)
{
    uint64_t v;
    if (parse_u64(s, len, 65535, &v) < 0 || v == 0)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

/* Copy s[len] into host[hostcap] as a C string; -1 if it does not fit or
 * holds a NUL byte. */
static int
copy_host(const char *s, size_t len, char *host, size_t hostcap)
{
    if (len == 0 || len >= hostcap || memchr(s, '\0', len) != NULL)
        return -1;
    memcpy(host, s, len);
    host[len] = '\0';
    return 0;
}

int
parse_hostport(const char *s, char *host, size_t hostcap, uint16_t default_port, uint16_t *port)
{
    const char *hs, *rest, *colon;
    size_t hlen;
    char tmp[256];
    uint16_t p = default_port;
    if (s == NULL || host == NULL || hostcap == 0)
        return -1;
    if (s[0] == '[') {
        /* RFC 5321 §4.1.3 style address literal: brackets hold an address. */
        const char *close = strchr(s, ']');
        if (close == NULL)
            return -1;
        hs = s + 1;
        hlen = (size_t)(close - hs);
        rest = close + 1;
        if (copy_host(hs, hlen, tmp, sizeof(tmp)) < 0 || !is_ip_literal(tmp))
            return -1;
    } else {
        colon = strchr(s, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL)
            return -1; /* an IPv6 address needs brackets to carry a port */
        hs = s;
        hlen = colon ? (size_t)(colon - s) : strlen(s);
        rest = s + hlen;
        if (copy_host(hs, hlen, tmp, sizeof(tmp)) < 0)
            return -1;
        if (!str_is_domain(tmp, hlen, false) && !is_ip_literal(tmp))
            return -1;
    }
    if (*rest == ':') {
        if (parse_port(rest + 1, strlen(rest + 1), &p) < 0)
            return -1;
    } else if (*rest != '\0' || default_port == 0) {
        return -1;
    }
    if (copy_host(tmp, hlen, host, hostcap) < 0)
        return -1;
    *port = p;
    return 0;
}

void
str_lower(char *s)
{
    for (; *s; s++)
        *s = ascii_lower(*s);
}

bool
str_ieq(const char *a, size_t alen, const char *b)
{
    size_t i;
    for (i = 0; i < alen; i++) {
        if (b[i] == '\0' || ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    }
    return b[i] == '\0';
}

size_t
utf8_seq_len(const unsigned char *s, size_t avail)
{
    size_t n;
    uint32_t cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n > avail)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Overlong forms, UTF-16 surrogates and values past U+10FFFF. */
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* Check one label s[len]: LDH (RFC 1035 §2.3.1, RFC 1123 §2.1), or UTF-8. */
static bool
label_ok(const char *s, size_t len, bool utf8)
{
    if (len == 0 || len > LABEL_MAX || s[0] == '-' || s[len - 1] == '-')
        return false;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit((char)c) || c == '-') {
            i++;
            continue;
        }
        size_t n = (utf8 && c >= 0x80) ? utf8_seq_len((const unsigned char *)s + i, len - i) : 0;
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

bool
str_is_domain(const char *s, size_t len, bool utf8)
{
    size_t start = 0;
    if (s == NULL || len == 0)
        return false;
    if (s[len - 1] == '.')
        len--;
    if (len == 0 || len > DOMAIN_MAX)
        return false;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            if (!label_ok(s + start, i - start, utf8))
                return false;
            start = i + 1;
        }
    }
    return true;
}

static int
b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int
b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
    size_t o = 0;
    *out_len = 0;
    if (len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        size_t pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char ch = (unsigned char)in[i + (size_t)k];
            if (ch == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad > 0 || (v[k] = b64_val(ch)) < 0)
                return -1; /* junk, or data after padding */
        }
        uint32_t n = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) | ((uint32_t)v[2] << 6) |
                     (uint32_t)v[3];
        /* Canonical form: bits dropped by the padding must be zero. */
        if ((pad == 1 && (n & 0xff)) || (pad == 2 && (n & 0xffff)))
            return -1;
        if (o + 3 - pad > cap)
            return -1;
        out[o++] = (unsigned char)(n >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(n >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)n;
    }
    *out_len = o;
    return 0;
}

static bool
tag_blank(char c)
{
    return c == ' ' || c == '\t';
}

bool
str_next_tag(const char *p, size_t n, size_t *i, struct str_tag *t)
{
    size_t s, e, eq;
    while (*i < n && (tag_blank(p[*i]) || p[*i] == ';'))
        (*i)++;
    if (*i >= n)
        return false;
    s = *i;
    while (*i < n && p[*i] != ';')
        (*i)++;
    e = *i;
    for (eq = s; eq < e && p[eq] != '='; eq++)
        ;
    t->has_eq = eq < e;
    t->name = p + s;
    t->name_len = eq - s;
    while (t->name_len > 0 && tag_blank(t->name[t->name_len - 1]))
        t->name_len--;
    t->val = t->has_eq ? p + eq + 1 : p + e;
    t->val_len = t->has_eq ? e - eq - 1 : 0;
    while (t->val_len > 0 && tag_blank(*t->val)) {
        t->val++;
        t->val_len--;
    }
    while (t->val_len > 0 && tag_blank(t->val[t->val_len - 1]))
        t->val_len--;
    return true;
}

void
b64_encode(const void *p, size_t n, struct buf *out)
{
    size_t need;
    TERN_ASSERT(n <= (size_t)INT32_MAX / 2);
    need = (n + 2) / 3 * 4;
    buf_reserve(out, need);
    EVP_EncodeBlock((unsigned char *)out->data + out->len, p, (int)n);
    out->len += need;
    out->data[out->len] = '\0';
}

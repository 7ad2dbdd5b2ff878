/*
 * Raw records of one type (TXT, PTR, MX, A, AAAA): decoding a DNS answer
 * into a packed blob (what the answer cache stores, one byte per "record"),
 * unpacking it into a struct dns_rr_result the caller borrows, the result
 * helpers, and reverse-lookup names. Every length is checked against the
 * packet; names in rdata go through ares_expand_name (bounded, loop-safe).
 */
#include "dns/dns.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns_int.h"
#include "util/buf.h"
#include "util/parse.h"
#include "util/util.h"

#define DNS_HDR_LEN  12
#define DNS_CLASS_IN 1

/* ---- results ---- */

struct dns_rr_result *
dns_rr_result_new(int type, enum dns_rc rc)
{
    struct dns_rr_result *r = xcalloc(1, sizeof(*r));
    r->type = type;
    r->rc = rc;
    return r;
}

int
dns_rr_result_add(struct dns_rr_result *r, uint16_t pref, const void *data, size_t len)
{
    struct dns_rr *rr;
    if (r->n >= DNS_RR_MAX) {
        r->truncated = true;
        return -1;
    }
    if (len > DNS_RR_DATA_MAX)
        return -1;
    rr = &r->rr[r->n++];
    rr->pref = pref;
    rr->len = len;
    rr->data = xmalloc(len + 1);
    if (len > 0)
        memcpy(rr->data, data, len);
    rr->data[len] = '\0';
    r->rc = DNS_OK;
    return 0;
}

struct dns_rr_result *
dns_rr_result_dup(const struct dns_rr_result *r)
{
    struct dns_rr_result *c = dns_rr_result_new(r->type, r->rc);
    for (size_t i = 0; i < r->n; i++)
        (void)dns_rr_result_add(c, r->rr[i].pref, r->rr[i].data, r->rr[i].len);
    c->rc = r->rc;
    c->truncated = r->truncated;
    c->secure = r->secure;
    memcpy(c->err, r->err, sizeof(c->err));
    return c;
}

void
dns_rr_result_free(struct dns_rr_result *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->rr[i].data);
    free(r);
}

int
dns_reverse_name(const struct sockaddr *sa, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    struct buf b = BUF_INIT;
    int rc = -1;
    if (sa->sa_family == AF_INET) {
        const unsigned char *a =
            (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        buf_printf(&b, "%u.%u.%u.%u.in-addr.arpa", a[3], a[2], a[1], a[0]);
    } else if (sa->sa_family == AF_INET6) {
        const unsigned char *a = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
        for (int i = 15; i >= 0; i--)
            buf_printf(&b, "%c.%c.", hex[a[i] & 0xf], hex[a[i] >> 4]);
        buf_append_str(&b, "ip6.arpa");
    } else {
        return -1;
    }
    if (b.len < cap) {
        memcpy(out, b.data, b.len + 1);
        rc = 0;
    }
    buf_fini(&b);
    return rc;
}

/* ---- TLSA ---- */

int
dns_tlsa_parse(const void *rdata, size_t len, struct dns_tlsa *out)
{
    const unsigned char *p = rdata;
    memset(out, 0, sizeof(*out));
    if (len < 4 || len - 3 > DNS_TLSA_DATA_MAX)
        return -1;
    out->usage = p[0];
    out->selector = p[1];
    out->mtype = p[2];
    out->data = p + 3;
    out->len = len - 3;
    if ((out->mtype == 1 && out->len != 32) || (out->mtype == 2 && out->len != 64))
        return -1;
    return 0;
}

void
dns_tlsa_format(const struct dns_tlsa *t, char *out, size_t cap, size_t max_hex)
{
    static const char hex[] = "0123456789abcdef";
    struct buf b = BUF_INIT;
    buf_printf(&b, "%u %u %u ", t->usage, t->selector, t->mtype);
    for (size_t i = 0; i < t->len; i++) {
        if (2 * i >= max_hex) {
            buf_append_str(&b, "...");
            break;
        }
        buf_append_char(&b, hex[t->data[i] >> 4]);
        buf_append_char(&b, hex[t->data[i] & 0xf]);
    }
    snprintf(out, cap, "%s", b.data);
    buf_fini(&b);
}

/* ---- packed form: [truncated u8] then per record [pref u16][len u32][bytes] ---- */

static void
pack_one(struct buf *blob, uint16_t pref, const void *data, size_t len)
{
    unsigned char h[6] = { (unsigned char)(pref >> 8), (unsigned char)pref,
        (unsigned char)(len >> 24), (unsigned char)(len >> 16), (unsigned char)(len >> 8),
        (unsigned char)len };
    buf_append(blob, h, sizeof(h));
    buf_append(blob, data, len);
}

int
dns_rr_unpack(const void *blob, size_t len, struct dns_rr_result *r)
{
    const unsigned char *p = blob;
    size_t o = 1;
    if (len < 1)
        return -1;
    r->truncated = p[0] != 0;
    while (o < len) {
        size_t n;
        uint16_t pref;
        if (len - o < 6)
            return -1;
        pref = (uint16_t)((p[o] << 8) | p[o + 1]);
        n = ((size_t)p[o + 2] << 24) | ((size_t)p[o + 3] << 16) | ((size_t)p[o + 4] << 8) |
            p[o + 5];
        o += 6;
        if (len - o < n)
            return -1;
        (void)dns_rr_result_add(r, pref, p + o, n);
        o += n;
    }
    return 0;
}

/* ---- decoding an answer ---- */

static uint16_t
get16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* A name in rdata at off (compression followed by c-ares), lowercased,
 * without trailing dot, into out. 0, -1 when malformed, 1 when it is no
 * host name: c-ares writes a dot, backslash or unprintable byte inside a
 * label as a backslash escape, which no host name has (RFC 1123 §2.1) and
 * which would make "x\.victim.test" look like a name under victim.test. */
static int
rdata_name(const unsigned char *abuf, int alen, size_t off, size_t end, struct buf *out)
{
    char *s = NULL;
    long enclen = 0;
    if (off >= end || ares_expand_name(abuf + off, abuf, alen, &s, &enclen) != ARES_SUCCESS)
        return -1;
    if (enclen <= 0 || (size_t)enclen > end - off) {
        ares_free_string(s);
        return -1;
    }
    if (strchr(s, '\\') != NULL) {
        ares_free_string(s);
        return 1;
    }
    buf_reset(out);
    buf_append_str(out, s);
    ares_free_string(s);
    if (out->len > 0 && out->data[out->len - 1] == '.')
        out->data[--out->len] = '\0';
    if (out->len > DNS_NAME_MAX)
        return -1;
    if (out->data != NULL)
        str_lower(out->data);
    return 0;
}

/* One record's rdata [rd, rd+rdlen) of type into blob. -1: malformed; 1:
 * skipped (a PTR or MX target that is no host name). */
static int
decode_rdata(const unsigned char *abuf, int alen, int type, size_t rd, size_t rdlen,
    struct buf *blob, struct buf *tmp)
{
    const unsigned char *p = abuf + rd;
    size_t end = rd + rdlen;
    switch (type) {
    case DNS_RR_A:
    case DNS_RR_AAAA:
        if (rdlen != (type == DNS_RR_A ? 4u : 16u))
            return -1;
        pack_one(blob, 0, p, rdlen);
        return 0;
    case DNS_RR_PTR:
    case DNS_RR_MX: {
        size_t name_off = type == DNS_RR_MX ? 2 : 0;
        int rc = rdlen < name_off + 1 ? -1 : rdata_name(abuf, alen, rd + name_off, end, tmp);
        if (rc != 0)
            return rc;
        pack_one(blob, type == DNS_RR_MX ? get16(p) : 0, tmp->data ? tmp->data : "", tmp->len);
        return 0;
    }
    case DNS_RR_TXT:
        /* RFC 1035 §3.3.14: one or more <character-string>s. */
        buf_reset(tmp);
        for (size_t o = 0; o < rdlen;) {
            size_t n = p[o];
            if (rdlen - o - 1 < n)
                return -1;
            buf_append(tmp, p + o + 1, n);
            o += n + 1;
        }
        pack_one(blob, 0, tmp->data ? tmp->data : "", tmp->len);
        return 0;
    case DNS_RR_TLSA:
        /* Kept as sent; dns_tlsa_parse judges it when used. */
        if (rdlen < 3)
            return -1;
        pack_one(blob, 0, p, rdlen);
        return 0;
    default:
        return -1;
    }
}

enum dns_rc
dns_rr_pack(const unsigned char *abuf, int alen, int type, void **out, size_t *out_len, char *err,
    size_t errcap)
{
    struct buf blob = BUF_INIT, tmp = BUF_INIT;
    size_t len = alen > 0 ? (size_t)alen : 0, off = DNS_HDR_LEN, kept = 0, skipped = 0;
    unsigned qd, an;
    bool trunc = false;
    *out = NULL;
    *out_len = 0;
    if (abuf == NULL || len < DNS_HDR_LEN)
        goto bad;
    qd = get16(abuf + 4);
    an = get16(abuf + 6);
    buf_append_char(&blob, 0);
    for (unsigned i = 0; i < qd; i++) {
        if (dns_packet_skip_name(abuf, len, &off) < 0 || len - off < 4)
            goto bad;
        off += 4;
    }
    for (unsigned i = 0; i < an; i++) {
        size_t rd, rdlen;
        uint16_t t, cls;
        if (dns_packet_skip_name(abuf, len, &off) < 0 || len - off < 10)
            goto bad;
        t = get16(abuf + off);
        cls = get16(abuf + off + 2);
        rdlen = get16(abuf + off + 8);
        rd = off + 10;
        if (len - rd < rdlen)
            goto bad;
        off = rd + rdlen;
        /* Other types (the CNAME chain) are skipped. */
        if (t != type || cls != DNS_CLASS_IN)
            continue;
        if (kept == DNS_RR_MAX) {
            trunc = true;
            continue;
        }
        switch (decode_rdata(abuf, alen, type, rd, rdlen, &blob, &tmp)) {
        case 0:
            kept++;
            break;
        case 1:
            skipped++;
            break;
        default:
            goto bad;
        }
    }
    buf_fini(&tmp);
    if (kept == 0) {
        buf_fini(&blob);
        /* As for MX lookups (dns_mx_decode): answers that name no usable
         * host are a failure of the domain's DNS, not an absence. */
        if (skipped > 0) {
            snprintf(err, errcap, "no usable host name (%zu records)", skipped);
            return DNS_TEMP;
        }
        snprintf(err, errcap, "no records of this type");
        return DNS_NODATA;
    }
    blob.data[0] = trunc ? 1 : 0;
    *out_len = blob.len;
    *out = buf_take(&blob);
    return DNS_OK;
bad:
    buf_fini(&blob);
    buf_fini(&tmp);
    snprintf(err, errcap, "malformed DNS answer");
    return DNS_TEMP;
}

/*
 * Pure DNS helpers: c-ares status classification, a bounded reader of the
 * TTLs in a raw response (c-ares 1.18 gives none for MX), MX decoding with
 * the RFC 7505 null MX, RFC 5321 §5.1 MX ordering and IP literals. No I/O,
 * no allocation that outlives a call.
 */
#include "dns/dns_int.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/parse.h"
#include "util/util.h"

static const struct {
    int status;
    enum dns_rc rc;
} classify_table[] = {
    { ARES_SUCCESS, DNS_OK }, { ARES_ENOTFOUND, DNS_NXDOMAIN }, /* NXDOMAIN (RFC 1035 RCODE 3) */
    { ARES_ENODATA, DNS_NODATA },                               /* NOERROR with no answer */
    { ARES_EBADNAME, DNS_BADNAME },
    /* Everything else (SERVFAIL, REFUSED, FORMERR, NOTIMP, timeouts,
     * unreachable servers, bad responses, cancellation) may work later. */
};

enum dns_rc
dns_classify(int ares_status)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(classify_table); i++) {
        if (classify_table[i].status == ares_status)
            return classify_table[i].rc;
    }
    return DNS_TEMP;
}

int
dns_answer_status(const unsigned char *abuf, size_t alen, bool *ad)
{
    unsigned rcode, ancount;
    *ad = false;
    if (abuf == NULL || alen < 12)
        return ARES_EBADRESP;
    *ad = (abuf[3] & 0x20) != 0;
    rcode = abuf[3] & 0x0f;
    ancount = ((unsigned)abuf[6] << 8) | abuf[7];
    switch (rcode) {
    case 0:
        return ancount > 0 ? ARES_SUCCESS : ARES_ENODATA;
    case 1:
        return ARES_EFORMERR;
    case 2:
        return ARES_ESERVFAIL;
    case 3:
        return ARES_ENOTFOUND;
    case 4:
        return ARES_ENOTIMP;
    case 5:
        return ARES_EREFUSED;
    default:
        return ARES_EBADRESP;
    }
}

const char *
dns_rc_name(enum dns_rc rc)
{
    static const char *const names[] = {
        [DNS_OK] = "ok",
        [DNS_NXDOMAIN] = "nxdomain",
        [DNS_NODATA] = "nodata",
        [DNS_NULLMX] = "nullmx",
        [DNS_TEMP] = "temp",
        [DNS_BADNAME] = "badname",
    };
    if ((size_t)rc < TERN_ARRAY_LEN(names) && names[rc] != NULL)
        return names[rc];
    return "?";
}

/* ---- raw packet TTLs ---- */

#define DNS_HDR_LEN 12

static uint16_t
get16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t
get32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Skip a (possibly compressed) name at *off, staying below end. */
static int
skip_name(const unsigned char *pkt, size_t end, size_t *off)
{
    size_t o = *off, total = 0;
    for (;;) {
        unsigned b;
        if (o >= end)
            return -1;
        b = pkt[o];
        if (b == 0) {
            *off = o + 1;
            return 0;
        }
        if ((b & 0xc0) == 0xc0) {
            /* A pointer ends the name; RFC 1035 §4.1.4. */
            if (end - o < 2)
                return -1;
            *off = o + 2;
            return 0;
        }
        if ((b & 0xc0) != 0)
            return -1; /* extended / reserved label types */
        total += b + 1;
        if (total > 255 || end - o - 1 < b)
            return -1;
        o += (size_t)b + 1;
    }
}

int
dns_packet_skip_name(const unsigned char *pkt, size_t len, size_t *off)
{
    return skip_name(pkt, len, off);
}

static uint32_t
ttl_value(uint32_t t)
{
    return (t & 0x80000000u) ? 0 : t; /* RFC 2181 §8 */
}

/* One resource record at *off: type, TTL and the rdata span. */
struct rr_view {
    uint16_t type;
    uint32_t ttl;
    size_t rdata, rdlen;
};

static int
read_rr(const unsigned char *pkt, size_t len, size_t *off, struct rr_view *rr)
{
    size_t o = *off;
    if (skip_name(pkt, len, &o) < 0 || len - o < 10)
        return -1;
    rr->type = get16(pkt + o);
    rr->ttl = ttl_value(get32(pkt + o + 4));
    rr->rdlen = get16(pkt + o + 8);
    rr->rdata = o + 10;
    if (len - rr->rdata < rr->rdlen)
        return -1;
    *off = rr->rdata + rr->rdlen;
    return 0;
}

/* SOA rdata: MNAME, RNAME, then five 32-bit fields, MINIMUM last
 * (RFC 1035 §3.3.13). Names must end inside the rdata. */
static int
soa_minimum(const unsigned char *pkt, const struct rr_view *rr, uint32_t *min)
{
    size_t end = rr->rdata + rr->rdlen, o = rr->rdata;
    if (skip_name(pkt, end, &o) < 0 || skip_name(pkt, end, &o) < 0 || end - o != 20)
        return -1;
    *min = ttl_value(get32(pkt + o + 16));
    return 0;
}

int
dns_packet_ttl(const unsigned char *pkt, size_t len, struct dns_ttl_info *out)
{
    size_t off = DNS_HDR_LEN;
    unsigned qd, an, ns;
    memset(out, 0, sizeof(*out));
    if (pkt == NULL || len < DNS_HDR_LEN)
        return -1;
    qd = get16(pkt + 4);
    an = get16(pkt + 6);
    ns = get16(pkt + 8);
    for (unsigned i = 0; i < qd; i++) {
        if (skip_name(pkt, len, &off) < 0 || len - off < 4)
            return -1;
        off += 4;
    }
    for (unsigned i = 0; i < an + ns; i++) {
        struct rr_view rr;
        if (read_rr(pkt, len, &off, &rr) < 0)
            return -1;
        if (i < an) {
            if (!out->has_answer || rr.ttl < out->answer)
                out->answer = rr.ttl;
            out->has_answer = true;
        } else if (rr.type == DNS_T_SOA && !out->has_neg) {
            uint32_t min;
            if (soa_minimum(pkt, &rr, &min) < 0)
                return -1;
            out->neg = rr.ttl < min ? rr.ttl : min;
            out->has_neg = true;
        }
    }
    return 0;
}

/* ---- MX ---- */

static int
mx_cmp(const void *a, const void *b)
{
    const struct dns_mx *x = a, *y = b;
    return (int)x->pref - (int)y->pref;
}

/* name from DNS: lowercased copy without the trailing dot, or -1 when it is
 * not a usable host name. */
static int
mx_host_copy(const char *name, char *out, size_t cap)
{
    size_t n = strnlen(name, DNS_NAME_MAX + 2);
    if (n > 0 && name[n - 1] == '.')
        n--;
    if (n == 0 || n >= cap || !str_is_domain(name, n, false))
        return -1;
    memcpy(out, name, n);
    out[n] = '\0';
    str_lower(out);
    return 0;
}

enum dns_rc
dns_mx_decode(
    const unsigned char *abuf, int alen, struct dns_mx *out, size_t *n, char *err, size_t errcap)
{
    struct ares_mx_reply *list = NULL, *r;
    struct dns_mx *tmp;
    size_t total = 0, k = 0, roots = 0, bad = 0;
    int st = ares_parse_mx_reply(abuf, alen, &list);
    *n = 0;
    if (st != ARES_SUCCESS) {
        snprintf(err, errcap, "%s", ares_strerror(st));
        return st == ARES_ENODATA ? DNS_NODATA : DNS_TEMP;
    }
    for (r = list; r != NULL && total < DNS_MX_PARSE_MAX; r = r->next)
        total++;
    tmp = xcalloc(total ? total : 1, sizeof(*tmp));
    for (r = list; r != NULL && k < total; r = r->next) {
        if (r->host == NULL || r->host[0] == '\0' || strcmp(r->host, ".") == 0) {
            roots++;
            continue;
        }
        if (mx_host_copy(r->host, tmp[k].host, sizeof(tmp[k].host)) < 0) {
            bad++;
            continue;
        }
        tmp[k++].pref = r->priority;
    }
    ares_free_data(list);
    if (k == 0) {
        free(tmp);
        /* RFC 7505 §3: the null MX is the only MX record of the domain. */
        if (roots == 1 && bad == 0 && total == 1)
            return DNS_NULLMX;
        snprintf(err, errcap, "no usable MX host name (%zu records)", total);
        return DNS_TEMP;
    }
    qsort(tmp, k, sizeof(*tmp), mx_cmp);
    *n = k < DNS_MX_MAX ? k : DNS_MX_MAX;
    memcpy(out, tmp, *n * sizeof(*tmp));
    free(tmp);
    return DNS_OK;
}

void
dns_mx_sort(struct dns_mx *mx, size_t n, uint32_t (*rnd)(void *arg), void *arg)
{
    /* Insertion sort: stable, and n is small (DNS_MX_MAX). */
    for (size_t i = 1; i < n; i++) {
        struct dns_mx v = mx[i];
        size_t j = i;
        while (j > 0 && mx[j - 1].pref > v.pref) {
            mx[j] = mx[j - 1];
            j--;
        }
        mx[j] = v;
    }
    /* RFC 5321 §5.1: hosts of equal preference are tried in random order. */
    for (size_t start = 0; start < n;) {
        size_t end = start + 1;
        while (end < n && mx[end].pref == mx[start].pref)
            end++;
        for (size_t i = end - 1; i > start; i--) {
            size_t j = start + (size_t)(rnd(arg) % (uint32_t)(i - start + 1));
            struct dns_mx t = mx[i];
            mx[i] = mx[j];
            mx[j] = t;
        }
        start = end;
    }
}

int
dns_literal(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        *len = sizeof(*sin);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        *len = sizeof(*sin6);
        return 0;
    }
    return -1;
}

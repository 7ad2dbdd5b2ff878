/*
 * libFuzzer target: the DNS answer readers (src/dns/packet.c, rr.c) on a
 * packet from a hostile or broken resolver: the TTL reader, MX decoding
 * (RFC 7505 null MX included) and the raw record packer and unpacker of A,
 * AAAA, MX, TXT and PTR, with compression pointers, CNAME records in the
 * answer and truncation. Byte 0: bit 0 also unpacks the rest as a cache
 * blob. The rest is the packet. Invariants: TTLs below 2^31 (RFC 2181 §8)
 * and no answer TTL without answers; a decoded MX list is sorted, bounded,
 * of lowercased host names without the trailing dot; a packed answer unpacks
 * to at most DNS_RR_MAX records of the right shape (4 or 16 address bytes,
 * host names as above, TXT no longer than the packet), and copies equal it.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns_int.h"
#include "fuzz_check.h"
#include "util/parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_host(const char *h, size_t n)
{
    CHECK(n <= DNS_NAME_MAX && strlen(h) == n);
    CHECK(n == 0 || h[n - 1] != '.');
    CHECK(memchr(h, '\\', n) == NULL); /* no escaped label bytes: a host name */
    for (size_t i = 0; i < n; i++)
        CHECK(!(h[i] >= 'A' && h[i] <= 'Z'));
}

static void
check_ttl(const unsigned char *pkt, size_t len)
{
    struct dns_ttl_info ti;
    int rc = dns_packet_ttl(pkt, len, &ti);
    CHECK(rc == 0 || rc == -1);
    if (rc < 0)
        return;
    CHECK(ti.answer < 0x80000000u && ti.neg < 0x80000000u);
    CHECK(ti.has_answer == (((unsigned)pkt[6] << 8 | pkt[7]) != 0));
}

static void
check_mx(const unsigned char *pkt, size_t len)
{
    struct dns_mx mx[DNS_MX_MAX];
    char err[256];
    size_t n = 99;
    enum dns_rc rc = dns_mx_decode(pkt, (int)len, mx, &n, err, sizeof(err));
    CHECK(rc == DNS_OK || rc == DNS_NULLMX || rc == DNS_NODATA || rc == DNS_TEMP);
    if (rc != DNS_OK) {
        CHECK(n == 0 && memchr(err, '\0', sizeof(err)) != NULL);
        return;
    }
    CHECK(n >= 1 && n <= DNS_MX_MAX);
    for (size_t i = 0; i < n; i++) {
        size_t hl = strnlen(mx[i].host, sizeof(mx[i].host));
        CHECK(hl > 0 && hl < sizeof(mx[i].host));
        check_host(mx[i].host, hl);
        CHECK(str_is_domain(mx[i].host, hl, false));
        CHECK(i == 0 || mx[i - 1].pref <= mx[i].pref);
    }
}

static void
check_rr(const struct dns_rr_result *r, int type, size_t pkt_len)
{
    CHECK(r->n >= 1 && r->n <= DNS_RR_MAX);
    for (size_t i = 0; i < r->n; i++) {
        const struct dns_rr *rr = &r->rr[i];
        CHECK(rr->data != NULL && rr->data[rr->len] == '\0');
        if (type == DNS_RR_A)
            CHECK(rr->len == 4);
        else if (type == DNS_RR_AAAA)
            CHECK(rr->len == 16);
        else if (type == DNS_RR_TXT)
            CHECK(rr->len < pkt_len);
        else
            check_host(rr->data, rr->len);
        if (type != DNS_RR_MX)
            CHECK(rr->pref == 0);
    }
}

static void
check_pack(const unsigned char *pkt, size_t len, int type)
{
    void *blob = NULL;
    size_t blen = 0;
    char err[256];
    struct dns_rr_result *r, *d;
    enum dns_rc rc = dns_rr_pack(pkt, (int)len, type, &blob, &blen, err, sizeof(err));
    CHECK(rc == DNS_OK || rc == DNS_NODATA || rc == DNS_TEMP);
    if (rc != DNS_OK) {
        CHECK(blob == NULL && blen == 0);
        return;
    }
    r = dns_rr_result_new(type, DNS_NODATA);
    CHECK(blob != NULL && blen >= 1);
    CHECK(dns_rr_unpack(blob, blen, r) == 0);
    CHECK(r->rc == DNS_OK);
    check_rr(r, type, len);
    d = dns_rr_result_dup(r);
    CHECK(d->n == r->n && d->truncated == r->truncated);
    for (size_t i = 0; i < r->n; i++)
        CHECK(d->rr[i].len == r->rr[i].len && d->rr[i].pref == r->rr[i].pref &&
              memcmp(d->rr[i].data, r->rr[i].data, r->rr[i].len) == 0);
    dns_rr_result_free(d);
    dns_rr_result_free(r);
    free(blob);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int types[] = { DNS_RR_A, DNS_RR_AAAA, DNS_RR_MX, DNS_RR_TXT, DNS_RR_PTR };
    unsigned char *pkt;
    size_t len;
    if (size < 1 || size > 65536)
        return 0;
    len = size - 1;
    /* A heap copy of exactly the packet: reads past it are caught. */
    pkt = malloc(len ? len : 1);
    if (pkt == NULL)
        return 0;
    memcpy(pkt, data + 1, len);
    if (len >= 12)
        check_ttl(pkt, len);
    else
        CHECK(dns_packet_ttl(pkt, len, &(struct dns_ttl_info){ 0 }) == -1);
    check_mx(pkt, len);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        check_pack(pkt, len, types[i]);
    if (data[0] & 1) {
        struct dns_rr_result *r = dns_rr_result_new(DNS_RR_TXT, DNS_NODATA);
        (void)dns_rr_unpack(pkt, len, r);
        CHECK(r->n <= DNS_RR_MAX);
        dns_rr_result_free(r);
    }
    free(pkt);
    return 0;
}

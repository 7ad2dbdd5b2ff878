/*
 * Private to src/dns: the pure pieces (status classification, the bounded
 * raw-packet TTL reader, MX record decoding) and the LRU answer cache. The
 * cache owns its entries; lookups copy records out, so nothing handed to a
 * caller points into the cache.
 */
#ifndef TERN_DNS_INT_H
#define TERN_DNS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dns/dns.h"

#define DNS_T_A    1
#define DNS_T_SOA  6
#define DNS_T_PTR  12
#define DNS_T_MX   15
#define DNS_T_TXT  16
#define DNS_T_AAAA 28

#define DNS_TTL_MAX      86400 /* cap of a positive answer's cache life (s) */
#define DNS_NEG_TTL_MAX  3600  /* cap of a negative answer's (RFC 2308 §5) */
#define DNS_CACHE_MAX    10000 /* entries */
#define DNS_TIMEOUT_MS   2000  /* c-ares per-try timeout */
#define DNS_TRIES        2
#define DNS_MX_PARSE_MAX 1024 /* MX records looked at before sorting */

/* c-ares status (ARES_*) to our result class. */
enum dns_rc dns_classify(int ares_status);
const char *dns_rc_name(enum dns_rc rc);

/* TTLs read from a raw DNS response. answer: the minimum TTL of the answer
 * section. neg: RFC 2308 §5 negative TTL, min(SOA TTL, SOA MINIMUM), from an
 * SOA in the authority section. A TTL with the top bit set counts as 0
 * (RFC 2181 §8). */
struct dns_ttl_info {
    bool has_answer;
    uint32_t answer;
    bool has_neg;
    uint32_t neg;
};

/* Bounded reader: every offset is checked, compression pointers are only
 * skipped (never followed), labels > 63, reserved label types and names
 * over 255 octets are rejected. 0, or -1 for a truncated or malformed
 * packet (*out is then unusable). */
int dns_packet_ttl(const unsigned char *pkt, size_t len, struct dns_ttl_info *out);

/* Decode an MX response (from ares_query) into out[0..*n) sorted by
 * preference (not shuffled), at most DNS_MX_MAX. Host names are lowercased,
 * without the trailing dot; invalid names are dropped. Returns DNS_OK,
 * DNS_NULLMX (RFC 7505: the root as the only MX host), DNS_NODATA (no MX
 * record) or DNS_TEMP (malformed, or no usable host); err says why. */
enum dns_rc dns_mx_decode(
    const unsigned char *abuf, int alen, struct dns_mx *out, size_t *n, char *err, size_t errcap);

/* The ares_status (ARES_*) of a complete answer from ares_send, as
 * ares_query would report it: the RCODE, and NOERROR without answer
 * records is ARES_ENODATA. *ad: the header's AD bit (RFC 4035 §3.2.3: the
 * resolver validated every RRset of the answer and authority sections).
 * ARES_EBADRESP when shorter than a header. */
int dns_answer_status(const unsigned char *abuf, size_t alen, bool *ad);

/* Skip a (possibly compressed) name at *off in pkt[0..len); 0 or -1. */
int dns_packet_skip_name(const unsigned char *pkt, size_t len, size_t *off);

/* ---- rr.c: raw records ---- */

/* Records of type (enum dns_rrtype) in the answer section, at most
 * DNS_RR_MAX, packed into *blob (owned, *blob_len bytes) for the cache.
 * DNS_OK, DNS_NODATA (none of that type) or DNS_TEMP (malformed). */
enum dns_rc dns_rr_pack(const unsigned char *abuf, int alen, int type, void **blob,
    size_t *blob_len, char *err, size_t errcap);
/* Append the packed records to r. 0, or -1 when the blob is malformed. */
int dns_rr_unpack(const void *blob, size_t len, struct dns_rr_result *r);

/* ---- cache.c: answers by "qtype/name", least recently used evicted ---- */

struct dns_cache;

struct dns_cache *dns_cache_new(size_t max_entries);
void dns_cache_free(struct dns_cache *c); /* NULL is fine */
void dns_cache_clear(struct dns_cache *c);
/* Store rc with n records of rec_size bytes (copied) for ttl_s seconds from
 * now_ms; secure: the answer was DNSSEC-validated (AD bit), kept with it so
 * that a cached answer is never taken for more (or less) than it was.
 * ttl_s 0 or rc DNS_TEMP: nothing is stored. */
void dns_cache_put(struct dns_cache *c, int qtype, const char *name, enum dns_rc rc, bool secure,
    const void *recs, size_t n, size_t rec_size, uint32_t ttl_s, int64_t now_ms);
/* A live entry: true, *rc, *secure, and *recs, *n borrowed until the next
 * cache call. Expired entries are dropped. */
bool dns_cache_get(struct dns_cache *c, int qtype, const char *name, int64_t now_ms,
    enum dns_rc *rc, bool *secure, const void **recs, size_t *n);
size_t dns_cache_count(const struct dns_cache *c);

/* hosts.c: the hosts file's address -> name table. */
struct dns_hosts;
struct sockaddr;
struct dns_hosts *dns_hosts_load(void);
void dns_hosts_free(struct dns_hosts *h); /* NULL is fine */
/* The name the file gives sa's address (borrowed), or NULL. */
const char *dns_hosts_find(const struct dns_hosts *h, const struct sockaddr *sa);

#endif

/*
 * Asynchronous DNS for the whole daemon: c-ares driven by the libevent loop
 * (no threads, no blocking calls), with a TTL-bounded cache. Results keep
 * "no such domain", "no records of this type", "null MX" and "try again
 * later" apart, so the retry-or-bounce decision is made in one place
 * (RFC 5321 §5.1, RFC 7505). Servers come from dns_resolvers or, when that
 * is empty, /etc/resolv.conf.
 */
#ifndef TERN_DNS_H
#define TERN_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config/config.h"
#include "util/buf.h"

struct event_base;
struct dns;
struct dns_query;

#define DNS_NAME_MAX  255
#define DNS_MX_MAX    32 /* MX records kept per domain */
#define DNS_ADDRS_MAX 16 /* addresses kept per host */

enum dns_rc {
    DNS_OK,       /* records found */
    DNS_NXDOMAIN, /* the name does not exist (permanent) */
    DNS_NODATA,   /* the name exists, no records of this type */
    DNS_NULLMX,   /* MX only: the single record "0 ." (RFC 7505) */
    DNS_TEMP,     /* SERVFAIL, timeout, refused, no server reachable... */
    DNS_BADNAME,  /* the name is not a valid domain name (permanent) */
};

struct dns_mx {
    char host[DNS_NAME_MAX + 1]; /* lowercased, no trailing dot */
    uint16_t pref;
};

struct dns_mx_result {
    enum dns_rc rc;
    struct dns_mx mx[DNS_MX_MAX]; /* sorted: RFC 5321 §5.1 preference order,
                                     equal preferences shuffled */
    size_t n;
    bool secure;   /* DNSSEC-validated by the resolver (the AD bit, RFC 4035 §3.2.3) */
    char err[256]; /* a reason for logs and DSNs when rc != DNS_OK */
};

struct dns_addr_result {
    enum dns_rc rc;
    struct sockaddr_storage addr[DNS_ADDRS_MAX]; /* port filled in */
    socklen_t len[DNS_ADDRS_MAX];
    size_t n;    /* ordered by the ip_family preference */
    bool secure; /* every A/AAAA answer asked for was validated (AD bit) */
    char err[256];
};

/* ---- raw records of one type (TXT, PTR, MX, A, AAAA), for SPF and checks ---- */

enum dns_rrtype {
    DNS_RR_A = 1,
    DNS_RR_PTR = 12,
    DNS_RR_MX = 15,
    DNS_RR_TXT = 16,
    DNS_RR_AAAA = 28,
    DNS_RR_TLSA = 52, /* RFC 6698 */
};

#define DNS_RR_MAX      64    /* records kept per answer; more are dropped */
#define DNS_RR_DATA_MAX 65535 /* bytes of one record's data */

struct dns_rr {
    uint16_t pref; /* MX preference; 0 otherwise */
    size_t len;    /* bytes in data */
    /* Owned by the result, NUL terminated. TXT: the character-strings of one
     * record joined without separator (may hold NUL bytes: use len). MX, PTR:
     * the host name, lowercased, no trailing dot ("" for the root). A, AAAA:
     * the 4 or 16 address bytes in network order. TLSA: the rdata as sent
     * (dns_tlsa_parse). */
    char *data;
};

struct dns_rr_result {
    int type;       /* enum dns_rrtype */
    enum dns_rc rc; /* DNS_OK with n > 0, or why not (never DNS_NULLMX) */
    size_t n;
    struct dns_rr rr[DNS_RR_MAX]; /* in answer order */
    bool truncated;               /* more than DNS_RR_MAX records were answered */
    bool secure;                  /* validated (AD bit), positive or negative */
    char err[256];
};

/* Results are heap objects so that tests (and a fake resolver) can build
 * them: _new gives rc DNS_NODATA and no records; _add copies len bytes and
 * sets rc DNS_OK (-1 when full or too long); _dup deep-copies; _free(NULL)
 * is fine. */
struct dns_rr_result *dns_rr_result_new(int type, enum dns_rc rc);
int dns_rr_result_add(struct dns_rr_result *r, uint16_t pref, const void *data, size_t len);
struct dns_rr_result *dns_rr_result_dup(const struct dns_rr_result *r);
void dns_rr_result_free(struct dns_rr_result *r);

/* ---- TLSA (RFC 6698 §2.1) ---- */

#define DNS_TLSA_DATA_MAX 4096 /* association data kept: a full certificate fits */

struct dns_tlsa {
    uint8_t usage;             /* 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE (RFC 7218) */
    uint8_t selector;          /* 0 full certificate, 1 SubjectPublicKeyInfo */
    uint8_t mtype;             /* 0 exact, 1 SHA2-256, 2 SHA2-512 */
    const unsigned char *data; /* borrowed from the record */
    size_t len;
};

/* One TLSA record's rdata into *out (data borrowed). -1 when shorter than
 * the 3 fixed octets plus one octet of data, longer than DNS_TLSA_DATA_MAX,
 * or a digest whose length does not fit its matching type (32 for SHA2-256,
 * 64 for SHA2-512): such records cannot match anything. */
int dns_tlsa_parse(const void *rdata, size_t len, struct dns_tlsa *out);
/* "3 1 1 abcd..." (hex cut after max_hex digits with "..."), into out. */
void dns_tlsa_format(const struct dns_tlsa *t, char *out, size_t cap, size_t max_hex);

/* The reverse-lookup name of an address (AF_INET, AF_INET6):
 * "4.3.2.1.in-addr.arpa" or 32 nibbles + ".ip6.arpa" (RFC 3596 §2.5). 0 or -1
 * (other family, or cap too small). */
int dns_reverse_name(const struct sockaddr *sa, char *out, size_t cap);

/* servers: dns_resolvers (n 0: the system's resolv.conf). NULL + err. */
struct dns *dns_new(
    struct event_base *base, const struct hostport *servers, size_t n, struct buf *err);
/* Pending queries are cancelled: their callbacks never run. NULL is fine. */
void dns_free(struct dns *d);
/* Use other servers from now on (SIGHUP); clears the cache. 0 or -1 + err. */
int dns_set_servers(struct dns *d, const struct hostport *servers, size_t n, struct buf *err);

/* Callbacks run exactly once, always later from the event loop (never inside
 * the lookup call), unless the query is cancelled first. The result is
 * borrowed for the call. The handle is valid until the callback starts or
 * dns_cancel() returns. */
typedef void (*dns_mx_cb)(void *arg, const struct dns_mx_result *r);
typedef void (*dns_addr_cb)(void *arg, const struct dns_addr_result *r);

/* MX records of domain. */
struct dns_query *dns_lookup_mx(struct dns *d, const char *domain, dns_mx_cb cb, void *arg);
/* A and/or AAAA of host per fam, with port set in every address. An IP
 * literal answers at once (still through the loop). "localhost" falls back
 * to loopback (RFC 6761 §6.3). */
struct dns_query *dns_lookup_addr(
    struct dns *d, const char *host, uint16_t port, enum ip_family fam, dns_addr_cb cb, void *arg);
/* Records of type (enum dns_rrtype) at name, CNAMEs followed by the server.
 * Every lookup asks for DNSSEC validation (the AD bit in the query, RFC 6840
 * §5.7) and results say whether the resolver validated the answer.
 * Names are checked for length and printable ASCII only (SPF and DKIM names
 * hold '_'): DNS_BADNAME otherwise. The result is borrowed for the call. */
typedef void (*dns_rr_cb)(void *arg, const struct dns_rr_result *r);
struct dns_query *dns_lookup_rr(struct dns *d, const char *name, int type, dns_rr_cb cb, void *arg);
void dns_cancel(struct dns_query *q);
/* The name the hosts file gives sa's address (as the system resolver's
 * "files" source; read when d was made or its servers last set), borrowed
 * until then; NULL when it has none. */
const char *dns_hosts_name(const struct dns *d, const struct sockaddr *sa);

/* Pure helpers, for tests. */
/* Sort by preference, shuffling runs of equal preference with rnd(arg)
 * (RFC 5321 §5.1). */
void dns_mx_sort(struct dns_mx *mx, size_t n, uint32_t (*rnd)(void *arg), void *arg);
/* host is an IPv4 or IPv6 literal (no brackets): fill *ss and *len, 0; else -1. */
int dns_literal(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);

#endif

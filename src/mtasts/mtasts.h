/*
 * MTA-STS (RFC 8461): a recipient domain's policy, published as a TXT
 * record at _mta-sts.DOMAIN (its id) and a text file fetched over verified
 * HTTPS from mta-sts.DOMAIN. Pure parts (TXT record, policy file, MX
 * pattern match, cache file) are here for tests; the resolver (mtasts.c)
 * answers "what is DOMAIN's policy" on the relay's loop from a cache in
 * the spool (SPOOL/mta-sts/, one file per domain) or a fetch through
 * libcurl, and keeps a known policy through failed refreshes until its
 * max_age ends (RFC 8461 §5.1), so a blocked fetch cannot downgrade it.
 */
#ifndef TERN_MTASTS_H
#define TERN_MTASTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

struct event_base;
struct dns;
struct curlev;
struct mtasts;
struct mtasts_req;

#define MTASTS_DIR         "mta-sts"
#define MTASTS_ID_MAX      32          /* RFC 8461 §3.1: 1*32(ALPHA / DIGIT) */
#define MTASTS_MX_MAX      16          /* mx patterns kept per policy */
#define MTASTS_MX_LEN      253         /* one pattern */
#define MTASTS_POLICY_MAX  (64 * 1024) /* bytes of a policy file (RFC 8461 §3.3) */
#define MTASTS_MAX_AGE_MAX 31557600    /* RFC 8461 §3.2: about one year, in seconds */
#define MTASTS_FETCH_MS    (60 * 1000) /* one fetch, DNS excluded */
#define MTASTS_DOMAIN_MAX  253

enum mtasts_mode {
    MTASTS_NONE,    /* no policy (none published, none valid, or mode none) */
    MTASTS_TESTING, /* deliver as before; report failures (RFC 8460) */
    MTASTS_ENFORCE, /* only verified TLS to an MX host matching the patterns */
};

struct mtasts_policy {
    enum mtasts_mode mode;
    char mx[MTASTS_MX_MAX][MTASTS_MX_LEN + 1]; /* lowercased, no trailing dot */
    size_t n_mx;
    int64_t max_age_s;
};

/* "none", "testing", "enforce". */
const char *mtasts_mode_name(enum mtasts_mode m);

/* The _mta-sts TXT records of a domain (RFC 8461 §3.1): records not
 * starting with "v=STSv1" are not MTA-STS and are skipped; exactly one
 * must remain, with a valid id. 0 and id[MTASTS_ID_MAX + 1] set; 1 when
 * there is no STSv1 record; -1 (err says why) when there are several or
 * the one is malformed: then, too, the domain has no policy to fetch. */
int mtasts_txt_parse(
    const char *const *recs, const size_t *lens, size_t n, char *id, char *err, size_t errcap);

/* A policy file (RFC 8461 §3.2): "key: value" lines, LF or CRLF, unknown
 * keys ignored, version STSv1, mode, max_age (at most MTASTS_MAX_AGE_MAX),
 * and one or more mx unless the mode is none. 0, or -1 and err. */
int mtasts_policy_parse(
    const char *text, size_t len, struct mtasts_policy *p, char *err, size_t errcap);

/* Does host match pattern (RFC 8461 §4.1)? Case-insensitive, trailing dots
 * ignored; "*.example.com" matches exactly one more leftmost label. */
bool mtasts_mx_match(const char *pattern, const char *host);
/* Does host match one of p's patterns? */
bool mtasts_policy_match(const struct mtasts_policy *p, const char *host);

/* ---- the cache file (SPOOL/mta-sts/DOMAIN) ---- */

struct mtasts_cached {
    char id[MTASTS_ID_MAX + 1];
    int64_t fetched_s; /* wall clock of the fetch that got the policy */
    char *text;        /* owned: the policy file as fetched; NULL: none */
    size_t len;
    struct mtasts_policy policy; /* parsed from text */
    int64_t err_s;               /* when the last fetch failed; 0: it did not */
    char err[256];               /* why */
};

/* Serialise c ("tern-mta-sts 1", id, fetched, the last error, length,
 * then the policy text) into out. */
void mtasts_cache_format(const struct mtasts_cached *c, struct buf *out);
/* Parse what mtasts_cache_format wrote. 0 (c->text owned by the caller),
 * or -1 and err. */
int mtasts_cache_parse(
    const char *data, size_t len, struct mtasts_cached *c, char *err, size_t errcap);
void mtasts_cached_fini(struct mtasts_cached *c);

/* ---- the resolver ---- */

/* Why a domain has no usable policy although it publishes one, for
 * TLS-RPT (RFC 8460 §4.3.2.1). */
enum mtasts_fail {
    MTASTS_FAIL_NONE,
    MTASTS_FAIL_FETCH,   /* sts-policy-fetch-error */
    MTASTS_FAIL_INVALID, /* sts-policy-invalid */
    MTASTS_FAIL_WEBPKI,  /* sts-webpki-invalid: the HTTPS certificate */
};

/* What mtasts_get answers. Borrowed for the callback. */
struct mtasts_answer {
    enum mtasts_mode mode;              /* of the policy in force */
    const struct mtasts_policy *policy; /* NULL when mode is MTASTS_NONE */
    const char *text;                   /* the policy file, for TLS-RPT; NULL with policy */
    size_t len;
    enum mtasts_fail fail; /* a policy was announced but not obtained */
    const char *err;       /* why, when fail is set; else "" */
};

struct mtasts_opts {
    const char *spool_dir; /* the cache is SPOOL/mta-sts (made when missing); NULL: memory only */
    const char *ca_file;   /* verifies mta-sts.DOMAIN; NULL: the system store */
};

/* dns is borrowed and must outlive m. NULL + err. */
struct mtasts *mtasts_new(
    struct event_base *base, struct dns *dns, const struct mtasts_opts *o, struct buf *err);
/* Pending requests are cancelled (their callbacks never run). NULL is fine. */
void mtasts_free(struct mtasts *m);
void mtasts_set_ca_file(struct mtasts *m, const char *ca_file);

/* The policy of domain, from the cache or a fetch. cb runs exactly once,
 * later from the loop (never inside this call), unless cancelled first.
 * The handle is valid until cb starts or mtasts_cancel returns. */
typedef void (*mtasts_cb)(void *arg, const struct mtasts_answer *a);
struct mtasts_req *mtasts_get(struct mtasts *m, const char *domain, mtasts_cb cb, void *arg);
void mtasts_cancel(struct mtasts_req *r); /* NULL is fine */

/* The cache file of domain under spool_dir into *c (mtasts_cached_fini
 * it): 0; 1 when there is none; -1 (err says why) when it is damaged. */
int mtasts_cache_load(
    const char *spool_dir, const char *domain, struct mtasts_cached *c, char *err, size_t errcap);
/* The MTA-STS state of domain for `ternctl tls show`: the TXT id seen,
 * the cached policy, its age and max_age, the last fetch error. Reads the
 * cache file under spool_dir (no network). Appends text lines to out. */
void mtasts_render(const char *spool_dir, const char *domain, int64_t now_s, struct buf *out);

#endif

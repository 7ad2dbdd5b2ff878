/*
 * SMTP TLS Reporting (RFC 8460): the outcome of every outbound TLS session
 * towards a domain with a TLS policy (MTA-STS, DANE) is recorded per
 * policy domain and UTC day in SPOOL/tlsrpt/YYYY-MM-DD (lines appended:
 * durable, bounded), and once a day the counts of the days before go out
 * as gzipped JSON reports (RFC 8460 §4) to the addresses the domain
 * publishes in _smtp._tls TXT: mailto: through tern's own queue, https:
 * as a POST. Pure parts (the TXT record, the day file, the report JSON and
 * its gzip, the report message) are here for tests.
 */
#ifndef TERN_TLSRPT_H
#define TERN_TLSRPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

struct event_base;
struct dns;
struct spool;
struct loopq;
struct tlsrpt;

#define TLSRPT_DIR         "tlsrpt"
#define TLSRPT_DOMAINS_MAX 10000               /* policy domains counted per day */
#define TLSRPT_FILE_MAX    (64u * 1024 * 1024) /* one day file */
#define TLSRPT_RUA_MAX     8                   /* report addresses used per domain */
#define TLSRPT_RUA_LEN     512
#define TLSRPT_DETAILS_MAX 100  /* failure-details kept per domain and report */
#define TLSRPT_POLICY_MAX  8192 /* bytes of a policy kept for the report */

/* Result types (RFC 8460 §4.3). TLSRPT_SUCCESS counts a good session. */
enum tlsrpt_result {
    TLSRPT_SUCCESS,
    TLSRPT_STARTTLS_NOT_SUPPORTED,
    TLSRPT_CERT_HOST_MISMATCH,
    TLSRPT_CERT_EXPIRED,
    TLSRPT_CERT_NOT_TRUSTED,
    TLSRPT_VALIDATION_FAILURE,
    TLSRPT_STS_POLICY_FETCH_ERROR,
    TLSRPT_STS_POLICY_INVALID,
    TLSRPT_STS_WEBPKI_INVALID,
    TLSRPT_TLSA_INVALID,
    TLSRPT_DNSSEC_INVALID,
    TLSRPT_DANE_REQUIRED,
    TLSRPT_RESULT_N
};

/* Policy types (RFC 8460 §4.3.1). */
enum tlsrpt_ptype { TLSRPT_P_STS, TLSRPT_P_TLSA, TLSRPT_P_NONE, TLSRPT_P_N };

/* "starttls-not-supported", ...; "success" for TLSRPT_SUCCESS. */
const char *tlsrpt_result_name(enum tlsrpt_result r);
/* "sts", "tlsa", "no-policy-found". */
const char *tlsrpt_ptype_name(enum tlsrpt_ptype p);

/* One TLS session's outcome. Strings are borrowed for the call; NULL or ""
 * where not known. */
struct tlsrpt_event {
    const char *domain;      /* the policy domain (the recipient domain) */
    enum tlsrpt_ptype ptype; /* the policy applied */
    const char *policy;      /* its text: the MTA-STS policy file, TLSA records one per line */
    size_t policy_len;
    enum tlsrpt_result result;
    const char *sending_ip;   /* our address of the session */
    const char *receiving_mx; /* the MX host name */
    const char *receiving_ip;
};

/* ---- the _smtp._tls TXT record (RFC 8460 §3) ---- */

/* Exactly one record starting "v=TLSRPTv1" with a rua of comma-separated
 * mailto: and https: URIs (others skipped). 0 and rua[0..*n) filled, 1
 * when there is no TLSRPTv1 record, -1 (err says why) when malformed. */
int tlsrpt_txt_parse(const char *const *recs, const size_t *lens, size_t n,
    char rua[][TLSRPT_RUA_LEN], size_t *n_rua, char *err, size_t errcap);

/* ---- a day's counts ---- */

/* One line of a day file for ev (with its policy when with_policy). */
void tlsrpt_line_format(const struct tlsrpt_event *ev, bool with_policy, struct buf *out);

struct tlsrpt_detail {
    enum tlsrpt_result result;
    char sending_ip[64], receiving_mx[256], receiving_ip[64];
    uint64_t count;
};

struct tlsrpt_domain {
    char domain[256];
    enum tlsrpt_ptype ptype;
    char *policy; /* owned: the last policy text seen; NULL when none */
    size_t policy_len;
    uint64_t success, failure;
    struct tlsrpt_detail *details; /* owned */
    size_t n_details;
};

struct tlsrpt_day {
    struct tlsrpt_domain *d; /* owned, in order of first appearance */
    size_t n;
    size_t bad_lines; /* damaged lines skipped */
};

/* Add the lines of a day file (text, len) to day. */
void tlsrpt_day_parse(const char *text, size_t len, struct tlsrpt_day *day);
void tlsrpt_day_fini(struct tlsrpt_day *day);

/* ---- the report ---- */

struct tlsrpt_meta {
    const char *org;       /* organization-name: our hostname */
    const char *contact;   /* contact-info */
    const char *report_id; /* unique */
    int64_t start_s, end_s;
};

/* The JSON report (RFC 8460 §4.4) of one domain's counts. */
void tlsrpt_report_json(
    const struct tlsrpt_meta *m, const struct tlsrpt_domain *d, struct buf *out);
/* gzip (RFC 1952) of in into out. 0, or -1 when zlib fails. */
int tlsrpt_gzip(const void *in, size_t len, struct buf *out);
/* The report message for a mailto: rua (RFC 8460 §5.3): headers, a text
 * part and the gzip as application/tlsrpt+gzip, CRLF line ends. */
void tlsrpt_mail_format(const struct tlsrpt_meta *m, const char *domain, const char *from,
    const char *to, const void *gz, size_t gz_len, int64_t now_ms, struct buf *out);

/* ---- the recorder and the sender (on the relay's loop) ---- */

struct tlsrpt_opts {
    const char *spool_dir; /* the day files are in SPOOL/tlsrpt (made when missing) */
    bool send;             /* tls_rpt: send reports once a day */
    const char *hostname;  /* organization-name and the submitter */
    const char *from;      /* From: and envelope sender of mailed reports */
    const char *contact;   /* contact-info */
    const char *ca_file;   /* verifies https: rua; NULL: the system store */
    struct config *cfg;    /* borrowed: signs mailed reports (dkim_sign) */
};

/* dns, sp and inbox (where the spool's commit callbacks run) are borrowed
 * and must outlive t. NULL + err. */
struct tlsrpt *tlsrpt_new(struct event_base *base, struct dns *dns, struct spool *sp,
    struct loopq *inbox, const struct tlsrpt_opts *o, struct buf *err);
void tlsrpt_free(struct tlsrpt *t); /* NULL is fine */
void tlsrpt_set_opts(struct tlsrpt *t, const struct tlsrpt_opts *o);

/* Count ev for today (UTC), when reports are sent (tls_rpt). Never fails
 * the caller: a write that fails is logged (once a minute at most). */
void tlsrpt_record(struct tlsrpt *t, const struct tlsrpt_event *ev);

/* Send the reports now: the days before today and, with today, today's
 * counts so far too (an operator's or a test's trigger: `ternctl tls
 * report-now`). Runs in the background; false when a run is under way. */
bool tlsrpt_send_now(struct tlsrpt *t, bool today);

#endif

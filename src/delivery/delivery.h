/*
 * Outbound delivery: SMTP client sessions grouped by destination, driven by
 * the event loop. Pull model: the scheduler tells delivery that a
 * destination has due work (delivery_kick); delivery opens connections up to
 * the destination's limit, and every connection that is ready for a
 * transaction asks the scheduler for the next job (the next_job callback).
 * A connection that gets no job waits idle_conn_timeout for one, then QUITs.
 * Every job handed out is answered exactly once through the done callback,
 * with one result per recipient of the job, also on shutdown.
 */
#ifndef TERN_DELIVERY_H
#define TERN_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "dns/dns.h"
#include "spool/spool.h"
#include "util/status.h"

struct event_base;
struct delivery;
struct dns;

#define DELIVERY_DEST_MAX 300

/* What a next hop's reply means for a recipient. */
enum deliv_class { DELIV_OK, DELIV_TEMP, DELIV_PERM };

/* Classify an SMTP reply code from the next hop: 2xx OK, 5xx PERM, anything
 * else (4xx, garbage, 0 for "no reply/connection problem") TEMP. */
static inline enum deliv_class
deliv_classify(int code)
{
    if (code >= 200 && code <= 299)
        return DELIV_OK;
    if (code >= 500 && code <= 599)
        return DELIV_PERM;
    return DELIV_TEMP;
}

struct deliv_dest; /* delivery's own state of a destination (delivery_int.h) */

/* Where a job goes: an entry of the caller's destination table (the
 * scheduler owns them), borrowed by delivery while dl is not NULL. The key
 * groups jobs that may share a connection: "mx:DOMAIN" (the domain's MX
 * hosts, implicit MX, null MX), "smarthost" (the smarthost list) or
 * "route:NAME" (a route's hops). The hops are tried in order until one
 * accepts a connection (failover); a hop with mx set has its MX records
 * looked up, one without is connected to directly. */
struct delivery_dest {
    char key[DELIVERY_DEST_MAX];
    struct route_hop hops[ROUTE_HOPS_MAX];
    size_t n_hops;
    /* Jobs the owner has ready for this destination (what next_job would
     * hand out): the owner keeps it current, delivery only reads it. */
    size_t n_ready;
    /* Delivery's state of the destination (connections, plan, rate
     * bucket): made by delivery_kick, dropped by delivery once nothing of
     * it is left (then the released callback runs). The owner never
     * touches it and keeps the entry alive while it is not NULL. */
    struct deliv_dest *dl;
};

struct delivery_job {
    uint64_t id;                 /* the scheduler's handle */
    const struct spool_env *env; /* borrowed until the done callback */
    const size_t *rcpt_idx;      /* borrowed: indexes into env->rcpts */
    size_t n_rcpts;
};

struct delivery_rcpt_result {
    enum deliv_class cls;
    struct tern_status st; /* the peer's reply, or our own reason (connection refused...) */
    bool from_remote;      /* st is the remote server's reply */
    bool peer_dsn;         /* the server offered DSN (RFC 3461): NOTIFY/ORCPT went with the
                              recipient, so success notices are its job, not ours */
    bool unread;           /* the stored message was not where the job's envelope said (the
                              spool moved it): nothing was sent, read it again */
    /* Where the attempt's time went, in ms (the log's delays=, after
     * Postfix): setting the connection up (DNS, TCP, greeting, EHLO, AUTH),
     * its TLS handshake, and the transaction. A reused connection's setup
     * and handshake cost this job nothing; zero when no server was reached. */
    int64_t setup_ms, tls_ms, xfer_ms;
    /* No server took the transaction (no relay): the TLS policy the
     * destination's hosts were under ("dane", "mta-sts", "opportunistic"),
     * static; NULL when no plan was made. */
    const char *tls_policy;
};

struct delivery_callbacks {
    /* Next due job for dest, or false when none (the owner updates
     * dest->n_ready). The job stays valid until done(job.id) is called. */
    bool (*next_job)(void *arg, struct delivery_dest *dest, struct delivery_job *job);
    /* Results for every recipient of the job, in job order. relay: "host[addr]:port"
     * or NULL when no server was reached. Called on the loop thread, once. */
    void (*done)(void *arg, uint64_t job_id, const struct delivery_rcpt_result *res, size_t n,
        const char *relay);
    /* Delivery dropped its state of dest (dest->dl is NULL again): the
     * owner may free the entry. Runs from the loop or delivery_free, never
     * inside delivery_kick or delivery_dest_changed. */
    void (*released)(void *arg, struct delivery_dest *dest);
    void *arg;
};

/* dns is borrowed and must outlive d (ternd owns it; it is shared with
 * other lookups). */
struct delivery *delivery_new(struct event_base *base, struct spool *sp, struct dns *dns,
    const struct delivery_callbacks *cb);
/* Take a new configuration snapshot for connections opened from now on (a
 * reference is taken; the caller keeps its own). */
void delivery_set_config(struct delivery *d, struct config *cfg);
/* dest has dest->n_ready jobs waiting: wake its idle connections and open
 * new ones as limits allow. dest stays borrowed while dest->dl is set. */
void delivery_kick(struct delivery *d, struct delivery_dest *dest);
/* dest's hops changed (a reload): its connections to the old hops QUIT
 * (busy ones after their transaction) and the plan is made again. */
void delivery_dest_changed(struct delivery *d, struct delivery_dest *dest);
/* The outbound TLS policy modules (both borrowed, must outlive d; NULL
 * turns one off): MTA-STS policies of "mx:" destinations are looked up
 * with every plan, and TLS sessions to domains with a policy are recorded
 * for TLS-RPT. */
struct mtasts;
struct tlsrpt;
void delivery_set_tls_policy(struct delivery *d, struct mtasts *m, struct tlsrpt *r);
/* Connections currently open (for metrics and tests). */
size_t delivery_active(const struct delivery *d);
/* Stop: every connection is closed at once; jobs in flight are answered with
 * DELIV_TEMP "421 4.3.2 shutting down" (a 250 already received for the
 * final dot is still reported as OK). Then frees d. */
void delivery_free(struct delivery *d);

/* Is job the always_bcc copy (its one recipient RCPT_K_ARCHIVE)? */
bool delivery_is_archive_job(const struct delivery_job *job);
/* The header fields sent above the archive copy, appended to out, each
 * CRLF-terminated: "X-Tern-Envelope-From: <sender>" ("<>" for the null
 * sender) and "X-Tern-Envelope-To:" with every envelope recipient but the
 * archive's own (Bcc ones included: the envelope does not tell them
 * apart), comma separated, folded before an address that would take the
 * line past 78 characters. Envelope addresses hold no CR, LF or NUL (the
 * SMTP parser and the spool codec refuse them), so the fields are safe. */
void delivery_archive_head(const struct spool_env *env, struct buf *out);

/* The log's delays=a/b/c/d (Postfix's form, seconds with two decimals):
 * a the queue wait before the attempt, then r's setup, TLS and transfer
 * times; a is what is left of total_ms (arrival to now) once those are
 * taken, never below 0. Writes at most cap bytes (NUL included). */
void delivery_format_delays(
    int64_t total_ms, const struct delivery_rcpt_result *r, char *out, size_t cap);
/* The dsn= of a result's reply: its enhanced status code, or X.0.0 from
 * the class of its code (RFC 3463 §3.1) when the server gave none. */
void delivery_format_dsn(const struct tern_status *st, char *out, size_t cap);

/* ---- the per-destination TLS policy (RFC 7672, RFC 8461), pure; also
 * for `ternctl tls show` ---- */

/* Which policy a connection to one MX host is under. */
enum tls_policy {
    TLSP_OPPORTUNISTIC, /* mx_tls as configured (RFC 7435) */
    TLSP_DANE,          /* TLS required, the certificate matched against TLSA records */
    TLSP_MTA_STS,       /* TLS required, PKIX and the policy's MX patterns (RFC 8461 §4) */
};

/* What the TLSA lookup of one MX host says (RFC 7672 §2.2). */
enum dane_state {
    DANE_NONE,     /* no DANE: insecure MX, address or TLSA answer, or no TLSA records */
    DANE_USABLE,   /* validated TLSA records of which at least one is usable */
    DANE_UNUSABLE, /* validated TLSA records, none usable: unauthenticated TLS (§3.1.3) */
    DANE_TEMP,     /* the TLSA lookup of a secure host failed: skip the host (§2.1.1) */
};

/* Is this record usable for SMTP (RFC 7672 §3.1): DANE-TA(2) or DANE-EE(3),
 * selector 0 or 1, matching type 0, 1 or 2, and a well-formed record. */
bool deliv_tlsa_usable(const struct dns_tlsa *t);
/* The DANE state of a host from its TLSA answer (NULL: not looked up,
 * because the MX or address answers were not validated). */
enum dane_state deliv_dane_state(const struct dns_rr_result *tlsa);
/* The policy of one host: DANE with usable records wins over MTA-STS
 * (RFC 8461 §2); the policies bits are mx_tls_policy's; sts_enforce: the
 * domain has an MTA-STS policy in enforce mode that lists this host. */
enum tls_policy deliv_tls_policy_pick(
    unsigned policies, enum tls_mode mx_tls, enum dane_state dane, bool sts_enforce);
const char *deliv_tls_policy_name(enum tls_policy p);
const char *deliv_dane_state_name(enum dane_state s);

#endif

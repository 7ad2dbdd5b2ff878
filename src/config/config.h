/*
 * Configuration: one settings table (config.c) declares every setting once
 * with its type, default and validation. A loaded configuration is an
 * immutable, reference-counted snapshot: SIGHUP builds a new one and swaps it
 * in; every session keeps a reference to the one it started with.
 */
#ifndef TERN_CONFIG_H
#define TERN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "util/cidr.h"

#define CONFIG_HOST_MAX 256

struct hostport {
    char host[CONFIG_HOST_MAX]; /* no brackets; "" when unset */
    uint16_t port;
    bool implicit_tls; /* smarthost only: "smtps://" prefix or port 465 (RFC 8314) */
};

enum tls_mode { TLS_NONE, TLS_OPPORTUNISTIC, TLS_REQUIRED };
enum ip_family { IPFAM_PREFER_V4, IPFAM_PREFER_V6, IPFAM_V4, IPFAM_V6 };

/* One next hop of a route: a host (or address) and port; with mx the host's
 * MX records are looked up first (a route written without [brackets]). */
struct route_hop {
    char host[CONFIG_HOST_MAX];
    uint16_t port;
    bool mx;
    bool implicit_tls; /* "smtps://" prefix or port 465: TLS from the first byte (RFC 8314) */
};

#define ROUTE_HOPS_MAX 8

/* A routing rule: mail for a recipient domain (routes) or from a sender
 * domain (sender_routes) goes to these hops, tried in order (failover).
 * match is lowercased; a leading "." matches subdomains only. */
struct route {
    char *match;
    struct route_hop hops[ROUTE_HOPS_MAX];
    size_t n_hops;
};
enum log_format { LOGFMT_TEXT, LOGFMT_JSON };
enum tls_version { TLSVER_1_2, TLSVER_1_3 };

struct dkim_entry {
    char *domain; /* lowercased */
    char *selector;
    char *keyfile;
};
/* dkim_canonicalization: header/body (RFC 6376 §3.4). */
enum dkim_canon_setting {
    DKIM_C_RELAXED_RELAXED,
    DKIM_C_SIMPLE_SIMPLE,
    DKIM_C_RELAXED_SIMPLE,
    DKIM_C_SIMPLE_RELAXED,
};
struct dkim_keyset;

/* inbound_checks, as bits. */
#define CONFIG_CHECK_SPF   0x1u
#define CONFIG_CHECK_DKIM  0x2u
#define CONFIG_CHECK_DMARC 0x4u

/* mx_tls_policy: which authenticated-TLS policies of a destination domain
 * are looked up and enforced (RFC 7672 DANE, RFC 8461 MTA-STS). */
#define MX_TLS_POLICY_DANE   1u
#define MX_TLS_POLICY_MTASTS 2u

struct config {
    int refs;
    char *path; /* the file loaded, or NULL for built-in defaults */

    /* --- contract settings (../shared/CONTRACT.md) --- */
    char *hostname;
    struct hostport *smtp_listen;
    size_t n_smtp_listen;
    struct hostport *submission_listen;
    size_t n_submission_listen;
    struct hostport *smtps_listen;
    size_t n_smtps_listen;
    char *spool_dir;
    char *user; /* the unprivileged account (when started as root) */
    struct cidr *relay_networks;
    size_t n_relay_networks;
    char **relay_domains; /* lowercased, no trailing dot; ".d": subdomains of d */
    size_t n_relay_domains;
    /* The file of accepted relay_domains addresses (NULL: any), and the
     * archive address (local@domain; NULL: none). */
    char *relay_recipients;
    char *always_bcc;
    struct hostport smarthost;   /* the first smarthost; host "" = deliver by MX */
    struct hostport *smarthosts; /* every smarthost, tried in order (failover) */
    size_t n_smarthosts;
    char *smarthost_auth_file; /* NULL when empty */
    enum tls_mode smarthost_tls;
    uint16_t delivery_port;
    struct hostport *dns_resolvers;
    size_t n_dns_resolvers;
    char *tls_cert_file, *tls_key_file, *tls_ca_file, *auth_users_file; /* NULL when empty */
    char *admin_token_file; /* NULL when empty: the dashboard cannot act */
    struct dkim_entry *dkim_sign;
    size_t n_dkim_sign;
    /* Owned: the loaded keys of dkim_sign (config_dkim_keys), or NULL. */
    struct dkim_keyset *dkim_keys;
    bool dkim_keys_loaded;
    uint64_t max_message_size;
    uint64_t spool_segment_size;
    int64_t retry_initial_ms, retry_max_ms, max_queue_lifetime_ms;
    /* 0: no delay warnings */
    int64_t delay_warning_time_ms;
    struct hostport metrics_listen; /* host "" = off */
    enum log_format log_format;
    char *log_target;          /* "stderr", "syslog" or an absolute file path */
    int smtpd_peername_lookup; /* 0 no, 1 yes: clients' names for the log (PTR, confirmed) */

    /* --- tern's own settings --- */
    uint32_t max_recipients;             /* per message; 452 4.5.3 beyond */
    uint32_t max_sessions;               /* total inbound sessions; 421 4.7.0 beyond */
    uint32_t max_sessions_per_ip;        /* 421 4.7.0 beyond */
    uint32_t reserved_sessions;          /* of max_sessions, for relay_networks clients only */
    uint32_t workers;                    /* receive loops (threads when more than 1) */
    uint32_t max_errors;                 /* protocol errors before 421 and close */
    int64_t smtp_timeout_ms;             /* deadline per command line (RFC 5321 4.5.3.2: 5m) */
    int64_t data_timeout_ms;             /* data deadline, extended by min_data_rate (3m) */
    uint32_t min_data_rate;              /* bytes/s that extend the data deadline */
    uint32_t delivery_concurrency;       /* connections per destination */
    uint32_t delivery_max_msgs_per_conn; /* messages over one connection */
    int64_t connect_timeout_ms;          /* outbound connect */
    int64_t delivery_timeout_ms;         /* outbound per-reply wait */
    int64_t idle_conn_timeout_ms;        /* keep an idle outbound connection this long */
    int log_level;                       /* enum log_level */
    /* --- routing and MX delivery --- */
    struct route *routes; /* recipient domain -> next hops */
    size_t n_routes;
    struct route *sender_routes; /* sender domain -> next hops */
    size_t n_sender_routes;
    enum ip_family ip_family;
    uint32_t max_connections;   /* outbound connections in total */
    uint32_t max_rcpts_per_txn; /* recipients in one outbound transaction */
    uint32_t active_limit;      /* queued messages held in memory whole */
    uint32_t delivery_rate;     /* messages per minute per destination, 0 = no limit */
    /* --- inbound TLS and AUTH --- */
    int tls_min_version;    /* enum tls_version */
    char *tls_ciphers;      /* TLS 1.2 cipher list; NULL: OpenSSL's default */
    char *tls_ciphersuites; /* TLS 1.3 cipher suites; NULL: OpenSSL's default */
    int64_t tls_handshake_timeout_ms;
    int auth_allow_plaintext_loopback; /* 0 no, 1 yes */
    uint32_t auth_max_failures;        /* failed AUTH per client address before lockout */
    int64_t auth_failure_window_ms;    /* ... counted within this window */
    int64_t auth_lockout_ms;           /* how long a locked-out address gets 454 */
    int64_t auth_failure_delay_ms;     /* wait before answering 535 */
    char *auth_sender_login;           /* "user=addr|@domain[,...] ..." or NULL: no restriction */
    /* --- SPF and dns check --- */
    struct cidr *egress_addresses; /* addresses mail leaves from (/32, /128); none: discover */
    size_t n_egress_addresses;
    /* --- DKIM signing --- */
    int dkim_canonicalization; /* enum dkim_canon_setting */
    /* --- inbound checks (SPF, DKIM, DMARC; Authentication-Results) --- */
    char **inbound_checks; /* "spf", "dkim", "dmarc" */
    size_t n_inbound_checks;
    unsigned inbound_check_mask; /* CONFIG_CHECK_* of inbound_checks (config_load) */
    int dmarc_enforce;           /* 0 no, 1 yes */
    int64_t inbound_check_timeout_ms;
    /* --- outbound TLS and AUTH --- */
    enum tls_mode mx_tls;         /* STARTTLS towards MX hosts */
    char *mx_tls_policy;          /* "dane mta-sts" words, or NULL (none) */
    unsigned mx_tls_policies;     /* MX_TLS_POLICY_* bits of mx_tls_policy */
    int smarthost_auth_plaintext; /* 0 no, 1 yes: send credentials without TLS */
    /* --- local submission while ternd is down --- */
    char *maildrop_dir;   /* never NULL after config_load: spool_dir + "-maildrop" by default */
    char *maildrop_group; /* group of the maildrop and of tern-drop; NULL when empty */
    /* --- the message history journal --- */
    int64_t history_retention_ms; /* journal files older than this are deleted */
    uint64_t history_max_size;    /* bound on the journal's total bytes */
    /* --- the event webhook --- */
    char *event_webhook_url;         /* http:// or https://; NULL: no webhook */
    char *event_webhook_secret_file; /* the HMAC key; read by the parent */
    uint32_t event_webhook_batch_size;
    char *event_webhook_ca_file; /* NULL: the system store */
    /* --- TLS reporting (RFC 8460) --- */
    int tls_rpt;           /* 0 no, 1 yes: send daily TLS-RPT reports */
    char *tls_rpt_from;    /* From: of mailed reports; NULL: postmaster@hostname */
    char *tls_rpt_contact; /* the reports' contact-info; NULL: tls_rpt_from */
    /* --- milter filters --- */
    char *milters;             /* NULL: none; checked by milter_specs_parse at load */
    int milter_default_action; /* enum config_milter_action */
    int64_t milter_timeout_ms;
};
enum config_milter_action { MILTER_ACT_TEMPFAIL, MILTER_ACT_ACCEPT, MILTER_ACT_REJECT };

/*
 * Load path (NULL: built-in defaults only) and apply overrides, each
 * "name=value", in order. On any error returns NULL and appends to errors
 * one line per problem ("FILE:LINE: message" or "-o name: message"), all of
 * them, not just the first. The result has refs == 1; the caller owns it.
 * check_files: also verify that named files (tls, auth, dkim keys) are
 * readable, as --check does.
 */
struct config *config_load(const char *path, const char *const *overrides, size_t n_overrides,
    bool check_files, struct buf *errors);
/* The same with the file's bytes given (text[text_len]; path names it in
 * messages): ternd's relay parses what its parent read, so both see one
 * file even when the relay could not open it. */
struct config *config_load_text(const char *path, const char *text, size_t text_len,
    const char *const *overrides, size_t n_overrides, bool check_files, struct buf *errors);
struct config *config_ref(struct config *c);
/* The keys of dkim_sign: loaded by config_load when check_files is set (a
 * key that does not load is then a configuration error), else at the first
 * call, when entries whose key does not load are logged and left out.
 * Borrowed: valid while c is referenced (take a dkim_keyset_ref to keep it
 * longer). NULL when there are none. Thread safe. */
struct dkim_keyset *config_dkim_keys(struct config *c);
/* Install the keys of dkim_sign (owned reference taken over; NULL: none)
 * before the snapshot is shared: the relay's keys sign through the keys
 * process and are never loaded from the files. */
void config_set_dkim_keys(struct config *c, struct dkim_keyset *ks);
void config_unref(struct config *c); /* NULL is fine */
/* Is the name a known setting? Used by tools that take -o. */
bool config_is_setting(const char *name);
/* workers: at most this many receive loops; unset, one per online CPU up
 * to CONFIG_WORKERS_AUTO_MAX (more loops than cores only add switching). */
#define CONFIG_WORKERS_MAX      64
#define CONFIG_WORKERS_AUTO_MAX 16
uint32_t config_default_workers(void);
/* The README's default spool directory. */
#define CONFIG_DEFAULT_SPOOL "/var/spool/tern"
/* The configuration file every program reads when none is named
 * (CONTRACT.md); the package installs an example there. */
#define CONFIG_DEFAULT_FILE "/etc/tern/tern.conf"

/* The file to load: given when not NULL, else dflt when it exists (or
 * cannot be looked at, so that config_load reports why), else NULL for the
 * built-in defaults. Returns one of its arguments (borrowed). */
const char *config_pick_file(const char *given, const char *dflt);
/* config_pick_file(given, CONFIG_DEFAULT_FILE). */
const char *config_file_or_default(const char *given);

#endif

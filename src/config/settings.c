/*
 * The settings table: every setting is declared once here with its type,
 * default text, field in struct config and description. Defaults go through
 * the same typed parsers as user values. A parser builds the new value aside
 * and replaces the old one only when the whole value is good.
 */
#include "config/config_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "milter/milter.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define SHOWN_MAX 120

static const char *const tls_names[] = { "none", "opportunistic", "required", NULL };
static const char *const logfmt_names[] = { "text", "json", NULL };
static const char *const loglevel_names[] = { "debug", "info", "warn", "error", NULL };
static const char *const ipfam_names[] = { "prefer-ipv4", "prefer-ipv6", "ipv4", "ipv6", NULL };
static const char *const tlsver_names[] = { "TLSv1.2", "TLSv1.3", NULL };
static const char *const yesno_names[] = { "no", "yes", NULL };
static const char *const milter_action_names[] = { "tempfail", "accept", "reject", NULL };
static const char *const dkim_canon_names[] = { "relaxed/relaxed", "simple/simple",
    "relaxed/simple", "simple/relaxed", NULL };

/* Enum settings store the index into their names table. */
_Static_assert(TLS_NONE == 0 && TLS_OPPORTUNISTIC == 1 && TLS_REQUIRED == 2, "tls_names");
_Static_assert(LOGFMT_TEXT == 0 && LOGFMT_JSON == 1, "logfmt_names");
_Static_assert(
    IPFAM_PREFER_V4 == 0 && IPFAM_PREFER_V6 == 1 && IPFAM_V4 == 2 && IPFAM_V6 == 3, "ipfam_names");
_Static_assert(TLSVER_1_2 == 0 && TLSVER_1_3 == 1, "tlsver_names");
_Static_assert(DKIM_C_RELAXED_RELAXED == 0 && DKIM_C_SIMPLE_SIMPLE == 1 &&
                   DKIM_C_RELAXED_SIMPLE == 2 && DKIM_C_SIMPLE_RELAXED == 3,
    "dkim_canon_names");
_Static_assert(LOG_DEBUG == 0 && LOG_INFO == 1 && LOG_WARN == 2 && LOG_ERROR == 3, "log levels");
_Static_assert(sizeof(enum tls_mode) == sizeof(int) && sizeof(enum log_format) == sizeof(int),
    "enum settings are stored as int");

/* RFC 8314 §3: implicit TLS to a next hop is written "smtps://HOP"; its port
 * defaults to 465, and a hop on port 465 without the prefix is implicit TLS
 * too (465 is registered for submissions, never spoken in plaintext). */
#define SMTPS_PREFIX     "smtps://"
#define SMTPS_PREFIX_LEN (sizeof(SMTPS_PREFIX) - 1)
#define SMTPS_PORT       465

static bool
strip_smtps(const char **item, size_t *len)
{
    if (*len < SMTPS_PREFIX_LEN || !str_ieq(*item, SMTPS_PREFIX_LEN, SMTPS_PREFIX))
        return false;
    *item += SMTPS_PREFIX_LEN;
    *len -= SMTPS_PREFIX_LEN;
    return true;
}

#define OFF(f) offsetof(struct config, f)

const struct cfg_setting config_settings[] = {
    /* contract settings (CONTRACT.md) */
    { .name = "hostname",
        .type = CFG_STRING,
        .def = NULL,
        .off = OFF(hostname),
        .flags = CFG_F_NONEMPTY | CFG_F_DOMAIN,
        .desc =
            "name used in the greeting, EHLO and Received headers (default: the machine's FQDN)" },
    { .name = "smtp_listen",
        .type = CFG_HOSTPORT_LIST,
        .def = "127.0.0.1:2525",
        .off = OFF(smtp_listen),
        .off_n = OFF(n_smtp_listen),
        .flags = CFG_F_NUMERIC,
        .desc = "addresses for relay/MX traffic, addr:port or [v6]:port" },
    { .name = "submission_listen",
        .type = CFG_HOSTPORT_LIST,
        .def = "",
        .off = OFF(submission_listen),
        .off_n = OFF(n_submission_listen),
        .flags = CFG_F_NUMERIC,
        .desc = "addresses for submission: STARTTLS offered, AUTH required before MAIL" },
    { .name = "smtps_listen",
        .type = CFG_HOSTPORT_LIST,
        .def = "",
        .off = OFF(smtps_listen),
        .off_n = OFF(n_smtps_listen),
        .flags = CFG_F_NUMERIC,
        .desc = "addresses for implicit TLS submission (RFC 8314)" },
    { .name = "spool_dir",
        .type = CFG_PATH,
        .def = CONFIG_DEFAULT_SPOOL,
        .off = OFF(spool_dir),
        .flags = CFG_F_NONEMPTY,
        .desc = "where the durable queue lives" },
    { .name = "user",
        .type = CFG_STRING,
        .def = "tern",
        .off = OFF(user),
        .flags = CFG_F_NONEMPTY,
        .desc = "the account that every process reading the network, the spool or message "
                "content runs as when ternd is started as root" },
    { .name = "relay_networks",
        .type = CFG_CIDR_LIST,
        .def = "127.0.0.0/8 ::1/128",
        .off = OFF(relay_networks),
        .off_n = OFF(n_relay_networks),
        .desc = "CIDR list whose clients may relay to any domain without AUTH" },
    { .name = "relay_domains",
        .type = CFG_DOMAIN_LIST,
        .def = "",
        .off = OFF(relay_domains),
        .off_n = OFF(n_relay_domains),
        .desc = "recipient domains accepted from anyone" },
    { .name = "relay_recipients",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(relay_recipients),
        .flags = CFG_F_FILE,
        .desc = "file of the addresses accepted for relay_domains, one a line (@domain: all of "
                "it); others get 550 5.1.1 at RCPT; empty: any" },
    { .name = "always_bcc",
        .type = CFG_STRING,
        .def = "",
        .off = OFF(always_bcc),
        .desc = "address that receives a copy of every accepted message, headed by "
                "X-Tern-Envelope-From and X-Tern-Envelope-To (the compliance archive)" },
    { .name = "smarthost",
        .type = CFG_HOSTPORT_LIST,
        .def = "",
        .off = OFF(smarthosts),
        .off_n = OFF(n_smarthosts),
        .default_port = 25,
        .desc = "host:port or [addr]:port to send everything through (a list: failover in "
                "order; smtps://host[:port] or port 465: implicit TLS); empty: deliver by MX" },
    { .name = "smarthost_auth_file",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(smarthost_auth_file),
        .flags = CFG_F_FILE | CFG_F_SECRET,
        .desc = "file holding user:password for AUTH at the smarthost" },
    { .name = "smarthost_tls",
        .type = CFG_ENUM,
        .def = "opportunistic",
        .off = OFF(smarthost_tls),
        .names = tls_names,
        .desc = "TLS towards the smarthost: none, opportunistic or required" },
    { .name = "delivery_port",
        .type = CFG_PORT,
        .def = "25",
        .off = OFF(delivery_port),
        .desc = "TCP port used when delivering to MX hosts" },
    { .name = "dns_resolvers",
        .type = CFG_HOSTPORT_LIST,
        .def = "",
        .off = OFF(dns_resolvers),
        .off_n = OFF(n_dns_resolvers),
        .flags = CFG_F_NUMERIC,
        .default_port = 53,
        .desc = "addr:port list of DNS servers to use instead of /etc/resolv.conf" },
    { .name = "tls_cert_file",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(tls_cert_file),
        .flags = CFG_F_FILE,
        .desc = "PEM certificate chain for STARTTLS and smtps" },
    { .name = "tls_key_file",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(tls_key_file),
        .flags = CFG_F_FILE,
        .desc = "PEM private key for STARTTLS and smtps" },
    { .name = "tls_ca_file",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(tls_ca_file),
        .flags = CFG_F_FILE,
        .desc = "CA bundle used to verify peers when TLS is required (default: the system store)" },
    { .name = "auth_users_file",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(auth_users_file),
        .flags = CFG_F_FILE,
        .desc = "user:hash lines, hash in crypt(3) form; empty: no AUTH" },
    { .name = "admin_token_file",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(admin_token_file),
        .flags = CFG_F_FILE | CFG_F_SECRET,
        .desc =
            "bearer token for the dashboard's queue actions; empty: the dashboard is read-only" },
    { .name = "dkim_sign",
        .type = CFG_DKIM,
        .def = "",
        .off = OFF(dkim_sign),
        .off_n = OFF(n_dkim_sign),
        .desc = "domain:selector:keyfile entries; mail whose From domain matches is signed" },
    { .name = "dkim_canonicalization",
        .type = CFG_ENUM,
        .def = "relaxed/relaxed",
        .off = OFF(dkim_canonicalization),
        .names = dkim_canon_names,
        .desc = "DKIM header/body canonicalization: relaxed/relaxed, simple/simple, "
                "relaxed/simple or simple/relaxed" },
    { .name = "inbound_checks",
        .type = CFG_DOMAIN_LIST,
        .def = "",
        .off = OFF(inbound_checks),
        .off_n = OFF(n_inbound_checks),
        .desc = "spf, dkim and/or dmarc: mail of clients neither in relay_networks nor "
                "authenticated is checked and gets an Authentication-Results field" },
    { .name = "dmarc_enforce",
        .type = CFG_ENUM,
        .def = "no",
        .off = OFF(dmarc_enforce),
        .names = yesno_names,
        .desc = "refuse (p=reject, 550 5.7.1) or hold (p=quarantine) mail failing DMARC: no or "
                "yes" },
    { .name = "inbound_check_timeout",
        .type = CFG_DURATION,
        .def = "20s",
        .off = OFF(inbound_check_timeout_ms),
        .desc = "how long the end of a message waits for the DNS answers of its inbound checks; "
                "those not in by then count as temperror" },
    { .name = "max_message_size",
        .type = CFG_SIZE,
        .def = "52428800",
        .off = OFF(max_message_size),
        .desc = "largest message in bytes (k, m, g suffixes); advertised with SIZE" },
    { .name = "spool_segment_size",
        .type = CFG_SIZE,
        .def = "64m",
        .off = OFF(spool_segment_size),
        .desc = "size of the spool's log segments (advanced: the unit of reclaiming space)" },
    { .name = "retry_initial",
        .type = CFG_DURATION,
        .def = "1m",
        .off = OFF(retry_initial_ms),
        .desc = "first retry delay" },
    { .name = "retry_max",
        .type = CFG_DURATION,
        .def = "1h",
        .off = OFF(retry_max_ms),
        .desc = "cap of the exponentially growing retry delay" },
    { .name = "max_queue_lifetime",
        .type = CFG_DURATION,
        .def = "5d",
        .off = OFF(max_queue_lifetime_ms),
        .desc = "after this, undeliverable mail is bounced to its sender" },
    { .name = "delay_warning_time",
        .type = CFG_DURATION,
        .def = "4h",
        .off = OFF(delay_warning_time_ms),
        .flags = CFG_F_ZERO_OK,
        .desc = "a recipient still undelivered after this gets one delayed DSN; 0: none" },
    { .name = "metrics_listen",
        .type = CFG_HOSTPORT,
        .def = "",
        .off = OFF(metrics_listen),
        .flags = CFG_F_NUMERIC,
        .desc = "addr:port of the HTTP /metrics and /status endpoint; empty: off" },
    { .name = "log_format",
        .type = CFG_ENUM,
        .def = "text",
        .off = OFF(log_format),
        .names = logfmt_names,
        .desc = "log line format: text or json" },
    { .name = "log_target",
        .type = CFG_STRING,
        .def = "stderr",
        .off = OFF(log_target),
        .flags = CFG_F_NONEMPTY | CFG_F_LOGDEST,
        .desc = "where log lines go: stderr, syslog (facility mail) or an absolute file path "
                "(reopened on SIGUSR1)" },
    { .name = "smtpd_peername_lookup",
        .type = CFG_ENUM,
        .def = "yes",
        .off = OFF(smtpd_peername_lookup),
        .names = yesno_names,
        .desc = "look up each client's name (PTR, confirmed by its address records) for the "
                "log: no or yes" },
    /* tern's own settings */
    { .name = "max_recipients",
        .type = CFG_U32,
        .def = "1000",
        .off = OFF(max_recipients),
        .min = 1,
        /* The spool keeps at most 100,000 recipients a message: one is
         * left for always_bcc's archive copy. */
        .max = 99999,
        .desc = "recipients per message (at most 99999); 452 4.5.3 beyond" },
    { .name = "max_sessions",
        .type = CFG_U32,
        .def = "1000",
        .off = OFF(max_sessions),
        .min = 1,
        .max = 1000000,
        .desc = "inbound sessions in total; 421 4.7.0 beyond" },
    { .name = "max_sessions_per_ip",
        .type = CFG_U32,
        .def = "100",
        .off = OFF(max_sessions_per_ip),
        .min = 1,
        .max = 1000000,
        .desc = "inbound sessions per client address; 421 4.7.0 beyond" },
    { .name = "reserved_sessions",
        .type = CFG_U32,
        .def = NULL, /* computed: max_sessions / 10 */
        .off = OFF(reserved_sessions),
        .min = 0,
        .max = 999999,
        .desc = "sessions of max_sessions that only relay_networks clients may use (default: a "
                "tenth of max_sessions)" },
    { .name = "workers",
        .type = CFG_U32,
        .def = NULL, /* computed: the online CPUs, at most CONFIG_WORKERS_AUTO_MAX */
        .off = OFF(workers),
        .min = 1,
        .max = CONFIG_WORKERS_MAX,
        .desc = "SMTP receive loops, each a thread with its own listening sockets (SO_REUSEPORT); "
                "1: one loop, the main one (default: the online CPUs, at most 16)" },
    { .name = "max_errors",
        .type = CFG_U32,
        .def = "20",
        .off = OFF(max_errors),
        .min = 1,
        .max = 1000000,
        .desc = "protocol errors in a session before 421 and close" },
    { .name = "smtp_timeout",
        .type = CFG_DURATION,
        .def = "5m",
        .off = OFF(smtp_timeout_ms),
        .desc = "deadline for each command line, from the end of the previous one (RFC 5321 "
                "4.5.3.2); bytes trickling in do not extend it" },
    { .name = "data_timeout",
        .type = CFG_DURATION,
        .def = "3m",
        .off = OFF(data_timeout_ms),
        .desc = "deadline for message data (DATA, a BDAT chunk), extended by min_data_rate for "
                "the bytes received but never beyond this much ahead" },
    { .name = "min_data_rate",
        .type = CFG_U32,
        .def = "500",
        .off = OFF(min_data_rate),
        .min = 1,
        .max = 1000000000,
        .desc = "bytes per second of message data that keep a DATA or BDAT transfer going: each "
                "byte extends the data deadline by 1/min_data_rate seconds" },
    { .name = "delivery_concurrency",
        .type = CFG_U32,
        .def = "20",
        .off = OFF(delivery_concurrency),
        .min = 1,
        .max = 10000,
        .desc = "outbound connections per destination" },
    { .name = "delivery_max_msgs_per_conn",
        .type = CFG_U32,
        .def = "100",
        .off = OFF(delivery_max_msgs_per_conn),
        .min = 1,
        .max = 1000000,
        .desc = "messages sent over one outbound connection" },
    { .name = "connect_timeout",
        .type = CFG_DURATION,
        .def = "30s",
        .off = OFF(connect_timeout_ms),
        .desc = "outbound connect timeout" },
    { .name = "delivery_timeout",
        .type = CFG_DURATION,
        .def = "5m",
        .off = OFF(delivery_timeout_ms),
        .desc = "outbound wait for each reply" },
    { .name = "idle_conn_timeout",
        .type = CFG_DURATION,
        .def = "5s",
        .off = OFF(idle_conn_timeout_ms),
        .flags = CFG_F_ZERO_OK,
        .desc = "keep an idle outbound connection open this long (0: close at once)" },
    { .name = "log_level",
        .type = CFG_ENUM,
        .def = "info",
        .off = OFF(log_level),
        .names = loglevel_names,
        .desc = "lowest level logged: debug, info, warn or error" },
    /* routing and MX delivery */
    { .name = "routes",
        .type = CFG_ROUTES,
        .def = "",
        .off = OFF(routes),
        .off_n = OFF(n_routes),
        .desc = "recipient domain routes: DOMAIN=HOP[,HOP...]; [host]:port connects directly, "
                "host[:port] looks up host's MX; .domain matches subdomains" },
    { .name = "sender_routes",
        .type = CFG_ROUTES,
        .def = "",
        .off = OFF(sender_routes),
        .off_n = OFF(n_sender_routes),
        .desc = "per-sender-domain next hops (a sender domain's own smarthost), same syntax as "
                "routes" },
    { .name = "ip_family",
        .type = CFG_ENUM,
        .def = "prefer-ipv4",
        .off = OFF(ip_family),
        .names = ipfam_names,
        .desc = "address family for outbound connections: prefer-ipv4, prefer-ipv6, ipv4, ipv6" },
    { .name = "max_connections",
        .type = CFG_U32,
        .def = "500",
        .off = OFF(max_connections),
        .min = 1,
        .max = 100000,
        .desc = "outbound connections in total" },
    { .name = "max_rcpts_per_txn",
        .type = CFG_U32,
        .def = "100",
        .off = OFF(max_rcpts_per_txn),
        .min = 1,
        .max = 100000,
        .desc = "recipients in one outbound transaction; more go in further transactions" },
    { .name = "active_limit",
        .type = CFG_U32,
        .def = "20000",
        .off = OFF(active_limit),
        .min = 1,
        .max = 10000000,
        .desc = "queued messages held in memory whole (Postfix's qmgr_message_active_limit); "
                "the others wait on disk, indexed in a few dozen bytes each" },
    { .name = "delivery_rate",
        .type = CFG_U32,
        .def = "0",
        .off = OFF(delivery_rate),
        .min = 0,
        .max = 10000000,
        .desc = "messages per minute per destination (0: no limit)" },
    /* inbound TLS and AUTH */
    { .name = "tls_min_version",
        .type = CFG_ENUM,
        .def = "TLSv1.2",
        .off = OFF(tls_min_version),
        .names = tlsver_names,
        .desc = "lowest TLS version accepted: TLSv1.2 or TLSv1.3" },
    { .name = "tls_ciphers",
        .type = CFG_STRING,
        .def = "",
        .off = OFF(tls_ciphers),
        .desc = "OpenSSL cipher list for TLS 1.2 (empty: OpenSSL's default)" },
    { .name = "tls_ciphersuites",
        .type = CFG_STRING,
        .def = "",
        .off = OFF(tls_ciphersuites),
        .desc = "OpenSSL cipher suites for TLS 1.3 (empty: OpenSSL's default)" },
    { .name = "tls_handshake_timeout",
        .type = CFG_DURATION,
        .def = "30s",
        .off = OFF(tls_handshake_timeout_ms),
        .desc = "time allowed for a TLS handshake (STARTTLS and smtps)" },
    { .name = "auth_allow_plaintext_loopback",
        .type = CFG_ENUM,
        .def = "no",
        .off = OFF(auth_allow_plaintext_loopback),
        .names = yesno_names,
        .desc = "offer AUTH without TLS to loopback clients: no or yes" },
    { .name = "auth_max_failures",
        .type = CFG_U32,
        .def = "5",
        .off = OFF(auth_max_failures),
        .min = 1,
        .max = 1000,
        .desc =
            "failed AUTH attempts from one address (within auth_failure_window) before lockout" },
    { .name = "auth_failure_window",
        .type = CFG_DURATION,
        .def = "10m",
        .off = OFF(auth_failure_window_ms),
        .desc = "window in which failed AUTH attempts are counted" },
    { .name = "auth_lockout",
        .type = CFG_DURATION,
        .def = "10m",
        .off = OFF(auth_lockout_ms),
        .desc = "how long a locked-out address is refused AUTH (454 4.7.0)" },
    { .name = "auth_failure_delay",
        .type = CFG_DURATION,
        .def = "1s",
        .off = OFF(auth_failure_delay_ms),
        .flags = CFG_F_ZERO_OK,
        .desc = "wait before answering a failed AUTH with 535" },
    { .name = "auth_sender_login",
        .type = CFG_STRING,
        .def = "",
        .off = OFF(auth_sender_login),
        .desc = "user=addr|@domain[,...] entries: the envelope senders each AUTH user may use" },
    /* outbound TLS and AUTH */
    { .name = "mx_tls",
        .type = CFG_ENUM,
        .def = "opportunistic",
        .off = OFF(mx_tls),
        .names = tls_names,
        .desc = "STARTTLS towards MX hosts: none, opportunistic or required (verified chain and "
                "MX host name)" },
    { .name = "mx_tls_policy",
        .type = CFG_STRING,
        .def = "dane mta-sts",
        .off = OFF(mx_tls_policy),
        .desc = "authenticated TLS policies of destination domains to enforce: dane (RFC 7672), "
                "mta-sts (RFC 8461); empty: none" },
    { .name = "smarthost_auth_plaintext",
        .type = CFG_ENUM,
        .def = "no",
        .off = OFF(smarthost_auth_plaintext),
        .names = yesno_names,
        .desc = "send smarthost_auth_file credentials over a connection without TLS: no or yes" },
    /* SPF and dns check */
    { .name = "egress_addresses",
        .type = CFG_CIDR_LIST,
        .def = "",
        .off = OFF(egress_addresses),
        .off_n = OFF(n_egress_addresses),
        .desc = "the addresses tern sends mail from, checked against SPF and PTR by ternctl dns "
                "check (empty: the addresses of the default route's interface)" },
    /* local submission while ternd is down */
    { .name = "maildrop_dir",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(maildrop_dir),
        .desc = "where tern-sendmail leaves mail while ternd is down (default: spool_dir with "
                "\"-maildrop\" appended)" },
    { .name = "maildrop_group",
        .type = CFG_STRING,
        .def = "tern-drop",
        .off = OFF(maildrop_group),
        .desc = "group of the maildrop and of the setgid helper tern-drop" },
    /* the message history journal (ternctl queue show, trace) */
    { .name = "history_retention",
        .type = CFG_DURATION,
        .def = "7d",
        .off = OFF(history_retention_ms),
        .desc = "how long the history of messages (SPOOL/history) is kept for ternctl trace" },
    { .name = "history_max_size",
        .type = CFG_SIZE,
        .def = "1g",
        .off = OFF(history_max_size),
        .desc = "bound on the total size of the history journal; the oldest files go first" },
    /* the event webhook (journal events POSTed, signed) */
    { .name = "event_webhook_url",
        .type = CFG_STRING,
        .def = "",
        .off = OFF(event_webhook_url),
        .desc =
            "http:// or https:// URL that receives message events as signed JSON; empty: none" },
    { .name = "event_webhook_secret_file",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(event_webhook_secret_file),
        .flags = CFG_F_FILE | CFG_F_SECRET,
        .desc = "the HMAC-SHA256 key of X-Tern-Signature (read by ternd's root parent)" },
    { .name = "event_webhook_batch_size",
        .type = CFG_U32,
        .def = "100",
        .off = OFF(event_webhook_batch_size),
        .min = 1,
        .max = 1000,
        .desc = "events per POST at most (and 256 KiB)" },
    { .name = "event_webhook_ca_file",
        .type = CFG_PATH,
        .def = "",
        .off = OFF(event_webhook_ca_file),
        .flags = CFG_F_FILE,
        .desc = "CA bundle that verifies an https event_webhook_url (default: the system store)" },
    /* TLS reporting (RFC 8460) */
    { .name = "tls_rpt",
        .type = CFG_ENUM,
        .def = "no",
        .off = OFF(tls_rpt),
        .names = yesno_names,
        .desc = "send daily TLS-RPT reports (RFC 8460) to domains that publish _smtp._tls: no or "
                "yes" },
    { .name = "tls_rpt_from",
        .type = CFG_STRING,
        .def = "",
        .off = OFF(tls_rpt_from),
        .desc = "sender (From: and envelope) of mailed TLS-RPT reports; empty: "
                "postmaster@hostname" },
    { .name = "tls_rpt_contact",
        .type = CFG_STRING,
        .def = "",
        .off = OFF(tls_rpt_contact),
        .desc = "contact-info of TLS-RPT reports; empty: tls_rpt_from" },
    /* milter filters (the Sendmail milter protocol, version 6) */
    { .name = "milters",
        .type = CFG_STRING,
        .def = "",
        .off = OFF(milters),
        .flags = CFG_F_MILTERS,
        .desc = "filters consulted in order for every message: inet:ADDRESS:PORT or "
                "unix:/PATH, separated by commas or blanks; empty: none" },
    { .name = "milter_default_action",
        .type = CFG_ENUM,
        .def = "tempfail",
        .off = OFF(milter_default_action),
        .names = milter_action_names,
        .desc = "what a filter that is down, too slow or broken means: tempfail (451 4.7.1), "
                "accept (the filter is skipped) or reject (550 5.7.1)" },
    { .name = "milter_timeout",
        .type = CFG_DURATION,
        .def = "30s",
        .off = OFF(milter_timeout_ms),
        .desc = "how long a filter may take to accept the connection and to answer each "
                "command (a progress reply starts it again)" },
};

const size_t config_n_settings = TERN_ARRAY_LEN(config_settings);

#define FIELD(c, s, T) ((T *)(void *)((char *)(c) + (s)->off))
#define COUNT(c, s)    ((size_t *)(void *)((char *)(c) + (s)->off_n))

void
cfg_error(struct cfg_errs *e, const char *fmt, ...)
{
    va_list ap;
    e->n++;
    if (e->n > CONFIG_ERRORS_MAX)
        return;
    buf_printf(e->out, "%s: ", e->where);
    va_start(ap, fmt);
    buf_vprintf(e->out, fmt, ap);
    va_end(ap);
    buf_append_char(e->out, '\n');
}

const char *
cfg_shown(const char *s, char *tmp, size_t cap)
{
    size_t o = 0;
    TERN_ASSERT(cap >= 8);
    for (; *s != '\0'; s++) {
        if (o + 4 >= cap) {
            memcpy(tmp + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char ch = (unsigned char)*s;
        tmp[o++] = (ch < 0x20 || ch == 0x7f || ch == '"' || ch == '\\') ? '?' : (char)ch;
    }
    tmp[o] = '\0';
    return tmp;
}

const struct cfg_setting *
cfg_find(const char *name)
{
    for (size_t i = 0; i < config_n_settings; i++) {
        if (strcmp(config_settings[i].name, name) == 0)
            return &config_settings[i];
    }
    return NULL;
}

bool
config_is_setting(const char *name)
{
    return name != NULL && cfg_find(name) != NULL;
}

/* Levenshtein distance; b is a setting name, short enough for one row. */
static size_t
edit_distance(const char *a, const char *b)
{
    size_t row[64], bl = strlen(b);
    TERN_ASSERT(bl < TERN_ARRAY_LEN(row));
    for (size_t j = 0; j <= bl; j++)
        row[j] = j;
    for (size_t i = 1; a[i - 1] != '\0'; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= bl; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[bl];
}

const char *
cfg_suggest(const char *name)
{
    size_t len = strlen(name), limit, best = SIZE_MAX;
    const char *found = NULL;
    if (len == 0 || len > 64)
        return NULL;
    /* Allow about one typo per four characters, at least one, at most three. */
    limit = len < 8 ? 1 : (len < 12 ? 2 : 3);
    for (size_t i = 0; i < config_n_settings; i++) {
        size_t d = edit_distance(name, config_settings[i].name);
        if (d < best) {
            best = d;
            found = config_settings[i].name;
        }
    }
    return best <= limit ? found : NULL;
}

/* ---- scalar types ---- */

static int
set_string(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    if ((s->flags & CFG_F_DOMAIN) && *v != '\0' && !str_is_domain(v, strlen(v), false)) {
        cfg_error(e, "bad domain name \"%s\" for %s", cfg_shown(v, t, sizeof(t)), s->name);
        return -1;
    }
    if ((s->flags & CFG_F_LOGDEST) && strcmp(v, "stderr") != 0 && strcmp(v, "syslog") != 0 &&
        (v[0] != '/' || strlen(v) >= PATH_MAX)) {
        cfg_error(e, "%s must be stderr, syslog or an absolute file path, not \"%s\"", s->name,
            cfg_shown(v, t, sizeof(t)));
        return -1;
    }
    if (s->flags & CFG_F_MILTERS) {
        struct milter_spec *ms = NULL;
        size_t n_ms = 0;
        char why[200];
        if (milter_specs_parse(v, &ms, &n_ms, why, sizeof(why)) < 0) {
            cfg_error(e, "bad %s: %s", s->name, why);
            return -1;
        }
        free(ms);
    }
    if (s->type == CFG_PATH && strlen(v) >= PATH_MAX) {
        cfg_error(e, "path too long for %s", s->name);
        return -1;
    }
    cfg_clear(c, s);
    if (*v != '\0')
        *FIELD(c, s, char *) = xstrdup(v);
    return 0;
}

static int
set_size(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    uint64_t n;
    if (parse_size(v, &n) < 0) {
        cfg_error(e, "bad size \"%s\" for %s (bytes, with an optional k, m or g suffix)",
            cfg_shown(v, t, sizeof(t)), s->name);
        return -1;
    }
    if (n == 0) {
        cfg_error(e, "%s must be greater than 0", s->name);
        return -1;
    }
    *FIELD(c, s, uint64_t) = n;
    return 0;
}

static int
set_duration(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    int64_t ms;
    if (parse_duration(v, true, &ms) < 0) {
        cfg_error(e, "bad duration \"%s\" for %s (a number with an s, m, h or d suffix)",
            cfg_shown(v, t, sizeof(t)), s->name);
        return -1;
    }
    if (ms == 0 && !(s->flags & CFG_F_ZERO_OK)) {
        cfg_error(e, "%s must be greater than 0", s->name);
        return -1;
    }
    *FIELD(c, s, int64_t) = ms;
    return 0;
}

static int
set_u32(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    uint64_t n;
    if (parse_u64(v, strlen(v), s->max, &n) < 0 || n < s->min) {
        cfg_error(e, "bad number \"%s\" for %s (%" PRIu32 "..%" PRIu32 ")",
            cfg_shown(v, t, sizeof(t)), s->name, s->min, s->max);
        return -1;
    }
    *FIELD(c, s, uint32_t) = (uint32_t)n;
    return 0;
}

static int
set_port(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    uint64_t n;
    if (parse_u64(v, strlen(v), 65535, &n) < 0 || n == 0) {
        cfg_error(e, "bad port \"%s\" for %s (1..65535)", cfg_shown(v, t, sizeof(t)), s->name);
        return -1;
    }
    *FIELD(c, s, uint16_t) = (uint16_t)n;
    return 0;
}

static int
set_enum(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    struct buf allowed = BUF_INIT;
    for (int i = 0; s->names[i] != NULL; i++) {
        if (str_ieq(v, strlen(v), s->names[i])) {
            *FIELD(c, s, int) = i;
            return 0;
        }
    }
    for (int i = 0; s->names[i] != NULL; i++)
        buf_printf(&allowed, "%s%s", i ? ", " : "", s->names[i]);
    cfg_error(e, "bad value \"%s\" for %s (allowed: %s)", cfg_shown(v, t, sizeof(t)), s->name,
        allowed.data ? allowed.data : "");
    buf_fini(&allowed);
    return -1;
}

/* ---- host:port ---- */

/* Explain why item is not a good host:port for s. */
static void
hostport_error(const struct cfg_setting *s, const char *item, const char *in, struct cfg_errs *e)
{
    char t[SHOWN_MAX], tp[SHOWN_MAX];
    const char *port = NULL, *colon = strchr(item, ':');
    uint64_t n;
    if (item[0] == '[') {
        const char *close = strchr(item, ']');
        if (close != NULL && close[1] == ':')
            port = close + 2;
    } else if (colon != NULL && strchr(colon + 1, ':') != NULL) {
        cfg_error(e, "bad address \"%s\" %s %s (write IPv6 addresses as [addr]:port)",
            cfg_shown(item, t, sizeof(t)), in, s->name);
        return;
    } else if (colon != NULL) {
        port = colon + 1;
    }
    if (port != NULL && (parse_u64(port, strlen(port), 65535, &n) < 0 || n == 0)) {
        cfg_error(e, "bad port \"%s\" in \"%s\" %s %s (1..65535)", cfg_shown(port, tp, sizeof(tp)),
            cfg_shown(item, t, sizeof(t)), in, s->name);
    } else if (port == NULL && s->default_port == 0) {
        cfg_error(e, "missing port in \"%s\" %s %s (use host:port or [addr]:port)",
            cfg_shown(item, t, sizeof(t)), in, s->name);
    } else {
        cfg_error(e, "bad address \"%s\" %s %s (use host:port or [addr]:port)",
            cfg_shown(item, t, sizeof(t)), in, s->name);
    }
}

static int
parse_one_hostport(const struct cfg_setting *s, const char *item, const char *in,
    struct hostport *hp, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    unsigned char tmp[16];
    size_t ilen = strlen(item);
    bool smtps = s->off == OFF(smarthosts) && strip_smtps(&item, &ilen);
    if (parse_hostport(item, hp->host, sizeof(hp->host), smtps ? SMTPS_PORT : s->default_port,
            &hp->port) < 0) {
        hostport_error(s, item, in, e);
        return -1;
    }
    hp->implicit_tls = s->off == OFF(smarthosts) && (smtps || hp->port == SMTPS_PORT);
    if ((s->flags & CFG_F_NUMERIC) && inet_pton(AF_INET, hp->host, tmp) != 1 &&
        inet_pton(AF_INET6, hp->host, tmp) != 1) {
        cfg_error(e, "bad address \"%s\" %s %s (an IP address is needed)",
            cfg_shown(item, t, sizeof(t)), in, s->name);
        return -1;
    }
    return 0;
}

static int
set_hostport(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    struct hostport hp = { "", 0, false };
    if (*v != '\0' && parse_one_hostport(s, v, "for", &hp, e) < 0)
        return -1;
    *FIELD(c, s, struct hostport) = hp;
    return 0;
}

/* ---- lists: space separated words ---- */

struct words {
    const char *p;
    char item[CONFIG_LINE_MAX + 1];
};

/* Next word of the list into w->item; false at the end. */
static bool
next_word(struct words *w)
{
    size_t n = 0;
    while (*w->p == ' ' || *w->p == '\t')
        w->p++;
    if (*w->p == '\0')
        return false;
    while (w->p[n] != '\0' && w->p[n] != ' ' && w->p[n] != '\t')
        n++;
    TERN_ASSERT(n < sizeof(w->item)); /* cfg_set bounds the value length */
    memcpy(w->item, w->p, n);
    w->item[n] = '\0';
    w->p += n;
    return true;
}

/* Grow *arr (of elem-sized items, *n used) by one; returns the new slot. */
static void *
list_push(void **arr, size_t *n, size_t elem)
{
    size_t bytes;
    if (!size_add(*n, 1, &bytes) || !size_mul(bytes, elem, &bytes))
        tern_panic("list too long");
    *arr = xrealloc(*arr, bytes);
    memset((char *)*arr + *n * elem, 0, elem);
    return (char *)*arr + (*n)++ * elem;
}

/* Parse one list word into slot (zeroed, elem bytes); report and return -1
 * when it is bad. */
typedef int list_item_fn(
    const struct cfg_setting *s, const char *item, void *slot, struct cfg_errs *e);
/* Free n items of arr and arr itself. */
typedef void list_free_fn(void *arr, size_t n);

/* The one shape of every list setting: parse each space separated word into
 * a new array; on any bad word report them all and keep the old value. */
static int
set_list(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e,
    size_t elem, list_item_fn *parse, list_free_fn *free_list)
{
    struct words *w = xmalloc(sizeof(*w));
    void *arr = NULL;
    size_t n = 0;
    int rc = 0;
    w->p = v;
    while (next_word(w)) {
        void *slot = list_push(&arr, &n, elem);
        if (parse(s, w->item, slot, e) < 0)
            rc = -1;
    }
    free(w);
    if (rc < 0) {
        free_list(arr, n);
        return -1;
    }
    cfg_clear(c, s);
    *FIELD(c, s, void *) = arr;
    *COUNT(c, s) = n;
    return 0;
}

static void
free_flat(void *arr, size_t n)
{
    free(arr);
}

static int
hostport_item(const struct cfg_setting *s, const char *item, void *slot, struct cfg_errs *e)
{
    return parse_one_hostport(s, item, "in", slot, e);
}

static int
set_hostport_list(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    return set_list(c, s, v, e, sizeof(struct hostport), hostport_item, free_flat);
}

static int
cidr_item(const struct cfg_setting *s, const char *item, void *slot, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    if (cidr_parse(item, slot) == 0)
        return 0;
    cfg_error(e, "bad CIDR \"%s\" in %s", cfg_shown(item, t, sizeof(t)), s->name);
    return -1;
}

static int
set_cidr_list(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    return set_list(c, s, v, e, sizeof(struct cidr), cidr_item, free_flat);
}

/* Lowercased copy of a domain without its trailing dot, or NULL if bad. */
static char *
domain_dup(const char *d, size_t len, bool utf8)
{
    char *r;
    if (!str_is_domain(d, len, utf8))
        return NULL;
    if (d[len - 1] == '.')
        len--;
    r = xstrndup(d, len);
    str_lower(r);
    return r;
}

static void
free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void
free_strv_list(void *arr, size_t n)
{
    free_strv(arr, n);
}

static int
domain_item(const struct cfg_setting *s, const char *item, void *slot, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    /* A leading dot means "its subdomains" (".example.com" matches
     * "a.example.com", not "example.com"): kept on the stored entry, which
     * the relay policy reads that way. Recipient domains may be
     * internationalized (RFC 6531). */
    size_t dot = item[0] == '.' ? 1 : 0;
    char *d = domain_dup(item + dot, strlen(item) - dot, true);
    if (d != NULL && dot) {
        char *sub = xmalloc(strlen(d) + 2);
        sub[0] = '.';
        memcpy(sub + 1, d, strlen(d) + 1);
        free(d);
        d = sub;
    }
    *(char **)slot = d;
    if (d != NULL)
        return 0;
    cfg_error(e, "bad domain \"%s\" in %s", cfg_shown(item, t, sizeof(t)), s->name);
    return -1;
}

static int
set_domain_list(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    return set_list(c, s, v, e, sizeof(char *), domain_item, free_strv_list);
}

/* ---- dkim_sign: domain:selector:keyfile ---- */

static void
dkim_entry_fini(struct dkim_entry *d)
{
    FREE_NULL(&d->domain);
    FREE_NULL(&d->selector);
    FREE_NULL(&d->keyfile);
}

static int
parse_dkim_entry(
    const struct cfg_setting *s, const char *item, struct dkim_entry *d, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    const char *c1 = strchr(item, ':');
    const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (c2 == NULL || c2[1] == '\0') {
        cfg_error(e, "bad %s entry \"%s\" (use domain:selector:keyfile)", s->name,
            cfg_shown(item, t, sizeof(t)));
        return -1;
    }
    d->domain = c1 > item ? domain_dup(item, (size_t)(c1 - item), false) : NULL;
    /* A selector is a sequence of labels (RFC 6376 §3.1). */
    if (c2 > c1 + 1 && str_is_domain(c1 + 1, (size_t)(c2 - c1 - 1), false) && c2[-1] != '.')
        d->selector = xstrndup(c1 + 1, (size_t)(c2 - c1 - 1));
    if (d->domain == NULL || d->selector == NULL) {
        cfg_error(e, "bad %s in %s entry \"%s\"", d->domain ? "selector" : "domain", s->name,
            cfg_shown(item, t, sizeof(t)));
        dkim_entry_fini(d);
        return -1;
    }
    if (strlen(c2 + 1) >= PATH_MAX) {
        cfg_error(e, "key file path too long in %s", s->name);
        dkim_entry_fini(d);
        return -1;
    }
    d->keyfile = xstrdup(c2 + 1);
    return 0;
}

static void
free_dkim(struct dkim_entry *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dkim_entry_fini(&v[i]);
    free(v);
}

static void
free_dkim_list(void *arr, size_t n)
{
    free_dkim(arr, n);
}

static int
dkim_item(const struct cfg_setting *s, const char *item, void *slot, struct cfg_errs *e)
{
    return parse_dkim_entry(s, item, slot, e);
}

static int
set_dkim(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    return set_list(c, s, v, e, sizeof(struct dkim_entry), dkim_item, free_dkim_list);
}

/* ---- routes: MATCH=HOP[,HOP...] ---- */

/* One hop: "[host]:port" / "[host]" (direct) or "host:port" / "host" (MX
 * lookup of host), each with an optional "smtps://" prefix (implicit TLS,
 * port 465 by default). Port 0 means delivery_port. */
static int
parse_route_hop(const char *item, size_t len, struct route_hop *hop)
{
    char tmp[CONFIG_HOST_MAX + 16];
    const char *colon;
    uint64_t port = 0;
    bool smtps = strip_smtps(&item, &len);
    if (len == 0 || len >= sizeof(tmp))
        return -1;
    memcpy(tmp, item, len);
    tmp[len] = '\0';
    hop->mx = tmp[0] != '[';
    if (!hop->mx) {
        char *close = strchr(tmp, ']');
        if (close == NULL || close == tmp + 1)
            return -1;
        colon = close[1] == ':' ? close + 1 : NULL;
        if (close[1] != '\0' && colon == NULL)
            return -1;
        *close = '\0';
        snprintf(hop->host, sizeof(hop->host), "%s", tmp + 1);
    } else {
        colon = strrchr(tmp, ':');
        if (colon && strchr(tmp, ':') != colon)
            return -1; /* a bare IPv6 literal: it needs [brackets] */
        snprintf(
            hop->host, sizeof(hop->host), "%.*s", (int)(colon ? (size_t)(colon - tmp) : len), tmp);
    }
    if (colon && parse_u64(colon + 1, strlen(colon + 1), 65535, &port) < 0)
        return -1;
    if (colon && port == 0)
        return -1;
    if (smtps && port == 0)
        port = SMTPS_PORT;
    hop->port = (uint16_t)port;
    hop->implicit_tls = smtps || port == SMTPS_PORT;
    str_lower(hop->host);
    if (!hop->mx) {
        unsigned char a[16];
        if (inet_pton(AF_INET, hop->host, a) == 1 || inet_pton(AF_INET6, hop->host, a) == 1)
            return 0;
    }
    return str_is_domain(hop->host, strlen(hop->host), false) ? 0 : -1;
}

static int
parse_route(const char *item, struct route *r)
{
    const char *eq = strchr(item, '=');
    const char *p, *end;
    size_t mlen;
    memset(r, 0, sizeof(*r));
    if (eq == NULL || eq == item)
        return -1;
    mlen = (size_t)(eq - item);
    p = item[0] == '.' ? item + 1 : item;
    if (!str_is_domain(p, (size_t)(eq - p), true))
        return -1;
    r->match = xstrndup(item, mlen);
    str_lower(r->match);
    if (mlen > 1 && r->match[mlen - 1] == '.')
        r->match[mlen - 1] = '\0';
    for (p = eq + 1; *p != '\0'; p = *end ? end + 1 : end) {
        end = strchr(p, ',');
        if (end == NULL)
            end = p + strlen(p);
        if (r->n_hops == ROUTE_HOPS_MAX ||
            parse_route_hop(p, (size_t)(end - p), &r->hops[r->n_hops]) < 0)
            return -1;
        r->n_hops++;
    }
    return r->n_hops > 0 ? 0 : -1;
}

static void
free_routes(struct route *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].match);
    free(v);
}

static void
free_routes_list(void *arr, size_t n)
{
    free_routes(arr, n);
}

static int
route_item(const struct cfg_setting *s, const char *item, void *slot, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    if (parse_route(item, slot) == 0)
        return 0;
    cfg_error(e,
        "bad route \"%s\" in %s (use DOMAIN=HOP[,HOP...], HOP as [host]:port or host[:port])",
        cfg_shown(item, t, sizeof(t)), s->name);
    return -1;
}

static int
set_routes(struct config *c, const struct cfg_setting *s, const char *v, struct cfg_errs *e)
{
    return set_list(c, s, v, e, sizeof(struct route), route_item, free_routes_list);
}

/* ---- dispatch by type ---- */

typedef int set_fn(struct config *, const struct cfg_setting *, const char *, struct cfg_errs *);

static set_fn *const setters[] = {
    [CFG_STRING] = set_string,
    [CFG_PATH] = set_string,
    [CFG_HOSTPORT] = set_hostport,
    [CFG_HOSTPORT_LIST] = set_hostport_list,
    [CFG_CIDR_LIST] = set_cidr_list,
    [CFG_DOMAIN_LIST] = set_domain_list,
    [CFG_SIZE] = set_size,
    [CFG_DURATION] = set_duration,
    [CFG_U32] = set_u32,
    [CFG_PORT] = set_port,
    [CFG_ENUM] = set_enum,
    [CFG_DKIM] = set_dkim,
    [CFG_ROUTES] = set_routes,
};

int
cfg_set(struct config *c, const struct cfg_setting *s, const char *value, struct cfg_errs *e)
{
    TERN_ASSERT((size_t)s->type < TERN_ARRAY_LEN(setters) && setters[s->type] != NULL);
    if (strlen(value) > CONFIG_LINE_MAX) {
        cfg_error(e, "value of %s is too long (more than %d bytes)", s->name, CONFIG_LINE_MAX);
        return -1;
    }
    if (*value == '\0' && (s->flags & CFG_F_NONEMPTY)) {
        cfg_error(e, "%s must not be empty", s->name);
        return -1;
    }
    return setters[s->type](c, s, value, e);
}

void
cfg_clear(struct config *c, const struct cfg_setting *s)
{
    switch (s->type) {
    case CFG_STRING:
    case CFG_PATH:
        FREE_NULL(FIELD(c, s, char *));
        return;
    case CFG_HOSTPORT_LIST:
    case CFG_CIDR_LIST:
        FREE_NULL(FIELD(c, s, void *));
        break;
    case CFG_DOMAIN_LIST:
        free_strv(*FIELD(c, s, char **), *COUNT(c, s));
        *FIELD(c, s, char **) = NULL;
        break;
    case CFG_DKIM:
        free_dkim(*FIELD(c, s, struct dkim_entry *), *COUNT(c, s));
        *FIELD(c, s, struct dkim_entry *) = NULL;
        break;
    case CFG_ROUTES:
        free_routes(*FIELD(c, s, struct route *), *COUNT(c, s));
        *FIELD(c, s, struct route *) = NULL;
        break;
    default:
        return; /* scalars own nothing */
    }
    *COUNT(c, s) = 0;
}

/* ---- check_files ---- */

int
cfg_check_file(const char *what, const char *path, bool secret, struct cfg_errs *e)
{
    char t[SHOWN_MAX];
    struct stat st;
    struct fs_private rule = { S_IFREG, 0, false, false };
    struct buf why = BUF_INIT;
    enum fs_trust trust;
    /* O_NONBLOCK: a FIFO named by mistake must not hang --check. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        cfg_error(
            e, "%s \"%s\": cannot read: %s", what, cfg_shown(path, t, sizeof(t)), strerror(errno));
        return -1;
    }
    int rc = fstat(fd, &st);
    int err = errno;
    close(fd); /* read-only descriptor: nothing to lose on close */
    if (rc < 0) {
        cfg_error(
            e, "%s \"%s\": cannot read: %s", what, cfg_shown(path, t, sizeof(t)), strerror(err));
        return -1;
    }
    rule.deny = secret ? S_IRGRP | S_IROTH : 0;
    trust = fs_check_private(&st, &rule, &why);
    if (trust != FS_TRUSTED)
        cfg_error(e, "%s \"%s\": %s%s", what, cfg_shown(path, t, sizeof(t)), why.data,
            trust == FS_BAD_MODE ? " (chmod 600 it)" : "");
    buf_fini(&why);
    return trust == FS_TRUSTED ? 0 : -1;
}

/*
 * Private to src/delivery: the delivery object (destinations, limits, the
 * idle-connection index, the reaper), the destination plan (plan.c: MX and
 * address resolution into an ordered list of targets), the SMTP client
 * connection (client.c) and the pure reply and EHLO parsers (reply.c).
 * delivery.c owns destinations and hands jobs out; client.c owns one TCP
 * connection and at most one transaction at a time. A plan is shared by
 * reference between its destination and the connections it is setting up.
 * A closed connection moves to the dead list and is freed by the reaper
 * event, never inside one of its own callbacks.
 */
#ifndef TERN_DELIVERY_INT_H
#define TERN_DELIVERY_INT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "delivery/delivery.h"
#include "delivery/mime7.h"
#include "dkim/dkim.h"
#include "dns/dns.h"
#include "mtasts/mtasts.h"
#include "tls/tls.h"
#include "tlsrpt/tlsrpt.h"
#include "util/buf.h"
#include "util/map.h"
#include "util/status.h"
#include "util/workq.h"

struct bufferevent;
struct event;

#define DELIV_REPLY_LINE_MAX  4096                    /* one reply line, without CRLF */
#define DELIV_REPLY_LINES_MAX 100                     /* lines of one multi-line reply */
#define DELIV_CHUNK           (64 * 1024)             /* one pread of the message */
#define DELIV_WRITE_HIGH      (256 * 1024)            /* stop refilling above this */
#define DELIV_WRITE_LOW       (64 * 1024)             /* refill when output drains to this */
#define DELIV_CMD_MAX         4096                    /* MAIL/RCPT with parameters */
#define DELIV_RELAY_MAX       (CONFIG_HOST_MAX + 200) /* with the " tls=..." summary */

/* Fallbacks for a configuration that leaves a field zero (tests build one by
 * hand). */
#define DELIV_DEF_CONCURRENCY 4
#define DELIV_DEF_MAX_MSGS    100
#define DELIV_DEF_CONNECT_MS  (30 * 1000)
#define DELIV_DEF_TIMEOUT_MS  (300 * 1000)
#define DELIV_DEF_IDLE_MS     (5 * 1000)

/* ---- reply.c: pure parsers ---- */

/* A reply being assembled line by line (RFC 5321 §4.2.1). */
struct reply_acc {
    size_t nlines;         /* lines seen so far; 0 = no reply in progress */
    size_t text_len;       /* bytes used in st.text */
    struct tern_status st; /* code, enhanced code and joined, cleaned text */
};

enum reply_feed { REPLY_MORE, REPLY_DONE, REPLY_BAD };

/* Feed one line (without CRLF). REPLY_DONE: a->st holds the complete reply
 * and the next call starts a new one. REPLY_BAD: malformed code, a code that
 * changes between lines, too many lines, or a bad separator. *text and
 * *text_len get the line's text after "NNN-" (borrowed from line), for EHLO keywords. */
enum reply_feed reply_feed_line(
    struct reply_acc *a, const char *line, size_t len, const char **text, size_t *text_len);
void reply_reset(struct reply_acc *a);

/* Length of a leading RFC 3463 enhanced code in s whose class matches cls
 * (2, 4 or 5) and that is followed by a space or the end, else 0. */
size_t reply_esc_len(const char *s, size_t len, int cls);

/* Service extensions of the peer (RFC 5321 §4.1.1.1 EHLO response). */
struct ehlo_ext {
    bool pipelining; /* RFC 2920 */
    bool size;       /* RFC 1870; size_max 0 = no fixed limit */
    uint64_t size_max;
    bool eightbitmime; /* RFC 6152 */
    bool binarymime;   /* RFC 3030 */
    bool smtputf8;     /* RFC 6531 */
    bool dsn;          /* RFC 3461 */
    bool chunking;     /* RFC 3030 */
    bool enhanced;     /* RFC 2034 */
    bool starttls;     /* RFC 3207 */
    bool auth_plain;   /* RFC 4954 AUTH with PLAIN (RFC 4616) */
    bool auth_login;   /* ... with LOGIN */
};

/* Parse one EHLO response line's text ("SIZE 1000") into e. Unknown
 * keywords are ignored; a SIZE whose value is not a number keeps size off. */
void ehlo_parse_line(struct ehlo_ext *e, const char *text, size_t len);

/* ---- secure.c: outbound TLS policy and smarthost AUTH (pure) ---- */

#define DELIV_AUTH_USER_MAX 255
#define DELIV_AUTH_PASS_MAX 255
#define DELIV_AUTH_LINE_MAX 1024 /* one line of smarthost_auth_file */
#define DELIV_AUTH_FILE_MAX (64 * 1024)
#define DELIV_AUTH_B64_MAX  ((DELIV_AUTH_USER_MAX + DELIV_AUTH_PASS_MAX + 2 + 2) / 3 * 4 + 1)
#define DELIV_NOTLS_MS      (60 * 60 * 1000) /* plaintext after a failed opportunistic handshake */
#define DELIV_NOTLS_MAX     4096             /* addresses remembered */

enum tls_step {
    TLSS_PLAIN,    /* go on without TLS */
    TLSS_STARTTLS, /* send STARTTLS */
    TLSS_DEFER,    /* TLS required but not offered: this target fails */
};

/* Before STARTTLS: mode (smarthost_tls or mx_tls), whether the peer offered
 * STARTTLS, and whether its address is in the plaintext-fallback cache. */
enum tls_step deliv_tls_step(enum tls_mode mode, bool offered, bool fallback_cached);
/* After a completed handshake: may the session go on? (required needs a
 * verified chain and host name.) */
bool deliv_tls_accept(enum tls_mode mode, bool verified);
/* After a failed handshake: true = remember the address and reconnect to it
 * in plaintext (opportunistic STARTTLS only); false = the target failed. */
bool deliv_tls_fallback(enum tls_mode mode, bool implicit);

struct deliv_creds {
    char user[DELIV_AUTH_USER_MAX + 1];
    char pass[DELIV_AUTH_PASS_MAX + 1];
};

enum auth_mech {
    AUTHM_NONE,    /* no credentials for this hop: no AUTH */
    AUTHM_PLAIN,   /* RFC 4616, with an initial response (RFC 4954 §4) */
    AUTHM_LOGIN,   /* user name and password in two 334 rounds */
    AUTHM_REFUSE,  /* credentials, but no TLS and smarthost_auth_plaintext = no: defer */
    AUTHM_MISSING, /* credentials, but the server offers neither PLAIN nor LOGIN: defer */
};

/* PLAIN when offered, else LOGIN; never over plaintext unless allowed;
 * never silently without AUTH when this hop has credentials. */
enum auth_mech deliv_auth_choose(
    bool have_creds, const struct ehlo_ext *e, bool tls, bool allow_plaintext);
/* Base64 (RFC 4648 §4, padded) of in into out, NUL terminated; -1 when cap
 * is too small. */
int deliv_b64(const unsigned char *in, size_t n, char *out, size_t cap);
/* The PLAIN initial response: base64 of NUL user NUL password. */
int deliv_auth_plain_resp(const struct deliv_creds *c, char *out, size_t cap);
void deliv_creds_clear(struct deliv_creds *c); /* explicit_bzero */
/* Credentials for the next hop host from the text of smarthost_auth_file:
 * a "host user:password" line for host (case-insensitive) wins; a bare
 * "user:password" line is used when allow_default (the smarthost). Blank
 * lines and # comments are skipped. 0 found, 1 none, -1 malformed (err
 * names the line, never its text). */
int deliv_creds_parse(const char *text, size_t len, const char *host, bool allow_default,
    struct deliv_creds *out, char *err, size_t errcap);
/* Read path (a regular file, at most DELIV_AUTH_FILE_MAX bytes, not
 * readable by group or others) and deliv_creds_parse it. */
int deliv_creds_load(const char *path, const char *host, bool allow_default,
    struct deliv_creds *out, char *err, size_t errcap);

/* ---- plan.c: where a destination's connections go ---- */

#define DELIV_TARGETS_MAX 64          /* addresses tried per destination */
#define DELIV_HOSTS_MAX   64          /* host names (MX hosts, hops) per plan */
#define DELIV_PLAN_MS     (60 * 1000) /* a plan is rebuilt after this */

struct plan_host {
    char name[DNS_NAME_MAX + 1];   /* MX host, implicit MX domain or hop host */
    char domain[DNS_NAME_MAX + 1]; /* the next-hop domain (RFC 7672 §3.2.2), "" for a hop host */
    enum tls_policy policy;        /* how TLS to it is authenticated */
    enum dane_state dane;
    bool mx_secure, addr_secure; /* the MX and address answers were validated */
    struct dns_rr_result *tlsa;  /* owned: its validated TLSA records, or NULL */
    uint16_t hop;                /* index into delivery_dest.hops */
    uint16_t pref;               /* MX preference; 0 for a direct hop */
    uint16_t t0, nt;             /* its targets: t[t0 .. t0+nt) */
};

struct plan_target {
    struct sockaddr_storage addr; /* port set */
    socklen_t len;
    uint16_t host; /* index into hosts */
    bool failed;   /* a connection found it down or refusing */
};

/* The MTA-STS policy of an "mx:" destination's domain, as the plan was
 * built (RFC 8461): with enforce, the plan holds only MX hosts matching
 * the patterns and its connections require verified TLS. */
struct plan_sts {
    char domain[DNS_NAME_MAX + 1];
    struct mtasts_policy policy;
    char *text; /* owned: the policy file, for TLS-RPT */
    size_t len;
};

/* Targets in the order RFC 5321 §5.1 wants them: hop by hop, MX hosts by
 * preference, each host's addresses by the ip_family preference. */
struct deliv_plan {
    int refs;
    int64_t built_ms;        /* tern_mono_ms() */
    int64_t dns_ms;          /* how long resolving it took; charged to the first connection */
    bool dns_charged;        /* ... which has taken it */
    struct plan_host *hosts; /* owned */
    size_t n_hosts;
    struct plan_target *t; /* owned */
    size_t n_t;
    struct plan_sts *sts; /* owned; NULL: no MTA-STS policy (or mode none) */
};

/* The plan's MTA-STS mode (MTASTS_NONE without a policy). */
enum mtasts_mode plan_sts_mode(const struct deliv_plan *p);

struct deliv_dest;
struct plan_build;

/* Resolution finished: plan (owned by the callee) with at least one target,
 * or NULL and st says why, perm when every hop failed permanently (null MX,
 * NXDOMAIN, implicit MX without address). Runs from the loop. */
typedef void (*plan_done_cb)(struct delivery *d, struct deliv_dest *dest, struct deliv_plan *plan,
    const struct tern_status *st, bool perm);

/* Resolve dest's hops with d->dns (NULL: literals only). Never calls cb
 * inside this call. The build is owned by the caller until cb starts. */
struct plan_build *plan_build_start(
    struct delivery *d, struct deliv_dest *dest, enum ip_family fam, plan_done_cb cb);
void plan_build_cancel(struct plan_build *b); /* cb never runs; NULL is fine */
struct deliv_plan *plan_ref(struct deliv_plan *p);
void plan_unref(struct deliv_plan *p); /* NULL is fine */
/* Any target not yet marked failed? */
bool plan_usable(const struct deliv_plan *p);
/* Does any host of p need authenticated TLS (DANE, MTA-STS)? */
bool plan_authenticated(const struct deliv_plan *p);
/* The name of the first authenticated policy of p's hosts, else
 * "opportunistic". */
const char *plan_policy_name(const struct deliv_plan *p);
/* The order in which one connection tries p's targets: plan order, with the
 * hosts of one hop and preference shuffled by rnd (RFC 5321 §5.1), so that
 * connections spread over equal MX hosts. order has room for p->n_t;
 * returns p->n_t. */
size_t plan_order(const struct deliv_plan *p, uint16_t *order, uint32_t (*rnd)(void *), void *arg);
/* Index of the first target not marked failed and the end of its
 * preference group (same hop and preference); false when none. */
bool plan_first_group(const struct deliv_plan *p, size_t *start, size_t *end);

/* ---- delivery.c ---- */

struct deliv_conn;
struct deliv_convw;
struct deliv_linger;
struct idle_bucket;

/* Delivery's state of one destination, hung off the owner's entry
 * (delivery_dest.dl); how many jobs are ready is read from that entry. */
struct deliv_dest {
    TAILQ_ENTRY(deliv_dest) link;
    TAILQ_ENTRY(deliv_dest) wait_link; /* in d->waiting when waiting */
    struct delivery_dest *d;           /* the owner's entry: key, hops, n_ready */
    struct delivery *owner;
    TAILQ_HEAD(, deliv_conn) conns; /* open connections (not retired) */
    size_t n_conns;
    uint32_t gen;             /* bumped when the hops change (reload): older connections QUIT */
    bool waiting;             /* for a global connection slot (max_connections) */
    struct deliv_plan *plan;  /* reference; NULL until resolved */
    struct plan_build *build; /* resolution in progress */
    int64_t tokens;           /* delivery_rate bucket, in 1/1000 messages */
    int64_t tokens_ms;        /* last refill; 0 = bucket not started */
    struct event *rate_ev;    /* wakes the destination when a token is due */
};

struct delivery {
    struct event_base *base;
    struct spool *sp;
    struct dns *dns; /* borrowed */
    struct delivery_callbacks cb;
    struct config *cfg; /* reference; NULL until delivery_set_config */
    TAILQ_HEAD(, deliv_dest) dests;
    TAILQ_HEAD(, deliv_dest) waiting; /* FIFO of destinations waiting for a slot */
    TAILQ_HEAD(, deliv_conn) idle;    /* idle connections, oldest first */
    struct map *idle_by_addr;         /* "addr:port" -> struct idle_bucket */
    TAILQ_HEAD(, deliv_conn) dead;    /* retired, waiting for the reaper */
    struct event *reap;
    uint64_t next_conn_id;
    size_t n_active; /* open connections, all destinations */
    uint64_t rnd;
    bool shutting;       /* delivery_free is running */
    struct tls_ctx *tls; /* outbound client context of cfg, or NULL (tls_err says why) */
    char tls_err[256];
    struct map *notls; /* "addr:port" -> int64_t * (mono ms until which no STARTTLS) */
    TAILQ_HEAD(, deliv_linger) lingers; /* closed TLS connections flushing (linger.c) */
    struct deliv_convw *convw;          /* the conversion worker (convert.c), once started */
    struct map *convs;     /* conn id -> struct deliv_conn * waiting for a conversion */
    struct mtasts *mtasts; /* borrowed, or NULL: MTA-STS not used */
    struct tlsrpt *tlsrpt; /* borrowed, or NULL: TLS sessions not recorded */
};

#define DELIV_ADDR_KEY_MAX (INET6_ADDRSTRLEN + 16)

/* "addr:port" or "[v6addr]:port"; addr_only (may be NULL) gets the bare address. */
void deliv_fmt_addr(
    const struct sockaddr_storage *ss, char *out, size_t cap, char *addr_only, size_t acap);
uint32_t deliv_rnd(void *d);
/* The TLS policy of a destination: mx_tls for "mx:" keys, smarthost_tls
 * for the smarthost and for routes. */
enum tls_mode deliv_tls_mode(const struct config *cfg, const char *dest_key);
/* Ask the scheduler for dest's next job. With rated, the delivery_rate
 * budget applies: false while it is exhausted, and the destination is
 * woken when a message may go again. */
bool deliv_take_job(
    struct delivery *d, struct deliv_dest *dest, struct delivery_job *job, bool rated);
/* Answer every due job of dest with st (for each recipient), no relay;
 * tls_policy (static or NULL) goes into each result. */
void deliv_dest_fail_jobs(struct delivery *d, struct deliv_dest *dest, const struct tern_status *st,
    enum deliv_class cls, const char *tls_policy);
/* Every target of plan used failed for a connection, which is already
 * retired (st: the last reason). Unless another connection may still take
 * jobs or a newer plan has untried targets, the due jobs get TEMP and the
 * plan is dropped, so the scheduler backs the whole destination off. */
void deliv_dest_down(struct delivery *d, struct deliv_dest *dest, const struct deliv_plan *used,
    const struct tern_status *st);
/* Open (or adopt) connections for dest while its limits and due count allow. */
void deliv_dest_fill(struct delivery *d, struct deliv_dest *dest);
/* Hand a closed connection to the reaper: unlinks it from dest. With refill
 * (the connection had a working session), a replacement is opened when dest
 * still has due work; a connection that failed its setup never refills, so
 * a dead destination is not retried in a loop. A freed slot goes to the
 * destinations waiting for one first. */
void deliv_conn_retire(
    struct delivery *d, struct deliv_conn *c, struct deliv_dest *dest, bool refill);
/* The idle-connection index (by peer address), for reuse across
 * destinations. Both calls are idempotent. Adding may at once hand c to a
 * destination waiting for a connection slot (client_adopt) or QUIT it. */
void deliv_idle_add(struct delivery *d, struct deliv_conn *c);
void deliv_idle_del(struct delivery *d, struct deliv_conn *c);
/* The plaintext-fallback cache of opportunistic TLS (RFC 7435 §6: fall back
 * rather than fail). notls_add remembers addr for DELIV_NOTLS_MS. */
void deliv_notls_add(struct delivery *d, const char *addr);
bool deliv_notls_has(struct delivery *d, const char *addr);

/* ---- txcmd.c: transaction command lines (pure) ---- */

#define DELIV_ADDR_SEND_MAX 512

/* Printable (no control characters) and at most max octets. */
bool deliv_addr_sendable(const char *a, size_t max);
/* "MAIL FROM:<...>" CRLF with the parameters e allows; size: the octets that
 * will be sent (for SIZE=). */
void deliv_put_mail(
    const struct ehlo_ext *e, const struct spool_env *env, uint64_t size, struct buf *b);
/* "RCPT TO:<...>" CRLF, with NOTIFY and ORCPT when e offers DSN. */
void deliv_put_rcpt(const struct ehlo_ext *e, const struct spool_rcpt *r, struct buf *b);

/* ---- linger.c: closing TLS connections ---- */

#define DELIV_LINGER_MS 2000 /* a closed TLS connection waits this long for the peer */

/* Free a connection's bufferevent. For a TLS one, with tls_shutdown (no fatal
 * TLS or socket error happened) a close_notify is queued first; whatever TLS
 * records are queued (close_notify, or the alert of a failed handshake) are
 * still written to the peer after bev is gone, then the socket is closed
 * once the peer closes its side or DELIV_LINGER_MS pass. Safe inside bev's
 * own callbacks. */
void deliv_bev_close(struct delivery *d, struct bufferevent *bev, bool tls_shutdown);
/* Drop every lingering socket at once (delivery_free). */
void deliv_linger_purge(struct delivery *d);

/* ---- convert.c: 7-bit conversion off the loop ---- */

enum conv_result {
    CONV_OK,   /* plan and converted size (and new prefix) ready */
    CONV_ASIS, /* nothing 8-bit to convert: send the message as stored */
    CONV_PERM, /* cannot be converted (why): bounce */
    CONV_TEMP, /* could not read it or shutting down (why): try later */
};

struct conv_link;

struct conv_job {
    struct workq_item w;        /* first: the worker's item (util/workq.h) */
    struct conv_link *link;     /* a reference: finds the engine when answered */
    uint64_t conn_id, job_id;   /* whose transaction */
    struct spool *sp;           /* borrowed: the spool the message is in */
    struct spool_env *env;      /* owned copy: what to read */
    bool resign;                /* it carries our DKIM signatures: replace them */
    bool lossy;                 /* a DSN: see mime7_lossy */
    struct dkim_signer *signer; /* owned or NULL: signs the converted form */
    /* results, read on the loop thread once the job is answered */
    enum conv_result result;
    char why[160];
    struct mime7_plan plan;
    uint64_t out_len;         /* octets of the converted form */
    int out_fd;               /* owned: an unnamed file with the converted form, stuffed */
    uint64_t out_stored;      /* its size */
    struct buf out_buf;       /* stuffed output not yet written */
    bool out_bol;             /* stuffing: the next byte starts a line */
    int out_err;              /* the file could not be written */
    struct buf prefix;        /* the new DKIM-Signature fields (resign) */
    struct dkim_outcome dres; /* how the signing went */
};

/* Convert env's message (read from the spool on the worker) for connection
 * c's transaction job_id, into an unnamed file the client then sends.
 * client_conv_done(c, job) runs later on the loop thread unless c closes
 * first (deliv_conv_forget). */
void deliv_conv_submit(
    struct delivery *d, struct deliv_conn *c, uint64_t job_id, const struct spool_env *env);
void deliv_conv_forget(struct delivery *d, struct deliv_conn *c);
/* Stop the worker (a running job ends at its next chunk); answers still
 * on their way find no engine and are dropped. */
void deliv_conv_stop(struct delivery *d);
void conv_job_free(struct conv_job *j);

/* ---- client.c ---- */

enum conn_state {
    CS_START,    /* created; starts from the wake event */
    CS_CONNECT,  /* TCP connect in progress */
    CS_GREETING, /* waiting for the 220 */
    CS_EHLO,
    CS_HELO,
    CS_STARTTLS, /* waiting for the 220 to STARTTLS */
    CS_TLS,      /* TLS handshake (after STARTTLS, or first with implicit TLS) */
    CS_AUTH,     /* AUTH exchange with the smarthost */
    CS_IDLE,     /* no job: waits idle_conn_timeout for one */
    CS_CONVERT,  /* a job waits for its 7-bit conversion (convert.c) */
    CS_TX,       /* MAIL, RCPT..., DATA sent (all at once with PIPELINING) */
    CS_BODY,     /* streaming the message */
    CS_DOT,      /* waiting for the reply to the final dot */
    CS_RSET,
    CS_QUIT,
    CS_DEAD, /* retired */
    CS_N
};
/* States of the session setup: a failure there moves on to the next target. */
#define CS_SETUP_FIRST CS_CONNECT
#define CS_SETUP_LAST  CS_AUTH

struct client_tx;

struct deliv_conn {
    TAILQ_ENTRY(deliv_conn) dest_link; /* in dest->conns, then in d->dead */
    TAILQ_ENTRY(deliv_conn) idle_link; /* in d->idle while in_idle */
    TAILQ_ENTRY(deliv_conn) addr_link; /* in its idle bucket while in_idle */
    struct idle_bucket *bucket;
    bool in_idle;
    bool woken; /* client_wake queued a job pull */
    struct delivery *d;
    struct deliv_dest *dest; /* NULL once retired */
    struct config *cfg;      /* reference: the snapshot this connection started with */
    uint64_t id;
    uint32_t gen; /* dest->gen it works for */
    enum conn_state state;
    struct bufferevent *bev;
    struct event *timer;               /* connect, reply and idle timeouts */
    struct event *wake;                /* deferred start and job pulls */
    struct deliv_plan *plan;           /* reference while setting up; NULL once ready */
    uint16_t order[DELIV_TARGETS_MAX]; /* targets in this connection's order */
    size_t n_order, cur;
    char peer[DELIV_ADDR_KEY_MAX]; /* "addr:port" being tried or connected */
    char relay[DELIV_RELAY_MAX];   /* "host[addr]:port" once connected */
    bool reached;                  /* TCP connected to the current target */
    bool ready;                    /* greeting and EHLO/HELO done */
    struct ehlo_ext ext, ext_new;  /* in force / being parsed */
    struct reply_acc reply;
    struct tern_status setup_err; /* why the last target failed */
    bool setup_err_reached;       /* ... and that target had accepted the TCP connection */
    uint32_t n_msgs, max_msgs;
    int64_t connect_ms, reply_ms, idle_ms;
    struct client_tx *tx; /* the job in flight, or NULL */
    /* TLS and AUTH */
    struct tls_ctx *tls_ctx; /* reference, or NULL when no client context could be made */
    enum tls_mode tls_mode;  /* smarthost_tls or mx_tls; required under DANE or MTA-STS */
    enum tls_mode dest_mode; /* smarthost_tls or mx_tls for this destination */
    enum tls_policy policy;  /* of the current target's host */
    const char *verified_by; /* "dane-ee", "dane-ta", "pkix" or "none" once TLS is up */
    bool implicit_tls;       /* the current target's hop is smtps:// */
    bool tls_active;         /* handshake done on the current connection */
    bool tls_plain_retry;    /* reconnecting in clear after a failed opportunistic handshake */
    bool conn_error;         /* the socket or TLS layer failed: no close_notify */
    struct tls_info tls;     /* when tls_active */
    enum auth_mech auth_mech;
    bool authed;               /* AUTH succeeded on this connection */
    int auth_step;             /* LOGIN: 0 user name asked, 1 password asked */
    struct deliv_creds *creds; /* owned while AUTH runs; cleared and freed after */
    /* Times for the first job's delays= (tern_mono_ms()): setup began (the
     * plan's DNS time before it, when this connection was its first), the
     * handshake began and what handshakes took; once ready, the setup and
     * TLS durations wait for the first transaction. */
    int64_t t_setup, t_tls, dns_ms, tls_ms, setup_ms;
    bool setup_pending;
};

/* A new connection for dest under cfg (a reference is taken) that tries the
 * targets of dest->plan. It links itself into dest and starts from the
 * loop, never inside this call. */
struct deliv_conn *client_new(struct delivery *d, struct deliv_dest *dest, struct config *cfg);
/* Still being set up or idle: will ask for a job soon. */
bool client_not_busy(const struct deliv_conn *c);
/* An idle connection asks for a job again (from the loop). False if c is not
 * idle. */
bool client_wake(struct deliv_conn *c);
/* An idle connection of another destination (same peer address) moves to
 * dest and asks it for a job. */
void client_adopt(struct deliv_conn *c, struct deliv_dest *dest);
/* An idle connection QUITs now (its slot is wanted elsewhere). */
void client_quit_idle(struct deliv_conn *c);
/* Shutdown: answer the job in flight with 421 4.3.2 and close at once. */
void client_shutdown(struct deliv_conn *c);
/* Free a retired connection (the reaper only). */
void client_free(struct deliv_conn *c);
/* The conversion of c's job is done: go on with the transaction (the
 * job's results may be taken; the caller frees it). */
void client_conv_done(struct deliv_conn *c, struct conv_job *j);

#endif

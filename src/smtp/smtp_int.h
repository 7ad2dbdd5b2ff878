/*
 * SMTP server internals shared by server.c (listeners, admission, security
 * objects), workers.c (the receive loops and their threads) and session*.c
 * (the per-connection state machine).
 *
 * Threads: a session, its listener and everything in its struct smtp_loop
 * belong to the loop's thread alone. The struct smtp_server is shared: what
 * sessions touch there is either immutable after start, atomic, or guarded
 * by one of its two mutexes (admission counts; AUTH users and throttle).
 */
#ifndef TERN_SMTP_INT_H
#define TERN_SMTP_INT_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "auth.h"
#include "proto/data.h"
#include "proto/parse.h"
#include "smtp.h"
#include "spool/spool.h"
#include "tls/tls.h"
#include "util/buf.h"
#include "util/map.h"

/* Replies waiting in tern for a client that does not read them: at most
 * this many bytes (both layers under STARTTLS) and this many replies since
 * the output was last empty. Past either bound the session stops reading
 * and answering until the client has taken its replies (as OpenSMTPD pauses
 * the read side), so pipelining without reading cannot grow memory. */
#define SMTP_OUT_BACKLOG_MAX    (64 * 1024)
#define SMTP_PIPELINE_DEPTH_MAX 1000

struct bufferevent;
struct dkim_signer;
struct smtp_checks;
struct dns;
struct dns_query;
struct loopq;
struct smtp_milter_run;
struct evbuffer;
struct evconnlistener;
struct event;

enum smtp_state {
    SMTP_ST_CONNECTED, /* before HELO/EHLO */
    SMTP_ST_READY,     /* after HELO/EHLO, no transaction */
    SMTP_ST_MAIL,      /* MAIL accepted */
    SMTP_ST_RCPT,      /* at least one RCPT accepted */
    SMTP_ST_DATA,      /* reading DATA bytes */
    SMTP_ST_BDAT,      /* reading a BDAT chunk */
    SMTP_ST_FILTER,    /* the message is complete: checks and filters look at it */
    SMTP_ST_COMMIT,    /* waiting for the spool to make the message durable */
    SMTP_ST_CLOSING,   /* flushing the last reply */
    SMTP_ST_HANDSHAKE, /* TLS handshake (STARTTLS or smtps) in progress */
    SMTP_ST_AUTH,      /* an AUTH exchange (RFC 4954) in progress */
    /* A BDAT chunk of the transaction is in: only more BDAT (or RSET) may
     * follow, RCPT and DATA get 503 (RFC 3030 §3). */
    SMTP_ST_CHUNKING,
};

/* What a listener is for (CONTRACT.md): relay/MX, submission with STARTTLS
 * and AUTH required, or submission over implicit TLS (RFC 8314). */
enum smtp_role { SMTP_ROLE_RELAY, SMTP_ROLE_SUBMISSION, SMTP_ROLE_SMTPS };

enum smtp_auth_step {
    SMTP_AUTH_NONE,
    SMTP_AUTH_PLAIN,      /* waiting for the PLAIN response line */
    SMTP_AUTH_LOGIN_USER, /* waiting for the LOGIN user name */
    SMTP_AUTH_LOGIN_PASS, /* waiting for the LOGIN password */
    SMTP_AUTH_CHECK,      /* the crypt worker is checking; input paused */
    SMTP_AUTH_DELAY,      /* a failure is being answered after auth_failure_delay */
};

/* What the stages after the data decided, least to most severe. */
enum smtp_verdict {
    SMTP_VERDICT_ACCEPT,  /* queue it */
    SMTP_VERDICT_HOLD,    /* queue it held (quarantine): visible, not delivered */
    SMTP_VERDICT_DISCARD, /* answer 250 and drop it */
    SMTP_VERDICT_REFUSE,  /* answer verdict_st (4xx or 5xx), keep nothing */
};

struct smtp_tx {
    struct spool_env *env;  /* owned: sender, params, recipients */
    struct spool_writer *w; /* owned once DATA/BDAT started */
    struct smtp_data_reader rd;
    uint64_t max_size; /* max_message_size when the data started */
    bool too_big;
    struct hdr_scan hscan; /* has the header section ended? */
    /* DKIM: a signer for the spool writer's finisher, which reads the
     * message at commit but tern's own Received field (dkim_skip bytes at
     * the start of the content). */
    struct dkim_signer *dkim; /* owned or NULL */
    size_t dkim_skip;
    /* inbound_checks (checks.c): owned or NULL when the client is not checked */
    struct smtp_checks *checks;
    bool hdr_too_big; /* the header section held for the checks passed its bound */
    /* BDAT */
    uint64_t chunk_left; /* bytes of the current chunk still to read */
    bool chunk_last;
    bool bdat_failed; /* a reply has been decided; swallow the chunk */
    struct tern_status bdat_st;
    /* Between the end of the data and the commit, the stages that look at
     * the complete message run in turn (session_data.c, tx_stages) and may
     * decide its fate; the most severe decision wins. */
    size_t stage;                  /* the next stage to start */
    enum smtp_verdict verdict;     /* SMTP_VERDICT_ACCEPT unless a stage decided */
    struct tern_status verdict_st; /* the reply when refused */
    char *verdict_by;              /* owned or NULL: who decided, for the log */
    /* milters (session_milter.c): the message as stored (the spool
     * writer's tee), unstuffed, while milters are configured (owned or
     * NULL), and the session's filters once they take part in the
     * transaction (borrowed or NULL). */
    struct buf *mcopy;
    struct smtp_milter_run *milter;
};

struct smtp_listener {
    struct smtp_loop *lp;
    enum smtp_role role;
    struct hostport hp;
    struct evconnlistener *lis;
};

/* Listening sockets for the loops, n addresses each: fds[loop * n + i]
 * (-1 once the loop has taken it). With several loops each address has an
 * SO_REUSEPORT group of one socket per loop (bound by ternd's parent and
 * passed, or bound here without it), and the kernel spreads new
 * connections over them. fds of an address that the running configuration
 * listens on already are all -1: each loop keeps its listener there. */
struct smtp_listen_set {
    size_t n, n_loops;
    enum smtp_role *roles; /* owned, n */
    struct hostport *hps;  /* owned, n */
    int *fds;              /* owned, n * n_loops */
};

/* The deadlines of a loop's sessions: a list per second (deadline.c). */
#define SMTP_WHEEL_SLOTS 512
struct smtp_wheel {
    struct smtp_session *slot[SMTP_WHEEL_SLOTS];
    struct event *tick;
    int64_t done_s; /* every second up to this one has been looked at */
};

/* One receive loop: an event base with its own listeners and sessions.
 * With workers = 1 the only loop is the main loop (no thread); otherwise
 * each loop runs on a thread of its own (workers.c). */
struct smtp_loop {
    struct smtp_server *srv;
    unsigned idx;
    bool threaded;
    pthread_t thread;
    bool joined;             /* its thread has ended (or not yet started) */
    struct event_base *base; /* owned when threaded */
    /* Commit and AUTH answers for its sessions, and the main thread's
     * messages (workers.c). Owned when threaded; else the spool owner's. */
    struct loopq *inbox;
    /* Client name lookups of its sessions: a resolver on the loop's own
     * base when threaded (owned), else the server's (borrowed); NULL: no
     * lookups. */
    struct dns *dns;
    struct config *cfg;  /* ref: the configuration new sessions take */
    struct tls_ctx *tls; /* ref or NULL: the TLS context new sessions take */
    struct smtp_listener **listeners;
    size_t n_listeners;
    struct map *sessions; /* id -> session */
    struct smtp_wheel wheel;
    /* session id -> struct hline *: a message's "received" journal line,
     * written once the commit succeeds (the session may be gone by then) */
    struct map *journal_pending;
    size_t n_alive;             /* sessions not yet freed (killed ones included) */
    struct event *accept_timer; /* owned: ends a pause of the listeners */
    bool accept_paused;         /* accept() ran out of descriptors; listeners off */
    bool shutting_down;
    bool stopped; /* sessions killed, listeners gone: late messages only release */
    /* Read by the main thread for /status. */
    atomic_size_t open;             /* sessions in the map */
    atomic_uint_least64_t accepted; /* sessions started since start */
};

struct rcpt_list;

struct smtp_server {
    struct event_base *base; /* the main loop */
    struct dns *dns;         /* borrowed (smtp_server_new), or NULL: no name lookups */
    struct spool *sp;
    atomic_uint_least64_t received; /* messages committed, by every loop */
    /* Main thread only: the current configuration and its TLS context
     * (each loop holds its own references, handed over in workers.c). */
    struct config *cfg;
    struct tls_ctx *tls; /* NULL: no TLS offered */
    struct smtp_loop **loops;
    size_t n_loops;
    bool shutting_down;
    struct auth_worker *worker; /* crypt checks off the loops; thread safe */
    pthread_mutex_t auth_mu;
    struct auth_users *users;       /* guarded by auth_mu; NULL: no AUTH here */
    struct auth_throttle *throttle; /* guarded by auth_mu: failed AUTH per address */
    atomic_bool has_users;          /* users != NULL */
    atomic_bool auth_remote_on;     /* AUTH checked by the keys process (no users here) */
    /* Admission over every loop (max_sessions, max_sessions_per_ip,
     * reserved_sessions), checked and counted in one step. */
    pthread_mutex_t adm_mu;
    struct map *per_ip;   /* guarded by adm_mu: address bytes -> count (uintptr_t) */
    size_t n_sessions;    /* guarded by adm_mu */
    size_t n_outsiders;   /* guarded by adm_mu: sessions of clients outside relay_networks */
    atomic_size_t n_open; /* n_sessions, for readers without the lock */
    atomic_uint_least64_t next_id;
    struct rcpt_list *rcpts; /* relay_recipients; thread safe; the server's whole life */
};

/* Is AUTH configured (a users table here, or the keys process's)? */
bool smtp_server_auth_on(const struct smtp_server *srv);

/* A client's address: listeners are IPv4 or IPv6 sockets, so this, not a
 * 128-byte sockaddr_storage in every session (an idle session's size is
 * what a flood of connections costs). */
union smtp_peer {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
};

struct smtp_session {
    uint64_t id; /* unique over every loop */
    struct smtp_server *srv;
    struct smtp_loop *lp; /* the loop it runs on */
    struct config *cfg;   /* the snapshot this session started with */
    struct bufferevent *bev;
    union smtp_peer peer;
    char peer_str[64];
    enum smtp_state state;
    bool esmtp;
    char *helo;
    unsigned errors;
    bool discarding; /* dropping the rest of an over-long command line */
    /* Replies not yet taken by the client: replies added since the output
     * was last empty, and whether reading is paused until it drains. */
    unsigned out_depth;
    bool out_paused;
    enum smtp_state bdat_prev_state;
    struct smtp_tx *tx;
    bool dead;
    bool outsider; /* the client is outside relay_networks (counted in n_outsiders) */
    /* The client's deadline (smtp_session_deadline), in its loop's wheel
     * (deadline.c) while dl_pprev is set. */
    struct smtp_session *dl_next, **dl_pprev;
    int64_t deadline_ms; /* when it falls, tern_mono_ms() time */
    struct event
        *flush_ev; /* owned, made when first needed: closing goes on once the TLS layers drained */
    /* A plaintext socket is read by tern itself (see plain_read_cb), not
     * by the bufferevent: owned, NULL once TLS is on or for smtps. */
    struct event *rd_ev;
    bool rd_on;         /* the session takes input (smtp_session_read) */
    bool rd_added;      /* rd_ev is pending */
    bool under_watched; /* under_drained_cb is on the plaintext layer's output */
    bool tls_closed;    /* close_notify has been sent */
    /* TLS and AUTH. Everything here is reset by STARTTLS and is
     * never shared between sessions. */
    enum smtp_role role;
    struct tls_ctx *tls_ctx;   /* owned ref: the context this session's TLS uses */
    bool tls;                  /* the connection is encrypted (handshake done) */
    struct tls_info *tls_info; /* owned: set when tls is */
    struct event *hs_timer;    /* owned: handshake deadline */
    struct event *auth_timer;  /* owned: delayed 535 */
    enum smtp_auth_step auth_step;
    struct auth_creds *creds;       /* owned while an exchange runs; cleared before free */
    char *auth_user;                /* owned: the authenticated identity, or NULL */
    const char *auth_mech;          /* static: the mechanism of the exchange or of auth_user */
    struct tern_status *auth_reply; /* owned: the answer held back by auth_timer */
    bool auth_close;                /* close after auth_reply (lockout) */
    /* For the disconnect line (session_log.c): commands by verb, those
     * answered 4xx/5xx, the one the replies answer now. */
    int64_t started_ms; /* tern_mono_ms() at connect */
    uint32_t cmd_n[SMTP_V_COUNT], cmd_fail[SMTP_V_COUNT];
    enum smtp_verb cur_verb;
    bool cur_failed; /* cur_verb was counted as failed */
    bool counting;   /* a command was read and replies count against it */
    int reject_why;  /* metrics: the next 4xx/5xx reply's reason + 1; 0: by its codes */
    /* The client's name for the log (session_name.c). */
    enum { SMTP_NAME_OFF, SMTP_NAME_PENDING, SMTP_NAME_KNOWN, SMTP_NAME_UNKNOWN } name_state;
    struct dns_query *name_q;       /* the lookup in flight, or NULL */
    char *client_name;              /* owned: the PTR name; the client's only when KNOWN */
    struct smtp_milter_run *milter; /* owned or NULL: milter filters' connections */
};

/* server.c: admit a new connection as a listener does (session limits,
 * the share kept for relay_networks, per-address counts): a session is
 * started on fd on the first loop, or fd gets one 421 line and is closed.
 * fd is owned. On that loop's thread (the main loop's with workers = 1, as
 * the fuzzers run it). */
void smtp_server_admit(
    struct smtp_server *srv, int fd, const struct sockaddr *sa, int salen, enum smtp_role role);
/* session.c. start: false when no session could be made (fd closed). */
bool smtp_session_start(struct smtp_loop *lp, int fd, const struct sockaddr *sa, int salen,
    enum smtp_role role, bool outsider);
void smtp_reply(struct smtp_session *s, int code, const char *esc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void smtp_reply_status(struct smtp_session *s, const struct tern_status *st);
/* session_log.c: the session's log lines. One "smtp refused" line; qid,
 * from and to may be NULL (from: the transaction's sender when there is
 * one). */
void smtp_log_refused(
    struct smtp_session *s, const char *qid, const char *reason, const char *from, const char *to);
/* "smtp connect" (and the start of the session's duration). */
void smtp_log_connect(struct smtp_session *s);
/* "smtp disconnect": HELO name, TLS, AUTH user, counts, errors, duration. */
void smtp_log_disconnect(struct smtp_session *s);
/* A command line of verb v was read (SMTP_V_UNKNOWN: unrecognised). */
void smtp_count_command(struct smtp_session *s, enum smtp_verb v);
/* A reply with code went to the client: a 4xx/5xx fails the command. */
void smtp_count_reply(struct smtp_session *s, int code);
/* session_name.c: start looking up the client's name (when
 * smtpd_peername_lookup and a resolver); cancel it (session end). */
void smtp_name_start(struct smtp_session *s);
void smtp_name_cancel(struct smtp_session *s);
/* The name for the log: the confirmed name, "unknown", or NULL when
 * lookups are off. Borrowed from s. */
const char *smtp_client_name(const struct smtp_session *s);
/* Count a protocol error; true when the session was closed (421) for it. */
bool smtp_session_error(struct smtp_session *s);
/* Drop the transaction (state READY unless CONNECTED/CLOSING). */
void smtp_tx_reset(struct smtp_session *s);
/* Record a stage's decision about the message; a less severe one than
 * already recorded is ignored. by names the decider for the log. */
void smtp_tx_decide(
    struct smtp_session *s, enum smtp_verdict v, const struct tern_status *st, const char *by);
/* A stage that started asynchronous work calls this once it is done (on the
 * session's loop): the next stage, or the commit. */
void smtp_tx_advance(struct smtp_session *s);
/* Run buffered input (after a pause: commit, handshake, auth check). */
void smtp_session_process(struct smtp_session *s);
/* The client has ms from now (the next command line, the data, the last
 * reply's flush) before 421 4.4.2 and close; replaces the deadline set. */
void smtp_session_deadline(struct smtp_session *s, int64_t ms);
/* deadline.c: the wheel of lp (false when its timer cannot be made), and a
 * session's place in it at s->deadline_ms (set) or out of it (unset). */
bool smtp_wheel_init(struct smtp_loop *lp);
void smtp_wheel_fini(struct smtp_loop *lp);
void smtp_wheel_set(struct smtp_session *s);
void smtp_wheel_unset(struct smtp_session *s);
/* The wheel's call when s's deadline has come (session.c). */
void smtp_session_deadline_fell(struct smtp_session *s);
/* bytes of message data arrived: extend the data deadline (min_data_rate,
 * at most data_timeout ahead). */
void smtp_session_data_progress(struct smtp_session *s, uint64_t bytes);
void smtp_session_callbacks(struct smtp_session *s); /* set read/write/event callbacks */
/* Take input from the client, or stop (use this, not bufferevent_enable). */
void smtp_session_read(struct smtp_session *s, bool on);
/* Hand the reading of the plaintext socket back to the bufferevent (a TLS
 * filter goes on top of it). */
void smtp_session_plain_read_end(struct smtp_session *s);

/* session_data.c: DATA and BDAT. */
void smtp_cmd_data(struct smtp_session *s, const struct smtp_cmd *c);
void smtp_cmd_bdat(struct smtp_session *s, const struct smtp_cmd *c);
/* Feed buffered input to the message in state DATA / BDAT. */
void smtp_data_in(struct smtp_session *s, struct evbuffer *in);
void smtp_bdat_in(struct smtp_session *s, struct evbuffer *in);
/* Free a transaction, aborting its spool writer (NULL is fine). */
void smtp_tx_free(struct smtp_tx *tx);

/* checks.c: inbound_checks. The header section of a checked message is
 * held back, at most this many bytes (552 5.3.4 beyond). */
#define SMTP_CHECKS_HEADER_MAX (256 * 1024)
/* At the start of the data: checks for this client (tx->checks), SPF
 * started. */
void smtp_checks_open(struct smtp_session *s);
/* The data sink when tx->checks: takes n bytes off src (stuffed) or p[n]
 * (content), holds the header section, writes the rest and hashes it. */
void smtp_checks_stuffed(struct smtp_tx *tx, struct evbuffer *src, size_t n, uint64_t content);
void smtp_checks_plain(struct smtp_tx *tx, const char *p, size_t n);
/* End of the data: a header section still held is written. */
void smtp_checks_data_end(struct smtp_session *s);
/* The first stage: waits for the checks (inbound_check_timeout at most),
 * prefixes the Authentication-Results field, enforces DMARC. */
bool smtp_checks_stage(struct smtp_session *s);
void smtp_checks_free(struct smtp_checks *c); /* cancels its lookups; NULL fine */
/* The Authentication-Results field (RFC 8601) of results (each "method=
 * result property=value ...", tokens separated by spaces), folded at 78
 * characters where the tokens allow, CRLF-terminated, appended to out. */
void smtp_authres_render(
    const char *authserv_id, const char *const *results, size_t n, struct buf *out);
/* tern's Received field for the transaction's message queued as qid,
 * CRLF-terminated, appended to out. */
void smtp_add_received(struct smtp_session *s, const char *qid, struct buf *out);

/* session_milter.c: milter filters at MAIL and at each RCPT (true: they
 * answer the command, now or once they have replied; nothing is read
 * meanwhile), and as the stage after the data; the end of a transaction
 * for them (tx->mcopy freed too) and of the session. */
bool smtp_milter_mail(struct smtp_session *s);
bool smtp_milter_rcpt(struct smtp_session *s);
bool smtp_milter_stage(struct smtp_session *s);
void smtp_milter_tx_free(struct smtp_tx *tx);
void smtp_milter_session_free(struct smtp_session *s); /* after its transaction's */

/* session_tls.c: STARTTLS (RFC 3207) and implicit TLS (RFC 8314). */
bool smtp_starttls_offered(const struct smtp_session *s);
void smtp_cmd_starttls(struct smtp_session *s, const struct smtp_cmd *c);
/* Start the smtps handshake on a new connection; false when impossible. */
bool smtp_tls_accept(struct smtp_session *s, int fd);
/* Handshake done (BEV_EVENT_CONNECTED) or failed: called by the event cb. */
void smtp_tls_event(struct smtp_session *s, short what);
/* Send close_notify on the session's TLS connection (tern ends it). */
void smtp_tls_close_notify(struct smtp_session *s);

/* session_auth.c: AUTH (RFC 4954). */
bool smtp_auth_offered(const struct smtp_session *s);
void smtp_cmd_auth(struct smtp_session *s, const struct smtp_cmd *c);
/* A response line of an AUTH exchange (without CRLF). */
void smtp_auth_response(struct smtp_session *s, const char *line, size_t len);
/* Forget everything of authentication (STARTTLS, end of session). */
void smtp_auth_reset(struct smtp_session *s);
/* The crypt worker's answer for session id (auth_done_fn; arg: the loop). */
void smtp_auth_done(const struct auth_result *r, void *arg);
void smtp_session_close(struct smtp_session *s, int code, const char *esc, const char *text);
/* End the session at once, no reply; freed from the loop later. */
void smtp_session_kill(struct smtp_session *s);
/* server.c: called when a session ends (counts, maps). */
void smtp_server_session_gone(struct smtp_server *srv, struct smtp_session *s);
/* server.c, on the loop's thread: wrap the loop's sockets of set (taken
 * from it) in listeners, replacing the loop's old ones; drop them all. */
void smtp_loop_listen(struct smtp_loop *lp, struct smtp_listen_set *set);
void smtp_loop_unbind(struct smtp_loop *lp);
/* On the loop's thread: stop accepting and end its sessions as
 * smtp_server_shutdown says; end every session without a reply. */
void smtp_loop_shutdown_sessions(struct smtp_loop *lp);
void smtp_loop_kill_sessions(struct smtp_loop *lp);
void smtp_listen_set_free(struct smtp_listen_set *set); /* closes what is left; NULL fine */

/* workers.c: the loops. new: threaded or the main loop (base); NULL with
 * err when a threaded loop's base or inbox cannot be made. */
struct smtp_loop *smtp_loop_new(
    struct smtp_server *srv, unsigned idx, bool threaded, struct buf *err);
/* Before the loop runs (start-up, main thread): its configuration, TLS
 * context (references taken) and listeners; then start its thread. */
void smtp_loop_init(
    struct smtp_loop *lp, struct config *cfg, struct tls_ctx *tls, struct smtp_listen_set *set);
void smtp_loop_start(struct smtp_loop *lp);
/* From the main thread, carried out on the loop at its next pass (these two
 * return once it has been): new sessions take cfg and tls (references
 * taken); with set, the loop's listeners are replaced by its sockets of set
 * (taken from set now). */
void smtp_loop_post_config(
    struct smtp_loop *lp, struct config *cfg, struct tls_ctx *tls, struct smtp_listen_set *set);
void smtp_loop_post_shutdown(struct smtp_loop *lp);
/* Client name lookups from now on: the main loop uses dns, a threaded loop
 * a resolver of its own (when dns is not NULL). Returns once done. */
void smtp_loop_post_dns(struct smtp_loop *lp, struct dns *dns);
/* Main thread: end every session of the loop without a reply; a threaded
 * loop then drains its frees and its thread is joined. */
void smtp_loop_stop(struct smtp_loop *lp);
/* Main thread, after smtp_loop_stop (and once the AUTH worker is gone). */
void smtp_loop_free(struct smtp_loop *lp);

#endif

/*
 * SMTP server internals shared by server.c (listeners, limits) and
 * session.c (the per-connection state machine).
 */
#ifndef TERN_SMTP_INT_H
#define TERN_SMTP_INT_H

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
    /* BDAT */
    uint64_t chunk_left; /* bytes of the current chunk still to read */
    bool chunk_last;
    bool bdat_failed; /* a reply has been decided; swallow the chunk */
    struct tern_status bdat_st;
};

struct smtp_listener {
    struct smtp_server *srv;
    enum smtp_role role;
    struct evconnlistener *lis;
};

struct smtp_server {
    struct event_base *base;
    struct spool *sp;
    uint64_t received; /* messages committed */
    struct config *cfg;
    struct smtp_listener **listeners;
    size_t n_listeners;
    struct tls_ctx *tls;            /* server context of cfg; NULL: no TLS offered */
    struct auth_users *users;       /* auth_users_file of cfg; NULL: no AUTH */
    struct auth_throttle *throttle; /* failed AUTH per client address */
    struct auth_worker *worker;     /* crypt checks off the loop */
    struct map *sessions;           /* id -> session */
    struct map *per_ip;             /* address bytes -> count (uintptr_t) */
    uint64_t next_id;
    size_t n_alive;             /* sessions not yet freed (killed ones included) */
    size_t n_outsiders;         /* sessions of clients outside relay_networks */
    struct event *accept_timer; /* owned: ends a pause of the listeners */
    bool accept_paused;         /* accept() ran out of descriptors; listeners off */
    bool shutting_down;
};

struct smtp_session {
    uint64_t id;
    struct smtp_server *srv;
    struct config *cfg; /* the snapshot this session started with */
    struct bufferevent *bev;
    struct sockaddr_storage peer;
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
    bool outsider;          /* the client is outside relay_networks (counted in n_outsiders) */
    struct event *deadline; /* owned: the client's deadline (smtp_session_deadline) */
    int64_t deadline_ms;    /* when it falls, tern_mono_ms() time */
    struct event *flush_ev; /* owned: continues closing once the TLS layers drained */
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
    struct tls_ctx *tls_ctx; /* owned ref: the context this session's TLS uses */
    bool tls;                /* the connection is encrypted (handshake done) */
    struct tls_info tls_info;
    struct event *hs_timer;   /* owned: handshake deadline */
    struct event *auth_timer; /* owned: delayed 535 */
    enum smtp_auth_step auth_step;
    struct auth_creds *creds;      /* owned while an exchange runs; cleared before free */
    char *auth_user;               /* owned: the authenticated identity, or NULL */
    struct tern_status auth_reply; /* the answer held back by auth_timer */
    bool auth_close;               /* close after auth_reply (lockout) */
};

/* session.c. start: false when no session could be made (fd closed). */
bool smtp_session_start(struct smtp_server *srv, int fd, const struct sockaddr *sa, int salen,
    enum smtp_role role, bool outsider);
void smtp_reply(struct smtp_session *s, int code, const char *esc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void smtp_reply_status(struct smtp_session *s, const struct tern_status *st);
/* One "smtp refused" log line; qid and detail may be NULL. */
void smtp_log_refused(
    struct smtp_session *s, const char *qid, const char *reason, const char *detail);
/* Count a protocol error; true when the session was closed (421) for it. */
bool smtp_session_error(struct smtp_session *s);
/* Drop the transaction (state READY unless CONNECTED/CLOSING). */
void smtp_tx_reset(struct smtp_session *s);
/* Run buffered input (after a pause: commit, handshake, auth check). */
void smtp_session_process(struct smtp_session *s);
/* The client has ms from now (the next command line, the data, the last
 * reply's flush) before 421 4.4.2 and close; replaces the deadline set. */
void smtp_session_deadline(struct smtp_session *s, int64_t ms);
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
/* The crypt worker's answer for session id (auth_done_fn). */
void smtp_auth_done(const struct auth_result *r, void *arg);
void smtp_session_close(struct smtp_session *s, int code, const char *esc, const char *text);
/* End the session at once, no reply; freed from the loop later. */
void smtp_session_kill(struct smtp_session *s);
/* server.c: called when a session ends (counts, maps). */
void smtp_server_session_gone(struct smtp_server *srv, struct smtp_session *s);

#endif

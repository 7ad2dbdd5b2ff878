/*
 * Private to src/delivery: the delivery object (destinations, connections,
 * the reaper), the SMTP client connection (client.c) and the pure reply and
 * EHLO parsers (reply.c). delivery.c owns destinations and hands jobs out;
 * client.c owns one TCP connection and at most one transaction at a time.
 * A closed connection moves to the dead list and is freed by the reaper
 * event, never inside one of its own callbacks.
 */
#ifndef TERN_DELIVERY_INT_H
#define TERN_DELIVERY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "delivery/delivery.h"
#include "delivery/resolve.h"
#include "util/buf.h"
#include "util/status.h"

struct bufferevent;
struct event;

#define DELIV_REPLY_LINE_MAX  4096         /* one reply line, without CRLF */
#define DELIV_REPLY_LINES_MAX 100          /* lines of one multi-line reply */
#define DELIV_CHUNK           (64 * 1024)  /* one pread of the message */
#define DELIV_WRITE_HIGH      (256 * 1024) /* stop refilling above this */
#define DELIV_WRITE_LOW       (64 * 1024)  /* refill when output drains to this */
#define DELIV_CMD_MAX         4096         /* MAIL/RCPT with parameters */
#define DELIV_RELAY_MAX       (CONFIG_HOST_MAX + 80)

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
    bool smtputf8;     /* RFC 6531 */
    bool dsn;          /* RFC 3461 */
    bool chunking;     /* RFC 3030 */
    bool enhanced;     /* RFC 2034 */
    bool starttls;     /* RFC 3207 */
};

/* Parse one EHLO response line's text ("SIZE 1000") into e. Unknown
 * keywords are ignored; a SIZE whose value is not a number keeps size off. */
void ehlo_parse_line(struct ehlo_ext *e, const char *text, size_t len);

/* ---- delivery.c ---- */

struct deliv_conn;

struct deliv_dest {
    TAILQ_ENTRY(deliv_dest) link;
    struct delivery_dest d;
    TAILQ_HEAD(, deliv_conn) conns; /* open connections (not retired) */
    size_t n_conns;
    size_t n_due; /* due jobs as last told by delivery_kick, less jobs taken */
};

struct delivery {
    struct event_base *base;
    struct spool *sp;
    struct delivery_callbacks cb;
    struct config *cfg;   /* reference; NULL until delivery_set_config */
    struct resolver *res; /* NULL when c-ares could not start */
    TAILQ_HEAD(, deliv_dest) dests;
    TAILQ_HEAD(, deliv_conn) dead; /* retired, waiting for the reaper */
    struct event *reap;
    uint64_t next_conn_id;
    size_t n_active;
    bool shutting; /* delivery_free is running */
};

/* Ask the scheduler for dest's next job; keeps dest->n_due in step. */
bool deliv_take_job(struct delivery *d, struct deliv_dest *dest, struct delivery_job *job);
/* Open connections for dest while its limit and due count allow. */
void deliv_dest_fill(struct delivery *d, struct deliv_dest *dest);
/* Hand a closed connection to the reaper: unlinks it from dest. With refill
 * (the connection had a working session), a replacement is opened when dest
 * still has due work; a connection that failed its setup never refills, so
 * a dead destination is not retried in a loop. */
void deliv_conn_retire(
    struct delivery *d, struct deliv_conn *c, struct deliv_dest *dest, bool refill);

/* ---- client.c ---- */

enum conn_state {
    CS_START,    /* created; starts from the wake event */
    CS_RESOLVE,  /* waiting for the resolver */
    CS_CONNECT,  /* TCP connect in progress */
    CS_GREETING, /* waiting for the 220 */
    CS_EHLO,
    CS_HELO,
    CS_IDLE, /* no job: waits idle_conn_timeout for one */
    CS_TX,   /* MAIL, RCPT..., DATA sent (all at once with PIPELINING) */
    CS_BODY, /* streaming the message */
    CS_DOT,  /* waiting for the reply to the final dot */
    CS_RSET,
    CS_QUIT,
    CS_DEAD, /* retired */
    CS_N
};

struct client_tx;

struct deliv_conn {
    TAILQ_ENTRY(deliv_conn) dest_link; /* in dest->conns, then in d->dead */
    struct delivery *d;
    struct deliv_dest *dest; /* NULL once retired */
    struct config *cfg;      /* reference: the snapshot this connection started with */
    uint64_t id;
    enum conn_state state;
    struct bufferevent *bev;
    struct event *timer; /* connect, reply and idle timeouts */
    struct event *wake;  /* deferred start and job pulls */
    struct resolver_query *rq;
    struct resolve_result addrs;
    size_t cur_addr;
    char peer[CONFIG_HOST_MAX + 8]; /* "addr:port" being tried or connected */
    char relay[DELIV_RELAY_MAX];    /* "host[addr]:port" once reached */
    bool reached;                   /* TCP connected at least once */
    bool ready;                     /* greeting and EHLO/HELO done */
    struct ehlo_ext ext, ext_new;   /* in force / being parsed */
    struct reply_acc reply;
    struct tern_status setup_err; /* why the last connect attempt failed */
    uint32_t n_msgs, max_msgs;
    int64_t connect_ms, reply_ms, idle_ms;
    struct client_tx *tx; /* the job in flight, or NULL */
};

/* A new connection for dest under cfg (a reference is taken). It links itself
 * into dest and starts from the loop, never inside this call. */
struct deliv_conn *client_new(struct delivery *d, struct deliv_dest *dest, struct config *cfg);
/* Still being set up or idle: will ask for a job soon. */
bool client_not_busy(const struct deliv_conn *c);
/* An idle connection asks for a job again (from the loop). False if c is not
 * idle. */
bool client_wake(struct deliv_conn *c);
/* Shutdown: answer the job in flight with 421 4.3.2 and close at once. */
void client_shutdown(struct deliv_conn *c);
/* Free a retired connection (the reaper only). */
void client_free(struct deliv_conn *c);

#endif

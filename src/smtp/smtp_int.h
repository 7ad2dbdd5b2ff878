/*
 * SMTP server internals shared by server.c (listeners, limits) and
 * session.c (the per-connection state machine).
 */
#ifndef TERN_SMTP_INT_H
#define TERN_SMTP_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "data.h"
#include "parse.h"
#include "smtp.h"
#include "spool/spool.h"
#include "util/buf.h"
#include "util/map.h"

struct bufferevent;
struct evconnlistener;

enum smtp_state {
    SMTP_ST_CONNECTED, /* before HELO/EHLO */
    SMTP_ST_READY,     /* after HELO/EHLO, no transaction */
    SMTP_ST_MAIL,      /* MAIL accepted */
    SMTP_ST_RCPT,      /* at least one RCPT accepted */
    SMTP_ST_DATA,      /* reading DATA bytes */
    SMTP_ST_BDAT,      /* reading a BDAT chunk */
    SMTP_ST_COMMIT,    /* waiting for the spool to make the message durable */
    SMTP_ST_CLOSING,   /* flushing the last reply */
};

struct smtp_tx {
    struct spool_env *env; /* owned: sender, params, recipients */
    struct spool_writer *w; /* owned once DATA/BDAT started */
    struct smtp_data_dec dec;
    struct buf out;         /* decoded bytes not yet handed to the writer */
    bool too_big, io_error;
    int io_errno;
    /* BDAT */
    uint64_t chunk_left;    /* bytes of the current chunk still to read */
    bool chunk_last;
    bool bdat_failed;       /* a reply has been decided; swallow the chunk */
    struct tern_status bdat_st;
};

struct smtp_server {
    struct event_base *base;
    struct spool *sp;
    struct sched *sched;
    struct config *cfg;
    struct evconnlistener **listeners;
    size_t n_listeners;
    struct map *sessions; /* id -> session */
    struct map *per_ip;   /* address bytes -> count (uintptr_t) */
    uint64_t next_id;
    size_t n_alive; /* sessions not yet freed (killed ones included) */
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
    enum smtp_state bdat_prev_state;
    struct smtp_tx *tx;
    bool dead;
};

/* session.c */
void smtp_session_start(struct smtp_server *srv, int fd, const struct sockaddr *sa, int salen);
void smtp_session_close(struct smtp_session *s, int code, const char *esc, const char *text);
/* End the session at once, no reply; freed from the loop later. */
void smtp_session_kill(struct smtp_session *s);
/* server.c: called when a session ends (counts, maps). */
void smtp_server_session_gone(struct smtp_server *srv, struct smtp_session *s);

#endif

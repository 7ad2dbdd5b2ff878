/*
 * The SMTP server (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
 * CHUNKING, DSN, ENHANCEDSTATUSCODES): listeners on smtp_listen, session
 * limits, and sessions that stream mail into the spool and answer 250 only
 * after the spool's commit callback. Sessions run on `workers` receive
 * loops: the main loop alone, or that many threads of their own. Every call
 * here is made on the main loop's thread.
 */
#ifndef TERN_SMTP_H
#define TERN_SMTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config/config.h"
#include "util/buf.h"

struct event_base;
struct spool;
struct smtp_server;

/* Bind every smtp_listen, submission_listen and smtps_listen address of cfg
 * (a reference is taken) for each of cfg->workers receive loops and start
 * them, load the TLS certificate and the AUTH users. dns (borrowed, or NULL:
 * no name lookups) looks clients' names up for the log when
 * smtpd_peername_lookup says so; it must outlive the server's sessions.
 * Threaded receive loops get resolvers of their own (cfg's dns_resolvers,
 * followed on reload: a resolver belongs to one event loop), made before
 * they accept. NULL with a message in err when an address cannot be bound
 * or a file is bad. */
struct dns;
struct smtp_server *smtp_server_new(struct event_base *base, struct spool *sp, struct config *cfg,
    struct dns *dns, struct buf *err);
/* New sessions use cfg (and its certificate and users file, re-read here)
 * from now on (each loop has taken it when this returns); sessions in flight
 * keep theirs. Listeners are opened for new addresses and closed for
 * dropped ones (those kept stay open): -1 (and the old config kept) when a
 * new address cannot be bound, the certificate, key or users file is bad,
 * or workers changed (it needs a restart). */
int smtp_server_set_config(struct smtp_server *srv, struct config *cfg, struct buf *err);
/* Stop accepting; idle sessions get 421 and are closed, sessions in a
 * transaction are abandoned (421, their tmp files discarded), sessions whose
 * message is being committed get their answer first. */
void smtp_server_shutdown(struct smtp_server *srv);
/* Drop every remaining session without a reply (the end of a shutdown);
 * the loop threads end here, after freeing their sessions. */
void smtp_server_kill_all(struct smtp_server *srv);
size_t smtp_server_sessions(const struct smtp_server *srv);
/* The receive loops for /status: a JSON array of {"sessions", "accepted"}
 * per loop, appended to out. */
void smtp_server_status_json(const struct smtp_server *srv, struct buf *out);
/* Messages received and safely queued (counted once the spool committed
 * them, whether or not the client stayed for the reply). */
uint64_t smtp_server_received(const struct smtp_server *srv);
/* Sessions not yet freed, ended ones included (their memory and spool
 * writers go on the next loop pass). */
size_t smtp_server_unfreed(const struct smtp_server *srv);
void smtp_server_free(struct smtp_server *srv);
/* ternd's relay binds nothing itself: the parent's sockets for role (0
 * smtp_listen, 1 submission_listen, 2 smtps_listen) and hp, one per receive
 * loop, are given here before smtp_server_new or smtp_server_set_config
 * takes them; those not taken are closed by smtp_server_drop_given. */
void smtp_server_give_socket(int role, const struct hostport *hp, int fd);
void smtp_server_drop_given(void);
/* ternd's relay: AUTH is checked by the keys process over auth_fd, which
 * alone reads auth_users_file. */
void smtp_server_use_keys(int auth_fd);
/* ternd --check: load cfg's certificate/key and users file as the server
 * would. 0, or -1 with one line per problem in err. */
int smtp_server_check(const struct config *cfg, struct buf *err);

/* File descriptors one inbound session may hold (its socket, a spool
 * writer), one outbound connection (its socket, the queue file it sends),
 * and the daemon besides them (event loop, spool directories and commit
 * eventfd, log, DNS sockets, control and metrics clients, the AUTH worker
 * pipe, files opened for a moment, a margin). */
#define SMTP_FDS_PER_SESSION  2
#define SMTP_FDS_PER_DELIVERY 2
#define SMTP_FDS_RESERVE      100
#define SMTP_FDS_PER_LOOP     2 /* a receive thread's epoll and inbox */
/* The descriptors ternd may need at once with cfg: max_sessions sessions,
 * max_connections deliveries, the listeners of every receive loop, the
 * loop threads' own and the reserve. */
uint64_t smtp_server_fds_needed(const struct config *cfg);
/* 0 when smtp_server_fds_needed(cfg) fits in limit, else -1 with one line
 * in err naming the settings, the need and the limit. */
int smtp_server_check_fds(const struct config *cfg, uint64_t limit, struct buf *err);

/* Local submission (the maildrop's pickup) is mail of our own users: sign
 * it at commit as mail of relay_networks clients is, when dkim_sign has
 * keys for its From domain. skip: bytes of tern's own trace field at the
 * start of w's content (not signed). Any thread. */
struct spool_writer;
void smtp_dkim_at_commit(struct config *cfg, struct spool_writer *w, size_t skip);
/* Every message that enters the spool (SMTP, submission, the maildrop's
 * pickup) gets cfg's always_bcc, when set, as one more recipient of the
 * same stored message: RCPT_K_ARCHIVE, NOTIFY=NEVER. Call just before the
 * commit, once the recipients are final. Any thread. */
void smtp_archive_at_commit(const struct config *cfg, struct spool_writer *w);
/* For ternd --check: relay_recipients at path as the relay running as
 * uid:gid will find it. 0, or -1 with a line in err. */
int smtp_relay_recipients_check(const char *path, uid_t uid, gid_t gid, struct buf *err);

#endif

/*
 * SMTP AUTH (RFC 4954) for the server: pure decoders for the PLAIN (RFC 4616)
 * and LOGIN exchanges, the auth_users_file table (user:crypt-hash lines,
 * re-read when the file changes), password verification with crypt(3), the
 * per-address failure throttle, the auth_sender_login rule, and a worker
 * thread that runs the (CPU-heavy) crypt calls off the event loop, fed by a
 * queue that serves client addresses in turn. Secrets are held in fixed
 * buffers and cleared with explicit_bzero; nothing here logs them.
 */
#ifndef TERN_SMTP_AUTH_H
#define TERN_SMTP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "util/buf.h"
#include "util/status.h"
#include "util/userdb.h"

/* RFC 4954 §4: an AUTH command line or a response line is at most 12288
 * octets (without CRLF here). */
#define AUTH_LINE_MAX 12288

struct auth_creds {
    char user[AUTH_USER_MAX + 1];
    char pass[AUTH_PASS_MAX + 1];
};
/* Clear a credentials buffer (explicit_bzero). */
void auth_creds_clear(struct auth_creds *c);

enum auth_dec {
    AUTH_DEC_OK,
    AUTH_DEC_BAD,    /* not valid base64 or not the mechanism's shape: 501 5.5.2 */
    AUTH_DEC_DENIED, /* well formed but never acceptable (authzid of someone else,
                        empty or over-long identity or password): a failed login */
};

/* Strict base64 (RFC 4648 §4): padding required, no whitespace, no junk
 * after the padding. "=" alone is the empty string (RFC 4954 §4). Writes at
 * most cap bytes. 0 ok (*out_len set), -1 bad or too long. */
int auth_b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len);

/* PLAIN: base64 of "[authzid] NUL authcid NUL passwd". An authzid is
 * accepted only when equal to authcid (no proxy authorisation). */
enum auth_dec auth_plain_decode(const char *b64, size_t len, struct auth_creds *c);
/* One LOGIN field (user name or password): base64 of bytes with no NUL,
 * non-empty, at most cap-1 bytes; out is NUL terminated. */
enum auth_dec auth_login_decode(const char *b64, size_t len, char *out, size_t cap);

/* ---- throttle of failed logins per client address ---- */

/* A password check is charged to its client's address before it runs and
 * given back only when it succeeds (or never ran), so parallel sessions
 * cannot get more than max_failures guesses checked per address and window:
 * checks in flight count as failures until they are answered. */
struct auth_limits {
    uint32_t max_failures; /* this many within window ... */
    int64_t window_ms;
    int64_t lockout_ms; /* ... lock the address out for this long */
};

#define AUTH_KEY_MAX 16 /* bytes of a throttle key */

struct auth_throttle;
/* max_entries bounds the memory: beyond it stale entries are evicted, and
 * while the table is full of live ones a new address may not start a check
 * (failing closed: an address that cannot be counted gets no guesses). */
struct auth_throttle *auth_throttle_new(size_t max_entries);
void auth_throttle_free(struct auth_throttle *t);
/* The throttle key of a client: IPv4 address or the IPv6 /64. Returns its
 * length (4 or 8). */
size_t auth_throttle_key(const struct sockaddr *sa, unsigned char key[AUTH_KEY_MAX]);
/* The key as text for logs: "192.0.2.7" or "2001:db8:1:2::/64". */
void auth_throttle_key_str(const void *key, size_t klen, char *out, size_t cap);
/* May the address not start an attempt now: locked out, or its whole
 * budget is already charged (failed or in flight) within the window? */
bool auth_throttle_blocked(const struct auth_throttle *t, const void *key, size_t klen,
    int64_t now_ms, const struct auth_limits *lim);
/* Charge one attempt before its password is checked. false (nothing
 * charged) when the address is blocked or cannot be tracked. */
bool auth_throttle_begin(struct auth_throttle *t, const void *key, size_t klen, int64_t now_ms,
    const struct auth_limits *lim);
/* The attempt charged by begin is over: failed keeps the charge (and may
 * lock the address: returns true then); otherwise it is given back. */
bool auth_throttle_end(struct auth_throttle *t, const void *key, size_t klen, bool failed,
    int64_t now_ms, const struct auth_limits *lim);
/* Count one failure that needed no check (unacceptable credentials); true
 * when it locks the address out. */
bool auth_throttle_fail(struct auth_throttle *t, const void *key, size_t klen, int64_t now_ms,
    const struct auth_limits *lim);
size_t auth_throttle_count(const struct auth_throttle *t);

/* ---- fair queue of checks ---- */

/* Checks waiting for the crypt worker, one FIFO per client key, served
 * round-robin: an address flooding AUTH holds at most per_key_max places
 * and waits its turn, so another address's check waits for at most one
 * check of each address ahead of it. Items are embedded in the caller's
 * objects and stay owned by the caller; the queue only links them. */
struct auth_fairq_item {
    struct auth_fairq_item *next;
};
struct auth_fairq;
struct auth_fairq *auth_fairq_new(size_t per_key_max, size_t total_max);
/* Items still queued are forgotten, not freed (pop them first). */
void auth_fairq_free(struct auth_fairq *q);
/* Queue it under key. -1 when the key already has per_key_max items
 * waiting or the queue holds total_max. */
int auth_fairq_push(struct auth_fairq *q, const void *key, size_t klen, struct auth_fairq_item *it);
/* The next item: the oldest of the key whose turn it is; NULL when empty. */
struct auth_fairq_item *auth_fairq_pop(struct auth_fairq *q);
size_t auth_fairq_len(const struct auth_fairq *q);
size_t auth_fairq_key_len(const struct auth_fairq *q, const void *key, size_t klen);

/* ---- auth_sender_login ---- */

/* May user send as sender ("" = the null sender)? spec: the setting's text
 * (NULL or "": everyone may use any sender). A user without an entry may
 * use none. Items: full address (case-insensitive), "@domain" (the domain,
 * case-insensitive), "<>" (the null sender). */
bool auth_sender_allowed(const char *spec, const char *user, const char *sender);

/* ---- the crypt worker ---- */

/* The answer to one check, handed to done on the asking loop's thread. */
struct auth_result {
    uint64_t id; /* as given to submit */
    bool ok;
    size_t klen; /* the client key given to submit */
    unsigned char key[AUTH_KEY_MAX];
};

#define AUTH_QUEUE_PER_KEY 16   /* checks one client key may have waiting */
#define AUTH_QUEUE_MAX     1024 /* checks waiting in all */

struct auth_worker;
struct event_base;
struct loopq;
/* done runs on the loop of the inbox given to submit, once for each
 * finished check (also when the session that asked is gone: the throttle
 * needs every answer). */
typedef void auth_done_fn(const struct auth_result *r, void *arg);
struct auth_worker *auth_worker_new(auth_done_fn *done);
/* Queue a check of pass against hash (both copied; the copy of pass is
 * cleared after use) for the client key (see the fair queue); its answer
 * goes to done(r, arg) on to's loop. With force_fail the check runs but
 * reports false (unknown users). -1 when the key's share of the queue, or
 * the queue, is full. Any thread. */
int auth_worker_submit(struct auth_worker *w, struct loopq *to, void *arg, uint64_t id,
    const void *key, size_t klen, const char *hash, const char *pass, bool force_fail);
/* Stop the thread (pending checks are dropped unanswered) and free. Answers
 * already posted stay in their inboxes and run (or are freed) with them. */
void auth_worker_free(struct auth_worker *w);

/* A worker whose checks run in ternd's keys process, which alone holds the
 * hashes (sock: the relay's socket to it). The fair queue stays here and at
 * most inflight checks are over there at once, so the order in which
 * addresses are served is decided as for the local worker. The keys
 * process's replies are read on base's loop (the main loop), and each
 * answer is posted to the inbox of the loop that asked, as the local
 * worker's are. */
struct auth_worker *auth_worker_new_remote(
    struct event_base *base, int sock, size_t inflight, auth_done_fn *done);
bool auth_worker_is_remote(const struct auth_worker *w);
/* Queue a check of user's password (copied, cleared once sent); its answer
 * goes to done(r, arg) on to's loop. -1 as for auth_worker_submit. Any
 * thread. */
int auth_worker_submit_user(struct auth_worker *w, struct loopq *to, void *arg, uint64_t id,
    const void *key, size_t klen, const char *user, const char *pass);

#endif

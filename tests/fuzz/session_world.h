/*
 * The world of the SMTP session fuzzer, built once per process: a temporary
 * directory with a spool, a self-signed certificate, an AUTH users file and
 * a DKIM key; one event loop; two smtp_servers without listeners (a roomy
 * configuration and a tight one with small limits) that sessions are started
 * on directly over a socketpair. Also the end-of-input checks on the spool
 * and the process (files in tmp/, open writers, descriptors).
 */
#ifndef TERN_FUZZ_SESSION_WORLD_H
#define TERN_FUZZ_SESSION_WORLD_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

struct event_base;
struct spool;
struct smtp_server;

/* The AUTH user of the users file and its password. */
#define WORLD_USER     "alice"
#define WORLD_PASSWORD "secret"

struct fuzz_world {
    char dir[PATH_MAX]; /* owned temporary directory, removed at exit */
    char tmp_dir[PATH_MAX], queue_dir[PATH_MAX], corrupt_dir[PATH_MAX];
    struct event_base *base;
    struct spool *sp;
    struct smtp_server *srv[2]; /* [0] default limits, [1] tight limits */
    SSL_CTX *client_tls;        /* the fuzzing client's side of TLS */
};

/* Build the world (exits the process when something cannot be made). */
void world_init(struct fuzz_world *w);
/* Commits in flight in the spool (committed, callback not yet run). */
size_t world_inflight(struct fuzz_world *w);
/* Open spool writers (tmp files being written). */
size_t world_open_writers(struct fuzz_world *w);
/* Entries of a directory, "." and ".." excepted; (size_t)-1 when unreadable. */
size_t world_dir_entries(const char *path);
/* Remove every committed message (between inputs). */
void world_clear_queue(struct fuzz_world *w);
/* Open file descriptors of the process. */
size_t world_open_fds(void);
/* Count the session's address in the server's per-address table, as the
 * listener does before it starts a session (the session takes it off again
 * when it ends). */
void world_count_peer(struct smtp_server *srv, const struct sockaddr *sa);

#endif

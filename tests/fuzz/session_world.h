/*
 * The world of the SMTP session fuzzer, built once per process: a temporary
 * directory with a spool, a self-signed certificate, an AUTH users file and
 * a DKIM key; one event loop; two smtp_servers without listeners (a roomy
 * configuration and a tight one with small limits) that sessions are started
 * on through the listeners' admission over socketpairs. Also the
 * end-of-input work on the spool (everything written, the input's messages
 * removed) and the checks on the process (corrupt/ files, descriptors).
 */
#ifndef TERN_FUZZ_SESSION_WORLD_H
#define TERN_FUZZ_SESSION_WORLD_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "spool/spool.h"

struct event_base;
struct loopq;
struct smtp_server;

/* The AUTH user of the users file and its password. */
#define WORLD_USER     "alice"
#define WORLD_PASSWORD "secret"

struct fuzz_world {
    char dir[PATH_MAX]; /* owned temporary directory, removed at exit */
    char corrupt_dir[PATH_MAX];
    struct event_base *base;
    struct loopq *q; /* the spool's owner inbox on base */
    struct spool *sp;
    char (*qids)[SPOOL_QID_LEN + 1]; /* committed during this input */
    size_t n_qids, cap_qids;
    bool recovered, synced;
    struct smtp_server *srv[2]; /* [0] default limits, [1] tight limits */
    SSL_CTX *client_tls;        /* the fuzzing client's side of TLS */
};

/* Build the world (exits the process when something cannot be made). */
void world_init(struct fuzz_world *w);
/* Wait until everything handed to the spool so far is written. */
void world_settle(struct fuzz_world *w);
/* Entries of a directory, "." and ".." excepted; (size_t)-1 when unreadable. */
size_t world_dir_entries(const char *path);
/* Remove every message committed during the input, and settle. */
void world_clear_queue(struct fuzz_world *w);
/* Open file descriptors of the process, the spool's segment files aside. */
size_t world_open_fds(struct fuzz_world *w);
/* The same count, each descriptor's target written to out (when a check
 * fails, to say which one was left open). */
size_t world_list_fds(struct fuzz_world *w, FILE *out);

#endif

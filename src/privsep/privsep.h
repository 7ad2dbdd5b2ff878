/*
 * ternd's process split (OpenSMTPD's model, in three processes): a small
 * parent that binds, reads the configuration and the secrets and reloads;
 * a keys process that alone holds the TLS private key, the DKIM keys and
 * the AUTH password hashes and answers narrow requests; and the relay
 * (everything else) as the unprivileged `user`. This header has the pieces
 * the three share: dropping privileges and seccomp (proc.c), listening
 * sockets (listen.c), the fixed-size messages and blobs (proto.c), the keys
 * process (keys.c) and the relay's side of it (client.c).
 */
#ifndef TERN_PRIVSEP_H
#define TERN_PRIVSEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config/config.h"
#include "util/buf.h"

/* ---- identity and restriction (proc.c) ---- */

struct ps_ident {
    uid_t uid;
    gid_t gid;
    char name[64];
    bool switch_user; /* started as root: become uid/gid */
};

/* Who the processes run as: started as root (as_root), the account named
 * user (-1 with err when unknown or root itself); otherwise the current
 * user, whatever user says. */
int ps_ident_lookup(const char *user, bool as_root, struct ps_ident *out, struct buf *err);
/* Become id for good (setgroups, setgid, setuid, each checked, then check
 * that uid 0 cannot be regained), drop every capability from the bounding
 * set, set no_new_privs and make the process not dumpable (no ptrace or
 * /proc/PID/mem by its own uid). -1 with err. */
int ps_drop(const struct ps_ident *id, struct buf *err);
enum ps_filter { PS_FILTER_RELAY, PS_FILTER_KEYS };
/* Install the seccomp filter of a process (see proc.c for the lists). */
int ps_seccomp(enum ps_filter which, struct buf *err);

/* ---- listening sockets (listen.c) ---- */

/* A TCP listening socket on hp (numeric address): SO_REUSEADDR,
 * IPV6_V6ONLY on IPv6 (so 0.0.0.0:P and [::]:P coexist), close-on-exec,
 * non-blocking. -1 with err naming what (e.g. "smtp_listen"). */
int ps_listen_tcp(const char *what, const struct hostport *hp, int *fd, struct buf *err);
/* n sockets on hp for n receive loops (fds[n]): with n > 1 a group with
 * SO_REUSEPORT, over which the kernel spreads new connections, after a
 * check that nothing else listens there; with n = 1 as ps_listen_tcp.
 * -1 with err (nothing left open). */
int ps_listen_tcp_group(
    const char *what, const struct hostport *hp, size_t n, int *fds, struct buf *err);
/* ternd --check: every listen address of cfg is numeric, given once, not
 * overlapping a wildcard of the same family and port, and configured on
 * this machine (bound on port 0, which no running ternd holds). */
int ps_listen_check(const struct config *cfg, struct buf *err);

/* ---- messages (proto.c) ---- */

enum ps_type {
    /* relay -> keys */
    PS_TLS_RSA_SIGN = 1, /* data: a DigestInfo (PKCS#1 v1.5) or a PSS block */
    PS_TLS_EC_SIGN,      /* data: the digest */
    PS_DKIM_SIGN,        /* data: SHA-256 of the signed data */
    PS_AUTH_CHECK,       /* user, pass */
    /* keys -> relay */
    PS_REPLY,
    /* parent -> keys */
    PS_KEYS,   /* fd: a blob of keys for generation gen */
    PS_USERS,  /* fd: auth_users_file text; id: the parent's read counter */
    PS_SYNCED, /* id: the PS_SYNC answered (any PS_USERS came first) */
    /* keys -> parent */
    PS_SYNC,     /* is the users file current? id: a counter */
    PS_KEYS_ACK, /* gen installed (status 0) or refused */
    /* parent -> relay */
    PS_CONFIG,   /* fd: a blob with the configuration of generation gen */
    PS_LISTENER, /* fd: a new listening socket for role/host/port */
    /* parent -> relay and keys */
    PS_LOG, /* fd: where log lines go from now on; arg: 1 for syslog's socket */
};

#define PS_DATA_MAX 1024 /* RSA-4096 needs 512 */
#define PS_USER_MAX 255
#define PS_PASS_MAX 1023
#define PS_HOST_MAX 64

/* Every message is this fixed-size struct (SOCK_SEQPACKET: one message,
 * one recv); the receiver checks the size, the type and every length. */
struct ps_msg {
    uint32_t type;
    uint32_t gen;
    uint32_t idx; /* key index within the generation; listener role */
    int32_t status;
    uint32_t arg; /* RSA padding; DKIM algorithm; listener port */
    uint32_t len; /* bytes of data */
    uint64_t id;  /* request id, counter */
    char user[PS_USER_MAX + 1];
    char pass[PS_PASS_MAX + 1];
    char host[PS_HOST_MAX];
    unsigned char data[PS_DATA_MAX];
};

/* Send m (with fd when fd >= 0). 0, or -1 with errno. */
int ps_send(int sock, const struct ps_msg *m, int fd);
/* Receive one message: 1 (with *fd, or -1 when none came), 0 when the peer
 * closed, -1 with errno (EBADMSG: wrong size or type out of range). */
int ps_recv(int sock, struct ps_msg *m, int *fd);

/* Blobs: TLV records (u32 type, u32 length, bytes) in a sealed memfd, so a
 * message stays small whatever the configuration or users file size. */
enum ps_rec {
    PS_R_CONFIG = 1, /* the configuration file's text */
    PS_R_CERT,       /* the certificate chain (PEM) */
    PS_R_TLS_KEY,    /* keys only: the TLS private key (PEM) */
    PS_R_DKIM,       /* u32 alg, u32 bits, then (keys only) the PEM */
    PS_R_WEBHOOK,    /* relay only: the event webhook's secret */
    PS_R_TOKEN,      /* relay only: admin_token_file's token (dashboard) */
};
#define PS_BLOB_MAX (64u * 1024 * 1024)
void ps_blob_add(struct buf *b, uint32_t type, const void *p, size_t n);
/* A sealed memfd holding b (cleared after: it may hold keys). -1 errno. */
int ps_blob_fd(struct buf *b);
/* Read the blob of fd (closed here) into out. -1 when too big or short. */
int ps_blob_read(int fd, struct buf *out);
/* Walk records: *off advances; 1 with type/p/n, 0 at the end, -1 bad. */
int ps_blob_next(const struct buf *b, size_t *off, uint32_t *type, const char **p, size_t *n);

/* ---- the keys process (keys.c) ---- */

struct ps_keys_fds {
    int parent, tls, dkim, auth;
};
#define PS_AUTH_THREADS 2 /* crypt(3) checks run on this many threads */
/* Is em[len] (an RSA operation's input for a modulus of mod_bits) a
 * well-formed EMSA-PSS encoding (RFC 8017 §9.1.2 steps 4-10, MGF1 with
 * SHA-256/384/512, salt as long as the hash)? The only raw RSA input the
 * keys process takes: it can then only sign, never decrypt. */
bool ps_pss_block_ok(const unsigned char *em, size_t len, int mod_bits);
/* Serve until the parent's socket closes; returns the exit status. */
int ps_keys_main(const struct ps_keys_fds *fds);

/* ---- the relay's side (client.c) ---- */

struct ps_dkim_meta {
    uint32_t alg, bits; /* enum dkim_alg */
};
/* The relay's sockets to the keys process. */
void ps_client_init(int tls_fd, int dkim_fd, int auth_fd);
int ps_client_auth_fd(void);
/* The material of a generation: install the certificate chain (PEM, or
 * NULL) as the one tls_server_ctx_new uses, signing through the keys
 * process. -1 with err. */
int ps_client_set_tls(uint32_t gen, const char *chain, size_t len, struct buf *err);
/* Can the keys process sign for the leaf of chain (PEM): RSA or ECDSA
 * (there is no hook for Ed25519 private keys)? 0, or -1 with err. */
int ps_check_cert(const char *chain, size_t len, struct buf *err);
/* A DKIM key set for cfg whose keys sign through the keys process: entry i
 * of cfg->dkim_sign has meta[i] (alg 0xffffffff: not loaded). Owned. */
struct dkim_keyset *ps_client_dkim_keys(
    uint32_t gen, const struct config *cfg, const struct ps_dkim_meta *meta, size_t n);

#endif

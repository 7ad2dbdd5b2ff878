/*
 * ternd's two halves: the parent (ternd_parent.c: configuration, secrets,
 * binding, the keys process and reload) and the relay (ternd.c: the event
 * loop with SMTP, spool, delivery, control socket and metrics). The parent
 * forks the relay with what it prepared in struct ternd_boot.
 */
#ifndef TERN_CMD_TERND_H
#define TERN_CMD_TERND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

#define TERND_MAX_OVERRIDES 256
#define TERND_MAX_LISTEN    1024 /* sockets: SMTP addresses times workers, and metrics */

/* A listening socket made by the parent: role 0..2 as smtp_server_give_socket
 * (workers of them per address, one for each receive loop), 3 for
 * metrics_listen. */
struct ternd_sock {
    int role;
    struct hostport hp;
    int fd;
};
#define TERND_ROLE_METRICS 3

struct ternd_boot {
    const char *path; /* the configuration file, or NULL */
    const char *overrides[TERND_MAX_OVERRIDES];
    size_t n_overrides;
    struct config *cfg; /* parsed before the fork (no files read) */
    uint64_t fd_limit;
    struct ternd_sock socks[TERND_MAX_LISTEN];
    size_t n_socks;
    int spool_fd, ctl_fd;
    /* The maildrop, opened by the root parent for the relay's user (whose
     * path to it may cross a directory only root can search), or -1. */
    int maildrop_fd;
    int parent_fd;                /* relay <-> parent */
    int tls_fd, dkim_fd, auth_fd; /* relay -> keys */
    int keys_parent_fd;           /* keys <-> parent (the keys process's end) */
};

/* The relay: runs until stopped; returns the exit status. */
int ternd_relay_main(struct ternd_boot *b);
/* The parent: forks the others and runs until they end; exit status. */
int ternd_parent_main(struct ternd_boot *b);
/* sd_notify(3) RELOADING=1 then READY=1, for a reload refused before the
 * relay saw it (the relay notifies every other state). */
void ternd_notify_reload_refused(void);
/* The descriptor limit (raise: the soft limit raised to the hard one). */
uint64_t ternd_fd_limit(bool raise);
/* A whole public file (at most 1 MiB) into out; -1 with err naming what. */
int ternd_read_file(const char *what, const char *path, struct buf *out, struct buf *err);
/* Put the configuration text of b->path into out (empty for defaults). -1
 * with err. */
int ternd_read_config(const char *path, struct buf *out, struct buf *err);

#endif

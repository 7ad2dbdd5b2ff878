/*
 * The control socket: SPOOL/ctl.sock (mode 0600), a Unix stream socket on
 * which ternctl sends one request line and reads the reply.
 *
 * Request: one line, a verb and arguments separated by single spaces:
 *   LIST            queued messages, one JSON object per line (the
 *                   `ternctl queue list --json` format of CONTRACT.md)
 *   SUMMARY         one JSON object per destination:
 *                   {"destination":..., "messages":N, "recipients":N,
 *                    "oldest":UNIX_SECONDS, "last_error":...}
 *   FLUSH           retry everything now
 *   DELETE qid      remove a message (no DSN)
 *   HOLD qid        hold a message (not delivered until released)
 *   RELEASE qid     release a held message (retried at once)
 *   STATUS          one JSON object: {"queue_messages":N, "sessions":N, ...}
 * Reply: zero or more data lines, then a final line "OK" or "ERR <text>"
 * ("ERR unknown queue id" for a bad or missing qid). Lines end with "\n".
 */
#ifndef TERN_CTL_H
#define TERN_CTL_H

#define CTL_SOCKET_NAME "ctl.sock"
#define CTL_LINE_MAX    1024

#include "util/buf.h"

struct event_base;
struct sched;
struct ctl_server;

/* Listen on SPOOL_DIR/ctl.sock (a stale socket file is replaced). status
 * appends the STATUS object (without newline). NULL + err on failure. */
struct ctl_server *ctl_server_new(struct event_base *base, const char *spool_dir, struct sched *sch,
    void (*status)(struct buf *out, void *arg), void *status_arg, struct buf *err);
/* ternd's relay: the next ctl_server_new listens on fd (bound by the
 * parent, which also removes the file) instead of binding. */
void ctl_server_give_socket(int fd);
/* Close the socket, remove the file, drop connections. NULL is fine. */
void ctl_server_free(struct ctl_server *c);

#endif

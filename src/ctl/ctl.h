/*
 * The control socket: SPOOL/ctl.sock (mode 0600), a Unix stream socket on
 * which ternctl sends one request line and reads the reply.
 *
 * Request: one line, a verb and arguments separated by single spaces:
 *   LIST            queued messages, one JSON object per line (the
 *                   `ternctl queue list --json` format of CONTRACT.md,
 *                   plus "next_attempt" and "age")
 *   SUMMARY         one JSON object per destination:
 *                   {"destination":..., "messages":N, "recipients":N,
 *                    "oldest":UNIX_SECONDS, "last_error":..., "ages":{...}}
 *                   ("ages": messages per qshape age bucket, sched.h), then,
 *                   when mail is held, {"held":true, "messages":N, ...}
 *                   (held mail is in no destination's figures)
 *   FLUSH           retry everything now
 *   VERB qid...     VERB is HOLD, RELEASE, DELETE or FLUSH (retry now):
 *                   one line "done QID" or "unknown QID" per id, then OK;
 *                   "ERR bad queue id" (nothing done) when one is not a qid
 *   VERB ALL [sender=ADDR] [rdomain=DOMAIN] [older=SECONDS]
 *                   the same for every message the selection takes (sender
 *                   empty: the null sender), streamed as a walk: "done QID"
 *                   lines, then OK
 *   STATUS          one JSON object: {"queue_messages":N, "sessions":N, ...}
 *   TLSRPT-NOW      send the TLS-RPT reports now, today's counts included
 *                   (ERR when reporting is off or a run is under way)
 * Reply: zero or more data lines, then a final line "OK" or "ERR <text>".
 * Lines end with "\n". After an answer that is not streamed (everything
 * but LIST, SUMMARY and VERB ALL) the connection takes another request.
 */
#ifndef TERN_CTL_H
#define TERN_CTL_H

#define CTL_SOCKET_NAME "ctl.sock"
#define CTL_LINE_MAX    1024

#include <stdbool.h>

#include "util/buf.h"

struct event_base;
struct sched;
struct ctl_server;

/* Listen on SPOOL_DIR/ctl.sock (a stale socket file is replaced). status
 * appends the STATUS object (without newline). NULL + err on failure. */
struct ctl_server *ctl_server_new(struct event_base *base, const char *spool_dir, struct sched *sch,
    void (*status)(struct buf *out, void *arg), void *status_arg, struct buf *err);
/* TLSRPT-NOW runs fn(arg): false answers ERR. Without it, ERR. */
void ctl_server_set_tlsrpt(struct ctl_server *c, bool (*fn)(void *arg), void *arg);
/* ternd's relay: the next ctl_server_new listens on fd (bound by the
 * parent, which also removes the file) instead of binding. */
void ctl_server_give_socket(int fd);
/* Close the socket, remove the file, drop connections. NULL is fine. */
void ctl_server_free(struct ctl_server *c);

#endif

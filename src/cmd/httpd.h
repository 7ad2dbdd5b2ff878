/*
 * ternd's HTTP endpoint on metrics_listen: /metrics (the Prometheus text of
 * src/metrics), /status (JSON) and the dashboard (/ and /api/), over
 * libevent's evhttp.
 */
#ifndef TERN_CMD_HTTPD_H
#define TERN_CMD_HTTPD_H

#include "config/config.h"
#include "util/buf.h"

struct event_base;
struct sched;
struct smtp_server;
struct metrics;

/* Listen on listen (cfg->metrics_listen, which must be set). status appends
 * the /status JSON object; spool_dir (borrowed) holds the journal the
 * dashboard reads. NULL + err when the address cannot be bound. */
struct metrics *metrics_new(struct event_base *base, const struct hostport *listen,
    struct sched *sch, struct smtp_server *smtp, const char *spool_dir,
    void (*status)(struct buf *out, void *arg), void *status_arg, struct buf *err);
void metrics_free(struct metrics *m); /* NULL is fine */
/* admin_token_file's token for the dashboard's actions (borrowed for the
 * call; NULL or empty: read-only). */
void metrics_set_admin_token(struct metrics *m, const char *token, size_t len);
/* ternd's relay: the next metrics_new serves fd (bound by the parent). */
void metrics_give_socket(int fd);

#endif

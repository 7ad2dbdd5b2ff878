/*
 * The live dashboard on metrics_listen: the page (/, /app.js, /app.css,
 * compiled into ternd) and its read-only JSON API under /api/. Everything
 * runs on the main loop and is bounded in time and size: the queue summary
 * is a scheduler walk in slices whose last result is cached, the journal
 * is read with a time budget and its result cached for a moment.
 */
#ifndef TERN_CMD_DASHBOARD_H
#define TERN_CMD_DASHBOARD_H

#include "metrics/metrics.h"

struct event_base;
struct evhttp;
struct sched;
struct smtp_server;
struct dash;

/* sch and smtp are borrowed for the dashboard's life; spool_dir is copied. */
struct dash *dash_new(
    struct event_base *base, struct sched *sch, struct smtp_server *smtp, const char *spool_dir);
void dash_free(struct dash *d); /* NULL is fine; cancels a running walk */
/* Serve the page and the API on http. */
void dash_register(struct dash *d, struct evhttp *http);
/* The token of admin_token_file (len bytes, copied as a digest; NULL or
 * empty: the queue actions are refused and the page is read-only). */
void dash_set_token(struct dash *d, const char *token, size_t len);
/* The counters with the queue and session figures filled in (the main loop;
 * snap->dests stays valid until the loop runs again). */
void dash_snapshot(struct dash *d, struct metrics_snapshot *snap);

#endif

/*
 * libcurl's multi interface driven by libevent: one multi handle per
 * owner, its sockets and timer as events on the owner's loop, so HTTP
 * requests (the event webhook, MTA-STS policies, TLS-RPT reports) never
 * block the loop that delivers mail. Each easy handle added gets exactly
 * one completion callback, unless it is removed first.
 */
#ifndef TERN_CURLEV_H
#define TERN_CURLEV_H

#include <curl/curl.h>

#include "util/buf.h"

struct event_base;
struct curlev;

/* curl_global_init once per process (first caller). 0, or -1 + err. */
int curlev_global_init(struct buf *err);

/* A multi handle on base. NULL + err. */
struct curlev *curlev_new(struct event_base *base, struct buf *err);
/* Every transfer still added is removed (no callback runs) and its easy
 * handle cleaned up. NULL is fine. */
void curlev_free(struct curlev *cv);

/* The transfer of easy ended with res: easy is already out of the multi
 * handle and is the callee's (curl_easy_cleanup it). Runs from the loop,
 * never inside curlev_add; it may add or remove transfers, but must not
 * free cv (other finished transfers are read from it afterwards). */
typedef void (*curlev_done_fn)(void *arg, CURL *easy, CURLcode res);

/* Start easy (configured by the caller; CURLOPT_PRIVATE is curlev's).
 * 0, or -1 (easy stays the caller's). */
int curlev_add(struct curlev *cv, CURL *easy, curlev_done_fn fn, void *arg);
/* Stop easy before its end: fn never runs; easy is the caller's again. */
void curlev_remove(struct curlev *cv, CURL *easy);

/* The settings every tern request shares: no redirects, no signals, a
 * total time bound, TLS peer and host name verified against ca_file (NULL:
 * the system store), protocols limited to protos ("https" or "http,https"). */
void curlev_easy_defaults(CURL *e, const char *protos, long timeout_ms, const char *ca_file);

#endif

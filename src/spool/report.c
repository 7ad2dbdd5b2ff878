/*
 * The JSON line of `ternctl queue list --json` (CONTRACT.md) for one
 * envelope, shared by the daemon (which knows what is being delivered) and
 * ternctl reading a stopped daemon's spool.
 */
#include "spool/spool.h"

#include <inttypes.h>
#include <string.h>

#include "util/util.h"

/* The message's next attempt (Unix seconds: its earliest queued
 * recipient's, now when one is due at once; null when held or nothing is
 * queued) and its age in seconds. */
static void
list_next_age(const struct spool_env *env, int64_t now_ms, struct buf *out)
{
    int64_t next = -1;
    for (size_t i = 0; i < env->n_rcpts && !env->held; i++) {
        int64_t t = env->rcpts[i].next_try_ms > 0 ? env->rcpts[i].next_try_ms : now_ms;
        if (env->rcpts[i].state == RCPT_QUEUED && (next < 0 || t < next))
            next = t;
    }
    if (next >= 0)
        buf_printf(out, ",\"next_attempt\":%" PRId64, next / 1000);
    else
        buf_append_str(out, ",\"next_attempt\":null");
    buf_printf(
        out, ",\"age\":%" PRId64, now_ms > env->arrival_ms ? (now_ms - env->arrival_ms) / 1000 : 0);
}

/* The attempts kept with the message, oldest first (what `queue show`
 * falls back on without the journal). */
static void
attempt_log_json(const struct spool_env *env, struct buf *out)
{
    buf_append_str(out, ",\"attempt_log\":[");
    for (size_t i = 0; i < env->n_attempts; i++) {
        const struct spool_attempt *a = &env->attempts[i];
        const char *t = a->relay != NULL ? strstr(a->relay, " tls=") : NULL;
        buf_printf(out, "%s{\"time\":%" PRId64 ",\"recipient\":", i ? "," : "", a->time_ms / 1000);
        buf_append_json_str(out, a->rcpt < env->n_rcpts ? env->rcpts[a->rcpt].addr : NULL);
        buf_append_str(out, ",\"event\":");
        buf_append_json_str(out, spool_attempt_ev_name(a->ev));
        buf_append_str(out, ",\"relay\":");
        if (t != NULL) {
            buf_append_char(out, '"');
            buf_append_json(out, a->relay, (size_t)(t - a->relay));
            buf_append_char(out, '"');
            /* "tls=VERSION/CIPHER/BITS", then the policy words */
            buf_append_str(out, ",\"tls\":\"");
            buf_append_json(out, t + 5, strcspn(t + 5, " "));
            buf_append_char(out, '"');
        } else {
            buf_append_json_str(out, a->relay);
        }
        buf_append_str(out, ",\"reply\":");
        buf_append_json_str(out, a->reply);
        buf_append_char(out, '}');
    }
    buf_append_char(out, ']');
}

void
spool_env_list_json(const struct spool_env *env, const char *(*status)(size_t idx, void *arg),
    void *arg, struct buf *out)
{
    bool first = true;
    buf_append_str(out, "{\"id\":");
    buf_append_json_str(out, env->qid);
    buf_append_str(out, ",\"sender\":");
    buf_append_json_str(out, env->sender);
    buf_printf(out, ",\"arrival\":%" PRId64 ",\"held\":%s,\"size\":%" PRIu64,
        env->arrival_ms / 1000, env->held ? "true" : "false", env->body_len);
    list_next_age(env, tern_now_ms(), out);
    buf_append_str(out, ",\"recipients\":[");
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        const char *st = status ? status(i, arg) : NULL;
        bool dsn = r->state == RCPT_FAILED_DSN || r->state == RCPT_DELIVERED_DSN;
        if (r->state != RCPT_QUEUED && !dsn)
            continue;
        /* dsn_pending: final, the message waits until its DSN is made */
        if (dsn)
            st = "dsn_pending";
        else if (st == NULL)
            st = r->attempts > 0 ? "deferred" : "queued";
        buf_append_str(out, first ? "{\"address\":" : ",{\"address\":");
        first = false;
        buf_append_json_str(out, r->addr);
        buf_printf(
            out, ",\"status\":\"%s\",\"attempts\":%" PRIu32 ",\"next_attempt\":", st, r->attempts);
        if (r->next_try_ms > 0)
            buf_printf(out, "%" PRId64, r->next_try_ms / 1000);
        else
            buf_append_str(out, "null");
        buf_append_str(out, ",\"last_error\":");
        buf_append_json_str(out, r->last_error);
        /* The always_bcc copy: shown as a recipient, marked as what it is. */
        if (r->kind & RCPT_K_ARCHIVE)
            buf_append_str(out, ",\"archive\":true");
        buf_append_char(out, '}');
    }
    buf_append_char(out, ']');
    if (env->n_attempts > 0)
        attempt_log_json(env, out);
    buf_append_str(out, "}\n");
}

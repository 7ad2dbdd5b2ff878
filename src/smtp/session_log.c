/*
 * The mail log lines of an inbound session, in Postfix's spirit: one when
 * a client connects, one when it leaves (with its HELO name, TLS, AUTH
 * user, the commands it sent by verb with how many failed, the protocol
 * errors and the duration), and one for each refusal (client, HELO name,
 * sender and recipient). The counts are kept here from every command and
 * every reply of the session.
 */
#include <inttypes.h>
#include <stdio.h>

#include "smtp_int.h"
#include "util/log.h"
#include "util/util.h"

/* Keys of the counts, by enum smtp_verb. "helo" is already the client's
 * HELO name on these lines, so the HELO command counts as helo_cmd. */
static const char *const verb_keys[SMTP_V_COUNT] = {
    [SMTP_V_UNKNOWN] = "unknown",
    [SMTP_V_HELO] = "helo_cmd",
    [SMTP_V_EHLO] = "ehlo",
    [SMTP_V_STARTTLS] = "starttls",
    [SMTP_V_AUTH] = "auth",
    [SMTP_V_MAIL] = "mail",
    [SMTP_V_RCPT] = "rcpt",
    [SMTP_V_DATA] = "data",
    [SMTP_V_BDAT] = "bdat",
    [SMTP_V_RSET] = "rset",
    [SMTP_V_NOOP] = "noop",
    [SMTP_V_VRFY] = "vrfy",
    [SMTP_V_EXPN] = "expn",
    [SMTP_V_HELP] = "help",
    [SMTP_V_QUIT] = "quit",
};

/* The order of the counts on the line: as a session goes. */
static const enum smtp_verb verb_order[] = { SMTP_V_HELO, SMTP_V_EHLO, SMTP_V_STARTTLS, SMTP_V_AUTH,
    SMTP_V_MAIL, SMTP_V_RCPT, SMTP_V_DATA, SMTP_V_BDAT, SMTP_V_RSET, SMTP_V_NOOP, SMTP_V_VRFY,
    SMTP_V_EXPN, SMTP_V_HELP, SMTP_V_QUIT, SMTP_V_UNKNOWN };
_Static_assert(sizeof(verb_order) / sizeof(verb_order[0]) == SMTP_V_COUNT, "every verb");

static const char *
role_name(enum smtp_role r)
{
    return r == SMTP_ROLE_SUBMISSION ? "submission" : r == SMTP_ROLE_SMTPS ? "smtps" : "smtp";
}

void
smtp_log_connect(struct smtp_session *s)
{
    struct logline l;
    s->started_ms = tern_mono_ms();
    log_begin(&l, LOG_INFO, NULL, "smtp", "connect");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    log_str(&l, "listener", role_name(s->role));
    log_end(&l);
}

void
smtp_count_command(struct smtp_session *s, enum smtp_verb v)
{
    if ((unsigned)v >= SMTP_V_COUNT)
        v = SMTP_V_UNKNOWN;
    s->cur_verb = v;
    s->cur_failed = false;
    s->counting = true;
    s->cmd_n[v]++;
}

void
smtp_count_reply(struct smtp_session *s, int code)
{
    /* A command fails once, whatever the number of its replies (AUTH and
     * DATA answer twice). */
    if (code >= 400 && s->counting && !s->cur_failed) {
        s->cur_failed = true;
        s->cmd_fail[s->cur_verb]++;
    }
}

/* "n", or "ok/n" (Postfix's form) when some failed. */
static void
log_count(struct logline *l, const char *key, uint32_t n, uint32_t failed)
{
    char v[32];
    if (failed == 0)
        snprintf(v, sizeof(v), "%" PRIu32, n);
    else
        snprintf(v, sizeof(v), "%" PRIu32 "/%" PRIu32, n - failed, n);
    log_str(l, key, v);
}

void
smtp_log_disconnect(struct smtp_session *s)
{
    struct logline l;
    uint32_t total = 0, failed = 0;
    int64_t ms = tern_mono_ms() - s->started_ms;
    char dur[32];
    log_begin(&l, LOG_INFO, NULL, "smtp", "disconnect");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    if (smtp_client_name(s) != NULL)
        log_str(&l, "client_name", smtp_client_name(s));
    if (s->helo != NULL)
        log_str(&l, "helo", s->helo);
    if (s->tls) {
        log_str(&l, "tls", s->tls_info->version);
        log_str(&l, "cipher", s->tls_info->cipher);
    }
    if (s->auth_user != NULL)
        log_str(&l, "user", s->auth_user);
    for (size_t i = 0; i < TERN_ARRAY_LEN(verb_order); i++) {
        enum smtp_verb v = verb_order[i];
        total += s->cmd_n[v];
        failed += s->cmd_fail[v];
        if (s->cmd_n[v] > 0)
            log_count(&l, verb_keys[v], s->cmd_n[v], s->cmd_fail[v]);
    }
    log_count(&l, "commands", total, failed);
    log_int(&l, "errors", (int64_t)s->errors);
    snprintf(dur, sizeof(dur), "%" PRId64 ".%03" PRId64 "s", ms / 1000, ms % 1000);
    log_str(&l, "duration", dur);
    log_end(&l);
}

void
smtp_log_refused(
    struct smtp_session *s, const char *qid, const char *reason, const char *from, const char *to)
{
    struct logline l;
    if (from == NULL && s->tx != NULL && s->tx->env != NULL)
        from = s->tx->env->sender;
    log_begin(&l, LOG_INFO, qid, "smtp", "refused");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "client", s->peer_str);
    if (smtp_client_name(s) != NULL)
        log_str(&l, "client_name", smtp_client_name(s));
    log_str(&l, "helo", s->helo);
    if (from != NULL)
        log_str(&l, "from", from);
    if (to != NULL)
        log_str(&l, "to", to);
    log_str(&l, "reason", reason);
    log_end(&l);
}

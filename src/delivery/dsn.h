/*
 * Delivery status notifications (RFC 3464, RFC 3461, RFC 6533 for SMTPUTF8):
 * which results call for one (a pure decision) and the text of the report.
 * A DSN is an ordinary new message from the null sender <> that enters the
 * spool like any other; a DSN about a DSN (is_bounce) is never made.
 */
#ifndef TERN_DELIVERY_DSN_H
#define TERN_DELIVERY_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "spool/spool.h"
#include "util/status.h"

enum dsn_action { DSN_ACTION_FAILED, DSN_ACTION_DELAYED, DSN_ACTION_DELIVERED, DSN_ACTION_RELAYED };

struct dsn_rcpt_result {
    size_t idx; /* index into the original env->rcpts */
    enum dsn_action action;
    struct tern_status status; /* e.g. 550 5.1.1 "user unknown", or 4.4.7 for expiry */
    const char *remote_mta;    /* borrowed, NULL when none was reached */
    bool from_remote;          /* status is a reply from remote_mta (Diagnostic-Code: smtp;) */
};

/* Should a DSN of this action be sent for this recipient of env?
 * Never when env->is_bounce or the sender is "" (null reverse-path).
 * FAILED: unless NOTIFY was given without FAILURE (or NEVER).
 * DELAYED: unless NOTIFY was given without DELAY (or NEVER).
 * DELIVERED/RELAYED: only with NOTIFY containing SUCCESS. */
bool dsn_wanted(const struct spool_env *env, size_t idx, enum dsn_action action);

/* The envelope of the DSN for orig: sender "", one recipient orig->sender
 * (no NOTIFY), is_bounce = true, smtputf8 as orig. Owned by the caller. */
struct spool_env *dsn_envelope(const struct spool_env *orig);

typedef int (*dsn_write_fn)(void *arg, const void *data, size_t len);

/*
 * Write the whole DSN message (headers and multipart/report body, CRLF line
 * ends) through write(arg, ...). orig is the original envelope, results the
 * recipients to report on. orig_data holds the first orig_avail bytes of the
 * original's content (at least min(orig->body_len, DSN_MAX_RETURN); NULL:
 * no original part): included whole as message/rfc822 when RET=FULL or RET
 * unset and it is at most DSN_MAX_RETURN bytes, else its header section as
 * text/rfc822-headers. dsn_qid names the report in its Message-ID. now_ms
 * dates it. Returns 0, or -1 when write failed or the original was short.
 */
#define DSN_MAX_RETURN (1024 * 1024)
int dsn_write_message(const struct config *cfg, const struct spool_env *orig,
    const struct dsn_rcpt_result *results, size_t n, const char *orig_data, size_t orig_avail,
    const char *dsn_qid, int64_t now_ms, dsn_write_fn write, void *arg);

#endif

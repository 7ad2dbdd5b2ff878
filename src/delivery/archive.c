/*
 * The envelope fields above the always_bcc archive copy (README, "Backup MX
 * / inbound gateway"): who sent the message and to whom, since the archive
 * gets the message byte for byte and its own envelope says neither. A pure
 * function of the stored envelope; the transaction sends its result above
 * the message (client_tx.c).
 */
#include "delivery/delivery.h"

#include <string.h>

#define ARCHIVE_FOLD_AT 78 /* RFC 5322 §2.1.1: lines SHOULD stay within 78 characters */

bool
delivery_is_archive_job(const struct delivery_job *job)
{
    return job->n_rcpts == 1 && job->rcpt_idx[0] < job->env->n_rcpts &&
           (job->env->rcpts[job->rcpt_idx[0]].kind & RCPT_K_ARCHIVE) != 0;
}

void
delivery_archive_head(const struct spool_env *env, struct buf *out)
{
    static const char to[] = "X-Tern-Envelope-To:";
    size_t col = sizeof(to) - 1, last = 0;
    bool first = true;
    buf_append_str(out, "X-Tern-Envelope-From: <");
    buf_append_str(out, env->sender != NULL ? env->sender : "");
    buf_append_str(out, ">\r\n");
    buf_append_str(out, to);
    for (size_t i = 0; i < env->n_rcpts; i++) {
        if (!(env->rcpts[i].kind & RCPT_K_ARCHIVE))
            last = i;
    }
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const char *a = env->rcpts[i].addr;
        size_t n = strlen(a), need;
        if (env->rcpts[i].kind & RCPT_K_ARCHIVE)
            continue; /* the archive does not list itself */
        /* The space before it, the address, and the comma after it unless
         * it is the last. */
        need = 1 + n + (i < last ? 1 : 0);
        /* Fold before an address that would take the line past 78
         * characters (RFC 5322 §2.1.1, §2.2.3): the break goes where white
         * space may be; an address longer than a line stands alone. */
        if (!first && col + need > ARCHIVE_FOLD_AT) {
            buf_append_str(out, "\r\n");
            col = 0;
        }
        buf_append_char(out, ' ');
        buf_append(out, a, n);
        if (i < last)
            buf_append_char(out, ',');
        col += need;
        first = false;
    }
    buf_append_str(out, "\r\n");
}

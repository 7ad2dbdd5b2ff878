/*
 * The MAIL and RCPT command lines of an outbound transaction (RFC 5321
 * §4.1.1.2, §4.1.1.3) with the parameters the server's extensions allow:
 * SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), and the DSN
 * parameters passed on (RFC 3461). Pure: no I/O.
 */
#include "delivery/delivery_int.h"

#include <inttypes.h>
#include <string.h>

#include "util/util.h"

#define ESMTP_ENVID_MAX 100 /* RFC 3461 §4.4 */

bool
deliv_addr_sendable(const char *a, size_t max)
{
    size_t n = strnlen(a, max + 1);
    if (n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)a[i];
        if (ch < 0x20 || ch == 0x7f)
            return false;
    }
    return true;
}

/* xtext values (ENVID, ORCPT) go out as given: printable, no space, no '='
 * except ORCPT's ';' form; anything else is dropped rather than sent. */
static bool
xtext_sendable(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '=')
            return false;
    }
    return true;
}

void
deliv_put_mail(const struct ehlo_ext *e, const struct spool_env *env, uint64_t size, struct buf *b)
{
    buf_printf(b, "MAIL FROM:<%s>", env->sender);
    if (e->size)
        buf_printf(b, " SIZE=%" PRIu64, size);
    if (env->body != BODY_7BIT && e->eightbitmime)
        buf_append_str(b, " BODY=8BITMIME");
    if (env->smtputf8)
        buf_append_str(b, " SMTPUTF8");
    if (e->dsn) {
        /* RFC 3461 §4.3, §4.4: pass the client's DSN request on. */
        if (env->ret != DSN_RET_UNSET)
            buf_append_str(b, env->ret == DSN_RET_FULL ? " RET=FULL" : " RET=HDRS");
        if (env->envid != NULL && xtext_sendable(env->envid, ESMTP_ENVID_MAX))
            buf_printf(b, " ENVID=%s", env->envid);
    }
    buf_append_str(b, "\r\n");
}

void
deliv_put_rcpt(const struct ehlo_ext *e, const struct spool_rcpt *r, struct buf *b)
{
    buf_printf(b, "RCPT TO:<%s>", r->addr);
    if (e->dsn && r->notify != 0) {
        /* RFC 3461 §4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY. */
        if (r->notify & DSN_NOTIFY_NEVER) {
            buf_append_str(b, " NOTIFY=NEVER");
        } else {
            const char *sep = " NOTIFY=";
            static const struct {
                unsigned bit;
                const char *name;
            } bits[] = { { DSN_NOTIFY_SUCCESS, "SUCCESS" }, { DSN_NOTIFY_FAILURE, "FAILURE" },
                { DSN_NOTIFY_DELAY, "DELAY" } };
            for (size_t i = 0; i < TERN_ARRAY_LEN(bits); i++) {
                if (r->notify & bits[i].bit) {
                    buf_printf(b, "%s%s", sep, bits[i].name);
                    sep = ",";
                }
            }
        }
    }
    if (e->dsn && r->orcpt != NULL && deliv_addr_sendable(r->orcpt, DELIV_ADDR_SEND_MAX) &&
        strchr(r->orcpt, ' ') == NULL)
        buf_printf(b, " ORCPT=%s", r->orcpt);
    buf_append_str(b, "\r\n");
}

/*
 * Pure parsers for the SMTP server: command lines, paths (RFC 5321 §4.1.2),
 * ESMTP parameters of MAIL and RCPT (SIZE, BODY, SMTPUTF8, RET, ENVID,
 * NOTIFY, ORCPT) and xtext (RFC 3461 §4). No I/O, no allocation except the
 * strings handed out (caller owns). Every length is bounded here.
 */
#ifndef TERN_PROTO_PARSE_H
#define TERN_PROTO_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool/spool.h"
#include "util/status.h"

#define SMTP_CMD_LINE_MAX 512 /* RFC 5321 §4.5.3.1.4, including CRLF */
#define SMTP_PATH_MAX     256 /* §4.5.3.1.3, including <> */
#define SMTP_LOCAL_MAX    64  /* §4.5.3.1.1 */
#define SMTP_DOMAIN_MAX   255 /* §4.5.3.1.2 */

enum smtp_verb {
    SMTP_V_UNKNOWN,
    SMTP_V_HELO,
    SMTP_V_EHLO,
    SMTP_V_MAIL,
    SMTP_V_RCPT,
    SMTP_V_DATA,
    SMTP_V_BDAT,
    SMTP_V_RSET,
    SMTP_V_NOOP,
    SMTP_V_QUIT,
    SMTP_V_VRFY,
    SMTP_V_EXPN,
    SMTP_V_HELP,
    SMTP_V_STARTTLS,
    SMTP_V_AUTH,
};

struct smtp_cmd {
    enum smtp_verb verb;
    /* Borrowed pointer into the line: for MAIL/RCPT the text after "FROM:" /
     * "TO:" (leading spaces skipped), otherwise after the verb and one or
     * more spaces. arg_len 0 when none. */
    const char *arg;
    size_t arg_len;
};

/* Parse one command line (without its CRLF). Verbs are case-insensitive.
 * MAIL must be "MAIL FROM:" and RCPT "RCPT TO:" (a space before the path is
 * tolerated). Returns 0, or -1 with st set (500 5.5.2 unknown/garbled,
 * 501 5.5.4 bad arguments). A NUL byte in the line is -1 (500 5.5.2). */
int smtp_parse_cmd(const char *line, size_t len, struct smtp_cmd *out, struct tern_status *st);

/* Parse a path "<...>" at the start of s: optional A-d-l source route
 * (ignored), local part as dot-string or quoted-string, '@', domain or
 * address literal ([1.2.3.4], [IPv6:...]). With utf8, UTF-8 is allowed in
 * the local part and domain (RFC 6531). allow_null: "<>" gives "". On
 * success *addr is the owned address without brackets (quoted local parts
 * kept as written) and *consumed the bytes used (then params may follow
 * after a space). -1 with st set (501 5.1.7 bad sender / 501 5.1.3 bad
 * recipient syntax, per is_rcpt). "postmaster" alone (no domain) is
 * accepted only when is_rcpt (RFC 5321 §4.1.1.3). */
int smtp_parse_path(const char *s, size_t len, bool allow_null, bool is_rcpt, bool utf8,
    char **addr, size_t *consumed, struct tern_status *st);

struct smtp_mail_params {
    bool has_size;
    uint64_t size;
    enum body_type body;
    bool smtputf8;
    enum dsn_ret ret;
    char *envid; /* owned or NULL; xtext as given, validated */
};

struct smtp_rcpt_params {
    unsigned notify; /* DSN_NOTIFY_* bits, 0 when not given */
    char *orcpt;     /* owned or NULL: "addr-type;xtext" as given, validated */
};

/* Parse the space separated keyword[=value] list after the path. Keywords
 * are case-insensitive; unknown keyword: 555 5.5.4; a repeated keyword or a
 * bad value: 501 5.5.4. NOTIFY=NEVER may not be combined with others. */
int smtp_parse_mail_params(
    const char *s, size_t len, struct smtp_mail_params *p, struct tern_status *st);
int smtp_parse_rcpt_params(
    const char *s, size_t len, struct smtp_rcpt_params *p, struct tern_status *st);
void smtp_mail_params_fini(struct smtp_mail_params *p);
void smtp_rcpt_params_fini(struct smtp_rcpt_params *p);

/* Is s valid xtext (RFC 3461 §4: "+" followed by two upper-case hex digits,
 * other chars in 33..126 except "+" and "=")? Decode into out (owned). */
bool xtext_valid(const char *s, size_t len);
int xtext_decode(const char *s, size_t len, char **out);
/* Encode s as xtext (owned result). */
char *xtext_encode(const char *s);

/* The domain part of an address (after the last '@'), or "" when none. */
const char *addr_domain(const char *addr);

#endif

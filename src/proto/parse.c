/*
 * Pure SMTP parsers: command line and verb, MAIL/RCPT paths (RFC 5321
 * §4.1.2, RFC 6531), ESMTP parameters (RFC 1870, 6152, 6531, 3461, 4954) and
 * xtext. Input is (ptr, len) and never trusted; every scan is bounded by len
 * and by the RFC limits in parse.h. Strings handed out are owned by the caller.
 */
#include "proto/parse.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/util.h"

/* ---------- character classes ---------- */

static bool
is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static unsigned char
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* ASCII case-insensitive: does s[0..len) equal the C string w? */
static bool
ieq(const char *s, size_t len, const char *w)
{
    size_t i;
    if (strlen(w) != len)
        return false;
    for (i = 0; i < len; i++) {
        if (lower((unsigned char)s[i]) != lower((unsigned char)w[i]))
            return false;
    }
    return true;
}

/* atext of RFC 5322 §3.2.3 as used by RFC 5321 §4.1.2. */
static bool
is_atext(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/*
 * Length of the well-formed UTF-8 sequence at s (2..4), or 0. Rejects
 * continuation bytes as leaders, overlongs (C0, C1, E0 80..9F, F0 80..8F),
 * surrogates (ED A0..BF) and code points above U+10FFFF (F4 90.., F5..FF).
 */
static size_t
utf8_seq(const unsigned char *s, size_t len)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t n, i;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4;
    else
        return 0;
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    }
    return n;
}

/* ---------- command line ---------- */

#define SMTP_AUTH_LINE_MAX 12288 /* RFC 4954 §4, including CRLF */

enum arg_rule { ARG_NONE, ARG_OPT, ARG_REQ };

struct verb_def {
    const char *name;
    enum smtp_verb verb;
    enum arg_rule arg; /* RFC 5321 §4.1.1, RFC 3207, RFC 3030, RFC 4954 */
};

static const struct verb_def verbs[] = {
    { "HELO", SMTP_V_HELO, ARG_REQ },
    { "EHLO", SMTP_V_EHLO, ARG_REQ },
    { "MAIL", SMTP_V_MAIL, ARG_REQ },
    { "RCPT", SMTP_V_RCPT, ARG_REQ },
    { "DATA", SMTP_V_DATA, ARG_NONE },
    { "BDAT", SMTP_V_BDAT, ARG_REQ },
    { "RSET", SMTP_V_RSET, ARG_NONE },
    { "NOOP", SMTP_V_NOOP, ARG_OPT },
    { "QUIT", SMTP_V_QUIT, ARG_NONE },
    { "VRFY", SMTP_V_VRFY, ARG_REQ },
    { "EXPN", SMTP_V_EXPN, ARG_REQ },
    { "HELP", SMTP_V_HELP, ARG_OPT },
    { "STARTTLS", SMTP_V_STARTTLS, ARG_NONE },
    { "AUTH", SMTP_V_AUTH, ARG_REQ },
};

static const struct verb_def *
verb_lookup(const char *s, size_t len)
{
    size_t i;
    for (i = 0; i < TERN_ARRAY_LEN(verbs); i++) {
        if (ieq(s, len, verbs[i].name))
            return &verbs[i];
    }
    return NULL;
}

/* "FROM:" / "TO:" after MAIL / RCPT; sets *pos past the colon and spaces. */
static int
cmd_path_prefix(const char *line, size_t len, size_t *pos, const char *kw)
{
    size_t i = *pos, kl = strlen(kw);
    if (len - i < kl || !ieq(line + i, kl, kw))
        return -1;
    i += kl;
    /* RFC 5321 says no space after the colon; many clients send one. */
    while (i < len && line[i] == ' ')
        i++;
    *pos = i;
    return 0;
}

int
smtp_parse_cmd(const char *line, size_t len, struct smtp_cmd *out, struct tern_status *st)
{
    const struct verb_def *vd;
    size_t i = 0, end = len;

    out->verb = SMTP_V_UNKNOWN;
    out->arg = NULL;
    out->arg_len = 0;
    /* A NUL, CR or LF inside a command line is never legitimate. */
    if (memchr(line, '\0', len) || memchr(line, '\r', len) || memchr(line, '\n', len)) {
        STATUS_SET(st, 500, "5.5.2", "Syntax error, command unrecognized");
        return -1;
    }
    while (end > 0 && (line[end - 1] == ' ' || line[end - 1] == '\t'))
        end--;
    while (i < end && is_alpha((unsigned char)line[i]))
        i++;
    vd = (i < end && line[i] != ' ') ? NULL : verb_lookup(line, i);
    if (vd == NULL) {
        STATUS_SET(st, 500, "5.5.2", "Syntax error, command unrecognized");
        return -1;
    }
    out->verb = vd->verb;
    /* RFC 4954 §4: AUTH with an initial response may exceed 512 octets. */
    if (len > (vd->verb == SMTP_V_AUTH ? SMTP_AUTH_LINE_MAX : SMTP_CMD_LINE_MAX) - 2) {
        STATUS_SET(st, 500, "5.5.2", "Line too long");
        return -1;
    }
    while (i < end && line[i] == ' ')
        i++;
    if (vd->verb == SMTP_V_MAIL || vd->verb == SMTP_V_RCPT) {
        const char *kw = vd->verb == SMTP_V_MAIL ? "FROM:" : "TO:";
        if (cmd_path_prefix(line, end, &i, kw) < 0 || i == end) {
            STATUS_SET(st, 501, "5.5.4", "Syntax: %s %s<address>",
                vd->verb == SMTP_V_MAIL ? "MAIL" : "RCPT", kw);
            return -1;
        }
    }
    if (i < end) {
        out->arg = line + i;
        out->arg_len = end - i;
    }
    if (vd->arg == ARG_NONE && out->arg_len > 0) {
        STATUS_SET(st, 501, "5.5.4", "Syntax: %s takes no parameters", vd->name);
        return -1;
    }
    if (vd->arg == ARG_REQ && out->arg_len == 0) {
        STATUS_SET(st, 501, "5.5.4", "Syntax: %s needs an argument", vd->name);
        return -1;
    }
    return 0;
}

/* ---------- paths ---------- */

struct cur {
    const unsigned char *s;
    size_t len; /* scan limit */
    size_t i;
    bool utf8;
    bool nonascii; /* failed on a non-ASCII byte without SMTPUTF8 */
    const char *why;
};

static int
cur_fail(struct cur *c, const char *why)
{
    if (c->why == NULL)
        c->why = why;
    return -1;
}

/* Consume one UTF-8 sequence at c->i when allowed; 1 if consumed, 0 if the
 * byte is ASCII, -1 on an invalid or unpermitted sequence. */
static int
cur_utf8(struct cur *c)
{
    size_t n;
    if (c->s[c->i] < 0x80)
        return 0;
    if (!c->utf8) {
        c->nonascii = true;
        return cur_fail(c, "non-ASCII address without SMTPUTF8");
    }
    n = utf8_seq(c->s + c->i, c->len - c->i);
    if (n == 0)
        return cur_fail(c, "invalid UTF-8");
    c->i += n;
    return 1;
}

/* Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str]
 * (RFC 5321 §4.1.2); U-labels as raw UTF-8 with SMTPUTF8 (RFC 6531 §3.3). */
static int
parse_domain(struct cur *c)
{
    size_t start = c->i, label = c->i;
    int r;
    for (;;) {
        if (c->i < c->len && (r = cur_utf8(c)) != 0) {
            if (r < 0)
                return -1;
        } else if (c->i < c->len &&
                   (is_alpha(c->s[c->i]) || is_digit(c->s[c->i]) || c->s[c->i] == '-')) {
            if (c->s[c->i] == '-' && c->i == label)
                return cur_fail(c, "domain label starts with '-'");
            c->i++;
        } else {
            if (c->i == label)
                return cur_fail(c, "empty domain label");
            if (c->s[c->i - 1] == '-')
                return cur_fail(c, "domain label ends with '-'");
            if (c->i - label > 63)
                return cur_fail(c, "domain label too long");
            if (c->i >= c->len || c->s[c->i] != '.')
                break;
            label = ++c->i;
        }
    }
    if (c->i - start > SMTP_DOMAIN_MAX)
        return cur_fail(c, "domain too long");
    return 0;
}

/* IPv4-address-literal = Snum 3("." Snum), Snum = 1*3DIGIT, 0..255. */
static bool
ipv4_literal(const unsigned char *s, size_t len)
{
    size_t i = 0;
    int part;
    for (part = 0; part < 4; part++) {
        unsigned v = 0, nd = 0;
        if (part > 0) {
            if (i >= len || s[i] != '.')
                return false;
            i++;
        }
        while (i < len && is_digit(s[i]) && nd < 3) {
            v = v * 10 + (unsigned)(s[i] - '0');
            nd++;
            i++;
        }
        if (nd == 0 || v > 255)
            return false;
    }
    return i == len;
}

/* address-literal = "[" ( IPv4 / "IPv6:" IPv6-addr / General ) "]". Only the
 * IPv6 tag is registered, so other General-address-literals are refused. */
static int
parse_addr_literal(struct cur *c)
{
    const unsigned char *p = c->s + c->i + 1;
    size_t n = 0, avail = c->len - c->i - 1;
    char tmp[64];
    struct in6_addr a6;

    while (n < avail && p[n] != ']') {
        if (p[n] < 33 || p[n] > 126 || p[n] == '[' || p[n] == '\\')
            return cur_fail(c, "bad address literal");
        n++;
    }
    if (n == avail)
        return cur_fail(c, "unterminated address literal");
    if (n > 5 && ieq((const char *)p, 5, "IPv6:")) {
        if (n - 5 >= sizeof(tmp))
            return cur_fail(c, "bad IPv6 address literal");
        memcpy(tmp, p + 5, n - 5);
        tmp[n - 5] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return cur_fail(c, "bad IPv6 address literal");
    } else if (!ipv4_literal(p, n)) {
        return cur_fail(c, "bad address literal");
    }
    c->i += n + 2;
    return 0;
}

/* Quoted-string = DQUOTE *QcontentSMTP DQUOTE (RFC 5321 §4.1.2). */
static int
parse_quoted(struct cur *c)
{
    int r;
    c->i++;
    for (;;) {
        unsigned char ch;
        if (c->i >= c->len)
            return cur_fail(c, "unterminated quoted string");
        ch = c->s[c->i];
        if (ch == '"') {
            c->i++;
            return 0;
        }
        if (ch == '\\') {
            /* quoted-pairSMTP = %d92 %d32-126 */
            if (c->i + 1 >= c->len || c->s[c->i + 1] < 32 || c->s[c->i + 1] > 126)
                return cur_fail(c, "bad quoted pair");
            c->i += 2;
        } else if ((r = cur_utf8(c)) != 0) {
            if (r < 0)
                return -1;
        } else if (ch >= 32 && ch <= 126) {
            c->i++;
        } else {
            return cur_fail(c, "bad character in quoted string");
        }
    }
}

/* Dot-string = Atom *("." Atom); atext plus UTF-8 with SMTPUTF8. */
static int
parse_dot_string(struct cur *c)
{
    size_t atom = c->i;
    int r;
    for (;;) {
        if (c->i < c->len && (r = cur_utf8(c)) != 0) {
            if (r < 0)
                return -1;
        } else if (c->i < c->len && is_atext(c->s[c->i])) {
            c->i++;
        } else {
            if (c->i == atom)
                return cur_fail(c, "empty atom in local part");
            if (c->i >= c->len || c->s[c->i] != '.')
                return 0;
            atom = ++c->i;
        }
    }
}

/* A-d-l = At-domain *( "," At-domain ) ":" — parsed and ignored (§4.1.2, C.). */
static int
parse_source_route(struct cur *c)
{
    for (;;) {
        if (c->i >= c->len || c->s[c->i] != '@')
            return cur_fail(c, "bad source route");
        c->i++;
        if (parse_domain(c) < 0)
            return -1;
        if (c->i < c->len && c->s[c->i] == ',') {
            c->i++;
            continue;
        }
        if (c->i < c->len && c->s[c->i] == ':') {
            c->i++;
            return 0;
        }
        return cur_fail(c, "bad source route");
    }
}

/* Mailbox after an optional route; sets *mbox to its first byte. */
static int
parse_mailbox(struct cur *c, bool is_rcpt, size_t *mbox)
{
    size_t lstart;
    if (c->i < c->len && c->s[c->i] == '@' && parse_source_route(c) < 0)
        return -1;
    *mbox = lstart = c->i;
    if (c->i < c->len && c->s[c->i] == '"') {
        if (parse_quoted(c) < 0)
            return -1;
    } else if (parse_dot_string(c) < 0) {
        return -1;
    }
    if (c->i - lstart > SMTP_LOCAL_MAX)
        return cur_fail(c, "local part too long");
    if (c->i < c->len && c->s[c->i] == '>' && is_rcpt && lstart == 1 &&
        ieq((const char *)c->s + lstart, c->i - lstart, "postmaster"))
        return 0; /* RFC 5321 §4.1.1.3: "<Postmaster>" without a domain */
    if (c->i >= c->len || c->s[c->i] != '@')
        return cur_fail(c, "missing '@domain'");
    c->i++;
    if (c->i < c->len && c->s[c->i] == '[')
        return parse_addr_literal(c);
    return parse_domain(c);
}

static void
path_error(const struct cur *c, bool is_rcpt, struct tern_status *st)
{
    const char *what = is_rcpt ? "recipient" : "sender";
    if (c->nonascii) {
        /* RFC 6531 §3.7.4.1 */
        STATUS_SET(st, 553, "5.6.7", "Non-ASCII %s address not permitted without SMTPUTF8", what);
        return;
    }
    STATUS_SET(st, 501, is_rcpt ? "5.1.3" : "5.1.7", "Bad %s address syntax: %s", what,
        c->why ? c->why : "syntax error");
}

int
smtp_parse_path(const char *s, size_t len, bool allow_null, bool is_rcpt, bool utf8, char **addr,
    size_t *consumed, struct tern_status *st)
{
    struct cur c = { (const unsigned char *)s, len, 0, utf8, false, NULL };
    size_t mbox = 1;

    *addr = NULL;
    *consumed = 0;
    /* The whole path, route and brackets included, is at most 256 octets
     * (RFC 5321 §4.5.3.1.3): never scan beyond that. */
    if (c.len > SMTP_PATH_MAX)
        c.len = SMTP_PATH_MAX;
    if (c.len == 0 || c.s[0] != '<') {
        cur_fail(&c, "missing '<'");
    } else if (c.len >= 2 && c.s[1] == '>') {
        if (!allow_null)
            cur_fail(&c, "null address not allowed here");
        c.i = mbox = 1;
    } else {
        c.i = 1;
        if (parse_mailbox(&c, is_rcpt, &mbox) == 0 && (c.i >= c.len || c.s[c.i] != '>'))
            cur_fail(&c, "missing '>'");
        if (c.why != NULL && !c.nonascii && len > SMTP_PATH_MAX && c.i >= c.len)
            c.why = "path too long";
    }
    /* c.i is at the '>' now; parameters may follow after a space. */
    if (c.why == NULL && c.i + 1 < len && s[c.i + 1] != ' ')
        cur_fail(&c, "junk after '>'");
    if (c.why != NULL) {
        path_error(&c, is_rcpt, st);
        return -1;
    }
    *addr = xstrndup(s + mbox, c.i - mbox);
    *consumed = c.i + 1;
    return 0;
}

/* ---------- xtext (RFC 3461 §4) ---------- */

static int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1; /* lower case is not xtext */
}

bool
xtext_valid(const char *s, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '+') {
            if (len - i < 3 || hexval((unsigned char)s[i + 1]) < 0 ||
                hexval((unsigned char)s[i + 2]) < 0)
                return false;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return false;
        }
    }
    return true;
}

/* Decoded text is a C string, so "+00" (an embedded NUL) is refused. */
int
xtext_decode(const char *s, size_t len, char **out)
{
    char *d;
    size_t i, n = 0;
    *out = NULL;
    if (!xtext_valid(s, len))
        return -1;
    d = xmalloc(len + 1);
    for (i = 0; i < len; i++) {
        if (s[i] == '+') {
            int v = hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]);
            if (v == 0) {
                free(d);
                return -1;
            }
            d[n++] = (char)v;
            i += 2;
        } else {
            d[n++] = s[i];
        }
    }
    d[n] = '\0';
    *out = d;
    return 0;
}

char *
xtext_encode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i, n = strlen(s), cap;
    char *d;
    if (!size_mul(n, 3, &cap) || !size_add(cap, 1, &cap))
        tern_panic("xtext_encode: size overflow");
    d = xmalloc(cap);
    for (i = 0, n = 0; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 33 || c > 126 || c == '+' || c == '=') {
            d[n++] = '+';
            d[n++] = hex[c >> 4];
            d[n++] = hex[c & 15];
        } else {
            d[n++] = (char)c;
        }
    }
    d[n] = '\0';
    return d;
}

const char *
addr_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : "";
}

/* ---------- ESMTP parameters ---------- */

#define ENVID_MAX 100 /* RFC 3461 §4.4 */
#define ORCPT_MAX 500 /* RFC 3461 §4.2 */

/* Result of a keyword handler: 0 ok, -1 bad value (501), -2 not offered (555). */
typedef int (*param_fn)(const char *v, size_t vlen, bool has_v, void *p);

struct param_def {
    const char *kw;
    param_fn fn;
    unsigned bit; /* to detect repeats */
};

static int
p_size(const char *v, size_t n, bool has_v, void *vp)
{
    struct smtp_mail_params *p = vp;
    uint64_t x = 0;
    size_t i;
    /* size-value = 1*20DIGIT (RFC 1870 §3); a value beyond uint64 is
     * saturated so the session answers 552, as for any other large size. */
    if (!has_v || n == 0 || n > 20)
        return -1;
    for (i = 0; i < n; i++) {
        if (!is_digit((unsigned char)v[i]))
            return -1;
        unsigned d = (unsigned)(v[i] - '0');
        x = x > (UINT64_MAX - d) / 10 ? UINT64_MAX : x * 10 + d;
    }
    p->has_size = true;
    p->size = x;
    return 0;
}

static int
p_body(const char *v, size_t n, bool has_v, void *vp)
{
    struct smtp_mail_params *p = vp;
    if (!has_v)
        return -1;
    if (ieq(v, n, "7BIT"))
        p->body = BODY_7BIT;
    else if (ieq(v, n, "8BITMIME"))
        p->body = BODY_8BITMIME;
    else if (ieq(v, n, "BINARYMIME"))
        return -2; /* RFC 3030: CHUNKING+BINARYMIME is not offered */
    else
        return -1;
    return 0;
}

static int
p_smtputf8(const char *v, size_t n, bool has_v, void *vp)
{
    struct smtp_mail_params *p = vp;
    if (has_v)
        return -1; /* RFC 6531 §3.4: no value */
    p->smtputf8 = true;
    return 0;
}

static int
p_ret(const char *v, size_t n, bool has_v, void *vp)
{
    struct smtp_mail_params *p = vp;
    if (has_v && ieq(v, n, "FULL"))
        p->ret = DSN_RET_FULL;
    else if (has_v && ieq(v, n, "HDRS"))
        p->ret = DSN_RET_HDRS;
    else
        return -1;
    return 0;
}

static int
p_envid(const char *v, size_t n, bool has_v, void *vp)
{
    struct smtp_mail_params *p = vp;
    if (!has_v || n == 0 || n > ENVID_MAX || !xtext_valid(v, n))
        return -1;
    p->envid = xstrndup(v, n);
    return 0;
}

/* RFC 4954 §5: AUTH=<xtext> or AUTH=<>; accepted and ignored. */
static int
p_auth(const char *v, size_t n, bool has_v, void *vp)
{
    if (!has_v || n == 0)
        return -1;
    if (n == 2 && v[0] == '<' && v[1] == '>')
        return 0;
    return xtext_valid(v, n) ? 0 : -1;
}

static int
p_notify(const char *v, size_t n, bool has_v, void *vp)
{
    static const struct {
        const char *name;
        unsigned bit;
    } kinds[] = { { "NEVER", DSN_NOTIFY_NEVER }, { "SUCCESS", DSN_NOTIFY_SUCCESS },
        { "FAILURE", DSN_NOTIFY_FAILURE }, { "DELAY", DSN_NOTIFY_DELAY } };
    struct smtp_rcpt_params *p = vp;
    unsigned bits = 0;
    size_t i = 0, k;

    if (!has_v)
        return -1;
    while (i <= n) {
        size_t e = i;
        unsigned bit = 0;
        while (e < n && v[e] != ',')
            e++;
        for (k = 0; k < TERN_ARRAY_LEN(kinds); k++) {
            if (ieq(v + i, e - i, kinds[k].name))
                bit = kinds[k].bit;
        }
        if (bit == 0 || (bits & bit))
            return -1;
        bits |= bit;
        i = e + 1;
    }
    /* RFC 3461 §4.1: NEVER stands alone. */
    if ((bits & DSN_NOTIFY_NEVER) && bits != DSN_NOTIFY_NEVER)
        return -1;
    p->notify = bits;
    return 0;
}

/* ORCPT=addr-type ";" xtext, addr-type an atom (RFC 3461 §4.2). */
static int
p_orcpt(const char *v, size_t n, bool has_v, void *vp)
{
    struct smtp_rcpt_params *p = vp;
    const char *semi;
    size_t i, tl;
    if (!has_v || n > ORCPT_MAX || (semi = memchr(v, ';', n)) == NULL)
        return -1;
    tl = (size_t)(semi - v);
    if (tl == 0 || tl + 1 == n)
        return -1;
    for (i = 0; i < tl; i++) {
        if (!is_atext((unsigned char)v[i]))
            return -1;
    }
    if (!xtext_valid(semi + 1, n - tl - 1))
        return -1;
    p->orcpt = xstrndup(v, n);
    return 0;
}

static const struct param_def mail_params[] = {
    { "SIZE", p_size, 1u << 0 },
    { "BODY", p_body, 1u << 1 },
    { "SMTPUTF8", p_smtputf8, 1u << 2 },
    { "RET", p_ret, 1u << 3 },
    { "ENVID", p_envid, 1u << 4 },
    { "AUTH", p_auth, 1u << 5 },
};

static const struct param_def rcpt_params[] = {
    { "NOTIFY", p_notify, 1u << 0 },
    { "ORCPT", p_orcpt, 1u << 1 },
};

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
static bool
keyword_ok(const char *k, size_t n)
{
    size_t i;
    if (n == 0)
        return false;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (!is_alpha(c) && !is_digit(c) && (c != '-' || i == 0))
            return false;
    }
    return true;
}

/* One "keyword[=value]" token; esmtp-value = 1*(%d33-60 / %d62-126). */
static int
param_one(const char *t, size_t n, const struct param_def *defs, size_t ndefs, unsigned *seen,
    void *p, struct tern_status *st)
{
    const char *eq = memchr(t, '=', n);
    size_t kl = eq ? (size_t)(eq - t) : n, i;
    const char *v = eq ? eq + 1 : NULL;
    size_t vl = eq ? n - kl - 1 : 0;
    int r;

    if (!keyword_ok(t, kl) || (eq && vl == 0) || (eq && memchr(v, '=', vl))) {
        STATUS_SET(st, 501, "5.5.4", "Syntax error in parameters");
        return -1;
    }
    for (i = 0; i < vl; i++) {
        if ((unsigned char)v[i] < 33 || (unsigned char)v[i] > 126) {
            STATUS_SET(st, 501, "5.5.4", "Syntax error in parameters");
            return -1;
        }
    }
    for (i = 0; i < ndefs; i++) {
        if (!ieq(t, kl, defs[i].kw))
            continue;
        if (*seen & defs[i].bit) {
            STATUS_SET(st, 501, "5.5.4", "Parameter %s given twice", defs[i].kw);
            return -1;
        }
        *seen |= defs[i].bit;
        r = defs[i].fn(v, vl, eq != NULL, p);
        if (r == -2)
            STATUS_SET(st, 555, "5.5.4", "%s=%.*s not supported", defs[i].kw, (int)vl, v);
        else if (r < 0)
            STATUS_SET(st, 501, "5.5.4", "Bad value for parameter %s", defs[i].kw);
        return r < 0 ? -1 : 0;
    }
    STATUS_SET(st, 555, "5.5.4", "Parameter %.*s not recognized", (int)(kl > 32 ? 32 : kl), t);
    return -1;
}

static int
params_parse(const char *s, size_t len, const struct param_def *defs, size_t ndefs, void *p,
    struct tern_status *st)
{
    unsigned seen = 0;
    size_t i = 0;
    if (len > SMTP_CMD_LINE_MAX) {
        STATUS_SET(st, 501, "5.5.4", "Parameters too long");
        return -1;
    }
    while (i < len) {
        size_t e;
        if (s[i] == ' ') {
            i++;
            continue;
        }
        e = i;
        while (e < len && s[e] != ' ')
            e++;
        if (param_one(s + i, e - i, defs, ndefs, &seen, p, st) < 0)
            return -1;
        i = e;
    }
    return 0;
}

int
smtp_parse_mail_params(
    const char *s, size_t len, struct smtp_mail_params *p, struct tern_status *st)
{
    memset(p, 0, sizeof(*p));
    p->body = BODY_7BIT;
    p->ret = DSN_RET_UNSET;
    if (params_parse(s, len, mail_params, TERN_ARRAY_LEN(mail_params), p, st) < 0) {
        smtp_mail_params_fini(p);
        return -1;
    }
    return 0;
}

int
smtp_parse_rcpt_params(
    const char *s, size_t len, struct smtp_rcpt_params *p, struct tern_status *st)
{
    memset(p, 0, sizeof(*p));
    if (params_parse(s, len, rcpt_params, TERN_ARRAY_LEN(rcpt_params), p, st) < 0) {
        smtp_rcpt_params_fini(p);
        return -1;
    }
    return 0;
}

void
smtp_mail_params_fini(struct smtp_mail_params *p)
{
    FREE_NULL(&p->envid);
}

void
smtp_rcpt_params_fini(struct smtp_rcpt_params *p)
{
    FREE_NULL(&p->orcpt);
}

/*
 * Delivery status notifications: the pure "is one due" decision, the DSN
 * envelope and the RFC 3464 multipart/report text. Untrusted text (remote
 * replies, addresses, HELO, ENVID/ORCPT) is cleaned before it is written so
 * it cannot start a header, a MIME boundary or an overlong line; the
 * original message is streamed from the spool file in chunks with pread.
 */
#include "delivery/dsn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/fsutil.h"
#include "util/parse.h"
#include "util/util.h"

#define DSN_WIDTH          76   /* preferred line width */
#define DSN_LINE_MAX       900  /* hard cap of our own lines (RFC 5322 §2.1.1 allows 998) */
#define DSN_ORIG_LINE      998  /* cap of returned original lines, CRLF excluded */
#define DSN_FIELD_MAX      1000 /* bytes of one untrusted value that we look at */
#define DSN_CHUNK          (64 * 1024)
#define DSN_TOKEN_MAX      64 /* qid and host parts of the boundary and Message-ID */
#define DSN_BOUNDARY_TRIES 10

/* ---------- decision and envelope ---------- */

bool
dsn_wanted(const struct spool_env *env, size_t idx, enum dsn_action action)
{
    if (env == NULL || idx >= env->n_rcpts)
        return false;
    /* RFC 3461 §6.2 / RFC 3464 §1: never report on a report, never to <>. */
    if (env->is_bounce || env->sender == NULL || env->sender[0] == '\0')
        return false;
    unsigned notify = env->rcpts[idx].notify;
    if (notify & DSN_NOTIFY_NEVER)
        return false;
    switch (action) {
    case DSN_ACTION_FAILED:
        return notify == 0 || (notify & DSN_NOTIFY_FAILURE) != 0;
    case DSN_ACTION_DELAYED:
        /* RFC 3461 §4.1 leaves the default to the MTA (FAILURE, or
         * FAILURE,DELAY); tern warns of delays by default, as Postfix does
         * with delay_warning_time set. */
        return notify == 0 || (notify & DSN_NOTIFY_DELAY) != 0;
    case DSN_ACTION_DELIVERED:
    case DSN_ACTION_RELAYED:
        return (notify & DSN_NOTIFY_SUCCESS) != 0;
    }
    return false;
}

struct spool_env *
dsn_envelope(const struct spool_env *orig)
{
    if (orig == NULL || orig->sender == NULL || orig->sender[0] == '\0')
        return NULL; /* nobody to tell: a bug in the caller, never a DSN to <> */
    struct spool_env *env = xcalloc(1, sizeof(*env));
    env->sender = xstrdup("");
    env->ret = DSN_RET_UNSET;
    env->smtputf8 = orig->smtputf8;
    /* The returned original may carry 8-bit text; SMTPUTF8 implies 8-bit too. */
    env->body = (orig->smtputf8 || orig->body != BODY_7BIT) ? BODY_8BITMIME : BODY_7BIT;
    env->is_bounce = true;
    env->rcpts = xcalloc(1, sizeof(*env->rcpts));
    env->rcpts[0].addr = xstrdup(orig->sender);
    env->rcpts[0].state = RCPT_QUEUED;
    env->n_rcpts = 1;
    return env;
}

/* ---------- output with a sticky error ---------- */

struct dsn_out {
    struct buf b;
    dsn_write_fn write;
    void *arg;
    int err; /* -1 once anything failed; later calls do nothing */
};

static void
out_mem(struct dsn_out *o, const void *p, size_t n)
{
    if (o->err == 0)
        buf_append(&o->b, p, n);
}

static void
out_str(struct dsn_out *o, const char *s)
{
    out_mem(o, s, strlen(s));
}

static void
out_char(struct dsn_out *o, char c)
{
    out_mem(o, &c, 1);
}

static void
out_flush(struct dsn_out *o)
{
    if (o->err == 0 && o->b.len > 0 && o->write(o->arg, o->b.data, o->b.len) != 0)
        o->err = -1;
    buf_reset(&o->b);
}

/* ---------- cleaning untrusted text ---------- */

/* Append s as one line of text: every run of control characters (CR, LF,
 * NUL, TAB ...) becomes one space, leading/trailing spaces go, 8-bit bytes
 * stay only when utf8 and well-formed UTF-8 that is no C1 control (RFC 6533
 * allows UTF-8 in the global report types); otherwise each character or
 * stray byte becomes one '?', so a plain report stays ASCII. At most
 * DSN_FIELD_MAX input bytes are looked at. */
static void
out_clean(struct dsn_out *o, const char *s, bool utf8)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t n = strnlen((const char *)p, DSN_FIELD_MAX);
    bool space = false, any = false;
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x20 || p[i] == 0x7f || p[i] == ' ') {
            space = any;
            i++;
            continue;
        }
        if (space)
            out_char(o, ' ');
        space = false;
        any = true;
        size_t ul = p[i] >= 0x80 ? utf8_seq_len(p + i, n - i) : 1;
        bool c1 = ul == 2 && p[i] == 0xc2 && p[i + 1] < 0xa0;
        if (p[i] >= 0x80 && (!utf8 || ul == 0 || c1)) {
            out_char(o, '?');
            i += ul > 0 ? ul : 1;
        } else {
            out_mem(o, p + i, ul);
            i += ul;
        }
    }
}

static bool
is_ascii(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p >= 0x80)
            return false;
    return true;
}

/* RFC 3461 §4 xtext: '+' and '=' and anything outside '!'..'~' as +XX. */
static void
out_xtext(struct dsn_out *o, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strnlen(s, DSN_FIELD_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c > ' ' && c <= '~' && c != '+' && c != '=') {
            out_char(o, (char)c);
        } else {
            char e[3] = { '+', hex[c >> 4], hex[c & 15] };
            out_mem(o, e, 3);
        }
    }
}

/* An address for text, headers and the report. ASCII as is (cleaned); in
 * an SMTPUTF8 report UTF-8 too (RFC 6533 "utf-8" type); otherwise the
 * whole address as xtext so no raw 8-bit byte leaks into a 7-bit DSN.
 * with_type prefixes the RFC 3464 address-type. */
static void
out_addr(struct dsn_out *o, const char *addr, bool utf8, bool with_type)
{
    if (addr == NULL)
        addr = "";
    if (is_ascii(addr)) {
        if (with_type)
            out_str(o, "rfc822; ");
        out_clean(o, addr, false);
    } else if (utf8) {
        if (with_type)
            out_str(o, "utf-8; ");
        out_clean(o, addr, true);
    } else {
        if (with_type)
            out_str(o, "rfc822; ");
        out_xtext(o, addr);
    }
}

/* A token for the boundary and Message-ID: letters, digits, '-', '.'
 * (and '_' ':' '[' ']' for hosts), never a leading '-', bounded length. */
static void
clean_token(char *dst, size_t cap, const char *s, const char *extra, const char *dflt)
{
    size_t j = 0;
    for (const char *p = s ? s : ""; *p && j + 1 < cap && j < DSN_TOKEN_MAX; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || (c == '-' && j > 0) || (c != '\0' && strchr(extra, c) != NULL);
        if (ok)
            dst[j++] = c;
    }
    dst[j] = '\0';
    if (j == 0)
        snprintf(dst, cap, "%s", dflt);
}

/* ---------- lines ---------- */

/* Append clean text (no controls), breaking at spaces near DSN_WIDTH and
 * hard at DSN_LINE_MAX. col is the column where text starts; continuation
 * lines start with indent (for header fields at least one space: RFC 5322
 * §2.2.3 folding). Spaces at a break are dropped. */
static void
out_fold(struct dsn_out *o, size_t col, const char *text, size_t n, const char *indent)
{
    size_t ilen = strlen(indent);
    size_t i = 0;
    bool first = true;
    while (i < n) {
        size_t ws = i;
        while (i < n && text[i] == ' ')
            i++;
        size_t w = i;
        while (i < n && text[i] != ' ')
            i++;
        size_t nws = w - ws, nw = i - w;
        if (nw == 0)
            break;
        if (!first && col + nws + nw > DSN_WIDTH) {
            out_str(o, "\r\n");
            out_str(o, indent);
            col = ilen;
        } else {
            out_mem(o, text + ws, nws);
            col += nws;
        }
        while (col + nw > DSN_LINE_MAX) {
            size_t take = col < DSN_LINE_MAX ? DSN_LINE_MAX - col : 0;
            out_mem(o, text + w, take);
            w += take;
            nw -= take;
            out_str(o, "\r\n");
            out_str(o, indent);
            col = ilen;
        }
        out_mem(o, text + w, nw);
        col += nw;
        first = false;
    }
}

/* "Name: value" CRLF, the value (built in t) folded; t is emptied. */
static void
out_field(struct dsn_out *o, const char *name, struct dsn_out *t)
{
    if (t->err != 0)
        o->err = -1;
    out_str(o, name);
    out_str(o, ": ");
    out_fold(o, strlen(name) + 2, t->b.data ? t->b.data : "", t->b.len, " ");
    out_str(o, "\r\n");
    buf_reset(&t->b);
}

/* A paragraph of the human-readable part: folded, CRLF terminated. */
static void
out_para(struct dsn_out *o, const char *text, size_t n, const char *first, const char *indent)
{
    out_str(o, first);
    out_fold(o, strlen(first), text, n, indent);
    out_str(o, "\r\n");
}

/* RFC 5322 §3.3 date-time in UTC, independent of the locale. */
static void
fmt_date(char *dst, size_t cap, int64_t ms)
{
    static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
        "Sep", "Oct", "Nov", "Dec" };
    time_t t = (time_t)(ms / 1000 - (ms % 1000 < 0 ? 1 : 0));
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 1900) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    snprintf(dst, cap, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
        months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---------- the original message ---------- */

enum dsn_ret_mode { RET_NONE, RET_FULL, RET_HDRS };

struct dsn_orig {
    const char *data; /* the original's content, its first `avail` bytes */
    size_t avail;
    uint64_t len; /* bytes of it to return */
    enum dsn_ret_mode mode;
    const char *why; /* RET_HDRS: why only the headers, for part 1 */
    bool strip8;     /* 7-bit original in a 7-bit DSN: 8-bit bytes become '?' */
    char *chunk;     /* DSN_CHUNK bytes, owned */
};

/* Copy exactly n bytes at off (n <= DSN_CHUNK). 0, or -1 with errno. */
static int
orig_pread(const struct dsn_orig *g, uint64_t off, size_t n, char *dst)
{
    if (off > g->avail || n > g->avail - off) {
        errno = EIO; /* the stored message is shorter than its envelope says */
        return -1;
    }
    memcpy(dst, g->data + off, n);
    return 0;
}

/* Length of the header section (up to the first empty line) within the
 * first max bytes. 0, or -1 on a read error. */
static int
orig_header_len(struct dsn_orig *g, uint64_t max, uint64_t *out)
{
    int st = 0; /* 0 at line start, 1 CR at line start, 2 inside a line */
    for (uint64_t pos = 0; pos < max;) {
        size_t n = max - pos < DSN_CHUNK ? (size_t)(max - pos) : DSN_CHUNK;
        if (orig_pread(g, pos, n, g->chunk) != 0)
            return -1;
        for (size_t i = 0; i < n; i++) {
            char c = g->chunk[i];
            if (c == '\n' && st != 2) {
                *out = pos + i - (st == 1 ? 1 : 0);
                return 0;
            }
            st = c == '\n' ? 0 : (c == '\r' && st == 0) ? 1 : 2;
        }
        pos += n;
    }
    *out = max;
    return 0;
}

/* Does the returned part contain needle? Chunks overlap by its length. */
static int
orig_contains(struct dsn_orig *g, const char *needle, bool *found)
{
    size_t nl = strlen(needle);
    size_t keep = 0;
    *found = false;
    for (uint64_t pos = 0; pos < g->len;) {
        size_t room = DSN_CHUNK - keep;
        size_t n = g->len - pos < room ? (size_t)(g->len - pos) : room;
        if (orig_pread(g, pos, n, g->chunk + keep) != 0)
            return -1;
        if (memmem(g->chunk, keep + n, needle, nl) != NULL) {
            *found = true;
            return 0;
        }
        pos += n;
        size_t total = keep + n;
        keep = total < nl - 1 ? total : nl - 1;
        memmove(g->chunk, g->chunk + total - keep, keep);
    }
    return 0;
}

/* Stream the returned part: NULs dropped, bare LF and bare CR made CRLF,
 * lines cut at DSN_ORIG_LINE octets, a missing final CRLF added. */
static int
orig_copy(struct dsn_out *o, struct dsn_orig *g)
{
    size_t line = 0;
    bool cr = false; /* the last byte written was CR */
    for (uint64_t pos = 0; pos < g->len && o->err == 0;) {
        size_t n = g->len - pos < DSN_CHUNK ? (size_t)(g->len - pos) : DSN_CHUNK;
        if (orig_pread(g, pos, n, g->chunk) != 0)
            return -1;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)g->chunk[i];
            if (c == '\n' || cr) {
                out_str(o, cr ? "\n" : "\r\n");
                line = 0;
                cr = false;
                if (c == '\n')
                    continue;
            }
            if (c == '\r') {
                out_char(o, '\r');
                cr = true;
            } else if (c != '\0' && line < DSN_ORIG_LINE) {
                out_char(o, (char)(c >= 0x80 && g->strip8 ? '?' : c));
                line++;
            }
        }
        pos += n;
        if (o->b.len >= DSN_CHUNK)
            out_flush(o);
    }
    if (cr || line > 0)
        out_str(o, cr ? "\n" : "\r\n");
    return 0;
}

/* Decide what of the original is returned and how much of it. */
static int
orig_plan(struct dsn_orig *g, const struct spool_env *orig, const char *data, size_t avail)
{
    g->data = data;
    g->avail = avail;
    g->strip8 = orig->body == BODY_7BIT && !orig->smtputf8;
    if (data == NULL || orig->body_len == 0) {
        g->mode = RET_NONE;
        return 0;
    }
    g->chunk = xmalloc(DSN_CHUNK);
    /* RFC 3461 §4.3: RET=HDRS asks for the headers only; a huge original,
     * and a BINARYMIME one (lines of any length), are cut to them too. */
    if (orig->ret == DSN_RET_HDRS)
        g->why = "Only the header section of the original message is attached, as the sender "
                 "asked.";
    else if (orig->body_len > DSN_MAX_RETURN)
        g->why = "The original message was too large to return; only its header section is "
                 "attached.";
    else if (orig->body == BODY_BINARYMIME)
        g->why = "The original message was sent as binary data; only its header section is "
                 "attached.";
    else {
        g->mode = RET_FULL;
        g->len = orig->body_len;
        return 0;
    }
    g->mode = RET_HDRS;
    uint64_t max = orig->body_len < DSN_MAX_RETURN ? orig->body_len : DSN_MAX_RETURN;
    return orig_header_len(g, max, &g->len);
}

/* ---------- the report ---------- */

struct dsn_ctx {
    const struct config *cfg;
    const struct spool_env *orig;
    const struct dsn_rcpt_result *res;
    size_t n;
    int64_t now_ms;
    char qid[DSN_TOKEN_MAX + 1];  /* cleaned dsn_qid */
    char host[DSN_TOKEN_MAX + 1]; /* cleaned hostname */
    char boundary[128];
    bool utf8;     /* SMTPUTF8 original: RFC 6533 media and address types */
    bool eightbit; /* the DSN carries 8-bit octets */
    bool any[4];   /* which actions occur, by enum dsn_action */
    struct dsn_orig g;
    struct dsn_out t; /* scratch for one field value */
};

static bool
str_contains(const char *s, size_t max, const char *needle)
{
    return s != NULL && memmem(s, strnlen(s, max), needle, strlen(needle)) != NULL;
}

/* Does any untrusted text of the report contain needle? Cleaning already
 * keeps such text from starting a line; this keeps it out altogether. */
static bool
texts_contain(const struct dsn_ctx *c, const char *needle)
{
    const struct spool_env *e = c->orig;
    if (str_contains(e->sender, SIZE_MAX, needle) || str_contains(e->envid, SIZE_MAX, needle) ||
        str_contains(e->helo, SIZE_MAX, needle))
        return true;
    for (size_t i = 0; i < c->n; i++) {
        const struct dsn_rcpt_result *r = &c->res[i];
        const struct spool_rcpt *rc = &e->rcpts[r->idx];
        if (str_contains(r->status.text, sizeof(r->status.text), needle) ||
            str_contains(r->remote_mta, SIZE_MAX, needle) ||
            str_contains(rc->addr, SIZE_MAX, needle) || str_contains(rc->orcpt, SIZE_MAX, needle))
            return true;
    }
    return false;
}

/* A boundary that neither the returned original nor any untrusted text
 * contains (RFC 2046 §5.1.1). "=_" cannot occur in quoted-printable text. */
static int
pick_boundary(struct dsn_ctx *c, const char *qid)
{
    char tok[33]; /* RFC 2046 §5.1.1: boundaries are at most 70 characters */
    clean_token(tok, sizeof(tok), qid, "", "dsn");
    for (int i = 0; i < DSN_BOUNDARY_TRIES; i++) {
        char needle[160];
        if (i == 0)
            snprintf(c->boundary, sizeof(c->boundary), "=_tern.%s.%" PRId64, tok, c->now_ms);
        else
            snprintf(
                c->boundary, sizeof(c->boundary), "=_tern.%s.%" PRId64 ".%d", tok, c->now_ms, i);
        snprintf(needle, sizeof(needle), "--%s", c->boundary);
        if (texts_contain(c, needle))
            continue;
        bool found = false;
        if (c->g.mode != RET_NONE && orig_contains(&c->g, needle, &found) != 0)
            return -1;
        if (!found)
            return 0;
    }
    /* Content mimicking every candidate: leave the original out. */
    c->g.mode = RET_NONE;
    return 0;
}

static const char *const action_names[] = { "failed", "delayed", "delivered", "relayed" };

/* RFC 3463 status-code: class "." subject "." detail, 1-3 digits each. */
static bool
esc_valid(const char *s)
{
    if (s[0] != '2' && s[0] != '4' && s[0] != '5')
        return false;
    s++;
    for (int part = 0; part < 2; part++) {
        if (*s++ != '.')
            return false;
        int digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            s++;
            digits++;
        }
        if (digits < 1 || digits > 3)
            return false;
    }
    return *s == '\0';
}

/* The Status value: the enhanced code if well-formed, else one derived from
 * the reply class, else from the action (RFC 3464 §2.3.4). */
static const char *
status_of(const struct dsn_rcpt_result *r)
{
    if (esc_valid(r->status.esc))
        return r->status.esc;
    int cls = r->status.code / 100;
    if (r->status.code >= 200 && r->status.code < 600 && (cls == 2 || cls == 4 || cls == 5))
        return cls == 5 ? "5.0.0" : cls == 4 ? "4.0.0" : "2.0.0";
    switch (r->action) {
    case DSN_ACTION_FAILED:
        return "5.0.0";
    case DSN_ACTION_DELAYED:
        return "4.0.0";
    default:
        return "2.0.0";
    }
}

/* Code, enhanced code and text of a reply, all cleaned, into t. */
static void
out_reply(struct dsn_out *t, const struct dsn_rcpt_result *r, bool utf8)
{
    if (r->status.code > 0 && r->status.code < 1000) {
        char code[8];
        snprintf(code, sizeof(code), "%d ", r->status.code);
        out_str(t, code);
    }
    if (esc_valid(r->status.esc)) {
        out_str(t, r->status.esc);
        out_char(t, ' ');
    }
    out_clean(t, r->status.text, utf8);
}

static void
write_headers(struct dsn_out *o, struct dsn_ctx *c)
{
    char date[64];
    const char *subject = c->any[DSN_ACTION_FAILED]    ? "Undelivered Mail Returned to Sender"
                          : c->any[DSN_ACTION_DELAYED] ? "Delayed Mail (still being retried)"
                                                       : "Successful Mail Delivery Report";
    fmt_date(date, sizeof(date), c->now_ms);
    out_str(o, "From: Mail Delivery System <MAILER-DAEMON@");
    out_str(o, c->host);
    out_str(o, ">\r\n");
    out_char(&c->t, '<');
    out_addr(&c->t, c->orig->sender, c->utf8, false);
    out_char(&c->t, '>');
    out_field(o, "To", &c->t);
    out_str(o, "Subject: ");
    out_str(o, subject);
    out_str(o, "\r\nDate: ");
    out_str(o, date);
    char mid[DSN_TOKEN_MAX * 2 + 48];
    snprintf(mid, sizeof(mid), "\r\nMessage-ID: <%s.%" PRId64 "@%s>\r\n", c->qid, c->now_ms / 1000,
        c->host);
    out_str(o, mid);
    /* RFC 3834 §5: a machine's answer; RFC 3464 §2.1 / RFC 6522 §3. */
    out_str(o, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    out_str(o, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"");
    out_str(o, c->boundary);
    out_str(o, "\"\r\n");
    if (c->eightbit)
        out_str(o, "Content-Transfer-Encoding: 8bit\r\n");
    out_str(o, "\r\nThis is a MIME-encapsulated message.\r\n");
}

static void
part_start(struct dsn_out *o, struct dsn_ctx *c, const char *type, const char *descr, bool eight)
{
    out_str(o, "\r\n--");
    out_str(o, c->boundary);
    out_str(o, "\r\nContent-Type: ");
    out_str(o, type);
    out_str(o, "\r\nContent-Description: ");
    out_str(o, descr);
    out_str(o, eight ? "\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" : "\r\n\r\n");
}

/* The opening paragraphs of part 1, one per kind of result present. */
static void
write_intro(struct dsn_out *o, struct dsn_ctx *c)
{
    char line[DSN_TOKEN_MAX + 64];
    snprintf(line, sizeof(line), "This is the mail system at host %s.", c->host);
    out_para(o, line, strlen(line), "", "");
    if (c->any[DSN_ACTION_FAILED]) {
        static const char t[] = "Your message could not be delivered to the recipients "
                                "marked \"failed\" below. This is a permanent error: the mail "
                                "system has given up and will not try again.";
        out_str(o, "\r\n");
        out_para(o, t, strlen(t), "", "");
    }
    if (c->any[DSN_ACTION_DELAYED]) {
        static const char t[] = "Delivery to the recipients marked \"delayed\" below has "
                                "not succeeded yet. The mail system will keep trying; you do not "
                                "need to send the message again.";
        out_str(o, "\r\n");
        out_para(o, t, strlen(t), "", "");
    }
    if (c->any[DSN_ACTION_DELIVERED] || c->any[DSN_ACTION_RELAYED]) {
        static const char t[] = "Your message was delivered to the recipients marked "
                                "\"delivered\" below, or relayed to a system that sends no "
                                "further notifications (\"relayed\").";
        out_str(o, "\r\n");
        out_para(o, t, strlen(t), "", "");
    }
}

/* Part 1: text for people, naming every recipient and the reason. */
static void
write_human(struct dsn_out *o, struct dsn_ctx *c)
{
    part_start(o, c, c->utf8 ? "text/plain; charset=utf-8" : "text/plain; charset=us-ascii",
        "Notification", c->utf8);
    write_intro(o, c);
    for (size_t i = 0; i < c->n; i++) {
        const struct dsn_rcpt_result *r = &c->res[i];
        out_str(o, "\r\n");
        out_char(&c->t, '<');
        out_addr(&c->t, c->orig->rcpts[r->idx].addr, c->utf8, false);
        out_str(&c->t, ">: ");
        out_str(&c->t, action_names[r->action]);
        out_para(o, c->t.b.data, c->t.b.len, "", "    ");
        buf_reset(&c->t.b);
        if (r->from_remote) {
            out_str(&c->t, "host ");
            out_clean(&c->t, r->remote_mta ? r->remote_mta : "(unknown)", c->utf8);
            out_str(&c->t, " said: ");
        }
        out_reply(&c->t, r, c->utf8);
        if (c->t.b.len == 0)
            out_str(&c->t, "no reason was recorded");
        out_para(o, c->t.b.data, c->t.b.len, "    ", "    ");
        buf_reset(&c->t.b);
    }
    if (c->g.mode == RET_HDRS) {
        out_str(o, "\r\n");
        out_para(o, c->g.why, strlen(c->g.why), "", "");
    }
    if (c->t.err != 0)
        o->err = -1;
}

/* Part 2 per-message fields, RFC 3464 §2.2 (in its ABNF order). */
static void
write_per_message(struct dsn_out *o, struct dsn_ctx *c)
{
    char date[64];
    const struct spool_env *orig = c->orig;
    part_start(o, c, c->utf8 ? "message/global-delivery-status" : "message/delivery-status",
        "Delivery report", c->utf8);
    if (orig->envid != NULL && orig->envid[0] != '\0') {
        out_clean(&c->t, orig->envid, false); /* xtext: ASCII by definition */
        out_field(o, "Original-Envelope-Id", &c->t);
    }
    out_str(&c->t, "dns; ");
    out_str(&c->t, c->host);
    out_field(o, "Reporting-MTA", &c->t);
    if (orig->helo != NULL && orig->helo[0] != '\0') {
        out_str(&c->t, "dns; ");
        out_clean(&c->t, orig->helo, false);
        out_field(o, "Received-From-MTA", &c->t);
    }
    fmt_date(date, sizeof(date), orig->arrival_ms);
    out_str(&c->t, date);
    out_field(o, "Arrival-Date", &c->t);
    out_clean(&c->t, orig->qid, false);
    out_field(o, "X-Tern-Queue-ID", &c->t);
}

/* Part 2 per-recipient fields, RFC 3464 §2.3, one block per result. */
static void
write_per_rcpt(struct dsn_out *o, struct dsn_ctx *c, const struct dsn_rcpt_result *r)
{
    char date[64];
    const struct spool_rcpt *rc = &c->orig->rcpts[r->idx];
    out_str(o, "\r\n");
    if (rc->orcpt != NULL && rc->orcpt[0] != '\0') {
        out_clean(&c->t, rc->orcpt, c->utf8); /* "rfc822;" xtext, as given */
        out_field(o, "Original-Recipient", &c->t);
    }
    out_addr(&c->t, rc->addr, c->utf8, true);
    out_field(o, "Final-Recipient", &c->t);
    out_str(&c->t, action_names[r->action]);
    out_field(o, "Action", &c->t);
    out_str(&c->t, status_of(r));
    out_field(o, "Status", &c->t);
    if (r->remote_mta != NULL && r->remote_mta[0] != '\0') {
        out_str(&c->t, "dns; ");
        out_clean(&c->t, r->remote_mta, c->utf8);
        out_field(o, "Remote-MTA", &c->t);
    }
    if (r->from_remote) {
        out_str(&c->t, "smtp; ");
        out_reply(&c->t, r, c->utf8);
        out_field(o, "Diagnostic-Code", &c->t);
    } else if (r->status.text[0] != '\0') {
        out_str(&c->t, "X-Tern; ");
        out_clean(&c->t, r->status.text, c->utf8);
        out_field(o, "Diagnostic-Code", &c->t);
    }
    fmt_date(date, sizeof(date), c->now_ms);
    out_str(&c->t, date);
    out_field(o, "Last-Attempt-Date", &c->t);
    int64_t until;
    if (r->action == DSN_ACTION_DELAYED && c->cfg->max_queue_lifetime_ms > 0 &&
        !__builtin_add_overflow(c->orig->arrival_ms, c->cfg->max_queue_lifetime_ms, &until)) {
        fmt_date(date, sizeof(date), until);
        out_str(&c->t, date);
        out_field(o, "Will-Retry-Until", &c->t);
    }
}

/* Part 3 headers; the content follows through orig_copy. */
static void
write_orig_start(struct dsn_out *o, struct dsn_ctx *c)
{
    const char *type, *descr;
    bool full = c->g.mode == RET_FULL;
    if (c->utf8)
        type = full ? "message/global" : "message/global-headers";
    else
        type = full ? "message/rfc822" : "text/rfc822-headers";
    if (c->any[DSN_ACTION_FAILED])
        descr = full ? "Undelivered Message" : "Undelivered Message Headers";
    else if (c->any[DSN_ACTION_DELAYED])
        descr = full ? "Delayed Message" : "Delayed Message Headers";
    else
        descr = full ? "Delivered Message" : "Delivered Message Headers";
    part_start(o, c, type, descr, c->eightbit);
}

static int
dsn_check_args(const struct spool_env *orig, const struct dsn_rcpt_result *results, size_t n,
    const char *dsn_qid)
{
    if (orig == NULL || results == NULL || n == 0 || dsn_qid == NULL)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (results[i].idx >= orig->n_rcpts || (unsigned)results[i].action > DSN_ACTION_RELAYED)
            return -1;
    return 0;
}

static void
dsn_ctx_init(struct dsn_ctx *c, const struct config *cfg, const struct spool_env *orig,
    const struct dsn_rcpt_result *results, size_t n, const char *dsn_qid, int64_t now_ms)
{
    memset(c, 0, sizeof(*c));
    c->cfg = cfg;
    c->orig = orig;
    c->res = results;
    c->n = n;
    c->now_ms = now_ms;
    c->utf8 = orig->smtputf8;
    clean_token(c->qid, sizeof(c->qid), dsn_qid, "", "dsn");
    clean_token(c->host, sizeof(c->host), cfg->hostname, "_:[]", "localhost");
    for (size_t i = 0; i < n; i++)
        c->any[results[i].action] = true;
    buf_init(&c->t.b);
}

int
dsn_write_message(const struct config *cfg, const struct spool_env *orig,
    const struct dsn_rcpt_result *results, size_t n, const char *orig_data, size_t orig_avail,
    const char *dsn_qid, int64_t now_ms, dsn_write_fn write, void *arg)
{
    if (cfg == NULL || write == NULL || dsn_check_args(orig, results, n, dsn_qid) != 0) {
        errno = EINVAL;
        return -1;
    }
    struct dsn_ctx c;
    struct dsn_out o = { BUF_INIT, write, arg, 0 };
    int rc = -1;
    dsn_ctx_init(&c, cfg, orig, results, n, dsn_qid, now_ms);
    /* Read the original (and find a safe boundary) before writing anything. */
    if (orig_plan(&c.g, orig, orig_data, orig_avail) != 0 || pick_boundary(&c, dsn_qid) != 0)
        goto out;
    c.eightbit = c.utf8 || (c.g.mode != RET_NONE && !c.g.strip8);
    write_headers(&o, &c);
    write_human(&o, &c);
    write_per_message(&o, &c);
    for (size_t i = 0; i < n; i++)
        write_per_rcpt(&o, &c, &results[i]);
    if (c.g.mode != RET_NONE) {
        write_orig_start(&o, &c);
        out_flush(&o);
        if (o.err == 0 && orig_copy(&o, &c.g) != 0)
            goto out;
    }
    out_str(&o, "\r\n--");
    out_str(&o, c.boundary);
    out_str(&o, "--\r\n");
    if (c.t.err != 0)
        o.err = -1;
    out_flush(&o);
    rc = o.err;
out:
    free(c.g.chunk);
    buf_fini(&c.t.b);
    buf_fini(&o.b);
    return rc;
}

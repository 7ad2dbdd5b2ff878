/*
 * tern-sendmail's message handling: read stdin into CRLF lines, walk the
 * header fields once (unfold, -t extraction, Bcc removal, missing headers)
 * and parse RFC 5322 address lists. Pure functions over (ptr, len) input;
 * every buffer growth is checked against the INJECT_* limits first.
 */
#include "proto/inject.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/parse.h"
#include "util/util.h"

#define COMMENT_DEPTH_MAX 32

void
inject_addrs_fini(struct inject_addrs *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

int
inject_addrs_add(struct inject_addrs *a, const char *s, size_t len)
{
    if (len == 0 || len > INJECT_ADDR_MAX)
        return -1;
    for (size_t i = 0; i < a->n; i++) {
        if (strlen(a->v[i]) == len && memcmp(a->v[i], s, len) == 0)
            return 0;
    }
    if (a->n >= INJECT_RCPTS_MAX)
        return -1;
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 8;
        a->v = xrealloc(a->v, a->cap * sizeof(*a->v));
    }
    a->v[a->n++] = xstrndup(s, len);
    return 0;
}

/* --- address lists (RFC 5322 §3.4) --- */

struct ap {
    const char *s;
    size_t len, pos;
    struct buf cur;   /* tokens outside <>: an addr-spec or a display name */
    struct buf angle; /* the addr-spec inside <> */
    bool got_angle, in_group, space, phrase;
    const char *why;
};

static int
ap_fail(struct ap *p, const char *why)
{
    if (p->why == NULL)
        p->why = why;
    return -1;
}

static bool
is_wsp(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Skip a comment at '(' (nested, quoted-pairs allowed). */
static int
skip_comment(struct ap *p)
{
    int depth = 0;
    while (p->pos < p->len) {
        char c = p->s[p->pos++];
        if (c == '\\') {
            p->pos++;
        } else if (c == '(') {
            if (++depth > COMMENT_DEPTH_MAX)
                return ap_fail(p, "comments nested too deep");
        } else if (c == ')') {
            if (--depth == 0)
                return 0;
        }
    }
    return ap_fail(p, "unterminated comment");
}

/* Copy a quoted string ('"') or domain literal ('[') as written, delimiters
 * and quoted-pairs included. */
static int
copy_delimited(struct ap *p, struct buf *to)
{
    char close = p->s[p->pos] == '"' ? '"' : ']';
    size_t start = p->pos++;
    while (p->pos < p->len) {
        char c = p->s[p->pos++];
        if (c == '\\' && p->pos < p->len) {
            p->pos++;
        } else if (c == close) {
            if (to->len + (p->pos - start) > INJECT_ADDR_MAX)
                return ap_fail(p, "address too long");
            buf_append(to, p->s + start, p->pos - start);
            return 0;
        } else if (c == '[' && close == ']') {
            break;
        }
    }
    return ap_fail(p, close == '"' ? "unterminated quoted string" : "bad domain literal");
}

/* Everything inside <...>: whitespace and comments dropped, source route
 * "@a,@b:" removed (RFC 5322 §4.4 obs-route). */
static int
parse_angle(struct ap *p)
{
    p->pos++;
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == '>') {
            p->pos++;
            if (p->angle.len > 0 && p->angle.data[0] == '@') {
                char *colon = memchr(p->angle.data, ':', p->angle.len);
                if (colon == NULL)
                    return ap_fail(p, "bad source route");
                buf_consume(&p->angle, (size_t)(colon - p->angle.data) + 1);
            }
            return 0;
        }
        if (is_wsp(c)) {
            p->pos++;
        } else if (c == '(') {
            if (skip_comment(p) < 0)
                return -1;
        } else if (c == '"' || c == '[') {
            if (copy_delimited(p, &p->angle) < 0)
                return -1;
        } else if (c == '<') {
            return ap_fail(p, "'<' inside an angle address");
        } else {
            if (p->angle.len >= INJECT_ADDR_MAX)
                return ap_fail(p, "address too long");
            buf_append_char(&p->angle, c);
            p->pos++;
        }
    }
    return ap_fail(p, "missing '>'");
}

static bool
joins(char c)
{
    return c == '.' || c == '@';
}

/* A token outside <> starts at p->pos: a word char, quoted string or domain
 * literal. Whitespace between two words (not around '.' or '@') makes cur a
 * phrase, which is only valid as a display name. */
static int
add_token(struct ap *p)
{
    char c = p->s[p->pos];
    if (p->got_angle)
        return ap_fail(p, "text after an angle address");
    if (p->space && p->cur.len > 0 && !joins(p->cur.data[p->cur.len - 1]) && !joins(c))
        p->phrase = true;
    p->space = false;
    if (c == '"' || c == '[')
        return copy_delimited(p, &p->cur);
    if (p->cur.len >= INJECT_ADDR_MAX)
        return ap_fail(p, "address too long");
    buf_append_char(&p->cur, c);
    p->pos++;
    return 0;
}

static int
end_mailbox(struct ap *p, struct inject_addrs *out)
{
    int r = 0;
    if (p->got_angle) {
        if (p->angle.len > 0)
            r = inject_addrs_add(out, p->angle.data, p->angle.len);
    } else if (p->cur.len > 0) {
        if (p->phrase)
            return ap_fail(p, "display name without an address");
        r = inject_addrs_add(out, p->cur.data, p->cur.len);
    }
    if (r < 0)
        return ap_fail(p, "too many recipients");
    buf_reset(&p->cur);
    buf_reset(&p->angle);
    p->got_angle = p->space = p->phrase = false;
    return 0;
}

static int
addrlist_step(struct ap *p, struct inject_addrs *out)
{
    char c = p->s[p->pos];
    unsigned char uc = (unsigned char)c;
    if (is_wsp(c)) {
        p->space = true;
        p->pos++;
        return 0;
    }
    if (c == '(') {
        p->space = true;
        return skip_comment(p);
    }
    if (c == '<') {
        if (p->got_angle)
            return ap_fail(p, "two angle addresses in one mailbox");
        buf_reset(&p->cur); /* the display name */
        p->got_angle = true;
        return parse_angle(p);
    }
    if (c == ':') {
        if (p->got_angle || p->in_group || p->cur.len == 0)
            return ap_fail(p, "unexpected ':'");
        buf_reset(&p->cur); /* the group name */
        p->in_group = true;
        p->phrase = p->space = false;
        p->pos++;
        return 0;
    }
    if (c == ',' || c == ';') {
        if (c == ';' && !p->in_group)
            return ap_fail(p, "';' outside a group");
        p->in_group = p->in_group && c != ';';
        p->pos++;
        return end_mailbox(p, out);
    }
    if (c == '>' || c == ')' || c == '\\' || uc < 0x20 || uc == 0x7f)
        return ap_fail(p, "unexpected character");
    return add_token(p);
}

int
inject_parse_addrlist(const char *s, size_t len, struct inject_addrs *out, struct buf *err)
{
    struct ap p;
    int r = 0;
    memset(&p, 0, sizeof(p));
    p.s = s;
    p.len = len;
    while (r == 0 && p.pos < p.len)
        r = addrlist_step(&p, out);
    if (r == 0)
        r = end_mailbox(&p, out); /* a group without ';' is tolerated */
    if (r < 0 && err != NULL)
        buf_printf(err, "bad address list: %s", p.why ? p.why : "error");
    buf_fini(&p.cur);
    buf_fini(&p.angle);
    return r;
}

/* --- stdin reader --- */

void
inject_reader_init(struct inject_reader *r, bool dot_ends, size_t max)
{
    buf_init(&r->out);
    buf_init(&r->line);
    r->dot_ends = dot_ends;
    r->max = max;
}

void
inject_reader_fini(struct inject_reader *r)
{
    buf_fini(&r->out);
    buf_fini(&r->line);
}

/* The current line is complete: 1 when it is the lone dot, else 0 / -1. */
static int
reader_line(struct inject_reader *r)
{
    size_t n = r->line.len;
    if (n > 0 && r->line.data[n - 1] == '\r')
        n--;
    if (r->dot_ends && n == 1 && r->line.data[0] == '.')
        return 1;
    if (r->out.len + n + 2 > r->max)
        return -1;
    buf_append(&r->out, r->line.data, n);
    buf_append(&r->out, "\r\n", 2);
    buf_reset(&r->line);
    return 0;
}

int
inject_reader_feed(struct inject_reader *r, const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl != NULL ? (size_t)(nl - p) : n;
        if (r->out.len + r->line.len + take > r->max)
            return -1;
        buf_append(&r->line, p, take);
        if (nl == NULL)
            return 0;
        int rc = reader_line(r);
        if (rc != 0)
            return rc;
        p += take + 1;
        n -= take + 1;
    }
    return 0;
}

int
inject_reader_finish(struct inject_reader *r)
{
    if (r->line.len == 0)
        return 0;
    return reader_line(r) < 0 ? -1 : 0;
}

/* --- header pass --- */

bool
inject_has_8bit(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] >= 0x80)
            return true;
    }
    return false;
}

void
inject_fmt_date(time_t t, char *out, size_t cap)
{
    struct tm tm;
    /* %a and %b are English in the C locale, which a tool that never calls
     * setlocale keeps (RFC 5322 §3.3 day-name, month-name). */
    if (localtime_r(&t, &tm) == NULL || strftime(out, cap, "%a, %d %b %Y %H:%M:%S %z", &tm) == 0)
        snprintf(out, cap, "Thu, 01 Jan 1970 00:00:00 +0000");
}

/* Length of the field name if line[len] starts a header field, else 0. */
static size_t
field_name_len(const char *line, size_t len)
{
    size_t i = 0;
    while (i < len && line[i] != ':') {
        unsigned char c = (unsigned char)line[i];
        if (c < 33 || c > 126)
            return 0;
        i++;
    }
    return (i < len && i > 0) ? i : 0;
}

/* End of the CRLF line starting at pos (index after its LF, or len). */
static size_t
line_end(const char *s, size_t len, size_t pos)
{
    const char *nl = memchr(s + pos, '\n', len - pos);
    return nl != NULL ? (size_t)(nl - s) + 1 : len;
}

struct hdr_state {
    bool has_from, has_date, has_msgid;
    size_t fields, bytes;
};

/* Unfold a field's value (after the colon): drop CR and LF, keep WSP. */
static void
unfold_value(const char *f, size_t n, size_t name_len, struct buf *out)
{
    for (size_t i = name_len + 1; i < n; i++) {
        if (f[i] != '\r' && f[i] != '\n')
            buf_append_char(out, f[i]);
    }
}

/* One complete field f[n] (folded, CRLF ends): record, extract, copy. */
static int
handle_field(const struct inject_opts *o, const char *f, size_t n, size_t name_len,
    struct hdr_state *hs, struct buf *out, struct inject_addrs *rcpts, struct buf *err)
{
    bool bcc = str_ieq(f, name_len, "Bcc");
    if (++hs->fields > INJECT_FIELDS_MAX || n > INJECT_FIELD_MAX ||
        (hs->bytes += n) > INJECT_HEADER_MAX) {
        buf_append_str(err, "message header too large");
        return -1;
    }
    hs->has_from |= str_ieq(f, name_len, "From");
    hs->has_date |= str_ieq(f, name_len, "Date");
    hs->has_msgid |= str_ieq(f, name_len, "Message-ID");
    if (o->extract_rcpts && (bcc || str_ieq(f, name_len, "To") || str_ieq(f, name_len, "Cc"))) {
        struct buf v = BUF_INIT;
        unfold_value(f, n, name_len, &v);
        int r = inject_parse_addrlist(v.data ? v.data : "", v.len, rcpts, err);
        buf_fini(&v);
        if (r < 0) {
            buf_printf(err, " in %.*s: header", (int)name_len, f);
            return -1;
        }
    }
    if (!bcc) /* never show Bcc recipients to the others */
        buf_append(out, f, n);
    return 0;
}

static void
add_missing(const struct inject_opts *o, const struct hdr_state *hs, struct buf *out)
{
    if (!hs->has_date)
        buf_printf(out, "Date: %s\r\n", o->date);
    if (!hs->has_msgid)
        buf_printf(out, "Message-ID: %s\r\n", o->msgid);
    if (!hs->has_from)
        buf_printf(out, "From: %s\r\n", o->from_addr);
}

/* Walk the header fields of msg; *body is set to where the body starts and
 * *blank to whether a blank separator line was present. */
static int
walk_header(const struct inject_opts *o, const char *msg, size_t len, struct hdr_state *hs,
    struct buf *out, struct inject_addrs *rcpts, size_t *body, struct buf *err)
{
    size_t pos = 0, start = 0, name_len = 0;
    /* A leading mbox "From " line is not part of the message (sendmail). */
    if (len >= 5 && memcmp(msg, "From ", 5) == 0)
        pos = start = line_end(msg, len, 0);
    while (pos < len) {
        size_t end = line_end(msg, len, pos), nl;
        bool cont = msg[pos] == ' ' || msg[pos] == '\t';
        if (cont && name_len > 0) {
            pos = end;
            if (pos - start > INJECT_FIELD_MAX)
                break; /* handle_field reports it */
            continue;
        }
        if (name_len > 0 &&
            handle_field(o, msg + start, pos - start, name_len, hs, out, rcpts, err) < 0)
            return -1;
        nl = field_name_len(msg + pos, end - pos);
        if (nl == 0) { /* blank line or body text */
            *body = pos;
            return 0;
        }
        start = pos;
        name_len = nl;
        pos = end;
    }
    if (name_len > 0 &&
        handle_field(o, msg + start, pos - start, name_len, hs, out, rcpts, err) < 0)
        return -1;
    *body = pos;
    return 0;
}

int
inject_build(const struct inject_opts *o, const char *msg, size_t len, struct buf *out,
    struct inject_addrs *rcpts, struct inject_info *info, struct buf *err)
{
    struct hdr_state hs;
    size_t body;
    memset(&hs, 0, sizeof(hs));
    if (walk_header(o, msg, len, &hs, out, rcpts, &body, err) < 0)
        return -1;
    add_missing(o, &hs, out);
    info->hdr_8bit = inject_has_8bit(out->data ? out->data : "", out->len);
    info->body_8bit = inject_has_8bit(msg + body, len - body);
    /* The header ends with a blank line (RFC 5322 §2.1); insert one when
     * the input had none or went straight to body text. */
    if (!(len - body >= 2 && msg[body] == '\r' && msg[body + 1] == '\n'))
        buf_append(out, "\r\n", 2);
    buf_append(out, msg + body, len - body);
    return 0;
}

/* --- SMTP replies (RFC 5321 §4.2) --- */

int
inject_reply_line(const char *line, size_t len, int *code, bool *more)
{
    if (len < 3 || len > INJECT_REPLY_LINE_MAX)
        return -1;
    for (int i = 0; i < 3; i++) {
        if (line[i] < '0' || line[i] > '9')
            return -1;
    }
    if (line[0] < '2' || line[0] > '5' || line[1] > '5')
        return -1;
    if (len > 3 && line[3] != ' ' && line[3] != '-')
        return -1;
    *code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    *more = len > 3 && line[3] == '-';
    return 0;
}

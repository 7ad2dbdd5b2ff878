/*
 * DKIM canonicalization (RFC 6376 §3.4): "simple" and "relaxed" for one
 * header field, and a streaming body canonicalizer that needs no copy of
 * the body: it holds back only a count of empty lines (they are dropped
 * when nothing but empty lines follows them) and a small output buffer.
 */
#include "dkim/dkim.h"

#include <string.h>

#include "util/util.h"

static bool
is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* §3.4.2: lowercase name, unfold, WSP runs to one SP, no WSP at the end of
 * the value nor around the colon. */
void
dkim_canon_header(enum dkim_canon c, const char *f, size_t len, struct buf *out)
{
    const char *colon;
    size_t name_len;
    bool started = false, wsp = false;
    if (c == DKIM_CANON_SIMPLE) {
        buf_append(out, f, len);
        return;
    }
    colon = memchr(f, ':', len);
    TERN_ASSERT(colon != NULL); /* the header parser only makes fields with one */
    name_len = (size_t)(colon - f);
    while (name_len > 0 && is_wsp(f[name_len - 1]))
        name_len--;
    for (size_t i = 0; i < name_len; i++) {
        char ch = f[i];
        buf_append_char(out, (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch);
    }
    buf_append_char(out, ':');
    for (size_t i = (size_t)(colon - f) + 1; i < len; i++) {
        char ch = f[i];
        if (ch == '\r' && i + 1 < len && f[i + 1] == '\n') {
            i++; /* unfold: a CRLF inside the field goes, its WSP stays */
            continue;
        }
        if (is_wsp(ch)) {
            wsp = true;
            continue;
        }
        if (wsp && started)
            buf_append_char(out, ' ');
        wsp = false;
        started = true;
        buf_append_char(out, ch);
    }
    buf_append(out, "\r\n", 2);
}

/* --- body --- */

static void
body_flush(struct dkim_body *b)
{
    if (b->len > 0)
        b->out(b->buf, b->len, b->arg);
    b->len = 0;
}

static void
body_put(struct dkim_body *b, const char *p, size_t n)
{
    b->any = true;
    while (n > 0) {
        size_t k = sizeof(b->buf) - b->len;
        if (k > n)
            k = n;
        memcpy(b->buf + b->len, p, k);
        b->len += k;
        p += k;
        n -= k;
        if (b->len == sizeof(b->buf))
            body_flush(b);
    }
}

/* The first output of a line: the empty lines before it were not trailing. */
static void
line_start(struct dkim_body *b)
{
    for (; b->blank_lines > 0; b->blank_lines--)
        body_put(b, "\r\n", 2);
    b->content = true;
}

/* Line content (no CR-before-LF, no relaxed WSP) of n > 0 bytes. */
static void
body_text(struct dkim_body *b, const char *p, size_t n)
{
    if (!b->content)
        line_start(b);
    if (b->wsp) {
        body_put(b, " ", 1); /* §3.4.4: a WSP run becomes one SP */
        b->wsp = false;
    }
    body_put(b, p, n);
}

static void
line_end(struct dkim_body *b)
{
    b->wsp = false; /* §3.4.4: whitespace at the end of a line goes */
    if (b->content)
        body_put(b, "\r\n", 2);
    else
        b->blank_lines++;
    b->content = false;
}

void
dkim_body_init(struct dkim_body *b, enum dkim_canon c, dkim_out_fn out, void *arg)
{
    memset(b, 0, sizeof(*b));
    b->c = c;
    b->out = out;
    b->arg = arg;
}

void
dkim_body_feed(struct dkim_body *b, const void *data, size_t n)
{
    const char *p = data;
    bool relaxed = b->c == DKIM_CANON_RELAXED;
    size_t i = 0;
    while (i < n) {
        size_t j;
        if (b->cr) {
            b->cr = false;
            if (p[i] == '\n') {
                line_end(b);
                i++;
                continue;
            }
            body_text(b, "\r", 1); /* a CR that ends no line is content */
        }
        if (p[i] == '\r') {
            b->cr = true;
            i++;
            continue;
        }
        if (relaxed && is_wsp(p[i])) {
            b->wsp = true; /* output only if content follows on this line */
            i++;
            continue;
        }
        for (j = i + 1; j < n && p[j] != '\r' && !(relaxed && is_wsp(p[j])); j++)
            ;
        body_text(b, p + i, j - i);
        i = j;
    }
}

/* §3.4.3/§3.4.4: trailing empty lines go; a last line without CRLF gets
 * one; an empty body is CRLF for simple and empty for relaxed. */
void
dkim_body_end(struct dkim_body *b)
{
    if (b->cr) {
        b->cr = false;
        body_text(b, "\r", 1);
    }
    if (b->content)
        line_end(b);
    if (!b->any && b->c == DKIM_CANON_SIMPLE)
        body_put(b, "\r\n", 2);
    body_flush(b);
}

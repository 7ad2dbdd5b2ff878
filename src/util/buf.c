/*
 * Growable byte buffer. Growth is overflow-checked; allocation failure and
 * a size past SIZE_MAX are fatal: memory runs out long before the second,
 * so no caller has an error to handle.
 */
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"
#include "util.h"

void
buf_init(struct buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void
buf_fini(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

void
buf_reserve(struct buf *b, size_t n)
{
    size_t need, cap;
    if (!size_add(b->len, n, &need) || !size_add(need, 1, &need))
        tern_panic("buf: size overflow");
    if (need <= b->cap)
        return;
    cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (!size_mul(cap, 2, &cap))
            cap = need;
    }
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
    b->data[b->len] = '\0';
}

void
buf_append(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void
buf_append_str(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void
buf_append_safe(struct buf *b, const char *s, size_t len, size_t max)
{
    /* Control characters, C0 and C1 alike, become '?': a terminal acts on
     * them (ESC and CSI start escape sequences). C1 arrives as a raw byte
     * (0x80-0x9f, a CSI to an 8-bit terminal) or as UTF-8 (U+0080-U+009F);
     * bytes that are no well-formed UTF-8 are replaced too, so no encoding
     * of one slips through. Other UTF-8 passes whole, never cut. */
    const unsigned char *u = (const unsigned char *)s;
    bool cut = len > max;
    size_t n = cut ? (max >= 3 ? max - 3 : 0) : len;
    for (size_t i = 0; i < n;) {
        size_t k = u[i] < 0x80 ? 1 : utf8_seq_len(u + i, len - i);
        if (i + k > n)
            break; /* the cut falls inside this character: leave it out */
        if (k == 0 || (k == 1 && (u[i] < 0x20 || u[i] == 0x7f)) ||
            (k == 2 && u[i] == 0xc2 && u[i + 1] < 0xa0)) {
            buf_append_char(b, '?');
            i += k == 0 ? 1 : k;
            continue;
        }
        buf_append(b, u + i, k);
        i += k;
    }
    if (cut)
        buf_append_str(b, "...");
}

void
buf_append_char(struct buf *b, char c)
{
    buf_append(b, &c, 1);
}

void
buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    int n;
    va_copy(cp, ap);
    n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    /* Only a bad format (a bug) or a result over INT_MAX fails. */
    if (n < 0)
        tern_panic("buf: vsnprintf failed");
    buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void
buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void
buf_append_json_str(struct buf *b, const char *s)
{
    if (s == NULL) {
        buf_append_str(b, "null");
        return;
    }
    buf_append_char(b, '"');
    buf_append_json(b, s, strlen(s));
    buf_append_char(b, '"');
}

void
buf_append_json(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            buf_append(b, e, 2);
        } else if (c == '\n') {
            buf_append(b, "\\n", 2);
        } else if (c == '\r') {
            buf_append(b, "\\r", 2);
        } else if (c == '\t') {
            buf_append(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            buf_append(b, e, 6);
        } else {
            buf_append_char(b, (char)c);
        }
    }
}

void
buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void
buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

char *
buf_take(struct buf *b)
{
    char *p;
    if (b->data == NULL)
        return xstrdup("");
    p = b->data;
    buf_init(b);
    return p;
}

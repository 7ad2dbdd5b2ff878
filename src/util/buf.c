/*
 * Growable byte buffer. Growth is overflow-checked; allocation failure is
 * fatal (xrealloc), arithmetic overflow is reported as -1.
 */
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int
buf_reserve(struct buf *b, size_t n)
{
    size_t need, cap;
    if (!size_add(b->len, n, &need) || !size_add(need, 1, &need))
        return -1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (!size_mul(cap, 2, &cap))
            return -1;
    }
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
    b->data[b->len] = '\0';
    return 0;
}

int
buf_append(struct buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int
buf_append_str(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int
buf_append_char(struct buf *b, char c)
{
    return buf_append(b, &c, 1);
}

int
buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    int n;
    va_copy(cp, ap);
    n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    if (n < 0 || buf_reserve(b, (size_t)n) < 0)
        return -1;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int
buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int r;
    va_start(ap, fmt);
    r = buf_vprintf(b, fmt, ap);
    va_end(ap);
    return r;
}

int
buf_append_json(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int r;
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            r = buf_append(b, e, 2);
        } else if (c == '\n') {
            r = buf_append(b, "\\n", 2);
        } else if (c == '\r') {
            r = buf_append(b, "\\r", 2);
        } else if (c == '\t') {
            r = buf_append(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            r = buf_append(b, e, 6);
        } else {
            r = buf_append_char(b, (char)c);
        }
        if (r < 0)
            return -1;
    }
    return 0;
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

/*
 * struct buf: a growable, binary-safe byte buffer that always keeps one spare
 * NUL byte after the data, so buf.data can be used as a C string when the
 * content has no NUL. Never keep a pointer into a buf across an append.
 */
#ifndef TERN_BUF_H
#define TERN_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

struct buf {
    char *data; /* owned; NULL until the first reserve */
    size_t len;
    size_t cap; /* allocated bytes, including the spare NUL */
};

#define BUF_INIT                                                                                   \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

void buf_init(struct buf *b);
void buf_fini(struct buf *b); /* frees data; buf is empty and reusable */
/* Make room for n more bytes (plus the NUL). None of these can fail:
 * running out of memory or a size overflow ends the process. */
void buf_reserve(struct buf *b, size_t n);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_append_str(struct buf *b, const char *s);
void buf_append_char(struct buf *b, char c);
/* Append s[len] (at most max bytes; longer text is cut and ends with
 * "...") with control characters replaced by '?', for a terminal. */
void buf_append_safe(struct buf *b, const char *s, size_t len, size_t max);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/* Append s escaped for a JSON string body (no quotes added). */
void buf_append_json(struct buf *b, const char *s, size_t n);
/* Append s as a JSON string (quoted and escaped), or null when s is NULL. */
void buf_append_json_str(struct buf *b, const char *s);
/* Drop the first n bytes. */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b); /* len = 0, keeps memory */
/* Hand the data to the caller (owned, NUL terminated, never NULL); b becomes empty. */
char *buf_take(struct buf *b);

#endif

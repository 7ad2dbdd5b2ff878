/*
 * Small shared helpers: checked allocation, overflow-checked size arithmetic,
 * panics for impossible states and secret clearing. Allocation failure is
 * treated as fatal (tern_panic); everything else returns errors.
 */
#ifndef TERN_UTIL_H
#define TERN_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TERN_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

_Noreturn void tern_panic_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define tern_panic(...) tern_panic_at(__FILE__, __LINE__, __VA_ARGS__)
#define TERN_ASSERT(c)                                                                         \
    do {                                                                                       \
        if (!(c))                                                                              \
            tern_panic_at(__FILE__, __LINE__, "assertion failed: %s", #c);                     \
    } while (0)

/* Allocation wrappers: never return NULL (panic on ENOMEM). Caller owns. */
void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Free *pp and set it to NULL. */
#define FREE_NULL(pp)                                                                          \
    do {                                                                                       \
        free(*(pp));                                                                           \
        *(pp) = NULL;                                                                          \
    } while (0)

/* Overflow-checked arithmetic: false on overflow, result untouched. */
bool size_add(size_t a, size_t b, size_t *out);
bool size_mul(size_t a, size_t b, size_t *out);

/* Clear and free a secret string (NULL is fine). */
void secret_free(char *s);

/* Monotonic and wall clocks in milliseconds. Tests may override the wall clock
 * with tern_clock_set_fake(ms) (0 restores the real clock). */
int64_t tern_now_ms(void);
int64_t tern_mono_ms(void);
int64_t tern_mono_us(void); /* the same clock in microseconds */
void tern_clock_set_fake(int64_t ms);

/* secs (Unix time) in UTC through strftime's fmt into out (empty when it
 * does not fit). The date of a mail header (RFC 5322 §3.3): */
#define TERN_RFC5322_DATE "%a, %d %b %Y %H:%M:%S +0000"
void tern_fmt_utc(int64_t secs, const char *fmt, char *out, size_t cap);

#endif

/*
 * Checked allocation, panics and clocks shared by every module.
 */
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

_Noreturn void
tern_panic_at(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    log_flush(); /* the lines before the panic come before it */
    fprintf(stderr, "crit qid=- panic at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        tern_panic("out of memory (%zu bytes)", n);
    return p;
}

void *
xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (p == NULL)
        tern_panic("out of memory (%zu x %zu bytes)", nmemb, size);
    return p;
}

void *
xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        tern_panic("out of memory (%zu bytes)", n);
    return q;
}

char *
xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

bool
size_add(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_add_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}

bool
size_mul(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}

void
secret_free(char *s)
{
    if (s == NULL)
        return;
    explicit_bzero(s, strlen(s));
    free(s);
}

static int64_t fake_now_ms;

void
tern_clock_set_fake(int64_t ms)
{
    fake_now_ms = ms;
}

void
tern_fmt_utc(int64_t secs, const char *fmt, char *out, size_t cap)
{
    time_t t = (time_t)secs;
    struct tm tm;
    if (cap == 0)
        return;
    out[0] = '\0';
    if (gmtime_r(&t, &tm) != NULL && strftime(out, cap, fmt, &tm) == 0)
        out[0] = '\0';
}

int64_t
tern_now_ms(void)
{
    struct timespec ts;
    if (fake_now_ms != 0)
        return fake_now_ms;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
tern_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
tern_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

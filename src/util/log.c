/*
 * Log line builder. A line is assembled in memory and written with a single
 * write(2) so that lines from the committer threads never interleave.
 */
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_VALUE_MAX 512

static bool log_json;
static enum log_level log_min = LOG_INFO;
static int log_fd = 2;

static const char *const level_names[] = { "debug", "info", "warn", "error", "crit" };

void
log_set_json(bool json)
{
    log_json = json;
}

void
log_set_level(enum log_level min)
{
    log_min = min;
}

void
log_set_fd(int fd)
{
    log_fd = fd;
}

static void
append_text_value(struct buf *b, const char *v, size_t n)
{
    bool quote = (n == 0);
    for (size_t i = 0; i < n && !quote; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c <= ' ' || c == '"' || c == '\\' || c == '=' || c == 0x7f)
            quote = true;
    }
    if (!quote) {
        buf_append(b, v, n);
        return;
    }
    buf_append_char(b, '"');
    buf_append_json(b, v, n);
    buf_append_char(b, '"');
}

static void
add_kv(struct logline *l, const char *key, const char *val, size_t n, bool raw)
{
    bool cut = n > LOG_VALUE_MAX;
    if (cut)
        n = LOG_VALUE_MAX;
    if (l->json) {
        buf_printf(&l->b, ",\"%s\":", key);
        if (raw) {
            buf_append(&l->b, val, n);
        } else {
            buf_append_char(&l->b, '"');
            buf_append_json(&l->b, val, n);
            if (cut)
                buf_append_str(&l->b, "...");
            buf_append_char(&l->b, '"');
        }
    } else {
        buf_printf(&l->b, " %s=", key);
        if (raw) {
            buf_append(&l->b, val, n);
        } else if (cut) {
            struct buf t = BUF_INIT;
            buf_append(&t, val, n);
            buf_append_str(&t, "...");
            append_text_value(&l->b, t.data, t.len);
            buf_fini(&t);
        } else {
            append_text_value(&l->b, val, n);
        }
    }
}

void
log_begin(struct logline *l, enum log_level lvl, const char *qid, const char *subsys,
    const char *event)
{
    buf_init(&l->b);
    l->on = lvl >= log_min;
    l->json = log_json;
    if (!l->on)
        return;
    if (qid == NULL || *qid == '\0')
        qid = "-";
    if (l->json) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        buf_printf(&l->b, "{\"ts\":%lld.%03ld,\"level\":\"%s\",\"qid\":\"", (long long)ts.tv_sec,
            ts.tv_nsec / 1000000, level_names[lvl]);
        buf_append_json(&l->b, qid, strlen(qid));
        buf_printf(&l->b, "\",\"subsystem\":\"%s\",\"event\":\"%s\"", subsys, event);
    } else {
        buf_printf(&l->b, "%s qid=%s %s %s", level_names[lvl], qid, subsys, event);
    }
}

void
log_strn(struct logline *l, const char *key, const char *val, size_t n)
{
    if (!l->on)
        return;
    if (val == NULL) {
        val = "-";
        n = 1;
    }
    add_kv(l, key, val, n, false);
}

void
log_str(struct logline *l, const char *key, const char *val)
{
    log_strn(l, key, val, val ? strlen(val) : 0);
}

void
log_int(struct logline *l, const char *key, int64_t val)
{
    char tmp[32];
    int n;
    if (!l->on)
        return;
    n = snprintf(tmp, sizeof(tmp), "%" PRId64, val);
    add_kv(l, key, tmp, (size_t)n, true);
}

void
log_errno(struct logline *l, int err)
{
    log_str(l, "error", strerror(err));
}

void
log_end(struct logline *l)
{
    size_t off = 0;
    if (!l->on) {
        buf_fini(&l->b);
        return;
    }
    buf_append_str(&l->b, l->json ? "}\n" : "\n");
    while (off < l->b.len) {
        ssize_t w = write(log_fd, l->b.data + off, l->b.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* nowhere left to report a logging failure */
        off += (size_t)w;
    }
    buf_fini(&l->b);
}

void
log_simple(enum log_level lvl, const char *subsys, const char *event, const char *msg)
{
    struct logline l;
    log_begin(&l, lvl, NULL, subsys, event);
    if (msg)
        log_str(&l, "msg", msg);
    log_end(&l);
}

/*
 * Log line builder. A line is assembled in memory, then written whole, so
 * lines from worker threads never interleave. A thread running an event
 * loop batches its lines in one static buffer (whole lines only, shared by
 * every thread under one mutex, so the order of lines is the order of
 * log_end calls) and writes them with one write(2) per loop iteration: an
 * event made active by the first line of a burst runs after the events
 * already active, before the loop can sleep. The buffer never moves, so a
 * crash handler can still write what it holds. Lines go to one descriptor:
 * stderr, a log file opened in append mode, or a datagram socket connected
 * to syslog (then each line is its own datagram with an RFC 3164 header,
 * as syslog(3) sends it). Text lines start with an RFC 3339 timestamp
 * (UTC, milliseconds); syslog lines carry syslog's own instead.
 */
#include "log.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LOG_VALUE_MAX 512
#define LOG_BATCH_MAX (64 * 1024) /* bytes of lines held back at most */

#define LOG_SYSLOG_DEFAULT "/dev/log"
#define LOG_FACILITY_MAIL  2 /* RFC 5424 §6.2.1 */

/* Set on the main loop (start, reload), read by every thread. */
static atomic_bool log_json;
static _Atomic int log_min = LOG_INFO;
/* Changed under log_mu only (log_use); read without it by log_begin, which
 * at worst formats one line for the previous kind of target. */
static int log_fd = 2;
static bool log_fd_owned;         /* opened by log_target_open: closed when replaced */
static atomic_bool log_to_syslog; /* log_fd is a datagram socket to syslog */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_batch[LOG_BATCH_MAX];
/* Bytes of whole lines in log_batch. Written under log_mu; read without it
 * only by the crash handler. */
static atomic_size_t log_batch_len;
static _Thread_local struct event *log_flush_ev; /* this thread's loop batches */
static _Thread_local bool log_flush_armed;       /* log_flush_ev is active */
static atomic_bool log_hooked;                   /* crash handlers and atexit installed */
static const int log_crash_sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT };
static struct sigaction log_old_act[sizeof(log_crash_sigs) / sizeof(log_crash_sigs[0])];

static const char *const level_names[] = { "debug", "info", "warn", "error", "crit" };

void
log_set_json(bool json)
{
    atomic_store_explicit(&log_json, json, memory_order_relaxed);
}

void
log_set_level(enum log_level min)
{
    atomic_store_explicit(&log_min, (int)min, memory_order_relaxed);
}

/* Nowhere is left to report a logging failure: give up on it. */
static void
write_stream(const char *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(log_fd, p + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
}

/* One datagram per line, without its newline (syslog's framing); a line
 * the socket refuses (no syslog daemon, its queue full) is dropped, as
 * syslog(3) drops it. send(2) is async-signal safe: the crash handler
 * comes here too. */
static void
write_syslog(const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t len = nl != NULL ? (size_t)(nl - p) : n;
        ssize_t w;
        do
            w = send(log_fd, p, len, MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        len += nl != NULL;
        p += len;
        n -= len;
    }
}

static void
write_all(const char *p, size_t n)
{
    if (atomic_load_explicit(&log_to_syslog, memory_order_relaxed))
        write_syslog(p, n);
    else
        write_stream(p, n);
}

/* Called with log_mu held. */
static void
batch_write_locked(void)
{
    size_t n = atomic_load_explicit(&log_batch_len, memory_order_relaxed);
    if (n == 0)
        return;
    write_all(log_batch, n);
    atomic_store_explicit(&log_batch_len, 0, memory_order_release);
}

void
log_flush(void)
{
    pthread_mutex_lock(&log_mu);
    batch_write_locked();
    pthread_mutex_unlock(&log_mu);
}

void
log_use(int fd, bool owned, bool syslog)
{
    pthread_mutex_lock(&log_mu);
    /* What is batched belongs to the old target: a rotated file keeps
     * every line written before the reopen. */
    batch_write_locked();
    if (log_fd_owned && log_fd != fd)
        close(log_fd); /* written with write(2): nothing buffered */
    log_fd = fd;
    log_fd_owned = owned;
    atomic_store(&log_to_syslog, syslog);
    pthread_mutex_unlock(&log_mu);
}

void
log_set_fd(int fd)
{
    log_use(fd, false, false);
}

/* A datagram socket connected to syslog's (TERN_SYSLOG_PATH in tests). */
static int
syslog_connect(struct buf *err)
{
    const char *path = getenv("TERN_SYSLOG_PATH");
    struct sockaddr_un sun;
    int fd;
    if (path == NULL || *path == '\0')
        path = LOG_SYSLOG_DEFAULT;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun.sun_path)) {
        buf_printf(err, "log_target syslog: socket path too long: %s\n", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        buf_printf(err, "log_target syslog: cannot connect to %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int
log_target_open(const char *target, bool *syslog, struct buf *err)
{
    int fd;
    *syslog = false;
    /* syslog lines carry local time; the zone is read now, while files
     * can still be opened (ternd's children cannot). */
    tzset();
    if (target == NULL || *target == '\0' || strcmp(target, "stderr") == 0)
        return 2;
    if (strcmp(target, "syslog") == 0) {
        *syslog = true;
        return syslog_connect(err);
    }
    if (target[0] != '/') {
        buf_printf(err, "log_target %s: not stderr, syslog or an absolute path\n", target);
        return -1;
    }
    /* Append mode: lines of every process land whole at the end, and a
     * file moved away by logrotate keeps what was written before the
     * reopen. 0640: a log holds addresses, not for everyone. */
    fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0640);
    if (fd < 0) {
        buf_printf(err, "log_target %s: cannot open: %s\n", target, strerror(errno));
        return -1;
    }
    /* Not a FIFO or a device that could block the loop: a regular file. */
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        buf_printf(err, "log_target %s: not a regular file\n", target);
        close(fd);
        return -1;
    }
    return fd;
}

int
log_target_check(const char *target, struct buf *err)
{
    struct stat st;
    bool syslog;
    if (target != NULL && target[0] == '/') {
        /* Not created by a check: the file if it is there, else its
         * directory, must take writes from us. */
        char dir[4096];
        const char *slash = strrchr(target, '/');
        size_t n = (size_t)(slash - target);
        if (stat(target, &st) == 0) {
            if (!S_ISREG(st.st_mode) || access(target, W_OK) < 0) {
                buf_printf(err, "log_target %s: %s\n", target,
                    S_ISREG(st.st_mode) ? strerror(errno) : "not a regular file");
                return -1;
            }
            return 0;
        }
        if (n >= sizeof(dir))
            n = sizeof(dir) - 1;
        memcpy(dir, target, n);
        dir[n == 0 ? 1 : n] = '\0';
        if (n == 0)
            dir[0] = '/';
        if (access(dir, W_OK | X_OK) < 0) {
            buf_printf(
                err, "log_target %s: cannot create it in %s: %s\n", target, dir, strerror(errno));
            return -1;
        }
        return 0;
    }
    int fd = log_target_open(target, &syslog, err);
    if (fd < 0)
        return -1;
    if (fd > 2)
        close(fd); /* a socket: nothing written */
    return 0;
}

size_t
log_format_ts(int64_t unix_ms, char *out, size_t cap)
{
    struct tm tm;
    time_t secs;
    int n;
    if (unix_ms < 0)
        unix_ms = 0;
    secs = (time_t)(unix_ms / 1000);
    if (gmtime_r(&secs, &tm) == NULL || tm.tm_year + 1900 > 9999)
        return 0;
    n = snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(unix_ms % 1000));
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static int64_t
now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The RFC 3164 header syslog(3) sends to /dev/log: priority (facility mail,
 * the level's severity), local time, "ternd[pid]: ". */
static void
syslog_header(struct buf *b, enum log_level lvl)
{
    static const int sev[] = { 7, 6, 4, 3, 2 }; /* debug info warning err crit */
    static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
        "Sep", "Oct", "Nov", "Dec" };
    struct tm tm;
    time_t now = time(NULL);
    if (localtime_r(&now, &tm) == NULL)
        memset(&tm, 0, sizeof(tm));
    buf_printf(b, "<%d>%s %2d %02d:%02d:%02d ternd[%ld]: ", LOG_FACILITY_MAIL * 8 + sev[lvl],
        mon[tm.tm_mon % 12], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)getpid());
}

static void
flush_cb(evutil_socket_t fd, short what, void *arg)
{
    log_flush_armed = false;
    log_flush();
}

/* A crash: write the whole lines held (write(2) is async-signal safe; the
 * mutex is not taken, the thread holding it may be the one that crashed),
 * then hand the signal to the handler that was there before. A fault
 * (si_code > 0) happens again on return; a signal sent by kill or raise
 * (abort) is raised again, and delivered once this handler returns. */
static void
crash_cb(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    size_t n = atomic_exchange(&log_batch_len, 0);
    write_all(log_batch, n);
    for (size_t i = 0; i < sizeof(log_crash_sigs) / sizeof(log_crash_sigs[0]); i++) {
        if (log_crash_sigs[i] == sig)
            sigaction(sig, &log_old_act[i], NULL);
    }
    if (si == NULL || si->si_code <= 0)
        raise(sig);
    errno = saved;
}

static void
hook_exit_and_crash(void)
{
    struct sigaction sa;
    if (atomic_exchange(&log_hooked, true))
        return;
    atexit(log_flush);
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = crash_cb;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(log_crash_sigs) / sizeof(log_crash_sigs[0]); i++)
        sigaction(log_crash_sigs[i], &sa, &log_old_act[i]);
}

int
log_attach_loop(struct event_base *base)
{
    log_detach_loop();
    log_flush_ev = event_new(base, -1, 0, flush_cb, NULL);
    if (log_flush_ev == NULL)
        return -1;
    hook_exit_and_crash();
    return 0;
}

void
log_detach_loop(void)
{
    log_flush();
    if (log_flush_ev != NULL)
        event_free(log_flush_ev);
    log_flush_ev = NULL;
    log_flush_armed = false;
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
log_begin(
    struct logline *l, enum log_level lvl, const char *qid, const char *subsys, const char *event)
{
    char ts[LOG_TS_MAX];
    bool text_ts = true;
    buf_init(&l->b);
    l->lvl = lvl;
    l->on = (int)lvl >= atomic_load_explicit(&log_min, memory_order_relaxed);
    l->json = atomic_load_explicit(&log_json, memory_order_relaxed);
    if (!l->on)
        return;
    if (log_format_ts(now_unix_ms(), ts, sizeof(ts)) == 0)
        ts[0] = '\0';
    if (qid == NULL || *qid == '\0')
        qid = "-";
    if (atomic_load_explicit(&log_to_syslog, memory_order_relaxed)) {
        syslog_header(&l->b, lvl);
        text_ts = false; /* syslog stamps the line itself */
    }
    if (l->json) {
        buf_printf(&l->b, "{\"ts\":\"%s\",\"level\":\"%s\",\"qid\":\"", ts, level_names[lvl]);
        buf_append_json(&l->b, qid, strlen(qid));
        buf_printf(&l->b, "\",\"subsystem\":\"%s\",\"event\":\"%s\"", subsys, event);
    } else {
        if (text_ts)
            buf_printf(&l->b, "%s ", ts);
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
    size_t n, have;
    if (!l->on) {
        buf_fini(&l->b);
        return;
    }
    buf_append_str(&l->b, l->json ? "}\n" : "\n");
    n = l->b.len;
    pthread_mutex_lock(&log_mu);
    if (log_flush_ev == NULL || l->lvl >= LOG_ERROR || n > LOG_BATCH_MAX) {
        /* Lines batched before it go first: the order stays. */
        batch_write_locked();
        write_all(l->b.data, n);
        pthread_mutex_unlock(&log_mu);
        buf_fini(&l->b);
        return;
    }
    have = atomic_load_explicit(&log_batch_len, memory_order_relaxed);
    if (have + n > LOG_BATCH_MAX) {
        batch_write_locked();
        have = 0;
    }
    memcpy(log_batch + have, l->b.data, n);
    atomic_store_explicit(&log_batch_len, have + n, memory_order_release);
    pthread_mutex_unlock(&log_mu);
    buf_fini(&l->b);
    if (!log_flush_armed) {
        log_flush_armed = true;
        event_active(log_flush_ev, EV_TIMEOUT, 0);
    }
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

/*
 * Control socket client and ternctl helpers. The socket is non-blocking and
 * every wait goes through poll() with a timeout, so a stuck daemon cannot
 * hang the operator's shell. Reply lines are bounded by CTL_REPLY_LINE_MAX.
 * The row and summary builders are pure and make all daemon-supplied text
 * safe for a terminal.
 */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "sched/sched.h"
#include "spool/spool.h"
#include "util/parse.h"
#include "util/util.h"

#define CTL_READ_CHUNK 65536

int
ctl_connect(const char *spool_dir, int *fd, enum ctl_rc *rc, struct buf *msg)
{
    struct sockaddr_un sun;
    int s, n;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    n = snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s", spool_dir, CTL_SOCKET_NAME);
    if (n < 0 || (size_t)n >= sizeof(sun.sun_path)) {
        *rc = CTL_FAIL;
        buf_printf(msg, "control socket path too long: %s/%s", spool_dir, CTL_SOCKET_NAME);
        return -1;
    }
    s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        *rc = CTL_FAIL;
        buf_printf(msg, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(s, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        int e = errno;
        close(s);
        *rc = (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR) ? CTL_NODAEMON : CTL_FAIL;
        if (*rc == CTL_NODAEMON)
            buf_append_str(msg, sun.sun_path);
        else
            buf_printf(msg, "cannot connect to %s: %s", sun.sun_path, strerror(e));
        return -1;
    }
    *fd = s;
    return 0;
}

/* Wait for events on fd: 0 ready, -1 timeout or error (msg set). */
static int
wait_fd(int fd, short events, int timeout_ms, struct buf *msg)
{
    struct pollfd pfd = { fd, events, 0 };
    for (;;) {
        int r = poll(&pfd, 1, timeout_ms);
        if (r > 0)
            return 0;
        if (r == 0) {
            buf_printf(msg, "timed out after %d s waiting for ternd", timeout_ms / 1000);
            return -1;
        }
        if (errno != EINTR) {
            buf_printf(msg, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

static int
send_all(int fd, const char *p, size_t n, int timeout_ms, struct buf *msg)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, timeout_ms, msg) < 0)
                return -1;
            continue;
        }
        buf_printf(msg, "send: %s", strerror(w < 0 ? errno : EIO));
        return -1;
    }
    return 0;
}

/* One complete reply line: 1 when it was the final line (rc set), 0 for a
 * data line, -1 when fn aborted. */
static int
reply_line(
    const char *line, size_t len, ctl_line_fn fn, void *arg, enum ctl_rc *rc, struct buf *msg)
{
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len == 2 && memcmp(line, "OK", 2) == 0) {
        *rc = CTL_OK;
        return 1;
    }
    if ((len == 3 && memcmp(line, "ERR", 3) == 0) || (len > 3 && memcmp(line, "ERR ", 4) == 0)) {
        *rc = CTL_ERR;
        buf_reset(msg);
        buf_append_safe(msg, len > 4 ? line + 4 : "error", len > 4 ? len - 4 : 5, 512);
        return 1;
    }
    if (fn != NULL && fn(line, len, arg) < 0)
        return -1;
    return 0;
}

/* Hand every complete line in rb to reply_line; keeps the unfinished tail. */
static int
drain_lines(struct buf *rb, ctl_line_fn fn, void *arg, enum ctl_rc *rc, struct buf *msg)
{
    size_t start = 0;
    int r = 0;
    while (r == 0) {
        char *nl = memchr(rb->data + start, '\n', rb->len - start);
        if (nl == NULL)
            break;
        size_t n = (size_t)(nl - (rb->data + start));
        if (n > CTL_REPLY_LINE_MAX) {
            buf_append_str(msg, "reply line from ternd too long");
            return -1;
        }
        r = reply_line(rb->data + start, n, fn, arg, rc, msg);
        start += n + 1;
    }
    buf_consume(rb, start);
    if (r < 0 && *rc != CTL_ERR)
        buf_append_str(msg, "reply processing aborted");
    return r;
}

static enum ctl_rc
read_reply(int fd, int timeout_ms, ctl_line_fn fn, void *arg, struct buf *msg)
{
    struct buf rb = BUF_INIT;
    enum ctl_rc rc = CTL_FAIL;
    for (;;) {
        buf_reserve(&rb, CTL_READ_CHUNK);
        ssize_t n = read(fd, rb.data + rb.len, CTL_READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLIN, timeout_ms, msg) < 0)
                break;
            continue;
        }
        if (n <= 0) {
            if (n == 0)
                buf_append_str(msg, "ternd closed the connection before the reply ended");
            else
                buf_printf(msg, "read: %s", strerror(errno));
            break;
        }
        rb.len += (size_t)n;
        rb.data[rb.len] = '\0';
        int r = drain_lines(&rb, fn, arg, &rc, msg);
        if (r != 0) {
            if (r < 0)
                rc = CTL_FAIL;
            break;
        }
        if (rb.len > CTL_REPLY_LINE_MAX) {
            buf_append_str(msg, "reply line from ternd too long");
            break;
        }
    }
    buf_fini(&rb);
    return rc;
}

enum ctl_rc
ctl_exchange(
    int fd, const char *request, int timeout_ms, ctl_line_fn fn, void *arg, struct buf *msg)
{
    size_t n = strlen(request);
    int fl = fcntl(fd, F_GETFL);
    if (n == 0 || n >= CTL_LINE_MAX || strpbrk(request, "\r\n") != NULL) {
        buf_append_str(msg, "bad control request");
        return CTL_FAIL;
    }
    /* Non-blocking, so that poll() bounds every wait. */
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        buf_printf(msg, "fcntl: %s", strerror(errno));
        return CTL_FAIL;
    }
    if (send_all(fd, request, n, timeout_ms, msg) < 0 || send_all(fd, "\n", 1, timeout_ms, msg) < 0)
        return CTL_FAIL;
    return read_reply(fd, timeout_ms, fn, arg, msg);
}

enum ctl_rc
ctl_call(const char *spool_dir, const char *request, int timeout_ms, ctl_line_fn fn, void *arg,
    struct buf *msg)
{
    enum ctl_rc rc;
    int fd;
    if (ctl_connect(spool_dir, &fd, &rc, msg) < 0)
        return rc;
    rc = ctl_exchange(fd, request, timeout_ms, fn, arg, msg);
    close(fd);
    return rc;
}

void
ctl_fmt_age(int64_t secs, char *out, size_t cap)
{
    if (secs < 0)
        secs = 0;
    if (secs < 60)
        snprintf(out, cap, "%llds", (long long)secs);
    else if (secs < 3600)
        snprintf(out, cap, "%lldm%02llds", (long long)(secs / 60), (long long)(secs % 60));
    else if (secs < 86400)
        snprintf(out, cap, "%lldh%02lldm", (long long)(secs / 3600), (long long)(secs % 3600 / 60));
    else
        snprintf(
            out, cap, "%lldd%02lldh", (long long)(secs / 86400), (long long)(secs % 86400 / 3600));
}

static bool
is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

int
ctl_id_line(const char *line, size_t len, char out[17])
{
    char id[17];
    while (len > 0 && is_space(line[0])) {
        line++;
        len--;
    }
    while (len > 0 && is_space(line[len - 1]))
        len--;
    if (len == 0)
        return 0;
    if (len != 16)
        return -1;
    memcpy(id, line, 16);
    id[16] = '\0';
    if (!spool_qid_valid(id))
        return -1;
    memcpy(out, id, 17);
    return 1;
}

/* May v go in a request as one token (printable, no space, bounded)? */
static bool
token_ok(const char *v)
{
    size_t n = strnlen(v, CTL_SELECT_MAX + 1);
    if (n > CTL_SELECT_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c <= 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

int
ctl_select_request(const char *verb, const char *sender, const char *rdomain, int64_t older_s,
    struct buf *out, struct buf *err)
{
    buf_printf(out, "%s ALL", verb);
    if (sender != NULL) {
        if (strcmp(sender, "<>") == 0)
            sender = "";
        if (sender[0] != '\0' && (!token_ok(sender) || strchr(sender, '@') == NULL)) {
            buf_printf(err, "--sender: not an address (or <> for the null sender)");
            return -1;
        }
        buf_printf(out, " sender=%s", sender);
    }
    if (rdomain != NULL) {
        if (!token_ok(rdomain) || !str_is_domain(rdomain, strlen(rdomain), true)) {
            buf_printf(err, "--recipient-domain: not a domain");
            return -1;
        }
        buf_printf(out, " rdomain=%s", rdomain);
    }
    if (older_s < 0 || older_s > INT32_MAX) {
        buf_printf(err, "--older-than: out of range");
        return -1;
    }
    if (older_s > 0)
        buf_printf(out, " older=%" PRId64, older_s);
    if (out->len >= CTL_LINE_MAX) {
        buf_printf(err, "selection too long");
        return -1;
    }
    return 0;
}

void
ctl_fmt_next(const struct json *obj, int64_t now_s, char *out, size_t cap)
{
    const struct json *held = json_get(obj, "held");
    const struct json *next = json_get(obj, "next_attempt");
    int64_t t;
    char age[16];
    if (held != NULL && held->type == JSON_BOOL && held->b) {
        snprintf(out, cap, "held");
    } else if (next == NULL || json_int(next, &t) < 0) {
        snprintf(out, cap, "-");
    } else if (t <= now_s) {
        snprintf(out, cap, "now");
    } else {
        ctl_fmt_age(t - now_s, age, sizeof(age));
        snprintf(out, cap, "in %s", age);
    }
}

/* buf_append_safe of a C string. */
static void
append_safe_str(struct buf *b, const char *s, size_t max)
{
    buf_append_safe(b, s, strnlen(s, max + 1), max);
}

static int
schema_fail(struct buf *err, const char *what)
{
    buf_printf(err, "unexpected reply from ternd: %s", what);
    return -1;
}

/* Recipients list text, max attempts and the error of the most-tried one. */
static int
row_rcpts(const struct json *rcpts, struct ctl_row *row, struct buf *err)
{
    struct buf b = BUF_INIT, e = BUF_INIT;
    int64_t best = -1;
    if (rcpts == NULL || rcpts->type != JSON_ARRAY)
        return schema_fail(err, "no recipients list");
    for (size_t i = 0; i < rcpts->n_kids; i++) {
        const struct json *r = &rcpts->kids[i];
        const char *addr = json_str(json_get(r, "address"));
        const char *status = json_str(json_get(r, "status"));
        const char *le = json_str(json_get(r, "last_error"));
        int64_t att;
        if (addr == NULL || status == NULL || json_int(json_get(r, "attempts"), &att) < 0 ||
            att < 0) {
            buf_fini(&b);
            buf_fini(&e);
            return schema_fail(err, "bad recipient");
        }
        if (i > 0)
            buf_append_str(&b, ", ");
        const struct json *arch = json_get(r, "archive");
        append_safe_str(&b, addr, 256);
        buf_append_str(&b, " (");
        if (arch != NULL && arch->type == JSON_BOOL && arch->b)
            buf_append_str(&b, "archive, ");
        append_safe_str(&b, status, 16);
        buf_append_char(&b, ')');
        if (att > (int64_t)row->attempts)
            row->attempts = att > UINT32_MAX ? UINT32_MAX : (uint32_t)att;
        if (le != NULL && att > best) {
            best = att;
            buf_reset(&e);
            append_safe_str(&e, le, CTL_ERROR_SHOW_MAX);
        }
    }
    if (e.len == 0)
        buf_append_char(&e, '-');
    if (b.len == 0)
        buf_append_char(&b, '-');
    row->rcpts = buf_take(&b);
    row->last_error = buf_take(&e);
    return 0;
}

int
ctl_row_from_json(const struct json *obj, int64_t now_s, struct ctl_row *row, struct buf *err)
{
    const char *id = json_str(json_get(obj, "id"));
    const char *sender = json_str(json_get(obj, "sender"));
    const struct json *held = json_get(obj, "held");
    struct buf b = BUF_INIT;
    int64_t arrival;
    memset(row, 0, sizeof(*row));
    if (obj == NULL || obj->type != JSON_OBJECT)
        return schema_fail(err, "not an object");
    if (id == NULL || !spool_qid_valid(id))
        return schema_fail(err, "bad id");
    if (sender == NULL || json_int(json_get(obj, "arrival"), &arrival) < 0)
        return schema_fail(err, "no sender or arrival");
    if (held != NULL && held->type != JSON_BOOL)
        return schema_fail(err, "bad held");
    memcpy(row->id, id, 17);
    ctl_fmt_age(now_s - arrival, row->age, sizeof(row->age));
    ctl_fmt_next(obj, now_s, row->next, sizeof(row->next));
    row->held = held != NULL && held->b;
    if (sender[0] == '\0')
        buf_append_str(&b, "<>");
    else
        append_safe_str(&b, sender, 256);
    row->sender = buf_take(&b);
    if (row_rcpts(json_get(obj, "recipients"), row, err) < 0) {
        ctl_row_fini(row);
        return -1;
    }
    return 0;
}

void
ctl_row_fini(struct ctl_row *row)
{
    FREE_NULL(&row->sender);
    FREE_NULL(&row->rcpts);
    FREE_NULL(&row->last_error);
}

#define AGE_COL 7 /* width of an age bucket column */

void
ctl_summary_header(int dest_width, struct buf *out)
{
    static const char *const labels[SCHED_AGE_BUCKETS] = SCHED_AGE_LABELS;
    buf_printf(
        out, "%-*s  %8s  %10s  %8s", dest_width, "DESTINATION", "MESSAGES", "RECIPIENTS", "OLDEST");
    for (size_t b = 0; b < SCHED_AGE_BUCKETS; b++)
        buf_printf(out, " %*s", AGE_COL, labels[b]);
    buf_append_str(out, "  LAST ERROR");
}

/* The age bucket columns of a summary object ("-" each when absent). */
static int
summary_ages(const struct json *ages, struct buf *out, struct buf *err)
{
    static const char *const labels[SCHED_AGE_BUCKETS] = SCHED_AGE_LABELS;
    for (size_t b = 0; b < SCHED_AGE_BUCKETS; b++) {
        int64_t n;
        if (ages == NULL) {
            buf_printf(out, " %*s", AGE_COL, "-");
            continue;
        }
        if (json_int(json_get(ages, labels[b]), &n) < 0)
            return schema_fail(err, "bad summary ages");
        buf_printf(out, " %*" PRId64, AGE_COL, n);
    }
    return 0;
}

int
ctl_summary_line(
    const struct json *obj, int64_t now_s, int dest_width, struct buf *out, struct buf *err)
{
    const char *dest = json_str(json_get(obj, "destination"));
    const char *le = json_str(json_get(obj, "last_error"));
    const struct json *held = json_get(obj, "held");
    bool is_held = dest == NULL && held != NULL && held->type == JSON_BOOL && held->b;
    int64_t msgs, rcpts, oldest;
    char age[16];
    size_t start = out->len, w;
    if ((dest == NULL && !is_held) || json_int(json_get(obj, "messages"), &msgs) < 0 ||
        json_int(json_get(obj, "recipients"), &rcpts) < 0 ||
        json_int(json_get(obj, "oldest"), &oldest) < 0)
        return schema_fail(err, "bad summary entry");
    if (is_held)
        buf_append_str(out, "(held)");
    else
        append_safe_str(out, dest[0] != '\0' ? dest : "-", 256);
    for (w = out->len - start; w < (size_t)dest_width; w++)
        buf_append_char(out, ' ');
    ctl_fmt_age(now_s - oldest, age, sizeof(age));
    buf_printf(out, "  %8" PRId64 "  %10" PRId64 "  %8s", msgs, rcpts, age);
    if (summary_ages(json_get(obj, "ages"), out, err) < 0)
        return -1;
    buf_append_str(out, "  ");
    append_safe_str(out, le != NULL ? le : "-", CTL_ERROR_SHOW_MAX);
    return 0;
}

bool
ctl_user_valid(const char *name)
{
    size_t n = strnlen(name, CTL_USER_MAX + 1);
    if (n == 0 || n > CTL_USER_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == ':' || c == ' ' || c == '\t' || c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

int
ctl_passwd_update(const char *old, size_t len, const char *user, const char *hash, struct buf *out,
    bool *replaced)
{
    size_t ulen = strlen(user), pos = 0;
    *replaced = false;
    while (pos < len) {
        const char *nl = memchr(old + pos, '\n', len - pos);
        size_t n = nl != NULL ? (size_t)(nl - (old + pos)) : len - pos;
        bool mine = n > ulen && memcmp(old + pos, user, ulen) == 0 && old[pos + ulen] == ':';
        if (mine && !*replaced) {
            buf_printf(out, "%s:%s\n", user, hash);
            *replaced = true;
        } else if (!mine) {
            buf_append(out, old + pos, n);
            buf_append_char(out, '\n');
        }
        pos += n + 1;
    }
    if (!*replaced)
        buf_printf(out, "%s:%s\n", user, hash);
    return out->len > CTL_AUTH_FILE_MAX ? -1 : 0;
}

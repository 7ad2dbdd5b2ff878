/*
 * tern-sendmail: a sendmail-compatible injector. Reads a message on stdin,
 * builds it (src/proto/inject.h) and submits it over SMTP to the first
 * smtp_listen address of the configuration (-C FILE, $TERN_CONFIG or
 * /etc/tern/tern.conf when it exists), else 127.0.0.1:2525. When ternd
 * cannot take it (not running, or a temporary failure), the message goes
 * into the maildrop (src/maildrop/maildrop.h), directly when we may write
 * there, else through the setgid helper tern-drop; ternd picks it up. As
 * `mailq` or with -bp it lists the queue instead. A short-lived command:
 * blocking I/O, every wait bounded by poll() timeouts. Exit codes are
 * sendmail's (sysexits.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "ctl/client.h"
#include "maildrop/maildrop.h"
#include "proto/data.h"
#include "proto/inject.h"
#include "util/buf.h"
#include "util/fsutil.h"
#include "util/parse.h"
#include "util/util.h"

#define DEFAULT_HOST       "127.0.0.1"
#define DEFAULT_PORT       2525
#define CONNECT_TIMEOUT_MS (30 * 1000)
#define REPLY_TIMEOUT_MS   (5 * 60 * 1000)  /* RFC 5321 §4.5.3.2: 5 minutes per command */
#define DOT_TIMEOUT_MS     (10 * 60 * 1000) /* §4.5.3.2.6: 10 minutes after the final dot */
#define QUIT_TIMEOUT_MS    5000
#define IO_CHUNK           65536

#ifndef TERN_DROP_PATH
#define TERN_DROP_PATH "/usr/libexec/tern-drop"
#endif

struct opts {
    bool extract;       /* -t */
    bool ignore_dots;   /* -i / -oi */
    const char *sender; /* -f / -r, NULL when not given */
    const char *config; /* -C */
    bool list;          /* -bp, or called as mailq */
    char **rcpt_args;
    int n_rcpt_args;
};

struct smtpc {
    int fd;
    struct buf in;    /* bytes read, not yet consumed */
    struct buf reply; /* the last reply's lines, "\n" separated, for errors */
    int code;
    bool ext_8bitmime, ext_smtputf8, ext_size;
    bool broken; /* an I/O error or timeout: do not talk any more */
};

/* --- command line --- */

static int
usage(const char *why)
{
    if (why != NULL)
        fprintf(stderr, "tern-sendmail: %s\n", why);
    fputs("usage: tern-sendmail [-t] [-i] [-f SENDER] [-F NAME] [-C FILE] [-oXXX] [-bm] [--] "
          "[RECIPIENT...]\n"
          "       tern-sendmail -bp [-C FILE]   (or mailq [-C FILE]): list the queue\n",
        stderr);
    return EX_USAGE;
}

static int
parse_args(int argc, char **argv, struct opts *o)
{
    int c;
    opterr = 0;
    while ((c = getopt(argc, argv, "tif:r:F:o:C:b:B:N:R:V:L:h:vGUnm")) != -1) {
        switch (c) {
        case 't':
            o->extract = true;
            break;
        case 'i':
            o->ignore_dots = true;
            break;
        case 'f':
        case 'r':
            o->sender = optarg;
            break;
        case 'C':
            o->config = optarg;
            break;
        case 'o': /* -oi; every other -oXXX is ignored as sendmail options */
            if (strcmp(optarg, "i") == 0)
                o->ignore_dots = true;
            break;
        case 'b':
            if (strcmp(optarg, "p") == 0)
                o->list = true;
            else if (strcmp(optarg, "m") != 0)
                return usage("only -bm (deliver mail) and -bp (list the queue) are supported");
            break;
        case '?':
            return usage("unknown option");
        default: /* -F -B -N -R -V -L -h -v -G -U -n -m: accepted, ignored */
            break;
        }
    }
    o->rcpt_args = argv + optind;
    o->n_rcpt_args = argc - optind;
    return 0;
}

/* What went wrong talking to ternd: shown only when the message could not
 * be left in the maildrop either (a fallback that works is silent, as
 * sendmail's queueing is). */
static struct buf smtp_notes = BUF_INIT;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void
say(const char *fmt, ...)
{
    va_list ap;
    buf_append_str(&smtp_notes, "tern-sendmail: ");
    va_start(ap, fmt);
    buf_vprintf(&smtp_notes, fmt, ap);
    va_end(ap);
    buf_append_char(&smtp_notes, '\n');
}

static void
say_flush(void)
{
    if (smtp_notes.len > 0)
        fputs(smtp_notes.data, stderr);
    buf_fini(&smtp_notes);
}

/* --- addresses --- */

/* Usable in MAIL FROM / RCPT TO: no control characters, and no space or
 * angle bracket outside a quoted local part. */
static bool
addr_ok(const char *a)
{
    bool quoted = false;
    for (const char *p = a; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < ' ' || c == 0x7f)
            return false;
        if (c == '\\' && quoted && p[1] != '\0')
            p++;
        else if (c == '"')
            quoted = !quoted;
        else if (!quoted && (c == ' ' || c == '<' || c == '>'))
            return false;
    }
    return !quoted && strlen(a) <= INJECT_ADDR_MAX;
}

/* Qualify unqualified addresses with @hostname, as sendmail does. */
static int
qualify(struct inject_addrs *in, const char *hostname, struct inject_addrs *out)
{
    for (size_t i = 0; i < in->n; i++) {
        struct buf b = BUF_INIT;
        int r;
        buf_append_str(&b, in->v[i]);
        if (strchr(in->v[i], '@') == NULL)
            buf_printf(&b, "@%s", hostname);
        r = addr_ok(b.data) ? inject_addrs_add(out, b.data, b.len) : -1;
        if (r < 0)
            fprintf(stderr, "tern-sendmail: bad or too many recipients: %s\n", b.data);
        buf_fini(&b);
        if (r < 0)
            return -1;
    }
    return 0;
}

static int
rcpts_from_args(const struct opts *o, const char *hostname, struct inject_addrs *out)
{
    struct inject_addrs raw = { NULL, 0, 0 };
    struct buf err = BUF_INIT;
    int r = 0;
    for (int i = 0; i < o->n_rcpt_args && r == 0; i++) {
        const char *a = o->rcpt_args[i];
        r = inject_parse_addrlist(a, strlen(a), &raw, &err);
        if (r < 0)
            fprintf(stderr, "tern-sendmail: %s: %s\n", a, err.data);
    }
    if (r == 0)
        r = qualify(&raw, hostname, out);
    inject_addrs_fini(&raw);
    buf_fini(&err);
    return r;
}

/* The envelope sender: -f (with "<>" or "" the null sender), else the
 * login name @ hostname. Owned. NULL when -f is unusable. */
static char *
make_sender(const char *given, const char *hostname)
{
    struct buf b = BUF_INIT;
    if (given != NULL) {
        size_t n = strlen(given);
        if (n >= 2 && given[0] == '<' && given[n - 1] == '>') {
            given++;
            n -= 2;
        }
        buf_append(&b, given, n);
        if (n > 0 && memchr(given, '@', n) == NULL)
            buf_printf(&b, "@%s", hostname);
    } else {
        struct passwd *pw = getpwuid(getuid());
        buf_printf(&b, "%s@%s", pw != NULL ? pw->pw_name : "nobody", hostname);
    }
    if (b.data == NULL)
        buf_append_str(&b, "");
    if (!addr_ok(b.data)) {
        fprintf(stderr, "tern-sendmail: bad sender address: %s\n", b.data);
        buf_fini(&b);
        return NULL;
    }
    return buf_take(&b);
}

/* --- SMTP client --- */

static int
wait_fd(int fd, short ev, int timeout_ms)
{
    struct pollfd p = { fd, ev, 0 };
    int r;
    do {
        r = poll(&p, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        errno = ETIMEDOUT;
    return r > 0 ? 0 : -1;
}

static int
connect_addr(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    int err = 0;
    socklen_t len = sizeof(err);
    if (fd < 0)
        return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, CONNECT_TIMEOUT_MS) == 0 &&
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0) {
        if (err == 0)
            return fd;
        errno = err;
    }
    err = errno;
    close(fd);
    errno = err;
    return -1;
}

static int
smtp_connect(struct smtpc *c, const char *host, uint16_t port)
{
    struct addrinfo hints, *res = NULL;
    char ports[8];
    int r;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(ports, sizeof(ports), "%u", (unsigned)port);
    r = getaddrinfo(host, ports, &hints, &res);
    if (r != 0) {
        say("cannot resolve %s: %s", host, gai_strerror(r));
        return -1;
    }
    c->fd = -1;
    for (struct addrinfo *ai = res; ai != NULL && c->fd < 0; ai = ai->ai_next)
        c->fd = connect_addr(ai);
    if (c->fd < 0)
        say("cannot connect to %s port %u: %s", host, (unsigned)port, strerror(errno));
    freeaddrinfo(res);
    return c->fd < 0 ? -1 : 0;
}

static int
smtp_write(struct smtpc *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(c->fd, POLLOUT, REPLY_TIMEOUT_MS) < 0)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* The next line of c->in, reading as needed. Line in *line (no CRLF). */
static int
smtp_getline(struct smtpc *c, int timeout_ms, struct buf *line)
{
    for (;;) {
        char *nl = c->in.len ? memchr(c->in.data, '\n', c->in.len) : NULL;
        if (nl != NULL) {
            size_t n = (size_t)(nl - c->in.data);
            buf_reset(line);
            buf_append(line, c->in.data, (n > 0 && nl[-1] == '\r') ? n - 1 : n);
            buf_consume(&c->in, n + 1);
            return 0;
        }
        if (c->in.len > INJECT_REPLY_LINE_MAX) {
            errno = EPROTO;
            return -1;
        }
        buf_reserve(&c->in, IO_CHUNK);
        ssize_t r = recv(c->fd, c->in.data + c->in.len, IO_CHUNK, 0);
        if (r > 0) {
            c->in.len += (size_t)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(c->fd, POLLIN, timeout_ms) < 0)
                return -1;
        } else {
            if (r == 0)
                errno = ECONNRESET;
            return -1;
        }
    }
}

static void
note_extension(struct smtpc *c, const char *kw, size_t n)
{
    size_t k = 0;
    while (k < n && kw[k] != ' ')
        k++;
    c->ext_8bitmime |= str_ieq(kw, k, "8BITMIME");
    c->ext_smtputf8 |= str_ieq(kw, k, "SMTPUTF8");
    c->ext_size |= str_ieq(kw, k, "SIZE");
}

/* Read one (multi-line) reply into c->code / c->reply. -1 on I/O error,
 * timeout or a malformed reply (errno says which). */
static int
smtp_reply(struct smtpc *c, int timeout_ms, bool ehlo)
{
    struct buf line = BUF_INIT;
    bool more = true;
    int lines = 0, code = 0, r = 0;
    buf_reset(&c->reply);
    while (more && r == 0) {
        r = smtp_getline(c, timeout_ms, &line);
        if (r == 0 && (++lines > INJECT_REPLY_LINES || inject_reply_line(line.data ? line.data : "",
                                                           line.len, &code, &more) < 0)) {
            errno = EPROTO;
            r = -1;
        }
        if (r == 0) {
            if (lines > 1 && ehlo && line.len > 4)
                note_extension(c, line.data + 4, line.len - 4);
            buf_printf(&c->reply, "%s%s", lines > 1 ? "\n" : "", line.data);
        }
    }
    c->code = code;
    buf_fini(&line);
    return r;
}

/* Send a command line and read its reply; returns the reply code or -1. */
static int
smtp_cmd(struct smtpc *c, const char *cmd, bool ehlo)
{
    struct buf b = BUF_INIT;
    int r;
    buf_printf(&b, "%s\r\n", cmd);
    r = smtp_write(c, b.data, b.len);
    buf_fini(&b);
    if (r < 0 || smtp_reply(c, REPLY_TIMEOUT_MS, ehlo) < 0)
        return -1;
    return c->code;
}

/* The message, dot-stuffed (RFC 5321 §4.5.2), then the final dot. */
static int
smtp_send_data(struct smtpc *c, const struct buf *msg)
{
    struct buf out = BUF_INIT;
    bool bol = true;
    int r = 0;
    for (size_t off = 0; off < msg->len && r == 0; off += IO_CHUNK) {
        size_t n = msg->len - off < IO_CHUNK ? msg->len - off : IO_CHUNK;
        buf_reset(&out);
        smtp_data_stuff(msg->data + off, n, &bol, &out);
        r = smtp_write(c, out.data, out.len);
    }
    buf_fini(&out);
    if (r < 0 || smtp_write(c, ".\r\n", 3) < 0 || smtp_reply(c, DOT_TIMEOUT_MS, false) < 0)
        return -1;
    return c->code;
}

/* --- submission --- */

struct submission {
    const char *host;
    uint16_t port;
    const char *helo;
    const char *sender;
    const struct inject_addrs *rcpts;
    const struct buf *msg;
    bool utf8, body8;
};

/* Exit code for a failed step: sysexits as sendmail maps SMTP replies. */
static int
fail_step(struct smtpc *c, const char *step, int code, bool rcpt)
{
    if (code < 0) {
        c->broken = true;
        say("%s: %s", step, strerror(errno));
        return errno == EPROTO ? EX_PROTOCOL : EX_TEMPFAIL;
    }
    say("%s rejected: %s", step, c->reply.data ? c->reply.data : "");
    if (code >= 400 && code < 500)
        return EX_TEMPFAIL;
    if (rcpt && (code == 550 || code == 551 || code == 553))
        return EX_NOUSER;
    return EX_DATAERR;
}

static int
smtp_hello(struct smtpc *c, const struct submission *s)
{
    struct buf cmd = BUF_INIT;
    int code = smtp_reply(c, REPLY_TIMEOUT_MS, false) < 0 ? -1 : c->code;
    if (code != 220)
        return fail_step(c, "greeting", code, false);
    buf_printf(&cmd, "EHLO %s", s->helo);
    code = smtp_cmd(c, cmd.data, true);
    if (code >= 500 && code < 600) { /* RFC 5321 §3.2: fall back to HELO */
        buf_reset(&cmd);
        buf_printf(&cmd, "HELO %s", s->helo);
        code = smtp_cmd(c, cmd.data, false);
    }
    buf_fini(&cmd);
    if (code != 250)
        return fail_step(c, "EHLO", code, false);
    if (s->utf8 && !c->ext_smtputf8) {
        say("the message needs SMTPUTF8, which %s does not offer", s->host);
        return EX_DATAERR;
    }
    return 0;
}

static int
smtp_envelope(struct smtpc *c, const struct submission *s)
{
    struct buf cmd = BUF_INIT;
    int code;
    buf_printf(&cmd, "MAIL FROM:<%s>", s->sender);
    if (c->ext_size)
        buf_printf(&cmd, " SIZE=%zu", s->msg->len);
    if (s->body8 && c->ext_8bitmime)
        buf_append_str(&cmd, " BODY=8BITMIME");
    if (s->utf8)
        buf_append_str(&cmd, " SMTPUTF8");
    code = smtp_cmd(c, cmd.data, false);
    buf_fini(&cmd);
    if (code != 250)
        return fail_step(c, "MAIL FROM", code, false);
    for (size_t i = 0; i < s->rcpts->n; i++) {
        buf_reset(&cmd);
        buf_printf(&cmd, "RCPT TO:<%s>", s->rcpts->v[i]);
        code = smtp_cmd(c, cmd.data, false);
        if (code != 250 && code != 251) {
            buf_fini(&cmd);
            return fail_step(c, s->rcpts->v[i], code, true);
        }
    }
    buf_fini(&cmd);
    return 0;
}

static int
submit(const struct submission *s)
{
    struct smtpc c = { -1, BUF_INIT, BUF_INIT, 0, false, false, false, false };
    int ret, code;
    if (smtp_connect(&c, s->host, s->port) < 0)
        return EX_TEMPFAIL;
    ret = smtp_hello(&c, s);
    if (ret == 0)
        ret = smtp_envelope(&c, s);
    if (ret == 0) {
        code = smtp_cmd(&c, "DATA", false);
        if (code != 354)
            ret = fail_step(&c, "DATA", code, false);
    }
    if (ret == 0) {
        code = smtp_send_data(&c, s->msg);
        if (code != 250)
            ret = fail_step(&c, "end of data", code, false);
    }
    if (!c.broken && smtp_write(&c, "QUIT\r\n", 6) == 0)
        (void)smtp_reply(&c, QUIT_TIMEOUT_MS, false); /* the outcome is already known */
    close(c.fd);
    buf_fini(&c.in);
    buf_fini(&c.reply);
    return ret;
}

/* --- wiring --- */

static int
read_stdin(bool dot_ends, struct inject_reader *rd)
{
    char chunk[IO_CHUNK];
    int r = 0;
    inject_reader_init(rd, dot_ends, INJECT_MSG_MAX);
    while (r == 0) {
        ssize_t n = read(STDIN_FILENO, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "tern-sendmail: reading the message: %s\n", strerror(errno));
            return EX_IOERR;
        }
        if (n == 0) {
            r = inject_reader_finish(rd);
            break;
        }
        r = inject_reader_feed(rd, chunk, (size_t)n);
    }
    if (r < 0) {
        fprintf(stderr, "tern-sendmail: message larger than %u bytes\n", INJECT_MSG_MAX);
        return EX_DATAERR;
    }
    return 0;
}

/* The configuration named by -C, else by $TERN_CONFIG (when not empty),
 * else the default file when it exists; NULL: none. */
static const char *
config_file(const struct opts *o)
{
    const char *env = getenv("TERN_CONFIG");
    if (o->config != NULL)
        return o->config;
    return config_file_or_default(env != NULL && env[0] != '\0' ? env : NULL);
}

/* Target and hostname from the configuration, or the defaults. */
static int
load_target(const char *path, struct config **cfg, struct hostport *to, char *host, size_t cap)
{
    struct buf err = BUF_INIT;
    snprintf(to->host, sizeof(to->host), "%s", DEFAULT_HOST);
    to->port = DEFAULT_PORT;
    if (gethostname(host, cap) < 0 || host[0] == '\0')
        snprintf(host, cap, "localhost");
    host[cap - 1] = '\0';
    if (path == NULL || path[0] == '\0')
        return 0;
    *cfg = config_load(path, NULL, 0, false, &err);
    if (*cfg == NULL) {
        fprintf(stderr, "tern-sendmail: configuration error:\n%s\n", err.len ? err.data : "");
        buf_fini(&err);
        return EX_CONFIG;
    }
    buf_fini(&err);
    if ((*cfg)->n_smtp_listen > 0)
        *to = (*cfg)->smtp_listen[0];
    /* A wildcard listener is reached over loopback. */
    if (to->host[0] == '\0' || strcmp(to->host, "0.0.0.0") == 0)
        snprintf(to->host, sizeof(to->host), "127.0.0.1");
    else if (strcmp(to->host, "::") == 0)
        snprintf(to->host, sizeof(to->host), "::1");
    if ((*cfg)->hostname != NULL && (*cfg)->hostname[0] != '\0')
        snprintf(host, cap, "%s", (*cfg)->hostname);
    return 0;
}

static void
make_msgid(const char *hostname, char *out, size_t cap)
{
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        rnd = (uint64_t)tern_mono_ms() ^ ((uint64_t)getpid() << 32);
    snprintf(
        out, cap, "<%016llx.%lld@%s>", (unsigned long long)rnd, (long long)time(NULL), hostname);
}

/* --- the maildrop, when ternd cannot take the message --- */

/* Run tern-drop on dir with the drop file on its stdin. */
static int
run_helper(const char *dir, const struct buf *data)
{
    const char *helper = getenv("TERN_DROP_HELPER");
    int p[2], status = 0, e = 0;
    pid_t pid;
    if (helper == NULL || helper[0] == '\0')
        helper = TERN_DROP_PATH;
    if (pipe2(p, O_CLOEXEC) < 0) {
        say("cannot run %s: %s", helper, strerror(errno));
        return EX_TEMPFAIL;
    }
    pid = fork();
    if (pid == 0) {
        if (dup2(p[0], STDIN_FILENO) < 0)
            _exit(EX_OSERR);
        execl(helper, "tern-drop", dir, (char *)NULL);
        fprintf(stderr, "tern-sendmail: cannot run %s: %s\n", helper, strerror(errno));
        _exit(EX_TEMPFAIL);
    }
    close(p[0]);
    if (pid < 0 || fd_write_full(p[1], data->data, data->len) < 0)
        e = errno;
    close(p[1]);
    if (pid < 0) {
        say("cannot run %s: %s", helper, strerror(e));
        return EX_TEMPFAIL;
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && e == 0)
        return 0;
    say("%s did not store the message (%s %d)", helper,
        WIFEXITED(status) ? "exit status" : "signal",
        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    return WIFEXITED(status) && WEXITSTATUS(status) == EX_DATAERR ? EX_DATAERR : EX_TEMPFAIL;
}

/* Leave the message in the maildrop: written here when we may (root,
 * ternd's user), else by tern-drop. sender NULL: not given (ternd names
 * the file's owner). 0 once it is on disk. */
static int
drop(const struct config *cfg, const char *sender, const struct inject_addrs *rcpts,
    const struct buf *msg)
{
    struct buf data = BUF_INIT, err = BUF_INIT;
    char name[MAILDROP_NAME_MAX];
    int fd, ret = EX_TEMPFAIL;
    if (msg->len > cfg->max_message_size) {
        say("message larger than max_message_size (%llu bytes)",
            (unsigned long long)cfg->max_message_size);
        return EX_DATAERR;
    }
    if (rcpts->n > cfg->max_recipients) {
        say("more recipients than max_recipients (%u)", (unsigned)cfg->max_recipients);
        return EX_DATAERR;
    }
    if (maildrop_format_head(sender, rcpts->v, rcpts->n, msg->len, &data, &err) < 0) {
        say("cannot queue the message: %s", err.data);
        buf_fini(&err);
        return EX_DATAERR;
    }
    buf_append(&data, msg->data, msg->len);
    buf_append(&data, MAILDROP_TRAILER, MAILDROP_TRAILER_LEN);
    fd = open(cfg->maildrop_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0 && maildrop_write(fd, data.data, data.len, name) == 0)
        ret = 0;
    else if (errno == EACCES || errno == EPERM)
        ret = run_helper(cfg->maildrop_dir, &data);
    else
        say("cannot store the message in %s: %s%s", cfg->maildrop_dir, strerror(errno),
            errno == ENOENT ? " (ternd makes it when it starts)" : "");
    if (fd >= 0)
        close(fd);
    buf_fini(&data);
    buf_fini(&err);
    return ret;
}

/* -bp, mailq: the queue as `ternctl queue list` shows it. */
static int
list_queue(const struct config *cfg, const char *prog)
{
    struct ctl_list l = { prog, NULL, 0, 0, false };
    struct buf msg = BUF_INIT;
    bool offline = false;
    int ret = 0;
    enum ctl_rc rc = ctl_list_fetch(cfg->spool_dir, ctl_list_collect, &l, &offline, &msg);
    if (rc == CTL_OK) {
        ctl_list_print(&l, stdout);
        if (fflush(stdout) != 0 || ferror(stdout))
            ret = EX_IOERR;
        else if (l.bad)
            ret = EX_SOFTWARE;
    } else if (offline || (access(cfg->spool_dir, X_OK) < 0 && errno == EACCES)) {
        /* As Postfix's postqueue: without the daemon, or without the right
         * to reach it, there is no report. */
        fprintf(stderr,
            "%s: queue report unavailable: the mail system is down, or the queue is readable "
            "only by root and ternd's user (%s)\n",
            prog, msg.len ? msg.data : cfg->spool_dir);
        ret = EX_UNAVAILABLE;
    } else {
        fprintf(stderr, "%s: %s\n", prog, msg.len ? msg.data : "cannot list the queue");
        ret = EX_TEMPFAIL;
    }
    ctl_list_fini(&l);
    buf_fini(&msg);
    return ret;
}

/* Build the message and the recipient list, then submit. */
static int
run(const struct opts *o, const struct config *cfg, const char *hostname, const struct hostport *to,
    const char *sender)
{
    struct inject_reader rd;
    struct inject_addrs rcpts = { NULL, 0, 0 }, hdr = { NULL, 0, 0 };
    struct inject_info info;
    struct buf msg = BUF_INIT, err = BUF_INIT;
    char date[64], msgid[CONFIG_HOST_MAX + 64], *from = NULL;
    int ret = rcpts_from_args(o, hostname, &rcpts) < 0 ? EX_USAGE : 0;
    if (ret == 0)
        ret = read_stdin(!o->ignore_dots, &rd);
    else
        inject_reader_init(&rd, false, 0);
    if (ret == 0) {
        inject_fmt_date(time(NULL), date, sizeof(date));
        make_msgid(hostname, msgid, sizeof(msgid));
        from = sender[0] != '\0' ? xstrdup(sender) : make_sender(NULL, hostname);
        struct inject_opts io = { o->extract, from, date, msgid };
        if (inject_build(&io, rd.out.data ? rd.out.data : "", rd.out.len, &msg, &hdr, &info, &err) <
            0) {
            fprintf(stderr, "tern-sendmail: %s\n", err.data);
            ret = EX_DATAERR;
        } else if (qualify(&hdr, hostname, &rcpts) < 0) {
            ret = EX_DATAERR;
        }
    }
    inject_reader_fini(&rd);
    if (ret == 0 && rcpts.n == 0)
        ret = usage("no recipients given");
    if (ret == 0) {
        bool utf8 = info.hdr_8bit || inject_has_8bit(sender, strlen(sender));
        for (size_t i = 0; i < rcpts.n; i++)
            utf8 |= inject_has_8bit(rcpts.v[i], strlen(rcpts.v[i]));
        struct submission s = { to->host, to->port, hostname, sender, &rcpts, &msg, utf8,
            info.body_8bit };
        ret = submit(&s);
        /* ternd not reachable, or not able to take it now: the maildrop. */
        if (ret == EX_TEMPFAIL || ret == EX_PROTOCOL)
            ret = drop(cfg, o->sender != NULL ? sender : NULL, &rcpts, &msg);
    }
    if (ret != 0)
        say_flush();
    buf_fini(&smtp_notes);
    free(from);
    inject_addrs_fini(&rcpts);
    inject_addrs_fini(&hdr);
    buf_fini(&msg);
    buf_fini(&err);
    return ret;
}

int
main(int argc, char **argv)
{
    struct opts o;
    struct config *cfg = NULL;
    struct hostport to;
    char hostname[CONFIG_HOST_MAX];
    char *sender;
    int ret;
    const char *prog = basename(argv[0]);
    struct buf err = BUF_INIT;
    memset(&o, 0, sizeof(o));
    if ((ret = parse_args(argc, argv, &o)) != 0)
        return ret;
    o.list |= strcmp(prog, "mailq") == 0;
    ret = load_target(config_file(&o), &cfg, &to, hostname, sizeof(hostname));
    if (ret != 0)
        return ret;
    /* The spool and maildrop directories: the built-in ones without a file. */
    if (cfg == NULL && (cfg = config_load(NULL, NULL, 0, false, &err)) == NULL)
        tern_panic("the built-in configuration does not load: %s", err.data);
    buf_fini(&err);
    /* A SIGPIPE from a helper that exits early must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    if (o.list) {
        ret = list_queue(cfg, prog);
        config_unref(cfg);
        return ret;
    }
    sender = make_sender(o.sender, hostname);
    if (sender == NULL)
        ret = EX_USAGE;
    else
        ret = run(&o, cfg, hostname, &to, sender);
    free(sender);
    config_unref(cfg);
    return ret;
}

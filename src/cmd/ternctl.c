/*
 * ternctl: the operator's tool. Argument parsing and wiring only: queue
 * commands go to the running ternd over SPOOL/ctl.sock (src/ctl/client.h),
 * `passwd` rewrites auth_users_file atomically. Exit status: 0 ok, 1 runtime
 * failure (unknown queue id included), 2 usage or configuration error.
 */
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cmd/dnscheck.h"
#include "cmd/histcmd.h"
#include "cmd/tlsshow.h"
#include "config/config.h"
#include "ctl/client.h"
#include "dkim/dkim.h"
#include "spool/spool.h"
#include "util/buf.h"
#include "util/fsutil.h"
#include "util/json.h"
#include "util/parse.h"
#include "util/util.h"

#define EXIT_RUNTIME  1
#define EXIT_USAGE    2
#define OVERRIDES_MAX 256
#define PASSWORD_MAX  1024

struct ctx {
    struct config *cfg;
};

struct command {
    const char *word1, *word2; /* word2 NULL: one-word command */
    const char *verb;          /* control request verb, when the command sends one */
    int (*fn)(const struct command *cmd, struct ctx *ctx, int argc, char **argv);
    bool needs_config;
};

static const char usage_text[] =
    "usage: ternctl [-c FILE] [-o name=value]... COMMAND ...\n"
    "  -c FILE   configuration file (default: " CONFIG_DEFAULT_FILE " if it exists)\n"
    "commands:\n"
    "  queue list [--json]       list queued messages, one line each starting with its id\n"
    "  queue show ID [--json]    a queued message: envelope, recipients, every attempt\n"
    "  queue summary [--json]    summary of the queue by destination\n"
    "  queue flush               retry everything now\n"
    "  queue flush|hold|release|delete TARGET... [SELECTOR...] [--yes]\n"
    "                            TARGET: queue ids, ALL, or - (ids on stdin, one a line)\n"
    "                            SELECTOR: --sender ADDR, --recipient-domain DOMAIN,\n"
    "                            --older-than DURATION (all must hold; with ALL or alone)\n"
    "                            delete ALL needs --yes (-y)\n"
    "  passwd USER               add or change an AUTH user in auth_users_file\n"
    "  dkim keygen DOMAIN SELECTOR [--algorithm rsa|ed25519] [--bits N] [--key-file PATH]\n"
    "  dns check DOMAIN [--json]\n"
    "  tls show DOMAIN\n"
    "  tls report-now            send the TLS-RPT reports now (today's counts so far too)\n"
    "  trace QUERY [--json]      timeline of the messages with this queue id, Message-ID or\n"
    "                            address (sender or recipient), from the history journal\n";

static int
usage_error(void)
{
    fputs(usage_text, stderr);
    return EXIT_USAGE;
}

static int64_t
now_s(void)
{
    return tern_now_ms() / 1000;
}

/* Report a failed control exchange; always returns EXIT_RUNTIME. */
static int
report_ctl(enum ctl_rc rc, const struct buf *msg)
{
    const char *m = msg->len ? msg->data : "unknown error";
    if (rc == CTL_NODAEMON)
        fprintf(stderr, "ternctl: ternd is not running (no control socket at %s)\n", m);
    else
        fprintf(stderr, "ternctl: %s\n", m);
    return EXIT_RUNTIME;
}

static int
flush_stdout(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "ternctl: writing output: %s\n", strerror(errno));
        return EXIT_RUNTIME;
    }
    return 0;
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]: the value (advancing *i),
 * or NULL when it is another argument (*missing: the value is absent). */
static const char *
opt_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

/* --- queue list / summary --- */

struct list_state {
    struct ctl_list list;
    struct json **sums; /* SUMMARY objects */
    size_t n_sums, cap_sums;
    bool bad; /* a line could not be understood */
};

static int
print_raw_line(const char *line, size_t len, void *arg)
{
    (void)arg;
    if (fwrite(line, 1, len, stdout) != len || fputc('\n', stdout) == EOF)
        return -1;
    return 0;
}

static int
collect_summary(const char *line, size_t len, void *arg)
{
    struct list_state *st = arg;
    struct json *obj = NULL;
    struct buf err = BUF_INIT;
    if (json_parse(line, len, &obj, &err) < 0 ||
        (json_get(obj, "destination") == NULL && json_get(obj, "held") == NULL)) {
        fprintf(stderr, "ternctl: skipping a SUMMARY line: %s\n",
            err.len ? err.data : "no destination");
        st->bad = true;
        json_free(obj);
    } else {
        if (st->n_sums == st->cap_sums) {
            st->cap_sums = st->cap_sums ? st->cap_sums * 2 : 16;
            st->sums = xrealloc(st->sums, st->cap_sums * sizeof(*st->sums));
        }
        st->sums[st->n_sums++] = obj;
    }
    buf_fini(&err);
    return 0;
}

static void
list_state_fini(struct list_state *st)
{
    ctl_list_fini(&st->list);
    for (size_t i = 0; i < st->n_sums; i++)
        json_free(st->sums[i]);
    free(st->sums);
}

static bool
print_summary(const struct list_state *st)
{
    size_t w = 11;
    bool ok = true;
    if (st->n_sums == 0)
        return true;
    for (size_t i = 0; i < st->n_sums; i++) {
        const char *d = json_str(json_get(st->sums[i], "destination"));
        size_t n = d != NULL ? strlen(d) : 0;
        w = n > w ? n : w;
    }
    w = w > 40 ? 40 : w;
    {
        struct buf head = BUF_INIT;
        ctl_summary_header((int)w, &head);
        printf("%s\n", head.data);
        buf_fini(&head);
    }
    for (size_t i = 0; i < st->n_sums; i++) {
        struct buf line = BUF_INIT, err = BUF_INIT;
        if (ctl_summary_line(st->sums[i], now_s(), (int)w, &line, &err) < 0) {
            fprintf(stderr, "ternctl: %s\n", err.data);
            ok = false;
        } else {
            printf("%s\n", line.data);
        }
        buf_fini(&line);
        buf_fini(&err);
    }
    return ok;
}

/* Parse the optional "--json" of queue list / summary: 0 ok, -1 usage. */
static int
json_flag(int argc, char **argv, bool *json)
{
    *json = false;
    if (argc == 0)
        return 0;
    if (argc == 1 && strcmp(argv[0], "--json") == 0) {
        *json = true;
        return 0;
    }
    return -1;
}

static int
cmd_queue_show(const struct command *cmd, struct ctx *ctx, int argc, char **argv)
{
    struct list_state st;
    struct buf msg = BUF_INIT;
    bool json, offline, list = strcmp(cmd->word2, "list") == 0;
    enum ctl_rc rc = CTL_OK;
    int ret = 0;
    if (json_flag(argc, argv, &json) < 0)
        return usage_error();
    memset(&st, 0, sizeof(st));
    st.list.prog = "ternctl";
    if (list)
        rc = ctl_list_fetch(ctx->cfg->spool_dir, json ? print_raw_line : ctl_list_collect,
            json ? (void *)&st : (void *)&st.list, &offline, &msg);
    if (rc == CTL_OK && !list)
        rc = ctl_call(ctx->cfg->spool_dir, "SUMMARY", CTL_TIMEOUT_MS,
            json ? print_raw_line : collect_summary, &st, &msg);
    if (rc != CTL_OK) {
        ret = report_ctl(rc, &msg);
    } else if (!json) {
        if (list)
            ctl_list_print(&st.list, stdout);
        if (!print_summary(&st) || st.bad || st.list.bad)
            ret = EXIT_RUNTIME;
    }
    if (flush_stdout() != 0)
        ret = EXIT_RUNTIME;
    list_state_fini(&st);
    buf_fini(&msg);
    return ret;
}

/* --- flush / delete / hold / release --- */

/* What one action command was asked. */
struct act_opts {
    const char *sender, *rdomain; /* selectors, or NULL */
    int64_t older_s;              /* 0: any age */
    bool yes, all, from_stdin;
    char **ids; /* borrowed from argv */
    size_t n_ids;
};

/* The tally of an action command's answers. */
struct act_run {
    const char *word; /* "held", "released", "deleted", "flushed" */
    size_t done, unknown;
};

static int
act_option(int argc, char **argv, int *i, struct act_opts *o, bool *missing)
{
    const char *v;
    int64_t ms;
    if (strcmp(argv[*i], "--yes") == 0 || strcmp(argv[*i], "-y") == 0) {
        o->yes = true;
    } else if ((v = opt_value(argc, argv, i, "--sender", missing)) != NULL) {
        o->sender = v;
    } else if ((v = opt_value(argc, argv, i, "--recipient-domain", missing)) != NULL) {
        o->rdomain = v;
    } else if ((v = opt_value(argc, argv, i, "--older-than", missing)) != NULL) {
        if (parse_duration(v, false, &ms) < 0) {
            fprintf(stderr, "ternctl: --older-than: a duration such as 90s, 30m, 4h or 2d\n");
            return -1;
        }
        o->older_s = ms / 1000 > 0 ? ms / 1000 : 1;
    } else {
        return 1;
    }
    return 0;
}

/* Parse the arguments of hold/release/delete/flush: 0, or -1 (said why). */
static int
act_args(int argc, char **argv, struct act_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->ids = xcalloc((size_t)argc + 1, sizeof(*o->ids));
    for (int i = 0; i < argc; i++) {
        bool missing = false;
        int rc = act_option(argc, argv, &i, o, &missing);
        if (rc < 0)
            return -1;
        if (rc == 0)
            continue;
        if (missing || (argv[i][0] == '-' && argv[i][1] != '\0')) {
            fprintf(
                stderr, "ternctl: %s %s\n", missing ? "no value for" : "unknown option", argv[i]);
            return -1;
        }
        if (strcmp(argv[i], "ALL") == 0)
            o->all = true;
        else if (strcmp(argv[i], "-") == 0)
            o->from_stdin = true;
        else
            o->ids[o->n_ids++] = argv[i];
    }
    if (o->all && (o->n_ids > 0 || o->from_stdin)) {
        fprintf(stderr, "ternctl: ALL goes alone (no ids, no -)\n");
        return -1;
    }
    if ((o->sender || o->rdomain || o->older_s) && (o->n_ids > 0 || o->from_stdin)) {
        fprintf(stderr, "ternctl: selectors go with ALL or alone, not with ids\n");
        return -1;
    }
    return 0;
}

/* A ctl_line_fn: one "done QID" or "unknown QID" answer. */
static int
act_line(const char *line, size_t len, void *arg)
{
    struct act_run *r = arg;
    char id[17];
    if (len == 5 + 16 && memcmp(line, "done ", 5) == 0 && ctl_id_line(line + 5, 16, id) == 1) {
        printf("%s: %s\n", id, r->word);
        r->done++;
    } else if (len == 8 + 16 && memcmp(line, "unknown ", 8) == 0 &&
               ctl_id_line(line + 8, 16, id) == 1) {
        fprintf(stderr, "ternctl: %s: unknown queue id\n", id);
        r->unknown++;
    } else {
        fprintf(stderr, "ternctl: unexpected answer from ternd\n");
        return -1;
    }
    return 0;
}

/* Send the ids gathered in batch (n of them) on fd; n is reset. */
static enum ctl_rc
act_send(int fd, const char *verb, char (*batch)[17], size_t *n, struct act_run *r, struct buf *msg)
{
    struct buf req = BUF_INIT;
    enum ctl_rc rc = CTL_OK;
    if (*n == 0)
        return CTL_OK;
    buf_append_str(&req, verb);
    for (size_t i = 0; i < *n; i++)
        buf_printf(&req, " %s", batch[i]);
    *n = 0;
    rc = ctl_exchange(fd, req.data, CTL_TIMEOUT_MS, act_line, r, msg);
    buf_fini(&req);
    return rc;
}

/* Queue one id (or count it unknown when it is not an id); a full batch
 * goes out. */
static enum ctl_rc
act_add(int fd, const char *verb, const char *id, char (*batch)[17], size_t *n, struct act_run *r,
    struct buf *msg)
{
    if (!spool_qid_valid(id)) {
        struct buf shown = BUF_INIT;
        buf_append_safe(&shown, id, strnlen(id, 64), 40);
        fprintf(stderr, "ternctl: %s: not a queue id (16 lowercase hex digits)\n",
            shown.data ? shown.data : "");
        buf_fini(&shown);
        r->unknown++;
        return CTL_OK;
    }
    memcpy(batch[(*n)++], id, 17);
    return *n == CTL_BATCH_IDS ? act_send(fd, verb, batch, n, r, msg) : CTL_OK;
}

/* Ids from stdin, one a line: bounded line length and count. */
static enum ctl_rc
act_stdin(
    int fd, const char *verb, char (*batch)[17], size_t *n, struct act_run *r, struct buf *msg)
{
    char line[CTL_ID_LINE_MAX + 2];
    size_t count = 0, lineno = 0;
    enum ctl_rc rc = CTL_OK;
    while (rc == CTL_OK && fgets(line, sizeof(line), stdin) != NULL) {
        size_t len = strlen(line);
        char id[17];
        int k;
        if (len > 0 && line[len - 1] == '\n') {
            len--;
        } else if (!feof(stdin)) {
            int c;
            while ((c = getchar()) != EOF && c != '\n')
                ; /* the rest of an over-long line */
            len = CTL_ID_LINE_MAX + 1;
        }
        lineno++;
        k = len > CTL_ID_LINE_MAX ? -1 : ctl_id_line(line, len, id);
        if (k == 0)
            continue;
        if (++count > CTL_STDIN_IDS_MAX) {
            fprintf(stderr, "ternctl: more than %u ids on stdin: the rest is ignored\n",
                CTL_STDIN_IDS_MAX);
            r->unknown++;
            break;
        }
        if (k < 0) {
            fprintf(stderr, "ternctl: stdin line %zu: not a queue id\n", lineno);
            r->unknown++;
            continue;
        }
        rc = act_add(fd, verb, id, batch, n, r, msg);
    }
    if (rc == CTL_OK && ferror(stdin)) {
        fprintf(stderr, "ternctl: reading stdin: %s\n", strerror(errno));
        r->unknown++;
    }
    return rc;
}

/* The ids of argv and stdin, in batches over one connection. */
static enum ctl_rc
act_ids(
    struct ctx *ctx, const char *verb, const struct act_opts *o, struct act_run *r, struct buf *msg)
{
    char batch[CTL_BATCH_IDS][17];
    size_t n = 0;
    enum ctl_rc rc = CTL_OK;
    int fd;
    if (ctl_connect(ctx->cfg->spool_dir, &fd, &rc, msg) < 0)
        return rc;
    for (size_t i = 0; i < o->n_ids && rc == CTL_OK; i++)
        rc = act_add(fd, verb, o->ids[i], batch, &n, r, msg);
    if (rc == CTL_OK && o->from_stdin)
        rc = act_stdin(fd, verb, batch, &n, r, msg);
    if (rc == CTL_OK)
        rc = act_send(fd, verb, batch, &n, r, msg);
    close(fd);
    return rc;
}

static int
cmd_queue_action(const struct command *cmd, struct ctx *ctx, int argc, char **argv)
{
    static const char *const words[] = { "flushed", "deleted", "held", "released" };
    struct act_opts o;
    struct act_run r = { NULL, 0, 0 };
    struct buf msg = BUF_INIT, req = BUF_INIT;
    enum ctl_rc rc;
    bool selecting;
    int ret = 0;
    r.word = words[cmd->word2[0] == 'f'   ? 0
                   : cmd->word2[0] == 'd' ? 1
                   : cmd->word2[0] == 'h' ? 2
                                          : 3];
    if (act_args(argc, argv, &o) < 0) {
        free(o.ids);
        return usage_error();
    }
    selecting = o.all || o.sender || o.rdomain || o.older_s;
    if (!selecting && o.n_ids == 0 && !o.from_stdin) {
        free(o.ids);
        if (strcmp(cmd->verb, "FLUSH") != 0)
            return usage_error();
        /* Bare flush: retry everything, as ever. */
        rc = ctl_call(ctx->cfg->spool_dir, "FLUSH", CTL_TIMEOUT_MS, NULL, NULL, &msg);
        if (rc == CTL_OK) {
            printf("queue flush requested\n");
            ret = flush_stdout();
        } else {
            ret = report_ctl(rc, &msg);
        }
        buf_fini(&msg);
        return ret;
    }
    if (o.all && strcmp(cmd->verb, "DELETE") == 0 && !o.yes) {
        /* An operator's slip must not empty the queue. */
        fprintf(stderr, "ternctl: queue delete ALL removes every message it selects: "
                        "add --yes to do so\n");
        free(o.ids);
        return EXIT_USAGE;
    }
    if (selecting) {
        if (ctl_select_request(cmd->verb, o.sender, o.rdomain, o.older_s, &req, &msg) < 0) {
            fprintf(stderr, "ternctl: %s\n", msg.data);
            ret = EXIT_USAGE;
            goto out;
        }
        rc = ctl_call(ctx->cfg->spool_dir, req.data, CTL_TIMEOUT_MS, act_line, &r, &msg);
    } else {
        rc = act_ids(ctx, cmd->verb, &o, &r, &msg);
    }
    if (rc == CTL_ERR) {
        fprintf(stderr, "ternctl: %s\n", msg.data);
        ret = EXIT_RUNTIME;
    } else if (rc != CTL_OK) {
        ret = report_ctl(rc, &msg);
    } else {
        printf("%zu message%s %s\n", r.done, r.done == 1 ? "" : "s", r.word);
        ret = r.unknown > 0 ? EXIT_RUNTIME : 0;
    }
    if (flush_stdout() != 0)
        ret = EXIT_RUNTIME;
out:
    free(o.ids);
    buf_fini(&msg);
    buf_fini(&req);
    return ret;
}

/* --- passwd --- */

static struct termios saved_tio;
static volatile sig_atomic_t tio_saved;

static void
restore_tty(int sig)
{
    if (tio_saved)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Read one line (without its end) from fd into pw[PASSWORD_MAX]. 0 ok, -1. */
static int
read_line_fd(int fd, char *pw, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break; /* EOF ends the line too */
        if (c == '\n')
            break;
        if (c == '\0' || n + 1 >= cap)
            return -1;
        pw[n++] = c;
    }
    if (n > 0 && pw[n - 1] == '\r')
        n--;
    pw[n] = '\0';
    return n > 0 ? 0 : -1;
}

static int
prompt_tty(const char *prompt, char *pw, size_t cap)
{
    struct termios tio;
    int r;
    if (tcgetattr(STDIN_FILENO, &saved_tio) < 0)
        return -1;
    tio = saved_tio;
    tio.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    tio_saved = 1;
    signal(SIGINT, restore_tty);
    signal(SIGTERM, restore_tty);
    signal(SIGHUP, restore_tty);
    fputs(prompt, stderr);
    fflush(stderr);
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &tio) < 0)
        return -1;
    r = read_line_fd(STDIN_FILENO, pw, cap);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
    tio_saved = 0;
    fputc('\n', stderr);
    return r;
}

/* The new password, from the terminal (asked twice) or one stdin line. */
static int
read_password(char *pw, char *again, size_t cap)
{
    if (!isatty(STDIN_FILENO)) {
        if (read_line_fd(STDIN_FILENO, pw, cap) < 0) {
            fprintf(stderr, "ternctl: no password on stdin (one non-empty line expected)\n");
            return -1;
        }
        return 0;
    }
    if (prompt_tty("New password: ", pw, cap) < 0 ||
        prompt_tty("Retype new password: ", again, cap) < 0) {
        fprintf(stderr, "ternctl: could not read a password from the terminal\n");
        return -1;
    }
    if (strcmp(pw, again) != 0) {
        fprintf(stderr, "ternctl: the passwords do not match\n");
        return -1;
    }
    return 0;
}

/* yescrypt hash of pw, owned by the caller. NULL on failure. */
static char *
hash_password(const char *pw)
{
    char *setting = crypt_gensalt_ra("$y$", 0, NULL, 0);
    void *data = NULL;
    int size = 0;
    char *h, *out = NULL;
    if (setting == NULL)
        return NULL;
    h = crypt_ra(pw, setting, &data, &size);
    if (h != NULL && h[0] != '*')
        out = xstrdup(h);
    if (data != NULL)
        explicit_bzero(data, (size_t)size);
    free(data);
    free(setting);
    return out;
}

/* Read the whole current file (absent = empty); st_out gets its stat, or
 * st_ino 0 when the file is absent. 0 ok, -1 with errno. */
static int
read_auth_file(const char *path, struct buf *out, struct stat *st_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), e = EFBIG;
    memset(st_out, 0, sizeof(*st_out));
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    if (fstat(fd, st_out) < 0) {
        e = errno;
        goto fail;
    }
    if (!S_ISREG(st_out->st_mode)) {
        e = EINVAL;
        goto fail;
    }
    if (fd_read_all(fd, out, CTL_AUTH_FILE_MAX) < 0) {
        e = errno;
        goto fail;
    }
    close(fd);
    return 0;
fail:
    close(fd);
    errno = e;
    return -1;
}

static int
fsync_dir_of(const char *path)
{
    char *copy = xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = -1;
    free(copy);
    if (fd < 0)
        return -1;
    r = fsync(fd);
    if (close(fd) < 0)
        r = -1;
    return r;
}

/* Atomic replace: PATH.tmp (0600, owner kept), fsync, rename, fsync dir. */
static int
replace_file(const char *path, const struct buf *data, const struct stat *old)
{
    struct buf tmp = BUF_INIT;
    int fd, r = -1;
    buf_printf(&tmp, "%s.tmp", path);
    fd = open(tmp.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        goto out;
    if (fchmod(fd, 0600) < 0 ||
        (old->st_ino != 0 && geteuid() == 0 && fchown(fd, old->st_uid, old->st_gid) < 0) ||
        fd_write_full(fd, data->data, data->len) < 0 || fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(tmp.data);
        errno = e;
        goto out;
    }
    if (close(fd) < 0 || rename(tmp.data, path) < 0) {
        int e = errno;
        unlink(tmp.data);
        errno = e;
        goto out;
    }
    r = fsync_dir_of(path);
out:
    buf_fini(&tmp);
    return r;
}

static int
update_auth_file(const char *path, const char *user, const char *hash)
{
    struct buf old = BUF_INIT, out = BUF_INIT;
    struct stat st;
    bool replaced = false;
    int ret = 0;
    if (read_auth_file(path, &old, &st) < 0) {
        fprintf(stderr, "ternctl: cannot read %s: %s\n", path, strerror(errno));
        ret = EXIT_RUNTIME;
    } else if (ctl_passwd_update(old.data ? old.data : "", old.len, user, hash, &out, &replaced) <
               0) {
        fprintf(stderr, "ternctl: %s would grow too large\n", path);
        ret = EXIT_RUNTIME;
    } else if (replace_file(path, &out, &st) < 0) {
        fprintf(stderr, "ternctl: cannot write %s: %s\n", path, strerror(errno));
        ret = EXIT_RUNTIME;
    } else {
        printf("ternctl: %s user %s in %s\n", replaced ? "changed" : "added", user, path);
        ret = flush_stdout();
    }
    buf_fini(&old);
    buf_fini(&out);
    return ret;
}

static int
cmd_passwd(const struct command *cmd, struct ctx *ctx, int argc, char **argv)
{
    char pw[PASSWORD_MAX], again[PASSWORD_MAX];
    char *hash;
    int ret;
    (void)cmd;
    if (argc != 1)
        return usage_error();
    if (!ctl_user_valid(argv[0])) {
        fprintf(stderr, "ternctl: bad user name (no ':', spaces or control characters)\n");
        return EXIT_USAGE;
    }
    if (ctx->cfg->auth_users_file == NULL) {
        fprintf(stderr, "ternctl: auth_users_file is not set in the configuration\n");
        return EXIT_USAGE;
    }
    ret = read_password(pw, again, sizeof(pw));
    hash = ret == 0 ? hash_password(pw) : NULL;
    explicit_bzero(pw, sizeof(pw));
    explicit_bzero(again, sizeof(again));
    if (ret < 0)
        return EXIT_RUNTIME;
    if (hash == NULL) {
        fprintf(stderr, "ternctl: password hashing failed: %s\n", strerror(errno));
        return EXIT_RUNTIME;
    }
    ret = update_auth_file(ctx->cfg->auth_users_file, argv[0], hash);
    secret_free(hash);
    return ret;
}

/* --- dkim keygen --- */

struct keygen_opts {
    char domain[DKIM_DOMAIN_MAX + 1]; /* lowercased */
    const char *selector, *key_file;
    enum dkim_alg alg;
    unsigned bits;
    bool bits_set;
};

/* A selector is a sequence of DNS labels (RFC 6376 §3.1). */
static bool
name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && s[n - 1] != '.' && str_is_domain(s, n, false);
}

static int
keygen_option(int argc, char **argv, int *i, struct keygen_opts *o, bool *missing)
{
    const char *v;
    uint64_t b;
    if ((v = opt_value(argc, argv, i, "--algorithm", missing)) != NULL) {
        if (strcmp(v, "rsa") != 0 && strcmp(v, "ed25519") != 0) {
            fprintf(stderr, "ternctl: --algorithm is rsa or ed25519\n");
            return -1;
        }
        o->alg = v[0] == 'r' ? DKIM_ALG_RSA_SHA256 : DKIM_ALG_ED25519_SHA256;
    } else if ((v = opt_value(argc, argv, i, "--bits", missing)) != NULL) {
        if (parse_u64(v, strlen(v), UINT32_MAX, &b) < 0 || b < DKIM_RSA_BITS_MIN ||
            b > DKIM_RSA_BITS_MAX) {
            fprintf(stderr, "ternctl: --bits is %d to %d\n", DKIM_RSA_BITS_MIN, DKIM_RSA_BITS_MAX);
            return -1;
        }
        o->bits = (unsigned)b;
        o->bits_set = true;
    } else if ((v = opt_value(argc, argv, i, "--key-file", missing)) != NULL) {
        o->key_file = v;
    } else {
        return 1; /* not an option of ours */
    }
    return 0;
}

static int
keygen_args(int argc, char **argv, struct keygen_opts *o)
{
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        bool missing = false;
        int rc = keygen_option(argc, argv, &i, o, &missing);
        if (rc < 0)
            return -1;
        if (rc == 0)
            continue;
        if (missing || (argv[i][0] == '-' && argv[i][1] != '\0') || npos == 2) {
            fprintf(stderr, "ternctl: dkim keygen: %s %s\n",
                missing ? "no value for" : "unexpected argument", argv[i]);
            return -1;
        }
        if (npos == 0 && strlen(argv[i]) >= sizeof(o->domain)) {
            fprintf(stderr, "ternctl: bad domain (longer than %d)\n", DKIM_DOMAIN_MAX);
            return -1;
        }
        if (npos++ == 0)
            snprintf(o->domain, sizeof(o->domain), "%s", argv[i]);
        else
            o->selector = argv[i];
    }
    if (npos != 2) {
        usage_error();
        return -1;
    }
    str_lower(o->domain);
    if (!name_ok(o->domain) || !name_ok(o->selector)) {
        fprintf(stderr, "ternctl: bad %s \"%s\"\n", name_ok(o->domain) ? "selector" : "domain",
            name_ok(o->domain) ? o->selector : o->domain);
        return -1;
    }
    if (o->bits_set && o->alg != DKIM_ALG_RSA_SHA256) {
        fprintf(stderr, "ternctl: --bits is for RSA keys only\n");
        return -1;
    }
    return 0;
}

/* Print the record to publish and the setting to add. */
static int
keygen_print(const struct keygen_opts *o, const struct dkim_key *k, const char *path)
{
    struct buf txt = BUF_INIT, quoted = BUF_INIT;
    const char *domain = o->domain;
    int rc = EXIT_RUNTIME;
    if (dkim_key_txt(k, &txt) == 0) {
        dkim_txt_strings(txt.data, txt.len, &quoted);
        printf("# DKIM key for %s, selector %s: %s, %u bits\n", domain, o->selector,
            dkim_key_type(k), dkim_key_bits(k));
        printf("# private key written to %s (mode 0600)\n", path);
        printf("# publish this DNS TXT record (name, type, value):\n");
        printf("%s._domainkey.%s TXT %s\n", o->selector, domain, quoted.data);
        printf("# then add this entry to dkim_sign in the tern configuration:\n");
        printf("dkim_sign = %s:%s:%s\n", domain, o->selector, path);
        if (strpbrk(path, " \t") != NULL)
            printf("# (dkim_sign entries are space separated: move the key to a path "
                   "without spaces)\n");
        rc = flush_stdout();
    } else {
        fprintf(stderr, "ternctl: cannot encode the public key\n");
    }
    buf_fini(&txt);
    buf_fini(&quoted);
    return rc;
}

static int
cmd_dkim_keygen(const struct command *cmd, struct ctx *ctx, int argc, char **argv)
{
    struct keygen_opts o = { "", NULL, NULL, DKIM_ALG_RSA_SHA256, 2048, false };
    struct buf err = BUF_INIT, def = BUF_INIT;
    struct dkim_key *k;
    char abs[PATH_MAX];
    int rc;
    (void)cmd;
    (void)ctx;
    if (keygen_args(argc, argv, &o) < 0)
        return EXIT_USAGE;
    if (o.key_file == NULL) {
        buf_printf(&def, "%s.%s.key", o.domain, o.selector);
        o.key_file = def.data;
    }
    if (o.alg == DKIM_ALG_RSA_SHA256 && o.bits < 2048)
        fprintf(stderr, "ternctl: warning: RSA keys under 2048 bits are weak and some "
                        "receivers ignore them (RFC 8301)\n");
    k = dkim_key_generate(o.alg, o.bits, &err);
    if (k == NULL || dkim_key_save(k, o.key_file, &err) < 0) {
        fprintf(stderr, "ternctl: %s\n", err.data ? err.data : "cannot make the key");
        rc = EXIT_RUNTIME;
    } else {
        rc = keygen_print(&o, k, realpath(o.key_file, abs) != NULL ? abs : o.key_file);
    }
    dkim_key_free(k);
    buf_fini(&err);
    buf_fini(&def);
    return rc;
}

/* --- dns check (src/cmd/dnscheck.c) --- */

static int
cmd_dns_check(const struct command *cmd, struct ctx *ctx, int argc, char **argv)
{
    (void)cmd;
    return dnscheck_main(ctx->cfg, argc, argv);
}

/* --- tls report-now --- */

static int
cmd_tls_report_now(const struct command *cmd, struct ctx *ctx, int argc, char **argv)
{
    struct buf msg = BUF_INIT;
    enum ctl_rc rc;
    (void)cmd;
    (void)argv;
    if (argc != 0)
        return usage_error();
    rc = ctl_call(ctx->cfg->spool_dir, "TLSRPT-NOW", CTL_TIMEOUT_MS, NULL, NULL, &msg);
    if (rc != CTL_OK) {
        int r = report_ctl(rc, &msg);
        buf_fini(&msg);
        return r;
    }
    buf_fini(&msg);
    printf("TLS reports are being sent (see the log: tlsrpt run_done)\n");
    return flush_stdout();
}

/* --- tls show (src/cmd/tlsshow.c): computed here with tern's resolvers,
 * like dns check, so that it works while ternd is down --- */

static int
cmd_tls_show(const struct command *cmd, struct ctx *ctx, int argc, char **argv)
{
    (void)cmd;
    return tlsshow_main(ctx->cfg, argc, argv);
}

/* --- queue show / trace (src/cmd/histcmd.c) --- */

static int
cmd_history(const struct command *cmd, struct ctx *ctx, int argc, char **argv)
{
    int rc = cmd->word2 != NULL ? histcmd_queue_show(ctx->cfg, argc, argv)
                                : histcmd_trace(ctx->cfg, argc, argv);
    return rc == EXIT_USAGE ? usage_error() : rc;
}

static const struct command commands[] = {
    { "queue", "list", "LIST", cmd_queue_show, true },
    { "queue", "summary", "SUMMARY", cmd_queue_show, true },
    { "queue", "show", NULL, cmd_history, true },
    { "trace", NULL, NULL, cmd_history, true },
    { "queue", "flush", "FLUSH", cmd_queue_action, true },
    { "queue", "delete", "DELETE", cmd_queue_action, true },
    { "queue", "hold", "HOLD", cmd_queue_action, true },
    { "queue", "release", "RELEASE", cmd_queue_action, true },
    { "passwd", NULL, NULL, cmd_passwd, true },
    { "dkim", "keygen", NULL, cmd_dkim_keygen, false },
    { "dns", "check", NULL, cmd_dns_check, true },
    { "tls", "show", NULL, cmd_tls_show, true },
    { "tls", "report-now", "TLSRPT-NOW", cmd_tls_report_now, true },
};

static const struct command *
find_command(int argc, char **argv, int *used)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(commands); i++) {
        const struct command *c = &commands[i];
        if (argc < 1 || strcmp(argv[0], c->word1) != 0)
            continue;
        if (c->word2 == NULL) {
            *used = 1;
            return c;
        }
        if (argc >= 2 && strcmp(argv[1], c->word2) == 0) {
            *used = 2;
            return c;
        }
    }
    return NULL;
}

static struct config *
load_config(const char *path, const char *const *ovr, size_t n_ovr)
{
    struct buf err = BUF_INIT;
    struct config *cfg = config_load(path, ovr, n_ovr, false, &err);
    if (cfg == NULL) {
        fprintf(stderr, "ternctl: configuration error:\n%s%s", err.len ? err.data : "(no detail)",
            err.len && err.data[err.len - 1] == '\n' ? "" : "\n");
    } else if (cfg->spool_dir == NULL || cfg->spool_dir[0] == '\0') {
        fprintf(stderr, "ternctl: spool_dir is not set\n");
        config_unref(cfg);
        cfg = NULL;
    }
    buf_fini(&err);
    return cfg;
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = { { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 } };
    const char *cfg_path = NULL, *ovr[OVERRIDES_MAX];
    size_t n_ovr = 0;
    const struct command *cmd;
    struct ctx ctx = { NULL };
    int opt, used = 0, ret;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "+c:o:h", longopts, NULL)) != -1) {
        if (opt == 'c') {
            cfg_path = optarg;
        } else if (opt == 'o') {
            if (n_ovr == OVERRIDES_MAX) {
                fprintf(stderr, "ternctl: too many -o options\n");
                return EXIT_USAGE;
            }
            ovr[n_ovr++] = optarg;
        } else if (opt == 'h') {
            fputs(usage_text, stdout);
            return flush_stdout();
        } else {
            return usage_error();
        }
    }
    /* CONTRACT.md: with no -c, the system file when there is one. */
    if (cfg_path == NULL && access(CONFIG_DEFAULT_FILE, F_OK) == 0)
        cfg_path = CONFIG_DEFAULT_FILE;
    cmd = find_command(argc - optind, argv + optind, &used);
    if (cmd == NULL)
        return usage_error();
    cfg_path = config_file_or_default(cfg_path);
    if (cmd->needs_config && (ctx.cfg = load_config(cfg_path, ovr, n_ovr)) == NULL)
        return EXIT_USAGE;
    ret = cmd->fn(cmd, &ctx, argc - optind - used, argv + optind + used);
    config_unref(ctx.cfg);
    return ret;
}

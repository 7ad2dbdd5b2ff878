/*
 * ternd's parent: the only process that may be root. It parses the
 * configuration, takes the spool lock, binds every listener, forks the keys
 * process and the relay (both drop to `user` and install their seccomp
 * filters at once, so neither ever had a secret or uid 0 with network
 * input), and only then reads the secrets (TLS key, DKIM keys, the users
 * file) and hands them to the keys process as a numbered generation. The
 * relay gets the configuration text, the certificate chain and the key
 * descriptions of that generation. It reads no network input; from the
 * keys process it takes one question (is the users file current?), from
 * the relay nothing. SIGHUP repeats the load (a bad file keeps the running
 * generation), SIGTERM/SIGINT stop the relay first, then the keys process.
 */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmd/ternd.h"
#include "ctl/ctl.h"
#include "dkim/dkim.h"
#include "maildrop/maildrop.h"
#include "privsep/privsep.h"
#include "smtp/auth.h"
#include "smtp/smtp.h"
#include "spool/spool.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/util.h"

#define KEY_FILE_MAX   (1024 * 1024)
#define CONF_FILE_MAX  (16 * 1024 * 1024)
#define TOKEN_FILE_MAX 4096
#define TOKEN_MIN      16
#define ACK_WAIT_MS    30000

struct parent {
    struct ternd_boot *b;
    struct ps_ident id;
    pid_t relay, keys;
    int relay_fd, keys_fd, lock_fd;
    struct event_base *base;
    struct event *ev[7];
    struct config *cfg;       /* the generation running */
    struct auth_users *users; /* its auth_users_file, to see changes */
    uint64_t users_ctr;
    uint32_t gen;
    bool stopping, relay_done, keys_done;
    int exit_code;
};

static void
apply_log_settings(const struct config *cfg)
{
    log_set_json(cfg->log_format == LOGFMT_JSON);
    log_set_level((enum log_level)cfg->log_level);
}

/* The whole of a file into out (bounded); -1 with err naming what. */
static int
read_file(const char *what, const char *path, size_t max, struct buf *out, struct buf *err)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    ssize_t k = -1;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size <= max) {
        buf_reserve(out, (size_t)st.st_size);
        k = fd_pread_full(fd, out->data + out->len, (size_t)st.st_size, 0);
        if (k >= 0) {
            out->len += (size_t)k;
            out->data[out->len] = '\0';
        }
    }
    if (k < 0)
        buf_printf(
            err, "%s %s: cannot read: %s\n", what, path, errno ? strerror(errno) : "too big");
    if (fd >= 0)
        close(fd); /* read-only */
    return k < 0 ? -1 : 0;
}

int
ternd_read_file(const char *what, const char *path, struct buf *out, struct buf *err)
{
    errno = 0;
    return read_file(what, path, KEY_FILE_MAX, out, err);
}

int
ternd_read_config(const char *path, struct buf *out, struct buf *err)
{
    if (path == NULL)
        return 0;
    errno = 0;
    return read_file("configuration", path, CONF_FILE_MAX, out, err);
}

static void
clear_buf(struct buf *b)
{
    if (b->data != NULL)
        explicit_bzero(b->data, b->cap);
    buf_fini(b);
}

/* ---- one generation: check, secrets to the keys process, config to the relay ---- */
/* The event webhook's secret for the relay, which may not read root's
 * files: a file that anyone but its owner (root, or the user the relay runs
 * as) could change or read is refused, as auth_users_file is; the checks
 * are made on the descriptor that is read. */
static int
read_webhook_secret(const char *path, uid_t uid, struct buf *out, struct buf *err)
{
    static const struct fs_private rule = { S_IFREG, S_IWGRP | S_IWOTH | S_IROTH, true, true };
    struct buf why = BUF_INIT;
    struct stat st;
    ssize_t k;
    int rc = -1, fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0 || fstat(fd, &st) < 0) {
        buf_printf(err, "event_webhook_secret_file %s: cannot read: %s\n", path, strerror(errno));
    } else if (fs_check_private_as(&st, &rule, uid, &why) != FS_TRUSTED) {
        buf_printf(
            err, "event_webhook_secret_file %s: %s (chmod 600 it, chown it)\n", path, why.data);
    } else if (st.st_size > KEY_FILE_MAX) {
        buf_printf(err, "event_webhook_secret_file %s: too big\n", path);
    } else {
        buf_reserve(out, (size_t)st.st_size + 1);
        k = fd_pread_full(fd, out->data, (size_t)st.st_size, 0);
        if (k < 0) {
            buf_printf(
                err, "event_webhook_secret_file %s: cannot read: %s\n", path, strerror(errno));
        } else {
            out->len = (size_t)k;
            /* A trailing newline is an editor's, not part of the key. */
            while (out->len > 0 &&
                   (out->data[out->len - 1] == '\n' || out->data[out->len - 1] == '\r'))
                out->len--;
            out->data[out->len] = '\0';
            rc = 0;
        }
    }
    if (fd >= 0)
        close(fd); /* read only: nothing to flush */
    buf_fini(&why);
    return rc;
}

/* admin_token_file's token: its first line without surrounding blanks,
 * at least TOKEN_MIN bytes so that guessing it is hopeless. Whoever can
 * change the file can act on the queue, whoever can read it too: it must
 * be the relay user's or root's, and readable and writable by its owner
 * only (group read is refused, unlike auth_users_file: the token is the
 * secret itself, not a hash of it). */
static int
read_token(const char *path, uid_t uid, struct buf *out, struct buf *err)
{
    static const struct fs_private rule = { S_IFREG, S_IRWXG | S_IRWXO, true, true };
    struct buf why = BUF_INIT;
    struct stat st;
    size_t start = 0, end;
    ssize_t k = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0 || fstat(fd, &st) < 0) {
        buf_printf(err, "admin_token_file %s: cannot read: %s\n", path, strerror(errno));
        goto out;
    }
    if (fs_check_private_as(&st, &rule, uid, &why) != FS_TRUSTED) {
        buf_printf(err, "admin_token_file %s: %s (chmod 600 it, chown it)\n", path, why.data);
        goto out;
    }
    if ((size_t)st.st_size > TOKEN_FILE_MAX) {
        buf_printf(err, "admin_token_file %s: too big\n", path);
        goto out;
    }
    buf_reserve(out, (size_t)st.st_size);
    k = fd_pread_full(fd, out->data, (size_t)st.st_size, 0);
    if (k < 0) {
        buf_printf(err, "admin_token_file %s: cannot read: %s\n", path, strerror(errno));
        goto out;
    }
    out->len = (size_t)k;
    while (start < out->len && (out->data[start] == ' ' || out->data[start] == '\t'))
        start++;
    end = start;
    while (end < out->len && out->data[end] > ' ' && out->data[end] < 0x7f)
        end++;
    if (end - start < TOKEN_MIN) {
        buf_printf(err, "admin_token_file %s: the token must be %d printable characters or more\n",
            path, TOKEN_MIN);
        k = -1;
        goto out;
    }
    memmove(out->data, out->data + start, end - start);
    explicit_bzero(out->data + (end - start), out->len - (end - start));
    out->len = end - start;
out:
    if (fd >= 0)
        close(fd); /* read-only */
    buf_fini(&why);
    return k < 0 ? -1 : 0;
}

/* The blobs of cfg: the keys process's (secrets) and the relay's. */
static int
make_blobs(const struct config *cfg, uid_t uid, const struct buf *text, struct buf *keys,
    struct buf *relay, struct buf *err)
{
    struct buf pem = BUF_INIT;
    if (cfg->path != NULL)
        ps_blob_add(relay, PS_R_CONFIG, text->data ? text->data : "", text->len);
    else
        ps_blob_add(relay, PS_R_CONFIG, "", 0);
    if (cfg->tls_cert_file != NULL) {
        if (read_file("tls_cert_file", cfg->tls_cert_file, KEY_FILE_MAX, &pem, err) < 0 ||
            ps_check_cert(pem.data, pem.len, err) < 0 ||
            (ps_blob_add(relay, PS_R_CERT, pem.data, pem.len), buf_reset(&pem),
                read_file("tls_key_file", cfg->tls_key_file, KEY_FILE_MAX, &pem, err) < 0))
            goto fail;
        ps_blob_add(keys, PS_R_TLS_KEY, pem.data, pem.len);
        clear_buf(&pem);
    }
    if (cfg->event_webhook_secret_file != NULL) {
        buf_reset(&pem);
        if (read_webhook_secret(cfg->event_webhook_secret_file, uid, &pem, err) < 0)
            goto fail;
        ps_blob_add(relay, PS_R_WEBHOOK, pem.data ? pem.data : "", pem.len);
        clear_buf(&pem);
    }
    if (cfg->admin_token_file != NULL) {
        if (read_token(cfg->admin_token_file, uid, &pem, err) < 0)
            goto fail;
        ps_blob_add(relay, PS_R_TOKEN, pem.data, pem.len);
        clear_buf(&pem);
    }
    for (size_t i = 0; i < cfg->n_dkim_sign; i++) {
        const struct dkim_key *k = dkim_keyset_key(cfg->dkim_keys, i);
        struct ps_dkim_meta m = { (uint32_t)dkim_key_alg(k), dkim_key_bits(k) };
        buf_reset(&pem);
        buf_append(&pem, &m, sizeof(m));
        if (read_file("dkim_sign key file", cfg->dkim_sign[i].keyfile, KEY_FILE_MAX, &pem, err) < 0)
            goto fail;
        ps_blob_add(keys, PS_R_DKIM, pem.data, pem.len);
        ps_blob_add(relay, PS_R_DKIM, &m, sizeof(m));
    }
    clear_buf(&pem);
    return 0;
fail:
    clear_buf(&pem);
    return -1;
}

static int
send_blob(int sock, uint32_t type, uint32_t gen, uint64_t id, struct buf *blob)
{
    struct ps_msg m;
    int rc, fd = ps_blob_fd(blob);
    if (fd < 0)
        return -1;
    memset(&m, 0, sizeof(m));
    m.type = type;
    m.gen = gen;
    m.id = id;
    rc = ps_send(sock, &m, fd);
    close(fd);
    return rc;
}

static void on_keys_message(struct parent *p, const struct ps_msg *m);

/* Wait for the keys process to take generation gen (its other questions
 * are answered meanwhile). */
static int
wait_ack(struct parent *p, uint32_t gen, struct buf *err)
{
    struct pollfd pfd = { p->keys_fd, POLLIN, 0 };
    int64_t until = tern_mono_ms() + ACK_WAIT_MS;
    struct ps_msg m;
    while (tern_mono_ms() < until) {
        int fd, r;
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        r = ps_recv(p->keys_fd, &m, &fd);
        if (fd >= 0)
            close(fd);
        if (r == 0 || (r < 0 && errno != EBADMSG))
            break;
        if (r < 0)
            continue;
        if (m.type == PS_KEYS_ACK && m.gen == gen) {
            if (m.status == 0)
                return 0;
            buf_printf(err, "the keys process refused the keys\n");
            return -1;
        }
        on_keys_message(p, &m);
    }
    buf_printf(err, "no answer from the keys process\n");
    return -1;
}

/* The users file of cfg, read now (force) as a fresh table; its text goes
 * to the keys process. */
static int
load_users(struct parent *p, const struct config *cfg, struct auth_users **out, struct buf *err)
{
    struct buf text = BUF_INIT, warn = BUF_INIT;
    int rc = 0;
    *out = NULL;
    if (cfg->auth_users_file != NULL) {
        *out = auth_users_new(cfg->auth_users_file);
        rc = auth_users_refresh_text(*out, true, &warn, err, &text) < 0 ? -1 : 0;
    }
    if (rc == 0)
        rc = send_blob(p->keys_fd, PS_USERS, 0, ++p->users_ctr, &text);
    clear_buf(&text);
    buf_fini(&warn);
    if (rc < 0) {
        auth_users_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Listeners of cfg that the running generation does not have: bound here
 * and sent to the relay before the configuration, one socket of the
 * address's SO_REUSEPORT group for each receive loop (workers; the relay
 * refuses a reload that changes it, and so does the parent before binding
 * anything). */
static int
send_new_listeners(struct parent *p, const struct config *cfg, struct buf *err)
{
    static const char *const names[] = { "smtp_listen", "submission_listen", "smtps_listen" };
    const struct hostport *nl[] = { cfg->smtp_listen, cfg->submission_listen, cfg->smtps_listen };
    const struct hostport *ol[] = { p->cfg->smtp_listen, p->cfg->submission_listen,
        p->cfg->smtps_listen };
    size_t nn[] = { cfg->n_smtp_listen, cfg->n_submission_listen, cfg->n_smtps_listen };
    size_t on[] = { p->cfg->n_smtp_listen, p->cfg->n_submission_listen, p->cfg->n_smtps_listen };
    for (size_t r = 0; r < 3; r++) {
        for (size_t i = 0; i < nn[r]; i++) {
            struct ps_msg m;
            bool had = false;
            int fds[CONFIG_WORKERS_MAX], rc;
            for (size_t j = 0; j < on[r] && !had; j++)
                had = strcmp(ol[r][j].host, nl[r][i].host) == 0 && ol[r][j].port == nl[r][i].port;
            if (had)
                continue;
            if (ps_listen_tcp_group(names[r], &nl[r][i], cfg->workers, fds, err) < 0)
                return -1;
            memset(&m, 0, sizeof(m));
            m.type = PS_LISTENER;
            m.idx = (uint32_t)r;
            m.arg = nl[r][i].port;
            snprintf(m.host, sizeof(m.host), "%s", nl[r][i].host);
            rc = 0;
            for (size_t k = 0; k < cfg->workers; k++) {
                if (rc == 0 && ps_send(p->relay_fd, &m, fds[k]) < 0)
                    rc = -1;
                close(fds[k]); /* the relay has its own copy now */
            }
            if (rc < 0) {
                buf_printf(err, "cannot pass a listener to the relay: %s\n", strerror(errno));
                return -1;
            }
        }
    }
    return 0;
}

/* Load text as generation ++gen: check it as --check would, hand the keys
 * to the keys process and the configuration to the relay. -1 with err
 * (the running generation stays). */
static int
load_generation(struct parent *p, const struct buf *text, struct buf *err)
{
    struct buf keys = BUF_INIT, relay = BUF_INIT;
    struct auth_users *users = NULL;
    struct config *cfg = config_load_text(p->b->path, p->b->path ? text->data : NULL, text->len,
        p->b->overrides, p->b->n_overrides, true, err);
    uint32_t gen = p->gen + 1;
    int rc = -1;
    if (cfg == NULL || smtp_server_check(cfg, err) < 0)
        goto out;
    if (p->cfg != NULL && strcmp(cfg->spool_dir, p->cfg->spool_dir) != 0) {
        buf_printf(err, "spool_dir cannot change on reload (restart ternd)\n");
        goto out;
    }
    /* The relay's loops and the listening sockets bound for each. */
    if (p->cfg != NULL && cfg->workers != p->cfg->workers) {
        buf_printf(err, "workers cannot change on reload (restart ternd)\n");
        goto out;
    }
    if (smtp_server_check_fds(cfg, p->b->fd_limit, err) < 0 ||
        make_blobs(cfg, p->id.uid, text, &keys, &relay, err) < 0)
        goto out;
    if (send_blob(p->keys_fd, PS_KEYS, gen, 0, &keys) < 0 || wait_ack(p, gen, err) < 0 ||
        load_users(p, cfg, &users, err) < 0)
        goto out;
    if (p->cfg != NULL && send_new_listeners(p, cfg, err) < 0)
        goto out;
    if (send_blob(p->relay_fd, PS_CONFIG, gen, 0, &relay) < 0) {
        buf_printf(err, "cannot reach the relay: %s\n", strerror(errno));
        goto out;
    }
    p->gen = gen;
    config_unref(p->cfg);
    p->cfg = config_ref(cfg);
    auth_users_free(p->users);
    p->users = users;
    users = NULL;
    apply_log_settings(cfg);
    rc = 0;
out:
    auth_users_free(users);
    clear_buf(&keys);
    clear_buf(&relay);
    config_unref(cfg);
    return rc;
}

/* ---- the keys process's question, signals, children ---- */

static void
log_users_problem(const char *event, const struct buf *why)
{
    struct logline l;
    log_begin(&l, event[12] == 'u' ? LOG_ERROR : LOG_WARN, NULL, "smtp", event);
    log_strn(&l, "reason", why->data ? why->data : "", why->len);
    log_end(&l);
}

/* Is the users file current? Read it again when it changed (as the relay
 * did at each AUTH before the split); then answer. */
static void
answer_sync(struct parent *p, uint64_t id)
{
    struct buf text = BUF_INIT, warn = BUF_INIT, err = BUF_INIT;
    struct ps_msg m;
    if (p->users != NULL) {
        int r = auth_users_refresh_text(p->users, false, &warn, &err, &text);
        if (r < 0)
            log_users_problem("auth_users_unreadable", &err);
        else if (warn.len > 0)
            log_users_problem("auth_users_bad_lines", &warn);
        if (r == 1)
            (void)send_blob(p->keys_fd, PS_USERS, 0, ++p->users_ctr, &text);
    }
    clear_buf(&text);
    buf_fini(&warn);
    buf_fini(&err);
    memset(&m, 0, sizeof(m));
    m.type = PS_SYNCED;
    m.id = id;
    (void)ps_send(p->keys_fd, &m, -1);
}

static void
on_keys_message(struct parent *p, const struct ps_msg *m)
{
    if (m->type == PS_SYNC)
        answer_sync(p, m->id);
}

static void
keys_cb(evutil_socket_t fd, short what, void *arg)
{
    struct parent *p = arg;
    struct ps_msg m;
    int extra, r = ps_recv(fd, &m, &extra);
    if (extra >= 0)
        close(extra);
    if (r == 0 || (r < 0 && errno != EBADMSG)) {
        event_del(p->ev[6]); /* its death is handled with SIGCHLD */
        return;
    }
    if (r == 1)
        on_keys_message(p, &m);
}

static void
stop_children(struct parent *p)
{
    p->stopping = true;
    if (!p->relay_done)
        kill(p->relay, SIGTERM);
    else if (!p->keys_done)
        kill(p->keys, SIGTERM);
}

static void
child_gone(struct parent *p, pid_t pid, int status)
{
    bool relay = pid == p->relay;
    struct logline l;
    if (relay)
        p->relay_done = true;
    else
        p->keys_done = true;
    /* A clean stop ends the relay with 0, then the keys process. Anything
     * else is unexpected: everything stops, and ternd's exit says so. */
    if (!p->stopping || (relay && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))) {
        p->exit_code = 1;
        log_begin(&l, LOG_CRIT, NULL, "main", "child_died");
        log_str(&l, "process", relay ? "relay" : "keys");
        log_int(&l, "pid", pid);
        if (WIFSIGNALED(status))
            log_int(&l, "signal", WTERMSIG(status));
        else
            log_int(&l, "status", WEXITSTATUS(status));
        log_str(&l, "action", "stopping ternd");
        log_end(&l);
    }
    stop_children(p);
}

/* log_target, opened here (as root when started so, so a root-owned
 * /var/log works) and used by this process. The children write through
 * the same open file (inherited at fork, then passed over their sockets
 * on each reopen) rather than sending their lines here: the relay's lines
 * cost no copy and no extra hop, and lines written to the old descriptor
 * after a rename land, whole, in the rotated file. -1 with err. */
static int
open_log(const char *target, bool *syslog, struct buf *err)
{
    int fd = log_target_open(target, syslog, err);
    if (fd < 0)
        return -1;
    log_use(fd, fd > 2, *syslog);
    return fd;
}

/* SIGUSR1 (logrotate's postrotate) or a reload that changed log_target:
 * open it again and hand it to both children. A failure keeps the old
 * descriptor and says so there. */
static void
reopen_log(struct parent *p, const char *why)
{
    struct buf err = BUF_INIT;
    struct logline l;
    struct ps_msg m;
    bool syslog;
    int fd = open_log(p->cfg->log_target, &syslog, &err);
    if (fd < 0) {
        log_begin(&l, LOG_ERROR, NULL, "main", "log_reopen_failed");
        log_strn(&l, "error", err.data ? err.data : "", err.len);
        log_end(&l);
        buf_fini(&err);
        return;
    }
    /* Said before the children get it, so the new file reads in order:
     * the parent's line, then each child's. */
    log_begin(&l, LOG_INFO, NULL, "main", "log_reopened");
    log_str(&l, "process", "parent");
    log_str(&l, "target", p->cfg->log_target);
    log_str(&l, "reason", why);
    log_end(&l);
    log_flush();
    memset(&m, 0, sizeof(m));
    m.type = PS_LOG;
    m.arg = syslog;
    /* Each child gets its own copy (SCM_RIGHTS); a failure means the child
     * is gone, which SIGCHLD reports. */
    if (!p->keys_done)
        (void)ps_send(p->keys_fd, &m, fd);
    if (!p->relay_done)
        (void)ps_send(p->relay_fd, &m, fd);
    buf_fini(&err);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct parent *p = arg;
    struct buf err = BUF_INIT, text = BUF_INIT;
    struct logline l;
    int status;
    pid_t pid;
    switch (sig) {
    case SIGCHLD:
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            if (pid == p->relay || pid == p->keys)
                child_gone(p, pid, status);
        }
        if (p->relay_done && p->keys_done)
            event_base_loopbreak(p->base);
        break;
    case SIGHUP: {
        char *target;
        if (p->stopping)
            break;
        target = xstrdup(p->cfg->log_target);
        if (ternd_read_config(p->b->path, &text, &err) < 0 || load_generation(p, &text, &err) < 0) {
            log_begin(&l, LOG_ERROR, NULL, "config", "reload_failed");
            log_strn(&l, "errors", err.data ? err.data : "", err.len);
            log_str(&l, "action", "keeping the running configuration");
            log_end(&l);
            /* The relay never hears of it: the reload ends here. */
            ternd_notify_reload_refused();
        } else if (strcmp(target, p->cfg->log_target) != 0) {
            reopen_log(p, "reload");
        }
        free(target);
        clear_buf(&text);
        buf_fini(&err);
        break;
    }
    case SIGUSR1:
        /* logrotate moved the file away: write to a new one. */
        if (!p->stopping)
            reopen_log(p, "SIGUSR1");
        break;
    case SIGUSR2:
        /* Watched so that it never kills; nothing to do. */
        break;
    default:
        if (!p->stopping) {
            log_begin(&l, LOG_INFO, NULL, "main", "stopping");
            log_str(&l, "process", "parent");
            log_str(&l, "signal", sig == SIGTERM ? "TERM" : "INT");
            log_end(&l);
        }
        stop_children(p);
        break;
    }
}

/* ---- start-up ---- */

/* SPOOL/ctl.sock for the relay (ours to bind: the relay may not reach the
 * spool by its path), owned by the user; the lock makes replacing a stale
 * one safe. */
static int
bind_ctl(struct parent *p, struct buf *err)
{
    struct sockaddr_un sun;
    mode_t old;
    int fd;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s", p->cfg->spool_dir,
            CTL_SOCKET_NAME) >= sizeof(sun.sun_path)) {
        buf_printf(
            err, "control socket path too long: %s/%s\n", p->cfg->spool_dir, CTL_SOCKET_NAME);
        return -1;
    }
    unlink(sun.sun_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    old = umask(077); /* the socket is for the daemon's own user only */
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 16) < 0 ||
        (p->id.switch_user && lchown(sun.sun_path, p->id.uid, p->id.gid) < 0)) {
        umask(old);
        buf_printf(err, "cannot listen on %s: %s\n", sun.sun_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    umask(old);
    p->b->ctl_fd = fd;
    return 0;
}

/* At the end: the control socket goes with the daemon (the lock is still
 * ours, so it is no other ternd's). */
static void
remove_ctl(struct parent *p)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", p->cfg->spool_dir, CTL_SOCKET_NAME) <
        sizeof(path))
        unlink(path);
}

static int
bind_listeners(struct parent *p, struct buf *err)
{
    static const char *const names[] = { "smtp_listen", "submission_listen", "smtps_listen",
        "metrics_listen" };
    const struct config *c = p->cfg;
    const struct hostport *lists[] = { c->smtp_listen, c->submission_listen, c->smtps_listen,
        &c->metrics_listen };
    size_t counts[] = { c->n_smtp_listen, c->n_submission_listen, c->n_smtps_listen,
        c->metrics_listen.host[0] ? 1u : 0u };
    for (int r = 0; r < 4; r++) {
        /* An SMTP address gets one socket per receive loop (an SO_REUSEPORT
         * group when there are several); metrics one. */
        size_t per = r < TERND_ROLE_METRICS ? c->workers : 1;
        for (size_t i = 0; i < counts[r]; i++) {
            int fds[CONFIG_WORKERS_MAX];
            if (p->b->n_socks + per > TERND_MAX_LISTEN) {
                buf_printf(err, "more than %d listening sockets (listen addresses times workers)\n",
                    TERND_MAX_LISTEN);
                return -1;
            }
            if (ps_listen_tcp_group(names[r], &lists[r][i], per, fds, err) < 0)
                return -1;
            for (size_t k = 0; k < per; k++) {
                struct ternd_sock *s = &p->b->socks[p->b->n_socks++];
                s->role = r;
                s->hp = lists[r][i];
                s->fd = fds[k];
            }
        }
    }
    return 0;
}

/* In a child: become the user, restricted. */
static void
child_setup(struct parent *p, enum ps_filter which)
{
    struct buf err = BUF_INIT;
    /* The keys process must not be readable by the relay (same uid). */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) < 0 || ps_drop(&p->id, &err) < 0 ||
        (which == PS_FILTER_KEYS && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) ||
        ps_seccomp(which, &err) < 0) {
        fprintf(stderr, "ternd: %s", err.data ? err.data : strerror(errno));
        _exit(1);
    }
    buf_fini(&err);
}

static void
close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd); /* sockets and directories: nothing buffered */
    *fd = -1;
}

static int
fork_children(struct parent *p, struct buf *err)
{
    int pr[2], pk[2], kt[2], kd[2], ka[2];
    struct ternd_boot *b = p->b;
    struct ps_keys_fds kf;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pr) < 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pk) < 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, kt) < 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, kd) < 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ka) < 0) {
        buf_printf(err, "socketpair: %s\n", strerror(errno));
        return -1;
    }
    /* No batched line may be written twice (by a child's copy too). */
    log_flush();
    p->keys = fork();
    if (p->keys == 0) {
        /* Log lines of the main loop are batched per process and thread:
         * the child starts without the parent's batching (the keys process
         * writes each line at once; the relay attaches its own loop). */
        log_detach_loop();
        /* Nothing of the network, the spool or the relay's ends. */
        for (size_t i = 0; i < b->n_socks; i++)
            close(b->socks[i].fd);
        close(b->spool_fd);
        close(b->ctl_fd);
        if (b->maildrop_fd >= 0)
            close(b->maildrop_fd);
        close(p->lock_fd);
        close(pr[0]);
        close(pr[1]);
        close(pk[0]);
        close(kt[0]);
        close(kd[0]);
        close(ka[0]);
        signal(SIGINT, SIG_IGN); /* a Ctrl-C reaches the parent, which decides */
        signal(SIGHUP, SIG_IGN);
        signal(SIGUSR1, SIG_IGN);
        signal(SIGUSR2, SIG_IGN);
        signal(SIGPIPE, SIG_IGN);
        child_setup(p, PS_FILTER_KEYS);
        kf = (struct ps_keys_fds){ pk[1], kt[1], kd[1], ka[1] };
        _exit(ps_keys_main(&kf));
    }
    if (p->keys < 0) {
        buf_printf(err, "fork: %s\n", strerror(errno));
        return -1;
    }
    close(pk[1]);
    close(kt[1]);
    close(kd[1]);
    close(ka[1]);
    p->keys_fd = pk[0];
    p->relay = fork();
    if (p->relay == 0) {
        log_detach_loop();
        close(p->keys_fd);
        close(pr[0]);
        /* The relay keeps its copy of the lock's descriptor (flock belongs
         * to the open file, shared with the parent): a relay still finishing
         * after its parent was killed keeps the spool from a new ternd. */
        child_setup(p, PS_FILTER_RELAY);
        b->parent_fd = pr[1];
        b->tls_fd = kt[0];
        b->dkim_fd = kd[0];
        b->auth_fd = ka[0];
        _exit(ternd_relay_main(b));
    }
    close(pr[1]);
    close(kt[0]);
    close(kd[0]);
    close(ka[0]);
    if (p->relay < 0) {
        buf_printf(err, "fork: %s\n", strerror(errno));
        return -1;
    }
    p->relay_fd = pr[0];
    /* The relay has its copies; ours would keep closed listeners alive. */
    for (size_t i = 0; i < b->n_socks; i++)
        close_fd(&b->socks[i].fd);
    close_fd(&b->spool_fd);
    close_fd(&b->ctl_fd);
    close_fd(&b->maildrop_fd);
    return 0;
}

/* Started as root for another user: the maildrop's parent directory is
 * usually root's, so the maildrop is made (or handed over) here, owned by
 * the user with the maildrop group, ready for the relay's own checks. A
 * directory owned by anyone else is left alone for the relay to refuse;
 * any failure leaves the relay to run without a maildrop, as it says. The
 * descriptor is kept for the relay (-1 when there is none): its user may
 * not be able to walk the path (make run from a checkout under /root). */
static int
maildrop_for_user(const struct config *cfg, uid_t uid, gid_t gid)
{
    struct group *g = getgrnam(cfg->maildrop_group);
    gid_t dgid = g != NULL ? g->gr_gid : gid;
    struct stat st;
    int fd, sub;
    if (mkdir(cfg->maildrop_dir, 0700) < 0 && errno != EEXIST)
        return -1;
    fd = open(cfg->maildrop_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) == 0 && (st.st_uid == 0 || st.st_uid == uid) && fchown(fd, uid, dgid) == 0)
        (void)fchmod(fd, g != NULL ? MAILDROP_DIR_MODE : 0700);
    if (mkdirat(fd, "corrupt", 0700) == 0 || errno == EEXIST) {
        sub = openat(fd, "corrupt", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0) {
            if (fstat(sub, &st) == 0 && (st.st_uid == 0 || st.st_uid == uid))
                (void)fchown(sub, uid, gid);
            close(sub);
        }
    }
    return fd;
}

/* Everything before the fork: configuration (no secrets read), user,
 * descriptor limit, spool lock and hand-over, listeners. Exit status on
 * failure (2: configuration, 1: run time), 0 when ready. */
static int
prepare(struct parent *p, const struct buf *text, struct buf *err)
{
    struct ternd_boot *b = p->b;
    bool syslog;
    int rc;
    p->cfg = config_load_text(
        b->path, b->path ? text->data : NULL, text->len, b->overrides, b->n_overrides, false, err);
    if (p->cfg == NULL)
        return 2;
    apply_log_settings(p->cfg);
    /* Opened before the fork: the children inherit it. */
    if (open_log(p->cfg->log_target, &syslog, err) < 0)
        return 1;
    if (ps_ident_lookup(p->cfg->user, geteuid() == 0, &p->id, err) < 0)
        return 2;
    /* Out of descriptors the daemon could only refuse clients: a
     * configuration that cannot fit is refused now. */
    b->fd_limit = ternd_fd_limit(true);
    if (smtp_server_check_fds(p->cfg, b->fd_limit, err) < 0)
        return 2;
    rc = spool_prepare(
        p->cfg->spool_dir, p->id.uid, p->id.gid, p->id.switch_user, &p->lock_fd, &b->spool_fd, err);
    if (rc < 0 || spool_check_as(p->cfg->spool_dir, p->id.uid, false, err) < 0)
        return 1;
    if (p->id.switch_user)
        b->maildrop_fd = maildrop_for_user(p->cfg, p->id.uid, p->id.gid);
    if (bind_listeners(p, err) < 0 || bind_ctl(p, err) < 0)
        return 1;
    return 0;
}

static void
add_signal(struct parent *p, int i, int sig)
{
    p->ev[i] = evsignal_new(p->base, sig, signal_cb, p);
    if (p->ev[i] == NULL || evsignal_add(p->ev[i], NULL) < 0)
        tern_panic("cannot watch signal %d", sig);
}

static int
run(struct parent *p)
{
    static const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2 };
    p->base = event_base_new();
    if (p->base == NULL)
        tern_panic("event_base_new failed");
    for (int i = 0; i < 6; i++)
        add_signal(p, i, sigs[i]);
    p->ev[6] = event_new(p->base, p->keys_fd, EV_READ | EV_PERSIST, keys_cb, p);
    event_add(p->ev[6], NULL);
    /* A child that died before the loop started is reaped now. */
    kill(getpid(), SIGCHLD);
    event_base_dispatch(p->base);
    for (int i = 0; i < 7; i++)
        event_free(p->ev[i]);
    event_base_free(p->base);
    return p->exit_code;
}

int
ternd_parent_main(struct ternd_boot *b)
{
    static struct parent p;
    struct buf text = BUF_INIT, err = BUF_INIT;
    int rc;
    p.b = b;
    p.lock_fd = p.relay_fd = p.keys_fd = b->spool_fd = b->ctl_fd = b->maildrop_fd = -1;
    /* Until the loop watches them (and in the children, which inherit
     * this), the signals an operator or logrotate sends must not kill. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    /* Not root, the relay has our uid: it must not read the secrets out of
     * our memory either (root's memory is out of its reach anyway). */
    if (geteuid() != 0)
        (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (ternd_read_config(b->path, &text, &err) < 0) {
        fprintf(stderr, "ternd: %s", err.data);
        return 2;
    }
    rc = prepare(&p, &text, &err);
    if (rc == 0)
        rc = fork_children(&p, &err) < 0 ? 1 : 0;
    /* The secrets are read only now, in this process alone. */
    if (rc == 0 && load_generation(&p, &text, &err) < 0) {
        rc = 2;
        kill(p.relay, SIGKILL);
        kill(p.keys, SIGKILL);
        while (wait(NULL) > 0)
            ;
    }
    clear_buf(&text);
    if (rc != 0) {
        fprintf(stderr, "ternd: %s", err.data ? err.data : "start-up failed\n");
        buf_fini(&err);
        return rc;
    }
    buf_fini(&err);
    rc = run(&p);
    remove_ctl(&p);
    close_fd(&p.relay_fd);
    close_fd(&p.keys_fd);
    config_unref(p.cfg);
    auth_users_free(p.users);
    return rc;
}

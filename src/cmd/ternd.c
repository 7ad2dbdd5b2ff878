/*
 * ternd: argument parsing, --check, and the relay process's wiring:
 * spool, scheduler (which owns delivery), SMTP server, control socket and
 * metrics on one event loop, all on sockets and directories the parent
 * (ternd_parent.c) opened. The relay takes each configuration from the
 * parent (reload included) and stops cleanly on SIGTERM/SIGINT.
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef TERN_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "cmd/httpd.h"
#include "cmd/ternd.h"
#include "config/config.h"
#include "ctl/ctl.h"
#include "delivery/delivery.h"
#include "dns/dns.h"
#include "history/history.h"
#include "maildrop/maildrop.h"
#include "metrics/metrics.h"
#include "mtasts/mtasts.h"
#include "privsep/privsep.h"
#include "sched/sched.h"
#include "smtp/smtp.h"
#include "spool/spool.h"
#include "tlsrpt/tlsrpt.h"
#include "util/log.h"
#include "util/loopq.h"
#include "util/util.h"
#include "webhook/webhook.h"

#define SHUTDOWN_GRACE_MS 10000

struct ternd {
    struct ternd_boot *boot;
    struct config *cfg;
    struct event *parent_ev;
    struct event_base *base;
    struct loopq *inbox; /* the main loop's: spool completions, recovery */
    struct spool *sp;
    struct dns *dns;
    struct sched *sched;
    struct smtp_server *smtp;
    struct ctl_server *ctl;
    struct metrics *metrics;
    struct pickup *pickup;
    struct webhook *webhook;
    struct mtasts *mtasts;     /* MTA-STS policies (RFC 8461), for delivery */
    struct tlsrpt *tlsrpt;     /* TLS session outcomes and reports (RFC 8460) */
    struct buf webhook_secret; /* of the last configuration the parent sent */
    struct event *sig_term, *sig_int, *stop_timer;
    int64_t stop_deadline;
    int64_t started_ms;
};

static void
usage(FILE *f)
{
    fprintf(f,
        "usage: ternd [-c FILE] [-o name=value]... [--check]\n"
        "  -c FILE        configuration file (default: " CONFIG_DEFAULT_FILE " if it exists,\n"
        "                 else built-in defaults)\n"
        "  -o name=value  override one setting (repeatable)\n"
        "  --check        validate the configuration and exit (0 good, 2 bad)\n");
}

static void
apply_log_settings(const struct config *cfg)
{
    log_set_json(cfg->log_format == LOGFMT_JSON);
    log_set_level((enum log_level)cfg->log_level);
}

static void
commit_hook(const struct spool_env *env, void *arg)
{
    struct ternd *t = arg;
    sched_add(t->sched, env);
}

static void
status_json(struct buf *out, void *arg)
{
    struct ternd *t = arg;
    struct sched_stats st;
    struct spool_stats ss;
    sched_get_stats(t->sched, &st);
    spool_get_stats(t->sp, &ss);
    buf_printf(out,
        "{\"queue_messages\":%zu,\"queue_recipients\":%zu,\"queue_active\":%zu,\"sessions\":%zu,"
        "\"received\":%llu,\"picked_up\":%llu,\"delivered\":%llu,\"deferred\":%llu,\"bounced\":%llu,"
        "\"expired\":%llu,\"uptime_s\":%lld,\"loading\":%s,"
        "\"spool\":{\"batches\":%llu,\"syncs\":%llu,\"records\":%llu,\"segments\":%llu,"
        "\"segments_deleted\":%llu,\"compacted\":%llu},",
        st.queue_messages, st.queue_rcpts, st.active, smtp_server_sessions(t->smtp),
        (unsigned long long)smtp_server_received(t->smtp),
        (unsigned long long)pickup_count(t->pickup), (unsigned long long)st.delivered,
        (unsigned long long)st.deferred, (unsigned long long)st.bounced,
        (unsigned long long)st.expired, (long long)((tern_now_ms() - t->started_ms) / 1000),
        sched_loaded(t->sched) ? "false" : "true", (unsigned long long)ss.batches,
        (unsigned long long)ss.syncs, (unsigned long long)ss.records,
        (unsigned long long)ss.segments, (unsigned long long)ss.segments_deleted,
        (unsigned long long)ss.compacted);
    metrics_status_json(out);
    buf_append_str(out, "\"workers\":");
    smtp_server_status_json(t->smtp, out);
    buf_append_str(out, "}");
}

/* The descriptor limit ternd runs with. Started for real (raise), the soft
 * RLIMIT_NOFILE is raised to the hard limit first, as servers that hold a
 * descriptor per client do; for --check, the limit it would get. */
uint64_t
ternd_fd_limit(bool raise)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return UINT64_MAX; /* unknown: nothing to size against */
    if (!raise)
        return rl.rlim_max == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_max;
    if (rl.rlim_cur != rl.rlim_max) {
        struct rlimit want = { rl.rlim_max, rl.rlim_max };
        /* An infinite hard limit is not a valid soft one for NOFILE on
         * Linux (fs.nr_open caps it): then keep the soft limit. */
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            rl.rlim_cur = rl.rlim_max;
    }
    return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
}

/* systemd's readiness protocol (sd_notify(3); Type=notify in tern.service):
 * READY=1 once the listeners accept, RELOADING=1 then READY=1 around a
 * reload, STOPPING=1 when a stop begins. Without NOTIFY_SOCKET (not started
 * by systemd) nothing is sent. */
static void
notify_systemd(const char *state)
{
#ifdef TERN_HAVE_LIBSYSTEMD
    int rc = sd_notify(0, state);
    if (rc < 0) {
        struct logline l;
        log_begin(&l, LOG_WARN, NULL, "main", "notify_failed");
        log_str(&l, "state", state);
        log_errno(&l, -rc);
        log_end(&l);
    }
#else
    (void)state;
#endif
}

static void
notify_ready(void)
{
    notify_systemd("READY=1\nSTATUS=accepting mail");
}

static void
notify_reloading(void)
{
    char state[80];
    /* MONOTONIC_USEC dates the request, as Type=notify-reload (systemd 253)
     * requires; older managers ignore it. */
    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
        (unsigned long long)tern_mono_us());
    notify_systemd(state);
}

static void
notify_stopping(void)
{
    notify_systemd("STOPPING=1");
}

void
ternd_notify_reload_refused(void)
{
    notify_reloading();
    notify_ready();
}

/* admin_token_file's token of the configuration last received (it may
 * yet be refused); metrics_set_admin_token takes it when one is applied. */
static struct buf admin_token_next = BUF_INIT;

static void
clear_token(struct buf *b)
{
    if (b->data != NULL)
        explicit_bzero(b->data, b->cap);
    buf_fini(b);
}

static void apply_webhook(struct ternd *t);
static void apply_tls_policy(struct ternd *t);

/* Apply a configuration the parent sent (its listeners were given first).
 * A relay-side failure keeps the running configuration. */
static void
reload(struct ternd *t, struct config *cfg)
{
    struct buf err = BUF_INIT;
    struct logline l;
    if (cfg != NULL && strcmp(cfg->spool_dir, t->cfg->spool_dir) != 0) {
        buf_printf(&err, "spool_dir cannot change on reload (restart ternd)\n");
        config_unref(cfg);
        cfg = NULL;
    }
    if (cfg != NULL && smtp_server_check_fds(cfg, t->boot->fd_limit, &err) < 0) {
        config_unref(cfg);
        cfg = NULL;
    }
    if (cfg != NULL && smtp_server_set_config(t->smtp, cfg, &err) < 0) {
        config_unref(cfg);
        cfg = NULL;
    }
    smtp_server_drop_given(); /* sockets of a refused configuration */
    if (cfg == NULL) {
        log_begin(&l, LOG_ERROR, NULL, "config", "reload_failed");
        log_strn(&l, "errors", err.data ? err.data : "", err.len);
        log_str(&l, "action", "keeping the running configuration");
        log_end(&l);
        buf_fini(&err);
        return;
    }
    if (dns_set_servers(t->dns, cfg->dns_resolvers, cfg->n_dns_resolvers, &err) < 0) {
        log_begin(&l, LOG_ERROR, NULL, "config", "reload_failed");
        log_strn(&l, "errors", err.data ? err.data : "", err.len);
        log_str(&l, "action", "keeping the previous DNS servers");
        log_end(&l);
    }
    buf_fini(&err);
    sched_set_config(t->sched, cfg);
    if (t->pickup != NULL)
        pickup_set_config(t->pickup, cfg);
    config_unref(t->cfg);
    t->cfg = cfg;
    if (t->metrics != NULL)
        metrics_set_admin_token(t->metrics, admin_token_next.data, admin_token_next.len);
    apply_log_settings(cfg);
    history_set_limits(cfg->history_retention_ms, cfg->history_max_size);
    apply_webhook(t);
    apply_tls_policy(t);
    log_begin(&l, LOG_INFO, NULL, "config", "reloaded");
    log_str(&l, "file", t->boot->path ? t->boot->path : "(defaults)");
    log_end(&l);
}

/* The configuration of a PS_CONFIG blob: the file's text parsed as the
 * parent parsed it, the certificate chain and the DKIM key descriptions
 * of the keys process's generation gen. NULL with err. */
static struct config *
config_of_blob(struct ternd *t, uint32_t gen, int fd, struct buf *err)
{
    struct buf b = BUF_INIT;
    struct ps_dkim_meta meta[1024];
    const char *text = NULL, *chain = NULL, *token = NULL, *p;
    size_t text_len = 0, chain_len = 0, token_len = 0, n_meta = 0, off = 0, n;
    struct config *cfg = NULL;
    uint32_t type;
    int r;
    if (ps_blob_read(fd, &b) < 0) {
        buf_printf(err, "cannot read the configuration from the parent\n");
        goto out;
    }
    if (t->webhook_secret.data != NULL)
        explicit_bzero(t->webhook_secret.data, t->webhook_secret.cap);
    buf_reset(&t->webhook_secret);
    while ((r = ps_blob_next(&b, &off, &type, &p, &n)) == 1) {
        if (type == PS_R_CONFIG) {
            text = p;
            text_len = n;
        } else if (type == PS_R_CERT) {
            chain = p;
            chain_len = n;
        } else if (type == PS_R_TOKEN) {
            token = p;
            token_len = n;
        } else if (type == PS_R_DKIM && n == sizeof(meta[0]) && n_meta < TERN_ARRAY_LEN(meta)) {
            memcpy(&meta[n_meta++], p, n);
        } else if (type == PS_R_WEBHOOK && n <= WEBHOOK_SECRET_MAX) {
            if (t->webhook_secret.data != NULL)
                explicit_bzero(t->webhook_secret.data, t->webhook_secret.cap);
            buf_reset(&t->webhook_secret);
            buf_append(&t->webhook_secret, p, n);
        }
    }
    if (r < 0 || text == NULL) {
        buf_printf(err, "bad configuration message from the parent\n");
        goto out;
    }
    cfg = config_load_text(t->boot->path, t->boot->path ? text : NULL, text_len, t->boot->overrides,
        t->boot->n_overrides, false, err);
    if (cfg == NULL)
        goto out;
    if (ps_client_set_tls(gen, chain, chain_len, err) < 0) {
        config_unref(cfg);
        cfg = NULL;
        goto out;
    }
    config_set_dkim_keys(cfg, ps_client_dkim_keys(gen, cfg, meta, n_meta));
    /* The token goes to the dashboard when this configuration is applied. */
    clear_token(&admin_token_next);
    if (token != NULL)
        buf_append(&admin_token_next, token, token_len);
out:
    if (b.data != NULL)
        explicit_bzero(b.data, b.cap);
    buf_fini(&b);
    return cfg;
}

/* One message of the parent: a listener for the next configuration, or
 * the configuration. 1 with *cfg for a configuration, 0 for anything
 * else, -1 when the parent is gone or broken. */
static int
parent_message(struct ternd *t, struct config **cfg, struct buf *err)
{
    struct ps_msg m;
    int fd, r = ps_recv(t->boot->parent_fd, &m, &fd);
    *cfg = NULL;
    if (r <= 0)
        return -1;
    if (m.type == PS_LISTENER && fd >= 0 && m.idx < 3) {
        struct hostport hp;
        memset(&hp, 0, sizeof(hp));
        snprintf(hp.host, sizeof(hp.host), "%s", m.host);
        hp.port = (uint16_t)m.arg;
        smtp_server_give_socket((int)m.idx, &hp, fd);
        return 0;
    }
    if (m.type == PS_CONFIG && fd >= 0) {
        *cfg = config_of_blob(t, m.gen, fd, err);
        return 1;
    }
    if (m.type == PS_LOG && fd >= 0) {
        /* The parent reopened log_target (SIGUSR1, or a reload that
         * changed it): what is batched goes to the old one first. */
        struct logline l;
        log_use(fd, true, m.arg != 0);
        log_begin(&l, LOG_INFO, NULL, "main", "log_reopened");
        log_str(&l, "process", "relay");
        log_end(&l);
        return 0;
    }
    if (fd >= 0)
        close(fd);
    return 0;
}

static void signal_cb(evutil_socket_t sig, short what, void *arg);

static void
parent_cb(evutil_socket_t fd, short what, void *arg)
{
    struct ternd *t = arg;
    struct buf err = BUF_INIT;
    struct config *cfg;
    int r = parent_message(t, &cfg, &err);
    if (r < 0) {
        /* The parent is gone: nobody can reload or watch us; stop cleanly. */
        event_del(t->parent_ev);
        log_simple(LOG_ERROR, "main", "parent_gone", "stopping");
        signal_cb(SIGTERM, 0, t);
    } else if (r == 1 && cfg == NULL) {
        struct logline l;
        log_begin(&l, LOG_ERROR, NULL, "config", "reload_failed");
        log_strn(&l, "errors", err.data ? err.data : "", err.len);
        log_str(&l, "action", "keeping the running configuration");
        log_end(&l);
        smtp_server_drop_given();
    } else if (r == 1) {
        notify_reloading();
        reload(t, cfg);
        notify_ready();
    }
    buf_fini(&err);
}

static void
stop_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    struct ternd *t = arg;
    struct timeval tv = { 0, 100 * 1000 };
    if (smtp_server_sessions(t->smtp) == 0 || tern_mono_ms() >= t->stop_deadline) {
        event_base_loopbreak(t->base);
        return;
    }
    evtimer_add(t->stop_timer, &tv);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct ternd *t = arg;
    struct logline l;
    if (t->stop_timer != NULL)
        return; /* already stopping */
    notify_stopping();
    log_begin(&l, LOG_INFO, NULL, "main", "stopping");
    log_str(&l, "process", "relay");
    log_str(&l, "signal", sig == SIGTERM ? "TERM" : "INT");
    log_end(&l);
    smtp_server_shutdown(t->smtp);
    t->stop_deadline = tern_mono_ms() + SHUTDOWN_GRACE_MS;
    t->stop_timer = evtimer_new(t->base, stop_poll_cb, t);
    stop_poll_cb(-1, 0, t);
}

/* The main loop's base. With the changelist, libevent sends the epoll
 * changes of one loop iteration together and drops those that cancel out
 * (a bufferevent that stops and starts writing within one callback), so
 * most of them cost no epoll_ctl at all. tern never dup()s a descriptor it
 * polls, which the changelist requires. */
static struct event_base *
new_base(void)
{
    struct event_config *ec = event_config_new();
    struct event_base *base;
    if (ec == NULL)
        return NULL;
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    base = event_base_new_with_config(ec);
    event_config_free(ec);
    return base;
}

/* The maildrop of tern-sendmail (made here when missing) and its pickup. */
static int
start_pickup(struct ternd *t, struct buf *err)
{
    struct buf warn = BUF_INIT;
    struct logline l;
    char fd_path[64];
    const char *dir = t->cfg->maildrop_dir;
    int r;
    /* The parent's descriptor, reached through /proc: the trailing "/."
     * makes every use (lstat, open O_NOFOLLOW, inotify) resolve it to the
     * directory, whatever the path's ancestors let this user search. */
    if (t->boot != NULL && t->boot->maildrop_fd >= 0) {
        snprintf(fd_path, sizeof(fd_path), "/proc/self/fd/%d/.", t->boot->maildrop_fd);
        dir = fd_path;
    }
    r = maildrop_prepare(dir, t->cfg->maildrop_dir, t->cfg->maildrop_group, &warn, err);
    if (r < 0) {
        buf_fini(&warn);
        return -1;
    }
    /* A maildrop that cannot be made costs local submission while ternd is
     * down, not the relay: it runs on without one. */
    if (warn.len > 0) {
        log_begin(&l, r == 1 ? LOG_ERROR : LOG_WARN, NULL, "pickup",
            r == 1 ? "no_maildrop" : "maildrop_private");
        log_str(&l, "dir", t->cfg->maildrop_dir);
        log_str(&l, "reason", warn.data);
        log_end(&l);
    }
    buf_fini(&warn);
    if (r == 1)
        return 0;
    t->pickup = pickup_new(t->base, t->inbox, t->sp, t->sched, t->cfg, dir, err);
    return t->pickup != NULL ? 0 : -1;
}

/* The event webhook follows cfg: started, changed or stopped. It reads
 * the journal through the spool's descriptor, as the relay's user may not
 * search the path to the spool. */
static void
apply_webhook(struct ternd *t)
{
    struct webhook_opts o = { t->cfg->event_webhook_url, t->webhook_secret.data,
        t->webhook_secret.len, t->cfg->event_webhook_batch_size, t->cfg->event_webhook_ca_file };
    struct buf err = BUF_INIT;
    char dir[64];
    if (t->cfg->event_webhook_url == NULL) {
        webhook_free(t->webhook);
        t->webhook = NULL;
        return;
    }
    if (o.secret == NULL)
        o.secret = "";
    if (t->webhook != NULL) {
        webhook_set_opts(t->webhook, &o);
        return;
    }
    if (t->boot->spool_fd >= 0)
        snprintf(dir, sizeof(dir), "/proc/self/fd/%d", t->boot->spool_fd);
    t->webhook = webhook_new(t->base, t->boot->spool_fd >= 0 ? dir : t->cfg->spool_dir, &o, &err);
    if (t->webhook == NULL) {
        struct logline l;
        log_begin(&l, LOG_ERROR, NULL, "webhook", "start_failed");
        log_strn(&l, "reason", err.data ? err.data : "", err.len);
        log_end(&l);
    }
    buf_fini(&err);
}

static bool
tlsrpt_now(void *arg)
{
    struct ternd *t = arg;
    return t->tlsrpt != NULL && t->cfg->tls_rpt && tlsrpt_send_now(t->tlsrpt, true);
}

/* MTA-STS and TLS-RPT keep their files in the spool (through its
 * descriptor, as the webhook does). Either failing to start costs the
 * relay that feature, logged, never the mail. Options follow reloads. */
static void
apply_tls_policy(struct ternd *t)
{
    struct tlsrpt_opts ro = { NULL, t->cfg->tls_rpt != 0, t->cfg->hostname, t->cfg->tls_rpt_from,
        t->cfg->tls_rpt_contact, t->cfg->tls_ca_file, t->cfg };
    struct mtasts_opts mo = { NULL, t->cfg->tls_ca_file };
    struct buf err = BUF_INIT;
    struct logline l;
    char dir[64];
    if (t->boot->spool_fd >= 0)
        snprintf(dir, sizeof(dir), "/proc/self/fd/%d", t->boot->spool_fd);
    mo.spool_dir = ro.spool_dir = t->boot->spool_fd >= 0 ? dir : t->cfg->spool_dir;
    if (t->mtasts != NULL) {
        mtasts_set_ca_file(t->mtasts, mo.ca_file);
        tlsrpt_set_opts(t->tlsrpt, &ro);
        return;
    }
    t->mtasts = mtasts_new(t->base, t->dns, &mo, &err);
    if (t->mtasts != NULL)
        t->tlsrpt = tlsrpt_new(t->base, t->dns, t->sp, t->inbox, &ro, &err);
    if (t->mtasts == NULL || t->tlsrpt == NULL) {
        log_begin(&l, LOG_ERROR, NULL, "mtasts", "start_failed");
        log_strn(&l, "reason", err.data ? err.data : "", err.len);
        log_end(&l);
    }
    buf_fini(&err);
    delivery_set_tls_policy(sched_delivery(t->sched), t->mtasts, t->tlsrpt);
}

/* The history journal is for operators, never in the way of mail: one that
 * cannot be opened is logged and the relay runs without it. */
static void
start_history(struct ternd *t)
{
    struct buf err = BUF_INIT;
    struct logline l;
    struct history_opts ho = { t->cfg->history_retention_ms, t->cfg->history_max_size, 0, true,
        t->boot->spool_fd >= 0, t->boot->spool_fd };
    if (history_open(t->cfg->spool_dir, &ho, &err) < 0) {
        log_begin(&l, LOG_ERROR, NULL, "history", "open_failed");
        log_strn(&l, "reason", err.data ? err.data : "", err.len);
        log_str(&l, "action", "running without a message history");
        log_end(&l);
    }
    buf_fini(&err);
}

static int
start(struct ternd *t)
{
    struct buf err = BUF_INIT;
    struct logline l;
    struct spool_opts so = { t->cfg->spool_segment_size, true, t->boot->spool_fd };
    t->inbox = loopq_new(t->base);
    if (t->inbox == NULL) {
        buf_printf(&err, "cannot make the main loop's inbox: %s\n", strerror(errno));
        goto fail;
    }
    t->sp = spool_open(t->cfg->spool_dir, t->inbox, &so, &err);
    if (t->sp == NULL)
        goto fail;
    start_history(t);
    t->dns = dns_new(t->base, t->cfg->dns_resolvers, t->cfg->n_dns_resolvers, &err);
    if (t->dns == NULL)
        goto fail;
    t->sched = sched_new(t->base, t->sp, t->dns, t->cfg);
    spool_set_commit_hook(t->sp, commit_hook, t);
    apply_tls_policy(t);
    t->smtp = smtp_server_new(t->base, t->sp, t->cfg, t->dns, &err);
    if (t->smtp == NULL)
        goto fail;
    /* Claims a crash left in the maildrop are settled before the queue is
     * loaded, so before any of its messages can be delivered and removed. */
    if (start_pickup(t, &err) < 0)
        goto fail;
    /* Listening already: the queue is read in the background. */
    sched_load_spool(t->sched);
    t->ctl = ctl_server_new(t->base, t->cfg->spool_dir, t->sched, status_json, t, &err);
    if (t->ctl == NULL)
        goto fail;
    ctl_server_set_tlsrpt(t->ctl, tlsrpt_now, t);
    if (t->cfg->metrics_listen.host[0] != '\0') {
        t->metrics = metrics_new(t->base, &t->cfg->metrics_listen, t->sched, t->smtp,
            t->cfg->spool_dir, status_json, t, &err);
        if (t->metrics == NULL)
            goto fail;
        metrics_set_admin_token(t->metrics, admin_token_next.data, admin_token_next.len);
    }
    apply_webhook(t);
    log_begin(&l, LOG_INFO, NULL, "main", "started");
    log_str(&l, "hostname", t->cfg->hostname);
    log_str(&l, "spool", t->cfg->spool_dir);
    if (t->boot->fd_limit != UINT64_MAX)
        log_int(&l, "max_fds", (int64_t)t->boot->fd_limit);
    log_end(&l);
    return 0;
fail:
    fprintf(stderr, "ternd: %s", err.data ? err.data : "start-up failed\n");
    buf_fini(&err);
    return -1;
}

static void
stop(struct ternd *t)
{
    metrics_free(t->metrics);
    t->metrics = NULL;
    webhook_free(t->webhook);
    t->webhook = NULL;
    if (t->webhook_secret.data != NULL)
        explicit_bzero(t->webhook_secret.data, t->webhook_secret.cap);
    buf_fini(&t->webhook_secret);
    if (t->smtp)
        smtp_server_kill_all(t->smtp);
    /* Run the session frees: they abort open spool writers, which must be
     * gone before spool_free. */
    for (int i = 0; i < 100 && smtp_server_unfreed(t->smtp) > 0; i++)
        event_base_loop(t->base, EVLOOP_NONBLOCK);
    /* The pickup's last job comes back with the inbox run below, while the
     * spool is open. */
    pickup_stop(t->pickup);
    if (t->sp) {
        /* Whatever recovery found goes to the scheduler before it stops. */
        spool_recover_stop(t->sp);
        loopq_run(t->inbox);
        spool_set_commit_hook(t->sp, NULL, NULL); /* late commits are loaded at next start */
    }
    /* The control socket goes first: a request served after sched_free
     * would find no scheduler, and a LIST under way is ended here. */
    ctl_server_free(t->ctl);
    t->ctl = NULL;
    sched_free(t->sched);
    mtasts_free(t->mtasts); /* after delivery, which borrowed both */
    tlsrpt_free(t->tlsrpt);
    dns_free(t->dns);
    spool_free(t->sp); /* writes and syncs what is queued; callbacks posted */
    if (t->inbox)
        loopq_run(t->inbox);
    pickup_free(t->pickup); /* its commit, if any, has called back */
    event_base_loop(t->base, EVLOOP_NONBLOCK);
    smtp_server_free(t->smtp);
    if (t->stop_timer)
        event_free(t->stop_timer);
    event_free(t->sig_term);
    event_free(t->sig_int);
    if (t->parent_ev)
        event_free(t->parent_ev);
    config_unref(t->cfg);
    loopq_free(t->inbox);
    history_detach_loop();
    history_close();   /* every loop that wrote to it has stopped */
    log_detach_loop(); /* its flush event goes with the base */
    event_base_free(t->base);
}

static int
parse_args(struct ternd_boot *b, int argc, char **argv, bool *check)
{
    static const struct option opts[] = { { "check", no_argument, NULL, 'k' },
        { "help", no_argument, NULL, 'h' }, { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 } };
    int c;
    while ((c = getopt_long(argc, argv, "c:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            b->path = optarg;
            break;
        case 'o':
            if (b->n_overrides == TERND_MAX_OVERRIDES) {
                fprintf(stderr, "ternd: too many -o options\n");
                return 2;
            }
            b->overrides[b->n_overrides++] = optarg;
            break;
        case 'k':
            *check = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("ternd %s\n", TERN_VERSION);
            exit(0);
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    b->path = config_file_or_default(b->path);
    return 0;
}

/* The keys process signs for RSA and ECDSA certificates only. */
static int
check_cert_type(const struct config *cfg, struct buf *err)
{
    struct buf pem = BUF_INIT;
    int rc = 0;
    if (cfg->tls_cert_file != NULL &&
        ternd_read_file("tls_cert_file", cfg->tls_cert_file, &pem, err) == 0)
        rc = ps_check_cert(pem.data, pem.len, err);
    buf_fini(&pem);
    return rc;
}

/* --check: everything start-up would refuse, without starting: the
 * configuration and the files it names (certificate and key, AUTH users,
 * DKIM keys), the user, the spool as that user would find it, the listen
 * addresses (syntax, overlaps, and that each is an address of this machine:
 * bound on port 0, never on the real port, which a running ternd holds) and
 * the descriptor limit. */
static int
check(struct ternd_boot *b)
{
    struct buf err = BUF_INIT;
    struct ps_ident id;
    struct config *cfg = config_load(b->path, b->overrides, b->n_overrides, true, &err);
    int rc = 2;
    if (cfg == NULL) {
        fprintf(stderr, "%s", err.data ? err.data : "ternd: bad configuration\n");
        buf_fini(&err);
        return 2;
    }
    /* The user is looked up even when not run as root: the file is most
     * often checked for a start as root. */
    if (ps_ident_lookup(cfg->user, true, &id, &err) < 0) {
        id.uid = geteuid();
        id.gid = getegid();
    }
    /* Every check runs, so one pass names every problem. */
    (void)smtp_server_check(cfg, &err);
    (void)check_cert_type(cfg, &err);
    (void)spool_check_as(cfg->spool_dir, geteuid() == 0 ? id.uid : geteuid(), geteuid() == 0, &err);
    (void)ps_listen_check(cfg, &err);
    (void)smtp_server_check_fds(cfg, ternd_fd_limit(false), &err);
    (void)log_target_check(cfg->log_target, &err);
    if (cfg->relay_recipients != NULL)
        (void)smtp_relay_recipients_check(cfg->relay_recipients,
            geteuid() == 0 ? id.uid : geteuid(), geteuid() == 0 ? id.gid : getegid(), &err);
    (void)maildrop_check(
        cfg->maildrop_dir, geteuid() == 0 ? id.uid : geteuid(), geteuid() == 0, &err);
    if (err.len > 0) {
        fprintf(stderr, "ternd: %s", err.data);
    } else {
        printf("ternd: configuration %s is valid\n", b->path ? b->path : "(defaults)");
        rc = 0;
    }
    buf_fini(&err);
    config_unref(cfg);
    return rc;
}

int
ternd_relay_main(struct ternd_boot *b)
{
    static struct ternd t;
    struct buf err = BUF_INIT;
    struct config *cfg = NULL;
    int r;
    t.boot = b;
    /* A file-size limit must show up as EFBIG on the spool write (answered
     * 452 4.3.1), not kill the daemon; HUP goes to the parent, USR1/USR2
     * (log reopening) are the parent's to act on. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    ps_client_init(b->tls_fd, b->dkim_fd, b->auth_fd);
    smtp_server_use_keys(b->auth_fd);
    for (size_t i = 0; i < b->n_socks; i++) {
        if (b->socks[i].role == TERND_ROLE_METRICS)
            metrics_give_socket(b->socks[i].fd);
        else
            smtp_server_give_socket(b->socks[i].role, &b->socks[i].hp, b->socks[i].fd);
    }
    ctl_server_give_socket(b->ctl_fd);
    /* The first configuration comes once the parent has checked it and
     * the keys process holds its keys. */
    while ((r = parent_message(&t, &cfg, &err)) == 0)
        ;
    if (r < 0 || cfg == NULL) {
        if (r > 0)
            fprintf(stderr, "ternd: %s", err.data ? err.data : "bad configuration\n");
        buf_fini(&err);
        return 1;
    }
    buf_fini(&err);
    config_unref(b->cfg);
    b->cfg = NULL;
    t.cfg = cfg;
    apply_log_settings(t.cfg);
    t.started_ms = tern_now_ms();
    t.base = new_base();
    if (t.base == NULL)
        tern_panic("event_base_new failed");
    /* Lines of the main loop go out once per loop iteration. */
    if (log_attach_loop(t.base) < 0 || history_attach_loop(t.base) < 0)
        tern_panic("cannot batch log lines");
    t.sig_term = evsignal_new(t.base, SIGTERM, signal_cb, &t);
    t.sig_int = evsignal_new(t.base, SIGINT, signal_cb, &t);
    t.parent_ev = event_new(t.base, b->parent_fd, EV_READ | EV_PERSIST, parent_cb, &t);
    evsignal_add(t.sig_term, NULL);
    evsignal_add(t.sig_int, NULL);
    event_add(t.parent_ev, NULL);
    if (start(&t) < 0) {
        stop(&t);
        return 1;
    }
    smtp_server_drop_given();
    notify_ready();
    event_base_dispatch(t.base);
    stop(&t);
    log_simple(LOG_INFO, "main", "stopped", NULL);
    return 0;
}

int
main(int argc, char **argv)
{
    static struct ternd_boot b;
    bool do_check = false;
    int rc = parse_args(&b, argc, argv, &do_check);
    if (rc != 0)
        return rc;
    if (do_check)
        return check(&b);
    return ternd_parent_main(&b);
}

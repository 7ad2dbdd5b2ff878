/*
 * ternd: the relay daemon. Argument parsing and wiring only: configuration,
 * spool, scheduler (which owns delivery), SMTP server and control socket on
 * one event loop; SIGHUP reloads, SIGTERM/SIGINT stop cleanly.
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
#ifdef TERN_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "config/config.h"
#include "ctl/ctl.h"
#include "dns/dns.h"
#include "metrics/metrics.h"
#include "sched/sched.h"
#include "smtp/smtp.h"
#include "spool/spool.h"
#include "util/log.h"
#include "util/util.h"

#define SHUTDOWN_GRACE_MS 10000
#define MAX_OVERRIDES 256

struct ternd {
    const char *path;
    const char *overrides[MAX_OVERRIDES];
    size_t n_overrides;
    struct config *cfg;
    struct event_base *base;
    struct spool *sp;
    struct dns *dns;
    struct sched *sched;
    struct smtp_server *smtp;
    struct ctl_server *ctl;
    struct metrics *metrics;
    struct event *sig_term, *sig_int, *sig_hup, *stop_timer;
    int64_t stop_deadline;
    int64_t started_ms;
    uint64_t fd_limit; /* RLIMIT_NOFILE ternd runs with */
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
    sched_get_stats(t->sched, &st);
    buf_printf(out,
        "{\"queue_messages\":%zu,\"queue_recipients\":%zu,\"sessions\":%zu,"
        "\"received\":%llu,\"delivered\":%llu,\"deferred\":%llu,\"bounced\":%llu,"
        "\"expired\":%llu,\"uptime_s\":%lld}",
        st.queue_messages, st.queue_rcpts, smtp_server_sessions(t->smtp),
        (unsigned long long)st.received, (unsigned long long)st.delivered,
        (unsigned long long)st.deferred, (unsigned long long)st.bounced,
        (unsigned long long)st.expired, (long long)((tern_now_ms() - t->started_ms) / 1000));
}

/* The descriptor limit ternd runs with. Started for real (raise), the soft
 * RLIMIT_NOFILE is raised to the hard limit first, as servers that hold a
 * descriptor per client do; for --check, the limit it would get. */
static uint64_t
fd_limit(bool raise)
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

static void
reload(struct ternd *t)
{
    struct buf err = BUF_INIT;
    struct config *cfg = config_load(t->path, t->overrides, t->n_overrides, true, &err);
    struct logline l;
    if (cfg != NULL && strcmp(cfg->spool_dir, t->cfg->spool_dir) != 0) {
        buf_printf(&err, "spool_dir cannot change on reload (restart ternd)\n");
        config_unref(cfg);
        cfg = NULL;
    }
    if (cfg != NULL && smtp_server_check_fds(cfg, t->fd_limit, &err) < 0) {
        config_unref(cfg);
        cfg = NULL;
    }
    if (cfg != NULL && smtp_server_set_config(t->smtp, cfg, &err) < 0) {
        config_unref(cfg);
        cfg = NULL;
    }
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
    config_unref(t->cfg);
    t->cfg = cfg;
    apply_log_settings(cfg);
    log_begin(&l, LOG_INFO, NULL, "config", "reloaded");
    log_str(&l, "file", t->path ? t->path : "(defaults)");
    log_end(&l);
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
    struct timespec ts;
    char state[80];
    /* MONOTONIC_USEC dates the request, as Type=notify-reload (systemd 253)
     * requires; older managers ignore it. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
        (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000ull);
    notify_systemd(state);
}

static void
notify_stopping(void)
{
    notify_systemd("STOPPING=1");
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct ternd *t = arg;
    struct logline l;
    if (sig == SIGHUP) {
        notify_reloading();
        reload(t);
        notify_ready();
        return;
    }
    if (t->stop_timer != NULL)
        return; /* already stopping */
    notify_stopping();
    log_begin(&l, LOG_INFO, NULL, "main", "stopping");
    log_str(&l, "signal", sig == SIGTERM ? "TERM" : "INT");
    log_end(&l);
    smtp_server_shutdown(t->smtp);
    t->stop_deadline = tern_mono_ms() + SHUTDOWN_GRACE_MS;
    t->stop_timer = evtimer_new(t->base, stop_poll_cb, t);
    stop_poll_cb(-1, 0, t);
}

static int
start(struct ternd *t)
{
    struct buf err = BUF_INIT;
    long n;
    struct logline l;
    t->sp = spool_open(t->cfg->spool_dir, t->base, &err);
    if (t->sp == NULL)
        goto fail;
    t->dns = dns_new(t->base, t->cfg->dns_resolvers, t->cfg->n_dns_resolvers, &err);
    if (t->dns == NULL)
        goto fail;
    t->sched = sched_new(t->base, t->sp, t->dns, t->cfg);
    spool_set_commit_hook(t->sp, commit_hook, t);
    n = sched_load_spool(t->sched);
    t->smtp = smtp_server_new(t->base, t->sp, t->sched, t->cfg, &err);
    if (t->smtp == NULL)
        goto fail;
    t->ctl = ctl_server_new(t->base, t->cfg->spool_dir, t->sched, status_json, t, &err);
    if (t->ctl == NULL)
        goto fail;
    if (t->cfg->metrics_listen.host[0] != '\0') {
        t->metrics = metrics_new(t->base, &t->cfg->metrics_listen, t->sched, t->smtp, status_json,
            t, &err);
        if (t->metrics == NULL)
            goto fail;
    }
    log_begin(&l, LOG_INFO, NULL, "main", "started");
    log_str(&l, "hostname", t->cfg->hostname);
    log_str(&l, "spool", t->cfg->spool_dir);
    log_int(&l, "queued", n);
    if (t->fd_limit != UINT64_MAX)
        log_int(&l, "max_fds", (int64_t)t->fd_limit);
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
    if (t->smtp)
        smtp_server_kill_all(t->smtp);
    /* Run the session frees: they abort open spool writers, which must be
     * gone before spool_free. */
    for (int i = 0; i < 100 && smtp_server_unfreed(t->smtp) > 0; i++)
        event_base_loop(t->base, EVLOOP_NONBLOCK);
    if (t->sp)
        spool_set_commit_hook(t->sp, NULL, NULL); /* late commits are loaded at next start */
    sched_free(t->sched);
    dns_free(t->dns);
    spool_free(t->sp); /* finishes in-flight commits */
    event_base_loop(t->base, EVLOOP_NONBLOCK);
    smtp_server_free(t->smtp);
    ctl_server_free(t->ctl);
    if (t->stop_timer)
        event_free(t->stop_timer);
    event_free(t->sig_term);
    event_free(t->sig_int);
    event_free(t->sig_hup);
    config_unref(t->cfg);
    event_base_free(t->base);
}

static int
parse_args(struct ternd *t, int argc, char **argv, bool *check)
{
    static const struct option opts[] = { { "check", no_argument, NULL, 'k' },
        { "help", no_argument, NULL, 'h' }, { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 } };
    int c;
    while ((c = getopt_long(argc, argv, "c:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            t->path = optarg;
            break;
        case 'o':
            if (t->n_overrides == MAX_OVERRIDES) {
                fprintf(stderr, "ternd: too many -o options\n");
                return 2;
            }
            t->overrides[t->n_overrides++] = optarg;
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
    t->path = config_file_or_default(t->path);
    return 0;
}

/* Load and check the configuration as --check does, and size it against
 * the descriptor limit; -1 (reported) when it is bad. */
static int
load_config(struct ternd *t, bool check)
{
    struct buf err = BUF_INIT;
    /* Files named by the configuration (TLS, AUTH, DKIM keys) are checked at
     * start as by --check, so a bad key stops ternd now, not at the first
     * message. */
    t->cfg = config_load(t->path, t->overrides, t->n_overrides, true, &err);
    if (t->cfg == NULL) {
        fprintf(stderr, "%s", err.data ? err.data : "ternd: bad configuration\n");
        buf_fini(&err);
        return -1;
    }
    /* Load the certificate, key and AUTH users as the server would, and
     * look at the spool as start-up would (without creating it). */
    if (check && (smtp_server_check(t->cfg, &err) < 0 || spool_check(t->cfg->spool_dir, &err) < 0)) {
        fprintf(stderr, "%s", err.data ? err.data : "ternd: bad TLS or AUTH files\n");
        goto fail;
    }
    /* Out of descriptors the daemon could only refuse clients: a
     * configuration that cannot fit is refused now. */
    t->fd_limit = fd_limit(!check);
    if (smtp_server_check_fds(t->cfg, t->fd_limit, &err) < 0) {
        fprintf(stderr, "ternd: %s", err.data);
        goto fail;
    }
    buf_fini(&err);
    return 0;
fail:
    buf_fini(&err);
    config_unref(t->cfg);
    t->cfg = NULL;
    return -1;
}

int
main(int argc, char **argv)
{
    static struct ternd t;
    bool check = false;
    int rc = parse_args(&t, argc, argv, &check);
    if (rc != 0)
        return rc;
    if (load_config(&t, check) < 0)
        return 2;
    if (check) {
        printf("ternd: configuration %s is valid\n", t.path ? t.path : "(defaults)");
        config_unref(t.cfg);
        return 0;
    }
    apply_log_settings(t.cfg);
    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit must show up as EFBIG on the spool write (answered
     * 452 4.3.1), not kill the daemon. */
    signal(SIGXFSZ, SIG_IGN);
    t.started_ms = tern_now_ms();
    t.base = event_base_new();
    if (t.base == NULL)
        tern_panic("event_base_new failed");
    t.sig_term = evsignal_new(t.base, SIGTERM, signal_cb, &t);
    t.sig_int = evsignal_new(t.base, SIGINT, signal_cb, &t);
    t.sig_hup = evsignal_new(t.base, SIGHUP, signal_cb, &t);
    evsignal_add(t.sig_term, NULL);
    evsignal_add(t.sig_int, NULL);
    evsignal_add(t.sig_hup, NULL);
    if (start(&t) < 0) {
        stop(&t);
        return 1;
    }
    notify_ready();
    event_base_dispatch(t.base);
    stop(&t);
    log_simple(LOG_INFO, "main", "stopped", NULL);
    return 0;
}

/*
 * The receive loops (setting workers): with one, the main loop receives
 * mail as well; with more, each is a thread with an event base, listening
 * sockets (SO_REUSEPORT) and sessions of its own, so that receiving (reads,
 * TLS, the DATA scan) uses every core while the scheduler, delivery, the
 * control socket and metrics stay on the main loop. The main thread talks to
 * a threaded loop only through its inbox (a new configuration, shutdown,
 * stop); spool commits and AUTH answers come back to the session's own loop
 * through the same inbox. A loop's own state is touched by its thread alone.
 * Each loop has its own socket of an SO_REUSEPORT group per address (ternd's
 * parent binds a group and passes it; a reload passes groups for new
 * addresses only, and the loops keep their sockets of the others), and a
 * threaded loop looks client names up with a resolver of its own.
 */
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns.h"
#include "history/history.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/loopq.h"
#include "util/util.h"

/* Passes of a stopping loop to run the frees of its ended sessions (they
 * take one or two). */
#define LOOP_DRAIN_PASSES 100

enum loop_cmd { LOOP_CONFIG, LOOP_DNS, LOOP_SHUTDOWN, LOOP_STOP };

/* The main thread waits for a loop to have carried out a message: after a
 * reload or a shutdown returns, every loop acts on it. Loops never wait for
 * the main thread, so this cannot deadlock, and a loop pass is short. */
struct loop_sync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

/* A message from the main thread, carried out on the loop's thread. */
struct loop_msg {
    struct loopq_item it;
    struct smtp_loop *lp;
    enum loop_cmd cmd;
    struct loop_sync *sync;      /* the waiting main thread's, or NULL */
    struct config *cfg;          /* LOOP_CONFIG: ref */
    struct tls_ctx *tls;         /* LOOP_CONFIG: ref or NULL */
    struct smtp_listen_set *set; /* LOOP_CONFIG: owned or NULL; only this loop's sockets */
    struct dns *dns;             /* LOOP_DNS: the main loop's resolver (borrowed) or NULL */
};

static bool
same_resolvers(const struct config *a, const struct config *b)
{
    if (a->n_dns_resolvers != b->n_dns_resolvers)
        return false;
    for (size_t i = 0; i < a->n_dns_resolvers; i++) {
        if (strcmp(a->dns_resolvers[i].host, b->dns_resolvers[i].host) != 0 ||
            a->dns_resolvers[i].port != b->dns_resolvers[i].port)
            return false;
    }
    return true;
}

static void
log_dns_error(const struct smtp_loop *lp, const struct buf *err)
{
    struct logline l;
    log_begin(&l, LOG_ERROR, NULL, "smtp", "resolver_failed");
    log_strn(&l, "detail", err->data ? err->data : "", err->len);
    log_int(&l, "worker", (int64_t)lp->idx);
    log_end(&l);
}

/* LOOP_DNS: the main loop uses the server's resolver; a threaded loop makes
 * its own on its base (a resolver and its queries belong to one loop), with
 * the same servers. Without one the loop's sessions log no client names. */
static void
set_dns(struct smtp_loop *lp, struct dns *dns)
{
    struct buf err = BUF_INIT;
    if (!lp->threaded) {
        lp->dns = dns;
        return;
    }
    if (dns == NULL || lp->dns != NULL)
        return;
    lp->dns = dns_new(lp->base, lp->cfg->dns_resolvers, lp->cfg->n_dns_resolvers, &err);
    if (lp->dns == NULL)
        log_dns_error(lp, &err);
    buf_fini(&err);
}

static void
set_config(struct smtp_loop *lp, struct config *cfg, struct tls_ctx *tls)
{
    config_unref(lp->cfg);
    lp->cfg = cfg;
    tls_ctx_unref(lp->tls);
    lp->tls = tls;
}

static void
msg_run(struct loopq_item *it)
{
    struct loop_msg *m = (struct loop_msg *)(void *)it;
    struct smtp_loop *lp = m->lp;
    switch (m->cmd) {
    case LOOP_CONFIG:
        if (lp->stopped) {
            config_unref(m->cfg);
            tls_ctx_unref(m->tls);
            break;
        }
        if (lp->threaded && lp->dns != NULL && !same_resolvers(lp->cfg, m->cfg)) {
            struct buf err = BUF_INIT;
            if (dns_set_servers(lp->dns, m->cfg->dns_resolvers, m->cfg->n_dns_resolvers, &err) < 0)
                log_dns_error(lp, &err); /* the old servers stay */
            buf_fini(&err);
        }
        set_config(lp, m->cfg, m->tls);
        /* A loop that stopped accepting does not start again. */
        if (m->set != NULL && !lp->shutting_down)
            smtp_loop_listen(lp, m->set);
        break;
    case LOOP_DNS:
        if (!lp->stopped)
            set_dns(lp, m->dns);
        break;
    case LOOP_SHUTDOWN:
        if (!lp->stopped)
            smtp_loop_shutdown_sessions(lp);
        break;
    case LOOP_STOP:
        lp->stopped = true;
        lp->shutting_down = true;
        smtp_loop_unbind(lp);
        smtp_loop_kill_sessions(lp);
        if (lp->threaded)
            event_base_loopexit(lp->base, NULL);
        break;
    }
    smtp_listen_set_free(m->set);
    if (m->sync != NULL) {
        struct loop_sync *y = m->sync;
        free(m);
        pthread_mutex_lock(&y->mu);
        y->done = true;
        pthread_cond_signal(&y->cv);
        pthread_mutex_unlock(&y->mu); /* y may be gone from here on */
        return;
    }
    free(m);
}

/* Carry m out on the loop: now when the loop is the main loop (the caller's
 * own thread) or its thread has ended; else post it to the loop's thread
 * and, with wait, return once it has run there. */
static void
send_msg(struct smtp_loop *lp, enum loop_cmd cmd, struct loop_msg *m, bool wait)
{
    struct loop_sync y = { .done = false };
    m->lp = lp;
    m->cmd = cmd;
    m->it.fn = msg_run;
    if (!lp->threaded || lp->joined) {
        msg_run(&m->it);
        return;
    }
    if (!wait) {
        loopq_post(lp->inbox, &m->it);
        return;
    }
    pthread_mutex_init(&y.mu, NULL);
    pthread_cond_init(&y.cv, NULL);
    m->sync = &y;
    loopq_post(lp->inbox, &m->it);
    pthread_mutex_lock(&y.mu);
    while (!y.done)
        pthread_cond_wait(&y.cv, &y.mu);
    pthread_mutex_unlock(&y.mu);
    pthread_cond_destroy(&y.cv);
    pthread_mutex_destroy(&y.mu);
}

/* The main loop's base options (see ternd's): the epoll changelist. */
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

static void
drop_pending_line(const void *key, size_t klen, void *val, void *arg)
{
    struct hline *h = val;
    buf_fini(&h->b);
    free(h);
}

struct smtp_loop *
smtp_loop_new(struct smtp_server *srv, unsigned idx, bool threaded, struct buf *err)
{
    struct smtp_loop *lp = xcalloc(1, sizeof(*lp));
    lp->srv = srv;
    lp->idx = idx;
    lp->threaded = threaded;
    lp->sessions = map_new();
    lp->journal_pending = map_new();
    if (!threaded) {
        lp->base = srv->base;
        lp->inbox = spool_owner(srv->sp);
    } else {
        lp->base = new_base();
        lp->inbox = lp->base ? loopq_new(lp->base) : NULL;
    }
    /* Until its thread starts, the main thread may act on the loop itself
     * (as on one whose thread has ended). */
    lp->joined = true;
    if (lp->base == NULL || lp->inbox == NULL || !smtp_wheel_init(lp)) {
        buf_printf(err, "cannot make receive loop %u: %s\n", idx, strerror(errno ? errno : ENOMEM));
        smtp_loop_free(lp);
        return NULL;
    }
    return lp;
}

void
smtp_loop_init(
    struct smtp_loop *lp, struct config *cfg, struct tls_ctx *tls, struct smtp_listen_set *set)
{
    set_config(lp, config_ref(cfg), tls ? tls_ctx_ref(tls) : NULL);
    smtp_loop_listen(lp, set);
}

static void *
loop_main(void *arg)
{
    struct smtp_loop *lp = arg;
    /* This loop's log lines go out once per pass of this loop. */
    if (log_attach_loop(lp->base) < 0 || history_attach_loop(lp->base) < 0)
        tern_panic("cannot batch log lines of receive loop %u", lp->idx);
    event_base_dispatch(lp->base); /* until LOOP_STOP */
    for (int i = 0; i < LOOP_DRAIN_PASSES && lp->n_alive > 0; i++)
        event_base_loop(lp->base, EVLOOP_NONBLOCK);
    dns_free(lp->dns); /* its sessions are gone, and their lookups with them */
    lp->dns = NULL;
    history_detach_loop();
    log_detach_loop();
    return NULL;
}

void
smtp_loop_start(struct smtp_loop *lp)
{
    sigset_t all, old;
    char name[16];
    int rc;
    if (!lp->threaded)
        return;
    /* Signals are the main loop's (SIGHUP, SIGTERM): block them here. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    lp->joined = false;
    rc = pthread_create(&lp->thread, NULL, loop_main, lp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        tern_panic("receive loop %u: pthread_create: %s", lp->idx, strerror(rc));
    snprintf(name, sizeof(name), "smtp-%u", lp->idx);
    pthread_setname_np(lp->thread, name);
}

void
smtp_loop_post_config(
    struct smtp_loop *lp, struct config *cfg, struct tls_ctx *tls, struct smtp_listen_set *set)
{
    struct loop_msg *m = xcalloc(1, sizeof(*m));
    m->cfg = config_ref(cfg);
    m->tls = tls ? tls_ctx_ref(tls) : NULL;
    if (set != NULL) {
        /* Only this loop's sockets go with the message. */
        m->set = xcalloc(1, sizeof(*m->set));
        m->set->n = set->n;
        m->set->n_loops = set->n_loops;
        m->set->roles = xcalloc(set->n + 1, sizeof(*m->set->roles));
        memcpy(m->set->roles, set->roles, set->n * sizeof(*set->roles));
        m->set->hps = xcalloc(set->n + 1, sizeof(*m->set->hps));
        memcpy(m->set->hps, set->hps, set->n * sizeof(*set->hps));
        m->set->fds = xcalloc(set->n * set->n_loops + 1, sizeof(*m->set->fds));
        for (size_t i = 0; i < set->n * set->n_loops; i++) {
            bool mine = i / set->n == lp->idx;
            m->set->fds[i] = mine ? set->fds[i] : -1;
            if (mine)
                set->fds[i] = -1;
        }
    }
    send_msg(lp, LOOP_CONFIG, m, true);
}

void
smtp_loop_post_dns(struct smtp_loop *lp, struct dns *dns)
{
    struct loop_msg *m = xcalloc(1, sizeof(*m));
    m->dns = dns;
    /* Waited for: loops make their resolvers one after the other. */
    send_msg(lp, LOOP_DNS, m, true);
}

void
smtp_loop_post_shutdown(struct smtp_loop *lp)
{
    send_msg(lp, LOOP_SHUTDOWN, xcalloc(1, sizeof(struct loop_msg)), true);
}

void
smtp_loop_stop(struct smtp_loop *lp)
{
    if (lp->joined)
        return;
    if (!lp->threaded) {
        /* The main loop: its caller runs the frees (smtp_server_unfreed). */
        smtp_loop_kill_sessions(lp);
        return;
    }
    send_msg(lp, LOOP_STOP, xcalloc(1, sizeof(struct loop_msg)), false);
    pthread_join(lp->thread, NULL);
    lp->joined = true;
}

void
smtp_loop_free(struct smtp_loop *lp)
{
    if (lp == NULL)
        return;
    TERN_ASSERT(!lp->threaded || lp->joined);
    lp->stopped = true; /* messages still posted only release what they hold */
    if (lp->threaded) {
        /* Its thread is gone: what is left in the inbox (late commit and
         * AUTH answers, messages) runs here and finds no session. */
        loopq_free(lp->inbox);
    } else if (lp->inbox != NULL) {
        /* The main loop's inbox outlives the server: empty it of answers
         * that point at this loop. */
        loopq_run(lp->inbox);
    }
    smtp_loop_unbind(lp);
    if (lp->accept_timer)
        event_free(lp->accept_timer);
    smtp_wheel_fini(lp);
    if (lp->threaded)
        dns_free(lp->dns); /* a thread that never ran */
    map_free(lp->sessions);
    /* Commits that never answered (none should be left once the inbox
     * ran): their lines are dropped, the journal says nothing unsure. */
    map_each(lp->journal_pending, drop_pending_line, NULL);
    map_free(lp->journal_pending);
    config_unref(lp->cfg);
    tls_ctx_unref(lp->tls);
    if (lp->threaded && lp->base)
        event_base_free(lp->base);
    free(lp);
}

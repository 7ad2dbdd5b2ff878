/*
 * SMTP listeners and session admission: binds smtp_listen (relay/MX),
 * submission_listen and smtps_listen (each listener knows its role) for
 * every receive loop, enforces the total and per-address session limits
 * (421 4.7.0) over all of them and all loops, and owns the TLS context and
 * AUTH users of the current configuration (rebuilt on reload; sessions keep
 * what they started with). Each loop keeps the table of its sessions that
 * commit and AUTH answers use to find a session by id.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics/metrics.h"
#include "policy.h"
#include "privsep/privsep.h"
#include "rcptmap.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

/* The per-address key: the raw address bytes (v4-mapped v6 folded to v4). */
static size_t
ip_key(const struct sockaddr *sa, unsigned char key[16])
{
    if (sa->sa_family == AF_INET) {
        memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 4;
    }
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
        memcpy(key, s6->sin6_addr.s6_addr + 12, 4);
        return 4;
    }
    memcpy(key, &s6->sin6_addr, 16);
    return 16;
}

/* Called with adm_mu held. */
static void
per_ip_add(struct smtp_server *srv, const struct sockaddr *sa, long delta)
{
    unsigned char key[16];
    size_t kl = ip_key(sa, key);
    uintptr_t n = (uintptr_t)map_get(srv->per_ip, key, kl);
    n = (uintptr_t)((long)n + delta);
    if (n == 0)
        map_del(srv->per_ip, key, kl);
    else
        map_put(srv->per_ip, key, kl, (void *)n);
}

/* Admit a session under cfg's limits and count it, in one step over every
 * loop: NULL, or why it is refused (nothing counted). */
static const char *
admit(struct smtp_server *srv, const struct config *cfg, const struct sockaddr *sa, bool outsider)
{
    unsigned char key[16];
    size_t kl = ip_key(sa, key);
    const char *why;
    pthread_mutex_lock(&srv->adm_mu);
    why = policy_admit_session(cfg, !outsider, srv->n_sessions, srv->n_outsiders,
        (size_t)(uintptr_t)map_get(srv->per_ip, key, kl));
    if (why == NULL) {
        per_ip_add(srv, sa, 1);
        srv->n_sessions++;
        srv->n_outsiders += outsider;
        atomic_store_explicit(&srv->n_open, srv->n_sessions, memory_order_relaxed);
    }
    pthread_mutex_unlock(&srv->adm_mu);
    return why;
}

static void
release(struct smtp_server *srv, const struct sockaddr *sa, bool outsider)
{
    pthread_mutex_lock(&srv->adm_mu);
    per_ip_add(srv, sa, -1);
    srv->n_sessions--;
    srv->n_outsiders -= outsider;
    atomic_store_explicit(&srv->n_open, srv->n_sessions, memory_order_relaxed);
    pthread_mutex_unlock(&srv->adm_mu);
}

void
smtp_server_session_gone(struct smtp_server *srv, struct smtp_session *s)
{
    map_del_u64(s->lp->sessions, s->id);
    atomic_store_explicit(&s->lp->open, map_count(s->lp->sessions), memory_order_relaxed);
    release(srv, (struct sockaddr *)&s->peer, s->outsider);
}

/* Refuse a connection over a limit with one line, without a session. */
static void
refuse(int fd, const char *peer, const char *why)
{
    static const char msg[] = "421 4.7.0 Too many connections, try again later\r\n";
    struct logline l;
    ssize_t w = write(fd, msg, sizeof(msg) - 1); /* best effort: the socket is new and empty */
    (void)w;
    close(fd);
    log_begin(&l, LOG_WARN, NULL, "smtp", "refused");
    log_str(&l, "client", peer);
    log_str(&l, "reason", why);
    log_end(&l);
}

#define AUTH_THROTTLE_MAX    100000 /* client addresses tracked for failed AUTH */
#define SMTP_ACCEPT_PAUSE_MS 500    /* listeners rest this long after accept() ran out */

/* Admit a connection accepted on lp: a session is started on fd (owned),
 * or fd gets one 421 line and is closed. */
static void
loop_admit(struct smtp_loop *lp, int fd, const struct sockaddr *sa, int salen, enum smtp_role role)
{
    char peer[64];
    const char *why;
    bool outsider;
    sockaddr_ntop(sa, peer, sizeof(peer));
    if (lp->shutting_down) {
        close(fd);
        return;
    }
    /* Like Postfix's anvil exceptions: the relay's own networks (applications
     * that hand over bulk mail) are not limited per address, and a share of
     * the sessions is kept for them. */
    outsider = !policy_trusted_client(lp->cfg, sa);
    why = admit(lp->srv, lp->cfg, sa, outsider);
    if (why != NULL) {
        metrics_count_reject(METRICS_REJ_RATE);
        refuse(fd, peer, why);
        return;
    }
    metrics_count_conn_in();
    evutil_make_socket_nonblocking(fd);
    /* Replies are small writes: do not let Nagle hold them back behind a
     * delayed ACK (visible as ~40 ms after a TLS 1.3 handshake). */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
    if (!smtp_session_start(lp, fd, sa, salen, role, outsider))
        release(lp->srv, sa, outsider);
}

void
smtp_server_admit(
    struct smtp_server *srv, int fd, const struct sockaddr *sa, int salen, enum smtp_role role)
{
    loop_admit(srv->loops[0], fd, sa, salen, role);
}

static void
accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct smtp_listener *sl = arg;
    loop_admit(sl->lp, fd, sa, salen, sl->role);
}

/* Listening again after a pause (accept_error_cb). */
static void
accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_loop *lp = arg;
    lp->accept_paused = false;
    if (lp->shutting_down)
        return;
    for (size_t i = 0; i < lp->n_listeners; i++)
        evconnlistener_enable(lp->listeners[i]->lis);
}

/* accept() failed for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM;
 * libevent retries the transient ones itself). The connection stays in the
 * backlog and the socket stays readable, so accepting again at once would
 * spin: stop every listener of the loop (descriptors are shared; the other
 * loops meet the same limit on their own) and listen again in a moment, as
 * nginx and OpenSMTPD do, with one log line per pause. */
static void
accept_error_cb(struct evconnlistener *lis, void *arg)
{
    struct smtp_listener *sl = arg;
    struct smtp_loop *lp = sl->lp;
    struct timeval tv = { SMTP_ACCEPT_PAUSE_MS / 1000, (SMTP_ACCEPT_PAUSE_MS % 1000) * 1000 };
    struct logline l;
    int err = EVUTIL_SOCKET_ERROR();
    for (size_t i = 0; i < lp->n_listeners; i++)
        evconnlistener_disable(lp->listeners[i]->lis);
    if (lp->accept_paused)
        return;
    if (lp->accept_timer == NULL)
        lp->accept_timer = evtimer_new(lp->base, accept_resume_cb, lp);
    if (lp->accept_timer == NULL)
        return; /* out of memory: the listeners stay off; the loop serves its sessions */
    lp->accept_paused = true;
    evtimer_add(lp->accept_timer, &tv);
    log_begin(&l, LOG_ERROR, NULL, "smtp", "accept_paused");
    log_errno(&l, err);
    log_int(&l, "pause_ms", SMTP_ACCEPT_PAUSE_MS);
    log_int(&l, "sessions", (int64_t)atomic_load(&lp->srv->n_open));
    log_int(&l, "worker", (int64_t)lp->idx);
    log_end(&l);
}

static const char *const role_setting[] = { "smtp_listen", "submission_listen", "smtps_listen" };

static void
listener_free(struct smtp_listener *sl)
{
    if (sl == NULL)
        return;
    evconnlistener_free(sl->lis);
    free(sl);
}

/* Sockets bound by ternd's parent, waiting for the listeners of their
 * address (smtp_server_give_socket). Main thread only. */
struct given {
    int role;
    struct hostport hp;
    int fd;
};
static struct given *given_v;
static size_t given_n;

void
smtp_server_give_socket(int role, const struct hostport *hp, int fd)
{
    given_v = xrealloc(given_v, (given_n + 1) * sizeof(*given_v));
    given_v[given_n].role = role;
    given_v[given_n].hp = *hp;
    given_v[given_n++].fd = fd;
}

void
smtp_server_drop_given(void)
{
    for (size_t i = 0; i < given_n; i++)
        close(given_v[i].fd); /* a listening socket: nothing to flush */
    free(given_v);
    given_v = NULL;
    given_n = 0;
}

static bool
same_hp(const struct hostport *a, const struct hostport *b)
{
    return strcmp(a->host, b->host) == 0 && a->port == b->port;
}

static int
take_given(enum smtp_role role, const struct hostport *hp)
{
    for (size_t i = 0; i < given_n; i++) {
        int fd = given_v[i].fd;
        if (given_v[i].role != (int)role || !same_hp(&given_v[i].hp, hp))
            continue;
        given_v[i] = given_v[--given_n];
        return fd;
    }
    return -1;
}

/* The sockets of hp for n loops (fds[n]): those ternd's parent gave (one
 * per loop), else bound here as a group (tests, fuzzers). -1 with err
 * (nothing left open). */
static int
listen_group(const struct hostport *hp, enum smtp_role role, size_t n, int *fds, struct buf *err)
{
    size_t k = 0;
    while (k < n && (fds[k] = take_given(role, hp)) >= 0)
        k++;
    if (k == n)
        return 0;
    if (k == 0)
        return ps_listen_tcp_group(role_setting[role], hp, n, fds, err);
    /* The parent binds as many as there are loops: fewer means a change of
     * workers it did not refuse. */
    buf_printf(err, "%s: %s port %u: %zu listening sockets given for %zu receive loops\n",
        role_setting[role], hp->host, hp->port, k, n);
    while (k > 0)
        close(fds[--k]);
    return -1;
}

static bool listening_on(const struct config *cfg, enum smtp_role role, const struct hostport *hp);

/* The address list of one role. */
static const struct hostport *
role_list(const struct config *cfg, enum smtp_role role, size_t *n)
{
    switch (role) {
    case SMTP_ROLE_RELAY:
        *n = cfg->n_smtp_listen;
        return cfg->smtp_listen;
    case SMTP_ROLE_SUBMISSION:
        *n = cfg->n_submission_listen;
        return cfg->submission_listen;
    case SMTP_ROLE_SMTPS:
        *n = cfg->n_smtps_listen;
        return cfg->smtps_listen;
    }
    tern_panic("role %d", (int)role);
}

void
smtp_listen_set_free(struct smtp_listen_set *set)
{
    if (set == NULL)
        return;
    for (size_t i = 0; i < set->n * set->n_loops; i++) {
        if (set->fds[i] >= 0)
            close(set->fds[i]);
    }
    free(set->fds);
    free(set->hps);
    free(set->roles);
    free(set);
}

/* The sockets of cfg's addresses for every loop: NULL with err when one
 * cannot be bound (nothing is left open). running: the configuration whose
 * listeners are open (NULL at start): an address it listens on in the same
 * role is kept as it is (fds -1), since a socket given by ternd's parent
 * cannot be bound again here. Each loop gets a socket of its own on an
 * address (SO_REUSEPORT with several). */
static struct smtp_listen_set *
bind_all(const struct config *cfg, const struct config *running, size_t n_loops, struct buf *err)
{
    struct smtp_listen_set *set = xcalloc(1, sizeof(*set));
    int *group = xcalloc(n_loops, sizeof(*group));
    size_t k = 0;
    set->n = cfg->n_smtp_listen + cfg->n_submission_listen + cfg->n_smtps_listen;
    set->n_loops = n_loops;
    set->roles = xcalloc(set->n + 1, sizeof(*set->roles));
    set->hps = xcalloc(set->n + 1, sizeof(*set->hps));
    set->fds = xcalloc(set->n * n_loops + 1, sizeof(*set->fds));
    for (size_t i = 0; i < set->n * n_loops; i++)
        set->fds[i] = -1;
    for (int role = SMTP_ROLE_RELAY; role <= SMTP_ROLE_SMTPS; role++) {
        size_t nr;
        const struct hostport *hp = role_list(cfg, (enum smtp_role)role, &nr);
        for (size_t i = 0; i < nr; i++, k++) {
            set->roles[k] = (enum smtp_role)role;
            set->hps[k] = hp[i];
            if (running != NULL && listening_on(running, set->roles[k], &hp[i]))
                continue;
            if (listen_group(&hp[i], set->roles[k], n_loops, group, err) < 0) {
                smtp_listen_set_free(set);
                free(group);
                return NULL;
            }
            for (size_t l = 0; l < n_loops; l++)
                set->fds[l * set->n + k] = group[l];
        }
    }
    free(group);
    return set;
}

void
smtp_loop_unbind(struct smtp_loop *lp)
{
    for (size_t i = 0; i < lp->n_listeners; i++)
        listener_free(lp->listeners[i]);
    free(lp->listeners);
    lp->listeners = NULL;
    lp->n_listeners = 0;
}

/* The index of lp's listener on hp in role, or SIZE_MAX. */
static size_t
find_kept(const struct smtp_loop *lp, enum smtp_role role, const struct hostport *hp)
{
    for (size_t i = 0; i < lp->n_listeners; i++) {
        if (lp->listeners[i] != NULL && lp->listeners[i]->role == role &&
            same_hp(&lp->listeners[i]->hp, hp))
            return i;
    }
    return SIZE_MAX;
}

void
smtp_loop_listen(struct smtp_loop *lp, struct smtp_listen_set *set)
{
    struct smtp_listener **v = xcalloc(set->n + 1, sizeof(*v));
    size_t n = 0;
    struct logline l;
    for (size_t i = 0; i < set->n; i++) {
        int *fd = &set->fds[lp->idx * set->n + i];
        struct smtp_listener *sl;
        size_t kept = find_kept(lp, set->roles[i], &set->hps[i]);
        if (*fd < 0) {
            /* An address the loop listens on already: it stays open, so
             * no connection is refused during a reload. */
            if (kept != SIZE_MAX) {
                v[n++] = lp->listeners[kept];
                lp->listeners[kept] = NULL;
            }
            continue;
        }
        sl = xcalloc(1, sizeof(*sl));
        sl->lp = lp;
        sl->role = set->roles[i];
        sl->hp = set->hps[i];
        sl->lis = evconnlistener_new(
            lp->base, accept_cb, sl, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, *fd);
        if (sl->lis == NULL) {
            /* Out of memory: the address is served by the other loops. */
            log_begin(&l, LOG_ERROR, NULL, "smtp", "listen_failed");
            log_errno(&l, errno ? errno : ENOMEM);
            log_int(&l, "worker", (int64_t)lp->idx);
            log_end(&l);
            free(sl);
            continue;
        }
        *fd = -1;
        evconnlistener_set_error_cb(sl->lis, accept_error_cb);
        if (lp->accept_paused)
            evconnlistener_disable(sl->lis);
        v[n++] = sl;
    }
    smtp_loop_unbind(lp); /* the addresses dropped */
    lp->listeners = v;
    lp->n_listeners = n;
}

/* ternd's relay: AUTH checks go to the keys process (smtp_server_use_keys). */
static int remote_auth_fd = -1;

void
smtp_server_use_keys(int auth_fd)
{
    remote_auth_fd = auth_fd;
}

bool
smtp_server_auth_on(const struct smtp_server *srv)
{
    return atomic_load(&srv->has_users) || atomic_load(&srv->auth_remote_on);
}

/* Build the TLS context and read the AUTH users of cfg. -1 with err when a
 * file is bad (then nothing is returned). warn gets skipped users-file lines. */
static int
load_security(const struct config *cfg, struct tls_ctx **tls, struct auth_users **users,
    struct buf *warn, struct buf *err)
{
    *users = NULL;
    if (tls_server_ctx_new(cfg, tls, err) < 0)
        return -1;
    if (cfg->auth_users_file != NULL && remote_auth_fd < 0) {
        *users = auth_users_new(cfg->auth_users_file);
        if (auth_users_refresh(*users, true, warn, err) < 0) {
            auth_users_free(*users);
            *users = NULL;
            tls_ctx_unref(*tls);
            *tls = NULL;
            return -1;
        }
    }
    return 0;
}

static void
log_users_warnings(const struct buf *warn)
{
    struct logline l;
    if (warn->len == 0)
        return;
    log_begin(&l, LOG_WARN, NULL, "smtp", "auth_users_bad_lines");
    log_strn(&l, "detail", warn->data, warn->len);
    log_end(&l);
}

int
smtp_server_check(const struct config *cfg, struct buf *err)
{
    struct tls_ctx *tls;
    struct auth_users *users;
    struct buf warn = BUF_INIT;
    int rc = load_security(cfg, &tls, &users, &warn, err);
    if (rc == 0 && warn.len > 0) {
        buf_append(err, warn.data, warn.len);
        rc = -1;
    }
    buf_fini(&warn);
    tls_ctx_unref(tls);
    auth_users_free(users);
    return rc;
}

int
smtp_relay_recipients_check(const char *path, uid_t uid, gid_t gid, struct buf *err)
{
    return rcpt_list_check(path, uid, gid, err);
}

/* Swap in the security objects of a new configuration (main thread). The
 * loops get their references of tls with the configuration. */
static void
set_security(struct smtp_server *srv, const struct config *cfg, struct tls_ctx *tls,
    struct auth_users *users)
{
    bool remote = remote_auth_fd >= 0 && cfg->auth_users_file != NULL;
    struct auth_worker *w = NULL;
    if (remote && srv->worker == NULL)
        w = auth_worker_new_remote(srv->base, remote_auth_fd, PS_AUTH_THREADS, smtp_auth_done);
    else if (users != NULL && srv->worker == NULL)
        w = auth_worker_new(smtp_auth_done);
    tls_ctx_unref(srv->tls);
    srv->tls = tls;
    /* The worker is there before any loop can see users. */
    pthread_mutex_lock(&srv->auth_mu);
    if (w != NULL)
        srv->worker = w;
    auth_users_free(srv->users);
    srv->users = users;
    atomic_store(&srv->has_users, users != NULL);
    atomic_store(&srv->auth_remote_on, remote);
    pthread_mutex_unlock(&srv->auth_mu);
}

struct smtp_server *
smtp_server_new(
    struct event_base *base, struct spool *sp, struct config *cfg, struct dns *dns, struct buf *err)
{
    struct smtp_server *srv = xcalloc(1, sizeof(*srv));
    struct smtp_listen_set *set;
    struct tls_ctx *tls;
    struct auth_users *users;
    struct buf warn = BUF_INIT;
    srv->base = base;
    srv->sp = sp;
    srv->cfg = config_ref(cfg);
    pthread_mutex_init(&srv->auth_mu, NULL);
    pthread_mutex_init(&srv->adm_mu, NULL);
    srv->per_ip = map_new();
    srv->throttle = auth_throttle_new(AUTH_THROTTLE_MAX);
    srv->rcpts = rcpt_list_new();
    if (rcpt_list_load(srv->rcpts, cfg->relay_recipients, err) < 0 ||
        load_security(cfg, &tls, &users, &warn, err) < 0) {
        buf_fini(&warn);
        smtp_server_free(srv);
        return NULL;
    }
    log_users_warnings(&warn);
    buf_fini(&warn);
    set_security(srv, cfg, tls, users);
    /* One loop is the main loop itself; more are threads of their own. */
    srv->loops = xcalloc(cfg->workers, sizeof(*srv->loops));
    for (unsigned i = 0; i < cfg->workers; i++) {
        srv->loops[i] = smtp_loop_new(srv, i, cfg->workers > 1, err);
        if (srv->loops[i] == NULL) {
            smtp_server_free(srv);
            return NULL;
        }
        srv->n_loops++;
    }
    set = bind_all(cfg, NULL, srv->n_loops, err);
    if (set == NULL) {
        smtp_server_free(srv);
        return NULL;
    }
    for (size_t i = 0; i < srv->n_loops; i++)
        smtp_loop_init(srv->loops[i], cfg, srv->tls, set);
    smtp_listen_set_free(set);
    /* Before the loops run: a session they accept at once has a resolver. */
    srv->dns = dns;
    for (size_t i = 0; i < srv->n_loops; i++)
        smtp_loop_post_dns(srv->loops[i], dns);
    for (size_t i = 0; i < srv->n_loops; i++)
        smtp_loop_start(srv->loops[i]);
    return srv;
}

/* Does cfg listen on hp in role? */
static bool
listening_on(const struct config *cfg, enum smtp_role role, const struct hostport *hp)
{
    size_t n;
    const struct hostport *v = role_list(cfg, role, &n);
    for (size_t i = 0; i < n; i++) {
        if (same_hp(&v[i], hp))
            return true;
    }
    return false;
}

static bool
same_listen(const struct config *a, const struct config *b)
{
    for (int role = SMTP_ROLE_RELAY; role <= SMTP_ROLE_SMTPS; role++) {
        size_t na, nb;
        const struct hostport *la = role_list(a, (enum smtp_role)role, &na);
        const struct hostport *lb = role_list(b, (enum smtp_role)role, &nb);
        if (na != nb)
            return false;
        for (size_t i = 0; i < na; i++) {
            if (strcmp(la[i].host, lb[i].host) != 0 || la[i].port != lb[i].port)
                return false;
        }
    }
    return true;
}

/* The sockets of cfg's new addresses for every loop when its addresses
 * differ from the running ones: 0 with *set NULL when they are the same,
 * -1 with err when one cannot be bound (the running listeners stay). The
 * loops close the dropped addresses once the set is theirs. */
static int
rebind(struct smtp_server *srv, const struct config *cfg, struct smtp_listen_set **set,
    struct buf *err)
{
    *set = NULL;
    if (same_listen(srv->cfg, cfg))
        return 0;
    *set = bind_all(cfg, srv->cfg, srv->n_loops, err);
    return *set != NULL ? 0 : -1;
}

int
smtp_server_set_config(struct smtp_server *srv, struct config *cfg, struct buf *err)
{
    struct tls_ctx *tls;
    struct auth_users *users;
    struct smtp_listen_set *set;
    struct buf warn = BUF_INIT;
    if (cfg->workers != srv->n_loops) {
        buf_printf(err, "workers cannot change on reload (restart ternd)\n");
        return -1;
    }
    /* A bad certificate, key or users file refuses the whole reload. */
    if (load_security(cfg, &tls, &users, &warn, err) < 0)
        return -1;
    if (rebind(srv, cfg, &set, err) < 0) {
        tls_ctx_unref(tls);
        auth_users_free(users);
        buf_fini(&warn);
        return -1;
    }
    /* relay_recipients is read again on reload, also when unchanged; a
     * broken file refuses the reload and the list in use stays. */
    if (rcpt_list_load(srv->rcpts, cfg->relay_recipients, err) < 0) {
        smtp_listen_set_free(set);
        tls_ctx_unref(tls);
        auth_users_free(users);
        buf_fini(&warn);
        return -1;
    }
    log_users_warnings(&warn);
    buf_fini(&warn);
    set_security(srv, cfg, tls, users);
    config_unref(srv->cfg);
    srv->cfg = config_ref(cfg);
    /* Each loop takes the new configuration at its next pass: sessions
     * started from then on use it. */
    for (size_t i = 0; i < srv->n_loops; i++)
        smtp_loop_post_config(srv->loops[i], cfg, srv->tls, set);
    smtp_listen_set_free(set);
    return 0;
}

/* ---- file descriptors ---- */

uint64_t
smtp_server_fds_needed(const struct config *cfg)
{
    uint64_t listeners = cfg->n_smtp_listen + cfg->n_submission_listen + cfg->n_smtps_listen;
    uint64_t loops = cfg->workers > 1 ? cfg->workers : 1;
    /* Every loop has a socket of its own per address; a threaded one also
     * its epoll and inbox descriptors. */
    return (uint64_t)cfg->max_sessions * SMTP_FDS_PER_SESSION +
           (uint64_t)cfg->max_connections * SMTP_FDS_PER_DELIVERY + listeners * loops +
           (loops > 1 ? loops * SMTP_FDS_PER_LOOP : 0) + SMTP_FDS_RESERVE;
}

int
smtp_server_check_fds(const struct config *cfg, uint64_t limit, struct buf *err)
{
    uint64_t need = smtp_server_fds_needed(cfg);
    if (need <= limit)
        return 0;
    buf_printf(err,
        "max_sessions = %u and max_connections = %u need up to %llu file descriptors "
        "(%d per session, %d per outbound connection, %d more for the daemon itself), but the "
        "limit (RLIMIT_NOFILE) is %llu: lower max_sessions or max_connections, or raise the "
        "limit (ulimit -n, LimitNOFILE= in the systemd unit)\n",
        (unsigned)cfg->max_sessions, (unsigned)cfg->max_connections, (unsigned long long)need,
        SMTP_FDS_PER_SESSION, SMTP_FDS_PER_DELIVERY, SMTP_FDS_RESERVE, (unsigned long long)limit);
    return -1;
}

struct session_list {
    struct smtp_session **v;
    size_t n;
};

static void
collect_cb(const void *k, size_t kl, void *v, void *arg)
{
    struct session_list *c = arg;
    c->v[c->n++] = v;
}

/* Apply fn to every session of the loop, walking a snapshot (fn may end
 * sessions). */
static void
each_session(struct smtp_loop *lp, void (*fn)(struct smtp_session *s))
{
    struct session_list c = { xcalloc(map_count(lp->sessions) + 1, sizeof(*c.v)), 0 };
    map_each(lp->sessions, collect_cb, &c);
    for (size_t i = 0; i < c.n; i++)
        fn(c.v[i]);
    free(c.v);
}

static void
shutdown_one(struct smtp_session *s)
{
    /* A session whose message is being committed gets its answer from the
     * commit callback first (the spool finishes in-flight commits). */
    if (s->state == SMTP_ST_COMMIT)
        return;
    if (s->state == SMTP_ST_HANDSHAKE) {
        smtp_session_kill(s); /* no reply can be sent mid-handshake */
        return;
    }
    smtp_session_close(s, 421, "4.3.2", "Service shutting down, try again later");
}

void
smtp_loop_shutdown_sessions(struct smtp_loop *lp)
{
    lp->shutting_down = true;
    smtp_loop_unbind(lp);
    each_session(lp, shutdown_one);
}

void
smtp_loop_kill_sessions(struct smtp_loop *lp)
{
    each_session(lp, smtp_session_kill);
}

void
smtp_server_shutdown(struct smtp_server *srv)
{
    srv->shutting_down = true;
    for (size_t i = 0; i < srv->n_loops; i++)
        smtp_loop_post_shutdown(srv->loops[i]);
}

void
smtp_server_kill_all(struct smtp_server *srv)
{
    for (size_t i = 0; i < srv->n_loops; i++)
        smtp_loop_stop(srv->loops[i]);
}

size_t
smtp_server_unfreed(const struct smtp_server *srv)
{
    size_t n = 0;
    if (srv == NULL)
        return 0;
    /* A threaded loop is read only once its thread has ended. */
    for (size_t i = 0; i < srv->n_loops; i++) {
        if (!srv->loops[i]->threaded || srv->loops[i]->joined)
            n += srv->loops[i]->n_alive;
    }
    return n;
}

size_t
smtp_server_sessions(const struct smtp_server *srv)
{
    return atomic_load_explicit(&srv->n_open, memory_order_relaxed);
}

void
smtp_server_status_json(const struct smtp_server *srv, struct buf *out)
{
    buf_append_str(out, "[");
    for (size_t i = 0; i < srv->n_loops; i++) {
        const struct smtp_loop *lp = srv->loops[i];
        buf_printf(out, "%s{\"sessions\":%zu,\"accepted\":%llu}", i ? "," : "",
            atomic_load_explicit(&lp->open, memory_order_relaxed),
            (unsigned long long)atomic_load_explicit(&lp->accepted, memory_order_relaxed));
    }
    buf_append_str(out, "]");
}

uint64_t
smtp_server_received(const struct smtp_server *srv)
{
    return atomic_load_explicit(&srv->received, memory_order_relaxed);
}

void
smtp_server_free(struct smtp_server *srv)
{
    if (srv == NULL)
        return;
    smtp_server_kill_all(srv); /* joins the loop threads */
    /* Answers of checks still running are posted to the loops' inboxes,
     * which are emptied (or freed) by smtp_loop_free below. */
    auth_worker_free(srv->worker);
    for (size_t i = 0; i < srv->n_loops; i++)
        smtp_loop_free(srv->loops[i]);
    free(srv->loops);
    auth_throttle_free(srv->throttle);
    auth_users_free(srv->users);
    tls_ctx_unref(srv->tls);
    map_free(srv->per_ip);
    rcpt_list_free(srv->rcpts);
    pthread_mutex_destroy(&srv->auth_mu);
    pthread_mutex_destroy(&srv->adm_mu);
    config_unref(srv->cfg);
    free(srv);
}

/*
 * SMTP listeners and session admission: binds smtp_listen (relay/MX),
 * submission_listen and smtps_listen (each listener knows its role),
 * enforces the total and per-address session limits (421 4.7.0) over all of
 * them, keeps the session table that commit and AUTH callbacks use to find a
 * session by id, and owns the TLS context and AUTH users of the current
 * configuration (rebuilt on reload; sessions keep what they started with).
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

#include "policy.h"
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

static size_t
per_ip_count(struct smtp_server *srv, const struct sockaddr *sa)
{
    unsigned char key[16];
    size_t kl = ip_key(sa, key);
    return (size_t)(uintptr_t)map_get(srv->per_ip, key, kl);
}

void
smtp_server_session_gone(struct smtp_server *srv, struct smtp_session *s)
{
    map_del_u64(srv->sessions, s->id);
    per_ip_add(srv, (struct sockaddr *)&s->peer, -1);
    if (s->outsider)
        srv->n_outsiders--;
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

static void
accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct smtp_listener *sl = arg;
    struct smtp_server *srv = sl->srv;
    char peer[64];
    const char *why;
    bool outsider;
    sockaddr_ntop(sa, peer, sizeof(peer));
    if (srv->shutting_down) {
        close(fd);
        return;
    }
    /* Like Postfix's anvil exceptions: the relay's own networks (applications
     * that hand over bulk mail) are not limited per address, and a share of
     * the sessions is kept for them. */
    outsider = !policy_trusted_client(srv->cfg, sa);
    why = policy_admit_session(
        srv->cfg, !outsider, map_count(srv->sessions), srv->n_outsiders, per_ip_count(srv, sa));
    if (why != NULL) {
        refuse(fd, peer, why);
        return;
    }
    evutil_make_socket_nonblocking(fd);
    /* Replies are small writes: do not let Nagle hold them back behind a
     * delayed ACK (visible as ~40 ms after a TLS 1.3 handshake). */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
    per_ip_add(srv, sa, 1);
    srv->n_outsiders += outsider;
    if (!smtp_session_start(srv, fd, sa, salen, sl->role, outsider)) {
        per_ip_add(srv, sa, -1);
        srv->n_outsiders -= outsider;
    }
}

/* Listening again after a pause (accept_error_cb). */
static void
accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_server *srv = arg;
    srv->accept_paused = false;
    if (srv->shutting_down)
        return;
    for (size_t i = 0; i < srv->n_listeners; i++)
        evconnlistener_enable(srv->listeners[i]->lis);
}

/* accept() failed for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM;
 * libevent retries the transient ones itself). The connection stays in the
 * backlog and the socket stays readable, so accepting again at once would
 * spin: stop every listener (descriptors are shared) and listen again in a
 * moment, as nginx and OpenSMTPD do, with one log line per pause. */
static void
accept_error_cb(struct evconnlistener *lis, void *arg)
{
    struct smtp_listener *sl = arg;
    struct smtp_server *srv = sl->srv;
    struct timeval tv = { SMTP_ACCEPT_PAUSE_MS / 1000, (SMTP_ACCEPT_PAUSE_MS % 1000) * 1000 };
    struct logline l;
    int err = EVUTIL_SOCKET_ERROR();
    for (size_t i = 0; i < srv->n_listeners; i++)
        evconnlistener_disable(srv->listeners[i]->lis);
    if (srv->accept_paused)
        return;
    srv->accept_paused = true;
    evtimer_add(srv->accept_timer, &tv);
    log_begin(&l, LOG_ERROR, NULL, "smtp", "accept_paused");
    log_errno(&l, err);
    log_int(&l, "pause_ms", SMTP_ACCEPT_PAUSE_MS);
    log_int(&l, "sessions", (int64_t)map_count(srv->sessions));
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

static struct smtp_listener *
bind_one(struct smtp_server *srv, const struct hostport *hp, enum smtp_role role, struct buf *err)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char spec[CONFIG_HOST_MAX + 16];
    struct smtp_listener *sl = xcalloc(1, sizeof(*sl));
    snprintf(spec, sizeof(spec), strchr(hp->host, ':') ? "[%s]:%u" : "%s:%u", hp->host, hp->port);
    if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &len) < 0) {
        buf_printf(err, "%s: %s is not a numeric address:port\n", role_setting[role], spec);
        free(sl);
        return NULL;
    }
    sl->srv = srv;
    sl->role = role;
    sl->lis = evconnlistener_new_bind(srv->base, accept_cb, sl,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 511,
        (struct sockaddr *)&ss, len);
    if (sl->lis == NULL) {
        buf_printf(err, "%s: cannot listen on %s: %s\n", role_setting[role], spec, strerror(errno));
        free(sl);
        return NULL;
    }
    evconnlistener_set_error_cb(sl->lis, accept_error_cb);
    return sl;
}

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

static int
bind_all(struct smtp_server *srv, const struct config *cfg, struct smtp_listener ***out, size_t *n,
    struct buf *err)
{
    size_t total = cfg->n_smtp_listen + cfg->n_submission_listen + cfg->n_smtps_listen, k = 0;
    struct smtp_listener **v = xcalloc(total + 1, sizeof(*v));
    for (int role = SMTP_ROLE_RELAY; role <= SMTP_ROLE_SMTPS; role++) {
        size_t nr;
        const struct hostport *hp = role_list(cfg, (enum smtp_role)role, &nr);
        for (size_t i = 0; i < nr; i++) {
            v[k] = bind_one(srv, &hp[i], (enum smtp_role)role, err);
            if (v[k] == NULL) {
                for (size_t j = 0; j < k; j++)
                    listener_free(v[j]);
                free(v);
                return -1;
            }
            k++;
        }
    }
    *out = v;
    *n = k;
    return 0;
}

static void
unbind_all(struct smtp_server *srv)
{
    for (size_t i = 0; i < srv->n_listeners; i++)
        listener_free(srv->listeners[i]);
    free(srv->listeners);
    srv->listeners = NULL;
    srv->n_listeners = 0;
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
    if (cfg->auth_users_file != NULL) {
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

/* Swap in the security objects of a new configuration. */
static void
set_security(struct smtp_server *srv, struct tls_ctx *tls, struct auth_users *users)
{
    tls_ctx_unref(srv->tls);
    srv->tls = tls;
    auth_users_free(srv->users);
    srv->users = users;
    if (users != NULL && srv->worker == NULL)
        srv->worker = auth_worker_new(srv->base, smtp_auth_done, srv);
}

struct smtp_server *
smtp_server_new(struct event_base *base, struct spool *sp, struct config *cfg, struct buf *err)
{
    struct smtp_server *srv = xcalloc(1, sizeof(*srv));
    srv->base = base;
    srv->sp = sp;
    srv->cfg = config_ref(cfg);
    struct tls_ctx *tls;
    struct auth_users *users;
    struct buf warn = BUF_INIT;
    srv->sessions = map_new();
    srv->per_ip = map_new();
    srv->accept_timer = evtimer_new(base, accept_resume_cb, srv);
    srv->throttle = auth_throttle_new(AUTH_THROTTLE_MAX);
    if (load_security(cfg, &tls, &users, &warn, err) < 0) {
        smtp_server_free(srv);
        return NULL;
    }
    log_users_warnings(&warn);
    buf_fini(&warn);
    set_security(srv, tls, users);
    if (bind_all(srv, cfg, &srv->listeners, &srv->n_listeners, err) < 0) {
        smtp_server_free(srv);
        return NULL;
    }
    return srv;
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

int
smtp_server_set_config(struct smtp_server *srv, struct config *cfg, struct buf *err)
{
    struct tls_ctx *tls;
    struct auth_users *users;
    struct buf warn = BUF_INIT;
    /* A bad certificate, key or users file refuses the whole reload. */
    if (load_security(cfg, &tls, &users, &warn, err) < 0)
        return -1;
    if (!same_listen(srv->cfg, cfg)) {
        struct smtp_listener **v;
        size_t n;
        /* Free the old listeners first: the new set may reuse an address. */
        unbind_all(srv);
        if (bind_all(srv, cfg, &v, &n, err) < 0) {
            struct buf ignore = BUF_INIT;
            bind_all(srv, srv->cfg, &srv->listeners, &srv->n_listeners, &ignore);
            buf_fini(&ignore);
            tls_ctx_unref(tls);
            auth_users_free(users);
            buf_fini(&warn);
            return -1;
        }
        srv->listeners = v;
        srv->n_listeners = n;
    }
    log_users_warnings(&warn);
    buf_fini(&warn);
    set_security(srv, tls, users);
    config_unref(srv->cfg);
    srv->cfg = config_ref(cfg);
    return 0;
}

/* ---- file descriptors ---- */

uint64_t
smtp_server_fds_needed(const struct config *cfg)
{
    uint64_t listeners = cfg->n_smtp_listen + cfg->n_submission_listen + cfg->n_smtps_listen;
    return (uint64_t)cfg->max_sessions * SMTP_FDS_PER_SESSION +
           (uint64_t)cfg->max_connections * SMTP_FDS_PER_DELIVERY + listeners + SMTP_FDS_RESERVE;
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

/* Apply fn to every session, walking a snapshot (fn may end sessions). */
static void
each_session(struct smtp_server *srv, void (*fn)(struct smtp_session *s))
{
    struct session_list c = { xcalloc(map_count(srv->sessions) + 1, sizeof(*c.v)), 0 };
    map_each(srv->sessions, collect_cb, &c);
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
smtp_server_shutdown(struct smtp_server *srv)
{
    srv->shutting_down = true;
    unbind_all(srv);
    each_session(srv, shutdown_one);
}

void
smtp_server_kill_all(struct smtp_server *srv)
{
    each_session(srv, smtp_session_kill);
}

size_t
smtp_server_unfreed(const struct smtp_server *srv)
{
    return srv ? srv->n_alive : 0;
}

size_t
smtp_server_sessions(const struct smtp_server *srv)
{
    return map_count(srv->sessions);
}

uint64_t
smtp_server_received(const struct smtp_server *srv)
{
    return srv->received;
}

void
smtp_server_free(struct smtp_server *srv)
{
    if (srv == NULL)
        return;
    unbind_all(srv);
    if (srv->accept_timer)
        event_free(srv->accept_timer);
    auth_worker_free(srv->worker); /* joins the thread first */
    auth_throttle_free(srv->throttle);
    auth_users_free(srv->users);
    tls_ctx_unref(srv->tls);
    map_free(srv->sessions);
    map_free(srv->per_ip);
    config_unref(srv->cfg);
    free(srv);
}

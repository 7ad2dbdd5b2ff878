/*
 * Listening sockets, made by ternd's parent (which may bind port 25 as
 * root) and handed to the relay; and the listen checks of --check. IPv6
 * sockets are IPV6_V6ONLY, so 0.0.0.0:P and [::]:P are two sockets that
 * coexist instead of the second failing with EADDRINUSE (RFC 3493 §5.3).
 */
#include "privsep/privsep.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/util.h"

#define LISTEN_BACKLOG 511

/* hp as a socket address; -1 when the host is not a numeric address. */
static int
to_sockaddr(const struct hostport *hp, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, hp->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(hp->port);
        *len = sizeof(*s4);
        return 0;
    }
    if (inet_pton(AF_INET6, hp->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(hp->port);
        *len = sizeof(*s6);
        return 0;
    }
    return -1;
}

static void
spec_of(const struct hostport *hp, char *out, size_t cap)
{
    snprintf(out, cap, strchr(hp->host, ':') ? "[%s]:%u" : "%s:%u", hp->host, hp->port);
}

/* A socket bound to ss; listening unless probe; with reuseport one of a
 * group that shares the address (SO_REUSEPORT). -1 with errno. */
static int
bind_addr(const struct sockaddr_storage *ss, socklen_t len, bool probe, bool reuseport)
{
    int one = 1, e;
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        (ss->ss_family == AF_INET6 &&
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
        bind(fd, (const struct sockaddr *)ss, len) < 0 ||
        (!probe && listen(fd, LISTEN_BACKLOG) < 0)) {
        e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int
ps_listen_tcp(const char *what, const struct hostport *hp, int *fd, struct buf *err)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char spec[CONFIG_HOST_MAX + 16];
    spec_of(hp, spec, sizeof(spec));
    if (to_sockaddr(hp, &ss, &len) < 0) {
        buf_printf(err, "%s: %s is not a numeric address:port\n", what, spec);
        return -1;
    }
    *fd = bind_addr(&ss, len, false, false);
    if (*fd < 0) {
        buf_printf(err, "%s: cannot listen on %s: %s\n", what, spec, strerror(errno));
        return -1;
    }
    return 0;
}

int
ps_listen_tcp_group(
    const char *what, const struct hostport *hp, size_t n, int *fds, struct buf *err)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char spec[CONFIG_HOST_MAX + 16];
    int probe;
    if (n <= 1)
        return ps_listen_tcp(what, hp, &fds[0], err);
    spec_of(hp, spec, sizeof(spec));
    if (to_sockaddr(hp, &ss, &len) < 0) {
        buf_printf(err, "%s: %s is not a numeric address:port\n", what, spec);
        return -1;
    }
    /* SO_REUSEPORT would let the group join sockets that another process
     * of the same user has on the address (a second ternd, say) and share
     * its connections unnoticed: bound first without it, an address in use
     * fails as a lone socket would. */
    probe = bind_addr(&ss, len, true, false);
    if (probe < 0) {
        buf_printf(err, "%s: cannot listen on %s: %s\n", what, spec, strerror(errno));
        return -1;
    }
    close(probe);
    for (size_t i = 0; i < n; i++) {
        fds[i] = bind_addr(&ss, len, false, true);
        if (fds[i] >= 0)
            continue;
        buf_printf(err, "%s: cannot listen on %s: %s\n", what, spec, strerror(errno));
        while (i > 0)
            close(fds[--i]);
        return -1;
    }
    return 0;
}

struct lentry {
    const char *what;
    const struct hostport *hp;
};

static bool
is_wildcard(const struct hostport *hp)
{
    return strcmp(hp->host, "0.0.0.0") == 0 || strcmp(hp->host, "::") == 0;
}

static bool
same_family(const struct hostport *a, const struct hostport *b)
{
    return (strchr(a->host, ':') != NULL) == (strchr(b->host, ':') != NULL);
}

/* Two entries that cannot both be bound (same address, or a wildcard and
 * an address of its family, on one port). */
static bool
conflict(const struct lentry *a, const struct lentry *b)
{
    struct sockaddr_storage x, y;
    socklen_t lx, ly;
    if (a->hp->port != b->hp->port || !same_family(a->hp, b->hp))
        return false;
    if (is_wildcard(a->hp) || is_wildcard(b->hp))
        return true;
    if (to_sockaddr(a->hp, &x, &lx) < 0 || to_sockaddr(b->hp, &y, &ly) < 0)
        return false;
    return lx == ly && memcmp(&x, &y, lx) == 0;
}

static size_t
collect(const struct config *cfg, struct lentry *v, size_t cap)
{
    static const char *const names[] = { "smtp_listen", "submission_listen", "smtps_listen" };
    const struct hostport *lists[] = { cfg->smtp_listen, cfg->submission_listen,
        cfg->smtps_listen };
    size_t counts[] = { cfg->n_smtp_listen, cfg->n_submission_listen, cfg->n_smtps_listen };
    size_t n = 0;
    for (size_t r = 0; r < 3; r++) {
        for (size_t i = 0; i < counts[r] && n < cap; i++)
            v[n++] = (struct lentry){ names[r], &lists[r][i] };
    }
    if (cfg->metrics_listen.host[0] != '\0' && n < cap)
        v[n++] = (struct lentry){ "metrics_listen", &cfg->metrics_listen };
    return n;
}

int
ps_listen_check(const struct config *cfg, struct buf *err)
{
    size_t cap = cfg->n_smtp_listen + cfg->n_submission_listen + cfg->n_smtps_listen + 1;
    struct lentry *v = xcalloc(cap, sizeof(*v));
    size_t n = collect(cfg, v, cap);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        char spec[CONFIG_HOST_MAX + 16], other[CONFIG_HOST_MAX + 16];
        int fd;
        spec_of(v[i].hp, spec, sizeof(spec));
        for (size_t j = 0; j < i; j++) {
            if (!conflict(&v[i], &v[j]))
                continue;
            spec_of(v[j].hp, other, sizeof(other));
            buf_printf(err, "%s: %s overlaps %s of %s (one socket cannot be bound twice)\n",
                v[i].what, spec, other, v[j].what);
            rc = -1;
        }
        if (to_sockaddr(v[i].hp, &ss, &len) < 0) {
            buf_printf(err, "%s: %s is not a numeric address:port\n", v[i].what, spec);
            rc = -1;
            continue;
        }
        /* Port 0: is the address one of this machine's, without taking the
         * port a running ternd may hold? */
        ((struct sockaddr_in *)&ss)->sin_port = 0; /* same offset for IPv6 */
        fd = bind_addr(&ss, len, true, false);
        if (fd < 0) {
            buf_printf(err, "%s: cannot listen on %s: %s\n", v[i].what, spec, strerror(errno));
            rc = -1;
        } else {
            close(fd);
        }
    }
    free(v);
    return rc;
}

/*
 * Closing an outbound TLS connection properly. libevent's OpenSSL filter
 * frees the SSL object without SSL_shutdown and drops whatever the TLS layer
 * still had queued for the socket, so the peer never saw our close_notify
 * (RFC 8446 §6.1, RFC 5246 §7.2.1) nor the alert OpenSSL made for a failed
 * handshake. Here the close_notify is queued, the pending TLS records are
 * taken out of the filter, the bufferevent is freed, and a duplicate of the
 * socket (owned by a struct deliv_linger in d->lingers) writes them, shuts
 * down its sending half and reads until the peer closes (so that unread
 * bytes never turn the close into a reset that could destroy the records),
 * for at most DELIV_LINGER_MS.
 */
#include "delivery/delivery_int.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/util.h"

#define LINGER_OUT_MAX (64 * 1024) /* more than this pending: the session failed anyway */

struct deliv_linger {
    TAILQ_ENTRY(deliv_linger) link;
    struct delivery *d;
    int fd; /* owned duplicate of the connection's socket */
    struct event *ev;
    struct buf out; /* TLS records still to write */
    size_t sent;
    bool shut; /* our sending half is shut down */
};

static void
linger_free(struct deliv_linger *l)
{
    TAILQ_REMOVE(&l->d->lingers, l, link);
    if (l->ev != NULL)
        event_free(l->ev);
    if (l->fd >= 0)
        close(l->fd); /* a socket being abandoned: nothing useful to do on error */
    buf_fini(&l->out);
    free(l);
}

/* Write what is pending; once it is all out, end our half of the stream.
 * -1 when the socket is unusable. */
static int
linger_write(struct deliv_linger *l)
{
    while (l->sent < l->out.len) {
        ssize_t n = send(l->fd, l->out.data + l->sent, l->out.len - l->sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        l->sent += (size_t)n;
    }
    if (!l->shut) {
        l->shut = true;
        if (shutdown(l->fd, SHUT_WR) < 0)
            return -1;
    }
    return 0;
}

/* Discard what the peer still sends; true at its end of stream or an error. */
static bool
linger_drain(struct deliv_linger *l)
{
    char tmp[4096];
    for (;;) {
        ssize_t n = recv(l->fd, tmp, sizeof(tmp), 0);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    }
}

static void
linger_cb(evutil_socket_t fd, short what, void *arg)
{
    struct deliv_linger *l = arg;
    struct timeval tv;
    if ((what & EV_TIMEOUT) || linger_write(l) < 0 || ((what & EV_READ) && linger_drain(l))) {
        linger_free(l);
        return;
    }
    /* Wait for the socket to take the rest, or for the peer to close. */
    event_del(l->ev);
    event_assign(l->ev, l->d->base, l->fd, l->shut ? EV_READ : EV_READ | EV_WRITE, linger_cb, l);
    tv.tv_sec = DELIV_LINGER_MS / 1000;
    tv.tv_usec = (DELIV_LINGER_MS % 1000) * 1000;
    if (event_add(l->ev, &tv) < 0)
        linger_free(l);
}

/* Move the TLS records queued for the socket in the filter's underlying
 * bufferevent into out. A bufferevent keeps the start of its output frozen
 * (only it writes from there), so it is thawed for the move, as its own
 * writer does. False when there are none or too many. */
static bool
take_pending(struct bufferevent *under, struct buf *out)
{
    struct evbuffer *eb = bufferevent_get_output(under);
    size_t n = evbuffer_get_length(eb);
    int got;
    if (n == 0 || n > LINGER_OUT_MAX)
        return false;
    buf_reserve(out, n);
    evbuffer_unfreeze(eb, 1);
    got = evbuffer_remove(eb, out->data, n);
    evbuffer_freeze(eb, 1);
    if (got != (int)n)
        return false;
    out->len = n;
    out->data[n] = '\0';
    return true;
}

void
deliv_bev_close(struct delivery *d, struct bufferevent *bev, bool tls_shutdown)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    struct bufferevent *under = ssl != NULL ? bufferevent_get_underlying(bev) : NULL;
    struct deliv_linger *l;
    int fd;
    if (under == NULL) {
        bufferevent_free(bev);
        return;
    }
    /* SSL_shutdown must not follow a fatal error (SSL_shutdown(3)); a
     * handshake that failed has its alert queued already. */
    if (tls_shutdown && SSL_is_init_finished(ssl) &&
        (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN) == 0)
        (void)SSL_shutdown(ssl); /* queues close_notify; we do not wait for the peer's */
    ERR_clear_error();
    fd = bufferevent_getfd(under);
    l = xcalloc(1, sizeof(*l));
    l->d = d;
    l->fd = -1;
    buf_init(&l->out);
    TAILQ_INSERT_TAIL(&d->lingers, l, link);
    if (fd < 0 || !take_pending(under, &l->out) || (l->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        bufferevent_free(bev);
        linger_free(l);
        return;
    }
    bufferevent_free(bev); /* closes its descriptor; ours keeps the socket open */
    l->ev = d->shutting ? NULL : event_new(d->base, l->fd, 0, linger_cb, l);
    if (l->ev == NULL) {
        (void)linger_write(l); /* shutting down: one try, no waiting */
        linger_free(l);
        return;
    }
    linger_cb(l->fd, EV_WRITE, l);
}

void
deliv_linger_purge(struct delivery *d)
{
    struct deliv_linger *l;
    while ((l = TAILQ_FIRST(&d->lingers)) != NULL)
        linger_free(l);
}

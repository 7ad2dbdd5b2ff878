/*
 * Outbound delivery: destinations, connection limits and the job hand-out.
 * Each destination (delivery_dest.key) keeps its open connections; a kick
 * opens new ones while fewer than the limit are open and fewer connections
 * are free to take a job than jobs are due. Closed connections wait on the
 * dead list and are freed by the reaper event; an empty destination is freed
 * there too. The SMTP conversation itself lives in client.c.
 */
#include "delivery/delivery.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "delivery/delivery_int.h"
#include "util/log.h"
#include "util/util.h"

static void
reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *d = arg;
    struct deliv_conn *c;
    struct deliv_dest *dest, *next;
    while ((c = TAILQ_FIRST(&d->dead)) != NULL) {
        TAILQ_REMOVE(&d->dead, c, dest_link);
        client_free(c);
    }
    for (dest = TAILQ_FIRST(&d->dests); dest != NULL; dest = next) {
        next = TAILQ_NEXT(dest, link);
        if (dest->n_conns == 0) {
            TAILQ_REMOVE(&d->dests, dest, link);
            free(dest);
        }
    }
}

struct delivery *
delivery_new(struct event_base *base, struct spool *sp, const struct delivery_callbacks *cb)
{
    struct delivery *d = xcalloc(1, sizeof(*d));
    d->base = base;
    d->sp = sp;
    d->cb = *cb;
    TAILQ_INIT(&d->dests);
    TAILQ_INIT(&d->dead);
    d->reap = event_new(base, -1, 0, reap_cb, d);
    if (d->reap == NULL)
        tern_panic("cannot create delivery reaper event");
    d->res = resolver_new(base);
    if (d->res == NULL)
        log_simple(LOG_WARN, "delivery", "resolver_failed",
            "cannot start the c-ares resolver: host names will not resolve");
    return d;
}

void
delivery_set_config(struct delivery *d, struct config *cfg)
{
    struct config *old = d->cfg;
    d->cfg = config_ref(cfg);
    config_unref(old);
}

static struct deliv_dest *
dest_get(struct delivery *d, const struct delivery_dest *dd)
{
    struct deliv_dest *dest;
    TAILQ_FOREACH(dest, &d->dests, link)
    {
        if (strcmp(dest->d.key, dd->key) == 0)
            return dest;
    }
    dest = xcalloc(1, sizeof(*dest));
    dest->d = *dd;
    dest->d.key[sizeof(dest->d.key) - 1] = '\0';
    dest->d.host[sizeof(dest->d.host) - 1] = '\0';
    TAILQ_INIT(&dest->conns);
    TAILQ_INSERT_TAIL(&d->dests, dest, link);
    return dest;
}

void
deliv_dest_fill(struct delivery *d, struct deliv_dest *dest)
{
    size_t limit, free_conns = 0;
    struct deliv_conn *c;
    if (d->shutting || d->cfg == NULL)
        return;
    limit = d->cfg->delivery_concurrency ? d->cfg->delivery_concurrency : DELIV_DEF_CONCURRENCY;
    TAILQ_FOREACH(c, &dest->conns, dest_link)
    free_conns += client_not_busy(c);
    while (dest->n_conns < limit && free_conns < dest->n_due) {
        client_new(d, dest, d->cfg);
        free_conns++;
    }
}

void
delivery_kick(struct delivery *d, const struct delivery_dest *dd, size_t n_due)
{
    struct deliv_dest *dest;
    struct deliv_conn *c;
    size_t woken = 0;
    if (d->shutting)
        return;
    if (d->cfg == NULL) {
        log_simple(LOG_ERROR, "delivery", "no_config", "delivery kicked before configuration");
        return;
    }
    dest = dest_get(d, dd);
    dest->n_due = n_due;
    /* Idle connections first; they ask from the loop, not inside this call. */
    TAILQ_FOREACH(c, &dest->conns, dest_link)
    {
        if (woken < n_due && client_wake(c))
            woken++;
    }
    deliv_dest_fill(d, dest);
}

bool
deliv_take_job(struct delivery *d, struct deliv_dest *dest, struct delivery_job *job)
{
    memset(job, 0, sizeof(*job));
    if (d->shutting || !d->cb.next_job(d->cb.arg, dest->d.key, job)) {
        dest->n_due = 0;
        return false;
    }
    if (dest->n_due > 0)
        dest->n_due--;
    return true;
}

void
deliv_conn_retire(struct delivery *d, struct deliv_conn *c, struct deliv_dest *dest, bool refill)
{
    TAILQ_REMOVE(&dest->conns, c, dest_link);
    dest->n_conns--;
    d->n_active--;
    TAILQ_INSERT_TAIL(&d->dead, c, dest_link);
    if (!d->shutting) {
        event_active(d->reap, 0, 0);
        /* Work may remain that this connection would have taken. */
        if (refill && dest->n_due > 0)
            deliv_dest_fill(d, dest);
    }
}

size_t
delivery_active(const struct delivery *d)
{
    return d->n_active;
}

void
delivery_free(struct delivery *d)
{
    struct deliv_dest *dest;
    struct deliv_conn *c;
    if (d == NULL)
        return;
    d->shutting = true;
    TAILQ_FOREACH(dest, &d->dests, link)
    {
        while ((c = TAILQ_FIRST(&dest->conns)) != NULL)
            client_shutdown(c);
    }
    reap_cb(-1, 0, d);
    TERN_ASSERT(TAILQ_EMPTY(&d->dests));
    event_free(d->reap);
    resolver_free(d->res);
    config_unref(d->cfg);
    free(d);
}

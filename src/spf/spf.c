/*
 * The asynchronous SPF driver: runs a struct spf_check step by step, asking
 * a resolver (function table) for each missing answer. One lookup is in
 * flight at a time. Answers may arrive inside lookup() (a fake resolver) or
 * later (the dns module); either way the result reaches the caller from a
 * per-evaluation event, never inside spf_eval_start(). The evaluation owns
 * its check; the resolver handle is cancelled with it.
 */
#include "spf/spf.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

struct spf_eval {
    struct spf_check *check; /* owned */
    struct spf_resolver res;
    struct event *deliver;
    spf_done_cb cb;
    void *arg;
    void *pending;  /* resolver handle of the lookup in flight */
    bool in_lookup; /* inside res.ops->lookup() */
    bool answered;  /* the answer came inside lookup() */
};

static void run(struct spf_eval *e);

static void
answer_cb(void *arg, const struct dns_rr_result *r)
{
    struct spf_eval *e = arg;
    e->pending = NULL;
    spf_check_answer(e->check, r);
    if (e->in_lookup) {
        e->answered = true; /* run() goes on after lookup() returns */
        return;
    }
    run(e);
}

/* Step until finished or waiting for an answer that comes later. */
static void
run(struct spf_eval *e)
{
    while (!spf_check_step(e->check)) {
        const char *name;
        int type;
        void *h;
        spf_check_question(e->check, &name, &type);
        e->answered = false;
        e->in_lookup = true;
        h = e->res.ops->lookup(e->res.ctx, name, type, answer_cb, e);
        e->in_lookup = false;
        if (!e->answered) {
            e->pending = h;
            return;
        }
    }
    event_active(e->deliver, 0, 0);
}

static void
deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct spf_eval *e = arg;
    spf_done_cb cb = e->cb;
    void *cb_arg = e->arg;
    struct spf_outcome out = *spf_check_outcome(e->check);
    (void)fd;
    (void)what;
    /* Freed before the callback: the caller may start another evaluation. */
    spf_check_free(e->check);
    event_free(e->deliver);
    free(e);
    cb(cb_arg, &out);
}

struct spf_eval *
spf_eval_start(struct event_base *base, const struct spf_resolver *res,
    const struct spf_request *req, spf_done_cb cb, void *arg)
{
    struct spf_eval *e;
    struct spf_check *c = spf_check_new(req);
    if (c == NULL)
        return NULL;
    e = xcalloc(1, sizeof(*e));
    e->check = c;
    e->res = *res;
    e->cb = cb;
    e->arg = arg;
    e->deliver = event_new(base, -1, 0, deliver_cb, e);
    if (e->deliver == NULL)
        tern_panic("cannot create SPF event");
    run(e);
    return e;
}

void
spf_eval_cancel(struct spf_eval *e)
{
    if (e == NULL)
        return;
    if (e->pending != NULL)
        e->res.ops->cancel(e->res.ctx, e->pending);
    spf_check_free(e->check);
    event_free(e->deliver);
    free(e);
}

/* ---- the dns module as a resolver ---- */

static void *
dns_res_lookup(void *ctx, const char *name, int type, spf_answer_cb cb, void *arg)
{
    /* dns_lookup_rr always answers later from the loop. */
    return dns_lookup_rr(ctx, name, type, cb, arg);
}

static void
dns_res_cancel(void *ctx, void *handle)
{
    (void)ctx;
    dns_cancel(handle);
}

static const struct spf_resolver_ops dns_res_ops = { dns_res_lookup, dns_res_cancel };

struct spf_resolver
spf_resolver_dns(struct dns *d)
{
    struct spf_resolver r = { &dns_res_ops, d };
    return r;
}

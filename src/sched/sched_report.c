/*
 * The scheduler's reports for the control socket: LIST (one JSON object per
 * message, the `ternctl queue list --json` format of CONTRACT.md) and
 * SUMMARY (one JSON object per destination, like Postfix's qshape).
 */
#include <stdlib.h>
#include <string.h>

#include "sched.h"
#include "sched_int.h"
#include "util/util.h"

static void
json_str(struct buf *out, const char *s)
{
    if (s == NULL) {
        buf_append_str(out, "null");
        return;
    }
    buf_append_char(out, '"');
    buf_append_json(out, s, strlen(s));
    buf_append_char(out, '"');
}

static const char *
rcpt_status(size_t idx, void *arg)
{
    const struct sched_msg *m = arg;
    for (size_t i = 0; i < m->n_units; i++) {
        const struct sched_unit *u = m->units[i];
        if (u->state != U_FLIGHT)
            continue;
        for (size_t k = 0; k < u->n_rcpt; k++) {
            if (u->rcpt[k] == idx)
                return "delivering";
        }
    }
    return NULL;
}

static void
list_one(const void *k, size_t kl, void *v, void *arg)
{
    struct sched_msg *m = v;
    if (!m->deleted)
        spool_env_list_json(m->env, rcpt_status, m, arg);
}

void
sched_list_json(struct sched *s, struct buf *out)
{
    map_each(s->msgs, list_one, out);
}

struct dest_sum {
    const struct sched_dest *d;
    size_t msgs, rcpts;
    int64_t oldest_ms;
};

struct sum_ctx {
    struct dest_sum *v;
    size_t n, cap;
    struct map *idx; /* dest pointer -> index + 1 into v */
};

static struct dest_sum *
sum_slot(struct sum_ctx *c, const struct sched_dest *d)
{
    uintptr_t i = (uintptr_t)map_get(c->idx, &d, sizeof(d));
    if (i != 0)
        return &c->v[i - 1];
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
    }
    memset(&c->v[c->n], 0, sizeof(c->v[0]));
    c->v[c->n].d = d;
    map_put(c->idx, &d, sizeof(d), (void *)(uintptr_t)(c->n + 1));
    return &c->v[c->n++];
}

static void
sum_one(const void *k, size_t kl, void *v, void *arg)
{
    const struct sched_msg *m = v;
    for (size_t i = 0; i < m->n_units; i++) {
        const struct sched_unit *u = m->units[i];
        struct dest_sum *ds;
        if (u->n_rcpt == 0 || m->deleted)
            continue;
        ds = sum_slot(arg, u->dest);
        ds->msgs++;
        ds->rcpts += u->n_rcpt;
        if (ds->oldest_ms == 0 || m->env->arrival_ms < ds->oldest_ms)
            ds->oldest_ms = m->env->arrival_ms;
    }
}

void
sched_summary_json(struct sched *s, struct buf *out)
{
    struct sum_ctx c = { NULL, 0, 0, map_new() };
    map_each(s->msgs, sum_one, &c);
    for (size_t i = 0; i < c.n; i++) {
        buf_append_str(out, "{\"destination\":");
        json_str(out, c.v[i].d->d.key);
        buf_printf(out,
            ",\"messages\":%zu,\"recipients\":%zu,\"oldest\":%lld,\"last_error\":", c.v[i].msgs,
            c.v[i].rcpts, (long long)(c.v[i].oldest_ms / 1000));
        json_str(out, c.v[i].d->last_error);
        buf_append_str(out, "}\n");
    }
    free(c.v);
    map_free(c.idx);
}

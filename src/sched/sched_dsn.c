/*
 * DSNs that are never lost. A recipient whose final result calls for a DSN
 * is written to the spool as RCPT_FAILED_DSN (or RCPT_DELIVERED_DSN for a
 * success notice) and gets a note here; the DSN is made as a new message on
 * a worker thread (reading the original and writing the report are too
 * slow for the loop) from a copy of the envelope, and committed; only when
 * the commit says it is durable are those recipients written as
 * RCPT_FAILED / RCPT_DELIVERED, after which the original may be removed. A
 * message keeps its place in memory while it has notes. A DSN that cannot
 * be made or committed (ENOSPC, EFBIG...) is made again after a retry
 * delay, for as long as it takes; a restart finds the RCPT_*_DSN records
 * and makes it from them. A crash between the DSN's commit and the status
 * record gives a second copy, never none. Stopping waits for the DSNs under
 * way (sched_free), so their originals are brought up to date first.
 * Delay warnings (RFC 3464 "Action: delayed") take the same path for a
 * recipient that stays queued: it is flagged RCPT_F_DELAY_DUE with the
 * deferral that calls for the warning, and RCPT_F_DELAY_SENT once the
 * warning is durable; failures, delays and successes go in separate reports.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "history/history.h"
#include "retry.h"
#include "sched_int.h"
#include "util/log.h"
#include "util/util.h"
#include "util/workq.h"

/* What to write to the original once its DSN is durable: a final state
 * (failed, relayed), or the delay warning's flag (delayed). */
struct dsn_job_rcpt {
    size_t idx;
    enum dsn_action action;
};

struct dsn_job {
    struct workq_item w;     /* first: the worker's item */
    struct sched_link *link; /* a reference */
    struct spool *sp;
    struct config *cfg;          /* a reference, read by the worker */
    struct spool_env *orig;      /* owned copy: what the worker reads */
    struct dsn_rcpt_result *res; /* owned, with owned remote_mta strings */
    struct dsn_job_rcpt *r;      /* owned */
    size_t n;
    int64_t now_ms;              /* wall clock: the report's date */
    char qid[SPOOL_QID_LEN + 1]; /* the original */
    /* made by the worker */
    struct spool_writer *out; /* the DSN, written, not yet committed */
    int err;
};

static void
job_free(struct dsn_job *j)
{
    for (size_t i = 0; i < j->n; i++)
        free((char *)j->res[i].remote_mta);
    free(j->res);
    free(j->r);
    spool_env_free(j->orig);
    config_unref(j->cfg);
    sched_link_unref(j->link);
    free(j);
}

/* ---- notes ---- */

static void
note_fini(struct sched_note *n)
{
    FREE_NULL(&n->remote_mta);
}

void
sched_note_add(struct sched_msg *m, const struct dsn_rcpt_result *dr)
{
    struct sched_note *n;
    size_t sz;
    if (!size_mul(m->n_notes + 1, sizeof(*m->notes), &sz))
        tern_panic("too many DSN notes");
    m->notes = xrealloc(m->notes, sz);
    n = &m->notes[m->n_notes++];
    memset(n, 0, sizeof(*n));
    n->idx = dr->idx;
    n->action = dr->action;
    n->status = dr->status;
    n->remote_mta = dr->remote_mta ? xstrdup(dr->remote_mta) : NULL;
    n->from_remote = dr->from_remote;
}

/* "CODE [X.Y.Z] text" as stored in last_error back into a status. */
static void
status_from_text(const char *t, enum dsn_action act, struct tern_status *st)
{
    const char *p = t ? t : "";
    size_t e;
    memset(st, 0, sizeof(*st));
    if (p[0] >= '2' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9' &&
        (p[3] == ' ' || p[3] == '\0')) {
        st->code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
        p += p[3] ? 4 : 3;
        e = strcspn(p, " ");
        if (e > 0 && e < sizeof(st->esc) && p[0] == t[0] && p[1] == '.') {
            memcpy(st->esc, p, e);
            st->esc[e] = '\0';
            p += e;
            p += *p == ' ';
        }
    } else {
        st->code = act == DSN_ACTION_FAILED ? 550 : act == DSN_ACTION_DELAYED ? 451 : 250;
    }
    snprintf(st->text, sizeof(st->text), "%s", p);
}

void
sched_notes_load(struct sched_msg *m)
{
    const struct spool_env *env = m->env;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        struct dsn_rcpt_result dr;
        /* A delay warning owed to a recipient still queued (its last
         * deferral's reply is in last_error). */
        bool warn = r->state == RCPT_QUEUED &&
                    (r->flags & (RCPT_F_DELAY_DUE | RCPT_F_DELAY_SENT)) == RCPT_F_DELAY_DUE;
        if (r->state != RCPT_FAILED_DSN && r->state != RCPT_DELIVERED_DSN && !warn)
            continue;
        memset(&dr, 0, sizeof(dr));
        dr.idx = i;
        dr.action = warn                          ? DSN_ACTION_DELAYED
                    : r->state == RCPT_FAILED_DSN ? DSN_ACTION_FAILED
                                                  : DSN_ACTION_RELAYED;
        /* The remote host is not in the spool: the report names none and
         * gives the stored status as tern's own diagnostic. */
        status_from_text(r->last_error, dr.action, &dr.status);
        sched_note_add(m, &dr);
    }
}

static void
dsn_unplan(struct sched *s, struct sched_msg *m)
{
    for (struct sched_msg **pp = &s->dsn_retry_head; *pp != NULL; pp = &(*pp)->dsn_retry) {
        if (*pp == m) {
            *pp = m->dsn_retry;
            break;
        }
    }
    m->dsn_retry = NULL;
    m->dsn_retry_ms = 0;
}

void
sched_notes_drop_stale(struct sched_msg *m)
{
    size_t keep = 0;
    for (size_t i = 0; i < m->n_notes; i++) {
        struct sched_note *n = &m->notes[i];
        struct spool_rcpt *r = &m->env->rcpts[n->idx];
        if (n->action == DSN_ACTION_DELAYED && !n->flight && r->state != RCPT_QUEUED) {
            /* Delivered or given up before its warning could be made: the
             * warning would only mislead. */
            r->flags &= ~(uint32_t)RCPT_F_DELAY_DUE;
            note_fini(n);
            continue;
        }
        m->notes[keep++] = *n;
    }
    m->n_notes = keep;
}

void
sched_notes_free(struct sched *s, struct sched_msg *m)
{
    if (m->dsn_retry_ms != 0)
        dsn_unplan(s, m);
    for (size_t i = 0; i < m->n_notes; i++)
        note_fini(&m->notes[i]);
    FREE_NULL(&m->notes);
    m->n_notes = 0;
}

/* ---- retries ---- */

static void
dsn_arm(struct sched *s)
{
    int64_t first = 0, delay;
    struct timeval tv;
    for (struct sched_msg *m = s->dsn_retry_head; m != NULL; m = m->dsn_retry) {
        if (first == 0 || m->dsn_retry_ms < first)
            first = m->dsn_retry_ms;
    }
    if (first == 0) {
        evtimer_del(s->dsn_timer);
        return;
    }
    delay = first - tern_mono_ms();
    if (delay < 0)
        delay = 0;
    tv.tv_sec = delay / 1000;
    tv.tv_usec = (delay % 1000) * 1000;
    evtimer_add(s->dsn_timer, &tv);
}

/* The DSN of m failed: try again after the retry delay of the failures so
 * far (retry_initial doubling up to retry_max). */
static void
dsn_plan(struct sched *s, struct sched_msg *m)
{
    double rnd = (double)(random() % 1000000) / 1000000.0;
    m->dsn_failures++;
    if (m->dsn_retry_ms == 0) {
        m->dsn_retry = s->dsn_retry_head;
        s->dsn_retry_head = m;
    }
    m->dsn_retry_ms = tern_mono_ms() + retry_delay_ms(s->cfg, m->dsn_failures, rnd);
    dsn_arm(s);
}

static void
dsn_due_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sched *s = arg;
    int64_t now = tern_mono_ms();
    struct sched_msg *due = NULL, **pp = &s->dsn_retry_head;
    while (*pp != NULL) {
        struct sched_msg *m = *pp;
        if (m->dsn_retry_ms > now) {
            pp = &m->dsn_retry;
            continue;
        }
        *pp = m->dsn_retry;
        m->dsn_retry_ms = 0;
        m->dsn_retry = due;
        due = m;
    }
    while (due != NULL) {
        struct sched_msg *m = due;
        due = m->dsn_retry;
        m->dsn_retry = NULL;
        sched_dsn_make(s, m);
    }
    dsn_arm(s);
}

/* ---- making one DSN (worker thread) ---- */

static int
dsn_sink_write(void *arg, const void *data, size_t len)
{
    spool_writer_write(arg, data, len);
    return 0;
}

/* The first max bytes of a message's content (owned), for its DSN; NULL
 * (and *len 0) when it cannot be read whole. */
static char *
read_original(struct spool *sp, const struct spool_env *env, size_t max, size_t *len)
{
    struct spool_content *c = spool_content_open(sp, env);
    struct buf b = BUF_INIT;
    const char *p;
    size_t n;
    int r = 0;
    while (b.len < max && (r = spool_content_next(c, &p, &n)) == 1)
        buf_append(&b, p, n < max - b.len ? n : max - b.len);
    spool_content_close(c);
    if (r < 0 || (b.len < max && b.len < env->body_len)) {
        buf_fini(&b);
        *len = 0;
        return NULL;
    }
    *len = b.len;
    return buf_take(&b);
}

/* Write the DSN into a new spool writer (committed on the loop). */
static void
job_run(struct workq_item *wi)
{
    struct dsn_job *j = (struct dsn_job *)wi;
    struct spool_env *denv;
    char *orig;
    size_t olen;
    int rc;
    if (atomic_load(&j->link->cancel)) {
        j->err = ECANCELED; /* stopping: made again at the next start */
        return;
    }
    denv = dsn_envelope(j->orig);
    if (denv == NULL) {
        j->err = EINVAL; /* no DSN to the null sender: dsn_wanted prevents it */
        return;
    }
    j->out = spool_writer_new(j->sp, denv);
    spool_env_free(denv);
    orig = read_original(j->sp, j->orig, DSN_MAX_RETURN, &olen);
    errno = 0;
    rc = dsn_write_message(j->cfg, j->orig, j->res, j->n, orig, olen, spool_writer_qid(j->out),
        j->now_ms, dsn_sink_write, j->out);
    free(orig);
    if (rc != 0) {
        j->err = errno ? errno : EIO;
        spool_writer_abort(j->out);
        j->out = NULL;
    }
}

/* ---- settling a DSN (loop thread) ---- */

/* m when it is still in memory and not deleted. */
static struct sched_msg *
job_msg(struct sched *s, const struct dsn_job *j)
{
    uint64_t q = 0;
    uint32_t h;
    struct sched_ent *e;
    for (size_t i = 0; i < SPOOL_QID_LEN; i++)
        q = q << 4 | (uint64_t)(j->qid[i] <= '9' ? j->qid[i] - '0' : j->qid[i] - 'a' + 10);
    h = sidx_find(&s->idx, q);
    if (h == SCHED_NONE)
        return NULL;
    e = sidx_ent(&s->idx, h);
    return e->m != NULL && !e->m->deleted ? e->m : NULL;
}

static const char *const action_names[] = {
    [DSN_ACTION_FAILED] = "failed",
    [DSN_ACTION_DELAYED] = "delayed",
    [DSN_ACTION_DELIVERED] = "delivered",
    [DSN_ACTION_RELAYED] = "relayed",
};

static void
dsn_log(const struct dsn_job *j, const char *dsn_qid, int err, int64_t retry_ms)
{
    struct logline l;
    log_begin(&l, err == 0 ? LOG_INFO : LOG_ERROR, j->qid, "dsn", err == 0 ? "queued" : "failed");
    if (dsn_qid != NULL)
        log_str(&l, "dsn_qid", dsn_qid);
    log_str(&l, "to", j->orig->sender);
    log_int(&l, "nrcpt", (int64_t)j->n);
    /* One report is of one kind (dsn_make_one). */
    log_str(&l, "action", action_names[j->r[0].action]);
    if (err != 0) {
        log_errno(&l, err);
        if (retry_ms > 0)
            log_int(&l, "retry_in_s", (retry_ms - tern_mono_ms() + 999) / 1000);
    }
    log_end(&l);
    if (err == 0) {
        struct hline h;
        history_begin(&h, j->qid, "dsn");
        history_str(&h, "dsn_id", dsn_qid);
        history_str(&h, "from", j->orig->sender);
        history_str(&h, "recipient", j->orig->sender);
        history_str(&h, "action", action_names[j->r[0].action]);
        history_end(&h);
    }
}

/* Settle the notes of m that job carried: gone when the DSN is durable
 * (the recipients final in the spool), to be made again when not. */
static void
notes_settle(struct sched *s, struct sched_msg *m, const struct dsn_job *j, bool ok)
{
    size_t keep = 0;
    for (size_t i = 0; i < m->n_notes; i++) {
        struct sched_note *n = &m->notes[i];
        struct spool_rcpt *r = &m->env->rcpts[n->idx];
        bool mine = false;
        /* A recipient may have a delay warning and then its final report
         * under way at once: the action tells them apart. */
        for (size_t k = 0; k < j->n && !mine; k++)
            mine = n->flight && j->r[k].idx == n->idx && j->r[k].action == n->action;
        if (mine && ok) {
            if (n->action == DSN_ACTION_DELAYED)
                r->flags = (r->flags & ~(uint32_t)RCPT_F_DELAY_DUE) | RCPT_F_DELAY_SENT;
            else
                r->state = n->action == DSN_ACTION_FAILED ? RCPT_FAILED : RCPT_DELIVERED;
            note_fini(n);
            continue;
        }
        if (mine)
            n->flight = false;
        m->notes[keep++] = *n;
    }
    m->n_notes = keep;
    /* A warning that failed for a recipient that has since ended is not
     * made again. */
    sched_notes_drop_stale(m);
    if (ok) {
        m->dsn_failures = 0;
        spool_update_state(s->sp, m->env);
    } else if (!s->stopping && m->n_notes > 0) {
        dsn_plan(s, m);
    }
}

static void
job_end(struct sched *s, struct dsn_job *j, struct sched_msg *m)
{
    if (m != NULL) {
        if (sched_msg_pending(m) == 0 && m->n_notes == 0 && m->n_flight == 0)
            sched_msg_finish(s, m, "done");
        else
            sched_msg_settle(s, m);
    }
    s->dsn_busy--;
    job_free(j);
}

static void
dsn_committed(uint64_t cb_id, const char *dsn_qid, bool ok, int err, void *arg)
{
    struct dsn_job *j = arg;
    struct sched *s = j->link->s;
    struct sched_msg *m;
    if (s == NULL) {
        job_free(j); /* sched_free gave up waiting: made again at the next start */
        return;
    }
    m = job_msg(s, j);
    if (m != NULL)
        notes_settle(s, m, j, ok);
    dsn_log(j, dsn_qid, ok ? 0 : (err ? err : EIO), m != NULL ? m->dsn_retry_ms : 0);
    job_end(s, j, m);
}

/* The worker made the DSN (or could not): commit it. */
static void
job_made(struct loopq_item *it)
{
    struct dsn_job *j = (struct dsn_job *)((char *)it - offsetof(struct dsn_job, w.done));
    struct sched *s = j->link->s;
    struct sched_msg *m;
    if (s == NULL) {
        /* sched_free gave up waiting: the spool may be gone, the writer
         * is left as it is; the DSN is made again at the next start. */
        job_free(j);
        return;
    }
    if (j->out != NULL) {
        /* Even when stopping: sched_free waits for the commit. */
        spool_writer_commit(j->out, s->inbox, dsn_committed, 0, j);
        return;
    }
    m = job_msg(s, j);
    if (m != NULL)
        notes_settle(s, m, j, false);
    if (j->err != ECANCELED)
        dsn_log(j, NULL, j->err ? j->err : EIO, m != NULL ? m->dsn_retry_ms : 0);
    job_end(s, j, m);
}

static struct dsn_job *
job_new(struct sched *s, const struct sched_msg *m, const struct sched_note *const *notes, size_t n)
{
    struct dsn_job *j = xcalloc(1, sizeof(*j));
    j->w.run = job_run;
    j->w.to = s->inbox;
    j->w.done.fn = job_made;
    j->link = sched_link_ref(s);
    j->sp = s->sp;
    j->cfg = config_ref(s->cfg);
    j->orig = spool_env_dup(m->env);
    j->now_ms = tern_now_ms();
    memcpy(j->qid, m->env->qid, sizeof(j->qid));
    j->res = xcalloc(n, sizeof(*j->res));
    j->r = xcalloc(n, sizeof(*j->r));
    j->n = n;
    for (size_t i = 0; i < n; i++) {
        const struct sched_note *no = notes[i];
        j->res[i].idx = no->idx;
        j->res[i].action = no->action;
        j->res[i].status = no->status;
        j->res[i].remote_mta = no->remote_mta ? xstrdup(no->remote_mta) : NULL;
        j->res[i].from_remote = no->from_remote;
        j->r[i].idx = no->idx;
        j->r[i].action = no->action;
    }
    return j;
}

/* Failures, delay warnings and success notices travel in separate reports. */
static void
dsn_make_one(struct sched *s, struct sched_msg *m, enum dsn_action action)
{
    const struct sched_note **v = xcalloc(m->n_notes ? m->n_notes : 1, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < m->n_notes; i++) {
        if (!m->notes[i].flight && m->notes[i].action == action)
            v[n++] = &m->notes[i];
    }
    if (n > 0) {
        struct dsn_job *j = job_new(s, m, v, n);
        for (size_t i = 0; i < m->n_notes; i++)
            m->notes[i].flight |= m->notes[i].action == action;
        s->dsn_busy++;
        workq_submit(s->wq, &j->w);
    }
    free(v);
}

void
sched_dsn_make(struct sched *s, struct sched_msg *m)
{
    if (m->deleted || m->n_notes == 0 || s->stopping || m->dsn_retry_ms != 0)
        return;
    dsn_make_one(s, m, DSN_ACTION_FAILED);
    dsn_make_one(s, m, DSN_ACTION_DELAYED);
    dsn_make_one(s, m, DSN_ACTION_RELAYED);
}

void
sched_dsn_init(struct sched *s)
{
    s->dsn_timer = evtimer_new(s->base, dsn_due_cb, s);
    if (s->dsn_timer == NULL)
        tern_panic("cannot create the DSN retry timer");
}

void
sched_dsn_fini(struct sched *s)
{
    event_free(s->dsn_timer);
    s->dsn_timer = NULL;
    s->dsn_retry_head = NULL;
}

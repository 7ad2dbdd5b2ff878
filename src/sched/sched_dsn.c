/*
 * DSNs that are never lost. A recipient whose final result calls for a DSN
 * is written to the spool as RCPT_FAILED_DSN (or RCPT_DELIVERED_DSN for a
 * success notice) and gets a note here; the DSN is made as a new message
 * and committed, and only when the commit says it is durable are those
 * recipients written as RCPT_FAILED / RCPT_DELIVERED, after which the
 * original may be removed. A DSN that cannot be made or committed (ENOSPC,
 * EFBIG...) is made again after a retry delay, for as long as it takes; a
 * restart finds the RCPT_*_DSN records and makes it from them. A crash
 * between the DSN's commit and the status record gives a second copy,
 * never none. Commits end on the loop thread, possibly after sched_free
 * (spool_free finishes them): a job reaches the scheduler only through a
 * reference-counted link that sched_dsn_fini empties.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "retry.h"
#include "sched_int.h"
#include "util/log.h"
#include "util/util.h"

struct sched_dsn_link {
    struct sched *s; /* NULL once the scheduler is gone */
    unsigned refs;   /* the scheduler's, and one per DSN being committed */
};

/* What to write to the original's spool file once its DSN is durable. */
struct dsn_job_rcpt {
    size_t idx;
    enum rcpt_state final;
    uint32_t attempts;
    char *last_error; /* owned or NULL */
};

struct dsn_job {
    struct sched_dsn_link *link; /* a reference */
    struct spool *sp;
    char qid[SPOOL_QID_LEN + 1]; /* the original */
    char *to;                    /* owned: the DSN's recipient, for the log */
    struct dsn_job_rcpt *r;      /* owned */
    size_t n;
};

static void
link_unref(struct sched_dsn_link *k)
{
    if (--k->refs == 0)
        free(k);
}

static void
job_free(struct dsn_job *j)
{
    for (size_t i = 0; i < j->n; i++)
        free(j->r[i].last_error);
    free(j->r);
    free(j->to);
    link_unref(j->link);
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
        st->code = act == DSN_ACTION_FAILED ? 550 : 250;
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
        if (r->state != RCPT_FAILED_DSN && r->state != RCPT_DELIVERED_DSN)
            continue;
        memset(&dr, 0, sizeof(dr));
        dr.idx = i;
        dr.action = r->state == RCPT_FAILED_DSN ? DSN_ACTION_FAILED : DSN_ACTION_RELAYED;
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
    delay = first - tern_now_ms();
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
    m->dsn_retry_ms = tern_now_ms() + retry_delay_ms(s->cfg, m->dsn_failures, rnd);
    dsn_arm(s);
}

static void
dsn_due_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sched *s = arg;
    int64_t now = tern_now_ms();
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

/* ---- making one DSN ---- */

struct dsn_sink {
    struct spool_writer *w;
};

static int
dsn_sink_write(void *arg, const void *data, size_t len)
{
    struct dsn_sink *k = arg;
    spool_writer_write(k->w, data, len);
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

/* The DSN of job j is durable: its recipients become final in the spool,
 * also when the scheduler is gone (stopping), so that the next start makes
 * no second DSN. m is the message when the scheduler still has it. */
static void
record_final(struct dsn_job *j, struct sched_msg *m)
{
    struct spool_env *env = m != NULL ? m->env : spool_load(j->sp, j->qid);
    if (env == NULL)
        return; /* removed meanwhile: nothing left to record */
    for (size_t i = 0; i < j->n; i++) {
        if (j->r[i].idx < env->n_rcpts)
            env->rcpts[j->r[i].idx].state = j->r[i].final;
    }
    spool_update_state(j->sp, env);
    if (m == NULL)
        spool_env_free(env);
}

static void
dsn_log(const char *qid, const char *dsn_qid, const char *to, size_t n, int err, int64_t retry_ms)
{
    struct logline l;
    log_begin(&l, err == 0 ? LOG_INFO : LOG_ERROR, qid, "dsn", err == 0 ? "queued" : "failed");
    if (dsn_qid != NULL)
        log_str(&l, "dsn_qid", dsn_qid);
    log_str(&l, "to", to);
    log_int(&l, "nrcpt", (int64_t)n);
    if (err != 0) {
        log_errno(&l, err);
        if (retry_ms > 0)
            log_int(&l, "retry_in_s", (retry_ms - tern_now_ms() + 999) / 1000);
    }
    log_end(&l);
}

/* Settle the notes of m that job carried: gone when the DSN is durable,
 * to be made again when not. */
static void
notes_settle(struct sched *s, struct sched_msg *m, const struct dsn_job *j, bool ok)
{
    size_t keep = 0;
    for (size_t i = 0; i < m->n_notes; i++) {
        struct sched_note *n = &m->notes[i];
        bool mine = false;
        for (size_t k = 0; k < j->n && !mine; k++)
            mine = n->flight && j->r[k].idx == n->idx;
        if (mine && ok) {
            m->env->rcpts[n->idx].state =
                n->action == DSN_ACTION_FAILED ? RCPT_FAILED : RCPT_DELIVERED;
            note_fini(n);
            continue;
        }
        if (mine)
            n->flight = false;
        m->notes[keep++] = *n;
    }
    m->n_notes = keep;
    if (ok)
        m->dsn_failures = 0;
    else
        dsn_plan(s, m);
}

static void
dsn_committed(uint64_t cb_id, const char *dsn_qid, bool ok, int err, void *arg)
{
    struct dsn_job *j = arg;
    struct sched *s = j->link->s;
    struct sched_msg *m = s != NULL ? map_get_str(s->msgs, j->qid) : NULL;
    if (m != NULL && !m->deleted)
        notes_settle(s, m, j, ok);
    if (ok)
        record_final(j, m != NULL && !m->deleted ? m : NULL);
    dsn_log(
        j->qid, dsn_qid, j->to, j->n, ok ? 0 : (err ? err : EIO), m != NULL ? m->dsn_retry_ms : 0);
    if (m != NULL && !m->deleted && sched_msg_pending(m) == 0 && m->n_notes == 0 &&
        m->n_flight == 0)
        sched_msg_finish(s, m, "done");
    job_free(j);
}

static struct dsn_job *
job_new(struct sched *s, const struct sched_msg *m, const struct dsn_rcpt_result *res, size_t n)
{
    struct dsn_job *j = xcalloc(1, sizeof(*j));
    j->link = s->dsn_link;
    j->link->refs++;
    j->sp = s->sp;
    memcpy(j->qid, m->env->qid, sizeof(j->qid));
    j->to = xstrdup(m->env->sender);
    j->r = xcalloc(n, sizeof(*j->r));
    j->n = n;
    for (size_t i = 0; i < n; i++) {
        const struct spool_rcpt *r = &m->env->rcpts[res[i].idx];
        j->r[i].idx = res[i].idx;
        j->r[i].final = res[i].action == DSN_ACTION_FAILED ? RCPT_FAILED : RCPT_DELIVERED;
        j->r[i].attempts = r->attempts;
        j->r[i].last_error = r->last_error ? xstrdup(r->last_error) : NULL;
    }
    return j;
}

/* Write the DSN about res[0..n) and start its commit. 0 started (the
 * outcome comes to dsn_committed), -1 failed at once (errno set). */
static int
dsn_start(struct sched *s, struct sched_msg *m, const struct dsn_rcpt_result *res, size_t n)
{
    struct spool_env *denv = dsn_envelope(m->env);
    struct spool_writer *w;
    struct dsn_sink k;
    char *orig;
    size_t olen;
    int rc, err;
    if (denv == NULL) {
        errno = EINVAL; /* no DSN to the null sender: dsn_wanted prevents it */
        return -1;
    }
    w = spool_writer_new(s->sp, denv);
    orig = read_original(s->sp, m->env, DSN_MAX_RETURN, &olen);
    k.w = w;
    rc = dsn_write_message(
        s->cfg, m->env, res, n, orig, olen, spool_writer_qid(w), tern_now_ms(), dsn_sink_write, &k);
    err = errno;
    free(orig);
    spool_env_free(denv);
    if (rc != 0) {
        spool_writer_abort(w);
        errno = err ? err : EIO;
        return -1;
    }
    spool_writer_commit(w, spool_owner(s->sp), dsn_committed, 0, job_new(s, m, res, n));
    return 0;
}

/* Failures and success notices travel in separate reports. */
static bool
dsn_make_one(struct sched *s, struct sched_msg *m, enum dsn_action action)
{
    struct dsn_rcpt_result *res = xcalloc(m->n_notes ? m->n_notes : 1, sizeof(*res));
    size_t n = 0;
    bool ok = true;
    for (size_t i = 0; i < m->n_notes; i++) {
        const struct sched_note *no = &m->notes[i];
        if (no->flight || no->action != action)
            continue;
        res[n].idx = no->idx;
        res[n].action = no->action;
        res[n].status = no->status;
        res[n].remote_mta = no->remote_mta;
        res[n].from_remote = no->from_remote;
        n++;
    }
    if (n > 0 && dsn_start(s, m, res, n) < 0) {
        int err = errno;
        dsn_plan(s, m);
        dsn_log(m->env->qid, NULL, m->env->sender, n, err, m->dsn_retry_ms);
        ok = false;
    } else if (n > 0) {
        for (size_t i = 0; i < m->n_notes; i++)
            m->notes[i].flight |= m->notes[i].action == action;
    }
    free(res);
    return ok;
}

void
sched_dsn_make(struct sched *s, struct sched_msg *m)
{
    if (m->deleted || m->n_notes == 0)
        return;
    if (dsn_make_one(s, m, DSN_ACTION_FAILED))
        dsn_make_one(s, m, DSN_ACTION_RELAYED);
}

void
sched_dsn_init(struct sched *s)
{
    s->dsn_link = xcalloc(1, sizeof(*s->dsn_link));
    s->dsn_link->s = s;
    s->dsn_link->refs = 1;
    s->dsn_timer = evtimer_new(s->base, dsn_due_cb, s);
    if (s->dsn_timer == NULL)
        tern_panic("cannot create the DSN retry timer");
}

void
sched_dsn_fini(struct sched *s)
{
    s->dsn_link->s = NULL;
    link_unref(s->dsn_link);
    s->dsn_link = NULL;
    event_free(s->dsn_timer);
    s->dsn_timer = NULL;
    s->dsn_retry_head = NULL;
}

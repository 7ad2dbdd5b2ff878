/*
 * The 7-bit conversion of a message for a next hop without 8BITMIME, off
 * the event loop: a work queue with one worker per delivery engine (made
 * with the first job; util/workq.h) reads the queued message from the
 * spool and runs the
 * converter (mime7.h) over it, first to plan the conversion, then, when
 * something must change, to measure the converted form (for SIZE=) and,
 * when the message carries tern's DKIM signatures, to sign that form again
 * (RFC 6376 §5.3: a signature covers the bytes sent; the old one would no
 * longer verify). The client then converts once more while it sends: the
 * same bytes and plan give the same form. Memory stays bounded: one read
 * chunk and the converter's own state. A job is answered on the loop
 * thread through the spool owner's inbox (util/loopq.h), by connection id
 * (d->convs), never through a pointer to a connection that may have closed
 * meanwhile; after delivery_free a job finds an empty link and is dropped.
 */
#include "delivery/delivery_int.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dkim/dkim.h"
#include "proto/data.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/util.h"
#include "util/workq.h"

#define CONV_CHUNK (64 * 1024)

/* What a job finds when it is answered: the delivery engine, or NULL once
 * it stopped. refs (the engine's and one per job) change on the loop
 * thread only; stop is read by the worker between chunks. */
struct conv_link {
    struct delivery *d;
    atomic_bool stop;
    unsigned refs;
};

struct deliv_convw {
    struct workq *q;
    struct conv_link *link;
};

static void
link_unref(struct conv_link *k)
{
    if (--k->refs == 0)
        free(k);
}

void
conv_job_free(struct conv_job *j)
{
    if (j == NULL)
        return;
    if (j->out_fd >= 0)
        close(j->out_fd); /* an unnamed file: it goes with its last descriptor */
    spool_env_free(j->env);
    dkim_signer_free(j->signer);
    mime7_plan_fini(&j->plan);
    buf_fini(&j->prefix);
    buf_fini(&j->out_buf);
    free(j);
}

static bool
stopping(const struct conv_job *j)
{
    return atomic_load_explicit(&j->link->stop, memory_order_relaxed);
}

static void
set_result(struct conv_job *j, enum conv_result r, const char *why)
{
    j->result = r;
    snprintf(j->why, sizeof(j->why), "%s", why);
}

/* Feed the whole message's content to m. 0, or -1 with the job's result
 * set. */
static int
read_through(struct conv_job *j, struct mime7 *m)
{
    struct spool_content *c = spool_content_open(j->sp, j->env);
    const char *p;
    size_t n;
    int r;
    while ((r = spool_content_next(c, &p, &n)) == 1) {
        if (stopping(j)) {
            spool_content_close(c);
            set_result(j, CONV_TEMP, "shutting down");
            return -1;
        }
        if (mime7_feed(m, p, n) < 0)
            break;
    }
    spool_content_close(c);
    if (r < 0) {
        set_result(j, CONV_TEMP, strerror(errno));
        return -1;
    }
    if (mime7_error(m) != NULL || mime7_end(m) < 0) {
        set_result(j, CONV_PERM, mime7_error(m));
        return -1;
    }
    return 0;
}

static void flush_out(struct conv_job *j);

/* The converted form: measured, fed to the new signer, and written
 * dot-stuffed (as it is sent) to the job's file. */
static void
convert_out(const char *p, size_t n, void *arg)
{
    struct conv_job *j = arg;
    j->out_len += n;
    if (j->signer != NULL && !dkim_signer_idle(j->signer))
        dkim_signer_feed(j->signer, p, n);
    smtp_data_stuff(p, n, &j->out_bol, &j->out_buf);
    if (j->out_buf.len >= CONV_CHUNK)
        flush_out(j);
}

/* Write the stuffed output gathered so far to the job's file. */
static void
flush_out(struct conv_job *j)
{
    if (j->out_buf.len > 0 && j->out_err == 0 &&
        fd_write_full(j->out_fd, j->out_buf.data, j->out_buf.len) < 0)
        j->out_err = errno ? errno : EIO;
    j->out_stored += j->out_buf.len;
    buf_reset(&j->out_buf);
}

/* The worker: plan, then convert into the job's file. */
static void
conv_run(struct workq_item *wi)
{
    struct conv_job *j = (struct conv_job *)wi; /* the first member */
    struct mime7 *m = mime7_new(MIME7_SCAN, &j->plan, NULL, NULL);
    int rc;
    if (j->lossy)
        mime7_lossy(m);
    rc = read_through(j, m);
    mime7_free(m);
    if (rc == 0 && !j->plan.needed) {
        set_result(j, CONV_ASIS, "");
        return;
    }
    if (rc != 0)
        return;
    j->out_fd = spool_tmpfile(j->sp);
    if (j->out_fd < 0) {
        set_result(j, CONV_TEMP, strerror(errno));
        return;
    }
    j->out_bol = true;
    m = mime7_new(MIME7_CONVERT, &j->plan, convert_out, j);
    rc = read_through(j, m);
    mime7_free(m);
    if (rc == 0)
        flush_out(j);
    if (rc == 0 && j->out_err != 0) {
        set_result(j, CONV_TEMP, strerror(j->out_err));
        return;
    }
    if (rc == 0) {
        set_result(j, CONV_OK, "");
        if (j->signer != NULL)
            dkim_signer_finish(j->signer, &j->prefix, &j->dres);
    }
}

/* Loop thread: answer the job, unless its connection or the engine is
 * gone. */
static void
conv_done(struct loopq_item *it)
{
    struct conv_job *j = (struct conv_job *)((char *)it - offsetof(struct conv_job, w.done));
    struct conv_link *k = j->link;
    if (k->d != NULL) {
        struct deliv_conn *c = map_del_u64(k->d->convs, j->conn_id);
        if (c != NULL)
            client_conv_done(c, j);
    }
    conv_job_free(j);
    link_unref(k);
}

static struct deliv_convw *
worker_start(void)
{
    struct deliv_convw *w = xcalloc(1, sizeof(*w));
    w->q = workq_new("tern-convert", 1);
    w->link = xcalloc(1, sizeof(*w->link));
    atomic_init(&w->link->stop, false);
    w->link->refs = 1;
    return w;
}

/* A signer for the converted form with the keys and canonicalization of
 * cfg, or NULL when it has no key. */
static struct dkim_signer *
resigner(struct config *cfg)
{
    struct dkim_keyset *ks = config_dkim_keys(cfg);
    int c = cfg->dkim_canonicalization;
    struct dkim_sign_opts o;
    if (dkim_keyset_count(ks) == 0)
        return NULL;
    o.header_canon = c == DKIM_C_RELAXED_RELAXED || c == DKIM_C_RELAXED_SIMPLE ? DKIM_CANON_RELAXED
                                                                               : DKIM_CANON_SIMPLE;
    o.body_canon = c == DKIM_C_RELAXED_RELAXED || c == DKIM_C_SIMPLE_RELAXED ? DKIM_CANON_RELAXED
                                                                             : DKIM_CANON_SIMPLE;
    o.timestamp = tern_now_ms() / 1000;
    return dkim_signer_new(ks, &o);
}

void
deliv_conv_submit(
    struct delivery *d, struct deliv_conn *c, uint64_t job_id, const struct spool_env *env)
{
    struct conv_job *j;
    if (d->convw == NULL) {
        d->convw = worker_start();
        d->convw->link->d = d;
    }
    j = xcalloc(1, sizeof(*j));
    j->w.run = conv_run;
    j->w.to = spool_owner(d->sp);
    j->w.done.fn = conv_done;
    j->link = d->convw->link;
    j->link->refs++;
    j->conn_id = c->id;
    j->job_id = job_id;
    j->sp = d->sp;
    j->env = spool_env_dup(env);
    j->out_fd = -1;
    buf_init(&j->prefix);
    buf_init(&j->out_buf);
    /* Our own signatures (the prefix made at commit) cover the 8-bit form:
     * the converted form is signed again, or sent unsigned. */
    j->resign = env->prefix != NULL;
    j->lossy = env->is_bounce; /* a DSN cannot be bounced: better damaged than lost */
    j->signer = j->resign ? resigner(c->cfg) : NULL;
    map_put_u64(d->convs, c->id, c);
    workq_submit(d->convw->q, &j->w);
}

void
deliv_conv_forget(struct delivery *d, struct deliv_conn *c)
{
    map_del_u64(d->convs, c->id);
}

void
deliv_conv_stop(struct delivery *d)
{
    struct deliv_convw *w = d->convw;
    if (w == NULL)
        return;
    /* A running job stops at its next chunk, queued ones at their first;
     * their answers, posted to the loop, then find no engine. */
    atomic_store(&w->link->stop, true);
    workq_free(w->q);
    w->link->d = NULL;
    link_unref(w->link);
    free(w);
    d->convw = NULL;
}

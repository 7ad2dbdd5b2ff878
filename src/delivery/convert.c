/*
 * The 7-bit conversion of a message for a next hop without 8BITMIME, off
 * the event loop: one worker thread per delivery engine (started with the
 * first job) reads the queued message from its spool file and runs the
 * converter (mime7.h) over it, first to plan the conversion, then, when
 * something must change, to measure the converted form (for SIZE=) and,
 * when the message carries tern's DKIM signatures, to sign that form again
 * (RFC 6376 §5.3: a signature covers the bytes sent; the old one would no
 * longer verify). The client then converts once more while it sends: the
 * same bytes and plan give the same form. Memory stays bounded: one read
 * chunk and the converter's own state. A job is answered on the loop
 * thread, by connection id (d->convs), never through a pointer to a
 * connection that may have closed meanwhile.
 */
#include "delivery/delivery_int.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "dkim/dkim.h"
#include "smtp/data.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/util.h"

#define CONV_CHUNK (64 * 1024)

struct deliv_convw {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct conv_job *wait_head, **wait_tail; /* guarded by mu */
    struct conv_job *done;                   /* guarded by mu */
    bool stop;                               /* guarded by mu; read between chunks too */
    int efd;
    struct event *ev;
};

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
stopping(struct deliv_convw *w)
{
    bool s;
    pthread_mutex_lock(&w->mu);
    s = w->stop;
    pthread_mutex_unlock(&w->mu);
    return s;
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
read_through(struct deliv_convw *w, struct conv_job *j, struct mime7 *m)
{
    struct spool_content *c = spool_content_open(j->sp, j->env);
    const char *p;
    size_t n;
    int r;
    while ((r = spool_content_next(c, &p, &n)) == 1) {
        if (stopping(w)) {
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
    if (smtp_data_stuff(p, n, &j->out_bol, &j->out_buf) < 0)
        tern_panic("cannot grow the conversion buffer");
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

static void
conv_run(struct deliv_convw *w, struct conv_job *j)
{
    struct mime7 *m = mime7_new(MIME7_SCAN, &j->plan, NULL, NULL);
    int rc;
    if (j->lossy)
        mime7_lossy(m);
    rc = read_through(w, j, m);
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
    rc = read_through(w, j, m);
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

static void *
worker_main(void *arg)
{
    struct deliv_convw *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        struct conv_job *j;
        uint64_t one = 1;
        while (!w->stop && w->wait_head == NULL)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop)
            break;
        j = w->wait_head;
        w->wait_head = j->next;
        if (w->wait_head == NULL)
            w->wait_tail = &w->wait_head;
        pthread_mutex_unlock(&w->mu);
        conv_run(w, j);
        pthread_mutex_lock(&w->mu);
        j->next = w->done;
        w->done = j;
        if (write(w->efd, &one, sizeof(one)) < 0) {
            /* the counter cannot overflow here; nothing else can fail */
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Loop thread: answer the finished jobs. */
static void
done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *d = arg;
    struct deliv_convw *w = d->convw;
    struct conv_job *list;
    uint64_t v;
    if (read(w->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        log_simple(LOG_ERROR, "delivery", "eventfd_read_failed", strerror(errno));
    pthread_mutex_lock(&w->mu);
    list = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->mu);
    while (list != NULL) {
        struct conv_job *j = list;
        struct deliv_conn *c = map_del_u64(d->convs, j->conn_id);
        list = j->next;
        if (c != NULL)
            client_conv_done(c, j);
        conv_job_free(j);
    }
}

static struct deliv_convw *
worker_start(struct delivery *d)
{
    struct deliv_convw *w = xcalloc(1, sizeof(*w));
    sigset_t all, old;
    int rc;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->wait_tail = &w->wait_head;
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0)
        tern_panic("eventfd: %s", strerror(errno));
    w->ev = event_new(d->base, w->efd, EV_READ | EV_PERSIST, done_cb, d);
    if (w->ev == NULL || event_add(w->ev, NULL) < 0)
        tern_panic("cannot register the conversion event");
    /* Signals are for the loop thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        tern_panic("conversion thread: %s", strerror(rc));
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
    if (d->convw == NULL)
        d->convw = worker_start(d);
    j = xcalloc(1, sizeof(*j));
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
    pthread_mutex_lock(&d->convw->mu);
    *d->convw->wait_tail = j;
    d->convw->wait_tail = &j->next;
    pthread_cond_signal(&d->convw->cv);
    pthread_mutex_unlock(&d->convw->mu);
}

void
deliv_conv_forget(struct delivery *d, struct deliv_conn *c)
{
    map_del_u64(d->convs, c->id);
}

static void
free_list(struct conv_job *j)
{
    while (j != NULL) {
        struct conv_job *next = j->next;
        conv_job_free(j);
        j = next;
    }
}

void
deliv_conv_stop(struct delivery *d)
{
    struct deliv_convw *w = d->convw;
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true; /* a running job stops at its next chunk */
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    free_list(w->wait_head);
    free_list(w->done);
    event_free(w->ev);
    close(w->efd);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    d->convw = NULL;
}

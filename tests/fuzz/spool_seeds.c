/*
 * Writes a small real spool for the fuzz_spool seeds (tests/fuzz/mkseeds.py
 * runs it): usage `spool_seeds DIR` makes DIR/log/ with two segments. The
 * first holds three messages (a plain one with two recipients, one with a
 * prefix made by a finisher, DSN parameters, SMTPUTF8 and 8BITMIME, and a
 * header-only bounce), STATE records (a deferral with a UTF-8 error, held,
 * a DSN pending) and a DONE. A reopen writes its .idx and starts the second
 * segment, which gets one more message and a STATE.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spool/spool.h"
#include "util/log.h"
#include "util/loopq.h"
#include "util/util.h"

struct world {
    struct event_base *base;
    struct loopq *q;
    int committed, recovered;
    char qids[4][SPOOL_QID_LEN + 1];
};

static void
die(const char *what)
{
    fprintf(stderr, "spool_seeds: %s\n", what);
    exit(1);
}

static void
commit_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct world *w = arg;
    (void)err;
    if (!ok || id >= 4)
        die("commit failed");
    memcpy(w->qids[id], qid, SPOOL_QID_LEN + 1);
    w->committed++;
}

static void
found_fn(const struct spool_entry *v, size_t n, void *arg)
{
    (void)v;
    (void)n;
    (void)arg;
}

static void
done_fn(void *arg, long count)
{
    struct world *w = arg;
    (void)count;
    w->recovered = 1;
}

static void
run_until(struct world *w, int *counter, int want)
{
    for (int i = 0; i < 100000 && *counter < want; i++)
        event_base_loop(w->base, EVLOOP_ONCE);
    if (*counter < want)
        die("timed out");
}

static int
sign(const char *qid, struct spool_content *body, struct buf *prefix, void *arg)
{
    (void)qid;
    (void)body;
    (void)arg;
    buf_append_str(prefix, "DKIM-Signature: v=1; a=ed25519-sha256; d=example.com;\r\n"
                           "\ts=sel; b=AAAA\r\n");
    return 0;
}

static struct spool *
open_spool(struct world *w, const char *dir)
{
    struct buf err = BUF_INIT;
    struct spool *sp = spool_open(dir, w->q, NULL, &err);
    if (sp == NULL)
        die(err.data ? err.data : "spool_open");
    buf_fini(&err);
    w->recovered = 0;
    spool_recover(sp, found_fn, done_fn, w);
    run_until(w, &w->recovered, 1);
    return sp;
}

static void
commit(struct world *w, struct spool *sp, struct spool_env *env, const char *body, bool signed_,
    uint64_t id)
{
    struct spool_writer *wr = spool_writer_new(sp, env);
    int want = w->committed + 1;
    spool_writer_write(wr, body, strlen(body));
    if (signed_)
        spool_writer_set_finisher(wr, sign, NULL, NULL);
    spool_writer_commit(wr, w->q, commit_cb, id, w);
    run_until(w, &w->committed, want);
}

static struct spool_env *
env_new(const char *sender)
{
    struct spool_env *e = xcalloc(1, sizeof(*e));
    e->sender = xstrdup(sender);
    e->helo = xstrdup("client.example");
    e->client_addr = xstrdup("192.0.2.7");
    return e;
}

static void
first_segment(struct world *w, struct spool *sp)
{
    struct spool_env *a = env_new("a@example.com"), *b = env_new("b@example.com");
    struct spool_env *c = env_new("");
    spool_env_add_rcpt(a, "r1@example.net", NULL, 0);
    spool_env_add_rcpt(a, "r2@example.net", "rfc822;r2@example.net", DSN_NOTIFY_FAILURE);
    commit(w, sp, a, "Subject: hi\r\n\r\nhello\r\n.dot\r\n", false, 0);
    b->envid = xstrdup("QQ+2Bid");
    b->ret = DSN_RET_HDRS;
    b->body = BODY_8BITMIME;
    b->smtputf8 = true;
    spool_env_add_rcpt(b, "\xc3\xbc@example.net", NULL, DSN_NOTIFY_SUCCESS | DSN_NOTIFY_DELAY);
    commit(w, sp, b, "Subject: caf\xc3\xa9\r\n\r\nbody\r\n", true, 1);
    c->is_bounce = true;
    spool_env_add_rcpt(c, "postmaster@example.org", NULL, DSN_NOTIFY_NEVER);
    commit(w, sp, c, "Subject: bounce\r\n", false, 2);
    a->rcpts[0].state = RCPT_QUEUED;
    a->rcpts[0].attempts = 2;
    a->rcpts[0].next_try_ms = 1700000600000;
    a->rcpts[0].last_error = xstrdup("451 4.7.1 gr\xc3\xbc\x6e listed, try later");
    a->rcpts[1].state = RCPT_FAILED_DSN;
    a->rcpts[1].attempts = 1;
    a->rcpts[1].last_error = xstrdup("550 5.1.1 no such user");
    spool_update_state(sp, a);
    b->held = true;
    b->rcpts[0].state = RCPT_DELIVERED_DSN;
    spool_update_state(sp, b);
    spool_remove(sp, c->qid);
    spool_env_free(a);
    spool_env_free(b);
    spool_env_free(c);
}

int
main(int argc, char **argv)
{
    struct world w = { 0 };
    struct spool *sp;
    struct spool_env *d;
    if (argc != 2)
        die("usage: spool_seeds DIR");
    log_set_level(LOG_CRIT);
    w.base = event_base_new();
    w.q = loopq_new(w.base);
    if (w.base == NULL || w.q == NULL)
        die("libevent");
    sp = open_spool(&w, argv[1]);
    first_segment(&w, sp);
    spool_free(sp);
    loopq_run(w.q);
    /* Recovery writes the first segment's .idx; new records go to a new
     * segment. */
    sp = open_spool(&w, argv[1]);
    d = env_new("d@example.com");
    spool_env_add_rcpt(d, "r3@example.net", NULL, 0);
    commit(&w, sp, d, "x\r\n", false, 3);
    d->rcpts[0].state = RCPT_DELIVERED;
    d->rcpts[0].attempts = 1;
    d->rcpts[0].last_error = xstrdup("250 2.0.0 ok");
    spool_update_state(sp, d);
    spool_env_free(d);
    spool_free(sp);
    loopq_run(w.q);
    loopq_free(w.q);
    event_base_free(w.base);
    return 0;
}

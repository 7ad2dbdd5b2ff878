/*
 * Unit tests for the thread primitives and the checksum: CRC-32C hardware
 * and table paths agree on every length and alignment; a loop's inbox runs
 * items in post order from many threads; work queues run every item once,
 * complete it on the loop, group items in batches, run the idle function,
 * and finish queued work when freed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <event2/event.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "util/crc32c.h"
#include "util/loopq.h"
#include "util/util.h"
#include "util/workq.h"

static void
test_crc32c_known(void **state)
{
    assert_int_equal(crc32c(0, "123456789", 9), 0xe3069283u);
    assert_int_equal(crc32c_sw(0, "123456789", 9), 0xe3069283u);
    assert_int_equal(crc32c(0, "", 0), 0);
}

static void
test_crc32c_paths_agree(void **state)
{
    unsigned char buf[4096 + 16];
    uint32_t seed = 12345;
    for (size_t i = 0; i < sizeof(buf); i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (unsigned char)(seed >> 16);
    }
    for (size_t off = 0; off < 16; off++) {
        for (size_t n = 0; n < 300; n++)
            assert_int_equal(crc32c(7, buf + off, n), crc32c_sw(7, buf + off, n));
        assert_int_equal(crc32c(0, buf + off, 4096), crc32c_sw(0, buf + off, 4096));
    }
    /* Split anywhere: the same value as in one piece. */
    for (size_t k = 0; k < 200; k += 7)
        assert_int_equal(crc32c(crc32c(0, buf, k), buf + k, 1000 - k), crc32c(0, buf, 1000));
}

/* ---- loopq ---- */

struct seen {
    struct loopq_item it;
    int thread, seq;
    int *order; /* per-thread last seq seen */
    int *count;
};

static void
seen_fn(struct loopq_item *it)
{
    struct seen *s = (struct seen *)it;
    /* In post order per thread. */
    assert_int_equal(s->order[s->thread] + 1, s->seq);
    s->order[s->thread] = s->seq;
    (*s->count)++;
    free(s);
}

struct poster {
    struct loopq *q;
    int thread, n;
    int *order, *count;
};

static void *
poster_main(void *arg)
{
    struct poster *p = arg;
    for (int i = 0; i < p->n; i++) {
        struct seen *s = xcalloc(1, sizeof(*s));
        s->it.fn = seen_fn;
        s->thread = p->thread;
        s->seq = i;
        s->order = p->order;
        s->count = p->count;
        loopq_post(p->q, &s->it);
    }
    return NULL;
}

static void
test_loopq_order(void **state)
{
    struct event_base *base = event_base_new();
    struct loopq *q = loopq_new(base);
    int order[4] = { -1, -1, -1, -1 }, count = 0;
    struct poster p[4];
    pthread_t t[4];
    assert_non_null(q);
    for (int i = 0; i < 4; i++) {
        p[i] = (struct poster){ q, i, 5000, order, &count };
        pthread_create(&t[i], NULL, poster_main, &p[i]);
    }
    while (count < 20000)
        event_base_loop(base, EVLOOP_ONCE);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(count, 20000);
    loopq_free(q);
    event_base_free(base);
}

/* ---- workq ---- */

struct job {
    struct workq_item w;
    atomic_int *ran;
    int *done;
    pthread_t loop_thread;
};

static void
job_run(struct workq_item *it)
{
    struct job *j = (struct job *)it;
    atomic_fetch_add(j->ran, 1);
}

static void
job_done(struct loopq_item *it)
{
    struct job *j = (struct job *)((char *)it - offsetof(struct job, w.done));
    assert_true(pthread_equal(pthread_self(), j->loop_thread));
    (*j->done)++;
    free(j);
}

static struct job *
job_new(struct loopq *q, atomic_int *ran, int *done)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->w.run = job_run;
    j->w.to = q;
    j->w.done.fn = job_done;
    j->ran = ran;
    j->done = done;
    j->loop_thread = pthread_self();
    return j;
}

static void
test_workq_runs_all(void **state)
{
    struct event_base *base = event_base_new();
    struct loopq *q = loopq_new(base);
    struct workq *wq = workq_new("t", 3);
    atomic_int ran = 0;
    int done = 0;
    for (int i = 0; i < 1000; i++)
        workq_submit(wq, &job_new(q, &ran, &done)->w);
    while (done < 1000)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(atomic_load(&ran), 1000);
    assert_int_equal(workq_pending(wq), 0);
    /* Freeing finishes what is queued. */
    for (int i = 0; i < 100; i++)
        workq_submit(wq, &job_new(q, &ran, &done)->w);
    workq_free(wq);
    assert_int_equal(atomic_load(&ran), 1100);
    loopq_run(q);
    assert_int_equal(done, 1100);
    loopq_free(q);
    event_base_free(base);
}

struct batch_ctx {
    atomic_int items, batches, idles;
    pthread_mutex_t gate; /* held by the test to make items pile up */
};

static void
batch_fn(struct workq_item *list, void *arg)
{
    struct batch_ctx *c = arg;
    pthread_mutex_lock(&c->gate);
    pthread_mutex_unlock(&c->gate);
    atomic_fetch_add(&c->batches, 1);
    while (list != NULL) {
        struct workq_item *next = list->next;
        atomic_fetch_add(&c->items, 1);
        workq_done(list);
        list = next;
    }
}

static void
idle_fn(void *arg)
{
    struct batch_ctx *c = arg;
    atomic_fetch_add(&c->idles, 1);
}

/* An item without an inbox may be handed on by its own run: here to a
 * second queue, which completes it on the loop, where it is freed (the
 * spool's signing pool passes a message to the commit thread that way). The
 * first worker must not touch it after run: each run waits until its item
 * is gone, so a worker that still reads it reads freed memory. */
struct relay_job {
    struct workq_item w;
    struct workq *next;
    struct loopq *q;
    atomic_int *gone;
    int *done;
};

static void
relay_second(struct workq_item *it)
{
    (void)it;
}

static void
relay_done(struct loopq_item *it)
{
    struct relay_job *j = (struct relay_job *)((char *)it - offsetof(struct relay_job, w.done));
    atomic_int *gone = j->gone;
    (*j->done)++;
    free(j);
    atomic_store(gone, 1);
}

static void
relay_first(struct workq_item *it)
{
    struct relay_job *j = (struct relay_job *)it;
    atomic_int *gone = j->gone;
    j->w.run = relay_second;
    j->w.to = j->q;
    j->w.done.fn = relay_done;
    workq_submit(j->next, &j->w);
    while (!atomic_load(gone))
        sched_yield();
}

static void
test_workq_hand_on(void **state)
{
    enum { N = 50 };
    struct event_base *base = event_base_new();
    struct loopq *q = loopq_new(base);
    struct workq *first = workq_new("t1", 2), *second = workq_new("t2", 2);
    atomic_int gone[N];
    int done = 0;
    for (int i = 0; i < N; i++) {
        struct relay_job *j = xcalloc(1, sizeof(*j));
        atomic_init(&gone[i], 0);
        j->w.run = relay_first;
        j->next = second;
        j->q = q;
        j->gone = &gone[i];
        j->done = &done;
        workq_submit(first, &j->w);
    }
    while (done < N)
        event_base_loop(base, EVLOOP_ONCE);
    workq_free(first);
    workq_free(second);
    loopq_run(q);
    assert_int_equal(done, N); /* each completed once */
    loopq_free(q);
    event_base_free(base);
}

static void
test_workq_batches(void **state)
{
    struct event_base *base = event_base_new();
    struct loopq *q = loopq_new(base);
    struct batch_ctx c = { 0 };
    atomic_int ran = 0;
    int done = 0;
    pthread_mutex_init(&c.gate, NULL);
    struct workq *wq = workq_new_batch("b", batch_fn, idle_fn, 20, &c);
    pthread_mutex_lock(&c.gate);
    workq_submit(wq, &job_new(q, &ran, &done)->w); /* the worker blocks on the gate */
    for (int i = 0; i < 99; i++)
        workq_submit(wq, &job_new(q, &ran, &done)->w);
    pthread_mutex_unlock(&c.gate);
    while (done < 100)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(atomic_load(&c.items), 100);
    /* The 99 that piled up behind the first went as one batch (at most two
     * if the first batch took more than one). */
    assert_true(atomic_load(&c.batches) <= 3);
    while (atomic_load(&c.idles) == 0) {
        struct timeval tv = { 0, 5000 };
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(atomic_load(&ran), 0); /* batch queues never call run */
    workq_free(wq);
    pthread_mutex_destroy(&c.gate);
    loopq_free(q);
    event_base_free(base);
}

/* The idle function waits idle_ms after the last batch (the spool syncs
 * its lazy records there: run at once, it would sync after every batch). */
struct idle_ctx {
    atomic_int batches, idles;
    atomic_llong batch_ms, idle_ms;
};

static void
idle_batch_fn(struct workq_item *list, void *arg)
{
    struct idle_ctx *c = arg;
    while (list != NULL) {
        struct workq_item *next = list->next;
        workq_done(list);
        list = next;
    }
    atomic_store(&c->batch_ms, (long long)tern_mono_ms());
    atomic_fetch_add(&c->batches, 1);
}

static void
idle_idle_fn(void *arg)
{
    struct idle_ctx *c = arg;
    atomic_store(&c->idle_ms, (long long)tern_mono_ms());
    atomic_fetch_add(&c->idles, 1);
}

static void
test_workq_idle_waits(void **state)
{
    enum { IDLE_MS = 300 };
    struct event_base *base = event_base_new();
    struct loopq *q = loopq_new(base);
    struct idle_ctx c = { 0 };
    atomic_int ran = 0;
    int done = 0;
    struct workq *wq = workq_new_batch("i", idle_batch_fn, idle_idle_fn, IDLE_MS, &c);
    workq_submit(wq, &job_new(q, &ran, &done)->w);
    while (done < 1)
        event_base_loop(base, EVLOOP_ONCE);
    while (atomic_load(&c.idles) == 0)
        sched_yield();
    assert_int_equal(atomic_load(&c.batches), 1);
    assert_true(atomic_load(&c.idle_ms) - atomic_load(&c.batch_ms) >= IDLE_MS);
    workq_free(wq);
    loopq_free(q);
    event_base_free(base);
}

/* A batch function may wait for more items and take them into its batch:
 * they are counted as done with it. */
struct more_ctx {
    struct workq *wq;
    atomic_int batches, taken;
    atomic_int started;
};

static void
more_batch_fn(struct workq_item *list, void *arg)
{
    struct more_ctx *c = arg;
    struct workq_item *more;
    int n = 0;
    atomic_store(&c->started, 1);
    more = workq_batch_more(c->wq, 5 * 1000 * 1000); /* the test submits one more */
    for (struct workq_item *l = list; l != NULL; l = l->next)
        n++;
    for (struct workq_item *l = more; l != NULL; l = l->next)
        n++;
    atomic_fetch_add(&c->taken, n);
    atomic_fetch_add(&c->batches, 1);
    while (list != NULL) {
        struct workq_item *next = list->next;
        workq_done(list);
        list = next;
    }
    while (more != NULL) {
        struct workq_item *next = more->next;
        workq_done(more);
        more = next;
    }
}

static void
test_workq_batch_more(void **state)
{
    struct event_base *base = event_base_new();
    struct loopq *q = loopq_new(base);
    struct more_ctx c = { 0 };
    atomic_int ran = 0;
    int done = 0;
    c.wq = workq_new_batch("m", more_batch_fn, NULL, 0, &c);
    workq_submit(c.wq, &job_new(q, &ran, &done)->w);
    while (!atomic_load(&c.started))
        sched_yield();
    workq_submit(c.wq, &job_new(q, &ran, &done)->w);
    while (done < 2)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(atomic_load(&c.batches), 1);
    assert_int_equal(atomic_load(&c.taken), 2);
    while (workq_pending(c.wq) != 0)
        sched_yield();
    assert_int_equal(atomic_load(&ran), 0);
    workq_free(c.wq);
    loopq_free(q);
    event_base_free(base);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_known),
        cmocka_unit_test(test_crc32c_paths_agree),
        cmocka_unit_test(test_loopq_order),
        cmocka_unit_test(test_workq_runs_all),
        cmocka_unit_test(test_workq_batches),
        cmocka_unit_test(test_workq_hand_on),
        cmocka_unit_test(test_workq_idle_waits),
        cmocka_unit_test(test_workq_batch_more),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

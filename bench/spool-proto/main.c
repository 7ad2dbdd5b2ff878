/*
 * spool-proto: a benchmark harness for spool shapes. N producer threads
 * (SMTP sessions) each make a message, hand it to the store and wait until
 * it is durable; a consumer thread marks every message done a short while
 * after its commit, as a relay that delivers at once. Modes:
 *   run      measure throughput, CPU, device flushes and bytes per message
 *   recover  rebuild the index of live messages of an existing store
 *   crash    kill -9 a writer mid-load, then check what recovery finds
 * Every wait is bounded by --timeout; see README.md.
 */
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct opts g_opts = {
    .producers = 20,
    .size = 2048,
    .count = 20000,
    .warmup = 500,
    .done_delay_ms = 20,
    .seg_bytes = 64ull << 20,
    .timeout_s = 900,
};
static struct timespec g_deadline; /* CLOCK_REALTIME, for timed waits */
static int g_report_fd = -1;       /* crash mode: acks and dones to the parent */

/* ------------------------------------------------------------ helpers */

int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void
die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "spool-proto: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    _exit(2);
}

void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        die("out of memory (%zu bytes)", n);
    return p;
}

void *
xcalloc(size_t n, size_t k)
{
    void *p = calloc(n ? n : 1, k ? k : 1);
    if (p == NULL)
        die("out of memory");
    return p;
}

int
write_full(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

int
pwrite_full(int fd, const void *p, size_t n, uint64_t off)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = pwrite(fd, c, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        c += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

unsigned char *
noise(size_t n)
{
    unsigned char *p = xmalloc(n);
    uint64_t x = (uint64_t)now_ns() | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
    return p;
}

#define ENV_FMT "id=%016" PRIx64 "\nfrom=<bench@example.org>\nrcpt=<r%" PRIu64 "@example.net>\n\n"

bool
env_matches(const unsigned char *p, size_t n, uint64_t id)
{
    char want[20];
    snprintf(want, sizeof(want), "id=%016" PRIx64, id);
    return n >= 19 && memcmp(p, want, 19) == 0;
}

void
stats_add(struct store_stats *st, const char *name, uint64_t v)
{
    if (st->n >= STATS_MAX)
        die("too many stats");
    st->name[st->n] = name;
    st->v[st->n++] = v;
}

void
wait_flag(pthread_mutex_t *mu, pthread_cond_t *cv, const int *flag)
{
    while (!*flag) {
        int rc = pthread_cond_timedwait(cv, mu, &g_deadline);
        if (rc == ETIMEDOUT)
            die("timeout waiting for the store");
    }
}

static void *
watchdog(void *arg)
{
    unsigned s = *(unsigned *)arg;
    struct timespec ts = { .tv_sec = s };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    die("run exceeded --timeout=%u s", s);
}

static void
start_watchdog(void)
{
    pthread_t t;
    clock_gettime(CLOCK_REALTIME, &g_deadline);
    g_deadline.tv_sec += g_opts.timeout_s;
    if (pthread_create(&t, NULL, watchdog, &g_opts.timeout_s) != 0)
        die("pthread_create");
    pthread_detach(t);
}

static const struct store_ops *
find_ops(const char *shape)
{
    static const struct store_ops *all[] = { &files_ops, &log_ops, &lmdb_ops, &rocks_ops };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        size_t k = strlen(all[i]->prefix);
        if (strncmp(shape, all[i]->prefix, k) == 0 && (shape[k] == '\0' || shape[k] == '-'))
            return all[i];
    }
    die("unknown shape %s", shape);
}

/* ------------------------------------------------------ disk counters */

struct disk {
    char name[64];
    uint64_t sectors_written, discards, flushes;
};

/* The block device holding dir, by major:minor in /proc/diskstats. */
static void
disk_find(const char *dir, struct disk *d)
{
    struct stat st;
    char line[512];
    FILE *f;
    d->name[0] = '\0';
    if (stat(dir, &st) < 0 || (f = fopen("/proc/diskstats", "r")) == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned ma, mi;
        char name[64];
        if (sscanf(line, "%u %u %63s", &ma, &mi, name) == 3 && ma == major(st.st_dev) &&
            mi == minor(st.st_dev))
            snprintf(d->name, sizeof(d->name), "%s", name);
    }
    fclose(f);
}

/* After the name (numbering of the kernel's iostats.rst): field 7 is
 * sectors written, 12 discards completed, 16 flush requests completed. */
static void
disk_read(struct disk *d)
{
    char line[512];
    FILE *f = fopen("/proc/diskstats", "r");
    d->sectors_written = d->discards = d->flushes = 0;
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long long v[17];
        char name[64];
        int k = sscanf(line,
            "%*u %*u %63s %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu "
            "%llu %llu %llu",
            name, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10],
            &v[11], &v[12], &v[13], &v[14], &v[15], &v[16]);
        if (k >= 8 && strcmp(name, d->name) == 0) {
            d->sectors_written = v[6];
            d->discards = k >= 13 ? v[11] : 0;
            d->flushes = k >= 17 ? v[15] : 0;
        }
    }
    fclose(f);
}

static double
cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

/* ---------------------------------------------------------- messages */

static unsigned char *g_body;

/* Mail-like text: base64-alphabet lines of 76 characters. */
static void
make_body(size_t n)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint64_t x = 0x9e3779b97f4a7c15ull;
    g_body = xmalloc(n);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        g_body[i] = (i % 78 == 76) ? '\r' : (i % 78 == 77) ? '\n' : (unsigned char)b64[x & 63];
    }
}

static size_t
make_msg(unsigned char *buf, size_t cap, uint64_t id)
{
    int k = snprintf((char *)buf, cap, ENV_FMT, id, id);
    size_t n = (size_t)k;
    if (k < 0 || n + g_opts.size > cap)
        die("message buffer too small");
    memcpy(buf + n, g_body, g_opts.size);
    /* make each body unique, as real ones are */
    memcpy(buf + n, buf, n < g_opts.size ? 19 : 0);
    return n + g_opts.size;
}

/* ------------------------------------------------------------ phases */

struct phase {
    const struct store_ops *ops;
    struct store *st;
    uint64_t base, n;
    atomic_uint_fast64_t next;
    atomic_int failed;
    int64_t *lat;
    /* consumer queue: ids in order of their ack */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t *q_id;
    int64_t *q_t;
    uint64_t q_n;
};

static void
report(char type, uint64_t id)
{
    unsigned char m[9];
    m[0] = (unsigned char)type;
    memcpy(m + 1, &id, 8);
    if (g_report_fd >= 0 && write(g_report_fd, m, sizeof(m)) != (ssize_t)sizeof(m))
        _exit(3);
}

static void *
producer(void *arg)
{
    struct phase *ph = arg;
    size_t cap = g_opts.size + 256;
    unsigned char *buf = xmalloc(cap);
    for (;;) {
        uint64_t i = atomic_fetch_add(&ph->next, 1);
        uint64_t id = ph->base + i;
        size_t len;
        int64_t t0, t1;
        if (i >= ph->n || atomic_load(&ph->failed))
            break;
        len = make_msg(buf, cap, id);
        t0 = now_ns();
        if (ph->ops->put(ph->st, id, buf, len) != 0) {
            fprintf(stderr, "put %" PRIu64 " failed: %s\n", id, strerror(errno));
            atomic_store(&ph->failed, 1);
            break;
        }
        t1 = now_ns();
        ph->lat[i] = t1 - t0;
        report('A', id);
        if (g_opts.done_delay_ms >= 0) {
            pthread_mutex_lock(&ph->mu);
            ph->q_id[ph->q_n] = id;
            ph->q_t[ph->q_n] = t1;
            ph->q_n++;
            pthread_cond_signal(&ph->cv);
            pthread_mutex_unlock(&ph->mu);
        }
    }
    free(buf);
    return NULL;
}

/* Marks each message done done_delay_ms after its ack, in ack order. */
static void *
consumer(void *arg)
{
    struct phase *ph = arg;
    for (uint64_t k = 0; k < ph->n; k++) {
        uint64_t id;
        int64_t due;
        struct timespec ts;
        pthread_mutex_lock(&ph->mu);
        while (ph->q_n <= k) {
            if (atomic_load(&ph->failed)) {
                pthread_mutex_unlock(&ph->mu);
                return NULL;
            }
            if (pthread_cond_timedwait(&ph->cv, &ph->mu, &g_deadline) == ETIMEDOUT)
                die("timeout in consumer");
        }
        id = ph->q_id[k];
        due = ph->q_t[k] + g_opts.done_delay_ms * 1000000;
        pthread_mutex_unlock(&ph->mu);
        ts.tv_sec = due / 1000000000;
        ts.tv_nsec = due % 1000000000;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
        /* reported before it happens: a kill between the two must not look
         * like the loss of an acknowledged message */
        report('D', id);
        ph->ops->done(ph->st, id);
    }
    return NULL;
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Runs n messages with ids from base; returns the time of the last ack. */
static int64_t
run_phase(const struct store_ops *ops, struct store *st, uint64_t base, uint64_t n, int64_t *lat)
{
    struct phase ph = { .ops = ops, .st = st, .base = base, .n = n, .lat = lat };
    pthread_t *prod = xcalloc(g_opts.producers, sizeof(pthread_t)), cons;
    int64_t t_acked;
    pthread_mutex_init(&ph.mu, NULL);
    pthread_cond_init(&ph.cv, NULL);
    if (g_opts.done_delay_ms >= 0) {
        ph.q_id = xmalloc(n * sizeof(uint64_t));
        ph.q_t = xmalloc(n * sizeof(int64_t));
        if (pthread_create(&cons, NULL, consumer, &ph) != 0)
            die("pthread_create");
    }
    for (unsigned i = 0; i < g_opts.producers; i++)
        if (pthread_create(&prod[i], NULL, producer, &ph) != 0)
            die("pthread_create");
    for (unsigned i = 0; i < g_opts.producers; i++)
        pthread_join(prod[i], NULL);
    t_acked = now_ns();
    if (g_opts.done_delay_ms >= 0) {
        pthread_mutex_lock(&ph.mu);
        pthread_cond_signal(&ph.cv);
        pthread_mutex_unlock(&ph.mu);
        pthread_join(cons, NULL);
    }
    if (atomic_load(&ph.failed))
        die("a put failed");
    free(ph.q_id);
    free(ph.q_t);
    free(prod);
    return t_acked;
}

static void
print_stats_delta(const struct store_stats *a, const struct store_stats *b)
{
    for (int i = 2; i < b->n; i++)
        printf(" %s=%" PRIu64, b->name[i], b->v[i] - (i < a->n ? a->v[i] : 0));
}

static int
mode_run(void)
{
    const struct store_ops *ops = find_ops(g_opts.shape);
    struct store_stats s0 = { 0 }, s1 = { 0 };
    struct disk d0, d1;
    struct store *st;
    int64_t *lat, t0, t_acked, t_end, t_close;
    double c0, c1;
    uint64_t n = g_opts.count, syncs, msgs;

    make_body(g_opts.size);
    if (mkdir(g_opts.dir, 0700) < 0 && errno != EEXIST)
        die("mkdir %s: %s", g_opts.dir, strerror(errno));
    st = ops->open(&g_opts);
    if (st == NULL)
        die("cannot open store %s in %s", g_opts.shape, g_opts.dir);
    lat = xcalloc(n + g_opts.warmup, sizeof(int64_t));
    if (g_opts.warmup > 0) {
        run_phase(ops, st, 0, g_opts.warmup, lat);
        ops->quiesce(st);
    }
    disk_find(g_opts.dir, &d0);
    d1 = d0;
    ops->stats(st, &s0);
    disk_read(&d0);
    c0 = cpu_s();
    t0 = now_ns();
    t_acked = run_phase(ops, st, g_opts.warmup, n, lat);
    ops->quiesce(st);
    t_end = now_ns();
    c1 = cpu_s();
    disk_read(&d1);
    ops->stats(st, &s1);
    if (ops->close(st) != 0)
        die("close failed");
    t_close = now_ns();
    qsort(lat, n, sizeof(int64_t), cmp_i64);
    syncs = s1.v[0] - s0.v[0];
    msgs = s1.v[1] - s0.v[1];
    printf("RESULT shape=%s size=%zu count=%" PRIu64 " producers=%u done_delay_ms=%" PRId64
           " disk=%s msgs_per_s=%.1f cpu_ms_per_msg=%.4f flushes_per_msg=%.4f "
           "kb_written_per_msg=%.2f discards_per_msg=%.4f syncs=%" PRIu64
           " avg_batch=%.2f lat_p50_ms=%.3f "
           "lat_p99_ms=%.3f wall_s=%.3f drain_s=%.3f close_ms=%.1f",
        g_opts.shape, g_opts.size, n, g_opts.producers, g_opts.done_delay_ms, d0.name,
        (double)n / ((double)(t_acked - t0) / 1e9), (c1 - c0) * 1000 / (double)n,
        (double)(d1.flushes - d0.flushes) / (double)n,
        (double)(d1.sectors_written - d0.sectors_written) * 512 / 1024 / (double)n,
        (double)(d1.discards - d0.discards) / (double)n, syncs,
        syncs ? (double)msgs / (double)syncs : 0.0, (double)lat[n / 2] / 1e6,
        (double)lat[n * 99 / 100] / 1e6, (double)(t_acked - t0) / 1e9,
        (double)(t_end - t_acked) / 1e9, (double)(t_close - t_end) / 1e6);
    print_stats_delta(&s0, &s1);
    printf("\n");
    free(lat);
    return 0;
}

static void
drop_caches(void)
{
    int fd;
    sync();
    fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd < 0 || write(fd, "3\n", 2) != 2)
        die("cannot drop caches (needs root): %s", strerror(errno));
    close(fd);
}

/* Peak RSS of this process image in KiB (VmHWM: unlike ru_maxrss it does
 * not carry the high-water mark of whatever ran before execve). */
static long
hwm_kb(void)
{
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static int
mode_recover(bool drop)
{
    const struct store_ops *ops = find_ops(g_opts.shape);
    struct recovery r = { 0 };
    int64_t t0, t1;
    double c0, c1;
    if (drop)
        drop_caches();
    c0 = cpu_s();
    t0 = now_ns();
    if (ops->recover(&g_opts, &r) != 0)
        die("recovery failed: %s", r.note);
    t1 = now_ns();
    c1 = cpu_s();
    printf("RECOVER shape=%s cold=%d with_env=%d live=%" PRIu64 " records=%" PRIu64
           " dones=%" PRIu64 " torn=%" PRIu64 " dropped=%" PRIu64 " env_bad=%" PRIu64
           " mb_read=%.1f recover_s=%.3f cpu_s=%.3f peak_rss_mb=%.1f note=%s\n",
        g_opts.shape, drop, g_opts.with_env, r.live, r.records, r.dones, r.torn, r.dropped,
        r.env_bad, (double)r.bytes / 1048576, (double)(t1 - t0) / 1e9, c1 - c0,
        (double)hwm_kb() / 1024, r.note[0] ? r.note : "-");
    idmap_free(r.index);
    return 0;
}

/* ------------------------------------------------------------- crash */

enum { ST_NONE, ST_ACKED, ST_DONE };

static void
read_reports(int fd, unsigned char *state, uint64_t n, unsigned char *carry, size_t *nc)
{
    unsigned char buf[9 * 4096];
    ssize_t k;
    while ((k = read(fd, buf + *nc, sizeof(buf) - *nc)) > 0) {
        size_t have = *nc + (size_t)k, i;
        memcpy(buf, carry, *nc);
        for (i = 0; i + 9 <= have; i += 9) {
            uint64_t id;
            memcpy(&id, buf + i + 1, 8);
            if (id < n)
                state[id] = buf[i] == 'A' ? (state[id] == ST_DONE ? ST_DONE : ST_ACKED) : ST_DONE;
        }
        *nc = have - i;
        memcpy(carry, buf + i, *nc);
    }
}

static int
mode_crash(int64_t kill_after_ms, uint64_t tear, uint64_t garbage)
{
    const struct store_ops *ops = find_ops(g_opts.shape);
    uint64_t n = g_opts.count, acked = 0, done = 0, lost = 0, extra = 0, resurrected = 0;
    unsigned char *state = xcalloc(n, 1), carry[9];
    size_t nc = 0;
    struct recovery r = { 0 };
    int p[2], status;
    pid_t pid;
    if (pipe(p) < 0)
        die("pipe");
    g_opts.warmup = 0;
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(p[0]);
        g_report_fd = p[1];
        /* the parent reads while the child runs, so the pipe never fills for long */
        freopen("/dev/null", "w", stdout);
        exit(mode_run());
    }
    close(p[1]);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    for (int64_t t_end = now_ns() + kill_after_ms * 1000000; now_ns() < t_end;) {
        struct timespec ts = { 0, 2000000 };
        read_reports(p[0], state, n, carry, &nc);
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fcntl(p[0], F_SETFL, 0);
    read_reports(p[0], state, n, carry, &nc);
    close(p[0]);
    if (tear > 0 && (ops->tear == NULL || ops->tear(&g_opts, tear, false) != 0))
        die("tear not possible for %s", g_opts.shape);
    if (garbage > 0 && (ops->tear == NULL || ops->tear(&g_opts, garbage, true) != 0))
        die("garbage not possible for %s", g_opts.shape);
    r.index = idmap_new(n);
    if (ops->recover(&g_opts, &r) != 0)
        die("recovery failed: %s", r.note);
    for (uint64_t id = 0; id < n; id++) {
        bool present = idmap_get(r.index, id, NULL, NULL);
        acked += state[id] != ST_NONE;
        done += state[id] == ST_DONE;
        if (state[id] == ST_ACKED && !present)
            lost++;
        else if (state[id] == ST_NONE && present)
            extra++;
        else if (state[id] == ST_DONE && present)
            resurrected++;
    }
    printf("CRASH shape=%s size=%zu killed_after_ms=%" PRId64 " tear_bytes=%" PRIu64
           " garbage_bytes=%" PRIu64 " child=%s acked=%" PRIu64 " done=%" PRIu64
           " live_after=%" PRIu64 " lost_acked=%" PRIu64 " unacked_present=%" PRIu64
           " done_resurrected=%" PRIu64 " torn=%" PRIu64 " dropped=%" PRIu64 " env_bad=%" PRIu64
           " note=%s\n",
        g_opts.shape, g_opts.size, kill_after_ms, tear, garbage,
        WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL ? "killed" : "exited", acked, done,
        r.live, lost, extra, resurrected, r.torn, r.dropped, r.env_bad, r.note[0] ? r.note : "-");
    idmap_free(r.index);
    free(state);
    return lost > 0 || r.env_bad > 0;
}

/* ------------------------------------------------------------- main */

static void
usage(void)
{
    fprintf(stderr,
        "usage: spool-proto run|recover|crash --shape S --dir D [options]\n"
        "shapes: files log-grow log-falloc log-recycle lmdb rocks-group rocks-batch\n"
        "        rocks-group-blob rocks-batch-blob rocks-group-recycle\n"
        "  --producers N (20) --size BYTES (2048) --count N (20000) --warmup N (500)\n"
        "  --done-delay-ms MS (20; -1: never done) --seg-mb MB (64) --nosync\n"
        "  --timeout S (900)\n"
        "recover: --with-env (read every envelope) --drop-caches (cold start)\n"
        "crash:   --kill-after-ms MS (1500), then before recovery\n"
        "         --tear BYTES (zero the last BYTES of the newest log: loses synced data)\n"
        "         --garbage BYTES (append random BYTES after its end: a torn unsynced write)\n");
    exit(2);
}

static uint64_t
num(const char *s)
{
    char *end;
    unsigned long long v;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        die("bad number %s", s);
    return v;
}

int
main(int argc, char **argv)
{
    static const struct option lo[] = { { "shape", 1, 0, 's' }, { "dir", 1, 0, 'd' },
        { "producers", 1, 0, 'p' }, { "size", 1, 0, 'z' }, { "count", 1, 0, 'n' },
        { "warmup", 1, 0, 'w' }, { "done-delay-ms", 1, 0, 'D' }, { "seg-mb", 1, 0, 'S' },
        { "nosync", 0, 0, 'N' }, { "with-env", 0, 0, 'E' }, { "drop-caches", 0, 0, 'C' },
        { "kill-after-ms", 1, 0, 'K' }, { "tear", 1, 0, 'T' }, { "garbage", 1, 0, 'G' },
        { "timeout", 1, 0, 't' }, { 0, 0, 0, 0 } };
    const char *mode;
    bool drop = false;
    int64_t kill_after = 1500;
    uint64_t tear = 0, garbage = 0;
    int c;
    if (argc < 2)
        usage();
    mode = argv[1];
    optind = 2;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 's':
            g_opts.shape = optarg;
            break;
        case 'd':
            g_opts.dir = optarg;
            break;
        case 'p':
            g_opts.producers = (unsigned)num(optarg);
            break;
        case 'z':
            g_opts.size = num(optarg);
            break;
        case 'n':
            g_opts.count = num(optarg);
            break;
        case 'w':
            g_opts.warmup = num(optarg);
            break;
        case 'D':
            g_opts.done_delay_ms = strcmp(optarg, "-1") == 0 ? -1 : (int64_t)num(optarg);
            break;
        case 'S':
            g_opts.seg_bytes = num(optarg) << 20;
            break;
        case 'N':
            g_opts.nosync = true;
            break;
        case 'E':
            g_opts.with_env = true;
            break;
        case 'C':
            drop = true;
            break;
        case 'K':
            kill_after = (int64_t)num(optarg);
            break;
        case 'T':
            tear = num(optarg);
            break;
        case 'G':
            garbage = num(optarg);
            break;
        case 't':
            g_opts.timeout_s = (unsigned)num(optarg);
            break;
        default:
            usage();
        }
    }
    if (g_opts.shape == NULL || g_opts.dir == NULL || g_opts.producers == 0 || g_opts.count == 0 ||
        g_opts.producers > 1024 || g_opts.timeout_s == 0)
        usage();
    signal(SIGPIPE, SIG_IGN);
    start_watchdog();
    if (strcmp(mode, "run") == 0)
        return mode_run();
    if (strcmp(mode, "recover") == 0)
        return mode_recover(drop);
    if (strcmp(mode, "crash") == 0)
        return mode_crash(kill_after, tear, garbage);
    usage();
}

/*
 * The TLS-RPT recorder and sender on the relay's loop. Recording appends
 * one line per TLS session to today's file in SPOOL/tlsrpt (and the
 * policy, once per domain and process, when it changes). Sending takes
 * each day file to report (renamed to NAME.MS.sending first, so that new
 * events go to a fresh file and a crash leaves it to the next run), and
 * for each domain in it looks up _smtp._tls TXT and hands the gzipped
 * report to every rua: mailto: as a message committed to the spool,
 * https: as a POST (one at a time). The file is removed once all of its
 * domains are done; a report that could not be POSTed is logged, not
 * retried (RFC 8460 §5.2 leaves retries to the sender).
 */
#include "tlsrpt/tlsrpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/event.h>

#include "config/config.h"
#include "dns/dns.h"
#include "smtp/smtp.h"
#include "spool/spool.h"
#include "util/curlev.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/map.h"
#include "util/parse.h"
#include "util/util.h"

#define POST_TIMEOUT_MS (60 * 1000)
#define DAY_S           86400
#define JITTER_S        3600 /* the daily run starts up to this long after 00:00 UTC */
#define FILES_MAX       64   /* day files taken by one run */

enum run_phase { RUN_FILE, RUN_DOMAIN, RUN_RUA, RUN_WAIT };

struct run {
    enum run_phase phase;
    char files[FILES_MAX][64]; /* ".sending" names, oldest first */
    size_t n_files, cur_file;
    struct tlsrpt_day day; /* of files[cur_file] */
    int64_t start_s, end_s;
    size_t cur_dom;
    char rua[TLSRPT_RUA_MAX][TLSRPT_RUA_LEN];
    size_t n_rua, cur_rua;
    struct buf gz;
    char report_id[128];
    struct dns_query *q;
    CURL *easy;
    struct curl_slist *headers, *resolve;
    char post_host[256]; /* of the rua being POSTed to */
    uint16_t post_port;
};

struct tlsrpt {
    struct event_base *base;
    struct dns *dns;
    struct spool *sp;
    struct loopq *inbox;
    struct curlev *cv;
    char *dir;
    bool send;
    char *hostname, *from, *contact, *ca_file;
    struct config *cfg;   /* a reference: the DKIM keys of mailed reports */
    char today[16];       /* the day the map below is about */
    struct map *policies; /* domain -> uint64_t * hash of the policy written today */
    int64_t last_err_ms;  /* the last write error logged */
    struct event *daily;
    struct run *run; /* under way, or NULL */
};

static void run_next(struct tlsrpt *t);

static void
day_name(int64_t s, char *out, size_t cap)
{
    tern_fmt_utc(s, "%Y-%m-%d", out, cap);
}

static uint64_t
fnv(const char *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static void
free_val(const void *k, size_t kl, void *v, void *arg)
{
    (void)k;
    (void)kl;
    (void)arg;
    free(v);
}

/* ---- recording ---- */

static void
log_write_error(struct tlsrpt *t, const char *path, int err)
{
    struct logline l;
    int64_t now = tern_mono_ms();
    if (t->last_err_ms != 0 && now - t->last_err_ms < 60000)
        return;
    t->last_err_ms = now;
    log_begin(&l, LOG_WARN, NULL, "tlsrpt", "not_recorded");
    log_str(&l, "file", path);
    log_errno(&l, err);
    log_end(&l);
}

void
tlsrpt_record(struct tlsrpt *t, const struct tlsrpt_event *ev)
{
    char day[16], path[4200];
    uint64_t h, *seen;
    struct buf b = BUF_INIT;
    struct stat st;
    int fd;
    /* Nothing is kept that would never be sent (tls_rpt = no). */
    if (t == NULL || !t->send || ev->domain == NULL || ev->domain[0] == '\0')
        return;
    day_name(tern_now_ms() / 1000, day, sizeof(day));
    if (strcmp(day, t->today) != 0) {
        map_each(t->policies, free_val, NULL);
        map_free(t->policies);
        t->policies = map_new();
        snprintf(t->today, sizeof(t->today), "%s", day);
    }
    h = fnv(ev->policy ? ev->policy : "", ev->policy ? ev->policy_len : 0,
        14695981039346656037ull + (uint64_t)ev->ptype);
    seen = map_get_str(t->policies, ev->domain);
    if (seen == NULL) {
        if (map_count(t->policies) >= TLSRPT_DOMAINS_MAX)
            return; /* bounded: later domains of the day are not counted */
        seen = xcalloc(1, sizeof(*seen));
        *seen = h + 1; /* differs: the policy line is written below */
        map_put_str(t->policies, ev->domain, seen);
    }
    tlsrpt_line_format(ev, *seen != h, &b);
    *seen = h;
    snprintf(path, sizeof(path), "%s/%s", t->dir, day);
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        log_write_error(t, path, errno);
    } else {
        if (fstat(fd, &st) == 0 && (uint64_t)st.st_size + b.len <= TLSRPT_FILE_MAX &&
            fd_write_full(fd, b.data, b.len) < 0)
            log_write_error(t, path, errno);
        close(fd);
    }
    buf_fini(&b);
}

/* ---- sending ---- */

static void
run_free(struct tlsrpt *t)
{
    struct run *r = t->run;
    if (r == NULL)
        return;
    dns_cancel(r->q);
    if (r->easy != NULL) {
        curlev_remove(t->cv, r->easy);
        curl_easy_cleanup(r->easy);
    }
    curl_slist_free_all(r->headers);
    curl_slist_free_all(r->resolve);
    tlsrpt_day_fini(&r->day);
    buf_fini(&r->gz);
    free(r);
    t->run = NULL;
}

static void
log_report(
    struct tlsrpt *t, const char *event, const char *domain, const char *rua, const char *why)
{
    struct logline l;
    log_begin(&l, why ? LOG_WARN : LOG_INFO, NULL, "tlsrpt", event);
    log_str(&l, "domain", domain);
    if (rua != NULL)
        log_str(&l, "rua", rua);
    log_str(&l, "report_id", t->run->report_id);
    if (why != NULL)
        log_str(&l, "reason", why);
    log_end(&l);
}

static void
mail_committed(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct logline l;
    (void)id;
    (void)arg;
    log_begin(&l, ok ? LOG_INFO : LOG_ERROR, qid, "tlsrpt", ok ? "report_queued" : "report_lost");
    if (!ok)
        log_errno(&l, err);
    log_end(&l);
}

/* mailto:ADDR[?headers]: the address, or -1 when unusable. */
static int
mailto_addr(const char *uri, char *out, size_t cap)
{
    const char *a = uri + 7, *q = strchr(a, '?');
    size_t n = q ? (size_t)(q - a) : strlen(a);
    if (n == 0 || n >= cap || memchr(a, '@', n) == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a[i];
        if (c <= ' ' || c == '<' || c == '>' || c == '%' || c == ',' || c >= 0x7f)
            return -1;
    }
    memcpy(out, a, n);
    out[n] = '\0';
    return 0;
}

static void
send_mail(struct tlsrpt *t, const struct tlsrpt_domain *d, const char *uri)
{
    struct run *r = t->run;
    struct tlsrpt_meta m = { t->hostname, t->contact, r->report_id, r->start_s, r->end_s };
    char to[TLSRPT_RUA_LEN];
    struct spool_env env;
    struct spool_writer *w;
    struct buf msg = BUF_INIT;
    if (mailto_addr(uri, to, sizeof(to)) < 0) {
        log_report(t, "report_failed", d->domain, uri, "not a usable mailto: address");
        return;
    }
    memset(&env, 0, sizeof(env));
    env.sender = t->from;
    env.ret = DSN_RET_UNSET;
    env.body = BODY_7BIT;
    /* A report that cannot be delivered is not bounced: no report loops. */
    env.is_bounce = true;
    spool_env_add_rcpt(&env, to, NULL, 0);
    w = spool_writer_new(t->sp, &env);
    free(env.rcpts[0].addr);
    free(env.rcpts);
    tlsrpt_mail_format(&m, d->domain, t->from, to, r->gz.data, r->gz.len, tern_now_ms(), &msg);
    spool_writer_write(w, msg.data, msg.len);
    buf_fini(&msg);
    /* Signed as the mail of tern's own clients is, when dkim_sign has a
     * key for the From domain (RFC 8460 §5.3 asks reports to be signed). */
    if (t->cfg != NULL)
        smtp_dkim_at_commit(t->cfg, w, 0);
    log_report(t, "report_mailed", d->domain, uri, NULL);
    spool_writer_commit(w, t->inbox, mail_committed, 0, t);
}

static void
post_done(void *arg, CURL *easy, CURLcode res)
{
    struct tlsrpt *t = arg;
    struct run *r = t->run;
    long status = 0;
    char why[200];
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(easy);
    r->easy = NULL;
    curl_slist_free_all(r->headers);
    r->headers = NULL;
    curl_slist_free_all(r->resolve);
    r->resolve = NULL;
    if (res != CURLE_OK)
        snprintf(why, sizeof(why), "%s", curl_easy_strerror(res));
    else if (status < 200 || status > 299)
        snprintf(why, sizeof(why), "HTTP %ld", status);
    log_report(t,
        res == CURLE_OK && status >= 200 && status <= 299 ? "report_posted" : "report_failed",
        r->day.d[r->cur_dom].domain, r->rua[r->cur_rua - 1],
        res == CURLE_OK && status >= 200 && status <= 299 ? NULL : why);
    r->phase = RUN_RUA;
    run_next(t);
}

/* The POST itself, to addresses tern's resolver found (CURLOPT_RESOLVE:
 * libcurl asks no other resolver and starts no thread). */
static void
post_addr_cb(void *arg, const struct dns_addr_result *res)
{
    struct tlsrpt *t = arg;
    struct run *r = t->run;
    const char *uri = r->rua[r->cur_rua - 1];
    char line[600], a[INET6_ADDRSTRLEN];
    const struct sockaddr_storage *ss = &res->addr[0];
    CURL *e;
    r->q = NULL;
    if (res->rc != DNS_OK || res->n == 0) {
        log_report(t, "report_failed", r->day.d[r->cur_dom].domain, uri,
            res->err[0] ? res->err : "no address");
        r->phase = RUN_RUA;
        run_next(t);
        return;
    }
    if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, a, sizeof(a));
    else
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, a, sizeof(a));
    snprintf(line, sizeof(line), ss->ss_family == AF_INET6 ? "%s:%u:[%s]" : "%s:%u:%s",
        r->post_host, (unsigned)r->post_port, a);
    e = curl_easy_init();
    if (e == NULL)
        goto fail;
    r->resolve = curl_slist_append(NULL, line);
    r->headers = curl_slist_append(NULL, "Content-Type: application/tlsrpt+gzip");
    r->headers = curl_slist_append(r->headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, uri);
    curlev_easy_defaults(e, "https", (long)POST_TIMEOUT_MS, t->ca_file);
    curl_easy_setopt(e, CURLOPT_RESOLVE, r->resolve);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->gz.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->gz.len);
    if (curlev_add(t->cv, e, post_done, t) < 0) {
        curl_easy_cleanup(e);
        goto fail;
    }
    r->easy = e;
    return;
fail:
    curl_slist_free_all(r->headers);
    r->headers = NULL;
    log_report(
        t, "report_failed", r->day.d[r->cur_dom].domain, uri, "cannot start an HTTPS request");
    r->phase = RUN_RUA;
    run_next(t);
}

/* A POST of the report (RFC 8460 §5.2): its host resolved first; false
 * when the URI is unusable. */
static bool
send_post(struct tlsrpt *t, const char *uri)
{
    struct run *r = t->run;
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL;
    bool ok = false;
    if (u != NULL && curl_url_set(u, CURLUPART_URL, uri, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
        strlen(host) < sizeof(r->post_host)) {
        uint64_t p = 0;
        ok = parse_u64(port, strlen(port), 65535, &p) == 0 && p > 0;
        snprintf(r->post_host, sizeof(r->post_host), "%s", host);
        r->post_port = (uint16_t)p;
    }
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    if (!ok)
        return false;
    r->q = dns_lookup_addr(t->dns, r->post_host, r->post_port, IPFAM_PREFER_V4, post_addr_cb, t);
    return true;
}

static void
txt_cb(void *arg, const struct dns_rr_result *res)
{
    struct tlsrpt *t = arg;
    struct run *r = t->run;
    const struct tlsrpt_domain *d = &r->day.d[r->cur_dom];
    const char *recs[DNS_RR_MAX];
    size_t lens[DNS_RR_MAX], n = 0;
    char err[200] = "";
    int rc = 1;
    struct buf json = BUF_INIT;
    struct tlsrpt_meta m = { t->hostname, t->contact, r->report_id, r->start_s, r->end_s };
    r->q = NULL;
    if (res->rc == DNS_OK) {
        for (size_t i = 0; i < res->n; i++) {
            recs[n] = res->rr[i].data;
            lens[n++] = res->rr[i].len;
        }
        rc = tlsrpt_txt_parse(recs, lens, n, r->rua, &r->n_rua, err, sizeof(err));
    }
    if (rc != 0) {
        r->n_rua = 0;
        if (rc < 0 || res->rc == DNS_TEMP)
            log_report(t, "no_report", d->domain, NULL, rc < 0 ? err : res->err);
    } else {
        tlsrpt_report_json(&m, d, &json);
        buf_reset(&r->gz);
        if (tlsrpt_gzip(json.data, json.len, &r->gz) < 0) {
            log_report(t, "report_failed", d->domain, NULL, "zlib failed");
            r->n_rua = 0;
        }
    }
    buf_fini(&json);
    r->cur_rua = 0;
    r->phase = RUN_RUA;
    run_next(t);
}

/* Load files[cur_file] into r->day; false when nothing is left. */
static bool
load_file(struct tlsrpt *t)
{
    struct run *r = t->run;
    char path[4400];
    struct buf b = BUF_INIT;
    struct tm tm;
    while (r->cur_file < r->n_files) {
        snprintf(path, sizeof(path), "%s/%s", t->dir, r->files[r->cur_file]);
        if (fs_read_file(path, &b, TLSRPT_FILE_MAX) < 0) {
            /* Gone, unreadable or too large to be ours: reported as empty. */
            struct logline l;
            log_begin(&l, LOG_WARN, NULL, "tlsrpt", "day_file_unreadable");
            log_str(&l, "file", r->files[r->cur_file]);
            log_errno(&l, errno);
            log_end(&l);
            buf_reset(&b);
        }
        tlsrpt_day_fini(&r->day);
        memset(&r->day, 0, sizeof(r->day));
        tlsrpt_day_parse(b.data ? b.data : "", b.len, &r->day);
        buf_fini(&b);
        memset(&tm, 0, sizeof(tm));
        if (strptime(r->files[r->cur_file], "%Y-%m-%d", &tm) == NULL) {
            r->cur_file++;
            continue;
        }
        r->start_s = (int64_t)timegm(&tm);
        r->end_s = r->start_s + DAY_S - 1;
        if (r->end_s > tern_now_ms() / 1000)
            r->end_s = tern_now_ms() / 1000; /* today's counts so far */
        r->cur_dom = 0;
        return true;
    }
    return false;
}

static void
file_done(struct tlsrpt *t)
{
    struct run *r = t->run;
    char path[4400];
    snprintf(path, sizeof(path), "%s/%s", t->dir, r->files[r->cur_file]);
    if (unlink(path) < 0 && errno != ENOENT)
        log_write_error(t, path, errno);
    r->cur_file++;
}

/* The run's steps: a file, each of its domains (TXT lookup), each rua of
 * the domain; the lookup and a POST come back here from the loop. */
static void
run_next(struct tlsrpt *t)
{
    struct run *r = t->run;
    for (;;) {
        switch (r->phase) {
        case RUN_FILE:
            if (!load_file(t)) {
                log_simple(LOG_INFO, "tlsrpt", "run_done", "TLS reports sent");
                run_free(t);
                return;
            }
            r->phase = RUN_DOMAIN;
            break;
        case RUN_DOMAIN: {
            const struct tlsrpt_domain *d;
            char name[300];
            if (r->cur_dom >= r->day.n) {
                file_done(t);
                r->phase = RUN_FILE;
                break;
            }
            d = &r->day.d[r->cur_dom];
            if (!str_is_domain(d->domain, strlen(d->domain), false)) {
                r->cur_dom++; /* a damaged line's name never reaches a header */
                break;
            }
            snprintf(r->report_id, sizeof(r->report_id), "%.10s.%s.%" PRIx64, r->files[r->cur_file],
                d->domain, (uint64_t)tern_now_ms());
            snprintf(name, sizeof(name), "_smtp._tls.%s", d->domain);
            r->phase = RUN_WAIT;
            r->q = dns_lookup_rr(t->dns, name, DNS_RR_TXT, txt_cb, t);
            return;
        }
        case RUN_RUA: {
            const char *uri;
            if (r->cur_rua >= r->n_rua) {
                r->cur_dom++;
                r->phase = RUN_DOMAIN;
                break;
            }
            uri = r->rua[r->cur_rua++];
            if (strncasecmp(uri, "mailto:", 7) == 0) {
                send_mail(t, &r->day.d[r->cur_dom], uri);
                break;
            }
            if (send_post(t, uri)) {
                r->phase = RUN_WAIT;
                return;
            }
            log_report(
                t, "report_failed", r->day.d[r->cur_dom].domain, uri, "not a usable https: URI");
            break;
        }
        case RUN_WAIT:
            return;
        }
    }
}

static int
name_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static bool
is_day_name(const char *s)
{
    static const char pat[] = "dddd-dd-dd";
    for (size_t i = 0; i < sizeof(pat) - 1; i++) {
        if (pat[i] == 'd' ? !(s[i] >= '0' && s[i] <= '9') : s[i] != pat[i])
            return false;
    }
    return true;
}

/* The files to report: day files before today (and today's with today),
 * each renamed to NAME.MS.sending so that new events start a new file;
 * and ".sending" files an earlier run left. */
static size_t
collect_files(struct tlsrpt *t, bool today, char files[][64])
{
    char now[16], from[4400], to[4400];
    size_t n = 0;
    struct dirent *de;
    DIR *dir = opendir(t->dir);
    day_name(tern_now_ms() / 1000, now, sizeof(now));
    if (dir == NULL)
        return 0;
    while ((de = readdir(dir)) != NULL && n < FILES_MAX) {
        size_t len = strlen(de->d_name);
        if (len < 10 || len >= 64 || !is_day_name(de->d_name))
            continue;
        if (len > 10 && len > 8 && strcmp(de->d_name + len - 8, ".sending") == 0) {
            snprintf(files[n++], 64, "%s", de->d_name);
            continue;
        }
        if (len != 10 || (strcmp(de->d_name, now) >= 0 && !(today && strcmp(de->d_name, now) == 0)))
            continue;
        snprintf(from, sizeof(from), "%s/%s", t->dir, de->d_name);
        snprintf(files[n], 64, "%s.%" PRId64 ".sending", de->d_name, tern_now_ms());
        snprintf(to, sizeof(to), "%s/%s", t->dir, files[n]);
        if (rename(from, to) == 0)
            n++;
        else
            log_write_error(t, from, errno);
    }
    closedir(dir);
    qsort(files, n, 64, name_cmp);
    return n;
}

bool
tlsrpt_send_now(struct tlsrpt *t, bool today)
{
    struct run *r;
    if (t->run != NULL)
        return false;
    r = xcalloc(1, sizeof(*r));
    buf_init(&r->gz);
    t->run = r;
    r->n_files = collect_files(t, today, r->files);
    r->cur_file = 0;
    r->phase = RUN_FILE;
    {
        struct logline l;
        log_begin(&l, LOG_INFO, NULL, "tlsrpt", "run_started");
        log_int(&l, "files", (int64_t)r->n_files);
        log_end(&l);
    }
    /* The first file is loaded at once; lookups and POSTs come back
     * through the loop. */
    run_next(t);
    return true;
}

/* ---- the daily run ---- */

static void
daily_arm(struct tlsrpt *t)
{
    int64_t now = tern_now_ms() / 1000, next = (now / DAY_S + 1) * DAY_S;
    uint32_t jitter;
    struct timeval tv;
    /* RFC 8460 §4.1: spread the reports of many senders over the hour. */
    if (getrandom(&jitter, sizeof(jitter), GRND_NONBLOCK) != sizeof(jitter))
        jitter = (uint32_t)tern_mono_us();
    tv.tv_sec = (time_t)(next - now + (int64_t)(jitter % JITTER_S));
    tv.tv_usec = 0;
    evtimer_add(t->daily, &tv);
}

/* With tls_rpt = no, counts left from when it was on are dropped. */
static void
purge_old(struct tlsrpt *t)
{
    char now[16], path[4400];
    struct dirent *de;
    DIR *dir = opendir(t->dir);
    day_name(tern_now_ms() / 1000, now, sizeof(now));
    if (dir == NULL)
        return;
    while ((de = readdir(dir)) != NULL) {
        if (strlen(de->d_name) < 10 || !is_day_name(de->d_name) ||
            strncmp(de->d_name, now, 10) >= 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", t->dir, de->d_name);
        unlink(path);
    }
    closedir(dir);
}

static void
daily_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tlsrpt *t = arg;
    (void)fd;
    (void)what;
    if (t->send)
        tlsrpt_send_now(t, false);
    else
        purge_old(t);
    daily_arm(t);
}

void
tlsrpt_set_opts(struct tlsrpt *t, const struct tlsrpt_opts *o)
{
    char from[300];
    free(t->hostname);
    free(t->from);
    free(t->contact);
    free(t->ca_file);
    t->send = o->send;
    t->hostname = xstrdup(o->hostname);
    if (o->from != NULL && o->from[0] != '\0')
        snprintf(from, sizeof(from), "%s", o->from);
    else
        snprintf(from, sizeof(from), "postmaster@%s", o->hostname);
    t->from = xstrdup(from);
    t->contact = xstrdup(o->contact != NULL && o->contact[0] != '\0' ? o->contact : from);
    t->ca_file = o->ca_file != NULL ? xstrdup(o->ca_file) : NULL;
    config_unref(t->cfg);
    t->cfg = o->cfg != NULL ? config_ref(o->cfg) : NULL;
}

struct tlsrpt *
tlsrpt_new(struct event_base *base, struct dns *dns, struct spool *sp, struct loopq *inbox,
    const struct tlsrpt_opts *o, struct buf *err)
{
    struct tlsrpt *t = xcalloc(1, sizeof(*t));
    size_t n = strlen(o->spool_dir) + sizeof(TLSRPT_DIR) + 1;
    t->base = base;
    t->dns = dns;
    t->sp = sp;
    t->inbox = inbox;
    t->dir = xmalloc(n);
    snprintf(t->dir, n, "%s/%s", o->spool_dir, TLSRPT_DIR);
    t->policies = map_new();
    tlsrpt_set_opts(t, o);
    if (mkdir(t->dir, 0700) < 0 && errno != EEXIST) {
        buf_printf(err, "cannot make %s: %s\n", t->dir, strerror(errno));
        tlsrpt_free(t);
        return NULL;
    }
    t->cv = curlev_new(base, err);
    t->daily = evtimer_new(base, daily_cb, t);
    if (t->cv == NULL || t->daily == NULL) {
        tlsrpt_free(t);
        return NULL;
    }
    daily_arm(t);
    return t;
}

void
tlsrpt_free(struct tlsrpt *t)
{
    if (t == NULL)
        return;
    run_free(t);
    if (t->daily != NULL)
        event_free(t->daily);
    curlev_free(t->cv);
    if (t->policies != NULL) {
        map_each(t->policies, free_val, NULL);
        map_free(t->policies);
    }
    free(t->dir);
    free(t->hostname);
    free(t->from);
    free(t->contact);
    config_unref(t->cfg);
    free(t->ca_file);
    free(t);
}

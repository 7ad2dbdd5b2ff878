/*
 * Reading the journal: files in name (time) order, each read line by line
 * through one fixed buffer, so memory stays bounded whatever the journal
 * holds. Every line came from the network once: a line that is too long,
 * not JSON, or not an event of a known kind is counted and skipped, never
 * trusted. The query and the two output forms of `ternctl trace` are here
 * too, as pure functions.
 */
#include "history/history.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "spool/spool.h"
#include "util/json.h"
#include "util/parse.h"
#include "util/util.h"

#define QUERY_MAX 1000

static const char *
get_str(const struct json *o, const char *key)
{
    return json_str(json_get(o, key));
}

static bool
known_event(const char *ev)
{
    static const char *const names[] = { "received", "deferred", "delivered", "bounced", "expired",
        "held", "released", "deleted", "dsn" };
    for (size_t i = 0; i < TERN_ARRAY_LEN(names); i++) {
        if (strcmp(ev, names[i]) == 0)
            return true;
    }
    return false;
}

int
history_parse_line(const char *line, size_t len, struct history_rec *r, struct json **tree)
{
    const char *id, *ev;
    int64_t v;
    *tree = NULL;
    memset(r, 0, sizeof(*r));
    if (len == 0 || len > HISTORY_LINE_MAX || json_parse(line, len, tree, NULL) < 0)
        return -1;
    id = get_str(*tree, "id");
    ev = get_str(*tree, "event");
    if ((*tree)->type != JSON_OBJECT || json_int(json_get(*tree, "time"), &r->time_ms) < 0 ||
        id == NULL || !spool_qid_valid(id) || ev == NULL || !known_event(ev)) {
        json_free(*tree);
        *tree = NULL;
        return -1;
    }
    memcpy(r->id, id, 17);
    snprintf(r->event, sizeof(r->event), "%s", ev);
    r->recipient = get_str(*tree, "recipient");
    r->relay = get_str(*tree, "relay");
    r->reply = get_str(*tree, "reply");
    r->from = get_str(*tree, "from");
    r->message_id = get_str(*tree, "message_id");
    r->client = get_str(*tree, "client");
    r->helo = get_str(*tree, "helo");
    r->tls = get_str(*tree, "tls");
    r->tls_policy = get_str(*tree, "tls_policy");
    r->tls_verified = get_str(*tree, "tls_verified");
    r->user = get_str(*tree, "user");
    r->dsn_id = get_str(*tree, "dsn_id");
    r->size = json_int(json_get(*tree, "size"), &v) == 0 ? v : -1;
    r->next_s = json_int(json_get(*tree, "next"), &v) == 0 ? v : -1;
    return 0;
}

static int
name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The journal's file names, sorted (time order); NULL-free array owned by
 * the caller. -1 with err when the directory exists but cannot be read. */
static int
list_files(const char *dir, char ***names, size_t *n, struct buf *err)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t cap = 0;
    *names = NULL;
    *n = 0;
    if (d == NULL) {
        if (errno == ENOENT)
            return 0;
        buf_printf(err, "cannot read %s: %s", dir, strerror(errno));
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len != 19 || strcmp(de->d_name + 13, ".jsonl") != 0 ||
            strspn(de->d_name, "0123456789") != 13)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            *names = xrealloc(*names, cap * sizeof(**names));
        }
        (*names)[(*n)++] = xstrdup(de->d_name);
    }
    closedir(d);
    if (*n > 1)
        qsort(*names, *n, sizeof(**names), name_cmp);
    return 0;
}

struct scan {
    int64_t since_ms;
    history_rec_fn fn;
    void *arg;
    struct history_scan_stats *st;
    bool stop;
};

static void
one_line(struct scan *sc, const char *p, size_t n)
{
    struct history_rec r;
    struct json *tree = NULL;
    sc->st->lines++;
    if (history_parse_line(p, n, &r, &tree) < 0) {
        sc->st->corrupt++;
        return;
    }
    if (r.time_ms >= sc->since_ms && sc->fn(&r, sc->arg) != 0)
        sc->stop = true;
    json_free(tree);
}

/* Lines of one file through buf[HISTORY_LINE_MAX + 1]; a longer line is
 * skipped up to its end. */
static void
scan_file(struct scan *sc, int fd, char *buf)
{
    size_t have = 0;
    bool skipping = false;
    for (;;) {
        ssize_t r = read(fd, buf + have, HISTORY_LINE_MAX + 1 - have);
        size_t start = 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        for (;;) {
            char *nl = memchr(buf + start, '\n', have - start);
            if (nl == NULL)
                break;
            if (!skipping && !sc->stop)
                one_line(sc, buf + start, (size_t)(nl - (buf + start)));
            skipping = false;
            start = (size_t)(nl - buf) + 1;
        }
        memmove(buf, buf + start, have - start);
        have -= start;
        if (have > HISTORY_LINE_MAX) {
            if (!skipping) {
                sc->st->lines++;
                sc->st->corrupt++;
            }
            skipping = true;
            have = 0;
        }
        if (sc->stop)
            return;
    }
    /* A last line without its newline: cut by a crash or a full disk. */
    if (have > 0 && !skipping && !sc->stop)
        one_line(sc, buf, have);
}

int
history_scan(const char *spool_dir, int64_t since_ms, history_rec_fn fn, void *arg,
    struct history_scan_stats *st, struct buf *err)
{
    char dir[4096];
    char **names;
    size_t n;
    struct history_scan_stats dummy;
    struct scan sc = { since_ms, fn, arg, st != NULL ? st : &dummy, false };
    char *buf;
    memset(sc.st, 0, sizeof(*sc.st));
    if (snprintf(dir, sizeof(dir), "%s/%s", spool_dir, HISTORY_DIR) >= (int)sizeof(dir)) {
        buf_printf(err, "spool path too long");
        return -1;
    }
    if (list_files(dir, &names, &n, err) < 0)
        return -1;
    buf = xmalloc(HISTORY_LINE_MAX + 1);
    for (size_t i = 0; i < n; i++) {
        char path[4096 + 32];
        int fd;
        uint64_t next_ms;
        /* A file started before since_ms may hold later events; one whose
         * successor started before since_ms cannot. */
        if (i + 1 < n && since_ms > 0 && parse_u64(names[i + 1], 13, UINT64_MAX, &next_ms) == 0 &&
            next_ms < (uint64_t)since_ms)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue; /* expired since it was listed */
        sc.st->files++;
        if (!sc.stop)
            scan_file(&sc, fd, buf);
        close(fd);
    }
    free(buf);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return 0;
}

/* ---- following the journal from a place (the event webhook) ---- */

struct follow {
    history_follow_fn fn;
    void *arg;
    struct history_pos *end;
    bool stop;
};

/* Lines of one file from end->off on, through buf[HISTORY_LINE_MAX + 1];
 * end->off moves past each line read. A cut last line counts as read only
 * when a newer file exists (last == false): the writer never goes back. */
static void
follow_file(struct follow *f, int fd, char *buf, bool last)
{
    size_t have = 0;
    bool skipping = false;
    uint64_t at = f->end->off; /* file offset of buf[have] */
    for (;;) {
        ssize_t r = pread(fd, buf + have, HISTORY_LINE_MAX + 1 - have, (off_t)at);
        size_t start = 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        at += (uint64_t)r;
        for (char *nl; !f->stop && (nl = memchr(buf + start, '\n', have - start)) != NULL;) {
            size_t n = (size_t)(nl - (buf + start));
            struct history_rec rec;
            struct json *tree = NULL;
            struct history_pos after = *f->end;
            after.off = at - have + (size_t)(nl - buf) + 1;
            if (!skipping && history_parse_line(buf + start, n, &rec, &tree) == 0) {
                f->stop = f->fn(&rec, &after, f->arg) != 0;
                json_free(tree);
            }
            if (!f->stop)
                *f->end = after;
            skipping = false;
            start = (size_t)(nl - buf) + 1;
        }
        if (f->stop)
            return;
        memmove(buf, buf + start, have - start);
        have -= start;
        if (have > HISTORY_LINE_MAX) {
            skipping = true; /* an overlong line: dropped up to its newline */
            have = 0;
        }
    }
    if (!last && !f->stop)
        f->end->off = at;
}

int
history_follow(const char *spool_dir, const struct history_pos *from, history_follow_fn fn,
    void *arg, struct history_pos *end, bool *lost, struct buf *err)
{
    char dir[4096];
    char **names;
    size_t n, i = 0, last_full;
    struct follow f = { fn, arg, end, false };
    char *buf;
    *end = *from;
    *lost = false;
    if (snprintf(dir, sizeof(dir), "%s/%s", spool_dir, HISTORY_DIR) >= (int)sizeof(dir)) {
        buf_printf(err, "spool path too long");
        return -1;
    }
    if (list_files(dir, &names, &n, err) < 0)
        return -1;
    while (i < n && strcmp(names[i], from->file) < 0)
        i++;
    if (from->file[0] != '\0' && (i == n || strcmp(names[i], from->file) != 0)) {
        *lost = true; /* expired before all of it was read */
        end->off = 0;
        if (i < n)
            snprintf(end->file, sizeof(end->file), "%s", names[i]);
    } else if (from->file[0] == '\0' && n > 0) {
        snprintf(end->file, sizeof(end->file), "%s", names[0]);
        end->off = 0;
    }
    /* The writer creates the next file before its last write to the old
     * one: a file is complete only once a later one has been written to. */
    last_full = i;
    for (size_t j = n; j-- > i;) {
        char path[4096 + 32];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", dir, names[j]);
        if (stat(path, &st) == 0 && st.st_size > 0) {
            last_full = j;
            break;
        }
    }
    buf = xmalloc(HISTORY_LINE_MAX + 1);
    for (; i <= last_full && i < n && !f.stop; i++) {
        char path[4096 + 32];
        int fd;
        if (strcmp(names[i], end->file) != 0) {
            snprintf(end->file, sizeof(end->file), "%s", names[i]);
            end->off = 0;
        }
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue; /* expired since it was listed */
        follow_file(&f, fd, buf, i == last_full);
        close(fd);
        if (!f.stop && i < last_full) {
            /* Done with this file: the next one is where to start again. */
            snprintf(end->file, sizeof(end->file), "%s", names[i + 1]);
            end->off = 0;
        }
    }
    free(buf);
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return 0;
}

/* ---- the query ---- */

int
history_query_init(struct history_query *q, const char *text)
{
    size_t n = strlen(text);
    memset(q, 0, sizeof(*q));
    if (n >= 2 && text[0] == '<' && text[n - 1] == '>') {
        text++;
        n -= 2;
    }
    if (n == 0 || n > QUERY_MAX)
        return -1;
    q->text = xstrndup(text, n);
    q->is_qid = spool_qid_valid(q->text);
    q->is_addr = strchr(q->text, '@') != NULL;
    return 0;
}

void
history_query_fini(struct history_query *q)
{
    FREE_NULL(&q->text);
}

bool
history_addr_eq(const char *a, const char *b)
{
    const char *at_a = strrchr(a, '@'), *at_b = strrchr(b, '@');
    if (at_a == NULL || at_b == NULL)
        return strcmp(a, b) == 0;
    return at_a - a == at_b - b && memcmp(a, b, (size_t)(at_a - a)) == 0 &&
           strcasecmp(at_a, at_b) == 0;
}

/* A Message-ID as journaled ("<x@y>") against the query (brackets gone). */
static bool
msgid_eq(const char *mid, const char *q)
{
    size_t n = strlen(mid), qn = strlen(q);
    if (n >= 2 && mid[0] == '<' && mid[n - 1] == '>') {
        mid++;
        n -= 2;
    }
    return n == qn && memcmp(mid, q, n) == 0;
}

bool
history_query_match(const struct history_query *q, const struct history_rec *r)
{
    if (q->is_qid)
        return strcmp(r->id, q->text) == 0;
    if (r->message_id != NULL && msgid_eq(r->message_id, q->text))
        return true;
    if (!q->is_addr)
        return false;
    return (r->from != NULL && history_addr_eq(r->from, q->text)) ||
           (r->recipient != NULL && strcmp(r->event, "dsn") != 0 &&
               history_addr_eq(r->recipient, q->text));
}

/* ---- output ---- */

void
history_rec_json(const struct history_rec *r, struct buf *out)
{
    buf_printf(out,
        "{\"time\":%" PRId64 ",\"id\":\"%s\",\"event\":\"%s\",\"recipient\":", r->time_ms / 1000,
        r->id, r->event);
    buf_append_json_str(out, r->recipient);
    buf_append_str(out, ",\"relay\":");
    buf_append_json_str(out, r->relay);
    buf_append_str(out, ",\"reply\":");
    buf_append_json_str(out, r->reply);
    buf_append_str(out, "}\n");
}

static void
text_kv(struct buf *out, const char *key, const char *val, bool brackets)
{
    if (val == NULL)
        return;
    buf_printf(out, " %s=%s", key, brackets ? "<" : "");
    buf_append_safe(out, val, strlen(val), HISTORY_VALUE_MAX);
    if (brackets)
        buf_append_char(out, '>');
}

void
history_rec_text(const struct history_rec *r, struct buf *out)
{
    char ts[32];
    tern_fmt_utc(r->time_ms / 1000, HISTORY_TIME_FMT, ts, sizeof(ts));
    buf_printf(out, "%s  %s  %-9s", ts, r->id, r->event);
    /* Attempts carry the sender too (for the webhook); the timeline names
     * it once, at reception. */
    if (strcmp(r->event, "received") == 0)
        text_kv(out, "from", r->from, true);
    text_kv(out, "to", r->recipient, true);
    text_kv(out, "message_id", r->message_id, false);
    if (r->size >= 0)
        buf_printf(out, " size=%" PRId64, r->size);
    text_kv(out, "client", r->client, false);
    text_kv(out, "helo", r->helo, false);
    text_kv(out, "relay", r->relay, false);
    text_kv(out, "tls", r->tls, false);
    text_kv(out, "tls_policy", r->tls_policy, false);
    text_kv(out, "tls_verified", r->tls_verified, false);
    text_kv(out, "user", r->user, false);
    text_kv(out, "dsn_id", r->dsn_id, false);
    if (r->reply != NULL) {
        buf_append_str(out, " reply=\"");
        buf_append_safe(out, r->reply, strlen(r->reply), HISTORY_VALUE_MAX);
        buf_append_char(out, '"');
    }
    if (r->next_s >= 0) {
        char nx[32];
        tern_fmt_utc(r->next_s, HISTORY_TIME_FMT, nx, sizeof(nx));
        buf_printf(out, " next=\"%s\"", nx);
    }
    buf_append_char(out, '\n');
}

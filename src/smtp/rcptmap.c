/*
 * relay_recipients (see rcptmap.h). A map is one arena of lowercased,
 * NUL-terminated keys and an open-addressing table of their offsets: two
 * allocations whatever the size, about the file's size plus 8 bytes an
 * entry. A list owns the current map under its mutex; a re-read happens
 * outside it (other threads go on with the old map meanwhile).
 */
#include "smtp/rcptmap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/fsutil.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define LOCAL_MAX 64 /* RFC 5321 §4.5.3.1.1 */

struct rcpt_map {
    char *arena; /* keys, each NUL-terminated */
    size_t arena_len;
    uint32_t *tab; /* key offset + 1; 0: empty */
    size_t cap;    /* a power of two, at least twice the entries */
    size_t n;
    uint64_t seed; /* per map: lookups of hostile keys cannot aim at a chain */
};

static uint64_t
key_hash(const struct rcpt_map *m, const char *k, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u ^ m->seed; /* FNV-1a, seeded */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 0x100000001b3u;
    }
    return h ^ (h >> 29);
}

/* The slot of key k, or of the empty slot where it would go. */
static size_t
slot_of(const struct rcpt_map *m, const char *k, size_t n)
{
    size_t i = (size_t)key_hash(m, k, n) & (m->cap - 1);
    while (m->tab[i] != 0) {
        const char *e = m->arena + m->tab[i] - 1;
        if (strncmp(e, k, n) == 0 && e[n] == '\0')
            return i;
        i = (i + 1) & (m->cap - 1);
    }
    return i;
}

static bool
has_key(const struct rcpt_map *m, const char *k, size_t n)
{
    return m->n > 0 && m->tab[slot_of(m, k, n)] != 0;
}

/* One entry's text into its key in out (lowercased, one trailing dot of
 * the domain dropped): NULL, or what is wrong with it. */
static const char *
entry_key(const char *p, size_t n, struct buf *out)
{
    const char *at = NULL;
    size_t local, dom;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= ' ' || c == 0x7f)
            return "control character";
        if (c == '@')
            at = p + i;
    }
    if (at == NULL)
        return "not an address (local@domain) or @domain";
    local = (size_t)(at - p);
    dom = n - local - 1;
    if (dom > 0 && at[dom] == '.')
        dom--;
    if (local > LOCAL_MAX)
        return "local part longer than 64 octets";
    if (dom == 0 || !str_is_domain(at + 1, dom, true))
        return "bad domain";
    buf_reset(out);
    buf_append(out, p, local + 1 + dom);
    for (size_t i = 0; i < out->len; i++) {
        if (out->data[i] >= 'A' && out->data[i] <= 'Z')
            out->data[i] = (char)(out->data[i] - 'A' + 'a');
    }
    return NULL;
}

/* The first field of a line (white space trimmed; the rest ignored), or
 * false for a blank line or a comment. */
static bool
line_field(const char *line, size_t n, const char **f, size_t *fn)
{
    size_t i = 0, j;
    while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
        i++;
    if (i == n || line[i] == '#')
        return false;
    j = i;
    while (j < n && line[j] != ' ' && line[j] != '\t' && line[j] != '\r')
        j++;
    *f = line + i;
    *fn = j - i;
    return true;
}

static void
map_insert(struct rcpt_map *m, size_t off)
{
    const char *k = m->arena + off;
    size_t i = slot_of(m, k, strlen(k));
    if (m->tab[i] != 0)
        return; /* listed twice */
    m->tab[i] = (uint32_t)off + 1;
    m->n++;
}

/* Keys into the arena, line by line: the count, or -1 with err. */
static long
collect(const char *text, size_t len, struct buf *arena, struct buf *err)
{
    struct buf key = BUF_INIT;
    size_t pos = 0, lineno = 0;
    long n = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - (text + pos)) : len - pos;
        const char *f, *why;
        size_t fn;
        lineno++;
        if (ll > RCPTMAP_LINE_MAX) {
            buf_printf(err, "line %zu: longer than %d bytes", lineno, RCPTMAP_LINE_MAX);
            goto fail;
        }
        if (memchr(text + pos, '\0', ll) != NULL) {
            buf_printf(err, "line %zu: NUL byte", lineno);
            goto fail;
        }
        if (line_field(text + pos, ll, &f, &fn)) {
            if ((why = entry_key(f, fn, &key)) != NULL) {
                buf_printf(err, "line %zu: %s", lineno, why);
                goto fail;
            }
            if (++n > RCPTMAP_ENTRIES_MAX) {
                buf_printf(err, "line %zu: more than %d entries", lineno, RCPTMAP_ENTRIES_MAX);
                goto fail;
            }
            buf_append(arena, key.data, key.len);
            buf_append_char(arena, '\0');
        }
        pos += ll + 1;
    }
    buf_fini(&key);
    return n;
fail:
    buf_fini(&key);
    return -1;
}

struct rcpt_map *
rcpt_map_parse(const char *text, size_t len, struct buf *err)
{
    struct buf arena = BUF_INIT;
    struct rcpt_map *m;
    long n;
    size_t cap = 16;
    if (len > RCPTMAP_FILE_MAX) {
        buf_printf(err, "larger than %u bytes", RCPTMAP_FILE_MAX);
        return NULL;
    }
    n = collect(text, len, &arena, err);
    if (n < 0) {
        buf_fini(&arena);
        return NULL;
    }
    while (cap < (size_t)n * 2)
        cap *= 2;
    m = xcalloc(1, sizeof(*m));
    m->arena_len = arena.len;
    m->arena = arena.len > 0 ? buf_take(&arena) : NULL;
    buf_fini(&arena);
    m->cap = cap;
    m->tab = xcalloc(cap, sizeof(*m->tab));
    if (getrandom(&m->seed, sizeof(m->seed), GRND_NONBLOCK) != sizeof(m->seed))
        m->seed = (uint64_t)tern_mono_ms() * 0x9e3779b97f4a7c15u;
    for (size_t off = 0; off < m->arena_len; off += strlen(m->arena + off) + 1)
        map_insert(m, off);
    return m;
}

void
rcpt_map_free(struct rcpt_map *m)
{
    if (m == NULL)
        return;
    free(m->arena);
    free(m->tab);
    free(m);
}

size_t
rcpt_map_count(const struct rcpt_map *m)
{
    return m->n;
}

size_t
rcpt_map_memory(const struct rcpt_map *m)
{
    return sizeof(*m) + m->arena_len + m->cap * sizeof(*m->tab);
}

bool
rcpt_map_has(const struct rcpt_map *m, const char *addr)
{
    char key[LOCAL_MAX * 4 + 256 + 2]; /* a quoted local part and a domain, with room */
    size_t n = strlen(addr);
    const char *at;
    if (n == 0 || n >= sizeof(key))
        return false; /* nothing that long is listed */
    for (size_t i = 0; i < n; i++)
        key[i] = addr[i] >= 'A' && addr[i] <= 'Z' ? (char)(addr[i] - 'A' + 'a') : addr[i];
    key[n] = '\0';
    if (n > 1 && key[n - 1] == '.' && key[n - 2] != '@')
        key[--n] = '\0'; /* one trailing dot of the domain: the same domain */
    at = strrchr(key, '@');
    if (at == NULL)
        return false;
    return has_key(m, key, n) || has_key(m, at, n - (size_t)(at - key));
}

/* ---- the file ---- */

struct rcpt_list {
    pthread_mutex_t mu;
    char *path;           /* NULL: no list */
    struct rcpt_map *map; /* what is in use */
    /* The file as last looked at (read, or found broken) */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    bool missing;      /* the last look found no file */
    int64_t looked_ms; /* monotonic */
    bool busy;         /* a re-read is under way (outside mu) */
};

struct rcpt_list *
rcpt_list_new(void)
{
    struct rcpt_list *l = xcalloc(1, sizeof(*l));
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void
rcpt_list_free(struct rcpt_list *l)
{
    if (l == NULL)
        return;
    rcpt_map_free(l->map);
    free(l->path);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static bool
same_file(const struct rcpt_list *l, const struct stat *st)
{
    return !l->missing && st->st_dev == l->dev && st->st_ino == l->ino && st->st_size == l->size &&
           st->st_mtim.tv_sec == l->mtime.tv_sec && st->st_mtim.tv_nsec == l->mtime.tv_nsec;
}

static void
note_file(struct rcpt_list *l, const struct stat *st)
{
    l->missing = false;
    l->dev = st->st_dev;
    l->ino = st->st_ino;
    l->size = st->st_size;
    l->mtime = st->st_mtim;
}

/* Open, check (trusted for the user uid; for gid's members and others
 * readable too when check_read) and read path: the map, or NULL with err.
 * *st gets what was read. */
static struct rcpt_map *
read_map(const char *path, uid_t uid, gid_t gid, bool check_read, struct stat *st, struct buf *err)
{
    static const struct fs_private rule = { S_IFREG, S_IWGRP | S_IWOTH, true, true };
    struct buf why = BUF_INIT, text = BUF_INIT;
    struct rcpt_map *m = NULL;
    enum fs_trust t;
    ssize_t k;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0 || fstat(fd, st) < 0) {
        buf_printf(err, "relay_recipients %s: cannot read: %s\n", path, strerror(errno));
        goto out;
    }
    if ((t = fs_check_private_as(st, &rule, uid, &why)) != FS_TRUSTED) {
        buf_printf(err, "relay_recipients %s: %s%s\n", path, why.data,
            t == FS_BAD_MODE    ? " (chmod 644 it)"
            : t == FS_BAD_OWNER ? " (chown it to root)"
                                : "");
        goto out;
    }
    if (check_read && !(st->st_uid == uid && (st->st_mode & S_IRUSR)) &&
        !(st->st_gid == gid && (st->st_mode & S_IRGRP)) && !(st->st_mode & S_IROTH)) {
        buf_printf(err,
            "relay_recipients %s: not readable by uid %lu that the relay runs as "
            "(chmod 644 it)\n",
            path, (unsigned long)uid);
        goto out;
    }
    if ((uint64_t)st->st_size > RCPTMAP_FILE_MAX) {
        buf_printf(err, "relay_recipients %s: larger than %u bytes\n", path, RCPTMAP_FILE_MAX);
        goto out;
    }
    buf_reserve(&text, (size_t)st->st_size + 1);
    k = fd_pread_full(fd, text.data, (size_t)st->st_size, 0);
    if (k < 0) {
        buf_printf(err, "relay_recipients %s: cannot read: %s\n", path, strerror(errno));
        goto out;
    }
    text.len = (size_t)k;
    buf_reset(&why);
    m = rcpt_map_parse(text.data, text.len, &why);
    if (m == NULL)
        buf_printf(err, "relay_recipients %s: %s\n", path, why.data);
out:
    if (fd >= 0)
        close(fd); /* read-only: nothing to flush */
    buf_fini(&why);
    buf_fini(&text);
    return m;
}

static void
log_loaded(const char *path, const struct rcpt_map *m)
{
    struct logline l;
    log_begin(&l, LOG_INFO, NULL, "smtp", "relay_recipients_loaded");
    log_str(&l, "file", path);
    log_int(&l, "entries", (int64_t)rcpt_map_count(m));
    log_int(&l, "memory", (int64_t)rcpt_map_memory(m));
    log_end(&l);
}

int
rcpt_list_load(struct rcpt_list *l, const char *path, struct buf *err)
{
    struct rcpt_map *m = NULL, *old;
    struct stat st;
    if (path != NULL) {
        m = read_map(path, geteuid(), getegid(), false, &st, err);
        if (m == NULL)
            return -1;
        log_loaded(path, m);
    }
    pthread_mutex_lock(&l->mu);
    old = l->map;
    l->map = m;
    free(l->path);
    l->path = path != NULL ? xstrdup(path) : NULL;
    if (m != NULL)
        note_file(l, &st);
    l->looked_ms = tern_mono_ms();
    pthread_mutex_unlock(&l->mu);
    rcpt_map_free(old);
    return 0;
}

/* Read l's file again (l->busy set by the caller, mu not held); seen: the
 * file as the caller found it changed. */
static void
reread(struct rcpt_list *l, const char *path, const struct stat *seen)
{
    struct buf err = BUF_INIT;
    struct stat st = *seen;
    struct rcpt_map *m = read_map(path, geteuid(), getegid(), false, &st, &err), *old = NULL;
    struct logline lg;
    if (m != NULL) {
        log_loaded(path, m);
    } else {
        log_begin(&lg, LOG_ERROR, NULL, "smtp", "relay_recipients_not_loaded");
        log_str(&lg, "file", path);
        log_strn(&lg, "detail", err.data, err.len > 0 ? err.len - 1 : 0);
        log_str(&lg, "kept", "the previous list");
        log_end(&lg);
    }
    pthread_mutex_lock(&l->mu);
    if (l->path != NULL && strcmp(l->path, path) == 0) {
        if (m != NULL) {
            old = l->map;
            l->map = m;
            m = NULL;
        }
        /* A broken file is not read again (nor logged again) until it
         * changes. */
        note_file(l, &st);
    }
    l->busy = false;
    pthread_mutex_unlock(&l->mu);
    rcpt_map_free(old);
    rcpt_map_free(m); /* a load for another path meanwhile won */
    buf_fini(&err);
}

bool
rcpt_list_accepts(struct rcpt_list *l, const char *addr)
{
    bool ok;
    int64_t now = tern_mono_ms();
    pthread_mutex_lock(&l->mu);
    if (l->path != NULL && !l->busy && now - l->looked_ms >= RCPTMAP_RECHECK_MS) {
        struct stat st;
        char *path = NULL;
        l->looked_ms = now;
        if (stat(l->path, &st) < 0) {
            if (!l->missing) {
                struct logline lg;
                log_begin(&lg, LOG_ERROR, NULL, "smtp", "relay_recipients_not_loaded");
                log_str(&lg, "file", l->path);
                log_errno(&lg, errno);
                log_str(&lg, "kept", "the previous list");
                log_end(&lg);
            }
            l->missing = true;
        } else if (!same_file(l, &st)) {
            l->busy = true;
            path = xstrdup(l->path);
        }
        if (path != NULL) {
            pthread_mutex_unlock(&l->mu);
            reread(l, path, &st);
            free(path);
            pthread_mutex_lock(&l->mu);
        }
    }
    ok = l->path == NULL || (l->map != NULL && rcpt_map_has(l->map, addr));
    pthread_mutex_unlock(&l->mu);
    return ok;
}

int
rcpt_list_check(const char *path, uid_t uid, gid_t gid, struct buf *err)
{
    struct stat st;
    struct rcpt_map *m = read_map(path, uid, gid, true, &st, err);
    if (m == NULL)
        return -1;
    rcpt_map_free(m);
    return 0;
}

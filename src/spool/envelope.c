/*
 * Part A texts of spool records: the envelope of a MSG record and the state
 * snapshot of a STATE record, as "<tag> <value>...\n" lines. Values are
 * %XX-escaped so no CR, LF, NUL or space appears raw; a lone "-" stands for
 * an absent (NULL) value. Every parser here takes (ptr, len) from a hostile
 * file and bounds everything; the record CRC is checked before these run.
 */
#include "spool/spool_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/parse.h"
#include "util/util.h"

/* --- escaping --- */

static bool
esc_needed(unsigned char c)
{
    return c < 0x21 || c == '%' || c == 0x7f;
}

void
spool_esc(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t run = 0;
    if (n == 1 && s[0] == '-') {
        buf_append_str(b, "%2D"); /* "-" alone means NULL */
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[3];
        if (!esc_needed(c))
            continue;
        buf_append(b, s + run, i - run);
        e[0] = '%';
        e[1] = hex[c >> 4];
        e[2] = hex[c & 15];
        buf_append(b, e, 3);
        run = i + 1;
    }
    buf_append(b, s + run, n - run);
}

static void
esc_opt(struct buf *b, const char *s)
{
    if (s == NULL)
        buf_append_char(b, '-');
    else
        spool_esc(b, s, strlen(s));
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int
spool_unesc(const char *p, size_t n, char **out)
{
    char *r = xmalloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '%') {
            int hi, lo;
            if (n - i < 3 || (hi = hexval(p[i + 1])) < 0 || (lo = hexval(p[i + 2])) < 0)
                goto bad;
            c = (unsigned char)(hi << 4 | lo);
            if (c == 0)
                goto bad;
            i += 2;
        } else if (esc_needed(c)) {
            goto bad;
        }
        r[o++] = (char)c;
    }
    r[o] = '\0';
    *out = r;
    return 0;
bad:
    free(r);
    return -1;
}

/* Optional value: "-" is NULL. */
static int
unesc_opt(const char *p, size_t n, char **out)
{
    if (n == 1 && p[0] == '-') {
        *out = NULL;
        return 0;
    }
    return spool_unesc(p, n, out);
}

/* --- envelope helpers --- */

/* Recipient arrays are allocated with a power-of-two capacity so that
 * spool_env_add_rcpt can grow them without a stored capacity. */
static size_t
rcpt_cap(size_t n)
{
    size_t c = 1;
    while (c < n) {
        TERN_ASSERT(c <= SIZE_MAX / 2);
        c *= 2;
    }
    return c;
}

static void
rcpt_fini(struct spool_rcpt *r)
{
    FREE_NULL(&r->addr);
    FREE_NULL(&r->orcpt);
    FREE_NULL(&r->last_error);
}

static void
attempts_free(struct spool_env *env)
{
    for (size_t i = 0; i < env->n_attempts; i++) {
        free(env->attempts[i].relay);
        free(env->attempts[i].reply);
    }
    FREE_NULL(&env->attempts);
    env->n_attempts = 0;
}

const char *
spool_attempt_ev_name(enum spool_attempt_ev ev)
{
    static const char *const names[] = { "deferred", "delivered", "bounced", "expired" };
    return (size_t)ev < TERN_ARRAY_LEN(names) ? names[ev] : NULL;
}

/* Keep at most SPOOL_ATTEMPT_TEXT_MAX bytes of s, not cutting a UTF-8
 * sequence: every state record carries every attempt kept (the whole of
 * the last reply is the recipient's last_error). */
static char *
dup_capped(const char *s)
{
    size_t n;
    char *d;
    if (s == NULL)
        return NULL;
    n = strlen(s);
    if (n > SPOOL_ATTEMPT_TEXT_MAX) {
        n = SPOOL_ATTEMPT_TEXT_MAX;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static void
attempt_push(struct spool_env *env, int64_t time_ms, size_t rcpt, enum spool_attempt_ev ev,
    char *relay, char *reply)
{
    struct spool_attempt *a;
    size_t n = env->n_attempts;
    /* Capacity: n rounded up to a power of two (most messages have one or
     * two attempts while they are in memory). */
    _Static_assert((SPOOL_ATTEMPTS_MAX & (SPOOL_ATTEMPTS_MAX - 1)) == 0, "a power of two");
    if (n < SPOOL_ATTEMPTS_MAX && (n & (n - 1)) == 0)
        env->attempts = xrealloc(env->attempts, (n ? 2 * n : 1) * sizeof(*env->attempts));
    if (env->n_attempts == SPOOL_ATTEMPTS_MAX) {
        free(env->attempts[0].relay);
        free(env->attempts[0].reply);
        memmove(&env->attempts[0], &env->attempts[1],
            (SPOOL_ATTEMPTS_MAX - 1) * sizeof(*env->attempts));
        env->n_attempts--;
    }
    a = &env->attempts[env->n_attempts++];
    a->time_ms = time_ms;
    a->rcpt = (uint32_t)rcpt;
    a->ev = ev;
    a->relay = relay;
    a->reply = reply;
}

void
spool_env_add_attempt(struct spool_env *env, size_t rcpt, enum spool_attempt_ev ev,
    const char *relay, const char *reply)
{
    TERN_ASSERT(rcpt < env->n_rcpts);
    attempt_push(env, tern_now_ms(), rcpt, ev, dup_capped(relay), dup_capped(reply));
}

void
spool_env_free(struct spool_env *env)
{
    if (env == NULL)
        return;
    attempts_free(env);
    free(env->sender);
    free(env->envid);
    free(env->helo);
    free(env->client_addr);
    free(env->prefix);
    free(env->ext);
    for (size_t i = 0; i < env->n_rcpts; i++)
        rcpt_fini(&env->rcpts[i]);
    free(env->rcpts);
    free(env);
}

static char *
dup_opt(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

struct spool_env *
spool_env_dup(const struct spool_env *env)
{
    struct spool_env *d = xmalloc(sizeof(*d));
    size_t sz;
    *d = *env;
    d->sender = xstrdup(env->sender ? env->sender : "");
    d->envid = dup_opt(env->envid);
    d->helo = dup_opt(env->helo);
    d->client_addr = dup_opt(env->client_addr);
    d->prefix = dup_opt(env->prefix);
    d->ext = NULL;
    if (env->n_ext > 0) {
        TERN_ASSERT(size_mul(env->n_ext, sizeof(*d->ext), &sz));
        d->ext = xmalloc(sz);
        memcpy(d->ext, env->ext, sz);
    }
    d->rcpts = NULL;
    if (env->n_rcpts > 0) {
        TERN_ASSERT(size_mul(rcpt_cap(env->n_rcpts), sizeof(*d->rcpts), &sz));
        d->rcpts = xmalloc(sz);
    }
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *s = &env->rcpts[i];
        d->rcpts[i] = *s;
        d->rcpts[i].addr = xstrdup(s->addr ? s->addr : "");
        d->rcpts[i].orcpt = dup_opt(s->orcpt);
        d->rcpts[i].last_error = dup_opt(s->last_error);
    }
    d->attempts = NULL;
    d->n_attempts = 0;
    for (size_t i = 0; i < env->n_attempts; i++) {
        const struct spool_attempt *a = &env->attempts[i];
        attempt_push(d, a->time_ms, a->rcpt, a->ev, dup_opt(a->relay), dup_opt(a->reply));
    }
    return d;
}

void
spool_env_add_rcpt(struct spool_env *env, const char *addr, const char *orcpt, unsigned notify)
{
    size_t n = env->n_rcpts;
    struct spool_rcpt *r;
    if (n == 0 || (n & (n - 1)) == 0) { /* full: capacity is n rounded up to 2^k */
        size_t sz;
        TERN_ASSERT(size_mul(rcpt_cap(n + 1), sizeof(*env->rcpts), &sz));
        env->rcpts = xrealloc(env->rcpts, sz);
    }
    r = &env->rcpts[n];
    memset(r, 0, sizeof(*r));
    r->addr = xstrdup(addr);
    r->orcpt = dup_opt(orcpt);
    r->notify = notify;
    r->state = RCPT_QUEUED;
    env->n_rcpts = n + 1;
}

/* --- envelope records --- */

/* Append "<tag> " and return the line start for the length check. */
static size_t
line_begin(struct buf *b, char tag)
{
    size_t start = b->len;
    buf_append_char(b, tag);
    buf_append_char(b, ' ');
    return start;
}

static int
line_end(struct buf *b, size_t start)
{
    if (b->len - start > SPOOL_LINE_MAX)
        return -1;
    buf_append_char(b, '\n');
    return 0;
}

static int
put_str(struct buf *b, char tag, const char *v, bool opt)
{
    size_t start = line_begin(b, tag);
    if (opt)
        esc_opt(b, v);
    else
        spool_esc(b, v ? v : "", v ? strlen(v) : 0);
    return line_end(b, start);
}

static int
put_num(struct buf *b, char tag, uint64_t v)
{
    size_t start = line_begin(b, tag);
    buf_printf(b, "%" PRIu64, v);
    return line_end(b, start);
}

int
spool_env_encode(const struct spool_env *env, struct buf *out)
{
    int rc = 0;
    if (env->n_rcpts == 0 || env->n_rcpts > SPOOL_RCPT_MAX || env->arrival_ms < 0 ||
        !spool_qid_valid(env->qid)) {
        errno = EINVAL;
        return -1;
    }
    rc |= put_str(out, 'Q', env->qid, false);
    rc |= put_num(out, 'A', (uint64_t)env->arrival_ms);
    rc |= put_str(out, 'S', env->sender, false);
    rc |= put_str(out, 'E', env->envid, true);
    rc |= put_num(out, 'R', (uint64_t)env->ret);
    rc |= put_num(out, 'B', (uint64_t)env->body);
    rc |= put_num(out, 'U', env->smtputf8);
    rc |= put_num(out, 'X', env->is_bounce);
    rc |= put_str(out, 'H', env->helo, true);
    rc |= put_str(out, 'C', env->client_addr, true);
    for (size_t i = 0; i < env->n_rcpts && rc == 0; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        size_t start = line_begin(out, 'T');
        spool_esc(out, r->addr ? r->addr : "", r->addr ? strlen(r->addr) : 0);
        buf_append_char(out, ' ');
        esc_opt(out, r->orcpt);
        buf_printf(out, " %u", r->notify);
        /* Only when set, so that envelopes without one read as before. */
        if (r->kind != 0)
            buf_printf(out, " %u", r->kind);
        rc |= line_end(out, start);
    }
    if (rc == 0) {
        size_t start = line_begin(out, 'L');
        buf_printf(out, "%" PRIu64 " %" PRIu64, env->body_len, env->stored_len);
        rc |= line_end(out, start);
    }
    for (size_t i = 0; i < env->n_ext && rc == 0; i++) {
        size_t start = line_begin(out, 'x');
        buf_printf(out, "%" PRIu64 " %" PRIu64 " %" PRIu64, env->ext[i].seg, env->ext[i].off,
            env->ext[i].len);
        rc |= line_end(out, start);
    }
    if (rc == 0 && env->prefix != NULL)
        rc |= put_str(out, 'p', env->prefix, false);
    if (rc != 0 || env->n_ext > SPOOL_EXT_MAX) {
        errno = EINVAL;
        return -1;
    }
    return 0;
}

static int
get_num(const char *v, size_t n, uint64_t max, uint64_t *out)
{
    if (n > 20) /* no leading-zero padding in records */
        return -1;
    return parse_u64(v, n, max, out);
}

static int
f_qid(struct spool_env *env, const char *v, size_t n)
{
    if (n != SPOOL_QID_LEN)
        return -1;
    memcpy(env->qid, v, n);
    env->qid[n] = '\0';
    return spool_qid_valid(env->qid) ? 0 : -1;
}

static int
f_arrival(struct spool_env *env, const char *v, size_t n)
{
    uint64_t x;
    if (get_num(v, n, INT64_MAX, &x) < 0)
        return -1;
    env->arrival_ms = (int64_t)x;
    return 0;
}

static int
f_sender(struct spool_env *env, const char *v, size_t n)
{
    free(env->sender);
    env->sender = NULL;
    return spool_unesc(v, n, &env->sender);
}

static int
f_envid(struct spool_env *env, const char *v, size_t n)
{
    return unesc_opt(v, n, &env->envid);
}

static int
f_helo(struct spool_env *env, const char *v, size_t n)
{
    return unesc_opt(v, n, &env->helo);
}

static int
f_client(struct spool_env *env, const char *v, size_t n)
{
    return unesc_opt(v, n, &env->client_addr);
}

static int
f_ret(struct spool_env *env, const char *v, size_t n)
{
    uint64_t x;
    if (get_num(v, n, DSN_RET_HDRS, &x) < 0)
        return -1;
    env->ret = (enum dsn_ret)x;
    return 0;
}

static int
f_body(struct spool_env *env, const char *v, size_t n)
{
    uint64_t x;
    if (get_num(v, n, BODY_BINARYMIME, &x) < 0)
        return -1;
    env->body = (enum body_type)x;
    return 0;
}

static int
f_utf8(struct spool_env *env, const char *v, size_t n)
{
    uint64_t x;
    if (get_num(v, n, 1, &x) < 0)
        return -1;
    env->smtputf8 = x != 0;
    return 0;
}

static int
f_bounce(struct spool_env *env, const char *v, size_t n)
{
    uint64_t x;
    if (get_num(v, n, 1, &x) < 0)
        return -1;
    env->is_bounce = x != 0;
    return 0;
}

/* The records in the order they must appear, before the T records. */
static const struct {
    char tag;
    int (*parse)(struct spool_env *env, const char *v, size_t n);
} env_fields[] = {
    { 'Q', f_qid },
    { 'A', f_arrival },
    { 'S', f_sender },
    { 'E', f_envid },
    { 'R', f_ret },
    { 'B', f_body },
    { 'U', f_utf8 },
    { 'X', f_bounce },
    { 'H', f_helo },
    { 'C', f_client },
};

/* Splits a value into space-separated fields (empty fields allowed). */
struct fsplit {
    const char *p;
    size_t left;
    bool end;
};

static void
fsplit_init(struct fsplit *s, const char *v, size_t n)
{
    s->p = v;
    s->left = n;
    s->end = false;
}

static bool
next_field(struct fsplit *s, const char **f, size_t *n)
{
    const char *sp;
    if (s->end)
        return false;
    sp = memchr(s->p, ' ', s->left);
    *f = s->p;
    if (sp != NULL) {
        *n = (size_t)(sp - s->p);
        s->left -= *n + 1;
        s->p = sp + 1;
    } else {
        *n = s->left;
        s->p += s->left;
        s->left = 0;
        s->end = true;
    }
    return true;
}

static int
parse_rcpt(struct spool_env *env, const char *v, size_t n)
{
    struct fsplit sp;
    const char *fa, *fo, *fn, *fk;
    size_t na, no, nn, nk;
    uint64_t notify, kind = 0;
    char *addr = NULL, *orcpt = NULL;
    struct spool_rcpt *r;
    if (env->n_rcpts >= SPOOL_RCPT_MAX)
        return -1;
    fsplit_init(&sp, v, n);
    if (!next_field(&sp, &fa, &na) || !next_field(&sp, &fo, &no) || !next_field(&sp, &fn, &nn))
        return -1;
    /* An optional fourth field: the recipient's kind (RCPT_K_*), never 0. */
    if (!sp.end && (!next_field(&sp, &fk, &nk) || !sp.end ||
                       get_num(fk, nk, RCPT_K_ALL, &kind) < 0 || kind == 0))
        return -1;
    if (get_num(fn, nn, 0xf, &notify) < 0 || spool_unesc(fa, na, &addr) < 0)
        return -1;
    if (unesc_opt(fo, no, &orcpt) < 0) {
        free(addr);
        return -1;
    }
    spool_env_add_rcpt(env, "", NULL, (unsigned)notify);
    r = &env->rcpts[env->n_rcpts - 1];
    free(r->addr);
    r->addr = addr;
    r->orcpt = orcpt;
    r->kind = (unsigned)kind;
    return 0;
}

/* --- decoding a MSG part A --- */

/* Walks the lines of a part A: each ends in "\n"; no NUL. */
struct lines {
    const char *p;
    size_t left;
};

/* Next line without its "\n": 1, 0 at the end, -1 when the last line has
 * no "\n" or a line is too long. */
static int
next_line(struct lines *ls, const char **line, size_t *len)
{
    const char *nl;
    if (ls->left == 0)
        return 0;
    nl = memchr(ls->p, '\n', ls->left);
    if (nl == NULL || (size_t)(nl - ls->p) > SPOOL_LINE_MAX)
        return -1;
    *line = ls->p;
    *len = (size_t)(nl - ls->p);
    ls->left -= *len + 1;
    ls->p = nl + 1;
    return *len >= 2 && (*line)[1] == ' ' ? 1 : -1;
}

static int
parse_sizes(struct spool_env *env, const char *v, size_t n)
{
    struct fsplit sp;
    const char *a, *b;
    size_t na, nb;
    fsplit_init(&sp, v, n);
    if (!next_field(&sp, &a, &na) || !next_field(&sp, &b, &nb) || !sp.end)
        return -1;
    if (get_num(a, na, INT64_MAX, &env->body_len) < 0 ||
        get_num(b, nb, INT64_MAX, &env->stored_len) < 0)
        return -1;
    return 0;
}

static int
parse_ext(struct spool_env *env, const char *v, size_t n)
{
    struct fsplit sp;
    const char *a, *b, *c;
    size_t na, nb, nc;
    struct spool_extent x;
    fsplit_init(&sp, v, n);
    if (env->n_ext >= SPOOL_EXT_MAX || !next_field(&sp, &a, &na) || !next_field(&sp, &b, &nb) ||
        !next_field(&sp, &c, &nc) || !sp.end)
        return -1;
    if (get_num(a, na, UINT64_MAX, &x.seg) < 0 || get_num(b, nb, SEG_SIZE_MAX, &x.off) < 0 ||
        get_num(c, nc, SEG_SIZE_MAX, &x.len) < 0 || x.len == 0)
        return -1;
    if ((env->n_ext & (env->n_ext + 1)) == 0 || env->n_ext == 0) {
        size_t cap = env->n_ext ? (env->n_ext + 1) * 2 : 4;
        env->ext = xrealloc(env->ext, cap * sizeof(*env->ext));
    }
    env->ext[env->n_ext++] = x;
    return 0;
}

static int
parse_prefix(struct spool_env *env, const char *v, size_t n)
{
    char *p;
    if (env->prefix != NULL || n > 3 * SPOOL_PREFIX_MAX || spool_unesc(v, n, &p) < 0)
        return -1;
    if (!spool_prefix_valid(p, strlen(p))) {
        free(p);
        return -1;
    }
    env->prefix = p;
    return 0;
}

struct spool_env *
spool_env_decode(const char *p, size_t n)
{
    struct lines ls = { p, n };
    struct spool_env *env = xcalloc(1, sizeof(*env));
    size_t field = 0;
    bool sizes = false;
    const char *line;
    size_t len;
    int r;
    if (memchr(p, '\0', n) != NULL)
        goto bad;
    while ((r = next_line(&ls, &line, &len)) == 1) {
        const char *v = line + 2;
        size_t vn = len - 2;
        int rc;
        if (field < TERN_ARRAY_LEN(env_fields)) {
            if (line[0] != env_fields[field].tag)
                goto bad;
            rc = env_fields[field++].parse(env, v, vn);
        } else if (line[0] == 'T' && !sizes) {
            rc = parse_rcpt(env, v, vn);
        } else if (line[0] == 'L' && !sizes && env->n_rcpts > 0) {
            rc = parse_sizes(env, v, vn);
            sizes = true;
        } else if (line[0] == 'x' && sizes && env->prefix == NULL) {
            rc = parse_ext(env, v, vn);
        } else if (line[0] == 'p' && sizes) {
            rc = parse_prefix(env, v, vn);
        } else {
            rc = -1;
        }
        if (rc < 0)
            goto bad;
    }
    if (r < 0 || !sizes)
        goto bad;
    return env;
bad:
    spool_env_free(env);
    return NULL;
}

/* The old layout's envelope lines (no sizes, extents or prefix): for
 * legacy.c, one line at a time. */
int
spool_env_legacy_line(struct spool_env *env, size_t *field, const char *line, size_t len)
{
    if (len < 2 || line[1] != ' ')
        return -1;
    if (*field < TERN_ARRAY_LEN(env_fields)) {
        if (line[0] != env_fields[*field].tag)
            return -1;
        return env_fields[(*field)++].parse(env, line + 2, len - 2);
    }
    if (line[0] != 'T')
        return -1;
    return parse_rcpt(env, line + 2, len - 2);
}

bool
spool_env_legacy_complete(const struct spool_env *env, size_t field)
{
    return field == TERN_ARRAY_LEN(env_fields) && env->n_rcpts > 0;
}

/* --- STATE records --- */

static void
put_error(struct buf *b, const char *err)
{
    size_t n;
    if (err == NULL) {
        buf_append_char(b, '-');
        return;
    }
    n = strlen(err);
    if (n > SPOOL_ERR_MAX) {
        n = SPOOL_ERR_MAX;
        /* do not cut a UTF-8 sequence in the middle */
        while (n > 0 && ((unsigned char)err[n] & 0xc0) == 0x80)
            n--;
    }
    spool_esc(b, err, n);
}

void
spool_state_encode(const struct spool_env *env, struct buf *out)
{
    buf_printf(out, "h %d\n", env->held ? 1 : 0);
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        /* Every recipient, so recovery learns the whole state from here. */
        buf_printf(out, "r %zu %d %" PRIu32 " %" PRIu32 " %" PRId64 " ", i, (int)r->state,
            r->attempts, r->flags, r->next_try_ms < 0 ? 0 : r->next_try_ms);
        put_error(out, r->last_error);
        buf_append_char(out, '\n');
    }
    for (size_t i = 0; i < env->n_attempts; i++) {
        const struct spool_attempt *a = &env->attempts[i];
        buf_printf(out, "a %" PRId64 " %" PRIu32 " %d ", a->time_ms < 0 ? 0 : a->time_ms, a->rcpt,
            (int)a->ev);
        put_error(out, a->relay);
        buf_append_char(out, ' ');
        put_error(out, a->reply);
        buf_append_char(out, '\n');
    }
}

struct rcpt_line {
    uint64_t idx, state, attempts, flags, next;
    const char *err;
    size_t nerr;
};

static int
parse_rcpt_state(const char *v, size_t n, struct rcpt_line *o)
{
    struct fsplit sp;
    const char *f[5];
    size_t nf[5];
    fsplit_init(&sp, v, n);
    for (int i = 0; i < 5; i++) {
        if (!next_field(&sp, &f[i], &nf[i]))
            return -1;
    }
    if (!next_field(&sp, &o->err, &o->nerr) || !sp.end)
        return -1;
    if (get_num(f[0], nf[0], SPOOL_RCPT_MAX, &o->idx) < 0 ||
        get_num(f[1], nf[1], RCPT_STATE_LAST, &o->state) < 0 ||
        get_num(f[2], nf[2], UINT32_MAX, &o->attempts) < 0 ||
        get_num(f[3], nf[3], UINT32_MAX, &o->flags) < 0 ||
        get_num(f[4], nf[4], INT64_MAX, &o->next) < 0)
        return -1;
    return 0;
}

struct attempt_line {
    uint64_t time, rcpt, ev;
    const char *relay, *reply;
    size_t nrelay, nreply;
};

static int
parse_attempt(const char *v, size_t n, struct attempt_line *o)
{
    struct fsplit sp;
    const char *f[3];
    size_t nf[3];
    fsplit_init(&sp, v, n);
    for (int i = 0; i < 3; i++) {
        if (!next_field(&sp, &f[i], &nf[i]))
            return -1;
    }
    if (!next_field(&sp, &o->relay, &o->nrelay) || !next_field(&sp, &o->reply, &o->nreply) ||
        !sp.end)
        return -1;
    if (get_num(f[0], nf[0], INT64_MAX, &o->time) < 0 ||
        get_num(f[1], nf[1], SPOOL_RCPT_MAX, &o->rcpt) < 0 ||
        get_num(f[2], nf[2], SPOOL_ATT_EXPIRED, &o->ev) < 0)
        return -1;
    return 0;
}

/* Walk a STATE part A: held into *held, each recipient line to fn, each
 * attempt line to afn (when not NULL). */
static int
state_walk(const char *p, size_t n, bool *held, int (*fn)(const struct rcpt_line *rl, void *arg),
    int (*afn)(const struct attempt_line *al, void *arg), void *arg)
{
    struct lines ls = { p, n };
    const char *line;
    size_t len;
    int r;
    bool seen_h = false;
    if (memchr(p, '\0', n) != NULL)
        return -1;
    while ((r = next_line(&ls, &line, &len)) == 1) {
        struct rcpt_line rl;
        if (line[0] == 'h' && !seen_h && len == 3 && (line[2] == '0' || line[2] == '1')) {
            *held = line[2] == '1';
            seen_h = true;
        } else if (line[0] == 'r' && seen_h) {
            if (parse_rcpt_state(line + 2, len - 2, &rl) < 0 || fn(&rl, arg) < 0)
                return -1;
        } else if (line[0] == 'a' && seen_h) {
            struct attempt_line al;
            if (parse_attempt(line + 2, len - 2, &al) < 0 || (afn != NULL && afn(&al, arg) < 0))
                return -1;
        } else {
            return -1;
        }
    }
    return r < 0 || !seen_h ? -1 : 0;
}

static int
apply_rcpt(const struct rcpt_line *rl, void *arg)
{
    struct spool_env *env = arg;
    struct spool_rcpt *r;
    char *err;
    if (rl->idx >= env->n_rcpts || unesc_opt(rl->err, rl->nerr, &err) < 0)
        return -1;
    r = &env->rcpts[rl->idx];
    r->state = (enum rcpt_state)rl->state;
    r->attempts = (uint32_t)rl->attempts;
    r->flags = (uint32_t)rl->flags;
    r->next_try_ms = (int64_t)rl->next;
    free(r->last_error);
    r->last_error = err;
    return 0;
}

static int
apply_attempt(const struct attempt_line *al, void *arg)
{
    struct spool_env *env = arg;
    char *relay, *reply;
    if (al->rcpt >= env->n_rcpts || unesc_opt(al->relay, al->nrelay, &relay) < 0)
        return -1;
    if (unesc_opt(al->reply, al->nreply, &reply) < 0) {
        free(relay);
        return -1;
    }
    attempt_push(env, (int64_t)al->time, al->rcpt, (enum spool_attempt_ev)al->ev, relay, reply);
    return 0;
}

int
spool_state_apply(struct spool_env *env, const char *p, size_t n)
{
    /* A snapshot: what it does not mention is in its initial state. */
    for (size_t i = 0; i < env->n_rcpts; i++) {
        struct spool_rcpt *r = &env->rcpts[i];
        r->state = RCPT_QUEUED;
        r->attempts = 0;
        r->flags = 0;
        r->next_try_ms = 0;
        FREE_NULL(&r->last_error);
    }
    attempts_free(env);
    return state_walk(p, n, &env->held, apply_rcpt, apply_attempt, env);
}

struct summary {
    int64_t next;
    uint32_t pending;
    bool any_queued;
};

static int
sum_rcpt(const struct rcpt_line *rl, void *arg)
{
    struct summary *s = arg;
    if (rl->state == RCPT_QUEUED) {
        if (!s->any_queued || (int64_t)rl->next < s->next)
            s->next = (int64_t)rl->next;
        s->any_queued = true;
    }
    if (rl->state == RCPT_QUEUED || rl->state == RCPT_FAILED_DSN || rl->state == RCPT_DELIVERED_DSN)
        s->pending++;
    return 0;
}

int
spool_state_summary(const char *p, size_t n, int64_t *next_try_ms, uint32_t *pending, bool *held)
{
    struct summary s = { 0, 0, false };
    if (state_walk(p, n, held, sum_rcpt, NULL, &s) < 0)
        return -1;
    *next_try_ms = s.next;
    *pending = s.pending;
    return 0;
}

uint32_t
spool_env_pending(const struct spool_env *env)
{
    uint32_t n = 0;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        n += r->state == RCPT_QUEUED || r->state == RCPT_FAILED_DSN ||
             r->state == RCPT_DELIVERED_DSN;
    }
    return n;
}

int64_t
spool_env_next_try(const struct spool_env *env)
{
    int64_t next = INT64_MAX;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        if (r->state == RCPT_QUEUED && r->next_try_ms < next)
            next = r->next_try_ms;
    }
    return next == INT64_MAX ? 0 : next;
}

bool
spool_prefix_valid(const char *p, size_t n)
{
    bool bol = true;
    if (n == 0 || n > SPOOL_PREFIX_MAX || p[0] == ' ' || p[0] == '\t')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n' || p[i] == '\0')
            return false; /* only as part of CRLF, below */
        if (p[i] == '\r') {
            if (i + 1 >= n || p[i + 1] != '\n' || bol)
                return false; /* bare CR, or an empty line */
            i++;
            bol = true;
            continue;
        }
        bol = false;
    }
    return bol;
}

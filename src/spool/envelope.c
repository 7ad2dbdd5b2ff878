/*
 * Envelope and status record codec of the spool file format (see
 * spool_int.h). Values are %XX-escaped so no CR, LF, NUL or space appears
 * raw; a lone "-" stands for an absent (NULL) value. Every parser here takes
 * (ptr, len) of one line from a hostile file and bounds everything.
 */
#include "spool/spool_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/parse.h"
#include "util/util.h"

/* --- CRC-32C (Castagnoli), slicing by 8 --- */

static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void
crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
}

uint32_t
spool_crc32c(uint32_t crc, const void *p, size_t n)
{
    const unsigned char *s = p;
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        w ^= crc;
        crc = crc_tab[7][w & 0xff] ^ crc_tab[6][(w >> 8) & 0xff] ^ crc_tab[5][(w >> 16) & 0xff] ^
              crc_tab[4][(w >> 24) & 0xff] ^ crc_tab[3][(w >> 32) & 0xff] ^
              crc_tab[2][(w >> 40) & 0xff] ^ crc_tab[1][(w >> 48) & 0xff] ^ crc_tab[0][w >> 56];
        s += 8;
        n -= 8;
    }
#endif
    while (n-- > 0)
        crc = (crc >> 8) ^ crc_tab[0][(crc ^ *s++) & 0xff];
    return ~crc;
}

bool
spool_qid_valid(const char *qid)
{
    if (qid == NULL)
        return false;
    for (size_t i = 0; i < SPOOL_QID_LEN; i++) {
        char c = qid[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return qid[SPOOL_QID_LEN] == '\0';
}

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

void
spool_env_free(struct spool_env *env)
{
    if (env == NULL)
        return;
    free(env->sender);
    free(env->envid);
    free(env->helo);
    free(env->client_addr);
    free(env->prefix);
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
    return buf_append_char(b, '\n');
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
        rc |= line_end(out, start);
    }
    if (rc != 0) {
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
    const char *fa, *fo, *fn;
    size_t na, no, nn;
    uint64_t notify;
    char *addr = NULL, *orcpt = NULL;
    struct spool_rcpt *r;
    if (env->n_rcpts >= SPOOL_RCPT_MAX)
        return -1;
    fsplit_init(&sp, v, n);
    if (!next_field(&sp, &fa, &na) || !next_field(&sp, &fo, &no) || !next_field(&sp, &fn, &nn) ||
        !sp.end)
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
    return 0;
}

void
spool_env_parser_init(struct spool_env_parser *p)
{
    p->env = xcalloc(1, sizeof(*p->env));
    p->next_field = 0;
}

void
spool_env_parser_fini(struct spool_env_parser *p)
{
    spool_env_free(p->env);
    p->env = NULL;
}

int
spool_env_parse_line(struct spool_env_parser *p, const char *line, size_t len)
{
    if (p->env == NULL || len < 2 || line[1] != ' ')
        return -1;
    if (p->next_field < TERN_ARRAY_LEN(env_fields)) {
        if (line[0] != env_fields[p->next_field].tag)
            return -1;
        return env_fields[p->next_field++].parse(p->env, line + 2, len - 2);
    }
    if (line[0] != 'T')
        return -1;
    return parse_rcpt(p->env, line + 2, len - 2);
}

struct spool_env *
spool_env_parse_end(struct spool_env_parser *p)
{
    struct spool_env *env = p->env;
    if (env == NULL || p->next_field < TERN_ARRAY_LEN(env_fields) || env->n_rcpts == 0)
        return NULL;
    p->env = NULL;
    return env;
}

/* --- status records --- */

static void
status_finish(struct buf *b, size_t start)
{
    uint32_t crc = spool_crc32c(0, b->data + start, b->len - start);
    buf_printf(b, " %08" PRIx32 "\n", crc);
}

void
spool_status_rcpt_line(
    struct buf *b, size_t idx, enum rcpt_state st, uint32_t attempts, const char *err)
{
    size_t start = b->len;
    buf_printf(b, "s %zu %d %" PRIu32 " ", idx, (int)st, attempts);
    if (err == NULL) {
        buf_append_char(b, '-');
    } else {
        size_t n = strlen(err);
        if (n > SPOOL_ERR_MAX) {
            n = SPOOL_ERR_MAX;
            /* do not cut a UTF-8 sequence in the middle */
            while (n > 0 && ((unsigned char)err[n] & 0xc0) == 0x80)
                n--;
        }
        spool_esc(b, err, n);
    }
    status_finish(b, start);
}

void
spool_status_held_line(struct buf *b, bool held)
{
    size_t start = b->len;
    buf_printf(b, "h %d", held ? 1 : 0);
    status_finish(b, start);
}

void
spool_status_prefix_line(struct buf *b, const char *prefix)
{
    size_t start = b->len;
    buf_append_str(b, "d ");
    spool_esc(b, prefix, strlen(prefix));
    status_finish(b, start);
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

static int
status_prefix(struct spool_env *env, const char *v, size_t n)
{
    char *p;
    if (n > 3 * SPOOL_PREFIX_MAX || spool_unesc(v, n, &p) < 0)
        return -1;
    if (!spool_prefix_valid(p, strlen(p))) {
        free(p);
        return -1;
    }
    free(env->prefix);
    env->prefix = p;
    return 0;
}

static int
status_rcpt(struct spool_env *env, const char *v, size_t n)
{
    struct fsplit sp;
    const char *fi, *fs, *fa, *fe;
    size_t ni, ns, na, ne;
    uint64_t idx, st, att;
    char *err;
    struct spool_rcpt *r;
    fsplit_init(&sp, v, n);
    if (!next_field(&sp, &fi, &ni) || !next_field(&sp, &fs, &ns) || !next_field(&sp, &fa, &na) ||
        !next_field(&sp, &fe, &ne) || !sp.end)
        return -1;
    if (get_num(fi, ni, SIZE_MAX, &idx) < 0 || idx >= env->n_rcpts ||
        get_num(fs, ns, RCPT_STATE_LAST, &st) < 0 || get_num(fa, na, UINT32_MAX, &att) < 0 ||
        unesc_opt(fe, ne, &err) < 0)
        return -1;
    r = &env->rcpts[idx];
    r->state = (enum rcpt_state)st;
    r->attempts = (uint32_t)att;
    free(r->last_error);
    r->last_error = err;
    return 0;
}

bool
spool_status_check(const char *line, size_t len)
{
    uint32_t want = 0;
    /* "<record> <8 lowercase hex>" */
    if (len < 2 + 9 || line[len - 9] != ' ')
        return false;
    for (size_t i = len - 8; i < len; i++) {
        int v = hexval(line[i]);
        if (v < 0 || (line[i] >= 'A' && line[i] <= 'F'))
            return false;
        want = want << 4 | (uint32_t)v;
    }
    return spool_crc32c(0, line, len - 9) == want;
}

int
spool_status_apply(struct spool_env *env, const char *line, size_t len)
{
    const char *v;
    size_t n;
    if (!spool_status_check(line, len))
        return 1;
    if (line[1] != ' ')
        return -1;
    v = line + 2;
    n = len - 9 - 2;
    if (line[0] == 'h') {
        if (n != 1 || (v[0] != '0' && v[0] != '1'))
            return -1;
        env->held = v[0] == '1';
        return 0;
    }
    if (line[0] == 's')
        return status_rcpt(env, v, n);
    if (line[0] == 'd')
        return status_prefix(env, v, n);
    return -1;
}

/*
 * MTA-STS's pure parts: the _mta-sts TXT record (RFC 8461 §3.1), the
 * policy file (§3.2), MX host patterns (§4.1) and the cache file format.
 * Every input is bounded before it is looked at.
 */
#include "mtasts/mtasts.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/parse.h"
#include "util/util.h"

#define SET_ERR(...) snprintf(err, errcap, __VA_ARGS__)

const char *
mtasts_mode_name(enum mtasts_mode m)
{
    static const char *const names[] = { "none", "testing", "enforce" };
    return (unsigned)m < TERN_ARRAY_LEN(names) ? names[m] : "none";
}

static bool
is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* Is the record an STSv1 record? "v=STSv1" then ";" or the end (§3.1). */
static bool
txt_is_sts(const char *r, size_t len)
{
    return len >= 7 && memcmp(r, "v=STSv1", 7) == 0 && (len == 7 || r[7] == ';' || is_wsp(r[7]));
}

/* The fields of one STSv1 record: "v=STSv1; id=...;" with optional spaces;
 * other fields (extensions) are skipped. */
static int
txt_fields(const char *r, size_t len, char *id, char *err, size_t errcap)
{
    size_t i = 7;
    bool have_id = false;
    struct str_tag t;
    while (str_next_tag(r, len, &i, &t)) {
        size_t v0 = (size_t)(t.val - r), v1 = v0 + t.val_len;
        if (!t.has_eq) {
            SET_ERR("a field without '='");
            return -1;
        }
        if (t.name_len == 2 && memcmp(t.name, "id", 2) == 0 && !have_id) {
            size_t n = v1 - v0;
            if (n == 0 || n > MTASTS_ID_MAX) {
                SET_ERR("id must be 1 to %d letters and digits", MTASTS_ID_MAX);
                return -1;
            }
            for (size_t j = v0; j < v1; j++) {
                if (!isalnum((unsigned char)r[j])) {
                    SET_ERR("id must be 1 to %d letters and digits", MTASTS_ID_MAX);
                    return -1;
                }
            }
            memcpy(id, r + v0, n);
            id[n] = '\0';
            have_id = true;
        }
    }
    if (!have_id) {
        SET_ERR("no id field");
        return -1;
    }
    return 0;
}

int
mtasts_txt_parse(
    const char *const *recs, const size_t *lens, size_t n, char *id, char *err, size_t errcap)
{
    size_t found = 0, which = 0;
    for (size_t i = 0; i < n; i++) {
        if (txt_is_sts(recs[i], lens[i])) {
            found++;
            which = i;
        }
    }
    if (found == 0)
        return 1;
    if (found > 1) {
        /* RFC 8461 §3.1: several STSv1 records mean no policy. */
        SET_ERR("%zu v=STSv1 records (exactly one is allowed)", found);
        return -1;
    }
    return txt_fields(recs[which], lens[which], id, err, errcap);
}

/* ---- the policy file ---- */

static bool
pattern_ok(const char *v, size_t n)
{
    if (n >= 2 && v[0] == '*' && v[1] == '.') {
        v += 2;
        n -= 2;
    }
    if (n == 0 || n > MTASTS_MX_LEN)
        return false;
    return str_is_domain(v, n, false);
}

/* One "key: value" line (no line end). */
static int
policy_line(
    const char *l, size_t n, struct mtasts_policy *p, unsigned *seen, char *err, size_t errcap)
{
    size_t k = 0, v0, v1 = n;
    char val[MTASTS_MX_LEN + 1];
    uint64_t age;
    while (k < n && l[k] != ':')
        k++;
    if (k == n) {
        SET_ERR("a line without ':'");
        return -1;
    }
    v0 = k + 1;
    while (k > 0 && is_wsp(l[k - 1]))
        k--;
    while (v0 < n && is_wsp(l[v0]))
        v0++;
    while (v1 > v0 && is_wsp(l[v1 - 1]))
        v1--;
    if (!(k == 7 && memcmp(l, "version", 7) == 0) && !(k == 4 && memcmp(l, "mode", 4) == 0) &&
        !(k == 7 && memcmp(l, "max_age", 7) == 0) && !(k == 2 && memcmp(l, "mx", 2) == 0))
        return 0; /* unknown keys are ignored (§3.2), whatever their length */
    if (v1 - v0 > MTASTS_MX_LEN) {
        SET_ERR("a value longer than %d bytes", MTASTS_MX_LEN);
        return -1;
    }
    memcpy(val, l + v0, v1 - v0);
    val[v1 - v0] = '\0';
    if (k == 7 && memcmp(l, "version", 7) == 0) {
        if (*seen & 1)
            return 0; /* the first occurrence counts */
        *seen |= 1;
        if (strcmp(val, "STSv1") != 0) {
            SET_ERR("version is not STSv1");
            return -1;
        }
    } else if (k == 4 && memcmp(l, "mode", 4) == 0) {
        if (*seen & 2)
            return 0;
        *seen |= 2;
        if (strcmp(val, "enforce") == 0)
            p->mode = MTASTS_ENFORCE;
        else if (strcmp(val, "testing") == 0)
            p->mode = MTASTS_TESTING;
        else if (strcmp(val, "none") == 0)
            p->mode = MTASTS_NONE;
        else {
            SET_ERR("mode is none of enforce, testing, none");
            return -1;
        }
    } else if (k == 7 && memcmp(l, "max_age", 7) == 0) {
        if (*seen & 4)
            return 0;
        *seen |= 4;
        /* RFC 8461 §3.2: 1*10DIGIT, at most 31557600. */
        if (v1 - v0 == 0 || v1 - v0 > 10 || parse_u64(val, v1 - v0, MTASTS_MAX_AGE_MAX, &age) < 0) {
            SET_ERR("max_age is not a number of seconds up to %d", MTASTS_MAX_AGE_MAX);
            return -1;
        }
        p->max_age_s = (int64_t)age;
    } else if (k == 2 && memcmp(l, "mx", 2) == 0) {
        if (!pattern_ok(val, v1 - v0)) {
            SET_ERR("mx is not a host name or *.domain pattern");
            return -1;
        }
        if (p->n_mx < MTASTS_MX_MAX) {
            str_lower(val);
            snprintf(p->mx[p->n_mx++], sizeof(p->mx[0]), "%s", val);
        }
    }
    return 0;
}

int
mtasts_policy_parse(const char *text, size_t len, struct mtasts_policy *p, char *err, size_t errcap)
{
    unsigned seen = 0;
    size_t i = 0;
    memset(p, 0, sizeof(*p));
    if (len > MTASTS_POLICY_MAX) {
        SET_ERR("longer than %d bytes", MTASTS_POLICY_MAX);
        return -1;
    }
    while (i < len) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - text) : len, n = e - i;
        if (n > 0 && text[i + n - 1] == '\r')
            n--;
        for (size_t j = 0; j < n; j++) {
            if ((unsigned char)text[i + j] < 0x20 && text[i + j] != '\t') {
                SET_ERR("a control character");
                return -1;
            }
        }
        if (n > 0 && policy_line(text + i, n, p, &seen, err, errcap) < 0)
            return -1;
        i = e + 1;
    }
    if (!(seen & 1)) {
        SET_ERR("no version");
        return -1;
    }
    if (!(seen & 2)) {
        SET_ERR("no mode");
        return -1;
    }
    if (!(seen & 4)) {
        SET_ERR("no max_age");
        return -1;
    }
    if (p->n_mx == 0 && p->mode != MTASTS_NONE) {
        SET_ERR("no mx");
        return -1;
    }
    return 0;
}

/* ---- MX host patterns (RFC 8461 §4.1) ---- */

static size_t
name_len(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && s[n - 1] == '.' ? n - 1 : n;
}

bool
mtasts_mx_match(const char *pattern, const char *host)
{
    size_t pn = name_len(pattern), hn = name_len(host);
    if (pn >= 2 && pattern[0] == '*' && pattern[1] == '.') {
        /* "*.example.com": one label, then ".example.com" exactly. */
        const char *dot = memchr(host, '.', hn);
        size_t rest;
        if (dot == NULL || dot == host)
            return false;
        rest = hn - (size_t)(dot - host);
        return rest == pn - 1 && strncasecmp(dot, pattern + 1, rest) == 0;
    }
    return pn == hn && pn > 0 && strncasecmp(pattern, host, pn) == 0;
}

bool
mtasts_policy_match(const struct mtasts_policy *p, const char *host)
{
    for (size_t i = 0; i < p->n_mx; i++) {
        if (mtasts_mx_match(p->mx[i], host))
            return true;
    }
    return false;
}

/* ---- the cache file ---- */

#define CACHE_MAGIC "tern-mta-sts 1\n"

void
mtasts_cache_format(const struct mtasts_cached *c, struct buf *out)
{
    char err[sizeof(c->err)];
    size_t j = 0;
    /* The error is one line of printable text. */
    for (size_t i = 0; c->err[i] != '\0' && j + 1 < sizeof(err); i++)
        err[j++] = (unsigned char)c->err[i] < 0x20 ? ' ' : c->err[i];
    err[j] = '\0';
    buf_append_str(out, CACHE_MAGIC);
    buf_printf(out, "id %s\nfetched %lld\nerror %lld %s\nlength %zu\n", c->id[0] ? c->id : "-",
        (long long)c->fetched_s, (long long)c->err_s, err, c->text ? c->len : 0);
    if (c->text != NULL)
        buf_append(out, c->text, c->len);
}

/* "key " at p (one of the header lines): the rest of the line in v. */
static int
header_line(const char **p, const char *end, const char *key, char *v, size_t cap)
{
    size_t kl = strlen(key), n;
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    if (nl == NULL || (size_t)(nl - *p) < kl + 1 || memcmp(*p, key, kl) != 0 || (*p)[kl] != ' ')
        return -1;
    n = (size_t)(nl - *p) - kl - 1;
    if (n >= cap)
        return -1;
    memcpy(v, *p + kl + 1, n);
    v[n] = '\0';
    *p = nl + 1;
    return 0;
}

int
mtasts_cache_parse(const char *data, size_t len, struct mtasts_cached *c, char *err, size_t errcap)
{
    const char *p = data, *end = data + len;
    char v[300], *sp;
    uint64_t u, n;
    memset(c, 0, sizeof(*c));
    if (len < sizeof(CACHE_MAGIC) - 1 || memcmp(p, CACHE_MAGIC, sizeof(CACHE_MAGIC) - 1) != 0) {
        SET_ERR("not an MTA-STS cache file");
        return -1;
    }
    p += sizeof(CACHE_MAGIC) - 1;
    if (header_line(&p, end, "id", v, sizeof(v)) < 0 || strlen(v) > MTASTS_ID_MAX)
        goto bad;
    snprintf(c->id, sizeof(c->id), "%s", strcmp(v, "-") == 0 ? "" : v);
    if (header_line(&p, end, "fetched", v, sizeof(v)) < 0 ||
        parse_u64(v, strlen(v), INT64_MAX, &u) < 0)
        goto bad;
    c->fetched_s = (int64_t)u;
    if (header_line(&p, end, "error", v, sizeof(v)) < 0)
        goto bad;
    sp = strchr(v, ' ');
    if (sp == NULL || parse_u64(v, (size_t)(sp - v), INT64_MAX, &u) < 0)
        goto bad;
    c->err_s = (int64_t)u;
    snprintf(c->err, sizeof(c->err), "%s", sp + 1);
    if (header_line(&p, end, "length", v, sizeof(v)) < 0 ||
        parse_u64(v, strlen(v), MTASTS_POLICY_MAX, &n) < 0 || (uint64_t)(end - p) != n)
        goto bad;
    if (n == 0)
        return 0;
    if (mtasts_policy_parse(p, n, &c->policy, err, errcap) < 0)
        return -1;
    c->text = xstrndup(p, n);
    c->len = n;
    return 0;
bad:
    SET_ERR("damaged MTA-STS cache file");
    return -1;
}

void
mtasts_cached_fini(struct mtasts_cached *c)
{
    FREE_NULL(&c->text);
    c->len = 0;
}

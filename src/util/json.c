/*
 * Strict recursive-descent JSON reader (RFC 8259) for the control socket
 * replies. Recursion is bounded by JSON_DEPTH_MAX and the total number of
 * values by JSON_NODES_MAX, so hostile input cannot exhaust the stack or
 * memory beyond a small multiple of its own length.
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#define JSON_NUMBER_MAX 64 /* characters of one number */

struct jp {
    const char *s;
    size_t len, pos;
    int depth;
    size_t nodes;
    const char *why; /* first error */
};

static int parse_value(struct jp *p, struct json *v);

static int
jp_fail(struct jp *p, const char *why)
{
    if (p->why == NULL)
        p->why = why;
    return -1;
}

static void
skip_ws(struct jp *p)
{
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

static int
expect_word(struct jp *p, const char *w)
{
    size_t n = strlen(w);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, w, n) != 0)
        return jp_fail(p, "unexpected character");
    p->pos += n;
    return 0;
}

static int
hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static int
put_utf8(struct buf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    buf_append(b, u, n);
    return 0;
}

/* \uXXXX at p->pos (just after the backslash-u), with a following low
 * surrogate when the first is a high one (RFC 8259 §7). */
static int
parse_uescape(struct jp *p, struct buf *out)
{
    unsigned cp, lo;
    if (p->len - p->pos < 4 || hex4(p->s + p->pos, &cp) < 0)
        return jp_fail(p, "bad \\u escape");
    p->pos += 4;
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return jp_fail(p, "lone low surrogate");
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (p->len - p->pos < 6 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u' ||
            hex4(p->s + p->pos + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
            return jp_fail(p, "lone high surrogate");
        p->pos += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (put_utf8(out, cp) < 0)
        return jp_fail(p, "string too long");
    return 0;
}

static int
parse_escape(struct jp *p, struct buf *out)
{
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    const char *hit;
    char c;
    if (p->pos >= p->len)
        return jp_fail(p, "unterminated string");
    c = p->s[p->pos++];
    if (c == 'u')
        return parse_uescape(p, out);
    hit = (c != '\0') ? strchr(from, c) : NULL;
    if (hit == NULL)
        return jp_fail(p, "bad escape");
    buf_append_char(out, to[hit - from]);
    return 0;
}

/* A string at p->pos (the opening quote). On success the owned text and its
 * length are stored in *str / *slen. */
static int
parse_string(struct jp *p, char **str, size_t *slen)
{
    struct buf b = BUF_INIT;
    p->pos++; /* opening quote */
    for (;;) {
        size_t start = p->pos;
        while (p->pos < p->len && p->s[p->pos] != '"' && p->s[p->pos] != '\\' &&
               (unsigned char)p->s[p->pos] >= 0x20)
            p->pos++;
        buf_append(&b, p->s + start, p->pos - start);
        if (p->pos >= p->len) {
            jp_fail(p, "unterminated string");
            goto fail;
        }
        if (p->s[p->pos] == '"')
            break;
        if (p->s[p->pos] != '\\') {
            jp_fail(p, "control character in string");
            goto fail;
        }
        p->pos++;
        if (parse_escape(p, &b) < 0)
            goto fail;
    }
    p->pos++; /* closing quote */
    *slen = b.len;
    buf_reserve(&b, 0);
    *str = buf_take(&b);
    return 0;
fail:
    buf_fini(&b);
    return -1;
}

static size_t
skip_digits(struct jp *p)
{
    size_t n = 0;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        p->pos++;
        n++;
    }
    return n;
}

/* number = [ minus ] int [ frac ] [ exp ] (RFC 8259 §6). */
static int
parse_number(struct jp *p, struct json *v)
{
    size_t start = p->pos, n;
    bool integral = true;
    char tmp[JSON_NUMBER_MAX + 1];
    char *end;
    if (p->s[p->pos] == '-')
        p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '0')
        p->pos++;
    else if (skip_digits(p) == 0)
        return jp_fail(p, "bad number");
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        integral = false;
        if (skip_digits(p) == 0)
            return jp_fail(p, "bad number");
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        integral = false;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (skip_digits(p) == 0)
            return jp_fail(p, "bad number");
    }
    n = p->pos - start;
    if (n > JSON_NUMBER_MAX)
        return jp_fail(p, "number too long");
    memcpy(tmp, p->s + start, n);
    tmp[n] = '\0';
    v->type = JSON_NUMBER;
    errno = 0;
    v->num = strtod(tmp, &end);
    if (end != tmp + n || !isfinite(v->num))
        return jp_fail(p, "number out of range");
    if (integral) {
        errno = 0;
        long long ll = strtoll(tmp, &end, 10);
        if (errno == 0 && end == tmp + n) {
            v->is_int = true;
            v->i = ll;
        }
    }
    return 0;
}

static int
add_kid(struct jp *p, struct json *v, size_t *cap, struct json *kid)
{
    if (v->n_kids == *cap) {
        size_t ncap = *cap ? *cap * 2 : 4, bytes;
        if (!size_mul(ncap, sizeof(*kid), &bytes))
            return jp_fail(p, "too many values");
        v->kids = xrealloc(v->kids, bytes);
        *cap = ncap;
    }
    v->kids[v->n_kids++] = *kid;
    return 0;
}

static void
json_fini(struct json *v)
{
    for (size_t i = 0; i < v->n_kids; i++)
        json_fini(&v->kids[i]);
    free(v->kids);
    free(v->key);
    free(v->str);
}

/* Array or object: p->pos is at '[' or '{'. */
static int
parse_container(struct jp *p, struct json *v, bool object)
{
    char close = object ? '}' : ']';
    size_t cap = 0;
    v->type = object ? JSON_OBJECT : JSON_ARRAY;
    if (++p->depth > JSON_DEPTH_MAX)
        return jp_fail(p, "nesting too deep");
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        p->depth--;
        return 0;
    }
    for (;;) {
        struct json kid;
        memset(&kid, 0, sizeof(kid));
        skip_ws(p);
        if (object) {
            size_t klen;
            if (p->pos >= p->len || p->s[p->pos] != '"')
                return jp_fail(p, "expected member name");
            if (parse_string(p, &kid.key, &klen) < 0)
                return -1;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                free(kid.key);
                return jp_fail(p, "expected ':'");
            }
            p->pos++;
        }
        if (parse_value(p, &kid) < 0 || add_kid(p, v, &cap, &kid) < 0) {
            json_fini(&kid);
            return -1;
        }
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            p->depth--;
            return 0;
        }
        return jp_fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int
parse_value(struct jp *p, struct json *v)
{
    char c;
    if (++p->nodes > JSON_NODES_MAX)
        return jp_fail(p, "too many values");
    skip_ws(p);
    if (p->pos >= p->len)
        return jp_fail(p, "unexpected end of input");
    c = p->s[p->pos];
    switch (c) {
    case '{':
    case '[':
        return parse_container(p, v, c == '{');
    case '"':
        v->type = JSON_STRING;
        return parse_string(p, &v->str, &v->str_len);
    case 't':
    case 'f':
        v->type = JSON_BOOL;
        v->b = (c == 't');
        return expect_word(p, v->b ? "true" : "false");
    case 'n':
        v->type = JSON_NULL;
        return expect_word(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return parse_number(p, v);
        return jp_fail(p, "unexpected character");
    }
}

int
json_parse(const char *s, size_t len, struct json **out, struct buf *err)
{
    struct jp p = { s, len, 0, 0, 0, NULL };
    struct json *v;
    if (len > JSON_INPUT_MAX) {
        if (err != NULL)
            buf_append_str(err, "json: input too long");
        return -1;
    }
    v = xcalloc(1, sizeof(*v));
    if (parse_value(&p, v) == 0) {
        skip_ws(&p);
        if (p.pos == p.len) {
            *out = v;
            return 0;
        }
        jp_fail(&p, "trailing characters");
    }
    if (err != NULL)
        buf_printf(err, "json: %s at offset %zu", p.why, p.pos);
    json_free(v);
    return -1;
}

void
json_free(struct json *v)
{
    if (v == NULL)
        return;
    json_fini(v);
    free(v);
}

const struct json *
json_get(const struct json *v, const char *key)
{
    if (v == NULL || v->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < v->n_kids; i++) {
        if (strcmp(v->kids[i].key, key) == 0)
            return &v->kids[i];
    }
    return NULL;
}

const char *
json_str(const struct json *v)
{
    if (v == NULL || v->type != JSON_STRING)
        return NULL;
    return v->str;
}

int
json_int(const struct json *v, int64_t *out)
{
    if (v == NULL || v->type != JSON_NUMBER || !v->is_int)
        return -1;
    *out = v->i;
    return 0;
}

/*
 * SPF macros (RFC 7208 §7): syntax checks of macro-strings and domain-specs,
 * expansion with the transformers (digits, "r") and delimiters, URL escaping
 * for uppercase letters, and the §7.3 rule that shortens long target names.
 * Pure functions over (ptr, len) input; output goes to a caller's buf.
 */
#include "spf/spf_int.h"

#include <stdio.h>
#include <string.h>

#include "util/util.h"

#define DIGITS_MAX 3   /* "%{d999}" is already more than any name has */
#define PARTS_MAX  128 /* a 253-octet name has at most 127 labels */

static char
lower(char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

static bool
is_delim(char ch)
{
    return ch != '\0' && strchr(".-+,/_=", ch) != NULL;
}

/* One parsed "%{...}" macro. */
struct macro {
    char letter;     /* as written */
    unsigned digits; /* 0: all parts */
    bool reverse;
    char delims[8];
    size_t n_delims;
};

static bool
letter_ok(char l, enum spf_macro_ctx ctx)
{
    l = lower(l);
    if (strchr("slodiphv", l) != NULL)
        return true;
    /* c, r, t only in an explanation (§7.2); unknown modifiers are never
     * expanded, so any letter of the grammar is accepted there. */
    return strchr("crt", l) != NULL && ctx != SPF_MACRO_DOMAIN;
}

/* Parse "{...}" at s[*o] (just after '%'); *o moves past '}'. */
static int
parse_macro(const char *s, size_t len, size_t *o, enum spf_macro_ctx ctx, struct macro *m)
{
    size_t i = *o, nd = 0;
    memset(m, 0, sizeof(*m));
    if (i >= len || s[i] != '{' || i + 1 >= len)
        return -1;
    m->letter = s[++i];
    if (!letter_ok(m->letter, ctx))
        return -1;
    i++;
    while (i < len && spf_is_digit(s[i])) {
        if (++nd > DIGITS_MAX)
            return -1;
        m->digits = m->digits * 10 + (unsigned)(s[i++] - '0');
    }
    /* §7.3: a DIGIT transformer must be nonzero. */
    if (nd > 0 && m->digits == 0)
        return -1;
    if (i < len && (s[i] == 'r' || s[i] == 'R')) {
        m->reverse = true;
        i++;
    }
    while (i < len && is_delim(s[i])) {
        if (m->n_delims < sizeof(m->delims) - 1)
            m->delims[m->n_delims++] = s[i];
        i++;
    }
    if (i >= len || s[i] != '}')
        return -1;
    *o = i + 1;
    return 0;
}

/* Walk s token by token; expand into out when out != NULL. */
static int walk(const char *s, size_t len, const struct spf_macro_env *env, enum spf_macro_ctx ctx,
    size_t max, struct buf *out, bool *ends_in_macro);

bool
spf_macro_valid(const char *s, size_t len, enum spf_macro_ctx ctx, bool *ends_in_macro)
{
    return walk(s, len, NULL, ctx, SIZE_MAX, NULL, ends_in_macro) == 0;
}

bool
spf_macro_uses(const char *s, size_t len, char letter)
{
    for (size_t i = 0; i + 2 < len; i++) {
        if (s[i] == '%' && s[i + 1] == '{' && lower(s[i + 2]) == letter)
            return true;
        if (s[i] == '%')
            i++; /* "%%" is a literal percent, not the start of a macro */
    }
    return false;
}

int
spf_macro_expand(const char *s, size_t len, const struct spf_macro_env *env, enum spf_macro_ctx ctx,
    size_t max, struct buf *out)
{
    return walk(s, len, env, ctx, max, out, NULL);
}

static const char *
value_of(const struct spf_macro_env *env, char letter)
{
    const char *v = NULL;
    switch (lower(letter)) {
    case 's':
        v = env->s;
        break;
    case 'l':
        v = env->l;
        break;
    case 'o':
        v = env->o;
        break;
    case 'd':
        v = env->d;
        break;
    case 'i':
        v = env->i;
        break;
    case 'p':
        v = env->p;
        break;
    case 'v':
        v = env->v;
        break;
    case 'h':
        v = env->h;
        break;
    case 'c':
        v = env->c;
        break;
    case 'r':
        v = env->r;
        break;
    case 't':
        v = env->t;
        break;
    default:
        break;
    }
    return v != NULL ? v : "";
}

/* RFC 3986 unreserved characters stay; everything else is %XX (§7.3). */
static void
url_escape(struct buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (spf_is_alpha((char)ch) || spf_is_digit((char)ch) || ch == '-' || ch == '.' || ch == '_' ||
            ch == '~') {
            buf_append_char(out, (char)ch);
        } else {
            char e[3] = { '%', hex[ch >> 4], hex[ch & 0xf] };
            buf_append(out, e, sizeof(e));
        }
    }
}

/* §7.3: split on the delimiters, reverse if asked, keep the rightmost
 * digits parts, join with ".". */
static void
expand_one(const struct macro *m, const struct spf_macro_env *env, struct buf *out)
{
    const char *v = value_of(env, m->letter);
    const char *delims = m->n_delims ? m->delims : ".";
    const char *part[PARTS_MAX];
    size_t plen[PARTS_MAX], n = 0, start = 0, vlen = strlen(v), first;
    struct buf tmp = BUF_INIT;
    for (size_t i = 0; i <= vlen; i++) {
        if (i == vlen || strchr(delims, v[i]) != NULL) {
            if (n == PARTS_MAX) {
                /* Fold what is left into the last part: bounded, and only
                 * reached by absurd values. */
                plen[n - 1] = vlen - (size_t)(part[n - 1] - v);
                break;
            }
            part[n] = v + start;
            plen[n++] = i - start;
            start = i + 1;
        }
    }
    if (m->reverse) {
        for (size_t i = 0; i < n / 2; i++) {
            const char *tp = part[i];
            size_t tl = plen[i];
            part[i] = part[n - 1 - i];
            plen[i] = plen[n - 1 - i];
            part[n - 1 - i] = tp;
            plen[n - 1 - i] = tl;
        }
    }
    first = (m->digits > 0 && m->digits < n) ? n - m->digits : 0;
    for (size_t i = first; i < n; i++) {
        if (i > first)
            buf_append_char(&tmp, '.');
        buf_append(&tmp, part[i], plen[i]);
    }
    if (spf_is_alpha(m->letter) && m->letter >= 'A' && m->letter <= 'Z')
        url_escape(out, tmp.data ? tmp.data : "", tmp.len);
    else
        buf_append(out, tmp.data ? tmp.data : "", tmp.len);
    buf_fini(&tmp);
}

static int
walk(const char *s, size_t len, const struct spf_macro_env *env, enum spf_macro_ctx ctx, size_t max,
    struct buf *out, bool *ends_in_macro)
{
    bool last_macro = false;
    for (size_t i = 0; i < len;) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '%') {
            struct macro m;
            char nx = i + 1 < len ? s[i + 1] : '\0';
            last_macro = true;
            if (nx == '%' || nx == '_' || nx == '-') {
                if (out != NULL)
                    buf_append_str(out, nx == '%' ? "%" : nx == '_' ? " " : "%20");
                i += 2;
            } else {
                size_t o = i + 1;
                if (parse_macro(s, len, &o, ctx, &m) < 0)
                    return -1;
                if (out != NULL)
                    expand_one(&m, env, out);
                i = o;
            }
        } else {
            /* macro-literal = %x21-24 / %x26-7E; explain-string adds SP. */
            if (!((ch >= 0x21 && ch <= 0x7e) || (ch == ' ' && ctx == SPF_MACRO_EXP)))
                return -1;
            if (out != NULL)
                buf_append_char(out, (char)ch);
            last_macro = false;
            i++;
        }
        if (out != NULL && out->len > max)
            return -1;
    }
    if (ends_in_macro != NULL)
        *ends_in_macro = last_macro;
    return 0;
}

/* toplabel = ( *alphanum ALPHA *alphanum ) /
 *            ( 1*alphanum "-" *( alphanum / "-" ) alphanum )  (§4.8) */
static bool
toplabel_ok(const char *s, size_t len)
{
    bool alpha = false, dash = false;
    if (len == 0 || s[0] == '-' || s[len - 1] == '-')
        return false;
    for (size_t i = 0; i < len; i++) {
        if (spf_is_alpha(s[i]))
            alpha = true;
        else if (s[i] == '-')
            dash = true;
        else if (!spf_is_digit(s[i]))
            return false;
    }
    return alpha || dash;
}

bool
spf_domain_spec_valid(const char *s, size_t len)
{
    bool ends_in_macro = false;
    size_t dot;
    if (len == 0 || !spf_macro_valid(s, len, SPF_MACRO_DOMAIN, &ends_in_macro))
        return false;
    if (ends_in_macro)
        return true;
    if (s[len - 1] == '.')
        len--;
    for (dot = len; dot > 0 && s[dot - 1] != '.'; dot--)
        ;
    /* domain-end = "." toplabel ["."]: a dot must come before the toplabel. */
    if (dot == 0)
        return false;
    return toplabel_ok(s + dot, len - dot);
}

bool
spf_target_name(struct buf *name)
{
    size_t start = 0, label = 0;
    if (name->len > 0 && name->data[name->len - 1] == '.')
        name->data[--name->len] = '\0';
    /* §7.3: drop labels from the left until 253 octets or fewer remain. */
    while (name->len - start > SPF_DOMAIN_MAX) {
        const char *dot = memchr(name->data + start, '.', name->len - start);
        if (dot == NULL)
            return false;
        start = (size_t)(dot - name->data) + 1;
    }
    if (start > 0)
        buf_consume(name, start);
    if (name->len == 0)
        return false;
    for (size_t i = 0; i < name->len; i++) {
        if (name->data[i] == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (++label > 63) {
            return false;
        }
    }
    return true;
}

/*
 * The header section of a message to sign: split into fields, the choice of
 * the fields to sign (RFC 6376 §5.4: From always and oversigned, the other
 * names of sign_names and List-* when present, repeated names bottom-up per
 * §5.4.2), and the domain of the From: address (RFC 5322 §3.4 syntax, with
 * comments, quoted strings, display names and angle brackets).
 */
#include "dkim/dkim_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/parse.h"
#include "util/util.h"

/* Signed when present, in this order in h= (From first: it is required). */
static const char *const sign_names[] = { "from", "sender", "reply-to", "subject", "date",
    "message-id", "to", "cc", "in-reply-to", "references", "mime-version", "content-type",
    "content-transfer-encoding", "content-id", "content-description" };

static bool
is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

static void
add_field(struct dkim_hdr *h, size_t off, size_t len, size_t name_len)
{
    if (h->n == h->cap) {
        size_t sz;
        h->cap = h->cap ? h->cap * 2 : 32;
        TERN_ASSERT(size_mul(h->cap, sizeof(*h->f), &sz));
        h->f = xrealloc(h->f, sz);
    }
    h->f[h->n].off = off;
    h->f[h->n].len = len;
    h->f[h->n].name_len = name_len;
    h->n++;
}

/* Length of the field name at p[n] (printable ASCII but ':' per RFC 5322
 * §2.2, then optional WSP, then ':'), or 0 when it is not a field. */
static size_t
field_name(const char *p, size_t n)
{
    size_t i = 0, name;
    while (i < n && (unsigned char)p[i] > 32 && (unsigned char)p[i] < 127 && p[i] != ':')
        i++;
    name = i;
    while (i < n && is_wsp(p[i]))
        i++;
    return name > 0 && i < n && p[i] == ':' ? name : 0;
}

int
dkim_hdr_parse(struct dkim_hdr *h, const char *data, size_t len)
{
    size_t pos = 0;
    memset(h, 0, sizeof(*h));
    h->data = data;
    h->len = len;
    while (pos < len) {
        size_t start = pos, name = field_name(data + pos, len - pos);
        if (name == 0)
            return -1; /* no colon, bad name, or a continuation line first */
        /* The field runs to the CRLF not followed by WSP. */
        for (;;) {
            const char *cr = memchr(data + pos, '\r', len - pos);
            if (cr == NULL) {
                pos = len; /* the last line lacks its CRLF: take it as is */
                break;
            }
            pos = (size_t)(cr - data) + 1;
            if (pos < len && data[pos] == '\n') {
                pos++;
                if (pos >= len || !is_wsp(data[pos]))
                    break;
            }
        }
        add_field(h, start, pos - start, name);
    }
    return 0;
}

void
dkim_hdr_fini(struct dkim_hdr *h)
{
    FREE_NULL(&h->f);
    h->n = h->cap = 0;
}

/* Is field i called name[len] (ASCII case-insensitive)? Names hold no NUL. */
static bool
name_is(const struct dkim_hdr *h, size_t i, const char *name, size_t len)
{
    return h->f[i].name_len == len && strncasecmp(h->data + h->f[i].off, name, len) == 0;
}

size_t
dkim_hdr_find(const struct dkim_hdr *h, const char *name, size_t *count)
{
    size_t found = DKIM_NO_FIELD;
    *count = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (name_is(h, i, name, strlen(name))) {
            found = i;
            (*count)++;
        }
    }
    return *count == 1 ? found : DKIM_NO_FIELD;
}

void
dkim_hdr_value(const struct dkim_hdr *h, size_t i, const char **v, size_t *n)
{
    const char *f = h->data + h->f[i].off;
    size_t len = h->f[i].len;
    const char *colon = memchr(f, ':', len);
    TERN_ASSERT(colon != NULL);
    if (len >= 2 && f[len - 2] == '\r' && f[len - 1] == '\n')
        len -= 2;
    *v = colon + 1;
    *n = len - (size_t)(colon + 1 - f);
}

/* Append the h= entries for name: its instances bottom-most first (at
 * most DKIM_NAME_REPEAT), then extra entries without an instance; stops at
 * DKIM_H_MAX entries or DKIM_HLIST_MAX bytes of h=. Returns the new count. */
static size_t
select_name(const struct dkim_hdr *h, const char *name, size_t name_len, size_t extra,
    struct buf *hlist, size_t *order, size_t at)
{
    size_t taken = 0, i = h->n;
    for (;;) {
        size_t field = DKIM_NO_FIELD;
        while (field == DKIM_NO_FIELD && taken < DKIM_NAME_REPEAT && i > 0) {
            i--;
            if (name_is(h, i, name, name_len))
                field = i;
        }
        if (field == DKIM_NO_FIELD && extra == 0)
            break;
        if (field == DKIM_NO_FIELD)
            extra--;
        if (at >= DKIM_H_MAX || hlist->len + 1 + name_len > DKIM_HLIST_MAX)
            break;
        if (hlist->len > 0)
            buf_append_char(hlist, ':');
        for (size_t c = 0; c < name_len; c++) {
            char ch = name[c];
            buf_append_char(hlist, (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch);
        }
        order[at++] = field;
        taken++;
    }
    return at;
}

size_t
dkim_hdr_select(const struct dkim_hdr *h, struct buf *hlist, size_t *order)
{
    size_t at = 0, lists[DKIM_LIST_NAMES], n_lists = 0;
    for (size_t k = 0; k < TERN_ARRAY_LEN(sign_names); k++) {
        const char *nm = sign_names[k];
        /* From once more than present: nobody can add one unnoticed. */
        at = select_name(h, nm, strlen(nm), k == 0 ? 1 : 0, hlist, order, at);
    }
    /* List-* (RFC 2369, RFC 2919, RFC 8058): each distinct name once, in
     * order of first appearance; at most DKIM_LIST_NAMES names. */
    for (size_t i = 0; i < h->n && n_lists < DKIM_LIST_NAMES; i++) {
        const char *nm = h->data + h->f[i].off;
        size_t nl = h->f[i].name_len;
        bool seen = false;
        if (nl <= 5 || strncasecmp(nm, "list-", 5) != 0)
            continue;
        for (size_t k = 0; k < n_lists && !seen; k++)
            seen = name_is(h, lists[k], nm, nl);
        if (seen)
            continue;
        lists[n_lists++] = i;
        at = select_name(h, nm, nl, 0, hlist, order, at);
    }
    return at;
}

/* --- the From: address --- */

/* Skip a comment starting at p[i] == '(' (nested, with quoted pairs);
 * returns the index after it, or n when unterminated. */
static size_t
skip_comment(const char *p, size_t n, size_t i)
{
    unsigned depth = 0;
    for (; i < n; i++) {
        if (p[i] == '\\') {
            i++;
        } else if (p[i] == '(') {
            depth++;
        } else if (p[i] == ')') {
            if (--depth == 0)
                return i + 1;
        }
    }
    return n;
}

/* Skip a quoted string starting at p[i] == '"'; index after it, or n. */
static size_t
skip_quoted(const char *p, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (p[i] == '\\')
            i++;
        else if (p[i] == '"')
            return i + 1;
    }
    return n;
}

struct addr_scan {
    size_t n_addrs;   /* mailboxes seen */
    struct buf spec;  /* the addr-spec of the last one, comments and FWS removed */
    struct buf angle; /* ... inside <> when there is one */
    bool in_angle, has_angle, bad;
};

static void
mailbox_end(struct addr_scan *a)
{
    if (a->in_angle)
        a->bad = true;
    if (a->has_angle || a->spec.len > 0)
        a->n_addrs++;
}

/* Split at top-level commas; remember the addr-spec of each mailbox (the
 * part in <> when present). Groups ("name: ...;") are not supported. */
static void
scan_addresses(const char *p, size_t n, struct addr_scan *a)
{
    for (size_t i = 0; i < n && !a->bad;) {
        char c = p[i];
        struct buf *dst = a->in_angle ? &a->angle : &a->spec;
        if (c == '(') {
            i = skip_comment(p, n, i);
        } else if (c == '"') {
            size_t e = skip_quoted(p, n, i);
            buf_append(dst, p + i, e - i);
            i = e;
        } else if (c == '<' && !a->in_angle && !a->has_angle) {
            a->in_angle = a->has_angle = true;
            buf_reset(&a->angle);
            i++;
        } else if (c == '>' && a->in_angle) {
            a->in_angle = false;
            i++;
        } else if (c == ',' && !a->in_angle) {
            mailbox_end(a);
            buf_reset(&a->spec);
            a->has_angle = false;
            i++;
        } else if ((c == ':' || c == ';' || c == '<' || c == '>') && !a->in_angle) {
            a->bad = true; /* group syntax or stray brackets */
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            i++;
        } else {
            buf_append_char(dst, c);
            i++;
        }
    }
    if (!a->bad)
        mailbox_end(a);
}

int
dkim_from_domain(const char *value, size_t len, char *out, size_t cap)
{
    struct addr_scan a;
    const struct buf *spec;
    const char *at = NULL, *d;
    size_t dl;
    int rc = -1;
    memset(&a, 0, sizeof(a));
    scan_addresses(value, len, &a);
    spec = a.has_angle ? &a.angle : &a.spec;
    if (a.bad || a.n_addrs != 1 || spec->len == 0)
        goto out;
    /* The last '@' outside quotes: also right for an obs-route
     * "<@relay:user@domain>" (RFC 5322 §4.4). */
    for (size_t i = 0; i < spec->len; i++) {
        if (spec->data[i] == '"')
            i = skip_quoted(spec->data, spec->len, i) - 1;
        else if (spec->data[i] == '@')
            at = spec->data + i;
    }
    if (at == NULL || at == spec->data)
        goto out;
    d = at + 1;
    dl = (size_t)(spec->data + spec->len - d);
    if (dl > 0 && d[dl - 1] == '.')
        dl--; /* a trailing dot names the same domain */
    if (dl == 0 || dl >= cap || dl > DKIM_DOMAIN_MAX || !str_is_domain(d, dl, false))
        goto out;
    memcpy(out, d, dl);
    out[dl] = '\0';
    str_lower(out);
    rc = 0;
out:
    buf_fini(&a.spec);
    buf_fini(&a.angle);
    return rc;
}

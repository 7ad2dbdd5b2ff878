/*
 * The message text as the client sends it: the end of the header section
 * and the 8-bit to 7-bit MIME conversion (see mime7.h). The converter cuts
 * its input into line pieces of at most SEG_MAX octets (a longer line comes
 * in several pieces) and runs each through a state machine: the header
 * section of an entity, the body of a leaf, or the preamble or epilogue of
 * a multipart. Boundary lines of every open multipart end what is inside
 * them (RFC 2046 §5.1.2: a missing close delimiter is tolerated).
 */
#include "delivery/mime7.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/util.h"

/* ---- the end of the header section ---- */

/* At a line start, after a CR at a line start, inside a line, after a CR
 * inside a line. */

/* ---- the converter ---- */

#define SEG_MAX      1024  /* octets of a line handled at once */
#define OUT_FLUSH    16384 /* output handed on in pieces of about this size */
#define BOUNDARY_MAX 70    /* RFC 2046 §5.1.1 */
#define LINE_7BIT    998   /* RFC 5322 §2.1.1, RFC 2045 §2.7 */
#define QP_WIDTH     76    /* RFC 2045 §6.7 rule 5 */
#define B64_WIDTH    76    /* RFC 2045 §6.8 */

enum m7_state { ST_HEADER, ST_BODY, ST_PREAMBLE, ST_EPILOGUE };
enum m7_enc { ENC_NONE, ENC_QP, ENC_B64, FIX_QP, FIX_B64, MASK };

/* An open container: a multipart (with its boundary) or a message/rfc822. */
struct m7_level {
    bool multipart;
    bool digest; /* multipart/digest: parts default to message/rfc822 */
    bool closed; /* its close delimiter was seen: what follows is epilogue */
    size_t blen;
    char boundary[BOUNDARY_MAX + 1];
};

/* What an entity's header section says (RFC 2045 §5, §6). */
struct m7_head {
    bool has_ct, has_cte, has_mv;
    char type[32], subtype[64];
    char cte[32];
    char boundary[BOUNDARY_MAX + 1];
    size_t blen;
};

struct mime7 {
    enum mime7_mode mode;
    struct mime7_plan *plan;
    mime7_out_fn out;
    void *arg;
    const char *err;
    struct buf ob; /* output not yet handed on */
    /* line pieces */
    char seg[SEG_MAX];
    size_t seg_len;
    bool bol; /* the piece being gathered starts a line */
    /* structure */
    struct m7_level lv[MIME7_DEPTH_MAX];
    size_t depth;
    enum m7_state st;
    bool part_digest; /* the entity whose header is read is a digest part */
    bool top;         /* ... is a message (the top or inside message/rfc822) */
    struct buf hdr;   /* that header section */
    /* the current leaf */
    size_t leaf, next_leaf;
    enum m7_enc enc;
    bool no_encode; /* its type forbids re-encoding (multipart, message/partial...) */
    bool lossy;     /* see mime7_lossy */
    bool needs, u8bad, pending_eol;
    unsigned u8need;
    size_t line_len; /* octets of the current line so far */
    int qp_col, b64_col;
    char qp_ws; /* a space or tab held back: encoded if the line ends after it */
    unsigned char b64_in[3];
    size_t b64_n;
};

static const char hexd[] = "0123456789ABCDEF";
static const char b64d[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void
mime7_plan_fini(struct mime7_plan *p)
{
    FREE_NULL(&p->bits);
    p->n_leaves = p->cap = 0;
    p->needed = false;
}

/* ---- output ---- */

static void
out_flush(struct mime7 *m)
{
    if (m->ob.len > 0 && m->out != NULL)
        m->out(m->ob.data, m->ob.len, m->arg);
    buf_reset(&m->ob);
}

static void
out_put(struct mime7 *m, const char *p, size_t n)
{
    if (m->mode != MIME7_CONVERT)
        return;
    buf_append(&m->ob, p, n);
    if (m->ob.len >= OUT_FLUSH)
        out_flush(m);
}

static void
out_str(struct mime7 *m, const char *s)
{
    out_put(m, s, strlen(s));
}

static void
fail(struct mime7 *m, const char *why)
{
    if (m->err == NULL)
        m->err = why;
}

/* ---- quoted-printable and base64 (RFC 2045 §6.7, §6.8) ---- */

/* Put one encoded token, with a soft line break first when the line
 * would grow past 76 characters (the '=' of the break included). */
static void
qp_token(struct mime7 *m, const char *t, int n)
{
    if (m->qp_col + n > QP_WIDTH - 1) {
        out_str(m, "=\r\n");
        m->qp_col = 0;
    }
    out_put(m, t, (size_t)n);
    m->qp_col += n;
}

static void
qp_hex(struct mime7 *m, unsigned char c)
{
    char e[3] = { '=', hexd[c >> 4], hexd[c & 15] };
    qp_token(m, e, 3);
}

/* The line ends (or the part does): a held space or tab must be encoded
 * (rule 3: no literal whitespace at the end of an encoded line). */
static void
qp_line_end(struct mime7 *m)
{
    if (m->qp_ws != 0)
        qp_hex(m, (unsigned char)m->qp_ws);
    m->qp_ws = 0;
}

static void
qp_data(struct mime7 *m, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (m->qp_ws != 0) {
            char w = m->qp_ws;
            m->qp_ws = 0;
            qp_token(m, &w, 1);
        }
        if (c == ' ' || c == '\t')
            m->qp_ws = (char)c;
        else if ((c >= 33 && c <= 60) || (c >= 62 && c <= 126))
            qp_token(m, (const char *)&c, 1);
        else
            qp_hex(m, c);
    }
}

static void
b64_group(struct mime7 *m, const unsigned char *in, size_t n)
{
    char e[4];
    uint32_t v = (uint32_t)in[0] << 16 | (n > 1 ? (uint32_t)in[1] << 8 : 0) | (n > 2 ? in[2] : 0);
    e[0] = b64d[v >> 18 & 63];
    e[1] = b64d[v >> 12 & 63];
    e[2] = n > 1 ? b64d[v >> 6 & 63] : '=';
    e[3] = n > 2 ? b64d[v & 63] : '=';
    if (m->b64_col + 4 > B64_WIDTH) {
        out_str(m, "\r\n");
        m->b64_col = 0;
    }
    out_put(m, e, 4);
    m->b64_col += 4;
}

static void
b64_data(struct mime7 *m, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        m->b64_in[m->b64_n++] = (unsigned char)p[i];
        if (m->b64_n == 3) {
            b64_group(m, m->b64_in, 3);
            m->b64_n = 0;
        }
    }
}

static void
b64_flush(struct mime7 *m)
{
    if (m->b64_n > 0)
        b64_group(m, m->b64_in, m->b64_n);
    m->b64_n = 0;
}

/* ---- header sections ---- */

static bool
is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

static char
lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* RFC 2045 §5.1 tspecials, plus space and controls: not in a token. */
static bool
is_tchar(char c)
{
    return (unsigned char)c > 32 && (unsigned char)c < 127 &&
           strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

/* Skip whitespace, folding and (nested) comments. */
static size_t
skip_cfws(const char *v, size_t n, size_t i)
{
    int depth = 0;
    while (i < n) {
        char c = v[i];
        if (depth > 0 && c == '\\' && i + 1 < n) {
            i += 2;
            continue;
        }
        if (c == '(')
            depth++;
        else if (c == ')' && depth > 0)
            depth--;
        else if (depth == 0 && !is_wsp(c) && c != '\r' && c != '\n')
            break;
        i++;
    }
    return i;
}

/* A token (lowercased when lc) or a quoted string into out[cap]; the
 * length, or -1 when there is none or it does not fit. */
static int
get_word(const char *v, size_t n, size_t *i, char *out, size_t cap, bool lc)
{
    size_t k = 0;
    if (*i < n && v[*i] == '"') {
        for ((*i)++; *i < n && v[*i] != '"'; (*i)++) {
            if (v[*i] == '\\' && *i + 1 < n)
                (*i)++;
            if (v[*i] == '\r' || v[*i] == '\n')
                continue; /* folding inside the string */
            if (k + 1 >= cap)
                return -1;
            out[k++] = v[*i];
        }
        if (*i >= n)
            return -1;
        (*i)++;
    } else {
        for (; *i < n && is_tchar(v[*i]); (*i)++) {
            if (k + 1 >= cap)
                return -1;
            out[k++] = lc ? lower(v[*i]) : v[*i];
        }
        if (k == 0)
            return -1;
    }
    out[k] = '\0';
    return (int)k;
}

/* Content-Type: type "/" subtype *(";" attribute "=" value). A value that
 * does not parse leaves has_ct false (RFC 2045 §5.2: then text/plain). */
static void
parse_ct(const char *v, size_t n, struct m7_head *h)
{
    size_t i = skip_cfws(v, n, 0);
    if (get_word(v, n, &i, h->type, sizeof(h->type), true) < 0)
        return;
    i = skip_cfws(v, n, i);
    if (i >= n || v[i] != '/')
        return;
    i = skip_cfws(v, n, i + 1);
    if (get_word(v, n, &i, h->subtype, sizeof(h->subtype), true) < 0)
        return;
    h->has_ct = true;
    for (;;) {
        char attr[32], val[BOUNDARY_MAX + 2];
        int vl;
        i = skip_cfws(v, n, i);
        if (i >= n || v[i] != ';')
            return;
        i = skip_cfws(v, n, i + 1);
        if (get_word(v, n, &i, attr, sizeof(attr), true) < 0)
            return;
        i = skip_cfws(v, n, i);
        if (i >= n || v[i] != '=')
            return;
        i = skip_cfws(v, n, i + 1);
        vl = get_word(v, n, &i, val, sizeof(val), false);
        if (vl < 0) {
            /* an overlong value: skip it */
            while (i < n && v[i] != ';')
                i++;
            continue;
        }
        if (strcmp(attr, "boundary") == 0 && vl >= 1 && vl <= BOUNDARY_MAX) {
            memcpy(h->boundary, val, (size_t)vl + 1);
            h->blen = (size_t)vl;
        }
    }
}

/* Calls fn for each field of the header section h[n] (with its CRLF). */
typedef void (*field_fn)(struct mime7 *m, const char *f, size_t n, void *arg);

static void
each_field(struct mime7 *m, const char *h, size_t n, field_fn fn, void *arg)
{
    size_t pos = 0;
    while (pos < n) {
        size_t start = pos;
        for (;;) {
            const char *lf = memchr(h + pos, '\n', n - pos);
            pos = lf ? (size_t)(lf - h) + 1 : n;
            if (pos >= n || !is_wsp(h[pos]))
                break;
        }
        fn(m, h + start, pos - start, arg);
    }
}

/* Is field f called name? Returns the offset of its value, or 0. */
static size_t
field_is(const char *f, size_t n, const char *name)
{
    size_t k = strlen(name), i = k;
    if (n <= k || strncasecmp(f, name, k) != 0)
        return 0;
    while (i < n && is_wsp(f[i]))
        i++;
    return i < n && f[i] == ':' ? i + 1 : 0;
}

static void
head_field(struct mime7 *m, const char *f, size_t n, void *arg)
{
    struct m7_head *h = arg;
    size_t v;
    if (!h->has_ct && (v = field_is(f, n, "content-type")) != 0) {
        parse_ct(f + v, n - v, h);
    } else if (!h->has_cte && (v = field_is(f, n, "content-transfer-encoding")) != 0) {
        size_t i = skip_cfws(f, n, v);
        h->has_cte = true;
        if (get_word(f, n, &i, h->cte, sizeof(h->cte), true) < 0)
            snprintf(h->cte, sizeof(h->cte), "?"); /* unknown: nothing we may re-encode */
    } else if (field_is(f, n, "mime-version") != 0) {
        h->has_mv = true;
    }
}

/* 7bit, 8bit, binary or none: the content is as it is (RFC 2045 §6.2). */
static bool
cte_identity(const struct m7_head *h)
{
    return !h->has_cte || strcmp(h->cte, "7bit") == 0 || strcmp(h->cte, "8bit") == 0 ||
           strcmp(h->cte, "binary") == 0;
}

struct emit_ctx {
    bool drop_cte;
};

static void
emit_field(struct mime7 *m, const char *f, size_t n, void *arg)
{
    const struct emit_ctx *e = arg;
    if (e->drop_cte && field_is(f, n, "content-transfer-encoding") != 0)
        return;
    out_put(m, f, n);
}

/* Write the header section held in m->hdr, changed as the entity needs:
 * cte (a new Content-Transfer-Encoding value, or NULL to keep the fields),
 * ctype (a Content-Type to add, or NULL), mime_version (add MIME-Version). */
static void
emit_header(struct mime7 *m, const char *cte, const char *ctype, bool mime_version, bool blank)
{
    struct emit_ctx e = { cte != NULL };
    bool adds = cte != NULL || ctype != NULL || mime_version;
    each_field(m, m->hdr.data ? m->hdr.data : "", m->hdr.len, emit_field, &e);
    if ((adds || blank) && m->hdr.len > 0 &&
        (m->hdr.len < 2 || memcmp(m->hdr.data + m->hdr.len - 2, "\r\n", 2) != 0))
        out_str(m, "\r\n");
    if (mime_version)
        out_str(m, "MIME-Version: 1.0\r\n");
    if (ctype != NULL) {
        out_str(m, "Content-Type: ");
        out_str(m, ctype);
        out_str(m, "\r\n");
    }
    if (cte != NULL) {
        out_str(m, "Content-Transfer-Encoding: ");
        out_str(m, cte);
        out_str(m, "\r\n");
    }
    if (blank)
        out_str(m, "\r\n");
}

/* ---- entities ---- */

static bool
push_level(struct mime7 *m, const struct m7_level *l)
{
    if (m->depth >= MIME7_DEPTH_MAX) {
        fail(m, "MIME structure nested too deeply to convert");
        return false;
    }
    m->lv[m->depth++] = *l;
    return true;
}

/* A leaf starts: its plan entry (SCAN) or its encoding (CONVERT). */
static bool
leaf_start(struct mime7 *m, const struct m7_head *h, bool no_encode)
{
    struct mime7_plan *p = m->plan;
    m->leaf = m->next_leaf++;
    m->no_encode = no_encode;
    m->needs = m->u8bad = m->pending_eol = false;
    m->u8need = 0;
    m->line_len = 0;
    m->qp_col = m->b64_col = 0;
    m->qp_ws = 0;
    m->b64_n = 0;
    m->enc = ENC_NONE;
    if (m->mode == MIME7_SCAN) {
        if (p->n_leaves >= MIME7_LEAVES_MAX) {
            fail(m, "too many MIME parts to convert");
            return false;
        }
        if (p->n_leaves == p->cap) {
            p->cap = p->cap ? p->cap * 2 : 16;
            p->bits = xrealloc(p->bits, p->cap);
        }
        p->bits[p->n_leaves++] = 0;
        return true;
    }
    if (m->leaf >= p->n_leaves) {
        fail(m, "the message changed between the passes of its conversion");
        return false;
    }
    if ((p->bits[m->leaf] & MIME7_NEEDS) == 0)
        return true;
    if ((p->bits[m->leaf] & MIME7_MASK) != 0)
        m->enc = MASK;
    else if (!h->has_cte || cte_identity(h))
        m->enc = h->has_ct && strcmp(h->type, "text") != 0 ? ENC_B64 : ENC_QP;
    else
        m->enc = strcmp(h->cte, "base64") == 0 ? FIX_B64 : FIX_QP;
    return true;
}

/* The header section of the current entity is complete (blank: it ended
 * with the empty line). Decide what the entity is and write its header. */
static void
header_done(struct mime7 *m, bool blank)
{
    struct m7_head h;
    struct m7_level l;
    bool top = m->top, outer = m->depth == 0, identity, relabel, leaf_conv = false;
    const char *ctype = NULL;
    memset(&h, 0, sizeof(h));
    memset(&l, 0, sizeof(l));
    each_field(m, m->hdr.data ? m->hdr.data : "", m->hdr.len, head_field, &h);
    if (!h.has_ct && m->part_digest) {
        h.has_ct = true; /* RFC 2046 §5.1.5: digest parts default to message/rfc822 */
        snprintf(h.type, sizeof(h.type), "message");
        snprintf(h.subtype, sizeof(h.subtype), "rfc822");
    }
    identity = cte_identity(&h);
    relabel = h.has_cte && (strcmp(h.cte, "8bit") == 0 || strcmp(h.cte, "binary") == 0);
    m->top = false;
    m->part_digest = false;
    if (h.has_ct && strcmp(h.type, "multipart") == 0 && h.blen > 0 && identity) {
        l.multipart = true;
        l.digest = strcmp(h.subtype, "digest") == 0;
        memcpy(l.boundary, h.boundary, h.blen + 1);
        l.blen = h.blen;
        if (!push_level(m, &l))
            return;
        m->st = ST_PREAMBLE;
    } else if (h.has_ct && strcmp(h.type, "message") == 0 && strcmp(h.subtype, "rfc822") == 0 &&
               identity) {
        if (!push_level(m, &l))
            return;
        m->st = ST_HEADER;
        m->top = true; /* an encapsulated message */
    } else {
        /* RFC 2046 §5.1.1, §5.2.2.1, §5.2.3.1: a multipart and the
         * message types below are never encoded. */
        bool no_encode =
            (h.has_ct && strcmp(h.type, "multipart") == 0) ||
            (h.has_ct && strcmp(h.type, "message") == 0 &&
                (strcmp(h.subtype, "partial") == 0 || strcmp(h.subtype, "external-body") == 0 ||
                    strcmp(h.subtype, "rfc822") == 0)) ||
            !(identity || strcmp(h.cte, "base64") == 0 || strcmp(h.cte, "quoted-printable") == 0);
        if (!leaf_start(m, &h, no_encode))
            return;
        m->st = ST_BODY;
        leaf_conv = m->enc == ENC_QP || m->enc == ENC_B64;
        if (leaf_conv && !h.has_ct)
            ctype = (m->plan->bits[m->leaf] & MIME7_UTF8) ? "text/plain; charset=utf-8"
                                                          : "text/plain; charset=unknown-8bit";
    }
    if (m->mode == MIME7_CONVERT) {
        const char *cte = leaf_conv ? (m->enc == ENC_QP ? "quoted-printable" : "base64")
                          : relabel ? "7bit"
                                    : NULL;
        /* At the very top a message without its empty line gets it, as
         * the client adds it to any message. */
        emit_header(m, cte, ctype, top && leaf_conv && !h.has_mv, blank || outer);
    }
    buf_reset(&m->hdr);
}

/* RFC 2046 §5.1.1: "--" boundary ["--"] then only whitespace. Which open
 * multipart's boundary the line is (innermost first), or -1. */
static int
boundary_of(const struct mime7 *m, const char *s, size_t n, bool *close)
{
    if (n < 3 || s[0] != '-' || s[1] != '-')
        return -1;
    for (size_t k = m->depth; k-- > 0;) {
        const struct m7_level *l = &m->lv[k];
        size_t i = 2 + l->blen;
        if (!l->multipart || l->closed || n < i || memcmp(s + 2, l->boundary, l->blen) != 0)
            continue;
        *close = n >= i + 2 && s[i] == '-' && s[i + 1] == '-';
        if (*close)
            i += 2;
        while (i < n && is_wsp(s[i]))
            i++;
        if (i == n)
            return (int)k;
    }
    return -1;
}

/* The current leaf ends (at a boundary or the end of the message). */
static void
leaf_end(struct mime7 *m, bool at_eof)
{
    struct mime7_plan *p = m->plan;
    if (m->mode == MIME7_SCAN) {
        if (m->u8need > 0)
            m->u8bad = true;
        if (m->needs && m->no_encode && !m->lossy)
            fail(m, "8-bit data in a MIME part that must not be encoded");
        p->bits[m->leaf] = (uint8_t)((m->needs ? MIME7_NEEDS : 0) | (m->u8bad ? 0 : MIME7_UTF8) |
                                     (m->needs && m->no_encode ? MIME7_MASK : 0));
        p->needed |= m->needs;
        return;
    }
    if (m->enc == ENC_QP) {
        qp_line_end(m);
    } else if (m->enc == ENC_B64) {
        if (at_eof && m->pending_eol) {
            b64_data(m, "\r\n", 2); /* at the end the last CRLF is content */
            m->pending_eol = false;
        }
        b64_flush(m);
        if (at_eof)
            out_str(m, "\r\n");
    }
    if (m->pending_eol) /* before a boundary: the CRLF of the delimiter */
        out_str(m, "\r\n");
    m->pending_eol = false;
}

static void
end_state(struct mime7 *m, bool at_eof)
{
    if (m->st == ST_BODY)
        leaf_end(m, at_eof);
}

static void
boundary_line(struct mime7 *m, int k, bool close, const char *s, size_t n, bool eol)
{
    end_state(m, false);
    m->depth = (size_t)k + 1; /* whatever was open inside ends here */
    if (close) {
        m->lv[k].closed = true;
        m->st = ST_EPILOGUE;
    } else {
        m->st = ST_HEADER;
        m->part_digest = m->lv[k].digest;
        m->top = false;
    }
    out_put(m, s, n);
    if (eol)
        out_str(m, "\r\n");
}

/* ---- content ---- */

/* SCAN: does the leaf need re-encoding; is it UTF-8? */
static void
scan_leaf(struct mime7 *m, const unsigned char *s, size_t n, bool eol)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x80 || c == 0 || c == '\r' || c == '\n')
            m->needs = true;
        if (m->u8need > 0) {
            if ((c & 0xc0) == 0x80) {
                m->u8need--;
                continue;
            }
            m->u8bad = true;
            m->u8need = 0;
        }
        if (c >= 0xc2 && c <= 0xdf)
            m->u8need = 1;
        else if (c >= 0xe0 && c <= 0xef)
            m->u8need = 2;
        else if (c >= 0xf0 && c <= 0xf4)
            m->u8need = 3;
        else if (c >= 0x80)
            m->u8bad = true;
    }
    m->line_len += n;
    if (m->line_len > LINE_7BIT)
        m->needs = true;
    if (eol)
        m->line_len = 0;
}

static void text_7bit(struct mime7 *m, const char *s, size_t n, bool eol);

/* CONVERT: a leaf's piece of a line. */
static void
convert_leaf(struct mime7 *m, const char *s, size_t n, bool eol)
{
    switch (m->enc) {
    case ENC_NONE:
        out_put(m, s, n);
        if (eol)
            out_str(m, "\r\n");
        return;
    case MASK:
        text_7bit(m, s, n, eol);
        return;
    case FIX_QP:
    case FIX_B64:
        /* Labelled encoded but carrying raw 8-bit octets: in QP they become
         * =XX, which decodes to the same octet; base64 readers skip them
         * anyway (RFC 2045 §6.8), so they go. */
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x80 && c != 0)
                out_put(m, s + i, 1);
            else if (m->enc == FIX_QP)
                out_put(m, (char[]){ '=', hexd[c >> 4], hexd[c & 15] }, 3);
        }
        if (eol)
            out_str(m, "\r\n");
        return;
    case ENC_QP:
    case ENC_B64:
        break;
    }
    if (m->pending_eol) {
        /* the last line break was content after all */
        if (m->enc == ENC_QP) {
            qp_line_end(m);
            out_str(m, "\r\n");
            m->qp_col = 0;
        } else {
            b64_data(m, "\r\n", 2);
        }
        m->pending_eol = false;
    }
    if (m->enc == ENC_QP)
        qp_data(m, s, n);
    else
        b64_data(m, s, n);
    m->pending_eol = eol;
}

/* Preamble and epilogue are for readers without MIME and are ignored
 * (RFC 2046 §5.1.1): their 8-bit octets become '?' (so do those of a part
 * masked in a lossy conversion). */
static void
text_7bit(struct mime7 *m, const char *s, size_t n, bool eol)
{
    if (m->mode == MIME7_SCAN) {
        for (size_t i = 0; i < n; i++)
            m->plan->needed |= (unsigned char)s[i] >= 0x80 || s[i] == 0;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out_put(m, c >= 0x80 || c == 0 ? "?" : s + i, 1);
    }
    if (eol)
        out_str(m, "\r\n");
}

/* One piece of a line: s[n], bol when it starts the line, eol when a CRLF
 * (not in s) ended it, whole when it is the whole line (eol, or the last
 * line of the message). */
static void
piece(struct mime7 *m, const char *s, size_t n, bool bol, bool eol, bool whole)
{
    bool close = false;
    int k = bol && whole ? boundary_of(m, s, n, &close) : -1;
    if (m->err != NULL)
        return;
    if (k >= 0) {
        if (m->st == ST_HEADER)
            header_done(m, false);
        if (m->err == NULL)
            boundary_line(m, k, close, s, n, eol);
        return;
    }
    switch (m->st) {
    case ST_HEADER:
        if (bol && eol && n == 0) {
            header_done(m, true);
            return;
        }
        if (m->hdr.len + n + 2 > MIME7_HEADER_MAX) {
            fail(m, "MIME header section too long to convert");
            return;
        }
        buf_append(&m->hdr, s, n);
        if (eol)
            buf_append(&m->hdr, "\r\n", 2);
        return;
    case ST_BODY:
        if (m->mode == MIME7_SCAN)
            scan_leaf(m, (const unsigned char *)s, n, eol);
        else
            convert_leaf(m, s, n, eol);
        return;
    case ST_PREAMBLE:
    case ST_EPILOGUE:
        text_7bit(m, s, n, eol);
        return;
    }
}

int
mime7_feed(struct mime7 *m, const char *p, size_t n)
{
    for (size_t i = 0; i < n && m->err == NULL; i++) {
        if (m->seg_len == SEG_MAX) {
            /* A long line goes on in pieces; a CR that may start its CRLF
             * waits for the next piece. */
            bool cr = m->seg[SEG_MAX - 1] == '\r';
            piece(m, m->seg, SEG_MAX - (cr ? 1 : 0), m->bol, false, false);
            m->bol = false;
            m->seg_len = cr ? 1 : 0;
            if (cr)
                m->seg[0] = '\r';
        }
        m->seg[m->seg_len++] = p[i];
        if (p[i] == '\n' && m->seg_len >= 2 && m->seg[m->seg_len - 2] == '\r') {
            piece(m, m->seg, m->seg_len - 2, m->bol, true, true);
            m->seg_len = 0;
            m->bol = true;
        }
    }
    out_flush(m);
    return m->err != NULL ? -1 : 0;
}

int
mime7_end(struct mime7 *m)
{
    if (m->err == NULL && m->seg_len > 0)
        piece(m, m->seg, m->seg_len, m->bol, false, true);
    m->seg_len = 0;
    if (m->err == NULL) {
        if (m->st == ST_HEADER)
            header_done(m, false);
        end_state(m, true);
    }
    out_flush(m);
    return m->err != NULL ? -1 : 0;
}

struct mime7 *
mime7_new(enum mime7_mode mode, struct mime7_plan *plan, mime7_out_fn out, void *arg)
{
    struct mime7 *m = xcalloc(1, sizeof(*m));
    m->mode = mode;
    m->plan = plan;
    m->out = out;
    m->arg = arg;
    m->bol = true;
    m->top = true;
    m->st = ST_HEADER;
    buf_init(&m->ob);
    buf_init(&m->hdr);
    if (mode == MIME7_SCAN)
        mime7_plan_fini(plan);
    return m;
}

void
mime7_lossy(struct mime7 *m)
{
    m->lossy = true;
}

const char *
mime7_error(const struct mime7 *m)
{
    return m->err;
}

void
mime7_free(struct mime7 *m)
{
    if (m == NULL)
        return;
    buf_fini(&m->ob);
    buf_fini(&m->hdr);
    free(m);
}

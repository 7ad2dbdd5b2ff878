/*
 * The reference DATA / BDAT decoder (see data_ref.h): a byte-at-a-time state
 * machine, so the result never depends on how the input was split into
 * reads. Invariant: a line start is only the very start of the data or the
 * byte after CRLF; a bare CR or LF is message content, flagged in bad_eol,
 * and never a line end (RFC 5321 §2.3.8, §4.1.1.4; SMTP smuggling).
 */
#include "data_ref.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "util/util.h"

enum {
    ST_BOL,    /* at a line start (DATA mode) */
    ST_TEXT,   /* inside a line */
    ST_CR,     /* the last byte was a CR, already written to out, not counted */
    ST_DOT,    /* a line started with '.', which was dropped */
    ST_DOT_CR, /* a line is "." CR so far; the CR is held back */
    ST_END,    /* CRLF "." CRLF seen */
};

void
ref_data_init(struct ref_data_dec *d, enum smtp_data_mode mode)
{
    memset(d, 0, sizeof(*d));
    d->mode = mode;
    d->state = mode == SMTP_DATA_DOT ? ST_BOL : ST_TEXT;
}

/* One more octet of line content. RFC 5321 §4.5.3.1.6: 1000 octets with
 * CRLF, not counting a stuffing dot. */
static void
count_octet(struct ref_data_dec *d)
{
    if (d->line_len < SIZE_MAX)
        d->line_len++;
    if (d->line_len > SMTP_TEXT_LINE_MAX - 2)
        d->too_long = true;
}

/* A byte inside a line (or at a line start that is not a dot). */
static void
text_byte(struct ref_data_dec *d, unsigned char c, char **w)
{
    *(*w)++ = (char)c;
    if (c == '\r') {
        d->state = ST_CR;
        return;
    }
    if (c == '\n')
        d->bad_eol = true; /* bare LF */
    else if (c == '\0')
        d->has_nul = true;
    count_octet(d);
    d->state = ST_TEXT;
}

/* The byte after a CR: LF completes the line, anything else makes it bare. */
static void
after_cr(struct ref_data_dec *d, unsigned char c, char **w)
{
    if (c == '\n') {
        *(*w)++ = '\n';
        d->line_len = 0;
        d->state = d->mode == SMTP_DATA_DOT ? ST_BOL : ST_TEXT;
        return;
    }
    d->bad_eol = true; /* bare CR */
    count_octet(d);
    text_byte(d, c, w);
}

static void
step(struct ref_data_dec *d, unsigned char c, char **w)
{
    switch (d->state) {
    case ST_BOL:
        if (c == '.')
            d->state = ST_DOT; /* stuffing dot or the terminator: drop it */
        else
            text_byte(d, c, w);
        break;
    case ST_TEXT:
        text_byte(d, c, w);
        break;
    case ST_CR:
        after_cr(d, c, w);
        break;
    case ST_DOT:
        /* §4.5.2: a line "." alone ends the data; otherwise the dot was
         * stuffing and the rest of the line is content. */
        if (c == '\r')
            d->state = ST_DOT_CR;
        else
            text_byte(d, c, w);
        break;
    case ST_DOT_CR:
        if (c == '\n') {
            d->state = ST_END;
            d->ended = true;
            break;
        }
        /* "." CR x: the held CR is content after all (and bare). */
        *(*w)++ = '\r';
        d->state = ST_CR;
        after_cr(d, c, w);
        break;
    default:
        tern_panic("ref_data: bad state %d", d->state);
    }
}

long
ref_data_feed(struct ref_data_dec *d, const char *in, size_t len, struct buf *out)
{
    const unsigned char *p = (const unsigned char *)in;
    char *start, *w;
    size_t i;

    TERN_ASSERT(len <= LONG_MAX);
    if (d->ended)
        return 0;
    /* Output is at most the input plus one held-back CR from before. */
    if (len == SIZE_MAX)
        return -1;
    buf_reserve(out, len + 1);
    start = w = out->data + out->len;
    for (i = 0; i < len && !d->ended; i++)
        step(d, p[i], &w);
    out->len += (size_t)(w - start);
    out->data[out->len] = '\0';
    d->out_bytes += (uint64_t)(w - start);
    return (long)i;
}

bool
ref_data_finish_bdat(struct ref_data_dec *d, struct buf *out)
{
    TERN_ASSERT(d->mode == SMTP_DATA_BDAT);
    if (d->state == ST_TEXT && d->line_len == 0)
        return false; /* empty message or one ending with CRLF */
    if (d->state == ST_CR) {
        /* The message ends with a CR that no LF followed: a bare CR. */
        d->bad_eol = true;
        count_octet(d);
    }
    buf_append(out, "\r\n", 2);
    d->out_bytes += 2;
    d->line_len = 0;
    d->state = ST_TEXT;
    return true;
}

void
ref_restuff(const char *in, size_t len, int *bol, struct buf *out)
{
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '.' && *bol == 1)
            buf_append_char(out, '.');
        buf_append_char(out, in[i]);
        *bol = in[i] == '\r' ? 2 : (in[i] == '\n' && *bol == 2) ? 1 : 0;
    }
}

/* ---- the differential test ---- */

void
ref_outcome_fini(struct ref_outcome *o)
{
    buf_fini(&o->stored);
}

void
ref_outcome_reference(enum smtp_data_mode mode, const char *in, size_t len, struct ref_outcome *o)
{
    struct ref_data_dec d;
    struct buf out = BUF_INIT;
    int bol = 1;
    long n;
    memset(o, 0, sizeof(*o));
    ref_data_init(&d, mode);
    n = ref_data_feed(&d, in, len, &out);
    TERN_ASSERT(n >= 0);
    if (mode == SMTP_DATA_BDAT)
        ref_data_finish_bdat(&d, &out);
    ref_restuff(out.data, out.len, &bol, &o->stored);
    o->ended = d.ended;
    o->bad_eol = d.bad_eol;
    o->too_long = d.too_long;
    o->has_nul = d.has_nul;
    o->consumed = (size_t)n;
    o->content = d.out_bytes;
    buf_fini(&out);
}

/* The reader's sink: stuffed bytes are moved into h->moved, as the spool
 * writer does; plain content is stuffed again into h->stored. */
struct harness {
    struct evbuffer *in, *moved;
    struct buf *stored;
    uint64_t given; /* content handed over */
    const char *err;
};

static void
flush_moved(struct harness *h)
{
    size_t n = evbuffer_get_length(h->moved);
    if (n == 0)
        return;
    buf_reserve(&*h->stored, n);
    evbuffer_remove(h->moved, h->stored->data + h->stored->len, n);
    h->stored->len += n;
}

static void
h_stuffed(void *arg, struct evbuffer *src, size_t n, uint64_t content)
{
    struct harness *h = arg;
    if (src != h->in || n == 0 || n > evbuffer_get_length(src) || content > n) {
        h->err = "stuffed: a bad call";
        return;
    }
    if (evbuffer_remove_buffer(src, h->moved, n) != (int)n)
        h->err = "stuffed: the bytes could not be moved";
    h->given += content;
}

static void
h_plain(void *arg, const char *p, size_t n)
{
    struct harness *h = arg;
    const struct buf *b = h->stored;
    int bol;
    flush_moved(h);
    /* The stuffing state at the end of what is stored. */
    if (b->len == 0 || (b->len >= 2 && b->data[b->len - 2] == '\r' && b->data[b->len - 1] == '\n'))
        bol = 1;
    else
        bol = b->data[b->len - 1] == '\r' ? 2 : 0;
    ref_restuff(p, n, &bol, h->stored);
    h->given += n;
}

/* Bytes of data in the last chain of b (0 when empty). */
static size_t
last_chain_len(struct evbuffer *b)
{
    int n = evbuffer_peek(b, -1, NULL, NULL, 0);
    struct evbuffer_iovec *v;
    size_t last;
    if (n <= 0)
        return 0;
    v = xcalloc((size_t)n, sizeof(*v));
    evbuffer_peek(b, -1, NULL, v, n);
    last = v[n - 1].iov_len;
    free(v);
    return last;
}

static void
add_piece(struct evbuffer *in, const char *p, size_t n, bool own_chain)
{
    if (own_chain) {
        struct evbuffer *t = evbuffer_new();
        evbuffer_add(t, p, n);
        evbuffer_add_buffer(in, t);
        evbuffer_free(t);
    } else {
        evbuffer_add(in, p, n);
    }
}

/* Run the DATA reader on what in holds; checks that a call that neither
 * ended nor copied left the last chain alone. */
static bool
data_step(struct smtp_data_reader *r, struct harness *h, const struct smtp_data_sink *sink)
{
    size_t last = last_chain_len(h->in);
    bool copying = r->copying, ended;
    uint64_t used;
    ended = smtp_data_read(r, h->in, sink, &used);
    if (!ended && !copying && !r->copying && evbuffer_get_length(h->in) < last)
        h->err = "the last chain was handed over before the end of data";
    return ended;
}

/* BDAT: where the chunk that starts at from ends: at the next cut when
 * chunks are split, else at the end. */
static size_t
chunk_end(const size_t *cuts, size_t ncuts, size_t len, size_t from, bool split)
{
    for (size_t j = 0; split && j < ncuts; j++) {
        if (cuts[j] > from)
            return cuts[j];
    }
    return len;
}

const char *
ref_outcome_reader(enum smtp_data_mode mode, const char *in, size_t len, const size_t *cuts,
    size_t ncuts, uint32_t layout, struct ref_outcome *o)
{
    struct smtp_data_reader r;
    struct harness h = { evbuffer_new(), evbuffer_new(), &o->stored, 0, NULL };
    const struct smtp_data_sink sink = { h_stuffed, h_plain, &h };
    size_t pos = 0, added = 0, taken = 0;
    uint64_t chunk_left = 0;
    bool ended = false;
    memset(o, 0, sizeof(*o));
    smtp_data_reader_init(&r, mode);
    for (size_t k = 0; k <= ncuts && !ended && h.err == NULL; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        add_piece(h.in, in + pos, end - pos, (layout >> (k % 31)) & 1);
        added += end - pos;
        if (mode == SMTP_DATA_DOT) {
            ended = data_step(&r, &h, &sink);
        } else {
            while (evbuffer_get_length(h.in) > 0) {
                size_t t;
                if (chunk_left == 0)
                    chunk_left = chunk_end(cuts, ncuts, len, taken, layout >> 31) - taken;
                t = smtp_bdat_read(&r, h.in, chunk_left, &sink);
                chunk_left -= t;
                taken += t;
            }
        }
        pos = end;
    }
    if (mode == SMTP_DATA_BDAT) {
        if (h.err == NULL && evbuffer_get_length(h.in) != 0)
            h.err = "BDAT bytes left unread";
        smtp_bdat_finish(&r, &sink);
    }
    flush_moved(&h);
    o->ended = r.sc.ended;
    o->bad_eol = r.sc.bad_eol;
    o->too_long = r.sc.too_long;
    o->has_nul = r.sc.has_nul;
    /* Scanned: what the reader has seen (a DATA reader keeps some of it in
     * the buffer until more comes). */
    o->consumed = (size_t)r.sc.pos;
    o->content = r.sc.content;
    if (h.err == NULL && (mode == SMTP_DATA_BDAT || o->ended) &&
        added - evbuffer_get_length(h.in) != o->consumed)
        h.err = "bytes scanned but left in the buffer";
    if (h.err == NULL && (mode == SMTP_DATA_BDAT || o->ended) && h.given != o->content)
        h.err = "the content handed over is not the content counted";
    smtp_data_reader_fini(&r);
    evbuffer_free(h.in);
    evbuffer_free(h.moved);
    return h.err;
}

const char *
ref_outcome_compare(
    enum smtp_data_mode mode, const struct ref_outcome *ref, const struct ref_outcome *r)
{
    bool whole = mode == SMTP_DATA_BDAT || ref->ended;
    if (ref->ended != r->ended)
        return "ended differs";
    if (ref->bad_eol != r->bad_eol)
        return "bad_eol differs";
    if (ref->too_long != r->too_long)
        return "too_long differs";
    if (ref->has_nul != r->has_nul)
        return "has_nul differs";
    if (ref->consumed != r->consumed)
        return "consumed differs";
    if (whole && ref->content != r->content)
        return "content size differs";
    if (whole ? r->stored.len != ref->stored.len : r->stored.len > ref->stored.len)
        return "stored length differs";
    if (r->stored.len > 0 && memcmp(r->stored.data, ref->stored.data, r->stored.len) != 0)
        return "stored bytes differ";
    return NULL;
}

/*
 * The DATA / BDAT scanner and readers, and the DATA encoder (dot-stuffing).
 * The scanner is a state machine over the input with a fast path inside
 * lines: the next CR, LF or NUL is found 16 bytes at a time (SSE2, baseline
 * on x86-64; memchr otherwise). Invariant: a line start is only the very
 * start of the data or the byte after CRLF; a bare CR or LF is message
 * content, flagged in bad_eol, and never a line end (RFC 5321 §2.3.8,
 * §4.1.1.4; SMTP smuggling). The readers work on the session's input
 * evbuffer in place (evbuffer_peek) and hand the stored bytes on.
 */
#include "proto/data.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) && !defined(TERN_SCAN_PORTABLE)
#include <emmintrin.h>
#define SCAN_SSE2 1
#endif

#include "util/util.h"

#define SCAN_IOV   16          /* chains looked at per peek */
#define COPY_PIECE (16 * 1024) /* bytes decoded at a time while copying */
#define LINE_LIMIT (SMTP_TEXT_LINE_MAX - 2)
#define FIND_SPAN  256 /* portable search: bytes per memchr round */

enum {
    SC_BOL,    /* at a line start (DATA mode) */
    SC_TEXT,   /* inside a line */
    SC_CR,     /* the last byte was a CR (settled; counted in line_len once bare) */
    SC_DOT,    /* a line started with '.' (consumed, not settled) */
    SC_DOT_CR, /* a line is "." CR so far (neither settled) */
    SC_END,    /* CRLF "." CRLF seen */
};

void
smtp_scan_init(struct smtp_scan *sc, enum smtp_data_mode mode)
{
    memset(sc, 0, sizeof(*sc));
    sc->mode = mode;
    sc->state = mode == SMTP_DATA_DOT ? SC_BOL : SC_TEXT;
}

/* Index of the first CR, LF or NUL in p[0..n), or n. */
static inline size_t
find_special(const unsigned char *p, size_t n)
{
    size_t i = 0;
#ifdef SCAN_SSE2
    const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i m = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(x, cr), _mm_cmpeq_epi8(x, lf)), _mm_cmpeq_epi8(x, zero));
        unsigned bits = (unsigned)_mm_movemask_epi8(m);
        if (bits != 0)
            return i + (size_t)__builtin_ctz(bits);
    }
    for (; i < n; i++) {
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
            return i;
    }
    return n;
#else
    /* Three memchr calls over a bounded span, so a long run without one
     * of the bytes is not searched again for every hit of another. */
    while (i < n) {
        size_t span = n - i < FIND_SPAN ? n - i : FIND_SPAN;
        const unsigned char *end = p + i + span, *q;
        if ((q = memchr(p + i, '\n', span)) != NULL)
            end = q;
        if ((q = memchr(p + i, '\r', (size_t)(end - (p + i)))) != NULL)
            end = q;
        if ((q = memchr(p + i, '\0', (size_t)(end - (p + i)))) != NULL)
            end = q;
        if (end < p + i + span)
            return (size_t)(end - p);
        i += span;
    }
    return n;
#endif
}

/* The scanner's working copy, written back at the end of a feed. */
struct scan_run {
    const unsigned char *p;
    size_t len, i;
    char *out;
    size_t o;
    size_t line;
    uint64_t dots; /* settled dots that are not content: stuffing and stray */
    int st;
    bool bad_eol, too_long, has_nul;
};

/* One more octet of line content (RFC 5321 §4.5.3.1.6: 1000 octets with
 * CRLF, not counting a stuffing dot). The count stops just past the limit. */
static inline void
count(struct scan_run *r, size_t n)
{
    r->line += n;
    if (r->line > LINE_LIMIT) {
        r->too_long = true;
        r->line = LINE_LIMIT + 1;
    }
}

static inline void
put(struct scan_run *r, char c)
{
    if (r->out != NULL)
        r->out[r->o++] = c;
}

/* Inside a line: the run up to the next special byte, and that byte. */
static void
scan_text(struct scan_run *r)
{
    size_t k = find_special(r->p + r->i, r->len - r->i);
    unsigned char c;
    if (r->out != NULL) {
        memcpy(r->out + r->o, r->p + r->i, k);
        r->o += k;
    }
    count(r, k);
    r->i += k;
    if (r->i == r->len)
        return;
    c = r->p[r->i++];
    put(r, (char)c);
    if (c == '\r') {
        r->st = SC_CR;
        return;
    }
    if (c == '\n')
        r->bad_eol = true; /* bare LF */
    else
        r->has_nul = true;
    count(r, 1);
}

/* The byte after a CR: LF ends the line, anything else makes it bare (and
 * is then read as text). */
static void
scan_after_cr(struct scan_run *r, enum smtp_data_mode mode)
{
    if (r->p[r->i] == '\n') {
        r->i++;
        put(r, '\n');
        r->line = 0;
        r->st = mode == SMTP_DATA_DOT ? SC_BOL : SC_TEXT;
        return;
    }
    r->bad_eol = true; /* bare CR */
    count(r, 1);
    r->st = SC_TEXT;
}

/* At a line start, after a '.', or after "." CR. Returns the stop. */
static enum smtp_scan_stop
scan_dot(struct scan_run *r, bool *back)
{
    unsigned char c = r->p[r->i];
    switch (r->st) {
    case SC_BOL:
        if (c == '.') {
            r->i++;
            r->st = SC_DOT; /* stuffing, the terminator, or a stray dot */
        } else {
            r->st = SC_TEXT;
        }
        return SMTP_SCAN_MORE;
    case SC_DOT:
        /* §4.5.2: ".." is a stuffed "."; "." CRLF ends the data. */
        if (c == '.') {
            r->i++;
            r->dots++;
            put(r, '.');
            count(r, 1);
            r->st = SC_TEXT;
        } else if (c == '\r') {
            r->i++;
            r->st = SC_DOT_CR;
        } else {
            r->dots++; /* §4.5.2: a dot before anything else is dropped */
            r->st = SC_TEXT;
            if (r->out == NULL)
                return SMTP_SCAN_STRAY;
        }
        return SMTP_SCAN_MORE;
    default: /* SC_DOT_CR */
        if (c == '\n') {
            r->i++;
            r->st = SC_END;
            return SMTP_SCAN_END;
        }
        /* "." CR x: the dot is dropped, the CR is content (and bare). */
        r->dots++;
        if (r->out != NULL) {
            put(r, '\r');
            r->st = SC_CR;
            return SMTP_SCAN_MORE;
        }
        *back = true; /* the CR is read again, as text */
        r->st = SC_TEXT;
        return SMTP_SCAN_STRAY;
    }
}

enum smtp_scan_stop
smtp_scan_feed(struct smtp_scan *sc, const char *in, size_t len, char *out, size_t *out_n)
{
    struct scan_run r = { (const unsigned char *)in, len, 0, out, 0, sc->line_len, 0, sc->state,
        sc->bad_eol, sc->too_long, sc->has_nul };
    enum smtp_scan_stop stop = SMTP_SCAN_MORE;
    bool back = false;
    uint64_t settled;
    if (out_n != NULL)
        *out_n = 0;
    if (sc->ended)
        return SMTP_SCAN_END;
    while (r.i < r.len && stop == SMTP_SCAN_MORE) {
        if (r.st == SC_TEXT)
            scan_text(&r);
        else if (r.st == SC_CR)
            scan_after_cr(&r, sc->mode);
        else
            stop = scan_dot(&r, &back);
    }
    sc->pos += r.i;
    if (back)
        sc->pos--;
    settled = sc->pos - (r.st == SC_DOT ? 1 : r.st == SC_DOT_CR ? 2 : r.st == SC_END ? 3 : 0);
    sc->content += settled - sc->settled - r.dots;
    sc->settled = settled;
    sc->line_len = r.line;
    sc->state = r.st;
    sc->bad_eol = r.bad_eol;
    sc->too_long = r.too_long;
    sc->has_nul = r.has_nul;
    sc->ended = r.st == SC_END;
    if (out_n != NULL)
        *out_n = r.o;
    return stop;
}

bool
smtp_scan_finish_bdat(struct smtp_scan *sc)
{
    TERN_ASSERT(sc->mode == SMTP_DATA_BDAT);
    if (sc->state == SC_TEXT && sc->line_len == 0)
        return false; /* empty message or one ending with CRLF */
    if (sc->state == SC_CR) {
        /* The message ends with a CR that no LF followed: a bare CR. */
        sc->bad_eol = true;
        if (++sc->line_len > LINE_LIMIT)
            sc->too_long = true;
    }
    sc->content += 2;
    sc->line_len = 0;
    sc->state = SC_TEXT;
    return true;
}

/* ---- readers ---- */

void
smtp_data_reader_init(struct smtp_data_reader *r, enum smtp_data_mode mode)
{
    memset(r, 0, sizeof(*r));
    smtp_scan_init(&r->sc, mode);
}

void
smtp_data_reader_fini(struct smtp_data_reader *r)
{
    FREE_NULL(&r->tmp);
}

/* The first n bytes of in are stored bytes whose content ends at the
 * scanner's count content. */
static void
give(struct smtp_data_reader *r, struct evbuffer *in, size_t n, uint64_t content,
    const struct smtp_data_sink *sink)
{
    if (n == 0)
        return;
    TERN_ASSERT(content >= r->given);
    sink->stuffed(sink->arg, in, n, content - r->given);
    r->given = content;
    r->base += n;
}

static void
skip(struct smtp_data_reader *r, struct evbuffer *in, size_t n)
{
    if (evbuffer_drain(in, n) < 0)
        tern_panic("evbuffer_drain failed");
    r->base += n;
}

/* Scan without copying. Every chain but the last is handed over whole once
 * scanned; the last one waits until it is full (another follows) or the data
 * ends. The content count at a chain's end is the count of the bytes before
 * it whenever those bytes are all settled: a "." pending there turns out to
 * be stuffing (not content) or stops the scan. Returns 1 at the end of
 * data, 0 when more input is needed, 2 after a stray dot (copying from now). */
static int
read_scan(struct smtp_data_reader *r, struct evbuffer *in, const struct smtp_data_sink *sink)
{
    for (;;) {
        size_t len = evbuffer_get_length(in), seen = (size_t)(r->sc.pos - r->base);
        size_t cut = 0, settled;
        uint64_t cut_content = 0;
        struct evbuffer_iovec v[SCAN_IOV];
        struct evbuffer_ptr at;
        enum smtp_scan_stop st = SMTP_SCAN_MORE;
        int n, nv;
        if (seen >= len)
            return 0;
        if (evbuffer_ptr_set(in, &at, seen, EVBUFFER_PTR_SET) < 0)
            tern_panic("evbuffer_ptr_set failed");
        n = evbuffer_peek(in, (ev_ssize_t)(len - seen), &at, v, SCAN_IOV);
        nv = n < SCAN_IOV ? n : SCAN_IOV;
        for (int i = 0; i < nv && st == SMTP_SCAN_MORE; i++) {
            st = smtp_scan_feed(&r->sc, v[i].iov_base, v[i].iov_len, NULL, NULL);
            if (st == SMTP_SCAN_MORE && i < n - 1) {
                cut = (size_t)(r->sc.pos - r->base);
                cut_content = r->sc.content;
            }
        }
        settled = (size_t)(r->sc.settled - r->base);
        if (st == SMTP_SCAN_END) {
            give(r, in, settled, r->sc.content, sink);
            skip(r, in, 3); /* ".\r\n" */
            return 1;
        }
        if (st == SMTP_SCAN_STRAY) {
            give(r, in, settled - 1, r->sc.content, sink);
            skip(r, in, 1);
            r->copying = true;
            return 2;
        }
        if (cut > settled) {
            cut = settled;
            cut_content = r->sc.content;
        }
        give(r, in, cut, cut_content, sink);
        if (nv == n)
            return 0;
    }
}

/* The first bytes of in, as they lie in memory: false when it is empty. An
 * empty chain at the front (libevent should not leave one) is passed over. */
static bool
first_piece(struct evbuffer *in, struct evbuffer_iovec *out)
{
    struct evbuffer_iovec v[4];
    int n = evbuffer_peek(in, -1, NULL, v, 4);
    for (int i = 0; i < n && i < 4; i++) {
        if (v[i].iov_len > 0) {
            *out = v[i];
            return true;
        }
    }
    return false;
}

/* Decode and copy (after a stray dot): the content goes to the sink to be
 * stuffed again. */
static int
read_copy(struct smtp_data_reader *r, struct evbuffer *in, const struct smtp_data_sink *sink)
{
    if (r->tmp == NULL)
        r->tmp = xmalloc(COPY_PIECE + 1);
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        enum smtp_scan_stop st;
        size_t take, o;
        if (!first_piece(in, &v))
            break;
        take = v.iov_len < COPY_PIECE ? v.iov_len : COPY_PIECE;
        TERN_ASSERT(r->sc.pos == r->base);
        st = smtp_scan_feed(&r->sc, v.iov_base, take, r->tmp, &o);
        if (o > 0)
            sink->plain(sink->arg, r->tmp, o);
        skip(r, in, (size_t)(r->sc.pos - r->base));
        if (st == SMTP_SCAN_END)
            return 1;
    }
    return 0;
}

bool
smtp_data_read(struct smtp_data_reader *r, struct evbuffer *in, const struct smtp_data_sink *sink,
    uint64_t *used)
{
    uint64_t start = r->sc.pos;
    int k;
    TERN_ASSERT(r->sc.mode == SMTP_DATA_DOT);
    if (r->sc.ended) {
        *used = 0;
        return true;
    }
    do
        k = r->copying ? read_copy(r, in, sink) : read_scan(r, in, sink);
    while (k == 2);
    *used = r->sc.pos > start ? r->sc.pos - start : 0;
    return k == 1;
}

size_t
smtp_bdat_read(struct smtp_data_reader *r, struct evbuffer *in, uint64_t max,
    const struct smtp_data_sink *sink)
{
    size_t used = 0;
    TERN_ASSERT(r->sc.mode == SMTP_DATA_BDAT);
    while (used < max && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        size_t take;
        if (!first_piece(in, &v))
            break;
        take = v.iov_len < max - used ? v.iov_len : (size_t)(max - used);
        (void)smtp_scan_feed(&r->sc, v.iov_base, take, NULL, NULL);
        sink->plain(sink->arg, v.iov_base, take);
        if (evbuffer_drain(in, take) < 0)
            tern_panic("evbuffer_drain failed");
        used += take;
    }
    r->base = r->sc.pos;
    return used;
}

void
smtp_bdat_finish(struct smtp_data_reader *r, const struct smtp_data_sink *sink)
{
    if (smtp_scan_finish_bdat(&r->sc))
        sink->plain(sink->arg, "\r\n", 2);
}

/* ---- the encoder ---- */

/*
 * A '.' is doubled at the start and after every CR or LF. For CRLF-only
 * input this is exactly "at a line start", so decoding gives the input back;
 * stuffing after a bare CR or LF too protects a next hop that (wrongly)
 * takes them for line ends. *at_line_start is "the last byte was CR or LF".
 */
void
smtp_data_stuff(const char *in, size_t len, bool *at_line_start, struct buf *out)
{
    size_t i, run = 0;
    for (i = 0; i < len; i++) {
        if (in[i] == '.' && *at_line_start) {
            buf_append(out, in + run, i - run);
            buf_append_char(out, '.');
            run = i;
        }
        *at_line_start = in[i] == '\r' || in[i] == '\n';
    }
    buf_append(out, in + run, len - run);
}

int64_t
smtp_data_deadline(
    int64_t deadline_ms, int64_t now_ms, uint64_t bytes, uint32_t min_rate, int64_t max_ahead_ms)
{
    int64_t cap = now_ms + max_ahead_ms;
    uint64_t credit;
    if (deadline_ms >= cap)
        return deadline_ms;
    /* min_rate 0: no minimum, any byte gives the whole wait again. */
    credit = (min_rate == 0 || bytes > UINT64_MAX / 1000) ? UINT64_MAX : bytes * 1000 / min_rate;
    if (credit >= (uint64_t)(cap - deadline_ms))
        return cap;
    return deadline_ms + (int64_t)credit;
}

/* ---- the end of the header section ---- */

enum { HS_BOL, HS_BOL_CR, HS_MID, HS_MID_CR };

void
hdr_scan_feed(struct hdr_scan *h, const char *p, size_t n)
{
    int st = h->st;
    for (size_t i = 0; i < n && !h->done; i++) {
        char c = p[i];
        if (st == HS_BOL_CR && c == '\n')
            h->done = true;
        else if (c == '\r')
            st = st == HS_BOL ? HS_BOL_CR : HS_MID_CR;
        else if (c == '\n' && st == HS_MID_CR)
            st = HS_BOL;
        else
            st = HS_MID;
    }
    h->st = st;
}

void
hdr_scan_feed_evbuffer(struct hdr_scan *h, struct evbuffer *src, size_t n)
{
    struct evbuffer_ptr pos;
    struct evbuffer_iovec v;
    if (evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET) < 0)
        return;
    /* Usually done within the first chain: the header is short. */
    while (n > 0 && !h->done && evbuffer_peek(src, -1, &pos, &v, 1) > 0) {
        size_t take = v.iov_len < n ? v.iov_len : n;
        if (take == 0)
            break;
        hdr_scan_feed(h, v.iov_base, take);
        n -= take;
        if (evbuffer_ptr_set(src, &pos, take, EVBUFFER_PTR_ADD) < 0)
            break;
    }
}

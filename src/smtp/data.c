/*
 * DATA / BDAT decoder and the DATA encoder (dot-stuffing). The decoder is a
 * byte-at-a-time state machine, so the result never depends on how the input
 * was split into reads. Invariant: a line start is only the very start of the
 * data or the byte after CRLF; a bare CR or LF is message content, flagged in
 * bad_eol, and never a line end (RFC 5321 §2.3.8, §4.1.1.4; SMTP smuggling).
 */
#include "data.h"

#include <limits.h>
#include <string.h>

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
smtp_data_init(struct smtp_data_dec *d, enum smtp_data_mode mode)
{
    memset(d, 0, sizeof(*d));
    d->mode = mode;
    d->state = mode == SMTP_DATA_DOT ? ST_BOL : ST_TEXT;
}

/* One more octet of line content. RFC 5321 §4.5.3.1.6: 1000 octets with
 * CRLF, not counting a stuffing dot. */
static void
count_octet(struct smtp_data_dec *d)
{
    if (d->line_len < SIZE_MAX)
        d->line_len++;
    if (d->line_len > SMTP_TEXT_LINE_MAX - 2)
        d->too_long = true;
}

/* A byte inside a line (or at a line start that is not a dot). */
static void
text_byte(struct smtp_data_dec *d, unsigned char c, char **w)
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
after_cr(struct smtp_data_dec *d, unsigned char c, char **w)
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
step(struct smtp_data_dec *d, unsigned char c, char **w)
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
        tern_panic("smtp_data: bad state %d", d->state);
    }
}

long
smtp_data_feed(struct smtp_data_dec *d, const char *in, size_t len, struct buf *out)
{
    const unsigned char *p = (const unsigned char *)in;
    char *start, *w;
    size_t i;

    TERN_ASSERT(len <= LONG_MAX);
    if (d->ended)
        return 0;
    /* Output is at most the input plus one held-back CR from before. */
    if (len == SIZE_MAX || buf_reserve(out, len + 1) < 0)
        return -1;
    start = w = out->data + out->len;
    for (i = 0; i < len && !d->ended; i++)
        step(d, p[i], &w);
    out->len += (size_t)(w - start);
    out->data[out->len] = '\0';
    d->out_bytes += (uint64_t)(w - start);
    return (long)i;
}

bool
smtp_data_finish_bdat(struct smtp_data_dec *d, struct buf *out)
{
    TERN_ASSERT(d->mode == SMTP_DATA_BDAT);
    if (d->state == ST_TEXT && d->line_len == 0)
        return false; /* empty message or one ending with CRLF */
    if (d->state == ST_CR) {
        /* The message ends with a CR that no LF followed: a bare CR. */
        d->bad_eol = true;
        count_octet(d);
    }
    if (buf_append(out, "\r\n", 2) < 0)
        tern_panic("smtp_data_finish_bdat: buffer overflow");
    d->out_bytes += 2;
    d->line_len = 0;
    d->state = ST_TEXT;
    return true;
}

/*
 * A '.' is doubled at the start and after every CR or LF. For CRLF-only
 * input this is exactly "at a line start", so decoding gives the input back;
 * stuffing after a bare CR or LF too protects a next hop that (wrongly)
 * takes them for line ends. *at_line_start is "the last byte was CR or LF".
 */
int
smtp_data_stuff(const char *in, size_t len, bool *at_line_start, struct buf *out)
{
    size_t i, run = 0;
    for (i = 0; i < len; i++) {
        if (in[i] == '.' && *at_line_start) {
            if (buf_append(out, in + run, i - run) < 0 || buf_append_char(out, '.') < 0)
                return -1;
            run = i;
        }
        *at_line_start = in[i] == '\r' || in[i] == '\n';
    }
    return buf_append(out, in + run, len - run);
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

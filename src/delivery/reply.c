/*
 * Pure parsers for the SMTP client: multi-line replies (RFC 5321 §4.2.1),
 * RFC 3463 enhanced status codes at the start of reply text, and EHLO
 * keywords. No I/O and no allocation; every length is bounded by the caller's
 * line limit and by STATUS_TEXT_MAX.
 */
#include "delivery/delivery_int.h"

#include <stdio.h>
#include <string.h>

#include "util/parse.h"

void
reply_reset(struct reply_acc *a)
{
    memset(a, 0, sizeof(*a));
}

/* Count 1..3 digits at s[*i]; 0 when none or more than three. */
static size_t
digits_1_3(const char *s, size_t len, size_t *i)
{
    size_t n = 0;
    while (*i < len && s[*i] >= '0' && s[*i] <= '9') {
        (*i)++;
        if (++n > 3)
            return 0;
    }
    return n;
}

size_t
reply_esc_len(const char *s, size_t len, int cls)
{
    size_t i = 0;
    /* RFC 3463 §2: class "." subject "." detail, subject and detail 1*3digit. */
    if (len < 5 || s[0] != (char)('0' + cls) || (cls != 2 && cls != 4 && cls != 5))
        return 0;
    if (s[1] != '.')
        return 0;
    i = 2;
    if (digits_1_3(s, len, &i) == 0 || i >= len || s[i] != '.')
        return 0;
    i++;
    if (digits_1_3(s, len, &i) == 0)
        return 0;
    if (i < len && s[i] != ' ')
        return 0;
    return i;
}

/* Append text to the joined reply text: control characters (C0, DEL, C1)
 * and bytes that are not part of well-formed UTF-8 become '?', well-formed UTF-8 is kept (an
 * SMTPUTF8 server may answer in UTF-8, RFC 6531 §3.7.4.2; whoever shows the
 * text decides whether it may stay, e.g. the DSN, RFC 6533 §3), lines are
 * joined with one space, the result is cut at the limit between characters. */
static void
text_append(struct reply_acc *a, const char *t, size_t n)
{
    size_t cap = sizeof(a->st.text) - 1;
    if (a->text_len > 0 && a->text_len < cap && n > 0)
        a->st.text[a->text_len++] = ' ';
    for (size_t i = 0; i < n && a->text_len < cap;) {
        unsigned char ch = (unsigned char)t[i];
        size_t ul = ch >= 0x80 ? utf8_seq_len((const unsigned char *)t + i, n - i) : 0;
        if (ul == 2 && ch == 0xc2 && (unsigned char)t[i + 1] < 0xa0) {
            a->st.text[a->text_len++] = '?'; /* a C1 control, U+0080..U+009F */
            i += ul;
            continue;
        }
        if (ul > 0) {
            if (a->text_len + ul > cap)
                break;
            memcpy(a->st.text + a->text_len, t + i, ul);
            a->text_len += ul;
            i += ul;
            continue;
        }
        a->st.text[a->text_len++] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
        i++;
    }
    a->st.text[a->text_len] = '\0';
}

static int
parse_code(const char *line, size_t len)
{
    /* RFC 5321 §4.2: first digit 2..5, second 0..5, third 0..9. */
    if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' ||
        line[2] < '0' || line[2] > '9')
        return -1;
    return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
}

enum reply_feed
reply_feed_line(
    struct reply_acc *a, const char *line, size_t len, const char **text, size_t *text_len)
{
    int code = parse_code(line, len);
    bool last;
    const char *t;
    size_t tl, el;

    if (a->nlines == 0)
        reply_reset(a);
    if (code < 0 || (len > 3 && line[3] != ' ' && line[3] != '-'))
        return REPLY_BAD;
    if (a->nlines > 0 && code != a->st.code)
        return REPLY_BAD;
    if (++a->nlines > DELIV_REPLY_LINES_MAX)
        return REPLY_BAD;
    last = len == 3 || line[3] == ' ';
    t = len > 4 ? line + 4 : line + len;
    tl = len > 4 ? len - 4 : 0;
    *text = t;
    *text_len = tl;
    if (a->nlines == 1) {
        a->st.code = code;
        el = reply_esc_len(t, tl, code / 100);
        if (el > 0 && el < sizeof(a->st.esc)) {
            memcpy(a->st.esc, t, el);
            a->st.esc[el] = '\0';
        }
    }
    /* Later lines usually repeat the enhanced code: drop it from the text. */
    el = a->st.esc[0] != '\0' ? strlen(a->st.esc) : 0;
    if (el > 0 && tl >= el && memcmp(t, a->st.esc, el) == 0 && (tl == el || t[el] == ' ')) {
        t += el;
        tl -= el;
        while (tl > 0 && *t == ' ') {
            t++;
            tl--;
        }
    }
    text_append(a, t, tl);
    if (!last)
        return REPLY_MORE;
    a->nlines = 0;
    a->text_len = 0;
    return REPLY_DONE;
}

/* RFC 4954 §3: "AUTH" SP mechanism list; the pre-standard "AUTH=" form is
 * still sent by some servers. */
static void
ehlo_parse_auth(struct ehlo_ext *e, const char *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t w = i;
        while (w < len && p[w] != ' ')
            w++;
        if (str_ieq(p + i, w - i, "PLAIN"))
            e->auth_plain = true;
        else if (str_ieq(p + i, w - i, "LOGIN"))
            e->auth_login = true;
        i = w;
        while (i < len && p[i] == ' ')
            i++;
    }
}

void
ehlo_parse_line(struct ehlo_ext *e, const char *text, size_t len)
{
    size_t w = 0, vstart;
    uint64_t v;
    while (w < len && text[w] != ' ')
        w++;
    vstart = w;
    while (vstart < len && text[vstart] == ' ')
        vstart++;
    if (str_ieq(text, w, "PIPELINING")) {
        e->pipelining = true;
    } else if (str_ieq(text, w, "8BITMIME")) {
        e->eightbitmime = true;
    } else if (str_ieq(text, w, "BINARYMIME")) {
        e->binarymime = true;
    } else if (str_ieq(text, w, "SMTPUTF8")) {
        e->smtputf8 = true;
    } else if (str_ieq(text, w, "DSN")) {
        e->dsn = true;
    } else if (str_ieq(text, w, "CHUNKING")) {
        e->chunking = true;
    } else if (str_ieq(text, w, "ENHANCEDSTATUSCODES")) {
        e->enhanced = true;
    } else if (str_ieq(text, w, "STARTTLS")) {
        e->starttls = true;
    } else if (str_ieq(text, w, "AUTH")) {
        ehlo_parse_auth(e, text + vstart, len - vstart);
    } else if (w > 5 && str_ieq(text, 5, "AUTH=")) {
        ehlo_parse_auth(e, text + 5, len - 5);
    } else if (str_ieq(text, w, "SIZE")) {
        /* RFC 1870 §4: "SIZE" [SP number]; no number or 0 = no fixed limit. */
        size_t vend = vstart;
        while (vend < len && text[vend] != ' ')
            vend++;
        if (vend == vstart) {
            e->size = true;
            e->size_max = 0;
        } else if (parse_u64(text + vstart, vend - vstart, UINT64_MAX, &v) == 0) {
            e->size = true;
            e->size_max = v;
        }
    }
}

/* ---- log fields ---- */

static void
secs(int64_t ms, char *out, size_t cap)
{
    int64_t cs = ms < 0 ? 0 : (ms + 5) / 10; /* rounded to hundredths */
    snprintf(out, cap, "%lld.%02lld", (long long)(cs / 100), (long long)(cs % 100));
}

void
delivery_format_delays(
    int64_t total_ms, const struct delivery_rcpt_result *r, char *out, size_t cap)
{
    char a[32], b[32], c[32], d[32];
    int64_t wait = total_ms - r->setup_ms - r->tls_ms - r->xfer_ms;
    secs(wait, a, sizeof(a));
    secs(r->setup_ms, b, sizeof(b));
    secs(r->tls_ms, c, sizeof(c));
    secs(r->xfer_ms, d, sizeof(d));
    snprintf(out, cap, "%s/%s/%s/%s", a, b, c, d);
}

void
delivery_format_dsn(const struct tern_status *st, char *out, size_t cap)
{
    int cls = st->code / 100;
    if (st->esc[0] != '\0')
        snprintf(out, cap, "%s", st->esc);
    else
        snprintf(out, cap, "%d.0.0", cls == 2 || cls == 4 || cls == 5 ? cls : 4);
}

/*
 * libFuzzer target: the delivery client's reply parsers (src/delivery/
 * reply.c) on what a hostile next hop sends. Byte 0 picks the mode; the rest
 * is reply text, cut into lines at LF (a CR before it dropped) as the client
 * does. Mode 0: reply_feed_line over the lines, with ehlo_parse_line on
 * every line but a reply's first, as during EHLO. Mode 1: reply_esc_len on
 * each line for every class. Invariants: the accept/reject decision of
 * reply_feed_line matches RFC 5321 §4.2 as written below; a complete reply
 * has a code in range, an enhanced code only when it is a well-formed one of
 * the reply's class, and text of printable ASCII and well-formed UTF-8
 * without controls; the borrowed text lies inside the line; EHLO parsing is
 * idempotent; reply_esc_len finds exactly RFC 3463 §2 class.subject.detail
 * followed by a space or the end.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "delivery/delivery_int.h"
#include "fuzz_check.h"
#include "util/parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The reference: an RFC 5321 §4.2 reply line, "Reply-code [SP / -] text". */
static int
ref_code(const char *l, size_t n)
{
    if (n < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '5' || !is_digit(l[2]))
        return -1;
    if (n > 3 && l[3] != ' ' && l[3] != '-')
        return -1;
    return (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
}

/* 1*3DIGIT at s[*i]; false when none or more than three. */
static bool
ref_digits(const char *s, size_t n, size_t *i)
{
    size_t start = *i;
    while (*i < n && is_digit(s[*i]))
        (*i)++;
    return *i > start && *i - start <= 3;
}

/* The reference RFC 3463 §2 code: class "." subject "." detail. */
static size_t
ref_esc_len(const char *s, size_t n, int cls)
{
    size_t i = 2;
    if ((cls != 2 && cls != 4 && cls != 5) || n < 5 || s[0] != '0' + cls || s[1] != '.')
        return 0;
    if (!ref_digits(s, n, &i) || i >= n || s[i] != '.')
        return 0;
    i++;
    if (!ref_digits(s, n, &i))
        return 0;
    return i == n || s[i] == ' ' ? i : 0;
}

static void
check_done(const struct reply_acc *a, int first_code)
{
    const struct tern_status *st = &a->st;
    size_t el = strnlen(st->esc, sizeof(st->esc));
    size_t tl = strnlen(st->text, sizeof(st->text));
    CHECK(st->code == first_code);
    CHECK(el < sizeof(st->esc) && tl < sizeof(st->text));
    CHECK(el == 0 || ref_esc_len(st->esc, el, st->code / 100) == el);
    /* Printable ASCII or well-formed UTF-8 (RFC 6531 §3.7.4.2), never a C1
     * control (U+0080..U+009F). */
    for (size_t i = 0; i < tl;) {
        const unsigned char *u = (const unsigned char *)st->text + i;
        size_t k = u[0] < 0x80 ? 1 : utf8_seq_len(u, tl - i);
        CHECK(k > 0);
        CHECK(k > 1 || (u[0] >= 0x20 && u[0] < 0x7f));
        CHECK(!(u[0] == 0xc2 && u[1] < 0xa0));
        i += k;
    }
}

static void
check_ehlo(const char *t, size_t n, struct ehlo_ext *e)
{
    struct ehlo_ext again;
    ehlo_parse_line(e, t, n);
    again = *e;
    ehlo_parse_line(&again, t, n);
    CHECK(memcmp(&again, e, sizeof(again)) == 0);
    CHECK(e->size || e->size_max == 0);
}

static void
feed_lines(const char *p, size_t n)
{
    struct reply_acc a;
    struct ehlo_ext ext;
    int first = -1; /* code of the reply in progress */
    size_t lines = 0;
    memset(&ext, 0, sizeof(ext));
    reply_reset(&a);
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t len = nl ? (size_t)(nl - p) : n, tl;
        size_t take = nl ? len + 1 : n;
        const char *text = NULL;
        int code;
        enum reply_feed r;
        if (len > 0 && p[len - 1] == '\r')
            len--;
        if (len > DELIV_REPLY_LINE_MAX)
            return; /* the client drops the connection */
        code = ref_code(p, len);
        r = reply_feed_line(&a, p, len, &text, &tl);
        lines++;
        if (code < 0 || (first >= 0 && code != first) || lines > DELIV_REPLY_LINES_MAX) {
            CHECK(r == REPLY_BAD);
            return; /* so does a malformed reply */
        }
        CHECK(r != REPLY_BAD);
        CHECK(text >= p && text + tl <= p + len);
        if (first < 0)
            first = code;
        else
            check_ehlo(text, tl, &ext);
        if (len == 3 || p[3] == ' ') {
            CHECK(r == REPLY_DONE && a.nlines == 0);
            check_done(&a, first);
            first = -1;
            lines = 0;
        } else {
            CHECK(r == REPLY_MORE && a.nlines == lines);
        }
        p += take;
        n -= take;
    }
}

static void
esc_lines(const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t len = nl ? (size_t)(nl - p) : n;
        for (int cls = 0; cls <= 6; cls++)
            CHECK(reply_esc_len(p, len, cls) == ref_esc_len(p, len, cls));
        p += nl ? len + 1 : len;
        n -= nl ? len + 1 : len;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy;
    if (size < 1)
        return 0;
    /* A heap copy of exactly the input: reads past it are caught. */
    copy = malloc(size - 1 ? size - 1 : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data + 1, size - 1);
    if (data[0] & 1)
        esc_lines(copy, size - 1);
    else
        feed_lines(copy, size - 1);
    free(copy);
    return 0;
}

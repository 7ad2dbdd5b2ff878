/*
 * libFuzzer target for the parsers that read DNS and header text from the
 * outside world: SPF records and macro-strings (RFC 7208), the From: field
 * reader that picks the DKIM key, header canonicalization and the streaming
 * body canonicalizer (RFC 6376). The first input byte picks the parser; the
 * rest is the text. Invariants are checked with abort().
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dkim/dkim.h"
#include "spf/spf_int.h"
#include "util/buf.h"

static void
count_out(const void *p, size_t n, void *arg)
{
    *(size_t *)arg += n;
}

static void
fuzz_spf(const char *s, size_t n)
{
    struct spf_record rec;
    char err[256];
    struct buf out = BUF_INIT;
    struct spf_macro_env env = { "user@example.com", "user", "example.com", "example.com",
        "192.0.2.3", "unknown", "in-addr", "helo.example", "192.0.2.3", "relay.example", "0" };
    memset(&rec, 0, sizeof(rec));
    if (spf_record_parse(s, n, &rec, err, sizeof(err)) == 0) {
        /* Every term borrows from the record it came from. */
        for (size_t i = 0; i < rec.n; i++) {
            const struct spf_term *t = &rec.terms[i];
            if (t->spec && (t->spec < s || t->spec + t->spec_len > s + n))
                abort();
        }
    }
    spf_record_fini(&rec);
    for (int ctx = SPF_MACRO_DOMAIN; ctx <= SPF_MACRO_EXP; ctx++) {
        bool valid = spf_macro_valid(s, n, (enum spf_macro_ctx)ctx, NULL);
        buf_reset(&out);
        int rc = spf_macro_expand(s, n, &env, (enum spf_macro_ctx)ctx, 4096, &out);
        if (rc == 0 && out.len > 4096)
            abort(); /* the bound is the bound */
        (void)valid;
    }
    buf_fini(&out);
}

static void
fuzz_dkim(const char *s, size_t n)
{
    char dom[256];
    struct buf out = BUF_INIT;
    struct dkim_body b;
    size_t total = 0;
    if (dkim_from_domain(s, n, dom, sizeof(dom)) == 0 && strlen(dom) >= sizeof(dom))
        abort();
    /* The header splitter only hands over fields that have a colon (the
     * function asserts it). */
    if (memchr(s, ':', n) != NULL) {
        dkim_canon_header(DKIM_CANON_RELAXED, s, n, &out);
        dkim_canon_header(DKIM_CANON_SIMPLE, s, n, &out);
    }
    buf_fini(&out);
    for (int c = 0; c < 2; c++) {
        total = 0;
        dkim_body_init(&b, c ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE, count_out, &total);
        /* Feed in two pieces: the result must not depend on the split. */
        dkim_body_feed(&b, s, n / 2);
        dkim_body_feed(&b, s + n / 2, n - n / 2);
        dkim_body_end(&b);
        size_t split = total;
        total = 0;
        dkim_body_init(&b, c ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE, count_out, &total);
        dkim_body_feed(&b, s, n);
        dkim_body_end(&b);
        if (split != total)
            abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fuzz_spf((const char *)data + 1, size - 1);
    else
        fuzz_dkim((const char *)data + 1, size - 1);
    return 0;
}

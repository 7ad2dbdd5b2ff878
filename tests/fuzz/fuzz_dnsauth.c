/*
 * libFuzzer target for the parsers that read DNS and header text from the
 * outside world: SPF records and macro-strings (RFC 7208), the From: field
 * reader that picks the DKIM key, header canonicalization and the streaming
 * body canonicalizer (RFC 6376); the inbound checks' DKIM verifier (a header
 * section and body, with the text as every key record), DKIM key record and
 * DMARC record parsers. The first input byte picks the parser; the rest is
 * the text. Invariants are checked with abort().
 */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dkim/dkim.h"
#include "dkim/dkim_int.h"
#include "dmarc/dmarc.h"
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

/* The text up to the first NUL is the message (header section, empty line,
 * body); what follows is the key record handed for every signature. */
static void
fuzz_verify(const char *s, size_t n)
{
    const char *nul = memchr(s, '\0', n);
    size_t ml = nul ? (size_t)(nul - s) : n;
    const char *key = nul ? nul + 1 : "";
    size_t kl = nul ? n - ml - 1 : 0;
    const char *sep = memmem(s, ml, "\r\n\r\n", 4);
    size_t hl = sep ? (size_t)(sep - s) + 2 : ml;
    struct dkim_verifier *v = dkim_verifier_new(s, hl, 1800000000);
    struct dkim_key_record kr;
    struct dmarc_record dr;
    if (dkim_verifier_count(v) > DKIM_VERIFY_SIGS_MAX)
        abort();
    for (size_t i = 0; i < dkim_verifier_count(v); i++) {
        char name[300];
        if (dkim_verifier_key_name(v, i, name, sizeof(name)))
            dkim_verifier_key(v, i, i % 3 == 2 ? DKIM_KEY_TEMP : DKIM_KEY_OK, key, kl);
    }
    if (sep != NULL) {
        dkim_verifier_body(v, sep + 4, (ml - hl - 2) / 2);
        dkim_verifier_body(v, sep + 4 + (ml - hl - 2) / 2, ml - hl - 2 - (ml - hl - 2) / 2);
    }
    dkim_verifier_finish(v);
    for (size_t i = 0; i < dkim_verifier_count(v); i++) {
        const struct dkim_sig_info *si = dkim_verifier_sig(v, i);
        if (strlen(si->b8) > 8 || (si->result == DKIM_V_PASS && si->domain[0] == '\0'))
            abort();
    }
    dkim_verifier_free(v);
    for (int alg = 0; alg < 2; alg++) {
        if (dkim_key_record_parse(key, kl, (enum dkim_alg)alg, &kr) == 0)
            EVP_PKEY_free((EVP_PKEY *)kr.key);
    }
    if (dmarc_record_parse(s, ml, &dr) == 0 && dr.pct > 100)
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fuzz_spf((const char *)data + 1, size - 1);
    else if (data[0] & 2)
        fuzz_verify((const char *)data + 1, size - 1);
    else
        fuzz_dkim((const char *)data + 1, size - 1);
    return 0;
}

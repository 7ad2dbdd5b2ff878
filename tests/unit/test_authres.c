/*
 * Unit tests of the inbound checks' pure parts: DKIM verification
 * (src/dkim/verify.c) against messages signed by dkimpy in every
 * canonicalization with RSA and Ed25519 keys (dkim_fixtures.h, made by
 * gen_dkim_fixtures.py), tampered bodies and headers, bad signatures and
 * key records, and tern's own signer; the DMARC record parser, alignment
 * and policy (src/dmarc); the Authentication-Results rendering.
 */
#include <setjmp.h> /* cmocka.h needs these first */
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dkim/dkim.h"
#include "dkim/dkim_int.h"
#include "dkim_fixtures.h"
#include "dmarc/dmarc.h"
#include "smtp/smtp_int.h"
#include "util/parse.h"
#include "util/util.h"

#define NOW 1800000000 /* seconds: after the fixtures were signed */

/* Verify msg (header + empty line + body) with the key record rec for
 * every signature, feeding the body in chunks of step bytes; the result of
 * signature 0. */
static enum dkim_vresult
verify(const char *msg, size_t len, const char *rec, size_t step, const struct dkim_sig_info **out)
{
    static struct dkim_verifier *v;
    const char *sep = strstr(msg, "\r\n\r\n");
    size_t hl;
    assert_non_null(sep);
    hl = (size_t)(sep - msg) + 2;
    dkim_verifier_free(v);
    v = dkim_verifier_new(msg, hl, NOW);
    for (size_t i = 0; i < dkim_verifier_count(v); i++) {
        char name[256];
        if (dkim_verifier_key_name(v, i, name, sizeof(name)))
            dkim_verifier_key(
                v, i, rec ? DKIM_KEY_OK : DKIM_KEY_NONE, rec ? rec : "", rec ? strlen(rec) : 0);
    }
    for (size_t off = hl + 2; off < len; off += step)
        dkim_verifier_body(v, msg + off, len - off < step ? len - off : step);
    dkim_verifier_finish(v);
    if (dkim_verifier_count(v) == 0)
        return DKIM_V_NONE;
    if (out != NULL)
        *out = dkim_verifier_sig(v, 0);
    return dkim_verifier_sig(v, 0)->result;
}

static const char *
record_for(const char *name)
{
    return strncmp(name, "ed25519", 7) == 0 ? fx_ed_record : fx_rsa_record;
}

static void
test_dkimpy_fixtures_pass(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(fx_signed); i++) {
        const char *m = fx_signed[i].msg;
        const struct dkim_sig_info *si = NULL;
        for (size_t step = 1; step < 100000; step = step * 7 + 3) {
            enum dkim_vresult r = verify(m, strlen(m), record_for(fx_signed[i].name), step, &si);
            if (r != DKIM_V_PASS)
                fail_msg("%s (step %zu): %s (%s)", fx_signed[i].name, step, dkim_vresult_name(r),
                    si->reason ? si->reason : "");
        }
        assert_string_equal(si->domain, "example.com");
        assert_int_equal(strlen(si->b8), 8);
    }
}

/* A copy of m with the first occurrence of from replaced by to. */
static char *
edit(const char *m, const char *from, const char *to)
{
    const char *at = strstr(m, from);
    char *out;
    assert_non_null(at);
    out = xmalloc(strlen(m) + strlen(to) + 1);
    memcpy(out, m, (size_t)(at - m));
    strcpy(out + (at - m), to);
    strcat(out, at + strlen(from));
    return out;
}

static void
test_tampering_fails(void **state)
{
    static const struct {
        const char *from, *to;
        const char *why;
    } edits[] = {
        { "bye\r\n", "bye!\r\n", "body hash mismatch" },
        { "Hello  Bob", "Hello  Eve", "body hash mismatch" },
        { "To: bob@example.net", "To: eve@example.net", "signature does not verify" },
        { "Message-ID: <fixture", "Message-ID: <fixturf", "signature does not verify" },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(fx_signed); i++) {
        for (size_t e = 0; e < TERN_ARRAY_LEN(edits); e++) {
            const struct dkim_sig_info *si = NULL;
            char *m = edit(fx_signed[i].msg, edits[e].from, edits[e].to);
            enum dkim_vresult r = verify(m, strlen(m), record_for(fx_signed[i].name), 64, &si);
            if (r != DKIM_V_FAIL || strcmp(si->reason, edits[e].why) != 0)
                fail_msg("%s, edit %zu: %s (%s)", fx_signed[i].name, e, dkim_vresult_name(r),
                    si->reason ? si->reason : "");
            free(m);
        }
    }
}

/* Whitespace changes that relaxed canonicalization forgives and simple
 * does not. */
static void
test_canonicalization_matters(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(fx_signed); i++) {
        const char *name = fx_signed[i].name;
        bool relaxed_b = strstr(name, "/relaxed") != NULL || strstr(name, "l=") != NULL;
        bool relaxed_h = strstr(name, "relaxed/") != NULL || strstr(name, "l=") != NULL;
        char *m = edit(fx_signed[i].msg, "Hello  Bob,", "Hello Bob,");
        enum dkim_vresult r = verify(m, strlen(m), record_for(name), 4096, NULL);
        assert_int_equal(r, relaxed_b ? DKIM_V_PASS : DKIM_V_FAIL);
        free(m);
        m = edit(fx_signed[i].msg, "Subject:  a  folded", "Subject: a folded");
        r = verify(m, strlen(m), record_for(name), 4096, NULL);
        assert_int_equal(r, relaxed_h ? DKIM_V_PASS : DKIM_V_FAIL);
        free(m);
    }
}

static void
test_length_tag(void **state)
{
    const char *m = fx_signed[TERN_ARRAY_LEN(fx_signed) - 1].msg;
    const struct dkim_sig_info *si = NULL;
    char *more;
    (void)state;
    assert_non_null(strstr(m, " l="));
    more = xmalloc(strlen(m) + 64);
    /* Content after l= (an attacker's addition): not a pass. */
    strcpy(more, m);
    strcat(more, "Click here\r\n");
    assert_int_equal(verify(more, strlen(more), fx_rsa_record, 64, &si), DKIM_V_POLICY);
    free(more);
}

static void
test_key_problems(void **state)
{
    const char *m = fx_signed[0].msg; /* rsa-sha256 simple/simple */
    const struct dkim_sig_info *si = NULL;
    (void)state;
    assert_int_equal(verify(m, strlen(m), NULL, 64, &si), DKIM_V_PERMERROR);
    assert_int_equal(verify(m, strlen(m), "v=DKIM1; k=rsa; p=", 64, &si), DKIM_V_PERMERROR);
    assert_string_equal(si->reason, "key revoked");
    assert_int_equal(verify(m, strlen(m), fx_ed_record, 64, &si), DKIM_V_PERMERROR);
    assert_int_equal(verify(m, strlen(m), "v=DKIM1; k=rsa; p=AAAA", 64, &si), DKIM_V_PERMERROR);
    assert_int_equal(verify(m, strlen(m), "v=DKIM2; p=AAAA", 64, &si), DKIM_V_PERMERROR);
    assert_int_equal(verify(m, strlen(m), "v=DKIM1; s=tlsrpt; p=AAAA", 64, &si), DKIM_V_PERMERROR);
    assert_string_equal(si->reason, "key record not for email");
}

/* RFC 8301 §3.2: RSA keys under 1024 bits (or over 4096) are refused. */
static void
test_key_sizes(void **state)
{
    static const unsigned bits[] = { 768, 1024 }; /* more would be slow to make */
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(bits); i++) {
        EVP_PKEY *k = EVP_RSA_gen(bits[i]);
        unsigned char *der = NULL;
        int dl = i2d_PUBKEY(k, &der);
        struct buf txt = BUF_INIT;
        struct dkim_key_record kr;
        int rc;
        assert_true(dl > 0);
        buf_append_str(&txt, "v=DKIM1; k=rsa; p=");
        b64_encode(der, (size_t)dl, &txt);
        rc = dkim_key_record_parse(txt.data, txt.len, DKIM_ALG_RSA_SHA256, &kr);
        if (bits[i] >= 1024 && bits[i] <= 4096) {
            assert_int_equal(rc, 0);
            EVP_PKEY_free(kr.key);
        } else {
            assert_int_equal(rc, -1);
            assert_string_equal(kr.reason, "unusable RSA key");
        }
        OPENSSL_free(der);
        EVP_PKEY_free(k);
        buf_fini(&txt);
    }
}

static void
test_signature_problems(void **state)
{
    static const struct {
        const char *sig;
        enum dkim_vresult want;
        const char *why;
    } t[] = {
        { "v=1; a=rsa-sha1; d=example.com; s=rsa; h=from; bh=AAAA; b=AAAA", DKIM_V_NEUTRAL,
            "rsa-sha1 refused (RFC 8301)" },
        { "v=1; a=rsa-sha256; d=example.com; s=rsa; h=to:subject; bh=AAAA; b=AAAA", DKIM_V_NEUTRAL,
            "h= does not include From" },
        { "v=1; a=rsa-sha256; d=example.com; s=rsa; h=from; x=1000; bh=AAAA; b=AAAA",
            DKIM_V_NEUTRAL, "signature expired" },
        { "v=1; a=rsa-sha256; d=example.com; s=rsa; h=from; i=@evil.test; bh=AAAA; b=AAAA",
            DKIM_V_NEUTRAL, "i= not in d=" },
        { "v=1; a=rsa-sha256; d=example.com; s=rsa; h=from; h=to; bh=AAAA; b=AAAA", DKIM_V_NEUTRAL,
            "bad tag list" },
        { "v=1; a=rsa-sha256; d=example.com; h=from; bh=AAAA; b=AAAA", DKIM_V_NEUTRAL,
            "signature lacks a required tag" },
        { "v=1; a=hmac-md5; d=example.com; s=rsa; h=from; bh=AAAA; b=AAAA", DKIM_V_NEUTRAL,
            "unknown algorithm" },
        { "v=1; a=rsa-sha256; d=example.com; s=rsa; h=from; bh=AAAA; b=AAAA", DKIM_V_NEUTRAL,
            "bad b= or bh=" },
        { "v=1; a=rsa-sha256; d=a123456789.b123456789.c123456789.d123456789.e123456789."
          "f123456789.g123456789.h123456789.i123456789.j123456789.k123456789.l123456789."
          "m123456789.n123456789.o123456789.p123456789.q123456789.r123456789.s123456789."
          "t123456789.example.com; "
          "s=selector12345678; h=from; bh=AAAA; b=AAAA",
            DKIM_V_NEUTRAL, "key name too long" },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(t); i++) {
        char m[1024];
        const struct dkim_sig_info *si = NULL;
        snprintf(
            m, sizeof(m), "DKIM-Signature: %s\r\nFrom: a@example.com\r\n\r\nbody\r\n", t[i].sig);
        assert_int_equal(verify(m, strlen(m), fx_rsa_record, 64, &si), t[i].want);
        assert_string_equal(si->reason, t[i].why);
    }
    /* No signature: none. */
    {
        static const char m[] = "From: a@example.com\r\n\r\nx\r\n";
        assert_int_equal(verify(m, strlen(m), fx_rsa_record, 64, NULL), DKIM_V_NONE);
    }
}

/* Many signatures: only DKIM_VERIFY_SIGS_MAX are looked at. */
static void
test_signature_bound(void **state)
{
    struct buf b = BUF_INIT;
    struct dkim_verifier *v;
    (void)state;
    for (int i = 0; i < 50; i++)
        buf_append_str(&b, "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s; h=from; "
                           "bh=AAAA; b=AAAA\r\n");
    buf_append_str(&b, "From: a@example.com\r\n");
    v = dkim_verifier_new(b.data, b.len, NOW);
    assert_int_equal(dkim_verifier_count(v), DKIM_VERIFY_SIGS_MAX);
    dkim_verifier_finish(v);
    dkim_verifier_free(v);
    buf_fini(&b);
}

/* tern's signer and its verifier agree, for both key types. */
static void
test_own_signer_round_trip(void **state)
{
    static const char body[] = "From: A <a@example.com>\r\nSubject: hi\r\n\r\nHello\r\n";
    (void)state;
    for (int alg = 0; alg < 2; alg++) {
        struct buf err = BUF_INIT, out = BUF_INIT, rec = BUF_INIT;
        struct dkim_key *k =
            dkim_key_generate(alg ? DKIM_ALG_ED25519_SHA256 : DKIM_ALG_RSA_SHA256, 1024, &err);
        struct dkim_keyset *ks = dkim_keyset_new();
        struct dkim_sign_opts o = { DKIM_CANON_RELAXED, DKIM_CANON_SIMPLE, NOW - 10 };
        struct dkim_signer *sg;
        struct dkim_outcome res;
        assert_non_null(k);
        assert_int_equal(dkim_key_txt(k, &rec), 0);
        assert_int_equal(dkim_keyset_add_key(ks, "example.com", "sel", k, &err), 0);
        sg = dkim_signer_new(ks, &o);
        dkim_signer_feed(sg, body, strlen(body));
        assert_int_equal(dkim_signer_finish(sg, &out, &res), 1);
        buf_append_str(&out, body);
        assert_int_equal(verify(out.data, out.len, rec.data, 5, NULL), DKIM_V_PASS);
        dkim_signer_free(sg);
        dkim_keyset_unref(ks);
        buf_fini(&out);
        buf_fini(&rec);
        buf_fini(&err);
    }
}

/* ---- DMARC ---- */

static void
test_dmarc_record(void **state)
{
    static const struct {
        const char *txt;
        int rc;
        enum dmarc_policy p, sp;
        bool adkim_s, aspf_s;
        unsigned pct;
    } t[] = {
        { "v=DMARC1; p=reject", 0, DMARC_P_REJECT, DMARC_P_REJECT, false, false, 100 },
        { "v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=20", 0, DMARC_P_QUARANTINE,
            DMARC_P_NONE, true, true, 20 },
        { "v=DMARC1 ; p = none ; pct=150", 0, DMARC_P_NONE, DMARC_P_NONE, false, false, 100 },
        { "v=DMARC1; p=bogus; rua=mailto:r@example.com", 0, DMARC_P_NONE, DMARC_P_NONE, false,
            false, 100 },
        { "v=DMARC1; p=bogus", -1, 0, 0, false, false, 0 },
        { "v=DMARC1; sp=reject", -1, 0, 0, false, false, 0 },
        { "p=reject; v=DMARC1", -1, 0, 0, false, false, 0 },
        { "v=spf1 -all", -1, 0, 0, false, false, 0 },
        { "v=DMARC1; p=reject; adkim=x; fo=1; unknown=tag", 0, DMARC_P_REJECT, DMARC_P_REJECT,
            false, false, 100 },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(t); i++) {
        struct dmarc_record r;
        int rc = dmarc_record_parse(t[i].txt, strlen(t[i].txt), &r);
        if (rc != t[i].rc)
            fail_msg("%s: rc %d", t[i].txt, rc);
        if (rc != 0)
            continue;
        assert_int_equal(r.p, t[i].p);
        assert_int_equal(r.sp, t[i].sp);
        assert_int_equal(r.adkim_strict, t[i].adkim_s);
        assert_int_equal(r.aspf_strict, t[i].aspf_s);
        assert_int_equal(r.pct, t[i].pct);
    }
}

static void
test_dmarc_alignment(void **state)
{
    static const struct {
        const char *id, *from;
        bool strict, want;
    } t[] = {
        { "example.com", "example.com", true, true },
        { "EXAMPLE.com", "example.com", true, true },
        { "mail.example.com", "example.com", false, true },
        { "mail.example.com", "example.com", true, false },
        { "example.com", "news.example.com", false, true },
        { "a.example.co.uk", "b.example.co.uk", false, true },
        { "example.co.uk", "other.co.uk", false, false },
        { "evil.test", "example.com", false, false },
        { "", "example.com", false, false },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(t); i++) {
        if (dmarc_aligned(t[i].id, t[i].from, t[i].strict) != t[i].want)
            fail_msg("%s vs %s (%s)", t[i].id, t[i].from, t[i].strict ? "strict" : "relaxed");
    }
}

static void
test_dmarc_org_domain(void **state)
{
    static const char *const t[][2] = {
        { "example.com", "example.com" },
        { "a.b.example.com", "example.com" },
        { "mail.example.co.uk", "example.co.uk" },
        { "co.uk", "co.uk" },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(t); i++) {
        char out[DMARC_DOMAIN_MAX + 1];
        assert_int_equal(dmarc_org_domain(t[i][0], out, sizeof(out)), 0);
        assert_string_equal(out, t[i][1]);
    }
}

static void
test_dmarc_policy(void **state)
{
    struct dmarc_record r = { DMARC_P_REJECT, DMARC_P_QUARANTINE, false, false, 50 };
    (void)state;
    assert_int_equal(dmarc_applied_policy(&r, "example.com", "example.com", 10), DMARC_P_REJECT);
    assert_int_equal(dmarc_applied_policy(&r, "example.com", "example.com", 60),
        DMARC_P_QUARANTINE); /* out of the sample: one step milder */
    assert_int_equal(dmarc_applied_policy(&r, "a.example.com", "example.com", 10),
        DMARC_P_QUARANTINE); /* sp= for a subdomain */
    assert_int_equal(dmarc_applied_policy(&r, "a.example.com", "example.com", 99), DMARC_P_NONE);
}

/* ---- Authentication-Results ---- */

static void
test_authres_render(void **state)
{
    const char *r[] = { "spf=pass smtp.mailfrom=user@example.com",
        "dkim=pass header.d=example.com header.s=sel header.b=abcdEFGH",
        "dkim=fail (body hash mismatch) header.d=a-rather-long-domain-name.example.org "
        "header.s=selector2024 header.b=zyxwVUTS",
        "dmarc=pass (p=reject dis=none) header.from=example.com" };
    struct buf b = BUF_INIT;
    const char *p;
    (void)state;
    smtp_authres_render("mx.example.net", r, 4, &b);
    assert_string_equal(b.data,
        "Authentication-Results: mx.example.net; spf=pass\r\n"
        "\tsmtp.mailfrom=user@example.com; dkim=pass header.d=example.com header.s=sel\r\n"
        "\theader.b=abcdEFGH; dkim=fail (body hash mismatch)\r\n"
        "\theader.d=a-rather-long-domain-name.example.org header.s=selector2024\r\n"
        "\theader.b=zyxwVUTS; dmarc=pass (p=reject dis=none) header.from=example.com\r\n");
    for (p = b.data; *p != '\0';) {
        size_t n = strcspn(p, "\r");
        assert_true(n <= 78);
        p += n + 2;
    }
    buf_reset(&b);
    smtp_authres_render("mx.example.net", NULL, 0, &b);
    assert_string_equal(b.data, "Authentication-Results: mx.example.net; none\r\n");
    buf_fini(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dkimpy_fixtures_pass),
        cmocka_unit_test(test_tampering_fails),
        cmocka_unit_test(test_canonicalization_matters),
        cmocka_unit_test(test_length_tag),
        cmocka_unit_test(test_key_problems),
        cmocka_unit_test(test_key_sizes),
        cmocka_unit_test(test_signature_problems),
        cmocka_unit_test(test_signature_bound),
        cmocka_unit_test(test_own_signer_round_trip),
        cmocka_unit_test(test_dmarc_record),
        cmocka_unit_test(test_dmarc_alignment),
        cmocka_unit_test(test_dmarc_org_domain),
        cmocka_unit_test(test_dmarc_policy),
        cmocka_unit_test(test_authres_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * The DKIM signer of one message (RFC 6376 §5): the header section is kept
 * (at most DKIM_HEADER_MAX bytes), the body is canonicalized and hashed as
 * it streams. At the end of the header section the From domain picks the
 * keys; without one the signer goes idle. dkim_signer_finish makes one
 * DKIM-Signature per key (rsa-sha256, or ed25519-sha256 per RFC 8463 §3:
 * PureEdDSA over the SHA-256 hash of the canonicalized header data).
 */
#include "dkim/dkim_int.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/parse.h"
#include "util/util.h"

#define LINE_MAX_CHARS 78   /* RFC 5322 §2.1.1 */
#define SIG_MAX        1024 /* bytes of a signature (RSA-4096: 512) */

enum signer_state { SG_HEADER, SG_BODY, SG_IDLE, SG_DONE };

/* Header end scanner states: at a line start, after a CR at a line start,
 * inside a line, after a CR inside a line. */
enum { HS_BOL, HS_BOL_CR, HS_MID, HS_MID_CR };

struct dkim_signer {
    struct dkim_keyset *ks; /* owned reference */
    struct dkim_sign_opts o;
    enum signer_state st;
    int hs;
    struct buf hdr; /* the header section, each field with its CRLF */
    struct dkim_hdr fields;
    char domain[DKIM_DOMAIN_MAX + 1];
    size_t keys[DKIM_SIGS_MAX], n_keys;
    EVP_MD_CTX *bh; /* body hash */
    struct dkim_body body;
    const char *reason;
    bool problem;
};

static void
go_idle(struct dkim_signer *s, const char *reason, bool problem)
{
    s->st = SG_IDLE;
    s->reason = reason;
    s->problem = problem;
    buf_fini(&s->hdr);
    dkim_hdr_fini(&s->fields);
}

static void
hash_out(const void *p, size_t n, void *arg)
{
    struct dkim_signer *s = arg;
    if (EVP_DigestUpdate(s->bh, p, n) != 1)
        tern_panic("EVP_DigestUpdate failed");
}

/* The header section is complete: choose the keys, start the body hash. */
static void
header_done(struct dkim_signer *s)
{
    const char *v;
    size_t vn, count, from;
    if (dkim_hdr_parse(&s->fields, s->hdr.data ? s->hdr.data : "", s->hdr.len) < 0) {
        go_idle(s, "malformed header section", true);
        return;
    }
    from = dkim_hdr_find(&s->fields, "from", &count);
    if (from == DKIM_NO_FIELD) {
        go_idle(s, count == 0 ? "no From field" : "more than one From field", true);
        return;
    }
    dkim_hdr_value(&s->fields, from, &v, &vn);
    if (dkim_from_domain(v, vn, s->domain, sizeof(s->domain)) < 0) {
        go_idle(s, "From field has not exactly one address with a domain", true);
        return;
    }
    s->n_keys = dkim_keyset_select(s->ks, s->domain, s->keys, DKIM_SIGS_MAX);
    if (s->n_keys == 0) {
        go_idle(s, "no key for the From domain", false);
        return;
    }
    s->bh = EVP_MD_CTX_new();
    if (s->bh == NULL || EVP_DigestInit_ex(s->bh, EVP_sha256(), NULL) != 1)
        tern_panic("EVP_DigestInit_ex(sha256) failed");
    dkim_body_init(&s->body, s->o.body_canon, hash_out, s);
    s->st = SG_BODY;
}

struct dkim_signer *
dkim_signer_new(struct dkim_keyset *ks, const struct dkim_sign_opts *o)
{
    struct dkim_signer *s = xcalloc(1, sizeof(*s));
    TERN_ASSERT(dkim_keyset_count(ks) > 0);
    s->ks = dkim_keyset_ref(ks);
    s->o = *o;
    s->st = SG_HEADER;
    s->hs = HS_BOL;
    return s;
}

/* Scan p[n] for the empty line ending the header section; returns how
 * many bytes belong to the header (with that line), *end when found. */
static size_t
scan_header(struct dkim_signer *s, const char *p, size_t n, bool *end)
{
    int hs = s->hs;
    *end = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (hs == HS_BOL_CR && c == '\n') {
            s->hs = HS_BOL;
            *end = true;
            return i + 1;
        }
        if (c == '\r')
            hs = hs == HS_BOL ? HS_BOL_CR : HS_MID_CR;
        else if (c == '\n' && hs == HS_MID_CR)
            hs = HS_BOL;
        else
            hs = HS_MID;
    }
    s->hs = hs;
    return n;
}

void
dkim_signer_feed(struct dkim_signer *s, const void *data, size_t n)
{
    const char *p = data;
    if (s->st == SG_HEADER) {
        bool end;
        size_t k = scan_header(s, p, n, &end);
        /* +2: the empty line is kept until the end is seen */
        if (s->hdr.len + k > DKIM_HEADER_MAX + 2) {
            go_idle(s, "header section longer than 256 KiB", true);
            return;
        }
        buf_append(&s->hdr, p, k);
        if (!end)
            return;
        s->hdr.len -= 2; /* the empty line is no part of any field */
        p += k;
        n -= k;
        header_done(s);
    }
    if (s->st == SG_BODY && n > 0)
        dkim_body_feed(&s->body, p, n);
}

bool
dkim_signer_idle(const struct dkim_signer *s)
{
    return s->st == SG_IDLE || s->st == SG_DONE;
}

/* --- the DKIM-Signature field --- */

struct fold {
    struct buf *b;
    size_t col; /* characters on the current line */
};

static void
fold_break(struct fold *f)
{
    buf_append(f->b, "\r\n\t", 3);
    f->col = 1;
}

/* A tag (or a piece of one) of n characters: on this line when it fits,
 * else on the next; space says whether a SP separates it from the last. */
static void
fold_put(struct fold *f, const char *w, size_t n, bool space)
{
    if (f->col + (space ? 1 : 0) + n > LINE_MAX_CHARS && f->col > 1) {
        fold_break(f);
    } else if (space) {
        buf_append_char(f->b, ' ');
        f->col++;
    }
    buf_append(f->b, w, n);
    f->col += n;
}

/* The field up to and including "b=" (the form that is hashed). */
static void
sig_field_start(const struct dkim_signer *s, const struct dkim_keyset_entry *e,
    const struct buf *hlist, const char *bh, struct buf *out)
{
    struct fold f = { out, 0 };
    struct buf t = BUF_INIT;
    const char *hc = s->o.header_canon == DKIM_CANON_RELAXED ? "relaxed" : "simple";
    const char *bc = s->o.body_canon == DKIM_CANON_RELAXED ? "relaxed" : "simple";
    size_t i = 0;
    buf_append_str(out, "DKIM-Signature:");
    f.col = out->len;
    fold_put(&f, "v=1;", 4, true);
    buf_printf(&t, "a=%s;", e->key->alg == DKIM_ALG_RSA_SHA256 ? "rsa-sha256" : "ed25519-sha256");
    fold_put(&f, t.data, t.len, true);
    buf_reset(&t);
    buf_printf(&t, "c=%s/%s;", hc, bc);
    fold_put(&f, t.data, t.len, true);
    buf_reset(&t);
    buf_printf(&t, "d=%s;", e->domain);
    fold_put(&f, t.data, t.len, true);
    buf_reset(&t);
    buf_printf(&t, "s=%s;", e->selector);
    fold_put(&f, t.data, t.len, true);
    buf_reset(&t);
    buf_printf(&t, "t=%lld;", (long long)s->o.timestamp);
    fold_put(&f, t.data, t.len, true);
    /* h=: a break may come before any ':' (FWS is allowed there, §3.5) */
    while (i < hlist->len) {
        const char *colon = memchr(hlist->data + i + 1, ':', hlist->len - i - 1);
        size_t end = colon ? (size_t)(colon - hlist->data) : hlist->len;
        buf_reset(&t);
        if (i == 0)
            buf_append_str(&t, "h=");
        buf_append(&t, hlist->data + i, end - i);
        if (end == hlist->len)
            buf_append_char(&t, ';');
        fold_put(&f, t.data, t.len, i == 0);
        i = end;
    }
    buf_reset(&t);
    buf_printf(&t, "bh=%s;", bh);
    fold_put(&f, t.data, t.len, true);
    fold_break(&f);
    buf_append_str(out, "b=");
    buf_fini(&t);
}

/* Append the base64 signature to a field ending in "\r\n\tb=", folded. */
static void
sig_field_end(const char *b64, size_t n, struct buf *out)
{
    size_t col = 3, off = 0; /* TAB "b=" */
    while (off < n) {
        size_t k = LINE_MAX_CHARS - col;
        if (k > n - off)
            k = n - off;
        buf_append(out, b64 + off, k);
        off += k;
        if (off < n) {
            buf_append(out, "\r\n\t", 3);
            col = 1;
        }
    }
    buf_append(out, "\r\n", 2);
}

/* Sign data (the canonicalized header fields, then the signature field
 * without its CRLF). 0 ok, -1 on a library failure. */
static int
sign_data(const struct dkim_key *k, const struct buf *data, unsigned char *sig, size_t *siglen)
{
    EVP_MD_CTX *ctx;
    int ok;
    if (k->remote != NULL) {
        /* Both algorithms sign the SHA-256 of the data (RFC 6376 §3.7, RFC
         * 8463 §3): only the digest leaves this process. */
        unsigned char h[32];
        unsigned hl = 0;
        if (EVP_Digest(data->data, data->len, h, &hl, EVP_sha256(), NULL) != 1 || hl != 32)
            return -1;
        *siglen = SIG_MAX;
        return k->remote(k->gen, k->idx, k->alg, h, sig, siglen);
    }
    ctx = EVP_MD_CTX_new();
    TERN_ASSERT(ctx != NULL);
    if (k->alg == DKIM_ALG_RSA_SHA256) {
        ok = EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k->pkey) == 1 &&
             EVP_DigestSignUpdate(ctx, data->data, data->len) == 1 &&
             EVP_DigestSignFinal(ctx, NULL, siglen) == 1 && *siglen <= SIG_MAX &&
             EVP_DigestSignFinal(ctx, sig, siglen) == 1;
    } else {
        /* RFC 8463 §3: Ed25519 signs the SHA-256 of the data, not the data */
        unsigned char h[32];
        unsigned hl = 0;
        ok = EVP_Digest(data->data, data->len, h, &hl, EVP_sha256(), NULL) == 1 &&
             EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->pkey) == 1 &&
             EVP_DigestSign(ctx, sig, siglen, h, hl) == 1;
    }
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok ? 0 : -1;
}

/* One signature with entry e over hdata (canonical signed fields). */
static int
sign_one(const struct dkim_signer *s, const struct dkim_keyset_entry *e, const struct buf *hdata,
    const struct buf *hlist, const char *bh, struct buf *out)
{
    struct buf field = BUF_INIT, data = BUF_INIT, b64 = BUF_INIT;
    unsigned char sig[SIG_MAX];
    size_t siglen = sizeof(sig);
    int rc;
    sig_field_start(s, e, hlist, bh, &field);
    buf_append(&data, hdata->data ? hdata->data : "", hdata->len);
    buf_append(&field, "\r\n", 2); /* canonicalized as a whole field... */
    dkim_canon_header(s->o.header_canon, field.data, field.len, &data);
    field.len -= 2;
    data.len -= 2; /* ...but hashed without its CRLF (§3.7) */
    rc = sign_data(e->key, &data, sig, &siglen);
    if (rc == 0) {
        b64_encode(sig, siglen, &b64);
        buf_append(out, field.data, field.len);
        sig_field_end(b64.data, b64.len, out);
    }
    buf_fini(&field);
    buf_fini(&data);
    buf_fini(&b64);
    return rc;
}

static void
outcome_set(struct dkim_outcome *res, const struct dkim_signer *s)
{
    memset(res, 0, sizeof(*res));
    res->reason = s->reason;
    res->problem = s->problem;
}

size_t
dkim_signer_finish(struct dkim_signer *s, struct buf *out, struct dkim_outcome *res)
{
    struct buf hlist = BUF_INIT, hdata = BUF_INIT, bh = BUF_INIT, sels = BUF_INIT;
    size_t order[DKIM_H_MAX], n_order, n_sigs = 0;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned dl = 0;
    TERN_ASSERT(s->st != SG_DONE);
    if (s->st == SG_HEADER) {
        /* No empty line: all header, empty body. Delivery ends the last
         * line and adds the empty line that ends the header section (RFC
         * 5322 §2.1); sign that form, so that a "simple" signature covers
         * exactly the fields sent (RFC 6376 §3.4.1). */
        if (s->hdr.len > 0 && (s->hdr.len < 2 || s->hdr.data[s->hdr.len - 2] != '\r' ||
                                  s->hdr.data[s->hdr.len - 1] != '\n'))
            buf_append(&s->hdr, "\r\n", 2);
        header_done(s);
    }
    if (s->st != SG_BODY) {
        outcome_set(res, s);
        s->st = SG_DONE;
        return 0;
    }
    dkim_body_end(&s->body);
    if (EVP_DigestFinal_ex(s->bh, digest, &dl) != 1)
        tern_panic("EVP_DigestFinal_ex failed");
    b64_encode(digest, dl, &bh);
    n_order = dkim_hdr_select(&s->fields, &hlist, order);
    for (size_t i = 0; i < n_order; i++) {
        const struct dkim_field *f = order[i] == DKIM_NO_FIELD ? NULL : &s->fields.f[order[i]];
        if (f != NULL)
            dkim_canon_header(s->o.header_canon, s->fields.data + f->off, f->len, &hdata);
    }
    outcome_set(res, s); /* reason NULL: not idle */
    /* d=: the entries of one domain were selected (maybe a parent) */
    snprintf(res->domain, sizeof(res->domain), "%s", s->ks->e[s->keys[0]].domain);
    for (size_t i = 0; i < s->n_keys; i++) {
        const struct dkim_keyset_entry *e = &s->ks->e[s->keys[i]];
        if (sign_one(s, e, &hdata, &hlist, bh.data, out) < 0) {
            res->reason = "signing failed (OpenSSL)";
            res->problem = true;
            continue;
        }
        buf_printf(&sels, "%s%s", n_sigs > 0 ? "," : "", e->selector);
        n_sigs++;
    }
    res->n_sigs = n_sigs;
    snprintf(res->selectors, sizeof(res->selectors), "%s", sels.data ? sels.data : "");
    buf_fini(&sels);
    buf_fini(&hlist);
    buf_fini(&hdata);
    buf_fini(&bh);
    s->st = SG_DONE;
    return n_sigs;
}

void
dkim_signer_free(struct dkim_signer *s)
{
    if (s == NULL)
        return;
    buf_fini(&s->hdr);
    dkim_hdr_fini(&s->fields);
    EVP_MD_CTX_free(s->bh);
    dkim_keyset_unref(s->ks);
    free(s);
}

/*
 * DKIM verification (RFC 6376 §6): every DKIM-Signature of a header section
 * (at most DKIM_VERIFY_SIGS_MAX), rsa-sha256 and ed25519-sha256 (RFC 8463),
 * rsa-sha1 refused (RFC 8301 §3.1). The verifier keeps a copy of the header
 * section; the body streams through one hasher per distinct (canonicalization,
 * l=) pair; the caller looks up the key records and hands them in; the
 * header hashes and the signature checks are made once, at the end.
 */
#include "dkim/dkim_int.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/parse.h"
#include "util/util.h"

#define SIG_B_MAX   1024 /* decoded signature bytes (RSA 4096 is 512) */
#define KEY_P_MAX   1024 /* decoded public key bytes (RSA 4096 SPKI is ~550) */
#define B64_OUT_MAX 1024 /* the most dkim_b64_decode gives: SIG_B_MAX, KEY_P_MAX */
#define TAGS_MAX    32   /* tags of one tag-list */
#define NO_LIMIT    UINT64_MAX
#define SIG_FIELDS  64 /* DKIM-Signature fields looked at; only the first ones are verified */

struct body_hash {
    enum dkim_canon c;
    uint64_t limit;  /* l=, or NO_LIMIT */
    uint64_t hashed; /* canonical bytes hashed */
    uint64_t total;  /* canonical bytes seen */
    EVP_MD_CTX *md;  /* owned */
    struct dkim_body body;
    unsigned char digest[32];
};

struct vsig {
    struct dkim_sig_info info;
    size_t field;               /* index in hdr */
    enum dkim_canon hc, bc;     /* c= */
    uint64_t limit;             /* l= or NO_LIMIT */
    size_t bh_idx;              /* its body hasher */
    unsigned char bh[32];       /* bh= */
    unsigned char b[SIG_B_MAX]; /* b= */
    size_t b_len;
    char *hlist;       /* owned: h=, lowercased */
    char *auid_domain; /* owned: the domain of i= (or d=) */
    EVP_PKEY *key;     /* owned once the key record was good */
    bool decided;      /* info.result is final */
};

struct dkim_verifier {
    char *data; /* owned: the header section */
    size_t len;
    struct dkim_hdr hdr;
    int64_t now_s;
    struct vsig sig[DKIM_VERIFY_SIGS_MAX];
    size_t n_sig;
    struct body_hash bh[DKIM_VERIFY_SIGS_MAX];
    size_t n_bh;
    bool finished;
};

const char *
dkim_vresult_name(enum dkim_vresult r)
{
    static const char *const names[] = { "none", "pass", "fail", "neutral", "policy", "temperror",
        "permerror" };
    return (size_t)r < TERN_ARRAY_LEN(names) ? names[r] : "permerror";
}

/* ---- tag lists (RFC 6376 §3.2) ---- */

static bool
is_fws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Split "n1=v1; n2=v2" into tags, values trimmed of FWS. -1 on bad syntax,
 * a duplicate tag (§3.2: a verifier treats it as an error) or too many. */
int
dkim_tag_list(const char *p, size_t n, struct dkim_tag *t, size_t max, size_t *count)
{
    size_t i = 0, k = 0;
    while (i < n) {
        size_t s, e, vs, ve;
        while (i < n && is_fws(p[i]))
            i++;
        if (i == n)
            break; /* a trailing ';' is allowed */
        s = i;
        while (i < n && (isalnum((unsigned char)p[i]) || p[i] == '_'))
            i++;
        e = i;
        while (i < n && is_fws(p[i]))
            i++;
        if (e == s || i == n || p[i] != '=' || k == max)
            return -1;
        i++;
        vs = i;
        while (i < n && p[i] != ';')
            i++;
        ve = i;
        while (vs < ve && is_fws(p[vs]))
            vs++;
        while (ve > vs && is_fws(p[ve - 1]))
            ve--;
        for (size_t j = 0; j < k; j++) {
            if (t[j].name_len == e - s && memcmp(t[j].name, p + s, e - s) == 0)
                return -1;
        }
        t[k].name = p + s;
        t[k].name_len = e - s;
        t[k].val = p + vs;
        t[k].val_len = ve - vs;
        k++;
        if (i < n)
            i++; /* the ';' */
    }
    *count = k;
    return 0;
}

static const struct dkim_tag *
tag_get(const struct dkim_tag *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (t[i].name_len == strlen(name) && memcmp(t[i].name, name, t[i].name_len) == 0)
            return &t[i];
    }
    return NULL;
}

static bool
tag_is(const struct dkim_tag *t, const char *v)
{
    return t->val_len == strlen(v) && strncasecmp(t->val, v, t->val_len) == 0;
}

int
dkim_b64_decode(const char *p, size_t n, unsigned char *out, size_t cap, size_t *out_len)
{
    /* FWS may fold a value anywhere (RFC 6376 §3.2): the decoder gets
     * the characters without it. A value longer than out can hold needs
     * no look. */
    char buf[4 * ((B64_OUT_MAX + 2) / 3)];
    size_t k = 0;
    *out_len = 0;
    if (cap > B64_OUT_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (is_fws(p[i]))
            continue;
        if (k == sizeof(buf))
            return -1;
        buf[k++] = p[i];
    }
    return k == 0 ? 0 : b64_decode(buf, k, out, cap, out_len); /* p= empty: revoked */
}

/* ---- the key record (RFC 6376 §3.6.1, RFC 8463 §4.2) ---- */

static bool
list_has(const char *p, size_t n, const char *word)
{
    size_t i = 0;
    while (i < n) {
        size_t s, e;
        while (i < n && (is_fws(p[i]) || p[i] == ':'))
            i++;
        s = i;
        while (i < n && p[i] != ':')
            i++;
        e = i;
        while (e > s && is_fws(p[e - 1]))
            e--;
        if (e - s == strlen(word) && strncasecmp(p + s, word, e - s) == 0)
            return true;
    }
    return false;
}

int
dkim_key_record_parse(const char *txt, size_t len, enum dkim_alg alg, struct dkim_key_record *kr)
{
    struct dkim_tag t[TAGS_MAX];
    const struct dkim_tag *v, *k, *h, *p, *s, *f;
    unsigned char der[KEY_P_MAX];
    size_t n, dl;
    memset(kr, 0, sizeof(*kr));
    kr->reason = "bad key record";
    if (memchr(txt, '\0', len) != NULL || dkim_tag_list(txt, len, t, TAGS_MAX, &n) < 0)
        return -1;
    v = tag_get(t, n, "v");
    k = tag_get(t, n, "k");
    h = tag_get(t, n, "h");
    p = tag_get(t, n, "p");
    s = tag_get(t, n, "s");
    f = tag_get(t, n, "t");
    if ((v != NULL && (&t[0] != v || !tag_is(v, "DKIM1"))) || p == NULL)
        return -1; /* §3.6.1: v= first when present; p= required */
    if (h != NULL && !list_has(h->val, h->val_len, "sha256")) {
        kr->reason = "key record h= excludes sha256";
        return -1;
    }
    if (s != NULL && !list_has(s->val, s->val_len, "email") && !list_has(s->val, s->val_len, "*")) {
        kr->reason = "key record not for email";
        return -1;
    }
    if (f != NULL) {
        kr->testing = list_has(f->val, f->val_len, "y");
        kr->strict_i = list_has(f->val, f->val_len, "s");
    }
    if (p->val_len == 0) {
        kr->reason = "key revoked";
        return -1;
    }
    if ((alg == DKIM_ALG_RSA_SHA256 && k != NULL && !tag_is(k, "rsa")) ||
        (alg == DKIM_ALG_ED25519_SHA256 && (k == NULL || !tag_is(k, "ed25519")))) {
        kr->reason = "key type does not match a=";
        return -1;
    }
    if (dkim_b64_decode(p->val, p->val_len, der, sizeof(der), &dl) < 0) {
        kr->reason = "bad key p=";
        return -1;
    }
    if (alg == DKIM_ALG_ED25519_SHA256) {
        kr->key = dl == 32 ? EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, der, dl) : NULL;
    } else {
        const unsigned char *q = der;
        kr->key = d2i_PUBKEY(NULL, &q, (long)dl);
        /* RFC 8301 §3.2: RSA keys under 1024 bits are not to be trusted;
         * over 4096 (what verifiers must handle) they only cost time. */
        if (kr->key != NULL &&
            (!EVP_PKEY_is_a(kr->key, "RSA") || EVP_PKEY_get_bits(kr->key) < DKIM_RSA_BITS_MIN ||
                EVP_PKEY_get_bits(kr->key) > DKIM_RSA_BITS_MAX)) {
            EVP_PKEY_free(kr->key);
            kr->key = NULL;
            kr->reason = "unusable RSA key";
            return -1;
        }
    }
    if (kr->key == NULL) {
        kr->reason = "bad key p=";
        return -1;
    }
    kr->reason = NULL;
    return 0;
}

/* ---- one signature's tags ---- */

static void
decide(struct vsig *s, enum dkim_vresult r, const char *why)
{
    s->info.result = r;
    s->info.reason = why;
    s->decided = true;
}

static bool
copy_domain(const struct dkim_tag *t, char *out, size_t cap)
{
    size_t n = t->val_len;
    if (n > 0 && t->val[n - 1] == '.')
        n--;
    if (n == 0 || n >= cap || n > DKIM_DOMAIN_MAX || !str_is_domain(t->val, n, false))
        return false;
    memcpy(out, t->val, n);
    out[n] = '\0';
    str_lower(out);
    return true;
}

/* The tags but b=, bh= and the key: a= c= d= s= h= i= l= x= (and v=). */
static const char *
sig_tags(struct vsig *s, const struct dkim_tag *t, size_t n, int64_t now_s)
{
    const struct dkim_tag *v = tag_get(t, n, "v"), *a = tag_get(t, n, "a"), *c = tag_get(t, n, "c"),
                          *d = tag_get(t, n, "d"), *sel = tag_get(t, n, "s"),
                          *h = tag_get(t, n, "h"), *i = tag_get(t, n, "i"), *l = tag_get(t, n, "l"),
                          *x = tag_get(t, n, "x"), *q = tag_get(t, n, "q");
    if (v == NULL || !tag_is(v, "1") || a == NULL || d == NULL || sel == NULL || h == NULL ||
        tag_get(t, n, "b") == NULL || tag_get(t, n, "bh") == NULL)
        return "signature lacks a required tag";
    if (!copy_domain(d, s->info.domain, sizeof(s->info.domain)))
        return "bad d=";
    if (sel->val_len == 0 || sel->val_len >= sizeof(s->info.selector) ||
        !str_is_domain(sel->val, sel->val_len, false))
        return "bad s=";
    memcpy(s->info.selector, sel->val, sel->val_len);
    s->info.selector[sel->val_len] = '\0';
    /* The key's name, SEL._domainkey.DOMAIN, must be a DNS name. */
    if (sel->val_len + strlen("._domainkey.") + strlen(s->info.domain) > DKIM_DOMAIN_MAX)
        return "key name too long";
    if (tag_is(a, "rsa-sha256"))
        s->info.alg = DKIM_ALG_RSA_SHA256;
    else if (tag_is(a, "ed25519-sha256"))
        s->info.alg = DKIM_ALG_ED25519_SHA256;
    else if (tag_is(a, "rsa-sha1"))
        return "rsa-sha1 refused (RFC 8301)";
    else
        return "unknown algorithm";
    if (q != NULL && !list_has(q->val, q->val_len, "dns/txt"))
        return "unknown q=";
    s->hc = s->bc = DKIM_CANON_SIMPLE;
    if (c != NULL) {
        const char *slash = memchr(c->val, '/', c->val_len);
        size_t hl = slash ? (size_t)(slash - c->val) : c->val_len;
        struct dkim_tag ht = { "", c->val, 0, hl };
        struct dkim_tag bt = { "", slash ? slash + 1 : "", 0, slash ? c->val_len - hl - 1 : 0 };
        if (!tag_is(&ht, "simple") && !tag_is(&ht, "relaxed"))
            return "bad c=";
        s->hc = tag_is(&ht, "relaxed") ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
        if (slash != NULL && !tag_is(&bt, "simple") && !tag_is(&bt, "relaxed"))
            return "bad c=";
        s->bc = slash != NULL && tag_is(&bt, "relaxed") ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
    }
    s->hlist = xstrndup(h->val, h->val_len);
    str_lower(s->hlist);
    if (!list_has(s->hlist, strlen(s->hlist), "from"))
        return "h= does not include From"; /* §5.4 */
    s->limit = NO_LIMIT;
    if (l != NULL && parse_u64(l->val, l->val_len, UINT64_MAX - 1, &s->limit) < 0)
        return "bad l=";
    if (x != NULL) {
        uint64_t xs;
        if (parse_u64(x->val, x->val_len, UINT64_MAX / 2, &xs) < 0)
            return "bad x=";
        if ((int64_t)xs < now_s)
            return "signature expired";
    }
    /* i= must be in d= or below it (§3.5); its domain is what t=s checks. */
    if (i != NULL) {
        const char *at = memchr(i->val, '@', i->val_len);
        size_t dl, ddl = strlen(s->info.domain);
        const char *dom;
        if (at == NULL)
            return "bad i=";
        dom = at + 1;
        dl = i->val_len - (size_t)(dom - i->val);
        if (dl < ddl || strncasecmp(dom + dl - ddl, s->info.domain, ddl) != 0 ||
            (dl > ddl && dom[dl - ddl - 1] != '.'))
            return "i= not in d=";
        s->auid_domain = xstrndup(dom, dl);
        str_lower(s->auid_domain);
    } else {
        s->auid_domain = xstrdup(s->info.domain);
    }
    return NULL;
}

static void
sig_parse(struct dkim_verifier *v, struct vsig *s)
{
    const char *val;
    size_t vl, n, bl;
    struct dkim_tag t[TAGS_MAX];
    const struct dkim_tag *b, *bh;
    const char *why;
    dkim_hdr_value(&v->hdr, s->field, &val, &vl);
    if (dkim_tag_list(val, vl, t, TAGS_MAX, &n) < 0) {
        decide(s, DKIM_V_NEUTRAL, "bad tag list");
        return;
    }
    b = tag_get(t, n, "b");
    if (b != NULL) {
        /* header.b (RFC 6008): the first 8 characters, FWS skipped. */
        size_t o = 0;
        for (size_t i = 0; i < b->val_len && o < 8; i++) {
            unsigned char c = (unsigned char)b->val[i];
            if (isalnum(c) || c == '+' || c == '/')
                s->info.b8[o++] = b->val[i];
        }
        s->info.b8[o] = '\0';
    }
    why = sig_tags(s, t, n, v->now_s);
    if (why != NULL) {
        decide(s, DKIM_V_NEUTRAL, why);
        return;
    }
    bh = tag_get(t, n, "bh");
    if (dkim_b64_decode(b->val, b->val_len, s->b, sizeof(s->b), &s->b_len) < 0 || s->b_len == 0 ||
        dkim_b64_decode(bh->val, bh->val_len, s->bh, sizeof(s->bh), &bl) < 0 || bl != 32) {
        decide(s, DKIM_V_NEUTRAL, "bad b= or bh=");
        return;
    }
}

/* ---- body hashing ---- */

static void
bh_out(const void *p, size_t n, void *arg)
{
    struct body_hash *h = arg;
    size_t k = n;
    if (h->limit != NO_LIMIT && h->hashed + k > h->limit)
        k = (size_t)(h->limit - h->hashed);
    if (k > 0 && EVP_DigestUpdate(h->md, p, k) != 1)
        tern_panic("EVP_DigestUpdate failed");
    h->hashed += k;
    h->total += n;
}

/* The hasher of (c, limit): shared by signatures that agree on both. */
static size_t
bh_for(struct dkim_verifier *v, enum dkim_canon c, uint64_t limit)
{
    struct body_hash *h;
    for (size_t i = 0; i < v->n_bh; i++) {
        if (v->bh[i].c == c && v->bh[i].limit == limit)
            return i;
    }
    h = &v->bh[v->n_bh];
    h->c = c;
    h->limit = limit;
    h->md = EVP_MD_CTX_new();
    if (h->md == NULL || EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1)
        tern_panic("EVP_DigestInit_ex(sha256) failed");
    dkim_body_init(&h->body, c, bh_out, h);
    return v->n_bh++;
}

struct dkim_verifier *
dkim_verifier_new(const char *hdr, size_t len, int64_t now_s)
{
    struct dkim_verifier *v = xcalloc(1, sizeof(*v));
    size_t seen = 0;
    v->data = xmalloc(len + 1);
    memcpy(v->data, hdr, len);
    v->data[len] = '\0';
    v->len = len;
    v->now_s = now_s;
    if (dkim_hdr_parse(&v->hdr, v->data, len) < 0)
        return v; /* no fields: no signatures to verify */
    for (size_t i = 0; i < v->hdr.n && seen < SIG_FIELDS; i++) {
        const char *f = v->data + v->hdr.f[i].off;
        struct vsig *s;
        if (v->hdr.f[i].name_len != 14 || strncasecmp(f, "DKIM-Signature", 14) != 0)
            continue;
        seen++;
        if (v->n_sig == DKIM_VERIFY_SIGS_MAX)
            break; /* bounded work: the first ones are verified */
        s = &v->sig[v->n_sig++];
        s->field = i;
        sig_parse(v, s);
        if (!s->decided)
            s->bh_idx = bh_for(v, s->bc, s->limit);
    }
    return v;
}

size_t
dkim_verifier_count(const struct dkim_verifier *v)
{
    return v->n_sig;
}

bool
dkim_verifier_key_name(const struct dkim_verifier *v, size_t i, char *out, size_t cap)
{
    const struct vsig *s = &v->sig[i];
    int n;
    if (s->decided || s->key != NULL)
        return false;
    n = snprintf(out, cap, "%s._domainkey.%s", s->info.selector, s->info.domain);
    return n > 0 && (size_t)n < cap;
}

void
dkim_verifier_body(struct dkim_verifier *v, const void *p, size_t n)
{
    for (size_t i = 0; i < v->n_bh; i++)
        dkim_body_feed(&v->bh[i].body, p, n);
}

void
dkim_verifier_key(
    struct dkim_verifier *v, size_t i, enum dkim_key_status st, const char *txt, size_t len)
{
    struct vsig *s = &v->sig[i];
    struct dkim_key_record kr;
    if (s->decided || s->key != NULL)
        return;
    if (st == DKIM_KEY_TEMP) {
        decide(s, DKIM_V_TEMPERROR, "key lookup failed");
        return;
    }
    if (st == DKIM_KEY_NONE) {
        decide(s, DKIM_V_PERMERROR, "no key record");
        return;
    }
    if (dkim_key_record_parse(txt, len, s->info.alg, &kr) < 0) {
        decide(s, DKIM_V_PERMERROR, kr.reason);
        return;
    }
    s->info.testing = kr.testing;
    /* t=s: the i= domain must be d= itself (§3.6.1). */
    if (kr.strict_i && strcmp(s->auid_domain, s->info.domain) != 0) {
        EVP_PKEY_free(kr.key);
        decide(s, DKIM_V_PERMERROR, "key t=s and i= is a subdomain");
        return;
    }
    s->key = kr.key;
}

/* ---- the end: header hashes and signatures ---- */

/* The data signed by s (RFC 6376 §3.7): the h= fields, bottom-up for
 * repeated names, then its own field with an empty b= and no final CRLF. */
static void
sig_header_data(const struct dkim_verifier *v, const struct vsig *s, struct buf *out)
{
    bool used[DKIM_H_MAX * 2];
    const char *p = s->hlist;
    struct buf self = BUF_INIT, canon = BUF_INIT;
    const struct dkim_field *sf = &v->hdr.f[s->field];
    const char *f = v->data + sf->off, *colon;
    size_t entries = 0;
    memset(used, 0, sizeof(used));
    while (*p != '\0' && entries++ < DKIM_H_MAX) {
        size_t n = strcspn(p, ":"), nl = n;
        const char *nm = p;
        while (nl > 0 && is_fws(nm[nl - 1]))
            nl--;
        while (nl > 0 && is_fws(*nm)) {
            nm++;
            nl--;
        }
        for (size_t i = v->hdr.n; i-- > 0;) {
            const struct dkim_field *hf = &v->hdr.f[i];
            if (i < TERN_ARRAY_LEN(used) && !used[i] && hf->name_len == nl &&
                strncasecmp(v->data + hf->off, nm, nl) == 0) {
                used[i] = true;
                dkim_canon_header(s->hc, v->data + hf->off, hf->len, out);
                break;
            }
        }
        p += n;
        if (*p == ':')
            p++;
    }
    /* Its own field, b= emptied (§3.5, the b= tag). */
    colon = memchr(f, ':', sf->len);
    buf_append(&self, f, (size_t)(colon + 1 - f));
    for (size_t i = (size_t)(colon + 1 - f); i < sf->len;) {
        size_t e = i, ns, ne;
        while (e < sf->len && f[e] != ';')
            e++;
        ns = i;
        while (ns < e && is_fws(f[ns]))
            ns++;
        ne = ns;
        while (ne < e && f[ne] != '=' && !is_fws(f[ne]))
            ne++;
        if (ne - ns == 1 && f[ns] == 'b') {
            const char *eq = memchr(f + ne, '=', e - ne);
            buf_append(&self, f + i, (size_t)(eq + 1 - (f + i)));
        } else {
            buf_append(&self, f + i, e - i);
        }
        if (e < sf->len)
            buf_append_char(&self, ';');
        i = e + 1;
    }
    /* A field ending in ';' then CRLF: the CRLF was copied with the tag. */
    dkim_canon_header(s->hc, self.data, self.len, &canon);
    if (canon.len >= 2 && canon.data[canon.len - 2] == '\r' && canon.data[canon.len - 1] == '\n')
        canon.len -= 2;
    buf_append(out, canon.data, canon.len);
    buf_fini(&self);
    buf_fini(&canon);
}

static bool
sig_check(const struct vsig *s, const unsigned char digest[32])
{
    bool ok = false;
    if (s->info.alg == DKIM_ALG_RSA_SHA256) {
        EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(s->key, NULL);
        ok = pc != NULL && EVP_PKEY_verify_init(pc) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
             EVP_PKEY_verify(pc, s->b, s->b_len, digest, 32) == 1;
        EVP_PKEY_CTX_free(pc);
    } else {
        /* RFC 8463 §3: Ed25519 over the SHA-256 hash of the data. */
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        ok = m != NULL && EVP_DigestVerifyInit(m, NULL, NULL, NULL, s->key) == 1 &&
             EVP_DigestVerify(m, s->b, s->b_len, digest, 32) == 1;
        EVP_MD_CTX_free(m);
    }
    return ok;
}

static void
sig_finish(struct dkim_verifier *v, struct vsig *s)
{
    const struct body_hash *h = &v->bh[s->bh_idx];
    unsigned char digest[32];
    struct buf data = BUF_INIT;
    unsigned dl = 0;
    if (s->key == NULL) {
        decide(s, DKIM_V_TEMPERROR, "no key answer in time");
        return;
    }
    if (s->limit != NO_LIMIT && s->limit > h->total) {
        decide(s, DKIM_V_FAIL, "l= beyond the body");
        return;
    }
    if (memcmp(h->digest, s->bh, 32) != 0) {
        decide(s, DKIM_V_FAIL, "body hash mismatch");
        return;
    }
    sig_header_data(v, s, &data);
    if (EVP_Digest(data.data, data.len, digest, &dl, EVP_sha256(), NULL) != 1 || dl != 32)
        tern_panic("EVP_Digest(sha256) failed");
    buf_fini(&data);
    if (!sig_check(s, digest)) {
        decide(s, DKIM_V_FAIL, "signature does not verify");
        return;
    }
    /* l= honoured carefully: a signature that leaves content after l=
     * unsigned vouches for less than the message; it is not a pass. */
    if (s->limit != NO_LIMIT && s->limit < h->total) {
        decide(s, DKIM_V_POLICY, "content after l= is unsigned");
        return;
    }
    decide(s, DKIM_V_PASS, NULL);
}

void
dkim_verifier_finish(struct dkim_verifier *v)
{
    if (v->finished)
        return;
    v->finished = true;
    for (size_t i = 0; i < v->n_bh; i++) {
        unsigned dl = 0;
        dkim_body_end(&v->bh[i].body);
        if (EVP_DigestFinal_ex(v->bh[i].md, v->bh[i].digest, &dl) != 1 || dl != 32)
            tern_panic("EVP_DigestFinal_ex failed");
    }
    for (size_t i = 0; i < v->n_sig; i++) {
        if (!v->sig[i].decided)
            sig_finish(v, &v->sig[i]);
    }
}

const struct dkim_sig_info *
dkim_verifier_sig(const struct dkim_verifier *v, size_t i)
{
    return &v->sig[i].info;
}

void
dkim_verifier_free(struct dkim_verifier *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->n_sig; i++) {
        EVP_PKEY_free(v->sig[i].key);
        free(v->sig[i].hlist);
        free(v->sig[i].auid_domain);
    }
    for (size_t i = 0; i < v->n_bh; i++)
        EVP_MD_CTX_free(v->bh[i].md);
    dkim_hdr_fini(&v->hdr);
    free(v->data);
    free(v);
}

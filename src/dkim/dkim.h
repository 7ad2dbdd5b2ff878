/*
 * DKIM signing (RFC 6376) with RSA (rsa-sha256) and Ed25519 (RFC 8463,
 * ed25519-sha256) keys. Keys are loaded once into a reference-counted key
 * set (one per configuration snapshot); a signer is fed the message bytes in
 * any chunks, keeps only the header section (bounded) and hashes the body as
 * it streams, and makes its signatures in one finishing step that may run on
 * any thread. OpenSSL frees key material securely; our buffers are cleared.
 */
#ifndef TERN_DKIM_H
#define TERN_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

struct dkim_key;
struct dkim_keyset;
struct dkim_signer;

enum dkim_alg { DKIM_ALG_RSA_SHA256, DKIM_ALG_ED25519_SHA256 };
enum dkim_canon { DKIM_CANON_SIMPLE, DKIM_CANON_RELAXED };

#define DKIM_RSA_BITS_MIN  1024 /* RFC 8301 §3.2 */
#define DKIM_RSA_BITS_MAX  4096
#define DKIM_HEADER_MAX    (256 * 1024) /* header section kept for signing */
#define DKIM_KEYFILE_MAX   (64 * 1024)
#define DKIM_DOMAIN_MAX    253
#define DKIM_SIGS_MAX      4   /* signatures per message (entries of one domain) */
#define DKIM_TXT_CHUNK_MAX 255 /* one character-string of a TXT record */

/* --- keys (key.c) --- */

/* Load a PEM private key (PKCS#8 or traditional, not encrypted) from path.
 * Refused: not a regular file, readable by group or others, larger than
 * DKIM_KEYFILE_MAX, not a key, not RSA DKIM_RSA_BITS_MIN..MAX or Ed25519.
 * Owned result, or NULL with one line of text (no newline) appended to err. */
struct dkim_key *dkim_key_load(const char *path, struct buf *err);
/* A new key: RSA of bits (DKIM_RSA_BITS_MIN..MAX) or Ed25519 (bits ignored).
 * Owned result, or NULL with text in err. */
struct dkim_key *dkim_key_generate(enum dkim_alg alg, unsigned bits, struct buf *err);
void dkim_key_free(struct dkim_key *k); /* NULL fine */
/* A key held by another process (ternd's keys process): signing hands the
 * SHA-256 digest of the signed data to fn with (gen, idx), which writes
 * the signature (at most *siglen bytes) and returns 0, or -1. Owned. */
typedef int dkim_remote_fn(uint32_t gen, uint32_t idx, enum dkim_alg alg,
    const unsigned char digest[32], unsigned char *sig, size_t *siglen);
struct dkim_key *dkim_key_new_remote(
    enum dkim_alg alg, unsigned bits, dkim_remote_fn *fn, uint32_t gen, uint32_t idx);
enum dkim_alg dkim_key_alg(const struct dkim_key *k);
unsigned dkim_key_bits(const struct dkim_key *k); /* 256 for Ed25519 */
/* "rsa" or "ed25519": the k= value of the key record. */
const char *dkim_key_type(const struct dkim_key *k);
/* Append the p= value: base64 of the DER SubjectPublicKeyInfo (RSA) or of
 * the raw 32-byte public key (Ed25519, RFC 8463 §4.2). 0 ok, -1 error. */
int dkim_key_public_b64(const struct dkim_key *k, struct buf *out);
/* Append the whole TXT value "v=DKIM1; k=rsa; p=...". 0 ok, -1 error. */
int dkim_key_txt(const struct dkim_key *k, struct buf *out);
/* Write the private key as PEM PKCS#8 to a new file of mode 0600 (never
 * replacing an existing one: errno EEXIST). 0 ok, -1 with text in err. */
int dkim_key_save(const struct dkim_key *k, const char *path, struct buf *err);
/* Append value[len] as DNS TXT character-strings: each quoted, at most
 * DKIM_TXT_CHUNK_MAX characters, separated by one space. */
void dkim_txt_strings(const char *value, size_t len, struct buf *out);

/* --- key sets (key.c) --- */

struct dkim_keyset *dkim_keyset_new(void); /* empty, refs 1 */
/* Load the key of one dkim_sign entry (domain lowercased here). 0 ok; -1
 * with text in err (the set is unchanged). */
int dkim_keyset_add(struct dkim_keyset *ks, const char *domain, const char *selector,
    const char *path, struct buf *err);
/* Add an entry with a key made elsewhere (k is taken over, even on error). */
int dkim_keyset_add_key(struct dkim_keyset *ks, const char *domain, const char *selector,
    struct dkim_key *k, struct buf *err);
size_t dkim_keyset_count(const struct dkim_keyset *ks); /* NULL: 0 */
/* The key of entry i (borrowed, i < count). */
const struct dkim_key *dkim_keyset_key(const struct dkim_keyset *ks, size_t i);
/* Thread safe; unref of the last reference frees the keys. NULL fine. */
struct dkim_keyset *dkim_keyset_ref(struct dkim_keyset *ks);
void dkim_keyset_unref(struct dkim_keyset *ks);
/* Which entries sign mail from domain (lowercase)? The entries of the
 * domain itself; when there are none, those of its nearest parent domain
 * ("example.com" signs for "mail.example.com"). Writes up to max indexes
 * into idx, in configuration order; returns how many. Pure. */
size_t dkim_keyset_select(
    const struct dkim_keyset *ks, const char *domain, size_t *idx, size_t max);

/* --- message parsing (header.c) --- */

/* The domain of the single address of a From: field value (the part after
 * the colon; folded or not): display names, comments, quoted strings and
 * angle brackets are understood. Lowercased into out[cap]. 0 ok; -1 when
 * there is not exactly one address or its domain is not a DNS name. */
int dkim_from_domain(const char *value, size_t len, char *out, size_t cap);

/* --- canonicalization (canon.c) --- */

/* Canonicalize one header field (name ":" value, folded, with its final
 * CRLF) per RFC 6376 §3.4.1/§3.4.2; appends to out (relaxed output ends in
 * CRLF too; simple output is the field as is). */
void dkim_canon_header(enum dkim_canon c, const char *field, size_t len, struct buf *out);

/* Streaming body canonicalizer (§3.4.3/§3.4.4): output goes to a callback
 * in pieces; trailing empty lines are held back until a non-empty line
 * shows they are not trailing, and dropped at the end. */
typedef void (*dkim_out_fn)(const void *p, size_t n, void *arg);
struct dkim_body {
    enum dkim_canon c;
    dkim_out_fn out;
    void *arg;
    uint64_t blank_lines; /* empty lines held back */
    bool cr;              /* a CR is pending (a CRLF may be split) */
    bool wsp;             /* relaxed: whitespace pending inside a line */
    bool content;         /* the current line has output */
    bool any;             /* anything was output */
    char buf[512];
    size_t len;
};
void dkim_body_init(struct dkim_body *b, enum dkim_canon c, dkim_out_fn out, void *arg);
void dkim_body_feed(struct dkim_body *b, const void *p, size_t n);
void dkim_body_end(struct dkim_body *b);

/* --- signing (sign.c) --- */

struct dkim_sign_opts {
    enum dkim_canon header_canon, body_canon;
    int64_t timestamp; /* t= (Unix seconds) */
};

/* What a finished signer did. */
struct dkim_outcome {
    size_t n_sigs;
    char domain[DKIM_DOMAIN_MAX + 1]; /* d= ("" when not signed) */
    char selectors[128];              /* "s1,s2" (shortened if long) */
    const char *reason;               /* static text when n_sigs is 0 */
    bool problem; /* the reason is a fault (bad header, signing error), not "no key" */
};

/* A signer for one message; takes a reference to ks (which must hold at
 * least one key). Owned result. */
struct dkim_signer *dkim_signer_new(struct dkim_keyset *ks, const struct dkim_sign_opts *o);
/* Feed message bytes (CRLF line ends, not dot-stuffed), in any chunks. */
void dkim_signer_feed(struct dkim_signer *s, const void *p, size_t n);
/* True once it is known that no signature will be made (no key for the
 * From domain, bad header...): the caller may stop feeding. */
bool dkim_signer_idle(const struct dkim_signer *s);
/* End of the message: append the DKIM-Signature fields (CRLF-terminated,
 * each line at most 78 characters where the values allow) to out and
 * report in *res. Returns the number of signatures (0: see res->reason).
 * Call once; any thread. out may be NULL when dkim_signer_idle(s). */
size_t dkim_signer_finish(struct dkim_signer *s, struct buf *out, struct dkim_outcome *res);
void dkim_signer_free(struct dkim_signer *s); /* NULL fine */

/* --- verifying (verify.c), RFC 6376 §6 --- */

#define DKIM_VERIFY_SIGS_MAX 8 /* signatures verified per message; later ones are ignored */

/* RFC 8601 §2.7.1 results. */
enum dkim_vresult {
    DKIM_V_NONE,
    DKIM_V_PASS,
    DKIM_V_FAIL,      /* the hashes or the signature do not match */
    DKIM_V_NEUTRAL,   /* a signature that cannot be processed (syntax, algorithm, expired) */
    DKIM_V_POLICY,    /* valid, but content after l= is unsigned */
    DKIM_V_TEMPERROR, /* the key could not be fetched (in time) */
    DKIM_V_PERMERROR, /* no usable key record */
};
const char *dkim_vresult_name(enum dkim_vresult r);

struct dkim_sig_info {
    enum dkim_vresult result;
    char domain[DKIM_DOMAIN_MAX + 1]; /* d=, lowercased; "" when it could not be read */
    char selector[64];                /* s= */
    char b8[9];                       /* the first 8 characters of b= (RFC 6008 header.b) */
    enum dkim_alg alg;
    bool testing;       /* the key says t=y */
    const char *reason; /* static text, or NULL for a pass */
};

enum dkim_key_status { DKIM_KEY_OK, DKIM_KEY_NONE, DKIM_KEY_TEMP };

struct dkim_verifier;
/* A verifier for the header section hdr[len] (CRLF-terminated fields
 * without the empty line; copied); now_s for x=. Owned result. */
struct dkim_verifier *dkim_verifier_new(const char *hdr, size_t len, int64_t now_s);
void dkim_verifier_free(struct dkim_verifier *v);          /* NULL fine */
size_t dkim_verifier_count(const struct dkim_verifier *v); /* signatures looked at */
/* The key record name of signature i ("SEL._domainkey.DOMAIN") into out;
 * false when it needs no key (already decided, or has one). */
bool dkim_verifier_key_name(const struct dkim_verifier *v, size_t i, char *out, size_t cap);
/* The key lookup's answer for signature i: the first TXT record (txt[len]). */
void dkim_verifier_key(
    struct dkim_verifier *v, size_t i, enum dkim_key_status st, const char *txt, size_t len);
/* The body (CRLF line ends, not dot-stuffed), in any chunks. */
void dkim_verifier_body(struct dkim_verifier *v, const void *p, size_t n);
/* End of the body: every signature gets its result (one without a key
 * answer: temperror). Call once the answers are in (or no longer awaited). */
void dkim_verifier_finish(struct dkim_verifier *v);
const struct dkim_sig_info *dkim_verifier_sig(const struct dkim_verifier *v, size_t i);

#endif

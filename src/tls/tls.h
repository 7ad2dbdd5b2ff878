/*
 * TLS contexts (OpenSSL 3) for both directions: a server context built from
 * tls_cert_file/tls_key_file (chain, minimum version, cipher lists) and a
 * client context (CA file or system store, verify on/off) with per-connection
 * SNI and host-name checks. A struct tls_ctx is reference counted: a reload
 * builds a new one and swaps it in, connections keep the one they started with.
 * Only the event loop thread touches these objects.
 */
#ifndef TERN_TLS_H
#define TERN_TLS_H

#include <stdbool.h>

#include "config/config.h"
#include "util/buf.h"

struct tls_ctx;
typedef struct ssl_st SSL;

/* Version, cipher and peer verification of an established connection. */
struct tls_info {
    char version[16];   /* "TLSv1.3" */
    char cipher[64];    /* "TLS_AES_256_GCM_SHA384" */
    int bits, alg_bits; /* secret bits used / the algorithm's bits */
    bool verified;      /* peer certificate verified (client side: chain + host) */
};

/*
 * The server context of cfg: NULL with *out NULL when no certificate is
 * configured (TLS not offered). -1 with a message in err ("tls_cert_file
 * FILE: ...") when the certificate, key, their match, the version or a cipher
 * list is bad, or when the key file is readable by others. The caller owns
 * the result (tls_ctx_unref).
 */
int tls_server_ctx_new(const struct config *cfg, struct tls_ctx **out, struct buf *err);

/*
 * ternd's relay has no key file to read: the certificate chain (PEM, copied)
 * and a key whose private operations run in the keys process (a reference
 * is taken) become what tls_server_ctx_new uses from now on instead of
 * tls_cert_file and tls_key_file. Such a context refuses static-RSA key
 * exchange (no kRSA ciphers): the key is used to sign, never to decrypt.
 * key NULL: back to the files.
 */
typedef struct evp_pkey_st EVP_PKEY;
void tls_set_server_material(const char *chain, size_t len, EVP_PKEY *key);

struct tls_client_opts {
    const char *ca_file; /* NULL: the system store */
    bool verify;         /* check the peer chain (and the host name given per connection) */
    int min_version;     /* enum tls_version */
    const char *ciphers; /* NULL: OpenSSL's default */
    const char *ciphersuites;
};

/* A client context for outbound STARTTLS / implicit TLS. NULL with err set
 * when the CA file or a cipher list cannot be used. Caller owns. */
struct tls_ctx *tls_client_ctx_new(const struct tls_client_opts *o, struct buf *err);

struct tls_ctx *tls_ctx_ref(struct tls_ctx *t);
void tls_ctx_unref(struct tls_ctx *t); /* NULL is fine */

/* A new server-side SSL object (the caller owns it; it holds its own
 * reference to the context). NULL on allocation failure. */
SSL *tls_server_ssl_new(struct tls_ctx *t);
/* A new client-side SSL: SNI set to sni (NULL or an address literal: none);
 * with check_host (and a verifying context) the certificate must match
 * check_host. Caller owns. NULL on failure. */
SSL *tls_client_ssl_new(struct tls_ctx *t, const char *sni, const char *check_host);

/* DANE (RFC 6698, RFC 7672 §3) on a client SSL made by tls_client_ssl_new
 * (with no check_host): OpenSSL's DANE verifier matches the peer's chain
 * against the records. names[0] is the TLSA base domain (the MX host name)
 * and, with the other names (the next-hop domain), the reference
 * identifiers a DANE-TA(2) chain's leaf must match (RFC 7672 §3.2.2);
 * DANE-EE(3) has no name checks (§3.2.1). Returns how many records OpenSSL
 * took as usable (0: none), -1 on failure. */
struct tls_dane_rec {
    unsigned char usage, selector, mtype;
    const unsigned char *data;
    size_t len;
};
int tls_client_dane(
    SSL *ssl, const char *const *names, size_t n_names, const struct tls_dane_rec *recs, size_t n);
/* After the handshake of a DANE SSL: "dane-ee" or "dane-ta" when a record
 * matched and the chain verified, else NULL. */
const char *tls_dane_match(SSL *ssl);

/* Describe an established connection. */
void tls_describe(const SSL *ssl, struct tls_info *out);
/* Why the peer's certificate did not verify ("self-signed certificate",
 * "hostname mismatch", "no certificate"), or "ok". Returns buf. */
const char *tls_verify_text(const SSL *ssl, char *buf, size_t cap);
/* The last OpenSSL error of this thread as text (and clear the queue), or
 * fallback when there is none. Returns buf. */
const char *tls_error_text(unsigned long err, char *buf, size_t cap, const char *fallback);

#endif

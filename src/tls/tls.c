/*
 * OpenSSL 3 contexts for tern: one server context per loaded configuration
 * (certificate chain, key, minimum version, cipher lists) and client contexts
 * for outbound TLS. struct tls_ctx owns one SSL_CTX reference; every SSL made
 * from it holds its own, so dropping the last tls_ctx reference while
 * connections are open is safe.
 */
#include "tls/tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/fsutil.h"
#include "util/util.h"

struct tls_ctx {
    int refs;
    SSL_CTX *ctx;
};

const char *
tls_error_text(unsigned long err, char *buf, size_t cap, const char *fallback)
{
    unsigned long e = err ? err : ERR_get_error();
    if (e == 0) {
        snprintf(buf, cap, "%s", fallback);
    } else {
        char tmp[256];
        ERR_error_string_n(e, tmp, sizeof(tmp));
        snprintf(buf, cap, "%s", tmp);
    }
    ERR_clear_error();
    return buf;
}

static void
err_openssl(struct buf *err, const char *what, const char *arg)
{
    char t[256];
    tls_error_text(0, t, sizeof(t), "unknown OpenSSL error");
    buf_printf(err, "%s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", t);
}

/* The relay's certificate chain and remote key (tls_set_server_material). */
static struct {
    struct buf chain;
    EVP_PKEY *key;
} remote = { BUF_INIT, NULL };

void
tls_set_server_material(const char *chain, size_t len, EVP_PKEY *key)
{
    buf_reset(&remote.chain);
    EVP_PKEY_free(remote.key);
    remote.key = NULL;
    if (key == NULL)
        return;
    buf_append(&remote.chain, chain, len);
    EVP_PKEY_up_ref(key);
    remote.key = key;
}

/* The chain of remote.chain (leaf first) and remote.key into ctx. */
static int
use_remote(SSL_CTX *ctx, const struct config *cfg, struct buf *err)
{
    BIO *bio = BIO_new_mem_buf(remote.chain.data, (int)remote.chain.len);
    X509 *x = bio ? PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL) : NULL;
    int ok = x != NULL && SSL_CTX_use_certificate(ctx, x) == 1;
    X509_free(x);
    while (ok && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
            X509_free(x);
            ok = 0;
        }
    }
    BIO_free(bio);
    if (!ok) {
        err_openssl(err, "tls_cert_file", cfg->tls_cert_file);
        return -1;
    }
    ERR_clear_error(); /* the end of the chain */
    if (SSL_CTX_use_PrivateKey(ctx, remote.key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        err_openssl(err, "tls_key_file does not match tls_cert_file:", cfg->tls_key_file);
        return -1;
    }
    /* No static-RSA key exchange: the keys process never decrypts. */
    struct buf list = BUF_INIT;
    buf_printf(&list, "%s:!kRSA", cfg->tls_ciphers ? cfg->tls_ciphers : "DEFAULT");
    ok = SSL_CTX_set_cipher_list(ctx, list.data);
    buf_fini(&list);
    if (!ok) {
        err_openssl(err, "tls_ciphers: no usable cipher in", cfg->tls_ciphers);
        return -1;
    }
    return 0;
}

static struct tls_ctx *
wrap(SSL_CTX *ctx)
{
    struct tls_ctx *t = xcalloc(1, sizeof(*t));
    t->refs = 1;
    t->ctx = ctx;
    return t;
}

struct tls_ctx *
tls_ctx_ref(struct tls_ctx *t)
{
    TERN_ASSERT(t != NULL && __atomic_load_n(&t->refs, __ATOMIC_RELAXED) > 0);
    /* Atomic: every receive loop holds references of its own. */
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

void
tls_ctx_unref(struct tls_ctx *t)
{
    if (t == NULL)
        return;
    TERN_ASSERT(__atomic_load_n(&t->refs, __ATOMIC_RELAXED) > 0);
    if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}

/* Version floor and cipher lists, shared by both directions. */
static int
set_common(SSL_CTX *ctx, int min_version, const char *ciphers, const char *suites, struct buf *err)
{
    int v = min_version == TLSVER_1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (!SSL_CTX_set_min_proto_version(ctx, v)) {
        err_openssl(err, "tls_min_version", NULL);
        return -1;
    }
    /* No compression (CRIME), no renegotiation (a DoS lever in TLS 1.2). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (ciphers && !SSL_CTX_set_cipher_list(ctx, ciphers)) {
        err_openssl(err, "tls_ciphers: no usable cipher in", ciphers);
        return -1;
    }
    if (suites && !SSL_CTX_set_ciphersuites(ctx, suites)) {
        err_openssl(err, "tls_ciphersuites: bad list", suites);
        return -1;
    }
    return 0;
}

/* A private key readable by others (or writable by group/others) is
 * refused; group read is allowed for the Debian ssl-cert convention. */
static int
check_key_mode(const char *path, struct buf *err)
{
    static const struct fs_private rule = { S_IFREG, S_IROTH | S_IWOTH | S_IWGRP, false, false };
    struct stat st;
    struct buf why = BUF_INIT;
    enum fs_trust t;
    if (stat(path, &st) < 0) {
        buf_printf(err, "tls_key_file %s: %s\n", path, strerror(errno));
        return -1;
    }
    t = fs_check_private(&st, &rule, &why);
    if (t != FS_TRUSTED)
        buf_printf(err, "tls_key_file %s: %s%s\n", path, why.data,
            t == FS_BAD_MODE ? " (chmod 600 or 640)" : "");
    buf_fini(&why);
    return t == FS_TRUSTED ? 0 : -1;
}

int
tls_server_ctx_new(const struct config *cfg, struct tls_ctx **out, struct buf *err)
{
    SSL_CTX *ctx;
    static const unsigned char sid_ctx[] = "tern";
    *out = NULL;
    if (cfg->tls_cert_file == NULL || cfg->tls_key_file == NULL)
        return 0;
    if (remote.key == NULL && check_key_mode(cfg->tls_key_file, err) < 0)
        return -1;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        err_openssl(err, "tls: cannot create a context", NULL);
        return -1;
    }
    if (set_common(ctx, cfg->tls_min_version, cfg->tls_ciphers, cfg->tls_ciphersuites, err) < 0)
        goto fail;
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    if (remote.key != NULL) {
        if (use_remote(ctx, cfg, err) < 0)
            goto fail;
        *out = wrap(ctx);
        return 0;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1) {
        err_openssl(err, "tls_cert_file", cfg->tls_cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_file, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
            err_openssl(err, "tls_key_file does not match tls_cert_file:", cfg->tls_key_file);
        else
            err_openssl(err, "tls_key_file", cfg->tls_key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        err_openssl(err, "tls_key_file does not match tls_cert_file:", cfg->tls_key_file);
        goto fail;
    }
    *out = wrap(ctx);
    return 0;
fail:
    SSL_CTX_free(ctx);
    return -1;
}

struct tls_ctx *
tls_client_ctx_new(const struct tls_client_opts *o, struct buf *err)
{
    SSL_CTX *ctx;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        err_openssl(err, "tls: cannot create a context", NULL);
        return NULL;
    }
    if (set_common(ctx, o->min_version, o->ciphers, o->ciphersuites, err) < 0)
        goto fail;
    /* Trust anchors are loaded even without verify: the result is still
     * computed and logged (RFC 7435 opportunistic TLS reports it). */
    if (o->ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
            err_openssl(err, "tls_ca_file", o->ca_file);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        err_openssl(err, "tls: system CA store", NULL);
        goto fail;
    }
    SSL_CTX_set_verify(ctx, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    /* DANE is turned on per connection (tls_client_dane); the context only
     * has to know the digests it may meet. */
    if (SSL_CTX_dane_enable(ctx) <= 0) {
        err_openssl(err, "tls: cannot enable DANE", NULL);
        goto fail;
    }
    return wrap(ctx);
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL *
tls_server_ssl_new(struct tls_ctx *t)
{
    return SSL_new(t->ctx);
}

static bool
is_address_literal(const char *s)
{
    return strchr(s, ':') != NULL || strspn(s, "0123456789.") == strlen(s);
}

SSL *
tls_client_ssl_new(struct tls_ctx *t, const char *sni, const char *check_host)
{
    SSL *ssl = SSL_new(t->ctx);
    if (ssl == NULL)
        return NULL;
    /* RFC 6066 §3: no address literals in SNI. */
    if (sni != NULL && *sni != '\0' && !is_address_literal(sni) &&
        SSL_set_tlsext_host_name(ssl, sni) != 1)
        goto fail;
    if (check_host != NULL && *check_host != '\0') {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(ssl, check_host) != 1)
            goto fail;
    }
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

int
tls_client_dane(
    SSL *ssl, const char *const *names, size_t n_names, const struct tls_dane_rec *recs, size_t n)
{
    int added = 0;
    if (n_names == 0 || names[0] == NULL || SSL_dane_enable(ssl, names[0]) <= 0)
        return -1;
    /* RFC 7672 §3.2.1: a DANE-EE record binds the key, whatever names the
     * certificate holds. */
    SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    for (size_t i = 1; i < n_names; i++) {
        if (names[i] != NULL && *names[i] != '\0' && SSL_add1_host(ssl, names[i]) != 1)
            return -1;
    }
    for (size_t i = 0; i < n; i++) {
        /* > 0 taken; 0 unusable (an unknown digest, say): skipped. */
        int rc = SSL_dane_tlsa_add(
            ssl, recs[i].usage, recs[i].selector, recs[i].mtype, recs[i].data, recs[i].len);
        if (rc > 0)
            added++;
        else if (rc < 0)
            ERR_clear_error();
    }
    return added;
}

const char *
tls_dane_match(SSL *ssl)
{
    uint8_t usage = 0;
    if (SSL_get_verify_result(ssl) != X509_V_OK || SSL_get0_dane_authority(ssl, NULL, NULL) < 0 ||
        SSL_get0_dane_tlsa(ssl, &usage, NULL, NULL, NULL, NULL) < 0)
        return NULL;
    return usage == 3 ? "dane-ee" : "dane-ta";
}

void
tls_describe(const SSL *ssl, struct tls_info *out)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    memset(out, 0, sizeof(*out));
    snprintf(out->version, sizeof(out->version), "%s", SSL_get_version(ssl));
    snprintf(out->cipher, sizeof(out->cipher), "%s", c ? SSL_CIPHER_get_name(c) : "none");
    if (c != NULL)
        out->bits = SSL_CIPHER_get_bits(c, &out->alg_bits);
    out->verified =
        SSL_get0_peer_certificate(ssl) != NULL && SSL_get_verify_result(ssl) == X509_V_OK;
}

const char *
tls_verify_text(const SSL *ssl, char *buf, size_t cap)
{
    long r = SSL_get_verify_result(ssl);
    if (SSL_get0_peer_certificate(ssl) == NULL)
        snprintf(buf, cap, "no certificate");
    else if (r == X509_V_OK)
        snprintf(buf, cap, "ok");
    else
        snprintf(buf, cap, "%s", X509_verify_cert_error_string(r));
    return buf;
}

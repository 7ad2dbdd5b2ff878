/*
 * The relay's side of the keys process. TLS: an EVP_PKEY made from the
 * certificate's public key whose private operations (RSA_METHOD priv_enc,
 * EC_KEY_METHOD sign) are requests to the keys process, as OpenSMTPD's ca.c
 * does; there is no priv_dec, so static-RSA key exchange cannot work (the
 * server context refuses it anyway). DKIM: remote keys that send the
 * SHA-256 digest. Each socket takes one request at a time (a mutex), and a
 * reply must carry the request's id.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* RSA_METHOD and EC_KEY_METHOD are the hook */

#include "privsep/privsep.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "dkim/dkim.h"
#include "tls/tls.h"
#include "util/log.h"
#include "util/util.h"

#define PS_CALL_TIMEOUT_S 10

struct chan {
    int fd;
    pthread_mutex_t mu;
    uint64_t next_id;
};

static struct chan tls_chan = { -1, PTHREAD_MUTEX_INITIALIZER, 0 };
static struct chan dkim_chan = { -1, PTHREAD_MUTEX_INITIALIZER, 0 };
static int auth_fd = -1;
static RSA_METHOD *rsa_meth;
static EC_KEY_METHOD *ec_meth;

void
ps_client_init(int tls_fd, int dkim_fd, int a_fd)
{
    /* A hung keys process must not hang the relay's loop for good. */
    struct timeval tv = { PS_CALL_TIMEOUT_S, 0 };
    setsockopt(tls_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(dkim_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    tls_chan.fd = tls_fd;
    dkim_chan.fd = dkim_fd;
    auth_fd = a_fd;
}

int
ps_client_auth_fd(void)
{
    return auth_fd;
}

/* One request and its reply. -1 when the keys process refused, or is
 * gone (logged: the parent stops ternd when it sees it die). */
static int
call(struct chan *c, struct ps_msg *q, struct ps_msg *rep)
{
    int fd = -1, r = -1;
    pthread_mutex_lock(&c->mu);
    q->id = ++c->next_id;
    if (c->fd >= 0 && ps_send(c->fd, q, -1) == 0) {
        /* Replies come in order; a late one to a request that timed out
         * is skipped. */
        do {
            r = ps_recv(c->fd, rep, &fd);
            if (fd >= 0)
                close(fd);
        } while (r == 1 && rep->type == PS_REPLY && rep->id < q->id);
        if (r == 1 && (rep->type != PS_REPLY || rep->id != q->id))
            r = -1;
    }
    pthread_mutex_unlock(&c->mu);
    explicit_bzero(q, sizeof(*q));
    if (r != 1) {
        log_simple(LOG_ERROR, "keys", "unreachable", "no answer from the keys process");
        return -1;
    }
    return rep->status == 0 ? 0 : -1;
}

/* ---- TLS ---- */

static uint32_t
gen_of(void *app)
{
    return (uint32_t)(uintptr_t)app;
}

static int
rsa_priv_enc(int flen, const unsigned char *from, unsigned char *to, RSA *rsa, int padding)
{
    struct ps_msg q, rep;
    if (flen < 0 || (size_t)flen > sizeof(q.data))
        return -1;
    memset(&q, 0, sizeof(q));
    q.type = PS_TLS_RSA_SIGN;
    q.gen = gen_of(RSA_get_app_data(rsa));
    q.arg = (uint32_t)padding;
    q.len = (uint32_t)flen;
    memcpy(q.data, from, (size_t)flen);
    if (call(&tls_chan, &q, &rep) < 0 || rep.len != (uint32_t)RSA_size(rsa))
        return -1;
    memcpy(to, rep.data, rep.len);
    return (int)rep.len;
}

static int
ec_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig, unsigned int *siglen,
    const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey)
{
    struct ps_msg q, rep;
    if (dlen < 0 || (size_t)dlen > sizeof(q.data))
        return 0;
    memset(&q, 0, sizeof(q));
    q.type = PS_TLS_EC_SIGN;
    q.gen = gen_of(EC_KEY_get_ex_data(eckey, 0));
    q.len = (uint32_t)dlen;
    memcpy(q.data, dgst, (size_t)dlen);
    if (call(&tls_chan, &q, &rep) < 0 || rep.len > (uint32_t)ECDSA_size(eckey))
        return 0;
    memcpy(sig, rep.data, rep.len);
    *siglen = rep.len;
    return 1;
}

static ECDSA_SIG *
ec_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey)
{
    unsigned char der[PS_DATA_MAX];
    unsigned int n = 0;
    const unsigned char *p = der;
    if (ec_sign(0, dgst, dlen, der, &n, kinv, r, eckey) != 1)
        return NULL;
    return d2i_ECDSA_SIG(NULL, &p, n);
}

static void
make_methods(void)
{
    if (rsa_meth != NULL)
        return;
    rsa_meth = RSA_meth_dup(RSA_get_default_method());
    ec_meth = EC_KEY_METHOD_new(EC_KEY_get_default_method());
    if (rsa_meth == NULL || ec_meth == NULL)
        tern_panic("cannot make the keys process methods");
    RSA_meth_set1_name(rsa_meth, "tern keys process");
    RSA_meth_set_priv_enc(rsa_meth, rsa_priv_enc);
    RSA_meth_set_priv_dec(rsa_meth, NULL);
    EC_KEY_METHOD_set_sign(ec_meth, ec_sign, NULL, ec_sign_sig);
}

/* The public key of the leaf as a key whose private half is remote. */
static EVP_PKEY *
remote_key(uint32_t gen, X509 *leaf, struct buf *err)
{
    EVP_PKEY *pub = X509_get0_pubkey(leaf), *k = EVP_PKEY_new();
    void *app = (void *)(uintptr_t)gen;
    make_methods();
    if (pub != NULL && EVP_PKEY_is_a(pub, "RSA")) {
        RSA *r = EVP_PKEY_get1_RSA(pub);
        if (r != NULL && RSA_set_method(r, rsa_meth) == 1 && RSA_set_app_data(r, app) == 1 &&
            EVP_PKEY_assign_RSA(k, r) == 1)
            return k;
        RSA_free(r);
    } else if (pub != NULL && EVP_PKEY_is_a(pub, "EC")) {
        EC_KEY *e = EVP_PKEY_get1_EC_KEY(pub);
        if (e != NULL && EC_KEY_set_method(e, ec_meth) == 1 && EC_KEY_set_ex_data(e, 0, app) == 1 &&
            EVP_PKEY_assign_EC_KEY(k, e) == 1)
            return k;
        EC_KEY_free(e);
    }
    EVP_PKEY_free(k);
    ERR_clear_error();
    buf_printf(err, "tls_cert_file: only RSA and ECDSA certificates are supported\n");
    return NULL;
}

int
ps_check_cert(const char *chain, size_t len, struct buf *err)
{
    BIO *bio = BIO_new_mem_buf(chain, (int)len);
    X509 *leaf = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    EVP_PKEY *pub = leaf ? X509_get0_pubkey(leaf) : NULL;
    int rc = pub != NULL && (EVP_PKEY_is_a(pub, "RSA") || EVP_PKEY_is_a(pub, "EC")) ? 0 : -1;
    BIO_free(bio);
    X509_free(leaf);
    ERR_clear_error();
    if (rc < 0)
        buf_printf(err, "tls_cert_file: only RSA and ECDSA certificates are supported\n");
    return rc;
}

int
ps_client_set_tls(uint32_t gen, const char *chain, size_t len, struct buf *err)
{
    BIO *bio;
    X509 *leaf;
    EVP_PKEY *k;
    if (chain == NULL) {
        tls_set_server_material(NULL, 0, NULL);
        return 0;
    }
    bio = BIO_new_mem_buf(chain, (int)len);
    leaf = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (leaf == NULL) {
        ERR_clear_error();
        buf_printf(err, "tls_cert_file: no certificate\n");
        return -1;
    }
    k = remote_key(gen, leaf, err);
    X509_free(leaf);
    if (k == NULL)
        return -1;
    tls_set_server_material(chain, len, k);
    EVP_PKEY_free(k);
    return 0;
}

/* ---- DKIM ---- */

static int
dkim_remote_sign(uint32_t gen, uint32_t idx, enum dkim_alg alg, const unsigned char digest[32],
    unsigned char *sig, size_t *siglen)
{
    struct ps_msg q, rep;
    memset(&q, 0, sizeof(q));
    q.type = PS_DKIM_SIGN;
    q.gen = gen;
    q.idx = idx;
    q.arg = (uint32_t)alg;
    q.len = 32;
    memcpy(q.data, digest, 32);
    if (call(&dkim_chan, &q, &rep) < 0 || rep.len > *siglen)
        return -1;
    memcpy(sig, rep.data, rep.len);
    *siglen = rep.len;
    return 0;
}

struct dkim_keyset *
ps_client_dkim_keys(
    uint32_t gen, const struct config *cfg, const struct ps_dkim_meta *meta, size_t n)
{
    struct dkim_keyset *ks;
    if (cfg->n_dkim_sign == 0)
        return NULL;
    ks = dkim_keyset_new();
    for (size_t i = 0; i < cfg->n_dkim_sign && i < n; i++) {
        const struct dkim_entry *d = &cfg->dkim_sign[i];
        struct buf err = BUF_INIT;
        struct dkim_key *k = dkim_key_new_remote(
            (enum dkim_alg)meta[i].alg, meta[i].bits, dkim_remote_sign, gen, (uint32_t)i);
        if (dkim_keyset_add_key(ks, d->domain, d->selector, k, &err) < 0) {
            struct logline l;
            log_begin(&l, LOG_ERROR, NULL, "dkim", "key_unusable");
            log_str(&l, "domain", d->domain);
            log_str(&l, "error", err.data);
            log_end(&l);
        }
        buf_fini(&err);
    }
    return ks;
}

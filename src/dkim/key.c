/*
 * DKIM keys with OpenSSL 3: loading a private key file (refused when it is
 * readable by group or others, or not an RSA/Ed25519 key), generating and
 * saving keys, the public key record (RFC 6376 §3.6.1, RFC 8463 §4.2), and
 * the reference-counted key set of a configuration. The file bytes are
 * cleared after parsing; EVP_PKEY_free clears the key itself.
 */
#include "dkim/dkim_int.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/fsutil.h"
#include "util/parse.h"
#include "util/util.h"

/* Never prompt for a pass phrase: an encrypted key is simply refused. */
static int
no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Read a whole private file (bounded) into an owned buffer. */
static char *
read_key_file(const char *path, size_t *len, struct buf *err)
{
    static const struct fs_private rule = { S_IFREG, S_IRGRP | S_IROTH, false, false };
    enum fs_trust t;
    struct stat st;
    char *data = NULL;
    ssize_t k;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        buf_printf(err, "cannot read: %s", strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) < 0) {
        buf_printf(err, "cannot read: %s", strerror(errno));
    } else if ((t = fs_check_private(&st, &rule, err)) != FS_TRUSTED) {
        if (t == FS_BAD_MODE)
            buf_printf(err, " (chmod 600 it)");
    } else if (st.st_size > DKIM_KEYFILE_MAX) {
        buf_printf(err, "larger than %d bytes: not a key", DKIM_KEYFILE_MAX);
    } else {
        data = xmalloc((size_t)st.st_size + 1);
        k = fd_pread_full(fd, data, (size_t)st.st_size, 0);
        if (k != (ssize_t)st.st_size) {
            buf_printf(err, "cannot read: %s", k < 0 ? strerror(errno) : "file changed");
            explicit_bzero(data, (size_t)st.st_size + 1);
            FREE_NULL(&data);
        } else {
            *len = (size_t)st.st_size;
        }
    }
    close(fd); /* read-only: nothing to lose */
    return data;
}

/* Check the type and size of pkey; fill k. 0 ok, -1 with text in err. */
static int
key_adopt(struct dkim_key *k, EVP_PKEY *pkey, struct buf *err)
{
    int bits = EVP_PKEY_get_bits(pkey);
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        if (bits < DKIM_RSA_BITS_MIN || bits > DKIM_RSA_BITS_MAX) {
            buf_printf(err, "RSA key of %d bits (use %d to %d)", bits, DKIM_RSA_BITS_MIN,
                DKIM_RSA_BITS_MAX);
            return -1;
        }
        k->alg = DKIM_ALG_RSA_SHA256;
    } else if (EVP_PKEY_is_a(pkey, "ED25519")) {
        k->alg = DKIM_ALG_ED25519_SHA256;
    } else {
        buf_printf(err, "unsupported key type %s (use RSA or Ed25519)",
            EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "?");
        return -1;
    }
    k->pkey = pkey;
    k->bits = (unsigned)bits;
    return 0;
}

struct dkim_key *
dkim_key_load(const char *path, struct buf *err)
{
    struct dkim_key *k;
    EVP_PKEY *pkey;
    BIO *bio;
    size_t len = 0;
    char *data = read_key_file(path, &len, err);
    if (data == NULL)
        return NULL;
    bio = BIO_new_mem_buf(data, (int)len);
    TERN_ASSERT(bio != NULL);
    pkey = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
    BIO_free(bio);
    explicit_bzero(data, len);
    free(data);
    ERR_clear_error();
    if (pkey == NULL) {
        buf_printf(err, "not a PEM private key (or encrypted)");
        return NULL;
    }
    k = xcalloc(1, sizeof(*k));
    if (key_adopt(k, pkey, err) < 0) {
        EVP_PKEY_free(pkey);
        free(k);
        return NULL;
    }
    return k;
}

struct dkim_key *
dkim_key_generate(enum dkim_alg alg, unsigned bits, struct buf *err)
{
    struct dkim_key *k;
    EVP_PKEY *pkey;
    if (alg == DKIM_ALG_RSA_SHA256 && (bits < DKIM_RSA_BITS_MIN || bits > DKIM_RSA_BITS_MAX)) {
        buf_printf(err, "RSA keys have %d to %d bits", DKIM_RSA_BITS_MIN, DKIM_RSA_BITS_MAX);
        return NULL;
    }
    if (alg == DKIM_ALG_RSA_SHA256)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
    else
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (pkey == NULL) {
        buf_printf(err, "key generation failed: %s", ERR_reason_error_string(ERR_get_error()));
        ERR_clear_error();
        return NULL;
    }
    k = xcalloc(1, sizeof(*k));
    if (key_adopt(k, pkey, err) < 0)
        tern_panic("generated key not usable: %s", err->data);
    return k;
}

struct dkim_key *
dkim_key_new_remote(
    enum dkim_alg alg, unsigned bits, dkim_remote_fn *fn, uint32_t gen, uint32_t idx)
{
    struct dkim_key *k = xcalloc(1, sizeof(*k));
    k->alg = alg;
    k->bits = bits;
    k->remote = fn;
    k->gen = gen;
    k->idx = idx;
    return k;
}

void
dkim_key_free(struct dkim_key *k)
{
    if (k == NULL)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

enum dkim_alg
dkim_key_alg(const struct dkim_key *k)
{
    return k->alg;
}

unsigned
dkim_key_bits(const struct dkim_key *k)
{
    return k->bits;
}

const char *
dkim_key_type(const struct dkim_key *k)
{
    return k->alg == DKIM_ALG_RSA_SHA256 ? "rsa" : "ed25519";
}

int
dkim_key_public_b64(const struct dkim_key *k, struct buf *out)
{
    unsigned char raw[32], *der = NULL;
    size_t rl = sizeof(raw);
    int n;
    if (k->alg == DKIM_ALG_ED25519_SHA256) {
        if (EVP_PKEY_get_raw_public_key(k->pkey, raw, &rl) != 1 || rl != sizeof(raw)) {
            ERR_clear_error();
            return -1;
        }
        b64_encode(raw, rl, out);
        return 0;
    }
    n = i2d_PUBKEY(k->pkey, &der); /* SubjectPublicKeyInfo, as everyone publishes */
    if (n <= 0) {
        ERR_clear_error();
        return -1;
    }
    b64_encode(der, (size_t)n, out);
    OPENSSL_free(der);
    return 0;
}

int
dkim_key_txt(const struct dkim_key *k, struct buf *out)
{
    buf_printf(out, "v=DKIM1; k=%s; p=", dkim_key_type(k));
    return dkim_key_public_b64(k, out);
}

void
dkim_txt_strings(const char *value, size_t len, struct buf *out)
{
    size_t off = 0;
    do {
        size_t n = len - off > DKIM_TXT_CHUNK_MAX ? DKIM_TXT_CHUNK_MAX : len - off;
        if (off > 0)
            buf_append_char(out, ' ');
        buf_append_char(out, '"');
        for (size_t i = 0; i < n; i++) {
            char c = value[off + i];
            if (c == '"' || c == '\\') /* not in DKIM records; escaped all the same */
                buf_append_char(out, '\\');
            buf_append_char(out, c);
        }
        buf_append_char(out, '"');
        off += n;
    } while (off < len);
}

/* PEM PKCS#8 of the key into a secure-memory BIO, then to a new file. */
int
dkim_key_save(const struct dkim_key *k, const char *path, struct buf *err)
{
    BIO *bio = BIO_new(BIO_s_secmem());
    char *pem;
    long n;
    int fd, e = 0;
    TERN_ASSERT(bio != NULL);
    if (PEM_write_bio_PKCS8PrivateKey(bio, k->pkey, NULL, NULL, 0, NULL, NULL) != 1 ||
        (n = BIO_get_mem_data(bio, &pem)) <= 0) {
        ERR_clear_error();
        BIO_free(bio);
        buf_printf(err, "cannot encode the key");
        errno = EINVAL;
        return -1;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        e = errno;
        BIO_free(bio);
        buf_printf(
            err, "%s: %s", path, e == EEXIST ? "exists already (not replaced)" : strerror(e));
        errno = e;
        return -1;
    }
    /* 0600 whatever the umask; then the bytes, durably. */
    if (fchmod(fd, 0600) < 0 || fd_write_full(fd, pem, (size_t)n) < 0 || fsync(fd) < 0)
        e = errno;
    if (close(fd) < 0 && e == 0)
        e = errno;
    BIO_free(bio); /* secure memory: cleared on free */
    if (e != 0) {
        unlink(path);
        buf_printf(err, "%s: %s", path, strerror(e));
        errno = e;
        return -1;
    }
    return 0;
}

/* --- key sets --- */

struct dkim_keyset *
dkim_keyset_new(void)
{
    struct dkim_keyset *ks = xcalloc(1, sizeof(*ks));
    ks->refs = 1;
    return ks;
}

int
dkim_keyset_add(struct dkim_keyset *ks, const char *domain, const char *selector, const char *path,
    struct buf *err)
{
    struct dkim_key *k;
    if (strlen(domain) > DKIM_DOMAIN_MAX || !str_is_domain(domain, strlen(domain), false)) {
        buf_printf(err, "bad domain");
        return -1;
    }
    k = dkim_key_load(path, err);
    if (k == NULL)
        return -1;
    return dkim_keyset_add_key(ks, domain, selector, k, err);
}

int
dkim_keyset_add_key(struct dkim_keyset *ks, const char *domain, const char *selector,
    struct dkim_key *k, struct buf *err)
{
    struct dkim_keyset_entry *e;
    size_t sz;
    if (strlen(domain) > DKIM_DOMAIN_MAX || !str_is_domain(domain, strlen(domain), false)) {
        buf_printf(err, "bad domain");
        dkim_key_free(k);
        return -1;
    }
    TERN_ASSERT(size_mul(ks->n + 1, sizeof(*ks->e), &sz));
    ks->e = xrealloc(ks->e, sz);
    e = &ks->e[ks->n++];
    e->domain = xstrdup(domain);
    str_lower(e->domain);
    if (e->domain[0] != '\0' && e->domain[strlen(e->domain) - 1] == '.')
        e->domain[strlen(e->domain) - 1] = '\0';
    e->selector = xstrdup(selector);
    e->key = k;
    return 0;
}

size_t
dkim_keyset_count(const struct dkim_keyset *ks)
{
    return ks ? ks->n : 0;
}

const struct dkim_key *
dkim_keyset_key(const struct dkim_keyset *ks, size_t i)
{
    TERN_ASSERT(i < ks->n);
    return ks->e[i].key;
}

struct dkim_keyset *
dkim_keyset_ref(struct dkim_keyset *ks)
{
    TERN_ASSERT(ks != NULL);
    __atomic_add_fetch(&ks->refs, 1, __ATOMIC_RELAXED);
    return ks;
}

void
dkim_keyset_unref(struct dkim_keyset *ks)
{
    if (ks == NULL)
        return;
    if (__atomic_sub_fetch(&ks->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (size_t i = 0; i < ks->n; i++) {
        free(ks->e[i].domain);
        free(ks->e[i].selector);
        dkim_key_free(ks->e[i].key);
    }
    free(ks->e);
    free(ks);
}

size_t
dkim_keyset_select(const struct dkim_keyset *ks, const char *domain, size_t *idx, size_t max)
{
    const char *d = domain;
    if (ks == NULL)
        return 0;
    /* The domain itself, then each parent but the top-level domain. */
    while (d != NULL) {
        const char *dot = strchr(d, '.');
        size_t n = 0;
        for (size_t i = 0; i < ks->n && n < max; i++)
            if (strcmp(ks->e[i].domain, d) == 0)
                idx[n++] = i;
        if (n > 0)
            return n;
        d = dot != NULL && strchr(dot + 1, '.') != NULL ? dot + 1 : NULL;
    }
    return 0;
}

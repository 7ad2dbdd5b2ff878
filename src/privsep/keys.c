/*
 * The keys process: the only process with the TLS private key, the DKIM
 * keys and the AUTH password hashes. It gets them from the parent (which
 * alone can read the files) as numbered generations and answers the
 * relay's fixed-size requests on three sockets, one thread each for TLS
 * and DKIM and PS_AUTH_THREADS for crypt(3). It never implements an RSA
 * decryption: a raw (unpadded) RSA operation is done only on a block that
 * is a well-formed RSA-PSS encoding (RFC 8017 §9.1), so a compromised relay
 * gets signatures, never a decryption of a captured RSA key exchange.
 */
#include "privsep/privsep.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dkim/dkim.h"
#include "util/log.h"
#include "util/userdb.h"
#include "util/util.h"

#define KEYS_GENS_MAX   16 /* generations kept for sessions that started earlier */
#define KEYS_DKIM_MAX   1024
#define KEYS_SYNC_WAIT  5  /* seconds a check waits for the users file to be current */
#define RSA_PKCS1_EXTRA 11 /* RFC 8017 §9.2: at least 8 bytes of padding and 3 more */

struct keygen {
    uint32_t gen;
    EVP_PKEY *tls;
    EVP_PKEY **dkim;
    uint32_t *dkim_alg;
    size_t n_dkim;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct keygen *gens[KEYS_GENS_MAX];
    struct auth_users *users; /* current table, or NULL */
    uint64_t users_id;        /* the parent's counter of the table held */
    uint64_t sync_next, synced;
    int parent;
} K;

static void
keygen_free(struct keygen *g)
{
    if (g == NULL)
        return;
    EVP_PKEY_free(g->tls);
    for (size_t i = 0; i < g->n_dkim; i++)
        EVP_PKEY_free(g->dkim[i]);
    free(g->dkim);
    free(g->dkim_alg);
    free(g);
}

static EVP_PKEY *
pem_key(const char *p, size_t n)
{
    BIO *bio = BIO_new_mem_buf(p, (int)n);
    EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, "") : NULL;
    BIO_free(bio);
    ERR_clear_error();
    return k;
}

/* Parse a keys blob into a generation; NULL when a record is bad. */
static struct keygen *
keygen_parse(uint32_t gen, const struct buf *b)
{
    struct keygen *g = xcalloc(1, sizeof(*g));
    size_t off = 0, n;
    uint32_t type;
    const char *p;
    int r;
    g->gen = gen;
    while ((r = ps_blob_next(b, &off, &type, &p, &n)) == 1) {
        EVP_PKEY *k;
        uint32_t meta[2];
        if (type == PS_R_TLS_KEY && g->tls == NULL && (g->tls = pem_key(p, n)) != NULL)
            continue;
        if (type != PS_R_DKIM || n < sizeof(meta) || g->n_dkim == KEYS_DKIM_MAX)
            break;
        memcpy(meta, p, sizeof(meta));
        if ((k = pem_key(p + sizeof(meta), n - sizeof(meta))) == NULL)
            break;
        g->dkim = xrealloc(g->dkim, (g->n_dkim + 1) * sizeof(*g->dkim));
        g->dkim_alg = xrealloc(g->dkim_alg, (g->n_dkim + 1) * sizeof(*g->dkim_alg));
        g->dkim[g->n_dkim] = k;
        g->dkim_alg[g->n_dkim++] = meta[0];
    }
    if (r != 0) {
        keygen_free(g);
        return NULL;
    }
    return g;
}

/* Install g as the newest generation (the oldest beyond KEYS_GENS_MAX go). */
static void
keygen_install(struct keygen *g)
{
    pthread_mutex_lock(&K.mu);
    keygen_free(K.gens[KEYS_GENS_MAX - 1]);
    memmove(&K.gens[1], &K.gens[0], (KEYS_GENS_MAX - 1) * sizeof(K.gens[0]));
    K.gens[0] = g;
    pthread_mutex_unlock(&K.mu);
}

static int
find_key(uint32_t gen, size_t idx, uint32_t *alg, EVP_PKEY **out)
{
    for (size_t i = 0; i < KEYS_GENS_MAX; i++) {
        struct keygen *g = K.gens[i];
        if (g == NULL || g->gen != gen)
            continue;
        if (idx == SIZE_MAX) {
            *out = g->tls;
        } else if (idx < g->n_dkim) {
            *out = g->dkim[idx];
            *alg = g->dkim_alg[idx];
        } else {
            return -1;
        }
        return *out != NULL ? 0 : -1;
    }
    return -1;
}

/* The key of (gen, idx) with a reference taken (the caller frees it), so
 * it is used outside the lock. idx SIZE_MAX: the TLS key. -1 when there is
 * no such key. */
static int
get_key(uint32_t gen, size_t idx, uint32_t *alg, EVP_PKEY **out)
{
    int rc;
    pthread_mutex_lock(&K.mu);
    rc = find_key(gen, idx, alg, out);
    if (rc == 0 && EVP_PKEY_up_ref(*out) != 1)
        rc = -1;
    pthread_mutex_unlock(&K.mu);
    return rc;
}

/* MGF1 (RFC 8017 §B.2.1): mask[len] from seed[n] with md. 0 ok. */
static int
mgf1(unsigned char *mask, size_t len, const unsigned char *seed, size_t n, const EVP_MD *md)
{
    unsigned char in[EVP_MAX_MD_SIZE + 4], out[EVP_MAX_MD_SIZE];
    unsigned ol = 0;
    memcpy(in, seed, n);
    for (uint32_t c = 0, done = 0; done < len; c++) {
        in[n] = (unsigned char)(c >> 24);
        in[n + 1] = (unsigned char)(c >> 16);
        in[n + 2] = (unsigned char)(c >> 8);
        in[n + 3] = (unsigned char)c;
        if (EVP_Digest(in, n + 4, out, &ol, md, NULL) != 1)
            return -1;
        for (unsigned i = 0; i < ol && done < len; i++)
            mask[done++] = out[i];
    }
    return 0;
}

/* RFC 8017 §9.1.2 steps 4-10 without the hash comparison: is em (the
 * whole modulus-sized block) an EMSA-PSS encoding with MGF1 and a salt as
 * long as the hash (RFC 8446 §4.2.3), for SHA-256, -384 or -512? */
bool
ps_pss_block_ok(const unsigned char *em, size_t len, int mod_bits)
{
    const EVP_MD *mds[] = { EVP_sha256(), EVP_sha384(), EVP_sha512() };
    size_t em_bits = (size_t)mod_bits - 1, em_len = (em_bits + 7) / 8;
    unsigned char db[PS_DATA_MAX];
    if (len < em_len || len - em_len > 1 || (len > em_len && em[0] != 0))
        return false;
    em += len - em_len;
    if (em[em_len - 1] != 0xbc)
        return false;
    for (size_t m = 0; m < TERN_ARRAY_LEN(mds); m++) {
        size_t h = (size_t)EVP_MD_get_size(mds[m]), db_len, i;
        unsigned top = (unsigned)(8 * em_len - em_bits);
        if (em_len < 2 * h + 2)
            continue;
        db_len = em_len - h - 1;
        if (top > 0 && (em[0] >> (8 - top)) != 0)
            return false;
        if (db_len > sizeof(db) || mgf1(db, db_len, em + db_len, h, mds[m]) != 0)
            continue;
        for (i = 0; i < db_len; i++)
            db[i] ^= em[i];
        db[0] &= (unsigned char)(0xff >> top);
        for (i = 0; i < db_len - h - 1 && db[i] == 0; i++)
            ;
        if (i == db_len - h - 1 && db[i] == 0x01)
            return true;
    }
    return false;
}

/* One private-key signature with ctx already set up; 0 ok. */
static int
pkey_sign(EVP_PKEY_CTX *ctx, const unsigned char *in, size_t n, struct ps_msg *rep)
{
    size_t sl = sizeof(rep->data);
    if (EVP_PKEY_sign(ctx, rep->data, &sl, in, n) != 1)
        return -1;
    rep->len = (uint32_t)sl;
    return 0;
}

static int
tls_sign(const struct ps_msg *q, EVP_PKEY *k, struct ps_msg *rep)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k, NULL);
    int rc = -1;
    if (ctx == NULL || EVP_PKEY_sign_init(ctx) != 1)
        goto out;
    if (q->type == PS_TLS_EC_SIGN) {
        /* ECDSA over the digest the handshake made (at most SHA-512). */
        if (EVP_PKEY_is_a(k, "EC") && q->len <= 64)
            rc = pkey_sign(ctx, q->data, q->len, rep);
    } else if (EVP_PKEY_is_a(k, "RSA")) {
        size_t kl = (size_t)EVP_PKEY_get_size(k);
        /* PKCS#1 v1.5 type 1 (a signature of a DigestInfo), or a raw
         * operation on a checked PSS block: nothing else. */
        if (q->arg == RSA_PKCS1_PADDING && q->len + RSA_PKCS1_EXTRA <= kl &&
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1)
            rc = pkey_sign(ctx, q->data, q->len, rep);
        else if (q->arg == RSA_NO_PADDING && q->len == kl &&
                 ps_pss_block_ok(q->data, q->len, EVP_PKEY_get_bits(k)) &&
                 EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) == 1)
            rc = pkey_sign(ctx, q->data, q->len, rep);
    }
out:
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

static int
dkim_sign(const struct ps_msg *q, EVP_PKEY *k, uint32_t alg, struct ps_msg *rep)
{
    int rc = -1;
    if (q->len != 32 || q->arg != alg)
        return -1;
    if (alg == DKIM_ALG_RSA_SHA256) {
        /* RSASSA-PKCS1-v1_5 over the SHA-256 digest (RFC 6376 §3.3.1). */
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k, NULL);
        if (ctx != NULL && EVP_PKEY_sign_init(ctx) == 1 &&
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
            EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1)
            rc = pkey_sign(ctx, q->data, q->len, rep);
        EVP_PKEY_CTX_free(ctx);
    } else {
        /* RFC 8463 §3: PureEdDSA over the SHA-256 hash. */
        EVP_MD_CTX *mctx = EVP_MD_CTX_new();
        size_t sl = sizeof(rep->data);
        if (mctx != NULL && EVP_DigestSignInit(mctx, NULL, NULL, NULL, k) == 1 &&
            EVP_DigestSign(mctx, rep->data, &sl, q->data, q->len) == 1) {
            rep->len = (uint32_t)sl;
            rc = 0;
        }
        EVP_MD_CTX_free(mctx);
    }
    ERR_clear_error();
    return rc;
}

/* One TLS or DKIM request; the reply's status is 0 or -1. */
static void
serve_sign(const struct ps_msg *q, struct ps_msg *rep)
{
    EVP_PKEY *k = NULL;
    uint32_t alg = 0;
    int rc = -1;
    bool tls = q->type == PS_TLS_RSA_SIGN || q->type == PS_TLS_EC_SIGN;
    if (get_key(q->gen, tls ? SIZE_MAX : q->idx, &alg, &k) == 0)
        rc = tls ? tls_sign(q, k, rep) : dkim_sign(q, k, alg, rep);
    EVP_PKEY_free(k);
    rep->status = rc;
    if (rc < 0) {
        struct logline l;
        rep->len = 0;
        log_begin(&l, LOG_WARN, NULL, "keys", "refused");
        log_str(&l, "request", tls ? "tls" : "dkim");
        log_int(&l, "gen", q->gen);
        log_int(&l, "key", q->idx);
        log_end(&l);
    }
}

struct server_arg {
    int fd;
    uint32_t type, type2; /* the requests this socket takes */
};

/* Ask the parent whether the users file changed, and wait until it says
 * it sent any new table (a ternctl passwd just before a login counts). */
static void
users_sync(void)
{
    struct ps_msg m;
    struct timespec until;
    uint64_t id;
    memset(&m, 0, sizeof(m));
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += KEYS_SYNC_WAIT;
    pthread_mutex_lock(&K.mu);
    id = ++K.sync_next;
    m.type = PS_SYNC;
    m.id = id;
    if (ps_send(K.parent, &m, -1) == 0) {
        while (K.synced < id && pthread_cond_timedwait(&K.cv, &K.mu, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&K.mu);
}

static void
serve_auth(const struct ps_msg *q, struct ps_msg *rep)
{
    char *hash = NULL;
    bool known = false;
    users_sync();
    pthread_mutex_lock(&K.mu);
    if (K.users != NULL) {
        const char *h = auth_users_hash(K.users, q->user);
        known = h != NULL;
        /* An unknown user costs a crypt all the same (no enumeration). */
        hash = xstrdup(known ? h : auth_users_dummy_hash(K.users));
    }
    pthread_mutex_unlock(&K.mu);
    rep->status = hash != NULL && auth_check_password(hash, q->pass) && known ? 0 : -1;
    secret_free(hash);
}

static void *
server_main(void *arg)
{
    const struct server_arg *a = arg;
    struct ps_msg *q = xmalloc(sizeof(*q)), *rep = xmalloc(sizeof(*rep));
    for (;;) {
        int fd, r = ps_recv(a->fd, q, &fd);
        if (fd >= 0)
            close(fd); /* the relay sends no descriptors */
        if (r == 0 || (r < 0 && errno != EBADMSG))
            break; /* the relay is gone: nothing more to serve */
        if (r < 0 || (q->type != a->type && q->type != a->type2))
            continue; /* not answered: the relay's call fails */
        memset(rep, 0, sizeof(*rep));
        rep->type = PS_REPLY;
        rep->id = q->id;
        if (q->type == PS_AUTH_CHECK)
            serve_auth(q, rep);
        else
            serve_sign(q, rep);
        explicit_bzero(q, sizeof(*q));
        if (ps_send(a->fd, rep, -1) < 0)
            break;
        explicit_bzero(rep, sizeof(*rep));
    }
    free(q);
    free(rep);
    return NULL;
}

static void
take_users(const struct ps_msg *m, int fd)
{
    struct buf text = BUF_INIT;
    struct auth_users *u;
    if (ps_blob_read(fd, &text) < 0)
        return;
    u = auth_users_new("auth_users_file");
    auth_users_parse(u, text.data ? text.data : "", text.len, NULL);
    explicit_bzero(text.data, text.len);
    buf_fini(&text);
    pthread_mutex_lock(&K.mu);
    if (m->id > K.users_id) {
        auth_users_free(K.users);
        K.users = u;
        K.users_id = m->id;
        u = NULL;
    }
    pthread_mutex_unlock(&K.mu);
    auth_users_free(u);
}

static void
take_keys(const struct ps_msg *m, int fd)
{
    struct buf b = BUF_INIT;
    struct keygen *g = NULL;
    struct ps_msg ack;
    if (ps_blob_read(fd, &b) == 0)
        g = keygen_parse(m->gen, &b);
    if (b.data != NULL)
        explicit_bzero(b.data, b.len);
    buf_fini(&b);
    memset(&ack, 0, sizeof(ack));
    ack.type = PS_KEYS_ACK;
    ack.gen = m->gen;
    ack.status = g != NULL ? 0 : -1;
    if (g != NULL)
        keygen_install(g);
    if (ps_send(K.parent, &ack, -1) < 0)
        _exit(1);
}

/* The parent's messages, until it closes its end (then we exit). */
static void
parent_loop(void)
{
    struct ps_msg m;
    for (;;) {
        int fd, r = ps_recv(K.parent, &m, &fd);
        if (r == 0 || (r < 0 && errno != EBADMSG))
            return;
        if (r < 0)
            continue;
        if (m.type == PS_KEYS && fd >= 0) {
            take_keys(&m, fd);
        } else if (m.type == PS_USERS && fd >= 0) {
            take_users(&m, fd);
        } else if (m.type == PS_LOG && fd >= 0) {
            log_use(fd, true, m.arg != 0); /* the log file reopened (SIGUSR1) */
        } else if (m.type == PS_SYNCED) {
            pthread_mutex_lock(&K.mu);
            if (m.id > K.synced)
                K.synced = m.id;
            pthread_cond_broadcast(&K.cv);
            pthread_mutex_unlock(&K.mu);
            if (fd >= 0)
                close(fd);
        } else if (fd >= 0) {
            close(fd);
        }
    }
}

int
ps_keys_main(const struct ps_keys_fds *fds)
{
    static struct server_arg args[2 + PS_AUTH_THREADS];
    pthread_t th;
    pthread_mutex_init(&K.mu, NULL);
    pthread_cond_init(&K.cv, NULL);
    K.parent = fds->parent;
    args[0] = (struct server_arg){ fds->tls, PS_TLS_RSA_SIGN, PS_TLS_EC_SIGN };
    args[1] = (struct server_arg){ fds->dkim, PS_DKIM_SIGN, PS_DKIM_SIGN };
    for (size_t i = 0; i < PS_AUTH_THREADS; i++)
        args[2 + i] = (struct server_arg){ fds->auth, PS_AUTH_CHECK, PS_AUTH_CHECK };
    for (size_t i = 0; i < TERN_ARRAY_LEN(args); i++) {
        if (pthread_create(&th, NULL, server_main, &args[i]) != 0)
            return 1;
        pthread_detach(th);
    }
    parent_loop();
    return 0;
}

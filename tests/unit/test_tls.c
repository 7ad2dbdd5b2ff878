/*
 * Unit tests for src/tls: server contexts from generated certificates (good,
 * mismatched key, missing file, key readable by others, bad cipher lists),
 * and real in-memory handshakes between a server and a client context:
 * negotiated version and cipher, the minimum version, certificate and host
 * name verification, SNI, and contexts outliving their last reference.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "tls/tls.h"
#include "util/buf.h"
#include "util/util.h"

static char dir[] = "/tmp/test_tls.XXXXXX";
static char cert_a[80], key_a[80], cert_b[80], key_b[80];

/* A self-signed certificate for cn (with a DNS SAN) and its key. */
static void
make_cert(const char *cn, const char *cert_path, const char *key_path)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    X509_NAME *n;
    X509_EXTENSION *ext;
    X509V3_CTX v3;
    char san[128];
    FILE *f;
    assert_non_null(k);
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    snprintf(san, sizeof(san), "DNS:%s", cn);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    assert_non_null(ext);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    f = fopen(cert_path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    assert_int_equal(fclose(f), 0);
    f = fopen(key_path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(key_path, 0600), 0);
    X509_free(x);
    EVP_PKEY_free(k);
}

static int
setup(void **state)
{
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(cert_a, sizeof(cert_a), "%s/a.crt", dir);
    snprintf(key_a, sizeof(key_a), "%s/a.key", dir);
    snprintf(cert_b, sizeof(cert_b), "%s/b.crt", dir);
    snprintf(key_b, sizeof(key_b), "%s/b.key", dir);
    make_cert("tern.test", cert_a, key_a);
    make_cert("other.test", cert_b, key_b);
    return 0;
}

static int
teardown(void **state)
{
    unlink(cert_a);
    unlink(key_a);
    unlink(cert_b);
    unlink(key_b);
    rmdir(dir);
    return 0;
}

/* A config with the given overrides (NULL-terminated), which must load. */
static struct config *
cfg_with(const char *const *ov)
{
    struct buf err = BUF_INIT;
    size_t n = 0;
    struct config *c;
    while (ov[n] != NULL)
        n++;
    c = config_load(NULL, ov, n, false, &err);
    if (c == NULL)
        print_message("config: %s\n", err.data);
    assert_non_null(c);
    buf_fini(&err);
    return c;
}

static void
test_server_ctx_errors(void **state)
{
    char oc[128], ok[128], okb[128], omiss[128];
    snprintf(oc, sizeof(oc), "tls_cert_file=%s", cert_a);
    snprintf(ok, sizeof(ok), "tls_key_file=%s", key_a);
    snprintf(okb, sizeof(okb), "tls_key_file=%s", key_b);
    snprintf(omiss, sizeof(omiss), "tls_cert_file=%s/missing.crt", dir);
    const struct {
        const char *name;
        const char *ov[4];
        int want;
        const char *err; /* substring of the error, or NULL */
    } cases[] = {
        { "none configured", { NULL }, 0, NULL },
        { "good", { oc, ok, NULL }, 0, NULL },
        { "mismatched key", { oc, okb, NULL }, -1, "does not match" },
        { "missing cert", { omiss, ok, NULL }, -1, "tls_cert_file" },
        { "key as cert", { "tls_cert_file=/dev/null", ok, NULL }, -1, "tls_cert_file" },
        { "bad ciphers", { oc, ok, "tls_ciphers=NOPE-NOT-A-CIPHER" }, -1, "tls_ciphers" },
        { "bad suites", { oc, ok, "tls_ciphersuites=TLS_NOPE" }, -1, "tls_ciphersuites" },
        { "good ciphers", { oc, ok, "tls_ciphers=ECDHE-ECDSA-AES128-GCM-SHA256" }, 0, NULL },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct config *c = cfg_with(cases[i].ov);
        struct tls_ctx *t = (struct tls_ctx *)1;
        struct buf err = BUF_INIT;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(tls_server_ctx_new(c, &t, &err), cases[i].want);
        if (cases[i].want < 0) {
            assert_null(t);
            assert_non_null(err.data);
            print_message("  err: %s", err.data);
            assert_non_null(strstr(err.data, cases[i].err));
        } else if (c->tls_cert_file == NULL) {
            assert_null(t);
        } else {
            assert_non_null(t);
        }
        tls_ctx_unref(t);
        buf_fini(&err);
        config_unref(c);
    }
    /* A key readable by others is refused. */
    {
        const char *ov[] = { oc, ok, NULL };
        struct config *c = cfg_with(ov);
        struct tls_ctx *t;
        struct buf err = BUF_INIT;
        assert_int_equal(chmod(key_a, 0644), 0);
        assert_int_equal(tls_server_ctx_new(c, &t, &err), -1);
        assert_non_null(strstr(err.data, "readable by others"));
        assert_int_equal(chmod(key_a, 0640), 0); /* group read is fine */
        buf_reset(&err);
        assert_int_equal(tls_server_ctx_new(c, &t, &err), 0);
        tls_ctx_unref(t);
        assert_int_equal(chmod(key_a, 0600), 0);
        buf_fini(&err);
        config_unref(c);
    }
}

/* Run a handshake between two SSLs over memory BIOs. 0 ok, -1 failed. */
static int
handshake(SSL *srv, SSL *cli)
{
    BIO *s_in = BIO_new(BIO_s_mem()), *s_out = BIO_new(BIO_s_mem());
    BIO *c_in = BIO_new(BIO_s_mem()), *c_out = BIO_new(BIO_s_mem());
    int s_done = 0, c_done = 0;
    SSL_set_bio(srv, s_in, s_out);
    SSL_set_bio(cli, c_in, c_out);
    SSL_set_accept_state(srv);
    SSL_set_connect_state(cli);
    for (int round = 0; round < 20 && !(s_done && c_done); round++) {
        char buf[16384];
        int n, r;
        if (!c_done) {
            r = SSL_do_handshake(cli);
            if (r == 1)
                c_done = 1;
            else if (SSL_get_error(cli, r) != SSL_ERROR_WANT_READ)
                return -1;
        }
        while ((n = BIO_read(c_out, buf, sizeof(buf))) > 0)
            BIO_write(s_in, buf, n);
        if (!s_done) {
            r = SSL_do_handshake(srv);
            if (r == 1)
                s_done = 1;
            else if (SSL_get_error(srv, r) != SSL_ERROR_WANT_READ)
                return -1;
        }
        while ((n = BIO_read(s_out, buf, sizeof(buf))) > 0)
            BIO_write(c_in, buf, n);
    }
    return s_done && c_done ? 0 : -1;
}

static void
test_handshakes(void **state)
{
    char oc[128], ok[128];
    snprintf(oc, sizeof(oc), "tls_cert_file=%s", cert_a);
    snprintf(ok, sizeof(ok), "tls_key_file=%s", key_a);
    const struct {
        const char *name;
        const char *srv_min;  /* tls_min_version */
        int cli_min, cli_max; /* client protocol bounds (0: none) */
        const char *ca;       /* client CA file, NULL: system store */
        bool verify;
        const char *host;    /* host-name check */
        int want;            /* handshake result */
        const char *version; /* negotiated */
        bool verified;
    } cases[] = {
        { "tls13 default", "TLSv1.2", 0, 0, cert_a, true, "tern.test", 0, "TLSv1.3", true },
        { "tls12 client", "TLSv1.2", 0, TLS1_2_VERSION, cert_a, true, "tern.test", 0, "TLSv1.2",
            true },
        { "floor 1.3 refuses 1.2", "TLSv1.3", 0, TLS1_2_VERSION, cert_a, false, NULL, -1, NULL,
            false },
        { "floor 1.3 with 1.3", "TLSv1.3", 0, 0, cert_a, true, "tern.test", 0, "TLSv1.3", true },
        { "client refuses 1.1", "TLSv1.2", 0, TLS1_1_VERSION, NULL, false, NULL, -1, NULL, false },
        { "wrong host", "TLSv1.2", 0, 0, cert_a, true, "evil.test", -1, NULL, false },
        { "untrusted ca", "TLSv1.2", 0, 0, cert_b, true, "tern.test", -1, NULL, false },
        { "no verify, untrusted", "TLSv1.2", 0, 0, cert_b, false, "tern.test", 0, "TLSv1.3",
            false },
        { "no verify, host ignored", "TLSv1.2", 0, 0, cert_a, false, "evil.test", 0, "TLSv1.3",
            false },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char omin[64];
        snprintf(omin, sizeof(omin), "tls_min_version=%s", cases[i].srv_min);
        const char *ov[] = { oc, ok, omin, NULL };
        struct config *c = cfg_with(ov);
        struct tls_ctx *st, *ct;
        struct tls_client_opts co = { cases[i].ca, cases[i].verify, TLSVER_1_2, NULL, NULL };
        struct buf err = BUF_INIT;
        SSL *s, *cl;
        struct tls_info si, ci;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(tls_server_ctx_new(c, &st, &err), 0);
        ct = tls_client_ctx_new(&co, &err);
        assert_non_null(ct);
        s = tls_server_ssl_new(st);
        cl = tls_client_ssl_new(ct, "tern.test", cases[i].host);
        assert_non_null(s);
        assert_non_null(cl);
        if (cases[i].cli_max) {
            SSL_set_min_proto_version(cl, cases[i].cli_max <= TLS1_1_VERSION ? TLS1_VERSION : 0);
            SSL_set_max_proto_version(cl, cases[i].cli_max);
        }
        /* The contexts may go before the connections (reload). */
        tls_ctx_unref(st);
        tls_ctx_unref(ct);
        assert_int_equal(handshake(s, cl), cases[i].want);
        if (cases[i].want == 0) {
            tls_describe(s, &si);
            tls_describe(cl, &ci);
            assert_string_equal(si.version, cases[i].version);
            assert_string_equal(ci.version, cases[i].version);
            assert_string_equal(si.cipher, ci.cipher);
            assert_true(si.bits >= 128 && si.alg_bits >= si.bits);
            assert_int_equal(ci.verified, cases[i].verified);
            assert_false(si.verified); /* no client certificate */
            assert_string_equal(SSL_get_servername(s, TLSEXT_NAMETYPE_host_name), "tern.test");
        }
        ERR_clear_error();
        SSL_free(s);
        SSL_free(cl);
        buf_fini(&err);
        config_unref(c);
    }
}

static void
test_client_opts(void **state)
{
    struct tls_client_opts co = { "/nonexistent/ca.pem", true, TLSVER_1_2, NULL, NULL };
    struct buf err = BUF_INIT;
    struct tls_ctx *t = tls_client_ctx_new(&co, &err);
    SSL *s;
    assert_null(t);
    assert_non_null(strstr(err.data, "tls_ca_file"));
    co.ca_file = NULL; /* the system store */
    co.ciphers = "NOT-A-CIPHER";
    buf_reset(&err);
    assert_null(tls_client_ctx_new(&co, &err));
    assert_non_null(strstr(err.data, "tls_ciphers"));
    co.ciphers = NULL;
    t = tls_client_ctx_new(&co, &err);
    assert_non_null(t);
    /* Address literals get no SNI (RFC 6066 §3). */
    s = tls_client_ssl_new(t, "192.0.2.1", NULL);
    assert_null(SSL_get_servername(s, TLSEXT_NAMETYPE_host_name));
    SSL_free(s);
    s = tls_client_ssl_new(t, "mx.example", "mx.example");
    assert_string_equal(SSL_get_servername(s, TLSEXT_NAMETYPE_host_name), "mx.example");
    SSL_free(s);
    assert_ptr_equal(tls_ctx_ref(t), t);
    tls_ctx_unref(t);
    tls_ctx_unref(t);
    tls_ctx_unref(NULL);
    buf_fini(&err);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_ctx_errors),
        cmocka_unit_test(test_handshakes),
        cmocka_unit_test(test_client_opts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

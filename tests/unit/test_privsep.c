/*
 * Unit tests for the pieces of ternd's process split that need no fork:
 * the RSA-PSS block check that keeps the keys process from decrypting,
 * message framing (wrong sizes and types are never acted on), blob records
 * (every length checked), and listening sockets (IPv4 and IPv6 on one
 * port; --check's overlap and local-address checks).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <sys/socket.h>
#include <unistd.h>

#include "privsep/privsep.h"
#include "util/util.h"

/* An EMSA-PSS block as OpenSSL makes it: sign with PSS, then undo the
 * private operation with the public key (raw). */
static size_t
pss_block(EVP_PKEY *k, const EVP_MD *md, int saltlen, unsigned char *em, size_t cap)
{
    unsigned char dg[64] = { 1, 2, 3 }, sig[1024];
    size_t sl = sizeof(sig), el = cap;
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
    assert_non_null(c);
    assert_int_equal(EVP_PKEY_sign_init(c), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PSS_PADDING), 1);
    assert_int_equal(EVP_PKEY_CTX_set_signature_md(c, md), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(c, saltlen), 1);
    assert_int_equal(EVP_PKEY_sign(c, sig, &sl, dg, (size_t)EVP_MD_get_size(md)), 1);
    EVP_PKEY_CTX_free(c);
    c = EVP_PKEY_CTX_new(k, NULL);
    assert_int_equal(EVP_PKEY_verify_recover_init(c), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(c, RSA_NO_PADDING), 1);
    assert_int_equal(EVP_PKEY_verify_recover(c, em, &el, sig, sl), 1);
    EVP_PKEY_CTX_free(c);
    return el;
}

static void
test_pss_blocks(void **state)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    unsigned char em[512];
    const EVP_MD *mds[] = { EVP_sha256(), EVP_sha384(), EVP_sha512() };
    assert_non_null(k);
    for (size_t i = 0; i < TERN_ARRAY_LEN(mds); i++) {
        size_t n = pss_block(k, mds[i], RSA_PSS_SALTLEN_DIGEST, em, sizeof(em));
        assert_int_equal(n, 256);
        assert_true(ps_pss_block_ok(em, n, 2048));
        /* any bit flipped in the masked part breaks the structure */
        em[10] ^= 0x40;
        assert_false(ps_pss_block_ok(em, n, 2048));
    }
    /* TLS 1.3 needs salt = hash length; a longer salt is not taken */
    size_t n = pss_block(k, EVP_sha256(), 64, em, sizeof(em));
    assert_false(ps_pss_block_ok(em, n, 2048));
    /* what a decryption oracle would be asked: arbitrary blocks */
    for (int i = 0; i < 256; i++) {
        for (size_t j = 0; j < 256; j++)
            em[j] = (unsigned char)(i * 31 + j * 7);
        em[0] &= 0x7f;
        em[255] = 0xbc; /* even with the trailer right */
        assert_false(ps_pss_block_ok(em, 256, 2048));
    }
    assert_false(ps_pss_block_ok(em, 255, 2048)); /* short */
    EVP_PKEY_free(k);
}

static void
test_messages(void **state)
{
    int sv[2], fd;
    struct ps_msg m, got;
    char junk[64] = "not a message";
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    memset(&m, 0, sizeof(m));
    m.type = PS_DKIM_SIGN;
    m.id = 42;
    m.len = 32;
    assert_int_equal(ps_send(sv[0], &m, -1), 0);
    assert_int_equal(ps_recv(sv[1], &got, &fd), 1);
    assert_int_equal(fd, -1);
    assert_int_equal(got.id, 42);
    /* with a descriptor */
    assert_int_equal(ps_send(sv[0], &m, 0), 0);
    assert_int_equal(ps_recv(sv[1], &got, &fd), 1);
    assert_true(fd > 2);
    close(fd);
    /* short message, bad type, bad length: refused, nothing kept */
    assert_int_equal(send(sv[0], junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
    assert_int_equal(ps_recv(sv[1], &got, &fd), -1);
    m.type = 999;
    assert_int_equal(ps_send(sv[0], &m, 0), 0);
    assert_int_equal(ps_recv(sv[1], &got, &fd), -1);
    assert_int_equal(fd, -1);
    m.type = PS_REPLY;
    m.len = PS_DATA_MAX + 1;
    assert_int_equal(ps_send(sv[0], &m, -1), 0);
    assert_int_equal(ps_recv(sv[1], &got, &fd), -1);
    /* unterminated strings are cut */
    m.len = 0;
    memset(m.user, 'u', sizeof(m.user));
    assert_int_equal(ps_send(sv[0], &m, -1), 0);
    assert_int_equal(ps_recv(sv[1], &got, &fd), 1);
    assert_int_equal(strlen(got.user), PS_USER_MAX);
    close(sv[0]);
    assert_int_equal(ps_recv(sv[1], &got, &fd), 0);
    close(sv[1]);
}

static void
test_blobs(void **state)
{
    struct buf b = BUF_INIT, r = BUF_INIT;
    size_t off = 0, n;
    uint32_t type;
    const char *p;
    int fd;
    ps_blob_add(&b, PS_R_CONFIG, "a = b\n", 6);
    ps_blob_add(&b, PS_R_CERT, "", 0);
    fd = ps_blob_fd(&b);
    assert_true(fd >= 0);
    assert_int_equal(b.len, 0); /* cleared: it may have held keys */
    assert_int_equal(ps_blob_read(fd, &r), 0);
    assert_int_equal(ps_blob_next(&r, &off, &type, &p, &n), 1);
    assert_int_equal(type, PS_R_CONFIG);
    assert_int_equal(n, 6);
    assert_memory_equal(p, "a = b\n", 6);
    assert_int_equal(ps_blob_next(&r, &off, &type, &p, &n), 1);
    assert_int_equal(n, 0);
    assert_int_equal(ps_blob_next(&r, &off, &type, &p, &n), 0);
    /* a length past the end, a truncated header */
    r.len = 0;
    off = 0;
    uint32_t h[2] = { PS_R_CONFIG, 100 };
    buf_append(&r, h, sizeof(h));
    buf_append(&r, "short", 5);
    assert_int_equal(ps_blob_next(&r, &off, &type, &p, &n), -1);
    r.len = 3;
    off = 0;
    assert_int_equal(ps_blob_next(&r, &off, &type, &p, &n), -1);
    buf_fini(&b);
    buf_fini(&r);
}

static bool
have_ipv6(void)
{
    struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static void
test_listen_both_families(void **state)
{
    struct hostport v4 = { "0.0.0.0", 0, false }, v6 = { "::", 0, false };
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    struct buf err = BUF_INIT;
    int a, b;
    if (!have_ipv6())
        skip();
    assert_int_equal(ps_listen_tcp("smtp_listen", &v4, &a, &err), 0);
    assert_int_equal(getsockname(a, (struct sockaddr *)&sa, &sl), 0);
    v6.port = ntohs(sa.sin_port);
    /* RFC 3493 §5.3: V6ONLY, or this bind fails with EADDRINUSE */
    assert_int_equal(ps_listen_tcp("smtp_listen", &v6, &b, &err), 0);
    close(a);
    close(b);
    v4.port = 1;
    snprintf(v4.host, sizeof(v4.host), "mail.example");
    assert_int_equal(ps_listen_tcp("smtp_listen", &v4, &a, &err), -1);
    assert_non_null(strstr(err.data, "not a numeric address"));
    buf_fini(&err);
}

static int
reuseport_of(int fd)
{
    int on = -1;
    socklen_t l = sizeof(on);
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, &l), 0);
    return on;
}

/* One socket per receive loop: an SO_REUSEPORT group, never joined to
 * sockets already on the address (another daemon's, or a group of ours). */
static void
test_listen_group(void **state)
{
    struct hostport hp = { "127.0.0.1", 0, false };
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    struct buf err = BUF_INIT;
    int lone, fds[3], again[3], one[1];
    assert_int_equal(ps_listen_tcp("smtp_listen", &hp, &lone, &err), 0);
    assert_int_equal(getsockname(lone, (struct sockaddr *)&sa, &sl), 0);
    hp.port = ntohs(sa.sin_port);
    /* Something listens there already: refused, as a lone socket is. */
    assert_int_equal(ps_listen_tcp_group("smtp_listen", &hp, 3, fds, &err), -1);
    assert_non_null(strstr(err.data, "cannot listen on 127.0.0.1"));
    close(lone);
    assert_int_equal(ps_listen_tcp_group("smtp_listen", &hp, 3, fds, &err), 0);
    for (int i = 0; i < 3; i++) {
        sl = sizeof(sa);
        assert_int_equal(getsockname(fds[i], (struct sockaddr *)&sa, &sl), 0);
        assert_int_equal(ntohs(sa.sin_port), hp.port);
        assert_int_equal(reuseport_of(fds[i]), 1);
    }
    /* A second group does not join the first. */
    assert_int_equal(ps_listen_tcp_group("smtp_listen", &hp, 3, again, &err), -1);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    /* One loop: a plain socket. */
    assert_int_equal(ps_listen_tcp_group("smtp_listen", &hp, 1, one, &err), 0);
    assert_int_equal(reuseport_of(one[0]), 0);
    close(one[0]);
    buf_fini(&err);
}

static void
test_listen_check(void **state)
{
    static const struct {
        const char *smtp, *sub;
        const char *want; /* NULL: good */
    } cases[] = {
        { "127.0.0.1", "127.0.0.2", NULL }, { "127.0.0.1", "127.0.0.1", "overlaps" },
        { "0.0.0.0", "127.0.0.1", "overlaps" },
        { "::", "127.0.0.1", NULL },                                  /* other family: V6ONLY */
        { "192.0.2.77", "127.0.0.1", "cannot listen on 192.0.2.77" }, /* not ours */
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct hostport a = { "", 2525, false }, b = { "", 2525, false };
        struct config c;
        struct buf err = BUF_INIT;
        if (strchr(cases[i].smtp, ':') != NULL && !have_ipv6())
            continue;
        memset(&c, 0, sizeof(c));
        snprintf(a.host, sizeof(a.host), "%s", cases[i].smtp);
        snprintf(b.host, sizeof(b.host), "%s", cases[i].sub);
        c.smtp_listen = &a;
        c.n_smtp_listen = 1;
        c.submission_listen = &b;
        c.n_submission_listen = 1;
        int rc = ps_listen_check(&c, &err);
        if (cases[i].want == NULL) {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, -1);
            assert_non_null(strstr(err.data, cases[i].want));
        }
        buf_fini(&err);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pss_blocks),
        cmocka_unit_test(test_messages),
        cmocka_unit_test(test_blobs),
        cmocka_unit_test(test_listen_both_families),
        cmocka_unit_test(test_listen_group),
        cmocka_unit_test(test_listen_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

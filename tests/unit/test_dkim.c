/*
 * Unit tests of src/dkim: canonicalization against RFC 6376 §3.4.5 (golden
 * files in tests/golden/dkim) and tables, the signed header set and From
 * oversigning, From domain extraction, key loading and key records, and a
 * corpus of messages signed with RSA and Ed25519 keys in every
 * canonicalization, verified by dkimpy (tests/golden/dkim/verify_dkim.py,
 * run with /usr/bin/python3; the test fails when it says no). Also the
 * spool's finisher hook and prefix record that carry the signatures.
 */
#include <setjmp.h> /* cmocka.h needs these first */
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dkim/dkim.h"
#include "dkim/dkim_int.h"
#include "spool/spool.h"
#include "spool/spool_int.h"
#include "util/log.h"
#include "util/loopq.h"
#include "util/util.h"

#define PYTHON "/usr/bin/python3"

static char tmpdir[64];

/* --- helpers --- */

static void
path_in(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < cap);
}

static void
write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(close(fd), 0);
}

static char *
read_all(const char *path, size_t *len)
{
    struct buf b = BUF_INIT;
    char chunk[4096];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    if (len)
        *len = b.len;
    return buf_take(&b);
}

/* tests/golden/dkim: $TERN_GOLDEN_DIR/../dkim, else from the directory the
 * test runs in (meson: BUILD/tests/unit) or its ancestors, else __FILE__. */
static int
golden_dir(char *out)
{
    static const char *const up[] = { "", "../", "../../", "../../../", "../../../../" };
    char cand[2 * PATH_MAX], src[PATH_MAX];
    struct stat st;
    char *slash;
    snprintf(src, sizeof(src), "%s", __FILE__);
    slash = strrchr(src, '/');
    if (slash != NULL)
        *slash = '\0';
    else
        snprintf(src, sizeof(src), ".");
    for (size_t i = 0; i < 2 * TERN_ARRAY_LEN(up); i++) {
        if (i % 2 == 0)
            snprintf(cand, sizeof(cand), "%stests/golden/dkim", up[i / 2]);
        else if (src[0] == '/')
            snprintf(cand, sizeof(cand), "%s/../golden/dkim", src);
        else
            snprintf(cand, sizeof(cand), "%s%s/../golden/dkim", up[i / 2], src);
        if (realpath(cand, out) != NULL && stat(out, &st) == 0 && S_ISDIR(st.st_mode))
            return 0;
    }
    return -1;
}

/* The RFC's notation: <SP>, <HTAB>, <CRLF>; real whitespace and '#' lines
 * are ignored. */
static void
decode_rfc(const char *t, struct buf *out)
{
    static const struct {
        const char *tok, *bytes;
    } toks[] = { { "<SP>", " " }, { "<HTAB>", "\t" }, { "<CRLF>", "\r\n" } };
    bool bol = true;
    while (*t) {
        bool hit = false;
        if (bol && *t == '#') {
            while (*t && *t != '\n')
                t++;
            continue;
        }
        bol = *t == '\n';
        if (*t == ' ' || *t == '\t' || *t == '\n') {
            t++;
            continue;
        }
        for (size_t i = 0; i < TERN_ARRAY_LEN(toks) && !hit; i++) {
            size_t n = strlen(toks[i].tok);
            if (strncmp(t, toks[i].tok, n) == 0) {
                buf_append_str(out, toks[i].bytes);
                t += n;
                hit = true;
            }
        }
        if (!hit)
            buf_append_char(out, *t++);
    }
}

static void
collect(const void *p, size_t n, void *arg)
{
    buf_append(arg, p, n);
}

/* Canonical body of in[] fed in pieces of chunk bytes (0: one piece). */
static void
canon_body(enum dkim_canon c, const char *in, size_t len, size_t chunk, struct buf *out)
{
    struct dkim_body b;
    dkim_body_init(&b, c, collect, out);
    if (chunk == 0)
        chunk = len ? len : 1;
    for (size_t off = 0; off < len; off += chunk)
        dkim_body_feed(&b, in + off, len - off < chunk ? len - off : chunk);
    dkim_body_end(&b);
}

/* Canonical header fields of a header section, in order. */
static void
canon_headers(enum dkim_canon c, const char *h, size_t len, struct buf *out)
{
    struct dkim_hdr hdr;
    assert_int_equal(dkim_hdr_parse(&hdr, h, len), 0);
    for (size_t i = 0; i < hdr.n; i++)
        dkim_canon_header(c, h + hdr.f[i].off, hdr.f[i].len, out);
    dkim_hdr_fini(&hdr);
}

/* --- canonicalization --- */

static void
test_rfc_example(void **state)
{
    static const struct {
        const char *ref;
        enum dkim_canon c;
    } cases[] = { { "rfc6376-3.4.5.relaxed.ref", DKIM_CANON_RELAXED },
        { "rfc6376-3.4.5.simple.ref", DKIM_CANON_SIMPLE } };
    char dir[PATH_MAX], p[PATH_MAX + 64];
    char *text;
    struct buf msg = BUF_INIT;
    const char *sep;
    assert_int_equal(golden_dir(dir), 0);
    path_in(p, sizeof(p), dir, "rfc6376-3.4.5.in");
    text = read_all(p, NULL);
    assert_non_null(text);
    decode_rfc(text, &msg);
    free(text);
    sep = strstr(msg.data, "\r\n\r\n");
    assert_non_null(sep);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf want = BUF_INIT, got = BUF_INIT;
        size_t hlen = (size_t)(sep - msg.data) + 2;
        path_in(p, sizeof(p), dir, cases[i].ref);
        text = read_all(p, NULL);
        assert_non_null(text);
        decode_rfc(text, &want);
        free(text);
        canon_headers(cases[i].c, msg.data, hlen, &got);
        canon_body(cases[i].c, msg.data + hlen + 2, msg.len - hlen - 2, 0, &got);
        if (got.len != want.len || memcmp(got.data, want.data, got.len) != 0)
            fail_msg("%s: got [%s] want [%s]", cases[i].ref, got.data, want.data);
        buf_fini(&want);
        buf_fini(&got);
    }
    buf_fini(&msg);
}

static void
test_canon_header(void **state)
{
    static const struct {
        const char *name;
        enum dkim_canon c;
        const char *in, *want;
    } cases[] = {
        { "runs", DKIM_CANON_RELAXED, "Subject:  Hello \t World \r\n", "subject:Hello World\r\n" },
        { "ws before colon", DKIM_CANON_RELAXED, "SUBJECT\t : x\r\n", "subject:x\r\n" },
        { "folded", DKIM_CANON_RELAXED, "X-A: a\r\n\tb\r\n  c\r\n", "x-a:a b c\r\n" },
        { "empty", DKIM_CANON_RELAXED, "Empty:\r\n", "empty:\r\n" },
        { "only ws", DKIM_CANON_RELAXED, "Empty: \t \r\n", "empty:\r\n" },
        { "8-bit kept", DKIM_CANON_RELAXED,
            "Subject: Gr\xc3\xbc\xc3\x9f"
            "e\r\n",
            "subject:Gr\xc3\xbc\xc3\x9f"
            "e\r\n" },
        { "simple as is", DKIM_CANON_SIMPLE, "SUBJECT\t : x \r\n\ty\r\n",
            "SUBJECT\t : x \r\n\ty\r\n" },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf got = BUF_INIT;
        dkim_canon_header(cases[i].c, cases[i].in, strlen(cases[i].in), &got);
        if (strcmp(got.data, cases[i].want) != 0)
            fail_msg("%s: got [%s]", cases[i].name, got.data);
        buf_fini(&got);
    }
}

static void
test_canon_body(void **state)
{
    static const struct {
        const char *name;
        enum dkim_canon c;
        const char *in, *want;
    } cases[] = {
        { "relaxed empty", DKIM_CANON_RELAXED, "", "" },
        { "relaxed CRLF", DKIM_CANON_RELAXED, "\r\n", "" },
        { "relaxed blank lines", DKIM_CANON_RELAXED, "\r\n\r\n\r\n", "" },
        { "relaxed one line", DKIM_CANON_RELAXED, "a\r\n", "a\r\n" },
        { "relaxed no CRLF", DKIM_CANON_RELAXED, "a", "a\r\n" },
        { "relaxed trailing", DKIM_CANON_RELAXED, "a\r\n\r\n\r\n", "a\r\n" },
        { "relaxed runs", DKIM_CANON_RELAXED, "a \t b  \r\n", "a b\r\n" },
        { "relaxed leading", DKIM_CANON_RELAXED, " \t a\r\n", " a\r\n" },
        { "relaxed ws line inside", DKIM_CANON_RELAXED, " \t \r\n\r\nx\r\n", "\r\n\r\nx\r\n" },
        { "relaxed ws lines trailing", DKIM_CANON_RELAXED, "x\r\n \t \r\n\t\r\n\r\n", "x\r\n" },
        { "relaxed bare CR", DKIM_CANON_RELAXED, "a\rb\r\n", "a\rb\r\n" },
        { "relaxed CR at end", DKIM_CANON_RELAXED, "a\r", "a\r\r\n" },
        { "relaxed dots", DKIM_CANON_RELAXED, ".\r\n..x\r\n", ".\r\n..x\r\n" },
        { "simple empty", DKIM_CANON_SIMPLE, "", "\r\n" },
        { "simple CRLF", DKIM_CANON_SIMPLE, "\r\n", "\r\n" },
        { "simple blank lines", DKIM_CANON_SIMPLE, "\r\n\r\n\r\n", "\r\n" },
        { "simple no CRLF", DKIM_CANON_SIMPLE, "a", "a\r\n" },
        { "simple trailing", DKIM_CANON_SIMPLE, "a\r\n\r\n", "a\r\n" },
        { "simple ws line", DKIM_CANON_SIMPLE, " \r\n", " \r\n" },
        { "simple ws kept", DKIM_CANON_SIMPLE, "a \t \r\n \r\n\r\n", "a \t \r\n \r\n" },
        { "simple blank inside", DKIM_CANON_SIMPLE, "\r\n\r\nx\r\n", "\r\n\r\nx\r\n" },
    };
    static const size_t chunks[] = { 0, 1, 2, 3, 5 };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        for (size_t k = 0; k < TERN_ARRAY_LEN(chunks); k++) {
            struct buf got = BUF_INIT;
            canon_body(cases[i].c, cases[i].in, strlen(cases[i].in), chunks[k], &got);
            if (got.len != strlen(cases[i].want) ||
                memcmp(got.data ? got.data : "", cases[i].want, got.len) != 0)
                fail_msg("%s (chunks of %zu): got [%s]", cases[i].name, chunks[k],
                    got.data ? got.data : "");
            buf_fini(&got);
        }
    }
}

/* --- header set, From domain --- */

static void
test_header_select(void **state)
{
    static const size_t NO = DKIM_NO_FIELD;
    static const struct {
        const char *name, *hdr, *want;
        size_t order[8];
    } cases[] = {
        { "basic", "From: a@x.test\r\nTo: b@y.test\r\nSubject: s\r\n", "from:from:subject:to",
            { 0, NO, 2, 1 } },
        { "repeated bottom-up, Received and Return-Path never",
            "Received: r\r\nFrom: a@x.test\r\nTo: 1\r\nCc: c\r\nTo: 2\r\nReturn-Path: <x>\r\n",
            "from:from:to:to:cc", { 1, NO, 4, 2, 3 } },
        { "list-*", "From: a\r\nList-Id: l\r\nlist-post: p\r\nList-ID: l2\r\nX-Other: y\r\n",
            "from:from:list-id:list-id:list-post", { 0, NO, 3, 1, 2 } },
        { "case", "FROM: a\r\nSUBJECT: s\r\nMIME-Version: 1.0\r\n",
            "from:from:subject:mime-version", { 0, NO, 1, 2 } },
        { "no from: still listed", "Subject: s\r\n", "from:subject", { NO, 0 } },
        { "mime", "Content-Type: text/plain\r\nFrom: a\r\nContent-Transfer-Encoding: 8bit\r\n",
            "from:from:content-type:content-transfer-encoding", { 1, NO, 0, 2 } },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct dkim_hdr h;
        struct buf hl = BUF_INIT;
        size_t order[DKIM_H_MAX], n;
        assert_int_equal(dkim_hdr_parse(&h, cases[i].hdr, strlen(cases[i].hdr)), 0);
        n = dkim_hdr_select(&h, &hl, order);
        if (strcmp(hl.data, cases[i].want) != 0)
            fail_msg("%s: h=%s", cases[i].name, hl.data);
        for (size_t k = 0; k < n; k++)
            if (order[k] != cases[i].order[k])
                fail_msg("%s: entry %zu is field %zu", cases[i].name, k, order[k]);
        buf_fini(&hl);
        dkim_hdr_fini(&h);
    }
}

/* Many repeated fields and long List-* names: h= stays bounded. */
static void
test_header_select_bounds(void **state)
{
    struct buf text = BUF_INIT, hl = BUF_INIT;
    struct dkim_hdr h;
    size_t order[DKIM_H_MAX], n, tos = 0;
    buf_append_str(&text, "From: a@example.com\r\n");
    for (int i = 0; i < 100; i++)
        buf_printf(&text, "To: t%d@example.com\r\n", i);
    for (int i = 0; i < 40; i++)
        buf_printf(&text, "List-%0200d: x\r\n", i);
    assert_int_equal(dkim_hdr_parse(&h, text.data, text.len), 0);
    n = dkim_hdr_select(&h, &hl, order);
    assert_true(n <= DKIM_H_MAX && hl.len <= DKIM_HLIST_MAX);
    assert_int_equal(strncmp(hl.data, "from:from:to:", 13), 0);
    for (size_t k = 2; k < n && order[k] != DKIM_NO_FIELD && order[k] <= 100; k++) {
        assert_int_equal(order[k], 100 - tos); /* the bottom-most To first */
        tos++;
    }
    assert_int_equal(tos, DKIM_NAME_REPEAT);
    dkim_hdr_fini(&h);
    buf_fini(&text);
    buf_fini(&hl);
}

static void
test_header_parse_bad(void **state)
{
    static const char *const bad[] = { "no colon here\r\n", " continuation first: x\r\n",
        "From: a\r\nbroken line\r\n", ": no name\r\n", "Bad Name: x\r\n" };
    for (size_t i = 0; i < TERN_ARRAY_LEN(bad); i++) {
        struct dkim_hdr h;
        if (dkim_hdr_parse(&h, bad[i], strlen(bad[i])) != -1)
            fail_msg("accepted [%s]", bad[i]);
        dkim_hdr_fini(&h);
    }
}

static void
test_from_domain(void **state)
{
    static const struct {
        const char *in, *want; /* want NULL: -1 */
    } cases[] = {
        { "alice@example.com", "example.com" },
        { " Alice <alice@Example.COM>", "example.com" },
        { " \"Doe, John\" <john@example.com>", "example.com" },
        { " john@example.com (John Doe)", "example.com" },
        { " (c) \"q@fake.test\" <real@example.org>", "example.org" },
        { " =?UTF-8?Q?J=C3=B6rg?= <j@example.net>", "example.net" },
        { " Name\r\n\t<a@sub.example.com>", "sub.example.com" },
        { " <@relay.test:user@example.com>", "example.com" },
        { " \"a@b\"@example.com", "example.com" },
        { " a@example.com.", "example.com" },
        { " Gr\xc3\xbc\xc3\x9f"
          "e <g@example.com>",
            "example.com" },
        { " a@example.com, b@example.com", NULL },
        { " undisclosed-recipients:;", NULL },
        { " Group: a@example.com;", NULL },
        { "", NULL },
        { "  (only a comment)", NULL },
        { " no-at-sign", NULL },
        { " a@[192.0.2.1]", NULL },
        { " <a@example.com", NULL },
        { " Bob <bob@example.com> <x@example.org>", NULL },
        { " @example.com", NULL },
        { " a@", NULL },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char d[DKIM_DOMAIN_MAX + 1];
        int rc = dkim_from_domain(cases[i].in, strlen(cases[i].in), d, sizeof(d));
        if (cases[i].want == NULL && rc != -1)
            fail_msg("[%s]: got %s, want none", cases[i].in, d);
        if (cases[i].want != NULL && (rc != 0 || strcmp(d, cases[i].want) != 0))
            fail_msg("[%s]: got %s, want %s", cases[i].in, rc == 0 ? d : "none", cases[i].want);
    }
}

/* --- keys --- */

struct keys {
    struct dkim_keyset *ks;
    struct buf records; /* keys.txt */
};

static struct keys K;

static void
make_key(const char *domain, const char *sel, enum dkim_alg alg, unsigned bits)
{
    struct buf err = BUF_INIT, txt = BUF_INIT;
    char name[128], path[256];
    struct dkim_key *k = dkim_key_generate(alg, bits, &err);
    if (k == NULL)
        fail_msg("keygen: %s", err.data);
    snprintf(name, sizeof(name), "%s.%s.key", domain, sel);
    path_in(path, sizeof(path), tmpdir, name);
    if (dkim_key_save(k, path, &err) < 0)
        fail_msg("save: %s", err.data);
    assert_int_equal(dkim_key_txt(k, &txt), 0);
    buf_printf(&K.records, "%s._domainkey.%s %s\n", sel, domain, txt.data);
    dkim_key_free(k);
    if (dkim_keyset_add(K.ks, domain, sel, path, &err) < 0)
        fail_msg("keyset_add %s: %s", path, err.data);
    buf_fini(&err);
    buf_fini(&txt);
}

static int
setup_keys(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_dkim.XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    log_set_level(LOG_CRIT);
    K.ks = dkim_keyset_new();
    make_key("example.com", "r1", DKIM_ALG_RSA_SHA256, 2048); /* dual signing */
    make_key("example.com", "e1", DKIM_ALG_ED25519_SHA256, 0);
    make_key("example.org", "e2", DKIM_ALG_ED25519_SHA256, 0);
    make_key("example.net", "r2", DKIM_ALG_RSA_SHA256, 1024);
    make_key("parent.test", "p1", DKIM_ALG_RSA_SHA256, 3072);
    return 0;
}

static void
rm_tree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *de;
    if (d == NULL) {
        unlink(path);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        char p[PATH_MAX];
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
        rm_tree(p);
    }
    closedir(d);
    rmdir(path);
}

static int
teardown_keys(void **state)
{
    dkim_keyset_unref(K.ks);
    buf_fini(&K.records);
    rm_tree(tmpdir);
    return 0;
}

static void
test_keyset_select(void **state)
{
    static const struct {
        const char *domain;
        size_t n, idx[2];
    } cases[] = {
        { "example.com", 2, { 0, 1 } },
        { "mail.example.com", 2, { 0, 1 } }, /* parent domain entry */
        { "a.b.parent.test", 1, { 4 } },
        { "example.org", 1, { 2 } },
        { "other.test", 0, { 0 } },
        { "com", 0, { 0 } },
        { "xexample.com", 0, { 0 } },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        size_t idx[DKIM_SIGS_MAX];
        size_t n = dkim_keyset_select(K.ks, cases[i].domain, idx, DKIM_SIGS_MAX);
        if (n != cases[i].n)
            fail_msg("%s: %zu entries", cases[i].domain, n);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(idx[k], cases[i].idx[k]);
    }
    assert_int_equal(dkim_keyset_select(NULL, "example.com", (size_t[1]){ 0 }, 1), 0);
}

static void
save_pkey(EVP_PKEY *pk, const char *path, const EVP_CIPHER *enc)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(
        PEM_write_PKCS8PrivateKey(f, pk, enc, enc ? "secret" : NULL, enc ? 6 : 0, NULL, NULL), 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0);
}

static void
test_key_load_errors(void **state)
{
    static const struct {
        const char *file, *want;
    } cases[] = {
        { "garbage.key", "not a PEM private key (or encrypted)" },
        { "open.key", "readable by group or others (chmod 600 it)" },
        { "ec.key", "unsupported key type EC (use RSA or Ed25519)" },
        { "small.key", "RSA key of 768 bits (use 1024 to 4096)" },
        { "enc.key", "not a PEM private key (or encrypted)" },
        { "dir.key", "not a regular file" },
        { "missing.key", "cannot read: No such file or directory" },
    };
    char p[256];
    EVP_PKEY *pk;
    path_in(p, sizeof(p), tmpdir, "garbage.key");
    write_file(p, "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n", 56, 0600);
    path_in(p, sizeof(p), tmpdir, "ec.key");
    pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(pk);
    save_pkey(pk, p, NULL);
    EVP_PKEY_free(pk);
    path_in(p, sizeof(p), tmpdir, "small.key");
    pk = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)768);
    assert_non_null(pk);
    save_pkey(pk, p, NULL);
    path_in(p, sizeof(p), tmpdir, "enc.key");
    save_pkey(pk, p, EVP_aes_256_cbc());
    path_in(p, sizeof(p), tmpdir, "open.key");
    save_pkey(pk, p, NULL);
    assert_int_equal(chmod(p, 0640), 0);
    EVP_PKEY_free(pk);
    path_in(p, sizeof(p), tmpdir, "dir.key");
    assert_int_equal(mkdir(p, 0700), 0);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf err = BUF_INIT;
        struct dkim_key *k;
        path_in(p, sizeof(p), tmpdir, cases[i].file);
        k = dkim_key_load(p, &err);
        assert_null(k);
        if (err.data == NULL || strcmp(err.data, cases[i].want) != 0)
            fail_msg("%s: [%s]", cases[i].file, err.data ? err.data : "");
        buf_fini(&err);
    }
}

static void
test_keygen_records(void **state)
{
    static const struct {
        enum dkim_alg alg;
        unsigned bits;
        const char *type;
        size_t p_len;
    } cases[] = {
        { DKIM_ALG_ED25519_SHA256, 0, "ed25519", 44 },
        { DKIM_ALG_RSA_SHA256, 2048, "rsa", 392 },
        { DKIM_ALG_RSA_SHA256, 1024, "rsa", 216 },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf err = BUF_INIT, txt = BUF_INIT, txt2 = BUF_INIT, want = BUF_INIT;
        struct dkim_key *k = dkim_key_generate(cases[i].alg, cases[i].bits, &err), *back;
        char p[256], name[32];
        struct stat st;
        assert_non_null(k);
        snprintf(name, sizeof(name), "gen%zu.key", i);
        path_in(p, sizeof(p), tmpdir, name);
        assert_int_equal(dkim_key_save(k, p, &err), 0);
        assert_int_equal(stat(p, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        assert_int_equal(dkim_key_save(k, p, &err), -1); /* never replaced */
        assert_int_equal(errno, EEXIST);
        back = dkim_key_load(p, &err);
        assert_non_null(back);
        assert_int_equal(dkim_key_alg(back), cases[i].alg);
        assert_int_equal(dkim_key_txt(k, &txt), 0);
        assert_int_equal(dkim_key_txt(back, &txt2), 0);
        assert_string_equal(txt.data, txt2.data);
        buf_printf(&want, "v=DKIM1; k=%s; p=", cases[i].type);
        assert_int_equal(strncmp(txt.data, want.data, want.len), 0);
        assert_int_equal(txt.len - want.len, cases[i].p_len);
        dkim_key_free(k);
        dkim_key_free(back);
        buf_fini(&err);
        buf_fini(&txt);
        buf_fini(&txt2);
        buf_fini(&want);
    }
    {
        struct buf err = BUF_INIT;
        assert_null(dkim_key_generate(DKIM_ALG_RSA_SHA256, 512, &err));
        assert_string_equal(err.data, "RSA keys have 1024 to 4096 bits");
        buf_fini(&err);
    }
}

static void
test_txt_strings(void **state)
{
    static const struct {
        size_t len;
        size_t parts[4];
    } cases[] = {
        { 0, { 0 } },
        { 10, { 10 } },
        { 255, { 255 } },
        { 256, { 255, 1 } },
        { 600, { 255, 255, 90 } },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char *v = xmalloc(cases[i].len + 1);
        struct buf out = BUF_INIT, want = BUF_INIT;
        size_t off = 0;
        for (size_t k = 0; k < cases[i].len; k++)
            v[k] = (char)('a' + k % 26);
        dkim_txt_strings(v, cases[i].len, &out);
        for (size_t k = 0; k == 0 || (k < 4 && cases[i].parts[k] > 0); k++) {
            buf_printf(&want, "%s\"%.*s\"", k ? " " : "", (int)cases[i].parts[k], v + off);
            off += cases[i].parts[k];
        }
        assert_string_equal(out.data, want.data);
        free(v);
        buf_fini(&out);
        buf_fini(&want);
    }
}

/* --- signing --- */

static const struct dkim_sign_opts canon_opts[] = {
    { DKIM_CANON_RELAXED, DKIM_CANON_RELAXED, 1700000000 },
    { DKIM_CANON_SIMPLE, DKIM_CANON_SIMPLE, 1700000000 },
    { DKIM_CANON_RELAXED, DKIM_CANON_SIMPLE, 1700000000 },
    { DKIM_CANON_SIMPLE, DKIM_CANON_RELAXED, 1700000000 },
};

static size_t
sign(const struct dkim_sign_opts *o, const char *msg, size_t len, size_t chunk, struct buf *out,
    struct dkim_outcome *res)
{
    struct dkim_signer *s = dkim_signer_new(K.ks, o);
    size_t n;
    if (chunk == 0)
        chunk = len ? len : 1;
    for (size_t off = 0; off < len; off += chunk)
        dkim_signer_feed(s, msg + off, len - off < chunk ? len - off : chunk);
    n = dkim_signer_finish(s, out, res);
    dkim_signer_free(s);
    return n;
}

/* The value of tag in the first signature field of sig (FWS removed). */
static void
tag_of(const char *sig, const char *tag, char *out, size_t cap)
{
    struct buf t = BUF_INIT;
    const char *p = sig;
    size_t o = 0;
    buf_printf(&t, " %s=", tag);
    while ((p = strstr(p, t.data + 1)) != NULL && p > sig && strchr(" \t;", p[-1]) == NULL)
        p++;
    assert_non_null(p);
    for (p += t.len - 1; *p && *p != ';' && o + 1 < cap; p++)
        if (!strchr(" \t\r\n", *p))
            out[o++] = *p;
    out[o] = '\0';
    buf_fini(&t);
}

static void
test_body_hash(void **state)
{
    static const char empty[] = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    static const char crlf[] = "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=";
    static const char hi[] = "RHI91NDg1Go8f6isolS2HCe2tXiflhd+gsgHAECfFTU=";
    static const struct {
        const char *name, *body;
        const char *want[2]; /* relaxed, simple */
    } cases[] = {
        { "no body at all", NULL, { empty, crlf } },
        { "empty body", "", { empty, crlf } },
        { "blank lines", "\r\n\r\n\r\n", { empty, crlf } },
        { "ws lines", " \r\n\t\r\n", { empty, "QFgmHccm4zHlCym5D6fCgInZoJSzpHz6S1jj9S0VVGg=" } },
        { "trailing blank lines", "hi\r\n\r\n\r\n", { hi, hi } },
        { "no final CRLF", "hi", { hi, hi } },
        { "relaxed trailing ws", "hi \t\r\n",
            { hi, "skMFzbVFbXVWQHlX8r3l08skLTZYvixQfjSEygjTP8A=" } },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        for (size_t c = 0; c < 2; c++) {
            struct buf msg = BUF_INIT, out = BUF_INIT;
            struct dkim_outcome res;
            char bh[64];
            buf_append_str(&msg, "From: a@example.org\r\nSubject: x\r\n");
            if (cases[i].body != NULL)
                buf_printf(&msg, "\r\n%s", cases[i].body);
            assert_int_equal(sign(&canon_opts[c], msg.data, msg.len, 1, &out, &res), 1);
            tag_of(out.data, "bh", bh, sizeof(bh));
            if (strcmp(bh, cases[i].want[c]) != 0)
                fail_msg("%s (%s): bh=%s", cases[i].name, c ? "simple" : "relaxed", bh);
            buf_fini(&msg);
            buf_fini(&out);
        }
    }
}

static void
test_not_signed(void **state)
{
    static const struct {
        const char *name, *msg, *reason;
        bool problem;
    } cases[] = {
        { "no key", "From: a@other.test\r\n\r\nx\r\n", "no key for the From domain", false },
        { "no From", "To: a@example.com\r\n\r\nx\r\n", "no From field", true },
        { "two From", "From: a@example.com\r\nFrom: b@example.com\r\n\r\nx\r\n",
            "more than one From field", true },
        { "two addresses", "From: a@example.com, b@example.com\r\n\r\nx\r\n",
            "From field has not exactly one address with a domain", true },
        { "group", "From: undisclosed-recipients:;\r\n\r\nx\r\n",
            "From field has not exactly one address with a domain", true },
        { "malformed", "From: a@example.com\r\nnot a field\r\n\r\nx\r\n",
            "malformed header section", true },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf out = BUF_INIT;
        struct dkim_outcome res;
        struct dkim_signer *s = dkim_signer_new(K.ks, &canon_opts[0]);
        dkim_signer_feed(s, cases[i].msg, strlen(cases[i].msg));
        assert_true(dkim_signer_idle(s)); /* known at the end of the header */
        assert_int_equal(dkim_signer_finish(s, &out, &res), 0);
        assert_int_equal(out.len, 0);
        if (res.reason == NULL || strcmp(res.reason, cases[i].reason) != 0)
            fail_msg("%s: %s", cases[i].name, res.reason ? res.reason : "(signed)");
        assert_int_equal(res.problem, cases[i].problem);
        dkim_signer_free(s);
        buf_fini(&out);
    }
}

static void
test_header_too_long(void **state)
{
    struct buf msg = BUF_INIT, out = BUF_INIT;
    struct dkim_outcome res;
    struct dkim_signer *s;
    buf_append_str(&msg, "From: a@example.com\r\n");
    while (msg.len <= DKIM_HEADER_MAX)
        buf_append_str(&msg, "X-Filler: 0123456789012345678901234567890123456789\r\n");
    buf_append_str(&msg, "\r\nbody\r\n");
    s = dkim_signer_new(K.ks, &canon_opts[0]);
    for (size_t off = 0; off < msg.len; off += 1000)
        dkim_signer_feed(s, msg.data + off, msg.len - off < 1000 ? msg.len - off : 1000);
    assert_int_equal(dkim_signer_finish(s, &out, &res), 0);
    assert_string_equal(res.reason, "header section longer than 256 KiB");
    assert_true(res.problem);
    dkim_signer_free(s);
    /* just under the limit: signed */
    buf_reset(&msg);
    buf_append_str(&msg, "From: a@example.com\r\n");
    while (msg.len + 60 < DKIM_HEADER_MAX)
        buf_append_str(&msg, "X-Filler: 0123456789012345678901234567890123456789\r\n");
    buf_append_str(&msg, "\r\nbody\r\n");
    assert_int_equal(sign(&canon_opts[0], msg.data, msg.len, 4096, &out, &res), 2);
    buf_fini(&msg);
    buf_fini(&out);
}

/* The corpus: what tern must sign so that others verify it. */
static void
corpus(struct buf *m, size_t i)
{
    static const char hdr[] = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n"
                              "Subject: test\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
                              "Message-ID: <m1@example.com>\r\n";
    buf_reset(m);
    switch (i) {
    case 0: /* plain */
        buf_printf(m, "%s\r\nHello Bob.\r\n", hdr);
        break;
    case 1: /* folded and long headers, trailing whitespace in fields */
        buf_append_str(m, "From: \"Doe, John (x)\" <john@Example.COM> (comment)\r\n"
                          "Subject: a folded\r\n\tsubject   with  runs \r\n  and more\r\n"
                          "To: ");
        for (int k = 0; k < 40; k++)
            buf_printf(m, "%suser%d@example.net", k ? ",\r\n  " : "", k);
        buf_append_str(m, "\r\nX-Long: ");
        for (int k = 0; k < 300; k++)
            buf_append_char(m, (char)('a' + k % 26));
        buf_append_str(m, "\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000   \r\n\r\nbody\r\n");
        break;
    case 2: /* repeated fields, Received and Return-Path above */
        buf_append_str(m, "Return-Path: <x@example.com>\r\nReceived: from a by b; now\r\n"
                          "Received: from c by d; then\r\nFrom: a@example.com\r\nTo: one@x.test\r\n"
                          "Cc: c1@x.test\r\nTo: two@x.test\r\nCc: c2@x.test\r\nCc: c3@x.test\r\n"
                          "List-Id: <l.example.com>\r\nList-Unsubscribe: <mailto:u@example.com>\r\n"
                          "List-Post: <mailto:l@example.com>\r\nComments: not signed\r\n"
                          "Subject: repeated\r\n\r\nbody\r\n");
        break;
    case 3: /* empty body */
        buf_printf(m, "%s\r\n", hdr);
        break;
    case 4: /* header only, no empty line */
        buf_append_str(m, hdr);
        break;
    case 5: /* trailing blank lines and whitespace-only lines */
        buf_printf(m, "%s\r\ntext  \r\n \t \r\n\r\nmore\r\n\r\n \r\n\r\n\r\n", hdr);
        break;
    case 6: /* 8-bit and UTF-8 */
        buf_append_str(m, "From: =?UTF-8?Q?J=C3=B6rg?= <j@example.org>\r\n"
                          "Subject: Gr\xc3\xbc\xc3\x9f"
                          "e aus K\xc3\xb6ln \xf0\x9f\x90\xa6\r\n"
                          "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                          "Content-Transfer-Encoding: 8bit\r\n\r\n"
                          "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x90\xa6\r\nlatin1 \xe9\xe8\r\n");
        break;
    case 7: /* 100 KB body with whitespace runs */
        buf_printf(m, "%s\r\n", hdr);
        for (int k = 0; m->len < 100 * 1024; k++)
            buf_printf(m, "line %d\t with  runs   %*s end\r\n", k, k % 13, "");
        break;
    case 8: /* lines starting with dots (stored unstuffed) */
        buf_printf(m, "%s\r\n.hidden\r\n..two dots\r\n.\r\nend\r\n.", hdr);
        break;
    case 9: /* parent domain entry, and Ed25519 only */
        buf_append_str(m, "From: x@mail.parent.test\r\nSubject: parent\r\n\r\nbody\r\n");
        break;
    case 10: /* multipart, no final CRLF */
        buf_append_str(m, "From: a@example.net\r\nMIME-Version: 1.0\r\n"
                          "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
                          "--b1\r\nContent-Type: text/plain\r\n\r\npart\r\n--b1--");
        break;
    case 11: /* bare CR inside lines, tabs */
        buf_printf(m, "%s\r\na\rb\r\n\t\tx\t\r\n", hdr);
        break;
    case 12: /* header only, its last line without CRLF (BDAT) */
        buf_append(m, hdr, strlen(hdr) - 2);
        break;
    default:
        TERN_ASSERT(0);
    }
}

#define CORPUS_N 13

static size_t
corpus_sigs(size_t i)
{
    /* example.com: RSA + Ed25519; others one key */
    static const size_t n[CORPUS_N] = { 2, 2, 2, 2, 2, 2, 1, 2, 2, 1, 1, 2, 2 };
    return n[i];
}

/* Append m as delivery sends it: a message without the empty line that
 * ends the header section gets its last line ended and that line added. */
static void
as_sent(struct buf *out, const struct buf *m)
{
    bool bol = true, end = false;
    buf_append(out, m->data, m->len);
    for (size_t i = 0; i < m->len && !end; i++) {
        end = bol && m->data[i] == '\r' && i + 1 < m->len && m->data[i + 1] == '\n';
        bol = m->data[i] == '\n' && i > 0 && m->data[i - 1] == '\r';
    }
    if (end)
        return;
    if (m->len < 2 || memcmp(m->data + m->len - 2, "\r\n", 2) != 0)
        buf_append(out, "\r\n", 2);
    buf_append(out, "\r\n", 2);
}

/* Run the checker over dir; its exit status. */
static int
run_checker(const char *dir)
{
    char golden[PATH_MAX], cmd[2 * PATH_MAX + 128];
    int st;
    assert_int_equal(golden_dir(golden), 0);
    snprintf(cmd, sizeof(cmd), "%s %s/verify_dkim.py %s", PYTHON, golden, dir);
    st = system(cmd);
    assert_true(st != -1 && WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void
write_records(const char *dir)
{
    char p[256];
    path_in(p, sizeof(p), dir, "keys.txt");
    write_file(p, K.records.data, K.records.len, 0644);
}

static void
check_lines(const struct buf *sig)
{
    const char *p = sig->data;
    while (p < sig->data + sig->len) {
        const char *e = strstr(p, "\r\n");
        assert_non_null(e);
        if (e - p > 78)
            fail_msg("line of %zd characters: %.*s", e - p, (int)(e - p), p);
        p = e + 2;
    }
}

static void
test_corpus_verifies(void **state)
{
    static const size_t chunks[] = { 0, 1, 7, 4096 };
    char dir[128], p[256];
    struct buf msg = BUF_INIT, expect = BUF_INIT;
    path_in(dir, sizeof(dir), tmpdir, "corpus");
    assert_int_equal(mkdir(dir, 0700), 0);
    write_records(dir);
    for (size_t i = 0; i < CORPUS_N; i++) {
        corpus(&msg, i);
        for (size_t c = 0; c < TERN_ARRAY_LEN(canon_opts); c++) {
            struct buf out = BUF_INIT;
            struct dkim_outcome res;
            char name[32];
            size_t n = sign(&canon_opts[c], msg.data, msg.len, chunks[(i + c) % 4], &out, &res);
            if (n != corpus_sigs(i))
                fail_msg("message %zu: %zu signatures (%s)", i, n, res.reason ? res.reason : "");
            assert_null(res.reason);
            assert_string_equal(res.domain, i == 9    ? "parent.test"
                                            : i == 6  ? "example.org"
                                            : i == 10 ? "example.net"
                                                      : "example.com");
            check_lines(&out);
            as_sent(&out, &msg);
            snprintf(name, sizeof(name), "m%02zu-c%zu.eml", i, c);
            path_in(p, sizeof(p), dir, name);
            write_file(p, out.data, out.len, 0644);
            buf_printf(&expect, "%s %zu\n", name, n);
            buf_fini(&out);
        }
    }
    path_in(p, sizeof(p), dir, "expect.txt");
    write_file(p, expect.data, expect.len, 0644);
    if (run_checker(dir) != 0)
        fail_msg("dkimpy did not verify every signature (see its output above)");
    buf_fini(&msg);
    buf_fini(&expect);
}

/* The checker can fail: a changed body, a changed signed field. */
static void
test_checker_rejects_tampering(void **state)
{
    static const struct {
        const char *from, *to;
    } tamper[] = { { "Hello Bob.", "Hello Bob!" }, { "Subject: test", "Subject: tesT" } };
    char dir[128], p[256];
    struct buf msg = BUF_INIT;
    for (size_t t = 0; t < TERN_ARRAY_LEN(tamper); t++) {
        struct buf out = BUF_INIT;
        struct dkim_outcome res;
        char *at;
        snprintf(p, sizeof(p), "tampered%zu", t);
        path_in(dir, sizeof(dir), tmpdir, p);
        assert_int_equal(mkdir(dir, 0700), 0);
        write_records(dir);
        corpus(&msg, 0);
        assert_int_equal(sign(&canon_opts[0], msg.data, msg.len, 0, &out, &res), 2);
        buf_append(&out, msg.data, msg.len);
        at = strstr(out.data, tamper[t].from);
        assert_non_null(at);
        memcpy(at, tamper[t].to, strlen(tamper[t].to));
        path_in(p, sizeof(p), dir, "m.eml");
        write_file(p, out.data, out.len, 0644);
        path_in(p, sizeof(p), dir, "expect.txt");
        write_file(p, "m.eml 2\n", 8, 0644);
        assert_int_equal(run_checker(dir), 1);
        buf_fini(&out);
    }
    buf_fini(&msg);
}

/* --- the spool's finisher and prefix record --- */

struct fin_fx {
    int frees, calls, cbs, oks;
    const char *give;
};

static int
fin_fn(const char *qid, struct spool_content *body, struct buf *prefix, void *arg)
{
    struct fin_fx *f = arg;
    f->calls++;
    buf_append_str(prefix, f->give);
    return 0;
}

static void
fin_free(void *arg)
{
    ((struct fin_fx *)arg)->frees++;
}

static void
fin_cb(uint64_t id, const char *qid, bool ok, int err, void *arg)
{
    struct fin_fx *f = arg;
    f->cbs++;
    f->oks += ok;
}

static void
walk_fn(struct spool_env *env, void *arg)
{
    struct buf *b = arg;
    buf_append_str(b, env->prefix ? env->prefix : "(none)");
    spool_env_free(env);
}

static void
test_spool_finisher(void **state)
{
    static const struct {
        const char *give, *want; /* want NULL: no prefix */
    } cases[] = {
        { "DKIM-Signature: v=1; a=x;\r\n\tb=abc\r\nDKIM-Signature: v=1\r\n",
            "DKIM-Signature: v=1; a=x;\r\n\tb=abc\r\nDKIM-Signature: v=1\r\n" },
        { "", NULL },
        { "no CRLF", NULL },
        { "X: a\r\n\r\n", NULL },
        { " X: leading space\r\n", NULL },
    };
    char dir[128];
    struct event_base *base = event_base_new();
    struct loopq *q = loopq_new(base);
    struct buf err = BUF_INIT, walked = BUF_INIT;
    struct spool *sp;
    path_in(dir, sizeof(dir), tmpdir, "spool");
    sp = spool_open(dir, q, NULL, &err);
    assert_non_null(sp);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct fin_fx f = { 0, 0, 0, 0, cases[i].give };
        struct spool_env *env = xcalloc(1, sizeof(*env)), *got, *dup;
        struct spool_writer *w;
        env->sender = xstrdup("a@example.com");
        spool_env_add_rcpt(env, "b@example.net", NULL, 0);
        w = spool_writer_new(sp, env);
        assert_non_null(w);
        spool_writer_write(w, "Subject: x\r\n\r\nbody\r\n", 20);
        spool_writer_set_finisher(w, fin_fn, fin_free, &f);
        spool_writer_commit(w, q, fin_cb, 0, &f);
        while (f.cbs == 0)
            event_base_loop(base, EVLOOP_ONCE);
        assert_int_equal(f.oks, 1);
        assert_int_equal(f.calls, 1);
        assert_int_equal(f.frees, 1);
        got = spool_load(sp, env->qid);
        assert_non_null(got);
        assert_int_equal(got->body_len, 20);
        if (cases[i].want == NULL)
            assert_null(got->prefix);
        else
            assert_string_equal(got->prefix, cases[i].want);
        dup = spool_env_dup(got);
        assert_true(dup->prefix != got->prefix || dup->prefix == NULL);
        if (got->prefix)
            assert_string_equal(dup->prefix, got->prefix);
        /* a state record after the message: the prefix stays */
        got->held = true;
        spool_update_state(sp, got);
        spool_env_free(dup);
        spool_env_free(got);
        spool_env_free(env);
    }
    /* aborted: freed once, never run */
    {
        struct fin_fx f = { 0, 0, 0, 0, "X: y\r\n" };
        struct spool_env *env = xcalloc(1, sizeof(*env));
        struct spool_writer *w;
        env->sender = xstrdup("");
        spool_env_add_rcpt(env, "b@example.net", NULL, 0);
        w = spool_writer_new(sp, env);
        assert_non_null(w);
        spool_writer_set_finisher(w, fin_fn, fin_free, &f);
        spool_writer_abort(w);
        assert_int_equal(f.frees, 1);
        assert_int_equal(f.calls, 0);
        spool_env_free(env);
    }
    spool_free(sp); /* writes the state records */
    loopq_run(q);
    /* every message loads with its prefix (or none) after the later record */
    assert_int_equal(spool_scan(dir, walk_fn, &walked, &err), (long)TERN_ARRAY_LEN(cases));
    assert_int_equal(walked.len, strlen(cases[0].want) + 4 * strlen("(none)"));
    loopq_free(q);
    event_base_free(base);
    buf_fini(&err);
    buf_fini(&walked);
}

/* A prefix set before the commit (the inbound checks'
 * Authentication-Results) stays, under what the finisher adds. */
static void
test_spool_prefix_then_finisher(void **state)
{
    static const char ar[] = "Authentication-Results: h.test; dkim=none\r\n";
    static const struct {
        const char *give, *want;
    } cases[] = {
        { "DKIM-Signature: v=1\r\n", "DKIM-Signature: v=1\r\nAuthentication-Results: h.test; "
                                     "dkim=none\r\n" },
        { "", ar },
        { "bad", ar },
    };
    char dir[128];
    struct event_base *base = event_base_new();
    struct loopq *q = loopq_new(base);
    struct buf err = BUF_INIT;
    struct spool *sp;
    path_in(dir, sizeof(dir), tmpdir, "spool-ar");
    sp = spool_open(dir, q, NULL, &err);
    assert_non_null(sp);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct fin_fx f = { 0, 0, 0, 0, cases[i].give };
        struct spool_env *env = xcalloc(1, sizeof(*env)), *got;
        struct spool_writer *w;
        env->sender = xstrdup("a@example.com");
        spool_env_add_rcpt(env, "b@example.net", NULL, 0);
        w = spool_writer_new(sp, env);
        assert_int_equal(spool_writer_set_prefix(w, "no CRLF"), -1);
        assert_int_equal(spool_writer_set_prefix(w, ar), 0);
        spool_writer_write(w, "Subject: x\r\n\r\nbody\r\n", 20);
        spool_writer_set_finisher(w, fin_fn, fin_free, &f);
        spool_writer_commit(w, q, fin_cb, 0, &f);
        while (f.cbs == 0)
            event_base_loop(base, EVLOOP_ONCE);
        assert_int_equal(f.oks, 1);
        got = spool_load(sp, env->qid);
        assert_non_null(got);
        assert_string_equal(got->prefix, cases[i].want);
        spool_env_free(got);
        spool_env_free(env);
    }
    spool_free(sp);
    loopq_run(q);
    loopq_free(q);
    event_base_free(base);
    buf_fini(&err);
}

/* The prefix travels in the MSG record's envelope text; only well-formed
 * header fields are accepted, on the way in and out. */
static void
test_prefix_record(void **state)
{
    static const struct {
        const char *prefix;
        bool valid;
    } cases[] = {
        { "DKIM-Signature: a\r\n", true },
        { "A: 1\r\n\tfolded\r\nB: 2\r\n", true },
        { "bare\nLF\r\n", false },
        { "X: a\r\n\r\n", false },
        { "X: no end", false },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf b = BUF_INIT;
        struct spool_env *env = xcalloc(1, sizeof(*env)), *got;
        assert_int_equal(
            spool_prefix_valid(cases[i].prefix, strlen(cases[i].prefix)), cases[i].valid);
        memcpy(env->qid, "00000000000000ab", 17);
        env->sender = xstrdup("a@b");
        spool_env_add_rcpt(env, "c@d", NULL, 0);
        env->prefix = xstrdup(cases[i].prefix);
        assert_int_equal(spool_env_encode(env, &b), 0);
        got = spool_env_decode(b.data, b.len);
        if (cases[i].valid) {
            assert_non_null(got);
            assert_string_equal(got->prefix, cases[i].prefix);
        } else {
            assert_null(got); /* a bad prefix on disk is damage */
        }
        spool_env_free(got);
        spool_env_free(env);
        buf_fini(&b);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_example),
        cmocka_unit_test(test_canon_header),
        cmocka_unit_test(test_canon_body),
        cmocka_unit_test(test_header_select),
        cmocka_unit_test(test_header_select_bounds),
        cmocka_unit_test(test_header_parse_bad),
        cmocka_unit_test(test_from_domain),
        cmocka_unit_test(test_keyset_select),
        cmocka_unit_test(test_key_load_errors),
        cmocka_unit_test(test_keygen_records),
        cmocka_unit_test(test_txt_strings),
        cmocka_unit_test(test_body_hash),
        cmocka_unit_test(test_not_signed),
        cmocka_unit_test(test_header_too_long),
        cmocka_unit_test(test_corpus_verifies),
        cmocka_unit_test(test_checker_rejects_tampering),
        cmocka_unit_test(test_spool_finisher),
        cmocka_unit_test(test_spool_prefix_then_finisher),
        cmocka_unit_test(test_prefix_record),
    };
    return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}

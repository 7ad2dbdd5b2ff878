/*
 * Unit tests for SMTP AUTH building blocks: strict base64, PLAIN and LOGIN
 * decoding (hostile base64, NULs in the wrong places, authzid rules, length
 * bounds), crypt(3) verification with yescrypt, sha512-crypt and bcrypt, the
 * users file (bad lines, re-read on change), the failure throttle state
 * machine (checks charged before they run), the fair queue of checks,
 * auth_sender_login and the crypt worker thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <crypt.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "smtp/auth.h"
#include "util/buf.h"
#include "util/loopq.h"
#include "util/util.h"

/* Test-only base64 encoder for building PLAIN messages with NULs. */
static void
b64(const void *in, size_t len, char *out, size_t cap)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t n = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            n |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            n |= p[i + 2];
        assert_true(o + 5 < cap);
        out[o++] = al[(n >> 18) & 63];
        out[o++] = al[(n >> 12) & 63];
        out[o++] = i + 1 < len ? al[(n >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? al[n & 63] : '=';
    }
    out[o] = '\0';
}

static void
test_b64_decode(void **state)
{
    static const struct {
        const char *name, *in;
        int want;
        const char *out;
        size_t out_len;
    } cases[] = {
        { "empty marker", "=", 0, "", 0 },
        { "one byte", "YQ==", 0, "a", 1 },
        { "two bytes", "YWI=", 0, "ab", 2 },
        { "three bytes", "YWJj", 0, "abc", 3 },
        { "nul inside", "AGEA", 0, "\0a\0", 3 },
        { "plus slash", "+/+/", 0, "\xfb\xff\xbf", 3 },
        { "empty string", "", -1, NULL, 0 },
        { "no padding", "YQ", -1, NULL, 0 },
        { "short", "YWJ", -1, NULL, 0 },
        { "bad char", "YW*j", -1, NULL, 0 },
        { "space", "YW j", -1, NULL, 0 },
        { "crlf", "YWJj\r\n", -1, NULL, 0 },
        { "pad in middle", "YQ==YWJj", -1, NULL, 0 },
        { "pad first", "=YWJ", -1, NULL, 0 },
        { "three pads", "Y===", -1, NULL, 0 },
        { "four pads", "====", -1, NULL, 0 },
        { "data after pad", "YQ=j", -1, NULL, 0 },
        { "noncanonical 1", "YR==", -1, NULL, 0 },
        { "noncanonical 2", "YWJ=", -1, NULL, 0 },
        { "url alphabet", "-_-_", -1, NULL, 0 },
        { "high byte", "YW\xc3\xa9", -1, NULL, 0 },
        { "double equals marker", "==", -1, NULL, 0 },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        unsigned char out[16];
        size_t n = 99;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(
            auth_b64_decode(cases[i].in, strlen(cases[i].in), out, sizeof(out), &n), cases[i].want);
        if (cases[i].want == 0) {
            assert_int_equal(n, cases[i].out_len);
            assert_memory_equal(out, cases[i].out, n);
        }
    }
    /* The output bound is respected. */
    {
        unsigned char out[2];
        size_t n;
        assert_int_equal(auth_b64_decode("YWJj", 4, out, sizeof(out), &n), -1);
        assert_int_equal(auth_b64_decode("YWI=", 4, out, sizeof(out), &n), 0);
    }
}

static void
test_plain_decode(void **state)
{
    char long_user[AUTH_USER_MAX + 2], long_pass[AUTH_PASS_MAX + 2];
    static char raw_long_user[AUTH_USER_MAX + 10], raw_long_pass[AUTH_PASS_MAX + 10];
    memset(long_user, 'u', sizeof(long_user) - 1);
    long_user[sizeof(long_user) - 1] = '\0';
    memset(long_pass, 'p', sizeof(long_pass) - 1);
    long_pass[sizeof(long_pass) - 1] = '\0';
    int lu = snprintf(raw_long_user, sizeof(raw_long_user), "%c%s%cpw", 0, long_user, 0);
    int lp = snprintf(raw_long_pass, sizeof(raw_long_pass), "%cu%c%s", 0, 0, long_pass);
    const struct {
        const char *name;
        const char *raw; /* bytes to encode, or NULL: use b64 as given */
        size_t raw_len;
        const char *b64;
        enum auth_dec want;
        const char *user, *pass;
    } cases[] = {
        { "plain", "\0alice\0secret", 13, NULL, AUTH_DEC_OK, "alice", "secret" },
        { "authzid same", "alice\0alice\0secret", 18, NULL, AUTH_DEC_OK, "alice", "secret" },
        { "authzid other", "root\0alice\0secret", 17, NULL, AUTH_DEC_DENIED, NULL, NULL },
        { "authzid prefix", "alic\0alice\0secret", 17, NULL, AUTH_DEC_DENIED, NULL, NULL },
        { "authzid longer", "alicex\0alice\0secret", 19, NULL, AUTH_DEC_DENIED, NULL, NULL },
        { "utf8 user", "\0j\xc3\xb6rg\0pw", 9, NULL, AUTH_DEC_OK, "j\xc3\xb6rg", "pw" },
        { "space in pass", "\0bob\0a b c", 10, NULL, AUTH_DEC_OK, "bob", "a b c" },
        { "empty user", "\0\0secret", 8, NULL, AUTH_DEC_DENIED, NULL, NULL },
        { "empty pass", "\0alice\0", 7, NULL, AUTH_DEC_DENIED, NULL, NULL },
        { "no nul", "alicesecret", 11, NULL, AUTH_DEC_BAD, NULL, NULL },
        { "one nul", "\0alicesecret", 12, NULL, AUTH_DEC_BAD, NULL, NULL },
        { "three nuls", "\0alice\0sec\0ret", 15, NULL, AUTH_DEC_BAD, NULL, NULL },
        { "nul at end", "\0alice\0secret\0", 14, NULL, AUTH_DEC_BAD, NULL, NULL },
        { "only nuls", "\0\0", 2, NULL, AUTH_DEC_DENIED, NULL, NULL },
        { "user max+1", raw_long_user, (size_t)lu, NULL, AUTH_DEC_DENIED, NULL, NULL },
        { "pass max+1", raw_long_pass, (size_t)lp, NULL, AUTH_DEC_DENIED, NULL, NULL },
        { "empty response", NULL, 0, "=", AUTH_DEC_BAD, NULL, NULL },
        { "not base64", NULL, 0, "AGFsaWNlAHNlY3JldA*=", AUTH_DEC_BAD, NULL, NULL },
        { "missing pad", NULL, 0, "AGFsaWNlAHNlY3JldA", AUTH_DEC_BAD, NULL, NULL },
        { "trailing space", NULL, 0, "AGFsaWNlAHNlY3JldA== ", AUTH_DEC_BAD, NULL, NULL },
        { "cancel star", NULL, 0, "*", AUTH_DEC_BAD, NULL, NULL },
        { "empty", NULL, 0, "", AUTH_DEC_BAD, NULL, NULL },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char enc[4096];
        struct auth_creds c;
        enum auth_dec r;
        print_message("case %s\n", cases[i].name);
        if (cases[i].raw)
            b64(cases[i].raw, cases[i].raw_len, enc, sizeof(enc));
        else
            snprintf(enc, sizeof(enc), "%s", cases[i].b64);
        memset(&c, 'X', sizeof(c));
        r = auth_plain_decode(enc, strlen(enc), &c);
        assert_int_equal(r, cases[i].want);
        if (r == AUTH_DEC_OK) {
            assert_string_equal(c.user, cases[i].user);
            assert_string_equal(c.pass, cases[i].pass);
        } else {
            /* Nothing of a refused message is left behind. */
            static const struct auth_creds zero;
            assert_memory_equal(&c, &zero, sizeof(c));
        }
    }
    /* An over-long response line is refused before decoding. */
    {
        char *big = xmalloc(AUTH_LINE_MAX + 5);
        struct auth_creds c;
        memset(big, 'A', AUTH_LINE_MAX + 4);
        big[AUTH_LINE_MAX + 4] = '\0';
        assert_int_equal(auth_plain_decode(big, AUTH_LINE_MAX + 4, &c), AUTH_DEC_BAD);
        free(big);
    }
}

static void
test_login_decode(void **state)
{
    static const struct {
        const char *name, *raw; /* raw NULL: b64 given */
        size_t raw_len;
        const char *b64;
        size_t cap;
        enum auth_dec want;
        const char *out;
    } cases[] = {
        { "user", "alice", 5, NULL, 256, AUTH_DEC_OK, "alice" },
        { "exact fit", "abc", 3, NULL, 4, AUTH_DEC_OK, "abc" },
        { "one too long", "abcd", 4, NULL, 4, AUTH_DEC_DENIED, NULL },
        { "nul inside", "al\0ce", 5, NULL, 256, AUTH_DEC_BAD, NULL },
        { "nul first", "\0alice", 6, NULL, 256, AUTH_DEC_BAD, NULL },
        { "empty", NULL, 0, "=", 256, AUTH_DEC_DENIED, NULL },
        { "garbage", NULL, 0, "!!!!", 256, AUTH_DEC_BAD, NULL },
        { "username prompt echoed", NULL, 0, "VXNlcm5hbWU6", 256, AUTH_DEC_OK, "Username:" },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char enc[512], out[256];
        print_message("case %s\n", cases[i].name);
        if (cases[i].raw)
            b64(cases[i].raw, cases[i].raw_len, enc, sizeof(enc));
        else
            snprintf(enc, sizeof(enc), "%s", cases[i].b64);
        assert_int_equal(auth_login_decode(enc, strlen(enc), out, cases[i].cap), cases[i].want);
        if (cases[i].want == AUTH_DEC_OK)
            assert_string_equal(out, cases[i].out);
    }
}

/* A crypt hash of pw with the method of prefix. */
static char *
make_hash(const char *prefix, const char *pw)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data cd;
    const char *h;
    assert_non_null(crypt_gensalt_rn(prefix, 0, NULL, 0, salt, sizeof(salt)));
    memset(&cd, 0, sizeof(cd));
    h = crypt_rn(pw, salt, &cd, (int)sizeof(cd));
    assert_non_null(h);
    assert_true(h[0] != '*');
    return xstrdup(h);
}

static void
test_check_password(void **state)
{
    static const char *const methods[] = { "$y$", "$6$", "$2b$" };
    for (size_t i = 0; i < TERN_ARRAY_LEN(methods); i++) {
        char *h = make_hash(methods[i], "correct horse");
        char *trunc = xstrdup(h);
        print_message("method %s\n", methods[i]);
        assert_true(strncmp(h, methods[i], strlen(methods[i])) == 0);
        assert_true(auth_check_password(h, "correct horse"));
        assert_false(auth_check_password(h, "correct hors"));
        assert_false(auth_check_password(h, "correct horsee"));
        assert_false(auth_check_password(h, "Correct horse"));
        assert_false(auth_check_password(h, ""));
        trunc[strlen(trunc) - 3] = '\0';
        assert_false(auth_check_password(trunc, "correct horse"));
        free(trunc);
        free(h);
    }
    assert_false(auth_check_password("*", "x"));
    assert_false(auth_check_password("!", "x"));
    assert_false(auth_check_password("", ""));
    assert_false(auth_check_password("$y$garbage", "x"));
}

static void
test_users_parse(void **state)
{
    char *y = make_hash("$y$", "pw1"), *s6 = make_hash("$6$", "pw2"),
         *bc = make_hash("$2b$", "pw3");
    struct buf text = BUF_INIT, warn = BUF_INIT;
    struct auth_users *u = auth_users_new("users");
    buf_printf(&text,
        "# comment\n"
        "\n"
        "alice:%s\n"
        "bob:%s\r\n"
        "carol:%s\n"
        "nocolon\n"
        ":%s\n"
        "dave:\n"
        "eve:$1$abcdefgh$0123456789012345678901\n" /* md5-crypt: refused */
        "frank:plaintext\n"
        "alice:%s\n"  /* duplicate */
        "gr ace:%s\n" /* space in name */
        "heidi:%s:extra\n"
        "ivan:%s", /* no final newline */
        y, s6, bc, y, s6, y, y, bc);
    auth_users_parse(u, text.data, text.len, &warn);
    assert_int_equal(auth_users_count(u), 4);
    assert_string_equal(auth_users_hash(u, "alice"), y);
    assert_string_equal(auth_users_hash(u, "bob"), s6);
    assert_string_equal(auth_users_hash(u, "carol"), bc);
    assert_string_equal(auth_users_hash(u, "ivan"), bc);
    assert_null(auth_users_hash(u, "Alice"));
    assert_null(auth_users_hash(u, "eve"));
    assert_null(auth_users_hash(u, "frank"));
    assert_null(auth_users_hash(u, "dave"));
    /* One warning per bad line, each naming its line. */
    print_message("%s", warn.data);
    static const char *const bad[] = { "line 6:", "line 7:", "line 8:", "line 9:", "line 10:",
        "line 11: duplicate", "line 12:", "line 13:" };
    for (size_t i = 0; i < TERN_ARRAY_LEN(bad); i++)
        assert_non_null(strstr(warn.data, bad[i]));
    assert_null(strstr(warn.data, "line 3:"));
    /* The dummy hash costs like a real one (the first user's). */
    assert_string_equal(auth_users_dummy_hash(u), y);
    auth_users_parse(u, "", 0, NULL);
    assert_int_equal(auth_users_count(u), 0);
    assert_true(strncmp(auth_users_dummy_hash(u), "$y$", 3) == 0);
    auth_users_free(u);
    buf_fini(&text);
    buf_fini(&warn);
    free(y);
    free(s6);
    free(bc);
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0);
}

/* A users file others could change or read is refused, and the table
 * already loaded is kept. */
static void
test_users_file_trust(void **state)
{
    static const struct {
        mode_t mode;
        const char *want; /* NULL: accepted */
    } cases[] = {
        { 0600, NULL },
        { 0400, NULL },
        { 0640, NULL }, /* group read: operators sharing a group */
        { 0660, "writable by group or others (chmod 600 it)" },
        { 0602, "writable by group or others (chmod 600 it)" },
        { 0666, "writable by group or others (chmod 600 it)" },
        { 0604, "readable by others (chmod 600 it)" },
        { 0644, "readable by others (chmod 600 it)" },
    };
    char dir[] = "/tmp/test_auth.XXXXXX", path[64], sub[64], line[256];
    char *h = make_hash("$6$", "pw");
    struct buf warn = BUF_INIT, err = BUF_INIT;
    struct auth_users *u;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/users", dir);
    snprintf(line, sizeof(line), "a:%s\n", h);
    write_file(path, line);
    u = auth_users_new(path);
    assert_int_equal(auth_users_refresh(u, true, &warn, &err), 0);
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        print_message("mode %o\n", (unsigned)cases[i].mode);
        assert_int_equal(chmod(path, cases[i].mode), 0);
        buf_reset(&err);
        assert_int_equal(auth_users_refresh(u, true, &warn, &err), cases[i].want ? -1 : 0);
        if (cases[i].want) {
            assert_non_null(strstr(err.data, path));
            assert_non_null(strstr(err.data, cases[i].want));
        }
        assert_non_null(auth_users_hash(u, "a"));
    }
    assert_int_equal(chmod(path, 0600), 0);
    /* Owned by someone else (needs root to arrange). */
    if (geteuid() == 0) {
        assert_int_equal(chown(path, 65534, 65534), 0);
        buf_reset(&err);
        assert_int_equal(auth_users_refresh(u, true, &warn, &err), -1);
        assert_non_null(strstr(err.data, "owned by uid 65534, not by uid 0"));
        assert_int_equal(chown(path, 0, 0), 0);
    }
    /* Not a regular file. */
    snprintf(sub, sizeof(sub), "%s/dir", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    auth_users_free(u);
    u = auth_users_new(sub);
    buf_reset(&err);
    assert_int_equal(auth_users_refresh(u, true, &warn, &err), -1);
    assert_non_null(strstr(err.data, "not a regular file"));
    assert_int_equal(rmdir(sub), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
    auth_users_free(u);
    buf_fini(&warn);
    buf_fini(&err);
    free(h);
}

static void
test_users_refresh(void **state)
{
    char dir[] = "/tmp/test_auth.XXXXXX", path[64];
    char *h = make_hash("$6$", "pw"), line[256];
    struct buf warn = BUF_INIT, err = BUF_INIT;
    struct auth_users *u;
    struct timespec ts[2];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/users", dir);
    u = auth_users_new(path);
    assert_int_equal(auth_users_refresh(u, false, &warn, &err), -1); /* missing */
    assert_non_null(strstr(err.data, "auth_users_file"));
    snprintf(line, sizeof(line), "a:%s\n", h);
    write_file(path, line);
    assert_int_equal(auth_users_refresh(u, false, &warn, &err), 0);
    assert_non_null(auth_users_hash(u, "a"));
    /* Same size, new name, mtime changed: re-read. */
    snprintf(line, sizeof(line), "b:%s\n", h);
    write_file(path, line);
    ts[0].tv_sec = ts[1].tv_sec = time(NULL) + 10;
    ts[0].tv_nsec = ts[1].tv_nsec = 0;
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
    assert_int_equal(auth_users_refresh(u, false, &warn, &err), 0);
    assert_null(auth_users_hash(u, "a"));
    assert_non_null(auth_users_hash(u, "b"));
    /* Unchanged stat: not re-read (a change with the same stat is missed
     * unless forced). */
    snprintf(line, sizeof(line), "c:%s\n", h);
    write_file(path, line);
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
    assert_int_equal(auth_users_refresh(u, false, &warn, &err), 0);
    assert_non_null(auth_users_hash(u, "b"));
    assert_int_equal(auth_users_refresh(u, true, &warn, &err), 0);
    assert_non_null(auth_users_hash(u, "c"));
    /* Unreadable now: the old table is kept. */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(auth_users_refresh(u, false, &warn, &err), -1);
    assert_non_null(auth_users_hash(u, "c"));
    assert_int_equal(rmdir(dir), 0);
    auth_users_free(u);
    buf_fini(&warn);
    buf_fini(&err);
    free(h);
}

enum thr_op { BEGIN, END_OK, END_FAIL, FAIL, BLOCKED };

struct thr_step {
    const char *name;
    enum thr_op op;
    int64_t t;
    bool want; /* BEGIN: charged; END_*, FAIL: locks now; BLOCKED: is blocked */
};

static void
run_steps(struct auth_throttle *t, const void *k, size_t kl, const struct auth_limits *lim,
    const struct thr_step *steps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool got = false;
        print_message("step %s\n", steps[i].name);
        switch (steps[i].op) {
        case BEGIN:
            got = auth_throttle_begin(t, k, kl, steps[i].t, lim);
            break;
        case END_OK:
        case END_FAIL:
            got = auth_throttle_end(t, k, kl, steps[i].op == END_FAIL, steps[i].t, lim);
            break;
        case FAIL:
            got = auth_throttle_fail(t, k, kl, steps[i].t, lim);
            break;
        case BLOCKED:
            got = auth_throttle_blocked(t, k, kl, steps[i].t, lim);
            break;
        }
        assert_int_equal(got, steps[i].want);
    }
}

/* Failures one after another (no check in flight). */
static void
test_throttle(void **state)
{
    static const struct auth_limits lim = { 3, 600000, 60000 };
    static const struct thr_step steps[] = {
        { "start unlocked", BLOCKED, 0, false },
        { "fail 1", FAIL, 1000, false },
        { "fail 2", FAIL, 2000, false },
        { "still open", BLOCKED, 2500, false },
        { "fail 3 locks", FAIL, 3000, true },
        { "locked", BLOCKED, 3001, true },
        { "no check while locked", BEGIN, 3002, false },
        { "locked near end", BLOCKED, 62999, true },
        { "lock over", BLOCKED, 63000, false },
        { "fresh window 1", FAIL, 64000, false },
        { "fresh window 2", FAIL, 65000, false },
        { "window expires", FAIL, 65000 + 600001, false },
        { "counts again 2", FAIL, 65000 + 600002, false },
        { "locks again", FAIL, 65000 + 600003, true },
        { "locked again", BLOCKED, 65000 + 600004, true },
    };
    struct auth_throttle *t = auth_throttle_new(4);
    struct sockaddr_in a;
    struct sockaddr_in6 b6, c6;
    unsigned char ka[AUTH_KEY_MAX], kb[AUTH_KEY_MAX], kc[AUTH_KEY_MAX];
    char text[64];
    size_t la, lb, lc;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    inet_pton(AF_INET, "192.0.2.7", &a.sin_addr);
    la = auth_throttle_key((struct sockaddr *)&a, ka);
    assert_int_equal(la, 4);
    auth_throttle_key_str(ka, la, text, sizeof(text));
    assert_string_equal(text, "192.0.2.7");
    run_steps(t, ka, la, &lim, steps, TERN_ARRAY_LEN(steps));
    /* IPv6: one /64 is one client; another /64 is not affected. */
    memset(&b6, 0, sizeof(b6));
    b6.sin6_family = AF_INET6;
    c6 = b6;
    inet_pton(AF_INET6, "2001:db8:1:2::1", &b6.sin6_addr);
    inet_pton(AF_INET6, "2001:db8:1:2:ffff::9", &c6.sin6_addr);
    lb = auth_throttle_key((struct sockaddr *)&b6, kb);
    lc = auth_throttle_key((struct sockaddr *)&c6, kc);
    assert_int_equal(lb, 8);
    assert_memory_equal(kb, kc, 8);
    auth_throttle_key_str(kb, lb, text, sizeof(text));
    assert_string_equal(text, "2001:db8:1:2::/64");
    inet_pton(AF_INET6, "2001:db8:1:3::1", &c6.sin6_addr);
    lc = auth_throttle_key((struct sockaddr *)&c6, kc);
    assert_memory_not_equal(kb, kc, 8);
    /* v4-mapped folds to the IPv4 key. */
    inet_pton(AF_INET6, "::ffff:192.0.2.7", &c6.sin6_addr);
    lc = auth_throttle_key((struct sockaddr *)&c6, kc);
    assert_int_equal(lc, 4);
    assert_memory_equal(kc, ka, 4);
    auth_throttle_free(t);

    /* Bounded memory: while full of live entries a new address may not
     * start a check (it could not be counted); stale entries are evicted,
     * but never one with a check in flight. */
    static const struct auth_limits lim1 = { 1, 600000, 60000 };
    uint32_t k0 = 0, k1 = 1, k3 = 3, k4 = 4, k9 = 9;
    t = auth_throttle_new(2);
    assert_false(auth_throttle_fail(t, &k0, sizeof(k0), 1000, &lim));
    assert_false(auth_throttle_fail(t, &k1, sizeof(k1), 1000, &lim));
    assert_false(auth_throttle_begin(t, &k3, sizeof(k3), 2000, &lim));
    assert_false(auth_throttle_fail(t, &k3, sizeof(k3), 2000, &lim));
    assert_int_equal(auth_throttle_count(t), 2);
    assert_true(auth_throttle_begin(t, &k3, sizeof(k3), 1000 + 600001, &lim));
    assert_int_equal(auth_throttle_count(t), 1);
    assert_false(auth_throttle_fail(t, &k4, sizeof(k4), 1000 + 600001, &lim));
    assert_int_equal(auth_throttle_count(t), 2);
    assert_false(auth_throttle_fail(t, &k9, sizeof(k9), 3000000, &lim)); /* evicts k4 */
    assert_int_equal(auth_throttle_count(t), 2);
    assert_true(auth_throttle_end(t, &k3, sizeof(k3), true, 3000000, &lim1)); /* still there */
    auth_throttle_free(t);
}

/* Checks in flight: charged before they run, given back on success. */
static void
test_throttle_parallel(void **state)
{
    static const struct auth_limits lim = { 3, 600000, 60000 };
    static const struct thr_step steps[] = {
        { "first check", BEGIN, 0, true },
        { "second check", BEGIN, 0, true },
        { "third check", BEGIN, 0, true },
        { "budget in flight", BEGIN, 0, false },
        { "blocked while in flight", BLOCKED, 0, true },
        { "a success gives back", END_OK, 10, false },
        { "room for one more", BEGIN, 10, true },
        { "full again", BEGIN, 10, false },
        { "failure 1 stays charged", END_FAIL, 20, false },
        { "still full", BEGIN, 20, false },
        { "failure 2", END_FAIL, 30, false },
        { "failure 3 locks", END_FAIL, 40, true },
        { "locked", BLOCKED, 41, true },
        { "no check while locked", BEGIN, 50, false },
        { "an answer never asked for", END_FAIL, 50, false },
        { "lock over", BLOCKED, 60040, false },
        { "checks again", BEGIN, 60040, true },
        { "success", END_OK, 60050, false },
        { "after a success 1", BEGIN, 60060, true },
        { "after a success 2", BEGIN, 60060, true },
        { "after a success 3", BEGIN, 60060, true },
        { "after a success: full", BEGIN, 60060, false },
        /* The window ends while checks are in flight: they stay charged. */
        { "late failure", END_FAIL, 60060 + 600001, false },
        { "new window, two in flight", BEGIN, 60060 + 600002, true },
        { "full with two in flight", BEGIN, 60060 + 600002, false },
        { "fail a", END_FAIL, 60060 + 600003, false },
        { "fail b", END_FAIL, 60060 + 600003, false },
        { "fail c locks", END_FAIL, 60060 + 600003, true },
    };
    struct auth_throttle *t = auth_throttle_new(4);
    uint32_t k = 7, other = 8;
    run_steps(t, &k, sizeof(k), &lim, steps, TERN_ARRAY_LEN(steps));
    /* Another address is unaffected by all of this. */
    assert_false(auth_throttle_blocked(t, &other, sizeof(other), 60060 + 600004, &lim));
    assert_true(auth_throttle_begin(t, &other, sizeof(other), 60060 + 600004, &lim));
    auth_throttle_free(t);
}

/* A flood of 100 parallel guesses from one address: 5 are checked. */
static void
test_throttle_flood(void **state)
{
    static const struct auth_limits lim = { 5, 600000, 3600000 };
    struct auth_throttle *t = auth_throttle_new(100);
    uint32_t k = 1;
    int charged = 0, locks = 0;
    for (int i = 0; i < 100; i++)
        charged += auth_throttle_begin(t, &k, sizeof(k), 1000, &lim);
    assert_int_equal(charged, 5);
    for (int i = 0; i < charged; i++)
        locks += auth_throttle_end(t, &k, sizeof(k), true, 2000, &lim);
    assert_int_equal(locks, 1);
    for (int i = 0; i < 100; i++)
        assert_false(auth_throttle_begin(t, &k, sizeof(k), 3000 + i, &lim));
    auth_throttle_free(t);
}

struct fq_job {
    struct auth_fairq_item link;
    int tag;
};

/* Round-robin across keys, FIFO within a key, bounded per key and in all. */
static void
test_fairq(void **state)
{
    enum { PUSH, POP };
    static const struct {
        int op;
        char key;
        int tag;  /* PUSH: the item; POP: the item expected (0: none) */
        int want; /* PUSH: 0 or -1 */
    } steps[] = {
        { POP, 0, 0, 0 },
        { PUSH, 'a', 1, 0 },
        { PUSH, 'a', 2, 0 },
        { PUSH, 'a', 3, -1 }, /* a's share is 2 */
        { PUSH, 'b', 4, 0 },
        { PUSH, 'c', 5, 0 },
        { PUSH, 'c', 6, 0 },
        { PUSH, 'd', 7, -1 }, /* 5 in all */
        { POP, 0, 1, 0 },
        { PUSH, 'a', 8, 0 }, /* a has room again, and waits its turn */
        { POP, 0, 4, 0 },
        { POP, 0, 5, 0 },
        { PUSH, 'b', 9, 0 }, /* b had nothing left: joins at the end */
        { POP, 0, 2, 0 },
        { POP, 0, 6, 0 },
        { POP, 0, 9, 0 },
        { POP, 0, 8, 0 },
        { POP, 0, 0, 0 },
        { PUSH, 'd', 10, 0 },
        { POP, 0, 10, 0 },
    };
    struct fq_job jobs[16];
    struct auth_fairq *q = auth_fairq_new(2, 5);
    for (size_t i = 0; i < TERN_ARRAY_LEN(steps); i++) {
        print_message("step %zu\n", i);
        if (steps[i].op == PUSH) {
            struct fq_job *j = &jobs[steps[i].tag];
            j->tag = steps[i].tag;
            assert_int_equal(auth_fairq_push(q, &steps[i].key, 1, &j->link), steps[i].want);
        } else {
            struct fq_job *j = (struct fq_job *)(void *)auth_fairq_pop(q);
            assert_int_equal(j ? j->tag : 0, steps[i].tag);
        }
    }
    assert_int_equal(auth_fairq_len(q), 0);
    auth_fairq_free(q);

    /* One address fills its whole share; another's check is next but one. */
    static struct fq_job flood[AUTH_QUEUE_PER_KEY + 1], mine;
    unsigned char attacker[4] = { 127, 0, 0, 2 }, user[4] = { 127, 0, 0, 1 };
    q = auth_fairq_new(AUTH_QUEUE_PER_KEY, AUTH_QUEUE_MAX);
    for (int i = 0; i <= AUTH_QUEUE_PER_KEY; i++)
        assert_int_equal(
            auth_fairq_push(q, attacker, 4, &flood[i].link), i < AUTH_QUEUE_PER_KEY ? 0 : -1);
    assert_int_equal(auth_fairq_key_len(q, attacker, 4), AUTH_QUEUE_PER_KEY);
    assert_ptr_equal(auth_fairq_pop(q), &flood[0].link);
    assert_int_equal(auth_fairq_push(q, user, 4, &mine.link), 0);
    assert_ptr_equal(auth_fairq_pop(q), &flood[1].link);
    assert_ptr_equal(auth_fairq_pop(q), &mine.link);
    assert_int_equal(auth_fairq_key_len(q, user, 4), 0);
    assert_int_equal(auth_fairq_len(q), AUTH_QUEUE_PER_KEY - 2);
    auth_fairq_free(q); /* items still queued are the caller's */
}

static void
test_sender_allowed(void **state)
{
    static const char spec[] = "alice=alice@example.com,@corp.example bob=<>,bob@b.example "
                               "Carol=@c.example";
    static const struct {
        const char *name, *spec, *user, *sender;
        bool want;
    } cases[] = {
        { "no setting", NULL, "x", "any@where", true },
        { "empty setting", "", "x", "any@where", true },
        { "exact", spec, "alice", "alice@example.com", true },
        { "exact case", spec, "alice", "ALICE@Example.COM", true },
        { "domain", spec, "alice", "sales@corp.example", true },
        { "domain case", spec, "alice", "sales@CORP.example", true },
        { "subdomain not domain", spec, "alice", "x@sub.corp.example", false },
        { "suffix attack", spec, "alice", "x@evilcorp.example", false },
        { "other address", spec, "alice", "bob@example.com", false },
        { "null sender not listed", spec, "alice", "", false },
        { "null sender listed", spec, "bob", "", true },
        { "bob address", spec, "bob", "bob@b.example", true },
        { "bob other", spec, "bob", "alice@example.com", false },
        { "unlisted user", spec, "mallory", "mallory@example.com", false },
        { "user case matters", spec, "carol", "x@c.example", false },
        { "user exact", spec, "Carol", "x@c.example", true },
        { "user prefix", spec, "ali", "alice@example.com", false },
        { "user longer", spec, "alicex", "alice@example.com", false },
        { "address prefix", spec, "alice", "alice@example.co", false },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        print_message("case %s\n", cases[i].name);
        assert_int_equal(
            auth_sender_allowed(cases[i].spec, cases[i].user, cases[i].sender), cases[i].want);
    }
}

struct done_state {
    int n;
    bool ok[8];
    unsigned char key[8][AUTH_KEY_MAX];
    struct event_base *base;
};

static void
done_cb(const struct auth_result *r, void *arg)
{
    struct done_state *d = arg;
    assert_true(r->id < 8);
    assert_int_equal(r->klen, 4);
    d->ok[r->id] = r->ok;
    memcpy(d->key[r->id], r->key, r->klen);
    if (++d->n == 4)
        event_base_loopbreak(d->base);
}

static void
test_worker(void **state)
{
    struct done_state d;
    char *h = make_hash("$6$", "pw");
    struct event_base *base = event_base_new();
    struct auth_worker *w;
    struct loopq *inbox = loopq_new(base);
    struct timeval tv = { 20, 0 };
    unsigned char ka[4] = { 192, 0, 2, 1 }, kb[4] = { 192, 0, 2, 2 };
    int refused = 0;
    memset(&d, 0, sizeof(d));
    d.base = base;
    w = auth_worker_new(done_cb);
    assert_int_equal(auth_worker_submit(w, inbox, &d, 1, ka, 4, h, "pw", false), 0);
    assert_int_equal(auth_worker_submit(w, inbox, &d, 2, kb, 4, h, "wrong", false), 0);
    assert_int_equal(
        auth_worker_submit(w, inbox, &d, 3, ka, 4, h, "pw", true), 0); /* unknown user */
    assert_int_equal(auth_worker_submit(w, inbox, &d, 4, kb, 4, "*", "pw", false), 0);
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    assert_int_equal(d.n, 4);
    assert_true(d.ok[1]);
    assert_false(d.ok[2]);
    assert_false(d.ok[3]);
    assert_false(d.ok[4]);
    assert_memory_equal(d.key[1], ka, 4);
    assert_memory_equal(d.key[2], kb, 4);
    /* One key gets its share of the queue and no more (one check may
     * already be running, out of the queue). */
    for (uint64_t i = 0; i < AUTH_QUEUE_PER_KEY + 2; i++)
        refused += auth_worker_submit(w, inbox, &d, 5, ka, 4, h, "pw", false) < 0;
    assert_true(refused >= 1 && refused <= 2);
    assert_int_equal(auth_worker_submit(w, inbox, &d, 6, kb, 4, h, "pw", false), 0);
    /* Free with jobs still queued: no answers, no leaks. */
    auth_worker_free(w);
    loopq_free(inbox); /* answers already posted run here */
    event_base_free(base);
    free(h);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_decode),
        cmocka_unit_test(test_plain_decode),
        cmocka_unit_test(test_login_decode),
        cmocka_unit_test(test_check_password),
        cmocka_unit_test(test_users_parse),
        cmocka_unit_test(test_users_refresh),
        cmocka_unit_test(test_users_file_trust),
        cmocka_unit_test(test_throttle),
        cmocka_unit_test(test_throttle_parallel),
        cmocka_unit_test(test_throttle_flood),
        cmocka_unit_test(test_fairq),
        cmocka_unit_test(test_sender_allowed),
        cmocka_unit_test(test_worker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests of MTA-STS's pure parts: the _mta-sts TXT record (RFC 8461
 * §3.1), the policy file (§3.2), MX host patterns (§4.1) and the cache
 * file's round trip and damage.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include "mtasts/mtasts.h"
#include "util/util.h"

static void
test_txt(void **state)
{
    static const struct {
        const char *recs[3];
        int rc;
        const char *id;
    } cases[] = {
        { { "v=STSv1; id=20160831085700Z;" }, 0, "20160831085700Z" },
        { { "v=STSv1;id=abc" }, 0, "abc" },
        { { "v=STSv1; id=abc ; ext=1" }, 0, "abc" },
        { { "v=spf1 -all", "v=STSv1; id=x1;" }, 0, "x1" },
        { { "v=spf1 -all" }, 1, NULL },
        { { "" }, 1, NULL },
        { { "v=STSv10; id=abc" }, 1, NULL },
        { { "v=STSv1; id=a", "v=STSv1; id=b" }, -1, NULL },
        { { "v=STSv1;" }, -1, NULL },
        { { "v=STSv1; id=" }, -1, NULL },
        { { "v=STSv1; id=has-dash" }, -1, NULL },
        { { "v=STSv1; id=123456789012345678901234567890123" }, -1, NULL },
        { { "v=STSv1; id" }, -1, NULL },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        const char *recs[3];
        size_t lens[3], n = 0;
        char id[MTASTS_ID_MAX + 1] = "", err[200] = "";
        for (; n < 3 && cases[i].recs[n] != NULL; n++) {
            recs[n] = cases[i].recs[n];
            lens[n] = strlen(recs[n]);
        }
        int rc = mtasts_txt_parse(recs, lens, n, id, err, sizeof(err));
        if (rc != cases[i].rc)
            fail_msg("case %zu: rc %d, want %d (%s)", i, rc, cases[i].rc, err);
        if (cases[i].id != NULL)
            assert_string_equal(id, cases[i].id);
        if (rc < 0)
            assert_true(err[0] != '\0');
    }
}

static void
test_policy(void **state)
{
    static const struct {
        const char *text;
        int rc;
        enum mtasts_mode mode;
        size_t n_mx;
        int64_t max_age;
    } cases[] = {
        { "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: "
          "604800\n",
            0, MTASTS_ENFORCE, 2, 604800 },
        { "version: STSv1\r\nmode: testing\r\nmx: MX.Example.COM\r\nmax_age: 86400\r\n", 0,
            MTASTS_TESTING, 1, 86400 },
        { "version:STSv1\nmode:none\nmax_age:0", 0, MTASTS_NONE, 0, 0 },
        { "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557600\nfuture: x\n", 0,
            MTASTS_ENFORCE, 1, 31557600 },
        { "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", -1, 0, 0, 0 },
        { "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", -1, 0, 0, 0 },
        { "mode: enforce\nmx: a.example\nmax_age: 1\n", -1, 0, 0, 0 },
        { "version: STSv1\nmx: a.example\nmax_age: 1\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode: enforce\nmx: a.example\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode: enforce\nmax_age: 1\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n", -1, 0, 0, 0 },
        { "version: STSv1\nmode: enforce\x01\nmx: a.example\nmax_age: 1\n", -1, 0, 0, 0 },
        { "<html>not a policy</html>", -1, 0, 0, 0 },
        { "version: STSv1\nmode: testing\nmx: a.example\nmax_age: 1\nfuture: "
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
            0, MTASTS_TESTING, 1, 1 },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct mtasts_policy p;
        char err[200] = "";
        int rc = mtasts_policy_parse(cases[i].text, strlen(cases[i].text), &p, err, sizeof(err));
        if (rc != cases[i].rc)
            fail_msg("case %zu: rc %d, want %d (%s)", i, rc, cases[i].rc, err);
        if (rc == 0) {
            assert_int_equal(p.mode, cases[i].mode);
            assert_int_equal(p.n_mx, cases[i].n_mx);
            assert_int_equal(p.max_age_s, cases[i].max_age);
        }
    }
}

static void
test_policy_bounds(void **state)
{
    struct mtasts_policy p;
    char err[200];
    size_t n = MTASTS_POLICY_MAX + 1;
    char *big = xmalloc(n);
    (void)state;
    memset(big, '\n', n);
    assert_int_equal(mtasts_policy_parse(big, n, &p, err, sizeof(err)), -1);
    free(big);
    /* More mx lines than kept: the first MTASTS_MX_MAX count. */
    struct buf b = BUF_INIT;
    buf_append_str(&b, "version: STSv1\nmode: enforce\nmax_age: 5\n");
    for (int i = 0; i < 40; i++)
        buf_printf(&b, "mx: mx%d.example\n", i);
    assert_int_equal(mtasts_policy_parse(b.data, b.len, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n_mx, MTASTS_MX_MAX);
    assert_string_equal(p.mx[0], "mx0.example");
    buf_fini(&b);
}

static void
test_mx_match(void **state)
{
    static const struct {
        const char *pat, *host;
        bool match;
    } cases[] = {
        { "mail.example.com", "mail.example.com", true },
        { "mail.example.com", "MAIL.Example.Com.", true },
        { "mail.example.com.", "mail.example.com", true },
        { "mail.example.com", "mail.example.co", false },
        { "mail.example.com", "xmail.example.com", false },
        { "*.example.com", "mx1.example.com", true },
        { "*.example.com", "MX1.EXAMPLE.COM", true },
        { "*.example.com", "a.b.example.com", false },
        { "*.example.com", "example.com", false },
        { "*.example.com", ".example.com", false },
        { "*.example.com", "mx1.example.org", false },
        { "*.example.com", "mx1.xexample.com", false },
        { "*.example.com", "mx1.example.comx", false },
        { "", "", false },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        if (mtasts_mx_match(cases[i].pat, cases[i].host) != cases[i].match)
            fail_msg("case %zu: %s vs %s", i, cases[i].pat, cases[i].host);
    }
}

static void
test_cache_roundtrip(void **state)
{
    static const char pol[] = "version: STSv1\nmode: enforce\nmx: *.example.com\nmax_age: 600\n";
    struct mtasts_cached c = { 0 }, d;
    struct buf b = BUF_INIT;
    char err[200];
    (void)state;
    snprintf(c.id, sizeof(c.id), "abc123");
    c.fetched_s = 1700000000;
    c.text = xstrdup(pol);
    c.len = strlen(pol);
    c.err_s = 1700000100;
    snprintf(c.err, sizeof(c.err), "two\nlines");
    mtasts_cache_format(&c, &b);
    assert_int_equal(mtasts_cache_parse(b.data, b.len, &d, err, sizeof(err)), 0);
    assert_string_equal(d.id, "abc123");
    assert_int_equal(d.fetched_s, 1700000000);
    assert_int_equal(d.err_s, 1700000100);
    assert_string_equal(d.err, "two lines");
    assert_int_equal(d.len, strlen(pol));
    assert_memory_equal(d.text, pol, d.len);
    assert_int_equal(d.policy.mode, MTASTS_ENFORCE);
    assert_int_equal(d.policy.max_age_s, 600);
    assert_true(mtasts_policy_match(&d.policy, "mx.example.com"));
    mtasts_cached_fini(&d);
    /* Cut short or padded: damaged. */
    assert_int_equal(mtasts_cache_parse(b.data, b.len - 1, &d, err, sizeof(err)), -1);
    buf_append_str(&b, "x");
    assert_int_equal(mtasts_cache_parse(b.data, b.len, &d, err, sizeof(err)), -1);
    assert_int_equal(mtasts_cache_parse("junk", 4, &d, err, sizeof(err)), -1);
    buf_fini(&b);
    /* No policy, only an error. */
    mtasts_cached_fini(&c);
    b = (struct buf)BUF_INIT;
    mtasts_cache_format(&c, &b);
    assert_int_equal(mtasts_cache_parse(b.data, b.len, &d, err, sizeof(err)), 0);
    assert_null(d.text);
    assert_string_equal(d.id, "abc123");
    buf_fini(&b);
}

/* What `ternctl tls show` prints of a cache file, read from a spool. */
static void
test_render(void **state)
{
    static const char pol[] = "version: STSv1\nmode: enforce\nmx: *.example.com\nmax_age: 600\n";
    char dir[] = "/tmp/test_mtasts.XXXXXX", path[128];
    struct mtasts_cached c = { 0 };
    struct buf b = BUF_INIT, out = BUF_INIT;
    FILE *f;
    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/" MTASTS_DIR, dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(c.id, sizeof(c.id), "id9");
    c.fetched_s = 1000;
    c.text = xstrdup(pol);
    c.len = strlen(pol);
    c.err_s = 1500;
    snprintf(c.err, sizeof(c.err), "timed out");
    mtasts_cache_format(&c, &b);
    snprintf(path, sizeof(path), "%s/" MTASTS_DIR "/example.com", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(b.data, 1, b.len, f), b.len);
    assert_int_equal(fclose(f), 0);
    mtasts_render(dir, "example.com", 1700, &out);
    buf_append_char(&out, '\0');
    assert_non_null(
        strstr(out.data, "mta-sts: id id9 mode enforce max_age 600s age 700s (expired)\n"));
    assert_non_null(strstr(out.data, "mta-sts: mx *.example.com\n"));
    assert_non_null(strstr(out.data, "mta-sts: last fetch error 200s ago: timed out\n"));
    buf_reset(&out);
    mtasts_render(dir, "other.example", 1700, &out);
    buf_append_char(&out, '\0');
    assert_string_equal(out.data, "mta-sts: nothing cached for other.example\n");
    buf_reset(&out);
    mtasts_render(dir, "../etc", 1700, &out);
    buf_append_char(&out, '\0');
    assert_string_equal(out.data, "mta-sts: nothing cached for ../etc\n");
    /* mtasts_cache_load, which tls show's policy lines use. */
    {
        struct mtasts_cached got;
        char err[256];
        assert_int_equal(mtasts_cache_load(dir, "example.com", &got, err, sizeof(err)), 0);
        assert_int_equal(got.policy.mode, MTASTS_ENFORCE);
        assert_int_equal(got.fetched_s, 1000);
        mtasts_cached_fini(&got);
        assert_int_equal(mtasts_cache_load(dir, "other.example", &got, err, sizeof(err)), 1);
        assert_int_equal(mtasts_cache_load(dir, "../etc", &got, err, sizeof(err)), 1);
        f = fopen(path, "w");
        assert_non_null(f);
        assert_int_equal(fputs("not a cache file\n", f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(mtasts_cache_load(dir, "example.com", &got, err, sizeof(err)), -1);
        buf_reset(&out);
        mtasts_render(dir, "example.com", 1700, &out);
        buf_append_char(&out, '\0');
        assert_non_null(strstr(out.data, "mta-sts: cache file damaged: "));
    }
    unlink(path);
    snprintf(path, sizeof(path), "%s/" MTASTS_DIR, dir);
    rmdir(path);
    rmdir(dir);
    mtasts_cached_fini(&c);
    buf_fini(&b);
    buf_fini(&out);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_policy_bounds),
        cmocka_unit_test(test_mx_match),
        cmocka_unit_test(test_cache_roundtrip),
        cmocka_unit_test(test_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

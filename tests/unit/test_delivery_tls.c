/*
 * Unit tests of outbound TLS and smarthost AUTH (src/delivery/secure.c):
 * the TLS policy tables (mode x offered x fallback -> step, mode x verified,
 * handshake failure), the AUTH mechanism choice, base64 and the PLAIN
 * response, smarthost_auth_file parsing and loading, and the smtps://
 * configuration of hops (settings.c, route.c). No sockets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sys/stat.h>

#include "config/config.h"
#include "delivery/delivery_int.h"
#include "sched/route.h"
#include "util/util.h"

/* ---- TLS policy ---- */

struct step_case {
    const char *name;
    enum tls_mode mode;
    bool offered, cached;
    enum tls_step want;
};

static const struct step_case step_cases[] = {
    { "none, offered", TLS_NONE, true, false, TLSS_PLAIN },
    { "none, not offered", TLS_NONE, false, false, TLSS_PLAIN },
    { "opportunistic, offered", TLS_OPPORTUNISTIC, true, false, TLSS_STARTTLS },
    { "opportunistic, not offered", TLS_OPPORTUNISTIC, false, false, TLSS_PLAIN },
    { "opportunistic, offered, failed lately", TLS_OPPORTUNISTIC, true, true, TLSS_PLAIN },
    { "required, offered", TLS_REQUIRED, true, false, TLSS_STARTTLS },
    { "required, offered, failed lately", TLS_REQUIRED, true, true, TLSS_STARTTLS },
    { "required, not offered", TLS_REQUIRED, false, false, TLSS_DEFER },
    { "required, not offered, cached", TLS_REQUIRED, false, true, TLSS_DEFER },
};

static void
test_tls_step(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(step_cases); i++) {
        const struct step_case *tc = &step_cases[i];
        enum tls_step got = deliv_tls_step(tc->mode, tc->offered, tc->cached);
        if (got != tc->want)
            fail_msg("%s: got %d want %d", tc->name, (int)got, (int)tc->want);
    }
}

struct verdict_case {
    const char *name;
    enum tls_mode mode;
    bool verified, implicit;
    bool want_accept, want_fallback;
};

static const struct verdict_case verdict_cases[] = {
    { "none, unverified", TLS_NONE, false, false, true, false },
    { "opportunistic, unverified", TLS_OPPORTUNISTIC, false, false, true, true },
    { "opportunistic, verified", TLS_OPPORTUNISTIC, true, false, true, true },
    { "opportunistic, implicit", TLS_OPPORTUNISTIC, false, true, true, false },
    { "required, unverified", TLS_REQUIRED, false, false, false, false },
    { "required, verified", TLS_REQUIRED, true, false, true, false },
    { "required, implicit, verified", TLS_REQUIRED, true, true, true, false },
};

static void
test_tls_verdicts(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(verdict_cases); i++) {
        const struct verdict_case *tc = &verdict_cases[i];
        if (deliv_tls_accept(tc->mode, tc->verified) != tc->want_accept)
            fail_msg("%s: accept differs", tc->name);
        if (deliv_tls_fallback(tc->mode, tc->implicit) != tc->want_fallback)
            fail_msg("%s: fallback differs", tc->name);
    }
}

/* ---- AUTH ---- */

struct mech_case {
    const char *name;
    bool creds, plain, login, tls, allow;
    enum auth_mech want;
};

static const struct mech_case mech_cases[] = {
    { "no credentials", false, true, true, true, false, AUTHM_NONE },
    { "no credentials, nothing offered", false, false, false, false, false, AUTHM_NONE },
    { "plain preferred", true, true, true, true, false, AUTHM_PLAIN },
    { "login only", true, false, true, true, false, AUTHM_LOGIN },
    { "not offered", true, false, false, true, false, AUTHM_MISSING },
    { "not offered in clear", true, false, false, false, false, AUTHM_MISSING },
    { "clear refused", true, true, true, false, false, AUTHM_REFUSE },
    { "clear allowed", true, true, false, false, true, AUTHM_PLAIN },
    { "clear allowed, login", true, false, true, false, true, AUTHM_LOGIN },
};

static void
test_auth_choose(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(mech_cases); i++) {
        const struct mech_case *tc = &mech_cases[i];
        struct ehlo_ext e;
        memset(&e, 0, sizeof(e));
        e.auth_plain = tc->plain;
        e.auth_login = tc->login;
        enum auth_mech got = deliv_auth_choose(tc->creds, &e, tc->tls, tc->allow);
        if (got != tc->want)
            fail_msg("%s: got %d want %d", tc->name, (int)got, (int)tc->want);
    }
}

struct b64_case {
    const char *in, *want;
};

/* RFC 4648 §10. */
static const struct b64_case b64_cases[] = {
    { "", "" },
    { "f", "Zg==" },
    { "fo", "Zm8=" },
    { "foo", "Zm9v" },
    { "foob", "Zm9vYg==" },
    { "fooba", "Zm9vYmE=" },
    { "foobar", "Zm9vYmFy" },
    { "Username:", "VXNlcm5hbWU6" },
};

static void
test_b64(void **state)
{
    char out[64];
    for (size_t i = 0; i < TERN_ARRAY_LEN(b64_cases); i++) {
        const struct b64_case *tc = &b64_cases[i];
        assert_int_equal(
            deliv_b64((const unsigned char *)tc->in, strlen(tc->in), out, sizeof(out)), 0);
        assert_string_equal(out, tc->want);
    }
    /* "foo" needs 5 bytes with the NUL; 4 is refused, nothing overflows. */
    assert_int_equal(deliv_b64((const unsigned char *)"foo", 3, out, 4), -1);
    assert_int_equal(deliv_b64((const unsigned char *)"foo", 3, out, 5), 0);
    /* Binary input. */
    const unsigned char bin[] = { 0x00, 0xff, 0xfe };
    assert_int_equal(deliv_b64(bin, 3, out, sizeof(out)), 0);
    assert_string_equal(out, "AP/+");
}

static void
test_plain_resp(void **state)
{
    struct deliv_creds c;
    char out[DELIV_AUTH_B64_MAX];
    memset(&c, 0, sizeof(c));
    /* RFC 4616 §4 example without authzid: NUL tim NUL tanstaaftanstaaf. */
    snprintf(c.user, sizeof(c.user), "tim");
    snprintf(c.pass, sizeof(c.pass), "tanstaaftanstaaf");
    assert_int_equal(deliv_auth_plain_resp(&c, out, sizeof(out)), 0);
    assert_string_equal(out, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    /* Longest user and password fit the fixed buffer. */
    memset(c.user, 'u', DELIV_AUTH_USER_MAX);
    c.user[DELIV_AUTH_USER_MAX] = '\0';
    memset(c.pass, 'p', DELIV_AUTH_PASS_MAX);
    c.pass[DELIV_AUTH_PASS_MAX] = '\0';
    assert_int_equal(deliv_auth_plain_resp(&c, out, sizeof(out)), 0);
    assert_int_equal(strlen(out), (DELIV_AUTH_USER_MAX + DELIV_AUTH_PASS_MAX + 2 + 2) / 3 * 4);
    deliv_creds_clear(&c);
    assert_int_equal(c.user[0], 0);
    assert_int_equal(c.pass[DELIV_AUTH_PASS_MAX - 1], 0);
}

/* ---- smarthost_auth_file ---- */

struct creds_case {
    const char *name, *text, *host;
    bool allow_default;
    int want_rc;
    const char *want_user, *want_pass, *want_err;
};

static const struct creds_case creds_cases[] = {
    { "bare line", "bob:secret\n", "smtp.example.com", true, 0, "bob", "secret", NULL },
    { "bare line, no newline", "bob:secret", "h", true, 0, "bob", "secret", NULL },
    { "bare line not for routes", "bob:secret\n", "h", false, 1, "", "", NULL },
    { "colon and space in password", "bob:pa:ss word\n", "h", true, 0, "bob", "pa:ss word", NULL },
    { "comments and blanks", "# creds\n\n  \nbob:x\n", "h", true, 0, "bob", "x", NULL },
    { "crlf", "bob:x\r\n", "h", true, 0, "bob", "x", NULL },
    { "host line wins", "bob:x\nsmtp.example.com  carol:y\n", "SMTP.example.com", true, 0, "carol",
        "y", NULL },
    { "host line for routes", "smtp.example.com carol:y\n", "smtp.example.com", false, 0, "carol",
        "y", NULL },
    { "other host", "other.example carol:y\n", "smtp.example.com", true, 1, "", "", NULL },
    { "other host, default", "other.example carol:y\nbob:x\n", "smtp.example.com", true, 0, "bob",
        "x", NULL },
    { "v6 literal host", "[2001:db8::1] carol:y\n", "2001:db8::1", false, 0, "carol", "y", NULL },
    { "tab separator", "h\tcarol:y\n", "h", false, 0, "carol", "y", NULL },
    { "first bare line wins", "bob:x\nbob2:z\n", "h", true, 0, "bob", "x", NULL },
    { "empty file", "", "h", true, 1, "", "", NULL },
    { "no colon", "bob\n", "h", true, -1, "", "", "line 1:" },
    { "empty user", ":secret\n", "h", true, -1, "", "", "line 1:" },
    { "empty password", "bob:\n", "h", true, -1, "", "", "line 1:" },
    { "host without creds", "# x\nsmtp.example.com carol\n", "h", true, -1, "", "", "line 2:" },
    { "control byte", "bob:se\001cret\n", "h", true, -1, "", "", "line 1:" },
};

static void
test_creds_parse(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(creds_cases); i++) {
        const struct creds_case *tc = &creds_cases[i];
        struct deliv_creds c;
        char err[128] = "";
        int rc = deliv_creds_parse(
            tc->text, strlen(tc->text), tc->host, tc->allow_default, &c, err, sizeof(err));
        if (rc != tc->want_rc)
            fail_msg("%s: rc %d want %d (%s)", tc->name, rc, tc->want_rc, err);
        if (strcmp(c.user, tc->want_user) != 0 || strcmp(c.pass, tc->want_pass) != 0)
            fail_msg("%s: got %s / %s", tc->name, c.user, c.pass);
        if (tc->want_err != NULL && strncmp(err, tc->want_err, strlen(tc->want_err)) != 0)
            fail_msg("%s: error \"%s\"", tc->name, err);
        /* The error never repeats the line (it may hold a password). */
        if (rc < 0 && strstr(err, "secret") != NULL)
            fail_msg("%s: error shows the secret", tc->name);
    }
}

static void
test_creds_limits(void **state)
{
    struct deliv_creds c;
    char err[128];
    char *text = xmalloc(4096);
    /* User at the limit is fine, one more is refused. */
    memset(text, 'u', DELIV_AUTH_USER_MAX);
    snprintf(text + DELIV_AUTH_USER_MAX, 16, ":pw\n");
    assert_int_equal(deliv_creds_parse(text, strlen(text), "h", true, &c, err, sizeof(err)), 0);
    assert_int_equal(strlen(c.user), DELIV_AUTH_USER_MAX);
    memset(text, 'u', DELIV_AUTH_USER_MAX + 1);
    snprintf(text + DELIV_AUTH_USER_MAX + 1, 16, ":pw\n");
    assert_int_equal(deliv_creds_parse(text, strlen(text), "h", true, &c, err, sizeof(err)), -1);
    /* Password over the limit. */
    memcpy(text, "u:", 2);
    memset(text + 2, 'p', DELIV_AUTH_PASS_MAX + 1);
    text[2 + DELIV_AUTH_PASS_MAX + 1] = '\0';
    assert_int_equal(deliv_creds_parse(text, strlen(text), "h", true, &c, err, sizeof(err)), -1);
    /* An over-long line, even a comment-free one of spaces and a colon. */
    memset(text, 'x', DELIV_AUTH_LINE_MAX + 10);
    text[5] = ':';
    text[DELIV_AUTH_LINE_MAX + 10] = '\0';
    assert_int_equal(deliv_creds_parse(text, strlen(text), "h", true, &c, err, sizeof(err)), -1);
    /* A NUL inside the text ends nothing early: the line is refused. */
    assert_int_equal(deliv_creds_parse("bob:x\0y\n", 8, "h", true, &c, err, sizeof(err)), -1);
    free(text);
}

static void
test_creds_load(void **state)
{
    char dir[] = "/tmp/tern-dtls-XXXXXX";
    char path[128], err[256];
    struct deliv_creds c;
    FILE *f;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/auth", dir);
    assert_int_equal(deliv_creds_load(path, "h", true, &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "No such file"));
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("bob:secret\n", f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(deliv_creds_load(path, "h", true, &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "readable by group or others"));
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(deliv_creds_load(path, "h", true, &c, err, sizeof(err)), 0);
    assert_string_equal(c.user, "bob");
    assert_string_equal(c.pass, "secret");
    assert_int_equal(deliv_creds_load(path, "h", false, &c, err, sizeof(err)), 1);
    /* A directory is not a credentials file. */
    assert_int_equal(deliv_creds_load(dir, "h", true, &c, err, sizeof(err)), -1);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* ---- smtps:// in the configuration ---- */

struct hop_case {
    const char *name, *setting;
    int ok;
    uint16_t want_port;
    bool want_implicit;
};

static const struct hop_case hop_cases[] = {
    { "plain smarthost", "smarthost=smtp.example.com", 1, 25, false },
    { "port 587", "smarthost=smtp.example.com:587", 1, 587, false },
    { "port 465 implies", "smarthost=smtp.example.com:465", 1, 465, true },
    { "smtps prefix", "smarthost=smtps://smtp.example.com", 1, 465, true },
    { "smtps prefix, port", "smarthost=smtps://smtp.example.com:2465", 1, 2465, true },
    { "smtps, upper case", "smarthost=SMTPS://[10.0.0.1]:2465", 1, 2465, true },
    { "smtps, v6", "smarthost=smtps://[2001:db8::1]", 1, 465, true },
    { "smtps, empty", "smarthost=smtps://", 0, 0, false },
    { "other scheme", "smarthost=smtp://smtp.example.com", 0, 0, false },
    { "route smtps", "routes=example.org=smtps://[smtp.example.com]", 1, 465, true },
    { "route smtps, port", "routes=example.org=smtps://[smtp.example.com]:2465", 1, 2465, true },
    { "route port 465", "routes=example.org=[smtp.example.com]:465", 1, 465, true },
    { "route plain", "routes=example.org=[smtp.example.com]:2525", 1, 2525, false },
    { "route smtps, bad", "routes=example.org=smtps://", 0, 0, false },
};

static void
test_smtps_hops(void **state)
{
    for (size_t i = 0; i < TERN_ARRAY_LEN(hop_cases); i++) {
        const struct hop_case *tc = &hop_cases[i];
        const char *ov[] = { tc->setting, "hostname=tern.test" };
        struct buf err = BUF_INIT;
        struct config *c = config_load(NULL, ov, 2, false, &err);
        struct delivery_dest dd;
        if ((c != NULL) != (tc->ok != 0))
            fail_msg(
                "%s: load %s: %s", tc->name, c ? "succeeded" : "failed", err.data ? err.data : "");
        buf_fini(&err);
        if (c == NULL)
            continue;
        /* The hop as the scheduler hands it to delivery (route.c). */
        route_decide(c, "a@example.com", "b@example.org", &dd);
        assert_int_equal(dd.n_hops, 1);
        if (dd.hops[0].port != tc->want_port || dd.hops[0].implicit_tls != tc->want_implicit)
            fail_msg(
                "%s: port %u implicit %d", tc->name, dd.hops[0].port, (int)dd.hops[0].implicit_tls);
        config_unref(c);
    }
}

static void
test_tls_settings(void **state)
{
    struct buf err = BUF_INIT;
    const char *defaults[] = { "hostname=tern.test" };
    const char *set[] = { "hostname=tern.test", "mx_tls=required", "smarthost_tls=none",
        "smarthost_auth_plaintext=yes" };
    const char *bad[] = { "mx_tls=always" };
    struct config *c = config_load(NULL, defaults, 1, false, &err);
    assert_non_null(c);
    assert_int_equal(c->mx_tls, TLS_OPPORTUNISTIC);
    assert_int_equal(c->smarthost_tls, TLS_OPPORTUNISTIC);
    assert_int_equal(c->smarthost_auth_plaintext, 0);
    assert_int_equal(deliv_tls_mode(c, "mx:example.org"), TLS_OPPORTUNISTIC);
    config_unref(c);
    c = config_load(NULL, set, 4, false, &err);
    assert_non_null(c);
    assert_int_equal(deliv_tls_mode(c, "mx:example.org"), TLS_REQUIRED);
    assert_int_equal(deliv_tls_mode(c, "smarthost"), TLS_NONE);
    assert_int_equal(deliv_tls_mode(c, "route:example.org"), TLS_NONE);
    assert_int_equal(c->smarthost_auth_plaintext, 1);
    config_unref(c);
    assert_null(config_load(NULL, bad, 1, false, &err));
    assert_non_null(strstr(err.data, "mx_tls"));
    buf_fini(&err);
}

/* ---- DANE and the per-host TLS policy (RFC 7672, RFC 8461) ---- */

static void
tlsa_add(struct dns_rr_result *r, uint8_t u, uint8_t sel, uint8_t m, size_t dlen)
{
    unsigned char rd[3 + 64];
    rd[0] = u, rd[1] = sel, rd[2] = m;
    memset(rd + 3, 0x5a, dlen);
    assert_int_equal(dns_rr_result_add(r, 0, rd, 3 + dlen), 0);
}

static void
test_dane_state(void **state)
{
    struct dns_rr_result *r;
    assert_int_equal(deliv_dane_state(NULL), DANE_NONE); /* insecure MX or address */
    /* A failed lookup of a secure host: skip it (RFC 7672 §2.1.1). */
    r = dns_rr_result_new(DNS_RR_TLSA, DNS_TEMP);
    assert_int_equal(deliv_dane_state(r), DANE_TEMP);
    dns_rr_result_free(r);
    /* Validated absence: no DANE. */
    r = dns_rr_result_new(DNS_RR_TLSA, DNS_NXDOMAIN);
    r->secure = true;
    assert_int_equal(deliv_dane_state(r), DANE_NONE);
    r->rc = DNS_NODATA;
    assert_int_equal(deliv_dane_state(r), DANE_NONE);
    dns_rr_result_free(r);
    /* Usable records, validated or not. */
    r = dns_rr_result_new(DNS_RR_TLSA, DNS_NODATA);
    tlsa_add(r, 3, 1, 1, 32);
    assert_int_equal(deliv_dane_state(r), DANE_NONE); /* no AD bit: insecure */
    r->secure = true;
    assert_int_equal(deliv_dane_state(r), DANE_USABLE);
    dns_rr_result_free(r);
    /* Only unusable records (RFC 7672 §3.1.3): PKIX usages, unknown
     * selector or matching type, a digest of the wrong length. */
    r = dns_rr_result_new(DNS_RR_TLSA, DNS_NODATA);
    r->secure = true;
    tlsa_add(r, 0, 0, 1, 32);
    tlsa_add(r, 1, 1, 1, 32);
    tlsa_add(r, 3, 2, 1, 32);
    tlsa_add(r, 3, 1, 3, 32);
    tlsa_add(r, 2, 0, 1, 20);
    assert_int_equal(deliv_dane_state(r), DANE_UNUSABLE);
    tlsa_add(r, 2, 0, 2, 64); /* one usable is enough */
    assert_int_equal(deliv_dane_state(r), DANE_USABLE);
    dns_rr_result_free(r);
}

static void
test_tls_policy_pick(void **state)
{
    const unsigned both = MX_TLS_POLICY_DANE | MX_TLS_POLICY_MTASTS;
    static const struct {
        unsigned policies;
        enum tls_mode mode;
        enum dane_state dane;
        bool sts;
        enum tls_policy want;
    } cases[] = {
        { 3, TLS_OPPORTUNISTIC, DANE_USABLE, false, TLSP_DANE },
        { 3, TLS_OPPORTUNISTIC, DANE_USABLE, true, TLSP_DANE }, /* RFC 8461 §2 */
        { 3, TLS_REQUIRED, DANE_USABLE, false, TLSP_DANE },
        { 3, TLS_OPPORTUNISTIC, DANE_UNUSABLE, false, TLSP_OPPORTUNISTIC },
        { 3, TLS_OPPORTUNISTIC, DANE_UNUSABLE, true, TLSP_MTA_STS },
        { 3, TLS_OPPORTUNISTIC, DANE_NONE, true, TLSP_MTA_STS },
        { 3, TLS_OPPORTUNISTIC, DANE_NONE, false, TLSP_OPPORTUNISTIC },
        { MX_TLS_POLICY_MTASTS, TLS_OPPORTUNISTIC, DANE_USABLE, false, TLSP_OPPORTUNISTIC },
        { MX_TLS_POLICY_MTASTS, TLS_OPPORTUNISTIC, DANE_USABLE, true, TLSP_MTA_STS },
        { MX_TLS_POLICY_DANE, TLS_OPPORTUNISTIC, DANE_NONE, true, TLSP_OPPORTUNISTIC },
        { 0, TLS_OPPORTUNISTIC, DANE_USABLE, true, TLSP_OPPORTUNISTIC },
        { 3, TLS_NONE, DANE_USABLE, true, TLSP_OPPORTUNISTIC }, /* mx_tls = none */
    };
    assert_int_equal(both, 3u);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum tls_policy got =
            deliv_tls_policy_pick(cases[i].policies, cases[i].mode, cases[i].dane, cases[i].sts);
        if (got != cases[i].want)
            fail_msg("case %zu: %s, want %s", i, deliv_tls_policy_name(got),
                deliv_tls_policy_name(cases[i].want));
    }
    assert_string_equal(deliv_tls_policy_name(TLSP_DANE), "dane");
    assert_string_equal(deliv_tls_policy_name(TLSP_MTA_STS), "mta-sts");
    assert_string_equal(deliv_tls_policy_name(TLSP_OPPORTUNISTIC), "opportunistic");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_step),
        cmocka_unit_test(test_dane_state),
        cmocka_unit_test(test_tls_policy_pick),
        cmocka_unit_test(test_tls_verdicts),
        cmocka_unit_test(test_auth_choose),
        cmocka_unit_test(test_b64),
        cmocka_unit_test(test_plain_resp),
        cmocka_unit_test(test_creds_parse),
        cmocka_unit_test(test_creds_limits),
        cmocka_unit_test(test_creds_load),
        cmocka_unit_test(test_smtps_hops),
        cmocka_unit_test(test_tls_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

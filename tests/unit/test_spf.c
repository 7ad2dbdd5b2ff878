/*
 * Unit tests of src/spf: macro expansion (every RFC 7208 §7.4 example, IPv4
 * and IPv6), macro and domain-spec syntax, target-name shortening, record
 * parsing (mechanisms, modifiers, CIDR lengths), the processing limits and
 * results through the pure core with an in-test zone, and the raw-record
 * decoding of src/dns that the evaluator's answers come from.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>

#include "dns/dns.h"
#include "dns/dns_int.h"
#include "spf/spf.h"
#include "spf/spf_int.h"
#include "util/buf.h"
#include "util/util.h"

/* ---- macros: RFC 7208 §7.4 ---- */

static const struct spf_macro_env env4 = {
    .s = "strong-bad@email.example.com",
    .l = "strong-bad",
    .o = "email.example.com",
    .d = "email.example.com",
    .i = "192.0.2.3",
    .v = "in-addr",
    .h = "mx.example.org",
    .c = "192.0.2.3",
    .r = "receiver.example.net",
    .t = "1700000000",
};

static const struct {
    const char *name, *input, *want;
} rfc_cases[] = {
    { "s", "%{s}", "strong-bad@email.example.com" },
    { "o", "%{o}", "email.example.com" },
    { "d", "%{d}", "email.example.com" },
    { "d4", "%{d4}", "email.example.com" },
    { "d3", "%{d3}", "email.example.com" },
    { "d2", "%{d2}", "example.com" },
    { "d1", "%{d1}", "com" },
    { "dr", "%{dr}", "com.example.email" },
    { "d2r", "%{d2r}", "example.email" },
    { "l", "%{l}", "strong-bad" },
    { "l-", "%{l-}", "strong.bad" },
    { "lr", "%{lr}", "strong-bad" },
    { "lr-", "%{lr-}", "bad.strong" },
    { "l1r-", "%{l1r-}", "strong" },
    { "ir v spf d2", "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com" },
    { "lr- lp", "%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com" },
    { "lr- lp ir", "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
        "bad.strong.lp.3.2.0.192.in-addr._spf.example.com" },
    { "ir l1r-", "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
        "3.2.0.192.in-addr.strong.lp._spf.example.com" },
    { "trusted", "%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net" },
    /* §7.1 literals and escapes */
    { "escapes", "a%%b%_c%-d", "a%b c%20d" },
    { "upper escapes", "%{S}", "strong-bad%40email.example.com" },
};

static void
test_macro_rfc_examples(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(rfc_cases); i++) {
        struct buf out = BUF_INIT;
        int rc = spf_macro_expand(
            rfc_cases[i].input, strlen(rfc_cases[i].input), &env4, SPF_MACRO_DOMAIN, 4096, &out);
        if (rc != 0 || strcmp(out.data ? out.data : "", rfc_cases[i].want) != 0)
            fail_msg("%s: got %d '%s', want '%s'", rfc_cases[i].name, rc, out.data ? out.data : "",
                rfc_cases[i].want);
        buf_fini(&out);
    }
}

/* The IPv6 example of §7.4 through the whole check (the %{i} nibbles come
 * from the core), with an exists: term whose name the core asks for. */
static void
test_macro_rfc_ipv6(void **state)
{
    struct spf_request req;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&req.ip;
    struct spf_check *c;
    struct dns_rr_result *txt = dns_rr_result_new(DNS_RR_TXT, DNS_OK);
    const char *rec = "v=spf1 exists:%{ir}.%{v}._spf.%{d2} -all", *name;
    int type;
    (void)state;
    memset(&req, 0, sizeof(req));
    sin6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8::cb01", &sin6->sin6_addr);
    req.sender = "strong-bad@email.example.com";
    req.helo = "mx.example.org";
    c = spf_check_new(&req);
    assert_non_null(c);
    assert_false(spf_check_step(c));
    spf_check_question(c, &name, &type);
    assert_string_equal(name, "email.example.com");
    assert_int_equal(type, DNS_RR_TXT);
    dns_rr_result_add(txt, 0, rec, strlen(rec));
    spf_check_answer(c, txt);
    assert_false(spf_check_step(c));
    spf_check_question(c, &name, &type);
    assert_string_equal(name, "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2."
                              "ip6._spf.example.com");
    assert_int_equal(type, DNS_RR_A);
    dns_rr_result_free(txt);
    txt = dns_rr_result_new(DNS_RR_A, DNS_NXDOMAIN);
    spf_check_answer(c, txt);
    assert_true(spf_check_step(c));
    assert_int_equal(spf_check_outcome(c)->result, SPF_FAIL);
    assert_true(spf_check_outcome(c)->exp_default);
    dns_rr_result_free(txt);
    spf_check_free(c);
}

static const struct {
    const char *name, *input;
    enum spf_macro_ctx ctx;
    bool want;
} syntax_cases[] = {
    { "plain", "example.com", SPF_MACRO_DOMAIN, true },
    { "all escapes", "%%%_%-", SPF_MACRO_DOMAIN, true },
    { "transformers", "%{d2r+-}", SPF_MACRO_DOMAIN, true },
    { "zero digits", "%{d0}", SPF_MACRO_DOMAIN, false },
    { "too many digits", "%{d1234}", SPF_MACRO_DOMAIN, false },
    { "unknown letter", "%{x}", SPF_MACRO_DOMAIN, false },
    { "c outside exp", "%{c}", SPF_MACRO_DOMAIN, false },
    { "r outside exp", "%{r}.example.com", SPF_MACRO_DOMAIN, false },
    { "t in exp", "at %{t}", SPF_MACRO_EXP, true },
    { "c in unknown modifier", "%{c}", SPF_MACRO_UNKNOWN, true },
    { "lone percent", "foo%", SPF_MACRO_DOMAIN, false },
    { "percent dot", "foo%.bar", SPF_MACRO_DOMAIN, false },
    { "parenthesis", "%(ir)", SPF_MACRO_DOMAIN, false },
    { "unclosed", "%{ir", SPF_MACRO_DOMAIN, false },
    { "bad delimiter", "%{l*}", SPF_MACRO_DOMAIN, false },
    { "space in domain", "a b", SPF_MACRO_DOMAIN, false },
    { "space in exp", "a b", SPF_MACRO_EXP, true },
    { "non-ascii", "caf\xc3\xa9", SPF_MACRO_EXP, false },
    { "control", "a\rb", SPF_MACRO_EXP, false },
};

static void
test_macro_syntax(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(syntax_cases); i++) {
        bool got = spf_macro_valid(
            syntax_cases[i].input, strlen(syntax_cases[i].input), syntax_cases[i].ctx, NULL);
        if (got != syntax_cases[i].want)
            fail_msg("%s: got %d", syntax_cases[i].name, got);
    }
    assert_true(spf_macro_uses("a.%{p}.b", 8, 'p'));
    assert_true(spf_macro_uses("%{P2}", 5, 'p'));
    assert_false(spf_macro_uses("%%{p}", 5, 'p'));
}

static void
test_macro_url_escape(void **state)
{
    struct spf_macro_env env = env4;
    struct buf out = BUF_INIT;
    const char *in = "l=%{L}";
    (void)state;
    env.l = "~jack&jill=up-a_b3.c";
    assert_int_equal(spf_macro_expand(in, strlen(in), &env, SPF_MACRO_EXP, 4096, &out), 0);
    assert_string_equal(out.data, "l=~jack%26jill%3Dup-a_b3.c");
    /* The output bound is enforced. */
    buf_reset(&out);
    assert_int_equal(spf_macro_expand(in, strlen(in), &env, SPF_MACRO_EXP, 5, &out), -1);
    buf_fini(&out);
}

static const struct {
    const char *name, *input;
    bool want;
} spec_cases[] = {
    { "plain", "example.com", true },
    { "trailing dot", "example.com.", true },
    { "ends in macro", "%{d}", true },
    { "dash toplabel", "foo.xn--zckzah", true },
    { "numeric toplabel", "abc.123", false },
    { "address", "111.222.33.44", false },
    { "single label", "museum", false },
    { "single label dot", "museum.", false },
    { "dash start", "example.-com", false },
    { "port", "example.com:8080", false },
    { "colon slash inside", "foo:bar/baz.example.com", true },
    { "empty", "", false },
    { "exp-only letter", "%{r}.example.com", false },
};

static void
test_domain_spec(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(spec_cases); i++) {
        bool got = spf_domain_spec_valid(spec_cases[i].input, strlen(spec_cases[i].input));
        if (got != spec_cases[i].want)
            fail_msg("%s: got %d", spec_cases[i].name, got);
    }
}

static void
test_target_name(void **state)
{
    struct buf b = BUF_INIT;
    (void)state;
    buf_append_str(&b, "example.com.");
    assert_true(spf_target_name(&b));
    assert_string_equal(b.data, "example.com");
    /* §7.3: labels dropped from the left past 253 octets. */
    buf_reset(&b);
    buf_append_str(&b, "drop.me.");
    for (int i = 0; i < 8; i++)
        buf_append_str(&b, "somewhat.long.exp.example.com.");
    buf_append_str(&b, "example.com");
    assert_true(spf_target_name(&b));
    assert_true(b.len <= 253);
    assert_int_equal(strncmp(b.data, "somewhat.", 9), 0);
    buf_reset(&b);
    buf_append_str(&b, "a..b");
    assert_false(spf_target_name(&b));
    buf_reset(&b);
    buf_printf(&b, "%064d.example.com", 1);
    assert_false(spf_target_name(&b));
    buf_fini(&b);
}

/* ---- record parsing ---- */

static const struct {
    const char *name, *record;
    int want; /* 0 ok, -1 permerror */
    size_t n_terms;
    enum spf_mech mech0;
    char qual0;
    unsigned cidr4, cidr6;
} parse_cases[] = {
    { "empty", "v=spf1", 0, 0, SPF_M_ALL, 0, 0, 0 },
    { "all", "v=spf1 -all", 0, 1, SPF_M_ALL, '-', 32, 128 },
    { "case", "V=SpF1 ~ALL", 0, 1, SPF_M_ALL, '~', 32, 128 },
    { "two spaces", "v=spf1 a  -all ", 0, 2, SPF_M_A, '+', 32, 128 },
    { "a dual cidr", "v=spf1 a/24//64", 0, 1, SPF_M_A, '+', 24, 64 },
    { "a domain cidr", "v=spf1 a:foo.example.com/24", 0, 1, SPF_M_A, '+', 24, 128 },
    { "mx cidr6 only", "v=spf1 ?mx//0", 0, 1, SPF_M_MX, '?', 32, 0 },
    { "ip4", "v=spf1 ip4:192.0.2.0/24", 0, 1, SPF_M_IP4, '+', 24, 128 },
    { "ip6", "v=spf1 ip6:2001:db8::/32", 0, 1, SPF_M_IP6, '+', 32, 32 },
    { "ptr", "v=spf1 ptr", 0, 1, SPF_M_PTR, '+', 32, 128 },
    { "include", "v=spf1 include:_spf.example.com", 0, 1, SPF_M_INCLUDE, '+', 32, 128 },
    { "exists macro", "v=spf1 exists:%{ir}.bl.example.com", 0, 1, SPF_M_EXISTS, '+', 32, 128 },
    { "unknown modifier", "v=spf1 moo.cow-far_out=man:dog/cat -all", 0, 1, SPF_M_ALL, '-', 32,
        128 },
    { "redirect", "v=spf1 redirect=_spf.example.com", 0, 0, SPF_M_ALL, 0, 0, 0 },
    { "cidr4 33", "v=spf1 a/33", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "cidr4 leading zero", "v=spf1 ip4:1.2.3.4/032", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "cidr6 129", "v=spf1 mx//129", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "a/24/64", "v=spf1 a/24/64", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "ip4 short", "v=spf1 ip4:1.2.3", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "ip4 double slash", "v=spf1 ip4:1.2.3.4//32", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "bare ip6", "v=spf1 ip6", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "ptr cidr", "v=spf1 ptr/0", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "include empty", "v=spf1 include:", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "include cidr", "v=spf1 include:a.example.com/24", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "all arg", "v=spf1 -all:foo", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "all dot", "v=spf1 -all.", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "unknown mechanism", "v=spf1 foo", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "error after match", "v=spf1 ip4:1.2.3.4 -all moo", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "redirect twice", "v=spf1 redirect=a.example redirect=a.example", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "exp empty", "v=spf1 exp= -all", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "redirect colon", "v=spf1 redirect:a.example.com", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "modifier digit", "v=spf1 1up=foo", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "modifier bad macro", "v=spf1 foo=%abc", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "control char", "v=spf1 a:b.example.com\rptr", -1, 0, SPF_M_ALL, 0, 0, 0 },
    { "qualified modifier", "v=spf1 -redirect=a.example.com", -1, 0, SPF_M_ALL, 0, 0, 0 },
};

static void
test_record_parse(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(parse_cases); i++) {
        struct spf_record rec;
        char err[160] = "";
        const char *r = parse_cases[i].record;
        int got = spf_record_parse(r, strlen(r), &rec, err, sizeof(err));
        if (got != parse_cases[i].want)
            fail_msg("%s: got %d (%s)", parse_cases[i].name, got, err);
        if (got == 0) {
            if (rec.n != parse_cases[i].n_terms)
                fail_msg("%s: %zu terms", parse_cases[i].name, rec.n);
            if (rec.n > 0 && (rec.terms[0].mech != parse_cases[i].mech0 ||
                                 rec.terms[0].qual != parse_cases[i].qual0 ||
                                 rec.terms[0].cidr4 != parse_cases[i].cidr4 ||
                                 rec.terms[0].cidr6 != parse_cases[i].cidr6))
                fail_msg("%s: term 0 mech %d qual %c cidr %u/%u", parse_cases[i].name,
                    rec.terms[0].mech, rec.terms[0].qual, rec.terms[0].cidr4, rec.terms[0].cidr6);
        } else if (err[0] == '\0') {
            fail_msg("%s: no error text", parse_cases[i].name);
        }
        spf_record_fini(&rec);
    }
    assert_true(spf_record_is_spf("v=spf1", 6));
    assert_true(spf_record_is_spf("v=spf1 -all", 11));
    assert_false(spf_record_is_spf("v=spf10", 7));
    assert_false(spf_record_is_spf("v=spf1mx", 8));
}

/* ---- the core with an in-test zone ---- */

struct zrr {
    const char *name;
    int type;
    const char *data; /* A/AAAA text, MX "pref host", else text */
};

static struct dns_rr_result *
zone_answer(const struct zrr *z, const char *name, int type)
{
    struct dns_rr_result *r = dns_rr_result_new(type, DNS_NXDOMAIN);
    for (size_t i = 0; z[i].name != NULL; i++) {
        unsigned char a[16];
        if (strcmp(z[i].name, name) != 0)
            continue;
        if (r->rc == DNS_NXDOMAIN)
            r->rc = DNS_NODATA;
        if (z[i].type != type)
            continue;
        if (strcmp(z[i].data, "TEMP") == 0) {
            r->rc = DNS_TEMP;
        } else if (type == DNS_RR_A || type == DNS_RR_AAAA) {
            assert_int_equal(inet_pton(type == DNS_RR_A ? AF_INET : AF_INET6, z[i].data, a), 1);
            dns_rr_result_add(r, 0, a, type == DNS_RR_A ? 4 : 16);
        } else if (type == DNS_RR_MX) {
            const char *sp = strchr(z[i].data, ' ');
            dns_rr_result_add(r, (uint16_t)strtoul(z[i].data, NULL, 10), sp + 1, strlen(sp + 1));
        } else {
            dns_rr_result_add(r, 0, z[i].data, strlen(z[i].data));
        }
    }
    return r;
}

static enum spf_result
run_check(const struct zrr *z, const char *ip, const char *sender, unsigned *lookups, char *reason,
    size_t cap)
{
    struct spf_request req;
    struct spf_check *c;
    socklen_t len;
    enum spf_result res;
    memset(&req, 0, sizeof(req));
    assert_int_equal(dns_literal(ip, 0, &req.ip, &len), 0);
    req.sender = sender;
    req.helo = "helo.example.org";
    c = spf_check_new(&req);
    assert_non_null(c);
    *lookups = 0;
    while (!spf_check_step(c)) {
        const char *name;
        int type;
        struct dns_rr_result *r;
        spf_check_question(c, &name, &type);
        r = zone_answer(z, name, type);
        spf_check_answer(c, r);
        dns_rr_result_free(r);
        assert_true(++*lookups < 200);
    }
    res = spf_check_outcome(c)->result;
    if (reason != NULL)
        snprintf(reason, cap, "%s", spf_check_outcome(c)->reason);
    spf_check_free(c);
    return res;
}

static const struct zrr limit_zone[] = {
    /* 10 DNS-querying terms pass, 11 are a permerror */
    { "ten.test", DNS_RR_TXT, "v=spf1 a a a a a a a a a a ip4:192.0.2.1 -all" },
    { "eleven.test", DNS_RR_TXT, "v=spf1 a a a a a a a a a a a ip4:192.0.2.1 -all" },
    { "ten.test", DNS_RR_A, "198.51.100.1" },
    { "eleven.test", DNS_RR_A, "198.51.100.1" },
    { "i1.test", DNS_RR_A, "198.51.100.1" },
    { "i2.test", DNS_RR_A, "198.51.100.1" },
    { "inc-over.test", DNS_RR_A, "198.51.100.1" },
    /* includes count too, and nested ones add up */
    { "inc.test", DNS_RR_TXT, "v=spf1 include:i1.test include:i2.test ip4:192.0.2.1 -all" },
    { "i1.test", DNS_RR_TXT, "v=spf1 a a a a" },
    { "i2.test", DNS_RR_TXT, "v=spf1 a a a a" },
    { "inc-over.test", DNS_RR_TXT, "v=spf1 include:i1.test include:i2.test a ip4:192.0.2.1" },
    /* void lookups: 2 are fine, 3 are a permerror */
    { "void2.test", DNS_RR_TXT, "v=spf1 a:nx1.test a:nx2.test ip4:192.0.2.1" },
    { "void3.test", DNS_RR_TXT, "v=spf1 a:nx1.test a:nx2.test a:nx3.test ip4:192.0.2.1" },
    /* more than 10 MX records is a permerror */
    { "mx11.test", DNS_RR_TXT, "v=spf1 mx -all" },
    { "mx11.test", DNS_RR_MX, "0 m0.test" },
    { "mx11.test", DNS_RR_MX, "1 m1.test" },
    { "mx11.test", DNS_RR_MX, "2 m2.test" },
    { "mx11.test", DNS_RR_MX, "3 m3.test" },
    { "mx11.test", DNS_RR_MX, "4 m4.test" },
    { "mx11.test", DNS_RR_MX, "5 m5.test" },
    { "mx11.test", DNS_RR_MX, "6 m6.test" },
    { "mx11.test", DNS_RR_MX, "7 m7.test" },
    { "mx11.test", DNS_RR_MX, "8 m8.test" },
    { "mx11.test", DNS_RR_MX, "9 m9.test" },
    { "mx11.test", DNS_RR_MX, "10 m10.test" },
    /* redirect loop ends at the term limit */
    { "loop.test", DNS_RR_TXT, "v=spf1 redirect=loop.test" },
    /* two SPF records */
    { "two.test", DNS_RR_TXT, "v=spf1 -all" },
    { "two.test", DNS_RR_TXT, "v=spf1 +all" },
    { "two.test", DNS_RR_TXT, "other text" },
    /* temporary failure */
    { "temp.test", DNS_RR_TXT, "v=spf1 a:t.test -all" },
    { "t.test", DNS_RR_A, "TEMP" },
    /* redirect to a domain without SPF */
    { "redir-none.test", DNS_RR_TXT, "v=spf1 redirect=nothing.test" },
    /* mx with cidr */
    { "mxcidr.test", DNS_RR_TXT, "v=spf1 mx/24 -all" },
    { "mxcidr.test", DNS_RR_MX, "10 mail.mxcidr.test" },
    { "mail.mxcidr.test", DNS_RR_A, "192.0.2.200" },
    { NULL, 0, NULL },
};

static const struct {
    const char *name, *ip, *sender;
    enum spf_result want;
} limit_cases[] = {
    { "ten terms", "192.0.2.1", "a@ten.test", SPF_PASS },
    { "eleven terms", "192.0.2.1", "a@eleven.test", SPF_PERMERROR },
    { "include at limit", "192.0.2.1", "a@inc.test", SPF_PASS },
    { "include over limit", "192.0.2.1", "a@inc-over.test", SPF_PERMERROR },
    { "two voids", "192.0.2.1", "a@void2.test", SPF_PASS },
    { "three voids", "192.0.2.1", "a@void3.test", SPF_PERMERROR },
    { "eleven mx", "192.0.2.1", "a@mx11.test", SPF_PERMERROR },
    { "redirect loop", "192.0.2.1", "a@loop.test", SPF_PERMERROR },
    { "two records", "192.0.2.1", "a@two.test", SPF_PERMERROR },
    { "temp error", "192.0.2.1", "a@temp.test", SPF_TEMPERROR },
    { "redirect to none", "192.0.2.1", "a@redir-none.test", SPF_PERMERROR },
    { "no record", "192.0.2.1", "a@nothing.test", SPF_NONE },
    { "bad domain", "192.0.2.1", "a@single", SPF_NONE },
    { "mx cidr match", "192.0.2.7", "a@mxcidr.test", SPF_PASS },
    { "mx cidr no match", "198.51.100.7", "a@mxcidr.test", SPF_FAIL },
    { "v4-mapped client", "::ffff:192.0.2.7", "a@mxcidr.test", SPF_PASS },
};

static void
test_limits(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(limit_cases); i++) {
        unsigned n;
        char why[256];
        enum spf_result got =
            run_check(limit_zone, limit_cases[i].ip, limit_cases[i].sender, &n, why, sizeof(why));
        if (got != limit_cases[i].want)
            fail_msg("%s: got %s (%s), want %s", limit_cases[i].name, spf_result_name(got), why,
                spf_result_name(limit_cases[i].want));
        if (got != SPF_NONE && why[0] == '\0')
            fail_msg("%s: no reason", limit_cases[i].name);
    }
    assert_string_equal(spf_result_name(SPF_SOFTFAIL), "softfail");
}

/* ---- raw records (src/dns/rr.c) ---- */

static size_t
put_name(unsigned char *p, const char *name)
{
    size_t o = 0;
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t n = dot ? (size_t)(dot - name) : strlen(name);
        p[o++] = (unsigned char)n;
        memcpy(p + o, name, n);
        o += n;
        name += n + (dot ? 1 : 0);
    }
    p[o++] = 0;
    return o;
}

/* A response for qname/qtype with the given answer rdatas. */
static size_t
build_answer(unsigned char *p, const char *qname, int qtype, const unsigned char *const *rd,
    const size_t *rdlen, size_t n)
{
    size_t o = 12;
    memset(p, 0, 12);
    p[2] = 0x81;
    p[3] = 0x80;
    p[5] = 1;
    p[7] = (unsigned char)n;
    o += put_name(p + o, qname);
    p[o++] = 0;
    p[o++] = (unsigned char)qtype;
    p[o++] = 0;
    p[o++] = 1;
    for (size_t i = 0; i < n; i++) {
        p[o++] = 0xc0; /* pointer to the question name */
        p[o++] = 12;
        p[o++] = 0;
        p[o++] = (unsigned char)qtype;
        p[o++] = 0;
        p[o++] = 1;
        memset(p + o, 0, 4);
        p[o + 3] = 60;
        o += 4;
        p[o++] = (unsigned char)(rdlen[i] >> 8);
        p[o++] = (unsigned char)rdlen[i];
        memcpy(p + o, rd[i], rdlen[i]);
        o += rdlen[i];
    }
    return o;
}

static void
test_dns_rr_decode(void **state)
{
    unsigned char pkt[1024], mxrd[64];
    static const unsigned char txt1[] = "\x06v=spf1\x05 -all";
    static const unsigned char txt2[] = "\x00";
    const unsigned char *rd[2] = { txt1, txt2 };
    size_t rdlen[2] = { sizeof(txt1) - 1, 1 }, len, blen;
    struct dns_rr_result *r = dns_rr_result_new(DNS_RR_TXT, DNS_NODATA);
    void *blob;
    char err[128];
    (void)state;
    len = build_answer(pkt, "ex.test", DNS_RR_TXT, rd, rdlen, 2);
    assert_int_equal(
        dns_rr_pack(pkt, (int)len, DNS_RR_TXT, &blob, &blen, err, sizeof(err)), DNS_OK);
    assert_int_equal(dns_rr_unpack(blob, blen, r), 0);
    assert_int_equal(r->n, 2);
    assert_string_equal(r->rr[0].data, "v=spf1 -all"); /* strings joined */
    assert_int_equal(r->rr[1].len, 0);
    free(blob);
    dns_rr_result_free(r);
    /* Asking for another type finds nothing. */
    assert_int_equal(
        dns_rr_pack(pkt, (int)len, DNS_RR_MX, &blob, &blen, err, sizeof(err)), DNS_NODATA);
    /* Every truncation of the packet is refused cleanly. */
    for (size_t cut = 0; cut < len; cut++) {
        enum dns_rc rc = dns_rr_pack(pkt, (int)cut, DNS_RR_TXT, &blob, &blen, err, sizeof(err));
        assert_true(rc == DNS_TEMP || rc == DNS_OK);
        if (rc == DNS_OK)
            free(blob);
    }
    /* MX with a compressed host name pointing into the question. */
    mxrd[0] = 0;
    mxrd[1] = 10;
    mxrd[2] = 4;
    memcpy(mxrd + 3, "mail", 4);
    mxrd[7] = 0xc0;
    mxrd[8] = 12;
    rd[0] = mxrd;
    rdlen[0] = 9;
    len = build_answer(pkt, "Ex.Test", DNS_RR_MX, rd, rdlen, 1);
    r = dns_rr_result_new(DNS_RR_MX, DNS_NODATA);
    assert_int_equal(dns_rr_pack(pkt, (int)len, DNS_RR_MX, &blob, &blen, err, sizeof(err)), DNS_OK);
    assert_int_equal(dns_rr_unpack(blob, blen, r), 0);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->rr[0].pref, 10);
    assert_string_equal(r->rr[0].data, "mail.ex.test");
    free(blob);
    dns_rr_result_free(r);
}

static void
test_reverse_name(void **state)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char out[128];
    (void)state;
    assert_int_equal(dns_literal("192.0.2.3", 0, &ss, &len), 0);
    assert_int_equal(dns_reverse_name((struct sockaddr *)&ss, out, sizeof(out)), 0);
    assert_string_equal(out, "3.2.0.192.in-addr.arpa");
    assert_int_equal(dns_literal("2001:db8::cb01", 0, &ss, &len), 0);
    assert_int_equal(dns_reverse_name((struct sockaddr *)&ss, out, sizeof(out)), 0);
    assert_string_equal(
        out, "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
    assert_int_equal(dns_reverse_name((struct sockaddr *)&ss, out, 10), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_macro_rfc_examples),
        cmocka_unit_test(test_macro_rfc_ipv6),
        cmocka_unit_test(test_macro_syntax),
        cmocka_unit_test(test_macro_url_escape),
        cmocka_unit_test(test_domain_spec),
        cmocka_unit_test(test_target_name),
        cmocka_unit_test(test_record_parse),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_dns_rr_decode),
        cmocka_unit_test(test_reverse_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

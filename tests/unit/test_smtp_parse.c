/*
 * Unit tests for the SMTP parsers: command lines, paths (RFC 5321 §4.1.2,
 * RFC 6531 UTF-8), MAIL/RCPT parameters (RFC 1870, 6152, 6531, 3461, 4954)
 * and xtext. Tables of {name, input, want}; every case checks the reply code
 * and enhanced code on failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/parse.h"
#include "util/util.h"

#define S(lit) lit, sizeof(lit) - 1

static void
test_cmd(void **state)
{
    static const struct {
        const char *name;
        const char *line;
        size_t len;
        int rc;
        enum smtp_verb verb;
        const char *arg; /* NULL: no argument */
        int code;
        const char *esc;
    } cases[] = {
        { "ehlo", S("EHLO client.example"), 0, SMTP_V_EHLO, "client.example", 0, "" },
        { "lower case", S("ehlo x"), 0, SMTP_V_EHLO, "x", 0, "" },
        { "mixed case", S("eHlO x"), 0, SMTP_V_EHLO, "x", 0, "" },
        { "helo", S("HELO x"), 0, SMTP_V_HELO, "x", 0, "" },
        { "helo no arg", S("HELO"), -1, SMTP_V_HELO, NULL, 501, "5.5.4" },
        { "data", S("DATA"), 0, SMTP_V_DATA, NULL, 0, "" },
        { "data trailing space", S("DATA "), 0, SMTP_V_DATA, NULL, 0, "" },
        { "data with arg", S("DATA x"), -1, SMTP_V_DATA, "x", 501, "5.5.4" },
        { "quit", S("quit"), 0, SMTP_V_QUIT, NULL, 0, "" },
        { "rset", S("RSET"), 0, SMTP_V_RSET, NULL, 0, "" },
        { "noop", S("NOOP"), 0, SMTP_V_NOOP, NULL, 0, "" },
        { "noop arg", S("NOOP hello"), 0, SMTP_V_NOOP, "hello", 0, "" },
        { "help", S("HELP"), 0, SMTP_V_HELP, NULL, 0, "" },
        { "vrfy", S("VRFY bob"), 0, SMTP_V_VRFY, "bob", 0, "" },
        { "expn", S("EXPN list"), 0, SMTP_V_EXPN, "list", 0, "" },
        { "starttls", S("STARTTLS"), 0, SMTP_V_STARTTLS, NULL, 0, "" },
        { "starttls arg", S("STARTTLS x"), -1, SMTP_V_STARTTLS, "x", 501, "5.5.4" },
        { "auth", S("AUTH PLAIN AGJvYgBzZWNyZXQ="), 0, SMTP_V_AUTH, "PLAIN AGJvYgBzZWNyZXQ=", 0,
            "" },
        { "bdat", S("BDAT 100 LAST"), 0, SMTP_V_BDAT, "100 LAST", 0, "" },
        { "bdat no arg", S("BDAT"), -1, SMTP_V_BDAT, NULL, 501, "5.5.4" },
        { "mail", S("MAIL FROM:<a@b.example>"), 0, SMTP_V_MAIL, "<a@b.example>", 0, "" },
        { "mail lower", S("mail from:<a@b>"), 0, SMTP_V_MAIL, "<a@b>", 0, "" },
        { "mail space after colon", S("MAIL FROM: <a@b>"), 0, SMTP_V_MAIL, "<a@b>", 0, "" },
        { "mail spaces after colon", S("MAIL FROM:   <a@b> SIZE=10"), 0, SMTP_V_MAIL,
            "<a@b> SIZE=10", 0, "" },
        { "mail null", S("MAIL FROM:<>"), 0, SMTP_V_MAIL, "<>", 0, "" },
        { "mail no from", S("MAIL <a@b>"), -1, SMTP_V_MAIL, NULL, 501, "5.5.4" },
        { "mail to", S("MAIL TO:<a@b>"), -1, SMTP_V_MAIL, NULL, 501, "5.5.4" },
        { "mail no path", S("MAIL FROM:"), -1, SMTP_V_MAIL, NULL, 501, "5.5.4" },
        { "mail no path spaces", S("MAIL FROM:   "), -1, SMTP_V_MAIL, NULL, 501, "5.5.4" },
        { "mail bare", S("MAIL"), -1, SMTP_V_MAIL, NULL, 501, "5.5.4" },
        { "mail from no colon", S("MAIL FROM <a@b>"), -1, SMTP_V_MAIL, NULL, 501, "5.5.4" },
        { "rcpt", S("RCPT TO:<a@b>"), 0, SMTP_V_RCPT, "<a@b>", 0, "" },
        { "rcpt lower", S("rcpt to: <a@b>"), 0, SMTP_V_RCPT, "<a@b>", 0, "" },
        { "rcpt from", S("RCPT FROM:<a@b>"), -1, SMTP_V_RCPT, NULL, 501, "5.5.4" },
        { "unknown", S("FOO bar"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "empty", S(""), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "spaces", S("   "), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "leading space", S(" QUIT"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "verb glued", S("MAILFROM:<a@b>"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "verb prefix", S("QUITX"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "verb with digit", S("EHLO1 x"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "nul", S("NOOP a\0b"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "bare cr", S("NOOP a\rb"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "bare lf", S("NOOP a\nb"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
        { "http", S("GET / HTTP/1.1"), -1, SMTP_V_UNKNOWN, NULL, 500, "5.5.2" },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct smtp_cmd c;
        struct tern_status st = { 0, "", "" };
        int rc;
        print_message("case %s\n", cases[i].name);
        rc = smtp_parse_cmd(cases[i].line, cases[i].len, &c, &st);
        assert_int_equal(rc, cases[i].rc);
        assert_int_equal(c.verb, cases[i].verb);
        if (rc == 0) {
            if (cases[i].arg == NULL) {
                assert_int_equal(c.arg_len, 0);
            } else {
                assert_int_equal(c.arg_len, strlen(cases[i].arg));
                assert_memory_equal(c.arg, cases[i].arg, c.arg_len);
            }
        } else {
            assert_int_equal(st.code, cases[i].code);
            assert_string_equal(st.esc, cases[i].esc);
            assert_true(st.text[0] != '\0');
        }
    }
}

static void
test_cmd_length(void **state)
{
    char line[13000]; /* more than RFC 4954's 12288 */
    struct smtp_cmd c;
    struct tern_status st = { 0, "", "" };

    /* 510 octets plus CRLF is the limit (RFC 5321 §4.5.3.1.4). */
    memset(line, 'a', sizeof(line));
    memcpy(line, "NOOP ", 5);
    assert_int_equal(smtp_parse_cmd(line, SMTP_CMD_LINE_MAX - 2, &c, &st), 0);
    assert_int_equal(smtp_parse_cmd(line, SMTP_CMD_LINE_MAX - 1, &c, &st), -1);
    assert_int_equal(st.code, 500);
    assert_string_equal(st.esc, "5.5.2");
    /* AUTH with an initial response may be longer (RFC 4954 §4)... */
    memcpy(line, "AUTH ", 5);
    assert_int_equal(smtp_parse_cmd(line, 4000, &c, &st), 0);
    assert_int_equal(c.verb, SMTP_V_AUTH);
    assert_int_equal(c.arg_len, 3995);
    /* ...but is still bounded. */
    assert_int_equal(smtp_parse_cmd(line, sizeof(line), &c, &st), -1);
    assert_int_equal(st.code, 500);
}

struct path_case {
    const char *name;
    const char *in;
    size_t len;
    bool allow_null, is_rcpt, utf8;
    int rc;
    const char *addr;
    size_t consumed;
    int code;
    const char *esc;
};

static void
run_path_cases(const struct path_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *addr = (char *)"sentinel";
        size_t consumed = 99;
        struct tern_status st = { 0, "", "" };
        int rc;
        print_message("case %s\n", cases[i].name);
        rc = smtp_parse_path(cases[i].in, cases[i].len, cases[i].allow_null, cases[i].is_rcpt,
            cases[i].utf8, &addr, &consumed, &st);
        assert_int_equal(rc, cases[i].rc);
        if (rc == 0) {
            assert_non_null(addr);
            assert_string_equal(addr, cases[i].addr);
            assert_int_equal(consumed, cases[i].consumed);
        } else {
            assert_null(addr);
            assert_int_equal(st.code, cases[i].code);
            assert_string_equal(st.esc, cases[i].esc);
        }
        free(addr);
    }
}

static void
test_path(void **state)
{
    static const struct path_case cases[] = {
        { "simple", S("<a@b.example>"), false, false, false, 0, "a@b.example", 13, 0, "" },
        { "params follow", S("<a@b.example> SIZE=1"), false, false, false, 0, "a@b.example", 13, 0,
            "" },
        { "junk after >", S("<a@b.example>x"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "null sender", S("<>"), true, false, false, 0, "", 2, 0, "" },
        { "null sender params", S("<> BODY=8BITMIME"), true, false, false, 0, "", 2, 0, "" },
        { "null not allowed", S("<>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "no brackets", S("a@b.example"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "no closing", S("<a@b.example"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "empty input", S(""), true, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "lone <", S("<"), true, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "no domain", S("<a>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "no local", S("<@b.example>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "empty domain", S("<a@>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "two ats", S("<a@b@c>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "atext specials", S("<!#$%&'*+-/=?^_`{|}~@x.example>"), false, false, false, 0,
            "!#$%&'*+-/=?^_`{|}~@x.example", 31, 0, "" },
        { "dots", S("<a.b.c@x.example>"), false, false, false, 0, "a.b.c@x.example", 17, 0, "" },
        { "leading dot", S("<.a@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "trailing dot local", S("<a.@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "double dot local", S("<a..b@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "space in local", S("<a b@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "comma in local", S("<a,b@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "quoted", S("<\"a b\"@x.example>"), false, false, false, 0, "\"a b\"@x.example", 17, 0,
            "" },
        { "quoted pair", S("<\"a\\\"b\\\\c\"@x>"), false, false, false, 0, "\"a\\\"b\\\\c\"@x", 13,
            0, "" },
        { "quoted with @ and >", S("<\"a@>b\"@x>"), false, false, false, 0, "\"a@>b\"@x", 10, 0,
            "" },
        { "quoted empty", S("<\"\"@x>"), false, false, false, 0, "\"\"@x", 6, 0, "" },
        { "quoted unterminated", S("<\"ab@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "quoted pair ctl", S("<\"a\\\x01\"@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "quoted tab", S("<\"a\tb\"@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "quoted then junk", S("<\"a\"b@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "domain hyphen", S("<a@my-host.example>"), false, false, false, 0, "a@my-host.example",
            19, 0, "" },
        { "domain leading hyphen", S("<a@-x.example>"), false, false, false, -1, NULL, 0, 501,
            "5.1.7" },
        { "domain trailing hyphen", S("<a@x-.example>"), false, false, false, -1, NULL, 0, 501,
            "5.1.7" },
        { "domain trailing dot", S("<a@x.example.>"), false, false, false, -1, NULL, 0, 501,
            "5.1.7" },
        { "domain double dot", S("<a@x..example>"), false, false, false, -1, NULL, 0, 501,
            "5.1.7" },
        { "domain underscore", S("<a@x_y.example>"), false, false, false, -1, NULL, 0, 501,
            "5.1.7" },
        { "ipv4 literal", S("<a@[192.0.2.1]>"), false, true, false, 0, "a@[192.0.2.1]", 15, 0, "" },
        { "ipv4 leading zeros", S("<a@[010.0.0.001]>"), false, true, false, 0, "a@[010.0.0.001]",
            17, 0, "" },
        { "ipv4 256", S("<a@[192.0.2.256]>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "ipv4 three parts", S("<a@[192.0.2]>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "ipv4 five parts", S("<a@[1.2.3.4.5]>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "ipv4 four digits", S("<a@[1.2.3.0004]>"), false, true, false, -1, NULL, 0, 501,
            "5.1.3" },
        { "ipv6 literal", S("<a@[IPv6:2001:db8::1]>"), false, true, false, 0,
            "a@[IPv6:2001:db8::1]", 22, 0, "" },
        { "ipv6 lower tag", S("<a@[ipv6:::1]>"), false, true, false, 0, "a@[ipv6:::1]", 14, 0, "" },
        { "ipv6 v4 tail", S("<a@[IPv6:::ffff:192.0.2.1]>"), false, true, false, 0,
            "a@[IPv6:::ffff:192.0.2.1]", 27, 0, "" },
        { "ipv6 bad", S("<a@[IPv6:2001:db8:::1]>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "ipv6 without tag", S("<a@[2001:db8::1]>"), false, true, false, -1, NULL, 0, 501,
            "5.1.3" },
        { "general literal", S("<a@[X-foo:bar]>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "literal unterminated", S("<a@[1.2.3.4>"), false, true, false, -1, NULL, 0, 501,
            "5.1.3" },
        { "literal empty", S("<a@[]>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "literal then junk", S("<a@[1.2.3.4]x>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "source route", S("<@r1.example,@r2.example:a@b.example>"), false, true, false, 0,
            "a@b.example", 37, 0, "" },
        { "source route bad", S("<@r1.example;a@b.example>"), false, true, false, -1, NULL, 0, 501,
            "5.1.3" },
        { "source route empty", S("<@:a@b>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        /* RFC 5321 §4.1.1.3, Appendix C: the route is dropped, for senders too */
        { "source route sender", S("<@r.example:a@b.example> SIZE=10"), true, false, false, 0,
            "a@b.example", 24, 0, "" },
        { "source route quoted", S("<@r.example:\"a@c.example\"@b.example>"), false, true, false, 0,
            "\"a@c.example\"@b.example", 36, 0, "" },
        { "source route literal hop", S("<@[192.0.2.1]:a@b.example>"), false, true, false, -1, NULL,
            0, 501, "5.1.3" },
        { "source route no colon", S("<@r.example,a@b.example>"), false, true, false, -1, NULL, 0,
            501, "5.1.3" },
        { "postmaster rcpt", S("<Postmaster>"), false, true, false, 0, "Postmaster", 12, 0, "" },
        { "postmaster lower", S("<postmaster>"), false, true, false, 0, "postmaster", 12, 0, "" },
        { "postmaster as sender", S("<postmaster>"), false, false, false, -1, NULL, 0, 501,
            "5.1.7" },
        { "postmaster prefix", S("<postmasterx>"), false, true, false, -1, NULL, 0, 501, "5.1.3" },
        { "postmaster route", S("<@r.example:postmaster>"), false, true, false, -1, NULL, 0, 501,
            "5.1.3" },
        { "nul in path", S("<a\0b@x>"), false, false, false, -1, NULL, 0, 501, "5.1.7" },
        { "non-ascii without utf8", S("<j\xc3\xb6rg@x.example>"), false, true, false, -1, NULL, 0,
            553, "5.6.7" },
        { "non-ascii domain without utf8", S("<a@b\xc3\xbc.example>"), false, false, false, -1,
            NULL, 0, 553, "5.6.7" },
    };
    run_path_cases(cases, TERN_ARRAY_LEN(cases));
}

/* RFC 6531 UTF-8 in local part and domain; invalid UTF-8 is refused. */
static void
test_path_utf8(void **state)
{
    static const struct path_case cases[] = {
        { "2-byte", S("<j\xc3\xb6rg@x.example>"), false, true, true, 0, "j\xc3\xb6rg@x.example", 17,
            0, "" },
        { "3-byte domain", S("<a@\xe4\xbe\x8b\xe3\x81\x88.example>"), false, true, true, 0,
            "a@\xe4\xbe\x8b\xe3\x81\x88.example", 18, 0, "" },
        { "4-byte", S("<\xf0\x9f\x98\x80@x>"), false, true, true, 0, "\xf0\x9f\x98\x80@x", 8, 0,
            "" },
        { "max code point", S("<\xf4\x8f\xbf\xbf@x>"), false, true, true, 0, "\xf4\x8f\xbf\xbf@x",
            8, 0, "" },
        { "quoted utf8", S("<\"\xc3\xa9 x\"@x>"), false, true, true, 0, "\"\xc3\xa9 x\"@x", 10, 0,
            "" },
        { "overlong 2-byte", S("<\xc0\xaf@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "overlong c1", S("<\xc1\xbf@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "overlong 3-byte", S("<\xe0\x80\xaf@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "overlong 4-byte", S("<\xf0\x80\x80\xaf@x>"), false, true, true, -1, NULL, 0, 501,
            "5.1.3" },
        { "surrogate", S("<\xed\xa0\x80@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "above U+10FFFF", S("<\xf4\x90\x80\x80@x>"), false, true, true, -1, NULL, 0, 501,
            "5.1.3" },
        { "byte f5", S("<\xf5\x80\x80\x80@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "byte ff", S("<\xff@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "lone continuation", S("<\x80@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "truncated", S("<\xe4\xbe@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "truncated at end", S("<a@x\xc3"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "bad continuation", S("<\xc3\x28@x>"), false, true, true, -1, NULL, 0, 501, "5.1.3" },
        { "sender utf8", S("<\xc3\xa9@x>"), false, false, true, 0, "\xc3\xa9@x", 6, 0, "" },
    };
    run_path_cases(cases, TERN_ARRAY_LEN(cases));
}

/* 256 octets including <> is the limit (RFC 5321 §4.5.3.1.3). */
static void
test_path_length(void **state)
{
    char in[400];
    char *addr;
    size_t consumed, n;
    struct tern_status st = { 0, "", "" };
    /* "<" + 60 'a' + "@" + domain + ">" with 63-octet labels */
    for (n = 250; n <= 300; n++) {
        size_t i, pos = 0, dlen = n - 63; /* total = 1 + 60 + 1 + dlen + 1 */
        in[pos++] = '<';
        memset(in + pos, 'a', 60);
        pos += 60;
        in[pos++] = '@';
        for (i = 0; i < dlen; i++)
            in[pos + i] = (i % 20 == 19) ? '.' : 'd';
        if (in[pos + dlen - 1] == '.')
            in[pos + dlen - 1] = 'd';
        pos += dlen;
        in[pos++] = '>';
        assert_int_equal(pos, n);
        memcpy(in + pos, " SIZE=1", 7);
        addr = NULL;
        print_message("path length %zu\n", n);
        if (n <= SMTP_PATH_MAX) {
            assert_int_equal(
                smtp_parse_path(in, n + 7, false, true, false, &addr, &consumed, &st), 0);
            assert_int_equal(consumed, n);
            assert_int_equal(strlen(addr), n - 2);
        } else {
            assert_int_equal(
                smtp_parse_path(in, n + 7, false, true, false, &addr, &consumed, &st), -1);
            assert_int_equal(st.code, 501);
            assert_string_equal(st.esc, "5.1.3");
            assert_non_null(strstr(st.text, "too long"));
        }
        free(addr);
    }
}

/* Local part at most 64 octets, a domain label at most 63. */
static void
test_path_limits(void **state)
{
    static const struct {
        const char *name;
        size_t local, label;
        int rc;
    } cases[] = {
        { "local 64", 64, 10, 0 },
        { "local 65", 65, 10, -1 },
        { "label 63", 10, 63, 0 },
        { "label 64", 10, 64, -1 },
        { "both at limit", 64, 63, 0 },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char in[200], *addr = NULL;
        size_t pos = 0, consumed = 0;
        struct tern_status st = { 0, "", "" };
        in[pos++] = '<';
        memset(in + pos, 'l', cases[i].local);
        pos += cases[i].local;
        in[pos++] = '@';
        memset(in + pos, 'd', cases[i].label);
        pos += cases[i].label;
        memcpy(in + pos, ".example>", 9);
        pos += 9;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(
            smtp_parse_path(in, pos, false, false, false, &addr, &consumed, &st), cases[i].rc);
        if (cases[i].rc == 0) {
            assert_int_equal(consumed, pos);
            assert_int_equal(strlen(addr), pos - 2);
            assert_memory_equal(addr, in + 1, pos - 2);
        } else {
            assert_int_equal(st.code, 501);
            assert_string_equal(st.esc, "5.1.7");
            assert_null(addr);
        }
        free(addr);
    }
}

static void
test_mail_params(void **state)
{
    static const struct {
        const char *name;
        const char *in;
        int rc;
        int code;
        const char *esc;
        bool has_size;
        uint64_t size;
        enum body_type body;
        bool smtputf8;
        enum dsn_ret ret;
        const char *envid;
    } cases[] = {
        { "none", "", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "spaces only", "   ", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "size", " SIZE=12345", 0, 0, "", true, 12345, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "size zero", "SIZE=0", 0, 0, "", true, 0, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "size max u64", "SIZE=18446744073709551615", 0, 0, "", true, UINT64_MAX, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "size saturates", "SIZE=99999999999999999999", 0, 0, "", true, UINT64_MAX, BODY_7BIT,
            false, DSN_RET_UNSET, NULL },
        { "size 21 digits", "SIZE=100000000000000000000", -1, 501, "5.5.4", false, 0, BODY_7BIT,
            false, DSN_RET_UNSET, NULL },
        { "size negative", "SIZE=-1", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "size hex", "SIZE=0x10", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "size empty", "SIZE=", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "size no value", "SIZE", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "size twice", "SIZE=1 SIZE=2", -1, 501, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "body 8bit", "BODY=8BITMIME", 0, 0, "", false, 0, BODY_8BITMIME, false, DSN_RET_UNSET,
            NULL },
        { "body lower", "body=8bitmime", 0, 0, "", false, 0, BODY_8BITMIME, false, DSN_RET_UNSET,
            NULL },
        { "body 7bit", "BODY=7BIT", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "body binary", "BODY=BINARYMIME", -1, 555, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "body junk", "BODY=9BIT", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "smtputf8", "SMTPUTF8", 0, 0, "", false, 0, BODY_7BIT, true, DSN_RET_UNSET, NULL },
        { "smtputf8 value", "SMTPUTF8=yes", -1, 501, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "ret full", "RET=FULL", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_FULL, NULL },
        { "ret hdrs", "RET=hdrs", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_HDRS, NULL },
        { "ret bad", "RET=ALL", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "envid", "ENVID=QQ314159", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            "QQ314159" },
        { "envid hex", "ENVID=a+2Bb", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            "a+2Bb" },
        { "envid bad hex", "ENVID=a+2bb", -1, 501, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "envid plus at end", "ENVID=a+2", -1, 501, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "envid 100",
            "ENVID=0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
            0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789" },
        { "envid 101",
            "ENVID=01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890",
            -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "auth", "AUTH=bob+40example.com", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "auth null", "AUTH=<>", 0, 0, "", false, 0, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "auth bad", "AUTH=a+zz", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "all", "SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x AUTH=<>", 0, 0, "", true, 10,
            BODY_8BITMIME, true, DSN_RET_HDRS, "x" },
        { "double spaces", "SIZE=10   BODY=8BITMIME", 0, 0, "", true, 10, BODY_8BITMIME, false,
            DSN_RET_UNSET, NULL },
        { "envid twice", "ENVID=a ENVID=b", -1, 501, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "unknown", "FOO=bar", -1, 555, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET, NULL },
        { "rcpt param on mail", "NOTIFY=NEVER", -1, 555, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "bad keyword", "-X=1", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "empty keyword", "=1", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "double equals", "SIZE=1=2", -1, 501, "5.5.4", false, 0, BODY_7BIT, false, DSN_RET_UNSET,
            NULL },
        { "control in value", "ENVID=a\x01", -1, 501, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
        { "non-ascii value", "ENVID=\xc3\xa9", -1, 501, "5.5.4", false, 0, BODY_7BIT, false,
            DSN_RET_UNSET, NULL },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct smtp_mail_params p;
        struct tern_status st = { 0, "", "" };
        int rc;
        print_message("case %s\n", cases[i].name);
        rc = smtp_parse_mail_params(cases[i].in, strlen(cases[i].in), &p, &st);
        assert_int_equal(rc, cases[i].rc);
        if (rc != 0) {
            assert_int_equal(st.code, cases[i].code);
            assert_string_equal(st.esc, cases[i].esc);
            assert_null(p.envid);
            continue;
        }
        assert_int_equal(p.has_size, cases[i].has_size);
        assert_true(p.size == cases[i].size);
        assert_int_equal(p.body, cases[i].body);
        assert_int_equal(p.smtputf8, cases[i].smtputf8);
        assert_int_equal(p.ret, cases[i].ret);
        if (cases[i].envid == NULL)
            assert_null(p.envid);
        else
            assert_string_equal(p.envid, cases[i].envid);
        smtp_mail_params_fini(&p);
        assert_null(p.envid);
    }
}

static void
test_rcpt_params(void **state)
{
    static const struct {
        const char *name;
        const char *in;
        int rc;
        int code;
        unsigned notify;
        const char *orcpt;
    } cases[] = {
        { "none", "", 0, 0, 0, NULL },
        { "never", "NOTIFY=NEVER", 0, 0, DSN_NOTIFY_NEVER, NULL },
        { "success", "NOTIFY=SUCCESS", 0, 0, DSN_NOTIFY_SUCCESS, NULL },
        { "list", "NOTIFY=SUCCESS,FAILURE,DELAY", 0, 0,
            DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY, NULL },
        { "list lower", "notify=failure,delay", 0, 0, DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY, NULL },
        { "never with others", "NOTIFY=NEVER,SUCCESS", -1, 501, 0, NULL },
        { "others with never", "NOTIFY=DELAY,NEVER", -1, 501, 0, NULL },
        { "repeated element", "NOTIFY=DELAY,DELAY", -1, 501, 0, NULL },
        { "empty element", "NOTIFY=DELAY,,FAILURE", -1, 501, 0, NULL },
        { "trailing comma", "NOTIFY=DELAY,", -1, 501, 0, NULL },
        { "leading comma", "NOTIFY=,DELAY", -1, 501, 0, NULL },
        { "bad element", "NOTIFY=SOMETIMES", -1, 501, 0, NULL },
        { "notify no value", "NOTIFY", -1, 501, 0, NULL },
        { "notify twice", "NOTIFY=DELAY NOTIFY=FAILURE", -1, 501, 0, NULL },
        { "orcpt", "ORCPT=rfc822;bob@example.com", 0, 0, 0, "rfc822;bob@example.com" },
        { "orcpt xtext", "ORCPT=rfc822;b+2Bb@example.com", 0, 0, 0, "rfc822;b+2Bb@example.com" },
        { "orcpt utf8 type", "ORCPT=utf-8;bob@example.com", 0, 0, 0, "utf-8;bob@example.com" },
        { "orcpt no type", "ORCPT=;bob@example.com", -1, 501, 0, NULL },
        { "orcpt no semicolon", "ORCPT=bob@example.com", -1, 501, 0, NULL },
        { "orcpt empty address", "ORCPT=rfc822;", -1, 501, 0, NULL },
        { "orcpt bad xtext", "ORCPT=rfc822;a+g0", -1, 501, 0, NULL },
        { "orcpt bad type", "ORCPT=rf(c;a", -1, 501, 0, NULL },
        { "both", "NOTIFY=FAILURE ORCPT=rfc822;a@b", 0, 0, DSN_NOTIFY_FAILURE, "rfc822;a@b" },
        { "bad after good orcpt", "ORCPT=rfc822;a@b NOTIFY=X", -1, 501, 0, NULL },
        { "mail param on rcpt", "SIZE=10", -1, 555, 0, NULL },
        { "unknown", "XFOO", -1, 555, 0, NULL },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct smtp_rcpt_params p;
        struct tern_status st = { 0, "", "" };
        int rc;
        print_message("case %s\n", cases[i].name);
        rc = smtp_parse_rcpt_params(cases[i].in, strlen(cases[i].in), &p, &st);
        assert_int_equal(rc, cases[i].rc);
        if (rc != 0) {
            assert_int_equal(st.code, cases[i].code);
            assert_string_equal(st.esc, "5.5.4");
            assert_null(p.orcpt);
            continue;
        }
        assert_int_equal(p.notify, cases[i].notify);
        if (cases[i].orcpt == NULL)
            assert_null(p.orcpt);
        else
            assert_string_equal(p.orcpt, cases[i].orcpt);
        smtp_rcpt_params_fini(&p);
    }
}

/* An ORCPT of exactly 500 characters is accepted, 501 is not. */
static void
test_orcpt_length(void **state)
{
    char in[600];
    struct smtp_rcpt_params p;
    struct tern_status st = { 0, "", "" };
    memcpy(in, "ORCPT=rfc822;", 13);
    memset(in + 13, 'a', sizeof(in) - 13);
    assert_int_equal(smtp_parse_rcpt_params(in, 6 + 500, &p, &st), 0);
    assert_int_equal(strlen(p.orcpt), 500);
    smtp_rcpt_params_fini(&p);
    assert_int_equal(smtp_parse_rcpt_params(in, 6 + 501, &p, &st), -1);
    assert_int_equal(st.code, 501);
}

static void
test_xtext(void **state)
{
    static const struct {
        const char *name;
        const char *in;
        bool valid;
        const char *decoded; /* NULL: decode fails */
    } cases[] = {
        { "empty", "", true, "" },
        { "plain", "abc", true, "abc" },
        { "hex", "a+2Bb+3D", true, "a+b=" },
        { "space", "a+20b", true, "a b" },
        { "high byte", "+C3+A9", true, "\xc3\xa9" },
        { "lower hex", "a+2b", false, NULL },
        { "short hex", "a+2", false, NULL },
        { "plus alone", "+", false, NULL },
        { "equals", "a=b", false, NULL },
        { "space raw", "a b", false, NULL },
        { "del", "a\x7f", false, NULL },
        { "non-hex", "+GG", false, NULL },
        { "nul escape", "a+00b", true, NULL },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char *out = (char *)"x";
        print_message("case %s\n", cases[i].name);
        assert_int_equal(xtext_valid(cases[i].in, strlen(cases[i].in)), cases[i].valid);
        if (cases[i].decoded == NULL) {
            assert_int_equal(xtext_decode(cases[i].in, strlen(cases[i].in), &out), -1);
            assert_null(out);
        } else {
            assert_int_equal(xtext_decode(cases[i].in, strlen(cases[i].in), &out), 0);
            assert_string_equal(out, cases[i].decoded);
            free(out);
        }
    }
}

/* encode then decode gives back every byte string without NUL. */
static void
test_xtext_roundtrip(void **state)
{
    static const struct {
        const char *in;
        const char *want;
    } cases[] = {
        { "", "" },
        { "bob@example.com", "bob@example.com" },
        { "a+b=c d", "a+2Bb+3Dc+20d" },
        { "\x01\x7f\xff", "+01+7F+FF" },
    };
    char all[256];
    char *enc, *dec;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        enc = xtext_encode(cases[i].in);
        assert_string_equal(enc, cases[i].want);
        free(enc);
    }
    for (int c = 1; c < 256; c++)
        all[c - 1] = (char)c;
    all[255] = '\0';
    enc = xtext_encode(all);
    assert_true(xtext_valid(enc, strlen(enc)));
    assert_int_equal(xtext_decode(enc, strlen(enc), &dec), 0);
    assert_string_equal(dec, all);
    free(enc);
    free(dec);
}

static void
test_addr_domain(void **state)
{
    static const struct {
        const char *in;
        const char *want;
    } cases[] = {
        { "a@b.example", "b.example" },
        { "\"a@x\"@b.example", "b.example" },
        { "postmaster", "" },
        { "", "" },
        { "a@[192.0.2.1]", "[192.0.2.1]" },
        { "a@", "" },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++)
        assert_string_equal(addr_domain(cases[i].in), cases[i].want);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmd),
        cmocka_unit_test(test_cmd_length),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_path_utf8),
        cmocka_unit_test(test_path_length),
        cmocka_unit_test(test_path_limits),
        cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_rcpt_params),
        cmocka_unit_test(test_orcpt_length),
        cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_xtext_roundtrip),
        cmocka_unit_test(test_addr_domain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

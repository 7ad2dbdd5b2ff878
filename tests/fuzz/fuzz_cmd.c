/*
 * libFuzzer target: one SMTP command line through smtp_parse_cmd, then for
 * MAIL/RCPT the path and parameter parsers, and xtext on any argument.
 * Invariants: results stay inside the input, replies carry sane codes, what
 * parses without SMTPUTF8 parses the same with it, owned strings respect the
 * RFC limits, and xtext encode/decode round-trips.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "proto/parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_status(const struct tern_status *st)
{
    CHECK(st->code >= 500 && st->code <= 555);
    CHECK(memchr(st->esc, '\0', sizeof(st->esc)) != NULL && st->esc[0] == '5');
    CHECK(memchr(st->text, '\0', sizeof(st->text)) != NULL && st->text[0] != '\0');
}

static void
check_xtext(const char *s, size_t len)
{
    char *dec = NULL, *enc, *dec2 = NULL;
    if (!xtext_valid(s, len) || xtext_decode(s, len, &dec) < 0)
        return;
    CHECK(strlen(dec) <= len);
    enc = xtext_encode(dec);
    CHECK(xtext_valid(enc, strlen(enc)));
    CHECK(xtext_decode(enc, strlen(enc), &dec2) == 0);
    CHECK(strcmp(dec, dec2) == 0);
    free(dec);
    free(enc);
    free(dec2);
}

static void
check_params(const char *s, size_t len, bool rcpt)
{
    struct tern_status st;
    memset(&st, 0, sizeof(st));
    if (rcpt) {
        struct smtp_rcpt_params p;
        if (smtp_parse_rcpt_params(s, len, &p, &st) < 0) {
            check_status(&st);
            CHECK(p.orcpt == NULL);
            return;
        }
        CHECK((p.notify & ~15u) == 0);
        CHECK(!(p.notify & DSN_NOTIFY_NEVER) || p.notify == DSN_NOTIFY_NEVER);
        CHECK(p.orcpt == NULL || (strlen(p.orcpt) <= 500 && strchr(p.orcpt, ';') != NULL));
        smtp_rcpt_params_fini(&p);
        CHECK(p.orcpt == NULL);
    } else {
        struct smtp_mail_params p;
        if (smtp_parse_mail_params(s, len, &p, &st) < 0) {
            check_status(&st);
            CHECK(p.envid == NULL);
            return;
        }
        CHECK(p.body == BODY_7BIT || p.body == BODY_8BITMIME);
        CHECK(p.has_size || p.size == 0);
        CHECK(p.envid == NULL || (strlen(p.envid) <= 100 && xtext_valid(p.envid, strlen(p.envid))));
        smtp_mail_params_fini(&p);
    }
}

static void
check_path(const char *arg, size_t len, bool rcpt)
{
    struct tern_status st;
    char *a1 = NULL, *a2 = NULL;
    size_t c1 = 0, c2 = 0;
    int r1, r2;

    memset(&st, 0, sizeof(st));
    r1 = smtp_parse_path(arg, len, !rcpt, rcpt, false, &a1, &c1, &st);
    if (r1 < 0) {
        check_status(&st);
        CHECK(a1 == NULL);
    }
    r2 = smtp_parse_path(arg, len, !rcpt, rcpt, true, &a2, &c2, &st);
    if (r2 < 0) {
        check_status(&st);
        CHECK(a2 == NULL);
    }
    /* SMTPUTF8 only ever widens what is accepted. */
    CHECK(r1 < 0 || (r2 == 0 && c1 == c2 && strcmp(a1, a2) == 0));
    if (r2 == 0) {
        CHECK(c2 <= len && c2 <= SMTP_PATH_MAX && c2 >= 2);
        CHECK(arg[0] == '<' && arg[c2 - 1] == '>');
        CHECK(c2 == len || arg[c2] == ' ');
        CHECK(strlen(a2) <= c2 - 2); /* a source route is dropped */
        CHECK(strchr(addr_domain(a2), '@') == NULL);
        CHECK(strlen(addr_domain(a2)) <= SMTP_DOMAIN_MAX);
        if (r1 == 0)
            for (const char *p = a1; *p; p++)
                CHECK((unsigned char)*p < 0x80);
        check_params(arg + c2, len - c2, rcpt);
    }
    free(a1);
    free(a2);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *line = (const char *)data;
    struct smtp_cmd c;
    struct tern_status st;

    memset(&st, 0, sizeof(st));
    if (smtp_parse_cmd(line, size, &c, &st) < 0) {
        check_status(&st);
        CHECK(st.code == 500 || st.code == 501);
        return 0;
    }
    CHECK(c.verb != SMTP_V_UNKNOWN);
    CHECK(size <= 12288);
    if (c.arg_len == 0)
        return 0;
    CHECK(c.arg >= line && c.arg + c.arg_len <= line + size);
    CHECK(c.arg[0] != ' ' && c.arg[c.arg_len - 1] != ' ');
    CHECK(memchr(c.arg, '\0', c.arg_len) == NULL);
    if (c.verb == SMTP_V_MAIL || c.verb == SMTP_V_RCPT)
        check_path(c.arg, c.arg_len, c.verb == SMTP_V_RCPT);
    check_xtext(c.arg, c.arg_len);
    return 0;
}

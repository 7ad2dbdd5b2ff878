/*
 * Unit tests for relay_recipients: the parser (every line form, every
 * refusal with its line number, the bounds), the lookup (case, the trailing
 * dot, whole domains, look-alikes that must not match), the file's trust
 * rules and the --check readability rule, and policy_rcpt_checked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "smtp/policy.h"
#include "smtp/rcptmap.h"
#include "util/util.h"

static void
test_parse(void **state)
{
    static const struct {
        const char *text;
        const char *err; /* NULL: parses; else a substring of the error */
        size_t count;
    } cases[] = {
        { "", NULL, 0 }, { "\n\n# only comments\n   \n\t# indented comment\n", NULL, 0 },
        { "a@x.test\n", NULL, 1 }, { "a@x.test", NULL, 1 }, /* no final newline */
        { "a@x.test\r\nb@x.test\r\n", NULL, 2 },
        { "  a@x.test   OK\n", NULL, 1 },               /* a Postfix map's value */
        { "a@x.test\nA@X.TEST\na@x.test.\n", NULL, 1 }, /* the same entry */
        { "@x.test\n", NULL, 1 },
        { "\"a b\"@x.test\n", "line 1: not an address", 0 }, /* cut at the space */
        { "a@x.test\nnobody\n", "line 2: not an address", 0 }, { "a@\n", "line 1: bad domain", 0 },
        { "a@-x.test\n", "line 1: bad domain", 0 }, { "a@x..test\n", "line 1: bad domain", 0 },
        { "a\x01@x.test\n", "line 1: control character", 0 },
        { "a@x.test\n\na\x7f@x.test\n", "line 3: control character", 0 },
        { "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@x.test\n",
            "line 1: local part longer than 64 octets", 0 },
        { "\xc3\xa9@b\xc3\xbc\x63her.test\n", NULL, 1 }, /* UTF-8 (SMTPUTF8) */
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf err = BUF_INIT;
        size_t len = strlen(cases[i].text);
        struct rcpt_map *m;
        m = rcpt_map_parse(cases[i].text, len, &err);
        if (cases[i].err == NULL) {
            assert_non_null(m);
            assert_int_equal(rcpt_map_count(m), cases[i].count);
            assert_true(rcpt_map_memory(m) > 0);
        } else {
            assert_null(m);
            assert_non_null(err.data);
            assert_non_null(strstr(err.data, cases[i].err));
        }
        rcpt_map_free(m);
        buf_fini(&err);
    }
}

static void
test_bounds(void **state)
{
    struct buf text = BUF_INIT, err = BUF_INIT;
    struct rcpt_map *m;
    (void)state;
    /* A NUL byte in a line. */
    m = rcpt_map_parse("a@x.test\nb@x\0.test\n", 19, &err);
    assert_null(m);
    assert_non_null(strstr(err.data, "line 2: NUL byte"));
    buf_reset(&err);
    /* A line one byte too long is refused; one at the limit is fine. */
    buf_append_str(&text, "a@x.test ");
    while (text.len < RCPTMAP_LINE_MAX)
        buf_append_char(&text, 'v'); /* a value, ignored, but counted */
    assert_int_equal(text.len, RCPTMAP_LINE_MAX);
    m = rcpt_map_parse(text.data, text.len, &err);
    assert_non_null(m);
    rcpt_map_free(m);
    buf_append_char(&text, ' ');
    m = rcpt_map_parse(text.data, text.len, &err);
    assert_null(m);
    assert_non_null(strstr(err.data, "line 1: longer than"));
    /* Entry count: the limit, then one more. */
    buf_reset(&text);
    buf_reset(&err);
    for (unsigned i = 0; i < RCPTMAP_ENTRIES_MAX; i++)
        buf_printf(&text, "u%u@x.test\n", i);
    m = rcpt_map_parse(text.data, text.len, &err);
    assert_non_null(m);
    assert_int_equal(rcpt_map_count(m), RCPTMAP_ENTRIES_MAX);
    assert_true(rcpt_map_has(m, "u999999@x.test"));
    assert_true(rcpt_map_has(m, "U0@X.TEST"));
    assert_false(rcpt_map_has(m, "u1000000@x.test"));
    rcpt_map_free(m);
    buf_append_str(&text, "one@more.test\n");
    assert_null(rcpt_map_parse(text.data, text.len, &err));
    assert_non_null(strstr(err.data, "more than"));
    buf_fini(&text);
    buf_fini(&err);
}

static void
test_lookup(void **state)
{
    static const char list[] = "alice@inbound.test\n"
                               "Bob.Smith@Inbound.Test.\n"
                               "@whole.test\n"
                               "carol@sub.inbound.test\n"
                               "\"quoted x\"@inbound.test\n"; /* cut: never matches */
    static const struct {
        const char *addr;
        bool want;
    } cases[] = {
        { "alice@inbound.test", true },
        { "ALICE@INBOUND.TEST", true },
        { "alice@inbound.test.", true },
        { "bob.smith@inbound.test", true },
        { "BOB.SMITH@inbound.TEST", true },
        { "anyone@whole.test", true },
        { "anyone@WHOLE.TEST.", true },
        { "@whole.test", true },
        { "carol@sub.inbound.test", true },
        { "alice@sub.inbound.test", false }, /* a domain entry is not its subdomains' */
        { "anyone@sub.whole.test", false },
        { "anyone@whole.test.evil", false },
        { "alic@inbound.test", false },
        { "alice2@inbound.test", false },
        { "alice@inbound.tes", false },
        { "alice", false },
        { "", false },
        { "bob.smith@inbound.test..", false },
        { "alice@inbound.test@whole.test", true }, /* the last '@' names the domain */
        { "\"quoted", false },
    };
    struct buf err = BUF_INIT;
    struct rcpt_map *m = rcpt_map_parse(list, sizeof(list) - 1, &err);
    char longaddr[2000];
    (void)state;
    assert_null(m); /* the quoted line is not an address once cut */
    m = rcpt_map_parse(list, strstr(list, "\"quoted") - list, &err);
    assert_non_null(m);
    assert_int_equal(rcpt_map_count(m), 4);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (rcpt_map_has(m, cases[i].addr) != cases[i].want)
            fail_msg("%s: want %d", cases[i].addr, cases[i].want);
    }
    memset(longaddr, 'a', sizeof(longaddr) - 1);
    longaddr[sizeof(longaddr) - 1] = '\0';
    memcpy(longaddr + sizeof(longaddr) - 12, "@whole.test", 12);
    assert_false(rcpt_map_has(m, longaddr)); /* far too long for any entry */
    rcpt_map_free(m);
    buf_fini(&err);
}

/* The file: trust rules at load, --check's readability for another uid,
 * a failed load keeping the list. */
static void
test_list_file(void **state)
{
    char dir[] = "/tmp/test_rcptmap.XXXXXX", path[64];
    struct rcpt_list *l = rcpt_list_new();
    struct buf err = BUF_INIT;
    FILE *f;
    uid_t other = geteuid() == 0 ? 12345 : geteuid() + 1;
    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/list", dir);
    /* No list: every address passes. */
    assert_true(rcpt_list_accepts(l, "anyone@anywhere.test"));
    /* Missing file. */
    assert_int_equal(rcpt_list_load(l, path, &err), -1);
    assert_non_null(strstr(err.data, "cannot read"));
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("alice@inbound.test\n", f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0644), 0);
    buf_reset(&err);
    assert_int_equal(rcpt_list_load(l, path, &err), 0);
    assert_true(rcpt_list_accepts(l, "Alice@Inbound.Test"));
    assert_false(rcpt_list_accepts(l, "bob@inbound.test"));
    assert_int_equal(rcpt_list_check(path, geteuid(), getegid(), &err), 0);
    /* Group or world writable: refused, the list in use stays. */
    assert_int_equal(chmod(path, 0664), 0);
    assert_int_equal(rcpt_list_load(l, path, &err), -1);
    assert_non_null(strstr(err.data, "writable by group or others"));
    assert_true(rcpt_list_accepts(l, "alice@inbound.test"));
    buf_reset(&err);
    assert_int_equal(rcpt_list_check(path, geteuid(), getegid(), &err), -1);
    /* Readable only by its owner: another user (the relay's) cannot. */
    assert_int_equal(chmod(path, 0600), 0);
    buf_reset(&err);
    if (geteuid() == 0) {
        assert_int_equal(rcpt_list_check(path, other, (gid_t)other, &err), -1);
        assert_non_null(strstr(err.data, "not readable"));
    } else {
        /* Owned by someone but the relay's user or root. */
        assert_int_equal(rcpt_list_check(path, other, (gid_t)other, &err), -1);
        assert_non_null(strstr(err.data, "owned by"));
    }
    assert_int_equal(chmod(path, 0644), 0);
    buf_reset(&err);
    if (geteuid() == 0)
        assert_int_equal(rcpt_list_check(path, other, (gid_t)other, &err), 0);
    /* No list again. */
    assert_int_equal(rcpt_list_load(l, NULL, &err), 0);
    assert_true(rcpt_list_accepts(l, "bob@inbound.test"));
    rcpt_list_free(l);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
    buf_fini(&err);
}

static void
test_policy_rcpt_checked(void **state)
{
    static char *domains[] = { "inbound.test", ".sub.inbound.test" };
    static const struct {
        const char *rcpt;
        bool want;
    } cases[] = {
        { "a@inbound.test", true },
        { "a@INBOUND.TEST.", true },
        { "a@x.sub.inbound.test", true },
        { "a@elsewhere.test", false },
        { "postmaster", false },
        { "", false },
        { NULL, false },
    };
    struct config cfg;
    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.relay_domains = domains;
    cfg.n_relay_domains = 2;
    assert_false(policy_rcpt_checked(&cfg, "a@inbound.test")); /* no file: nothing checked */
    cfg.relay_recipients = "/etc/tern/relay_recipients";
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (policy_rcpt_checked(&cfg, cases[i].rcpt) != cases[i].want)
            fail_msg("%s: want %d", cases[i].rcpt ? cases[i].rcpt : "NULL", cases[i].want);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_list_file),
        cmocka_unit_test(test_policy_rcpt_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

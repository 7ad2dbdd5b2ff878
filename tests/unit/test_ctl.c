/*
 * Unit tests of the operator tools' logic: the JSON reader (src/ctl/json.c),
 * the control client and ternctl helpers (src/ctl/client.c, with the socket
 * exchange over a socketpair) and tern-sendmail's message handling
 * (src/ctl/inject.c): address lists, stdin reader, header pass, replies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "ctl/client.h"
#include "ctl/ctl.h"
#include "proto/inject.h"
#include "spool/spool.h"
#include "util/buf.h"
#include "util/json.h"
#include "util/util.h"

/* --- JSON --- */

struct json_case {
    const char *name;
    const char *input;
    int want; /* 0 parses, -1 rejected */
};

static const struct json_case json_cases[] = {
    { "empty object", "{}", 0 },
    { "empty array", " [ ] ", 0 },
    { "nested", "{\"a\":[1,{\"b\":null}],\"c\":true}", 0 },
    { "string escapes", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", 0 },
    { "unicode escape", "\"\\u00e9\"", 0 },
    { "surrogate pair", "\"\\ud83d\\ude00\"", 0 },
    { "negative float exp", "-12.5e+3", 0 },
    { "zero", "0", 0 },
    { "raw utf8 passes", "\"caf\xc3\xa9\"", 0 },
    { "empty input", "", -1 },
    { "only spaces", "   ", -1 },
    { "trailing junk", "{} x", -1 },
    { "two values", "1 2", -1 },
    { "trailing comma array", "[1,]", -1 },
    { "trailing comma object", "{\"a\":1,}", -1 },
    { "missing colon", "{\"a\" 1}", -1 },
    { "unquoted key", "{a:1}", -1 },
    { "single quotes", "'a'", -1 },
    { "unterminated string", "\"abc", -1 },
    { "raw newline in string", "\"a\nb\"", -1 },
    { "bad escape", "\"\\x\"", -1 },
    { "short unicode", "\"\\u12\"", -1 },
    { "lone high surrogate", "\"\\ud800\"", -1 },
    { "lone low surrogate", "\"\\udc00\"", -1 },
    { "high then non-low", "\"\\ud800\\u0041\"", -1 },
    { "leading zero", "01", -1 },
    { "plus sign", "+1", -1 },
    { "dot without digits", "1.", -1 },
    { "exp without digits", "1e", -1 },
    { "bare minus", "-", -1 },
    { "nan", "NaN", -1 },
    { "huge exponent", "1e999", -1 },
    { "truncated true", "tru", -1 },
    { "unclosed array", "[1,2", -1 },
    { "unclosed object", "{\"a\":1", -1 },
    { "mismatched close", "[1}", -1 },
    { "number too long", "123456789012345678901234567890123456789012345678901234567890123456", -1 },
};

static void
test_json_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(json_cases); i++) {
        const struct json_case *c = &json_cases[i];
        struct json *v = NULL;
        struct buf err = BUF_INIT;
        int got = json_parse(c->input, strlen(c->input), &v, &err);
        if (got != c->want)
            fail_msg("%s: got %d want %d (%s)", c->name, got, c->want, err.data ? err.data : "");
        if (got < 0 && (v != NULL || err.len == 0))
            fail_msg("%s: failure must leave out NULL and give a reason", c->name);
        json_free(v);
        buf_fini(&err);
    }
}

static void
test_json_values(void **state)
{
    const char *in = "{\"id\":\"a\\u00e9\\ud83d\\ude00\\n\",\"n\":-42,\"f\":1.5,"
                     "\"big\":12345678901234567890,\"t\":true,\"z\":null,\"l\":[1,2,3],"
                     "\"id\":\"dup\"}";
    struct json *v = NULL;
    int64_t i;
    (void)state;
    assert_int_equal(json_parse(in, strlen(in), &v, NULL), 0);
    assert_int_equal(v->type, JSON_OBJECT);
    assert_string_equal(json_str(json_get(v, "id")), "a\xc3\xa9\xf0\x9f\x98\x80\n");
    assert_int_equal(json_int(json_get(v, "n"), &i), 0);
    assert_int_equal(i, -42);
    assert_int_equal(json_int(json_get(v, "f"), &i), -1);
    assert_true(json_get(v, "f")->num == 1.5);
    assert_int_equal(json_int(json_get(v, "big"), &i), -1); /* over int64 */
    assert_true(json_get(v, "t")->type == JSON_BOOL && json_get(v, "t")->b);
    assert_int_equal(json_get(v, "z")->type, JSON_NULL);
    assert_null(json_str(json_get(v, "z")));
    assert_int_equal(json_get(v, "l")->n_kids, 3);
    assert_null(json_get(v, "missing"));
    assert_null(json_get(json_get(v, "l"), "x"));
    json_free(v);
}

static void
test_json_limits(void **state)
{
    struct buf b = BUF_INIT;
    struct json *v = NULL;
    (void)state;
    for (int i = 0; i < JSON_DEPTH_MAX; i++)
        buf_append_char(&b, '[');
    for (int i = 0; i < JSON_DEPTH_MAX; i++)
        buf_append_char(&b, ']');
    assert_int_equal(json_parse(b.data, b.len, &v, NULL), 0);
    json_free(v);
    v = NULL;
    buf_reset(&b);
    for (int i = 0; i < JSON_DEPTH_MAX + 1; i++)
        buf_append_char(&b, '[');
    for (int i = 0; i < JSON_DEPTH_MAX + 1; i++)
        buf_append_char(&b, ']');
    assert_int_equal(json_parse(b.data, b.len, &v, NULL), -1);
    /* Deep garbage fails without blowing the stack. */
    buf_reset(&b);
    for (int i = 0; i < 100000; i++)
        buf_append_char(&b, '[');
    assert_int_equal(json_parse(b.data, b.len, &v, NULL), -1);
    /* Too many values. */
    buf_reset(&b);
    buf_append_char(&b, '[');
    for (int i = 0; i < JSON_NODES_MAX; i++)
        buf_append_str(&b, "0,");
    buf_append_str(&b, "0]");
    assert_int_equal(json_parse(b.data, b.len, &v, NULL), -1);
    /* A NUL byte inside a string is a control character. */
    assert_int_equal(json_parse("\"a\0b\"", 5, &v, NULL), -1);
    assert_null(v);
    buf_fini(&b);
}

/* --- ternctl helpers --- */

static void
test_qid_valid(void **state)
{
    static const struct {
        const char *in;
        bool want;
    } cases[] = {
        { "0123456789abcdef", true },
        { "ffffffffffffffff", true },
        { "0123456789ABCDEF", false },
        { "0123456789abcde", false },
        { "0123456789abcdef0", false },
        { "", false },
        { "0123456789abcdeg", false },
        { "0123456789abcde ", false },
        { "../../etc/passwd", false },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        if (spool_qid_valid(cases[i].in) != cases[i].want)
            fail_msg("qid %s: want %d", cases[i].in, cases[i].want);
    }
}

static void
test_fmt_age(void **state)
{
    static const struct {
        int64_t secs;
        const char *want;
    } cases[] = {
        { -5, "0s" },
        { 0, "0s" },
        { 45, "45s" },
        { 60, "1m00s" },
        { 192, "3m12s" },
        { 3599, "59m59s" },
        { 3600, "1h00m" },
        { 7500, "2h05m" },
        { 86399, "23h59m" },
        { 86400, "1d00h" },
        { 90000, "1d01h" },
        { 40 * 86400 + 3 * 3600, "40d03h" },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char out[16];
        ctl_fmt_age(cases[i].secs, out, sizeof(out));
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("age %lld: got %s want %s", (long long)cases[i].secs, out, cases[i].want);
    }
}

static void
test_append_safe(void **state)
{
    struct buf b = BUF_INIT;
    (void)state;
    buf_append_safe(&b, "a\x01\x1b[31mb\x7f", 9, 20);
    assert_string_equal(b.data, "a??[31mb?");
    buf_reset(&b);
    buf_append_safe(&b, "0123456789", 10, 10);
    assert_string_equal(b.data, "0123456789");
    buf_reset(&b);
    buf_append_safe(&b, "0123456789x", 11, 10);
    assert_string_equal(b.data, "0123456...");
    /* C1 controls: a raw CSI (an 8-bit terminal's ESC [) and U+009B in
     * UTF-8; malformed UTF-8 (a lone continuation byte, an overlong ESC, a
     * surrogate, a sequence cut short) is replaced byte by byte. */
    buf_reset(&b);
    buf_append_safe(&b,
        "a\x9b"
        "31mb\xc2\x9b"
        "0mc",
        11, 40);
    assert_string_equal(b.data, "a?31mb?0mc");
    buf_reset(&b);
    buf_append_safe(&b, "\x80|\xc0\x9b|\xed\xa0\x80|\xe2\x82", 11, 40);
    assert_string_equal(b.data, "?|??|???|??");
    /* Well-formed UTF-8 passes whole (NBSP, the euro sign, an emoji); a
     * cut never splits a character. */
    buf_reset(&b);
    buf_append_safe(&b, "\xc2\xa0\xe2\x82\xac\xf0\x9f\x93\xa7", 9, 40);
    assert_string_equal(b.data, "\xc2\xa0\xe2\x82\xac\xf0\x9f\x93\xa7");
    buf_reset(&b);
    buf_append_safe(&b, "ab\xe2\x82\xacxyz", 8, 7);
    assert_string_equal(b.data, "ab...");
    buf_reset(&b);
    buf_append_safe(&b, "ab\xe2\x82\xacxyz", 8, 8);
    assert_string_equal(b.data, "ab\xe2\x82\xacxyz");
    buf_fini(&b);
}

static const char list_line[] =
    "{\"id\":\"0123456789abcdef\",\"sender\":\"\",\"arrival\":1000,\"held\":true,\"size\":5,"
    "\"recipients\":[{\"address\":\"x@y\",\"status\":\"deferred\",\"attempts\":3,"
    "\"last_error\":\"451 4.4.1 refused\\r\\nX\"},{\"address\":\"z@w\",\"status\":\"queued\","
    "\"attempts\":0,\"last_error\":null}]}";

static void
test_row_from_json(void **state)
{
    struct json *v = NULL;
    struct ctl_row row;
    struct buf err = BUF_INIT;
    (void)state;
    assert_int_equal(json_parse(list_line, strlen(list_line), &v, NULL), 0);
    assert_int_equal(ctl_row_from_json(v, 1192, &row, &err), 0);
    assert_string_equal(row.id, "0123456789abcdef");
    assert_string_equal(row.age, "3m12s");
    assert_true(row.held);
    assert_string_equal(row.sender, "<>");
    assert_string_equal(row.rcpts, "x@y (deferred), z@w (queued)");
    assert_int_equal(row.attempts, 3);
    assert_string_equal(row.last_error, "451 4.4.1 refused??X");
    ctl_row_fini(&row);
    json_free(v);
}

static void
test_row_schema_errors(void **state)
{
    static const char *const bad[] = {
        "[]",
        "{\"id\":\"XYZ\",\"sender\":\"a\",\"arrival\":1,\"recipients\":[]}",
        "{\"id\":\"0123456789abcdef\",\"arrival\":1,\"recipients\":[]}",
        "{\"id\":\"0123456789abcdef\",\"sender\":\"a\",\"arrival\":\"1\",\"recipients\":[]}",
        "{\"id\":\"0123456789abcdef\",\"sender\":\"a\",\"arrival\":1}",
        "{\"id\":\"0123456789abcdef\",\"sender\":\"a\",\"arrival\":1,\"held\":1,"
        "\"recipients\":[]}",
        "{\"id\":\"0123456789abcdef\",\"sender\":\"a\",\"arrival\":1,\"recipients\":"
        "[{\"address\":\"x\",\"status\":\"queued\",\"attempts\":-1}]}",
        "{\"id\":\"0123456789abcdef\",\"sender\":\"a\",\"arrival\":1,\"recipients\":"
        "[{\"status\":\"queued\",\"attempts\":1}]}",
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(bad); i++) {
        struct json *v = NULL;
        struct ctl_row row;
        struct buf err = BUF_INIT;
        assert_int_equal(json_parse(bad[i], strlen(bad[i]), &v, NULL), 0);
        if (ctl_row_from_json(v, 0, &row, &err) != -1 || err.len == 0)
            fail_msg("bad row %zu accepted", i);
        assert_null(row.sender);
        json_free(v);
        buf_fini(&err);
    }
}

static void
test_summary_line(void **state)
{
    const char *in = "{\"destination\":\"y.org\",\"messages\":2,\"recipients\":5,"
                     "\"oldest\":100,\"last_error\":null}";
    struct json *v = NULL;
    struct buf out = BUF_INIT, err = BUF_INIT;
    (void)state;
    assert_int_equal(json_parse(in, strlen(in), &v, NULL), 0);
    assert_int_equal(ctl_summary_line(v, 160, 8, &out, &err), 0);
    /* An older daemon sent no age buckets: "-" in each column. */
    assert_string_equal(out.data,
        "y.org            2           5     1m00s       -       -       -       -       -       -       -  -");
    json_free(v);
    v = NULL;
    assert_int_equal(json_parse("{\"destination\":\"a\"}", 19, &v, NULL), 0);
    assert_int_equal(ctl_summary_line(v, 0, 1, &out, &err), -1);
    json_free(v);
    buf_fini(&out);
    buf_fini(&err);
}

/* Age buckets and the held line of `queue summary`. */
static void
test_summary_ages_held(void **state)
{
    static const struct {
        const char *in;
        int rc;
        const char *want;
    } cases[] = {
        { "{\"destination\":\"y.org\",\"messages\":3,\"recipients\":3,\"oldest\":100,"
          "\"last_error\":\"451 x\",\"ages\":{\"<5m\":1,\"5-10m\":0,\"10-20m\":0,"
          "\"20-40m\":0,\"40-80m\":0,\"80-160m\":0,\">160m\":2}}",
            0,
            "y.org          3           3     1m00s       1       0       0       0       0       0       2  451 x" },
        { "{\"held\":true,\"messages\":4,\"recipients\":6,\"oldest\":160,"
          "\"ages\":{\"<5m\":4,\"5-10m\":0,\"10-20m\":0,\"20-40m\":0,\"40-80m\":0,"
          "\"80-160m\":0,\">160m\":0}}",
            0,
            "(held)         4           6        0s       4       0       0       0       0       0       0  -" },
        { "{\"held\":false,\"messages\":4,\"recipients\":6,\"oldest\":160}", -1, NULL },
        { "{\"destination\":\"y.org\",\"messages\":3,\"recipients\":3,\"oldest\":100,"
          "\"ages\":{\"<5m\":1}}",
            -1, NULL },
    };
    struct buf head = BUF_INIT;
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct json *v = NULL;
        struct buf out = BUF_INIT, err = BUF_INIT;
        assert_int_equal(json_parse(cases[i].in, strlen(cases[i].in), &v, NULL), 0);
        if (ctl_summary_line(v, 160, 6, &out, &err) != cases[i].rc)
            fail_msg("case %zu: rc", i);
        if (cases[i].want != NULL && strcmp(out.data, cases[i].want) != 0)
            fail_msg("case %zu: \"%s\"", i, out.data);
        json_free(v);
        buf_fini(&out);
        buf_fini(&err);
    }
    ctl_summary_header(6, &head);
    assert_string_equal(head.data,
        "DESTINATION  MESSAGES  RECIPIENTS    OLDEST     <5m   5-10m  10-20m  20-40m  40-80m 80-160m   >160m  LAST ERROR");
    buf_fini(&head);
}

/* Lines of ids on stdin: trimmed, blanks skipped, anything else refused. */
static void
test_id_line(void **state)
{
    static const struct {
        const char *in;
        int want;
    } cases[] = {
        { "0123456789abcdef", 1 },
        { "  0123456789abcdef\t\r", 1 },
        { "", 0 },
        { " \t \r", 0 },
        { "0123456789ABCDEF", -1 },
        { "0123456789abcdef 0123456789abcdef", -1 },
        { "0123456789abcde", -1 },
        { "x0123456789abcdef", -1 },
        { "ALL", -1 },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char id[17] = "";
        int rc = ctl_id_line(cases[i].in, strlen(cases[i].in), id);
        if (rc != cases[i].want)
            fail_msg("\"%s\": %d want %d", cases[i].in, rc, cases[i].want);
        if (rc == 1 && strcmp(id, "0123456789abcdef") != 0)
            fail_msg("\"%s\": id %s", cases[i].in, id);
    }
}

/* The request of an action on a selection, and what cannot be sent. */
static void
test_select_request(void **state)
{
    static const struct {
        const char *verb, *sender, *domain;
        int64_t older;
        const char *want; /* NULL: refused */
    } cases[] = {
        { "HOLD", NULL, NULL, 0, "HOLD ALL" },
        { "DELETE", "a@b.test", "c.test", 600,
            "DELETE ALL sender=a@b.test rdomain=c.test older=600" },
        { "RELEASE", "<>", NULL, 0, "RELEASE ALL sender=" },
        { "FLUSH", "", NULL, 0, "FLUSH ALL sender=" },
        { "HOLD", NULL, NULL, 86400, "HOLD ALL older=86400" },
        { "HOLD", "a b@c.test", NULL, 0, NULL },
        { "HOLD", "nobody", NULL, 0, NULL },
        { "HOLD", "a@b.test\n", NULL, 0, NULL },
        { "HOLD", NULL, "not a domain", 0, NULL },
        { "HOLD", NULL, "-bad-.test", 0, NULL },
        { "HOLD", NULL, NULL, -1, NULL },
        { "HOLD", NULL, NULL, (int64_t)1 << 40, NULL },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct buf out = BUF_INIT, err = BUF_INIT;
        int rc = ctl_select_request(
            cases[i].verb, cases[i].sender, cases[i].domain, cases[i].older, &out, &err);
        if (cases[i].want == NULL && (rc != -1 || err.len == 0))
            fail_msg("case %zu accepted: %s", i, out.data);
        if (cases[i].want != NULL && (rc != 0 || strcmp(out.data, cases[i].want) != 0))
            fail_msg("case %zu: %d \"%s\" (%s)", i, rc, out.data ? out.data : "",
                err.data ? err.data : "");
        buf_fini(&out);
        buf_fini(&err);
    }
    {
        /* A sender too long for one request. */
        char big[CTL_SELECT_MAX + 8];
        struct buf out = BUF_INIT, err = BUF_INIT;
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        big[5] = '@';
        assert_int_equal(ctl_select_request("HOLD", big, NULL, 0, &out, &err), -1);
        buf_fini(&out);
        buf_fini(&err);
    }
}

/* The next attempt column of `queue list`. */
static void
test_fmt_next(void **state)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        { "{\"held\":false,\"next_attempt\":1192}", "in 3m12s" },
        { "{\"held\":false,\"next_attempt\":1000}", "now" },
        { "{\"held\":false,\"next_attempt\":900}", "now" },
        { "{\"held\":true,\"next_attempt\":1192}", "held" },
        { "{\"held\":false,\"next_attempt\":null}", "-" },
        { "{\"held\":false}", "-" },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct json *v = NULL;
        char out[24];
        assert_int_equal(json_parse(cases[i].in, strlen(cases[i].in), &v, NULL), 0);
        ctl_fmt_next(v, 1000, out, sizeof(out));
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("%s: \"%s\"", cases[i].in, out);
        json_free(v);
    }
}

static void
test_user_valid(void **state)
{
    char longname[CTL_USER_MAX + 2];
    (void)state;
    assert_true(ctl_user_valid("alice"));
    assert_true(ctl_user_valid("alice@example.org"));
    assert_false(ctl_user_valid(""));
    assert_false(ctl_user_valid("a:b"));
    assert_false(ctl_user_valid("a b"));
    assert_false(ctl_user_valid("a\tb"));
    assert_false(ctl_user_valid("a\nb"));
    assert_false(ctl_user_valid("a\x7f"));
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_false(ctl_user_valid(longname));
    longname[CTL_USER_MAX] = '\0';
    assert_true(ctl_user_valid(longname));
}

struct passwd_case {
    const char *name, *old, *user, *want;
    bool replaced;
};

static const struct passwd_case passwd_cases[] = {
    { "empty file", "", "bob", "bob:H\n", false },
    { "append", "# c\nalice:x\n", "bob", "# c\nalice:x\nbob:H\n", false },
    { "replace", "# c\nbob:old\nalice:x\n", "bob", "# c\nbob:H\nalice:x\n", true },
    { "dup dropped", "bob:1\nx:2\nbob:3\n", "bob", "bob:H\nx:2\n", true },
    { "prefix is not a match", "bobby:1\n", "bob", "bobby:1\nbob:H\n", false },
    { "no colon is not a match", "bob\n", "bob", "bob\nbob:H\n", false },
    { "missing final newline", "a:1", "bob", "a:1\nbob:H\n", false },
    { "blank lines kept", "\n\na:1\n", "a", "\n\na:H\n", true },
};

static void
test_passwd_update(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(passwd_cases); i++) {
        const struct passwd_case *c = &passwd_cases[i];
        struct buf out = BUF_INIT;
        bool replaced;
        assert_int_equal(
            ctl_passwd_update(c->old, strlen(c->old), c->user, "H", &out, &replaced), 0);
        if (strcmp(out.data, c->want) != 0 || replaced != c->replaced)
            fail_msg("%s: got \"%s\" replaced=%d", c->name, out.data, replaced);
        buf_fini(&out);
    }
}

/* --- control socket exchange --- */

struct collected {
    struct buf lines;
    int abort_at; /* 1-based line number to abort at, 0 never */
    int n;
};

static int
collect(const char *line, size_t len, void *arg)
{
    struct collected *c = arg;
    if (++c->n == c->abort_at)
        return -1;
    buf_append(&c->lines, line, len);
    buf_append_char(&c->lines, '|');
    return 0;
}

/* Run one exchange where the "daemon" already wrote reply and closed. */
static enum ctl_rc
exchange(const char *req, const char *reply, size_t reply_len, struct collected *c, struct buf *msg,
    char *got_req, size_t cap)
{
    int sv[2];
    enum ctl_rc rc;
    ssize_t n;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    if (reply_len > 0)
        assert_int_equal(write(sv[1], reply, reply_len), (ssize_t)reply_len);
    shutdown(sv[1], SHUT_WR);
    rc = ctl_exchange(sv[0], req, 200, collect, c, msg);
    close(sv[0]);
    n = read(sv[1], got_req, cap - 1);
    got_req[n > 0 ? n : 0] = '\0';
    close(sv[1]);
    return rc;
}

struct exch_case {
    const char *name, *req, *reply;
    enum ctl_rc want;
    const char *want_lines, *want_msg;
    int abort_at;
};

static const struct exch_case exch_cases[] = {
    { "ok no data", "FLUSH", "OK\n", CTL_OK, "", "", 0 },
    { "data lines", "LIST", "{\"a\":1}\n{}\nOK\n", CTL_OK, "{\"a\":1}|{}|", "", 0 },
    { "crlf tolerated", "LIST", "x\r\nOK\r\n", CTL_OK, "x|", "", 0 },
    { "err text", "DELETE 0123456789abcdef", "ERR unknown queue id\n", CTL_ERR, "",
        "unknown queue id", 0 },
    { "bare err", "X", "ERR\n", CTL_ERR, "", "error", 0 },
    { "err escaped", "X",
        "ERR a\x1b"
        "b\n",
        CTL_ERR, "", "a?b", 0 },
    { "eof before final", "LIST", "x\n", CTL_FAIL, "x|",
        "ternd closed the connection before the reply ended", 0 },
    { "eof mid line", "LIST", "OK", CTL_FAIL, "",
        "ternd closed the connection before the reply ended", 0 },
    { "nothing after final", "LIST", "OK\nignored\n", CTL_OK, "", "", 0 },
    { "callback aborts", "LIST", "a\nb\nOK\n", CTL_FAIL, "a|", "reply processing aborted", 2 },
    { "OKAY is data", "LIST", "OKAY\nOK\n", CTL_OK, "OKAY|", "", 0 },
    { "request with newline", "LIST\nFLUSH", "OK\n", CTL_FAIL, "", "bad control request", 0 },
    { "empty request", "", "OK\n", CTL_FAIL, "", "bad control request", 0 },
};

static void
test_exchange_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(exch_cases); i++) {
        const struct exch_case *c = &exch_cases[i];
        struct collected col = { BUF_INIT, c->abort_at, 0 };
        struct buf msg = BUF_INIT;
        char req[256];
        enum ctl_rc rc = exchange(c->req, c->reply, strlen(c->reply), &col, &msg, req, sizeof(req));
        if (rc != c->want)
            fail_msg("%s: rc %d want %d (%s)", c->name, rc, c->want, msg.data ? msg.data : "");
        if (strcmp(col.lines.data ? col.lines.data : "", c->want_lines) != 0)
            fail_msg("%s: lines \"%s\"", c->name, col.lines.data);
        if (strcmp(msg.data ? msg.data : "", c->want_msg) != 0)
            fail_msg("%s: msg \"%s\"", c->name, msg.data ? msg.data : "");
        if (c->want != CTL_FAIL || strcmp(c->want_msg, "bad control request") != 0) {
            char want_req[256];
            snprintf(want_req, sizeof(want_req), "%s\n", c->req);
            if (strcmp(req, want_req) != 0)
                fail_msg("%s: request sent \"%s\"", c->name, req);
        }
        buf_fini(&col.lines);
        buf_fini(&msg);
    }
}

static void
test_exchange_limits(void **state)
{
    struct collected col = { BUF_INIT, 0, 0 };
    struct buf msg = BUF_INIT, big = BUF_INIT;
    char req[CTL_LINE_MAX + 8];
    int sv[2];
    (void)state;
    /* A request of CTL_LINE_MAX characters is refused before sending. */
    memset(req, 'A', CTL_LINE_MAX);
    req[CTL_LINE_MAX] = '\0';
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(ctl_exchange(sv[0], req, 200, NULL, NULL, &msg), CTL_FAIL);
    /* No reply at all: the timeout fires. */
    buf_reset(&msg);
    assert_int_equal(ctl_exchange(sv[0], "LIST", 100, collect, &col, &msg), CTL_FAIL);
    assert_non_null(strstr(msg.data, "timed out"));
    close(sv[0]);
    close(sv[1]);
    /* A reply line over CTL_REPLY_LINE_MAX is refused; the writer is a
     * child because the line does not fit in the socket buffer. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        for (size_t i = 0; i <= CTL_REPLY_LINE_MAX; i += 4096) {
            char chunk[4096];
            memset(chunk, 'x', sizeof(chunk));
            if (write(sv[1], chunk, sizeof(chunk)) < 0)
                _exit(0);
        }
        _exit(0);
    }
    close(sv[1]);
    buf_reset(&msg);
    assert_int_equal(ctl_exchange(sv[0], "LIST", 2000, collect, &col, &msg), CTL_FAIL);
    assert_non_null(strstr(msg.data, "too long"));
    assert_int_equal(col.n, 0);
    close(sv[0]);
    buf_fini(&msg);
    buf_fini(&big);
    buf_fini(&col.lines);
}

static void
test_connect_nodaemon(void **state)
{
    struct buf msg = BUF_INIT;
    enum ctl_rc rc;
    int fd = -1;
    char dir[] = "/tmp/test_ctl.XXXXXX";
    (void)state;
    assert_non_null(mkdtemp(dir));
    assert_int_equal(ctl_connect(dir, &fd, &rc, &msg), -1);
    assert_int_equal(rc, CTL_NODAEMON);
    assert_non_null(strstr(msg.data, "/ctl.sock"));
    buf_reset(&msg);
    assert_int_equal(ctl_call("/nonexistent/dir", "LIST", 100, NULL, NULL, &msg), CTL_NODAEMON);
    rmdir(dir);
    buf_fini(&msg);
}

/* --- tern-sendmail: address lists --- */

struct addr_case {
    const char *name, *input;
    int want;
    const char *want_addrs; /* "|" joined */
};

static const struct addr_case addr_cases[] = {
    { "single", "a@b.org", 0, "a@b.org" },
    { "two", "a@b.org, c@d.org", 0, "a@b.org|c@d.org" },
    { "display name", "Joe User <joe@x.org>", 0, "joe@x.org" },
    { "quoted name with comma", "\"Doe, John\" <j@x.org>, k@y.org", 0, "j@x.org|k@y.org" },
    { "comment", "a@b.org (Alice, the boss)", 0, "a@b.org" },
    { "nested comment", "a@b.org (x (y) z), c@d", 0, "a@b.org|c@d" },
    { "comment inside angle", "<a(x)@b.org>", 0, "a@b.org" },
    { "group", "team: a@b.org, c@d.org;, e@f.org", 0, "a@b.org|c@d.org|e@f.org" },
    { "empty group", "undisclosed-recipients:;", 0, "" },
    { "group without semicolon", "team: a@b", 0, "a@b" },
    { "quoted local part", "\"john doe\"@x.org", 0, "\"john doe\"@x.org" },
    { "quoted with escape", "\"a\\\"b\"@x.org", 0, "\"a\\\"b\"@x.org" },
    { "domain literal", "user@[192.0.2.1]", 0, "user@[192.0.2.1]" },
    { "cfws around dot", "john . doe @ x.org", 0, "john.doe@x.org" },
    { "source route", "<@r1.org,@r2.org:a@b.org>", 0, "a@b.org" },
    { "empty elements", "a@b,, ,c@d", 0, "a@b|c@d" },
    { "null angle skipped", "<>, a@b", 0, "a@b" },
    { "dedup", "a@b, A <a@b>", 0, "a@b" },
    { "unqualified", "root", 0, "root" },
    { "utf8", "J\xc3\xb6rg <j\xc3\xb6rg@b\xc3\xbc.de>", 0, "j\xc3\xb6rg@b\xc3\xbc.de" },
    { "folded whitespace", "a@b,\r\n\tc@d", 0, "a@b|c@d" },
    { "empty", "", 0, "" },
    { "name without address", "John Doe", -1, "" },
    { "unterminated angle", "Joe <a@b", -1, "" },
    { "two angles", "<a@b> <c@d>", -1, "" },
    { "text after angle", "<a@b> junk", -1, "" },
    { "unterminated quote", "\"abc <a@b>", -1, "" },
    { "unterminated comment", "a@b (x", -1, "" },
    { "stray close", "a@b>", -1, "" },
    { "semicolon outside group", "a@b;", -1, "" },
    { "nested group", "g: h: a@b;;", -1, "" },
    { "colon first", ": a@b", -1, "" },
    { "angle in angle", "<a<b>", -1, "" },
    { "bad route", "<@r1.org a@b>", -1, "" },
    { "control char", "a\x01@b", -1, "" },
};

static void
test_addrlist_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(addr_cases); i++) {
        const struct addr_case *c = &addr_cases[i];
        struct inject_addrs a = { NULL, 0, 0 };
        struct buf err = BUF_INIT, got = BUF_INIT;
        int r = inject_parse_addrlist(c->input, strlen(c->input), &a, &err);
        if (r != c->want)
            fail_msg("%s: got %d want %d (%s)", c->name, r, c->want, err.data ? err.data : "");
        if (r < 0 && err.len == 0)
            fail_msg("%s: no reason given", c->name);
        for (size_t k = 0; r == 0 && k < a.n; k++)
            buf_printf(&got, "%s%s", k ? "|" : "", a.v[k]);
        if (r == 0 && strcmp(got.data ? got.data : "", c->want_addrs) != 0)
            fail_msg("%s: got \"%s\" want \"%s\"", c->name, got.data, c->want_addrs);
        inject_addrs_fini(&a);
        buf_fini(&err);
        buf_fini(&got);
    }
}

static void
test_addrlist_limits(void **state)
{
    struct inject_addrs a = { NULL, 0, 0 };
    struct buf in = BUF_INIT, err = BUF_INIT;
    (void)state;
    for (int i = 0; i < INJECT_RCPTS_MAX; i++)
        buf_printf(&in, "u%d@x,", i);
    assert_int_equal(inject_parse_addrlist(in.data, in.len, &a, &err), 0);
    assert_int_equal(a.n, INJECT_RCPTS_MAX);
    buf_append_str(&in, "one-more@x");
    assert_int_equal(inject_parse_addrlist(in.data, in.len, &a, &err), -1);
    assert_non_null(strstr(err.data, "too many"));
    inject_addrs_fini(&a);
    buf_reset(&in);
    for (int i = 0; i < INJECT_ADDR_MAX; i++)
        buf_append_char(&in, 'a');
    buf_append_str(&in, "@x");
    assert_int_equal(inject_parse_addrlist(in.data, in.len, &a, &err), -1);
    buf_reset(&in);
    for (int i = 0; i < 100; i++)
        buf_append_char(&in, '(');
    assert_int_equal(inject_parse_addrlist(in.data, in.len, &a, &err), -1);
    inject_addrs_fini(&a);
    buf_fini(&in);
    buf_fini(&err);
}

/* --- tern-sendmail: stdin reader --- */

struct reader_case {
    const char *name, *input;
    bool dot_ends;
    size_t chunk; /* feed in pieces of this size; 0 = all at once */
    int want_rc;  /* of the feeds (1 = dot seen) */
    const char *want;
};

static const struct reader_case reader_cases[] = {
    { "lf to crlf", "a\nb\n", true, 0, 0, "a\r\nb\r\n" },
    { "crlf kept", "a\r\nb\r\n", true, 0, 0, "a\r\nb\r\n" },
    { "last line unterminated", "a\nb", true, 0, 0, "a\r\nb\r\n" },
    { "dot ends", "a\n.\nb\n", true, 0, 1, "a\r\n" },
    { "dot crlf ends", "a\r\n.\r\nb\r\n", true, 0, 1, "a\r\n" },
    { "dot kept with -i", "a\n.\nb\n", false, 0, 0, "a\r\n.\r\nb\r\n" },
    { "dot dot is data", "a\n..\n", true, 0, 0, "a\r\n..\r\n" },
    { "dot space is data", ". \n", true, 0, 0, ". \r\n" },
    { "dot at eof ends", "a\n.", true, 0, 0, "a\r\n" },
    { "split across feeds", "ab\r\ncd\n.\nx", true, 1, 1, "ab\r\ncd\r\n" },
    { "empty", "", true, 0, 0, "" },
    { "empty lines", "\n\n", true, 3, 0, "\r\n\r\n" },
    { "bare cr kept", "a\rb\n", true, 0, 0, "a\rb\r\n" },
};

static void
test_reader_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(reader_cases); i++) {
        const struct reader_case *c = &reader_cases[i];
        struct inject_reader r;
        size_t len = strlen(c->input), step = c->chunk ? c->chunk : (len ? len : 1);
        int rc = 0;
        inject_reader_init(&r, c->dot_ends, 1000);
        for (size_t off = 0; off < len && rc == 0; off += step)
            rc = inject_reader_feed(&r, c->input + off, len - off < step ? len - off : step);
        if (rc == 0)
            assert_int_equal(inject_reader_finish(&r), 0);
        if (rc != c->want_rc)
            fail_msg("%s: rc %d want %d", c->name, rc, c->want_rc);
        if (strcmp(r.out.data ? r.out.data : "", c->want) != 0)
            fail_msg("%s: got \"%s\"", c->name, r.out.data);
        inject_reader_fini(&r);
    }
}

static void
test_reader_max(void **state)
{
    struct inject_reader r;
    (void)state;
    inject_reader_init(&r, false, 10);
    assert_int_equal(inject_reader_feed(&r, "1234567\n", 8), 0); /* 9 bytes out */
    assert_int_equal(inject_reader_feed(&r, "x", 1), 0);         /* 10 so far */
    assert_int_equal(inject_reader_finish(&r), -1);              /* 12 with CRLF */
    assert_int_equal(inject_reader_feed(&r, "y", 1), -1);        /* 11 */
    inject_reader_fini(&r);
    inject_reader_init(&r, false, 10);
    assert_int_equal(inject_reader_feed(&r, "12345678901", 11), -1); /* no newline */
    inject_reader_fini(&r);
    inject_reader_init(&r, false, 10);
    assert_int_equal(inject_reader_feed(&r, "12345678", 8), 0);
    assert_int_equal(inject_reader_finish(&r), 0); /* 10 with CRLF */
    assert_int_equal(r.out.len, 10);
    inject_reader_fini(&r);
}

/* --- tern-sendmail: header pass --- */

#define ADDED "Date: D\r\nMessage-ID: <M>\r\nFrom: f@h\r\n"

struct build_case {
    const char *name, *input;
    bool extract;
    int want_rc;
    const char *want; /* message, or part of the error */
    const char *want_rcpts;
    bool hdr8, body8;
};

static const struct build_case build_cases[] = {
    { "adds missing headers", "Subject: s\r\n\r\nbody\r\n", false, 0,
        "Subject: s\r\n" ADDED "\r\nbody\r\n", "", false, false },
    { "keeps present ones", "from: a@b\r\nDATE: x\r\nMessage-Id: <y>\r\n\r\nb\r\n", false, 0,
        "from: a@b\r\nDATE: x\r\nMessage-Id: <y>\r\n\r\nb\r\n", "", false, false },
    { "bcc removed, folded", "To: a@b\r\nBcc: c@d,\r\n e@f\r\nSubject: s\r\n\r\nx\r\n", false, 0,
        "To: a@b\r\nSubject: s\r\n" ADDED "\r\nx\r\n", "", false, false },
    { "extract to cc bcc", "To: A <a@b>\r\nCc: c@d,\r\n\t\"x, y\" <e@f>\r\nBcc: g@h\r\n\r\n", true,
        0, "To: A <a@b>\r\nCc: c@d,\r\n\t\"x, y\" <e@f>\r\n" ADDED "\r\n", "a@b|c@d|e@f|g@h", false,
        false },
    { "no extraction without -t", "To: a@b\r\n\r\n", false, 0, "To: a@b\r\n" ADDED "\r\n", "",
        false, false },
    { "no header at all", "hello world\r\n", false, 0, ADDED "\r\nhello world\r\n", "", false,
        false },
    { "empty message", "", false, 0, ADDED "\r\n", "", false, false },
    { "header only", "Subject: s\r\n", false, 0, "Subject: s\r\n" ADDED "\r\n", "", false, false },
    { "mbox from line dropped", "From a@b Mon Jan 1\r\nSubject: s\r\n\r\nx\r\n", false, 0,
        "Subject: s\r\n" ADDED "\r\nx\r\n", "", false, false },
    { "body text ends header", "Subject: s\r\nnot a header\r\nmore\r\n", false, 0,
        "Subject: s\r\n" ADDED "\r\nnot a header\r\nmore\r\n", "", false, false },
    { "leading continuation is body", " x\r\n", false, 0, ADDED "\r\n x\r\n", "", false, false },
    { "8bit body", "Subject: s\r\n\r\n\xc3\xa9\r\n", false, 0,
        "Subject: s\r\n" ADDED "\r\n\xc3\xa9\r\n", "", false, true },
    { "8bit header", "Subject: \xc3\xa9\r\n\r\nx\r\n", false, 0,
        "Subject: \xc3\xa9\r\n" ADDED "\r\nx\r\n", "", true, false },
    { "bad to with -t", "To: John Doe\r\n\r\n", true, -1, "in To: header", "", false, false },
    { "bad to ignored without -t", "To: John Doe\r\n\r\n", false, 0,
        "To: John Doe\r\n" ADDED "\r\n", "", false, false },
};

static void
test_build_table(void **state)
{
    struct inject_opts o = { false, "f@h", "D", "<M>" };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(build_cases); i++) {
        const struct build_case *c = &build_cases[i];
        struct inject_addrs rc = { NULL, 0, 0 };
        struct inject_info info = { false, false };
        struct buf out = BUF_INIT, err = BUF_INIT, got = BUF_INIT;
        o.extract_rcpts = c->extract;
        int r = inject_build(&o, c->input, strlen(c->input), &out, &rc, &info, &err);
        if (r != c->want_rc)
            fail_msg("%s: rc %d (%s)", c->name, r, err.data ? err.data : "");
        if (r == 0 && strcmp(out.data, c->want) != 0)
            fail_msg("%s: got \"%s\"", c->name, out.data);
        if (r < 0 && strstr(err.data, c->want) == NULL)
            fail_msg("%s: error \"%s\"", c->name, err.data);
        for (size_t k = 0; k < rc.n; k++)
            buf_printf(&got, "%s%s", k ? "|" : "", rc.v[k]);
        if (r == 0 && strcmp(got.data ? got.data : "", c->want_rcpts) != 0)
            fail_msg("%s: rcpts \"%s\"", c->name, got.data);
        if (r == 0 && (info.hdr_8bit != c->hdr8 || info.body_8bit != c->body8))
            fail_msg("%s: 8bit flags %d %d", c->name, info.hdr_8bit, info.body_8bit);
        inject_addrs_fini(&rc);
        buf_fini(&out);
        buf_fini(&err);
        buf_fini(&got);
    }
}

static void
test_build_limits(void **state)
{
    struct inject_opts o = { false, "f@h", "D", "<M>" };
    struct inject_addrs rc = { NULL, 0, 0 };
    struct inject_info info;
    struct buf in = BUF_INIT, out = BUF_INIT, err = BUF_INIT;
    (void)state;
    for (int i = 0; i <= INJECT_FIELDS_MAX; i++)
        buf_printf(&in, "X-H%d: v\r\n", i);
    buf_append_str(&in, "\r\nbody\r\n");
    assert_int_equal(inject_build(&o, in.data, in.len, &out, &rc, &info, &err), -1);
    assert_non_null(strstr(err.data, "too large"));
    buf_reset(&in);
    buf_reset(&out);
    buf_reset(&err);
    buf_append_str(&in, "X-Long: a\r\n");
    for (size_t n = 0; n < INJECT_FIELD_MAX; n += 10)
        buf_append_str(&in, " 12345678\r\n");
    buf_append_str(&in, "\r\nbody\r\n");
    assert_int_equal(inject_build(&o, in.data, in.len, &out, &rc, &info, &err), -1);
    inject_addrs_fini(&rc);
    buf_fini(&in);
    buf_fini(&out);
    buf_fini(&err);
}

static void
test_fmt_date(void **state)
{
    char out[64];
    (void)state;
    setenv("TZ", "UTC", 1);
    inject_fmt_date(1751373296, out, sizeof(out)); /* 2025-07-01 12:34:56 UTC */
    assert_string_equal(out, "Tue, 01 Jul 2025 12:34:56 +0000");
}

static void
test_reply_line(void **state)
{
    static const struct {
        const char *in;
        int want_rc, code;
        bool more;
    } cases[] = {
        { "250 ok", 0, 250, false },
        { "250-SIZE 100", 0, 250, true },
        { "354", 0, 354, false },
        { "421 4.3.0 bye", 0, 421, false },
        { "550 5.1.1 no", 0, 550, false },
        { "25", -1, 0, false },
        { "2500 x", -1, 0, false },
        { "abc def", -1, 0, false },
        { "650 x", -1, 0, false },
        { "160 x", -1, 0, false },
        { "260 x", -1, 0, false },
        { "", -1, 0, false },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        int code = 0;
        bool more = false;
        int r = inject_reply_line(cases[i].in, strlen(cases[i].in), &code, &more);
        if (r != cases[i].want_rc || (r == 0 && (code != cases[i].code || more != cases[i].more)))
            fail_msg("reply \"%s\": rc %d code %d more %d", cases[i].in, r, code, more);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_table),
        cmocka_unit_test(test_json_values),
        cmocka_unit_test(test_json_limits),
        cmocka_unit_test(test_qid_valid),
        cmocka_unit_test(test_fmt_age),
        cmocka_unit_test(test_append_safe),
        cmocka_unit_test(test_row_from_json),
        cmocka_unit_test(test_row_schema_errors),
        cmocka_unit_test(test_summary_line),
        cmocka_unit_test(test_summary_ages_held),
        cmocka_unit_test(test_id_line),
        cmocka_unit_test(test_select_request),
        cmocka_unit_test(test_fmt_next),
        cmocka_unit_test(test_user_valid),
        cmocka_unit_test(test_passwd_update),
        cmocka_unit_test(test_exchange_table),
        cmocka_unit_test(test_exchange_limits),
        cmocka_unit_test(test_connect_nodaemon),
        cmocka_unit_test(test_addrlist_table),
        cmocka_unit_test(test_addrlist_limits),
        cmocka_unit_test(test_reader_table),
        cmocka_unit_test(test_reader_max),
        cmocka_unit_test(test_build_table),
        cmocka_unit_test(test_build_limits),
        cmocka_unit_test(test_fmt_date),
        cmocka_unit_test(test_reply_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests of the event webhook's pure parts on journal files written by
 * hand in a mkdtemp spool: the signature against RFC 4231 vectors, the
 * backoff table, batches bounded by count and bytes that carry the sender,
 * the cursor moving across files, past damaged lines but never into a half
 * written last line nor past a file the writer may still finish, an
 * expired cursor file (reading goes on, reported),
 * and the cursor file's round trip and damage.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/json.h"
#include "util/util.h"
#include "webhook/webhook.h"

#define QID1  "0123456789abcdef"
#define FILE1 "1764700000000.jsonl"
#define FILE2 "1764700003600.jsonl"

struct fx {
    char dir[64];
};

static int
setup(void **state)
{
    struct fx *f = xcalloc(1, sizeof(*f));
    char h[128];
    snprintf(f->dir, sizeof(f->dir), "/tmp/tern-hook-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(h, sizeof(h), "%s/history", f->dir);
    assert_int_equal(mkdir(h, 0700), 0);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* Append text to the journal file name. */
static void
put(struct fx *f, const char *name, const char *text)
{
    char p[256];
    int fd;
    snprintf(p, sizeof(p), "%s/history/%s", f->dir, name);
    fd = open(p, O_WRONLY | O_CREAT | O_APPEND, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void
put_event(struct fx *f, const char *name, int64_t t, const char *ev, const char *rcpt)
{
    char line[512];
    snprintf(line, sizeof(line),
        "{\"time\":%lld,\"id\":\"" QID1 "\",\"event\":\"%s\",\"from\":\"a@example.org\","
        "\"recipient\":\"%s\"}\n",
        (long long)t, ev, rcpt);
    put(f, name, line);
}

/* A batch as "event:recipient:sender|...", checked to be one JSON array. */
static void
read_batch(struct fx *f, struct history_pos *pos, size_t max, char *out, size_t cap, bool *lost)
{
    struct webhook_batch b = { BUF_INIT, 0, { "", 0 } };
    struct buf err = BUF_INIT;
    struct json *tree = NULL;
    size_t used = 0;
    assert_int_equal(webhook_batch_read(f->dir, pos, max, &b, lost, &err), 0);
    out[0] = '\0';
    if (b.n > 0) {
        assert_int_equal(json_parse(b.body.data, b.body.len, &tree, NULL), 0);
        assert_int_equal(tree->type, JSON_ARRAY);
        assert_int_equal(tree->n_kids, b.n);
        for (size_t i = 0; i < tree->n_kids; i++) {
            const struct json *o = &tree->kids[i];
            const char *s = json_str(json_get(o, "sender"));
            used += (size_t)snprintf(out + used, cap - used, "%s%s:%s:%s", i ? "|" : "",
                json_str(json_get(o, "event")), json_str(json_get(o, "recipient")),
                s != NULL ? s : "null");
        }
        json_free(tree);
    }
    *pos = b.to;
    buf_fini(&b.body);
    buf_fini(&err);
}

static void
test_sign_rfc4231(void **state)
{
    static const struct {
        const char *key;
        size_t key_len;
        const char *data;
        const char *want;
    } cases[] = {
        { "\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b", 20,
            "Hi There", "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7" },
        { "Jefe", 4, "what do ya want for nothing?",
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        char sig[WEBHOOK_SIG_LEN + 1];
        assert_int_equal(
            webhook_sign(cases[i].key, cases[i].key_len, cases[i].data, strlen(cases[i].data), sig),
            0);
        assert_string_equal(sig, cases[i].want);
    }
}

static void
test_backoff(void **state)
{
    static const struct {
        unsigned attempt;
        int64_t want;
    } cases[] = { { 0, 5000 }, { 1, 5000 }, { 2, 10000 }, { 3, 20000 }, { 6, 160000 },
        { 7, 300000 }, { 1000, 300000 } };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++)
        assert_int_equal(webhook_backoff_ms(cases[i].attempt), cases[i].want);
}

static void
test_batches_follow_files(void **state)
{
    struct fx *f = *state;
    struct history_pos pos = { "", 0 };
    char got[4096];
    bool lost;
    put_event(f, FILE1, 1, "received", "b@example.net");
    put_event(f, FILE1, 2, "deferred", "b@example.net");
    put(f, FILE1, "not json at all\n");
    put_event(f, FILE1, 3, "delivered", "b@example.net");
    put_event(f, FILE2, 4, "received", "c@example.net");
    put(f, FILE2, "{\"time\":5,\"id\":\"" QID1 "\",\"event\":\"held\"}\n");
    read_batch(f, &pos, 2, got, sizeof(got), &lost);
    assert_string_equal(
        got, "received:b@example.net:a@example.org|deferred:b@example.net:a@example.org");
    assert_false(lost);
    assert_string_equal(pos.file, FILE1);
    read_batch(f, &pos, 2, got, sizeof(got), &lost);
    assert_string_equal(
        got, "delivered:b@example.net:a@example.org|received:c@example.net:a@example.org");
    assert_string_equal(pos.file, FILE2);
    read_batch(f, &pos, 2, got, sizeof(got), &lost);
    assert_string_equal(got, "held:(null):null");
    read_batch(f, &pos, 2, got, sizeof(got), &lost);
    assert_string_equal(got, "");
    /* A half written line waits; once whole, it is read. */
    put(f, FILE2, "{\"time\":6,\"id\":\"" QID1 "\",\"event\":\"released\"");
    read_batch(f, &pos, 2, got, sizeof(got), &lost);
    assert_string_equal(got, "");
    put(f, FILE2, "}\n");
    read_batch(f, &pos, 2, got, sizeof(got), &lost);
    assert_string_equal(got, "released:(null):null");
}

/* The writer makes the next file, then writes what it held to the old
 * one, then switches: an empty newer file does not end the old one. */
static void
test_late_line_before_rotation(void **state)
{
    struct fx *f = *state;
    struct history_pos pos = { "", 0 };
    char got[1024];
    bool lost;
    put_event(f, FILE1, 1, "received", "b@example.net");
    put(f, FILE2, "");
    read_batch(f, &pos, 10, got, sizeof(got), &lost);
    assert_string_equal(got, "received:b@example.net:a@example.org");
    assert_string_equal(pos.file, FILE1);
    put_event(f, FILE1, 2, "delivered", "b@example.net");
    read_batch(f, &pos, 10, got, sizeof(got), &lost);
    assert_string_equal(got, "delivered:b@example.net:a@example.org");
    put_event(f, FILE2, 3, "deleted", "-");
    read_batch(f, &pos, 10, got, sizeof(got), &lost);
    assert_string_equal(got, "deleted:-:a@example.org");
    assert_string_equal(pos.file, FILE2);
    assert_false(lost);
}

static void
test_cursor_file_expired(void **state)
{
    struct fx *f = *state;
    struct history_pos pos = { "1764699990000.jsonl", 123 };
    char got[1024];
    bool lost = false;
    put_event(f, FILE2, 4, "delivered", "c@example.net");
    read_batch(f, &pos, 10, got, sizeof(got), &lost);
    assert_true(lost);
    assert_string_equal(got, "delivered:c@example.net:a@example.org");
    assert_string_equal(pos.file, FILE2);
}

static void
test_body_bounded(void **state)
{
    struct fx *f = *state;
    struct history_pos pos = { "", 0 };
    struct webhook_batch b = { BUF_INIT, 0, { "", 0 } };
    struct buf err = BUF_INIT, line = BUF_INIT;
    char big[1001];
    size_t total = 0;
    bool lost;
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    for (int i = 0; i < 400; i++) {
        buf_reset(&line);
        buf_printf(&line,
            "{\"time\":%d,\"id\":\"" QID1 "\",\"event\":\"deferred\",\"recipient\":\"r@x\","
            "\"reply\":\"%s\"}\n",
            i, big);
        put(f, FILE1, line.data);
    }
    while (total < 400) {
        assert_int_equal(webhook_batch_read(f->dir, &pos, 1000, &b, &lost, &err), 0);
        assert_true(b.n > 0);
        assert_true(b.body.len <= WEBHOOK_BODY_MAX);
        assert_true(b.n < 400 || total > 0); /* more than one POST */
        total += b.n;
        pos = b.to;
    }
    assert_int_equal(total, 400);
    buf_fini(&b.body);
    buf_fini(&err);
    buf_fini(&line);
}

static void
test_cursor_roundtrip(void **state)
{
    struct fx *f = *state;
    struct history_pos in = { FILE2, 4242 }, out, start = { "", 0 };
    struct buf err = BUF_INIT;
    char p[256];
    assert_int_equal(webhook_cursor_load(f->dir, &out, &err), 0);
    assert_string_equal(out.file, "");
    assert_int_equal(webhook_cursor_save(f->dir, &in, &err), 0);
    assert_int_equal(webhook_cursor_load(f->dir, &out, &err), 0);
    assert_string_equal(out.file, FILE2);
    assert_int_equal(out.off, 4242);
    assert_int_equal(webhook_cursor_save(f->dir, &start, &err), 0);
    assert_int_equal(webhook_cursor_load(f->dir, &out, &err), 0);
    assert_string_equal(out.file, "");
    assert_int_equal(out.off, 0);
    snprintf(p, sizeof(p), "%s/" WEBHOOK_CURSOR_FILE ".tmp", f->dir);
    assert_int_equal(access(p, F_OK), -1);
    /* Damaged: refused, never guessed. */
    snprintf(p, sizeof(p), "%s/" WEBHOOK_CURSOR_FILE, f->dir);
    {
        static const char *const bad[] = { "", "tern-webhook-cursor 1 ../../etc/passwd 0\n",
            "tern-webhook-cursor 1 " FILE1 " -1\n", "tern-webhook-cursor 1 " FILE1 " 12",
            "tern-webhook-cursor 2 " FILE1 " 12\n" };
        for (size_t i = 0; i < TERN_ARRAY_LEN(bad); i++) {
            FILE *fp = fopen(p, "w");
            assert_non_null(fp);
            fputs(bad[i], fp);
            assert_int_equal(fclose(fp), 0);
            buf_reset(&err);
            assert_int_equal(webhook_cursor_load(f->dir, &out, &err), -1);
            assert_string_equal(out.file, "");
        }
    }
    buf_fini(&err);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_rfc4231),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test_setup_teardown(test_batches_follow_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_line_before_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cursor_file_expired, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cursor_roundtrip, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

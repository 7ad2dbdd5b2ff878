/*
 * Unit tests of the metrics text (src/metrics): every family has HELP and
 * TYPE before its samples, label values are escaped, destinations fold to
 * a bounded top list plus "other", latency buckets are cumulative, and the
 * reject reasons come from reply codes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/metrics.h"
#include "util/buf.h"

static char *
render(const struct metrics_snapshot *snap)
{
    struct buf b = BUF_INIT;
    metrics_render(&b, snap);
    return buf_take(&b);
}

static bool
has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    }
    return false;
}

/* Every sample's family was announced by HELP then TYPE before it, and
 * each family is announced once. */
static void
test_families_announced(void **state)
{
    struct metrics_snapshot snap;
    char *text, *line, *save = NULL;
    char seen[64][96];
    size_t n_seen = 0;
    char help[96] = "";
    memset(&snap, 0, sizeof(snap));
    snap.version = "1.2.3";
    text = render(&snap);
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[96];
        if (sscanf(line, "# HELP %95s", name) == 1) {
            for (size_t i = 0; i < n_seen; i++)
                assert_string_not_equal(seen[i], name);
            assert_true(n_seen < 64);
            snprintf(seen[n_seen++], sizeof(seen[0]), "%s", name);
            snprintf(help, sizeof(help), "%s", name);
            continue;
        }
        if (sscanf(line, "# TYPE %95s", name) == 1) {
            assert_string_equal(name, help);
            continue;
        }
        size_t len = strcspn(line, "{ ");
        assert_true(len > 0 && len < sizeof(name));
        memcpy(name, line, len);
        name[len] = '\0';
        /* a histogram's samples carry suffixes */
        bool ok = strcmp(name, help) == 0;
        static const char *const sfx[] = { "_bucket", "_sum", "_count" };
        for (size_t i = 0; i < 3 && !ok; i++) {
            size_t hl = strlen(help);
            ok = strncmp(name, help, hl) == 0 && strcmp(name + hl, sfx[i]) == 0;
        }
        assert_true(ok);
    }
    assert_true(n_seen >= 20);
    free(text);
}

static void
test_contract_series(void **state)
{
    struct metrics_snapshot snap;
    char *text;
    memset(&snap, 0, sizeof(snap));
    snap.version = "0.1.0";
    snap.received = 7;
    snap.msgs[METRICS_DELIVERED] = 5;
    snap.msgs[METRICS_DEFERRED] = 3;
    snap.msgs[METRICS_BOUNCED] = 2;
    snap.rcpts[METRICS_DELIVERED] = 9;
    snap.queue_messages = 4;
    snap.queue_rcpts = 6;
    snap.oldest_age_s = 120;
    snap.rejects[METRICS_REJ_RELAY_DENIED] = 1;
    snap.deliveries[METRICS_DELIVERED][METRICS_TLS_YES] = 8;
    text = render(&snap);
    assert_true(has_line(text, "# TYPE tern_messages_received_total counter"));
    assert_true(has_line(text, "tern_messages_received_total 7"));
    assert_true(has_line(text, "tern_messages_delivered_total 5"));
    assert_true(has_line(text, "tern_messages_deferred_total 3"));
    assert_true(has_line(text, "tern_messages_bounced_total 2"));
    assert_true(has_line(text, "tern_recipients_delivered_total 9"));
    assert_true(has_line(text, "# TYPE tern_queue_messages gauge"));
    assert_true(has_line(text, "tern_queue_messages 4"));
    assert_true(has_line(text, "tern_queue_recipients 6"));
    assert_true(has_line(text, "tern_queue_oldest_message_age_seconds 120"));
    assert_true(has_line(text, "tern_build_info{version=\"0.1.0\"} 1"));
    assert_true(has_line(text, "tern_smtp_rejects_total{reason=\"relay_denied\"} 1"));
    assert_true(has_line(text, "tern_smtp_rejects_total{reason=\"size\"} 0"));
    assert_true(has_line(text, "tern_deliveries_total{result=\"delivered\",tls=\"tls\"} 8"));
    free(text);
}

struct esc_case {
    const char *in, *want;
};

static const struct esc_case esc_cases[] = {
    { "example.org", "example.org" },
    { "a\"b", "a\\\"b" },
    { "a\\b", "a\\\\b" },
    { "a\nb", "a\\nb" },
    { "\\\"\n", "\\\\\\\"\\n" },
    { "", "" },
};

static void
test_label_escape(void **state)
{
    for (size_t i = 0; i < sizeof(esc_cases) / sizeof(esc_cases[0]); i++) {
        struct buf b = BUF_INIT;
        metrics_label_escape(&b, esc_cases[i].in);
        buf_append_char(&b, '\0');
        assert_string_equal(b.data, esc_cases[i].want);
        buf_fini(&b);
    }
}

static void
test_dest_label_escaped_in_text(void **state)
{
    struct metrics_dest d;
    struct metrics_snapshot snap;
    char *text;
    memset(&d, 0, sizeof(d));
    memset(&snap, 0, sizeof(snap));
    snprintf(d.name, sizeof(d.name), "evil\"}\n x{");
    d.n[METRICS_DELIVERED] = 3;
    snap.dests = &d;
    snap.n_dests = 1;
    text = render(&snap);
    assert_true(has_line(text,
        "tern_destination_recipients_total{destination=\"evil\\\"}\\n x{\",result=\"delivered\"} 3"));
    assert_null(strstr(text, "evil\"}\n"));
    free(text);
}

static void
test_dest_fold(void **state)
{
    struct metrics_dest in[METRICS_TOP_DESTS + 5], top[METRICS_TOP_DESTS], other;
    size_t kept;
    memset(in, 0, sizeof(in));
    memset(&other, 0, sizeof(other));
    other.n[METRICS_BOUNCED] = 100; /* beyond the tracked table already */
    for (size_t i = 0; i < METRICS_TOP_DESTS + 5; i++) {
        snprintf(in[i].name, sizeof(in[i].name), "d%02zu.example", i);
        in[i].n[METRICS_DELIVERED] = i + 1; /* d14 is the busiest */
        in[i].n[METRICS_DEFERRED] = 1;
    }
    kept = metrics_dest_fold(in, METRICS_TOP_DESTS + 5, top, METRICS_TOP_DESTS, &other);
    assert_int_equal(kept, METRICS_TOP_DESTS);
    assert_string_equal(top[0].name, "d14.example");
    assert_string_equal(top[METRICS_TOP_DESTS - 1].name, "d05.example");
    /* the five smallest (1..5 delivered, one deferred each) fold */
    assert_int_equal(other.n[METRICS_DELIVERED], 15);
    assert_int_equal(other.n[METRICS_DEFERRED], 5);
    assert_int_equal(other.n[METRICS_BOUNCED], 100);
}

static void
test_dest_fold_ties_and_other_name(void **state)
{
    struct metrics_dest in[3], top[2], other;
    memset(in, 0, sizeof(in));
    memset(&other, 0, sizeof(other));
    snprintf(in[0].name, sizeof(in[0].name), "b.example");
    snprintf(in[1].name, sizeof(in[1].name), "a.example");
    snprintf(in[2].name, sizeof(in[2].name), METRICS_OTHER_DEST);
    in[0].n[METRICS_DELIVERED] = in[1].n[METRICS_DELIVERED] = 2;
    in[2].n[METRICS_DELIVERED] = 50; /* a result without a destination */
    assert_int_equal(metrics_dest_fold(in, 3, top, 2, &other), 2);
    assert_string_equal(top[0].name, "a.example");
    assert_string_equal(top[1].name, "b.example");
    assert_int_equal(other.n[METRICS_DELIVERED], 50);
}

static void
test_counting_fold_bounded(void **state)
{
    struct metrics_snapshot snap;
    char name[64];
    metrics_reset();
    for (size_t i = 0; i < METRICS_TRACK_DESTS + 3; i++) {
        snprintf(name, sizeof(name), "d%zu.example", i);
        metrics_count_rcpt(name, METRICS_DELIVERED, METRICS_TLS_NONE, 0);
    }
    memset(&snap, 0, sizeof(snap));
    metrics_snapshot_take(&snap);
    assert_int_equal(snap.n_dests, METRICS_TRACK_DESTS);
    assert_int_equal(snap.other.n[METRICS_DELIVERED], 3);
    assert_int_equal(snap.rcpts[METRICS_DELIVERED], METRICS_TRACK_DESTS + 3);
    /* the text names at most METRICS_TOP_DESTS + 1 destinations */
    char *text = render(&snap);
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, "result=\"delivered\"}")) != NULL; p++)
        n++;
    assert_int_equal(n, METRICS_TOP_DESTS + 1);
    assert_true(has_line(text,
        "tern_destination_recipients_total{destination=\"other\",result=\"delivered\"} "
        "249"));
    free(text);
    metrics_reset();
}

struct lat_case {
    int64_t ms;
    const char *want; /* the first bucket line that counts it */
};

static const struct lat_case lat_cases[] = {
    { 0, "tern_delivery_latency_seconds_bucket{le=\"1\"} 1" },
    { 1000, "tern_delivery_latency_seconds_bucket{le=\"1\"} 1" },
    { 1001, "tern_delivery_latency_seconds_bucket{le=\"5\"} 1" },
    { 3600 * 1000, "tern_delivery_latency_seconds_bucket{le=\"3600\"} 1" },
    { 10LL * 86400 * 1000, "tern_delivery_latency_seconds_bucket{le=\"+Inf\"} 1" },
    { -5, "tern_delivery_latency_seconds_bucket{le=\"1\"} 1" },
};

static void
test_latency_buckets(void **state)
{
    for (size_t i = 0; i < sizeof(lat_cases) / sizeof(lat_cases[0]); i++) {
        struct metrics_snapshot snap;
        char *text;
        metrics_reset();
        metrics_count_rcpt("x.example", METRICS_DELIVERED, METRICS_TLS_YES, lat_cases[i].ms);
        memset(&snap, 0, sizeof(snap));
        metrics_snapshot_take(&snap);
        text = render(&snap);
        assert_true(has_line(text, lat_cases[i].want));
        assert_true(has_line(text, "tern_delivery_latency_seconds_count 1"));
        free(text);
    }
    /* cumulative, and the sum in seconds */
    struct metrics_snapshot snap;
    char *text;
    metrics_reset();
    metrics_count_rcpt("x.example", METRICS_DELIVERED, METRICS_TLS_YES, 500);
    metrics_count_rcpt("x.example", METRICS_DELIVERED, METRICS_TLS_YES, 7250);
    metrics_count_rcpt("x.example", METRICS_DEFERRED, METRICS_TLS_YES, 99999);
    memset(&snap, 0, sizeof(snap));
    metrics_snapshot_take(&snap);
    text = render(&snap);
    assert_true(has_line(text, "tern_delivery_latency_seconds_bucket{le=\"1\"} 1"));
    assert_true(has_line(text, "tern_delivery_latency_seconds_bucket{le=\"5\"} 1"));
    assert_true(has_line(text, "tern_delivery_latency_seconds_bucket{le=\"10\"} 2"));
    assert_true(has_line(text, "tern_delivery_latency_seconds_bucket{le=\"432000\"} 2"));
    assert_true(has_line(text, "tern_delivery_latency_seconds_bucket{le=\"+Inf\"} 2"));
    assert_true(has_line(text, "tern_delivery_latency_seconds_sum 7.750"));
    assert_true(has_line(text, "tern_delivery_latency_seconds_count 2"));
    assert_true(has_line(text, "tern_recipients_deferred_total 1"));
    free(text);
    metrics_reset();
}

struct reject_case {
    int code;
    const char *esc;
    enum metrics_reject want;
};

static const struct reject_case reject_cases[] = {
    { 535, "5.7.8", METRICS_REJ_AUTH_FAILED },
    { 530, "5.7.0", METRICS_REJ_AUTH_REQUIRED },
    { 552, "5.3.4", METRICS_REJ_SIZE },
    { 552, "5.2.3", METRICS_REJ_SIZE },
    { 550, "5.1.1", METRICS_REJ_RECIPIENT },
    { 503, "5.5.1", METRICS_REJ_PROTOCOL },
    { 500, "", METRICS_REJ_PROTOCOL },
    { 553, "5.6.7", METRICS_REJ_PROTOCOL },
    { 550, "5.7.1", METRICS_REJ_POLICY },
    { 452, "4.5.3", METRICS_REJ_PROTOCOL },
    { 452, "4.3.1", METRICS_REJ_RESOURCES },
    { 421, "4.4.2", METRICS_REJ_RESOURCES },
    { 451, "4.3.12", METRICS_REJ_RESOURCES },
    { 450, NULL, METRICS_REJ_OTHER },
    { 450, "x.y", METRICS_REJ_OTHER },
    { 554, "5.", METRICS_REJ_OTHER },
};

static void
test_reject_classify(void **state)
{
    for (size_t i = 0; i < sizeof(reject_cases) / sizeof(reject_cases[0]); i++) {
        const struct reject_case *c = &reject_cases[i];
        if (metrics_reject_classify(c->code, c->esc) != c->want)
            fail_msg("%d %s: got %d want %d", c->code, c->esc ? c->esc : "(null)",
                (int)metrics_reject_classify(c->code, c->esc), (int)c->want);
    }
}

static void
test_status_json(void **state)
{
    struct buf b = BUF_INIT;
    metrics_reset();
    metrics_count_reject(METRICS_REJ_SIZE);
    metrics_count_reject(METRICS_REJ_N); /* out of range: other */
    metrics_count_auth_failure();
    metrics_count_conn_in();
    metrics_conn_out_open(1);
    buf_append_char(&b, '{');
    metrics_status_json(&b);
    buf_append_str(&b, "\"x\":1}");
    assert_string_equal(b.data,
        "{\"rejects\":{\"relay_denied\":0,\"recipient\":0,\"size\":1,\"auth_failed\":0,"
        "\"auth_required\":0,\"rate\":0,\"protocol\":0,\"policy\":0,\"milter\":0,\"dmarc\":0,\"resources\":0,"
        "\"other\":1},\"auth_failures\":1,\"connections_in\":1,\"connections_out\":0,"
        "\"delivery_connections\":1,\"x\":1}");
    buf_fini(&b);
    metrics_reset();
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_families_announced),
        cmocka_unit_test(test_contract_series),
        cmocka_unit_test(test_label_escape),
        cmocka_unit_test(test_dest_label_escaped_in_text),
        cmocka_unit_test(test_dest_fold),
        cmocka_unit_test(test_dest_fold_ties_and_other_name),
        cmocka_unit_test(test_counting_fold_bounded),
        cmocka_unit_test(test_latency_buckets),
        cmocka_unit_test(test_reject_classify),
        cmocka_unit_test(test_status_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

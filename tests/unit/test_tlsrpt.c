/*
 * Unit tests of TLS-RPT's pure parts (RFC 8460): the _smtp._tls TXT
 * record, day-file lines and their aggregation (escaping, damaged lines,
 * the per-domain bound of failure details), the JSON report read back with
 * util/json, its gzip inflated back, and the report message's headers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include "tlsrpt/tlsrpt.h"
#include "util/json.h"
#include "util/util.h"

static void
test_txt(void **state)
{
    static const struct {
        const char *recs[2];
        int rc;
        size_t n;
        const char *first;
    } cases[] = {
        { { "v=TLSRPTv1; rua=mailto:tls@example.com" }, 0, 1, "mailto:tls@example.com" },
        { { "v=TLSRPTv1;rua=mailto:a@x.example,https://r.example/tls" }, 0, 2,
            "mailto:a@x.example" },
        { { "v=TLSRPTv1; rua=ftp://x, https://r.example/" }, 0, 1, "https://r.example/" },
        { { "v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@b.example" }, 0, 1, "mailto:a@b.example" },
        { { "v=spf1 -all" }, 1, 0, NULL },
        { { "v=TLSRPTv1" }, -1, 0, NULL },
        { { "v=TLSRPTv1; rua=ftp://x" }, -1, 0, NULL },
        { { "v=TLSRPTv1; rua=mailto:a@b", "v=TLSRPTv1; rua=mailto:c@d" }, -1, 0, NULL },
        { { "v=TLSRPTv1; rua" }, -1, 0, NULL },
    };
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        const char *recs[2];
        size_t lens[2], n = 0, n_rua = 99;
        char rua[TLSRPT_RUA_MAX][TLSRPT_RUA_LEN], err[200] = "";
        for (; n < 2 && cases[i].recs[n] != NULL; n++) {
            recs[n] = cases[i].recs[n];
            lens[n] = strlen(recs[n]);
        }
        int rc = tlsrpt_txt_parse(recs, lens, n, rua, &n_rua, err, sizeof(err));
        if (rc != cases[i].rc)
            fail_msg("case %zu: rc %d, want %d (%s)", i, rc, cases[i].rc, err);
        if (rc == 0) {
            assert_int_equal(n_rua, cases[i].n);
            assert_string_equal(rua[0], cases[i].first);
        }
    }
}

static const char POLICY[] = "version: STSv1\r\nmode: testing\r\nmx: *.example.com\r\nmx: "
                             "mx.example.net\r\nmax_age: 86400\r\n";

static void
record(struct buf *b, const char *dom, enum tlsrpt_result r, const char *mx, bool pol)
{
    struct tlsrpt_event ev = { dom, TLSRPT_P_STS, POLICY, strlen(POLICY), r, "192.0.2.1", mx,
        "198.51.100.7" };
    tlsrpt_line_format(&ev, pol, b);
}

static void
test_day(void **state)
{
    struct buf b = BUF_INIT;
    struct tlsrpt_day day = { 0 };
    (void)state;
    record(&b, "example.com", TLSRPT_SUCCESS, "mx1.example.com", true);
    record(&b, "example.com", TLSRPT_SUCCESS, "mx1.example.com", false);
    record(&b, "example.com", TLSRPT_CERT_HOST_MISMATCH, "mx2.example.com", false);
    record(&b, "example.com", TLSRPT_CERT_HOST_MISMATCH, "mx2.example.com", false);
    record(&b, "example.com", TLSRPT_STARTTLS_NOT_SUPPORTED, "tab\there", false);
    record(&b, "other.example", TLSRPT_SUCCESS, "-", true);
    buf_append_str(&b, "E\tbroken line\n");
    buf_append_str(&b, "E\texample.com\tsts\tsuccess\t-\t-\t-"); /* cut short: no newline */
    tlsrpt_day_parse(b.data, b.len, &day);
    assert_int_equal(day.n, 2);
    assert_int_equal(day.bad_lines, 2);
    assert_string_equal(day.d[0].domain, "example.com");
    assert_int_equal(day.d[0].success, 2);
    assert_int_equal(day.d[0].failure, 3);
    assert_int_equal(day.d[0].n_details, 2);
    assert_int_equal(day.d[0].details[0].result, TLSRPT_CERT_HOST_MISMATCH);
    assert_int_equal(day.d[0].details[0].count, 2);
    assert_string_equal(day.d[0].details[1].receiving_mx, "tab\there");
    assert_int_equal(day.d[0].policy_len, strlen(POLICY));
    assert_memory_equal(day.d[0].policy, POLICY, strlen(POLICY));
    assert_string_equal(day.d[1].details == NULL ? "-" : "x", "-");
    tlsrpt_day_fini(&day);
    buf_fini(&b);
}

static void
test_details_bounded(void **state)
{
    struct buf b = BUF_INIT;
    struct tlsrpt_day day = { 0 };
    (void)state;
    for (int i = 0; i < TLSRPT_DETAILS_MAX + 20; i++) {
        char mx[32];
        snprintf(mx, sizeof(mx), "mx%d.example.com", i);
        record(&b, "example.com", TLSRPT_VALIDATION_FAILURE, mx, i == 0);
    }
    tlsrpt_day_parse(b.data, b.len, &day);
    assert_int_equal(day.d[0].failure, TLSRPT_DETAILS_MAX + 20);
    assert_int_equal(day.d[0].n_details, TLSRPT_DETAILS_MAX);
    tlsrpt_day_fini(&day);
    buf_fini(&b);
}

static void
test_report_json(void **state)
{
    struct buf b = BUF_INIT, js = BUF_INIT, gz = BUF_INIT;
    struct tlsrpt_day day = { 0 };
    struct tlsrpt_meta m = { "relay.example", "postmaster@relay.example", "rid-1", 1764633600,
        1764719999 };
    struct json *j = NULL;
    const struct json *pol, *p, *det;
    int64_t v;
    (void)state;
    record(&b, "example.com", TLSRPT_SUCCESS, "mx1.example.com", true);
    record(&b, "example.com", TLSRPT_CERT_EXPIRED, "mx2.example.com", false);
    tlsrpt_day_parse(b.data, b.len, &day);
    tlsrpt_report_json(&m, &day.d[0], &js);
    assert_int_equal(json_parse(js.data, js.len, &j, NULL), 0);
    assert_string_equal(json_str(json_get(j, "organization-name")), "relay.example");
    assert_string_equal(json_str(json_get(j, "report-id")), "rid-1");
    assert_string_equal(json_str(json_get(j, "contact-info")), "postmaster@relay.example");
    assert_string_equal(
        json_str(json_get(json_get(j, "date-range"), "start-datetime")), "2025-12-02T00:00:00Z");
    assert_string_equal(
        json_str(json_get(json_get(j, "date-range"), "end-datetime")), "2025-12-02T23:59:59Z");
    pol = json_get(j, "policies");
    assert_non_null(pol);
    assert_int_equal(pol->n_kids, 1);
    p = json_get(&pol->kids[0], "policy");
    assert_string_equal(json_str(json_get(p, "policy-type")), "sts");
    assert_string_equal(json_str(json_get(p, "policy-domain")), "example.com");
    assert_int_equal(json_get(p, "policy-string")->n_kids, 5);
    assert_string_equal(json_str(&json_get(p, "policy-string")->kids[0]), "version: STSv1");
    assert_int_equal(json_get(p, "mx-host")->n_kids, 2);
    assert_string_equal(json_str(&json_get(p, "mx-host")->kids[0]), "*.example.com");
    assert_int_equal(
        json_int(
            json_get(json_get(&pol->kids[0], "summary"), "total-successful-session-count"), &v),
        0);
    assert_int_equal(v, 1);
    json_int(json_get(json_get(&pol->kids[0], "summary"), "total-failure-session-count"), &v);
    assert_int_equal(v, 1);
    det = json_get(&pol->kids[0], "failure-details");
    assert_int_equal(det->n_kids, 1);
    assert_string_equal(json_str(json_get(&det->kids[0], "result-type")), "certificate-expired");
    assert_string_equal(
        json_str(json_get(&det->kids[0], "receiving-mx-hostname")), "mx2.example.com");
    assert_string_equal(json_str(json_get(&det->kids[0], "sending-mta-ip")), "192.0.2.1");
    json_free(j);
    /* The gzip inflates back to the JSON. */
    assert_int_equal(tlsrpt_gzip(js.data, js.len, &gz), 0);
    assert_true(
        gz.len > 18 && (unsigned char)gz.data[0] == 0x1f && (unsigned char)gz.data[1] == 0x8b);
    {
        char out[8192];
        z_stream z;
        memset(&z, 0, sizeof(z));
        assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
        z.next_in = (Bytef *)gz.data;
        z.avail_in = (uInt)gz.len;
        z.next_out = (Bytef *)out;
        z.avail_out = sizeof(out);
        assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
        assert_int_equal(z.total_out, js.len);
        assert_memory_equal(out, js.data, js.len);
        inflateEnd(&z);
    }
    /* The message: RFC 8460 §5.3 headers and the attachment's type. */
    {
        struct buf msg = BUF_INIT;
        tlsrpt_mail_format(&m, "example.com", "postmaster@relay.example", "tls@example.com",
            gz.data, gz.len, 1764720000000, &msg);
        buf_append_char(&msg, '\0');
        assert_non_null(strstr(msg.data, "\r\nSubject: Report Domain: example.com Submitter: "
                                         "relay.example Report-ID: <rid-1>\r\n"));
        assert_non_null(strstr(msg.data, "\r\nTLS-Report-Domain: example.com\r\n"));
        assert_non_null(strstr(msg.data, "\r\nTLS-Report-Submitter: relay.example\r\n"));
        assert_non_null(strstr(msg.data, "multipart/report; report-type=\"tlsrpt\""));
        assert_non_null(strstr(msg.data, "Content-Type: application/tlsrpt+gzip\r\n"));
        buf_fini(&msg);
    }
    tlsrpt_day_fini(&day);
    buf_fini(&b);
    buf_fini(&js);
    buf_fini(&gz);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt),
        cmocka_unit_test(test_day),
        cmocka_unit_test(test_details_bounded),
        cmocka_unit_test(test_report_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * TLS-RPT's pure parts (RFC 8460): result and policy type names, the
 * _smtp._tls TXT record, the day file's lines (escaped, one event each),
 * the aggregation of a day, the JSON report, its gzip, and the report
 * message for a mailto: address.
 */
#include "tlsrpt/tlsrpt.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <zlib.h>

#include "util/parse.h"
#include "util/util.h"

#define SET_ERR(...) snprintf(err, errcap, __VA_ARGS__)

static const char *const result_names[TLSRPT_RESULT_N] = {
    [TLSRPT_SUCCESS] = "success",
    [TLSRPT_STARTTLS_NOT_SUPPORTED] = "starttls-not-supported",
    [TLSRPT_CERT_HOST_MISMATCH] = "certificate-host-mismatch",
    [TLSRPT_CERT_EXPIRED] = "certificate-expired",
    [TLSRPT_CERT_NOT_TRUSTED] = "certificate-not-trusted",
    [TLSRPT_VALIDATION_FAILURE] = "validation-failure",
    [TLSRPT_STS_POLICY_FETCH_ERROR] = "sts-policy-fetch-error",
    [TLSRPT_STS_POLICY_INVALID] = "sts-policy-invalid",
    [TLSRPT_STS_WEBPKI_INVALID] = "sts-webpki-invalid",
    [TLSRPT_TLSA_INVALID] = "tlsa-invalid",
    [TLSRPT_DNSSEC_INVALID] = "dnssec-invalid",
    [TLSRPT_DANE_REQUIRED] = "dane-required",
};

static const char *const ptype_names[TLSRPT_P_N] = { "sts", "tlsa", "no-policy-found" };

const char *
tlsrpt_result_name(enum tlsrpt_result r)
{
    return (unsigned)r < TLSRPT_RESULT_N ? result_names[r] : "validation-failure";
}

const char *
tlsrpt_ptype_name(enum tlsrpt_ptype p)
{
    return (unsigned)p < TLSRPT_P_N ? ptype_names[p] : "no-policy-found";
}

/* ---- the TXT record ---- */

static bool
is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* Add the URIs of a rua value (comma separated, RFC 8460 §3). */
static int
rua_split(
    const char *v, size_t n, char rua[][TLSRPT_RUA_LEN], size_t *n_rua, char *err, size_t errcap)
{
    size_t i = 0;
    while (i <= n) {
        size_t s = i, e;
        while (i < n && v[i] != ',')
            i++;
        e = i++;
        while (s < e && is_wsp(v[s]))
            s++;
        while (e > s && is_wsp(v[e - 1]))
            e--;
        if (e == s)
            continue;
        if (e - s >= TLSRPT_RUA_LEN)
            continue; /* too long to be used; the others may do */
        if (!((e - s > 7 && strncasecmp(v + s, "mailto:", 7) == 0) ||
                (e - s > 8 && strncasecmp(v + s, "https://", 8) == 0)))
            continue; /* §3: other schemes are for the future */
        if (*n_rua < TLSRPT_RUA_MAX) {
            memcpy(rua[*n_rua], v + s, e - s);
            rua[*n_rua][e - s] = '\0';
            (*n_rua)++;
        }
    }
    if (*n_rua == 0) {
        SET_ERR("rua has no mailto: or https: URI");
        return -1;
    }
    return 0;
}

static int
txt_fields(
    const char *r, size_t len, char rua[][TLSRPT_RUA_LEN], size_t *n_rua, char *err, size_t errcap)
{
    size_t i = 10;
    bool have = false;
    struct str_tag t;
    while (str_next_tag(r, len, &i, &t)) {
        if (!t.has_eq) {
            SET_ERR("a field without '='");
            return -1;
        }
        if (t.name_len == 3 && memcmp(t.name, "rua", 3) == 0 && !have) {
            have = true;
            if (rua_split(t.val, t.val_len, rua, n_rua, err, errcap) < 0)
                return -1;
        }
    }
    if (!have) {
        SET_ERR("no rua field");
        return -1;
    }
    return 0;
}

int
tlsrpt_txt_parse(const char *const *recs, const size_t *lens, size_t n, char rua[][TLSRPT_RUA_LEN],
    size_t *n_rua, char *err, size_t errcap)
{
    size_t found = 0, which = 0;
    *n_rua = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] >= 10 && memcmp(recs[i], "v=TLSRPTv1", 10) == 0 &&
            (lens[i] == 10 || recs[i][10] == ';' || is_wsp(recs[i][10]))) {
            found++;
            which = i;
        }
    }
    if (found == 0)
        return 1;
    if (found > 1) {
        SET_ERR("%zu v=TLSRPTv1 records (exactly one is allowed)", found);
        return -1;
    }
    return txt_fields(recs[which], lens[which], rua, n_rua, err, errcap);
}

/* ---- day file lines ---- */

/* Tabs separate fields and a newline ends the line: those, other control
 * bytes and the backslash are written as \xHH. */
static void
esc(struct buf *out, const char *s, size_t n)
{
    if (s == NULL || n == 0) {
        buf_append_char(out, '-');
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '\\' || (i == 0 && n == 1 && c == '-'))
            buf_printf(out, "\\x%02x", c);
        else
            buf_append_char(out, (char)c);
    }
}

static void
esc_str(struct buf *out, const char *s)
{
    esc(out, s, s ? strlen(s) : 0);
}

void
tlsrpt_line_format(const struct tlsrpt_event *ev, bool with_policy, struct buf *out)
{
    if (with_policy) {
        size_t n = ev->policy_len < TLSRPT_POLICY_MAX ? ev->policy_len : TLSRPT_POLICY_MAX;
        buf_append_str(out, "P\t");
        esc_str(out, ev->domain);
        buf_printf(out, "\t%s\t", tlsrpt_ptype_name(ev->ptype));
        esc(out, ev->policy, ev->policy ? n : 0);
        buf_append_char(out, '\n');
    }
    buf_append_str(out, "E\t");
    esc_str(out, ev->domain);
    buf_printf(out, "\t%s\t%s\t", tlsrpt_ptype_name(ev->ptype), tlsrpt_result_name(ev->result));
    esc_str(out, ev->sending_ip);
    buf_append_char(out, '\t');
    esc_str(out, ev->receiving_mx);
    buf_append_char(out, '\t');
    esc_str(out, ev->receiving_ip);
    buf_append_char(out, '\n');
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Undo esc() into out (NUL terminated, at most cap - 1 bytes); returns
 * the length or -1 when malformed or too long. */
static long
unesc(const char *s, size_t n, char *out, size_t cap)
{
    size_t j = 0;
    if (n == 1 && s[0] == '-') {
        out[0] = '\0';
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\') {
            int h, l;
            if (i + 3 >= n)
                return -1;
            if (s[i + 1] != 'x' || (h = hexval(s[i + 2])) < 0 || (l = hexval(s[i + 3])) < 0)
                return -1;
            c = (char)(h * 16 + l);
            i += 3;
        }
        if (j + 1 >= cap)
            return -1;
        out[j++] = c;
    }
    out[j] = '\0';
    return (long)j;
}

static enum tlsrpt_ptype
ptype_of(const char *s, size_t n)
{
    for (int i = 0; i < TLSRPT_P_N; i++) {
        if (strlen(ptype_names[i]) == n && memcmp(ptype_names[i], s, n) == 0)
            return (enum tlsrpt_ptype)i;
    }
    return TLSRPT_P_N;
}

static enum tlsrpt_result
result_of(const char *s, size_t n)
{
    for (int i = 0; i < TLSRPT_RESULT_N; i++) {
        if (strlen(result_names[i]) == n && memcmp(result_names[i], s, n) == 0)
            return (enum tlsrpt_result)i;
    }
    return TLSRPT_RESULT_N;
}

static struct tlsrpt_domain *
day_domain(struct tlsrpt_day *day, const char *name)
{
    for (size_t i = 0; i < day->n; i++) {
        if (strcmp(day->d[i].domain, name) == 0)
            return &day->d[i];
    }
    if (day->n >= TLSRPT_DOMAINS_MAX)
        return NULL;
    day->d = xrealloc(day->d, (day->n + 1) * sizeof(*day->d));
    memset(&day->d[day->n], 0, sizeof(day->d[0]));
    snprintf(day->d[day->n].domain, sizeof(day->d[0].domain), "%s", name);
    day->d[day->n].ptype = TLSRPT_P_NONE;
    return &day->d[day->n++];
}

static void
day_event(struct tlsrpt_domain *d, enum tlsrpt_ptype pt, enum tlsrpt_result r,
    const struct tlsrpt_detail *k)
{
    if (d->policy == NULL)
        d->ptype = pt;
    if (r == TLSRPT_SUCCESS) {
        d->success++;
        return;
    }
    d->failure++;
    for (size_t i = 0; i < d->n_details; i++) {
        struct tlsrpt_detail *x = &d->details[i];
        if (x->result == r && strcmp(x->sending_ip, k->sending_ip) == 0 &&
            strcmp(x->receiving_mx, k->receiving_mx) == 0 &&
            strcmp(x->receiving_ip, k->receiving_ip) == 0) {
            x->count++;
            return;
        }
    }
    if (d->n_details >= TLSRPT_DETAILS_MAX)
        return; /* counted in the summary all the same */
    d->details = xrealloc(d->details, (d->n_details + 1) * sizeof(*d->details));
    d->details[d->n_details] = *k;
    d->details[d->n_details].result = r;
    d->details[d->n_details].count = 1;
    d->n_details++;
}

/* One line: its fields split at tabs (at most 8). */
static size_t
split_tabs(const char *l, size_t n, const char **f, size_t *fl, size_t max)
{
    size_t k = 0, s = 0;
    for (size_t i = 0; i <= n && k < max; i++) {
        if (i == n || l[i] == '\t') {
            f[k] = l + s;
            fl[k++] = i - s;
            s = i + 1;
        }
    }
    return k;
}

static int
day_line(const char *l, size_t n, struct tlsrpt_day *day)
{
    const char *f[8];
    size_t fl[8], k = split_tabs(l, n, f, fl, 8);
    char dom[256];
    struct tlsrpt_domain *d;
    enum tlsrpt_ptype pt;
    if (k < 4 || fl[0] != 1 || unesc(f[1], fl[1], dom, sizeof(dom)) <= 0 ||
        (pt = ptype_of(f[2], fl[2])) == TLSRPT_P_N)
        return -1;
    if (f[0][0] == 'P' && k == 4) {
        char *pol = xmalloc(fl[3] + 1);
        long pn = unesc(f[3], fl[3], pol, fl[3] + 1);
        if (pn < 0 || (d = day_domain(day, dom)) == NULL) {
            free(pol);
            return pn < 0 ? -1 : 0;
        }
        free(d->policy);
        d->policy = pol;
        d->policy_len = (size_t)pn;
        d->ptype = pt;
        return 0;
    }
    if (f[0][0] == 'E' && k == 7) {
        struct tlsrpt_detail det = { 0 };
        enum tlsrpt_result r = result_of(f[3], fl[3]);
        if (r == TLSRPT_RESULT_N ||
            unesc(f[4], fl[4], det.sending_ip, sizeof(det.sending_ip)) < 0 ||
            unesc(f[5], fl[5], det.receiving_mx, sizeof(det.receiving_mx)) < 0 ||
            unesc(f[6], fl[6], det.receiving_ip, sizeof(det.receiving_ip)) < 0)
            return -1;
        d = day_domain(day, dom);
        if (d != NULL)
            day_event(d, pt, r, &det);
        return 0;
    }
    return -1;
}

void
tlsrpt_day_parse(const char *text, size_t len, struct tlsrpt_day *day)
{
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(text + i, '\n', len - i);
        if (nl == NULL) {
            day->bad_lines++; /* a line cut short by a crash */
            break;
        }
        if (day_line(text + i, (size_t)(nl - text) - i, day) < 0)
            day->bad_lines++;
        i = (size_t)(nl - text) + 1;
    }
}

void
tlsrpt_day_fini(struct tlsrpt_day *day)
{
    for (size_t i = 0; i < day->n; i++) {
        free(day->d[i].policy);
        free(day->d[i].details);
    }
    FREE_NULL(&day->d);
    day->n = 0;
}

/* ---- the report (RFC 8460 §4.4) ---- */

static void
iso_time(int64_t s, char *out, size_t cap)
{
    tern_fmt_utc(s, "%Y-%m-%dT%H:%M:%SZ", out, cap);
}

/* policy-string: the policy's lines, without line ends (§4.4); mx-host:
 * the mx lines' values, for an MTA-STS policy. */
static void
policy_block(const struct tlsrpt_domain *d, struct buf *out)
{
    const char *p = d->policy;
    size_t n = d->policy ? d->policy_len : 0, i = 0;
    bool first = true, first_mx = true;
    struct buf mx = BUF_INIT;
    buf_printf(out, "{\"policy-type\":\"%s\",\"policy-string\":[", tlsrpt_ptype_name(d->ptype));
    while (i < n) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t e = nl ? (size_t)(nl - p) : n, l = e - i;
        if (l > 0 && p[i + l - 1] == '\r')
            l--;
        if (l > 0) {
            buf_append_str(out, first ? "\"" : ",\"");
            buf_append_json(out, p + i, l);
            buf_append_char(out, '"');
            first = false;
            if (d->ptype == TLSRPT_P_STS && l > 3 && memcmp(p + i, "mx:", 3) == 0) {
                size_t s = i + 3;
                while (s < i + l && is_wsp(p[s]))
                    s++;
                buf_append_str(&mx, first_mx ? "\"" : ",\"");
                buf_append_json(&mx, p + s, i + l - s);
                buf_append_char(&mx, '"');
                first_mx = false;
            }
        }
        i = e + 1;
    }
    buf_append_str(out, "],\"policy-domain\":");
    buf_append_json_str(out, d->domain);
    if (mx.len > 0) {
        buf_append_str(out, ",\"mx-host\":[");
        buf_append(out, mx.data, mx.len);
        buf_append_char(out, ']');
    }
    buf_append_char(out, '}');
    buf_fini(&mx);
}

static void
json_opt(struct buf *out, const char *key, const char *v)
{
    if (v == NULL || v[0] == '\0')
        return;
    buf_printf(out, ",\"%s\":", key);
    buf_append_json_str(out, v);
}

void
tlsrpt_report_json(const struct tlsrpt_meta *m, const struct tlsrpt_domain *d, struct buf *out)
{
    char start[32], end[32];
    iso_time(m->start_s, start, sizeof(start));
    iso_time(m->end_s, end, sizeof(end));
    buf_append_str(out, "{\"organization-name\":");
    buf_append_json_str(out, m->org);
    buf_printf(
        out, ",\"date-range\":{\"start-datetime\":\"%s\",\"end-datetime\":\"%s\"}", start, end);
    buf_append_str(out, ",\"contact-info\":");
    buf_append_json_str(out, m->contact);
    buf_append_str(out, ",\"report-id\":");
    buf_append_json_str(out, m->report_id);
    buf_append_str(out, ",\"policies\":[{\"policy\":");
    policy_block(d, out);
    buf_printf(out,
        ",\"summary\":{\"total-successful-session-count\":%" PRIu64
        ",\"total-failure-session-count\":%" PRIu64 "}",
        d->success, d->failure);
    if (d->n_details > 0) {
        buf_append_str(out, ",\"failure-details\":[");
        for (size_t i = 0; i < d->n_details; i++) {
            const struct tlsrpt_detail *x = &d->details[i];
            buf_printf(
                out, "%s{\"result-type\":\"%s\"", i ? "," : "", tlsrpt_result_name(x->result));
            json_opt(out, "sending-mta-ip", x->sending_ip);
            json_opt(out, "receiving-mx-hostname", x->receiving_mx);
            json_opt(out, "receiving-ip", x->receiving_ip);
            buf_printf(out, ",\"failed-session-count\":%" PRIu64 "}", x->count);
        }
        buf_append_char(out, ']');
    }
    buf_append_str(out, "}]}");
}

int
tlsrpt_gzip(const void *in, size_t len, struct buf *out)
{
    z_stream z;
    int rc;
    memset(&z, 0, sizeof(z));
    /* windowBits 15 + 16: a gzip wrapper (RFC 1952), as §5.1 asks. */
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    buf_reserve(out, deflateBound(&z, (uLong)len) + 1);
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out->data + out->len;
    z.avail_out = (uInt)(out->cap - out->len - 1);
    rc = deflate(&z, Z_FINISH);
    if (rc == Z_STREAM_END)
        out->len += z.total_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? 0 : -1;
}

/* Base64 in lines of 76 characters (RFC 2045 §6.8): 57 bytes each. */
static void
b64_lines(const unsigned char *p, size_t n, struct buf *out)
{
    for (size_t i = 0; i < n; i += 57) {
        b64_encode(p + i, n - i < 57 ? n - i : 57, out);
        buf_append_str(out, "\r\n");
    }
}

void
tlsrpt_mail_format(const struct tlsrpt_meta *m, const char *domain, const char *from,
    const char *to, const void *gz, size_t gz_len, int64_t now_ms, struct buf *out)
{
    char date[64], b[64];
    tern_fmt_utc(now_ms / 1000, TERN_RFC5322_DATE, date, sizeof(date));
    snprintf(b, sizeof(b), "tlsrpt-%" PRIx64, (uint64_t)now_ms ^ (uint64_t)gz_len << 40);
    buf_printf(out, "From: <%s>\r\nTo: <%s>\r\nDate: %s\r\n", from, to, date);
    /* RFC 8460 §5.3: the subject and the two header fields. */
    buf_printf(out, "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n", domain, m->org,
        m->report_id);
    buf_printf(out, "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\n", domain, m->org);
    buf_printf(
        out, "Message-ID: <%s@%s>\r\nAuto-Submitted: auto-generated\r\n", m->report_id, m->org);
    buf_printf(out,
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=\"tlsrpt\";\r\n"
        " boundary=\"%s\"\r\n\r\n",
        b);
    buf_printf(out,
        "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is an aggregate TLS report (RFC 8460) from %s for %s.\r\n\r\n",
        b, m->org, domain);
    /* §5.1: sender!policy-domain!begin!end.json.gz */
    buf_printf(out,
        "--%s\r\nContent-Type: application/tlsrpt+gzip\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment;\r\n filename=\"%s!%s!%" PRId64 "!%" PRId64
        ".json.gz\"\r\n\r\n",
        b, m->org, domain, m->start_s, m->end_s);
    b64_lines(gz, gz_len, out);
    buf_printf(out, "\r\n--%s--\r\n", b);
}

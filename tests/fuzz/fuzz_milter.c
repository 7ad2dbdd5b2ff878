/*
 * libFuzzer target: the milter codec (src/milter/codec.c) on what a hostile
 * filter sends. The input is a stream of reply packets, framed as the
 * connection frames them; each whole packet is decoded and its strings are
 * given to the checks tern applies before using them (reply code, header
 * name and value, address). The input is also tried as a milters list.
 * Invariants: framing never reports a packet beyond the input or over
 * MILTER_PACKET_MAX; decoded strings lie inside the packet and (but for
 * REPLBODY) end with a NUL there, as do OPTNEG's macro lists; a reply code
 * accepted is 4xx/5xx with an enhanced code of its class and printable
 * text; a header value accepted has line breaks only as CRLF before a
 * blank and no other controls but tab; an address accepted has no blanks,
 * controls or brackets.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "milter/milter.h"
#include "util/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_str(const uint8_t *pkt, size_t len, const char *s, size_t n, bool nul)
{
    if (s == NULL) {
        CHECK(n == 0);
        return;
    }
    CHECK((const uint8_t *)s >= pkt + 5 && (const uint8_t *)s + n <= pkt + len);
    if (nul) {
        CHECK((const uint8_t *)s + n < pkt + len && s[n] == '\0');
        CHECK(memchr(s, '\0', n) == NULL);
    }
}

static void
check_value(const char *s, size_t n)
{
    struct buf b = BUF_INIT;
    if (milter_hdr_value(s, n, &b) == 0) {
        for (size_t i = 0; i < b.len; i++) {
            unsigned char c = (unsigned char)b.data[i];
            if (c == '\r') {
                CHECK(i + 2 < b.len && b.data[i + 1] == '\n' &&
                      (b.data[i + 2] == ' ' || b.data[i + 2] == '\t'));
            } else if (c == '\n') {
                CHECK(i > 0 && b.data[i - 1] == '\r');
            } else {
                CHECK(c >= 0x20 || c == '\t');
                CHECK(c != 0x7f);
            }
        }
    } else {
        CHECK(b.len == 0);
    }
    buf_fini(&b);
}

static void
check_addr(const char *s, size_t n)
{
    struct buf b = BUF_INIT;
    if (milter_addr(s, n, &b) == 0) {
        CHECK(b.len <= 512);
        for (size_t i = 0; i < b.len; i++) {
            unsigned char c = (unsigned char)b.data[i];
            CHECK(c > 0x20 && c != 0x7f && c != '<' && c != '>');
        }
    }
    buf_fini(&b);
}

static void
check_replycode(const char *s, size_t n)
{
    struct tern_status st;
    if (milter_replycode(s, n, &st) < 0)
        return;
    CHECK(st.code >= 400 && st.code <= 559);
    CHECK(st.esc[0] == (char)('0' + st.code / 100) && st.esc[1] == '.');
    for (const char *p = st.text; *p; p++)
        CHECK(*p >= 0x20 && *p < 0x7f);
    CHECK(st.text[0] != '\0');
}

static void
check_reply(const uint8_t *pkt, size_t len)
{
    struct milter_reply r;
    if (milter_reply_parse(pkt, len, &r) < 0)
        return;
    CHECK(r.code == (char)pkt[4]);
    bool nul = r.code != MILTER_R_REPLBODY;
    check_str(pkt, len, r.s1, r.s1_len, nul);
    check_str(pkt, len, r.s2, r.s2_len, nul);
    for (size_t k = 0; k < MILTER_M_COUNT; k++) {
        check_str(pkt, len, r.macros[k], r.macros_len[k], true);
        CHECK(r.macros_len[k] <= MILTER_MACRO_LIST_MAX);
    }
    switch (r.code) {
    case MILTER_R_REPLYCODE:
        check_replycode(r.s1, r.s1_len);
        break;
    case MILTER_R_ADDHEADER:
    case MILTER_R_INSHEADER:
    case MILTER_R_CHGHEADER:
        (void)milter_hdr_name_ok(r.s1, r.s1_len);
        check_value(r.s2, r.s2_len);
        break;
    case MILTER_R_ADDRCPT:
    case MILTER_R_ADDRCPT_PAR:
    case MILTER_R_DELRCPT:
    case MILTER_R_CHGFROM:
        check_addr(r.s1, r.s1_len);
        break;
    default:
        break;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    /* Also the raw input as one of each string the checks take. */
    check_value((const char *)data, size);
    check_addr((const char *)data, size);
    check_replycode((const char *)data, size);
    while (off < size) {
        size_t len = 0;
        int f = milter_frame(data + off, size - off, &len);
        if (f <= 0)
            break;
        CHECK(len >= 5 && len <= size - off && len <= MILTER_PACKET_MAX + 4);
        check_reply(data + off, len);
        off += len;
    }
    if (size < 2048) {
        char *text = malloc(size + 1);
        struct milter_spec *v = NULL;
        size_t n = 0;
        char err[256];
        memcpy(text, data, size);
        text[size] = '\0';
        if (milter_specs_parse(text, &v, &n, err, sizeof(err)) == 0) {
            CHECK(n <= MILTER_MAX);
            for (size_t i = 0; i < n; i++)
                CHECK(v[i].sslen > 0 && v[i].sslen <= sizeof(v[i].ss));
        }
        free(v);
        free(text);
    }
    return 0;
}

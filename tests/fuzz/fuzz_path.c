/*
 * libFuzzer target: smtp_parse_path with flags from the first byte, then the
 * relay-domain matcher on the parsed domain. Invariants: accepted addresses
 * are ASCII without SMTPUTF8 and well-formed UTF-8 with it (checked by an
 * independent decoder), and policy_domain_listed agrees with a simple oracle
 * and ignores ASCII case and one trailing dot.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "proto/parse.h"
#include "smtp/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Independent UTF-8 check: decode code points, then range-check them. */
static bool
utf8_ok(const unsigned char *s)
{
    while (*s) {
        uint32_t cp;
        int n, i;
        if (*s < 0x80) {
            s++;
            continue;
        }
        if ((*s & 0xE0) == 0xC0)
            n = 1, cp = *s & 0x1F;
        else if ((*s & 0xF0) == 0xE0)
            n = 2, cp = *s & 0x0F;
        else if ((*s & 0xF8) == 0xF0)
            n = 3, cp = *s & 0x07;
        else
            return false;
        for (i = 1; i <= n; i++) {
            if ((s[i] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i] & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000))
            return false; /* overlong */
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        s += n + 1;
    }
    return true;
}

static char *const relay_list[] = { "example.com", ".sub.example.org" };

/* Oracle: lower-case, strip one dot, compare. */
static bool
oracle_listed(const char *d)
{
    char buf[512];
    size_t n = strlen(d), i;
    if (n >= sizeof(buf))
        return false;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)d[i];
        if (c <= ' ' || c == '@' || c == '[' || c == ']')
            return false; /* never a domain we compare */
        buf[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : (char)c;
    }
    buf[n] = '\0';
    if (n > 0 && buf[n - 1] == '.')
        buf[--n] = '\0';
    if (strcmp(buf, "example.com") == 0)
        return true;
    return n > 16 && strcmp(buf + n - 16, ".sub.example.org") == 0 && buf[0] != '.' &&
           strstr(buf, "..") == NULL;
}

static void
check_policy(const char *domain)
{
    char up[512], dot[512];
    size_t n = strlen(domain), i;
    bool listed = policy_domain_listed(relay_list, 2, domain);
    CHECK(listed == oracle_listed(domain));
    if (n + 2 > sizeof(up))
        return;
    for (i = 0; i <= n; i++)
        up[i] = (domain[i] >= 'a' && domain[i] <= 'z') ? (char)(domain[i] - 32) : domain[i];
    CHECK(policy_domain_listed(relay_list, 2, up) == listed);
    memcpy(dot, domain, n);
    dot[n] = '.';
    dot[n + 1] = '\0';
    if (n > 0 && domain[n - 1] != '.')
        CHECK(policy_domain_listed(relay_list, 2, dot) == listed);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool allow_null, is_rcpt, utf8;
    struct tern_status st;
    char *addr = NULL;
    size_t consumed = 0;

    if (size < 1)
        return 0;
    allow_null = data[0] & 1;
    is_rcpt = data[0] & 2;
    utf8 = data[0] & 4;
    memset(&st, 0, sizeof(st));
    if (smtp_parse_path((const char *)data + 1, size - 1, allow_null, is_rcpt, utf8, &addr,
            &consumed, &st) < 0) {
        CHECK(addr == NULL);
        CHECK(st.code == 501 || st.code == 553);
        CHECK(strcmp(st.esc, st.code == 553 ? "5.6.7" : is_rcpt ? "5.1.3" : "5.1.7") == 0);
        CHECK(st.code != 553 || !utf8);
        /* Also exercise the matcher on arbitrary (NUL-terminated) text. */
        if (size - 1 < 400) {
            char tmp[401];
            memcpy(tmp, data + 1, size - 1);
            tmp[size - 1] = '\0';
            check_policy(tmp);
        }
        return 0;
    }
    CHECK(consumed >= 2 && consumed <= size - 1 && consumed <= SMTP_PATH_MAX);
    CHECK(strlen(addr) + 2 <= consumed);
    CHECK(allow_null || addr[0] != '\0');
    CHECK(utf8_ok((const unsigned char *)addr));
    if (!utf8)
        for (const char *p = addr; *p; p++)
            CHECK((unsigned char)*p < 0x80);
    if (strchr(addr, '@') == NULL)
        CHECK(addr[0] == '\0' || (is_rcpt && strlen(addr) == 10));
    check_policy(addr_domain(addr));
    free(addr);
    return 0;
}

/*
 * Milter packets encoded and decoded, filter addresses parsed: no I/O, so
 * the unit tests and the fuzzer reach all of it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "milter/milter.h"
#include "util/parse.h"
#include "util/util.h"

/* ---- addresses ---- */

static int
spec_err(char *err, size_t cap, const char *why)
{
    snprintf(err, cap, "%s", why);
    return -1;
}

int
milter_spec_parse(const char *s, size_t n, struct milter_spec *out, char *err, size_t cap)
{
    memset(out, 0, sizeof(*out));
    if (n == 0 || n > MILTER_SPEC_MAX)
        return spec_err(err, cap, "bad length");
    memcpy(out->name, s, n);
    if (n > 5 && memcmp(s, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
        if (s[5] != '/' || n - 5 >= sizeof(un->sun_path))
            return spec_err(err, cap, "unix: needs an absolute path (at most 107 bytes)");
        if (memchr(s + 5, '\0', n - 5) != NULL)
            return spec_err(err, cap, "NUL in path");
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, s + 5, n - 5);
        out->sslen = (socklen_t)sizeof(*un);
        return 0;
    }
    if (n > 5 && memcmp(s, "inet:", 5) == 0) {
        const char *h = s + 5, *colon = memrchr(s + 5, ':', n - 5);
        char host[64];
        size_t hl;
        uint64_t port;
        if (colon == NULL)
            return spec_err(err, cap, "inet: needs HOST:PORT");
        hl = (size_t)(colon - h);
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
            h++;
            hl -= 2;
        }
        if (hl == 0 || hl >= sizeof(host))
            return spec_err(err, cap, "bad host");
        memcpy(host, h, hl);
        host[hl] = '\0';
        if (parse_u64(colon + 1, (size_t)(s + n - colon - 1), 65535, &port) < 0 || port == 0)
            return spec_err(err, cap, "bad port");
        if (strcmp(host, "localhost") == 0)
            snprintf(host, sizeof(host), "127.0.0.1");
        struct sockaddr_in *in4 = (struct sockaddr_in *)&out->ss;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->ss;
        if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
            in4->sin_family = AF_INET;
            in4->sin_port = htons((uint16_t)port);
            out->sslen = (socklen_t)sizeof(*in4);
            return 0;
        }
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
            in6->sin6_family = AF_INET6;
            in6->sin6_port = htons((uint16_t)port);
            out->sslen = (socklen_t)sizeof(*in6);
            return 0;
        }
        /* No name lookups: the loop must not block on a resolver. */
        return spec_err(err, cap, "inet: host must be an IP address or localhost");
    }
    return spec_err(err, cap, "must start with inet: or unix:");
}

int
milter_specs_parse(const char *text, struct milter_spec **out, size_t *n, char *err, size_t cap)
{
    struct milter_spec *v = NULL;
    size_t cnt = 0;
    const char *p = text;
    while (*p != '\0') {
        const char *start;
        char why[128];
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            break;
        start = p;
        while (*p != '\0' && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        if (cnt == MILTER_MAX) {
            free(v);
            snprintf(err, cap, "more than %d filters", MILTER_MAX);
            return -1;
        }
        v = xrealloc(v, (cnt + 1) * sizeof(*v));
        if (milter_spec_parse(start, (size_t)(p - start), &v[cnt], why, sizeof(why)) < 0) {
            snprintf(err, cap, "\"%.*s\": %s", (int)((size_t)(p - start) < 80 ? p - start : 80),
                start, why);
            free(v);
            return -1;
        }
        cnt++;
    }
    *out = v;
    *n = cnt;
    return 0;
}

/* ---- encoding ---- */

static void
put_u32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
    buf_append(b, x, 4);
}

static uint32_t
get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The header of a packet whose data will be n bytes. */
static void
put_head(struct buf *b, char cmd, size_t n)
{
    TERN_ASSERT(n < MILTER_PACKET_MAX * 2);
    put_u32(b, (uint32_t)n + 1);
    buf_append_char(b, cmd);
}

void
milter_put(struct buf *b, char cmd, const void *data, size_t n)
{
    put_head(b, cmd, n);
    if (n > 0)
        buf_append(b, data, n);
}

void
milter_put_optneg(struct buf *b, uint32_t version, uint32_t actions, uint32_t protocol)
{
    put_head(b, MILTER_C_OPTNEG, 12);
    put_u32(b, version);
    put_u32(b, actions);
    put_u32(b, protocol);
}

void
milter_put_strs(struct buf *b, char cmd, const char *const *strs, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += strlen(strs[i]) + 1;
    put_head(b, cmd, len);
    for (size_t i = 0; i < n; i++)
        buf_append(b, strs[i], strlen(strs[i]) + 1);
}

void
milter_put_macros(struct buf *b, char cmd, const char *const *kv, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++) {
        if (kv[2 * i + 1] != NULL)
            len += strlen(kv[2 * i]) + strlen(kv[2 * i + 1]) + 2;
    }
    put_head(b, MILTER_C_MACRO, len);
    buf_append_char(b, cmd);
    for (size_t i = 0; i < n; i++) {
        if (kv[2 * i + 1] == NULL)
            continue;
        buf_append(b, kv[2 * i], strlen(kv[2 * i]) + 1);
        buf_append(b, kv[2 * i + 1], strlen(kv[2 * i + 1]) + 1);
    }
}

void
milter_put_connect(struct buf *b, const char *host, const struct sockaddr *sa)
{
    char addr[INET6_ADDRSTRLEN] = "";
    char fam = 'U'; /* unknown: no port or address follow */
    uint16_t port = 0;
    size_t len = strlen(host) + 2;
    if (sa != NULL && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
        fam = '4';
        port = in4->sin_port; /* network order, as the protocol has it */
        inet_ntop(AF_INET, &in4->sin_addr, addr, sizeof(addr));
    } else if (sa != NULL && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        fam = '6';
        port = in6->sin6_port;
        inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof(addr));
    }
    if (fam != 'U')
        len += 2 + strlen(addr) + 1;
    put_head(b, MILTER_C_CONNECT, len);
    buf_append(b, host, strlen(host) + 1);
    buf_append_char(b, fam);
    if (fam != 'U') {
        buf_append(b, &port, 2);
        buf_append(b, addr, strlen(addr) + 1);
    }
}

/* ---- decoding ---- */

int
milter_frame(const uint8_t *p, size_t n, size_t *len)
{
    uint32_t l;
    if (n < 4)
        return 0;
    l = get_u32(p);
    if (l == 0 || l > MILTER_PACKET_MAX)
        return -1;
    if (n - 4 < l)
        return 0;
    *len = (size_t)l + 4;
    return 1;
}

/* A NUL-terminated string at d[*off..n): its start and length, the offset
 * moved past it. */
static bool
take_str(const uint8_t *d, size_t n, size_t *off, const char **s, size_t *len)
{
    const uint8_t *z;
    if (*off >= n)
        return false;
    z = memchr(d + *off, '\0', n - *off);
    if (z == NULL)
        return false;
    *s = (const char *)d + *off;
    *len = (size_t)(z - (d + *off));
    *off += *len + 1;
    return true;
}

int
milter_reply_parse(const uint8_t *pkt, size_t len, struct milter_reply *r)
{
    const uint8_t *d;
    size_t n, off = 0;
    memset(r, 0, sizeof(*r));
    if (len < 5 || get_u32(pkt) != len - 4)
        return -1;
    r->code = (char)pkt[4];
    d = pkt + 5;
    n = len - 5;
    switch (r->code) {
    case MILTER_R_ACCEPT:
    case MILTER_R_CONTINUE:
    case MILTER_R_DISCARD:
    case MILTER_R_REJECT:
    case MILTER_R_TEMPFAIL:
    case MILTER_R_PROGRESS:
    case MILTER_R_SKIP:
    case MILTER_R_SHUTDOWN:
    case MILTER_R_CONN_FAIL:
        return 0; /* any data is ignored, as libmilter sends none */
    case MILTER_R_OPTNEG:
        if (n < 12)
            return -1;
        r->version = get_u32(d);
        r->actions = get_u32(d + 4);
        r->protocol = get_u32(d + 8);
        /* Then macro lists (SMFIM_* step, names): a malformed rest is
         * ignored, as the lists only narrow what is sent. */
        off = 12;
        while (n - off >= 4) {
            uint32_t st = get_u32(d + off);
            const char *m;
            size_t ml, at = off + 4;
            if (st >= MILTER_M_COUNT || !take_str(d, n, &at, &m, &ml))
                break;
            off = at;
            if (ml <= MILTER_MACRO_LIST_MAX) {
                r->macros[st] = m;
                r->macros_len[st] = ml;
            }
        }
        return 0;
    case MILTER_R_REPLBODY:
        r->s1 = (const char *)d;
        r->s1_len = n;
        return 0;
    case MILTER_R_ADDRCPT:
    case MILTER_R_DELRCPT:
    case MILTER_R_QUARANTINE:
    case MILTER_R_REPLYCODE:
        return take_str(d, n, &off, &r->s1, &r->s1_len) ? 0 : -1;
    case MILTER_R_ADDRCPT_PAR:
    case MILTER_R_CHGFROM:
        if (!take_str(d, n, &off, &r->s1, &r->s1_len))
            return -1;
        if (off < n && !take_str(d, n, &off, &r->s2, &r->s2_len))
            return -1;
        return 0;
    case MILTER_R_ADDHEADER:
        return take_str(d, n, &off, &r->s1, &r->s1_len) && take_str(d, n, &off, &r->s2, &r->s2_len)
                   ? 0
                   : -1;
    case MILTER_R_INSHEADER:
    case MILTER_R_CHGHEADER:
        if (n < 4)
            return -1;
        r->index = get_u32(d);
        off = 4;
        return take_str(d, n, &off, &r->s1, &r->s1_len) && take_str(d, n, &off, &r->s2, &r->s2_len)
                   ? 0
                   : -1;
    default:
        return -1;
    }
}

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int
milter_replycode(const char *s, size_t n, struct tern_status *st)
{
    const char *eol = memchr(s, '\n', n);
    size_t i = 4, o = 0, esc_len = 0;
    if (eol != NULL)
        n = (size_t)(eol - s);
    if (n > 0 && s[n - 1] == '\r')
        n--;
    if (n < 3 || (s[0] != '4' && s[0] != '5') || !is_digit(s[1]) || !is_digit(s[2]) || s[1] > '5' ||
        (n > 3 && s[3] != ' ' && s[3] != '-'))
        return -1;
    st->code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    /* RFC 3463 §2: class.subject.detail, the class the reply's. */
    if (n > i && s[i] == s[0] && n > i + 1 && s[i + 1] == '.') {
        size_t j = i + 2, dots = 0, digits = 0;
        while (j < n && (is_digit(s[j]) || s[j] == '.') && j - i < 10) {
            if (s[j] == '.') {
                if (digits == 0 || digits > 3)
                    break;
                dots++;
                digits = 0;
            } else {
                digits++;
            }
            j++;
        }
        if (dots == 1 && digits >= 1 && digits <= 3 && (j == n || s[j] == ' '))
            esc_len = j - i;
    }
    if (esc_len > 0) {
        memcpy(st->esc, s + i, esc_len);
        st->esc[esc_len] = '\0';
        i += esc_len;
    } else {
        snprintf(st->esc, sizeof(st->esc), "%c.7.1", s[0]);
    }
    while (i < n && s[i] == ' ')
        i++;
    for (; i < n && o + 1 < sizeof(st->text); i++) {
        unsigned char c = (unsigned char)s[i];
        st->text[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    st->text[o] = '\0';
    if (o == 0)
        snprintf(st->text, sizeof(st->text), "%s",
            s[0] == '5' ? "Message rejected by filter" : "Try again later");
    return 0;
}

bool
milter_hdr_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > MILTER_HDR_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == ':')
            return false;
    }
    return true;
}

int
milter_hdr_value(const char *s, size_t n, struct buf *out)
{
    size_t start = out->len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' && i + 1 < n && s[i + 1] == '\n')
            continue; /* the LF makes the break */
        if (c == '\n') {
            /* RFC 5322 §2.2.3: a break only before a blank (folding); a
             * trailing one is dropped. */
            if (i + 1 == n)
                break;
            if (s[i + 1] != ' ' && s[i + 1] != '\t')
                goto bad;
            buf_append(out, "\r\n", 2);
            continue;
        }
        if ((c < 0x20 && c != '\t') || c == 0x7f || c == '\r')
            goto bad;
        buf_append_char(out, (char)c);
    }
    return 0;
bad:
    out->len = start;
    return -1;
}

int
milter_addr(const char *s, size_t n, struct buf *out)
{
    if (n >= 2 && s[0] == '<' && s[n - 1] == '>') {
        s++;
        n -= 2;
    }
    if (n > 512)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f || c == '<' || c == '>')
            return -1;
    }
    buf_append(out, s, n); /* a buf keeps a NUL after its data */
    return 0;
}

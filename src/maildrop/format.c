/*
 * The drop-file format (maildrop.h): building the header lines, a strict
 * parser for them, and the streaming check of the message bytes. Pure
 * functions: tern-sendmail, tern-drop and ternd's pickup share them, and
 * the unit tests call them with tables.
 */
#include "maildrop/maildrop.h"

#include <stdlib.h>
#include <string.h>

#include "util/parse.h"
#include "util/util.h"

void
maildrop_head_fini(struct maildrop_head *h)
{
    free(h->sender);
    for (size_t i = 0; i < h->n_rcpts; i++)
        free(h->rcpts[i]);
    free(h->rcpts);
    memset(h, 0, sizeof(*h));
}

bool
maildrop_addr_ok(const char *a, size_t len)
{
    bool quoted = false;
    const char *at = NULL;
    if (len == 0 || len > MAILDROP_ADDR_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)a[i];
        if (c < ' ' || c == 0x7f)
            return false;
        if (c == '\\' && quoted && i + 1 < len)
            i++;
        else if (c == '"')
            quoted = !quoted;
        else if (!quoted && (c == ' ' || c == '<' || c == '>'))
            return false;
        else if (!quoted && c == '@')
            at = a + i;
    }
    return !quoted && at != NULL && at > a && at + 1 < a + len;
}

int
maildrop_format_head(const char *sender, char *const *rcpts, size_t n_rcpts, uint64_t size,
    struct buf *out, struct buf *err)
{
    if (n_rcpts == 0 || n_rcpts > MAILDROP_RCPTS_MAX) {
        buf_printf(err, "%zu recipients (1 to %d allowed)", n_rcpts, MAILDROP_RCPTS_MAX);
        return -1;
    }
    if (sender != NULL && sender[0] != '\0' && !maildrop_addr_ok(sender, strlen(sender))) {
        buf_printf(err, "bad sender address");
        return -1;
    }
    for (size_t i = 0; i < n_rcpts; i++) {
        if (!maildrop_addr_ok(rcpts[i], strlen(rcpts[i]))) {
            buf_printf(err, "bad recipient address");
            return -1;
        }
    }
    buf_append_str(out, MAILDROP_MAGIC "\n");
    if (sender != NULL)
        buf_printf(out, "sender %s\n", sender[0] != '\0' ? sender : "<>");
    for (size_t i = 0; i < n_rcpts; i++)
        buf_printf(out, "rcpt %s\n", rcpts[i]);
    buf_printf(out, "size %llu\n\n", (unsigned long long)size);
    return 0;
}

/* The next LF-terminated line of p[len] from *off: its start and length
 * (without LF). 0 when there is no complete line. */
static int
next_line(const char *p, size_t len, size_t *off, const char **line, size_t *n)
{
    const char *nl = *off < len ? memchr(p + *off, '\n', len - *off) : NULL;
    if (nl == NULL)
        return 0;
    *line = p + *off;
    *n = (size_t)(nl - *line);
    *off += *n + 1;
    return 1;
}

/* "KEY VALUE": the value when line starts with key and a space. */
static bool
keyword(const char *line, size_t n, const char *key, const char **val, size_t *vn)
{
    size_t k = strlen(key);
    if (n <= k || memcmp(line, key, k) != 0 || line[k] != ' ')
        return false;
    *val = line + k + 1;
    *vn = n - k - 1;
    return true;
}

/* A decimal without sign or leading zero (RFC-style strictness: one
 * spelling per number). */
static int
parse_count(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    if (n == 0 || (n > 1 && s[0] == '0'))
        return -1;
    return parse_u64(s, n, max, out);
}

static int
head_fail(struct maildrop_head *h, struct buf *err, const char *why)
{
    buf_append_str(err, why);
    maildrop_head_fini(h);
    return -1;
}

/* One line after the magic; 1 when it was the empty line after size. */
static int
head_line(struct maildrop_head *h, const char *line, size_t n, int *stage, uint64_t max_size,
    struct buf *err)
{
    const char *v;
    size_t vn;
    if (*stage == 3)
        return n == 0 ? 1 : head_fail(h, err, "no empty line after size");
    if (*stage == 0 && keyword(line, n, "sender", &v, &vn)) {
        if (vn == 2 && memcmp(v, "<>", 2) == 0)
            h->sender = xstrdup("");
        else if (maildrop_addr_ok(v, vn))
            h->sender = xstrndup(v, vn);
        else
            return head_fail(h, err, "bad sender address");
        *stage = 1;
        return 0;
    }
    if (*stage <= 2 && keyword(line, n, "rcpt", &v, &vn)) {
        if (!maildrop_addr_ok(v, vn))
            return head_fail(h, err, "bad recipient address");
        if (h->n_rcpts == MAILDROP_RCPTS_MAX)
            return head_fail(h, err, "too many recipients");
        if (h->n_rcpts % 16 == 0)
            h->rcpts = xrealloc(h->rcpts, (h->n_rcpts + 16) * sizeof(*h->rcpts));
        h->rcpts[h->n_rcpts++] = xstrndup(v, vn);
        *stage = 2;
        return 0;
    }
    if (*stage == 2 && keyword(line, n, "size", &v, &vn)) {
        if (parse_count(v, vn, UINT64_MAX, &h->size) < 0)
            return head_fail(h, err, "bad size");
        if (h->size > max_size)
            return head_fail(h, err, "message too large");
        *stage = 3;
        return 0;
    }
    return head_fail(h, err, *stage < 2 ? "no recipient" : "unexpected line");
}

int
maildrop_parse_head(
    const char *p, size_t len, uint64_t max_size, struct maildrop_head *h, struct buf *err)
{
    size_t off = 0, n, magic = sizeof(MAILDROP_MAGIC) - 1;
    const char *line;
    int stage = 0; /* 0 after magic, 1 after sender, 2 after a rcpt, 3 after size */
    memset(h, 0, sizeof(*h));
    if (len > MAILDROP_HEAD_MAX)
        len = MAILDROP_HEAD_MAX;
    if (len < magic + 1 && memcmp(p, MAILDROP_MAGIC "\n", len) == 0)
        return len == MAILDROP_HEAD_MAX ? head_fail(h, err, "header too long") : 0;
    if (!next_line(p, len, &off, &line, &n) || n != magic || memcmp(line, MAILDROP_MAGIC, n) != 0)
        return head_fail(h, err, "not a tern-maildrop 1 file");
    for (;;) {
        int r;
        if (!next_line(p, len, &off, &line, &n)) {
            if (len >= MAILDROP_HEAD_MAX)
                return head_fail(h, err, "header too long");
            maildrop_head_fini(h);
            return 0;
        }
        r = head_line(h, line, n, &stage, max_size, err);
        if (r < 0)
            return -1;
        if (r == 1)
            break;
    }
    h->head_len = off;
    return 1;
}

void
maildrop_body_init(struct maildrop_body *b)
{
    memset(b, 0, sizeof(*b));
    b->in_header = true;
}

int
maildrop_body_feed(struct maildrop_body *b, const char *p, size_t n, struct buf *err)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (b->cr) {
            if (c != '\n') {
                buf_append_str(err, "bare CR in the message");
                return -1;
            }
            /* RFC 5322 §2.1: an empty line ends the header section. */
            if (b->line == 0)
                b->in_header = false;
            b->cr = false;
            b->line = 0;
            continue;
        }
        if (c == '\r') {
            b->cr = true;
            continue;
        }
        if (c == '\n' || c == '\0') {
            buf_append_str(err, c == '\n' ? "bare LF in the message" : "NUL in the message");
            return -1;
        }
        if (++b->line > MAILDROP_LINE_MAX) {
            buf_append_str(err, "a line longer than 998 octets");
            return -1;
        }
        if (c >= 0x80) {
            if (b->in_header)
                b->hdr_8bit = true;
            else
                b->body_8bit = true;
        }
    }
    b->seen += n;
    return 0;
}

int
maildrop_body_end(struct maildrop_body *b, struct buf *err)
{
    if (b->cr || b->line > 0) {
        buf_append_str(err, "the last line has no CRLF");
        return -1;
    }
    return 0;
}

int
maildrop_parse_file(
    const char *p, size_t len, uint64_t max_size, struct maildrop_head *h, struct buf *err)
{
    struct maildrop_body b;
    int r = maildrop_parse_head(p, len, max_size, h, err);
    if (r == 0)
        buf_append_str(err, "truncated header");
    if (r <= 0)
        return -1;
    if (len - h->head_len < MAILDROP_TRAILER_LEN ||
        len - h->head_len - MAILDROP_TRAILER_LEN != h->size) {
        bool short_ = len - h->head_len < h->size + MAILDROP_TRAILER_LEN;
        maildrop_head_fini(h);
        buf_append_str(err, short_ ? "truncated message" : "bytes after the message");
        return -1;
    }
    maildrop_body_init(&b);
    if (maildrop_body_feed(&b, p + h->head_len, h->size, err) < 0 ||
        maildrop_body_end(&b, err) < 0) {
        maildrop_head_fini(h);
        return -1;
    }
    if (memcmp(p + h->head_len + h->size, MAILDROP_TRAILER, MAILDROP_TRAILER_LEN) != 0) {
        maildrop_head_fini(h);
        buf_append_str(err, "no end marker");
        return -1;
    }
    return 0;
}

static bool
all_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

enum maildrop_name
maildrop_name_kind(const char *name, char *qid_out)
{
    size_t n = strlen(name);
    if (strcmp(name, MAILDROP_CORRUPT) == 0)
        return MAILDROP_N_CORRUPT;
    if (n == 2 + MAILDROP_ID_HEX && name[1] == '.' && all_hex(name + 2, MAILDROP_ID_HEX)) {
        if (name[0] == 't')
            return MAILDROP_N_TMP;
        if (name[0] == 'd')
            return MAILDROP_N_READY;
    }
    if (n == 2 + MAILDROP_ID_HEX + 1 + 16 && name[0] == 'c' && name[1] == '.' &&
        all_hex(name + 2, MAILDROP_ID_HEX) && name[2 + MAILDROP_ID_HEX] == '.' &&
        all_hex(name + 3 + MAILDROP_ID_HEX, 16)) {
        if (qid_out != NULL) {
            memcpy(qid_out, name + 3 + MAILDROP_ID_HEX, 16);
            qid_out[16] = '\0';
        }
        return MAILDROP_N_CLAIMED;
    }
    return MAILDROP_N_OTHER;
}

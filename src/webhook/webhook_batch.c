/*
 * The webhook's pure parts: a batch of journal events as one JSON array,
 * its HMAC-SHA256 signature (OpenSSL's EVP_MAC), the durable cursor and
 * the retry backoff. Nothing here touches the network.
 */
#include "webhook/webhook.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "util/fsutil.h"
#include "util/parse.h"

int
webhook_sign(const void *key, size_t key_len, const void *body, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char mac[32];
    size_t mac_len = 0;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = { OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end() };
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = m != NULL ? EVP_MAC_CTX_new(m) : NULL;
    int rc = -1;
    /* An empty key is still a key (RFC 2104 §2 pads it); OpenSSL wants a
     * non-NULL pointer. */
    if (c == NULL || EVP_MAC_init(c, key_len ? key : (const void *)"", key_len, params) != 1 ||
        EVP_MAC_update(c, body, len) != 1 || EVP_MAC_final(c, mac, &mac_len, sizeof(mac)) != 1 ||
        mac_len != sizeof(mac))
        goto out;
    memcpy(out, "sha256=", 7);
    for (size_t i = 0; i < sizeof(mac); i++) {
        out[7 + 2 * i] = hex[mac[i] >> 4];
        out[8 + 2 * i] = hex[mac[i] & 15];
    }
    out[WEBHOOK_SIG_LEN] = '\0';
    rc = 0;
out:
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(m);
    return rc;
}

int64_t
webhook_backoff_ms(unsigned attempt)
{
    int64_t d = WEBHOOK_RETRY_MIN_MS;
    for (unsigned i = 1; i < attempt && d < WEBHOOK_RETRY_MAX_MS; i++)
        d *= 2;
    return d < WEBHOOK_RETRY_MAX_MS ? d : WEBHOOK_RETRY_MAX_MS;
}

void
webhook_event_json(const struct history_rec *r, struct buf *out)
{
    size_t start = out->len;
    history_rec_json(r, out); /* "{...}\n": the trace object, reopened for sender */
    out->len = start + (out->len - start) - 2;
    out->data[out->len] = '\0';
    buf_append_str(out, ",\"sender\":");
    buf_append_json_str(out, r->from);
    buf_append_char(out, '}');
}

struct batch_fill {
    struct webhook_batch *b;
    size_t max_events;
    struct buf one;
};

static int
batch_add(const struct history_rec *r, const struct history_pos *after, void *arg)
{
    (void)after;
    struct batch_fill *f = arg;
    struct webhook_batch *b = f->b;
    buf_reset(&f->one);
    webhook_event_json(r, &f->one);
    if (b->n >= f->max_events)
        return 1;
    /* "[" + events joined by "," + "]" */
    if (f->one.len + 2 > WEBHOOK_BODY_MAX)
        return 0; /* cannot go in any body: passed over */
    if (b->body.len + 1 + f->one.len + 1 > WEBHOOK_BODY_MAX)
        return 1;
    buf_append_char(&b->body, b->n == 0 ? '[' : ',');
    buf_append(&b->body, f->one.data, f->one.len);
    b->n++;
    return 0;
}

int
webhook_batch_read(const char *spool_dir, const struct history_pos *from, size_t max_events,
    struct webhook_batch *b, bool *lost, struct buf *err)
{
    struct batch_fill f = { b, max_events ? max_events : 1, BUF_INIT };
    struct history_pos end;
    int rc;
    buf_reset(&b->body);
    b->n = 0;
    b->to = *from;
    rc = history_follow(spool_dir, from, batch_add, &f, &end, lost, err);
    buf_fini(&f.one);
    if (rc < 0)
        return -1;
    /* end is past damaged lines too; b->to past the last event taken. With
     * nothing taken, end is where to look next time. */
    b->to = end;
    if (b->n > 0)
        buf_append_char(&b->body, ']');
    return 0;
}

/* ---- the cursor: "tern-webhook-cursor 1 FILE OFFSET\n" ---- */

#define CURSOR_MAGIC "tern-webhook-cursor 1 "

/* A journal file's name, or "-" for the journal's start. */
static bool
journal_name_ok(const char *s, size_t n)
{
    if (n == 1 && s[0] == '-')
        return true;
    return n == 19 && strspn(s, "0123456789") == 13 && memcmp(s + 13, ".jsonl", 6) == 0;
}

int
webhook_cursor_load(const char *spool_dir, struct history_pos *pos, struct buf *err)
{
    char path[4096], text[128];
    const char *sp, *nl;
    ssize_t n;
    int fd;
    memset(pos, 0, sizeof(*pos));
    snprintf(path, sizeof(path), "%s/%s", spool_dir, WEBHOOK_CURSOR_FILE);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT)
        return 0;
    if (fd < 0) {
        buf_printf(err, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    n = fd_pread_full(fd, text, sizeof(text) - 1, 0);
    close(fd);
    if (n < 0) {
        buf_printf(err, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    text[n] = '\0';
    nl = memchr(text, '\n', (size_t)n);
    if (strncmp(text, CURSOR_MAGIC, strlen(CURSOR_MAGIC)) != 0 || nl == NULL ||
        (sp = strchr(text + strlen(CURSOR_MAGIC), ' ')) == NULL || sp > nl ||
        !journal_name_ok(text + strlen(CURSOR_MAGIC), (size_t)(sp - text) - strlen(CURSOR_MAGIC)) ||
        parse_u64(sp + 1, (size_t)(nl - sp - 1), UINT64_MAX / 2, &pos->off) < 0) {
        memset(pos, 0, sizeof(*pos));
        buf_printf(err, "%s is damaged", path);
        return -1;
    }
    if (text[strlen(CURSOR_MAGIC)] != '-') {
        memcpy(pos->file, text + strlen(CURSOR_MAGIC), 19);
        pos->file[19] = '\0';
    }
    return 0;
}

int
webhook_cursor_save(const char *spool_dir, const struct history_pos *pos, struct buf *err)
{
    char text[128];
    int len = snprintf(text, sizeof(text), CURSOR_MAGIC "%s %" PRIu64 "\n",
        pos->file[0] ? pos->file : "-", pos->off);
    return fs_replace_file(spool_dir, WEBHOOK_CURSOR_FILE, text, (size_t)len, err);
}

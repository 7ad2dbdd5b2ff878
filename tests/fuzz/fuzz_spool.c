/*
 * libFuzzer target: the spool loader (src/spool/load.c, envelope.c) on a
 * queue file made of hostile bytes, read through spool_load_fd from a memfd.
 * Byte 0 is the mode: bit 0 repairs the end marker's checksums and bit 1
 * those of the status records after it (so the fuzzer gets past them to the
 * records), bit 2 loads with a queue id other than the file's, bit 3 checks
 * the body checksum. The rest is the file.
 * Invariants: a file is either loaded or refused with a reason (a memfd has
 * no I/O errors); a loaded envelope keeps every bound of the format (ids,
 * enums, recipient count, body inside the file, a valid prefix) and what
 * loads with the body check loads without it; the envelope encodes to
 * records that parse back to the same envelope; status and prefix records
 * made from it apply back to the same values.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_check.h"
#include "spool/spool_int.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char other_qid[] = "0123456789abcdef";

/* "Q <qid>" as the first record, when the file has one. */
static void
file_qid(const uint8_t *f, size_t n, char qid[SPOOL_QID_LEN + 1])
{
    memcpy(qid, other_qid, sizeof(other_qid));
    if (n >= SPOOL_HDR_LEN + 2 + SPOOL_QID_LEN && memcmp(f + SPOOL_HDR_LEN, "Q ", 2) == 0)
        memcpy(qid, f + SPOOL_HDR_LEN + 2, SPOOL_QID_LEN);
}

static void
put_hex8(uint8_t *p, uint32_t v)
{
    char h[9];
    snprintf(h, sizeof(h), "%08" PRIx32, v);
    memcpy(p, h, 8);
}

/* Write the checksums a real writer would have written. */
static void
repair(uint8_t *f, size_t n, bool status)
{
    uint64_t off, len;
    const char *reason;
    char h[SPOOL_HDR_LEN];
    size_t end, i;
    if (n < SPOOL_HDR_LEN)
        return;
    memcpy(h, f, sizeof(h));
    if (spool_parse_header(h, &off, &len, &reason) < 0 || off > n || len > n - off ||
        n - off - len < SPOOL_END_LEN)
        return;
    end = (size_t)(off + len);
    memcpy(f + end, "\nEND ", 5);
    put_hex8(f + end + 5, spool_crc32c(0, f + SPOOL_HDR_LEN, (size_t)off - SPOOL_HDR_LEN));
    f[end + 13] = ' ';
    put_hex8(f + end + 14, spool_crc32c(0, f + off, (size_t)len));
    f[end + 22] = '\n';
    for (i = end + SPOOL_END_LEN; status && i < n;) {
        uint8_t *nl = memchr(f + i, '\n', n - i);
        size_t l = nl ? (size_t)(nl - (f + i)) : n - i;
        if (l >= 11 && f[i + l - 9] == ' ')
            put_hex8(f + i + l - 8, spool_crc32c(0, f + i, l - 9));
        i += l + 1;
    }
}

static bool
same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void
check_bounds(const struct spool_env *env, const char *qid, size_t n)
{
    CHECK(spool_qid_valid(env->qid) && strcmp(env->qid, qid) == 0);
    CHECK(env->n_rcpts >= 1 && env->n_rcpts <= SPOOL_RCPT_MAX);
    CHECK(env->sender != NULL && env->arrival_ms >= 0);
    CHECK(env->ret <= DSN_RET_HDRS && env->body <= BODY_BINARYMIME);
    CHECK(env->body_off >= SPOOL_HDR_LEN && env->body_off <= n);
    CHECK(env->body_len <= n - env->body_off && n - env->body_off - env->body_len >= SPOOL_END_LEN);
    CHECK(env->prefix == NULL || spool_prefix_valid(env->prefix, strlen(env->prefix)));
    for (size_t i = 0; i < env->n_rcpts; i++) {
        CHECK(env->rcpts[i].addr != NULL && env->rcpts[i].notify <= 0xf);
        CHECK(env->rcpts[i].state <= RCPT_FAILED);
    }
}

/* Encode the envelope and parse it back: the same envelope. */
static void
check_round_trip(const struct spool_env *env)
{
    struct buf b = BUF_INIT;
    struct spool_env_parser p;
    struct spool_env *e2;
    size_t i = 0;
    CHECK(spool_env_encode(env, &b) == 0);
    spool_env_parser_init(&p);
    while (i < b.len) {
        char *nl = memchr(b.data + i, '\n', b.len - i);
        CHECK(nl != NULL);
        CHECK(spool_env_parse_line(&p, b.data + i, (size_t)(nl - (b.data + i))) == 0);
        i = (size_t)(nl - b.data) + 1;
    }
    e2 = spool_env_parse_end(&p);
    CHECK(e2 != NULL);
    CHECK(strcmp(e2->qid, env->qid) == 0 && e2->arrival_ms == env->arrival_ms);
    CHECK(same_str(e2->sender, env->sender) && same_str(e2->envid, env->envid));
    CHECK(same_str(e2->helo, env->helo) && same_str(e2->client_addr, env->client_addr));
    CHECK(e2->ret == env->ret && e2->body == env->body && e2->smtputf8 == env->smtputf8);
    CHECK(e2->is_bounce == env->is_bounce && e2->n_rcpts == env->n_rcpts);
    for (i = 0; i < env->n_rcpts; i++) {
        CHECK(same_str(e2->rcpts[i].addr, env->rcpts[i].addr));
        CHECK(same_str(e2->rcpts[i].orcpt, env->rcpts[i].orcpt));
        CHECK(e2->rcpts[i].notify == env->rcpts[i].notify);
    }
    spool_env_parser_fini(&p);
    spool_env_free(e2);
    buf_fini(&b);
}

/* Apply one status record made by the writer's own helper to a copy. */
static void
apply_line(struct spool_env *to, const struct buf *b)
{
    CHECK(b->len > 0 && b->data[b->len - 1] == '\n');
    CHECK(spool_status_apply(to, b->data, b->len - 1) == 0);
}

static void
check_status_round_trip(const struct spool_env *env)
{
    struct spool_env *d = spool_env_dup(env);
    struct buf b = BUF_INIT;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        buf_reset(&b);
        spool_status_rcpt_line(&b, i, r->state, r->attempts, r->last_error);
        d->rcpts[i].state = RCPT_QUEUED;
        apply_line(d, &b);
        CHECK(d->rcpts[i].state == r->state && d->rcpts[i].attempts == r->attempts);
        if (r->last_error == NULL || strlen(r->last_error) <= SPOOL_ERR_MAX)
            CHECK(same_str(d->rcpts[i].last_error, r->last_error));
        else
            CHECK(strncmp(d->rcpts[i].last_error, r->last_error, strlen(d->rcpts[i].last_error)) ==
                  0);
    }
    buf_reset(&b);
    spool_status_held_line(&b, !env->held);
    apply_line(d, &b);
    CHECK(d->held == !env->held);
    if (env->prefix != NULL) {
        buf_reset(&b);
        spool_status_prefix_line(&b, env->prefix);
        apply_line(d, &b);
        CHECK(same_str(d->prefix, env->prefix));
    }
    buf_fini(&b);
    spool_env_free(d);
}

static struct spool_env *
load(int fd, const char *qid, bool verify)
{
    const char *reason = NULL;
    struct spool_env *env = spool_load_fd(fd, qid, verify, &reason);
    CHECK((env == NULL) == (reason != NULL)); /* refused for a reason, never I/O */
    return env;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    char qid[SPOOL_QID_LEN + 1];
    uint8_t *f;
    size_t n;
    struct spool_env *env;
    if (size < 1)
        return 0;
    if (fd < 0 && (fd = memfd_create("fuzz_spool", MFD_CLOEXEC)) < 0)
        abort();
    n = size - 1;
    f = xmalloc(n ? n : 1);
    memcpy(f, data + 1, n);
    if (data[0] & 1)
        repair(f, n, data[0] & 2);
    file_qid(f, n, qid);
    if (data[0] & 4)
        memcpy(qid, other_qid, sizeof(other_qid));
    CHECK(ftruncate(fd, 0) == 0);
    CHECK(n == 0 || pwrite(fd, f, n, 0) == (ssize_t)n);
    env = load(fd, qid, data[0] & 8);
    if (env != NULL) {
        struct spool_env *plain = load(fd, qid, false);
        CHECK(plain != NULL); /* the body check only ever refuses more */
        spool_env_free(plain);
        check_bounds(env, qid, n);
        check_round_trip(env);
        check_status_round_trip(env);
        spool_env_free(env);
    }
    free(f);
    return 0;
}

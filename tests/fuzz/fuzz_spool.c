/*
 * libFuzzer target: what the spool reads back from disk (src/spool), every
 * byte of it hostile. Byte 0 picks the reader (low 3 bits, modulo 5) and
 * whether the checksums a real writer would have written are put in first
 * (bit 3), so the fuzzer gets past them to the contents:
 *   0 HDR     record header, segment header, .idx entry and file name codecs
 *   1 ENV     a MSG record's part A (spool_env_decode)
 *   2 STATE   a STATE record's part A applied to an envelope (byte 1: its
 *             recipient count) and summarized as recovery does
 *   3 SEG     segment files in a temporary spool read by the offline scan
 *             (spool_scan: recovery's record walk, then every live message
 *             loaded with its state); byte 1 bit 0: two segments, bit 1: an
 *             .idx for the older one; bytes 2..5: the lengths of the first
 *             segment and of the .idx (little-endian 16 bits)
 *   4 LEGACY  a queue file of the old one-file-per-message layout
 *             (legacy_load, as the conversion at start-up reads it); bit 4
 *             of byte 0 names the file other than its Q line
 * Invariants: no crash and no leak; whatever decodes keeps the format's
 * bounds; a decoded envelope encodes without error to a part A that decodes
 * to an equal envelope and encodes to the same bytes again; a state applied
 * encodes to a STATE that applies to the same recipient states and whose
 * summary agrees with the envelope's; a loaded old message keeps its qid
 * and its body inside the file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_check.h"
#include "spool/spool_int.h"
#include "util/crc32c.h"
#include "util/log.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { M_HDR, M_ENV, M_STATE, M_SEG, M_LEGACY, M_COUNT };
#define F_REPAIR    0x08
#define F_OTHER_QID 0x10

/* The old layout (legacy.c): a 57-byte header, a 23-byte end marker. */
#define OLD_HDR_LEN 57
#define OLD_END_LEN 23

static const char other_qid[] = "0123456789abcdef";

/* ---- little-endian helpers (the format is fixed, see spool_int.h) ---- */

static void
put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void
put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t
get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- envelope checks ---- */

static bool
same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void
check_bounds(const struct spool_env *env, size_t max_ext)
{
    CHECK(spool_qid_valid(env->qid));
    CHECK(env->n_rcpts >= 1 && env->n_rcpts <= SPOOL_RCPT_MAX);
    CHECK(env->sender != NULL && env->arrival_ms >= 0);
    CHECK(env->ret <= DSN_RET_HDRS && env->body <= BODY_BINARYMIME);
    CHECK(env->prefix == NULL || spool_prefix_valid(env->prefix, strlen(env->prefix)));
    CHECK(env->n_ext <= max_ext && (env->n_ext == 0 || env->ext != NULL));
    for (size_t i = 0; i < env->n_ext; i++)
        CHECK(env->ext[i].len > 0 && env->ext[i].off <= SEG_SIZE_MAX &&
              env->ext[i].len <= SEG_SIZE_MAX);
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct spool_rcpt *r = &env->rcpts[i];
        CHECK(r->addr != NULL && r->notify <= 0xf && r->state <= RCPT_STATE_LAST);
        CHECK(r->next_try_ms >= 0);
    }
}

/* Equal as part A carries them (recipient states are STATE's business). */
static void
check_env_equal(const struct spool_env *a, const struct spool_env *b)
{
    CHECK(strcmp(a->qid, b->qid) == 0 && a->arrival_ms == b->arrival_ms);
    CHECK(same_str(a->sender, b->sender) && same_str(a->envid, b->envid));
    CHECK(same_str(a->helo, b->helo) && same_str(a->client_addr, b->client_addr));
    CHECK(a->ret == b->ret && a->body == b->body && a->smtputf8 == b->smtputf8);
    CHECK(a->is_bounce == b->is_bounce && a->n_rcpts == b->n_rcpts);
    CHECK(a->body_len == b->body_len && a->stored_len == b->stored_len);
    CHECK(same_str(a->prefix, b->prefix) && a->n_ext == b->n_ext);
    for (size_t i = 0; i < a->n_ext; i++)
        CHECK(memcmp(&a->ext[i], &b->ext[i], sizeof(a->ext[i])) == 0);
    for (size_t i = 0; i < a->n_rcpts; i++) {
        CHECK(same_str(a->rcpts[i].addr, b->rcpts[i].addr));
        CHECK(same_str(a->rcpts[i].orcpt, b->rcpts[i].orcpt));
        CHECK(a->rcpts[i].notify == b->rcpts[i].notify);
    }
}

/* env encodes; the result decodes to an equal envelope that encodes to
 * the same bytes (the encoding is canonical after one round). */
static void
check_env_round_trip(const struct spool_env *env)
{
    struct buf b1 = BUF_INIT, b2 = BUF_INIT;
    struct spool_env *e2;
    CHECK(spool_env_encode(env, &b1) == 0);
    e2 = spool_env_decode(b1.data, b1.len);
    CHECK(e2 != NULL);
    check_env_equal(env, e2);
    CHECK(spool_env_encode(e2, &b2) == 0);
    CHECK(b1.len == b2.len && memcmp(b1.data, b2.data, b1.len) == 0);
    spool_env_free(e2);
    buf_fini(&b1);
    buf_fini(&b2);
}

/* A STATE is kept as long as SPOOL_ERR_MAX bytes of each last error. */
static void
check_rcpt_state_equal(const struct spool_rcpt *want, const struct spool_rcpt *got)
{
    CHECK(got->state == want->state && got->attempts == want->attempts);
    CHECK(got->flags == want->flags && got->next_try_ms == want->next_try_ms);
    if (want->last_error == NULL || got->last_error == NULL)
        CHECK(want->last_error == got->last_error);
    else if (strlen(want->last_error) <= SPOOL_ERR_MAX)
        CHECK(strcmp(got->last_error, want->last_error) == 0);
    else
        CHECK(strlen(got->last_error) <= SPOOL_ERR_MAX &&
              strncmp(got->last_error, want->last_error, strlen(got->last_error)) == 0);
}

/* env's state encodes to a STATE that applies to a copy as the same state
 * and whose summary (what recovery keeps) agrees with the envelope. */
static void
check_state_round_trip(const struct spool_env *env)
{
    struct spool_env *d = spool_env_dup(env);
    struct buf b = BUF_INIT, b2 = BUF_INIT;
    int64_t next;
    uint32_t pending;
    bool held = !env->held;
    spool_state_encode(env, &b);
    d->held = !env->held;
    CHECK(spool_state_apply(d, b.data, b.len) == 0);
    CHECK(d->held == env->held);
    for (size_t i = 0; i < env->n_rcpts; i++)
        check_rcpt_state_equal(&env->rcpts[i], &d->rcpts[i]);
    spool_state_encode(d, &b2);
    CHECK(b.len == b2.len && memcmp(b.data, b2.data, b.len) == 0);
    CHECK(spool_state_summary(b.data, b.len, &next, &pending, &held) == 0);
    CHECK(held == env->held && pending == spool_env_pending(env));
    CHECK(next == spool_env_next_try(env));
    buf_fini(&b);
    buf_fini(&b2);
    spool_env_free(d);
}

/* ---- 0: fixed-layout codecs ---- */

static void
fuzz_hdr(uint8_t *p, size_t n, bool repair)
{
    uint8_t out[SEG_HDR_LEN];
    struct rec_hdr h, h2;
    struct idx_rec ir, ir2;
    uint64_t seq;
    /* Zeroed: the comparison below covers the structs' padding too. */
    memset(&h, 0, sizeof(h));
    memset(&h2, 0, sizeof(h2));
    if (n >= REC_HDR_LEN) {
        if (repair)
            put32(p + 44, crc32c(0, p, 44));
        if (rec_hdr_decode(p, &h) == 0) {
            CHECK(h.type >= REC_MSG && h.type <= REC_DONE && h.version == REC_VERSION);
            rec_hdr_encode(&h, out);
            /* Everything but the reserved word (written as 0) comes back. */
            CHECK(memcmp(out, p, 40) == 0);
            CHECK(rec_hdr_decode(out, &h2) == 0 && memcmp(&h, &h2, sizeof(h)) == 0);
        }
        idx_rec_decode(p, &ir);
        idx_rec_encode(&ir, out);
        idx_rec_decode(out, &ir2);
        CHECK(ir.type == ir2.type && ir.held == ir2.held && ir.is_bounce == ir2.is_bounce);
        CHECK(ir.off == ir2.off && ir.len == ir2.len && ir.qid == ir2.qid);
        CHECK(ir.home == ir2.home && ir.t1 == ir2.t1 && ir.n == ir2.n);
    }
    if (n >= SEG_HDR_LEN) {
        if (repair) {
            memcpy(p, SEG_FILE_MAGIC, 8);
            put32(p + SEG_HDR_LEN - 4, crc32c(0, p, SEG_HDR_LEN - 4));
        }
        if (seg_hdr_decode(p, &seq) == 0) {
            seg_hdr_encode(seq, (int64_t)get64(p + 16), out);
            CHECK(seg_hdr_decode(out, &seq) == 0 && seq == get64(p + 8));
        }
    }
    {
        char name[32], back[32];
        size_t k = n < sizeof(name) - 1 ? n : sizeof(name) - 1;
        bool is_idx;
        memcpy(name, p, k);
        name[k] = '\0';
        if (seg_name_parse(name, &seq, &is_idx)) {
            seg_name(seq, is_idx ? "idx" : "seg", back, sizeof(back));
            CHECK(strcmp(back, name) == 0);
        }
    }
}

/* ---- 1: MSG part A ---- */

static void
fuzz_env(const uint8_t *p, size_t n)
{
    struct spool_env *env = spool_env_decode((const char *)p, n);
    if (env == NULL)
        return;
    check_bounds(env, SPOOL_EXT_MAX);
    for (size_t i = 0; i < env->n_rcpts; i++)
        CHECK(env->rcpts[i].state == RCPT_QUEUED && env->rcpts[i].last_error == NULL);
    check_env_round_trip(env);
    spool_env_free(env);
}

/* ---- 2: STATE part A ---- */

static struct spool_env *
base_env(size_t n_rcpts)
{
    struct spool_env *env = xcalloc(1, sizeof(*env));
    memcpy(env->qid, other_qid, sizeof(other_qid));
    env->sender = xstrdup("s@example.com");
    for (size_t i = 0; i < n_rcpts; i++)
        spool_env_add_rcpt(env, "r@example.net", NULL, 0);
    return env;
}

static void
fuzz_state(const uint8_t *p, size_t n)
{
    struct spool_env *env;
    int64_t next;
    uint32_t pending;
    bool held = false;
    int rc, rc_sum;
    if (n < 1)
        return;
    env = base_env(1 + p[0] % 8);
    rc = spool_state_apply(env, (const char *)p + 1, n - 1);
    rc_sum = spool_state_summary((const char *)p + 1, n - 1, &next, &pending, &held);
    /* Recovery's summary never refuses what a load accepts. */
    CHECK(rc < 0 || rc_sum == 0);
    if (rc == 0) {
        check_bounds(env, 0);
        CHECK(held == env->held);
        check_state_round_trip(env);
    }
    spool_env_free(env);
}

/* ---- temporary directories ---- */

static char base_dir[256];

static void
rm_tree_at(int dfd, const char *name)
{
    if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
        return;
    {
        int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (sub >= 0) {
            /* The trees made here are flat: remove what is in them. */
            int d2 = dup(sub);
            DIR *d = d2 >= 0 ? fdopendir(d2) : NULL;
            struct dirent *de;
            while (d != NULL && (de = readdir(d)) != NULL) {
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                    rm_tree_at(sub, de->d_name);
            }
            if (d != NULL)
                closedir(d);
            close(sub);
        }
        CHECK(unlinkat(dfd, name, AT_REMOVEDIR) == 0);
    }
}

static int
base_fd(void)
{
    static int fd = -1;
    if (fd < 0) {
        const char *t = getenv("TERN_FUZZ_TMPDIR");
        snprintf(base_dir, sizeof(base_dir), "%s/fuzz_spool.XXXXXX", t && *t ? t : "/tmp");
        CHECK(mkdtemp(base_dir) != NULL);
        fd = open(base_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        CHECK(fd >= 0);
        log_set_level(LOG_CRIT); /* damage is reported; that is not news here */
    }
    return fd;
}

static void
write_file(int dfd, const char *name, const uint8_t *p, size_t n)
{
    int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK(n == 0 || write(fd, p, n) == (ssize_t)n);
    CHECK(close(fd) == 0);
}

/* ---- 3: segment files through the offline scan ---- */

/* Put in the checksums, magic numbers and sequence numbers a writer would
 * have: the segment header, then each record that fits. */
static void
repair_seg(uint8_t *f, size_t n, uint64_t seq)
{
    size_t off = SEG_HDR_LEN;
    if (n < SEG_HDR_LEN)
        return;
    memcpy(f, SEG_FILE_MAGIC, 8);
    put64(f + 8, seq);
    put32(f + SEG_HDR_LEN - 4, crc32c(0, f, SEG_HDR_LEN - 4));
    while (off + REC_HDR_LEN <= n) {
        uint8_t *h = f + off;
        uint64_t la, lb;
        put32(h, REC_MAGIC);
        h[5] = REC_VERSION;
        put64(h + 24, seq);
        la = get32(h + 8);
        lb = get32(h + 12);
        if (la + lb > n - off - REC_HDR_LEN) {
            put32(h + 44, crc32c(0, h, 44));
            break;
        }
        put32(h + 32, crc32c(0, h + REC_HDR_LEN, (size_t)la));
        put32(h + 36, crc32c(0, h + REC_HDR_LEN + la, (size_t)lb));
        put32(h + 44, crc32c(0, h, 44));
        off += REC_HDR_LEN + (size_t)(la + lb);
    }
}

/* An .idx for segment seq: header, whole entries, CRC of what precedes. */
static size_t
repair_idx(uint8_t *f, size_t n, uint64_t seq)
{
    size_t count;
    if (n < 28)
        return n;
    count = (n - 28) / IDX_REC_LEN;
    n = 24 + count * IDX_REC_LEN + 4;
    memcpy(f, IDX_FILE_MAGIC, 8);
    put64(f + 8, seq);
    put64(f + 16, count);
    put32(f + n - 4, crc32c(0, f, n - 4));
    return n;
}

struct scan_ctx {
    long seen;
};

static void
scan_fn(struct spool_env *env, void *arg)
{
    struct scan_ctx *c = arg;
    c->seen++;
    /* Loaded: part A's extents and, with a part B, one more for it. */
    check_bounds(env, SPOOL_EXT_MAX + 1);
    check_state_round_trip(env);
    spool_env_free(env);
}

static size_t
part_len(const uint8_t *p, size_t left)
{
    size_t v = (size_t)p[0] | (size_t)p[1] << 8;
    return v < left ? v : left;
}

static void
fuzz_seg(const uint8_t *p, size_t n, bool repair)
{
    int bfd = base_fd(), sfd, lfd;
    uint8_t *f;
    size_t len1, len_idx = 0;
    uint64_t seq1 = 1, seq2 = 2;
    bool two, with_idx;
    struct scan_ctx c = { 0 };
    struct buf err = BUF_INIT;
    char name[32], dir[sizeof(base_dir) + 8];
    long count;
    if (n < 5)
        return;
    two = p[0] & 1;
    with_idx = two && (p[0] & 2);
    f = xmalloc(n);
    memcpy(f, p + 5, n - 5);
    n -= 5;
    len1 = two ? part_len(p + 1, n) : n;
    if (with_idx)
        len_idx = part_len(p + 3, n - len1);
    CHECK(mkdirat(bfd, "s", 0700) == 0);
    sfd = openat(bfd, "s", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(sfd >= 0 && mkdirat(sfd, "log", 0700) == 0);
    lfd = openat(sfd, "log", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(lfd >= 0);
    if (!repair && len1 >= 16)
        seq1 = get64(f + 8); /* the name must match the header */
    if (repair)
        repair_seg(f, len1, seq1);
    seg_name(seq1, "seg", name, sizeof(name));
    write_file(lfd, name, f, len1);
    if (two) {
        uint8_t *g = f + len1 + len_idx;
        size_t glen = n - len1 - len_idx;
        if (with_idx) {
            size_t il = repair ? repair_idx(f + len1, len_idx, seq1) : len_idx;
            seg_name(seq1, "idx", name, sizeof(name));
            write_file(lfd, name, f + len1, il);
        }
        if (!repair && glen >= 16)
            seq2 = get64(g + 8);
        if (seq2 == seq1)
            seq2 = seq1 + 1;
        if (repair)
            repair_seg(g, glen, seq2);
        seg_name(seq2, "seg", name, sizeof(name));
        write_file(lfd, name, g, glen);
    }
    close(lfd);
    close(sfd);
    snprintf(dir, sizeof(dir), "%s/s", base_dir);
    count = spool_scan(dir, scan_fn, &c, &err);
    CHECK(count == c.seen); /* a spool with log/ is always readable */
    buf_fini(&err);
    rm_tree_at(bfd, "s");
    free(f);
}

/* ---- 4: the old layout ---- */

static void
put_hex8(uint8_t *p, uint32_t v)
{
    char h[9];
    snprintf(h, sizeof(h), "%08" PRIx32, v);
    memcpy(p, h, 8);
}

/* The end marker's checksums and those of the status lines after it. */
static void
repair_old(uint8_t *f, size_t n)
{
    uint64_t off, len;
    char num[21];
    size_t end;
    if (n < OLD_HDR_LEN || memcmp(f, "TERN1 body=", 11) != 0)
        return;
    memcpy(num, f + 11, 20);
    num[20] = '\0';
    off = strtoull(num, NULL, 10);
    memcpy(num, f + 36, 20);
    len = strtoull(num, NULL, 10);
    if (off < OLD_HDR_LEN || off > n || len > n - off || n - off - len < OLD_END_LEN)
        return;
    end = (size_t)(off + len);
    memcpy(f + end, "\nEND ", 5);
    put_hex8(f + end + 5, crc32c(0, f + OLD_HDR_LEN, (size_t)off - OLD_HDR_LEN));
    f[end + 13] = ' ';
    put_hex8(f + end + 14, crc32c(0, f + off, (size_t)len));
    f[end + 22] = '\n';
    for (size_t i = end + OLD_END_LEN; i < n;) {
        uint8_t *nl = memchr(f + i, '\n', n - i);
        size_t l = nl ? (size_t)(nl - (f + i)) : n - i;
        if (l >= 11 && f[i + l - 9] == ' ')
            put_hex8(f + i + l - 8, crc32c(0, f + i, l - 9));
        i += l + 1;
    }
}

static void
fuzz_legacy(const uint8_t *p, size_t n, bool repair, bool other)
{
    int bfd = base_fd(), qfd;
    uint8_t *f = xmalloc(n ? n : 1);
    char qid[SPOOL_QID_LEN + 1];
    struct legacy_msg m;
    const char *reason = NULL;
    struct stat st;
    int rc;
    memcpy(f, p, n);
    if (repair)
        repair_old(f, n);
    memcpy(qid, other_qid, sizeof(other_qid));
    if (!other && n >= OLD_HDR_LEN + 2 + SPOOL_QID_LEN && memcmp(f + OLD_HDR_LEN, "Q ", 2) == 0) {
        memcpy(qid, f + OLD_HDR_LEN + 2, SPOOL_QID_LEN);
        if (!spool_qid_valid(qid))
            memcpy(qid, other_qid, sizeof(other_qid));
    }
    CHECK(mkdirat(bfd, "queue", 0700) == 0);
    qfd = openat(bfd, "queue", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(qfd >= 0);
    write_file(qfd, qid, f, n);
    rc = legacy_load(qfd, geteuid(), qid, &m, &reason);
    CHECK((rc == 0) == (reason == NULL));
    if (rc == 0) {
        CHECK(m.env != NULL && m.fd >= 0 && fstat(m.fd, &st) == 0);
        CHECK(strcmp(m.env->qid, qid) == 0);
        CHECK(m.body_off >= OLD_HDR_LEN && m.body_off <= (uint64_t)st.st_size);
        CHECK(m.env->body_len <= (uint64_t)st.st_size - m.body_off);
        check_bounds(m.env, 0);
        check_env_round_trip(m.env);
        check_state_round_trip(m.env);
        close(m.fd);
        spool_env_free(m.env);
    } else {
        CHECK(m.env == NULL && m.fd < 0);
    }
    close(qfd);
    rm_tree_at(bfd, "queue");
    free(f);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *p;
    size_t n;
    bool repair;
    if (size < 1)
        return 0;
    repair = data[0] & F_REPAIR;
    n = size - 1;
    p = xmalloc(n ? n : 1);
    memcpy(p, data + 1, n);
    switch ((data[0] & 7) % M_COUNT) {
    case M_HDR:
        fuzz_hdr(p, n, repair);
        break;
    case M_ENV:
        fuzz_env(p, n);
        break;
    case M_STATE:
        fuzz_state(p, n);
        break;
    case M_SEG:
        fuzz_seg(p, n, repair);
        break;
    default:
        fuzz_legacy(p, n, repair, data[0] & F_OTHER_QID);
        break;
    }
    free(p);
    return 0;
}

/*
 * The on-disk format of segments: the file header, record headers, index
 * entries and names. Little-endian fixed layouts written and read byte by
 * byte, so the format does not depend on the compiler's struct layout.
 */
#include "spool/spool_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "util/crc32c.h"
#include "util/parse.h"

static void
put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void
put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void
put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint16_t
get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t
get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void
rec_hdr_encode(const struct rec_hdr *h, unsigned char out[REC_HDR_LEN])
{
    put32(out, REC_MAGIC);
    out[4] = h->type;
    out[5] = REC_VERSION;
    put16(out + 6, h->flags);
    put32(out + 8, h->len_a);
    put32(out + 12, h->len_b);
    put64(out + 16, h->qid);
    put64(out + 24, h->seg);
    put32(out + 32, h->crc_a);
    put32(out + 36, h->crc_b);
    put32(out + 40, 0);
    put32(out + 44, crc32c(0, out, 44));
}

int
rec_hdr_decode(const unsigned char in[REC_HDR_LEN], struct rec_hdr *h)
{
    if (get32(in) != REC_MAGIC || get32(in + 44) != crc32c(0, in, 44))
        return -1;
    h->type = in[4];
    h->version = in[5];
    h->flags = get16(in + 6);
    h->len_a = get32(in + 8);
    h->len_b = get32(in + 12);
    h->qid = get64(in + 16);
    h->seg = get64(in + 24);
    h->crc_a = get32(in + 32);
    h->crc_b = get32(in + 36);
    if (h->version != REC_VERSION || h->type < REC_MSG || h->type > REC_DONE)
        return -1;
    return 0;
}

void
seg_hdr_encode(uint64_t seq, int64_t created_ms, unsigned char out[SEG_HDR_LEN])
{
    memset(out, 0, SEG_HDR_LEN);
    memcpy(out, SEG_FILE_MAGIC, 8);
    put64(out + 8, seq);
    put64(out + 16, (uint64_t)created_ms);
    put32(out + SEG_HDR_LEN - 4, crc32c(0, out, SEG_HDR_LEN - 4));
}

int
seg_hdr_decode(const unsigned char in[SEG_HDR_LEN], uint64_t *seq)
{
    if (memcmp(in, SEG_FILE_MAGIC, 8) != 0 ||
        get32(in + SEG_HDR_LEN - 4) != crc32c(0, in, SEG_HDR_LEN - 4))
        return -1;
    *seq = get64(in + 8);
    return 0;
}

void
seg_name(uint64_t seq, const char *ext, char *out, size_t cap)
{
    snprintf(out, cap, "%016" PRIx64 ".%s", seq, ext);
}

void
spare_name(uint64_t num, char *out, size_t cap)
{
    snprintf(out, cap, "spare.%016llx", (unsigned long long)num);
}

bool
spare_name_parse(const char *name, uint64_t *num)
{
    uint64_t v = 0;
    if (strlen(name) != 22 || strncmp(name, "spare.", 6) != 0)
        return false;
    for (int i = 6; i < 22; i++) {
        char c = name[i];
        if (c >= '0' && c <= '9')
            v = v << 4 | (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v << 4 | (uint64_t)(c - 'a' + 10);
        else
            return false;
    }
    *num = v;
    return true;
}

bool
seg_name_parse(const char *name, uint64_t *seq, bool *is_idx)
{
    size_t n = strlen(name);
    uint64_t v = 0;
    if (n != 20 || name[16] != '.')
        return false;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        if (c >= '0' && c <= '9')
            v = v << 4 | (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v << 4 | (uint64_t)(c - 'a' + 10);
        else
            return false;
    }
    if (strcmp(name + 17, "seg") == 0)
        *is_idx = false;
    else if (strcmp(name + 17, "idx") == 0)
        *is_idx = true;
    else
        return false;
    *seq = v;
    return true;
}

bool
spool_qid_valid(const char *qid)
{
    if (qid == NULL)
        return false;
    for (size_t i = 0; i < SPOOL_QID_LEN; i++) {
        char c = qid[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return qid[SPOOL_QID_LEN] == '\0';
}

uint64_t
qid_num(const char *qid)
{
    uint64_t v = 0;
    for (size_t i = 0; i < SPOOL_QID_LEN; i++) {
        char c = qid[i];
        v = v << 4 | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return v;
}

void
qid_text(uint64_t n, char out[SPOOL_QID_LEN + 1])
{
    snprintf(out, SPOOL_QID_LEN + 1, "%016" PRIx64, n);
}

void
idx_rec_encode(const struct idx_rec *r, unsigned char out[IDX_REC_LEN])
{
    memset(out, 0, IDX_REC_LEN);
    out[0] = r->type;
    out[1] = r->held;
    out[2] = r->is_bounce;
    put32(out + 4, r->off);
    put32(out + 8, r->len);
    put64(out + 12, r->qid);
    put64(out + 20, (uint64_t)r->t1);
    put32(out + 28, r->n);
    put64(out + 32, r->home);
}

void
idx_rec_decode(const unsigned char in[IDX_REC_LEN], struct idx_rec *r)
{
    r->type = in[0];
    r->held = in[1] != 0;
    r->is_bounce = in[2] != 0;
    r->off = get32(in + 4);
    r->len = get32(in + 8);
    r->qid = get64(in + 12);
    r->t1 = (int64_t)get64(in + 20);
    r->n = get32(in + 28);
    r->home = get64(in + 32);
}

/*
 * libFuzzer target: the DATA/BDAT reader (src/proto/data.c) against the
 * byte-at-a-time reference decoder (tests/unit/data_ref.c). Byte 0 picks
 * the mode, bytes 1..4 seed the split points and the chain layout of the
 * input buffer, the rest is the payload. The reader, fed in those pieces as
 * a session feeds it, must come to the same verdict (end of data, bare
 * CR/LF, NUL, long line), scan as many bytes, count the same content size
 * and store the reference's output stuffed again; and it must keep its own
 * promises (stuffed bytes handed over whole, the last chain kept until the
 * end of data).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data_ref.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t
next_rand(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum smtp_data_mode mode;
    uint32_t seed, layout;
    const char *in;
    size_t len, cuts[64], ncuts = 0;
    struct ref_outcome ref, r;
    const char *err;

    if (size < 5)
        return 0;
    mode = (data[0] & 1) ? SMTP_DATA_BDAT : SMTP_DATA_DOT;
    seed = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 |
           (uint32_t)data[4] << 24;
    in = (const char *)data + 5;
    len = size - 5;
    layout = seed * 2654435761u;
    /* Up to 64 ascending cuts, small steps or large ones. */
    if (len > 1 && seed != 0) {
        uint32_t s = seed, maxstep = seed % 67 + 1;
        size_t pos = 0;
        while (ncuts < 64) {
            pos += 1 + next_rand(&s) % maxstep;
            if (pos >= len)
                break;
            cuts[ncuts++] = pos;
        }
    }
    ref_outcome_reference(mode, in, len, &ref);
    err = ref_outcome_reader(mode, in, len, cuts, ncuts, layout, &r);
    if (err != NULL) {
        fprintf(stderr, "reader: %s\n", err);
        CHECK(err == NULL);
    }
    err = ref_outcome_compare(mode, &ref, &r);
    if (err != NULL) {
        fprintf(stderr, "reader and reference: %s\n", err);
        CHECK(err == NULL);
    }
    ref_outcome_fini(&ref);
    ref_outcome_fini(&r);
    return 0;
}

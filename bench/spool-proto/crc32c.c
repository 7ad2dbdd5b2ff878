/*
 * CRC-32C (Castagnoli), as used for record checks in the segment log: the
 * SSE4.2 instruction when the CPU has it, else a byte-wise table.
 */
#include "proto.h"

#include <string.h>

static uint32_t table[256];
static int have_hw = -1;

static void
init_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        table[i] = c;
    }
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc_hw(uint32_t c, const unsigned char *p, size_t n)
{
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n-- > 0)
        c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

uint32_t
crc32c(uint32_t crc, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    uint32_t c = ~crc;
    if (have_hw < 0) {
        init_table();
#if defined(__x86_64__)
        __builtin_cpu_init();
        have_hw = __builtin_cpu_supports("sse4.2");
#else
        have_hw = 0;
#endif
    }
#if defined(__x86_64__)
    if (have_hw)
        return ~crc_hw(c, p, n);
#endif
    while (n-- > 0)
        c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

/*
 * CRC-32C (Castagnoli, RFC 3720 Appendix B.4), the checksum of every spool
 * record. Uses the CPU's crc32 instruction when it has one (SSE4.2, detected
 * once at run time) and a slicing-by-8 table otherwise; both give the same
 * values. Thread safe.
 */
#ifndef TERN_CRC32C_H
#define TERN_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Continue crc (0 to start) over p[n]. */
uint32_t crc32c(uint32_t crc, const void *p, size_t n);
/* The table version, always (tests compare the two). */
uint32_t crc32c_sw(uint32_t crc, const void *p, size_t n);
/* Is the instruction in use? */
bool crc32c_hw(void);

#endif

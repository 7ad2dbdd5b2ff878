/*
 * Bounded parsers for configuration and protocol values. All take (ptr, len)
 * or NUL-terminated input, reject trailing junk, and never overflow.
 */
#ifndef TERN_PARSE_H
#define TERN_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decimal unsigned integer, no sign, no spaces, <= max. 0 ok, -1 bad. */
int parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out);
/* Size in bytes with optional k/m/g suffix (powers of 1024), e.g. "50m". */
int parse_size(const char *s, uint64_t *out);
/* Duration with s/m/h/d suffix (a bare number is seconds) to milliseconds:
 * "90s", "1m", "5d". Must be > 0 unless allow_zero. */
int parse_duration(const char *s, bool allow_zero, int64_t *out_ms);

/* host:port, [v6addr]:port or (when default_port != 0) a bare host.
 * host is written without brackets, NUL terminated, into host[hostcap].
 * Port 1..65535. 0 ok, -1 bad. */
int parse_hostport(const char *s, char *host, size_t hostcap, uint16_t default_port,
    uint16_t *port);

/* Lowercase ASCII in place. */
void str_lower(char *s);
/* ASCII case-insensitive compare of a[alen] and the C string b. */
bool str_ieq(const char *a, size_t alen, const char *b);
/* Is s a syntactically valid DNS domain name (LDH labels, dots, optional
 * trailing dot, <= 253 octets; UTF-8 labels allowed when utf8 is true)? */
bool str_is_domain(const char *s, size_t len, bool utf8);
/* Length of the well-formed UTF-8 sequence (2..4 bytes, RFC 3629: no
 * overlong forms, surrogates or values past U+10FFFF) at s[avail], or 0. */
size_t utf8_seq_len(const unsigned char *s, size_t avail);

#endif

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
int parse_hostport(
    const char *s, char *host, size_t hostcap, uint16_t default_port, uint16_t *port);

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

/* Strict base64 (RFC 4648 §4): whole quads, padding only at the end and
 * canonical (the bits it drops are zero), nothing but the alphabet. Into
 * out[cap]; -1 when malformed or too long. */
int b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len);
/* Append base64 of p[n] to out, without line breaks (OpenSSL's encoder). */
struct buf;
void b64_encode(const void *p, size_t n, struct buf *out);

/* One field of a ';'-separated "name=value" record (DMARC RFC 7489 §6.4,
 * MTA-STS RFC 8461 §3.1, TLS-RPT RFC 8460 §3): name and value with the
 * blanks around them trimmed; has_eq false when the field has no '='
 * (then the whole field is the name). */
struct str_tag {
    const char *name, *val;
    size_t name_len, val_len;
    bool has_eq;
};
/* The next field of p[*i..n) (empty fields skipped): true with *t, false
 * at the end. */
bool str_next_tag(const char *p, size_t n, size_t *i, struct str_tag *t);

#endif

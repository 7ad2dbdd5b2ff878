/*
 * A small, strict JSON reader for what tern itself writes (the control
 * socket's replies, the history journal):
 * objects, arrays, strings (all escapes incl. \uXXXX and surrogate pairs),
 * numbers, true/false/null. One call parses one complete text into a tree
 * the caller owns. Depth, node count and input length are bounded; bytes
 * >= 0x80 inside strings are passed through unchanged.
 */
#ifndef TERN_UTIL_JSON_H
#define TERN_UTIL_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define JSON_DEPTH_MAX 32
#define JSON_NODES_MAX 100000
#define JSON_INPUT_MAX (16u * 1024 * 1024)

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json {
    enum json_type type;
    char *key;   /* owned: the member name when inside an object, else NULL */
    bool b;      /* JSON_BOOL */
    double num;  /* JSON_NUMBER */
    bool is_int; /* JSON_NUMBER without fraction/exponent that fits int64 */
    int64_t i;   /* valid when is_int */
    char *str;   /* owned, NUL terminated (JSON_STRING); may hold NULs from \u0000 */
    size_t str_len;
    struct json *kids; /* owned: array elements or object members */
    size_t n_kids;
};

/* Parse s[len] as one JSON value (surrounding whitespace allowed). Returns
 * 0 and an owned tree in *out, or -1 with a one-line reason appended to err
 * (err may be NULL). */
int json_parse(const char *s, size_t len, struct json **out, struct buf *err);
void json_free(struct json *v); /* NULL is fine */

/* The first member named key of an object; NULL when v is not an object or
 * has no such member. Borrowed from v. */
const struct json *json_get(const struct json *v, const char *key);
/* The string of v, or NULL when v is NULL or not a string. Borrowed. */
const char *json_str(const struct json *v);
/* Integer value of v: 0, or -1 when v is not an integral number. */
int json_int(const struct json *v, int64_t *out);

#endif

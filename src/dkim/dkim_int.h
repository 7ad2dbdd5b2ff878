/*
 * Private to src/dkim: the header section parser and the choice of signed
 * header fields (header.c), the key set layout (key.c), base64 (key.c).
 * Every function here works on borrowed (ptr, len) input it does not keep.
 */
#ifndef TERN_DKIM_INT_H
#define TERN_DKIM_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dkim/dkim.h"

struct evp_pkey_st;

#define DKIM_H_MAX       256  /* entries of h= */
#define DKIM_HLIST_MAX   2000 /* bytes of h= (a signature stays well under 4 KiB) */
#define DKIM_NAME_REPEAT 32   /* instances of one field name signed (bottom-most) */
#define DKIM_LIST_NAMES  16   /* distinct List-* names signed */
#define DKIM_NO_FIELD    SIZE_MAX

/* One header field: [off, off+len) of the section, with its final CRLF. */
struct dkim_field {
    size_t off, len;
    size_t name_len; /* the name, without trailing whitespace */
};

struct dkim_hdr {
    const char *data; /* borrowed: the header section */
    size_t len;
    struct dkim_field *f; /* owned */
    size_t n, cap;
};

/* Split a header section (each field ending in CRLF) into fields. 0 ok;
 * -1 malformed (a line without a colon, a continuation line first, a bad
 * field name). The fields of a parsed hdr must be freed with
 * dkim_hdr_fini even after a failure. */
int dkim_hdr_parse(struct dkim_hdr *h, const char *data, size_t len);
void dkim_hdr_fini(struct dkim_hdr *h);
/* Index of the only field called name, or DKIM_NO_FIELD when there are
 * none; *count gets how many there are. */
size_t dkim_hdr_find(const struct dkim_hdr *h, const char *name, size_t *count);
/* The value of field i (after the colon, before the final CRLF). */
void dkim_hdr_value(const struct dkim_hdr *h, size_t i, const char **v, size_t *n);
/* The signed field set: appends the h= value (lowercase names joined by
 * ':') to hlist and writes the field index to hash for each entry, in the
 * same order, per RFC 6376 §5.4.2 (bottom-up for repeated names;
 * DKIM_NO_FIELD for the extra From entry that oversigns it). Returns the
 * number of entries (at most DKIM_H_MAX). */
size_t dkim_hdr_select(const struct dkim_hdr *h, struct buf *hlist, size_t *order);

/* key.c */
struct dkim_key {
    struct evp_pkey_st *pkey; /* owned (EVP_PKEY); NULL for a remote key */
    enum dkim_alg alg;
    unsigned bits;
    dkim_remote_fn *remote; /* signs through the keys process */
    uint32_t gen, idx;
};

struct dkim_keyset_entry {
    char *domain; /* lowercase */
    char *selector;
    struct dkim_key *key; /* owned */
};

struct dkim_keyset {
    int refs; /* atomic */
    struct dkim_keyset_entry *e;
    size_t n;
};

/* verify.c: a tag of a tag-list (RFC 6376 §3.2), borrowed from its text. */
struct dkim_tag {
    const char *name, *val;
    size_t name_len, val_len; /* the value without surrounding FWS */
};
/* Split p[n] into at most max tags; -1 on bad syntax or a repeated tag. */
int dkim_tag_list(const char *p, size_t n, struct dkim_tag *t, size_t max, size_t *count);
/* Decode base64 (FWS ignored) into out[cap]; -1 when malformed or too long. */
int dkim_b64_decode(const char *p, size_t n, unsigned char *out, size_t cap, size_t *out_len);

/* A parsed key record (RFC 6376 §3.6.1). */
struct dkim_key_record {
    struct evp_pkey_st *key; /* owned by the caller after a success */
    bool testing;            /* t=y */
    bool strict_i;           /* t=s */
    const char *reason;      /* static text after a failure */
};
/* Parse txt[len] for a signature of alg. 0, or -1 with kr->reason. */
int dkim_key_record_parse(
    const char *txt, size_t len, enum dkim_alg alg, struct dkim_key_record *kr);

#endif

/*
 * A hash map from byte-string keys to borrowed pointers (separate chaining,
 * grows at load factor 1). Keys are copied; values are not owned.
 */
#ifndef TERN_MAP_H
#define TERN_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct map;

struct map *map_new(void);
void map_free(struct map *m); /* values are not freed; NULL is fine */
/* Insert or replace. */
void map_put(struct map *m, const void *key, size_t klen, void *val);
void *map_get(const struct map *m, const void *key, size_t klen);
/* Remove; returns the old value or NULL. */
void *map_del(struct map *m, const void *key, size_t klen);
size_t map_count(const struct map *m);
/* Visit every entry (no insert/delete during the walk). */
void map_each(const struct map *m, void (*fn)(const void *key, size_t klen, void *val, void *arg),
    void *arg);

/* Conveniences for C-string and u64 keys. */
#define map_put_str(m, s, v) map_put((m), (s), strlen(s), (v))
#define map_get_str(m, s) map_get((m), (s), strlen(s))
#define map_del_str(m, s) map_del((m), (s), strlen(s))
void map_put_u64(struct map *m, uint64_t k, void *val);
void *map_get_u64(const struct map *m, uint64_t k);
void *map_del_u64(struct map *m, uint64_t k);

#endif

/* map: a string-keyed hash table (chained, power-of-two buckets).
 *
 * The map stores the key pointer it is given, not a copy: the caller keeps
 * the key alive until the entry is deleted (usually the key lives inside
 * the value).  Values are never freed by the map. */
#ifndef REGISTER_MAP_H
#define REGISTER_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct map map_t;

typedef struct {
  const map_t *map;
  size_t bucket;
  void *node, *next;
  uint64_t inserts, deletes; /* the map's counts, for the contract */
} map_iter_t;

map_t *map_new(void);
void map_free(map_t *m);
size_t map_size(const map_t *m);
void *map_get(const map_t *m, const char *key);
/* Inserts or replaces; returns the previous value or NULL. */
void *map_put(map_t *m, const char *key, void *val);
/* Removes; returns the removed value or NULL. */
void *map_del(map_t *m, const char *key);

/* Iteration in no particular order; deleting the entry just returned is
 * allowed, inserting (or deleting another entry) during iteration is not:
 * map_iter_next() asserts it (REGISTER_ASSERT, every build). */
void map_iter_init(map_iter_t *it, const map_t *m);
int map_iter_next(map_iter_t *it, const char **key, void **val);

uint64_t map_hash(const char *s);

#endif

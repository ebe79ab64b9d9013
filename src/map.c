/* map: string-keyed chained hash table with incremental-free iteration. */
#include "map.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

typedef struct node {
  struct node *next;
  const char *key;
  uint64_t hash;
  void *val;
} node_t;

struct map {
  node_t **buckets;
  size_t nbuckets; /* power of two */
  size_t size;
  /* for the iteration contract (asserted in map_iter_next): insertions
   * ever made, deletions ever made and the last node deleted */
  uint64_t inserts, deletes;
  const void *last_deleted;
};

uint64_t map_hash(const char *s) {
  /* FNV-1a, 64 bit: short keys, no adversary with write access to Docker */
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

map_t *map_new(void) {
  map_t *m = xcalloc(1, sizeof *m);
  m->nbuckets = 16;
  m->buckets = xcalloc(m->nbuckets, sizeof *m->buckets);
  return m;
}

void map_free(map_t *m) {
  if (!m) return;
  for (size_t i = 0; i < m->nbuckets; i++) {
    node_t *n = m->buckets[i];
    while (n) {
      node_t *next = n->next;
      free(n);
      n = next;
    }
  }
  free(m->buckets);
  free(m);
}

size_t map_size(const map_t *m) {
  return m->size;
}

static node_t **find(const map_t *m, const char *key, uint64_t h) {
  node_t **pp = &m->buckets[h & (m->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0) return pp;
  return pp;
}

void *map_get(const map_t *m, const char *key) {
  node_t **pp = find(m, key, map_hash(key));
  return *pp ? (*pp)->val : NULL;
}

static void grow(map_t *m) {
  size_t nb = m->nbuckets * 2;
  node_t **b = xcalloc(nb, sizeof *b);
  for (size_t i = 0; i < m->nbuckets; i++) {
    node_t *n = m->buckets[i];
    while (n) {
      node_t *next = n->next;
      n->next = b[n->hash & (nb - 1)];
      b[n->hash & (nb - 1)] = n;
      n = next;
    }
  }
  free(m->buckets);
  m->buckets = b;
  m->nbuckets = nb;
}

void *map_put(map_t *m, const char *key, void *val) {
  uint64_t h = map_hash(key);
  node_t **pp = find(m, key, h);
  if (*pp) {
    void *old = (*pp)->val;
    (*pp)->val = val;
    (*pp)->key = key;
    return old;
  }
  node_t *n = xmalloc(sizeof *n);
  n->next = NULL;
  n->key = key;
  n->hash = h;
  n->val = val;
  *pp = n;
  m->inserts++;
  if (++m->size > m->nbuckets) grow(m);
  return NULL;
}

void *map_del(map_t *m, const char *key) {
  node_t **pp = find(m, key, map_hash(key));
  node_t *n = *pp;
  if (!n) return NULL;
  void *val = n->val;
  *pp = n->next;
  m->deletes++;
  m->last_deleted = n;
  free(n);
  m->size--;
  return val;
}

void map_iter_init(map_iter_t *it, const map_t *m) {
  it->map = m;
  it->inserts = m->inserts;
  it->deletes = m->deletes;
  it->bucket = 0;
  it->node = NULL;
  it->next = m->nbuckets ? m->buckets[0] : NULL;
}

int map_iter_next(map_iter_t *it, const char **key, void **val) {
  const map_t *m = it->map;
  /* the contract: nothing inserted since the iteration began (a rehash
   * would move the nodes), and nothing deleted but the entry just
   * returned (the next one is held) */
  REGISTER_ASSERT(m->inserts == it->inserts);
  REGISTER_ASSERT(m->deletes == it->deletes ||
                  (m->deletes == it->deletes + 1 &&
                   m->last_deleted == it->node && it->node));
  it->deletes = m->deletes;
  node_t *n = it->next;
  while (!n) {
    if (++it->bucket >= m->nbuckets) return 0;
    n = m->buckets[it->bucket];
  }
  it->node = n;
  it->next = n->next;
  if (key) *key = n->key;
  if (val) *val = n->val;
  return 1;
}

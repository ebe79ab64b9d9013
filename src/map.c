/* map: string-keyed hash table, open addressing with linear probing.
 *
 * The entries live in one array of slots (no allocation per entry: a map
 * of 10,000 containers was 10,000 nodes of 48 bytes with malloc's
 * overhead, plus the bucket array).  A deleted entry leaves a tombstone,
 * so that deleting the entry an iteration just returned never moves
 * another; tombstones go at the next rehash.  The array grows when live
 * entries and tombstones fill 3/4 of it, and shrinks (only in map_put(),
 * never while an iteration may be deleting) when live entries fill less
 * than 1/8. */
#include "map.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define MIN_SLOTS 16

typedef struct {
  const char *key; /* NULL: empty; TOMB: deleted */
  void *val;
  uint64_t hash;
} slot_t;

static const char tomb_mark;
#define TOMB (&tomb_mark)

struct map {
  slot_t *slots;
  size_t nslots; /* power of two */
  size_t size;   /* live entries */
  size_t ntombs; /* tombstones */
  /* for the iteration contract (asserted in map_iter_next): insertions
   * ever made, deletions ever made and the last slot deleted */
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

/* FNV-1a's low bits mix poorly for keys that differ only at the end
 * (container ids under one prefix): fold the high half in. */
static size_t home(const map_t *m, uint64_t h) {
  return (size_t)(h ^ (h >> 29) ^ (h >> 47)) & (m->nslots - 1);
}

map_t *map_new(void) {
  map_t *m = xcalloc(1, sizeof *m);
  m->nslots = MIN_SLOTS;
  m->slots = xcalloc(m->nslots, sizeof *m->slots);
  return m;
}

void map_free(map_t *m) {
  if (!m) return;
  free(m->slots);
  free(m);
}

size_t map_size(const map_t *m) {
  return m->size;
}

/* The slot holding key, or NULL. */
static slot_t *find(const map_t *m, const char *key, uint64_t h) {
  size_t mask = m->nslots - 1;
  for (size_t i = home(m, h);; i = (i + 1) & mask) {
    slot_t *s = &m->slots[i];
    if (!s->key) return NULL;
    if (s->key != TOMB && s->hash == h && strcmp(s->key, key) == 0) return s;
  }
}

void *map_get(const map_t *m, const char *key) {
  slot_t *s = find(m, key, map_hash(key));
  return s ? s->val : NULL;
}

/* Into an array of n slots (a power of two, more than 4/3 of the live
 * entries): the tombstones go. */
static void rehash(map_t *m, size_t n) {
  slot_t *old = m->slots;
  size_t nold = m->nslots;
  m->slots = xcalloc(n, sizeof *m->slots);
  m->nslots = n;
  m->ntombs = 0;
  for (size_t i = 0; i < nold; i++) {
    if (!old[i].key || old[i].key == TOMB) continue;
    size_t j = home(m, old[i].hash);
    while (m->slots[j].key)
      j = (j + 1) & (n - 1);
    m->slots[j] = old[i];
  }
  free(old);
}

/* Room for one more entry: at most 3/4 of the slots used (live or
 * tombstone) after it, and at least 1/8 live. */
static void make_room(map_t *m) {
  size_t want = m->size + 1;
  size_t n = m->nslots;
  if ((want + m->ntombs) * 4 <= n * 3 && (want * 8 >= n || n == MIN_SLOTS))
    return;
  n = MIN_SLOTS;
  while (n < 2 * want)
    n *= 2; /* at most half full: room to grow before the next rehash */
  rehash(m, n);
}

void *map_put(map_t *m, const char *key, void *val) {
  uint64_t h = map_hash(key);
  slot_t *s = find(m, key, h);
  if (s) {
    void *old = s->val;
    s->val = val;
    s->key = key;
    return old;
  }
  make_room(m);
  size_t mask = m->nslots - 1, i = home(m, h);
  while (m->slots[i].key && m->slots[i].key != TOMB)
    i = (i + 1) & mask;
  s = &m->slots[i];
  if (s->key == TOMB) m->ntombs--;
  s->key = key;
  s->val = val;
  s->hash = h;
  m->inserts++;
  m->size++;
  return NULL;
}

void *map_del(map_t *m, const char *key) {
  slot_t *s = find(m, key, map_hash(key));
  if (!s) return NULL;
  void *val = s->val;
  s->key = TOMB;
  s->val = NULL;
  m->ntombs++;
  m->size--;
  m->deletes++;
  m->last_deleted = s;
  return val;
}

void map_iter_init(map_iter_t *it, const map_t *m) {
  it->map = m;
  it->inserts = m->inserts;
  it->deletes = m->deletes;
  it->bucket = 0; /* the next slot to look at */
  it->node = NULL;
  it->next = NULL;
}

int map_iter_next(map_iter_t *it, const char **key, void **val) {
  const map_t *m = it->map;
  /* the contract: nothing inserted since the iteration began (a rehash
   * would move the slots), and nothing deleted but the entry just
   * returned */
  REGISTER_ASSERT(m->inserts == it->inserts);
  REGISTER_ASSERT(m->deletes == it->deletes ||
                  (m->deletes == it->deletes + 1 &&
                   m->last_deleted == it->node && it->node));
  it->deletes = m->deletes;
  for (; it->bucket < m->nslots; it->bucket++) {
    slot_t *s = &m->slots[it->bucket];
    if (!s->key || s->key == TOMB) continue;
    it->bucket++;
    it->node = s;
    if (key) *key = s->key;
    if (val) *val = s->val;
    return 1;
  }
  return 0;
}

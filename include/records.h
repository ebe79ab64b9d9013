/* records: the keys and values one container produces (a policy's output,
 * the reconciler's input).  Plain data: it knows nothing of Lua or etcd. */
#ifndef REGISTER_RECORDS_H
#define REGISTER_RECORDS_H

#include <stddef.h>

typedef struct {
  char *key;
  char *value;
  size_t value_len;
} record_t;

/* Records one container produced, sorted by key.  Owns its strings. */
typedef struct {
  record_t *v;
  size_t n, cap;
  size_t rejected; /* records dropped by validation (logged) */
} records_t;

void records_init(records_t *r);
/* Frees the strings and the array; r is empty (and reusable) after. */
void records_free(records_t *r);
/* Appends copies of key and value (vlen bytes). */
void records_add(records_t *r, const char *key, const char *value, size_t vlen);

#endif

/* records: a growable array of owned key/value pairs. */
#include "records.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

void records_init(records_t *r) {
  memset(r, 0, sizeof *r);
}

void records_free(records_t *r) {
  for (size_t i = 0; i < r->n; i++) {
    free(r->v[i].key);
    free(r->v[i].value);
  }
  free(r->v);
  records_init(r);
}

void records_add(records_t *r, const char *key, const char *value,
                 size_t vlen) {
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 4;
    r->v = xrealloc(r->v, r->cap * sizeof *r->v);
  }
  r->v[r->n].key = xstrdup(key);
  r->v[r->n].value = xstrndup(value, vlen);
  r->v[r->n].value_len = vlen;
  r->n++;
}

/* etcd_listing: a listing (keys, values, leases, v2 directories) that a
 * reply's pages fill, with owned copies; the request machinery hands it to
 * the caller when the last page is in. */
#include "etcd_op.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void listing_add(listing_t *l, const char *key, size_t klen, const char *value,
                 size_t vlen, long ttl, int64_t lease) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    l->kvs = xrealloc(l->kvs, l->cap * sizeof *l->kvs);
    l->leases = xrealloc(l->leases, l->cap * sizeof *l->leases);
  }
  l->kvs[l->n].key = xstrndup(key, klen);
  l->kvs[l->n].value = xstrndup(value, vlen);
  l->kvs[l->n].value_len = vlen;
  l->kvs[l->n].ttl = ttl;
  l->leases[l->n] = lease;
  l->n++;
}

void listing_add_dir(listing_t *l, const char *key) {
  if (l->ndirs == l->dcap) {
    l->dcap = l->dcap ? l->dcap * 2 : 8;
    l->dirs = xrealloc(l->dirs, l->dcap * sizeof *l->dirs);
  }
  l->dirs[l->ndirs++] = xstrdup(key);
}

void listing_free(listing_t *l) {
  for (size_t i = 0; i < l->n; i++) {
    free((char *)(uintptr_t)l->kvs[i].key);
    free((char *)(uintptr_t)l->kvs[i].value);
  }
  for (size_t i = 0; i < l->ndirs; i++)
    free(l->dirs[i]);
  free(l->kvs);
  free(l->leases);
  free(l->dirs);
  memset(l, 0, sizeof *l);
}

/* etcd_listing: a listing (keys, values, leases, v2 directories) that a
 * reply's pages fill, with owned copies; the request machinery hands it to
 * the caller when the last page is in. */
#include "etcd_op.h"
#include "json.h"
#include "log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void listing_add(listing_t *l, const char *key, size_t klen, const char *value,
                 size_t vlen, long ttl, int64_t lease, int64_t mod_revision) {
  /* the callers pass pointers they checked (the reply's contents are
   * theirs to judge); the array has room for what it counts */
  REGISTER_ASSERT(l->n <= l->cap && key && value);
  if (memchr(key, '\0', klen)) {
    /* no C string can hold it: cut at the NUL it would pass for another
     * key (and a listing's owner would take it for its own, or render
     * it); left out, as a key nobody here wrote.  One line per listing
     * (the rest are counted at its end): a writer of many such keys does
     * not flood the log */
    if (l->nul_keys++) return;
    buf_t k;
    buf_init(&k);
    util_clean_text(&k, key, klen, 200, 0);
    log_warn("etcd: a key with a NUL byte is left out of the listing: %s",
             k.data);
    buf_free(&k);
    return;
  }
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    l->kvs = xrealloc(l->kvs, l->cap * sizeof *l->kvs);
    l->leases = xrealloc(l->leases, l->cap * sizeof *l->leases);
  }
  l->kvs[l->n].key = xstrndup(key, klen);
  l->kvs[l->n].value = xstrndup(value, vlen);
  l->kvs[l->n].value_len = vlen;
  l->kvs[l->n].ttl = ttl;
  l->kvs[l->n].mod_revision = mod_revision;
  l->leases[l->n] = lease;
  l->n++;
}

void listing_add_dir(listing_t *l, const char *key) {
  REGISTER_ASSERT(l->ndirs <= l->dcap && key);
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

void members_read(etcd_op_t *op, const json_value_t *root) {
  const json_value_t *ms = json_get(root, "members");
  if (!ms || ms->type != JSON_ARRAY) return;
  for (const json_value_t *m = ms->u.child; m; m = m->next) {
    /* a learner refuses most requests; a member added but not started
     * yet has no client URLs */
    const json_value_t *learner = json_get(m, "isLearner");
    if (learner && learner->type == JSON_BOOL && learner->u.boolean) continue;
    const json_value_t *urls = json_get(m, "clientURLs");
    if (!urls || urls->type != JSON_ARRAY) continue;
    for (const json_value_t *u = urls->u.child; u; u = u->next) {
      if (u->type != JSON_STRING || !u->len) continue;
      op->urls = xrealloc(op->urls, (op->nurls + 1) * sizeof *op->urls);
      op->urls[op->nurls++] = xstrndup(u->u.str, u->len);
    }
  }
}

/* etcd_double: an etcd that the reconciler's unit tests hold in their hand.
 *
 * It defines the etcd_* functions reconcile calls; linked before
 * register_core, it stands in for etcd.c (which these binaries never pull
 * in).  A request is recorded and stays open until the test ends it with
 * op_end() (from the loop, as etcd.c delivers every result: never inside
 * the reconcile call that started it).  The test decides when and how each
 * request ends, so orders of events that a real etcd gives only by chance
 * are exact.
 *
 * The double keeps a real store: key -> value (and, for v2, the directories
 * that puts create).  A request that ends OK is applied to the store when it
 * ends, unless the test applied it earlier with op_apply() (etcd did the
 * work; the answer is still on its way, and may yet be a failure).  A write
 * that ends with a failure and was never applied changes nothing.
 *
 *   v3 (etcd_t.txn = 1): transactions of puts and deletes, all or nothing;
 *     a put hangs on the lease when etcd_t.ttl > 0 (dbl_lease_lost() drops
 *     every such key); a delete of a missing key is NOT_FOUND, in a
 *     transaction it is OK.
 *   v2 (etcd_t.txn = 0): single puts, refreshes and deletes; a put creates
 *     its parent directories, which stay when their last key goes; an empty
 *     directory can be deleted (NOT_EMPTY otherwise); a listing names the
 *     empty directories under the prefix (the prefix itself included).
 *
 * Include it in one translation unit of a test binary. */
#ifndef REGISTER_TEST_ETCD_DOUBLE_H
#define REGISTER_TEST_ETCD_DOUBLE_H

#include <stdlib.h>
#include <string.h>

#include "etcd.h"
#include "test.h"

struct etcd {
  int txn;  /* 1: v3 (transactions, a lease); 0: v2 (directories, refresh) */
  long ttl; /* v3: > 0, puts hang on the lease */
};

struct etcd_op {
  const char *kind; /* "list", "txn", "put", "refresh", "delete",
                     * "delete_dir", "delete_prefix" */
  char **keys;      /* what it writes, deletes or lists, in order */
  char **values;    /* per key: the value a put writes; NULL: a delete */
  size_t *vlens;
  size_t nkeys;
  long ttl; /* put, refresh */
  const etcd_t *e;
  unsigned id; /* 1, 2, ... in the order the requests were made */
  etcd_done_cb done;
  etcd_list_cb list;
  void *data;
  int cancelled, ended;
  int applied;              /* etcd has done it (op_apply) */
  etcd_status_t applied_st; /* and what it says about it */
  unsigned char *removed;   /* per key: the delete removed a key */
  unsigned long born;       /* dbl_now when it was made */
  unsigned long user;       /* for the test */
};

/* The test's clock, stamped on each request made (etcd_op_t.born). */
static unsigned long dbl_now;

/* Every request since dbl_reset(), oldest first (ended ones too). */
static etcd_op_t **ops;
static size_t nops, ops_cap;

typedef struct {
  char *key;
  char *value;
  size_t vlen;
  int leased; /* v3: hangs on the lease; v2: has a TTL */
} dbl_kv_t;

static dbl_kv_t *store;
static size_t nstore, store_cap;
static char **store_dirs; /* v2 directories */
static size_t nstore_dirs, store_dirs_cap;

/* The calls a test makes of the double: not inlined, so that a test may
 * use what open_op() returns without a NULL check where it knows better
 * (inlined, the compiler sees the NULL path: -Wnull-dereference). */
#define DBL_API static __attribute__((unused, noinline))

/* Called after a request was applied to the store (NULL: nothing). */
static void (*dbl_on_apply)(etcd_op_t *op);

/* ---- the store ---- */

static inline dbl_kv_t *store_get(const char *key) {
  for (size_t i = 0; i < nstore; i++)
    if (strcmp(store[i].key, key) == 0) return &store[i];
  return NULL;
}

static inline int store_is_dir(const char *dir) {
  for (size_t i = 0; i < nstore_dirs; i++)
    if (strcmp(store_dirs[i], dir) == 0) return 1;
  return 0;
}

/* Is s strictly under dir ("dir/...")? */
static inline int dbl_under(const char *s, const char *dir) {
  size_t n = strlen(dir);
  return strncmp(s, dir, n) == 0 && s[n] == '/';
}

/* Every parent directory of key ("/a/b/c": "/a", "/a/b"). */
static inline void store_mkdirs(const char *key) {
  for (const char *p = strchr(key + 1, '/'); p; p = strchr(p + 1, '/')) {
    char *dir = strndup(key, (size_t)(p - key));
    if (store_is_dir(dir)) {
      free(dir);
      continue;
    }
    if (nstore_dirs == store_dirs_cap) {
      store_dirs_cap = store_dirs_cap ? store_dirs_cap * 2 : 16;
      store_dirs = realloc(store_dirs, store_dirs_cap * sizeof *store_dirs);
      ASSERT(store_dirs);
    }
    store_dirs[nstore_dirs++] = dir;
  }
}

/* key = value (leased: hangs on the lease / has a TTL). */
static inline void store_set(const char *key, const char *value, size_t vlen,
                             int leased) {
  dbl_kv_t *kv = store_get(key);
  if (!kv) {
    if (nstore == store_cap) {
      store_cap = store_cap ? store_cap * 2 : 16;
      store = realloc(store, store_cap * sizeof *store);
      ASSERT(store);
    }
    kv = &store[nstore++];
    kv->key = strdup(key);
    kv->value = NULL;
  }
  free(kv->value);
  kv->value = malloc(vlen + 1);
  ASSERT(kv->value);
  memcpy(kv->value, value, vlen);
  kv->value[vlen] = '\0';
  kv->vlen = vlen;
  kv->leased = leased;
  store_mkdirs(key);
}

/* A key from before the test (value "v", no lease). */
static inline void store_put(const char *key) {
  store_set(key, "v", 1, 0);
}

/* Removes key; 1 if it was there. */
static inline int store_del(const char *key) {
  dbl_kv_t *kv = store_get(key);
  if (!kv) return 0;
  free(kv->key);
  free(kv->value);
  *kv = store[--nstore];
  return 1;
}

static inline void store_rmdir_at(size_t i) {
  free(store_dirs[i]);
  store_dirs[i] = store_dirs[--nstore_dirs];
}

/* Does anything (a key, a directory) live under dir? */
static inline int store_dir_has_children(const char *dir) {
  for (size_t i = 0; i < nstore; i++)
    if (dbl_under(store[i].key, dir)) return 1;
  for (size_t i = 0; i < nstore_dirs; i++)
    if (dbl_under(store_dirs[i], dir)) return 1;
  return 0;
}

/* The lease expired: every key on it goes.  Returns how many. */
static inline size_t dbl_lease_lost(void) {
  size_t n = 0;
  for (size_t i = nstore; i-- > 0;) {
    if (!store[i].leased) continue;
    store_del(store[i].key);
    n++;
  }
  return n;
}

/* ---- requests ---- */

static inline void dbl_op_free(etcd_op_t *op) {
  for (size_t i = 0; i < op->nkeys; i++) {
    free(op->keys[i]);
    free(op->values[i]);
  }
  free(op->keys);
  free(op->values);
  free(op->vlens);
  free(op->removed);
  free(op);
}

/* Forgets every request and empties the store (the reconciler that holds
 * requests must be freed first). */
static inline void dbl_reset(void) {
  for (size_t i = 0; i < nops; i++)
    dbl_op_free(ops[i]);
  nops = 0;
  while (nstore)
    store_del(store[0].key);
  while (nstore_dirs)
    store_rmdir_at(0);
}

static inline void op_add_key(etcd_op_t *op, const char *key, const char *value,
                              size_t vlen) {
  op->keys = realloc(op->keys, (op->nkeys + 1) * sizeof *op->keys);
  op->values = realloc(op->values, (op->nkeys + 1) * sizeof *op->values);
  op->vlens = realloc(op->vlens, (op->nkeys + 1) * sizeof *op->vlens);
  op->removed = realloc(op->removed, op->nkeys + 1);
  ASSERT(op->keys && op->values && op->vlens && op->removed);
  op->keys[op->nkeys] = strdup(key);
  op->values[op->nkeys] = NULL;
  if (value) {
    op->values[op->nkeys] = malloc(vlen + 1);
    ASSERT(op->values[op->nkeys]);
    memcpy(op->values[op->nkeys], value, vlen);
    op->values[op->nkeys][vlen] = '\0';
  }
  op->vlens[op->nkeys] = value ? vlen : 0;
  op->removed[op->nkeys] = 0;
  op->nkeys++;
}

/* Records a request (key: what it writes, deletes or lists; NULL none). */
static inline etcd_op_t *op_add(const etcd_t *e, const char *kind,
                                const char *key, const char *value, size_t vlen,
                                etcd_done_cb done, etcd_list_cb list,
                                void *data) {
  etcd_op_t *op = calloc(1, sizeof *op);
  ASSERT(op);
  op->kind = kind;
  op->e = e;
  op->done = done;
  op->list = list;
  op->data = data;
  op->born = dbl_now;
  if (key) op_add_key(op, key, value, vlen);
  if (nops == ops_cap) {
    ops_cap = ops_cap ? ops_cap * 2 : 64;
    ops = realloc(ops, ops_cap * sizeof *ops);
    ASSERT(ops);
  }
  ops[nops++] = op;
  op->id = (unsigned)nops;
  return op;
}

etcd_op_t *etcd_put(etcd_t *e, const char *key, const char *value, size_t vlen,
                    long ttl, etcd_done_cb cb, void *data) {
  etcd_op_t *op = op_add(e, "put", key, value, vlen, cb, NULL, data);
  op->ttl = ttl;
  return op;
}

etcd_op_t *etcd_refresh(etcd_t *e, const char *key, long ttl, etcd_done_cb cb,
                        void *data) {
  etcd_op_t *op = op_add(e, "refresh", key, NULL, 0, cb, NULL, data);
  op->ttl = ttl;
  return op;
}

etcd_op_t *etcd_delete(etcd_t *e, const char *key, etcd_done_cb cb,
                       void *data) {
  return op_add(e, "delete", key, NULL, 0, cb, NULL, data);
}

etcd_op_t *etcd_delete_prefix(etcd_t *e, const char *prefix, etcd_done_cb cb,
                              void *data) {
  return op_add(e, "delete_prefix", prefix, NULL, 0, cb, NULL, data);
}

etcd_op_t *etcd_delete_dir(etcd_t *e, const char *key, etcd_done_cb cb,
                           void *data) {
  return op_add(e, "delete_dir", key, NULL, 0, cb, NULL, data);
}

etcd_op_t *etcd_list(etcd_t *e, const char *prefix, etcd_list_cb cb,
                     void *data) {
  return op_add(e, "list", prefix, NULL, 0, NULL, cb, data);
}

etcd_op_t *etcd_txn(etcd_t *e, const etcd_txn_item_t *items, size_t n,
                    etcd_done_cb cb, void *data) {
  ASSERT(e->txn);
  ASSERT(n >= 1 && n <= ETCD_TXN_MAX);
  etcd_op_t *op = op_add(e, "txn", NULL, NULL, 0, cb, NULL, data);
  for (size_t i = 0; i < n; i++) {
    ASSERT(items[i].is_delete || items[i].value);
    op_add_key(op, items[i].key, items[i].is_delete ? NULL : items[i].value,
               items[i].vlen);
  }
  return op;
}

int etcd_has_txn(const etcd_t *e) {
  return e->txn;
}
int etcd_has_dirs(const etcd_t *e) {
  return !e->txn;
}
int etcd_has_key_refresh(const etcd_t *e) {
  return !e->txn;
}
void etcd_cancel(etcd_op_t *op) {
  ASSERT(!op->ended && !op->cancelled);
  op->cancelled = 1;
}

static inline int dbl_is_delete(const etcd_op_t *op, size_t i) {
  return strcmp(op->kind, "delete") == 0 ||
         (strcmp(op->kind, "txn") == 0 && !op->values[i]);
}

/* etcd does what op asks (once), and remembers what it would answer. */
static inline void op_apply(etcd_op_t *op) {
  ASSERT(!op->ended && !op->cancelled && !op->list);
  if (op->applied) return;
  op->applied = 1;
  etcd_status_t st = ETCD_OK;
  const char *k = op->nkeys ? op->keys[0] : NULL;
  int v3 = op->e->txn;
  if (strcmp(op->kind, "txn") == 0) {
    for (size_t i = 0; i < op->nkeys; i++) {
      if (op->values[i])
        store_set(op->keys[i], op->values[i], op->vlens[i], op->e->ttl > 0);
      else
        op->removed[i] = (unsigned char)store_del(op->keys[i]);
    }
  } else if (strcmp(op->kind, "put") == 0) {
    store_set(k, op->values[0], op->vlens[0],
              v3 ? op->e->ttl > 0 : op->ttl > 0);
  } else if (strcmp(op->kind, "refresh") == 0) {
    dbl_kv_t *kv = store_get(k);
    if (kv)
      kv->leased = op->ttl > 0;
    else
      st = ETCD_NOT_FOUND;
  } else if (strcmp(op->kind, "delete") == 0) {
    op->removed[0] = (unsigned char)store_del(k);
    if (!op->removed[0]) st = ETCD_NOT_FOUND;
  } else if (strcmp(op->kind, "delete_dir") == 0) {
    st = ETCD_NOT_FOUND;
    for (size_t i = 0; i < nstore_dirs; i++) {
      if (strcmp(store_dirs[i], k) != 0) continue;
      if (store_dir_has_children(k)) {
        st = ETCD_NOT_EMPTY;
      } else {
        store_rmdir_at(i);
        st = ETCD_OK;
      }
      break;
    }
  } else if (strcmp(op->kind, "delete_prefix") == 0) {
    for (size_t i = nstore; i-- > 0;)
      if (dbl_under(store[i].key, k)) store_del(store[i].key);
    for (size_t i = nstore_dirs; i-- > 0;)
      if (dbl_under(store_dirs[i], k) || strcmp(store_dirs[i], k) == 0)
        store_rmdir_at(i);
  } else {
    FAIL("the double cannot apply a %s", op->kind);
  }
  op->applied_st = st;
  if (dbl_on_apply) dbl_on_apply(op);
}

static inline int dbl_kv_cmp(const void *a, const void *b) {
  return strcmp(((const etcd_kv_t *)a)->key, ((const etcd_kv_t *)b)->key);
}

/* Ends op now, as etcd would: st ETCD_OK applies it (unless op_apply()
 * did) and answers what etcd says (a list lists the store); any other st
 * is the answer, whether or not etcd applied it.  Call it from the loop,
 * never inside a reconcile call. */
DBL_API void op_end(etcd_op_t *op, etcd_status_t st) {
  ASSERT(op); /* the request the test means to end exists */
  ASSERT(!op->ended && !op->cancelled);
  if (op->list) {
    op->ended = 1;
    etcd_result_t res = {st, st == ETCD_OK ? NULL : "the double says no", 0, 0};
    const char *prefix = op->keys[0];
    etcd_kv_t *kvs = calloc(nstore + 1, sizeof *kvs);
    const char **dirs = calloc(nstore_dirs + 1, sizeof *dirs);
    ASSERT(kvs && dirs);
    size_t n = 0, nd = 0;
    for (size_t i = 0; st == ETCD_OK && i < nstore; i++)
      if (dbl_under(store[i].key, prefix))
        kvs[n++] = (etcd_kv_t){store[i].key, store[i].value, store[i].vlen,
                               store[i].leased ? 30 : 0, 0};
    qsort(kvs, n, sizeof *kvs, dbl_kv_cmp);
    for (size_t i = 0; st == ETCD_OK && !op->e->txn && i < nstore_dirs; i++)
      if ((dbl_under(store_dirs[i], prefix) ||
           strcmp(store_dirs[i], prefix) == 0) &&
          !store_dir_has_children(store_dirs[i]))
        dirs[nd++] = store_dirs[i];
    op->list(op->data, &res, kvs, n, (const char *const *)dirs, nd);
    free(kvs);
    free(dirs);
    return;
  }
  if (st == ETCD_OK) {
    op_apply(op);
    st = op->applied_st;
  }
  op->ended = 1;
  etcd_result_t res = {st, st == ETCD_OK ? NULL : "the double says no", 0, 0};
  op->done(op->data, &res);
}

/* The newest op of a kind that has not ended, or NULL. */
DBL_API etcd_op_t *open_op(const char *kind) {
  for (size_t i = nops; i-- > 0;)
    if (!ops[i]->ended && !ops[i]->cancelled && strcmp(ops[i]->kind, kind) == 0)
      return ops[i];
  return NULL;
}

#endif

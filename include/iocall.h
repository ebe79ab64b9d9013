/* iocall: a hook's I/O request and its answer as plain data, the seam
 * between the Lua side (luaio.c, in the policy worker) and the side that
 * does the I/O (hookio.c, in the daemon); wire.c carries both between
 * the two processes.  Types only. */
#ifndef REGISTER_IOCALL_H
#define REGISTER_IOCALL_H

#include <stddef.h>
#include <stdint.h>

typedef enum { IOCALL_HTTP, IOCALL_ETCD_GET, IOCALL_ETCD_LIST } iocall_kind_t;

/* What a script asked for.  Strings belong to the caller. */
typedef struct {
  iocall_kind_t kind;
  const char *method, *url;   /* http */
  const char *const *headers; /* http: "name: value", NULL-terminated */
  const char *body;           /* http: NULL: none */
  size_t body_len;
  long timeout_ms; /* http */
  const char *key; /* etcd: the key, or the directory/prefix to list */
} iocall_t;

typedef struct {
  const char *key;
  const char *value;
  size_t value_len;
} iocall_kv_t;

/* The answer.  Strings belong to the caller. */
typedef struct {
  const char *error; /* non-NULL: it failed (the script gets nil, error) */
  long status;       /* http */
  const char *body, *headers; /* http: raw header block */
  size_t body_len, headers_len;
  const iocall_kv_t *kvs; /* etcd: the list, or the key (n 0: no such key) */
  size_t n;
} iocall_answer_t;

#endif

/* Shared by etcd.c and its wire formats (etcd_v2.c); not a public API. */
#ifndef REGISTER_ETCD_INTERNAL_H
#define REGISTER_ETCD_INTERNAL_H

#include "etcd.h"
#include "util.h"

typedef enum {
  OP_PUT,
  OP_REFRESH,
  OP_DELETE,
  OP_DELETE_DIR,
  OP_LIST,
  OP_GET
} op_kind_t;

struct etcd_op {
  etcd_t *e;
  op_kind_t kind;
  /* the wire request, built by the backend */
  const char *method;
  char *path;         /* appended to the endpoint URL */
  buf_t body;
  const char *content_type;
  /* state */
  size_t ep;          /* endpoint of the current attempt */
  size_t attempts;
  http_req_t *req;
  etcd_done_cb done;
  etcd_list_cb list;
  void *data;
  int listed;         /* the backend has called list() already */
  etcd_op_t *prev, *next;
};

/* v2 wire format */
void etcd_v2_build(etcd_op_t *op, const char *key, const char *value,
                   size_t vlen, long ttl);
/* Turns a reply into a result.  A successful OP_LIST calls op->list
 * itself and sets op->listed.  Returns 1 when the reply says "try another
 * endpoint". */
int etcd_v2_reply(etcd_op_t *op, const http_resp_t *r, etcd_result_t *res,
                  char *err, size_t errlen);

#endif

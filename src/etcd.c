/* etcd: requests, endpoint failover and cancellation; the wire formats
 * live in etcd_v2.c (and etcd_v3.c). */
#include "etcd_internal.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct etcd {
  uv_loop_t *loop;
  http_t *http;
  char **endpoints;
  size_t n;
  size_t current;     /* the endpoint that answered last */
  etcd_api_t api;
  http_tls_t tls;      /* points at the owned copies below */
  char *tls_files[3];
  int use_tls;
  char *user;
  long timeout_ms;
  etcd_op_t *ops;     /* outstanding operations */
  size_t pending;
};

static int send_op(etcd_op_t *op);

static void op_free(etcd_op_t *op) {
  etcd_t *e = op->e;
  if (op->prev) op->prev->next = op->next;
  else e->ops = op->next;
  if (op->next) op->next->prev = op->prev;
  e->pending--;
  free(op->path);
  buf_free(&op->body);
  free(op);
}

static void op_done(http_req_t *req, const http_resp_t *r, void *data) {
  (void)req;
  etcd_op_t *op = data;
  etcd_t *e = op->e;
  op->req = NULL;
  char err[300] = "";
  etcd_result_t res = {ETCD_OK, NULL};
  int next;
  if (r->error) {
    snprintf(err, sizeof err, "%s: %s", e->endpoints[op->ep], r->errmsg);
    res.status = ETCD_UNAVAILABLE;
    next = 1;
  } else {
    next = etcd_v2_reply(op, r, &res, err, sizeof err);
    if (op->listed) {
      e->current = op->ep;
      op_free(op);
      return;
    }
  }
  if (next && ++op->attempts < e->n) {
    log_debug("etcd: %s; trying the next endpoint", err);
    op->ep = (op->ep + 1) % e->n;
    if (send_op(op) == 0) return;
    snprintf(err, sizeof err, "cannot start an HTTP request");
    res.status = ETCD_UNAVAILABLE;
  }
  if (!next) e->current = op->ep;
  else if (op->attempts > 1)
    snprintf(err + strlen(err), sizeof err - strlen(err),
             " (all %zu endpoints failed)", e->n);
  if (res.status != ETCD_OK) res.error = err;
  if (op->list) op->list(op->data, &res, NULL, 0, NULL, 0);
  else if (op->done) op->done(op->data, &res);
  op_free(op);
}

/* Returns -1 if curl refused the request (nothing was sent). */
static int send_op(etcd_op_t *op) {
  etcd_t *e = op->e;
  char *url = xasprintf("%s%s", e->endpoints[op->ep], op->path);
  char ctype[80];
  const char *headers[2] = {NULL, NULL};
  if (op->content_type) {
    snprintf(ctype, sizeof ctype, "Content-Type: %s", op->content_type);
    headers[0] = ctype;
  }
  http_opts_t o = {0};
  o.method = op->method;
  o.url = url;
  o.headers = headers;
  o.body = op->body.data;
  o.body_len = op->body.len;
  o.timeout_ms = op->kind == OP_LIST ? e->timeout_ms * 6 : e->timeout_ms;
  o.connect_timeout_ms = 2000;
  o.tls = e->use_tls ? &e->tls : NULL;
  o.userpwd = e->user;
  o.on_done = op_done;
  o.data = op;
  op->req = http_request(e->http, &o);
  free(url);
  return op->req ? 0 : -1;
}

static etcd_op_t *op_new(etcd_t *e, op_kind_t kind, void *data) {
  etcd_op_t *op = xcalloc(1, sizeof *op);
  op->e = e;
  op->kind = kind;
  op->data = data;
  op->ep = e->current;
  buf_init(&op->body);
  op->next = e->ops;
  if (e->ops) e->ops->prev = op;
  e->ops = op;
  e->pending++;
  return op;
}

static etcd_op_t *start(etcd_t *e, op_kind_t kind, const char *key,
                        const char *value, size_t vlen, long ttl,
                        etcd_done_cb cb, etcd_list_cb lcb, void *data) {
  etcd_op_t *op = op_new(e, kind, data);
  op->done = cb;
  op->list = lcb;
  etcd_v2_build(op, key, value, vlen, ttl);
  if (send_op(op) < 0) { /* as libuv: an error return means no callback */
    op_free(op);
    return NULL;
  }
  return op;
}

etcd_op_t *etcd_put(etcd_t *e, const char *key, const char *value,
                    size_t vlen, long ttl, etcd_done_cb cb, void *data) {
  return start(e, OP_PUT, key, value, vlen, ttl, cb, NULL, data);
}

etcd_op_t *etcd_refresh(etcd_t *e, const char *key, long ttl, etcd_done_cb cb,
                        void *data) {
  return start(e, OP_REFRESH, key, NULL, 0, ttl, cb, NULL, data);
}

etcd_op_t *etcd_delete(etcd_t *e, const char *key, etcd_done_cb cb,
                       void *data) {
  return start(e, OP_DELETE, key, NULL, 0, 0, cb, NULL, data);
}

etcd_op_t *etcd_delete_dir(etcd_t *e, const char *key, etcd_done_cb cb,
                           void *data) {
  return start(e, OP_DELETE_DIR, key, NULL, 0, 0, cb, NULL, data);
}

etcd_op_t *etcd_list(etcd_t *e, const char *prefix, etcd_list_cb cb,
                     void *data) {
  return start(e, OP_LIST, prefix, NULL, 0, 0, NULL, cb, data);
}

etcd_op_t *etcd_get(etcd_t *e, const char *key, etcd_list_cb cb, void *data) {
  return start(e, OP_GET, key, NULL, 0, 0, NULL, cb, data);
}

void etcd_cancel(etcd_op_t *op) {
  if (!op) return;
  if (op->req) http_cancel(op->req);
  op_free(op);
}

int etcd_has_dirs(const etcd_t *e) {
  return e->api == ETCD_API_V2;
}

const char *etcd_endpoint(const etcd_t *e) {
  return e->endpoints[e->current];
}

size_t etcd_pending(const etcd_t *e) {
  return e->pending;
}

etcd_t *etcd_new(uv_loop_t *loop, http_t *http, const etcd_opts_t *o) {
  etcd_t *e = xcalloc(1, sizeof *e);
  e->loop = loop;
  e->http = http;
  e->n = o->n_endpoints;
  e->endpoints = xcalloc(e->n, sizeof *e->endpoints);
  for (size_t i = 0; i < e->n; i++) e->endpoints[i] = xstrdup(o->endpoints[i]);
  e->api = o->api;
  if (o->tls) {
    e->use_tls = 1;
    const char *in[3] = {o->tls->cacert, o->tls->cert, o->tls->key};
    for (int i = 0; i < 3; i++)
      e->tls_files[i] = in[i] ? xstrdup(in[i]) : NULL;
    e->tls.cacert = e->tls_files[0];
    e->tls.cert = e->tls_files[1];
    e->tls.key = e->tls_files[2];
  }
  e->user = o->user ? xstrdup(o->user) : NULL;
  e->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 5000;
  return e;
}

void etcd_free(etcd_t *e) {
  if (!e) return;
  while (e->ops) etcd_cancel(e->ops);
  for (size_t i = 0; i < e->n; i++) free(e->endpoints[i]);
  free(e->endpoints);
  for (int i = 0; i < 3; i++) free(e->tls_files[i]);
  if (e->user) memset(e->user, 0, strlen(e->user));
  free(e->user);
  free(e);
}

/* etcd_v2: the v2 keys API wire format (form-encoded PUTs, JSON replies
 * with errorCode, recursive GET for listings). */
#include "etcd_internal.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Key paths keep '/' and ':' (image names are full of them); everything
 * else outside RFC 3986's unreserved set is percent-encoded. */
static char *key_path(const char *key, const char *query) {
  buf_t b;
  buf_init(&b);
  buf_puts(&b, "/v2/keys");
  util_urlencode(&b, key, strlen(key), "/:");
  if (query) buf_puts(&b, query);
  return buf_detach(&b);
}

void etcd_v2_build(etcd_op_t *op, const char *key, const char *value,
                   size_t vlen, long ttl) {
  switch (op->kind) {
  case OP_PUT:
    op->method = "PUT";
    op->path = key_path(key, NULL);
    op->content_type = "application/x-www-form-urlencoded";
    buf_puts(&op->body, "value=");
    util_urlencode(&op->body, value, vlen, NULL);
    if (ttl > 0) buf_printf(&op->body, "&ttl=%ld", ttl);
    break;
  case OP_REFRESH:
    op->method = "PUT";
    op->path = key_path(key, NULL);
    op->content_type = "application/x-www-form-urlencoded";
    buf_printf(&op->body, "refresh=true&prevExist=true&ttl=%ld", ttl);
    break;
  case OP_DELETE:
    op->method = "DELETE";
    op->path = key_path(key, NULL);
    break;
  case OP_DELETE_DIR:
    op->method = "DELETE";
    op->path = key_path(key, "?dir=true");
    break;
  case OP_LIST:
    op->method = "GET";
    op->path = key_path(key, "?recursive=true");
    break;
  case OP_GET:
    op->method = "GET";
    op->path = key_path(key, NULL);
    break;
  }
}

typedef struct {
  etcd_kv_t *kvs;
  size_t n, cap;
  const char **dirs;
  size_t ndirs, dcap;
} walk_t;

static void walk(walk_t *w, const json_value_t *node, int depth) {
  if (!node || node->type != JSON_OBJECT || depth > 64) return;
  const char *key = json_get_str(node, "key");
  const json_value_t *dir = json_get(node, "dir");
  if (!key) return;
  if (dir && dir->type == JSON_BOOL && dir->u.boolean) {
    const json_value_t *nodes = json_get(node, "nodes");
    if (!nodes || nodes->type != JSON_ARRAY || nodes->len == 0) {
      if (w->ndirs == w->dcap) {
        w->dcap = w->dcap ? w->dcap * 2 : 8;
        w->dirs = xrealloc(w->dirs, w->dcap * sizeof *w->dirs);
      }
      w->dirs[w->ndirs++] = key;
      return;
    }
    for (const json_value_t *c = nodes->u.child; c; c = c->next)
      walk(w, c, depth + 1);
    return;
  }
  const json_value_t *v = json_get(node, "value");
  if (!v || v->type != JSON_STRING) return;
  if (w->n == w->cap) {
    w->cap = w->cap ? w->cap * 2 : 64;
    w->kvs = xrealloc(w->kvs, w->cap * sizeof *w->kvs);
  }
  w->kvs[w->n].key = key;
  w->kvs[w->n].value = v->u.str;
  w->kvs[w->n].value_len = v->len;
  const json_value_t *ttl = json_get(node, "ttl");
  w->kvs[w->n].ttl = ttl && ttl->type == JSON_NUMBER ? (long)ttl->u.num.d : 0;
  if (w->kvs[w->n].ttl <= 0 && json_get(node, "expiration"))
    w->kvs[w->n].ttl = 1; /* about to expire: still "has a TTL" */
  w->n++;
}

int etcd_v2_reply(etcd_op_t *op, const http_resp_t *r, etcd_result_t *res,
                  char *err, size_t errlen) {
  char jerr[160];
  json_doc_t *doc = json_parse(r->body, r->body_len, jerr, sizeof jerr);
  const json_value_t *root = doc ? json_root(doc) : NULL;
  const json_value_t *code = json_get(root, "errorCode");
  long ecode = code && code->type == JSON_NUMBER ? (long)code->u.num.i : 0;
  const char *msg = json_get_str(root, "message");
  const char *cause = json_get_str(root, "cause");
  int next = 0;
  res->status = ETCD_OK;

  if (r->status >= 200 && r->status < 300 && !ecode) {
    if (op->kind == OP_LIST || op->kind == OP_GET) {
      if (!doc) {
        snprintf(err, errlen, "etcd listing is not JSON: %s", jerr);
        res->status = ETCD_FAILED;
      } else {
        walk_t w = {0};
        const json_value_t *node = json_get(root, "node");
        if (op->kind == OP_LIST) walk(&w, node, 0);
        else if (!json_get(node, "dir")) walk(&w, node, 0); /* a value */
        op->listed = 1;
        op->list(op->data, res, w.kvs, w.n, w.dirs, w.ndirs);
        free(w.kvs);
        free(w.dirs);
      }
    }
    json_free(doc);
    return 0;
  }
  if (ecode == 100) {
    res->status = ETCD_NOT_FOUND;
    if (op->kind == OP_LIST || op->kind == OP_GET) { /* nothing there */
      res->status = ETCD_OK;
      op->listed = 1;
      op->list(op->data, res, NULL, 0, NULL, 0);
      json_free(doc);
      return 0;
    }
  } else if (ecode == 108) {
    res->status = ETCD_NOT_EMPTY;
  } else if (r->status >= 500 || ecode >= 300) {
    res->status = ETCD_UNAVAILABLE; /* raft trouble, leader election, ... */
    next = 1;
  } else {
    res->status = ETCD_FAILED;
  }
  if (msg)
    snprintf(err, errlen, "etcd error %ld: %s%s%s", ecode, msg,
             cause ? ": " : "", cause ? cause : "");
  else
    snprintf(err, errlen, "etcd answered HTTP %ld%s", r->status,
             doc ? "" : " (not JSON)");
  json_free(doc);
  return next;
}

/* etcd_v2: the v2 keys API wire format (form-encoded PUTs, JSON replies
 * with errorCode, recursive GET for listings). */
#include "etcd_op.h"
#include "json.h"

#include <inttypes.h>
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

void etcd_v2_build(etcd_op_t *op) {
  /* built afresh for each attempt (send_op() clears the last one) */
  REGISTER_ASSERT(!op->path && op->body.len == 0);
  /* a transaction only where etcd_has_txn() (v3); v3's internal
   * operations never come here; every other one names a key */
  REGISTER_ASSERT(op->kind != OP_TXN && op->kind != OP_AUTH &&
                  op->kind != OP_GRANT && op->kind != OP_KEEPALIVE &&
                  op->kind != OP_LEASE_TTL && op->kind < OP_KINDS);
  REGISTER_ASSERT(op->key || op->kind == OP_HEALTH || op->kind == OP_MEMBERS);
  switch (op->kind) {
  case OP_PUT:
    op->method = "PUT";
    op->path = key_path(op->key, NULL);
    op->content_type = "application/x-www-form-urlencoded";
    buf_puts(&op->body, "value=");
    util_urlencode(&op->body, op->value, op->vlen, NULL);
    if (op->ttl > 0) buf_printf(&op->body, "&ttl=%ld", op->ttl);
    break;
  case OP_PUT_IF: /* compare-and-swap: never a TTL (a document) */
    op->method = "PUT";
    op->path = key_path(op->key, NULL);
    op->content_type = "application/x-www-form-urlencoded";
    buf_puts(&op->body, "value=");
    util_urlencode(&op->body, op->value, op->vlen, NULL);
    if (op->prev_rev > 0) {
      buf_printf(&op->body, "&prevIndex=%" PRId64, op->prev_rev);
    } else {
      buf_puts(&op->body, "&prevExist=false");
    }
    break;
  case OP_REFRESH:
    op->method = "PUT";
    op->path = key_path(op->key, NULL);
    op->content_type = "application/x-www-form-urlencoded";
    buf_printf(&op->body, "refresh=true&prevExist=true&ttl=%ld", op->ttl);
    break;
  case OP_DELETE:
    op->method = "DELETE";
    op->path = key_path(op->key, NULL);
    break;
  case OP_DELETE_DIR:
    op->method = "DELETE";
    op->path = key_path(op->key, "?dir=true");
    break;
  case OP_DELETE_PREFIX:
    op->method = "DELETE";
    op->path = key_path(op->key, "?dir=true&recursive=true");
    break;
  case OP_LIST: /* quorum: a member cut off from the others would answer
                  from its own copy, however old (v3's reads are so) */
    op->method = "GET";
    op->path = key_path(op->key, "?recursive=true&quorum=true");
    break;
  case OP_HEALTH:
    op->method = "GET";
    op->path = xstrdup("/health");
    break;
  case OP_MEMBERS:
    op->method = "GET";
    op->path = xstrdup("/v2/members");
    break;
  case OP_GET:
  default: /* v3's internal operations never come here */
    op->method = "GET";
    op->path = key_path(op->key, "?quorum=true");
    break;
  }
}

static void walk(listing_t *l, const json_value_t *node, int depth) {
  if (!node || node->type != JSON_OBJECT || depth > 64) return;
  const json_value_t *kv = json_get(node, "key");
  const json_value_t *dir = json_get(node, "dir");
  if (!kv || kv->type != JSON_STRING) return;
  const char *key = kv->u.str;
  if (dir && dir->type == JSON_BOOL && dir->u.boolean) {
    const json_value_t *nodes = json_get(node, "nodes");
    if (!nodes || nodes->type != JSON_ARRAY || nodes->len == 0) {
      if (!memchr(key, '\0', kv->len)) listing_add_dir(l, key);
      return;
    }
    for (const json_value_t *c = nodes->u.child; c; c = c->next)
      walk(l, c, depth + 1);
    return;
  }
  const json_value_t *v = json_get(node, "value");
  if (!v || v->type != JSON_STRING) return;
  const json_value_t *ttl = json_get(node, "ttl");
  long t = ttl && ttl->type == JSON_NUMBER ? (long)ttl->u.num.d : 0;
  if (t <= 0 && json_get(node, "expiration")) t = 1; /* about to expire */
  listing_add(l, key, kv->len, v->u.str, v->len, t, 0,
              json_int(json_get(node, "modifiedIndex")));
}

/* X-Etcd-Cluster-Id (hex) and X-Etcd-Index: on every answer of the keys
 * API, errors included (where etcd knows them). */
static void read_headers(const http_resp_t *r, etcd_hdr_t *hdr) {
  char v[64];
  if (http_header(r, "X-Etcd-Cluster-Id", v, sizeof v) == 0)
    hdr->cluster_id = strtoull(v, NULL, 16);
  if (http_header(r, "X-Etcd-Index", v, sizeof v) == 0) {
    long long i = strtoll(v, NULL, 10);
    hdr->revision = i > 0 ? (int64_t)i : 0;
  }
}

reply_t etcd_v2_reply(etcd_op_t *op, const http_resp_t *r, etcd_result_t *res,
                      etcd_hdr_t *hdr, char *err, size_t errlen) {
  /* the keys API's headers (the members API sends no index; its cluster
   * id is the cluster's: a new cluster at the same addresses) */
  if (op->kind != OP_HEALTH && op->kind != OP_MEMBERS) {
    read_headers(r, hdr);
  } else if (op->kind == OP_MEMBERS) {
    etcd_hdr_t own = {0};
    read_headers(r, &own);
    hdr->cluster_id = own.cluster_id;
  }
  char jerr[160];
  json_doc_t *doc = json_parse(r->body, r->body_len, jerr, sizeof jerr);
  const json_value_t *root = doc ? json_root(doc) : NULL;
  if (op->kind == OP_MEMBERS) { /* {"members": [...]}, or an error */
    reply_t reply = REPLY_DONE;
    res->status = ETCD_OK;
    if (r->status >= 200 && r->status < 300 && doc) {
      members_read(op, root);
    } else {
      res->status = r->status >= 500 ? ETCD_UNAVAILABLE : ETCD_FAILED;
      if (r->status >= 500) reply = REPLY_NEXT_ENDPOINT;
      snprintf(err, errlen, "etcd member list: HTTP %ld%s", r->status,
               doc ? "" : " (not JSON)");
    }
    json_free(doc);
    return reply;
  }
  const json_value_t *code = json_get(root, "errorCode");
  long ecode = code && code->type == JSON_NUMBER ? (long)code->u.num.i : 0;
  const char *msg = json_get_str(root, "message");
  const char *cause = json_get_str(root, "cause");
  reply_t reply = REPLY_DONE;
  res->status = ETCD_OK;

  /* a keys API answer says what was done to which node: a 2xx without
   * them (a proxy's page, something else on the port) did nothing that
   * can be counted on, and is tried again elsewhere */
  const json_value_t *action = json_get(root, "action");
  const json_value_t *anode = json_get(root, "node");
  const char *health = json_get_str(root, "health");
  if (r->status >= 200 && r->status < 300 && !ecode && op->kind == OP_HEALTH &&
      health && strcmp(health, "true") != 0) {
    res->status = ETCD_UNAVAILABLE;
    snprintf(err, errlen, "etcd reports itself unhealthy");
    json_free(doc);
    return REPLY_NEXT_ENDPOINT;
  }
  if (r->status >= 200 && r->status < 300 && !ecode &&
      (op->kind == OP_HEALTH ? !health
                             : !action || action->type != JSON_STRING ||
                                   !anode || anode->type != JSON_OBJECT)) {
    res->status = ETCD_UNAVAILABLE;
    char first[81];
    size_t n = r->body_len < sizeof first - 1 ? r->body_len : sizeof first - 1;
    for (size_t i = 0; i < n; i++) /* one line, printable */
      first[i] = (unsigned char)r->body[i] < 0x20 || r->body[i] == 0x7f
                     ? ' '
                     : r->body[i];
    first[n] = '\0';
    snprintf(err, errlen, "etcd answered HTTP %ld without %s%s%s%s", r->status,
             op->kind == OP_HEALTH ? "its health" : "a keys API answer",
             doc ? "" : " (not JSON)", n ? ": " : "", first);
    json_free(doc);
    return REPLY_NEXT_ENDPOINT;
  }
  if (r->status >= 200 && r->status < 300 && !ecode) {
    if (op->kind == OP_LIST || op->kind == OP_GET) {
      if (!doc) {
        snprintf(err, errlen, "etcd listing is not JSON: %s", jerr);
        res->status = ETCD_FAILED;
      } else {
        const json_value_t *node = json_get(root, "node");
        if (op->kind == OP_LIST || !json_get(node, "dir")) /* GET: a value */
          walk(&op->listing, node, 0);
      }
    }
    json_free(doc);
    return REPLY_DONE;
  }
  if (op->kind == OP_PUT_IF && (ecode == 101 || ecode == 105 || ecode == 100)) {
    /* 101 Compare failed, 105 Key already exists, 100 the key expected
     * is gone */
    res->status = ETCD_CONFLICT;
  } else if (ecode == 100) {
    /* nothing there: an empty listing, or "not found" */
    res->status =
        op->kind == OP_LIST || op->kind == OP_GET ? ETCD_OK : ETCD_NOT_FOUND;
  } else if (ecode == 108) {
    res->status = ETCD_NOT_EMPTY;
  } else if (r->status >= 500 || ecode >= 300) {
    res->status = ETCD_UNAVAILABLE; /* raft trouble, leader election, ... */
    reply = REPLY_NEXT_ENDPOINT;
  } else {
    res->status = ETCD_FAILED;
  }
  if (msg)
    snprintf(err, errlen, "etcd error %ld: %s%s%s", ecode, msg,
             cause ? ": " : "", cause ? cause : "");
  else if (r->status == 401)
    snprintf(err, errlen,
             "etcd answered HTTP 401: the user or password is "
             "wrong");
  else if (r->status == 404 && !doc && op->kind != OP_MEMBERS)
    /* etcd 3.4 and later serve no v2 keys API without --enable-v2 */
    snprintf(err, errlen,
             "etcd answered HTTP 404 (not JSON): no v2 keys API here (etcd "
             "runs without --enable-v2?); use --etcd-api v3");
  else
    snprintf(err, errlen, "etcd answered HTTP %ld%s", r->status,
             doc ? "" : " (not JSON)");
  json_free(doc);
  return reply;
}

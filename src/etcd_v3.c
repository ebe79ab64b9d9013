/* etcd_v3: the v3 API through etcd's JSON gateway: POST /v3/kv/put,
 * /v3/kv/range (paginated), /v3/kv/deleterange, /v3/kv/txn (batches,
 * compare-and-swap, fenced writes), /v3/lease/grant,
 * /v3/lease/keepalive, /v3/lease/timetolive, /v3/auth/authenticate.  Keys
 * and values travel base64-encoded; 64-bit numbers as strings. */
#include "etcd_op.h"
#include "json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE 1000

static void b64_field(buf_t *b, const char *name, const char *s, size_t n) {
  buf_printf(b, "\"%s\":\"", name);
  util_base64_encode(b, s, n);
  buf_putc(b, '"');
}

/* [prefix + "/", prefix + "0"): every key below the prefix ('0' follows
 * '/' in byte order), and nothing of a sibling such as "<prefix>0". */
static void prefix_range(buf_t *b, const char *prefix, const buf_t *from) {
  size_t n = strlen(prefix);
  char *lo = xasprintf("%s/", prefix), *hi = xasprintf("%s0", prefix);
  if (from && from->len)
    b64_field(b, "key", from->data, from->len);
  else
    b64_field(b, "key", lo, n + 1);
  buf_putc(b, ',');
  b64_field(b, "range_end", hi, n + 1);
  free(lo);
  free(hi);
}

/* A put's fields: key, value, and the lease when keys hang on one. */
static void put_fields(buf_t *b, const etcd_t *e, const char *key,
                       const char *value, size_t vlen) {
  b64_field(b, "key", key, strlen(key));
  buf_putc(b, ',');
  b64_field(b, "value", value, vlen);
  if (e->ttl > 0 && e->lease)
    buf_printf(b, ",\"lease\":\"%" PRId64 "\"", e->lease);
}

/* A fenced write (etcd_opts_t.fence_key) is a transaction whose one
 * compare is the fence key's mod_revision: this opens it, up to the
 * success branch's first request. */
static void fence_open(buf_t *b, const etcd_op_t *op) {
  const char *k = op->e->fence_key;
  buf_puts(b, "\"compare\":[{");
  b64_field(b, "key", k, strlen(k));
  buf_printf(b,
             ",\"target\":\"MOD\",\"result\":\"EQUAL\",\"mod_revision\":"
             "\"%" PRId64 "\"}],\"success\":[",
             op->fence_rev);
}

void etcd_v3_build(etcd_op_t *op) {
  etcd_t *e = op->e;
  buf_t *b = &op->body;
  /* built afresh for each attempt (send_op() clears the last one) */
  REGISTER_ASSERT(!op->path && b->len == 0 && op->kind < OP_KINDS);
  /* the operations on a key name one; a value is there for its length */
  REGISTER_ASSERT(op->key || op->kind == OP_TXN || op->kind >= OP_AUTH);
  REGISTER_ASSERT(op->value || !op->vlen);
  if (op->kind == OP_HEALTH) {
    op->method = "GET";
    op->path = xstrdup("/health");
    return;
  }
  op->method = "POST";
  op->content_type = "application/json";
  buf_putc(b, '{');
  switch (op->kind) {
  case OP_PUT:
    if (op->fence_rev) {
      op->path = xstrdup("/v3/kv/txn");
      fence_open(b, op);
      buf_puts(b, "{\"request_put\":{");
      put_fields(b, e, op->key, op->value, op->vlen);
      buf_puts(b, "}}]");
    } else {
      op->path = xstrdup("/v3/kv/put");
      put_fields(b, e, op->key, op->value, op->vlen);
    }
    break;
  case OP_FENCE: /* a put of the fence key, on the lease like the keys */
    op->path = xstrdup("/v3/kv/put");
    put_fields(b, e, op->key, op->value, op->vlen);
    break;
  case OP_REFRESH: /* not used with v3 (the lease is kept alive): a read */
  case OP_GET:
    op->path = xstrdup("/v3/kv/range");
    b64_field(b, "key", op->key, strlen(op->key));
    break;
  case OP_DELETE:
  case OP_DELETE_DIR: /* v3 has no directories */
  case OP_DELETE_PREFIX:
    if (op->fence_rev) {
      op->path = xstrdup("/v3/kv/txn");
      fence_open(b, op);
      buf_puts(b, "{\"request_delete_range\":{");
    } else {
      op->path = xstrdup("/v3/kv/deleterange");
    }
    if (op->kind == OP_DELETE_PREFIX)
      prefix_range(b, op->key, NULL);
    else
      b64_field(b, "key", op->key, strlen(op->key));
    if (op->fence_rev) buf_puts(b, "}}]");
    break;
  case OP_LIST:
    op->path = xstrdup("/v3/kv/range");
    prefix_range(b, op->key, &op->cont);
    buf_printf(b, ",\"limit\":%d", PAGE);
    /* every page at the first one's revision: one snapshot of the prefix */
    if (op->list_rev > 0)
      buf_printf(b, ",\"revision\":\"%" PRId64 "\"", op->list_rev);
    break;
  case OP_TXN: /* no compare but the fence's: all or nothing */
    op->path = xstrdup("/v3/kv/txn");
    if (op->fence_rev)
      fence_open(b, op);
    else
      buf_puts(b, "\"success\":[");
    for (size_t i = 0; i < op->nitems; i++) {
      const etcd_txn_item_t *it = &op->items[i];
      if (i) buf_putc(b, ',');
      if (it->is_delete) {
        buf_puts(b, "{\"request_delete_range\":{");
        b64_field(b, "key", it->key, strlen(it->key));
      } else {
        buf_puts(b, "{\"request_put\":{");
        put_fields(b, e, it->key, it->value, it->vlen);
      }
      buf_puts(b, "}}");
    }
    buf_putc(b, ']');
    break;
  case OP_PUT_IF: /* compare-and-swap, no lease: a document */
    op->path = xstrdup("/v3/kv/txn");
    buf_puts(b, "\"compare\":[{");
    b64_field(b, "key", op->key, strlen(op->key));
    if (op->prev_rev > 0) {
      buf_printf(b,
                 ",\"target\":\"MOD\",\"result\":\"EQUAL\","
                 "\"mod_revision\":\"%" PRId64 "\"",
                 op->prev_rev);
    } else {
      buf_puts(b, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                  "\"create_revision\":\"0\"");
    }
    buf_puts(b, "}],\"success\":[{\"request_put\":{");
    b64_field(b, "key", op->key, strlen(op->key));
    buf_putc(b, ',');
    b64_field(b, "value", op->value, op->vlen);
    buf_puts(b, "}}]");
    break;
  case OP_AUTH: /* only with a user (etcd.c asks for a token then) */
    REGISTER_ASSERT(e->user && e->password);
    op->path = xstrdup("/v3/auth/authenticate");
    buf_puts(b, "\"name\":");
    json_escape(b, e->user, strlen(e->user));
    buf_puts(b, ",\"password\":");
    json_escape(b, e->password, strlen(e->password));
    break;
  case OP_GRANT: /* only with --etcd-ttl: keys hang on a lease */
    REGISTER_ASSERT(e->ttl > 0);
    op->path = xstrdup("/v3/lease/grant");
    buf_printf(b, "\"TTL\":%ld", e->ttl);
    break;
  case OP_KEEPALIVE:
    op->path = xstrdup("/v3/lease/keepalive");
    buf_printf(b, "\"ID\":\"%" PRId64 "\"", op->lease_id);
    break;
  case OP_LEASE_TTL:
    op->path = xstrdup("/v3/lease/timetolive");
    buf_printf(b, "\"ID\":\"%" PRId64 "\"", op->lease_id);
    break;
  case OP_MEMBERS: /* {} */
    op->path = xstrdup("/v3/cluster/member/list");
    break;
  case OP_HEALTH: /* handled above */
  case OP_KINDS:
    break;
  }
  buf_putc(b, '}');
}

/* int64 fields come as strings ("123"), sometimes as numbers */
/* uint64 fields (cluster and member ids use all 64 bits) */
static uint64_t unum(const json_value_t *v) {
  if (!v) return 0;
  if (v->type == JSON_NUMBER)
    return v->u.num.is_int ? (uint64_t)v->u.num.i : (uint64_t)v->u.num.d;
  if (v->type == JSON_STRING) return strtoull(v->u.str, NULL, 10);
  return 0;
}

/* The response header every answer carries ({"result": {"header": ...}}
 * for a keep-alive, a streamed call). */
static void read_header(const json_value_t *root, etcd_hdr_t *hdr) {
  const json_value_t *h = json_get(root, "header");
  if (!h) h = json_get(json_get(root, "result"), "header");
  if (!h || h->type != JSON_OBJECT) return;
  hdr->cluster_id = unum(json_get(h, "cluster_id"));
  hdr->member_id = unum(json_get(h, "member_id"));
  int64_t rev = json_int(json_get(h, "revision"));
  hdr->revision = rev > 0 ? rev : 0;
  hdr->raft_term = unum(json_get(h, "raft_term"));
}

/* Errors that mean "log in again": the token expired or was revoked
 * (UNAUTHENTICATED, "invalid auth token"); a JWT signed before the last
 * change of users, roles or permissions ("revision of auth store is old",
 * InvalidArgument: with --auth-token jwt every write after `etcdctl user
 * add` gets it); a request sent without a token because auth was off when
 * we logged in and is on now ("user name is empty"). */
static int token_refused(const etcd_op_t *op, long code, const char *msg) {
  if (code == 16) return 1;
  if (!op->e->user || !msg || op->kind == OP_AUTH) return 0;
  return strstr(msg, "invalid auth token") ||
         strstr(msg, "revision of auth store is old") ||
         strstr(msg, "user name is empty");
}

static int decode(const json_value_t *v, buf_t *out) {
  buf_reset(out);
  if (!v) return 0; /* absent: empty (JSON omits empty bytes) */
  if (v->type != JSON_STRING) return -1;
  return util_base64_decode(out, v->u.str, v->len);
}

static reply_t range_reply(etcd_op_t *op, const json_value_t *root,
                           etcd_result_t *res, char *err, size_t errlen) {
  buf_t k, v;
  buf_init(&k);
  buf_init(&v);
  const json_value_t *kvs = json_get(root, "kvs");
  for (const json_value_t *kv = kvs && kvs->type == JSON_ARRAY ? kvs->u.child
                                                               : NULL;
       kv; kv = kv->next) {
    if (decode(json_get(kv, "key"), &k) < 0 ||
        decode(json_get(kv, "value"), &v) < 0) {
      snprintf(err, errlen, "etcd range answer has bad base64");
      res->status = ETCD_FAILED;
      buf_free(&k);
      buf_free(&v);
      return REPLY_DONE;
    }
    if (op->kind == OP_REFRESH) continue;
    listing_add(&op->listing, k.data ? k.data : "", k.len, v.data ? v.data : "",
                v.len, 0, json_int(json_get(kv, "lease")),
                json_int(json_get(kv, "mod_revision")));
  }
  if (op->kind == OP_REFRESH && (!kvs || kvs->len == 0))
    res->status = ETCD_NOT_FOUND;
  const json_value_t *more = json_get(root, "more");
  reply_t reply = REPLY_DONE;
  if (op->kind == OP_LIST && more && more->type == JSON_BOOL &&
      more->u.boolean && k.len) {
    /* the next page starts just after the last key */
    buf_reset(&op->cont);
    buf_append(&op->cont, k.data, k.len);
    buf_append(&op->cont, "", 1);
    reply = REPLY_MORE;
  }
  buf_free(&k);
  buf_free(&v);
  return reply;
}

/* The first line of a plain-text body in out (n bytes), anything but
 * printable ASCII as '?', cut to fit; empty for an empty body. */
static void text_line(const char *body, size_t len, char *out, size_t n) {
  size_t o = 0;
  for (size_t i = 0; i < len && o + 1 < n; i++) {
    unsigned char c = (unsigned char)body[i];
    if (c == '\n' || c == '\r') break;
    out[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
  }
  if (n) out[o] = '\0';
}

reply_t etcd_v3_reply(etcd_op_t *op, const http_resp_t *r, etcd_result_t *res,
                      etcd_hdr_t *hdr, char *err, size_t errlen) {
  char jerr[160];
  json_doc_t *doc = json_parse(r->body, r->body_len, jerr, sizeof jerr);
  const json_value_t *root = doc ? json_root(doc) : NULL;
  reply_t reply = REPLY_DONE;
  res->status = ETCD_OK;

  if (r->status == 200 && root && !json_get(root, "error")) {
    /* a member list is the member's own view: no place in the history,
     * but its cluster id is the cluster's (a new cluster at the same
     * addresses is seen within the member list's period) */
    if (op->kind != OP_HEALTH && op->kind != OP_MEMBERS) {
      read_header(root, hdr);
    } else if (op->kind == OP_MEMBERS) {
      etcd_hdr_t own = {0};
      read_header(root, &own);
      hdr->cluster_id = own.cluster_id;
    }
    if (op->fence_rev) { /* the gateway leaves out false: absent is false */
      const json_value_t *ok = json_get(root, "succeeded");
      if (!ok || ok->type != JSON_BOOL || !ok->u.boolean) {
        res->status = ETCD_UNAVAILABLE;
        snprintf(err, errlen,
                 "the write fence %s moved since revision %" PRId64
                 " (a move after a write in doubt, its lease lost, or "
                 "another writer of it)",
                 op->e->fence_key, op->fence_rev);
        json_free(doc);
        return REPLY_FENCED;
      }
      if (op->kind == OP_DELETE) { /* {"responses":[{"response_delete_range":
                                      {"deleted":"1"}}]} */
        const json_value_t *rs = json_get(root, "responses");
        const json_value_t *first =
            rs && rs->type == JSON_ARRAY ? rs->u.child : NULL;
        if (json_int(json_get(json_get(first, "response_delete_range"),
                              "deleted")) == 0)
          res->status = ETCD_NOT_FOUND;
      }
      json_free(doc);
      return REPLY_DONE;
    }
    switch (op->kind) {
    case OP_LIST:
    case OP_GET:
    case OP_REFRESH:
      reply = range_reply(op, root, res, err, errlen);
      break;
    case OP_DELETE:
      if (json_int(json_get(root, "deleted")) == 0)
        res->status = ETCD_NOT_FOUND;
      break;
    case OP_AUTH: {
      const char *t = json_get_str(root, "token");
      op->token = t ? xstrdup(t) : NULL;
      break;
    }
    case OP_GRANT:
      op->lease_id = json_int(json_get(root, "ID"));
      op->lease_ttl = (long)json_int(json_get(root, "TTL"));
      break;
    case OP_KEEPALIVE: { /* {"result": {...}}: no TTL means no lease */
      const json_value_t *res_ = json_get(root, "result");
      op->lease_ttl = (long)json_int(json_get(res_, "TTL"));
      break;
    }
    case OP_LEASE_TTL:
      op->lease_ttl = (long)json_int(json_get(root, "TTL"));
      op->granted_ttl = (long)json_int(json_get(root, "grantedTTL"));
      break;
    case OP_MEMBERS:
      members_read(op, root);
      break;
    case OP_PUT_IF: { /* the gateway leaves out false: absent is false */
      const json_value_t *ok = json_get(root, "succeeded");
      if (!ok || ok->type != JSON_BOOL || !ok->u.boolean) {
        res->status = ETCD_CONFLICT;
        snprintf(err, errlen, "%s did not hold what was expected", op->key);
      }
      break;
    }
    case OP_HEALTH:
      if (strcmp(json_get_str(root, "health") ? json_get_str(root, "health")
                                              : "",
                 "true") != 0) {
        snprintf(err, errlen, "etcd reports itself unhealthy");
        res->status = ETCD_UNAVAILABLE;
        reply = REPLY_NEXT_ENDPOINT;
      }
      break;
    default:
      break;
    }
    json_free(doc);
    return reply;
  }

  /* an error: {"error": "...", "message": "...", "code": N} (gRPC codes) */
  const char *msg = json_get_str(root, "message");
  if (!msg) msg = json_get_str(root, "error");
  long code = (long)json_int(json_get(root, "code"));
  if (op->kind == OP_AUTH && msg &&
      strstr(msg, "authentication is not enabled")) {
    op->token = xstrdup(""); /* nothing to authenticate against: go on */
    json_free(doc);
    return REPLY_DONE;
  }
  if (token_refused(op, code, msg)) code = 16;
  switch (code) {
  case 16: /* UNAUTHENTICATED: log in again (token_refused) */
    res->status = ETCD_UNAVAILABLE;
    reply = REPLY_REAUTH;
    break;
  case 5: /* NOT_FOUND: a lease */
    res->status = ETCD_NOT_FOUND;
    if (op->kind == OP_PUT || op->kind == OP_TXN || op->kind == OP_FENCE)
      reply = REPLY_LEASE_LOST;
    break;
  case 4:  /* DEADLINE_EXCEEDED */
  case 10: /* ABORTED */
  case 14: /* UNAVAILABLE: no leader, stopping, ... */
    res->status = ETCD_UNAVAILABLE;
    reply = REPLY_NEXT_ENDPOINT;
    break;
  default:
    if (r->status >= 500 || (!root && r->status != 200)) {
      res->status = ETCD_UNAVAILABLE;
      reply = REPLY_NEXT_ENDPOINT;
    } else {
      res->status = ETCD_FAILED;
    }
  }
  if (msg) {
    snprintf(err, errlen, "etcd: %s", msg);
  } else {
    /* a plain-text answer says why; e.g. etcd's gateway, with auth on,
     * to a client certificate that has a CN: "CommonName of client
     * sending a request against gateway will be ignored and not used as
     * expected" */
    char text[200];
    text_line(r->body, r->body_len, text, sizeof text);
    snprintf(err, errlen, "etcd answered HTTP %ld%s%s%s%s", r->status,
             !doc && text[0] ? ": " : "", doc ? "" : text,
             doc ? "" : " (not JSON: ", doc ? "" : jerr);
  }
  if (!doc && strchr(err, '('))
    snprintf(err + strlen(err), errlen - strlen(err), ")");
  json_free(doc);
  return reply;
}

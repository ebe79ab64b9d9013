/* hookio: HTTP and etcd reads for policy hooks, done in the daemon. */
#include "hookio.h"
#include "list.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define HTTP_MAX_BODY (16u << 20)
/* The answers of every hook request in flight together: each reserves
 * what it may bring (HTTP_MAX_BODY, or what is left), so that 64 requests
 * cannot hold 1 GiB of the daemon's memory; below HTTP_MIN_BODY left, a
 * request fails at once. */
#define HTTP_BODY_BUDGET (64u << 20)
#define HTTP_MIN_BODY (64u << 10)
/* etcd reads running at once; more wait in order.  Their answers are not
 * capped below etcd.c's 32 MiB, and each is held as the body, the parsed
 * keys and the frame to the worker: 64 at once held 557 MB. */
#define ETCD_RUNNING 2

typedef struct hreq {
  hookio_t *h;
  uint64_t tag, id;
  iocall_kind_t kind;
  hookio_done_fn done;
  void *ud;
  http_req_t *http;
  etcd_op_t *op;
  char *error;    /* an answer that is an error, sent from the timer */
  size_t reserve; /* of hookio.reserved: what its answer may bring */
  char *key;      /* an etcd read waiting to run: its key, owned */
  int running;    /* an etcd read, counted in hookio.etcd_running */
  list_t node;    /* on hookio.reqs, hookio.waiting or hookio.failed */
} hreq_t;

struct hookio {
  http_t *http;
  etcd_t *etcd;
  list_t reqs;      /* hreq_t in flight */
  list_t waiting;   /* hreq_t, etcd reads waiting for one running to end */
  list_t failed;    /* hreq_t answered with their error by the timer */
  uv_timer_t timer; /* delivers the failed ones from the loop */
  size_t n;
  size_t reserved;  /* bytes the HTTP answers in flight may bring */
  int etcd_running; /* etcd reads in flight, at most ETCD_RUNNING */
  int starting;     /* inside hookio_start(): no answer may be given */
};

static void timer_closed(uv_handle_t *t) {
  free(t->data);
}

hookio_t *hookio_new(uv_loop_t *loop, http_t *http, etcd_t *etcd) {
  hookio_t *h = xcalloc(1, sizeof *h);
  h->http = http;
  h->etcd = etcd;
  list_init(&h->reqs);
  list_init(&h->waiting);
  list_init(&h->failed);
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  return h;
}

static void req_free(hreq_t *r) {
  REGISTER_ASSERT(r->h->n > 0); /* counted while on a list */
  list_remove(&r->node);
  r->h->n--;
  r->h->reserved -= r->reserve;
  if (r->running) r->h->etcd_running--;
  free(r->error);
  free(r->key);
  free(r);
}

static void req_drop(hreq_t *r) {
  if (r->http) http_cancel(r->http);
  if (r->op) etcd_cancel(r->op);
  req_free(r);
}

void hookio_free(hookio_t *h) {
  if (!h) return;
  list_t *n;
  while ((n = list_first(&h->reqs)))
    req_drop(list_entry(n, hreq_t, node));
  while ((n = list_first(&h->waiting)))
    req_drop(list_entry(n, hreq_t, node));
  while ((n = list_first(&h->failed)))
    req_drop(list_entry(n, hreq_t, node));
  uv_close((uv_handle_t *)&h->timer, timer_closed);
}

size_t hookio_inflight(const hookio_t *h) {
  return h ? h->n : 0;
}

/* Hands the answer over and forgets the request: unlinked first, since
 * done may cancel every request of its worker (one that dies on the
 * answer); freed after, since the answer may point into it. */
static void finish(hreq_t *r, const iocall_answer_t *a) {
  /* from the loop, never inside hookio_start(); once (it leaves its list) */
  REGISTER_ASSERT(!r->h->starting && r->h->n > 0);
  list_remove(&r->node);
  r->h->n--;
  if (r->running) r->h->etcd_running--;
  r->done(r->ud, r->tag, r->id, a);
  free(r->error);
  free(r->key);
  free(r);
}

static void etcd_done(void *data, const etcd_result_t *res,
                      const etcd_kv_t *kvs, size_t n, const char *const *dirs,
                      size_t ndirs);

/* The etcd reads waiting start, while fewer than ETCD_RUNNING run. */
static void pump_etcd(hookio_t *h) {
  list_t *n;
  while (h->etcd_running < ETCD_RUNNING && (n = list_first(&h->waiting))) {
    hreq_t *r = list_entry(n, hreq_t, node);
    list_remove(&r->node);
    list_insert_tail(&h->reqs, &r->node);
    h->etcd_running++;
    r->running = 1;
    r->op = r->kind == IOCALL_ETCD_LIST
                ? etcd_list(h->etcd, r->key, etcd_done, r)
                : etcd_get(h->etcd, r->key, etcd_done, r);
    REGISTER_ASSERT(r->op); /* fails from the loop if it cannot start */
    free(r->key);
    r->key = NULL;
  }
}

static void failed_cb(uv_timer_t *t) {
  hookio_t *h = t->data;
  list_t *n;
  while ((n = list_first(&h->failed))) {
    hreq_t *r = list_entry(n, hreq_t, node);
    REGISTER_ASSERT(r->error && !r->http && !r->op); /* failed, not started */
    iocall_answer_t a = {0};
    a.error = r->error;
    finish(r, &a);
  }
}

/* Answers r with an error from the loop. */
static void fail_later(hreq_t *r, const char *why) {
  r->error = xstrdup(why);
  list_remove(&r->node);
  list_insert_tail(&r->h->failed, &r->node);
  uv_timer_start(&r->h->timer, failed_cb, 0, 0);
}

static void http_done(http_req_t *req, const http_resp_t *resp, void *data) {
  hreq_t *r = data;
  REGISTER_ASSERT(r->http == req); /* the request it waits for */
  iocall_answer_t a = {0};
  if (resp->error) {
    a.error = resp->errmsg ? resp->errmsg : "HTTP request failed";
  } else {
    a.status = resp->status;
    a.body = resp->body;
    a.body_len = resp->body_len;
    a.headers = resp->headers;
    a.headers_len = resp->headers_len;
  }
  finish(r, &a);
}

static void etcd_done(void *data, const etcd_result_t *res,
                      const etcd_kv_t *kvs, size_t n, const char *const *dirs,
                      size_t ndirs) {
  (void)dirs;
  (void)ndirs;
  hreq_t *r = data;
  REGISTER_ASSERT(r->op && !r->http); /* answered once, while in flight */
  iocall_answer_t a = {0};
  iocall_kv_t *v = NULL;
  if (res->status != ETCD_OK) {
    a.error = res->error ? res->error : "etcd error";
  } else {
    v = n ? xcalloc(n, sizeof *v) : NULL;
    for (size_t i = 0; i < n; i++)
      v[i] = (iocall_kv_t){kvs[i].key, kvs[i].value, kvs[i].value_len};
    a.kvs = v;
    a.n = r->kind == IOCALL_ETCD_GET && n > 1 ? 1 : n;
  }
  hookio_t *h = r->h;
  finish(r, &a);
  free(v);
  pump_etcd(h); /* the next one waiting */
}

static void start(hookio_t *h, hreq_t *r, const iocall_t *c);

void hookio_start(hookio_t *h, uint64_t tag, uint64_t id, const iocall_t *c,
                  hookio_done_fn done, void *ud) {
  REGISTER_ASSERT(done && !h->starting); /* not re-entered from its start */
  hreq_t *r = xcalloc(1, sizeof *r);
  r->h = h;
  r->tag = tag;
  r->id = id;
  r->kind = c->kind;
  r->done = done;
  r->ud = ud;
  list_insert_tail(&h->reqs, &r->node);
  h->n++;
  h->starting = 1;
  start(h, r, c);
  h->starting = 0;
}

/* A hook's request body is at most this (each one in flight is a copy
 * the daemon holds, outside the worker's memory limit). */
#define HOOK_MAX_REQUEST_BODY (1024 * 1024)

/* The worker is not trusted: what it asks for is checked here, whatever it
 * checked itself.  NULL, or why the request is refused. */
static const char *http_call_refused(const iocall_t *c) {
  static const char token[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuv"
                              "wxyz0123456789!#$%&'*+-.^_`|~";
  size_t n = c->method ? strlen(c->method) : 0;
  if (c->method && (n == 0 || n > 32 || strspn(c->method, token) != n))
    return "bad method (letters, digits and !#$%&'*+-.^_`|~, at most 32)";
  if (c->body_len > HOOK_MAX_REQUEST_BODY)
    return "request body larger than 1 MiB";
  for (const char *const *hd = c->headers; hd && *hd; hd++)
    if (strpbrk(*hd, "\r\n")) return "bad header (a line break in it)";
  return NULL;
}

/* Sends r on its way; a failure is answered from the loop (fail_later). */
static void start(hookio_t *h, hreq_t *r, const iocall_t *c) {
  if (c->kind == IOCALL_HTTP) {
    if (!h->http) return fail_later(r, "no HTTP client here");
    const char *refused = http_call_refused(c);
    if (refused) return fail_later(r, refused);
    http_opts_t o = {0};
    o.method = c->method;
    o.url = c->url;
    o.headers = c->headers;
    o.body = c->body;
    o.body_len = c->body_len;
    o.timeout_ms = c->timeout_ms;
    size_t left =
        HTTP_BODY_BUDGET > h->reserved ? HTTP_BODY_BUDGET - h->reserved : 0;
    if (left < HTTP_MIN_BODY)
      return fail_later(r, "the hooks' HTTP requests in flight may bring "
                           "64 MiB of answers already; try again later");
    r->reserve = left < HTTP_MAX_BODY ? left : HTTP_MAX_BODY;
    h->reserved += r->reserve;
    o.max_body = r->reserve;
    o.on_done = http_done;
    o.data = r;
    r->http = http_request(h->http, &o); /* copies what it keeps */
    REGISTER_ASSERT(r->http); /* one that cannot start fails from the loop */
    return;
  }
  if (!h->etcd)
    return fail_later(r, "etcd is not available here (--dry-run or check)");
  r->key = xstrdup(c->key); /* waits its turn (pump_etcd) */
  list_remove(&r->node);
  list_insert_tail(&h->waiting, &r->node);
  pump_etcd(h);
}

void hookio_cancel(hookio_t *h, uint64_t tag, uint64_t id) {
  if (!h) return;
  list_t *lists[] = {&h->reqs, &h->waiting, &h->failed};
  for (int i = 0; i < 3; i++) {
    for (list_t *n = lists[i]->next, *next; n != lists[i]; n = next) {
      next = n->next;
      hreq_t *r = list_entry(n, hreq_t, node);
      if (r->tag == tag && (id == 0 || r->id == id)) req_drop(r);
    }
  }
  pump_etcd(h); /* in the places of the reads dropped */
}

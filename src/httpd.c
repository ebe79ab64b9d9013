/* httpd: one-request-per-connection HTTP for metrics and health. */
#include "httpd.h"
#include "list.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEAD 16384
#define MAX_CONNS 32
#define CONN_TIMEOUT_MS 10000

struct httpd_req {
  httpd_t *h;
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t wr;
  buf_t in, out;
  int handles_open; /* tcp + timer, freed when both are closed */
  int closing;      /* the connection is (being) closed */
  int handled;      /* handed to the handler, awaiting httpd_respond */
  int answered;
  list_t node; /* on h->conns until conn_close() */
};

struct httpd {
  uv_loop_t *loop;
  uv_tcp_t listener;
  httpd_handler_t handler;
  void *ud;
  list_t conns; /* open connections (httpd_req_t.node), newest first */
  int nconns;
  int freeing;
};

int httpd_parse_addr(const char *addr, struct sockaddr_storage *out) {
  char host[256];
  const char *colon;
  if (addr[0] == '[') {
    const char *rb = strchr(addr, ']');
    if (!rb || rb[1] != ':' || (size_t)(rb - addr - 1) >= sizeof host)
      return -1;
    memcpy(host, addr + 1, (size_t)(rb - addr - 1));
    host[rb - addr - 1] = '\0';
    colon = rb + 1;
  } else {
    colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
  }
  long port;
  if (util_parse_long(colon + 1, 0, 65535, &port) < 0) return -1;
  if (!host[0]) snprintf(host, sizeof host, "0.0.0.0");
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0) return 0;
  if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) == 0) return 0;
  return -1;
}

static void httpd_req_free(httpd_req_t *r) {
  /* both handles' close callbacks have run, and nothing lists it */
  REGISTER_ASSERT(r->handles_open == 0 && !list_linked(&r->node));
  buf_free(&r->in);
  buf_free(&r->out);
  free(r);
}

static void handle_closed(uv_handle_t *handle) {
  httpd_req_t *r = handle->data;
  REGISTER_ASSERT(r->handles_open > 0); /* one close callback per handle */
  if (--r->handles_open > 0) return;
  /* a deferred request lives on until it is answered */
  if (!r->handled || r->answered) httpd_req_free(r);
}

static void conn_close(httpd_req_t *r) {
  if (r->closing) return;
  r->closing = 1;
  httpd_t *h = r->h;
  REGISTER_ASSERT(h->nconns > 0); /* counted while open */
  list_remove(&r->node);
  h->nconns--;
  uv_timer_stop(&r->timer);
  uv_close((uv_handle_t *)&r->tcp, handle_closed);
  uv_close((uv_handle_t *)&r->timer, handle_closed);
}

static void write_done(uv_write_t *wr, int status) {
  (void)status;
  httpd_req_t *r = wr->data;
  REGISTER_ASSERT(r->answered); /* the one write is the answer */
  conn_close(r);
}

static const char *reason(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 400:
    return "Bad Request";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 431:
    return "Request Header Fields Too Large";
  case 503:
    return "Service Unavailable";
  default:
    return "Status";
  }
}

void httpd_respond(httpd_req_t *r, int status, const char *content_type,
                   const char *body, size_t len) {
  /* only a request handed to the handler is answered (httpd.h) */
  REGISTER_ASSERT(r->handled);
  if (r->answered) return;
  r->answered = 1;
  if (r->closing) { /* the client left: nothing to send; free if closed */
    if (r->handles_open == 0) httpd_req_free(r);
    return;
  }
  buf_printf(&r->out,
             "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
             "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
             status, reason(status), content_type, len);
  buf_append(&r->out, body, len);
  uv_buf_t b = uv_buf_init(r->out.data, (unsigned)r->out.len);
  r->wr.data = r;
  if (uv_write(&r->wr, (uv_stream_t *)&r->tcp, &b, 1, write_done) < 0)
    conn_close(r);
}

static void simple(httpd_req_t *r, int status, const char *msg) {
  r->handled = 1;
  httpd_respond(r, status, "text/plain; charset=utf-8", msg, strlen(msg));
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *b) {
  (void)suggested;
  httpd_req_t *r = handle->data;
  buf_reserve(&r->in, 4096);
  *b = uv_buf_init(r->in.data + r->in.len, 4096);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  httpd_req_t *r = s->data;
  if (n < 0) {
    conn_close(r);
    return;
  }
  r->in.len += (size_t)n;
  r->in.data[r->in.len] = '\0';
  if (r->handled) return; /* ignore anything after the head */
  char *end = strstr(r->in.data, "\r\n\r\n");
  if (!end) end = strstr(r->in.data, "\n\n");
  if (!end) {
    if (r->in.len > MAX_HEAD) simple(r, 431, "request head too large\n");
    return;
  }
  uv_read_stop(s);
  char method[16], target[1024];
  if (sscanf(r->in.data, "%15s %1023s HTTP/1.%*d", method, target) != 2) {
    simple(r, 400, "bad request\n");
    return;
  }
  char *q = strchr(target, '?');
  if (q) *q = '\0';
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    simple(r, 405, "only GET\n");
    return;
  }
  r->handled = 1;
  r->h->handler(r->h->ud, r, method, target);
}

static void timeout_cb(uv_timer_t *t) {
  conn_close(t->data);
}

/* At the cap, the oldest connection that has not sent its request yet
 * goes for the new one: 32 clients that connect and say nothing (or say
 * it slowly) would otherwise keep /healthz from every monitor for their
 * 10 s, again and again.  Requests being answered are left alone. */
static void make_room(httpd_t *h) {
  for (list_t *n = h->conns.prev; n != &h->conns; n = n->prev) {
    httpd_req_t *r = list_entry(n, httpd_req_t, node);
    if (!r->handled && !r->closing) {
      conn_close(r);
      return;
    }
  }
}

static void connection_cb(uv_stream_t *server, int status) {
  httpd_t *h = server->data;
  if (status < 0) return;
  httpd_req_t *r = xcalloc(1, sizeof *r);
  r->h = h;
  buf_init(&r->in);
  buf_init(&r->out);
  uv_tcp_init(h->loop, &r->tcp);
  uv_timer_init(h->loop, &r->timer);
  r->tcp.data = r->timer.data = r;
  r->handles_open = 2;
  if (h->nconns >= MAX_CONNS) make_room(h);
  list_insert_head(&h->conns, &r->node);
  h->nconns++;
  if (uv_accept(server, (uv_stream_t *)&r->tcp) < 0 || h->nconns > MAX_CONNS) {
    conn_close(r);
    return;
  }
  uv_timer_start(&r->timer, timeout_cb, CONN_TIMEOUT_MS, 0);
  uv_read_start((uv_stream_t *)&r->tcp, alloc_cb, read_cb);
}

httpd_t *httpd_new(uv_loop_t *loop, const char *addr, httpd_handler_t handler,
                   void *ud, char *err, size_t errlen) {
  struct sockaddr_storage sa;
  if (httpd_parse_addr(addr, &sa) < 0) {
    snprintf(err, errlen, "--metrics \"%s\" is not host:port", addr);
    return NULL;
  }
  httpd_t *h = xcalloc(1, sizeof *h);
  h->loop = loop;
  h->handler = handler;
  h->ud = ud;
  list_init(&h->conns);
  uv_tcp_init(loop, &h->listener);
  h->listener.data = h;
  int rc = uv_tcp_bind(&h->listener, (const struct sockaddr *)&sa, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&h->listener, 64, connection_cb);
  if (rc < 0) {
    snprintf(err, errlen, "--metrics %s: cannot listen: %s", addr,
             uv_strerror(rc));
    httpd_free(h);
    return NULL;
  }
  return h;
}

static void listener_closed(uv_handle_t *handle) {
  free(handle->data);
}

void httpd_free(httpd_t *h) {
  if (!h) return;
  list_t *n;
  while ((n = list_first(&h->conns))) {
    httpd_req_t *r = list_entry(n, httpd_req_t, node);
    r->answered = 1; /* dropped: freed when its handles are closed */
    conn_close(r);
  }
  uv_close((uv_handle_t *)&h->listener, listener_closed);
}

/* http: libcurl multi inside libuv, as curl's docs/examples/multi-uv.c does
 * it, with user callbacks deferred until curl has returned. */
#include "http.h"
#include "list.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#define POOL_MAX                                                               \
  2 /* pooled handles keep curl's 16 KiB buffer: few, for memory */
#define DEFAULT_MAX_BODY (32u << 20) /* a reply's cap (include/http.h) */

/* One per socket curl asks us to watch; freed in the poll close callback. */
typedef struct sock {
  uv_poll_t poll;
  curl_socket_t fd;
  int events; /* what the poll handle waits for now */
  http_t *h;
  list_t node; /* on h->socks until sock_close() */
} sock_t;

struct http_req {
  http_t *h;
  CURL *easy;
  struct curl_slist *hdrs;
  buf_t in;   /* buffered body, or stream bytes not yet handed on */
  buf_t head; /* header block of the latest response */
  size_t max_body;
  int head_done; /* the final header block is complete */
  int head_sent; /* on_head has run */
  int too_large;
  int attached; /* added to the multi handle */
  int cancelled;
  int in_cb; /* a user callback for this request is running */
  int on_pending;
  int start_failed; /* curl would not take it: fails from the loop */
  http_head_cb on_head;
  http_data_cb on_data;
  http_done_cb on_done;
  void *data;
  list_t node;  /* on h->reqs while attached */
  list_t pnode; /* on h->pending while on_pending: has something to hand on */
  char errbuf[CURL_ERROR_SIZE];
};

struct http {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  uv_timer_t later; /* dispatches requests that could not start */
  int handles_open; /* timer and later: h is freed with the last */
  list_t socks;     /* sock_t.node, newest first */
  list_t reqs;      /* attached requests (http_req_t.node), newest first */
  list_t pending;   /* http_req_t.pnode, in order */
  CURL *pool[POOL_MAX];
  int npool;
  size_t active;
  int dispatching;
  int in_timer;   /* inside timer_cb (see timer_fn) */
  int in_request; /* inside http_request(): no callback may run */
  int max_conns, max_idle;
};

static void dispatch(http_t *h);

/* ---- sockets and timer (curl -> libuv) ---- */

static void poll_close_cb(uv_handle_t *handle) {
  free(handle->data);
}

static void sock_close(sock_t *s) {
  list_remove(&s->node);
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, poll_close_cb);
}

static void poll_cb(uv_poll_t *handle, int status, int events) {
  sock_t *s = handle->data;
  http_t *h = s->h;
  int flags = 0, running;
  /* libuv reports POLLERR as an error status (and stops the handle): let
   * curl read the socket, so that it finds and names the real error
   * ("Connection reset by peer", "Empty reply from server") rather than
   * "select/poll returned error" */
  if (status < 0) flags = CURL_CSELECT_IN | CURL_CSELECT_OUT | CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  dispatch(h);
}

static int socket_fn(CURL *easy, curl_socket_t fd, int action, void *userp,
                     void *socketp) {
  (void)easy;
  http_t *h = userp;
  sock_t *s = socketp;
  if (action == CURL_POLL_REMOVE) {
    if (s) {
      curl_multi_assign(h->multi, fd, NULL);
      sock_close(s);
    }
    return 0;
  }
  if (!s) {
    s = xcalloc(1, sizeof *s);
    s->fd = fd;
    s->h = h;
    if (uv_poll_init_socket(h->loop, &s->poll, fd) < 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    list_insert_head(&h->socks, &s->node);
    curl_multi_assign(h->multi, fd, s);
  }
  int events = 0;
  if (action != CURL_POLL_IN) events |= UV_WRITABLE;
  if (action != CURL_POLL_OUT) events |= UV_READABLE;
  if (events != s->events) { /* re-arming costs an epoll_ctl: only on change */
    s->events = events;
    uv_poll_start(&s->poll, events, poll_cb);
  }
  return 0;
}

static void timer_cb(uv_timer_t *t) {
  http_t *h = t->data;
  int running;
  h->in_timer = 1;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  dispatch(h);
  h->in_timer = 0;
}

/* curl asks for a timeout; never call back into curl from here.  0 means
 * "as soon as possible" (a request just added): the timer runs in this
 * loop iteration's timer phase or the next, not a millisecond later (that
 * millisecond was most of register's latency above the floor, once for the
 * inspect and once for the etcd write).  Only a 0 asked for from within
 * timer_cb (curl's timeout handling, or a callback it completed that starts
 * another request) waits 1 ms: libuv 1.44 runs a 0 ms timer started from a
 * timer callback in the same pass, so a request that fails at once and is
 * started again at once (a hook's loop) would keep the loop in its timer
 * phase, where no I/O and no other timer (the hook's time limit) runs. */
static int timer_fn(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  http_t *h = userp;
  if (timeout_ms < 0) {
    uv_timer_stop(&h->timer);
  } else {
    uint64_t ms = (uint64_t)timeout_ms;
    if (ms == 0 && h->in_timer) ms = 1;
    uv_timer_start(&h->timer, timer_cb, ms, 0);
  }
  return 0;
}

/* ---- curl's per-transfer callbacks: buffer only ---- */

static void mark_pending(http_req_t *r) {
  if (r->on_pending) return;
  r->on_pending = 1;
  list_insert_tail(&r->h->pending, &r->pnode);
}

static size_t write_fn(char *p, size_t size, size_t n, void *ud) {
  http_req_t *r = ud;
  size_t len = size * n;
  if (r->cancelled) return 0;
  if (!r->on_data && r->in.len + len > r->max_body) {
    r->too_large = 1;
    return 0;
  }
  buf_append(&r->in, p, len);
  if (r->on_data) mark_pending(r);
  return len;
}

static size_t header_fn(char *p, size_t size, size_t n, void *ud) {
  http_req_t *r = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    /* a new response (after a 1xx): start over */
    buf_reset(&r->head);
    r->head_done = 0;
  }
  buf_append(&r->head, p, len);
  if ((len == 2 && p[0] == '\r') || (len == 1 && p[0] == '\n')) {
    const char *sp = strchr(r->head.data, ' ');
    if (!(sp && sp[1] == '1')) { /* not an interim 1xx response */
      r->head_done = 1;
      if (r->on_head) mark_pending(r);
    }
  }
  return len;
}

/* ---- requests ---- */

static void http_req_free(http_req_t *r) {
  http_t *h = r->h;
  /* off every list: no callback or hand-on can reach it any more */
  REGISTER_ASSERT(!list_linked(&r->node) && !list_linked(&r->pnode));
  REGISTER_ASSERT(!r->in_cb);
  if (r->easy) {
    if (h->npool < POOL_MAX) {
      curl_easy_reset(r->easy);
      h->pool[h->npool++] = r->easy;
    } else {
      curl_easy_cleanup(r->easy);
    }
  }
  curl_slist_free_all(r->hdrs);
  buf_free(&r->in);
  buf_free(&r->head);
  free(r);
}

/* Takes the request off the multi handle and the active list. */
static void req_detach(http_req_t *r) {
  http_t *h = r->h;
  if (!r->attached) return;
  r->attached = 0;
  curl_multi_remove_handle(h->multi, r->easy);
  list_remove(&r->node);
  h->active--;
}

static void fill_resp(http_req_t *r, http_resp_t *resp) {
  memset(resp, 0, sizeof *resp);
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &resp->status);
  resp->headers = r->head.data ? r->head.data : "";
  resp->headers_len = r->head.len;
  if (!r->on_data) {
    resp->body = r->in.data ? r->in.data : "";
    resp->body_len = r->in.len;
  } else {
    resp->body = "";
  }
}

/* Hands on headers and stream data.  Returns 0 if the request is gone. */
static int deliver(http_req_t *r) {
  if (r->head_done && !r->head_sent) {
    r->head_sent = 1;
    if (r->on_head) {
      http_resp_t resp;
      fill_resp(r, &resp);
      r->in_cb = 1;
      r->on_head(r, &resp, r->data);
      r->in_cb = 0;
      if (r->cancelled) return 0;
    }
  }
  if (r->on_data && r->in.len) {
    r->in_cb = 1;
    int stop = r->on_data(r, r->in.data, r->in.len, r->data);
    r->in_cb = 0;
    buf_reset(&r->in);
    if (stop && !r->cancelled) {
      r->cancelled = 1;
      req_detach(r);
    }
    if (r->cancelled) return 0;
  }
  return 1;
}

/* curl's code as the kind of failure callers act on. */
static http_err_t err_kind(CURLcode code) {
  switch (code) {
  case CURLE_OK:
    return HTTP_ERR_NONE;
  case CURLE_COULDNT_CONNECT:
    return HTTP_ERR_CONNECT;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return HTTP_ERR_RESOLVE;
  case CURLE_OPERATION_TIMEDOUT:
    return HTTP_ERR_TIMEOUT;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_USE_SSL_FAILED:
    return HTTP_ERR_TLS;
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
    return HTTP_ERR_DROPPED;
  case CURLE_GOT_NOTHING:
    return HTTP_ERR_EMPTY;
  case CURLE_FILESIZE_EXCEEDED:
    return HTTP_ERR_TOO_LARGE;
  default:
    return HTTP_ERR_OTHER;
  }
}

static void dispatch(http_t *h) {
  /* callbacks run from the loop, never inside the call that started them */
  REGISTER_ASSERT(!h->in_request);
  if (h->dispatching) return;
  h->dispatching = 1;
  list_t *n;
  while ((n = list_pop(&h->pending))) {
    http_req_t *r = list_entry(n, http_req_t, pnode);
    REGISTER_ASSERT(r->on_pending); /* the flag says it is on the list */
    r->on_pending = 0;
    if (r->start_failed && !r->cancelled) {
      http_resp_t resp;
      memset(&resp, 0, sizeof resp);
      resp.error = HTTP_ERR_OTHER;
      resp.errmsg = r->errbuf;
      resp.body = resp.headers = "";
      if (r->on_done) {
        r->in_cb = 1;
        r->on_done(r, &resp, r->data);
        r->in_cb = 0;
      }
      http_req_free(r);
    } else if (r->cancelled || !deliver(r)) {
      http_req_free(r);
    }
  }
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(h->multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    http_req_t *r;
    CURLcode code = msg->data.result;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    /* a request completes once, and only while attached: a cancelled one
     * left the multi handle, so curl cannot report it */
    REGISTER_ASSERT(r->attached && !r->cancelled && !r->in_cb);
    req_detach(r); /* msg is invalid from here on */
    if (!deliver(r)) {
      http_req_free(r);
      continue;
    }
    http_resp_t resp;
    fill_resp(r, &resp);
    if (r->too_large) {
      resp.error = HTTP_ERR_TOO_LARGE;
      snprintf(r->errbuf, sizeof r->errbuf,
               "reply larger than the %zu byte cap; not read", r->max_body);
      resp.errmsg = r->errbuf;
    } else if (code != CURLE_OK) {
      resp.error = err_kind(code);
      resp.errmsg = r->errbuf[0] ? r->errbuf : curl_easy_strerror(code);
    }
    if (r->on_done) {
      r->in_cb = 1;
      r->on_done(r, &resp, r->data);
      r->in_cb = 0;
    }
    http_req_free(r);
  }
  h->dispatching = 0;
}

static http_req_t *request(http_t *h, const http_opts_t *o);

/* Contents win over files (include/http.h).  A blob is copied by curl. */
static void set_blob(CURL *e, CURLoption opt, const char *p, size_t len) {
  struct curl_blob b = {(void *)(uintptr_t)p, len, CURL_BLOB_COPY};
  curl_easy_setopt(e, opt, &b);
}

static void set_tls(CURL *e, const http_tls_t *t) {
  if (t->cacert_pem) {
    set_blob(e, CURLOPT_CAINFO_BLOB, t->cacert_pem, t->cacert_len);
  } else if (t->cacert) {
    curl_easy_setopt(e, CURLOPT_CAINFO, t->cacert);
#if LIBCURL_VERSION_NUM >= 0x075700
    /* 7.87 keeps a CA file's store for 24 h: a replaced bundle would not
     * be seen by new connections */
    curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, 0L);
#endif
  }
  if (t->cert_pem)
    set_blob(e, CURLOPT_SSLCERT_BLOB, t->cert_pem, t->cert_len);
  else if (t->cert)
    curl_easy_setopt(e, CURLOPT_SSLCERT, t->cert);
  if (t->key_pem)
    set_blob(e, CURLOPT_SSLKEY_BLOB, t->key_pem, t->key_len);
  else if (t->key)
    curl_easy_setopt(e, CURLOPT_SSLKEY, t->key);
}

static char *dup_mem(const char *p, size_t n) {
  if (!p) return NULL;
  char *d = xmalloc(n + 1);
  memcpy(d, p, n);
  d[n] = '\0';
  return d;
}

void http_tls_copy(http_tls_t *dst, const http_tls_t *src) {
  memset(dst, 0, sizeof *dst);
  dst->cacert = src->cacert ? xstrdup(src->cacert) : NULL;
  dst->cert = src->cert ? xstrdup(src->cert) : NULL;
  dst->key = src->key ? xstrdup(src->key) : NULL;
  dst->cacert_pem = dup_mem(src->cacert_pem, src->cacert_len);
  dst->cacert_len = src->cacert_pem ? src->cacert_len : 0;
  dst->cert_pem = dup_mem(src->cert_pem, src->cert_len);
  dst->cert_len = src->cert_pem ? src->cert_len : 0;
  dst->key_pem = dup_mem(src->key_pem, src->key_len);
  dst->key_len = src->key_pem ? src->key_len : 0;
  dst->cert_not_before = src->cert_not_before;
  dst->cert_not_after = src->cert_not_after;
}

static void free_const(const char *p, size_t wipe) {
  char *m = (char *)(uintptr_t)p;
  if (m && wipe) memset(m, 0, wipe);
  free(m);
}

void http_tls_free(http_tls_t *t) {
  free_const(t->cacert, 0);
  free_const(t->cert, 0);
  free_const(t->key, 0);
  free_const(t->cacert_pem, 0);
  free_const(t->cert_pem, 0);
  free_const(t->key_pem, t->key_len);
  memset(t, 0, sizeof *t);
}

int http_tls_has_cert(const http_tls_t *t) {
  return t && (t->cert || t->cert_pem);
}

int http_tls_cert_invalid(const http_tls_t *t, long long now, char *out,
                          size_t n) {
  if (n) out[0] = '\0';
  if (!http_tls_has_cert(t) || !t->cert_not_after) return 0;
  const char *what;
  time_t when;
  if (now > t->cert_not_after) {
    what = "expired at";
    when = (time_t)t->cert_not_after;
  } else if (now < t->cert_not_before) {
    what = "not valid before";
    when = (time_t)t->cert_not_before;
  } else {
    return 0;
  }
  struct tm tm;
  char ts[32] = "?";
  if (gmtime_r(&when, &tm)) strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf(out, n, "%s %s", what, ts);
  return 1;
}

http_req_t *http_request(http_t *h, const http_opts_t *o) {
  h->in_request++;
  http_req_t *r = request(h, o);
  h->in_request--;
  return r;
}

/* CURLOPT_SOCKOPTFUNCTION for reset_at_close (http.h). */
static int sockopt_reset(void *clientp, curl_socket_t fd,
                         curlsocktype purpose) {
  (void)clientp;
  if (purpose == CURLSOCKTYPE_IPCXN) {
    struct linger l = {1, 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  return CURL_SOCKOPT_OK;
}

static void later_cb(uv_timer_t *t) {
  dispatch(t->data);
}

/* r cannot start: it fails from the loop (dispatch()), with why. */
static http_req_t *start_failed(http_req_t *r, const char *why) {
  snprintf(r->errbuf, sizeof r->errbuf, "cannot start the request: %s", why);
  r->start_failed = 1;
  mark_pending(r);
  uv_timer_start(&r->h->later, later_cb, 0, 0);
  return r;
}

static http_req_t *request(http_t *h, const http_opts_t *o) {
  http_req_t *r = xcalloc(1, sizeof *r);
  r->h = h;
  buf_init(&r->in);
  buf_init(&r->head);
  r->max_body = o->max_body ? o->max_body : DEFAULT_MAX_BODY;
  r->on_head = o->on_head;
  r->on_data = o->on_data;
  r->on_done = o->on_done;
  r->data = o->data;
  r->easy = h->npool ? h->pool[--h->npool] : curl_easy_init();
  if (!r->easy) return start_failed(r, "curl has no handle for it");

  CURL *e = r->easy;
  const char *method = o->method ? o->method : "GET";
  curl_easy_setopt(e, CURLOPT_URL, o->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_fn);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_fn);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   o->connect_timeout_ms ? o->connect_timeout_ms : 5000L);
  /* a peer gone silent (a partition) under an idle pooled connection or a
   * stream is noticed within about 10 + 3 x 5 s, not the kernel's 2 hours */
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 10L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 5L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  /* set either way: the easy handle may come from the pool */
  curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION,
                   o->reset_at_close ? sockopt_reset : NULL);
  if (o->unix_socket)
    curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, o->unix_socket);
  if (strcmp(method, "GET") == 0) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  if (o->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body);
  }
  if (o->tls) set_tls(e, o->tls);
  if (o->userpwd) {
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(e, CURLOPT_USERPWD, o->userpwd);
  }
  /* never wait for a 100-continue that a server may not send */
  r->hdrs = curl_slist_append(NULL, "Expect:");
  for (const char *const *p = o->headers; p && *p; p++)
    r->hdrs = curl_slist_append(r->hdrs, *p);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);

  if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
    log_error("http: cannot start %s %s", method, o->url);
    return start_failed(r, "curl refused it");
  }
  r->attached = 1;
  list_insert_head(&h->reqs, &r->node);
  h->active++;
  return r;
}

void http_cancel(http_req_t *r) {
  if (!r || r->cancelled) return;
  r->cancelled = 1;
  req_detach(r);
  /* the dispatcher frees it once its callback or pending slot is done */
  if (!r->in_cb && !r->on_pending) http_req_free(r);
}

int http_header(const http_resp_t *resp, const char *name, char *out,
                size_t outlen) {
  size_t n = strlen(name);
  const char *p = resp->headers, *end = p + resp->headers_len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    if ((size_t)(eol - p) > n && strncasecmp(p, name, n) == 0 && p[n] == ':') {
      const char *v = p + n + 1;
      while (v < eol && (*v == ' ' || *v == '\t'))
        v++;
      const char *ve = eol;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
        ve--;
      size_t len = (size_t)(ve - v);
      if (len >= outlen) len = outlen - 1;
      memcpy(out, v, len);
      out[len] = '\0';
      return 0;
    }
    p = eol + 1;
  }
  return -1;
}

static CURLM *multi_new(http_t *h) {
  CURLM *m = curl_multi_init();
  if (!m) return NULL;
  curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, socket_fn);
  curl_multi_setopt(m, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, timer_fn);
  curl_multi_setopt(m, CURLMOPT_TIMERDATA, h);
  curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)h->max_conns);
  curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)h->max_idle);
  return m;
}

http_t *http_new(uv_loop_t *loop, int max_host_conns, int max_idle) {
  http_t *h = xcalloc(1, sizeof *h);
  h->loop = loop;
  list_init(&h->socks);
  list_init(&h->reqs);
  list_init(&h->pending);
  h->max_conns = max_host_conns;
  h->max_idle = max_idle;
  h->multi = multi_new(h);
  if (!h->multi) {
    free(h);
    return NULL;
  }
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  uv_timer_init(loop, &h->later);
  h->later.data = h;
  h->handles_open = 2;
  return h;
}

int http_trim(http_t *h) {
  if (!list_empty(&h->reqs) || !list_empty(&h->pending) || h->dispatching)
    return -1;
  CURLM *fresh = multi_new(h);
  if (!fresh) return -1;
  /* closing the old handle reports CURL_POLL_REMOVE for its sockets */
  curl_multi_cleanup(h->multi);
  h->multi = fresh;
  list_t *n;
  while ((n = list_first(&h->socks)))
    sock_close(list_entry(n, sock_t, node));
  uv_timer_stop(&h->timer);
  for (int i = 0; i < h->npool; i++)
    curl_easy_cleanup(h->pool[i]);
  h->npool = 0;
  return 0;
}

static void timer_close_cb(uv_handle_t *handle) {
  http_t *h = handle->data;
  REGISTER_ASSERT(h->handles_open > 0); /* one close callback per timer */
  if (--h->handles_open == 0) free(h);
}

void http_free(http_t *h) {
  if (!h) return;
  list_t *n;
  while ((n = list_first(&h->reqs))) {
    http_req_t *r = list_entry(n, http_req_t, node);
    r->cancelled = 1;
    req_detach(r);
    if (!r->on_pending && !r->in_cb) http_req_free(r);
  }
  while ((n = list_pop(&h->pending)))
    http_req_free(list_entry(n, http_req_t, pnode));
  for (int i = 0; i < h->npool; i++)
    curl_easy_cleanup(h->pool[i]);
  h->npool = 0;
  curl_multi_cleanup(h->multi); /* may still report CURL_POLL_REMOVE */
  h->multi = NULL;
  while ((n = list_first(&h->socks)))
    sock_close(list_entry(n, sock_t, node));
  uv_timer_stop(&h->timer);
  uv_close((uv_handle_t *)&h->timer, timer_close_cb);
  uv_close((uv_handle_t *)&h->later, timer_close_cb);
}

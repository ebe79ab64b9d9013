/* checks: health checks of containers' ports in the libuv loop. */
#include "checks.h"
#include "config.h"
#include "log.h"
#include "map.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_INFLIGHT 32
#define REASON_MAX 160
/* After a connect, how long a TCP check waits for the peer to close: a
 * proxy in front of the port (docker-proxy, for published ports reached on
 * loopback) accepts even when nothing listens behind it, then closes. */
#define GRACE_MS 100
#ifndef TICK_MAX
#define TICK_MAX 50
#endif

const double checks_buckets[CHECKS_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

typedef struct check check_t;
typedef struct cont cont_t;

/* What a check is doing, and so what its timer means. */
typedef enum {
  PH_IDLE,    /* the timer is the next run */
  PH_QUEUED,  /* due, waiting for a slot (timer stopped) */
  PH_RUNNING, /* the timer is the timeout (or a deferred failure) */
  PH_CLOSING  /* removed; freed in the timer's close callback */
} phase_t;

/* A TCP connect in flight.  Owned by itself: freed in its close callback,
 * which may come after the check is gone (check == NULL then). */
typedef struct {
  uv_tcp_t tcp;
  uv_connect_t req;
  check_t *check;
  char buf[64]; /* what the peer sends first (unused) */
} tcp_op_t;

struct check {
  checks_t *ck;
  cont_t *cont; /* NULL once removed */
  /* the spec, defaults applied; strings owned */
  char *port, *path, *method, *host, *address;
  checks_type_t type;
  int status_min, status_max;
  long interval_ms, timeout_ms;
  int rise, fall;
  /* the target: target_host NULL means unresolved (target_error says why) */
  char *target_host;
  int target_port;
  char *target_error;
  char *url;       /* http */
  char *host_line; /* http: "Host: ..." or NULL */
  char target_str[80];
  /* state */
  checks_state_t state;
  int ok_streak, fail_streak;
  char reason[REASON_MAX];
  uint64_t runs;
  phase_t phase;
  uint64_t due_ms;     /* loop time the current/next run is due */
  uint64_t started_ns; /* uv_hrtime() of the current run's start */
  uint64_t run_ms;     /* loop time the current run started */
  int deferred;        /* RUNNING: the timer reports deferred_reason */
  int grace;           /* RUNNING, tcp: connected; the timer ends the wait */
  char deferred_reason[REASON_MAX];
  tcp_op_t *op;
  http_req_t *req;
  int starting; /* inside check_start(): the run cannot end */
  uv_timer_t timer;
  check_t *qprev, *qnext; /* run queue */
};

struct cont {
  char *id; /* the map's key */
  check_t **v;
  size_t n;
};

struct checks {
  uv_loop_t *loop;
  http_t *http;
  int max_inflight;
  checks_transition_cb on_transition;
  void *ud;
  /* where checks may connect beyond the container's own addresses */
  unsigned char host_ip[16];
  int has_host_ip;
  config_cidr_t *allow;
  size_t nallow;
  map_t *conts;
  check_t *qhead, *qtail;
  size_t inflight, queued;
  int in_api;        /* inside checks_set()/checks_remove(): no transition */
  int in_transition; /* inside on_transition: checks_free() may not run */
  /* statistics */
  uint64_t by_state[3];
  uint64_t transitions[3];
  uint64_t runs[2][2];
  uint64_t buckets[2][CHECKS_BUCKETS];
  uint64_t count[2];
  double sum[2];
};

static void check_timer_cb(uv_timer_t *t);
static void check_start(check_t *c);

static const char *type_name(checks_type_t t) {
  return t == CHECKS_HTTP ? "http" : "tcp";
}

/* ---- target resolution ---- */

static int is_ip(const char *s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

int checks_resolve(const json_value_t *inspect, const char *port,
                   const char *address, char *host, size_t hostlen,
                   int *out_port, char *err, size_t errlen) {
  int pn = checks_port_number(port);
  if (pn < 0) {
    snprintf(err, errlen, "check port \"%.40s\" is not \"N/tcp\"",
             port ? port : "");
    return -1;
  }
  if (address && *address && is_ip(address)) {
    snprintf(host, hostlen, "%s", address);
    *out_port = pn;
    return 0;
  }
  if (json_is(inspect, JSON_ARRAY))
    inspect = inspect->len ? inspect->u.child : NULL;
  const json_value_t *ns = json_get(inspect, "NetworkSettings");
  if (!ns) {
    snprintf(err, errlen, "not a container inspect document");
    return -1;
  }
  if (address && *address) {
    const json_value_t *net = json_get(json_get(ns, "Networks"), address);
    if (!net) {
      snprintf(err, errlen, "the container is not on network \"%.60s\"",
               address);
      return -1;
    }
    const char *ip = json_get_str(net, "IPAddress");
    if (!ip || !*ip) ip = json_get_str(net, "GlobalIPv6Address");
    if (!ip || !*ip) {
      snprintf(err, errlen, "the container has no address on network \"%.60s\"",
               address);
      return -1;
    }
    snprintf(host, hostlen, "%s", ip);
    *out_port = pn;
    return 0;
  }
  const json_value_t *b = json_get(json_get(ns, "Ports"), port);
  if (!json_is(b, JSON_ARRAY) || b->len == 0) {
    snprintf(err, errlen,
             "%.40s is not published (an address can name a network)", port);
    return -1;
  }
  const json_value_t *first = b->u.child;
  const char *ip = json_get_str(first, "HostIp");
  const char *hp = json_get_str(first, "HostPort");
  long hport;
  if (!hp || util_parse_long(hp, 1, 65535, &hport) < 0) {
    snprintf(err, errlen, "%.40s has no usable HostPort", port);
    return -1;
  }
  if (!ip || !*ip || strcmp(ip, "0.0.0.0") == 0)
    ip = "127.0.0.1";
  else if (strcmp(ip, "::") == 0)
    ip = "::1";
  snprintf(host, hostlen, "%s", ip);
  *out_port = (int)hport;
  return 0;
}

/* ---- which targets a check may reach ---- */

/* ip (text) is a in 16 bytes, as config_addr16 makes it. */
static int same_ip(const char *ip, const unsigned char a[16]) {
  unsigned char b[16];
  return ip && *ip && config_addr16(ip, b) == 0 && memcmp(a, b, 16) == 0;
}

/* Is a one of the container's own addresses: a published binding's
 * HostIp, or its address on one of its networks? */
static int container_has(const json_value_t *inspect,
                         const unsigned char a[16]) {
  if (json_is(inspect, JSON_ARRAY))
    inspect = inspect->len ? inspect->u.child : NULL;
  const json_value_t *ns = json_get(inspect, "NetworkSettings");
  if (same_ip(json_get_str(ns, "IPAddress"), a) ||
      same_ip(json_get_str(ns, "GlobalIPv6Address"), a))
    return 1;
  const json_value_t *nets = json_get(ns, "Networks");
  for (const json_value_t *n = json_is(nets, JSON_OBJECT) ? nets->u.child
                                                          : NULL;
       n; n = n->next)
    if (same_ip(json_get_str(n, "IPAddress"), a) ||
        same_ip(json_get_str(n, "GlobalIPv6Address"), a))
      return 1;
  const json_value_t *ports = json_get(ns, "Ports");
  for (const json_value_t *p = json_is(ports, JSON_OBJECT) ? ports->u.child
                                                           : NULL;
       p; p = p->next)
    for (const json_value_t *b = json_is(p, JSON_ARRAY) ? p->u.child : NULL; b;
         b = b->next)
      if (same_ip(json_get_str(b, "HostIp"), a)) return 1;
  return 0;
}

/* 1 when a check may connect to host: on this host (loopback, the
 * unspecified addresses, --host-ip, the container's own addresses) or
 * within --check-allow.  0 with the reason in why. */
static int target_allowed(const checks_t *ck, const json_value_t *inspect,
                          const char *host, char *why, size_t whylen) {
  static const unsigned char any6[16] = {0}, lo6[16] = {[15] = 1},
                             v4[12] = {[10] = 0xff, [11] = 0xff};
  unsigned char a[16];
  if (config_addr16(host, a) < 0) {
    snprintf(why, whylen, "target %.60s is not an IP address", host);
    return 0;
  }
  int ok =
      memcmp(a, any6, 16) == 0 || memcmp(a, lo6, 16) == 0 ||
      (memcmp(a, v4, 12) == 0 && (a[12] == 127 || !memcmp(a + 12, any6, 4)));
  ok = ok || (ck->has_host_ip && memcmp(a, ck->host_ip, 16) == 0);
  for (size_t i = 0; !ok && i < ck->nallow; i++)
    ok = config_cidr_has(&ck->allow[i], a);
  ok = ok || (inspect && container_has(inspect, a));
  if (!ok)
    snprintf(why, whylen,
             "target %.60s is not on this host (allow it with --check-allow)",
             host);
  return ok;
}

/* Runs start on a grid of ticks (interval / 20, at most 50 ms): checks due
 * in the same tick share one wake-up of the loop, and their connections
 * complete in the same few polls; the jitter still spreads them over the
 * interval.  Arms c's timer for a run `delay` ms from now. */
static void schedule(check_t *c, uint64_t delay) {
  uint64_t tick = (uint64_t)c->interval_ms / 20;
  if (tick > TICK_MAX) tick = TICK_MAX;
  uint64_t now = uv_now(c->ck->loop), due = now + delay;
  if (tick > 1) due = (due + tick - 1) / tick * tick;
  c->due_ms = due;
  uv_timer_start(&c->timer, check_timer_cb, due - now, 0);
}

/* ---- the run queue ---- */

static void queue_push(checks_t *ck, check_t *c) {
  REGISTER_ASSERT(c->phase == PH_IDLE); /* queued at most once */
  c->phase = PH_QUEUED;
  c->qnext = NULL;
  c->qprev = ck->qtail;
  if (ck->qtail)
    ck->qtail->qnext = c;
  else
    ck->qhead = c;
  ck->qtail = c;
  ck->queued++;
}

static void queue_unlink(checks_t *ck, check_t *c) {
  REGISTER_ASSERT(c->phase == PH_QUEUED && ck->queued > 0);
  if (c->qprev)
    c->qprev->qnext = c->qnext;
  else
    ck->qhead = c->qnext;
  if (c->qnext)
    c->qnext->qprev = c->qprev;
  else
    ck->qtail = c->qprev;
  c->qprev = c->qnext = NULL;
  ck->queued--;
}

/* Starts waiting checks while there is room. */
static void queue_pump(checks_t *ck) {
  while (ck->qhead && ck->inflight < (size_t)ck->max_inflight) {
    check_t *c = ck->qhead;
    queue_unlink(ck, c);
    check_start(c);
  }
}

/* ---- running a check ---- */

static void op_close_cb(uv_handle_t *h) {
  free(h->data);
}

/* Stops whatever is in flight, without callbacks. */
static void abandon_io(check_t *c) {
  if (c->op) {
    c->op->check = NULL;
    uv_close((uv_handle_t *)&c->op->tcp, op_close_cb);
    c->op = NULL;
  }
  if (c->req) {
    http_cancel(c->req);
    c->req = NULL;
  }
}

static void log_transition(const check_t *c, checks_state_t old) {
  char what[200];
  if (c->type == CHECKS_HTTP)
    snprintf(what, sizeof what, "http %s %s", c->method, c->path);
  else
    snprintf(what, sizeof what, "tcp");
  char id12[13];
  snprintf(id12, sizeof id12, "%s", c->cont->id);
  char msg[64];
  snprintf(msg, sizeof msg, "check %s", checks_state_name(c->state));
  log_fields(c->state == CHECKS_FAILING ? LOG_WARN : LOG_INFO, msg, "container",
             id12, "port", c->port, "check", what, "target",
             c->target_str[0] ? c->target_str : "-", "reason", c->reason, "was",
             checks_state_name(old), NULL);
}

/* One run is over.  The caller touches nothing of c afterwards: the
 * transition callback may remove it. */
static void check_done(check_t *c, int ok, const char *reason) {
  checks_t *ck = c->ck;
  /* a run ends once: it was running, and counted; never inside the
   * check_start() that began it, nor inside checks_set/checks_remove */
  REGISTER_ASSERT(c->phase == PH_RUNNING && ck->inflight > 0);
  REGISTER_ASSERT(!c->starting && !ck->in_api);
  c->phase = PH_IDLE;
  ck->inflight--;
  uv_timer_stop(&c->timer);
  double secs = (double)(uv_hrtime() - c->started_ns) / 1e9;
  int t = c->type == CHECKS_HTTP;
  ck->runs[t][ok ? 1 : 0]++;
  ck->count[t]++;
  ck->sum[t] += secs;
  for (int i = 0; i < CHECKS_BUCKETS; i++)
    if (secs <= checks_buckets[i]) ck->buckets[t][i]++;
  c->runs++;
  if (reason != c->reason) snprintf(c->reason, sizeof c->reason, "%s", reason);

  checks_state_t old = c->state;
  if (ok) {
    c->ok_streak++;
    c->fail_streak = 0;
    if (c->state != CHECKS_PASSING && c->ok_streak >= c->rise)
      c->state = CHECKS_PASSING;
  } else {
    c->fail_streak++;
    c->ok_streak = 0;
    if (c->state != CHECKS_FAILING && c->fail_streak >= c->fall)
      c->state = CHECKS_FAILING;
  }

  /* the next run: one interval after this one started */
  uint64_t now = uv_now(ck->loop);
  uint64_t due = c->due_ms + (uint64_t)c->interval_ms;
  schedule(c, due > now ? due - now : 0);

  queue_pump(ck);

  if (c->state == old) return;
  ck->by_state[old]--;
  ck->by_state[c->state]++;
  ck->transitions[c->state]++;
  log_transition(c, old);
  if (!ck->on_transition) return;
  size_t index = 0;
  while (index < c->cont->n && c->cont->v[index] != c)
    index++;
  char id[128], why[REASON_MAX];
  snprintf(id, sizeof id, "%s", c->cont->id);
  snprintf(why, sizeof why, "%s", c->reason);
  ck->in_transition++;
  ck->on_transition(ck->ud, id, index, old, c->state, why);
  ck->in_transition--;
}

/* A failure found while starting: reported from the loop, never inside the
 * call that started the run. */
static void fail_later(check_t *c, const char *reason) {
  c->deferred = 1;
  snprintf(c->deferred_reason, sizeof c->deferred_reason, "%s", reason);
  uv_timer_start(&c->timer, check_timer_cb, 0, 0);
}

/* Ends a TCP run: the connection is closed, the result reported. */
static void tcp_done(tcp_op_t *op, int ok, const char *reason) {
  check_t *c = op->check;
  REGISTER_ASSERT(c && c->op == op); /* the connect this run waits for */
  op->check = NULL;
  c->op = NULL;
  c->grace = 0;
  uv_close((uv_handle_t *)&op->tcp, op_close_cb);
  check_done(c, ok, reason);
}

static void op_alloc_cb(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  (void)size;
  tcp_op_t *op = h->data;
  *buf = uv_buf_init(op->buf, sizeof op->buf);
}

static void op_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  tcp_op_t *op = s->data;
  if (!op->check || n == 0) return;
  if (n > 0) /* a banner: someone is there */
    tcp_done(op, 1, "connected");
  else if (n == UV_EOF)
    tcp_done(op, 0, "connection closed at once");
  else
    tcp_done(op, 0, uv_strerror((int)n));
}

static void connect_cb(uv_connect_t *req, int status) {
  tcp_op_t *op = req->data;
  check_t *c = op->check;
  if (!c) return; /* abandoned: closing already */
  REGISTER_ASSERT(c->op == op && c->phase == PH_RUNNING && !c->grace);
  if (status < 0) {
    tcp_done(op, 0, uv_strerror(status));
    return;
  }
  /* connected: passing unless the peer closes within the grace */
  uint64_t spent = uv_now(c->ck->loop) - c->run_ms;
  uint64_t left =
      (uint64_t)c->timeout_ms > spent ? (uint64_t)c->timeout_ms - spent : 0;
  if (uv_read_start((uv_stream_t *)&op->tcp, op_alloc_cb, op_read_cb) < 0) {
    tcp_done(op, 1, "connected");
    return;
  }
  c->grace = 1;
  uv_timer_start(&c->timer, check_timer_cb, left < GRACE_MS ? left : GRACE_MS,
                 0);
}

static int on_data(http_req_t *req, const char *p, size_t n, void *data) {
  (void)req, (void)p, (void)n, (void)data;
  return 0; /* the body does not matter */
}

static void on_done(http_req_t *req, const http_resp_t *resp, void *data) {
  check_t *c = data;
  /* the request this run waits for (an abandoned one is cancelled) */
  REGISTER_ASSERT(c->req == req && c->phase == PH_RUNNING);
  c->req = NULL;
  char why[REASON_MAX];
  int ok = 0;
  if (resp->error) {
    const char *m = resp->errmsg ? resp->errmsg : "request failed";
    if (resp->error == HTTP_ERR_CONNECT) {
      /* curl's message names the port and the milliseconds; keep the
       * cause.  (Older curl says "Couldn't connect to server" for a
       * refused connection: http_resp_t has no errno to tell.) */
      const char *tail = strrchr(m, ':');
      if (strstr(m, "refused"))
        m = "connection refused";
      else {
        snprintf(why, sizeof why, "cannot connect: %s",
                 tail && tail[1] == ' ' ? tail + 2 : m);
        m = why;
      }
    } else if (resp->error == HTTP_ERR_EMPTY) {
      m = "connection closed without a response"; /* docker-proxy, too */
    } else if (resp->error == HTTP_ERR_TIMEOUT) {
      snprintf(why, sizeof why, "timeout after %ld ms", c->timeout_ms);
      m = why;
    }
    if (m != why) snprintf(why, sizeof why, "%s", m);
  } else {
    ok = resp->status >= c->status_min && resp->status <= c->status_max;
    snprintf(why, sizeof why, "HTTP %ld", resp->status);
  }
  check_done(c, ok, why);
}

static void start_tcp(check_t *c) {
  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof sa);
  if (uv_ip4_addr(c->target_host, c->target_port, (struct sockaddr_in *)&sa) &&
      uv_ip6_addr(c->target_host, c->target_port, (struct sockaddr_in6 *)&sa)) {
    fail_later(c, "the target is not an IP address");
    return;
  }
  tcp_op_t *op = xcalloc(1, sizeof *op);
  int rc = uv_tcp_init(c->ck->loop, &op->tcp);
  if (rc < 0) {
    free(op);
    fail_later(c, uv_strerror(rc));
    return;
  }
  op->tcp.data = op;
  op->req.data = op;
  op->check = c;
  rc = uv_tcp_connect(&op->req, &op->tcp, (const struct sockaddr *)&sa,
                      connect_cb);
  if (rc < 0) {
    op->check = NULL;
    uv_close((uv_handle_t *)&op->tcp, op_close_cb);
    fail_later(c, uv_strerror(rc));
    return;
  }
  c->op = op;
}

static void start_http(check_t *c) {
  if (!c->ck->http) {
    fail_later(c, "no HTTP client");
    return;
  }
  const char *headers[3];
  int nh = 0;
  headers[nh++] = "Connection: close"; /* no idle connections per check */
  if (c->host_line) headers[nh++] = c->host_line;
  headers[nh] = NULL;
  http_opts_t o;
  memset(&o, 0, sizeof o);
  o.method = c->method;
  o.url = c->url;
  o.headers = headers;
  /* our own timer decides; curl's limits are a backstop */
  o.timeout_ms = c->timeout_ms + 1000;
  o.connect_timeout_ms = c->timeout_ms + 1000;
  o.on_data = on_data;
  o.on_done = on_done;
  o.data = c;
  c->req = http_request(c->ck->http, &o);
  REGISTER_ASSERT(c->req); /* one that cannot start fails from the loop */
}

static void check_start(check_t *c) {
  checks_t *ck = c->ck;
  /* one run at a time, never past the concurrency bound */
  REGISTER_ASSERT(c->phase != PH_RUNNING && c->phase != PH_CLOSING &&
                  ck->inflight < (size_t)ck->max_inflight);
  c->phase = PH_RUNNING;
  c->deferred = 0;
  c->grace = 0;
  c->run_ms = uv_now(ck->loop);
  ck->inflight++;
  c->started_ns = uv_hrtime();
  uv_timer_start(&c->timer, check_timer_cb, (uint64_t)c->timeout_ms, 0);
  c->starting = 1;
  if (!c->target_host)
    fail_later(c, c->target_error);
  else if (c->type == CHECKS_TCP)
    start_tcp(c);
  else
    start_http(c);
  c->starting = 0;
}

static void check_timer_cb(uv_timer_t *t) {
  check_t *c = t->data;
  checks_t *ck = c->ck;
  if (c->phase == PH_IDLE) {
    if (ck->inflight < (size_t)ck->max_inflight)
      check_start(c);
    else
      queue_push(ck, c);
    return;
  }
  if (c->phase != PH_RUNNING) return;
  char why[REASON_MAX];
  if (c->grace) { /* connected, and the peer kept the connection open */
    tcp_done(c->op, 1, "connected");
    return;
  }
  if (c->deferred) {
    snprintf(why, sizeof why, "%s", c->deferred_reason);
  } else {
    abandon_io(c);
    snprintf(why, sizeof why, "timeout after %ld ms", c->timeout_ms);
  }
  check_done(c, 0, why);
}

/* ---- creating and removing checks ---- */

static char *dup_or_null(const char *s) {
  return s ? xstrdup(s) : NULL;
}

static int str_eq(const char *a, const char *b) {
  if (!a || !b) return a == b;
  return strcmp(a, b) == 0;
}

static const char *or_default(const char *s, const char *d) {
  return s ? s : d;
}

/* Does check c run exactly what spec s (target resolved as given) asks? */
static int same(const check_t *c, const checks_spec_t *s, const char *thost,
                int tport, const char *terr) {
  return c->type == s->type && str_eq(c->port, s->port) &&
         str_eq(c->path, or_default(s->path, "/")) &&
         str_eq(c->method, or_default(s->method, "GET")) &&
         str_eq(c->host, s->host) && str_eq(c->address, s->address) &&
         c->status_min == s->status_min && c->status_max == s->status_max &&
         c->interval_ms == s->interval_ms && c->timeout_ms == s->timeout_ms &&
         c->rise == s->rise && c->fall == s->fall &&
         str_eq(c->target_host, thost) && c->target_port == tport &&
         str_eq(c->target_error, terr);
}

static check_t *check_new(checks_t *ck, cont_t *cont, const checks_spec_t *s,
                          const char *thost, int tport, const char *terr) {
  check_t *c = xcalloc(1, sizeof *c);
  c->ck = ck;
  c->cont = cont;
  c->port = xstrdup(s->port);
  c->type = s->type;
  c->path = xstrdup(or_default(s->path, "/"));
  c->method = xstrdup(or_default(s->method, "GET"));
  c->host = dup_or_null(s->host);
  c->address = dup_or_null(s->address);
  c->status_min = s->status_min;
  c->status_max = s->status_max;
  c->interval_ms = s->interval_ms;
  c->timeout_ms = s->timeout_ms;
  c->rise = s->rise;
  c->fall = s->fall;
  c->target_host = dup_or_null(thost);
  c->target_port = tport;
  c->target_error = dup_or_null(terr);
  if (thost) {
    int v6 = strchr(thost, ':') != NULL;
    snprintf(c->target_str, sizeof c->target_str, v6 ? "[%s]:%d" : "%s:%d",
             thost, tport);
    if (c->type == CHECKS_HTTP) {
      c->url = xasprintf("http://%s%s", c->target_str, c->path);
      if (c->host) c->host_line = xasprintf("Host: %s", c->host);
    }
  }
  c->state = CHECKS_PENDING;
  ck->by_state[CHECKS_PENDING]++;
  c->phase = PH_IDLE;
  uv_timer_init(ck->loop, &c->timer);
  c->timer.data = c;
  /* jitter: the first run somewhere in the first interval */
  schedule(c, util_rand((uint32_t)c->interval_ms));
  return c;
}

static void check_close_cb(uv_handle_t *h) {
  check_t *c = h->data;
  free(c->port);
  free(c->path);
  free(c->method);
  free(c->host);
  free(c->address);
  free(c->target_host);
  free(c->target_error);
  free(c->url);
  free(c->host_line);
  free(c);
}

/* Stops a check; its memory goes in the timer's close callback. */
static void check_destroy(check_t *c) {
  checks_t *ck = c->ck;
  if (c->phase == PH_RUNNING) {
    abandon_io(c);
    ck->inflight--;
  } else if (c->phase == PH_QUEUED) {
    queue_unlink(ck, c);
  }
  ck->by_state[c->state]--;
  c->phase = PH_CLOSING;
  c->cont = NULL;
  uv_close((uv_handle_t *)&c->timer, check_close_cb);
}

static void cont_free(cont_t *cont) {
  for (size_t i = 0; i < cont->n; i++)
    check_destroy(cont->v[i]);
  free(cont->v);
  free(cont->id);
  free(cont);
}

void checks_remove(checks_t *ck, const char *id) {
  cont_t *cont = map_del(ck->conts, id);
  if (!cont) return;
  ck->in_api++;
  cont_free(cont);
  queue_pump(ck); /* slots freed: start waiting checks (no callbacks) */
  ck->in_api--;
}

static int set(checks_t *ck, const char *id, const json_value_t *inspect,
               const checks_spec_t *specs, size_t n);

int checks_set(checks_t *ck, const char *id, const json_value_t *inspect,
               const checks_spec_t *specs, size_t n, char *err, size_t errlen) {
  for (size_t i = 0; i < n; i++) {
    if (checks_spec_validate(&specs[i], err, errlen) < 0) return -1;
  }
  if (n == 0) {
    checks_remove(ck, id);
    return 0;
  }
  ck->in_api++;
  int rc = set(ck, id, inspect, specs, n);
  ck->in_api--;
  return rc;
}

/* checks_set() of n > 0 valid specs. */
static int set(checks_t *ck, const char *id, const json_value_t *inspect,
               const checks_spec_t *specs, size_t n) {
  cont_t *cont = map_get(ck->conts, id);
  if (!cont) {
    cont = xcalloc(1, sizeof *cont);
    cont->id = xstrdup(id);
    map_put(ck->conts, cont->id, cont);
  }
  check_t **nv = xcalloc(n, sizeof *nv);
  unsigned char *fresh = xcalloc(n, 1);
  for (size_t i = 0; i < n; i++) {
    const checks_spec_t *s = &specs[i];
    char hbuf[INET6_ADDRSTRLEN + 64], ebuf[REASON_MAX];
    const char *thost = NULL, *terr = NULL;
    int tport = 0;
    if (s->target_host) {
      thost = s->target_host;
      tport = s->target_port;
    } else if (!inspect) {
      terr = "no target";
    } else if (checks_resolve(inspect, s->port, s->address, hbuf, sizeof hbuf,
                              &tport, ebuf, sizeof ebuf) == 0) {
      thost = hbuf;
    } else {
      terr = ebuf;
      tport = 0;
    }
    if (thost && !target_allowed(ck, inspect, thost, ebuf, sizeof ebuf)) {
      thost = NULL; /* never connected to: the check fails with why */
      terr = ebuf;
      tport = 0;
    }
    for (size_t j = 0; j < cont->n && !nv[i]; j++) {
      if (cont->v[j] && same(cont->v[j], s, thost, tport, terr)) {
        nv[i] = cont->v[j];
        cont->v[j] = NULL;
      }
    }
    if (!nv[i]) {
      nv[i] = check_new(ck, cont, s, thost, tport, terr);
      fresh[i] = 1;
    }
  }
  /* make-before-break for checks: a changed check of a port starts from
   * the state its predecessor had (a passing one stays passing until the
   * new check fails `fall` times), so a reload that changes a check does
   * not drop a healthy registration while the new one is still pending */
  size_t reset = 0;
  for (size_t i = 0; i < n; i++) {
    if (!fresh[i]) continue;
    for (size_t j = 0; j < cont->n; j++) {
      check_t *o = cont->v[j];
      if (!o || strcmp(o->port, nv[i]->port) != 0) continue;
      check_t *c = nv[i];
      ck->by_state[c->state]--;
      c->state = o->state;
      ck->by_state[c->state]++;
      if (c->state == CHECKS_PASSING) c->ok_streak = c->rise;
      if (c->state == CHECKS_FAILING) c->fail_streak = c->fall;
      snprintf(c->reason, sizeof c->reason, "%s", o->reason);
      check_destroy(o);
      cont->v[j] = NULL;
      reset++;
      break;
    }
  }
  if (reset) {
    char nbuf[32], id12[13];
    snprintf(nbuf, sizeof nbuf, "%zu", reset);
    snprintf(id12, sizeof id12, "%s", id);
    log_fields(LOG_INFO,
               "checks reset: changed checks start from the state of the "
               "ones they replace",
               "container", id12, "checks", nbuf, NULL);
  }
  free(fresh);
  for (size_t j = 0; j < cont->n; j++)
    if (cont->v[j]) check_destroy(cont->v[j]);
  free(cont->v);
  cont->v = nv;
  cont->n = n;
  queue_pump(ck);
  return 0;
}

/* ---- reading ---- */

size_t checks_count(const checks_t *ck, const char *id) {
  const cont_t *cont = map_get(ck->conts, id);
  return cont ? cont->n : 0;
}

int checks_get(const checks_t *ck, const char *id, size_t i,
               checks_info_t *out) {
  const cont_t *cont = map_get(ck->conts, id);
  if (!cont || i >= cont->n) return -1;
  const check_t *c = cont->v[i];
  out->port = c->port;
  out->type = type_name(c->type);
  out->state = c->state;
  out->reason = c->reason;
  out->target = c->target_str;
  out->runs = c->runs;
  return 0;
}

int checks_healthy(const checks_t *ck, const char *id) {
  const cont_t *cont = map_get(ck->conts, id);
  for (size_t i = 0; cont && i < cont->n; i++)
    if (cont->v[i]->state != CHECKS_PASSING) return 0;
  return 1;
}

void checks_stats(const checks_t *ck, checks_stats_t *out) {
  memset(out, 0, sizeof *out);
  memcpy(out->by_state, ck->by_state, sizeof out->by_state);
  memcpy(out->transitions, ck->transitions, sizeof out->transitions);
  memcpy(out->runs, ck->runs, sizeof out->runs);
  memcpy(out->buckets, ck->buckets, sizeof out->buckets);
  memcpy(out->count, ck->count, sizeof out->count);
  memcpy(out->sum, ck->sum, sizeof out->sum);
  out->inflight = ck->inflight;
  out->queued = ck->queued;
  out->containers = map_size(ck->conts);
}

void checks_metrics(const checks_t *ck, buf_t *b) {
  static const char *const states[3] = {"pending", "passing", "failing"};
  static const char *const types[2] = {"tcp", "http"};
  buf_puts(b, "# HELP register_checks Health checks of containers, by state.\n"
              "# TYPE register_checks gauge\n");
  for (int s = 0; s < 3; s++)
    buf_printf(b, "register_checks{state=\"%s\"} %llu\n", states[s],
               (unsigned long long)ck->by_state[s]);
  buf_puts(b, "# HELP register_check_transitions_total Health check state "
              "changes (after rise/fall), by new state.\n"
              "# TYPE register_check_transitions_total counter\n");
  for (int s = 1; s < 3; s++)
    buf_printf(b, "register_check_transitions_total{to=\"%s\"} %llu\n",
               states[s], (unsigned long long)ck->transitions[s]);
  buf_puts(b, "# HELP register_check_runs_total Health check runs, by type "
              "and result.\n"
              "# TYPE register_check_runs_total counter\n");
  for (int t = 0; t < 2; t++)
    for (int r = 1; r >= 0; r--)
      buf_printf(b,
                 "register_check_runs_total{type=\"%s\",result=\"%s\"} %llu\n",
                 types[t], r ? "success" : "failure",
                 (unsigned long long)ck->runs[t][r]);
  buf_puts(b, "# HELP register_check_duration_seconds Time a health check "
              "run took (timeouts included), by type.\n"
              "# TYPE register_check_duration_seconds histogram\n");
  for (int t = 0; t < 2; t++) {
    for (int i = 0; i < CHECKS_BUCKETS; i++)
      buf_printf(b,
                 "register_check_duration_seconds_bucket{type=\"%s\",le=\"%g\"}"
                 " %llu\n",
                 types[t], checks_buckets[i],
                 (unsigned long long)ck->buckets[t][i]);
    buf_printf(b,
               "register_check_duration_seconds_bucket{type=\"%s\",le=\"+Inf\"}"
               " %llu\n",
               types[t], (unsigned long long)ck->count[t]);
    buf_printf(b, "register_check_duration_seconds_sum{type=\"%s\"} %.9f\n",
               types[t], ck->sum[t]);
    buf_printf(b, "register_check_duration_seconds_count{type=\"%s\"} %llu\n",
               types[t], (unsigned long long)ck->count[t]);
  }
  buf_printf(b,
             "# HELP register_checks_queued Health checks due but waiting "
             "for a slot (at most %d run at once).\n"
             "# TYPE register_checks_queued gauge\n"
             "register_checks_queued %llu\n",
             ck->max_inflight, (unsigned long long)ck->queued);
}

/* ---- lifecycle ---- */

checks_t *checks_new(const checks_opts_t *o) {
  checks_t *ck = xcalloc(1, sizeof *ck);
  ck->loop = o->loop;
  ck->http = o->http;
  ck->max_inflight = o->max_inflight > 0 ? o->max_inflight : DEFAULT_INFLIGHT;
  ck->on_transition = o->on_transition;
  ck->ud = o->ud;
  ck->has_host_ip = o->host_ip && config_addr16(o->host_ip, ck->host_ip) == 0;
  char err[300];
  if (o->allow && config_parse_cidrs(o->allow, &ck->allow, &ck->nallow, err,
                                     sizeof err) < 0)
    log_error("checks: --check-allow: %s; checks reach nothing beyond this "
              "host",
              err);
  ck->conts = map_new();
  return ck;
}

void checks_free(checks_t *ck) {
  if (!ck) return;
  REGISTER_ASSERT(!ck->in_transition); /* not from the callback (checks.h) */
  map_iter_t it;
  const char *k;
  void *v;
  map_iter_init(&it, ck->conts);
  while (map_iter_next(&it, &k, &v)) {
    map_del(ck->conts, k);
    cont_free(v);
  }
  map_free(ck->conts);
  free(ck->allow);
  free(ck);
}

/* checks: health checks against real sockets on 127.0.0.1 that the test
 * makes itself (a listener that accepts and closes, one that accepts and
 * never answers, a tiny HTTP server, a closed port), target resolution
 * from saved inspect documents. */
#include "checks.h"
#include "http.h"
#include "json.h"
#include "test.h"

#include <curl/curl.h>
#include <sys/socket.h>
#include <uv.h>

/* A test that cannot run here says why and returns: main() prints
 * "skipped NAME", not "ok NAME", and exits 77, which ctest reports as
 * Skipped (SKIP_RETURN_CODE in tests/CMakeLists.txt), not Passed. */
static int skipped;
#define SKIP(...)                                                              \
  do {                                                                         \
    fprintf(stderr, "skip: ");                                                 \
    fprintf(stderr, __VA_ARGS__);                                              \
    fputc('\n', stderr);                                                       \
    skipped = 1;                                                               \
    return;                                                                    \
  } while (0)

/* ---- a small server in the loop ---- */

typedef enum {
  SRV_CLOSE,  /* accept and close at once */
  SRV_SILENT, /* accept, read, never answer */
  SRV_HTTP    /* answer each request head with `status` */
} srv_mode_t;

typedef struct conn conn_t;

typedef struct {
  uv_tcp_t listener;
  srv_mode_t mode;
  int status;
  int port;
  int accepted;
  int open; /* connections open now */
  uint64_t accept_ms[4096];
  char last_head[2048];
  conn_t *conns;
} srv_t;

struct conn {
  uv_tcp_t tcp;
  srv_t *srv;
  char in[4096];
  size_t len;
  int answered;
  uv_write_t wr;
  char out[256];
  conn_t *prev, *next;
};

static uv_loop_t loop;
static http_t *http;
static uv_timer_t tick;

static void conn_close_cb(uv_handle_t *h) {
  conn_t *c = h->data;
  srv_t *s = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->open--;
  free(c);
}

static void conn_close(conn_t *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
}

static void alloc_cb(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  (void)size;
  conn_t *c = h->data;
  size_t room = sizeof c->in - 1 - c->len;
  if (room == 0) { /* a head this long: drop what we have */
    c->len = 0;
    room = sizeof c->in - 1;
  }
  *buf = uv_buf_init(c->in + c->len, (unsigned)room);
}

static void write_cb(uv_write_t *w, int status) {
  (void)status;
  conn_close(w->data);
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  conn_t *c = st->data;
  if (n < 0) {
    conn_close(c);
    return;
  }
  c->len += (size_t)n;
  c->in[c->len] = '\0';
  if (c->srv->mode != SRV_HTTP || c->answered) return;
  char *end = strstr(c->in, "\r\n\r\n");
  if (!end) return;
  snprintf(c->srv->last_head, sizeof c->srv->last_head, "%.*s",
           (int)(end - c->in), c->in);
  c->answered = 1;
  int len = snprintf(c->out, sizeof c->out,
                     "HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: "
                     "close\r\n\r\nok",
                     c->srv->status);
  uv_buf_t b = uv_buf_init(c->out, (unsigned)len);
  c->wr.data = c;
  uv_write(&c->wr, st, &b, 1, write_cb);
}

static void connection_cb(uv_stream_t *l, int status) {
  srv_t *s = l->data;
  ASSERT_EQ(status, 0);
  conn_t *c = calloc(1, sizeof *c);
  c->srv = s;
  uv_tcp_init(&loop, &c->tcp);
  c->tcp.data = c;
  ASSERT_EQ(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->open++;
  if (s->accepted < (int)ARRAY_SIZE(s->accept_ms))
    s->accept_ms[s->accepted] = uv_now(&loop);
  s->accepted++;
  if (s->mode == SRV_CLOSE)
    conn_close(c);
  else
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static int bound_port(uv_tcp_t *t) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  ASSERT_EQ(uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len), 0);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void srv_start(srv_t *s, srv_mode_t mode, const char *ip) {
  memset(s, 0, sizeof *s);
  s->mode = mode;
  s->status = 200;
  struct sockaddr_storage sa;
  if (strchr(ip, ':'))
    ASSERT_EQ(uv_ip6_addr(ip, 0, (struct sockaddr_in6 *)&sa), 0);
  else
    ASSERT_EQ(uv_ip4_addr(ip, 0, (struct sockaddr_in *)&sa), 0);
  uv_tcp_init(&loop, &s->listener);
  s->listener.data = s;
  ASSERT_EQ(uv_tcp_bind(&s->listener, (struct sockaddr *)&sa, 0), 0);
  ASSERT_EQ(uv_listen((uv_stream_t *)&s->listener, 512, connection_cb), 0);
  s->port = bound_port(&s->listener);
}

static void srv_stop(srv_t *s) {
  uv_close((uv_handle_t *)&s->listener, NULL);
  for (conn_t *c = s->conns; c; c = c->next)
    conn_close(c);
}

/* A port on 127.0.0.1 that nothing listens on: bound and kept bound, not
 * listening, so a connection is refused, and no other socket of this
 * machine takes the port meanwhile (a port bound and closed again was
 * taken by another test's server under ctest -j2: "connection reset").
 * The socket goes with the test's process. */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT(fd >= 0);
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  socklen_t len = sizeof sa;
  ASSERT_EQ(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  return ntohs(sa.sin_port);
}

/* ---- transitions seen ---- */

typedef struct {
  char id[80];
  size_t index;
  checks_state_t from, to;
  char reason[160];
  uint64_t runs; /* of the check, when it changed */
  uint64_t at;   /* loop time */
} trans_t;

static trans_t seen[4096];
static int nseen;
static checks_t *ck;
/* optional extra behaviour inside the callback */
static void (*on_trans_hook)(const trans_t *t);

static void on_transition(void *ud, const char *id, size_t index,
                          checks_state_t from, checks_state_t to,
                          const char *reason) {
  ASSERT(ud == &seen);
  ASSERT(nseen < (int)ARRAY_SIZE(seen));
  trans_t *t = &seen[nseen++];
  snprintf(t->id, sizeof t->id, "%s", id);
  t->index = index;
  t->from = from;
  t->to = to;
  snprintf(t->reason, sizeof t->reason, "%s", reason);
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, id, index, &info), 0);
  ASSERT_EQ(info.state, to);
  ASSERT_STR_EQ(info.reason, reason);
  t->runs = info.runs;
  t->at = uv_now(&loop);
  if (on_trans_hook) on_trans_hook(t);
}

static void tick_cb(uv_timer_t *t) {
  (void)t;
}

/* what setup() gives checks_new() beyond the loop */
static const char *setup_host_ip, *setup_allow;

static void setup(int max_inflight) {
  ASSERT_EQ(uv_loop_init(&loop), 0);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  http = http_new(&loop, 64, 8);
  ASSERT(http);
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, tick_cb, 5, 5); /* so UV_RUN_ONCE returns */
  checks_opts_t o = {.loop = &loop,
                     .http = http,
                     .max_inflight = max_inflight,
                     .on_transition = on_transition,
                     .ud = &seen,
                     .host_ip = setup_host_ip,
                     .allow = setup_allow};
  ck = checks_new(&o);
  nseen = 0;
  on_trans_hook = NULL;
}

static void teardown(void) {
  checks_free(ck);
  ck = NULL;
  http_free(http);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
  curl_global_cleanup();
}

/* Runs the loop until cond() holds; fails after ms. */
#define RUN_UNTIL(cond, ms)                                                    \
  do {                                                                         \
    uv_update_time(&loop);                                                     \
    uint64_t dl_ = uv_now(&loop) + (ms);                                       \
    while (!(cond)) {                                                          \
      if (uv_now(&loop) > dl_) FAIL("timed out waiting for %s", #cond);        \
      uv_run(&loop, UV_RUN_ONCE);                                              \
    }                                                                          \
  } while (0)

static void run_for(uint64_t ms) {
  uv_update_time(&loop);
  uint64_t end = uv_now(&loop) + ms;
  while (uv_now(&loop) < end)
    uv_run(&loop, UV_RUN_ONCE);
}

static checks_spec_t tcp_spec(int port, long interval, long timeout) {
  checks_spec_t s;
  checks_spec_init(&s);
  s.port = "80/tcp";
  s.target_host = "127.0.0.1";
  s.target_port = port;
  s.interval_ms = interval;
  s.timeout_ms = timeout;
  return s;
}

static checks_spec_t http_spec(int port, long interval, long timeout) {
  checks_spec_t s = tcp_spec(port, interval, timeout);
  s.type = CHECKS_HTTP;
  return s;
}

static int find_trans(const char *id, size_t index, checks_state_t to) {
  for (int i = 0; i < nseen; i++)
    if (strcmp(seen[i].id, id) == 0 && seen[i].index == index &&
        seen[i].to == to)
      return i;
  return -1;
}

static const char *const A =
    "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000001";
static const char *const B =
    "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000002";

/* ---- tests ---- */

TEST(spec_validation) {
  char err[200];
  checks_spec_t s;
  checks_spec_init(&s);
  s.port = "80/tcp";
  ASSERT_EQ(checks_spec_validate(&s, err, sizeof err), 0);
  ASSERT_EQ(s.interval_ms, 5000);
  ASSERT_EQ(s.timeout_ms, 2000);
  ASSERT_EQ(s.rise, 1);
  ASSERT_EQ(s.fall, 1);
  ASSERT_EQ(s.status_min, 200);
  ASSERT_EQ(s.status_max, 399);
  ASSERT_STR_EQ(s.method, "GET");
  ASSERT_STR_EQ(s.path, "/");
#define EXPECT_BAD(stmt, msg)                                                  \
  do {                                                                         \
    checks_spec_t x_ = s;                                                      \
    checks_spec_t *x = &x_;                                                    \
    stmt;                                                                      \
    ASSERT_EQ(checks_spec_validate(x, err, sizeof err), -1);                   \
    ASSERT_CONTAINS(err, msg);                                                 \
  } while (0)
  EXPECT_BAD(x->port = NULL, "needs a port");
  EXPECT_BAD(x->port = "80", "is not \"N/tcp\"");
  EXPECT_BAD(x->port = "80/udp", "is not \"N/tcp\"");
  EXPECT_BAD(x->port = "0/tcp", "is not \"N/tcp\"");
  EXPECT_BAD(x->port = "65536/tcp", "is not \"N/tcp\"");
  EXPECT_BAD(x->port = "8a/tcp", "is not \"N/tcp\"");
  EXPECT_BAD(x->type = (checks_type_t)7, "tcp or http");
  EXPECT_BAD(x->interval_ms = 0,
             "check interval of 0 ms is below the minimum of 100 ms");
  EXPECT_BAD(x->interval_ms = -5, "check interval of -5 ms is below");
  EXPECT_BAD((x->interval_ms = 99, x->timeout_ms = 99),
             "check interval of 99 ms is below the minimum of 100 ms");
  EXPECT_BAD(x->timeout_ms = 0,
             "check timeout of 0 ms is below the minimum of 100 ms");
  EXPECT_BAD(x->timeout_ms = 1, "check timeout of 1 ms is below");
  EXPECT_BAD(x->timeout_ms = 6000, "must not exceed the interval");
  EXPECT_BAD(x->rise = 0, "rise must be >= 1");
  EXPECT_BAD(x->fall = -1, "fall must be >= 1");
  EXPECT_BAD((x->type = CHECKS_HTTP, x->status_min = 400, x->status_max = 300),
             "status range 400-300");
  EXPECT_BAD((x->type = CHECKS_HTTP, x->status_max = 600), "status range");
  EXPECT_BAD((x->type = CHECKS_HTTP, x->path = "health"), "path must start");
  EXPECT_BAD((x->type = CHECKS_HTTP, x->path = "/a b"), "path must start");
  EXPECT_BAD((x->type = CHECKS_HTTP, x->method = "get"), "upper-case");
  EXPECT_BAD((x->type = CHECKS_HTTP, x->method = "HEAD"), "not supported");
  EXPECT_BAD((x->type = CHECKS_HTTP, x->host = "a\r\nX: y"),
             "control characters");
  /* lengths: a 4 MiB path was handed to curl every interval, in the
   * daemon (its loop held for seconds, its memory swollen) */
  static char longs[CHECKS_MAX_PATH + 2];
  memset(longs, 'p', sizeof longs - 1);
  longs[0] = '/';
  EXPECT_BAD((x->type = CHECKS_HTTP, x->path = longs),
             "check path is too long: 4097 bytes (at most 4096)");
  EXPECT_BAD((x->type = CHECKS_HTTP, x->host = longs + 1),
             "check host is too long: 4096 bytes (at most 255)");
  EXPECT_BAD(x->address = longs + 1,
             "check address is too long: 4096 bytes (at most 255)");
  longs[CHECKS_MAX_PATH] = '\0'; /* at the caps: accepted */
  checks_spec_t at = s;
  at.type = CHECKS_HTTP;
  at.path = longs;
  at.host = longs + CHECKS_MAX_PATH - CHECKS_MAX_NAME;
  ASSERT_EQ(checks_spec_validate(&at, err, sizeof err), 0);
  /* http fields do not matter for tcp */
  checks_spec_t t = s;
  t.status_min = 0;
  ASSERT_EQ(checks_spec_validate(&t, err, sizeof err), 0);
  t.type = CHECKS_HTTP;
  t.status_min = 204;
  t.status_max = 204;
  t.method = "POST";
  t.path = "/health?deep=1";
  ASSERT_EQ(checks_spec_validate(&t, err, sizeof err), 0);
  /* checks_set refuses an invalid spec and changes nothing */
  setup(0);
  checks_spec_t v = tcp_spec(1, 100, 200);
  ASSERT_EQ(checks_set(ck, A, NULL, &v, 1, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "must not exceed");
  ASSERT_EQ(checks_count(ck, A), 0);
  teardown();
}

static json_doc_t *parse(const char *text) {
  char err[200];
  json_doc_t *d = json_parse(text, strlen(text), err, sizeof err);
  if (!d) FAIL("%s", err);
  return d;
}

static json_doc_t *load(const char *name) {
  size_t len;
  char *text = test_read(name, &len);
  char err[200];
  json_doc_t *d = json_parse(text, len, err, sizeof err);
  free(text);
  if (!d) FAIL("%s: %s", name, err);
  return d;
}

#define RESOLVES(doc, port, addr, want_host, want_port)                        \
  do {                                                                         \
    char hb_[64], e_[200];                                                     \
    int p_ = -1;                                                               \
    if (checks_resolve(json_root(doc), port, addr, hb_, sizeof hb_, &p_, e_,   \
                       sizeof e_) != 0)                                        \
      FAIL("%s: %s", port, e_);                                                \
    ASSERT_STR_EQ(hb_, want_host);                                             \
    ASSERT_EQ(p_, want_port);                                                  \
  } while (0)

#define UNRESOLVED(doc, port, addr, want_err)                                  \
  do {                                                                         \
    char hb_[64], e_[200];                                                     \
    int p_ = -1;                                                               \
    ASSERT_EQ(checks_resolve(json_root(doc), port, addr, hb_, sizeof hb_, &p_, \
                             e_, sizeof e_),                                   \
              -1);                                                             \
    ASSERT_CONTAINS(e_, want_err);                                             \
  } while (0)

TEST(resolve_targets) {
  json_doc_t *multi = load("inspect/multi.json");
  RESOLVES(multi, "80/tcp", NULL, "127.0.0.1", 32769);
  RESOLVES(multi, "9200/tcp", "", "127.0.0.1", 32768);
  /* an address: the private port, on that network or IP */
  RESOLVES(multi, "80/tcp", "bridge", "172.31.254.2", 80);
  RESOLVES(multi, "8080/tcp", "10.1.2.3", "10.1.2.3", 8080);
  RESOLVES(multi, "8080/tcp", "fd00::5", "fd00::5", 8080);
  UNRESOLVED(multi, "80/tcp", "nonet", "not on network \"nonet\"");
  UNRESOLVED(multi, "53/udp", NULL, "is not \"N/tcp\"");
  UNRESOLVED(multi, "81/tcp", NULL, "81/tcp is not published");
  json_free(multi);

  /* two bindings: the first, in Docker's order */
  json_doc_t *two = load("inspect/twobind.json");
  RESOLVES(two, "80/tcp", NULL, "127.0.0.2", 32768);
  json_free(two);

  json_doc_t *unpub = load("inspect/unpublished.json");
  UNRESOLVED(unpub, "80/tcp", NULL, "80/tcp is not published");
  RESOLVES(unpub, "80/tcp", "bridge", "172.31.254.5", 80);
  json_free(unpub);

  /* wildcards (Docker's 0.0.0.0 and ::, podman's ""), IPv6-only networks,
   * a network without an address */
  json_doc_t *w = parse(
      "{\"NetworkSettings\":{\"Ports\":{"
      "\"80/tcp\":[{\"HostIp\":\"0.0.0.0\",\"HostPort\":\"8080\"},"
      "{\"HostIp\":\"::\",\"HostPort\":\"8080\"}],"
      "\"81/tcp\":[{\"HostIp\":\"::\",\"HostPort\":\"8181\"}],"
      "\"82/tcp\":[{\"HostIp\":\"\",\"HostPort\":\"8282\"}],"
      "\"83/tcp\":[],\"84/tcp\":[{\"HostIp\":\"10.0.0.1\",\"HostPort\":\"\"}]},"
      "\"Networks\":{\"v6\":{\"IPAddress\":\"\",\"GlobalIPv6Address\":"
      "\"fd00::2\"},\"none\":{\"IPAddress\":\"\"}}}}");
  RESOLVES(w, "80/tcp", NULL, "127.0.0.1", 8080);
  RESOLVES(w, "81/tcp", NULL, "::1", 8181);
  RESOLVES(w, "82/tcp", NULL, "127.0.0.1", 8282);
  UNRESOLVED(w, "83/tcp", NULL, "not published");
  UNRESOLVED(w, "84/tcp", NULL, "no usable HostPort");
  RESOLVES(w, "80/tcp", "v6", "fd00::2", 80);
  UNRESOLVED(w, "80/tcp", "none", "no address on network \"none\"");
  json_free(w);

  json_doc_t *junk = parse("{\"Id\":\"x\"}");
  UNRESOLVED(junk, "80/tcp", NULL, "not a container inspect");
  json_free(junk);
}

TEST(tcp_connect_and_refused) {
  setup(0);
  srv_t s, shut;
  srv_start(&s, SRV_SILENT, "127.0.0.1");
  /* accepts and closes at once, as docker-proxy does when nothing listens
   * behind it */
  srv_start(&shut, SRV_CLOSE, "127.0.0.1");
  int closed = closed_port();
  checks_spec_t specs[3] = {tcp_spec(s.port, 200, 200),
                            tcp_spec(closed, 200, 200),
                            tcp_spec(shut.port, 200, 200)};
  specs[1].port = "81/tcp";
  char err[200];
  ASSERT_EQ(checks_set(ck, A, NULL, specs, 3, err, sizeof err), 0);
  ASSERT_EQ(nseen, 0); /* never inside checks_set */
  ASSERT_EQ(checks_count(ck, A), 3);
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_EQ(info.state, CHECKS_PENDING);
  ASSERT_STR_EQ(info.reason, "");
  ASSERT_STR_EQ(info.type, "tcp");
  ASSERT_EQ(checks_healthy(ck, A), 0);
  RUN_UNTIL(nseen >= 3, 2000);
  int p = find_trans(A, 0, CHECKS_PASSING),
      f = find_trans(A, 1, CHECKS_FAILING),
      x = find_trans(A, 2, CHECKS_FAILING);
  ASSERT(p >= 0 && f >= 0 && x >= 0);
  ASSERT_EQ(seen[p].from, CHECKS_PENDING);
  ASSERT_STR_EQ(seen[p].reason, "connected");
  ASSERT_STR_EQ(seen[f].reason, "connection refused");
  ASSERT_STR_EQ(seen[x].reason, "connection closed at once");
  ASSERT(s.accepted >= 1);
  /* the check closes its connection after the grace */
  RUN_UNTIL(s.open == 0, 1000);
  ASSERT_EQ(checks_get(ck, A, 1, &info), 0);
  ASSERT_STR_EQ(info.port, "81/tcp");
  char want[40];
  snprintf(want, sizeof want, "127.0.0.1:%d", closed);
  ASSERT_STR_EQ(info.target, want);
  ASSERT_EQ(checks_healthy(ck, A), 0);
  /* they keep running, with no new transitions */
  run_for(700);
  ASSERT_EQ(nseen, 3);
  ASSERT(s.accepted >= 3);
  ASSERT_EQ(checks_get(ck, A, 1, &info), 0);
  ASSERT(info.runs >= 3);
  /* only the passing check: healthy */
  ASSERT_EQ(checks_set(ck, A, NULL, specs, 1, err, sizeof err), 0);
  ASSERT_EQ(checks_healthy(ck, A), 1);
  ASSERT_EQ(checks_healthy(ck, B), 1); /* no checks at all */
  checks_stats_t st;
  checks_stats(ck, &st);
  ASSERT_EQ(st.by_state[CHECKS_PASSING], 1);
  ASSERT_EQ(st.by_state[CHECKS_FAILING], 0);
  ASSERT_EQ(st.transitions[CHECKS_PASSING], 1);
  ASSERT_EQ(st.transitions[CHECKS_FAILING], 2);
  ASSERT(st.runs[CHECKS_TCP][0] >= 6 && st.runs[CHECKS_TCP][1] >= 3);
  srv_stop(&s);
  srv_stop(&shut);
  teardown();
}

/* rise 3, fall 2: 200 -> passing after exactly 3 runs; 503 from then on ->
 * failing 2 runs later; 200 again -> passing 3 runs after that. */
static srv_t *hsrv;
static void flip_status(const trans_t *t) {
  hsrv->status = t->to == CHECKS_PASSING ? 503 : 200;
}

/* The result of every run of check (A, 0), in order: the test and the
 * checks share the loop, so a stall of the process longer than the timeout
 * (a loaded machine) lets the timeout timer fire before the server's read:
 * a run may time out.  Which runs passed decides the transitions, so the
 * test notes each run's result and replays rise and fall over them.
 *
 * A run completes in a timer callback (a timeout) or an I/O callback (the
 * answer), and the next one starts from a timer: between a prepare
 * callback, a check callback and uv_run(UV_RUN_ONCE) returning, at most one
 * run completes, so noting at those three places sees every run. */
static char run_reason[256][64];
static uint64_t runs_noted;
static uv_prepare_t runs_prepare;
static uv_check_t runs_check;

static void note_runs(void) {
  checks_info_t info;
  if (checks_get(ck, A, 0, &info) != 0 || info.runs == runs_noted) return;
  if (info.runs != runs_noted + 1)
    FAIL("runs %" PRIu64 " to %" PRIu64 " completed unseen", runs_noted + 1,
         info.runs);
  if (runs_noted >= ARRAY_SIZE(run_reason)) FAIL("too many runs");
  snprintf(run_reason[runs_noted], sizeof run_reason[0], "%s", info.reason);
  runs_noted = info.runs;
}

static void runs_prepare_cb(uv_prepare_t *p) {
  (void)p;
  note_runs();
}

static void runs_check_cb(uv_check_t *c) {
  (void)c;
  note_runs();
}

/* The transitions that rise and fall make of the results noted: [run,
 * to] pairs; returns how many. */
static int replay(int rise, int fall, uint64_t upto, uint64_t out[][2],
                  int max) {
  checks_state_t state = CHECKS_PENDING;
  int ok_streak = 0, fail_streak = 0, n = 0;
  for (uint64_t i = 0; i < upto; i++) {
    int ok = strcmp(run_reason[i], "HTTP 200") == 0;
    checks_state_t to = state;
    if (ok) {
      ok_streak++;
      fail_streak = 0;
      if (state != CHECKS_PASSING && ok_streak >= rise) to = CHECKS_PASSING;
    } else {
      fail_streak++;
      ok_streak = 0;
      if (state != CHECKS_FAILING && fail_streak >= fall) to = CHECKS_FAILING;
    }
    if (to != state && n < max) {
      out[n][0] = i + 1;
      out[n][1] = to;
      n++;
    }
    state = to;
  }
  return n;
}

/* passing, then failing on the server's 503s, then passing again */
static int round_trip_seen(void) {
  int f = -1;
  for (int i = 0; i < nseen; i++) {
    if (f < 0 && seen[i].to == CHECKS_FAILING &&
        strcmp(seen[i].reason, "HTTP 503") == 0)
      f = i;
    else if (f >= 0 && seen[i].to == CHECKS_PASSING)
      return 1;
  }
  return 0;
}

/* the last run's result */
static const char *last_reason(void) {
  checks_info_t info;
  return checks_get(ck, A, 0, &info) == 0 ? info.reason : "";
}

TEST(http_status_and_hysteresis) {
  setup(0);
  srv_t s;
  srv_start(&s, SRV_HTTP, "127.0.0.1");
  hsrv = &s;
  on_trans_hook = flip_status;
  checks_spec_t h = http_spec(s.port, 100, 100);
  h.path = "/health?x=1";
  h.host = "svc.example";
  h.rise = 3;
  h.fall = 2;
  char err[200];
  runs_noted = 0;
  uv_prepare_init(&loop, &runs_prepare);
  uv_prepare_start(&runs_prepare, runs_prepare_cb);
  uv_check_init(&loop, &runs_check);
  uv_check_start(&runs_check, runs_check_cb);
  uv_update_time(&loop);
  uint64_t t_set = uv_now(&loop);
  ASSERT_EQ(checks_set(ck, A, NULL, &h, 1, err, sizeof err), 0);
  /* 200 until it passes (rise 3), then 503 until it fails (fall 2), then
   * 200 until it passes again: runs 3, 5 and 8 when no run times out */
  uint64_t deadline = t_set + 5000;
  while (!round_trip_seen()) {
    if (uv_now(&loop) > deadline) FAIL("timed out waiting for the round trip");
    note_runs();
    uv_run(&loop, UV_RUN_ONCE);
    note_runs();
  }
  uv_close((uv_handle_t *)&runs_prepare, NULL);
  uv_close((uv_handle_t *)&runs_check, NULL);
  ASSERT(runs_noted >= seen[nseen - 1].runs);
  uint64_t want[16][2];
  int n = replay(3, 2, seen[nseen - 1].runs, want, 16);
  for (int i = 0; i < n || i < nseen; i++) {
    if (i >= n || i >= nseen || seen[i].runs != want[i][0] ||
        seen[i].to != (checks_state_t)want[i][1]) {
      for (uint64_t r = 0; r < runs_noted; r++)
        fprintf(stderr, "run %" PRIu64 ": %s\n", r + 1, run_reason[r]);
      FAIL("transition %d: seen run %" PRIu64 " to %d, want run %" PRIu64
           " to %d",
           i, i < nseen ? seen[i].runs : 0, i < nseen ? (int)seen[i].to : -1,
           i < n ? want[i][0] : 0, i < n ? (int)want[i][1] : -1);
    }
    ASSERT_STR_EQ(seen[i].reason, run_reason[seen[i].runs - 1]);
  }
  int answered = 1; /* every run answered by the server, none timed out */
  for (uint64_t r = 0; r < seen[nseen - 1].runs; r++)
    answered &= strcmp(run_reason[r], "HTTP 200") == 0 ||
                strcmp(run_reason[r], "HTTP 503") == 0;
  if (answered) {
    ASSERT_EQ(nseen, 3);
    ASSERT_EQ(seen[0].runs, 3);
    ASSERT_EQ(seen[1].runs, 5);
    ASSERT_EQ(seen[2].runs, 8);
  }
  ASSERT_EQ(seen[0].from, CHECKS_PENDING);
  ASSERT_CONTAINS(s.last_head, "GET /health?x=1 HTTP/1.1\r\n");
  ASSERT_CONTAINS(s.last_head, "\r\nHost: svc.example");
  /* one run per interval (100 ms) at most: run N starts N - 1 intervals or
   * more after the first, which comes within the first interval (late
   * runs start when they can, never early) */
  ASSERT(seen[nseen - 1].at - t_set >= (seen[nseen - 1].runs - 1) * 100);
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_STR_EQ(info.type, "http");
  /* a status outside a custom range fails (a run that timed out would
   * fail too: wait for one the server answered) */
  on_trans_hook = NULL;
  s.status = 200;
  h.status_min = 204;
  h.status_max = 204;
  h.rise = h.fall = 1;
  h.method = "POST";
  nseen = 0;
  ASSERT_EQ(checks_set(ck, A, NULL, &h, 1, err, sizeof err), 0);
  RUN_UNTIL(nseen >= 1 && strcmp(last_reason(), "HTTP 200") == 0, 2000);
  ASSERT_EQ(seen[0].to, CHECKS_FAILING);
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_EQ(info.state, CHECKS_FAILING);
  ASSERT_CONTAINS(s.last_head, "POST /health?x=1 HTTP/1.1\r\n");
  srv_stop(&s);
  teardown();
}

/* When a check run started, on both clocks.  The check's timeout timer
 * counts from uv_now() at the start: the loop's cached clock, whole
 * milliseconds, updated when the loop wakes (from CLOCK_MONOTONIC_COARSE
 * where that is fine enough), so it lags the real clock.  The check's
 * metrics time the run with uv_hrtime() from the start: on the real clock,
 * a timeout of 150 ms can read as a little less than 0.150 s.  loop_ms is
 * uv_now() at the start; hr_ns an uv_hrtime() taken after it.
 *
 * A run starts in a timer callback, right after the loop updated its
 * clock, and the clock is not updated again before the next prepare
 * callback (libuv < 1.45 runs timers first in an iteration) or before
 * uv_run(UV_RUN_ONCE) returns (libuv >= 1.45 runs them last): watching
 * `inflight` at both places sees uv_now() as the run saw it. */
static struct {
  int seen;
  uint64_t loop_ms, hr_ns;
} run_start;
static uv_prepare_t start_watch;

static void note_start(void) {
  if (run_start.seen) return;
  checks_stats_t st;
  checks_stats(ck, &st);
  if (st.inflight == 0) return;
  run_start.seen = 1;
  run_start.loop_ms = uv_now(&loop);
  run_start.hr_ns = uv_hrtime();
}

static void start_watch_cb(uv_prepare_t *p) {
  (void)p;
  note_start();
}

TEST(timeouts_and_http_refused) {
  setup(0);
  srv_t s;
  srv_start(&s, SRV_SILENT, "127.0.0.1");
  int closed = closed_port();
  char err[200];
  /* a server that never answers: the run times out, timed on both clocks */
  memset(&run_start, 0, sizeof run_start);
  uv_prepare_init(&loop, &start_watch);
  uv_prepare_start(&start_watch, start_watch_cb);
  checks_spec_t silent = http_spec(s.port, 2000, 150);
  ASSERT_EQ(checks_set(ck, A, NULL, &silent, 1, err, sizeof err), 0);
  uv_update_time(&loop);
  uint64_t deadline = uv_now(&loop) + 3000;
  while (nseen < 1) {
    if (uv_now(&loop) > deadline) FAIL("timed out waiting for the timeout");
    note_start();
    uv_run(&loop, UV_RUN_ONCE);
    note_start();
  }
  uv_close((uv_handle_t *)&start_watch, NULL);
  ASSERT(run_start.seen);
  ASSERT_EQ(nseen, 1);
  ASSERT_EQ(seen[0].to, CHECKS_FAILING);
  ASSERT_STR_EQ(seen[0].reason, "timeout after 150 ms");
  /* on the loop's clock, the timeout came no sooner than 150 ms after the
   * start (libuv's timer contract), nor at the next interval */
  ASSERT(seen[0].at >= run_start.loop_ms);
  uint64_t took_ms = seen[0].at - run_start.loop_ms;
  if (took_ms < 150 || took_ms >= 2000)
    FAIL("the timeout came %" PRIu64 " ms after the start", took_ms);
  ASSERT_EQ(s.accepted, 1);
  /* the timed-out request's connection is closed */
  RUN_UNTIL(s.open == 0, 1000);
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_EQ(info.runs, 1);
  checks_stats_t st;
  checks_stats(ck, &st);
  ASSERT_EQ(st.count[CHECKS_HTTP], 1);
  /* the metric, on the real clock: at least 150 ms after the loop clock's
   * start, which is `lag` behind the real clock (whole ms, coarse clock) */
  ASSERT(run_start.hr_ns >= run_start.loop_ms * 1000000);
  double lag = (double)(run_start.hr_ns - run_start.loop_ms * 1000000) / 1e9;
  if (!(st.sum[CHECKS_HTTP] >= 0.150 - lag))
    FAIL("the timed-out run took %.6f s by the metric, less than 0.150 s - "
         "%.6f s",
         st.sum[CHECKS_HTTP], lag);
  /* the timeout is in the 0.25 s bucket, not in the 0.1 s one */
  ASSERT_EQ(st.buckets[CHECKS_HTTP][6], 0);
  ASSERT_EQ(st.buckets[CHECKS_HTTP][7], 1);
  checks_remove(ck, A);

  /* a closed port: refused, at once */
  checks_spec_t refused = http_spec(closed, 2000, 150);
  ASSERT_EQ(checks_set(ck, B, NULL, &refused, 1, err, sizeof err), 0);
  RUN_UNTIL(nseen >= 2, 3000);
  int r = find_trans(B, 0, CHECKS_FAILING);
  ASSERT(r >= 0);
  /* curl names the cause only in its message, which varies by version */
  if (strcmp(seen[r].reason, "connection refused") != 0)
    ASSERT_STR_EQ(seen[r].reason, "cannot connect: Couldn't connect to server");
  ASSERT_EQ(checks_get(ck, B, 0, &info), 0);
  ASSERT_EQ(info.runs, 1);
  checks_stats(ck, &st);
  ASSERT_EQ(st.count[CHECKS_HTTP], 2);
  ASSERT(st.sum[CHECKS_HTTP] >= 0.150 - lag);
  ASSERT_EQ(st.buckets[CHECKS_HTTP][6], 1);
  ASSERT_EQ(st.buckets[CHECKS_HTTP][7], 2);
  ASSERT_EQ(s.accepted, 1);
  srv_stop(&s);
  teardown();
}

static void remove_self(const trans_t *t) {
  checks_remove(ck, t->id);
}

static int idle_removed;
static void remove_when_inflight(uv_idle_t *i) {
  checks_stats_t st;
  checks_stats(ck, &st);
  if (st.inflight == 0) return;
  checks_remove(ck, A);
  idle_removed = 1;
  uv_idle_stop(i);
}

TEST(removal_while_in_flight) {
  setup(0);
  srv_t s, c;
  srv_start(&s, SRV_SILENT, "127.0.0.1");
  srv_start(&c, SRV_CLOSE, "127.0.0.1");
  char err[200];
  /* an HTTP request that hangs: removed once the server has it */
  checks_spec_t h = http_spec(s.port, 1000, 1000);
  ASSERT_EQ(checks_set(ck, A, NULL, &h, 1, err, sizeof err), 0);
  RUN_UNTIL(s.accepted == 1, 2000);
  checks_stats_t st;
  checks_stats(ck, &st);
  ASSERT_EQ(st.inflight, 1);
  checks_remove(ck, A);
  checks_stats(ck, &st);
  ASSERT_EQ(st.inflight, 0);
  ASSERT_EQ(st.containers, 0);
  ASSERT_EQ(st.by_state[CHECKS_PENDING], 0);
  RUN_UNTIL(s.open == 0, 1000); /* the request was cancelled */
  /* a TCP connect, removed before its callback (between the timer that
   * started it and the poll that completes it) */
  checks_spec_t t = tcp_spec(c.port, 100, 100);
  ASSERT_EQ(checks_set(ck, A, NULL, &t, 1, err, sizeof err), 0);
  uv_idle_t idle;
  uv_idle_init(&loop, &idle);
  uv_idle_start(&idle, remove_when_inflight);
  RUN_UNTIL(idle_removed, 2000);
  uv_close((uv_handle_t *)&idle, NULL);
  ASSERT_EQ(checks_count(ck, A), 0);
  run_for(200);
  ASSERT_EQ(nseen, 0); /* nothing reported after removal */
  /* a TCP check removed while it waits for the peer to close (connected,
   * within the grace) */
  checks_spec_t g = tcp_spec(s.port, 1000, 1000);
  /* the grace is 100 ms: a loop stalled longer (a busy machine) between
   * the connect and the accept sees the check over already; then it is
   * tried again, up to 5 times, until it is caught in its grace */
  int caught = 0;
  for (int attempt = 0; attempt < 5 && !caught; attempt++) {
    int before = s.accepted;
    ASSERT_EQ(checks_set(ck, A, NULL, &g, 1, err, sizeof err), 0);
    RUN_UNTIL(s.accepted == before + 1, 2000);
    checks_stats(ck, &st);
    caught = st.inflight == 1;
    checks_remove(ck, A);
    RUN_UNTIL(s.open == 0, 1000);
    nseen = 0; /* a check over before the removal reported passing */
  }
  ASSERT(caught);
  run_for(150);
  ASSERT_EQ(nseen, 0);
  /* removal from inside the transition callback */
  on_trans_hook = remove_self;
  int closed = closed_port();
  checks_spec_t r[2] = {tcp_spec(closed, 100, 100), tcp_spec(c.port, 100, 100)};
  ASSERT_EQ(checks_set(ck, B, NULL, r, 2, err, sizeof err), 0);
  RUN_UNTIL(nseen >= 1, 2000);
  ASSERT_EQ(checks_count(ck, B), 0);
  run_for(200);
  ASSERT_EQ(nseen, 1);
  checks_stats(ck, &st);
  ASSERT_EQ(st.inflight + st.queued + st.containers, 0);
  /* checks_free with a request in flight */
  int before = s.accepted;
  ASSERT_EQ(checks_set(ck, A, NULL, &h, 1, err, sizeof err), 0);
  RUN_UNTIL(s.accepted == before + 1, 2000);
  srv_stop(&s);
  srv_stop(&c);
  teardown(); /* no leak (ASan), loop closes */
}

static checks_spec_t reload_specs[3];
static void reload_in_callback(const trans_t *t) {
  /* a reload from inside the callback: same spec, state kept */
  char err[200];
  ASSERT_EQ(checks_set(ck, t->id, NULL, reload_specs, 1, err, sizeof err), 0);
}

TEST(reload_keeps_state) {
  setup(0);
  srv_t s;
  srv_start(&s, SRV_SILENT, "127.0.0.1");
  int closed = closed_port();
  char err[200];
  checks_spec_t a = tcp_spec(s.port, 100, 100);
  checks_spec_t b = tcp_spec(closed, 100, 100);
  checks_spec_t two[2] = {a, b};
  reload_specs[0] = a;
  on_trans_hook = reload_in_callback;
  ASSERT_EQ(checks_set(ck, A, NULL, two, 2, err, sizeof err), 0);
  RUN_UNTIL(nseen >= 1, 2000);
  /* the first transition reloaded to [a] alone */
  on_trans_hook = NULL;
  ASSERT_EQ(checks_count(ck, A), 1);
  RUN_UNTIL(find_trans(A, 0, CHECKS_PASSING) >= 0, 2000);
  run_for(250);
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_EQ(info.state, CHECKS_PASSING);
  uint64_t runs = info.runs;
  ASSERT(runs >= 2);
  /* a reload: a unchanged (now second), a new check c first */
  checks_spec_t c = tcp_spec(s.port, 100, 100);
  c.port = "443/tcp";
  checks_spec_t next[2] = {c, a};
  int before = nseen;
  ASSERT_EQ(checks_set(ck, A, NULL, next, 2, err, sizeof err), 0);
  ASSERT_EQ(checks_get(ck, A, 1, &info), 0);
  ASSERT_EQ(info.state, CHECKS_PASSING);
  ASSERT(info.runs >= runs); /* the same check: its runs go on */
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_EQ(info.state, CHECKS_PENDING);
  ASSERT_STR_EQ(info.port, "443/tcp");
  ASSERT_EQ(checks_healthy(ck, A), 0);
  RUN_UNTIL(nseen > before, 2000);
  ASSERT_EQ(seen[before].index, 0); /* only the new check changed */
  ASSERT_EQ(seen[before].to, CHECKS_PASSING);
  ASSERT_EQ(checks_healthy(ck, A), 1);
  /* a changed interval is a new check, which starts from the state of the
   * one it replaces (make-before-break: a reload that changes a check does
   * not drop a healthy registration) */
  next[1].interval_ms = 150;
  ASSERT_EQ(checks_set(ck, A, NULL, next, 2, err, sizeof err), 0);
  ASSERT_EQ(checks_get(ck, A, 1, &info), 0);
  ASSERT_EQ(info.state, CHECKS_PASSING);
  ASSERT_EQ(info.runs, 0);
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_EQ(info.state, CHECKS_PASSING);
  /* so is a changed target; only a failing result changes the state: the
   * closed port fails once (fall 1) */
  next[0].target_port = closed;
  before = nseen;
  ASSERT_EQ(checks_set(ck, A, NULL, next, 2, err, sizeof err), 0);
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_EQ(info.state, CHECKS_PASSING);
  checks_stats_t st;
  checks_stats(ck, &st);
  ASSERT_EQ(st.by_state[CHECKS_PASSING], 2);
  ASSERT_EQ(st.by_state[CHECKS_PENDING] + st.by_state[CHECKS_FAILING], 0);
  RUN_UNTIL(find_trans(A, 0, CHECKS_FAILING) >= before, 2000);
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_EQ(info.state, CHECKS_FAILING);
  srv_stop(&s);
  teardown();
}

static int max_inflight_seen, max_queued_seen;
static void sample_cb(uv_timer_t *t) {
  (void)t;
  checks_stats_t st;
  checks_stats(ck, &st);
  if ((int)st.inflight > max_inflight_seen)
    max_inflight_seen = (int)st.inflight;
  if ((int)st.queued > max_queued_seen) max_queued_seen = (int)st.queued;
}

TEST(bounded_concurrency) {
  setup(3);
  srv_t s;
  srv_start(&s, SRV_SILENT, "127.0.0.1");
  uv_timer_t sampler;
  uv_timer_init(&loop, &sampler);
  uv_timer_start(&sampler, sample_cb, 1, 1);
  /* 12 checks that each hang for their 100 ms timeout, every 200 ms:
   * unbounded, 60 requests a second; with 3 slots at most 30 */
  checks_spec_t specs[12];
  for (int i = 0; i < 12; i++)
    specs[i] = http_spec(s.port, 200, 100);
  char err[200];
  ASSERT_EQ(checks_set(ck, A, NULL, specs, 12, err, sizeof err), 0);
  run_for(1000);
  ASSERT(max_inflight_seen <= 3);
  ASSERT_EQ(max_inflight_seen, 3);
  ASSERT(max_queued_seen >= 1);
  ASSERT(s.accepted <= 3 * 10 + 3);
  ASSERT(s.accepted >= 20);
  /* every check got its turn */
  for (size_t i = 0; i < 12; i++) {
    checks_info_t info;
    ASSERT_EQ(checks_get(ck, A, i, &info), 0);
    ASSERT(info.runs >= 1);
    ASSERT_STR_EQ(info.reason, "timeout after 100 ms");
  }
  uv_close((uv_handle_t *)&sampler, NULL);
  srv_stop(&s);
  teardown();
}

TEST(jitter_spread) {
  setup(256);
  srv_t s;
  srv_start(&s, SRV_CLOSE, "127.0.0.1");
  /* 100 containers, one check each, every second */
  char ids[100][16];
  char err[200];
  uv_update_time(&loop);
  uint64_t t0 = uv_now(&loop);
  for (int i = 0; i < 100; i++) {
    snprintf(ids[i], sizeof ids[i], "c%03d", i);
    checks_spec_t t = tcp_spec(s.port, 1000, 500);
    ASSERT_EQ(checks_set(ck, ids[i], NULL, &t, 1, err, sizeof err), 0);
  }
  RUN_UNTIL(s.accepted >= 100, 3000);
  int quarter[4] = {0};
  for (int i = 0; i < 100; i++) {
    uint64_t d = s.accept_ms[i] - t0;
    ASSERT(d <= 1100);
    quarter[d >= 1000 ? 3 : d / 250]++;
  }
  /* uniform: about 25 in each quarter of the interval (P(< 8) ~ 1e-5) */
  for (int q = 0; q < 4; q++)
    if (quarter[q] < 8)
      FAIL("first runs not spread: %d %d %d %d", quarter[0], quarter[1],
           quarter[2], quarter[3]);
  srv_stop(&s);
  teardown();
}

TEST(unresolved_target_fails_with_reason) {
  setup(0);
  json_doc_t *d = load("inspect/unpublished.json");
  checks_spec_t s[2];
  checks_spec_init(&s[0]);
  s[0].port = "80/tcp";
  s[0].interval_ms = 100;
  s[0].timeout_ms = 100;
  s[1] = s[0];
  s[1].address = "bridge";
  s[1].interval_ms = 100000; /* not run here: only loopback in tests */
  s[1].timeout_ms = 1000;
  char err[200];
  ASSERT_EQ(checks_set(ck, A, json_root(d), s, 2, err, sizeof err), 0);
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, A, 1, &info), 0);
  ASSERT_STR_EQ(info.target, "172.31.254.5:80");
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_STR_EQ(info.target, "");
  /* only index 0 may run: remove index 1 before the loop runs */
  ASSERT_EQ(checks_set(ck, A, json_root(d), s, 1, err, sizeof err), 0);
  json_free(d); /* nothing of the document is kept */
  RUN_UNTIL(nseen >= 1, 2000);
  ASSERT_EQ(seen[0].to, CHECKS_FAILING);
  ASSERT_CONTAINS(seen[0].reason, "80/tcp is not published");
  teardown();
}

/* The target a check of `address` (or of target_host `host`) gets in
 * container doc: "" when it is refused. */
static const char *target_of(const json_value_t *doc, const char *address,
                             const char *host) {
  static char out[80];
  checks_spec_t s;
  checks_spec_init(&s);
  s.port = "8080/tcp";
  s.address = address;
  s.target_host = host;
  s.target_port = host ? 8080 : 0;
  s.interval_ms = 100000; /* never run here */
  char err[200];
  ASSERT_EQ(checks_set(ck, A, doc, &s, 1, err, sizeof err), 0);
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  snprintf(out, sizeof out, "%s", info.target);
  checks_remove(ck, A);
  return out;
}

TEST(targets_beyond_this_host) {
  static const char doc_text[] =
      "{\"Id\": \"x\", \"NetworkSettings\": {"
      "\"IPAddress\": \"\", \"Ports\": {\"80/tcp\": [{\"HostIp\": "
      "\"192.0.2.50\", \"HostPort\": \"8000\"}], \"81/tcp\": null},"
      "\"Networks\": {\"mynet\": {\"IPAddress\": \"172.20.0.7\","
      "\"GlobalIPv6Address\": \"fd00:1::7\"}}}}";
  char err[200];
  json_doc_t *d = json_parse(doc_text, strlen(doc_text), err, sizeof err);
  if (!d) FAIL("%s", err);
  const json_value_t *doc = json_root(d);
  setup_host_ip = "10.0.0.1";
  setup_allow = "10.9.0.0/16, fd00:9::/32";
  setup(0);
  setup_host_ip = setup_allow = NULL;
  /* on this host: loopback, the unspecified addresses, --host-ip, the
   * container's own addresses (networks, published bindings) */
  ASSERT_STR_EQ(target_of(doc, "127.0.0.53", NULL), "127.0.0.53:8080");
  ASSERT_STR_EQ(target_of(doc, "::1", NULL), "[::1]:8080");
  ASSERT_STR_EQ(target_of(doc, "0.0.0.0", NULL), "0.0.0.0:8080");
  ASSERT_STR_EQ(target_of(doc, "10.0.0.1", NULL), "10.0.0.1:8080");
  ASSERT_STR_EQ(target_of(doc, "172.20.0.7", NULL), "172.20.0.7:8080");
  ASSERT_STR_EQ(target_of(doc, "mynet", NULL), "172.20.0.7:8080");
  ASSERT_STR_EQ(target_of(doc, "fd00:1::7", NULL), "[fd00:1::7]:8080");
  ASSERT_STR_EQ(target_of(doc, "192.0.2.50", NULL), "192.0.2.50:8080");
  ASSERT_STR_EQ(target_of(NULL, NULL, "127.0.0.1"), "127.0.0.1:8080");
  /* allowed: within --check-allow (IPv4-mapped IPv6 is the IPv4 address) */
  ASSERT_STR_EQ(target_of(doc, "10.9.1.1", NULL), "10.9.1.1:8080");
  ASSERT_STR_EQ(target_of(doc, "::ffff:10.9.1.1", NULL),
                "[::ffff:10.9.1.1]:8080");
  ASSERT_STR_EQ(target_of(doc, "fd00:9:1::1", NULL), "[fd00:9:1::1]:8080");
  /* refused: anything else, however it is written or given */
  ASSERT_STR_EQ(target_of(doc, "10.8.8.8", NULL), "");
  ASSERT_STR_EQ(target_of(doc, "::ffff:10.8.8.8", NULL), "");
  ASSERT_STR_EQ(target_of(doc, "172.20.0.8", NULL), ""); /* a neighbour */
  ASSERT_STR_EQ(target_of(doc, "2001:db8::1", NULL), "");
  ASSERT_STR_EQ(target_of(doc, "fd00:1::8", NULL), "");
  ASSERT_STR_EQ(target_of(doc, NULL, "10.8.8.8"), "");
  ASSERT_STR_EQ(target_of(NULL, "172.20.0.7", NULL), ""); /* no document */
  /* a refused check never connects: it fails with the reason at once */
  checks_spec_t s;
  checks_spec_init(&s);
  s.port = "8080/tcp";
  s.address = "10.9.9.9";
  s.interval_ms = s.timeout_ms = 100;
  teardown();
  setup(0); /* no --check-allow, no --host-ip */
  ASSERT_STR_EQ(target_of(doc, "10.9.1.1", NULL), "");
  ASSERT_STR_EQ(target_of(doc, "10.0.0.1", NULL), "");
  ASSERT_STR_EQ(target_of(doc, "172.20.0.7", NULL), "172.20.0.7:8080");
  ASSERT_EQ(checks_set(ck, A, doc, &s, 1, err, sizeof err), 0);
  RUN_UNTIL(nseen >= 1, 2000);
  ASSERT_EQ(seen[0].to, CHECKS_FAILING);
  ASSERT_STR_EQ(seen[0].reason, "target 10.9.9.9 is not on this host (allow "
                                "it with --check-allow)");
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  ASSERT_STR_EQ(info.reason, seen[0].reason);
  ASSERT_STR_EQ(info.target, "");
  checks_stats_t st;
  checks_stats(ck, &st);
  ASSERT_EQ(st.runs[CHECKS_TCP][0], 1); /* a failed run, counted */
  teardown();
  /* an allow list that does not parse allows nothing beyond this host */
  setup_allow = "10.9.0.0/99";
  setup(0);
  setup_allow = NULL;
  ASSERT_STR_EQ(target_of(doc, "10.9.1.1", NULL), "");
  ASSERT_STR_EQ(target_of(doc, "127.0.0.1", NULL), "127.0.0.1:8080");
  teardown();
  json_free(d);
}

TEST(ipv6_loopback) {
  setup(0);
  srv_t s;
  struct sockaddr_in6 sa;
  uv_ip6_addr("::1", 0, &sa);
  uv_tcp_t probe;
  uv_tcp_init(&loop, &probe);
  int rc = uv_tcp_bind(&probe, (struct sockaddr *)&sa, 0);
  uv_close((uv_handle_t *)&probe, NULL);
  if (rc != 0) {
    teardown();
    SKIP("no ::1 here (%s)", uv_strerror(rc));
  }
  srv_start(&s, SRV_HTTP, "::1");
  checks_spec_t h = http_spec(s.port, 100, 100);
  h.target_host = "::1";
  char err[200];
  ASSERT_EQ(checks_set(ck, A, NULL, &h, 1, err, sizeof err), 0);
  RUN_UNTIL(nseen >= 1, 2000);
  ASSERT_EQ(seen[0].to, CHECKS_PASSING);
  checks_info_t info;
  ASSERT_EQ(checks_get(ck, A, 0, &info), 0);
  char want[40];
  snprintf(want, sizeof want, "[::1]:%d", s.port);
  ASSERT_STR_EQ(info.target, want);
  srv_stop(&s);
  teardown();
}

TEST(metrics_text) {
  setup(0);
  srv_t s;
  srv_start(&s, SRV_HTTP, "127.0.0.1");
  checks_spec_t specs[2] = {http_spec(s.port, 100, 100),
                            tcp_spec(closed_port(), 100, 100)};
  char err[200];
  ASSERT_EQ(checks_set(ck, A, NULL, specs, 2, err, sizeof err), 0);
  RUN_UNTIL(nseen >= 2, 2000);
  checks_remove(ck, A); /* the counters stand still from here */
  buf_t b;
  buf_init(&b);
  checks_metrics(ck, &b);
  checks_stats_t st;
  checks_stats(ck, &st);
  ASSERT_CONTAINS(b.data, "# TYPE register_checks gauge\n"
                          "register_checks{state=\"pending\"} 0\n"
                          "register_checks{state=\"passing\"} 0\n"
                          "register_checks{state=\"failing\"} 0\n");
  ASSERT_CONTAINS(b.data,
                  "register_check_transitions_total{to=\"passing\"} 1\n"
                  "register_check_transitions_total{to=\"failing\"} 1\n");
  char line[200];
  snprintf(line, sizeof line,
           "register_check_duration_seconds_bucket{type=\"http\",le=\"+Inf\"}"
           " %llu\n",
           (unsigned long long)st.count[CHECKS_HTTP]);
  ASSERT_CONTAINS(b.data, line);
  snprintf(line, sizeof line,
           "register_check_runs_total{type=\"tcp\",result=\"failure\"} %llu\n",
           (unsigned long long)st.runs[CHECKS_TCP][0]);
  ASSERT_CONTAINS(b.data, line);
  ASSERT(st.runs[CHECKS_TCP][0] >= 1 && st.runs[CHECKS_HTTP][1] >= 1);
  ASSERT_CONTAINS(b.data, "register_check_duration_seconds_bucket{type=\"tcp\","
                          "le=\"0.001\"}");
  ASSERT_CONTAINS(b.data, "# TYPE register_check_duration_seconds histogram\n");
  ASSERT_CONTAINS(b.data, "register_checks_queued 0\n");
  /* every line is a comment or `name{labels} value` */
  for (char *p = b.data; *p;) {
    char *nl = strchr(p, '\n');
    ASSERT(nl);
    ASSERT(*p == '#' || strstr(p, "register_") == p);
    p = nl + 1;
  }
  buf_free(&b);
  srv_stop(&s);
  teardown();
}

/* Random sets and removals, from the test and from inside callbacks, over
 * every kind of target: nothing leaks or crashes (run it under ASan), and
 * the counters add up. */
static srv_t *churn_srv[3];
static int churn_ports[4];
static char churn_ids[40][16];
static uint32_t churn_seed = 7;
static uint32_t churn_rand(uint32_t n) {
  churn_seed = churn_seed * 1103515245u + 12345u;
  return (churn_seed >> 8) % n;
}
static void churn_one(const char *id) {
  checks_spec_t specs[3];
  size_t n = churn_rand(4);
  for (size_t i = 0; i < n; i++) {
    int k = (int)churn_rand(4);
    specs[i] = churn_rand(2) ? http_spec(churn_ports[k], 100, 100)
                             : tcp_spec(churn_ports[k], 100, 100);
    specs[i].rise = (int)churn_rand(2) + 1;
  }
  char err[200];
  ASSERT_EQ(checks_set(ck, id, NULL, specs, n, err, sizeof err), 0);
}
static void churn_in_callback(const trans_t *t) {
  if (churn_rand(3) == 0) churn_one(t->id);
  if (churn_rand(5) == 0) checks_remove(ck, churn_ids[churn_rand(40)]);
}

TEST(churn) {
  setup(8);
  srv_t a, b, c;
  srv_start(&a, SRV_SILENT, "127.0.0.1");
  srv_start(&b, SRV_HTTP, "127.0.0.1");
  srv_start(&c, SRV_CLOSE, "127.0.0.1");
  churn_srv[0] = &a, churn_srv[1] = &b, churn_srv[2] = &c;
  churn_ports[0] = a.port, churn_ports[1] = b.port, churn_ports[2] = c.port;
  churn_ports[3] = closed_port();
  for (int i = 0; i < 40; i++)
    snprintf(churn_ids[i], sizeof churn_ids[i], "churn%02d", i);
  on_trans_hook = churn_in_callback;
  uv_update_time(&loop);
  uint64_t end = uv_now(&loop) + 1500;
  while (uv_now(&loop) < end) {
    for (int k = 0; k < 5; k++) {
      const char *id = churn_ids[churn_rand(40)];
      if (churn_rand(4) == 0)
        checks_remove(ck, id);
      else
        churn_one(id);
    }
    run_for(7);
  }
  checks_stats_t st;
  checks_stats(ck, &st);
  ASSERT(st.inflight <= 8);
  size_t total = 0;
  for (int i = 0; i < 40; i++)
    total += checks_count(ck, churn_ids[i]);
  ASSERT_EQ(st.by_state[0] + st.by_state[1] + st.by_state[2], total);
  ASSERT(nseen > 20);
  ASSERT(st.count[0] + st.count[1] > 100);
  srv_stop(&a);
  srv_stop(&b);
  srv_stop(&c);
  teardown();
}

/* test_main() of test.h, with skips (see SKIP) */
int main(int argc, char **argv) {
  static const test_entry_t tests[] = {
      TEST_ENTRY(spec_validation),
      TEST_ENTRY(resolve_targets),
      TEST_ENTRY(tcp_connect_and_refused),
      TEST_ENTRY(http_status_and_hysteresis),
      TEST_ENTRY(timeouts_and_http_refused),
      TEST_ENTRY(removal_while_in_flight),
      TEST_ENTRY(reload_keeps_state),
      TEST_ENTRY(bounded_concurrency),
      TEST_ENTRY(jitter_spread),
      TEST_ENTRY(unresolved_target_fails_with_reason),
      TEST_ENTRY(targets_beyond_this_host),
      TEST_ENTRY(ipv6_loopback),
      TEST_ENTRY(metrics_text),
      TEST_ENTRY(churn),
  };
  int ran = 0, skips = 0;
  for (size_t i = 0; i < ARRAY_SIZE(tests); i++) {
    if (argc > 1 && strcmp(argv[1], tests[i].name) != 0) continue;
    skipped = 0;
    tests[i].fn();
    fprintf(stderr, "%s %s\n", skipped ? "skipped" : "ok", tests[i].name);
    skips += skipped;
    ran++;
  }
  if (!ran) {
    fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "(any)");
    return 1;
  }
  return skips ? 77 : 0;
}

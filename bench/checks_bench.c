/* bench/checks_bench: what health checks cost, and how fast they notice.
 *
 * A child process serves one listener per container on 127.0.0.1 (TCP:
 * accept and hold until the client closes; HTTP: answer 200, or 503 after
 * SIGUSR1 until the next SIGUSR1).  This process runs the checks module with
 * the daemon's curl multi: C containers, one check each (half tcp, half http by
 * default), every INTERVAL ms.  After a warm-up it measures its own CPU time
 * (getrusage: this process only, not the servers) over SECONDS, then flips
 * the HTTP servers to 503 and back, and times each HTTP check's transition
 * against the targets fall x interval + 1 s and rise x interval + 1 s.
 *
 *   checks_bench [SECONDS=20] [CONTAINERS=200] [INTERVAL_MS=1000]
 *                [tcp|http|mix] [RISE=2] [FALL=2]
 *
 * Prints one JSON line; exits 1 when a target is missed. */
#include "checks.h"
#include "http.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXC 5000

/* ---- the servers (child process) ---- */

typedef struct {
  uv_tcp_t tcp;
  uv_write_t wr;
  char in[2048];
  size_t len;
  int answered;
} sconn_t;

static int status = 200;
static uv_loop_t *sloop;

static void sclose_cb(uv_handle_t *h) {
  free(h->data);
}

static void salloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  (void)n;
  sconn_t *c = h->data;
  if (c->len >= sizeof c->in - 1) c->len = 0;
  *b = uv_buf_init(c->in + c->len, (unsigned)(sizeof c->in - 1 - c->len));
}

static void swrite_cb(uv_write_t *w, int st) {
  (void)st;
  sconn_t *c = w->data;
  uv_close((uv_handle_t *)&c->tcp, sclose_cb);
}

static void sread(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  sconn_t *c = s->data;
  if (n < 0) {
    if (!uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, sclose_cb);
    return;
  }
  c->len += (size_t)n;
  c->in[c->len] = '\0';
  if (c->answered || !strstr(c->in, "\r\n\r\n")) return;
  c->answered = 1;
  uv_read_stop(s);
  static char out[2][128];
  int k = status == 200 ? 0 : 1;
  int len = snprintf(out[k], sizeof out[k],
                     "HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: "
                     "close\r\n\r\nok",
                     status);
  uv_buf_t buf = uv_buf_init(out[k], (unsigned)len);
  c->wr.data = c;
  uv_write(&c->wr, s, &buf, 1, swrite_cb);
}

static void sconn(uv_stream_t *l, int st) {
  if (st < 0) return;
  sconn_t *c = xcalloc(1, sizeof *c);
  uv_tcp_init(sloop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) < 0) {
    uv_close((uv_handle_t *)&c->tcp, sclose_cb);
    return;
  }
  /* http: answer the request; tcp: nothing comes, close on EOF */
  uv_read_start((uv_stream_t *)&c->tcp, salloc, sread);
}

static void sflip(uv_signal_t *s, int sig) {
  (void)s, (void)sig;
  status = status == 200 ? 503 : 200;
}

static void sterm(uv_signal_t *s, int sig) {
  (void)s, (void)sig;
  exit(0);
}

/* Listens on n ports (is_tcp[i] says which kind); writes them to fd. */
static void serve(int n, const int *is_tcp, int fd) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  sloop = &loop;
  static uv_tcp_t ls[MAXC];
  int *ports = xcalloc((size_t)n, sizeof *ports);
  for (int i = 0; i < n; i++) {
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_init(&loop, &ls[i]);
    ls[i].data = is_tcp[i] ? (void *)1 : NULL;
    if (uv_tcp_bind(&ls[i], (struct sockaddr *)&sa, 0) < 0 ||
        uv_listen((uv_stream_t *)&ls[i], 128, sconn) < 0) {
      perror("listen");
      exit(2);
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_getsockname(&ls[i], (struct sockaddr *)&ss, &len);
    ports[i] = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  if (write(fd, ports, sizeof *ports * (size_t)n) < 0) exit(2);
  close(fd);
  uv_signal_t flip, term;
  uv_signal_init(&loop, &flip);
  uv_signal_start(&flip, sflip, SIGUSR1);
  uv_signal_init(&loop, &term);
  uv_signal_start(&term, sterm, SIGTERM);
  uv_run(&loop, UV_RUN_DEFAULT);
  exit(0);
}

/* ---- the checks (this process) ---- */

static uv_loop_t loop;
static checks_t *ck;
static int n_http;
static uint64_t flip_at;     /* loop time of the last flip */
static checks_state_t want;  /* the state the flip leads to */
static int reached;          /* http checks in `want` since the flip */
static uint64_t max_latency; /* ms from the flip to a check's transition */
static uint64_t transitions_other;

static void on_transition(void *ud, const char *id, size_t index,
                          checks_state_t from, checks_state_t to,
                          const char *reason) {
  (void)ud, (void)id, (void)index, (void)from, (void)reason;
  if (flip_at && to == want && id[0] == 'h') {
    uint64_t lat = uv_now(&loop) - flip_at;
    if (lat > max_latency) max_latency = lat;
    reached++;
  } else {
    transitions_other++;
  }
}

/* this process's CPU seconds; *sys gets the kernel's part */
static double cpu_seconds(double *sys) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + *sys;
}

static void stop_cb(uv_timer_t *t) {
  (void)t;
  uv_stop(&loop);
}

static void run_ms(uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  uv_timer_start(&t, stop_cb, ms, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
}

/* Runs until every HTTP check reached `want`, at most ms. */
static void run_until_reached(uint64_t ms) {
  uv_update_time(&loop);
  uint64_t end = uv_now(&loop) + ms;
  while (reached < n_http && uv_now(&loop) < end)
    run_ms(10);
}

static uint64_t sum_runs(int n, char (*ids)[16]) {
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    checks_info_t info;
    if (checks_get(ck, ids[i], 0, &info) == 0) total += info.runs;
  }
  return total;
}

int main(int argc, char **argv) {
  int seconds = argc > 1 ? atoi(argv[1]) : 20;
  int n = argc > 2 ? atoi(argv[2]) : 200;
  long interval = argc > 3 ? atol(argv[3]) : 1000;
  const char *mode = argc > 4 ? argv[4] : "mix";
  int rise = argc > 5 ? atoi(argv[5]) : 2;
  int fall = argc > 6 ? atoi(argv[6]) : 2;
  if (seconds < 1 || n < 1 || n > MAXC || interval < 10 || rise < 1 ||
      fall < 1) {
    fprintf(stderr, "usage: checks_bench [SECONDS] [CONTAINERS] "
                    "[INTERVAL_MS] [tcp|http|mix] [RISE] [FALL]\n");
    return 2;
  }
  int *is_tcp = xcalloc((size_t)n, sizeof *is_tcp);
  for (int i = 0; i < n; i++)
    is_tcp[i] = strcmp(mode, "tcp") == 0    ? 1
                : strcmp(mode, "http") == 0 ? 0
                                            : i % 2 == 0;
  int fds[2];
  if (pipe(fds) < 0) return 2;
  pid_t child = fork();
  if (child == 0) {
    close(fds[0]);
    serve(n, is_tcp, fds[1]);
  }
  close(fds[1]);
  int *ports = xcalloc((size_t)n, sizeof *ports);
  size_t got = 0;
  while (got < sizeof *ports * (size_t)n) {
    ssize_t r =
        read(fds[0], (char *)ports + got, sizeof *ports * (size_t)n - got);
    if (r <= 0) return 2;
    got += (size_t)r;
  }
  close(fds[0]);

  log_setup(LOG_ERROR, LOG_TEXT); /* a line per transition otherwise */
  curl_global_init(CURL_GLOBAL_DEFAULT);
  uv_loop_init(&loop);
  http_t *http = http_new(&loop, 64, 65); /* as the daemon's etcd client */
  checks_opts_t o = {
      .loop = &loop, .http = http, .on_transition = on_transition};
  ck = checks_new(&o);
  char(*ids)[16] = xcalloc((size_t)n, sizeof *ids);
  char err[200];
  for (int i = 0; i < n; i++) {
    checks_spec_t s;
    checks_spec_init(&s);
    s.port = "80/tcp";
    s.type = is_tcp[i] ? CHECKS_TCP : CHECKS_HTTP;
    s.path = "/health";
    s.interval_ms = interval;
    s.timeout_ms = interval / 2;
    s.rise = rise;
    s.fall = fall;
    s.target_host = "127.0.0.1";
    s.target_port = ports[i];
    snprintf(ids[i], sizeof ids[i], "%c%05d", is_tcp[i] ? 't' : 'h', i);
    if (checks_set(ck, ids[i], NULL, &s, 1, err, sizeof err) < 0) {
      fprintf(stderr, "%s\n", err);
      return 2;
    }
    if (!is_tcp[i]) n_http++;
  }

  /* warm-up: every check has run and passes */
  run_ms((uint64_t)interval * (uint64_t)(rise + 1));
  checks_stats_t st;
  checks_stats(ck, &st);
  uint64_t passing0 = st.by_state[CHECKS_PASSING];

  uint64_t runs0 = sum_runs(n, ids);
  double sys0, sys1;
  double cpu0 = cpu_seconds(&sys0);
  uint64_t t0 = uv_hrtime();
  run_ms((uint64_t)seconds * 1000);
  double wall = (double)(uv_hrtime() - t0) / 1e9;
  double cpu = cpu_seconds(&sys1) - cpu0;
  double sys = sys1 - sys0;
  uint64_t runs = sum_runs(n, ids) - runs0;
  checks_stats(ck, &st);
  uint64_t failed = st.runs[0][0] + st.runs[1][0];
  double pct = 100.0 * cpu / wall;

  /* a failing service, then its recovery */
  long fail_ms = -1, back_ms = -1;
  int fail_n = 0, back_n = 0;
  if (n_http) {
    uv_update_time(&loop);
    want = CHECKS_FAILING;
    reached = 0;
    max_latency = 0;
    kill(child, SIGUSR1);
    flip_at = uv_now(&loop);
    run_until_reached((uint64_t)interval * (uint64_t)(fall + 3));
    fail_ms = (long)max_latency;
    fail_n = reached;
    uv_update_time(&loop);
    want = CHECKS_PASSING;
    reached = 0;
    max_latency = 0;
    kill(child, SIGUSR1);
    flip_at = uv_now(&loop);
    run_until_reached((uint64_t)interval * (uint64_t)(rise + 3));
    back_ms = (long)max_latency;
    back_n = reached;
  }
  long fail_target = fall * interval + 1000,
       back_target = rise * interval + 1000;
  int ok = pct <= 2.0 && passing0 == (uint64_t)n && failed == 0 &&
           (!n_http || (fail_n == n_http && back_n == n_http &&
                        fail_ms <= fail_target && back_ms <= back_target));
  printf(
      "{\"containers\":%d,\"mode\":\"%s\",\"interval_ms\":%ld,\"seconds\":%.1f,"
      "\"runs\":%llu,\"runs_per_s\":%.1f,\"failed_runs\":%llu,"
      "\"passing_after_warmup\":%llu,\"cpu_seconds\":%.3f,\"sys_seconds\":%.3f,"
      "\"cpu_pct_of_core\":%.2f,\"cpu_target_pct\":2,"
      "\"http_checks\":%d,\"fail_detected\":%d,\"fail_max_ms\":%ld,"
      "\"fail_target_ms\":%ld,\"back_detected\":%d,\"back_max_ms\":%ld,"
      "\"back_target_ms\":%ld,\"ok\":%s}\n",
      n, mode, interval, wall, (unsigned long long)runs, (double)runs / wall,
      (unsigned long long)failed, (unsigned long long)passing0, cpu, sys, pct,
      n_http, fail_n, fail_ms, fail_target, back_n, back_ms, back_target,
      ok ? "true" : "false");

  checks_free(ck);
  http_free(http);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  curl_global_cleanup();
  kill(child, SIGTERM);
  waitpid(child, NULL, 0);
  free(ids);
  free(ports);
  free(is_tcp);
  return ok ? 0 : 1;
}

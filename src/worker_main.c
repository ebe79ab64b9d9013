/* register-worker: the policy worker process.  The daemon spawns it with
 * a socketpair on fd 3 and nothing else; it takes its limits (rlimits, a
 * seccomp filter) before it reads a line of the policy, then answers the
 * daemon's requests one at a time (wire.h) with the policy room's code
 * (policy.c), until the socket closes.  Everything here is in one process
 * that a policy may crash, hang or bloat: the daemon kills and replaces
 * it, and nothing it holds is the daemon's. */
#include "json.h"
#include "log.h"
#include "luaio.h"
#include "policy.h"
#include "records.h"
#include "sandbox.h"
#include "wire.h"
#include "worker.h"

#include <errno.h>
#include <lauxlib.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define SOCK 3
#define LOG_PER_CALL 100 /* lines one request may log (the daemon caps too) */
/* the runtime's own lines in one request, beside the policy's */
#define RUNTIME_LOG_PER_CALL 16

static buf_t in;       /* bytes read, not yet consumed */
static size_t in_used; /* the frame handed out last, consumed at next read */
static buf_t out;
static policy_t *P;
static luaio_t *IO;
static policy_stats_t stats;
static unsigned long log_lines, runtime_lines, log_dropped;

/* Policy code cannot call exit() (os.exit is a stub); the one C library
 * that does, during a request, is lua-cjson, on a failed allocation
 * (strbuf's die(): exit(-1)).  The exit status says so: the daemon
 * reports "memory". */
static int in_request;

static void on_exit_nomem(void) {
  if (in_request) _exit(WORKER_EXIT_NOMEM);
}

/* The daemon is gone or spoke nonsense: nothing is left to do. */
__attribute__((noreturn)) static void quit(int rc) {
  _exit(rc);
}

static void flush_out(void) {
  if (out.len && wire_write_all(SOCK, out.data, out.len) < 0) quit(0);
  buf_reset(&out);
}

/* The next frame (blocking); its bytes stay valid until the next call. */
static void next_frame(wire_rd_t *r) {
  buf_consume(&in, in_used);
  in_used = 0;
  for (;;) {
    const char *f;
    size_t n;
    int got = wire_frame(&in, &f, &n);
    if (got < 0) quit(1);
    if (got) {
      in_used = n + 4;
      wire_rd_init(r, f, n);
      return;
    }
    char chunk[65536];
    ssize_t k = read(SOCK, chunk, sizeof chunk);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) quit(0);
    buf_append(&in, chunk, (size_t)k);
  }
}

/* ---- what the policy sends on the way ---- */

static void sink(log_level_t level, const char *const *fields,
                 const char *msg) {
  /* the policy's own lines (register.log: source=policy) within their
   * cap; the runtime's (a hook's failure and its reason) within theirs,
   * so that a policy's chatter cannot hide why it failed */
  int policy_line = 0;
  for (const char *const *f = fields; f && f[0]; f += 2)
    if (strcmp(f[0], "source") == 0 && f[1] && strcmp(f[1], "policy") == 0)
      policy_line = 1;
  if (!policy_line ? runtime_lines++ >= RUNTIME_LOG_PER_CALL
                   : log_lines++ >= LOG_PER_CALL) {
    log_dropped++;
    return;
  }
  size_t off = wire_begin(&out, WIRE_LOG);
  wire_num(&out, (uint64_t)level);
  size_t nf = 0;
  for (const char *const *f = fields; f && f[0]; f += 2)
    nf++;
  wire_num(&out, nf);
  /* cut here (the daemon cuts again, and says so): a 30 MB message cost
   * the daemon a quarter of a second per line to format */
  for (const char *const *f = fields; f && f[0]; f += 2) {
    wire_cstr(&out, f[0]);
    wire_str(&out, f[1], f[1] ? strnlen(f[1], LOG_FIELD_MAX + 4) : 0);
  }
  wire_str(&out, msg, msg ? strnlen(msg, LOG_MSG_MAX + 4) : 0);
  wire_end(&out, off);
  flush_out();
}

/* `require` of a module in the policy's directory: the daemon reads it. */
static const char *reader(lua_State *L, const char *rel, size_t *n) {
  size_t off = wire_begin(&out, WIRE_READ);
  wire_cstr(&out, rel);
  wire_end(&out, off);
  flush_out();
  wire_rd_t r;
  next_frame(&r);
  if (wire_type(&r) != WIRE_READ_ANSWER) quit(1);
  int found = (int)wire_get_num(&r);
  const char *text = wire_get_str(&r, n);
  if (r.bad) quit(1);
  if (!found || !text) return NULL;
  lua_pushlstring(L, text, *n); /* anchored: the frame goes at the next read */
  return lua_tolstring(L, -1, n);
}

static int io_start(void *ud, uint64_t id, const iocall_t *c, char *why,
                    size_t whylen) {
  (void)ud;
  (void)why;
  (void)whylen;
  size_t off = wire_begin(&out, WIRE_IO);
  wire_num(&out, id);
  wire_num(&out, (uint64_t)c->kind);
  wire_cstr(&out, c->method);
  wire_cstr(&out, c->url);
  size_t nh = 0;
  for (const char *const *h = c->headers; h && *h; h++)
    nh++;
  wire_num(&out, nh);
  for (size_t i = 0; i < nh; i++)
    wire_cstr(&out, c->headers[i]);
  wire_str(&out, c->body, c->body_len);
  wire_num(&out, (uint64_t)c->timeout_ms);
  wire_cstr(&out, c->key);
  wire_end(&out, off);
  flush_out();
  return 0;
}

static void io_cancel(void *ud, uint64_t id) {
  (void)ud;
  size_t off = wire_begin(&out, WIRE_IO_CANCEL);
  wire_num(&out, id);
  wire_end(&out, off);
  flush_out();
}

static void io_print(void *ud, const char *line, size_t n) {
  (void)ud;
  size_t off = wire_begin(&out, WIRE_PRINT);
  wire_str(&out, line, n);
  wire_end(&out, off);
  flush_out();
}

/* ---- replies ---- */

/* Every reply starts with the counters (the daemon counts differences). */
static size_t reply_begin(int type) {
  size_t off = wire_begin(&out, type);
  for (int i = 0; i < POLICY_ERR_REASONS; i++)
    wire_num(&out, stats.errors[i]);
  wire_num(&out, stats.hooks_dropped);
  wire_num(&out, log_dropped);
  return off;
}

static void reply_end(size_t off) {
  size_t n = out.len - off - 4;
  if (n > WIRE_MAX_FRAME) { /* the daemon would take it for a crash */
    out.len = off;
    char err[160];
    snprintf(err, sizeof err,
             "the reply is too large: %zu bytes (at most %u): fewer or "
             "smaller records or checks",
             n, WIRE_MAX_FRAME);
    off = reply_begin(WIRE_FAIL);
    wire_num(&out, (uint64_t)POLICY_ERR_ERROR);
    wire_cstr(&out, err);
    wire_cstr(&out, "");
  }
  wire_end(&out, off);
  flush_out();
}

static void reply_fail(const char *err) {
  size_t off = reply_begin(WIRE_FAIL);
  wire_num(&out, (uint64_t)(P ? policy_last_reason(P) : POLICY_ERR_ERROR));
  wire_cstr(&out, err);
  wire_cstr(&out, P ? policy_traceback(P) : "");
  reply_end(off);
}

static void reply_step(void) {
  size_t off = reply_begin(WIRE_STEP);
  wire_num(&out, P ? policy_hooks_alive(P) : 0);
  reply_end(off);
}

/* ---- requests ---- */

static json_doc_t *read_doc(wire_rd_t *r) {
  size_t n;
  const char *text = wire_get_str(r, &n);
  char err[200];
  json_doc_t *d = text ? json_parse(text, n, err, sizeof err) : NULL;
  if (!d) quit(1); /* the daemon sends what it parsed */
  return d;
}

static void put_records(const records_t *recs) {
  wire_num(&out, recs->rejected);
  wire_num(&out, recs->n);
  for (size_t i = 0; i < recs->n; i++) {
    wire_cstr(&out, recs->v[i].key);
    wire_str(&out, recs->v[i].value, recs->v[i].value_len);
  }
}

/* checks(); and when asked and it asks for no checks, records() with no
 * checks in the same request (one round trip for most policies). */
static void do_checks(wire_rd_t *r) {
  json_doc_t *d = read_doc(r);
  int records_too = (int)wire_get_num(r), stopping = (int)wire_get_num(r);
  if (r->bad) quit(1);
  policy_checks_t pc;
  char err[400];
  if (policy_checks(P, json_root(d), &pc, err, sizeof err) < 0) {
    json_free(d);
    reply_fail(err);
    return;
  }
  records_t recs;
  int ran = records_too && pc.n == 0, rc = 0;
  if (ran) {
    policy_check_view_t none = {NULL, 0, stopping};
    rc = policy_records_checked(P, json_root(d), &none, &recs, err, sizeof err);
  }
  json_free(d);
  size_t off = reply_begin(WIRE_CHECKS_OK);
  wire_num(&out, pc.n);
  for (size_t i = 0; i < pc.n; i++) {
    const checks_spec_t *s = &pc.v[i];
    wire_cstr(&out, s->port);
    wire_num(&out, (uint64_t)s->type);
    wire_cstr(&out, s->path);
    wire_cstr(&out, s->method);
    wire_num(&out, (uint64_t)s->status_min);
    wire_num(&out, (uint64_t)s->status_max);
    wire_cstr(&out, s->host);
    wire_num(&out, (uint64_t)s->interval_ms);
    wire_num(&out, (uint64_t)s->timeout_ms);
    wire_num(&out, (uint64_t)s->rise);
    wire_num(&out, (uint64_t)s->fall);
    wire_cstr(&out, s->address);
  }
  policy_checks_free(&pc);
  if (!ran) {
    wire_num(&out, 0);
  } else if (rc == 0) {
    wire_num(&out, 1);
    put_records(&recs);
    records_free(&recs);
  } else {
    wire_num(&out, 2);
    wire_num(&out, (uint64_t)policy_last_reason(P));
    wire_cstr(&out, err);
    wire_cstr(&out, policy_traceback(P));
  }
  reply_end(off);
}

static void do_records(wire_rd_t *r) {
  json_doc_t *d = read_doc(r);
  int has_view = (int)wire_get_num(r);
  size_t n = (size_t)wire_get_num(r);
  if (n > POLICY_MAX_CHECKS) quit(1);
  policy_check_state_t st[POLICY_MAX_CHECKS];
  for (size_t i = 0; i < n; i++) {
    st[i].port = wire_get_str(r, NULL);
    st[i].type = wire_get_str(r, NULL);
    st[i].state = wire_get_str(r, NULL);
    st[i].reason = wire_get_str(r, NULL);
    st[i].target = wire_get_str(r, NULL);
  }
  if (r->bad) quit(1);
  int stopping = (int)wire_get_num(r);
  if (r->bad) quit(1);
  policy_check_view_t view = {st, n, stopping};
  records_t recs;
  char err[400];
  int rc = policy_records_checked(P, json_root(d), has_view ? &view : NULL,
                                  &recs, err, sizeof err);
  json_free(d);
  if (rc < 0) {
    reply_fail(err);
    return;
  }
  size_t off = reply_begin(WIRE_RECORDS_OK);
  put_records(&recs);
  records_free(&recs);
  reply_end(off);
}

/* render(kv, ctx) on the keys the daemon read. */
static void do_render(wire_rd_t *r) {
  policy_render_ctx_t ctx;
  ctx.prefix = wire_get_str(r, NULL);
  ctx.revision = (int64_t)wire_get_num(r);
  ctx.api = wire_get_str(r, NULL);
  size_t n = (size_t)wire_get_num(r);
  /* each key and value takes a byte at least */
  if (r->bad || n > (size_t)(r->end - r->p) / 2) quit(1);
  policy_kv_t *kv = n ? xcalloc(n, sizeof *kv) : NULL;
  for (size_t i = 0; i < n; i++) {
    kv[i].key = wire_get_str(r, &kv[i].klen);
    kv[i].value = wire_get_str(r, &kv[i].vlen);
    if (!kv[i].key || !kv[i].value) r->bad = 1;
  }
  if (r->bad) quit(1);
  buf_t text;
  buf_init(&text);
  char err[600];
  int rc = policy_render(P, kv, n, &ctx, &text, err, sizeof err);
  free(kv);
  if (rc < 0) {
    buf_free(&text);
    reply_fail(err);
    return;
  }
  size_t off = reply_begin(WIRE_RENDER_OK);
  wire_str(&out, text.data ? text.data : "", text.len);
  buf_free(&text);
  reply_end(off);
}

static void do_event(wire_rd_t *r) {
  policy_event_t ev = {0};
  ev.type = wire_get_str(r, NULL);
  ev.action = wire_get_str(r, NULL);
  ev.id = wire_get_str(r, NULL);
  ev.image = wire_get_str(r, NULL);
  size_t an;
  const char *attrs = wire_get_str(r, &an);
  ev.time = (long long)wire_get_num(r);
  ev.time_nano = (long long)wire_get_num(r);
  ev.health_status = wire_get_str(r, NULL);
  if (r->bad) quit(1);
  json_doc_t *d = NULL;
  if (attrs) {
    char err[200];
    d = json_parse(attrs, an, err, sizeof err);
    if (!d) quit(1);
    ev.attributes = json_root(d);
  }
  policy_hook_event(P, &ev);
  json_free(d);
  reply_step();
}

static void do_changed(wire_rd_t *r) {
  const char *op = wire_get_str(r, NULL), *key = wire_get_str(r, NULL);
  size_t vlen;
  const char *value = wire_get_str(r, &vlen);
  if (r->bad || !op || !key) quit(1);
  policy_hook_changed(P, op, key, value, vlen);
  reply_step();
}

static void do_io_answer(wire_rd_t *r) {
  uint64_t id = wire_get_num(r);
  iocall_answer_t a = {0};
  a.error = wire_get_str(r, NULL);
  a.status = (long)wire_get_num(r);
  a.body = wire_get_str(r, &a.body_len);
  a.headers = wire_get_str(r, &a.headers_len);
  size_t n = (size_t)wire_get_num(r);
  if (r->bad || n > (size_t)(r->end - r->p) / 8) quit(1);
  iocall_kv_t *kv = n ? calloc(n, sizeof *kv) : NULL;
  if (n && !kv) quit(1);
  for (size_t i = 0; i < n; i++) {
    kv[i].key = wire_get_str(r, NULL);
    kv[i].value = wire_get_str(r, &kv[i].value_len);
    if (!kv[i].key || !kv[i].value) r->bad = 1;
  }
  if (r->bad) quit(1);
  a.kvs = kv;
  a.n = n;
  luaio_answer(IO, id, &a);
  free(kv);
  reply_step();
}

/* ---- limits ---- */

/* The address space mapped now, in bytes (before the policy runs). */
static size_t vm_size(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (f) {
    if (fscanf(f, "%lu", &pages) != 1) pages = 0;
    fclose(f);
  }
  return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

static void limit(int what, rlim_t v) {
  struct rlimit rl = {v, v};
  if (setrlimit(what, &rl) < 0) quit(3);
}

/* Only what Lua and this file need: reading and writing the socket,
 * memory, time, leaving.  Anything else fails with EPERM (a sandbox
 * escape gets an error, not a file or a socket). */
/* An argument comparison (libseccomp's SCMP_A0() leaves datum_b out,
 * which clang's -Wextra names). */
static struct scmp_arg_cmp arg_eq(unsigned arg, scmp_datum_t v) {
  struct scmp_arg_cmp c = {arg, SCMP_CMP_EQ, v, 0};
  return c;
}

static void seccomp_close(void) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
  if (!ctx) quit(3);
  int rc = 0;
#define ALLOW(name)                                                            \
  rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(name), 0)
  ALLOW(brk);
  ALLOW(mmap);
  ALLOW(munmap);
  ALLOW(mremap);
  ALLOW(madvise);
  ALLOW(mprotect);
  ALLOW(futex);
  ALLOW(exit);
  ALLOW(exit_group);
  ALLOW(rt_sigreturn);
  ALLOW(rt_sigprocmask);
  ALLOW(clock_gettime);
  ALLOW(clock_getres);
  ALLOW(gettimeofday);
  ALLOW(getpid);
  ALLOW(gettid);
  ALLOW(tgkill); /* abort() */
  ALLOW(getrandom);
  ALLOW(sched_yield);
  ALLOW(sigaltstack); /* AddressSanitizer asks at every longjmp (a Lua error) */
  ALLOW(getrusage);
#undef ALLOW
  /* its own CPU limit, renewed before each request (cpu_limit()) */
  rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prlimit64), 2,
                         arg_eq(0, 0), arg_eq(1, RLIMIT_CPU));
  rc |=
      seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(read), 1, arg_eq(0, SOCK));
  rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(write), 1,
                         arg_eq(0, SOCK));
  if (WORKER_UNDER_ASAN) /* its reports go to stderr */
    rc |=
        seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(write), 1, arg_eq(0, 2));
  if (rc || seccomp_load(ctx) < 0) quit(3);
  seccomp_release(ctx);
}

/* CPU time: what it used so far plus the wall-clock limit and a second;
 * past it the kernel sends SIGXCPU (the daemon reports "timeout").  The
 * daemon's wall clock comes first; this holds if that ever fails. */
static uint64_t time_limit_ms;

static void cpu_limit(void) {
  /* renewed before every request, from the time used to the microsecond:
   * a call that keeps to its wall clock (one thread) always has its whole
   * limit and more than a second left.  (Renewing at most once a second
   * of wall clock, with the seconds of user and system time each rounded
   * down, once left less than one legal call: SIGXCPU killed calls that
   * kept to their limits.) */
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) < 0) return;
  uint64_t us =
      (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
      (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
  rlim_t used = (rlim_t)((us + 999999u) / 1000000u);
  rlim_t lim = (rlim_t)((time_limit_ms + 999u) / 1000u);
  struct rlimit rl = {used + lim + 2, RLIM_INFINITY};
  setrlimit(RLIMIT_CPU, &rl);
}

static void take_limits(uint64_t mem_cap, pid_t daemon) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* the daemon went before the death signal was set (it may be pid 1, in
   * a container: its pid is what says so, not 1) */
  if (getppid() != daemon) quit(0);
  prctl(PR_SET_DUMPABLE, 0);
  limit(RLIMIT_CORE, 0);
  limit(RLIMIT_FSIZE, 0); /* no file writes */
  limit(RLIMIT_NPROC, 0); /* no child processes */
  if (!WORKER_UNDER_ASAN && mem_cap) limit(RLIMIT_AS, vm_size() + mem_cap);
  tzset();                 /* os.date: the zone is read now, never again */
  limit(RLIMIT_NOFILE, 0); /* no new files (fd 3 stays open) */
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) quit(3);
  seccomp_close();
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  atexit(on_exit_nomem);
  buf_init(&in);
  buf_init(&out);
  wire_rd_t r;
  next_frame(&r);
  if (wire_type(&r) != WIRE_INIT) quit(1);
  log_level_t level = (log_level_t)wire_get_num(&r);
  uint64_t mem_cap = wire_get_num(&r);
  pid_t daemon = (pid_t)wire_get_num(&r);
  policy_opts_t po = {0};
  po.file = wire_get_str(&r, NULL);
  po.source = wire_get_str(&r, &po.source_len);
  po.host_ip = wire_get_str(&r, NULL);
  po.hostname = wire_get_str(&r, NULL);
  po.budget = (long)wire_get_num(&r);
  po.mem_limit = (size_t)wire_get_num(&r);
  po.time_limit_ms = wire_get_num(&r);
  po.hook_limit_ms = wire_get_num(&r);
  luaio_backend_t b = {0};
  b.start = io_start;
  b.cancel = io_cancel;
  if (wire_get_num(&r)) b.print = io_print;
  b.has_http = (int)wire_get_num(&r);
  b.has_etcd = (int)wire_get_num(&r);
  po.render = (int)wire_get_num(&r);
  if (r.bad || level > LOG_DEBUG || !po.host_ip || !po.hostname) quit(1);

  time_limit_ms =
      po.time_limit_ms ? po.time_limit_ms : POLICY_DEFAULT_TIME_LIMIT_MS;
  take_limits(mem_cap, daemon);
  cpu_limit();
  log_setup(level, LOG_TEXT);
  log_set_sink(sink);
  sandbox_set_reader(reader);
  IO = luaio_new(&b);
  po.io = IO;
  po.stats = &stats;
  char err[600];
  in_request = 1;
  P = policy_new(&po, err, sizeof err);
  in_request = 0;
  if (!P) {
    reply_fail(err);
    quit(0);
  }
  size_t off = reply_begin(WIRE_READY);
  wire_cstr(&out, policy_prefix(P));
  wire_num(&out, (uint64_t)policy_has_checks(P));
  wire_num(&out, (uint64_t)policy_has_hook(P, "event"));
  wire_num(&out, (uint64_t)policy_has_hook(P, "changed"));
  reply_end(off);

  for (;;) {
    next_frame(&r);
    log_lines = runtime_lines = 0;
    cpu_limit();
    in_request = 1;
    switch (wire_type(&r)) {
    case WIRE_CHECKS:
      do_checks(&r);
      break;
    case WIRE_RECORDS:
      do_records(&r);
      break;
    case WIRE_EVENT:
      do_event(&r);
      break;
    case WIRE_CHANGED:
      do_changed(&r);
      break;
    case WIRE_IO_ANSWER:
      do_io_answer(&r);
      break;
    case WIRE_TICK:
      policy_hooks_sweep(P);
      reply_step();
      break;
    case WIRE_RENDER:
      do_render(&r);
      break;
    case WIRE_GC:
      policy_gc(P);
      reply_step();
      break;
    default:
      quit(1);
    }
    in_request = 0;
  }
}

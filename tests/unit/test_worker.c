/* The policy worker, through worker.h, with the real register-worker
 * binary: answers as the policy does in-process; a hang, a crash and a
 * memory blow-up cost one call, with their reason, within the limit plus
 * the grace period; a worker that keeps dying backs off; the environment
 * is the operator's choice; `require` is served by the daemon; and the
 * frames (wire.c) refuse what does not add up. */
#include "json.h"
#include "log.h"
#include "test.h"
#include "util.h"
#include "wire.h"
#include "worker.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char inspect[] =
    "{\"Id\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
    "ef\",\"Name\":\"/web\",\"Image\":\"sha256:1\",\"Created\":\"2026-01-01\","
    "\"State\":{\"Running\":true,\"Status\":\"running\"},"
    "\"Config\":{\"Image\":\"team/web:1\",\"Hostname\":\"h\",\"Env\":[],"
    "\"Labels\":{},\"ExposedPorts\":{\"80/tcp\":{}}},\"NetworkSettings\":{"
    "\"Ports\":{\"80/tcp\":[{\"HostIp\":\"0.0.0.0\",\"HostPort\":\"32768\"}]},"
    "\"Networks\":{\"bridge\":{\"IPAddress\":\"172.17.0.2\"}}}}";

static worker_t *start(const char *src, const char *env, uint64_t limit_ms) {
  worker_opts_t o = {0};
  o.file = src ? "/tmp/register-test-policy.lua" : NULL;
  o.source = src;
  o.source_len = src ? strlen(src) : 0;
  o.host_ip = "10.0.0.1";
  o.hostname = "h";
  o.time_limit_ms = limit_ms;
  o.path = REGISTER_WORKER_PATH;
  o.env = env;
  o.log_level = LOG_ERROR;
  char err[600];
  worker_t *w = worker_new(&o, err, sizeof err);
  if (!w) FAIL("worker_new: %s", err);
  return w;
}

/* records() of the inspect document as container `id` (64 hex digits
 * made of one: "a" -> aaaa...), or the document's own id (NULL): 0 or -1
 * (err). */
static int records_of(worker_t *w, const char *id, records_t *r, char *err,
                      size_t n) {
  char *text = xstrdup(inspect);
  if (id) {
    char *p = strstr(text, "0123456789abcdef");
    REGISTER_ASSERT(p);
    memset(p, id[0], 64);
  }
  char e[200];
  json_doc_t *d = json_parse(text, strlen(text), e, sizeof e);
  ASSERT(d);
  int rc = worker_records_checked(w, json_root(d), NULL, r, err, n);
  json_free(d);
  free(text);
  return rc;
}

static int records(worker_t *w, records_t *r, char *err, size_t n) {
  return records_of(w, NULL, r, err, n);
}

TEST(default_schema_through_the_worker) {
  worker_t *w = start(NULL, NULL, 1000);
  ASSERT_STR_EQ(worker_name(w), "default");
  ASSERT_STR_EQ(worker_prefix(w), "/registered/10.0.0.1");
  ASSERT_EQ(strlen(worker_sha256(w)), 64);
  records_t r;
  char err[600];
  ASSERT_EQ(records(w, &r, err, sizeof err), 0);
  ASSERT_EQ(r.n, 1);
  ASSERT_STR_EQ(r.v[0].key, "/registered/10.0.0.1/team::web:1/"
                            "0123456789abcdef0123456789abcdef0123456789abcdef0"
                            "123456789abcdef");
  ASSERT_CONTAINS(r.v[0].value, "\"public_port\":\"32768\"");
  records_free(&r);
  worker_free(w);
}

/* A single long C call: the count hook never runs; the daemon kills. */
TEST(a_hang_in_c_is_killed_within_the_limit) {
  worker_t *w = start("return { records = function(c) "
                      "if c.name == 'web' then string.rep('', 1 << 62) end "
                      "return {} end }",
                      NULL, 300);
  pid_t before = worker_pid(w);
  records_t r;
  char err[600];
  uint64_t t0 = util_now_ms();
  ASSERT_EQ(records(w, &r, err, sizeof err), -1);
  uint64_t took = util_now_ms() - t0;
  ASSERT(took >= 300 && took < 300 + WORKER_GRACE_MS + 1000);
  ASSERT_EQ(worker_last_reason(w), POLICY_ERR_TIMEOUT);
  ASSERT_CONTAINS(err, "reason: timeout");
  ASSERT_CONTAINS(err, "container 0123456789ab");
  ASSERT_EQ(worker_pid(w), 0); /* gone; the next call gets a new one */
  ASSERT(kill(before, 0) < 0); /* and reaped */
  worker_free(w);
}

TEST(a_crash_costs_one_call) {
  /* the worker is killed from outside: as good as any crash */
  worker_t *w =
      start("return { records = function(c) return {} end }", NULL, 1000);
  records_t r;
  char err[600];
  ASSERT_EQ(records(w, &r, err, sizeof err), 0);
  records_free(&r);
  kill(worker_pid(w), SIGSEGV);
  usleep(50 * 1000);
  /* the death is seen by the next call, which fails; the next container
   * gets a new worker */
  ASSERT_EQ(records(w, &r, err, sizeof err), -1);
  ASSERT_EQ(worker_last_reason(w), POLICY_ERR_CRASH);
  /* "died of signal 11" (under ASan: its handler's "exited with status 1") */
  ASSERT_CONTAINS(err, "the policy worker ");
  ASSERT_EQ(records_of(w, "b", &r, err, sizeof err), 0);
  records_free(&r);
  ASSERT(worker_pid(w) > 0);
  worker_free(w);
}

/* One container whose calls end the worker does not keep it from the
 * others: it is tried again only after a while, the others at once. */
TEST(the_container_that_kills_it_waits_the_others_do_not) {
  worker_t *w = start("return { records = function(c) "
                      "if c.id:sub(1, 1) == 'e' then string.rep('', 1 << 62) "
                      "end return { ['/k/' .. c.id] = 'v' } end }",
                      NULL, 200);
  records_t r;
  char err[600];
  ASSERT_EQ(records_of(w, "e", &r, err, sizeof err), -1);
  ASSERT_EQ(worker_last_reason(w), POLICY_ERR_TIMEOUT);
  uint64_t t0 = util_now_ms();
  ASSERT_EQ(records_of(w, "e", &r, err, sizeof err), -1); /* at once */
  ASSERT(util_now_ms() - t0 < 100);
  ASSERT_CONTAINS(
      err, "its calls ended the policy worker or ran to the wall clock 1 time");
  ASSERT_EQ(worker_last_reason(w), POLICY_ERR_TIMEOUT);
  for (int i = 0; i < 3; i++) { /* the others, at once, by a new worker */
    ASSERT_EQ(records_of(w, "b", &r, err, sizeof err), 0);
    ASSERT_EQ(r.n, 1);
    records_free(&r);
  }
  ASSERT(!worker_backing_off(w));
  usleep(1100 * 1000); /* its quarantine (1 s) is over: tried, killed again */
  ASSERT_EQ(records_of(w, "e", &r, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "ran past the 200 ms limit");
  worker_free(w);
}

TEST(keeps_dying_backs_off) {
  worker_t *w = start("return { records = function(c) "
                      "string.rep('', 1 << 62) end }",
                      NULL, 200);
  records_t r;
  char err[600];
  ASSERT_EQ(records_of(w, "a", &r, err, sizeof err), -1); /* killed */
  ASSERT(!worker_backing_off(w));
  ASSERT_EQ(records_of(w, "b", &r, err, sizeof err), -1); /* a new one, too */
  ASSERT(worker_backing_off(w));
  /* a container with no death of its own still gets a worker (one try) */
  ASSERT_EQ(records_of(w, "c", &r, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "ran past the 200 ms limit");
  ASSERT(worker_backing_off(w)); /* 3 in a row: 2 s */
  usleep(1100 * 1000);           /* a's quarantine (1 s) is over */
  uint64_t t0 = util_now_ms();
  ASSERT_EQ(records_of(w, "a", &r, err, sizeof err), -1); /* at once */
  ASSERT(util_now_ms() - t0 < 100);
  ASSERT_CONTAINS(err, "restarting after 3 deaths in a row");
  ASSERT_EQ(worker_last_reason(w), POLICY_ERR_TIMEOUT);
  worker_free(w);
}

/* Several containers whose calls end the worker back it off; a container
 * with no such death of its own still gets a worker and its records. */
TEST(a_backoff_does_not_hold_the_containers_that_did_not_cause_it) {
  worker_t *w = start("return { records = function(c) "
                      "if c.id:match('^[abc]') then string.rep('', 1 << 62) "
                      "end return { ['/k/' .. c.id] = 'v' } end }",
                      NULL, 200);
  records_t r;
  char err[600];
  const char *bad[] = {"a", "b", "c"};
  for (int i = 0; i < 3; i++)
    ASSERT_EQ(records_of(w, bad[i], &r, err, sizeof err), -1);
  ASSERT(worker_backing_off(w));
  ASSERT_EQ(records_of(w, "1", &r, err, sizeof err), 0);
  ASSERT_EQ(r.n, 1);
  records_free(&r);
  ASSERT(!worker_backing_off(w));
  ASSERT_EQ(records_of(w, "2", &r, err, sizeof err), 0);
  records_free(&r);
  worker_free(w);
}

TEST(memory_outside_lua_is_capped) {
  /* cjson's encoder buffer grows outside Lua's allocator */
  worker_t *w = start("local cjson = require 'cjson' "
                      "return { records = function(c) "
                      "local s = string.rep('x', 1 << 20) local t = {} "
                      "for i = 1, 60 do t[i] = s end "
                      "local u = {} for i = 1, 8 do u[i] = t end "
                      "return { ['/k'] = cjson.encode(u) } end }",
                      NULL, 10000);
  records_t r;
  char err[600];
  uint64_t t0 = util_now_ms();
  ASSERT_EQ(records(w, &r, err, sizeof err), -1);
  ASSERT(util_now_ms() - t0 < 10000);
  ASSERT_EQ(worker_last_reason(w), POLICY_ERR_MEMORY);
  worker_free(w);
}

TEST(environment_is_the_operators) {
  setenv("REGISTER_TEST_SECRET", "s3cret", 1);
  setenv("REGISTER_TEST_NAMED", "named", 1);
  const char *src = "return { records = function(c) return { ['/k'] = "
                    "tostring(os.getenv('REGISTER_TEST_SECRET')) .. ' ' .. "
                    "tostring(os.getenv('REGISTER_TEST_NAMED')) } end }";
  worker_t *w = start(src, "REGISTER_TEST_NAMED", 1000);
  records_t r;
  char err[600];
  ASSERT_EQ(records(w, &r, err, sizeof err), 0);
  ASSERT_STR_EQ(r.v[0].value, "nil named");
  records_free(&r);
  worker_free(w);
}

TEST(require_is_served_by_the_daemon) {
  char dir[] = "/tmp/register-test-XXXXXX";
  ASSERT(mkdtemp(dir));
  char *mod = xasprintf("%s/naming.lua", dir),
       *pol = xasprintf("%s/p.lua", dir);
  FILE *f = fopen(mod, "w");
  fputs("return { key = function(c) return '/n/' .. c.name end }\n", f);
  fclose(f);
  f = fopen(pol, "w");
  fputs("local n = require 'naming' "
        "local ok, err = pcall(require, 'absent') "
        "assert(not ok and err:find('no file'), err) "
        "return { records = function(c) return { [n.key(c)] = 'x' } end }\n",
        f);
  fclose(f);
  worker_opts_t o = {0};
  o.file = pol;
  o.host_ip = "10.0.0.1";
  o.hostname = "h";
  o.path = REGISTER_WORKER_PATH;
  o.log_level = LOG_ERROR;
  char err[600];
  worker_t *w = worker_new(&o, err, sizeof err);
  if (!w) FAIL("worker_new: %s", err);
  records_t r;
  ASSERT_EQ(records(w, &r, err, sizeof err), 0);
  ASSERT_STR_EQ(r.v[0].key, "/n/web");
  records_free(&r);
  worker_free(w);
  unlink(mod);
  unlink(pol);
  rmdir(dir);
  free(mod);
  free(pol);
}

TEST(frames_refuse_what_does_not_add_up) {
  buf_t b;
  buf_init(&b);
  size_t off = wire_begin(&b, WIRE_RECORDS_OK);
  wire_num(&b, 42);
  wire_cstr(&b, "key");
  wire_str(&b, NULL, 0);
  wire_end(&b, off);
  const char *f;
  size_t n;
  ASSERT_EQ(wire_frame(&b, &f, &n), 1);
  wire_rd_t r;
  wire_rd_init(&r, f, n);
  ASSERT_EQ(wire_type(&r), WIRE_RECORDS_OK);
  ASSERT_EQ(wire_get_num(&r), 42);
  size_t len;
  ASSERT_STR_EQ(wire_get_str(&r, &len), "key");
  ASSERT_EQ(len, 3);
  ASSERT(wire_get_str(&r, &len) == NULL && !r.bad); /* absent */
  ASSERT(wire_get_str(&r, &len) == NULL && r.bad);  /* past the end */
  /* a string whose length runs past the frame */
  buf_t c;
  buf_init(&c);
  off = wire_begin(&c, WIRE_LOG);
  uint32_t big = 1000;
  buf_append(&c, &big, sizeof big);
  buf_append(&c, "abc", 4);
  wire_end(&c, off);
  ASSERT_EQ(wire_frame(&c, &f, &n), 1);
  wire_rd_init(&r, f, n);
  ASSERT_EQ(wire_type(&r), WIRE_LOG);
  ASSERT(wire_get_str(&r, NULL) == NULL && r.bad);
  /* a frame not all there yet; a length over the cap */
  buf_t d;
  buf_init(&d);
  buf_append(&d, b.data, b.len - 1);
  ASSERT_EQ(wire_frame(&d, &f, &n), 0);
  buf_reset(&d);
  uint32_t huge = WIRE_MAX_FRAME + 1;
  buf_append(&d, &huge, sizeof huge);
  ASSERT_EQ(wire_frame(&d, &f, &n), -1);
  buf_free(&b);
  buf_free(&c);
  buf_free(&d);
}

/* ---- pipelined updates (worker_update_start) ---- */

static uv_loop_t loop;

static worker_t *start_on_loop(const char *src, uint64_t limit_ms) {
  worker_opts_t o = {0};
  o.file = src ? "/tmp/register-test-policy.lua" : NULL;
  o.source = src;
  o.source_len = src ? strlen(src) : 0;
  o.host_ip = "10.0.0.1";
  o.hostname = "h";
  o.time_limit_ms = limit_ms;
  o.path = REGISTER_WORKER_PATH;
  o.log_level = LOG_ERROR;
  o.loop = &loop;
  char err[600];
  worker_t *w = worker_new(&o, err, sizeof err);
  if (!w) FAIL("worker_new: %s", err);
  return w;
}

/* What done() saw, in the order it was called. */
typedef struct {
  int n;
  char ids[80][2]; /* the first digit of each container's id */
  int have[80], cancelled[80];
  policy_reason_t reason[80];
  size_t nrecs[80];
  char key0[80][160];
} seen_t;

typedef struct {
  seen_t *seen;
  char id;
} upd_ud_t;

static void upd_done(void *ud, const worker_update_t *u) {
  upd_ud_t *x = ud;
  seen_t *s = x->seen;
  int i = s->n++;
  REGISTER_ASSERT(i < 80);
  s->ids[i][0] = x->id;
  s->ids[i][1] = '\0';
  s->cancelled[i] = u->cancelled;
  s->have[i] = u->have;
  s->reason[i] = u->reason;
  s->nrecs[i] = u->cancelled ? 0 : u->recs.n;
  snprintf(s->key0[i], sizeof s->key0[i], "%s",
           !u->cancelled && u->recs.n ? u->recs.v[0].key : "");
  if (!u->cancelled && u->have > 0) { /* the document comes back whole */
    const json_value_t *doc = worker_update_inspect(u);
    REGISTER_ASSERT(doc && json_get_str(doc, "Id")[0] == x->id);
  }
  free(x);
}

/* Starts the update of container `id` (as in records_of()). */
static void update_of(worker_t *w, char id, seen_t *seen) {
  char *text = xstrdup(inspect);
  char *p = strstr(text, "0123456789abcdef");
  memset(p, id, 64);
  char e[200];
  json_doc_t *d = json_parse(text, strlen(text), e, sizeof e);
  ASSERT(d);
  upd_ud_t *x = xcalloc(1, sizeof *x);
  x->seen = seen;
  x->id = id;
  worker_update_start(w, json_root(d), 0, upd_done, x);
  json_free(d); /* the worker keeps what it needs */
  free(text);
}

static void run_until(seen_t *s, int n) {
  uint64_t t0 = util_now_ms();
  while (s->n < n && util_now_ms() - t0 < 10000)
    uv_run(&loop, UV_RUN_ONCE);
  ASSERT_EQ(s->n, n);
}

static const char ids[] = "0123456789abcdef";

TEST(updates_are_pipelined_and_done_in_order_from_the_loop) {
  uv_loop_init(&loop);
  worker_t *w = start_on_loop(NULL, 1000);
  seen_t s = {0};
  for (int round = 0; round < 4; round++) /* 64: past the 32 sent at once */
    for (int i = 0; i < 16; i++)
      update_of(w, ids[i], &s);
  ASSERT_EQ(s.n, 0); /* never inside worker_update_start() */
  run_until(&s, 64);
  for (int i = 0; i < 64; i++) {
    ASSERT_EQ(s.ids[i][0], ids[i % 16]);
    ASSERT_EQ(s.have[i], 1);
    ASSERT_EQ(s.nrecs[i], 1);
    ASSERT_CONTAINS(s.key0[i], "/registered/10.0.0.1/team::web:1/");
  }
  worker_free(w);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

/* Eight updates in a line, of containers a..h; `bad` runs `code` first
 * (then all answer one record): bad's update fails with `reason`, every
 * other one is answered, in order, and a new worker took over.  Returns
 * how long the line took, in ms. */
static uint64_t one_pays(const char *code, char bad, uint64_t limit_ms,
                         policy_reason_t reason, worker_t **wp) {
  char *src = xasprintf("local cjson = require 'cjson' "
                        "return { records = function(c) "
                        "if c.id:sub(1, 1) == '%c' then %s end "
                        "return { ['/k/' .. c.id] = 'v' } end }",
                        bad, code);
  worker_t *w = start_on_loop(src, limit_ms);
  free(src);
  pid_t first = worker_pid(w);
  seen_t s = {0};
  const char order[] = "abcdefgh";
  uint64_t t0 = util_now_ms();
  for (int i = 0; i < 8; i++)
    update_of(w, order[i], &s);
  ASSERT_EQ(s.n, 0);
  run_until(&s, 8);
  uint64_t took = util_now_ms() - t0;
  for (int i = 0; i < 8; i++) {
    ASSERT_EQ(s.ids[i][0], order[i]);
    if (order[i] == bad) {
      ASSERT_EQ(s.have[i], -1);
      ASSERT_EQ(s.reason[i], reason);
    } else {
      ASSERT_EQ(s.have[i], 1);
      ASSERT_EQ(s.nrecs[i], 1);
    }
  }
  ASSERT(worker_pid(w) > 0 && worker_pid(w) != first);
  *wp = w;
  return took;
}

static void line_end(worker_t *w) {
  worker_free(w);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

/* The one that hangs is killed at its limit and costs its container
 * only: those sent after it go to a new worker, in their order. */
TEST(a_hang_in_the_pipeline_costs_only_its_container) {
  uv_loop_init(&loop);
  worker_t *w;
  uint64_t took =
      one_pays("string.rep('', 1 << 62)", 'e', 300, POLICY_ERR_TIMEOUT, &w);
  ASSERT(took >= 300 && took < 300 + WORKER_GRACE_MS + 1500);
  ASSERT(worker_quarantined(w,
                            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
                            "eeeeeeeeeeeeeeee"));
  line_end(w);
}

/* A crash (the C stack run out in cjson) in the middle of the line: the
 * container that ran it pays (reason crash), and the others, sent to the
 * same worker behind it, are answered by the next one. */
TEST(a_crash_in_the_pipeline_costs_only_its_container) {
  uv_loop_init(&loop);
  worker_t *w;
  one_pays("cjson.decode_max_depth(0x7fffffff) "
           "cjson.decode(string.rep('[', 1000000))",
           'c', 1000, POLICY_ERR_CRASH, &w);
  line_end(w);
}

/* Memory outside Lua's allocator (cjson's buffer) in the middle of the
 * line: that container pays (reason memory), the others do not. */
TEST(memory_in_the_pipeline_costs_only_its_container) {
  uv_loop_init(&loop);
  worker_t *w;
  uint64_t took = one_pays("local s = string.rep('x', 1 << 20) local t = {} "
                           "for i = 1, 60 do t[i] = s end "
                           "local u = {} for i = 1, 8 do u[i] = t end "
                           "cjson.encode(u)",
                           'c', 10000, POLICY_ERR_MEMORY, &w);
  ASSERT(took < 10000);
  line_end(w);
}

/* A synchronous call after updates: it waits for their replies, and their
 * done() still comes from the loop; worker_free() cancels those not
 * done. */
TEST(synchronous_calls_and_free_with_updates_on_their_way) {
  uv_loop_init(&loop);
  worker_t *w = start_on_loop(NULL, 1000);
  seen_t s = {0};
  for (int i = 0; i < 5; i++)
    update_of(w, ids[i], &s);
  records_t r;
  char err[600];
  ASSERT_EQ(records_of(w, "f", &r, err, sizeof err), 0);
  ASSERT_EQ(r.n, 1);
  records_free(&r);
  ASSERT_EQ(s.n, 0);
  run_until(&s, 5);
  for (int i = 0; i < 5; i++)
    ASSERT_EQ(s.have[i], 1);

  seen_t x = {0};
  for (int i = 0; i < 3; i++)
    update_of(w, ids[i], &x);
  worker_free(w);
  ASSERT_EQ(x.n, 3);
  for (int i = 0; i < 3; i++)
    ASSERT_EQ(x.cancelled[i], 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

/* worker_after()'s barrier: done from the loop, never inside the call,
 * after every update started before it and before those started after;
 * worker_drop(): a gone container's updates, sent or still waiting, are
 * done as cancelled, in their place; worker_free() cancels a barrier. */
static void after_done(void *ud, int cancelled) {
  seen_t *s = ud;
  int i = s->n++;
  REGISTER_ASSERT(i < 80);
  s->ids[i][0] = '!';
  s->ids[i][1] = '\0';
  s->cancelled[i] = cancelled;
}

TEST(barriers_and_drops_keep_the_order_from_the_loop) {
  uv_loop_init(&loop);
  worker_t *w = start_on_loop(NULL, 1000);
  seen_t s = {0};
  worker_after(w, after_done, &s); /* nothing before it */
  ASSERT_EQ(s.n, 0);
  run_until(&s, 1);
  ASSERT_EQ(s.ids[0][0], '!');
  ASSERT_EQ(s.cancelled[0], 0);

  seen_t t = {0};
  for (int i = 0; i < 48; i++) /* 32 sent at once, 16 waiting */
    update_of(w, ids[i % 16], &t);
  worker_after(w, after_done, &t);
  char a[65];
  memset(a, 'a', 64);
  a[64] = '\0';
  worker_drop(w, a);     /* at 10 and 26 (sent) and 42 (waiting) */
  update_of(w, 'a', &t); /* after the drop: not dropped */
  ASSERT_EQ(t.n, 0);
  run_until(&t, 50);
  for (int i = 0; i < 48; i++) {
    ASSERT_EQ(t.ids[i][0], ids[i % 16]);
    ASSERT_EQ(t.cancelled[i], ids[i % 16] == 'a');
    if (ids[i % 16] != 'a') ASSERT_EQ(t.have[i], 1);
  }
  ASSERT_EQ(t.ids[48][0], '!');
  ASSERT_EQ(t.cancelled[48], 0);
  ASSERT_EQ(t.ids[49][0], 'a');
  ASSERT_EQ(t.cancelled[49], 0);
  ASSERT_EQ(t.have[49], 1);

  seen_t x = {0};
  update_of(w, 'b', &x);
  worker_after(w, after_done, &x);
  worker_free(w);
  ASSERT_EQ(x.n, 2);
  ASSERT_EQ(x.ids[1][0], '!');
  ASSERT_EQ(x.cancelled[1], 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

/* A reload's commit: the old worker's updates are not waited for, though
 * each would run to its limit (it used to wait for every one, holding the
 * loop): each one on its way is told, in order, and cancelled when the old
 * worker goes; a barrier behind them moves to the fresh worker, done from
 * the loop and not cancelled. */
static void each_id(void *ud, const char *id) {
  seen_t *s = ud;
  int i = s->n++;
  REGISTER_ASSERT(i < 80);
  s->ids[i][0] = id[0];
  s->ids[i][1] = '\0';
}

TEST(a_reload_hands_over_the_updates_on_their_way_without_waiting) {
  uv_loop_init(&loop);
  worker_t *w = start_on_loop("return { records = function(c) "
                              "if c.id:sub(1, 1) ~= '0' then "
                              "string.rep('', 1 << 62) end "
                              "return { ['/k/' .. c.id] = 'v' } end }",
                              2000);
  seen_t s = {0};
  update_of(w, '0', &s);
  run_until(&s, 1); /* done under the old one */
  ASSERT_EQ(s.have[0], 1);
  for (int i = 1; i < 41; i++) /* 32 sent, 8 waiting; each would hang */
    update_of(w, ids[1 + (i - 1) % 15], &s);
  seen_t b = {0};
  worker_after(w, after_done, &b);
  worker_t *fresh = start_on_loop(NULL, 1000);
  seen_t h = {0};
  uint64_t t0 = util_now_ms();
  worker_hand_over(w, fresh, each_id, &h);
  ASSERT(util_now_ms() - t0 < 1000); /* no call's limit waited for */
  ASSERT_EQ(h.n, 40);
  for (int i = 0; i < 40; i++)
    ASSERT_EQ(h.ids[i][0], ids[1 + i % 15]);
  ASSERT_EQ(s.n, 1);
  worker_free(w);
  ASSERT_EQ(s.n, 41);
  for (int i = 1; i < 41; i++)
    ASSERT_EQ(s.cancelled[i], 1);
  ASSERT_EQ(b.n, 0); /* moved, not cancelled; never inside the call */
  run_until(&b, 1);
  ASSERT_EQ(b.ids[0][0], '!');
  ASSERT_EQ(b.cancelled[0], 0);
  seen_t f = {0}; /* the fresh one works on */
  update_of(fresh, 'e', &f);
  run_until(&f, 1);
  ASSERT_EQ(f.have[0], 1);
  worker_free(fresh);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

TEST_MAIN(
    TEST_ENTRY(default_schema_through_the_worker),
    TEST_ENTRY(a_hang_in_c_is_killed_within_the_limit),
    TEST_ENTRY(a_crash_costs_one_call),
    TEST_ENTRY(the_container_that_kills_it_waits_the_others_do_not),
    TEST_ENTRY(keeps_dying_backs_off),
    TEST_ENTRY(a_backoff_does_not_hold_the_containers_that_did_not_cause_it),
    TEST_ENTRY(memory_outside_lua_is_capped),
    TEST_ENTRY(environment_is_the_operators),
    TEST_ENTRY(require_is_served_by_the_daemon),
    TEST_ENTRY(frames_refuse_what_does_not_add_up),
    TEST_ENTRY(updates_are_pipelined_and_done_in_order_from_the_loop),
    TEST_ENTRY(a_hang_in_the_pipeline_costs_only_its_container),
    TEST_ENTRY(a_crash_in_the_pipeline_costs_only_its_container),
    TEST_ENTRY(memory_in_the_pipeline_costs_only_its_container),
    TEST_ENTRY(synchronous_calls_and_free_with_updates_on_their_way),
    TEST_ENTRY(barriers_and_drops_keep_the_order_from_the_loop),
    TEST_ENTRY(a_reload_hands_over_the_updates_on_their_way_without_waiting))

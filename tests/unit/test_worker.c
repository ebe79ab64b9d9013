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
  uint64_t t0 = util_now_ms();
  ASSERT_EQ(records_of(w, "c", &r, err, sizeof err), -1); /* at once */
  ASSERT(util_now_ms() - t0 < 100);
  ASSERT_CONTAINS(err, "restarting after 2 deaths in a row");
  ASSERT_EQ(worker_last_reason(w), POLICY_ERR_TIMEOUT);
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

TEST_MAIN(TEST_ENTRY(default_schema_through_the_worker),
          TEST_ENTRY(a_hang_in_c_is_killed_within_the_limit),
          TEST_ENTRY(a_crash_costs_one_call),
          TEST_ENTRY(the_container_that_kills_it_waits_the_others_do_not),
          TEST_ENTRY(keeps_dying_backs_off),
          TEST_ENTRY(memory_outside_lua_is_capped),
          TEST_ENTRY(environment_is_the_operators),
          TEST_ENTRY(require_is_served_by_the_daemon),
          TEST_ENTRY(frames_refuse_what_does_not_add_up))

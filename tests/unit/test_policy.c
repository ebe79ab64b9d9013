/* policy + container: inspect JSON -> Lua table, the default policy's exact
 * bytes, record validation, script errors, budget and memory cap. */
#include "json.h"
#include "policy.h"
#include "test.h"
#include "util.h"

#include <fcntl.h>
#include <unistd.h>

static uint64_t time_limit_ms; /* 0: the default */
static int render_mode;        /* load a renderer (policy_opts_t.render) */

static policy_t *load_limits(const char *src, long budget, size_t mem,
                             char *err, size_t n) {
  char path[] = "/tmp/register-test-policy-XXXXXX";
  int fd = mkstemp(path);
  ASSERT(fd >= 0);
  ASSERT(write(fd, src, strlen(src)) == (ssize_t)strlen(src));
  close(fd);
  policy_opts_t o = {0};
  o.file = path;
  o.host_ip = "10.0.0.1";
  o.hostname = "node1";
  o.budget = budget;
  o.mem_limit = mem;
  o.time_limit_ms = time_limit_ms;
  o.render = render_mode;
  policy_t *p = policy_new(&o, err, n);
  unlink(path);
  return p;
}

static policy_t *load(const char *src, char *err, size_t n) {
  return load_limits(src, 200000, 4u << 20, err, n);
}

static policy_t *load_ok(const char *src) {
  char err[600];
  policy_t *p = load(src, err, sizeof err);
  if (!p) FAIL("policy did not load: %s", err);
  return p;
}

static json_doc_t *inspect(const char *name) {
  size_t len;
  char *text = test_read(name, &len), err[200];
  json_doc_t *d = json_parse(text, len, err, sizeof err);
  free(text);
  if (!d) FAIL("%s: %s", name, err);
  /* docker inspect prints an array of one */
  return d;
}

static const json_value_t *first(json_doc_t *d) {
  const json_value_t *r = json_root(d);
  return r->type == JSON_ARRAY ? r->u.child : r;
}

static const char *host_port(const json_value_t *c, const char *port, int i) {
  const char *path[] = {"NetworkSettings", "Ports", port, NULL};
  const json_value_t *b = json_path(c, path)->u.child;
  while (i--)
    b = b->next;
  return json_get_str(b, "HostPort");
}

static const char *rec(const records_t *r, const char *key) {
  for (size_t i = 0; i < r->n; i++)
    if (strcmp(r->v[i].key, key) == 0) return r->v[i].value;
  return NULL;
}

static void run(policy_t *p, const json_value_t *c, records_t *out) {
  char err[600];
  if (policy_records(p, c, out, err, sizeof err) < 0) FAIL("records: %s", err);
}

TEST(default_policy_exact_bytes) {
  char err[300];
  policy_opts_t o = {0};
  o.host_ip = "10.0.0.1";
  o.hostname = "node1";
  policy_t *p = policy_new(&o, err, sizeof err);
  ASSERT(p);
  ASSERT_STR_EQ(policy_prefix(p), "/registered/10.0.0.1");

  json_doc_t *d = inspect("inspect/multi.json");
  const json_value_t *c = first(d);
  const char *id = json_get_str(c, "Id");
  records_t r;
  run(p, c, &r);
  ASSERT_EQ(r.n, 1);
  char key[200], want[1000];
  snprintf(key, sizeof key, "/registered/10.0.0.1/bbx/%s", id);
  snprintf(want, sizeof want,
           "[{\"container\":\"%s\",\"image\":\"bbx\",\"ip\":\"127.0.0.1\","
           "\"public_port\":\"5353\",\"private_port\":\"53\",\"port_type\":"
           "\"udp\"},{\"container\":\"%s\",\"image\":\"bbx\",\"ip\":"
           "\"127.0.0.1\",\"public_port\":\"%s\",\"private_port\":\"80\","
           "\"port_type\":\"tcp\"},{\"container\":\"%s\",\"image\":\"bbx\","
           "\"ip\":\"127.0.0.1\",\"public_port\":\"%s\",\"private_port\":"
           "\"9200\",\"port_type\":\"tcp\"}]",
           id, id, host_port(c, "80/tcp", 0), id, host_port(c, "9200/tcp", 0));
  ASSERT_STR_EQ(r.v[0].key, key);
  ASSERT_STR_EQ(r.v[0].value, want);
  records_free(&r);
  json_free(d);

  d = inspect("inspect/namespaced.json");
  c = first(d);
  id = json_get_str(c, "Id");
  run(p, c, &r);
  snprintf(key, sizeof key,
           "/registered/10.0.0.1/localhost:5000::team::web:1.2/%s", id);
  ASSERT_STR_EQ(r.v[0].key, key);
  ASSERT_CONTAINS(r.v[0].value, "\"image\":\"localhost:5000::team::web:1.2\"");
  records_free(&r);
  json_free(d);

  d = inspect("inspect/twobind.json");
  c = first(d);
  run(p, c, &r);
  ASSERT_EQ(r.n, 1);
  /* both bindings of 80/tcp, in Docker's binding order */
  char b0[300], b1[300];
  const char *path[] = {"NetworkSettings", "Ports", "80/tcp", NULL};
  const json_value_t *bind = json_path(c, path)->u.child;
  snprintf(b0, sizeof b0, "\"ip\":\"%s\",\"public_port\":\"%s\"",
           json_get_str(bind, "HostIp"), json_get_str(bind, "HostPort"));
  snprintf(b1, sizeof b1, "\"ip\":\"%s\",\"public_port\":\"%s\"",
           json_get_str(bind->next, "HostIp"),
           json_get_str(bind->next, "HostPort"));
  ASSERT(strstr(r.v[0].value, b0) < strstr(r.v[0].value, b1));
  records_free(&r);
  json_free(d);

  d = inspect("inspect/unpublished.json");
  run(p, first(d), &r);
  ASSERT_EQ(r.n, 0); /* exposed, not published: nothing */
  records_free(&r);
  json_free(d);
  policy_free(p);
}

TEST(container_table) {
  policy_t *p = load_ok(
      "local register = require 'register'\n"
      "return { records = function(c, host)\n"
      "  local nets = {}\n"
      "  for name, n in pairs(c.networks) do nets[#nets+1] = name .. '=' .. "
      "n.ip .. '/' .. n.gateway end\n"
      "  return {\n"
      "    ['/t/id'] = c.id, ['/t/name'] = c.name, ['/t/image'] = c.image,\n"
      "    ['/t/image_id'] = c.image_id,\n"
      "    ['/t/env'] = c.env.SERVICE_NAME .. '|' .. c.env.EMPTY .. '|' .. "
      "c.env.EQ,\n"
      "    ['/t/label'] = c.labels.team,\n"
      "    ['/t/ports'] = register.json.encode(c.ports, {'private_port', "
      "'proto'}),\n"
      "    ['/t/exposed'] = register.json.encode(c.exposed, {'private_port', "
      "'proto'}),\n"
      "    ['/t/nets'] = table.concat(nets, ','),\n"
      "    ['/t/state'] = tostring(c.state.running) .. ' ' .. c.state.status,\n"
      "    ['/t/inspect'] = c.inspect.Config.Hostname .. ' ' .. "
      "tostring(c.inspect.NetworkSettings.Ports['9200/tcp'][1].HostPort ~= "
      "nil) .. ' ' .. tostring(c.inspect.HostConfig.Links == register.null),\n"
      "    ['/t/host'] = host.ip .. ' ' .. host.hostname,\n"
      "  } end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  const json_value_t *c = first(d);
  records_t r;
  run(p, c, &r);
  ASSERT_STR_EQ(rec(&r, "/t/id"), json_get_str(c, "Id"));
  ASSERT_STR_EQ(rec(&r, "/t/name"), "web-1"); /* no leading '/' */
  ASSERT_STR_EQ(rec(&r, "/t/image"), "bbx");
  ASSERT_STR_EQ(rec(&r, "/t/image_id"), json_get_str(c, "Image"));
  ASSERT_STR_EQ(rec(&r, "/t/env"), "web||a=b");
  ASSERT_STR_EQ(rec(&r, "/t/label"), "core");
  char want[600];
  snprintf(want, sizeof want,
           "[{\"private_port\":\"53\",\"proto\":\"udp\",\"host_ip\":"
           "\"127.0.0.1\",\"host_port\":\"5353\"},{\"private_port\":\"80\","
           "\"proto\":\"tcp\",\"host_ip\":\"127.0.0.1\",\"host_port\":\"%s\"},"
           "{\"private_port\":\"9200\",\"proto\":\"tcp\",\"host_ip\":"
           "\"127.0.0.1\",\"host_port\":\"%s\"}]",
           host_port(c, "80/tcp", 0), host_port(c, "9200/tcp", 0));
  ASSERT_STR_EQ(rec(&r, "/t/ports"), want);
  ASSERT_STR_EQ(rec(&r, "/t/exposed"),
                "[{\"private_port\":\"53\",\"proto\":\"udp\"},{"
                "\"private_port\":\"80\",\"proto\":\"tcp\"},{\"private_port\":"
                "\"9200\",\"proto\":\"tcp\"}]");
  ASSERT_CONTAINS(rec(&r, "/t/nets"), "bridge=172.31.254.");
  ASSERT_STR_EQ(rec(&r, "/t/state"), "true running");
  char hn[100];
  snprintf(hn, sizeof hn, "%.12s true true", json_get_str(c, "Id"));
  ASSERT_STR_EQ(rec(&r, "/t/inspect"), hn);
  ASSERT_STR_EQ(rec(&r, "/t/host"), "10.0.0.1 node1");
  records_free(&r);
  json_free(d);
  policy_free(p);
}

/* Every field of the container and port tables reads without error (the
 * lists in the errors stay true); any other name is an error naming them. */
TEST(container_unknown_fields_are_errors) {
  policy_t *p = load_ok(
      "local cf = {'id', 'name', 'image', 'image_id', 'hostname', 'created',\n"
      "  'ports', 'labels', 'env', 'exposed', 'networks', 'state', 'inspect',\n"
      "  'checks', 'healthy'}\n"
      "local pf = {'private_port', 'proto', 'host_ip', 'host_port'}\n"
      "local function try(f) local ok, e = pcall(f) return ok and type(e) "
      "or e end\n"
      "return { records = function(c)\n"
      "  local out, p = {}, c.ports[1]\n"
      "  for _, f in ipairs(cf) do out['/c/' .. f] = try(function() return "
      "c[f] end) end\n"
      "  for _, f in ipairs(pf) do out['/p/' .. f] = try(function() return "
      "p[f] end) end\n"
      "  out['/c/bogus'] = try(function() return c.bogus end)\n"
      "  out['/p/public_port'] = try(function() return p.public_port end)\n"
      "  out['/c/1'] = try(function() return c[1] end)\n"
      "  out['/p/true'] = try(function() return p[true] end)\n"
      "  return out\n"
      "end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  records_t r;
  run(p, first(d), &r);
  static const char *const want[][2] = {
      {"/c/id", "string"},        {"/c/name", "string"},
      {"/c/image", "string"},     {"/c/image_id", "string"},
      {"/c/hostname", "string"},  {"/c/created", "string"},
      {"/c/ports", "table"},      {"/c/labels", "table"},
      {"/c/env", "table"},        {"/c/exposed", "table"},
      {"/c/networks", "table"},   {"/c/state", "table"},
      {"/c/inspect", "table"},    {"/c/checks", "table"},
      {"/c/healthy", "boolean"},  {"/p/private_port", "string"},
      {"/p/proto", "string"},     {"/p/host_ip", "string"},
      {"/p/host_port", "string"}, {"/c/1", "nil"},
      {"/p/true", "nil"}};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    ASSERT_STR_EQ(rec(&r, want[i][0]), want[i][1]);
  ASSERT_CONTAINS(rec(&r, "/c/bogus"),
                  ":10: unknown field bogus; the container has id, name, "
                  "image, image_id, hostname, created, ports, labels, env, "
                  "exposed, networks, state, inspect, checks, healthy");
  ASSERT_CONTAINS(rec(&r, "/p/public_port"),
                  ":11: unknown field public_port; the port has "
                  "private_port, proto, host_ip, host_port");
  records_free(&r);
  json_free(d);
  policy_free(p);
}

/* The port tables' metatable is the container's own: a __gc a script adds
 * to it (getmetatable) reaches no port table made afterwards, so no
 * finalizer, which would run beyond every limit, is ever installed. */
TEST(port_metatable_is_per_container) {
  policy_t *p = load_ok(
      "local n, hits, mt1 = 0, 0\n"
      "return { records = function(c)\n"
      "  n = n + 1\n"
      "  local mt = getmetatable(c.ports[1])\n"
      "  if n == 1 then mt1 = mt; mt.__gc = function() hits = hits + 1 end "
      "end\n"
      "  collectgarbage() collectgarbage()\n"
      "  return { ['/r'] = n .. ' ' .. hits .. ' ' .. "
      "tostring(rawequal(mt, mt1)) .. ' ' .. "
      "tostring(rawequal(getmetatable(c.ports[2]), mt)) }\n"
      "end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  records_t r;
  const char *want[] = {"1 0 true true", "2 0 false true", "3 0 false true"};
  for (int i = 0; i < 3; i++) {
    run(p, first(d), &r);
    ASSERT_STR_EQ(rec(&r, "/r"), want[i]);
    records_free(&r);
  }
  json_free(d);
  policy_free(p);
}

/* The host table is each call's own: a call that changed it changed what
 * every later call (for other containers) saw. */
TEST(host_table_is_per_call) {
  policy_t *p = load_ok(
      "return { records = function(c, host)\n"
      "  local seen = host.ip\n"
      "  host.ip = '../../evil'; host.extra = 1\n"
      "  return { ['/r'] = seen .. ' ' .. tostring(host.extra) }\n"
      "end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  records_t r;
  for (int i = 0; i < 2; i++) {
    run(p, first(d), &r);
    ASSERT_STR_EQ(rec(&r, "/r"), "10.0.0.1 1");
    records_free(&r);
  }
  json_free(d);
  policy_free(p);
}

TEST(json_encode_order_escaping_types) {
  policy_t *p = load_ok(
      "local j = require('register').json\n"
      "return { records = function(c)\n"
      "  return {\n"
      "    ['/a'] = j.encode({b=1, a='x/y', c={true,false}, d=j.array()}),\n"
      "    ['/b'] = j.encode({z=1, y=2, x=3}, {'y', 'z'}),\n"
      "    ['/c'] = j.encode({1.5, 2.0, -3, 'a\"\\n\\1'}),\n"
      "    ['/d'] = j.encode({}),\n"
      "    ['/e'] = j.encode(j.null),\n"
      "    ['/f'] = j.encode({[1]='a', [3]='c'}),\n"
      "    ['/g'] = {k='v', n=1},\n"
      "  } end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  records_t r;
  run(p, first(d), &r);
  ASSERT_STR_EQ(rec(&r, "/a"),
                "{\"a\":\"x/y\",\"b\":1,\"c\":[true,false],\"d\":[]}");
  ASSERT_STR_EQ(rec(&r, "/b"), "{\"y\":2,\"z\":1,\"x\":3}");
  ASSERT_STR_EQ(rec(&r, "/c"), "[1.5,2.0,-3,\"a\\\"\\n\\u0001\"]");
  ASSERT_STR_EQ(rec(&r, "/d"), "{}");
  ASSERT_STR_EQ(rec(&r, "/e"), "null");
  ASSERT_STR_EQ(rec(&r, "/f"), "{\"1\":\"a\",\"3\":\"c\"}"); /* sparse */
  ASSERT_STR_EQ(rec(&r, "/g"), "{\"k\":\"v\",\"n\":1}");     /* table value */
  records_free(&r);
  json_free(d);
  policy_free(p);
}

TEST(bad_records_are_skipped_the_rest_kept) {
  policy_t *p = load_ok(
      "return { records = function(c)\n"
      "  return { ['/ok'] = 'fine', ['relative'] = 'x', ['/a//b'] = 'x',\n"
      "           ['/a/../b'] = 'x', ['/trailing/'] = 'x', [42] = 'x',\n"
      "           ['/num'] = 7, ['/fn'] = print, ['/ctl\\n'] = 'x',\n"
      "           ['/cycle'] = setmetatable({}, {}) }\n"
      "  end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  records_t r;
  run(p, first(d), &r);
  ASSERT_EQ(r.n, 2); /* '/ok' and '/cycle' (an empty table: "{}") */
  ASSERT_STR_EQ(rec(&r, "/ok"), "fine");
  ASSERT_EQ(r.rejected, 8);
  records_free(&r);
  json_free(d);
  policy_free(p);

  char err[300];
  ASSERT_EQ(
      policy_check_key("/registered/1.2.3.4/img/abc", 27, err, sizeof err), 0);
  ASSERT_EQ(policy_check_key("/", 1, err, sizeof err), -1);
  ASSERT_EQ(policy_check_key("/a/./b", 6, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "\".\" or \"..\"");
}

/* stderr (the log) into a file while fn runs; the text, to free. */
static char *captured(void (*fn)(void *), void *ud) {
  char path[] = "/tmp/register-test-log-XXXXXX";
  int fd = mkstemp(path);
  ASSERT(fd >= 0);
  fflush(stderr);
  int saved = dup(2);
  ASSERT(saved >= 0 && dup2(fd, 2) == 2);
  fn(ud);
  fflush(stderr);
  ASSERT(dup2(saved, 2) == 2);
  close(saved);
  off_t len = lseek(fd, 0, SEEK_END);
  char *text = calloc(1, (size_t)len + 1);
  ASSERT(pread(fd, text, (size_t)len, 0) == (ssize_t)len);
  close(fd);
  unlink(path);
  return text;
}

static size_t count_of(const char *hay, const char *needle) {
  size_t n = 0;
  for (const char *h = strstr(hay, needle); h; h = strstr(h + 1, needle))
    n++;
  return n;
}

typedef struct {
  policy_t *p;
  const json_value_t *c;
  records_t r;
  int rc;
  char err[600];
} call_t;

static void call_records(void *ud) {
  call_t *k = ud;
  k->rc = policy_records(k->p, k->c, &k->r, k->err, sizeof k->err);
}

TEST(keys_and_values_must_be_utf8) {
  /* etcd's JSON APIs carry nothing else: such a key never converges */
  policy_t *p =
      load_ok("return { records = function(c)\n"
              "  return {\n"
              "    ['/ok/\\u{e9}/\\u{1f600}/\\u{10ffff}'] = 'caf\\u{e9}',\n"
              "    ['/bad/\\xff'] = 'x',              -- not UTF-8 at all\n"
              "    ['/overlong/\\xc0\\xaf'] = 'x',     -- '/' in two bytes\n"
              "    ['/overlong3/\\xe0\\x80\\xaf'] = 'x',\n"
              "    ['/surrogate/\\xed\\xa0\\x80'] = 'x',\n"
              "    ['/past-max/\\xf4\\x90\\x80\\x80'] = 'x',\n"
              "    ['/cut/\\xe2\\x82'] = 'x',\n"
              "    ['/lone/\\x80'] = 'x',\n"
              "    ['/value'] = 'a\\xffb',\n"
              "    ['/table-value'] = { s = '\\xed\\xbf\\xbf' },\n"
              "    ['/good-table'] = { s = '\\u{263a}' },\n"
              "  } end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  call_t k = {p, first(d), {0}, 0, ""};
  char *log = captured(call_records, &k);
  ASSERT_EQ(k.rc, 0);
  ASSERT_EQ(k.r.n, 2);
  ASSERT_STR_EQ(rec(&k.r, "/ok/\xc3\xa9/\xf0\x9f\x98\x80/\xf4\x8f\xbf\xbf"),
                "caf\xc3\xa9");
  ASSERT_STR_EQ(rec(&k.r, "/good-table"), "{\"s\":\"\xe2\x98\xba\"}");
  ASSERT_EQ(k.r.rejected, 9);
  /* one line per record, naming the container, the key made printable */
  ASSERT_CONTAINS(log, "container e48286c81ee8: key \"/bad/\\xff\": key is "
                       "not valid UTF-8 (byte 0xff at offset 5); record "
                       "skipped");
  ASSERT_CONTAINS(log, "key \"/overlong/\\xc0\\xaf\": key is not valid UTF-8");
  ASSERT_CONTAINS(log, "key \"/surrogate/\\xed\\xa0\\x80\": key is not valid");
  ASSERT_CONTAINS(log, "key \"/value\": value is not valid UTF-8 (byte 0xff "
                       "at offset 1)");
  ASSERT_CONTAINS(log, "key \"/table-value\": value is not valid UTF-8");
  ASSERT_EQ(count_of(log, "record skipped"), 9);
  free(log);
  records_free(&k.r);
  json_free(d);
  policy_free(p);

  char err[200];
  static const char *const bad[] = {"/a\xff",
                                    "/a\xc1\xbf",
                                    "/a\xe0\x9f\xbf",
                                    "/a\xed\xbf\xbf",
                                    "/a\xf0\x8f\xbf\xbf",
                                    "/a\xf5\x80\x80\x80",
                                    "/a\xf4\x90\x80\x80",
                                    "/a\xc3",
                                    "/a\xe2\x82",
                                    "/a\xbf"};
  for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
    ASSERT_EQ(policy_check_key(bad[i], strlen(bad[i]), err, sizeof err), -1);
    ASSERT_CONTAINS(err, "not valid UTF-8 (byte 0x");
    ASSERT_CONTAINS(err, "at offset 2)");
  }
  static const char *const good[] = {"/a\xc2\xa0",        "/a\xdf\xbf",
                                     "/a\xe0\xa0\x80",    "/a\xed\x9f\xbf",
                                     "/a\xee\x80\x80",    "/a\xf0\x90\x80\x80",
                                     "/a\xf4\x8f\xbf\xbf"};
  for (size_t i = 0; i < ARRAY_SIZE(good); i++)
    ASSERT_EQ(policy_check_key(good[i], strlen(good[i]), err, sizeof err), 0);

  /* valid UTF-8 that a reader does not see, or that changes what is seen:
   * C1 controls, the soft hyphen, zero-width characters, the line
   * separator, a right-to-left override, an isolate, the BOM */
  static const struct {
    const char *key, *cp;
  } hidden[] = {
      {"/a\xc2\x80", "U+0080"},     {"/a\xc2\x85", "U+0085"},
      {"/a\xc2\x9b", "U+009B"},     {"/a\xc2\xad", "U+00AD"},
      {"/a\xe2\x80\x8b", "U+200B"}, {"/a\xe2\x80\xa8", "U+2028"},
      {"/a\xe2\x80\xae", "U+202E"}, {"/a\xe2\x81\xa6", "U+2066"},
      {"/a\xef\xbb\xbf", "U+FEFF"}, {"/a\xd8\x9c", "U+061C"},
      {"/a\xe1\xa0\x8e", "U+180E"}, {"/a\xe3\x85\xa4", "U+3164"},
      {"/a\xef\xbf\xb9", "U+FFF9"}, {"/a\xf3\xa0\x80\x81", "U+E0001"}};
  for (size_t i = 0; i < ARRAY_SIZE(hidden); i++) {
    ASSERT_EQ(
        policy_check_key(hidden[i].key, strlen(hidden[i].key), err, sizeof err),
        -1);
    ASSERT_CONTAINS(err, "invisible or control character");
    ASSERT_CONTAINS(err, hidden[i].cp);
    ASSERT_CONTAINS(err, "at offset 2)");
  }
  /* their neighbours are fine: NBSP, U+2010 (a hyphen), U+2030, U+2070 */
  static const char *const near[] = {"/a\xc2\xa0", "/a\xe2\x80\x90",
                                     "/a\xe2\x80\xb0", "/a\xe2\x81\xb0"};
  for (size_t i = 0; i < ARRAY_SIZE(near); i++)
    ASSERT_EQ(policy_check_key(near[i], strlen(near[i]), err, sizeof err), 0);
}

TEST(records_caps_per_container) {
  /* each call returns what the next row of `calls` says: n entries with
   * keys /k/1.. (or k/1..: each rejected, with a log line) and values of
   * vlen bytes; building 250,000 of them takes a while under ASan */
  char err[600];
  time_limit_ms = 30000;
  policy_t *p = load_limits(
      "local calls = { {1000, 1}, {1001, 1}, {250000, 1, true},\n"
      "  {250000, 1}, {3, 340000}, {4, 340000}, {2, 1048576 - 10} }\n"
      "local i = 0\n"
      "return { records = function(c)\n"
      "  i = i + 1\n"
      "  local n, vlen, bad = table.unpack(calls[i])\n"
      "  local t, v = {}, ('v'):rep(vlen)\n"
      "  for k = 1, n do t[(bad and 'k/' or '/k/') .. k] = v end\n"
      "  return t\n"
      "end }\n",
      50000000, 64u << 20, err, sizeof err);
  time_limit_ms = 0;
  if (!p) FAIL("policy did not load: %s", err);
  json_doc_t *d = inspect("inspect/multi.json");
  call_t k = {p, first(d), {0}, 0, ""};
  /* the cap itself is fine */
  call_records(&k);
  ASSERT_EQ(k.rc, 0);
  ASSERT_EQ(k.r.n, POLICY_MAX_RECORDS);
  records_free(&k.r);
  /* one more fails the whole call, not one record */
  call_records(&k);
  ASSERT_EQ(k.rc, -1);
  ASSERT_EQ(k.r.n, 0);
  ASSERT_CONTAINS(k.err, "records() failed for container e48286c81ee8: it "
                         "returned more than 1000 keys (the cap per "
                         "container)");
  ASSERT_EQ(policy_last_reason(p), POLICY_ERR_ERROR);
  /* it is found while the table is read: 250,000 rejected keys make at
   * most 1000 log lines, not 250,000 */
  char *log = captured(call_records, &k);
  ASSERT_EQ(k.rc, -1);
  ASSERT_CONTAINS(k.err, "more than 1000 keys");
  ASSERT(count_of(log, "record skipped") <= POLICY_MAX_RECORDS);
  free(log);
  call_records(&k);
  ASSERT_EQ(k.rc, -1);
  ASSERT_CONTAINS(k.err, "more than 1000 keys");
  /* bytes: keys and values together */
  call_records(&k);
  ASSERT_EQ(k.rc, 0);
  ASSERT_EQ(k.r.n, 3);
  records_free(&k.r);
  call_records(&k);
  ASSERT_EQ(k.rc, -1);
  ASSERT_CONTAINS(k.err, "records() failed for container e48286c81ee8: it "
                         "returned more than 1048576 bytes of keys and values "
                         "(the cap per container)");
  call_records(&k);
  ASSERT_EQ(k.rc, -1);
  ASSERT_CONTAINS(k.err, "more than 1048576 bytes");
  /* and the state still works afterwards */
  ASSERT_EQ(policy_errors(p), 5);
  json_free(d);
  policy_free(p);
}

/* A stop in a coroutine stops the call: the script cannot swallow it
 * with resume's false or a pcall around a wrapped coroutine, and a
 * coroutine that a hook's call made (which loses its hook when that call
 * ends) runs under the budget when the script resumes or closes it later. */
TEST(coroutines_run_under_the_budget) {
  static const char *const swallowers[] = {
      "local ok = coroutine.resume(coroutine.create(function() "
      "while true do end end))\n",
      "local ok = pcall(coroutine.wrap(function() while true do end end))\n",
      "local co = coroutine.wrap(function() coroutine.yield(1) "
      "while true do end end)\n co() local ok = pcall(co)\n",
  };
  json_doc_t *d = inspect("inspect/multi.json");
  char err[600], src[600];
  records_t r;
  for (size_t i = 0; i < ARRAY_SIZE(swallowers); i++) {
    snprintf(src, sizeof src,
             "return { records = function(c)\n%s"
             "  return { ['/swallowed'] = tostring(ok) }\nend }\n",
             swallowers[i]);
    policy_t *p = load_ok(src);
    ASSERT_EQ(policy_records(p, first(d), &r, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "instruction budget of 200000 exceeded");
    ASSERT_EQ(policy_last_reason(p), POLICY_ERR_BUDGET);
    policy_free(p);
  }
  /* wrap keeps Lua's behaviour: values through, errors with the caller's
   * position */
  policy_t *p = load_ok(
      "return { records = function(c)\n"
      "  local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1)"
      " error('boom ' .. b) end)\n"
      "  local one = co(1)\n"
      "  local ok, e = pcall(co, 'x')\n"
      "  return { ['/w'] = one .. ' ' .. tostring(ok) .. ' ' .. e }\n"
      "end }\n");
  run(p, first(d), &r);
  ASSERT_CONTAINS(rec(&r, "/w"), "2 false ");
  ASSERT_CONTAINS(rec(&r, "/w"), ":2: boom x");
  records_free(&r);
  policy_free(p);

  /* a hook's coroutine kept by the script, resumed or closed by records()
   * after that call ended */
  static const char *const later[] = {
      "event = function(ev) kept = coroutine.running()\n"
      "  coroutine.yield()\n"
      "  for i = 1, 3e7 do end end,\n"
      "records = function(c) coroutine.resume(kept) return {} end }\n",
      "event = function(ev) kept = coroutine.running()\n"
      "  local x <close> = setmetatable({}, { __close = function()\n"
      "    for i = 1, 3e7 do end end })\n"
      "  coroutine.yield() end,\n"
      "records = function(c) coroutine.close(kept) return {} end }\n",
  };
  for (size_t i = 0; i < ARRAY_SIZE(later); i++) {
    snprintf(src, sizeof src, "return { %s", later[i]);
    p = load_ok(src);
    policy_event_t ev = {.type = "container", .action = "start"};
    policy_hook_event(p, &ev); /* yields outside luaio: dropped */
    ASSERT_EQ(policy_records(p, first(d), &r, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "instruction budget of 200000 exceeded");
    policy_free(p);
  }
  json_free(d);
}

TEST(script_errors_are_reported_not_fatal) {
  char err[600];
  /* load errors name the file and line */
  ASSERT(load("return {", err, sizeof err) == NULL);
  ASSERT_CONTAINS(err, ":1: unexpected symbol near <eof>");
  ASSERT(load("return 42", err, sizeof err) == NULL);
  ASSERT_CONTAINS(err, "must return a table, not number");
  ASSERT(load("return {}", err, sizeof err) == NULL);
  ASSERT_CONTAINS(err, "no records(container, host) function");
  ASSERT(load("return {records=print, prefix=function() return 'x' end}", err,
              sizeof err) == NULL);
  ASSERT_CONTAINS(err, "prefix() returned \"x\"");
  ASSERT(load("error({})", err, sizeof err) == NULL);
  ASSERT_CONTAINS(err, "error object is a table value");

  policy_t *p = load_ok("local n = 0\n"
                        "return { records = function(c)\n"
                        "  n = n + 1\n"
                        "  if n == 1 then error('boom') end\n"
                        "  if n == 2 then return 5 end\n"
                        "  if n == 3 then while true do end end\n"
                        "  if n == 4 then local t = {} for i = 1, 1e9 do "
                        "t[i] = ('x'):rep(100000) .. i end end\n"
                        "  return { ['/ok'] = 'after' }\n"
                        "end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  records_t r;
  ASSERT_EQ(policy_records(p, first(d), &r, err, sizeof err), -1);
  ASSERT_CONTAINS(err, ":4: boom");
  ASSERT_CONTAINS(policy_traceback(p), "stack traceback");
  ASSERT_EQ(policy_records(p, first(d), &r, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "returned a number");
  ASSERT_EQ(policy_records(p, first(d), &r, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "instruction budget");
  ASSERT_EQ(policy_records(p, first(d), &r, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "memory limit");
  /* and the state still works afterwards */
  run(p, first(d), &r);
  ASSERT_STR_EQ(rec(&r, "/ok"), "after");
  records_free(&r);
  json_free(d);
  policy_free(p);
}

TEST(inspect_is_lazy_and_only_valid_during_the_call) {
  policy_t *p = load_ok(
      "local kept\n"
      "return { records = function(c)\n"
      "  if not kept then\n"
      "    kept = c  -- never read its inspect during this call\n"
      "    return { ['/lazy'] = tostring(rawget(c, 'inspect') == nil) }\n"
      "  end\n"
      "  local ok, err = pcall(function() return kept.inspect end)\n"
      "  local a = c.inspect\n"
      "  return { ['/late'] = tostring(ok) .. ' ' .. tostring(err),\n"
      "           ['/now'] = tostring(rawequal(a, c.inspect)) .. ' ' .. "
      "a.Config.Image }\n"
      "end }\n");
  json_doc_t *d = inspect("inspect/multi.json");
  records_t r;
  run(p, first(d), &r);
  ASSERT_STR_EQ(rec(&r, "/lazy"), "true"); /* not built unless read */
  records_free(&r);
  json_free(d); /* the first call's document is gone */
  json_doc_t *d2 = inspect("inspect/multi.json");
  run(p, first(d2), &r);
  ASSERT_STR_EQ(rec(&r, "/now"), "true bbx"); /* built once, then a field */
  ASSERT_CONTAINS(rec(&r, "/late"), "false ");
  ASSERT_CONTAINS(rec(&r, "/late"),
                  "container.inspect is only available while records() runs");
  records_free(&r);
  json_free(d2);
  policy_free(p);
}

/* A render's budget grows with its keys (the shipped renderers ran out
 * past some 20,000 keys); its error says the budget, not "an endless
 * loop?".  A render with no key, and a policy call, keep the base. */
TEST(render_budget_grows_with_the_keys) {
  const char *src =
      "return { render = function(kv, ctx)\n"
      "  local n = 0\n"
      "  for _, k in ipairs(ctx.keys) do\n"
      "    for i = 1, 100 do n = n + #kv[k] end\n" /* ~400 per key */
      "  end\n"
      "  if kv['/p/loop'] then while true do end end\n"
      "  return tostring(n)\n"
      "end }\n";
  char err[600];
  render_mode = 1;
  policy_t *p = load_ok(src); /* the budget: 200000 */
  render_mode = 0;
  enum { N = 2000 }; /* ~800,000 instructions: four times the base */
  static policy_kv_t kv[N + 1];
  static char keys[N + 1][16];
  for (int i = 0; i < N; i++) {
    snprintf(keys[i], sizeof keys[i], "/p/k%05d", i);
    kv[i] = (policy_kv_t){keys[i], "v", strlen(keys[i]), 1};
  }
  policy_render_ctx_t ctx = {"/p", 1, "v3"};
  buf_t out;
  buf_init(&out);
  ASSERT_EQ(policy_render(p, kv, N, &ctx, &out, err, sizeof err), 0);
  ASSERT_STR_EQ(out.data, "200000");
  /* the loop: the budget it had, and why */
  kv[N] = (policy_kv_t){"/p/loop", "1", 7, 1};
  ASSERT(policy_render(p, kv, N + 1, &ctx, &out, err, sizeof err) < 0);
  ASSERT_CONTAINS(err, "instruction budget of 4202000 exceeded (200000 and "
                       "2000 per key for 2001 keys)");
  ASSERT(!strstr(err, "endless loop"));
  ASSERT(policy_render(p, kv + N, 1, &ctx, &out, err, sizeof err) < 0);
  ASSERT_CONTAINS(err, "(200000 and 2000 per key for 1 keys)");
  ASSERT(policy_render(p, NULL, 0, &ctx, &out, err, sizeof err) == 0);
  buf_free(&out);
  policy_free(p);
}

TEST_MAIN(TEST_ENTRY(default_policy_exact_bytes), TEST_ENTRY(container_table),
          TEST_ENTRY(container_unknown_fields_are_errors),
          TEST_ENTRY(port_metatable_is_per_container),
      TEST_ENTRY(host_table_is_per_call),
          TEST_ENTRY(inspect_is_lazy_and_only_valid_during_the_call),
          TEST_ENTRY(json_encode_order_escaping_types),
          TEST_ENTRY(bad_records_are_skipped_the_rest_kept),
          TEST_ENTRY(keys_and_values_must_be_utf8),
          TEST_ENTRY(records_caps_per_container),
          TEST_ENTRY(coroutines_run_under_the_budget),
          TEST_ENTRY(script_errors_are_reported_not_fatal),
          TEST_ENTRY(render_budget_grows_with_the_keys))

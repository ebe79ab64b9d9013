/* policy: the Lua state a policy runs in.  Every entry into Lua goes
 * through one protected-call helper (policy_pcall, or hook_resume for a
 * hook's coroutine) that installs a count hook: an instruction budget, a
 * wall-clock limit and a memory cap.  Once one of them is exceeded the
 * call is stopped: the hook then raises on every instruction of every
 * thread, so a script's own pcall, xpcall or coroutine cannot swallow it
 * (redis re-arms its hook the same way).  The script runs in the sandbox
 * (sandbox.c).  This file: the state, the limits, the protected call,
 * loading and records(); checks() is in policy_checks.c, the hooks in
 * policy_hooks.c. */
#include "policy_internal.h"
#include "container.h"
#include "list.h"
#include "log.h"
#include "luareg.h"
#include "sandbox.h"
#include "util.h"

#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_BUDGET 10000000L
/* A render's budget is the policy's and this many per key: the shipped
 * renderers spend about 470 per key of the default schema (measured at
 * 1,000 to 40,000 keys, one binding a key: haproxy.lua and nginx.lua),
 * so a few bindings per key fit and --policy-timeout is the real bound.
 * Before, every render over some 20,000 keys ran out. */
#define RENDER_BUDGET_PER_KEY 2000L
#define DEFAULT_MEM (64u << 20)
#define HOOK_EVERY 1000 /* instructions between two looks at the limits */
#define MAX_KEY POLICY_MAX_KEY
#define MAX_VALUE POLICY_MAX_VALUE
static const char *const reason_names[POLICY_ERR_REASONS] = {
    "error", "budget", "timeout", "memory", "sandbox", "crash"};

const char *policy_reason_name(policy_reason_t r) {
  return (unsigned)r < POLICY_ERR_REASONS ? reason_names[r] : "error";
}

/* ---- allocation with a cap (the state's memory limit) ---- */

static void where_now(policy_t *p);

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  policy_t *p = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    p->mem_used -= old;
    return NULL;
  }
  if (nsize > old && p->mem_used + (nsize - old) > p->mem_limit) {
    if (p->in_call) {
      /* refused again after the collection, or more than the cap itself
       * (some requests, such as a string buffer's, are not retried) */
      if (((p->fail_ptr == ptr && p->fail_osize == osize &&
            p->fail_nsize == nsize) ||
           nsize > p->mem_limit) &&
          !p->oom) {
        p->oom = 1;
        where_now(p); /* Lua raises at once, with no message handler */
      }
      p->fail_ptr = ptr;
      p->fail_osize = osize;
      p->fail_nsize = nsize;
    }
    return NULL; /* Lua collects and asks again, then raises */
  }
  void *q = realloc(ptr, nsize);
  if (!q) return NULL;
  p->mem_used = p->mem_used - old + nsize;
  if (nsize > old) p->fail_ptr = NULL, p->fail_osize = p->fail_nsize = 0;
  return q;
}

static int l_panic(lua_State *L) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
  log_error("policy: unprotected Lua error: %s", msg);
  abort(); /* never reached: every entry into Lua is protected */
}

/* ---- the limits, enforced from a count hook ---- */

static void where_of(lua_State *L, lua_Debug *ar, char *out, size_t n) {
  if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    snprintf(out, n, "%s:%d: ", ar->short_src, ar->currentline);
  else
    out[0] = '\0';
}

/* The innermost Lua line of the running thread, from the allocator: these
 * calls neither allocate nor raise. */
static void where_now(policy_t *p) {
  lua_Debug ar;
  for (int level = 0; p->running && lua_getstack(p->running, level, &ar);
       level++) {
    where_of(p->running, &ar, p->where, sizeof p->where);
    if (p->where[0]) return;
  }
}

static void count_hook(lua_State *L, lua_Debug *ar) {
  policy_t *p = *(policy_t **)lua_getextraspace(L);
  where_of(L, ar, p->where, sizeof p->where);
  if (!p->stop) {
    p->steps += lua_gethookcount(L);
    if (p->steps > p->budget)
      p->stop = POLICY_ERR_BUDGET;
    else if (uv_hrtime() > p->deadline_ns)
      p->stop = POLICY_ERR_TIMEOUT;
    else if (p->oom)
      p->stop = POLICY_ERR_MEMORY;
    if (!p->stop) {
      if (lua_gethookcount(L) != HOOK_EVERY) /* a thread stopped before */
        lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
      return;
    }
  }
  /* stopped: from now on every instruction of this thread raises, so the
   * error unwinds through any pcall the script wrapped around it */
  lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  if (p->stop == POLICY_ERR_BUDGET && p->budget_base)
    lua_pushfstring(
        L,
        "%sinstruction budget of %I exceeded (%I and %I per key "
        "for %I keys)",
        p->where, (lua_Integer)p->budget, (lua_Integer)p->budget_base,
        (lua_Integer)RENDER_BUDGET_PER_KEY, (lua_Integer)p->budget_keys);
  else if (p->stop == POLICY_ERR_BUDGET)
    lua_pushfstring(L, "%sinstruction budget of %I exceeded (an endless loop?)",
                    p->where, (lua_Integer)p->budget);
  else if (p->stop == POLICY_ERR_TIMEOUT)
    lua_pushfstring(L, "%stime limit of %I ms exceeded", p->where,
                    (lua_Integer)p->time_limit_ms);
  else
    lua_pushfstring(L, "%smemory limit of %I bytes reached", p->where,
                    (lua_Integer)p->mem_limit);
  lua_error(L);
}

/* Arms the limits for one call (or one resume) running on thread L. */
void policy_call_begin(policy_t *p, lua_State *L) {
  REGISTER_ASSERT(!p->in_call); /* calls never nest */
  p->in_call = 1;
  p->running = L;
  p->steps = 0;
  p->stop = 0;
  p->oom = 0;
  p->sandbox_hit = 0;
  p->where[0] = '\0';
  p->fail_ptr = NULL;
  p->fail_osize = p->fail_nsize = 0;
  p->deadline_ns = uv_hrtime() + p->time_limit_ms * 1000000u;
  lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* Disarms them; the reason a call that failed with status st failed. */
policy_reason_t policy_call_end(policy_t *p, lua_State *L, int st) {
  REGISTER_ASSERT(p->in_call && p->running == L); /* the call begun on L */
  lua_sethook(L, NULL, 0, 0);
  p->in_call = 0;
  p->running = NULL;
  policy_reason_t r = POLICY_ERR_ERROR;
  if (p->stop)
    r = (policy_reason_t)p->stop;
  else if (st == LUA_ERRMEM || p->oom)
    r = POLICY_ERR_MEMORY;
  else if (p->sandbox_hit)
    r = POLICY_ERR_SANDBOX;
  if (st != LUA_OK && st != LUA_YIELD) p->reason = r;
  if (r == POLICY_ERR_MEMORY && st != LUA_OK && st != LUA_YIELD)
    lua_gc(p->L, LUA_GCCOLLECT); /* give the cap back for the next call */
  return r;
}

/* The first line of the error at the top of L (never allocates). */
const char *policy_error_text(lua_State *L, int st) {
  if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
  return st == LUA_ERRMEM ? "not enough memory"
                          : "(error object is not a string)";
}

void policy_failure_text(policy_t *p, const char *msg, char *err,
                         size_t errlen) {
  if (p->reason == POLICY_ERR_MEMORY) /* Lua's message has no position */
    snprintf(err, errlen, "%smemory limit of %zu bytes reached", p->where,
             p->mem_limit);
  else {
    /* the first line; and the next when the first only says where
     * ("error loading module 'm' from file 'f':" and the reason below) */
    int n = (int)strcspn(msg, "\n");
    const char *next = msg[n] ? msg + n + 1 : NULL;
    if (next && n > 0 && msg[n - 1] == ':') {
      next += strspn(next, " \t");
      snprintf(err, errlen, "%.*s %.*s", n, msg, (int)strcspn(next, "\n"),
               next);
    } else {
      snprintf(err, errlen, "%.*s", n, msg);
    }
  }
}

/* ---- the one protected-call helper ---- */

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg =
        lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the function below nargs arguments on the main thread, under the
 * limits.  On failure: -1, the first line of the message in err, the
 * reason in p->reason (the caller counts it where the script is to
 * blame), the traceback kept in p->trace. */
int policy_pcall(policy_t *p, int nargs, int nres, char *err, size_t errlen) {
  lua_State *L = p->L;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  policy_call_begin(p, L);
  int st = lua_pcall(L, nargs, nres, base);
  if (st == LUA_OK && p->oom) { /* the cap was reached, and a pcall in the
                                   script caught it before the hook saw it:
                                   the call fails all the same */
    lua_pop(L, nres == LUA_MULTRET ? lua_gettop(L) - base : nres);
    lua_pushnil(L); /* the error: allocates nothing (the cap) */
    st = LUA_ERRMEM;
  }
  policy_call_end(p, L, st);
  lua_remove(L, base);
  if (st == LUA_OK) return 0;
  const char *msg = policy_error_text(L, st);
  buf_reset(&p->trace);
  buf_puts(&p->trace, msg);
  policy_failure_text(p, msg, err, errlen);
  lua_pop(L, 1);
  return -1;
}

void policy_count_failure(policy_t *p) {
  p->stats->errors[p->reason]++;
}

/* ---- keys ---- */

/* Characters a reader does not see, or that change what is seen around
 * them: C1 controls and the soft hyphen, the Arabic letter mark, the
 * Hangul and Mongolian fillers and separator, zero-width characters and
 * direction marks, the line and paragraph separators, bidi embeddings,
 * overrides and isolates, invisible operators, the BOM, the interlinear
 * annotation controls and the tag characters. */
static int hidden_cp(unsigned cp) {
  static const unsigned ranges[][2] = {
      {0x80, 0x9f},       {0xad, 0xad},     {0x61c, 0x61c},   {0x115f, 0x1160},
      {0x180e, 0x180e},   {0x200b, 0x200f}, {0x2028, 0x202e}, {0x2060, 0x206f},
      {0x3164, 0x3164},   {0xfeff, 0xfeff}, {0xffa0, 0xffa0}, {0xfff9, 0xfffb},
      {0xe0000, 0xe007f},
  };
  for (size_t i = 0; i < sizeof ranges / sizeof *ranges; i++)
    if (cp >= ranges[i][0] && cp <= ranges[i][1]) return 1;
  return 0;
}

int policy_check_key(const char *key, size_t len, char *err, size_t errlen) {
  if (len == 0 || key[0] != '/') {
    snprintf(err, errlen, "key is not absolute (must start with '/')");
    return -1;
  }
  if (len > MAX_KEY) {
    snprintf(err, errlen, "key is longer than %d bytes", MAX_KEY);
    return -1;
  }
  if (len > 1 && key[len - 1] == '/') {
    snprintf(err, errlen, "key ends with '/'");
    return -1;
  }
  if (len == 1) {
    snprintf(err, errlen, "key is the root \"/\"");
    return -1;
  }
  const char *seg = key + 1, *end = key + len;
  while (seg <= end) {
    const char *slash = memchr(seg, '/', (size_t)(end - seg));
    size_t n = slash ? (size_t)(slash - seg) : (size_t)(end - seg);
    if (n == 0) {
      snprintf(err, errlen, "key has an empty segment (\"//\")");
      return -1;
    }
    if ((n == 1 && seg[0] == '.') ||
        (n == 2 && seg[0] == '.' && seg[1] == '.')) {
      snprintf(err, errlen, "key has a \".\" or \"..\" segment");
      return -1;
    }
    if (!slash) break;
    seg = slash + 1;
  }
  for (size_t i = 0; i < len; i++) {
    if ((unsigned char)key[i] < 0x20 || key[i] == 0x7f) {
      snprintf(err, errlen, "key has a control character");
      return -1;
    }
  }
  size_t bad = util_utf8_bad_at(key, len);
  if (bad < len) {
    snprintf(err, errlen, "key is not valid UTF-8 (byte 0x%02x at offset %zu)",
             (unsigned char)key[bad], bad);
    return -1;
  }
  /* characters a reader of the key does not see, or that change what is
   * seen around them (hidden_cp) */
  for (size_t i = 0; i < len;) {
    const unsigned char *u = (const unsigned char *)key + i;
    size_t n = u[0] < 0x80 ? 1 : u[0] < 0xe0 ? 2 : u[0] < 0xf0 ? 3 : 4;
    unsigned cp =
        n == 1   ? u[0]
        : n == 2 ? (u[0] & 0x1fu) << 6 | (u[1] & 0x3fu)
        : n == 3 ? (u[0] & 0x0fu) << 12 | (u[1] & 0x3fu) << 6 | (u[2] & 0x3fu)
                 : (u[0] & 0x07u) << 18 | (u[1] & 0x3fu) << 12 |
                       (u[2] & 0x3fu) << 6 | (u[3] & 0x3fu);
    if (n > 1 && hidden_cp(cp)) {
      snprintf(err, errlen,
               "key has an invisible or control character (U+%04X at offset "
               "%zu)",
               cp, i);
      return -1;
    }
    i += n;
  }
  return 0;
}

static int record_cmp(const void *a, const void *b) {
  return strcmp(((const record_t *)a)->key, ((const record_t *)b)->key);
}

/* ---- loading ---- */

typedef struct {
  policy_t *p;
  const policy_opts_t *o;
} setup_t;

/* Runs inside a protected call (as lua.c's pmain): opens the sandbox and
 * the libraries, loads the script, and checks what it returned. */
/* luaio answered a request: only a hook can have made it, so the hooks
 * have registered where the answer goes. */
static void io_resume(void *ud, lua_State *co, luaio_push_fn push, void *data) {
  policy_t *p = ud;
  if (p->hooks_resume) p->hooks_resume(ud, co, push, data);
}

/* A renderer's chunk returned (on top): a table with render(), the
 * function itself, or nothing, with a global render().  ref_policy becomes
 * a table whose render is looked up at each call. */
static int setup_renderer(lua_State *L, policy_t *p) {
  p->render = 1;
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (lua_getglobal(L, "render") != LUA_TFUNCTION)
      return luaL_error(L, "a renderer must return a table with a "
                           "render(kv, ctx) function, or the function");
  }
  if (lua_isfunction(L, -1)) {
    lua_createtable(L, 0, 1);
    lua_insert(L, -2);
    lua_setfield(L, -2, "render");
  }
  if (!lua_istable(L, -1))
    return luaL_error(L,
                      "a renderer must return a table with a render(kv, "
                      "ctx) function, not %s",
                      luaL_typename(L, -1));
  if (lua_getfield(L, -1, "render") != LUA_TFUNCTION)
    return luaL_error(L, "the returned table has no render(kv, ctx) function");
  lua_pop(L, 1);
  p->ref_policy = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

void policy_push_host(lua_State *L, policy_t *p) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_host);
  lua_createtable(L, 0, 2);
  lua_getfield(L, -2, "ip");
  lua_setfield(L, -2, "ip");
  lua_getfield(L, -2, "hostname");
  lua_setfield(L, -2, "hostname");
  lua_remove(L, -2);
}

static int setup(lua_State *L) {
  setup_t *s = lua_touserdata(L, 1);
  policy_t *p = s->p;
  sandbox_open(L, p->dir, &p->sandbox_hit);
  luareg_open(L, p->mem_limit);
  p->ioctx = luaio_install(L, s->o->io, io_resume, p);

  lua_createtable(L, 0, 2);
  lua_pushstring(L, s->o->host_ip);
  lua_setfield(L, -2, "ip");
  lua_pushstring(L, s->o->hostname);
  lua_setfield(L, -2, "hostname");
  p->ref_host = luaL_ref(L, LUA_REGISTRYINDEX);

  /* a file's text read by someone else is named as the file would be */
  if (s->o->source && s->o->file) lua_pushfstring(L, "@%s", s->o->file);
  int rc =
      s->o->source
          ? luaL_loadbufferx(L, s->o->source, s->o->source_len,
                             s->o->file ? lua_tostring(L, -1) : "=source", "t")
      : s->o->file ? luaL_loadfilex(L, s->o->file, "t")
                   : luareg_load_embedded(L, "register.default");
  if (rc != LUA_OK) return lua_error(L);
  lua_call(L, 0, 1);
  if (s->o->render) return setup_renderer(L, p);
  if (!lua_istable(L, -1))
    return luaL_error(L, "the script must return a table, not %s",
                      luaL_typename(L, -1));
  if (lua_getfield(L, -1, "records") != LUA_TFUNCTION)
    return luaL_error(L, "the returned table has no records(container, "
                         "host) function");
  lua_pop(L, 1);
  int ct = lua_getfield(L, -1, "checks");
  if (ct != LUA_TNIL && ct != LUA_TFUNCTION)
    return luaL_error(L, "checks must be a function, not %s",
                      luaL_typename(L, -1));
  p->has_checks = ct == LUA_TFUNCTION;
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  p->ref_policy = luaL_ref(L, LUA_REGISTRYINDEX);
  static const char *const hooks[] = {"event", "changed"};
  int *refs[] = {&p->ref_event, &p->ref_changed};
  for (int i = 0; i < 2; i++) {
    int t = lua_getfield(L, -1, hooks[i]);
    if (t == LUA_TFUNCTION)
      *refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    else if (t != LUA_TNIL)
      return luaL_error(L, "%s must be a function, not %s", hooks[i],
                        luaL_typename(L, -1));
    else
      lua_pop(L, 1);
  }

  if (lua_getfield(L, -1, "prefix") == LUA_TFUNCTION) {
    policy_push_host(L, p);
    lua_call(L, 1, 1);
    if (!lua_isnil(L, -1)) {
      size_t len;
      const char *pre =
          lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
      char err[200];
      if (!pre) return luaL_error(L, "prefix() must return a string");
      if (policy_check_key(pre, len, err, sizeof err) < 0)
        return luaL_error(L, "prefix() returned \"%s\": %s", pre, err);
      p->prefix = xstrndup(pre, len);
    }
  } else if (!lua_isnil(L, -1)) {
    return luaL_error(L, "prefix must be a function");
  }
  return 0;
}

policy_t *policy_new(const policy_opts_t *o, char *err, size_t errlen) {
  policy_t *p = xcalloc(1, sizeof *p);
  p->name = xstrdup(o->file ? o->file : "default");
  if (o->file) p->dir = util_path_dir(o->file);
  p->budget = o->budget > 0 ? o->budget : DEFAULT_BUDGET;
  p->mem_limit = o->mem_limit ? o->mem_limit : DEFAULT_MEM;
  p->time_limit_ms =
      o->time_limit_ms ? o->time_limit_ms : POLICY_DEFAULT_TIME_LIMIT_MS;
  p->hook_limit_ms =
      o->hook_limit_ms ? o->hook_limit_ms : POLICY_DEFAULT_HOOK_LIMIT_MS;
  p->stats = o->stats ? o->stats : &p->own_stats;
  p->ref_policy = p->ref_host = LUA_NOREF;
  p->ref_event = p->ref_changed = LUA_NOREF;
  p->io = o->io;
  buf_init(&p->trace);
  list_init(&p->hooks);
  p->loop = o->loop;
  p->L = lua_newstate(l_alloc, p);
  if (!p->L) {
    snprintf(err, errlen, "cannot create a Lua state");
    policy_free(p);
    return NULL;
  }
  lua_atpanic(p->L, l_panic);
  *(policy_t **)lua_getextraspace(p->L) = p;
  lua_gc(p->L, LUA_GCGEN, 0, 0);

  setup_t s = {p, o};
  char why[400];
  lua_pushcfunction(p->L, setup);
  lua_pushlightuserdata(p->L, &s);
  if (policy_pcall(p, 1, 0, why, sizeof why) < 0) {
    policy_count_failure(p);
    snprintf(err, errlen, "policy %s: %s", p->name, why);
    log_debug("policy %s: %s", p->name, p->trace.data);
    policy_free(p);
    return NULL;
  }
  return p;
}

void policy_free(policy_t *p) {
  if (!p) return;
  if (p->L) luaio_cancel(p->io, p->L);
  if (p->hooks_free) p->hooks_free(p); /* their coroutines go with L */
  if (p->L) lua_close(p->L);
  free(p->name);
  free(p->dir);
  free(p->prefix);
  buf_free(&p->trace);
  free(p);
}

const char *policy_prefix(const policy_t *p) {
  return p->prefix;
}

const char *policy_name(const policy_t *p) {
  return p->name;
}

const char *policy_traceback(const policy_t *p) {
  return p->trace.data ? p->trace.data : "";
}

policy_reason_t policy_last_reason(const policy_t *p) {
  return p->reason;
}

/* ---- records ---- */

/* Pushes the box and the container table (two results), with
 * container.checks (the state of each check) and container.healthy. */
int policy_push_container(lua_State *L) {
  const policy_pushargs_t *a = lua_touserdata(L, 1);
  char err[200];
  if (container_push(L, a->inspect, NULL, err, sizeof err) < 0)
    return luaL_error(L, "%s", err);
  size_t n = a->checks ? a->checks->n : 0;
  int healthy = 1;
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    const policy_check_state_t *c = &a->checks->v[i];
    lua_createtable(L, 0, 5);
    lua_pushstring(L, c->port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, c->type);
    lua_setfield(L, -2, "type");
    lua_pushstring(L, c->state);
    lua_setfield(L, -2, "state");
    lua_pushstring(L, c->reason ? c->reason : "");
    lua_setfield(L, -2, "reason");
    if (c->target && *c->target) {
      lua_pushstring(L, c->target);
      lua_setfield(L, -2, "target");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    if (strcmp(c->state, "passing") != 0) healthy = 0;
  }
  lua_setfield(L, -2, "checks");
  lua_pushboolean(L, healthy);
  lua_setfield(L, -2, "healthy");
  lua_pushboolean(L, a->checks && a->checks->stopping);
  lua_setfield(L, -2, "stopping");
  return 2;
}

/* records(container, host), looked up now: a script may replace it, or
 * give its table an __index that raises. */
static int call_records(lua_State *L) {
  policy_t *p = *(policy_t **)lua_getextraspace(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_policy);
  if (lua_getfield(L, -1, "records") != LUA_TFUNCTION)
    return luaL_error(L, "records is a %s, not a function",
                      luaL_typename(L, -1));
  lua_pushvalue(L, 1);
  policy_push_host(L, p);
  lua_call(L, 2, 1);
  return 1;
}

/* Walks the table records() returned (argument 1) inside a protected call:
 * JSON-encoding a table value may raise.  Past a cap (POLICY_MAX_RECORDS
 * entries, POLICY_MAX_RECORD_BYTES of keys and values) it raises at once,
 * with the message in capped: the rest of the table is never read. */
typedef struct {
  policy_t *p;
  records_t *out;
  const char *id;
  char capped[160];
} collect_t;

/* One record rejected: logged (the key made printable) and counted. */
static void reject(collect_t *c, const char *key, size_t klen,
                   const char *why) {
  buf_t pk = {0}; /* the key, escaped and cut (util_clean_text) */
  util_clean_text(&pk, key, klen, 160, 0);
  log_error("policy %s: container %.12s: key \"%.*s\": %s; record skipped",
            c->p->name, c->id, (int)pk.len, pk.data ? pk.data : "", why);
  buf_free(&pk);
  c->out->rejected++;
}

static int collect(lua_State *L) {
  collect_t *c = lua_touserdata(L, 2);
  int t = 1;
  char err[200];
  size_t entries = 0, bytes = 0;
  lua_settop(L, 2);
  buf_t *enc = luareg_buffer(L); /* Lua owns it: an error leaks nothing */
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (++entries > POLICY_MAX_RECORDS) {
      snprintf(c->capped, sizeof c->capped,
               "it returned more than %d keys (the cap per container)",
               POLICY_MAX_RECORDS);
      return luaL_error(L, "%s", c->capped);
    }
    size_t klen = 0;
    const char *key =
        lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
    if (!key) {
      log_error("policy %s: container %.12s: a record key is a %s, not a "
                "string; record skipped",
                c->p->name, c->id, luaL_typename(L, -2));
      c->out->rejected++;
      lua_pop(L, 1);
      continue;
    }
    if (policy_check_key(key, klen, err, sizeof err) < 0) {
      reject(c, key, klen, err);
      lua_pop(L, 1);
      continue;
    }
    int vt = lua_type(L, -1);
    const char *val = NULL;
    size_t vlen = 0;
    if (vt == LUA_TSTRING) {
      val = lua_tolstring(L, -1, &vlen);
    } else if (vt == LUA_TTABLE) {
      buf_reset(enc);
      if (luareg_json_encode(L, -1, 0, enc, err, sizeof err) < 0) {
        reject(c, key, klen, err);
        lua_pop(L, 1);
        continue;
      }
      val = enc->data ? enc->data : "";
      vlen = enc->len;
    } else {
      snprintf(err, sizeof err, "value is a %s, not a string or table",
               luaL_typename(L, -1));
      reject(c, key, klen, err);
      lua_pop(L, 1);
      continue;
    }
    size_t bad;
    if (vlen > MAX_VALUE) {
      snprintf(err, sizeof err, "value of %zu bytes is over the %u byte limit",
               vlen, MAX_VALUE);
      reject(c, key, klen, err);
    } else if ((bad = util_utf8_bad_at(val, vlen)) < vlen) {
      /* etcd v2 and the v3 gateway return values in JSON too: one that is
       * not UTF-8 comes back changed, and never converges */
      snprintf(err, sizeof err,
               "value is not valid UTF-8 (byte 0x%02x at offset %zu)",
               (unsigned char)val[bad], bad);
      reject(c, key, klen, err);
    } else if ((bytes += klen + vlen) > POLICY_MAX_RECORD_BYTES) {
      snprintf(c->capped, sizeof c->capped,
               "it returned more than %u bytes of keys and values "
               "(the cap per container)",
               POLICY_MAX_RECORD_BYTES);
      return luaL_error(L, "%s", c->capped);
    } else {
      records_add(c->out, key, val, vlen);
    }
    lua_pop(L, 1);
  }
  buf_free(enc);
  return 0;
}

/* records() with the container table on top of the stack. */
static int records_run(policy_t *p, const char *id, void *ud, char *err,
                       size_t errlen) {
  records_t *out = ud;
  lua_State *L = p->L;
  char why[400];
  /* stack: box, container */
  lua_pushcfunction(L, call_records);
  lua_insert(L, -2);
  if (policy_pcall(p, 1, 1, why, sizeof why) < 0) {
    policy_count_failure(p);
    snprintf(err, errlen,
             "policy %s: records() failed for container %.12s: %s "
             "(reason: %s)",
             p->name, id, why, policy_reason_name(p->reason));
    log_debug("%s", p->trace.data);
    return -1;
  }
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1)) {
    snprintf(err, errlen,
             "policy %s: records() returned a %s for container "
             "%.12s, not a table or nil",
             p->name, luaL_typename(L, -1), id);
    p->reason = POLICY_ERR_ERROR;
    policy_count_failure(p);
    lua_pop(L, 1);
    return -1;
  }
  collect_t c = {p, out, id, ""};
  lua_pushcfunction(L, collect);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, &c);
  if (policy_pcall(p, 2, 0, why, sizeof why) < 0) {
    policy_count_failure(p);
    if (c.capped[0] && p->reason == POLICY_ERR_ERROR)
      snprintf(err, errlen,
               "policy %s: records() failed for container %.12s: %s "
               "(reason: %s)",
               p->name, id, c.capped, policy_reason_name(p->reason));
    else
      snprintf(err, errlen,
               "policy %s: records() failed for container %.12s: its "
               "result: %s (reason: %s)",
               p->name, id, why, policy_reason_name(p->reason));
    records_free(out);
    return -1;
  }
  if (out->n > 1) qsort(out->v, out->n, sizeof *out->v, record_cmp);
  return 0;
}

int policy_records(policy_t *p, const json_value_t *inspect, records_t *out,
                   char *err, size_t errlen) {
  return policy_records_checked(p, inspect, NULL, out, err, errlen);
}

int policy_with_container(policy_t *p, const json_value_t *inspect,
                          const policy_check_view_t *checks,
                          policy_container_fn fn, void *ud, char *err,
                          size_t errlen) {
  lua_State *L = p->L;
  const char *id = json_get_str(inspect, "Id");
  char why[400];
  int top = lua_gettop(L);
  policy_pushargs_t args = {inspect, checks};
  lua_pushcfunction(L, policy_push_container);
  lua_pushlightuserdata(L, &args);
  if (policy_pcall(p, 1, 2, why, sizeof why) < 0) {
    policy_count_failure(p);
    snprintf(err, errlen, "container %.12s: %s (reason: %s)", id ? id : "?",
             why, policy_reason_name(p->reason));
    return -1;
  }
  /* The box stays here, below everything the call does, until the
   * document is gone: nothing the script does can free it first. */
  container_doc_t *box = lua_touserdata(L, top + 1);
  int rc = fn(p, id ? id : "?", ud, err, errlen);
  box->doc = NULL;
  lua_settop(L, top);
  return rc;
}

int policy_records_checked(policy_t *p, const json_value_t *inspect,
                           const policy_check_view_t *checks, records_t *out,
                           char *err, size_t errlen) {
  records_init(out);
  return policy_with_container(p, inspect, checks, records_run, out, err,
                               errlen);
}

/* ---- renderers ---- */

typedef struct {
  const policy_kv_t *kv;
  size_t n;
  const policy_render_ctx_t *ctx;
} render_args_t;

/* render(kv, ctx), looked up now; its result on top. */
static int call_render(lua_State *L) {
  const render_args_t *a = lua_touserdata(L, 1);
  policy_t *p = *(policy_t **)lua_getextraspace(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_policy);
  if (lua_getfield(L, -1, "render") != LUA_TFUNCTION)
    return luaL_error(L, "render is a %s, not a function",
                      luaL_typename(L, -1));
  lua_createtable(L, 0, (int)(a->n < INT32_MAX ? a->n : 0));
  for (size_t i = 0; i < a->n; i++) {
    lua_pushlstring(L, a->kv[i].key, a->kv[i].klen);
    lua_pushlstring(L, a->kv[i].value, a->kv[i].vlen);
    lua_rawset(L, -3);
  }
  lua_createtable(L, 0, 5);
  lua_pushstring(L, a->ctx->prefix ? a->ctx->prefix : "");
  lua_setfield(L, -2, "prefix");
  lua_pushinteger(L, (lua_Integer)a->ctx->revision);
  lua_setfield(L, -2, "revision");
  lua_pushstring(L, a->ctx->api ? a->ctx->api : "");
  lua_setfield(L, -2, "api");
  lua_createtable(L, (int)(a->n < INT32_MAX ? a->n : 0), 0);
  for (size_t i = 0; i < a->n; i++) {
    lua_pushlstring(L, a->kv[i].key, a->kv[i].klen);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "keys");
  policy_push_host(L, p);
  lua_setfield(L, -2, "host");
  lua_call(L, 2, 1);
  return 1;
}

int policy_is_renderer(const policy_t *p) {
  return p->render;
}

int policy_render(policy_t *p, const policy_kv_t *kv, size_t n,
                  const policy_render_ctx_t *ctx, buf_t *out, char *err,
                  size_t errlen) {
  lua_State *L = p->L;
  char why[400];
  buf_reset(out);
  if (!p->render) {
    snprintf(err, errlen, "policy %s is not a renderer", p->name);
    return -1;
  }
  int top = lua_gettop(L);
  render_args_t a = {kv, n, ctx};
  lua_pushcfunction(L, call_render);
  lua_pushlightuserdata(L, &a);
  /* the budget grows with the keys, for this call only */
  long base = p->budget;
  if (n) {
    size_t most = (size_t)(LONG_MAX / 2 - base) / RENDER_BUDGET_PER_KEY;
    p->budget = base + (long)(n < most ? n : most) * RENDER_BUDGET_PER_KEY;
    p->budget_base = base;
    p->budget_keys = n;
  }
  int rc = policy_pcall(p, 1, 1, why, sizeof why);
  p->budget = base;
  p->budget_base = 0;
  p->budget_keys = 0;
  if (rc < 0) {
    policy_count_failure(p);
    snprintf(err, errlen, "renderer %s: render() failed: %s (reason: %s)",
             p->name, why, policy_reason_name(p->reason));
    log_debug("%s", p->trace.data);
    lua_settop(L, top);
    return -1;
  }
  size_t len = 0;
  const char *text =
      lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
  if (!text || len > POLICY_MAX_RENDER) {
    if (!text)
      snprintf(err, errlen,
               "renderer %s: render() returned a %s, not the file's text (a "
               "string)",
               p->name, luaL_typename(L, -1));
    else
      snprintf(err, errlen,
               "renderer %s: render() returned %zu bytes, over the %u byte "
               "limit",
               p->name, len, POLICY_MAX_RENDER);
    p->reason = POLICY_ERR_ERROR;
    policy_count_failure(p);
    lua_settop(L, top);
    return -1;
  }
  buf_append(out, text, len);
  lua_settop(L, top);
  return 0;
}

void policy_gc(policy_t *p) {
  lua_gc(p->L, LUA_GCCOLLECT);
}

unsigned long policy_errors(const policy_t *p) {
  unsigned long n = 0;
  for (int i = 0; i < POLICY_ERR_REASONS; i++)
    n += p->stats->errors[i];
  return n;
}

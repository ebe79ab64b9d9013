/* policy: the Lua state a policy runs in.  Every entry into Lua goes
 * through one protected-call helper (policy_pcall, or hook_resume for a
 * hook's coroutine) that installs a count hook: an instruction budget, a
 * wall-clock limit and a memory cap.  Once one of them is exceeded the
 * call is stopped: the hook then raises on every instruction of every
 * thread, so a script's own pcall, xpcall or coroutine cannot swallow it
 * (redis re-arms its hook the same way).  The script runs in the sandbox
 * (sandbox.c). */
#include "policy.h"
#include "container.h"
#include "list.h"
#include "log.h"
#include "luareg.h"
#include "sandbox.h"
#include "util.h"

#include <assert.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_BUDGET 10000000L
#define DEFAULT_MEM (64u << 20)
#define HOOK_EVERY 1000 /* instructions between two looks at the limits */
#define MAX_KEY 4096
#define MAX_VALUE (1u << 20)
#define MAX_HOOKS 64
#define SWEEP_MS 1000 /* how often hook calls are checked for their age */

/* A hook call in progress: a coroutine, possibly waiting for I/O. */
typedef struct hookco {
  lua_State *co;
  int ref;             /* anchors co in the registry */
  const char *name;    /* "event" or "changed" */
  uint64_t started_ms; /* for the limit on the call as a whole */
  list_t node;         /* on policy.hooks */
} hookco_t;

struct policy {
  lua_State *L;
  char *name; /* file name, or "default" */
  char *dir;  /* the file's directory (require), or NULL */
  char *prefix;
  int ref_policy; /* the table the script returned */
  int ref_host;
  int ref_event, ref_changed; /* optional hooks, or LUA_NOREF */
  int has_checks;             /* the table has a checks() function */

  /* limits */
  long budget;
  size_t mem_limit;
  uint64_t time_limit_ms, hook_limit_ms;

  /* the call in progress (in_call), and why it was stopped */
  int in_call;
  lua_State *running; /* the thread the call runs on */
  long steps;
  uint64_t deadline_ns;
  int stop;                    /* 0, or POLICY_ERR_BUDGET/TIMEOUT/MEMORY */
  int sandbox_hit;             /* a forbidden function was called */
  char where[LUA_IDSIZE + 16]; /* the last position the hook saw */

  /* memory: Lua retries a refused allocation once after a full
   * collection; the same request refused twice is out of memory */
  size_t mem_used;
  const void *fail_ptr;
  size_t fail_osize, fail_nsize;
  int oom;

  buf_t trace; /* traceback of the last failure */
  policy_reason_t reason;
  luaio_t *io;
  luaio_ctx_t *ioctx; /* anchored in the registry */
  list_t hooks;       /* hookco_t: hook calls alive */
  size_t nhooks;
  uv_timer_t *sweep; /* ends hook calls past their limit; NULL: no loop */
  policy_stats_t own_stats;
  policy_stats_t *stats; /* own_stats, or the caller's (kept over reloads) */
};

static const char *const reason_names[POLICY_ERR_REASONS] = {
    "error", "budget", "timeout", "memory", "sandbox"};

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
  if (p->stop == POLICY_ERR_BUDGET)
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
static void call_begin(policy_t *p, lua_State *L) {
  assert(!p->in_call); /* calls never nest */
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
static policy_reason_t call_end(policy_t *p, lua_State *L, int st) {
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
static const char *error_text(lua_State *L, int st) {
  if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
  return st == LUA_ERRMEM ? "not enough memory"
                          : "(error object is not a string)";
}

static void failure_text(policy_t *p, const char *msg, char *err,
                         size_t errlen) {
  if (p->reason == POLICY_ERR_MEMORY) /* Lua's message has no position */
    snprintf(err, errlen, "%smemory limit of %zu bytes reached", p->where,
             p->mem_limit);
  else
    snprintf(err, errlen, "%.*s", (int)strcspn(msg, "\n"), msg);
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
static int policy_pcall(policy_t *p, int nargs, int nres, char *err,
                        size_t errlen) {
  lua_State *L = p->L;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  call_begin(p, L);
  int st = lua_pcall(L, nargs, nres, base);
  call_end(p, L, st);
  lua_remove(L, base);
  if (st == LUA_OK) return 0;
  const char *msg = error_text(L, st);
  buf_reset(&p->trace);
  buf_puts(&p->trace, msg);
  failure_text(p, msg, err, errlen);
  lua_pop(L, 1);
  return -1;
}

static void count_failure(policy_t *p) {
  p->stats->errors[p->reason]++;
}

/* ---- keys ---- */

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
  return 0;
}

static int record_cmp(const void *a, const void *b) {
  return strcmp(((const record_t *)a)->key, ((const record_t *)b)->key);
}

/* ---- loading ---- */

static void io_resume(void *ud, lua_State *co, luaio_push_fn push, void *data);

typedef struct {
  policy_t *p;
  const policy_opts_t *o;
} setup_t;

/* Runs inside a protected call (as lua.c's pmain): opens the sandbox and
 * the libraries, loads the script, and checks what it returned. */
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

  int rc = s->o->source
               ? luaL_loadbufferx(L, s->o->source, s->o->source_len,
                                  s->o->file ? s->o->file : "=source", "t")
           : s->o->file ? luaL_loadfilex(L, s->o->file, "t")
                        : luareg_load_embedded(L, "register.default");
  if (rc != LUA_OK) return lua_error(L);
  lua_call(L, 0, 1);
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
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_host);
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

static void sweep_cb(uv_timer_t *t);

policy_t *policy_new(const policy_opts_t *o, char *err, size_t errlen) {
  policy_t *p = xcalloc(1, sizeof *p);
  p->name = xstrdup(o->file ? o->file : "default");
  if (o->file) {
    const char *slash = strrchr(o->file, '/');
    p->dir = slash ? xstrndup(o->file,
                              slash == o->file ? 1 : (size_t)(slash - o->file))
                   : xstrdup(".");
  }
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
  list_init(&p->hooks);
  buf_init(&p->trace);
  if (o->loop) {
    p->sweep = xcalloc(1, sizeof *p->sweep);
    uv_timer_init(o->loop, p->sweep);
    p->sweep->data = p;
  }
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
    count_failure(p);
    snprintf(err, errlen, "policy %s: %s", p->name, why);
    log_debug("policy %s: %s", p->name, p->trace.data);
    policy_free(p);
    return NULL;
  }
  return p;
}

static void sweep_closed(uv_handle_t *h) {
  free(h);
}

void policy_free(policy_t *p) {
  if (!p) return;
  if (p->L) luaio_cancel(p->io, p->L);
  list_t *n;
  while ((n = list_pop(&p->hooks))) /* their coroutines go with the state */
    free(list_entry(n, hookco_t, node));
  if (p->sweep) uv_close((uv_handle_t *)p->sweep, sweep_closed);
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

/* What push_container builds a container table from. */
typedef struct {
  const json_value_t *inspect;
  const policy_check_view_t *checks; /* NULL: none (healthy) */
} pushargs_t;

/* Pushes the box and the container table (two results), with
 * container.checks (the state of each check) and container.healthy. */
static int push_container(lua_State *L) {
  const pushargs_t *a = lua_touserdata(L, 1);
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
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_host);
  lua_call(L, 2, 1);
  return 1;
}

/* Walks the table records() returned (argument 1) inside a protected call:
 * JSON-encoding a table value may raise. */
typedef struct {
  policy_t *p;
  records_t *out;
  const char *id;
} collect_t;

static int collect(lua_State *L) {
  collect_t *c = lua_touserdata(L, 2);
  int t = 1;
  char err[200];
  lua_settop(L, 2);
  buf_t *enc = luareg_buffer(L); /* Lua owns it: an error leaks nothing */
  lua_pushnil(L);
  while (lua_next(L, t)) {
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
      log_error("policy %s: container %.12s: key \"%s\": %s; record skipped",
                c->p->name, c->id, key, err);
      c->out->rejected++;
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
        log_error("policy %s: container %.12s: key \"%s\": %s; record "
                  "skipped",
                  c->p->name, c->id, key, err);
        c->out->rejected++;
        lua_pop(L, 1);
        continue;
      }
      val = enc->data ? enc->data : "";
      vlen = enc->len;
    } else {
      log_error("policy %s: container %.12s: key \"%s\": value is a %s, not "
                "a string or table; record skipped",
                c->p->name, c->id, key, luaL_typename(L, -1));
      c->out->rejected++;
      lua_pop(L, 1);
      continue;
    }
    if (vlen > MAX_VALUE) {
      log_error("policy %s: container %.12s: key \"%s\": value of %zu bytes "
                "is over the %u byte limit; record skipped",
                c->p->name, c->id, key, vlen, MAX_VALUE);
      c->out->rejected++;
    } else {
      records_add(c->out, key, val, vlen);
    }
    lua_pop(L, 1);
  }
  buf_free(enc);
  return 0;
}

static int records_run(policy_t *p, const char *id, records_t *out, char *err,
                       size_t errlen) {
  lua_State *L = p->L;
  char why[400];
  /* stack: box, container */
  lua_pushcfunction(L, call_records);
  lua_insert(L, -2);
  if (policy_pcall(p, 1, 1, why, sizeof why) < 0) {
    count_failure(p);
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
    count_failure(p);
    lua_pop(L, 1);
    return -1;
  }
  collect_t c = {p, out, id};
  lua_pushcfunction(L, collect);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, &c);
  if (policy_pcall(p, 2, 0, why, sizeof why) < 0) {
    count_failure(p);
    snprintf(err, errlen,
             "policy %s: records() failed for container %.12s: its result: "
             "%s (reason: %s)",
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

int policy_records_checked(policy_t *p, const json_value_t *inspect,
                           const policy_check_view_t *checks, records_t *out,
                           char *err, size_t errlen) {
  lua_State *L = p->L;
  const char *id = json_get_str(inspect, "Id");
  char why[400];
  records_init(out);
  if (!id) id = "?";
  int top = lua_gettop(L);
  pushargs_t args = {inspect, checks};
  lua_pushcfunction(L, push_container);
  lua_pushlightuserdata(L, &args);
  if (policy_pcall(p, 1, 2, why, sizeof why) < 0) {
    count_failure(p);
    snprintf(err, errlen, "container %.12s: %s (reason: %s)", id, why,
             policy_reason_name(p->reason));
    return -1;
  }
  /* The box stays here, below everything the call does, until the
   * document is gone: nothing the script does can free it first. */
  container_doc_t *box = lua_touserdata(L, top + 1);
  int rc = records_run(p, id, out, err, errlen);
  box->doc = NULL;
  lua_settop(L, top);
  return rc;
}

/* ---- checks(container, host) ---- */

int policy_has_checks(const policy_t *p) {
  return p->has_checks;
}

void policy_check_view(const checks_t *ck, const char *id,
                       policy_check_state_t *buf, size_t cap,
                       policy_check_view_t *view) {
  size_t n = ck ? checks_count(ck, id) : 0;
  if (n > cap) n = cap;
  for (size_t i = 0; i < n; i++) {
    checks_info_t in;
    if (checks_get(ck, id, i, &in) < 0) {
      n = i;
      break;
    }
    buf[i].port = in.port;
    buf[i].type = in.type;
    buf[i].state = checks_state_name(in.state);
    buf[i].reason = in.reason;
    buf[i].target = in.target;
  }
  view->v = buf;
  view->n = n;
}

void policy_checks_free(policy_checks_t *pc) {
  for (size_t i = 0; i < pc->nstrs; i++)
    free(pc->strs[i]);
  free(pc->strs);
  free(pc->v);
  memset(pc, 0, sizeof *pc);
}

/* A copy of the string field k of the table at -1 (owned by pc), or NULL
 * when absent; raises on another type. */
static const char *check_str(lua_State *L, policy_checks_t *pc, size_t i,
                             const char *k) {
  int t = lua_getfield(L, -1, k);
  const char *v = NULL;
  if (t == LUA_TSTRING) {
    if (pc->nstrs == pc->scap) {
      pc->scap = pc->scap ? pc->scap * 2 : 8;
      pc->strs = xrealloc(pc->strs, pc->scap * sizeof *pc->strs);
    }
    v = pc->strs[pc->nstrs++] = xstrdup(lua_tostring(L, -1));
  } else if (t != LUA_TNIL) {
    luaL_error(L, "check %d: %s is a %s, not a string", (int)i + 1, k,
               luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return v;
}

/* The number field k (seconds, for durations: scale 1000), or dflt. */
static long check_num(lua_State *L, size_t i, const char *k, double scale,
                      long dflt) {
  int t = lua_getfield(L, -1, k);
  long v = dflt;
  if (t == LUA_TNUMBER) {
    double d = lua_tonumber(L, -1) * scale;
    if (!(d >= 0 && d <= 1e9))
      luaL_error(L, "check %d: %s is out of range", (int)i + 1, k);
    v = (long)(d + 0.5);
  } else if (t != LUA_TNIL) {
    luaL_error(L, "check %d: %s is a %s, not a number", (int)i + 1, k,
               luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return v;
}

typedef struct {
  policy_checks_t *out;
} checksargs_t;

/* checks(container, host) -> a list of check tables, converted into C
 * specs (strings copied: nothing points into Lua afterwards).  The specs
 * are the caller's (freed by it, also when this raises half way). */
static int call_checks(lua_State *L) {
  policy_t *p = *(policy_t **)lua_getextraspace(L);
  checksargs_t *a = lua_touserdata(L, 2);
  policy_checks_t *pc = a->out;
  lua_settop(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_policy);
  if (lua_getfield(L, -1, "checks") != LUA_TFUNCTION)
    return luaL_error(L, "checks is a %s, not a function",
                      luaL_typename(L, -1));
  lua_pushvalue(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_host);
  lua_call(L, 2, 1);
  if (lua_isnil(L, -1)) return 0;
  if (!lua_istable(L, -1))
    return luaL_error(L, "checks() returned a %s, not a list or nil",
                      luaL_typename(L, -1));
  int list = lua_gettop(L);
  size_t n = (size_t)lua_rawlen(L, list);
  if (n > POLICY_MAX_CHECKS)
    return luaL_error(L, "checks() returned %d checks; at most %d", (int)n,
                      POLICY_MAX_CHECKS);
  pc->v = xcalloc(n ? n : 1, sizeof *pc->v);
  for (size_t i = 0; i < n; i++) {
    if (lua_rawgeti(L, list, (lua_Integer)i + 1) != LUA_TTABLE)
      return luaL_error(L, "check %d is a %s, not a table", (int)i + 1,
                        luaL_typename(L, -1));
    checks_spec_t *c = &pc->v[i];
    checks_spec_init(c);
    c->port = check_str(L, pc, i, "port");
    const char *type = check_str(L, pc, i, "type");
    if (type && strcmp(type, "http") == 0)
      c->type = CHECKS_HTTP;
    else if (type && strcmp(type, "tcp") != 0)
      return luaL_error(L,
                        "check %d: type \"%s\" is not \"tcp\" or "
                        "\"http\"",
                        (int)i + 1, type);
    const char *path = check_str(L, pc, i, "path");
    const char *method = check_str(L, pc, i, "method");
    if (path) c->path = path;
    if (method) c->method = method;
    c->host = check_str(L, pc, i, "host");
    c->address = check_str(L, pc, i, "address");
    int st = lua_getfield(L, -1, "status");
    if (st == LUA_TNUMBER) {
      c->status_min = c->status_max = (int)lua_tointeger(L, -1);
    } else if (st == LUA_TTABLE) {
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      c->status_min = (int)lua_tointeger(L, -2);
      c->status_max =
          lua_isnil(L, -1) ? c->status_min : (int)lua_tointeger(L, -1);
      lua_pop(L, 2);
    } else if (st != LUA_TNIL) {
      return luaL_error(L, "check %d: status is a %s", (int)i + 1,
                        luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    c->interval_ms = check_num(L, i, "interval", 1000, c->interval_ms);
    c->timeout_ms = check_num(L, i, "timeout", 1000, c->timeout_ms);
    c->rise = (int)check_num(L, i, "rise", 1, c->rise);
    c->fall = (int)check_num(L, i, "fall", 1, c->fall);
    pc->n = i + 1;
    char why[200];
    if (checks_spec_validate(c, why, sizeof why) < 0)
      return luaL_error(L, "check %d (%s): %s", (int)i + 1,
                        c->port ? c->port : "no port", why);
    lua_pop(L, 1);
  }
  return 0;
}

int policy_checks(policy_t *p, const json_value_t *inspect,
                  policy_checks_t *out, char *err, size_t errlen) {
  lua_State *L = p->L;
  const char *id = json_get_str(inspect, "Id");
  char why[400];
  memset(out, 0, sizeof *out);
  if (!id) id = "?";
  if (!p->has_checks) return 0;
  int top = lua_gettop(L);
  pushargs_t args = {inspect, NULL};
  lua_pushcfunction(L, push_container);
  lua_pushlightuserdata(L, &args);
  if (policy_pcall(p, 1, 2, why, sizeof why) < 0) {
    count_failure(p);
    snprintf(err, errlen, "container %.12s: %s (reason: %s)", id, why,
             policy_reason_name(p->reason));
    return -1;
  }
  container_doc_t *box = lua_touserdata(L, top + 1);
  checksargs_t a = {out};
  lua_pushcfunction(L, call_checks);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, &a);
  int rc = policy_pcall(p, 2, 0, why, sizeof why);
  box->doc = NULL;
  lua_settop(L, top);
  if (rc < 0) {
    count_failure(p);
    snprintf(err, errlen,
             "policy %s: checks() failed for container %.12s: %s (reason: "
             "%s)",
             p->name, id, why, policy_reason_name(p->reason));
    policy_checks_free(out);
    return -1;
  }
  return 0;
}

/* ---- hooks: event(ev, host) and changed(op, key, value) ---- */

void policy_gc(policy_t *p) {
  lua_gc(p->L, LUA_GCCOLLECT);
}

int policy_has_hook(const policy_t *p, const char *name) {
  if (strcmp(name, "event") == 0) return p->ref_event != LUA_NOREF;
  if (strcmp(name, "changed") == 0) return p->ref_changed != LUA_NOREF;
  return 0;
}

unsigned long policy_hooks_dropped(const policy_t *p) {
  return p->stats->hooks_dropped;
}

unsigned long policy_errors(const policy_t *p) {
  unsigned long n = 0;
  for (int i = 0; i < POLICY_ERR_REASONS; i++)
    n += p->stats->errors[i];
  return n;
}

static void hook_end(policy_t *p, hookco_t *h) {
  list_remove(&h->node);
  p->nhooks--;
  luaL_unref(p->L, LUA_REGISTRYINDEX, h->ref);
  free(h);
  if (!p->nhooks && p->sweep) uv_timer_stop(p->sweep);
}

/* Builds the traceback of a failed coroutine (argument 1) on the main
 * thread, inside a protected call: it allocates. */
static int hook_traceback(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  const char *msg = lua_touserdata(L, 2); /* C memory, not Lua's */
  luaL_traceback(L, co, msg, 0);
  return 1;
}

static void hook_failed(policy_t *p, hookco_t *h, const char *msg) {
  count_failure(p);
  buf_reset(&p->trace);
  buf_puts(&p->trace, msg);
  log_error("policy %s: %s hook failed: %.*s (reason: %s)", p->name, h->name,
            (int)strcspn(msg, "\n"), msg, policy_reason_name(p->reason));
}

/* Runs (or continues) a hook's coroutine under the limits.  It ends,
 * fails (logged with its traceback), or waits for luaio. */
static void hook_resume(policy_t *p, hookco_t *h, int nargs) {
  lua_State *co = h->co;
  int nres = 0;
  call_begin(p, co);
  luaio_set_current(p->ioctx, co);
  int st = lua_resume(co, p->L, nargs, &nres);
  luaio_set_current(p->ioctx, NULL);
  call_end(p, co, st);
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (luaio_waiting(p->io, co)) return; /* resumed by io_resume */
    p->reason = POLICY_ERR_ERROR;
    hook_failed(p, h, "yielded outside register.http/etcd; call dropped");
  } else if (st != LUA_OK) {
    char msg[400];
    char err[300];
    failure_text(p, error_text(co, st), msg, sizeof msg);
    hook_failed(p, h, msg);
    /* the traceback allocates: built under protection, or skipped */
    lua_pushcfunction(p->L, hook_traceback);
    lua_rawgeti(p->L, LUA_REGISTRYINDEX, h->ref); /* co */
    lua_pushlightuserdata(p->L, msg);
    policy_reason_t r = p->reason;
    if (policy_pcall(p, 2, 1, err, sizeof err) == 0) {
      buf_reset(&p->trace);
      buf_puts(&p->trace, lua_tostring(p->L, -1));
      lua_pop(p->L, 1);
      log_debug("%s", p->trace.data);
    }
    p->reason = r;
  }
  hook_end(p, h);
}

/* The results of a hook's request are built on the main thread inside a
 * protected call (they allocate: a body may be megabytes), then moved to
 * the coroutine.  Upvalue-free: argument 1 is the pushctx_t. */
typedef struct {
  luaio_push_fn push;
  void *data;
} pushctx_t;

static int push_results(lua_State *L) {
  pushctx_t *c = lua_touserdata(L, 1);
  lua_settop(L, 0);
  return c->push(L, c->data);
}

static void io_resume(void *ud, lua_State *co, luaio_push_fn push, void *data) {
  policy_t *p = ud;
  hookco_t *h = NULL;
  list_t *it;
  list_foreach(it, &p->hooks) {
    if (list_entry(it, hookco_t, node)->co == co) {
      h = list_entry(it, hookco_t, node);
      break;
    }
  }
  if (!h) return; /* not ours any more */
  lua_State *L = p->L;
  int top = lua_gettop(L);
  pushctx_t c = {push, data};
  char err[300];
  lua_pushcfunction(L, push_results);
  lua_pushlightuserdata(L, &c);
  if (policy_pcall(p, 1, LUA_MULTRET, err, sizeof err) < 0) {
    hook_failed(p, h, err);
    hook_end(p, h);
    return;
  }
  int n = lua_gettop(L) - top;
  if (!lua_checkstack(co, n + LUA_MINSTACK)) {
    lua_settop(L, top);
    p->reason = POLICY_ERR_MEMORY;
    hook_failed(p, h, "no stack space for the results of its request");
    hook_end(p, h);
    return;
  }
  lua_xmove(L, co, n);
  hook_resume(p, h, n);
}

/* Ends hook calls that have run (waiting included) past their limit. */
static void sweep_cb(uv_timer_t *t) {
  policy_t *p = t->data;
  uint64_t now = util_now_ms();
  for (list_t *n = p->hooks.next, *next; n != &p->hooks; n = next) {
    next = n->next;
    hookco_t *h = list_entry(n, hookco_t, node);
    if (now - h->started_ms < p->hook_limit_ms) continue;
    luaio_cancel_co(p->io, h->co);
    p->reason = POLICY_ERR_TIMEOUT;
    char msg[120];
    snprintf(msg, sizeof msg,
             "the call ran longer than the %llu ms limit (--hook-timeout); "
             "its I/O was cancelled",
             (unsigned long long)p->hook_limit_ms);
    hook_failed(p, h, msg);
    hook_end(p, h);
  }
}

typedef struct {
  policy_t *p;
  int fn_ref;
  const policy_event_t *ev;
  const char *op, *key, *value;
  size_t vlen;
  int ref; /* the coroutine's */
  lua_State *co;
} hookargs_t;

/* Creates the coroutine and pushes the function and its arguments on it;
 * inside a protected call, since all of it allocates. */
static int hook_prepare(lua_State *L) {
  hookargs_t *a = lua_touserdata(L, 1);
  lua_State *co = lua_newthread(L);
  lua_rawgeti(co, LUA_REGISTRYINDEX, a->fn_ref);
  if (a->ev) {
    const policy_event_t *ev = a->ev;
    lua_createtable(co, 0, 8);
    const char *f[] = {"type", "action", "id", "image", "health_status"};
    const char *v[] = {ev->type, ev->action, ev->id, ev->image,
                       ev->health_status};
    for (int i = 0; i < 5; i++) {
      if (!v[i]) continue;
      lua_pushstring(co, v[i]);
      lua_setfield(co, -2, f[i]);
    }
    if (ev->attributes)
      container_push_json(co, ev->attributes);
    else
      lua_newtable(co);
    lua_setfield(co, -2, "attributes");
    lua_pushinteger(co, ev->time);
    lua_setfield(co, -2, "time");
    lua_pushinteger(co, ev->time_nano);
    lua_setfield(co, -2, "time_nano");
    lua_rawgeti(co, LUA_REGISTRYINDEX, a->p->ref_host);
  } else {
    lua_pushstring(co, a->op);
    lua_pushstring(co, a->key);
    if (a->value)
      lua_pushlstring(co, a->value, a->vlen);
    else
      lua_pushnil(co);
  }
  a->co = co;
  a->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* pops the thread */
  return 0;
}

static void hook_call(policy_t *p, hookargs_t *a, const char *name, int nargs) {
  if (p->nhooks >= MAX_HOOKS) {
    if (p->stats->hooks_dropped++ % 1000 == 0)
      log_warn("policy %s: %zu hook calls still running; %s hook call "
               "dropped (%lu so far)",
               p->name, p->nhooks, name, p->stats->hooks_dropped);
    return;
  }
  char err[300];
  a->p = p;
  a->ref = LUA_NOREF;
  lua_pushcfunction(p->L, hook_prepare);
  lua_pushlightuserdata(p->L, a);
  if (policy_pcall(p, 1, 0, err, sizeof err) < 0) {
    count_failure(p);
    log_error("policy %s: cannot start the %s hook: %s (reason: %s)", p->name,
              name, err, policy_reason_name(p->reason));
    return; /* the ref is taken last: nothing to release */
  }
  hookco_t *h = xcalloc(1, sizeof *h);
  h->co = a->co;
  h->ref = a->ref;
  h->name = name;
  h->started_ms = util_now_ms();
  list_insert_tail(&p->hooks, &h->node);
  p->nhooks++;
  if (p->sweep && p->nhooks == 1)
    uv_timer_start(p->sweep, sweep_cb, SWEEP_MS, SWEEP_MS);
  hook_resume(p, h, nargs);
}

void policy_hook_event(policy_t *p, const policy_event_t *ev) {
  if (p->ref_event == LUA_NOREF) return;
  hookargs_t a = {0};
  a.fn_ref = p->ref_event;
  a.ev = ev;
  hook_call(p, &a, "event", 2);
}

void policy_hook_changed(policy_t *p, const char *op, const char *key,
                         const char *value, size_t vlen) {
  if (p->ref_changed == LUA_NOREF) return;
  hookargs_t a = {0};
  a.fn_ref = p->ref_changed;
  a.op = op;
  a.key = key;
  a.value = value;
  a.vlen = vlen;
  hook_call(p, &a, "changed", 3);
}

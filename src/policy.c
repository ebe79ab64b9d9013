/* policy: the Lua state, protected calls, budget, memory cap, records. */
#include "policy.h"
#include "container.h"
#include "log.h"
#include "luareg.h"
#include "util.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_BUDGET 10000000L
#define DEFAULT_MEM (64u << 20)
#define HOOK_EVERY 1000
#define MAX_KEY 4096
#define MAX_VALUE (1u << 20)
#define MAX_HOOKS 64

/* A hook call in progress: a coroutine, possibly waiting for I/O. */
typedef struct hookco {
  lua_State *co;
  int ref;          /* anchors co in the registry */
  const char *name; /* "event" or "changed" */
  struct hookco *prev, *next;
} hookco_t;

struct policy {
  lua_State *L;
  char *name; /* file name, or "default" */
  char *prefix;
  int ref_policy; /* the table the script returned */
  int ref_host;
  int ref_event, ref_changed; /* optional hooks, or LUA_NOREF */
  long budget;
  long steps; /* instructions run in the current call (approx.) */
  size_t mem_used, mem_limit;
  buf_t trace; /* traceback of the last failure */
  luaio_t *io;
  hookco_t *hooks; /* hook calls alive */
  size_t nhooks;
  unsigned long dropped, errors;
};

/* ---- allocation with a cap (the state's memory limit) ---- */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  policy_t *p = ud;
  if (!ptr) osize = 0;
  if (nsize == 0) {
    free(ptr);
    p->mem_used -= osize;
    return NULL;
  }
  if (nsize > osize && p->mem_used + (nsize - osize) > p->mem_limit)
    return NULL; /* Lua raises "not enough memory" */
  void *q = realloc(ptr, nsize);
  if (!q) return NULL;
  p->mem_used = p->mem_used - osize + nsize;
  return q;
}

static int l_panic(lua_State *L) {
  log_error("policy: unprotected Lua error: %s", lua_tostring(L, -1));
  abort(); /* never reached: every entry into Lua is protected */
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

static void count_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  policy_t *p = *(policy_t **)lua_getextraspace(L);
  p->steps += HOOK_EVERY;
  if (p->steps > p->budget)
    luaL_error(L, "instruction budget of %d exceeded (an endless loop?)",
               (int)p->budget);
}

/* Calls the function below nargs arguments.  On failure: -1, the first
 * line of the message in err, the traceback kept in p->trace. */
static int pcall(policy_t *p, int nargs, int nres, char *err, size_t errlen) {
  lua_State *L = p->L;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  p->steps = 0;
  lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
  int st = lua_pcall(L, nargs, nres, base);
  lua_sethook(L, NULL, 0, 0);
  lua_remove(L, base);
  if (st == LUA_OK) return 0;
  const char *msg = lua_tostring(L, -1);
  if (!msg) msg = st == LUA_ERRMEM ? "not enough memory" : "unknown error";
  buf_reset(&p->trace);
  buf_puts(&p->trace, msg);
  if (st == LUA_ERRMEM)
    snprintf(err, errlen, "Lua memory limit of %zu bytes reached",
             p->mem_limit);
  else
    snprintf(err, errlen, "%.*s", (int)strcspn(msg, "\n"), msg);
  lua_pop(L, 1);
  return -1;
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

static void io_resume(void *ud, lua_State *co, int nargs);

/* ---- loading ---- */

typedef struct {
  policy_t *p;
  const policy_opts_t *o;
} setup_t;

/* Runs inside a protected call (as lua.c's pmain): loads the libraries and
 * the script, and checks what it returned. */
static int setup(lua_State *L) {
  setup_t *s = lua_touserdata(L, 1);
  policy_t *p = s->p;
  luareg_open(L);
  luaio_install(L, s->o->io, io_resume, p);

  lua_createtable(L, 0, 2);
  lua_pushstring(L, s->o->host_ip);
  lua_setfield(L, -2, "ip");
  lua_pushstring(L, s->o->hostname);
  lua_setfield(L, -2, "hostname");
  p->ref_host = luaL_ref(L, LUA_REGISTRYINDEX);

  int rc = s->o->file ? luaL_loadfilex(L, s->o->file, "t")
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
      const char *pre = lua_tolstring(L, -1, &len);
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
  p->budget = o->budget > 0 ? o->budget : DEFAULT_BUDGET;
  p->mem_limit = o->mem_limit ? o->mem_limit : DEFAULT_MEM;
  p->ref_policy = p->ref_host = LUA_NOREF;
  p->ref_event = p->ref_changed = LUA_NOREF;
  p->io = o->io;
  buf_init(&p->trace);
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
  if (pcall(p, 1, 0, why, sizeof why) < 0) {
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
  while (p->hooks) { /* their coroutines go with the state */
    hookco_t *h = p->hooks;
    p->hooks = h->next;
    free(h);
  }
  if (p->L) lua_close(p->L);
  free(p->name);
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

/* Builds the container table inside Lua's protection (it allocates). */
typedef struct {
  const json_value_t *inspect;
  container_doc_t *doc; /* set by container_push; cleared after the call */
} inspect_box_t;

static int push_container(lua_State *L) {
  inspect_box_t *b = lua_touserdata(L, 1);
  char err[200];
  if (container_push(L, b->inspect, &b->doc, err, sizeof err) < 0)
    return luaL_error(L, "%s", err);
  return 1;
}

/* Walks the table records() returned (at the top of the stack) inside a
 * protected call: JSON-encoding a table value may raise. */
typedef struct {
  policy_t *p;
  records_t *out;
  const char *id;
} collect_t;

static int collect(lua_State *L) {
  collect_t *c = lua_touserdata(L, 2);
  int t = 1;
  char err[200];
  buf_t enc;
  buf_init(&enc);
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
      buf_reset(&enc);
      if (luareg_json_encode(L, -1, 0, &enc, err, sizeof err) < 0) {
        log_error("policy %s: container %.12s: key \"%s\": %s; record "
                  "skipped",
                  c->p->name, c->id, key, err);
        c->out->rejected++;
        lua_pop(L, 1);
        continue;
      }
      val = enc.data ? enc.data : "";
      vlen = enc.len;
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
  buf_free(&enc);
  return 0;
}

static int records_call(policy_t *p, const char *id, records_t *out, char *err,
                        size_t errlen);

int policy_records(policy_t *p, const json_value_t *inspect, records_t *out,
                   char *err, size_t errlen) {
  lua_State *L = p->L;
  const char *id = json_get_str(inspect, "Id");
  char why[400];
  records_init(out);
  if (!id) id = "?";

  inspect_box_t box = {inspect, NULL};
  lua_pushcfunction(L, push_container);
  lua_pushlightuserdata(L, &box);
  if (pcall(p, 1, 1, why, sizeof why) < 0) {
    snprintf(err, errlen, "container %.12s: %s", id, why);
    return -1;
  }
  int rc = records_call(p, id, out, err, errlen);
  if (box.doc) box.doc->doc = NULL; /* the document dies with this call */
  return rc;
}

/* records(container, host) with the container table on the stack. */
static int records_call(policy_t *p, const char *id, records_t *out, char *err,
                        size_t errlen) {
  lua_State *L = p->L;
  char why[400];
  /* stack: container */
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_policy);
  lua_getfield(L, -1, "records");
  lua_remove(L, -2);
  lua_insert(L, -2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref_host);
  if (pcall(p, 2, 1, why, sizeof why) < 0) {
    snprintf(err, errlen,
             "policy %s: records() failed for container %.12s: "
             "%s",
             p->name, id, why);
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
    lua_pop(L, 1);
    return -1;
  }
  collect_t c = {p, out, id};
  lua_pushcfunction(L, collect);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, &c);
  if (pcall(p, 2, 0, why, sizeof why) < 0) {
    snprintf(err, errlen, "policy %s: container %.12s: %s", p->name, id, why);
    records_free(out);
    return -1;
  }
  if (out->n > 1) qsort(out->v, out->n, sizeof *out->v, record_cmp);
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
  return p->dropped;
}

unsigned long policy_errors(const policy_t *p) {
  return p->errors;
}

static void hook_end(policy_t *p, hookco_t *h) {
  if (h->prev)
    h->prev->next = h->next;
  else
    p->hooks = h->next;
  if (h->next) h->next->prev = h->prev;
  p->nhooks--;
  luaL_unref(p->L, LUA_REGISTRYINDEX, h->ref);
  free(h);
}

/* Runs (or continues) a hook's coroutine with the budget hook installed.
 * It ends, fails (logged with its traceback), or waits for luaio. */
static void hook_resume(policy_t *p, hookco_t *h, int nargs) {
  lua_State *co = h->co;
  int nres = 0;
  p->steps = 0;
  lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
  luaio_set_current(p->L, co);
  int st = lua_resume(co, p->L, nargs, &nres);
  luaio_set_current(p->L, NULL);
  lua_sethook(co, NULL, 0, 0);
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (luaio_waiting(p->io, co)) return; /* resumed by io_resume */
    p->errors++;
    log_error("policy %s: %s hook yielded outside register.http/etcd; "
              "call dropped",
              p->name, h->name);
  } else if (st != LUA_OK) {
    p->errors++;
    const char *msg = lua_tostring(co, -1);
    if (!msg) msg = st == LUA_ERRMEM ? "not enough memory" : "error object";
    luaL_traceback(p->L, co, msg, 0);
    buf_reset(&p->trace);
    buf_puts(&p->trace, lua_tostring(p->L, -1));
    lua_pop(p->L, 1);
    log_error("policy %s: %s hook failed: %.*s", p->name, h->name,
              (int)strcspn(msg, "\n"), msg);
    log_debug("%s", p->trace.data);
  }
  hook_end(p, h);
}

static void io_resume(void *ud, lua_State *co, int nargs) {
  policy_t *p = ud;
  for (hookco_t *h = p->hooks; h; h = h->next) {
    if (h->co == co) {
      hook_resume(p, h, nargs);
      return;
    }
  }
  lua_pop(co, nargs); /* not ours any more */
}

typedef struct {
  policy_t *p;
  int fn_ref;
  const policy_event_t *ev;
  const char *op, *key, *value;
  size_t vlen;
  hookco_t *h;
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
    const char *f[] = {"type", "action", "id", "image"};
    const char *v[] = {ev->type, ev->action, ev->id, ev->image};
    for (int i = 0; i < 4; i++) {
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
  hookco_t *h = xcalloc(1, sizeof *h);
  h->co = co;
  h->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* pops the thread */
  a->h = h;
  return 0;
}

static void hook_call(policy_t *p, hookargs_t *a, const char *name, int nargs) {
  if (p->nhooks >= MAX_HOOKS) {
    if (p->dropped++ % 1000 == 0)
      log_warn("policy %s: %zu hook calls still running; %s hook call "
               "dropped (%lu so far)",
               p->name, p->nhooks, name, p->dropped);
    return;
  }
  char err[300];
  a->p = p;
  lua_pushcfunction(p->L, hook_prepare);
  lua_pushlightuserdata(p->L, a);
  if (pcall(p, 1, 0, err, sizeof err) < 0) {
    p->errors++;
    log_error("policy %s: cannot start the %s hook: %s", p->name, name, err);
    if (a->h) {
      luaL_unref(p->L, LUA_REGISTRYINDEX, a->h->ref);
      free(a->h);
    }
    return;
  }
  hookco_t *h = a->h;
  h->name = name;
  h->next = p->hooks;
  if (p->hooks) p->hooks->prev = h;
  p->hooks = h;
  p->nhooks++;
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

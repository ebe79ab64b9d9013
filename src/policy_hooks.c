/* policy_hooks: the optional event(ev, host) and changed(op, key, value)
 * hooks, each call in a coroutine of its own that may wait for luaio;
 * each run under the per-call limits, each call as a whole under
 * hook_limit_ms (a sweep timer), at most MAX_HOOKS alive. */
#include "container.h"
#include "log.h"
#include "policy_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sweep_closed(uv_handle_t *h) {
  free(h);
}

/* policy_free() calls it (registered by hooks_attach()). */
static void hooks_free(policy_t *p) {
  list_t *n;
  while ((n = list_pop(&p->hooks)))
    free(list_entry(n, hookco_t, node));
  if (p->sweep) uv_close((uv_handle_t *)p->sweep, sweep_closed);
  p->sweep = NULL;
}

static void hooks_io_resume(void *ud, lua_State *co, luaio_push_fn push,
                            void *data);

/* The first hook call of a policy: its sweep timer, and the two functions
 * policy.c calls back (the seam is one-way: policy.c knows nothing of this
 * file, only what it registered). */
static void hooks_attach(policy_t *p) {
  if (p->hooks_free) return;
  p->hooks_free = hooks_free;
  p->hooks_resume = hooks_io_resume;
  if (!p->loop) return;
  p->sweep = xcalloc(1, sizeof *p->sweep);
  uv_timer_init(p->loop, p->sweep);
  p->sweep->data = p;
}

int policy_has_hook(const policy_t *p, const char *name) {
  if (strcmp(name, "event") == 0) return p->ref_event != LUA_NOREF;
  if (strcmp(name, "changed") == 0) return p->ref_changed != LUA_NOREF;
  return 0;
}

unsigned long policy_hooks_dropped(const policy_t *p) {
  return p->stats->hooks_dropped;
}

static void hook_end(policy_t *p, hookco_t *h) {
  REGISTER_ASSERT(p->nhooks > 0 && !h->resuming); /* alive, counted, once */
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
  policy_count_failure(p);
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
  REGISTER_ASSERT(!h->resuming); /* a coroutine runs once at a time */
  policy_call_begin(p, co);
  luaio_set_current(p->ioctx, co);
  h->resuming = 1;
  int st = lua_resume(co, p->L, nargs, &nres);
  h->resuming = 0;
  luaio_set_current(p->ioctx, NULL);
  if (st == LUA_OK && p->oom) { /* the cap, caught by a pcall: a failure */
    lua_pop(co, nres);
    nres = 0;
    lua_pushnil(co); /* the error: allocates nothing (the cap) */
    st = LUA_ERRMEM;
  }
  policy_call_end(p, co, st);
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (luaio_waiting(p->io, co)) return; /* resumed by policy_io_resume */
    p->reason = POLICY_ERR_ERROR;
    hook_failed(p, h, "yielded outside register.http/etcd; call dropped");
  } else if (st != LUA_OK) {
    char msg[400];
    char err[300];
    policy_failure_text(p, policy_error_text(co, st), msg, sizeof msg);
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

/* luaio's answer to a hook's request (through policy.c's resume). */
static void hooks_io_resume(void *ud, lua_State *co, luaio_push_fn push,
                            void *data) {
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
  /* an answer comes from the loop, never inside the resume that asked */
  REGISTER_ASSERT(!h->resuming);
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

size_t policy_hooks_alive(const policy_t *p) {
  return p->nhooks;
}

void policy_hooks_sweep(policy_t *p) {
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

static void sweep_cb(uv_timer_t *t) {
  policy_hooks_sweep(t->data);
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
    policy_push_host(co, a->p);
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
  hooks_attach(p);
  a->p = p;
  a->ref = LUA_NOREF;
  lua_pushcfunction(p->L, hook_prepare);
  lua_pushlightuserdata(p->L, a);
  if (policy_pcall(p, 1, 0, err, sizeof err) < 0) {
    policy_count_failure(p);
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

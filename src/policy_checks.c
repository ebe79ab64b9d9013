/* policy_checks: a policy's checks(container, host), converted into the
 * specs the checks room runs. */
#include "container.h"
#include "policy_internal.h"

#include <stdlib.h>
#include <string.h>

int policy_has_checks(const policy_t *p) {
  return p->has_checks;
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
    /* milliseconds are cut, not rounded: 99.5 ms is under the 100 ms
     * floor, not at it (the millionth is for seconds that binary
     * fractions cannot hold: 0.1 s is 100 ms) */
    v = scale > 1 ? (long)(d + 1e-6) : (long)(d + 0.5);
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

/* A status code as the policy gave it, or 0 (refused by checks_spec) when
 * it is not an integer within 100-599: 2^32 + 200 is not 200. */
static int status_code(lua_State *L, int idx) {
  int isint = 0;
  lua_Integer v = lua_tointegerx(L, idx, &isint);
  return isint && v >= 100 && v <= 599 ? (int)v : 0;
}

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
  policy_push_host(L, p);
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
      c->status_min = c->status_max = status_code(L, -1);
    } else if (st == LUA_TTABLE) {
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      c->status_min = status_code(L, -2);
      c->status_max = lua_isnil(L, -1) ? c->status_min : status_code(L, -1);
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

/* checks() with the container table on top of the stack. */
static int checks_fn(policy_t *p, const char *id, void *ud, char *err,
                     size_t errlen) {
  policy_checks_t *out = ud;
  /* policy_with_container() hands over the container table on top */
  REGISTER_ASSERT(lua_type(p->L, -1) == LUA_TTABLE);
  char why[400];
  checksargs_t a = {out};
  lua_pushcfunction(p->L, call_checks);
  lua_insert(p->L, -2);
  lua_pushlightuserdata(p->L, &a);
  if (policy_pcall(p, 2, 0, why, sizeof why) == 0) return 0;
  policy_count_failure(p);
  snprintf(err, errlen,
           "policy %s: checks() failed for container %.12s: %s (reason: %s)",
           p->name, id, why, policy_reason_name(p->reason));
  policy_checks_free(out);
  return -1;
}

int policy_checks(policy_t *p, const json_value_t *inspect,
                  policy_checks_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  if (!p->has_checks) return 0;
  return policy_with_container(p, inspect, NULL, checks_fn, out, err, errlen);
}

/* sandbox: an allow-list environment for policies (see include/sandbox.h). */
#include "sandbox.h"
#include "luareg.h"

#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

/* ---- stubs for what a policy may not call ---- */

/* upvalues: the name, the hit flag (light userdata) */
static int sandbox_forbidden(lua_State *L) {
  int *hit = lua_touserdata(L, lua_upvalueindex(2));
  if (hit) *hit = 1;
  return luaL_error(L, "%s is not available in a policy (sandbox)",
                    lua_tostring(L, lua_upvalueindex(1)));
}

static void push_stub(lua_State *L, const char *name, int *hit) {
  lua_pushstring(L, name);
  lua_pushlightuserdata(L, hit);
  lua_pushcclosure(L, sandbox_forbidden, 2);
}

/* t[field] = a stub named "lib.field" (or "field" when lib is NULL), for
 * the table at the top of the stack. */
static void set_stubs(lua_State *L, const char *lib, const char *const *fields,
                      int *hit) {
  for (const char *const *f = fields; *f; f++) {
    if (lib)
      lua_pushfstring(L, "%s.%s", lib, *f);
    else
      lua_pushstring(L, *f);
    push_stub(L, lua_tostring(L, -1), hit);
    lua_setfield(L, -3, *f);
    lua_pop(L, 1);
  }
}

/* Raises the sandbox error for a use of an allowed function. */
static int sandbox_refuse(lua_State *L, const char *what) {
  int *hit = lua_touserdata(L, lua_upvalueindex(2));
  if (hit) *hit = 1;
  return luaL_error(L, "%s is not available in a policy (sandbox)", what);
}

/* ---- wrappers: upvalue 1 is Lua's own function, 2 the hit flag ---- */

/* load(chunk [, name [, mode [, env]]]): text only. */
static int sandbox_load(lua_State *L) {
  int n = lua_gettop(L);
  const char *mode = luaL_optstring(L, 3, "t");
  if (strchr(mode, 'b'))
    return sandbox_refuse(L, "load of binary chunks (mode \"b\")");
  size_t len;
  const char *s =
      lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
  if (s && len > 0 && s[0] == LUA_SIGNATURE[0])
    return sandbox_refuse(L, "load of binary chunks");
  if (n < 3) lua_settop(L, 3); /* env (4) stays "none" when not given */
  lua_pushliteral(L, "t");
  lua_replace(L, 3);
  if (n < 3) n = 3;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* setmetatable(t, mt): no __gc.  Finalizers run with hooks off, where no
 * budget could stop them. */
static int sandbox_setmetatable(lua_State *L) {
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    int t = lua_rawget(L, 2);
    lua_pop(L, 1);
    if (t != LUA_TNIL)
      return sandbox_refuse(L, "a __gc metamethod (finalizer)");
  }
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

/* collectgarbage([opt [, arg]]): only what leaves the collector as it is. */
static int sandbox_collectgarbage(lua_State *L) {
  static const char *const allowed[] = {"collect", "count", "step", "isrunning",
                                        NULL};
  const char *opt = luaL_optstring(L, 1, "collect");
  int ok = 0;
  for (const char *const *a = allowed; *a; a++)
    if (strcmp(opt, *a) == 0) ok = 1;
  if (!ok) {
    lua_pushfstring(L, "collectgarbage(\"%s\")", opt);
    return sandbox_refuse(L, lua_tostring(L, -1));
  }
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* xpcall(f, msgh, ...) as pcall, with msgh called after the error has
 * unwound.  Lua runs a message handler before unwinding, and when the
 * error came from the count hook (a stopped call), with hooks still off:
 * a handler that loops would never be stopped.  Run afterwards, it is
 * under the budget like any code (and a stopped call stops it at once).
 * The continuation keeps yields (a hook's I/O) working through it. */
static int sandbox_xpcall_finish(lua_State *L, int status, lua_KContext ctx) {
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushvalue(L, 2); /* msgh */
    lua_insert(L, -2);
    lua_call(L, 1, 1);
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)ctx; /* true and the results */
}

static int sandbox_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushboolean(L, 1); /* the first result */
  lua_pushvalue(L, 1);   /* the function */
  lua_rotate(L, 3, 2);   /* both below the function's arguments */
  int st = lua_pcallk(L, n - 2, LUA_MULTRET, 0, 2, sandbox_xpcall_finish);
  return sandbox_xpcall_finish(L, st, 2);
}

/* ---- coroutines run under the caller's count hook ----
 *
 * A hook is per thread.  A coroutine made by the script inherits the
 * hook of the thread that made it, but one made from C (a hook call's)
 * loses its hook when that call ends: resumed later by the script, it
 * would run with no budget.  So coroutine.resume and coroutine.close (whose
 * __close handlers run on the coroutine) give the coroutine the running
 * thread's hook first; and a hook that the coroutine tightened (the count
 * hook stopping the call sets a count of 1) comes back to the caller, so
 * that a stop cannot be swallowed by resume's false. */

static void hook_to(lua_State *from, lua_State *to) {
  if (to == from) return;
  lua_sethook(to, lua_gethook(from), lua_gethookmask(from),
              lua_gethookcount(from));
}

static void hook_back(lua_State *co, lua_State *L) {
  if (co == L || lua_gethook(co) != lua_gethook(L) ||
      !(lua_gethookmask(co) & LUA_MASKCOUNT))
    return;
  if (!(lua_gethookmask(L) & LUA_MASKCOUNT) ||
      lua_gethookcount(co) < lua_gethookcount(L))
    lua_sethook(L, lua_gethook(co), lua_gethookmask(L) | LUA_MASKCOUNT,
                lua_gethookcount(co));
}

/* coroutine.resume(co, ...) and coroutine.close(co): upvalue 1 is Lua's. */
static int sandbox_co_call(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  hook_to(L, co);
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  hook_back(co, L);
  return lua_gettop(L);
}

/* coroutine.wrap(f): the thread it makes inherits the running hook; what
 * it tightens comes back, as for resume.  Lua's wrap function, called
 * through here, keeps its behaviour: errors propagate, with the caller's
 * position (which auxwrap would take from this C function). */
static int sandbox_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(2));
  hook_to(L, co);
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  int st = lua_pcall(L, n, LUA_MULTRET, 0);
  hook_back(co, L);
  if (st != LUA_OK) {
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return lua_gettop(L);
}

static int sandbox_wrap(lua_State *L) {
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 1, 1); /* Lua's wrap: a C closure over the new thread */
  if (!lua_getupvalue(L, -1, 1) || !lua_isthread(L, -1))
    return luaL_error(L, "coroutine.wrap: no thread (sandbox)");
  lua_pushcclosure(L, sandbox_wrapped, 2);
  return 1;
}

static void wrap(lua_State *L, const char *name, lua_CFunction fn, int *hit) {
  lua_getfield(L, -1, name);
  lua_pushlightuserdata(L, hit);
  lua_pushcclosure(L, fn, 2);
  lua_setfield(L, -2, name);
}

/* ---- require ---- */

/* package.searchers entry: the modules compiled into the binary. */
static int sandbox_search_embedded(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  int rc = luareg_load_embedded(L, name);
  if (rc == -1) {
    lua_pushfstring(L, "no embedded module '%s'", name);
    return 1;
  }
  if (rc != LUA_OK) return lua_error(L);
  lua_pushstring(L, name);
  return 2;
}

static sandbox_reader_fn module_reader;

void sandbox_set_reader(sandbox_reader_fn fn) {
  module_reader = fn;
}

/* package.searchers entry: DIR/a/b.lua for "a.b" (upvalue 1: DIR); read by
 * the reader when one is set. */
static int sandbox_search_dir(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  int ok = len > 0 && len <= 200 && name[0] != '.' && name[len - 1] != '.';
  for (size_t i = 0; ok && i < len; i++) {
    char c = name[i];
    ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '-' ||
         (c == '.' && name[i + 1] != '.');
  }
  if (!ok) {
    lua_pushfstring(L,
                    "'%s' is not a module name for the policy's "
                    "directory (letters, digits, '_', '-', '.')",
                    name);
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < len; i++)
    luaL_addchar(&b, name[i] == '.' ? '/' : name[i]);
  luaL_addstring(&b, ".lua");
  luaL_pushresult(&b); /* the path under DIR */
  lua_pushfstring(L, "%s/%s", lua_tostring(L, lua_upvalueindex(1)),
                  lua_tostring(L, -1));
  const char *path = lua_tostring(L, -1);
  int rc;
  if (module_reader) {
    size_t n = 0;
    const char *text = module_reader(L, lua_tostring(L, -2), &n);
    if (!text) {
      lua_pushfstring(L, "no file '%s'", path);
      return 1;
    }
    lua_pushfstring(L, "@%s", path);
    rc = luaL_loadbufferx(L, text, n, lua_tostring(L, -1), "t");
  } else {
    rc = luaL_loadfilex(L, path, "t");
  }
  if (rc == LUA_ERRFILE) {
    lua_pushfstring(L, "no file '%s'", path);
    return 1;
  }
  if (rc != LUA_OK)
    return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s",
                      name, path, lua_tostring(L, -1));
  lua_pushstring(L, path); /* the loader's second argument */
  return 2;
}

/* ---- the environment ---- */

static const char *const io_names[] = {"close",   "flush",  "input", "lines",
                                       "open",    "output", "popen", "read",
                                       "tmpfile", "type",   "write", NULL};
static const char *const debug_names[] = {
    "debug",          "gethook",     "getinfo",      "getlocal",
    "getmetatable",   "getregistry", "getupvalue",   "getuservalue",
    "sethook",        "setlocal",    "setmetatable", "setupvalue",
    "setuservalue",   "traceback",   "upvalueid",    "upvaluejoin",
    "setcstacklimit", NULL};
static const char *const os_forbidden[] = {
    "execute", "exit", "remove", "rename", "tmpname", "setlocale", NULL};
static const char *const os_allowed[] = {"time",   "date",     "clock",
                                         "getenv", "difftime", NULL};

/* A library table of stubs, as global `name` and package.loaded[name]. */
static void stub_library(lua_State *L, const char *name,
                         const char *const *fields, int *hit) {
  lua_newtable(L);
  set_stubs(L, name, fields, hit);
  lua_pushvalue(L, -1);
  lua_setglobal(L, name);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_insert(L, -2);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

void sandbox_open(lua_State *L, const char *dir, int *hit) {
  static const luaL_Reg libs[] = {
      {LUA_GNAME, luaopen_base},          {LUA_LOADLIBNAME, luaopen_package},
      {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
      {LUA_STRLIBNAME, luaopen_string},   {LUA_MATHLIBNAME, luaopen_math},
      {LUA_UTF8LIBNAME, luaopen_utf8},    {NULL, NULL}};
  for (const luaL_Reg *l = libs; l->func; l++) {
    luaL_requiref(L, l->name, l->func, 1);
    lua_pop(L, 1);
  }

  /* base */
  lua_pushglobaltable(L);
  static const char *const base_forbidden[] = {"dofile", "loadfile", NULL};
  set_stubs(L, NULL, base_forbidden, hit);
  wrap(L, "load", sandbox_load, hit);
  wrap(L, "setmetatable", sandbox_setmetatable, hit);
  wrap(L, "collectgarbage", sandbox_collectgarbage, hit);
  lua_pushcfunction(L, sandbox_xpcall);
  lua_setfield(L, -2, "xpcall");
  lua_pop(L, 1);

  /* coroutines run under the hook of the thread that resumes them */
  lua_getglobal(L, LUA_COLIBNAME);
  static const char *const co_calls[] = {"resume", "close", NULL};
  for (const char *const *f = co_calls; *f; f++) {
    lua_getfield(L, -1, *f);
    lua_pushcclosure(L, sandbox_co_call, 1);
    lua_setfield(L, -2, *f);
  }
  lua_getfield(L, -1, "wrap");
  lua_pushcclosure(L, sandbox_wrap, 1);
  lua_setfield(L, -2, "wrap");
  lua_pop(L, 1);

  /* string.dump: bytecode only serves load, which takes text only */
  lua_getglobal(L, LUA_STRLIBNAME);
  static const char *const string_forbidden[] = {"dump", NULL};
  set_stubs(L, LUA_STRLIBNAME, string_forbidden, hit);
  lua_pop(L, 1);

  /* os: a few pure functions of Lua's own, stubs for the rest */
  luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
  lua_newtable(L);
  for (const char *const *f = os_allowed; *f; f++) {
    lua_getfield(L, -2, *f);
    lua_setfield(L, -2, *f);
  }
  set_stubs(L, LUA_OSLIBNAME, os_forbidden, hit);
  lua_pushvalue(L, -1);
  lua_setglobal(L, LUA_OSLIBNAME);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_insert(L, -2);
  lua_setfield(L, -2, LUA_OSLIBNAME);
  lua_pop(L, 2); /* loaded, Lua's os table */

  stub_library(L, LUA_IOLIBNAME, io_names, hit);
  stub_library(L, LUA_DBLIBNAME, debug_names, hit);

  /* package: no C loaders, no file probing; searchers are preload, the
   * embedded modules and the policy's directory */
  lua_getglobal(L, LUA_LOADLIBNAME);
  static const char *const package_forbidden[] = {"loadlib", "searchpath",
                                                  NULL};
  set_stubs(L, LUA_LOADLIBNAME, package_forbidden, hit);
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  if (dir)
    lua_pushfstring(L, "%s/?.lua", dir);
  else
    lua_pushliteral(L, "");
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "searchers");
  lua_createtable(L, 3, 0);
  lua_rawgeti(L, -2, 1); /* Lua's preload searcher */
  lua_rawseti(L, -2, 1);
  lua_pushcfunction(L, sandbox_search_embedded);
  lua_rawseti(L, -2, 2);
  if (dir) {
    lua_pushstring(L, dir);
    lua_pushcclosure(L, sandbox_search_dir, 1);
    lua_rawseti(L, -2, 3);
  }
  lua_setfield(L, -3, "searchers");
  lua_pop(L, 2); /* old searchers, package */
}

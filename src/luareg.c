/* luareg: register.core (JSON with fixed key order, logging) and the
 * searcher that serves Lua modules compiled into the binary. */
#include "luareg.h"
#include "container.h"
#include "json.h"
#include "log.h"

#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_ENC_MAX_DEPTH 100

/* The address of this variable keys the "array" metatable in the registry:
 * a table carrying it always encodes as a JSON array, even when empty. */
static const char array_mt_key = 'a';

typedef struct {
  const char *s;
  size_t len;
  int rank;     /* position in the key order list, or INT_MAX */
  size_t index; /* 1-based slot in the anchor tables */
} okey_t;

static int okey_cmp(const void *a, const void *b) {
  const okey_t *x = a, *y = b;
  if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->s, y->s, n);
  if (c) return c;
  return x->len < y->len ? -1 : x->len > y->len;
}

typedef struct {
  lua_State *L;
  int order_idx;
  buf_t *out;
  char *err;
  size_t errlen;
} enc_t;

static int enc_value(enc_t *e, int idx, int depth);

static int is_array_marked(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &array_mt_key);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same;
}

/* 1..n with n == number of keys: a sequence */
static lua_Integer seq_len(lua_State *L, int idx) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TNUMBER || !lua_isinteger(L, -1)) {
      lua_pop(L, 1);
      return -1;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k < 1 || k > n) {
      lua_pop(L, 1);
      return -1;
    }
    count++;
  }
  return count == n ? n : -1;
}

static int enc_table(enc_t *e, int idx, int depth) {
  lua_State *L = e->L;
  int marked = is_array_marked(L, idx);
  lua_Integer n = seq_len(L, idx);
  if (n > 0 || (marked && n >= 0)) {
    buf_putc(e->out, '[');
    for (lua_Integer i = 1; i <= n; i++) {
      if (i > 1) buf_putc(e->out, ',');
      lua_rawgeti(L, idx, i);
      int rc = enc_value(e, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
      if (rc < 0) return -1;
    }
    buf_putc(e->out, ']');
    return 0;
  }
  /* An object.  Keys go into two anchor tables (the original keys, and
   * their string forms, which keep the pointers below valid), then are
   * sorted: those in the order list first, in its order, the rest by
   * bytes, so the output never depends on hash order. */
  int base = lua_gettop(L);
  lua_newtable(L); /* base+1: original keys */
  lua_newtable(L); /* base+2: keys as strings */
  size_t nk = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    int kt = lua_type(L, -1);
    if (kt != LUA_TSTRING && kt != LUA_TNUMBER) {
      snprintf(e->err, e->errlen, "cannot encode a table key of type %s",
               lua_typename(L, kt));
      lua_settop(L, base);
      return -1;
    }
    nk++;
    lua_pushvalue(L, -1);
    lua_rawseti(L, base + 1, (lua_Integer)nk);
    lua_pushvalue(L, -1);
    lua_tolstring(L, -1, NULL); /* converts the copy, not the key */
    lua_rawseti(L, base + 2, (lua_Integer)nk);
  }
  /* Lua owns the array (base+3), so an error below leaks nothing */
  okey_t *keys = lua_newuserdatauv(L, (nk ? nk : 1) * sizeof *keys, 0);
  for (size_t i = 0; i < nk; i++) {
    lua_rawgeti(L, base + 2, (lua_Integer)i + 1);
    keys[i].s = lua_tolstring(L, -1, &keys[i].len); /* anchored in base+2 */
    lua_pop(L, 1);
    keys[i].rank = 0x7fffffff;
    keys[i].index = i + 1;
    if (!e->order_idx) continue;
    lua_Integer on = (lua_Integer)lua_rawlen(L, e->order_idx);
    for (lua_Integer j = 1; j <= on; j++) {
      lua_rawgeti(L, e->order_idx, j);
      size_t ol;
      const char *os = lua_tolstring(L, -1, &ol);
      int hit = os && ol == keys[i].len && memcmp(os, keys[i].s, ol) == 0;
      lua_pop(L, 1);
      if (hit) {
        keys[i].rank = (int)j;
        break;
      }
    }
  }
  qsort(keys, nk, sizeof *keys, okey_cmp);
  buf_putc(e->out, '{');
  int rc = 0;
  for (size_t i = 0; i < nk && rc == 0; i++) {
    if (i) buf_putc(e->out, ',');
    json_escape(e->out, keys[i].s, keys[i].len);
    buf_putc(e->out, ':');
    lua_rawgeti(L, base + 1, (lua_Integer)keys[i].index);
    lua_rawget(L, idx);
    rc = enc_value(e, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  buf_putc(e->out, '}');
  lua_settop(L, base);
  return rc;
}

static int enc_value(enc_t *e, int idx, int depth) {
  lua_State *L = e->L;
  if (depth > JSON_ENC_MAX_DEPTH) {
    snprintf(e->err, e->errlen, "value nested deeper than %d (a cycle?)",
             JSON_ENC_MAX_DEPTH);
    return -1;
  }
  luaL_checkstack(L, 6, "JSON value nested too deeply");
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    buf_puts(e->out, "null");
    return 0;
  case LUA_TBOOLEAN:
    buf_puts(e->out, lua_toboolean(L, idx) ? "true" : "false");
    return 0;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      buf_printf(e->out, "%lld", (long long)lua_tointeger(L, idx));
    } else {
      double d = (double)lua_tonumber(L, idx);
      if (!isfinite(d)) {
        snprintf(e->err, e->errlen, "cannot encode %g as JSON", d);
        return -1;
      }
      if (d == floor(d) && fabs(d) < 1e16)
        buf_printf(e->out, "%.1f", d);
      else
        buf_printf(e->out, "%.17g", d);
    }
    return 0;
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    json_escape(e->out, s, len);
    return 0;
  }
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) { /* cjson.null */
      buf_puts(e->out, "null");
      return 0;
    }
    break;
  case LUA_TTABLE:
    return enc_table(e, idx, depth);
  }
  snprintf(e->err, e->errlen, "cannot encode a %s value as JSON",
           luaL_typename(L, idx));
  return -1;
}

int luareg_json_encode(lua_State *L, int idx, int order_idx, buf_t *out,
                       char *err, size_t errlen) {
  enc_t e = {L, order_idx ? lua_absindex(L, order_idx) : 0, out, err, errlen};
  return enc_value(&e, lua_absindex(L, idx), 0);
}

/* ---- C memory owned by Lua: freed by the collector if an error unwinds
 * past the C function that holds it, else at once ---- */

static const char buffer_mt_key = 'b';
static const char docbox_mt_key = 'd';

static int buffer_gc(lua_State *L) {
  buf_free(lua_touserdata(L, 1));
  return 0;
}

buf_t *luareg_buffer(lua_State *L) {
  buf_t *b = lua_newuserdatauv(L, sizeof *b, 0);
  buf_init(b);
  int t = lua_rawgetp(L, LUA_REGISTRYINDEX, &buffer_mt_key);
  /* after luareg_open(): without its __gc the buffer would leak */
  REGISTER_ASSERT(t == LUA_TTABLE);
  lua_setmetatable(L, -2);
  return b;
}

static int docbox_gc(lua_State *L) {
  json_doc_t **box = lua_touserdata(L, 1);
  json_free(*box);
  *box = NULL;
  return 0;
}

/* Pushes a box that frees the document it holds when collected. */
static json_doc_t **push_docbox(lua_State *L) {
  json_doc_t **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  int t = lua_rawgetp(L, LUA_REGISTRYINDEX, &docbox_mt_key);
  REGISTER_ASSERT(t == LUA_TTABLE); /* luareg_open() made it */
  lua_setmetatable(L, -2);
  return box;
}

static void new_gc_mt(lua_State *L, const void *key, lua_CFunction gc,
                      const char *name) {
  lua_createtable(L, 0, 3);
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* core.json_encode(value [, key_order]) -> string */
static int core_json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  int order = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    order = 2;
  }
  lua_settop(L, 2);
  buf_t *b = luareg_buffer(L); /* 3 */
  char err[200];
  if (luareg_json_encode(L, 1, order, b, err, sizeof err) < 0)
    return luaL_error(L, "json_encode: %s", err);
  lua_pushlstring(L, b->data ? b->data : "", b->len);
  buf_free(b);
  return 1;
}

/* core.json_decode(text) -> value | nil, err (order is not kept).  The
 * parsed document may take as much memory as the policy may (upvalue 1);
 * it is freed at once, or by the collector if pushing it raises. */
static int core_json_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  size_t max = (size_t)lua_tointeger(L, lua_upvalueindex(1));
  char err[200];
  lua_settop(L, 1);
  json_doc_t **box = push_docbox(L); /* 2 */
  *box = json_parse_max(s, len, max ? max : JSON_MAX_MEMORY, err, sizeof err);
  if (!*box) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  container_push_json(L, json_root(*box));
  json_free(*box);
  *box = NULL;
  return 1;
}

/* core.log(level, message) */
static int core_log(lua_State *L) {
  static const char *const levels[] = {"error", "warn", "info", "debug", NULL};
  int lvl = luaL_checkoption(L, 1, "info", levels);
  const char *msg = luaL_checkstring(L, 2);
  const char *const fields[] = {"source", "policy", NULL};
  log_emit((log_level_t)lvl, fields, "%s", msg);
  return 0;
}

static const luaL_Reg core_fns[] = {
    {"json_encode", core_json_encode},
    {"log", core_log},
    {NULL, NULL},
};

static int open_core(lua_State *L) {
  luaL_newlib(L, core_fns);
  lua_getfield(L, LUA_REGISTRYINDEX, "register.memory_limit");
  lua_pushcclosure(L, core_json_decode, 1);
  lua_setfield(L, -2, "json_decode");
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &array_mt_key);
  lua_setfield(L, -2, "array_mt");
  return 1;
}

int luareg_load_embedded(lua_State *L, const char *name) {
  for (size_t i = 0; i < luareg_nmodules; i++) {
    const luareg_module_t *m = &luareg_modules[i];
    if (strcmp(m->name, name) == 0)
      return luaL_loadbufferx(L, (const char *)m->src, m->len, m->chunkname,
                              "t");
  }
  return -1;
}

const char *luareg_embedded_source(const char *name, size_t *len) {
  for (size_t i = 0; i < luareg_nmodules; i++) {
    const luareg_module_t *m = &luareg_modules[i];
    if (strcmp(m->name, name) == 0) {
      *len = m->len;
      return (const char *)m->src;
    }
  }
  return NULL;
}

void luareg_open(lua_State *L, size_t mem_limit) {
  new_gc_mt(L, &buffer_mt_key, buffer_gc, "register.buffer");
  new_gc_mt(L, &docbox_mt_key, docbox_gc, "register.document");
  lua_pushinteger(L, (lua_Integer)mem_limit);
  lua_setfield(L, LUA_REGISTRYINDEX, "register.memory_limit");
  luaL_requiref(L, "cjson", luaopen_cjson, 0);
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__name");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &array_mt_key);
  luaL_requiref(L, "register.core", open_core, 0);
  lua_pop(L, 1);
}

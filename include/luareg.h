/* luareg: the C half of the `register` Lua module ("register.core") and
 * the loader for the Lua modules compiled into the binary (lua/).
 *
 * register.core: json_encode(value [, key_order]) with Ruby-compatible
 * escaping and a fixed key order, json_decode(text), log(level, msg),
 * null, array_mt. */
#ifndef REGISTER_LUAREG_H
#define REGISTER_LUAREG_H

#include <lua.h>

#include "util.h"

/* Opens cjson and register.core (after sandbox_open: it needs package).
 * mem_limit caps the memory of a document register.core.json_decode
 * parses (the policy's own limit).  Raises on failure. */
void luareg_open(lua_State *L, size_t mem_limit);
/* Pushes a buffer that Lua owns: an error unwinding past the C function
 * that fills it leaks nothing (the collector frees it); buf_free() it at
 * once when done. */
buf_t *luareg_buffer(lua_State *L);
/* Loads an embedded module's chunk (without running it).  LUA_OK, or an
 * error pushed like luaL_loadbuffer does; -1 if there is no such module. */
int luareg_load_embedded(lua_State *L, const char *name);
/* An embedded module's source, or NULL. */
const char *luareg_embedded_source(const char *name, size_t *len);
/* Encodes the value at idx as JSON into out; order_idx (0 = none) is a
 * table listing keys that come first, in that order.  Returns 0, or -1
 * with a reason in err. */
int luareg_json_encode(lua_State *L, int idx, int order_idx, buf_t *out,
                       char *err, size_t errlen);

/* Generated from the lua/ directory at build time. */
typedef struct {
  const char *name;
  const char *chunkname;
  const unsigned char *src;
  size_t len;
} luareg_module_t;
extern const luareg_module_t luareg_modules[];
extern const size_t luareg_nmodules;

#endif

/* sandbox: the environment a policy runs in, an allow-list in the spirit of
 * redis's scripting.
 *
 * Lua's base library without dofile/loadfile, `load` for text only, a
 * `setmetatable` that refuses __gc (finalizers would run outside the
 * budget), `collectgarbage` without the modes that change the collector,
 * an `xpcall` whose message handler runs after the error has unwound (Lua
 * runs it before, with hooks off when the error came from a hook);
 * string (without string.dump), table, math, utf8, coroutine; from os only
 * time, date, clock and getenv.  No io, no debug, no package.loadlib, no C
 * modules.  Every forbidden function that Lua or its libraries name is a
 * stub that raises "<name> is not available in a policy (sandbox)".
 *
 * `require` finds, in this order: modules already loaded (cjson,
 * register.core), the Lua modules compiled into the binary (register,
 * register.default), and Lua source files in the policy file's own
 * directory ("a.b" is DIR/a/b.lua; names are letters, digits, '_', '-'
 * and '.'). */
#ifndef REGISTER_SANDBOX_H
#define REGISTER_SANDBOX_H

#include <lua.h>

/* Opens the libraries into L's globals.  dir: the policy file's directory,
 * or NULL (the embedded default policy: no file modules).  *hit is set to 1
 * whenever a script calls a forbidden function; it must outlive L.  Raises
 * on failure (run it inside a protected call). */
void sandbox_open(lua_State *L, const char *dir, int *hit);
/* Where `require` reads DIR/a/b.lua from, process-wide: fn gets the path
 * under DIR ("a/b.lua") and returns the text (n bytes, valid until L's
 * next allocation; it may anchor it on L's stack) or NULL when there is no
 * such module.  NULL (the default): the file system.  The policy worker
 * cannot open files; the daemon reads them for it. */
typedef const char *(*sandbox_reader_fn)(lua_State *L, const char *rel,
                                         size_t *n);
void sandbox_set_reader(sandbox_reader_fn fn);

#endif

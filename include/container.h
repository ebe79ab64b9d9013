/* container: Docker's inspect JSON -> the `container` table a policy sees.
 *
 * Fields: id, name (no leading '/'), image (Config.Image as created),
 * image_id, hostname, created, labels, env (name -> value), ports
 * (published bindings in Docker's order: private_port, proto, host_ip,
 * host_port, all strings as Docker reports them), exposed (private_port,
 * proto), networks (name -> ip, ip6, gateway, mac), state (status, running,
 * paused, restarting, health, started_at) and inspect (the whole document);
 * the runtime adds checks and healthy (policy.c).
 *
 * Reading a string key that is none of these fields, from the container
 * table or a port table (c.ports[i]), raises "unknown field K; the
 * container has id, name, ..." ("...; the port has private_port, proto,
 * host_ip, host_port"), at the script's line: a typo fails loudly instead
 * of reading nil.  A field that is not set (checks, healthy; one the
 * script cleared) and any non-string key read nil; rawget, pairs and next
 * are raw as ever.  The other tables (labels, env, exposed, networks,
 * state) are plain: their optional entries (state.health, a network's ip6)
 * are nil when absent.
 */
#ifndef REGISTER_CONTAINER_H
#define REGISTER_CONTAINER_H

#include <lua.h>
#include <stddef.h>

#include "json.h"

/* The document behind a container table's lazy `inspect` field. */
typedef struct {
  const json_value_t *doc; /* NULL once the document is gone */
} container_doc_t;

/* Pushes two values: the box (a userdata holding the document pointer),
 * then the container table.  id, name, image, image_id, hostname, created
 * and ports are set; labels, env, exposed, networks, state and inspect are
 * built on first use (most policies never read them) from the document in
 * the box.  The caller keeps the box on its stack (anchored: the script
 * can drop every reference it has) and sets box->doc to NULL when the
 * document goes away; reading a lazy field later is then a clear error.
 * The table's metatable, and the one its port tables share, are its own:
 * a script that changes them changes only this container.
 * Returns 0, or -1 (pushing nothing) with a one-line reason when the
 * document is not a container inspect.  May raise (memory). */
int container_push(lua_State *L, const json_value_t *inspect,
                   container_doc_t **box, char *err, size_t errlen);
/* Pushes any JSON value as Lua: objects and arrays as tables, null as
 * cjson.null (a NULL light userdata), integers as integers. */
void container_push_json(lua_State *L, const json_value_t *v);
/* Config.Image, or "" */
const char *container_image(const json_value_t *inspect);

#endif

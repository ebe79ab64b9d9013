/* container: inspect JSON -> Lua container table. */
#include "container.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

void container_push_json(lua_State *L, const json_value_t *v) {
  REGISTER_ASSERT(v); /* a value (callers test optional fields first) */
  luaL_checkstack(L, 3, "JSON nested too deeply");
  switch (v->type) {
  case JSON_NULL:
    lua_pushlightuserdata(L, NULL);
    break;
  case JSON_BOOL:
    lua_pushboolean(L, v->u.boolean);
    break;
  case JSON_NUMBER:
    if (v->u.num.is_int)
      lua_pushinteger(L, (lua_Integer)v->u.num.i);
    else
      lua_pushnumber(L, (lua_Number)v->u.num.d);
    break;
  case JSON_STRING:
    lua_pushlstring(L, v->u.str, v->len);
    break;
  case JSON_ARRAY: {
    lua_createtable(L, (int)v->len, 0);
    lua_Integer i = 1;
    for (const json_value_t *c = v->u.child; c; c = c->next) {
      container_push_json(L, c);
      lua_rawseti(L, -2, i++);
    }
    break;
  }
  case JSON_OBJECT:
    lua_createtable(L, 0, (int)v->len);
    for (const json_value_t *c = v->u.child; c; c = c->next) {
      lua_pushlstring(L, c->key, c->keylen);
      container_push_json(L, c);
      lua_rawset(L, -3);
    }
    break;
  default: /* one value pushed, always: a live document's values are typed */
    REGISTER_ASSERT(!"a JSON value of a live document");
  }
}

static void set_str(lua_State *L, const char *field, const char *v) {
  lua_pushstring(L, v ? v : "");
  lua_setfield(L, -2, field);
}

static void set_json_str(lua_State *L, const char *field,
                         const json_value_t *obj, const char *key) {
  const json_value_t *v = json_get(obj, key);
  if (v && v->type == JSON_STRING) {
    lua_pushlstring(L, v->u.str, v->len);
    lua_setfield(L, -2, field);
  }
}

static void set_json_bool(lua_State *L, const char *field,
                          const json_value_t *obj, const char *key) {
  const json_value_t *v = json_get(obj, key);
  lua_pushboolean(L, v && v->type == JSON_BOOL && v->u.boolean);
  lua_setfield(L, -2, field);
}

/* "80/tcp" -> private_port "80", proto "tcp" */
static void set_port_key(lua_State *L, const char *k, size_t n) {
  const char *slash = memchr(k, '/', n);
  size_t pn = slash ? (size_t)(slash - k) : n;
  lua_pushlstring(L, k, pn);
  lua_setfield(L, -2, "private_port");
  if (slash)
    lua_pushlstring(L, slash + 1, n - pn - 1);
  else
    lua_pushliteral(L, "tcp");
  lua_setfield(L, -2, "proto");
}

/* The fields of a container table and of a port table (c.ports[i]), as
 * the error for a name that is none of them lists them. */
static const char *const container_fields[] = {
    "id",      "name",   "image",   "image_id", "hostname", "created",
    "ports",   "labels", "env",     "exposed",  "networks", "state",
    "inspect", "checks", "healthy", "stopping"};
#define CONTAINER_FIELDS                                                       \
  "id, name, image, image_id, hostname, created, ports, labels, env, "         \
  "exposed, networks, state, inspect, checks, healthy, stopping"
static const char *const port_fields[] = {"private_port", "proto", "host_ip",
                                          "host_port"};
#define PORT_FIELDS "private_port, proto, host_ip, host_port"

static int is_one_of(const char *k, const char *const *names, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(k, names[i]) == 0) return 1;
  return 0;
}

/* __index of a port table: every field is set, so a miss is a name that
 * is not a field (a typo, another schema's name: public_port), or one the
 * script cleared itself (nil).  Other keys than strings are nil, so that
 * ipairs() and p[1] stay harmless. */
static int port_index(lua_State *L) {
  if (lua_type(L, 2) != LUA_TSTRING) return 0;
  const char *k = lua_tostring(L, 2);
  if (is_one_of(k, port_fields, sizeof port_fields / sizeof port_fields[0]))
    return 0;
  return luaL_error(L, "unknown field %s; the port has " PORT_FIELDS, k);
}

static void push_ports(lua_State *L, const json_value_t *ports) {
  lua_newtable(L);
  if (!ports || ports->type != JSON_OBJECT) return;
  lua_Integer i = 1;
  int has_mt = 0;
  for (const json_value_t *p = ports->u.child; p; p = p->next) {
    if (p->type != JSON_ARRAY) continue; /* null: exposed, not published */
    for (const json_value_t *b = p->u.child; b; b = b->next) {
      if (b->type != JSON_OBJECT) continue;
      if (!has_mt) {
        /* one metatable per container, below the list: a script that
         * changes it (getmetatable) changes only these ports, which exist
         * already (a __gc added later finalizes nothing) */
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, port_index);
        lua_setfield(L, -2, "__index");
        lua_insert(L, -2);
        has_mt = 1;
      }
      lua_createtable(L, 0, 4);
      set_port_key(L, p->key, p->keylen);
      set_str(L, "host_ip", json_get_str(b, "HostIp"));
      set_str(L, "host_port", json_get_str(b, "HostPort"));
      lua_pushvalue(L, -3);
      lua_setmetatable(L, -2);
      lua_rawseti(L, -2, i++);
    }
  }
  if (has_mt) lua_remove(L, -2);
}

static void push_exposed(lua_State *L, const json_value_t *exposed) {
  lua_newtable(L);
  if (!exposed || exposed->type != JSON_OBJECT) return;
  lua_Integer i = 1;
  for (const json_value_t *p = exposed->u.child; p; p = p->next) {
    lua_createtable(L, 0, 2);
    set_port_key(L, p->key, p->keylen);
    lua_rawseti(L, -2, i++);
  }
}

static void push_env(lua_State *L, const json_value_t *env) {
  lua_newtable(L);
  if (!env || env->type != JSON_ARRAY) return;
  for (const json_value_t *e = env->u.child; e; e = e->next) {
    if (e->type != JSON_STRING) continue;
    const char *eq = memchr(e->u.str, '=', e->len);
    size_t kn = eq ? (size_t)(eq - e->u.str) : e->len;
    lua_pushlstring(L, e->u.str, kn);
    if (eq)
      lua_pushlstring(L, eq + 1, e->len - kn - 1);
    else
      lua_pushliteral(L, "");
    lua_rawset(L, -3);
  }
}

static void push_labels(lua_State *L, const json_value_t *labels) {
  lua_newtable(L);
  if (!labels || labels->type != JSON_OBJECT) return;
  for (const json_value_t *l = labels->u.child; l; l = l->next) {
    if (l->type != JSON_STRING) continue;
    lua_pushlstring(L, l->key, l->keylen);
    lua_pushlstring(L, l->u.str, l->len);
    lua_rawset(L, -3);
  }
}

static void push_networks(lua_State *L, const json_value_t *nets) {
  lua_newtable(L);
  if (!nets || nets->type != JSON_OBJECT) return;
  for (const json_value_t *n = nets->u.child; n; n = n->next) {
    if (n->type != JSON_OBJECT) continue;
    lua_pushlstring(L, n->key, n->keylen);
    lua_createtable(L, 0, 5);
    set_json_str(L, "ip", n, "IPAddress");
    set_json_str(L, "ip6", n, "GlobalIPv6Address");
    set_json_str(L, "gateway", n, "Gateway");
    set_json_str(L, "mac", n, "MacAddress");
    set_json_str(L, "network_id", n, "NetworkID");
    lua_rawset(L, -3);
  }
}

static void push_state(lua_State *L, const json_value_t *st) {
  lua_createtable(L, 0, 6);
  set_json_str(L, "status", st, "Status");
  set_json_bool(L, "running", st, "Running");
  set_json_bool(L, "paused", st, "Paused");
  set_json_bool(L, "restarting", st, "Restarting");
  set_json_str(L, "started_at", st, "StartedAt");
  const char *health = json_get_str(json_get(st, "Health"), "Status");
  if (health) {
    lua_pushstring(L, health);
    lua_setfield(L, -2, "health");
  }
}

const char *container_image(const json_value_t *inspect) {
  const char *img = json_get_str(json_get(inspect, "Config"), "Image");
  return img ? img : "";
}

/* The fields built on first use, from the inspect document. */
static int build_lazy(lua_State *L, const char *k, const json_value_t *doc) {
  const json_value_t *config = json_get(doc, "Config");
  const json_value_t *netset = json_get(doc, "NetworkSettings");
  if (strcmp(k, "inspect") == 0)
    container_push_json(L, doc);
  else if (strcmp(k, "labels") == 0)
    push_labels(L, json_get(config, "Labels"));
  else if (strcmp(k, "env") == 0)
    push_env(L, json_get(config, "Env"));
  else if (strcmp(k, "exposed") == 0)
    push_exposed(L, json_get(config, "ExposedPorts"));
  else if (strcmp(k, "networks") == 0)
    push_networks(L, json_get(netset, "Networks"));
  else if (strcmp(k, "state") == 0)
    push_state(L, json_get(doc, "State"));
  else
    return 0;
  return 1;
}

/* __index of a container table: builds a lazy field once, then it is a
 * plain field.  Most policies read only id, image and ports, so the rest
 * (and above all the whole inspect document) costs nothing unless used.
 * A string that is no field at all is an error naming the fields; a field
 * that is not set (checks and healthy come from the runtime, a field the
 * script cleared) is nil, as is any key that is not a string. */
static int lazy_index(lua_State *L) {
  if (lua_type(L, 2) != LUA_TSTRING) return 0;
  const char *k = lua_tostring(L, 2);
  static const char *const lazy[] = {"inspect", "labels",   "env",
                                     "exposed", "networks", "state"};
  if (!is_one_of(k, lazy, sizeof lazy / sizeof lazy[0])) {
    if (is_one_of(k, container_fields,
                  sizeof container_fields / sizeof container_fields[0]))
      return 0;
    return luaL_error(
        L, "unknown field %s; the container has " CONTAINER_FIELDS, k);
  }
  container_doc_t *box = lua_touserdata(L, lua_upvalueindex(1));
  if (!box->doc)
    return luaL_error(L,
                      "container.%s is only available while records() "
                      "runs (keep what you need in your own table)",
                      k);
  build_lazy(L, k, box->doc);
  lua_pushvalue(L, -1);
  lua_setfield(L, 1, k); /* plain field from now on */
  return 1;
}

int container_push(lua_State *L, const json_value_t *inspect,
                   container_doc_t **boxp, char *err, size_t errlen) {
  const char *id = json_get_str(inspect, "Id");
  if (!inspect || inspect->type != JSON_OBJECT) {
    snprintf(err, errlen, "inspect document is not a JSON object");
    return -1;
  }
  if (!id || !*id) {
    snprintf(err, errlen, "inspect document has no \"Id\"");
    return -1;
  }
  const json_value_t *config = json_get(inspect, "Config");
  const json_value_t *netset = json_get(inspect, "NetworkSettings");
  luaL_checkstack(L, 8, "container table");
  /* the box first: it stays on the caller's stack, where the script
   * cannot unanchor it (a container table's metatable can be replaced) */
  container_doc_t *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->doc = NULL;
  lua_createtable(L, 0, 14);
  set_str(L, "id", id);
  const char *name = json_get_str(inspect, "Name");
  set_str(L, "name", name && name[0] == '/' ? name + 1 : name);
  set_str(L, "image", container_image(inspect));
  set_str(L, "image_id", json_get_str(inspect, "Image"));
  set_str(L, "hostname", json_get_str(config, "Hostname"));
  set_str(L, "created", json_get_str(inspect, "Created"));
  push_ports(L, json_get(netset, "Ports"));
  lua_setfield(L, -2, "ports");
  /* labels, env, exposed, networks, state, inspect: built on first use,
   * from a document that lives only during this call into the policy */
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, lazy_index, 1);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  box->doc = inspect;
  if (boxp) *boxp = box;
  return 0;
}

/* luaio: HTTP and read-only etcd for policy hooks, as yields. */
#include "luaio.h"
#include "json.h"
#include "log.h"
#include "util.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* registry keys: addresses of these statics, as luv does */
static const char key_io = 'i';     /* luaio_t * */
static const char key_resume = 'r'; /* resume function */
static const char key_resume_ud = 'u';
static const char key_current = 'c'; /* the coroutine allowed to yield */

typedef struct ioreq {
  luaio_t *io;
  lua_State *L;  /* the main state */
  lua_State *co; /* the coroutine waiting */
  int co_ref;    /* keeps co alive while waiting */
  luaio_resume_fn resume;
  void *resume_ud;
  http_req_t *http;
  etcd_op_t *op;
  int want_list;
  struct ioreq *prev, *next;
} ioreq_t;

struct luaio {
  http_t *http;
  etcd_t *etcd;
  int print_only;
  ioreq_t *reqs;
};

luaio_t *luaio_new(http_t *http, etcd_t *etcd, int print_only) {
  luaio_t *io = xcalloc(1, sizeof *io);
  io->http = http;
  io->etcd = etcd;
  io->print_only = print_only;
  return io;
}

static void req_unlink(ioreq_t *r) {
  luaio_t *io = r->io;
  if (r->prev)
    r->prev->next = r->next;
  else
    io->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
}

static void req_drop(ioreq_t *r) {
  if (r->http) http_cancel(r->http);
  if (r->op) etcd_cancel(r->op);
  luaL_unref(r->L, LUA_REGISTRYINDEX, r->co_ref);
  req_unlink(r);
  free(r);
}

void luaio_free(luaio_t *io) {
  if (!io) return;
  while (io->reqs)
    req_drop(io->reqs);
  free(io);
}

void luaio_cancel(luaio_t *io, lua_State *L) {
  if (!io) return;
  for (ioreq_t *r = io->reqs, *next; r; r = next) {
    next = r->next;
    if (r->L == L) req_drop(r);
  }
}

int luaio_waiting(const luaio_t *io, const lua_State *co) {
  for (const ioreq_t *r = io ? io->reqs : NULL; r; r = r->next)
    if (r->co == co) return 1;
  return 0;
}

void luaio_set_current(lua_State *L, lua_State *co) {
  if (co)
    lua_pushthread(co), lua_xmove(co, L, 1);
  else
    lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_current);
}

/* The io context, after checking that L may do I/O now. */
static luaio_t *check_io(lua_State *L, const char *what) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_current);
  int allowed = lua_tothread(L, -1) == L && lua_isyieldable(L);
  lua_pop(L, 1);
  if (!allowed)
    luaL_error(L,
               "%s may only be called from the event and changed hooks "
               "(records() must stay pure)",
               what);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_io);
  luaio_t *io = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return io;
}

static ioreq_t *req_new(lua_State *L, luaio_t *io) {
  ioreq_t *r = xcalloc(1, sizeof *r);
  r->io = io;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_resume);
  r->resume = *(luaio_resume_fn *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_resume_ud);
  r->resume_ud = lua_touserdata(L, -1);
  lua_pop(L, 1);
  r->co = L;
  lua_pushthread(L);
  r->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_State *main = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  main = lua_tothread(L, -1);
  lua_pop(L, 1);
  r->L = main;
  r->next = io->reqs;
  if (io->reqs) io->reqs->prev = r;
  io->reqs = r;
  return r;
}

/* The request could not start: forget it and return nil, why to the
 * script (nothing was yielded). */
static int req_abort(lua_State *L, ioreq_t *r, const char *why) {
  luaL_unref(r->L, LUA_REGISTRYINDEX, r->co_ref);
  req_unlink(r);
  free(r);
  luaL_pushfail(L);
  lua_pushstring(L, why);
  return 2;
}

/* Hands results to the waiting coroutine and forgets the request. */
static void req_finish(ioreq_t *r, int nargs) {
  lua_State *co = r->co;
  luaio_resume_fn resume = r->resume;
  void *ud = r->resume_ud;
  lua_State *L = r->L;
  int ref = r->co_ref;
  req_unlink(r);
  free(r);
  resume(ud, co, nargs); /* co is still anchored by ref */
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

/* ---- HTTP ---- */

static void push_headers(lua_State *L, const char *h, size_t n) {
  lua_newtable(L);
  const char *p = h, *end = h + n;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon && strncmp(p, "HTTP/", 5) != 0) {
      char name[128];
      size_t nl = (size_t)(colon - p);
      if (nl < sizeof name) {
        for (size_t i = 0; i < nl; i++)
          name[i] = (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i]);
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
          v++;
        while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
          ve--;
        lua_pushlstring(L, name, nl);
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_rawset(L, -3);
      }
    }
    p = eol + 1;
  }
}

static void http_done(http_req_t *req, const http_resp_t *resp, void *data) {
  (void)req;
  ioreq_t *r = data;
  lua_State *co = r->co;
  r->http = NULL;
  if (resp->error) {
    luaL_pushfail(co);
    lua_pushstring(co, resp->errmsg);
    req_finish(r, 2);
    return;
  }
  lua_createtable(co, 0, 3);
  lua_pushinteger(co, resp->status);
  lua_setfield(co, -2, "status");
  lua_pushlstring(co, resp->body, resp->body_len);
  lua_setfield(co, -2, "body");
  push_headers(co, resp->headers, resp->headers_len);
  lua_setfield(co, -2, "headers");
  req_finish(r, 1);
}

static int l_http_request(lua_State *L) {
  luaio_t *io = check_io(L, "register.http.request");
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "url");
  const char *url = luaL_optstring(L, -1, NULL);
  if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8)))
    return luaL_error(L, "register.http.request: url must be an http:// or "
                         "https:// URL");
  lua_getfield(L, 1, "body");
  size_t blen = 0;
  const char *body = luaL_optlstring(L, -1, NULL, &blen);
  lua_getfield(L, 1, "method");
  const char *method = luaL_optstring(L, -1, body ? "POST" : "GET");
  lua_getfield(L, 1, "timeout");
  lua_Number timeout = luaL_optnumber(L, -1, 10);
  if (timeout <= 0 || timeout > 300)
    return luaL_error(L, "register.http.request: timeout must be in (0, 300]");
  /* headers: {name = value} -> "name: value" lines */
  buf_t hb;
  buf_init(&hb);
  size_t nh = 0;
  if (lua_getfield(L, 1, "headers") == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
        const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
        if (strpbrk(k, "\r\n:") || strpbrk(v, "\r\n")) {
          buf_free(&hb);
          return luaL_error(L, "register.http.request: bad header \"%s\"", k);
        }
        buf_printf(&hb, "%s: %s", k, v);
        buf_putc(&hb, '\0');
        nh++;
      }
      lua_pop(L, 1);
    }
  }
  if (io && io->print_only) {
    buf_t line;
    buf_init(&line);
    buf_puts(&line, "{\"op\":\"http\",\"method\":");
    json_escape(&line, method, strlen(method));
    buf_puts(&line, ",\"url\":");
    json_escape(&line, url, strlen(url));
    buf_puts(&line, ",\"headers\":[");
    const char *h = hb.data;
    for (size_t i = 0; i < nh; i++, h += strlen(h) + 1) {
      if (i) buf_putc(&line, ',');
      json_escape(&line, h, strlen(h));
    }
    buf_puts(&line, "]");
    if (body) {
      buf_puts(&line, ",\"body\":");
      json_escape(&line, body, blen);
    }
    buf_puts(&line, "}\n");
    fwrite(line.data, 1, line.len, stdout);
    fflush(stdout);
    buf_free(&line);
    buf_free(&hb);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "status");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "body");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "printed");
    return 1;
  }
  if (!io || !io->http) {
    buf_free(&hb);
    luaL_pushfail(L);
    lua_pushliteral(L, "no HTTP client here");
    return 2;
  }
  const char **headers = xcalloc(nh + 1, sizeof *headers);
  const char *h = hb.data;
  for (size_t i = 0; i < nh; i++, h += strlen(h) + 1)
    headers[i] = h;
  ioreq_t *r = req_new(L, io);
  http_opts_t o = {0};
  o.method = method;
  o.url = url;
  o.headers = headers;
  o.body = body;
  o.body_len = blen;
  o.timeout_ms = (long)(timeout * 1000);
  o.max_body = 16u << 20;
  o.on_done = http_done;
  o.data = r;
  r->http = http_request(io->http, &o);
  free(headers);
  buf_free(&hb);
  if (!r->http) return req_abort(L, r, "cannot start the HTTP request");
  return lua_yield(L, 0);
}

/* ---- etcd, read only ---- */

static void etcd_done(void *data, const etcd_result_t *res,
                      const etcd_kv_t *kvs, size_t n, const char *const *dirs,
                      size_t ndirs) {
  (void)dirs;
  (void)ndirs;
  ioreq_t *r = data;
  lua_State *co = r->co;
  r->op = NULL;
  if (res->status != ETCD_OK) {
    luaL_pushfail(co);
    lua_pushstring(co, res->error ? res->error : "etcd error");
    req_finish(r, 2);
    return;
  }
  if (r->want_list) {
    lua_createtable(co, 0, (int)n);
    for (size_t i = 0; i < n; i++) {
      lua_pushlstring(co, kvs[i].value, kvs[i].value_len);
      lua_setfield(co, -2, kvs[i].key);
    }
  } else if (n) {
    lua_pushlstring(co, kvs[0].value, kvs[0].value_len);
  } else {
    lua_pushnil(co);
  }
  req_finish(r, 1);
}

static int etcd_read(lua_State *L, int list) {
  luaio_t *io = check_io(L, list ? "register.etcd.list" : "register.etcd.get");
  const char *key = luaL_checkstring(L, 1);
  if (key[0] != '/') return luaL_error(L, "etcd keys start with '/'");
  if (!io || !io->etcd) {
    luaL_pushfail(L);
    lua_pushliteral(L, "etcd is not available here (--dry-run or check)");
    return 2;
  }
  ioreq_t *r = req_new(L, io);
  r->want_list = list;
  r->op = list ? etcd_list(io->etcd, key, etcd_done, r)
               : etcd_get(io->etcd, key, etcd_done, r);
  if (!r->op) return req_abort(L, r, "cannot start the etcd request");
  return lua_yield(L, 0);
}

static int l_etcd_get(lua_State *L) {
  return etcd_read(L, 0);
}

static int l_etcd_list(lua_State *L) {
  return etcd_read(L, 1);
}

void luaio_install(lua_State *L, luaio_t *io, luaio_resume_fn resume,
                   void *ud) {
  lua_pushlightuserdata(L, io);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_io);
  luaio_resume_fn *box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = resume;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_resume);
  lua_pushlightuserdata(L, ud);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_resume_ud);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "register.core");
  static const luaL_Reg fns[] = {{"http_request", l_http_request},
                                 {"etcd_get", l_etcd_get},
                                 {"etcd_list", l_etcd_list},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lua_pop(L, 2);
}

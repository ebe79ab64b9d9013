/* luaio: HTTP and read-only etcd for policy hooks, as yields; the I/O
 * itself is the backend's. */
#include "luaio.h"
#include "json.h"
#include "list.h"
#include "luareg.h"
#include "util.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HTTP_MIN_TIMEOUT 0.001 /* seconds: below that curl's 0 is "none" */
#define HTTP_MAX_TIMEOUT 300

/* registry key: the address of this static, as luv does */
static const char key_ctx = 'c';

struct luaio_ctx {
  luaio_t *io;
  lua_State *current; /* the coroutine allowed to yield now */
  luaio_resume_fn resume;
  void *resume_ud;
};

typedef struct ioreq {
  luaio_t *io;
  lua_State *L;  /* the main state */
  lua_State *co; /* the coroutine waiting */
  int co_ref;    /* keeps co alive while waiting */
  luaio_resume_fn resume;
  void *resume_ud;
  uint64_t id; /* the backend's name for it */
  iocall_kind_t kind;
  list_t node; /* on luaio.reqs */
} ioreq_t;

struct luaio {
  luaio_backend_t b;
  uint64_t next_id;
  list_t reqs;  /* ioreq_t: requests in flight */
  int starting; /* inside the backend's start(): no answer may come */
};

luaio_t *luaio_new(const luaio_backend_t *b) {
  luaio_t *io = xcalloc(1, sizeof *io);
  if (b) io->b = *b;
  list_init(&io->reqs);
  return io;
}

static void req_unlink(ioreq_t *r) {
  list_remove(&r->node);
}

static void req_drop(ioreq_t *r) {
  REGISTER_ASSERT(list_linked(&r->node)); /* dropped once */
  if (r->io->b.cancel) r->io->b.cancel(r->io->b.ud, r->id);
  luaL_unref(r->L, LUA_REGISTRYINDEX, r->co_ref);
  req_unlink(r);
  free(r);
}

void luaio_free(luaio_t *io) {
  if (!io) return;
  list_t *n;
  while ((n = list_first(&io->reqs)))
    req_drop(list_entry(n, ioreq_t, node));
  free(io);
}

/* Drops the requests of state L (L != NULL) or of coroutine co. */
static void drop_where(luaio_t *io, const lua_State *L, const lua_State *co) {
  if (!io) return;
  for (list_t *n = io->reqs.next, *next; n != &io->reqs; n = next) {
    next = n->next;
    ioreq_t *r = list_entry(n, ioreq_t, node);
    if (L ? r->L == L : r->co == co) req_drop(r);
  }
}

void luaio_cancel(luaio_t *io, lua_State *L) {
  drop_where(io, L, NULL);
}

void luaio_cancel_co(luaio_t *io, const lua_State *co) {
  drop_where(io, NULL, co);
}

int luaio_waiting(luaio_t *io, const lua_State *co) {
  list_t *n;
  if (!io) return 0;
  list_foreach(n, &io->reqs) {
    if (list_entry(n, ioreq_t, node)->co == co) return 1;
  }
  return 0;
}

void luaio_set_current(luaio_ctx_t *ctx, lua_State *co) {
  if (ctx) ctx->current = co;
}

/* The state's context, after checking that L may do I/O now. */
static luaio_ctx_t *check_io(lua_State *L, const char *what) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_ctx);
  luaio_ctx_t *ctx = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!ctx || ctx->current != L || !lua_isyieldable(L))
    luaL_error(L,
               "%s may only be called from the event and changed hooks "
               "(records() must stay pure)",
               what);
  return ctx;
}

/* A request of the running coroutine L.  The reference is taken first: if
 * it raises, nothing C-owned exists yet. */
static ioreq_t *req_new(lua_State *L, luaio_ctx_t *ctx) {
  lua_pushthread(L);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ioreq_t *r = xcalloc(1, sizeof *r);
  r->io = ctx->io;
  r->resume = ctx->resume;
  r->resume_ud = ctx->resume_ud;
  r->co = L;
  r->co_ref = ref;
  r->id = ++ctx->io->next_id;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  r->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  list_insert_tail(&ctx->io->reqs, &r->node);
  return r;
}

/* The request could not start: forget it and return nil, why to the
 * script (nothing was yielded).  Never raises before r is freed. */
static int req_abort(lua_State *L, ioreq_t *r, const char *why) {
  luaL_unref(r->L, LUA_REGISTRYINDEX, r->co_ref);
  req_unlink(r);
  free(r);
  luaL_pushfail(L);
  lua_pushstring(L, why);
  return 2;
}

/* The backend's start() of request r; it never answers inside (luaio.h),
 * which the flag lets luaio_answer() assert. */
static int backend_start(luaio_t *io, ioreq_t *r, const iocall_t *call,
                         char *why, size_t whylen) {
  REGISTER_ASSERT(io->b.start && !io->starting);
  io->starting = 1;
  int rc = io->b.start(io->b.ud, r->id, call, why, whylen);
  io->starting = 0;
  return rc;
}

/* Hands the results to the waiting coroutine and forgets the request. */
static void req_finish(ioreq_t *r, luaio_push_fn push, void *data) {
  REGISTER_ASSERT(list_linked(&r->node)); /* in flight until now */
  lua_State *co = r->co;
  luaio_resume_fn resume = r->resume;
  void *ud = r->resume_ud;
  lua_State *L = r->L;
  int ref = r->co_ref;
  req_unlink(r);
  free(r);
  resume(ud, co, push, data); /* co is still anchored by ref */
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

static int push_error(lua_State *L, const char *msg) {
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
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

static int push_http(lua_State *L, const iocall_answer_t *a) {
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, a->status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, a->body ? a->body : "", a->body_len);
  lua_setfield(L, -2, "body");
  push_headers(L, a->headers ? a->headers : "", a->headers_len);
  lua_setfield(L, -2, "headers");
  return 1;
}

static int push_etcd(lua_State *L, const iocall_answer_t *a, int list) {
  if (list) {
    lua_createtable(L, 0, (int)a->n);
    for (size_t i = 0; i < a->n; i++) {
      lua_pushlstring(L, a->kvs[i].value, a->kvs[i].value_len);
      lua_setfield(L, -2, a->kvs[i].key);
    }
  } else if (a->n) {
    lua_pushlstring(L, a->kvs[0].value, a->kvs[0].value_len);
  } else {
    lua_pushnil(L);
  }
  return 1;
}

typedef struct {
  const iocall_answer_t *a;
  iocall_kind_t kind;
} answer_t;

static int push_answer(lua_State *L, void *data) {
  const answer_t *x = data;
  if (x->a->error) return push_error(L, x->a->error);
  if (x->kind == IOCALL_HTTP) return push_http(L, x->a);
  return push_etcd(L, x->a, x->kind == IOCALL_ETCD_LIST);
}

void luaio_answer(luaio_t *io, uint64_t id, const iocall_answer_t *a) {
  /* the backend's contract (luaio.h): never inside the start() */
  REGISTER_ASSERT(!io->starting);
  list_t *n;
  list_foreach(n, &io->reqs) {
    ioreq_t *r = list_entry(n, ioreq_t, node);
    if (r->id != id) continue;
    answer_t x = {a, r->kind};
    req_finish(r, push_answer, &x);
    return;
  }
}

/* opts.timeout in seconds: a number in [0.001, 300] (NaN and the rest are
 * refused: curl would take 0 as "no timeout"). */
static long timeout_ms(lua_State *L) {
  if (lua_getfield(L, 1, "timeout") == LUA_TNIL) return 10000;
  int isnum = 0;
  lua_Number t = lua_tonumberx(L, -1, &isnum);
  if (!isnum || !(t >= HTTP_MIN_TIMEOUT && t <= HTTP_MAX_TIMEOUT))
    luaL_error(L,
               "register.http.request: timeout must be a number of seconds "
               "from %f to %d, not %s",
               HTTP_MIN_TIMEOUT, HTTP_MAX_TIMEOUT, luaL_tolstring(L, -1, NULL));
  long ms = (long)(t * 1000 + 0.5);
  return ms > 0 ? ms : 1;
}

/* The one-line JSON that --dry-run and check print for a request. */
static void print_request(luaio_t *io, const char *method, const char *url,
                          const char *const *headers, const char *body,
                          size_t blen, buf_t *line) {
  buf_puts(line, "{\"op\":\"http\",\"method\":");
  json_escape(line, method, strlen(method));
  buf_puts(line, ",\"url\":");
  json_escape(line, url, strlen(url));
  buf_puts(line, ",\"headers\":[");
  for (const char *const *h = headers; *h; h++) {
    if (h != headers) buf_putc(line, ',');
    json_escape(line, *h, strlen(*h));
  }
  buf_puts(line, "]");
  if (body) { /* its first 4 KiB, and its size */
    buf_puts(line, ",\"body\":");
    json_escape(line, body, blen > 4096 ? 4096 : blen);
    if (blen > 4096) buf_printf(line, ",\"body_bytes\":%zu", blen);
  }
  buf_puts(line, "}\n");
  io->b.print(io->b.ud, line->data, line->len);
}

static int l_http_request(lua_State *L) {
  luaio_ctx_t *ctx = check_io(L, "register.http.request");
  luaio_t *io = ctx->io;
  if (lua_type(L, 1) == LUA_TSTRING) { /* a URL alone */
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "url");
    lua_replace(L, 1);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "url"); /* 2 */
  const char *url = luaL_optstring(L, -1, NULL);
  if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8)))
    return luaL_error(L, "register.http.request: url must be an http:// or "
                         "https:// URL");
  lua_getfield(L, 1, "body"); /* 3 */
  size_t blen = 0;
  const char *body = luaL_optlstring(L, -1, NULL, &blen);
  lua_getfield(L, 1, "method"); /* 4 */
  const char *method = luaL_optstring(L, -1, body ? "POST" : "GET");
  long tmo = timeout_ms(L); /* 5 */
  /* headers {name = value} -> "name: value" strings, kept on the stack in a
   * table (6); then an array of pointers to them that Lua owns (8) */
  lua_newtable(L); /* 6 */
  lua_Integer nh = 0;
  if (lua_getfield(L, 1, "headers") == LUA_TTABLE) { /* 7 */
    lua_pushnil(L);
    while (lua_next(L, 7)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
        const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
        if (strpbrk(k, "\r\n:") || strpbrk(v, "\r\n"))
          return luaL_error(L, "register.http.request: bad header \"%s\"", k);
        lua_pushfstring(L, "%s: %s", k, v);
        lua_rawseti(L, 6, ++nh);
      }
      lua_pop(L, 1);
    }
  }
  const char **headers =
      lua_newuserdatauv(L, (size_t)(nh + 1) * sizeof *headers, 0); /* 8 */
  for (lua_Integer i = 0; i < nh; i++) {
    lua_rawgeti(L, 6, i + 1);
    headers[i] = lua_tostring(L, -1); /* anchored in table 6 */
    lua_pop(L, 1);
  }
  headers[nh] = NULL;
  if (io && io->b.print) {
    buf_t *line = luareg_buffer(L);
    print_request(io, method, url, headers, body, blen, line);
    buf_free(line);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "status");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "body");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "printed");
    return 1;
  }
  if (!io || !io->b.has_http) return push_error(L, "no HTTP client here");
  ioreq_t *r = req_new(L, ctx);
  r->kind = IOCALL_HTTP;
  iocall_t call = {0};
  call.kind = IOCALL_HTTP;
  call.method = method;
  call.url = url;
  call.headers = headers;
  call.body = body;
  call.body_len = blen;
  call.timeout_ms = tmo;
  char why[160];
  if (backend_start(io, r, &call, why, sizeof why) < 0)
    return req_abort(L, r, why);
  return lua_yield(L, 0);
}

/* ---- etcd, read only ---- */

static int etcd_read(lua_State *L, int list) {
  luaio_ctx_t *ctx =
      check_io(L, list ? "register.etcd.list" : "register.etcd.get");
  luaio_t *io = ctx->io;
  const char *key = luaL_checkstring(L, 1);
  if (key[0] != '/') return luaL_error(L, "etcd keys start with '/'");
  if (!io || !io->b.has_etcd)
    return push_error(L, "etcd is not available here (--dry-run or check)");
  ioreq_t *r = req_new(L, ctx);
  r->kind = list ? IOCALL_ETCD_LIST : IOCALL_ETCD_GET;
  iocall_t call = {0};
  call.kind = r->kind;
  call.key = key;
  char why[160];
  if (backend_start(io, r, &call, why, sizeof why) < 0)
    return req_abort(L, r, why);
  return lua_yield(L, 0);
}

static int l_etcd_get(lua_State *L) {
  return etcd_read(L, 0);
}

static int l_etcd_list(lua_State *L) {
  return etcd_read(L, 1);
}

luaio_ctx_t *luaio_install(lua_State *L, luaio_t *io, luaio_resume_fn resume,
                           void *ud) {
  luaio_ctx_t *ctx = lua_newuserdatauv(L, sizeof *ctx, 0);
  ctx->io = io;
  ctx->current = NULL;
  ctx->resume = resume;
  ctx->resume_ud = ud;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_ctx);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "register.core");
  static const luaL_Reg fns[] = {{"http_request", l_http_request},
                                 {"etcd_get", l_etcd_get},
                                 {"etcd_list", l_etcd_list},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lua_pop(L, 2);
  return ctx;
}

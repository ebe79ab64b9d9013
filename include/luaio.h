/* luaio: the runtime's I/O as policy scripts see it, from the event and
 * changed hooks only: register.http.request and read-only etcd access
 * (register.etcd.get, register.etcd.list).
 *
 * A call suspends the hook's coroutine (lua_yield) and the loop goes on;
 * when the backend's answer is in (luaio_answer()), the owner's resume
 * function gets a function that
 * builds the results (the owner runs it on the main thread inside a
 * protected call: results allocate, and the memory cap may be reached),
 * then resumes the coroutine with them.  Nothing is ever pushed on a
 * coroutine unprotected.  A call from anywhere else (from records(), or a
 * coroutine the script made itself) is refused with a clear error, so
 * records() stays pure.  With a print function (--dry-run, `check`), HTTP
 * requests are printed as JSON lines instead of being sent.
 *
 * The I/O itself is the backend's: in the policy worker, a request to the
 * daemon, which does it (hookio.c) and sends the answer back.  Knows
 * nothing of HTTP, etcd or the reconciler. */
#ifndef REGISTER_LUAIO_H
#define REGISTER_LUAIO_H

#include <lua.h>
#include <stddef.h>

#include "iocall.h"

typedef struct luaio luaio_t;
/* Per Lua state: lives in the state's registry (Lua owns it). */
typedef struct luaio_ctx luaio_ctx_t;

/* Pushes a request's results on L; returns how many.  May raise. */
typedef int (*luaio_push_fn)(lua_State *L, void *data);
/* Resumes coroutine co of a state with the results push builds (data is
 * valid only during this call). */
typedef void (*luaio_resume_fn)(void *ud, lua_State *co, luaio_push_fn push,
                                void *data);

/* Who does the I/O.  Every member may be 0/NULL. */
typedef struct {
  /* Starts request id (a new number each time).  It never completes
   * inside this call: luaio_answer() comes later.  0, or -1 with a
   * reason (the script gets nil, reason). */
  int (*start)(void *ud, uint64_t id, const iocall_t *call, char *why,
               size_t whylen);
  void (*cancel)(void *ud, uint64_t id); /* no answer is wanted any more */
  /* set: HTTP requests are printed (line, with its newline), not sent */
  void (*print)(void *ud, const char *line, size_t len);
  int has_http, has_etcd; /* 0: "no HTTP client here", "etcd is not ..." */
  void *ud;
} luaio_backend_t;

/* b NULL: no I/O at all. */
luaio_t *luaio_new(const luaio_backend_t *b);
/* The answer to request id (ignored when it is no longer waited for):
 * resumes the coroutine that made it. */
void luaio_answer(luaio_t *io, uint64_t id, const iocall_answer_t *a);
/* Drops every outstanding request; no coroutine is resumed. */
void luaio_free(luaio_t *io);

/* Adds http_request, etcd_get and etcd_list to register.core of state L
 * (after luareg_open).  io may be NULL: the functions then fail with "no
 * I/O here".  Returns the state's context, which the registry anchors for
 * the state's life.  Raises on failure (run it protected). */
luaio_ctx_t *luaio_install(lua_State *L, luaio_t *io, luaio_resume_fn resume,
                           void *ud);
/* Marks co as the coroutine allowed to do I/O now (NULL: none).  Never
 * raises, never allocates. */
void luaio_set_current(luaio_ctx_t *ctx, lua_State *co);
/* Drops the outstanding requests of one Lua state (it is going away), or
 * of one coroutine (its call was ended); none is resumed. */
void luaio_cancel(luaio_t *io, lua_State *L);
void luaio_cancel_co(luaio_t *io, const lua_State *co);
/* Whether coroutine co waits for one of our requests. */
int luaio_waiting(luaio_t *io, const lua_State *co);

#endif

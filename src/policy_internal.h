/* Shared by the files of the policy room; not a public API.  The layers:
 * policy_hooks.c and policy_checks.c use policy.c's protected call and
 * container table; policy.c calls neither (the hooks register two
 * functions in struct policy). */
#ifndef REGISTER_POLICY_INTERNAL_H
#define REGISTER_POLICY_INTERNAL_H

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "list.h"
#include "luaio.h"
#include "policy.h"
#include "util.h"

#define MAX_HOOKS 64
#define SWEEP_MS 1000 /* how often hook calls are checked for their age */

/* A hook call in progress: a coroutine, possibly waiting for I/O. */
typedef struct hookco {
  lua_State *co;
  int ref;             /* anchors co in the registry */
  const char *name;    /* "event" or "changed" */
  uint64_t started_ms; /* for the limit on the call as a whole */
  int resuming;        /* inside lua_resume(): its answer cannot come */
  list_t node;         /* on policy.hooks */
} hookco_t;

struct policy {
  lua_State *L;
  char *name; /* file name, or "default" */
  char *dir;  /* the file's directory (require), or NULL */
  char *prefix;
  int ref_policy; /* the table the script returned */
  int ref_host;
  int ref_event, ref_changed; /* optional hooks, or LUA_NOREF */
  int has_checks;             /* the table has a checks() function */
  int render;                 /* a renderer: ref_policy has render() */

  /* limits */
  long budget;      /* of the call in progress (a render's grows with keys) */
  long budget_base; /* a render's budget, its keys apart (0: not scaled) */
  size_t budget_keys;
  size_t mem_limit;
  uint64_t time_limit_ms, hook_limit_ms;

  /* the call in progress (in_call), and why it was stopped */
  int in_call;
  lua_State *running; /* the thread the call runs on */
  long steps;
  uint64_t deadline_ns;
  int stop;                    /* 0, or POLICY_ERR_BUDGET/TIMEOUT/MEMORY */
  int sandbox_hit;             /* a forbidden function was called */
  char where[LUA_IDSIZE + 16]; /* the last position the hook saw */

  /* memory: Lua retries a refused allocation once after a full
   * collection; the same request refused twice is out of memory */
  size_t mem_used;
  const void *fail_ptr;
  size_t fail_osize, fail_nsize;
  int oom;

  buf_t trace; /* traceback of the last failure */
  policy_reason_t reason;
  luaio_t *io;
  luaio_ctx_t *ioctx; /* anchored in the registry */
  list_t hooks;       /* hookco_t: hook calls alive */
  size_t nhooks;
  uv_loop_t *loop;   /* NULL: none (register check) */
  uv_timer_t *sweep; /* ends hook calls past their limit; NULL: no loop */
  /* registered by policy_hooks.c at the first hook call (the seam is
   * one-way): policy_free() and luaio's answers go through them */
  void (*hooks_free)(policy_t *p);
  luaio_resume_fn hooks_resume;
  policy_stats_t own_stats;
  policy_stats_t *stats; /* own_stats, or the caller's (kept over reloads) */
};

/* What policy_push_container() builds a container table from. */
typedef struct {
  const json_value_t *inspect;
  const policy_check_view_t *checks; /* NULL: none (healthy) */
} policy_pushargs_t;

/* policy.c: the one protected-call helper and what it is made of. */
int policy_pcall(policy_t *p, int nargs, int nres, char *err, size_t errlen);
void policy_call_begin(policy_t *p, lua_State *L);
policy_reason_t policy_call_end(policy_t *p, lua_State *L, int st);
const char *policy_error_text(lua_State *L, int st);
void policy_failure_text(policy_t *p, const char *msg, char *err,
                         size_t errlen);
void policy_count_failure(policy_t *p);
/* A protected C function: argument 1 is a policy_pushargs_t; pushes the
 * document box and the container table. */
int policy_push_container(lua_State *L);
/* Pushes a host table of its own for a call ({ip, hostname}): one shared
 * by every call let a call for one container change what the next one
 * saw (host.ip set to "../../evil" broke every other container's
 * records).  p->ref_host is the template, never handed out. */
void policy_push_host(lua_State *L, policy_t *p);

/* Runs fn with the container table of inspect (and checks) on top of the
 * stack, its document box anchored below and cleared after: the document
 * is never read once this returns.  fn gets the container's id; it writes
 * its own error. */
typedef int (*policy_container_fn)(policy_t *p, const char *id, void *ud,
                                   char *err, size_t errlen);
int policy_with_container(policy_t *p, const json_value_t *inspect,
                          const policy_check_view_t *checks,
                          policy_container_fn fn, void *ud, char *err,
                          size_t errlen);

#endif

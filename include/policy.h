/* policy: the Lua state that decides what to write.
 *
 * A policy script returns a table; `records(container, host)` (required)
 * returns key -> value (string as is, table JSON-encoded) or nil/{} for
 * "nothing"; `prefix(host)` (optional) names the subtree this host owns.
 * The script runs in a sandbox (sandbox.h).  Every call into Lua goes
 * through one protected-call helper with a traceback, an instruction
 * budget, a wall-clock limit and a memory cap that the script can neither
 * catch nor remove: a script error costs that one call, never the daemon.
 * A single long C call (a pathological string.find) cannot be interrupted:
 * see docs/policy.md. */
#ifndef REGISTER_POLICY_H
#define REGISTER_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "checks.h"
#include "json.h"
#include "luaio.h"
#include "records.h"
#include "util.h"

typedef struct policy policy_t;

#define POLICY_DEFAULT_TIME_LIMIT_MS 1000
#define POLICY_DEFAULT_HOOK_LIMIT_MS 60000

/* Why a call into the policy failed (the `reason` label of
 * register_policy_errors_total). */
typedef enum {
  POLICY_ERR_ERROR,   /* the script raised an error */
  POLICY_ERR_BUDGET,  /* instruction budget exceeded */
  POLICY_ERR_TIMEOUT, /* wall-clock limit exceeded */
  POLICY_ERR_MEMORY,  /* memory cap reached */
  POLICY_ERR_SANDBOX, /* a forbidden function was called */
  POLICY_ERR_CRASH,   /* the policy worker died (a signal, an exit) */
  POLICY_ERR_REASONS
} policy_reason_t;

/* Counters that outlive one policy (a reload replaces the policy). */
typedef struct {
  unsigned long errors[POLICY_ERR_REASONS];
  unsigned long hooks_dropped;
} policy_stats_t;

typedef struct {
  const char *file; /* NULL: the embedded default policy */
  const char *host_ip;
  const char *hostname;
  long budget;      /* instructions per call; 0 = default (10M) */
  size_t mem_limit; /* bytes; 0 = default (64 MiB) */
  luaio_t *io;      /* I/O for the hooks; NULL: none */
  /* wall clock per call (records, load, each hook resume); 0 = default */
  uint64_t time_limit_ms;
  /* a hook call as a whole, its I/O waits included; 0 = default.  Needs
   * loop (without one, hook calls are not timed as a whole). */
  uint64_t hook_limit_ms;
  uv_loop_t *loop;       /* NULL: none (register check) */
  policy_stats_t *stats; /* NULL: the policy's own */
  /* the script's text, instead of reading file (which then only names
   * it); for tests and fuzzing */
  const char *source;
  size_t source_len;
  /* a renderer (register watch), not a policy: the script returns a table
   * with render(kv, ctx), or the function itself, or defines a global
   * render; records() and the rest are not looked for */
  int render;
} policy_opts_t;

/* A Docker event as the event hook sees it (strings may be NULL). */
typedef struct {
  const char *type, *action, *id, *image;
  const json_value_t *attributes;
  long long time, time_nano;
  const char *health_status; /* health_status events only */
} policy_event_t;

/* Loads and runs the script (under the limits).  NULL with a one-line
 * reason in err (the full traceback, when there is one, is logged at
 * debug level). */
policy_t *policy_new(const policy_opts_t *o, char *err, size_t errlen);
void policy_free(policy_t *p);

/* The owned prefix ("/registered/10.0.0.1"), or NULL without prefix(). */
const char *policy_prefix(const policy_t *p);
const char *policy_name(const policy_t *p);

/* The state of a container's checks, as records() sees it in
 * container.checks (and container.healthy: every check passing). */
typedef struct {
  const char *port, *type; /* "80/tcp", "tcp" / "http" */
  const char *state;       /* "pending", "passing", "failing" */
  const char *reason;      /* the last result, or "" */
  const char *target;      /* "127.0.0.1:32768", or "" */
} policy_check_state_t;

/* What records() sees of a container besides its document: its checks,
 * and whether it got its stop signal (container.stopping: Docker asked it
 * to stop; it is still running, draining). */
typedef struct {
  const policy_check_state_t *v;
  size_t n;
  int stopping;
} policy_check_view_t;

/* The checks one container asks for (checks() converted).  Owns its
 * strings; policy_checks_free() releases it. */
#define POLICY_MAX_CHECKS 64
typedef struct {
  checks_spec_t *v;
  size_t n;
  char **strs;
  size_t nstrs, scap;
} policy_checks_t;

/* Whether the policy has a checks(container, host) function. */
int policy_has_checks(const policy_t *p);
/* Runs checks() for one inspect document (nothing when the policy has
 * none: out empty).  0, or -1 with a one-line reason (the call failed, or
 * a check is malformed: then out is empty and the container's checks
 * should stay as they were). */
int policy_checks(policy_t *p, const json_value_t *inspect,
                  policy_checks_t *out, char *err, size_t errlen);
void policy_checks_free(policy_checks_t *pc);
/* Runs records() for one inspect document.  0: out holds the valid records
 * (invalid ones are logged, named by container and key, and skipped).
 * -1: the call failed as a whole (err says why); out is empty. */
int policy_records(policy_t *p, const json_value_t *inspect, records_t *out,
                   char *err, size_t errlen);
/* The same, with the container's checks in container.checks and
 * container.healthy (checks NULL: none, healthy). */
int policy_records_checked(policy_t *p, const json_value_t *inspect,
                           const policy_check_view_t *checks, records_t *out,
                           char *err, size_t errlen);
/* The traceback of the last failed call, or "". */
const char *policy_traceback(const policy_t *p);
/* Why the last failed call failed, and that reason's label. */
policy_reason_t policy_last_reason(const policy_t *p);
const char *policy_reason_name(policy_reason_t r);

/* Optional hooks, each run in its own coroutine so that it may wait for
 * register.http / register.etcd; failures are logged, never fatal.  At
 * most 64 hook calls are alive at once: more are dropped and counted.
 * Each resume runs under the per-call limits; a call as a whole (waits
 * included) is ended past hook_limit_ms. */
int policy_has_hook(const policy_t *p, const char *name);
void policy_hook_event(policy_t *p, const policy_event_t *ev);
void policy_hook_changed(policy_t *p, const char *op, const char *key,
                         const char *value, size_t vlen);
/* Hook calls alive (running or waiting for I/O). */
size_t policy_hooks_alive(const policy_t *p);
/* Ends the hook calls that have run (waiting included) past
 * hook_limit_ms; a policy with a loop does it from its own timer, the
 * policy worker when the daemon's tick comes. */
void policy_hooks_sweep(policy_t *p);
/* A full garbage collection (when idle, before returning memory). */
void policy_gc(policy_t *p);
/* Hook calls dropped because too many were alive, and failed calls of
 * every reason (both from the stats, so kept over reloads when the
 * caller's stats are used). */
unsigned long policy_hooks_dropped(const policy_t *p);
unsigned long policy_errors(const policy_t *p);

/* ---- renderers (register watch) ---- */

/* One key under the watched prefix and its value. */
typedef struct {
  const char *key, *value;
  size_t klen, vlen;
} policy_kv_t;

/* What render() gets besides the keys: ctx.prefix, ctx.revision, ctx.api
 * ("v2" or "v3"), ctx.keys (the keys, sorted) and ctx.host ({ip,
 * hostname}, as a policy's host). */
typedef struct {
  const char *prefix;
  int64_t revision;
  const char *api;
} policy_render_ctx_t;

/* A rendered file is at most this long; longer is a failed render. */
#define POLICY_MAX_RENDER (16u << 20)

/* Runs render(kv, ctx) on kv[0..n) (sorted by key, no duplicates): 0 and
 * the text in out (replaced), or -1 with a one-line reason (the call
 * failed, or returned something other than a string, or a string over
 * POLICY_MAX_RENDER). */
int policy_render(policy_t *p, const policy_kv_t *kv, size_t n,
                  const policy_render_ctx_t *ctx, buf_t *out, char *err,
                  size_t errlen);
/* Whether the script was loaded as a renderer. */
int policy_is_renderer(const policy_t *p);

/* What one record may be, and what one container's records() may return
 * as a whole.  A key is at most POLICY_MAX_KEY bytes and a value at most
 * POLICY_MAX_VALUE (a record over either is rejected, the rest kept).  A
 * call that returns more than POLICY_MAX_RECORDS entries, or records of
 * more than POLICY_MAX_RECORD_BYTES (keys and values together), fails as a
 * whole: it is stopped while its table is read, at the first entry past a
 * cap, so that no one container can delay another's registration.  The
 * default policy makes one key per container (about 150 bytes of value per
 * published binding); 1000 keys is a key per port for a range of 1000
 * published ports. */
#define POLICY_MAX_KEY 4096
#define POLICY_MAX_VALUE (1u << 20)
#define POLICY_MAX_RECORDS 1000
#define POLICY_MAX_RECORD_BYTES (1u << 20)

/* Checks a key: absolute, no empty, "." or ".." segments, no trailing '/',
 * at most POLICY_MAX_KEY bytes, no control characters, valid UTF-8 (RFC
 * 3629: no overlong forms, no surrogates, nothing past U+10FFFF; etcd's
 * JSON APIs carry nothing else).  0 or -1 with a reason. */
int policy_check_key(const char *key, size_t len, char *err, size_t errlen);

#endif

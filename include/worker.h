/* worker: the policy as the daemon sees it, run in a process of its own.
 *
 * Every policy call (loading, checks(), records(), the hooks' runs) is a
 * request to a policy worker process (register-worker, worker_main.c): a
 * policy may crash, hang or bloat only that process.  The daemon keeps all
 * I/O and all state; the worker asks it for the hooks' I/O (hookio.c),
 * for the modules it requires, and sends its log lines through it.
 *
 * The containers' updates are pipelined (worker_update_start, below):
 * sent at once, answered from the loop, so that the daemon's I/O goes on
 * while the worker computes.  Every other call blocks the caller until the
 * worker's reply, for at most the policy's wall-clock limit plus a grace
 * period.  The daemon enforces from outside, per call or update, what
 * nothing in the worker can stop:
 *   - past the wall clock, the worker is killed (SIGKILL): reason timeout;
 *   - its whole memory (C libraries included): an address-space rlimit,
 *     and its resident size watched during each call: reason memory;
 *   - a death of any other kind: reason crash (sandbox for a forbidden
 *     system call);
 *   - log lines: at most WORKER_LOG_PER_CALL per call and
 *     WORKER_LOG_PER_SEC per second, the rest counted and dropped; the
 *     runtime's own lines (a hook's failure) have WORKER_RUNTIME_LOG_PER_CALL
 *     per call of their own.
 * A death costs the call that was running; the next call gets a fresh
 * worker (the policy loaded again, its globals and hook calls lost).  A
 * worker that dies again before any call succeeded is restarted with a
 * backoff (1 s doubling to 30 s); calls meanwhile fail at once with the
 * last death's reason (except a container's whose calls never ended a
 * worker: it gets one), and on_restart is called (from the loop) when a
 * new worker can be tried.
 *
 * Replies are not trusted: records and checks are validated again here
 * (keys, sizes, caps, order), and a malformed frame is a crash. */
#ifndef REGISTER_WORKER_H
#define REGISTER_WORKER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "checks.h"
#include "hookio.h"
#include "json.h"
#include "log.h"
#include "policy.h"
#include "records.h"

typedef struct worker worker_t;

#define WORKER_LOG_PER_CALL 100
#define WORKER_LOG_PER_SEC 200
#define WORKER_RUNTIME_LOG_PER_CALL 16
/* the whole worker may use this much more than the Lua heap's cap */
#define WORKER_MEM_HEADROOM (64u << 20)
/* 1 in an AddressSanitizer build (GCC says so one way, clang another):
 * the worker then needs more memory, sigaltstack and its stderr */
#if defined(__SANITIZE_ADDRESS__)
#define WORKER_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WORKER_UNDER_ASAN 1
#endif
#endif
#ifndef WORKER_UNDER_ASAN
#define WORKER_UNDER_ASAN 0
#endif

/* the worker's exit status when a C library exits on a failed allocation
 * (lua-cjson does: exit(-1) with errno ENOMEM) */
#define WORKER_EXIT_NOMEM 86
/* past the wall-clock limit, before the kill */
#define WORKER_GRACE_MS 500

/* Counters of worker processes (kept over reloads by the caller). */
typedef struct {
  unsigned long spawned;
  unsigned long deaths[POLICY_ERR_REASONS]; /* by reason */
  unsigned long log_dropped;
} worker_stats_t;

typedef struct {
  const char *file; /* NULL: the embedded default policy */
  const char *host_ip, *hostname;
  long budget;            /* instructions per call; 0: default */
  size_t mem_limit;       /* the Lua heap's cap; 0: 64 MiB */
  uint64_t time_limit_ms; /* 0: default */
  uint64_t hook_limit_ms; /* 0: default */
  uv_loop_t *loop;        /* NULL: none (register check): no hook I/O */
  hookio_t *io;           /* the hooks' I/O; NULL: none */
  int has_etcd;           /* io can read etcd */
  int print_only;         /* hooks' HTTP requests printed on stdout, not sent */
  /* names of the variables the worker's environment keeps
   * (--policy-env, comma-separated); NULL: an empty environment */
  const char *env;
  const char *path; /* the worker binary; NULL: worker_path() */
  /* the script's text instead of reading file (which then only names it);
   * for tests and fuzzing */
  const char *source;
  size_t source_len;
  int render; /* a renderer (register watch): see policy_opts_t.render */
  /* `require` finds only the embedded modules: the policy has no
   * directory on this host (the fleet's, from etcd) */
  int no_files;
  /* keys and directories (NULL-terminated; copied) that no record may be
   * at or under: register's own (the fleet's policy key, the hosts'
   * reports, the write fences).  Such a record is dropped, logged and
   * counted as rejected, so that a reload with one is refused. */
  const char *const *reserved;
  policy_stats_t *stats;  /* NULL: the worker's own; else kept over reloads */
  worker_stats_t *wstats; /* NULL: the worker's own */
  log_level_t log_level;
  /* set (by a signal handler): the daemon is stopping; a call in
   * progress is abandoned (the worker killed), later ones fail at once */
  volatile sig_atomic_t *interrupted;
  /* a new worker can be tried after a backoff (from the loop) */
  void (*on_restart)(void *ud);
  void *ud;
} worker_opts_t;

/* Starts a worker and loads the policy in it.  NULL with a one-line
 * reason in err. */
worker_t *worker_new(const worker_opts_t *o, char *err, size_t errlen);
/* The same, with why a start failed in *reason (POLICY_ERR_TIMEOUT: the
 * policy's load ran past the wall clock; POLICY_ERR_ERROR as well for a
 * file that cannot be read). */
worker_t *worker_new_why(const worker_opts_t *o, policy_reason_t *reason,
                         char *err, size_t errlen);
/* Kills the worker; outstanding hook I/O is cancelled, and every update
 * not yet done gets its done() here, with cancelled set.  Its timers are
 * closed (their memory goes in their close callbacks).  Not from a
 * done(). */
void worker_free(worker_t *w);

/* The binary: next to the running one (a build tree), else the installed
 * one (REGISTER_LIBEXECDIR). */
const char *worker_path(void);

const char *worker_prefix(const worker_t *w); /* NULL without prefix() */
/* The prefix that the policy po starts gives a made-up other host
 * (192.0.2.1, or .2 when po's host is .1; hostname "register-probe"),
 * loaded in a worker of its own with no environment and no I/O, so that
 * nothing of po's own worker sees the call: malloc'd, or NULL when it
 * gives none or does not load for that host (nothing is said then).  A
 * prefix that holds, or lies inside, the host's own is every host's: each
 * would delete the others' keys as stale. */
char *worker_prefix_elsewhere(const worker_opts_t *po);
const char *worker_name(const worker_t *w);
const char *worker_sha256(const worker_t *w); /* of the source, hex, or "" */
int worker_has_checks(const worker_t *w);
int worker_has_hook(const worker_t *w, const char *name);
pid_t worker_pid(const worker_t *w); /* 0 when none runs */
/* 1 when a call for container id ended a worker of this policy and none
 * has succeeded since (its quarantine may be over: it is tried again) */
int worker_quarantined(const worker_t *w, const char *id);
/* 1 while a worker that keeps dying waits for its backoff to end */
int worker_backing_off(const worker_t *w);

/* As policy_checks() and policy_records_checked() (policy.h). */
int worker_checks(worker_t *w, const json_value_t *inspect,
                  policy_checks_t *out, char *err, size_t errlen);
/* worker_checks(), and when checks() asks for no checks, records() as
 * worker_records_checked() with no checks (and `stopping`) in the same
 * round trip: *have 1 (recs filled) or -1 (records() failed: rerr, and
 * worker_last_reason()); *have 0: records() was not run (checks() failed,
 * asked for checks, or the policy has none).  The return is checks()'s. */
int worker_checks_records(worker_t *w, const json_value_t *inspect,
                          int stopping, policy_checks_t *out, records_t *recs,
                          int *have, char *rerr, size_t rerrlen, char *err,
                          size_t errlen);
int worker_records_checked(worker_t *w, const json_value_t *inspect,
                           const policy_check_view_t *checks, records_t *out,
                           char *err, size_t errlen);
/* ---- pipelined updates: the daemon's path for containers ----
 * worker_update_start() sends one container's update (checks() and, when
 * it asks for none, records() with no checks in the same request; for a
 * policy without checks(), records() with no checks) and returns at once.
 * The worker answers in order while the daemon's loop goes on, and done()
 * is called from the loop, never inside this call, exactly once per
 * update, in the order they were started.  At most 32 updates (128 KiB
 * of documents) are sent and unanswered: past that, starting one waits
 * for the oldest reply.  Each one has the limits of a synchronous call:
 * its wall clock runs from the reply before it; a death costs the one
 * that was running (its container quarantined) and those after it go to
 * the next incarnation.  A synchronous call (the functions above, hooks)
 * first waits for the replies of those sent: their done() still comes
 * from the loop.  The outcome is as worker_checks_records()'s; u and
 * what it holds are valid during done() only. */
typedef struct {
  int cancelled; /* worker_free() or worker_drop() came first: nothing else is
                    set */
  int rc;        /* checks(): 0, or -1 (err, reason) */
  policy_checks_t checks; /* rc 0: what checks() asked for (n may be 0) */
  int have; /* records(): 1 (recs), -1 (failed: rerr, reason), 0: not run
               (checks() failed or asked for checks) */
  records_t recs;
  policy_reason_t reason;
  const char *err, *rerr;
} worker_update_t;
typedef void (*worker_update_cb)(void *ud, const worker_update_t *u);
void worker_update_start(worker_t *w, const json_value_t *inspect, int stopping,
                         worker_update_cb done, void *ud);
/* The update's inspect document, parsed again from the request at the
 * first ask (for checks_set() and further calls); NULL if it cannot be.
 * Valid during done(). */
const json_value_t *worker_update_inspect(const worker_update_t *u);
/* after(ud, 0) once every update started before this call is done, from
 * the loop (never inside this call), in order with the updates' done();
 * after(ud, 1) if the worker is freed first (worker_hand_over() moves it
 * on instead).  The loop is not held while they are answered. */
typedef void (*worker_after_cb)(void *ud, int cancelled);
void worker_after(worker_t *w, worker_after_cb after, void *ud);
/* The updates started for container id and not yet done are cancelled:
 * their done() sees u->cancelled, from the loop (the container is gone).
 * Those not yet sent to the worker are not sent. */
void worker_drop(worker_t *w, const char *id);
/* A reload's commit: w's updates not yet answered are not waited for.
 * Those answered are done now (under w); each one still on its way is
 * cancelled (its done() sees it cancelled when w is freed) after
 * each(ud, id) has been told its container, to be evaluated again under
 * `to`; worker_after() barriers move to `to`'s queue, in order.  `to` is
 * the fresh worker, with nothing started yet.  Not from a done(). */
typedef void (*worker_each_cb)(void *ud, const char *id);
void worker_hand_over(worker_t *w, worker_t *to, worker_each_cb each, void *ud);

/* As policy_render() (policy.h), in the worker; err is one line. */
int worker_render(worker_t *w, const policy_kv_t *kv, size_t n,
                  const policy_render_ctx_t *ctx, buf_t *out, char *err,
                  size_t errlen);
const char *worker_traceback(const worker_t *w);
policy_reason_t worker_last_reason(const worker_t *w);

/* The hooks: each run is a call; their I/O is done here and answered from
 * the loop; a 1 s tick ends hook calls past their limit. */
void worker_hook_event(worker_t *w, const policy_event_t *ev);
void worker_hook_changed(worker_t *w, const char *op, const char *key,
                         const char *value, size_t vlen);
void worker_gc(worker_t *w);
unsigned long worker_hooks_dropped(const worker_t *w);
unsigned long worker_errors(const worker_t *w);

/* The view of container id's checks in ck (NULL: none), in buf (cap
 * entries; POLICY_MAX_CHECKS is enough).  Its strings are ck's: use it at
 * once. */
void worker_check_view(const checks_t *ck, const char *id,
                       policy_check_state_t *buf, size_t cap,
                       policy_check_view_t *view);

#endif

/* checks: active health checks of containers' ports, as nerve does them,
 * run in the libuv loop.
 *
 * Each container (by id) has a list of checks.  A check is a TCP connect
 * (uv_tcp_connect) or an HTTP request (through the daemon's curl multi,
 * http.h) against a target: the published binding of the check's port
 * (wildcards checked on loopback) or an explicit address.  It runs every
 * interval_ms with its own timeout; after `rise` consecutive successes it is
 * passing, after `fall` consecutive failures failing (before either it is
 * pending).  Each change of state is logged in one line and reported to the
 * transition callback, always from the loop.
 *
 * A TCP check passes when the connection is made and the peer does not
 * close it within 100 ms: docker-proxy, which holds published ports reached
 * on loopback, accepts even when nothing listens in the container, then
 * closes.  An HTTP check sends `Connection: close` (no idle connection per
 * check in the shared curl cache) and passes on a status in the range.
 *
 * At most max_inflight checks run at once; the rest wait in a FIFO queue.
 * A check's first run is at a random offset in [0, interval), so checks of
 * many containers do not fire together; runs start on a grid of ticks
 * (interval/20, at most 50 ms) so that checks due together share a wake-up.
 * The next run is due one interval after the last was due.
 *
 * checks_set() replaces a container's list: checks whose spec did not
 * change keep their state and schedule; a changed check of a port (another
 * interval, rise, path, target...) starts from the state of the check it
 * replaces (make-before-break: a passing one stays passing until the new
 * check fails `fall` times), and one line "checks reset" is logged.
 * checks_remove() stops them all; a check in flight is cancelled (its handles
 * are freed in close callbacks, no callback follows). */
#ifndef REGISTER_CHECKS_H
#define REGISTER_CHECKS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http.h"
#include "json.h"
#include "util.h"

typedef struct checks checks_t;

typedef enum { CHECKS_TCP, CHECKS_HTTP } checks_type_t;

typedef enum {
  CHECKS_PENDING, /* neither rise successes nor fall failures yet */
  CHECKS_PASSING,
  CHECKS_FAILING
} checks_state_t;

/* One check, as the policy's checks() asks for it.  Strings belong to the
 * caller; checks_set() copies what it keeps.  checks_spec_init() fills in
 * the defaults noted here. */
typedef struct {
  const char *port;    /* "80/tcp": the container's private port (required) */
  checks_type_t type;  /* CHECKS_TCP (default) or CHECKS_HTTP */
  const char *path;    /* http: request path, "/" by default */
  const char *method;  /* http: "GET" by default (HEAD is not supported) */
  int status_min;      /* http: a passing status is in [min, max]; */
  int status_max;      /*       200 and 399 by default */
  const char *host;    /* http: Host header; NULL: the target's host:port */
  long interval_ms;    /* between runs; 5000 by default, >= 100 */
  long timeout_ms;     /* per run, <= interval_ms; 2000 by default, >= 100 */
  int rise;            /* consecutive successes to pass; 1 by default */
  int fall;            /* consecutive failures to fail; 1 by default */
  const char *address; /* NULL: the port's published binding; else a
                          network name or a literal IP, checked on the
                          private port (for unpublished ports) */
  /* The target.  NULL: checks_set() resolves it from the inspect document
   * with checks_resolve(); set: used as is (tests, callers that resolved
   * it themselves). */
  const char *target_host; /* "127.0.0.1", "::1", "172.17.0.2" */
  int target_port;
} checks_spec_t;

/* What a check looks like now, for container.checks.  The strings point
 * into the module and stay valid until the next checks_set() or
 * checks_remove() for that container, or until the check runs again. */
typedef struct {
  const char *port; /* "80/tcp" */
  const char *type; /* "tcp" / "http" */
  checks_state_t state;
  const char *reason; /* last result: "connected", "HTTP 200", "HTTP 503",
                         "timeout after 2000 ms", "connection refused",
                         "connection closed at once" (tcp), "connection
                         closed without a response" (http), "80/tcp is not
                         published ..."; "" before the first run */
  const char *target; /* "127.0.0.1:32768", "[::1]:80", or "" when the
                         target could not be resolved */
  uint64_t runs;      /* completed runs */
} checks_info_t;

/* Called from the loop (never inside checks_set/checks_remove) once a
 * check changes state.  id and reason are copies that live until the
 * callback returns; the callback may call checks_set() and checks_remove()
 * (for any container), but not checks_free(). */
typedef void (*checks_transition_cb)(void *ud, const char *id, size_t index,
                                     checks_state_t old_state,
                                     checks_state_t new_state,
                                     const char *reason);

typedef struct {
  uv_loop_t *loop;
  http_t *http;     /* the daemon's curl multi; NULL: http checks fail */
  int max_inflight; /* checks running at once; 0 = 32 */
  /* Where a check may connect.  A target on this host is always allowed:
   * loopback, 0.0.0.0 and ::, host_ip, and the container's own addresses
   * in its inspect document (its published bindings' HostIp, its
   * IPAddress and GlobalIPv6Address on every network).  Any other target
   * must be within allow; else the check never connects and fails with
   * "target 10.9.9.9 is not on this host (allow it with --check-allow)". */
  const char *host_ip; /* --host-ip, or NULL */
  const char *allow;   /* --check-allow: comma-separated CIDRs, or NULL
                          (none); one that does not parse allows nothing
                          beyond this host, and is logged */
  checks_transition_cb on_transition;
  void *ud;
} checks_opts_t;

/* Statistics for /metrics. */
#define CHECKS_BUCKETS 12
extern const double checks_buckets[CHECKS_BUCKETS]; /* seconds, ascending */

typedef struct {
  uint64_t by_state[3];    /* checks now pending / passing / failing */
  uint64_t transitions[3]; /* transitions into pending(0)/passing/failing */
  uint64_t runs[2][2];     /* [type][0 failed, 1 succeeded] */
  uint64_t buckets[2][CHECKS_BUCKETS]; /* [type] cumulative, as Prometheus */
  uint64_t count[2];                   /* [type] runs timed */
  double sum[2];                       /* [type] seconds */
  size_t inflight, queued;
  size_t containers;
} checks_stats_t;

checks_t *checks_new(const checks_opts_t *opts);
/* Stops every check; the memory goes with the loop's close callbacks (run
 * the loop once more before uv_loop_close).  Call it before http_free() of
 * the http_t it was given (it cancels requests there). */
void checks_free(checks_t *ck);

/* Defaults, as noted in checks_spec_t. */
void checks_spec_init(checks_spec_t *s);
/* The shortest interval and timeout a check may have. */
#define CHECKS_MIN_MS 100
/* The longest path, and host or address, a check may have (bytes). */
#define CHECKS_MAX_PATH 4096
#define CHECKS_MAX_NAME 255

/* 0, or -1 with a one-line reason ("check interval of 1 ms is below the
 * minimum of 100 ms", ...). */
int checks_spec_validate(const checks_spec_t *s, char *err, size_t errlen);

/* Replaces the checks of container `id` (copied) with specs[0..n) (each
 * must validate; -1 and a reason otherwise, nothing changed).  inspect:
 * the container's inspect document, for specs without target_host (may be
 * NULL when every spec has one).  A spec whose target cannot be resolved
 * is kept as a check that fails with the reason ("80/tcp is not
 * published"), and so is one whose target is neither on this host nor
 * allowed (checks_opts_t).  A spec equal to a current one (same fields and
 * target) keeps that check's state and schedule.  n == 0 is checks_remove(). */
int checks_set(checks_t *ck, const char *id, const json_value_t *inspect,
               const checks_spec_t *specs, size_t n, char *err, size_t errlen);
/* Stops and forgets the checks of a container (in-flight runs are
 * cancelled; no callback follows).  Unknown ids are ignored. */
void checks_remove(checks_t *ck, const char *id);

/* Number of checks of a container (0 if unknown). */
size_t checks_count(const checks_t *ck, const char *id);
/* The i-th check of a container; -1 if there is none. */
int checks_get(const checks_t *ck, const char *id, size_t i,
               checks_info_t *out);
/* 1 when every check of the container is passing (also when it has none),
 * else 0. */
int checks_healthy(const checks_t *ck, const char *id);
const char *checks_state_name(checks_state_t s);
/* "N/tcp" with N in 1..65535: N, or -1. */
int checks_port_number(const char *port);

void checks_stats(const checks_t *ck, checks_stats_t *out);
/* Appends the Prometheus text of the statistics (register_checks,
 * register_check_transitions_total, register_check_runs_total,
 * register_check_duration_seconds, register_checks_queued). */
void checks_metrics(const checks_t *ck, buf_t *out);

/* The target of a check: from an inspect document (the object, or the
 * array `docker inspect` prints) and a port "80/tcp", the first published
 * binding of that port; HostIp "0.0.0.0" or "" becomes 127.0.0.1, "::"
 * becomes ::1.  With `address` (non-NULL, non-empty): a literal IP is used
 * as is, else the container's IPAddress (or GlobalIPv6Address) on the
 * network of that name; the private port is checked then.  Writes the host
 * (without brackets) and port; 0, or -1 with a one-line reason. */
int checks_resolve(const json_value_t *inspect, const char *port,
                   const char *address, char *host, size_t hostlen,
                   int *out_port, char *err, size_t errlen);

#endif

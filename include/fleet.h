/* fleet: the daemon follows the fleet's policy kept in etcd at one key
 * (--policy-key KEY, the document policydoc.h describes).
 *
 * It reads KEY at start and then watches it (v2 and v3).  The revision the
 * document offers this host (stable, or the canary's) is applied only if
 *   - its signature verifies with a key of --policy-pubkey FILE (without
 *     that flag, only with --policy-unsigned, which is said loudly);
 *   - the owner's apply() takes it: it loads in a fresh worker and runs on
 *     every current container without making things worse (reload.c's
 *     rule), then replaces the policy in force (make-before-break).
 * Anything else (a failed signature, a revision that does not load or
 * fails where the policy in force succeeds, KEY deleted, a corrupted or
 * oversized document) keeps the policy in force and says why: a log line,
 * the host's report, metrics.
 *
 * The last revision applied is kept in --state-dir (a file written
 * atomically, 0600): a host that starts while etcd is down starts with it.
 *
 * The host's report (policydoc_status_t) is handed to the owner's
 * publish() whenever it changes (and its key count every 30 s), which
 * writes it on the host's lease or TTL.
 *
 * A refused revision is not tried again until the document changes (its
 * generation), SIGHUP (fleet_reread) or a restart.
 *
 * Knows nothing of Docker or the reconciler: apply, publish and the key
 * count are the owner's (app.c). */
#ifndef REGISTER_FLEET_H
#define REGISTER_FLEET_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "etcd.h"
#include "policydoc.h"

typedef struct fleet fleet_t;

/* What came of trying a revision. */
typedef enum {
  FLEET_APPLIED,
  FLEET_REFUSED,
  /* refused, every failure a call past the wall clock (--policy-timeout):
   * a policy that hangs, or a host too loaded to run it in time; tried
   * again after a backoff while it is still the one offered */
  FLEET_TIMED_OUT,
  FLEET_BUSY /* not tried (another reload runs, Docker is away): shortly */
} fleet_outcome_t;

typedef struct {
  uv_loop_t *loop;
  etcd_t *etcd;
  const char *key;       /* --policy-key */
  const char *host_ip;   /* which revision is this host's, and its report */
  const char *state_dir; /* --state-dir */
  const char *pubkey;    /* --policy-pubkey FILE, or NULL */
  int allow_unsigned;    /* --policy-unsigned */
  /* Try source (len bytes; name: how logs call it) and put it in force if
   * it passes.  0: started, the answer comes later (from the loop) through
   * fleet_tried(); -1: could not start (err: one line; *outcome:
   * FLEET_BUSY when another reload runs, tried again shortly, or
   * FLEET_REFUSED, FLEET_TIMED_OUT). */
  int (*apply)(void *ud, const char *source, size_t len, const char *name,
               char *err, size_t errlen, fleet_outcome_t *outcome);
  /* Write the report (value: JSON) at key, on the host's lease or TTL. */
  void (*publish)(void *ud, const char *key, const char *value, size_t len);
  /* This host's keys in etcd, for the report. */
  uint64_t (*keys)(void *ud);
  void *ud;
} fleet_opts_t;

/* NULL with one line in err (the public key file). */
fleet_t *fleet_new(const fleet_opts_t *o, char *err, size_t errlen);
/* Cancels its requests and timers (their memory goes in close callbacks). */
void fleet_free(fleet_t *f);

/* The revision kept in --state-dir, checked as one from etcd would be
 * (sha256, signature): 1 with its source and a name (fleet's strings,
 * valid until fleet_started()); 0 when there is none or it is not usable
 * (logged). */
int fleet_cached(fleet_t *f, const char **source, size_t *len,
                 const char **name);
/* What the daemon started with: in_force 1 when it is the cached revision
 * (fleet_cached), 0 for its own --policy or the default. */
void fleet_started(fleet_t *f, int in_force);
/* Reads KEY and follows it.  Once. */
void fleet_start(fleet_t *f);
/* The answer to apply(): FLEET_APPLIED, or _REFUSED or _TIMED_OUT and why
 * (one line). */
void fleet_tried(fleet_t *f, fleet_outcome_t outcome, const char *why);
/* The host is in sync (its keys written): the report's key count again,
 * at once (a report published before the first sync said 0). */
void fleet_synced(fleet_t *f);
/* SIGHUP: the public keys read again, KEY read again, a refused revision
 * tried again. */
void fleet_reread(fleet_t *f);

/* 1 once KEY has been read and what it offers is decided (applied,
 * refused, the same as in force, or no policy there), with no read or try
 * under way or waiting: --once ends only then. */
int fleet_settled(const fleet_t *f);

/* For /metrics and /healthz. */
typedef struct {
  const char *key;
  int64_t revision, offered, generation;
  const char *state; /* policydoc_state_name() */
  const char *error; /* or NULL */
  int allow_unsigned;
  uint64_t applied, refused; /* revisions applied, refused since start */
  /* the last write of the --state-dir cache failed: why (one line), or
   * NULL; a restart while etcd is down would start with the host's own
   * policy */
  const char *cache_error;
} fleet_view_t;
void fleet_view(const fleet_t *f, fleet_view_t *v);

#endif

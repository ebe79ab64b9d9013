/* reconcile: the only code that writes to etcd, and the only owner of
 * "what was written".
 *
 * For every key it keeps the owners that produce it (containers, newest
 * first: the newest owner's value wins) and what etcd holds as far as it
 * knows.  A key whose owners all go is deleted, whatever the policy says
 * now.  Work is a queue of keys, each at most once, so memory is bounded by
 * the number of keys, never by the number of events; requests run with a
 * bounded concurrency, and failures back off and retry.
 *
 * Nothing under the owned prefix is written before the prefix has been
 * listed (start-up reconciles instead of wiping), and no key that this
 * process never owned is deleted before Docker's truth is complete. */
#ifndef REGISTER_RECONCILE_H
#define REGISTER_RECONCILE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "etcd.h"
#include "records.h"

typedef struct reconcile reconcile_t;

typedef struct {
  uv_loop_t *loop;
  etcd_t *etcd;       /* NULL with dry_run */
  const char *prefix; /* owned subtree, or NULL */
  long ttl;           /* seconds; 0 = keys never expire */
  int max_inflight;   /* 0 = 64 */
  int dry_run;        /* print JSON lines on stdout instead of writing */
  /* after etcd acknowledged a write ("put") or delete ("delete") */
  void (*changed)(void *ud, const char *op, const char *key, const char *value,
                  size_t vlen);
  /* each time everything known has reached etcd */
  void (*converged)(void *ud);
  void *ud;
} reconcile_opts_t;

typedef struct {
  size_t keys;       /* keys some container produces */
  size_t containers; /* containers with at least one record */
  size_t queued, inflight, failed;
  uint64_t puts, refreshes, deletes, errors;
  int converged;
  double last_converged; /* unix time of the last convergence, or 0 */
  /* unix time at which etcd was last compared with what is wanted (the
   * owned prefix listed) and found equal, once what the listing found
   * different was repaired; 0: never (no prefix: never listed) */
  double compared;
  /* keys that a listing (or a v2 refresh) found otherwise than this
   * process believed them (changed or gone behind its back: a restore,
   * another writer, an expiry) */
  uint64_t drift;
  uint64_t behind_ms; /* how long it has not been converged, or 0 */
  /* etcd refuses to list the owned prefix (permissions): why, or NULL */
  const char *list_refused;
} reconcile_stats_t;

reconcile_t *reconcile_new(const reconcile_opts_t *o);
/* Cancels outstanding requests (no callbacks) and frees r. */
void reconcile_free(reconcile_t *r);

/* Lists the owned prefix so later writes are diffs, then starts writing. */
void reconcile_start(reconcile_t *r);
/* An owner whose id starts with this is the daemon itself (its report
 * under --policy-key), not a container: its keys are kept like the
 * others' but it is not counted in reconcile_stats_t.containers. */
#define RECONCILE_DAEMON_OWNER "register:"
/* Replaces the records of one owner (container id; image and name are
 * for log lines, NULL allowed).  recs NULL or empty: the owner produces
 * nothing any more. */
void reconcile_set(reconcile_t *r, const char *owner, const char *image,
                   const char *name, const records_t *recs);
/* The evaluation of a running container is not final: its policy call
 * failed or rejected a record (recs NULL), or one of its checks is still
 * pending (recs: what it produces meanwhile, added to what it has;
 * claims: the keys it would produce with its checks passing, or NULL).
 * Nothing it has is deleted: its keys keep their values, and the keys
 * under the prefix that no container produces (orphans) and that it
 * claims or that name it (its id, its 12-character short id or `name`, as
 * a whole token in the key or the value) are adopted at the value etcd
 * holds, now or once the prefix is listed.  The next reconcile_set() for
 * it is final again: whatever it no longer produces goes then
 * (make-before-break). */
void reconcile_keep(reconcile_t *r, const char *owner, const char *image,
                    const char *name, const records_t *recs,
                    const records_t *claims);
/* 1: keys under the prefix that nothing produces are kept, not deleted as
 * stale (a running container's evaluation failed: a broken policy is not
 * an instruction to delete; the caller says why); 0: they go again. */
void reconcile_hold_orphans(reconcile_t *r, int hold);
/* 1: every running container has been reported (orphans may go);
 * 0: Docker's truth is unknown (connection lost). */
void reconcile_docker_synced(reconcile_t *r, int synced);
/* A reloaded policy owns another subtree: list it before writing there. */
void reconcile_set_prefix(reconcile_t *r, const char *prefix);
/* Lists the owned prefix again and repairs any drift. */
void reconcile_resync(reconcile_t *r);
/* New etcd credentials are in force: what etcd refused or could not take
 * meanwhile is tried again now, not at the end of its backoff (a renewed
 * client certificate after the expired one etcd refused, a new password),
 * and the owned prefix is listed again (reconcile_resync()). */
void reconcile_retry_now(reconcile_t *r);
/* etcd went back in time (a restored snapshot): what it holds is not
 * what was acknowledged.  With a prefix, it is listed again and repaired;
 * without, every key is written again. */
void reconcile_etcd_rewound(reconcile_t *r);
/* v3: the lease is gone and every key with it; write them all again. */
void reconcile_lease_lost(reconcile_t *r);
/* Drops every owner, so every key written is deleted (shutdown); the owned
 * prefix goes in one request. */
void reconcile_deregister(reconcile_t *r);
/* Everything known is in etcd: primed, Docker synced, nothing queued,
 * in flight or failed. */
int reconcile_converged(const reconcile_t *r);
void reconcile_stats(const reconcile_t *r, reconcile_stats_t *s);

#endif

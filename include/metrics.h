/* metrics: the Prometheus text exposition (format 0.0.4) of what the other
 * modules count.  It reads their statistics at scrape time; nothing is
 * counted twice and nothing runs between scrapes. */
#ifndef REGISTER_METRICS_H
#define REGISTER_METRICS_H

#include <stdint.h>

#include "checks.h"
#include "creds.h"
#include "docker.h"
#include "etcd.h"
#include "fleet.h"
#include "reconcile.h"
#include "util.h"

typedef struct {
  const docker_t *docker; /* may be NULL */
  const etcd_t *etcd;     /* NULL under --dry-run */
  const reconcile_t *rec;
  const char *etcd_api; /* "v2" / "v3" */
  /* records(), hook and load failures by reason (policy_reason_name) */
  size_t n_policy_reasons;
  const char *const *policy_reasons;
  const unsigned long *policy_errors;
  uint64_t policy_rejected; /* records dropped by validation */
  uint64_t hooks_dropped;
  uint64_t reloads_ok, reloads_failed;
  const checks_t *checks; /* the health checks; NULL: none */
  /* running containers whose last policy call failed or rejected a record
   * (they keep what they had); the first of them, "name (reason)", for
   * /healthz */
  size_t containers_failed;
  const char *failed_example;
  const char *policy_sha256; /* of the policy in force, hex; NULL: unknown */
  /* policy worker processes: started, deaths by reason (as policy_errors'
   * reasons), log lines dropped; whether the one in force backs off */
  unsigned long workers_spawned;
  const unsigned long *worker_deaths;
  unsigned long worker_log_dropped;
  int worker_backoff;
  const fleet_view_t *fleet; /* --policy-key; NULL: none */
  const creds_t *creds[2];   /* watched credential files; NULL: none */
} metrics_input_t;

void metrics_render(buf_t *out, const metrics_input_t *in);
/* The credential files' counters alone (register watch's /metrics too):
 * register_credentials_reloaded_total and _refused_total, per file, of
 * the n rooms in creds (NULL entries skipped); nothing when none is
 * watched. */
void metrics_creds(buf_t *out, const creds_t *const *creds, size_t n);

#endif

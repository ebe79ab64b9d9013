/* metrics: Prometheus text exposition. */
#include "metrics.h"
#include "config.h"

#include <string.h>
#include <time.h>

static void help(buf_t *b, const char *name, const char *type,
                 const char *text) {
  buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

/* label values escape \ " and newline */
static void label(buf_t *b, const char *v) {
  buf_putc(b, '"');
  for (; *v; v++) {
    if (*v == '\\')
      buf_puts(b, "\\\\");
    else if (*v == '"')
      buf_puts(b, "\\\"");
    else if (*v == '\n')
      buf_puts(b, "\\n");
    else
      buf_putc(b, *v);
  }
  buf_putc(b, '"');
}

static void gauge(buf_t *b, const char *name, const char *text, double v) {
  help(b, name, "gauge", text);
  buf_printf(b, "%s %.17g\n", name, v);
}

static void counter(buf_t *b, const char *name, const char *text, uint64_t v) {
  help(b, name, "counter", text);
  buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* The credential files watched (creds.c): new content taken, and content
 * refused or a file unreadable (each distinct failure once). */
void metrics_creds(buf_t *b, const creds_t *const *creds, size_t n) {
  creds_stat_t st[8];
  size_t files = 0;
  for (size_t i = 0; i < n; i++)
    if (creds[i]) files += creds_stats(creds[i], st, 0);
  if (!files) return;
  static const char *const names[2] = {"register_credentials_reloaded_total",
                                       "register_credentials_refused_total"};
  static const char *const helps[2] = {
      "New content of a credential file taken (a change seen, or SIGHUP).",
      "Changes of a credential file not taken (unreadable, empty or not "
      "valid PEM, a key that does not match): what was in use stays."};
  for (int k = 0; k < 2; k++) {
    help(b, names[k], "counter", helps[k]);
    for (size_t i = 0; i < n; i++) {
      if (!creds[i]) continue;
      size_t m = creds_stats(creds[i], st, 8);
      for (size_t j = 0; j < m && j < 8; j++) {
        buf_printf(b, "%s{file=", names[k]);
        label(b, st[j].path);
        buf_printf(b, "} %llu\n",
                   (unsigned long long)(k ? st[j].failures : st[j].reloads));
      }
    }
  }
}

void metrics_render(buf_t *b, const metrics_input_t *in) {
  /* the inputs metrics.h does not let be NULL */
  REGISTER_ASSERT(in->rec && in->etcd_api);
  REGISTER_ASSERT(!in->n_policy_reasons ||
                  (in->policy_reasons && in->policy_errors));
  reconcile_stats_t rs;
  reconcile_stats(in->rec, &rs);

  help(b, "register_build_info", "gauge",
       "Version of register, the etcd API it writes with and the Docker "
       "API version in use.");
  buf_puts(b, "register_build_info{version=");
  label(b, REGISTER_VERSION);
  buf_puts(b, ",etcd_api=");
  label(b, in->etcd_api);
  buf_puts(b, ",docker_api=");
  label(b, in->docker ? docker_api_version(in->docker) : "");
  buf_puts(b, "} 1\n");

  gauge(b, "register_keys", "Keys that running containers produce.",
        (double)rs.keys);
  gauge(b, "register_containers_registered",
        "Running containers with at least one record.", (double)rs.containers);
  gauge(b, "register_containers",
        "Running containers Docker has reported (containers seen).",
        in->docker ? (double)docker_containers(in->docker) : 0);
  gauge(b, "register_docker_connected",
        "1 while the Docker event stream is connected.",
        in->docker && docker_connected(in->docker) ? 1 : 0);
  counter(b, "register_docker_reconnects_total",
          "Reconnections to the Docker API after the event stream ended.",
          in->docker ? docker_reconnects(in->docker) : 0);

  help(b, "register_docker_events_total", "counter",
       "Docker events received, by action.");
  if (in->docker) {
    const char *actions[65];
    uint64_t counts[65];
    size_t n = docker_event_counts(in->docker, actions, counts, 65);
    for (size_t i = 0; i < n && i < 65; i++) {
      buf_puts(b, "register_docker_events_total{action=");
      label(b, actions[i]);
      buf_printf(b, "} %llu\n", (unsigned long long)counts[i]);
    }
  }

  gauge(b, "register_etcd_pending",
        "etcd writes and deletes waiting or in flight.",
        (double)(rs.queued + rs.inflight));
  gauge(b, "register_etcd_refused",
        "Keys etcd refused (tried again with backoff).", (double)rs.failed);
  if (in->etcd)
    counter(b, "register_etcd_rewinds_total",
            "Times etcd was seen going back in time (a restored snapshot, "
            "another cluster id); each one lists the owned prefix again.",
            etcd_rewinds(in->etcd));
  if (in->etcd) {
    counter(b, "register_etcd_fence_moves_total",
            "Moves of this host's write fence (v3, --etcd-fence): one at the "
            "start, one after each write in doubt.",
            etcd_fence_moves(in->etcd));
    counter(b, "register_etcd_writes_in_doubt_total",
            "Fenced writes given up on after they may have reached etcd; a "
            "late copy of one finds the fence moved and changes nothing.",
            etcd_fence_doubts(in->etcd));
  }
  if (in->etcd)
    gauge(b, "register_etcd_endpoints",
          "etcd endpoints known: the configured ones and the members' "
          "client URLs learnt from etcd.",
          (double)etcd_endpoints(in->etcd));
  if (in->etcd) {
    etcd_opstat_t st[24];
    size_t n = etcd_stats(in->etcd, st, 24);
    help(b, "register_etcd_requests_total", "counter",
         "etcd operations by operation and result.");
    for (size_t k = 0; k < n && k < 24; k++) {
      for (int s = 0; s < ETCD_STATUSES; s++) {
        if (!st[k].by_status[s]) continue;
        buf_printf(b,
                   "register_etcd_requests_total{op=\"%s\",result=\"%s\"} "
                   "%llu\n",
                   st[k].op, etcd_status_name((etcd_status_t)s),
                   (unsigned long long)st[k].by_status[s]);
      }
    }
    help(b, "register_etcd_request_duration_seconds", "histogram",
         "Time from the start of an etcd operation to its result, "
         "retries on other endpoints included.");
    for (size_t k = 0; k < n && k < 24; k++) {
      if (!st[k].count) continue;
      for (int i = 0; i < ETCD_BUCKETS; i++)
        buf_printf(b,
                   "register_etcd_request_duration_seconds_bucket{op=\"%s\","
                   "le=\"%g\"} %llu\n",
                   st[k].op, etcd_buckets[i],
                   (unsigned long long)st[k].buckets[i]);
      buf_printf(b,
                 "register_etcd_request_duration_seconds_bucket{op=\"%s\","
                 "le=\"+Inf\"} %llu\n",
                 st[k].op, (unsigned long long)st[k].count);
      buf_printf(b,
                 "register_etcd_request_duration_seconds_sum{op=\"%s\"} "
                 "%.9f\n",
                 st[k].op, st[k].sum);
      buf_printf(b,
                 "register_etcd_request_duration_seconds_count{op=\"%s\"} "
                 "%llu\n",
                 st[k].op, (unsigned long long)st[k].count);
    }
  }
  help(b, "register_policy_errors_total", "counter",
       "Policy failures (records(), hooks, loading), by reason: error, "
       "budget, timeout, memory, sandbox, crash.");
  for (size_t i = 0; i < in->n_policy_reasons; i++)
    buf_printf(b, "register_policy_errors_total{reason=\"%s\"} %lu\n",
               in->policy_reasons[i], in->policy_errors[i]);
  counter(b, "register_policy_records_rejected_total",
          "Records the policy returned that failed validation.",
          in->policy_rejected);
  counter(b, "register_policy_hook_calls_dropped_total",
          "Hook calls dropped: 64 were still running, or the hooks had "
          "held the daemon 250 ms of the last second.",
          in->hooks_dropped);
  help(b, "register_policy_reloads_total", "counter",
       "Policy reloads (SIGHUP), by result.");
  buf_printf(b, "register_policy_reloads_total{result=\"ok\"} %llu\n",
             (unsigned long long)in->reloads_ok);
  buf_printf(b, "register_policy_reloads_total{result=\"failed\"} %llu\n",
             (unsigned long long)in->reloads_failed);
  counter(b, "register_policy_workers_started_total",
          "Policy worker processes started (one per policy, and one after "
          "each death).",
          in->workers_spawned);
  if (in->worker_deaths) {
    help(b, "register_policy_worker_deaths_total", "counter",
         "Policy worker processes that died or were killed, by reason: "
         "timeout (past the wall clock), memory, crash, sandbox.");
    for (size_t i = 0; i < in->n_policy_reasons; i++)
      buf_printf(b, "register_policy_worker_deaths_total{reason=\"%s\"} %lu\n",
                 in->policy_reasons[i], in->worker_deaths[i]);
  }
  counter(b, "register_policy_log_lines_dropped_total",
          "Policy log lines dropped: more than 100 in one call or 200 in one "
          "second.",
          in->worker_log_dropped);
  gauge(b, "register_policy_worker_backoff",
        "1 while the policy worker keeps dying and is restarted only after "
        "a backoff (policy calls fail meanwhile).",
        in->worker_backoff);
  gauge(b, "register_containers_failed",
        "Running containers whose last policy call failed or rejected a "
        "record; they keep what they had.",
        (double)in->containers_failed);
  if (in->policy_sha256) {
    help(b, "register_policy_info", "gauge",
         "The policy in force, by the SHA-256 of its source.");
    buf_printf(b, "register_policy_info{sha256=\"%s\"} 1\n", in->policy_sha256);
  }
  if (in->fleet) {
    const fleet_view_t *f = in->fleet;
    gauge(b, "register_policy_revision",
          "The revision of --policy-key in force (0: the host's own policy).",
          (double)f->revision);
    gauge(b, "register_policy_offered_revision",
          "The revision --policy-key offers this host (0: none).",
          (double)f->offered);
    gauge(b, "register_policy_generation",
          "The generation of the policy document last read.",
          (double)f->generation);
    help(b, "register_policy_state", "gauge",
         "1 for this host's state of --policy-key: applied, refused or "
         "waiting.");
    static const char *const states[] = {"applied", "refused", "waiting"};
    for (size_t i = 0; i < 3; i++)
      buf_printf(b, "register_policy_state{state=\"%s\"} %d\n", states[i],
                 strcmp(f->state, states[i]) == 0);
    help(b, "register_policy_revisions_total", "counter",
         "Revisions of --policy-key applied and refused since start.");
    buf_printf(b,
               "register_policy_revisions_total{result=\"applied\"} %llu\n"
               "register_policy_revisions_total{result=\"refused\"} %llu\n",
               (unsigned long long)f->applied, (unsigned long long)f->refused);
    gauge(b, "register_policy_unsigned",
          "1 when policies from --policy-key are applied without a "
          "signature (--policy-unsigned).",
          f->allow_unsigned);
    gauge(b, "register_policy_cache_failed",
          "1 when the last write of the revision in force to --state-dir "
          "failed: a restart while etcd is down would start with the host's "
          "own policy.",
          f->cache_error != NULL);
  }
  /* a lease whose keep-alives fail holds keys that may be gone */
  uint64_t unrenewed = in->etcd ? etcd_lease_unrenewed_ms(in->etcd) : 0;
  double last = rs.last_converged;
  if (unrenewed) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double renewed =
        (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - (double)unrenewed / 1000;
    if (renewed < last) last = renewed;
  }
  gauge(b, "register_in_sync",
        "1 when everything known is in etcd (the last sync converged, the "
        "lease renewed) and every running container was evaluated.",
        rs.converged && !unrenewed && !in->containers_failed ? 1 : 0);
  gauge(b, "register_last_sync_timestamp_seconds",
        "Unix time at which etcd last matched Docker's truth as far as etcd "
        "acknowledged it (now while it does; a lease last renewed earlier "
        "counts from then).",
        last);
  gauge(b, "register_etcd_compared_timestamp_seconds",
        "Unix time at which the owned prefix was last read back from etcd "
        "and found equal to what register wants (after repairing what the "
        "read found different); 0: never.",
        rs.compared);
  help(b, "register_etcd_drift_total", "counter",
       "Keys that a read of the owned prefix (or a v2 refresh) found "
       "otherwise than register believed (changed, deleted or expired "
       "behind its back).");
  buf_printf(b, "register_etcd_drift_total %llu\n",
             (unsigned long long)rs.drift);
  if (in->checks) checks_metrics(in->checks, b);
  metrics_creds(b, in->creds, 2);
}

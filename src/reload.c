/* reload: SIGHUP's policy reload transaction. */
#include "reload.h"
#include "container.h"
#include "json.h"
#include "log.h"
#include "map.h"
#include "util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* What the new policy produced for one container, until the commit. */
typedef struct {
  char *image;
  char *name;
  records_t recs;
} pending_t;

/* One reload in progress. */
typedef struct {
  reload_t *r;
  docker_t *docker;
  reconcile_t *rec;
  worker_t *policy;    /* the new one; after a commit, the old one */
  worker_t *current;   /* the policy in force (not ours) */
  map_t *records;      /* id -> pending_t: what the new policy produces */
  map_t *touched;      /* ids that had events meanwhile (old policy ran) */
  size_t failed;       /* containers the new policy fails where the old one
                          does not */
  size_t not_timeouts; /* of those, the ones that did not time out */
  size_t skipped;      /* containers not tried: given up (below) */
  int gave_up;  /* the new policy ran out of time or memory on a container
                   the policy in force handles: the reload is refused, and
                   the others are not tried (each try of such a policy holds
                   the loop up to its limit, on every host at once when the
                   revision comes from the fleet's key) */
  buf_t why;    /* the first RELOAD_NAMED of them: "name (reason)" */
  int starting; /* inside docker_snapshot(): no callback may come */
  reload_done_cb done; /* or NULL (SIGHUP) */
  void *done_ud;
} txn_t;

#define RELOAD_NAMED 10

struct reload {
  reload_commit_cb commit;
  reload_vet_cb vet;      /* or NULL */
  const checks_t *checks; /* the states records() sees; not ours */
  void *ud;
  txn_t *txn; /* the reload running, or NULL */
  uint64_t ok, failed;
  uint64_t rejected; /* records the new policies' tries rejected */
};

reload_t *reload_new(reload_commit_cb commit, const checks_t *checks,
                     void *ud) {
  reload_t *r = xcalloc(1, sizeof *r);
  r->commit = commit;
  r->checks = checks;
  r->ud = ud;
  return r;
}

static void free_strings(map_t *m) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, m);
  while (map_iter_next(&it, NULL, &v))
    free(v);
  map_free(m);
}

static void pending_free(pending_t *pd) {
  records_free(&pd->recs);
  free(pd->image);
  free(pd->name);
  free(pd);
}

static void txn_free(txn_t *t) {
  if (!t) return;
  map_iter_t it;
  const char *k;
  void *v;
  map_iter_init(&it, t->records);
  while (map_iter_next(&it, &k, &v)) {
    pending_free(v);
    free((void *)(uintptr_t)k);
  }
  map_free(t->records);
  free_strings(t->touched);
  worker_free(t->policy);
  buf_free(&t->why);
  free(t);
}

void reload_set_vet(reload_t *r, reload_vet_cb vet) {
  r->vet = vet;
}

void reload_free(reload_t *r) {
  if (!r) return;
  txn_free(r->txn);
  free(r);
}

void reload_touch(reload_t *r, const char *id) {
  txn_t *t = r->txn;
  if (!t || map_get(t->touched, id)) return;
  char *k = xstrdup(id);
  map_put(t->touched, k, k);
}

void reload_counts(const reload_t *r, uint64_t *ok, uint64_t *failed,
                   uint64_t *rejected) {
  *ok = r->ok;
  *failed = r->failed;
  *rejected = r->rejected;
}

/* One run of a policy on a container: 0 when it succeeded with no record
 * rejected, else -1 with why ("error: ...", "2 records rejected"). */
static int try_policy(worker_t *p, const json_value_t *inspect,
                      const policy_check_view_t *view, records_t *recs,
                      uint64_t *rejected, policy_reason_t *reason, char *why,
                      size_t n) {
  char err[600];
  *reason = POLICY_ERR_ERROR;
  if (worker_records_checked(p, inspect, view, recs, err, sizeof err) < 0) {
    *reason = worker_last_reason(p);
    snprintf(why, n, "%s: %s", policy_reason_name(worker_last_reason(p)), err);
    return -1;
  }
  if (!recs->rejected) return 0;
  *rejected += recs->rejected;
  snprintf(why, n, "%zu record%s rejected", recs->rejected,
           recs->rejected == 1 ? "" : "s");
  records_free(recs);
  return -1;
}

/* The new policy runs on one container.  Where it fails (an error, or a
 * record rejected), the reload is refused only if the policy in force
 * succeeds on the same document: a container that fails under both is
 * logged, keeps what it has, and does not block the reload (which may be
 * the one that fixes it).  Every container is tried, so that a refusal
 * names each one the new policy fails on. */
static void reload_each(void *ud, const char *id, const json_value_t *inspect) {
  txn_t *t = ud;
  REGISTER_ASSERT(!t->starting);
  if (t->gave_up) {
    t->skipped++;
    return;
  }
  pending_t *pd = xcalloc(1, sizeof *pd);
  char why[700];
  const char *name = json_get_str(inspect, "Name");
  name = !name ? id : *name == '/' ? name + 1 : name;
  policy_check_state_t states[POLICY_MAX_CHECKS];
  policy_check_view_t view;
  worker_check_view(t->r->checks, id, states, POLICY_MAX_CHECKS, &view);
  policy_reason_t reason, old_reason;
  if (try_policy(t->policy, inspect, &view, &pd->recs, &t->r->rejected, &reason,
                 why, sizeof why) < 0) {
    free(pd);
    records_t old;
    uint64_t ignored = 0;
    char old_why[700];
    /* a container whose calls end the policy in force's worker fails
     * under it: not tried again (each try holds the loop up to its limit) */
    if (!worker_quarantined(t->current, id) &&
        try_policy(t->current, inspect, &view, &old, &ignored, &old_reason,
                   old_why, sizeof old_why) == 0) {
      records_free(&old);
      log_fields(LOG_ERROR,
                 "policy reload: the new policy fails on a container the "
                 "policy in force handles",
                 "container", id, "name", name, "error", why, NULL);
      if (t->failed < RELOAD_NAMED)
        buf_printf(&t->why, "%s%s (%s)", t->failed ? ", " : "", name, why);
      t->failed++;
      if (reason != POLICY_ERR_TIMEOUT) t->not_timeouts++;
      if (reason == POLICY_ERR_TIMEOUT || reason == POLICY_ERR_BUDGET ||
          reason == POLICY_ERR_MEMORY)
        t->gave_up = 1;
      return;
    }
    log_fields(LOG_WARN,
               "policy reload: container fails under the old policy too; it "
               "keeps what it has",
               "container", id, "name", name, "error", why, NULL);
    return;
  }
  if (t->failed) { /* refused already: only the names are still wanted */
    pending_free(pd);
    return;
  }
  pd->image = xstrdup(container_image(inspect));
  pd->name = xstrdup(name);
  pending_t *old = map_put(t->records, xstrdup(id), pd);
  if (old) pending_free(old); /* cannot happen: one inspect per id */
}

static void reload_done(void *ud, int ok, const char *why) {
  txn_t *t = ud;
  reload_t *r = t->r;
  REGISTER_ASSERT(r->txn == t);  /* the running reload ends once */
  REGISTER_ASSERT(!t->starting); /* and never inside docker_snapshot() */
  reload_done_cb done = t->done;
  void *done_ud = t->done_ud;
  if (!ok || t->failed) {
    char line[1200];
    if (!ok)
      snprintf(line, sizeof line, "%s", why ? why : "Docker went away");
    else
      snprintf(line, sizeof line,
               "it fails on %zu container%s that the policy in force "
               "handles: %s%s",
               t->failed, t->failed == 1 ? "" : "s", t->why.data,
               t->failed > RELOAD_NAMED ? ", ..." : "");
    if (t->skipped)
      snprintf(line + strlen(line), sizeof line - strlen(line),
               "; %zu other container%s not tried (each try of a policy "
               "that runs out of its limits holds the loop)",
               t->skipped, t->skipped == 1 ? "" : "s");
    log_error("policy reload failed, keeping the old policy: %s", line);
    /* Docker went away: not the policy's fault, tried again */
    reload_outcome_t outcome = !ok                ? RELOAD_BUSY
                               : !t->not_timeouts ? RELOAD_TIMED_OUT
                                                  : RELOAD_REFUSED;
    r->failed++;
    r->txn = NULL;
    txn_free(t);
    if (done) done(done_ud, outcome, line);
    return;
  }
  r->ok++;
  /* commit: the new policy is in force from here on.  With checks() in
   * either policy, every container is inspected again under the new one:
   * that sets the checks it asks for, and runs records() with them. */
  worker_t *fresh = t->policy;
  int recheck = worker_has_checks(fresh) || worker_has_checks(t->current);
  t->policy = r->commit(r->ud, fresh); /* the old one, freed with t */
  const char *prefix = worker_prefix(fresh);
  reconcile_set_prefix(t->rec, prefix);
  map_iter_t it;
  const char *id;
  void *v;
  size_t n = 0;
  map_iter_init(&it, t->records);
  while (map_iter_next(&it, &id, &v)) {
    pending_t *pd = v;
    if (map_get(t->touched, id)) continue; /* inspected again below */
    reconcile_set(t->rec, id, pd->image, pd->name, &pd->recs);
    if (recheck) docker_refresh(t->docker, id);
    n++;
  }
  map_iter_init(&it, t->touched);
  while (map_iter_next(&it, &id, NULL))
    docker_refresh(t->docker, id);
  log_info("policy %s reloaded: %zu containers re-evaluated, prefix %s",
           worker_name(fresh), n + map_size(t->touched),
           prefix ? prefix : "(none)");
  r->txn = NULL;
  txn_free(t); /* frees the old policy */
  if (done) done(done_ud, RELOAD_APPLIED, NULL);
}

/* Starts a reload of po's policy: 0, or -1 with err (nothing called
 * back). */
static int start(reload_t *r, const worker_opts_t *po, worker_t *current,
                 docker_t *docker, reconcile_t *rec, reload_done_cb done,
                 void *ud, char *err, size_t errlen, reload_outcome_t *outcome,
                 int fleet) {
  policy_reason_t reason;
  worker_t *p = worker_new_why(po, &reason, err, errlen);
  if (p && r->vet && r->vet(r->ud, p, po, fleet, err, errlen) < 0) {
    worker_free(p);
    p = NULL;
    reason = POLICY_ERR_ERROR;
  }
  if (!p) {
    r->failed++;
    log_error("policy reload failed, keeping the old policy: %s", err);
    if (outcome)
      *outcome =
          reason == POLICY_ERR_TIMEOUT ? RELOAD_TIMED_OUT : RELOAD_REFUSED;
    return -1;
  }
  txn_t *t = xcalloc(1, sizeof *t);
  t->r = r;
  t->docker = docker;
  t->rec = rec;
  t->policy = p;
  t->current = current;
  t->records = map_new();
  t->touched = map_new();
  t->done = done;
  t->done_ud = ud;
  buf_init(&t->why);
  r->txn = t;
  /* the snapshot ends from the loop, never inside docker_snapshot() (even
   * with no running container): reload_done() asserts it */
  t->starting = 1;
  int rc = docker_snapshot(docker, reload_each, reload_done, t);
  t->starting = 0;
  if (rc < 0) {
    r->failed++;
    r->txn = NULL;
    txn_free(t);
    snprintf(err, errlen, "Docker is not connected");
    log_error("policy reload failed, keeping the old policy: %s", err);
    if (outcome) *outcome = RELOAD_BUSY; /* not the policy's fault */
    return -1;
  }
  return 0;
}

void reload_run(reload_t *r, const worker_opts_t *po, worker_t *current,
                docker_t *docker, reconcile_t *rec, reload_done_cb done,
                void *ud) {
  if (!po->file) {
    log_info("SIGHUP: the embedded default policy has no file to reload");
    return;
  }
  if (r->txn) {
    log_warn("SIGHUP: a policy reload is already running");
    return;
  }
  char err[600];
  log_info("SIGHUP: trying policy %s on every running container", po->file);
  start(r, po, current, docker, rec, done, ud, err, sizeof err, NULL, 0);
}

int reload_running(const reload_t *r) {
  return r->txn != NULL;
}

int reload_try(reload_t *r, const worker_opts_t *po, worker_t *current,
               docker_t *docker, reconcile_t *rec, reload_done_cb done,
               void *ud, char *err, size_t errlen, reload_outcome_t *outcome) {
  *outcome = RELOAD_REFUSED;
  if (r->txn) {
    *outcome = RELOAD_BUSY;
    snprintf(err, errlen, "a policy reload is already running");
    return -1;
  }
  return start(r, po, current, docker, rec, done, ud, err, errlen, outcome, 1);
}

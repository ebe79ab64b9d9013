/* reload: SIGHUP's policy reload, all or nothing.  The new policy runs on
 * every running container (a fresh inspect of each, docker_snapshot())
 * before it replaces the old one.  It is refused when the new script does
 * not load, or fails (an error, or a rejected record) on a container where
 * the policy in force succeeds, naming each such container; a container
 * that fails under both is logged and keeps what it has.
 * On success every container's new records go to the reconciler, except
 * those of containers that had events meanwhile: they are inspected again
 * under the new policy.  One reload runs at a time. */
#ifndef REGISTER_RELOAD_H
#define REGISTER_RELOAD_H

#include <stdint.h>

#include "docker.h"
#include "worker.h"
#include "reconcile.h"

typedef struct reload reload_t;

/* A reload succeeded: put `fresh` in force and return the policy it
 * replaces (the reload frees it).  Called before the reconciler gets the
 * new records. */
typedef worker_t *(*reload_commit_cb)(void *ud, worker_t *fresh);

/* checks: the containers' health checks, whose states records() sees
 * (may be NULL); not owned. */
reload_t *reload_new(reload_commit_cb commit, const checks_t *checks, void *ud);
/* Looks at a new policy once it has loaded (po: how it was started),
 * before it is tried on any container: 0, or -1 with a one-line reason in
 * err (the reload is then refused).  fleet: it came from the fleet's key
 * (reload_try), not from SIGHUP (reload_run). */
typedef int (*reload_vet_cb)(void *ud, const worker_t *fresh,
                             const worker_opts_t *po, int fleet, char *err,
                             size_t errlen);
void reload_set_vet(reload_t *r, reload_vet_cb vet);
/* Abandons a running reload (its snapshot ends with docker_free(), which
 * comes first) and frees r. */
void reload_free(reload_t *r);

/* A reload's outcome. */
typedef enum {
  RELOAD_APPLIED, /* in force */
  RELOAD_REFUSED, /* it fails where the policy in force does not */
  /* refused, and every failure was a call past the wall clock: a policy
   * that hangs, or one starved of CPU on a loaded host (another try later
   * may pass) */
  RELOAD_TIMED_OUT,
  /* not tried: another reload runs, or Docker is not connected (not the
   * policy's doing: try again shortly) */
  RELOAD_BUSY
} reload_outcome_t;
/* ...and why, when it is not RELOAD_APPLIED (one line, valid during the
 * call). */
typedef void (*reload_done_cb)(void *ud, reload_outcome_t outcome,
                               const char *why);
/* SIGHUP: loads po->file and tries it against current, the policy in
 * force (po->file NULL: the embedded default, nothing to reload; a reload
 * already running: nothing either).  Every outcome is logged.  po's
 * strings must outlive the reload, current must stay in force until it
 * ends (only this reload's commit replaces it).  done (NULL: none) is
 * called as for reload_try() once a reload that started is over. */
void reload_run(reload_t *r, const worker_opts_t *po, worker_t *current,
                docker_t *docker, reconcile_t *rec, reload_done_cb done,
                void *ud);
/* 1 while a reload runs (from its start to its done). */
int reload_running(const reload_t *r);
/* As reload_run, for po's policy (po->source: a text; the fleet's), and
 * done called from the loop when it is over (after the commit).  -1 with
 * err and *outcome (RELOAD_BUSY, _REFUSED, _TIMED_OUT) when it cannot
 * start (the policy does not load), nothing called back then. */
int reload_try(reload_t *r, const worker_opts_t *po, worker_t *current,
               docker_t *docker, reconcile_t *rec, reload_done_cb done,
               void *ud, char *err, size_t errlen, reload_outcome_t *outcome);
/* An event touched this container: while a reload runs, the old policy
 * has run on it, so it is inspected again after a commit. */
void reload_touch(reload_t *r, const char *id);
/* Reloads that succeeded and failed so far, and the records that the new
 * policies rejected while they were tried. */
void reload_counts(const reload_t *r, uint64_t *ok, uint64_t *failed,
                   uint64_t *rejected);

#endif

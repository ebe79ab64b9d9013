/* docker: the Docker Engine API side.  Negotiates the API version, opens
 * the event stream *before* listing containers (so a container started in
 * between is not missed), lists and inspects running containers with
 * bounded concurrency, turns events into "inspect again" or "gone", and
 * reconnects with capped exponential backoff and jitter, resyncing after.
 *
 * It knows nothing of etcd or Lua: it reports each container's inspect
 * document (or its disappearance) to its owner through callbacks. */
#ifndef REGISTER_DOCKER_H
#define REGISTER_DOCKER_H

#include <stdint.h>
#include <uv.h>

#include "docker_event.h"
#include "http.h"
#include "json.h"

typedef struct docker docker_t;

typedef struct {
  /* A running container's current inspect document (valid during the
   * call).  Called again whenever an event may have changed it. */
  void (*update)(void *ud, const char *id, const json_value_t *inspect);
  /* The container stopped, vanished, or is not running any more. */
  void (*gone)(void *ud, const char *id);
  /* Every event from the stream, before docker.c acts on it. */
  void (*event)(void *ud, const docker_event_t *ev);
  /* A full list + inspect pass finished: what was reported is the truth. */
  void (*synced)(void *ud);
  /* The event stream went up (1) or down (0). */
  void (*connection)(void *ud, int up);
} docker_cbs_t;

typedef struct {
  http_t *stream_http;   /* for the event stream; NULL: the main one */
  const char *base;      /* http://docker, http(s)://host:port */
  const char *socket;    /* unix socket path or NULL */
  const http_tls_t *tls; /* for https, or NULL */
  int max_inspects;      /* concurrent inspect requests; 0 = 32 */
} docker_opts_t;

docker_t *docker_new(uv_loop_t *loop, http_t *http, const docker_opts_t *o,
                     const docker_cbs_t *cbs, void *ud);
void docker_start(docker_t *d);
/* New TLS material (rotated files, read by creds.c; copied) for every
 * request from now on: new connections use it; the event stream and
 * requests in flight go on where they are.  Nothing without TLS. */
void docker_set_tls(docker_t *d, const http_tls_t *tls);
/* Lists containers again: inspects new ones, reports vanished ones. */
void docker_resync(docker_t *d);
/* Inspects one container again (e.g. after a policy reload). */
void docker_refresh(docker_t *d, const char *id);
/* A word the owner keeps with each container docker.c knows (listed or
 * seen in an event): 0 when docker.c first knows it, readable until its
 * gone() has returned (also inside it), then dropped.  NULL for an id
 * docker.c does not know.  (So that per-container state of the owner's
 * costs no record and no map entry of its own.) */
uint32_t *docker_cont_word(docker_t *d, const char *id);
/* Inspects every running container once more, for a policy reload:
 * each(id, inspect) per container still running, then done(ok, why),
 * always from the loop (never inside this call, even with no container
 * running).  One snapshot at a time; returns -1 (no callbacks) when one
 * is running or Docker is not connected. */
typedef void (*docker_each_cb)(void *ud, const char *id,
                               const json_value_t *inspect);
typedef void (*docker_snapdone_cb)(void *ud, int ok, const char *why);
int docker_snapshot(docker_t *d, docker_each_cb each, docker_snapdone_cb done,
                    void *ud);
/* Stops everything; no callbacks afterwards.  Frees d. */
void docker_free(docker_t *d);

const char *docker_api_version(const docker_t *d);
int docker_connected(const docker_t *d);
uint64_t docker_reconnects(const docker_t *d);
size_t docker_containers(const docker_t *d);
/* Events seen, by action (the part before ':' of "health_status: ..."),
 * at most 64 actions then "other".  Fills up to max; returns the count. */
size_t docker_event_counts(const docker_t *d, const char **actions,
                           uint64_t *counts, size_t max);

/* Compares "1.41"-style versions: <0, 0, >0. */
int docker_version_cmp(const char *a, const char *b);

#endif

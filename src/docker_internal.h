/* Shared by docker.c and docker_snapshot.c; not a public API. */
#ifndef REGISTER_DOCKER_INTERNAL_H
#define REGISTER_DOCKER_INTERNAL_H

#include "docker.h"
#include "linesplit.h"
#include "list.h"
#include "map.h"
#include "util.h"

typedef struct dcont {
  docker_t *d;
  http_req_t *req;        /* inspect in flight */
  unsigned dirty : 1;     /* an event came while inspecting: inspect again */
  unsigned sync_wait : 1; /* the current sync waits for this one */
  unsigned retrying : 1;
  unsigned failures;
  uint64_t seq; /* d->seq at the last event or listing touching it */
  uint64_t retry_at;
  list_t qnode; /* on d->queue: waiting for an inspect */
  char id[];    /* in the same allocation; also the map key */
} dcont_t;

typedef enum { ST_IDLE, ST_PING, ST_VERSION, ST_STREAM, ST_CLOSED } state_t;

struct docker {
  uv_loop_t *loop;
  http_t *http;        /* list and inspect */
  http_t *stream_http; /* the event stream (its own connection) */
  char *base, *socket;
  http_tls_t tls; /* points at the owned copies below */
  char *tls_files[3];
  int use_tls;
  docker_cbs_t cbs;
  void *ud;

  state_t state;
  char api[16];
  int legacy;
  int connected;
  http_req_t *ping_req, *events_req, *list_req;
  linesplit_t split;
  buf_t errbody; /* body of a refused event stream request */

  map_t *conts;
  map_t *unknown_types; /* event types already reported as ignored */
  map_t *action_counts; /* action -> uint64_t *, for /metrics */
  list_t queue;         /* containers to inspect (dcont_t.qnode), in order */
  int inflight, max_inspects;
  uint64_t seq;
  uint64_t list_seq;
  int list_full; /* this listing re-inspects every container */
  size_t sync_pending;
  int syncing;
  int resync_wanted; /* a resync was asked for while one was running */

  /* a snapshot for a policy reload */
  struct {
    char **ids;
    size_t n, next, inflight;
    http_req_t *reqs[8];
    docker_each_cb each;
    docker_snapdone_cb done;
    void *ud;
    int failed;
    char why[400];
  } snap;

  uv_timer_t reconnect_timer, retry_timer;
  uv_timer_t head_timer; /* the event stream's head is late (podman 5) */
  int open_handles;
  uint64_t backoff_ms;
  uint64_t reconnects;
  char last_err[256];
};

/* The daemon's URL for a path (printf-style), with the API version. */
char *docker_url(docker_t *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A GET on the list/inspect connection; NULL if curl refused it. */
http_req_t *docker_get(docker_t *d, const char *u, long timeout_ms,
                       http_done_cb done, void *data);
/* A response's reason for failure, on one line. */
void docker_describe(const http_resp_t *r, char *out, size_t n);
/* State.Running of an inspect document. */
int docker_is_running(const json_value_t *root);

/* docker_snapshot.c: ends the snapshot running (if any): cancels its
 * requests, frees its state, then calls done(ok, why) unless it was
 * cleared (docker_free()). */
void docker_snap_finish(docker_t *d, int ok, const char *why);

#endif

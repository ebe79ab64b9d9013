/* docker_snapshot: every running container inspected once more, for a
 * policy reload (docker_snapshot() in docker.h). */
#include "docker_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void snap_pump(docker_t *d);

void docker_snap_finish(docker_t *d, int ok, const char *why) {
  for (size_t i = 0; i < ARRAY_SIZE(d->snap.reqs); i++) {
    if (d->snap.reqs[i]) http_cancel(d->snap.reqs[i]);
    d->snap.reqs[i] = NULL;
  }
  for (size_t i = 0; i < d->snap.n; i++)
    free(d->snap.ids[i]);
  free(d->snap.ids);
  docker_snapdone_cb done = d->snap.done;
  void *ud = d->snap.ud;
  memset(&d->snap, 0, sizeof d->snap);
  if (done) done(ud, ok, why);
}

static void snap_done(http_req_t *req, const http_resp_t *r, void *data) {
  docker_t *d = data;
  for (size_t i = 0; i < ARRAY_SIZE(d->snap.reqs); i++)
    if (d->snap.reqs[i] == req) d->snap.reqs[i] = NULL;
  d->snap.inflight--;
  char err[200];
  if (!r->error && r->status == 404) { /* gone meanwhile: events handle it */
    snap_pump(d);
    return;
  }
  json_doc_t *doc = NULL;
  if (r->error || r->status != 200 ||
      !(doc = json_parse(r->body, r->body_len, err, sizeof err))) {
    char why[300];
    docker_describe(r, why, sizeof why);
    snprintf(d->snap.why, sizeof d->snap.why, "inspect failed: %s",
             r->error || r->status != 200 ? why : err);
    docker_snap_finish(d, 0, d->snap.why);
    return;
  }
  const json_value_t *root = json_root(doc);
  const char *id = json_get_str(root, "Id");
  if (id && docker_is_running(root)) d->snap.each(d->snap.ud, id, root);
  json_free(doc);
  snap_pump(d);
}

static void snap_pump(docker_t *d) {
  while (d->snap.next < d->snap.n &&
         d->snap.inflight < ARRAY_SIZE(d->snap.reqs)) {
    char *u = docker_url(d, "/containers/%s/json", d->snap.ids[d->snap.next++]);
    http_req_t *req = docker_get(d, u, 30000, snap_done, d);
    free(u);
    if (!req) {
      docker_snap_finish(d, 0, "cannot start a request");
      return;
    }
    for (size_t i = 0; i < ARRAY_SIZE(d->snap.reqs); i++) {
      if (!d->snap.reqs[i]) {
        d->snap.reqs[i] = req;
        break;
      }
    }
    d->snap.inflight++;
  }
  if (d->snap.next == d->snap.n && d->snap.inflight == 0)
    docker_snap_finish(d, 1, NULL);
}

int docker_snapshot(docker_t *d, docker_each_cb each, docker_snapdone_cb done,
                    void *ud) {
  if (d->snap.done || !d->connected) return -1;
  d->snap.each = each;
  d->snap.done = done;
  d->snap.ud = ud;
  d->snap.ids = xcalloc(map_size(d->conts) + 1, sizeof *d->snap.ids);
  map_iter_t it;
  const char *id;
  map_iter_init(&it, d->conts);
  while (map_iter_next(&it, &id, NULL))
    d->snap.ids[d->snap.n++] = xstrdup(id);
  snap_pump(d);
  return 0;
}

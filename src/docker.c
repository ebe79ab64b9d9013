/* docker: API negotiation, event stream, list and inspect, reconnects,
 * and the snapshot for a policy reload (every running container inspected
 * once more).  Events are parsed and classified in docker_event.c. */
#include "docker.h"
#include "linesplit.h"
#include "list.h"
#include "log.h"
#include "map.h"
#include "trace.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API_MAX "1.52"        /* newest API this code was written against */
#define API_NEW_EVENTS "1.22" /* Type/Action/Actor appeared here */
#define MAX_EVENT_LINE (1u << 20)
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 5000
#define RETRY_MAX_MS 30000
#define HEAD_WAIT_MS 500 /* the event stream's head, before listing anyway */
#define DISCONNECT_SETTLE_MS 100 /* a disconnect's inspect waits for a die */

typedef struct dcont {
  docker_t *d;
  http_req_t *req;        /* inspect in flight */
  unsigned dirty : 1;     /* an event came while inspecting: inspect again */
  unsigned sync_wait : 1; /* the current sync waits for this one */
  unsigned retrying : 1;
  unsigned failures;
  uint32_t word; /* the owner's (docker_cont_word) */
  uint64_t seq;  /* d->seq at the last event or listing touching it */
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
  http_tls_t tls; /* owned (http_tls_copy()) */
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
    /* answers parsed, not yet handed to each(): one goes per turn of the
     * loop (snap_timer), since each() runs a policy trial that may hold
     * the loop up to its wall clock, and the etcd I/O (keep-alives) must
     * get its turn between two trials; owned, in order of arrival */
    json_doc_t *ready[8];
    size_t nready;
    docker_each_cb each;
    docker_snapdone_cb done;
    void *ud;
    int failed;
    char why[700];
  } snap;
  uv_timer_t snap_timer; /* starts a snapshot from the loop, never inside
                            docker_snapshot(); hands it one answer per turn */

  uv_timer_t reconnect_timer, retry_timer;
  uv_timer_t head_timer; /* the event stream's head is late (podman 5) */
  int open_handles;
  dcont_t *going; /* off the map, its gone() running: its word is still
                     readable (docker_cont_word) */
  int in_call;    /* inside docker_start/resync/refresh: the owner's
                     callbacks come from the loop, never from there */
  uint64_t backoff_ms;
  uint64_t reconnects;
  char last_err[1024];
};

static void connect_start(docker_t *d);
static void docker_snap_finish(docker_t *d, int ok, const char *why);
static void docker_pump(docker_t *d);
static void docker_list_start(docker_t *d, int full);

/* ---- small helpers ---- */

int docker_version_cmp(const char *a, const char *b) {
  long amaj = 0, amin = 0, bmaj = 0, bmin = 0;
  sscanf(a, "%ld.%ld", &amaj, &amin);
  sscanf(b, "%ld.%ld", &bmaj, &bmin);
  if (amaj != bmaj) return amaj < bmaj ? -1 : 1;
  if (amin != bmin) return amin < bmin ? -1 : 1;
  return 0;
}

__attribute__((format(printf, 2, 3))) static char *
docker_url(docker_t *d, const char *fmt, ...) {
  buf_t b;
  buf_init(&b);
  buf_puts(&b, d->base);
  if (d->api[0]) buf_printf(&b, "/v%s", d->api);
  va_list ap;
  va_start(ap, fmt);
  buf_vprintf(&b, fmt, ap);
  va_end(ap);
  return buf_detach(&b);
}

/* Never NULL: a request that cannot start fails from the loop (http.h). */
static http_req_t *docker_get(docker_t *d, const char *u, long timeout_ms,
                              http_done_cb done, void *data) {
  http_opts_t o = {0};
  o.url = u;
  o.unix_socket = d->socket;
  o.tls = d->use_tls ? &d->tls : NULL;
  o.timeout_ms = timeout_ms;
  o.on_done = done;
  o.data = data;
  return http_request(d->http, &o);
}

/* Logs a connection problem once; repeats of the same one go to debug. */
static void conn_problem(docker_t *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void conn_problem(docker_t *d, const char *fmt, ...) {
  char msg[sizeof d->last_err];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (strcmp(msg, d->last_err) != 0) {
    log_warn("%s", msg);
    snprintf(d->last_err, sizeof d->last_err, "%s", msg);
  } else {
    log_debug("%s", msg);
  }
}

/* A transport failure's message, naming a client certificate that has
 * expired or is not valid yet: Docker's refusal ("alert bad certificate",
 * a reset) does not say why. */
static void transport_error(const docker_t *d, const http_resp_t *r, char *out,
                            size_t n) {
  char when[80];
  if (d->use_tls &&
      http_tls_cert_invalid(&d->tls, (long long)time(NULL), when, sizeof when))
    snprintf(out, n,
             "%s (client certificate %s %s: renew it; it is read again when "
             "it changes)",
             r->errmsg, d->tls.cert ? d->tls.cert : "", when);
  else
    snprintf(out, n, "%s", r->errmsg);
}

/* A response's reason for failure, on one line. */
static void docker_describe(const docker_t *d, const http_resp_t *r, char *out,
                            size_t n) {
  if (r->error) {
    transport_error(d, r, out, n);
    return;
  }
  char msg[200] = "";
  json_doc_t *doc = json_parse(r->body, r->body_len, NULL, 0);
  const char *m = doc ? json_get_str(json_root(doc), "message") : NULL;
  if (m)
    snprintf(msg, sizeof msg, ": %s", m);
  else if (r->body_len && r->body_len < 160)
    snprintf(msg, sizeof msg, ": %.*s", (int)r->body_len, r->body);
  json_free(doc);
  for (char *p = msg; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  snprintf(out, n, "HTTP %ld%s", r->status, msg);
}

/* ---- containers ---- */

static dcont_t *cont_get(docker_t *d, const char *id, int create) {
  dcont_t *c = map_get(d->conts, id);
  if (c || !create) return c;
  size_t n = strlen(id) + 1;
  c = xcalloc(1, sizeof *c + n);
  memcpy(c->id, id, n);
  c->d = d;
  map_put(d->conts, c->id, c);
  return c;
}

/* One container (or the listing itself) no longer holds the sync back. */
static void sync_release(docker_t *d) {
  if (d->sync_pending && --d->sync_pending == 0 && d->syncing) {
    d->syncing = 0;
    d->backoff_ms = 0;
    d->last_err[0] = '\0';
    log_debug("docker: sync complete, %zu running containers",
              map_size(d->conts));
    REGISTER_ASSERT(!d->in_call);
    if (d->cbs.synced) d->cbs.synced(d->ud);
    if (d->resync_wanted) {
      d->resync_wanted = 0;
      docker_list_start(d, 0);
    }
  }
}

static void sync_done_one(docker_t *d, dcont_t *c) {
  if (!c->sync_wait) return;
  c->sync_wait = 0;
  sync_release(d);
}

static void unqueue(dcont_t *c) {
  if (list_linked(&c->qnode)) list_remove(&c->qnode);
}

/* Forgets a container and tells the owner it is gone. */
static void cont_gone(docker_t *d, dcont_t *c) {
  if (c->req) {
    http_cancel(c->req);
    c->req = NULL;
    d->inflight--;
  }
  unqueue(c);
  map_del(d->conts, c->id);
  int waited = c->sync_wait;
  c->sync_wait = 0;
  /* off the map and the queue, nothing in flight: unreachable now */
  REGISTER_ASSERT(!d->in_call);
  REGISTER_ASSERT(!d->going); /* gone() never makes another go */
  d->going = c;
  if (d->cbs.gone) d->cbs.gone(d->ud, c->id);
  d->going = NULL;
  free(c);
  if (waited) sync_release(d);
}

static void want_inspect(docker_t *d, dcont_t *c) {
  if (c->req) {
    c->dirty = 1;
    return;
  }
  if (list_linked(&c->qnode)) return; /* queued at most once */
  c->retrying = 0;
  list_insert_tail(&d->queue, &c->qnode);
}

static void retry_timer_cb(uv_timer_t *t);

/* An inspect of c after delay ms (unless something asks for it sooner, or
 * the container goes first). */
static void inspect_later(docker_t *d, dcont_t *c, uint64_t delay) {
  c->retrying = 1;
  c->retry_at = uv_now(d->loop) + delay;
  uint64_t due = uv_timer_get_due_in(&d->retry_timer);
  if (!uv_is_active((uv_handle_t *)&d->retry_timer) || delay < due)
    uv_timer_start(&d->retry_timer, retry_timer_cb, delay, 0);
}

static void schedule_retry(docker_t *d, dcont_t *c) {
  uint64_t delay = 1000u << (c->failures < 6 ? c->failures : 6);
  if (delay > RETRY_MAX_MS) delay = RETRY_MAX_MS;
  c->failures++;
  inspect_later(d, c, delay);
}

static void retry_timer_cb(uv_timer_t *t) {
  docker_t *d = t->data;
  uint64_t now = uv_now(d->loop), next = 0;
  map_iter_t it;
  void *v;
  map_iter_init(&it, d->conts);
  while (map_iter_next(&it, NULL, &v)) {
    dcont_t *c = v;
    if (!c->retrying) continue;
    if (c->retry_at <= now) {
      want_inspect(d, c);
    } else if (!next || c->retry_at - now < next) {
      next = c->retry_at - now;
    }
  }
  if (next) uv_timer_start(&d->retry_timer, retry_timer_cb, next, 0);
  docker_pump(d);
}

static int docker_is_running(const json_value_t *root) {
  const json_value_t *st = json_get(root, "State");
  const json_value_t *r = json_get(st, "Running");
  return r && r->type == JSON_BOOL && r->u.boolean;
}

static void inspect_done(http_req_t *req, const http_resp_t *r, void *data) {
  (void)req;
  dcont_t *c = data;
  docker_t *d = c->d;
  REGISTER_ASSERT(c->req == req); /* its one inspect, answered once */
  c->req = NULL;
  d->inflight--;
  trace_mark(c->id, TRACE_INSPECT_ANSWERED);
  char why[600];

  if (!r->error && r->status == 404) {
    log_fields(LOG_INFO,
               "docker: the container vanished before it could be "
               "inspected",
               "container", c->id, NULL);
    cont_gone(d, c);
    docker_pump(d);
    return;
  }
  if (r->error || r->status != 200) {
    docker_describe(d, r, why, sizeof why);
    log_fields(LOG_WARN, "docker: inspect failed; retrying", "container", c->id,
               "error", why, NULL);
    schedule_retry(d, c);
    docker_pump(d);
    return;
  }
  if (c->dirty) { /* an event came meanwhile: this answer may be stale */
    c->dirty = 0;
    want_inspect(d, c);
    docker_pump(d);
    return;
  }
  char err[160];
  json_doc_t *doc = json_parse(r->body, r->body_len, err, sizeof err);
  const char *id = doc ? json_get_str(json_root(doc), "Id") : NULL;
  if (!doc || !id || strcmp(id, c->id) != 0) {
    log_fields(LOG_WARN, "docker: inspect failed; retrying", "container", c->id,
               "error", !doc ? err : "answer has no matching \"Id\"", NULL);
    json_free(doc);
    schedule_retry(d, c);
    docker_pump(d);
    return;
  }
  c->failures = 0;
  if (!docker_is_running(json_root(doc))) {
    json_free(doc);
    cont_gone(d, c);
  } else {
    REGISTER_ASSERT(!d->in_call);
    if (d->cbs.update) d->cbs.update(d->ud, c->id, json_root(doc));
    json_free(doc);
    sync_done_one(d, c);
  }
  docker_pump(d);
}

static void docker_pump(docker_t *d) {
  while (!list_empty(&d->queue) && d->inflight < d->max_inspects &&
         d->state == ST_STREAM) {
    dcont_t *c = list_entry(list_pop(&d->queue), dcont_t, qnode);
    char *u = docker_url(d, "/containers/%s/json", c->id);
    c->req = docker_get(d, u, 30000, inspect_done, c);
    free(u);
    d->inflight++;
    trace_mark(c->id, TRACE_INSPECT_SENT);
  }
}

/* ---- listing ---- */

static void docker_list_done(http_req_t *req, const http_resp_t *r, void *data);

static void docker_list_start(docker_t *d, int full) {
  if (d->list_req || d->syncing) {
    d->resync_wanted = 1;
    return;
  }
  char *u = docker_url(d, "/containers/json");
  d->list_full = full;
  d->list_seq = d->seq;
  d->list_req = docker_get(d, u, 120000, docker_list_done, d);
  free(u);
}

static void disconnect(docker_t *d, const char *why);

static void docker_list_done(http_req_t *req, const http_resp_t *r,
                             void *data) {
  (void)req;
  docker_t *d = data;
  REGISTER_ASSERT(d->list_req == req);
  d->list_req = NULL;
  char why[600], err[160];
  if (r->error || r->status != 200) {
    docker_describe(d, r, why, sizeof why);
    char msg[800];
    snprintf(msg, sizeof msg, "listing containers failed: %s", why);
    disconnect(d, msg);
    return;
  }
  json_doc_t *doc = json_parse(r->body, r->body_len, err, sizeof err);
  if (!doc || json_root(doc)->type != JSON_ARRAY) {
    char msg[800];
    snprintf(msg, sizeof msg, "container list: %s",
             doc ? "not a JSON array" : err);
    json_free(doc);
    disconnect(d, msg);
    return;
  }
  map_t *listed = map_new();
  for (const json_value_t *e = json_root(doc)->u.child; e; e = e->next) {
    const char *id = json_get_str(e, "Id");
    if (!id || !*id) {
      log_warn("docker: container list entry without \"Id\"; skipped");
      continue;
    }
    map_put(listed, id, listed); /* a set: any non-NULL value */
  }
  /* vanished: known, not listed, and not touched by an event since the
   * listing was asked for */
  map_iter_t it;
  void *v;
  map_iter_init(&it, d->conts);
  dcont_t **gone = xmalloc((map_size(d->conts) + 1) * sizeof *gone);
  size_t ngone = 0;
  while (map_iter_next(&it, NULL, &v)) {
    dcont_t *c = v;
    /* one being inspected will be settled by its answer */
    if (!map_get(listed, c->id) && c->seq <= d->list_seq &&
        !list_linked(&c->qnode) && !c->req)
      gone[ngone++] = c;
  }
  while (ngone) /* the last found goes first, as it always has */
    cont_gone(d, gone[--ngone]);
  free(gone);
  d->syncing = 1;
  d->sync_pending = 1; /* held until the loop below is done */
  const char *id;
  map_iter_init(&it, listed);
  while (map_iter_next(&it, &id, NULL)) {
    dcont_t *c = cont_get(d, id, 0);
    int fresh = c == NULL;
    if (!c) c = cont_get(d, id, 1);
    if (fresh || d->list_full) {
      if (!c->sync_wait) {
        c->sync_wait = 1;
        d->sync_pending++;
      }
      want_inspect(d, c);
    }
  }
  map_free(listed);
  json_free(doc);
  sync_release(d);
  docker_pump(d);
}

/* ---- the event stream ---- */

static void count_action(docker_t *d, const char *action) {
  char name[48];
  size_t n = strcspn(action, ":");
  snprintf(name, sizeof name, "%.*s", (int)(n < 40 ? n : 40), action);
  uint64_t *c = map_get(d->action_counts, name);
  if (!c && map_size(d->action_counts) >= 64)
    c = map_get(d->action_counts, "other");
  if (!c) {
    const char *key = map_size(d->action_counts) >= 64 ? "other" : name;
    c = xcalloc(1, sizeof *c);
    map_put(d->action_counts, xstrdup(key), c);
  }
  (*c)++;
}

size_t docker_event_counts(const docker_t *d, const char **actions,
                           uint64_t *counts, size_t max) {
  map_iter_t it;
  const char *k;
  void *v;
  size_t n = 0;
  map_iter_init(&it, d->action_counts);
  while (map_iter_next(&it, &k, &v)) {
    if (n < max) {
      actions[n] = k;
      counts[n] = *(uint64_t *)v;
    }
    n++;
  }
  return n;
}

static void handle_event(docker_t *d, const docker_event_t *ev) {
  d->seq++;
  count_action(d, ev->action);
  REGISTER_ASSERT(!d->in_call);
  if (d->cbs.event) d->cbs.event(d->ud, ev);
  const char *id;
  dcont_t *c;
  switch (docker_event_classify(ev, &id)) {
  case DOCKER_EV_GONE:
    c = cont_get(d, id, 0);
    if (c) { /* else: never registered, nothing to do */
      trace_event(id, ev->time_nano);
      cont_gone(d, c);
    }
    break;
  case DOCKER_EV_INSPECT:
    trace_event(id, ev->time_nano);
    c = cont_get(d, id, 1);
    c->seq = d->seq;
    want_inspect(d, c);
    break;
  case DOCKER_EV_NETWORK:
    c = cont_get(d, id, 0);
    if (c) {
      trace_event(id, ev->time_nano);
      c->seq = d->seq;
      /* `docker rm -f` and `docker stop` disconnect a container just
       * before it dies: wait a moment for the die instead of inspecting
       * a container that is going (a wasted inspect, which dockerd ends
       * with a broken pipe) */
      if (strcmp(ev->action, "disconnect") == 0 && !c->req &&
          !list_linked(&c->qnode))
        inspect_later(d, c, DISCONNECT_SETTLE_MS);
      else
        want_inspect(d, c);
    }
    break;
  case DOCKER_EV_OTHER_TYPE:
    /* we asked for container and network events only */
    if (!map_get(d->unknown_types, ev->type) &&
        map_size(d->unknown_types) < 64) {
      char *t = xstrdup(ev->type);
      map_put(d->unknown_types, t, t);
      log_info("docker: ignoring events of type \"%s\"", ev->type);
    }
    break;
  case DOCKER_EV_IGNORE:
    break;
  }
  docker_pump(d);
}

/* A lost event may have been a start or a die: list again to be sure. */
static void event_lost(docker_t *d) {
  if (d->connected) docker_list_start(d, 0);
}

static void on_line(void *ud, const char *p, size_t n) {
  docker_t *d = ud;
  char err[200];
  json_doc_t *doc = json_parse(p, n, err, sizeof err);
  if (!doc) {
    log_warn("docker: event skipped: %s (%zu bytes); listing containers "
             "again",
             err, n);
    event_lost(d);
    return;
  }
  docker_event_t ev;
  if (docker_parse_event(json_root(doc), d->legacy, &ev, err, sizeof err) < 0) {
    log_warn("docker: event skipped: %s; listing containers again", err);
    event_lost(d);
  } else {
    handle_event(d, &ev);
  }
  json_free(doc);
}

static void on_too_long(void *ud, size_t n) {
  docker_t *d = ud;
  log_warn("docker: event skipped: a line of %zu bytes is over the %u byte "
           "limit; listing containers again",
           n, MAX_EVENT_LINE);
  event_lost(d);
}

static const linesplit_cbs_t split_cbs = {on_line, on_too_long};

static int events_data(http_req_t *req, const char *p, size_t n, void *data) {
  (void)req;
  docker_t *d = data;
  if (!d->connected) { /* an error answer: keep a little for the log */
    if (d->errbody.len < 512) buf_append(&d->errbody, p, n < 512 ? n : 512);
    return 0;
  }
  linesplit_feed(&d->split, p, n, &split_cbs, d);
  return 0;
}

/* Connected: the event stream is open (its head came, or is late), so the
 * running containers are listed now and no event between is missed. */
static void stream_open(docker_t *d) {
  d->connected = 1;
  if (d->last_err[0] || d->reconnects)
    log_info("docker: connected (API %s), event stream open", d->api);
  else
    log_info("docker: connected (API %s)", d->api);
  REGISTER_ASSERT(!d->in_call);
  if (d->cbs.connection) d->cbs.connection(d->ud, 1);
  docker_list_start(d, 1);
}

static void events_head(http_req_t *req, const http_resp_t *r, void *data) {
  (void)req;
  docker_t *d = data;
  REGISTER_ASSERT(d->events_req == req);
  uv_timer_stop(&d->head_timer);
  if (r->status != 200) return; /* events_done reports it */
  if (d->connected) {
    /* the head came late, with the first event: the list started without
     * it is done again, for what started before the stream was open */
    log_debug("docker: the event stream's head came with its first event; "
              "listing again");
    docker_list_start(d, 0);
    return;
  }
  stream_open(d);
}

/* podman 5 sends the event stream's head only with the first event: the
 * first sync does not wait for it longer than this. */
static void head_late_cb(uv_timer_t *t) {
  docker_t *d = t->data;
  if (d->state != ST_STREAM || d->connected || !d->events_req) return;
  log_debug("docker: no event stream head after %d ms (podman 5 sends it "
            "with the first event): listing now",
            HEAD_WAIT_MS);
  stream_open(d);
}

static void events_done(http_req_t *req, const http_resp_t *r, void *data) {
  (void)req;
  docker_t *d = data;
  REGISTER_ASSERT(d->events_req == req);
  d->events_req = NULL;
  char why[600], msg[800];
  if (d->connected) {
    size_t lost = linesplit_pending(&d->split);
    if (r->error)
      transport_error(d, r, why, sizeof why);
    else
      snprintf(why, sizeof why, "closed by the daemon");
    if (lost)
      snprintf(msg, sizeof msg,
               "Docker event stream ended: %s (cut mid-event, %zu bytes "
               "dropped)",
               why, lost);
    else
      snprintf(msg, sizeof msg, "Docker event stream ended: %s", why);
  } else {
    http_resp_t er = *r;
    er.body = d->errbody.data ? d->errbody.data : "";
    er.body_len = d->errbody.len;
    docker_describe(d, &er, why, sizeof why);
    snprintf(msg, sizeof msg, "cannot open the Docker event stream: %s", why);
  }
  buf_reset(&d->errbody);
  disconnect(d, msg);
}

static void open_events(docker_t *d) {
  d->state = ST_STREAM;
  linesplit_reset(&d->split);
  char *u =
      docker_url(d, "/events?filters=%%7B%%22type%%22%%3A%%5B%%22container%%22"
                    "%%2C%%22network%%22%%5D%%7D");
  http_opts_t o = {0};
  o.url = u;
  o.unix_socket = d->socket;
  o.tls = d->use_tls ? &d->tls : NULL;
  o.on_head = events_head;
  o.on_data = events_data;
  o.on_done = events_done;
  o.data = d;
  d->events_req = http_request(d->stream_http, &o);
  free(u);
  uv_timer_start(&d->head_timer, head_late_cb, HEAD_WAIT_MS, 0);
}

/* ---- connection lifecycle ---- */

static void set_api(docker_t *d, const char *server) {
  const char *v = docker_version_cmp(server, API_MAX) > 0 ? API_MAX : server;
  snprintf(d->api, sizeof d->api, "%s", v);
  d->legacy = docker_version_cmp(d->api, API_NEW_EVENTS) < 0;
  log_debug("docker: daemon API %s, using %s%s", server, d->api,
            d->legacy ? " (legacy events)" : "");
}

static void version_done(http_req_t *req, const http_resp_t *r, void *data) {
  (void)req;
  docker_t *d = data;
  REGISTER_ASSERT(d->ping_req == req);
  d->ping_req = NULL;
  char why[600];
  const char *v = NULL;
  json_doc_t *doc = NULL;
  if (!r->error && r->status == 200) {
    doc = json_parse(r->body, r->body_len, NULL, 0);
    v = doc ? json_get_str(json_root(doc), "ApiVersion") : NULL;
  }
  if (!v) {
    docker_describe(d, r, why, sizeof why);
    char msg[800];
    snprintf(msg, sizeof msg, "cannot read the Docker API version: %s",
             r->error || r->status != 200 ? why : "no ApiVersion");
    json_free(doc);
    disconnect(d, msg);
    return;
  }
  set_api(d, v);
  json_free(doc);
  open_events(d);
}

static void ping_done(http_req_t *req, const http_resp_t *r, void *data) {
  (void)req;
  docker_t *d = data;
  REGISTER_ASSERT(d->ping_req == req);
  d->ping_req = NULL;
  char v[32], why[600], msg[800];
  if (r->error || r->status >= 500 || r->status == 0) {
    docker_describe(d, r, why, sizeof why);
    snprintf(msg, sizeof msg, "cannot reach Docker at %s: %s",
             d->socket ? d->socket : d->base, why);
    disconnect(d, msg);
    return;
  }
  if (r->status == 200 && http_header(r, "Api-Version", v, sizeof v) == 0 &&
      v[0]) {
    set_api(d, v);
    open_events(d);
    return;
  }
  /* very old daemons: ask /version */
  d->state = ST_VERSION;
  char *u = xasprintf("%s/version", d->base);
  d->ping_req = docker_get(d, u, 10000, version_done, d);
  free(u);
}

static void connect_start(docker_t *d) {
  d->state = ST_PING;
  d->api[0] = '\0';
  char *u = xasprintf("%s/_ping", d->base);
  d->ping_req = docker_get(d, u, 10000, ping_done, d);
  free(u);
}

static void reconnect_cb(uv_timer_t *t) {
  docker_t *d = t->data;
  d->reconnects++;
  connect_start(d);
}

/* Drops the connection state (keeping what is known of containers) and
 * tries again after a capped, jittered exponential backoff. */
static void disconnect(docker_t *d, const char *why) {
  int was_up = d->connected;
  conn_problem(d, "docker: %s", why);
  if (d->snap.done) docker_snap_finish(d, 0, "the Docker connection was lost");
  if (d->events_req) http_cancel(d->events_req);
  if (d->list_req) http_cancel(d->list_req);
  if (d->ping_req) http_cancel(d->ping_req);
  d->events_req = d->list_req = d->ping_req = NULL;
  d->connected = 0;
  d->syncing = 0;
  d->sync_pending = 0;
  d->resync_wanted = 0;
  while (list_pop(&d->queue))
    ;
  map_iter_t it;
  void *v;
  map_iter_init(&it, d->conts);
  while (map_iter_next(&it, NULL, &v)) {
    dcont_t *c = v;
    if (c->req) http_cancel(c->req);
    c->req = NULL;
    c->dirty = c->sync_wait = c->retrying = 0;
  }
  d->inflight = 0;
  uv_timer_stop(&d->retry_timer);
  uv_timer_stop(&d->head_timer);
  linesplit_reset(&d->split);
  d->state = ST_IDLE;
  REGISTER_ASSERT(!was_up || !d->in_call); /* docker_start(): never up */
  if (was_up && d->cbs.connection) d->cbs.connection(d->ud, 0);

  d->backoff_ms = d->backoff_ms ? d->backoff_ms * 2 : BACKOFF_MIN_MS;
  if (d->backoff_ms > BACKOFF_MAX_MS) d->backoff_ms = BACKOFF_MAX_MS;
  uint64_t delay =
      d->backoff_ms / 2 + util_rand((uint32_t)d->backoff_ms / 2 + 1);
  log_debug("docker: reconnecting in %llu ms", (unsigned long long)delay);
  uv_timer_start(&d->reconnect_timer, reconnect_cb, delay, 0);
}

/* ---- public ---- */

docker_t *docker_new(uv_loop_t *loop, http_t *http, const docker_opts_t *o,
                     const docker_cbs_t *cbs, void *ud) {
  docker_t *d = xcalloc(1, sizeof *d);
  d->loop = loop;
  d->http = http;
  d->stream_http = o->stream_http ? o->stream_http : http;
  d->base = xstrdup(o->base);
  d->socket = o->socket ? xstrdup(o->socket) : NULL;
  if (o->tls) {
    d->use_tls = 1;
    http_tls_copy(&d->tls, o->tls);
  }
  d->cbs = *cbs;
  d->ud = ud;
  d->max_inspects = o->max_inspects > 0 ? o->max_inspects : 32;
  d->conts = map_new();
  d->unknown_types = map_new();
  d->action_counts = map_new();
  list_init(&d->queue);
  linesplit_init(&d->split, MAX_EVENT_LINE);
  uv_timer_init(loop, &d->reconnect_timer);
  uv_timer_init(loop, &d->retry_timer);
  uv_timer_init(loop, &d->head_timer);
  uv_timer_init(loop, &d->snap_timer);
  d->reconnect_timer.data = d;
  d->retry_timer.data = d;
  d->head_timer.data = d->snap_timer.data = d;
  return d;
}

void docker_set_tls(docker_t *d, const http_tls_t *tls) {
  if (!d->use_tls) return;
  http_tls_free(&d->tls);
  http_tls_copy(&d->tls, tls);
}

void docker_start(docker_t *d) {
  REGISTER_ASSERT(d->state == ST_IDLE && !d->ping_req); /* started once */
  d->in_call++;
  connect_start(d);
  d->in_call--;
}

void docker_resync(docker_t *d) {
  if (d->state != ST_STREAM || !d->connected) return;
  d->in_call++;
  docker_list_start(d, 0);
  d->in_call--;
}

void docker_refresh(docker_t *d, const char *id) {
  dcont_t *c = cont_get(d, id, 0);
  if (!c) return;
  d->in_call++;
  want_inspect(d, c);
  docker_pump(d);
  d->in_call--;
}

uint32_t *docker_cont_word(docker_t *d, const char *id) {
  if (d->going && strcmp(d->going->id, id) == 0) return &d->going->word;
  dcont_t *c = cont_get(d, id, 0);
  return c ? &c->word : NULL;
}

const char *docker_api_version(const docker_t *d) {
  return d->api;
}

int docker_connected(const docker_t *d) {
  return d->connected;
}

uint64_t docker_reconnects(const docker_t *d) {
  return d->reconnects;
}

size_t docker_containers(const docker_t *d) {
  return map_size(d->conts);
}

/* ---- the snapshot for a policy reload ---- */

static void snap_pump(docker_t *d);
static void snap_start_cb(uv_timer_t *t);

static void docker_snap_finish(docker_t *d, int ok, const char *why) {
  for (size_t i = 0; i < ARRAY_SIZE(d->snap.reqs); i++) {
    if (d->snap.reqs[i]) http_cancel(d->snap.reqs[i]);
    d->snap.reqs[i] = NULL;
  }
  for (size_t i = 0; i < d->snap.nready; i++)
    json_free(d->snap.ready[i]);
  uv_timer_stop(&d->snap_timer);
  for (size_t i = 0; i < d->snap.n; i++)
    free(d->snap.ids[i]);
  free(d->snap.ids);
  docker_snapdone_cb done = d->snap.done;
  void *ud = d->snap.ud;
  memset(&d->snap, 0, sizeof d->snap);
  REGISTER_ASSERT(!done || !d->in_call);
  if (done) done(ud, ok, why);
}

static void snap_done(http_req_t *req, const http_resp_t *r, void *data) {
  docker_t *d = data;
  int found = 0;
  for (size_t i = 0; i < ARRAY_SIZE(d->snap.reqs); i++) {
    if (d->snap.reqs[i] != req) continue;
    d->snap.reqs[i] = NULL;
    found = 1;
  }
  /* one of the snapshot's requests in flight, answered once */
  REGISTER_ASSERT(found && d->snap.inflight > 0 && d->snap.done);
  d->snap.inflight--;
  char err[200];
  if (!r->error && r->status == 404) { /* gone meanwhile: events handle it */
    snap_pump(d);
    return;
  }
  json_doc_t *doc = NULL;
  if (r->error || r->status != 200 ||
      !(doc = json_parse(r->body, r->body_len, err, sizeof err))) {
    char why[600];
    docker_describe(d, r, why, sizeof why);
    snprintf(d->snap.why, sizeof d->snap.why, "inspect failed: %s",
             r->error || r->status != 200 ? why : err);
    docker_snap_finish(d, 0, d->snap.why);
    return;
  }
  /* a free place: answers in flight and waiting together are at most
   * the slots (snap_pump) */
  REGISTER_ASSERT(d->snap.nready < ARRAY_SIZE(d->snap.ready));
  d->snap.ready[d->snap.nready++] = doc;
  if (d->snap.nready == 1) uv_timer_start(&d->snap_timer, snap_start_cb, 0, 0);
}

/* The oldest answer waiting goes to each(); the next one, if any, at the
 * next turn of the loop. */
static void snap_deliver(docker_t *d) {
  json_doc_t *doc = d->snap.ready[0];
  d->snap.nready--;
  memmove(d->snap.ready, d->snap.ready + 1,
          d->snap.nready * sizeof d->snap.ready[0]);
  const json_value_t *root = json_root(doc);
  const char *id = json_get_str(root, "Id");
  if (id && docker_is_running(root)) d->snap.each(d->snap.ud, id, root);
  json_free(doc);
  if (!d->snap.done) return; /* each() cannot end it; kept as a guard */
  if (d->snap.nready) uv_timer_start(&d->snap_timer, snap_start_cb, 0, 0);
  snap_pump(d);
}

static void snap_pump(docker_t *d) {
  while (d->snap.next < d->snap.n &&
         d->snap.inflight + d->snap.nready < ARRAY_SIZE(d->snap.reqs)) {
    char *u = docker_url(d, "/containers/%s/json", d->snap.ids[d->snap.next++]);
    http_req_t *req = docker_get(d, u, 30000, snap_done, d);
    free(u);
    size_t i = 0;
    while (i < ARRAY_SIZE(d->snap.reqs) && d->snap.reqs[i])
      i++;
    /* a free slot: one per request in flight, and inflight < the slots */
    REGISTER_ASSERT(i < ARRAY_SIZE(d->snap.reqs));
    d->snap.reqs[i] = req;
    d->snap.inflight++;
  }
  if (d->snap.next == d->snap.n && d->snap.inflight == 0 && d->snap.nready == 0)
    docker_snap_finish(d, 1, NULL);
}

static void snap_start_cb(uv_timer_t *t) {
  docker_t *d = t->data;
  if (!d->snap.done) return; /* it ended meanwhile */
  if (d->snap.nready)
    snap_deliver(d);
  else
    snap_pump(d);
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
  /* the first requests go from the loop: even a snapshot of nothing ends
   * after this call has returned */
  uv_timer_start(&d->snap_timer, snap_start_cb, 0, 0);
  return 0;
}

static void docker_timer_closed(uv_handle_t *h) {
  docker_t *d = h->data;
  REGISTER_ASSERT(d->open_handles > 0); /* one close callback per timer */
  if (--d->open_handles == 0) free(d);
}

void docker_free(docker_t *d) {
  if (!d) return;
  d->snap.done = NULL; /* no callback from here on */
  if (d->snap.ids) docker_snap_finish(d, 0, NULL);
  if (d->events_req) http_cancel(d->events_req);
  if (d->list_req) http_cancel(d->list_req);
  if (d->ping_req) http_cancel(d->ping_req);
  map_iter_t it;
  void *v;
  map_iter_init(&it, d->conts);
  while (map_iter_next(&it, NULL, &v)) {
    dcont_t *c = v;
    if (c->req) http_cancel(c->req);
    free(c);
  }
  map_free(d->conts);
  map_iter_init(&it, d->unknown_types);
  while (map_iter_next(&it, NULL, &v))
    free(v);
  map_free(d->unknown_types);
  const char *k;
  map_iter_init(&it, d->action_counts);
  while (map_iter_next(&it, &k, &v)) {
    free((char *)(uintptr_t)k);
    free(v);
  }
  map_free(d->action_counts);
  linesplit_free(&d->split);
  buf_free(&d->errbody);
  free(d->base);
  free(d->socket);
  http_tls_free(&d->tls);
  d->state = ST_CLOSED;
  d->open_handles = 4;
  uv_close((uv_handle_t *)&d->snap_timer, docker_timer_closed);
  uv_close((uv_handle_t *)&d->reconnect_timer, docker_timer_closed);
  uv_close((uv_handle_t *)&d->retry_timer, docker_timer_closed);
  uv_close((uv_handle_t *)&d->head_timer, docker_timer_closed);
}

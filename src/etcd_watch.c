/* etcd_watch: v2's long poll and v3's watch stream, on the client's
 * current endpoint.  See etcd_watch.h. */
#include "etcd_watch.h"
#include "etcd_op.h"
#include "json.h"
#include "linesplit.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* a v3 stream message (one JSON object per line); longer is a failure */
#define MAX_MESSAGE (4u << 20)
/* the shortest time a probe of the watch's member is given */
#define PROBE_MIN_MS 2000.0
/* what a refusal's body may add to its one-line error */
#define MAX_ERROR_BODY 300

struct etcd_watch {
  etcd_t *e;
  char *prefix;
  int exact;    /* the key prefix itself, not what is under it */
  int64_t next; /* the first revision (v2: index) not seen yet */
  etcd_watch_cb cb;
  void *data;
  http_req_t *req;
  etcd_ep_t *ep;       /* the endpoint of the current request (held) */
  long status;         /* v3: the stream's HTTP status, once its head is in */
  linesplit_t lines;   /* v3: the stream, cut into messages */
  buf_t errbody;       /* v3: a refusal's body (the first bytes) */
  int in_cb, gone;     /* inside a callback; cancelled meanwhile */
  int over;            /* the final callback ran or is running */
  int starting;        /* inside etcd_watch(): no callback may run */
  char final_err[400]; /* set by a message that ends the watch */
  etcd_watch_kind_t final_kind;
  /* the probe (etcd_watch_probe_every): 0 = none */
  uint64_t probe_every_ms;
  uv_timer_t *probe_timer; /* heap: it closes after the watch is freed */
  http_req_t *probe;       /* GET /version on w->ep, in flight */
  uint64_t alive_ms;       /* uv_now(): w->ep last showed it answers */
  long probe_limit_ms;     /* the probe in flight's time limit */
};

static void start(etcd_watch_t *w);

static void probe_closed(uv_handle_t *h) {
  free(h);
}

static void watch_free(etcd_watch_t *w) {
  if (w->req) http_cancel(w->req);
  if (w->probe) http_cancel(w->probe);
  if (w->probe_timer) uv_close((uv_handle_t *)w->probe_timer, probe_closed);
  REGISTER_ASSERT(w->e->watches > 0); /* etcd_free() waits for none */
  w->e->watches--;
  etcd_ep_drop(w->ep);
  linesplit_free(&w->lines);
  buf_free(&w->errbody);
  free(w->prefix);
  free(w);
}

/* A change: 1 when the owner cancelled the watch meanwhile (w->gone: the
 * caller frees it). */
static int notify(etcd_watch_t *w, int64_t rev) {
  /* from the loop, before the end, and never twice at once */
  REGISTER_ASSERT(!w->starting && !w->over && !w->in_cb);
  if (rev >= w->next) w->next = rev + 1;
  w->in_cb = 1;
  w->cb(w->data, ETCD_WATCH_CHANGED, rev, NULL);
  w->in_cb = 0;
  return w->gone;
}

/* The same, freeing a watch cancelled meanwhile: 1 then. */
static int changed(etcd_watch_t *w, int64_t rev) {
  if (!notify(w, rev)) return 0;
  watch_free(w);
  return 1;
}

/* The end: the last callback, then the watch goes. */
static void finish(etcd_watch_t *w, etcd_watch_kind_t kind, const char *err) {
  REGISTER_ASSERT(!w->starting && !w->over); /* the end comes once */
  w->over = 1;
  if (w->req) {
    http_cancel(w->req);
    w->req = NULL;
  }
  if (w->probe) {
    http_cancel(w->probe);
    w->probe = NULL;
  }
  w->cb(w->data, kind, w->next - 1, err);
  watch_free(w);
}

/* ---- v2: one long poll per change ---- */

static void v2_done(http_req_t *req, const http_resp_t *r, void *data) {
  etcd_watch_t *w = data;
  REGISTER_ASSERT(w->req == req); /* the request this watch waits for */
  w->req = NULL;
  char err[400];
  if (r->error == HTTP_ERR_TIMEOUT || (r->status == 200 && !r->body_len)) {
    /* quiet: renewed.  etcd sends X-Etcd-Index, its index when the wait
     * began, at once: nothing under the prefix changed up to it (an event
     * from w->next on would have been answered from its history), so the
     * renewal waits from after it.  Without this a quiet prefix falls out
     * of the history's last 1000 events (writes elsewhere, and TTL
     * refreshes inside it, which wake no watcher) and the renewal is told
     * the index was cleared. */
    char v[32];
    if (r->status == 200 && http_header(r, "X-Etcd-Index", v, sizeof v) == 0) {
      char *end;
      errno = 0;
      long long idx = strtoll(v, &end, 10);
      if (!errno && end != v && !*end && idx >= w->next && idx < INT64_MAX)
        w->next = (int64_t)idx + 1;
    }
    start(w);
    return;
  }
  if (r->error) {
    snprintf(err, sizeof err, "%s: %s", w->ep->url, r->errmsg);
    finish(w, ETCD_WATCH_FAILED, err);
    return;
  }
  char jerr[160];
  json_doc_t *doc = json_parse(r->body, r->body_len, jerr, sizeof jerr);
  const json_value_t *root = doc ? json_root(doc) : NULL;
  int64_t code = root ? json_int(json_get(root, "errorCode")) : 0;
  if (r->status == 200 && root && !code) {
    int64_t rev = json_int(json_get(json_get(root, "node"), "modifiedIndex"));
    json_free(doc);
    if (rev <= 0) {
      snprintf(err, sizeof err, "%s: a watch answer without modifiedIndex",
               w->ep->url);
      finish(w, ETCD_WATCH_FAILED, err);
      return;
    }
    if (!changed(w, rev)) start(w);
    return;
  }
  if (code == 401) { /* "The event in requested index is outdated and
                        cleared" */
    json_free(doc);
    finish(w, ETCD_WATCH_COMPACTED, NULL);
    return;
  }
  const char *msg = root ? json_get_str(root, "message") : NULL;
  snprintf(err, sizeof err, "%s: HTTP %ld%s%s", w->ep->url, r->status,
           msg ? ": " : (doc ? "" : ": "), msg ? msg : (doc ? "" : jerr));
  json_free(doc);
  finish(w, ETCD_WATCH_FAILED, err);
}

/* ---- v3: a stream of messages ---- */

/* The end a message asked for, kept until the stream's bytes are
 * handled (the watch, and the line splitter in it, live until then). */
static int v3_end(etcd_watch_t *w, etcd_watch_kind_t kind, const char *err) {
  w->final_kind = kind;
  snprintf(w->final_err, sizeof w->final_err, "%s", err ? err : "");
  return 1;
}

/* One message of the stream: 0 to go on; 1 when the watch ends
 * (v3_end) or was cancelled in the callback (w->gone). */
static int v3_message(etcd_watch_t *w, const char *p, size_t n) {
  char jerr[160], err[400];
  json_doc_t *doc = json_parse(p, n, jerr, sizeof jerr);
  const json_value_t *root = doc ? json_root(doc) : NULL;
  const json_value_t *res = root ? json_get(root, "result") : NULL;
  const char *ep = w->ep->url;
  if (!res) {
    const json_value_t *e = root ? json_get(root, "error") : NULL;
    const char *msg = e ? json_get_str(e, "message") : NULL;
    snprintf(err, sizeof err, "%s: the watch stream said %s%s", ep,
             msg ? msg : (doc ? "something else than a result" : "no JSON: "),
             msg || doc ? "" : jerr);
    json_free(doc);
    return v3_end(w, ETCD_WATCH_FAILED, err);
  }
  int64_t compact = json_int(json_get(res, "compact_revision"));
  const json_value_t *canceled = json_get(res, "canceled");
  if (compact > 0) {
    json_free(doc);
    return v3_end(w, ETCD_WATCH_COMPACTED, NULL);
  }
  if (canceled && canceled->type == JSON_BOOL && canceled->u.boolean) {
    const char *why = json_get_str(res, "cancel_reason");
    snprintf(err, sizeof err, "%s: etcd cancelled the watch%s%s", ep,
             why && *why ? ": " : "", why ? why : "");
    json_free(doc);
    return v3_end(w, ETCD_WATCH_FAILED, err);
  }
  const json_value_t *events = json_get(res, "events");
  int64_t rev = 0;
  if (events && events->type == JSON_ARRAY)
    for (const json_value_t *ev = events->u.child; ev; ev = ev->next) {
      int64_t r = json_int(json_get(json_get(ev, "kv"), "mod_revision"));
      if (r > rev) rev = r;
    }
  if (events && events->type == JSON_ARRAY && events->len && !rev)
    rev = json_int(json_get(json_get(res, "header"), "revision"));
  json_free(doc);
  if (rev > 0 && rev >= w->next) return notify(w, rev);
  return 0;
}

typedef struct {
  etcd_watch_t *w;
  int ended;
} v3_feed_t;

static void v3_line(void *ud, const char *p, size_t n) {
  v3_feed_t *f = ud;
  if (f->ended) return;
  f->ended = v3_message(f->w, p, n);
}

static void v3_too_long(void *ud, size_t n) {
  v3_feed_t *f = ud;
  if (f->ended) return;
  char err[200];
  snprintf(err, sizeof err, "%s: a watch message of %zu bytes, over %u",
           f->w->ep->url, n, MAX_MESSAGE);
  f->ended = v3_end(f->w, ETCD_WATCH_FAILED, err);
}

static void v3_head(http_req_t *req, const http_resp_t *r, void *data) {
  etcd_watch_t *w = data;
  REGISTER_ASSERT(w->req == req);
  w->status = r->status;
  w->alive_ms = uv_now(w->e->loop);
}

static int v3_data(http_req_t *req, const char *p, size_t n, void *data) {
  etcd_watch_t *w = data;
  REGISTER_ASSERT(w->req == req && !w->over);
  w->alive_ms = uv_now(w->e->loop);
  if (w->status != 200) { /* a refusal: keep its start for the error */
    size_t room =
        MAX_ERROR_BODY > w->errbody.len ? MAX_ERROR_BODY - w->errbody.len : 0;
    buf_append(&w->errbody, p, n < room ? n : room);
    return 0;
  }
  static const linesplit_cbs_t cbs = {v3_line, v3_too_long};
  v3_feed_t f = {w, 0};
  linesplit_feed(&w->lines, p, n, &cbs, &f);
  if (!f.ended) return 0;
  /* the request goes with the watch (cancelled: no callback of it runs) */
  if (w->gone)
    watch_free(w);
  else
    finish(w, w->final_kind, w->final_err[0] ? w->final_err : NULL);
  return 0;
}

static void v3_done(http_req_t *req, const http_resp_t *r, void *data) {
  etcd_watch_t *w = data;
  REGISTER_ASSERT(w->req == req && !w->over);
  const char *ep = w->ep->url;
  w->req = NULL;
  char err[600];
  if (w->status == 200 && r->error == HTTP_ERR_TIMEOUT) {
    start(w); /* quiet: renewed */
    return;
  }
  if (r->error) {
    snprintf(err, sizeof err, "%s: %s", ep, r->errmsg);
  } else if (w->status != 200) {
    for (size_t i = 0; i < w->errbody.len; i++)
      if (w->errbody.data[i] == '\n' || w->errbody.data[i] == '\r')
        w->errbody.data[i] = ' ';
    snprintf(err, sizeof err, "%s: HTTP %ld: %.*s", ep, w->status,
             (int)w->errbody.len, w->errbody.data ? w->errbody.data : "");
  } else {
    snprintf(err, sizeof err, "%s: the watch stream ended", ep);
  }
  finish(w, ETCD_WATCH_FAILED, err);
}

/* ---- requests ---- */

/* Never fails here: a request curl will not take fails from the loop
 * (http.h), and the watch ends with its error. */
static void start(etcd_watch_t *w) {
  etcd_t *e = w->e;
  /* the client's current endpoint, whatever the list did meanwhile */
  etcd_ep_drop(w->ep);
  w->ep = etcd_ep_hold(e->current);
  if (w->probe) { /* a probe of the endpoint left behind */
    http_cancel(w->probe);
    w->probe = NULL;
  }
  w->alive_ms = uv_now(e->loop);
  w->status = 0;
  linesplit_reset(&w->lines);
  buf_reset(&w->errbody);
  buf_t path, body;
  buf_init(&path);
  buf_init(&body);
  const char *headers[3] = {NULL, NULL, NULL};
  char *auth = NULL;
  http_opts_t o = {0};
  o.timeout_ms = ETCD_WATCH_RENEW_MS;
  o.connect_timeout_ms = 2000;
  o.tls = e->use_tls ? &e->tls : NULL;
  o.data = w;
  if (e->api == ETCD_API_V3) {
    size_t n = strlen(w->prefix);
    char *lo = xasprintf("%s/", w->prefix), *hi = xasprintf("%s0", w->prefix);
    buf_printf(&path, "%s/v3/watch", w->ep->url);
    buf_puts(&body, "{\"create_request\":{\"key\":\"");
    if (w->exact) { /* no range_end: the one key */
      util_base64_encode(&body, w->prefix, n);
    } else {
      util_base64_encode(&body, lo, n + 1);
      buf_puts(&body, "\",\"range_end\":\"");
      util_base64_encode(&body, hi, n + 1);
    }
    buf_printf(&body, "\",\"start_revision\":\"%" PRId64 "\"}}", w->next);
    free(lo);
    free(hi);
    o.method = "POST";
    o.body = body.data;
    o.body_len = body.len;
    headers[0] = "Content-Type: application/json";
    if (e->token) {
      auth = xasprintf("Authorization: %s", e->token);
      headers[1] = auth;
    }
    o.on_head = v3_head;
    o.on_data = v3_data;
    o.on_done = v3_done;
  } else {
    buf_printf(&path, "%s/v2/keys", w->ep->url);
    util_urlencode(&path, w->prefix, strlen(w->prefix), "/:");
    buf_printf(&path, "?wait=true%s&waitIndex=%" PRId64,
               w->exact ? "" : "&recursive=true", w->next);
    o.method = "GET";
    o.userpwd = e->userpwd;
    o.on_done = v2_done;
  }
  o.url = path.data;
  o.headers = headers;
  w->req = http_request(e->http, &o);
  buf_free(&path);
  buf_free(&body);
  if (auth) {
    memset(auth, 0, strlen(auth));
    free(auth);
  }
  REGISTER_ASSERT(w->req);
}

/* ---- the probe: is the watch's member still there? ----
 *
 * A watch that hears nothing cannot tell a quiet prefix from a member
 * that hung (a process stopped, a proxy in front of it frozen, a host
 * cut off after the connection was made): the stream stays open, and
 * until the renewal the owner's file stays stale with nothing said.  So
 * a watch quiet for probe_every_ms asks its own endpoint for /version
 * (not through etcd.c, which would fail over and answer for another
 * member); a member that does not answer within the probe's limit
 * (probe_tick) ends the watch (FAILED), and the owner's listing, which fails
 * over, finds a member that does.  Any HTTP answer counts as alive: a member
 * that answers 503 (an alarm, no leader) is not left for that, as the
 * watches of a whole fleet would otherwise be ended every few seconds
 * for as long as an alarm lasts. */

/* The endpoint after w->ep in the client's list, for the requests that
 * follow (the owner's listing), as etcd.c moves on after a failure. */
static void leave_endpoint(etcd_watch_t *w) {
  etcd_t *e = w->e;
  if (e->current != w->ep || e->n < 2) return;
  for (size_t i = 0; i < e->n; i++)
    if (e->eps[i] == w->ep) {
      e->current = e->eps[(i + 1) % e->n];
      return;
    }
}

static void probe_done(http_req_t *req, const http_resp_t *r, void *data) {
  etcd_watch_t *w = data;
  REGISTER_ASSERT(w->probe == req && !w->over);
  w->probe = NULL;
  if (r->status > 0) { /* it answered: alive, whatever it said */
    w->alive_ms = uv_now(w->e->loop);
    return;
  }
  char err[400];
  snprintf(err, sizeof err,
           "%s: no answer to a probe within %ld ms while the watch was quiet "
           "(%s); leaving that member",
           w->ep->url, w->probe_limit_ms, r->errmsg ? r->errmsg : "?");
  leave_endpoint(w);
  finish(w, ETCD_WATCH_FAILED, err);
}

static void probe_tick(uv_timer_t *t) {
  etcd_watch_t *w = t->data;
  if (w->over || w->in_cb || w->probe || !w->req) return;
  uint64_t now = uv_now(w->e->loop);
  if (now - w->alive_ms < w->probe_every_ms) return;
  etcd_t *e = w->e;
  /* /version: answered by the member's HTTP server alone (etcd 3.4's
   * /health is a quorum read: a raft proposal per probe, and its own 1 s
   * limit would make a slow cluster's members look hung) */
  char *url = xasprintf("%s/version", w->ep->url);
  /* as etcd.c gives an attempt that can be followed by another: ten
   * times the recent latency, at least PROBE_MIN_MS, at most the client's
   * timeout (a busy cluster is not left for being busy) */
  double limit = e->lat_avg_ms * 10;
  if (limit < PROBE_MIN_MS) limit = PROBE_MIN_MS;
  if (limit > (double)e->timeout_ms) limit = (double)e->timeout_ms;
  w->probe_limit_ms = (long)limit;
  http_opts_t o = {0};
  o.method = "GET";
  o.url = url;
  o.timeout_ms = w->probe_limit_ms;
  o.connect_timeout_ms = w->probe_limit_ms;
  o.tls = e->use_tls ? &e->tls : NULL;
  o.on_done = probe_done;
  o.data = w;
  w->probe = http_request(e->http, &o);
  free(url);
  REGISTER_ASSERT(w->probe);
}

void etcd_watch_probe_every(etcd_watch_t *w, uint64_t ms) {
  if (!w || w->over || w->probe_timer || !ms) return;
  w->probe_every_ms = ms;
  w->probe_timer = xcalloc(1, sizeof *w->probe_timer);
  uv_timer_init(w->e->loop, w->probe_timer);
  w->probe_timer->data = w;
  /* checked a few times per period: a probe starts at most about a
   * quarter period late */
  uint64_t tick = ms / 4 ? ms / 4 : 1;
  uv_timer_start(w->probe_timer, probe_tick, tick, tick);
}

uint64_t etcd_watch_quiet_ms(const etcd_watch_t *w) {
  if (!w || w->over) return 0;
  return uv_now(w->e->loop) - w->alive_ms;
}

static etcd_watch_t *watch_new(etcd_t *e, const char *prefix, int exact,
                               int64_t from, etcd_watch_cb cb, void *data) {
  etcd_watch_t *w = xcalloc(1, sizeof *w);
  w->e = e;
  w->prefix = xstrdup(prefix);
  w->exact = exact;
  w->next = from > 0 ? from : 1;
  w->cb = cb;
  w->data = data;
  linesplit_init(&w->lines, MAX_MESSAGE);
  buf_init(&w->errbody);
  e->watches++;
  w->starting = 1;
  start(w);
  w->starting = 0;
  return w;
}

etcd_watch_t *etcd_watch(etcd_t *e, const char *prefix, int64_t from,
                         etcd_watch_cb cb, void *data) {
  return watch_new(e, prefix, 0, from, cb, data);
}

etcd_watch_t *etcd_watch_key(etcd_t *e, const char *key, int64_t from,
                             etcd_watch_cb cb, void *data) {
  return watch_new(e, key, 1, from, cb, data);
}

void etcd_watch_cancel(etcd_watch_t *w) {
  if (!w || w->over) return;
  if (w->in_cb) { /* freed when the callback returns */
    w->gone = 1;
    if (w->req) {
      http_cancel(w->req);
      w->req = NULL;
    }
    return;
  }
  watch_free(w);
}

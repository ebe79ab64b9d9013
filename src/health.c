/* health: /metrics and /healthz answers. */
#include "health.h"
#include "docker.h"
#include "json.h"
#include "reconcile.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEALTH_ETCD_FRESH_MS                                                   \
  3000                          /* older than this: probe before answering     \
                                 */
#define HEALTH_PENDING_MS 60000 /* writes pending longer: unhealthy */

struct health {
  etcd_t *etcd;
  health_inputs_cb inputs;
  void *ud;
  httpd_req_t **waiting; /* /healthz requests waiting for a probe */
  size_t nwaiting;
  etcd_op_t *probe;
  int probing; /* inside etcd_probe(): its answer cannot come */
  /* the last probe failed (util_now_ms() then; 0: it did not), and why:
   * until etcd answers again, /healthz says so at once (a probe takes up to
   * its timeout, longer than a prober waits) while another probe runs */
  uint64_t failed_ms;
  char failed_err[300];
  uint64_t probe_ms; /* when the probe in flight was sent */
};

health_t *health_new(etcd_t *etcd, health_inputs_cb inputs, void *ud) {
  health_t *h = xcalloc(1, sizeof *h);
  h->etcd = etcd;
  h->inputs = inputs;
  h->ud = ud;
  return h;
}

static void serve_metrics(health_t *h, httpd_req_t *req) {
  metrics_input_t in = {0};
  h->inputs(h->ud, &in);
  buf_t b;
  buf_init(&b);
  metrics_render(&b, &in);
  httpd_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data,
                b.len);
  buf_free(&b);
}

/* 200 when the event stream is up, etcd answered recently and nothing is
 * pending too long; else 503 with the problems, one short string each. */
static void answer_health(health_t *h, httpd_req_t *req, const char *etcd_err) {
  metrics_input_t in = {0};
  h->inputs(h->ud, &in);
  buf_t problems, b;
  buf_init(&problems);
  buf_init(&b);
  char msg[400];
  if (!in.docker || !docker_connected(in.docker)) {
    snprintf(msg, sizeof msg, "docker: the event stream is not connected");
    buf_putc(&problems, ',');
    json_escape(&problems, msg, strlen(msg));
  }
  if (etcd_err) {
    snprintf(msg, sizeof msg, "etcd: no answer: %s", etcd_err);
    buf_putc(&problems, ',');
    json_escape(&problems, msg, strlen(msg));
  }
  reconcile_stats_t st;
  reconcile_stats(in.rec, &st);
  if (st.list_refused) { /* nothing under the prefix can be known */
    snprintf(msg, sizeof msg,
             "etcd: the owned prefix cannot be read: %.300s (permissions?); "
             "retrying",
             st.list_refused);
    buf_putc(&problems, ',');
    json_escape(&problems, msg, strlen(msg));
  } else if (st.failed) { /* a refusal is not an outage: it does not heal by
                      waiting, so it is said at once */
    snprintf(msg, sizeof msg,
             "etcd: %zu key%s refused (permissions? NOSPACE?); retrying",
             st.failed, st.failed == 1 ? "" : "s");
    buf_putc(&problems, ',');
    json_escape(&problems, msg, strlen(msg));
  } else if (st.behind_ms > HEALTH_PENDING_MS) {
    snprintf(msg, sizeof msg, "etcd: %zu keys pending for %llu s",
             st.queued + st.inflight + st.failed,
             (unsigned long long)st.behind_ms / 1000);
    buf_putc(&problems, ',');
    json_escape(&problems, msg, strlen(msg));
  }
  if (in.worker_backoff) {
    snprintf(msg, sizeof msg,
             "policy: the policy worker keeps dying; restarted after a "
             "backoff");
    buf_putc(&problems, ',');
    json_escape(&problems, msg, strlen(msg));
  }
  if (in.containers_failed) {
    snprintf(msg, sizeof msg,
             "policy: %zu running container%s failed the policy call (%s)",
             in.containers_failed, in.containers_failed == 1 ? "" : "s",
             in.failed_example ? in.failed_example : "-");
    buf_putc(&problems, ',');
    json_escape(&problems, msg, strlen(msg));
  }
  if (problems.len)
    buf_printf(&b, "{\"status\":\"unhealthy\",\"problems\":[%s]",
               problems.data + 1);
  else
    buf_puts(&b, "{\"status\":\"ok\"");
  buf_printf(&b, ",\"keys\":%zu,\"containers\":%zu,\"containers_failed\":%zu",
             st.keys, st.containers, in.containers_failed);
  if (in.fleet) { /* said, not a problem: the host keeps what it runs */
    const fleet_view_t *f = in.fleet;
    buf_puts(&b, ",\"policy\":{\"key\":");
    json_escape(&b, f->key, strlen(f->key));
    buf_printf(&b, ",\"revision\":%lld,\"offered\":%lld,\"state\":\"%s\"",
               (long long)f->revision, (long long)f->offered, f->state);
    if (f->error) {
      buf_puts(&b, ",\"error\":");
      json_escape(&b, f->error, strlen(f->error));
    }
    buf_putc(&b, '}');
    int warnings = 0;
    if (f->allow_unsigned) {
      buf_puts(&b, ",\"warnings\":[\"policy: --policy-unsigned: policies "
                   "from etcd run unsigned; anyone who can write the policy "
                   "key runs code on this host\"");
      warnings++;
    }
    if (f->cache_error) {
      buf_puts(&b, warnings++ ? "," : ",\"warnings\":[");
      buf_t w;
      buf_init(&w);
      buf_printf(&w,
                 "policy cache: %s; a restart while etcd is down starts "
                 "with the host's own policy",
                 f->cache_error);
      json_escape(&b, w.data, w.len);
      buf_free(&w);
    }
    if (warnings) buf_putc(&b, ']');
  }
  buf_puts(&b, "}\n");
  httpd_respond(req, problems.len ? 503 : 200, "application/json", b.data,
                b.len);
  buf_free(&problems);
  buf_free(&b);
}

static void probe_done(void *data, const etcd_result_t *res) {
  health_t *h = data;
  /* the probe in flight, answered once and never inside etcd_probe(); it
   * was started for a request that waits for it */
  REGISTER_ASSERT(h->probe && !h->probing);
  h->probe = NULL;
  const char *err = res->status == ETCD_OK ? NULL : res->error;
  /* from when it was sent: an answer etcd gave after that (to another
   * request) says it is back */
  h->failed_ms = err ? h->probe_ms : 0;
  snprintf(h->failed_err, sizeof h->failed_err, "%s", err ? err : "");
  for (size_t i = 0; i < h->nwaiting; i++)
    answer_health(h, h->waiting[i], err ? err : NULL);
  free(h->waiting);
  h->waiting = NULL;
  h->nwaiting = 0;
}

static void serve_health(health_t *h, httpd_req_t *req) {
  int64_t since = h->etcd ? etcd_since_answer_ms(h->etcd) : 0;
  if (since >= 0 && since <= HEALTH_ETCD_FRESH_MS) {
    answer_health(h, req, NULL);
    return;
  }
  /* the last probe failed and nothing of etcd answered since: said at
   * once, and asked again meanwhile */
  uint64_t now = util_now_ms();
  int known_down =
      h->failed_ms && (since < 0 || (uint64_t)since > now - h->failed_ms);
  if (!known_down) { /* etcd has been quiet: ask it before answering */
    h->waiting = xrealloc(h->waiting, (h->nwaiting + 1) * sizeof *h->waiting);
    h->waiting[h->nwaiting++] = req;
  }
  if (!h->probe) {
    REGISTER_ASSERT(h->etcd); /* a probe for the first */
    h->probing = 1;
    h->probe_ms = util_now_ms();
    h->probe = etcd_probe(h->etcd, probe_done, h);
    h->probing = 0;
  }
  REGISTER_ASSERT(h->probe); /* fails from the loop if it cannot start */
  if (known_down) answer_health(h, req, h->failed_err);
}

void health_handle(void *ud, httpd_req_t *req, const char *method,
                   const char *path) {
  (void)method;
  health_t *h = ud;
  if (strcmp(path, "/metrics") == 0) {
    serve_metrics(h, req);
  } else if (strcmp(path, "/healthz") == 0) {
    serve_health(h, req);
  } else {
    static const char msg[] = "not found: try /metrics or /healthz\n";
    httpd_respond(req, 404, "text/plain", msg, sizeof msg - 1);
  }
}

void health_free(health_t *h) {
  if (!h) return;
  if (h->probe) {
    etcd_cancel(h->probe);
    etcd_result_t bye = {ETCD_UNAVAILABLE, "shutting down", 0, 0};
    probe_done(h, &bye);
  }
  free(h->waiting);
  free(h);
}

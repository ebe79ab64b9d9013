/* app: wiring, signals, resync timer, orderly shutdown. */
#include "app.h"
#include "container.h"
#include "docker.h"
#include "etcd.h"
#include "http.h"
#include "log.h"
#include "httpd.h"
#include "luaio.h"
#include "map.h"
#include "metrics.h"
#include "notify.h"
#include "policy.h"
#include "reconcile.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define DEREGISTER_TIMEOUT_MS 10000
#define TRIM_DELAY_MS 2000
#define DOCKER_CONNS 32 /* inspects at once */
#define HEALTH_ETCD_FRESH_MS                                                   \
  3000                          /* older than this: probe before answering     \
                                 */
#define HEALTH_PENDING_MS 60000 /* writes pending longer: unhealthy */

/* A policy reload in progress: the new policy is tried on every running
 * container before it replaces the old one. */
typedef struct {
  policy_t *policy;
  map_t *records; /* id -> pending_t: what the new policy produces */
  map_t *touched; /* ids that had events meanwhile (old policy ran) */
  int failed;
} reload_t;

typedef struct {
  char *image;
  records_t recs;
} pending_t;

typedef struct {
  const config_t *cfg;
  uv_loop_t loop;
  http_t *http;  /* etcd and the hooks' HTTP */
  http_t *dhttp; /* Docker's list and inspects */
  http_t *shttp; /* Docker's event stream, alone so dhttp can be trimmed */
  etcd_t *etcd;
  luaio_t *io;
  policy_t *policy;
  reconcile_t *rec;
  docker_t *docker;
  reload_t *reload;
  notify_t *notify;
  httpd_t *httpd;
  httpd_req_t **health_waiting; /* /healthz requests waiting for a probe */
  size_t nhealth_waiting;
  etcd_op_t *probe;
  uint64_t policy_errors, policy_rejected, reloads_ok, reloads_failed;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t resync_timer, stop_timer, deadline_timer, trim_timer;
  int stopping;
  int deregistering;
  int exit_code;
} app_t;

static void begin_stop(app_t *a, int code);
static void trim_cb(uv_timer_t *t);

/* ---- Docker -> policy -> reconciler ---- */

static void on_update(void *ud, const char *id, const json_value_t *inspect) {
  app_t *a = ud;
  records_t recs;
  char err[600];
  if (policy_records(a->policy, inspect, &recs, err, sizeof err) < 0) {
    /* keep whatever this container had: a script error loses nothing */
    a->policy_errors++;
    log_fields(LOG_ERROR, err, "container", id, NULL);
    return;
  }
  a->policy_rejected += recs.rejected;
  reconcile_set(a->rec, id, container_image(inspect), &recs);
  records_free(&recs);
  if (a->reload && !map_get(a->reload->touched, id)) {
    char *k = xstrdup(id);
    map_put(a->reload->touched, k, k);
  }
}

static void on_gone(void *ud, const char *id) {
  app_t *a = ud;
  reconcile_set(a->rec, id, NULL, NULL);
  if (a->reload && !map_get(a->reload->touched, id)) {
    char *k = xstrdup(id);
    map_put(a->reload->touched, k, k);
  }
}

static void on_event(void *ud, const docker_event_t *ev) {
  app_t *a = ud;
  policy_event_t pe = {ev->type,
                       ev->action,
                       ev->id,
                       ev->image,
                       ev->attributes,
                       (long long)ev->time,
                       (long long)ev->time_nano};
  policy_hook_event(a->policy, &pe);
}

static void on_changed(void *ud, const char *op, const char *key,
                       const char *value, size_t vlen) {
  app_t *a = ud;
  policy_hook_changed(a->policy, op, key, value, vlen);
}

static void on_lease_lost(void *ud) {
  app_t *a = ud;
  if (a->rec) reconcile_lease_lost(a->rec);
}

/* ---- SIGHUP: reload the policy, all or nothing ---- */

static void free_strings(map_t *m) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, m);
  while (map_iter_next(&it, NULL, &v))
    free(v);
  map_free(m);
}

static void reload_free(reload_t *rl) {
  if (!rl) return;
  map_iter_t it;
  const char *k;
  void *v;
  map_iter_init(&it, rl->records);
  while (map_iter_next(&it, &k, &v)) {
    pending_t *pd = v;
    records_free(&pd->recs);
    free(pd->image);
    free((void *)(uintptr_t)k);
    free(pd);
  }
  map_free(rl->records);
  free_strings(rl->touched);
  policy_free(rl->policy);
  free(rl);
}

static void reload_each(void *ud, const char *id, const json_value_t *inspect) {
  app_t *a = ud;
  reload_t *rl = a->reload;
  if (rl->failed) return;
  pending_t *pd = xcalloc(1, sizeof *pd);
  char err[600];
  if (policy_records(rl->policy, inspect, &pd->recs, err, sizeof err) < 0) {
    log_error("policy reload failed, keeping the old policy: %s", err);
    rl->failed = 1;
    free(pd);
    return;
  }
  pd->image = xstrdup(container_image(inspect));
  pending_t *old = map_put(rl->records, xstrdup(id), pd);
  if (old) { /* cannot happen: one inspect per id */
    records_free(&old->recs);
    free(old->image);
    free(old);
  }
}

static void reload_done(void *ud, int ok, const char *why) {
  app_t *a = ud;
  reload_t *rl = a->reload;
  if (!ok || rl->failed) {
    if (!ok)
      log_error("policy reload failed, keeping the old policy: %s",
                why ? why : "Docker went away");
    a->reloads_failed++;
    a->reload = NULL;
    reload_free(rl);
    return;
  }
  a->reloads_ok++;
  /* commit: the new policy is in force from here on */
  policy_t *old = a->policy;
  a->policy = rl->policy;
  rl->policy = old;
  const char *prefix = policy_prefix(a->policy);
  reconcile_set_prefix(a->rec, prefix);
  map_iter_t it;
  const char *id;
  void *v;
  size_t n = 0;
  map_iter_init(&it, rl->records);
  while (map_iter_next(&it, &id, &v)) {
    pending_t *pd = v;
    if (map_get(rl->touched, id)) continue; /* inspected again below */
    reconcile_set(a->rec, id, pd->image, &pd->recs);
    n++;
  }
  map_iter_init(&it, rl->touched);
  while (map_iter_next(&it, &id, NULL))
    docker_refresh(a->docker, id);
  log_info("policy %s reloaded: %zu containers re-evaluated, prefix %s",
           policy_name(a->policy), n + map_size(rl->touched),
           prefix ? prefix : "(none)");
  a->reload = NULL;
  reload_free(rl); /* frees the old policy */
}

static void reload(app_t *a) {
  const config_t *cfg = a->cfg;
  if (!cfg->policy_file) {
    log_info("SIGHUP: the embedded default policy has no file to reload");
    return;
  }
  if (a->reload) {
    log_warn("SIGHUP: a policy reload is already running");
    return;
  }
  char err[600];
  policy_opts_t po = {
      cfg->policy_file, cfg->host_ip, cfg->hostname, 0, 0, a->io};
  policy_t *p = policy_new(&po, err, sizeof err);
  if (!p) {
    a->reloads_failed++;
    log_error("policy reload failed, keeping the old policy: %s", err);
    return;
  }
  reload_t *rl = xcalloc(1, sizeof *rl);
  rl->policy = p;
  rl->records = map_new();
  rl->touched = map_new();
  a->reload = rl;
  log_info("SIGHUP: trying policy %s on every running container",
           cfg->policy_file);
  if (docker_snapshot(a->docker, reload_each, reload_done, a) < 0) {
    if (a->reload) { /* not finished synchronously */
      a->reloads_failed++;
      a->reload = NULL;
      reload_free(rl);
      log_error("policy reload failed, keeping the old policy: Docker is "
                "not connected");
    }
  }
}

static void on_synced(void *ud) {
  app_t *a = ud;
  reconcile_docker_synced(a->rec, 1);
}

static void on_connection(void *ud, int up) {
  app_t *a = ud;
  if (!up) {
    reconcile_docker_synced(a->rec, 0);
    notify_status(a->notify, "Docker unreachable; keeping registrations, "
                             "reconnecting");
  }
}

static void on_converged(void *ud) {
  app_t *a = ud;
  reconcile_stats_t st;
  reconcile_stats(a->rec, &st);
  /* once things have been quiet for a moment, give memory back */
  uv_timer_start(&a->trim_timer, trim_cb, TRIM_DELAY_MS, 0);
  char status[160];
  snprintf(status, sizeof status, "in sync: %zu keys from %zu containers",
           st.keys, st.containers);
  notify_ready(a->notify, status);
  if (a->cfg->once && !a->stopping) {
    log_info("sync complete: etcd matches the running containers");
    begin_stop(a, 0);
  } else if (a->deregistering) {
    begin_stop(a, a->exit_code);
  }
}

/* In sync and quiet: close the idle etcd connections a sync opened (curl
 * keeps memory for each) and return freed heap to the system. */
static void trim_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (!a->rec || !reconcile_converged(a->rec)) return;
  if (a->http) http_trim(a->http);
  if (a->dhttp) http_trim(a->dhttp); /* no-op while inspects run */
  if (a->policy) policy_gc(a->policy);
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

/* ---- /metrics and /healthz ---- */

static void serve_metrics(app_t *a, httpd_req_t *req) {
  metrics_input_t in = {0};
  in.docker = a->docker;
  in.etcd = a->etcd;
  in.rec = a->rec;
  in.etcd_api = a->cfg->etcd_api == ETCD_API_V3 ? "v3" : "v2";
  in.policy_errors = a->policy_errors + policy_errors(a->policy);
  in.policy_rejected = a->policy_rejected;
  in.hooks_dropped = policy_hooks_dropped(a->policy);
  in.reloads_ok = a->reloads_ok;
  in.reloads_failed = a->reloads_failed;
  buf_t b;
  buf_init(&b);
  metrics_render(&b, &in);
  httpd_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data,
                b.len);
  buf_free(&b);
}

/* 200 when the event stream is up, etcd answered recently and nothing is
 * pending too long; else 503 with the problems, one short string each. */
static void answer_health(app_t *a, httpd_req_t *req, const char *etcd_err) {
  buf_t problems, b;
  buf_init(&problems);
  buf_init(&b);
  char msg[400];
  if (!a->docker || !docker_connected(a->docker)) {
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
  reconcile_stats(a->rec, &st);
  if (st.behind_ms > HEALTH_PENDING_MS) {
    snprintf(msg, sizeof msg, "etcd: %zu keys pending for %llu s",
             st.queued + st.inflight + st.failed,
             (unsigned long long)st.behind_ms / 1000);
    buf_putc(&problems, ',');
    json_escape(&problems, msg, strlen(msg));
  }
  if (problems.len)
    buf_printf(&b, "{\"status\":\"unhealthy\",\"problems\":[%s]",
               problems.data + 1);
  else
    buf_puts(&b, "{\"status\":\"ok\"");
  buf_printf(&b, ",\"keys\":%zu,\"containers\":%zu}\n", st.keys, st.containers);
  httpd_respond(req, problems.len ? 503 : 200, "application/json", b.data,
                b.len);
  buf_free(&problems);
  buf_free(&b);
}

static void probe_done(void *data, const etcd_result_t *res) {
  app_t *a = data;
  a->probe = NULL;
  const char *err = res->status == ETCD_OK ? NULL : res->error;
  for (size_t i = 0; i < a->nhealth_waiting; i++)
    answer_health(a, a->health_waiting[i], err ? err : NULL);
  free(a->health_waiting);
  a->health_waiting = NULL;
  a->nhealth_waiting = 0;
}

static void serve_health(app_t *a, httpd_req_t *req) {
  int64_t since = a->etcd ? etcd_since_answer_ms(a->etcd) : 0;
  if (since >= 0 && since <= HEALTH_ETCD_FRESH_MS) {
    answer_health(a, req, NULL);
    return;
  }
  /* etcd has been quiet: ask it before answering */
  a->health_waiting = xrealloc(
      a->health_waiting, (a->nhealth_waiting + 1) * sizeof *a->health_waiting);
  a->health_waiting[a->nhealth_waiting++] = req;
  if (!a->probe) a->probe = etcd_probe(a->etcd, probe_done, a);
  if (!a->probe) {
    etcd_result_t fail = {ETCD_UNAVAILABLE, "cannot start a request"};
    probe_done(a, &fail);
  }
}

static void http_handler(void *ud, httpd_req_t *req, const char *method,
                         const char *path) {
  (void)method;
  app_t *a = ud;
  if (strcmp(path, "/metrics") == 0) {
    serve_metrics(a, req);
  } else if (strcmp(path, "/healthz") == 0) {
    serve_health(a, req);
  } else {
    static const char msg[] = "not found: try /metrics or /healthz\n";
    httpd_respond(req, 404, "text/plain", msg, sizeof msg - 1);
  }
}

/* ---- timers and signals ---- */

static void resync_cb(uv_timer_t *t) {
  app_t *a = t->data;
  log_debug("periodic resync");
  docker_resync(a->docker);
  reconcile_resync(a->rec);
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Runs from a timer, never from inside another module's callback. */
static void stop_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (a->cfg->deregister_on_exit && !a->deregistering && !a->cfg->once) {
    a->deregistering = 1;
    log_info("deregistering this host's keys before exit");
    docker_free(a->docker);
    a->docker = NULL;
    uv_timer_start(&a->deadline_timer, stop_cb, DEREGISTER_TIMEOUT_MS, 0);
    reconcile_deregister(a->rec);
    if (!reconcile_converged(a->rec)) return; /* on_converged comes back */
  }
  if (a->deregistering && !reconcile_converged(a->rec))
    log_warn("exiting before every key could be deleted");
  if (a->probe) {
    etcd_cancel(a->probe);
    etcd_result_t bye = {ETCD_UNAVAILABLE, "shutting down"};
    probe_done(a, &bye);
  }
  httpd_free(a->httpd);
  a->httpd = NULL;
  notify_free(a->notify);
  a->notify = NULL;
  docker_free(a->docker);
  a->docker = NULL;
  reconcile_free(a->rec);
  a->rec = NULL;
  reload_free(a->reload);
  a->reload = NULL;
  policy_free(a->policy); /* cancels its hooks' I/O */
  a->policy = NULL;
  luaio_free(a->io); /* before etcd and http: it holds their requests */
  a->io = NULL;
  etcd_free(a->etcd);
  a->etcd = NULL;
  http_free(a->http);
  a->http = NULL;
  http_free(a->dhttp);
  a->dhttp = NULL;
  http_free(a->shttp);
  a->shttp = NULL;
  uv_walk(&a->loop, close_walk_cb, NULL);
  /* closing the last signal handle gave SIGTERM its default action back: a
   * second signal now must not kill the process halfway through */
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
}

static void begin_stop(app_t *a, int code) {
  if (a->stopping && !a->deregistering) return;
  if (!a->stopping) {
    a->exit_code = code;
    notify_stopping(a->notify);
  }
  a->stopping = 1;
  uv_timer_start(&a->stop_timer, stop_cb, 0, 0);
}

static void signal_cb(uv_signal_t *s, int signum) {
  app_t *a = s->data;
  if (signum == SIGHUP) {
    reload(a);
    return;
  }
  if (a->stopping) {
    log_warn("second signal: exiting now");
    a->deregistering = 1; /* skip waiting */
    uv_timer_start(&a->stop_timer, stop_cb, 0, 0);
    return;
  }
  log_info("%s received, shutting down", strsignal(signum));
  begin_stop(a, 0);
}

static void deadline_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (a->cfg->once) {
    reconcile_stats_t st;
    reconcile_stats(a->rec, &st);
    log_error("--once: etcd does not match after %ld s (Docker %s, %zu keys "
              "waiting, %zu refused)",
              a->cfg->once_timeout,
              docker_connected(a->docker) ? "connected" : "unreachable",
              st.queued + st.inflight, st.failed);
    begin_stop(a, 1);
  }
}

int app_run(const config_t *cfg) {
  app_t *a = xcalloc(1, sizeof *a);
  a->cfg = cfg;
  a->exit_code = 1;
  char err[600];
  int rc = 1;

  uv_loop_init(&a->loop);
  /* etcd: keep as many idle connections as run at once (a sync reuses
   * them), and close them all once quiet (trim_cb).  Docker: the event
   * stream plus a few for inspects. */
  a->http = http_new(&a->loop, 64, 65);
  a->dhttp = http_new(&a->loop, DOCKER_CONNS, DOCKER_CONNS);
  a->shttp = http_new(&a->loop, 1, 1);
  if (!a->http || !a->dhttp || !a->shttp) {
    log_error("cannot initialise libcurl");
    goto out;
  }
  if (!cfg->dry_run) {
    http_tls_t tls = {cfg->etcd_cacert, cfg->etcd_cert, cfg->etcd_key};
    etcd_opts_t eo = {0};
    eo.endpoints = cfg->etcd;
    eo.n_endpoints = cfg->n_etcd;
    eo.api = cfg->etcd_api;
    eo.tls = (tls.cacert || tls.cert) ? &tls : NULL;
    eo.user = cfg->etcd_user;
    eo.password = cfg->etcd_password;
    eo.ttl = cfg->ttl;
    eo.lease_lost = on_lease_lost;
    eo.ud = a;
    a->etcd = etcd_new(&a->loop, a->http, &eo);
  }
  a->io = luaio_new(a->http, a->etcd, cfg->dry_run);
  policy_opts_t po = {
      cfg->policy_file, cfg->host_ip, cfg->hostname, 0, 0, a->io};
  a->policy = policy_new(&po, err, sizeof err);
  if (!a->policy) {
    log_error("%s", err);
    goto out;
  }
  reconcile_opts_t ro = {0};
  ro.loop = &a->loop;
  ro.etcd = a->etcd;
  ro.prefix = policy_prefix(a->policy);
  ro.ttl = cfg->ttl;
  ro.dry_run = cfg->dry_run;
  ro.converged = on_converged;
  ro.changed = on_changed;
  ro.ud = a;
  a->rec = reconcile_new(&ro);

  http_tls_t dtls = {cfg->docker_cacert, cfg->docker_cert, cfg->docker_key};
  docker_opts_t dopts = {a->shttp, cfg->docker_base, cfg->docker_socket,
                         cfg->docker_cacert ? &dtls : NULL, DOCKER_CONNS};
  docker_cbs_t dcbs = {on_update, on_gone, on_event, on_synced, on_connection};
  a->docker = docker_new(&a->loop, a->dhttp, &dopts, &dcbs, a);
  a->notify = notify_new(&a->loop);
  if (cfg->metrics_addr) {
    a->httpd = httpd_new(&a->loop, cfg->metrics_addr, http_handler, a, err,
                         sizeof err);
    if (!a->httpd) {
      log_error("%s", err);
      goto out;
    }
    log_info("serving /metrics and /healthz on %s", cfg->metrics_addr);
  }

  uv_signal_init(&a->loop, &a->sigterm);
  uv_signal_init(&a->loop, &a->sigint);
  uv_signal_init(&a->loop, &a->sighup);
  a->sigterm.data = a->sigint.data = a->sighup.data = a;
  uv_signal_start(&a->sigterm, signal_cb, SIGTERM);
  uv_signal_start(&a->sigint, signal_cb, SIGINT);
  uv_signal_start(&a->sighup, signal_cb, SIGHUP);
  uv_timer_init(&a->loop, &a->resync_timer);
  uv_timer_init(&a->loop, &a->stop_timer);
  uv_timer_init(&a->loop, &a->deadline_timer);
  uv_timer_init(&a->loop, &a->trim_timer);
  a->resync_timer.data = a->stop_timer.data = a->deadline_timer.data = a;
  a->trim_timer.data = a;
  if (cfg->resync > 0)
    uv_timer_start(&a->resync_timer, resync_cb, (uint64_t)cfg->resync * 1000,
                   (uint64_t)cfg->resync * 1000);
  if (cfg->once)
    uv_timer_start(&a->deadline_timer, deadline_cb,
                   (uint64_t)cfg->once_timeout * 1000, 0);

  log_info("register %s: host %s, policy %s, prefix %s, etcd %s (%s), "
           "docker %s%s",
           REGISTER_VERSION, cfg->host_ip, policy_name(a->policy),
           policy_prefix(a->policy) ? policy_prefix(a->policy) : "(none)",
           cfg->dry_run ? "-" : cfg->etcd[0],
           cfg->etcd_api == ETCD_API_V3 ? "v3" : "v2", cfg->docker_url,
           cfg->dry_run ? ", dry run" : "");
  reconcile_start(a->rec);
  docker_start(a->docker);

  uv_run(&a->loop, UV_RUN_DEFAULT);
  rc = a->exit_code;
out:
  if (a->http || a->dhttp || a->shttp) { /* setup failed half way */
    notify_free(a->notify);
    docker_free(a->docker);
    reconcile_free(a->rec);
    policy_free(a->policy);
    a->policy = NULL;
    luaio_free(a->io);
    etcd_free(a->etcd);
    http_free(a->http);
    http_free(a->dhttp);
    http_free(a->shttp);
    uv_walk(&a->loop, close_walk_cb, NULL);
    uv_run(&a->loop, UV_RUN_DEFAULT);
  }
  if (uv_loop_close(&a->loop) != 0) log_warn("libuv loop still has handles");
  policy_free(a->policy);
  free(a);
  return rc;
}

/* ---- register check ---- */

static char *read_all(const char *path, size_t *len, char *err, size_t errlen) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return NULL;
  }
  buf_t b;
  buf_init(&b);
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    buf_append(&b, chunk, n);
  int bad = ferror(f);
  if (f != stdin) fclose(f);
  if (bad) {
    snprintf(err, errlen, "%s: read error", path);
    buf_free(&b);
    return NULL;
  }
  *len = b.len;
  return buf_detach(&b);
}

static int check_one(policy_t *p, const char *file, const json_value_t *doc) {
  records_t recs;
  char err[600];
  const char *id = json_get_str(doc, "Id");
  if (policy_records(p, doc, &recs, err, sizeof err) < 0) {
    fprintf(stderr, "register: %s: %s\n", file, err);
    if (*policy_traceback(p)) fprintf(stderr, "%s\n", policy_traceback(p));
    return -1;
  }
  buf_t b;
  buf_init(&b);
  for (size_t i = 0; i < recs.n; i++) {
    buf_reset(&b);
    buf_puts(&b, "{\"container\":");
    json_escape(&b, id ? id : "", id ? strlen(id) : 0);
    buf_puts(&b, ",\"key\":");
    json_escape(&b, recs.v[i].key, strlen(recs.v[i].key));
    buf_puts(&b, ",\"value\":");
    json_escape(&b, recs.v[i].value, recs.v[i].value_len);
    buf_puts(&b, "}\n");
    fwrite(b.data, 1, b.len, stdout);
  }
  buf_free(&b);
  /* what a changed hook would do for these writes (HTTP is printed) */
  for (size_t i = 0; i < recs.n; i++)
    policy_hook_changed(p, "put", recs.v[i].key, recs.v[i].value,
                        recs.v[i].value_len);
  int rejected = recs.rejected > 0;
  records_free(&recs);
  return rejected ? -1 : 0;
}

int app_check(int argc, char **argv) {
  const char *host_ip = getenv("HOST_IP");
  const char *hostname = "localhost";
  int i = 2;
  for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
    if (strcmp(argv[i], "--host-ip") == 0 && i + 1 < argc)
      host_ip = argv[++i];
    else if (strcmp(argv[i], "--hostname") == 0 && i + 1 < argc)
      hostname = argv[++i];
    else {
      fprintf(stderr, "register check: unknown option \"%s\"\n", argv[i]);
      return 2;
    }
  }
  if (i >= argc) {
    fprintf(stderr, "usage: register check [--host-ip IP] [--hostname NAME] "
                    "POLICY|default [INSPECT.json|- ...]\n");
    return 2;
  }
  if (!host_ip || !*host_ip) host_ip = "127.0.0.1";
  if (!config_valid_ip(host_ip)) {
    fprintf(stderr,
            "register check: host IP \"%s\" is not an IPv4 or IPv6 "
            "address\n",
            host_ip);
    return 2;
  }
  const char *file = argv[i++];
  char err[600];
  luaio_t *io = luaio_new(NULL, NULL, 1); /* hooks' HTTP is printed */
  policy_opts_t po = {
      strcmp(file, "default") == 0 ? NULL : file, host_ip, hostname, 0, 0, io};
  policy_t *p = policy_new(&po, err, sizeof err);
  if (!p) {
    fprintf(stderr, "register: %s\n", err);
    luaio_free(io);
    return 1;
  }
  int rc = 0;
  if (i >= argc)
    fprintf(stderr, "policy %s loads; prefix %s\n", policy_name(p),
            policy_prefix(p) ? policy_prefix(p) : "(none)");
  for (; i < argc; i++) {
    size_t len;
    char *text = read_all(argv[i], &len, err, sizeof err);
    if (!text) {
      fprintf(stderr, "register: %s\n", err);
      rc = 1;
      continue;
    }
    json_doc_t *doc = json_parse(text, len, err, sizeof err);
    free(text);
    if (!doc) {
      fprintf(stderr, "register: %s: %s\n", argv[i], err);
      rc = 1;
      continue;
    }
    const json_value_t *root = json_root(doc);
    if (root->type == JSON_ARRAY) {
      for (const json_value_t *c = root->u.child; c; c = c->next)
        if (check_one(p, argv[i], c) < 0) rc = 1;
    } else if (check_one(p, argv[i], root) < 0) {
      rc = 1;
    }
    json_free(doc);
  }
  if (policy_errors(p)) rc = 1; /* a hook failed */
  policy_free(p);
  luaio_free(io);
  return rc;
}

/* app: wiring, signals, timers, orderly shutdown. */
#include "app.h"
#include "checks.h"
#include "container.h"
#include "creds.h"
#include "docker.h"
#include "etcd.h"
#include "fleet.h"
#include "http.h"
#include "log.h"
#include "health.h"
#include "hookio.h"
#include "httpd.h"
#include "json.h"
#include "map.h"
#include "metrics.h"
#include "notify.h"
#include "reconcile.h"
#include "reload.h"
#include "stopsig.h"
#include "trace.h"
#include "util.h"
#include "worker.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define DEREGISTER_TIMEOUT_MS 10000
#define TRIM_DELAY_MS 2000
#define DOCKER_CONNS 32      /* inspects at once */
#define STATUS_EVERY_MS 5000 /* STATUS= refreshed while not in sync */
/* etcd's content is compared with what register wants this often, whatever
 * --resync says (a restore or an outside writer that nothing else shows);
 * a listing of the owned prefix, jittered so that hosts do not list
 * together */
#define AUDIT_EVERY_MS (60 * 1000) /* 5 minutes left a restore 5 minutes */

typedef struct {
  const config_t *cfg;
  uv_loop_t loop;
  http_t *http;  /* etcd and the hooks' HTTP */
  http_t *dhttp; /* Docker's list and inspects */
  http_t *shttp; /* Docker's event stream, alone so dhttp can be trimmed */
  etcd_t *etcd;
  creds_t *ecreds; /* etcd's password and TLS files, watched; or NULL */
  creds_t *dcreds; /* Docker's TLS files (DOCKER_CERT_PATH), or NULL */
  hookio_t *io;    /* the hooks' I/O, for the policy worker */
  worker_t *policy;
  checks_t *checks; /* the containers' health checks the policy asks for */
  reconcile_t *rec;
  docker_t *docker;
  reload_t *reload; /* SIGHUP */
  fleet_t *fleet;   /* --policy-key, or NULL */
  char *status_key; /* where fleet's report goes (owned), or NULL */
  char *fence_key;  /* this host's write fence (owned), or NULL */
  /* keys no record may be at or under (worker_opts_t.reserved): the
   * fleet's policy key, the reports' directory, the fences' (owned) */
  char *reserved_keys[8];
  const char *reserved_what[8]; /* what each is, for the refusal */
  int status_set;               /* the report is one of the reconciler's keys */
  fleet_view_t fleet_view;      /* for health_inputs */
  notify_t *notify;
  httpd_t *httpd;
  health_t *health;      /* the answers httpd gives */
  policy_stats_t pstats; /* kept over reloads */
  worker_stats_t wstats; /* policy worker processes, kept over reloads */
  uint64_t policy_rejected;
  /* the running containers whose last policy call failed or rejected a
   * record: id -> "name (reason)" (both strings owned here); they keep
   * what they had */
  map_t *failed;
  map_t *draining;     /* id -> drain_t: the running containers whose stop
                          signal came (W_STOPPING) */
  int listed;          /* Docker's containers were listed and evaluated once */
  unsigned docker_gen; /* counts Docker's connections lost (on_synced) */
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t resync_timer, stop_timer, deadline_timer, trim_timer;
  uv_timer_t once_timer;  /* --once: waits for the fleet's policy */
  uv_timer_t hup_timer;   /* a SIGHUP during a reload: the next one */
  uv_timer_t fleet_timer; /* fleet_decide_cb() */
  uint64_t fleet_start_ms;
  int fleet_decided; /* the fleet's policy was decided at start */
  int orphans_held;  /* why the orphans are kept: 0, 1 failed, 2 fleet */
  int hup_again;     /* a SIGHUP came during a reload (hup_timer) */
  uv_timer_t status_timer, audit_timer;
  int stopping;
  int deregistering;
  int exit_now;        /* a second signal: no more waiting */
  etcd_op_t *fence_op; /* deleting the write fence, deregistered */
  int fence_done;      /* ... done (or failed, or there was none) */
  int exit_code;
} app_t;

static void begin_stop(app_t *a, int code);

/* ---- drain: a container's stop signal ---- */

#define STOP_MARGIN_MS 5000 /* past its stop timeout: it was not a stop */

/* How a running container is stopped (its last inspect), whether its stop
 * signal came, and whether its policy call came back once: in the word
 * docker.c keeps with each container (docker_cont_word), not in a record
 * of app's own (10,000 containers: 1.4 MB less). */
#define W_SIGNAL 0x7fu /* Config.StopSignal, 1-64; 0: never inspected */
#define W_TIMEOUT_SHIFT 7
#define W_TIMEOUT_MAX 0x1ffffu  /* Config.StopTimeout in s: 17 bits */
#define W_STOPPING (1u << 24)   /* its stop signal came; it still runs */
#define DEFAULT_STOP_TIMEOUT 10 /* s: Docker's */

/* A draining container: registers it again if it still runs after its
 * stop timeout (stop_expired).  Owned by a->draining while there, then by
 * its timer: freed in the timer's close callback. */
typedef struct {
  app_t *a;
  uv_timer_t timer;
  char id[];
} drain_t;

/* A signal's name as Docker reads Config.StopSignal (moby's ParseSignal on
 * Linux): a number 1-64, or a name in any case, with or without "SIG":
 * every Linux name, RTMIN, RTMIN+n, RTMAX-n, RTMAX.  RTMIN is 34 as
 * Docker counts it (glibc's; the kill event carries Docker's number), so
 * a systemd image's SIGRTMIN+3 is 37.  Unknown -> SIGTERM, Docker's
 * default. */
static int signal_number(const char *s) {
  static const struct {
    const char *name;
    int n;
  } names[] = {{"HUP", 1},     {"INT", 2},    {"QUIT", 3},    {"ILL", 4},
               {"TRAP", 5},    {"ABRT", 6},   {"IOT", 6},     {"BUS", 7},
               {"FPE", 8},     {"KILL", 9},   {"USR1", 10},   {"SEGV", 11},
               {"USR2", 12},   {"PIPE", 13},  {"ALRM", 14},   {"TERM", 15},
               {"STKFLT", 16}, {"CHLD", 17},  {"CLD", 17},    {"CONT", 18},
               {"STOP", 19},   {"TSTP", 20},  {"TTIN", 21},   {"TTOU", 22},
               {"URG", 23},    {"XCPU", 24},  {"XFSZ", 25},   {"VTALRM", 26},
               {"PROF", 27},   {"WINCH", 28}, {"IO", 29},     {"POLL", 29},
               {"PWR", 30},    {"SYS", 31},   {"UNUSED", 31}, {"RTMIN", 34},
               {"RTMAX", 64}};
  enum { RTMIN = 34, RTMAX = 64 };
  char up[16];
  size_t len = 0;
  long n;
  if (!s || !*s) return SIGTERM;
  if (util_parse_long(s, 1, 64, &n) == 0) return (int)n;
  for (; s[len] && len < sizeof up - 1; len++) /* case aside */
    up[len] =
        s[len] >= 'a' && s[len] <= 'z' ? (char)(s[len] - 'a' + 'A') : s[len];
  if (s[len]) return SIGTERM; /* longer than any name */
  up[len] = '\0';
  const char *name = strncmp(up, "SIG", 3) == 0 ? up + 3 : up;
  if (strncmp(name, "RTMIN+", 6) == 0 &&
      util_parse_long(name + 6, 1, RTMAX - RTMIN, &n) == 0)
    return RTMIN + (int)n;
  if (strncmp(name, "RTMAX-", 6) == 0 &&
      util_parse_long(name + 6, 1, RTMAX - RTMIN, &n) == 0)
    return RTMAX - (int)n;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(name, names[i].name) == 0) return names[i].n;
  return SIGTERM;
}

/* The container's word; docker.c knows every container it reports (the
 * word of one whose gone() runs is still there). */
static uint32_t *cont_word(app_t *a, const char *id) {
  uint32_t *w = a->docker ? docker_cont_word(a->docker, id) : NULL;
  REGISTER_ASSERT(w);
  return w;
}

static void drain_closed(uv_handle_t *h) {
  free(h->data);
}

/* Off a->draining; freed once its timer has closed. */
static void drain_end(drain_t *dr) {
  map_del(dr->a->draining, dr->id);
  uv_close((uv_handle_t *)&dr->timer, drain_closed);
}

/* How the container is stopped, from its inspect; whether it is draining. */
static int stop_note(app_t *a, const char *id, const json_value_t *inspect) {
  uint32_t *w = cont_word(a, id);
  const json_value_t *cfg = json_get(inspect, "Config");
  const json_value_t *t = json_get(cfg, "StopTimeout");
  uint32_t timeout = t && t->type == JSON_NUMBER && t->u.num.is_int &&
                             t->u.num.i >= 0 && t->u.num.i < 86400
                         ? (uint32_t)t->u.num.i
                         : DEFAULT_STOP_TIMEOUT;
  *w = (*w & W_STOPPING) |
       (uint32_t)signal_number(json_get_str(cfg, "StopSignal")) |
       timeout << W_TIMEOUT_SHIFT;
  return (*w & W_STOPPING) != 0;
}

static void stop_gone(app_t *a, const char *id) {
  drain_t *dr = map_get(a->draining, id);
  if (dr) drain_end(dr);
}

/* Still running past its stop timeout and the margin: the signal was not
 * a stop after all.  Registered again. */
static void stop_expired(uv_timer_t *t) {
  drain_t *dr = t->data;
  app_t *a = dr->a;
  *cont_word(a, dr->id) &= ~W_STOPPING;
  log_fields(LOG_INFO, "still running after its stop signal: registered again",
             "container", dr->id, NULL);
  docker_refresh(a->docker, dr->id);
  drain_end(dr);
}

/* A kill event: the container's stop signal (or SIGKILL) means it is
 * stopping; its records are evaluated at once with container.stopping, so
 * its keys go (the default policy) while it still finishes its requests. */
static void stop_signal(app_t *a, const docker_event_t *ev) {
  if (strcmp(ev->type, "container") != 0 || strcmp(ev->action, "kill") != 0)
    return;
  uint32_t *w = docker_cont_word(a->docker, ev->id);
  long sig;
  const char *sv = json_get_str(ev->attributes, "signal");
  if (!w || !(*w & W_SIGNAL) || (*w & W_STOPPING) || !sv ||
      util_parse_long(sv, 1, 64, &sig) < 0)
    return;
  if (sig != (long)(*w & W_SIGNAL) && sig != SIGKILL) return;
  *w |= W_STOPPING;
  char sigs[16];
  snprintf(sigs, sizeof sigs, "%ld", sig);
  log_fields(LOG_INFO, "stop signal: draining (its keys go now)", "container",
             ev->id, "signal", sigs, NULL);
  trace_event(ev->id, ev->time_nano); /* --trace-latency: the drain's stages */
  size_t n = strlen(ev->id) + 1;
  drain_t *dr = xcalloc(1, sizeof *dr + n);
  memcpy(dr->id, ev->id, n);
  dr->a = a;
  uv_timer_init(&a->loop, &dr->timer);
  dr->timer.data = dr;
  REGISTER_ASSERT(!map_get(a->draining, dr->id)); /* W_STOPPING was clear */
  map_put(a->draining, dr->id, dr);
  uint64_t timeout_ms =
      (uint64_t)((*w >> W_TIMEOUT_SHIFT) & W_TIMEOUT_MAX) * 1000;
  uv_timer_start(&dr->timer, stop_expired, timeout_ms + STOP_MARGIN_MS, 0);
  docker_refresh(a->docker, dr->id);
}
static void trim_cb(uv_timer_t *t);

/* ---- Docker -> policy -> reconciler ---- */

/* The container's name without Docker's leading '/', or "". */
static const char *cont_name(const json_value_t *inspect) {
  const char *n = json_get_str(inspect, "Name");
  if (!n) return "";
  return *n == '/' ? n + 1 : n;
}

/* Keys under the prefix that no container produces are kept:
 *  - while a running container's policy call fails (its own may be among
 *    them, under names that do not name it: a broken policy is not an
 *    instruction to delete).  Decided once Docker's list is complete
 *    (orphans wait for it anyway), so that the first of many containers
 *    failing says nothing;
 *  - with --policy-key, until the fleet's policy is decided at start (a
 *    restart without the cache: the revision's keys are not the host
 *    policy's, and went until the revision was applied again). */
static void hold_orphans_update(app_t *a) {
  int failed = a->listed && map_size(a->failed) > 0;
  int fleet = a->fleet && !a->fleet_decided;
  int why = failed ? 1 : fleet ? 2 : 0;
  if (why && why != a->orphans_held) {
    if (why == 1)
      log_warn("a running container's policy call failed: keeping the keys "
               "under the prefix that no container produces until every "
               "call succeeds");
    else
      log_info("keeping the keys under the prefix that no container "
               "produces until the policy key %s is decided",
               a->cfg->policy_key);
  }
  a->orphans_held = why;
  reconcile_hold_orphans(a->rec, why != 0);
}

/* --policy-key: at start, whether the fleet's policy is decided (at most
 * FLEET_DECIDE_MAX_MS: a key that cannot be read must not keep stale keys
 * for good). */
#define FLEET_DECIDE_POLL_MS 100
#define FLEET_DECIDE_MAX_MS 30000

static void fleet_decide_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (!a->fleet || a->fleet_decided) return;
  if (!fleet_settled(a->fleet) &&
      uv_now(&a->loop) - a->fleet_start_ms < FLEET_DECIDE_MAX_MS)
    return;
  a->fleet_decided = 1;
  uv_timer_stop(t);
  hold_orphans_update(a);
}

/* The container's evaluation failed (why: "reason") or succeeded (NULL). */
static void note_result(app_t *a, const char *id, const char *name,
                        const char *why) {
  char *old = map_del(a->failed, id);
  /* one block per entry: the id (the map's key), a NUL, the description
   * (the map's value); freed from the value */
  if (old) free(old - strlen(id) - 1);
  if (why) {
    size_t il = strlen(id);
    char *blk = xasprintf("%s%c%s (%s)", id, '\0', *name ? name : id, why);
    map_put(a->failed, blk, blk + il + 1);
  }
  hold_orphans_update(a);
}

static void note_gone(app_t *a, const char *id) {
  char *old = map_del(a->failed, id);
  if (old) free(old - strlen(id) - 1);
  hold_orphans_update(a);
}

/* "web2 (error), web3 (budget)": at most max names, then "and N more". */
static void failed_names(const app_t *a, char *out, size_t n, size_t max) {
  map_iter_t it;
  void *v;
  size_t i = 0, total = map_size(a->failed), len = 0;
  out[0] = '\0';
  map_iter_init(&it, a->failed);
  while (map_iter_next(&it, NULL, &v) && i < max) {
    int w = snprintf(out + len, n - len, "%s%s", i ? ", " : "", (char *)v);
    if (w < 0 || (size_t)w >= n - len) break;
    len += (size_t)w;
    i++;
  }
  if (total > i) snprintf(out + len, n - len, " and %zu more", total - i);
}

/* One container's update on its way through the policy worker: what
 * the continuation needs of the inspect document (owned copies). */
typedef struct {
  app_t *a;
  char *id, *name, *image;
} upd_t;

/* checks(): the container's checks are set (kept as they were when the
 * call fails), or removed when the policy asks for none. */
static void update_checks(app_t *a, const upd_t *p, const worker_update_t *u) {
  char err[600];
  if (!worker_has_checks(a->policy)) {
    checks_remove(a->checks, p->id);
    return;
  }
  if (u->rc < 0) {
    log_fields(LOG_ERROR, u->err, "container", p->id, "name", p->name, "reason",
               policy_reason_name(u->reason), NULL);
    return;
  }
  const json_value_t *inspect = u->checks.n ? worker_update_inspect(u) : NULL;
  if (checks_set(a->checks, p->id, inspect, u->checks.v, u->checks.n, err,
                 sizeof err) < 0)
    log_fields(LOG_ERROR, "checks() returned a check that cannot run",
               "container", p->id, "name", p->name, "policy",
               worker_name(a->policy), "error", err, NULL);
}

/* The policy's answer for one container (worker_update_start). */
static void update_done(void *ud, const worker_update_t *u) {
  upd_t *p = ud;
  app_t *a = p->a;
  if (u->cancelled) goto out;
  const char *id = p->id, *name = p->name, *image = p->image;
  update_checks(a, p, u);
  int stopping = (*cont_word(a, id) & W_STOPPING) != 0;
  policy_check_state_t states[POLICY_MAX_CHECKS];
  policy_check_view_t view;
  worker_check_view(a->checks, id, states, POLICY_MAX_CHECKS, &view);
  view.stopping = stopping;
  /* no checks: records() came with checks() (then view.n is 0 too) */
  REGISTER_ASSERT(u->have == 0 || view.n == 0);
  records_t recs;
  const records_t *rp = &recs;
  records_init(&recs);
  char err[600];
  const char *reason = NULL;
  int rc;
  if (u->have > 0) {
    rc = 0;
    rp = &u->recs; /* u's: not freed here */
  } else if (u->have < 0) {
    rc = -1;
    snprintf(err, sizeof err, "%s", u->rerr);
    reason = policy_reason_name(u->reason);
  } else { /* checks asked for: records() with their states */
    const json_value_t *inspect = worker_update_inspect(u);
    rc = inspect ? worker_records_checked(a->policy, inspect, &view, &recs, err,
                                          sizeof err)
                 : -1;
    if (!inspect) snprintf(err, sizeof err, "the inspect document was lost");
    if (rc < 0) reason = policy_reason_name(worker_last_reason(a->policy));
  }
  if (rc == 0) a->policy_rejected += rp->rejected;
  if (rc < 0 || rp->rejected) {
    /* keep whatever this container had: only a successful evaluation
     * deletes (a rejected record fails the whole evaluation) */
    if (rc == 0) {
      reason = "rejected";
      snprintf(err, sizeof err,
               "policy %s: %zu record%s rejected; the container keeps the "
               "keys it had",
               worker_name(a->policy), rp->rejected,
               rp->rejected == 1 ? "" : "s");
    }
    log_fields(LOG_ERROR, err, "container", id, "name", name, "reason", reason,
               NULL);
    note_result(a, id, name, reason);
    reconcile_keep(a->rec, id, image, name, NULL, NULL);
    reload_touch(a->reload, id);
    goto done;
  }
  trace_mark(id, TRACE_POLICY);
  /* "pending" never deletes what is there: the keys this container would
   * produce with its pending checks passing stay while they are pending
   * (a restart of register must not drop a healthy service) */
  policy_check_state_t assumed[POLICY_MAX_CHECKS];
  policy_check_view_t passing = {assumed, view.n, view.stopping};
  int pending = 0;
  for (size_t i = 0; i < view.n; i++) {
    assumed[i] = view.v[i];
    if (strcmp(view.v[i].state, "pending") == 0) {
      assumed[i].state = "passing";
      pending = 1;
    }
  }
  records_t claims;
  const json_value_t *inspect = pending ? worker_update_inspect(u) : NULL;
  if (!pending) {
    reconcile_set(a->rec, id, image, name, rp);
  } else if (inspect && worker_records_checked(a->policy, inspect, &passing,
                                               &claims, err, sizeof err) == 0) {
    reconcile_keep(a->rec, id, image, name, rp, &claims);
    records_free(&claims);
  } else {
    reconcile_keep(a->rec, id, image, name, rp, NULL);
  }
  /* after its records: a success that ends the hold on orphans lets them
   * go only once what this container produces is known (the other way
   * round, an orphan it produces again was deleted first) */
  note_result(a, id, name, NULL);
  reload_touch(a->reload, id);
done:
  records_free(&recs);
out:
  free(p->id);
  free(p->name);
  free(p->image);
  free(p);
}

/* A container's inspect document: to the policy worker, answered in
 * update_done() (several are in flight during a sync). */
static void on_update(void *ud, const char *id, const json_value_t *inspect) {
  app_t *a = ud;
  upd_t *p = xcalloc(1, sizeof *p);
  p->a = a;
  p->id = xstrdup(id);
  p->name = xstrdup(cont_name(inspect));
  p->image = xstrdup(container_image(inspect));
  int stopping = stop_note(a, id, inspect);
  worker_update_start(a->policy, inspect, stopping, update_done, p);
}

static void on_gone(void *ud, const char *id) {
  app_t *a = ud;
  /* an update on its way is not done: the container is gone (docker.c
   * forgets it when this returns), and its answer would register it again */
  worker_drop(a->policy, id);
  checks_remove(a->checks, id);
  note_gone(a, id);
  stop_gone(a, id);
  reconcile_set(a->rec, id, NULL, NULL, NULL);
  reload_touch(a->reload, id);
}

static void on_event(void *ud, const docker_event_t *ev) {
  app_t *a = ud;
  policy_event_t pe = {ev->type,
                       ev->action,
                       ev->id,
                       ev->image,
                       ev->attributes,
                       (long long)ev->time,
                       (long long)ev->time_nano,
                       ev->health_status};
  stop_signal(a, ev);
  worker_hook_event(a->policy, &pe);
}

static void on_changed(void *ud, const char *op, const char *key,
                       const char *value, size_t vlen) {
  app_t *a = ud;
  if (a->status_key && strcmp(key, a->status_key) == 0) return; /* ours */
  worker_hook_changed(a->policy, op, key, value, vlen);
}

/* A check passed or failed (after rise/fall): records() runs again for
 * that container, on a fresh inspect.  Nothing else re-runs it. */
static void on_check_transition(void *ud, const char *id, size_t index,
                                checks_state_t old_state,
                                checks_state_t new_state, const char *reason) {
  (void)index;
  (void)old_state;
  (void)new_state;
  (void)reason; /* the checks module logged the transition */
  app_t *a = ud;
  if (!a->stopping && a->docker) docker_refresh(a->docker, id);
}

/* etcd went back in time (etcd.c logged what it saw). */
static void on_rewound(void *ud, const char *why) {
  (void)why;
  app_t *a = ud;
  if (a->rec) reconcile_etcd_rewound(a->rec);
}

/* A member etcd failed over to, with no history of it: the prefix is read
 * again, a linearizable listing that shows a rewind there (a restored
 * snapshot under a daemon that only keeps its lease alive) and repairs
 * what differs either way. */
static void on_new_member(void *ud, const char *url) {
  (void)url;
  app_t *a = ud;
  if (a->rec) reconcile_resync(a->rec);
}

static void on_lease_lost(void *ud) {
  app_t *a = ud;
  if (a->rec) reconcile_lease_lost(a->rec);
}

/* ---- rotated credentials (creds.c) ---- */

/* etcd's password file or TLS files changed and passed their checks (creds.c
 * logged it): the next requests use them (new connections; requests in
 * flight finish where they are), and what etcd refused or failed is tried
 * again now rather than at the end of its backoff. */
static void on_etcd_creds(void *ud, unsigned what) {
  app_t *a = ud;
  if (!a->etcd || a->stopping) return;
  if (what & CREDS_PASSWORD)
    etcd_set_password(a->etcd, creds_password(a->ecreds));
  if (what & CREDS_TLS) {
    http_tls_t t;
    creds_tls(a->ecreds, &t);
    etcd_set_tls(a->etcd, &t);
    http_trim(a->http); /* idle connections go now, when nothing runs */
  }
  if (a->rec) reconcile_retry_now(a->rec);
}

static void on_docker_creds(void *ud, unsigned what) {
  app_t *a = ud;
  if (!a->docker || a->stopping || !(what & CREDS_TLS)) return;
  http_tls_t t;
  creds_tls(a->dcreds, &t);
  docker_set_tls(a->docker, &t);
  http_trim(a->dhttp); /* idle connections go now, when nothing runs */
}

/* The credential files of etcd (--etcd-password-file, --etcd-cacert,
 * --etcd-cert, --etcd-key) and Docker (DOCKER_CERT_PATH), read, checked and
 * watched.  -1 with err when one is unreadable or invalid at start. */
static int start_creds(app_t *a, char *err, size_t errlen) {
  const config_t *cfg = a->cfg;
  creds_opts_t co = {0};
  co.loop = &a->loop;
  co.ud = a;
  if (a->etcd &&
      (cfg->etcd_password_file || cfg->etcd_cacert || cfg->etcd_cert)) {
    co.name = "etcd";
    co.password_file = cfg->etcd_password_file;
    co.cacert = cfg->etcd_cacert;
    co.cert = cfg->etcd_cert;
    co.key = cfg->etcd_key;
    co.changed = on_etcd_creds;
    if (!(a->ecreds = creds_new(&co, err, errlen))) return -1;
    /* what was read now, from the first request on: the TLS contents, not
     * the files; the password as the watch knows it */
    if (creds_password(a->ecreds))
      etcd_set_password(a->etcd, creds_password(a->ecreds));
    if (creds_has_tls(a->ecreds)) {
      http_tls_t t;
      creds_tls(a->ecreds, &t);
      etcd_set_tls(a->etcd, &t);
    }
  }
  if (cfg->docker_cacert) {
    co = (creds_opts_t){0};
    co.loop = &a->loop;
    co.ud = a;
    co.name = "docker";
    co.cacert = cfg->docker_cacert;
    co.cert = cfg->docker_cert;
    co.key = cfg->docker_key;
    co.changed = on_docker_creds;
    if (!(a->dcreds = creds_new(&co, err, errlen))) return -1;
  }
  return 0;
}

/* STATUS= for systemd: in sync, or what the sync waits for. */
static void sync_status(app_t *a, char *out, size_t n) {
  reconcile_stats_t st;
  reconcile_stats(a->rec, &st);
  if (reconcile_converged(a->rec)) {
    snprintf(out, n, "in sync: %zu keys from %zu containers", st.keys,
             st.containers);
    return;
  }
  const char *why = a->etcd ? etcd_last_error(a->etcd) : NULL;
  if (why && *why)
    snprintf(out, n,
             "waiting for etcd: %zu keys from %zu containers to sync (%s)",
             st.keys, st.containers, why);
  else
    snprintf(out, n, "syncing to etcd: %zu keys from %zu containers", st.keys,
             st.containers);
}

static void status_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (a->stopping) return;
  char status[400];
  sync_status(a, status, sizeof status);
  notify_status(a->notify, status);
}

typedef struct {
  app_t *a;
  unsigned docker_gen; /* a->docker_gen when the list was complete */
} synced_t;

/* Docker's containers are listed, each evaluated, and its events followed:
 * register is ready (READY=1), whatever etcd does; how far the sync is goes
 * in STATUS=, kept fresh from here on.  etcd down at boot must not hold up
 * the units ordered after this one. */
static void synced_done(void *ud, int cancelled) {
  synced_t *sy = ud;
  app_t *a = sy->a;
  /* Docker was lost again while the list was evaluated: its next list
   * says */
  int current = sy->docker_gen == a->docker_gen;
  free(sy);
  if (cancelled || !current) return;
  a->listed = 1;
  hold_orphans_update(a); /* before the orphans may go */
  reconcile_docker_synced(a->rec, 1);
  char status[400];
  sync_status(a, status, sizeof status);
  notify_ready(a->notify, status);
  uv_timer_start(&a->status_timer, status_cb, STATUS_EVERY_MS, STATUS_EVERY_MS);
}

/* The list is complete: synced_done() once every container in it is
 * evaluated.  The loop goes on meanwhile (a policy that hangs on a few
 * containers holds only them, each up to --policy-timeout). */
static void on_synced(void *ud) {
  app_t *a = ud;
  synced_t *sy = xmalloc(sizeof *sy);
  sy->a = a;
  sy->docker_gen = a->docker_gen;
  worker_after(a->policy, synced_done, sy);
}

static void on_connection(void *ud, int up) {
  app_t *a = ud;
  if (!up) {
    a->docker_gen++;
    reconcile_docker_synced(a->rec, 0);
    notify_status(a->notify, "Docker unreachable; keeping registrations, "
                             "reconnecting");
  }
}

static void on_converged(void *ud);

/* --once with --policy-key: the sync is over when the fleet's policy is
 * decided and etcd matches what it asks for (a revision applied rewrites
 * keys: on_converged() comes again then, and from here otherwise). */
#define ONCE_POLL_MS 50

static void once_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (a->stopping) return;
  if (a->fleet && fleet_settled(a->fleet) && reconcile_converged(a->rec))
    on_converged(a);
  else
    uv_timer_start(t, once_cb, ONCE_POLL_MS, 0);
}

static void on_converged(void *ud) {
  app_t *a = ud;
  /* once things have been quiet for a moment, give memory back */
  uv_timer_start(&a->trim_timer, trim_cb, TRIM_DELAY_MS, 0);
  if (a->fleet && !a->stopping) fleet_synced(a->fleet);
  char status[400];
  sync_status(a, status, sizeof status);
  notify_status(a->notify, status);
  if (a->cfg->once && !a->stopping && a->fleet && !fleet_settled(a->fleet)) {
    /* the fleet's policy is not read or decided yet: its revision, once
     * applied, is what this sync is for */
    if (!uv_is_active((uv_handle_t *)&a->once_timer))
      uv_timer_start(&a->once_timer, once_cb, ONCE_POLL_MS, 0);
  } else if (a->cfg->once && !a->stopping) {
    size_t nf = map_size(a->failed);
    if (nf) {
      char names[1024];
      failed_names(a, names, sizeof names, 20);
      log_error("--once: %zu container%s failed the policy call and kept "
                "what they had: %s",
                nf, nf == 1 ? "" : "s", names);
      begin_stop(a, 1);
    } else if (a->cfg->dry_run) {
      log_info("dry run complete: every running container evaluated; etcd "
               "was neither read nor written");
      begin_stop(a, 0);
    } else {
      log_info("sync complete: etcd matches the running containers");
      begin_stop(a, 0);
    }
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
  if (a->policy) worker_gc(a->policy);
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

/* ---- /metrics and /healthz (health.c) ---- */

static void health_inputs(void *ud, metrics_input_t *in) {
  app_t *a = ud;
  in->docker = a->docker;
  in->etcd = a->etcd;
  in->rec = a->rec;
  in->etcd_api = a->cfg->etcd_api == ETCD_API_V3 ? "v3" : "v2";
  static const char *reasons[POLICY_ERR_REASONS];
  for (int i = 0; i < POLICY_ERR_REASONS; i++)
    reasons[i] = policy_reason_name((policy_reason_t)i);
  in->n_policy_reasons = POLICY_ERR_REASONS;
  in->policy_reasons = reasons;
  in->policy_errors = a->pstats.errors;
  in->hooks_dropped = a->pstats.hooks_dropped;
  uint64_t tried_rejected;
  reload_counts(a->reload, &in->reloads_ok, &in->reloads_failed,
                &tried_rejected);
  in->policy_rejected = a->policy_rejected + tried_rejected;
  in->checks = a->checks;
  in->containers_failed = map_size(a->failed);
  in->workers_spawned = a->wstats.spawned;
  in->worker_deaths = a->wstats.deaths;
  in->worker_log_dropped = a->wstats.log_dropped;
  in->worker_backoff = a->policy && worker_backing_off(a->policy);
  static char example[300];
  failed_names(a, example, sizeof example, 1);
  in->failed_example = example;
  in->policy_sha256 =
      a->policy && *worker_sha256(a->policy) ? worker_sha256(a->policy) : NULL;
  if (a->fleet) {
    fleet_view(a->fleet, &a->fleet_view);
    in->fleet = &a->fleet_view;
  }
  in->creds[0] = a->ecreds;
  in->creds[1] = a->dcreds;
}

/* ---- timers and signals ---- */

/* A policy's prefix is owned: every key under it that this host's
 * containers do not make is deleted as stale.  So it must keep clear of
 * the keys register keeps for itself (the fleet's policy key, the hosts'
 * reports, the write fences: neither holding them nor inside them) and,
 * from the fleet's key, be this host's own: a prefix that prefix() gives
 * every host alike makes each host delete the others' keys (a revision
 * with the prefix "/svc", sent to one canary, deleted every other host's
 * keys).  0, or -1 with why in err. */
static int vet_policy(void *ud, const worker_t *w, const worker_opts_t *po,
                      int fleet, char *err, size_t errlen) {
  app_t *a = ud;
  const char *pre = worker_prefix(w);
  if (!pre) return 0;
  for (size_t i = 0; i < ARRAY_SIZE(a->reserved_keys); i++) {
    const char *k = a->reserved_keys[i];
    if (!k) break;
    if (util_key_holds(pre, k) || util_key_holds(k, pre)) {
      snprintf(err, errlen, "its prefix %s %s %s (%s): register's own keys",
               pre, util_key_holds(pre, k) ? "holds" : "is inside",
               a->reserved_what[i], k);
      return -1;
    }
  }
  /* the prefix in force again: this revision changes nothing of it (and
   * spares every host a second worker at each promote) */
  const char *in_force =
      a->policy && a->policy != w ? worker_prefix(a->policy) : NULL;
  if (in_force && strcmp(in_force, pre) == 0) return 0;
  char *other = worker_prefix_elsewhere(po);
  int shared =
      other && (util_key_holds(pre, other) || util_key_holds(other, pre));
  if (shared && fleet)
    snprintf(err, errlen,
             "its prefix %s is not this host's own: it gives %s for another "
             "host, and each host would delete the others' keys as stale",
             pre, other);
  else if (shared) /* a host's own file: maybe a single host's; said */
    log_warn("policy %s: its prefix %s is not this host's own (it gives %s "
             "for another host): every key under it that this host does not "
             "write is deleted as stale, other hosts' too; run on more than "
             "one host, each deletes the others' keys (put the host's "
             "address in it, as the default's /registered/HOST_IP)",
             worker_name(w), pre, other);
  free(other);
  return shared && fleet ? -1 : 0;
}

/* An update the old policy had on its way at a reload's commit: its
 * container is inspected again, for the new one. */
static void refresh_handed(void *ud, const char *id) {
  app_t *a = ud;
  if (a->docker && *id) docker_refresh(a->docker, id);
}

/* SIGHUP's reload (reload.c) succeeded: the new policy is in force. */
static worker_t *reload_commit(void *ud, worker_t *fresh) {
  app_t *a = ud;
  worker_t *old = a->policy;
  /* the updates the old policy has on their way are not waited for (each
   * may take up to its limit, and the loop would be held for all of them):
   * those answered are done under it, the others' containers are
   * evaluated again under the new one (their inspects come from the loop,
   * after the switch below).  Until then each keeps what it had, or the
   * new policy's records from the reload's trial (reload.c sets those
   * after this). */
  worker_hand_over(old, fresh, refresh_handed, a);
  a->policy = fresh;
  /* the containers that failed under the old policy are evaluated again
   * under the new one (it may be the fix) */
  map_iter_t it;
  const char *id;
  map_iter_init(&it, a->failed);
  while (map_iter_next(&it, &id, NULL))
    if (a->docker) docker_refresh(a->docker, id);
  /* the reload tried them as if running on: draining again */
  map_iter_init(&it, a->draining);
  while (map_iter_next(&it, &id, NULL))
    if (a->docker) docker_refresh(a->docker, id);
  return old;
}

/* A policy worker that kept dying may be tried again: the containers that
 * failed meanwhile are evaluated again. */
static void on_worker_restart(void *ud) {
  app_t *a = ud;
  map_iter_t it;
  const char *id;
  if (a->stopping) return;
  map_iter_init(&it, a->failed);
  while (map_iter_next(&it, &id, NULL))
    if (a->docker) docker_refresh(a->docker, id);
}

/* a->reserved_keys: register's own keys, which no record may touch: the
 * fleet's policy key and its hosts' reports, and the write fences (their
 * directory, when the fence is the default /register/fence/HOST_IP); and
 * the defaults of those, always.  Each once. */
static void reserve_key(app_t *a, size_t *n, char *key, const char *what) {
  for (size_t i = 0; i < *n; i++)
    if (strcmp(a->reserved_keys[i], key) == 0) {
      free(key);
      return;
    }
  REGISTER_ASSERT(*n + 1 < ARRAY_SIZE(a->reserved_keys)); /* NULL-ended */
  a->reserved_what[*n] = what;
  a->reserved_keys[(*n)++] = key;
}

static void reserve_keys(app_t *a) {
  size_t n = 0;
  if (a->cfg->policy_key) {
    reserve_key(a, &n, xstrdup(a->cfg->policy_key), "the fleet's policy key");
    reserve_key(a, &n, policydoc_status_dir(a->cfg->policy_key),
                "the hosts' reports");
  }
  if (a->fence_key) {
    const char *slash = strrchr(a->fence_key, '/');
    /* the default's directory: every host's fence */
    reserve_key(a, &n,
                !a->cfg->etcd_fence && slash && slash != a->fence_key
                    ? util_path_dir(a->fence_key)
                    : xstrdup(a->fence_key),
                "the write fences");
  }
  /* the defaults, whatever this host uses: other hosts of the same etcd
   * may use them (a v3 host's fence, the fleet's key and reports) */
  reserve_key(a, &n, xstrdup("/register/fence"), "the write fences");
  reserve_key(a, &n, xstrdup("/register/policy"), "the fleet's policy key");
  reserve_key(a, &n, xstrdup("/register/status"), "the hosts' reports");
}

/* The options every policy of this daemon is made with. */
static worker_opts_t policy_opts(app_t *a) {
  const config_t *cfg = a->cfg;
  worker_opts_t po = {0};
  po.file = cfg->policy_file;
  po.host_ip = cfg->host_ip;
  po.hostname = cfg->hostname;
  po.io = a->io;
  po.has_etcd = a->etcd != NULL;
  po.print_only = cfg->dry_run;
  po.time_limit_ms = (uint64_t)cfg->policy_timeout_ms;
  po.hook_limit_ms = (uint64_t)cfg->hook_timeout * 1000;
  po.loop = &a->loop;
  po.stats = &a->pstats;
  po.wstats = &a->wstats;
  po.env = cfg->policy_env;
  po.log_level = cfg->log_level;
  po.on_restart = on_worker_restart;
  po.interrupted = stopsig_flag();
  po.reserved = (const char *const *)a->reserved_keys;
  po.ud = a;
  return po;
}

/* ---- the fleet's policy (fleet.c) ---- */

/* The owner of the host's report among the reconciler's keys: not a
 * container id (those are hex). */
#define FLEET_OWNER RECONCILE_DAEMON_OWNER "policy-status"

static fleet_outcome_t fleet_outcome(reload_outcome_t o) {
  switch (o) {
  case RELOAD_APPLIED:
    return FLEET_APPLIED;
  case RELOAD_TIMED_OUT:
    return FLEET_TIMED_OUT;
  case RELOAD_BUSY:
    return FLEET_BUSY;
  case RELOAD_REFUSED:
    break;
  }
  return FLEET_REFUSED;
}

static void fleet_done(void *ud, reload_outcome_t outcome, const char *why) {
  app_t *a = ud;
  if (a->fleet) fleet_tried(a->fleet, fleet_outcome(outcome), why);
}

/* A revision from etcd, tried as SIGHUP's reload tries a file. */
static int fleet_apply(void *ud, const char *source, size_t len,
                       const char *name, char *err, size_t errlen,
                       fleet_outcome_t *outcome) {
  app_t *a = ud;
  /* Docker's containers not known (yet, or while it is away): again
   * later, without a failed reload per try */
  if (a->stopping || !a->listed || !docker_connected(a->docker)) {
    *outcome = FLEET_BUSY;
    snprintf(err, errlen, "%s",
             a->stopping ? "shutting down" : "Docker not connected");
    return -1;
  }
  worker_opts_t po = policy_opts(a);
  po.file = name;
  po.source = source;
  po.source_len = len;
  po.no_files = 1;
  reload_outcome_t ro;
  int rc = reload_try(a->reload, &po, a->policy, a->docker, a->rec, fleet_done,
                      a, err, errlen, &ro);
  *outcome = fleet_outcome(ro);
  return rc;
}

/* The host's report: one key among the host's own, on its lease or TTL,
 * written and kept like theirs. */
static void fleet_publish(void *ud, const char *key, const char *value,
                          size_t len) {
  app_t *a = ud;
  if (!a->rec || a->stopping) return;
  records_t recs;
  records_init(&recs);
  records_add(&recs, key, value, len);
  reconcile_set(a->rec, FLEET_OWNER, NULL, "policy status", &recs);
  records_free(&recs);
  a->status_set = 1;
}

static uint64_t fleet_keys(void *ud) {
  app_t *a = ud;
  reconcile_stats_t st;
  reconcile_stats(a->rec, &st);
  /* not the report itself */
  return a->status_set && st.keys > 0 ? st.keys - 1 : st.keys;
}

/* --policy-key: the fleet's follower, and the policy it starts with (the
 * revision kept in --state-dir, if any, in a->policy).  -1 with err when
 * it cannot be made (the public key file). */
static int start_fleet(app_t *a, const worker_opts_t *po, char *err,
                       size_t errlen) {
  const config_t *cfg = a->cfg;
  fleet_opts_t fo = {0};
  fo.loop = &a->loop;
  fo.etcd = a->etcd;
  fo.key = cfg->policy_key;
  fo.host_ip = cfg->host_ip;
  fo.state_dir = cfg->state_dir;
  fo.pubkey = cfg->policy_pubkey;
  fo.allow_unsigned = cfg->policy_unsigned;
  fo.apply = fleet_apply;
  fo.publish = fleet_publish;
  fo.keys = fleet_keys;
  fo.ud = a;
  a->fleet = fleet_new(&fo, err, errlen);
  if (!a->fleet) { /* the public key file: the operator's flag */
    char why[400];
    snprintf(why, sizeof why, "%.399s", err);
    snprintf(err, errlen, "--policy-pubkey: %s", why);
    return -1;
  }
  a->status_key = policydoc_status_key(cfg->policy_key, cfg->host_ip);
  /* the revision applied last, kept in --state-dir: etcd may be down */
  const char *src, *name;
  size_t len;
  if (fleet_cached(a->fleet, &src, &len, &name)) {
    worker_opts_t fpo = *po;
    fpo.file = name;
    fpo.source = src;
    fpo.source_len = len;
    fpo.no_files = 1;
    char werr[600];
    a->policy = worker_new(&fpo, werr, sizeof werr);
    if (a->policy && vet_policy(a, a->policy, &fpo, 1, werr, sizeof werr) < 0) {
      worker_free(a->policy);
      a->policy = NULL;
    }
    if (!a->policy)
      log_error("policy cache: %s; starting with the host's own policy", werr);
  }
  fleet_started(a->fleet, a->policy != NULL);
  return 0;
}

static void resync_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (a->stopping) return; /* Docker may be gone already */
  log_debug("periodic resync");
  docker_resync(a->docker);
  reconcile_resync(a->rec);
}

static void audit_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (a->stopping) return;
  log_debug("comparing etcd with what register wants");
  reconcile_resync(a->rec);
  uv_timer_start(t, audit_cb,
                 AUDIT_EVERY_MS * 9 / 10 + util_rand(AUDIT_EVERY_MS / 5), 0);
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Frees a module and forgets it; every _free() takes NULL. */
#define DROP(fn, field) (fn(a->field), a->field = NULL)

/* In order: what uses a module goes before it.  Each may be NULL (setup
 * failed half way). */
static void free_modules(app_t *a) {
  DROP(health_free, health); /* answers what waits for a probe */
  DROP(httpd_free, httpd);
  DROP(notify_free, notify);
  DROP(docker_free, docker);
  DROP(fleet_free, fleet); /* before etcd: it cancels its read and watch */
  DROP(reconcile_free, rec);
  DROP(reload_free, reload);
  DROP(checks_free, checks); /* before http: it cancels requests there */
  if (a->draining) {         /* their timers close with the loop */
    map_iter_t it;
    void *v;
    map_iter_init(&it, a->draining);
    while (map_iter_next(&it, NULL, &v))
      drain_end(v);
    map_free(a->draining);
    a->draining = NULL;
  }
  DROP(worker_free, policy); /* cancels its hooks' I/O */
  DROP(hookio_free, io);     /* before etcd and http: it holds their requests */
  DROP(etcd_free, etcd);
  DROP(creds_free, ecreds);
  DROP(creds_free, dcreds);
  DROP(http_free, http);
  DROP(http_free, dhttp);
  DROP(http_free, shttp);
}

static void stop_cb(uv_timer_t *t);

/* The write fence is deleted last: every key of the host is gone. */
static void fence_removed(void *data, const etcd_result_t *res) {
  app_t *a = data;
  a->fence_op = NULL;
  a->fence_done = 1;
  if (res->status != ETCD_OK && res->status != ETCD_NOT_FOUND)
    log_warn("deregistered, but the write fence key is left: %s",
             res->error ? res->error : "?");
  uv_timer_start(&a->stop_timer, stop_cb, 0, 0);
}

/* Runs from a timer, never from inside another module's callback. */
static void stop_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (a->cfg->deregister_on_exit && !a->deregistering && !a->cfg->once) {
    a->deregistering = 1;
    log_info("deregistering this host's keys before exit");
    uv_timer_stop(&a->resync_timer); /* nothing may reach Docker now */
    docker_free(a->docker); /* abandons a reload's snapshot, silently */
    a->docker = NULL;
    uv_timer_start(&a->deadline_timer, stop_cb, DEREGISTER_TIMEOUT_MS, 0);
    reconcile_deregister(a->rec);
    if (!reconcile_converged(a->rec)) return; /* on_converged comes back */
  }
  if (a->deregistering && !reconcile_converged(a->rec))
    log_warn("exiting before every key could be deleted");
  else if (a->deregistering && a->cfg->deregister_on_exit && a->etcd &&
           !a->exit_now && t != &a->deadline_timer && !a->fence_done) {
    if (!a->fence_op)
      a->fence_op = etcd_fence_remove(a->etcd, fence_removed, a);
    if (a->fence_op) return; /* fence_removed comes back */
  }
  free_modules(a);
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

static void sighup_reload(app_t *a);

/* A SIGHUP came while the reload ran: the next one starts from the loop
 * (not inside the reload's end). */
static void hup_timer_cb(uv_timer_t *t) {
  app_t *a = t->data;
  if (!a->stopping) sighup_reload(a);
}

static void sighup_done(void *ud, reload_outcome_t outcome, const char *why) {
  (void)outcome;
  (void)why;
  app_t *a = ud;
  if (!a->hup_again) return;
  a->hup_again = 0;
  uv_timer_start(&a->hup_timer, hup_timer_cb, 0, 0);
}

static void sighup_reload(app_t *a) {
  worker_opts_t po = policy_opts(a);
  reload_run(a->reload, &po, a->policy, a->docker, a->rec, sighup_done, a);
}

static void signal_cb(uv_signal_t *s, int signum) {
  app_t *a = s->data;
  if (signum == SIGHUP) {
    if (a->stopping) {
      log_warn("SIGHUP while shutting down: no reload");
      return;
    }
    creds_reread(a->ecreds); /* rotated credentials: read again */
    creds_reread(a->dcreds);
    if (a->fleet) { /* the fleet's policy, not --policy's file */
      log_info("SIGHUP: reading the policy key %s again", a->cfg->policy_key);
      fleet_reread(a->fleet);
      return;
    }
    if (reload_running(a->reload)) { /* the file may have changed since */
      log_info("SIGHUP: a policy reload is running; %s is tried again once "
               "it is over",
               a->cfg->policy_file ? a->cfg->policy_file : "the policy");
      a->hup_again = 1;
      return;
    }
    sighup_reload(a);
    return;
  }
  if (a->stopping) {
    log_warn("second signal: exiting now");
    a->deregistering = 1; /* skip waiting */
    a->exit_now = 1;
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
    char names[1024];
    failed_names(a, names, sizeof names, 20);
    log_error("--once: etcd does not match after %ld s (Docker %s, %zu keys "
              "waiting, %zu refused, %zu containers failed the policy "
              "call%s%s)",
              a->cfg->once_timeout,
              docker_connected(a->docker) ? "connected" : "unreachable",
              st.queued + st.inflight, st.failed, map_size(a->failed),
              *names ? ": " : "", names);
    begin_stop(a, 1);
  }
}

/* The failed set; each entry is one block, named by its key. */
static void free_containers(app_t *a) {
  map_iter_t it;
  const char *k;
  map_iter_init(&it, a->failed);
  while (map_iter_next(&it, &k, NULL))
    free((void *)(uintptr_t)k);
  map_free(a->failed);
}

int app_run(const config_t *cfg) {
  app_t *a = xcalloc(1, sizeof *a);
  a->cfg = cfg;
  a->exit_code = 1;
  a->failed = map_new();
  a->draining = map_new();
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
    http_tls_t tls;
    etcd_opts_t eo;
    etcd_opts_from_config(cfg, &tls, &eo);
    eo.ttl = cfg->ttl;
    eo.lease_lost = on_lease_lost;
    eo.rewound = on_rewound;
    eo.new_member = on_new_member;
    eo.ud = a;
    /* this host's write fence (v3): a key of its own, next to the fleet's
     * status reports */
    char *fence = NULL;
    if (!cfg->etcd_fence)
      fence = xasprintf("/register/fence/%s", cfg->host_ip);
    else if (strcmp(cfg->etcd_fence, "off") != 0)
      fence = xstrdup(cfg->etcd_fence);
    eo.fence_key = fence;
    a->etcd = etcd_new(&a->loop, a->http, &eo);
    if (cfg->etcd_api == ETCD_API_V3)
      a->fence_key = fence; /* v3 only */
    else
      free(fence); /* etcd_new() copies it */
  }
  if (start_creds(a, err, sizeof err) < 0) {
    log_error("%s", err);
    goto out;
  }
  a->io = hookio_new(&a->loop, a->http, a->etcd);
  checks_opts_t co = {0};
  co.loop = &a->loop;
  co.http = a->http;
  co.host_ip = cfg->host_ip;   /* on this host: always allowed */
  co.allow = cfg->check_allow; /* --check-allow, or NULL */
  co.on_transition = on_check_transition;
  co.ud = a;
  a->checks = checks_new(&co);
  reserve_keys(a);
  worker_opts_t po = policy_opts(a);
  if (cfg->policy_key && a->etcd) {
    if (start_fleet(a, &po, err, sizeof err) < 0) {
      log_error("%s", err);
      rc = 2; /* a flag's value, as config's errors */
      goto out;
    }
  } else if (cfg->policy_key) {
    log_warn("--dry-run: the policy key %s is not followed", cfg->policy_key);
  }
  if (!a->policy) {
    a->policy = worker_new(&po, err, sizeof err);
    if (a->policy && vet_policy(a, a->policy, &po, 0, err, sizeof err) < 0) {
      char why[sizeof err];
      memcpy(why, err, sizeof why);
      snprintf(err, sizeof err, "policy %.150s: %.400s", worker_name(a->policy),
               why);
      worker_free(a->policy);
      a->policy = NULL;
    }
  }
  if (!a->policy) {
    log_error("%s", err);
    goto out;
  }
  reconcile_opts_t ro = {0};
  ro.loop = &a->loop;
  ro.etcd = a->etcd;
  ro.prefix = worker_prefix(a->policy);
  ro.ttl = cfg->ttl;
  ro.dry_run = cfg->dry_run;
  ro.converged = on_converged;
  ro.changed = on_changed;
  ro.ud = a;
  a->rec = reconcile_new(&ro);

  http_tls_t dtls = {.cacert = cfg->docker_cacert,
                     .cert = cfg->docker_cert,
                     .key = cfg->docker_key};
  docker_opts_t dopts = {a->shttp, cfg->docker_base, cfg->docker_socket,
                         cfg->docker_cacert ? &dtls : NULL, DOCKER_CONNS};
  docker_cbs_t dcbs = {on_update, on_gone, on_event, on_synced, on_connection};
  a->docker = docker_new(&a->loop, a->dhttp, &dopts, &dcbs, a);
  if (a->dcreds) { /* the contents read now, not the files */
    http_tls_t t;
    creds_tls(a->dcreds, &t);
    docker_set_tls(a->docker, &t);
  }
  a->notify = notify_new(&a->loop);
  a->reload = reload_new(reload_commit, a->checks, a);
  reload_set_vet(a->reload, vet_policy);
  if (cfg->metrics_addr) {
    a->health = health_new(a->etcd, health_inputs, a);
    a->httpd = httpd_new(&a->loop, cfg->metrics_addr, health_handle, a->health,
                         err, sizeof err);
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
  stopsig_hup(0); /* held since main(): one that came meanwhile comes now */
  stopsig_chain();
  uv_timer_init(&a->loop, &a->resync_timer);
  uv_timer_init(&a->loop, &a->stop_timer);
  uv_timer_init(&a->loop, &a->deadline_timer);
  uv_timer_init(&a->loop, &a->trim_timer);
  uv_timer_init(&a->loop, &a->once_timer);
  a->once_timer.data = a;
  uv_timer_init(&a->loop, &a->hup_timer);
  a->hup_timer.data = a;
  uv_timer_init(&a->loop, &a->fleet_timer);
  a->fleet_timer.data = a;
  if (a->fleet) {
    a->fleet_start_ms = uv_now(&a->loop);
    uv_timer_start(&a->fleet_timer, fleet_decide_cb, FLEET_DECIDE_POLL_MS,
                   FLEET_DECIDE_POLL_MS);
  }
  uv_timer_init(&a->loop, &a->status_timer);
  uv_timer_init(&a->loop, &a->audit_timer);
  a->status_timer.data = a->audit_timer.data = a;
  a->resync_timer.data = a->stop_timer.data = a->deadline_timer.data = a;
  a->trim_timer.data = a;
  if (cfg->resync > 0)
    uv_timer_start(&a->resync_timer, resync_cb, (uint64_t)cfg->resync * 1000,
                   (uint64_t)cfg->resync * 1000);
  if (!cfg->dry_run && !cfg->once &&
      (cfg->resync == 0 || (uint64_t)cfg->resync * 1000 > AUDIT_EVERY_MS))
    uv_timer_start(&a->audit_timer, audit_cb,
                   AUDIT_EVERY_MS * 9 / 10 + util_rand(AUDIT_EVERY_MS / 5), 0);
  if (cfg->once)
    uv_timer_start(&a->deadline_timer, deadline_cb,
                   (uint64_t)cfg->once_timeout * 1000, 0);

  log_info("register %s: host %s, policy %s, prefix %s, etcd %s (%s), "
           "docker %s%s",
           REGISTER_VERSION, cfg->host_ip, worker_name(a->policy),
           worker_prefix(a->policy) ? worker_prefix(a->policy) : "(none)",
           cfg->dry_run ? "-" : cfg->etcd[0],
           cfg->etcd_api == ETCD_API_V3 ? "v3" : "v2", cfg->docker_url,
           cfg->dry_run ? ", dry run" : "");
  if (!worker_prefix(a->policy) && cfg->ttl == 0 && !cfg->dry_run)
    log_warn("policy %s has no prefix() and --ttl is 0: the keys of "
             "containers that go while register is not running stay in etcd "
             "for good; give the policy a prefix() or set --ttl",
             worker_name(a->policy));
  reconcile_start(a->rec);
  docker_start(a->docker);
  if (a->fleet) fleet_start(a->fleet);

  uv_run(&a->loop, UV_RUN_DEFAULT);
  rc = a->exit_code;
out:
  if (a->http || a->dhttp || a->shttp) { /* setup failed half way */
    free_modules(a);
    uv_walk(&a->loop, close_walk_cb, NULL);
    uv_run(&a->loop, UV_RUN_DEFAULT);
  }
  if (uv_loop_close(&a->loop) != 0) log_warn("libuv loop still has handles");
  worker_free(a->policy);
  free_containers(a);
  free(a->status_key);
  free(a->fence_key);
  for (size_t i = 0; i < ARRAY_SIZE(a->reserved_keys); i++)
    free(a->reserved_keys[i]);
  free(a);
  return rc;
}

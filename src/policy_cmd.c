/* policy_cmd: see include/policy_cmd.h */
#include "policy_cmd.h"
#include "check.h"
#include "config.h"
#include "etcd.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "policydoc.h"
#include "sig.h"
#include "util.h"
#include "worker.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* ---- one etcd request at a time, on a loop of our own ---- */

typedef struct {
  char *key, *value;
  size_t vlen;
} kv_copy_t;

typedef struct {
  uv_loop_t loop;
  http_t *http;
  etcd_t *etcd;
  int starting; /* inside etcd_get/list/put_if: no answer may come */
  /* the answer of the last request */
  int done;
  etcd_status_t status;
  char error[600];
  kv_copy_t *kvs;
  size_t n;
} client_t;

static void kvs_clear(client_t *c) {
  for (size_t i = 0; i < c->n; i++) {
    free(c->kvs[i].key);
    free(c->kvs[i].value);
  }
  free(c->kvs);
  c->kvs = NULL;
  c->n = 0;
}

static void note(client_t *c, const etcd_result_t *res) {
  /* one answer per request, from the loop (client_wait), never inside the
   * call that started it */
  REGISTER_ASSERT(!c->done && !c->starting);
  c->done = 1;
  c->status = res->status;
  snprintf(c->error, sizeof c->error, "%s",
           res->error ? res->error : etcd_status_name(res->status));
}

static void on_done(void *data, const etcd_result_t *res) {
  note(data, res);
}

static void on_list(void *data, const etcd_result_t *res, const etcd_kv_t *kvs,
                    size_t n, const char *const *dirs, size_t ndirs) {
  client_t *c = data;
  (void)dirs, (void)ndirs;
  note(c, res);
  if (res->status != ETCD_OK) return;
  c->kvs = xcalloc(n ? n : 1, sizeof *c->kvs);
  for (size_t i = 0; i < n; i++) {
    c->kvs[i].key = xstrdup(kvs[i].key);
    c->kvs[i].value = xstrndup(kvs[i].value, kvs[i].value_len);
    c->kvs[i].vlen = kvs[i].value_len;
  }
  c->n = n;
}

static int client_open(client_t *c, const config_t *cfg) {
  memset(c, 0, sizeof *c);
  uv_loop_init(&c->loop);
  c->http = http_new(&c->loop, 2, 2);
  if (!c->http) {
    fprintf(stderr, "register policy: cannot initialise libcurl\n");
    uv_loop_close(&c->loop);
    return -1;
  }
  http_tls_t tls;
  etcd_opts_t eo;
  etcd_opts_from_config(cfg, &tls, &eo);
  eo.discover = 0; /* a handful of requests to the endpoints given */
  c->etcd = etcd_new(&c->loop, c->http, &eo);
  return 0;
}

static void client_close(client_t *c) {
  kvs_clear(c);
  if (c->etcd) etcd_free(c->etcd);
  if (c->http) http_free(c->http);
  uv_run(&c->loop, UV_RUN_DEFAULT);
  uv_loop_close(&c->loop);
}

/* Runs the loop until the request's callback came. */
static void client_wait(client_t *c) {
  while (!c->done)
    uv_run(&c->loop, UV_RUN_ONCE);
  c->done = 0;
}

static etcd_status_t client_get(client_t *c, const char *key) {
  kvs_clear(c);
  c->starting = 1;
  etcd_op_t *op = etcd_get(c->etcd, key, on_list, c);
  c->starting = 0;
  REGISTER_ASSERT(op); /* never NULL: a failure comes from the loop */
  client_wait(c);
  return c->status;
}

static etcd_status_t client_list(client_t *c, const char *prefix) {
  kvs_clear(c);
  c->starting = 1;
  etcd_op_t *op = etcd_list(c->etcd, prefix, on_list, c);
  c->starting = 0;
  REGISTER_ASSERT(op); /* never NULL: a failure comes from the loop */
  client_wait(c);
  return c->status;
}

static etcd_status_t client_put_if(client_t *c, const char *key,
                                   const char *value, size_t vlen,
                                   const char *prev, size_t prevlen) {
  c->starting = 1;
  etcd_op_t *op =
      etcd_put_if(c->etcd, key, value, vlen, prev, prevlen, on_done, c);
  c->starting = 0;
  REGISTER_ASSERT(op); /* never NULL: a failure comes from the loop */
  client_wait(c);
  return c->status;
}

/* ---- the document ---- */

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("register policy: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}

/* The document at KEY: 1 read (text kept in *text, *len), 0 absent, -1
 * failed (said). */
static int read_doc(client_t *c, const char *key, policydoc_t *d, char **text,
                    size_t *len) {
  memset(d, 0, sizeof *d);
  *text = NULL;
  *len = 0;
  if (client_get(c, key) != ETCD_OK) {
    fail("etcd: %s", c->error);
    return -1;
  }
  if (c->n == 0) return 0;
  char err[300];
  if (policydoc_parse(c->kvs[0].value, c->kvs[0].vlen, d, err, sizeof err) <
      0) {
    fail("%s: %s", key, err);
    policydoc_free(d);
    return -1;
  }
  *text = xstrndup(c->kvs[0].value, c->kvs[0].vlen);
  *len = c->kvs[0].vlen;
  return 1;
}

/* Writes d (generation + 1) over what was read (text, or NULL when the key
 * was absent): 0, or 1 (said). */
static int write_doc(client_t *c, const char *key, policydoc_t *d,
                     const char *prev, size_t prevlen) {
  d->generation++;
  /* revision numbers go on from the highest ever written, whatever a
   * rollback dropped */
  d->last_revision = policydoc_top(d);
  size_t len;
  char *text = policydoc_write(d, &len);
  /* what the hosts will parse: never write what they would refuse */
  policydoc_t check;
  char err[300];
  int ok = policydoc_parse(text, len, &check, err, sizeof err) == 0;
  policydoc_free(&check);
  if (!ok) {
    free(text);
    return fail("the new document is invalid (a bug): %s", err);
  }
  etcd_status_t st = client_put_if(c, key, text, len, prev, prevlen);
  free(text);
  if (st == ETCD_CONFLICT)
    return fail("%s changed meanwhile (another operator?): read it again and "
                "retry",
                key);
  if (st != ETCD_OK) return fail("etcd: %s", c->error);
  return 0;
}

static void selection(const policydoc_t *d, char *out, size_t n) {
  if (d->n_canary_hosts) {
    size_t k = (size_t)snprintf(out, n, "%zu host%s (", d->n_canary_hosts,
                                d->n_canary_hosts == 1 ? "" : "s");
    for (size_t i = 0; i < d->n_canary_hosts && k < n; i++)
      k += (size_t)snprintf(out + k, n - k, "%s%s", i ? ", " : "",
                            d->canary_hosts[i]);
    if (k < n) snprintf(out + k, n - k, ")");
  } else {
    snprintf(out, n, "%d%% of hosts", d->canary_percent);
  }
}

static char *pushed_by(void) {
  const char *user = getenv("USER");
  struct passwd *pw = NULL;
  if (!user || !*user) {
    pw = getpwuid(getuid());
    user = pw ? pw->pw_name : "unknown";
  }
  char host[256];
  if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "?");
  host[sizeof host - 1] = '\0';
  return xasprintf("%s@%s", user, host);
}

/* ---- push ---- */

/* FILE loads in a policy worker and runs cleanly on every inspect file:
 * 0, or -1 (said). */
static int check_source(const config_t *cfg, const char *file, const char *src,
                        size_t len) {
  worker_opts_t po = {0};
  po.file = file;
  po.source = src;
  po.source_len = len;
  po.print_only = 1; /* a hook's HTTP is printed, never sent */
  po.no_files = 1;   /* as on the hosts: require finds built-in modules only */
  po.host_ip = cfg->host_ip[0] ? cfg->host_ip : "127.0.0.1";
  po.hostname = cfg->hostname[0] ? cfg->hostname : "localhost";
  po.time_limit_ms = (uint64_t)cfg->policy_timeout_ms;
  po.env = cfg->policy_env;
  po.log_level = LOG_WARN;
  char err[600];
  worker_t *w = worker_new(&po, err, sizeof err);
  if (!w) {
    fail("%s does not load: %s", file, err);
    return -1;
  }
  int rc = 0;
  if (cfg->n_policy_args > 1 &&
      check_inspect_files(w, cfg->policy_args + 1, (int)cfg->n_policy_args - 1,
                          NULL) < 0) {
    fail("%s fails its check on the inspect documents given (register check "
         "%s ... shows it): nothing pushed",
         file, file);
    rc = -1;
  }
  worker_free(w);
  return rc;
}

static int push(const config_t *cfg, client_t *c) {
  const char *file = cfg->policy_args[0], *key = cfg->policy_key;
  char err[600];
  policydoc_t scratch = {0};
  if (cfg->policy_canary &&
      policydoc_set_canary(&scratch, cfg->policy_canary, err, sizeof err) < 0) {
    policydoc_free(&scratch);
    return fail("%s", err);
  }
  buf_t src;
  buf_init(&src);
  buf_reserve(&src, 1);
  if (util_read_file(file, POLICYDOC_MAX_SOURCE, &src) < 0) {
    int e = errno;
    buf_free(&src);
    policydoc_free(&scratch);
    if (e == EFBIG)
      return fail("%s is too large: a policy in etcd may be at most %u bytes",
                  file, POLICYDOC_MAX_SOURCE);
    return fail("%s: %s", file, strerror(e));
  }
  char *sig = NULL;
  int bad = check_source(cfg, file, src.data, src.len) < 0;
  if (!bad && cfg->policy_sign &&
      !(sig = sig_sign(cfg->policy_sign, src.data, src.len, err, sizeof err))) {
    fail("--sign: %s", err);
    bad = 1;
  }
  if (bad) {
    buf_free(&src);
    policydoc_free(&scratch);
    return 1;
  }
  policydoc_t d;
  char *prev;
  size_t prevlen;
  int rc = 1;
  int found = read_doc(c, key, &d, &prev, &prevlen);
  if (found < 0) goto out;
  if (!found && cfg->policy_canary) {
    fail("%s holds no policy yet: the first push goes to every host (without "
         "--canary)",
         key);
    goto out;
  }
  const char *base = strrchr(file, '/');
  char *by = pushed_by();
  policydoc_rev_t *r =
      policydoc_rev_new(policydoc_top(&d) + 1, src.data, src.len, sig,
                        base ? base + 1 : file, by);
  free(by);
  char what[1200];
  if (cfg->policy_canary) {
    policydoc_rev_free(d.canary);
    d.canary = r;
    policydoc_set_canary(&d, cfg->policy_canary, err, sizeof err);
    char sel[1000];
    selection(&d, sel, sizeof sel);
    snprintf(what, sizeof what,
             "pushed revision %" PRId64 " to %s (canary; stable stays %" PRId64
             ")%s",
             r->revision, sel, d.stable->revision, sig ? ", signed" : "");
  } else {
    int64_t old = d.stable ? d.stable->revision : 0;
    if (d.stable) {
      policydoc_rev_free(d.previous);
      d.previous = d.stable;
    }
    d.stable = r;
    int had_canary = d.canary != NULL;
    policydoc_drop_canary(&d);
    char prevs[80] = "";
    if (old) snprintf(prevs, sizeof prevs, "; previous %" PRId64, old);
    snprintf(what, sizeof what,
             "pushed revision %" PRId64 " to every host (stable%s%s)%s",
             r->revision, prevs, had_canary ? "; the canary dropped" : "",
             sig ? ", signed" : "");
  }
  if (write_doc(c, key, &d, prev, prevlen) == 0) {
    printf("%s\n", what);
    rc = 0;
  }
out:
  free(prev);
  policydoc_free(&d);
  policydoc_free(&scratch);
  free(sig);
  buf_free(&src);
  return rc;
}

/* ---- promote, rollback ---- */

static int move(const config_t *cfg, client_t *c, int promote) {
  const char *key = cfg->policy_key;
  policydoc_t d;
  char *prev;
  size_t prevlen;
  int found = read_doc(c, key, &d, &prev, &prevlen);
  if (found <= 0) {
    if (found == 0)
      fail("no policy at %s (register policy push FILE --key %s)", key, key);
    return 1;
  }
  char what[300];
  int rc = 1;
  if (promote) {
    if (!d.canary) {
      fail("%s has no canary to promote (stable is revision %" PRId64 ")", key,
           d.stable->revision);
      goto out;
    }
    snprintf(what, sizeof what,
             "promoted revision %" PRId64 " to every host (stable; previous "
             "%" PRId64 ")",
             d.canary->revision, d.stable->revision);
    policydoc_rev_free(d.previous);
    d.previous = d.stable;
    d.stable = d.canary;
    d.canary = NULL;
  } else if (d.canary) {
    snprintf(what, sizeof what,
             "rolled back the canary (revision %" PRId64
             "): every host runs revision %" PRId64,
             d.canary->revision, d.stable->revision);
  } else if (d.previous) {
    snprintf(what, sizeof what,
             "rolled back to revision %" PRId64 " (revision %" PRId64
             " dropped)",
             d.previous->revision, d.stable->revision);
    policydoc_rev_free(d.stable);
    d.stable = d.previous;
    d.previous = NULL;
  } else {
    fail("nothing to roll back to: %s holds revision %" PRId64
         " alone (no canary, no previous revision)",
         key, d.stable->revision);
    goto out;
  }
  policydoc_drop_canary(&d); /* its selection (promote: the canary moved) */
  if (write_doc(c, key, &d, prev, prevlen) == 0) {
    printf("%s\n", what);
    rc = 0;
  }
out:
  free(prev);
  policydoc_free(&d);
  return rc;
}

/* ---- status ---- */

typedef struct {
  policydoc_status_t s;
  int silent;
} host_t;

static int by_host(const void *a, const void *b) {
  return strcmp(((const host_t *)a)->s.host, ((const host_t *)b)->s.host);
}

static void age(int64_t secs, char *out, size_t n) {
  if (secs < 0) secs = 0;
  if (secs < 120)
    snprintf(out, n, "%" PRId64 "s", secs);
  else if (secs < 7200)
    snprintf(out, n, "%" PRId64 "m", secs / 60);
  else if (secs < 172800)
    snprintf(out, n, "%" PRId64 "h", secs / 3600);
  else
    snprintf(out, n, "%" PRId64 "d", secs / 86400);
}

static void rev_json(buf_t *b, const policydoc_rev_t *r) {
  if (!r) {
    buf_puts(b, "null");
    return;
  }
  buf_printf(b, "{\"revision\":%" PRId64 ",\"sha256\":\"%s\",\"signed\":%s",
             r->revision, r->sha256, r->signature ? "true" : "false");
  const char *names[] = {"name", "pushed", "pushed_by"};
  const char *vals[] = {r->name, r->pushed, r->pushed_by};
  for (size_t i = 0; i < 3; i++)
    if (vals[i]) {
      buf_printf(b, ",\"%s\":", names[i]);
      json_escape(b, vals[i], strlen(vals[i]));
    }
}

static void rev_line(const char *what, const policydoc_rev_t *r) {
  printf("  %-9s revision %" PRId64 "  sha256 %.12s  %s", what, r->revision,
         r->sha256, r->signature ? "signed" : "unsigned");
  if (r->pushed)
    printf("  pushed %s%s%s", r->pushed, r->pushed_by ? " by " : "",
           r->pushed_by ? r->pushed_by : "");
  printf("\n");
}

static int status(const config_t *cfg, client_t *c) {
  const char *key = cfg->policy_key;
  policydoc_t d;
  char *text;
  size_t tlen;
  int found = read_doc(c, key, &d, &text, &tlen);
  free(text);
  if (found <= 0) {
    if (found == 0)
      fail("no policy at %s (register policy push FILE --key %s)", key, key);
    return 1;
  }
  char *dir = policydoc_status_dir(key);
  if (client_list(c, dir) != ETCD_OK) {
    fail("etcd: %s", c->error);
    free(dir);
    policydoc_free(&d);
    return 1;
  }
  host_t *hosts = xcalloc(c->n ? c->n : 1, sizeof *hosts);
  size_t nh = 0, unreadable = 0;
  for (size_t i = 0; i < c->n; i++) {
    char err[300];
    host_t *h = &hosts[nh];
    if (policydoc_status_parse(c->kvs[i].value, c->kvs[i].vlen, &h->s, err,
                               sizeof err) < 0) {
      fprintf(stderr, "register policy: %s: %s (ignored)\n", c->kvs[i].key,
              err);
      policydoc_status_free(&h->s);
      unreadable++;
      continue;
    }
    if (strcmp(h->s.key, key) != 0) { /* a host following another KEY */
      policydoc_status_free(&h->s);
      continue;
    }
    h->silent = h->s.generation < d.generation;
    nh++;
  }
  qsort(hosts, nh, sizeof *hosts, by_host);
  /* the summary: hosts per revision in force */
  int64_t revs[64];
  size_t counts[64], nrev = 0, refused = 0, waiting = 0, silent = 0;
  for (size_t i = 0; i < nh; i++) {
    const policydoc_status_t *s = &hosts[i].s;
    size_t k = 0;
    while (k < nrev && revs[k] != s->revision)
      k++;
    if (k == nrev && nrev < 64) {
      revs[nrev] = s->revision;
      counts[nrev++] = 0;
    }
    if (k < nrev) counts[k]++;
    refused += s->state == POLICYDOC_REFUSED;
    waiting += s->state == POLICYDOC_WAITING;
    silent += (size_t)hosts[i].silent;
  }
  int64_t now = (int64_t)time(NULL);
  char sel[1000] = "";
  if (d.canary) selection(&d, sel, sizeof sel);
  if (cfg->policy_json) {
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"key\":");
    json_escape(&b, key, strlen(key));
    buf_printf(&b, ",\"generation\":%" PRId64 ",\"stable\":", d.generation);
    rev_json(&b, d.stable);
    if (d.stable) buf_putc(&b, '}');
    buf_puts(&b, ",\"canary\":");
    rev_json(&b, d.canary);
    if (d.canary) {
      if (d.n_canary_hosts) {
        buf_puts(&b, ",\"hosts\":[");
        for (size_t i = 0; i < d.n_canary_hosts; i++) {
          if (i) buf_putc(&b, ',');
          json_escape(&b, d.canary_hosts[i], strlen(d.canary_hosts[i]));
        }
        buf_putc(&b, ']');
      } else {
        buf_printf(&b, ",\"percent\":%d", d.canary_percent);
      }
      buf_putc(&b, '}');
    }
    buf_puts(&b, ",\"previous\":");
    rev_json(&b, d.previous);
    if (d.previous) buf_putc(&b, '}');
    buf_puts(&b, ",\"hosts\":[");
    for (size_t i = 0; i < nh; i++) {
      const policydoc_status_t *s = &hosts[i].s;
      if (i) buf_putc(&b, ',');
      buf_puts(&b, "{\"host\":");
      json_escape(&b, s->host, strlen(s->host));
      buf_printf(&b,
                 ",\"revision\":%" PRId64 ",\"offered\":%" PRId64
                 ",\"state\":\"%s\",\"error\":",
                 s->revision, s->offered, policydoc_state_name(s->state));
      if (s->error)
        json_escape(&b, s->error, strlen(s->error));
      else
        buf_puts(&b, "null");
      buf_printf(&b,
                 ",\"keys\":%" PRIu64 ",\"age\":%" PRId64
                 ",\"generation\":%" PRId64 ",\"silent\":%s,\"signed\":%s}",
                 s->keys, now - s->since, s->generation,
                 hosts[i].silent ? "true" : "false",
                 s->is_signed ? "true" : "false");
    }
    buf_printf(&b, "],\"summary\":{\"hosts\":%zu,\"revisions\":{", nh);
    for (size_t k = 0; k < nrev; k++)
      buf_printf(&b, "%s\"%" PRId64 "\":%zu", k ? "," : "", revs[k], counts[k]);
    buf_printf(&b,
               "},\"refused\":%zu,\"waiting\":%zu,\"silent\":%zu,"
               "\"unreadable\":%zu}}\n",
               refused, waiting, silent, unreadable);
    fwrite(b.data, 1, b.len, stdout);
    buf_free(&b);
  } else {
    printf("policy %s, generation %" PRId64 "\n", key, d.generation);
    rev_line("stable", d.stable);
    if (d.canary) {
      rev_line("canary", d.canary);
      printf("            to %s\n", sel);
    }
    if (d.previous) rev_line("previous", d.previous);
    printf("\n%-40s %8s  %-8s %6s %6s  %s\n", "HOST", "REVISION", "STATE",
           "KEYS", "AGE", "ERROR");
    for (size_t i = 0; i < nh; i++) {
      const policydoc_status_t *s = &hosts[i].s;
      char a[32];
      age(now - s->since, a, sizeof a);
      printf("%-40s %8" PRId64 "  %-8s %6" PRIu64 " %6s  %s%s\n", s->host,
             s->revision, policydoc_state_name(s->state), s->keys, a,
             hosts[i].silent ? "(silent: has not read the last write) " : "",
             s->error ? s->error : "");
    }
    printf("\n%zu host%s", nh, nh == 1 ? "" : "s");
    for (size_t k = 0; k < nrev; k++)
      printf("%s%zu on revision %" PRId64, k ? ", " : ": ", counts[k], revs[k]);
    printf("; %zu refused, %zu waiting, %zu silent\n", refused, waiting,
           silent);
  }
  for (size_t i = 0; i < nh; i++)
    policydoc_status_free(&hosts[i].s);
  free(hosts);
  free(dir);
  policydoc_free(&d);
  return 0;
}

/* ---- the command ---- */

int policy_cmd_main(int argc, char **argv) {
  config_t cfg;
  char err[600];
  int rc = config_parse_policy(&cfg, argc, argv, err, sizeof err);
  if (rc != 0) {
    if (rc < 0) fprintf(stderr, "register policy: %s\n", err);
    config_free(&cfg);
    return rc < 0 ? 2 : 0;
  }
  log_setup(cfg.log_level, cfg.log_format);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "register policy: cannot initialise libcurl\n");
    config_free(&cfg);
    return 1;
  }
  client_t c;
  rc = 1;
  if (client_open(&c, &cfg) == 0) {
    const char *a = cfg.policy_action;
    if (strcmp(a, "push") == 0)
      rc = push(&cfg, &c);
    else if (strcmp(a, "status") == 0)
      rc = status(&cfg, &c);
    else
      rc = move(&cfg, &c, strcmp(a, "promote") == 0);
    client_close(&c);
  }
  curl_global_cleanup();
  config_free(&cfg);
  return rc;
}

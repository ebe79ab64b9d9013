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
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* ---- one etcd request at a time, on a loop of our own ---- */

typedef struct {
  char *key, *value;
  size_t vlen;
  int64_t mod_revision;
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
  size_t ndirs; /* v2: empty directories the listing found */
  etcd_api_t api;
} client_t;

static void kvs_clear(client_t *c) {
  for (size_t i = 0; i < c->n; i++) {
    free(c->kvs[i].key);
    free(c->kvs[i].value);
  }
  free(c->kvs);
  c->kvs = NULL;
  c->n = 0;
  c->ndirs = 0;
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
  (void)dirs;
  note(c, res);
  if (res->status != ETCD_OK) return;
  c->ndirs = ndirs;
  c->kvs = xcalloc(n ? n : 1, sizeof *c->kvs);
  for (size_t i = 0; i < n; i++) {
    c->kvs[i].key = xstrdup(kvs[i].key);
    c->kvs[i].value = xstrndup(kvs[i].value, kvs[i].value_len);
    c->kvs[i].vlen = kvs[i].value_len;
    c->kvs[i].mod_revision = kvs[i].mod_revision;
  }
  c->n = n;
}

static int client_open(client_t *c, const config_t *cfg) {
  memset(c, 0, sizeof *c);
  c->api = cfg->etcd_api;
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
                                   int64_t prev_rev) {
  c->starting = 1;
  etcd_op_t *op = etcd_put_if(c->etcd, key, value, vlen, prev_rev, on_done, c);
  c->starting = 0;
  REGISTER_ASSERT(op); /* never NULL: a failure comes from the loop */
  client_wait(c);
  return c->status;
}

/* the largest --sign key file read (a PEM key is a few hundred bytes) */
#define KEYFILE_MAX (64u * 1024)
/* the largest --policy-pubkey file status reads (several keys) */
#define PUBKEYS_MAX (64u * 1024)

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

/* etcd's error: its text may already say "etcd: " */
static int fail_etcd(const client_t *c) {
  const char *e = c->error;
  if (strncmp(e, "etcd: ", 6) == 0) e += 6;
  return fail("etcd: %s", e);
}

/* Text from etcd or a policy, safe to print on one line of a terminal:
 * control characters escaped, at most max bytes (malloc'd). */
static char *clean(const char *s, size_t n, size_t max) {
  buf_t b;
  buf_init(&b);
  util_clean_text(&b, s, n, max, 0);
  return buf_detach(&b);
}

/* The first line of s (cleaned, at most max bytes), with " …" when more
 * follows: a traceback or a check's many lines said in one (malloc'd). */
static char *first_line(const char *s, size_t n, size_t max) {
  while (n && (*s == '\n' || *s == ' ')) /* a leading blank line */
    s++, n--;
  const char *nl = memchr(s, '\n', n);
  size_t k = nl ? (size_t)(nl - s) : n;
  int more = 0;
  for (size_t i = k; i < n && !more; i++)
    more = s[i] != '\n' && s[i] != ' ' && s[i] != '\t';
  buf_t b;
  buf_init(&b);
  util_clean_text(&b, s, k, max, 0);
  if (more) buf_puts(&b, " \xe2\x80\xa6");
  return buf_detach(&b);
}

enum { DOC_FAILED = -1, DOC_ABSENT = 0, DOC_READ = 1, DOC_UNREADABLE = 2 };

/* The document at KEY as read (the compare-and-swap compares its
 * mod_revision) */
typedef struct {
  policydoc_t d; /* DOC_READ */
  char *text;    /* as etcd gave it, or NULL (absent) */
  size_t len;    /* of text */
  int64_t mod;   /* its mod_revision (v2: modifiedIndex); 0: absent */
  char why[300]; /* DOC_UNREADABLE: what is wrong with it (cleaned) */
} doc_t;

static void doc_free(doc_t *o) {
  policydoc_free(&o->d);
  free(o->text);
  o->text = NULL;
}

/* v2: KEY is a directory (etcd_get finds no value there, and a write
 * "where nothing is" conflicts forever) */
static int is_v2_dir(client_t *c, const char *key) {
  if (c->api != ETCD_API_V2 || client_list(c, key) != ETCD_OK) return 0;
  return c->ndirs > 0 || (c->n > 0 && strcmp(c->kvs[0].key, key) != 0);
}

/* The document at KEY: DOC_READ, DOC_ABSENT, DOC_UNREADABLE (there, but
 * does not parse: o->why says why, o->text holds it), or DOC_FAILED
 * (said). */
static int read_doc(client_t *c, const char *key, doc_t *o) {
  memset(o, 0, sizeof *o);
  if (client_get(c, key) != ETCD_OK) {
    fail_etcd(c);
    return DOC_FAILED;
  }
  if (c->n == 0) {
    if (is_v2_dir(c, key)) {
      fail("%s is a directory in etcd (v2), not a key: the policy needs a "
           "key of its own (remove the directory, or choose another --key)",
           key);
      return DOC_FAILED;
    }
    return DOC_ABSENT;
  }
  o->text = xstrndup(c->kvs[0].value, c->kvs[0].vlen);
  o->len = c->kvs[0].vlen;
  o->mod = c->kvs[0].mod_revision;
  char err[300];
  if (policydoc_parse(o->text, o->len, &o->d, err, sizeof err) < 0) {
    policydoc_free(&o->d);
    char *why = clean(err, strlen(err), 200);
    snprintf(o->why, sizeof o->why, "%s", why);
    free(why);
    return DOC_UNREADABLE;
  }
  return DOC_READ;
}

/* What to do about a document that does not parse: said, 1. */
static int fail_unreadable(const char *key, const doc_t *o) {
  return fail("%s is unreadable (%s): register policy push FILE --key %s "
              "--force replaces it (status still shows the hosts)",
              key, o->why, key);
}

/* 128 random bits in hex: the document's write_id, that tells this
 * command's write from another's that would otherwise be the same byte for
 * byte (the same file pushed by the same user in the same second). */
static void draw_write_id(char out[33]) {
  unsigned char r[16];
  size_t got = 0;
  while (got < sizeof r) {
    ssize_t k = getrandom(r + got, sizeof r - got, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += (size_t)k;
  }
  if (got < sizeof r) { /* no getrandom(): still unique to this process */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t a = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t b = (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)out;
    memcpy(r, &a, 8);
    memcpy(r + 8, &b, 8);
  }
  for (size_t i = 0; i < sizeof r; i++)
    snprintf(out + 2 * i, 3, "%02x", r[i]);
}

/* KEY holds exactly text (len bytes).  A compare-and-swap that conflicts
 * may conflict with itself: etcd applied the write but its answer was lost
 * (a timeout, a member gone), and the request was sent again to the next
 * endpoint, which found the key already changed -- by this very write.
 * The text carries this write's random write_id: equal byte for byte is
 * this write, never another command's. */
static int holds(client_t *c, const char *key, const char *text, size_t len) {
  return client_get(c, key) == ETCD_OK && c->n == 1 && c->kvs[0].vlen == len &&
         memcmp(c->kvs[0].value, text, len) == 0;
}

/* Writes d (generation + 1) over what was read (its mod_revision, or 0
 * when the key was absent): 0, or 1 (said).  added: the revision a push
 * adds (named when the document would be too large), or NULL. */
static int write_doc(client_t *c, const char *key, policydoc_t *d,
                     int64_t prev_rev, const policydoc_rev_t *added) {
  if (d->generation >= POLICYDOC_MAX_NUMBER)
    return fail("%s: generation %" PRId64 " is the largest a document may "
                "hold: nothing written (edit it lower by hand)",
                key, d->generation);
  d->generation++;
  /* revision numbers go on from the highest ever written, whatever a
   * rollback dropped */
  d->last_revision = policydoc_top(d);
  draw_write_id(d->write_id);
  size_t len;
  char *text = policydoc_write(d, &len);
  if (len > POLICYDOC_MAX_DOC) { /* JSON escaping, and up to 3 revisions */
    free(text);
    if (!added)
      return fail("%s: the document would be %zu bytes (at most %u): nothing "
                  "written",
                  key, len, POLICYDOC_MAX_DOC);
    buf_t esc;
    buf_init(&esc);
    json_escape(&esc, added->source, added->source_len);
    size_t elen = esc.len;
    buf_free(&esc);
    return fail("%s: the document would be %zu bytes with the revisions it "
                "keeps (at most %u): the new source is %zu bytes, %zu "
                "escaped in JSON; shorten it (nothing pushed)",
                key, len, POLICYDOC_MAX_DOC, added->source_len, elen);
  }
  /* what the hosts will parse: never write what they would refuse */
  policydoc_t check;
  char err[300];
  int ok = policydoc_parse(text, len, &check, err, sizeof err) == 0;
  policydoc_free(&check);
  if (!ok) {
    free(text);
    return fail("the new document is invalid (a bug): %s", err);
  }
  etcd_status_t st = client_put_if(c, key, text, len, prev_rev);
  if (st == ETCD_CONFLICT && holds(c, key, text, len))
    st = ETCD_OK; /* our own write: it landed, its answer was lost */
  free(text);
  if (st == ETCD_CONFLICT)
    return fail("%s changed meanwhile (another operator?): read it again and "
                "retry",
                key);
  if (st != ETCD_OK) return fail_etcd(c);
  return 0;
}

/* ---- the hosts' reports ---- */

typedef struct {
  policydoc_status_t s;
  int silent;
} host_t;

typedef struct {
  host_t *hosts; /* the reports for KEY, by host */
  size_t n;
  size_t unreadable;
  /* the highest numbers any readable report names, whatever its KEY, and
   * the etcd key of a report that names each (malloc'd, or NULL) */
  int64_t max_generation, max_revision;
  char *max_generation_at, *max_revision_at;
} reports_t;

static void reports_free(reports_t *r) {
  for (size_t i = 0; i < r->n; i++)
    policydoc_status_free(&r->hosts[i].s);
  free(r->hosts);
  free(r->max_generation_at);
  free(r->max_revision_at);
  memset(r, 0, sizeof *r);
}

static int by_host(const void *a, const void *b) {
  return strcmp(((const host_t *)a)->s.host, ((const host_t *)b)->s.host);
}

/* The reports under KEY's status directory, each host named by its key
 * (the daemon writes its own there; a value naming another host speaks
 * for no one else).  say: the reports that cannot be read are said on
 * stderr.  0, or 1 (said). */
static int read_reports(client_t *c, const char *key, int say, reports_t *r) {
  memset(r, 0, sizeof *r);
  char *dir = policydoc_status_dir(key);
  size_t dlen = strlen(dir);
  if (client_list(c, dir) != ETCD_OK) {
    free(dir);
    return fail_etcd(c);
  }
  r->hosts = xcalloc(c->n ? c->n : 1, sizeof *r->hosts);
  for (size_t i = 0; i < c->n; i++) {
    const char *k = c->kvs[i].key;
    char err[300];
    host_t *h = &r->hosts[r->n];
    const char *name =
        strncmp(k, dir, dlen) == 0 && k[dlen] == '/' ? k + dlen + 1 : "";
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen >= sizeof h->s.host || strchr(name, '/'))
      snprintf(err, sizeof err,
               "not a host's report (its key names no "
               "address)");
    else if (policydoc_status_parse(c->kvs[i].value, c->kvs[i].vlen, &h->s, err,
                                    sizeof err) == 0) {
      if (h->s.generation > r->max_generation) {
        r->max_generation = h->s.generation;
        free(r->max_generation_at);
        r->max_generation_at = xstrdup(k);
      }
      int64_t rev = h->s.revision > h->s.offered ? h->s.revision : h->s.offered;
      if (rev > r->max_revision) {
        r->max_revision = rev;
        free(r->max_revision_at);
        r->max_revision_at = xstrdup(k);
      }
      if (strcmp(h->s.key, key) != 0) { /* a host following another KEY */
        policydoc_status_free(&h->s);
        continue;
      }
      if (strcmp(h->s.host, name) != 0 && say) {
        char *claimed = clean(h->s.host, strlen(h->s.host), 64);
        char *kc = clean(k, strlen(k), 300);
        fprintf(stderr,
                "register policy: %s: the report names host %s: shown as "
                "its key's\n",
                kc, claimed);
        free(claimed);
        free(kc);
      }
      memcpy(h->s.host, name, nlen + 1);
      r->n++;
      continue;
    }
    if (say) {
      char *kc = clean(k, strlen(k), 300), *ec = clean(err, strlen(err), 300);
      fprintf(stderr, "register policy: %s: %s (ignored)\n", kc, ec);
      free(kc);
      free(ec);
    }
    policydoc_status_free(&h->s);
    r->unreadable++;
  }
  qsort(r->hosts, r->n, sizeof *r->hosts, by_host);
  free(dir);
  return 0;
}

/* "a, b, c and 4 more" (malloc'd) */
static char *host_list(const char *const *names, size_t n) {
  buf_t b;
  buf_init(&b);
  for (size_t i = 0; i < n && i < 8; i++) {
    if (i) buf_puts(&b, ", ");
    util_clean_text(&b, names[i], strlen(names[i]), 64, 0);
  }
  if (n > 8) buf_printf(&b, " and %zu more", n - 8);
  return buf_detach(&b);
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

/* The prefix w (FILE) gives, as each host checks it before it tries a
 * revision (app.c's vet_policy()): clear of the keys register keeps for
 * itself (KEY, the reports under its status directory, the write fences,
 * and the defaults of those),
 * and each host's own, not one that every host gets alike (each would
 * delete the others' keys).  Said here, before anything is written, rather
 * than by every host refusing it: 0, or -1 (said). */
static int check_prefix(const config_t *cfg, const char *file, const char *key,
                        worker_t *w, const worker_opts_t *po) {
  const char *pre = worker_prefix(w);
  if (!pre) return 0;
  char *fences = cfg->etcd_fence && strcmp(cfg->etcd_fence, "off") != 0
                     ? xstrdup(cfg->etcd_fence)
                     : NULL;
  /* and the defaults of those, which hosts always keep clear (app.c's
   * reserve_keys()) */
  char *own[] = {xstrdup(key),
                 policydoc_status_dir(key),
                 fences,
                 xstrdup("/register/fence"),
                 xstrdup("/register/policy"),
                 xstrdup("/register/status")};
  static const char *const what[] = {"the policy key",   "the hosts' reports",
                                     "the write fences", "the write fences",
                                     "the policy key",   "the hosts' reports"};
  int rc = 0;
  for (size_t i = 0; i < ARRAY_SIZE(own) && rc == 0; i++) {
    if (!own[i] ||
        !(util_key_holds(pre, own[i]) || util_key_holds(own[i], pre)))
      continue;
    fail("%s: its prefix %s %s %s (%s), register's own keys: hosts would "
         "refuse it; nothing pushed",
         file, pre, util_key_holds(pre, own[i]) ? "holds" : "is inside",
         what[i], own[i]);
    rc = -1;
  }
  for (size_t i = 0; i < ARRAY_SIZE(own); i++)
    free(own[i]);
  if (rc < 0) return rc;
  char *other = worker_prefix_elsewhere(po);
  if (other && (util_key_holds(pre, other) || util_key_holds(other, pre))) {
    fail("%s: its prefix %s is not each host's own: it gives %s for another "
         "host, so each host would delete the others' keys (hosts refuse "
         "it); nothing pushed",
         file, pre, other);
    rc = -1;
  }
  free(other);
  return rc;
}

/* FILE loads in a policy worker, gives a prefix each host can own, and
 * runs cleanly on every inspect file: 0, or -1 (said, on one line). */
static int check_source(const config_t *cfg, const char *file, const char *key,
                        const char *src, size_t len) {
  /* a missing inspect file is the operator's typo, not the policy's fault
   * (and a FIFO, a device or a directory is not one to read) */
  for (size_t i = 1; i < cfg->n_policy_args; i++) {
    const char *f = cfg->policy_args[i];
    char why[600];
    int fd = strcmp(f, "-") == 0
                 ? 0
                 : util_open_regular(f, CHECK_MAX_INSPECT, why, sizeof why);
    if (fd < 0) {
      fail("%s (an inspect document to check %s on): nothing pushed", why,
           file);
      return -1;
    }
    if (fd > 0) close(fd);
  }
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
    char *why = first_line(err, strlen(err), 400);
    fail("%s does not load: %s", file, why);
    free(why);
    return -1;
  }
  int rc = check_prefix(cfg, file, key, w, &po);
  if (rc == 0 && cfg->n_policy_args > 1) {
    /* the check says each problem on stderr, a traceback on many lines:
     * kept aside, so that the verdict is one line with the first */
    fflush(stderr);
    FILE *said = tmpfile();
    int saved = said ? dup(STDERR_FILENO) : -1;
    if (saved >= 0) dup2(fileno(said), STDERR_FILENO);
    rc = check_inspect_files(w, cfg->policy_args + 1,
                             (int)cfg->n_policy_args - 1, NULL);
    buf_t b;
    buf_init(&b);
    if (saved >= 0) {
      fflush(stderr);
      dup2(saved, STDERR_FILENO);
      close(saved);
      rewind(said);
      util_read_fp(said, 64 * 1024, &b);
    }
    if (said) fclose(said);
    if (rc < 0) {
      const char *t = b.data ? b.data : "";
      if (strncmp(t, "register: ", 10) == 0) t += 10;
      char *first =
          first_line(t, b.len - (size_t)(t - (b.data ? b.data : "")), 400);
      fail("%s fails its check on the inspect documents given%s%s (register "
           "check %s ... shows all): nothing pushed",
           file, *first ? ": " : "", first, file);
      free(first);
    } else if (b.len) {
      fwrite(b.data, 1, b.len, stderr); /* warnings: said as they were */
    }
    buf_free(&b);
  }
  worker_free(w);
  return rc < 0 ? -1 : 0;
}

/* An unreadable document replaced (push --force), or an absent one
 * (o->text NULL: a key deleted and pushed again): d numbered above what
 * it still shows and what any host reports, so that revisions and
 * generations keep growing for the hosts.  0, or 1 (said). */
static int renumber(client_t *c, const char *key, const doc_t *o,
                    policydoc_t *d) {
  reports_t r;
  if (read_reports(c, key, 0, &r) != 0) return 1;
  int64_t gen = r.max_generation, top = r.max_revision;
  if (o->text) policydoc_salvage(o->text, o->len, &gen, &top);
  /* the next write takes gen + 1 and top + 1: name what holds the number
   * that leaves no room (a report, else the document itself) */
  int bad_gen = gen >= POLICYDOC_MAX_NUMBER;
  if (bad_gen || top >= POLICYDOC_MAX_NUMBER) {
    const char *what = bad_gen ? "generation" : "revision";
    int64_t n = bad_gen ? gen : top;
    const char *at = bad_gen ? r.max_generation_at : r.max_revision_at;
    int in_report = bad_gen ? r.max_generation == gen : r.max_revision == top;
    char *atc = in_report && at ? clean(at, strlen(at), 300) : NULL;
    if (atc)
      fail("%s: the host's report at %s names %s %" PRId64
           ", as high as a document may hold (%" PRId64
           "): nothing written (correct or delete that report)",
           key, atc, what, n, POLICYDOC_MAX_NUMBER);
    else
      fail("%s: the document there shows %s %" PRId64
           ", as high as a document may hold (%" PRId64 "): nothing written",
           key, what, n, POLICYDOC_MAX_NUMBER);
    free(atc);
    reports_free(&r);
    return 1;
  }
  reports_free(&r);
  policydoc_free(d);
  d->generation = gen;
  d->last_revision = top;
  return 0;
}

static int push(const config_t *cfg, client_t *c, int force) {
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
  if (util_read_regular(file, POLICYDOC_MAX_SOURCE, &src, err, sizeof err) <
      0) {
    int e = errno;
    buf_free(&src);
    policydoc_free(&scratch);
    if (e == EISDIR)
      return fail("%s is a directory: push takes a policy file", file);
    if (e == EFBIG)
      return fail("%s is too large: a policy in etcd may be at most %u bytes",
                  file, POLICYDOC_MAX_SOURCE);
    return fail("%s", err);
  }
  /* etcd's JSON APIs carry text: v2 gives a stray byte back as U+FFFD, and
   * every host would then refuse a source that no longer matches its
   * sha256 */
  size_t at = util_utf8_bad_at(src.data, src.len);
  if (at < src.len) {
    size_t line = 1;
    for (size_t i = 0; i < at; i++)
      line += src.data[i] == '\n';
    int rc = fail("%s is not UTF-8: byte %zu (line %zu) is 0x%02x; etcd "
                  "cannot carry it (save the file as UTF-8): nothing pushed",
                  file, at, line, (unsigned char)src.data[at]);
    buf_free(&src);
    policydoc_free(&scratch);
    return rc;
  }
  char *sig = NULL;
  int bad = 0;
  if (cfg->policy_sign) { /* a key file: small, and a file (never blocks) */
    int fd = util_open_regular(cfg->policy_sign, KEYFILE_MAX, err, sizeof err);
    if (fd < 0) {
      fail("--sign: %s", err);
      bad = 1;
    } else {
      close(fd);
    }
  }
  bad = bad || check_source(cfg, file, key, src.data, src.len) < 0;
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
  doc_t o;
  policydoc_t *d = &o.d;
  int rc = 1;
  char replaced[200] = "";
  int found = read_doc(c, key, &o);
  if (found == DOC_FAILED) goto out;
  /* revision numbers only grow, for the hosts too: a key deleted and
   * pushed again goes on above what they report */
  if (found == DOC_ABSENT && !cfg->policy_canary && renumber(c, key, &o, d))
    goto out;
  if (found == DOC_UNREADABLE) {
    if (!force) {
      fail_unreadable(key, &o);
      goto out;
    }
    if (renumber(c, key, &o, d) != 0) goto out;
    if (d->generation || d->last_revision)
      snprintf(replaced, sizeof replaced,
               "; replaced the unreadable document: numbered above generation "
               "%" PRId64 " and revision %" PRId64,
               d->generation, d->last_revision);
    else
      snprintf(replaced, sizeof replaced,
               "; replaced the unreadable document: no number left to go "
               "above");
  }
  if (!d->stable && cfg->policy_canary) {
    fail("%s holds no %s: the first push goes to every host (without "
         "--canary)",
         key, found == DOC_UNREADABLE ? "readable policy" : "policy yet");
    goto out;
  }
  if (policydoc_top(d) >= POLICYDOC_MAX_NUMBER) {
    fail("%s: revision %" PRId64 " is the largest a document may hold: "
         "nothing pushed (edit last_revision lower by hand)",
         key, policydoc_top(d));
    goto out;
  }
  char *by = pushed_by();
  policydoc_rev_t *r = policydoc_rev_new(
      policydoc_top(d) + 1, src.data, src.len, sig, util_path_base(file), by);
  free(by);
  char what[1400];
  if (cfg->policy_canary) {
    policydoc_rev_free(d->canary);
    d->canary = r;
    policydoc_set_canary(d, cfg->policy_canary, err, sizeof err);
    char sel[1000];
    selection(d, sel, sizeof sel);
    snprintf(what, sizeof what,
             "pushed revision %" PRId64 " to %s (canary; stable stays %" PRId64
             ")%s",
             r->revision, sel, d->stable->revision, sig ? ", signed" : "");
  } else {
    int64_t old = d->stable ? d->stable->revision : 0;
    if (d->stable) {
      policydoc_rev_free(d->previous);
      d->previous = d->stable;
    }
    d->stable = r;
    int had_canary = d->canary != NULL;
    policydoc_drop_canary(d);
    char prevs[80] = "";
    if (old) snprintf(prevs, sizeof prevs, "; previous %" PRId64, old);
    snprintf(what, sizeof what,
             "pushed revision %" PRId64 " to every host (stable%s%s%s)%s",
             r->revision, prevs, had_canary ? "; the canary dropped" : "",
             replaced, sig ? ", signed" : "");
  }
  if (write_doc(c, key, d, o.mod, r) == 0) {
    printf("%s\n", what);
    rc = 0;
  }
out:
  doc_free(&o);
  policydoc_free(&scratch);
  free(sig);
  buf_free(&src);
  return rc;
}

/* ---- promote, rollback ---- */

/* What the canary's hosts did with its revision: promote goes on when one
 * of them applied it and none refused it, or with --force (then *note
 * says what was overridden).  0, or 1 (said). */
static int canary_verdict(client_t *c, const char *key, const policydoc_t *d,
                          int force, char *note, size_t notelen) {
  reports_t r;
  if (read_reports(c, key, 0, &r) != 0) return 1;
  int64_t rev = d->canary->revision;
  const char **refused = xcalloc(r.n + 1, sizeof *refused);
  size_t nref = 0, napplied = 0;
  for (size_t i = 0; i < r.n; i++) {
    const policydoc_status_t *s = &r.hosts[i].s;
    if (!policydoc_in_canary(d, s->host)) continue;
    /* about this document's canary, not an older one with its number (a
     * key deleted and pushed again): applied names its sha256, refused
     * was offered it in this generation */
    if (s->state == POLICYDOC_REFUSED && s->offered == rev &&
        s->generation == d->generation)
      refused[nref++] = s->host;
    else if (s->state == POLICYDOC_APPLIED && s->revision == rev &&
             strcmp(s->sha256, d->canary->sha256) == 0)
      napplied++;
  }
  char sel[1000];
  selection(d, sel, sizeof sel);
  char *names = host_list(refused, nref);
  int rc = 0;
  if (nref && !force)
    rc = fail("revision %" PRId64 " was refused by canary host%s %s: not "
              "promoted (status says why; --force promotes it anyway)",
              rev, nref == 1 ? "" : "s", names);
  else if (!napplied && !force)
    rc = fail("no canary host reports revision %" PRId64 " applied (the "
              "canary: %s): not promoted (status shows the hosts; --force "
              "promotes it anyway)",
              rev, sel);
  else if (nref)
    snprintf(note, notelen, "; --force: refused by %s", names);
  else if (!napplied)
    snprintf(note, notelen, "; --force: no canary host reported it applied");
  free(names);
  free(refused);
  reports_free(&r);
  return rc;
}

static int move(const config_t *cfg, client_t *c, int promote, int force) {
  const char *key = cfg->policy_key;
  doc_t o;
  policydoc_t *d = &o.d;
  int found = read_doc(c, key, &o);
  int rc = 1;
  if (found == DOC_ABSENT)
    fail("no policy at %s (register policy push FILE --key %s)", key, key);
  else if (found == DOC_UNREADABLE)
    fail_unreadable(key, &o);
  if (found != DOC_READ) goto out;
  char what[1500];
  if (promote) {
    if (!d->canary) {
      fail("%s has no canary to promote (stable is revision %" PRId64 ")", key,
           d->stable->revision);
      goto out;
    }
    char note[1100] = "";
    if (canary_verdict(c, key, d, force, note, sizeof note) != 0) goto out;
    snprintf(what, sizeof what,
             "promoted revision %" PRId64 " to every host (stable; previous "
             "%" PRId64 "%s)",
             d->canary->revision, d->stable->revision, note);
    policydoc_rev_free(d->previous);
    d->previous = d->stable;
    d->stable = d->canary;
    d->canary = NULL;
  } else if (d->canary) {
    snprintf(what, sizeof what,
             "rolled back the canary (revision %" PRId64
             "): every host runs revision %" PRId64,
             d->canary->revision, d->stable->revision);
  } else if (d->previous) {
    snprintf(what, sizeof what,
             "rolled back to revision %" PRId64 " (revision %" PRId64
             " dropped)",
             d->previous->revision, d->stable->revision);
    policydoc_rev_free(d->stable);
    d->stable = d->previous;
    d->previous = NULL;
  } else {
    fail("nothing to roll back to: %s holds revision %" PRId64
         " alone (no canary, no previous revision)",
         key, d->stable->revision);
    goto out;
  }
  policydoc_drop_canary(d); /* its selection (promote: the canary moved) */
  if (write_doc(c, key, d, o.mod, NULL) == 0) {
    printf("%s\n", what);
    rc = 0;
  }
out:
  doc_free(&o);
  return rc;
}

/* ---- status ---- */

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

/* What status can say of a revision's signature */
typedef enum {
  SIG_NONE,       /* no signature */
  SIG_EMPTY,      /* a signature member, empty */
  SIG_UNVERIFIED, /* one, but status was given no public key */
  SIG_VERIFIES,   /* by a key of --policy-pubkey */
  SIG_BAD         /* does not verify with --policy-pubkey */
} sigstate_t;

static sigstate_t sig_state(const sig_keys_t *keys, const policydoc_rev_t *r,
                            char *why, size_t whylen) {
  why[0] = '\0';
  if (!r->signature) return SIG_NONE;
  if (!*r->signature) return SIG_EMPTY;
  if (!keys) return SIG_UNVERIFIED;
  char err[300];
  if (sig_verify(keys, r->source, r->source_len, r->signature, err,
                 sizeof err) == 0)
    return SIG_VERIFIES;
  char *e = clean(err, strlen(err), 200);
  snprintf(why, whylen, "%s", e);
  free(e);
  return SIG_BAD;
}

static void rev_json(buf_t *b, const policydoc_rev_t *r,
                     const sig_keys_t *keys) {
  if (!r) {
    buf_puts(b, "null");
    return;
  }
  static const char *const sname[] = {"none", "empty", "unverified", "verifies",
                                      "does not verify"};
  char why[300];
  sigstate_t st = sig_state(keys, r, why, sizeof why);
  /* "signed": a signature verified with --policy-pubkey, or (none given)
   * one attached, as before; "signature" says which */
  buf_printf(b,
             "{\"revision\":%" PRId64
             ",\"sha256\":\"%s\",\"signed\":%s,\"signature\":\"%s\"",
             r->revision, r->sha256,
             st == SIG_VERIFIES || st == SIG_UNVERIFIED ? "true" : "false",
             sname[st]);
  if (st == SIG_BAD) {
    buf_puts(b, ",\"signature_error\":");
    json_escape(b, why, strlen(why));
  }
  const char *names[] = {"name", "pushed", "pushed_by"};
  const char *vals[] = {r->name, r->pushed, r->pushed_by};
  for (size_t i = 0; i < 3; i++)
    if (vals[i]) {
      buf_printf(b, ",\"%s\":", names[i]);
      json_escape(b, vals[i], strlen(vals[i]));
    }
}

static void rev_line(const char *what, const policydoc_rev_t *r,
                     const sig_keys_t *keys) {
  char why[300];
  sigstate_t st = sig_state(keys, r, why, sizeof why);
  printf("  %-9s revision %" PRId64 "  sha256 %.12s  ", what, r->revision,
         r->sha256);
  switch (st) {
  case SIG_NONE:
    printf("unsigned");
    break;
  case SIG_EMPTY:
    printf("unsigned (an empty signature)");
    break;
  case SIG_UNVERIFIED:
    printf("signature attached (not verified here: --policy-pubkey FILE "
           "verifies it)");
    break;
  case SIG_VERIFIES:
    printf("signed, verifies");
    break;
  case SIG_BAD:
    printf("signature does NOT verify (%s)", why);
    break;
  }
  if (r->pushed) {
    /* hand-edited text reaches no terminal raw */
    char *when = clean(r->pushed, strlen(r->pushed), 64);
    char *by =
        r->pushed_by ? clean(r->pushed_by, strlen(r->pushed_by), 128) : NULL;
    printf("  pushed %s%s%s", when, by ? " by " : "", by ? by : "");
    free(when);
    free(by);
  }
  printf("\n");
}

typedef struct {
  int64_t revision;
  size_t count; /* hosts that run it */
} rev_count_t;

static int by_revision(const void *a, const void *b) {
  int64_t x = ((const rev_count_t *)a)->revision,
          y = ((const rev_count_t *)b)->revision;
  return (x > y) - (x < y);
}

static int status(const config_t *cfg, client_t *c) {
  const char *key = cfg->policy_key;
  sig_keys_t *keys = NULL;
  if (cfg->policy_pubkey) { /* a key file, never a FIFO that blocks */
    char err[600];
    int fd =
        util_open_regular(cfg->policy_pubkey, PUBKEYS_MAX, err, sizeof err);
    if (fd < 0) return fail("--policy-pubkey: %s", err);
    close(fd);
    if (!(keys = sig_keys_load(cfg->policy_pubkey, err, sizeof err)))
      return fail("--policy-pubkey: %s", err);
  }
  doc_t o;
  const policydoc_t *d = &o.d;
  int found = read_doc(c, key, &o);
  if (found == DOC_FAILED) {
    sig_keys_free(keys);
    doc_free(&o);
    return 1;
  }
  /* a document that does not parse, or none (deleted): the hosts still say
   * what they run */
  int readable = found == DOC_READ;
  reports_t rep;
  if (read_reports(c, key, 1, &rep) != 0) {
    sig_keys_free(keys);
    doc_free(&o);
    return 1;
  }
  host_t *hosts = rep.hosts;
  size_t nh = rep.n, unreadable = rep.unreadable;
  for (size_t i = 0; i < nh; i++)
    hosts[i].silent = readable && hosts[i].s.generation < d->generation;
  /* the summary: hosts per revision in force, in numeric order */
  rev_count_t *revs = xcalloc(nh ? nh : 1, sizeof *revs);
  size_t nrev = 0, refused = 0, waiting = 0, silent = 0;
  for (size_t i = 0; i < nh; i++) {
    const policydoc_status_t *s = &hosts[i].s;
    revs[i].revision = s->revision;
    refused += s->state == POLICYDOC_REFUSED;
    waiting += s->state == POLICYDOC_WAITING;
    silent += (size_t)hosts[i].silent;
  }
  qsort(revs, nh, sizeof *revs, by_revision);
  for (size_t i = 0; i < nh; i++) {
    if (nrev == 0 || revs[nrev - 1].revision != revs[i].revision)
      revs[nrev++].revision = revs[i].revision;
    revs[nrev - 1].count++;
  }
  int64_t now = (int64_t)time(NULL);
  char sel[1000] = "";
  if (d->canary) selection(d, sel, sizeof sel);
  if (cfg->policy_json) {
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"key\":");
    json_escape(&b, key, strlen(key));
    if (readable)
      buf_printf(&b, ",\"generation\":%" PRId64, d->generation);
    else
      buf_puts(&b, ",\"generation\":null");
    buf_printf(&b, ",\"document\":\"%s\",\"document_error\":",
               readable                  ? "read"
               : found == DOC_UNREADABLE ? "unreadable"
                                         : "absent");
    if (found == DOC_UNREADABLE)
      json_escape(&b, o.why, strlen(o.why));
    else
      buf_puts(&b, "null");
    buf_puts(&b, ",\"stable\":");
    rev_json(&b, d->stable, keys);
    if (d->stable) buf_putc(&b, '}');
    buf_puts(&b, ",\"canary\":");
    rev_json(&b, d->canary, keys);
    if (d->canary) {
      if (d->n_canary_hosts) {
        buf_puts(&b, ",\"hosts\":[");
        for (size_t i = 0; i < d->n_canary_hosts; i++) {
          if (i) buf_putc(&b, ',');
          json_escape(&b, d->canary_hosts[i], strlen(d->canary_hosts[i]));
        }
        buf_putc(&b, ']');
      } else {
        buf_printf(&b, ",\"percent\":%d", d->canary_percent);
      }
      buf_putc(&b, '}');
    }
    buf_puts(&b, ",\"previous\":");
    rev_json(&b, d->previous, keys);
    if (d->previous) buf_putc(&b, '}');
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
      /* since 0: the host never said when */
      if (s->since > 0)
        buf_printf(&b, ",\"age\":%" PRId64, now - s->since);
      else
        buf_puts(&b, ",\"age\":null");
      buf_printf(&b,
                 ",\"keys\":%" PRIu64 ",\"generation\":%" PRId64
                 ",\"silent\":%s,\"signed\":%s}",
                 s->keys, s->generation, hosts[i].silent ? "true" : "false",
                 s->is_signed ? "true" : "false");
    }
    buf_printf(&b, "],\"summary\":{\"hosts\":%zu,\"revisions\":{", nh);
    for (size_t k = 0; k < nrev; k++)
      buf_printf(&b, "%s\"%" PRId64 "\":%zu", k ? "," : "", revs[k].revision,
                 revs[k].count);
    buf_printf(&b,
               "},\"refused\":%zu,\"waiting\":%zu,\"silent\":%zu,"
               "\"unreadable\":%zu}}\n",
               refused, waiting, silent, unreadable);
    fwrite(b.data, 1, b.len, stdout);
    buf_free(&b);
  } else {
    if (readable) {
      printf("policy %s, generation %" PRId64 "\n", key, d->generation);
      rev_line("stable", d->stable, keys);
      if (d->canary) {
        rev_line("canary", d->canary, keys);
        printf("            to %s\n", sel);
      }
      if (d->previous) rev_line("previous", d->previous, keys);
    } else if (found == DOC_UNREADABLE) {
      printf("policy %s: the document is unreadable (%s)\n", key, o.why);
    } else {
      printf("policy %s: no document there (deleted, or never pushed)\n", key);
    }
    printf("\n%-40s %8s  %-8s %6s %6s  %s\n", "HOST", "REVISION", "STATE",
           "KEYS", "AGE", "ERROR");
    for (size_t i = 0; i < nh; i++) {
      const policydoc_status_t *s = &hosts[i].s;
      char a[32] = "-";
      if (s->since > 0) age(now - s->since, a, sizeof a);
      char *host = clean(s->host, strlen(s->host), 64);
      char *error = s->error ? clean(s->error, strlen(s->error), 500) : NULL;
      printf("%-40s %8" PRId64 "  %-8s %6" PRIu64 " %6s  %s%s\n", host,
             s->revision, policydoc_state_name(s->state), s->keys, a,
             hosts[i].silent ? "(silent: has not read the last write) " : "",
             error ? error : "");
      free(host);
      free(error);
    }
    printf("\n%zu host%s", nh, nh == 1 ? "" : "s");
    for (size_t k = 0; k < nrev; k++)
      printf("%s%zu on revision %" PRId64, k ? ", " : ": ", revs[k].count,
             revs[k].revision);
    printf("; %zu refused, %zu waiting, %zu silent, %zu unreadable\n", refused,
           waiting, silent, unreadable);
  }
  fflush(stdout);
  int rc = 0;
  if (found == DOC_UNREADABLE) rc = fail_unreadable(key, &o);
  if (found == DOC_ABSENT)
    rc = fail("no policy at %s (register policy push FILE --key %s)", key, key);
  free(revs);
  sig_keys_free(keys);
  reports_free(&rep);
  doc_free(&o);
  return rc;
}

/* ---- the command ---- */

/* --force is this command's own, taken out before config.c reads the
 * options every command shares: 1 when given (argv without it in *out,
 * malloc'd). */
static int take_force(int argc, char **argv, char ***out, int *outc) {
  char **v = xcalloc((size_t)argc + 1, sizeof *v);
  int n = 0, force = 0;
  for (int i = 0; i < argc; i++) {
    if (i > 0 && strcmp(argv[i], "--") == 0) {
      while (i < argc)
        v[n++] = argv[i++];
      break;
    }
    if (i > 0 && strcmp(argv[i], "--force") == 0)
      force = 1;
    else
      v[n++] = argv[i];
  }
  *out = v;
  *outc = n;
  return force;
}

int policy_cmd_main(int argc, char **argv) {
  config_t cfg;
  char err[600];
  char **args;
  int nargs;
  int force = take_force(argc, argv, &args, &nargs);
  int rc = config_parse_policy(&cfg, nargs, args, err, sizeof err);
  if (rc != 0) {
    /* config.c's own messages may already name the command */
    if (rc < 0)
      fprintf(stderr, "%s%s\n",
              strncmp(err, "register policy", 15) == 0 ? ""
                                                       : "register policy: ",
              err);
    for (int i = 1; rc > 0 && i < nargs; i++)
      if (strcmp(args[i], "--help") == 0 || strcmp(args[i], "-h") == 0) {
        printf("  --force                 push: replace a document that does "
               "not parse;\n"
               "                          promote: although a canary host "
               "refused the revision\n"
               "                          or none applied it\n");
        break;
      }
    config_free(&cfg);
    free(args);
    return rc < 0 ? 2 : 0;
  }
  free(args);
  const char *a = cfg.policy_action;
  if (force && strcmp(a, "push") != 0 && strcmp(a, "promote") != 0) {
    fprintf(stderr, "register policy %s takes no --force\n", a);
    config_free(&cfg);
    return 2;
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
    if (strcmp(a, "push") == 0)
      rc = push(&cfg, &c, force);
    else if (strcmp(a, "status") == 0)
      rc = status(&cfg, &c);
    else
      rc = move(&cfg, &c, strcmp(a, "promote") == 0, force);
    client_close(&c);
  }
  curl_global_cleanup();
  config_free(&cfg);
  return rc;
}

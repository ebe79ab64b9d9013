/* check: `register check`, a policy run over inspect documents (saved
 * ones, or the engine's own with --container), no loop. */
#include "check.h"
#include "config.h"
#include "docker.h"
#include "json.h"
#include "worker.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define DOCKER_API_MAX "1.52"       /* as the daemon: the newest API known */
#define DOCKER_MAX_BODY (32u << 20) /* as the daemon: an inspect reply */
#define ASSUME_MAX_ITEMS POLICY_MAX_CHECKS

static void usage(FILE *f) {
  fputs(
      "Usage: register check [OPTIONS] POLICY|default [INSPECT.json|- ...]\n"
      "\n"
      "Runs a policy (a Lua file, or the embedded default) over containers'\n"
      "inspect documents without Docker events or etcd: one JSON line per\n"
      "record on stdout ({\"container\",\"key\",\"value\"}), the changed "
      "hook's\n"
      "HTTP calls printed, and a summary line on stderr:\n"
      "  register check: 3 containers, 5 records, 1 failed, 2 rejected\n"
      "\n"
      "  INSPECT.json            saved `docker inspect` output (an array or "
      "one\n"
      "                          object); - for stdin\n"
      "  --container NAME|ID     inspect this container on the engine "
      "instead\n"
      "                          (repeatable; checked after the files)\n"
      "  --docker URL            the engine for --container: unix:///path or\n"
      "                          tcp://host:port (DOCKER_HOST; default\n"
      "                          unix:///var/run/docker.sock)\n"
      "  --host-ip IP            host.ip (HOST_IP; default 127.0.0.1)\n"
      "  --hostname NAME         host.hostname (default: gethostname(), as "
      "the\n"
      "                          daemon)\n"
      "  --policy-timeout MS     wall-clock limit of one policy call "
      "(default 1000)\n"
      "  --policy-env NAME,...   the variables the policy worker's "
      "environment\n"
      "                          keeps (default: none)\n"
      "  --assume-checks STATES  the states records() sees for the checks "
      "that\n"
      "                          checks() asks for (none is run):\n"
      "                          passing (the default), failing or pending: "
      "all;\n"
      "                          80/tcp=passing,443/tcp=failing: by port;\n"
      "                          1=passing,2=failing: by number, in checks() "
      "order.\n"
      "                          In a list, a check not named is pending, or "
      "the\n"
      "                          list's bare STATE: failing,80/tcp=passing\n"
      "  --help                  this text\n"
      "\n"
      "Options come before POLICY.  Exit status: 0; 1 when the policy does "
      "not\n"
      "load, a policy call fails, a record is rejected or an input cannot be\n"
      "read (a file, a container the engine does not have); 2 for a usage\n"
      "error.\n",
      f);
}

/* ---- --assume-checks ---- */

typedef struct {
  const char *port; /* "80/tcp", into the option's text; NULL: by number */
  size_t port_len;
  long index; /* 1-based, when port is NULL */
  const char *state;
  int used; /* named some container's check */
} assume_item_t;

typedef struct {
  const char *text; /* as given, NULL: the default */
  const char *rest; /* the state of every check not named */
  assume_item_t items[ASSUME_MAX_ITEMS];
  size_t n;
} assume_t;

static const char *state_named(const char *s, size_t n) {
  static const char *const states[] = {"passing", "failing", "pending"};
  for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
    if (strlen(states[i]) == n && memcmp(s, states[i], n) == 0)
      return states[i];
  return NULL;
}

static int all_digits(const char *s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return 0;
  return 1;
}

/* "80/tcp": a port number, '/', a lower-case protocol name */
static int port_like(const char *s, size_t n) {
  const char *slash = memchr(s, '/', n);
  if (!slash || !all_digits(s, (size_t)(slash - s)) || slash - s > 5 ||
      slash + 1 == s + n)
    return 0;
  for (const char *p = slash + 1; p < s + n; p++)
    if (*p < 'a' || *p > 'z') return 0;
  return 1;
}

static int parse_assume(const char *arg, assume_t *a, char *err,
                        size_t errlen) {
  a->text = arg;
  a->n = 0;
  a->rest = state_named(arg, strlen(arg));
  if (a->rest) return 0;
  if (!strchr(arg, '=') && !strchr(arg, ',')) {
    snprintf(err, errlen,
             "--assume-checks \"%s\" is not passing, failing or pending, "
             "nor a list like 80/tcp=passing,2=failing",
             arg);
    return -1;
  }
  a->rest = "pending";
  int rest_given = 0;
  for (const char *p = arg;; p++) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    int n = (int)(end - p);
    const char *eq = memchr(p, '=', (size_t)n);
    if (n == 0) {
      snprintf(err, errlen, "--assume-checks \"%s\": an empty item", arg);
      return -1;
    }
    if (!eq) { /* a bare state: the checks not named */
      const char *st = state_named(p, (size_t)n);
      if (!st) {
        snprintf(err, errlen,
                 "--assume-checks \"%s\": \"%.*s\" is not PORT=STATE, "
                 "N=STATE or a STATE (passing, failing, pending)",
                 arg, n, p);
        return -1;
      }
      if (rest_given) {
        snprintf(err, errlen,
                 "--assume-checks \"%s\": two states for the checks not "
                 "named (\"%s\", \"%s\")",
                 arg, a->rest, st);
        return -1;
      }
      a->rest = st;
      rest_given = 1;
    } else {
      int sn = (int)(eq - p);
      const char *st = state_named(eq + 1, (size_t)(end - eq - 1));
      if (!st) {
        snprintf(err, errlen,
                 "--assume-checks \"%s\": \"%.*s\" is not passing, failing "
                 "or pending",
                 arg, (int)(end - eq - 1), eq + 1);
        return -1;
      }
      assume_item_t it = {NULL, 0, 0, st, 0};
      char num[16];
      if (all_digits(p, (size_t)sn)) {
        snprintf(num, sizeof num, "%.*s", sn < 15 ? sn : 15, p);
        long v = 0;
        if (util_parse_long(num, 1, POLICY_MAX_CHECKS, &it.index) < 0) {
          /* "80=passing" most likely means the port */
          int port = util_parse_long(num, 1, 65535, &v) == 0;
          snprintf(err, errlen,
                   "--assume-checks \"%s\": check number %.*s is not from 1 "
                   "to %d%s%.*s%s",
                   arg, sn, p, POLICY_MAX_CHECKS,
                   port ? " (name a port with its protocol: " : "",
                   port ? sn : 0, p, port ? "/tcp)" : "");
          return -1;
        }
      } else if (port_like(p, (size_t)sn)) {
        it.port = p;
        it.port_len = (size_t)sn;
      } else {
        snprintf(err, errlen,
                 "--assume-checks \"%s\": \"%.*s\" is neither a check's port "
                 "(like 80/tcp) nor its number (1, 2, ...)",
                 arg, sn, p);
        return -1;
      }
      for (size_t i = 0; i < a->n; i++) {
        const assume_item_t *o = &a->items[i];
        if (it.port ? o->port && o->port_len == it.port_len &&
                          memcmp(o->port, it.port, it.port_len) == 0
                    : !o->port && o->index == it.index) {
          snprintf(err, errlen, "--assume-checks \"%s\": %.*s is named twice",
                   arg, sn, p);
          return -1;
        }
      }
      if (a->n == ASSUME_MAX_ITEMS) {
        snprintf(err, errlen, "--assume-checks \"%s\": more than %d items", arg,
                 ASSUME_MAX_ITEMS);
        return -1;
      }
      a->items[a->n++] = it;
    }
    if (!*end) break;
    p = end;
  }
  return 0;
}

/* The state assumed for check i (0-based) on port; the list's last item
 * that names it wins. */
static const char *assumed_state(assume_t *a, size_t i, const char *port) {
  const char *st = a->rest;
  size_t plen = port ? strlen(port) : 0;
  for (size_t j = 0; j < a->n; j++) {
    assume_item_t *it = &a->items[j];
    int match = it->port ? port && it->port_len == plen &&
                               memcmp(it->port, port, plen) == 0
                         : (size_t)it->index == i + 1;
    if (match) {
      st = it->state;
      it->used = 1;
    }
  }
  return st;
}

/* ---- inputs ---- */

static char *read_all(const char *path, size_t *len, char *err, size_t errlen) {
  buf_t b;
  buf_init(&b);
  if (strcmp(path, "-") == 0) {
    if (util_read_fp(stdin, CHECK_MAX_INSPECT, &b) < 0) {
      if (errno == EFBIG)
        snprintf(err, errlen, "-: stdin is too large: more than %u bytes",
                 CHECK_MAX_INSPECT);
      else
        snprintf(err, errlen, "-: stdin: read error");
      buf_free(&b);
      return NULL;
    }
  } else if (util_read_regular(path, CHECK_MAX_INSPECT, &b, err, errlen) < 0) {
    buf_free(&b);
    return NULL;
  }
  *len = b.len;
  return buf_detach(&b);
}

/* The engine --container reads from: one blocking curl easy handle. */
typedef struct {
  const char *url; /* as given, for messages */
  char *socket;    /* unix socket path, or NULL */
  char *base;      /* http://docker, or http(s)://host:port */
  char *cacert, *cert, *key;
  CURL *curl;
  int curl_global; /* curl_global_init() done */
  char api[32];    /* negotiated version, "" before */
  char errbuf[CURL_ERROR_SIZE];
} engine_t;

typedef struct {
  buf_t body;
  char api[32]; /* the Api-Version header */
  int too_big;
} reply_t;

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* unix:///path (or /path), tcp://host[:port], http://, https://; with
 * DOCKER_TLS_VERIFY, TLS with DOCKER_CERT_PATH's files, as the daemon. */
static int engine_parse(engine_t *e, const char *url, char *err,
                        size_t errlen) {
  e->url = url;
  const char *verify = env("DOCKER_TLS_VERIFY");
  int tls = verify && strcmp(verify, "0") != 0;
  if (config_docker_url("--docker", url, tls, &e->socket, &e->base, err,
                        errlen) < 0)
    return -1;
  if (strncmp(e->base, "https:", 6) == 0 && tls) {
    const char *dir = env("DOCKER_CERT_PATH");
    char *home = NULL;
    if (!dir) {
      const char *h = env("HOME");
      dir = home = xasprintf("%s/.docker", h ? h : "/root");
    }
    e->cacert = xasprintf("%s/ca.pem", dir);
    e->cert = xasprintf("%s/cert.pem", dir);
    e->key = xasprintf("%s/key.pem", dir);
    free(home);
  }
  return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *data) {
  reply_t *r = data;
  n *= size;
  if (r->body.len + n > DOCKER_MAX_BODY) {
    r->too_big = 1;
    return 0;
  }
  buf_append(&r->body, p, n);
  return n;
}

static size_t on_header(char *p, size_t size, size_t n, void *data) {
  reply_t *r = data;
  n *= size;
  static const char name[] = "Api-Version:";
  if (n > sizeof name - 1 && strncasecmp(p, name, sizeof name - 1) == 0) {
    const char *v = p + sizeof name - 1, *end = p + n;
    while (v < end && (*v == ' ' || *v == '\t'))
      v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
      end--;
    snprintf(r->api, sizeof r->api, "%.*s", (int)(end - v), v);
  }
  return n;
}

static int engine_open(engine_t *e, char *err, size_t errlen) {
  e->curl_global = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
  if (!e->curl_global || !(e->curl = curl_easy_init())) {
    snprintf(err, errlen, "cannot initialise libcurl");
    return -1;
  }
  CURL *c = e->curl;
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, e->errbuf);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "register/" REGISTER_VERSION);
  if (e->socket) curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, e->socket);
  if (e->cacert) curl_easy_setopt(c, CURLOPT_CAINFO, e->cacert);
  if (e->cert) curl_easy_setopt(c, CURLOPT_SSLCERT, e->cert);
  if (e->key) curl_easy_setopt(c, CURLOPT_SSLKEY, e->key);
  return 0;
}

static void engine_close(engine_t *e) {
  if (e->curl) curl_easy_cleanup(e->curl);
  if (e->curl_global) curl_global_cleanup();
  free(e->socket);
  free(e->base);
  free(e->cacert);
  free(e->cert);
  free(e->key);
}

/* GET base+path: the status (0 with err set when no answer came). */
static long engine_get(engine_t *e, const char *path, reply_t *r, char *err,
                       size_t errlen) {
  buf_reset(&r->body);
  r->api[0] = '\0';
  r->too_big = 0;
  e->errbuf[0] = '\0';
  char *u = xasprintf("%s%s", e->base, path);
  curl_easy_setopt(e->curl, CURLOPT_URL, u);
  curl_easy_setopt(e->curl, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e->curl, CURLOPT_HEADERDATA, r);
  CURLcode rc = curl_easy_perform(e->curl);
  free(u);
  if (rc != CURLE_OK) {
    snprintf(err, errlen, "%s",
             r->too_big     ? "its reply is larger than 32 MiB"
             : e->errbuf[0] ? e->errbuf
                            : curl_easy_strerror(rc));
    return 0;
  }
  long status = 0;
  curl_easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &status);
  return status;
}

/* "HTTP 500: <Docker's message>" */
static void describe(long status, const reply_t *r, char *out, size_t n) {
  json_doc_t *doc =
      json_parse(r->body.data ? r->body.data : "", r->body.len, NULL, 0);
  const char *m = doc ? json_get_str(json_root(doc), "message") : NULL;
  snprintf(out, n, "HTTP %ld%s%.200s", status, m ? ": " : "", m ? m : "");
  for (char *p = out; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  json_free(doc);
}

/* The API version to use, as the daemon finds it: /_ping's Api-Version,
 * else /version's ApiVersion; capped at the newest this code knows. */
static int engine_negotiate(engine_t *e, reply_t *r, char *err, size_t errlen) {
  char why[CURL_ERROR_SIZE + 100];
  long st = engine_get(e, "/_ping", r, why, sizeof why);
  if (st == 0 || st >= 500) {
    if (st) describe(st, r, why, sizeof why);
    snprintf(err, errlen, "cannot reach Docker at %s: %s", e->url, why);
    return -1;
  }
  const char *v = st == 200 && r->api[0] ? r->api : NULL;
  json_doc_t *doc = NULL;
  if (!v) { /* very old daemons */
    st = engine_get(e, "/version", r, why, sizeof why);
    if (st == 200) {
      doc = json_parse(r->body.data ? r->body.data : "", r->body.len, NULL, 0);
      v = doc ? json_get_str(json_root(doc), "ApiVersion") : NULL;
    }
    if (!v) {
      if (st) describe(st, r, why, sizeof why);
      snprintf(err, errlen, "cannot read the Docker API version at %s: %s",
               e->url, st == 200 ? "no ApiVersion" : why);
      json_free(doc);
      return -1;
    }
  }
  snprintf(e->api, sizeof e->api, "%s",
           docker_version_cmp(v, DOCKER_API_MAX) > 0 ? DOCKER_API_MAX : v);
  json_free(doc);
  return 0;
}

/* GET /vX/containers/NAME/json, parsed.  NULL with a reason in err. */
static json_doc_t *engine_inspect(engine_t *e, const char *name, reply_t *r,
                                  char *err, size_t errlen) {
  char why[CURL_ERROR_SIZE + 100];
  if (name[0] == '/') name++; /* as inspect's "Name" has it */
  char *q = curl_easy_escape(e->curl, name, 0);
  char *path = xasprintf("/v%s/containers/%s/json", e->api, q ? q : "");
  curl_free(q);
  long st = engine_get(e, path, r, why, sizeof why);
  free(path);
  if (st == 404) {
    snprintf(err, errlen, "no such container at %s", e->url);
    return NULL;
  }
  if (st != 200) {
    if (st) describe(st, r, why, sizeof why);
    snprintf(err, errlen, "Docker at %s: %s", e->url, why);
    return NULL;
  }
  json_doc_t *doc = json_parse(r->body.data ? r->body.data : "", r->body.len,
                               why, sizeof why);
  if (!doc || json_root(doc)->type != JSON_OBJECT) {
    snprintf(err, errlen, "Docker at %s: the inspect reply is %s", e->url,
             doc ? "not a JSON object" : why);
    json_free(doc);
    return NULL;
  }
  return doc;
}

/* ---- the policy over one document ---- */

typedef struct {
  unsigned long containers, records, failed, rejected, unread;
} tally_t;

/* The checks the policy asks for, in the assumed states (check cannot
 * reach containers), pointing into pc.  -1 when checks() fails. */
static int assumed_checks(worker_t *p, const char *label,
                          const json_value_t *doc, assume_t *assume,
                          policy_checks_t *pc, policy_check_state_t *states,
                          policy_check_view_t *view) {
  char err[600];
  *view = (policy_check_view_t){states, 0, 0}; /* not stopping */
  if (worker_checks(p, doc, pc, err, sizeof err) < 0) {
    fprintf(stderr, "register: %s: %s\n", label, err);
    return -1;
  }
  for (size_t i = 0; i < pc->n && i < POLICY_MAX_CHECKS; i++, view->n++) {
    states[i].port = pc->v[i].port;
    states[i].type = pc->v[i].type == CHECKS_HTTP ? "http" : "tcp";
    states[i].state = assumed_state(assume, i, pc->v[i].port);
    states[i].reason = "assumed (register check --assume-checks)";
    states[i].target = "";
  }
  return 0;
}

static int check_one(worker_t *p, const char *label, const json_value_t *doc,
                     assume_t *assume, tally_t *t, FILE *out) {
  records_t recs;
  char err[600];
  const char *id = json_get_str(doc, "Id");
  policy_check_state_t states[POLICY_MAX_CHECKS];
  policy_check_view_t view;
  policy_checks_t pc;
  unsigned long errors = worker_errors(p);
  t->containers++;
  if (assumed_checks(p, label, doc, assume, &pc, states, &view) < 0) {
    t->failed++;
    return -1;
  }
  int rc = worker_records_checked(p, doc, &view, &recs, err, sizeof err);
  policy_checks_free(&pc);
  if (rc < 0) {
    fprintf(stderr, "register: %s: %s\n", label, err);
    if (*worker_traceback(p)) fprintf(stderr, "%s\n", worker_traceback(p));
    t->failed++;
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
    if (out) fwrite(b.data, 1, b.len, out);
  }
  buf_free(&b);
  /* what a changed hook would do for these writes (HTTP is printed) */
  for (size_t i = 0; i < recs.n; i++)
    worker_hook_changed(p, "put", recs.v[i].key, recs.v[i].value,
                        recs.v[i].value_len);
  t->records += recs.n;
  t->rejected += recs.rejected;
  int failed = worker_errors(p) != errors; /* a hook failed */
  if (failed) t->failed++;
  int rejected = recs.rejected > 0;
  records_free(&recs);
  return rejected || failed ? -1 : 0;
}

/* Every document in a parsed input: an array of them, or one. */
static int check_doc(worker_t *p, const char *label, const json_doc_t *doc,
                     assume_t *assume, tally_t *t, FILE *out) {
  int rc = 0;
  const json_value_t *root = json_root(doc);
  if (root->type == JSON_ARRAY) {
    for (const json_value_t *c = root->u.child; c; c = c->next)
      if (check_one(p, label, c, assume, t, out) < 0) rc = -1;
  } else if (check_one(p, label, root, assume, t, out) < 0) {
    rc = -1;
  }
  return rc;
}

static const char *plural(unsigned long n, const char *one, const char *more) {
  return n == 1 ? one : more;
}

/* ---- the command ---- */

/* argv[*i] is the option `name`: 1 with its value (from "--name=VALUE" or
 * the next argument), -1 when the value is missing, 0 for another. */
static int opt(int argc, char **argv, int *i, const char *name,
               const char **v) {
  const char *s = argv[*i];
  size_t n = strlen(name);
  if (strncmp(s, name, n) != 0) return 0;
  if (s[n] == '=') {
    *v = s + n + 1;
    return 1;
  }
  if (s[n] != '\0') return 0;
  if (*i + 1 >= argc) return -1;
  *v = argv[++*i];
  return 1;
}

typedef struct {
  const char *host_ip, *hostname, *docker_url;
  int docker_given; /* --docker: checked even without --container */
  long timeout_ms;
  char *env; /* --policy-env, "A,B" (owned), or NULL */
  assume_t assume;
  const char **containers; /* argv's strings */
  size_t ncont;
  int first; /* argv index of POLICY */
} check_opts_t;

/* 0: run; 1: --help was printed (exit 0); -1: a usage error was printed
 * (exit 2). */
static int parse_args(int argc, char **argv, check_opts_t *o) {
  static const char *const names[] = {
      "--host-ip",   "--hostname", "--policy-timeout", "--assume-checks",
      "--container", "--docker",   "--policy-env"};
  char err[600];
  int i = 2;
  for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
    const char *a = argv[i], *v = NULL;
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 1;
    }
    int which = -1;
    for (int k = 0; which < 0 && k < (int)(sizeof names / sizeof names[0]);
         k++) {
      int m = opt(argc, argv, &i, names[k], &v);
      if (m < 0) {
        fprintf(stderr, "register check: option %s needs a value\n", names[k]);
        return -1;
      }
      if (m) which = k;
    }
    int bad = 0;
    switch (which) {
    case 0:
      o->host_ip = v;
      break;
    case 1:
      o->hostname = v;
      if (!*v) {
        snprintf(err, sizeof err, "--hostname is empty");
        bad = 1;
      }
      break;
    case 2:
      bad = config_policy_timeout("--policy-timeout", v, &o->timeout_ms, err,
                                  sizeof err) < 0;
      break;
    case 3:
      bad = parse_assume(v, &o->assume, err, sizeof err) < 0;
      break;
    case 4:
      if (!*v || strcmp(v, "/") == 0) {
        snprintf(err, sizeof err, "--container needs a container name or id");
        bad = 1;
      }
      o->containers[o->ncont++] = v;
      break;
    case 5:
      o->docker_url = v;
      o->docker_given = 1;
      break;
    case 6:
      bad = config_policy_env("--policy-env", v, &o->env, err, sizeof err) < 0;
      break;
    default:
      fprintf(stderr,
              "register check: unknown option \"%s\" (see register check "
              "--help)\n",
              a);
      return -1;
    }
    if (bad) {
      fprintf(stderr, "register check: %s\n", err);
      return -1;
    }
  }
  if (i >= argc) {
    fprintf(stderr, "register check: no POLICY given (a Lua file, or "
                    "\"default\"; see register check --help)\n");
    return -1;
  }
  if (!o->host_ip || !*o->host_ip) o->host_ip = "127.0.0.1";
  if (!config_valid_ip(o->host_ip)) {
    fprintf(stderr,
            "register check: host IP \"%s\" is not an IPv4 or IPv6 "
            "address\n",
            o->host_ip);
    return -1;
  }
  o->first = i;
  return 0;
}

/* The saved documents: files, or - for stdin.  0, or -1 when one failed. */
static int check_files(worker_t *p, char **files, int n, assume_t *assume,
                       tally_t *t, FILE *out) {
  char err[600];
  int rc = 0;
  for (int i = 0; i < n; i++) {
    size_t len;
    char *text = read_all(files[i], &len, err, sizeof err);
    json_doc_t *doc = NULL;
    if (!text) {
      fprintf(stderr, "register: %s\n", err);
    } else if (!(doc = json_parse(text, len, err, sizeof err))) {
      fprintf(stderr, "register: %s: %s\n", files[i], err);
    }
    free(text);
    if (!doc) {
      t->unread++;
      rc = -1;
      continue;
    }
    if (check_doc(p, files[i], doc, assume, t, out) < 0) rc = -1;
    json_free(doc);
  }
  return rc;
}

int check_inspect_files(worker_t *p, char **files, int n, FILE *out) {
  assume_t assume = {0};
  assume.rest = "passing";
  tally_t t = {0};
  unsigned long errors = worker_errors(p);
  int rc = check_files(p, files, n, &assume, &t, out);
  return rc < 0 || worker_errors(p) != errors ? -1 : 0;
}

/* --container: each inspected on the engine, in order.  0, or -1 when
 * one failed (an engine that does not answer is said once). */
static int check_containers(worker_t *p, engine_t *e, check_opts_t *o,
                            tally_t *t) {
  char err[600];
  int rc = 0;
  reply_t r;
  buf_init(&r.body);
  if (engine_open(e, err, sizeof err) < 0 ||
      engine_negotiate(e, &r, err, sizeof err) < 0) {
    fprintf(stderr, "register check: %s\n", err);
    t->unread += o->ncont;
    buf_free(&r.body);
    return -1;
  }
  for (size_t k = 0; k < o->ncont; k++) {
    const char *name = o->containers[k];
    json_doc_t *doc = engine_inspect(e, name, &r, err, sizeof err);
    if (!doc) {
      fprintf(stderr, "register check: --container \"%s\": %s\n", name, err);
      t->unread++;
      rc = -1;
      continue;
    }
    char label[300];
    snprintf(label, sizeof label, "--container %s", name);
    if (check_doc(p, label, doc, &o->assume, t, stdout) < 0) rc = -1;
    json_free(doc);
  }
  buf_free(&r.body);
  return rc;
}

/* Items of an --assume-checks list that named no check (likely typos),
 * then the summary line. */
static void summary(const assume_t *a, const tally_t *t) {
  for (size_t k = 0; k < a->n; k++) {
    const assume_item_t *it = &a->items[k];
    if (it->used) continue;
    if (it->port)
      fprintf(stderr,
              "register check: --assume-checks: no check is on port %.*s\n",
              (int)it->port_len, it->port);
    else
      fprintf(stderr,
              "register check: --assume-checks: no container has a check "
              "number %ld\n",
              it->index);
  }
  fflush(stdout);
  fprintf(stderr, "register check: %lu %s, %lu %s, %lu failed, %lu rejected",
          t->containers, plural(t->containers, "container", "containers"),
          t->records, plural(t->records, "record", "records"), t->failed,
          t->rejected);
  if (t->unread)
    fprintf(stderr, ", %lu %s not read", t->unread,
            plural(t->unread, "input", "inputs"));
  fputc('\n', stderr);
}

int check_main(int argc, char **argv) {
  REGISTER_ASSERT(argc >= 2 && strcmp(argv[1], "check") == 0); /* check.h */
  check_opts_t o = {0};
  o.docker_url = env("DOCKER_HOST");
  o.host_ip = getenv("HOST_IP");
  o.timeout_ms = POLICY_DEFAULT_TIME_LIMIT_MS;
  o.assume.rest = "passing";
  o.containers = xcalloc((size_t)argc, sizeof *o.containers);
  engine_t engine = {0};
  char err[600];
  int rc = parse_args(argc, argv, &o);
  if (rc == 0 && (o.ncont || o.docker_given) &&
      engine_parse(&engine,
                   o.docker_url ? o.docker_url : "unix:///var/run/docker.sock",
                   err, sizeof err) < 0) {
    fprintf(stderr, "register check: %s\n", err);
    rc = -1;
  }
  if (rc != 0) {
    engine_close(&engine);
    free(o.containers);
    free(o.env);
    return rc < 0 ? 2 : 0;
  }
  /* host.hostname as the daemon has it; register check used to say
   * "localhost", so a different name is pointed out */
  char own[256];
  if (!o.hostname) {
    if (gethostname(own, sizeof own) != 0 || !own[0])
      snprintf(own, sizeof own, "localhost");
    own[sizeof own - 1] = '\0';
    o.hostname = own;
    if (strcmp(own, "localhost") != 0)
      fprintf(stderr,
              "register check: host.hostname is \"%s\" (gethostname(), as "
              "the daemon; it used to be \"localhost\" here; --hostname "
              "sets it)\n",
              own);
  }
  const char *file = argv[o.first];
  worker_opts_t po = {0};
  po.print_only = 1; /* hooks' HTTP is printed */
  po.file = strcmp(file, "default") == 0 ? NULL : file;
  po.host_ip = o.host_ip;
  po.hostname = o.hostname;
  po.time_limit_ms = (uint64_t)o.timeout_ms;
  po.env = o.env;
  po.log_level = log_enabled(LOG_DEBUG) ? LOG_DEBUG : LOG_INFO;
  worker_t *p = worker_new(&po, err, sizeof err);
  if (!p) {
    fprintf(stderr, "register: %s\n", err);
    engine_close(&engine);
    free(o.containers);
    free(o.env);
    return 1;
  }
  int nfiles = argc - o.first - 1;
  tally_t t = {0};
  if (nfiles == 0 && o.ncont == 0) {
    fprintf(stderr, "policy %s loads; prefix %s\n", worker_name(p),
            worker_prefix(p) ? worker_prefix(p) : "(none)");
  } else {
    if (check_files(p, argv + o.first + 1, nfiles, &o.assume, &t, stdout) < 0)
      rc = 1;
    if (o.ncont && check_containers(p, &engine, &o, &t) < 0) rc = 1;
    summary(&o.assume, &t);
  }
  if (worker_errors(p)) rc = 1; /* a hook failed */
  worker_free(p);
  engine_close(&engine);
  free(o.containers);
  free(o.env);
  return rc;
}

/* config: flags and environment -> config_t, with one-line errors.  One
 * table, opts[], gives the getopt_long options, the environment variables
 * read and the --help text. */
#include "config.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How an option's value becomes part of config_t. */
typedef enum {
  KIND_STRING,  /* char * at off, replaced */
  KIND_FLAG,    /* int at off, set to 1; takes no value */
  KIND_SECONDS, /* long at off: see number() */
  KIND_MS,      /* the same in milliseconds */
  KIND_CALL,    /* set() parses and stores it */
  KIND_HELP,    /* --help: the usage, exit 0 */
  KIND_VERSION, /* --version: the version, exit 0 */
} opt_kind_t;

/* src is where v came from: "--ttl", "REGISTER_TTL" or "default". */
typedef int (*opt_set_t)(config_t *cfg, const char *src, const char *v,
                         char *err, size_t errlen);

/* One option: a row of opts[] gives the first five fields in order, then
 * how the value is taken (STRING(field), CALL(fn), ...), then any of how,
 * shown and short_name. */
typedef struct {
  const char *flag; /* "--ttl"; NULL: an environment variable only */
  const char *env;  /* NULL: none */
  const char *arg;  /* the value's name in --help; NULL: the flag takes none */
  const char *help;
  const char *dflt; /* taken first, as a value is; --help: "default DFLT" */
  opt_kind_t kind;
  size_t off;        /* KIND_STRING, _FLAG, _SECONDS, _MS: the field */
  opt_set_t set;     /* KIND_CALL */
  long min, max;     /* KIND_SECONDS, _MS; max 0: a year, "MIN and up" */
  unsigned how;      /* OPT_ZERO, OPT_LATE */
  const char *shown; /* what --help says instead of "default DFLT" */
  char short_name;   /* -h, or 0 */
  int only; /* the commands that take it (CONFIG_DAEMON | ...); 0: all */
  const char *whelp;  /* register watch --help's help, when it differs */
  const char *wshown; /* and its shown */
} opt_t;

enum {
  OPT_ZERO = 1, /* KIND_SECONDS: 0 is allowed too (off) */
  OPT_LATE = 2, /* KIND_CALL: set() runs once every flag is read, with the
                   last value (NULL: none), so a flag's error comes first */
};

int config_valid_ip(const char *s) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static int valid_host(const char *h, size_t n) {
  if (n == 0) return 0;
  if (h[0] == '[') {
    char tmp[64];
    if (n < 3 || h[n - 1] != ']' || n - 2 >= sizeof tmp) return 0;
    memcpy(tmp, h + 1, n - 2);
    tmp[n - 2] = '\0';
    unsigned char a[16];
    return inet_pton(AF_INET6, tmp, a) == 1;
  }
  for (size_t i = 0; i < n; i++) {
    char c = h[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
      return 0;
  }
  return 1;
}

/* Splits "host[:port][/]" into host and port, validating both. */
static int split_hostport(const char *s, const char **host, size_t *hostlen,
                          long *port, long default_port) {
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] == '/')
    n--;
  const char *colon = NULL;
  if (n > 0 && s[0] == '[') {
    const char *rb = memchr(s, ']', n);
    if (!rb) return -1;
    if ((size_t)(rb - s) + 1 < n) {
      if (rb[1] != ':') return -1;
      colon = rb + 1;
    }
  } else {
    colon = memchr(s, ':', n);
  }
  size_t hn = colon ? (size_t)(colon - s) : n;
  if (!valid_host(s, hn)) return -1;
  *host = s;
  *hostlen = hn;
  *port = default_port;
  if (colon) {
    char pbuf[16];
    size_t pn = n - hn - 1;
    if (pn == 0 || pn >= sizeof pbuf) return -1;
    memcpy(pbuf, colon + 1, pn);
    pbuf[pn] = '\0';
    if (util_parse_long(pbuf, 1, 65535, port) < 0) return -1;
  }
  return 0;
}

int config_parse_endpoint(const char *in, char **out, char *err,
                          size_t errlen) {
  while (*in == ' ' || *in == '\t')
    in++;
  size_t n = strlen(in);
  while (n > 0 && (in[n - 1] == ' ' || in[n - 1] == '\t'))
    n--;
  char *s = xstrndup(in, n);
  const char *scheme = "http";
  const char *rest = s;
  const char *sep = strstr(s, "://");
  if (sep) {
    if ((size_t)(sep - s) == 4 && strncmp(s, "http", 4) == 0)
      scheme = "http";
    else if ((size_t)(sep - s) == 5 && strncmp(s, "https", 5) == 0)
      scheme = "https";
    else {
      snprintf(err, errlen,
               "etcd endpoint \"%s\": scheme must be http or https", s);
      free(s);
      return -1;
    }
    rest = sep + 3;
  }
  const char *host;
  size_t hostlen;
  long port;
  if (strchr(rest, '/') &&
      strspn(strchr(rest, '/'), "/") != strlen(strchr(rest, '/'))) {
    snprintf(err, errlen, "etcd endpoint \"%s\": a path is not allowed", s);
    free(s);
    return -1;
  }
  if (split_hostport(rest, &host, &hostlen, &port, 2379) < 0) {
    snprintf(err, errlen, "etcd endpoint \"%s\" is not [scheme://]host[:port]",
             s);
    free(s);
    return -1;
  }
  *out = xasprintf("%s://%.*s:%ld", scheme, (int)hostlen, host, port);
  free(s);
  return 0;
}

static int parse_etcd_list(config_t *cfg, const char *list, char *err,
                           size_t errlen) {
  for (size_t i = 0; i < cfg->n_etcd; i++)
    free(cfg->etcd[i]);
  free(cfg->etcd);
  cfg->etcd = NULL;
  cfg->n_etcd = 0;
  char *copy = xstrdup(list);
  char *save = NULL;
  int rc = 0;
  for (char *tok = strtok_r(copy, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save)) {
    if (strspn(tok, " \t") == strlen(tok)) continue;
    char *url;
    if (config_parse_endpoint(tok, &url, err, errlen) < 0) {
      rc = -1;
      break;
    }
    cfg->etcd = xrealloc(cfg->etcd, (cfg->n_etcd + 1) * sizeof *cfg->etcd);
    cfg->etcd[cfg->n_etcd++] = url;
  }
  free(copy);
  if (rc == 0 && cfg->n_etcd == 0) {
    snprintf(err, errlen, "etcd endpoint list \"%s\" is empty", list);
    rc = -1;
  }
  return rc;
}

int config_addr16(const char *ip, unsigned char out[16]) {
  unsigned char a4[4];
  if (inet_pton(AF_INET, ip, a4) == 1) {
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, a4, 4);
    return 0;
  }
  return inet_pton(AF_INET6, ip, out) == 1 ? 0 : -1;
}

int config_cidr_has(const config_cidr_t *c, const unsigned char addr[16]) {
  /* a network config_parse_cidrs() made: a prefix of the 16 bytes */
  REGISTER_ASSERT(c->bits >= 0 && c->bits <= 128);
  int full = c->bits / 8, rest = c->bits % 8;
  if (memcmp(c->addr, addr, (size_t)full) != 0) return 0;
  if (!rest) return 1;
  unsigned char mask = (unsigned char)(0xff00 >> rest);
  return (c->addr[full] & mask) == (addr[full] & mask);
}

int config_parse_cidrs(const char *list, config_cidr_t **out, size_t *n,
                       char *err, size_t errlen) {
  *out = NULL;
  *n = 0;
  char *copy = xstrdup(list);
  char *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save)) {
    tok += strspn(tok, " \t");
    size_t len = strcspn(tok, " \t");
    if (tok[len + strspn(tok + len, " \t")] != '\0') len = strlen(tok);
    if (len == 0) continue;
    tok[len] = '\0';
    char *slash = strchr(tok, '/');
    if (slash) *slash = '\0';
    config_cidr_t c;
    long bits = -1;
    int v4 = strchr(tok, ':') == NULL;
    if (config_addr16(tok, c.addr) == 0 &&
        (!slash ||
         (strspn(slash + 1, "0123456789") == strlen(slash + 1) &&
          util_parse_long(slash + 1, 0, v4 ? 32 : 128, &bits) == 0))) {
      c.bits = (int)(slash ? bits : v4 ? 32 : 128) + (v4 ? 96 : 0);
      *out = xrealloc(*out, (*n + 1) * sizeof **out);
      (*out)[(*n)++] = c;
      continue;
    }
    if (slash) *slash = '/';
    snprintf(err, errlen,
             "\"%.80s\" is not an IPv4 or IPv6 address or network "
             "(10.0.0.0/8, fd00::/8, 192.0.2.7)",
             tok);
    free(copy);
    free(*out);
    *out = NULL;
    *n = 0;
    return -1;
  }
  free(copy);
  return 0;
}

/* DOCKER_HOST, --docker: errors name the URL, not where it came from. */
int config_docker_url(const char *what, const char *url, int tls, char **socket,
                      char **base, char *err, size_t errlen) {
  *socket = *base = NULL;
  if (strncmp(url, "unix://", 7) == 0 || url[0] == '/') {
    const char *path = url[0] == '/' ? url : url + 7;
    if (path[0] != '/') {
      snprintf(err, errlen, "%s \"%s\": a unix socket needs an absolute path",
               what, url);
      return -1;
    }
    *socket = xstrdup(path);
    *base = xstrdup("http://docker");
    return 0;
  }
  const char *rest = NULL;
  if (strncmp(url, "tcp://", 6) == 0)
    rest = url + 6;
  else if (strncmp(url, "http://", 7) == 0)
    rest = url + 7, tls = 0;
  else if (strncmp(url, "https://", 8) == 0)
    rest = url + 8, tls = 1;
  const char *host;
  size_t hostlen;
  long port;
  if (!rest ||
      split_hostport(rest, &host, &hostlen, &port, tls ? 2376 : 2375) < 0) {
    snprintf(err, errlen, "%s \"%s\" is not unix:///path or tcp://host:port",
             what, url);
    return -1;
  }
  *base = xasprintf("%s://%.*s:%ld", tls ? "https" : "http", (int)hostlen, host,
                    port);
  return 0;
}

/* DOCKER_HOST, --docker: errors name the URL, not where it came from. */
static int set_docker(config_t *cfg, const char *src, const char *url,
                      char *err, size_t errlen) {
  (void)src;
  free(cfg->docker_url);
  free(cfg->docker_socket);
  free(cfg->docker_base);
  cfg->docker_url = xstrdup(url);
  return config_docker_url("Docker host", url, cfg->docker_cacert != NULL,
                           &cfg->docker_socket, &cfg->docker_base, err, errlen);
}

/* "0, or MIN and up" or "from MIN to MAX" seconds or milliseconds. */
static int number(const opt_t *o, const char *src, const char *v, long *out,
                  char *err, size_t errlen) {
  long max = o->max ? o->max : 86400L * 365;
  if (util_parse_long(v, o->how & OPT_ZERO ? 0 : o->min, max, out) == 0 &&
      (*out == 0 || *out >= o->min))
    return 0;
  const char *unit = o->kind == KIND_MS ? "milliseconds" : "seconds";
  if (o->max)
    snprintf(err, errlen, "%s \"%s\" is not a number of %s from %ld to %ld",
             src, v, unit, o->min, o->max);
  else
    snprintf(err, errlen, "%s \"%s\" is not a number of %s (%s%ld and up)", src,
             v, unit, o->how & OPT_ZERO ? "0, or " : "", o->min);
  return -1;
}

static void config_set_str(char **dst, const char *v) {
  free(*dst);
  *dst = v ? xstrdup(v) : NULL;
}

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* DOCKER_TLS_VERIFY / DOCKER_CERT_PATH, as the docker CLI reads them. */
static int set_docker_tls(config_t *cfg, const char *src, const char *verify,
                          char *err, size_t errlen) {
  (void)src, (void)err, (void)errlen;
  if (strcmp(verify, "0") == 0) return 0;
  const char *path = env("DOCKER_CERT_PATH");
  char *home = NULL;
  if (!path) {
    const char *h = env("HOME");
    home = xasprintf("%s/.docker", h ? h : "/root");
    path = home;
  }
  cfg->docker_cacert = xasprintf("%s/ca.pem", path);
  cfg->docker_cert = xasprintf("%s/cert.pem", path);
  cfg->docker_key = xasprintf("%s/key.pem", path);
  free(home);
  return 0;
}

static int readable(const char *what, const char *path, char *err,
                    size_t errlen) {
  if (path && access(path, R_OK) != 0) {
    snprintf(err, errlen, "%s \"%s\": %s", what, path, strerror(errno));
    return -1;
  }
  return 0;
}

/* The first line of an --etcd-password-file into *out (the old one wiped
 * and freed): 0, or -1 with a one-line error.  Read again when it changes
 * by creds.c. */
static int config_read_password(const char *file, char **out, char *err,
                                size_t errlen) {
  FILE *f = fopen(file, "r");
  char line[1024];
  if (!f) {
    snprintf(err, errlen, "--etcd-password-file \"%s\": %s", file,
             strerror(errno));
    return -1;
  }
  if (!fgets(line, sizeof line, f)) line[0] = '\0';
  fclose(f);
  line[strcspn(line, "\r\n")] = '\0';
  if (*out) memset(*out, 0, strlen(*out));
  config_set_str(out, line);
  memset(line, 0, sizeof line);
  return 0;
}

/* USER:PASSWORD splits; a password file wins; TLS files must be readable. */
static int finish_etcd_security(config_t *cfg, char *err, size_t errlen) {
  if (cfg->etcd_user) {
    char *colon = strchr(cfg->etcd_user, ':');
    if (colon) {
      *colon = '\0';
      config_set_str(&cfg->etcd_password, colon + 1);
      memset(colon + 1, 0, strlen(colon + 1));
    }
    if (!cfg->etcd_user[0]) {
      snprintf(err, errlen, "--etcd-user: the user name is empty");
      return -1;
    }
  }
  if (cfg->etcd_password_file &&
      config_read_password(cfg->etcd_password_file, &cfg->etcd_password, err,
                           errlen) < 0)
    return -1;
  if (cfg->etcd_password && !cfg->etcd_user) {
    snprintf(err, errlen, "an etcd password is given but no --etcd-user");
    return -1;
  }
  if (readable("--etcd-cacert", cfg->etcd_cacert, err, errlen) < 0 ||
      readable("--etcd-cert", cfg->etcd_cert, err, errlen) < 0 ||
      readable("--etcd-key", cfg->etcd_key, err, errlen) < 0 ||
      readable("DOCKER_CERT_PATH ca.pem", cfg->docker_cacert, err, errlen) <
          0 ||
      readable("DOCKER_CERT_PATH cert.pem", cfg->docker_cert, err, errlen) <
          0 ||
      readable("DOCKER_CERT_PATH key.pem", cfg->docker_key, err, errlen) < 0)
    return -1;
  if (!cfg->etcd_cert != !cfg->etcd_key) {
    snprintf(err, errlen, "--etcd-cert and --etcd-key go together");
    return -1;
  }
  return 0;
}

static int set_host_ip(config_t *cfg, const char *src, const char *v, char *err,
                       size_t errlen) {
  /* watch: ctx.host.ip is ""; policy: a check's host */
  if (!v && cfg->cmd != CONFIG_DAEMON) return 0;
  if (!v) {
    snprintf(err, errlen,
             "HOST_IP is not set or empty: give --host-ip IP, or set "
             "HOST_IP to this host's address (the systemd unit reads it from "
             "/etc/default/register or /etc/environment)");
    return -1;
  }
  if (!config_valid_ip(v) || strlen(v) >= sizeof cfg->host_ip) {
    snprintf(err, errlen, "%s \"%s\" is not an IPv4 or IPv6 address", src, v);
    return -1;
  }
  snprintf(cfg->host_ip, sizeof cfg->host_ip, "%s", v);
  return 0;
}

static int set_etcd(config_t *cfg, const char *src, const char *v, char *err,
                    size_t errlen) {
  if (parse_etcd_list(cfg, v, err, errlen) == 0) return 0;
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s: %s", src, err);
  snprintf(err, errlen, "%s", tmp);
  return -1;
}

static int set_etcd_api(config_t *cfg, const char *src, const char *v,
                        char *err, size_t errlen) {
  if (strcmp(v, "v2") == 0 || strcmp(v, "2") == 0)
    cfg->etcd_api = ETCD_API_V2;
  else if (strcmp(v, "v3") == 0 || strcmp(v, "3") == 0)
    cfg->etcd_api = ETCD_API_V3;
  else {
    snprintf(err, errlen, "%s \"%s\" is not v2 or v3", src, v);
    return -1;
  }
  return 0;
}

static int set_etcd_discovery(config_t *cfg, const char *src, const char *v,
                              char *err, size_t errlen) {
  if (strcmp(v, "on") == 0)
    cfg->etcd_discovery = 1;
  else if (strcmp(v, "off") == 0)
    cfg->etcd_discovery = 0;
  else {
    snprintf(err, errlen, "%s \"%s\" is not on or off", src, v);
    return -1;
  }
  return 0;
}

static int set_log_level(config_t *cfg, const char *src, const char *v,
                         char *err, size_t errlen) {
  if (log_level_parse(v, &cfg->log_level) == 0) return 0;
  snprintf(err, errlen, "%s \"%s\" is not one of error, warn, info, debug", src,
           v);
  return -1;
}

static int set_log_format(config_t *cfg, const char *src, const char *v,
                          char *err, size_t errlen) {
  if (log_format_parse(v, &cfg->log_format) == 0) return 0;
  snprintf(err, errlen, "%s \"%s\" is not text or json", src, v);
  return -1;
}

static int set_hostname(config_t *cfg, const char *src, const char *v,
                        char *err, size_t errlen) {
  (void)src, (void)err, (void)errlen;
  snprintf(cfg->hostname, sizeof cfg->hostname, "%s", v);
  return 0;
}

static int set_check_allow(config_t *cfg, const char *src, const char *v,
                           char *err, size_t errlen) {
  config_cidr_t *c;
  size_t n;
  char why[300];
  if (config_parse_cidrs(v, &c, &n, why, sizeof why) < 0) {
    snprintf(err, errlen, "%s: %s", src, why);
    return -1;
  }
  free(c);
  config_set_str(&cfg->check_allow, n ? v : NULL);
  return 0;
}

/* NAME,NAME...: environment variable names, kept as "A,B" (NULL: none). */
int config_policy_env(const char *src, const char *v, char **out, char *err,
                      size_t errlen) {
  buf_t b;
  buf_init(&b);
  char *copy = xstrdup(v);
  char *save = NULL;
  int rc = 0;
  for (char *tok = strtok_r(copy, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save)) {
    tok += strspn(tok, " \t");
    size_t len = strlen(tok);
    while (len > 0 && (tok[len - 1] == ' ' || tok[len - 1] == '\t'))
      len--;
    if (len == 0) continue;
    tok[len] = '\0';
    static const char first[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "abcdefghijklmnopqrstuvwxyz_";
    if (!strchr(first, tok[0]) ||
        strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
                    "0123456789") != len) {
      snprintf(err, errlen,
               "%s: \"%.80s\" is not an environment variable name "
               "([A-Za-z_][A-Za-z0-9_]*)",
               src, tok);
      rc = -1;
      break;
    }
    if (b.len) buf_puts(&b, ",");
    buf_puts(&b, tok);
  }
  free(copy);
  if (rc == 0) {
    free(*out);
    *out = b.len ? xstrdup(b.data) : NULL;
  }
  buf_free(&b);
  return rc;
}

static int set_policy_env(config_t *cfg, const char *src, const char *v,
                          char *err, size_t errlen) {
  return config_policy_env(src, v, &cfg->policy_env, err, errlen);
}

/* --sign, set once every flag is read (the action is known then): its
 * variable, REGISTER_POLICY_SIGN, is for push alone, and the other actions
 * ignore it; only --sign on their command line is refused (check_policy).
 * An empty variable is unset, as every other (env()). */
static int set_policy_sign(config_t *cfg, const char *src, const char *v,
                           char *err, size_t errlen) {
  (void)err, (void)errlen;
  if (!v) return 0;
  if (strcmp(src, "--sign") != 0 &&
      (!cfg->policy_action || strcmp(cfg->policy_action, "push") != 0))
    return 0;
  config_set_str(&cfg->policy_sign, v);
  return 0;
}

/* --wait MIN[:MAX]: durations with ms or s (a bare number is ms). */
static int duration_ms(const char *s, size_t n, long *out) {
  char tmp[32];
  if (n == 0 || n >= sizeof tmp) return -1;
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  char *end;
  errno = 0;
  double v = strtod(tmp, &end);
  /* !(v >= 0): NaN too (strtod reads "nan"); "inf" fails the cap below */
  if (errno || end == tmp || !(v >= 0)) return -1;
  double mul = 1;
  if (strcmp(end, "s") == 0)
    mul = 1000;
  else if (*end && strcmp(end, "ms") != 0)
    return -1;
  v *= mul;
  if (!(v <= 600000)) return -1;
  *out = (long)v;
  return 0;
}

static int set_wait(config_t *cfg, const char *src, const char *v, char *err,
                    size_t errlen) {
  const char *colon = strchr(v, ':');
  long lo, hi;
  if (duration_ms(v, colon ? (size_t)(colon - v) : strlen(v), &lo) < 0 ||
      (colon && duration_ms(colon + 1, strlen(colon + 1), &hi) < 0)) {
    snprintf(err, errlen,
             "%s \"%s\" is not MIN[:MAX], durations up to 600s (e.g. "
             "50ms:250ms)",
             src, v);
    return -1;
  }
  if (!colon) hi = lo * 4 > lo + 1000 ? lo * 4 : lo + 1000;
  if (hi < lo) {
    snprintf(err, errlen, "%s \"%s\": MAX is below MIN", src, v);
    return -1;
  }
  cfg->wait_min_ms = lo;
  cfg->wait_max_ms = hi;
  return 0;
}

static int set_min_keys(config_t *cfg, const char *src, const char *v,
                        char *err, size_t errlen) {
  if (util_parse_long(v, 0, 1000000000L, &cfg->min_keys) < 0) {
    snprintf(err, errlen, "%s \"%s\" is not a number of keys (0 and up)", src,
             v);
    return -1;
  }
  return 0;
}

#define STRING(f) .kind = KIND_STRING, .off = offsetof(config_t, f)
#define FLAG(f) .kind = KIND_FLAG, .off = offsetof(config_t, f)
#define SECONDS(f, lo, hi)                                                     \
  .kind = KIND_SECONDS, .off = offsetof(config_t, f), .min = lo, .max = hi
#define MS(f, lo, hi)                                                          \
  .kind = KIND_MS, .off = offsetof(config_t, f), .min = lo, .max = hi
#define CALL(fn) .kind = KIND_CALL, .set = fn

/* In --help's order.  The environment is read in this order too, before
 * the flags: its first bad variable is the error. */
static const opt_t opts[] = {
    {"--host-ip", "HOST_IP", "IP", "this host's address, used in keys", NULL,
     CALL(set_host_ip), .how = OPT_LATE, .shown = "required",
     .whelp = "this host's address: the renderer's ctx.host.ip",
     .wshown = "optional"},
    {"--etcd", "ETCD_ENDPOINT", "LIST",
     "comma-separated etcd endpoints, scheme optional", "http://127.0.0.1:2379",
     CALL(set_etcd)},
    {"--etcd-api", "REGISTER_ETCD_API", "v2|v3", "etcd API to write with", "v2",
     CALL(set_etcd_api), .how = OPT_LATE, .whelp = "etcd API to read with"},
    {"--etcd-discovery", "REGISTER_ETCD_DISCOVERY", "on|off",
     "also use the client URLs of the members etcd lists (the --etcd "
     "endpoints are always kept); off: --etcd only",
     "on", CALL(set_etcd_discovery)},
    {"--etcd-fence", "REGISTER_ETCD_FENCE", "KEY|off",
     "v3: this host's write fence: a late copy of a write given up on "
     "changes nothing; off: no fence",
     NULL, STRING(etcd_fence), .shown = "default: /register/fence/HOST_IP",
     .only = CONFIG_DAEMON},
    {"--etcd-cacert", "ETCDCTL_CACERT", "FILE", "CA bundle for https endpoints",
     NULL, STRING(etcd_cacert)},
    {"--etcd-cert", "ETCDCTL_CERT", "FILE", "client certificate", NULL,
     STRING(etcd_cert)},
    {"--etcd-key", "ETCDCTL_KEY", "FILE", "client key", NULL, STRING(etcd_key)},
    {"--etcd-user", "ETCDCTL_USER", "USER[:PW]", "etcd user and password", NULL,
     STRING(etcd_user)},
    {NULL, "ETCDCTL_PASSWORD", NULL,
     "the etcd password, when --etcd-user has no :PW", NULL,
     STRING(etcd_password)},
    {"--etcd-password-file", NULL, "F", "read the etcd password from F", NULL,
     STRING(etcd_password_file)},
    {NULL, "DOCKER_TLS_VERIFY", NULL,
     "not 0: TLS to Docker, with ca.pem, cert.pem and key.pem from "
     "DOCKER_CERT_PATH (default ~/.docker)",
     NULL, CALL(set_docker_tls), .only = CONFIG_DAEMON},
    {"--docker", "DOCKER_HOST", "URL",
     "Docker API: unix:///path or tcp://host:port",
     "unix:///var/run/docker.sock", CALL(set_docker), .only = CONFIG_DAEMON},
    {"--policy", "REGISTER_POLICY", "FILE", "Lua policy", NULL,
     STRING(policy_file), .shown = "default: the embedded /registered schema",
     .only = CONFIG_DAEMON},
    {"--policy-key", "REGISTER_POLICY_KEY", "KEY",
     "follow the fleet's policy kept in etcd at KEY (register policy push)",
     NULL, STRING(policy_key), .only = CONFIG_DAEMON},
    {"--policy-pubkey", "REGISTER_POLICY_PUBKEY", "FILE",
     "apply only policies from --policy-key signed with a key in FILE (PEM, "
     "Ed25519)",
     NULL, STRING(policy_pubkey), .only = CONFIG_DAEMON},
    {"--policy-unsigned", "REGISTER_POLICY_UNSIGNED", NULL,
     "apply unsigned policies from --policy-key (unsafe: anyone who can "
     "write KEY runs code on every host)",
     NULL, FLAG(policy_unsigned), .only = CONFIG_DAEMON},
    {"--state-dir", "REGISTER_STATE_DIR", "DIR",
     "where the last policy applied from --policy-key is kept",
     "/var/lib/register", STRING(state_dir), .only = CONFIG_DAEMON},
    {"--key", "REGISTER_POLICY_KEY", "KEY", "the policy key in etcd", NULL,
     STRING(policy_key), .only = CONFIG_POLICY, .shown = "required"},
    {"--sign", "REGISTER_POLICY_SIGN", "KEYFILE",
     "push: sign with this Ed25519 private key (PEM)", NULL,
     CALL(set_policy_sign), .how = OPT_LATE, .only = CONFIG_POLICY},
    {"--policy-pubkey", NULL, "FILE",
     "status: verify the revisions' signatures with the keys in FILE (PEM, "
     "Ed25519)",
     NULL, STRING(policy_pubkey), .only = CONFIG_POLICY},
    {"--canary", NULL, "IP,IP,...|N%",
     "push: only these hosts, or a stable N% of them, take the revision", NULL,
     STRING(policy_canary), .only = CONFIG_POLICY},
    {"--json", NULL, NULL, "status: one JSON document instead of lines", NULL,
     FLAG(policy_json), .only = CONFIG_POLICY},
    {"--log-level", "REGISTER_LOG_LEVEL", "LEVEL", "error, warn, info or debug",
     "info", CALL(set_log_level)},
    {"--log-format", "REGISTER_LOG_FORMAT", "FORMAT", "text or json", "text",
     CALL(set_log_format)},
    {"--ttl", "REGISTER_TTL", "SECONDS",
     "write keys with a TTL and keep them fresh; 0: no TTL", "0",
     SECONDS(ttl, 2, 0), .how = OPT_ZERO, .only = CONFIG_DAEMON},
    {"--resync", "REGISTER_RESYNC", "SECONDS",
     "compare Docker and etcd every SECONDS; 0: only on (re)connect", "0",
     SECONDS(resync, 1, 0), .how = OPT_ZERO, .only = CONFIG_DAEMON},
    {"--deregister-on-exit", NULL, NULL,
     "delete this host's keys on SIGTERM/SIGINT", NULL,
     FLAG(deregister_on_exit), .only = CONFIG_DAEMON},
    {"--metrics", NULL, "ADDR",
     "serve /metrics and /healthz on ADDR (host:port)", NULL,
     STRING(metrics_addr), .only = CONFIG_DAEMON | CONFIG_WATCH},
    {"--hostname", NULL, "NAME", "host name given to the policy", NULL,
     CALL(set_hostname), .shown = "default: gethostname",
     .whelp = "host name: the renderer's ctx.host.hostname"},
    {"--policy-timeout", NULL, "MS", "wall-clock limit of one policy call",
     "1000", MS(policy_timeout_ms, 10, 600000),
     .whelp = "wall-clock limit of one render"},
    {"--hook-timeout", NULL, "SECONDS",
     "limit of one hook call, I/O waits included", "60",
     SECONDS(hook_timeout, 1, 3600), .only = CONFIG_DAEMON},
    {"--policy-env", "REGISTER_POLICY_ENV", "NAMES",
     "the environment variables the policy worker gets, comma-separated", NULL,
     CALL(set_policy_env), .shown = "default: none",
     .whelp = "the environment variables the renderer's worker gets, "
              "comma-separated"},
    {"--check-allow", "REGISTER_CHECK_ALLOW", "CIDRS",
     "networks beyond this host that health checks may reach, "
     "comma-separated CIDRs or IPs",
     NULL, CALL(set_check_allow), .shown = "default: none",
     .only = CONFIG_DAEMON},
    {"--dry-run", NULL, NULL, "print what would be written instead of writing",
     NULL, FLAG(dry_run), .only = CONFIG_DAEMON},
    {"--trace-latency", NULL, NULL,
     "log where each event's time went, stage by stage", NULL,
     FLAG(trace_latency), .only = CONFIG_DAEMON},
    {"--once", NULL, NULL,
     "sync once; exit 0 when etcd matches, 1 when it does not within --timeout",
     NULL, FLAG(once), .only = CONFIG_DAEMON | CONFIG_WATCH,
     .whelp = "render once; exit 0 when the file is in place, 1 when it is not "
              "within --timeout"},
    {"--timeout", NULL, "SECONDS", "how long --once waits for etcd to match",
     "30", SECONDS(once_timeout, 1, 0), .whelp = "how long --once waits",
     .only = CONFIG_DAEMON | CONFIG_WATCH},
    {"--render", "REGISTER_WATCH_RENDER", "FILE",
     "the Lua renderer: render(kv, ctx)", NULL, STRING(render_file),
     .only = CONFIG_WATCH, .shown = "required"},
    {"--out", "REGISTER_WATCH_OUT", "PATH", "the file rendered", NULL,
     STRING(out_file), .only = CONFIG_WATCH, .shown = "required"},
    {"--check", "REGISTER_WATCH_CHECK", "CMD",
     "run CMD on a new file first (%s: its path); it must exit 0", NULL,
     STRING(check_cmd), .only = CONFIG_WATCH},
    {"--reload", "REGISTER_WATCH_RELOAD", "CMD",
     "run CMD after a new file is in place", NULL, STRING(reload_cmd),
     .only = CONFIG_WATCH},
    {"--wait", "REGISTER_WATCH_WAIT", "MIN[:MAX]",
     "after a change, wait until MIN passes quietly, MAX at most", "20ms:250ms",
     CALL(set_wait), .only = CONFIG_WATCH},
    {"--min-keys", "REGISTER_WATCH_MIN_KEYS", "N",
     "fewer than N keys under PREFIX (an etcd wiped or restored empty) are "
     "not rendered: the last good file stays",
     "0", CALL(set_min_keys), .only = CONFIG_WATCH},
    {"--command-timeout", NULL, "SECONDS",
     "kill a --check or --reload command after SECONDS", "30",
     SECONDS(command_timeout, 1, 3600), .only = CONFIG_WATCH},
    {"--help", NULL, NULL, "this text", NULL, .kind = KIND_HELP,
     .short_name = 'h'},
    {"--version", NULL, NULL, "print the version", NULL, .kind = KIND_VERSION},
};

#undef STRING
#undef FLAG
#undef SECONDS
#undef MS
#undef CALL

/* getopt_long returns OPT_VAL + the row, above any short option. */
enum { N_OPTS = ARRAY_SIZE(opts), OPT_VAL = 256 };

static int in_mode(const opt_t *o, int cmd) {
  return !o->only || (o->only & cmd);
}

static const opt_t *opt_named(const char *flag) {
  for (size_t i = 0; i < N_OPTS; i++)
    if (opts[i].flag && strcmp(opts[i].flag, flag) == 0) return &opts[i];
  abort();
}

int config_policy_timeout(const char *name, const char *v, long *ms, char *err,
                          size_t errlen) {
  return number(opt_named("--policy-timeout"), name, v, ms, err, errlen);
}

/* A late option's value and where it came from, until every flag is read. */
typedef struct {
  const char *v[N_OPTS], *src[N_OPTS];
} late_t;

static int take(config_t *cfg, late_t *late, const opt_t *o, const char *src,
                const char *v, char *err, size_t errlen) {
  void *field = (char *)cfg + o->off;
  if (o->how & OPT_LATE) {
    late->v[o - opts] = v;
    late->src[o - opts] = src;
    return 0;
  }
  switch (o->kind) {
  case KIND_STRING:
    config_set_str(field, v);
    return 0;
  case KIND_FLAG: /* a flag (no value), or its variable's yes or no */
    if (!v) {
      *(int *)field = 1;
      return 0;
    }
    static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {
                                                                     "0",
                                                                     "false",
                                                                     "no",
                                                                     "off"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
      if (strcasecmp(v, yes[i]) == 0) {
        *(int *)field = 1;
        return 0;
      }
      if (strcasecmp(v, no[i]) == 0) {
        *(int *)field = 0;
        return 0;
      }
    }
    snprintf(err, errlen,
             "%s \"%s\" is neither yes (1, true, yes, on) nor no (0, false, "
             "no, off)",
             src, v);
    return -1;
  case KIND_SECONDS:
  case KIND_MS:
    return number(o, src, v, field, err, errlen);
  case KIND_CALL:
    return o->set(cfg, src, v, err, errlen);
  case KIND_HELP:
  case KIND_VERSION:
    break;
  }
  return 0;
}

static void config_usage_watch(void);
static void config_usage_policy(void);

/* 0: every flag taken; 1: --help or --version printed; -1: an error. */
static int take_flags(config_t *cfg, late_t *late, int argc, char **argv,
                      char *err, size_t errlen) {
  struct option longs[N_OPTS + 1];
  char shorts[2 * N_OPTS + 2] = ":"; /* ':' for a missing value */
  size_t nl = 0, ns = 1;
  for (size_t i = 0; i < N_OPTS; i++) {
    const opt_t *o = &opts[i];
    if (!o->flag || !in_mode(o, cfg->cmd)) continue;
    longs[nl++] =
        (struct option){o->flag + 2, o->arg ? required_argument : no_argument,
                        NULL, OPT_VAL + (int)i};
    if (o->short_name) {
      shorts[ns++] = o->short_name;
      if (o->arg) shorts[ns++] = ':';
    }
  }
  longs[nl] = (struct option){NULL, 0, NULL, 0};
  shorts[ns] = '\0';

  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, shorts, longs, NULL)) != -1) {
    const opt_t *o = NULL;
    for (size_t i = 0; i < N_OPTS && !o; i++)
      if (c == OPT_VAL + (int)i ||
          (opts[i].short_name && c == opts[i].short_name))
        o = &opts[i];
    if (!o) {
      if (c == ':')
        snprintf(err, errlen, "option %s needs a value", argv[optind - 1]);
      else
        snprintf(err, errlen, "unknown option \"%s\" (see --help)",
                 argv[optind - 1]);
      return -1;
    }
    if (o->kind == KIND_HELP) {
      if (cfg->cmd == CONFIG_WATCH)
        config_usage_watch();
      else if (cfg->cmd == CONFIG_POLICY)
        config_usage_policy();
      else
        config_usage(argv[0]);
      return 1;
    }
    if (o->kind == KIND_VERSION) {
      printf("register %s\n", REGISTER_VERSION);
      return 1;
    }
    if (take(cfg, late, o, o->flag, optarg, err, errlen) < 0) return -1;
  }
  if (cfg->cmd == CONFIG_WATCH && optind < argc) /* PREFIX */
    config_set_str(&cfg->watch_prefix, argv[optind++]);
  else if (cfg->cmd == CONFIG_WATCH && env("REGISTER_WATCH_PREFIX"))
    config_set_str(&cfg->watch_prefix, env("REGISTER_WATCH_PREFIX"));
  if (cfg->cmd == CONFIG_POLICY && optind < argc) { /* ACTION [ARGS...] */
    config_set_str(&cfg->policy_action, argv[optind++]);
    cfg->policy_args = xcalloc((size_t)(argc - optind) + 1, sizeof(char *));
    while (optind < argc)
      cfg->policy_args[cfg->n_policy_args++] = xstrdup(argv[optind++]);
  }
  if (optind < argc) {
    snprintf(err, errlen, "unexpected argument \"%s\" (see --help)",
             argv[optind]);
    return -1;
  }
  return 0;
}

/* "  --flag ARG  help (ENV; default X)", wrapped at 80 columns under the
 * help's first column; the note in parentheses is kept whole if it fits. */
static void usage_row(const opt_t *o, int cmd) {
  enum { INDENT = 26, WIDTH = 80, NBSP = '\x1f' };
  char left[64], dflt[128] = "", note[192] = "", text[512];
  if (!o->flag)
    snprintf(left, sizeof left, "%s", o->env);
  else if (o->short_name)
    snprintf(left, sizeof left, "-%c, %s", o->short_name, o->flag);
  else
    snprintf(left, sizeof left, "%s", o->flag);
  const char *env = o->flag ? o->env : NULL; /* else it is on the left */
  const char *shown = cmd == CONFIG_WATCH && o->wshown ? o->wshown : o->shown;
  if (shown)
    snprintf(dflt, sizeof dflt, "%s", shown);
  else if (o->dflt)
    snprintf(dflt, sizeof dflt, "default %s", o->dflt);
  if (env || dflt[0])
    snprintf(note, sizeof note, " (%s%s%s)", env ? env : "",
             env && dflt[0] ? "; " : "", dflt);
  /* " (...)" kept whole when the "(...)" fits on a line of its own */
  if (note[0] && strlen(note) - 1 <= WIDTH - INDENT)
    for (char *p = strchr(note + 1, ' '); p; p = strchr(p, ' '))
      *p = NBSP;
  snprintf(text, sizeof text, "%s%s",
           cmd == CONFIG_WATCH && o->whelp ? o->whelp : o->help, note);

  int col = printf("  %s%s%s", left, o->arg ? " " : "", o->arg ? o->arg : "");
  for (const char *p = text; *p; p += strspn(p, " ")) {
    int n = (int)strcspn(p, " ");
    if (col > INDENT && col + 1 + n > WIDTH) {
      putchar('\n');
      col = 0;
    }
    col += printf("%*s", col < INDENT ? INDENT - col : 1, "") + n;
    for (; n > 0; n--, p++)
      putchar(*p == NBSP ? ' ' : *p);
  }
  putchar('\n');
}

static void config_usage_watch(void) {
  printf("Usage: register watch PREFIX --render FILE.lua --out PATH [OPTIONS]\n"
         "       (PREFIX: or REGISTER_WATCH_PREFIX)\n"
         "\n"
         "Follows PREFIX in etcd and keeps PATH rendered from it by the Lua\n"
         "renderer (render(kv, ctx) returns the file's text, in a policy "
         "worker);\n"
         "a new text is checked (--check), put in place atomically and "
         "reloaded\n"
         "(--reload).  Commands run without a shell unless they ask for one.\n"
         "\n");
  for (size_t i = 0; i < N_OPTS; i++)
    if (in_mode(&opts[i], CONFIG_WATCH)) usage_row(&opts[i], CONFIG_WATCH);
}

static void config_usage_policy(void) {
  printf("Usage: register policy push FILE [INSPECT.json ...] --key KEY "
         "[--sign KEYFILE]\n"
         "                                   [--canary IP,IP,...|N%%]\n"
         "       register policy status --key KEY [--json] [--policy-pubkey "
         "FILE]\n"
         "       register policy promote --key KEY\n"
         "       register policy rollback --key KEY\n"
         "\n"
         "The fleet's policy, kept in etcd at KEY and followed by every "
         "daemon run\n"
         "with --policy-key KEY.  push checks FILE first (on the inspect "
         "documents\n"
         "given) and writes a new revision, to every host or to a canary; "
         "promote\n"
         "gives the canary's revision to every host; rollback returns every "
         "host to\n"
         "the previous revision.  Writes are compare-and-swap.\n"
         "\n");
  for (size_t i = 0; i < N_OPTS; i++)
    if (in_mode(&opts[i], CONFIG_POLICY)) usage_row(&opts[i], CONFIG_POLICY);
}

void config_usage(const char *prog) {
  printf("Usage: %s [OPTIONS]\n"
         "       %s check [OPTIONS] POLICY|default [INSPECT.json|- ...]\n"
         "       %s watch PREFIX --render FILE.lua --out PATH [OPTIONS]\n"
         "       %s policy push|status|promote|rollback --key KEY [OPTIONS]\n"
         "\n"
         "Keeps etcd in sync with the ports that running Docker containers "
         "publish.\n"
         "\n",
         prog, prog, prog, prog);
  for (size_t i = 0; i < N_OPTS; i++)
    if (in_mode(&opts[i], CONFIG_DAEMON)) usage_row(&opts[i], CONFIG_DAEMON);
  fputs("\n"
        "register watch PREFIX: a file kept rendered from etcd (register "
        "watch --help)\n"
        "register policy: the fleet's policy in etcd (register policy "
        "--help)\n"
        "\n"
        "register check: a policy tried on inspect documents, no etcd; one "
        "JSON\n"
        "line per record, a summary on stderr (register check --help):\n"
        "  --host-ip IP, --hostname NAME, --policy-timeout MS   as above\n"
        "  --assume-checks STATES  the checks' states: passing (default), "
        "failing,\n"
        "                          pending, or 80/tcp=passing,2=failing (by "
        "port or\n"
        "                          number; checks not named are pending)\n"
        "  --container NAME|ID     inspect it on the engine instead of a file\n"
        "                          (repeatable)\n"
        "  --docker URL            that engine (DOCKER_HOST; default\n"
        "                          unix:///var/run/docker.sock)\n",
        stdout);
}

static int check_metrics(const config_t *cfg, char *err, size_t errlen) {
  if (!cfg->metrics_addr) return 0;
  const char *host;
  size_t hostlen;
  long port;
  char ip[64];
  int ok = split_hostport(cfg->metrics_addr, &host, &hostlen, &port, 0) == 0 &&
           port > 0 && hostlen < sizeof ip;
  if (ok) {
    size_t skip = host[0] == '[';
    snprintf(ip, sizeof ip, "%.*s", (int)(hostlen - 2 * skip), host + skip);
    ok = config_valid_ip(ip);
  }
  if (!ok) {
    snprintf(err, errlen,
             "--metrics \"%s\" is not IP:PORT (e.g. 127.0.0.1:9367)",
             cfg->metrics_addr);
    return -1;
  }
  return 0;
}

/* A "." or ".." segment in key k (an absolute path; NULL: none) is one
 * that v2 (the key in a URL's path) resolves and v3 does not, and that
 * util_key_holds() takes literally: -1 with one line in err naming flag
 * (and an example of a key without), or 0. */
static int dot_segments(const char *k, const char *flag, const char *example,
                        char *err, size_t errlen) {
  for (const char *p = k; p && *p;) {
    p++; /* past the '/' */
    size_t n = strcspn(p, "/");
    if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) {
      snprintf(err, errlen,
               "%s \"%s\" has a \"%.*s\" segment: name the key without "
               "\".\" or \"..\", e.g. %s",
               flag, k, (int)n, p, example);
      return -1;
    }
    p += n;
  }
  return 0;
}

static int check_watch(config_t *cfg, char *err, size_t errlen) {
  char *p = cfg->watch_prefix;
  if (!p) {
    snprintf(err, errlen,
             "which PREFIX? (e.g. register "
             "watch /registered --render haproxy.lua --out "
             "haproxy.cfg)");
    return -1;
  }
  size_t n = strlen(p);
  while (n > 1 && p[n - 1] == '/')
    p[--n] = '\0';
  if (p[0] != '/' || n < 2 || strstr(p, "//")) {
    snprintf(err, errlen,
             "PREFIX \"%s\" must be an absolute key path "
             "below the root, e.g. /registered",
             cfg->watch_prefix);
    return -1;
  }
  if (dot_segments(p, "PREFIX", "/registered", err, errlen) < 0) return -1;
  if (!cfg->render_file || !*cfg->render_file) {
    snprintf(err, errlen, "--render FILE.lua is required");
    return -1;
  }
  if (!cfg->out_file || !*cfg->out_file) {
    snprintf(err, errlen, "--out PATH is required");
    return -1;
  }
  return 0;
}

/* A key of register's own (a policy key, the fence): an absolute key path
 * below the root, no trailing '/'. */
static int check_key(char *k, const char *flag, char *err, size_t errlen) {
  if (!k) return 0;
  size_t n = strlen(k);
  while (n > 1 && k[n - 1] == '/')
    k[--n] = '\0';
  if (k[0] != '/' || n < 2 || strstr(k, "//") || n > 512) {
    snprintf(err, errlen,
             "%s \"%s\" must be an absolute key path below the root, e.g. "
             "%s",
             flag, k,
             strcmp(flag, "--etcd-fence") == 0 ? "/register/fence/10.0.0.1"
                                               : "/register/policy");
    return -1;
  }
  return 0;
}

/* The policy key and its status/ directory are paths the hosts and the
 * operators must agree on: a "." or ".." segment (dot_segments()). */
static int check_policy_key(config_t *cfg, const char *flag, char *err,
                            size_t errlen) {
  if (check_key(cfg->policy_key, flag, err, errlen) < 0) return -1;
  return dot_segments(cfg->policy_key, flag, "/register/policy", err, errlen);
}

static int check_policy(config_t *cfg, char *err, size_t errlen) {
  if (cfg->cmd == CONFIG_DAEMON) {
    if (check_policy_key(cfg, "--policy-key", err, errlen) < 0) return -1;
    if (cfg->etcd_fence && strcmp(cfg->etcd_fence, "off") != 0 &&
        check_key(cfg->etcd_fence, "--etcd-fence", err, errlen) < 0)
      return -1;
    if (cfg->policy_pubkey && cfg->policy_unsigned) {
      snprintf(err, errlen,
               "--policy-unsigned contradicts --policy-pubkey: a host "
               "either verifies signatures or does not");
      return -1;
    }
    if (!cfg->policy_key && (cfg->policy_pubkey || cfg->policy_unsigned)) {
      snprintf(err, errlen, "%s needs --policy-key KEY",
               cfg->policy_pubkey ? "--policy-pubkey" : "--policy-unsigned");
      return -1;
    }
    if (cfg->policy_key && (!cfg->state_dir || !*cfg->state_dir)) {
      snprintf(err, errlen, "--state-dir must name a directory");
      return -1;
    }
    /* a policy call holds the loop up to its limit (a reload's trial, a
     * check): the keep-alives must still come before the lease runs out */
    if (cfg->ttl > 0 && cfg->policy_timeout_ms * 2 > cfg->ttl * 1000) {
      snprintf(err, errlen,
               "--policy-timeout %ld ms is more than half of --ttl %ld s: "
               "one policy call that runs to its limit would let every key "
               "expire (shorten it, or lengthen --ttl)",
               cfg->policy_timeout_ms, cfg->ttl);
      return -1;
    }
    return 0;
  }
  static const char *const actions[] = {"push", "status", "promote",
                                        "rollback"};
  const char *a = cfg->policy_action;
  size_t i = 0;
  while (a && i < ARRAY_SIZE(actions) && strcmp(a, actions[i]) != 0)
    i++;
  if (!a || i == ARRAY_SIZE(actions)) {
    snprintf(err, errlen,
             a ? "register policy: unknown action \"%s\" (push, status, "
                 "promote or rollback)"
               : "register policy: which action? (push, status, promote or "
                 "rollback)%s",
             a ? a : "");
    return -1;
  }
  if (!cfg->policy_key) {
    snprintf(err, errlen,
             "register policy %s: --key KEY is required (or "
             "REGISTER_POLICY_KEY), e.g. --key /register/policy",
             a);
    return -1;
  }
  if (check_policy_key(cfg, "--key", err, errlen) < 0) return -1;
  if (strcmp(a, "push") == 0 && cfg->n_policy_args == 0) {
    snprintf(err, errlen, "register policy push: which FILE?");
    return -1;
  }
  if (strcmp(a, "push") != 0 &&
      (cfg->n_policy_args || cfg->policy_sign || cfg->policy_canary)) {
    snprintf(err, errlen, "register policy %s takes no %s", a,
             cfg->n_policy_args ? "FILE"
             : cfg->policy_sign ? "--sign"
                                : "--canary");
    return -1;
  }
  if ((cfg->policy_json || cfg->policy_pubkey) && strcmp(a, "status") != 0) {
    snprintf(err, errlen, "register policy %s takes no %s", a,
             cfg->policy_json ? "--json" : "--policy-pubkey");
    return -1;
  }
  return 0;
}

static int parse(config_t *cfg, int cmd, int argc, char **argv, char *err,
                 size_t errlen) {
  memset(cfg, 0, sizeof *cfg);
  cfg->cmd = cmd;
  late_t late = {{NULL}, {NULL}};
  /* Defaults, then the environment, then flags: the last one wins. */
  for (size_t i = 0; i < N_OPTS; i++)
    if (opts[i].dflt && in_mode(&opts[i], cmd) &&
        take(cfg, &late, &opts[i], "default", opts[i].dflt, err, errlen) < 0)
      return -1;
  for (size_t i = 0; i < N_OPTS; i++) {
    const char *v =
        opts[i].env && in_mode(&opts[i], cmd) ? env(opts[i].env) : NULL;
    if (v && take(cfg, &late, &opts[i], opts[i].env, v, err, errlen) < 0)
      return -1;
  }
  int rc = take_flags(cfg, &late, argc, argv, err, errlen);
  if (rc != 0) return rc;
  for (size_t i = 0; i < N_OPTS; i++)
    if (opts[i].how & OPT_LATE && in_mode(&opts[i], cmd) &&
        opts[i].set(cfg, late.src[i], late.v[i], err, errlen) < 0)
      return -1;
  if (cmd == CONFIG_WATCH && check_watch(cfg, err, errlen) < 0) return -1;
  if (cmd != CONFIG_WATCH && check_policy(cfg, err, errlen) < 0) return -1;
  if (finish_etcd_security(cfg, err, errlen) < 0 ||
      check_metrics(cfg, err, errlen) < 0)
    return -1;
  if (!cfg->hostname[0] && gethostname(cfg->hostname, sizeof cfg->hostname))
    snprintf(cfg->hostname, sizeof cfg->hostname, "localhost");
  cfg->hostname[sizeof cfg->hostname - 1] = '\0';
  return 0;
}

int config_parse(config_t *cfg, int argc, char **argv, char *err,
                 size_t errlen) {
  return parse(cfg, CONFIG_DAEMON, argc, argv, err, errlen);
}

int config_parse_watch(config_t *cfg, int argc, char **argv, char *err,
                       size_t errlen) {
  REGISTER_ASSERT(argc >= 1 && strcmp(argv[0], "watch") == 0); /* config.h */
  return parse(cfg, CONFIG_WATCH, argc, argv, err, errlen);
}

int config_parse_policy(config_t *cfg, int argc, char **argv, char *err,
                        size_t errlen) {
  REGISTER_ASSERT(argc >= 1 && strcmp(argv[0], "policy") == 0); /* config.h */
  return parse(cfg, CONFIG_POLICY, argc, argv, err, errlen);
}

void config_free(config_t *cfg) {
  for (size_t i = 0; i < cfg->n_etcd; i++)
    free(cfg->etcd[i]);
  free(cfg->etcd);
  free(cfg->etcd_cacert);
  free(cfg->etcd_cert);
  free(cfg->etcd_key);
  free(cfg->etcd_user);
  if (cfg->etcd_password)
    memset(cfg->etcd_password, 0, strlen(cfg->etcd_password));
  free(cfg->etcd_password);
  free(cfg->etcd_password_file);
  free(cfg->etcd_fence);
  free(cfg->docker_url);
  free(cfg->docker_socket);
  free(cfg->docker_base);
  free(cfg->docker_cacert);
  free(cfg->docker_cert);
  free(cfg->docker_key);
  free(cfg->policy_file);
  free(cfg->metrics_addr);
  free(cfg->check_allow);
  free(cfg->policy_env);
  free(cfg->watch_prefix);
  free(cfg->render_file);
  free(cfg->out_file);
  free(cfg->check_cmd);
  free(cfg->reload_cmd);
  free(cfg->policy_key);
  free(cfg->policy_action);
  free(cfg->policy_pubkey);
  free(cfg->state_dir);
  free(cfg->policy_sign);
  free(cfg->policy_canary);
  for (size_t i = 0; i < cfg->n_policy_args; i++)
    free(cfg->policy_args[i]);
  free(cfg->policy_args);
  memset(cfg, 0, sizeof *cfg);
}

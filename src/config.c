/* config: flags and environment -> config_t, with one-line errors. */
#include "config.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
  OPT_HOST_IP = 256,
  OPT_ETCD,
  OPT_ETCD_API,
  OPT_ETCD_CACERT,
  OPT_ETCD_CERT,
  OPT_ETCD_KEY,
  OPT_ETCD_USER,
  OPT_ETCD_PASSWORD_FILE,
  OPT_DOCKER,
  OPT_POLICY,
  OPT_LOG_LEVEL,
  OPT_LOG_FORMAT,
  OPT_DEREGISTER,
  OPT_TTL,
  OPT_RESYNC,
  OPT_METRICS,
  OPT_HOSTNAME,
  OPT_DRY_RUN,
  OPT_TRACE_LATENCY,
  OPT_ONCE,
  OPT_TIMEOUT,
  OPT_POLICY_TIMEOUT,
  OPT_HOOK_TIMEOUT,
  OPT_HELP,
  OPT_VERSION,
};

static const struct option long_opts[] = {
    {"host-ip", required_argument, NULL, OPT_HOST_IP},
    {"etcd", required_argument, NULL, OPT_ETCD},
    {"etcd-api", required_argument, NULL, OPT_ETCD_API},
    {"etcd-cacert", required_argument, NULL, OPT_ETCD_CACERT},
    {"etcd-cert", required_argument, NULL, OPT_ETCD_CERT},
    {"etcd-key", required_argument, NULL, OPT_ETCD_KEY},
    {"etcd-user", required_argument, NULL, OPT_ETCD_USER},
    {"etcd-password-file", required_argument, NULL, OPT_ETCD_PASSWORD_FILE},
    {"docker", required_argument, NULL, OPT_DOCKER},
    {"policy", required_argument, NULL, OPT_POLICY},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    {"deregister-on-exit", no_argument, NULL, OPT_DEREGISTER},
    {"ttl", required_argument, NULL, OPT_TTL},
    {"resync", required_argument, NULL, OPT_RESYNC},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"hostname", required_argument, NULL, OPT_HOSTNAME},
    {"dry-run", no_argument, NULL, OPT_DRY_RUN},
    {"trace-latency", no_argument, NULL, OPT_TRACE_LATENCY},
    {"once", no_argument, NULL, OPT_ONCE},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"policy-timeout", required_argument, NULL, OPT_POLICY_TIMEOUT},
    {"hook-timeout", required_argument, NULL, OPT_HOOK_TIMEOUT},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

void config_usage(const char *prog) {
  printf(
      "Usage: %s [OPTIONS]\n"
      "       %s check [OPTIONS] POLICY|default [INSPECT.json|- ...]\n"
      "\n"
      "Keeps etcd in sync with the ports that running Docker containers "
      "publish.\n"
      "\n"
      "  --host-ip IP            this host's address, used in keys "
      "(HOST_IP; required)\n"
      "  --etcd LIST             comma-separated etcd endpoints, scheme "
      "optional\n"
      "                          (ETCD_ENDPOINT; default "
      "http://127.0.0.1:2379)\n"
      "  --etcd-api v2|v3        etcd API to write with (REGISTER_ETCD_API; "
      "default v2)\n"
      "  --etcd-cacert FILE      CA bundle for https endpoints "
      "(ETCDCTL_CACERT)\n"
      "  --etcd-cert FILE        client certificate (ETCDCTL_CERT)\n"
      "  --etcd-key FILE         client key (ETCDCTL_KEY)\n"
      "  --etcd-user USER[:PW]   etcd user and password (ETCDCTL_USER)\n"
      "  --etcd-password-file F  read the etcd password from F\n"
      "  --docker URL            Docker API: unix:///path or tcp://host:port\n"
      "                          (DOCKER_HOST; default "
      "unix:///var/run/docker.sock)\n"
      "  --policy FILE           Lua policy (REGISTER_POLICY; default: the "
      "embedded\n"
      "                          /registered schema)\n"
      "  --ttl SECONDS           write keys with a TTL and keep them fresh "
      "(REGISTER_TTL)\n"
      "  --resync SECONDS        compare Docker and etcd every SECONDS "
      "(REGISTER_RESYNC)\n"
      "  --deregister-on-exit    delete this host's keys on SIGTERM/SIGINT\n"
      "  --metrics ADDR          serve /metrics and /healthz on ADDR "
      "(host:port)\n"
      "  --hostname NAME         host name given to the policy (default: "
      "gethostname)\n"
      "  --policy-timeout MS     wall-clock limit of one policy call "
      "(default 1000)\n"
      "  --hook-timeout SECONDS  limit of one hook call, I/O waits "
      "included (default 60)\n"
      "  --log-level LEVEL       error, warn, info (default) or debug "
      "(REGISTER_LOG_LEVEL)\n"
      "  --log-format FORMAT     text (default) or json "
      "(REGISTER_LOG_FORMAT)\n"
      "  --dry-run               print what would be written instead of "
      "writing\n"
      "  --trace-latency         log where each event's time went, stage by "
      "stage\n"
      "  --once                  sync once; exit 0 when etcd matches, 1 when "
      "it does\n"
      "                          not within --timeout SECONDS (default 30)\n"
      "  --help, --version\n"
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
      prog, prog);
}

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

static int parse_docker(config_t *cfg, const char *url, char *err,
                        size_t errlen) {
  free(cfg->docker_url);
  free(cfg->docker_socket);
  free(cfg->docker_base);
  cfg->docker_url = xstrdup(url);
  cfg->docker_socket = NULL;
  cfg->docker_base = NULL;
  int tls = cfg->docker_cacert != NULL;
  if (strncmp(url, "unix://", 7) == 0 || url[0] == '/') {
    const char *path = url[0] == '/' ? url : url + 7;
    if (path[0] != '/') {
      snprintf(err, errlen,
               "Docker host \"%s\": a unix socket needs an absolute path", url);
      return -1;
    }
    cfg->docker_socket = xstrdup(path);
    cfg->docker_base = xstrdup("http://docker");
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
    snprintf(err, errlen,
             "Docker host \"%s\" is not unix:///path or tcp://host:port", url);
    return -1;
  }
  cfg->docker_base = xasprintf("%s://%.*s:%ld", tls ? "https" : "http",
                               (int)hostlen, host, port);
  return 0;
}

static int parse_seconds(const char *name, const char *v, long min, long *out,
                         char *err, size_t errlen) {
  if (util_parse_long(v, 0, 86400 * 365, out) < 0 || (*out && *out < min)) {
    snprintf(err, errlen,
             "%s \"%s\" is not a number of seconds (0, or %ld and up)", name, v,
             min);
    return -1;
  }
  return 0;
}

int config_policy_timeout(const char *name, const char *v, long *ms, char *err,
                          size_t errlen) {
  if (util_parse_long(v, 10, 600000, ms) < 0) {
    snprintf(err, errlen,
             "%s \"%s\" is not a number of milliseconds from 10 to 600000",
             name, v);
    return -1;
  }
  return 0;
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
static void docker_tls_from_env(config_t *cfg) {
  const char *verify = env("DOCKER_TLS_VERIFY");
  if (!verify || strcmp(verify, "0") == 0) return;
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
}

static int readable(const char *what, const char *path, char *err,
                    size_t errlen) {
  if (path && access(path, R_OK) != 0) {
    snprintf(err, errlen, "%s \"%s\": %s", what, path, strerror(errno));
    return -1;
  }
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
  if (cfg->etcd_password_file) {
    FILE *f = fopen(cfg->etcd_password_file, "r");
    char line[1024];
    if (!f) {
      snprintf(err, errlen, "--etcd-password-file \"%s\": %s",
               cfg->etcd_password_file, strerror(errno));
      return -1;
    }
    if (!fgets(line, sizeof line, f)) line[0] = '\0';
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    config_set_str(&cfg->etcd_password, line);
    memset(line, 0, sizeof line);
  }
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

int config_parse(config_t *cfg, int argc, char **argv, char *err,
                 size_t errlen) {
  memset(cfg, 0, sizeof *cfg);
  cfg->log_level = LOG_INFO;
  cfg->log_format = LOG_TEXT;
  cfg->etcd_api = ETCD_API_V2;
  cfg->once_timeout = 30;
  cfg->policy_timeout_ms = 1000;
  cfg->hook_timeout = 60;
  const char *v;

  /* Defaults and environment first; flags override them. */
  docker_tls_from_env(cfg);
  if (parse_etcd_list(cfg,
                      env("ETCD_ENDPOINT") ? env("ETCD_ENDPOINT")
                                           : "http://127.0.0.1:2379",
                      err, errlen) < 0) {
    char tmp[512];
    snprintf(tmp, sizeof tmp, "ETCD_ENDPOINT: %s", err);
    snprintf(err, errlen, "%s", tmp);
    return -1;
  }
  const char *dh = env("DOCKER_HOST");
  if (parse_docker(cfg, dh ? dh : "unix:///var/run/docker.sock", err, errlen) <
      0)
    return -1;
  config_set_str(&cfg->policy_file, env("REGISTER_POLICY"));
  config_set_str(&cfg->etcd_cacert, env("ETCDCTL_CACERT"));
  config_set_str(&cfg->etcd_cert, env("ETCDCTL_CERT"));
  config_set_str(&cfg->etcd_key, env("ETCDCTL_KEY"));
  config_set_str(&cfg->etcd_user, env("ETCDCTL_USER"));
  config_set_str(&cfg->etcd_password, env("ETCDCTL_PASSWORD"));
  const char *host_ip = env("HOST_IP");
  const char *host_ip_src = "HOST_IP";
  if ((v = env("REGISTER_LOG_LEVEL")) &&
      log_level_parse(v, &cfg->log_level) < 0) {
    snprintf(err, errlen,
             "REGISTER_LOG_LEVEL \"%s\" is not one of error, "
             "warn, info, debug",
             v);
    return -1;
  }
  if ((v = env("REGISTER_LOG_FORMAT")) &&
      log_format_parse(v, &cfg->log_format) < 0) {
    snprintf(err, errlen, "REGISTER_LOG_FORMAT \"%s\" is not text or json", v);
    return -1;
  }
  if ((v = env("REGISTER_TTL")) &&
      parse_seconds("REGISTER_TTL", v, 2, &cfg->ttl, err, errlen) < 0)
    return -1;
  if ((v = env("REGISTER_RESYNC")) &&
      parse_seconds("REGISTER_RESYNC", v, 1, &cfg->resync, err, errlen) < 0)
    return -1;
  const char *api = env("REGISTER_ETCD_API");
  const char *api_src = "REGISTER_ETCD_API";

  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
    switch (c) {
    case OPT_HOST_IP:
      host_ip = optarg;
      host_ip_src = "--host-ip";
      break;
    case OPT_ETCD:
      if (parse_etcd_list(cfg, optarg, err, errlen) < 0) {
        char tmp[512];
        snprintf(tmp, sizeof tmp, "--etcd: %s", err);
        snprintf(err, errlen, "%s", tmp);
        return -1;
      }
      break;
    case OPT_ETCD_API:
      api = optarg;
      api_src = "--etcd-api";
      break;
    case OPT_ETCD_CACERT:
      config_set_str(&cfg->etcd_cacert, optarg);
      break;
    case OPT_ETCD_CERT:
      config_set_str(&cfg->etcd_cert, optarg);
      break;
    case OPT_ETCD_KEY:
      config_set_str(&cfg->etcd_key, optarg);
      break;
    case OPT_ETCD_USER:
      config_set_str(&cfg->etcd_user, optarg);
      break;
    case OPT_ETCD_PASSWORD_FILE:
      config_set_str(&cfg->etcd_password_file, optarg);
      break;
    case OPT_DOCKER:
      if (parse_docker(cfg, optarg, err, errlen) < 0) return -1;
      break;
    case OPT_POLICY:
      config_set_str(&cfg->policy_file, optarg);
      break;
    case OPT_LOG_LEVEL:
      if (log_level_parse(optarg, &cfg->log_level) < 0) {
        snprintf(err, errlen,
                 "--log-level \"%s\" is not one of error, warn, info, debug",
                 optarg);
        return -1;
      }
      break;
    case OPT_LOG_FORMAT:
      if (log_format_parse(optarg, &cfg->log_format) < 0) {
        snprintf(err, errlen, "--log-format \"%s\" is not text or json",
                 optarg);
        return -1;
      }
      break;
    case OPT_DEREGISTER:
      cfg->deregister_on_exit = 1;
      break;
    case OPT_TTL:
      if (parse_seconds("--ttl", optarg, 2, &cfg->ttl, err, errlen) < 0)
        return -1;
      break;
    case OPT_RESYNC:
      if (parse_seconds("--resync", optarg, 1, &cfg->resync, err, errlen) < 0)
        return -1;
      break;
    case OPT_METRICS:
      config_set_str(&cfg->metrics_addr, optarg);
      break;
    case OPT_HOSTNAME:
      snprintf(cfg->hostname, sizeof cfg->hostname, "%s", optarg);
      break;
    case OPT_DRY_RUN:
      cfg->dry_run = 1;
      break;
    case OPT_TRACE_LATENCY:
      cfg->trace_latency = 1;
      break;
    case OPT_ONCE:
      cfg->once = 1;
      break;
    case OPT_TIMEOUT:
      if (parse_seconds("--timeout", optarg, 1, &cfg->once_timeout, err,
                        errlen) < 0 ||
          cfg->once_timeout == 0) {
        snprintf(err, errlen,
                 "--timeout \"%s\" is not a number of seconds "
                 "(1 and up)",
                 optarg);
        return -1;
      }
      break;
    case OPT_POLICY_TIMEOUT:
      if (config_policy_timeout("--policy-timeout", optarg,
                                &cfg->policy_timeout_ms, err, errlen) < 0)
        return -1;
      break;
    case OPT_HOOK_TIMEOUT:
      if (util_parse_long(optarg, 1, 3600, &cfg->hook_timeout) < 0) {
        snprintf(err, errlen,
                 "--hook-timeout \"%s\" is not a number of seconds from 1 "
                 "to 3600",
                 optarg);
        return -1;
      }
      break;
    case 'h':
    case OPT_HELP:
      config_usage(argv[0]);
      return 1;
    case OPT_VERSION:
      printf("register %s\n", REGISTER_VERSION);
      return 1;
    case ':':
      snprintf(err, errlen, "option %s needs a value", argv[optind - 1]);
      return -1;
    default:
      snprintf(err, errlen, "unknown option \"%s\" (see --help)",
               argv[optind - 1]);
      return -1;
    }
  }
  if (optind < argc) {
    snprintf(err, errlen, "unexpected argument \"%s\" (see --help)",
             argv[optind]);
    return -1;
  }

  if (!host_ip) {
    snprintf(err, errlen,
             "HOST_IP is not set or empty: give --host-ip IP, or set "
             "HOST_IP to this host's address (the systemd unit reads it from "
             "/etc/default/register or /etc/environment)");
    return -1;
  }
  if (!config_valid_ip(host_ip) || strlen(host_ip) >= sizeof cfg->host_ip) {
    snprintf(err, errlen, "%s \"%s\" is not an IPv4 or IPv6 address",
             host_ip_src, host_ip);
    return -1;
  }
  snprintf(cfg->host_ip, sizeof cfg->host_ip, "%s", host_ip);
  if (api) {
    if (strcmp(api, "v2") == 0 || strcmp(api, "2") == 0)
      cfg->etcd_api = ETCD_API_V2;
    else if (strcmp(api, "v3") == 0 || strcmp(api, "3") == 0)
      cfg->etcd_api = ETCD_API_V3;
    else {
      snprintf(err, errlen, "%s \"%s\" is not v2 or v3", api_src, api);
      return -1;
    }
  }
  if (finish_etcd_security(cfg, err, errlen) < 0) return -1;
  if (cfg->metrics_addr) {
    const char *host;
    size_t hostlen;
    long port;
    char ip[64];
    int ok =
        split_hostport(cfg->metrics_addr, &host, &hostlen, &port, 0) == 0 &&
        port > 0 && hostlen < sizeof ip;
    if (ok) {
      size_t skip = host[0] == '[';
      snprintf(ip, sizeof ip, "%.*s", (int)(hostlen - 2 * skip), host + skip);
      ok = config_valid_ip(ip);
    }
    if (!ok) {
      snprintf(err, errlen,
               "--metrics \"%s\" is not IP:PORT (e.g. "
               "127.0.0.1:9367)",
               cfg->metrics_addr);
      return -1;
    }
  }
  if (!cfg->hostname[0] && gethostname(cfg->hostname, sizeof cfg->hostname))
    snprintf(cfg->hostname, sizeof cfg->hostname, "localhost");
  cfg->hostname[sizeof cfg->hostname - 1] = '\0';
  return 0;
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
  free(cfg->docker_url);
  free(cfg->docker_socket);
  free(cfg->docker_base);
  free(cfg->docker_cacert);
  free(cfg->docker_cert);
  free(cfg->docker_key);
  free(cfg->policy_file);
  free(cfg->metrics_addr);
  memset(cfg, 0, sizeof *cfg);
}

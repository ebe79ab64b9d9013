/* config: command-line flags and environment variables, validated into one
 * struct.  Every problem is reported as one line naming the flag or
 * variable and what is wrong with it. */
#ifndef REGISTER_CONFIG_H
#define REGISTER_CONFIG_H

#include "log.h"

#include <stddef.h>

/* REGISTER_VERSION: project(VERSION) in CMakeLists.txt, through the header
 * CMake generates from cmake/register_version.h.in */
#include "register_version.h"

typedef enum { ETCD_API_V2 = 2, ETCD_API_V3 = 3 } etcd_api_t;

typedef struct {
  char host_ip[64];
  char hostname[256];

  char **etcd; /* normalised base URLs: scheme://host:port */
  size_t n_etcd;
  etcd_api_t etcd_api;
  char *etcd_cacert, *etcd_cert, *etcd_key;
  char *etcd_user;     /* the user name only */
  char *etcd_password; /* from USER:PASSWORD, ETCDCTL_PASSWORD or the file;
                          never logged */
  char *etcd_password_file;
  int etcd_discovery; /* learn the cluster's members from etcd (default 1) */
  char *etcd_fence;   /* --etcd-fence: a key, "off", or NULL: the default
                         (/register/fence/<HOST_IP>) */

  char *docker_url;    /* as given */
  char *docker_socket; /* unix socket path, or NULL for TCP */
  char *docker_base;   /* http(s)://host:port, or http://docker for unix */
  char *docker_cacert, *docker_cert, *docker_key; /* DOCKER_CERT_PATH */

  char *policy_file; /* NULL: the embedded default policy */
  log_level_t log_level;
  log_format_t log_format;
  int deregister_on_exit;
  long ttl;           /* seconds, 0 = keys never expire */
  long resync;        /* seconds, 0 = only on (re)connect */
  char *metrics_addr; /* host:port, or NULL */
  int dry_run;
  int trace_latency; /* log each event's stage times (trace.h) */
  int once;
  long once_timeout;      /* seconds --once waits for etcd to match */
  long policy_timeout_ms; /* wall clock of one policy call */
  long hook_timeout;      /* seconds: one hook call, waits included */
  char *check_allow;      /* --check-allow: comma-separated CIDRs, or NULL */
  char *policy_env;       /* comma-separated variable names, or NULL */

  /* `register watch` (cmd CONFIG_WATCH) */
  int cmd;              /* CONFIG_DAEMON or CONFIG_WATCH */
  char *watch_prefix;   /* the prefix followed, without a trailing '/' */
  char *render_file;    /* --render */
  char *out_file;       /* --out */
  char *check_cmd;      /* --check, or NULL */
  char *reload_cmd;     /* --reload, or NULL */
  long wait_min_ms;     /* --wait: quiet period after a change */
  long wait_max_ms;     /*         and the longest a change waits */
  long min_keys;        /* register watch: a listing with fewer keys is not
                           rendered, the last good file stays (0: any) */
  long command_timeout; /* seconds one --check or --reload may take */

  /* the fleet's policy in etcd: the daemon follows it (--policy-key),
   * `register policy ...` (cmd CONFIG_POLICY) changes it (--key) */
  char *policy_key;    /* without a trailing '/', or NULL */
  char *policy_pubkey; /* --policy-pubkey FILE, or NULL */
  int policy_unsigned; /* --policy-unsigned */
  char *state_dir;     /* --state-dir */
  char *policy_action; /* push, status, promote or rollback */
  char **policy_args;  /* the words after the action (push: FILE [INSPECT..]) */
  size_t n_policy_args;
  char *policy_sign;   /* --sign KEYFILE, or NULL */
  char *policy_canary; /* --canary IP,...|N%, or NULL */
  int policy_json;     /* --json */
} config_t;

/* bits: an option names the commands that take it */
enum { CONFIG_DAEMON = 1, CONFIG_WATCH = 2, CONFIG_POLICY = 4 };

/* One network of --check-allow.  Every address is held as IPv6, IPv4 as
 * ::ffff:a.b.c.d (bits counted from the start of the 16 bytes: an IPv4
 * /8 is 104 bits), so that an IPv4-mapped IPv6 address is the IPv4 one. */
typedef struct {
  unsigned char addr[16];
  int bits;
} config_cidr_t;

/* Returns 0 to run, 1 when --help/--version was printed (exit 0), and -1
 * with a one-line message in err (exit 2). */
int config_parse(config_t *cfg, int argc, char **argv, char *err,
                 size_t errlen);
/* `register watch PREFIX ...`: argv[0] is "watch"; the same returns. */
int config_parse_watch(config_t *cfg, int argc, char **argv, char *err,
                       size_t errlen);
/* `register policy ACTION ...`: argv[0] is "policy"; the same returns. */
int config_parse_policy(config_t *cfg, int argc, char **argv, char *err,
                        size_t errlen);
void config_free(config_t *cfg);
void config_usage(const char *prog);

/* A Docker URL (--docker, DOCKER_HOST): unix:///path (or /path),
 * tcp://host[:port] (2375, or 2376 when tls), http://, https://.  Sets
 * *socket (unix; else NULL) and *base ("http://docker", or
 * "http(s)://host:port"), both the caller's to free.  0, or -1 with one
 * line naming what (e.g. "Docker host") and the URL. */
int config_docker_url(const char *what, const char *url, int tls, char **socket,
                      char **base, char *err, size_t errlen);
/* Exposed for tests: normalises one etcd endpoint ("10.1.2.3:4001",
 * "https://[::1]:2379/") to scheme://host:port. */
int config_parse_endpoint(const char *in, char **out, char *err, size_t errlen);
int config_valid_ip(const char *s);
/* --policy-timeout MS (also for `register check`): 10..600000. */
/* A list of networks, "10.0.0.0/8, fd00::/8,192.0.2.7" (a bare IP is a
 * /32 or /128; empty entries are skipped), into *out (the caller frees
 * it; NULL when empty) and *n.  0, or -1 with one line naming the bad
 * entry. */
int config_parse_cidrs(const char *list, config_cidr_t **out, size_t *n,
                       char *err, size_t errlen);
/* An address ("10.1.2.3", "::1") as config_cidr_t holds it: 0 or -1. */
int config_addr16(const char *ip, unsigned char out[16]);
/* Whether addr (as config_addr16 makes it) is in network c. */
int config_cidr_has(const config_cidr_t *c, const unsigned char addr[16]);
/* --policy-env NAME,... (also for `register check`): *out becomes "A,B"
 * (a copy; NULL for none), or -1 with a one-line error. */
int config_policy_env(const char *name, const char *v, char **out, char *err,
                      size_t errlen);
int config_policy_timeout(const char *name, const char *v, long *ms, char *err,
                          size_t errlen);

#endif

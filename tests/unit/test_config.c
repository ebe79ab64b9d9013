/* config: flags, environment, endpoints, one-line errors. */
#include "config.h"
#include "test.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int parse(config_t *c, char *err, size_t n, int argc, ...) {
  char *argv[32] = {"register"};
  va_list ap;
  va_start(ap, argc);
  for (int i = 1; i < argc; i++)
    argv[i] = va_arg(ap, char *);
  va_end(ap);
  return config_parse(c, argc, argv, err, n);
}

/* Every variable config_parse reads. */
static const char *const env_vars[] = {"HOST_IP",
                                       "ETCD_ENDPOINT",
                                       "REGISTER_ETCD_API",
                                       "REGISTER_ETCD_DISCOVERY",
                                       "REGISTER_ETCD_FENCE",
                                       "ETCDCTL_CACERT",
                                       "ETCDCTL_CERT",
                                       "ETCDCTL_KEY",
                                       "ETCDCTL_USER",
                                       "ETCDCTL_PASSWORD",
                                       "DOCKER_TLS_VERIFY",
                                       "DOCKER_CERT_PATH",
                                       "DOCKER_HOST",
                                       "REGISTER_POLICY",
                                       "REGISTER_LOG_LEVEL",
                                       "REGISTER_LOG_FORMAT",
                                       "REGISTER_TTL",
                                       "REGISTER_RESYNC",
                                       "REGISTER_POLICY_ENV",
                                       "REGISTER_CHECK_ALLOW",
                                       "REGISTER_POLICY_UNSIGNED"};

static void clean_env(void) {
  for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
    unsetenv(env_vars[i]);
}

/* What fn(arg) prints on stdout. */
static char *stdout_of(void (*fn)(void *), void *arg) {
  fflush(stdout);
  FILE *tmp = tmpfile();
  ASSERT(tmp);
  int saved = dup(STDOUT_FILENO);
  ASSERT(saved >= 0 && dup2(fileno(tmp), STDOUT_FILENO) >= 0);
  fn(arg);
  fflush(stdout);
  ASSERT(dup2(saved, STDOUT_FILENO) >= 0);
  close(saved);
  long n = ftell(tmp);
  ASSERT(n >= 0);
  char *out = calloc(1, (size_t)n + 1);
  ASSERT(out);
  rewind(tmp);
  ASSERT(fread(out, 1, (size_t)n, tmp) == (size_t)n);
  fclose(tmp);
  return out;
}

static void usage(void *prog) {
  config_usage(prog);
}

static void endpoint(const char *in, const char *want) {
  char *out = NULL, err[200];
  if (config_parse_endpoint(in, &out, err, sizeof err) < 0)
    FAIL("%s: %s", in, err);
  ASSERT_STR_EQ(out, want);
  free(out);
}

static void bad_endpoint(const char *in, const char *why) {
  char *out = NULL, err[200];
  ASSERT(config_parse_endpoint(in, &out, err, sizeof err) < 0);
  ASSERT_CONTAINS(err, why);
}

TEST(endpoints) {
  endpoint("10.1.2.3:4001", "http://10.1.2.3:4001"); /* scheme optional */
  endpoint("http://127.0.0.1:2379/", "http://127.0.0.1:2379");
  endpoint("https://etcd.example.com", "https://etcd.example.com:2379");
  endpoint(" [::1]:2379 ", "http://[::1]:2379");
  endpoint("etcd-0_a.local", "http://etcd-0_a.local:2379");
  bad_endpoint("ftp://x:1", "scheme must be http or https");
  bad_endpoint("10.1.2.3:99999", "is not [scheme://]host[:port]");
  bad_endpoint("10.1.2.3:", "is not");
  bad_endpoint("http://", "is not");
  bad_endpoint("http://a b:1", "is not");
  bad_endpoint("http://h:1/v2/keys", "a path is not allowed");
}

TEST(defaults_and_environment) {
  config_t c;
  char err[300];
  clean_env();
  setenv("HOST_IP", "10.0.0.1", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT_STR_EQ(c.host_ip, "10.0.0.1");
  ASSERT_EQ(c.n_etcd, 1);
  ASSERT_STR_EQ(c.etcd[0], "http://127.0.0.1:2379");
  ASSERT_STR_EQ(c.docker_socket, "/var/run/docker.sock");
  ASSERT(c.policy_file == NULL);
  ASSERT_EQ(c.etcd_api, ETCD_API_V2);
  ASSERT_EQ(c.ttl, 0);
  config_free(&c);

  setenv("ETCD_ENDPOINT", "10.1.2.3:4001, https://10.1.2.4:4001", 1);
  setenv("DOCKER_HOST", "tcp://127.0.0.1:2375", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT_EQ(c.n_etcd, 2);
  ASSERT_STR_EQ(c.etcd[0], "http://10.1.2.3:4001");
  ASSERT_STR_EQ(c.etcd[1], "https://10.1.2.4:4001");
  ASSERT(c.docker_socket == NULL);
  ASSERT_STR_EQ(c.docker_base, "http://127.0.0.1:2375");
  config_free(&c);

  /* flags win over the environment */
  ASSERT_EQ(parse(&c, err, sizeof err, 7, "--host-ip", "fd00::5", "--etcd",
                  "127.0.0.1:1", "--docker", "unix:///tmp/d.sock"),
            0);
  ASSERT_STR_EQ(c.host_ip, "fd00::5");
  ASSERT_EQ(c.n_etcd, 1);
  ASSERT_STR_EQ(c.docker_socket, "/tmp/d.sock");
  config_free(&c);
  clean_env();
}

TEST(bad_input_is_one_line) {
  config_t c;
  char err[300];
  clean_env();
  ASSERT_EQ(parse(&c, err, sizeof err, 1), -1);
  ASSERT_CONTAINS(err, "HOST_IP is not set");
  config_free(&c);
  setenv("HOST_IP", "10.0.0.256", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), -1);
  ASSERT_STR_EQ(err, "HOST_IP \"10.0.0.256\" is not an IPv4 or IPv6 address");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--host-ip", "x"), -1);
  ASSERT_STR_EQ(err, "--host-ip \"x\" is not an IPv4 or IPv6 address");
  config_free(&c);
  setenv("HOST_IP", "10.0.0.1", 1);
  struct {
    const char *flag, *val, *why;
  } cases[] = {
      {"--ttl", "abc", "--ttl \"abc\" is not a number of seconds"},
      {"--ttl", "1", "--ttl \"1\" is not a number of seconds"},
      {"--resync", "-5", "--resync \"-5\" is not a number"},
      {"--log-level", "loud", "--log-level \"loud\" is not one of"},
      {"--etcd-api", "v4", "--etcd-api \"v4\" is not v2 or v3"},
      {"--docker", "ssh://x", "Docker host \"ssh://x\" is not"},
      {"--docker", "unix://rel/path", "needs an absolute path"},
      {"--etcd", ",", "--etcd: etcd endpoint list \",\" is empty"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ASSERT_EQ(parse(&c, err, sizeof err, 3, cases[i].flag, cases[i].val), -1);
    ASSERT_CONTAINS(err, cases[i].why);
    ASSERT(strchr(err, '\n') == NULL);
    config_free(&c);
  }
  ASSERT_EQ(parse(&c, err, sizeof err, 2, "--nope"), -1);
  ASSERT_STR_EQ(err, "unknown option \"--nope\" (see --help)");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 2, "--ttl"), -1);
  ASSERT_STR_EQ(err, "option --ttl needs a value");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 2, "stray"), -1);
  ASSERT_CONTAINS(err, "unexpected argument \"stray\"");
  config_free(&c);
  setenv("ETCD_ENDPOINT", "gopher://x", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), -1);
  ASSERT_CONTAINS(err, "ETCD_ENDPOINT: etcd endpoint \"gopher://x\"");
  config_free(&c);
  clean_env();
}

/* A flag's variable says yes or no: REGISTER_POLICY_UNSIGNED=0 is off
 * (it turned unsigned policies on: any value did). */
TEST(a_flags_variable_is_yes_or_no) {
  config_t c;
  char err[300];
  clean_env();
  setenv("HOST_IP", "10.0.0.1", 1);
  const char *no[] = {"0", "false", "no", "off", "FALSE"};
  for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
    setenv("REGISTER_POLICY_UNSIGNED", no[i], 1);
    ASSERT_EQ(parse(&c, err, sizeof err, 3, "--policy-key", "/p"), 0);
    ASSERT_EQ(c.policy_unsigned, 0);
    config_free(&c);
  }
  const char *yes[] = {"1", "true", "yes", "on", "Yes"};
  for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
    setenv("REGISTER_POLICY_UNSIGNED", yes[i], 1);
    ASSERT_EQ(parse(&c, err, sizeof err, 3, "--policy-key", "/p"), 0);
    ASSERT_EQ(c.policy_unsigned, 1);
    config_free(&c);
  }
  setenv("REGISTER_POLICY_UNSIGNED", "maybe", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--policy-key", "/p"), -1);
  ASSERT_STR_EQ(err, "REGISTER_POLICY_UNSIGNED \"maybe\" is neither yes (1, "
                     "true, yes, on) nor no (0, false, no, off)");
  config_free(&c);
  /* the flag itself is yes, whatever the variable says */
  setenv("REGISTER_POLICY_UNSIGNED", "0", 1);
  ASSERT_EQ(
      parse(&c, err, sizeof err, 4, "--policy-key", "/p", "--policy-unsigned"),
      0);
  ASSERT_EQ(c.policy_unsigned, 1);
  config_free(&c);
  clean_env();
}

TEST(docker_tls_from_environment) {
  config_t c;
  char err[300];
  clean_env();
  setenv("HOST_IP", "10.0.0.1", 1);
  char dir[] = "/tmp/register-test-certs-XXXXXX";
  ASSERT(mkdtemp(dir));
  setenv("DOCKER_TLS_VERIFY", "1", 1);
  setenv("DOCKER_CERT_PATH", dir, 1);
  setenv("DOCKER_HOST", "tcp://10.0.0.2", 1);
  /* the files must be there */
  ASSERT_EQ(parse(&c, err, sizeof err, 1), -1);
  ASSERT_CONTAINS(err, "DOCKER_CERT_PATH ca.pem");
  ASSERT_CONTAINS(err, "No such file or directory");
  config_free(&c);
  const char *names[] = {"ca.pem", "cert.pem", "key.pem"};
  char path[3][128];
  for (int i = 0; i < 3; i++) {
    snprintf(path[i], sizeof path[i], "%s/%s", dir, names[i]);
    FILE *f = fopen(path[i], "w");
    ASSERT(f);
    fclose(f);
  }
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT_STR_EQ(c.docker_base, "https://10.0.0.2:2376");
  ASSERT_STR_EQ(c.docker_cacert, path[0]);
  ASSERT_STR_EQ(c.docker_cert, path[1]);
  ASSERT_STR_EQ(c.docker_key, path[2]);
  config_free(&c);
  /* etcd credentials: USER:PASSWORD splits, a password file wins */
  unsetenv("DOCKER_TLS_VERIFY");
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-user", "reg:s3cr:et"), 0);
  ASSERT_STR_EQ(c.etcd_user, "reg");
  ASSERT_STR_EQ(c.etcd_password, "s3cr:et");
  config_free(&c);
  FILE *pf = fopen(path[0], "w");
  ASSERT(pf);
  fputs("frompass\n", pf);
  fclose(pf);
  ASSERT_EQ(parse(&c, err, sizeof err, 5, "--etcd-user", "reg:x",
                  "--etcd-password-file", path[0]),
            0);
  ASSERT_STR_EQ(c.etcd_password, "frompass");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-cacert", "/nonexistent/ca"),
            -1);
  ASSERT_CONTAINS(err, "--etcd-cacert \"/nonexistent/ca\":");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-cert", path[1]), -1);
  ASSERT_CONTAINS(err, "--etcd-cert and --etcd-key go together");
  config_free(&c);
  for (int i = 0; i < 3; i++)
    unlink(path[i]);
  rmdir(dir);
  unsetenv("DOCKER_CERT_PATH");
  clean_env();
}

TEST(defaults) {
  config_t c;
  char err[300];
  clean_env();
  setenv("HOST_IP", "10.0.0.1", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT_EQ(c.log_level, LOG_INFO);
  ASSERT_EQ(c.log_format, LOG_TEXT);
  ASSERT_EQ(c.etcd_api, ETCD_API_V2);
  ASSERT_STR_EQ(c.docker_url, "unix:///var/run/docker.sock");
  ASSERT_STR_EQ(c.docker_base, "http://docker");
  ASSERT(c.docker_cacert == NULL && c.etcd_user == NULL);
  ASSERT(c.etcd_password == NULL && c.metrics_addr == NULL);
  ASSERT_EQ(c.ttl, 0);
  ASSERT_EQ(c.resync, 0);
  ASSERT_EQ(c.once_timeout, 30);
  ASSERT_EQ(c.policy_timeout_ms, 1000);
  ASSERT_EQ(c.hook_timeout, 60);
  ASSERT(!c.deregister_on_exit && !c.dry_run && !c.trace_latency && !c.once);
  ASSERT(c.hostname[0] != '\0'); /* gethostname */
  ASSERT_EQ(c.etcd_discovery, 1);
  config_free(&c);

  /* member discovery: on by default, off by flag or variable */
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-discovery", "off"), 0);
  ASSERT_EQ(c.etcd_discovery, 0);
  config_free(&c);
  setenv("REGISTER_ETCD_DISCOVERY", "off", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT_EQ(c.etcd_discovery, 0);
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-discovery", "on"), 0);
  ASSERT_EQ(c.etcd_discovery, 1);
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-discovery", "maybe"), -1);
  ASSERT_CONTAINS(err, "--etcd-discovery \"maybe\" is not on or off");
  config_free(&c); /* what was parsed before the error, as main.c does */

  /* the write fence: the default (NULL: app.c names it), a key, off */
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT(c.etcd_fence == NULL);
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-fence", "/f/h1/"), 0);
  ASSERT_STR_EQ(c.etcd_fence, "/f/h1");
  config_free(&c);
  setenv("REGISTER_ETCD_FENCE", "off", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT_STR_EQ(c.etcd_fence, "off");
  config_free(&c);
  unsetenv("REGISTER_ETCD_FENCE");
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-fence", "fence"), -1);
  ASSERT_CONTAINS(err, "--etcd-fence \"fence\" must be an absolute key path");
  config_free(&c);
  clean_env();
}

/* Each variable, then each flag over it; the last flag wins. */
TEST(environment_then_flags) {
  config_t c;
  char err[300];
  clean_env();
  setenv("HOST_IP", "10.0.0.1", 1);
  setenv("REGISTER_ETCD_API", "3", 1);
  setenv("REGISTER_POLICY", "/p/env.lua", 1);
  setenv("REGISTER_LOG_LEVEL", "warning", 1);
  setenv("REGISTER_LOG_FORMAT", "json", 1);
  setenv("REGISTER_TTL", "10", 1);
  setenv("REGISTER_RESYNC", "5", 1);
  setenv("ETCDCTL_USER", "envuser", 1);
  setenv("ETCDCTL_PASSWORD", "envpw", 1);
  setenv("ETCDCTL_KEY", "", 1); /* empty is unset */
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT_STR_EQ(c.host_ip, "10.0.0.1");
  ASSERT_EQ(c.etcd_api, ETCD_API_V3);
  ASSERT_STR_EQ(c.policy_file, "/p/env.lua");
  ASSERT_EQ(c.log_level, LOG_WARN);
  ASSERT_EQ(c.log_format, LOG_JSON);
  ASSERT_EQ(c.ttl, 10);
  ASSERT_EQ(c.resync, 5);
  ASSERT_STR_EQ(c.etcd_user, "envuser");
  ASSERT_STR_EQ(c.etcd_password, "envpw");
  ASSERT(c.etcd_key == NULL);
  config_free(&c);

  char *argv[] = {"register",
                  "--host-ip",
                  "10.9.9.9",
                  "--host-ip=10.0.0.2",
                  "--etcd-api",
                  "v2",
                  "--policy",
                  "/p/flag.lua",
                  "--log-level",
                  "debug",
                  "--log-format",
                  "text",
                  "--ttl",
                  "0",
                  "--resync",
                  "7",
                  "--etcd-user",
                  "flaguser:flagpw",
                  "--deregister-on-exit",
                  "--dry-run",
                  "--trace-latency",
                  "--once",
                  "--timeout",
                  "5",
                  "--policy-timeout",
                  "600000",
                  "--hook-timeout",
                  "3600",
                  "--hostname",
                  "node7",
                  "--metrics",
                  "[::1]:9367"};
  ASSERT_EQ(
      config_parse(&c, sizeof argv / sizeof argv[0], argv, err, sizeof err), 0);
  ASSERT_STR_EQ(c.host_ip, "10.0.0.2");
  ASSERT_EQ(c.etcd_api, ETCD_API_V2);
  ASSERT_STR_EQ(c.policy_file, "/p/flag.lua");
  ASSERT_EQ(c.log_level, LOG_DEBUG);
  ASSERT_EQ(c.log_format, LOG_TEXT);
  ASSERT_EQ(c.ttl, 0);
  ASSERT_EQ(c.resync, 7);
  ASSERT_STR_EQ(c.etcd_user, "flaguser");
  ASSERT_STR_EQ(c.etcd_password, "flagpw"); /* USER:PW wins the variable */
  ASSERT(c.deregister_on_exit && c.dry_run && c.trace_latency && c.once);
  ASSERT_EQ(c.once_timeout, 5);
  ASSERT_EQ(c.policy_timeout_ms, 600000);
  ASSERT_EQ(c.hook_timeout, 3600);
  ASSERT_STR_EQ(c.hostname, "node7");
  ASSERT_STR_EQ(c.metrics_addr, "[::1]:9367");
  config_free(&c);
  clean_env();
}

/* The exact line for each option, from a flag and from its variable. */
TEST(every_message) {
  config_t c;
  char err[300];
  struct {
    const char *var, *flag, *val, *want;
  } cases[] = {
      {"REGISTER_TTL", "--ttl", "1",
       "\"1\" is not a number of seconds (0, or 2 and up)"},
      {"REGISTER_RESYNC", "--resync", "x",
       "\"x\" is not a number of seconds (0, or 1 and up)"},
      {NULL, "--timeout", "0", "\"0\" is not a number of seconds (1 and up)"},
      {NULL, "--hook-timeout", "3601",
       "\"3601\" is not a number of seconds from 1 to 3600"},
      {NULL, "--policy-timeout", "9",
       "\"9\" is not a number of milliseconds from 10 to 600000"},
      {"REGISTER_LOG_LEVEL", "--log-level", "loud",
       "\"loud\" is not one of error, warn, info, debug"},
      {"REGISTER_LOG_FORMAT", "--log-format", "xml",
       "\"xml\" is not text or json"},
      {"REGISTER_ETCD_API", "--etcd-api", "v9", "\"v9\" is not v2 or v3"},
      {"HOST_IP", "--host-ip", "10.1",
       "\"10.1\" is not an IPv4 or IPv6 address"},
      {"ETCD_ENDPOINT", "--etcd", "h:0",
       ": etcd endpoint \"h:0\" is not [scheme://]host[:port]"},
      {NULL, "--metrics", "1.2.3.4",
       "\"1.2.3.4\" is not IP:PORT (e.g. 127.0.0.1:9367)"},
      {"REGISTER_CHECK_ALLOW", "--check-allow", "10.0.0.0/8,10.1/16",
       ": \"10.1/16\" is not an IPv4 or IPv6 address or network "
       "(10.0.0.0/8, fd00::/8, 192.0.2.7)"},
      {"REGISTER_POLICY_ENV", "--policy-env", "HOME,2X",
       ": \"2X\" is not an environment variable name "
       "([A-Za-z_][A-Za-z0-9_]*)"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char want[300];
    clean_env();
    setenv("HOST_IP", "10.0.0.1", 1);
    snprintf(want, sizeof want, "%s %s", cases[i].flag, cases[i].want);
    if (cases[i].want[0] == ':')
      snprintf(want, sizeof want, "%s%s", cases[i].flag, cases[i].want);
    ASSERT_EQ(parse(&c, err, sizeof err, 3, cases[i].flag, cases[i].val), -1);
    ASSERT_STR_EQ(err, want);
    config_free(&c);
    if (!cases[i].var) continue;
    setenv(cases[i].var, cases[i].val, 1);
    snprintf(want, sizeof want, "%s %s", cases[i].var, cases[i].want);
    if (cases[i].want[0] == ':')
      snprintf(want, sizeof want, "%s%s", cases[i].var, cases[i].want);
    ASSERT_EQ(parse(&c, err, sizeof err, 1), -1);
    ASSERT_STR_EQ(err, want);
    config_free(&c);
  }
  clean_env();
  setenv("HOST_IP", "10.0.0.1", 1);
  long ms;
  ASSERT_EQ(
      config_policy_timeout("policy_timeout", "600001", &ms, err, sizeof err),
      -1);
  ASSERT_STR_EQ(err, "policy_timeout \"600001\" is not a number of "
                     "milliseconds from 10 to 600000");
  ASSERT_EQ(config_policy_timeout("x", "10", &ms, err, sizeof err), 0);
  ASSERT_EQ(ms, 10);
  setenv("DOCKER_HOST", "ssh://x", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), -1);
  ASSERT_STR_EQ(err, "Docker host \"ssh://x\" is not unix:///path or "
                     "tcp://host:port");
  config_free(&c);
  unsetenv("DOCKER_HOST");
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-user", ":pw"), -1);
  ASSERT_STR_EQ(err, "--etcd-user: the user name is empty");
  config_free(&c);
  setenv("ETCDCTL_PASSWORD", "pw", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), -1);
  ASSERT_STR_EQ(err, "an etcd password is given but no --etcd-user");
  config_free(&c);
  unsetenv("ETCDCTL_PASSWORD");
  ASSERT_EQ(
      parse(&c, err, sizeof err, 3, "--etcd-password-file", "/nonexistent/pw"),
      -1);
  ASSERT_STR_EQ(err,
                "--etcd-password-file \"/nonexistent/pw\": No such file or "
                "directory");
  config_free(&c);
  /* a flag without a value takes none; a short option that is not -h */
  ASSERT_EQ(parse(&c, err, sizeof err, 2, "--once=1"), -1);
  ASSERT_STR_EQ(err, "unknown option \"--once=1\" (see --help)");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 2, "-x"), -1);
  ASSERT_STR_EQ(err, "unknown option \"-x\" (see --help)");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--dry-run", "stray"), -1);
  ASSERT_STR_EQ(err, "unexpected argument \"stray\" (see --help)");
  config_free(&c);
  clean_env();
}

static int in(const char *list, const char *ip) {
  config_cidr_t *c;
  size_t n;
  char err[200];
  unsigned char a[16];
  if (config_parse_cidrs(list, &c, &n, err, sizeof err) < 0)
    FAIL("%s: %s", list, err);
  ASSERT_EQ(config_addr16(ip, a), 0);
  int found = 0;
  for (size_t i = 0; i < n; i++)
    found |= config_cidr_has(&c[i], a);
  free(c);
  return found;
}

TEST(check_allow_and_policy_env) {
  config_t c;
  char err[300];
  clean_env();
  setenv("HOST_IP", "10.0.0.1", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT(c.check_allow == NULL); /* none by default */
  ASSERT(c.policy_env == NULL);
  config_free(&c);
  setenv("REGISTER_CHECK_ALLOW", "10.0.0.0/8, fd00::/8,192.0.2.7", 1);
  setenv("REGISTER_POLICY_ENV", " TZ , LANG,_X1,", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 1), 0);
  ASSERT_STR_EQ(c.check_allow, "10.0.0.0/8, fd00::/8,192.0.2.7");
  ASSERT_STR_EQ(c.policy_env, "TZ,LANG,_X1");
  config_free(&c);
  /* a flag wins over the environment; an empty list is none */
  ASSERT_EQ(parse(&c, err, sizeof err, 5, "--check-allow", "::1",
                  "--policy-env", " , "),
            0);
  ASSERT_STR_EQ(c.check_allow, "::1");
  ASSERT(c.policy_env == NULL);
  config_free(&c);
  static const char *const bad_cidrs[] = {
      "10.0.0.0/33", "fd00::/129",   "10.0.0.0/",
      "10.0.0.0/-1", "host.example", "10.0.0.0/8/8",
      "10.0.0 .0",   "10.0.0.0/ 8",  "::/x"};
  for (size_t i = 0; i < ARRAY_SIZE(bad_cidrs); i++) {
    ASSERT_EQ(parse(&c, err, sizeof err, 3, "--check-allow", bad_cidrs[i]), -1);
    ASSERT_CONTAINS(err, "--check-allow: \"");
    ASSERT_CONTAINS(err, "is not an IPv4 or IPv6 address or network");
    ASSERT(!strchr(err, '\n'));
    config_free(&c);
  }
  static const char *const bad_names[] = {"A-B", "A=B", "1A", "A B",
                                          "\xc3\xa9"};
  for (size_t i = 0; i < ARRAY_SIZE(bad_names); i++) {
    ASSERT_EQ(parse(&c, err, sizeof err, 3, "--policy-env", bad_names[i]), -1);
    ASSERT_CONTAINS(err, "is not an environment variable name");
    config_free(&c);
  }
  clean_env();

  /* membership: IPv4 in IPv4 networks (also written as IPv4-mapped IPv6),
   * IPv6 in IPv6 ones, a bare IP is one address */
  ASSERT(in("10.0.0.0/8", "10.255.1.2"));
  ASSERT(!in("10.0.0.0/8", "11.0.0.1"));
  ASSERT(in("10.0.0.0/8", "::ffff:10.9.9.9"));
  ASSERT(!in("10.0.0.0/8", "::a09:909")); /* IPv4-compatible is not IPv4 */
  ASSERT(in("172.16.0.0/12", "172.31.255.255"));
  ASSERT(!in("172.16.0.0/12", "172.32.0.0"));
  ASSERT(in("192.0.2.7", "192.0.2.7"));
  ASSERT(!in("192.0.2.7", "192.0.2.8"));
  ASSERT(in("0.0.0.0/0", "8.8.8.8"));
  ASSERT(!in("0.0.0.0/0", "2001:db8::1"));
  ASSERT(in("::/0", "2001:db8::1"));
  ASSERT(in("fd00::/8", "fdff::1"));
  ASSERT(!in("fd00::/8", "fe00::1"));
  ASSERT(in("2001:db8::/33", "2001:db8:7fff::1"));
  ASSERT(!in("2001:db8::/33", "2001:db8:8000::1"));
  ASSERT(!in("", "10.0.0.1"));
}

/* Which of several problems is the error: the environment in --help's
 * order, then the flags in argv's order, then --host-ip, --etcd-api, the
 * etcd credentials and files, --metrics. */
TEST(which_error_comes_first) {
  config_t c;
  char err[300];
  clean_env();
  setenv("REGISTER_LOG_LEVEL", "loud", 1);
  setenv("REGISTER_TTL", "x", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--ttl", "5"), -1);
  ASSERT_CONTAINS(err, "REGISTER_LOG_LEVEL \"loud\"");
  config_free(&c);
  unsetenv("REGISTER_LOG_LEVEL");
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--ttl", "5"), -1);
  ASSERT_CONTAINS(err, "REGISTER_TTL \"x\"");
  config_free(&c);
  unsetenv("REGISTER_TTL");
  /* no HOST_IP, a bad --etcd-api: a bad flag is still the first error */
  ASSERT_EQ(parse(&c, err, sizeof err, 6, "--etcd-api", "v9", "--ttl", "x",
                  "--resync", "y"),
            -1);
  ASSERT_CONTAINS(err, "--ttl \"x\"");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 3, "--etcd-api", "v9"), -1);
  ASSERT_CONTAINS(err, "HOST_IP is not set");
  config_free(&c);
  ASSERT_EQ(parse(&c, err, sizeof err, 7, "--metrics", "x", "--etcd-user",
                  ":pw", "--etcd-api", "v9"),
            -1);
  ASSERT_CONTAINS(err, "HOST_IP is not set");
  config_free(&c);
  setenv("HOST_IP", "10.0.0.1", 1);
  ASSERT_EQ(parse(&c, err, sizeof err, 7, "--metrics", "x", "--etcd-user",
                  ":pw", "--etcd-api", "v9"),
            -1);
  ASSERT_CONTAINS(err, "--etcd-api \"v9\"");
  config_free(&c);
  ASSERT_EQ(
      parse(&c, err, sizeof err, 5, "--metrics", "x", "--etcd-user", ":pw"),
      -1);
  ASSERT_CONTAINS(err, "--etcd-user: the user name is empty");
  config_free(&c);
  clean_env();
}

static void parse_help(void *flag) {
  config_t c;
  char err[300];
  ASSERT_EQ(parse(&c, err, sizeof err, 2, (char *)flag), 1);
  config_free(&c);
}

/* --help lists every flag (each one getopt knows), every variable and
 * every default, in 80 columns; --help, -h and --version exit 0. */
TEST(help_lists_every_option) {
  clean_env();
  char *help = stdout_of(usage, "register");
  const char *flags[] = {"--host-ip IP",
                         "--etcd LIST",
                         "--etcd-api v2|v3",
                         "--etcd-discovery on|off",
                         "--etcd-cacert FILE",
                         "--etcd-cert FILE",
                         "--etcd-key FILE",
                         "--etcd-fence KEY|off",
                         "--etcd-user USER[:PW]",
                         "--etcd-password-file F",
                         "--docker URL",
                         "--policy FILE",
                         "--policy-key KEY",
                         "--policy-pubkey FILE",
                         "--policy-unsigned",
                         "--state-dir DIR",
                         "--log-level LEVEL",
                         "--log-format FORMAT",
                         "--ttl SECONDS",
                         "--resync SECONDS",
                         "--deregister-on-exit",
                         "--metrics ADDR",
                         "--hostname NAME",
                         "--policy-timeout MS",
                         "--hook-timeout SECONDS",
                         "--policy-env NAMES",
                         "--check-allow CIDRS",
                         "--dry-run",
                         "--trace-latency",
                         "--once",
                         "--timeout SECONDS",
                         "-h, --help",
                         "--version"};
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    char line[80];
    snprintf(line, sizeof line, "\n  %s ", flags[i]);
    ASSERT_CONTAINS(help, line);
  }
  for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
    ASSERT_CONTAINS(help, env_vars[i]);
  const char *defaults[] = {
      "(HOST_IP; required)",
      "default http://127.0.0.1:2379",
      "(REGISTER_ETCD_API; default v2)",
      "(REGISTER_ETCD_DISCOVERY; default on)",
      "(REGISTER_ETCD_FENCE; default:",
      "(DOCKER_HOST; default unix:///var/run/docker.sock)",
      "default: the embedded",
      "(REGISTER_LOG_LEVEL; default info)",
      "(REGISTER_LOG_FORMAT; default text)",
      "(REGISTER_TTL; default 0)",
      "(REGISTER_RESYNC; default 0)",
      "(default: gethostname)",
      "(default 1000)",
      "(default 60)",
      "(default 30)",
      "(REGISTER_POLICY_ENV; default: none)",
      "(REGISTER_CHECK_ALLOW; default: none)"};
  for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
    ASSERT_CONTAINS(help, defaults[i]);
  ASSERT_CONTAINS(help, "Usage: register [OPTIONS]\n       register check "
                        "[OPTIONS] POLICY|default [INSPECT.json|- ...]\n");
  ASSERT_CONTAINS(help, "\nregister check: a policy tried on inspect");
  ASSERT_CONTAINS(help, "  --container NAME|ID     inspect it on the engine");

  /* every "  --flag" line of the daemon's part is a flag config_parse
   * knows: with a value when --help shows one */
  size_t known = 0;
  char *end = strstr(help, "\nregister check:");
  ASSERT(end);
  for (char *line = help; line < end; line = strchr(line, '\n') + 1) {
    size_t len = strcspn(line, "\n");
    ASSERT(len <= 80);
    if (strncmp(line, "  --", 4) != 0) continue;
    char flag[64], arg[64];
    int words = sscanf(line, " %63s %63s", flag, arg);
    if (strcmp(flag, "--help") == 0 || strcmp(flag, "--version") == 0) continue;
    int takes_value = words == 2 && arg[0] != '\0' &&
                      line[2 + strlen(flag)] == ' ' &&
                      line[3 + strlen(flag)] != ' ';
    config_t c;
    char err[300];
    setenv("HOST_IP", "10.0.0.1", 1);
    int rc = takes_value ? parse(&c, err, sizeof err, 3, flag, "1")
                         : parse(&c, err, sizeof err, 2, flag);
    if (rc < 0) {
      ASSERT(strstr(err, "unknown option") == NULL);
      ASSERT(strstr(err, "needs a value") == NULL);
      ASSERT(strstr(err, "unexpected argument") == NULL);
    }
    config_free(&c);
    known++;
  }
  ASSERT_EQ(known, sizeof flags / sizeof flags[0] - 2);
  free(help);

  char *exits[] = {"--help", "-h"};
  for (size_t i = 0; i < 2; i++) {
    char *out = stdout_of(parse_help, exits[i]);
    ASSERT_CONTAINS(out, "Usage: register [OPTIONS]");
    free(out);
  }
  char *out = stdout_of(parse_help, "--version");
  ASSERT(strncmp(out, "register ", 9) == 0);
  ASSERT_EQ(strlen(out), 9 + strlen(REGISTER_VERSION) + 1);
  free(out);
  clean_env();
}

/* A policy key with a "." or ".." segment: v2 (the key in a URL's path)
 * resolves it, v3 does not, so hosts and operators would not agree on
 * the key; refused like "//". */
TEST(policy_key_dot_segments) {
  config_t c;
  char err[300];
  clean_env();
  setenv("HOST_IP", "10.0.0.1", 1);
  static const char *const bad[] = {"/a/../policy", "/./policy", "/a/.",
                                    "/a/..", "/a/./b/"};
  static const char *const want[] = {
      "--policy-key \"/a/../policy\" has a \"..\" segment",
      "--policy-key \"/./policy\" has a \".\" segment",
      "--policy-key \"/a/.\" has a \".\" segment",
      "--policy-key \"/a/..\" has a \"..\" segment",
      "--policy-key \"/a/./b\" has a \".\" segment"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ASSERT_EQ(parse(&c, err, sizeof err, 3, "--policy-key", bad[i]), -1);
    ASSERT_CONTAINS(err, want[i]);
    ASSERT(strchr(err, '\n') == NULL);
    config_free(&c);
    char k[64];
    snprintf(k, sizeof k, "%s", bad[i]);
    char *pv[] = {"policy", "status", "--key", k, NULL};
    ASSERT_EQ(config_parse_policy(&c, 4, pv, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "--key \"");
    ASSERT_CONTAINS(err, "segment: name the key without");
    config_free(&c);
  }
  static const char *const good[] = {"/a/..b/policy", "/.a/policy", "/a/...",
                                     "/a.b/c."};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    ASSERT_EQ(parse(&c, err, sizeof err, 3, "--policy-key", good[i]), 0);
    ASSERT_STR_EQ(c.policy_key, good[i]);
    config_free(&c);
  }
  clean_env();
}

TEST_MAIN(TEST_ENTRY(endpoints), TEST_ENTRY(defaults_and_environment),
          TEST_ENTRY(bad_input_is_one_line),
          TEST_ENTRY(a_flags_variable_is_yes_or_no),
          TEST_ENTRY(docker_tls_from_environment), TEST_ENTRY(defaults),
          TEST_ENTRY(environment_then_flags), TEST_ENTRY(every_message),
          TEST_ENTRY(which_error_comes_first),
          TEST_ENTRY(help_lists_every_option),
          TEST_ENTRY(check_allow_and_policy_env),
          TEST_ENTRY(policy_key_dot_segments))

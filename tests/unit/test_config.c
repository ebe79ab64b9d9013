/* config: flags, environment, endpoints, one-line errors. */
#include "config.h"
#include "test.h"

#include <stdarg.h>
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

static void clean_env(void) {
  const char *vars[] = {"HOST_IP",
                        "ETCD_ENDPOINT",
                        "DOCKER_HOST",
                        "REGISTER_POLICY",
                        "REGISTER_TTL",
                        "DOCKER_TLS_VERIFY",
                        "REGISTER_LOG_LEVEL",
                        "REGISTER_ETCD_API"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
    unsetenv(vars[i]);
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

TEST_MAIN(TEST_ENTRY(endpoints), TEST_ENTRY(defaults_and_environment),
          TEST_ENTRY(bad_input_is_one_line),
          TEST_ENTRY(docker_tls_from_environment))

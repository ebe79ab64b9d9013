/* main: the command line: `register [OPTIONS]` runs the daemon,
 * `register check ...` tries a policy offline, `register watch ...` keeps
 * a file rendered from etcd, `register policy ...` changes the fleet's
 * policy in etcd. */
#include "app.h"
#include "check.h"
#include "config.h"
#include "log.h"
#include "policy_cmd.h"
#include "stopsig.h"
#include "trace.h"
#include "watch.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

/* `register watch ...` (watch.h) */
static int watch_main(int argc, char **argv) {
  config_t cfg;
  char err[600];
  int rc = config_parse_watch(&cfg, argc - 1, argv + 1, err, sizeof err);
  if (rc != 0) {
    if (rc < 0) fprintf(stderr, "register watch: %s\n", err);
    config_free(&cfg);
    return rc < 0 ? 2 : 0;
  }
  log_setup(cfg.log_level, cfg.log_format);
  stopsig_hup(1); /* until the loop handles it (stopsig.h) */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    log_error("cannot initialise libcurl");
    config_free(&cfg);
    return 1;
  }
  rc = watch_run(&cfg);
  curl_global_cleanup();
  config_free(&cfg);
  return rc;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc > 1 && strcmp(argv[1], "check") == 0) return check_main(argc, argv);
  if (argc > 1 && strcmp(argv[1], "watch") == 0) return watch_main(argc, argv);
  if (argc > 1 && strcmp(argv[1], "policy") == 0)
    return policy_cmd_main(argc - 1, argv + 1);

  config_t cfg;
  char err[600];
  int rc = config_parse(&cfg, argc, argv, err, sizeof err);
  if (rc != 0) {
    if (rc < 0) fprintf(stderr, "register: %s\n", err);
    config_free(&cfg);
    return rc < 0 ? 2 : 0;
  }
  log_setup(cfg.log_level, cfg.log_format);
  stopsig_hup(1); /* until the loop handles it (stopsig.h) */
  trace_setup(cfg.trace_latency);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    log_error("cannot initialise libcurl");
    config_free(&cfg);
    return 1;
  }
  rc = app_run(&cfg);
  trace_close();
  curl_global_cleanup();
  config_free(&cfg);
  return rc;
}

/* main: the command line: `register [OPTIONS]` runs the daemon,
 * `register check ...` tries a policy offline. */
#include "app.h"
#include "check.h"
#include "config.h"
#include "log.h"
#include "trace.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc > 1 && strcmp(argv[1], "check") == 0) return check_main(argc, argv);

  config_t cfg;
  char err[600];
  int rc = config_parse(&cfg, argc, argv, err, sizeof err);
  if (rc != 0) {
    if (rc < 0) fprintf(stderr, "register: %s\n", err);
    config_free(&cfg);
    return rc < 0 ? 2 : 0;
  }
  log_setup(cfg.log_level, cfg.log_format);
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

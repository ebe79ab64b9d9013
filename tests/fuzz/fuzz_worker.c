/* libFuzzer target: random Lua source as a policy, run through the policy
 * worker process, as the daemon runs it.  Whatever the script does
 * (errors, loops, long C calls, memory blow-ups, crashes of the worker),
 * every call must end within its limit plus the grace period, and the
 * daemon's side must neither crash, leak nor abort.  The worker's own
 * deaths are fine: they are what it is for.  The limits are small so that
 * each input is quick. */
#include "fuzz_inspect.h"
#include "json.h"
#include "util.h"
#include "worker.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIMIT_MS 300

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static json_doc_t *doc;
  char err[600];
  if (!doc) {
    doc = json_parse(fuzz_inspect, sizeof fuzz_inspect - 1, err, sizeof err);
    if (!doc) abort();
    log_setup(LOG_ERROR, LOG_TEXT);
  }
  worker_opts_t o = {0};
  o.file = "fuzz.lua";
  o.source = size ? (const char *)data : "";
  o.source_len = size;
  o.host_ip = "10.0.0.1";
  o.hostname = "fuzz";
  o.budget = 200000;
  o.mem_limit = 8u << 20;
  o.time_limit_ms = LIMIT_MS;
  o.path = REGISTER_WORKER_PATH;
  o.print_only = 1;
  o.log_level = LOG_ERROR;
  worker_t *w = worker_new(&o, err, sizeof err);
  if (!w) return 0;
  for (int i = 0; i < 2; i++) { /* a second call sees what the first left */
    uint64_t t = util_now_ms();
    records_t r;
    if (worker_records_checked(w, json_root(doc), NULL, &r, err, sizeof err) ==
        0)
      records_free(&r);
    policy_checks_t pc;
    if (worker_checks(w, json_root(doc), &pc, err, sizeof err) == 0)
      policy_checks_free(&pc);
    worker_hook_changed(w, "put", "/k", "v", 1);
    /* three calls, each within its limit and the grace period (a fresh
     * worker's start-up included) */
    if (util_now_ms() - t > 3 * 2 * (LIMIT_MS + WORKER_GRACE_MS)) {
      fprintf(stderr, "a call ran past its limit\n");
      abort();
    }
  }
  worker_free(w);
  return 0;
}

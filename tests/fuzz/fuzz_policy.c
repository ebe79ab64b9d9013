/* libFuzzer target: random Lua source as a policy, run over one container.
 * Whatever the script does (errors, loops, memory blow-ups, the sandbox's
 * stubs, odd return values), loading and records() must end, within the
 * limits, without a crash, a leak or an abort.  The limits are small so
 * that each input is quick. */
#include "fuzz_inspect.h"
#include "json.h"
#include "policy.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static json_doc_t *doc;
  char err[600];
  if (!doc) {
    doc = json_parse(fuzz_inspect, sizeof fuzz_inspect - 1, err, sizeof err);
    if (!doc) abort();
  }
  policy_opts_t o = {0};
  o.file = "fuzz.lua";
  o.source = (const char *)data;
  o.source_len = size;
  o.host_ip = "10.0.0.1";
  o.hostname = "fuzz";
  o.budget = 200000;
  o.mem_limit = 8u << 20;
  o.time_limit_ms = 500;
  policy_t *p = policy_new(&o, err, sizeof err);
  if (!p) return 0;
  for (int i = 0; i < 2; i++) { /* a second call sees what the first left */
    records_t r;
    if (policy_records(p, json_root(doc), &r, err, sizeof err) == 0)
      records_free(&r);
    policy_checks_t pc;
    if (policy_checks(p, json_root(doc), &pc, err, sizeof err) == 0)
      policy_checks_free(&pc);
  }
  policy_free(p);
  return 0;
}

/* libFuzzer target: inspect JSON -> container table -> the default
 * policy's records (JSON parse, Lua conversion, key/value building,
 * JSON encoding). */
#include "json.h"
#include "policy.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static policy_t *p;
  char err[600];
  if (!p) {
    policy_opts_t o = {0};
    o.host_ip = "10.0.0.1";
    o.hostname = "fuzz";
    p = policy_new(&o, err, sizeof err);
    if (!p) abort();
  }
  json_doc_t *doc = json_parse((const char *)data, size, err, sizeof err);
  if (!doc) return 0;
  const json_value_t *root = json_root(doc);
  if (root->type == JSON_ARRAY) root = root->u.child;
  if (root) {
    records_t r;
    if (policy_records(p, root, &r, err, sizeof err) == 0) records_free(&r);
  }
  json_free(doc);
  return 0;
}

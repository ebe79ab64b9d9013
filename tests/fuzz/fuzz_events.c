/* libFuzzer target: Docker's event stream.  The input is split into
 * chunks (sizes from its first bytes), framed by linesplit, and each line
 * is parsed as JSON and as an event, in both the new and legacy shapes. */
#include "docker.h"
#include "json.h"
#include "linesplit.h"

#include <stdint.h>
#include <string.h>

static void on_line(void *ud, const char *p, size_t n) {
  (void)ud;
  char err[200];
  json_doc_t *doc = json_parse(p, n, err, sizeof err);
  if (!doc) return;
  docker_event_t ev;
  docker_parse_event(json_root(doc), 0, &ev, err, sizeof err);
  docker_parse_event(json_root(doc), 1, &ev, err, sizeof err);
  json_free(doc);
}

static void on_long(void *ud, size_t n) {
  (void)ud;
  (void)n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const linesplit_cbs_t cbs = {on_line, on_long};
  linesplit_t ls;
  linesplit_init(&ls, 4096);
  size_t chunk = size ? (size_t)(data[0] % 64) + 1 : 1;
  const char *p = (const char *)data;
  while (size) {
    size_t n = size < chunk ? size : chunk;
    linesplit_feed(&ls, p, n, &cbs, NULL);
    p += n;
    size -= n;
  }
  linesplit_free(&ls);
  return 0;
}

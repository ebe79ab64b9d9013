/* checks_spec: a check as a policy asks for it: defaults, validation and
 * the names of states.  Pure functions, no loop: the policy worker converts
 * checks() with them, the daemon validates again what it is sent. */
#include "checks.h"

#include <stdio.h>
#include <string.h>

const char *checks_state_name(checks_state_t s) {
  switch (s) {
  case CHECKS_PASSING:
    return "passing";
  case CHECKS_FAILING:
    return "failing";
  default:
    return "pending";
  }
}

/* ---- specs ---- */

void checks_spec_init(checks_spec_t *s) {
  memset(s, 0, sizeof *s);
  s->type = CHECKS_TCP;
  s->path = "/";
  s->method = "GET";
  s->status_min = 200;
  s->status_max = 399;
  s->interval_ms = 5000;
  s->timeout_ms = 2000;
  s->rise = 1;
  s->fall = 1;
}

static int has_ctl(const char *s, int space_too) {
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch < 0x20 || ch == 0x7f || (space_too && ch == ' ')) return 1;
  }
  return 0;
}

int checks_port_number(const char *port) {
  if (!port) return -1;
  const char *slash = strchr(port, '/');
  if (!slash || strcmp(slash, "/tcp") != 0 || slash == port || slash - port > 5)
    return -1;
  int n = 0;
  for (const char *p = port; p < slash; p++) {
    if (*p < '0' || *p > '9') return -1;
    n = n * 10 + (*p - '0');
  }
  return n >= 1 && n <= 65535 ? n : -1;
}

int checks_spec_validate(const checks_spec_t *s, char *err, size_t errlen) {
#define BAD(...)                                                               \
  do {                                                                         \
    snprintf(err, errlen, __VA_ARGS__);                                        \
    return -1;                                                                 \
  } while (0)
  if (!s->port || !*s->port) BAD("a check needs a port (\"80/tcp\")");
  if (checks_port_number(s->port) < 0)
    BAD("check port \"%.40s\" is not \"N/tcp\" (N in 1-65535)", s->port);
  if (s->type != CHECKS_TCP && s->type != CHECKS_HTTP)
    BAD("check type must be tcp or http");
  if (s->interval_ms < CHECKS_MIN_MS)
    BAD("check interval of %ld ms is below the minimum of %d ms",
        s->interval_ms, CHECKS_MIN_MS);
  if (s->timeout_ms < CHECKS_MIN_MS)
    BAD("check timeout of %ld ms is below the minimum of %d ms", s->timeout_ms,
        CHECKS_MIN_MS);
  if (s->timeout_ms > s->interval_ms)
    BAD("check timeout (%ld ms) must not exceed the interval (%ld ms)",
        s->timeout_ms, s->interval_ms);
  if (s->rise < 1) BAD("check rise must be >= 1");
  if (s->fall < 1) BAD("check fall must be >= 1");
  /* lengths: each run hands them to curl (a URL, a header) and logs them,
   * every interval, in the daemon */
  if (s->address && strlen(s->address) > CHECKS_MAX_NAME)
    BAD("check address is too long: %zu bytes (at most %d)",
        strlen(s->address), CHECKS_MAX_NAME);
  if (has_ctl(s->address, 1)) BAD("check address must not contain spaces");
  if (s->type == CHECKS_HTTP) {
    if (s->status_min < 100 || s->status_max > 599 ||
        s->status_min > s->status_max)
      BAD("check status range %d-%d is not within 100-599 with min <= max",
          s->status_min, s->status_max);
    if (s->path && strlen(s->path) > CHECKS_MAX_PATH)
      BAD("check path is too long: %zu bytes (at most %d)", strlen(s->path),
          CHECKS_MAX_PATH);
    if (s->host && strlen(s->host) > CHECKS_MAX_NAME)
      BAD("check host is too long: %zu bytes (at most %d)", strlen(s->host),
          CHECKS_MAX_NAME);
    if (s->path && (s->path[0] != '/' || has_ctl(s->path, 1)))
      BAD("check path must start with / and have no spaces");
    if (s->method) {
      size_t n = strlen(s->method);
      if (n == 0 || n > 16 ||
          strspn(s->method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != n)
        BAD("check method \"%.20s\" is not an upper-case HTTP method",
            s->method);
      if (strcmp(s->method, "HEAD") == 0 || strcmp(s->method, "CONNECT") == 0)
        BAD("check method %s is not supported (use GET)", s->method);
    }
    if (has_ctl(s->host, 0))
      BAD("check host must not contain control characters");
  }
  return 0;
#undef BAD
}

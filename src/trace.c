/* trace: per-event stage times, logged once the first write is acked. */
#include "trace.h"
#include "log.h"
#include "map.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TRACE_MAX 1024 /* open traces; past it, all are dropped */

typedef struct trace {
  int64_t docker_ns;
  int64_t at[TRACE_STAGES]; /* realtime ns, 0 = not passed */
  char id[];                /* also the map key */
} trace_t;

static map_t *traces; /* id -> trace_t, owned here; NULL when off */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void drop_all(void) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, traces);
  while (map_iter_next(&it, NULL, &v)) {
    trace_t *t = v;
    map_del(traces, t->id);
    free(t);
  }
}

void trace_setup(int on) {
  if (on && !traces) traces = map_new();
  if (!on) trace_close();
}

void trace_event(const char *id, int64_t docker_ns) {
  if (!traces || !id || !*id) return;
  trace_t *t = map_get(traces, id);
  if (!t) {
    if (map_size(traces) >= TRACE_MAX) drop_all(); /* events never written */
    size_t n = strlen(id) + 1;
    t = xmalloc(sizeof *t + n);
    memcpy(t->id, id, n);
    map_put(traces, t->id, t);
  }
  memset(t->at, 0, sizeof t->at);
  t->at[TRACE_READ] = now_ns();
  t->docker_ns = docker_ns > 0 ? docker_ns : t->at[TRACE_READ];
}

static void us_after(char *buf, size_t len, int64_t at, int64_t base) {
  if (!at)
    snprintf(buf, len, "-");
  else
    snprintf(buf, len, "%lld", (long long)((at - base) / 1000));
}

void trace_mark(const char *id, trace_stage_t stage) {
  if (!traces || !id) return;
  REGISTER_ASSERT((unsigned)stage < TRACE_STAGES); /* one of trace.h's */
  trace_t *t = map_get(traces, id);
  if (!t) return;
  t->at[stage] = now_ns();
  if (stage != TRACE_WRITE_ACKED) return;
  char dns[24], us[TRACE_STAGES][24];
  snprintf(dns, sizeof dns, "%lld", (long long)t->docker_ns);
  for (int s = 0; s < TRACE_STAGES; s++)
    us_after(us[s], sizeof us[s], t->at[s], t->docker_ns);
  log_fields(LOG_INFO, "latency", "container", t->id, "docker_ns", dns, "read",
             us[TRACE_READ], "inspect_sent", us[TRACE_INSPECT_SENT],
             "inspect_answered", us[TRACE_INSPECT_ANSWERED], "policy",
             us[TRACE_POLICY], "write_sent", us[TRACE_WRITE_SENT],
             "write_acked", us[TRACE_WRITE_ACKED], NULL);
  map_del(traces, t->id);
  free(t);
}

void trace_close(void) {
  if (!traces) return;
  drop_all();
  map_free(traces);
  traces = NULL;
}

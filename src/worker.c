/* worker: the daemon's side of the policy worker process. */
#include "worker.h"
#include "luareg.h"
#include "map.h"
#include "util.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef REGISTER_LIBEXECDIR
#define REGISTER_LIBEXECDIR "/usr/libexec/register"
#endif

#define WATCH_MS 20         /* how often a call's memory is looked at */
#define BACKOFF_MIN_MS 1000 /* after the second death in a row */
#define BACKOFF_MAX_MS 30000
#define MAX_MODULE (1u << 20) /* a required file's size */
/* records in one reply: the worker's own cap (policy.h) */
#define MAX_KEYS_REPLY POLICY_MAX_RECORDS

/* AddressSanitizer's shadow memory and quarantine count in the worker's
 * resident size: a sanitized build gives it more room */
#define MEM_HEADROOM (WORKER_UNDER_ASAN ? (128u << 20) : WORKER_MEM_HEADROOM)

/* A pipelined update (worker_update_start); owned by worker.jobs. */
typedef struct job job_t;

struct worker {
  /* what every incarnation is made with (owned copies) */
  char *file, *dir, *host_ip, *hostname, *env, *path;
  buf_t source; /* the policy's text (empty: the embedded default) */
  int has_source;
  long budget;
  size_t mem_limit;
  uint64_t time_limit_ms, hook_limit_ms, mem_cap;
  uv_loop_t *loop;
  hookio_t *io;
  int has_etcd, print_only, render;
  log_level_t log_level;
  void (*on_restart)(void *ud);
  void *ud;
  volatile sig_atomic_t *interrupted;

  /* what the first incarnation said */
  char *name, *prefix;
  char **reserved; /* worker_opts_t.reserved, NULL-terminated, owned */
  char sha256[65];
  int loaded;
  int has_checks, has_event, has_changed;

  /* the incarnation running now (pid 0: none) */
  pid_t pid;
  int fd;
  uint64_t tag;   /* incarnation number, names its hook I/O */
  buf_t in, out;  /* bytes read and not consumed; a request being built */
  size_t in_used; /* the reply frame handed out, consumed at next wait */
  uint64_t seen[POLICY_ERR_REASONS + 2]; /* its counters at its last reply */
  size_t nhooks;                         /* hook calls alive in it */
  const char *step_label;                /* the hook whose run is in progress */
  /* the hooks' share of the loop: ms their steps took in this second */
  uint64_t hook_sec_start, hook_sec_ms;
  unsigned long hooks_shed; /* new calls dropped for it (said 1 in 1000) */
  map_t *io_labels; /* its I/O requests (decimal id) -> their hook's label */

  /* dying */
  int died;          /* the last call ended its incarnation */
  map_t *quarantine; /* id -> quar_t: containers whose calls ended one */
  unsigned deaths_in_row;
  uint64_t retry_at; /* no new incarnation before (util_now_ms) */
  policy_reason_t death_reason;
  char death[200];

  /* the last call */
  policy_reason_t reason;
  buf_t trace;

  /* log lines: this call's, this second's */
  unsigned call_lines, sec_lines;
  unsigned call_rt_lines; /* the runtime's lines in this call */
  uint64_t sec_start;
  unsigned long call_dropped;

  uv_timer_t *tick;    /* ends hook calls past their limit; NULL: no loop */
  uv_timer_t *restart; /* the end of a backoff */

  /* pipelined updates (worker_update_start), in the order started: those
   * done (answered or failed) first, then those sent and not answered
   * (jobs_sent of them) */
  job_t *jobs, **jobs_tail;
  size_t jobs_sent, jobs_bytes; /* sent, unanswered: their requests' size */
  size_t jobs_queued;           /* started, not sent (or to be sent again) */
  int no_fill;                  /* settle(): no more are sent meanwhile */
  uint64_t head_since;          /* when the first unanswered one began to run */
  int dispatching;              /* inside a done() */
  int starting;                 /* inside worker_update_start() */
  uv_poll_t *poll;   /* the incarnation's socket while jobs are sent */
  uv_timer_t *pipe;  /* their wall clock and memory, every WATCH_MS */
  uv_timer_t *later; /* done() from the loop after a synchronous call */
  policy_stats_t own_stats, *stats;
  worker_stats_t own_ws, *ws;
};

/* A container whose call ended the worker (a crash, the wall clock, its
 * memory): its calls fail at once for a while (1 s, doubling to 30 s with
 * each death of its own), so that one container cannot keep the worker
 * from the others.  Owned by worker.quarantine; the id is its key. */
typedef struct {
  uint64_t until;
  unsigned deaths;
  policy_reason_t reason;
  char msg[200];
  char id[];
} quar_t;

/* ---- where the binary is ---- */

const char *worker_path(void) {
  static char path[PATH_MAX + 32];
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) {
      *slash = '\0';
      snprintf(path, sizeof path, "%s/register-worker", self);
      if (access(path, X_OK) == 0) return path;
    }
  }
  snprintf(path, sizeof path, "%s/register-worker", REGISTER_LIBEXECDIR);
  return path;
}

/* ---- the incarnation's end ---- */

static void timer_closed(uv_handle_t *h) {
  free(h);
}

static void arm_restart(worker_t *w, uint64_t delay);
static void poll_drop(worker_t *w);

/* A backoff or a quarantine ended (the loop's clock may run behind
 * util_now_ms() after a long call: the timer is what says so). */
static void restart_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  uint64_t now = util_now_ms() + WATCH_MS, next = 0;
  /* the timer is shared with the quarantines' ends: a backoff that is
   * not over yet stays, and the timer comes back for it */
  if (w->retry_at <= now)
    w->retry_at = 0;
  else
    next = w->retry_at - now;
  map_iter_t it;
  void *v;
  map_iter_init(&it, w->quarantine);
  while (map_iter_next(&it, NULL, &v)) {
    quar_t *q = v;
    if (q->until <= now)
      q->until = 0; /* tried again at its next call; the deaths stay */
    else if (!next || q->until - now < next)
      next = q->until - now;
  }
  if (next) arm_restart(w, next);
  if (w->on_restart) w->on_restart(w->ud);
}

/* The restart timer fires in delay ms, or sooner if it was due sooner. */
static void arm_restart(worker_t *w, uint64_t delay) {
  if (!w->restart) return;
  if (uv_is_active((uv_handle_t *)w->restart) &&
      uv_timer_get_due_in(w->restart) <= delay)
    return;
  uv_timer_start(w->restart, restart_cb, delay, 0);
}

/* Which hook made an I/O request: one block per request, named by its
 * decimal id (the map's key points into it). */
typedef struct {
  const char *label; /* a literal: "event", "changed", "a" */
  char key[24];
} io_label_t;

/* The hook label of I/O request `key`: set (label), or taken (NULL: the
 * entry goes; its label is returned). */
static const char *io_label(worker_t *w, const char *key, const char *label) {
  if (label) {
    if (map_get(w->io_labels, key)) return label;
    io_label_t *l = xcalloc(1, sizeof *l);
    l->label = label;
    snprintf(l->key, sizeof l->key, "%s", key);
    map_put(w->io_labels, l->key, l);
    return label;
  }
  io_label_t *l = map_del(w->io_labels, key);
  const char *taken = l ? l->label : NULL;
  free(l);
  return taken;
}

static void io_labels_clear(worker_t *w) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, w->io_labels);
  while (map_iter_next(&it, NULL, &v)) {
    map_del(w->io_labels, ((io_label_t *)v)->key);
    free(v);
  }
}

/* Reaps the incarnation (it is dead or dying) and says why it ended. */
static void reap(worker_t *w, int killed, policy_reason_t why) {
  int st = 0;
  struct rusage ru;
  memset(&ru, 0, sizeof ru);
  while (wait4(w->pid, &st, 0, &ru) < 0 && errno == EINTR) {
  }
  policy_reason_t r = why;
  if (!killed) {
    r = POLICY_ERR_CRASH;
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS) r = POLICY_ERR_SANDBOX;
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGXCPU) r = POLICY_ERR_TIMEOUT;
    if (WIFEXITED(st) && WEXITSTATUS(st) == WORKER_EXIT_NOMEM)
      r = POLICY_ERR_MEMORY; /* a C library gave up on a failed allocation */
    /* the C libraries ran out of address space (cjson exits, others
     * crash): seen from outside as a peak near the cap */
    if ((uint64_t)ru.ru_maxrss * 1024 >= w->mem_cap / 2) r = POLICY_ERR_MEMORY;
    char how[80];
    if (WIFSIGNALED(st))
      snprintf(how, sizeof how, "died of signal %d (%s)", WTERMSIG(st),
               strsignal(WTERMSIG(st)));
    else
      snprintf(how, sizeof how, "exited with status %d",
               WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    snprintf(w->death, sizeof w->death, "the policy worker %s%s", how,
             r == POLICY_ERR_MEMORY ? ": out of memory (its limit is "
                                      "the Lua cap + 64 MiB)"
                                    : "");
  }
  w->death_reason = r;
}

/* Ends the incarnation: killed (reason why, message msg) or found dead.
 * Logged, and counted as a death, unless quiet (a policy that failed to
 * load has said so itself). */
static void end_quietly(worker_t *w, int kill_it, policy_reason_t why,
                        const char *msg, int quiet) {
  REGISTER_ASSERT(w->pid > 0);
  /* found dead: it may still be dying (a closed socket), so the kill
   * either way; a dead one keeps the status it died with */
  kill(w->pid, SIGKILL);
  if (kill_it) snprintf(w->death, sizeof w->death, "%s", msg);
  reap(w, kill_it, why);
  poll_drop(w);
  close(w->fd);
  w->fd = -1;
  w->pid = 0;
  buf_reset(&w->in);
  w->in_used = 0;
  if (w->io) hookio_cancel(w->io, w->tag, 0);
  io_labels_clear(w);
  w->nhooks = 0;
  if (w->tick) uv_timer_stop(w->tick);
  if (!quiet) w->ws->deaths[w->death_reason]++;
  w->deaths_in_row++;
  uint64_t delay = 0;
  if (w->deaths_in_row >= 2) {
    delay =
        BACKOFF_MIN_MS << (w->deaths_in_row - 2 > 5 ? 5 : w->deaths_in_row - 2);
    if (delay > BACKOFF_MAX_MS) delay = BACKOFF_MAX_MS;
  }
  w->retry_at = util_now_ms() + delay;
  if (delay) arm_restart(w, delay);
  w->died = 1;
  if (quiet) return;
  log_warn("policy %s: %s (reason: %s); %s", w->name, w->death,
           policy_reason_name(w->death_reason),
           delay ? "a new worker after a backoff"
                 : "the next call gets a new "
                   "worker");
}

static void end_incarnation(worker_t *w, int kill_it, policy_reason_t why,
                            const char *msg) {
  end_quietly(w, kill_it, why, msg, 0);
}

/* ---- sending and waiting ---- */

static void fail(worker_t *w, policy_reason_t r, const char *msg, char *err,
                 size_t errlen) {
  w->reason = r;
  buf_reset(&w->trace);
  snprintf(err, errlen, "%s", msg);
}

static int send_all(worker_t *w, const char *p, size_t n, uint64_t deadline) {
  while (n) {
    ssize_t k = send(w->fd, p, n, MSG_NOSIGNAL);
    if (k > 0) {
      p += k;
      n -= (size_t)k;
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno != EAGAIN) return -1;
    uint64_t now = util_now_ms();
    if (now >= deadline) return -2;
    struct pollfd pf = {w->fd, POLLOUT, 0};
    poll(&pf, 1, (int)(deadline - now));
  }
  return 0;
}

/* The worker's resident memory, in bytes (0: unknown). */
static uint64_t rss(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
  FILE *f = fopen(path, "r");
  unsigned long size = 0, res = 0;
  if (!f) return 0;
  if (fscanf(f, "%lu %lu", &size, &res) != 2) res = 0;
  fclose(f);
  return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* The worker's resident size is over its cap: it is killed (reason
 * memory), and 1. */
static int over_memory(worker_t *w) {
  uint64_t r = rss(w->pid);
  if (r <= w->mem_cap) return 0;
  char msg[160];
  snprintf(msg, sizeof msg,
           "the policy worker used %llu MiB, over its %llu MiB limit; it was "
           "killed",
           (unsigned long long)(r >> 20),
           (unsigned long long)(w->mem_cap >> 20));
  end_incarnation(w, 1, POLICY_ERR_MEMORY, msg);
  return 1;
}

/* The policy's text (its error's message, the traceback) is printed and
 * logged: escaped (util_clean_text) and cut here, whatever the worker did. */
#define WORKER_TRACE_MAX 16384
#define WORKER_PRINT_MAX 65536

/* A line the policy sends (a log line, a printed request) within the caps
 * per call and per second; 0: dropped, and counted.  The worker's runtime
 * lines (runtime: not the policy's register.log, source=policy) have
 * their own cap per call, so that a policy's lines cannot crowd out the
 * one that says why it failed. */
static int line_allowed(worker_t *w, int runtime) {
  if (runtime) {
    if (w->call_rt_lines < WORKER_RUNTIME_LOG_PER_CALL) {
      w->call_rt_lines++;
      return 1;
    }
    w->call_dropped++;
    w->ws->log_dropped++;
    return 0;
  }
  uint64_t now = util_now_ms();
  if (now - w->sec_start >= 1000) {
    w->sec_start = now;
    w->sec_lines = 0;
  }
  if (w->call_lines >= WORKER_LOG_PER_CALL ||
      w->sec_lines >= WORKER_LOG_PER_SEC) {
    w->call_dropped++;
    w->ws->log_dropped++;
    return 0;
  }
  w->call_lines++;
  w->sec_lines++;
  return 1;
}

static void on_log(worker_t *w, wire_rd_t *rd) {
  log_level_t level = (log_level_t)wire_get_num(rd);
  size_t nf = (size_t)wire_get_num(rd);
  if (level > LOG_DEBUG || nf > 16) rd->bad = 1;
  const char *fields[2 * 16 + 1];
  for (size_t i = 0; !rd->bad && i < nf; i++) {
    fields[2 * i] = wire_get_str(rd, NULL);
    fields[2 * i + 1] = wire_get_str(rd, NULL);
    if (!fields[2 * i]) rd->bad = 1;
  }
  size_t mlen = 0;
  const char *msg = wire_get_str(rd, &mlen);
  if (rd->bad || !msg) {
    rd->bad = 1;
    return;
  }
  fields[2 * nf] = NULL;
  int runtime = 1;
  for (size_t i = 0; i < nf; i++)
    if (strcmp(fields[2 * i], "source") == 0 && fields[2 * i + 1] &&
        strcmp(fields[2 * i + 1], "policy") == 0)
      runtime = 0;
  if (!line_allowed(w, runtime)) return;
  /* the policy's fields: escaped and cut (the message is, by log.c) */
  buf_t clean[16];
  for (size_t i = 0; i < nf; i++) {
    buf_init(&clean[i]);
    const char *v = fields[2 * i + 1] ? fields[2 * i + 1] : "";
    util_clean_text(&clean[i], v, strnlen(v, LOG_FIELD_MAX + 4), LOG_FIELD_MAX,
                    0);
    fields[2 * i + 1] = clean[i].data ? clean[i].data : "";
  }
  /* cut before it is formatted (log.c cuts the line again, and says so) */
  int shown = mlen > LOG_MSG_MAX + 4 ? LOG_MSG_MAX + 4 : (int)mlen;
  log_emit(level, nf ? fields : NULL, "%.*s", shown, msg);
  for (size_t i = 0; i < nf; i++)
    buf_free(&clean[i]);
}

/* A request `check` and --dry-run print instead of sending it (luaio.c's
 * one-line JSON): counted with the log lines, against the same caps, and
 * printed only if it is one line of text no longer than WORKER_PRINT_MAX
 * (else a line says what was left out). */
static void on_print(worker_t *w, wire_rd_t *rd) {
  size_t len;
  const char *line = wire_get_str(rd, &len);
  if (!line) {
    rd->bad = 1;
    return;
  }
  if (!line_allowed(w, 0)) return;
  int ok = len > 0 && len <= WORKER_PRINT_MAX && line[len - 1] == '\n';
  for (size_t i = 0; ok && i + 1 < len; i++)
    ok = (unsigned char)line[i] >= 0x20 && line[i] != 0x7f;
  if (ok)
    fwrite(line, 1, len, stdout);
  else
    printf("{\"op\":\"http\",\"error\":\"a request of %zu bytes, not "
           "shown: too long or not one line\"}\n",
           len);
  fflush(stdout);
}

/* A module for `require`: DIR/rel, rel as sandbox.c made it. */
static void on_read(worker_t *w, wire_rd_t *rd, uint64_t deadline) {
  const char *rel = wire_get_str(rd, NULL);
  if (rd->bad || !rel) {
    rd->bad = 1;
    return;
  }
  int ok = w->dir && *rel && *rel != '/' && !strstr(rel, "..") &&
           strspn(rel, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                       "0123456789_-./") == strlen(rel);
  buf_t text;
  buf_init(&text);
  int found = 0;
  if (ok) {
    char *path = xasprintf("%s/%s", w->dir, rel);
    found = util_read_file(path, MAX_MODULE, &text) == 0;
    free(path);
  }
  buf_t ans;
  buf_init(&ans);
  size_t off = wire_begin(&ans, WIRE_READ_ANSWER);
  wire_num(&ans, (uint64_t)found);
  wire_str(&ans, found ? (text.data ? text.data : "") : NULL, text.len);
  wire_end(&ans, off);
  buf_free(&text);
  if (send_all(w, ans.data, ans.len, deadline) < 0) rd->bad = 1;
  buf_free(&ans);
}

static void io_done(void *ud, uint64_t tag, uint64_t id,
                    const iocall_answer_t *a);

static void on_io(worker_t *w, wire_rd_t *rd) {
  uint64_t id = wire_get_num(rd);
  iocall_t c = {0};
  c.kind = (iocall_kind_t)wire_get_num(rd);
  c.method = wire_get_str(rd, NULL);
  c.url = wire_get_str(rd, NULL);
  size_t nh = (size_t)wire_get_num(rd);
  if (nh > 256 || c.kind > IOCALL_ETCD_LIST) rd->bad = 1;
  const char *headers[257];
  for (size_t i = 0; !rd->bad && i < nh; i++)
    if (!(headers[i] = wire_get_str(rd, NULL))) rd->bad = 1;
  if (rd->bad) return;
  headers[nh] = NULL;
  c.headers = headers;
  c.body = wire_get_str(rd, &c.body_len);
  c.timeout_ms = (long)wire_get_num(rd);
  c.key = wire_get_str(rd, NULL);
  if (rd->bad || !w->io) { /* it was told it has no I/O */
    rd->bad = 1;
    return;
  }
  if (c.kind == IOCALL_HTTP ? !c.url || !c.method : !c.key) {
    rd->bad = 1;
    return;
  }
  char key[24];
  snprintf(key, sizeof key, "%llu", (unsigned long long)id);
  io_label(w, key, w->step_label ? w->step_label : "a");
  hookio_start(w->io, w->tag, id, &c, io_done, w);
}

/* Reads frames until a reply; handles what comes on the way.  0: rd is
 * the reply, after its counters; -1: the incarnation ended (err says
 * why, w->reason is the reason); 1 (nonblock only): no reply yet and
 * nothing more to read now. */
static int wait_reply(worker_t *w, uint64_t deadline, wire_rd_t *rd, int *type,
                      char *err, size_t errlen, int nonblock) {
  buf_consume(&w->in, w->in_used);
  w->in_used = 0;
  wire_rd_init(rd, "", 0);
  for (;;) {
    const char *f;
    size_t n;
    int got;
    while ((got = wire_frame(&w->in, &f, &n)) == 1) {
      wire_rd_init(rd, f, n);
      int t = wire_type(rd);
      if (t >= WIRE_READY && t <= WIRE_RENDER_OK) {
        uint64_t
            c[POLICY_ERR_REASONS + 2]; /* errors, hooks and lines dropped */
        for (int i = 0; i < POLICY_ERR_REASONS + 2; i++)
          c[i] = wire_get_num(rd);
        if (rd->bad) break;
        if (c[POLICY_ERR_REASONS + 1] > w->seen[POLICY_ERR_REASONS + 1]) {
          uint64_t d =
              c[POLICY_ERR_REASONS + 1] - w->seen[POLICY_ERR_REASONS + 1];
          w->call_dropped += d;
          w->ws->log_dropped += d;
        }
        for (int i = 0; i < POLICY_ERR_REASONS; i++)
          if (c[i] > w->seen[i]) w->stats->errors[i] += c[i] - w->seen[i];
        if (c[POLICY_ERR_REASONS] > w->seen[POLICY_ERR_REASONS])
          w->stats->hooks_dropped +=
              c[POLICY_ERR_REASONS] - w->seen[POLICY_ERR_REASONS];
        memcpy(w->seen, c, sizeof c);
        w->in_used = n + 4;
        *type = t;
        return 0;
      }
      if (t == WIRE_LOG)
        on_log(w, rd);
      else if (t == WIRE_PRINT)
        on_print(w, rd);
      else if (t == WIRE_IO)
        on_io(w, rd);
      else if (t == WIRE_IO_CANCEL) {
        uint64_t id = wire_get_num(rd);
        if (!rd->bad && w->io) hookio_cancel(w->io, w->tag, id);
      } else if (t == WIRE_READ)
        on_read(w, rd, deadline);
      else
        rd->bad = 1;
      if (rd->bad) break;
      buf_consume(&w->in, n + 4);
    }
    if (got < 0 || rd->bad) {
      end_incarnation(w, 1, POLICY_ERR_CRASH,
                      "the policy worker sent a malformed message");
      break;
    }
    if (w->interrupted && *w->interrupted) {
      end_quietly(w, 1, POLICY_ERR_TIMEOUT,
                  "the daemon is stopping: the policy call was abandoned", 1);
      break;
    }
    uint64_t now = util_now_ms();
    if (now >= deadline) {
      char msg[160];
      snprintf(msg, sizeof msg,
               "the policy call ran past the %llu ms limit; its worker was "
               "killed",
               (unsigned long long)w->time_limit_ms);
      end_incarnation(w, 1, POLICY_ERR_TIMEOUT, msg);
      break;
    }
    struct pollfd pf = {w->fd, POLLIN, 0};
    uint64_t left = deadline - now;
    /* nonblock: the loop watches the socket and the memory (pipe_cb) */
    int pr =
        nonblock ? 1 : poll(&pf, 1, (int)(left < WATCH_MS ? left : WATCH_MS));
    if (pr == 0) {
      if (over_memory(w)) break;
      continue;
    }
    if (pr < 0) continue; /* EINTR */
    char chunk[65536];
    ssize_t k = read(w->fd, chunk, sizeof chunk);
    if (k < 0 && nonblock && errno == EAGAIN) return 1;
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) {
      end_incarnation(w, 0, POLICY_ERR_CRASH, NULL);
      break;
    }
    if (w->in.len + (size_t)k > WIRE_MAX_FRAME + 64) {
      end_incarnation(w, 1, POLICY_ERR_CRASH,
                      "the policy worker sent more than a message may hold");
      break;
    }
    buf_append(&w->in, chunk, (size_t)k);
  }
  fail(w, w->death_reason, w->death, err, errlen);
  return -1;
}

/* ---- starting an incarnation ---- */

static char **make_env(const char *names) {
  size_t cap = 4, n = 0;
  char **env = xcalloc(cap, sizeof *env);
  if (WORKER_UNDER_ASAN) /* a small quarantine; its reports on its stderr */
    env[n++] = xstrdup("ASAN_OPTIONS=quarantine_size_mb=16:detect_leaks=0");
  if (names) {
    char *copy = xstrdup(names), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
      const char *v = getenv(t);
      if (!v) continue;
      if (n + 2 > cap) env = xrealloc(env, (cap *= 2) * sizeof *env);
      env[n++] = xasprintf("%s=%s", t, v);
    }
    free(copy);
  }
  env[n] = NULL;
  return env;
}

static void free_env(char **env) {
  for (char **e = env; *e; e++)
    free(*e);
  free(env);
}

static int spawn(worker_t *w, char *err, size_t errlen) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    snprintf(err, errlen, "cannot make the policy worker's socket: %s",
             strerror(errno));
    return -1;
  }
  if (sv[1] == 3) { /* dup2(3, 3) would keep close-on-exec */
    int d = fcntl(sv[1], F_DUPFD_CLOEXEC, 4);
    close(sv[1]);
    sv[1] = d;
  }
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&at);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  if (!getenv("REGISTER_WORKER_STDERR"))
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
  posix_spawn_file_actions_addclosefrom_np(&fa, 4);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  sigdelset(&all, SIGPIPE); /* stays ignored: a write to a gone daemon */
  posix_spawnattr_setsigmask(&at, &none);
  posix_spawnattr_setsigdefault(&at, &all);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  char **env = make_env(w->env);
  char *argv[] = {w->path, NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, w->path, &fa, &at, argv, env);
  free_env(env);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    snprintf(err, errlen, "cannot start the policy worker %s: %s", w->path,
             strerror(rc));
    return -1;
  }
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  w->pid = pid;
  w->fd = sv[0];
  w->tag++;
  memset(w->seen, 0, sizeof w->seen);
  w->ws->spawned++;

  uint64_t deadline = util_now_ms() + w->time_limit_ms + WORKER_GRACE_MS;
  buf_t init; /* not w->out: that may hold the request waiting for us */
  buf_t *o = &init;
  buf_init(o);
  size_t off = wire_begin(o, WIRE_INIT);
  wire_num(o, (uint64_t)w->log_level);
  wire_num(o, w->mem_cap);
  wire_num(o, (uint64_t)getpid()); /* its parent, as it should see it */
  wire_cstr(o, w->file);
  wire_str(o, w->has_source ? (w->source.data ? w->source.data : "") : NULL,
           w->source.len);
  wire_cstr(o, w->host_ip);
  wire_cstr(o, w->hostname);
  wire_num(o, (uint64_t)w->budget);
  wire_num(o, w->mem_limit);
  wire_num(o, w->time_limit_ms);
  wire_num(o, w->hook_limit_ms);
  wire_num(o, (uint64_t)w->print_only);
  wire_num(o, (uint64_t)(w->io && !w->print_only));
  wire_num(o, (uint64_t)(w->io && w->has_etcd));
  wire_num(o, (uint64_t)w->render);
  wire_end(o, off);
  int sent = send_all(w, o->data, o->len, deadline);
  buf_free(o);
  if (sent < 0) {
    end_incarnation(w, 1, POLICY_ERR_CRASH,
                    "the policy worker did not take its start-up message");
    snprintf(err, errlen, "%s", w->death);
    return -1;
  }
  wire_rd_t rd;
  int type;
  w->call_lines = w->call_rt_lines = 0;
  if (wait_reply(w, deadline, &rd, &type, err, errlen, 0) < 0) return -1;
  if (type == WIRE_FAIL) {
    w->reason = (policy_reason_t)wire_get_num(&rd);
    const char *msg = wire_get_str(&rd, NULL);
    snprintf(err, errlen, "%s", msg ? msg : "the policy failed to load");
    if ((unsigned)w->reason >= POLICY_ERR_REASONS) w->reason = POLICY_ERR_ERROR;
    policy_reason_t r = w->reason;
    end_quietly(w, 1, r, "the policy failed to load", 1);
    w->reason = r;
    return -1;
  }
  const char *prefix = wire_get_str(&rd, NULL);
  int hc = (int)wire_get_num(&rd), he = (int)wire_get_num(&rd),
      hch = (int)wire_get_num(&rd);
  char why[200];
  if (type != WIRE_READY || rd.bad ||
      (prefix &&
       policy_check_key(prefix, strlen(prefix), why, sizeof why) < 0)) {
    end_incarnation(w, 1, POLICY_ERR_CRASH,
                    "the policy worker's start-up reply was malformed");
    snprintf(err, errlen, "%s", w->death);
    return -1;
  }
  if (!w->loaded) { /* the first incarnation says what the policy is */
    w->loaded = 1;
    w->prefix = prefix ? xstrdup(prefix) : NULL;
    w->has_checks = hc;
    w->has_event = he;
    w->has_changed = hch;
  }
  return 0;
}

/* A running incarnation for the next call: 0, or -1 (err) while a worker
 * that keeps dying backs off, or when a new one cannot start.  id: the
 * container the call is for, or NULL.  The backoff holds calls for
 * containers whose own calls ended a worker (in quarantine, or out of it
 * and not yet answered once) and calls for no container; a container
 * with no such death gets its worker, so that a few containers whose
 * calls crash or hang cannot keep the worker from all the others.  A
 * policy that fails every container still backs off: each container gets
 * one try, then its quarantine. */
static int ensure(worker_t *w, const char *id, char *err, size_t errlen) {
  if (w->interrupted && *w->interrupted) {
    fail(w, POLICY_ERR_TIMEOUT, "the daemon is stopping: no policy calls", err,
         errlen);
    if (w->pid) end_quietly(w, 1, POLICY_ERR_TIMEOUT, "stopping", 1);
    return -1;
  }
  if (w->pid) return 0;
  uint64_t now = util_now_ms();
  if (now < w->retry_at && (!id || map_get(w->quarantine, id))) {
    char msg[300];
    snprintf(msg, sizeof msg,
             "the policy worker is restarting after %u deaths in a row "
             "(last: %s); next try in %.1f s",
             w->deaths_in_row, w->death, (double)(w->retry_at - now) / 1000.0);
    fail(w, w->death_reason, msg, err, errlen);
    return -1;
  }
  return spawn(w, err, errlen);
}

static void settle(worker_t *w);

/* One request (built in w->out) and its reply, after the replies of the
 * pipelined updates sent before it. */
static int call(worker_t *w, const char *id, wire_rd_t *rd, int *type,
                char *err, size_t errlen) {
  settle(w);
  w->died = 0;
  if (ensure(w, id, err, errlen) < 0) {
    w->stats->errors[w->reason]++;
    return -1;
  }
  uint64_t deadline = util_now_ms() + w->time_limit_ms + WORKER_GRACE_MS;
  w->call_lines = w->call_rt_lines = 0;
  w->call_dropped = 0;
  int sent = send_all(w, w->out.data, w->out.len, deadline);
  if (sent < 0) { /* -1: it is gone (found dead); -2: it stopped reading */
    end_incarnation(w, sent == -2, POLICY_ERR_CRASH,
                    "the policy worker did not take its request");
    fail(w, w->death_reason, w->death, err, errlen);
    w->stats->errors[w->reason]++;
    return -1;
  }
  int rc = wait_reply(w, deadline, rd, type, err, errlen, 0);
  if (w->call_dropped)
    log_warn("policy %s: %lu log lines of one call dropped (at most %d per "
             "call and %d per second)",
             w->name, w->call_dropped, WORKER_LOG_PER_CALL, WORKER_LOG_PER_SEC);
  if (rc < 0) {
    w->stats->errors[w->reason]++;
    return -1;
  }
  w->deaths_in_row = 0;
  return 0;
}

/* The container's call ended the worker, or ran to the wall clock: its
 * calls fail at once for a while (each one would hold the loop that long
 * again). */
static void quarantine(worker_t *w, const char *id, const char *msg) {
  quar_t *q = map_get(w->quarantine, id);
  if (!q) {
    size_t n = strlen(id);
    q = xcalloc(1, sizeof *q + n + 1);
    memcpy(q->id, id, n + 1);
    map_put(w->quarantine, q->id, q);
  }
  q->deaths++;
  uint64_t delay = (uint64_t)BACKOFF_MIN_MS
                   << (q->deaths - 1 > 5 ? 5 : q->deaths - 1);
  if (delay > BACKOFF_MAX_MS) delay = BACKOFF_MAX_MS;
  q->until = util_now_ms() + delay;
  q->reason = w->reason;
  snprintf(q->msg, sizeof q->msg, "%.199s", msg);
  arm_restart(w, delay);
}

/* A call that the worker did not answer (it died, or backs off): the
 * message as the policy's own failures read. */
static int died(worker_t *w, const char *fn, const char *id, char *err,
                size_t errlen) {
  char msg[400];
  snprintf(msg, sizeof msg, "%.399s", err);  /* cut to fit */
  if (id && w->died) quarantine(w, id, msg); /* its call ended the worker */
  snprintf(err, errlen,
           "policy %s: %s() failed for container %.12s: %s "
           "(reason: %s)",
           w->name, fn, id ? id : "?", msg, policy_reason_name(w->reason));
  return -1;
}

/* A FAIL reply: the call failed inside the policy (counted by the worker). */
static int failed_reply(worker_t *w, wire_rd_t *rd, char *err, size_t errlen) {
  uint64_t r = wire_get_num(rd);
  size_t mlen = 0, tlen = 0;
  const char *msg = wire_get_str(rd, &mlen);
  const char *tb = wire_get_str(rd, &tlen);
  w->reason = r < POLICY_ERR_REASONS ? (policy_reason_t)r : POLICY_ERR_ERROR;
  buf_reset(&w->trace);
  if (tb) util_clean_text(&w->trace, tb, tlen, WORKER_TRACE_MAX, 1);
  if (!msg) {
    snprintf(err, errlen, "the policy call failed");
    return -1;
  }
  buf_t m;
  buf_init(&m);
  util_clean_text(&m, msg, mlen, errlen, 0);
  snprintf(err, errlen, "%s", m.data ? m.data : "");
  buf_free(&m);
  return -1;
}

/* The reply could not be trusted: this incarnation goes. */
static int bad_reply(worker_t *w, const char *what, char *err, size_t errlen) {
  char msg[300];
  snprintf(msg, sizeof msg, "the policy worker's reply was malformed: %s",
           what);
  end_incarnation(w, 1, POLICY_ERR_CRASH, msg);
  fail(w, POLICY_ERR_CRASH, msg, err, errlen);
  w->stats->errors[POLICY_ERR_CRASH]++;
  return -1;
}

/* ---- the API ---- */

static void source_sha256(const char *src, size_t len, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  out[0] = '\0';
  if (src && EVP_Digest(src, len, md, &mdlen, EVP_sha256(), NULL) == 1)
    for (unsigned i = 0; i < mdlen && i < 32; i++)
      snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static char *dup_or_null(const char *s) {
  return s ? xstrdup(s) : NULL;
}

worker_t *worker_new(const worker_opts_t *o, char *err, size_t errlen) {
  policy_reason_t ignored;
  return worker_new_why(o, &ignored, err, errlen);
}

worker_t *worker_new_why(const worker_opts_t *o, policy_reason_t *reason,
                         char *err, size_t errlen) {
  *reason = POLICY_ERR_ERROR;
  worker_t *w = xcalloc(1, sizeof *w);
  w->fd = -1;
  w->file = dup_or_null(o->file);
  w->host_ip = xstrdup(o->host_ip ? o->host_ip : "");
  w->hostname = xstrdup(o->hostname ? o->hostname : "");
  w->env = dup_or_null(o->env);
  w->path = xstrdup(o->path ? o->path : worker_path());
  w->name = xstrdup(o->file ? o->file : "default");
  size_t nres = 0;
  while (o->reserved && o->reserved[nres])
    nres++;
  w->reserved = xcalloc(nres + 1, sizeof *w->reserved);
  for (size_t i = 0; i < nres; i++)
    w->reserved[i] = xstrdup(o->reserved[i]);
  w->budget = o->budget;
  w->mem_limit = o->mem_limit ? o->mem_limit : (64u << 20);
  w->mem_cap = w->mem_limit + MEM_HEADROOM;
  w->time_limit_ms =
      o->time_limit_ms ? o->time_limit_ms : POLICY_DEFAULT_TIME_LIMIT_MS;
  w->hook_limit_ms =
      o->hook_limit_ms ? o->hook_limit_ms : POLICY_DEFAULT_HOOK_LIMIT_MS;
  w->loop = o->loop;
  w->io = o->loop ? o->io : NULL;
  w->has_etcd = o->has_etcd;
  w->print_only = o->print_only;
  w->render = o->render;
  w->log_level = o->log_level;
  w->on_restart = o->on_restart;
  w->interrupted = o->interrupted;
  w->ud = o->ud;
  w->stats = o->stats ? o->stats : &w->own_stats;
  w->ws = o->wstats ? o->wstats : &w->own_ws;
  w->quarantine = map_new();
  w->io_labels = map_new();
  w->jobs_tail = &w->jobs;
  buf_init(&w->source);
  buf_init(&w->in);
  buf_init(&w->out);
  buf_init(&w->trace);
  if (w->file) {
    w->dir = util_path_dir(w->file);
    if (o->no_files) { /* no directory to require from */
      free(w->dir);
      w->dir = NULL;
    }
    if (o->source) {
      buf_append(&w->source, o->source, o->source_len);
    } else if (util_read_file(w->file, 0, &w->source) < 0) {
      snprintf(err, errlen, "policy %s: cannot read it: %s", w->file,
               strerror(errno));
      worker_free(w);
      return NULL;
    }
    w->has_source = 1;
    source_sha256(w->source.data ? w->source.data : "", w->source.len,
                  w->sha256);
  } else {
    size_t len = 0;
    const char *src = luareg_embedded_source("register.default", &len);
    source_sha256(src, len, w->sha256);
  }
  if (w->loop) {
    w->tick = xcalloc(1, sizeof *w->tick);
    uv_timer_init(w->loop, w->tick);
    w->tick->data = w;
    w->restart = xcalloc(1, sizeof *w->restart);
    uv_timer_init(w->loop, w->restart);
    w->restart->data = w;
    w->pipe = xcalloc(1, sizeof *w->pipe);
    uv_timer_init(w->loop, w->pipe);
    w->pipe->data = w;
    w->later = xcalloc(1, sizeof *w->later);
    uv_timer_init(w->loop, w->later);
    w->later->data = w;
  }
  char why[600];
  if (spawn(w, why, sizeof why) < 0) {
    const char *n = w->file ? w->file : "default";
    if (strncmp(why, "policy ", 7) == 0)
      snprintf(err, errlen, "%s", why);
    else
      snprintf(err, errlen, "policy %s: %s (reason: %s)", n, why,
               policy_reason_name(w->reason));
    *reason = w->reason;
    worker_free(w);
    return NULL;
  }
  return w;
}

static void jobs_cancel(worker_t *w);

void worker_free(worker_t *w) {
  if (!w) return;
  REGISTER_ASSERT(!w->dispatching); /* not from a done() */
  poll_drop(w);
  if (w->pid) {
    kill(w->pid, SIGKILL);
    while (waitpid(w->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    close(w->fd);
  }
  jobs_cancel(w);
  if (w->io) hookio_cancel(w->io, w->tag, 0);
  if (w->tick) uv_close((uv_handle_t *)w->tick, timer_closed);
  if (w->restart) uv_close((uv_handle_t *)w->restart, timer_closed);
  if (w->pipe) uv_close((uv_handle_t *)w->pipe, timer_closed);
  if (w->later) uv_close((uv_handle_t *)w->later, timer_closed);
  map_iter_t it;
  void *v;
  map_iter_init(&it, w->quarantine);
  while (map_iter_next(&it, NULL, &v))
    free(v);
  map_free(w->quarantine);
  io_labels_clear(w);
  map_free(w->io_labels);
  free(w->file);
  free(w->dir);
  free(w->host_ip);
  free(w->hostname);
  free(w->env);
  free(w->path);
  free(w->name);
  free(w->prefix);
  for (char **r = w->reserved; r && *r; r++)
    free(*r);
  free(w->reserved);
  buf_free(&w->source);
  buf_free(&w->in);
  buf_free(&w->out);
  buf_free(&w->trace);
  free(w);
}

const char *worker_prefix(const worker_t *w) {
  return w->prefix;
}

char *worker_prefix_elsewhere(const worker_opts_t *po) {
  worker_opts_t o = *po;
  o.host_ip = po->host_ip && strcmp(po->host_ip, "192.0.2.1") == 0
                  ? "192.0.2.2"
                  : "192.0.2.1";
  o.hostname = "register-probe";
  o.env = NULL; /* a prefix from --policy-env is the host's own */
  o.loop = NULL;
  o.io = NULL;
  o.has_etcd = 0;
  o.stats = NULL;
  o.wstats = NULL;
  o.on_restart = NULL;
  o.log_level = LOG_ERROR; /* its failures are not this host's */
  char err[600];
  worker_t *w = worker_new(&o, err, sizeof err);
  if (!w) return NULL;
  const char *pre = worker_prefix(w);
  char *out = pre ? xstrdup(pre) : NULL;
  worker_free(w);
  return out;
}

const char *worker_name(const worker_t *w) {
  return w->name;
}
const char *worker_sha256(const worker_t *w) {
  return w->sha256;
}
int worker_has_checks(const worker_t *w) {
  return w->has_checks;
}
int worker_has_hook(const worker_t *w, const char *name) {
  if (strcmp(name, "event") == 0) return w->has_event;
  if (strcmp(name, "changed") == 0) return w->has_changed;
  return 0;
}
pid_t worker_pid(const worker_t *w) {
  return w->pid;
}
int worker_backing_off(const worker_t *w) {
  return !w->pid && util_now_ms() < w->retry_at;
}
const char *worker_traceback(const worker_t *w) {
  return w->trace.data ? w->trace.data : "";
}
policy_reason_t worker_last_reason(const worker_t *w) {
  return w->reason;
}
unsigned long worker_hooks_dropped(const worker_t *w) {
  return w->stats->hooks_dropped;
}
unsigned long worker_errors(const worker_t *w) {
  unsigned long n = 0;
  for (int i = 0; i < POLICY_ERR_REASONS; i++)
    n += w->stats->errors[i];
  return n;
}

static void put_doc(buf_t *o, const json_value_t *inspect) {
  buf_t doc;
  buf_init(&doc);
  json_write(&doc, inspect);
  wire_str(o, doc.data ? doc.data : "", doc.len);
  buf_free(&doc);
}

/* 0, or -1 (err) while the container is in quarantine. */
static int quarantined(worker_t *w, const char *fn, const char *id, char *err,
                       size_t errlen) {
  quar_t *q = id ? map_get(w->quarantine, id) : NULL;
  uint64_t now = util_now_ms();
  if (!q || q->until <= now) return 0;
  w->reason = q->reason;
  buf_reset(&w->trace);
  snprintf(err, errlen,
           "policy %s: %s() failed for container %.12s: its calls ended the "
           "policy worker or ran to the wall clock %u time%s (last: %s); "
           "tried again in %.1f s (reason: %s)",
           w->name, fn, id, q->deaths, q->deaths == 1 ? "" : "s", q->msg,
           (double)(q->until - now) / 1000.0, policy_reason_name(q->reason));
  w->stats->errors[w->reason]++;
  return -1;
}

int worker_quarantined(const worker_t *w, const char *id) {
  return map_get(w->quarantine, id) != NULL;
}

/* A call for the container succeeded: it is out of quarantine. */
static void released(worker_t *w, const char *id) {
  quar_t *q = id ? map_del(w->quarantine, id) : NULL;
  free(q);
}

static char *keep_str(policy_checks_t *pc, const char *s) {
  if (!s) return NULL;
  if (pc->nstrs == pc->scap) {
    pc->scap = pc->scap ? pc->scap * 2 : 8;
    pc->strs = xrealloc(pc->strs, pc->scap * sizeof *pc->strs);
  }
  return pc->strs[pc->nstrs++] = xstrdup(s);
}

/* The reserved key or directory (worker_opts_t.reserved) that holds key,
 * or NULL. */
static const char *reserved_for(const worker_t *w, const char *key) {
  for (char **r = w->reserved; *r; r++)
    if (util_key_holds(*r, key)) return *r;
  return NULL;
}

/* A records() outcome in a reply, at rd: FAIL's fields (fail set) or
 * RECORDS_OK's.  0, or -1 (err). */
static int read_records(worker_t *w, wire_rd_t *rd, int fail, const char *id,
                        records_t *out, char *err, size_t errlen) {
  records_init(out);
  if (fail) {
    failed_reply(w, rd, err, errlen);
    if (rd->bad) return bad_reply(w, "records", err, errlen);
    if (id && w->reason == POLICY_ERR_TIMEOUT) quarantine(w, id, err);
    return -1;
  }
  size_t rejected = (size_t)wire_get_num(rd);
  size_t n = (size_t)wire_get_num(rd);
  if (rd->bad || n > MAX_KEYS_REPLY)
    return bad_reply(w, "records", err, errlen);
  const char *prev = NULL;
  for (size_t i = 0; i < n; i++) {
    size_t kl, vl;
    const char *k = wire_get_str(rd, &kl), *v = wire_get_str(rd, &vl);
    char why[200];
    const char *what = NULL;
    if (rd->bad || !k || !v)
      what = "records";
    else if (policy_check_key(k, kl, why, sizeof why) < 0)
      what = why;
    else if (prev && strcmp(prev, k) >= 0)
      what = "records out of order";
    if (what) {
      records_free(out);
      return bad_reply(w, what, err, errlen);
    }
    const char *own = reserved_for(w, k);
    if (own) { /* the worker cannot know these: dropped here */
      buf_t pk = {0};
      util_clean_text(&pk, k, kl, 160, 0);
      log_error("policy %s: container %.12s: key \"%s\": at or under %s, "
                "one of register's own keys; record skipped",
                w->name, id ? id : "-", pk.data ? pk.data : "", own);
      buf_free(&pk);
      rejected++;
      continue;
    }
    records_add(out, k, v, vl);
    prev = out->v[out->n - 1].key;
  }
  out->rejected = rejected;
  released(w, id);
  return 0;
}

/* The request of worker_checks_records() in o. */
static void put_checks(buf_t *o, const json_value_t *inspect, int records,
                       int stopping) {
  size_t off = wire_begin(o, WIRE_CHECKS);
  put_doc(o, inspect);
  wire_num(o, (uint64_t)records);
  wire_num(o, (uint64_t)stopping);
  wire_end(o, off);
}

/* The request of worker_records_checked() in o. */
static void put_records(buf_t *o, const json_value_t *inspect,
                        const policy_check_view_t *checks) {
  size_t off = wire_begin(o, WIRE_RECORDS);
  put_doc(o, inspect);
  wire_num(o, checks != NULL);
  size_t nv = checks ? checks->n : 0;
  wire_num(o, nv);
  for (size_t i = 0; i < nv; i++) {
    const policy_check_state_t *c = &checks->v[i];
    wire_cstr(o, c->port ? c->port : "");
    wire_cstr(o, c->type ? c->type : "");
    wire_cstr(o, c->state ? c->state : "");
    wire_cstr(o, c->reason ? c->reason : "");
    wire_cstr(o, c->target ? c->target : "");
  }
  wire_num(o, (uint64_t)(checks && checks->stopping));
  wire_end(o, off);
}

/* A reply to put_checks(), at rd (of type): as worker_checks_records()
 * (recs: records were asked for). */
static int read_checks(worker_t *w, wire_rd_t *rd, int type, const char *id,
                       policy_checks_t *out, records_t *recs, int *have,
                       char *rerr, size_t rerrlen, char *err, size_t errlen) {
  if (type == WIRE_FAIL) return failed_reply(w, rd, err, errlen);
  size_t n = (size_t)wire_get_num(rd);
  if (type != WIRE_CHECKS_OK || rd->bad || n > POLICY_MAX_CHECKS)
    return bad_reply(w, "checks", err, errlen);
  out->v = n ? xcalloc(n, sizeof *out->v) : NULL;
  for (size_t i = 0; i < n; i++) {
    checks_spec_t *s = &out->v[i];
    checks_spec_init(s);
    s->port = keep_str(out, wire_get_str(rd, NULL));
    s->type = (checks_type_t)wire_get_num(rd);
    s->path = keep_str(out, wire_get_str(rd, NULL));
    s->method = keep_str(out, wire_get_str(rd, NULL));
    uint64_t lo = wire_get_num(rd), hi = wire_get_num(rd);
    s->status_min = lo <= 599 ? (int)lo : 0; /* else refused below */
    s->status_max = hi <= 599 ? (int)hi : 0;
    s->host = keep_str(out, wire_get_str(rd, NULL));
    s->interval_ms = (long)wire_get_num(rd);
    s->timeout_ms = (long)wire_get_num(rd);
    s->rise = (int)wire_get_num(rd);
    s->fall = (int)wire_get_num(rd);
    s->address = keep_str(out, wire_get_str(rd, NULL));
    out->n = i + 1;
    char why[200];
    if (rd->bad || checks_spec_validate(s, why, sizeof why) < 0) {
      policy_checks_free(out);
      return bad_reply(w, rd->bad ? "checks" : why, err, errlen);
    }
  }
  uint64_t ran = wire_get_num(rd);
  if (rd->bad || ran > 2 || (ran && (!recs || n))) {
    policy_checks_free(out);
    return bad_reply(w, "checks", err, errlen);
  }
  if (ran) {
    int rc = read_records(w, rd, ran == 2, id, recs, rerr, rerrlen);
    if (rc < 0 && !w->pid) { /* a malformed reply: the checks go too */
      policy_checks_free(out);
      snprintf(err, errlen, "%s", rerr);
      return -1;
    }
    *have = rc < 0 ? -1 : 1;
  }
  return 0;
}

int worker_checks_records(worker_t *w, const json_value_t *inspect,
                          int stopping, policy_checks_t *out, records_t *recs,
                          int *have, char *rerr, size_t rerrlen, char *err,
                          size_t errlen) {
  memset(out, 0, sizeof *out);
  if (have) *have = 0;
  if (!w->has_checks) return 0;
  const char *id = json_get_str(inspect, "Id");
  if (quarantined(w, "checks", id, err, errlen) < 0) return -1;
  buf_reset(&w->out);
  put_checks(&w->out, inspect, recs != NULL, stopping);
  wire_rd_t rd;
  int type;
  if (call(w, id, &rd, &type, err, errlen) < 0)
    return died(w, "checks", id, err, errlen);
  return read_checks(w, &rd, type, id, out, recs, have, rerr, rerrlen, err,
                     errlen);
}

int worker_checks(worker_t *w, const json_value_t *inspect,
                  policy_checks_t *out, char *err, size_t errlen) {
  return worker_checks_records(w, inspect, 0, out, NULL, NULL, NULL, 0, err,
                               errlen);
}

int worker_records_checked(worker_t *w, const json_value_t *inspect,
                           const policy_check_view_t *checks, records_t *out,
                           char *err, size_t errlen) {
  records_init(out);
  const char *id = json_get_str(inspect, "Id");
  if (quarantined(w, "records", id, err, errlen) < 0) return -1;
  buf_reset(&w->out);
  put_records(&w->out, inspect, checks);
  wire_rd_t rd;
  int type;
  if (call(w, id, &rd, &type, err, errlen) < 0)
    return died(w, "records", id, err, errlen);
  if (type != WIRE_FAIL && type != WIRE_RECORDS_OK)
    return bad_reply(w, "records", err, errlen);
  return read_records(w, &rd, type == WIRE_FAIL, id, out, err, errlen);
}

/* ---- pipelined updates ---- */

/* Updates sent and not answered, at most: a bound on the loop's wait when
 * a synchronous call must first see them answered, and on the bytes in
 * the socket (below its buffer, so that a send never waits for the worker
 * to read while it writes replies that nobody reads) */
#define JOBS_MAX 32
#define JOBS_BYTES (128u << 10)
/* Started and not yet sent (the worker is behind), at most: past that,
 * starting one waits for a reply (the documents wait in memory) */
#define JOBS_QUEUED 256

struct job {
  job_t *next;
  worker_update_cb done;
  worker_after_cb after; /* worker_after()'s: no call, done() not used */
  int dropped;           /* worker_drop(): done() sees it cancelled */
  void *ud;
  char *id;       /* the container's, owned ("" when the document has none) */
  buf_t req;      /* the request, kept to be sent again to a new incarnation */
  int has_checks; /* put_checks(); else put_records() with no checks */
  int answered;   /* u is its outcome */
  uint64_t tag;   /* the incarnation it went to; 0: not sent */
  worker_update_t u;
  char err[600], rerr[600];
  json_doc_t *doc; /* worker_update_inspect()'s, parsed from req */
};

static void poll_cb(uv_poll_t *h, int status, int events);
static void pipe_cb(uv_timer_t *t);

static void poll_closed(uv_handle_t *h) {
  free(h);
}

/* The incarnation's socket is closing: its poll handle goes first. */
static void poll_drop(worker_t *w) {
  if (!w->poll) return;
  uv_close((uv_handle_t *)w->poll, poll_closed);
  w->poll = NULL;
}

static job_t *first_sent(worker_t *w) {
  for (job_t *j = w->jobs; j; j = j->next)
    if (!j->answered && j->tag) return j;
  return NULL;
}

/* The job is over with a failure (err: the message). */
static void job_failed(worker_t *w, job_t *j, const char *err) {
  j->answered = 1;
  j->u.reason = w->reason;
  if (j->has_checks) {
    j->u.rc = -1;
    snprintf(j->err, sizeof j->err, "%s", err);
  } else {
    j->u.have = -1;
    snprintf(j->rerr, sizeof j->rerr, "%s", err);
  }
}

static void job_unsent(worker_t *w, job_t *j) {
  REGISTER_ASSERT(j->tag && w->jobs_sent > 0);
  j->tag = 0;
  w->jobs_sent--;
  w->jobs_bytes -= j->req.len;
}

static int job_send(worker_t *w, job_t *j);

/* Sends the jobs waiting, in order, while the caps allow. */
static void fill(worker_t *w) {
  /* nor while jobs wait on a dead incarnation: pump() first blames the
   * one it was running and sends the others again, these behind them */
  if (w->no_fill || (!w->pid && w->jobs_sent)) return;
  for (job_t *j = w->jobs; j && w->jobs_queued; j = j->next) {
    if (j->answered || j->tag) continue;
    if (w->jobs_sent &&
        (w->jobs_sent >= JOBS_MAX || w->jobs_bytes + j->req.len > JOBS_BYTES))
      return;
    w->jobs_queued--;
    job_send(w, j);
  }
}

/* Sends j to the incarnation running (started if none): 0, or -1 (j is
 * over: the worker cannot be had). */
static int job_send(worker_t *w, job_t *j) {
  char err[600];
  REGISTER_ASSERT(!j->answered && !j->tag);
  w->died = 0;
  if (ensure(w, *j->id ? j->id : NULL, err, sizeof err) < 0) {
    w->stats->errors[w->reason]++;
    job_failed(w, j, err);
    return -1;
  }
  if (!w->poll) {
    w->poll = xcalloc(1, sizeof *w->poll);
    uv_poll_init(w->loop, w->poll, w->fd);
    w->poll->data = w;
  }
  uint64_t now = util_now_ms();
  if (!w->jobs_sent) { /* it runs first: its wall clock starts now */
    w->head_since = now;
    w->call_lines = w->call_rt_lines = 0;
    w->call_dropped = 0;
    uv_poll_start(w->poll, UV_READABLE, poll_cb);
    uv_timer_start(w->pipe, pipe_cb, WATCH_MS, WATCH_MS);
  }
  int sent = send_all(w, j->req.data, j->req.len,
                      now + w->time_limit_ms + WORKER_GRACE_MS);
  if (sent < 0 && !w->jobs_sent) { /* as a synchronous call's */
    end_incarnation(w, sent == -2, POLICY_ERR_CRASH,
                    "the policy worker did not take its request");
    fail(w, w->death_reason, w->death, err, sizeof err);
    w->stats->errors[w->reason]++;
    job_failed(w, j, err);
    return -1;
  }
  if (sent < 0) /* the one running is to blame: pump() finds it dead */
    end_incarnation(w, sent == -2, POLICY_ERR_CRASH,
                    "the policy worker did not take its request");
  j->tag = w->tag;
  w->jobs_sent++;
  w->jobs_bytes += j->req.len;
  /* the caps (fill()); one may pass the bytes' when it is the only one */
  REGISTER_ASSERT(w->jobs_sent <= JOBS_MAX &&
                  (w->jobs_sent == 1 || w->jobs_bytes <= JOBS_BYTES));
  return 0;
}

/* The incarnation the sent jobs went to is gone: they go to a new one, in
 * their order. */
static void resend(worker_t *w) {
  for (job_t *j = w->jobs; j; j = j->next)
    if (!j->answered && j->tag) {
      job_unsent(w, j);
      w->jobs_queued++;
    }
  fill(w);
}

/* j's call ended the incarnation (w->death; j->err says so): j fails as
 * a synchronous call would (its container quarantined), the others are
 * sent again. */
static void lost(worker_t *w, job_t *j) {
  job_unsent(w, j);
  w->stats->errors[w->reason]++;
  char err[600];
  snprintf(err, sizeof err, "%s", j->err);
  died(w, j->has_checks ? "checks" : "records", *j->id ? j->id : NULL, err,
       sizeof err);
  job_failed(w, j, err);
  resend(w);
}

/* j's reply, at rd. */
static void answered(worker_t *w, job_t *j, wire_rd_t *rd, int type) {
  REGISTER_ASSERT(j->tag == w->tag); /* this incarnation's reply */
  job_unsent(w, j);
  j->answered = 1;
  w->deaths_in_row = 0;
  if (w->call_dropped)
    log_warn("policy %s: %lu log lines of one call dropped (at most %d per "
             "call and %d per second)",
             w->name, w->call_dropped, WORKER_LOG_PER_CALL, WORKER_LOG_PER_SEC);
  worker_update_t *u = &j->u;
  const char *id = *j->id ? j->id : NULL;
  if (j->has_checks)
    u->rc = read_checks(w, rd, type, id, &u->checks, &u->recs, &u->have,
                        j->rerr, sizeof j->rerr, j->err, sizeof j->err);
  else if (type != WIRE_FAIL && type != WIRE_RECORDS_OK)
    u->have = bad_reply(w, "records", j->rerr, sizeof j->rerr);
  else
    u->have = read_records(w, rd, type == WIRE_FAIL, id, &u->recs, j->rerr,
                           sizeof j->rerr) < 0
                  ? -1
                  : 1;
  if (u->rc < 0 || u->have < 0) u->reason = w->reason;
  if (!w->pid)
    resend(w); /* a malformed reply ended it */
  else
    fill(w);
}

enum { PUMP_NOW, PUMP_ONE, PUMP_ALL };

/* Reads the sent jobs' replies: those there now (PUMP_NOW), or waiting for
 * one (PUMP_ONE) or all (PUMP_ALL). */
static void pump(worker_t *w, int mode) {
  while (w->jobs_sent) {
    job_t *j = first_sent(w);
    REGISTER_ASSERT(j);
    if (!w->pid || j->tag != w->tag) { /* found dead by a send */
      fail(w, w->death_reason, w->death, j->err, sizeof j->err);
      lost(w, j);
      continue;
    }
    wire_rd_t rd;
    int type;
    w->died = 0;
    int rc = wait_reply(w, w->head_since + w->time_limit_ms + WORKER_GRACE_MS,
                        &rd, &type, j->err, sizeof j->err, mode == PUMP_NOW);
    if (rc == 1) break;
    if (rc == 0)
      answered(w, j, &rd, type);
    else
      lost(w, j);
    w->head_since = util_now_ms(); /* the next one runs from here */
    w->call_lines = w->call_rt_lines = 0;
    w->call_dropped = 0;
    if (mode == PUMP_ONE) break;
  }
  if (!w->jobs_sent) {
    if (w->poll) uv_poll_stop(w->poll);
    uv_timer_stop(w->pipe);
  }
}

/* done() for the jobs answered at the head of the line, in order. */
static void dispatch(worker_t *w) {
  REGISTER_ASSERT(!w->starting); /* never done() inside the start */
  if (w->dispatching) return;    /* a done() made a synchronous call */
  w->dispatching = 1;
  while (w->jobs && w->jobs->answered) {
    job_t *j = w->jobs;
    w->jobs = j->next;
    if (!w->jobs) w->jobs_tail = &w->jobs;
    j->u.err = j->err;
    j->u.rerr = j->rerr;
    if (j->dropped) j->u.cancelled = 1;
    if (j->after)
      j->after(j->ud, j->u.cancelled);
    else
      j->done(j->ud, &j->u);
    policy_checks_free(&j->u.checks);
    records_free(&j->u.recs);
    json_free(j->doc);
    buf_free(&j->req);
    free(j->id);
    free(j);
  }
  w->dispatching = 0;
}

static void later_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  fill(w);
  dispatch(w);
}

/* After a synchronous step: the jobs it answered are done, and those
 * waiting sent, from the loop. */
static void dispatch_later(worker_t *w) {
  if (((w->jobs && w->jobs->answered) || w->jobs_queued) && w->later)
    uv_timer_start(w->later, later_cb, 0, 0);
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  (void)status; /* an error reads as the socket's end */
  (void)events;
  worker_t *w = h->data;
  pump(w, PUMP_NOW);
  dispatch(w);
}

/* While jobs are sent: the wall clock of the one running (pump()) and
 * the whole worker's memory. */
static void pipe_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  job_t *j = first_sent(w);
  if (j && w->pid && over_memory(w)) {
    fail(w, w->death_reason, w->death, j->err, sizeof j->err);
    lost(w, j);
  }
  pump(w, PUMP_NOW);
  dispatch(w);
}

/* Before a synchronous call: the jobs sent are answered first. */
static void settle(worker_t *w) {
  if (w->jobs_sent) {
    w->no_fill = 1; /* those waiting go after this call */
    pump(w, PUMP_ALL);
    w->no_fill = 0;
  }
  dispatch_later(w);
}

void worker_update_start(worker_t *w, const json_value_t *inspect, int stopping,
                         worker_update_cb done, void *ud) {
  REGISTER_ASSERT(w->loop && done && !w->starting && !w->no_fill);
  w->starting = 1;
  job_t *j = xcalloc(1, sizeof *j);
  const char *id = json_get_str(inspect, "Id");
  j->id = xstrdup(id ? id : "");
  j->done = done;
  j->ud = ud;
  j->has_checks = w->has_checks;
  buf_init(&j->req);
  records_init(&j->u.recs);
  if (j->has_checks) {
    put_checks(&j->req, inspect, 1, stopping);
  } else {
    policy_check_view_t none = {NULL, 0, stopping};
    put_records(&j->req, inspect, &none);
  }
  *w->jobs_tail = j;
  w->jobs_tail = &j->next;
  char err[600];
  if (quarantined(w, j->has_checks ? "checks" : "records", id, err,
                  sizeof err) < 0) {
    job_failed(w, j, err);
  } else {
    w->jobs_queued++;
    fill(w);
    while (w->jobs_queued > JOBS_QUEUED && w->jobs_sent)
      pump(w, PUMP_ONE); /* the worker is far behind: wait for it */
  }
  /* never done() inside this call */
  dispatch_later(w);
  w->starting = 0;
}

const json_value_t *worker_update_inspect(const worker_update_t *u) {
  /* u is a job's: the job is found from it (the document goes with it) */
  job_t *j = (job_t *)((uintptr_t)u - offsetof(job_t, u));
  if (!j->doc && j->req.len > 4) {
    wire_rd_t rd;
    wire_rd_init(&rd, j->req.data + 4, j->req.len - 4);
    wire_type(&rd);
    size_t len;
    const char *doc = wire_get_str(&rd, &len);
    char err[160];
    if (doc) j->doc = json_parse(doc, len, err, sizeof err);
  }
  return j->doc ? json_root(j->doc) : NULL;
}

void worker_after(worker_t *w, worker_after_cb after, void *ud) {
  REGISTER_ASSERT(w->later && after && !w->starting); /* one with a loop */
  w->starting = 1; /* dispatch() asserts it is not called in here */
  job_t *j = xcalloc(1, sizeof *j);
  j->id = xstrdup("");
  j->after = after;
  j->ud = ud;
  j->answered = 1; /* nothing to ask: it waits only for those before it */
  buf_init(&j->req);
  records_init(&j->u.recs);
  *w->jobs_tail = j;
  w->jobs_tail = &j->next;
  dispatch_later(w); /* never after() inside this call */
  w->starting = 0;
}

void worker_drop(worker_t *w, const char *id) {
  for (job_t *j = w->jobs; j; j = j->next) {
    if (j->after || j->dropped || strcmp(j->id, id) != 0) continue;
    j->dropped = 1;
    if (!j->answered && !j->tag) { /* waiting: it is not sent at all */
      REGISTER_ASSERT(w->jobs_queued > 0);
      j->answered = 1;
      w->jobs_queued--;
    } /* sent: its answer is not used */
  }
  dispatch_later(w);
}

void worker_hand_over(worker_t *w, worker_t *to, worker_each_cb each,
                      void *ud) {
  REGISTER_ASSERT(w != to && to->later && !to->jobs); /* a fresh one */
  REGISTER_ASSERT(!w->dispatching);                   /* not from a done() */
  dispatch(w); /* those answered are done under w (in order) */
  job_t **pp = &w->jobs;
  while (*pp) {
    job_t *j = *pp;
    if (j->after) { /* the barrier goes on in to's queue */
      *pp = j->next;
      if (w->jobs_tail == &j->next) w->jobs_tail = pp;
      worker_after(to, j->after, j->ud);
      buf_free(&j->req);
      free(j->id);
      free(j);
      continue;
    }
    if (!j->dropped) {
      j->dropped = 1;                /* its done() sees it cancelled */
      if (!j->answered && !j->tag) { /* waiting: it is not sent at all */
        REGISTER_ASSERT(w->jobs_queued > 0);
        j->answered = 1;
        w->jobs_queued--;
      }
      each(ud, j->id);
    }
    pp = &j->next;
  }
}

/* worker_free(): every job not yet done is, cancelled. */
static void jobs_cancel(worker_t *w) {
  for (job_t *j = w->jobs; j; j = j->next) {
    policy_checks_free(&j->u.checks);
    records_free(&j->u.recs);
    memset(&j->u, 0, sizeof j->u);
    j->u.cancelled = 1;
    j->answered = 1;
  }
  w->jobs_sent = w->jobs_bytes = w->jobs_queued = 0;
  dispatch(w);
  REGISTER_ASSERT(!w->jobs); /* each done() once, cancelled */
}

/* ---- renderers ---- */

int worker_render(worker_t *w, const policy_kv_t *kv, size_t n,
                  const policy_render_ctx_t *ctx, buf_t *out, char *err,
                  size_t errlen) {
  buf_reset(out);
  buf_t *o = &w->out;
  buf_reset(o);
  size_t off = wire_begin(o, WIRE_RENDER);
  wire_cstr(o, ctx->prefix ? ctx->prefix : "");
  wire_num(o, (uint64_t)ctx->revision);
  wire_cstr(o, ctx->api ? ctx->api : "");
  wire_num(o, n);
  for (size_t i = 0; i < n; i++) {
    wire_str(o, kv[i].key, kv[i].klen);
    wire_str(o, kv[i].value, kv[i].vlen);
  }
  wire_end(o, off);
  if (o->len > WIRE_MAX_FRAME) {
    snprintf(err, errlen,
             "renderer %s: %zu keys of %zu bytes in all: over the %u byte "
             "limit of one call (reason: error)",
             w->name, n, o->len, WIRE_MAX_FRAME);
    w->reason = POLICY_ERR_ERROR;
    w->stats->errors[w->reason]++;
    buf_reset(o);
    return -1;
  }
  wire_rd_t rd;
  int type;
  if (call(w, NULL, &rd, &type, err, errlen) < 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s", err);
    snprintf(err, errlen, "renderer %s: render() failed: %s (reason: %s)",
             w->name, msg, policy_reason_name(w->reason));
    return -1;
  }
  if (type == WIRE_FAIL) {
    failed_reply(w, &rd, err, errlen);
    if (rd.bad) return bad_reply(w, "render", err, errlen);
    return -1;
  }
  size_t len;
  const char *text = wire_get_str(&rd, &len);
  if (type != WIRE_RENDER_OK || rd.bad || !text || len > POLICY_MAX_RENDER)
    return bad_reply(w, "render", err, errlen);
  buf_append(out, text, len);
  return 0;
}

/* ---- hooks ---- */

static void tick_cb(uv_timer_t *t);

/* A hook step (w->out): its reply says how many hook calls are alive. */
/* A hook's step holds the daemon's loop while it runs (up to
 * --policy-timeout): a policy whose hooks each stay within their limits
 * could still take the loop from everything else (a changed() of 0.3 s,
 * once per key).  New hook calls get at most HOOK_SHARE_MS of every
 * second; past that they are dropped and counted with the calls dropped
 * for MAX_HOOKS.  The steps of calls already running (I/O answers, ticks)
 * always go on. */
#define HOOK_SHARE_MS 250

static void step(worker_t *w, const char *label) {
  wire_rd_t rd;
  int type;
  char err[400];
  int new_call = strcmp(label, "event") == 0 || strcmp(label, "changed") == 0;
  uint64_t t0 = util_now_ms();
  if (t0 - w->hook_sec_start >= 1000) {
    w->hook_sec_start = t0;
    w->hook_sec_ms = 0;
  }
  if (new_call && w->hook_sec_ms >= HOOK_SHARE_MS) {
    w->stats->hooks_dropped++;
    if (w->hooks_shed++ % 1000 == 0)
      log_warn("policy %s: %s hook call dropped: the hooks took %llu ms of "
               "the last second, more than the %d ms they may hold the "
               "daemon (%lu dropped so far)",
               w->name, label, (unsigned long long)w->hook_sec_ms,
               HOOK_SHARE_MS, w->hooks_shed);
    return;
  }
  w->step_label = label;
  int rc = call(w, NULL, &rd, &type, err, sizeof err);
  w->step_label = NULL;
  w->hook_sec_ms += util_now_ms() - t0;
  if (rc < 0) {
    log_error("policy %s: %s hook failed: %s (reason: %s)", w->name, label, err,
              policy_reason_name(w->reason));
    return;
  }
  uint64_t n = wire_get_num(&rd);
  if (type != WIRE_STEP || rd.bad) {
    bad_reply(w, "hook step", err, sizeof err);
    return;
  }
  w->nhooks = (size_t)n;
  if (w->tick) {
    if (w->nhooks && !uv_is_active((uv_handle_t *)w->tick))
      uv_timer_start(w->tick, tick_cb, 1000, 1000);
    else if (!w->nhooks)
      uv_timer_stop(w->tick);
  }
}

static void tick_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  if (!w->pid) return;
  buf_reset(&w->out);
  wire_end(&w->out, wire_begin(&w->out, WIRE_TICK));
  step(w, "a");
}

static void io_done(void *ud, uint64_t tag, uint64_t id,
                    const iocall_answer_t *a) {
  worker_t *w = ud;
  char key[24];
  snprintf(key, sizeof key, "%llu", (unsigned long long)id);
  const char *label = io_label(w, key, NULL);
  if (tag != w->tag || !w->pid) return; /* an incarnation that is gone */
  buf_t *o = &w->out;
  buf_reset(o);
  size_t off = wire_begin(o, WIRE_IO_ANSWER);
  wire_num(o, id);
  wire_cstr(o, a->error);
  wire_num(o, (uint64_t)a->status);
  wire_str(o, a->body ? a->body : "", a->body_len);
  wire_str(o, a->headers ? a->headers : "", a->headers_len);
  wire_num(o, a->n);
  for (size_t i = 0; i < a->n; i++) {
    wire_cstr(o, a->kvs[i].key);
    wire_str(o, a->kvs[i].value, a->kvs[i].value_len);
  }
  wire_end(o, off);
  step(w, label ? label : "a");
}

void worker_hook_event(worker_t *w, const policy_event_t *ev) {
  if (!w->has_event) return;
  buf_t *o = &w->out;
  buf_reset(o);
  size_t off = wire_begin(o, WIRE_EVENT);
  wire_cstr(o, ev->type);
  wire_cstr(o, ev->action);
  wire_cstr(o, ev->id);
  wire_cstr(o, ev->image);
  if (ev->attributes)
    put_doc(o, ev->attributes);
  else
    wire_str(o, NULL, 0);
  wire_num(o, (uint64_t)ev->time);
  wire_num(o, (uint64_t)ev->time_nano);
  wire_cstr(o, ev->health_status);
  wire_end(o, off);
  step(w, "event");
}

void worker_hook_changed(worker_t *w, const char *op, const char *key,
                         const char *value, size_t vlen) {
  if (!w->has_changed) return;
  buf_t *o = &w->out;
  buf_reset(o);
  size_t off = wire_begin(o, WIRE_CHANGED);
  wire_cstr(o, op);
  wire_cstr(o, key);
  wire_str(o, value, vlen);
  wire_end(o, off);
  step(w, "changed");
}

void worker_gc(worker_t *w) {
  if (!w->pid) return;
  buf_reset(&w->out);
  wire_end(&w->out, wire_begin(&w->out, WIRE_GC));
  step(w, "a");
}

void worker_check_view(const checks_t *ck, const char *id,
                       policy_check_state_t *buf, size_t cap,
                       policy_check_view_t *view) {
  size_t n = ck ? checks_count(ck, id) : 0;
  if (n > cap) n = cap;
  for (size_t i = 0; i < n; i++) {
    checks_info_t in;
    if (checks_get(ck, id, i, &in) < 0) {
      n = i;
      break;
    }
    buf[i].port = in.port;
    buf[i].type = in.type;
    buf[i].state = checks_state_name(in.state);
    buf[i].reason = in.reason;
    buf[i].target = in.target;
  }
  view->v = buf;
  view->n = n;
  view->stopping = 0;
}

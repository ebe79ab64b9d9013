/* watch: `register watch`: a file kept rendered from a prefix of etcd.
 * See watch.h.
 *
 * One cycle at a time: list -> render -> write the candidate -> check ->
 * rename -> reload.  Changes seen meanwhile make the next cycle, after the
 * debounce.  Ownership: watch_t owns every module it creates; the text
 * buffers are its own; a listing's keys live only during its callback
 * (rendering happens there). */
#include "watch.h"
#include "command.h"
#include "creds.h"
#include "etcd.h"
#include "etcd_watch.h"
#include "http.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "policy.h"
#include "stopsig.h"
#include "util.h"
#include "worker.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* failures in a row of a render, check or reload command: the next try
 * after 1 s, doubling to 30 s */
#define RETRY_MIN_MS 1000u
#define RETRY_MAX_MS 30000u
/* an etcd failure: as the daemon's reconciler, so that the file follows
 * etcd within about 5 s of its return (halved at random, so that many
 * watchers do not come back together); a watch that etcd compacts again
 * right after a fresh read starts at 1 s (each read succeeds, so the
 * failures in a row never grow: this is its rate) */
#define ETCD_RETRY_MIN_MS 200u
#define ETCD_RETRY_MAX_MS 5000u
#define COMPACTED_RETRY_MS 1000u
/* ...except while no etcd endpoint even takes a connection (every member
 * down, being restarted): a refused connect costs etcd nothing, so the
 * listing is tried every 125-250 ms and the file follows within a fraction
 * of a second of etcd's return, not at the end of a 5 s backoff.  Those
 * tries do not lengthen the backoff for what follows (a member that
 * listens but has no leader yet). */
#define ETCD_PROBE_MS 250u
/* a watch that has heard nothing from its member for this long probes it
 * (etcd_watch_probe_every): a member that hung (accepts connections, never
 * answers) is left within this and the probe's limit (about a second on a
 * quiet cluster), not at the 60 s renewal */
#define WATCH_PROBE_MS 3000u
/* /healthz: etcd not heard from for this long (a listing unanswered, a
 * watch whose member is silent) is unhealthy before the listing fails */
#define ETCD_SILENT_MS 10000u
/* the file we compare with is read whole up to this size */
#define MAX_FILE (POLICY_MAX_RENDER + 1u)

typedef enum { PHASE_IDLE, PHASE_LIST, PHASE_CHECK, PHASE_RELOAD } phase_t;

typedef struct {
  const config_t *cfg;
  uv_loop_t loop;
  http_t *http;
  etcd_t *etcd;
  creds_t *creds; /* etcd's password and TLS files, watched; or NULL */
  worker_t *worker;
  worker_stats_t wstats;
  policy_stats_t pstats;
  httpd_t *httpd;
  notify_t *notify;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t debounce; /* the next cycle, after the quiet period */
  uv_timer_t retry;    /* the next cycle after an etcd failure */
  uv_timer_t deadline; /* --once: --timeout */
  etcd_watch_t *watch;
  etcd_op_t *listing;
  command_t *cmd;
  phase_t phase;

  /* changes */
  int64_t rev;       /* the revision the file was rendered from */
  int dirty;         /* a change not yet read */
  int64_t dirty_rev; /* the newest change seen */
  uint64_t first_ms; /* uv_now() of the first change not yet read, or 0 */
  uint64_t last_ms;  /* of the last one */
  uint64_t cycle_change_ms;  /* the first change the running cycle reads */
  unsigned failures;         /* etcd failures in a row */
  unsigned backoff;          /* of those, the ones that were not refusals */
  unsigned render_failures;  /* failed renders in a row */
  unsigned reload_failures;  /* failed reloads in a row */
  unsigned install_failures; /* failed writes and checks in a row */
  int owner_warned;          /* the file's owner could not be kept: said */
  uint64_t list_ms;          /* uv_now() when the running listing started */
  int retry_etcd;            /* the retry timer is an etcd failure's */
  unsigned compacted; /* watches in a row that ended compacted, no change */
  uint64_t watch_ms;  /* uv_now() when the watch started */
  char etcd_error[400];

  /* the file */
  buf_t current;     /* the text PATH holds (what we wrote or found) */
  int current_known; /* PATH held current when last written or read */
  buf_t candidate;   /* the text being put in place */
  char *tmp;         /* the candidate's temporary file, while checked */
  int tmp_fd; /* open on tmp, with flock(): a run's own (remove_leftovers) */
  char *dest; /* what tmp is renamed to: PATH, or its link's target */
  struct stat disk_st; /* dest as last written or read (disk_cb) */
  int disk_st_known;
  /* the mode and owner of the file last written: a file removed since
   * is written again with them (not a new file's 0644) */
  struct stat wrote_st;
  int wrote_known;
  uv_timer_t disk_timer; /* looks at dest between cycles */
  /* beside PATH while a file put in place has not been reloaded yet:
   * found at start, the reload the last run did not finish is run
   * (owned; NULL without --reload) */
  char *pending;
  size_t nkeys; /* in the last listing */
  char render_error[600], check_error[900], reload_error[900];

  /* --once */
  int once_done;
  int exit_code;
  int stopping;
  int ready;

  /* statistics */
  unsigned long renders_ok, renders_unchanged, renders_failed;
  unsigned long checks_ok, checks_failed, reloads_ok, reloads_failed;
  unsigned long writes_failed, etcd_failures, watch_restarts, compactions;
  double last_good_unix; /* wall clock of the last good render */
  double lag_last, lag_sum;
  unsigned long lag_n;
} watch_t;

static void cycle(watch_t *w);
static void cycle_cb(uv_timer_t *t);
static void maybe_next(watch_t *w);

static double unix_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The wait before a render, write, check or reload that failed
 * `failures` times in a row is tried again: 1 s, doubling to 30 s. */
static uint64_t retry_delay(unsigned failures) {
  unsigned shift = failures > 1 ? failures - 1 : 0;
  uint64_t delay = (uint64_t)RETRY_MIN_MS << (shift > 5 ? 5 : shift);
  return delay > RETRY_MAX_MS ? RETRY_MAX_MS : delay;
}

/* What a failure's log line says of the next try: nothing with --once,
 * which does not try again. */
static const char *again_in(const watch_t *w, uint64_t delay, char *out,
                            size_t n) {
  if (w->cfg->once) return "";
  snprintf(out, n, " (tried again in %.0f s)", (double)delay / 1000);
  return out;
}

/* A failed cycle is tried again after delay (not with --once), whether or
 * not etcd changes meanwhile. */
static void retry_in(watch_t *w, uint64_t delay) {
  if (w->cfg->once || w->stopping) return;
  w->retry_etcd = 0;
  uv_timer_start(&w->retry, cycle_cb, delay, 0);
}

/* ---- the end ---- */

static void close_cb(uv_handle_t *h) {
  (void)h;
}

/* The candidate's temporary file is over: removed (unless it was renamed
 * into place: remove 0), then closed, which lets its lock go. */
static void tmp_end(watch_t *w, int remove) {
  if (!w->tmp) return;
  if (remove) unlink(w->tmp);
  if (w->tmp_fd >= 0) close(w->tmp_fd);
  w->tmp_fd = -1;
  free(w->tmp);
  w->tmp = NULL;
}

static void stop(watch_t *w, int code) {
  if (w->stopping) return;
  w->stopping = 1;
  w->exit_code = code;
  notify_stopping(w->notify);
  etcd_watch_cancel(w->watch);
  w->watch = NULL;
  if (w->listing) etcd_cancel(w->listing);
  w->listing = NULL;
  command_cancel(w->cmd);
  w->cmd = NULL;
  command_shutdown(); /* what earlier commands left behind keeps running */
  tmp_end(w, 1);
  uv_close((uv_handle_t *)&w->debounce, close_cb);
  uv_close((uv_handle_t *)&w->retry, close_cb);
  uv_close((uv_handle_t *)&w->deadline, close_cb);
  uv_close((uv_handle_t *)&w->disk_timer, close_cb);
  uv_close((uv_handle_t *)&w->sigterm, close_cb);
  uv_close((uv_handle_t *)&w->sigint, close_cb);
  uv_close((uv_handle_t *)&w->sighup, close_cb);
  httpd_free(w->httpd);
  w->httpd = NULL;
  notify_free(w->notify);
  w->notify = NULL;
  etcd_free(w->etcd);
  w->etcd = NULL;
  creds_free(w->creds);
  w->creds = NULL;
  http_free(w->http);
  w->http = NULL;
}

/* ---- the renderer ---- */

static worker_t *load_renderer(watch_t *w, char *err, size_t errlen) {
  const config_t *cfg = w->cfg;
  worker_opts_t o = {0};
  o.file = cfg->render_file;
  o.host_ip = cfg->host_ip;
  o.hostname = cfg->hostname;
  o.time_limit_ms = (uint64_t)cfg->policy_timeout_ms;
  o.env = cfg->policy_env;
  o.render = 1;
  o.stats = &w->pstats;
  o.wstats = &w->wstats;
  o.log_level = cfg->log_level;
  o.interrupted = stopsig_flag();
  return worker_new(&o, err, errlen);
}

/* ---- the file ---- */

static const char *file_kind(mode_t m) {
  return S_ISDIR(m)    ? "a directory"
         : S_ISCHR(m)  ? "a character device"
         : S_ISBLK(m)  ? "a block device"
         : S_ISFIFO(m) ? "a FIFO"
         : S_ISSOCK(m) ? "a socket"
                       : "not a regular file";
}

/* The file PATH names: PATH itself, or what a symbolic link PATH leads to
 * (the link is kept and its target written: a link that the operator made
 * points at the file they mean).  A rename over a device, a FIFO, a
 * socket or a directory would replace it (/dev/null, as root) or fail, and
 * reading one can hang: NULL with one line in err then, and for a link
 * that leads nowhere. */
/* The path a chain of symbolic links from link ends at, when that is a
 * name not taken in a directory that exists (malloc'd); else NULL. */
static char *link_end(const char *link) {
  char *cur = xstrdup(link);
  for (int hops = 0; hops < 40; hops++) {
    struct stat st;
    if (lstat(cur, &st) < 0) {
      if (errno != ENOENT) break;
      char *dir = util_path_dir(cur);
      int ok = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
      free(dir);
      if (ok) return cur;
      break;
    }
    if (!S_ISLNK(st.st_mode)) break;
    char to[4096];
    ssize_t n = readlink(cur, to, sizeof to - 1);
    if (n <= 0) break;
    to[n] = '\0';
    char *next;
    const char *slash = strrchr(cur, '/');
    if (to[0] == '/' || !slash)
      next = xstrdup(to);
    else
      next = xasprintf("%.*s/%s", (int)(slash - cur), cur, to);
    free(cur);
    cur = next;
  }
  free(cur);
  return NULL;
}

static char *out_target(const char *out, char *err, size_t errlen) {
  struct stat st;
  if (lstat(out, &st) < 0) {
    if (errno == ENOENT) return xstrdup(out); /* created */
    snprintf(err, errlen, "--out %s: %s", out, strerror(errno));
    return NULL;
  }
  char *path;
  if (S_ISLNK(st.st_mode)) {
    char *real = realpath(out, NULL);
    if (!real && errno == ENOENT && (path = link_end(out)))
      return path; /* a file not rendered yet (or removed): created */
    if (!real || stat(real, &st) < 0) {
      snprintf(err, errlen,
               "--out %s is a symbolic link that leads nowhere: %s", out,
               strerror(errno));
      free(real);
      return NULL;
    }
    path = xstrdup(real);
    free(real);
  } else {
    path = xstrdup(out);
  }
  if (!S_ISREG(st.st_mode)) {
    if (strcmp(path, out) != 0)
      snprintf(err, errlen, "--out %s leads to %s, %s, not a regular file", out,
               path, file_kind(st.st_mode));
    else
      snprintf(err, errlen, "--out %s is %s, not a regular file", out,
               file_kind(st.st_mode));
    free(path);
    return NULL;
  }
  return path;
}

/* The file's owner and group on the candidate, as far as we may: a
 * process that is not root cannot give a file away, but can keep its
 * group when it is a member of it.  What cannot be kept is said once. */
static void keep_owner(watch_t *w, int fd, const struct stat *st) {
  if (fchown(fd, st->st_uid, st->st_gid) == 0) return;
  int saved = errno;
  int group = st->st_gid == getegid() || fchown(fd, (uid_t)-1, st->st_gid) == 0;
  if ((st->st_uid == geteuid() && group) || w->owner_warned) return;
  w->owner_warned = 1;
  log_warn("watch: cannot keep %s's owner %ld:%ld (%s): the new file is "
           "%ld:%ld (said once)",
           w->dest, (long)st->st_uid, (long)st->st_gid, strerror(saved),
           (long)geteuid(), group ? (long)st->st_gid : (long)getegid());
}

/* The candidate in a temporary file beside the file PATH names, with its
 * mode and owner (those it had when last written, when it was removed
 * since; 0644 less the umask for a new file), on disk.  0, or -1. */
static int write_candidate(watch_t *w, char *err, size_t errlen) {
  free(w->dest);
  w->dest = out_target(w->cfg->out_file, err, errlen);
  if (!w->dest) return -1;
  const char *out = w->dest;
  char *dir = util_path_dir(out);
  const char *base = util_path_base(out);
  w->tmp = xasprintf("%s/.%s.register-XXXXXX", dir, base);
  free(dir);
  /* locked while it exists: another run's remove_leftovers() leaves it */
  int fd = mkostemp(w->tmp, O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, errlen, "cannot create a file beside %s: %s", out,
             strerror(errno));
    free(w->tmp);
    w->tmp = NULL;
    return -1;
  }
  w->tmp_fd = fd; /* tmp_end() closes it */
  if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
    snprintf(err, errlen, "cannot lock %s: %s", w->tmp, strerror(errno));
    tmp_end(w, 1);
    return -1;
  }
  const char *p = w->candidate.data ? w->candidate.data : "";
  size_t left = w->candidate.len;
  int rc = 0;
  while (left && rc == 0) {
    ssize_t k = write(fd, p, left);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0)
      rc = -1;
    else {
      p += k;
      left -= (size_t)k;
    }
  }
  struct stat st;
  if (rc == 0) {
    int exists = stat(out, &st) == 0;
    if (!exists && w->wrote_known) st = w->wrote_st;
    if (exists || w->wrote_known) {
      rc = fchmod(fd, st.st_mode & 07777);
      if (rc == 0) keep_owner(w, fd, &st);
    } else {
      mode_t mask = umask(0);
      umask(mask);
      rc = fchmod(fd, 0644 & ~mask);
    }
  }
  if (rc == 0) rc = fsync(fd);
  if (rc < 0) {
    snprintf(err, errlen, "cannot write %s: %s", w->tmp, strerror(errno));
    tmp_end(w, 1);
    return -1;
  }
  return 0;
}

/* At start: the candidates a run killed while it checked one (SIGKILL,
 * a crash) left beside dest, ".NAME.register-XXXXXX" exactly (mkstemp's
 * six letters; not the reload-pending mark), regular files of our own,
 * are removed, each said at info.  A candidate a running register watch
 * holds (its flock(); a `--once` run beside the service, say) is left to
 * it.  Nothing else of the directory is touched. */
static void remove_leftovers(const char *dest) {
  char *dir = util_path_dir(dest);
  const char *base = util_path_base(dest);
  char *head = xasprintf(".%s.register-", base);
  size_t hlen = strlen(head);
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    const char *tail = e->d_name + hlen;
    if (strncmp(e->d_name, head, hlen) != 0 || strlen(tail) != 6) continue;
    int ok = 1;
    for (const char *c = tail; *c; c++)
      if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
            (*c >= '0' && *c <= '9')))
        ok = 0;
    if (!ok) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
        !S_ISREG(st.st_mode) || st.st_uid != geteuid())
      continue;
    int fd = openat(dirfd(d), e->d_name,
                    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat fst;
    if (fstat(fd, &fst) < 0 || fst.st_ino != st.st_ino ||
        fst.st_dev != st.st_dev || flock(fd, LOCK_EX | LOCK_NB) < 0) {
      /* replaced since, or a running one's */
      close(fd);
      continue;
    }
    int rc = unlinkat(dirfd(d), e->d_name, 0);
    int saved = errno;
    close(fd);
    errno = saved;
    if (rc == 0)
      log_info("watch: removed %s/%s, a candidate left by a run that "
               "stopped while it was checked",
               dir, e->d_name);
    else
      log_warn("watch: cannot remove %s/%s (left by an earlier run): %s", dir,
               e->d_name, strerror(errno));
  }
  if (d) closedir(d);
  free(head);
  free(dir);
}

/* What dest is on disk now, to see a change by someone else (disk_cb). */
static void note_disk(watch_t *w) {
  w->disk_st_known = w->dest && stat(w->dest, &w->disk_st) == 0;
  if (w->disk_st_known) {
    w->wrote_st = w->disk_st;
    w->wrote_known = 1;
  }
}

/* The candidate becomes the file (rename, then the directory on disk). */
static int put_in_place(watch_t *w, char *err, size_t errlen) {
  const char *out = w->dest;
  /* what is written, as the file will be (a rename keeps the inode and
   * the times): a change made right after the rename is seen */
  int known = w->tmp_fd >= 0 && fstat(w->tmp_fd, &w->disk_st) == 0;
  if (rename(w->tmp, out) < 0) {
    snprintf(err, errlen, "cannot rename %s to %s: %s", w->tmp, out,
             strerror(errno));
    tmp_end(w, 1);
    return -1;
  }
  tmp_end(w, 0);
  char *dir = util_path_dir(out);
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  free(dir);
  buf_reset(&w->current);
  buf_append(&w->current, w->candidate.data ? w->candidate.data : "",
             w->candidate.len);
  w->current_known = 1;
  if (known) {
    w->disk_st_known = 1;
    w->wrote_st = w->disk_st;
    w->wrote_known = 1;
  } else
    note_disk(w);
  return 0;
}

/* ---- systemd ---- */

/* STATUS= for systemd, from the state: what the file follows, or what
 * keeps it from following (etcd first: nothing else can be fixed without
 * it). */
static void status_text(const watch_t *w, char *out, size_t n) {
  const config_t *cfg = w->cfg;
  const char *what = cfg->etcd_api == ETCD_API_V3 ? "revision" : "index";
  if (w->etcd_error[0]) {
    const char *e = w->etcd_error;
    if (strncmp(e, "etcd: ", 6) == 0) e += 6;
    snprintf(out, n, "waiting for etcd: %s; %s %s", e, cfg->out_file,
             w->current_known ? "stays as it is" : "not rendered yet");
  } else if (w->render_error[0]) {
    snprintf(out, n, "render failed: %.*s", (int)(n > 16 ? n - 16 : 0),
             w->render_error);
  } else if (w->check_error[0]) {
    snprintf(out, n, "check failed: %.*s", (int)(n > 15 ? n - 15 : 0),
             w->check_error);
  } else if (w->reload_error[0]) {
    snprintf(out, n, "reload failed: %.*s", (int)(n > 16 ? n - 16 : 0),
             w->reload_error);
  } else if (w->last_good_unix > 0) {
    snprintf(out, n, "rendered %zu keys at %s %" PRId64, w->nkeys, what,
             w->rev);
  } else {
    snprintf(out, n, "reading %s from etcd", cfg->watch_prefix);
  }
}

/* READY=1 once --out holds a file that a load balancer ordered after this
 * unit can start with: the first cycle's end (rendered; or failed, the
 * last good file staying), or an etcd that cannot be read while a file
 * from before is in place.  With no file, and etcd unreadable or a render
 * or check that fails, it waits (the unit has TimeoutStartSec=infinity).
 * STATUS= follows every change. */
static void tell_systemd(watch_t *w, int ready) {
  char status[700];
  status_text(w, status, sizeof status);
  if (ready && !w->ready) {
    w->ready = 1;
    notify_ready(w->notify, status);
    return;
  }
  notify_status(w->notify, status);
}

/* ---- the end of a cycle ---- */

static void once_over(uv_timer_t *t) {
  watch_t *w = t->data;
  stop(w, w->exit_code);
}

static void cycle_done(watch_t *w, int ok) {
  /* a cycle ends once, with no request or command of it outstanding */
  REGISTER_ASSERT(w->phase != PHASE_IDLE && !w->listing && !w->cmd);
  w->phase = PHASE_IDLE;
  if (ok) w->last_good_unix = unix_now();
  tell_systemd(w, ok || w->current_known); /* a file to start with */
  if (w->cfg->once) { /* from the loop: this may be inside etcd's call */
    w->exit_code = ok ? 0 : 1;
    w->once_done = 1;
    uv_timer_start(&w->deadline, once_over, 0, 0);
    return;
  }
  maybe_next(w);
}

static void log_lag(watch_t *w) {
  if (!w->cycle_change_ms) return;
  double lag = (double)(uv_now(&w->loop) - w->cycle_change_ms) / 1000.0;
  w->lag_last = lag;
  w->lag_sum += lag;
  w->lag_n++;
}

/* How a command that failed ended, in a few words. */
static void how_it_ended(const watch_t *w, const command_result_t *r, char *out,
                         size_t n) {
  if (r->timed_out)
    snprintf(out, n, "killed after %ld s", w->cfg->command_timeout);
  else if (r->term_signal)
    snprintf(out, n, "killed by signal %d", r->term_signal);
  else
    snprintf(out, n, "exit status %ld", r->exit_status);
}

/* The pending-reload mark: made before --reload runs for a new file,
 * removed once a reload succeeded.  A stop, a crash or a failed reload
 * in between leaves it, so that the next run reloads even though the
 * file it renders is the one in place (a load balancer would otherwise
 * keep the old configuration until the next change). */
static void mark_pending(watch_t *w, int on) {
  if (!w->pending) return;
  if (!on) {
    if (unlink(w->pending) < 0 && errno != ENOENT)
      log_warn("watch: cannot remove %s: %s", w->pending, strerror(errno));
    return;
  }
  int fd = open(w->pending, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    log_warn("watch: cannot create %s (a reload cut short would not be "
             "run again after a restart): %s",
             w->pending, strerror(errno));
  else
    close(fd);
}

/* A reload that failed or could not start: said, and tried again (the
 * next cycle finds the text unchanged and reloads). */
static void reload_failed(watch_t *w) {
  w->reloads_failed++;
  w->reload_failures++;
  uint64_t delay = retry_delay(w->reload_failures);
  char again[40];
  log_error("watch: %s; %s is in place%s", w->reload_error, w->cfg->out_file,
            again_in(w, delay, again, sizeof again));
  cycle_done(w, 0);
  retry_in(w, delay);
}

static void on_reload(void *ud, const command_result_t *r) {
  watch_t *w = ud;
  REGISTER_ASSERT(w->cmd && w->phase == PHASE_RELOAD); /* the one it runs */
  w->cmd = NULL;
  if (r->ok) {
    w->reloads_ok++;
    w->reload_error[0] = '\0';
    log_lag(w);
    log_info("watch: reloaded (%s, %.0f ms)%s%s", w->cfg->reload_cmd,
             r->seconds * 1000, *r->output ? ": " : "", r->output);
    w->reload_failures = 0;
    mark_pending(w, 0);
    cycle_done(w, 1);
    return;
  }
  char how[80];
  how_it_ended(w, r, how, sizeof how);
  snprintf(w->reload_error, sizeof w->reload_error,
           "--reload \"%s\" failed (%s)%s%s", w->cfg->reload_cmd, how,
           *r->output ? ": " : "", r->output);
  reload_failed(w);
}

/* Runs --reload (PHASE_RELOAD), or fails the cycle when it cannot start. */
static void reload(watch_t *w) {
  char err[600];
  w->phase = PHASE_RELOAD;
  w->cmd = command_run(&w->loop, w->cfg->reload_cmd, w->cfg->out_file,
                       w->cfg->command_timeout * 1000, on_reload, w, err,
                       sizeof err);
  if (w->cmd) return;
  snprintf(w->reload_error, sizeof w->reload_error, "--reload: %s", err);
  reload_failed(w);
}

/* The new text could not be written, checked or put in place: the last
 * good file stays, and the cycle is tried again (a full disk freed, a
 * check that hung on a busy machine, a file the renderer fixed). */
static void install_failed(watch_t *w, const char *error) {
  w->install_failures++;
  uint64_t delay = retry_delay(w->install_failures);
  char again[40];
  log_error("watch: %s; keeping the last good %s%s", error, w->cfg->out_file,
            again_in(w, delay, again, sizeof again));
  cycle_done(w, 0);
  retry_in(w, delay);
}

static void installed(watch_t *w) {
  char err[600];
  /* before the rename: a crash between the two would lose the reload */
  if (w->cfg->reload_cmd) mark_pending(w, 1);
  if (put_in_place(w, err, sizeof err) < 0) {
    w->writes_failed++;
    snprintf(w->render_error, sizeof w->render_error, "%s", err);
    install_failed(w, err);
    return;
  }
  w->renders_ok++;
  w->install_failures = 0;
  w->render_error[0] = '\0';
  log_info("watch: wrote %s (%zu keys under %s, %s %" PRId64 ", %zu bytes)",
           w->cfg->out_file, w->nkeys, w->cfg->watch_prefix,
           w->cfg->etcd_api == ETCD_API_V3 ? "revision" : "index", w->rev,
           w->current.len);
  if (!w->cfg->reload_cmd) {
    log_lag(w);
    cycle_done(w, 1);
    return;
  }
  reload(w);
}

static void on_check(void *ud, const command_result_t *r) {
  watch_t *w = ud;
  REGISTER_ASSERT(w->cmd && w->phase == PHASE_CHECK); /* the one it runs */
  w->cmd = NULL;
  if (r->ok) {
    w->checks_ok++;
    w->check_error[0] = '\0';
    installed(w);
    return;
  }
  w->checks_failed++;
  char how[80];
  how_it_ended(w, r, how, sizeof how);
  snprintf(w->check_error, sizeof w->check_error,
           "--check \"%s\" refused the new file (%s)%s%s", w->cfg->check_cmd,
           how, *r->output ? ": " : "", r->output);
  tmp_end(w, 1);
  install_failed(w, w->check_error);
}

/* A new text: written beside the file, checked, then put in place. */
static void install(watch_t *w) {
  char err[600];
  if (write_candidate(w, err, sizeof err) < 0) {
    w->writes_failed++;
    snprintf(w->render_error, sizeof w->render_error, "%s", err);
    install_failed(w, err);
    return;
  }
  if (!w->cfg->check_cmd) {
    installed(w);
    return;
  }
  w->phase = PHASE_CHECK;
  w->cmd =
      command_run(&w->loop, w->cfg->check_cmd, w->tmp,
                  w->cfg->command_timeout * 1000, on_check, w, err, sizeof err);
  if (!w->cmd) {
    w->checks_failed++;
    snprintf(w->check_error, sizeof w->check_error, "--check: %s", err);
    tmp_end(w, 1);
    install_failed(w, w->check_error);
  }
}

/* ---- reading etcd ---- */

static int kv_cmp(const void *a, const void *b) {
  const policy_kv_t *x = a, *y = b;
  size_t n = x->klen < y->klen ? x->klen : y->klen;
  int c = memcmp(x->key, y->key, n);
  return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* The file is known to match etcd now: rendered, checked and reloaded
 * from the last reading, the watch live and heard from, no change
 * waiting, no failure outstanding. */
static int in_sync(watch_t *w) {
  return w->last_good_unix > 0 && w->phase == PHASE_IDLE && !w->dirty &&
         w->watch && etcd_watch_quiet_ms(w->watch) < ETCD_SILENT_MS &&
         !w->etcd_error[0] && !w->render_error[0] && !w->check_error[0] &&
         !w->reload_error[0];
}

/* Before anything that may end that: it held until now. */
static void note_in_sync(watch_t *w) {
  if (in_sync(w)) w->last_good_unix = unix_now();
}

static void on_watch(void *data, etcd_watch_kind_t kind, int64_t rev,
                     const char *error);

static void start_watch(watch_t *w) {
  etcd_watch_cancel(w->watch);
  w->watch = etcd_watch(w->etcd, w->cfg->watch_prefix, w->rev + 1, on_watch, w);
  REGISTER_ASSERT(w->watch); /* never NULL: a failure comes from the loop */
  w->watch_ms = uv_now(&w->loop);
  etcd_watch_probe_every(w->watch, WATCH_PROBE_MS);
}

/* The retry timer waits out an etcd failure (not a failed render: a
 * change does not wait for that one). */
static int etcd_backing_off(watch_t *w) {
  return w->retry_etcd && uv_is_active((uv_handle_t *)&w->retry);
}

/* min_ms: the first delay (doubling to ETCD_RETRY_MAX_MS); jitter: each
 * delay halved at random (an outage that every watcher of the fleet sees);
 * refused: no endpoint took the connection (ETCD_PROBE_MS instead) */
static void etcd_failed(watch_t *w, const char *error, uint64_t min_ms,
                        int jitter, int refused) {
  w->failures++;
  w->etcd_failures++;
  w->dirty = 1;
  uint64_t delay;
  if (refused) {
    delay = ETCD_PROBE_MS;
  } else {
    w->backoff++;
    delay = min_ms << (w->backoff - 1 > 5 ? 5 : w->backoff - 1);
    if (delay > ETCD_RETRY_MAX_MS) delay = ETCD_RETRY_MAX_MS;
  }
  if (jitter) delay = delay / 2 + util_rand((uint32_t)delay / 2 + 1);
  char said[sizeof w->etcd_error];
  snprintf(said, sizeof said, "etcd: %s", error); /* /healthz's reason */
  if (w->failures == 1 || strcmp(w->etcd_error, said) != 0)
    log_warn("watch: etcd: %s; the file stays as it is; reading %s again "
             "in %.1f s",
             error, w->cfg->watch_prefix, (double)delay / 1000);
  memcpy(w->etcd_error, said, sizeof said);
  tell_systemd(w, w->current_known);
  w->phase = PHASE_IDLE;
  w->retry_etcd = 1;
  uv_timer_start(&w->retry, cycle_cb, delay, 0);
}

/* What PATH holds now, into w->current: 1 when it is there.  Someone
 * may have removed or edited it since it was written (a package upgrade,
 * a hand edit): the text is compared with the file, not with a memory of
 * it, so that the next render puts it back.  Said once per such change. */
static int on_disk(watch_t *w) {
  buf_t now;
  buf_init(&now);
  /* made a FIFO (or a directory...) since: opening a FIFO would hang the
   * loop; not read, and the write that follows refuses it with one line */
  struct stat st;
  if (!w->dest || /* refused by the last write: resolved again there */
      (stat(w->dest, &st) == 0 && !S_ISREG(st.st_mode))) {
    buf_reset(&w->current);
    w->current_known = 0;
    return 0;
  }
  note_disk(w); /* before the read: a change after it is seen again */
  int present = util_read_file(w->dest, MAX_FILE, &now) == 0;
  int err = present ? 0 : errno;
  if (!present && err != ENOENT)
    log_warn("watch: cannot read %s: %s; writing it again", w->cfg->out_file,
             strerror(err));
  else if (w->current_known &&
           (!present || now.len != w->current.len ||
            (now.len && memcmp(now.data, w->current.data, now.len) != 0)))
    log_warn("watch: %s was %s since register watch wrote it; writing it "
             "again",
             w->cfg->out_file, present ? "changed" : "removed");
  buf_free(&w->current);
  w->current = now;
  w->current_known = present;
  return present;
}

static void on_list(void *data, const etcd_result_t *res, const etcd_kv_t *kvs,
                    size_t n, const char *const *dirs, size_t ndirs) {
  (void)dirs;
  (void)ndirs;
  watch_t *w = data;
  REGISTER_ASSERT(w->listing && w->phase == PHASE_LIST); /* its cycle's */
  w->listing = NULL;
  if (res->status != ETCD_OK) {
    etcd_failed(w, res->error ? res->error : "the listing failed",
                ETCD_RETRY_MIN_MS, 1, res->refused);
    return;
  }
  if (w->failures)
    log_info("watch: etcd answers again (after %u failures)", w->failures);
  w->failures = w->backoff = 0;
  w->etcd_error[0] = '\0';
  w->rev = res->revision;
  if (w->dirty_rev <= w->rev) { /* the listing has every change seen */
    w->dirty = 0;
    w->first_ms = 0;
  }
  if (!w->cfg->once) start_watch(w);
  /* kv maps the keys under PREFIX ("PREFIX/..."): v2 lists a key that is
   * PREFIX itself, v3's range leaves it out; left out here for both */
  const char *prefix = w->cfg->watch_prefix;
  size_t plen = strlen(prefix);
  policy_kv_t *kv = n ? xcalloc(n, sizeof *kv) : NULL;
  size_t nkv = 0;
  for (size_t i = 0; i < n; i++) {
    if (strncmp(kvs[i].key, prefix, plen) != 0 || kvs[i].key[plen] != '/')
      continue;
    kv[nkv].key = kvs[i].key;
    kv[nkv].klen = strlen(kvs[i].key);
    kv[nkv].value = kvs[i].value;
    kv[nkv].vlen = kvs[i].value_len;
    nkv++;
  }
  n = nkv;
  w->nkeys = n;
  if ((long)n < w->cfg->min_keys) {
    /* an etcd wiped, or restored from an empty snapshot, would empty the
     * load balancer at once; the watch's next change cycles again */
    char err[300];
    snprintf(err, sizeof err,
             "%zu key%s under %s, fewer than --min-keys %ld: not rendered", n,
             n == 1 ? "" : "s", w->cfg->watch_prefix, w->cfg->min_keys);
    w->renders_failed++;
    if (strcmp(w->render_error, err) != 0)
      log_error("watch: %s; keeping the last good %s", err, w->cfg->out_file);
    snprintf(w->render_error, sizeof w->render_error, "%s", err);
    free(kv);
    cycle_done(w, 0);
    return;
  }
  if (n > 1) qsort(kv, n, sizeof *kv, kv_cmp);
  policy_render_ctx_t ctx = {w->cfg->watch_prefix, w->rev,
                             w->cfg->etcd_api == ETCD_API_V3 ? "v3" : "v2"};
  char err[600];
  int rc =
      worker_render(w->worker, kv, n, &ctx, &w->candidate, err, sizeof err);
  free(kv);
  if (rc < 0) {
    /* tried again after 1 s, doubling to 30 s (a worker killed on a busy
     * machine, a renderer that gave up on a moment's data); the same error
     * again is said at debug level */
    w->renders_failed++;
    w->render_failures++;
    uint64_t delay = retry_delay(w->render_failures);
    char again[40];
    if (strcmp(w->render_error, err) != 0)
      log_error("watch: %s; keeping the last good %s%s", err, w->cfg->out_file,
                again_in(w, delay, again, sizeof again));
    else
      log_debug("watch: %s, again", err);
    snprintf(w->render_error, sizeof w->render_error, "%s", err);
    cycle_done(w, 0);
    retry_in(w, delay);
    return;
  }
  w->render_error[0] = '\0';
  w->render_failures = 0;
  int present = on_disk(w);
  if (present && w->candidate.len == w->current.len &&
      (w->current.len == 0 ||
       memcmp(w->candidate.data, w->current.data, w->current.len) == 0)) {
    w->renders_unchanged++;
    log_debug("watch: %s unchanged (%zu keys, %s %" PRId64 ")",
              w->cfg->out_file, n,
              w->cfg->etcd_api == ETCD_API_V3 ? "revision" : "index", w->rev);
    /* the file in place is what etcd says: nothing to write or check, so
     * what a refused or failed candidate said is over */
    w->check_error[0] = '\0';
    w->install_failures = 0;
    /* an unchanged text after a failed reload: reload again */
    if (w->reload_error[0] && w->cfg->reload_cmd) {
      reload(w);
      return;
    }
    cycle_done(w, 1);
    return;
  }
  install(w);
}

/* A cycle: read the prefix again, then render it. */
static void cycle(watch_t *w) {
  if (w->stopping || w->phase != PHASE_IDLE) return;
  note_in_sync(w);
  uv_timer_stop(&w->debounce);
  uv_timer_stop(&w->retry);
  w->phase = PHASE_LIST;
  w->cycle_change_ms = w->first_ms;
  w->first_ms = 0;
  w->dirty = 0;
  w->list_ms = uv_now(&w->loop);
  w->listing = etcd_list(w->etcd, w->cfg->watch_prefix, on_list, w);
  REGISTER_ASSERT(w->listing); /* never NULL; answered from the loop */
}

static void cycle_cb(uv_timer_t *t) {
  cycle(t->data);
}

/* After a cycle, or a change: the next cycle when changes wait. */
static void maybe_next(watch_t *w) {
  if (w->stopping || w->phase != PHASE_IDLE || !w->dirty) return;
  if (etcd_backing_off(w)) return;
  uint64_t now = uv_now(&w->loop);
  if (!w->first_ms) w->first_ms = w->last_ms = now;
  uint64_t at = w->last_ms + (uint64_t)w->cfg->wait_min_ms;
  uint64_t latest = w->first_ms + (uint64_t)w->cfg->wait_max_ms;
  if (at > latest) at = latest;
  uv_timer_start(&w->debounce, cycle_cb, at > now ? at - now : 0, 0);
}

/* Between cycles: the file removed, replaced or edited by someone else
 * (a hand edit, a package upgrade) is rendered again and put back, and
 * the load balancer reloaded; with a quiet prefix nothing else would.
 * Only a change of the file's inode, size or time is looked for here;
 * the cycle compares the text (on_disk). */
#define DISK_CHECK_MS 5000

static void disk_cb(uv_timer_t *t) {
  watch_t *w = t->data;
  if (w->stopping || !w->current_known || !w->disk_st_known) return;
  struct stat st;
  if (stat(w->dest, &st) == 0 && st.st_ino == w->disk_st.st_ino &&
      st.st_dev == w->disk_st.st_dev && st.st_size == w->disk_st.st_size &&
      st.st_mtim.tv_sec == w->disk_st.st_mtim.tv_sec &&
      st.st_mtim.tv_nsec == w->disk_st.st_mtim.tv_nsec) {
    w->wrote_st = st; /* a chmod or chown since is kept */
    return;
  }
  w->disk_st_known = 0; /* once: the cycle looks again */
  uint64_t now = uv_now(&w->loop);
  w->dirty = 1;
  if (!w->first_ms) w->first_ms = w->last_ms = now;
  maybe_next(w);
}

static void on_watch(void *data, etcd_watch_kind_t kind, int64_t rev,
                     const char *error) {
  watch_t *w = data;
  uint64_t now = uv_now(&w->loop);
  note_in_sync(w);
  switch (kind) {
  case ETCD_WATCH_CHANGED:
    w->compacted = 0;
    if (rev <= w->rev) return;
    w->dirty = 1;
    if (rev > w->dirty_rev) w->dirty_rev = rev;
    if (!w->first_ms) w->first_ms = now;
    w->last_ms = now;
    maybe_next(w);
    return;
  case ETCD_WATCH_COMPACTED:
    w->watch = NULL;
    w->compactions++;
    /* a quiet prefix's watch, renewed from the same revision, is told so
     * at its renewal after a compaction: that is not "in a row" */
    if (now - w->watch_ms >= ETCD_WATCH_RENEW_MS) w->compacted = 0;
    if (++w->compacted > 1) { /* again, straight after a fresh read */
      char why[200];
      snprintf(why, sizeof why,
               "a watch from revision %" PRId64 " was compacted %u times in "
               "a row",
               rev + 1, w->compacted);
      w->dirty = 1; /* a cycle running now reads again when it ends */
      if (w->phase == PHASE_IDLE && !etcd_backing_off(w))
        etcd_failed(w, why, COMPACTED_RETRY_MS, 0, 0);
      return;
    }
    log_info("watch: etcd compacted past revision %" PRId64
             "; reading %s again",
             rev + 1, w->cfg->watch_prefix);
    break;
  case ETCD_WATCH_FAILED:
    w->watch = NULL;
    w->watch_restarts++;
    log_warn("watch: the watch on %s ended: %s; reading it again",
             w->cfg->watch_prefix, error ? error : "?");
    break;
  }
  /* read the whole prefix again (its listing fails over), then watch */
  w->dirty = 1;
  if (!w->first_ms) w->first_ms = w->last_ms = now;
  if (w->phase == PHASE_IDLE && !etcd_backing_off(w))
    uv_timer_start(&w->debounce, cycle_cb, 0, 0);
}

/* etcd went back in time (a restored snapshot): what the file was rendered
 * from may be gone; read it all again. */
static void on_rewound(void *ud, const char *why) {
  watch_t *w = ud;
  log_warn("watch: etcd went back in time (%s); reading %s again", why,
           w->cfg->watch_prefix);
  w->rev = 0;
  w->dirty = 1;
  maybe_next(w);
}

/* ---- /metrics, /healthz ---- */

static void metrics(watch_t *w, buf_t *b) {
  note_in_sync(w);
  double age = w->last_good_unix > 0 ? unix_now() - w->last_good_unix : -1;
  buf_printf(b,
             "# HELP register_watch_renders_total Renders of the file, by "
             "result.\n"
             "# TYPE register_watch_renders_total counter\n"
             "register_watch_renders_total{result=\"written\"} %lu\n"
             "register_watch_renders_total{result=\"unchanged\"} %lu\n"
             "register_watch_renders_total{result=\"failed\"} %lu\n",
             w->renders_ok, w->renders_unchanged,
             w->renders_failed + w->writes_failed);
  buf_printf(b,
             "# HELP register_watch_checks_total --check runs, by result.\n"
             "# TYPE register_watch_checks_total counter\n"
             "register_watch_checks_total{result=\"ok\"} %lu\n"
             "register_watch_checks_total{result=\"failed\"} %lu\n"
             "# HELP register_watch_reloads_total --reload runs, by result.\n"
             "# TYPE register_watch_reloads_total counter\n"
             "register_watch_reloads_total{result=\"ok\"} %lu\n"
             "register_watch_reloads_total{result=\"failed\"} %lu\n",
             w->checks_ok, w->checks_failed, w->reloads_ok, w->reloads_failed);
  buf_printf(b,
             "# HELP register_watch_last_good_render_age_seconds Seconds "
             "since the file last matched etcd: 0 while it does (-1: "
             "never).\n"
             "# TYPE register_watch_last_good_render_age_seconds gauge\n"
             "register_watch_last_good_render_age_seconds %.3f\n",
             age);
  buf_printf(b,
             "# HELP register_watch_lag_seconds From a change seen in etcd to "
             "the file in place and reloaded: the last one.\n"
             "# TYPE register_watch_lag_seconds gauge\n"
             "register_watch_lag_seconds %.6f\n"
             "# HELP register_watch_lag_seconds_total The same, summed over "
             "register_watch_lags_total changes.\n"
             "# TYPE register_watch_lag_seconds_total counter\n"
             "register_watch_lag_seconds_total %.6f\n"
             "# HELP register_watch_lags_total Changes whose lag was "
             "measured (file in place and reloaded).\n"
             "# TYPE register_watch_lags_total counter\n"
             "register_watch_lags_total %lu\n",
             w->lag_last, w->lag_sum, w->lag_n);
  buf_printf(b,
             "# HELP register_watch_keys Keys under the prefix at the last "
             "reading.\n"
             "# TYPE register_watch_keys gauge\n"
             "register_watch_keys %zu\n"
             "# HELP register_watch_revision The etcd revision (v2: index) "
             "the file was rendered from.\n"
             "# TYPE register_watch_revision gauge\n"
             "register_watch_revision %" PRId64 "\n"
             "# HELP register_watch_etcd_failures_total Failed readings of "
             "the prefix.\n"
             "# TYPE register_watch_etcd_failures_total counter\n"
             "register_watch_etcd_failures_total %lu\n"
             "# HELP register_watch_watch_restarts_total Watches that broke "
             "(compactions apart).\n"
             "# TYPE register_watch_watch_restarts_total counter\n"
             "register_watch_watch_restarts_total %lu\n"
             "# HELP register_watch_compactions_total Watches that etcd "
             "compacted past (the prefix read again).\n"
             "# TYPE register_watch_compactions_total counter\n"
             "register_watch_compactions_total %lu\n",
             w->nkeys, w->rev, w->etcd_failures, w->watch_restarts,
             w->compactions);
  buf_printf(b,
             "# HELP register_policy_workers_started_total Renderer worker "
             "processes started.\n"
             "# TYPE register_policy_workers_started_total counter\n"
             "register_policy_workers_started_total %lu\n",
             w->wstats.spawned);
  const creds_t *creds[1] = {w->creds};
  metrics_creds(b, creds, 1);
}

static void handle(void *ud, httpd_req_t *req, const char *method,
                   const char *path) {
  watch_t *w = ud;
  buf_t b;
  buf_init(&b);
  int status = 200;
  if (strcmp(method, "GET") != 0) {
    status = 405;
    buf_puts(&b, "GET only\n");
  } else if (strcmp(path, "/metrics") == 0) {
    metrics(w, &b);
    httpd_respond(req, 200, "text/plain; version=0.0.4", b.data, b.len);
    buf_free(&b);
    return;
  } else if (strcmp(path, "/healthz") == 0) {
    char silent[200] = "";
    uint64_t now = uv_now(&w->loop), quiet = etcd_watch_quiet_ms(w->watch);
    if (w->phase == PHASE_LIST && now - w->list_ms >= ETCD_SILENT_MS)
      snprintf(silent, sizeof silent,
               "etcd: no answer to the listing of %s for %.0f s",
               w->cfg->watch_prefix, (double)(now - w->list_ms) / 1000);
    else if (quiet >= ETCD_SILENT_MS)
      snprintf(silent, sizeof silent,
               "etcd: the watch on %s has heard nothing for %.0f s",
               w->cfg->watch_prefix, (double)quiet / 1000);
    const char *why = w->etcd_error[0]     ? w->etcd_error
                      : silent[0]          ? silent
                      : w->render_error[0] ? w->render_error
                      : w->check_error[0]  ? w->check_error
                      : w->reload_error[0] ? w->reload_error
                      : !w->last_good_unix ? "not rendered yet"
                                           : NULL;
    status = why ? 503 : 200;
    if (why)
      buf_printf(&b, "unhealthy: %s\n", why);
    else
      buf_printf(&b, "ok: %s rendered from %zu keys, %s %" PRId64 "\n",
                 w->cfg->out_file, w->nkeys,
                 w->cfg->etcd_api == ETCD_API_V3 ? "revision" : "index",
                 w->rev);
  } else {
    status = 404;
    buf_puts(&b, "not found: /metrics or /healthz\n");
  }
  httpd_respond(req, status, "text/plain", b.data, b.len);
  buf_free(&b);
}

/* ---- signals ---- */

static void on_signal(uv_signal_t *s, int signum) {
  watch_t *w = s->data;
  if (signum != SIGHUP) {
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (w->cfg->once && !w->once_done) { /* --once did not do its job */
      log_error("watch: --once: %s before %s was in place", name,
                w->cfg->out_file);
      stop(w, 1);
      return;
    }
    log_info("watch: %s: stopping", name);
    stop(w, w->cfg->once ? w->exit_code : 0);
    return;
  }
  creds_reread(w->creds); /* rotated credentials: read again */
  char err[600];
  worker_t *nw = load_renderer(w, err, sizeof err);
  if (!nw) {
    log_error("watch: SIGHUP: %s; keeping the renderer in use", err);
    return;
  }
  worker_free(w->worker);
  w->worker = nw;
  log_info("watch: SIGHUP: renderer %s loaded again", w->cfg->render_file);
  w->dirty = 1;
  maybe_next(w);
}

/* etcd's password file or TLS files changed and passed their checks (creds.c
 * logged it): the next requests use them, and a cycle waiting out an etcd
 * failure is tried again soon rather than at the end of its backoff. */
static void on_creds(void *ud, unsigned what) {
  watch_t *w = ud;
  if (w->stopping) return;
  if (what & CREDS_PASSWORD)
    etcd_set_password(w->etcd, creds_password(w->creds));
  if (what & CREDS_TLS) {
    http_tls_t t;
    creds_tls(w->creds, &t);
    etcd_set_tls(w->etcd, &t);
    http_trim(w->http); /* idle connections go now, when nothing runs */
  }
  if (etcd_backing_off(w)) uv_timer_start(&w->retry, cycle_cb, 100, 0);
}

static void on_deadline(uv_timer_t *t) {
  watch_t *w = t->data;
  /* no failure said yet: a member that holds every request, failed over
   * from one to the next until the deadline; the last one's error */
  const char *last = w->etcd ? etcd_failover_error(w->etcd) : "";
  char why[sizeof w->etcd_error + 320];
  if (w->etcd_error[0])
    snprintf(why, sizeof why, ": %s", w->etcd_error);
  else if (*last)
    snprintf(why, sizeof why, ": etcd: %s", last);
  else
    why[0] = '\0';
  log_error("watch: --once: %s not rendered within %ld s%s", w->cfg->out_file,
            w->cfg->once_timeout, why);
  stop(w, 1);
}

int watch_run(const config_t *cfg) {
  watch_t *w = xcalloc(1, sizeof *w);
  w->cfg = cfg;
  w->exit_code = 1;
  buf_init(&w->current);
  buf_init(&w->candidate);
  w->tmp_fd = -1;
  char err[600];
  int rc = 1;
  /* a command line that cannot be split would fail at every change: a
   * usage error, said now */
  const char *cmds[2][2] = {{"--check", cfg->check_cmd},
                            {"--reload", cfg->reload_cmd}};
  static const char mark[] = "\001candidate\001";
  for (int i = 0; i < 2; i++) {
    char **words =
        cmds[i][1] ? command_words(cmds[i][1], mark, err, sizeof err) : NULL;
    if (cmds[i][1] && !words) {
      fprintf(stderr, "register watch: %s: %s\n", cmds[i][0], err);
      free(w);
      return 2;
    }
    /* a check that does not name the candidate checks something else
     * (the file in place, say) and lets any candidate through */
    int named = 0;
    for (char **p = words; p && *p; p++)
      if (strstr(*p, mark)) named = 1;
    command_words_free(words);
    if (i == 0 && cmds[i][1] && !named) {
      fprintf(stderr,
              "register watch: --check \"%s\" does not name the candidate: "
              "write %%s where its path goes (e.g. --check 'haproxy -c -q -f "
              "%%s')\n",
              cmds[i][1]);
      free(w);
      return 2;
    }
  }
  uv_loop_init(&w->loop);

  /* the file, or a link's target, must be one a rename can replace (and
   * that reading does not hang on: a FIFO) */
  w->dest = out_target(cfg->out_file, err, sizeof err);
  if (!w->dest) {
    log_error("watch: %s", err);
    goto out;
  }
  remove_leftovers(w->dest);
  if (util_read_file(w->dest, MAX_FILE, &w->current) == 0) {
    w->current_known = 1;
  } else {
    if (errno != ENOENT)
      log_error("watch: cannot read %s: %s", cfg->out_file, strerror(errno));
    buf_reset(&w->current);
  }
  w->worker = load_renderer(w, err, sizeof err);
  if (!w->worker) {
    log_error("watch: %s", err);
    goto out;
  }
  w->http = http_new(&w->loop, 4, 4);
  if (!w->http) {
    log_error("cannot initialise libcurl");
    goto out;
  }
  http_tls_t tls;
  etcd_opts_t eo;
  etcd_opts_from_config(cfg, &tls, &eo);
  eo.rewound = on_rewound;
  eo.ud = w;
  w->etcd = etcd_new(&w->loop, w->http, &eo);
  if (cfg->etcd_password_file || cfg->etcd_cacert || cfg->etcd_cert) {
    creds_opts_t co = {&w->loop,
                       "etcd",
                       cfg->etcd_password_file,
                       cfg->etcd_cacert,
                       cfg->etcd_cert,
                       cfg->etcd_key,
                       on_creds,
                       w};
    w->creds = creds_new(&co, err, sizeof err);
    if (!w->creds) {
      log_error("watch: %s", err);
      etcd_free(w->etcd);
      http_free(w->http);
      uv_run(&w->loop, UV_RUN_DEFAULT);
      goto out;
    }
    if (creds_password(w->creds)) /* as the watch knows it */
      etcd_set_password(w->etcd, creds_password(w->creds));
    if (creds_has_tls(w->creds)) { /* the contents read now, not the files */
      creds_tls(w->creds, &tls);
      etcd_set_tls(w->etcd, &tls);
    }
  }
  w->notify = notify_new(&w->loop);
  tell_systemd(w, 0); /* reading PREFIX */
  if (cfg->metrics_addr) {
    w->httpd =
        httpd_new(&w->loop, cfg->metrics_addr, handle, w, err, sizeof err);
    if (!w->httpd) {
      log_error("%s", err);
      etcd_free(w->etcd);
      creds_free(w->creds);
      http_free(w->http);
      notify_free(w->notify);
      uv_run(&w->loop, UV_RUN_DEFAULT);
      goto out;
    }
  }
  uv_timer_init(&w->loop, &w->debounce);
  uv_timer_init(&w->loop, &w->retry);
  uv_timer_init(&w->loop, &w->deadline);
  uv_timer_init(&w->loop, &w->disk_timer);
  w->debounce.data = w->retry.data = w->deadline.data = w;
  w->disk_timer.data = w;
  if (!cfg->once)
    uv_timer_start(&w->disk_timer, disk_cb, DISK_CHECK_MS, DISK_CHECK_MS);
  uv_signal_init(&w->loop, &w->sigterm);
  uv_signal_init(&w->loop, &w->sigint);
  uv_signal_init(&w->loop, &w->sighup);
  w->sigterm.data = w->sigint.data = w->sighup.data = w;
  uv_signal_start(&w->sigterm, on_signal, SIGTERM);
  uv_signal_start(&w->sigint, on_signal, SIGINT);
  uv_signal_start(&w->sighup, on_signal, SIGHUP);
  stopsig_hup(0);  /* held since main(): one that came meanwhile comes now */
  stopsig_chain(); /* a render in progress is abandoned at SIGTERM */
  if (cfg->once)
    uv_timer_start(&w->deadline, on_deadline,
                   (uint64_t)cfg->once_timeout * 1000, 0);
  log_info("register %s watch: %s from etcd %s (%s) into %s, renderer %s%s%s",
           REGISTER_VERSION, cfg->watch_prefix, cfg->etcd[0],
           cfg->etcd_api == ETCD_API_V3 ? "v3" : "v2", cfg->out_file,
           cfg->render_file, cfg->metrics_addr ? ", metrics on " : "",
           cfg->metrics_addr ? cfg->metrics_addr : "");
  if (cfg->reload_cmd) {
    char *dir = util_path_dir(cfg->out_file);
    w->pending =
        xasprintf("%s%s.%s.register-reload-pending", dir,
                  strcmp(dir, "/") ? "/" : "", util_path_base(cfg->out_file));
    free(dir);
    /* --once (ExecStartPre, before the load balancer runs) leaves it to
     * the watch that follows */
    if (access(w->pending, F_OK) == 0 && !cfg->once) {
      log_warn("watch: %s was put in place before the last stop without a "
               "--reload that succeeded: reloading at the first render",
               cfg->out_file);
      snprintf(w->reload_error, sizeof w->reload_error,
               "a reload pending from the last run");
    }
  }
  uv_timer_start(&w->debounce, cycle_cb, 0, 0);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  rc = w->exit_code;
out:
  if (uv_loop_close(&w->loop) != 0) log_warn("libuv loop still has handles");
  worker_free(w->worker);
  free(w->dest);
  free(w->pending);
  buf_free(&w->current);
  buf_free(&w->candidate);
  free(w);
  return rc;
}

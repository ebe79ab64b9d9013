/* command: an operator's command line, run from the loop with a time
 * limit.  See command.h. */
#include "command.h"
#include "list.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* after the process exited, how long its pipes may still bring output */
#define DRAIN_MS 1000 /* both pipes at their end finish it sooner */

struct command {
  uv_loop_t *loop;
  uv_process_t proc;
  uv_pipe_t out[2]; /* its stdout, stderr */
  uv_timer_t timer; /* the time limit, then the drain after the exit */
  int open;         /* handles not closed yet (free at 0) */
  int reading;      /* pipes not at their end yet */
  int pipe_open[2]; /* out[i] not at its end yet */
  int exited, finished, cancelled, timed_out;
  int64_t exit_status;
  int term_signal;
  buf_t output;
  uint64_t started;
  command_done_cb cb;
  void *ud;
  list_t linger; /* on `lingering` while its pipes outlive it */
};

/* Commands done whose pipes are still open after the drain: a process
 * they left behind holds them (a shell's `cmd &`).  Their reads go on,
 * discarded, until its end: closing them would kill it (SIGPIPE) at its
 * next write.  command_shutdown() closes them. */
static list_t lingering = {&lingering, &lingering};

/* ---- words ---- */

void command_words_free(char **words) {
  if (!words) return;
  for (char **w = words; *w; w++)
    free(*w);
  free(words);
}

char **command_words(const char *cmdline, const char *path, char *err,
                     size_t errlen) {
  size_t n = 0, cap = 8;
  char **words = xcalloc(cap, sizeof *words);
  const char *p = cmdline;
  for (;;) {
    while (*p == ' ' || *p == '\t' || *p == '\n')
      p++;
    if (!*p) break;
    buf_t w;
    buf_init(&w);
    char quote = 0;
    for (; *p && (quote || (*p != ' ' && *p != '\t' && *p != '\n')); p++) {
      if (*p == '%' && p[1] == 's') { /* in quotes too: sh -c '... %s' */
        buf_puts(&w, path ? path : "");
        p++;
      } else if (*p == '%' && p[1] == '%') {
        buf_putc(&w, '%');
        p++;
      } else if (quote == '\'' && *p != '\'') {
        buf_putc(&w, *p);
      } else if (*p == quote) {
        quote = 0;
      } else if (!quote && (*p == '\'' || *p == '"')) {
        quote = *p;
      } else if (*p == '\\' && p[1] && quote != '\'') {
        buf_putc(&w, *++p);
      } else {
        buf_putc(&w, *p);
      }
    }
    if (quote) {
      buf_free(&w);
      command_words_free(words);
      snprintf(err, errlen, "command \"%s\": a %c quote is not closed", cmdline,
               quote);
      return NULL;
    }
    if (n + 2 > cap) {
      cap *= 2;
      words = xrealloc(words, cap * sizeof *words);
    }
    buf_putc(&w, '\0');
    words[n++] = buf_detach(&w);
    words[n] = NULL;
  }
  if (!n) {
    free(words);
    snprintf(err, errlen, "command \"%s\" is empty", cmdline);
    return NULL;
  }
  return words;
}

/* ---- the environment ---- */

extern char **environ;

/* register's own secrets: the etcd password, and the user, which may hold
 * one (USER:PW).  Read by config.c; a --check or --reload command has no
 * business with them (an `env` in a reload script would log them).  Paths
 * (ETCDCTL_CACERT...) stay: they say where a secret is, not what it is. */
static const char *const secret_vars[] = {"ETCDCTL_PASSWORD", "ETCDCTL_USER",
                                          NULL};

int command_secret_var(const char *entry) {
  for (const char *const *s = secret_vars; *s; s++) {
    size_t n = strlen(*s);
    if (strncmp(entry, *s, n) == 0 && (entry[n] == '=' || entry[n] == '\0'))
      return 1;
  }
  return 0;
}

/* Our environment less the secrets: an array of pointers into environ
 * (free the array only). */
static char **command_env(void) {
  size_t n = 0;
  for (char **e = environ; e && *e; e++)
    n++;
  char **env = xcalloc(n + 1, sizeof *env);
  size_t k = 0;
  for (char **e = environ; e && *e; e++)
    if (!command_secret_var(*e)) env[k++] = *e;
  env[k] = NULL;
  return env;
}

/* ---- running ---- */

static void closed(uv_handle_t *h) {
  command_t *c = h->data;
  REGISTER_ASSERT(c->open > 0); /* one close callback per handle */
  REGISTER_ASSERT(c->finished || c->cancelled);
  if (--c->open == 0) {
    if (list_linked(&c->linger)) list_remove(&c->linger);
    buf_free(&c->output);
    free(c);
  }
}

static void close_all(command_t *c) {
  uv_handle_t *hs[] = {(uv_handle_t *)&c->proc, (uv_handle_t *)&c->out[0],
                       (uv_handle_t *)&c->out[1], (uv_handle_t *)&c->timer};
  for (size_t i = 0; i < sizeof hs / sizeof *hs; i++)
    if (hs[i]->data && !uv_is_closing(hs[i])) uv_close(hs[i], closed);
}

/* The output as one line: newlines become " | ", the ends trimmed. */
static void flatten(buf_t *b) {
  buf_t o;
  buf_init(&o);
  for (size_t i = 0; i < b->len; i++) {
    char ch = b->data[i];
    if (ch == '\r') continue;
    if (ch == '\n') {
      while (o.len && o.data[o.len - 1] == ' ')
        o.len--;
      if (o.len && i + 1 < b->len) buf_puts(&o, " | ");
      continue;
    }
    buf_putc(&o, (unsigned char)ch < 0x20 && ch != '\t' ? '?' : ch);
  }
  while (o.len && (o.data[o.len - 1] == ' ' || o.data[o.len - 1] == '|'))
    o.len--;
  buf_putc(&o, '\0');
  buf_free(b);
  *b = o;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void finish(command_t *c) {
  if (c->finished) return;
  c->finished = 1;
  uv_timer_stop(&c->timer);
  for (int i = 0; i < 2; i++)
    if (!uv_is_closing((uv_handle_t *)&c->out[i]))
      uv_read_stop((uv_stream_t *)&c->out[i]);
  REGISTER_ASSERT(c->exited || c->cancelled); /* the result waits for it */
  if (!c->cancelled) {
    flatten(&c->output);
    command_result_t r = {0};
    r.timed_out = c->timed_out;
    r.term_signal = c->term_signal;
    r.exit_status = (long)c->exit_status;
    r.ok = !c->timed_out && !c->term_signal && c->exit_status == 0;
    r.output = c->output.data ? c->output.data : "";
    r.seconds = (double)(uv_hrtime() - c->started) / 1e9;
    c->cb(c->ud, &r);
  }
  if (c->cancelled || !c->exited || !c->reading) {
    close_all(c);
    return;
  }
  /* the drain is over with a pipe still open: it lingers */
  uv_close((uv_handle_t *)&c->proc, closed);
  uv_close((uv_handle_t *)&c->timer, closed);
  for (int i = 0; i < 2; i++) {
    uv_stream_t *s = (uv_stream_t *)&c->out[i];
    if (uv_is_closing((uv_handle_t *)s)) continue;
    if (uv_is_readable(s) && c->pipe_open[i])
      uv_read_start(s, on_alloc, on_read);
    else
      uv_close((uv_handle_t *)s, closed);
  }
  list_insert_tail(&lingering, &c->linger);
}

void command_shutdown(void) {
  list_t *n;
  list_foreach(n, &lingering) {
    command_t *c = list_entry(n, command_t, linger);
    for (int i = 0; i < 2; i++)
      if (!uv_is_closing((uv_handle_t *)&c->out[i]))
        uv_close((uv_handle_t *)&c->out[i], closed);
  }
}

static void on_timer(uv_timer_t *t) {
  command_t *c = t->data;
  if (c->exited) { /* the drain is over */
    finish(c);
    return;
  }
  c->timed_out = 1;
  uv_kill(-c->proc.pid, SIGKILL); /* its whole session */
}

static void on_proc_exit(uv_process_t *p, int64_t status, int sig) {
  command_t *c = p->data;
  REGISTER_ASSERT(!c->exited); /* libuv reports an exit once */
  c->exited = 1;
  c->exit_status = status;
  c->term_signal = sig;
  if (c->timed_out || c->cancelled || !c->reading) {
    finish(c);
    return;
  }
  uv_timer_start(&c->timer, on_timer, DRAIN_MS, 0);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h;
  (void)hint;
  static char space[4096]; /* used and done with before the next read */
  *b = uv_buf_init(space, sizeof space);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  command_t *c = s->data;
  if (c->finished) { /* lingering: discarded, closed at its end */
    if (n < 0) uv_close((uv_handle_t *)s, closed);
    return;
  }
  if (n > 0) {
    size_t room = COMMAND_OUTPUT_MAX > c->output.len
                      ? COMMAND_OUTPUT_MAX - c->output.len
                      : 0;
    buf_append(&c->output, b->base, (size_t)n < room ? (size_t)n : room);
    return;
  }
  if (n == 0) return;
  uv_read_stop(s);                 /* EOF or an error: this pipe is done */
  REGISTER_ASSERT(c->reading > 0); /* each pipe ends once */
  c->pipe_open[s == (uv_stream_t *)&c->out[1]] = 0;
  if (--c->reading == 0 && c->exited) finish(c);
}

/* A command gets its stdin, stdout and stderr only: every other descriptor
 * of the daemon's is marked close-on-exec (libuv's spawn has no closefrom,
 * and libcurl's sockets are not).  A process it leaves behind (haproxy -D)
 * kept register's etcd connections and sockets open after it stopped. */
static void cloexec_all(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    char *end;
    long fd = strtol(de->d_name, &end, 10);
    if (*end || end == de->d_name || fd < 3 || fd == dirfd(d)) continue;
    int fl = fcntl((int)fd, F_GETFD);
    if (fl >= 0 && !(fl & FD_CLOEXEC)) fcntl((int)fd, F_SETFD, fl | FD_CLOEXEC);
  }
  closedir(d);
}

command_t *command_run(uv_loop_t *loop, const char *cmdline, const char *path,
                       long timeout_ms, command_done_cb cb, void *ud, char *err,
                       size_t errlen) {
  char **argv = command_words(cmdline, path, err, errlen);
  if (!argv) return NULL;
  command_t *c = xcalloc(1, sizeof *c);
  c->loop = loop;
  c->cb = cb;
  c->ud = ud;
  buf_init(&c->output);
  for (int i = 0; i < 2; i++) {
    uv_pipe_init(loop, &c->out[i], 0);
    c->out[i].data = c;
    c->open++;
  }
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  c->open++;
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&c->out[0];
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&c->out[1];
  uv_process_options_t o = {0};
  o.file = argv[0];
  o.args = argv;
  char **env = command_env();
  o.env = env;
  o.exit_cb = on_proc_exit;
  o.stdio = stdio;
  o.stdio_count = 3;
  o.flags = UV_PROCESS_DETACHED; /* a session of its own: killed as one */
  c->started = uv_hrtime();
  c->proc.data = c;
  cloexec_all();
  int rc = uv_spawn(loop, &c->proc, &o);
  free(env); /* the strings are environ's */
  if (rc < 0) {
    snprintf(err, errlen, "command \"%s\": cannot run %s: %s", cmdline, argv[0],
             uv_strerror(rc));
    command_words_free(argv);
    /* libuv wants a handle that failed to spawn closed too */
    c->open++;
    c->cancelled = 1;
    close_all(c);
    return NULL;
  }
  c->open++;
  command_words_free(argv);
  for (int i = 0; i < 2; i++) {
    uv_read_start((uv_stream_t *)&c->out[i], on_alloc, on_read);
    c->reading++;
    c->pipe_open[i] = 1;
  }
  uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
  /* every handle is open and nothing has completed: the callback comes
   * from the loop, never from here */
  REGISTER_ASSERT(c->open == 4 && !c->finished && !c->exited);
  return c;
}

void command_cancel(command_t *c) {
  if (!c || c->finished) return;
  c->cancelled = 1;
  if (!c->exited) {
    uv_kill(-c->proc.pid, SIGKILL);
    return; /* its exit finishes it (without a callback) */
  }
  finish(c);
}

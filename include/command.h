/* command: an operator's command line run from the loop (`register watch`'s
 * --check and --reload): split into words like a shell would split a
 * simple command (spaces, '...' and "..." quotes, backslash), never
 * through a shell unless the command line names one; "%s" anywhere, in
 * quotes too, becomes the given path ("%%" a '%').  It runs in a session of its
 * own with a time limit, after which its whole process group is killed; the
 * start of its output (stdout and stderr) is kept for the log.  It gets
 * our environment without register's own secrets (the etcd password).
 *
 * Knows nothing of etcd or files. */
#ifndef REGISTER_COMMAND_H
#define REGISTER_COMMAND_H

#include <stddef.h>
#include <uv.h>

typedef struct command command_t;

/* How a command ended. */
typedef struct {
  int ok;             /* exited 0 */
  int timed_out;      /* killed at its time limit */
  long exit_status;   /* when it exited */
  int term_signal;    /* when a signal ended it, else 0 */
  const char *output; /* its first COMMAND_OUTPUT_MAX bytes, newlines as
                         " | ", trimmed */
  double seconds;     /* how long it ran */
} command_result_t;

#define COMMAND_OUTPUT_MAX 2048

/* Called once, from the loop, never inside command_run(); the command is
 * freed when it returns. */
typedef void (*command_done_cb)(void *ud, const command_result_t *res);

/* Starts cmdline.  NULL with a one-line reason in err when it cannot
 * start (empty, unbalanced quotes, no such program): nothing is called
 * back. */
command_t *command_run(uv_loop_t *loop, const char *cmdline, const char *path,
                       long timeout_ms, command_done_cb cb, void *ud, char *err,
                       size_t errlen);
/* Kills a running command (its process group); its callback does not
 * run.  The memory goes with the close callbacks. */
void command_cancel(command_t *c);
/* The pipes of commands done that processes they left behind still hold
 * (read and discarded until then, so that those do not die of SIGPIPE at
 * their next write) are closed: before the loop ends. */
void command_shutdown(void);
/* The words of cmdline, "%s" replaced by path: a NULL-terminated array
 * (free it with command_words_free), or NULL with a reason in err.  For
 * tests. */
char **command_words(const char *cmdline, const char *path, char *err,
                     size_t errlen);
void command_words_free(char **words);
/* 1 when an environment entry ("NAME=value") is one of register's secrets
 * that a command does not get.  For tests. */
int command_secret_var(const char *entry);

#endif

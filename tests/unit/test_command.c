/* command: an operator's command line split into words and run from the
 * loop, with its output, its exit and its time limit. */
#include "command.h"
#include "test.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static char **words(const char *line, const char *path) {
  char err[200];
  char **w = command_words(line, path, err, sizeof err);
  ASSERT(w);
  return w;
}

TEST(words_as_a_shell_splits_them) {
  char **w = words("haproxy  -c -q -f %s", "/tmp/x y");
  ASSERT_STR_EQ(w[0], "haproxy");
  ASSERT_STR_EQ(w[3], "-f");
  ASSERT_STR_EQ(w[4], "/tmp/x y"); /* one word, spaces and all */
  ASSERT(w[5] == NULL);
  command_words_free(w);
  w = words("sh -c 'kill -USR2 $(cat /run/h.pid) && echo \"%s\"' 100%% a\\ b",
            "P");
  ASSERT_STR_EQ(w[0], "sh");
  ASSERT_STR_EQ(w[2], "kill -USR2 $(cat /run/h.pid) && echo \"P\"");
  ASSERT_STR_EQ(w[3], "100%");
  ASSERT_STR_EQ(w[4], "a b");
  ASSERT(w[5] == NULL);
  command_words_free(w);
}

TEST(bad_lines_are_named) {
  char err[200];
  ASSERT(command_words("  ", NULL, err, sizeof err) == NULL);
  ASSERT(strstr(err, "is empty"));
  ASSERT(command_words("sh -c 'echo", NULL, err, sizeof err) == NULL);
  ASSERT(strstr(err, "quote is not closed"));
}

typedef struct {
  int calls;
  command_result_t r;
  char out[COMMAND_OUTPUT_MAX + 1];
} seen_t;

static void done(void *ud, const command_result_t *r) {
  seen_t *s = ud;
  s->calls++;
  s->r = *r;
  snprintf(s->out, sizeof s->out, "%s", r->output);
  s->r.output = s->out;
}

static seen_t run(const char *line, long timeout_ms) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  seen_t s = {0};
  char err[200];
  command_t *c =
      command_run(&loop, line, "/p", timeout_ms, done, &s, err, sizeof err);
  ASSERT(c);
  ASSERT_EQ(s.calls, 0); /* never inside the call that started it */
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
  ASSERT_EQ(s.calls, 1);
  return s;
}

TEST(exit_and_output) {
  seen_t s = run("sh -c 'echo one; echo two >&2; exit 3'", 5000);
  ASSERT(!s.r.ok && !s.r.timed_out && s.r.exit_status == 3);
  /* s.out: s.r.output pointed into run()'s own copy */
  ASSERT(strstr(s.out, "one") && strstr(s.out, "two"));
  ASSERT(strstr(s.out, " | ")); /* one line */
  s = run("true", 5000);
  ASSERT(s.r.ok && s.r.exit_status == 0 && s.out[0] == '\0');
}

TEST(time_limit_kills_the_whole_group) {
  /* the child's child would keep the pipe open: the group goes */
  seen_t s = run("sh -c 'sleep 30 & sleep 30'", 300);
  ASSERT(s.r.timed_out && !s.r.ok);
  ASSERT(s.r.seconds < 5);
}

TEST(no_such_program) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  seen_t s = {0};
  char err[200];
  ASSERT(command_run(&loop, "/nonexistent/x", NULL, 1000, done, &s, err,
                     sizeof err) == NULL);
  ASSERT(strstr(err, "/nonexistent/x"));
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
  ASSERT_EQ(s.calls, 0);
}

TEST(cancel_calls_nothing_back) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  seen_t s = {0};
  char err[200];
  command_t *c =
      command_run(&loop, "sleep 30", NULL, 10000, done, &s, err, sizeof err);
  ASSERT(c);
  command_cancel(c);
  uint64_t t0 = uv_hrtime();
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
  ASSERT_EQ(s.calls, 0);
  ASSERT((uv_hrtime() - t0) / 1000000 < 5000);
}

TEST(secrets_stay_out_of_the_environment) {
  ASSERT(command_secret_var("ETCDCTL_PASSWORD=s3cret"));
  ASSERT(command_secret_var("ETCDCTL_USER=root:s3cret"));
  ASSERT(!command_secret_var("ETCDCTL_PASSWORDX=1"));
  ASSERT(!command_secret_var("ETCDCTL_CACERT=/etc/ca.pem")); /* a path */
  setenv("ETCDCTL_PASSWORD", "s3cret", 1);
  setenv("ETCDCTL_USER", "root:s3cret", 1);
  setenv("REGISTER_TEST_KEPT", "kept", 1);
  seen_t s = run("sh -c 'env | grep -e s3cret -e REGISTER_TEST_KEPT'", 5000);
  unsetenv("ETCDCTL_PASSWORD");
  unsetenv("ETCDCTL_USER");
  ASSERT(s.r.ok);
  ASSERT(strstr(s.out, "REGISTER_TEST_KEPT=kept"));
  ASSERT(!strstr(s.out, "s3cret"));
}

TEST_MAIN(TEST_ENTRY(words_as_a_shell_splits_them),
          TEST_ENTRY(bad_lines_are_named), TEST_ENTRY(exit_and_output),
          TEST_ENTRY(time_limit_kills_the_whole_group),
          TEST_ENTRY(no_such_program), TEST_ENTRY(cancel_calls_nothing_back),
          TEST_ENTRY(secrets_stay_out_of_the_environment))

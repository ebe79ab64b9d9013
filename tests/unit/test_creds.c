/* creds: credential files checked at start, read again at a change or
 * creds_reread(), refused changes warned once; certificates and keys made
 * with openssl at test time. */
#include "creds.h"
#include "log.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[] = "/tmp/register-test-creds-XXXXXX";
static char err[600];

/* runs cmd (owned) */
static void sh(char *cmd) {
  if (system(cmd) != 0) FAIL("failed: %s", cmd);
  free(cmd);
}

static char *path(const char *name) {
  return xasprintf("%s/%s", dir, name);
}

/* NAME.crt, NAME.key: a self-signed EC certificate and its key */
static void pair(const char *name) {
  sh(xasprintf("openssl req -x509 -newkey ec -pkeyopt "
               "ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=%s "
               "-keyout %s/%s.key -out %s/%s.crt 2>/dev/null",
               name, dir, name, dir, name));
}

static void write_file(const char *name, const char *text) {
  char *p = path(name), *tmp = xasprintf("%s.tmp", p);
  FILE *f = fopen(tmp, "w");
  ASSERT(f);
  fputs(text, f);
  fclose(f);
  ASSERT(rename(tmp, p) == 0); /* a new inode, as `mv` makes */
  free(tmp);
  free(p);
}

static char *read_file(const char *name) {
  char *p = path(name);
  buf_t b;
  buf_init(&b);
  ASSERT(util_read_file(p, 0, &b) == 0);
  free(p);
  return buf_detach(&b);
}

static void copy(const char *from, const char *to) {
  char *t = read_file(from);
  write_file(to, t);
  free(t);
}

/* the warnings logged, the last one's text */
static int warnings;
static char last_warning[600];

static void sink(log_level_t level, const char *const *fields,
                 const char *msg) {
  (void)fields;
  if (level != LOG_WARN) return;
  warnings++;
  snprintf(last_warning, sizeof last_warning, "%s", msg);
}

static unsigned seen_mask;
static int calls;

static void changed(void *ud, unsigned what) {
  (void)ud;
  seen_mask = what;
  calls++;
}

static uv_loop_t loop;

static creds_t *make(const char *pw, const char *ca, const char *cert,
                     const char *key) {
  char *p[4] = {pw ? path(pw) : NULL, ca ? path(ca) : NULL,
                cert ? path(cert) : NULL, key ? path(key) : NULL};
  creds_opts_t o = {&loop, "etcd", p[0], p[1], p[2], p[3], changed, NULL};
  creds_t *c = creds_new(&o, err, sizeof err);
  for (int i = 0; i < 4; i++)
    free(p[i]);
  return c;
}

static void setup(void) {
  ASSERT(mkdtemp(dir));
  pair("a");
  pair("b");
  uv_loop_init(&loop);
  log_set_sink(sink);
}

static void teardown(creds_t *c) {
  creds_free(c);
  uv_run(&loop, UV_RUN_DEFAULT); /* the close callbacks free it */
  ASSERT_EQ(uv_loop_close(&loop), 0);
  log_set_sink(NULL);
  char *cmd = xasprintf("rm -rf %s", dir);
  if (system(cmd) != 0) FAIL("rm failed");
  free(cmd);
}

/* creds_reread(), and the loop until its read has run (from a zero timer:
 * nothing happens inside the call) */
static void reread(creds_t *c) {
  int before = calls;
  creds_reread(c);
  ASSERT_EQ(calls, before);
  uv_run(&loop, UV_RUN_NOWAIT);
}

static void stop_cb(uv_timer_t *t) {
  uv_stop(t->loop);
}

/* runs the loop until the callback has run once more, or ms passed */
static void run_until_called(uint64_t ms) {
  uv_timer_t t;
  int before = calls;
  uv_timer_init(&loop, &t);
  uint64_t end = uv_now(&loop) + ms;
  while (calls == before && uv_now(&loop) < end) {
    uv_timer_start(&t, stop_cb, 100, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
}

static uint64_t failures(creds_t *c, const char *name) {
  creds_stat_t st[4];
  size_t n = creds_stats(c, st, 4);
  char *p = path(name);
  for (size_t i = 0; i < n; i++)
    if (strcmp(st[i].path, p) == 0) {
      free(p);
      return st[i].failures;
    }
  FAIL("no statistics for %s", p);
}

TEST(refused_at_start) {
  setup();
  write_file("garbage", "not a certificate\n");
  ASSERT(!make(NULL, NULL, "garbage", "a.key"));
  ASSERT_CONTAINS(err, "etcd: client certificate ");
  ASSERT_CONTAINS(err, "garbage: no PEM certificate in it");
  ASSERT(!make(NULL, NULL, "a.crt", "b.key"));
  ASSERT_CONTAINS(err, "a.crt: it does not match the client key ");
  ASSERT(!make(NULL, NULL, "a.crt", "missing.key"));
  ASSERT_CONTAINS(err,
                  "missing.key: cannot read it: No such file or directory");
  ASSERT(!make(NULL, "a.key", NULL, NULL));
  ASSERT_CONTAINS(err, "etcd: CA bundle ");
  ASSERT_CONTAINS(err, "a.key: no PEM certificate in it");
  sh(xasprintf("openssl pkey -in %s/a.key -aes256 -passout pass:x -out "
               "%s/enc.key",
               dir, dir));
  ASSERT(!make(NULL, NULL, "a.crt", "enc.key"));
  ASSERT_CONTAINS(err, "enc.key: no PEM private key in it");
  ASSERT(!make(NULL, NULL, "a.crt", NULL));
  ASSERT_CONTAINS(err, "go together");
  /* an empty password file is taken at start, as the flags take it */
  write_file("pw", "");
  creds_t *c = make("pw", NULL, NULL, NULL);
  ASSERT(c);
  ASSERT_STR_EQ(creds_password(c), "");
  ASSERT(!creds_has_tls(c));
  ASSERT_EQ(warnings, 0);
  teardown(c);
}

TEST(changes_taken_and_refused) {
  setup();
  write_file("pw", "first\nsecond line is not the password\n");
  copy("a.crt", "cert");
  copy("a.key", "key");
  copy("a.crt", "ca");
  creds_t *c = make("pw", "ca", "cert", "key");
  if (!c) FAIL("%s", err);
  ASSERT_STR_EQ(creds_password(c), "first");
  http_tls_t t;
  creds_tls(c, &t);
  char *want = read_file("a.crt");
  ASSERT(t.cert_pem && t.cert_len == strlen(want));
  ASSERT(memcmp(t.cert_pem, want, t.cert_len) == 0);
  free(want);
  /* nothing changed: a SIGHUP calls nobody */
  reread(c);
  ASSERT_EQ(calls, 0);
  /* a new pair, key first: taken together */
  copy("b.key", "key");
  reread(c); /* the key alone does not match: refused, said once */
  ASSERT_EQ(calls, 0);
  ASSERT_EQ(warnings, 1);
  ASSERT_CONTAINS(last_warning, "cert: it does not match the client key ");
  copy("b.crt", "cert");
  reread(c);
  ASSERT_EQ(calls, 1);
  ASSERT_EQ(seen_mask, CREDS_CERT | CREDS_KEY);
  creds_tls(c, &t);
  want = read_file("b.crt");
  ASSERT(t.cert_len == strlen(want) &&
         memcmp(t.cert_pem, want, t.cert_len) == 0);
  free(want);
  /* garbage in the certificate: one warning, however often it is read */
  write_file("cert", "garbage\n");
  reread(c);
  reread(c);
  ASSERT_EQ(calls, 1);
  ASSERT_EQ(warnings, 2);
  ASSERT_CONTAINS(last_warning, "etcd: client certificate ");
  ASSERT_CONTAINS(last_warning,
                  "cert: no PEM certificate in it; still using the one read "
                  "before");
  ASSERT_EQ(failures(c, "cert"), 2); /* the mismatch, the garbage */
  creds_tls(c, &t);                  /* what was in use stays */
  want = read_file("b.crt");
  ASSERT(t.cert_len == strlen(want) &&
         memcmp(t.cert_pem, want, t.cert_len) == 0);
  free(want);
  /* back to what is in use: nothing to take or say */
  copy("b.crt", "cert");
  reread(c);
  ASSERT_EQ(calls, 1);
  ASSERT_EQ(warnings, 2);
  /* an empty password file keeps the password */
  write_file("pw", "\n");
  reread(c);
  ASSERT_EQ(calls, 1);
  ASSERT_EQ(warnings, 3);
  ASSERT_CONTAINS(last_warning,
                  "pw: its first line is empty; still using the password");
  ASSERT_STR_EQ(creds_password(c), "first");
  /* a change seen by the watch, without a SIGHUP: a new file renamed over */
  write_file("pw", "rotated\r\n");
  run_until_called(CREDS_POLL_MS * 3);
  ASSERT_EQ(calls, 2);
  ASSERT_EQ(seen_mask, CREDS_PASSWORD);
  ASSERT_STR_EQ(creds_password(c), "rotated");
  /* the CA bundle: two certificates are a bundle */
  char *a = read_file("a.crt"), *b = read_file("b.crt");
  char *both = xasprintf("%s%s", a, b);
  write_file("ca", both);
  free(a), free(b), free(both);
  run_until_called(CREDS_POLL_MS * 3);
  ASSERT_EQ(calls, 3);
  ASSERT_EQ(seen_mask, CREDS_CACERT);
  ASSERT_EQ(warnings, 3);
  teardown(c);
}

TEST_MAIN(TEST_ENTRY(refused_at_start), TEST_ENTRY(changes_taken_and_refused))

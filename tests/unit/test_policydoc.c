/* policydoc: the fleet's policy document and the hosts' reports */
#include "policydoc.h"
#include "test.h"
#include "util.h"

#include <stdio.h>

static char err[300];

static policydoc_t doc3(void) {
  policydoc_t d = {0};
  d.generation = 7;
  d.previous = policydoc_rev_new(3, "return {}", 9, NULL, "a.lua", NULL);
  d.stable = policydoc_rev_new(4, "x\0y\"\n", 5, "c2ln", "p.lua", "alice@ops");
  d.canary = policydoc_rev_new(5, "return {5}", 10, NULL, NULL, NULL);
  ASSERT_EQ(policydoc_set_canary(&d, "10.0.0.1,::1", err, sizeof err), 0);
  return d;
}

TEST(round_trip) {
  policydoc_t d = doc3(), e;
  size_t len;
  char *text = policydoc_write(&d, &len);
  ASSERT_EQ(strlen(text), len);
  ASSERT_EQ(policydoc_parse(text, len, &e, err, sizeof err), 0);
  ASSERT_EQ(e.generation, 7);
  ASSERT_EQ(e.stable->revision, 4);
  ASSERT_EQ(e.stable->source_len, 5);
  ASSERT(memcmp(e.stable->source, "x\0y\"\n", 5) == 0);
  ASSERT_STR_EQ(e.stable->sha256, d.stable->sha256);
  ASSERT_STR_EQ(e.stable->signature, "c2ln");
  ASSERT_STR_EQ(e.stable->pushed_by, "alice@ops");
  ASSERT_STR_EQ(e.stable->pushed, d.stable->pushed);
  ASSERT_EQ(e.previous->revision, 3);
  ASSERT(e.canary && e.canary->revision == 5 && !e.canary->signature);
  ASSERT_EQ(e.n_canary_hosts, 2);
  ASSERT_STR_EQ(e.canary_hosts[1], "::1");
  ASSERT_EQ(policydoc_top(&e), 5);
  char *again = policydoc_write(&e, NULL);
  ASSERT_STR_EQ(again, text);
  free(again);
  free(text);
  policydoc_free(&e);
  /* percent, no previous; last_revision counts in top */
  policydoc_drop_canary(&d);
  policydoc_rev_free(d.previous);
  d.previous = NULL;
  d.canary = policydoc_rev_new(9, "c", 1, NULL, NULL, NULL);
  ASSERT_EQ(policydoc_set_canary(&d, "25%", err, sizeof err), 0);
  d.last_revision = 12;
  text = policydoc_write(&d, &len);
  ASSERT_EQ(policydoc_parse(text, len, &e, err, sizeof err), 0);
  ASSERT_EQ(e.canary_percent, 25);
  ASSERT_EQ(e.n_canary_hosts, 0);
  ASSERT(!e.previous);
  ASSERT_EQ(policydoc_top(&e), 12);
  free(text);
  policydoc_free(&e);
  policydoc_free(&d);
}

static void rejects(const char *text, const char *want) {
  policydoc_t d;
  err[0] = '\0';
  int rc = policydoc_parse(text, strlen(text), &d, err, sizeof err);
  policydoc_free(&d);
  if (rc != -1) FAIL("accepted: %s", text);
  ASSERT(!strchr(err, '\n'));
  ASSERT_CONTAINS(err, want);
}

static char *rev(int n, const char *src, const char *extra) {
  policydoc_rev_t *r = policydoc_rev_new(n, src, strlen(src), NULL, NULL, NULL);
  char *t = xasprintf("{\"revision\":%d,\"sha256\":\"%s\",\"source\":\"%s\"%s}",
                      n, r->sha256, src, extra);
  policydoc_rev_free(r);
  return t;
}

static char *doc(const char *stable, const char *canary, const char *previous) {
  return xasprintf("{\"register_policy\":1,\"generation\":3,\"stable\":%s,"
                   "\"canary\":%s,\"previous\":%s}",
                   stable, canary ? canary : "null",
                   previous ? previous : "null");
}

TEST(rejections) {
  char *s2 = rev(2, "src", ""), *t;
  t = doc(s2, NULL, NULL);
  policydoc_t d;
  ASSERT_EQ(policydoc_parse(t, strlen(t), &d, err, sizeof err), 0);
  policydoc_free(&d);
  free(t);
  rejects("{nope", "not JSON");
  rejects("[1]", "not a policy document");
  rejects("{\"generation\":1}", "no register_policy");
  rejects("{\"register_policy\":2,\"generation\":1}",
          "register_policy is not 1");
  rejects("{\"register_policy\":\"1\",\"generation\":1}",
          "register_policy is not 1");
  rejects("{\"register_policy\":1}", "generation is missing");
  rejects("{\"register_policy\":1,\"generation\":1.5}", "generation is not");
  rejects("{\"register_policy\":1,\"generation\":0}", "generation is not");
  rejects("{\"register_policy\":1,\"generation\":1}", "stable is missing");
  rejects("{\"register_policy\":1,\"generation\":1,\"stable\":3}",
          "stable is not an object");
  rejects("{\"register_policy\":1,\"generation\":1,\"last_revision\":\"x\","
          "\"stable\":{}}",
          "last_revision");
  /* fields of a revision */
  rejects("{\"register_policy\":1,\"generation\":1,\"stable\":{}}",
          "stable.revision is missing");
  rejects(
      "{\"register_policy\":1,\"generation\":1,\"stable\":{\"revision\":0}}",
      "stable.revision is not an integer in 1..");
  rejects(
      "{\"register_policy\":1,\"generation\":1,\"stable\":{\"revision\":1}}",
      "stable.source is missing");
  rejects("{\"register_policy\":1,\"generation\":1,\"stable\":{\"revision\":1,"
          "\"source\":5}}",
          "stable.source is not a string");
  rejects("{\"register_policy\":1,\"generation\":1,\"stable\":{\"revision\":1,"
          "\"source\":\"x\"}}",
          "stable.sha256 is missing");
  rejects("{\"register_policy\":1,\"generation\":1,\"stable\":{\"revision\":1,"
          "\"source\":\"x\",\"sha256\":\"abc\"}}",
          "stable.sha256 is not 64");
  t = rev(2, "src", "");
  char *bad = xstrdup(t);
  strstr(bad, "\"source\":\"src\"")[12] = 'S'; /* the source changed */
  free(t);
  t = doc(bad, NULL, NULL);
  rejects(t, "stable.sha256 does not match its source");
  free(t);
  free(bad);
  bad = rev(2, "src", ",\"signature\":7");
  t = doc(bad, NULL, NULL);
  rejects(t, "stable.signature is not a string");
  free(t);
  free(bad);
  /* too large: a source, a document */
  buf_t big;
  buf_init(&big);
  buf_puts(&big, "{\"register_policy\":1,\"generation\":1,\"stable\":{"
                 "\"revision\":1,\"source\":\"");
  for (size_t i = 0; i < POLICYDOC_MAX_SOURCE + 1; i++)
    buf_putc(&big, 'a');
  buf_puts(&big, "\"}}");
  rejects(big.data, "stable.source is too large");
  for (size_t i = 0; i < POLICYDOC_MAX_DOC; i++)
    buf_putc(&big, ' ');
  rejects(big.data, "too large");
  buf_free(&big);
  /* the canary */
  char *c3 = rev(3, "c", ",\"percent\":10");
  t = doc(s2, c3, NULL);
  ASSERT_EQ(policydoc_parse(t, strlen(t), &d, err, sizeof err), 0);
  ASSERT_EQ(d.canary_percent, 10);
  policydoc_free(&d);
  free(t);
  free(c3);
  const char *const bad_canaries[][2] = {
      {",\"percent\":0", "canary.percent is not an integer in 1..100"},
      {",\"percent\":101", "canary.percent is not an integer in 1..100"},
      {",\"percent\":\"5\"", "canary.percent"},
      {"", "canary has neither hosts nor percent"},
      {",\"hosts\":[]", "canary.hosts is not a non-empty array"},
      {",\"hosts\":[\"10.0.0.1\",\"10.0.0.300\"]",
       "canary.hosts[1] is not an IP address"},
      {",\"hosts\":[\"10.0.0.1\"],\"percent\":5", "both hosts and percent"},
  };
  for (size_t i = 0; i < sizeof bad_canaries / sizeof bad_canaries[0]; i++) {
    c3 = rev(3, "c", bad_canaries[i][0]);
    t = doc(s2, c3, NULL);
    rejects(t, bad_canaries[i][1]);
    free(t);
    free(c3);
  }
  /* too many hosts */
  buf_init(&big);
  buf_puts(&big, ",\"hosts\":[");
  for (int i = 0; i <= POLICYDOC_MAX_HOSTS; i++)
    buf_printf(&big, "%s\"10.%d.%d.1\"", i ? "," : "", i / 256, i % 256);
  buf_putc(&big, ']');
  c3 = rev(3, "c", big.data);
  t = doc(s2, c3, NULL);
  rejects(t, "canary.hosts names 4097 hosts");
  free(t);
  free(c3);
  buf_free(&big);
  /* revisions: canary newer than stable, all distinct */
  char *c1 = rev(1, "c", ",\"percent\":10"),
       *c2 = rev(2, "c", ",\"percent\":10");
  t = doc(s2, c1, NULL);
  rejects(t, "canary.revision 1 is not newer than stable.revision 2");
  free(t);
  t = doc(s2, c2, NULL);
  rejects(t, "not newer");
  free(t);
  char *p2 = rev(2, "p", "");
  t = doc(s2, NULL, p2);
  rejects(t, "two revisions have the number 2");
  free(t);
  free(p2);
  free(c1);
  free(c2);
  free(s2);
}

TEST(canary_selection) {
  policydoc_t d = {0};
  d.generation = 1;
  d.stable = policydoc_rev_new(1, "s", 1, NULL, NULL, NULL);
  /* no canary: stable for everyone */
  ASSERT(!policydoc_in_canary(&d, "10.0.0.1"));
  ASSERT(policydoc_for_host(&d, "10.0.0.1") == d.stable);
  d.canary = policydoc_rev_new(2, "c", 1, NULL, NULL, NULL);
  ASSERT_EQ(policydoc_set_canary(&d, "10.0.0.1,2001:db8::1", err, sizeof err),
            0);
  ASSERT(policydoc_for_host(&d, "10.0.0.1") == d.canary);
  ASSERT(policydoc_for_host(&d, "10.0.0.2") == d.stable);
  ASSERT(policydoc_in_canary(&d, "2001:db8:0::1")); /* the same address */
  ASSERT(!policydoc_in_canary(&d, "10.0.0.10"));
  /* bad specs leave the selection as it was */
  const char *const bad[][2] = {
      {"0%", "N% needs N in 1..100"},     {"101%", "N% needs N in 1..100"},
      {"x%", "N% needs N in 1..100"},     {"", "empty"},
      {"10.0.0.1,,10.0.0.2", "an empty"}, {"10.0.0.1,host", "\"host\" is not"},
      {"10.0.0.256", "is not an IP"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ASSERT_EQ(policydoc_set_canary(&d, bad[i][0], err, sizeof err), -1);
    ASSERT_CONTAINS(err, bad[i][1]);
    ASSERT_EQ(d.n_canary_hosts, 2);
  }
  /* percent: exactly the hosts whose bucket is below it */
  ASSERT_EQ(policydoc_set_canary(&d, "10%", err, sizeof err), 0);
  ASSERT_EQ(d.n_canary_hosts, 0);
  unsigned counts[100] = {0}, in = 0;
  char ip[64];
  for (int i = 0; i < 10000; i++) {
    snprintf(ip, sizeof ip, "10.%d.%d.%d", i / 65536, (i / 256) % 256, i % 256);
    unsigned b = policydoc_bucket(ip);
    ASSERT(b < 100);
    ASSERT_EQ(b, policydoc_bucket(ip)); /* stable */
    counts[b]++;
    int c = policydoc_in_canary(&d, ip);
    ASSERT_EQ(c, b < 10);
    in += (unsigned)c;
  }
  /* spread: 100 per bucket on average; none empty, none over 2x */
  for (int b = 0; b < 100; b++)
    if (counts[b] < 50 || counts[b] > 200)
      FAIL("bucket %d holds %u of 10000 addresses", b, counts[b]);
  if (in < 800 || in > 1200) FAIL("10%% took %u of 10000 hosts", in);
  /* FNV-1a 32 of "a" is 0xe40c292c (the published test vector) */
  ASSERT_EQ(policydoc_bucket("a"), 0xe40c292cu % 100);
  ASSERT_EQ(policydoc_set_canary(&d, "100%", err, sizeof err), 0);
  ASSERT(policydoc_in_canary(&d, "192.168.1.1"));
  policydoc_free(&d);
}

TEST(status_round_trip) {
  policydoc_status_t s = {0}, t;
  snprintf(s.host, sizeof s.host, "10.0.0.1");
  s.key = xstrdup("/register/policy");
  s.generation = 7;
  s.revision = 3;
  memset(s.sha256, 'a', 64);
  s.offered = 4;
  s.state = POLICYDOC_REFUSED;
  s.error = xstrdup("signature: \"bad\"\n");
  s.keys = 12;
  s.since = 1765011600;
  s.is_signed = 1;
  size_t len;
  char *text = policydoc_status_write(&s, &len);
  ASSERT_EQ(strlen(text), len);
  ASSERT_EQ(policydoc_status_parse(text, len, &t, err, sizeof err), 0);
  ASSERT_STR_EQ(t.host, "10.0.0.1");
  ASSERT_STR_EQ(t.key, "/register/policy");
  ASSERT_EQ(t.generation, 7);
  ASSERT_EQ(t.revision, 3);
  ASSERT_STR_EQ(t.sha256, s.sha256);
  ASSERT_EQ(t.offered, 4);
  ASSERT_EQ(t.state, POLICYDOC_REFUSED);
  ASSERT_STR_EQ(t.error, s.error);
  ASSERT_EQ(t.keys, 12);
  ASSERT_EQ(t.since, 1765011600);
  ASSERT_EQ(t.is_signed, 1);
  policydoc_status_free(&t);
  free(text);
  /* applied, no error, no sha256 */
  policydoc_status_free(&s);
  s.key = xstrdup("/k");
  s.state = POLICYDOC_APPLIED;
  s.sha256[0] = '\0';
  s.is_signed = 0;
  text = policydoc_status_write(&s, &len);
  ASSERT_EQ(policydoc_status_parse(text, len, &t, err, sizeof err), 0);
  ASSERT_EQ(t.state, POLICYDOC_APPLIED);
  ASSERT(!t.error && !t.is_signed && !t.sha256[0]);
  policydoc_status_free(&t);
  free(text);
  policydoc_status_free(&s);
  const char *const bad[][2] = {
      {"nope", "not JSON"},
      {"[]", "not a JSON object"},
      {"{\"key\":\"/k\",\"state\":\"applied\"}", "host"},
      {"{\"host\":\"h\",\"state\":\"applied\"}", "key"},
      {"{\"host\":\"h\",\"key\":\"/k\",\"revision\":-1,\"state\":\"applied\"}",
       "revision is not"},
      {"{\"host\":\"h\",\"key\":\"/k\",\"state\":\"done\"}", "state \"done\""},
      {"{\"host\":\"h\",\"key\":\"/k\"}", "state is missing"},
      {"{\"host\":\"h\",\"key\":\"/k\",\"state\":\"waiting\",\"error\":1}",
       "error is not"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = policydoc_status_parse(bad[i][0], strlen(bad[i][0]), &t, err,
                                    sizeof err);
    policydoc_status_free(&t);
    if (rc != -1) FAIL("accepted %s", bad[i][0]);
    ASSERT_CONTAINS(err, bad[i][1]);
  }
  ASSERT_STR_EQ(policydoc_state_name(POLICYDOC_WAITING), "waiting");
}

TEST(status_key) {
  char *k = policydoc_status_key("/register/policy", "10.0.0.1");
  ASSERT_STR_EQ(k, "/register/status/10.0.0.1");
  free(k);
  k = policydoc_status_dir("/a/b/c/policy");
  ASSERT_STR_EQ(k, "/a/b/c/status");
  free(k);
  k = policydoc_status_dir("/policy");
  ASSERT_STR_EQ(k, "/status");
  free(k);
  k = policydoc_status_key("/p", "::1");
  ASSERT_STR_EQ(k, "/status/::1");
  free(k);
}

/* hand-edited numbers: refused when parsing, so that the next write's
 * + 1 can never overflow (push aborted on last_revision INT64_MAX) */
TEST(numbers_in_range) {
  char *s1 = rev(1, "src", ""), *t;
  policydoc_t d;
  static const char *const huge[] = {"9223372036854775807", "9007199254740992"};
  for (size_t i = 0; i < 2; i++) {
    char num[200];
    snprintf(num, sizeof num, "\"last_revision\":%s,", huge[i]);
    t = xasprintf("{\"register_policy\":1,%s\"generation\":3,\"stable\":%s}",
                  num, s1);
    ASSERT_EQ(policydoc_parse(t, strlen(t), &d, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "last_revision is not an integer in "
                         "0..9007199254740991");
    policydoc_free(&d);
    free(t);
    t = xasprintf("{\"register_policy\":1,\"generation\":%s,\"stable\":%s}",
                  huge[i], s1);
    ASSERT_EQ(policydoc_parse(t, strlen(t), &d, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "generation is not an integer in 1..9007199254740991");
    policydoc_free(&d);
    free(t);
    char *big = xstrdup(s1);
    char *r = strstr(big, "\"revision\":1");
    ASSERT(r);
    char *t2 = xasprintf("%.*s\"revision\":%s%s", (int)(r - big), big, huge[i],
                         r + strlen("\"revision\":1"));
    t = doc(t2, NULL, NULL);
    ASSERT_EQ(policydoc_parse(t, strlen(t), &d, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "stable.revision is not an integer in 1..");
    policydoc_free(&d);
    free(t);
    free(t2);
    free(big);
  }
  /* the largest is still a document (the command refuses to go past it) */
  t = xasprintf("{\"register_policy\":1,\"last_revision\":9007199254740991,"
                "\"generation\":9007199254740991,\"stable\":%s}",
                s1);
  ASSERT_EQ(policydoc_parse(t, strlen(t), &d, err, sizeof err), 0);
  ASSERT_EQ(policydoc_top(&d), POLICYDOC_MAX_NUMBER);
  policydoc_free(&d);
  free(t);
  free(s1);
}

/* what a document that does not parse still shows, for push --force */
TEST(salvage) {
  int64_t gen = 3, top = 4;
  policydoc_salvage("{nope", 5, &gen, &top);
  ASSERT_EQ(gen, 3);
  ASSERT_EQ(top, 4);
  const char *t = "{\"generation\":9,\"last_revision\":2,\"stable\":{"
                  "\"revision\":7},\"canary\":{\"revision\":\"x\"},"
                  "\"previous\":{\"revision\":9223372036854775807}}";
  policydoc_salvage(t, strlen(t), &gen, &top);
  ASSERT_EQ(gen, 9);
  ASSERT_EQ(top, 7); /* out of range and not numbers: not taken */
  policydoc_salvage("[1,2]", 5, &gen, &top);
  ASSERT_EQ(gen, 9);
}

/* an address named twice is refused, even written another way */
TEST(canary_named_twice) {
  policydoc_t d = {0};
  ASSERT_EQ(policydoc_set_canary(&d, "10.77.0.1,10.77.0.1", err, sizeof err),
            -1);
  ASSERT_STR_EQ(err, "--canary: 10.77.0.1 is named twice");
  ASSERT_EQ(policydoc_set_canary(&d, "2001:db8::1,10.0.0.1,2001:db8:0::1", err,
                                 sizeof err),
            -1);
  ASSERT_CONTAINS(err, "2001:db8:0::1 is named twice (also as 2001:db8::1)");
  ASSERT_EQ(d.n_canary_hosts, 0);
  policydoc_free(&d);
}

TEST_MAIN(TEST_ENTRY(round_trip), TEST_ENTRY(rejections),
          TEST_ENTRY(numbers_in_range), TEST_ENTRY(salvage),
          TEST_ENTRY(canary_named_twice), TEST_ENTRY(canary_selection),
          TEST_ENTRY(status_round_trip), TEST_ENTRY(status_key))

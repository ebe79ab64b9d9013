/* test: a tiny libuv-style test runner.  Each test binary lists its tests;
 * `binary NAME` runs one (ctest registers each by name), no argument runs
 * them all.  A failed assertion prints file:line and exits 1. */
#ifndef REGISTER_TEST_H
#define REGISTER_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                              \
  do {                                                                         \
    fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                            \
    fprintf(stderr, __VA_ARGS__);                                              \
    fputc('\n', stderr);                                                       \
    exit(1);                                                                   \
  } while (0)

#define ASSERT(c)                                                              \
  do {                                                                         \
    if (!(c)) FAIL("assertion failed: %s", #c);                                \
  } while (0)

#define ASSERT_EQ(a, b)                                                        \
  do {                                                                         \
    int64_t a_ = (int64_t)(a), b_ = (int64_t)(b);                              \
    if (a_ != b_) FAIL("%s == %s: %" PRId64 " != %" PRId64, #a, #b, a_, b_);   \
  } while (0)

#define ASSERT_STR_EQ(a, b)                                                    \
  do {                                                                         \
    const char *a_ = (a), *b_ = (b);                                           \
    if (!a_ || !b_ || strcmp(a_, b_) != 0)                                     \
      FAIL("%s == %s:\n  got:  %s\n  want: %s", #a, #b, a_ ? a_ : "(null)",    \
           b_ ? b_ : "(null)");                                                \
  } while (0)

#define ASSERT_CONTAINS(hay, needle)                                           \
  do {                                                                         \
    const char *h_ = (hay), *n_ = (needle);                                    \
    if (!h_ || !strstr(h_, n_))                                                \
      FAIL("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_);          \
  } while (0)

typedef struct {
  const char *name;
  void (*fn)(void);
} test_entry_t;

#define TEST(name) static void test_##name(void)
#define TEST_ENTRY(name)                                                       \
  { #name, test_##name }

static inline int test_main(int argc, char **argv, const test_entry_t *tests,
                            size_t n) {
  int ran = 0;
  for (size_t i = 0; i < n; i++) {
    if (argc > 1 && strcmp(argv[1], tests[i].name) != 0) continue;
    tests[i].fn();
    fprintf(stderr, "ok %s\n", tests[i].name);
    ran++;
  }
  if (!ran) {
    fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "(any)");
    return 1;
  }
  return 0;
}

#define TEST_MAIN(...)                                                         \
  int main(int argc, char **argv) {                                            \
    static const test_entry_t tests_[] = {__VA_ARGS__};                        \
    return test_main(argc, argv, tests_, sizeof tests_ / sizeof tests_[0]);    \
  }

/* Reads a file under tests/data (REGISTER_TEST_DATA is set by CMake). */
static inline char *test_read(const char *name, size_t *len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", REGISTER_TEST_DATA, name);
  FILE *f = fopen(path, "rb");
  if (!f) FAIL("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *p = malloc((size_t)n + 1);
  if (fread(p, 1, (size_t)n, f) != (size_t)n) FAIL("cannot read %s", path);
  p[n] = '\0';
  fclose(f);
  if (len) *len = (size_t)n;
  return p;
}

#endif

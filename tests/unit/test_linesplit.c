/* linesplit: framing of Docker's event stream. */
#include "linesplit.h"
#include "test.h"

typedef struct {
  char lines[16][64];
  int n;
  size_t dropped[4];
  int ndropped;
} sink_t;

static void on_line(void *ud, const char *p, size_t n) {
  sink_t *s = ud;
  ASSERT(s->n < 16 && n < 64);
  memcpy(s->lines[s->n], p, n);
  s->lines[s->n][n] = '\0';
  s->n++;
}

static void on_long(void *ud, size_t n) {
  sink_t *s = ud;
  s->dropped[s->ndropped++] = n;
}

static const linesplit_cbs_t cbs = {on_line, on_long};

TEST(lines_across_chunks) {
  linesplit_t ls;
  sink_t s = {0};
  linesplit_init(&ls, 100);
  const char *chunks[] = {"{\"a\"", ":1}\n{\"b\":2}\n{", "\"c\":3}\r\n\n", "x"};
  for (int i = 0; i < 4; i++)
    linesplit_feed(&ls, chunks[i], strlen(chunks[i]), &cbs, &s);
  ASSERT_EQ(s.n, 3);
  ASSERT_STR_EQ(s.lines[0], "{\"a\":1}");
  ASSERT_STR_EQ(s.lines[1], "{\"b\":2}");
  ASSERT_STR_EQ(s.lines[2], "{\"c\":3}"); /* \r stripped, empty line skipped */
  ASSERT_EQ(linesplit_pending(&ls), 1);   /* the cut "x" */
  linesplit_reset(&ls);
  ASSERT_EQ(linesplit_pending(&ls), 0);
  linesplit_free(&ls);
}

TEST(byte_by_byte) {
  linesplit_t ls;
  sink_t s = {0};
  linesplit_init(&ls, 100);
  const char *in = "one\ntwo\nthree\n";
  for (size_t i = 0; i < strlen(in); i++)
    linesplit_feed(&ls, in + i, 1, &cbs, &s);
  ASSERT_EQ(s.n, 3);
  ASSERT_STR_EQ(s.lines[2], "three");
  linesplit_free(&ls);
}

TEST(over_long_line_is_dropped_and_the_next_survives) {
  linesplit_t ls;
  sink_t s = {0};
  linesplit_init(&ls, 10);
  linesplit_feed(&ls, "short\n0123456789", 16, &cbs, &s);
  linesplit_feed(&ls, "abcdef", 6, &cbs, &s); /* now over the cap */
  ASSERT_EQ(s.ndropped, 0);
  ASSERT(linesplit_pending(&ls) == 16);
  linesplit_feed(&ls, "ghij\nok\n", 8, &cbs, &s);
  ASSERT_EQ(s.ndropped, 1);
  ASSERT_EQ(s.dropped[0], 20);
  ASSERT_EQ(s.n, 2);
  ASSERT_STR_EQ(s.lines[0], "short");
  ASSERT_STR_EQ(s.lines[1], "ok");
  /* a long line inside one chunk */
  linesplit_feed(&ls, "0123456789012\nend\n", 18, &cbs, &s);
  ASSERT_EQ(s.ndropped, 2);
  ASSERT_EQ(s.dropped[1], 13);
  ASSERT_STR_EQ(s.lines[2], "end");
  linesplit_free(&ls);
}

TEST_MAIN(TEST_ENTRY(lines_across_chunks), TEST_ENTRY(byte_by_byte),
          TEST_ENTRY(over_long_line_is_dropped_and_the_next_survives))

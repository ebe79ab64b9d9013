/* util and map: percent-encoding, base64, the hash map. */
#include "map.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

TEST(urlencode) {
  buf_t b;
  buf_init(&b);
  const char v[] = "a&b=c+d%e \"q\"\n/é";
  util_urlencode(&b, v, sizeof v - 1, NULL);
  ASSERT_STR_EQ(b.data, "a%26b%3Dc%2Bd%25e%20%22q%22%0A%2F%C3%A9");
  buf_reset(&b);
  util_urlencode(&b, "/registered/::1/a::b:1.2/x y", 28, "/:");
  ASSERT_STR_EQ(b.data, "/registered/::1/a::b:1.2/x%20y");
  buf_free(&b);
}

TEST(clean_text) {
  buf_t b;
  buf_init(&b);
  /* ASCII as is; C0, DEL and C1 escaped; valid UTF-8 kept; other bytes as
   * \xNN; line breaks kept only when asked */
  const char in[] =
      "ok \"q\" \x1b[2J\r\nx\x7f \xc2\x9b \xc3\xa9 \xe2\x98\xba \xff\xc0\xaf\t";
  util_clean_text(&b, in, sizeof in - 1, 1000, 0);
  ASSERT_STR_EQ(b.data, "ok \"q\" \\x1b[2J\\x0d\\x0ax\\x7f \\u009b \xc3\xa9 "
                        "\xe2\x98\xba \\xff\\xc0\\xaf\\x09");
  /* bidi overrides and isolates (they reorder what follows on a
   * terminal) escaped; other marks kept */
  buf_reset(&b);
  util_clean_text(&b,
                  "a"
                  "\xe2\x80\xae"
                  "b"
                  "\xe2\x81\xa6"
                  "c"
                  "\xe2\x80\x8e",
                  12, 1000, 0);
  ASSERT_STR_EQ(b.data, "a\\u202eb\\u2066c\xe2\x80\x8e");
  buf_reset(&b); /* the line separator: a new line to some readers */
  util_clean_text(&b,
                  "a\xe2\x80\xa8"
                  "b\xe2\x80\xa9",
                  8, 1000, 0);
  ASSERT_STR_EQ(b.data, "a\\u2028b\\u2029");
  buf_reset(&b);
  util_clean_text(&b, "a\nb", 3, 1000, 1);
  ASSERT_STR_EQ(b.data, "a\nb");
  /* cut at max, and counted; a sequence cut by max is bytes, not text */
  buf_reset(&b);
  util_clean_text(&b, "abcdef", 6, 4, 0);
  ASSERT_STR_EQ(b.data, "abcd ... (2 bytes more)");
  buf_reset(&b);
  util_clean_text(&b, "ab\xe2\x98\xba", 5, 3, 0);
  ASSERT_STR_EQ(b.data, "ab\\xe2 ... (2 bytes more)");
  /* what it makes is clean: a second pass changes nothing */
  buf_t again;
  buf_init(&again);
  buf_reset(&b);
  util_clean_text(&b, in, sizeof in - 1, 1000, 0);
  util_clean_text(&again, b.data, b.len, 1000, 0);
  ASSERT_STR_EQ(again.data, b.data);
  buf_free(&again);
  buf_free(&b);
}

TEST(path_dir_and_base) {
  const char *in[] = {"a/b", "b", "/b", "/a/b/c", "a/", "./x"};
  const char *dir[] = {"a", ".", "/", "/a/b", "a", "."};
  const char *base[] = {"b", "b", "b", "c", "", "x"};
  for (int i = 0; i < 6; i++) {
    char *d = util_path_dir(in[i]);
    ASSERT_STR_EQ(d, dir[i]);
    ASSERT_STR_EQ(util_path_base(in[i]), base[i]);
    free(d);
  }
}

TEST(base64) {
  const char *in[] = {"", "f", "fo", "foo", "foob", "/registered/\xff"};
  const char *out[] = {
      "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "L3JlZ2lzdGVyZWQv/w=="};
  for (int i = 0; i < 6; i++) {
    buf_t b, d;
    buf_init(&b);
    buf_init(&d);
    util_base64_encode(&b, in[i], strlen(in[i]));
    ASSERT_STR_EQ(b.data ? b.data : "", out[i]);
    ASSERT_EQ(util_base64_decode(&d, b.data ? b.data : "", b.len), 0);
    ASSERT_EQ(d.len, strlen(in[i]));
    ASSERT(memcmp(d.data ? d.data : "", in[i], d.len) == 0);
    buf_free(&b);
    buf_free(&d);
  }
  buf_t d;
  buf_init(&d);
  ASSERT_EQ(util_base64_decode(&d, "ab$c", 4), -1);
  buf_free(&d);
}

TEST(map_put_get_delete_iterate) {
  map_t *m = map_new();
  char keys[1000][16];
  for (int i = 0; i < 1000; i++) {
    snprintf(keys[i], sizeof keys[i], "k%d", i);
    ASSERT(map_put(m, keys[i], keys[i]) == NULL);
  }
  ASSERT_EQ(map_size(m), 1000);
  ASSERT(map_get(m, "k517") == keys[517]);
  ASSERT(map_put(m, keys[5], "x") == keys[5]);
  ASSERT_EQ(map_size(m), 1000);
  /* delete while iterating: every other entry */
  map_iter_t it;
  const char *k;
  void *v;
  int seen = 0;
  map_iter_init(&it, m);
  while (map_iter_next(&it, &k, &v)) {
    seen++;
    if (atoi(k + 1) % 2) ASSERT(map_del(m, k) != NULL);
  }
  ASSERT_EQ(seen, 1000);
  ASSERT_EQ(map_size(m), 500);
  ASSERT(map_get(m, "k3") == NULL);
  ASSERT(map_get(m, "k4") == keys[4]);
  ASSERT(map_del(m, "nope") == NULL);
  map_free(m);
}

/* The map against a model (an array indexed by key number), over random
 * puts, replacements, deletes, lookups and iterations that delete what
 * they return; churn grows and shrinks it through its rehashes and
 * tombstones.  Seeded: REGISTER_TEST_SEED=n replays (printed). */
static uint64_t map_rng;
static unsigned map_rand(unsigned n) {
  map_rng ^= map_rng << 13;
  map_rng ^= map_rng >> 7;
  map_rng ^= map_rng << 17;
  return (unsigned)(map_rng % n);
}

TEST(map_against_a_model) {
  enum { NKEYS = 3000, STEPS = 200000 };
  const char *s = getenv("REGISTER_TEST_SEED");
  uint64_t seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
  fprintf(stderr, "map_against_a_model: REGISTER_TEST_SEED=%llu\n",
          (unsigned long long)seed);
  map_rng = seed * 2654435761u + 1;
  static char keys[NKEYS][24];
  static void *model[NKEYS];
  static int vals[NKEYS];
  for (int i = 0; i < NKEYS; i++) {
    /* container-id-like: a long shared prefix, differing at the end */
    snprintf(keys[i], sizeof keys[i], "/registered/x/%08d", i * 7919);
    model[i] = NULL;
  }
  map_t *m = map_new();
  size_t n = 0;
  /* phases: fill up to a ceiling that moves, so the map grows and shrinks */
  unsigned ceiling = 1 + map_rand(NKEYS);
  for (int step = 0; step < STEPS; step++) {
    if (step % 5000 == 0) ceiling = 1 + map_rand(NKEYS);
    unsigned k = map_rand(ceiling), op = map_rand(10);
    if (op < 5) {
      void *v = &vals[map_rand(NKEYS)];
      ASSERT(map_put(m, keys[k], v) == model[k]);
      if (!model[k]) n++;
      model[k] = v;
    } else if (op < 8) {
      k = map_rand(NKEYS); /* also above the ceiling: the shrinking side */
      ASSERT(map_del(m, keys[k]) == model[k]);
      if (model[k]) n--;
      model[k] = NULL;
    } else if (op < 9) {
      ASSERT(map_get(m, keys[k]) == model[k]);
    } else if (map_rand(50) == 0) {
      /* iterate: every entry once, deleting some as they come */
      static char seen[NKEYS];
      memset(seen, 0, sizeof seen);
      map_iter_t it;
      const char *key;
      void *v;
      size_t count = 0, before = n;
      unsigned every = 1 + map_rand(4);
      map_iter_init(&it, m);
      while (map_iter_next(&it, &key, &v)) {
        int i = atoi(key + 14) / 7919;
        ASSERT(i >= 0 && i < NKEYS && key == keys[i] && !seen[i]);
        ASSERT(v == model[i]);
        seen[i] = 1;
        count++;
        if (count % every == 0) {
          ASSERT(map_del(m, key) == v);
          model[i] = NULL;
          n--;
        }
      }
      ASSERT_EQ(count, before);
    }
    ASSERT_EQ(map_size(m), n);
  }
  for (int i = 0; i < NKEYS; i++)
    ASSERT(map_get(m, keys[i]) == model[i]);
  map_free(m);
}

TEST_MAIN(TEST_ENTRY(urlencode), TEST_ENTRY(clean_text),
          TEST_ENTRY(path_dir_and_base), TEST_ENTRY(base64),
          TEST_ENTRY(map_put_get_delete_iterate),
          TEST_ENTRY(map_against_a_model))

/* util and map: percent-encoding, base64, the hash map. */
#include "map.h"
#include "test.h"
#include "util.h"

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

TEST_MAIN(TEST_ENTRY(urlencode), TEST_ENTRY(base64),
          TEST_ENTRY(map_put_get_delete_iterate))

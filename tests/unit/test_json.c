/* json: parsing (order, escapes, numbers, errors) and Ruby-style escaping. */
#include "json.h"
#include "test.h"

static json_doc_t *parse(const char *s) {
  char err[200];
  json_doc_t *d = json_parse(s, strlen(s), err, sizeof err);
  if (!d) FAIL("parse failed: %s", err);
  return d;
}

static void parse_fails(const char *s, const char *why) {
  char err[200] = "";
  json_doc_t *d = json_parse(s, strlen(s), err, sizeof err);
  if (d) FAIL("parsed but should not: %s", s);
  ASSERT_CONTAINS(err, why);
}

TEST(object_order_is_kept) {
  json_doc_t *d = parse("{\"9200/tcp\":null,\"53/udp\":[1],\"80/tcp\":{}}");
  const json_value_t *c = json_root(d)->u.child;
  ASSERT_STR_EQ(c->key, "9200/tcp");
  ASSERT_EQ(c->type, JSON_NULL);
  ASSERT_STR_EQ(c->next->key, "53/udp");
  ASSERT_STR_EQ(c->next->next->key, "80/tcp");
  ASSERT(c->next->next->next == NULL);
  ASSERT_EQ(json_root(d)->len, 3);
  json_free(d);
}

TEST(strings_and_escapes) {
  json_doc_t *d = parse("[\"a\\\"b\\\\c\\/d\\n\\t\", \"\\u00e9\\u2603\", "
                        "\"\\ud83d\\ude00\", \"\\ud800x\", \"nul\\u0000in\"]");
  const json_value_t *v = json_root(d)->u.child;
  ASSERT_STR_EQ(v->u.str, "a\"b\\c/d\n\t");
  v = v->next;
  ASSERT_STR_EQ(v->u.str, "\xc3\xa9\xe2\x98\x83");
  v = v->next;
  ASSERT_STR_EQ(v->u.str, "\xf0\x9f\x98\x80");
  v = v->next;
  ASSERT_STR_EQ(v->u.str, "\xef\xbf\xbdx"); /* lone surrogate -> U+FFFD */
  v = v->next;
  ASSERT_EQ(v->len, 6);
  ASSERT(memcmp(v->u.str, "nul\0in", 6) == 0);
  json_free(d);
}

TEST(numbers) {
  json_doc_t *d = parse("[0, -12, 1795617304084271172, 1.5, 2e3, -0.25e-2,"
                        " 99999999999999999999]");
  const json_value_t *v = json_root(d)->u.child;
  ASSERT(v->u.num.is_int && v->u.num.i == 0);
  v = v->next;
  ASSERT(v->u.num.is_int && v->u.num.i == -12);
  v = v->next; /* timeNano does not fit a double exactly */
  ASSERT(v->u.num.is_int && v->u.num.i == 1795617304084271172LL);
  v = v->next;
  ASSERT(!v->u.num.is_int && v->u.num.d == 1.5);
  v = v->next;
  ASSERT(!v->u.num.is_int && v->u.num.d == 2000.0);
  v = v->next;
  ASSERT(!v->u.num.is_int && v->u.num.d == -0.0025);
  v = v->next; /* too big for int64: a double */
  ASSERT(!v->u.num.is_int && v->u.num.d > 9e19);
  json_free(d);
}

TEST(lookups) {
  json_doc_t *d = parse("{\"State\":{\"Running\":true,\"Health\":"
                        "{\"Status\":\"healthy\"}},\"Id\":\"abc\"}");
  const char *path[] = {"State", "Health", "Status", NULL};
  ASSERT_STR_EQ(json_path(json_root(d), path)->u.str, "healthy");
  ASSERT_STR_EQ(json_get_str(json_root(d), "Id"), "abc");
  ASSERT(json_get_str(json_root(d), "State") == NULL); /* not a string */
  ASSERT(json_get(json_get(json_root(d), "Id"), "x") == NULL);
  ASSERT(json_get(NULL, "x") == NULL);
  json_free(d);
}

TEST(errors_name_the_problem) {
  parse_fails("", "unexpected end");
  parse_fails("{\"a\":1", "expected ',' or '}'");
  parse_fails("{\"a\" 1}", "expected ':'");
  parse_fails("[1,]", "unexpected character ']'");
  parse_fails("{\"a\":1} x", "trailing data");
  parse_fails("\"abc", "unterminated string");
  parse_fails("\"a\nb\"", "control character");
  parse_fails("\"\\x\"", "bad escape");
  parse_fails("\"\\u12\"", "bad \\u escape");
  parse_fails("01", "trailing data");
  parse_fails("-", "bad number");
  parse_fails("1.", "bad number");
  parse_fails("tru", "unexpected character 't'");
  parse_fails("{\"status\":\"start\",\"id\":\"abc", "unterminated string");
  char deep[1000];
  memset(deep, '[', sizeof deep - 1);
  deep[sizeof deep - 1] = '\0';
  parse_fails(deep, "nesting deeper than");
  char err[100];
  ASSERT(json_parse("[1,2", 4, err, sizeof err) == NULL);
  ASSERT_CONTAINS(err, "at byte 4");
}

TEST(escape_like_ruby_to_json) {
  buf_t b;
  buf_init(&b);
  const char in[] = "a/b\"c\\d\n\r\t\b\f\x01\x1f\x7f \xc3\xa9";
  json_escape(&b, in, sizeof in - 1);
  /* '/' and DEL and UTF-8 pass; control characters \u00xx lowercase */
  ASSERT_STR_EQ(b.data,
                "\"a/b\\\"c\\\\d\\n\\r\\t\\b\\f\\u0001\\u001f\x7f \xc3\xa9\"");
  buf_reset(&b);
  json_escape(&b, "", 0);
  ASSERT_STR_EQ(b.data, "\"\"");
  buf_free(&b);
}

TEST(large_document_with_escapes) {
  /* many escaped strings: allocation must stay linear */
  buf_t b;
  buf_init(&b);
  buf_putc(&b, '[');
  for (int i = 0; i < 20000; i++)
    buf_printf(&b, "%s\"x\\n%d\"", i ? "," : "", i);
  buf_putc(&b, ']');
  char err[100];
  json_doc_t *d = json_parse(b.data, b.len, err, sizeof err);
  ASSERT(d);
  ASSERT_EQ(json_root(d)->len, 20000);
  json_free(d);
  buf_free(&b);
}

TEST_MAIN(TEST_ENTRY(object_order_is_kept), TEST_ENTRY(strings_and_escapes),
          TEST_ENTRY(numbers), TEST_ENTRY(lookups),
          TEST_ENTRY(errors_name_the_problem),
          TEST_ENTRY(escape_like_ruby_to_json),
          TEST_ENTRY(large_document_with_escapes))

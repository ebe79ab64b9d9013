/* docker: event parsing (new fields; legacy only for old APIs), versions. */
#include "docker.h"
#include "test.h"

static json_doc_t *parse(const char *s) {
  char err[200];
  json_doc_t *d = json_parse(s, strlen(s), err, sizeof err);
  if (!d) FAIL("%s", err);
  return d;
}

TEST(new_event_fields) {
  json_doc_t *d = parse(
      "{\"status\":\"start\",\"id\":\"legacyid\",\"from\":\"old\","
      "\"Type\":\"container\",\"Action\":\"start\",\"Actor\":{\"ID\":\"abc\","
      "\"Attributes\":{\"image\":\"bbx\",\"name\":\"x1\"}},\"scope\":\"local\","
      "\"time\":1795617304,\"timeNano\":1795617304302353080}");
  docker_event_t ev;
  char err[100];
  ASSERT_EQ(docker_parse_event(json_root(d), 0, &ev, err, sizeof err), 0);
  ASSERT_STR_EQ(ev.type, "container");
  ASSERT_STR_EQ(ev.action, "start");
  ASSERT_STR_EQ(ev.id, "abc"); /* Actor.ID, not the legacy id */
  ASSERT_STR_EQ(ev.image, "bbx");
  ASSERT_STR_EQ(json_get_str(ev.attributes, "name"), "x1");
  ASSERT_EQ(ev.time, 1795617304);
  ASSERT(ev.time_nano == 1795617304302353080LL);
  json_free(d);

  /* API 1.52 dropped status/id/from: nothing is lost */
  d = parse("{\"Type\":\"container\",\"Action\":\"health_status: healthy\","
            "\"Actor\":{\"ID\":\"abc\",\"Attributes\":{}},\"time\":1}");
  ASSERT_EQ(docker_parse_event(json_root(d), 0, &ev, err, sizeof err), 0);
  ASSERT_STR_EQ(ev.action, "health_status: healthy");
  ASSERT(ev.image == NULL);
  json_free(d);

  /* a new-API daemon without Type/Action is malformed, not legacy */
  d = parse("{\"status\":\"start\",\"id\":\"abc\",\"from\":\"bbx\"}");
  ASSERT_EQ(docker_parse_event(json_root(d), 0, &ev, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "without \"Type\" or \"Action\"");
  json_free(d);
  d = parse("[1]");
  ASSERT_EQ(docker_parse_event(json_root(d), 0, &ev, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "not a JSON object");
  json_free(d);
}

TEST(legacy_event_fields) {
  json_doc_t *d = parse("{\"status\":\"die\",\"id\":\"abc\",\"from\":\"bbx\","
                        "\"time\":1400000000}");
  docker_event_t ev;
  char err[100];
  ASSERT_EQ(docker_parse_event(json_root(d), 1, &ev, err, sizeof err), 0);
  ASSERT_STR_EQ(ev.type, "container");
  ASSERT_STR_EQ(ev.action, "die");
  ASSERT_STR_EQ(ev.id, "abc");
  ASSERT_STR_EQ(ev.image, "bbx");
  json_free(d);
  d = parse("{\"status\":\"untag\",\"id\":\"sha256:1\",\"time\":1}");
  ASSERT_EQ(docker_parse_event(json_root(d), 1, &ev, err, sizeof err), 0);
  ASSERT_STR_EQ(ev.type, "image");
  json_free(d);
}

TEST(versions) {
  ASSERT(docker_version_cmp("1.41", "1.52") < 0);
  ASSERT(docker_version_cmp("1.9", "1.22") < 0);
  ASSERT(docker_version_cmp("1.22", "1.22") == 0);
  ASSERT(docker_version_cmp("2.0", "1.52") > 0);
}

TEST_MAIN(TEST_ENTRY(new_event_fields), TEST_ENTRY(legacy_event_fields),
          TEST_ENTRY(versions))

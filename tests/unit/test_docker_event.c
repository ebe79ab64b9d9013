/* docker_event: what each event means for the containers register follows
 * (no loop, no Docker: parsed lines in, classes out). */
#include "docker_event.h"
#include "test.h"

/* Parses one event line (new API unless legacy) and classifies it; the
 * document is kept in *doc for the pointers in ev and *id. */
static docker_event_class_t classify(const char *line, int legacy,
                                     json_doc_t **doc, const char **id) {
  char err[200];
  *doc = json_parse(line, strlen(line), err, sizeof err);
  if (!*doc) FAIL("%s", err);
  docker_event_t ev;
  if (docker_parse_event(json_root(*doc), legacy, &ev, err, sizeof err) < 0)
    FAIL("%s: %s", line, err);
  return docker_event_classify(&ev, id);
}

/* A container event with this action, for container "c1". */
static docker_event_class_t container(const char *action, const char **id,
                                      json_doc_t **doc) {
  char line[400];
  snprintf(line, sizeof line,
           "{\"Type\":\"container\",\"Action\":\"%s\",\"Actor\":{\"ID\":"
           "\"c1\",\"Attributes\":{\"image\":\"bbx\"}},\"time\":1}",
           action);
  return classify(line, 0, doc, id);
}

TEST(container_actions_that_reinspect) {
  static const char *const acts[] = {"start",
                                     "restart",
                                     "unpause",
                                     "pause",
                                     "rename",
                                     "update",
                                     "health_status: healthy",
                                     "health_status: unhealthy",
                                     "health_status"};
  for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
    json_doc_t *doc;
    const char *id;
    if (container(acts[i], &id, &doc) != DOCKER_EV_INSPECT)
      FAIL("%s: not DOCKER_EV_INSPECT", acts[i]);
    ASSERT_STR_EQ(id, "c1");
    json_free(doc);
  }
}

TEST(container_actions_that_remove) {
  static const char *const acts[] = {"die", "destroy", "remove" /* podman */};
  for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
    json_doc_t *doc;
    const char *id;
    if (container(acts[i], &id, &doc) != DOCKER_EV_GONE)
      FAIL("%s: not DOCKER_EV_GONE", acts[i]);
    ASSERT_STR_EQ(id, "c1");
    json_free(doc);
  }
}

TEST(container_actions_ignored) {
  /* a name matches whole (or before ':' for the reinspecting ones);
   * podman's init, cleanup and attach change nothing */
  static const char *const acts[] = {"create",
                                     "kill",
                                     "stop",
                                     "exec_start: sh -c true",
                                     "attach",
                                     "startx",
                                     "health_statusx",
                                     "die: 137",
                                     "resize",
                                     "removex",
                                     "init",
                                     "cleanup",
                                     "",
                                     "unpausex",
                                     "top"};
  for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
    json_doc_t *doc;
    const char *id = "unset";
    if (container(acts[i], &id, &doc) != DOCKER_EV_IGNORE)
      FAIL("\"%s\": not DOCKER_EV_IGNORE", acts[i]);
    ASSERT(id == NULL);
    json_free(doc);
  }
}

/* The health status an event line carries ("" for none). */
static void health_of(const char *line, char *out, size_t n) {
  char err[200];
  docker_event_t ev;
  json_doc_t *doc = json_parse(line, strlen(line), err, sizeof err);
  if (!doc) FAIL("%s", err);
  if (docker_parse_event(json_root(doc), 0, &ev, err, sizeof err) < 0)
    FAIL("%s: %s", line, err);
  snprintf(out, n, "%s", ev.health_status ? ev.health_status : "");
  json_free(doc);
}

TEST(health_status_from_the_action_or_podmans_field) {
  char h[64];
  health_of("{\"Type\":\"container\",\"Action\":\"health_status: "
            "unhealthy\",\"Actor\":{\"ID\":\"c1\"},\"time\":1}",
            h, sizeof h);
  ASSERT_STR_EQ(h, "unhealthy"); /* Docker: in the action */
  health_of("{\"Type\":\"container\",\"Action\":\"health_status\","
            "\"HealthStatus\":\"healthy\",\"Actor\":{\"ID\":\"c1\"},"
            "\"time\":1}",
            h, sizeof h);
  ASSERT_STR_EQ(h, "healthy"); /* podman: a field of its own */
  health_of("{\"Type\":\"container\",\"Action\":\"start\",\"Actor\":"
            "{\"ID\":\"c1\"},\"time\":1}",
            h, sizeof h);
  ASSERT_STR_EQ(h, ""); /* none */
}

TEST(container_event_without_id) {
  json_doc_t *doc;
  const char *id = "unset";
  ASSERT_EQ(classify("{\"Type\":\"container\",\"Action\":\"start\","
                     "\"Actor\":{\"Attributes\":{}},\"time\":1}",
                     0, &doc, &id),
            DOCKER_EV_IGNORE);
  ASSERT(id == NULL);
  json_free(doc);
}

TEST(network_events) {
  json_doc_t *doc;
  const char *id;
  ASSERT_EQ(classify("{\"Type\":\"network\",\"Action\":\"connect\",\"Actor\":"
                     "{\"ID\":\"n1\",\"Attributes\":{\"container\":\"c2\","
                     "\"name\":\"bridge\"}},\"time\":1}",
                     0, &doc, &id),
            DOCKER_EV_NETWORK);
  ASSERT_STR_EQ(id, "c2"); /* the container, not the network */
  json_free(doc);
  ASSERT_EQ(classify("{\"Type\":\"network\",\"Action\":\"disconnect\","
                     "\"Actor\":{\"ID\":\"n1\",\"Attributes\":{\"container\":"
                     "\"c3\"}},\"time\":1}",
                     0, &doc, &id),
            DOCKER_EV_NETWORK);
  ASSERT_STR_EQ(id, "c3");
  json_free(doc);
  /* no container named: nothing to inspect */
  ASSERT_EQ(classify("{\"Type\":\"network\",\"Action\":\"connect\",\"Actor\":"
                     "{\"ID\":\"n1\",\"Attributes\":{}},\"time\":1}",
                     0, &doc, &id),
            DOCKER_EV_IGNORE);
  ASSERT(id == NULL);
  json_free(doc);
  ASSERT_EQ(classify("{\"Type\":\"network\",\"Action\":\"create\",\"Actor\":"
                     "{\"ID\":\"n1\",\"Attributes\":{\"container\":\"c2\"}},"
                     "\"time\":1}",
                     0, &doc, &id),
            DOCKER_EV_IGNORE);
  json_free(doc);
}

TEST(other_types) {
  json_doc_t *doc;
  const char *id;
  ASSERT_EQ(classify("{\"Type\":\"image\",\"Action\":\"pull\",\"Actor\":"
                     "{\"ID\":\"busybox\"},\"time\":1}",
                     0, &doc, &id),
            DOCKER_EV_OTHER_TYPE);
  ASSERT(id == NULL);
  json_free(doc);
  ASSERT_EQ(classify("{\"Type\":\"volume\",\"Action\":\"mount\",\"Actor\":"
                     "{\"ID\":\"v\"},\"time\":1}",
                     0, &doc, &id),
            DOCKER_EV_OTHER_TYPE);
  json_free(doc);
}

TEST(legacy_events) {
  json_doc_t *doc;
  const char *id;
  /* before API 1.22: a container event is one with "from" */
  ASSERT_EQ(classify("{\"status\":\"start\",\"id\":\"c4\",\"from\":\"bbx\","
                     "\"time\":1}",
                     1, &doc, &id),
            DOCKER_EV_INSPECT);
  ASSERT_STR_EQ(id, "c4");
  json_free(doc);
  ASSERT_EQ(classify("{\"status\":\"destroy\",\"id\":\"c4\",\"from\":\"bbx\","
                     "\"time\":1}",
                     1, &doc, &id),
            DOCKER_EV_GONE);
  ASSERT_STR_EQ(id, "c4");
  json_free(doc);
  ASSERT_EQ(classify("{\"status\":\"untag\",\"id\":\"sha256:1\",\"time\":1}", 1,
                     &doc, &id),
            DOCKER_EV_OTHER_TYPE);
  json_free(doc);
}

TEST_MAIN(TEST_ENTRY(container_actions_that_reinspect),
          TEST_ENTRY(container_actions_that_remove),
          TEST_ENTRY(container_actions_ignored),
          TEST_ENTRY(health_status_from_the_action_or_podmans_field),
          TEST_ENTRY(container_event_without_id), TEST_ENTRY(network_events),
          TEST_ENTRY(other_types), TEST_ENTRY(legacy_events))

/* docker_event: event parsing and classification. */
#include "docker_event.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

int docker_parse_event(const json_value_t *root, int legacy, docker_event_t *ev,
                       char *err, size_t errlen) {
  memset(ev, 0, sizeof *ev);
  ev->raw = root;
  if (!root || root->type != JSON_OBJECT) {
    snprintf(err, errlen, "event is not a JSON object");
    return -1;
  }
  const json_value_t *t = json_get(root, "time");
  if (t && t->type == JSON_NUMBER) ev->time = t->u.num.i;
  t = json_get(root, "timeNano");
  if (t && t->type == JSON_NUMBER && t->u.num.is_int)
    ev->time_nano = t->u.num.i;
  if (legacy) {
    ev->action = json_get_str(root, "status");
    ev->id = json_get_str(root, "id");
    ev->image = json_get_str(root, "from");
    /* before 1.22 only containers had "from"; image events did not */
    ev->type = ev->image ? "container" : "image";
    if (!ev->action || !ev->id) {
      snprintf(err, errlen, "legacy event without \"status\" or \"id\"");
      return -1;
    }
    return 0;
  }
  ev->type = json_get_str(root, "Type");
  ev->action = json_get_str(root, "Action");
  const json_value_t *actor = json_get(root, "Actor");
  ev->id = json_get_str(actor, "ID");
  ev->attributes = json_get(actor, "Attributes");
  if (ev->attributes && ev->attributes->type != JSON_OBJECT)
    ev->attributes = NULL;
  ev->image = json_get_str(ev->attributes, "image");
  if (!ev->type || !ev->action) {
    snprintf(err, errlen, "event without \"Type\" or \"Action\"");
    return -1;
  }
  if (!ev->id) ev->id = "";
  /* podman: "HealthStatus" beside "Action": "health_status"; Docker: in
   * the action, "health_status: healthy" */
  ev->health_status = json_get_str(root, "HealthStatus");
  if (!ev->health_status && strncmp(ev->action, "health_status:", 14) == 0) {
    const char *h = ev->action + 14;
    while (*h == ' ')
      h++;
    ev->health_status = h;
  }
  return 0;
}

/* Container actions.  An action matches by its name: the whole action for
 * GONE ("die"), the part before ':' for INSPECT ("health_status: healthy").
 * Actions not listed are ignored (exec_*, create, kill, stop, ...; "stop"
 * and "kill" are followed by "die"; podman's init, cleanup, attach). */
static const struct {
  const char *name;
  docker_event_class_t cls;
} container_actions[] = {
    {"die", DOCKER_EV_GONE},
    {"destroy", DOCKER_EV_GONE},
    {"remove", DOCKER_EV_GONE}, /* podman's destroy */
    {"start", DOCKER_EV_INSPECT},
    {"restart", DOCKER_EV_INSPECT},
    {"unpause", DOCKER_EV_INSPECT},
    {"pause", DOCKER_EV_INSPECT},
    {"rename", DOCKER_EV_INSPECT},
    {"update", DOCKER_EV_INSPECT},
    {"health_status", DOCKER_EV_INSPECT},
};

/* Network actions: the container named in the attributes is inspected. */
static const char *const network_actions[] = {"connect", "disconnect"};

static docker_event_class_t container_action(const char *a) {
  for (size_t i = 0; i < ARRAY_SIZE(container_actions); i++) {
    const char *name = container_actions[i].name;
    docker_event_class_t cls = container_actions[i].cls;
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) continue;
    if (a[n] == '\0' || (a[n] == ':' && cls == DOCKER_EV_INSPECT)) return cls;
  }
  return DOCKER_EV_IGNORE;
}

docker_event_class_t docker_event_classify(const docker_event_t *ev,
                                           const char **id) {
  /* an event docker_parse_event() accepted: these are set (id maybe "") */
  REGISTER_ASSERT(ev->type && ev->action && ev->id);
  *id = NULL;
  if (strcmp(ev->type, "container") == 0) {
    if (!*ev->id) return DOCKER_EV_IGNORE;
    docker_event_class_t cls = container_action(ev->action);
    if (cls != DOCKER_EV_IGNORE) *id = ev->id;
    return cls;
  }
  if (strcmp(ev->type, "network") != 0) return DOCKER_EV_OTHER_TYPE;
  for (size_t i = 0; i < ARRAY_SIZE(network_actions); i++) {
    if (strcmp(ev->action, network_actions[i]) == 0) {
      *id = json_get_str(ev->attributes, "container");
      return *id ? DOCKER_EV_NETWORK : DOCKER_EV_IGNORE;
    }
  }
  return DOCKER_EV_IGNORE;
}

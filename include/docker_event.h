/* docker_event: one line of Docker's event stream, parsed, and what it
 * means for the containers register follows.  Pure functions: no loop, no
 * I/O, no state; docker.c acts on the answer. */
#ifndef REGISTER_DOCKER_EVENT_H
#define REGISTER_DOCKER_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

/* Every pointer points into the parsed document (or at a literal): valid
 * while the document is. */
typedef struct {
  const char *type;   /* "container", "network", ... */
  const char *action; /* "start", "die", "health_status: healthy", ... */
  const char *id;     /* Actor.ID (legacy: id) */
  const json_value_t *attributes; /* Actor.Attributes, may be NULL */
  const char *image; /* Attributes.image (legacy: from), may be NULL */
  /* "healthy", ... for health_status events: podman's HealthStatus, or
   * what follows "health_status: " in Docker's action; else NULL */
  const char *health_status;
  int64_t time;      /* seconds */
  int64_t time_nano; /* 0 if the daemon did not send it */
  const json_value_t *raw;
} docker_event_t;

/* Parses one event line into ev (pointers into the document of root).
 * legacy: the daemon's API predates Type/Action/Actor (< 1.22).  Returns 0,
 * or -1 with a reason in err. */
int docker_parse_event(const json_value_t *root, int legacy, docker_event_t *ev,
                       char *err, size_t errlen);

/* What an event asks of docker.c. */
typedef enum {
  DOCKER_EV_IGNORE,    /* nothing */
  DOCKER_EV_GONE,      /* the container stopped or went: forget it */
  DOCKER_EV_INSPECT,   /* a running container may have changed: inspect it
                        * (a container not known yet included) */
  DOCKER_EV_NETWORK,   /* a container joined or left a network: inspect it
                        * if it is known (its id: Attributes.container) */
  DOCKER_EV_OTHER_TYPE /* neither a container nor a network event */
} docker_event_class_t;

/* Classifies a parsed event.  *id is set to the container it concerns
 * (NULL when none): Actor.ID, or for network events Attributes.container.
 * Container events without an id are ignored. */
docker_event_class_t docker_event_classify(const docker_event_t *ev,
                                           const char **id);

#endif

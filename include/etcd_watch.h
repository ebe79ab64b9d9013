/* etcd_watch: the changes under a prefix of etcd after a revision: v2's
 * long poll (?wait=true&recursive=true&waitIndex=), v3's watch stream
 * through the JSON gateway (/v3/watch).  A layer above etcd.c: it uses the
 * client's endpoint, TLS and credentials, and leaves failover to the
 * owner (a failed watch is followed by a listing, which fails over, and a
 * new watch on the endpoint that answered it); a watch's probe only
 * moves the client's current endpoint off a member that does not answer.
 *
 * Knows nothing of what the keys mean. */
#ifndef REGISTER_ETCD_WATCH_H
#define REGISTER_ETCD_WATCH_H

#include <stdint.h>

#include "etcd.h"

typedef struct etcd_watch etcd_watch_t;

typedef enum {
  ETCD_WATCH_CHANGED,   /* a key under the prefix changed at rev */
  ETCD_WATCH_COMPACTED, /* etcd no longer has the history from `from`: list
                           again (v2: "event index cleared") */
  ETCD_WATCH_FAILED     /* the watch broke or etcd refused it (error) */
} etcd_watch_kind_t;

/* CHANGED any number of times (rev rising; one call may stand for several
 * changes at that revision and below), then at most one COMPACTED or
 * FAILED, after which the watch is over and freed: the pointer is dead
 * once that callback returns.  error: one line, FAILED only. */
typedef void (*etcd_watch_cb)(void *data, etcd_watch_kind_t kind, int64_t rev,
                              const char *error);

/* Every key under prefix + "/" (what etcd_list(prefix) lists), from
 * revision `from` (v2: index) on: from is a listing's revision + 1.  A
 * quiet watch is renewed every ETCD_WATCH_RENEW_MS, from the last
 * revision seen (v2: from the index etcd had when the quiet wait began,
 * which it says at once) (a member that went silent is left); a quiet v3
 * watch on a prefix etcd compacts past meanwhile ends COMPACTED at its
 * renewal.  Callbacks run from
 * the loop, never inside this call; never NULL (a request that cannot
 * start ends the watch from the loop, with its error).  The owner cancels
 * its watches before
 * etcd_free(). */
#define ETCD_WATCH_RENEW_MS 60000
etcd_watch_t *etcd_watch(etcd_t *e, const char *prefix, int64_t from,
                         etcd_watch_cb cb, void *data);
/* The same for one key: its changes, deletion included. */
etcd_watch_t *etcd_watch_key(etcd_t *e, const char *key, int64_t from,
                             etcd_watch_cb cb, void *data);
/* Probes the watch's own endpoint (GET /version) whenever the watch has
 * heard nothing from it for ms: a member that does not answer within ten
 * times the recent latency (2 s at least, the client's timeout at most)
 * ends the watch with FAILED, and later requests start on the next
 * endpoint, so that a hung member is left within seconds, not at the
 * renewal.  Off unless asked for. */
void etcd_watch_probe_every(etcd_watch_t *w, uint64_t ms);
/* Milliseconds since the watch's endpoint last showed it answers (the
 * watch started, a message, a probe's answer); 0 for NULL. */
uint64_t etcd_watch_quiet_ms(const etcd_watch_t *w);
/* Stops a watch that is not over; no callback runs afterwards. */
void etcd_watch_cancel(etcd_watch_t *w);

#endif

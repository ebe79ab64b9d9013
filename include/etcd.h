/* etcd: one client interface over the v2 keys API and the v3 JSON
 * gateway: put (with TTL), refresh, delete, delete an empty directory, list
 * a prefix.  Requests go to the current endpoint; a transport failure or a
 * 5xx moves on to the next endpoint before the caller hears of it.
 *
 * Knows nothing of Docker or Lua. */
#ifndef REGISTER_ETCD_H
#define REGISTER_ETCD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "http.h"

typedef struct etcd etcd_t;
typedef struct etcd_op etcd_op_t;

typedef enum {
  ETCD_OK = 0,
  ETCD_NOT_FOUND,   /* key (or lease) does not exist */
  ETCD_NOT_EMPTY,   /* v2: directory not empty */
  ETCD_UNAVAILABLE, /* no endpoint answered usefully: retry later */
  ETCD_FAILED,      /* etcd refused (permission, not a file, ...) */
  ETCD_CONFLICT     /* etcd_put_if(): the key did not hold what was expected */
} etcd_status_t;
#define ETCD_STATUSES 6

typedef struct {
  etcd_status_t status;
  const char *error; /* one line, when status is not OK */
  /* a listing's: where in etcd's history it was read (v3: the revision,
   * every page read at the first page's; v2: X-Etcd-Index); 0 otherwise */
  int64_t revision;
  /* ETCD_UNAVAILABLE: every attempt failed to connect (nothing listening
   * at any endpoint, or no route to it; not a name that did not resolve):
   * etcd itself is down, and a probe costs it nothing */
  int refused;
} etcd_result_t;

typedef struct {
  const char *key;
  const char *value;
  size_t value_len;
  long ttl;             /* seconds left, or 0 when the key never expires */
  int64_t mod_revision; /* of its last change: v3 mod_revision, v2
                           modifiedIndex (etcd_put_if) */
} etcd_kv_t;

typedef void (*etcd_done_cb)(void *data, const etcd_result_t *res);
/* kvs and dirs are valid during the call only.  dirs: v2 directories
 * under the prefix that hold nothing. */
typedef void (*etcd_list_cb)(void *data, const etcd_result_t *res,
                             const etcd_kv_t *kvs, size_t n,
                             const char *const *dirs, size_t ndirs);

typedef struct {
  char *const *endpoints;
  size_t n_endpoints;
  etcd_api_t api;
  const http_tls_t *tls;
  const char *user; /* NULL for none */
  const char *password;
  long timeout_ms; /* per attempt; 0 = 5000 */
  long ttl;        /* v3: keys hang on one lease of this TTL; 0: none */
  /* Learn the cluster's members from etcd (v2 /v2/members, v3
   * /v3/cluster/member/list) and use their client URLs beside the
   * endpoints above, which are always kept; members that leave are
   * dropped.  Asked after the first answer, every 30 s, and soon after an
   * endpoint failed (from any that answers).  0: the endpoints above only
   * (etcd behind a proxy whose member list names unreachable addresses). */
  int discover;
  /* v3: the lease vanished (expired, revoked, etcd lost it): every key
   * has to be written again; a new lease comes with the next put */
  void (*lease_lost)(void *ud);
  /* Optional: etcd went back in time (a restored snapshot, a
   * cluster rebuilt from a backup, a member that lost its data): keys
   * acknowledged earlier may be missing, and keys deleted since may be back,
   * with nothing that looks like an outage (a restored lease is kept alive
   * as before).  why: what was seen, one line ("revision 40 after 57 (a
   * restored snapshot?)"), valid during the call.  Called from the loop (a
   * zero timer), never inside an etcd_*() call, once per detection;
   * detections before it ran are folded into one call.  The owner should
   * compare the prefix with what it wants (list it, repair).
   *
   * The rule.  Every answer etcd sends names its cluster and where it is in
   * its history: v3 the response header (cluster_id, member_id, revision,
   * raft_term; keep-alives too), v2 the headers X-Etcd-Cluster-Id and
   * X-Etcd-Index (the v2 store's index).  etcd keeps high-water marks of
   * them, and a rewind is:
   *  - the cluster id changed (both APIs);
   *  - one member (v3: member_id; v2: the endpoint, as v2 names no member)
   *    answers with a revision (v2: index) or a raft term (v3) below the
   *    highest it answered before: a member's applied revision and its term
   *    never go down, whatever the others do;
   *  - an answer that is linearizable (v3: put, delete, txn and range, all
   *    quorum reads here; v2: successful writes, which go through raft)
   *    carries a revision (v2: index) below the highest any member showed
   *    before it was sent: linearizability orders it after every revision
   *    committed by then.
   * Not a rewind: a member that lags the one that answered before (a
   * follower's keep-alive or v2 read after failover carries its own, older
   * revision): different members are compared only through linearizable
   * answers; answers that cross in flight (a mark raised after a request
   * was sent is not held against its answer); an answer from the old
   * cluster still in flight when the id changed.  Not detected: a rewind
   * that the cluster has already written past (other writers pushed the
   * restored revision above the mark) before it answers us, with the same
   * cluster id and a term that did not go down; v2 behind a load balancer
   * that spreads one endpoint over several members can see a lagging
   * member as a rewind on reads (a needless resync, nothing worse).
   * After a rewind the marks start again from the answer that showed it.
   * A member this client has no mark of yet (one it fails over to) has no
   * revision of its own to compare with: see new_member. */
  void (*rewound)(void *ud, const char *why);
  /* Optional, v3: an answer that is not linearizable (a keep-alive) came
   * from a member this client has no history of (it failed over to it),
   * while others have answered before.  A rewind of that member would not
   * show in it (the rule above): a daemon whose only traffic is
   * keep-alives could go on for good under a restored snapshot.  The
   * owner should read what it relies on again (a listing, linearizable),
   * which shows a rewind if there was one and repairs what differs
   * either way.  url: the member's, valid during the call.  From the loop,
   * as rewound; not in the same pass as a rewind (whose listing does the
   * same); about once per member first heard from. */
  void (*new_member)(void *ud, const char *url);
  /* Optional, v3: the write fence, a key of this writer's own (the daemon:
   * /register/fence/<HOST_IP>).  A write given up on is not always lost:
   * a member cut off by a partition can hold it (a proposal in the
   * kernel's send queue to its leader, a proxy in front of it) and apply
   * it when the cut heals, after later writes of the same key: a key
   * deleted since comes back, stale.  So every put, delete and
   * transaction is sent as a transaction that compares the fence key's
   * mod_revision with the one this client's last move of it left, and
   * the fence is moved (written again) before the next write after any
   * write whose fate is unknown (an attempt that timed out or failed
   * after it was sent): a late copy finds the fence moved and changes
   * nothing.  A write that finds it moved is sent again (after a move).
   * The key hangs on the lease, when there is one.  A fence etcd refuses
   * (no permission, no space) is tried again after 30 s; writes go
   * unfenced meanwhile, and the first refusal is a warning.  NULL: no
   * fence (v2 cannot carry one: its compares name one key). */
  const char *fence_key;
  void *ud;
} etcd_opts_t;

/* The options the flags give: endpoints, API, TLS (its files in *tls,
 * which must outlive etcd_new()), credentials, discovery; the caller adds
 * its TTL and callbacks.  For the daemon and `register watch` alike. */
void etcd_opts_from_config(const config_t *cfg, http_tls_t *tls,
                           etcd_opts_t *o);
etcd_t *etcd_new(uv_loop_t *loop, http_t *http, const etcd_opts_t *o);
/* Every operation below returns its op, never NULL, and its callback runs
 * exactly once, from the loop, never inside the call that started it
 * (even when the request cannot start: that is a failure like any other),
 * unless etcd_cancel() or etcd_free() comes first.  etcd.c asserts it. */
/* Cancels every request without callbacks; frees e. */
void etcd_free(etcd_t *e);
/* A new password for the user (a rotated --etcd-password-file): v2 sends
 * it from the next request, v3 logs in with it when the token is refused
 * (or next needed).  No user: nothing. */
void etcd_set_password(etcd_t *e, const char *password);
/* New TLS material (rotated files, read by creds.c; copied): every request
 * from now on uses it, so new connections are made with it; requests in
 * flight finish on the connection they have. */
void etcd_set_tls(etcd_t *e, const http_tls_t *tls);

etcd_op_t *etcd_put(etcd_t *e, const char *key, const char *value, size_t vlen,
                    long ttl, etcd_done_cb cb, void *data);
/* Compare-and-swap: writes value at key only if the key's last change is
 * still the one at prev_rev (an etcd_kv_t's mod_revision; 0: only if the
 * key does not exist); ETCD_CONFLICT otherwise.  Never with a TTL or the
 * lease: a document, not a registration.  v2: prevIndex /
 * prevExist=false; v3: a transaction comparing the mod_revision (or
 * create_revision 0).  Not the value: a request carrying the old document
 * and the new one passed etcd's request size (1.5 MiB) with two documents
 * of 768 KiB. */
etcd_op_t *etcd_put_if(etcd_t *e, const char *key, const char *value,
                       size_t vlen, int64_t prev_rev, etcd_done_cb cb,
                       void *data);
/* v2: extend the TTL of an existing key without waking watchers
 * (refresh=true, prevExist=true); ETCD_NOT_FOUND when it is gone. */
etcd_op_t *etcd_refresh(etcd_t *e, const char *key, long ttl, etcd_done_cb cb,
                        void *data);
etcd_op_t *etcd_delete(etcd_t *e, const char *key, etcd_done_cb cb, void *data);
/* Deletes everything under prefix + "/" in one request (v2: the
 * directory, recursively; v3: a range). */
etcd_op_t *etcd_delete_prefix(etcd_t *e, const char *prefix, etcd_done_cb cb,
                              void *data);
/* v2 only: deletes an empty directory (ETCD_NOT_EMPTY otherwise). */
etcd_op_t *etcd_delete_dir(etcd_t *e, const char *key, etcd_done_cb cb,
                           void *data);
etcd_op_t *etcd_list(etcd_t *e, const char *prefix, etcd_list_cb cb,
                     void *data);
/* One key: the callback gets one kv, or none when the key is missing. */
etcd_op_t *etcd_get(etcd_t *e, const char *key, etcd_list_cb cb, void *data);
/* v3 only: several puts and deletes in one transaction (one request, one
 * raft entry), all or nothing.  At most ETCD_TXN_MAX items. */
#define ETCD_TXN_MAX 128
typedef struct {
  int is_delete;
  const char *key;
  const char *value;
  size_t vlen;
} etcd_txn_item_t;
etcd_op_t *etcd_txn(etcd_t *e, const etcd_txn_item_t *items, size_t n,
                    etcd_done_cb cb, void *data);
/* v3 can batch writes into transactions; v2 cannot. */
int etcd_has_txn(const etcd_t *e);
/* Stops an operation; its callback does not run. */
void etcd_cancel(etcd_op_t *op);

/* GET /health on the endpoints (failover as usual): OK when one is healthy. */
etcd_op_t *etcd_probe(etcd_t *e, etcd_done_cb cb, void *data);

/* ---- statistics, for /metrics and /healthz ---- */
#define ETCD_BUCKETS 12
extern const double etcd_buckets[ETCD_BUCKETS]; /* seconds, upper bounds */
typedef struct {
  const char *op;                    /* "put", "delete", "list", ... */
  uint64_t by_status[ETCD_STATUSES]; /* indexed by etcd_status_t */
  uint64_t buckets[ETCD_BUCKETS];    /* cumulative counts per upper bound */
  uint64_t count;
  double sum; /* seconds */
} etcd_opstat_t;
const char *etcd_status_name(etcd_status_t st);
/* Fills out[] (at most max); returns how many kinds there are. */
size_t etcd_stats(const etcd_t *e, etcd_opstat_t *out, size_t max);
/* v3: while the lease's keep-alives fail, milliseconds since the last
 * renewal that got through (its keys are at risk, and gone past the TTL);
 * 0 when they work, or with no lease. */
uint64_t etcd_lease_unrenewed_ms(const etcd_t *e);
/* Milliseconds since etcd last answered (any answer), or -1 if never;
 * the last transport or server error, or "". */
int64_t etcd_since_answer_ms(const etcd_t *e);
const char *etcd_last_error(const etcd_t *e);
/* The error of the last attempt that failed over to another endpoint (the
 * operation may have succeeded there), or "": what a caller that gave up
 * waiting can name. */
const char *etcd_failover_error(const etcd_t *e);
/* How many times etcd was seen going back in time (rewound above). */
uint64_t etcd_rewinds(const etcd_t *e);
/* Deletes the fence key (the host deregistered: nothing of it is left);
 * NULL, with no callback, when this client never wrote one.  Writes after
 * it would write it again. */
etcd_op_t *etcd_fence_remove(etcd_t *e, etcd_done_cb cb, void *data);
/* The write fence: moves etcd acknowledged, and fenced writes given up on
 * in doubt (each asks for a move). */
uint64_t etcd_fence_moves(const etcd_t *e);
uint64_t etcd_fence_doubts(const etcd_t *e);
/* The endpoints known now: the configured ones and those discovered. */
size_t etcd_endpoints(const etcd_t *e);

/* v2 has directories to clean up after the last key in them goes. */
int etcd_has_dirs(const etcd_t *e);
/* v2 refreshes TTLs key by key; v3 keeps one lease alive instead. */
int etcd_has_key_refresh(const etcd_t *e);

#endif

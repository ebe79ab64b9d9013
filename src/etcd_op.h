/* etcd_op: the structures of the etcd client, below both its request
 * machinery (etcd.c) and its wire formats (etcd_v2.c, etcd_v3.c), and the
 * listing a reply fills (etcd_listing.c); not a public API.  The layers:
 * etcd.c calls the wire formats; they read an op's fields, write its wire
 * request and fill its listing, and call nothing of etcd.c. */
#ifndef REGISTER_ETCD_OP_H
#define REGISTER_ETCD_OP_H

#include <stdint.h>
#include <stdlib.h>

#include "etcd.h"
#include "list.h"
#include "util.h"

typedef enum {
  OP_PUT,
  OP_REFRESH,
  OP_DELETE,
  OP_DELETE_DIR,
  OP_DELETE_PREFIX,
  OP_LIST,
  OP_GET,
  OP_TXN,
  OP_PUT_IF, /* compare-and-swap (etcd_put_if) */
  /* internal (v3) */
  OP_AUTH,
  OP_GRANT,
  OP_KEEPALIVE,
  OP_LEASE_TTL,
  OP_HEALTH,
  OP_MEMBERS, /* the cluster's members (discovery) */
  OP_FENCE,   /* moves the write fence (etcd_opts_t.fence_key) */
  OP_KINDS
} op_kind_t;

/* What a reply means for the request machinery. */
typedef enum {
  REPLY_DONE,          /* res holds the final result */
  REPLY_NEXT_ENDPOINT, /* transient: try the next endpoint */
  REPLY_MORE,          /* a listing has another page: send again */
  REPLY_REAUTH,        /* the auth token is invalid or expired */
  REPLY_LEASE_LOST,    /* the lease a put named does not exist */
  REPLY_FENCED         /* a fenced write found the fence moved: not applied */
} reply_t;

enum { WAIT_TOKEN = 1, WAIT_LEASE = 2, WAIT_FENCE = 3, WAITS = 4 };

/* Where an answer places etcd in its history (rewind detection, see
 * etcd_opts_t.rewound); 0 where the answer does not say. */
typedef struct {
  uint64_t cluster_id;
  uint64_t member_id; /* v3 */
  int64_t revision;   /* v3: header.revision; v2: X-Etcd-Index */
  uint64_t raft_term; /* v3 */
} etcd_hdr_t;

/* High-water marks of one source of answers (a v3 member, a v2 endpoint)
 * or, for linearizable answers, of all of them.  *_seq: the answer count
 * (etcd_t.seen) when the mark was raised: a mark is held only against
 * answers to requests sent after it. */
#define ETCD_MARKS 8
typedef struct {
  uint64_t source; /* v3 member_id, v2 endpoint + 1; 0 = free slot */
  int64_t rev;
  uint64_t term;
  uint64_t rev_seq, term_seq, used_seq;
} etcd_mark_t;

/* One endpoint: a base URL (scheme://host:port).  An op or a watch that
 * uses one holds it (etcd_ep_hold), so the list may change under requests
 * in flight: one dropped from the list (listed = 0) is freed when the last
 * holder lets go (etcd_ep_drop), and the list itself frees the ones it
 * drops that nobody holds.  Never indexed by position outside e->eps. */
typedef struct {
  char *url;     /* owned */
  uint64_t id;   /* stable and never reused (v2 rewind marks: the source) */
  int seed;      /* configured by the operator: never dropped */
  int listed;    /* in e->eps */
  unsigned refs; /* ops and watches holding it */
} etcd_ep_t;

/* Endpoints learnt from the member list, beyond the configured ones. */
#define ETCD_MAX_DISCOVERED 16

static inline etcd_ep_t *etcd_ep_hold(etcd_ep_t *ep) {
  REGISTER_ASSERT(ep && ep->listed); /* only a listed one is handed out */
  ep->refs++;
  return ep;
}

static inline void etcd_ep_drop(etcd_ep_t *ep) {
  if (!ep) return;
  REGISTER_ASSERT(ep->refs > 0);
  if (--ep->refs == 0 && !ep->listed) {
    free(ep->url);
    free(ep);
  }
}

/* A listing being assembled page by page (owned strings). */
typedef struct {
  etcd_kv_t *kvs;
  int64_t *leases;
  size_t n, cap;
  char **dirs;
  size_t ndirs, dcap;
  size_t nul_keys; /* left out: the first is logged, the rest counted */
} listing_t;

struct etcd_op {
  etcd_t *e;
  op_kind_t kind;
  char *key;   /* owned */
  char *value; /* owned (puts) */
  size_t vlen;
  int64_t prev_rev;       /* OP_PUT_IF: the mod_revision expected, 0: no key */
  etcd_txn_item_t *items; /* OP_TXN: owned copies */
  size_t nitems;
  long ttl;
  /* the wire request, built by the backend for each attempt */
  const char *method;
  char *path; /* appended to the endpoint URL */
  buf_t body;
  const char *content_type;
  /* state */
  etcd_ep_t *ep; /* endpoint of the current attempt (held) */
  size_t attempts;
  size_t refusals;    /* of those attempts, the ones that could not connect */
  int reauthed;       /* sent again once after a new token */
  int lease_retried;  /* sent again once after a new lease */
  int64_t lease_sent; /* the lease this attempt's writes hang on (0: none) */
  /* v3 with a fence key: the fence's mod_revision this attempt's write
   * compares with (0: sent unfenced), and how often it found it moved */
  int64_t fence_rev;
  unsigned fence_retries;
  int unfenced; /* a write that carries no fence (the fence's own delete) */
  int waiting;  /* 0, or WAIT_TOKEN, _LEASE, _FENCE: queued till then */
  list_t wnode; /* on e->wait[waiting] while waiting */
  http_req_t *req;
  listing_t listing; /* OP_LIST / OP_GET */
  buf_t cont;        /* v3: where the next page starts */
  int64_t list_rev;  /* the revision (v2: index) the first page was read at */
  etcd_op_t *parent; /* OP_LEASE_TTL run for a listing */
  /* results of internal ops */
  int64_t moved_to; /* OP_FENCE: the revision of the fence's put */
  int64_t lease_id;
  long lease_ttl, granted_ttl;
  char *token;
  char **urls; /* OP_MEMBERS: the members' client URLs (owned) */
  size_t nurls;
  etcd_done_cb done;
  etcd_list_cb list;
  void *data;
  uint64_t started;   /* uv_hrtime() at creation, for the histogram */
  uint64_t sent;      /* uv_hrtime() when the current attempt was sent */
  uint64_t first;     /* uv_hrtime() when the first attempt was sent */
  uint64_t sent_seen; /* e->seen when the current attempt was sent */
  list_t node;        /* on e->ops from op_new() to op_free() */
  /* a failure waiting to be delivered from the loop (etcd_op_fail) */
  etcd_status_t fail_status;
  char *fail_error; /* owned */
  int fail_refused; /* etcd_result_t.refused */
  list_t fnode;     /* on e->failing */
  int launching;    /* inside the call that started it */
};

struct etcd {
  uv_loop_t *loop;
  http_t *http;
  /* the endpoints, the configured ones (seeds) first, then those learnt
   * from the member list; never empty.  Changed only by
   * endpoints_merge() (etcd.c), between requests' callbacks. */
  etcd_ep_t **eps;
  size_t n, cap;      /* cap: the seeds + ETCD_MAX_DISCOVERED */
  etcd_ep_t *current; /* the endpoint that answered last; always listed */
  uint64_t ep_ids;    /* the last etcd_ep_t.id given */
  /* discovery: the member list, after the first answer, every
   * DISCOVER_EVERY_MS, and soon after every endpoint failed */
  int discover;         /* on (etcd_opts_t.discover) */
  int discover_pending; /* an OP_MEMBERS in flight */
  int answered;         /* etcd answered once */
  uint64_t discover_ms; /* uv_now() of the last OP_MEMBERS sent */
  uv_timer_t discover_timer;
  etcd_api_t api;
  http_tls_t tls; /* owned (http_tls_copy()) */
  int use_tls;
  char *user, *password; /* never logged */
  char *userpwd;         /* "user:password" for v2 basic auth */
  long timeout_ms;
  double lat_avg_ms; /* recent answered requests' latency (lat_note) */
  uint64_t lat_at;   /* uv_hrtime() of the last answer timed */
  uint64_t keepalive_every_ms;
  long ttl;    /* v3: the lease's TTL; 0 = no lease */
  list_t ops;  /* every outstanding operation (etcd_op_t.node), newest first */
  int watches; /* etcd_watch.c's, alive (none may be at etcd_free) */
  /* v3 */
  list_t wait[WAITS]; /* ops waiting for a token [1], a lease [2] or the
                         fence [3], newest first */
  char *token;
  int auth_pending;
  int64_t lease;
  int grant_pending, keepalive_pending, adopt_tried;
  /* asking whether the previous run's lease lives (try_adopt): puts that
   * need a lease wait for the answer instead of granting one (a grant
   * meanwhile would replace the lease the listing's keys hang on) */
  int adopt_pending;
  uv_timer_t keepalive_timer;
  /* the write fence (etcd_opts_t.fence_key): fence_rev is the fence key's
   * mod_revision as our last move left it, 0 when it has to be moved
   * before the next fenced write (none yet, a write in doubt, the fence
   * found moved, the lease it hung on lost) */
  char *fence_key; /* owned, or NULL: no fence */
  int64_t fence_rev;
  int fence_pending;         /* an OP_FENCE in flight */
  uint64_t fence_started_ms; /* uv_now() when it was started */
  uint64_t
      fence_check_ms;   /* uv_now(): a fence moved by another made us check */
  unsigned fence_again; /* started again at once, in a row */
  uint64_t fence_off_until_ms; /* uv_now(): the fence was refused: unfenced */
  int fence_refused_said;      /* the refusal was logged (until one works) */
  uint64_t fence_moves;        /* moves that etcd acknowledged */
  uint64_t fence_doubts;       /* fenced writes given up on, maybe applied */
  list_t failing;              /* etcd_op_t.fnode: failures to deliver */
  uv_timer_t fail_timer;       /* delivers them (and rewound), from the loop */
  int handles_open; /* the three timers; e is freed when all closed */
  /* keep-alive trouble, said once per episode */
  unsigned ka_failures;  /* failed keep-alives since the last good one */
  uint64_t ka_ok_ms;     /* uv_now() of the last renewal (or the grant) */
  int ka_expired_warned; /* "has probably expired" said this episode */
  /* going back in time (etcd_opts_t.rewound) */
  uint64_t seen; /* answers that carried a header */
  uint64_t cluster_id, cluster_seq;
  etcd_mark_t all; /* linearizable answers, whichever member */
  etcd_mark_t marks[ETCD_MARKS];
  int rewind_pending; /* the callback is due from fail_timer */
  char rewind_why[200];
  int check_pending; /* new_member is due from fail_timer, for check_url */
  int all_failed; /* an op failed on every endpoint; nothing answered since */
  char check_url[200];
  uint64_t rewinds;
  void (*lease_lost)(void *ud);
  void (*rewound)(void *ud, const char *why);
  void (*new_member)(void *ud, const char *url);
  void *ud;
  /* statistics */
  uint64_t last_ok_ms; /* uv_now() of the last answer from etcd */
  char last_error[300];
  char failover_error[300]; /* etcd_failover_error() */
  uint64_t counts[OP_KINDS][ETCD_STATUSES];
  uint64_t hist[OP_KINDS][ETCD_BUCKETS];
  uint64_t hist_n[OP_KINDS];
  double hist_sum[OP_KINDS];
};

/* etcd_listing.c: a listing being filled (owned copies). */
void listing_add(listing_t *l, const char *key, size_t klen, const char *value,
                 size_t vlen, long ttl, int64_t lease, int64_t mod_revision);
void listing_add_dir(listing_t *l, const char *key);
void listing_free(listing_t *l);
/* A member list (v2 /v2/members, v3 /v3/cluster/member/list: the same
 * shape but for the id's name): every member's clientURLs into op->urls. */
struct json_value;
void members_read(etcd_op_t *op, const struct json_value *root);

/* v2 wire format */
void etcd_v2_build(etcd_op_t *op);
reply_t etcd_v2_reply(etcd_op_t *op, const http_resp_t *r, etcd_result_t *res,
                      etcd_hdr_t *hdr, char *err, size_t errlen);

/* v3 wire format (the JSON gateway) */
void etcd_v3_build(etcd_op_t *op);
reply_t etcd_v3_reply(etcd_op_t *op, const http_resp_t *r, etcd_result_t *res,
                      etcd_hdr_t *hdr, char *err, size_t errlen);

#endif

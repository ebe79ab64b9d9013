/* etcd: requests, endpoint failover, cancellation, and for v3 the gates an
 * operation may wait at (an auth token, the lease) and the lease's
 * keep-alive.  The wire formats live in etcd_v2.c and etcd_v3.c. */
#include "etcd_op.h"
#include "log.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Failover.  A member that lost its leader, or one cut off by a partition,
 * does not answer at all: etcd drops proposals made while it has no leader
 * and a partition drops packets.  So an operation has a budget of the
 * request timeout (5 s; listings six times it) from its first attempt,
 * spent in short attempts on one endpoint after the other.  Each attempt
 * may take FAILOVER_CONNECT_MS to connect (a member that does not accept a
 * TCP connection by then is treated as down) and FAILOVER_MIN_MS to answer
 * (FAILOVER_FIRST_MS until an answer has been timed), or
 * FAILOVER_LAT_FACTOR times the recent latency of answers (lat_note) when
 * that is longer (a loaded cluster is slow everywhere: switching would only
 * add load: when 500 hosts start at once, answers take seconds, and
 * abandoning them after one second made every host send each write many
 * times, which the cluster never caught up with).  The short answer
 * time bounds how long after a new leader is elected the writes resume: a
 * proposal a member dropped while it had none is never answered, only sent
 * again.  A failed attempt goes to the next endpoint at once, up to
 * FAILOVER_ROUNDS times round all of them while the budget lasts; the attempt
 * that cannot be followed by another gets what is left of the budget. */
#define FAILOVER_CONNECT_MS 1000L
#define FAILOVER_MIN_MS 400.0
#define FAILOVER_FIRST_MS 1000.0
#define FAILOVER_LAT_FACTOR 10.0
#define FAILOVER_ROUNDS 4
#define FULL_CONNECT_MS 2000L

/* How often one write may find the fence moved before it fails (each time
 * after a move of our own: only another writer of the key, or a lease
 * lost over and over, gets that far); how long writes go unfenced after
 * etcd refused a move. */
#define FENCE_RETRIES 5
/* a fence moved by someone else makes every key be read again, at most
 * this often */
#define FENCE_CHECK_MS 10000
#define FENCE_OFF_MS 30000

static void send_op(etcd_op_t *op);
static void submit(etcd_op_t *op);
static int fenced(const etcd_op_t *op);
static int fence_off(const etcd_t *e);
static void start_fence(etcd_t *e);
static int long_op(const etcd_op_t *op);
static void discover_soon(etcd_t *e);
static etcd_ep_t *ep_after(etcd_t *e, const etcd_ep_t *ep);
static void members_finished(etcd_t *e, etcd_op_t *op,
                             const etcd_result_t *res);

/* The latency the attempt timeout scales with is the recent one: a moving
 * average whose samples count less the older they are (half after
 * LAT_HALF_LIFE_S; a new sample takes at least a tenth), read decayed the
 * same way (lat_recent).  A plain average of the answers kept the start-up
 * storm of a large fleet (seconds per request while 500 hosts synced) for
 * minutes after it, when only lease keep-alives were timed: an etcd leader
 * lost then meant one attempt of the whole 5 s budget on a member that
 * would never answer, instead of 400 ms ones.  A cluster that is slow now
 * answers every write slowly, which keeps the average up. */
#define LAT_HALF_LIFE_S 2.0

static double lat_keep(const etcd_t *e, uint64_t now) {
  return exp2(-(double)(now - e->lat_at) / 1e9 / LAT_HALF_LIFE_S);
}

static void lat_note(etcd_t *e, double ms) {
  uint64_t now = uv_hrtime();
  if (e->lat_avg_ms <= 0) {
    e->lat_avg_ms = ms;
  } else {
    double keep = lat_keep(e, now);
    if (keep > 0.9) keep = 0.9;
    e->lat_avg_ms = e->lat_avg_ms * keep + ms * (1 - keep);
  }
  e->lat_at = now;
}

static double lat_recent(const etcd_t *e) {
  return e->lat_avg_ms > 0 ? e->lat_avg_ms * lat_keep(e, uv_hrtime()) : 0;
}
static void deliver_listing(etcd_op_t *op);
/* Forgets the v3 lease and tells the owner its keys must be written again. */
static void etcd_lease_lost(etcd_t *e);
static void keepalive_arm(etcd_t *e);
static void keepalive_episode_reset(etcd_t *e, long left);
static void keepalive_cb(uv_timer_t *t);

/* ---- operations ---- */

static etcd_op_t *op_new(etcd_t *e, op_kind_t kind, const char *key,
                         void *data) {
  etcd_op_t *op = xcalloc(1, sizeof *op);
  op->started = uv_hrtime();
  op->e = e;
  op->kind = kind;
  op->key = key ? xstrdup(key) : NULL;
  op->data = data;
  op->ep = etcd_ep_hold(e->current);
  buf_init(&op->body);
  buf_init(&op->cont);
  list_insert_head(&e->ops, &op->node);
  return op;
}

static void unwait(etcd_op_t *op) {
  if (!op->waiting) return;
  list_remove(&op->wnode);
  op->waiting = 0;
}

static void wait_for(etcd_op_t *op, int what) {
  REGISTER_ASSERT(!op->waiting && !op->req); /* parked once, not in flight */
  op->waiting = what;
  list_insert_head(&op->e->wait[what], &op->wnode);
}

static void op_free(etcd_op_t *op) {
  etcd_t *e = op->e;
  unwait(op);
  list_remove(&op->node);
  if (list_linked(&op->fnode)) list_remove(&op->fnode);
  free(op->fail_error);
  /* a lease check run for this listing answers to nobody now */
  list_t *n;
  list_foreach(n, &e->ops) {
    etcd_op_t *o = list_entry(n, etcd_op_t, node);
    if (o->parent == op) o->parent = NULL;
  }
  free(op->key);
  free(op->value);
  for (size_t i = 0; i < op->nitems; i++) {
    free((char *)(uintptr_t)op->items[i].key);
    free((char *)(uintptr_t)op->items[i].value);
  }
  free(op->items);
  free(op->path);
  free(op->token);
  for (size_t i = 0; i < op->nurls; i++)
    free(op->urls[i]);
  free(op->urls);
  etcd_ep_drop(op->ep);
  buf_free(&op->body);
  buf_free(&op->cont);
  listing_free(&op->listing);
  free(op);
}

static void auth_finished(etcd_t *e, etcd_op_t *op, const etcd_result_t *res);
static void grant_finished(etcd_t *e, etcd_op_t *op, const etcd_result_t *res);
static void start_grant(etcd_t *e);
static void release_waiting(etcd_t *e, int which, int do_fail, etcd_status_t st,
                            const char *err);
static void keepalive_finished(etcd_t *e, etcd_op_t *op,
                               const etcd_result_t *res);
static void fence_finished(etcd_t *e, etcd_op_t *op, const etcd_result_t *res);

const double etcd_buckets[ETCD_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};

static void record(etcd_t *e, const etcd_op_t *op, etcd_status_t st) {
  double secs = (double)(uv_hrtime() - op->started) / 1e9;
  e->counts[op->kind][st]++;
  e->hist_n[op->kind]++;
  e->hist_sum[op->kind] += secs;
  for (int i = 0; i < ETCD_BUCKETS; i++)
    if (secs <= etcd_buckets[i]) e->hist[op->kind][i]++;
}

/* The end of an operation: its callback (or internal handler), then free. */
static void complete(etcd_op_t *op, const etcd_result_t *res) {
  etcd_t *e = op->e;
  /* libuv's rule: never inside the call that started the operation */
  REGISTER_ASSERT(!op->launching);
  record(e, op, res->status);
  if (res->status == ETCD_UNAVAILABLE && res->error)
    snprintf(e->last_error, sizeof e->last_error, "%s", res->error);
  switch (op->kind) {
  case OP_AUTH:
    auth_finished(e, op, res);
    break;
  case OP_GRANT:
    grant_finished(e, op, res);
    break;
  case OP_KEEPALIVE:
    keepalive_finished(e, op, res);
    break;
  case OP_MEMBERS:
    members_finished(e, op, res);
    break;
  case OP_FENCE:
    fence_finished(e, op, res);
    break;
  case OP_LEASE_TTL:
    if (op->parent) { /* adopt the previous run's lease if it is alive */
      if (res->status == ETCD_OK && op->lease_ttl > 0 &&
          op->granted_ttl == e->ttl && !e->lease) {
        e->lease = op->lease_id;
        log_info("etcd: keeping lease %" PRIx64 " of the previous run (%lds "
                 "left)",
                 (uint64_t)e->lease, op->lease_ttl);
        keepalive_episode_reset(e, op->lease_ttl);
        keepalive_arm(e);
      }
      e->adopt_pending = 0;
      /* the puts that waited for the answer: with the adopted lease, or
       * a new one */
      if (e->lease)
        release_waiting(e, WAIT_LEASE, 0, ETCD_OK, NULL);
      else if (!list_empty(&e->wait[WAIT_LEASE]))
        start_grant(e);
      etcd_op_t *parent = op->parent;
      op->parent = NULL;
      deliver_listing(parent);
    }
    break;
  default:
    if (op->list)
      op->list(op->data, res, NULL, 0, NULL, 0);
    else if (op->done)
      op->done(op->data, res);
  }
  op_free(op);
}

/* Delivers the failures etcd_op_fail() queued, then a rewind that
 * observe() saw (the owner hears of it after the answer that showed it). */
static void etcd_fail_cb(uv_timer_t *t) {
  etcd_t *e = t->data;
  list_t *n;
  while ((n = list_pop(&e->failing))) {
    etcd_op_t *op = list_entry(n, etcd_op_t, fnode);
    etcd_result_t res = {op->fail_status, op->fail_error, 0, op->fail_refused};
    complete(op, &res); /* its callback may cancel or fail others */
  }
  int rewound = e->rewind_pending;
  if (rewound) {
    char why[sizeof e->rewind_why];
    memcpy(why, e->rewind_why, sizeof why);
    e->rewind_pending = 0; /* a rewind seen during the call is a new one */
    e->rewound(e->ud, why);
  }
  if (e->check_pending) {
    char url[sizeof e->check_url];
    memcpy(url, e->check_url, sizeof url);
    e->check_pending = 0;
    if (!rewound) e->new_member(e->ud, url); /* the rewind's listing checks */
  }
}

/* An operation fails: its callback runs from the loop, never from here,
 * whoever calls this (the call that started the operation, among
 * others). */
static void etcd_op_fail(etcd_op_t *op, etcd_status_t st, const char *err) {
  etcd_t *e = op->e;
  REGISTER_ASSERT(!op->req && !list_linked(&op->fnode));
  op->fail_status = st;
  op->fail_error = err ? xstrdup(err) : NULL;
  list_insert_tail(&e->failing, &op->fnode);
  uv_timer_start(&e->fail_timer, etcd_fail_cb, 0, 0);
}

/* Calls back with the listing: for v3, whether a key "has a TTL" means
 * "is attached to our lease" when we use one, any lease when we do not. */
static void deliver_listing(etcd_op_t *op) {
  etcd_t *e = op->e;
  listing_t *l = &op->listing;
  record(e, op, ETCD_OK);
  if (e->api == ETCD_API_V3) {
    for (size_t i = 0; i < l->n; i++) {
      int64_t lease = l->leases[i];
      l->kvs[i].ttl = lease && (e->ttl > 0 ? lease == e->lease : 1);
    }
  }
  if (l->nul_keys > 1)
    log_warn("etcd: %zu more keys with a NUL byte are left out of the "
             "listing",
             l->nul_keys - 1);
  etcd_result_t ok = {ETCD_OK, NULL, op->list_rev, 0};
  op->list(op->data, &ok, l->kvs, l->n, (const char *const *)l->dirs, l->ndirs);
  op_free(op);
}

/* v3 after a restart: if every listed key hangs on one lease, see whether
 * it is alive and ours to keep, so the keys need not be written again. */
static int try_adopt(etcd_op_t *op) {
  etcd_t *e = op->e;
  if (e->api != ETCD_API_V3 || e->ttl <= 0 || e->lease || e->adopt_tried ||
      e->grant_pending)
    return 0;
  e->adopt_tried = 1;
  int64_t only = 0;
  for (size_t i = 0; i < op->listing.n; i++) {
    int64_t l = op->listing.leases[i];
    if (!l || (only && l != only)) return 0;
    only = l;
  }
  if (!only) return 0;
  etcd_op_t *t = op_new(e, OP_LEASE_TTL, NULL, NULL);
  t->lease_id = only;
  t->parent = op;
  e->adopt_pending = 1;
  submit(t);
  return 1;
}

/* ---- going back in time (etcd_opts_t.rewound states the rule) ---- */

/* Answers that etcd orders after every revision committed before the
 * request was sent: v3 writes and (quorum) reads, v2 writes that
 * succeeded.  A v2 read is the member's own store, however far behind. */
static int linearizable(const etcd_t *e, const etcd_op_t *op,
                        etcd_status_t st) {
  switch (op->kind) {
  case OP_PUT:
  case OP_REFRESH:
  case OP_DELETE:
  case OP_DELETE_DIR:
  case OP_DELETE_PREFIX:
  case OP_TXN:
  case OP_PUT_IF:
  case OP_FENCE:
    return e->api == ETCD_API_V3 || st == ETCD_OK;
  case OP_LIST:
  case OP_GET:
    return e->api == ETCD_API_V3;
  default:
    return 0;
  }
}

/* The marks of one source; a new one takes a free slot or the one used
 * least recently. */
static etcd_mark_t *mark_for(etcd_t *e, uint64_t source) {
  etcd_mark_t *slot = &e->marks[0];
  for (size_t i = 0; i < ETCD_MARKS; i++) {
    etcd_mark_t *m = &e->marks[i];
    if (m->source == source) return m;
    if (slot->source && (!m->source || m->used_seq < slot->used_seq)) slot = m;
  }
  memset(slot, 0, sizeof *slot);
  slot->source = source;
  return slot;
}

static void raise_mark(etcd_mark_t *m, const etcd_hdr_t *h, uint64_t seq) {
  if (h->revision > m->rev) {
    m->rev = h->revision;
    m->rev_seq = seq;
  }
  if (h->raft_term > m->term) {
    m->term = h->raft_term;
    m->term_seq = seq;
  }
  m->used_seq = seq;
}

/* A mark that was known when op was sent, and that the answer is below. */
static int below_rev(const etcd_op_t *op, const etcd_mark_t *m, int64_t rev) {
  return rev && rev < m->rev && m->rev_seq <= op->sent_seen;
}

static void rewind_seen(etcd_t *e, const etcd_op_t *op, const char *what,
                        const char *hint) {
  e->rewinds++;
  log_warn("etcd went back in time: %s at %s (%s); %s", what, op->ep->url, hint,
           e->rewound ? "checking every key"
                      : "keys written before may be missing");
  memset(e->marks, 0, sizeof e->marks);
  memset(&e->all, 0, sizeof e->all);
  e->cluster_id = 0;
  if (!e->rewound) return;
  if (!e->rewind_pending)
    snprintf(e->rewind_why, sizeof e->rewind_why, "%s (%s)", what, hint);
  e->rewind_pending = 1;
  uv_timer_start(&e->fail_timer, etcd_fail_cb, 0, 0);
}

static void observe(etcd_t *e, const etcd_op_t *op, const etcd_hdr_t *h,
                    etcd_status_t st) {
  if (!h->cluster_id && !h->revision && !h->raft_term) return;
  uint64_t seq = ++e->seen;
  const char *idx = e->api == ETCD_API_V3 ? "revision" : "index";
  char what[120] = "";
  const char *hint = "a restored snapshot?";
  if (h->cluster_id && e->cluster_id && h->cluster_id != e->cluster_id) {
    if (e->cluster_seq > op->sent_seen) return; /* sent before the change */
    snprintf(what, sizeof what, "cluster id %" PRIx64 " after %" PRIx64,
             h->cluster_id, e->cluster_id);
    hint = "a new or rebuilt cluster?";
  }
  /* the source: a v3 member, or a v2 endpoint (v2 names no member; its
   * id stays the same whatever the list does around it) */
  uint64_t src = e->api == ETCD_API_V3 ? h->member_id : op->ep->id;
  etcd_mark_t *m = src ? mark_for(e, src) : NULL;
  int first = m && !m->rev && !m->term; /* no history of this member */
  if (!what[0] && m && below_rev(op, m, h->revision))
    snprintf(what, sizeof what, "%s %" PRId64 " after %" PRId64, idx,
             h->revision, m->rev);
  if (!what[0] && m && h->raft_term && h->raft_term < m->term &&
      m->term_seq <= op->sent_seen)
    snprintf(what, sizeof what, "raft term %" PRIu64 " after %" PRIu64,
             h->raft_term, m->term);
  if (!what[0] && linearizable(e, op, st) &&
      below_rev(op, &e->all, h->revision))
    snprintf(what, sizeof what, "%s %" PRId64 " after %" PRId64, idx,
             h->revision, e->all.rev);
  if (what[0]) { /* start again from this answer */
    rewind_seen(e, op, what, hint);
    m = src ? mark_for(e, src) : NULL;
  } else if (first && e->api == ETCD_API_V3 && e->all.rev &&
             !linearizable(e, op, st) && e->new_member) {
    /* nothing to hold this answer against: the owner reads again */
    log_info("etcd: %s answers for the first time (failover); reading the "
             "prefix again to check it is not behind",
             op->ep->url);
    snprintf(e->check_url, sizeof e->check_url, "%s", op->ep->url);
    e->check_pending = 1;
    uv_timer_start(&e->fail_timer, etcd_fail_cb, 0, 0);
  }
  if (h->cluster_id && h->cluster_id != e->cluster_id) {
    e->cluster_id = h->cluster_id;
    e->cluster_seq = seq;
  }
  if (m) raise_mark(m, h, seq);
  raise_mark(&e->all, h, seq);
}

/* etcd may have changed behind this host's back, unseen: the owner reads
 * its prefix again (new_member: a linearizable listing, which repairs what
 * differs).  A cluster restored from a backup has this cluster's id and
 * members and, once the other hosts have written, a revision past what
 * this one saw; the lease is in the backup and its keep-alives work: no
 * answer shows it.  What does is that this host lost touch for a while. */
static void recheck_prefix(etcd_t *e, const char *url, const char *why) {
  if (!e->new_member || e->check_pending) return;
  log_info("etcd: %s; reading the prefix again to check that nothing went "
           "back",
           why);
  snprintf(e->check_url, sizeof e->check_url, "%s", url);
  e->check_pending = 1;
  uv_timer_start(&e->fail_timer, etcd_fail_cb, 0, 0);
}

/* An answer after an op failed on every endpoint: the whole cluster, or
 * this host's way to it, was down. */
static void back_after_outage(etcd_t *e, const etcd_op_t *op) {
  if (!e->all_failed) return;
  e->all_failed = 0;
  if (!op->sent_seen) return; /* nothing seen before: a start before etcd's */
  char why[300];
  snprintf(why, sizeof why, "%s answers after every endpoint failed",
           op->ep->url);
  recheck_prefix(e, op->ep->url, why);
}

static void etcd_op_done(http_req_t *req, const http_resp_t *r, void *data) {
  (void)req;
  etcd_op_t *op = data;
  etcd_t *e = op->e;
  op->req = NULL;
  char err[700] = "";
  etcd_result_t res = {ETCD_OK, NULL, 0, 0};
  etcd_hdr_t hdr = {0};
  reply_t reply;
  if (r->error) {
    /* a TLS server that wants a client certificate just drops us: say so */
    /* TLS 1.3: the client's handshake ends before the server checks for
     * a certificate, so its refusal comes as whatever curl was doing
     * then; seen: "alert bad certificate", "Send failure: Broken pipe",
     * "HTTP/2 stream 1 was not closed cleanly" (every kind but a failed
     * connect, a timeout or an oversized answer) */
    int tls_hint = strncmp(op->ep->url, "https:", 6) == 0 &&
                   !http_tls_has_cert(&e->tls) &&
                   (r->error == HTTP_ERR_TLS || r->error == HTTP_ERR_DROPPED ||
                    r->error == HTTP_ERR_EMPTY || r->error == HTTP_ERR_OTHER ||
                    (r->errmsg && (strstr(r->errmsg, "alert") ||
                                   strstr(r->errmsg, "bad certificate") ||
                                   strstr(r->errmsg, "certificate required"))));
    /* a client certificate that has expired: etcd refuses it (seen: "alert
     * bad certificate"), which does not say why; this does */
    char when[80], cert_hint[400] = "";
    if (http_tls_cert_invalid(&e->tls, (long long)time(NULL), when,
                              sizeof when))
      snprintf(cert_hint, sizeof cert_hint,
               " (client certificate %s %s: renew it; it is read again "
               "when it changes)",
               e->tls.cert ? e->tls.cert : "", when);
    snprintf(err, sizeof err, "%s: %s%s%s", op->ep->url, r->errmsg,
             tls_hint ? " (does etcd want a client certificate? see "
                        "--etcd-cert and --etcd-key)"
                      : "",
             cert_hint);
    res.status = ETCD_UNAVAILABLE;
    /* a connection refused or unreachable: cheap to try again soon; a
     * name that does not resolve is not (a DNS outage: every host of a
     * fleet would ask its resolver four times a second) */
    if (r->error == HTTP_ERR_CONNECT) op->refusals++;
    reply = REPLY_NEXT_ENDPOINT;
  } else if (e->api == ETCD_API_V3) {
    reply = etcd_v3_reply(op, r, &res, &hdr, err, sizeof err);
  } else {
    reply = etcd_v2_reply(op, r, &res, &hdr, err, sizeof err);
  }
  /* etcd answered: a reply below 500 that reads as etcd's (not a 200
   * page from something else on the port: v2 and v3 call that
   * unavailable) */
  if (!r->error && r->status && r->status < 500 &&
      res.status != ETCD_UNAVAILABLE) {
    e->last_ok_ms = uv_now(e->loop);
    /* not a login's: etcd checks its password with bcrypt, slow on
     * purpose (tens to hundreds of ms, seconds when a fleet logs in at
     * once), which says nothing of how soon a member that does not answer
     * should be left (long_op()) */
    if (op->kind != OP_AUTH)
      lat_note(e, (double)(uv_hrtime() - op->sent) / 1e6);
    if (!e->answered) { /* the first answer: who else is there? */
      e->answered = 1;
      discover_soon(e);
    }
  }
  if (!r->error && r->status) observe(e, op, &hdr, res.status);
  if (op->kind == OP_FENCE && reply == REPLY_DONE && res.status == ETCD_OK)
    op->moved_to = hdr.revision;
  /* a fenced write that failed after it may have reached etcd: it could
   * still be applied, late; the fence moves before the next write, so a
   * late copy changes nothing.  Not sent (no connection, no name, no
   * handshake): nothing to fear. */
  if (op->fence_rev && reply == REPLY_NEXT_ENDPOINT &&
      r->error != HTTP_ERR_CONNECT && r->error != HTTP_ERR_RESOLVE &&
      r->error != HTTP_ERR_TLS) {
    e->fence_doubts++;
    if (e->fence_rev == op->fence_rev) {
      log_debug("etcd: a write to %s is in doubt (%s); moving the fence %s "
                "before the next write",
                op->ep->url, err, e->fence_key);
      e->fence_rev = 0;
    }
  }
  if ((reply == REPLY_MORE || reply == REPLY_DONE) && !op->list_rev &&
      (op->kind == OP_LIST || op->kind == OP_GET))
    op->list_rev = hdr.revision; /* later pages are read at it (v3) */
  switch (reply) {
  case REPLY_MORE:
    if (op->ep->listed) e->current = op->ep;
    op->attempts = op->refusals = 0; /* each page has its own budget */
    send_op(op);
    return;
  case REPLY_REAUTH:
    free(e->token);
    e->token = NULL;
    if (!op->reauthed && op->kind != OP_AUTH) {
      op->reauthed = 1;
      submit(op); /* waits for a fresh token */
      return;
    }
    break;
  case REPLY_LEASE_LOST:
    /* a write sent on a lease lost since, answered after the new one was
     * granted: the new one stands (it was dropped too: a second grant,
     * every key written twice) */
    if (op->lease_sent == e->lease) etcd_lease_lost(e);
    if (!op->lease_retried) {
      op->lease_retried = 1;
      submit(op); /* waits for a new lease */
      return;
    }
    break;
  case REPLY_FENCED: /* not applied: move the fence (if no one has since)
                        and send it again */
    if (e->fence_rev == op->fence_rev) {
      /* moved, or gone, and not by this client: another writer of it (a
       * second register with this host's IP), or an etcd that lost it
       * (wiped, a snapshot restored with the revision ahead): what else
       * it lost is found by reading every key again (at most every
       * FENCE_CHECK_MS: two writers of one fence would move it in turn) */
      uint64_t now = uv_now(e->loop);
      /* the fence hangs on the lease: with no renewal for its TTL (a
       * stalled process, an outage), it went with the lease, which the
       * keep-alive finds gone and grants again (no going back in time) */
      int lease_expired = e->ttl > 0 && e->lease && e->ka_ok_ms &&
                          now - e->ka_ok_ms >= (uint64_t)e->ttl * 1000;
      if (lease_expired)
        log_debug("etcd: the write fence is gone with the lease (not "
                  "renewed for %.1f s)",
                  (double)(now - e->ka_ok_ms) / 1000);
      else if (!e->fence_check_ms ||
               now - e->fence_check_ms >= FENCE_CHECK_MS) {
        e->fence_check_ms = now;
        rewind_seen(e, op, "the write fence moved, not by this register",
                    "another register with this host's IP, or an etcd "
                    "that lost it: wiped, or a snapshot restored?");
      }
      e->fence_rev = 0;
    }
    if (++op->fence_retries <= FENCE_RETRIES) {
      log_debug("etcd: %s; sending the write again", err);
      submit(op);
      return;
    }
    snprintf(err + strlen(err), sizeof err - strlen(err), "; %u times in a row",
             op->fence_retries);
    break;
  case REPLY_NEXT_ENDPOINT:
    /* a member that fails may have left the cluster, and every endpoint
     * may fail next: ask for the member list (whoever answers) */
    if (op->kind != OP_MEMBERS) discover_soon(e);
    if (++op->attempts < FAILOVER_ROUNDS * e->n &&
        uv_hrtime() - op->first <
            (uint64_t)(long_op(op) ? e->timeout_ms * 6 : e->timeout_ms) *
                1000000) {
      log_debug("etcd: %s; trying the next endpoint", err);
      /* what a caller that gives up meanwhile can say (watch --once) */
      snprintf(e->failover_error, sizeof e->failover_error, "%.299s", err);
      etcd_ep_t *failed = op->ep, *next = ep_after(e, failed);
      op->ep = etcd_ep_hold(next);
      /* new operations start on the next endpoint too, not on this one */
      if (e->current == failed) e->current = next;
      etcd_ep_drop(failed);
      /* through the gates again: a token, the lease or the fence may have
       * gone meanwhile (a put sent without the lease would never expire) */
      submit(op);
      return;
    }
    if (e->n > 1) {
      snprintf(err + strlen(err), sizeof err - strlen(err),
               " (all %zu endpoints failed)", e->n);
    }
    res.status = ETCD_UNAVAILABLE;
    res.refused = op->refusals == op->attempts;
    /* refused connections too: a stopped etcd refuses them, and a
     * restore happens while it is stopped */
    e->all_failed = 1;
    break;
  case REPLY_DONE:
    if (op->ep->listed) e->current = op->ep;
    back_after_outage(e, op);
    if ((op->kind == OP_LIST || op->kind == OP_GET) && res.status == ETCD_OK) {
      if (op->kind == OP_LIST && try_adopt(op)) return;
      deliver_listing(op);
      return;
    }
    break;
  }
  if (res.status != ETCD_OK && !res.error) res.error = err;
  complete(op, &res);
}

/* Builds the wire request (again: tokens, leases and pages change it) and
 * sends it (one that curl will not take fails from the loop, http.h). */
/* A listing (its answer can be large) and a login have six times the
 * budget.  A login is also given a whole --etcd-timeout on each member
 * before the next is tried (not the latency-scaled second of other
 * requests): etcd checks the password with bcrypt (about 70 ms of CPU at
 * its default cost), and when a fleet logs in at once (a start, new tokens
 * after an auth change) the answers queue for seconds; abandoning each
 * after a second made every member check every password again, and the
 * logins never caught up (50 hosts with TLS and auth, one 2-core machine).
 * A member cut off is still left after --etcd-timeout. */
static int long_op(const etcd_op_t *op) {
  return op->kind == OP_LIST || op->kind == OP_AUTH;
}

static void send_op(etcd_op_t *op) {
  etcd_t *e = op->e;
  free(op->path);
  op->path = NULL;
  buf_reset(&op->body);
  op->content_type = NULL;
  op->fence_rev = 0;
  if (fenced(op) && !fence_off(e)) {
    REGISTER_ASSERT(e->fence_rev > 0); /* gate() waited for it */
    op->fence_rev = e->fence_rev;
  }
  op->lease_sent = e->lease;
  if (e->api == ETCD_API_V3)
    etcd_v3_build(op);
  else
    etcd_v2_build(op);

  /* an endpoint dropped from the list since the last attempt (it left the
   * cluster): go on with the current one */
  if (!op->ep->listed) {
    etcd_ep_drop(op->ep);
    op->ep = etcd_ep_hold(e->current);
  }
  char *url = xasprintf("%s%s", op->ep->url, op->path);
  char ctype[80];
  char *auth = NULL;
  const char *headers[3] = {NULL, NULL, NULL};
  int nh = 0;
  if (op->content_type) {
    snprintf(ctype, sizeof ctype, "Content-Type: %s", op->content_type);
    headers[nh++] = ctype;
  }
  if (e->api == ETCD_API_V3 && e->token && op->kind != OP_AUTH) {
    auth = xasprintf("Authorization: %s", e->token);
    headers[nh++] = auth;
  }
  http_opts_t o = {0};
  o.method = op->method;
  o.url = url;
  o.headers = headers;
  o.body = op->body.data ? op->body.data : (op->method[0] == 'G' ? NULL : "");
  o.body_len = op->body.len;
  long full = long_op(op) ? e->timeout_ms * 6 : e->timeout_ms;
  uint64_t now = uv_hrtime();
  if (!op->attempts) op->first = now;
  long left = full - (long)((now - op->first) / 1000000);
  double d = lat_recent(e) * FAILOVER_LAT_FACTOR;
  double floor = e->lat_avg_ms > 0 ? FAILOVER_MIN_MS : FAILOVER_FIRST_MS;
  if (d < floor) d = floor;
  if (op->kind == OP_LIST) d *= 6;
  if (op->kind == OP_AUTH && d < (double)e->timeout_ms) d = e->timeout_ms;
  /* a keep-alive's attempt fits its lease: a quarter of the TTL, so that
   * one sent a third of the TTL after the last can still fail over twice
   * before the lease expires (a member cut off then, with the latency
   * high, held it past a 3 s TTL: every key of the host gone) */
  if (op->kind == OP_KEEPALIVE && e->ttl > 0) {
    double cap = (double)e->ttl * 1000 / 4;
    if (cap < FAILOVER_MIN_MS) cap = FAILOVER_MIN_MS;
    if (d > cap) d = cap;
  }
  if (op->attempts + 1 < FAILOVER_ROUNDS * e->n && (double)left > d) {
    o.timeout_ms = (long)d; /* another attempt can follow this one */
    o.connect_timeout_ms = FAILOVER_CONNECT_MS;
  } else { /* the last one: the rest of the budget */
    o.timeout_ms = (double)left > d ? left : (long)d;
    o.connect_timeout_ms = FULL_CONNECT_MS;
  }
  op->sent = uv_hrtime();
  op->sent_seen = e->seen;
  o.tls = e->use_tls ? &e->tls : NULL;
  o.userpwd = e->api == ETCD_API_V2 ? e->userpwd : NULL;
  o.reset_at_close = 1; /* a write given up on never lands later */
  o.on_done = etcd_op_done;
  o.data = op;
  op->req = http_request(e->http, &o);
  free(url);
  if (auth) {
    memset(auth, 0, strlen(auth));
    free(auth);
  }
  REGISTER_ASSERT(op->req);
}

/* ---- v3 gates: a token, a lease ---- */

static void start_auth(etcd_t *e);
static void start_grant(etcd_t *e);

/* Writes that carry the fence: every put, delete and transaction but a
 * compare-and-swap (a document, with its own compare). */
static int fenced(const etcd_op_t *op) {
  if (!op->e->fence_key || op->unfenced) return 0;
  switch (op->kind) {
  case OP_PUT:
  case OP_DELETE:
  case OP_DELETE_DIR:
  case OP_DELETE_PREFIX:
  case OP_TXN:
    return 1;
  default:
    return 0;
  }
}

/* etcd refused the fence a short while ago: write unfenced till then. */
static int fence_off(const etcd_t *e) {
  return e->fence_off_until_ms && uv_now(e->loop) < e->fence_off_until_ms;
}

/* 1 when op has to wait (it is kept on a wait list). */
static int gate(etcd_op_t *op) {
  etcd_t *e = op->e;
  unwait(op);
  if (e->api != ETCD_API_V3 || op->kind == OP_AUTH) return 0;
  /* Keep-alives go with the token we have, or none: etcd 3.4 checks no
   * permission on them, and a login that fails (a changed password) must
   * not cost the lease and every key on it. */
  if (e->user && !e->token && op->kind != OP_KEEPALIVE) {
    wait_for(op, WAIT_TOKEN);
    start_auth(e);
    return 1;
  }
  if ((op->kind == OP_PUT || op->kind == OP_TXN || op->kind == OP_FENCE) &&
      e->ttl > 0 && !e->lease) {
    wait_for(op, WAIT_LEASE);
    if (!e->adopt_pending) start_grant(e); /* else after its answer */
    return 1;
  }
  if (fenced(op) && !e->fence_rev && !fence_off(e)) {
    wait_for(op, WAIT_FENCE);
    start_fence(e);
    return 1;
  }
  return 0;
}

/* Sends an op, or parks it at a gate.  A request that cannot start
 * (curl refused it) fails from the loop like any other (http.h). */
static void submit(etcd_op_t *op) {
  if (!gate(op)) send_op(op);
}

/* Sends (or fails, with st and err) every op on one wait list.  Each is
 * taken off the list before anything runs, so callbacks may cancel or
 * start others freely. */
static void release_waiting(etcd_t *e, int which, int do_fail, etcd_status_t st,
                            const char *err) {
  list_t *n;
  while ((n = list_first(&e->wait[which]))) {
    etcd_op_t *o = list_entry(n, etcd_op_t, wnode);
    unwait(o);
    if (do_fail)
      etcd_op_fail(o, st, err);
    else
      submit(o);
  }
}

/* ---- the write fence (etcd_opts_t.fence_key) ---- */

static void start_fence(etcd_t *e) {
  if (e->fence_pending) return;
  e->fence_pending = 1;
  e->fence_started_ms = uv_now(e->loop);
  etcd_op_t *op = op_new(e, OP_FENCE, e->fence_key, NULL);
  op->value = xasprintf("the write fence of a register (pid %ld): its writes "
                        "compare with this key's revision",
                        (long)getpid());
  op->vlen = strlen(op->value);
  submit(op);
}

static void fence_finished(etcd_t *e, etcd_op_t *op, const etcd_result_t *res) {
  e->fence_pending = 0;
  const char *why = res->error ? res->error : "no revision in the answer";
  if (res->status == ETCD_OK && op->moved_to > 0) {
    e->fence_rev = op->moved_to;
    e->fence_moves++;
    e->fence_again = 0;
    e->fence_off_until_ms = 0;
    if (e->fence_refused_said) {
      e->fence_refused_said = 0;
      log_info("etcd: writes are fenced again (%s)", e->fence_key);
    }
    log_debug("etcd: fence %s moved to revision %" PRId64, e->fence_key,
              e->fence_rev);
    release_waiting(e, WAIT_FENCE, 0, ETCD_OK, NULL);
    return;
  }
  if (res->status == ETCD_FAILED) { /* refused: permission, space, ... */
    if (!e->fence_refused_said) {
      e->fence_refused_said = 1;
      log_warn("etcd: cannot write the fence key %s (%s): writing unfenced, "
               "trying it again every %ds; a write given up on in a "
               "partition can then land late and bring back a key deleted "
               "since (until the next listing repairs it): give this "
               "host's etcd user write access to the key",
               e->fence_key, why, FENCE_OFF_MS / 1000);
    }
    e->fence_off_until_ms = uv_now(e->loop) + FENCE_OFF_MS;
    release_waiting(e, WAIT_FENCE, 0, ETCD_OK, NULL); /* unfenced */
    return;
  }
  /* A move started in a partition spends its budget on members that do
   * not answer, and can fail just after the cut healed, when the writes
   * waiting for it (the rewrite of a lost lease among them) would go
   * through: if etcd answered anything since this move began, it is
   * started again at once (a few times in a row), not failed with them
   * (seen: 10 hosts healed from a partition, half of them 3-5 s late,
   * their writes waiting out a back-off). */
  if (e->last_ok_ms > e->fence_started_ms && e->fence_again < 3) {
    e->fence_again++;
    log_debug("etcd: moving the fence %s failed (%s), while etcd answers: "
              "again",
              e->fence_key, why);
    start_fence(e);
    return;
  }
  e->fence_again = 0;
  /* etcd did not answer: neither would it to the writes waiting */
  char msg[700];
  snprintf(msg, sizeof msg, "cannot move the write fence %s: %s", e->fence_key,
           why);
  list_t *n;
  while ((n = list_first(&e->wait[WAIT_FENCE]))) {
    etcd_op_t *o = list_entry(n, etcd_op_t, wnode);
    unwait(o);
    o->fail_refused = res->refused; /* etcd down: they may probe */
    etcd_op_fail(o, ETCD_UNAVAILABLE, msg);
  }
}

static void start_auth(etcd_t *e) {
  if (e->auth_pending) return;
  e->auth_pending = 1;
  etcd_op_t *op = op_new(e, OP_AUTH, NULL, NULL);
  submit(op);
}

static void auth_finished(etcd_t *e, etcd_op_t *op, const etcd_result_t *res) {
  e->auth_pending = 0;
  if (res->status == ETCD_OK && op->token) {
    free(e->token);
    e->token = op->token;
    op->token = NULL;
    log_debug("etcd: authenticated as %s", e->user);
    release_waiting(e, WAIT_TOKEN, 0, ETCD_OK, NULL);
    return;
  }
  char msg[500];
  snprintf(msg, sizeof msg, "authentication as user %s failed: %s", e->user,
           res->error ? res->error : "no token in the answer");
  release_waiting(e, WAIT_TOKEN, 1,
                  res->status == ETCD_OK ? ETCD_FAILED : res->status, msg);
}

static void start_grant(etcd_t *e) {
  if (e->grant_pending) return;
  e->grant_pending = 1;
  etcd_op_t *op = op_new(e, OP_GRANT, NULL, NULL);
  submit(op);
}

static void grant_finished(etcd_t *e, etcd_op_t *op, const etcd_result_t *res) {
  e->grant_pending = 0;
  /* a grant and an adoption never overlap (try_adopt waits for neither
   * and gate() waits for the adoption): no lease is replaced here */
  REGISTER_ASSERT(!e->adopt_pending);
  if (res->status == ETCD_OK && op->lease_id) {
    e->lease = op->lease_id;
    log_info("etcd: lease %" PRIx64 " granted (TTL %lds)", (uint64_t)e->lease,
             op->lease_ttl);
    keepalive_episode_reset(e, op->lease_ttl);
    keepalive_arm(e);
    release_waiting(e, WAIT_LEASE, 0, ETCD_OK, NULL);
    return;
  }
  char msg[500];
  snprintf(msg, sizeof msg, "cannot get an etcd lease: %s",
           res->error ? res->error : "no lease in the answer");
  release_waiting(e, WAIT_LEASE, 1,
                  res->status == ETCD_OK ? ETCD_FAILED : res->status, msg);
}

static void etcd_lease_lost(etcd_t *e) {
  if (!e->lease) return;
  log_warn("etcd: lease %" PRIx64 " is gone (expired or revoked); a new one "
           "is granted and every key written again",
           (uint64_t)e->lease);
  e->lease = 0;
  e->fence_rev = 0; /* the fence key hung on it */
  if (e->lease_lost) e->lease_lost(e->ud);
}

/* A new lease (granted, adopted) or none: no keep-alive trouble yet.
 * left: seconds the lease has to live. */
static void keepalive_episode_reset(etcd_t *e, long left) {
  uint64_t now = uv_now(e->loop);
  uint64_t gone = left < e->ttl ? (uint64_t)(e->ttl - left) * 1000 : 0;
  e->ka_failures = 0;
  e->ka_expired_warned = 0;
  e->ka_ok_ms = now > gone ? now - gone : 0;
}

/* A failed keep-alive puts the lease, and every key on it, at risk: the
 * first of an episode is a warning with the time left, the one that finds
 * the TTL run out another; the first to get through again says so. */
static void keepalive_finished(etcd_t *e, etcd_op_t *op,
                               const etcd_result_t *res) {
  e->keepalive_pending = 0;
  if (op->lease_id != e->lease) return; /* a lease dropped meanwhile */
  uint64_t now = uv_now(e->loop);
  long long since = (long long)(now - e->ka_ok_ms) / 1000;
  if (res->status != ETCD_OK) {
    e->ka_failures++;
    if (e->ka_failures == 1 && since < e->ttl) {
      log_warn("etcd: keep-alive of lease %" PRIx64 " failed: %s; its keys "
               "expire in %llds unless one gets through",
               (uint64_t)e->lease, res->error ? res->error : "?",
               (long long)e->ttl - since);
    } else if (since >= e->ttl && !e->ka_expired_warned) {
      e->ka_expired_warned = 1;
      log_warn("etcd: lease %" PRIx64 " not renewed for %llds (TTL %lds): "
               "its keys have probably expired, and are written again once "
               "etcd answers (%s)",
               (uint64_t)e->lease, since, e->ttl,
               res->error ? res->error : "?");
    } else {
      log_debug("etcd: keep-alive of lease %" PRIx64 " failed (%u in a "
                "row): %s",
                (uint64_t)e->lease, e->ka_failures,
                res->error ? res->error : "?");
    }
    return;
  }
  if (op->lease_ttl <= 0) {
    etcd_lease_lost(e);
    return;
  }
  if (e->ka_failures)
    log_info("etcd: keep-alive of lease %" PRIx64 " works again after %u "
             "failed (%llds since the last renewal)",
             (uint64_t)e->lease, e->ka_failures, since);
  /* unrenewed for 0.7 TTL, where the longest wait between keep-alives is
   * 0.4 TTL: they failed, or this process did not run (stopped, frozen) */
  uint64_t gap = now - e->ka_ok_ms;
  if (gap > (uint64_t)e->ttl * 700) {
    char why[300];
    snprintf(why, sizeof why,
             "the lease went %.1fs without a renewal (etcd out of reach, or "
             "this process stopped)",
             (double)gap / 1000);
    recheck_prefix(e, op->ep->url, why);
  }
  keepalive_episode_reset(e, op->lease_ttl);
}

/* Every TTL/3 less up to a fifth of it, chosen anew each time: hosts
 * started together (or back after the same outage) drift apart instead of
 * renewing in lock-step. */
/* Every TTL/3 plus up to a fifth of that, drawn each time: hosts do not
 * keep step, and on average a lease costs fewer than one keep-alive per
 * TTL/3 (the longest wait, 0.4 TTL, still leaves two more tries). */
static void keepalive_arm(etcd_t *e) {
  uint64_t every = e->keepalive_every_ms;
  uv_timer_start(&e->keepalive_timer, keepalive_cb,
                 every + util_rand((uint32_t)(every / 5) + 1), 0);
}

static void keepalive_cb(uv_timer_t *t) {
  etcd_t *e = t->data;
  keepalive_arm(e);
  if (!e->lease || e->keepalive_pending) return;
  e->keepalive_pending = 1;
  etcd_op_t *op = op_new(e, OP_KEEPALIVE, NULL, NULL);
  op->lease_id = e->lease;
  submit(op);
}

/* ---- endpoints: the configured ones and the cluster's members ---- */

/* Discovery.  The operator's endpoints are seeds, always kept (one may be
 * a load balancer or a DNS name that the member list never names); the
 * client URLs of the cluster's members are added, and those of members
 * that left dropped, so that members replaced one by one at new addresses
 * are followed.  The member list is asked for after the first answer,
 * every DISCOVER_EVERY_MS (DISCOVER_RETRY_MS after one that failed), and
 * soon after an endpoint failed (at most one per DISCOVER_GAP_MS), from
 * whichever endpoint answers: when every known endpoint fails (all of
 * them replaced), only a list learnt earlier helps, so members replaced
 * one by one are followed if each step lasts DISCOVER_EVERY_MS or an
 * endpoint register uses fails meanwhile. */
#define DISCOVER_EVERY_MS 30000
#define DISCOVER_RETRY_MS 5000
#define DISCOVER_GAP_MS 2000

/* The endpoint after ep in the list; the current one when ep was dropped
 * from the list meanwhile. */
static etcd_ep_t *ep_after(etcd_t *e, const etcd_ep_t *ep) {
  for (size_t i = 0; i < e->n; i++)
    if (e->eps[i] == ep) return e->eps[(i + 1) % e->n];
  REGISTER_ASSERT(!ep->listed);
  return e->current;
}

static int ep_in(etcd_ep_t *const *eps, size_t n, const etcd_ep_t *ep) {
  for (size_t i = 0; i < n; i++)
    if (eps[i] == ep) return 1;
  return 0;
}

static etcd_ep_t *ep_named(etcd_ep_t *const *eps, size_t n, const char *url) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(eps[i]->url, url) == 0) return eps[i];
  return NULL;
}

/* The seeds, then the members' client URLs (normalised as --etcd is,
 * deduplicated, at most ETCD_MAX_DISCOVERED); endpoints held by requests
 * in flight outlive their place in the list (etcd_ep_t). */
static void endpoints_merge(etcd_t *e, const etcd_op_t *op) {
  etcd_ep_t **next = xcalloc(e->cap, sizeof *next);
  size_t n = 0;
  for (size_t i = 0; i < e->n; i++)
    if (e->eps[i]->seed) next[n++] = e->eps[i];
  for (size_t i = 0; i < op->nurls && n < e->cap; i++) {
    char *url, err[300];
    if (config_parse_endpoint(op->urls[i], &url, err, sizeof err) < 0) {
      log_debug("etcd: member list from %s: %s", op->ep->url, err);
      continue;
    }
    etcd_ep_t *ep = ep_named(next, n, url);
    if (ep) { /* named twice, or a seed */
      free(url);
      continue;
    }
    ep = ep_named(e->eps, e->n, url);
    if (ep) {
      free(url);
    } else {
      ep = xcalloc(1, sizeof *ep);
      ep->url = url;
      ep->id = ++e->ep_ids;
      ep->listed = 1;
    }
    next[n++] = ep;
  }
  REGISTER_ASSERT(n > 0 && n <= e->cap);
  int changed = n != e->n;
  for (size_t i = 0; i < n && !changed; i++)
    changed = next[i] != e->eps[i];
  if (!changed) {
    free(next);
    return;
  }
  if (!ep_in(next, n, e->current))
    e->current = ep_in(next, n, op->ep) ? op->ep : next[0];
  for (size_t i = 0; i < e->n; i++) {
    etcd_ep_t *ep = e->eps[i];
    if (ep_in(next, n, ep)) continue;
    REGISTER_ASSERT(!ep->seed);
    ep->listed = 0;
    if (!ep->refs) { /* else its last holder frees it */
      free(ep->url);
      free(ep);
    }
  }
  free(e->eps);
  e->eps = next;
  e->n = n;
  REGISTER_ASSERT(e->current->listed);
  buf_t b;
  buf_init(&b);
  for (size_t i = 0; i < n; i++)
    buf_printf(&b, "%s%s", i ? ", " : "", next[i]->url);
  log_info("etcd: endpoints now %s (from the member list)", b.data);
  buf_free(&b);
}

static void discover_cb(uv_timer_t *t) {
  etcd_t *e = t->data;
  if (e->discover_pending) return;
  e->discover_pending = 1;
  e->discover_ms = uv_now(e->loop);
  submit(op_new(e, OP_MEMBERS, NULL, NULL));
}

static void discover_soon(etcd_t *e) {
  if (!e->discover || e->discover_pending) return;
  uint64_t now = uv_now(e->loop), wait = 0;
  if (e->discover_ms && now - e->discover_ms < DISCOVER_GAP_MS)
    wait = DISCOVER_GAP_MS - (now - e->discover_ms);
  uv_timer_start(&e->discover_timer, discover_cb, wait, 0);
}

static void members_finished(etcd_t *e, etcd_op_t *op,
                             const etcd_result_t *res) {
  e->discover_pending = 0;
  if (res->status == ETCD_OK && op->nurls) {
    endpoints_merge(e, op);
  } else {
    log_debug("etcd: no member list: %s",
              res->error ? res->error : "no client URLs in it");
  }
  uv_timer_start(&e->discover_timer, discover_cb,
                 res->status == ETCD_OK ? DISCOVER_EVERY_MS : DISCOVER_RETRY_MS,
                 0);
}

size_t etcd_endpoints(const etcd_t *e) {
  return e->n;
}

/* ---- the public operations ---- */

/* Sends a new operation, or parks it at a gate.  It always returns the
 * op: a request that cannot start (curl refused it) fails from the loop,
 * like every other failure, never inside this call. */
static etcd_op_t *launch(etcd_op_t *op) {
  op->launching = 1; /* done() asserts it is not called from here */
  submit(op);
  op->launching = 0;
  return op;
}

static etcd_op_t *start(etcd_t *e, op_kind_t kind, const char *key,
                        const char *value, size_t vlen, long ttl,
                        etcd_done_cb cb, etcd_list_cb lcb, void *data) {
  etcd_op_t *op = op_new(e, kind, key, data);
  op->done = cb;
  op->list = lcb;
  op->ttl = ttl;
  if (value) {
    op->value = xstrndup(value, vlen);
    op->vlen = vlen;
  }
  return launch(op);
}

etcd_op_t *etcd_put(etcd_t *e, const char *key, const char *value, size_t vlen,
                    long ttl, etcd_done_cb cb, void *data) {
  return start(e, OP_PUT, key, value, vlen, ttl, cb, NULL, data);
}

etcd_op_t *etcd_put_if(etcd_t *e, const char *key, const char *value,
                       size_t vlen, int64_t prev_rev, etcd_done_cb cb,
                       void *data) {
  etcd_op_t *op = op_new(e, OP_PUT_IF, key, data);
  op->done = cb;
  op->value = xstrndup(value, vlen);
  op->vlen = vlen;
  op->prev_rev = prev_rev;
  return launch(op);
}

etcd_op_t *etcd_refresh(etcd_t *e, const char *key, long ttl, etcd_done_cb cb,
                        void *data) {
  return start(e, OP_REFRESH, key, NULL, 0, ttl, cb, NULL, data);
}

etcd_op_t *etcd_delete(etcd_t *e, const char *key, etcd_done_cb cb,
                       void *data) {
  return start(e, OP_DELETE, key, NULL, 0, 0, cb, NULL, data);
}

etcd_op_t *etcd_delete_dir(etcd_t *e, const char *key, etcd_done_cb cb,
                           void *data) {
  return start(e, OP_DELETE_DIR, key, NULL, 0, 0, cb, NULL, data);
}

etcd_op_t *etcd_delete_prefix(etcd_t *e, const char *prefix, etcd_done_cb cb,
                              void *data) {
  return start(e, OP_DELETE_PREFIX, prefix, NULL, 0, 0, cb, NULL, data);
}

etcd_op_t *etcd_list(etcd_t *e, const char *prefix, etcd_list_cb cb,
                     void *data) {
  return start(e, OP_LIST, prefix, NULL, 0, 0, NULL, cb, data);
}

etcd_op_t *etcd_get(etcd_t *e, const char *key, etcd_list_cb cb, void *data) {
  return start(e, OP_GET, key, NULL, 0, 0, NULL, cb, data);
}

etcd_op_t *etcd_txn(etcd_t *e, const etcd_txn_item_t *items, size_t n,
                    etcd_done_cb cb, void *data) {
  etcd_op_t *op = op_new(e, OP_TXN, NULL, data);
  op->done = cb;
  op->items = xcalloc(n ? n : 1, sizeof *op->items);
  op->nitems = n;
  for (size_t i = 0; i < n; i++) {
    op->items[i].is_delete = items[i].is_delete;
    op->items[i].key = xstrdup(items[i].key);
    if (!items[i].is_delete) {
      op->items[i].value = xstrndup(items[i].value, items[i].vlen);
      op->items[i].vlen = items[i].vlen;
    }
  }
  return launch(op);
}

int etcd_has_txn(const etcd_t *e) {
  return e->api == ETCD_API_V3;
}

etcd_op_t *etcd_probe(etcd_t *e, etcd_done_cb cb, void *data) {
  return start(e, OP_HEALTH, NULL, NULL, 0, 0, cb, NULL, data);
}

const char *etcd_status_name(etcd_status_t st) {
  static const char *const names[ETCD_STATUSES] = {
      "ok", "not_found", "not_empty", "unavailable", "failed", "conflict"};
  return (unsigned)st < ETCD_STATUSES ? names[st] : "unknown";
}

size_t etcd_stats(const etcd_t *e, etcd_opstat_t *out, size_t max) {
  static const char *const names[OP_KINDS] = {
      "put",           "refresh", "delete",  "delete_dir",
      "delete_prefix", "list",    "get",     "txn",
      "put_if",        "auth",    "grant",   "keepalive",
      "lease_ttl",     "health",  "members", "fence"};
  for (size_t k = 0; k < OP_KINDS && k < max; k++) {
    out[k].op = names[k];
    memcpy(out[k].by_status, e->counts[k], sizeof out[k].by_status);
    memcpy(out[k].buckets, e->hist[k], sizeof out[k].buckets);
    out[k].count = e->hist_n[k];
    out[k].sum = e->hist_sum[k];
  }
  return OP_KINDS;
}

uint64_t etcd_lease_unrenewed_ms(const etcd_t *e) {
  if (!e->lease || !e->ka_failures) return 0;
  return uv_now(e->loop) - e->ka_ok_ms;
}

int64_t etcd_since_answer_ms(const etcd_t *e) {
  if (!e->last_ok_ms) return -1;
  return (int64_t)(uv_now(e->loop) - e->last_ok_ms);
}

const char *etcd_last_error(const etcd_t *e) {
  return e->last_error;
}

const char *etcd_failover_error(const etcd_t *e) {
  return e->failover_error;
}

uint64_t etcd_rewinds(const etcd_t *e) {
  return e->rewinds;
}

etcd_op_t *etcd_fence_remove(etcd_t *e, etcd_done_cb cb, void *data) {
  if (!e->fence_key || !e->fence_moves) return NULL;
  e->fence_rev = 0; /* gone: a later write writes it again */
  etcd_op_t *op = op_new(e, OP_DELETE, e->fence_key, data);
  op->done = cb;
  op->unfenced = 1;
  return launch(op);
}

uint64_t etcd_fence_moves(const etcd_t *e) {
  return e->fence_moves;
}

uint64_t etcd_fence_doubts(const etcd_t *e) {
  return e->fence_doubts;
}

void etcd_cancel(etcd_op_t *op) {
  if (!op) return;
  if (op->req) http_cancel(op->req);
  op_free(op);
}

int etcd_has_dirs(const etcd_t *e) {
  return e->api == ETCD_API_V2;
}

int etcd_has_key_refresh(const etcd_t *e) {
  return e->api == ETCD_API_V2;
}

void etcd_opts_from_config(const config_t *cfg, http_tls_t *tls,
                           etcd_opts_t *o) {
  *tls = (http_tls_t){
      .cacert = cfg->etcd_cacert, .cert = cfg->etcd_cert, .key = cfg->etcd_key};
  memset(o, 0, sizeof *o);
  o->endpoints = cfg->etcd;
  o->n_endpoints = cfg->n_etcd;
  o->api = cfg->etcd_api;
  o->tls = (tls->cacert || tls->cert) ? tls : NULL;
  o->user = cfg->etcd_user;
  o->password = cfg->etcd_password;
  o->discover = cfg->etcd_discovery;
}

etcd_t *etcd_new(uv_loop_t *loop, http_t *http, const etcd_opts_t *o) {
  etcd_t *e = xcalloc(1, sizeof *e);
  e->loop = loop;
  e->http = http;
  REGISTER_ASSERT(o->n_endpoints > 0);
  e->n = o->n_endpoints;
  e->cap = e->n + ETCD_MAX_DISCOVERED;
  e->eps = xcalloc(e->cap, sizeof *e->eps);
  for (size_t i = 0; i < e->n; i++) {
    etcd_ep_t *ep = xcalloc(1, sizeof *ep);
    ep->url = xstrdup(o->endpoints[i]);
    ep->id = ++e->ep_ids;
    ep->seed = ep->listed = 1;
    e->eps[i] = ep;
  }
  e->current = e->eps[0];
  e->discover = o->discover;
  e->api = o->api;
  if (o->tls) {
    http_tls_copy(&e->tls, o->tls);
    e->use_tls = 1;
  }
  if (o->user) {
    e->user = xstrdup(o->user);
    e->password = xstrdup(o->password ? o->password : "");
    e->userpwd = xasprintf("%s:%s", e->user, e->password);
  }
  e->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 5000;
  e->ttl = o->api == ETCD_API_V3 ? o->ttl : 0;
  e->lease_lost = o->lease_lost;
  e->rewound = o->rewound;
  e->new_member = o->new_member;
  if (o->fence_key && o->api == ETCD_API_V3)
    e->fence_key = xstrdup(o->fence_key);
  e->ud = o->ud;
  list_init(&e->ops);
  for (size_t i = 0; i < ARRAY_SIZE(e->wait); i++)
    list_init(&e->wait[i]);
  list_init(&e->failing);
  uv_timer_init(loop, &e->keepalive_timer);
  uv_timer_init(loop, &e->fail_timer);
  uv_timer_init(loop, &e->discover_timer);
  e->keepalive_timer.data = e->fail_timer.data = e->discover_timer.data = e;
  e->handles_open = 3;
  if (e->ttl > 0) {
    e->keepalive_every_ms = (uint64_t)e->ttl * 1000 / 3;
    if (e->keepalive_every_ms < 500) e->keepalive_every_ms = 500;
    keepalive_arm(e);
  }
  return e;
}

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s));
  free(s);
}

static void etcd_timer_closed(uv_handle_t *h) {
  etcd_t *e = h->data;
  REGISTER_ASSERT(e->handles_open > 0); /* one close callback per timer */
  if (--e->handles_open == 0) free(e);
}

void etcd_set_password(etcd_t *e, const char *password) {
  if (!e->user) return;
  wipe(e->password);
  wipe(e->userpwd);
  e->password = xstrdup(password ? password : "");
  e->userpwd = xasprintf("%s:%s", e->user, e->password);
}

void etcd_set_tls(etcd_t *e, const http_tls_t *tls) {
  http_tls_free(&e->tls);
  http_tls_copy(&e->tls, tls);
  e->use_tls = 1;
}

void etcd_free(etcd_t *e) {
  if (!e) return;
  REGISTER_ASSERT(e->watches == 0); /* their owners cancel them first */
  list_t *n;
  while ((n = list_first(&e->ops)))
    etcd_cancel(list_entry(n, etcd_op_t, node));
  for (size_t i = 0; i < e->n; i++) { /* nothing holds them now */
    REGISTER_ASSERT(e->eps[i]->refs == 0);
    free(e->eps[i]->url);
    free(e->eps[i]);
  }
  free(e->eps);
  http_tls_free(&e->tls);
  free(e->user);
  free(e->fence_key);
  wipe(e->password);
  wipe(e->userpwd);
  wipe(e->token);
  uv_close((uv_handle_t *)&e->keepalive_timer, etcd_timer_closed);
  uv_close((uv_handle_t *)&e->fail_timer, etcd_timer_closed);
  uv_close((uv_handle_t *)&e->discover_timer, etcd_timer_closed);
}

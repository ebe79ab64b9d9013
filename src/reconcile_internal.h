/* Shared by the two halves of the reconciler: the state (reconcile.c)
 * and the machine that writes it to etcd (reconcile_queue.c); not a public
 * API. */
#ifndef REGISTER_RECONCILE_INTERNAL_H
#define REGISTER_RECONCILE_INTERNAL_H

#include "list.h"
#include "map.h"
#include "reconcile.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* An immutable, reference-counted value: the value a container wants and
 * the value etcd holds are usually the same bytes, kept once. */
typedef struct rstr {
  size_t refs;
  size_t len;
  char s[];
} rstr_t;

typedef struct rkey rkey_t;
typedef struct rcont rcont_t;

/* One container producing one key.  The two chains stay singly linked (not
 * list.h): there is one owner per key and container, the chains are short
 * (usually one owner per key) and walked only when records change, and two
 * more pointers per owner would cost 16 bytes for every key registered. */
typedef struct owner {
  rkey_t *key;
  rcont_t *cont;
  rstr_t *value;
  struct owner *knext; /* the key's owners, newest first */
  struct owner *cnext; /* the container's owners */
  unsigned seen;       /* generation mark used by reconcile_set */
} owner_t;

struct rcont {
  char *id;
  char *image;
  char *name; /* for log lines; "" when unknown */
  owner_t *owners;
  /* its last evaluation was not final (the policy call failed, or a check
   * is still pending): what it has stays, and the orphans under the prefix
   * that name one of its tokens (id, short id, name), or that are among the
   * keys it claims (what it would produce with its checks passing), are
   * adopted */
  char **tokens;
  size_t ntokens;
  char **claims;
  size_t nclaims;
  /* make-before-break: the keys it no longer produces whose delete waits
   * until the keys it produces now are in etcd (rkey_t.qnode, held) */
  list_t held;
};

/* ACT_HOLD is only ever a decision: a delete that must wait (rcont_t.held) */
typedef enum {
  ACT_NONE,
  ACT_PUT,
  ACT_REFRESH,
  ACT_DELETE,
  ACT_RMDIR,
  ACT_HOLD
} act_t;

struct rkey {
  char *key;       /* also the map key */
  owner_t *owners; /* newest first; owners->value is what we want */
  rstr_t *have;    /* what etcd holds (NULL: absent), if have_known */
  rstr_t *sent;    /* the value of the write in flight */
  unsigned have_known : 1;
  unsigned have_ttl : 1; /* etcd's copy expires (from a listing) */
  unsigned inflight : 1;
  unsigned refresh_due : 1;
  unsigned owned_once : 1; /* owned in this process: may go before sync */
  unsigned failed : 1;     /* refused by etcd; waits for a change/resync */
  unsigned is_dir : 1;     /* an (empty) v2 directory to remove */
  unsigned again : 1;      /* touched while in flight: look again after */
  unsigned solo : 1;       /* a transaction with it failed: alone next time */
  unsigned filling : 1;    /* in the v3 transaction not sent yet (r->batch) */
  unsigned held : 1;       /* qnode is on a container's held list */
  unsigned act : 3;        /* act_t: the request in flight (a bit-field: the key
                            * stays 88 bytes with its list node) */
  unsigned sent_ds : 16;   /* uv_now() / 100 when that request was started,
                            * modulo 2^16 (about 109 minutes) */
  unsigned mark;           /* listing generation that saw this key */
  /* the last owner, for the removal log line: its id, image and name in
   * one block ("id\0image\0name"); rkey_owner_*() read it */
  char *gone_id;
  list_t qnode; /* on r->queue: to be looked at; or, if held, on its last
                 owner's held list: its delete waits (rcont_t.held) */
  etcd_op_t *op;
  reconcile_t *r;
};

struct reconcile {
  uv_loop_t *loop;
  etcd_t *etcd;
  char *prefix;
  size_t prefix_len;
  long ttl;
  int max_inflight;
  int dry_run;
  void (*changed)(void *, const char *, const char *, const char *, size_t);
  void (*converged_cb)(void *);
  void *ud;

  map_t *keys;  /* key -> rkey_t */
  map_t *dirs;  /* directory -> rkey_t (is_dir) */
  map_t *conts; /* container id -> rcont_t */
  list_t queue; /* keys to look at (rkey_t.qnode), each at most once */
  size_t nqueued;
  size_t nheld;  /* deletes waiting on rcont_t.held lists */
  size_t nowned; /* keys with at least one owner */
  int inflight;
  size_t nfailed;
  unsigned gen;

  int primed; /* the prefix has been listed once */
  int docker_synced;
  int hold_orphans; /* keys nobody produces are not deleted (every running
                       container's evaluation failed) */
  int was_converged;
  int ever_converged;
  double last_converged;       /* wall clock, for /metrics */
  uint64_t behind_since;       /* uv_now() when it stopped being converged */
  uint64_t errors_at_converge; /* say "in sync" again after trouble */
  int pumping;
  etcd_op_t *list_op;
  int list_again; /* a resync was asked while a listing ran */
  uv_timer_t backoff_timer, refresh_timer, list_timer, flush_timer;
  uv_timer_t retry_timer; /* refused keys are tried again (retry_cb) */
  uint64_t retry_ms;      /* its next delay; 0: the first */
  int paused;
  int key_refresh;      /* v2: TTLs are refreshed key by key */
  int batching;         /* v3: puts and deletes go in transactions */
  struct batch *batch;  /* the transaction being filled by reconcile_pump() */
  list_t batches;       /* transactions in flight (batch_t.node) */
  etcd_op_t *prefix_op; /* deleting the whole owned prefix */
  int outage;           /* etcd is unreachable: said once, not per key */
  unsigned failures;
  uint64_t list_backoff_ms;
  int open_handles;
  uint64_t puts, refreshes, deletes, errors;
};

/* ---- reconcile.c: values, keys, owners ---- */

/* Values: rstr_ref() and rstr_unref() take NULL; the last unref frees. */

static inline rstr_t *rstr_new(const char *s, size_t len) {
  rstr_t *v = xmalloc(sizeof *v + len + 1);
  v->refs = 1;
  v->len = len;
  memcpy(v->s, s, len);
  v->s[len] = '\0';
  return v;
}

static inline rstr_t *rstr_ref(rstr_t *v) {
  if (v) v->refs++;
  return v;
}

static inline void rstr_unref(rstr_t *v) {
  if (v && --v->refs == 0) free(v);
}

static inline int rstr_eq(const rstr_t *a, const char *s, size_t len) {
  return a && a->len == len && memcmp(a->s, s, len) == 0;
}

/* What etcd holds for k is now v (NULL: absent). */
void rkey_set_have(rkey_t *k, rstr_t *v);
int reconcile_in_prefix(const reconcile_t *r, const char *key);
/* The key's state, created (create != 0) when unknown. */
rkey_t *rkey_get(reconcile_t *r, const char *key, int create);
void rkey_free(rkey_t *k);
/* Forgets a key nobody wants that etcd does not hold (frees k). */
void rkey_maybe_drop(reconcile_t *r, rkey_t *k);
void rkey_set_failed(reconcile_t *r, rkey_t *k, int failed);
/* The newest owner's container id, image and name, or the last owner's
 * once it has gone (for log lines); NULL when it never had one. */
const char *rkey_owner_id(const rkey_t *k);
const char *rkey_owner_image(const rkey_t *k);
const char *rkey_owner_name(const rkey_t *k);
/* Drops a container and every owner link it has (their keys are touched);
 * frees c. */
void rcont_drop(reconcile_t *r, rcont_t *c);
/* Every undecided container adopts the orphans that name it (after a
 * listing: the keys etcd holds are known). */
void reconcile_adopt_all(reconcile_t *r);

/* ---- reconcile_queue.c: the queue and the requests ---- */

/* Puts k on the queue unless it is there already (a held key leaves its
 * held list: it is looked at again). */
void rkey_touch(reconcile_t *r, rkey_t *k);
/* Make-before-break.  A key that its last container no longer produces is
 * deleted only once every key that container produces now is in etcd
 * (acknowledged), or goes in the same v3 transaction as the last of them;
 * until then it waits on the container's held list.  A container that is
 * gone has no new keys: its deletes go at once. */
/* Queues c's held deletes again if its keys are in etcd now; with all != 0
 * unconditionally (c is going away). */
void rcont_release(reconcile_t *r, rcont_t *c, int all);
/* Touches every key (and clears their failed marks). */
void reconcile_touch_all(reconcile_t *r);
/* Works the queue as far as the concurrency allows; never re-entered. */
void reconcile_pump(reconcile_t *r);
void reconcile_check_converged(reconcile_t *r);
/* The machine's part of reconcile_new(): queue, timers, batching. */
void reconcile_queue_init(reconcile_t *r);
/* The machine's part of reconcile_free(): cancels the listing, the prefix
 * deletion and the transactions (no callbacks); then the state goes, and
 * reconcile_queue_close() closes the timers: r is freed with the last. */
void reconcile_queue_stop(reconcile_t *r);
void reconcile_queue_close(reconcile_t *r);

#endif

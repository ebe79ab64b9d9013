/* reconcile: the only code that writes to etcd, and the only owner of
 * "what was written" (include/reconcile.h has the contract).
 *
 * Two halves in one room, the state and the machine:
 *  - the state: per key, the owners that produce it (newest first) and
 *    what etcd holds; per container, its owner links; values shared by
 *    reference count.  reconcile_set() and reconcile_keep() change it and
 *    queue every key they touched;
 *  - the machine: a queue of keys (each at most once), what each key needs
 *    now (decide), requests with bounded concurrency, v3 transactions,
 *    backoff, refused keys' retry, listing the owned prefix (start-up and
 *    resync), TTL refresh, directory clean-up, the owned prefix deleted at
 *    deregistration.
 * They share every structure, so they are one file (they were two that
 * called each other). */
#include "reconcile.h"
#include "json.h"
#include "log.h"
#include "trace.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
  int counted; /* it has owners, and r->ncounted counts it */
  int daemon;  /* not a container: RECONCILE_DAEMON_OWNER (never counted) */
  int pending; /* a check of it is pending: r->npending counts it */
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
  unsigned owned_once : 1;   /* owned in this process: may go before sync */
  unsigned failed : 1;       /* refused by etcd; waits for a change/resync */
  unsigned refusal_said : 1; /* its refusal was said since it last went in */
  unsigned is_dir : 1;       /* an (empty) v2 directory to remove */
  unsigned again : 1;        /* touched while in flight: look again after */
  unsigned solo : 1;         /* a transaction with it failed: alone next time */
  unsigned orphan_ok : 1;    /* an orphan whose delete may go (orphans_wait) */
  unsigned filling : 1;      /* in the v3 transaction not sent yet (r->batch) */
  unsigned held : 1;         /* qnode is on a container's held list */
  /* what etcd holds became uncertain while a request of it was in flight:
   * the lease went (whatever the answer, the key may be gone), or a
   * listing skipped it (an answer other than OK leaves it unknown) */
  unsigned lease_stale : 1;
  unsigned list_stale : 1;
  unsigned act : 3;      /* act_t: the request in flight (a bit-field: the key
                          * stays 88 bytes with its list node) */
  unsigned sent_ds : 16; /* uv_now() / 100 when that request was started,
                          * modulo 2^16 (about 109 minutes) */
  unsigned mark;         /* listing generation that saw this key */
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

  unsigned refusals_said; /* keys whose refusal was said this episode */
  map_t *keys;            /* key -> rkey_t */
  map_t *dirs;            /* directory -> rkey_t (is_dir) */
  map_t *conts;           /* container id -> rcont_t */
  list_t queue; /* keys to look at (rkey_t.qnode), each at most once */
  size_t nqueued;
  size_t nheld;    /* deletes waiting on rcont_t.held lists */
  size_t nowned;   /* keys with at least one owner */
  size_t ncounted; /* containers with at least one owner (rcont_count) */
  int inflight;
  size_t nfailed;
  unsigned gen;

  int primed;      /* the prefix has been listed once */
  int ever_primed; /* a prefix was, in this process (the lease adopted) */
  int docker_synced;
  int hold_orphans; /* keys nobody produces are not deleted (a running
                       container's evaluation failed) */
  /* make-before-break for the keys nobody in this process produced (a
   * previous run's, under another policy, say): their deletes wait on
   * orphans.held until the containers' own keys are all written and no
   * container has a check pending (or ORPHANS_WAIT_MAX_MS has passed);
   * orphans.held is an rkey_t.qnode list, as a container's */
  rcont_t orphans;
  size_t npending; /* containers with a check pending (rcont_t.pending) */
  uv_timer_t orphans_timer; /* the wait's end at the latest */
  int was_converged;
  int ever_converged;
  double last_converged; /* wall clock, for /metrics */
  /* comparisons with etcd: a listing, then the convergence that repaired
   * what it found (reconcile_stats_t.compared) */
  int compare_pending;   /* a listing is in, its repairs not yet all done */
  double compared;       /* wall clock of the last comparison found equal */
  uint64_t drift;        /* keys a listing found otherwise than believed */
  uint64_t behind_since; /* uv_now() when it stopped being converged */
  uint64_t errors_at_converge; /* say "in sync" again after trouble */
  int pumping;
  etcd_op_t *list_op;
  int list_again; /* a resync was asked while a listing ran */
  uv_timer_t backoff_timer, refresh_timer, list_timer, flush_timer;
  uv_timer_t retry_timer; /* refused keys are tried again (retry_cb) */
  /* --dry-run: the writes "sent" in this loop iteration, acknowledged from
   * a zero timer (dry_cb), never inside the pump that sent them */
  uv_timer_t dry_timer;
  rkey_t **dry;
  size_t ndry, dry_cap;
  uint64_t retry_ms; /* its next delay; 0: the first */
  int paused;
  int key_refresh;      /* v2: TTLs are refreshed key by key */
  int batching;         /* v3: puts and deletes go in transactions */
  struct batch *batch;  /* the transaction being filled by reconcile_pump() */
  list_t batches;       /* transactions in flight (batch_t.node) */
  etcd_op_t *prefix_op; /* deleting the whole owned prefix */
  int outage;           /* etcd is unreachable: said once, not per key */
  uint64_t outage_ms;   /* uv_now() when the outage began */
  int ttl_warned;       /* v2: said that the keys have probably expired */
  char *list_refused;   /* why etcd refused the last listing, or NULL */
  unsigned failures;
  uint64_t list_backoff_ms;
  int open_handles;
  uint64_t puts, refreshes, deletes, errors;
  /* token -> rtok_t: the orphans whose key or value holds it as a whole
   * token (rcont_adopt); NULL until an adoption needs it */
  map_t *orphan_toks;
  int orphan_toks_busy; /* an adoption walks one of its lists */
};

/* ---- values, keys, owners (declared here: the machine below uses them) ----
 */

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
static void rkey_set_have(rkey_t *k, rstr_t *v);
static int reconcile_in_prefix(const reconcile_t *r, const char *key);
/* The key's state, created (create != 0) when unknown. */
static rkey_t *rkey_get(reconcile_t *r, const char *key, int create);
static void rkey_free(rkey_t *k);
/* Forgets a key nobody wants that etcd does not hold (frees k). */
static void rkey_maybe_drop(reconcile_t *r, rkey_t *k);
static void rkey_set_failed(reconcile_t *r, rkey_t *k, int failed);
/* The newest owner's container id, image and name, or the last owner's
 * once it has gone (for log lines); NULL when it never had one. */
static const char *rkey_owner_id(const rkey_t *k);
static const char *rkey_owner_image(const rkey_t *k);
static const char *rkey_owner_name(const rkey_t *k);
/* Drops a container and every owner link it has (their keys are touched);
 * frees c. */
static void rcont_drop(reconcile_t *r, rcont_t *c);
/* Every undecided container adopts the orphans that name it (after a
 * listing: the keys etcd holds are known). */
static void reconcile_adopt_all(reconcile_t *r);

/* ---- the machine: the queue and the requests ---- */

/* Puts k on the queue unless it is there already (a held key leaves its
 * held list: it is looked at again). */
static void rkey_touch(reconcile_t *r, rkey_t *k);
/* Make-before-break.  A key that its last container no longer produces is
 * deleted only once every key that container produces now is in etcd
 * (acknowledged), or goes in the same v3 transaction as the last of them;
 * until then it waits on the container's held list.  A container that is
 * gone has no new keys: its deletes go at once. */
/* Queues c's held deletes again if its keys are in etcd now; with all != 0
 * unconditionally (c is going away). */
static void rcont_release(reconcile_t *r, rcont_t *c, int all);
/* Touches every key (and clears their failed marks). */
static void reconcile_touch_all(reconcile_t *r);
/* Works the queue as far as the concurrency allows; never re-entered. */
static void reconcile_pump(reconcile_t *r);
static void reconcile_check_converged(reconcile_t *r);
/* The machine's part of reconcile_new(): queue, timers, batching. */
static void reconcile_queue_init(reconcile_t *r);
/* The machine's part of reconcile_free(): cancels the listing, the prefix
 * deletion and the transactions (no callbacks); then the state goes, and
 * reconcile_queue_close() closes the timers: r is freed with the last. */
static void reconcile_queue_stop(reconcile_t *r);
static void reconcile_queue_close(reconcile_t *r);

/* ==== the state ==== */

/* ---- values ---- */

static void orphans_drop(reconcile_t *r);

static void rkey_set_have(rkey_t *k, rstr_t *v) {
  /* what etcd holds of a key nobody owns: it may be an orphan now, or
   * name other tokens */
  if (!k->owners && !k->owned_once) orphans_drop(k->r);
  rstr_t *old = k->have;
  k->have = rstr_ref(v);
  rstr_unref(old);
  k->have_known = 1;
}

/* ---- keys ---- */

static int reconcile_in_prefix(const reconcile_t *r, const char *key) {
  if (!r->prefix) return 0;
  return strncmp(key, r->prefix, r->prefix_len) == 0 &&
         (key[r->prefix_len] == '/' || key[r->prefix_len] == '\0');
}

static rkey_t *rkey_get(reconcile_t *r, const char *key, int create) {
  rkey_t *k = map_get(r->keys, key);
  if (k || !create) return k;
  k = xcalloc(1, sizeof *k);
  k->r = r;
  k->key = xstrdup(key);
  /* after the listing, absence from it (and from the map) means absent */
  if (r->primed && reconcile_in_prefix(r, key)) k->have_known = 1;
  map_put(r->keys, k->key, k);
  return k;
}

static void rkey_free(rkey_t *k) {
  orphans_drop(k->r); /* its lists may hold k */
  rstr_unref(k->have);
  rstr_unref(k->sent);
  free(k->gone_id);
  free(k->key);
  free(k);
}

/* Forgets a key nobody wants that etcd does not hold. */
static void rkey_maybe_drop(reconcile_t *r, rkey_t *k) {
  if (k->owners || list_linked(&k->qnode) || k->inflight)
    return; /* wanted, queued or held, or in flight */
  if (!k->is_dir && !(k->have_known && !k->have)) return;
  if (k->failed) r->nfailed--;
  map_del(k->is_dir ? r->dirs : r->keys, k->key);
  rkey_free(k);
}

static void rkey_set_failed(reconcile_t *r, rkey_t *k, int failed) {
  if (k->failed == (unsigned)!!failed) return;
  k->failed = !!failed;
  if (failed)
    r->nfailed++;
  else
    r->nfailed--;
}

static const char *rkey_owner_id(const rkey_t *k) {
  return k->owners ? k->owners->cont->id : k->gone_id;
}

static const char *rkey_owner_image(const rkey_t *k) {
  if (k->owners) return k->owners->cont->image;
  return k->gone_id ? k->gone_id + strlen(k->gone_id) + 1 : NULL;
}

static const char *rkey_owner_name(const rkey_t *k) {
  if (k->owners) return k->owners->cont->name;
  const char *img = rkey_owner_image(k);
  return img ? img + strlen(img) + 1 : NULL;
}

/* ---- owners ---- */

static void owner_detach(reconcile_t *r, owner_t *o) {
  rkey_t *k = o->key;
  for (owner_t **pp = &k->owners; *pp; pp = &(*pp)->knext) {
    if (*pp == o) {
      *pp = o->knext;
      break;
    }
  }
  k->owned_once = 1;
  if (!k->owners) {
    r->nowned--;
    free(k->gone_id);
    const rcont_t *c = o->cont;
    size_t il = strlen(c->id), ml = strlen(c->image), nl = strlen(c->name);
    k->gone_id = xmalloc(il + ml + nl + 3);
    memcpy(k->gone_id, c->id, il + 1);
    memcpy(k->gone_id + il + 1, c->image, ml + 1);
    memcpy(k->gone_id + il + ml + 2, c->name, nl + 1);
  }
  rkey_set_failed(r, k, 0);
  rkey_touch(r, k);
  rstr_unref(o->value);
  free(o);
}

static void free_strv(char ***v, size_t *n) {
  for (size_t i = 0; i < *n; i++)
    free((*v)[i]);
  free(*v);
  *v = NULL;
  *n = 0;
}

static void rcont_forget_tokens(rcont_t *c) {
  free_strv(&c->tokens, &c->ntokens);
  free_strv(&c->claims, &c->nclaims);
}

/* Keeps r->ncounted right after c's owners changed: a container that
 * failed and has nothing yet (an rcont_t for its tokens) is not counted. */
static void rcont_count(reconcile_t *r, rcont_t *c) {
  int has = c->owners != NULL && !c->daemon;
  if (has == c->counted) return;
  c->counted = has;
  if (has)
    r->ncounted++;
  else
    r->ncounted--;
}

static void rcont_set_pending(reconcile_t *r, rcont_t *c, int pending) {
  if (c->pending == !!pending) return;
  c->pending = !!pending;
  if (pending)
    r->npending++;
  else
    r->npending--;
}

static void rcont_drop(reconcile_t *r, rcont_t *c) {
  rcont_set_pending(r, c, 0);
  rcont_release(r, c, 1); /* gone: nothing new to wait for */
  while (c->owners) {
    owner_t *o = c->owners;
    c->owners = o->cnext;
    owner_detach(r, o);
  }
  rcont_count(r, c);
  map_del(r->conts, c->id);
  rcont_forget_tokens(c);
  free(c->id);
  free(c->image);
  free(c->name);
  free(c);
}

/* c produces k with this value (generation gen): a new owner, or the
 * owner it had, moved to the front (the newest owner's value wins). */
static void owner_put(reconcile_t *r, rcont_t *c, rkey_t *k, const char *value,
                      size_t vlen, unsigned gen) {
  int had_owner = k->owners != NULL;
  owner_t *o = NULL;
  for (owner_t *x = k->owners; x; x = x->knext)
    if (x->cont == c) o = x;
  if (o && rstr_eq(o->value, value, vlen)) {
    o->seen = gen;
    return;
  }
  if (!o) {
    o = xcalloc(1, sizeof *o);
    o->key = k;
    o->cont = c;
    o->cnext = c->owners;
    c->owners = o;
  } else {
    rstr_unref(o->value);
    for (owner_t **pp = &k->owners; *pp; pp = &(*pp)->knext) {
      if (*pp == o) {
        *pp = o->knext;
        break;
      }
    }
  }
  /* share the bytes etcd already holds when they are the same */
  o->value =
      rstr_eq(k->have, value, vlen) ? rstr_ref(k->have) : rstr_new(value, vlen);
  o->seen = gen;
  if (!had_owner) r->nowned++;
  o->knext = k->owners;
  k->owners = o;
  free(k->gone_id);
  k->gone_id = NULL;
  rkey_set_failed(r, k, 0);
  rkey_touch(r, k);
}

static void set_str(char **dst, const char *s) {
  if (*dst && strcmp(*dst, s ? s : "") == 0) return;
  free(*dst);
  *dst = xstrdup(s ? s : "");
}

static rcont_t *rcont_get(reconcile_t *r, const char *id, const char *image,
                          const char *name) {
  rcont_t *c = map_get(r->conts, id);
  if (!c) {
    c = xcalloc(1, sizeof *c);
    c->id = xstrdup(id);
    c->daemon = strncmp(id, RECONCILE_DAEMON_OWNER,
                        sizeof RECONCILE_DAEMON_OWNER - 1) == 0;
    list_init(&c->held);
    map_put(r->conts, c->id, c);
  }
  set_str(&c->image, image);
  set_str(&c->name, name);
  return c;
}

void reconcile_set(reconcile_t *r, const char *id, const char *image,
                   const char *name, const records_t *recs) {
  rcont_t *c = map_get(r->conts, id);
  if (!recs || recs->n == 0) {
    if (c) rcont_drop(r, c);
    reconcile_pump(r);
    return;
  }
  c = rcont_get(r, id, image, name);
  rcont_set_pending(r, c, 0);
  rcont_forget_tokens(c); /* final: what it does not produce now goes */
  unsigned gen = ++r->gen;
  for (size_t i = 0; i < recs->n; i++)
    owner_put(r, c, rkey_get(r, recs->v[i].key, 1), recs->v[i].value,
              recs->v[i].value_len, gen);
  for (owner_t **pp = &c->owners; *pp;) {
    owner_t *o = *pp;
    if (o->seen == gen) {
      pp = &o->cnext;
      continue;
    }
    *pp = o->cnext;
    owner_detach(r, o);
  }
  rcont_count(r, c);
  /* a key it wants again, or one it no longer wants, may end a wait */
  rcont_release(r, c, 0);
  reconcile_pump(r);
}

/* ---- undecided containers: keep what they have, adopt what names them */

static int token_char(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-';
}

/* Does s[0..n) hold tok as a whole token? */
static int names_token(const char *s, size_t n, const char *tok) {
  size_t tn = strlen(tok);
  if (tn == 0 || tn > n) return 0;
  for (size_t i = 0; i + tn <= n; i++) {
    if (s[i] != tok[0] || memcmp(s + i, tok, tn) != 0) continue;
    if ((i == 0 || !token_char(s[i - 1])) &&
        (i + tn == n || !token_char(s[i + tn])))
      return 1;
  }
  return 0;
}

/* The orphans' tokens.  Adoption looks for a container's id, short id
 * and name in the orphans' keys and values; scanning every key for every
 * undecided container is quadratic (a policy that fails everywhere, on a
 * host of 6,000 containers, cost 40 s of CPU at start-up).  So an index
 * maps each whole token of an orphan's key and value to the orphans that
 * hold it.  It is built at the first adoption that needs it, so about
 * once per listing, and dropped when an orphan may have changed (what etcd
 * holds of a key nobody owns, a key freed, the prefix) or, once Docker's
 * list is complete, after each adoption or pass of them (orphans_done()). */
typedef struct {
  char *tok;     /* also the map key */
  rkey_t **keys; /* not owned: the index is dropped before any is freed */
  size_t n, cap;
} rtok_t;

static void orphans_drop(reconcile_t *r) {
  if (!r->orphan_toks) return;
  REGISTER_ASSERT(!r->orphan_toks_busy); /* not under an adoption's walk */
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->orphan_toks);
  while (map_iter_next(&it, NULL, &v)) {
    rtok_t *t = v;
    free(t->keys);
    free(t->tok);
    free(t);
  }
  map_free(r->orphan_toks);
  r->orphan_toks = NULL;
}

/* An orphan as far as the index goes: the rest (in flight, a directory)
 * may change without a drop, and is looked at when it is used. */
static int orphan_indexed(const reconcile_t *r, const rkey_t *k) {
  return !k->owners && !k->owned_once && k->have_known && k->have &&
         reconcile_in_prefix(r, k->key);
}

static int adoptable(const reconcile_t *r, const rkey_t *k) {
  return orphan_indexed(r, k) && !k->inflight && !k->is_dir;
}

static void index_tokens(map_t *m, const char *s, size_t n, rkey_t *k) {
  size_t i = 0;
  while (i < n) {
    if (!token_char(s[i])) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < n && token_char(s[j]))
      j++;
    char small[128];
    char *tok = j - i < sizeof small ? small : xmalloc(j - i + 1);
    memcpy(tok, s + i, j - i);
    tok[j - i] = '\0';
    rtok_t *t = map_get(m, tok);
    if (!t) {
      t = xcalloc(1, sizeof *t);
      t->tok = xstrdup(tok);
      map_put(m, t->tok, t);
    }
    if (tok != small) free(tok);
    if (!t->n || t->keys[t->n - 1] != k) { /* once per key */
      if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 2;
        t->keys = xrealloc(t->keys, t->cap * sizeof *t->keys);
      }
      t->keys[t->n++] = k;
    }
    i = j;
  }
}

static void orphans_index(reconcile_t *r) {
  r->orphan_toks = map_new();
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->keys);
  while (map_iter_next(&it, NULL, &v)) {
    rkey_t *k = v;
    if (!orphan_indexed(r, k)) continue;
    index_tokens(r->orphan_toks, k->key, strlen(k->key), k);
    index_tokens(r->orphan_toks, k->have->s, k->have->len, k);
  }
}

/* A whole token only ever matches one run of token characters; a name
 * with other characters in it is looked for the slow way. */
static int plain_token(const char *tok) {
  if (!*tok) return 0;
  for (const char *p = tok; *p; p++)
    if (!token_char(*p)) return 0;
  return 1;
}

static void adopt_one(reconcile_t *r, rcont_t *c, rkey_t *k, unsigned gen) {
  rstr_t *have = rstr_ref(k->have);
  owner_put(r, c, k, have->s, have->len, gen);
  rstr_unref(have);
}

/* The orphans that name c become c's, at the value etcd holds.  An orphan
 * is a key under the prefix that etcd holds, that nothing produces and
 * that this process never owned (it knows where those came from). */
static void rcont_adopt(reconcile_t *r, rcont_t *c) {
  if ((!c->ntokens && !c->nclaims) || !r->primed || !r->prefix) return;
  unsigned gen = ++r->gen;
  size_t adopted = 0;
  for (size_t i = 0; i < c->nclaims; i++) {
    rkey_t *k = map_get(r->keys, c->claims[i]);
    if (k && adoptable(r, k)) {
      adopt_one(r, c, k, gen);
      adopted++;
    }
  }
  for (size_t i = 0; i < c->ntokens; i++) {
    const char *tok = c->tokens[i];
    if (!plain_token(tok)) {
      map_iter_t it;
      void *v;
      map_iter_init(&it, r->keys);
      while (map_iter_next(&it, NULL, &v)) {
        rkey_t *k = v;
        if (adoptable(r, k) && (names_token(k->key, strlen(k->key), tok) ||
                                names_token(k->have->s, k->have->len, tok))) {
          adopt_one(r, c, k, gen);
          adopted++;
        }
      }
      continue;
    }
    if (!r->orphan_toks) orphans_index(r);
    rtok_t *t = map_get(r->orphan_toks, tok);
    r->orphan_toks_busy = 1; /* owner_put() frees no key, drops no index */
    for (size_t j = 0; t && j < t->n; j++) {
      if (!adoptable(r, t->keys[j])) continue; /* adopted, in flight */
      adopt_one(r, c, t->keys[j], gen);
      adopted++;
    }
    r->orphan_toks_busy = 0;
  }
  if (adopted) {
    char n[32];
    snprintf(n, sizeof n, "%zu", adopted);
    log_fields(LOG_INFO,
               "keeping the keys in etcd that name a container whose "
               "evaluation is not final",
               "container", c->id, "keys", n, NULL);
  }
}

/* Once Docker's list is complete few adoptions come: the index is not
 * kept between them (no memory held for it). */
static void orphans_done(reconcile_t *r) {
  if (r->docker_synced) orphans_drop(r);
}

static void reconcile_adopt_all(reconcile_t *r) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->conts);
  while (map_iter_next(&it, NULL, &v)) {
    rcont_adopt(r, v); /* one index for them all */
    rcont_count(r, v);
  }
  orphans_done(r);
}

void reconcile_keep(reconcile_t *r, const char *id, const char *image,
                    const char *name, const records_t *recs,
                    const records_t *claims) {
  rcont_t *c = rcont_get(r, id, image, name);
  rcont_set_pending(r, c, recs != NULL); /* else its call failed */
  free_strv(&c->claims, &c->nclaims);
  if (claims && claims->n) {
    c->claims = xcalloc(claims->n, sizeof *c->claims);
    for (size_t i = 0; i < claims->n; i++)
      c->claims[c->nclaims++] = xstrdup(claims->v[i].key);
  }
  if (!c->ntokens) {
    const char *toks[3] = {id, NULL, name && *name ? name : NULL};
    char shortid[13];
    if (strlen(id) > 12) {
      memcpy(shortid, id, 12);
      shortid[12] = '\0';
      toks[1] = shortid;
    }
    c->tokens = xcalloc(3, sizeof *c->tokens);
    for (size_t i = 0; i < 3; i++)
      if (toks[i]) c->tokens[c->ntokens++] = xstrdup(toks[i]);
  }
  if (recs && recs->n) {
    unsigned gen = ++r->gen;
    for (size_t i = 0; i < recs->n; i++)
      owner_put(r, c, rkey_get(r, recs->v[i].key, 1), recs->v[i].value,
                recs->v[i].value_len, gen);
  }
  rcont_adopt(r, c);
  orphans_done(r);
  rcont_count(r, c);
  rcont_release(r, c, 0);
  reconcile_pump(r);
}

void reconcile_hold_orphans(reconcile_t *r, int hold) {
  if (r->hold_orphans == !!hold) return;
  r->hold_orphans = !!hold;
  if (!hold) reconcile_touch_all(r); /* the stale ones may go now */
  reconcile_pump(r);
}

/* ---- life cycle ---- */

reconcile_t *reconcile_new(const reconcile_opts_t *o) {
  reconcile_t *r = xcalloc(1, sizeof *r);
  r->loop = o->loop;
  r->etcd = o->etcd;
  if (o->prefix) {
    r->prefix = xstrdup(o->prefix);
    r->prefix_len = strlen(r->prefix);
  }
  r->ttl = o->ttl;
  r->max_inflight = o->max_inflight > 0 ? o->max_inflight : 64;
  r->dry_run = o->dry_run;
  r->changed = o->changed;
  r->converged_cb = o->converged;
  r->ud = o->ud;
  r->keys = map_new();
  r->dirs = map_new();
  r->conts = map_new();
  reconcile_queue_init(r);
  return r;
}

/* The wall clock, for /metrics' timestamps. */
static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void reconcile_stats(const reconcile_t *r, reconcile_stats_t *s) {
  memset(s, 0, sizeof *s);
  s->keys = r->nowned; /* kept as owners come and go: O(1), called often */
  s->containers = r->ncounted;
  s->queued = r->nqueued + r->nheld; /* held deletes wait too */
  s->inflight = (size_t)r->inflight;
  s->failed = r->nfailed;
  s->puts = r->puts;
  s->refreshes = r->refreshes;
  s->deletes = r->deletes;
  s->errors = r->errors;
  s->converged = reconcile_converged(r);
  /* in sync now: it is true now */
  s->last_converged = s->converged ? wall_now() : r->last_converged;
  s->compared = r->compared;
  s->drift = r->drift;
  s->list_refused = r->list_refused;
  s->behind_ms =
      !s->converged && r->behind_since ? uv_now(r->loop) - r->behind_since : 0;
}

static void free_keys(map_t *m) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, m);
  while (map_iter_next(&it, NULL, &v)) {
    rkey_t *k = v;
    if (k->op) etcd_cancel(k->op);
    rkey_free(k);
  }
  map_free(m);
}

void reconcile_free(reconcile_t *r) {
  if (!r) return;
  reconcile_queue_stop(r);
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->conts);
  while (map_iter_next(&it, NULL, &v)) {
    rcont_t *c = v;
    while (c->owners) {
      owner_t *o = c->owners;
      c->owners = o->cnext;
      rstr_unref(o->value);
      free(o);
    }
    rcont_forget_tokens(c);
    free(c->id);
    free(c->image);
    free(c->name);
    free(c);
  }
  map_free(r->conts);
  orphans_drop(r);
  free_keys(r->keys);
  free_keys(r->dirs);
  free(r->prefix);
  free(r->list_refused);
  r->list_refused = NULL;
  reconcile_queue_close(r); /* r is freed with the last timer */
}

/* ==== the machine ==== */

#define BATCH_BYTES (512u << 10) /* values in one v3 transaction, at most */
#define BATCHES_IN_FLIGHT 16
#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 5000
#define PROBE_MS 250       /* nothing of etcd listens: see backoff() */
#define RETRY_MIN_MS 1000  /* a key etcd refused is tried again after this, */
#define RETRY_MAX_MS 30000 /* doubling to this while it is still refused */
#define REFUSALS_SAID 20   /* keys whose refusal is said, an episode */
#define ORPHANS_WAIT_MAX_MS 20000 /* see orphans_wait() */

static void reconcile_list_start(reconcile_t *r);

/* ---- the queue ---- */

static void rkey_unhold(reconcile_t *r, rkey_t *k);

static void rkey_touch(reconcile_t *r, rkey_t *k) {
  rkey_unhold(r, k);                  /* looked at again now */
  if (list_linked(&k->qnode)) return; /* queued at most once */
  list_insert_tail(&r->queue, &k->qnode);
  r->nqueued++;
}

static void reconcile_touch_all(reconcile_t *r) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->keys);
  while (map_iter_next(&it, NULL, &v)) {
    rkey_t *k = v;
    if (k->failed) {
      k->failed = 0;
      r->nfailed--;
    }
    rkey_touch(r, k);
  }
}

/* ---- make-before-break ---- */

enum { NEW_IN_ETCD, NEW_IN_BATCH, NEW_PENDING };

/* Where the keys c produces are: all in etcd, the missing ones all in the
 * v3 transaction being filled (a delete may join it: one revision), or
 * some still to be written. */
static int rcont_new_keys(const rcont_t *c) {
  int where = NEW_IN_ETCD;
  for (const owner_t *o = c->owners; o; o = o->cnext) {
    const rkey_t *k = o->key;
    /* a consumer sees it (maybe with an older value); not when what is
     * known may be from before a lost lease or a listing that its request
     * crossed (key_settle() will tell) */
    if (k->have_known && k->have && !(k->inflight && k->act == ACT_DELETE) &&
        !k->lease_stale && !k->list_stale)
      continue;
    if (k->filling && k->act == ACT_PUT) {
      where = NEW_IN_BATCH;
      continue;
    }
    return NEW_PENDING;
  }
  return where;
}

/* v2 keeps keys and directories apart: a key cannot be written while a
 * path above it is a key, nor while it is itself a directory.  1 when old
 * (a key c no longer produces) stands in the way of a key c produces now
 * (one a path below the other): make-before-break cannot hold for that
 * pair, the new key waits for the old one to go. */
static int rcont_blocked_by(const reconcile_t *r, const rcont_t *c,
                            const char *old) {
  if (!r->etcd || !etcd_has_dirs(r->etcd)) return 0;
  size_t ol = strlen(old);
  for (const owner_t *o = c->owners; o; o = o->cnext) {
    const char *nk = o->key->key;
    size_t nl = strlen(nk);
    if ((nl > ol && strncmp(nk, old, ol) == 0 && nk[ol] == '/') ||
        (ol > nl && strncmp(old, nk, nl) == 0 && old[nl] == '/'))
      return 1;
  }
  return 0;
}

/* A held key's qnode is on its container's held list instead of r->queue:
 * a key is queued, held, or neither. */
static void rkey_unhold(reconcile_t *r, rkey_t *k) {
  if (!k->held) return;
  list_remove(&k->qnode);
  k->held = 0;
  r->nheld--;
}

/* k was just taken off the queue. */
static void rkey_hold(reconcile_t *r, rkey_t *k, rcont_t *c) {
  REGISTER_ASSERT(!k->held && !list_linked(&k->qnode));
  list_insert_tail(&c->held, &k->qnode);
  k->held = 1;
  r->nheld++;
}

static void rcont_release(reconcile_t *r, rcont_t *c, int all) {
  if (list_empty(&c->held) || (!all && rcont_new_keys(c) == NEW_PENDING))
    return;
  list_t *n;
  while ((n = list_first(&c->held)))
    rkey_touch(r, list_entry(n, rkey_t, qnode)); /* unholds it */
}

/* ---- converged ---- */

int reconcile_converged(const reconcile_t *r) {
  return r->primed && r->docker_synced && list_empty(&r->queue) &&
         !uv_is_active((const uv_handle_t *)&r->list_timer) && r->nheld == 0 &&
         r->inflight == 0 && r->nfailed == 0 && !r->paused && !r->list_op &&
         !r->prefix_op && !r->batch;
}

static void reconcile_check_converged(reconcile_t *r) {
  int now = reconcile_converged(r);
  if (now) { /* the next refusal starts at 1 s again, and is said */
    r->retry_ms = 0;
    r->refusals_said = 0;
  }
  if (!now && (r->was_converged || !r->behind_since))
    r->behind_since = uv_now(r->loop);
  if (now || r->was_converged) { /* in sync now, or until now */
    r->last_converged = wall_now();
  }
  if (now) {
    r->behind_since = 0;
    if (r->compare_pending) { /* listed, and every difference repaired */
      r->compare_pending = 0;
      r->compared = r->last_converged;
    }
  }
  if (now && !r->was_converged) {
    reconcile_stats_t st;
    reconcile_stats(r, &st);
    if (!r->ever_converged || r->errors != r->errors_at_converge)
      log_info("in sync: %zu keys from %zu containers", st.keys, st.containers);
    else
      log_debug("in sync: %zu keys from %zu containers", st.keys,
                st.containers);
    r->ever_converged = 1;
    r->errors_at_converge = r->errors;
    r->was_converged = 1;
    if (r->converged_cb) r->converged_cb(r->ud);
    return;
  }
  r->was_converged = now;
}

/* ---- backoff ---- */

/* Writes pause after a failure: 200 ms doubling to 5 s, jittered (a half
 * to all of it); but while no etcd endpoint even takes a connection (every
 * member down or restarting: etcd_result_t.refused), 125-250 ms, which
 * costs etcd nothing and does not lengthen the pause for what follows (a
 * member without a leader yet): the writes an outage held go within a
 * fraction of a second of etcd's return, not at the end of a 5 s pause.  The
 * pause counts from when the failed request was sent: one that hung through its
 * whole budget (a partition, a member without a leader) has waited already, so
 * the next goes after a little jitter and a host cut off always has a request
 * out to notice the heal.  The first write that etcd answers again ends the
 * pause (see resume()). */
#define RESUME_JITTER_MS 100

static void backoff_cb(uv_timer_t *t) {
  reconcile_t *r = t->data;
  r->paused = 0;
  reconcile_pump(r);
}

static void backoff(reconcile_t *r, uint64_t waited_ms, int refused) {
  if (r->paused) return;
  r->paused = 1;
  uint64_t d = PROBE_MS;
  if (!refused) {
    d = (uint64_t)BACKOFF_MIN_MS << (r->failures < 8 ? r->failures : 8);
    if (d > BACKOFF_MAX_MS) d = BACKOFF_MAX_MS;
    r->failures++;
  }
  d = d / 2 + util_rand((uint32_t)d / 2 + 1);
  d = d > waited_ms + RESUME_JITTER_MS ? d - waited_ms
                                       : util_rand(RESUME_JITTER_MS + 1);
  uv_timer_start(&r->backoff_timer, backoff_cb, d, 0);
}

/* rkey_t.sent_ds: tenths of a second, modulo 2^16 */
static unsigned sent_stamp(const reconcile_t *r) {
  return (unsigned)(uv_now(r->loop) / 100) & 0xffffu;
}

static uint64_t waited_ms(const reconcile_t *r, const rkey_t *k) {
  return (uint64_t)((sent_stamp(r) - k->sent_ds) & 0xffffu) * 100;
}

/* etcd answered a write: what still waits out a pause goes now, after a
 * little jitter so that hosts coming back together do not write in
 * lock-step. */
static void resume(reconcile_t *r) {
  if (!r->paused) return;
  uint64_t j = util_rand(RESUME_JITTER_MS + 1);
  if (uv_timer_get_due_in(&r->backoff_timer) > j)
    uv_timer_start(&r->backoff_timer, backoff_cb, j, 0);
}

/* ---- requests ---- */

static void dry_print(const char *op, const rkey_t *k, const rstr_t *v) {
  buf_t b;
  buf_init(&b);
  buf_puts(&b, "{\"op\":");
  json_escape(&b, op, strlen(op));
  buf_puts(&b, ",\"key\":");
  json_escape(&b, k->key, strlen(k->key));
  if (v) {
    buf_puts(&b, ",\"value\":");
    json_escape(&b, v->s, v->len);
  }
  const char *id = rkey_owner_id(k);
  if (id) {
    buf_puts(&b, ",\"container\":");
    json_escape(&b, id, strlen(id));
  }
  buf_puts(&b, "}\n");
  fwrite(b.data, 1, b.len, stdout);
  fflush(stdout);
  buf_free(&b);
}

/* The parent directory of a key, if it is still inside the prefix. */
static void queue_parent_dir(reconcile_t *r, const char *key) {
  if (!r->etcd || !etcd_has_dirs(r->etcd) || !r->prefix) return;
  const char *slash = strrchr(key, '/');
  if (!slash || slash == key) return;
  size_t n = (size_t)(slash - key);
  if (n < r->prefix_len) return;
  char *dir = xstrndup(key, n);
  if (!reconcile_in_prefix(r, dir)) {
    free(dir);
    return;
  }
  rkey_t *d = map_get(r->dirs, dir);
  if (!d) {
    d = xcalloc(1, sizeof *d);
    d->r = r;
    d->key = dir;
    d->is_dir = 1;
    map_put(r->dirs, d->key, d);
  } else {
    free(dir);
  }
  rkey_touch(r, d);
}

static void reconcile_op_done(void *data, const etcd_result_t *res);
static void key_done(rkey_t *k, const etcd_result_t *res);
static uint64_t retry_delay(const reconcile_t *r);
static void retry_arm(reconcile_t *r);

/* A v3 transaction of puts and deletes, counted as one request. */
typedef struct batch {
  reconcile_t *r;
  etcd_op_t *op; /* the transaction in flight */
  list_t node;   /* on r->batches while in flight, owned there */
  size_t n, bytes;
  rkey_t *keys[ETCD_TXN_MAX];
} batch_t;

/* A request of k has ended (applied: etcd said OK): what a lease loss or a
 * listing during it left uncertain is unknown now, and will be looked at
 * (a put goes again, a delete too; both are idempotent). */
static void key_settle(rkey_t *k, int applied) {
  if (k->lease_stale || (k->list_stale && !applied)) k->have_known = 0;
  k->lease_stale = k->list_stale = 0;
}

/* A request of k has ended, whatever its result: the deletes that k's
 * containers hold back may go now (a key they want again while its delete
 * was in flight counted as missing; a failed delete leaves it in etcd,
 * and no acknowledgement of a put would come to release them). */
static void release_owners(reconcile_t *r, rkey_t *k) {
  for (owner_t *o = k->owners; o; o = o->knext)
    rcont_release(r, o->cont, 0);
}

static void batch_done(void *data, const etcd_result_t *res) {
  batch_t *b = data;
  reconcile_t *r = b->r;
  REGISTER_ASSERT(r->inflight > 0 && b->n > 0); /* one answer per batch */
  list_remove(&b->node);
  r->inflight--;
  if (res->status == ETCD_FAILED && b->n > 1) {
    /* one bad key fails them all: try each alone to find it */
    log_fields(LOG_DEBUG,
               "etcd refused a transaction; writing its keys one "
               "by one",
               "error", res->error, NULL);
    for (size_t i = 0; i < b->n; i++) {
      rkey_t *k = b->keys[i];
      k->inflight = 0;
      k->act = ACT_NONE;
      k->solo = 1;
      key_settle(k, 0);
      rkey_touch(r, k);
      release_owners(r, k);
    }
  } else {
    for (size_t i = 0; i < b->n; i++)
      key_done(b->keys[i], res);
  }
  free(b);
  reconcile_pump(r);
}

static void batch_flush(reconcile_t *r) {
  batch_t *b = r->batch;
  if (!b) return;
  r->batch = NULL;
  etcd_txn_item_t items[ETCD_TXN_MAX];
  for (size_t i = 0; i < b->n; i++) {
    rkey_t *k = b->keys[i];
    k->filling = 0;
    k->sent_ds = sent_stamp(r);
    items[i].is_delete = k->act == ACT_DELETE;
    items[i].key = k->key;
    items[i].value = k->sent ? k->sent->s : NULL;
    items[i].vlen = k->sent ? k->sent->len : 0;
    trace_mark(rkey_owner_id(k), TRACE_WRITE_SENT);
  }
  r->inflight++;
  list_insert_head(&r->batches, &b->node);
  b->op = etcd_txn(r->etcd, items, b->n, batch_done, b);
  REGISTER_ASSERT(b->op); /* etcd always returns one: it fails from the loop */
}

/* One of the daemon's own keys outside the owned prefix (the fleet's
 * report): after the first listing of this process it need not wait for a
 * new prefix's (a revision's prefix that etcd will not list kept the report
 * that would say so from being written). */
static int daemon_key(const reconcile_t *r, const rkey_t *k) {
  return k->owners && !reconcile_in_prefix(r, k->key) &&
         strncmp(k->owners->cont->id, RECONCILE_DAEMON_OWNER,
                 strlen(RECONCILE_DAEMON_OWNER)) == 0;
}

/* What decide() promises, at the moment a request is made: one request
 * per key at a time, none before the listing (writes are diffs; a v2
 * directory of the old prefix may go meanwhile; the daemon's own keys
 * outside the prefix after the first), a put has an owner's
 * value, and no key this process never owned is deleted before Docker's
 * truth is complete or while orphans are held (reconcile.h). */
static void sendable(const reconcile_t *r, const rkey_t *k, act_t act) {
  REGISTER_ASSERT(!k->inflight && !k->held && !list_linked(&k->qnode));
  REGISTER_ASSERT(r->primed || act == ACT_RMDIR ||
                  (r->ever_primed && daemon_key(r, k)));
  REGISTER_ASSERT(act != ACT_PUT || k->owners);
  REGISTER_ASSERT(act != ACT_DELETE || k->owned_once ||
                  (r->docker_synced && !r->hold_orphans));
}

/* Adds a put or delete to the transaction being filled; sends it when
 * full.  Returns 0 if the key was taken. */
static int batch_add(reconcile_t *r, rkey_t *k, act_t act) {
  if (!r->batching || k->solo || (act != ACT_PUT && act != ACT_DELETE))
    return -1;
  sendable(r, k, act);
  rstr_t *want = k->owners ? k->owners->value : NULL;
  size_t len = act == ACT_PUT ? want->len : 0;
  if (r->batch && r->batch->bytes + len > BATCH_BYTES) batch_flush(r);
  if (!r->batch) {
    r->batch = xcalloc(1, sizeof *r->batch);
    r->batch->r = r;
  }
  k->act = act;
  k->inflight = 1;
  k->filling = 1;
  rstr_unref(k->sent);
  k->sent = act == ACT_PUT ? rstr_ref(want) : NULL;
  r->batch->keys[r->batch->n++] = k;
  r->batch->bytes += len;
  if (r->batch->n == ETCD_TXN_MAX) batch_flush(r);
  return 0;
}

/* --dry-run: what was "sent" is acknowledged now, from the loop.  Each
 * run acknowledges at least one key (the zero-timer contract); what the
 * acknowledgements queue again comes in a later run. */
static void dry_cb(uv_timer_t *t) {
  reconcile_t *r = t->data;
  size_t n = r->ndry;
  rkey_t **keys = r->dry;
  r->dry = NULL;
  r->ndry = r->dry_cap = 0;
  static const etcd_result_t ok = {ETCD_OK, NULL, 0, 0};
  for (size_t i = 0; i < n; i++)
    reconcile_op_done(keys[i], &ok);
  free(keys);
}

static void issue(reconcile_t *r, rkey_t *k, act_t act) {
  sendable(r, k, act);
  rstr_t *want = k->owners ? k->owners->value : NULL;
  k->act = act;
  k->inflight = 1;
  k->sent_ds = sent_stamp(r);
  r->inflight++;
  rstr_unref(k->sent);
  k->sent = act == ACT_PUT ? rstr_ref(want) : NULL;
  if (r->dry_run) {
    if (act == ACT_PUT)
      dry_print("put", k, want);
    else if (act == ACT_DELETE)
      dry_print("delete", k, NULL);
    if (r->ndry == r->dry_cap) {
      r->dry_cap = r->dry_cap ? 2 * r->dry_cap : 16;
      r->dry = xrealloc(r->dry, r->dry_cap * sizeof *r->dry);
    }
    r->dry[r->ndry++] = k;
    if (!uv_is_active((uv_handle_t *)&r->dry_timer))
      uv_timer_start(&r->dry_timer, dry_cb, 0, 0);
    return;
  }
  if (act == ACT_PUT || act == ACT_DELETE)
    trace_mark(rkey_owner_id(k), TRACE_WRITE_SENT);
  switch (act) {
  case ACT_PUT:
    k->op = etcd_put(r->etcd, k->key, want->s, want->len, r->ttl,
                     reconcile_op_done, k);
    break;
  case ACT_REFRESH:
    k->op = etcd_refresh(r->etcd, k->key, r->ttl, reconcile_op_done, k);
    break;
  case ACT_DELETE:
    k->op = etcd_delete(r->etcd, k->key, reconcile_op_done, k);
    break;
  case ACT_RMDIR:
    k->op = etcd_delete_dir(r->etcd, k->key, reconcile_op_done, k);
    break;
  case ACT_NONE:
  case ACT_HOLD:
    break;
  }
  REGISTER_ASSERT(k->op); /* etcd always returns one: it fails from the loop */
}

static void log_change(const char *what, const rkey_t *k) {
  const char *name = rkey_owner_name(k);
  log_fields(LOG_INFO, what, "key", k->key, "container", rkey_owner_id(k),
             "image", rkey_owner_image(k), "name", name && *name ? name : NULL,
             NULL);
}

static void reconcile_op_done(void *data, const etcd_result_t *res) {
  rkey_t *k = data;
  REGISTER_ASSERT(k->r->inflight > 0 && (k->op || k->r->dry_run));
  k->op = NULL;
  k->r->inflight--;
  key_done(k, res);
}

/* etcd stopped answering (a write or the listing found it first). */
static void outage_begin(reconcile_t *r) {
  r->outage = 1;
  r->outage_ms = uv_now(r->loop);
  r->ttl_warned = 0;
}

/* One key's write or delete has a result (alone or in a transaction). */
static void key_done(rkey_t *k, const etcd_result_t *res) {
  static const etcd_result_t ok = {ETCD_OK, NULL, 0, 0};
  REGISTER_ASSERT(k->inflight); /* a write or delete was in flight */
  reconcile_t *r = k->r;
  act_t act = k->act;
  int again = k->again;
  k->again = 0;
  k->inflight = 0;
  k->act = ACT_NONE;

  if (res->status == ETCD_UNAVAILABLE) {
    r->errors++;
    uint64_t now = uv_now(r->loop);
    if (!r->outage) {
      outage_begin(r);
      log_fields(LOG_WARN,
                 "etcd: cannot write; keeping the desired state "
                 "and retrying with backoff",
                 "error", res->error, NULL);
    } else if (r->ttl > 0 && r->key_refresh && !r->ttl_warned &&
               now - r->outage_ms >= (uint64_t)r->ttl * 1000) {
      /* v2: each key's TTL is refreshed by a write; none got through for
       * longer than the TTL (v3 says so of its lease, etcd.c) */
      r->ttl_warned = 1;
      log_fields(LOG_WARN,
                 "etcd: no write has got through for longer than --ttl: "
                 "the keys have probably expired; they are written again "
                 "when etcd answers",
                 "error", res->error, NULL);
    } else {
      log_fields(LOG_DEBUG, "etcd still unavailable", "key", k->key, "error",
                 res->error, NULL);
    }
    /* etcd may have applied a put or delete before the answer was lost (a
     * timeout after the commit): what it holds is unknown until it answers.
     * A refresh changes no value either way (it is tried again: refresh_due
     * stays), so a v2 outage does not turn every refresh into a put. */
    if (act == ACT_PUT || act == ACT_DELETE) k->have_known = 0;
    k->lease_stale = k->list_stale = 0;
    backoff(r, waited_ms(r, k), res->refused);
    rkey_touch(r, k);
    release_owners(r, k);
    reconcile_pump(r);
    return;
  }
  r->failures = 0;
  resume(r);
  if (r->outage) {
    /* etcd may have restarted without its data meanwhile: look again */
    r->outage = 0;
    log_info("etcd reachable again; checking %s",
             r->prefix ? r->prefix : "every key");
    reconcile_resync(r);
  }
  switch (act) {
  case ACT_PUT:
    if (res->status == ETCD_OK) {
      k->solo = 0;
      r->puts++;
      log_change(r->dry_run                 ? "would register"
                 : k->have_known && k->have ? "updated"
                                            : "registered",
                 k);
      trace_mark(rkey_owner_id(k), TRACE_WRITE_ACKED);
      rkey_set_have(k, k->sent);
      k->have_ttl = r->ttl > 0;
      k->refresh_due = 0;
      if (r->changed)
        r->changed(r->ud, "put", k->key, k->sent->s, k->sent->len);
      /* the deletes this key was holding back may go now */
      for (owner_t *o = k->owners; o; o = o->knext)
        rcont_release(r, o->cont, 0);
    }
    break;
  case ACT_REFRESH:
    if (res->status == ETCD_OK) {
      r->refreshes++;
      k->refresh_due = 0;
      k->have_ttl = 1;
      log_fields(LOG_DEBUG, "refreshed", "key", k->key, NULL);
    } else if (res->status == ETCD_NOT_FOUND) {
      /* expired, or etcd lost it: write it again */
      log_fields(LOG_WARN, "key vanished from etcd; writing it again", "key",
                 k->key, NULL);
      r->drift++; /* gone behind our back: drift found by the refresh */
      k->refresh_due = 0;
      rkey_set_have(k, NULL);
      res = &ok;
    }
    break;
  case ACT_DELETE:
    if (res->status == ETCD_OK || res->status == ETCD_NOT_FOUND) {
      r->deletes++;
      if (res->status == ETCD_OK || r->dry_run) {
        log_change(r->dry_run         ? "would remove"
                   : rkey_owner_id(k) ? "removed"
                                      : "removed stale key",
                   k);
        trace_mark(rkey_owner_id(k), TRACE_WRITE_ACKED);
        if (r->changed) r->changed(r->ud, "delete", k->key, NULL, 0);
      }
      rkey_set_have(k, NULL);
      res = &ok;
      queue_parent_dir(r, k->key);
    }
    break;
  case ACT_RMDIR:
    if (res->status == ETCD_OK) {
      log_fields(LOG_DEBUG, "removed empty directory", "key", k->key, NULL);
      queue_parent_dir(r, k->key);
    }
    /* not empty, or gone already: either way nothing more to do here */
    res = &ok;
    break;
  case ACT_NONE:
  case ACT_HOLD:
    break;
  }
  key_settle(k, res->status == ETCD_OK);
  if (res->status == ETCD_OK) k->refusal_said = 0;
  release_owners(r, k);
  if (res->status != ETCD_OK) {
    r->errors++;
    char in[32];
    snprintf(in, sizeof in, "%.1f s", (double)retry_delay(r) / 1000);
    /* said at error level for each key once (until it goes in), at most
     * REFUSALS_SAID keys an episode (until all is in sync again), then at
     * debug at each retry */
    int say = !k->refusal_said && r->refusals_said < REFUSALS_SAID;
    log_fields(say ? LOG_ERROR : LOG_DEBUG,
               "etcd refused the write; retrying with backoff", "key", k->key,
               "error", res->error, "retry_in", in, NULL);
    if (!k->refusal_said && ++r->refusals_said == REFUSALS_SAID + 1)
      log_fields(LOG_ERROR,
                 "etcd refused more keys; each is retried with backoff "
                 "(register_etcd_refused counts them)",
                 "error", res->error, NULL);
    k->refusal_said = 1;
    rkey_set_failed(r, k, 1);
    retry_arm(r);
  } else if (!k->is_dir || again) {
    rkey_touch(r, k); /* it may have changed while in flight */
  }
  if (k->is_dir && !list_linked(&k->qnode)) rkey_maybe_drop(r, k);
  reconcile_pump(r);
}

/* ---- keys etcd refused (permissions, NOSPACE, a value too large) ----
 *
 * A refused key is marked failed and left alone (decide() skips it) until
 * the retry timer: then every refused key is tried again, after 1 s
 * doubling to 30 s while refusals go on, back to 1 s once none is left.
 * A change of its container or a resync tries it at once, as before. */

static uint64_t retry_delay(const reconcile_t *r) {
  return r->retry_ms ? r->retry_ms : RETRY_MIN_MS;
}

static void retry_cb(uv_timer_t *t) {
  reconcile_t *r = t->data;
  if (!r->nfailed) return;
  uint64_t next = retry_delay(r) * 2;
  r->retry_ms = next > RETRY_MAX_MS ? RETRY_MAX_MS : next;
  log_fields(LOG_DEBUG, "trying the keys etcd refused again", NULL);
  reconcile_touch_all(r); /* clears the failed marks */
  reconcile_pump(r);
}

static void retry_arm(reconcile_t *r) {
  if (uv_is_active((uv_handle_t *)&r->retry_timer)) return;
  uint64_t d = retry_delay(r);
  uv_timer_start(&r->retry_timer, retry_cb,
                 d / 2 + util_rand((uint32_t)d / 2 + 1), 0);
}

/* What a key needs now; for ACT_HOLD, *holder is the container its delete
 * waits for. */
static act_t decide(reconcile_t *r, rkey_t *k, rcont_t **holder) {
  if (k->is_dir) return ACT_RMDIR;
  if (k->failed) return ACT_NONE;
  rstr_t *want = k->owners ? k->owners->value : NULL;
  /* wait for the listing: under the prefix, to write diffs; elsewhere too
   * (the fleet's report), so that the first write does not take a new
   * lease before the previous run's is adopted (v3: the listed keys hang
   * on it) */
  if (!r->primed && !(r->ever_primed && daemon_key(r, k))) return ACT_NONE;
  if (want) {
    if (!k->have_known || !rstr_eq(k->have, want->s, want->len)) return ACT_PUT;
    if (r->ttl > 0) {
      if (!r->key_refresh) /* v3: attach to our lease, or nothing to do */
        return k->have_ttl ? ACT_NONE : ACT_PUT;
      /* v2: refreshing also gives a TTL to a key written without one */
      return k->refresh_due || !k->have_ttl ? ACT_REFRESH : ACT_NONE;
    }
    return k->have_ttl ? ACT_PUT : ACT_NONE; /* ours must not expire */
  }
  if (k->have_known && !k->have) return ACT_NONE;
  if (r->prefix_op && reconcile_in_prefix(r, k->key))
    return ACT_NONE; /* going */
  /* wait: Docker's truth is incomplete, or every evaluation failed */
  if (!k->owned_once && (!r->docker_synced || r->hold_orphans)) {
    k->orphan_ok = 0; /* through the gate again when it may go */
    return ACT_NONE;
  }
  /* make-before-break: a container that still runs and no longer produces
   * this key (a reload, a re-keying) has its new keys in etcd first */
  rcont_t *c = k->gone_id ? map_get(r->conts, k->gone_id) : NULL;
  /* a key nobody in this process produced: it waits until the keys the
   * containers produce are written (orphans_release()) */
  if (!k->owned_once && !k->orphan_ok) {
    /* v2: a previous run's key on its TTL must not expire meanwhile */
    if (r->key_refresh && r->ttl > 0 && k->refresh_due && k->have_ttl)
      return ACT_REFRESH;
    *holder = &r->orphans;
    return ACT_HOLD;
  }
  int where = c ? rcont_new_keys(c) : NEW_IN_ETCD;
  if (where == NEW_PENDING ||
      (where == NEW_IN_BATCH && (!r->batching || k->solo))) {
    if (rcont_blocked_by(r, c, k->key)) { /* v2: it goes first */
      log_fields(LOG_WARN,
                 "v2: this key stands in the way of a key its container "
                 "produces now (one path below the other: a key cannot be "
                 "a directory too); deleted before the new one is written",
                 "key", k->key, "container", c->id, NULL);
      return ACT_DELETE;
    }
    /* v2: it must not expire meanwhile */
    if (r->key_refresh && r->ttl > 0 && k->refresh_due) return ACT_REFRESH;
    *holder = c;
    return ACT_HOLD;
  }
  return ACT_DELETE;
}

/* A batch filled before a pause waits for the pause to end: backoff_cb()
 * pumps, and the pump arms this timer again. */
static void flush_cb(uv_timer_t *t) {
  reconcile_t *r = t->data;
  if (r->paused) return;
  batch_flush(r);
  reconcile_pump(r);
}

/* The orphans waiting (r->orphans.held) may go: their deletes are
 * queued, and the pump sends them. */
static void orphans_release(reconcile_t *r) {
  uv_timer_stop(&r->orphans_timer);
  list_t *n;
  while ((n = list_first(&r->orphans.held))) {
    rkey_t *k = list_entry(n, rkey_t, qnode);
    k->orphan_ok = 1;
    rkey_touch(r, k); /* unholds it */
  }
}

static void orphans_timer_cb(uv_timer_t *t) {
  reconcile_t *r = t->data;
  orphans_release(r);
  reconcile_pump(r);
}

/* At the end of a pump: with orphans waiting, their deletes go once every
 * key a container produces is written (nothing queued, in flight or
 * refused) and no container waits for a check's first verdict (its keys
 * may be among them under names it has not produced yet), or after
 * ORPHANS_WAIT_MAX_MS: a busy host is never quiet, and a key nobody
 * produces must not stay for good (the cap is below --once's default
 * 30 s and /healthz's 60 s of pending keys). */
static void orphans_wait(reconcile_t *r) {
  if (list_empty(&r->orphans.held)) return;
  if (list_empty(&r->queue) && r->inflight == 0 && !r->batch && !r->paused &&
      !r->list_op && r->npending == 0 && r->nfailed == 0 && r->docker_synced &&
      !r->hold_orphans) {
    orphans_release(r);
    reconcile_pump(r);
  } else if (!uv_is_active((uv_handle_t *)&r->orphans_timer)) {
    uv_timer_start(&r->orphans_timer, orphans_timer_cb, ORPHANS_WAIT_MAX_MS, 0);
  }
}

static void reconcile_pump(reconcile_t *r) {
  if (r->pumping) return;
  r->pumping = 1;
  while (!r->paused && !list_empty(&r->queue) &&
         r->inflight < r->max_inflight) {
    rkey_t *k = list_entry(list_pop(&r->queue), rkey_t, qnode);
    r->nqueued--;
    if (k->inflight) { /* look again when it completes */
      k->again = 1;
      continue;
    }
    rcont_t *holder = NULL;
    act_t act = decide(r, k, &holder);
    if (act == ACT_HOLD) {
      rkey_hold(r, k, holder);
      continue;
    }
    if (act == ACT_NONE) {
      rkey_maybe_drop(r, k);
      continue;
    }
    if (batch_add(r, k, act) == 0) continue;
    issue(r, k, act);
  }
  /* what is left goes at the end of this loop iteration, with whatever
   * else this iteration produces (a sync yields keys one by one); not while
   * paused: libuv runs a 0 ms timer started from a timer callback in the
   * same pass, and a flush_cb that may not send would start itself again
   * for good, the loop stuck in its timer phase (seen in a fleet outage) */
  if (r->batch && !r->paused && !uv_is_active((uv_handle_t *)&r->flush_timer))
    uv_timer_start(&r->flush_timer, flush_cb, 0, 0);
  r->pumping = 0;
  orphans_wait(r);
  reconcile_check_converged(r);
}

/* ---- listing: start-up and resync ---- */

static void list_timer_cb(uv_timer_t *t) {
  reconcile_list_start(t->data);
}

static void reconcile_list_done(void *data, const etcd_result_t *res,
                                const etcd_kv_t *kvs, size_t n,
                                const char *const *dirs, size_t ndirs) {
  reconcile_t *r = data;
  r->list_op = NULL;
  if (res->status != ETCD_OK) {
    r->errors++;
    uint64_t delay = PROBE_MS; /* refused: as backoff() */
    if (!res->refused) {
      r->list_backoff_ms = r->list_backoff_ms ? r->list_backoff_ms * 2 : 500;
      if (r->list_backoff_ms > BACKOFF_MAX_MS)
        r->list_backoff_ms = BACKOFF_MAX_MS;
      delay = r->list_backoff_ms;
    }
    if (!r->outage) {
      outage_begin(r);
      log_fields(LOG_WARN,
                 "etcd: cannot list the owned prefix; retrying "
                 "with backoff",
                 "prefix", r->prefix, "error", res->error, NULL);
    } else {
      log_fields(LOG_DEBUG, "etcd still unavailable", "error", res->error,
                 NULL);
    }
    free(r->list_refused);
    r->list_refused = res->status == ETCD_FAILED
                          ? xstrdup(res->error ? res->error : "refused")
                          : NULL;
    uv_timer_start(&r->list_timer, list_timer_cb,
                   delay / 2 + util_rand((uint32_t)delay / 2 + 1), 0);
    reconcile_check_converged(r);
    return;
  }
  free(r->list_refused);
  r->list_refused = NULL;
  if (r->outage) {
    r->outage = 0;
    log_info("etcd reachable again");
  }
  r->list_backoff_ms = 0;
  /* what etcd holds now, for every key not being written right now */
  unsigned gen = ++r->gen;
  uint64_t drift0 = r->drift;
  for (size_t i = 0; i < n; i++) {
    if (!reconcile_in_prefix(r, kvs[i].key)) continue;
    rkey_t *k = rkey_get(r, kvs[i].key, 1);
    k->mark = gen;
    if (k->inflight) k->list_stale = 1; /* see key_settle() */
    if (!k->inflight) {
      if (!rstr_eq(k->have, kvs[i].value, kvs[i].value_len)) {
        /* held otherwise than believed (a restore, another writer) */
        if (r->primed && k->have_known) r->drift++;
        rstr_t *v = rstr_new(kvs[i].value, kvs[i].value_len);
        rkey_set_have(k, v);
        rstr_unref(v);
      }
      k->have_known = 1;
      k->have_ttl = kvs[i].ttl > 0;
      /* a key of a previous run keeps its old TTL: make it ours */
      if (r->ttl > 0 && !r->primed) k->refresh_due = 1;
    }
  }
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->keys);
  while (map_iter_next(&it, NULL, &v)) {
    rkey_t *k = v;
    if (k->mark == gen || !reconcile_in_prefix(r, k->key)) continue;
    if (k->inflight) {
      k->list_stale = 1; /* see key_settle() */
      continue;
    }
    if (r->primed && k->have_known && k->have) r->drift++; /* gone */
    rkey_set_have(k, NULL); /* not listed: etcd does not hold it */
  }
  for (size_t i = 0; i < ndirs; i++) {
    if (strcmp(dirs[i], r->prefix) == 0 || reconcile_in_prefix(r, dirs[i])) {
      char *child = xasprintf("%s/x", dirs[i]);
      queue_parent_dir(r, child);
      free(child);
    }
  }
  if (r->drift > drift0) /* each is written again, as reconcile_pump goes */
    log_warn("etcd held %" PRIu64 " of register's keys under %s otherwise "
             "than it wrote them (deleted or changed by another writer, or "
             "etcd went back in time): writing them again",
             r->drift - drift0, r->prefix);
  if (!r->primed) {
    r->primed = r->ever_primed = 1;
    log_info("etcd: %zu keys under %s", n, r->prefix);
  }
  r->compare_pending = 1;
  /* what etcd holds is known: the containers whose evaluation is not final
   * keep the keys that name them, before anything is decided */
  reconcile_adopt_all(r);
  reconcile_touch_all(r);
  if (r->list_again) {
    r->list_again = 0;
    reconcile_list_start(r);
  }
  reconcile_pump(r);
}

static void reconcile_list_start(reconcile_t *r) {
  if (r->list_op) {
    r->list_again = 1;
    return;
  }
  r->list_op = etcd_list(r->etcd, r->prefix, reconcile_list_done, r);
  REGISTER_ASSERT(r->list_op); /* fails from the loop if it cannot start */
}

void reconcile_start(reconcile_t *r) {
  if (!r->prefix || r->dry_run) {
    r->primed = 1;
    reconcile_pump(r);
    return;
  }
  reconcile_list_start(r);
}

void reconcile_set_prefix(reconcile_t *r, const char *prefix) {
  if ((!prefix && !r->prefix) ||
      (prefix && r->prefix && strcmp(prefix, r->prefix) == 0))
    return;
  orphans_drop(r); /* what is in the prefix changes */
  free(r->prefix);
  r->prefix = prefix ? xstrdup(prefix) : NULL;
  r->prefix_len = prefix ? strlen(prefix) : 0;
  log_info("the owned prefix is now %s", prefix ? prefix : "(none)");
  if (!r->prefix || r->dry_run) {
    r->primed = 1;
    reconcile_pump(r);
    return;
  }
  r->primed = 0; /* hold writes under the new prefix until it is listed */
  reconcile_list_start(r);
}

/* The daemon's own keys outside the owned prefix (its report): no listing
 * reads them, so a resync writes them again (someone may have overwritten
 * or deleted one): a write per such key and resync, one for most hosts. */
static void recheck_daemon_keys(reconcile_t *r) {
  if (r->dry_run) return;
  size_t n = strlen(RECONCILE_DAEMON_OWNER);
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->keys);
  while (map_iter_next(&it, NULL, &v)) {
    rkey_t *k = v;
    if (!k->owners || k->inflight || reconcile_in_prefix(r, k->key) ||
        strncmp(k->owners->cont->id, RECONCILE_DAEMON_OWNER, n) != 0)
      continue;
    k->have_known = 0;
    rkey_touch(r, k);
  }
}

void reconcile_resync(reconcile_t *r) {
  recheck_daemon_keys(r);
  if (!r->primed || !r->prefix || r->dry_run) {
    reconcile_touch_all(r);
    reconcile_pump(r);
    return;
  }
  reconcile_list_start(r);
}

void reconcile_retry_now(reconcile_t *r) {
  /* the writes' pause (backoff()) ends as when etcd answers a write; the
   * refused keys are tried again once the listing is in (its
   * reconcile_touch_all()), or at once without a prefix */
  resume(r);
  reconcile_resync(r);
}

void reconcile_etcd_rewound(reconcile_t *r) {
  if (!r->prefix || r->dry_run) {
    map_iter_t it;
    void *v;
    map_iter_init(&it, r->keys);
    while (map_iter_next(&it, NULL, &v)) {
      rkey_t *k = v;
      if (!k->inflight) k->have_known = 0; /* write it again */
    }
  }
  reconcile_resync(r);
}

void reconcile_docker_synced(reconcile_t *r, int synced) {
  int was = r->docker_synced;
  r->docker_synced = synced;
  if (synced) orphans_drop(r); /* its start-up adoptions are over */
  if (synced && !was) reconcile_touch_all(r); /* orphans may go now */
  reconcile_pump(r);
}

void reconcile_lease_lost(reconcile_t *r) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->keys);
  while (map_iter_next(&it, NULL, &v)) {
    rkey_t *k = v;
    if (k->inflight)
      k->lease_stale = 1; /* its answer cannot tell (key_settle()) */
    else if (k->have_ttl)
      rkey_set_have(k, NULL); /* on the lease: gone with it */
    /* a key not on the lease (no TTL, another run's) is where it was */
  }
  reconcile_touch_all(r);
  reconcile_pump(r);
}

static void prefix_deleted(void *data, const etcd_result_t *res) {
  reconcile_t *r = data;
  r->prefix_op = NULL;
  if (res->status == ETCD_OK || res->status == ETCD_NOT_FOUND) {
    map_iter_t it;
    void *v;
    map_iter_init(&it, r->keys);
    while (map_iter_next(&it, NULL, &v)) {
      rkey_t *k = v;
      if (k->owners || k->inflight || !reconcile_in_prefix(r, k->key)) continue;
      if (k->have) {
        r->deletes++;
        log_change("removed", k);
        if (r->changed) r->changed(r->ud, "delete", k->key, NULL, 0);
      }
      rkey_set_have(k, NULL);
    }
    log_info("deleted %s in one request", r->prefix);
  } else {
    log_fields(LOG_WARN, "cannot delete the owned prefix; deleting key by key",
               "prefix", r->prefix, "error", res->error, NULL);
  }
  reconcile_touch_all(r);
  reconcile_pump(r);
}

void reconcile_deregister(reconcile_t *r) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->conts);
  while (map_iter_next(&it, NULL, &v))
    rcont_drop(r, v);
  /* everything under the owned prefix is ours: one request for all of it */
  if (r->prefix && r->etcd && !r->dry_run && r->primed)
    r->prefix_op = etcd_delete_prefix(r->etcd, r->prefix, prefix_deleted, r);
  reconcile_pump(r);
}

/* ---- TTL refresh ---- */

static void refresh_cb(uv_timer_t *t) {
  reconcile_t *r = t->data;
  if (!r->primed) return;
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->keys);
  while (map_iter_next(&it, NULL, &v)) {
    rkey_t *k = v;
    if ((k->owners || k->held) && k->have) {
      k->refresh_due = 1;
      rkey_touch(r, k);
    }
  }
  reconcile_pump(r);
}

/* ---- life cycle of the machine (reconcile_new/_free in reconcile.c) ---- */

static void reconcile_queue_init(reconcile_t *r) {
  list_init(&r->queue);
  list_init(&r->batches);
  uv_timer_init(r->loop, &r->backoff_timer);
  uv_timer_init(r->loop, &r->refresh_timer);
  uv_timer_init(r->loop, &r->list_timer);
  uv_timer_init(r->loop, &r->flush_timer);
  uv_timer_init(r->loop, &r->retry_timer);
  uv_timer_init(r->loop, &r->dry_timer);
  uv_timer_init(r->loop, &r->orphans_timer);
  list_init(&r->orphans.held);
  r->dry_timer.data = r->orphans_timer.data = r;
  r->backoff_timer.data = r->refresh_timer.data = r->list_timer.data = r;
  r->flush_timer.data = r->retry_timer.data = r;
  r->key_refresh = r->etcd && etcd_has_key_refresh(r->etcd);
  r->batching = r->etcd && etcd_has_txn(r->etcd) && !r->dry_run;
  if (r->batching) r->max_inflight = BATCHES_IN_FLIGHT;
  if (r->ttl > 0 && r->key_refresh) {
    /* refresh well before expiry: a third of the TTL, at least 1 s */
    uint64_t every = (uint64_t)r->ttl * 1000 / 3;
    if (every < 1000) every = 1000;
    uv_timer_start(&r->refresh_timer, refresh_cb, every, every);
  }
}

static void reconcile_queue_stop(reconcile_t *r) {
  if (r->list_op) etcd_cancel(r->list_op);
  if (r->prefix_op) etcd_cancel(r->prefix_op);
  free(r->batch); /* filled but not sent: its keys go below */
  list_t *n;
  while ((n = list_first(&r->batches))) {
    batch_t *b = list_entry(n, batch_t, node);
    list_remove(&b->node);
    etcd_cancel(b->op);
    free(b);
  }
}

static void reconcile_timer_closed(uv_handle_t *h) {
  reconcile_t *r = h->data;
  REGISTER_ASSERT(r->open_handles > 0); /* one close callback per timer */
  if (--r->open_handles == 0) free(r);
}

static void reconcile_queue_close(reconcile_t *r) {
  free(r->dry); /* keys not acknowledged yet: freed with the state */
  r->open_handles = 7;
  uv_close((uv_handle_t *)&r->orphans_timer, reconcile_timer_closed);
  uv_close((uv_handle_t *)&r->dry_timer, reconcile_timer_closed);
  uv_close((uv_handle_t *)&r->retry_timer, reconcile_timer_closed);
  uv_close((uv_handle_t *)&r->flush_timer, reconcile_timer_closed);
  uv_close((uv_handle_t *)&r->backoff_timer, reconcile_timer_closed);
  uv_close((uv_handle_t *)&r->refresh_timer, reconcile_timer_closed);
  uv_close((uv_handle_t *)&r->list_timer, reconcile_timer_closed);
}

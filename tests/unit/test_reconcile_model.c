/* reconcile against a model (issue 23): long random sequences, seeded and
 * reproducible, of container changes (reconcile_set, reconcile_keep, gone),
 * etcd answers (ok, unavailable, refused, applied with the answer still on
 * its way, slow), a lost v3 lease, resync, Docker's sync state, held
 * orphans and a rewound etcd.  The reconciler talks to the etcd double
 * (etcd_double.h), which keeps a real store; the test keeps a model of what
 * the containers produce, from its own history.  Two tests: v3 (batched
 * transactions, a lease) and v2 (single requests, directories).
 *
 * Checked at every request etcd applies, as of when the reconciler decided
 * it (a transaction's keys were decided since the previous one was sent):
 *  - make-before-break: a key that a running container stopped producing
 *    (and that no other container produces or may own) is not deleted
 *    while a key that container produced then is missing from etcd, the
 *    same transaction counting (docs/design.md, Invariants);
 *  - start-up is a diff: a key no container ever produced (or may have
 *    adopted) is not deleted while Docker is not synced or orphans are held;
 *  - the changed hook reports what etcd then holds.
 * Checked after every step: the reconciler's count of requests in flight
 * is the double's.  Checked at each quiescent point (every open request
 * answered OK in a random order, every timer run, until nothing is in
 * flight or due; Docker synced, the reconciler must have converged): etcd
 * holds every key some container produces, at the value of its newest
 * producer (the container that began to produce that value last), and
 * nothing else under the prefix but the orphans that may be kept (Docker
 * not synced, orphans held, an undecided container that may have adopted
 * them).  At the end of a sequence, Docker synced and every container
 * decided: exactly what the containers produce; after a resync, v2 has no
 * empty directory left; after reconcile_deregister(), nothing under /p.
 *
 * Time is virtual: the test never runs uv_run() while the reconciler
 * lives; it sets the loop's clock and calls due timers itself, in due
 * order, as libuv's timer phase does (a zero timer a callback starts runs
 * in the same pass, so a timer that keeps starting itself is caught).  The
 * reconciler's jitter (util_rand) is seeded from the sequence's seed, so a
 * seed replays exactly, and the budget costs no waiting.
 *
 *   REGISTER_TEST_SEED=n       the seed (default: from the clock; printed)
 *   REGISTER_TEST_SEQUENCES=n  sequences per test (default 200)
 *   REGISTER_TEST_STEPS=n      steps per sequence (default 200)
 *   REGISTER_TEST_SEQUENCE=i   run only sequence i of the seed
 *   REGISTER_TEST_VERBOSE=1    the reconciler's log and every step on stderr
 *                              (default: kept aside, the end printed on
 *                              failure)
 *   REGISTER_TEST_BUGS=none|a,b  steer around the orders of events that
 *                              triggered the bugs this model found (see
 *                              "The bugs it found" below), all of them or
 *                              the ones not named (default: all triggered;
 *                              they are fixed)
 *   REGISTER_TEST_WITHOUT=a,b  leave out kinds of events (diagnosis): fail,
 *                              refuse, early, ambiguous, lease, rewind,
 *                              hold, keep
 *   REGISTER_TEST_MBB_STRICT=1 make-before-break for every container that
 *                              stopped producing a key, not only the last
 *                              (see mbb_obliged()) */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "etcd_double.h"
#include "log.h"
#include "reconcile.h"
#include "records.h"
#include "util.h"

/* ASan's reports go to the real stderr while the log is kept aside. */
extern void __sanitizer_set_report_fd(void *fd) __attribute__((weak));

/* ---- randomness: splitmix64 (util_rand is the reconciler's) ---- */

static uint64_t rng;

static uint64_t rnd64(void) {
  uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static unsigned rnd(unsigned n) {
  return n ? (unsigned)(rnd64() % n) : 0;
}

static int pct(unsigned p) {
  return rnd(100) < p;
}

/* ---- the world: a few containers, a small key space under /p ---- */

#define NCONT 4
#define NKEYS 10
#define NVALS 5

/* sorted, as records are; each is two levels under /p (v2: a key is never
 * a directory); some name a container (by name, or by short id) */
static const char *const KEYS[NKEYS] = {
    "/p/svc/a",   "/p/svc/b",   "/p/svc/c",          "/p/web1/80",
    "/p/web2/80", "/p/web3/80", "/p/x/222222222222", "/p/x/444444444444",
    "/p/y/web4",  "/p/z/d"};
/* some values name a container too (an orphan is adopted by its value) */
static const char *const VALS[NVALS] = {"v0", "v1", "v2", "10.0.0.1:web1",
                                        "web3"};
static const char *const NAMES[NCONT] = {"web1", "web2", "web3", "web4"};
static char IDS[NCONT][65]; /* "111111111111fff…", "222222222222fff…", … */

static int key_index(const char *key) {
  for (int k = 0; k < NKEYS; k++)
    if (strcmp(KEYS[k], key) == 0) return k;
  return -1;
}

static int val_index(const char *v, size_t len) {
  for (int i = 0; i < NVALS; i++)
    if (strlen(VALS[i]) == len && memcmp(VALS[i], v, len) == 0) return i;
  return -1;
}

/* ---- the model ---- */

typedef struct {
  int present;        /* the container produces the key */
  unsigned long from; /* the tick it began to produce it */
  int val;            /* VALS index */
  uint64_t since;     /* when it began to produce this value: the newest wins */
  int amb; /* it may own the key since an adoption: then it is the oldest
              owner, whatever `since` says */
} mrec_t;

typedef struct {
  int running;   /* set or kept, and not gone */
  int undecided; /* its last evaluation was reconcile_keep() */
  mrec_t rec[NKEYS];
  /* make-before-break: keys it stopped producing whose delete must wait
   * until every key it produces now is in etcd: the tick it stopped, or 0 */
  unsigned long dropped[NKEYS];
  unsigned char claims[NKEYS]; /* claimed since it became undecided */
  unsigned char adopt[NKEYS];  /* it may have adopted the key */
} mcont_t;

static struct {
  mcont_t c[NCONT];
  /* the key may be in etcd without this process knowing it wrote it (from
   * before the start, restored by a rewind, written by a request that then
   * failed): the reconciler may take it for an orphan */
  unsigned char maybe_orphan[NKEYS];
  /* etcd lost the key behind the reconciler's back (a rewind, a delete
   * that then failed): it cannot know until it lists again */
  unsigned char ext_lost[NKEYS];
  unsigned long lost[NKEYS]; /* the tick etcd last lost it (lease, rewind) */
  /* a rewind put the key back, and the reconciler has not written it since:
   * until a listing shows it, it may take it for an orphan (and delete it
   * without make-before-break: it never wrote it for the container) */
  unsigned char restored[NKEYS];
  /* some container produced the key, or may have adopted it: the
   * reconciler may have owned it (owned_once) */
  unsigned char ever_owned[NKEYS];
  /* per tick: orphans may go (Docker synced, orphans not held) */
#define MAX_TICKS 65536
  unsigned char orphans_may_go[MAX_TICKS];
  unsigned vals_seen[NKEYS]; /* the values etcd held for the key */
  int synced, hold;
  int drift; /* etcd was rewound since the last quiescent point */
  uint64_t clock;
  unsigned long tick;       /* each change of the model: dbl_now */
  unsigned long ext_events; /* rewinds and lease losses */
} M;

/* ---- the run ---- */

static uv_loop_t loop;
static etcd_t fake;
static reconcile_t *R;
static uint64_t seed;
static unsigned seq, nseq, nsteps;
static unsigned long step_no;
static int strict_mbb;
static const char *mode;
static etcd_op_t *answering; /* the request whose answer is being delivered */
static unsigned long n_answers, n_applies, n_checks, n_mbb_checks;

/* REGISTER_TEST_WITHOUT: kinds of events a run leaves out (diagnosis) */
static const char *without;
static int in_list(const char *list, const char *what);
static int allowed(const char *what) {
  return !without || !in_list(without, what);
}

/* Is the known bug `name` to be triggered (REGISTER_TEST_BUGS)? */
static const char *bugs;
static int in_list(const char *list, const char *what) {
  size_t n = strlen(what);
  for (const char *p = list; (p = strstr(p, what)); p += n)
    if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
  return 0;
}

static int bug(const char *name) {
  return !bugs || strcmp(bugs, "all") == 0 || in_list(bugs, name);
}

/* what happened, for the failure report (which shows the last 30 steps) */
#define HIST 400
#define HIST_STEPS 30
static char hist[HIST][240];
static unsigned long hist_step[HIST];
static unsigned long nhist;

static FILE *out;        /* the real stderr */
static int log_fd = -1;  /* the reconciler's log while kept aside */
static int finished = 1; /* no failure report due at exit */

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...) {
  hist_step[nhist % HIST] = step_no;
  char *h = hist[nhist++ % HIST];
  int n = snprintf(h, sizeof hist[0], "%5lu t%-5lu ", step_no, M.tick);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(h + n, sizeof hist[0] - (size_t)n, fmt, ap);
  va_end(ap);
  if (log_fd < 0 && out) fprintf(out, "MODEL %s\n", h); /* verbose */
}

static const char *short_key(const char *key) {
  return strncmp(key, "/p/", 3) == 0 ? key + 3 : key;
}

static void describe_op(const etcd_op_t *op, char *buf, size_t n) {
  size_t used =
      (size_t)snprintf(buf, n, "#%u@t%lu %s", op->id, op->born, op->kind);
  for (size_t i = 0; i < op->nkeys && used < n; i++) {
    int del = strcmp(op->kind, "txn") == 0 && !op->values[i];
    used += (size_t)snprintf(buf + used, n - used, " %s%s%s%s", del ? "-" : "",
                             short_key(op->keys[i]), op->values[i] ? "=" : "",
                             op->values[i] ? op->values[i] : "");
  }
}

static void dump_log_tail(void) {
  if (log_fd < 0) return;
  off_t size = lseek(log_fd, 0, SEEK_END);
  if (size <= 0) return;
  off_t from = size > 6000 ? size - 6000 : 0;
  char buf[6001];
  ssize_t n = pread(log_fd, buf, (size_t)(size - from), from);
  if (n <= 0) return;
  buf[n] = '\0';
  const char *p = buf;
  if (from > 0 && strchr(p, '\n')) p = strchr(p, '\n') + 1;
  fprintf(out, "the reconciler's log (its end):\n%s", p);
}

static void report(const char *what) {
  if (!out) out = stderr;
  fprintf(out, "\n=== reconcile model (%s): %s\n", mode ? mode : "?", what);
  fprintf(out, "seed %llu, sequence %u, step %lu\n", (unsigned long long)seed,
          seq, step_no);
  fprintf(out, "the last %d steps (step, tick, what):\n", HIST_STEPS);
  unsigned long first = nhist > HIST ? nhist - HIST : 0;
  for (unsigned long i = first; i < nhist; i++)
    if (hist_step[i % HIST] + HIST_STEPS > step_no)
      fprintf(out, "  %s\n", hist[i % HIST]);
  fprintf(out, "etcd holds:");
  for (size_t i = 0; i < nstore; i++)
    fprintf(out, " %s=%s%s", short_key(store[i].key), store[i].value,
            store[i].leased ? "(lease)" : "");
  if (R) {
    reconcile_stats_t st;
    reconcile_stats(R, &st);
    fprintf(out,
            "\nthe reconciler: %zu keys, %zu queued or held, %zu in flight, "
            "%zu refused, %s",
            st.keys, st.queued, st.inflight, st.failed,
            st.converged ? "converged" : "not converged");
  }
  fprintf(out, "\nthe model: docker %s%s\n", M.synced ? "synced" : "not synced",
          M.hold ? ", orphans held" : "");
  for (int c = 0; c < NCONT; c++) {
    const mcont_t *C = &M.c[c];
    if (!C->running) continue;
    fprintf(out, "  %s%s:", NAMES[c], C->undecided ? " (undecided)" : "");
    for (int k = 0; k < NKEYS; k++) {
      if (C->rec[k].present)
        fprintf(out, " %s=%s@%llu%s", short_key(KEYS[k]), VALS[C->rec[k].val],
                (unsigned long long)C->rec[k].since,
                C->rec[k].amb ? "(adopted?)" : "");
      if (C->dropped[k])
        fprintf(out, " -%s@t%lu", short_key(KEYS[k]), C->dropped[k]);
      if (C->adopt[k] && !C->rec[k].present)
        fprintf(out, " ~%s", short_key(KEYS[k]));
    }
    fprintf(out, "\n");
  }
  fprintf(out, "  maybe orphans:");
  for (int k = 0; k < NKEYS; k++)
    if (M.maybe_orphan[k]) fprintf(out, " %s", short_key(KEYS[k]));
  fprintf(out, "\nopen requests:");
  for (size_t i = 0; i < nops; i++) {
    if (ops[i]->ended || ops[i]->cancelled) continue;
    char d[300];
    describe_op(ops[i], d, sizeof d);
    fprintf(out, " [%s%s]", d, ops[i]->applied ? " (applied)" : "");
  }
  fprintf(out, "\n");
  dump_log_tail();
  fprintf(out,
          "repeat: REGISTER_TEST_SEED=%llu REGISTER_TEST_SEQUENCE=%u "
          "REGISTER_TEST_STEPS=%u%s%s%s%s%s test_reconcile_model %s\n",
          (unsigned long long)seed, seq, nsteps,
          bugs ? " REGISTER_TEST_BUGS=" : "", bugs ? bugs : "",
          without ? " REGISTER_TEST_WITHOUT=" : "", without ? without : "",
          strict_mbb ? " REGISTER_TEST_MBB_STRICT=1" : "", mode ? mode : "");
  fflush(out);
}

static void model_fail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void model_fail(const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  finished = 1;
  report(msg);
  exit(1);
}

/* A FAIL()/ASSERT() of the double or test.h went to the kept-aside log. */
static void at_exit(void) {
  if (!finished) report("a test assertion failed (its line ends the log)");
}

/* ---- time: the loop's clock is the test's ---- */

typedef struct {
  uv_timer_t *t;
  uint64_t due;
} tpick_t;

static void pick_timer(uv_handle_t *h, void *arg) {
  tpick_t *p = arg;
  if (h->type != UV_TIMER || !uv_is_active(h) || uv_is_closing(h)) return;
  uv_timer_t *t = (uv_timer_t *)h;
  uint64_t due = uv_now(&loop) + uv_timer_get_due_in(t);
  /* libuv: by due time, then in the order they were started */
  if (!p->t || due < p->due || (due == p->due && t->start_id < p->t->start_id))
    *p = (tpick_t){t, due};
}

static tpick_t next_timer(void) {
  tpick_t p = {NULL, 0};
  uv_walk(&loop, pick_timer, &p);
  return p;
}

/* One pass of libuv's timer phase at the current time: every due timer, a
 * zero timer started by one of them included.  Returns how many ran. */
static unsigned loop_pass(void) {
  unsigned n = 0;
  for (;;) {
    tpick_t p = next_timer();
    if (!p.t || p.due > uv_now(&loop)) return n;
    if (++n > 10000)
      model_fail("the loop is stuck: a timer keeps starting itself at 0 ms");
    uv_timer_cb cb = p.t->timer_cb; /* libuv's private field: no getter */
    uv_timer_stop(p.t);
    uv_timer_again(p.t); /* a repeating timer goes on */
    cb(p.t);
  }
}

/* Moves the clock to the next timer and runs the pass. */
static unsigned advance(void) {
  tpick_t p = next_timer();
  if (!p.t) return 0;
  if (p.due > loop.time) loop.time = p.due; /* uv_now() reads it */
  return loop_pass();
}

/* ---- checks at every request etcd applies ---- */

/* Does s[0..n) hold tok as a whole token (reconcile.h: reconcile_keep)? */
static int token_char(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-';
}

static int names_token(const char *s, const char *tok) {
  size_t n = strlen(s), tn = strlen(tok);
  for (size_t i = 0; tn && i + tn <= n; i++)
    if (memcmp(s + i, tok, tn) == 0 && (i == 0 || !token_char(s[i - 1])) &&
        (i + tn == n || !token_char(s[i + tn])))
      return 1;
  return 0;
}

/* Does key k (or a value etcd held for it) name container c? */
static int names(int c, int k) {
  char shortid[13];
  memcpy(shortid, IDS[c], 12);
  shortid[12] = '\0';
  const char *toks[3] = {IDS[c], shortid, NAMES[c]};
  for (int t = 0; t < 3; t++) {
    if (names_token(KEYS[k], toks[t])) return 1;
    for (int v = 0; v < NVALS; v++)
      if ((M.vals_seen[k] & (1u << v)) && names_token(VALS[v], toks[t]))
        return 1;
  }
  return 0;
}

static int produced(int k) {
  for (int c = 0; c < NCONT; c++)
    if (M.c[c].rec[k].present) return 1;
  return 0;
}

/* c deleted key k's last owner link: must the delete wait for c's keys?
 * Yes when no other container produces the key or may own it (the
 * reconciler's rule: the key's last owner decides, see decide()).  With
 * REGISTER_TEST_MBB_STRICT, for every running container that stopped
 * producing it (the invariant read literally). */
static int mbb_obliged(int c, int k) {
  if (strict_mbb) return 1;
  for (int d = 0; d < NCONT; d++)
    if (d != c && (M.c[d].rec[k].present || M.c[d].adopt[k])) return 0;
  return 1;
}

/* When the reconciler decided the requests in op: at op->born for a
 * single request (decide() then issue()), after the previous transaction
 * was made for a transaction (its keys were added since that flush).
 * Returns the tick after which the decision was made, and whether that is
 * exact (a single request: made at that tick, after the model's change of
 * that tick). */
static unsigned long decided_after(const etcd_op_t *op) {
  if (strcmp(op->kind, "txn") != 0) return op->born;
  unsigned long prev = 0;
  for (size_t i = 0; i < nops && ops[i] != op; i++)
    if (strcmp(ops[i]->kind, "txn") == 0) prev = ops[i]->born;
  return prev;
}

/* A delete of k that etcd applied (after the whole request: a transaction
 * is one revision), judged as of when the reconciler decided it. */
static void mbb_check(const etcd_op_t *op, int k) {
  unsigned long after = decided_after(op);
  for (int c = 0; c < NCONT; c++) {
    const mcont_t *C = &M.c[c];
    /* a delete decided before the container stopped producing the key (in
     * flight, or in the batch being filled, while it produced it or before
     * it did) is no decision against it: only later ones must wait */
    if (!C->running || !C->dropped[k] || C->dropped[k] > after || M.restored[k])
      continue;
    n_mbb_checks++;
    for (int j = 0; j < NKEYS; j++) {
      /* the keys it produced when the delete was decided (one it began to
       * produce since cannot hold back a request already made) */
      if (!C->rec[j].present || C->rec[j].from > after) continue;
      if (store_get(KEYS[j])) continue;
      /* etcd lost it behind the reconciler's back, or after the decision */
      if (M.ext_lost[j] || M.lost[j] > after) continue;
      char d[300];
      describe_op(op, d, sizeof d);
      model_fail("make-before-break: %s was deleted (%s) while %s, which no "
                 "longer produces it, still waits for %s",
                 KEYS[k], d, NAMES[c], KEYS[j]);
    }
  }
}

/* Start-up is a diff: a key this process never owned is deleted only once
 * Docker's list is complete, and not while orphans are held.  Judged as of
 * when the reconciler decided the delete (any moment of a transaction's
 * filling may be it). */
static void orphan_check(const etcd_op_t *op, int k) {
  if (M.ever_owned[k]) return;
  unsigned long from = decided_after(op);
  for (unsigned long t = from; t <= op->born; t++)
    if (M.orphans_may_go[t]) return;
  char d[300];
  describe_op(op, d, sizeof d);
  model_fail("%s, which no container ever produced, was deleted (%s) while "
             "Docker was not synced or orphans were held",
             KEYS[k], d);
}

static void on_apply(etcd_op_t *op) {
  n_applies++;
  op->user = M.ext_events;
  char d[300];
  describe_op(op, d, sizeof d);
  note("  etcd applies %s", d);
  for (size_t i = 0; i < op->nkeys; i++) {
    int k = key_index(op->keys[i]);
    if (!op->values[i] || strcmp(op->kind, "list") == 0) continue;
    if (k < 0) model_fail("a write outside the key space: %s", op->keys[i]);
    int v = val_index(op->values[i], op->vlens[i]);
    if (v < 0) model_fail("a value nobody produced: %s", op->values[i]);
    M.ext_lost[k] = 0;
    M.restored[k] = 0;
    M.vals_seen[k] |= 1u << v;
  }
  /* after the whole request: a transaction is one revision */
  for (size_t i = 0; i < op->nkeys; i++) {
    if (!op->removed[i]) continue;
    int k = key_index(op->keys[i]);
    if (k < 0) continue;
    orphan_check(op, k);
    mbb_check(op, k);
    for (int c = 0; c < NCONT; c++)
      M.c[c].dropped[k] = 0;
  }
}

/* The changed hook reports what etcd acknowledged: it holds it now. */
static void on_changed(void *ud, const char *what, const char *key,
                       const char *value, size_t vlen) {
  (void)ud;
  if (!answering) model_fail("changed(%s, %s) outside an answer", what, key);
  if (answering->user != M.ext_events) return; /* a rewind since it applied */
  const dbl_kv_t *kv = store_get(key);
  if (strcmp(what, "put") == 0) {
    if (!kv || kv->vlen != vlen || memcmp(kv->value, value, vlen) != 0)
      model_fail("changed(put, %s, %.*s) but etcd holds %s", key, (int)vlen,
                 value, kv ? kv->value : "nothing");
  } else if (strcmp(what, "delete") == 0) {
    if (kv) model_fail("changed(delete, %s) but etcd holds it", key);
  } else {
    model_fail("changed(%s, %s)?", what, key);
  }
}

/* ---- answering requests ---- */

enum { A_OK, A_FAIL, A_FAIL_APPLIED, A_REFUSE, A_APPLY };
static const char *const ANSWER[] = {"ok", "unavailable",
                                     "applied, then unavailable", "refused",
                                     "applied (answer pending)"};

static size_t open_ops(etcd_op_t **v, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < nops && n < max; i++)
    if (!ops[i]->ended && !ops[i]->cancelled) v[n++] = ops[i];
  return n;
}

static int deletes_a_wanted_key(const etcd_op_t *op);

static void answer(etcd_op_t *op, int how) {
  /* known bug "ambiguous": etcd did it, and the answer is a failure */
  if (!bug("ambiguous")) {
    if (how == A_FAIL_APPLIED) how = A_FAIL;
    if (op->applied && how != A_OK && how != A_APPLY) how = A_OK;
  }
  /* known bug "held-release" */
  if (how != A_OK && how != A_APPLY && deletes_a_wanted_key(op) &&
      !bug("held-release"))
    how = A_OK;
  char d[300];
  describe_op(op, d, sizeof d);
  note("answer %s: %s", d, ANSWER[how]);
  n_answers++;
  if (how == A_APPLY) {
    op_apply(op);
    return;
  }
  if (how == A_FAIL_APPLIED) op_apply(op);
  if (how != A_OK && op->applied) {
    /* etcd did it; the reconciler hears it failed */
    for (size_t i = 0; i < op->nkeys; i++) {
      int k = key_index(op->keys[i]);
      if (k < 0) continue;
      if (op->values[i] && strcmp(op->kind, "refresh") != 0)
        M.maybe_orphan[k] = 1;
      if (op->removed[i]) {
        M.ext_lost[k] = 1;
        M.lost[k] = M.tick;
      }
    }
  }
  etcd_status_t st = how == A_OK       ? ETCD_OK
                     : how == A_REFUSE ? ETCD_FAILED
                                       : ETCD_UNAVAILABLE;
  answering = op;
  op_end(op, st);
  answering = NULL;
}

/* ---- the model's side of each change ---- */

static void m_produce(int c, int k, int v, uint64_t now) {
  mrec_t *x = &M.c[c].rec[k];
  M.ever_owned[k] = 1;
  if (!x->present) {
    *x = (mrec_t){1, M.tick, v, now, M.c[c].adopt[k]};
  } else if (x->val != v) { /* moves to the front of the key's owners */
    x->val = v;
    x->since = now;
    x->amb = 0;
  }                               /* the same value: it keeps its place */
  for (int d = 0; d < NCONT; d++) /* someone produces it: no delete due */
    M.c[d].dropped[k] = 0;
}

/* Every change of the model is a tick; the requests the reconciler makes
 * in the call that follows carry it. */
static void m_tick(void) {
  dbl_now = ++M.tick;
  if (M.tick >= MAX_TICKS)
    model_fail("more than %d ticks: fewer REGISTER_TEST_STEPS", MAX_TICKS);
  M.orphans_may_go[M.tick] = (unsigned char)(M.synced && !M.hold);
}

/* Docker's sync or the orphan hold changed: a tick of its own. */
static void m_sync_state(int synced, int hold) {
  M.synced = synced;
  M.hold = hold;
  m_tick();
}

static void m_set(int c, const int *val) {
  mcont_t *C = &M.c[c];
  uint64_t now = ++M.clock;
  m_tick();
  for (int k = 0; k < NKEYS; k++) {
    if (val[k] >= 0) {
      m_produce(c, k, val[k], now);
      continue;
    }
    if (C->rec[k].present) {
      C->rec[k].present = 0;
      C->rec[k].amb = 0;
      if (mbb_obliged(c, k)) C->dropped[k] = M.tick;
    }
    C->adopt[k] = 0;
  }
  C->running = 1;
  C->undecided = 0;
  memset(C->claims, 0, sizeof C->claims);
}

static void m_gone(int c) {
  m_tick();
  memset(&M.c[c], 0, sizeof M.c[c]);
}

static void m_keep(int c, const int *val, const unsigned char *claims) {
  mcont_t *C = &M.c[c];
  uint64_t now = ++M.clock;
  m_tick();
  if (!C->undecided) memset(C->claims, 0, sizeof C->claims);
  C->running = 1;
  C->undecided = 1;
  for (int k = 0; k < NKEYS; k++) {
    if (val && val[k] >= 0) m_produce(c, k, val[k], now);
    if (claims && claims[k]) C->claims[k] = 1;
  }
}

/* Which undecided container may have adopted which orphan: any moment it
 * was undecided while the key was an orphan that names it or that it
 * claimed (reconcile.h: reconcile_keep).  Run after every step. */
static void m_mark_adoptable(void) {
  for (int c = 0; c < NCONT; c++) {
    mcont_t *C = &M.c[c];
    if (!C->running || !C->undecided) continue;
    for (int k = 0; k < NKEYS; k++)
      if (M.maybe_orphan[k] && !produced(k) && (C->claims[k] || names(c, k)))
        C->adopt[k] = M.ever_owned[k] = 1;
  }
}

/* The values etcd may hold for k: bit v for VALS[v]; 0 when nobody
 * produces it.  The newest producer wins; one that may own the key since an
 * adoption may instead be the oldest. */
static unsigned m_wanted(int k) {
  unsigned ok = 0;
  for (int amb = -1; amb < NCONT; amb++) {
    if (amb >= 0 && !(M.c[amb].rec[k].present && M.c[amb].rec[k].amb)) continue;
    int best = -1;
    uint64_t best_since = 0;
    for (int c = 0; c < NCONT; c++) {
      const mrec_t *x = &M.c[c].rec[k];
      if (!x->present) continue;
      uint64_t since = c == amb ? 0 : x->since;
      if (best < 0 || since > best_since) {
        best = c;
        best_since = since;
      }
    }
    if (best >= 0) ok |= 1u << M.c[best].rec[k].val;
  }
  return ok;
}

static int any_undecided(void) {
  for (int c = 0; c < NCONT; c++)
    if (M.c[c].running && M.c[c].undecided) return 1;
  return 0;
}

/* What etcd holds under /p against the model.  final: Docker synced and
 * every container decided; dirs: v2, a listing since the last writes (a
 * refused rmdir is dropped until a listing names the directory again). */
static void check_store(int final, int dirs) {
  n_checks++;
  for (int k = 0; k < NKEYS; k++) {
    const dbl_kv_t *kv = store_get(KEYS[k]);
    unsigned want = m_wanted(k);
    if (want) {
      if (!kv) model_fail("%s is missing from etcd", KEYS[k]);
      int v = val_index(kv->value, kv->vlen);
      if (v < 0 || !(want & (1u << v)))
        model_fail("%s holds %s; the newest producer's value is another",
                   KEYS[k], kv->value);
      continue;
    }
    if (!kv) continue;
    int kept = M.maybe_orphan[k] && (!M.synced || M.hold);
    for (int c = 0; c < NCONT; c++)
      if (M.c[c].running && M.c[c].adopt[k]) kept = 1;
    if (!kept || (final && any_undecided()))
      model_fail("%s=%s is in etcd and nobody produces it", KEYS[k], kv->value);
  }
  for (size_t i = 0; i < nstore; i++)
    if (key_index(store[i].key) < 0)
      model_fail("etcd holds %s, outside the key space", store[i].key);
  if (dirs && !fake.txn)
    for (size_t i = 0; i < nstore_dirs; i++)
      if (!store_dir_has_children(store_dirs[i]))
        model_fail("an empty directory is left: %s", store_dirs[i]);
}

/* The reconciler's count of requests in flight is the double's. */
static void check_accounting(void) {
  reconcile_stats_t st;
  reconcile_stats(R, &st);
  size_t n = 0;
  for (size_t i = 0; i < nops; i++) {
    const etcd_op_t *op = ops[i];
    if (!op->ended && !op->cancelled && !op->list &&
        strcmp(op->kind, "delete_prefix") != 0)
      n++;
  }
  if (st.inflight != n)
    model_fail("the reconciler counts %zu requests in flight, etcd has %zu",
               st.inflight, n);
}

/* Answers every request OK (in a random order) and runs every timer until
 * nothing is in flight or due; then, Docker synced, the reconciler must
 * have converged. */
static void quiesce(void) {
  unsigned answers = 0, passes = 0;
  int said_converged = 0;
  for (int i = 0;; i++) {
    if (i > 20000) model_fail("no quiescence after 20000 rounds");
    if (!said_converged && M.synced && reconcile_converged(R)) {
      said_converged = 1;
    }
    etcd_op_t *v[256];
    size_t n = open_ops(v, 256);
    if (n) {
      if (said_converged && bug("converged")) {
        char d[300];
        describe_op(v[0], d, sizeof d);
        model_fail("the reconciler said it had converged, then a timer made "
                   "a request: %s",
                   d);
      }
      answer(v[rnd((unsigned)n)], A_OK);
      answers++;
      continue;
    }
    if (loop_pass() || advance()) {
      passes++;
      continue;
    }
    break;
  }
  note("quiescent (%u answers, %u timer passes)", answers, passes);
  M.drift = 0;
  if (M.synced && !reconcile_converged(R))
    model_fail("not converged, and nothing is in flight or due");
}

/* ---- the steps ---- */

static void gen_records(records_t *recs, int *val, unsigned min, unsigned max) {
  for (int k = 0; k < NKEYS; k++)
    val[k] = -1;
  unsigned n = min + rnd(max - min + 1);
  for (unsigned i = 0; i < n; i++)
    val[rnd(NKEYS)] = (int)rnd(NVALS);
  for (int k = 0; k < NKEYS; k++) /* sorted by key, as policy.c makes them */
    if (val[k] >= 0)
      records_add(recs, KEYS[k], VALS[val[k]], strlen(VALS[val[k]]));
}

static void fmt_records(char *buf, size_t n, const records_t *recs) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < recs->n && used < n; i++)
    used += (size_t)snprintf(buf + used, n - used, " %s=%s",
                             short_key(recs->v[i].key), recs->v[i].value);
}

static void do_set_for(int c) {
  int val[NKEYS];
  records_t recs;
  records_init(&recs);
  gen_records(&recs, val, 1, 4);
  char d[200];
  fmt_records(d, sizeof d, &recs);
  note("set %s:%s", NAMES[c], d);
  m_set(c, val);
  reconcile_set(R, IDS[c], "img", NAMES[c], &recs);
  records_free(&recs);
}

static void do_set(void) {
  do_set_for((int)rnd(NCONT));
}

static void do_gone(void) {
  int c = (int)rnd(NCONT);
  note("gone %s", NAMES[c]);
  m_gone(c);
  if (pct(50)) {
    reconcile_set(R, IDS[c], "img", NAMES[c], NULL);
  } else {
    records_t none;
    records_init(&none);
    reconcile_set(R, IDS[c], "img", NAMES[c], &none);
  }
}

static void do_keep(void) {
  int c = (int)rnd(NCONT), val[NKEYS];
  unsigned char claimed[NKEYS] = {0};
  records_t recs, claims;
  records_init(&recs);
  records_init(&claims);
  int with_recs = pct(50), with_claims = pct(50);
  if (with_recs) gen_records(&recs, val, 0, 3);
  if (with_claims) {
    int cv[NKEYS];
    gen_records(&claims, cv, 1, 3);
    for (int k = 0; k < NKEYS; k++)
      claimed[k] = cv[k] >= 0;
  }
  char d1[200], d2[200];
  fmt_records(d1, sizeof d1, &recs);
  fmt_records(d2, sizeof d2, &claims);
  note("keep %s:%s%s claims:%s", NAMES[c], with_recs ? "" : " (failed)", d1,
       with_claims ? d2 : " none");
  m_keep(c, with_recs ? val : NULL, with_claims ? claimed : NULL);
  reconcile_keep(R, IDS[c], "img", NAMES[c], with_recs ? &recs : NULL,
                 with_claims ? &claims : NULL);
  records_free(&recs);
  records_free(&claims);
}

/* The held-release bug's trigger: a request that deletes a key some
 * container produces now. */
static int deletes_a_wanted_key(const etcd_op_t *op) {
  if (strcmp(op->kind, "txn") != 0 && strcmp(op->kind, "delete") != 0) return 0;
  for (size_t i = 0; i < op->nkeys; i++) {
    int k = key_index(op->keys[i]);
    if (!op->values[i] && k >= 0 && produced(k)) return 1;
  }
  return 0;
}

static void do_answer(void) {
  etcd_op_t *v[256];
  size_t n = open_ops(v, 256);
  if (!n) {
    note("loop pass (nothing open): %u timers", loop_pass());
    return;
  }
  etcd_op_t *op = v[rnd((unsigned)n)];
  int how;
  unsigned x = rnd(100);
  if (op->list)
    how = x < 70 ? A_OK : x < 90 ? A_FAIL : A_REFUSE;
  else if (op->applied)
    how = x < 80 ? A_OK : A_FAIL;
  else
    how = x < 55   ? A_OK
          : x < 70 ? A_FAIL
          : x < 75 ? A_FAIL_APPLIED
          : x < 87 ? A_REFUSE
                   : A_APPLY;
  if (how == A_REFUSE && M.drift && !bug("refused-drift")) how = A_FAIL;
  if ((how == A_REFUSE && !allowed("refuse")) ||
      (how == A_FAIL_APPLIED && !allowed("ambiguous")) ||
      (how == A_APPLY && !allowed("early")) ||
      ((how == A_FAIL || how == A_FAIL_APPLIED) && !allowed("fail")))
    how = A_OK;
  answer(op, how);
}

/* a copy of the store, for a rewind */
static dbl_kv_t *snap;
static size_t nsnap;
static char **snap_dirs;
static size_t nsnap_dirs;
static int have_snap;

static void snap_free(void) {
  for (size_t i = 0; i < nsnap; i++) {
    free(snap[i].key);
    free(snap[i].value);
  }
  for (size_t i = 0; i < nsnap_dirs; i++)
    free(snap_dirs[i]);
  free(snap);
  free(snap_dirs);
  snap = NULL;
  snap_dirs = NULL;
  nsnap = nsnap_dirs = 0;
  have_snap = 0;
}

static void do_snapshot(void) {
  snap_free();
  snap = calloc(nstore + 1, sizeof *snap);
  snap_dirs = calloc(nstore_dirs + 1, sizeof *snap_dirs);
  ASSERT(snap && snap_dirs);
  for (size_t i = 0; i < nstore; i++) {
    snap[i] = store[i];
    snap[i].key = strdup(store[i].key);
    snap[i].value = strdup(store[i].value);
  }
  nsnap = nstore;
  for (size_t i = 0; i < nstore_dirs; i++)
    snap_dirs[i] = strdup(store_dirs[i]);
  nsnap_dirs = nstore_dirs;
  have_snap = 1;
  note("etcd snapshot (%zu keys)", nsnap);
}

/* etcd goes back to the snapshot (a restored backup). */
static void do_rewind(void) {
  if (have_snap) {
    while (nstore)
      store_del(store[0].key);
    while (nstore_dirs)
      store_rmdir_at(0);
    for (size_t i = 0; i < nsnap; i++)
      store_set(snap[i].key, snap[i].value, snap[i].vlen, snap[i].leased);
    for (size_t i = 0; i < nsnap_dirs; i++) { /* the directory and parents */
      char *child = malloc(strlen(snap_dirs[i]) + 3);
      ASSERT(child);
      sprintf(child, "%s/x", snap_dirs[i]);
      store_mkdirs(child);
      free(child);
    }
    for (int k = 0; k < NKEYS; k++) {
      const dbl_kv_t *kv = store_get(KEYS[k]);
      if (!kv) {
        M.ext_lost[k] = 1;
        M.lost[k] = M.tick;
        continue;
      }
      M.maybe_orphan[k] = 1;
      M.restored[k] = 1;
      M.vals_seen[k] |= 1u << val_index(kv->value, kv->vlen);
    }
    M.ext_events++;
    M.drift = 1;
    /* a restore restarts the cluster: what was open fails (what etcd had
     * applied of it is gone with the rest) */
    etcd_op_t *v[256];
    size_t n = open_ops(v, 256);
    note("etcd rewound to the snapshot: %zu open requests fail", n);
    for (size_t i = 0; i < n; i++) {
      if (v[i]->ended || v[i]->cancelled) continue;
      char d[300];
      describe_op(v[i], d, sizeof d);
      note("  %s fails", d);
      answering = v[i];
      op_end(v[i], ETCD_UNAVAILABLE);
      answering = NULL;
    }
  }
  note("reconcile_etcd_rewound()%s", have_snap ? "" : " (nothing changed)");
  reconcile_etcd_rewound(R);
}

/* The bugs it found (issue 23), fixed in reconcile.c: lease_stale and
 * list_stale with key_settle(), have_known = 0 after "unavailable",
 * release_owners(), and the listing's retry counted in
 * reconcile_converged().  The orders of events that triggered them are
 * made by default; REGISTER_TEST_BUGS=none (or a list of the ones to keep)
 * steers around them again, for diagnosis.  What each was:
 *
 *  lease      reconcile_lease_lost() takes every key it knows for gone:
 *             - an orphan that was never on the lease (a run without TTL,
 *               kept while Docker is not synced, orphans are held or an
 *               undecided container may claim it) is believed gone and is
 *               never deleted (decide(): have_known && !have);
 *             - a key in flight (a batch being filled counts) keeps what
 *               the reconciler believed before the loss: a put applied on
 *               the old lease and acknowledged after it, or a request
 *               refused after it, leaves a key the lease took believed in
 *               etcd, never written again.
 *             Steered around: the lease is lost only from a quiet state in
 *             which every key under the prefix is on it.
 *  ambiguous  a write that etcd applied but answered as unavailable (a
 *             timeout after the commit) is taken for not done: have is
 *             left as it was.  When the containers then want what have
 *             says, nothing is written again: a dead container's value, or
 *             a key deleted after all, stays (converged); a key put that
 *             way is forgotten (rkey_maybe_drop), found by the next listing
 *             as an orphan and deleted without make-before-break.  The
 *             repair (a resync after the outage) waits for the next
 *             successful write, which may never come.
 *             Steered around: no answer is "applied, then unavailable".
 *  held-release  make-before-break holds a delete on its container's
 *             held list until the keys the container produces are in etcd;
 *             the list is looked at again when one of its puts is
 *             acknowledged (key_done), when the container is evaluated, or
 *             when every key is touched (a listing, the retry timer).  A key
 *             the container wants again while a delete of it is in flight
 *             counts as missing; when that delete fails (unavailable, or a
 *             transaction refused as a whole: batch_done() sends its keys
 *             back without key_done()), etcd still holds the key at the
 *             wanted value, so nothing is written, no acknowledgement comes
 *             and the held deletes wait for ever: the reconciler never
 *             converges (and after "unavailable" the resync that ends an
 *             outage waits for a successful write that never comes).
 *             Steered around: a request that deletes a key some container
 *             produces now is answered OK.
 *  refused-drift  a listing skips the keys in flight (a batch being
 *             filled, not even sent, counts), and only an OK answer sets
 *             what etcd holds afterwards: when etcd changed behind the
 *             reconciler's back (a rewind) and the request is then
 *             refused, the key keeps the belief from before the listing;
 *             when the containers then want what it says, nothing is
 *             written (a key missing, or a stale one kept, converged).
 *             Steered around: no request is refused between a rewind and
 *             the next quiescent point (the repair is over then).
 *  converged  reconcile_converged() is true while a listing that failed
 *             waits for its retry (list_timer): "in sync" during an etcd
 *             outage, before the drift the listing would find is repaired.
 *             Steered around: quiescence runs every timer, and only with
 *             the bug named does it fail when a timer still makes a request
 *             after the reconciler said it had converged. */
static void quiesce(void);

static int lease_loss_is_safe(void) {
  if (bug("lease")) return 1;
  quiesce();
  for (size_t i = 0; i < nstore; i++)
    if (dbl_under(store[i].key, "/p") && !store[i].leased) return 0;
  return 1;
}

static void do_lease_lost(void) {
  for (int k = 0; k < NKEYS; k++) {
    const dbl_kv_t *kv = store_get(KEYS[k]);
    if (kv && kv->leased) M.lost[k] = M.tick;
  }
  size_t n = dbl_lease_lost();
  M.ext_events++;
  note("the lease is lost (%zu keys go); reconcile_lease_lost()", n);
  reconcile_lease_lost(R);
}

static void step(void) {
  unsigned x = rnd(100);
  if (x < 34) {
    do_answer();
  } else if (x < 48) {
    do_set();
  } else if (x < 52) {
    do_gone();
  } else if (x < 59) {
    if (allowed("keep"))
      do_keep();
    else
      do_set();
  } else if (x < 71) {
    unsigned n = loop_pass();
    note("loop pass: %u timers", n);
  } else if (x < 78) {
    uint64_t before = loop.time;
    unsigned n = advance();
    note("clock +%llu ms: %u timers", (unsigned long long)(loop.time - before),
         n);
  } else if (x < 82) {
    int to = M.synced ? !pct(40) : pct(85);
    m_sync_state(to, M.hold);
    note("docker synced %d", to);
    reconcile_docker_synced(R, to);
  } else if (x < 84) {
    note("resync");
    reconcile_resync(R);
  } else if (x < 86) {
    if (fake.txn && fake.ttl > 0 && allowed("lease") && lease_loss_is_safe())
      do_lease_lost();
    else
      do_answer();
  } else if (x < 88) {
    do_snapshot();
  } else if (x < 89) {
    if (allowed("rewind"))
      do_rewind();
    else
      do_answer();
  } else if (x < 90 && allowed("hold")) {
    int to = M.hold ? 0 : pct(30);
    m_sync_state(M.synced, to);
    note("hold orphans %d", to);
    reconcile_hold_orphans(R, to);
  } else if (x < 94) {
    quiesce();
    check_store(0, 0);
  } else {
    etcd_op_t *v[256];
    size_t n = open_ops(v, 256);
    note("answer all %zu open requests", n);
    for (size_t i = 0; i < n; i++)
      if (!v[i]->ended && !v[i]->cancelled)
        answer(v[i], pct(85) || !allowed("fail") ? A_OK : A_FAIL);
  }
}

/* ---- one sequence ---- */

static void on_converged(void *ud) {
  (void)ud;
}

static void sequence(int v3) {
  rng = seed ^ (uint64_t)seq * 0x9e3779b97f4a7c15ull ^
        (v3 ? 0x5555000000000000ull : 0);
  (void)rnd64();
  srandom((unsigned)rnd64()); /* util_rand: the reconciler's jitter */
  dbl_reset();
  snap_free();
  memset(&M, 0, sizeof M);
  dbl_now = 0;
  nhist = 0;
  step_no = 0;
  if (log_fd >= 0) {
    (void)!ftruncate(log_fd, 0);
    lseek(log_fd, 0, SEEK_SET);
  }
  fake.txn = v3;
  fake.ttl = v3 && pct(70) ? 30 : 0;
  dbl_on_apply = on_apply;

  /* what a previous run left under /p: orphans */
  for (int k = 0; k < NKEYS; k++) {
    if (!pct(35)) continue;
    int v = (int)rnd(NVALS);
    store_set(KEYS[k], VALS[v], strlen(VALS[v]), 0);
    M.maybe_orphan[k] = 1;
    M.vals_seen[k] |= 1u << v;
  }
  if (!v3 && pct(30)) store_mkdirs("/p/q/x"); /* an empty directory */

  ASSERT_EQ(uv_loop_init(&loop), 0);
  loop.time = 1000000; /* uv_now(): the test's clock from here on */
  reconcile_opts_t o = {0};
  o.loop = &loop;
  o.etcd = &fake;
  o.prefix = "/p";
  o.ttl = fake.ttl;
  static const int inflight[] = {1, 2, 4, 0};
  o.max_inflight = inflight[rnd(4)];
  o.changed = on_changed;
  o.converged = on_converged;
  o.ud = NULL;
  R = reconcile_new(&o);
  note("start: %s, ttl %ld, max_inflight %d, %zu keys in etcd",
       v3 ? "v3" : "v2", fake.ttl, o.max_inflight, nstore);
  reconcile_start(R);

  for (step_no = 1; step_no <= nsteps; step_no++) {
    m_tick();
    step();
    m_mark_adoptable();
    check_accounting();
  }

  /* the end: every container decided, Docker synced, nothing held */
  for (int c = 0; c < NCONT; c++) {
    if (!M.c[c].undecided) continue;
    if (pct(70))
      do_set_for(c);
    else {
      note("gone %s", NAMES[c]);
      m_gone(c);
      reconcile_set(R, IDS[c], "img", NAMES[c], NULL);
    }
  }
  if (!M.synced) {
    m_sync_state(1, M.hold);
    note("docker synced 1");
    reconcile_docker_synced(R, 1);
  }
  if (M.hold) {
    m_sync_state(M.synced, 0);
    note("hold orphans 0");
    reconcile_hold_orphans(R, 0);
  }
  quiesce();
  check_store(1, 0);
  note("resync");
  reconcile_resync(R);
  quiesce();
  check_store(1, 1);

  /* deregistration: everything under /p goes */
  note("deregister");
  for (int c = 0; c < NCONT; c++)
    m_gone(c);
  reconcile_deregister(R);
  quiesce();
  for (size_t i = 0; i < nstore; i++)
    if (dbl_under(store[i].key, "/p"))
      model_fail("after deregistration etcd still holds %s", store[i].key);
  if (!v3 && nstore_dirs)
    model_fail("after deregistration a directory is left: %s", store_dirs[0]);

  reconcile_free(R);
  R = NULL;
  uv_run(&loop, UV_RUN_DEFAULT); /* the timers' close callbacks */
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

/* ---- the two tests ---- */

static unsigned env_uint(const char *name, unsigned dflt) {
  const char *s = getenv(name);
  if (!s || !*s) return dflt;
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  if (*end) {
    fprintf(stderr, "%s: not a number: %s\n", name, s);
    exit(2);
  }
  return (unsigned)v;
}

/* The reconciler's log goes to a file of its own (its tail is printed on
 * failure); REGISTER_TEST_VERBOSE keeps it on stderr. */
static void log_aside(void) {
  out = stderr;
  if (getenv("REGISTER_TEST_VERBOSE") && *getenv("REGISTER_TEST_VERBOSE"))
    return;
  char path[] = "/tmp/register-model-log-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return;
  unlink(path);
  fflush(stderr);
  int real = dup(2);
  if (real < 0) {
    close(fd);
    return;
  }
  out = fdopen(real, "w");
  if (!out) {
    out = stderr;
    close(real);
    close(fd);
    return;
  }
  setvbuf(out, NULL, _IOLBF, 0);
  dup2(fd, 2); /* fd 2 and log_fd share one offset: truncating resets both */
  log_fd = fd;
  if (__sanitizer_set_report_fd)
    __sanitizer_set_report_fd((void *)(intptr_t)real);
}

/* fixed: a seed that found a bug, run on every build (0: none) */
static uint64_t fixed_seed;

static void run(int v3, const char *name) {
  mode = name;
  const char *s = getenv("REGISTER_TEST_SEED");
  if (fixed_seed) {
    seed = fixed_seed;
  } else if (s && *s) {
    seed = strtoull(s, NULL, 10);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
           (uint64_t)getpid() << 32;
  }
  nseq = env_uint("REGISTER_TEST_SEQUENCES", 200);
  nsteps = env_uint("REGISTER_TEST_STEPS", 200);
  unsigned only = env_uint("REGISTER_TEST_SEQUENCE", ~0u);
  strict_mbb = env_uint("REGISTER_TEST_MBB_STRICT", 0) != 0;
  bugs = getenv("REGISTER_TEST_BUGS");
  if (bugs && !*bugs) bugs = NULL;
  without = getenv("REGISTER_TEST_WITHOUT");
  if (without && !*without) without = NULL;
  for (int c = 0; c < NCONT; c++) {
    memset(IDS[c], 'f', 64);
    memset(IDS[c], '1' + c, 12);
    IDS[c][64] = '\0';
  }
  fprintf(stderr,
          "reconcile model (%s): seed %llu (REGISTER_TEST_SEED=%llu to "
          "repeat), %u sequences of %u steps%s%s%s\n",
          name, (unsigned long long)seed, (unsigned long long)seed, nseq,
          nsteps, strict_mbb ? ", strict make-before-break" : "",
          bugs ? ", bug triggers: " : "", bugs ? bugs : "");
  if (without) fprintf(stderr, "without: %s\n", without);
  static int once;
  if (!once++) {
    log_setup(LOG_DEBUG, LOG_TEXT);
    log_aside();
    atexit(at_exit);
  }
  (void)util_rand(1); /* seeds itself once from the clock: reseeded below */
  finished = 0;
  unsigned ran = 0;
  for (seq = only != ~0u ? only : 0; seq < (only != ~0u ? only + 1 : nseq);
       seq++) {
    sequence(v3);
    ran++;
  }
  finished = 1;
  fprintf(out,
          "reconcile model (%s): %u sequences passed: %lu answers, %lu "
          "requests applied, %lu make-before-break checks, %lu store "
          "checks\n",
          name, ran, n_answers, n_applies, n_mbb_checks, n_checks);
  snap_free();
  dbl_reset();
}

TEST(v3_transactions_and_a_lease) {
  run(1, "v3_transactions_and_a_lease");
}

TEST(v2_single_requests_and_directories) {
  run(0, "v2_single_requests_and_directories");
}

/* Seeds that found bugs.  1796632114580149604: a container's new key was
 * in flight when the lease was lost; its old key was deleted on the
 * strength of the value known from before the loss (the new key was gone
 * with the lease): make-before-break broken until the put landed. */
TEST(seeds_that_found_bugs) {
  fixed_seed = 1796632114580149604ull;
  run(1, "v3_transactions_and_a_lease");
  fixed_seed = 0;
}

int main(int argc, char **argv) {
  static const test_entry_t tests[] = {
      TEST_ENTRY(v3_transactions_and_a_lease),
      TEST_ENTRY(v2_single_requests_and_directories),
      TEST_ENTRY(seeds_that_found_bugs),
  };
  return test_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}

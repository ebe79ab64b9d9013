/* reconcile against an etcd double (etcd_double.h): the test decides when
 * and how each request ends, so orders of events that a real etcd gives
 * only by chance (a failure between a batch being filled and its flush) are
 * exact.  Every result is delivered from the loop, as etcd.c does. */
#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include "etcd_double.h"
#include "reconcile.h"
#include "records.h"
#include "test.h"

/* ---- helpers ---- */

static uv_loop_t loop;
static etcd_t fake_etcd = {.txn = 1};
static int converged;

static void on_converged(void *ud) {
  (void)ud;
  converged++;
}

static int run_until(int (*pred)(void));
static int is_converged(void);

/* A reconciler owning /p whose listing is open, the double holding keys[]. */
static reconcile_t *start_with(const char *const *keys, size_t n) {
  dbl_reset();
  converged = 0;
  for (size_t i = 0; i < n; i++)
    store_put(keys[i]);
  uv_loop_init(&loop);
  reconcile_opts_t o = {0};
  o.loop = &loop;
  o.etcd = &fake_etcd;
  o.prefix = "/p";
  o.converged = on_converged;
  reconcile_t *r = reconcile_new(&o);
  reconcile_start(r);
  return r;
}

static reconcile_t *start(void) {
  reconcile_t *r = start_with(NULL, 0);
  etcd_op_t *l = open_op("list");
  ASSERT(l);
  op_end(l, ETCD_OK); /* nothing under /p */
  reconcile_docker_synced(r, 1);
  ASSERT(run_until(is_converged)); /* nothing to write: in sync at once */
  converged = 0;
  return r;
}

static void set(reconcile_t *r, const char *owner, const char *key) {
  records_t recs;
  records_init(&recs);
  records_add(&recs, key, "v", 1);
  reconcile_set(r, owner, "img", NULL, &recs);
  records_free(&recs);
}

static void finish(reconcile_t *r) {
  reconcile_free(r);
  uv_run(&loop, UV_RUN_DEFAULT); /* the close callbacks */
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

static void stuck(int sig) {
  (void)sig;
  static const char msg[] = "the loop is stuck (a timer starting itself)\n";
  (void)!write(2, msg, sizeof msg - 1);
  _exit(1);
}

/* Runs the loop until pred() or 10 s have passed; a loop that never
 * returns fails the test rather than hanging it. */
static int run_until(int (*pred)(void)) {
  signal(SIGALRM, stuck);
  alarm(10);
  uint64_t end = uv_now(&loop) + 10000;
  while (!pred() && uv_now(&loop) < end)
    uv_run(&loop, UV_RUN_ONCE);
  alarm(0);
  return pred();
}

/* ---- tests ---- */

static reconcile_t *the_r;
static etcd_op_t *first_txn;

/* In one loop callback: a second key joins a new batch (its flush is due in
 * this same timer pass), then the first batch fails: writes pause with a
 * batch filled and not sent. */
static void fill_then_fail(uv_timer_t *t) {
  set(the_r, "c2", "/p/b");
  op_end(first_txn, ETCD_UNAVAILABLE);
  uv_close((uv_handle_t *)t, NULL);
}

static int txn_with_both(void) {
  etcd_op_t *op = open_op("txn");
  return op && op != first_txn && op->nkeys == 2;
}

static int is_converged(void) {
  return converged > 0;
}
static int list_open(void) {
  return open_op("list") != NULL;
}

TEST(batch_filled_before_a_pause_waits_for_its_end) {
  reconcile_t *r = the_r = start();
  set(r, "c1", "/p/a");
  uv_run(&loop, UV_RUN_NOWAIT); /* the flush */
  first_txn = open_op("txn");
  ASSERT(first_txn);
  ASSERT_EQ(first_txn->nkeys, 1);
  ASSERT_STR_EQ(first_txn->keys[0], "/p/a");

  uv_timer_t t;
  uv_timer_init(&loop, &t);
  uv_timer_start(&t, fill_then_fail, 0, 0);
  /* the pause (200 ms, jittered) ends, and both keys go in one txn */
  ASSERT(run_until(txn_with_both));
  etcd_op_t *again = open_op("txn");
  ASSERT(again);
  int a = strcmp(again->keys[0], "/p/a") == 0 ? 0 : 1;
  ASSERT_STR_EQ(again->keys[a], "/p/a");
  ASSERT_STR_EQ(again->keys[1 - a], "/p/b");
  ASSERT(!converged);
  op_end(again, ETCD_OK);
  /* etcd answered again: the prefix is listed anew, then all is in sync */
  ASSERT(run_until(list_open));
  op_end(open_op("list"), ETCD_OK);
  ASSERT(run_until(is_converged));
  ASSERT_EQ(nstore, 2);
  finish(r);
}

/* ---- nothing registered is lost to a failed evaluation ---- */

#define ID2 "2222222222223333333333334444444444445555555555556666666666667777"

/* The newest op of a kind for key (ended or not), or NULL. */
static etcd_op_t *op_for(const char *kind, const char *key) {
  for (size_t i = nops; i-- > 0;)
    if (strcmp(ops[i]->kind, kind) == 0)
      for (size_t j = 0; j < ops[i]->nkeys; j++)
        if (strcmp(ops[i]->keys[j], key) == 0) return ops[i];
  return NULL;
}

/* A transaction that deletes key is open: ends every open txn OK first so
 * that the flush of the orphans' deletes goes out. */
static const char *want_key;
static int txn_open_for_key(void) {
  etcd_op_t *op = open_op("txn");
  if (!op) return 0;
  for (size_t j = 0; j < op->nkeys; j++)
    if (strcmp(op->keys[j], want_key) == 0) return 1;
  op_end(op, ETCD_OK);
  return 0;
}

TEST(failed_container_keeps_the_keys_that_name_it) {
  static const char *const keys[] = {"/p/web2/80", "/p/gone/80",
                                     "/p/x/222222222222", "/p/web22/80"};
  reconcile_t *r = start_with(keys, 4);
  reconcile_keep(r, ID2, "img", "web2", NULL, NULL); /* records() failed */
  op_end(open_op("list"), ETCD_OK);
  reconcile_docker_synced(r, 1);
  want_key = "/p/gone/80";
  ASSERT(run_until(txn_open_for_key));
  etcd_op_t *del = open_op("txn");
  ASSERT(del);
  /* the orphans that name nobody go (web22 is another name), those that
   * name web2 by name or id stay */
  ASSERT_EQ(del->nkeys, 2);
  ASSERT(op_for("txn", "/p/web22/80"));
  ASSERT(!op_for("txn", "/p/web2/80"));
  ASSERT(!op_for("txn", "/p/x/222222222222"));
  op_end(del, ETCD_OK);
  ASSERT(run_until(is_converged));

  /* a successful evaluation is final: what it no longer produces goes once
   * its new key is in etcd */
  converged = 0;
  set(r, ID2, "/p/web2/81");
  want_key = "/p/web2/81";
  ASSERT(run_until(txn_open_for_key));
  /* the old key goes in the same transaction (one revision) or after */
  etcd_op_t *put = open_op("txn");
  etcd_op_t *gone = op_for("txn", "/p/web2/80");
  ASSERT(!gone || gone == put);
  op_end(put, ETCD_OK);
  if (!gone) {
    want_key = "/p/web2/80";
    ASSERT(run_until(txn_open_for_key));
    op_end(open_op("txn"), ETCD_OK);
  }
  ASSERT(run_until(is_converged));
  ASSERT(op_for("txn", "/p/x/222222222222"));
  finish(r);
}

TEST(when_every_evaluation_failed_no_orphan_is_deleted) {
  static const char *const keys[] = {"/p/a/80", "/p/b/80"};
  reconcile_t *r = start_with(keys, 2);
  reconcile_hold_orphans(r, 1);
  op_end(open_op("list"), ETCD_OK);
  reconcile_docker_synced(r, 1);
  ASSERT(run_until(is_converged)); /* nothing to do: every key is kept */
  ASSERT(!op_for("txn", "/p/a/80"));
  ASSERT(!op_for("txn", "/p/b/80"));
  /* one container evaluates: the stale keys go again */
  converged = 0;
  reconcile_hold_orphans(r, 0);
  want_key = "/p/a/80";
  ASSERT(run_until(txn_open_for_key));
  op_end(open_op("txn"), ETCD_OK);
  ASSERT(run_until(is_converged));
  finish(r);
}

static int a_txn_is_open(void) {
  return open_op("txn") != NULL;
}

static void spin(void) {
  for (int i = 0; i < 5; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* A previous run's key that nothing produces now (a restart into a policy
 * that names keys otherwise): it went in the first transaction, before
 * the container's new key was written.  Now the new key is written, and
 * acknowledged, first. */
TEST(orphans_go_after_the_containers_keys_are_written) {
  static const char *const keys[] = {"/p/old/web1"};
  reconcile_t *r = start_with(keys, 1);
  op_end(open_op("list"), ETCD_OK);
  set(r, "c1", "/p/new/web1");
  reconcile_docker_synced(r, 1);
  /* the orphan's wait has a timer of a minute armed: UV_RUN_ONCE (in
   * run_until()) would sleep until it, so the loop is turned by hand */
  spin();
  etcd_op_t *first = open_op("txn");
  ASSERT(first);
  ASSERT_EQ(first->nkeys, 1);
  ASSERT_STR_EQ(first->keys[0], "/p/new/web1");
  spin(); /* nothing else while it is on its way */
  ASSERT(!op_for("txn", "/p/old/web1"));
  op_end(first, ETCD_OK);
  spin();
  etcd_op_t *del = open_op("txn");
  ASSERT(del && del != first);
  ASSERT_EQ(del->nkeys, 1);
  ASSERT_STR_EQ(del->keys[0], "/p/old/web1");
  op_end(del, ETCD_OK);
  ASSERT(run_until(is_converged));
  ASSERT(store_get("/p/new/web1") && !store_get("/p/old/web1"));
  finish(r);
}

TEST(pending_checks_keep_the_keys_they_would_produce) {
  static const char *const keys[] = {"/p/svc/10.0.0.5:32768", "/p/old/1"};
  reconcile_t *r = start_with(keys, 2);
  records_t now, claims;
  records_init(&now);
  records_init(&claims);
  records_add(&claims, "/p/svc/10.0.0.5:32768", "v", 1);
  /* a check is pending: nothing is produced yet, the key is claimed */
  reconcile_keep(r, ID2, "img", "web2", &now, &claims);
  op_end(open_op("list"), ETCD_OK);
  reconcile_docker_synced(r, 1);
  /* the key nobody produces waits while the check is pending: the
   * container's keys may be among those, under other names (a restart
   * into a policy that names them otherwise deleted them at once, and the
   * new ones came only with the check's verdict) */
  spin();
  ASSERT(!a_txn_is_open());
  ASSERT(!is_converged());
  /* the check passes: the same key, the same value: nothing is written
   * for it; then the stale one goes */
  reconcile_set(r, ID2, "img", "web2", &claims);
  want_key = "/p/old/1";
  ASSERT(run_until(txn_open_for_key));
  etcd_op_t *stale = open_op("txn");
  ASSERT(stale);
  ASSERT_EQ(stale->nkeys, 1); /* the stale one, not the claimed */
  op_end(stale, ETCD_OK);
  ASSERT(run_until(is_converged));
  records_free(&now);
  records_free(&claims);
  finish(r);
}

static int txn_for_a_again(void) {
  etcd_op_t *op = open_op("txn");
  return op && op != first_txn && op->nkeys == 1 &&
         strcmp(op->keys[0], "/p/a") == 0;
}

TEST(refused_key_is_tried_again_without_a_change) {
  reconcile_t *r = start();
  set(r, "c1", "/p/a");
  uv_run(&loop, UV_RUN_NOWAIT); /* the flush */
  first_txn = open_op("txn");
  ASSERT(first_txn);
  op_end(first_txn, ETCD_FAILED); /* permission denied, NOSPACE, ... */
  ASSERT(!is_converged());
  ASSERT(run_until(txn_for_a_again)); /* after about a second */
  op_end(open_op("txn"), ETCD_OK);
  ASSERT(run_until(is_converged));
  ASSERT_EQ(nstore, 1);
  finish(r);
}

/* Adoption among many (the orphans' token index): every key that names a
 * failed container by id, short id or name, in its key or its value, is
 * kept, however many keys name the same container; a name one character
 * longer names someone else; a name with a character outside tokens is
 * found too; the rest go.  Half the containers fail before the listing
 * ends, half after. */
#define MANY 300
static char many_ids[MANY][65];

static void many_key(char *out, size_t n, int kind, int i) {
  if (kind == 0) snprintf(out, n, "/p/svc%d/80", i);              /* name */
  if (kind == 1) snprintf(out, n, "/p/x/%.12s/tcp", many_ids[i]); /* short */
  if (kind == 2) snprintf(out, n, "/p/y/%d", i); /* the id in its value */
  if (kind == 3) snprintf(out, n, "/p/nobody/svc%dx", i); /* no one's */
  if (kind == 4) snprintf(out, n, "/p/svc%d/443", i);     /* the name again */
}

static int answer_until_converged(void) {
  etcd_op_t *op;
  while ((op = open_op("txn")) != NULL)
    op_end(op, ETCD_OK);
  while ((op = open_op("delete")) != NULL)
    op_end(op, ETCD_OK);
  return is_converged();
}

static void keep_many(reconcile_t *r, int from, int to) {
  for (int i = from; i < to; i++) {
    char name[32];
    snprintf(name, sizeof name, "svc%d", i);
    reconcile_keep(r, many_ids[i], "img", name, NULL, NULL);
  }
}

TEST(failed_containers_keep_every_key_that_names_them_among_many) {
  reconcile_t *r = start_with(NULL, 0);
  char key[128], value[160];
  for (int i = 0; i < MANY; i++) {
    snprintf(many_ids[i], sizeof many_ids[i], "%012x%052x", 0xabc000 + i, i);
    for (int kind = 0; kind < 5; kind++) {
      many_key(key, sizeof key, kind, i);
      int n = kind == 2 ? snprintf(value, sizeof value,
                                   "{\"container\":\"%s\"}", many_ids[i])
                        : snprintf(value, sizeof value, "v");
      store_set(key, value, (size_t)n, 0);
    }
  }
  store_put("/p/a+b/80"); /* named by "a+b": not a token of its own */
  keep_many(r, 0, MANY / 2);
  op_end(open_op("list"), ETCD_OK);
  keep_many(r, MANY / 2, MANY - 10);
  /* a key that appears after the index was built, found by a listing */
  store_put("/p/late/svc295");
  reconcile_resync(r);
  ASSERT(run_until(list_open));
  op_end(open_op("list"), ETCD_OK);
  keep_many(r, MANY - 10, MANY);
  reconcile_keep(r, ID2, "img", "a+b", NULL, NULL);
  reconcile_docker_synced(r, 1);
  ASSERT(run_until(answer_until_converged));
  for (int i = 0; i < MANY; i++)
    for (int kind = 0; kind < 5; kind++) {
      many_key(key, sizeof key, kind, i);
      ASSERT_EQ(store_get(key) != NULL, kind != 3);
    }
  ASSERT(store_get("/p/a+b/80"));
  ASSERT(store_get("/p/late/svc295"));
  ASSERT_EQ(nstore, (size_t)(4 * MANY + 2));
  finish(r);
}

int main(int argc, char **argv) {
  static const test_entry_t tests[] = {
      TEST_ENTRY(batch_filled_before_a_pause_waits_for_its_end),
      TEST_ENTRY(failed_container_keeps_the_keys_that_name_it),
      TEST_ENTRY(when_every_evaluation_failed_no_orphan_is_deleted),
      TEST_ENTRY(refused_key_is_tried_again_without_a_change),
      TEST_ENTRY(pending_checks_keep_the_keys_they_would_produce),
      TEST_ENTRY(orphans_go_after_the_containers_keys_are_written),
      TEST_ENTRY(failed_containers_keep_every_key_that_names_them_among_many),
  };
  return test_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}

/* reconcile: the state.  Per key, the owners that produce it (newest
 * first) and what etcd holds; per container, its owner links; values shared
 * by reference count.  reconcile_set() changes the state and queues every
 * key it touched for the machine in reconcile_queue.c, which talks to etcd.
 */
#include "reconcile_internal.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- values ---- */

void rkey_set_have(rkey_t *k, rstr_t *v) {
  rstr_t *old = k->have;
  k->have = rstr_ref(v);
  rstr_unref(old);
  k->have_known = 1;
}

/* ---- keys ---- */

int reconcile_in_prefix(const reconcile_t *r, const char *key) {
  if (!r->prefix) return 0;
  return strncmp(key, r->prefix, r->prefix_len) == 0 &&
         (key[r->prefix_len] == '/' || key[r->prefix_len] == '\0');
}

rkey_t *rkey_get(reconcile_t *r, const char *key, int create) {
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

void rkey_free(rkey_t *k) {
  rstr_unref(k->have);
  rstr_unref(k->sent);
  free(k->gone_id);
  free(k->gone_image);
  free(k->key);
  free(k);
}

/* Forgets a key nobody wants that etcd does not hold. */
void rkey_maybe_drop(reconcile_t *r, rkey_t *k) {
  if (k->owners || list_linked(&k->qnode) || k->inflight)
    return; /* wanted, queued or held, or in flight */
  if (!k->is_dir && !(k->have_known && !k->have)) return;
  if (k->failed) r->nfailed--;
  map_del(k->is_dir ? r->dirs : r->keys, k->key);
  rkey_free(k);
}

void rkey_set_failed(reconcile_t *r, rkey_t *k, int failed) {
  if (k->failed == (unsigned)!!failed) return;
  k->failed = !!failed;
  if (failed)
    r->nfailed++;
  else
    r->nfailed--;
}

const char *rkey_owner_id(const rkey_t *k) {
  return k->owners ? k->owners->cont->id : k->gone_id;
}

const char *rkey_owner_image(const rkey_t *k) {
  return k->owners ? k->owners->cont->image : k->gone_image;
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
    free(k->gone_image);
    k->gone_id = xstrdup(o->cont->id);
    k->gone_image = xstrdup(o->cont->image ? o->cont->image : "");
  }
  rkey_set_failed(r, k, 0);
  rkey_touch(r, k);
  rstr_unref(o->value);
  free(o);
}

void rcont_drop(reconcile_t *r, rcont_t *c) {
  rcont_release(r, c, 1); /* gone: nothing new to wait for */
  while (c->owners) {
    owner_t *o = c->owners;
    c->owners = o->cnext;
    owner_detach(r, o);
  }
  map_del(r->conts, c->id);
  free(c->id);
  free(c->image);
  free(c);
}

void reconcile_set(reconcile_t *r, const char *id, const char *image,
                   const records_t *recs) {
  rcont_t *c = map_get(r->conts, id);
  if (!recs || recs->n == 0) {
    if (c) rcont_drop(r, c);
    reconcile_pump(r);
    return;
  }
  if (!c) {
    c = xcalloc(1, sizeof *c);
    c->id = xstrdup(id);
    list_init(&c->held);
    map_put(r->conts, c->id, c);
  }
  if (!c->image || strcmp(c->image, image ? image : "") != 0) {
    free(c->image);
    c->image = xstrdup(image ? image : "");
  }
  unsigned gen = ++r->gen;
  for (size_t i = 0; i < recs->n; i++) {
    const record_t *rec = &recs->v[i];
    rkey_t *k = rkey_get(r, rec->key, 1);
    int had_owner = k->owners != NULL;
    owner_t *o = NULL;
    for (owner_t *x = k->owners; x; x = x->knext)
      if (x->cont == c) o = x;
    if (o && rstr_eq(o->value, rec->value, rec->value_len)) {
      o->seen = gen;
      continue;
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
    o->value = rstr_eq(k->have, rec->value, rec->value_len)
                   ? rstr_ref(k->have)
                   : rstr_new(rec->value, rec->value_len);
    o->seen = gen;
    if (!had_owner) r->nowned++;
    o->knext = k->owners; /* the newest owner's value wins */
    k->owners = o;
    free(k->gone_id);
    free(k->gone_image);
    k->gone_id = k->gone_image = NULL;
    rkey_set_failed(r, k, 0);
    rkey_touch(r, k);
  }
  for (owner_t **pp = &c->owners; *pp;) {
    owner_t *o = *pp;
    if (o->seen == gen) {
      pp = &o->cnext;
      continue;
    }
    *pp = o->cnext;
    owner_detach(r, o);
  }
  /* a key it wants again, or one it no longer wants, may end a wait */
  rcont_release(r, c, 0);
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

void reconcile_stats(const reconcile_t *r, reconcile_stats_t *s) {
  memset(s, 0, sizeof *s);
  s->keys = r->nowned; /* kept as owners come and go: O(1), called often */
  s->containers = map_size(r->conts);
  s->queued = r->nqueued + r->nheld; /* held deletes wait too */
  s->inflight = (size_t)r->inflight;
  s->failed = r->nfailed;
  s->puts = r->puts;
  s->refreshes = r->refreshes;
  s->deletes = r->deletes;
  s->errors = r->errors;
  s->converged = reconcile_converged(r);
  s->last_converged = r->last_converged;
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
    free(c->id);
    free(c->image);
    free(c);
  }
  map_free(r->conts);
  free_keys(r->keys);
  free_keys(r->dirs);
  free(r->prefix);
  reconcile_queue_close(r); /* r is freed with the last timer */
}

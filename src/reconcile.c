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
  if (k->owners) return k->owners->cont->image;
  return k->gone_id ? k->gone_id + strlen(k->gone_id) + 1 : NULL;
}

const char *rkey_owner_name(const rkey_t *k) {
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

void rcont_drop(reconcile_t *r, rcont_t *c) {
  rcont_release(r, c, 1); /* gone: nothing new to wait for */
  while (c->owners) {
    owner_t *o = c->owners;
    c->owners = o->cnext;
    owner_detach(r, o);
  }
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

static int rcont_named_by(const rcont_t *c, const rkey_t *k) {
  for (size_t i = 0; i < c->nclaims; i++)
    if (strcmp(k->key, c->claims[i]) == 0) return 1;
  for (size_t i = 0; i < c->ntokens; i++) {
    if (names_token(k->key, strlen(k->key), c->tokens[i]) ||
        (k->have && names_token(k->have->s, k->have->len, c->tokens[i])))
      return 1;
  }
  return 0;
}

/* The orphans that name c become c's, at the value etcd holds.  An orphan
 * is a key under the prefix that etcd holds, that nothing produces and
 * that this process never owned (it knows where those came from). */
static void rcont_adopt(reconcile_t *r, rcont_t *c) {
  if ((!c->ntokens && !c->nclaims) || !r->primed || !r->prefix) return;
  unsigned gen = ++r->gen;
  size_t adopted = 0;
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->keys);
  while (map_iter_next(&it, NULL, &v)) {
    rkey_t *k = v;
    if (k->owners || k->owned_once || k->inflight || k->is_dir ||
        !k->have_known || !k->have || !reconcile_in_prefix(r, k->key) ||
        !rcont_named_by(c, k))
      continue;
    rstr_t *have = rstr_ref(k->have);
    owner_put(r, c, k, have->s, have->len, gen);
    rstr_unref(have);
    adopted++;
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

void reconcile_adopt_all(reconcile_t *r) {
  map_iter_t it;
  void *v;
  map_iter_init(&it, r->conts);
  while (map_iter_next(&it, NULL, &v))
    rcont_adopt(r, v);
}

void reconcile_keep(reconcile_t *r, const char *id, const char *image,
                    const char *name, const records_t *recs,
                    const records_t *claims) {
  rcont_t *c = rcont_get(r, id, image, name);
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
  rcont_release(r, c, 0);
  reconcile_pump(r);
}

void reconcile_hold_orphans(reconcile_t *r, int hold) {
  if (r->hold_orphans == !!hold) return;
  r->hold_orphans = !!hold;
  if (hold)
    log_warn("every running container's policy call failed: keeping every "
             "key under the prefix until one succeeds");
  else
    reconcile_touch_all(r); /* the stale ones may go now */
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
    rcont_forget_tokens(c);
    free(c->id);
    free(c->image);
    free(c->name);
    free(c);
  }
  map_free(r->conts);
  free_keys(r->keys);
  free_keys(r->dirs);
  free(r->prefix);
  reconcile_queue_close(r); /* r is freed with the last timer */
}

/* list: one intrusive, circular, doubly-linked list for every queue and
 * every set of live objects, in the manner of libuv's queue.h.
 *
 * A list is a head (list_t) whose next and prev point at itself when it is
 * empty; an element embeds a list_t node and is found back from it with
 * list_entry().  A node is either detached (next == prev == NULL, as
 * xcalloc() leaves it) or on exactly one list: inserting asserts that it is
 * detached, so nothing is ever queued twice, and removing asserts that it
 * is linked and leaves it detached.  These checks are a few compares and
 * stay in every build. */
#ifndef REGISTER_LIST_H
#define REGISTER_LIST_H

#include <stddef.h>

#include "util.h"

typedef struct list {
  struct list *next, *prev;
} list_t;

/* The element that holds node `ptr` as its member `field`. */
#define list_entry(ptr, type, field)                                           \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

/* For each node on h, in order; the body must not remove n (see below). */
#define list_foreach(n, h) for ((n) = (h)->next; (n) != (h); (n) = (n)->next)

static inline void list_init(list_t *h) {
  h->next = h->prev = h;
}

static inline int list_empty(const list_t *h) {
  REGISTER_ASSERT(h->next != NULL); /* a head is initialised */
  return h->next == h;
}

/* 1 when the node is on a list. */
static inline int list_linked(const list_t *n) {
  return n->next != NULL;
}

static inline void list_insert_tail(list_t *h, list_t *n) {
  REGISTER_ASSERT(n->next == NULL && n->prev == NULL); /* on no list */
  n->next = h;
  n->prev = h->prev;
  h->prev->next = n;
  h->prev = n;
}

static inline void list_insert_head(list_t *h, list_t *n) {
  REGISTER_ASSERT(n->next == NULL && n->prev == NULL); /* on no list */
  n->next = h->next;
  n->prev = h;
  h->next->prev = n;
  h->next = n;
}

static inline void list_remove(list_t *n) {
  REGISTER_ASSERT(n->next != NULL && n->next->prev == n &&
                  n->prev->next == n); /* linked, and consistently */
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->next = n->prev = NULL;
}

/* The first node, or NULL when h is empty. */
static inline list_t *list_first(const list_t *h) {
  return list_empty(h) ? NULL : h->next;
}

/* Removes and returns the first node, or NULL when h is empty. */
static inline list_t *list_pop(list_t *h) {
  list_t *n = list_first(h);
  if (n) list_remove(n);
  return n;
}

#endif

/* linesplit: turns a byte stream (Docker's event stream: one JSON object
 * per line) into lines, with a cap on line length so one enormous line
 * cannot grow memory without bound. */
#ifndef REGISTER_LINESPLIT_H
#define REGISTER_LINESPLIT_H

#include <stddef.h>

#include "util.h"

typedef struct {
  buf_t buf; /* the incomplete last line */
  size_t max_line;
  size_t dropping; /* > 0: bytes dropped of an over-long line so far */
  int feeding;     /* inside linesplit_feed() (its callbacks run there) */
} linesplit_t;

/* line: a complete line without its "\n" or "\r\n" (never empty).
 * too_long: a line longer than max_line was dropped (total bytes).  Both
 * run inside linesplit_feed(): they may not feed, reset or free the
 * splitter (asserted; etcd_watch.c ends a watch after the feed returns). */
typedef struct {
  void (*line)(void *ud, const char *p, size_t n);
  void (*too_long)(void *ud, size_t n);
} linesplit_cbs_t;

/* max_line > 0. */
void linesplit_init(linesplit_t *ls, size_t max_line);
void linesplit_free(linesplit_t *ls);
void linesplit_feed(linesplit_t *ls, const char *p, size_t n,
                    const linesplit_cbs_t *cbs, void *ud);
/* Bytes of an unfinished line still held (what a cut stream loses). */
size_t linesplit_pending(const linesplit_t *ls);
void linesplit_reset(linesplit_t *ls);

#endif

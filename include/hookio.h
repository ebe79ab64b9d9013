/* hookio: the I/O that policy hooks ask for, done by the daemon: HTTP
 * requests (http.c) and read-only etcd access (etcd.c).  The policy worker
 * sends an iocall_t; the answer goes back as an iocall_answer_t, always
 * from the loop (never inside hookio_start()), unless cancelled.
 *
 * A request is named by (tag, id): the tag is the worker's incarnation, so
 * that the numbers of two workers never meet.  Knows nothing of Lua. */
#ifndef REGISTER_HOOKIO_H
#define REGISTER_HOOKIO_H

#include <stdint.h>

#include "etcd.h"
#include "http.h"
#include "iocall.h"

typedef struct hookio hookio_t;

typedef void (*hookio_done_fn)(void *ud, uint64_t tag, uint64_t id,
                               const iocall_answer_t *a);

/* http and etcd may be NULL: such requests are answered with an error. */
hookio_t *hookio_new(uv_loop_t *loop, http_t *http, etcd_t *etcd);
/* Drops every request; no answer follows.  h's memory goes in the close
 * callback of its timer. */
void hookio_free(hookio_t *h);
/* Starts a request; done gets its answer from the loop. */
void hookio_start(hookio_t *h, uint64_t tag, uint64_t id, const iocall_t *c,
                  hookio_done_fn done, void *ud);
/* No answer is wanted for (tag, id), or for any request of tag (id 0). */
void hookio_cancel(hookio_t *h, uint64_t tag, uint64_t id);
size_t hookio_inflight(const hookio_t *h);

#endif

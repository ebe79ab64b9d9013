/* notify: systemd's readiness protocol (sd_notify), spoken directly: one
 * datagram per message to $NOTIFY_SOCKET.  READY=1 once the first sync has
 * converged, STATUS= lines, WATCHDOG=1 every half of $WATCHDOG_USEC while
 * the loop runs, STOPPING=1 on shutdown.  Without $NOTIFY_SOCKET it does
 * nothing at all (no timer either). */
#ifndef REGISTER_NOTIFY_H
#define REGISTER_NOTIFY_H

#include <uv.h>

typedef struct notify notify_t;

/* NULL when systemd did not ask for notifications. */
notify_t *notify_new(uv_loop_t *loop);
void notify_free(notify_t *n);
void notify_ready(notify_t *n, const char *status);
void notify_status(notify_t *n, const char *status);
void notify_stopping(notify_t *n);

#endif

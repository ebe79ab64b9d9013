/* stopsig: SIGTERM and SIGINT seen while the loop is held.  A synchronous
 * policy call blocks the loop (for at most --policy-timeout + 0.5 s); so
 * that a stop is not kept waiting, a handler put in front of libuv's sets
 * a flag, which the worker's wait looks at (worker_opts_t.interrupted):
 * the call is abandoned at once (the worker killed) and later calls fail
 * at once.  libuv's handler still delivers the signal to the loop. */
#ifndef REGISTER_STOPSIG_H
#define REGISTER_STOPSIG_H

#include <signal.h>

/* After uv_signal_start() for both SIGTERM and SIGINT. */
void stopsig_chain(void);
/* The flag: 1 once either signal came; for worker_opts_t.interrupted. */
volatile sig_atomic_t *stopsig_flag(void);
/* SIGHUP blocked (1: from main(), before the loop handles it) or unblocked
 * (0: after uv_signal_start() for it).  A reload asked meanwhile (systemctl
 * reload right after the start, while the policy loads) ended the process;
 * blocked, it waits and comes then.  The policy worker and the commands
 * start with no signal blocked (posix_spawn's and libuv's masks). */
void stopsig_hup(int hold);

#endif

/* stopsig: see include/stopsig.h */
#include "stopsig.h"

#include <stddef.h>

static volatile sig_atomic_t stop_signalled;
static struct sigaction uv_actions[2]; /* libuv's, for SIGTERM and SIGINT */

static void on_stop_signal(int sig) {
  stop_signalled = 1;
  const struct sigaction *o = &uv_actions[sig == SIGINT];
  if (o->sa_handler != SIG_DFL && o->sa_handler != SIG_IGN) o->sa_handler(sig);
}

void stopsig_chain(void) {
  const int sigs[2] = {SIGTERM, SIGINT};
  for (int i = 0; i < 2; i++) {
    struct sigaction sa;
    if (sigaction(sigs[i], NULL, &uv_actions[i]) < 0) continue;
    if (uv_actions[i].sa_flags & SA_SIGINFO) continue; /* not libuv's */
    sa = uv_actions[i];
    sa.sa_handler = on_stop_signal;
    sigaction(sigs[i], &sa, NULL);
  }
}

volatile sig_atomic_t *stopsig_flag(void) {
  return &stop_signalled;
}

void stopsig_hup(int hold) {
  sigset_t hup;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  sigprocmask(hold ? SIG_BLOCK : SIG_UNBLOCK, &hup, NULL);
}

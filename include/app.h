/* app: the daemon.  Wires Docker -> policy -> reconciler -> etcd in one
 * libuv loop, handles signals, and shuts everything down in order so that
 * leak checkers stay quiet. */
#ifndef REGISTER_APP_H
#define REGISTER_APP_H

#include "config.h"

/* Runs until SIGTERM/SIGINT (or, with --once, until the first sync ends).
 * Returns the process exit code. */
int app_run(const config_t *cfg);

#endif

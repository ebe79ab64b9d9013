/* watch: `register watch`, the consuming half of service discovery.
 *
 * Follows a prefix of etcd (a full read, then a watch from its revision)
 * and keeps a file rendered from it by a Lua renderer, run in a policy
 * worker (the sandbox and limits of policies).  After a change, and once
 * changes have been quiet for --wait's MIN (or waited its MAX), the
 * prefix is read again as a whole (one snapshot: a half-read tree is
 * never rendered) and rendered; a text that differs from the file's is
 * written to a temporary file beside it, checked (--check), renamed over
 * the file (mode and owner kept) and followed by --reload.  One command at
 * a time; a failed render, check or write keeps the last good file.
 *
 * The layers: main.c calls watch_main(); it uses etcd, etcd_watch, worker,
 * command, httpd and notify, none of which knows of it. */
#ifndef REGISTER_WATCH_H
#define REGISTER_WATCH_H

#include "config.h"

/* Runs until SIGTERM/SIGINT (0), or with --once until the file is in place
 * (0) or cannot be (1). */
int watch_run(const config_t *cfg);

#endif

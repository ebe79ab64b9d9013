/* check: `register check [OPTIONS] POLICY [INSPECT.json ...]`, a policy
 * tried on saved inspect output, or on the engine's (--container: one
 * blocking request each, no loop).  No etcd: the hooks' HTTP is printed
 * instead of sent, health checks are assumed (--assume-checks). */
#ifndef REGISTER_CHECK_H
#define REGISTER_CHECK_H

#include <stdio.h>

#include "util.h"
#include "worker.h"

/* argv[1] is "check".  Prints one JSON line per record on stdout, errors
 * and a summary line on stderr (`register check --help` has the options).
 * Returns the exit code: 0, 1 (the policy, a call, a record or an input
 * failed), 2 (usage). */
int check_main(int argc, char **argv);

/* The saved inspect documents in files (an array or one object per file,
 * - for stdin) run through the policy in p as register check runs them,
 * every check assumed passing; each record as a JSON line on out (NULL:
 * not written), every problem on stderr.  0, or -1 when a file cannot be
 * read, a policy call or a hook fails, or a record is rejected.  For
 * `register policy push`. */
int check_inspect_files(worker_t *p, char **files, int n, FILE *out);

/* The largest inspect document read from a file or stdin: the cap on a
 * reply from the engine (http.h's default body cap). */
#define CHECK_MAX_INSPECT (32u << 20)

#endif

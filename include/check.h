/* check: `register check [OPTIONS] POLICY [INSPECT.json ...]`, a policy
 * tried on saved inspect output, or on the engine's (--container: one
 * blocking request each, no loop).  No etcd: the hooks' HTTP is printed
 * instead of sent, health checks are assumed (--assume-checks). */
#ifndef REGISTER_CHECK_H
#define REGISTER_CHECK_H

/* argv[1] is "check".  Prints one JSON line per record on stdout, errors
 * and a summary line on stderr (`register check --help` has the options).
 * Returns the exit code: 0, 1 (the policy, a call, a record or an input
 * failed), 2 (usage). */
int check_main(int argc, char **argv);

#endif

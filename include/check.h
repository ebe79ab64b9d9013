/* check: `register check POLICY [INSPECT.json ...]`, a policy tried
 * offline on saved inspect output.  No loop, no etcd, no Docker: the
 * hooks' HTTP is printed instead of sent. */
#ifndef REGISTER_CHECK_H
#define REGISTER_CHECK_H

/* argv[1] is "check".  Prints one JSON line per record on stdout and
 * errors on stderr.  Returns the exit code: 0, 1 (a policy or input
 * failed), 2 (usage). */
int check_main(int argc, char **argv);

#endif

/* policy_cmd: `register policy push|status|promote|rollback`, the
 * operator's side of the fleet's policy in etcd (policydoc.h): one
 * command, its own loop and etcd client, one line per problem. */
#ifndef REGISTER_POLICY_CMD_H
#define REGISTER_POLICY_CMD_H

/* argv[0] is "policy".  Exit status: 0 done, 1 failed (one line on
 * stderr), 2 bad usage. */
int policy_cmd_main(int argc, char **argv);

#endif

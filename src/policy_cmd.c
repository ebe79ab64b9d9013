/* policy_cmd: see include/policy_cmd.h */
#include "policy_cmd.h"

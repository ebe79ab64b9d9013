/* sig: see include/sig.h */
#include "sig.h"

/* policydoc: see include/policydoc.h */
#include "policydoc.h"

/* local_ca.c - placeholder while being written (see local_ca.h). */
#include "local_ca.h"

/* nbdsrv nofilter filter: passes every call through unchanged.
 *
 * Useful to measure what one layer of the stack costs, and to test
 * that the stack itself changes nothing a client sees.
 */
#include <nbdkit-filter.h>

static struct nbdkit_filter filter = {
  .name = "nofilter",
  .longname = "nbdsrv nofilter filter",
};

NBDKIT_REGISTER_FILTER (filter)

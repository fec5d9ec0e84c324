/* Unit test: common/include/minmax.h evaluates each argument once. */
#include <stdint.h>

#include "minmax.h"
#include "stubs.h"

int
main (void)
{
  int i = 0;
  uint64_t big = UINT64_MAX;

  check (MIN (1, 2) == 1 && MIN (2, 1) == 1, "MIN picks the smaller");
  check (MAX (1, 2) == 2 && MAX (2, 1) == 2, "MAX picks the larger");
  check (MIN (i++, 10) == 0 && i == 1, "MIN evaluates arguments once");
  check (MAX (big, (uint64_t) 1) == UINT64_MAX, "MAX on 64-bit values");
  check (MIN (-1, 0) == -1, "MIN on negative values");
  return test_summary ();
}

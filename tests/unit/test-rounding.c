/* Unit test: common/include/rounding.h. */
#include <stdint.h>

#include "rounding.h"
#include "stubs.h"

int
main (void)
{
  check (!is_power_of_2 (0), "0 is not a power of 2");
  check (is_power_of_2 (1) && is_power_of_2 (4096), "1 and 4096 are");
  check (is_power_of_2 (UINT64_C (1) << 63), "2^63 is");
  check (!is_power_of_2 (3) && !is_power_of_2 (UINT64_MAX), "3 is not");
  check (round_down (4095, 512) == 3584, "round_down to 512");
  check (round_down (4096, 4096) == 4096, "round_down keeps a multiple");
  check (round_up (1, 512) == 512 && round_up (0, 512) == 0,
         "round_up to 512");
  check (round_up (1000, 3) == 1002, "round_up to a non-power of 2");
  check (round_up (UINT64_MAX - 511, 512) == UINT64_MAX - 511,
         "round_up at the top keeps a multiple");
  return test_summary ();
}

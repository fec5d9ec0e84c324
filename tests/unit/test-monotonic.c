/* Unit test: common/include/monotonic.h counts nanoseconds forward. */
#include <stdint.h>
#include <time.h>

#include "monotonic.h"
#include "stubs.h"

int
main (void)
{
  int64_t a = monotonic_ns (), b, c;
  struct timespec ms = { .tv_nsec = 1000000 };

  b = monotonic_ns ();
  nanosleep (&ms, NULL);
  c = monotonic_ns ();
  check (a > 0, "the clock is past its origin");
  check (b >= a, "never goes back");
  check (c - b >= 1000000, "a 1 ms sleep shows as at least 1e6 ns");
  check (c - b < INT64_C (10000000000), "and not as 10 s");
  return test_summary ();
}

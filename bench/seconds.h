/* The bench programs' clock: the server's monotonic clock
 * (common/include/monotonic.h) in seconds, as a double.  The programs
 * are compiled alone with `cc`, so the header is found by its path.
 */
#ifndef NBDSRV_BENCH_SECONDS_H
#define NBDSRV_BENCH_SECONDS_H

#include "../common/include/monotonic.h"

static inline double
now (void)
{
  return monotonic_ns () / 1e9;
}

#endif /* NBDSRV_BENCH_SECONDS_H */

/* The bench programs' clock: seconds on CLOCK_MONOTONIC, as a double. */
#ifndef NBDSRV_BENCH_SECONDS_H
#define NBDSRV_BENCH_SECONDS_H

#include <time.h>

static inline double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

#endif /* NBDSRV_BENCH_SECONDS_H */

/* nbdsrv: the monotonic clock in nanoseconds, for timing requests and
 * deadlines (never the wall clock, which can jump).
 */
#ifndef NBDSRV_MONOTONIC_H
#define NBDSRV_MONOTONIC_H

#include <stdint.h>
#include <time.h>

static inline int64_t
monotonic_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif /* NBDSRV_MONOTONIC_H */

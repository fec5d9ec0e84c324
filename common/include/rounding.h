/* nbdsrv: powers of two and rounding to an alignment. */
#ifndef NBDSRV_ROUNDING_H
#define NBDSRV_ROUNDING_H

#include <stdbool.h>
#include <stdint.h>

static inline bool
is_power_of_2 (uint64_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

/* V rounded down to a multiple of ALIGN (any non-zero value). */
static inline uint64_t
round_down (uint64_t v, uint64_t align)
{
  return v - v % align;
}

/* V rounded up to a multiple of ALIGN (non-zero); the caller checks
 * that the result fits (v <= UINT64_MAX - align + 1).
 */
static inline uint64_t
round_up (uint64_t v, uint64_t align)
{
  return round_down (v + align - 1, align);
}

#endif /* NBDSRV_ROUNDING_H */

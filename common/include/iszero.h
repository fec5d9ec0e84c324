/* nbdsrv: test whether a buffer is all zero bytes. */
#ifndef NBDSRV_ISZERO_H
#define NBDSRV_ISZERO_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* Once the first 16 bytes are known to be zero, the buffer is all zero
 * exactly when every later byte equals the one 16 before it, which one
 * memcmp of the buffer against itself checks fast, with no zero page
 * to compare against.
 */
static inline bool
is_zero (const void *buffer, size_t size)
{
  const unsigned char *p = buffer;
  size_t i;

  for (i = 0; i < size && i < 16; ++i)
    if (p[i] != 0)
      return false;
  return size <= 16 || memcmp (p, p + 16, size - 16) == 0;
}

#endif /* NBDSRV_ISZERO_H */

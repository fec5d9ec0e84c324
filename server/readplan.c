/* nbdsrv: how to answer a structured READ whose data holds zeroes
 * (R-18 beyond).  Pure: unit-tested in tests/unit/test-readplan.c.
 */
#include "config.h"

#include "iszero.h"
#include "protocol.h"

/* Plan the reply to a READ of COUNT bytes at OFFSET whose data is in
 * BUF: runs of whole MIN_HOLE blocks (counted from the request's start)
 * that are all zero bytes become holes, the rest data, neighbours
 * merged.  At most MAX pieces (MAX >= 1): once only one is left, the
 * rest is one data piece.  Returns the number of pieces.
 */
size_t
read_plan (const char *buf, uint64_t offset, uint32_t count,
           uint32_t min_hole, struct read_piece *out, size_t max)
{
  uint32_t pos = 0;
  size_t n = 0;

  while (pos < count) {
    uint32_t len = count - pos < min_hole ? count - pos : min_hole;
    bool hole = len == min_hole && is_zero (buf + pos, len);

    if (n > 0 && out[n - 1].hole == hole)
      out[n - 1].length += len;
    else if (n == max - 1)
      break;                    /* the last piece left: data to the end */
    else
      out[n++] = (struct read_piece) { offset + pos, len, hole };
    pos += len;
  }
  if (pos < count) {
    if (n > 0 && !out[n - 1].hole)
      out[n - 1].length += count - pos;
    else
      out[n++] = (struct read_piece) { offset + pos, count - pos, false };
  }
  return n;
}

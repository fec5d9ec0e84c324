/* Unit test: which parts of a READ go out as holes (server/readplan.c,
 * R-18 beyond).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "protocol.h"
#include "stubs.h"

#define K 1024

static char buf[64 * K];

int
main (void)
{
  struct read_piece p[4];
  size_t n;

  memset (buf + 8 * K, 'a', 4 * K);           /* data at 8K..12K */
  buf[14 * K + 100] = 'b';                    /* one byte in 12K..16K */
  n = read_plan (buf, 1 << 20, sizeof buf, 4 * K, p, 4);
  check (n == 3, "hole, data, hole: %zu pieces", n);
  check (p[0].hole && p[0].offset == 1 << 20 && p[0].length == 8 * K,
         "the leading zero blocks, at the request's offset");
  check (!p[1].hole && p[1].offset == (1 << 20) + 8 * K &&
         p[1].length == 8 * K, "data blocks merged");
  check (p[2].hole && p[2].length == 48 * K, "the trailing zero blocks");
  n = read_plan (buf, 0, sizeof buf, 4 * K, p, 2);
  check (n == 2 && p[0].hole && !p[1].hole &&
         p[1].length == sizeof buf - 8 * K,
         "past the piece limit the rest is one data piece");
  n = read_plan (buf, 0, sizeof buf, 4 * K, p, 1);
  check (n == 1 && !p[0].hole && p[0].length == sizeof buf,
         "one piece: all data");
  n = read_plan (buf, 0, 6 * K, 4 * K, p, 4);
  check (n == 2 && p[0].hole && p[0].length == 4 * K && !p[1].hole &&
         p[1].length == 2 * K, "a partial last block is data");
  memset (buf, 0, sizeof buf);
  n = read_plan (buf, 0, sizeof buf, 4 * K, p, 4);
  check (n == 1 && p[0].hole && p[0].length == sizeof buf,
         "all zero: one hole");
  return test_summary ();
}

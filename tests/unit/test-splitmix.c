/* Unit test: common/include/splitmix.h produces the published
 * splitmix64 sequence, and any byte range of a stream without
 * computing what lies before it.
 */
#include <stdint.h>
#include <string.h>

#include "splitmix.h"
#include "stubs.h"

int
main (void)
{
  /* The reference outputs for the state 1234567, from the authors'
   * splitmix64.c, so the plugins' disks are the generator they claim.
   */
  uint64_t state = 1234567;
  unsigned char whole[64], part[64];
  uint64_t w;
  unsigned i, off, len;

  check (splitmix_next (&state) == UINT64_C (6457827717110365317),
         "first reference output");
  check (splitmix_next (&state) == UINT64_C (3203168211198807973),
         "second reference output");
  check (splitmix_next (&state) == UINT64_C (9817491932198370423),
         "third reference output");
  check (state == 1234567 + 3 * SPLITMIX_GOLDEN,
         "the state advances by the golden step");

  /* Word 0 of a stream is mix(KEY), word i the i-th value after the
   * state KEY, each stored little endian.
   */
  state = 99;
  splitmix_fill (whole, sizeof whole, 0, 99);
  for (i = 0; i < sizeof whole / 8; ++i) {
    w = i == 0 ? splitmix_mix (99) : splitmix_next (&state);
    check (whole[8*i] == (w & 0xff) && whole[8*i+7] == w >> 56,
           "word %u is stored little endian", i);
  }

  /* Any unaligned range equals the same bytes of the whole stream. */
  for (off = 0; off < 24; ++off)
    for (len = 0; off + len <= sizeof part && len < 20; ++len) {
      memset (part, 0xaa, sizeof part);
      splitmix_fill (part, len, off, 99);
      check (memcmp (part, whole + off, len) == 0,
             "range [%u, %u) matches the stream", off, off + len);
      check (len == sizeof part || part[len] == 0xaa,
             "range [%u, %u) writes no further", off, off + len);
    }

  /* Another key gives another stream. */
  splitmix_fill (part, sizeof part, 0, 100);
  check (memcmp (part, whole, sizeof part) != 0, "the key matters");
  return test_summary ();
}

/* Unit test: common/include/iszero.h finds a non-zero byte wherever it
 * is, around the 16-byte head that the memcmp trick relies on.
 */
#include <stdlib.h>
#include <string.h>

#include "iszero.h"
#include "stubs.h"

int
main (void)
{
  const size_t max = 100;
  unsigned char *buf = calloc (1, max);
  size_t size, pos;

  if (buf == NULL)
    return EXIT_FAILURE;

  check (is_zero (buf, 0), "an empty buffer is zero");
  check (is_zero (NULL, 0), "an empty buffer is not read");
  for (size = 1; size <= max; ++size) {
    check (is_zero (buf, size), "%zu zero bytes", size);
    for (pos = 0; pos < size; ++pos) {
      buf[pos] = 1;
      check (!is_zero (buf, size), "%zu bytes, non-zero at %zu", size, pos);
      buf[pos] = 0;
    }
  }

  /* A byte just past the end is not looked at. */
  buf[50] = 1;
  check (is_zero (buf, 50), "the byte after the buffer is ignored");
  check (is_zero (buf + 51, max - 51), "the byte before it is ignored");

  free (buf);
  return test_summary ();
}

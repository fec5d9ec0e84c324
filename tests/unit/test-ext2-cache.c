/* Unit test: filters/ext2/ext2-cache.c keeps the most recent
 * single-block reads and forgets what a write overlaps.
 */
#include <stdint.h>
#include <string.h>

#include "ext2-cache.h"
#include "stubs.h"

/* A block of LEN bytes, all BYTE. */
static char *
block (char *buf, int byte, size_t len)
{
  memset (buf, byte, len);
  return buf;
}

int
main (void)
{
  struct ext2_cache c = { 0 };
  char a[4096], out[4096];
  uint64_t i;

  check (!ext2_cache_get (&c, 0, 1024, out), "an empty cache misses");
  ext2_cache_put (&c, 1024, 1024, block (a, 'a', 1024));
  check (ext2_cache_get (&c, 1024, 1024, out) && out[0] == 'a'
         && out[1023] == 'a', "a block put is got back");
  check (!ext2_cache_get (&c, 1024, 2048, out),
         "the same offset with another length misses");
  check (!ext2_cache_get (&c, 0, 1024, out), "another offset misses");

  /* Fill the rest, touch the first, add one more: the second goes. */
  for (i = 1; i < EXT2_CACHE_ENTRIES; i++)
    ext2_cache_put (&c, 1024 * (i + 1), 1024, block (a, 'a' + i, 1024));
  check (ext2_cache_get (&c, 1024, 1024, out), "the first is still held");
  ext2_cache_put (&c, 1 << 20, 1024, block (a, 'z', 1024));
  check (!ext2_cache_get (&c, 2048, 1024, out),
         "the least recently used entry is replaced");
  check (ext2_cache_get (&c, 1024, 1024, out) && out[0] == 'a',
         "the recently used entry stays");
  check (ext2_cache_get (&c, 1 << 20, 1024, out) && out[0] == 'z',
         "the new entry is held");

  /* A write from 3071 to 3072 overlaps only the block at 3072. */
  ext2_cache_drop (&c, 3071, 2);
  check (!ext2_cache_get (&c, 3072, 1024, out), "an overlapped block goes");
  check (ext2_cache_get (&c, 4096, 1024, out),
         "a block after the write stays");
  ext2_cache_drop (&c, 1023, 1);
  check (ext2_cache_get (&c, 1024, 1024, out),
         "a write ending just before a block leaves it");
  ext2_cache_drop (&c, 2048, 1);
  check (ext2_cache_get (&c, 1024, 1024, out),
         "a write starting just after a block leaves it");

  ext2_cache_put (&c, 0, EXT2_CACHE_LEN_MAX + 1, a);
  check (!ext2_cache_get (&c, 0, EXT2_CACHE_LEN_MAX + 1, out),
         "a read longer than a block is not kept");
  check (!ext2_cache_get (&c, 0, 0, out), "an empty read never hits");

  ext2_cache_free (&c);
  check (!ext2_cache_get (&c, 1024, 1024, out), "freed, it is empty");
  return test_summary ();
}

/* nbdsrv swab filter: swap the bytes of each 16, 32 or 64-bit word of
 * the layer below (disks of the Atari Falcon, whose IDE controller is
 * wired byte-swapped; or a little-endian view of the pattern plugin).
 *
 * Requests must be aligned to the word size: stack the blocksize
 * filter above this one for byte access.  The size is rounded down to
 * a whole word.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "minmax.h"
#include "rounding.h"

static unsigned bits = 16;

static int
swab_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
             const char *key, const char *value)
{
  if (strcmp (key, "swab-bits") != 0)
    return next (nxdata, key, value);
  if (nbdkit_parse_unsigned ("swab-bits", value, &bits) == -1)
    return -1;
  if (bits != 8 && bits != 16 && bits != 32 && bits != 64) {
    nbdkit_error ("swab: swab-bits=%s is invalid: use 8, 16, 32 or 64",
                  value);
    return -1;
  }
  return 0;
}

#define swab_config_help \
  "swab-bits=8|16|32|64 Word size to swap the bytes of (default 16)."

/* Swap the bytes of each word in BUF[COUNT]; COUNT is whole words. */
static void
swab_words (uint8_t *buf, uint32_t count)
{
  uint32_t i;

  switch (bits) {
  case 16:
    for (i = 0; i < count; i += 2) {
      uint16_t w;
      memcpy (&w, buf + i, 2);
      w = __builtin_bswap16 (w);
      memcpy (buf + i, &w, 2);
    }
    break;
  case 32:
    for (i = 0; i < count; i += 4) {
      uint32_t w;
      memcpy (&w, buf + i, 4);
      w = __builtin_bswap32 (w);
      memcpy (buf + i, &w, 4);
    }
    break;
  case 64:
    for (i = 0; i < count; i += 8) {
      uint64_t w;
      memcpy (&w, buf + i, 8);
      w = __builtin_bswap64 (w);
      memcpy (buf + i, &w, 8);
    }
    break;
  }
}

/* A request that splits a word cannot be swapped. */
static int
swab_check (const char *what, uint32_t count, uint64_t offset, int *err)
{
  uint32_t word = bits / 8;

  if (count % word == 0 && offset % word == 0)
    return 0;
  nbdkit_error ("swab: %s of %" PRIu32 " bytes at %" PRIu64 " is not "
                "aligned to swab-bits=%u: stack --filter=blocksize "
                "above swab", what, count, offset, bits);
  *err = EINVAL;
  return -1;
}

static int64_t
swab_get_size (nbdkit_next *next, void *handle)
{
  int64_t size = next->get_size (next);

  if (size == -1)
    return -1;
  return round_down (size, bits / 8);
}

/* The word is the smallest request; the rest comes from below. */
static int
swab_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                 uint32_t *preferred, uint32_t *maximum)
{
  if (next->block_size (next, minimum, preferred, maximum) == -1)
    return -1;
  if (*minimum == 0) {
    *minimum = bits / 8;
    *preferred = 512;
    *maximum = 0xffffffff;
  }
  else
    *minimum = MAX (*minimum, bits / 8);
  return 0;
}

static int
swab_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  if (swab_check ("read", count, offset, err) == -1)
    return -1;
  if (next->pread (next, buf, count, offset, flags, err) == -1)
    return -1;
  swab_words (buf, count);
  return 0;
}

/* The client's buffer is not ours to change: swap a copy. */
static int
swab_pwrite (nbdkit_next *next, void *handle, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  uint8_t *copy;
  int r;

  if (swab_check ("write", count, offset, err) == -1)
    return -1;
  copy = malloc (count ? count : 1);
  if (copy == NULL) {
    *err = errno;
    nbdkit_error ("swab: cannot allocate %" PRIu32 " bytes: %m", count);
    return -1;
  }
  memcpy (copy, buf, count);
  swab_words (copy, count);
  r = next->pwrite (next, copy, count, offset, flags, err);
  free (copy);
  return r;
}

static int
swab_trim (nbdkit_next *next, void *handle, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  if (swab_check ("trim", count, offset, err) == -1)
    return -1;
  return next->trim (next, count, offset, flags, err);
}

static int
swab_zero (nbdkit_next *next, void *handle, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  if (swab_check ("zero", count, offset, err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

/* Extents are word-aligned so that a client never sees half a word
 * described two ways.
 */
static int
swab_extents (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags,
              struct nbdkit_extents *extents, int *err)
{
  if (swab_check ("block status", count, offset, err) == -1)
    return -1;
  return nbdkit_extents_aligned (next, count, offset, flags, bits / 8,
                                 extents, err);
}

static int
swab_cache (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  if (swab_check ("cache", count, offset, err) == -1)
    return -1;
  return next->cache (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "swab",
  .longname = "nbdsrv swab filter",
  .config = swab_config,
  .config_help = swab_config_help,
  .get_size = swab_get_size,
  .block_size = swab_block_size,
  .pread = swab_pread,
  .pwrite = swab_pwrite,
  .trim = swab_trim,
  .zero = swab_zero,
  .extents = swab_extents,
  .cache = swab_cache,
};

NBDKIT_REGISTER_FILTER (filter)

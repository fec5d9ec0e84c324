/* nbdsrv truncate filter: change the size of the layer below.
 *
 * truncate=SIZE sets the size, then round-up=N and round-down=N round
 * it.  Bytes past the end of the layer below read as zeroes, and may
 * be written only with zeroes.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "extents-copy.h"
#include "iszero.h"
#include "minmax.h"
#include "rounding.h"

static int64_t truncate_size = -1;      /* or -1: keep the size below */
static int64_t round_up_to = 0;         /* power of 2, or 0: no rounding */
static int64_t round_down_to = 0;

/* Parse the round-up or round-down value VALUE of KEY into *TO. */
static int
truncate_parse_round (const char *key, const char *value, int64_t *to)
{
  int64_t n = nbdkit_parse_size (value);

  if (n == -1)
    return -1;
  if (n == 0) {
    nbdkit_error ("truncate: if set, the %s parameter must be > 0", key);
    return -1;
  }
  if (!is_power_of_2 (n)) {
    nbdkit_error ("truncate: the %s parameter must be a power of 2, "
                  "not %" PRIi64, key, n);
    return -1;
  }
  *to = n;
  return 0;
}

static int
truncate_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  if (strcmp (key, "truncate") == 0) {
    truncate_size = nbdkit_parse_size (value);
    return truncate_size == -1 ? -1 : 0;
  }
  if (strcmp (key, "round-up") == 0)
    return truncate_parse_round (key, value, &round_up_to);
  if (strcmp (key, "round-down") == 0)
    return truncate_parse_round (key, value, &round_down_to);
  return next (nxdata, key, value);
}

#define truncate_config_help \
  "truncate=<SIZE>      The new size.\n" \
  "round-up=<N>         Round the size up to a multiple of N (a power of 2).\n" \
  "round-down=<N>       Round the size down to a multiple of N."

/* The size below; the server asks the plugin once per connection and
 * keeps the answer, so this is cheap on every request.
 */
static int64_t
truncate_real_size (nbdkit_next *next, int *err)
{
  int64_t r = next->get_size (next);

  if (r == -1)
    *err = EIO;
  return r;
}

static int64_t
truncate_get_size (nbdkit_next *next, void *handle)
{
  int64_t size = next->get_size (next);

  if (size == -1)
    return -1;
  if (truncate_size >= 0)
    size = truncate_size;
  if (round_up_to > 0) {
    if (size > INT64_MAX - round_up_to + 1) {
      nbdkit_error ("truncate: the size %" PRIi64 " cannot be rounded up "
                    "to %" PRIi64 ": use round-down or a smaller truncate",
                    size, round_up_to);
      return -1;
    }
    size = round_up (size, round_up_to);
  }
  if (round_down_to > 0)
    size = round_down (size, round_down_to);
  return size;
}

static int
truncate_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  int64_t real_size = truncate_real_size (next, err);
  uint32_t n = 0;

  if (real_size == -1)
    return -1;
  if (offset < (uint64_t) real_size) {
    n = MIN ((uint64_t) count, real_size - offset);
    if (next->pread (next, buf, n, offset, flags, err) == -1)
      return -1;
  }
  memset ((char *) buf + n, 0, count - n);
  return 0;
}

/* Past the end below only zeroes may be written: there is nowhere to
 * keep anything else.
 */
static int
truncate_pwrite (nbdkit_next *next, void *handle, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  int64_t real_size = truncate_real_size (next, err);
  uint32_t n = 0;

  if (real_size == -1)
    return -1;
  if (offset < (uint64_t) real_size)
    n = MIN ((uint64_t) count, real_size - offset);
  if (!is_zero ((const char *) buf + n, count - n)) {
    nbdkit_error ("truncate: only zeroes can be written past the end "
                  "(%" PRIi64 ") of the layer below", real_size);
    *err = ENOSPC;
    return -1;
  }
  if (n == 0)
    return 0;
  return next->pwrite (next, buf, n, offset, flags, err);
}

/* How much of [OFFSET, OFFSET+COUNT) lies below the real end: what a
 * trim, zero or cache passes down (past the end there is nothing to
 * drop, the zeroes are already there, and nothing to cache).  -1 with
 * *ERR when the size below is unknown.
 */
static int64_t
truncate_part_below (nbdkit_next *next, uint32_t count, uint64_t offset,
                     int *err)
{
  int64_t real_size = truncate_real_size (next, err);

  if (real_size == -1)
    return -1;
  if (offset >= (uint64_t) real_size)
    return 0;
  return MIN ((uint64_t) count, real_size - offset);
}

static int
truncate_trim (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  int64_t n = truncate_part_below (next, count, offset, err);

  if (n <= 0)
    return n;
  return next->trim (next, n, offset, flags, err);
}

static int
truncate_zero (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  int64_t n = truncate_part_below (next, count, offset, err);

  if (n <= 0)
    return n;
  return next->zero (next, n, offset, flags, err);
}

static int
truncate_cache (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  int64_t n = truncate_part_below (next, count, offset, err);

  if (n <= 0)
    return n;
  return next->cache (next, n, offset, flags, err);
}

/* Ask below for the extents of [OFFSET, min (OFFSET+COUNT, REAL_SIZE))
 * and copy them into EXTENTS.  Sets *END to where they stop (OFFSET if
 * the layer below gave none).
 */
static int
truncate_copy_extents (nbdkit_next *next, uint32_t count, uint64_t offset,
                       uint32_t flags, uint64_t real_size,
                       struct nbdkit_extents *extents, uint64_t *end,
                       int *err)
{
  struct nbdkit_extents *below;
  int64_t stop = -1;

  below = nbdkit_extents_new (offset, real_size);
  if (below == NULL) {
    *err = errno;
    return -1;
  }
  if (next->extents (next, MIN ((uint64_t) count, real_size - offset),
                     offset, flags, below, err) == 0)
    stop = extents_copy (extents, below, 0, offset, err);
  nbdkit_extents_free (below);
  if (stop == -1)
    return -1;
  *end = stop;
  return 0;
}

/* Below the end of the layer below its extents; past it, one hole. */
static int
truncate_extents (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags,
                  struct nbdkit_extents *extents, int *err)
{
  int64_t real_size = truncate_real_size (next, err);
  uint64_t end = offset;

  if (real_size == -1)
    return -1;
  if (offset < (uint64_t) real_size) {
    if (truncate_copy_extents (next, count, offset, flags, real_size,
                               extents, &end, err) == -1)
      return -1;
    /* Stop where the layer below stopped short. */
    if (end < (uint64_t) real_size || offset + count <= end)
      return 0;
  }
  if (nbdkit_add_extent (extents, end, offset + count - end,
                         NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == -1) {
    *err = errno;
    return -1;
  }
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "truncate",
  .longname = "nbdsrv truncate filter",
  .config = truncate_config,
  .config_help = truncate_config_help,
  .get_size = truncate_get_size,
  .pread = truncate_pread,
  .pwrite = truncate_pwrite,
  .trim = truncate_trim,
  .zero = truncate_zero,
  .cache = truncate_cache,
  .extents = truncate_extents,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv offset filter: serve the byte range [offset, offset+range) of
 * the layer below as a whole disk.
 *
 * Every request is shifted by offset; the server has already checked
 * it against the size this filter reports, so nothing reaches past the
 * window.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "extents-copy.h"

static int64_t offset = 0;      /* bytes, >= 0 */
static int64_t range = -1;      /* bytes, or -1: to the end */

static int
offset_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  if (strcmp (key, "offset") == 0) {
    offset = nbdkit_parse_size (value);
    return offset == -1 ? -1 : 0;
  }
  if (strcmp (key, "range") == 0) {
    range = nbdkit_parse_size (value);
    return range == -1 ? -1 : 0;
  }
  return next (nxdata, key, value);
}

#define offset_config_help \
  "offset=<OFFSET>      The start of the window (default 0).\n" \
  "range=<LENGTH>       Its length (default: to the end)."

/* A window that ends past the layer below fails the connection, as in
 * nbdkit: the size below may change between connections.
 */
static int64_t
offset_get_size (nbdkit_next *next, void *handle)
{
  int64_t real_size = next->get_size (next);

  if (real_size == -1)
    return -1;
  if (range >= 0) {
    if (offset > real_size || range > real_size - offset) {
      nbdkit_error ("offset: offset+range (%" PRIi64 "+%" PRIi64 ") is "
                    "larger than the size (%" PRIi64 ") of the layer "
                    "below: lower offset or range", offset, range,
                    real_size);
      return -1;
    }
    return range;
  }
  if (offset > real_size) {
    nbdkit_error ("offset: offset (%" PRIi64 ") is larger than the size "
                  "(%" PRIi64 ") of the layer below: lower offset",
                  offset, real_size);
    return -1;
  }
  return real_size - offset;
}

static int
offset_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
              uint64_t offs, uint32_t flags, int *err)
{
  return next->pread (next, buf, count, offs + offset, flags, err);
}

static int
offset_pwrite (nbdkit_next *next, void *handle, const void *buf,
               uint32_t count, uint64_t offs, uint32_t flags, int *err)
{
  return next->pwrite (next, buf, count, offs + offset, flags, err);
}

static int
offset_trim (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offs, uint32_t flags, int *err)
{
  return next->trim (next, count, offs + offset, flags, err);
}

static int
offset_zero (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offs, uint32_t flags, int *err)
{
  return next->zero (next, count, offs + offset, flags, err);
}

static int
offset_cache (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offs, uint32_t flags, int *err)
{
  return next->cache (next, count, offs + offset, flags, err);
}

/* Ask below for the shifted range, then shift the answer back; the
 * list we fill ends at our size, so extents past the window drop out.
 */
static int
offset_extents (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offs, uint32_t flags,
                struct nbdkit_extents *extents, int *err)
{
  struct nbdkit_extents *below;
  int64_t size = offset_get_size (next, handle);
  int r = -1;

  if (size == -1) {
    *err = EIO;
    return -1;
  }
  below = nbdkit_extents_new (offs + offset, offset + size);
  if (below == NULL) {
    *err = errno;
    return -1;
  }
  if (next->extents (next, count, offs + offset, flags, below, err) == 0 &&
      extents_copy (extents, below, offset, offs, err) != -1)
    r = 0;
  nbdkit_extents_free (below);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "offset",
  .longname = "nbdsrv offset filter",
  .config = offset_config,
  .config_help = offset_config_help,
  .get_size = offset_get_size,
  .pread = offset_pread,
  .pwrite = offset_pwrite,
  .trim = offset_trim,
  .zero = offset_zero,
  .cache = offset_cache,
  .extents = offset_extents,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv: allocator=malloc[,mlock=true], the whole disk in one block
 * (allocator.h).
 *
 * There is no lock: the block never moves or changes size, so requests
 * run in parallel, and overlapping ones race as they would on a real
 * disk.  The block is zeroed at start, which commits every page of it
 * (as nbdkit's malloc allocator does), so a disk larger than the
 * memory available fails now instead of at some later write.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <nbdkit-plugin.h>

#include "allocator.h"

static unsigned char *flat;     /* owned, flat_size bytes */
static uint64_t flat_size;
static bool flat_locked;

static int
flat_read (void *buf, uint64_t count, uint64_t offset)
{
  memcpy (buf, flat + offset, count);
  return 0;
}

static int
flat_write (const void *buf, uint64_t count, uint64_t offset)
{
  memcpy (flat + offset, buf, count);
  return 0;
}

static int
flat_zero (uint64_t count, uint64_t offset)
{
  memset (flat + offset, 0, count);
  return 0;
}

/* Nothing is sparse: all data, as nbdkit reports it. */
static int
flat_extents (struct nbdkit_extents *extents, uint32_t count,
              uint64_t offset, uint32_t flags, uint64_t size)
{
  return nbdkit_add_extent (extents, offset, count, 0);
}

static void
flat_close (void)
{
  if (flat_locked)
    munlock (flat, flat_size);
  free (flat);
  flat = NULL;
  flat_locked = false;
}

static const struct allocator_ops flat_ops = {
  .read = flat_read,
  .write = flat_write,
  .zero = flat_zero,
  .extents = flat_extents,
  .close = flat_close,
};

const struct allocator_ops *
flat_store_open (uint64_t size, bool lock)
{
  if (size > SIZE_MAX - 1 ||
      (flat = malloc (size > 0 ? size : 1)) == NULL) {
    nbdkit_error ("allocator=malloc: cannot allocate %" PRIu64 " bytes: "
                  "%s: the whole disk must fit in memory; use "
                  "allocator=sparse for a larger one", size,
                  strerror (ENOMEM));
    errno = ENOMEM;
    return NULL;
  }
  flat_size = size;
  memset (flat, 0, size);
  if (lock) {
    if (mlock (flat, size) == -1) {
      nbdkit_error ("allocator=malloc: mlock: %m: raise the locked memory "
                    "limit (ulimit -l), or drop mlock=true");
      flat_close ();
      return NULL;
    }
    flat_locked = true;
  }
  return &flat_ops;
}

/* nbdsrv partition filter: serve one partition of a partitioned disk,
 * like qemu-nbd -P.
 *
 * The partition table (MBR with primary and logical partitions, or
 * GPT) is read once per connection in .prepare, then every request is
 * shifted into the partition as by the offset filter.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "extents-copy.h"
#include "partition-find.h"

static unsigned partnum;        /* from 1; 0 until given */

struct handle {
  uint64_t offset;              /* bytes, into the disk below */
  uint64_t length;              /* bytes */
};

static int
partition_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                  const char *key, const char *value)
{
  if (strcmp (key, "partition") != 0)
    return next (nxdata, key, value);
  if (nbdkit_parse_unsigned ("partition", value, &partnum) == -1)
    return -1;
  if (partnum == 0) {
    nbdkit_error ("partition: partition numbers count from 1: use "
                  "partition=1 for the first");
    return -1;
  }
  return 0;
}

static int
partition_config_complete (nbdkit_next_config_complete *next,
                           nbdkit_backend *nxdata)
{
  if (partnum == 0) {
    nbdkit_error ("partition: the partition parameter is required: "
                  "partition=N, counting from 1");
    return -1;
  }
  return next (nxdata);
}

#define partition_config_help \
  "partition=<PART>     (required) The partition number, from 1."

static void *
partition_open (nbdkit_next_open *next, nbdkit_context *nxdata,
                int readonly, const char *exportname, int is_tls)
{
  struct handle *h;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL)
    nbdkit_error ("partition: %m");
  return h;
}

static void
partition_close (void *handle)
{
  free (handle);
}

static int
partition_read (void *opaque, void *buf, uint32_t count, uint64_t offset)
{
  nbdkit_next *next = opaque;
  int err;

  return next->pread (next, buf, count, offset, 0, &err);
}

/* The disk may change between connections: read its table each time. */
static int
partition_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  int64_t size = next->get_size (next);
  const char *err;

  if (size == -1)
    return -1;
  if (partition_find (partition_read, next, size, partnum, &h->offset,
                      &h->length, &err) == -1) {
    if (err)
      nbdkit_error ("partition: cannot serve partition %u: %s", partnum,
                    err);
    return -1;
  }
  nbdkit_debug ("partition %u: offset %" PRIu64 ", length %" PRIu64,
                partnum, h->offset, h->length);
  return 0;
}

static int64_t
partition_get_size (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  return h->length;
}

static int
partition_pread (nbdkit_next *next, void *handle, void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags,
                 int *err)
{
  struct handle *h = handle;

  return next->pread (next, buf, count, offset + h->offset, flags, err);
}

static int
partition_pwrite (nbdkit_next *next, void *handle, const void *buf,
                  uint32_t count, uint64_t offset, uint32_t flags,
                  int *err)
{
  struct handle *h = handle;

  return next->pwrite (next, buf, count, offset + h->offset, flags, err);
}

static int
partition_trim (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  return next->trim (next, count, offset + h->offset, flags, err);
}

static int
partition_zero (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  return next->zero (next, count, offset + h->offset, flags, err);
}

static int
partition_cache (nbdkit_next *next, void *handle, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  return next->cache (next, count, offset + h->offset, flags, err);
}

/* As in the offset filter: ask below, shift back; the list we fill
 * ends at the partition's end.
 */
static int
partition_extents (nbdkit_next *next, void *handle, uint32_t count,
                   uint64_t offset, uint32_t flags,
                   struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;
  struct nbdkit_extents *below;
  int r = -1;

  below = nbdkit_extents_new (offset + h->offset, h->offset + h->length);
  if (below == NULL) {
    *err = errno;
    return -1;
  }
  if (next->extents (next, count, offset + h->offset, flags, below,
                     err) == 0 &&
      extents_copy (extents, below, h->offset, offset, err) != -1)
    r = 0;
  nbdkit_extents_free (below);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "partition",
  .longname = "nbdsrv partition filter",
  .config = partition_config,
  .config_complete = partition_config_complete,
  .config_help = partition_config_help,
  .open = partition_open,
  .close = partition_close,
  .prepare = partition_prepare,
  .get_size = partition_get_size,
  .pread = partition_pread,
  .pwrite = partition_pwrite,
  .trim = partition_trim,
  .zero = partition_zero,
  .cache = partition_cache,
  .extents = partition_extents,
};

NBDKIT_REGISTER_FILTER (filter)

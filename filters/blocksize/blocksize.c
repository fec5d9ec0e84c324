/* nbdsrv blocksize filter: make every request meet the plugin's block
 * size limits, whatever the client sends.
 *
 * Requests are split into pieces of at most maxdata (reads, writes) or
 * maxlen (trim, zero, cache, block status) bytes, and aligned to
 * minblock: reads round out, the unaligned head and tail of a write or
 * zero are done by read-modify-write, those of a trim are skipped.
 * The size is rounded down to minblock.
 *
 * Locking: a read-modify-write takes rmw_lock for writing, so that no
 * other write to the same block can slip between its read and its
 * write; aligned writes take it for reading and run in parallel.  Each
 * connection has one bounce buffer for its unaligned ends, guarded by
 * its own lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "extents-copy.h"
#include "minmax.h"
#include "rounding.h"

#define MAX_MINBLOCK    65536
#define MAX_DATA        (64 * 1024 * 1024)      /* nbdkit's request cap */

/* As given; 0: not given, from the plugin or the default. */
static uint32_t config_minblock, config_maxdata, config_maxlen;

static pthread_rwlock_t rmw_lock = PTHREAD_RWLOCK_INITIALIZER;

struct handle {
  uint32_t minblock, maxdata, maxlen;   /* settled in .prepare */
  pthread_mutex_t bounce_lock;          /* guards bounce */
  char bounce[MAX_MINBLOCK];
};

static int
blocksize_parse (const char *key, const char *value, uint32_t *out)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1)
    return -1;
  if (r == 0 || r > UINT32_MAX) {
    nbdkit_error ("blocksize: %s=%s is out of range: give a size from 1 "
                  "to 4G-1", key, value);
    return -1;
  }
  *out = r;
  return 0;
}

static int
blocksize_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                  const char *key, const char *value)
{
  if (strcmp (key, "minblock") == 0)
    return blocksize_parse (key, value, &config_minblock);
  if (strcmp (key, "maxdata") == 0)
    return blocksize_parse (key, value, &config_maxdata);
  if (strcmp (key, "maxlen") == 0)
    return blocksize_parse (key, value, &config_maxlen);
  return next (nxdata, key, value);
}

static int
blocksize_config_complete (nbdkit_next_config_complete *next,
                           nbdkit_backend *nxdata)
{
  uint32_t align = config_minblock ? config_minblock : 1;

  if (config_minblock && !is_power_of_2 (config_minblock)) {
    nbdkit_error ("blocksize: minblock must be a power of 2, not %"
                  PRIu32, config_minblock);
    return -1;
  }
  if (config_minblock > MAX_MINBLOCK) {
    nbdkit_error ("blocksize: minblock must not exceed %d", MAX_MINBLOCK);
    return -1;
  }
  if (config_maxdata % align) {
    nbdkit_error ("blocksize: maxdata must be a multiple of %" PRIu32,
                  align);
    return -1;
  }
  /* As nbdkit: larger is accepted, and the server's cap applies. */
  if (config_maxdata > MAX_DATA)
    config_maxdata = MAX_DATA;
  if (config_maxlen % align) {
    nbdkit_error ("blocksize: maxlen must be a multiple of %" PRIu32,
                  align);
    return -1;
  }
  return next (nxdata);
}

#define blocksize_config_help \
  "minblock=<SIZE>      Alignment of requests to the plugin (power of 2).\n" \
  "maxdata=<SIZE>       Largest read or write passed to the plugin.\n" \
  "maxlen=<SIZE>        Largest trim, zero, cache or block status."

static void *
blocksize_open (nbdkit_next_open *next, nbdkit_context *nxdata,
                int readonly, const char *exportname, int is_tls)
{
  struct handle *h;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  h = malloc (sizeof *h);
  if (h == NULL) {
    nbdkit_error ("blocksize: %m");
    return NULL;
  }
  pthread_mutex_init (&h->bounce_lock, NULL);
  return h;
}

static void
blocksize_close (void *handle)
{
  struct handle *h = handle;

  pthread_mutex_destroy (&h->bounce_lock);
  free (h);
}

/* Settle the limits: given, else the plugin's, else the defaults. */
static int
blocksize_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  uint32_t minimum, preferred, maximum;

  if (next->block_size (next, &minimum, &preferred, &maximum) == -1)
    return -1;
  h->minblock = config_minblock ? config_minblock : MAX (minimum, 1u);
  if (h->minblock > MAX_MINBLOCK) {
    nbdkit_error ("blocksize: the plugin's minimum block size %" PRIu32
                  " is above %d: this filter cannot serve it",
                  h->minblock, MAX_MINBLOCK);
    return -1;
  }
  /* Never above what the plugin takes, whatever was asked. */
  h->maxdata = config_maxdata ? config_maxdata : MAX_DATA;
  if (maximum)
    h->maxdata = MIN (h->maxdata, maximum);
  h->maxdata = MAX (round_down (h->maxdata, h->minblock), h->minblock);
  h->maxlen = config_maxlen;
  if (h->maxlen == 0)
    h->maxlen = round_down (UINT32_MAX, h->minblock);
  nbdkit_debug ("blocksize: minblock %" PRIu32 ", maxdata %" PRIu32
                ", maxlen %" PRIu32, h->minblock, h->maxdata, h->maxlen);
  return 0;
}

static int64_t
blocksize_get_size (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  int64_t size = next->get_size (next);

  return size == -1 ? -1 : (int64_t) round_down (size, h->minblock);
}

/* Any request is fine with us: clients need not know the plugin's. */
static int
blocksize_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                      uint32_t *preferred, uint32_t *maximum)
{
  struct handle *h = handle;

  if (next->block_size (next, minimum, preferred, maximum) == -1)
    return -1;
  *preferred = MAX (MAX (*preferred, h->minblock), 4096u);
  *minimum = 1;
  *maximum = 0xffffffff;
  return 0;
}

/* Read the block holding byte OFFSET of a request into the bounce
 * buffer, with bounce_lock held; returns where OFFSET falls in it.
 */
static int
blocksize_read_block (nbdkit_next *next, struct handle *h, uint64_t offset,
                      uint32_t *skip, int *err)
{
  uint64_t block = round_down (offset, h->minblock);

  *skip = offset - block;
  return next->pread (next, h->bounce, h->minblock, block, 0, err);
}

/* Read COUNT (< minblock, within one block) bytes at OFFSET. */
static int
blocksize_read_part (nbdkit_next *next, struct handle *h, char *buf,
                     uint32_t count, uint64_t offset, int *err)
{
  uint32_t skip;
  int r;

  pthread_mutex_lock (&h->bounce_lock);
  r = blocksize_read_block (next, h, offset, &skip, err);
  if (r == 0)
    memcpy (buf, h->bounce + skip, count);
  pthread_mutex_unlock (&h->bounce_lock);
  return r;
}

/* Write COUNT (< minblock, within one block) bytes of BUF, or zeroes
 * if BUF is NULL, at OFFSET by read-modify-write; with rmw_lock held
 * for writing.
 */
static int
blocksize_write_part (nbdkit_next *next, struct handle *h, const char *buf,
                      uint32_t count, uint64_t offset, uint32_t flags,
                      int *err)
{
  uint32_t skip;
  int r;

  pthread_mutex_lock (&h->bounce_lock);
  r = blocksize_read_block (next, h, offset, &skip, err);
  if (r == 0) {
    if (buf)
      memcpy (h->bounce + skip, buf, count);
    else
      memset (h->bounce + skip, 0, count);
    r = next->pwrite (next, h->bounce, h->minblock, offset - skip, flags,
                      err);
  }
  pthread_mutex_unlock (&h->bounce_lock);
  return r;
}

/* The length of the first piece of [OFFSET, OFFSET+COUNT): up to the
 * next block boundary if OFFSET is unaligned; else whole blocks, at
 * most LIMIT; else (less than a block left) the rest.
 */
static uint32_t
blocksize_piece (struct handle *h, uint32_t count, uint64_t offset,
                 uint32_t limit, bool *partial)
{
  uint32_t head = offset % h->minblock;

  *partial = true;
  if (head)
    return MIN (count, h->minblock - head);
  if (count < h->minblock)
    return count;
  *partial = false;
  return MIN (round_down (count, h->minblock), limit);
}

static int
blocksize_pread (nbdkit_next *next, void *handle, void *b, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;
  char *buf = b;
  uint32_t n;
  bool partial;
  int r = 0;

  for (; r == 0 && count > 0; buf += n, offset += n, count -= n) {
    n = blocksize_piece (h, count, offset, h->maxdata, &partial);
    if (partial)
      r = blocksize_read_part (next, h, buf, n, offset, err);
    else
      r = next->pread (next, buf, n, offset, flags, err);
  }
  return r;
}

/* The flags for each piece of a write-like request, and whether one
 * flush must end it: FUA that the layer below emulates by flushing is
 * turned into one flush at the end.
 */
static uint32_t
blocksize_fua (nbdkit_next *next, uint32_t flags, bool *flush_after)
{
  *flush_after = false;
  if ((flags & NBDKIT_FLAG_FUA)
      && next->can_fua (next) == NBDKIT_FUA_EMULATE) {
    *flush_after = true;
    flags &= ~NBDKIT_FLAG_FUA;
  }
  return flags;
}

static bool
blocksize_unaligned (struct handle *h, uint32_t count, uint64_t offset)
{
  return (offset | count) % h->minblock != 0;
}

/* Write BUF, or zeroes if BUF is NULL (by next->zero where aligned). */
static int
blocksize_write (nbdkit_next *next, struct handle *h, const char *buf,
                 uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  uint32_t n, limit = buf ? h->maxdata : h->maxlen;
  uint32_t pflags = flags & NBDKIT_FLAG_FUA;
  bool partial;
  int r = 0;

  for (; r == 0 && count > 0; offset += n, count -= n) {
    n = blocksize_piece (h, count, offset, limit, &partial);
    if (partial)
      r = blocksize_write_part (next, h, buf, n, offset, pflags, err);
    else if (buf)
      r = next->pwrite (next, buf, n, offset, flags, err);
    else
      r = next->zero (next, n, offset, flags, err);
    if (buf)
      buf += n;
  }
  return r;
}

static int
blocksize_write_locked (nbdkit_next *next, struct handle *h,
                        const char *buf, uint32_t count, uint64_t offset,
                        uint32_t flags, int *err)
{
  bool flush_after;
  int r;

  flags = blocksize_fua (next, flags, &flush_after);
  if (blocksize_unaligned (h, count, offset))
    pthread_rwlock_wrlock (&rmw_lock);
  else
    pthread_rwlock_rdlock (&rmw_lock);
  r = blocksize_write (next, h, buf, count, offset, flags, err);
  pthread_rwlock_unlock (&rmw_lock);
  if (r == 0 && flush_after)
    r = next->flush (next, 0, err);
  return r;
}

static int
blocksize_pwrite (nbdkit_next *next, void *handle, const void *buf,
                  uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  return blocksize_write_locked (next, handle, buf, count, offset, flags,
                                 err);
}

/* A zero that needs read-modify-write is never fast. */
static int
blocksize_zero (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if ((flags & NBDKIT_FLAG_FAST_ZERO)
      && blocksize_unaligned (h, count, offset)) {
    *err = ENOTSUP;
    return -1;
  }
  return blocksize_write_locked (next, h, NULL, count, offset, flags, err);
}

/* Trim is advisory: the unaligned ends are left alone. */
static int
blocksize_trim (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;
  uint64_t start = round_up (offset, h->minblock);
  uint64_t end = round_down (offset + count, h->minblock);
  bool flush_after;
  uint32_t n;
  int r = 0;

  flags = blocksize_fua (next, flags, &flush_after);
  for (; r == 0 && start < end; start += n) {
    n = MIN (end - start, (uint64_t) h->maxlen);
    r = next->trim (next, n, start, flags, err);
  }
  if (r == 0 && flush_after)
    r = next->flush (next, 0, err);
  return r;
}

/* Whole blocks around the range, in pieces of maxdata as nbdkit's
 * (cache may read, so it is limited like a read).
 */
static int
blocksize_cache (nbdkit_next *next, void *handle, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;
  uint64_t start = round_down (offset, h->minblock);
  uint64_t end = round_up (offset + count, h->minblock);
  uint32_t n;
  int r = 0;

  for (; r == 0 && start < end; start += n) {
    n = MIN (end - start, (uint64_t) h->maxdata);
    r = next->cache (next, n, start, flags, err);
  }
  return r;
}

/* Ask for COUNT rounded up to whole blocks from the block holding
 * OFFSET, and answer up to the end of the request's last block, as
 * nbdkit does; EXTENTS drops what lies before OFFSET.
 */
static int
blocksize_extents (nbdkit_next *next, void *handle, uint32_t count,
                   uint64_t offset, uint32_t flags,
                   struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;
  uint64_t start = round_down (offset, h->minblock);
  uint64_t end = round_up (offset + count, h->minblock);
  uint64_t len = MIN (round_up (count, h->minblock), (uint64_t) h->maxlen);
  struct nbdkit_extents *below = nbdkit_extents_new (start, end);
  int r = -1;

  if (below == NULL) {
    *err = errno;
    return -1;
  }
  if (nbdkit_extents_aligned (next, len, start, flags, h->minblock, below,
                              err) == 0 &&
      extents_copy (extents, below, 0, offset, err) != -1)
    r = 0;
  nbdkit_extents_free (below);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "blocksize",
  .longname = "nbdsrv blocksize filter",
  .config = blocksize_config,
  .config_complete = blocksize_config_complete,
  .config_help = blocksize_config_help,
  .open = blocksize_open,
  .close = blocksize_close,
  .prepare = blocksize_prepare,
  .get_size = blocksize_get_size,
  .block_size = blocksize_block_size,
  .pread = blocksize_pread,
  .pwrite = blocksize_pwrite,
  .zero = blocksize_zero,
  .trim = blocksize_trim,
  .cache = blocksize_cache,
  .extents = blocksize_extents,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv cache filter: caches the blocks of the layer below in a
 * temporary file, in writeback, writethrough or unsafe mode, with an
 * optional bound on its size (least recently used blocks go first).
 *
 * This file holds the parameters and the callbacks; blocks.c does the
 * work on single blocks.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "cache.h"
#include "minmax.h"

enum cache_mode cache_mode = CACHE_MODE_WRITEBACK;
struct blockstore *cache_store;
uint64_t cache_max_size;
unsigned cache_high_threshold = 95, cache_low_threshold = 80;

static unsigned min_block_size = 65536;  /* cache-min-block-size */
static struct blockstore_on_read cache_on_read;  /* cache-on-read= */

static int
cache_config_mode (const char *value)
{
  if (strcmp (value, "writeback") == 0)
    cache_mode = CACHE_MODE_WRITEBACK;
  else if (strcmp (value, "writethrough") == 0)
    cache_mode = CACHE_MODE_WRITETHROUGH;
  else if (strcmp (value, "unsafe") == 0)
    cache_mode = CACHE_MODE_UNSAFE;
  else {
    nbdkit_error ("invalid cache parameter, should be "
                  "writeback|writethrough|unsafe");
    return -1;
  }
  return 0;
}

static int
cache_config_sizes (const char *key, const char *value)
{
  int64_t n = nbdkit_parse_size (value);

  if (n == -1)
    return -1;
  if (strcmp (key, "cache-max-size") == 0) {
    /* Below 1M the thresholds would leave room for too few blocks. */
    if (n < 1024 * 1024) {
      nbdkit_error ("cache-max-size is too small");
      return -1;
    }
    cache_max_size = n;
    return 0;
  }
  if (n < 4096 || n > (INT64_C (1) << 31) || (n & (n - 1)) != 0) {
    nbdkit_error ("cache-min-block-size is not a power of 2, "
                  "or is too small or too large");
    return -1;
  }
  min_block_size = n;
  return 0;
}

static int
cache_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  if (strcmp (key, "cache") == 0)
    return cache_config_mode (value);
  if (strcmp (key, "cache-max-size") == 0 ||
      strcmp (key, "cache-min-block-size") == 0)
    return cache_config_sizes (key, value);
  if (strcmp (key, "cache-high-threshold") == 0 ||
      strcmp (key, "cache-low-threshold") == 0) {
    unsigned *p = key[6] == 'h' ? &cache_high_threshold
                                : &cache_low_threshold;
    if (nbdkit_parse_unsigned (key, value, p) == -1)
      return -1;
    if (*p == 0) {
      nbdkit_error ("%s must be greater than zero", key);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "cache-on-read") == 0)
    return blockstore_on_read_parse (&cache_on_read, value);
  return next (nxdata, key, value);
}

static int
cache_config_complete (nbdkit_next_config_complete *next,
                       nbdkit_backend *nxdata)
{
  /* The thresholds matter only with a bound, as in nbdkit. */
  if (cache_max_size > 0 && cache_low_threshold >= cache_high_threshold) {
    nbdkit_error ("cache-low-threshold must be less than "
                  "cache-high-threshold");
    return -1;
  }
  return next (nxdata);
}

#define cache_config_help \
  "cache=MODE                Set cache MODE, one of writeback (default),\n" \
  "                          writethrough, or unsafe.\n" \
  "cache-on-read=BOOL|/PATH  Set to true to cache on reads (default false).\n" \
  "cache-max-size=SIZE       Set maximum space used by cache.\n" \
  "cache-high-threshold=PCT  Percentage of max size where reclaim begins.\n" \
  "cache-low-threshold=PCT   Percentage of max size where reclaim ends.\n" \
  "cache-min-block-size=SIZE Minimum size of a cache block (default 64K)."

/* The block size is the larger of cache-min-block-size and the
 * filesystem's own block, which only the store's file can tell.
 */
static int
cache_get_ready (int thread_model)
{
  uint32_t fs;

  cache_store = blockstore_new ("cache", min_block_size);
  if (cache_store == NULL)
    return -1;
  fs = blockstore_fs_blksize (cache_store);
  if (fs > min_block_size && fs <= (1u << 31) && (fs & (fs - 1)) == 0) {
    blockstore_free (cache_store);
    cache_store = blockstore_new ("cache", fs);
    if (cache_store == NULL)
      return -1;
  }
  if (cache_max_size > 0 && !blockstore_can_punch (cache_store)) {
    nbdkit_error ("cache-max-size needs a temporary directory on a "
                  "filesystem that can punch holes (fallocate): set "
                  "TMPDIR to one that can, or drop cache-max-size");
    return -1;
  }
  return 0;
}

static void
cache_unload (void)
{
  blockstore_free (cache_store);
}

static int
cache_prepare (nbdkit_next *next, void *handle, int readonly)
{
  return blockstore_prepare (cache_store, next);
}

static int
cache_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                  uint32_t *preferred, uint32_t *maximum)
{
  return blockstore_block_size (cache_store, next, minimum, preferred,
                                maximum);
}

/* Flush is offered even if the layer below has none, since only a
 * flush moves written data out of the temporary file (nbdkit offers it
 * only if below does).
 */
static int
cache_can_flush (nbdkit_next *next, void *handle)
{
  return 1;
}

/* Every connection shares the one cache, and a flush writes all of it
 * back (or, unsafe, nothing); in writethrough mode writes reach the
 * layer below at once, so its answer holds, as in nbdkit.
 */
static int
cache_can_multi_conn (nbdkit_next *next, void *handle)
{
  if (cache_mode == CACHE_MODE_WRITETHROUGH)
    return next->can_multi_conn (next);
  return 1;
}

/* Unsafe mode ignores FUA, which it can always do. */
static int
cache_can_fua (nbdkit_next *next, void *handle)
{
  if (cache_mode == CACHE_MODE_UNSAFE)
    return NBDKIT_FUA_NATIVE;
  return next->can_fua (next);
}

static int
cache_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

static bool
cache_copy_reads (void)
{
  return blockstore_on_read_now (&cache_on_read);
}

static int
cache_pread (nbdkit_next *next, void *handle, void *buf,
             uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  uint32_t blksize = blockstore_blksize (cache_store);
  bool copy = cache_copy_reads ();
  char *p = buf, *tmp = NULL;
  int r = 0;

  if (copy && (tmp = malloc (blksize)) == NULL) {
    *err = errno;
    return -1;
  }
  while (count > 0 && r == 0) {
    uint64_t blk = offset / blksize;
    uint32_t boff = offset % blksize;
    uint32_t n = MIN (count, blksize - boff);

    r = cache_read_in_block (next, blk, boff, n, p, copy, tmp, err);
    p += n;
    offset += n;
    count -= n;
  }
  free (tmp);
  if (copy)
    cache_reclaim (next);
  return r;
}

/* Writes (or zeroes, if BUF is NULL) the range block by block. */
static int
cache_write_range (nbdkit_next *next, const char *buf, uint32_t count,
                   uint64_t offset, uint32_t flags, int *err)
{
  uint32_t blksize = blockstore_blksize (cache_store);
  bool fua = (flags & NBDKIT_FLAG_FUA) != 0;
  bool through = cache_mode == CACHE_MODE_WRITETHROUGH ||
    (cache_mode == CACHE_MODE_WRITEBACK && fua);
  uint32_t below_flags = through && fua ? NBDKIT_FLAG_FUA : 0;
  char *tmp;
  int r = 0;

  tmp = malloc (blksize);
  if (tmp == NULL) {
    *err = errno;
    return -1;
  }
  while (count > 0 && r == 0) {
    uint64_t blk = offset / blksize;
    uint32_t boff = offset % blksize;
    uint32_t n = MIN (count, blksize - boff);

    r = cache_write_in_block (next, blk, boff, n, buf, through,
                              below_flags, tmp, err);
    if (buf != NULL)
      buf += n;
    offset += n;
    count -= n;
  }
  free (tmp);
  cache_reclaim (next);
  return r;
}

static int
cache_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  return cache_write_range (next, buf, count, offset, flags, err);
}

/* Zeroing whole blocks only marks them, so it is fast whatever the
 * layer below is; with MAY_TRIM or not, they read back as zeroes.
 */
static int
cache_zero (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  return cache_write_range (next, NULL, count, offset, flags, err);
}

/* Whole blocks leave the cache and are trimmed below; the parts of
 * blocks at either end are left alone, as trim allows, so that a block
 * in the cache never differs from below without being DIRTY.
 */
static int
cache_trim (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  uint32_t blksize = blockstore_blksize (cache_store);
  uint64_t end = offset + count;
  uint64_t first = offset / blksize + (offset % blksize != 0);
  uint64_t blk = first;

  for (; blk < blockstore_nr_blocks (cache_store) &&
         blk * blksize + blockstore_block_len (cache_store, blk) <= end;
       ++blk)
    cache_forget (blk);
  if (blk == first)
    return 0;
  end = MIN (end, blk * blksize);
  if (cache_mode == CACHE_MODE_UNSAFE)
    flags &= ~NBDKIT_FLAG_FUA;  /* offered whatever below can do */
  return next->trim (next, end - first * blksize, first * blksize, flags,
                     err);
}

static int
cache_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  if (cache_mode == CACHE_MODE_UNSAFE)
    return 0;
  if (cache_mode == CACHE_MODE_WRITEBACK &&
      cache_write_back_all (next, err) == -1)
    return -1;
  if (next->can_flush (next) != 1)
    return 0;
  return next->flush (next, flags, err);
}

static int
cache_extents (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  return blockstore_extents (cache_store, next, count, offset, flags, true,
                             extents, err);
}

static int
cache_cache (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  uint32_t blksize = blockstore_blksize (cache_store);
  uint64_t end = offset + count, blk;
  char *tmp;
  int r = 0;

  tmp = malloc (blksize);
  if (tmp == NULL) {
    *err = errno;
    return -1;
  }
  for (blk = offset / blksize; blk * blksize < end && r == 0; ++blk)
    r = cache_fill_block (next, blk, tmp, err);
  free (tmp);
  cache_reclaim (next);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "cache",
  .longname = "nbdsrv caching filter",
  .unload = cache_unload,
  .config = cache_config,
  .config_complete = cache_config_complete,
  .config_help = cache_config_help,
  .get_ready = cache_get_ready,
  .prepare = cache_prepare,
  .block_size = cache_block_size,
  .can_flush = cache_can_flush,
  .can_multi_conn = cache_can_multi_conn,
  .can_fua = cache_can_fua,
  .can_cache = cache_can_cache,
  .pread = cache_pread,
  .pwrite = cache_pwrite,
  .zero = cache_zero,
  .trim = cache_trim,
  .flush = cache_flush,
  .extents = cache_extents,
  .cache = cache_cache,
};

/* meta-ext.h: this filter keeps blocks of its own and reports their
 * allocation depth, so nbdsrv offers qemu:allocation-depth.
 */
NBDKIT_DLL_PUBLIC int
nbdsrv_keeps_blocks (void)
{
  return 1;
}

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv cow filter: a temporary writable overlay on top of a plugin.
 *
 * The layer below is opened read-only and never written.  Writes,
 * trims and zeroes land in a hidden temporary file of blocks
 * (common/blockstore) that every connection shares, and vanish when
 * the server exits.  Block states: ABSENT (read below), CLEAN (a copy
 * made by cow-on-read or cow-on-cache), DIRTY (written), ZERO (trimmed
 * or zeroed whole).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "blockstore.h"
#include "minmax.h"

static unsigned blksize = 65536;   /* cow-block-size */
static bool cow_on_cache;          /* cow-on-cache */
static struct blockstore_on_read cow_on_read;  /* cow-on-read= */

static struct blockstore *store;   /* owned, from get_ready */

static int
cow_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  int r;

  if (strcmp (key, "cow-block-size") == 0) {
    int64_t n = nbdkit_parse_size (value);
    if (n == -1)
      return -1;
    if (n < 4096 || n > (INT64_C (1) << 31) || (n & (n - 1)) != 0) {
      nbdkit_error ("cow-block-size is out of range (4096..2G) "
                    "or not a power of 2");
      return -1;
    }
    blksize = n;
    return 0;
  }
  if (strcmp (key, "cow-on-cache") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    cow_on_cache = r;
    return 0;
  }
  if (strcmp (key, "cow-on-read") == 0)
    return blockstore_on_read_parse (&cow_on_read, value);
  return next (nxdata, key, value);
}

#define cow_config_help \
  "cow-block-size=<N>     Set the COW block size (default 64K).\n" \
  "cow-on-cache=<BOOL>    Copy cache (prefetch) requests to the overlay.\n" \
  "cow-on-read=<BOOL>|/PATH  Copy reads to the overlay."

static int
cow_get_ready (int thread_model)
{
  store = blockstore_new ("cow", blksize);
  return store == NULL ? -1 : 0;
}

static void
cow_unload (void)
{
  blockstore_free (store);
}

/* The layer below is only ever read. */
static void *
cow_open (nbdkit_next_open *next, nbdkit_context *context,
          int readonly, const char *exportname, int is_tls)
{
  if (next (context, 1, exportname) == -1)
    return NULL;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int
cow_prepare (nbdkit_next *next, void *handle, int readonly)
{
  return blockstore_prepare (store, next);
}

static int
cow_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
               uint32_t *preferred, uint32_t *maximum)
{
  return blockstore_block_size (store, next, minimum, preferred, maximum);
}

/* Whatever the layer below can do, the overlay can be written,
 * trimmed, zeroed and flushed, and is the same for every connection.
 */
static int
cow_can_write (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
cow_can_one (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
cow_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_NATIVE;
}

static int
cow_can_fua (nbdkit_next *next, void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
cow_can_cache (nbdkit_next *next, void *handle)
{
  /* Ask below now, so that passing a cache request on knows the
   * answer.
   */
  if (next->can_cache (next) == -1)
    return -1;
  return NBDKIT_CACHE_NATIVE;
}

static bool
cow_copy_reads (void)
{
  return blockstore_on_read_now (&cow_on_read);
}

/* Fills BUF with the whole of block BLK as the client sees it.  Caller
 * holds the block's stripe lock.
 */
static int
cow_block_get (nbdkit_next *next, uint64_t blk, char *buf, int *err)
{
  uint32_t len = blockstore_block_len (store, blk);

  switch (blockstore_get (store, blk)) {
  case BLOCKSTORE_ABSENT:
    return next->pread (next, buf, len, blk * blksize, 0, err);
  case BLOCKSTORE_ZERO:
    memset (buf, 0, len);
    return 0;
  default:
    if (blockstore_read (store, blk, 0, len, buf) == -1) {
      *err = errno;
      return -1;
    }
    return 0;
  }
}

/* Copies block BLK from below into the overlay if it is still absent,
 * and leaves it in BUF.
 */
static int
cow_block_copy (nbdkit_next *next, uint64_t blk, char *buf, int *err)
{
  uint32_t len = blockstore_block_len (store, blk);
  pthread_mutex_t *lock = blockstore_lock_for (store, blk);
  int r = 0;

  pthread_mutex_lock (lock);
  if (blockstore_get (store, blk) != BLOCKSTORE_ABSENT) {
    r = cow_block_get (next, blk, buf, err);
    goto out_unlock;
  }
  r = next->pread (next, buf, len, blk * blksize, 0, err);
  if (r == 0 && blockstore_write (store, blk, 0, len, buf) == -1) {
    *err = errno;
    r = -1;
  }
  if (r == 0)
    blockstore_set (store, blk, BLOCKSTORE_CLEAN);
 out_unlock:
  pthread_mutex_unlock (lock);
  return r;
}

/* Reads COUNT bytes at OFFSET inside block BLK. */
static int
cow_read_in_block (nbdkit_next *next, uint64_t blk, uint32_t boff,
                   uint32_t count, char *buf, char *tmp, int *err)
{
  pthread_mutex_t *lock = blockstore_lock_for (store, blk);
  int r = 0;

  pthread_mutex_lock (lock);
  switch (blockstore_get (store, blk)) {
  case BLOCKSTORE_ZERO:
    memset (buf, 0, count);
    break;
  case BLOCKSTORE_ABSENT:
    /* Read below, outside the lock: the layer below never changes. */
    pthread_mutex_unlock (lock);
    if (tmp != NULL) {
      r = cow_block_copy (next, blk, tmp, err);
      if (r == 0)
        memcpy (buf, tmp + boff, count);
      return r;
    }
    return next->pread (next, buf, count, blk * blksize + boff, 0, err);
  default:
    if (blockstore_read (store, blk, boff, count, buf) == -1) {
      *err = errno;
      r = -1;
    }
  }
  pthread_mutex_unlock (lock);
  return r;
}

static int
cow_pread (nbdkit_next *next, void *handle, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  char *p = buf, *tmp = NULL;
  int r = 0;

  if (cow_copy_reads ()) {
    tmp = malloc (blksize);
    if (tmp == NULL) {
      *err = errno;
      return -1;
    }
  }
  while (count > 0 && r == 0) {
    uint64_t blk = offset / blksize;
    uint32_t boff = offset % blksize;
    uint32_t n = MIN (count, blksize - boff);

    r = cow_read_in_block (next, blk, boff, n, p, tmp, err);
    p += n;
    offset += n;
    count -= n;
  }
  free (tmp);
  return r;
}

/* Writes COUNT bytes of BUF (zeroes if BUF is NULL) at BOFF inside
 * block BLK.  A whole block goes straight to the overlay; part of one
 * that the overlay does not hold yet is merged into the block's data
 * first.
 */
static int
cow_write_in_block (nbdkit_next *next, uint64_t blk, uint32_t boff,
                    uint32_t count, const char *buf, int *err)
{
  uint32_t len = blockstore_block_len (store, blk);
  pthread_mutex_t *lock = blockstore_lock_for (store, blk);
  enum blockstore_state state;
  char *tmp = NULL;
  int r = 0;

  pthread_mutex_lock (lock);
  state = blockstore_get (store, blk);
  if (buf == NULL && count == len) {
    blockstore_drop (store, blk, BLOCKSTORE_ZERO);
    goto out_unlock;
  }
  if (count < len &&
      (state == BLOCKSTORE_ABSENT || state == BLOCKSTORE_ZERO)) {
    tmp = malloc (len);
    if (tmp == NULL) {
      *err = errno;
      r = -1;
      goto out_unlock;
    }
    r = cow_block_get (next, blk, tmp, err);
    if (r == -1)
      goto out_unlock;
    if (buf == NULL)
      memset (tmp + boff, 0, count);
    else
      memcpy (tmp + boff, buf, count);
    boff = 0;
    count = len;
    buf = tmp;
  }
  else if (buf == NULL) {
    tmp = calloc (1, count);
    if (tmp == NULL) {
      *err = errno;
      r = -1;
      goto out_unlock;
    }
    buf = tmp;
  }
  if (blockstore_write (store, blk, boff, count, buf) == -1) {
    *err = errno;
    r = -1;
    goto out_unlock;
  }
  blockstore_set (store, blk, BLOCKSTORE_DIRTY);
 out_unlock:
  pthread_mutex_unlock (lock);
  free (tmp);
  return r;
}

/* Runs cow_write_in_block over each block of the range. */
static int
cow_write_range (nbdkit_next *next, const char *buf, uint32_t count,
                 uint64_t offset, int *err)
{
  while (count > 0) {
    uint64_t blk = offset / blksize;
    uint32_t boff = offset % blksize;
    uint32_t n = MIN (count, blksize - boff);

    if (cow_write_in_block (next, blk, boff, n, buf, err) == -1)
      return -1;
    if (buf != NULL)
      buf += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* FUA needs nothing: the overlay does not outlive the server anyway. */
static int
cow_pwrite (nbdkit_next *next, void *handle, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  return cow_write_range (next, buf, count, offset, err);
}

static int
cow_zero (nbdkit_next *next, void *handle, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  return cow_write_range (next, NULL, count, offset, err);
}

/* Whole blocks become holes that read as zeroes; the parts of blocks
 * at either end keep their data, as trim allows.
 */
static int
cow_trim (nbdkit_next *next, void *handle, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  uint64_t end = offset + count;
  uint64_t blk = offset / blksize + (offset % blksize != 0);

  for (; blk < blockstore_nr_blocks (store) &&
         blk * blksize + blockstore_block_len (store, blk) <= end; ++blk) {
    pthread_mutex_t *lock = blockstore_lock_for (store, blk);

    pthread_mutex_lock (lock);
    blockstore_drop (store, blk, BLOCKSTORE_ZERO);
    pthread_mutex_unlock (lock);
  }
  return 0;
}

static int
cow_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  return 0;
}

static int
cow_extents (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags,
             struct nbdkit_extents *extents, int *err)
{
  return blockstore_extents (store, next, count, offset, flags, false,
                             extents, err);
}

/* With cow-on-cache the blocks are copied into the overlay; without
 * it the request is passed on for blocks the overlay does not hold,
 * if the layer below takes cache requests at all.
 */
static int
cow_cache (nbdkit_next *next, void *handle, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  uint64_t end = offset + count;
  uint64_t blk;
  char *tmp;
  int r = 0;

  if (!cow_on_cache) {
    if (next->can_cache (next) == NBDKIT_CACHE_NONE)
      return 0;
    return next->cache (next, count, offset, flags, err);
  }
  tmp = malloc (blksize);
  if (tmp == NULL) {
    *err = errno;
    return -1;
  }
  for (blk = offset / blksize; blk * blksize < end && r == 0; ++blk)
    if (blockstore_get (store, blk) == BLOCKSTORE_ABSENT)
      r = cow_block_copy (next, blk, tmp, err);
  free (tmp);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "cow",
  .longname = "nbdsrv copy-on-write (COW) filter",
  .unload = cow_unload,
  .config = cow_config,
  .config_help = cow_config_help,
  .get_ready = cow_get_ready,
  .open = cow_open,
  .prepare = cow_prepare,
  .block_size = cow_block_size,
  .can_write = cow_can_write,
  .can_flush = cow_can_one,
  .can_trim = cow_can_one,
  .can_zero = cow_can_zero,
  .can_fast_zero = cow_can_one,
  .can_extents = cow_can_one,
  .can_fua = cow_can_fua,
  .can_multi_conn = cow_can_one,
  .can_cache = cow_can_cache,
  .pread = cow_pread,
  .pwrite = cow_pwrite,
  .zero = cow_zero,
  .trim = cow_trim,
  .flush = cow_flush,
  .extents = cow_extents,
  .cache = cow_cache,
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

/* nbdsrv cache filter: the work on single blocks, writing back, and
 * reclaim (see cache.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "cache.h"
#include "minmax.h"

static uint64_t
block_offset (uint64_t blk)
{
  return blk * blockstore_blksize (cache_store);
}

/* Writes block BLK below if the overlay holds newer data, and marks it
 * as the same as below.  Caller holds the block's stripe lock.
 */
static int
write_back_locked (nbdkit_next *next, uint64_t blk, char *tmp,
                   uint32_t flags, int *err)
{
  uint32_t len = blockstore_block_len (cache_store, blk);

  switch (blockstore_get (cache_store, blk)) {
  case BLOCKSTORE_DIRTY:
    if (blockstore_read (cache_store, blk, 0, len, tmp) == -1) {
      *err = errno;
      return -1;
    }
    if (next->pwrite (next, tmp, len, block_offset (blk), flags, err) == -1)
      return -1;
    blockstore_set (cache_store, blk, BLOCKSTORE_CLEAN);
    return 0;
  case BLOCKSTORE_ZERO:
    /* ZERO exists only after a client's zero request, which the layer
     * below accepts (can_zero is its answer).
     */
    if (next->zero (next, len, block_offset (blk),
                    flags | NBDKIT_FLAG_MAY_TRIM, err) == -1)
      return -1;
    blockstore_drop (cache_store, blk, BLOCKSTORE_ABSENT);
    return 0;
  default:
    return 0;
  }
}

/* Reads block BLK from below into the overlay.  Caller holds the
 * stripe lock and has seen the block ABSENT.
 */
static int
fill_locked (nbdkit_next *next, uint64_t blk, char *tmp, int *err)
{
  uint32_t len = blockstore_block_len (cache_store, blk);

  if (next->pread (next, tmp, len, block_offset (blk), 0, err) == -1)
    return -1;
  if (blockstore_write (cache_store, blk, 0, len, tmp) == -1) {
    *err = errno;
    return -1;
  }
  blockstore_set (cache_store, blk, BLOCKSTORE_CLEAN);
  return 0;
}

int
cache_fill_block (nbdkit_next *next, uint64_t blk, char *tmp, int *err)
{
  pthread_mutex_t *lock = blockstore_lock_for (cache_store, blk);
  int r = 0;

  pthread_mutex_lock (lock);
  if (blockstore_get (cache_store, blk) == BLOCKSTORE_ABSENT)
    r = fill_locked (next, blk, tmp, err);
  else
    blockstore_touch (cache_store, blk);
  pthread_mutex_unlock (lock);
  return r;
}

int
cache_read_in_block (nbdkit_next *next, uint64_t blk, uint32_t boff,
                     uint32_t count, char *buf, bool copy, char *tmp,
                     int *err)
{
  pthread_mutex_t *lock = blockstore_lock_for (cache_store, blk);
  int r = 0;

  pthread_mutex_lock (lock);
  switch (blockstore_get (cache_store, blk)) {
  case BLOCKSTORE_ZERO:
    memset (buf, 0, count);
    break;
  case BLOCKSTORE_ABSENT:
    if (!copy) {
      /* Below holds the newest data of an ABSENT block, and writing it
       * back happens under the lock before a block becomes ABSENT.
       */
      pthread_mutex_unlock (lock);
      return next->pread (next, buf, count, block_offset (blk) + boff, 0,
                          err);
    }
    r = fill_locked (next, blk, tmp, err);
    if (r == 0)
      memcpy (buf, tmp + boff, count);
    break;
  default:
    blockstore_touch (cache_store, blk);
    if (blockstore_read (cache_store, blk, boff, count, buf) == -1) {
      *err = errno;
      r = -1;
    }
  }
  pthread_mutex_unlock (lock);
  return r;
}

/* Part of a block the overlay does not hold, written through: straight
 * below, without reading the rest of the block.
 */
static int
write_part_below (nbdkit_next *next, uint64_t offset, uint32_t count,
                  const char *buf, uint32_t flags, int *err)
{
  if (buf == NULL)
    return next->zero (next, count, offset, flags, err);
  return next->pwrite (next, buf, count, offset, flags, err);
}

/* Merges COUNT bytes of BUF (zeroes if NULL) at BOFF into the whole
 * block BLK, which the overlay holds as ABSENT or ZERO, in TMP.
 */
static int
merge_block (nbdkit_next *next, uint64_t blk, uint32_t boff,
             uint32_t count, const char *buf, char *tmp, int *err)
{
  uint32_t len = blockstore_block_len (cache_store, blk);

  if (blockstore_get (cache_store, blk) == BLOCKSTORE_ZERO)
    memset (tmp, 0, len);
  else if (next->pread (next, tmp, len, block_offset (blk), 0, err) == -1)
    return -1;
  if (buf == NULL)
    memset (tmp + boff, 0, count);
  else
    memcpy (tmp + boff, buf, count);
  return 0;
}

/* The overlay part of cache_write_in_block.  Caller holds the lock. */
static int
write_locked (nbdkit_next *next, uint64_t blk, uint32_t boff,
              uint32_t count, const char *buf, char *tmp, int *err)
{
  uint32_t len = blockstore_block_len (cache_store, blk);
  enum blockstore_state state = blockstore_get (cache_store, blk);

  if (buf == NULL && count == len) {
    blockstore_drop (cache_store, blk, BLOCKSTORE_ZERO);
    return 0;
  }
  if (count < len &&
      (state == BLOCKSTORE_ABSENT || state == BLOCKSTORE_ZERO)) {
    if (merge_block (next, blk, boff, count, buf, tmp, err) == -1)
      return -1;
    boff = 0;
    count = len;
    buf = tmp;
  }
  else if (buf == NULL) {
    memset (tmp, 0, count);
    buf = tmp;
  }
  if (blockstore_write (cache_store, blk, boff, count, buf) == -1) {
    *err = errno;
    return -1;
  }
  blockstore_set (cache_store, blk, BLOCKSTORE_DIRTY);
  return 0;
}

int
cache_write_in_block (nbdkit_next *next, uint64_t blk, uint32_t boff,
                      uint32_t count, const char *buf, bool through,
                      uint32_t flags, char *tmp, int *err)
{
  uint32_t len = blockstore_block_len (cache_store, blk);
  pthread_mutex_t *lock = blockstore_lock_for (cache_store, blk);
  int r;

  pthread_mutex_lock (lock);
  if (through && count < len &&
      blockstore_get (cache_store, blk) == BLOCKSTORE_ABSENT) {
    r = write_part_below (next, block_offset (blk) + boff, count, buf,
                          flags, err);
    goto out_unlock;
  }
  r = write_locked (next, blk, boff, count, buf, tmp, err);
  if (r == 0 && through)
    r = write_back_locked (next, blk, tmp, flags, err);
 out_unlock:
  pthread_mutex_unlock (lock);
  return r;
}

int
cache_write_back_all (nbdkit_next *next, int *err)
{
  uint64_t blk, n = blockstore_nr_blocks (cache_store);
  char *tmp = NULL;
  int r = 0;

  for (blk = 0; blk < n && r == 0; ++blk) {
    enum blockstore_state state = blockstore_get (cache_store, blk);
    pthread_mutex_t *lock;

    if (state != BLOCKSTORE_DIRTY && state != BLOCKSTORE_ZERO)
      continue;
    if (tmp == NULL && (tmp = malloc (blockstore_blksize (cache_store)))
        == NULL) {
      *err = errno;
      return -1;
    }
    lock = blockstore_lock_for (cache_store, blk);
    pthread_mutex_lock (lock);
    r = write_back_locked (next, blk, tmp, 0, err);
    pthread_mutex_unlock (lock);
  }
  free (tmp);
  return r;
}

void
cache_forget (uint64_t blk)
{
  pthread_mutex_t *lock = blockstore_lock_for (cache_store, blk);

  pthread_mutex_lock (lock);
  blockstore_drop (cache_store, blk, BLOCKSTORE_ABSENT);
  pthread_mutex_unlock (lock);
}

/* Drops one block the clock picked, writing it back first if dirty. */
static int
reclaim_one (nbdkit_next *next, uint64_t blk, char *tmp, int *err)
{
  pthread_mutex_t *lock = blockstore_lock_for (cache_store, blk);
  int r;

  pthread_mutex_lock (lock);
  r = write_back_locked (next, blk, tmp, 0, err);
  if (r == 0 && blockstore_get (cache_store, blk) == BLOCKSTORE_CLEAN)
    blockstore_drop (cache_store, blk, BLOCKSTORE_ABSENT);
  pthread_mutex_unlock (lock);
  return r;
}

void
cache_reclaim (nbdkit_next *next)
{
  uint64_t blksize = blockstore_blksize (cache_store);
  uint64_t high = cache_max_size / 100 * cache_high_threshold;
  uint64_t low = cache_max_size / 100 * cache_low_threshold;
  uint64_t i, n = 2 * blockstore_nr_blocks (cache_store);
  char *tmp;
  int err;

  if (cache_max_size == 0 || blockstore_stored (cache_store) * blksize <= high)
    return;
  tmp = malloc (blksize);
  if (tmp == NULL)
    return;                     /* try again on the next request */
  /* Bounded: each turn of the clock either drops a block or clears a
   * used mark, so two turns over every block is enough.
   */
  for (i = 0; i < n && blockstore_stored (cache_store) * blksize > low;
       ++i) {
    int64_t blk = blockstore_clock_next (cache_store);

    if (blk == -1)
      break;
    if (reclaim_one (next, blk, tmp, &err) == -1) {
      nbdkit_error ("cache: writing block %" PRIi64 " below to reclaim "
                    "its space failed: %s: it stays in the cache",
                    blk, strerror (err));
      break;
    }
  }
  free (tmp);
}

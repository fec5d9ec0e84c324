/* nbdsrv cache filter: what cache.c (parameters and callbacks) and
 * blocks.c (the work on single blocks) share.
 *
 * Block states in the overlay: ABSENT (read below), CLEAN (a copy of
 * the data below), DIRTY (newer than below, written back by flush or
 * reclaim), ZERO (zeroed whole, not yet zeroed below).
 */
#ifndef NBDSRV_CACHE_H
#define NBDSRV_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "blockstore.h"

enum cache_mode {
  CACHE_MODE_WRITEBACK,
  CACHE_MODE_WRITETHROUGH,
  CACHE_MODE_UNSAFE,
};

extern enum cache_mode cache_mode;
extern struct blockstore *cache_store;   /* owned by cache.c */
extern uint64_t cache_max_size;          /* 0: no limit */
extern unsigned cache_high_threshold, cache_low_threshold; /* percent */

/* Reads COUNT bytes at BOFF inside block BLK into BUF; with COPY, a
 * block not held yet is copied into the overlay (TMP: a block-sized
 * buffer, needed only then).
 */
int cache_read_in_block (nbdkit_next *next, uint64_t blk, uint32_t boff,
                         uint32_t count, char *buf, bool copy, char *tmp,
                         int *err);

/* Copies block BLK into the overlay if it is not held yet (TMP: a
 * block-sized buffer).
 */
int cache_fill_block (nbdkit_next *next, uint64_t blk, char *tmp,
                      int *err);

/* Writes COUNT bytes of BUF (zeroes if BUF is NULL) at BOFF inside
 * block BLK into the overlay; with THROUGH the block is then written
 * below at once with FLAGS (NBDKIT_FLAG_FUA or 0).  TMP: a block-sized
 * buffer.
 */
int cache_write_in_block (nbdkit_next *next, uint64_t blk, uint32_t boff,
                          uint32_t count, const char *buf, bool through,
                          uint32_t flags, char *tmp, int *err);

/* Writes every DIRTY or ZERO block below. */
int cache_write_back_all (nbdkit_next *next, int *err);

/* Forgets block BLK (the caller trims below). */
void cache_forget (uint64_t blk);

/* If the overlay is over the high threshold of cache-max-size, drops
 * least recently used blocks until it is under the low threshold,
 * writing DIRTY ones below first.  Call with no stripe lock held.
 */
void cache_reclaim (nbdkit_next *next);

#endif /* NBDSRV_CACHE_H */

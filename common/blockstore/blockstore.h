/* nbdsrv: an overlay of fixed-size blocks in a hidden temporary file.
 *
 * The cow and cache filters keep blocks of the disk below them in a
 * file under $TMPDIR (default /var/tmp), unlinked as soon as it is
 * created so that it disappears with the server.  Each block has one
 * state byte: what the overlay holds for it, and whether it was used
 * since the reclaim clock last passed.
 *
 * Locking: a block's state and its data in the file change only under
 * the block's stripe lock (blockstore_lock_for).  Take at most one
 * stripe lock at a time, so that requests crossing blocks in any order
 * cannot deadlock.  The state bytes themselves are read and written
 * atomically, so the reclaim clock and flush may scan them without the
 * stripe locks and then lock the one block they act on.
 */
#ifndef NBDSRV_BLOCKSTORE_H
#define NBDSRV_BLOCKSTORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

/* What the overlay holds for a block. */
enum blockstore_state {
  BLOCKSTORE_ABSENT = 0,        /* nothing: the data is below */
  BLOCKSTORE_CLEAN = 1,         /* a copy of the data below */
  BLOCKSTORE_DIRTY = 2,         /* newer than the data below */
  BLOCKSTORE_ZERO = 3,          /* reads as zeroes, nothing stored */
};

struct blockstore;

/* Creates the store with blocks of BLKSIZE bytes (a power of 2, at
 * least 4096) in a new hidden file named after PREFIX.  Returns NULL
 * after nbdkit_error on failure.
 */
struct blockstore *blockstore_new (const char *prefix, uint32_t blksize);
void blockstore_free (struct blockstore *bs);

/* The preferred I/O size of the filesystem holding the file. */
uint32_t blockstore_fs_blksize (const struct blockstore *bs);

/* Whether the file's filesystem can free a block's space (punch a
 * hole); blockstore_drop needs it to shrink the file.
 */
bool blockstore_can_punch (const struct blockstore *bs);

/* Sizes the store for a disk of SIZE bytes.  The first call fixes the
 * size; a later call with another size fails (the disk below must not
 * be resized while the server runs).
 */
int blockstore_set_size (struct blockstore *bs, uint64_t size);

uint32_t blockstore_blksize (const struct blockstore *bs);
uint64_t blockstore_nr_blocks (const struct blockstore *bs);

/* Bytes of block BLK that lie inside the disk: BLKSIZE except for a
 * short last block.
 */
uint32_t blockstore_block_len (const struct blockstore *bs, uint64_t blk);

/* The stripe lock guarding block BLK. */
pthread_mutex_t *blockstore_lock_for (struct blockstore *bs, uint64_t blk);

/* The state of block BLK; setting it also marks the block used. */
enum blockstore_state blockstore_get (const struct blockstore *bs,
                                      uint64_t blk);
void blockstore_set (struct blockstore *bs, uint64_t blk,
                     enum blockstore_state state);

/* Marks block BLK used, so the reclaim clock passes it once more. */
void blockstore_touch (struct blockstore *bs, uint64_t blk);

/* Reads or writes LEN bytes at OFFSET inside block BLK in the file
 * (OFFSET + LEN <= blockstore_block_len).  -1 with errno set on
 * failure, after nbdkit_error.
 */
int blockstore_read (struct blockstore *bs, uint64_t blk, uint32_t offset,
                     uint32_t len, void *buf);
int blockstore_write (struct blockstore *bs, uint64_t blk, uint32_t offset,
                      uint32_t len, const void *buf);

/* Sets block BLK to STATE (ABSENT or ZERO) and frees its space in the
 * file if the filesystem can.  Caller holds the stripe lock.
 */
void blockstore_drop (struct blockstore *bs, uint64_t blk,
                      enum blockstore_state state);

/* Blocks whose data is in the file (CLEAN or DIRTY). */
uint64_t blockstore_stored (const struct blockstore *bs);

/* The reclaim clock: returns the next stored block not used since the
 * clock last passed it, clearing the used mark of the blocks it passes
 * (the CLOCK approximation of least recently used).  -1 if nothing is
 * stored.  The caller locks the block and checks its state again.
 */
int64_t blockstore_clock_next (struct blockstore *bs);

/* The first block at or after FROM in state STATE, or -1. */
int64_t blockstore_find (const struct blockstore *bs, uint64_t from,
                         enum blockstore_state state);

/* Block status of COUNT bytes at OFFSET as the overlay changes it:
 * DIRTY blocks are data, ZERO blocks holes that read as zeroes, and
 * ABSENT blocks (and CLEAN blocks if CLEAN_FROM_BELOW) whatever NEXT
 * says, or data if NEXT cannot tell.  The answer may stop short of
 * COUNT, as block status allows (blockstore-extents.c).
 */
int blockstore_extents (struct blockstore *bs, nbdkit_next *next,
                        uint32_t count, uint64_t offset, uint32_t flags,
                        bool clean_from_below,
                        struct nbdkit_extents *extents, int *err);

/* For the filter's .prepare: size the store to the layer below
 * (blockstore-layer.c).
 */
int blockstore_prepare (struct blockstore *bs, nbdkit_next *next);

/* For the filter's .block_size: what the layer below asks, preferring
 * at least whole blocks of the store.
 */
int blockstore_block_size (const struct blockstore *bs, nbdkit_next *next,
                           uint32_t *minimum, uint32_t *preferred,
                           uint32_t *maximum);

/* cow-on-read= and cache-on-read=: BOOL, or /PATH meaning "while PATH
 * exists" (blockstore-layer.c).  VALUE is borrowed from the command
 * line, which outlives the filter.
 */
struct blockstore_on_read {
  bool on;
  const char *path;             /* borrowed; NULL for a plain BOOL */
};
int blockstore_on_read_parse (struct blockstore_on_read *r,
                              const char *value);
bool blockstore_on_read_now (const struct blockstore_on_read *r);

#endif /* NBDSRV_BLOCKSTORE_H */

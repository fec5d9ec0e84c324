/* nbdsrv ext2 filter: the last few single-block reads of the I/O
 * manager, kept in memory.
 *
 * libext2fs looks a file's block up from the root of its map for each
 * block it reads or writes, so without this every data block costs
 * one more read of the same extent-tree or indirect block below.  The
 * cache is write-through: a write goes to the layer below and drops
 * what it overlaps here, so the layer below is always the truth.
 */
#ifndef NBDSRV_EXT2_CACHE_H
#define NBDSRV_EXT2_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Eight, as libext2fs's Unix manager keeps: enough for the path from
 * an inode to a leaf of its extent tree and the inode-table block.
 */
#define EXT2_CACHE_ENTRIES 8

/* Reads longer than a block are not kept (they are data, read once). */
#define EXT2_CACHE_LEN_MAX 65536

struct ext2_cache_entry {
  uint64_t offset;              /* bytes, on the layer below */
  size_t len;                   /* 0: empty */
  uint64_t used;                /* tick of the last hit, for LRU */
  char *buf;                    /* owned, len bytes */
};

struct ext2_cache {
  uint64_t tick;
  struct ext2_cache_entry e[EXT2_CACHE_ENTRIES];
};

/* Copies [OFFSET, OFFSET+LEN) to DATA if held; true if it was. */
bool ext2_cache_get (struct ext2_cache *c, uint64_t offset, size_t len,
                     void *data);

/* Keeps a copy of DATA, read from [OFFSET, OFFSET+LEN), in place of
 * the least recently used entry.  Without memory, keeps nothing.
 */
void ext2_cache_put (struct ext2_cache *c, uint64_t offset, size_t len,
                     const void *data);

/* Forgets every entry overlapping [OFFSET, OFFSET+LEN). */
void ext2_cache_drop (struct ext2_cache *c, uint64_t offset, uint64_t len);

/* Frees the buffers; C is empty afterwards. */
void ext2_cache_free (struct ext2_cache *c);

#endif /* NBDSRV_EXT2_CACHE_H */

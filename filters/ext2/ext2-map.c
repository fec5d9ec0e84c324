/* nbdsrv ext2 filter: a file's extents, from its block map.
 *
 * A block the file does not map reads as zeros: a hole.  A block
 * mapped to an extent not yet written (ext4's uninitialised extents,
 * left by fallocate) reads as zeros too but is allocated.  Everything
 * else is data.  nbdkit 1.32 passes the disk's extents through
 * unchanged, at the file's offsets, so a copy through it can read
 * data as holes; see docs/nbdkit-ext2-filter.md.
 */
#include <errno.h>

#include "ext2-map.h"

/* Blocks looked up per request: one lookup walks the block map from
 * its root, so this bounds a request's work (256 MiB of 4 KiB blocks);
 * the client asks again for the rest.
 */
#define MAP_BLOCKS_MAX 65536

/* The extent type of logical block LBLK of FILE, in *TYPE. */
static errcode_t
ext2_map_block (ext2_file_t file, char *buf, blk64_t lblk, uint32_t *type)
{
  blk64_t phys = 0;
  int flags = 0;
  errcode_t e;

  e = ext2fs_bmap2 (ext2fs_file_get_fs (file),
                    ext2fs_file_get_inode_num (file),
                    ext2fs_file_get_inode (file), buf, 0, lblk, &flags,
                    &phys);
  if (e)
    return e;
  if (phys == 0)
    *type = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
  else if (flags & BMAP_RET_UNINIT)
    *type = NBDKIT_EXTENT_ZERO;
  else
    *type = 0;
  return 0;
}

int
ext2_map_extents (ext2_file_t file, uint64_t size, uint32_t count,
                  uint64_t offset, bool req_one, char *buf,
                  struct nbdkit_extents *extents, errcode_t *e)
{
  uint64_t bs = ext2fs_file_get_fs (file)->blocksize;
  uint64_t end = size - offset < count ? size : offset + count;
  blk64_t lblk = offset / bs, next;
  uint32_t type, next_type = 0;
  unsigned looked = 1;

  /* Data kept in the inode itself has no blocks to map. */
  if (ext2fs_file_get_inode (file)->i_flags & EXT4_INLINE_DATA_FL) {
    *e = nbdkit_add_extent (extents, offset, end - offset, 0) ? errno : 0;
    return *e ? -1 : 0;
  }
  *e = ext2_map_block (file, buf, lblk, &type);
  while (*e == 0) {
    for (next = lblk + 1; next * bs < end && looked < MAP_BLOCKS_MAX;
         next++, looked++) {
      *e = ext2_map_block (file, buf, next, &next_type);
      if (*e || next_type != type)
        break;
    }
    if (*e)
      break;
    /* The last block may reach past the end: the list clips it. */
    if (nbdkit_add_extent (extents, lblk * bs, (next - lblk) * bs,
                           type) == -1) {
      *e = errno;
      break;
    }
    if (next * bs >= end || looked >= MAP_BLOCKS_MAX || req_one)
      return 0;
    lblk = next;
    type = next_type;
  }
  return -1;
}

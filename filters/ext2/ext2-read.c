/* nbdsrv ext2 filter: reading a file's data in runs of blocks.
 *
 * ext2fs_file_read asks the I/O manager for one block at a time, so a
 * 256 KiB read of a file in 1 KiB blocks was 256 requests to the layer
 * below.  Here the blocks of a request are looked up first and each
 * run of blocks that lie one after another on the disk is read in one
 * request; holes and unwritten extents are zeros, read from nowhere.
 */
#include <string.h>

#include "ext2-read.h"
#include "minmax.h"

/* Blocks in one request below: 8 MiB of 1 KiB blocks, 32 MiB of 4 KiB
 * blocks (an NBD request is at most 32 MiB anyway).
 */
#define RUN_BLOCKS_MAX 8192

struct ext2_run {
  blk64_t phys;                 /* first block on the disk; 0: zeros */
  uint64_t blocks;
};

/* Where logical block LBLK lies: *PHYS, or 0 if it reads as zeros. */
static errcode_t
ext2_read_map (ext2_file_t file, char *map_buf, blk64_t lblk,
               blk64_t *phys)
{
  int flags = 0;
  errcode_t e;

  *phys = 0;
  e = ext2fs_bmap2 (ext2fs_file_get_fs (file),
                    ext2fs_file_get_inode_num (file),
                    ext2fs_file_get_inode (file), map_buf, 0, lblk, &flags,
                    phys);
  if (e == 0 && (flags & BMAP_RET_UNINIT))
    *phys = 0;
  return e;
}

/* The run of blocks from LBLK that ends before block END. */
static errcode_t
ext2_read_run (ext2_file_t file, char *map_buf, blk64_t lblk, blk64_t end,
               struct ext2_run *run)
{
  blk64_t next;
  errcode_t e = ext2_read_map (file, map_buf, lblk, &run->phys);

  for (run->blocks = 1; e == 0 && lblk + run->blocks < end
         && run->blocks < RUN_BLOCKS_MAX; run->blocks++) {
    e = ext2_read_map (file, map_buf, lblk + run->blocks, &next);
    if (e || next != (run->phys ? run->phys + run->blocks : 0))
      break;
  }
  return e;
}

/* LEN bytes from byte SKIP of disk block PHYS, LEN + SKIP <= a block. */
static errcode_t
ext2_read_part (io_channel io, blk64_t phys, uint64_t skip, uint64_t len,
                char *buf, char *bounce)
{
  errcode_t e = io_channel_read_blk64 (io, phys, 1, bounce);

  if (e == 0)
    memcpy (buf, bounce + skip, len);
  return e;
}

/* LEN bytes from byte SKIP of RUN: whole blocks straight into BUF,
 * a partial first or last block through BOUNCE.
 */
static errcode_t
ext2_read_blocks (io_channel io, uint64_t bs, struct ext2_run *run,
                  uint64_t skip, uint64_t len, char *buf, char *bounce)
{
  blk64_t phys = run->phys;
  uint64_t n;
  errcode_t e = 0;

  if (skip > 0 || len < bs) {
    n = MIN (bs - skip, len);
    e = ext2_read_part (io, phys++, skip, n, buf, bounce);
    buf += n;
    len -= n;
  }
  n = len / bs;
  if (e == 0 && n > 0) {
    e = io_channel_read_blk64 (io, phys, n, buf);
    phys += n;
    buf += n * bs;
    len -= n * bs;
  }
  if (e == 0 && len > 0)
    e = ext2_read_part (io, phys, 0, len, buf, bounce);
  return e;
}

errcode_t
ext2_read_runs (ext2_file_t file, char *buf, uint32_t count,
                uint64_t offset, char *map_buf, char *bounce)
{
  ext2_filsys fs = ext2fs_file_get_fs (file);
  uint64_t bs = fs->blocksize;
  uint64_t end = offset + count;
  blk64_t end_block = (end + bs - 1) / bs;
  struct ext2_run run;
  errcode_t e = 0;

  while (e == 0 && offset < end) {
    uint64_t skip = offset % bs, len;

    e = ext2_read_run (file, map_buf, offset / bs, end_block, &run);
    if (e)
      break;
    len = MIN (run.blocks * bs - skip, end - offset);
    if (run.phys == 0)
      memset (buf, 0, len);
    else
      e = ext2_read_blocks (fs->io, bs, &run, skip, len, buf, bounce);
    buf += len;
    offset += len;
  }
  return e;
}

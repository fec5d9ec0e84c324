/* nbdsrv ext2 filter: the I/O manager that reads and writes the
 * filesystem through the layer below (see ext2-io.h).
 *
 * Blocks are in units of the channel's block size, which libext2fs
 * sets once it has read the superblock; a negative count is a length
 * in bytes instead.  libext2fs keeps its own buffers (the file's
 * current block, bitmaps, inodes); here only the last single-block
 * reads are kept (ext2-cache.h), and writes go straight below.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ext2-cache.h"
#include "ext2-io.h"
#include "minmax.h"

#define NAME_PREFIX "nbdsrv-next:"

/* The most one call to the layer below asks for: libext2fs reads at
 * most a few inode-table blocks at once, so this only bounds the
 * buffer a plugin may be asked to fill.
 */
#define PIECE_MAX (32 * 1024 * 1024)

struct ext2_io_private {
  nbdkit_next *next;            /* borrowed: open while the channel is */
  uint64_t size;                /* of the layer below, bytes */
  bool rw;                      /* opened with IO_FLAG_RW */
  struct struct_io_stats stats; /* for the superblock's kbytes_written */
  struct ext2_cache cache;      /* recent single-block reads */
};

void
ext2_io_name (nbdkit_next *next, char *name)
{
  snprintf (name, EXT2_IO_NAME_MAX, NAME_PREFIX "%p", (void *) next);
}

static errcode_t
ext2_io_open (const char *name, int flags, io_channel *channel)
{
  struct ext2_io_private *priv;
  io_channel io;
  void *next = NULL;
  int64_t size;

  if (name == NULL || strncmp (name, NAME_PREFIX, strlen (NAME_PREFIX))
      || sscanf (name + strlen (NAME_PREFIX), "%p", &next) != 1
      || next == NULL)
    return EXT2_ET_BAD_DEVICE_NAME;
  size = ((nbdkit_next *) next)->get_size (next);
  if (size == -1)
    return EIO;

  io = calloc (1, sizeof *io);
  priv = calloc (1, sizeof *priv);
  if (io == NULL || priv == NULL)
    goto out_nomem;
  io->name = strdup (name);
  if (io->name == NULL)
    goto out_nomem;
  priv->next = next;
  priv->size = size;
  priv->rw = (flags & IO_FLAG_RW) != 0;
  priv->stats.num_fields = 2;
  io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
  io->manager = ext2_io_manager;
  io->block_size = 1024;        /* until libext2fs knows the real one */
  io->refcount = 1;
  io->private_data = priv;
  *channel = io;
  return 0;

 out_nomem:
  if (io)
    free (io->name);
  free (io);
  free (priv);
  return ENOMEM;
}

/* libext2fs may share a channel (io_channel_bumpcount): free it with
 * the last reference.
 */
static errcode_t
ext2_io_close (io_channel io)
{
  EXT2_CHECK_MAGIC (io, EXT2_ET_MAGIC_IO_CHANNEL);
  if (--io->refcount > 0)
    return 0;
  ext2_cache_free (&((struct ext2_io_private *) io->private_data)->cache);
  free (io->private_data);
  free (io->name);
  free (io);
  return 0;
}

static errcode_t
ext2_io_set_blksize (io_channel io, int blksize)
{
  EXT2_CHECK_MAGIC (io, EXT2_ET_MAGIC_IO_CHANNEL);
  if (blksize <= 0)
    return EXT2_ET_INVALID_ARGUMENT;
  io->block_size = blksize;
  return 0;
}

/* The byte range of COUNT blocks (or -COUNT bytes) from BLOCK. */
static errcode_t
ext2_io_range (io_channel io, unsigned long long block, int count,
               uint64_t *offset, uint64_t *len)
{
  uint64_t bs = io->block_size;

  if (count < 0)
    *len = - (int64_t) count;
  else
    *len = (uint64_t) count * bs;
  if (block > (UINT64_MAX - *len) / bs)
    return EXT2_ET_INVALID_ARGUMENT;
  *offset = block * bs;
  return 0;
}

/* Reads the part of [OFFSET, OFFSET+LEN) that lies on the disk below
 * into DATA and zero-fills the rest, as the Unix manager does with a
 * short read; *DONE is what was read.
 */
static errcode_t
ext2_io_pread (struct ext2_io_private *priv, char *data, uint64_t len,
               uint64_t offset, uint64_t *done)
{
  uint64_t avail = offset < priv->size ? MIN (len, priv->size - offset) : 0;
  int err;

  for (*done = 0; *done < avail; ) {
    uint32_t n = MIN (avail - *done, (uint64_t) PIECE_MAX);

    if (priv->next->pread (priv->next, data + *done, n, offset + *done, 0,
                           &err) == -1)
      return err ? err : EIO;
    *done += n;
    priv->stats.bytes_read += n;
  }
  if (avail < len) {
    memset (data + avail, 0, len - avail);
    return EXT2_ET_SHORT_READ;
  }
  return 0;
}

static errcode_t
ext2_io_pwrite (struct ext2_io_private *priv, const char *data,
                uint64_t len, uint64_t offset, uint64_t *done)
{
  uint64_t avail = offset < priv->size ? MIN (len, priv->size - offset) : 0;
  int err;

  if (!priv->rw)
    return EROFS;
  ext2_cache_drop (&priv->cache, offset, len);
  for (*done = 0; *done < avail; ) {
    uint32_t n = MIN (avail - *done, (uint64_t) PIECE_MAX);

    if (priv->next->pwrite (priv->next, data + *done, n, offset + *done, 0,
                            &err) == -1)
      return err ? err : EIO;
    *done += n;
    priv->stats.bytes_written += n;
  }
  return avail < len ? EXT2_ET_SHORT_WRITE : 0;
}

static errcode_t
ext2_io_read_blk64 (io_channel io, unsigned long long block, int count,
                    void *data)
{
  struct ext2_io_private *priv;
  uint64_t offset, len = 0, done = 0;
  errcode_t r;

  EXT2_CHECK_MAGIC (io, EXT2_ET_MAGIC_IO_CHANNEL);
  priv = io->private_data;
  r = ext2_io_range (io, block, count, &offset, &len);
  if (r == 0 && ext2_cache_get (&priv->cache, offset, len, data))
    return 0;
  if (r == 0)
    r = ext2_io_pread (priv, data, len, offset, &done);
  if (r == 0 && count == 1)
    ext2_cache_put (&priv->cache, offset, len, data);
  /* libext2fs's hook, for programs that want to see bad blocks. */
  if (r && io->read_error)
    r = io->read_error (io, block, count, data, len, done, r);
  return r;
}

static errcode_t
ext2_io_write_blk64 (io_channel io, unsigned long long block, int count,
                     const void *data)
{
  uint64_t offset, len = 0, done = 0;
  errcode_t r;

  EXT2_CHECK_MAGIC (io, EXT2_ET_MAGIC_IO_CHANNEL);
  r = ext2_io_range (io, block, count, &offset, &len);
  if (r == 0)
    r = ext2_io_pwrite (io->private_data, data, len, offset, &done);
  if (r && io->write_error)
    r = io->write_error (io, block, count, data, len, done, r);
  return r;
}

static errcode_t
ext2_io_read_blk (io_channel io, unsigned long block, int count, void *data)
{
  return ext2_io_read_blk64 (io, block, count, data);
}

static errcode_t
ext2_io_write_blk (io_channel io, unsigned long block, int count,
                   const void *data)
{
  return ext2_io_write_blk64 (io, block, count, data);
}

/* COUNT bytes at byte OFFSET: libext2fs writes the superblock so. */
static errcode_t
ext2_io_write_byte (io_channel io, unsigned long offset, int count,
                    const void *data)
{
  uint64_t done;

  EXT2_CHECK_MAGIC (io, EXT2_ET_MAGIC_IO_CHANNEL);
  if (count < 0)
    return EXT2_ET_INVALID_ARGUMENT;
  return ext2_io_pwrite (io->private_data, data, count, offset, &done);
}

/* Called by ext2fs_flush after the metadata is written: make it
 * durable below.  A layer that cannot flush has nothing to make so.
 */
static errcode_t
ext2_io_flush (io_channel io)
{
  struct ext2_io_private *priv;
  int can, err;

  EXT2_CHECK_MAGIC (io, EXT2_ET_MAGIC_IO_CHANNEL);
  priv = io->private_data;
  if (!priv->rw)
    return 0;
  can = priv->next->can_flush (priv->next);
  if (can == -1)
    return EIO;
  if (can == 1 && priv->next->flush (priv->next, 0, &err) == -1)
    return err ? err : EIO;
  return 0;
}

/* The Unix manager's options (offset=, cache=) mean nothing here. */
static errcode_t
ext2_io_set_option (io_channel io, const char *option, const char *arg)
{
  EXT2_CHECK_MAGIC (io, EXT2_ET_MAGIC_IO_CHANNEL);
  return EXT2_ET_INVALID_ARGUMENT;
}

static errcode_t
ext2_io_get_stats (io_channel io, io_stats *stats)
{
  struct ext2_io_private *priv;

  EXT2_CHECK_MAGIC (io, EXT2_ET_MAGIC_IO_CHANNEL);
  priv = io->private_data;
  if (stats)
    *stats = &priv->stats;
  return 0;
}

static struct struct_io_manager manager = {
  .magic = EXT2_ET_MAGIC_IO_MANAGER,
  .name = "nbdsrv next-layer I/O manager",
  .open = ext2_io_open,
  .close = ext2_io_close,
  .set_blksize = ext2_io_set_blksize,
  .read_blk = ext2_io_read_blk,
  .write_blk = ext2_io_write_blk,
  .flush = ext2_io_flush,
  .write_byte = ext2_io_write_byte,
  .set_option = ext2_io_set_option,
  .get_stats = ext2_io_get_stats,
  .read_blk64 = ext2_io_read_blk64,
  .write_blk64 = ext2_io_write_blk64,
};

io_manager ext2_io_manager = &manager;

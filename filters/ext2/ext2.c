/* nbdsrv ext2 filter: serves one regular file inside an ext2, ext3 or
 * ext4 filesystem, for reading and writing, without mounting it.
 *
 * Each connection opens the filesystem with libext2fs through our own
 * I/O manager (ext2-io.c), which reads and writes the layer below,
 * then opens the file by path: ext2file=PATH, or the client's export
 * name with ext2file=exportname.  libext2fs is not thread-safe and a
 * filesystem open twice would be corrupted, so connections are served
 * one at a time, one request at a time, as by nbdkit.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <et/com_err.h>
#include <ext2fs/ext2fs.h>

#include <nbdkit-filter.h>

#include "ext2-io.h"
#include "ext2-map.h"
#include "ext2-read.h"

static const char *ext2file;    /* ext2file=, borrowed; NULL until given */
static bool by_exportname;      /* ext2file=exportname */

struct handle {
  char *path;                   /* owned: the file in the filesystem */
  bool rw;                      /* filesystem and file open for writing */
  ext2_filsys fs;               /* open from prepare to finalize */
  ext2_file_t file;             /* the same */
  char *map_buf;                /* owned: 3 blocks for libext2fs's block
                                 * lookups, 1 for partial-block reads */
};

static void
ext2_load (void)
{
  /* So that error_message names libext2fs's errors. */
  add_error_table (&et_ext2_error_table);
}

static void
ext2_unload (void)
{
  remove_error_table (&et_ext2_error_table);
}

static int
ext2_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
             const char *key, const char *value)
{
  if (strcmp (key, "ext2file") != 0)
    return next (nxdata, key, value);
  if (ext2file != NULL) {
    nbdkit_error ("ext2: ext2file parameter specified more than once: "
                  "give one file, or ext2file=exportname");
    return -1;
  }
  ext2file = value;
  by_exportname = strcmp (value, "exportname") == 0;
  if (!by_exportname && value[0] != '/') {
    nbdkit_error ("ext2: ext2file=%s: the path must be absolute (start "
                  "with /), or be the word exportname", value);
    return -1;
  }
  return 0;
}

static int
ext2_config_complete (nbdkit_next_config_complete *next,
                      nbdkit_backend *nxdata)
{
  if (ext2file == NULL) {
    nbdkit_error ("ext2: you must supply ext2file=<FILE> parameter "
                  "after the plugin name on the command line "
                  "(the absolute path inside the filesystem, or "
                  "ext2file=exportname)");
    return -1;
  }
  return next (nxdata);
}

#define ext2_config_help \
  "ext2file=<PATH>       (required) Absolute path of the file to serve\n" \
  "                      inside the filesystem.\n" \
  "ext2file=exportname   Serve the file named by the client's export name."

static int
ext2_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS;
}

/* With ext2file=exportname the names are paths the client must know:
 * none is advertised, as by nbdkit.
 */
static int
ext2_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                   int readonly, int is_tls, struct nbdkit_exports *exports)
{
  if (by_exportname)
    return 0;
  return next (nxdata, readonly, exports);
}

/* The layer below is opened read-only when the client is: nbdkit opens
 * it for writing even then, but libext2fs writes nothing to a
 * filesystem it opened read-only (it replays no journal), so -r can
 * promise that the disk is not written.
 */
static void *
ext2_open (nbdkit_next_open *next, nbdkit_context *nxdata,
           int readonly, const char *exportname, int is_tls)
{
  const char *path = by_exportname ? exportname : ext2file;
  struct handle *h;

  if (by_exportname && exportname[0] == '\0') {
    nbdkit_error ("ext2: default export (\"\") not permitted with "
                  "ext2file=exportname: connect with the path of a file "
                  "in the filesystem as the export name");
    return NULL;
  }
  h = calloc (1, sizeof *h);
  if (h == NULL || (h->path = strdup (path)) == NULL) {
    nbdkit_error ("ext2: %m");
    free (h);
    return NULL;
  }
  /* The client's export name is a path here, not an export below. */
  if (next (nxdata, readonly, by_exportname ? "" : exportname) == -1) {
    free (h->path);
    free (h);
    return NULL;
  }
  return h;
}

/* Writes out the file and the filesystem and closes both; the first
 * error, if any.
 */
static errcode_t
ext2_handle_close (struct handle *h)
{
  errcode_t e = 0, e2;

  if (h->file) {
    e = ext2fs_file_close (h->file);
    h->file = NULL;
  }
  if (h->fs) {
    e2 = ext2fs_close2 (h->fs, 0);
    if (e2)
      ext2fs_free (h->fs);      /* ext2fs_close2 keeps it on error */
    e = e ? e : e2;
    h->fs = NULL;
  }
  free (h->map_buf);
  h->map_buf = NULL;
  return e;
}

static void
ext2_close (void *handle)
{
  struct handle *h = handle;
  errcode_t e;

  /* Only if finalize was not reached. */
  e = ext2_handle_close (h);
  if (e)
    nbdkit_error ("ext2: %s: closing the filesystem: %s", h->path,
                  error_message (e));
  free (h->path);
  free (h);
}

/* What to do when ext2fs_open fails with E. */
static const char *
ext2_open_hint (errcode_t e)
{
  switch (e) {
  case EXT2_ET_BAD_MAGIC:
    return ": the disk below must hold an ext2, ext3 or ext4 filesystem "
      "(for a partitioned disk, add --filter=partition partition=N)";
  case EXT2_ET_RO_UNSUPP_FEATURE:
    return ": libext2fs can only read this filesystem: serve it with -r";
  case EXT2_ET_UNSUPP_FEATURE:
    return ": the filesystem uses features this libext2fs does not know: "
      "a newer e2fsprogs may";
  }
  return "";
}

/* Opens the filesystem and the file: the errors a user can cause. */
static int
ext2_open_file (struct handle *h, const char *device)
{
  struct ext2_inode inode;
  ext2_ino_t ino;
  errcode_t e;

  e = ext2fs_open (device, EXT2_FLAG_64BITS | (h->rw ? EXT2_FLAG_RW : 0),
                   0, 0, ext2_io_manager, &h->fs);
  if (e) {
    h->fs = NULL;
    nbdkit_error ("ext2: open: %s%s", error_message (e),
                  ext2_open_hint (e));
    return -1;
  }
  e = ext2fs_namei (h->fs, EXT2_ROOT_INO, EXT2_ROOT_INO, h->path, &ino);
  if (e == 0)
    e = ext2fs_read_inode (h->fs, ino, &inode);
  if (e) {
    nbdkit_error ("ext2: %s: namei: %s: give the path of a file in the "
                  "filesystem", h->path, error_message (e));
    return -1;
  }
  if (!LINUX_S_ISREG (inode.i_mode)) {
    nbdkit_error ("ext2: %s: must be a regular file in the disk image, "
                  "not a directory, link or device", h->path);
    return -1;
  }
  e = ext2fs_file_open2 (h->fs, ino, &inode,
                         h->rw ? EXT2_FILE_WRITE : 0, &h->file);
  if (e) {
    h->file = NULL;
    nbdkit_error ("ext2: %s: open: %s", h->path, error_message (e));
    return -1;
  }
  return 0;
}

/* Writable only if the client and the layer below both are. */
static int
ext2_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  char device[EXT2_IO_NAME_MAX];
  int w = readonly ? 0 : next->can_write (next);

  if (w == -1)
    return -1;
  h->rw = w == 1;
  ext2_io_name (next, device);
  if (ext2_open_file (h, device) == -1)
    goto out_close;
  h->map_buf = malloc (4 * (size_t) h->fs->blocksize);
  if (h->map_buf == NULL) {
    nbdkit_error ("ext2: %m");
    goto out_close;
  }
  return 0;

 out_close:
  ext2_handle_close (h);
  return -1;
}

static int
ext2_finalize (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  errcode_t e = ext2_handle_close (h);

  if (e) {
    nbdkit_error ("ext2: %s: closing the filesystem: %s", h->path,
                  error_message (e));
    return -1;
  }
  return 0;
}

/* The errno a client sees for a libext2fs error code, which is an
 * errno itself when the layer below failed.
 */
static int
ext2_errno (errcode_t e)
{
  switch (e) {
  case EXT2_ET_BLOCK_ALLOC_FAIL:
  case EXT2_ET_INODE_ALLOC_FAIL:
    return ENOSPC;
  case EXT2_ET_FILE_RO:
  case EXT2_ET_RO_FILSYS:
    return EROFS;
  }
  return e > 0 && e < 4096 ? (int) e : EIO;
}

static int
ext2_fail (struct handle *h, const char *what, errcode_t e, int *err)
{
  bool short_io = e == EXT2_ET_SHORT_READ || e == EXT2_ET_SHORT_WRITE;

  nbdkit_error ("ext2: %s: %s: %s%s", h->path, what, error_message (e),
                short_io ? ": the filesystem is larger than the disk "
                "below; is the image truncated?" : "");
  *err = ext2_errno (e);
  return -1;
}

static int64_t
ext2_get_size (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  __u64 size;
  errcode_t e = ext2fs_file_get_lsize (h->file, &size);

  if (e) {
    nbdkit_error ("ext2: %s: size: %s", h->path, error_message (e));
    return -1;
  }
  return size;
}

static int
ext2_can_write (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  return h->rw;
}

static int
ext2_can_flush (nbdkit_next *next, void *handle)
{
  return 1;
}

/* Writes go through libext2fs, which can neither punch holes in the
 * layer below nor zero it faster than by writing.
 */
static int
ext2_can_trim (nbdkit_next *next, void *handle)
{
  return 0;
}

static int
ext2_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_EMULATE;
}

static int
ext2_can_fua (nbdkit_next *next, void *handle)
{
  return NBDKIT_FUA_EMULATE;
}

/* Two connections would open the filesystem twice. */
static int
ext2_can_multi_conn (nbdkit_next *next, void *handle)
{
  return 0;
}

/* The layer below would cache the wrong bytes: read ours instead. */
static int
ext2_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_EMULATE;
}

static int
ext2_can_extents (nbdkit_next *next, void *handle)
{
  return 1;
}

/* The file's block, the inode and the metadata libext2fs holds, then
 * the layer below (through the I/O manager's flush).
 */
static errcode_t
ext2_sync (struct handle *h)
{
  errcode_t e = ext2fs_file_flush (h->file);

  if (e)
    return e;
  if (h->fs->flags & (EXT2_FLAG_DIRTY | EXT2_FLAG_BB_DIRTY |
                      EXT2_FLAG_IB_DIRTY))
    return ext2fs_flush (h->fs);
  return io_channel_flush (h->fs->io);
}

/* Through the file's one-block buffer: for data kept in the inode. */
static errcode_t
ext2_read_buffered (struct handle *h, char *buf, uint32_t count,
                    uint64_t offset)
{
  unsigned int got;
  errcode_t e;

  e = ext2fs_file_llseek (h->file, offset, EXT2_SEEK_SET, NULL);
  while (e == 0 && count > 0) {
    e = ext2fs_file_read (h->file, buf, count, &got);
    if (e == 0 && got == 0)
      e = EXT2_ET_SHORT_READ;   /* the file ends before its size */
    buf += got;
    count -= got;
  }
  return e;
}

static int
ext2_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;
  errcode_t e;

  if (ext2fs_file_get_inode (h->file)->i_flags & EXT4_INLINE_DATA_FL)
    e = ext2_read_buffered (h, buf, count, offset);
  else {
    /* A block written but still in the file's buffer is read below. */
    e = h->rw ? ext2fs_file_flush (h->file) : 0;
    if (e == 0)
      e = ext2_read_runs (h->file, buf, count, offset, h->map_buf,
                          h->map_buf + 3 * h->fs->blocksize);
  }
  return e ? ext2_fail (h, "read", e, err) : 0;
}

static int
ext2_pwrite (nbdkit_next *next, void *handle, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;
  unsigned int done;
  errcode_t e;

  e = ext2fs_file_llseek (h->file, offset, EXT2_SEEK_SET, NULL);
  while (e == 0 && count > 0) {
    e = ext2fs_file_write (h->file, buf, count, &done);
    if (e == 0 && done == 0)
      e = EXT2_ET_SHORT_WRITE;
    buf = (const char *) buf + done;
    count -= done;
  }
  if (e == 0 && (flags & NBDKIT_FLAG_FUA))
    e = ext2_sync (h);
  return e ? ext2_fail (h, "write", e, err) : 0;
}

static int
ext2_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct handle *h = handle;
  errcode_t e;

  if (!h->rw)
    return 0;
  e = ext2_sync (h);
  return e ? ext2_fail (h, "flush", e, err) : 0;
}

static int
ext2_extents (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags,
              struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;
  __u64 size;
  errcode_t e;

  /* A block written to a hole is allocated when the file's buffer is
   * written out: do that first, or it would show as a hole.
   */
  e = h->rw ? ext2fs_file_flush (h->file) : 0;
  if (e == 0)
    e = ext2fs_file_get_lsize (h->file, &size);
  if (e == 0 && ext2_map_extents (h->file, size, count, offset,
                                  flags & NBDKIT_FLAG_REQ_ONE, h->map_buf,
                                  extents, &e) == 0)
    return 0;
  return ext2_fail (h, "extents", e, err);
}

static struct nbdkit_filter filter = {
  .name = "ext2",
  .longname = "nbdsrv ext2 filter",
  .load = ext2_load,
  .unload = ext2_unload,
  .config = ext2_config,
  .config_complete = ext2_config_complete,
  .config_help = ext2_config_help,
  .thread_model = ext2_thread_model,
  .list_exports = ext2_list_exports,
  .open = ext2_open,
  .close = ext2_close,
  .prepare = ext2_prepare,
  .finalize = ext2_finalize,
  .get_size = ext2_get_size,
  .can_write = ext2_can_write,
  .can_flush = ext2_can_flush,
  .can_trim = ext2_can_trim,
  .can_zero = ext2_can_zero,
  .can_fua = ext2_can_fua,
  .can_multi_conn = ext2_can_multi_conn,
  .can_cache = ext2_can_cache,
  .can_extents = ext2_can_extents,
  .pread = ext2_pread,
  .pwrite = ext2_pwrite,
  .flush = ext2_flush,
  .extents = ext2_extents,
};

NBDKIT_REGISTER_FILTER (filter)

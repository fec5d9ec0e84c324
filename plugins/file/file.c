/* nbdsrv file plugin: serve a local file or block device, or every
 * file in a directory as a separate export.
 *
 * Behaviour that clients can observe is the same as nbdkit 1.32's file
 * plugin, checked by tests/integration/test_plugins_file.py:
 *   - export flags: flush, FUA (native, by fdatasync), trim, zero (but
 *     not fast zero, since the server is not told it is fast), cache
 *     and multi-conn;
 *   - block status comes from SEEK_DATA/SEEK_HOLE, so it has the file
 *     system's granularity, and an extent runs to its natural end even
 *     when that is past the request;
 *   - write zeroes prefers, in order: punching a hole (when the client
 *     allows trimming), FALLOC_FL_ZERO_RANGE, then a punched hole that
 *     is allocated again (tmpfs has no ZERO_RANGE), then BLKZEROOUT on
 *     block devices; when none applies the server writes zeroes.
 *
 * What the file system supports is learned on first use and kept in
 * the handle, so an unsupported call costs one failed syscall per
 * connection rather than one per request.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "read-source.h"

enum file_cache { FILE_CACHE_DEFAULT, FILE_CACHE_NONE };

static char *filename;                  /* owned: file= mode, absolute */
static char *directory;                 /* owned: dir= mode, absolute */
static enum file_cache cache_mode = FILE_CACHE_DEFAULT;
static int fadvise_mode = POSIX_FADV_NORMAL;

struct file_export {
  int fd;
  bool is_block;                /* block device, else regular file */
  bool can_write;               /* opened read-write */
  bool on_tmpfs;                /* SEEK_HOLE walks the page cache */
  uint32_t sector_size;         /* block devices: BLKSSZGET, else 512 */
  /* Cleared the first time the kernel says EOPNOTSUPP.  Requests on
   * one connection run in parallel, hence atomics.
   */
  atomic_bool can_punch_hole;
  atomic_bool can_zero_range;
  atomic_bool can_fallocate;
  atomic_bool can_zeroout;
};

static void
file_unload (void)
{
  free (filename);
  free (directory);
}

static void
file_dump_plugin (void)
{
  /* nbdkit prints these to say which zeroing methods were compiled
   * in; on Linux we always have all four.
   */
  printf ("file_blksszget=yes\n");
  printf ("file_blkzeroout=yes\n");
  printf ("file_falloc_fl_punch_hole=yes\n");
  printf ("file_falloc_fl_zero_range=yes\n");
}

/* Replace *SLOT with the canonical absolute path of VALUE. */
static int
file_config_path (const char *key, const char *value, char **slot)
{
  char *path;

  path = nbdkit_realpath (value);
  if (path == NULL)
    return -1;
  free (*slot);
  *slot = path;
  return 0;
}

static int
file_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0)
    return file_config_path (key, value, &filename);
  /* directory= is nbdkit's other spelling of dir=. */
  if (strcmp (key, "dir") == 0 || strcmp (key, "directory") == 0)
    return file_config_path (key, value, &directory);
  if (strcmp (key, "cache") == 0) {
    if (strcmp (value, "default") == 0)
      cache_mode = FILE_CACHE_DEFAULT;
    else if (strcmp (value, "none") == 0)
      cache_mode = FILE_CACHE_NONE;
    else {
      nbdkit_error ("cache=%s: expected default or none", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "fadvise") == 0) {
    if (strcmp (value, "normal") == 0)
      fadvise_mode = POSIX_FADV_NORMAL;
    else if (strcmp (value, "random") == 0)
      fadvise_mode = POSIX_FADV_RANDOM;
    else if (strcmp (value, "sequential") == 0)
      fadvise_mode = POSIX_FADV_SEQUENTIAL;
    else {
      nbdkit_error ("fadvise=%s: expected normal, random or "
                    "sequential", value);
      return -1;
    }
    return 0;
  }
  nbdkit_error ("unknown parameter '%s': expected file=, dir=, "
                "cache= or fadvise=", key);
  return -1;
}

/* Exactly one mode, and its path must be of the right kind now, so a
 * typo fails at startup rather than on the first connection.
 */
static int
file_config_complete (void)
{
  struct stat st;

  if (filename == NULL && directory == NULL) {
    nbdkit_error ("give the file to serve as [file=]PATH, or a "
                  "directory of exports as dir=DIR");
    return -1;
  }
  if (filename && directory) {
    nbdkit_error ("file= and dir= were both given: use one of them");
    return -1;
  }
  if (directory) {
    if (stat (directory, &st) == -1) {
      nbdkit_error ("dir=%s: %m", directory);
      return -1;
    }
    if (!S_ISDIR (st.st_mode)) {
      nbdkit_error ("dir=%s is not a directory: use file= to serve "
                    "a single file", directory);
      return -1;
    }
    return 0;
  }
  if (stat (filename, &st) == -1) {
    nbdkit_error ("file=%s: %m", filename);
    return -1;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    nbdkit_error ("file=%s is not a regular file or block device",
                  filename);
    return -1;
  }
  return 0;
}

#define file_config_help \
  "[file=]<FILENAME>     The file or block device to serve.\n" \
  "dir=<DIRNAME>         Serve every file in DIRNAME, by export name.\n" \
  "cache=default|none    Keep (default) or drop data from the page cache.\n" \
  "fadvise=normal|random|sequential\n" \
  "                      Access pattern hint given to the kernel."

/* In dir= mode, one export per regular file or block device directly
 * in the directory (symbolic links followed), in readdir order like
 * nbdkit.  In file= mode the only export is the default one.
 */
static int
file_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  struct dirent *d;
  struct stat st;
  DIR *dir;
  int r = 0;

  if (directory == NULL)
    return nbdkit_use_default_export (exports);

  dir = opendir (directory);
  if (dir == NULL) {
    nbdkit_error ("opendir %s: %m", directory);
    return -1;
  }
  /* readdir ends the loop; the directory is finite. */
  while (r == 0 && (errno = 0, d = readdir (dir)) != NULL) {
    if (fstatat (dirfd (dir), d->d_name, &st, 0) == -1)
      continue;         /* dangling link or vanished: not an export */
    if (S_ISREG (st.st_mode) || S_ISBLK (st.st_mode))
      r = nbdkit_add_export (exports, d->d_name, NULL);
  }
  if (r == 0 && errno != 0) {
    nbdkit_error ("readdir %s: %m", directory);
    r = -1;
  }
  closedir (dir);
  return r;
}

/* The path a connection asked for: the file, or in dir= mode the
 * export name inside the directory.  Returns an interned string.
 */
static const char *
file_export_path (void)
{
  const char *name;

  if (directory == NULL)
    return filename;

  name = nbdkit_export_name ();
  if (name == NULL || *name == '\0') {
    nbdkit_error ("dir= mode has no default export: ask for one of "
                  "the names from NBD_OPT_LIST (nbdinfo --list)");
    errno = ENOENT;
    return NULL;
  }
  /* Names are plain entries of the directory, never paths. */
  if (strchr (name, '/') != NULL) {
    nbdkit_error ("export name '%s' contains '/': only files "
                  "directly inside dir= can be served", name);
    errno = ENOENT;
    return NULL;
  }
  return nbdkit_printf_intern ("%s/%s", directory, name);
}

/* Open PATH read-write unless READONLY, falling back to read-only when
 * the file cannot be written, as nbdkit does.  Returns the fd or -1.
 */
static int
file_open_fd (const char *path, int readonly, bool *can_write)
{
  int fd = -1;

  *can_write = false;
  if (!readonly) {
    fd = open (path, O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0)
      *can_write = true;
    else if (errno != EACCES && errno != EPERM && errno != EROFS)
      return -1;
  }
  if (fd == -1)
    fd = open (path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  return fd;
}

static void *
file_open (int readonly)
{
  struct file_export *h;
  const char *path;
  struct stat st;
  struct statfs sfs;
  int sector;

  path = file_export_path ();
  if (path == NULL)
    return NULL;

  /* Check the type first: opening a FIFO or socket could block or
   * have side effects.
   */
  if (stat (path, &st) == -1) {
    nbdkit_error ("%s: %m", path);
    return NULL;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    nbdkit_error ("%s is not a regular file or block device", path);
    errno = ENOENT;
    return NULL;
  }

  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->fd = file_open_fd (path, readonly, &h->can_write);
  if (h->fd == -1) {
    nbdkit_error ("open %s: %m", path);
    goto out_free;
  }
  if (fstat (h->fd, &st) == -1) {
    nbdkit_error ("fstat %s: %m", path);
    goto out_close;
  }
  h->is_block = S_ISBLK (st.st_mode);
  h->on_tmpfs = !h->is_block && fstatfs (h->fd, &sfs) == 0 &&
    sfs.f_type == TMPFS_MAGIC;
  h->sector_size = 512;
  if (h->is_block && ioctl (h->fd, BLKSSZGET, &sector) == 0 && sector > 0)
    h->sector_size = sector;

  atomic_init (&h->can_punch_hole, true);
  atomic_init (&h->can_zero_range, true);
  atomic_init (&h->can_fallocate, true);
  atomic_init (&h->can_zeroout, h->is_block);

  /* Only a hint: a failure changes performance, never results. */
  posix_fadvise (h->fd, 0, 0, fadvise_mode);
  return h;

 out_close:
  close (h->fd);
 out_free:
  free (h);
  return NULL;
}

static void
file_close (void *handle)
{
  struct file_export *h = handle;

  close (h->fd);
  free (h);
}

static int64_t
file_get_size (void *handle)
{
  struct file_export *h = handle;
  uint64_t size;
  struct stat st;

  if (h->is_block) {
    if (ioctl (h->fd, BLKGETSIZE64, &size) == -1) {
      nbdkit_error ("BLKGETSIZE64: %m");
      return -1;
    }
    return size;
  }
  /* The file may have been resized since the last connection. */
  if (fstat (h->fd, &st) == -1) {
    nbdkit_error ("fstat: %m");
    return -1;
  }
  return st.st_size;
}

static int
file_can_write (void *handle)
{
  struct file_export *h = handle;

  return h->can_write;
}

/* Trim is advisory, so it is offered even where holes cannot be
 * punched; such requests then succeed without doing anything.
 */
static int
file_can_trim (void *handle)
{
  return 1;
}

static int
file_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

/* All connections reach the same kernel page cache. */
static int
file_can_multi_conn (void *handle)
{
  return 1;
}

static int
file_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

/* SEEK_DATA works on every Linux file system, reporting all data where
 * holes are not tracked; only a file system that rejects the call
 * outright (EINVAL) gets the server's "all data" answer instead.
 */
static int
file_can_extents (void *handle)
{
  struct file_export *h = handle;

  if (h->is_block)
    return 0;
  if (lseek (h->fd, 0, SEEK_DATA) == -1 && errno != ENXIO) {
    nbdkit_debug ("SEEK_DATA unsupported (%m): no extents");
    return 0;
  }
  return 1;
}

/* With cache=none, drop what a request pulled into the page cache.
 * Dirty pages cannot be dropped, so writes are pushed out first.
 */
static void
file_evict (struct file_export *h, uint32_t count, uint64_t offset,
            bool written)
{
  if (cache_mode != FILE_CACHE_NONE)
    return;
  if (written)
    sync_file_range (h->fd, offset, count,
                     SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                     SYNC_FILE_RANGE_WAIT_AFTER);
  posix_fadvise (h->fd, offset, count, POSIX_FADV_DONTNEED);
}

static int
file_sync (struct file_export *h)
{
  if (fdatasync (h->fd) == -1) {
    nbdkit_error ("fdatasync: %m");
    return -1;
  }
  return 0;
}

static int
file_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  struct file_export *h = handle;
  uint32_t done = 0;
  ssize_t r;

  /* Each pass moves at least one byte or returns. */
  while (done < count) {
    r = pread (h->fd, (char *) buf + done, count - done, offset + done);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("pread at offset %" PRIu64 ": %m", offset + done);
      return -1;
    }
    if (r == 0) {
      /* The file shrank under us. */
      nbdkit_error ("pread at offset %" PRIu64 ": unexpected end of "
                    "file (was the file truncated while served?)",
                    offset + done);
      errno = EIO;
      return -1;
    }
    done += r;
  }
  file_evict (h, count, offset, false);
  return 0;
}

static int
file_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  struct file_export *h = handle;
  uint32_t done = 0;
  ssize_t r;

  while (done < count) {
    r = pwrite (h->fd, (const char *) buf + done, count - done,
                offset + done);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("pwrite at offset %" PRIu64 ": %m", offset + done);
      return -1;
    }
    done += r;
  }
  if ((flags & NBDKIT_FLAG_FUA) && file_sync (h) == -1)
    return -1;
  file_evict (h, count, offset, true);
  return 0;
}

static int
file_flush (void *handle, uint32_t flags)
{
  return file_sync (handle);
}

static bool
file_unsupported (int err)
{
  return err == EOPNOTSUPP || err == ENOSYS || err == ENOTTY;
}

/* Try fallocate with MODE once the kernel has not refused it before.
 * Returns 0 on success, 1 if unsupported (and remembers that in
 * *KNOWN), -1 on a real error.
 */
static int
file_try_fallocate (struct file_export *h, atomic_bool *known, int mode,
                    uint32_t count, uint64_t offset)
{
  if (!atomic_load (known))
    return 1;
  if (fallocate (h->fd, mode, offset, count) == 0)
    return 0;
  if (file_unsupported (errno)) {
    atomic_store (known, false);
    return 1;
  }
  return -1;
}

static int
file_punch_hole (struct file_export *h, uint32_t count, uint64_t offset)
{
  return file_try_fallocate (h, &h->can_punch_hole,
                             FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                             count, offset);
}

/* BLKDISCARD and BLKZEROOUT take whole sectors only.  Same returns
 * as file_try_fallocate; KNOWN may be NULL.
 */
static int
file_block_ioctl (struct file_export *h, atomic_bool *known,
                  unsigned long req, uint32_t count, uint64_t offset)
{
  uint64_t range[2] = { offset, count };

  if (known && !atomic_load (known))
    return 1;
  if (offset % h->sector_size || count % h->sector_size)
    return 1;
  if (ioctl (h->fd, req, range) == 0)
    return 0;
  if (!file_unsupported (errno))
    return -1;
  if (known)
    atomic_store (known, false);
  return 1;
}

static int
file_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct file_export *h = handle;
  int r;

  if (h->is_block)
    r = file_block_ioctl (h, NULL, BLKDISCARD, count, offset);
  else
    r = file_punch_hole (h, count, offset);
  if (r == -1) {
    nbdkit_error ("trim %" PRIu32 " bytes at offset %" PRIu64 ": %m",
                  count, offset);
    return -1;
  }
  /* r == 1: nothing was done, which a trim allows. */
  if ((flags & NBDKIT_FLAG_FUA) && file_sync (h) == -1)
    return -1;
  return 0;
}

/* The zeroing methods, fastest and best first.  Returns 0 when the
 * range now reads as zero, 1 when no method applied, -1 on error.
 */
static int
file_zero_native (struct file_export *h, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  bool may_trim = flags & NBDKIT_FLAG_MAY_TRIM;
  bool fast = flags & NBDKIT_FLAG_FAST_ZERO;
  int r;

  /* Block devices refuse partial sectors with EINVAL. */
  if (h->is_block && (offset % h->sector_size || count % h->sector_size))
    return 1;

  if (may_trim) {
    r = file_punch_hole (h, count, offset);
    if (r <= 0)
      return r;
  }

  /* On block devices ZERO_RANGE may quietly write zeroes, which a fast
   * zero must not do; on files it only changes extent state.
   */
  if (!h->is_block || !fast) {
    r = file_try_fallocate (h, &h->can_zero_range,
                            FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                            count, offset);
    if (r <= 0)
      return r;
  }

  /* tmpfs has holes but no ZERO_RANGE: punch, then allocate again so
   * that NO_HOLE is honoured.  If allocation is refused the range
   * still reads as zero, which is what was asked.
   */
  if (!h->is_block && atomic_load (&h->can_punch_hole) && !may_trim) {
    r = file_punch_hole (h, count, offset);
    if (r != 0)
      return r;
    r = file_try_fallocate (h, &h->can_fallocate, 0, count, offset);
    return r == -1 ? -1 : 0;
  }

  if (h->is_block && !fast)
    return file_block_ioctl (h, &h->can_zeroout, BLKZEROOUT, count, offset);
  return 1;
}

static int
file_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct file_export *h = handle;
  int r;

  r = file_zero_native (h, count, offset, flags);
  if (r == -1) {
    nbdkit_error ("zero %" PRIu32 " bytes at offset %" PRIu64 ": %m",
                  count, offset);
    return -1;
  }
  if (r == 1) {
    /* The server writes zeroes itself, or fails a fast zero. */
    nbdkit_debug ("no native zeroing for %" PRIu32 " bytes at "
                  "offset %" PRIu64, count, offset);
    nbdkit_set_error (EOPNOTSUPP);
    errno = EOPNOTSUPP;
    return -1;
  }
  if ((flags & NBDKIT_FLAG_FUA) && file_sync (h) == -1)
    return -1;
  file_evict (h, count, offset, true);
  return 0;
}

/* Walk [offset, offset+count) with SEEK_DATA and SEEK_HOLE.  The last
 * extent is reported to its natural end; the server clips it.
 */
static int
file_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
              struct nbdkit_extents *extents)
{
  struct file_export *h = handle;
  uint64_t end = offset + count;
  uint64_t pos = offset;
  off_t data, hole;

  /* Every pass adds at least one non-empty extent, so POS grows. */
  while (pos < end) {
    data = lseek (h->fd, pos, SEEK_DATA);
    if (data == -1 && errno != ENXIO) {
      nbdkit_error ("lseek SEEK_DATA at %" PRIu64 ": %m", pos);
      return -1;
    }
    if (data == -1) {
      /* Hole to the end of file: unlike the other extents, nbdkit
       * reports this one only up to the end of the request.
       */
      return nbdkit_add_extent (extents, pos, end - pos,
                                NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
    }
    if ((uint64_t) data > pos) {
      if (nbdkit_add_extent (extents, pos, data - pos,
                             NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == -1)
        return -1;
      if (flags & NBDKIT_FLAG_REQ_ONE)
        return 0;
      pos = data;
      continue;
    }
    hole = lseek (h->fd, pos, SEEK_HOLE);
    if (hole == -1) {
      nbdkit_error ("lseek SEEK_HOLE at %" PRIu64 ": %m", pos);
      return -1;
    }
    if ((uint64_t) hole <= pos) {
      /* Cannot happen after SEEK_DATA found data here; do not spin. */
      nbdkit_error ("lseek SEEK_HOLE at %" PRIu64 " did not advance",
                    pos);
      errno = EIO;
      return -1;
    }
    if (nbdkit_add_extent (extents, pos, hole - pos, 0) == -1)
      return -1;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      return 0;
    pos = hole;
  }
  return 0;
}

static int
file_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct file_export *h = handle;
  int err;

  /* posix_fadvise returns the error rather than setting errno. */
  err = posix_fadvise (h->fd, offset, count, POSIX_FADV_WILLNEED);
  if (err != 0) {
    errno = err;
    nbdkit_error ("posix_fadvise WILLNEED: %m");
    return -1;
  }
  return 0;
}

/* Whether [offset, offset+count) may hold holes: not when every block
 * of the file is allocated, nor when SEEK_HOLE finds the first hole
 * past the range.  On tmpfs SEEK_HOLE walks the page cache up to the
 * hole, which can be the whole file, so a sparse tmpfs file is just
 * said to have holes.
 */
static bool
file_may_hold_holes (struct file_export *h, uint32_t count, uint64_t offset)
{
  struct stat st;
  off_t hole;

  if (h->is_block)
    return false;
  if (fstat (h->fd, &st) == -1)
    return true;
  if ((uint64_t) st.st_blocks * 512 >= (uint64_t) st.st_size)
    return false;
  if (h->on_tmpfs)
    return true;
  hole = lseek (h->fd, offset, SEEK_HOLE);
  return hole == -1 || (uint64_t) hole < offset + count;
}

/* read-source.h: nbdsrv splices large READs from the file to the
 * socket.  Not with cache=none, which must drop the pages after each
 * read: .pread does that.
 */
read_source_fn nbdsrv_read_source;

int
nbdsrv_read_source (void *handle, uint32_t count, uint64_t offset,
                    int *fd, uint64_t *fd_offset, unsigned *flags)
{
  struct file_export *h = handle;

  if (cache_mode == FILE_CACHE_NONE)
    return -1;
  *fd = h->fd;
  *fd_offset = offset;
  if (file_may_hold_holes (h, count, offset))
    *flags |= READ_SOURCE_MAY_HOLD_HOLES;
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "file",
  .longname          = "nbdsrv file plugin",
  .version           = "0.1.0",
  .unload            = file_unload,
  .dump_plugin       = file_dump_plugin,
  .config            = file_config,
  .config_complete   = file_config_complete,
  .config_help       = file_config_help,
  .magic_config_key  = "file",
  .list_exports      = file_list_exports,
  .open              = file_open,
  .close             = file_close,
  .get_size          = file_get_size,
  .can_write         = file_can_write,
  .can_trim          = file_can_trim,
  .can_extents       = file_can_extents,
  .can_fua           = file_can_fua,
  .can_multi_conn    = file_can_multi_conn,
  .can_cache         = file_can_cache,
  .pread             = file_pread,
  .pwrite            = file_pwrite,
  .flush             = file_flush,
  .trim              = file_trim,
  .zero              = file_zero,
  .extents           = file_extents,
  .cache             = file_cache,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

/* nbdsrv split plugin: several files joined end to end into one disk.
 *
 * The files are given as file= parameters, in disk order.  Each
 * connection opens its own descriptors and measures the files, so the
 * disk layout is fixed for the life of a connection; the files must not
 * change size while served.
 *
 * What clients see matches nbdkit 1.32's split plugin: no flush, FUA
 * or trim, zero emulated by the server with writes, cache by
 * posix_fadvise, and block status from SEEK_DATA/SEEK_HOLE in each
 * file, every extent reported to its natural end within its file.
 * Unlike nbdkit we serve requests in parallel (every call is pread,
 * pwrite or lseek on a per-connection descriptor, none of which share
 * state), and refuse to start without any file.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

static char **filenames;        /* owned, absolute paths, in disk order */
static size_t nr_files;

/* One file of the disk, as seen by one connection. */
struct split_part {
  int fd;
  uint64_t start;               /* offset of the file in the disk */
  uint64_t size;
};

struct split_handle {
  struct split_part *parts;     /* owned, nr_files entries */
  uint64_t size;                /* sum of the file sizes */
};

static void
split_unload (void)
{
  size_t i;

  for (i = 0; i < nr_files; ++i)
    free (filenames[i]);
  free (filenames);
}

static int
split_config (const char *key, const char *value)
{
  char **list;
  char *path;

  if (strcmp (key, "file") != 0) {
    nbdkit_error ("unknown parameter '%s': the only parameter is "
                  "[file=]FILENAME, given once per file", key);
    return -1;
  }
  path = nbdkit_realpath (value);
  if (path == NULL)
    return -1;
  list = reallocarray (filenames, nr_files + 1, sizeof *list);
  if (list == NULL) {
    nbdkit_error ("file=%s: reallocarray: %m", value);
    free (path);
    return -1;
  }
  filenames = list;
  filenames[nr_files++] = path;
  return 0;
}

static int
split_config_complete (void)
{
  if (nr_files == 0) {
    nbdkit_error ("no file= given: list the files to join, for example "
                  "'split part1 part2'");
    return -1;
  }
  return 0;
}

#define split_config_help \
  "[file=]<FILENAME> (required, repeatable) Files joined in this order."

static void
split_handle_free (struct split_handle *h, size_t opened)
{
  size_t i;

  for (i = 0; i < opened; ++i)
    close (h->parts[i].fd);
  free (h->parts);
  free (h);
}

static void *
split_open (int readonly)
{
  struct split_handle *h;
  struct split_part *p;
  struct stat st;
  size_t i;

  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->parts = calloc (nr_files, sizeof *h->parts);
  if (h->parts == NULL) {
    nbdkit_error ("calloc: %m");
    free (h);
    return NULL;
  }

  for (i = 0; i < nr_files; ++i) {
    p = &h->parts[i];
    p->fd = open (filenames[i],
                  (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY);
    if (p->fd == -1) {
      nbdkit_error ("open %s: %m%s", filenames[i],
                    readonly ? "" : " (use -r to serve read-only)");
      goto out_free;
    }
    if (fstat (p->fd, &st) == -1) {
      nbdkit_error ("fstat %s: %m", filenames[i]);
      close (p->fd);
      goto out_free;
    }
    p->start = h->size;
    p->size = st.st_size;
    h->size += p->size;
  }
  return h;

 out_free:
  split_handle_free (h, i);
  return NULL;
}

static void
split_close (void *handle)
{
  split_handle_free (handle, nr_files);
}

static int64_t
split_get_size (void *handle)
{
  struct split_handle *h = handle;

  return h->size;
}

static int
split_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

/* Index of the file holding disk offset OFFSET (< disk size).  Empty
 * files are never chosen, since no offset lies in them.
 */
static size_t
split_find (struct split_handle *h, uint64_t offset)
{
  size_t lo = 0, hi = nr_files;

  /* Binary search for the last part with start <= offset. */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;

    if (h->parts[mid].start <= offset)
      lo = mid;
    else
      hi = mid;
  }
  /* Skip empty files sharing that start. */
  while (lo < nr_files - 1 && h->parts[lo].size == 0)
    lo++;
  return lo;
}

/* Call FN for each piece of [offset, offset+count), one per file.
 * FN gets the part, the offset inside the file, the length, and how
 * far into the request the piece starts.
 */
typedef int (*split_piece_fn) (struct split_part *p, uint64_t file_offset,
                               uint32_t n, uint32_t done, void *opaque);

static int
split_for_each (struct split_handle *h, uint32_t count, uint64_t offset,
                split_piece_fn fn, void *opaque)
{
  uint32_t done = 0, n;
  struct split_part *p;
  uint64_t in_file;
  size_t i;

  i = split_find (h, offset);
  /* Each pass consumes one file's share; the server checked bounds. */
  while (done < count && i < nr_files) {
    p = &h->parts[i++];
    in_file = offset + done - p->start;
    if (in_file >= p->size)
      continue;
    n = count - done;
    if (n > p->size - in_file)
      n = p->size - in_file;
    if (fn (p, in_file, n, done, opaque) == -1)
      return -1;
    done += n;
  }
  return 0;
}

static int
split_read_piece (struct split_part *p, uint64_t file_offset, uint32_t n,
                  uint32_t done, void *opaque)
{
  char *buf = (char *) opaque + done;
  uint32_t got = 0;
  ssize_t r;

  while (got < n) {
    r = pread (p->fd, buf + got, n - got, file_offset + got);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      nbdkit_error ("pread: %m");
      return -1;
    }
    if (r == 0) {
      nbdkit_error ("pread: unexpected end of file: a file was truncated "
                    "while served");
      errno = EIO;
      return -1;
    }
    got += r;
  }
  return 0;
}

static int
split_write_piece (struct split_part *p, uint64_t file_offset, uint32_t n,
                   uint32_t done, void *opaque)
{
  const char *buf = (const char *) opaque + done;
  uint32_t put = 0;
  ssize_t r;

  while (put < n) {
    r = pwrite (p->fd, buf + put, n - put, file_offset + put);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      nbdkit_error ("pwrite: %m");
      return -1;
    }
    put += r;
  }
  return 0;
}

static int
split_cache_piece (struct split_part *p, uint64_t file_offset, uint32_t n,
                   uint32_t done, void *opaque)
{
  int err;

  /* posix_fadvise returns the error instead of setting errno. */
  err = posix_fadvise (p->fd, file_offset, n, POSIX_FADV_WILLNEED);
  if (err != 0) {
    errno = err;
    nbdkit_error ("posix_fadvise: %m");
    return -1;
  }
  return 0;
}

static int
split_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  return split_for_each (handle, count, offset, split_read_piece, buf);
}

static int
split_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  return split_for_each (handle, count, offset, split_write_piece,
                         (void *) buf);
}

static int
split_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return split_for_each (handle, count, offset, split_cache_piece, NULL);
}

/* Add the extents of part P from IN_FILE up to where the request ends
 * (REQ_END, in file coordinates) or the file ends.  Extents run to
 * their natural end inside the file.  Returns 1 when REQ_ONE is done.
 */
static int
split_part_extents (struct split_part *p, uint64_t in_file, uint64_t req_end,
                    uint32_t flags, struct nbdkit_extents *extents)
{
  const uint32_t hole = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
  off_t data, end;

  /* Every pass adds a non-empty extent, so IN_FILE grows. */
  while (in_file < p->size && in_file < req_end) {
    data = lseek (p->fd, in_file, SEEK_DATA);
    if (data == -1 && errno != ENXIO) {
      nbdkit_error ("lseek SEEK_DATA: %m");
      return -1;
    }
    if (data == -1 || (uint64_t) data > p->size)
      data = p->size;           /* a hole to the end of this file */
    if ((uint64_t) data > in_file) {
      if (nbdkit_add_extent (extents, p->start + in_file, data - in_file,
                             hole) == -1)
        return -1;
      in_file = data;
    }
    else {
      end = lseek (p->fd, in_file, SEEK_HOLE);
      if (end == -1) {
        nbdkit_error ("lseek SEEK_HOLE: %m");
        return -1;
      }
      if ((uint64_t) end > p->size)
        end = p->size;
      if ((uint64_t) end <= in_file) {
        nbdkit_error ("lseek SEEK_HOLE did not advance: a file was "
                      "truncated while served");
        errno = EIO;
        return -1;
      }
      if (nbdkit_add_extent (extents, p->start + in_file, end - in_file,
                             0) == -1)
        return -1;
      in_file = end;
    }
    if (flags & NBDKIT_FLAG_REQ_ONE)
      return 1;
  }
  return 0;
}

static int
split_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents)
{
  struct split_handle *h = handle;
  uint64_t end = offset + count;
  struct split_part *p;
  size_t i;
  int r;

  /* One file at a time, from the one holding OFFSET. */
  for (i = split_find (h, offset); i < nr_files; ++i) {
    p = &h->parts[i];
    if (p->start >= end)
      break;
    if (p->size == 0)
      continue;
    r = split_part_extents (p, offset > p->start ? offset - p->start : 0,
                            end - p->start, flags, extents);
    if (r != 0)
      return r == 1 ? 0 : -1;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "split",
  .longname          = "nbdsrv split plugin",
  .version           = "0.1.0",
  .unload            = split_unload,
  .config            = split_config,
  .config_complete   = split_config_complete,
  .config_help       = split_config_help,
  .magic_config_key  = "file",
  .open              = split_open,
  .close             = split_close,
  .get_size          = split_get_size,
  .can_cache         = split_can_cache,
  .pread             = split_pread,
  .pwrite            = split_pwrite,
  .cache             = split_cache,
  .extents           = split_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

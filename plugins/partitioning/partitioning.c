/* nbdsrv partitioning plugin: a virtual disk with a partition table
 * whose partitions are the given files.
 *
 * The table (MBR or GPT) lives in memory and is built once, by the pure
 * ptable_build (ptable.c), when the server gets ready.  Reads and
 * writes inside a partition go to its file; padding reads as zero and
 * the table reads as built.  Writing to either is refused with EIO,
 * unless the data written is what is already there, which lets tools
 * that rewrite a whole disk copy work.  This matches nbdkit 1.32.
 *
 * Parameters are read in order: alignment=, mbr-id= and type-guid=
 * apply to the file= parameters after them.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "ptable.h"

#define DEFAULT_MBR_ID    0x83
#define DEFAULT_TYPE_GUID "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

/* A partition file, opened at config time. */
struct part_file {
  char *name;                   /* owned: as given, used as GPT name */
  int fd;
  struct ptable_part part;      /* part.name borrows NAME */
};

static struct part_file *files;         /* owned */
static size_t nr_files;

/* Settings for the files still to come. */
static uint64_t cur_alignment = PTABLE_MAX_ALIGNMENT;
static uint8_t cur_mbr_id = DEFAULT_MBR_ID;
static uint8_t cur_type_guid[16];

static int part_type = -1;              /* -1: choose in config_complete */
static struct ptable table;             /* built in get_ready */

static void
partitioning_load (void)
{
  ptable_parse_guid (DEFAULT_TYPE_GUID, cur_type_guid);
}

static void
partitioning_unload (void)
{
  size_t i;

  for (i = 0; i < nr_files; ++i) {
    close (files[i].fd);
    free (files[i].name);
  }
  free (files);
  ptable_free (&table);
}

/* Size of an open file or block device, or -1. */
static int64_t
partitioning_fd_size (int fd, const char *name)
{
  struct stat st;
  uint64_t size;

  if (fstat (fd, &st) == -1) {
    nbdkit_error ("file=%s: fstat: %m", name);
    return -1;
  }
  if (S_ISREG (st.st_mode))
    return st.st_size;
  if (S_ISBLK (st.st_mode) && ioctl (fd, BLKGETSIZE64, &size) == 0)
    return size;
  nbdkit_error ("file=%s is not a regular file or block device", name);
  return -1;
}

static int
partitioning_add_file (const char *value)
{
  struct part_file *list, *f;
  int64_t size;
  int fd;

  fd = open (value, O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (fd == -1) {
    nbdkit_error ("file=%s: %m", value);
    return -1;
  }
  size = partitioning_fd_size (fd, value);
  if (size == -1)
    goto out_close;
  if (size == 0) {
    nbdkit_error ("file=%s is empty: a partition needs at least one byte",
                  value);
    goto out_close;
  }

  list = reallocarray (files, nr_files + 1, sizeof *list);
  if (list == NULL) {
    nbdkit_error ("file=%s: reallocarray: %m", value);
    goto out_close;
  }
  files = list;
  f = &files[nr_files];
  memset (f, 0, sizeof *f);
  f->name = strdup (value);
  if (f->name == NULL) {
    nbdkit_error ("file=%s: strdup: %m", value);
    goto out_close;
  }
  f->fd = fd;
  f->part.size = size;
  f->part.alignment = cur_alignment;
  f->part.mbr_id = cur_mbr_id;
  memcpy (f->part.type_guid, cur_type_guid, 16);
  nr_files++;
  return 0;

 out_close:
  close (fd);
  return -1;
}

static int
partitioning_set_alignment (const char *value)
{
  int64_t a = nbdkit_parse_size (value);

  if (a == -1)
    return -1;
  if (a < PTABLE_SECTOR || a > (int64_t) PTABLE_MAX_ALIGNMENT ||
      (a & (a - 1)) != 0) {
    nbdkit_error ("alignment=%s: expected a power of 2 from 512 to 1M",
                  value);
    return -1;
  }
  cur_alignment = a;
  return 0;
}

static int
partitioning_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0)
    return partitioning_add_file (value);
  if (strcmp (key, "alignment") == 0)
    return partitioning_set_alignment (value);
  if (strcmp (key, "mbr-id") == 0) {
    if (strcmp (value, "default") == 0) {
      cur_mbr_id = DEFAULT_MBR_ID;
      return 0;
    }
    if (nbdkit_parse_uint8_t ("mbr-id", value, &cur_mbr_id) == -1)
      return -1;
    return 0;
  }
  if (strcmp (key, "type-guid") == 0) {
    if (strcmp (value, "default") == 0)
      value = DEFAULT_TYPE_GUID;
    if (ptable_parse_guid (value, cur_type_guid) == -1) {
      nbdkit_error ("type-guid=%s: expected a GUID such as %s, or default",
                    value, DEFAULT_TYPE_GUID);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "partition-type") == 0) {
    /* Either case, as nbdkit. */
    if (strcasecmp (value, "mbr") == 0)
      part_type = PTABLE_MBR;
    else if (strcasecmp (value, "gpt") == 0)
      part_type = PTABLE_GPT;
    else {
      nbdkit_error ("partition-type=%s: expected mbr or gpt", value);
      return -1;
    }
    return 0;
  }
  nbdkit_error ("unknown parameter '%s': expected file=, partition-type=, "
                "alignment=, mbr-id= or type-guid=", key);
  return -1;
}

/* Choose the table type as nbdkit does: GPT when MBR cannot hold the
 * partitions without logical ones, or the disk is too big for it.
 */
static int
partitioning_config_complete (void)
{
  uint64_t total = 0;
  size_t i;

  if (nr_files == 0) {
    nbdkit_error ("no file= given: name at least one file to become a "
                  "partition");
    return -1;
  }
  for (i = 0; i < nr_files; ++i)
    total += files[i].part.size;
  if (part_type == -1)
    part_type = nr_files > 4 || total > PTABLE_MBR_MAX_TOTAL
      ? PTABLE_GPT : PTABLE_MBR;
  if (part_type == PTABLE_MBR && total > PTABLE_MBR_MAX_TOTAL) {
    nbdkit_error ("partition-type=mbr: the %zu files total %" PRIu64
                  " bytes, more than an MBR can address (%" PRIu64 "): "
                  "use partition-type=gpt", nr_files, total,
                  PTABLE_MBR_MAX_TOTAL);
    return -1;
  }
  return 0;
}

#define partitioning_config_help \
  "[file=]<FILENAME>  (required, repeatable) A file to become a partition.\n" \
  "partition-type=mbr|gpt   Table type (default: MBR if it fits).\n" \
  "alignment=<SIZE>   Alignment of the following partitions (default 1M).\n" \
  "mbr-id=0xNN|default      MBR type byte of the following partitions.\n" \
  "type-guid=<GUID>|default GPT type of the following partitions."

static int
partitioning_get_ready (void)
{
  struct ptable_part *parts;
  const char *err;
  size_t i;
  int r;

  parts = calloc (nr_files, sizeof *parts);
  if (parts == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < nr_files; ++i) {
    parts[i] = files[i].part;
    parts[i].name = files[i].name;
    if (getrandom (parts[i].guid, 16, 0) != 16) {
      nbdkit_error ("getrandom: %m");
      free (parts);
      return -1;
    }
    /* Mark the random GUID as RFC 4122 version 4 (the third field is
     * stored little-endian, hence byte 7).
     */
    parts[i].guid[7] = (parts[i].guid[7] & 0x0f) | 0x40;
    parts[i].guid[8] = (parts[i].guid[8] & 0x3f) | 0x80;
  }
  r = ptable_build (part_type, parts, nr_files, &table, &err);
  free (parts);
  if (r == -1) {
    nbdkit_error ("cannot build the partition table: %s", err);
    return -1;
  }
  return 0;
}

static void *
partitioning_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
partitioning_get_size (void *handle)
{
  return table.disk_size;
}

/* Every connection uses the same descriptors. */
static int
partitioning_can_multi_conn (void *handle)
{
  return 1;
}

static int
partitioning_can_cache (void *handle)
{
  return NBDKIT_CACHE_EMULATE;
}

static int
partitioning_file_pread (int fd, char *buf, uint32_t n, uint64_t off)
{
  ssize_t r;

  while (n > 0) {
    r = pread (fd, buf, n, off);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      nbdkit_error ("pread: %m");
      return -1;
    }
    if (r == 0) {
      nbdkit_error ("pread: unexpected end of file: a partition file "
                    "was truncated while served");
      errno = EIO;
      return -1;
    }
    buf += r;
    off += r;
    n -= r;
  }
  return 0;
}

static int
partitioning_file_pwrite (int fd, const char *buf, uint32_t n, uint64_t off)
{
  ssize_t r;

  while (n > 0) {
    r = pwrite (fd, buf, n, off);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      nbdkit_error ("pwrite: %m");
      return -1;
    }
    buf += r;
    off += r;
    n -= r;
  }
  return 0;
}

/* Piece of the request inside region R, from disk offset OFFSET. */
static uint32_t
partitioning_piece (const struct ptable_region *r, uint64_t offset,
                    uint32_t count)
{
  uint64_t left = r->start + r->len - offset;

  return left < count ? left : count;
}

static int
partitioning_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  const struct ptable_region *r;
  char *out = buf;
  size_t i;
  uint32_t n;

  /* Each pass finishes one region; the server checked the bounds. */
  for (i = ptable_find (&table, offset); count > 0; ++i) {
    r = &table.regions[i];
    n = partitioning_piece (r, offset, count);
    switch (r->kind) {
    case PTABLE_DATA:
      if (partitioning_file_pread (files[r->part].fd, out, n,
                                   offset - r->start) == -1)
        return -1;
      break;
    case PTABLE_ZERO:
      memset (out, 0, n);
      break;
    case PTABLE_TABLE:
      memcpy (out, r->bytes + (offset - r->start), n);
      break;
    }
    out += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static bool
partitioning_is_zero (const char *buf, uint32_t n)
{
  uint32_t i;

  for (i = 0; i < n; ++i)
    if (buf[i] != 0)
      return false;
  return true;
}

static int
partitioning_pwrite (void *handle, const void *buf, uint32_t count,
                     uint64_t offset, uint32_t flags)
{
  const struct ptable_region *r;
  const char *in = buf;
  size_t i;
  uint32_t n;

  for (i = ptable_find (&table, offset); count > 0; ++i) {
    r = &table.regions[i];
    n = partitioning_piece (r, offset, count);
    switch (r->kind) {
    case PTABLE_DATA:
      if (partitioning_file_pwrite (files[r->part].fd, in, n,
                                    offset - r->start) == -1)
        return -1;
      break;
    case PTABLE_ZERO:
      if (!partitioning_is_zero (in, n)) {
        nbdkit_error ("write of non-zero data to padding at offset %"
                      PRIu64 ": only the partitions can be written",
                      offset);
        errno = EIO;
        return -1;
      }
      break;
    case PTABLE_TABLE:
      if (memcmp (in, r->bytes + (offset - r->start), n) != 0) {
        nbdkit_error ("write to the partition table at offset %" PRIu64
                      ": the table is virtual and cannot be changed",
                      offset);
        errno = EIO;
        return -1;
      }
      break;
    }
    in += n;
    offset += n;
    count -= n;
  }
  /* No FUA here: without can_fua the server emulates it by flush. */
  return 0;
}

static int
partitioning_flush (void *handle, uint32_t flags)
{
  size_t i;

  for (i = 0; i < nr_files; ++i) {
    if (fdatasync (files[i].fd) == -1) {
      nbdkit_error ("fdatasync %s: %m", files[i].name);
      return -1;
    }
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "partitioning",
  .longname          = "nbdsrv partitioning plugin",
  .version           = "0.1.0",
  .load              = partitioning_load,
  .unload            = partitioning_unload,
  .config            = partitioning_config,
  .config_complete   = partitioning_config_complete,
  .config_help       = partitioning_config_help,
  .magic_config_key  = "file",
  .get_ready         = partitioning_get_ready,
  .open              = partitioning_open,
  .get_size          = partitioning_get_size,
  .can_multi_conn    = partitioning_can_multi_conn,
  .can_cache         = partitioning_can_cache,
  .pread             = partitioning_pread,
  .pwrite            = partitioning_pwrite,
  .flush             = partitioning_flush,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

/* nbdsrv dirty filter: changed-block tracking over any plugin.
 *
 * Records which blocks were written, trimmed or zeroed since the export
 * started (or since the last checkpoint) in a bitmap of
 * dirty-granularity blocks, and offers it to clients as the meta
 * context qemu:dirty-bitmap:NAME (common/include/meta-ext.h), so an
 * incremental backup reads only what changed.  nbdkit has no such
 * filter and does not look for the extension: there the filter tracks
 * but offers nothing.
 *
 * The bitmap survives a clean shutdown in dirty-file: saved at cleanup,
 * loaded at start.  While the server runs the file is marked in use, so
 * after a crash the next start finds it so marked, says so, and marks
 * every block dirty: changes made after the last save are unknown, and
 * a backup that copies too much is safe where one that copies too
 * little is not.
 *
 * A checkpoint starts a new bitmap: create the file named by
 * dirty-checkpoint; the filter notices within CHECKPOINT_POLL_MS,
 * clears the bitmap and removes the file to say it is done.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "meta-ext.h"

#define CHECKPOINT_POLL_MS 100

/* The saved file: this header, then the bitmap bytes. */
#define FILE_MAGIC "NBDSRVDB"
#define FILE_VERSION 1
enum file_state { FILE_CLEAN = 1, FILE_IN_USE = 2 };
struct file_header {
  char magic[8];
  uint32_t version;
  uint32_t state;               /* enum file_state */
  uint64_t granularity;
  uint64_t size;                /* of the export */
} __attribute__ ((__packed__));

static const char *bitmap_name = "dirty";   /* dirty-bitmap */
static uint64_t granularity = 65536;        /* dirty-granularity */
static const char *file_path;               /* dirty-file, borrowed */
static const char *checkpoint_path;         /* dirty-checkpoint */

static uint64_t export_size;
static uint64_t nblocks;
static uint8_t *bits;                       /* owned: nblocks bits */

static pthread_t poller;
static bool poller_running;
static volatile bool poller_stop;

static int
dirty_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  if (strcmp (key, "dirty-bitmap") == 0) {
    if (*value == '\0' || strlen (value) > 1000) {
      nbdkit_error ("dirty-bitmap must be a name of 1 to 1000 bytes");
      return -1;
    }
    bitmap_name = value;
    return 0;
  }
  if (strcmp (key, "dirty-granularity") == 0) {
    int64_t n = nbdkit_parse_size (value);

    if (n == -1)
      return -1;
    if (n < 512 || n > (INT64_C (1) << 30) || (n & (n - 1)) != 0) {
      nbdkit_error ("dirty-granularity must be a power of 2 from 512 "
                    "to 1G, not %s", value);
      return -1;
    }
    granularity = n;
    return 0;
  }
  if (strcmp (key, "dirty-file") == 0) {
    file_path = value;
    return 0;
  }
  if (strcmp (key, "dirty-checkpoint") == 0) {
    checkpoint_path = value;
    return 0;
  }
  return next (nxdata, key, value);
}

#define dirty_config_help \
  "dirty-bitmap=NAME          Offer qemu:dirty-bitmap:NAME (default dirty).\n" \
  "dirty-granularity=SIZE     Bytes per bitmap bit (default 64K).\n" \
  "dirty-file=PATH            Keep the bitmap here across clean restarts.\n" \
  "dirty-checkpoint=PATH      Create PATH to start a new bitmap."

static void
mark (uint64_t offset, uint64_t count)
{
  uint64_t first = offset / granularity;
  uint64_t last = (offset + count - 1) / granularity;

  for (uint64_t b = first; b <= last && b < nblocks; b++)
    __atomic_fetch_or (&bits[b / 8], (uint8_t) (1u << (b % 8)),
                       __ATOMIC_RELAXED);
}

static bool
is_dirty (uint64_t b)
{
  return __atomic_load_n (&bits[b / 8], __ATOMIC_RELAXED) & (1u << (b % 8));
}

static void
clear_all (void)
{
  for (uint64_t i = 0; i < (nblocks + 7) / 8; i++)
    __atomic_store_n (&bits[i], 0, __ATOMIC_RELAXED);
}

/* Write the header with STATE and (with BITMAP) the bitmap to PATH. */
static int
file_write (const char *path, enum file_state state, bool bitmap)
{
  struct file_header h = {
    .version = FILE_VERSION, .state = state,
    .granularity = granularity, .size = export_size,
  };
  char tmp[4096];
  FILE *fp;
  int ok;

  memcpy (h.magic, FILE_MAGIC, 8);
  snprintf (tmp, sizeof tmp, "%s.tmp", path);
  fp = fopen (tmp, "w");
  if (fp == NULL) {
    nbdkit_error ("dirty-file %s: %m", tmp);
    return -1;
  }
  ok = fwrite (&h, sizeof h, 1, fp) == 1 &&
    (!bitmap || fwrite (bits, 1, (nblocks + 7) / 8, fp) == (nblocks + 7) / 8);
  ok = fflush (fp) == 0 && ok && fsync (fileno (fp)) == 0;
  if (fclose (fp) != 0 || !ok || rename (tmp, path) == -1) {
    nbdkit_error ("dirty-file %s: cannot save the bitmap: %m", path);
    unlink (tmp);
    return -1;
  }
  return 0;
}

/* Load the bitmap saved at the last clean shutdown; then mark the file
 * in use, so that a crash is recognised at the next start.
 */
static int
file_load (void)
{
  struct file_header h;
  FILE *fp = fopen (file_path, "r");
  bool loaded = false;

  if (fp == NULL && errno != ENOENT) {
    nbdkit_error ("dirty-file %s: %m", file_path);
    return -1;
  }
  if (fp) {
    if (fread (&h, sizeof h, 1, fp) != 1 ||
        memcmp (h.magic, FILE_MAGIC, 8) != 0 || h.version != FILE_VERSION) {
      nbdkit_error ("dirty-file %s is not a bitmap saved by the dirty "
                    "filter: remove it or name another file", file_path);
      fclose (fp);
      return -1;
    }
    if (h.granularity != granularity || h.size != export_size) {
      nbdkit_error ("dirty-file %s was saved for a %" PRIu64 " byte export "
                    "at granularity %" PRIu64 ", not %" PRIu64 " at %"
                    PRIu64 ": remove it to start a new bitmap", file_path,
                    h.size, h.granularity, export_size, granularity);
      fclose (fp);
      return -1;
    }
    if (h.state == FILE_CLEAN &&
        fread (bits, 1, (nblocks + 7) / 8, fp) == (nblocks + 7) / 8)
      loaded = true;
    fclose (fp);
    if (!loaded) {
      nbdkit_error ("dirty: %s was not saved at a clean shutdown (the "
                    "server crashed or was killed): changes since then "
                    "are unknown, so every block is marked dirty",
                    file_path);
      memset (bits, 0xff, (nblocks + 7) / 8);
    }
  }
  return file_write (file_path, FILE_IN_USE, false);
}

static void *
checkpoint_poll (void *arg)
{
  const struct timespec pause = { 0, CHECKPOINT_POLL_MS * 1000000L };

  while (!poller_stop) {
    if (access (checkpoint_path, F_OK) == 0) {
      clear_all ();
      unlink (checkpoint_path);
      nbdkit_debug ("dirty: checkpoint: a new bitmap starts");
    }
    nanosleep (&pause, NULL);
  }
  return NULL;
}

/* The export's size, from a context of our own, so the bitmap exists
 * before any client connects.
 */
static int
dirty_after_fork (nbdkit_backend *backend)
{
  nbdkit_next *next = nbdkit_next_context_open (backend, 1, "", 1);
  int64_t size;

  if (next == NULL)
    return -1;
  size = next->prepare (next) == -1 ? -1 : next->get_size (next);
  next->finalize (next);
  nbdkit_next_context_close (next);
  if (size == -1)
    return -1;
  export_size = size;
  nblocks = (export_size + granularity - 1) / granularity;
  bits = calloc ((nblocks + 7) / 8 + 1, 1);
  if (bits == NULL) {
    nbdkit_error ("dirty: cannot allocate the bitmap: %m");
    return -1;
  }
  if (file_path && file_load () == -1)
    return -1;
  if (checkpoint_path) {
    errno = pthread_create (&poller, NULL, checkpoint_poll, NULL);
    if (errno) {
      nbdkit_error ("dirty: cannot start the checkpoint thread: %m");
      return -1;
    }
    poller_running = true;
  }
  return 0;
}

static void
dirty_cleanup (nbdkit_backend *backend)
{
  if (poller_running) {
    poller_stop = true;
    pthread_join (poller, NULL);
    poller_running = false;
  }
  if (file_path && bits && file_write (file_path, FILE_CLEAN, true) == 0)
    nbdkit_debug ("dirty: bitmap saved in %s", file_path);
}

static void
dirty_unload (void)
{
  free (bits);
}

/* A client writes within the size the bitmap was made for: the export
 * cannot grow under a running server.
 */
static int
dirty_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  mark (offset, count);
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
dirty_trim (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  mark (offset, count);
  return next->trim (next, count, offset, flags, err);
}

static int
dirty_zero (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  mark (offset, count);
  return next->zero (next, count, offset, flags, err);
}

/* meta-ext.h */
NBDKIT_DLL_PUBLIC const char *
nbdsrv_dirty_bitmap_name (void)
{
  return bitmap_name;
}

NBDKIT_DLL_PUBLIC int
nbdsrv_dirty_extents (void *handle, uint32_t count, uint64_t offset,
                      struct nbdkit_extents *extents)
{
  uint64_t end = offset + count;
  uint64_t b = offset / granularity;

  while (b < nblocks && b * granularity < end) {
    bool d = is_dirty (b);
    uint64_t start = b * granularity;

    while (b < nblocks && b * granularity < end && is_dirty (b) == d)
      b++;
    if (nbdkit_add_extent (extents, start,
                           (b < nblocks ? b * granularity : export_size)
                           - start, d ? 1 : 0) == -1)
      return -1;
  }
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "dirty",
  .longname = "nbdsrv changed-block tracking filter",
  .config = dirty_config,
  .config_help = dirty_config_help,
  .after_fork = dirty_after_fork,
  .cleanup = dirty_cleanup,
  .unload = dirty_unload,
  .pwrite = dirty_pwrite,
  .trim = dirty_trim,
  .zero = dirty_zero,
};

NBDKIT_REGISTER_FILTER (filter)

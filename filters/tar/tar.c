/* nbdsrv tar filter: serves one file inside an uncompressed tar file,
 * for reading and writing, without unpacking it.
 *
 * The first connection finds the member: GNU tar lists the archive it
 * reads from a pipe (fed from the layer below) with the block number
 * of each header (-R), and stops at the first member of that name
 * (--occurrence=1), so only the archive up to it is read.  Extended
 * headers (pax, GNU long names) before the member's own header are
 * stepped over by reading them here.  Then every request is shifted
 * to the member's data, as the offset filter does.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "minmax.h"

/* Archive bytes fed to tar at a time. */
#define FEED_CHUNK (64 * 1024)

static const char *entry;       /* tar-entry, borrowed */
static const char *tar_program = "tar";  /* tar */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool found;              /* entry located: the two below are set */
static uint64_t tar_offset, tar_size;

static int
tar_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  if (strcmp (key, "tar-entry") == 0) {
    entry = value;
    return 0;
  }
  if (strcmp (key, "tar") == 0) {
    tar_program = value;
    return 0;
  }
  return next (nxdata, key, value);
}

static int
tar_config_complete (nbdkit_next_config_complete *next,
                     nbdkit_backend *nxdata)
{
  if (entry == NULL) {
    nbdkit_error ("you must supply the tar-entry=<FILENAME> parameter");
    return -1;
  }
  return next (nxdata);
}

#define tar_config_help \
  "tar-entry=<FILENAME> (required) The path inside the tar file to serve.\n" \
  "tar=<PATH>                      Path of the GNU tar binary."

/* Starts tar listing ENTRY from a pipe; its stdin in *TO, its stdout
 * goes to the memory file OUT.
 */
static pid_t
tar_start (int out, int *to)
{
  int fds[2];
  pid_t pid;

  if (pipe2 (fds, O_CLOEXEC) == -1) {
    nbdkit_error ("tar: pipe: %m");
    return -1;
  }
  pid = fork ();
  if (pid == -1) {
    nbdkit_error ("tar: fork: %m");
    close (fds[0]);
    close (fds[1]);
    return -1;
  }
  if (pid == 0) {
    signal (SIGPIPE, SIG_DFL);
    dup2 (fds[0], 0);
    dup2 (out, 1);
    execlp (tar_program, tar_program, "--no-auto-compress", "-t", "-R",
            "-v", "--occurrence=1", "-f", "-", entry, (char *) NULL);
    /* Only async-signal-safe calls between fork and exec. */
    static const char msg[] = "tar: cannot run the tar program: "
      "check the tar= parameter\n";
    (void) !write (2, msg, sizeof msg - 1);
    _exit (127);
  }
  close (fds[0]);
  *to = fds[1];
  return pid;
}

/* Feeds the archive to TO until tar stops reading or the end. */
static int
tar_feed (nbdkit_next *next, int to)
{
  int64_t size = next->get_size (next);
  char *buf = malloc (FEED_CHUNK);
  uint64_t pos;
  int err, r = 0;

  if (size == -1 || buf == NULL) {
    free (buf);
    return -1;
  }
  for (pos = 0; pos < (uint64_t) size && r == 0; ) {
    uint32_t n = MIN ((uint64_t) FEED_CHUNK, size - pos);
    char *p = buf;

    if (next->pread (next, buf, n, pos, 0, &err) == -1) {
      nbdkit_error ("tar: reading the tar file: %s", strerror (err));
      r = -1;
      break;
    }
    pos += n;
    while (n > 0) {
      ssize_t w = write (to, p, n);
      if (w == -1 && errno == EPIPE)
        goto out;               /* tar has what it needs */
      if (w == -1) {
        nbdkit_error ("tar: error writing to subprocess: %m");
        r = -1;
        break;
      }
      p += w;
      n -= w;
    }
  }
 out:
  free (buf);
  return r;
}

/* The block number and size tar listed for the member. */
static int
tar_parse_listing (int out, uint64_t *block, uint64_t *size)
{
  char text[4096];
  ssize_t n = pread (out, text, sizeof text - 1, 0);

  if (n <= 0)
    return -1;
  text[n] = '\0';
  /* "block N: MODE OWNER/GROUP SIZE DATE TIME NAME" */
  if (sscanf (text, "block %" SCNu64 ": %*s %*s %" SCNu64, block, size)
      != 2)
    return -1;
  return 0;
}

/* The octal number in a header field. */
static uint64_t
tar_octal (const char *field, size_t len)
{
  uint64_t v = 0;
  size_t i;

  for (i = 0; i < len && (field[i] == ' ' || field[i] == '\0'); ++i)
    ;
  for (; i < len && field[i] >= '0' && field[i] <= '7'; ++i)
    v = v * 8 + (field[i] - '0');
  return v;
}

/* Steps from the header block tar named over any extended headers to
 * the member's own header; its data follows.
 */
static int
tar_data_offset (nbdkit_next *next, uint64_t block, uint64_t *offset)
{
  char header[512];
  unsigned i;
  int err;

  for (i = 0; i < 16; ++i) {
    if (next->pread (next, header, 512, block * 512, 0, &err) == -1) {
      nbdkit_error ("tar: reading a header: %s", strerror (err));
      return -1;
    }
    /* x, g: pax headers; L, K: GNU long name and link name. */
    if (strchr ("xgLK", header[156]) == NULL || header[156] == '\0') {
      *offset = (block + 1) * 512;
      return 0;
    }
    block += 1 + (tar_octal (header + 124, 12) + 511) / 512;
  }
  nbdkit_error ("tar: too many extended headers before %s", entry);
  return -1;
}

static int
tar_locate (nbdkit_next *next)
{
  int out = memfd_create ("tar-listing", MFD_CLOEXEC), to, status;
  uint64_t block, size, offset;
  int r = -1;
  pid_t pid;

  if (out == -1) {
    nbdkit_error ("tar: memfd_create: %m");
    return -1;
  }
  pid = tar_start (out, &to);
  if (pid == -1)
    goto out_close;
  r = tar_feed (next, to);
  close (to);
  if (waitpid (pid, &status, 0) == -1 || !WIFEXITED (status) ||
      WEXITSTATUS (status) != 0 ||
      tar_parse_listing (out, &block, &size) == -1) {
    nbdkit_error ("tar subcommand failed, "
                  "check that the file really exists in the tarball");
    r = -1;
  }
  if (r == 0)
    r = tar_data_offset (next, block, &offset);
  if (r == 0) {
    nbdkit_debug ("tar: %s at offset %" PRIu64 ", size %" PRIu64,
                  entry, offset, size);
    tar_offset = offset;
    tar_size = size;
    found = true;
  }
 out_close:
  close (out);
  return r;
}

/* The first connection locates the member; every connection asks the
 * layer below its size (nbdkit checks requests below against it).
 */
static int
tar_prepare (nbdkit_next *next, void *handle, int readonly)
{
  int r = 0;

  if (next->get_size (next) == -1)
    return -1;
  pthread_mutex_lock (&lock);
  if (!found)
    r = tar_locate (next);
  pthread_mutex_unlock (&lock);
  return r;
}

static int64_t
tar_get_size (nbdkit_next *next, void *handle)
{
  return tar_size;
}

static int
tar_pread (nbdkit_next *next, void *handle, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  return next->pread (next, buf, count, offset + tar_offset, flags, err);
}

static int
tar_pwrite (nbdkit_next *next, void *handle, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  return next->pwrite (next, buf, count, offset + tar_offset, flags, err);
}

static int
tar_trim (nbdkit_next *next, void *handle, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  return next->trim (next, count, offset + tar_offset, flags, err);
}

static int
tar_zero (nbdkit_next *next, void *handle, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  return next->zero (next, count, offset + tar_offset, flags, err);
}

static int
tar_cache (nbdkit_next *next, void *handle, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  return next->cache (next, count, offset + tar_offset, flags, err);
}

/* The extents below, shifted back to the member's offsets. */
static int
tar_extents (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags,
             struct nbdkit_extents *extents, int *err)
{
  struct nbdkit_extents *below;
  size_t i;
  int r = 0;

  below = nbdkit_extents_new (offset + tar_offset,
                              tar_offset + tar_size);
  if (below == NULL) {
    *err = errno;
    return -1;
  }
  if (next->extents (next, count, offset + tar_offset, flags, below,
                     err) == -1) {
    nbdkit_extents_free (below);
    return -1;
  }
  for (i = 0; i < nbdkit_extents_count (below) && r == 0; ++i) {
    struct nbdkit_extent e = nbdkit_get_extent (below, i);

    r = nbdkit_add_extent (extents, e.offset - tar_offset, e.length,
                           e.type);
    if (r == -1)
      *err = errno;
  }
  nbdkit_extents_free (below);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "tar",
  .longname = "nbdsrv tar filter",
  .config = tar_config,
  .config_complete = tar_config_complete,
  .config_help = tar_config_help,
  .prepare = tar_prepare,
  .get_size = tar_get_size,
  .pread = tar_pread,
  .pwrite = tar_pwrite,
  .trim = tar_trim,
  .zero = tar_zero,
  .cache = tar_cache,
  .extents = tar_extents,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv checkwrite filter: every write checks that the layer below
 * already holds what is written, and fails with EIO if not.
 *
 * For testing copying tools: copy from and to the same server, and a
 * tool that writes the wrong bytes gets an error.  The layer below is
 * opened read-only and never written; trim and zero check that the
 * range reads as zeroes, so sparseness does not matter.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "iszero.h"
#include "minmax.h"

/* Ranges are read back in pieces of this size when checking zeroes. */
#define CHECK_PIECE (1024 * 1024)

static void *
checkwrite_open (nbdkit_next_open *next, nbdkit_context *nxdata,
                 int readonly, const char *exportname, int is_tls)
{
  if (next (nxdata, 1, exportname) == -1)
    return NULL;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

/* Whatever the layer below can do, every kind of write is offered:
 * none of them reaches it.
 */
static int
checkwrite_can_write (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
checkwrite_can_flush (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
checkwrite_can_fua (nbdkit_next *next, void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
checkwrite_can_trim (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
checkwrite_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_NATIVE;
}

static int
checkwrite_can_fast_zero (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
checkwrite_can_multi_conn (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
checkwrite_mismatch (const char *what, uint32_t count, uint64_t offset,
                     int *err)
{
  nbdkit_error ("checkwrite: %s of %" PRIu32 " bytes at %" PRIu64
                " does not match the data already there", what, count,
                offset);
  *err = EIO;
  return -1;
}

static int
checkwrite_pwrite (nbdkit_next *next, void *handle, const void *buf,
                   uint32_t count, uint64_t offset, uint32_t flags,
                   int *err)
{
  char *expected = malloc (count ? count : 1);
  int r = -1;

  if (expected == NULL) {
    *err = errno;
    nbdkit_error ("checkwrite: cannot allocate %" PRIu32 " bytes: %m",
                  count);
    return -1;
  }
  if (next->pread (next, expected, count, offset, 0, err) == -1)
    goto out_free;
  if (memcmp (buf, expected, count) != 0)
    checkwrite_mismatch ("write", count, offset, err);
  else
    r = 0;
 out_free:
  free (expected);
  return r;
}

/* Read [OFFSET, OFFSET+COUNT) in pieces and check it is all zero. */
static int
checkwrite_read_zeroes (nbdkit_next *next, const char *what,
                        uint32_t count, uint64_t offset, int *err)
{
  uint32_t piece = MIN (count, (uint32_t) CHECK_PIECE);
  char *buf = malloc (piece ? piece : 1);
  uint64_t pos = offset, end = offset + count;
  uint32_t n;
  int r = 0;

  if (buf == NULL) {
    *err = errno;
    nbdkit_error ("checkwrite: cannot allocate %" PRIu32 " bytes: %m",
                  piece);
    return -1;
  }
  for (; r == 0 && pos < end; pos += n) {
    n = MIN (end - pos, (uint64_t) piece);
    r = next->pread (next, buf, n, pos, 0, err);
    if (r == 0 && !is_zero (buf, n))
      r = checkwrite_mismatch (what, count, offset, err);
  }
  free (buf);
  return r;
}

/* Holes below are skipped without reading, where the layer below can
 * describe them; the rest is read.
 */
static int
checkwrite_zeroes (nbdkit_next *next, const char *what, uint32_t count,
                   uint64_t offset, int *err)
{
  struct nbdkit_extents *exts;
  struct nbdkit_extent e;
  uint64_t start, end;
  size_t i, n;
  int r;

  if (next->can_extents (next) != 1)
    return checkwrite_read_zeroes (next, what, count, offset, err);
  exts = nbdkit_extents_full (next, count, offset, 0, err);
  if (exts == NULL)
    return -1;
  n = nbdkit_extents_count (exts);
  for (i = 0, r = 0; r == 0 && i < n; i++) {
    e = nbdkit_get_extent (exts, i);
    if (e.type & NBDKIT_EXTENT_ZERO)
      continue;
    start = MAX (e.offset, offset);
    end = MIN (e.offset + e.length, offset + count);
    if (start < end)
      r = checkwrite_read_zeroes (next, what, end - start, start, err);
  }
  nbdkit_extents_free (exts);
  return r;
}

static int
checkwrite_trim (nbdkit_next *next, void *handle, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err)
{
  return checkwrite_zeroes (next, "trim", count, offset, err);
}

static int
checkwrite_zero (nbdkit_next *next, void *handle, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err)
{
  return checkwrite_zeroes (next, "zero", count, offset, err);
}

static int
checkwrite_flush (nbdkit_next *next, void *handle, uint32_t flags,
                  int *err)
{
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "checkwrite",
  .longname = "nbdsrv checkwrite filter",
  .open = checkwrite_open,
  .can_write = checkwrite_can_write,
  .can_flush = checkwrite_can_flush,
  .can_fua = checkwrite_can_fua,
  .can_trim = checkwrite_can_trim,
  .can_zero = checkwrite_can_zero,
  .can_fast_zero = checkwrite_can_fast_zero,
  .can_multi_conn = checkwrite_can_multi_conn,
  .pwrite = checkwrite_pwrite,
  .trim = checkwrite_trim,
  .zero = checkwrite_zero,
  .flush = checkwrite_flush,
};

NBDKIT_REGISTER_FILTER (filter)

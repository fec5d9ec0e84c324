/* nbdsrv rbd plugin: the data path.
 *
 * Every request goes through librbd's asynchronous calls (rbd_aio_*)
 * and waits for its completion, so the plugin can be PARALLEL: the
 * server's worker threads each have one request in flight, and
 * librbd's own threads carry all of them to the OSDs together (-t sets
 * how many; bench/ uses 32 for a QD32 client).
 */

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "rbd.h"

/* The errno the client gets for librbd's result R (< 0).  The server
 * maps any errno NBD has no code for to EINVAL, "your request was
 * wrong"; but a timed-out OSD, a lost connection or a blocklisted
 * client are the storage failing, which is EIO.
 */
static int
rbdsrv_io_errno (ssize_t r)
{
  switch (-r) {
  case EPERM:
  case EROFS:
  case ENOMEM:
  case ENOSPC:
  case EDQUOT:
  case EFBIG:
    return -r;
  case EACCES:
    return EPERM;
  default:
    return EIO;
  }
}

/* Finish request WHAT that was submitted with result SUBMITTED on C:
 * wait for it, release C and return its result (>= 0), or -1 with
 * errno set and the error logged.  An OSD that does not answer ends
 * here as ETIMEDOUT after timeout= seconds (rbd.c), never as a hang,
 * and goes to the client as EIO.
 */
static ssize_t
rbdsrv_io_wait (rbd_completion_t c, int submitted, const char *what,
             uint32_t count, uint64_t offset)
{
  ssize_t r = submitted;

  if (r == 0) {
    rbd_aio_wait_for_complete (c);
    r = rbd_aio_get_return_value (c);
  }
  rbd_aio_release (c);
  if (r >= 0)
    return r;
  if (r == -ETIMEDOUT)
    nbdkit_error ("rbd: %s of %" PRIu32 " bytes at %" PRIu64 " timed out: "
                  "is the cluster up? (raise timeout= to wait longer)",
                  what, count, offset);
  else
    nbdkit_error ("rbd: %s of %" PRIu32 " bytes at %" PRIu64 ": %s",
                  what, count, offset, strerror (-r));
  errno = rbdsrv_io_errno (r);
  return -1;
}

/* librbd only fails to make a completion when out of memory. */
static int
rbdsrv_io_completion (rbd_completion_t *c)
{
  int r = rbd_aio_create_completion (NULL, NULL, c);

  if (r < 0) {
    errno = -r;
    nbdkit_error ("rbd: cannot create a completion: %m");
    return -1;
  }
  return 0;
}

int
rbdsrv_io_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  struct rbdsrv_export *exp = handle;
  rbd_completion_t c;
  ssize_t r;

  if (rbdsrv_io_completion (&c) == -1)
    return -1;
  r = rbdsrv_io_wait (c, rbd_aio_read (exp->image, offset, count, buf, c),
                   "read", count, offset);
  if (r == -1)
    return -1;
  /* Short only if the image shrank under us: past its end is zero. */
  if ((uint64_t) r < count)
    memset ((char *) buf + r, 0, count - r);
  return 0;
}

int
rbdsrv_io_pwrite (void *handle, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags)
{
  struct rbdsrv_export *exp = handle;
  rbd_completion_t c;

  /* FUA is emulated by the server (rbdsrv_can_fua): librbd has no per
   * write durability flag, only rbd_aio_flush.
   */
  if (rbdsrv_io_completion (&c) == -1)
    return -1;
  if (rbdsrv_io_wait (c, rbd_aio_write (exp->image, offset, count, buf, c),
                   "write", count, offset) == -1)
    return -1;
  return 0;
}

int
rbdsrv_io_flush (void *handle, uint32_t flags)
{
  struct rbdsrv_export *exp = handle;
  rbd_completion_t c;

  if (rbdsrv_io_completion (&c) == -1)
    return -1;
  if (rbdsrv_io_wait (c, rbd_aio_flush (exp->image, c), "flush", 0, 0) == -1)
    return -1;
  return 0;
}

/* librbd removes whole objects and, with rbd_skip_partial_discard on
 * (its default), leaves partial ones alone: trim is advisory.
 */
int
rbdsrv_io_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct rbdsrv_export *exp = handle;
  rbd_completion_t c;

  if (rbdsrv_io_completion (&c) == -1)
    return -1;
  if (rbdsrv_io_wait (c, rbd_aio_discard (exp->image, offset, count, c),
                   "trim", count, offset) == -1)
    return -1;
  return 0;
}

/* Write-zeroes never sends zeroes over the network: whole objects are
 * removed or truncated and partial ones get an OSD-side zero op.  So
 * it is always fast, and fast-zero requests (NBDKIT_FLAG_FAST_ZERO)
 * are served rather than refused.
 */
int
rbdsrv_io_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct rbdsrv_export *exp = handle;
  rbd_completion_t c;

  if (rbdsrv_io_completion (&c) == -1)
    return -1;
  if (rbdsrv_io_wait (c, rbd_aio_write_zeroes (exp->image, offset, count, c,
                                            0, 0),
                   "zero", count, offset) == -1)
    return -1;
  return 0;
}

/* Walk state for rbd_diff_iterate2: extents are reported in order,
 * and what lies between them is unallocated.
 */
struct rbdsrv_walk {
  struct nbdkit_extents *extents;
  uint64_t pos;                 /* everything before is reported */
  uint64_t end;                 /* end of the request */
};

static int
rbdsrv_walk_add (struct rbdsrv_walk *w, uint64_t start, uint64_t end,
              uint32_t type)
{
  if (start < w->pos)
    start = w->pos;
  if (end > w->end)
    end = w->end;
  if (start >= end)
    return 0;
  if (nbdkit_add_extent (w->extents, start, end - start, type) == -1)
    return -1;
  w->pos = end;
  return 0;
}

static int
rbdsrv_walk_cb (uint64_t offset, size_t len, int exists, void *arg)
{
  struct rbdsrv_walk *w = arg;
  uint32_t hole = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;

  if (rbdsrv_walk_add (w, w->pos, offset, hole) == -1 ||
      rbdsrv_walk_add (w, offset, offset + len, exists ? 0 : hole) == -1)
    return -ENOMEM;
  return 0;
}

/* Allocation from rbd_diff_iterate2 against the image's creation.
 * With fast-diff the answer comes from the object map, one object
 * (4 MiB by default) at a time; without it librbd asks the OSDs and
 * the extents are exact.  Parent images (clones) count as allocated.
 */
int
rbdsrv_io_extents (void *handle, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents)
{
  struct rbdsrv_export *exp = handle;
  struct rbdsrv_walk w = { extents, offset, offset + count };
  int r;

  r = rbd_diff_iterate2 (exp->image, NULL, offset, count, 1,
                         exp->fast_diff, rbdsrv_walk_cb, &w);
  if (r < 0) {
    nbdkit_error ("rbd: allocation map of %" PRIu32 " bytes at %" PRIu64
                  ": %s", count, offset, strerror (-r));
    errno = rbdsrv_io_errno (r);
    return -1;
  }
  return rbdsrv_walk_add (&w, w.pos, w.end,
                       NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
}

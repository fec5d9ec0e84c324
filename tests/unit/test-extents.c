/* Unit test: the filter helpers nbdkit_extents_full and
 * nbdkit_extents_aligned (nbdkit-filter(3)), driven by a fake layer
 * below that answers block status from a fixed map of the disk; and
 * extents_copy (extents-copy.h), which filters use to answer with
 * what the layer below said.
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>

#include "internal.h"
#include "extents-copy.h"
#include "stubs.h"

#define H NBDKIT_EXTENT_HOLE
#define Z NBDKIT_EXTENT_ZERO
#define HZ (H | Z)

/* The layer below: nbdkit-filter.h's call table first, as a filter
 * sees it, then the fake layer's own state.  Only .extents is called
 * by the functions under test.
 */
struct fake_next {
  struct nbdkit_next_ops ops;
  const struct extent *map;     /* the disk, in order, no gaps */
  size_t map_len;
  size_t per_call;              /* most extents one answer adds */
  int fail_errno;               /* non-zero: every call fails so */
  bool no_progress;             /* succeed without adding anything */
  unsigned calls;
  uint32_t flags_seen;          /* OR of the flags of every call */
};

static int
fake_extents (nbdkit_next *ops, uint32_t count, uint64_t offset,
              uint32_t flags, struct nbdkit_extents *e, int *err)
{
  struct fake_next *next = (struct fake_next *) ops;
  size_t added = 0;

  next->calls++;
  next->flags_seen |= flags;
  if (next->fail_errno) {
    *err = next->fail_errno;
    return -1;
  }
  if (next->no_progress)
    return 0;
  for (size_t i = 0; i < next->map_len && added < next->per_call; i++) {
    const struct extent *m = &next->map[i];

    if (m->offset + m->length <= offset)
      continue;
    if (m->offset >= offset + count)
      break;
    if (nbdkit_add_extent (e, m->offset, m->length, m->type) == -1) {
      *err = errno;
      return -1;
    }
    added++;
  }
  return 0;
}

static struct fake_next
fake (const struct extent *map, size_t len, size_t per_call)
{
  return (struct fake_next) {
    .ops.extents = fake_extents, .map = map, .map_len = len,
    .per_call = per_call,
  };
}

#define FAKE(map, per_call) fake (map, sizeof map / sizeof map[0], per_call)

static bool
ext_is (const struct nbdkit_extents *e, size_t i,
        uint64_t offset, uint64_t length, uint32_t type)
{
  return i < e->len && e->ptr[i].offset == offset &&
    e->ptr[i].length == length && e->ptr[i].type == type;
}

static const struct extent three[] = {
  { 0, 4096, 0 }, { 4096, 4096, HZ }, { 8192, 57344, 0 },
};

static void
test_full (void)
{
  struct fake_next n = FAKE (three, 1);
  struct nbdkit_extents *e;
  int err = 0;

  e = nbdkit_extents_full (&n.ops, 65536, 0, NBDKIT_FLAG_REQ_ONE, &err);
  check (e != NULL && e->len == 3 && ext_is (e, 0, 0, 4096, 0) &&
         ext_is (e, 1, 4096, 4096, HZ) && ext_is (e, 2, 8192, 57344, 0),
         "full: one extent per answer still covers the whole range");
  check (n.calls == 3, "full: asks once per missing extent (%u)", n.calls);
  check (!(n.flags_seen & NBDKIT_FLAG_REQ_ONE), "full: REQ_ONE is dropped");
  nbdkit_extents_free (e);

  n = FAKE (three, 8);
  e = nbdkit_extents_full (&n.ops, 10000, 5000, NBDKIT_FLAG_FUA, &err);
  check (e != NULL && e->len == 2 && ext_is (e, 0, 5000, 3192, HZ) &&
         ext_is (e, 1, 8192, 6808, 0),
         "full: a middle range is clipped at both ends");
  check (n.calls == 1 && n.flags_seen == NBDKIT_FLAG_FUA,
         "full: one call when the layer answers everything, other flags "
         "passed on");
  nbdkit_extents_free (e);

  n = FAKE (three, 8);
  e = nbdkit_extents_full (&n.ops, 0, 4096, 0, &err);
  check (e != NULL && e->len == 0 && n.calls == 0,
         "full: an empty range needs no call");
  nbdkit_extents_free (e);

  n = FAKE (three, 1);
  n.fail_errno = ENOSPC;
  err = 0;
  e = nbdkit_extents_full (&n.ops, 65536, 0, 0, &err);
  check (e == NULL && err == ENOSPC, "full: the layer's error is passed on");

  n = FAKE (three, 1);
  n.no_progress = true;
  err = 0;
  stub_reset ();
  e = nbdkit_extents_full (&n.ops, 65536, 0, 0, &err);
  check (e == NULL && err == EIO && n.calls == 1 &&
         error_contains ("no extent"),
         "full: a layer that describes nothing is an error, not a loop");

  err = 0;
  e = nbdkit_extents_full (&n.ops, 4096, (uint64_t) INT64_MAX + 1, 0, &err);
  check (e == NULL && err == ERANGE, "full: offsets past INT64_MAX fail");
}

static void
aligned (struct fake_next *n, struct nbdkit_extents *e, uint32_t count,
         uint64_t offset, uint32_t flags, int *r, int *err)
{
  extents_reset (e, offset, 1 << 20);
  *err = 0;
  *r = nbdkit_extents_aligned (&n->ops, count, offset, flags, 4096, e, err);
}

static void
test_aligned (void)
{
  static const struct extent split_first[] = {
    { 0, 512, 0 }, { 512, 3584, HZ }, { 4096, 4096, HZ },
  };
  static const struct extent zero_bits[] = {
    { 0, 512, HZ }, { 512, 512, Z }, { 1024, 3072, HZ }, { 4096, 4096, 0 },
  };
  static const struct extent long_unaligned[] = {
    { 0, 6000, 0 }, { 6000, 10384, HZ },
  };
  static const struct extent later_unaligned[] = {
    { 0, 4096, H }, { 4096, 512, HZ }, { 4608, 11776, 0 },
  };
  struct nbdkit_extents e = { 0 };
  struct fake_next n;
  int r, err;

  n = FAKE (three, 8);
  aligned (&n, &e, 65536, 0, 0, &r, &err);
  check (r == 0 && e.len == 3 && ext_is (&e, 2, 8192, 57344, 0),
         "aligned: an aligned answer is kept as it is");

  n = FAKE (split_first, 8);
  aligned (&n, &e, 8192, 0, 0, &r, &err);
  check (r == 0 && e.len == 1 && ext_is (&e, 0, 0, 4096, 0),
         "aligned: a split first block becomes one data extent");
  check (e.next == 4096, "aligned: the list ends where the block ends");

  n = FAKE (zero_bits, 8);
  aligned (&n, &e, 8192, 0, 0, &r, &err);
  check (r == 0 && e.len == 1 && ext_is (&e, 0, 0, 4096, Z),
         "aligned: the merged type has only the bits every piece has");

  n = FAKE (zero_bits, 1);
  aligned (&n, &e, 8192, 0, NBDKIT_FLAG_REQ_ONE, &r, &err);
  check (r == 0 && e.len == 1 && ext_is (&e, 0, 0, 4096, Z),
         "aligned: asks again when the first answer stops short");
  check (n.calls == 3, "aligned: one call per missing piece (%u)", n.calls);

  n = FAKE (long_unaligned, 8);
  aligned (&n, &e, 16384, 0, 0, &r, &err);
  check (r == 0 && e.len == 1 && ext_is (&e, 0, 0, 4096, 0),
         "aligned: a long extent ending off alignment is cut back");

  n = FAKE (later_unaligned, 8);
  aligned (&n, &e, 16384, 0, 0, &r, &err);
  check (r == 0 && e.len == 1 && ext_is (&e, 0, 0, 4096, H),
         "aligned: the answer stops before a later short extent");

  n = FAKE (split_first, 8);
  aligned (&n, &e, 8192, 4096, 0, &r, &err);
  check (r == 0 && e.len == 1 && ext_is (&e, 0, 4096, 4096, HZ),
         "aligned: a query starting at a later block");

  n = FAKE (three, 8);
  stub_reset ();
  aligned (&n, &e, 8192, 512, 0, &r, &err);
  check (r == -1 && err == EINVAL && n.calls == 0 &&
         error_contains ("multiples"), "aligned: unaligned offset fails");
  extents_reset (&e, 0, 1 << 20);
  check (nbdkit_extents_aligned (&n.ops, 6000, 0, 0, 3000, &e, &err) == -1 &&
         err == EINVAL, "aligned: an alignment not a power of 2 fails");
  check (nbdkit_extents_aligned (&n.ops, 4096, 0, 0, 0, &e, &err) == -1 &&
         err == EINVAL, "aligned: alignment 0 fails");

  n = FAKE (split_first, 1);
  n.fail_errno = EROFS;
  aligned (&n, &e, 8192, 0, 0, &r, &err);
  check (r == -1 && err == EROFS, "aligned: the layer's error is passed on");

  /* The list holds [0, 512) already and the layer adds nothing more:
   * the merge must give up rather than ask for ever.
   */
  n = FAKE (split_first, 1);
  n.no_progress = true;
  extents_reset (&e, 0, 1 << 20);
  nbdkit_add_extent (&e, 0, 512, 0);
  err = 0;
  r = nbdkit_extents_aligned (&n.ops, 8192, 0, 0, 4096, &e, &err);
  check (r == -1 && err == EIO && n.calls == 2,
         "aligned: a layer that stops describing is an error, not a loop");
  extents_release (&e);
}

/* What the layer below said of [1 MiB, 1 MiB + 12 KiB), copied into
 * a filter's list that starts at 0 with the disk 1 MiB further up.
 */
static void
test_copy (void)
{
  struct nbdkit_extents below = { 0 }, out = { 0 };
  struct nbdkit_extent x;
  int64_t end;
  int err = 0;

  extents_reset (&below, 1 << 20, 2 << 20);
  nbdkit_add_extent (&below, 1 << 20, 4096, 0);
  nbdkit_add_extent (&below, (1 << 20) + 4096, 8192, HZ);
  extents_reset (&out, 0, 1 << 20);
  end = extents_copy (&out, &below, 1 << 20, 0, &err);
  check (end == 12288, "copy: ends where the last extent ends, shifted");
  check (nbdkit_extents_count (&out) == 2, "copy: both extents are there");
  x = nbdkit_get_extent (&out, 1);
  check (x.offset == 4096 && x.length == 8192 && x.type == HZ,
         "copy: offsets shifted, lengths and types kept");
  extents_release (&out);

  extents_reset (&out, 0, 1 << 20);
  extents_reset (&below, 1 << 20, 2 << 20);
  check (extents_copy (&out, &below, 1 << 20, 512, &err) == 512,
         "copy: an empty list ends where it was asked from");
  extents_release (&out);

  /* Unshifted, the first extent starts past the list's start. */
  extents_reset (&out, 0, 1 << 20);
  nbdkit_add_extent (&below, 1 << 20, 4096, 0);
  err = 0;
  check (extents_copy (&out, &below, 0, 0, &err) == -1 &&
         err == ERANGE, "copy: an extent the list refuses fails with "
         "its errno");
  extents_release (&out);
  extents_release (&below);
}

int
main (void)
{
  test_full ();
  test_aligned ();
  test_copy ();
  return test_summary ();
}

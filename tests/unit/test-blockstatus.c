/* Unit test: extent lists (nbdkit_add_extent) and their encoding into
 * base:allocation descriptors (R-20..R-23, §5.4 pins).
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>

#include "internal.h"
#include "protocol.h"
#include "stubs.h"

#define HZ (NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO)
#define MiB (1024 * 1024)

static struct nbdkit_extents e;
static struct nbd_block_descriptor d[64];

static bool
desc_is (size_t i, uint32_t len, uint32_t status)
{
  return be32toh (d[i].length) == len && be32toh (d[i].status_flags) == status;
}

/* The memory plugin after 4096 bytes written at 65536, as a plugin
 * would report it page by page (32 KiB pages).
 */
static void
fill_pinned (uint64_t start)
{
  extents_reset (&e, start, MiB);
  for (uint64_t off = 0; off < MiB; off += 32768)
    nbdkit_add_extent (&e, off, 32768, off == 65536 ? 0 : HZ);
}

static void
test_pins (void)
{
  size_t n;

  fill_pinned (0);
  check (e.len == 3, "neighbours of one type merge: %zu extents", e.len);
  n = blockstatus_encode (&e, 0, 4096, false, false, META_BASE_ALLOCATION, d, 64);
  check (n == 1 && desc_is (0, 65536, 3),
         "4 KiB query at 0 answers one descriptor past the request");
  n = blockstatus_encode (&e, 0, 4096, true, false, META_BASE_ALLOCATION, d, 64);
  check (n == 1 && desc_is (0, 4096, 3), "REQ_ONE clips to the request");
  n = blockstatus_encode (&e, 0, MiB, false, false, META_BASE_ALLOCATION, d, 64);
  check (n == 3 && desc_is (0, 65536, 3) && desc_is (1, 32768, 0) &&
         desc_is (2, 950272, 3), "1 MiB query answers the pinned list");
  n = blockstatus_encode (&e, 0, 65537, false, false, META_BASE_ALLOCATION, d, 64);
  check (n == 2 && desc_is (1, 32768, 0),
         "stop after the descriptor that passes the end");
  fill_pinned (70000);
  check (e.len == 2 && e.ptr[0].offset == 70000 &&
         e.ptr[0].length == 98304 - 70000,
         "extents before the start are clipped");
}

static void
test_add_rules (void)
{
  extents_reset (&e, 100, 1000);
  stub_reset ();
  check (nbdkit_add_extent (&e, 200, 10, 0) == -1 && errno == ERANGE,
         "first extent after start is an error");
  check (stub_error_count == 1, "... and says so");
  check (nbdkit_add_extent (&e, 0, 50, 0) == 0 && e.len == 0,
         "extent before start is ignored");
  check (nbdkit_add_extent (&e, 50, 100, 0) == 0 && e.len == 1 &&
         e.ptr[0].offset == 100 && e.ptr[0].length == 50,
         "overlapping extent is clipped to start");
  check (nbdkit_add_extent (&e, 160, 10, 0) == -1,
         "a gap is an error");
  check (nbdkit_add_extent (&e, 150, 0, 1) == 0 && e.len == 1,
         "zero-length extents are ignored");
  check (nbdkit_add_extent (&e, 150, 2000, 1) == 0 && e.len == 2 &&
         e.ptr[1].length == 850, "an extent past the end is clipped");
  check (nbdkit_add_extent (&e, 2150, 10, 1) == 0 && e.len == 2,
         "extents beyond the end are ignored");
}

static void
test_split_long (void)
{
  size_t n;

  extents_reset (&e, 0, UINT64_C (16) << 30);
  nbdkit_add_extent (&e, 0, UINT64_C (16) << 30, HZ);
  n = blockstatus_encode (&e, 0, 0xffffffff, false, false, META_BASE_ALLOCATION, d, 64);
  check (n == 1 && desc_is (0, 0xffffffff, 3),
         "an extent longer than 4 GiB - 1 is cut to a u32");
  n = blockstatus_encode (&e, 0, 0xffffffff, false, false, META_BASE_ALLOCATION, d, 1);
  check (n == 1, "the descriptor cap is honoured");
  extents_reset (&e, 0, UINT64_C (16) << 30);
  nbdkit_add_extent (&e, 0, 1, 0);
  nbdkit_add_extent (&e, 1, UINT64_C (16) << 30, 4 | HZ);
  n = blockstatus_encode (&e, 0, 0xffffffff, false, false, META_BASE_ALLOCATION, d, 64);
  check (n == 2 && desc_is (0, 1, 0) && desc_is (1, 0xffffffff, 3),
         "status bits other than hole/zero are masked off");
}

/* with extended headers, 64-bit descriptors are never split. */
static void
test_ext (void)
{
  struct nbd_block_descriptor_ext x[8];
  size_t n;

  check (sizeof x[0] == 16, "a 64-bit descriptor is 16 bytes");
  extents_reset (&e, 0, UINT64_C (16) << 30);
  nbdkit_add_extent (&e, 0, UINT64_C (5) << 30, HZ);
  nbdkit_add_extent (&e, UINT64_C (5) << 30, UINT64_C (11) << 30, 0);
  n = blockstatus_encode (&e, 0, UINT64_C (6) << 30, false, true, META_BASE_ALLOCATION, x, 8);
  check (n == 2 && be64toh (x[0].length) == UINT64_C (5) << 30 &&
         be64toh (x[0].status_flags) == 3 &&
         be64toh (x[1].length) == UINT64_C (11) << 30 &&
         be64toh (x[1].status_flags) == 0,
         "5 GiB and 11 GiB extents are one descriptor each");
  n = blockstatus_encode (&e, 0, UINT64_C (4) << 30, true, true, META_BASE_ALLOCATION, x, 8);
  check (n == 1 && be64toh (x[0].length) == UINT64_C (4) << 30,
         "REQ_ONE clips a 64-bit descriptor to the request");
}

int
main (void)
{
  test_pins ();
  test_add_rules ();
  test_split_long ();
  test_ext ();
  extents_release (&e);
  return test_summary ();
}

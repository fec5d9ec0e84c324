/* Unit test: common/include/page-extents.h, driven by a fake store of
 * eight 4 KiB pages and a recording nbdkit_add_extent.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include "nbdkit-plugin.h"

#include "page-extents.h"
#include "stubs.h"

#define P 4096
#define H NBDKIT_EXTENT_HOLE
#define Z NBDKIT_EXTENT_ZERO
#define HOLE (-1)

/* Per page: HOLE if unallocated, else the offset in the page from
 * which it is all zero (P: not even its last byte is zero).
 */
static int zero_from[8] = { HOLE, HOLE, P, P, 0, HOLE, 100, 0 };

/* The fake store reports a run of unallocated pages in one step, as
 * the plugins do, or (if holes_at_once is false) page by page.
 */
static bool holes_at_once = true;

static uint32_t
fake_area_type (uint64_t offset, uint64_t *next)
{
  uint64_t page = offset / P;

  if (page < 8 && zero_from[page] != HOLE) {
    *next = (page + 1) * P;
    return offset % P >= (uint64_t) zero_from[page] ? Z : 0;
  }
  if (!holes_at_once) {
    *next = (page + 1) * P;
    return H | Z;
  }
  while (page < 8 && zero_from[page] == HOLE)
    page++;
  *next = page < 8 ? page * P : UINT64_MAX;
  return H | Z;
}

/* What nbdkit_add_extent was given. */
static struct { uint64_t offset, length; uint32_t type; } got[16];
static size_t nr_got;
static int fail_at = -1;        /* index of the call that fails */

int
nbdkit_add_extent (struct nbdkit_extents *extents,
                   uint64_t offset, uint64_t length, uint32_t type)
{
  if ((int) nr_got == fail_at) {
    errno = ENOMEM;
    return -1;
  }
  if (nr_got < 16)
    got[nr_got] = (typeof (got[0])) { offset, length, type };
  nr_got++;
  return 0;
}

static int
run (uint32_t count, uint64_t offset, uint32_t flags, uint64_t size)
{
  nr_got = 0;
  memset (got, 0, sizeof got);
  return page_extents_add (NULL, count, offset, flags, size, P,
                           fake_area_type);
}

static bool
got_is (size_t i, uint64_t offset, uint64_t length, uint32_t type)
{
  return i < nr_got && got[i].offset == offset && got[i].length == length &&
    got[i].type == type;
}

static void
test_whole_disk (void)
{
  check (run (8 * P, 0, 0, 8 * P) == 0, "whole disk succeeds");
  check (nr_got == 6, "whole disk: 6 extents, got %zu", nr_got);
  check (got_is (0, 0, 2 * P, H | Z), "pages 0-1 merge into one hole");
  check (got_is (1, 2 * P, 2 * P, 0), "pages 2-3 merge into data");
  check (got_is (2, 4 * P, P, Z), "an all-zero page is zero, not a hole");
  check (got_is (3, 5 * P, P, H | Z), "page 5 is a hole");
  check (got_is (4, 6 * P, P, 0), "page 6 is data (zero from byte 100)");
  check (got_is (5, 7 * P, P, Z), "page 7 is zero");
}

static void
test_rounding (void)
{
  /* The last extent runs to the end of the page of the last byte. */
  check (run (P + 1, 2 * P, 0, 8 * P) == 0 && nr_got == 1 &&
         got_is (0, 2 * P, 2 * P, 0), "request end rounds up to the page");
  /* From the middle of a page, only the rest of it counts. */
  check (run (10, 6 * P + 100, 0, 8 * P) == 0 && nr_got == 1 &&
         got_is (0, 6 * P + 100, P - 100, Z),
         "page 6 reads as zero from byte 100 on");
  check (run (10, 6 * P + 99, 0, 8 * P) == 0 && nr_got == 1 &&
         got_is (0, 6 * P + 99, P - 99, 0),
         "page 6 is data at byte 99");
  /* ...but never past the end of the disk. */
  check (run (10, 2 * P, 0, 2 * P + 50) == 0 && nr_got == 1 &&
         got_is (0, 2 * P, 50, 0), "the disk end cuts the last extent");
  check (run (0, 3 * P, 0, 8 * P) == 0 && nr_got == 0,
         "an empty request adds nothing");
}

static void
test_req_one (void)
{
  check (run (8 * P, 0, NBDKIT_FLAG_REQ_ONE, 8 * P) == 0 && nr_got == 1 &&
         got_is (0, 0, 2 * P, H | Z), "REQ_ONE stops after one extent");
}

static void
test_holes_page_by_page (void)
{
  /* Reporting holes one page at a time merges to the same answer. */
  holes_at_once = false;
  test_whole_disk ();
  holes_at_once = true;
}

static void
test_long_hole (void)
{
  /* Past page 7 everything is a hole: a 4 GiB request ending short of
   * a page boundary is cut at its end, not rounded past 32 bits.
   */
  uint64_t size = UINT64_C (1) << 40;

  check (run (UINT32_MAX, 8 * P, 0, size) == 0 && nr_got == 1 &&
         got_is (0, 8 * P, UINT32_MAX, H | Z),
         "a hole longer than 32 bits is cut at the request end");
  check (run (UINT32_MAX - P + 1, 8 * P, 0, size) == 0 && nr_got == 1 &&
         got_is (0, 8 * P, UINT32_MAX - P + 1, H | Z),
         "a page-aligned request needs no cut");
}

static void
test_failure (void)
{
  fail_at = 0;
  check (run (8 * P, 0, 0, 8 * P) == -1 && errno == ENOMEM,
         "a failing first add is returned");
  fail_at = 5;
  check (run (8 * P, 0, 0, 8 * P) == -1 && nr_got == 5,
         "a failing last add is returned");
  fail_at = -1;
}

int
main (void)
{
  test_whole_disk ();
  test_rounding ();
  test_req_one ();
  test_holes_page_by_page ();
  test_long_hole ();
  test_failure ();
  return test_summary ();
}

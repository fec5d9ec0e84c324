/* Unit test: common/blockstore, the overlay the cow and cache filters
 * share: sizes, states, the stored count, data round trips, dropping,
 * and the order in which the reclaim clock picks victims.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blockstore.h"
#include "stubs.h"

#define BS 4096

static void
test_sizes (struct blockstore *bs)
{
  check (blockstore_set_size (bs, 10 * BS + 100) == 0, "set_size");
  check (blockstore_nr_blocks (bs) == 11, "a short last block counts");
  check (blockstore_block_len (bs, 0) == BS, "full block length");
  check (blockstore_block_len (bs, 10) == 100, "short last block length");
  check (blockstore_set_size (bs, 10 * BS + 100) == 0,
         "the same size again is accepted");
  stub_reset ();
  check (blockstore_set_size (bs, 20 * BS) == -1 &&
         error_contains ("changed size"), "a new size is refused");
}

static void
test_states (struct blockstore *bs)
{
  char buf[BS], out[BS];

  check (blockstore_get (bs, 3) == BLOCKSTORE_ABSENT, "starts absent");
  memset (buf, 'x', sizeof buf);
  check (blockstore_write (bs, 3, 0, BS, buf) == 0, "write block");
  blockstore_set (bs, 3, BLOCKSTORE_DIRTY);
  blockstore_set (bs, 4, BLOCKSTORE_CLEAN);
  blockstore_set (bs, 5, BLOCKSTORE_ZERO);
  check (blockstore_stored (bs) == 2, "CLEAN and DIRTY count as stored");
  blockstore_set (bs, 4, BLOCKSTORE_DIRTY);
  check (blockstore_stored (bs) == 2, "CLEAN to DIRTY stays stored");
  check (blockstore_read (bs, 3, 10, 20, out) == 0 &&
         memcmp (out, buf, 20) == 0, "read part of a block back");
  check (blockstore_write (bs, 3, 100, 4, "abcd") == 0 &&
         blockstore_read (bs, 3, 98, 8, out) == 0 &&
         memcmp (out, "xxabcdxx", 8) == 0, "write part of a block");
  check (blockstore_find (bs, 0, BLOCKSTORE_DIRTY) == 3 &&
         blockstore_find (bs, 4, BLOCKSTORE_DIRTY) == 4 &&
         blockstore_find (bs, 5, BLOCKSTORE_DIRTY) == -1, "find");
  blockstore_drop (bs, 3, BLOCKSTORE_ABSENT);
  check (blockstore_get (bs, 3) == BLOCKSTORE_ABSENT &&
         blockstore_stored (bs) == 1, "drop forgets the block");
  if (blockstore_can_punch (bs)) {
    check (blockstore_read (bs, 3, 0, BS, out) == 0 && out[0] == 0 &&
           out[BS - 1] == 0, "a dropped block's space reads as zeroes");
  }
  blockstore_drop (bs, 4, BLOCKSTORE_ZERO);
  blockstore_drop (bs, 5, BLOCKSTORE_ABSENT);
  check (blockstore_stored (bs) == 0, "nothing stored after drops");
}

/* Blocks 0..3 stored, 0 reclaimed, then 1 and 3 used again: the
 * clock picks 2, then (their marks now clear) 1 and 3.
 */
static void
test_clock (struct blockstore *bs)
{
  uint64_t b;
  int64_t v[4];
  int i;

  check (blockstore_clock_next (bs) == -1, "nothing to reclaim");
  for (b = 0; b < 4; ++b)
    blockstore_set (bs, b, BLOCKSTORE_CLEAN);
  /* A first pass clears every used mark set by blockstore_set. */
  check (blockstore_clock_next (bs) == 0, "first victim after one turn");
  blockstore_drop (bs, 0, BLOCKSTORE_ABSENT);
  blockstore_touch (bs, 1);
  blockstore_touch (bs, 3);
  for (i = 0; i < 4; ++i) {
    v[i] = blockstore_clock_next (bs);
    if (v[i] >= 0)
      blockstore_drop (bs, v[i], BLOCKSTORE_ABSENT);
  }
  check (v[0] == 2, "an unused block goes before used ones (got %ld)",
         (long) v[0]);
  check ((v[1] == 1 && v[2] == 3) || (v[1] == 3 && v[2] == 1),
         "used blocks go on the next turn (got %ld %ld)",
         (long) v[1], (long) v[2]);
  check (v[3] == -1 && blockstore_stored (bs) == 0, "all reclaimed");
}

static void
test_bad_tmpdir (void)
{
  struct blockstore *bs;

  setenv ("TMPDIR", "/nonexistent/dir", 1);
  stub_reset ();
  bs = blockstore_new ("test", BS);
  check (bs == NULL && error_contains ("set TMPDIR"),
         "a bad TMPDIR says what to do (%s)", stub_last_error);
  blockstore_free (bs);
}

int
main (void)
{
  char dir[] = "/tmp/test-blockstore.XXXXXX";
  struct blockstore *bs;

  if (mkdtemp (dir) == NULL) {
    perror ("mkdtemp");
    return 1;
  }
  setenv ("TMPDIR", dir, 1);
  bs = blockstore_new ("test", BS);
  check (bs != NULL, "blockstore_new");
  if (bs != NULL) {
    check (blockstore_blksize (bs) == BS, "block size");
    check (blockstore_fs_blksize (bs) >= 512, "filesystem block size");
    test_sizes (bs);
    test_states (bs);
    test_clock (bs);
    blockstore_free (bs);
  }
  check (rmdir (dir) == 0, "the hidden file is already unlinked");
  test_bad_tmpdir ();
  return test_summary ();
}

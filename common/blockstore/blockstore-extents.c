/* nbdsrv: block status through an overlay (see blockstore.h).
 *
 * Kept apart from blockstore.c, which needs nothing of the server, so
 * that the store's unit test links without the extents API.
 */
#include <errno.h>
#include <inttypes.h>

#include <nbdkit-filter.h>

#include "blockstore.h"
#include "minmax.h"

/* The extent type the overlay decides for STATE, or -1 for "ask the
 * layer below".
 */
static int
overlay_type (enum blockstore_state state, bool clean_from_below)
{
  switch (state) {
  case BLOCKSTORE_DIRTY:
    return 0;
  case BLOCKSTORE_CLEAN:
    return clean_from_below ? -1 : 0;
  case BLOCKSTORE_ZERO:
    return NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
  default:
    return -1;
  }
}

/* The layer below's answer for the whole request, or NULL if it has
 * none to give (then everything it holds is data).
 */
static struct nbdkit_extents *
below_extents (nbdkit_next *next, uint32_t count, uint64_t offset,
               int *err)
{
  struct nbdkit_extents *below;

  if (next->can_extents (next) != 1)
    return NULL;
  below = nbdkit_extents_new (offset, offset + count);
  if (below == NULL) {
    *err = errno;
    return NULL;
  }
  if (next->extents (next, count, offset, 0, below, err) == -1) {
    nbdkit_extents_free (below);
    return NULL;
  }
  return below;
}

/* Adds the part of [POS, LIMIT) that BELOW describes from POS; returns
 * the end of what it added, or POS if BELOW stops before POS.
 */
static uint64_t
add_from_below (const struct nbdkit_extents *below, size_t *i,
                uint64_t pos, uint64_t limit,
                struct nbdkit_extents *extents, int *err)
{
  size_t n = nbdkit_extents_count (below);
  struct nbdkit_extent e;
  uint64_t end;

  for (; *i < n; ++*i) {
    e = nbdkit_get_extent (below, *i);
    if (e.offset + e.length > pos)
      break;
  }
  if (*i == n)
    return pos;
  e = nbdkit_get_extent (below, *i);
  end = MIN (e.offset + e.length, limit);
  if (nbdkit_add_extent (extents, pos, end - pos, e.type) == -1) {
    *err = errno;
    return 0;
  }
  return end;
}

int
blockstore_extents (struct blockstore *bs, nbdkit_next *next,
                    uint32_t count, uint64_t offset, uint32_t flags,
                    bool clean_from_below,
                    struct nbdkit_extents *extents, int *err)
{
  uint32_t blksize = blockstore_blksize (bs);
  uint64_t pos = offset, end = offset + count;
  struct nbdkit_extents *below = NULL;
  bool asked = false;
  size_t i = 0;
  int r = 0;

  while (pos < end) {
    uint64_t blk = pos / blksize;
    uint64_t limit = MIN ((blk + 1) * blksize, end);
    int type = overlay_type (blockstore_get (bs, blk), clean_from_below);
    uint64_t next_pos;

    if (type == -1 && !asked) {
      asked = true;
      *err = 0;
      below = below_extents (next, end - pos, pos, err);
      if (below == NULL && *err != 0) {
        r = -1;
        goto out;
      }
    }
    if (type == -1 && below != NULL) {
      next_pos = add_from_below (below, &i, pos, limit, extents, err);
      if (next_pos == 0) {
        r = -1;
        goto out;
      }
      if (next_pos == pos)
        break;                  /* below answered short: so do we */
    }
    else {
      next_pos = limit;
      if (nbdkit_add_extent (extents, pos, limit - pos,
                             type == -1 ? 0 : type) == -1) {
        *err = errno;
        r = -1;
        goto out;
      }
    }
    pos = next_pos;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
 out:
  if (below != NULL)
    nbdkit_extents_free (below);
  return r;
}

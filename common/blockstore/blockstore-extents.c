/* nbdsrv: block status through an overlay (see blockstore.h).
 *
 * Kept apart from blockstore.c, which needs nothing of the server, so
 * that the store's unit test links without the extents API.
 */
#include <errno.h>
#include <inttypes.h>

#include <nbdkit-filter.h>

#include "blockstore.h"
#include "meta-ext.h"
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
               uint32_t flags, int *err)
{
  struct nbdkit_extents *below;

  if (next->can_extents (next) != 1)
    return NULL;
  below = nbdkit_extents_new (offset, offset + count);
  if (below == NULL) {
    *err = errno;
    return NULL;
  }
  if (next->extents (next, count, offset, flags & NBDSRV_FLAG_DEPTH, below,
                     err) == -1) {
    nbdkit_extents_free (below);
    return NULL;
  }
  return below;
}

/* meta-ext.h: with NBDSRV_FLAG_DEPTH, the depth of an extent of TYPE
 * as this overlay reports it: 1 for a block it holds (OWN), else one
 * more than the layer below said, and 0 where nothing holds it.
 */
static uint32_t
with_depth (uint32_t flags, uint32_t type, bool own)
{
  uint32_t d = NBDSRV_DEPTH_OF (type);

  if (!(flags & NBDSRV_FLAG_DEPTH))
    return type;
  return NBDSRV_WITH_DEPTH (type, own ? 1 : d ? d + 1 : 0);
}

/* Adds the part of [POS, LIMIT) that BELOW describes from POS; returns
 * the end of what it added, or POS if BELOW stops before POS.
 */
static uint64_t
add_from_below (const struct nbdkit_extents *below, size_t *i,
                uint64_t pos, uint64_t limit, uint32_t flags, bool own,
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
  if (nbdkit_add_extent (extents, pos, end - pos,
                         with_depth (flags, e.type, own)) == -1) {
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
    enum blockstore_state state = blockstore_get (bs, blk);
    int type = overlay_type (state, clean_from_below);
    bool own = state != BLOCKSTORE_ABSENT;
    uint64_t next_pos;

    if (type == -1 && !asked) {
      asked = true;
      *err = 0;
      below = below_extents (next, end - pos, pos, flags, err);
      if (below == NULL && *err != 0) {
        r = -1;
        goto out;
      }
    }
    if (type == -1 && below != NULL) {
      next_pos = add_from_below (below, &i, pos, limit, flags, own,
                                 extents, err);
      if (next_pos == 0) {
        r = -1;
        goto out;
      }
      if (next_pos == pos)
        break;                  /* below answered short: so do we */
    }
    else {
      next_pos = limit;
      /* Without extents below, what it holds is data at depth 2. */
      uint32_t t = type != -1 ? (uint32_t) type
        : (flags & NBDSRV_FLAG_DEPTH) ? NBDSRV_WITH_DEPTH (0, 1) : 0;

      if (nbdkit_add_extent (extents, pos, limit - pos,
                             with_depth (flags, t, own)) == -1) {
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

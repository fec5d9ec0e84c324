/* nbdsrv: extent lists, filled by a plugin's .extents callback.
 *
 * A list describes [start, end): extents wholly before start are
 * dropped, ones overlapping the edges are clipped, and neighbours of
 * the same type are merged, so the protocol layer sees a tidy list.
 * The list's storage belongs to the worker thread and is reused.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "internal.h"

/* The protocol caps one block status chunk at 2^20 descriptors (§5.2);
 * collecting more than that is wasted work.
 */
#define MAX_EXTENTS (1 << 20)

void
extents_reset (struct nbdkit_extents *e, uint64_t start, uint64_t end)
{
  e->len = 0;
  e->start = start;
  e->end = end;
  e->next = start;
}

void
extents_release (struct nbdkit_extents *e)
{
  free (e->ptr);
  e->ptr = NULL;
  e->len = e->cap = 0;
}

static int
extents_append (struct nbdkit_extents *e, uint64_t offset, uint64_t length,
                uint32_t type)
{
  struct extent *last = e->len ? &e->ptr[e->len - 1] : NULL;

  if (last && last->type == type) {
    last->length += length;
    return 0;
  }
  if (e->len == e->cap) {
    size_t ncap = e->cap ? e->cap * 2 : 64;
    struct extent *p = reallocarray (e->ptr, ncap, sizeof *p);

    if (p == NULL) {
      nbdkit_error ("nbdkit_add_extent: out of memory");
      errno = ENOMEM;
      return -1;
    }
    e->ptr = p;
    e->cap = ncap;
  }
  e->ptr[e->len++] = (struct extent) { offset, length, type };
  return 0;
}

int
nbdkit_add_extent (struct nbdkit_extents *e,
                   uint64_t offset, uint64_t length, uint32_t type)
{
  uint64_t end;

  if (length == 0)
    return 0;
  if (e->len == 0 && offset > e->next) {
    nbdkit_error ("nbdkit_add_extent: the first extent must start at or "
                  "before offset %" PRIu64 ", not at %" PRIu64,
                  e->start, offset);
    errno = ERANGE;
    return -1;
  }
  if (e->len > 0 && offset != e->next) {
    nbdkit_error ("nbdkit_add_extent: extents must be added in ascending "
                  "order without gaps: expected offset %" PRIu64
                  ", got %" PRIu64, e->next, offset);
    errno = ERANGE;
    return -1;
  }
  end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
  if (e->len == 0)
    e->next = end > e->next ? end : e->next;
  else
    e->next = end;

  /* Clip to [start, end); anything outside is accepted and ignored. */
  if (end <= e->start || offset >= e->end || e->len >= MAX_EXTENTS)
    return 0;
  if (offset < e->start)
    offset = e->start;
  if (end > e->end)
    end = e->end;
  return extents_append (e, offset, end - offset, type);
}

/* The filter-level API, exported for filters and for plugins that
 * build lists of their own.
 */
struct nbdkit_extents *
nbdkit_extents_new (uint64_t start, uint64_t end)
{
  struct nbdkit_extents *e;

  if (start > INT64_MAX || end > INT64_MAX || start > end) {
    nbdkit_error ("nbdkit_extents_new: invalid range [%" PRIu64 ", %"
                  PRIu64 ")", start, end);
    errno = ERANGE;
    return NULL;
  }
  e = calloc (1, sizeof *e);
  if (e == NULL) {
    nbdkit_error ("nbdkit_extents_new: %m");
    return NULL;
  }
  extents_reset (e, start, end);
  return e;
}

void
nbdkit_extents_free (struct nbdkit_extents *e)
{
  if (e) {
    extents_release (e);
    free (e);
  }
}

size_t
nbdkit_extents_count (const struct nbdkit_extents *e)
{
  return e->len;
}

struct nbdkit_extent
nbdkit_get_extent (const struct nbdkit_extents *e, size_t i)
{
  return (struct nbdkit_extent) {
    e->ptr[i].offset, e->ptr[i].length, e->ptr[i].type
  };
}

/* End of what a list describes so far (its start if it is empty). */
static uint64_t
extents_covered (const struct nbdkit_extents *e)
{
  const struct extent *last;

  if (e->len == 0)
    return e->start;
  last = &e->ptr[e->len - 1];
  return last->offset + last->length;
}

/* Ask the layer below about [offset, end) into a fresh list.  A layer
 * that succeeds without describing offset would make the callers loop
 * for ever (nbdkit asserts here); it gets EIO instead.
 */
static struct nbdkit_extents *
extents_query (nbdkit_next *next, uint64_t offset, uint64_t end,
               uint32_t flags, int *err)
{
  struct nbdkit_extents *t = nbdkit_extents_new (offset, end);

  if (t == NULL) {
    *err = errno;
    return NULL;
  }
  if (next->extents (next, end - offset, offset, flags, t, err) == -1)
    goto out_free;
  if (t->len == 0) {
    nbdkit_error ("extents: the layer below returned no extent covering "
                  "offset %" PRIu64, offset);
    *err = EIO;
    goto out_free;
  }
  return t;

 out_free:
  nbdkit_extents_free (t);
  return NULL;
}

/* Copy every extent of SRC to the end of DST. */
static int
extents_concat (struct nbdkit_extents *dst, const struct nbdkit_extents *src,
                int *err)
{
  for (size_t i = 0; i < src->len; i++) {
    const struct extent *x = &src->ptr[i];

    if (nbdkit_add_extent (dst, x->offset, x->length, x->type) == -1) {
      *err = errno;
      return -1;
    }
  }
  return 0;
}

/* A list covering all of [offset, offset+count), built by asking the
 * layer below as often as it takes.  REQ_ONE is dropped so that each
 * answer is as long as the layer is willing to make it.
 */
struct nbdkit_extents *
nbdkit_extents_full (nbdkit_next *next, uint32_t count, uint64_t offset,
                     uint32_t flags, int *err)
{
  struct nbdkit_extents *ret;
  uint64_t end = offset + count;

  flags &= ~NBDKIT_FLAG_REQ_ONE;
  ret = nbdkit_extents_new (offset, end);
  if (ret == NULL) {
    *err = errno;
    return NULL;
  }
  /* Each round describes at least one more byte, so this ends. */
  while (offset < end) {
    struct nbdkit_extents *t = extents_query (next, offset, end, flags, err);
    int r;

    if (t == NULL)
      goto out_free;
    r = extents_concat (ret, t, err);
    offset = extents_covered (t); /* not RET's: it stops at MAX_EXTENTS */
    nbdkit_extents_free (t);
    if (r == -1)
      goto out_free;
  }
  return ret;

 out_free:
  nbdkit_extents_free (ret);
  return NULL;
}

/* The first ALIGN bytes of E are described in pieces shorter than
 * ALIGN: make them one extent whose type has only the bits every
 * piece has (a block is a hole only if all of it is), asking the
 * layer below for the rest of the block if E stops short of it.
 */
static int
extents_merge_block (nbdkit_next *next, struct nbdkit_extents *e,
                     uint64_t offset, uint32_t align, uint32_t flags,
                     int *err)
{
  uint64_t block_end = offset + align;
  uint64_t covered = offset;
  uint32_t type = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;

  for (size_t i = 0; i < e->len && covered < block_end; i++) {
    type &= e->ptr[i].type;
    covered = e->ptr[i].offset + e->ptr[i].length;
  }
  /* Each round describes at least one more byte, so this ends. */
  while (covered < block_end) {
    struct nbdkit_extents *t = extents_query (next, covered, block_end,
                                              flags & ~NBDKIT_FLAG_REQ_ONE,
                                              err);

    if (t == NULL)
      return -1;
    for (size_t i = 0; i < t->len; i++)
      type &= t->ptr[i].type;
    covered = extents_covered (t);
    nbdkit_extents_free (t);
  }
  e->ptr[0] = (struct extent) { offset, align, type };
  e->len = 1;
  e->next = block_end;
  return 0;
}

/* Fill E from the layer below so that every extent starts and ends on
 * a multiple of ALIGN.  The answer may describe less than COUNT bytes:
 * it stops before the first extent that ends off alignment, except
 * that the first ALIGN bytes are always described, merged into one
 * extent if need be.
 */
int
nbdkit_extents_aligned (nbdkit_next *next, uint32_t count, uint64_t offset,
                        uint32_t flags, uint32_t align,
                        struct nbdkit_extents *e, int *err)
{
  uint64_t mask = (uint64_t) align - 1;

  if (align == 0 || (align & mask) != 0 || ((offset | count) & mask) != 0) {
    nbdkit_error ("nbdkit_extents_aligned: offset %" PRIu64 " and count %"
                  PRIu32 " must be multiples of the alignment %" PRIu32
                  ", which must be a power of 2", offset, count, align);
    *err = EINVAL;
    return -1;
  }
  if (next->extents (next, count, offset, flags, e, err) == -1)
    return -1;

  for (size_t i = 0; i < e->len; i++) {
    struct extent *x = &e->ptr[i];
    uint64_t x_end = x->offset + x->length;

    if ((x_end & mask) == 0)
      continue;
    /* The first extent that ends off alignment: keep what lies before
     * its last alignment boundary, if that is past the first block.
     */
    if (x_end - offset > align) {
      x->length = (x_end & ~mask) - x->offset;
      e->len = i + (x->length > 0);
      e->next = x->offset + x->length;
      return 0;
    }
    return extents_merge_block (next, e, offset, align, flags, err);
  }
  return 0;
}

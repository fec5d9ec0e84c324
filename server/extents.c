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

/* Same layout as nbdkit's struct nbdkit_extent (filter API). */
struct nbdkit_extent {
  uint64_t offset;
  uint64_t length;
  uint32_t type;
};

struct nbdkit_extent
nbdkit_get_extent (const struct nbdkit_extents *e, size_t i)
{
  return (struct nbdkit_extent) {
    e->ptr[i].offset, e->ptr[i].length, e->ptr[i].type
  };
}

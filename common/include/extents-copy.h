/* nbdsrv: the extents a filter got from the layer below, into the list
 * it answers with.
 *
 * Filters that ask below into a list of their own (offset, partition,
 * blocksize, truncate) need it: the list below spans other offsets, or
 * starts before the client's request.
 */
#ifndef NBDSRV_EXTENTS_COPY_H
#define NBDSRV_EXTENTS_COPY_H

#include <errno.h>
#include <stdint.h>

#include <nbdkit-filter.h>

/* Add every extent of SRC to DST, moved down by SHIFT bytes (where the
 * filter's disk starts on the layer below).  Returns where the last
 * one ends in DST's terms, or FROM if SRC is empty; -1 with *ERR set
 * when DST refuses one.
 */
static inline int64_t
extents_copy (struct nbdkit_extents *dst, struct nbdkit_extents *src,
              uint64_t shift, uint64_t from, int *err)
{
  size_t i, n = nbdkit_extents_count (src);
  uint64_t end = from;

  for (i = 0; i < n; i++) {
    struct nbdkit_extent e = nbdkit_get_extent (src, i);

    if (nbdkit_add_extent (dst, e.offset - shift, e.length, e.type) == -1) {
      *err = errno;
      return -1;
    }
    end = e.offset - shift + e.length;
  }
  return end;
}

#endif /* NBDSRV_EXTENTS_COPY_H */

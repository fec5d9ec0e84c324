/* nbdsrv: block status of a paged sparse store, reported as nbdkit's
 * sparse allocator reports it, for the plugins that keep their disk in
 * RAM pages (memory, data).  Include after <nbdkit-plugin.h>.
 *
 * The rules, observed from nbdkit 1.32: an unallocated page is a hole;
 * an allocated page is a zero extent (not a hole) when it is all zero
 * from the current position to the page end; whole pages are reported
 * up to the page holding the last requested byte (the last extent may
 * run past the request, which NBD allows), merging pages of the same
 * type.  Each plugin keeps only how it finds its pages.
 */
#ifndef NBDSRV_PAGE_EXTENTS_H
#define NBDSRV_PAGE_EXTENTS_H

#ifndef NBDKIT_PLUGIN_H
#error "include <nbdkit-plugin.h> before page-extents.h"
#endif

#include <stdint.h>

/* Return the type (NBDKIT_EXTENT_*) of the area that starts at OFFSET
 * and ends no later than OFFSET's page, and set *NEXT to where that
 * area ends, past OFFSET.  An unallocated area may report a long run of
 * holes at once; the caller cuts it at the end of the reply.
 */
typedef uint32_t (*page_area_type_fn) (uint64_t offset, uint64_t *next);

/* Add to EXTENTS the areas from OFFSET as described above, on a disk
 * of SIZE bytes in pages of PAGE_SIZE bytes (a power of 2).  Returns 0
 * or -1 as nbdkit_add_extent does.  Unlike nbdkit 1.32, which aborts
 * when a rounded-up hole exceeds 4 GiB, an extent that would be longer
 * than 32 bits is cut at the request end.
 */
static inline int
page_extents_add (struct nbdkit_extents *extents, uint32_t count,
                  uint64_t offset, uint32_t flags, uint64_t size,
                  uint64_t page_size, page_area_type_fn area_type)
{
  uint64_t req_end = offset + count;
  uint64_t end = (req_end + page_size - 1) & ~(page_size - 1);
  uint64_t pos = offset, run_start = offset, next;
  uint32_t type, run_type = 0;

  if (end > size)
    end = size;

  while (pos < end) {
    type = area_type (pos, &next);
    if (next > end)
      next = end;
    if (pos > run_start && type != run_type) {
      if (nbdkit_add_extent (extents, run_start, pos - run_start,
                             run_type) == -1)
        return -1;
      if (flags & NBDKIT_FLAG_REQ_ONE)
        return 0;
      run_start = pos;
    }
    run_type = type;
    pos = next;
  }

  if (pos == run_start)
    return 0;
  if (pos - run_start > UINT32_MAX)
    pos = req_end;
  return nbdkit_add_extent (extents, run_start, pos - run_start, run_type);
}

#endif /* NBDSRV_PAGE_EXTENTS_H */

/* nbdsrv: meta contexts beyond base:allocation, offered with help from
 * filters: qemu:allocation-depth and qemu:dirty-bitmap:NAME.
 *
 * An optional extension of nbdsrv's own, not part of the nbdkit filter
 * API, found with dlsym as write-target.h is, so the same filter still
 * loads in nbdkit (which never sets the flag nor looks for the
 * symbols).
 *
 * Allocation depth.  A filter that keeps blocks of its own (cow,
 * cache) exports the function NBDSRV_KEEPS_BLOCKS_SYMBOL (a function,
 * not a variable: two filters exporting one global name would be an
 * ODR violation).  When the server
 * wants depths it sets NBDSRV_FLAG_DEPTH in the flags of an extents
 * call, and every extent's type then carries, in the bits above
 * NBDSRV_DEPTH_SHIFT, the depth of the layer that holds its blocks: 1
 * for the nearest layer that keeps blocks, 2 for the next one down, and
 * so on to the plugin; 0 where no layer holds them.  Such a filter
 * answers its own blocks with depth 1 and adds 1 to the non-zero
 * depths it gets from below.  The server answers for the plugin: 1
 * where the plugin reports data, 0 in its holes.
 *
 * Dirty bitmaps.  A filter that tracks changed blocks exports the two
 * functions below; the server offers qemu:dirty-bitmap:NAME and answers
 * block status on it with the filter's extents, type 1 for a dirty
 * block and 0 for a clean one.  The filter's offsets are the client's,
 * so it must sit above any filter that moves data around.
 */
#ifndef NBDSRV_META_EXT_H
#define NBDSRV_META_EXT_H

#include <stdint.h>

struct nbdkit_extents;

#define NBDSRV_FLAG_DEPTH (1u << 16)
#define NBDSRV_DEPTH_SHIFT 8
#define NBDSRV_DEPTH_OF(type) (((type) >> NBDSRV_DEPTH_SHIFT) & 0xff)
#define NBDSRV_WITH_DEPTH(type, depth) \
  (((type) & 0xff) | ((uint32_t) (depth) << NBDSRV_DEPTH_SHIFT))

#define NBDSRV_KEEPS_BLOCKS_SYMBOL "nbdsrv_keeps_blocks"

#define NBDSRV_DIRTY_NAME_SYMBOL "nbdsrv_dirty_bitmap_name"
#define NBDSRV_DIRTY_EXTENTS_SYMBOL "nbdsrv_dirty_extents"

/* The bitmap's NAME (after "qemu:dirty-bitmap:"), or NULL for none. */
typedef const char *dirty_bitmap_name_fn (void);

/* Describe [offset, offset+count) of the bitmap into EXTENTS (type 1
 * dirty, 0 clean), for the connection whose filter handle is HANDLE.
 * Returns 0, or -1 with nbdkit_error.
 */
typedef int dirty_extents_fn (void *handle, uint32_t count, uint64_t offset,
                              struct nbdkit_extents *extents);

#endif /* NBDSRV_META_EXT_H */

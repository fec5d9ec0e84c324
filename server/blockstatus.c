/* nbdsrv: turning an extent list into base:allocation descriptors.
 * Pure: unit-tested in tests/unit/test-blockstatus.c.
 */
#include "config.h"

#include <endian.h>

#include "internal.h"
#include "minmax.h"
#include "protocol.h"

/* Longest descriptor: lengths are u32 on the wire, u64 with
 * extended headers.
 */
#define DESC_MAX_LENGTH UINT32_C (0xffffffff)

static void
desc_put (void *out, size_t i, bool ext, uint64_t len, uint32_t status)
{
  if (ext) {
    struct nbd_block_descriptor_ext *d = out;

    d[i].length = htobe64 (len);
    d[i].status_flags = htobe64 (status);
  }
  else {
    struct nbd_block_descriptor *d = out;

    d[i].length = htobe32 ((uint32_t) len);
    d[i].status_flags = htobe32 (status);
  }
}

/* Fill OUT (at most MAX entries, MAX >= 1) with context META's
 * descriptors for the request [offset, offset+count), from extents
 * that start at offset.
 * with REQ_ONE, one descriptor clipped to the request.  R-22:
 * otherwise stop after the descriptor that reaches the request's end;
 * it may extend past it.  Without EXT, extents longer than a u32 are
 * split.  Returns the number of descriptors (R-23: at least one when E
 * has extents).
 */
size_t
blockstatus_encode (const struct nbdkit_extents *e,
                    uint64_t offset, uint64_t count, bool req_one,
                    bool ext, uint32_t meta, void *out, size_t max)
{
  const uint64_t end = offset + count;
  const uint64_t longest = ext ? UINT64_MAX : DESC_MAX_LENGTH;
  uint64_t pos = offset;
  size_t n = 0;

  for (size_t i = 0; i < e->len && n < max && pos < end; i++) {
    uint64_t left = e->ptr[i].length;
    uint32_t status = meta_status (meta, e->ptr[i].type);

    while (left > 0 && n < max && pos < end) {
      uint64_t len = MIN (left, longest);

      if (req_one && len > count)
        len = count;
      desc_put (out, n, ext, len, status);
      n++;
      if (req_one)
        return n;
      pos += len;
      left -= len;
    }
  }
  return n;
}

/* nbdsrv: the per-connection answers an overlay filter (cow, cache)
 * gives about the layer it covers (see blockstore.h).
 */
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "blockstore.h"
#include "minmax.h"

int
blockstore_prepare (struct blockstore *bs, nbdkit_next *next)
{
  int64_t size = next->get_size (next);

  if (size == -1)
    return -1;
  return blockstore_set_size (bs, size);
}

int
blockstore_block_size (const struct blockstore *bs, nbdkit_next *next,
                       uint32_t *minimum, uint32_t *preferred,
                       uint32_t *maximum)
{
  if (next->block_size (next, minimum, preferred, maximum) == -1)
    return -1;
  if (*minimum == 0) {          /* the layer below has no constraints */
    *minimum = 1;
    *maximum = 0xffffffff;
  }
  *preferred = MAX (*preferred, blockstore_blksize (bs));
  return 0;
}

int
blockstore_on_read_parse (struct blockstore_on_read *r, const char *value)
{
  int b;

  if (value[0] == '/') {
    r->path = value;
    return 0;
  }
  b = nbdkit_parse_bool (value);
  if (b == -1)
    return -1;
  r->on = b;
  r->path = NULL;
  return 0;
}

bool
blockstore_on_read_now (const struct blockstore_on_read *r)
{
  if (r->path != NULL)
    return access (r->path, F_OK) == 0;
  return r->on;
}

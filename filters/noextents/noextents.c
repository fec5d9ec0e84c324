/* nbdsrv noextents filter: the disk looks fully allocated.
 *
 * With block status refused, clients that map the disk (qemu-img map,
 * nbdcopy, nbdinfo --map) see one allocated data extent, and the
 * plugin is never asked for extents: useful where finding holes is
 * slow (lseek on tmpfs).
 */
#include <nbdkit-filter.h>

static int
noextents_can_extents (nbdkit_next *next, void *handle)
{
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "noextents",
  .longname = "nbdsrv noextents filter",
  .can_extents = noextents_can_extents,
};

NBDKIT_REGISTER_FILTER (filter)

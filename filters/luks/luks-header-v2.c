/* nbdsrv luks filter: the LUKSv2 header (not yet read). */
#include <nbdkit-filter.h>

#include "luks.h"

int
luks_header_v2_read (nbdkit_next *next, uint64_t disk_size,
                     struct luks_header *h)
{
  nbdkit_error ("luks: the disk has a LUKS version 2 header: convert it "
                "with cryptsetup convert --type luks1");
  return -1;
}

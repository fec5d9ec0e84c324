/* nbdsrv ext2 filter: a file's extents, from its block map. */
#ifndef NBDSRV_EXT2_MAP_H
#define NBDSRV_EXT2_MAP_H

#include <stdbool.h>
#include <stdint.h>

#include <ext2fs/ext2fs.h>

#include <nbdkit-filter.h>

/* Adds to EXTENTS the extents of file FILE (of SIZE bytes) from OFFSET,
 * covering at least the block at OFFSET and at most COUNT bytes; only
 * the first extent if REQ_ONE.  BUF holds 3 filesystem blocks, for
 * libext2fs to read indirect blocks into.  Returns 0, or -1 with a
 * libext2fs error code or errno in *E.
 */
int ext2_map_extents (ext2_file_t file, uint64_t size, uint32_t count,
                      uint64_t offset, bool req_one, char *buf,
                      struct nbdkit_extents *extents, errcode_t *e);

#endif /* NBDSRV_EXT2_MAP_H */

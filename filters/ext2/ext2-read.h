/* nbdsrv ext2 filter: reading a file's data in runs of blocks. */
#ifndef NBDSRV_EXT2_READ_H
#define NBDSRV_EXT2_READ_H

#include <stdint.h>

#include <ext2fs/ext2fs.h>

/* Reads COUNT bytes at OFFSET of FILE (inside its size) into BUF.
 * The file's buffer must have been written out (ext2fs_file_flush).
 * MAP_BUF holds 3 filesystem blocks, BOUNCE one.  Returns 0 or a
 * libext2fs error code (an errno when the layer below failed).
 */
errcode_t ext2_read_runs (ext2_file_t file, char *buf, uint32_t count,
                          uint64_t offset, char *map_buf, char *bounce);

#endif /* NBDSRV_EXT2_READ_H */

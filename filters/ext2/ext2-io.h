/* nbdsrv ext2 filter: a libext2fs I/O manager over the layer below.
 *
 * libext2fs reaches its disk only through an io_manager, a table of
 * calls that open a "device" by name and read and write it in blocks.
 * Ours opens the nbdkit_next named by ext2_io_name, so the filesystem
 * is read and written through the plugin (and filters) below.
 */
#ifndef NBDSRV_EXT2_IO_H
#define NBDSRV_EXT2_IO_H

#include <stddef.h>

#include <ext2fs/ext2fs.h>

#include <nbdkit-filter.h>

/* Large enough for the name of any nbdkit_next. */
#define EXT2_IO_NAME_MAX 64

extern io_manager ext2_io_manager;

/* Writes to NAME (EXT2_IO_NAME_MAX bytes) the device name that makes
 * ext2_io_manager open NEXT.  NEXT must stay open until the channel
 * is closed.
 */
void ext2_io_name (nbdkit_next *next, char *name);

#endif /* NBDSRV_EXT2_IO_H */

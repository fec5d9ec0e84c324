/* nbdsrv: sending a READ's data from a plugin's file descriptor to the
 * socket without copying it through user space.
 *
 * An optional extension of nbdsrv's own, not part of the nbdkit plugin
 * API, found with dlsym as write-target.h is: a plugin whose data lives
 * in a file may export this function, and nbdsrv then answers large
 * READs by splicing the bytes from that descriptor into the socket.
 * nbdkit does not look for it, so the same plugin still works there.
 *
 * The server uses it only when nothing between the plugin and the
 * socket needs the bytes: no filter, no TLS, the plugin's thread model
 * PARALLEL (docs/nbdsrv-plugin.md lists every case).  The bytes are
 * taken from the descriptor while the reply is sent, so the plugin must
 * not need to do anything after a read (no eviction, no accounting).
 */
#ifndef NBDSRV_READ_SOURCE_H
#define NBDSRV_READ_SOURCE_H

#include <stdint.h>

#define READ_SOURCE_SYMBOL "nbdsrv_read_source"

/* *FLAGS: the range may hold runs of zeroes that a structured reply
 * would rather send as holes (a sparse file).  Without it the server
 * sends the range as one data chunk.
 */
#define READ_SOURCE_MAY_HOLD_HOLES 1u

/* Say where the COUNT bytes at OFFSET can be read from: set *FD (valid
 * while HANDLE is open) and *FD_OFFSET, and *FLAGS as above.  Returns
 * 0, or -1 without an error when the plugin cannot serve this read that
 * way (the server then calls .pread as usual).  A read that meets the
 * end of the descriptor's data early is not an error here: the server
 * notices and falls back to .pread, which reports it.
 */
typedef int read_source_fn (void *handle, uint32_t count, uint64_t offset,
                            int *fd, uint64_t *fd_offset, unsigned *flags);

#endif /* NBDSRV_READ_SOURCE_H */

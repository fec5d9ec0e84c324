/* nbdsrv: receiving a WRITE's payload straight into a plugin's storage.
 *
 * An optional extension of nbdsrv's own, not part of the nbdkit plugin
 * API: a plugin that keeps its data in memory may export these two
 * functions, and nbdsrv (which looks them up with dlsym) then reads a
 * WRITE payload from the socket directly into storage the plugin hands
 * out, one copy of the data instead of two (socket -> buffer ->
 * plugin).  nbdkit does not look for them, so the same plugin still
 * works there.
 *
 * The storage is not yet part of the disk: the write takes effect, all
 * at once, when the payload has fully arrived and the server commits
 * it.  A payload cut short is thrown away (rule R-10), and readers
 * never see a write half done, exactly as with pwrite.  nbdsrv uses
 * this only for PARALLEL plugins and writes without FUA.
 */
#ifndef NBDSRV_WRITE_TARGET_H
#define NBDSRV_WRITE_TARGET_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#define WRITE_TARGET_SYMBOL "nbdsrv_write_target"
#define WRITE_TARGET_DONE_SYMBOL "nbdsrv_write_target_done"

/* Fill IOV (at most *IOVCNT entries) with storage for the COUNT bytes
 * to be written at OFFSET, set *IOVCNT to the entries used and *TOKEN
 * to what write_target_done needs.  Returns 0, or -1 when the plugin
 * cannot (too many pieces, out of memory): the server then reads into
 * its own buffer and calls pwrite as usual.
 */
typedef int write_target_fn (void *handle, uint32_t count, uint64_t offset,
                             struct iovec *iov, int *iovcnt, void **token);

/* COMMIT true: the payload is all in place, make it the disk's
 * contents; returns 0, or -1 with nbdkit_error and errno set (as
 * pwrite would).  COMMIT false: the payload never fully arrived;
 * forget it (returns 0).  Either way TOKEN is finished with.
 */
typedef int write_target_done_fn (void *handle, void *token, bool commit);

#endif /* NBDSRV_WRITE_TARGET_H */

/* nbdsrv rbd plugin: what its three files share.
 *
 * rbd.c     parameters, the cluster connection, the export list;
 * images.c  open images, shared by every connection of this process;
 * io.c      the data path, through librbd's asynchronous calls.
 */
#ifndef NBDSRV_RBD_H
#define NBDSRV_RBD_H

#include <stdbool.h>
#include <stdint.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

/* One image (or one snapshot of it) as open in librbd.  Every
 * connection asking for the same image, snapshot and mode gets the
 * same one, so a flush on any connection covers the writes of all of
 * them: that is what makes multi-conn safe (rbdsrv_can_multi_conn).
 */
struct rbdsrv_export {
  char *name;                   /* owned: image name */
  char *snap;                   /* owned: snapshot name, or NULL */
  bool readonly;                /* opened with rbd_open_read_only */
  bool fast_diff;               /* fast-diff on and valid at open */
  rbd_image_t image;
  unsigned refs;                /* connections using it; images_lock */
  struct rbdsrv_export *next;      /* images_lock */
};

/* rbd.c: the I/O context on POOL (and NAMESPACE), valid from
 * get_ready (after_fork in a forked server) until unload.
 */
extern rados_ioctx_t rbdsrv_ioctx;
extern const char *rbdsrv_pool_name;

/* images.c */
/* Find or open NAME (at SNAP if not NULL); logs its failure, with
 * errno set, and returns NULL.
 */
struct rbdsrv_export *rbdsrv_export_get (const char *name, const char *snap,
                                   bool readonly);
void rbdsrv_export_put (struct rbdsrv_export *exp);
/* Open NAME at SNAP once to check that both exist, and close it:
 * returns 0, or -1 having logged which one is missing.
 */
int rbdsrv_export_check (const char *name, const char *snap);

/* io.c: the data callbacks; HANDLE is a struct rbdsrv_export. */
int rbdsrv_io_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
                  uint32_t flags);
int rbdsrv_io_pwrite (void *handle, const void *buf, uint32_t count,
                   uint64_t offset, uint32_t flags);
int rbdsrv_io_flush (void *handle, uint32_t flags);
int rbdsrv_io_trim (void *handle, uint32_t count, uint64_t offset,
                 uint32_t flags);
int rbdsrv_io_zero (void *handle, uint32_t count, uint64_t offset,
                 uint32_t flags);
struct nbdkit_extents;
int rbdsrv_io_extents (void *handle, uint32_t count, uint64_t offset,
                    uint32_t flags, struct nbdkit_extents *extents);

#endif /* NBDSRV_RBD_H */

/* nbdsrv: the allocator= choices of the memory and data plugins.
 *
 * nbdkit's memory and data plugins keep the disk in one of three
 * stores, chosen with allocator=sparse|malloc[,mlock=true]|zstd
 * (nbdkit-memory-plugin(1), "ALLOCATORS").  Each plugin has its own
 * sparse store, tuned for it; the other two are shared and live here:
 *
 *   malloc  the whole disk in one heap block, committed (touched) at
 *           start so a disk that does not fit fails then, not later;
 *           optionally mlock(2)ed.  No lock: requests run in parallel.
 *           Block status reports it all as data, as nbdkit does.
 *   zstd    32 KiB pages, each compressed on its own with libzstd, with
 *           the sparse store's page rules (and so its block status).
 *
 * Include after <nbdkit-plugin.h>.  One store per process (a plugin
 * serves one disk).
 */
#ifndef NBDSRV_ALLOCATOR_H
#define NBDSRV_ALLOCATOR_H

#ifndef NBDKIT_PLUGIN_H
#error "include <nbdkit-plugin.h> before allocator.h"
#endif

#include <stdbool.h>
#include <stdint.h>

enum allocator_kind {
  ALLOCATOR_SPARSE,             /* the plugin's own store */
  ALLOCATOR_MALLOC,
  ALLOCATOR_ZSTD,
};

struct allocator_spec {
  enum allocator_kind kind;
  bool mlock;                   /* malloc only */
};

/* A store other than the plugin's sparse one.  COUNT and OFFSET are
 * within the disk (the server checks requests against its size).
 * Functions returning int return 0, or -1 after nbdkit_error with
 * errno set.
 */
struct allocator_ops {
  int (*read) (void *buf, uint64_t count, uint64_t offset);
  int (*write) (const void *buf, uint64_t count, uint64_t offset);
  int (*zero) (uint64_t count, uint64_t offset);
  int (*extents) (struct nbdkit_extents *extents, uint32_t count,
                  uint64_t offset, uint32_t flags, uint64_t size);
  void (*close) (void);
};

/* Parse the value of allocator= (TYPE[,KEY[=VALUE]]...) into SPEC,
 * with nbdkit 1.32's messages.  Returns 0, or -1 after nbdkit_error.
 */
extern int allocator_spec_parse (const char *value,
                                 struct allocator_spec *spec);

/* The store SPEC names (not ALLOCATOR_SPARSE) for a disk of SIZE
 * bytes, ready for use; NULL after nbdkit_error.
 */
extern const struct allocator_ops *
allocator_open (const struct allocator_spec *spec, uint64_t size);

/* The two stores, for allocator_open. */
extern const struct allocator_ops *flat_store_open (uint64_t size,
                                                    bool lock);
extern const struct allocator_ops *zstd_store_open (void);

/* What --dump-plugin says about them, as nbdkit's plugins do. */
#define ALLOCATOR_DUMP_PLUGIN "mlock=yes\nzstd=yes\n"

#endif /* NBDSRV_ALLOCATOR_H */

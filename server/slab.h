/* nbdsrv: objects of one size in memory mapped for them alone (slab.c). */
#ifndef NBDSRV_SLAB_H
#define NBDSRV_SLAB_H

#include <pthread.h>
#include <stddef.h>

struct slab;

/* The caller owns the pool; SLAB_POOL_INIT (sizeof (struct thing))
 * makes a static one.  Objects are rounded up to SLAB_ALIGN bytes.
 */
struct slab_pool {
  size_t size;
  pthread_mutex_t lock;
  struct slab *partial;         /* slabs with room, most recent first */
  struct slab *spare;           /* one empty slab kept mapped */
};

#define SLAB_BYTES (64 * 1024)
#define SLAB_ALIGN 64

#define SLAB_POOL_INIT(obj_size)                                        \
  { .size = ((obj_size) + SLAB_ALIGN - 1) / SLAB_ALIGN * SLAB_ALIGN,    \
    .lock = PTHREAD_MUTEX_INITIALIZER }

/* A zeroed object, or NULL with errno ENOMEM. */
void *slab_alloc (struct slab_pool *pool);
/* OBJ from slab_alloc on POOL, or NULL. */
void slab_free (struct slab_pool *pool, void *obj);
/* Unmap POOL's spare slab: after a burst, when the memory matters more
 * than the next client's mmap.
 */
void slab_trim (struct slab_pool *pool);

#endif /* NBDSRV_SLAB_H */

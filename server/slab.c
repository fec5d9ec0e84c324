/* nbdsrv: objects of one size in memory mapped for them alone.
 *
 * Connections come from here rather than from malloc.  Ten thousand
 * clients that leave at once free ten thousand small chunks spread
 * over the malloc arenas of the threads that accepted them, and glibc
 * gives back the free top of a thread's arena neither on a small free
 * nor in malloc_trim: megabytes stayed resident after every client
 * had gone.  Here a slab whose last object is freed is unmapped at
 * once, except one kept so that a client that comes and goes alone
 * does not map and unmap each time (slab_trim gives that one back too,
 * once a burst is over).
 *
 * Slabs are SLAB_BYTES long and aligned to it, so an object finds its
 * slab by masking its address.  Objects are carved from a slab's
 * unused tail only when needed, so a new slab costs one page of RSS,
 * not SLAB_BYTES.
 *
 * In an AddressSanitizer build (make check SANITIZE=1) every object is
 * a malloc of its own instead, so that a use after free or a leaked
 * connection is still reported.
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "slab.h"

struct slab {
  struct slab *next, **prevp;   /* in pool->partial; prevp NULL if not */
  void *free;                   /* freed objects, linked by first word */
  char *tail;                   /* never handed out from here on */
  unsigned used;                /* objects handed out */
};

/* The first object sits after the header, on SLAB_ALIGN. */
#define HEADER_BYTES \
  ((sizeof (struct slab) + SLAB_ALIGN - 1) / SLAB_ALIGN * SLAB_ALIGN)
#define FIRST(s) ((char *) (s) + HEADER_BYTES)
#define END(s) ((char *) (s) + SLAB_BYTES)

static struct slab *
slab_of (void *obj)
{
  return (struct slab *) ((uintptr_t) obj & ~(uintptr_t) (SLAB_BYTES - 1));
}

/* mmap gives page alignment only: map twice the size and cut. */
static struct slab *
slab_map (void)
{
  char *p = mmap (NULL, 2 * SLAB_BYTES, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char *s;
  size_t head;

  if (p == MAP_FAILED) {
    errno = ENOMEM;
    return NULL;
  }
  s = (char *) (((uintptr_t) p + SLAB_BYTES - 1)
                & ~(uintptr_t) (SLAB_BYTES - 1));
  head = s - p;
  if (head)
    munmap (p, head);
  munmap (s + SLAB_BYTES, SLAB_BYTES - head);
  return (struct slab *) s;
}

static void
slab_reset (struct slab *s)
{
  s->next = NULL;
  s->prevp = NULL;
  s->free = NULL;
  s->tail = FIRST (s);
  s->used = 0;
}

static void
partial_add (struct slab_pool *pool, struct slab *s)
{
  s->next = pool->partial;
  if (s->next)
    s->next->prevp = &s->next;
  s->prevp = &pool->partial;
  pool->partial = s;
}

static void
partial_remove (struct slab *s)
{
  *s->prevp = s->next;
  if (s->next)
    s->next->prevp = s->prevp;
  s->next = NULL;
  s->prevp = NULL;
}

static bool
slab_full (const struct slab_pool *pool, const struct slab *s)
{
  return s->free == NULL && s->tail + pool->size > END (s);
}

void *
slab_alloc (struct slab_pool *pool)
{
  struct slab *s;
  void *obj;

  if (pool->size > SLAB_BYTES - HEADER_BYTES) {
    errno = ENOMEM;             /* a slab would not hold one */
    return NULL;
  }
#ifdef __SANITIZE_ADDRESS__
  return calloc (1, pool->size);
#endif
  pthread_mutex_lock (&pool->lock);
  s = pool->partial;
  if (s == NULL) {
    s = pool->spare;
    pool->spare = NULL;
    if (s == NULL && (s = slab_map ()) == NULL) {
      pthread_mutex_unlock (&pool->lock);
      return NULL;
    }
    slab_reset (s);
    partial_add (pool, s);
  }
  if (s->free) {
    obj = s->free;
    s->free = *(void **) obj;
  }
  else {
    obj = s->tail;
    s->tail += pool->size;
  }
  s->used++;
  if (slab_full (pool, s))
    partial_remove (s);
  pthread_mutex_unlock (&pool->lock);

  memset (obj, 0, pool->size);
  return obj;
}

void
slab_free (struct slab_pool *pool, void *obj)
{
  struct slab *s, *unmap = NULL;

  if (obj == NULL)
    return;
#ifdef __SANITIZE_ADDRESS__
  free (obj);
  return;
#endif
  s = slab_of (obj);
  pthread_mutex_lock (&pool->lock);
  *(void **) obj = s->free;
  s->free = obj;
  if (--s->used == 0) {
    if (s->prevp)
      partial_remove (s);
    if (pool->spare == NULL)
      pool->spare = s;
    else
      unmap = s;
  }
  else if (s->prevp == NULL)    /* it was full */
    partial_add (pool, s);
  pthread_mutex_unlock (&pool->lock);
  if (unmap)
    munmap (unmap, SLAB_BYTES);
}

void
slab_trim (struct slab_pool *pool)
{
  struct slab *s;

  pthread_mutex_lock (&pool->lock);
  s = pool->spare;
  pool->spare = NULL;
  pthread_mutex_unlock (&pool->lock);
  if (s)
    munmap (s, SLAB_BYTES);
}

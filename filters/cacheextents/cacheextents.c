/* nbdsrv cacheextents filter: keep the last block status answer of the
 * layer below and answer from it while requests fall inside.
 *
 * For clients that walk the disk one extent at a time (qemu-img
 * convert) over a plugin that returns many extents for the price of
 * one (vddk).  The cache is shared by all connections and dropped on
 * every write, trim and zero.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

/* The cached answer, guarded by cache_lock.  Owned. */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nbdkit_extent *cache;
static size_t cache_len;
static uint64_t cache_start, cache_end;

static void
cacheextents_unload (void)
{
  free (cache);
}

/* With cache_lock held. */
static void
cacheextents_drop (void)
{
  free (cache);
  cache = NULL;
  cache_len = 0;
  cache_start = cache_end = 0;
}

/* Keep a copy of EXTENTS, the answer below; with cache_lock held.
 * Failing to keep it only costs the next request.
 */
static void
cacheextents_keep (struct nbdkit_extents *extents)
{
  size_t i, n = nbdkit_extents_count (extents);

  cacheextents_drop ();
  if (n == 0)
    return;
  cache = malloc (n * sizeof *cache);
  if (cache == NULL)
    return;
  for (i = 0; i < n; i++)
    cache[i] = nbdkit_get_extent (extents, i);
  cache_len = n;
  cache_start = cache[0].offset;
  cache_end = cache[n - 1].offset + cache[n - 1].length;
}

/* Add the cached extents to EXTENTS, which drops what lies before its
 * start; with cache_lock held.
 */
static int
cacheextents_answer (struct nbdkit_extents *extents, int *err)
{
  size_t i;

  for (i = 0; i < cache_len; i++) {
    if (nbdkit_add_extent (extents, cache[i].offset, cache[i].length,
                           cache[i].type) == -1) {
      *err = errno;
      return -1;
    }
  }
  return 0;
}

static int
cacheextents_extents (nbdkit_next *next, void *handle, uint32_t count,
                      uint64_t offset, uint32_t flags,
                      struct nbdkit_extents *extents, int *err)
{
  int r;

  pthread_mutex_lock (&cache_lock);
  if (cache_len > 0 && offset >= cache_start && offset < cache_end) {
    nbdkit_debug ("cacheextents: answered from the cache");
    r = cacheextents_answer (extents, err);
    goto out_unlock;
  }
  /* Ask for as much as the layer below will say at once. */
  flags &= ~NBDKIT_FLAG_REQ_ONE;
  r = next->extents (next, count, offset, flags, extents, err);
  if (r == 0)
    cacheextents_keep (extents);
 out_unlock:
  pthread_mutex_unlock (&cache_lock);
  return r;
}

static void
cacheextents_invalidate (void)
{
  pthread_mutex_lock (&cache_lock);
  cacheextents_drop ();
  pthread_mutex_unlock (&cache_lock);
}

static int
cacheextents_pwrite (nbdkit_next *next, void *handle, const void *buf,
                     uint32_t count, uint64_t offset, uint32_t flags,
                     int *err)
{
  cacheextents_invalidate ();
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
cacheextents_trim (nbdkit_next *next, void *handle, uint32_t count,
                   uint64_t offset, uint32_t flags, int *err)
{
  cacheextents_invalidate ();
  return next->trim (next, count, offset, flags, err);
}

static int
cacheextents_zero (nbdkit_next *next, void *handle, uint32_t count,
                   uint64_t offset, uint32_t flags, int *err)
{
  cacheextents_invalidate ();
  return next->zero (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "cacheextents",
  .longname = "nbdsrv cacheextents filter",
  .unload = cacheextents_unload,
  .extents = cacheextents_extents,
  .pwrite = cacheextents_pwrite,
  .trim = cacheextents_trim,
  .zero = cacheextents_zero,
};

NBDKIT_REGISTER_FILTER (filter)

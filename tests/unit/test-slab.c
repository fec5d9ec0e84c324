/* Unit test: server/slab.c hands out zeroed, aligned, distinct objects,
 * gives a slab back to the system when its last object is freed, and
 * its kept spare when trimmed.
 */
#include <errno.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "slab.h"
#include "stubs.h"

#define OBJ 700                 /* about a struct connection */
#define N 1000                  /* about eleven slabs of them */

static void *objs[N];

static bool
all_zero (const unsigned char *p, size_t n)
{
  while (n--)
    if (*p++)
      return false;
  return true;
}

#ifndef __SANITIZE_ADDRESS__
static bool
mapped (void *slab)
{
  unsigned char vec[SLAB_BYTES / 4096];

  return mincore (slab, SLAB_BYTES, vec) == 0;
}

static void *
slab_start (void *obj)
{
  return (void *) ((uintptr_t) obj & ~(uintptr_t) (SLAB_BYTES - 1));
}
#endif

int
main (void)
{
  struct slab_pool pool = SLAB_POOL_INIT (OBJ);
  struct slab_pool huge = SLAB_POOL_INIT (SLAB_BYTES);
  size_t i, j;
  bool ok = true;
  void *again;

  check (pool.size % SLAB_ALIGN == 0 && pool.size >= OBJ,
         "the size is rounded up to the alignment");
  for (i = 0; i < N; i++) {
    objs[i] = slab_alloc (&pool);
    if (objs[i] == NULL || (uintptr_t) objs[i] % SLAB_ALIGN ||
        !all_zero (objs[i], OBJ))
      ok = false;
    else
      memset (objs[i], 0xa5, OBJ);
  }
  check (ok, "every object is there, aligned and zeroed");

  ok = true;
  for (i = 0; i < N && ok; i++)
    for (j = i + 1; j < N; j++)
      if ((char *) objs[i] < (char *) objs[j] + pool.size &&
          (char *) objs[j] < (char *) objs[i] + pool.size) {
        ok = false;
        break;
      }
  check (ok, "no two objects overlap");

  slab_free (&pool, objs[10]);
  again = slab_alloc (&pool);
  check (again && all_zero (again, OBJ), "a freed object's place is "
         "handed out again, zeroed");
  objs[10] = again;

#ifdef __SANITIZE_ADDRESS__
  /* Under ASan each object is a malloc of its own (slab.c). */
  check (malloc_usable_size (objs[0]) >= OBJ, "ASan: objects come from "
         "malloc, where it can see a use after free");
  for (i = 0; i < N; i++)
    slab_free (&pool, objs[i]);
#else
  size_t still_mapped = 0;

  check (slab_start (objs[N - 1]) != slab_start (objs[0]), "N objects "
         "take more than one slab");
  for (i = 0; i < N; i++)
    slab_free (&pool, objs[i]);
  for (i = 0; i < N; i++)
    if ((i == 0 || slab_start (objs[i]) != slab_start (objs[i - 1])) &&
        mapped (slab_start (objs[i])))
      still_mapped++;
  check (still_mapped == 1, "once all are freed one slab stays mapped, "
         "the others are unmapped");
#endif

  objs[0] = slab_alloc (&pool);
  check (objs[0] && all_zero (objs[0], OBJ), "the kept slab serves the "
         "next object");
  slab_free (&pool, objs[0]);
  slab_free (&pool, NULL);
#ifndef __SANITIZE_ADDRESS__
  check (mapped (slab_start (objs[0])), "the emptied slab is kept");
  slab_trim (&pool);
  check (!mapped (slab_start (objs[0])), "slab_trim unmaps the kept slab");
#endif
  slab_trim (&pool);
  objs[0] = slab_alloc (&pool);
  check (objs[0] && all_zero (objs[0], OBJ), "after a trim a new slab "
         "serves the next object");
  slab_free (&pool, objs[0]);

  errno = 0;
  check (slab_alloc (&huge) == NULL && errno == ENOMEM,
         "an object bigger than a slab fails with ENOMEM");
  return test_summary ();
}

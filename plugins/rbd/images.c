/* nbdsrv rbd plugin: images open in librbd, shared by connections.
 *
 * Opening an image costs several round trips to the cluster (header,
 * object map, and for a writer the exclusive lock), and two handles on
 * one image in one process would pass the exclusive lock back and
 * forth on every write.  So each image is opened once, on the first
 * connection that asks for it, and closed when the last one leaves.
 */

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "rbd.h"

static pthread_mutex_t images_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rbdsrv_export *images;       /* images_lock */

static bool
rbdsrv_export_matches (const struct rbdsrv_export *exp, const char *name,
                    const char *snap, bool readonly)
{
  if (strcmp (exp->name, name) != 0 || exp->readonly != readonly)
    return false;
  if (exp->snap == NULL || snap == NULL)
    return exp->snap == snap;
  return strcmp (exp->snap, snap) == 0;
}

/* Open NAME at SNAP: read-only for a snapshot or a read-only export,
 * which also means no exclusive lock is taken.  Logs why it failed.
 */
static int
rbdsrv_image_open (const char *name, const char *snap, bool readonly,
                rbd_image_t *image)
{
  int r;

  if (readonly)
    r = rbd_open_read_only (rbdsrv_ioctx, name, image, snap);
  else
    r = rbd_open (rbdsrv_ioctx, name, image, NULL);
  if (r == 0)
    return 0;
  errno = -r;
  if (r == -ENOENT && snap != NULL)
    nbdkit_error ("image '%s' or its snapshot '%s' not found in pool '%s':"
                  " list them with 'rbd snap ls %s/%s'",
                  name, snap, rbdsrv_pool_name, rbdsrv_pool_name, name);
  else if (r == -ENOENT)
    nbdkit_error ("image '%s' not found in pool '%s': list the images "
                  "with 'rbd ls %s' or create it with 'rbd create'",
                  name, rbdsrv_pool_name, rbdsrv_pool_name);
  else
    nbdkit_error ("cannot open image '%s' in pool '%s': %m", name,
                  rbdsrv_pool_name);
  return -1;
}

/* fast-diff lets rbd_diff_iterate2 answer from the object map instead
 * of asking the OSD about every object; it is only trusted when the
 * image says its map is valid.
 */
static bool
rbdsrv_image_fast_diff (rbd_image_t image)
{
  uint64_t features, flags;

  if (rbd_get_features (image, &features) < 0 ||
      (features & RBD_FEATURE_FAST_DIFF) == 0)
    return false;
  if (rbd_get_flags (image, &flags) < 0)
    return false;
  return (flags & RBD_FLAG_FAST_DIFF_INVALID) == 0;
}

static struct rbdsrv_export *
rbdsrv_export_new (const char *name, const char *snap, bool readonly)
{
  struct rbdsrv_export *exp;

  exp = calloc (1, sizeof *exp);
  if (exp == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  exp->name = strdup (name);
  exp->snap = snap ? strdup (snap) : NULL;
  if (exp->name == NULL || (snap && exp->snap == NULL)) {
    nbdkit_error ("strdup: %m");
    goto out_free;
  }
  exp->readonly = readonly;
  if (rbdsrv_image_open (name, snap, readonly, &exp->image) == -1)
    goto out_free;
  exp->fast_diff = rbdsrv_image_fast_diff (exp->image);
  nbdkit_debug ("rbd: opened %s/%s%s%s%s, fast-diff %s", rbdsrv_pool_name,
                name, snap ? "@" : "", snap ? snap : "",
                readonly ? " read-only" : "", exp->fast_diff ? "on" : "off");
  return exp;

 out_free:
  free (exp->name);
  free (exp->snap);
  free (exp);
  return NULL;
}

struct rbdsrv_export *
rbdsrv_export_get (const char *name, const char *snap, bool readonly)
{
  struct rbdsrv_export *exp;

  /* Held across rbd_open so that two connections racing for one image
   * open it once; opens are rare and quick next to a connection.
   */
  pthread_mutex_lock (&images_lock);
  for (exp = images; exp != NULL; exp = exp->next)
    if (rbdsrv_export_matches (exp, name, snap, readonly))
      break;
  if (exp == NULL) {
    exp = rbdsrv_export_new (name, snap, readonly);
    if (exp != NULL) {
      exp->next = images;
      images = exp;
    }
  }
  if (exp != NULL)
    exp->refs++;
  pthread_mutex_unlock (&images_lock);
  return exp;
}

void
rbdsrv_export_put (struct rbdsrv_export *exp)
{
  struct rbdsrv_export **p;
  bool last;

  pthread_mutex_lock (&images_lock);
  last = --exp->refs == 0;
  if (last) {
    for (p = &images; *p != exp; p = &(*p)->next)
      ;
    *p = exp->next;
  }
  pthread_mutex_unlock (&images_lock);
  if (!last)
    return;
  /* rbd_close flushes what the cache still holds. */
  if (rbd_close (exp->image) < 0)
    nbdkit_debug ("rbd: closing %s failed; its unflushed writes may be "
                  "lost", exp->name);
  free (exp->name);
  free (exp->snap);
  free (exp);
}

int
rbdsrv_export_check (const char *name, const char *snap)
{
  rbd_image_t image;
  bool exists;
  int r;

  if (rbdsrv_image_open (name, NULL, true, &image) == -1)
    return -1;
  r = 0;
  if (snap != NULL) {
    r = rbd_snap_exists (image, snap, &exists);
    if (r == 0 && !exists) {
      nbdkit_error ("snapshot '%s' of image '%s' not found in pool '%s': "
                    "list them with 'rbd snap ls %s/%s'", snap, name,
                    rbdsrv_pool_name, rbdsrv_pool_name, name);
      r = -ENOENT;
    }
    else if (r < 0)
      nbdkit_error ("cannot list the snapshots of image '%s': %s", name,
                    strerror (-r));
  }
  rbd_close (image);
  if (r < 0) {
    errno = -r;
    return -1;
  }
  return 0;
}

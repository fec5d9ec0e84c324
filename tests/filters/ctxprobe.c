/* A test filter for the filter API that manages contexts by hand.
 *
 * At after_fork it opens a shared, read-only context on the layer
 * below and reads its size and first byte from a background thread,
 * outside any connection.  Each connection's context below is opened
 * by hand in .open (nbdkit_next_context_open, then
 * nbdkit_context_set_next) instead of through next.  The export
 * description reports what the background thread saw, and what the
 * hand-opened context reports, so a client can check both.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

static nbdkit_next *shared;
static pthread_t reader;
static char seen[128] = "background read not done";
static pthread_mutex_t join_lock = PTHREAD_MUTEX_INITIALIZER;
static int joined;

/* Wait for the background reader, once. */
static void
join_reader (void)
{
  pthread_mutex_lock (&join_lock);
  if (shared && !joined) {
    pthread_join (reader, NULL);
    joined = 1;
  }
  pthread_mutex_unlock (&join_lock);
}

static void *
read_shared (void *arg)
{
  unsigned char byte = 0;
  int err = 0;
  int64_t size = shared->get_size (shared);

  if (size > 0 && shared->pread (shared, &byte, 1, 0, 0, &err) == 0)
    snprintf (seen, sizeof seen, "shared size=%lld first=0x%02x",
              (long long) size, byte);
  else
    snprintf (seen, sizeof seen, "shared read failed: err=%d", err);
  return NULL;
}

static int
ctxprobe_after_fork (nbdkit_backend *backend)
{
  shared = nbdkit_next_context_open (backend, 1, "", 1);
  if (shared == NULL || shared->prepare (shared) == -1)
    return -1;
  return pthread_create (&reader, NULL, read_shared, NULL) == 0 ? 0 : -1;
}

static void
ctxprobe_cleanup (nbdkit_backend *backend)
{
  if (shared == NULL)
    return;
  join_reader ();
  shared->finalize (shared);
  nbdkit_next_context_close (shared);
  shared = NULL;
}

static void *
ctxprobe_open (nbdkit_next_open *next, nbdkit_context *context,
               int readonly, const char *exportname, int is_tls)
{
  nbdkit_backend *below = nbdkit_context_get_backend (context);
  nbdkit_next *n = nbdkit_next_context_open (below, readonly, exportname,
                                             0);

  if (n == NULL)
    return NULL;
  if (nbdkit_context_set_next (context, n) != NULL) {
    nbdkit_error ("a context was already associated");
    return NULL;
  }
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static const char *
ctxprobe_export_description (nbdkit_next *next, void *handle)
{
  join_reader ();
  return nbdkit_printf_intern ("%s; own size=%lld", seen,
                               (long long) next->get_size (next));
}

static struct nbdkit_filter filter = {
  .name = "ctxprobe",
  .longname = "nbdsrv test filter for hand-managed contexts",
  .after_fork = ctxprobe_after_fork,
  .cleanup = ctxprobe_cleanup,
  .open = ctxprobe_open,
  .export_description = ctxprobe_export_description,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv readahead filter: prefetches what a client reading
 * sequentially will ask for next.
 *
 * Each connection has a prefetch thread.  A read at the end of the
 * previous one doubles the window (up to MAX_WINDOW); any other read
 * starts it again at the size of the read.  The part of the window not
 * yet prefetched is handed to the thread, which sends it below as
 * cache requests while the client's read goes on in parallel.  Only
 * the newest range waits: a thread that falls behind skips stale ones.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "minmax.h"

/* The largest window: 32M, the largest cache request most plugins
 * take at once, and enough to keep a fast reader ahead.
 */
#define MAX_WINDOW (32 * 1024 * 1024)
#define MIN_WINDOW (64 * 1024)

static int thread_model;

struct readahead {
  nbdkit_next *next;            /* borrowed, from prepare to finalize */
  uint64_t size;
  bool running;                 /* the thread was started */
  pthread_t thread;

  pthread_mutex_t lock;         /* guards the fields below */
  pthread_cond_t cond;
  bool stop;
  uint64_t want_offset, want_end;  /* the range to prefetch, if any */
  uint64_t last_end;            /* end of the last read */
  uint64_t window;
  uint64_t done_end;            /* prefetched (or asked) up to here */
};

static int
readahead_get_ready (int model)
{
  thread_model = model;
  return 0;
}

static void *
readahead_open (nbdkit_next_open *next, nbdkit_context *context,
                int readonly, const char *exportname, int is_tls)
{
  struct readahead *ra;

  if (next (context, readonly, exportname) == -1)
    return NULL;
  ra = calloc (1, sizeof (*ra));
  if (ra == NULL) {
    nbdkit_error ("readahead: calloc: %m");
    return NULL;
  }
  pthread_mutex_init (&ra->lock, NULL);
  pthread_cond_init (&ra->cond, NULL);
  return ra;
}

static void
readahead_close (void *handle)
{
  struct readahead *ra = handle;

  pthread_mutex_destroy (&ra->lock);
  pthread_cond_destroy (&ra->cond);
  free (ra);
}

static void *
readahead_thread (void *arg)
{
  struct readahead *ra = arg;

  pthread_mutex_lock (&ra->lock);
  for (;;) {
    uint64_t offset, end;
    int err;

    while (!ra->stop && ra->want_offset >= ra->want_end)
      pthread_cond_wait (&ra->cond, &ra->lock);
    if (ra->stop)
      break;
    offset = ra->want_offset;
    end = ra->want_end;
    ra->want_offset = ra->want_end = 0;
    pthread_mutex_unlock (&ra->lock);
    /* A failed prefetch costs nothing but the time: the read that
     * follows will see the error, if it lasts.
     */
    if (ra->next->cache (ra->next, end - offset, offset, 0, &err) == -1)
      nbdkit_debug ("readahead: cache at %" PRIu64 " failed: %s",
                    offset, strerror (err));
    pthread_mutex_lock (&ra->lock);
  }
  pthread_mutex_unlock (&ra->lock);
  return NULL;
}

/* Prefetching needs requests in parallel with the client's, and a
 * layer below that takes cache requests.  nbdkit says so per
 * connection, as an error-level warning; so do we.
 */
static int
readahead_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct readahead *ra = handle;
  int64_t size;
  int r;

  if (thread_model != NBDKIT_THREAD_MODEL_PARALLEL ||
      (r = next->can_cache (next)) == NBDKIT_CACHE_NONE) {
    nbdkit_error ("readahead: warning: underlying plugin does not support "
                  "NBD_CMD_CACHE or PARALLEL thread model, so the filter "
                  "won't do anything");
    if (thread_model == NBDKIT_THREAD_MODEL_PARALLEL)
      nbdkit_error ("readahead: try adding --filter=cache after this "
                    "filter");
    return 0;
  }
  if (r == -1 || (size = next->get_size (next)) == -1)
    return -1;
  ra->next = next;
  ra->size = size;
  r = pthread_create (&ra->thread, NULL, readahead_thread, ra);
  if (r != 0) {
    errno = r;
    nbdkit_error ("readahead: cannot start the prefetch thread: %m");
    return -1;
  }
  ra->running = true;
  return 0;
}

static int
readahead_finalize (nbdkit_next *next, void *handle)
{
  struct readahead *ra = handle;

  if (!ra->running)
    return 0;
  pthread_mutex_lock (&ra->lock);
  ra->stop = true;
  pthread_cond_signal (&ra->cond);
  pthread_mutex_unlock (&ra->lock);
  pthread_join (ra->thread, NULL);
  ra->running = false;
  return 0;
}

/* Moves the window for a read of COUNT bytes at OFFSET and hands what
 * is new in it to the thread.
 */
static void
readahead_plan (struct readahead *ra, uint32_t count, uint64_t offset)
{
  uint64_t end = offset + count, start, stop;

  pthread_mutex_lock (&ra->lock);
  if (offset == ra->last_end && offset > 0) {
    ra->window = MIN (ra->window * 2, (uint64_t) MAX_WINDOW);
    start = MAX (end, ra->done_end);
  }
  else {
    ra->window = MIN (MAX ((uint64_t) count, (uint64_t) MIN_WINDOW),
                      (uint64_t) MAX_WINDOW);
    start = end;
  }
  ra->last_end = end;
  stop = MIN (end + ra->window, ra->size);
  if (start < stop) {
    ra->want_offset = start;
    ra->want_end = stop;
    ra->done_end = stop;
    pthread_cond_signal (&ra->cond);
  }
  pthread_mutex_unlock (&ra->lock);
}

static int
readahead_pread (nbdkit_next *next, void *handle, void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct readahead *ra = handle;

  if (ra->running)
    readahead_plan (ra, count, offset);
  return next->pread (next, buf, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "readahead",
  .longname = "nbdsrv readahead filter",
  .get_ready = readahead_get_ready,
  .open = readahead_open,
  .close = readahead_close,
  .prepare = readahead_prepare,
  .finalize = readahead_finalize,
  .pread = readahead_pread,
};

NBDKIT_REGISTER_FILTER (filter)

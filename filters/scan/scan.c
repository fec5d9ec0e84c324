/* nbdsrv scan filter: prefetches the whole disk while clients are
 * connected.
 *
 * Every connection to the default export runs a scanning thread; all
 * of them take the next scan-size chunk from one shared position (the
 * clock), so two clients scan the disk once between them, each chunk
 * sent below as one cache request.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "minmax.h"

static bool scan_ahead = true;       /* scan-ahead */
static bool scan_clock = true;       /* scan-clock */
static bool scan_forever;            /* scan-forever */
static uint32_t scan_size = 2 * 1024 * 1024;  /* scan-size */

static int thread_model;

/* The clock: shared by every connection. */
static pthread_mutex_t clock_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t clock_pos;            /* next chunk to prefetch */
static unsigned clock_users;          /* scanning connections */

struct scan {
  bool is_default;              /* connected to the default export */
  nbdkit_next *next;            /* borrowed, prepare to finalize */
  uint64_t size;
  bool running;
  pthread_t thread;
  bool stop;                    /* atomic */
};

static int
scan_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
             const char *key, const char *value)
{
  bool *flag = NULL;
  int r;

  if (strcmp (key, "scan-ahead") == 0)
    flag = &scan_ahead;
  else if (strcmp (key, "scan-clock") == 0)
    flag = &scan_clock;
  else if (strcmp (key, "scan-forever") == 0)
    flag = &scan_forever;
  if (flag != NULL) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    *flag = r;
    return 0;
  }
  if (strcmp (key, "scan-size") == 0) {
    int64_t n = nbdkit_parse_size (value);
    if (n == -1)
      return -1;
    if (n < 512 || n > 32 * 1024 * 1024 || (n & (n - 1)) != 0) {
      nbdkit_error ("scan-size parameter should be [512..32M] "
                    "and a power of two");
      return -1;
    }
    scan_size = n;
    return 0;
  }
  return next (nxdata, key, value);
}

#define scan_config_help \
  "scan-ahead=false       Skip ahead when client reads faster.\n" \
  "scan-clock=false       Stop scanning when client disconnects.\n" \
  "scan-forever=true      Scan repeatedly over the disk.\n" \
  "scan-size=NN           Set scan block size."

static int
scan_get_ready (int model)
{
  thread_model = model;
  return 0;
}

static void *
scan_open (nbdkit_next_open *next, nbdkit_context *context,
           int readonly, const char *exportname, int is_tls)
{
  struct scan *s;

  if (next (context, readonly, exportname) == -1)
    return NULL;
  s = calloc (1, sizeof (*s));
  if (s == NULL) {
    nbdkit_error ("scan: calloc: %m");
    return NULL;
  }
  s->is_default = exportname[0] == '\0';
  return s;
}

static void
scan_close (void *handle)
{
  free (handle);
}

/* The next chunk to prefetch, or false when the scan is over. */
static bool
scan_take_chunk (struct scan *s, uint64_t *offset)
{
  bool more = true;

  pthread_mutex_lock (&clock_lock);
  if (clock_pos >= s->size && scan_forever)
    clock_pos = 0;
  if (clock_pos >= s->size)
    more = false;
  else {
    *offset = clock_pos;
    clock_pos += scan_size;
  }
  pthread_mutex_unlock (&clock_lock);
  return more;
}

static void *
scan_thread (void *arg)
{
  struct scan *s = arg;
  uint64_t offset;
  int err;

  while (!__atomic_load_n (&s->stop, __ATOMIC_RELAXED) &&
         scan_take_chunk (s, &offset)) {
    uint32_t n = MIN ((uint64_t) scan_size, s->size - offset);
    if (s->next->cache (s->next, n, offset, 0, &err) == -1)
      nbdkit_debug ("scan: cache at %" PRIu64 " failed: %s",
                    offset, strerror (err));
  }
  return NULL;
}

/* As nbdkit, the reasons for not scanning are error-level warnings
 * for each connection.
 */
static bool
scan_possible (nbdkit_next *next, int *r)
{
  if (thread_model != NBDKIT_THREAD_MODEL_PARALLEL) {
    nbdkit_error ("scan: warning: underlying plugin does not support "
                  "the PARALLEL thread model, not scanning");
    return false;
  }
  *r = next->can_cache (next);
  if (*r == NBDKIT_CACHE_NONE) {
    nbdkit_error ("scan: warning: underlying plugin does not support "
                  "NBD_CMD_CACHE, not scanning; try adding --filter=cache "
                  "after this filter");
    return false;
  }
  return *r != -1;
}

static int
scan_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct scan *s = handle;
  int64_t size;
  int r = 0;

  if (!s->is_default || !scan_possible (next, &r))
    return r == -1 ? -1 : 0;
  size = next->get_size (next);
  if (size == -1)
    return -1;
  s->next = next;
  s->size = size;
  pthread_mutex_lock (&clock_lock);
  clock_users++;
  pthread_mutex_unlock (&clock_lock);
  r = pthread_create (&s->thread, NULL, scan_thread, s);
  if (r != 0) {
    errno = r;
    nbdkit_error ("scan: cannot start the scanning thread: %m");
    pthread_mutex_lock (&clock_lock);
    clock_users--;
    pthread_mutex_unlock (&clock_lock);
    return -1;
  }
  s->running = true;
  return 0;
}

static int
scan_finalize (nbdkit_next *next, void *handle)
{
  struct scan *s = handle;

  if (!s->running)
    return 0;
  __atomic_store_n (&s->stop, true, __ATOMIC_RELAXED);
  pthread_join (s->thread, NULL);
  s->running = false;
  pthread_mutex_lock (&clock_lock);
  if (--clock_users == 0 && !scan_clock)
    clock_pos = 0;
  pthread_mutex_unlock (&clock_lock);
  return 0;
}

/* scan-ahead: a read beyond the clock moves it to the first chunk
 * after the read.
 */
static int
scan_pread (nbdkit_next *next, void *handle, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct scan *s = handle;

  if (s->running && scan_ahead) {
    uint64_t end = offset + count;
    uint64_t chunk_end = (end + scan_size - 1) / scan_size * scan_size;

    pthread_mutex_lock (&clock_lock);
    if (end > clock_pos)
      clock_pos = chunk_end;
    pthread_mutex_unlock (&clock_lock);
  }
  return next->pread (next, buf, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "scan",
  .longname = "nbdsrv scan filter",
  .config = scan_config,
  .config_help = scan_config_help,
  .get_ready = scan_get_ready,
  .open = scan_open,
  .close = scan_close,
  .prepare = scan_prepare,
  .finalize = scan_finalize,
  .pread = scan_pread,
};

NBDKIT_REGISTER_FILTER (filter)

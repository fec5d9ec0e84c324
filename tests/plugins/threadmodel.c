/* Test plugin: measures how many of its calls the server overlaps.
 *
 * Built four times (tests/plugins/meson.build), once per thread model,
 * as nbdkit-tm-MODEL-plugin.so.  Every pread outside the first 4 KiB
 * counts itself in and out of a process-wide and a per-handle counter
 * around a short nbdkit_nanosleep, and the highest values seen are
 * kept.  Reading the first 4 KiB is not counted: it returns those
 * statistics as text, so a test reads them through NBD from either
 * server.
 *
 * Parameters: size=SIZE (default 64M), sleep_ms=N (default 20),
 * lower=MODEL (what .thread_model answers; default THREAD_MODEL).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#ifndef TM_MODEL
#error "build with -DTM_MODEL=NBDKIT_THREAD_MODEL_..."
#endif
#define THREAD_MODEL TM_MODEL

#define STATS_SIZE 4096

static int64_t size = INT64_C (64) << 20;
static unsigned sleep_ms = 20;
static int lowered_model = TM_MODEL;

/* All counters are guarded by stats_lock, held only to update them,
 * never across the sleep.
 */
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned active, max_active;       /* preads, all handles */
static unsigned max_active_handle;        /* preads, any one handle */
static unsigned open_now, max_open, opens;
static uint64_t calls;

struct handle {
  unsigned active;              /* guarded by stats_lock */
};

static const char *const model_names[] = {
  "serialize_connections", "serialize_all_requests",
  "serialize_requests", "parallel",
};

static int
tm_config (const char *key, const char *value)
{
  if (strcmp (key, "size") == 0) {
    size = nbdkit_parse_size (value);
    return size == -1 ? -1 : 0;
  }
  if (strcmp (key, "sleep_ms") == 0)
    return nbdkit_parse_unsigned ("sleep_ms", value, &sleep_ms);
  if (strcmp (key, "lower") == 0) {
    for (int m = 0; m < 4; m++)
      if (strcmp (value, model_names[m]) == 0) {
        lowered_model = m;
        return 0;
      }
    nbdkit_error ("lower=%s: not a thread model name", value);
    return -1;
  }
  nbdkit_error ("unknown parameter '%s'", key);
  return -1;
}

static int
tm_thread_model (void)
{
  return lowered_model;
}

static void
stats_update_max (unsigned *max, unsigned value)
{
  if (value > *max)
    *max = value;
}

static void *
tm_open (int readonly)
{
  struct handle *h = calloc (1, sizeof *h);

  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  pthread_mutex_lock (&stats_lock);
  opens++;
  open_now++;
  stats_update_max (&max_open, open_now);
  pthread_mutex_unlock (&stats_lock);
  return h;
}

static void
tm_close (void *handle)
{
  pthread_mutex_lock (&stats_lock);
  open_now--;
  pthread_mutex_unlock (&stats_lock);
  free (handle);
}

static int64_t
tm_get_size (void *handle)
{
  return size;
}

static int
tm_stats (char *buf, uint32_t count, uint64_t offset)
{
  char text[STATS_SIZE];

  memset (text, 0, sizeof text);
  pthread_mutex_lock (&stats_lock);
  snprintf (text, sizeof text,
            "model=%s calls=%" PRIu64 " max_active=%u "
            "max_active_handle=%u max_open=%u opens=%u\n",
            model_names[lowered_model], calls, max_active,
            max_active_handle, max_open, opens);
  pthread_mutex_unlock (&stats_lock);
  memcpy (buf, text + offset, count);
  return 0;
}

static int
tm_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  struct handle *h = handle;
  int r;

  if (offset < STATS_SIZE) {
    if (offset + count > STATS_SIZE) {
      nbdkit_error ("reads of the statistics must stay in the first "
                    "%d bytes", STATS_SIZE);
      nbdkit_set_error (EINVAL);
      return -1;
    }
    return tm_stats (buf, count, offset);
  }

  pthread_mutex_lock (&stats_lock);
  calls++;
  active++;
  h->active++;
  stats_update_max (&max_active, active);
  stats_update_max (&max_active_handle, h->active);
  pthread_mutex_unlock (&stats_lock);

  r = nbdkit_nanosleep (0, sleep_ms * 1000000);

  pthread_mutex_lock (&stats_lock);
  active--;
  h->active--;
  pthread_mutex_unlock (&stats_lock);

  if (r == -1)
    return -1;
  memset (buf, 0, count);
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "tm",
  .longname = "thread model probe (nbdsrv tests)",
  .config = tm_config,
  .config_help = "size=SIZE sleep_ms=N lower=MODEL",
  .thread_model = tm_thread_model,
  .open = tm_open,
  .close = tm_close,
  .get_size = tm_get_size,
  .pread = tm_pread,
};

NBDKIT_REGISTER_PLUGIN (plugin)

/* A test filter that appends one line per callback to the file named
 * by $ORDER_LOG: "NAME CALLBACK", where NAME is the instance this
 * source was built as (-DORDER_NAME), so that two instances stacked
 * show the order in which the server calls the layers.  Built against
 * our header, it loads into nbdsrv and Debian's nbdkit alike, and the
 * test compares the two logs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#define STR_(x) #x
#define STR(x) STR_(x)
#define NAME STR (ORDER_NAME)

static void
note (const char *what)
{
  const char *path = getenv ("ORDER_LOG");
  FILE *fp;

  if (path == NULL || (fp = fopen (path, "a")) == NULL)
    return;
  fprintf (fp, "%s %s\n", NAME, what);
  fclose (fp);
}

static void order_load (void) { note ("load"); }
static void order_unload (void) { note ("unload"); }

static int
order_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  char line[256];

  snprintf (line, sizeof line, "config %s=%s", key, value);
  note (line);
  return next (nxdata, key, value);
}

static int
order_config_complete (nbdkit_next_config_complete *next,
                       nbdkit_backend *nxdata)
{
  note ("config_complete");
  return next (nxdata);
}

static int
order_get_ready (int thread_model)
{
  note ("get_ready");
  return 0;
}

static int
order_after_fork (nbdkit_backend *backend)
{
  note ("after_fork");
  return 0;
}

static void
order_cleanup (nbdkit_backend *backend)
{
  note ("cleanup");
}

static int
order_preconnect (nbdkit_next_preconnect *next, nbdkit_backend *nxdata,
                  int readonly)
{
  note ("preconnect");
  return next (nxdata, readonly);
}

static void *
order_open (nbdkit_next_open *next, nbdkit_context *context, int readonly,
            const char *exportname, int is_tls)
{
  note ("open");
  if (next (context, readonly, exportname) == -1)
    return NULL;
  note ("opened");
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static void
order_close (void *handle)
{
  note ("close");
}

static int
order_prepare (nbdkit_next *next, void *handle, int readonly)
{
  note ("prepare");
  return 0;
}

static int
order_finalize (nbdkit_next *next, void *handle)
{
  note ("finalize");
  return 0;
}

static int64_t
order_get_size (nbdkit_next *next, void *handle)
{
  note ("get_size");
  return next->get_size (next);
}

static int
order_can_write (nbdkit_next *next, void *handle)
{
  note ("can_write");
  return next->can_write (next);
}

static int
order_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  note ("pread");
  return next->pread (next, buf, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = NAME,
  .longname = "nbdsrv test filter " NAME,
  .load = order_load,
  .unload = order_unload,
  .config = order_config,
  .config_complete = order_config_complete,
  .get_ready = order_get_ready,
  .after_fork = order_after_fork,
  .cleanup = order_cleanup,
  .preconnect = order_preconnect,
  .open = order_open,
  .close = order_close,
  .prepare = order_prepare,
  .finalize = order_finalize,
  .get_size = order_get_size,
  .can_write = order_can_write,
  .pread = order_pread,
};

NBDKIT_REGISTER_FILTER (filter)

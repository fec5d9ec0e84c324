/* nbdsrv limit filter: refuse clients beyond limit=N connected at the
 * same time (default 1; 0 means no limit).
 *
 * The count is checked at preconnect, so an excess client is dropped
 * before the handshake costs anything, and again at open, where it is
 * taken, because two clients can pass preconnect together.
 */
#include <pthread.h>
#include <string.h>

#include <nbdkit-filter.h>

static unsigned limit_max = 1;

/* Guards limit_connections. */
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned limit_connections;

static int
limit_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  if (strcmp (key, "limit") == 0)
    return nbdkit_parse_unsigned ("limit", value, &limit_max);
  return next (nxdata, key, value);
}

#define limit_config_help \
  "limit=<N>                      Limit clients to N (default: 1)."

static int
limit_full (void)
{
  if (limit_max > 0 && limit_connections >= limit_max) {
    nbdkit_error ("limit: too many clients connected, connection rejected "
                  "(raise limit=%u to allow more)", limit_max);
    return 1;
  }
  return 0;
}

static int
limit_preconnect (nbdkit_next_preconnect *next, nbdkit_backend *nxdata,
                  int readonly)
{
  int full;

  if (next (nxdata, readonly) == -1)
    return -1;
  pthread_mutex_lock (&count_lock);
  full = limit_full ();
  pthread_mutex_unlock (&count_lock);
  return full ? -1 : 0;
}

static void *
limit_open (nbdkit_next_open *next, nbdkit_context *nxdata,
            int readonly, const char *exportname, int is_tls)
{
  int full;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  pthread_mutex_lock (&count_lock);
  full = limit_full ();
  if (!full)
    limit_connections++;
  pthread_mutex_unlock (&count_lock);
  return full ? NULL : NBDKIT_HANDLE_NOT_NEEDED;
}

static void
limit_close (void *handle)
{
  pthread_mutex_lock (&count_lock);
  limit_connections--;
  pthread_mutex_unlock (&count_lock);
}

static struct nbdkit_filter filter = {
  .name = "limit",
  .longname = "nbdsrv limit filter",
  .config = limit_config,
  .config_help = limit_config_help,
  .preconnect = limit_preconnect,
  .open = limit_open,
  .close = limit_close,
};

NBDKIT_REGISTER_FILTER (filter)

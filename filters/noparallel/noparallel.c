/* nbdsrv noparallel filter: lower the thread model, to measure what
 * parallelism buys or to work around a plugin or client that cannot
 * cope with it.
 *
 * The server applies the most restrictive thread model of all layers,
 * so answering .thread_model is all this filter does.
 */
#include <string.h>

#include <nbdkit-filter.h>

static int model = NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;

static int
noparallel_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                   const char *key, const char *value)
{
  if (strcmp (key, "serialize") != 0 && strcmp (key, "serialise") != 0)
    return next (nxdata, key, value);
  if (strcmp (value, "connections") == 0)
    model = NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS;
  else if (strcmp (value, "all-requests") == 0
           || strcmp (value, "all_requests") == 0)
    model = NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS;
  else if (strcmp (value, "requests") == 0)
    model = NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;
  else {
    nbdkit_error ("noparallel: unknown serialize mode '%s': use "
                  "requests, all-requests or connections", value);
    return -1;
  }
  return 0;
}

#define noparallel_config_help \
  "serialize=<MODE>     One of 'requests' (default), 'all-requests',\n" \
  "                     'connections'."

static int
noparallel_thread_model (void)
{
  return model;
}

static struct nbdkit_filter filter = {
  .name = "noparallel",
  .longname = "nbdsrv noparallel filter",
  .config = noparallel_config,
  .config_help = noparallel_config_help,
  .thread_model = noparallel_thread_model,
};

NBDKIT_REGISTER_FILTER (filter)

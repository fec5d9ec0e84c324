/* nbdsrv nocache filter: hide, emulate or ignore NBD_CMD_CACHE, to
 * measure what a plugin's cache support is worth.
 *
 * cachemode=none hides the command, emulate has the server read the
 * range instead of calling the plugin's cache, nop accepts the command
 * and does nothing.
 */
#include <string.h>

#include <nbdkit-filter.h>

enum cache_mode { CACHE_NONE, CACHE_EMULATE, CACHE_NOP };

static enum cache_mode cachemode = CACHE_NONE;

static int
nocache_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                const char *key, const char *value)
{
  if (strcmp (key, "cachemode") != 0)
    return next (nxdata, key, value);
  if (strcmp (value, "none") == 0)
    cachemode = CACHE_NONE;
  else if (strcmp (value, "emulate") == 0)
    cachemode = CACHE_EMULATE;
  else if (strcmp (value, "nop") == 0)
    cachemode = CACHE_NOP;
  else {
    nbdkit_error ("nocache: unknown cachemode '%s': use none, emulate "
                  "or nop", value);
    return -1;
  }
  return 0;
}

#define nocache_config_help \
  "cachemode=<MODE>     One of 'none' (default), 'emulate', 'nop'."

static int
nocache_can_cache (nbdkit_next *next, void *handle)
{
  switch (cachemode) {
  case CACHE_EMULATE:
    return NBDKIT_CACHE_EMULATE;
  case CACHE_NOP:
    return NBDKIT_CACHE_NATIVE;
  default:
    return NBDKIT_CACHE_NONE;
  }
}

/* Reached only in nop mode: with emulate the server reads instead,
 * with none the command is refused before any layer sees it.
 */
static int
nocache_cache (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "nocache",
  .longname = "nbdsrv nocache filter",
  .config = nocache_config,
  .config_help = nocache_config_help,
  .can_cache = nocache_can_cache,
  .cache = nocache_cache,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv retry-request filter: when a single request fails, wait and
 * send the same request again, up to retry-request-retries times,
 * before passing the failure on.  Unlike the retry filter the layer
 * below is not reopened.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include <nbdkit-filter.h>

static unsigned retries = 2;
static unsigned delay_secs = 2;
static bool retry_open = true;

static int
rr_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
           const char *key, const char *value)
{
  int r;

  if (strcmp (key, "retry-request-retries") == 0)
    return nbdkit_parse_unsigned ("retry-request-retries", value, &retries);
  if (strcmp (key, "retry-request-delay") == 0) {
    if (nbdkit_parse_unsigned ("retry-request-delay", value, &delay_secs)
        == -1)
      return -1;
    if (delay_secs == 0) {
      nbdkit_error ("retry-request-delay cannot be 0: give 1 second or more");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "retry-request-open") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    retry_open = r;
    return 0;
  }
  return next (nxdata, key, value);
}

#define rr_config_help \
  "retry-request-retries=<N>      Number of retries (default: 2).\n" \
  "retry-request-delay=<N>        Seconds to wait before retry (default: 2).\n" \
  "retry-request-open=false       Do not retry opening the plugin."

/* Before retry number I (from 1) of WHAT: wait.  Return false if the
 * server is shutting down, which ends the retries.
 */
static bool
rr_wait (const char *what, unsigned i)
{
  nbdkit_debug ("retry-request: retry %u of %u for %s", i, retries, what);
  return nbdkit_nanosleep (delay_secs, 0) == 0;
}

static void *
rr_open (nbdkit_next_open *next, nbdkit_context *nxdata,
         int readonly, const char *exportname, int is_tls)
{
  unsigned i;

  if (next (nxdata, readonly, exportname) == 0)
    return NBDKIT_HANDLE_NOT_NEEDED;
  for (i = 1; retry_open && i <= retries; ++i) {
    if (!rr_wait ("open", i))
      break;
    if (next (nxdata, readonly, exportname) == 0)
      return NBDKIT_HANDLE_NOT_NEEDED;
  }
  return NULL;
}

/* Call EXPR until it succeeds or the retries are used up.  EXPR sets
 * *err on failure; the last failure is the one the client sees.
 */
#define RETRY(what, expr)                              \
  do {                                                 \
    int r_ = (expr);                                   \
    for (unsigned i_ = 1; r_ == -1 && i_ <= retries; ++i_) { \
      if (!rr_wait (what, i_))                         \
        break;                                         \
      r_ = (expr);                                     \
    }                                                  \
    return r_;                                         \
  } while (0)

static int
rr_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  RETRY ("pread", next->pread (next, buf, count, offset, flags, err));
}

static int
rr_pwrite (nbdkit_next *next, void *handle, const void *buf,
           uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  RETRY ("pwrite", next->pwrite (next, buf, count, offset, flags, err));
}

static int
rr_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
         uint32_t flags, int *err)
{
  RETRY ("trim", next->trim (next, count, offset, flags, err));
}

static int
rr_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
         uint32_t flags, int *err)
{
  RETRY ("zero", next->zero (next, count, offset, flags, err));
}

static int
rr_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  RETRY ("flush", next->flush (next, flags, err));
}

/* As in nbdkit, extents a failed attempt already added stay in the
 * list; a retry appends after them.
 */
static int
rr_extents (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, struct nbdkit_extents *extents,
            int *err)
{
  RETRY ("extents",
         next->extents (next, count, offset, flags, extents, err));
}

static int
rr_cache (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  RETRY ("cache", next->cache (next, count, offset, flags, err));
}

static struct nbdkit_filter filter = {
  .name = "retry-request",
  .longname = "nbdsrv retry-request filter",
  .config = rr_config,
  .config_help = rr_config_help,
  .open = rr_open,
  .pread = rr_pread,
  .pwrite = rr_pwrite,
  .trim = rr_trim,
  .zero = rr_zero,
  .flush = rr_flush,
  .extents = rr_extents,
  .cache = rr_cache,
};

NBDKIT_REGISTER_FILTER (filter)

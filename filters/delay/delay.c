/* nbdsrv delay filter: sleep before chosen requests, to imitate a slow
 * or distant disk and to widen race windows in clients.
 *
 * Each delay is parsed once at config time.  Sleeping goes through
 * nbdkit_nanosleep so that a server shutting down, or a client that
 * went away, cuts the sleep short (the request then fails with
 * ESHUTDOWN, as in nbdkit).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

/* Milliseconds; zero means no delay. */
static unsigned delay_read_ms, delay_write_ms, delay_zero_ms, delay_trim_ms;
static unsigned delay_extents_ms, delay_cache_ms, delay_open_ms;
static unsigned delay_close_ms;
static int delay_fast_zero = 1;

/* VALUE is whole seconds ("2") or milliseconds ("250ms").  nbdkit
 * 1.32 reads the millisecond form with sscanf, so "1.5ms" is taken as
 * 1 ms there; we do the same so that command lines keep their timing.
 */
static int
delay_parse (const char *key, const char *value, unsigned *ms)
{
  size_t len = strlen (value);
  unsigned secs;

  if (len > 2 && strcmp (value + len - 2, "ms") == 0) {
    int n;
    if (sscanf (value, "%d", &n) != 1) {
      nbdkit_error ("delay: cannot parse %s in milliseconds parameter: %s "
                    "(write a whole number, for example %s=250ms)",
                    key, value, key);
      return -1;
    }
    /* nbdkit casts a negative count to a huge one; refuse it instead. */
    if (n < 0) {
      nbdkit_error ("delay: %s=%s is negative: give a delay of 0ms or more",
                    key, value);
      return -1;
    }
    *ms = n;
    return 0;
  }
  if (nbdkit_parse_unsigned (key, value, &secs) == -1)
    return -1;
  if (secs > UINT32_MAX / 1000) {
    nbdkit_error ("delay: %s=%s is too long: give at most %u seconds",
                  key, value, UINT32_MAX / 1000);
    return -1;
  }
  *ms = secs * 1000;
  return 0;
}

static int
delay_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  if (strcmp (key, "rdelay") == 0 || strcmp (key, "delay-read") == 0)
    return delay_parse (key, value, &delay_read_ms);
  if (strcmp (key, "delay-write") == 0)
    return delay_parse (key, value, &delay_write_ms);
  if (strcmp (key, "delay-zero") == 0)
    return delay_parse (key, value, &delay_zero_ms);
  if (strcmp (key, "delay-trim") == 0)
    return delay_parse (key, value, &delay_trim_ms);
  if (strcmp (key, "delay-extents") == 0)
    return delay_parse (key, value, &delay_extents_ms);
  if (strcmp (key, "delay-cache") == 0)
    return delay_parse (key, value, &delay_cache_ms);
  if (strcmp (key, "delay-open") == 0)
    return delay_parse (key, value, &delay_open_ms);
  if (strcmp (key, "delay-close") == 0)
    return delay_parse (key, value, &delay_close_ms);
  if (strcmp (key, "wdelay") == 0) {
    /* One value for every request that changes the disk. */
    if (delay_parse (key, value, &delay_write_ms) == -1)
      return -1;
    delay_zero_ms = delay_trim_ms = delay_write_ms;
    return 0;
  }
  if (strcmp (key, "delay-fast-zero") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    delay_fast_zero = r;
    return 0;
  }
  return next (nxdata, key, value);
}

#define delay_config_help \
  "rdelay=<NN>[ms]                Read delay in seconds/milliseconds.\n" \
  "delay-read=<NN>[ms]            Read delay in seconds/milliseconds.\n" \
  "delay-write=<NN>[ms]           Write delay in seconds/milliseconds.\n" \
  "delay-zero=<NN>[ms]            Zero delay in seconds/milliseconds.\n" \
  "delay-trim=<NN>[ms]            Trim delay in seconds/milliseconds.\n" \
  "delay-extents=<NN>[ms]         Extents delay in seconds/milliseconds.\n" \
  "delay-cache=<NN>[ms]           Cache delay in seconds/milliseconds.\n" \
  "wdelay=<NN>[ms]                Write, zero and trim delay in secs/msecs.\n" \
  "delay-fast-zero=<BOOL>         Delay fast zero requests (default true).\n" \
  "delay-open=<NN>[ms]            Open delay in seconds/milliseconds.\n" \
  "delay-close=<NN>[ms]           Close delay in seconds/milliseconds."

/* Sleep MS milliseconds; on an interrupted sleep set *ERR. */
static int
delay_sleep (unsigned ms, int *err)
{
  if (ms == 0)
    return 0;
  if (nbdkit_nanosleep (ms / 1000, (ms % 1000) * 1000000) == -1) {
    *err = errno;
    return -1;
  }
  return 0;
}

static void *
delay_open (nbdkit_next_open *next, nbdkit_context *nxdata,
            int readonly, const char *exportname, int is_tls)
{
  int err;

  if (delay_sleep (delay_open_ms, &err) == -1)
    return NULL;
  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

/* finalize runs only when the client said goodbye (NBD_CMD_DISC); a
 * client that just dropped the socket is not kept waiting.
 */
static int
delay_finalize (nbdkit_next *next, void *handle)
{
  int err;

  if (delay_sleep (delay_close_ms, &err) == -1)
    return -1;
  return next->finalize (next);
}

/* With delay-fast-zero=false a fast zero fails at once, so the filter
 * can promise fast zero whatever the layer below says.
 */
static int
delay_can_fast_zero (nbdkit_next *next, void *handle)
{
  if (delay_zero_ms && !delay_fast_zero)
    return 1;
  return next->can_fast_zero (next);
}

static int
delay_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  if (delay_sleep (delay_read_ms, err) == -1)
    return -1;
  return next->pread (next, buf, count, offset, flags, err);
}

static int
delay_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (delay_sleep (delay_write_ms, err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
delay_zero (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  if ((flags & NBDKIT_FLAG_FAST_ZERO) && delay_zero_ms && !delay_fast_zero) {
    *err = ENOTSUP;
    return -1;
  }
  if (delay_sleep (delay_zero_ms, err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static int
delay_trim (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  if (delay_sleep (delay_trim_ms, err) == -1)
    return -1;
  return next->trim (next, count, offset, flags, err);
}

static int
delay_extents (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  if (delay_sleep (delay_extents_ms, err) == -1)
    return -1;
  return next->extents (next, count, offset, flags, extents, err);
}

static int
delay_cache (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  if (delay_sleep (delay_cache_ms, err) == -1)
    return -1;
  return next->cache (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "delay",
  .longname = "nbdsrv delay filter",
  .config = delay_config,
  .config_help = delay_config_help,
  .open = delay_open,
  .finalize = delay_finalize,
  .can_fast_zero = delay_can_fast_zero,
  .pread = delay_pread,
  .pwrite = delay_pwrite,
  .zero = delay_zero,
  .trim = delay_trim,
  .extents = delay_extents,
  .cache = delay_cache,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv blocksize-policy filter: advertise block size constraints the
 * plugin does not, and optionally refuse requests that break them.
 *
 * blocksize-minimum, -preferred and -maximum replace what the layer
 * below advertises; where neither says anything the defaults are 1,
 * 4096 and 0xffffffff.  blocksize-error-policy=error fails a request
 * that is smaller than the minimum, larger than the maximum (data
 * commands) or not aligned to the minimum, with EINVAL, before it
 * reaches the plugin.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "rounding.h"

static uint32_t config_minimum, config_preferred, config_maximum;
static bool error_policy;       /* false: allow */

/* Parse VALUE of KEY as a size no larger than LIMIT into *OUT. */
static int
policy_parse (const char *key, const char *value, uint64_t limit,
              uint32_t *out)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1)
    return -1;
  if ((uint64_t) r > limit) {
    nbdkit_error ("blocksize-policy: %s=%s is too large: at most "
                  "%" PRIu64, key, value, limit);
    return -1;
  }
  *out = r;
  return 0;
}

static int
policy_config_minimum (const char *value)
{
  if (policy_parse ("blocksize-minimum", value, 65536,
                    &config_minimum) == -1)
    return -1;
  if (!is_power_of_2 (config_minimum)) {
    nbdkit_error ("blocksize-policy: blocksize-minimum must be a power "
                  "of 2, not %s", value);
    return -1;
  }
  return 0;
}

static int
policy_config_preferred (const char *value)
{
  if (policy_parse ("blocksize-preferred", value, 32 * 1024 * 1024,
                    &config_preferred) == -1)
    return -1;
  if (config_preferred < 512 || !is_power_of_2 (config_preferred)) {
    nbdkit_error ("blocksize-policy: blocksize-preferred must be a power "
                  "of 2 between 512 and 32M, not %s", value);
    return -1;
  }
  return 0;
}

static int
policy_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  if (strcmp (key, "blocksize-minimum") == 0)
    return policy_config_minimum (value);
  if (strcmp (key, "blocksize-preferred") == 0)
    return policy_config_preferred (value);
  if (strcmp (key, "blocksize-maximum") == 0)
    return policy_parse (key, value, 0xffffffff, &config_maximum);
  if (strcmp (key, "blocksize-error-policy") == 0) {
    if (strcmp (value, "allow") == 0)
      error_policy = false;
    else if (strcmp (value, "error") == 0)
      error_policy = true;
    else {
      nbdkit_error ("blocksize-policy: unknown blocksize-error-policy "
                    "'%s': use allow or error", value);
      return -1;
    }
    return 0;
  }
  return next (nxdata, key, value);
}

#define policy_config_help \
  "blocksize-error-policy=allow|error  What to do with requests that\n" \
  "                                    break the constraints.\n" \
  "blocksize-minimum=<N>               Minimum block size.\n" \
  "blocksize-preferred=<N>             Preferred block size.\n" \
  "blocksize-maximum=<N>               Maximum block size."

static int
policy_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                   uint32_t *preferred, uint32_t *maximum)
{
  if (next->block_size (next, minimum, preferred, maximum) == -1)
    return -1;
  if (config_minimum)
    *minimum = config_minimum;
  if (config_preferred)
    *preferred = config_preferred;
  if (config_maximum)
    *maximum = config_maximum;
  /* Nothing set anywhere: advertise nothing. */
  if (*minimum == 0 && *preferred == 0 && *maximum == 0)
    return 0;
  if (*minimum == 0)
    *minimum = 1;
  if (*preferred == 0)
    *preferred = *minimum > 4096 ? *minimum : 4096;
  if (*maximum == 0)
    *maximum = 0xffffffff;
  if (*minimum > *preferred || *preferred > *maximum) {
    nbdkit_error ("blocksize-policy: the block sizes minimum %" PRIu32
                  ", preferred %" PRIu32 ", maximum %" PRIu32 " are not "
                  "in order: change blocksize-minimum, -preferred or "
                  "-maximum", *minimum, *preferred, *maximum);
    return -1;
  }
  return 0;
}

/* Under the error policy, refuse WHAT of COUNT bytes at OFFSET if it
 * breaks the constraints (a DATA command also the maximum).
 */
static int
policy_check (nbdkit_next *next, void *handle, const char *what,
              bool data, uint32_t count, uint64_t offset, int *err)
{
  uint32_t minimum, preferred, maximum;

  if (!error_policy)
    return 0;
  if (policy_block_size (next, handle, &minimum, &preferred,
                         &maximum) == -1) {
    *err = EIO;
    return -1;
  }
  if (minimum == 0)
    return 0;
  if (count < minimum || (data && count > maximum)
      || count % minimum != 0 || offset % minimum != 0) {
    nbdkit_error ("blocksize-policy: %s of %" PRIu32 " bytes at %" PRIu64
                  " breaks the block size constraints (minimum %" PRIu32
                  ", maximum %" PRIu32 ")", what, count, offset, minimum,
                  maximum);
    *err = EINVAL;
    return -1;
  }
  return 0;
}

static int
policy_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  if (policy_check (next, handle, "read", true, count, offset, err) == -1)
    return -1;
  return next->pread (next, buf, count, offset, flags, err);
}

static int
policy_pwrite (nbdkit_next *next, void *handle, const void *buf,
               uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (policy_check (next, handle, "write", true, count, offset, err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
policy_trim (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  if (policy_check (next, handle, "trim", false, count, offset, err) == -1)
    return -1;
  return next->trim (next, count, offset, flags, err);
}

static int
policy_zero (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  if (policy_check (next, handle, "zero", false, count, offset, err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static int
policy_extents (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents, int *err)
{
  if (policy_check (next, handle, "block status", false, count, offset,
                    err) == -1)
    return -1;
  return next->extents (next, count, offset, flags, extents, err);
}

static int
policy_cache (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  if (policy_check (next, handle, "cache", false, count, offset, err) == -1)
    return -1;
  return next->cache (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "blocksize-policy",
  .longname = "nbdsrv blocksize-policy filter",
  .config = policy_config,
  .config_help = policy_config_help,
  .block_size = policy_block_size,
  .pread = policy_pread,
  .pwrite = policy_pwrite,
  .trim = policy_trim,
  .zero = policy_zero,
  .extents = policy_extents,
  .cache = policy_cache,
};

NBDKIT_REGISTER_FILTER (filter)

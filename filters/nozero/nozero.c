/* nbdsrv nozero filter: hide or cripple WRITE_ZEROES, to measure what
 * efficient zeroing buys and to test client and server fallbacks.
 *
 * zeromode picks what the client is offered (nothing, zeroing done by
 * writing zero buffers, or the plugin's own zero with or without the
 * may-trim flag); fastzeromode picks how NBD_CMD_FLAG_FAST_ZERO is
 * treated.
 */
#include <errno.h>
#include <string.h>

#include <nbdkit-filter.h>

enum zero_mode { ZERO_NONE, ZERO_EMULATE, ZERO_NOTRIM, ZERO_PLUGIN };
enum fast_mode { FAST_DEFAULT, FAST_NONE, FAST_SLOW, FAST_IGNORE };

static enum zero_mode zeromode = ZERO_NONE;
static enum fast_mode fastzeromode = FAST_DEFAULT;

static const char *const zero_names[] = {
  [ZERO_NONE] = "none", [ZERO_EMULATE] = "emulate",
  [ZERO_NOTRIM] = "notrim", [ZERO_PLUGIN] = "plugin",
};
static const char *const fast_names[] = {
  [FAST_DEFAULT] = "default", [FAST_NONE] = "none",
  [FAST_SLOW] = "slow", [FAST_IGNORE] = "ignore",
};

/* Index of VALUE in NAMES[N], or -1. */
static int
nozero_lookup (const char *const *names, int n, const char *value)
{
  int i;

  for (i = 0; i < n; i++)
    if (strcmp (names[i], value) == 0)
      return i;
  return -1;
}

static int
nozero_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  int i;

  if (strcmp (key, "zeromode") == 0) {
    i = nozero_lookup (zero_names, 4, value);
    if (i == -1) {
      nbdkit_error ("nozero: unknown zeromode '%s': use none, emulate, "
                    "notrim or plugin", value);
      return -1;
    }
    zeromode = i;
    return 0;
  }
  if (strcmp (key, "fastzeromode") == 0) {
    i = nozero_lookup (fast_names, 4, value);
    if (i == -1) {
      nbdkit_error ("nozero: unknown fastzeromode '%s': use none, slow, "
                    "ignore or default", value);
      return -1;
    }
    fastzeromode = i;
    return 0;
  }
  return next (nxdata, key, value);
}

#define nozero_config_help \
  "zeromode=<MODE>      One of 'none' (default), 'emulate', 'notrim',\n" \
  "                     'plugin'.\n" \
  "fastzeromode=<MODE>  One of 'default', 'none', 'slow', 'ignore'."

/* notrim and plugin pass zero requests down: refuse a layer below
 * that cannot take them, as nbdkit does.  A read-only connection is
 * never offered zero, so it is let through (nbdkit too).
 */
static int
nozero_prepare (nbdkit_next *next, void *handle, int readonly)
{
  int r;

  if (readonly || (zeromode != ZERO_NOTRIM && zeromode != ZERO_PLUGIN))
    return 0;
  r = next->can_zero (next);
  if (r == -1)
    return -1;
  if (r == NBDKIT_ZERO_NONE) {
    nbdkit_error ("nozero: zeromode '%s' needs a plugin that can zero: "
                  "use zeromode=emulate", zero_names[zeromode]);
    return -1;
  }
  return 0;
}

static int
nozero_can_zero (nbdkit_next *next, void *handle)
{
  switch (zeromode) {
  case ZERO_NONE:
    return NBDKIT_ZERO_NONE;
  case ZERO_EMULATE:
    return NBDKIT_ZERO_EMULATE;
  default:
    return next->can_zero (next);
  }
}

/* Without zero support the answer is never shown to the client. */
static int
nozero_can_fast_zero (nbdkit_next *next, void *handle)
{
  if (zeromode == ZERO_NONE)
    return 1;
  if (fastzeromode == FAST_DEFAULT && zeromode != ZERO_EMULATE)
    return next->can_fast_zero (next);
  return fastzeromode != FAST_NONE;
}

/* Called for notrim and plugin only: with emulate the server writes
 * the zeroes through the layer below's pwrite itself, and fails fast
 * zeroes at once (nbdkit-filter(3)).
 */
static int
nozero_zero (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  if (flags & NBDKIT_FLAG_FAST_ZERO) {
    if (fastzeromode == FAST_SLOW) {
      *err = ENOTSUP;
      return -1;
    }
    if (fastzeromode == FAST_IGNORE)
      flags &= ~NBDKIT_FLAG_FAST_ZERO;
  }
  if (zeromode == ZERO_NOTRIM)
    flags &= ~NBDKIT_FLAG_MAY_TRIM;
  return next->zero (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "nozero",
  .longname = "nbdsrv nozero filter",
  .config = nozero_config,
  .config_help = nozero_config_help,
  .prepare = nozero_prepare,
  .can_zero = nozero_can_zero,
  .can_fast_zero = nozero_can_fast_zero,
  .zero = nozero_zero,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv fua filter: change how Forced Unit Access and flush reach
 * the plugin, to compare FUA with flushes, to test fallbacks, or (at
 * the price of safety) to drop them for speed.
 */
#include <stdbool.h>
#include <string.h>

#include <nbdkit-filter.h>

enum fua_mode {
  FUA_MODE_NONE,                /* FUA not offered to the client */
  FUA_MODE_EMULATE,             /* FUA done by a flush after the write */
  FUA_MODE_NATIVE,              /* FUA offered as native, passed down */
  FUA_MODE_FORCE,               /* every write FUA, flush a no-op */
  FUA_MODE_PASS,                /* no change */
  FUA_MODE_DISCARD,             /* FUA and flush dropped: unsafe */
};

static const char *const mode_names[] = {
  [FUA_MODE_NONE] = "none", [FUA_MODE_EMULATE] = "emulate",
  [FUA_MODE_NATIVE] = "native", [FUA_MODE_FORCE] = "force",
  [FUA_MODE_PASS] = "pass", [FUA_MODE_DISCARD] = "discard",
};

static enum fua_mode fuamode = FUA_MODE_NONE;

/* nbdkit 1.32 refuses fuamode=none although its manual documents it
 * as the default's name; we accept it.
 */
static int
fua_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  size_t i;

  if (strcmp (key, "fuamode") != 0)
    return next (nxdata, key, value);
  for (i = 0; i < sizeof mode_names / sizeof mode_names[0]; i++) {
    if (strcmp (value, mode_names[i]) == 0) {
      fuamode = i;
      return 0;
    }
  }
  nbdkit_error ("fua: unknown fuamode '%s': use none, emulate, native, "
                "force, pass or discard", value);
  return -1;
}

#define fua_config_help \
  "fuamode=<MODE>       One of 'none' (default), 'emulate', 'native',\n" \
  "                     'force', 'pass', 'discard'."

/* emulate needs a flush below; native and force need FUA below. */
static int
fua_prepare (nbdkit_next *next, void *handle, int readonly)
{
  int r;

  switch (fuamode) {
  case FUA_MODE_EMULATE:
    r = next->can_flush (next);
    if (r == -1)
      return -1;
    if (r == 0) {
      nbdkit_error ("fua: fuamode 'emulate' needs a plugin that can "
                    "flush: use fuamode=none");
      return -1;
    }
    return 0;
  case FUA_MODE_NATIVE:
  case FUA_MODE_FORCE:
    r = next->can_fua (next);
    if (r == -1)
      return -1;
    if (r == NBDKIT_FUA_NONE) {
      nbdkit_error ("fua: fuamode '%s' needs a plugin that supports FUA: "
                    "use fuamode=none", mode_names[fuamode]);
      return -1;
    }
    return 0;
  default:
    return 0;
  }
}

/* force and discard answer flushes themselves. */
static int
fua_can_flush (nbdkit_next *next, void *handle)
{
  if (fuamode == FUA_MODE_FORCE || fuamode == FUA_MODE_DISCARD)
    return 1;
  return next->can_flush (next);
}

static int
fua_can_fua (nbdkit_next *next, void *handle)
{
  switch (fuamode) {
  case FUA_MODE_NONE:
    return NBDKIT_FUA_NONE;
  case FUA_MODE_EMULATE:
    return NBDKIT_FUA_EMULATE;
  case FUA_MODE_PASS:
    return next->can_fua (next);
  default:
    return NBDKIT_FUA_NATIVE;
  }
}

/* The flags to send below for a write-like request with FLAGS, and
 * whether a flush must follow it.
 */
static uint32_t
fua_flags (uint32_t flags, bool *flush_after)
{
  *flush_after = false;
  switch (fuamode) {
  case FUA_MODE_EMULATE:
    *flush_after = (flags & NBDKIT_FLAG_FUA) != 0;
    return flags & ~NBDKIT_FLAG_FUA;
  case FUA_MODE_FORCE:
    return flags | NBDKIT_FLAG_FUA;
  case FUA_MODE_NATIVE:
  case FUA_MODE_PASS:
    return flags;
  default:
    /* none: the client cannot send FUA; discard drops it. */
    return flags & ~NBDKIT_FLAG_FUA;
  }
}

static int
fua_pwrite (nbdkit_next *next, void *handle, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  bool flush_after;

  flags = fua_flags (flags, &flush_after);
  if (next->pwrite (next, buf, count, offset, flags, err) == -1)
    return -1;
  return flush_after ? next->flush (next, 0, err) : 0;
}

static int
fua_trim (nbdkit_next *next, void *handle, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  bool flush_after;

  flags = fua_flags (flags, &flush_after);
  if (next->trim (next, count, offset, flags, err) == -1)
    return -1;
  return flush_after ? next->flush (next, 0, err) : 0;
}

static int
fua_zero (nbdkit_next *next, void *handle, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  bool flush_after;

  flags = fua_flags (flags, &flush_after);
  if (next->zero (next, count, offset, flags, err) == -1)
    return -1;
  return flush_after ? next->flush (next, 0, err) : 0;
}

/* With force every write was already durable; discard drops flushes. */
static int
fua_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  if (fuamode == FUA_MODE_FORCE || fuamode == FUA_MODE_DISCARD)
    return 0;
  return next->flush (next, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "fua",
  .longname = "nbdsrv fua filter",
  .config = fua_config,
  .config_help = fua_config_help,
  .prepare = fua_prepare,
  .can_flush = fua_can_flush,
  .can_fua = fua_can_fua,
  .pwrite = fua_pwrite,
  .trim = fua_trim,
  .zero = fua_zero,
  .flush = fua_flush,
};

NBDKIT_REGISTER_FILTER (filter)

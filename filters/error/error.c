/* nbdsrv error filter: fail chosen requests on purpose, at a chosen
 * rate, with a chosen errno, optionally only while a trigger file
 * exists.  Clients use it to test their error paths.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "splitmix.h"

/* The commands that can be made to fail, in the order of their
 * parameter names error-pread-*, error-pwrite-*, ...
 */
enum error_cmd {
  CMD_PREAD, CMD_PWRITE, CMD_TRIM, CMD_ZERO, CMD_EXTENTS, CMD_CACHE,
  CMD_COUNT
};

static const char *const error_cmd_names[CMD_COUNT] = {
  "pread", "pwrite", "trim", "zero", "extents", "cache",
};

struct error_setting {
  int error;                    /* errno sent to the client */
  double rate;                  /* 0 (never) .. 1 (always) */
  char *file;                   /* owned; inject only while it exists */
};

static struct error_setting settings[CMD_COUNT];

/* The only errors the NBD protocol can carry (S-errors in the spec). */
static const struct { const char *name; int value; } error_names[] = {
  { "EPERM", EPERM }, { "EIO", EIO }, { "ENOMEM", ENOMEM },
  { "EINVAL", EINVAL }, { "ENOSPC", ENOSPC }, { "ESHUTDOWN", ESHUTDOWN },
};
#define N_ERROR_NAMES (sizeof error_names / sizeof error_names[0])

/* The generator's state: one atomic add per draw keeps it thread-safe
 * without a lock.
 */
static _Atomic uint64_t error_random_state;

static void
error_load (void)
{
  for (int i = 0; i < CMD_COUNT; ++i)
    settings[i].error = EIO;
  atomic_store (&error_random_state,
                (uint64_t) time (NULL) ^ ((uint64_t) getpid () << 32));
}

static void
error_unload (void)
{
  for (int i = 0; i < CMD_COUNT; ++i)
    free (settings[i].file);
}

static const char *
error_name (int err)
{
  for (size_t i = 0; i < N_ERROR_NAMES; ++i)
    if (error_names[i].value == err)
      return error_names[i].name;
  return "EIO";
}

static int
error_parse_errno (const char *key, const char *value, int *r)
{
  for (size_t i = 0; i < N_ERROR_NAMES; ++i) {
    if (strcmp (value, error_names[i].name) == 0) {
      *r = error_names[i].value;
      return 0;
    }
  }
  nbdkit_error ("error: %s: unknown error name '%s': use one of EPERM, "
                "EIO, ENOMEM, EINVAL, ENOSPC, ESHUTDOWN", key, value);
  return -1;
}

/* A rate is a probability 0..1 or a percentage 0%..100%. */
static int
error_parse_rate (const char *key, const char *value, double *r)
{
  char *end;
  double d;

  errno = 0;
  d = strtod (value, &end);
  if (errno != 0 || end == value
      || (*end != '\0' && strcmp (end, "%") != 0)) {
    nbdkit_error ("error: %s: could not parse rate '%s': give a "
                  "probability such as 0.25 or a percentage such as 25%%",
                  key, value);
    return -1;
  }
  if (*end == '%')
    d /= 100.0;
  if (!(d >= 0.0 && d <= 1.0)) {
    nbdkit_error ("error: %s: rate out of range: '%s' parsed as %g: "
                  "give 0..1 or 0%%..100%%", key, value, d);
    return -1;
  }
  *r = d;
  return 0;
}

static int
error_set_file (struct error_setting *s, const char *value)
{
  char *copy = strdup (value);

  if (copy == NULL) {
    nbdkit_error ("error: strdup: %m");
    return -1;
  }
  free (s->file);
  s->file = copy;
  return 0;
}

/* Apply one "error", "error-rate" or "error-file" (SUFFIX is "",
 * "-rate" or "-file") to the commands from FIRST to LAST.
 */
static int
error_apply (const char *key, const char *suffix, const char *value,
             int first, int last)
{
  int err;
  double rate;

  if (*suffix == '\0') {
    if (error_parse_errno (key, value, &err) == -1)
      return -1;
    for (int i = first; i <= last; ++i)
      settings[i].error = err;
    return 0;
  }
  if (strcmp (suffix, "-rate") == 0) {
    if (error_parse_rate (key, value, &rate) == -1)
      return -1;
    for (int i = first; i <= last; ++i)
      settings[i].rate = rate;
    return 0;
  }
  for (int i = first; i <= last; ++i)
    if (error_set_file (&settings[i], value) == -1)
      return -1;
  return 0;
}

static int
error_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  const char *rest;
  size_t n;

  if (strncmp (key, "error", 5) != 0)
    return next (nxdata, key, value);
  rest = key + 5;
  if (*rest == '\0' || strcmp (rest, "-rate") == 0
      || strcmp (rest, "-file") == 0)
    return error_apply (key, rest, value, 0, CMD_COUNT - 1);
  if (*rest++ != '-')
    return next (nxdata, key, value);
  for (int i = 0; i < CMD_COUNT; ++i) {
    n = strlen (error_cmd_names[i]);
    if (strncmp (rest, error_cmd_names[i], n) != 0)
      continue;
    if (rest[n] == '\0' || strcmp (rest + n, "-rate") == 0
        || strcmp (rest + n, "-file") == 0)
      return error_apply (key, rest + n, value, i, i);
  }
  return next (nxdata, key, value);
}

#define error_config_help \
  "error=EPERM|EIO|ENOMEM|EINVAL|ENOSPC|ESHUTDOWN\n" \
  "                               The error indication to return.\n" \
  "error-rate=0%..100%            Rate of errors to generate.\n" \
  "error-file=TRIGGER             Set trigger filename.\n" \
  "error-pread*, error-pwrite*, error-trim*, error-zero*, error-extents*,\n" \
  "error-cache*                   Apply settings only to read/write/etc"

/* Should this request of command CMD fail?  If so set *ERR. */
static int
error_inject (enum error_cmd cmd, int *err)
{
  const struct error_setting *s = &settings[cmd];
  uint64_t draw;

  if (s->rate <= 0)
    return 0;
  if (s->file && access (s->file, F_OK) == -1)
    return 0;
  if (s->rate < 1) {
    draw = splitmix_mix (atomic_fetch_add (&error_random_state,
                                           SPLITMIX_GOLDEN));
    /* 53 random bits make a uniform double in [0, 1). */
    if ((double) (draw >> 11) / (double) (UINT64_C (1) << 53) >= s->rate)
      return 0;
  }
  nbdkit_error ("injecting %s error into %s", error_name (s->error),
                error_cmd_names[cmd]);
  *err = s->error;
  return 1;
}

static int
error_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  if (error_inject (CMD_PREAD, err))
    return -1;
  return next->pread (next, buf, count, offset, flags, err);
}

static int
error_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (error_inject (CMD_PWRITE, err))
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
error_trim (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  if (error_inject (CMD_TRIM, err))
    return -1;
  return next->trim (next, count, offset, flags, err);
}

static int
error_zero (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  if (error_inject (CMD_ZERO, err))
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static int
error_extents (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  if (error_inject (CMD_EXTENTS, err))
    return -1;
  return next->extents (next, count, offset, flags, extents, err);
}

static int
error_cache (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  if (error_inject (CMD_CACHE, err))
    return -1;
  return next->cache (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "error",
  .longname = "nbdsrv error filter",
  .load = error_load,
  .unload = error_unload,
  .config = error_config,
  .config_help = error_config_help,
  .pread = error_pread,
  .pwrite = error_pwrite,
  .trim = error_trim,
  .zero = error_zero,
  .extents = error_extents,
  .cache = error_cache,
};

NBDKIT_REGISTER_FILTER (filter)

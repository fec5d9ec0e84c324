/* nbdsrv random plugin: a disk of reproducible pseudo-random bytes
 * (docs/nbdkit-random-plugin.md).
 *
 * Nothing is stored.  Each 8-byte word of the disk is a hash of the
 * seed and the word's index, so any range can be produced directly,
 * every connection sees the same bytes, and a write can be checked by
 * recomputing what is there.  The bytes differ from nbdkit's: matching
 * them would mean reproducing its generator, which we do not copy.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "splitmix.h"

static int64_t size = 0;        /* nbdkit 1.32 also defaults to 0 */
static uint32_t seed;
static int seed_given;

/* Fill BUF with the disk bytes at [OFFSET, OFFSET+COUNT): the disk is
 * the splitmix64 stream keyed by the mixed seed.
 */
static void
random_fill (unsigned char *buf, uint32_t count, uint64_t offset)
{
  splitmix_fill (buf, count, offset, splitmix_mix (seed));
}

static int
random_config (const char *key, const char *value)
{
  if (strcmp (key, "size") == 0) {
    size = nbdkit_parse_size (value);
    return size == -1 ? -1 : 0;
  }
  if (strcmp (key, "seed") == 0) {
    if (nbdkit_parse_uint32_t ("seed", value, &seed) == -1)
      return -1;
    seed_given = 1;
    return 0;
  }
  nbdkit_error ("unknown parameter '%s': the random plugin takes size= "
                "and seed=", key);
  return -1;
}

static int
random_config_complete (void)
{
  /* Without seed= every run differs, as documented. */
  if (!seed_given)
    seed = (uint32_t) time (NULL) ^ (uint32_t) getpid ();
  nbdkit_debug ("random: seed=%" PRIu32, seed);
  return 0;
}

#define random_config_help \
  "[size=]<SIZE>  Size of the disk (default 0).\n" \
  "seed=<SEED>    Seed (0..4294967295) for the same disk on every run."

static void *
random_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
random_get_size (void *handle)
{
  return size;
}

/* Nothing is stored, so every connection sees the same disk. */
static int
random_can_multi_conn (void *handle)
{
  return 1;
}

static int
random_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

static int
random_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return 0;
}

static int
random_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  random_fill (buf, count, offset);
  return 0;
}

/* A write is accepted only if it writes what is already there, which
 * lets "nbdcopy $uri $uri" check a copying tool.
 */
static int
random_pwrite (void *handle, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags)
{
  const unsigned char *in = buf;
  unsigned char expected[4096];
  uint32_t n;

  while (count > 0) {
    n = count < sizeof expected ? count : sizeof expected;
    random_fill (expected, n, offset);
    if (memcmp (in, expected, n) != 0) {
      nbdkit_error ("write at offset %" PRIu64 " does not match the random "
                    "data already there: this disk only accepts writes of "
                    "what it reads", offset);
      errno = EIO;
      return -1;
    }
    in += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* The disk has no zero areas (in practice), so zeroing always fails. */
static int
random_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  nbdkit_error ("cannot trim or zero %" PRIu32 " bytes at offset %" PRIu64
                ": a random disk has no zero areas", count, offset);
  errno = EIO;
  return -1;
}

static int
random_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return random_zero (handle, count, offset, flags);
}

static struct nbdkit_plugin plugin = {
  .name              = "random",
  .longname          = "nbdsrv random plugin",
  .version           = "0.1.0",
  .config            = random_config,
  .config_complete   = random_config_complete,
  .config_help       = random_config_help,
  .magic_config_key  = "size",
  .open              = random_open,
  .get_size          = random_get_size,
  .can_multi_conn    = random_can_multi_conn,
  .can_cache         = random_can_cache,
  .cache             = random_cache,
  .pread             = random_pread,
  .pwrite            = random_pwrite,
  .trim              = random_trim,
  .zero              = random_zero,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

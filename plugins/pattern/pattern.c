/* nbdsrv pattern plugin: a read-only disk whose content is its offset.
 *
 * Every 8-byte aligned word holds its own byte offset as a big-endian
 * 64-bit integer, so any byte can be checked without a reference copy:
 * the byte at offset o is byte (o % 8) of the big-endian encoding of
 * o rounded down to a multiple of 8.  If the size is not a multiple of
 * 8 the last word is cut short.  Without size= the disk is empty,
 * which is what nbdkit 1.32 does too.
 */

#include <stdint.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "size-param.h"

static int64_t size = 0;        /* virtual disk size */

static int
pattern_config (const char *key, const char *value)
{
  return size_param_config (key, value, &size);
}

#define pattern_config_help \
  "size=<SIZE>              Virtual size of the disk (default 0)."

static void *
pattern_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
pattern_get_size (void *handle)
{
  return size;
}

static int
pattern_can_multi_conn (void *handle)
{
  return 1;
}

/* The content is computed, so there is nothing to cache. */
static int
pattern_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

/* Store WORD big-endian in OUT[0..7]. */
static inline void
pattern_put_be64 (unsigned char *out, uint64_t word)
{
  int i;

  for (i = 7; i >= 0; --i) {
    out[i] = word & 0xff;
    word >>= 8;
  }
}

static int
pattern_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  unsigned char *out = buf;
  unsigned char word[8];
  uint64_t base;
  uint32_t skip, n;

  /* A leading partial word, so that the loop below is aligned. */
  skip = offset & 7;
  if (skip != 0 && count > 0) {
    base = offset - skip;
    pattern_put_be64 (word, base);
    n = 8 - skip;
    if (n > count)
      n = count;
    memcpy (out, word + skip, n);
    out += n;
    offset += n;
    count -= n;
  }

  while (count >= 8) {
    pattern_put_be64 (out, offset);
    out += 8;
    offset += 8;
    count -= 8;
  }

  if (count > 0) {
    pattern_put_be64 (word, offset);
    memcpy (out, word, count);
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "pattern",
  .longname          = "nbdsrv fixed pattern plugin",
  .version           = "0.1.0",
  .config            = pattern_config,
  .config_help       = pattern_config_help,
  .magic_config_key  = "size",
  .open              = pattern_open,
  .get_size          = pattern_get_size,
  .can_multi_conn    = pattern_can_multi_conn,
  .can_cache         = pattern_can_cache,
  .pread             = pattern_pread,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

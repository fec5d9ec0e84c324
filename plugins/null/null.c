/* nbdsrv null plugin: a bit bucket.
 *
 * Writes are accepted and dropped, reads return zeroes, and block
 * status reports the whole disk as a hole.  The size is optional and
 * defaults to 0, as with nbdkit's null plugin.
 */

#include <stdint.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "size-param.h"

static int64_t size = 0;        /* virtual disk size */

static int
null_config (const char *key, const char *value)
{
  return size_param_config (key, value, &size);
}

#define null_config_help \
  "size=<SIZE>              Virtual size of the disk (default 0)."

static void *
null_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
null_get_size (void *handle)
{
  return size;
}

/* Nothing is ever stored, so every request is already durable, a zero
 * is free, and all connections see the same (empty) content.
 */
static int
null_can_fast_zero (void *handle)
{
  return 1;
}

static int
null_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
null_can_multi_conn (void *handle)
{
  return 1;
}

static int
null_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

static int
null_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  memset (buf, 0, count);
  return 0;
}

static int
null_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  return 0;
}

static int
null_flush (void *handle, uint32_t flags)
{
  return 0;
}

static int
null_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return 0;
}

static int
null_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return 0;
}

/* Like nbdkit's null plugin, describe the hole from OFFSET right to
 * the end of the disk, which saves the client further requests; the
 * length is capped at 32 bits because nbdkit 1.32's server aborts on
 * some longer extents.
 */
static int
null_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
              struct nbdkit_extents *extents)
{
  uint64_t length = size - offset;

  if (length > UINT32_MAX)
    length = UINT32_MAX;
  return nbdkit_add_extent (extents, offset, length,
                            NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
}

static struct nbdkit_plugin plugin = {
  .name              = "null",
  .longname          = "nbdsrv null plugin",
  .version           = "0.1.0",
  .config            = null_config,
  .config_help       = null_config_help,
  .magic_config_key  = "size",
  .open              = null_open,
  .get_size          = null_get_size,
  .can_fast_zero     = null_can_fast_zero,
  .can_fua           = null_can_fua,
  .can_multi_conn    = null_can_multi_conn,
  .can_cache         = null_can_cache,
  .pread             = null_pread,
  .pwrite            = null_pwrite,
  .flush             = null_flush,
  .trim              = null_trim,
  .zero              = null_zero,
  .extents           = null_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

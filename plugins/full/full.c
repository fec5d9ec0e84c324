/* nbdsrv full plugin: a disk that has run out of space.
 *
 * Reads return zeroes and block status reports a hole, but every write
 * and trim fails with ENOSPC, like a thin-provisioned disk whose host
 * is full.  There is no zero callback: the server then emulates zero
 * with pwrite, which fails with ENOSPC too, and answers fast zero
 * requests with ENOTSUP, exactly as nbdkit does with its full plugin.
 */

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "size-param.h"

static int64_t size = -1;       /* virtual disk size, -1 = unset */

static int
full_config (const char *key, const char *value)
{
  return size_param_config (key, value, &size);
}

static int
full_config_complete (void)
{
  if (size == -1) {
    nbdkit_error ("size=<SIZE> is required: for example 'full 1G'");
    return -1;
  }
  return 0;
}

#define full_config_help \
  "size=<SIZE>   (required) Virtual size of the disk."

static void *
full_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
full_get_size (void *handle)
{
  return size;
}

static int
full_can_multi_conn (void *handle)
{
  return 1;
}

static int
full_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

static int
full_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  memset (buf, 0, count);
  return 0;
}

/* Failing with ENOSPC is the purpose of the plugin, so there is no
 * error message to log: the client sees the errno.
 */
static int
full_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  nbdkit_set_error (ENOSPC);
  return -1;
}

static int
full_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  nbdkit_set_error (ENOSPC);
  return -1;
}

/* As nbdkit's full plugin does, describe the hole from OFFSET right to
 * the end of the disk; the length is capped at 32 bits because nbdkit
 * 1.32's server aborts on some longer extents.
 */
static int
full_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
              struct nbdkit_extents *extents)
{
  uint64_t length = size - offset;

  if (length > UINT32_MAX)
    length = UINT32_MAX;
  return nbdkit_add_extent (extents, offset, length,
                            NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
}

static struct nbdkit_plugin plugin = {
  .name              = "full",
  .longname          = "nbdsrv always-full plugin",
  .version           = "0.1.0",
  .config            = full_config,
  .config_complete   = full_config_complete,
  .config_help       = full_config_help,
  .magic_config_key  = "size",
  .open              = full_open,
  .get_size          = full_get_size,
  .can_multi_conn    = full_can_multi_conn,
  .can_cache         = full_can_cache,
  .pread             = full_pread,
  .pwrite            = full_pwrite,
  .trim              = full_trim,
  .extents           = full_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

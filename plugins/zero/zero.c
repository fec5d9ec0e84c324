/* nbdsrv zero plugin: an empty, read-only disk of size 0.
 *
 * It takes no parameters at all (like nbdkit's, it has no config
 * callback, so the server rejects any), and exists to exercise the
 * corner case of a zero-length export in servers and clients.
 */

#include <stdint.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

static void *
zero_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
zero_get_size (void *handle)
{
  return 0;
}

static int
zero_can_multi_conn (void *handle)
{
  return 1;
}

/* There is nothing to fetch, so caching is trivially done. */
static int
zero_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

/* Never called for a size 0 disk; kept so the plugin is complete. */
static int
zero_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  memset (buf, 0, count);
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "zero",
  .longname          = "nbdsrv zero length plugin",
  .version           = "0.1.0",
  .open              = zero_open,
  .get_size          = zero_get_size,
  .can_multi_conn    = zero_can_multi_conn,
  .can_cache         = zero_can_cache,
  .pread             = zero_pread,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

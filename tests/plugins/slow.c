/* Test plugin: a null disk whose writes take delay-ms milliseconds, so
 * that many requests are in flight at once (tests/integration/
 * test_limits.py).  Writes are discarded; reads return zeroes.
 */
#include <stdint.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

static int64_t size = 1 << 30;
static unsigned delay_ms = 200;

static int
slow_config (const char *key, const char *value)
{
  if (strcmp (key, "size") == 0) {
    size = nbdkit_parse_size (value);
    return size == -1 ? -1 : 0;
  }
  if (strcmp (key, "delay-ms") == 0)
    return nbdkit_parse_unsigned ("delay-ms", value, &delay_ms);
  nbdkit_error ("unknown parameter '%s'", key);
  return -1;
}

static void *
slow_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
slow_get_size (void *handle)
{
  return size;
}

static int
slow_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  memset (buf, 0, count);
  return 0;
}

static int
slow_pwrite (void *handle, const void *buf, uint32_t count,
             uint64_t offset, uint32_t flags)
{
  return nbdkit_nanosleep (delay_ms / 1000, delay_ms % 1000 * 1000000);
}

static struct nbdkit_plugin plugin = {
  .name = "slow",
  .config = slow_config,
  .open = slow_open,
  .get_size = slow_get_size,
  .pread = slow_pread,
  .pwrite = slow_pwrite,
};

NBDKIT_REGISTER_PLUGIN (plugin)

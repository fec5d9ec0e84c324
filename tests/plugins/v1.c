/* Test plugin: the plugin API as it was first published (version 1).
 *
 * NBDKIT_API_VERSION is deliberately left undefined, so the header
 * chooses version 1: data callbacks without flags, zero with may_trim.
 * A 1 MiB RAM disk; trim and zero clear bytes, and flush counts, so a
 * test sees each callback was reached through the v1 slots.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <nbdkit-plugin.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS
#define DISK_SIZE (1024 * 1024)

static unsigned char disk[DISK_SIZE];
static unsigned flushes;

static void *
v1_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
v1_get_size (void *handle)
{
  return DISK_SIZE;
}

static int
v1_pread (void *handle, void *buf, uint32_t count, uint64_t offset)
{
  /* The first bytes report the flush count, for the test to read. */
  memcpy (buf, disk + offset, count);
  if (offset == 0 && count >= 16)
    snprintf (buf, 16, "flushes=%05u", flushes);
  return 0;
}

static int
v1_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset)
{
  memcpy (disk + offset, buf, count);
  return 0;
}

static int
v1_flush (void *handle)
{
  flushes++;
  return 0;
}

static int
v1_trim (void *handle, uint32_t count, uint64_t offset)
{
  memset (disk + offset, 0, count);
  return 0;
}

static int
v1_zero (void *handle, uint32_t count, uint64_t offset, int may_trim)
{
  memset (disk + offset, 0, count);
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "v1",
  .version = "1.0",
  .open = v1_open,
  .get_size = v1_get_size,
  .pread = v1_pread,
  .pwrite = v1_pwrite,
  .flush = v1_flush,
  .trim = v1_trim,
  .zero = v1_zero,
};

NBDKIT_REGISTER_PLUGIN (plugin)

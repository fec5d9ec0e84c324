/* Test plugin: three exports of different sizes, with descriptions.
 *
 * .list_exports offers alpha, beta and gamma with "listed" descriptions,
 * .default_export names beta, and .export_description answers a
 * different "opened" text, so a test can tell which callback produced
 * what a client sees.  The size of an export is its position (1, 2 or
 * 3 MiB), and its data is the name nbdkit_export_name returned in
 * .open, NUL-padded, so a read shows which export was reached.
 */
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static const char *const names[] = { "alpha", "beta", "gamma" };
static const char *const listed[] = {
  "the first export", "the second export (default)", "the third export",
};

struct handle {
  int index;                    /* into names */
  char name[64];                /* nbdkit_export_name () in .open */
};

static int
ex_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  for (int i = 0; i < 3; i++)
    if (nbdkit_add_export (exports, names[i], listed[i]) == -1)
      return -1;
  return 0;
}

static const char *
ex_default_export (int readonly, int is_tls)
{
  return "beta";
}

static void *
ex_open (int readonly)
{
  const char *name = nbdkit_export_name ();
  struct handle *h;

  if (name == NULL)
    return NULL;
  for (int i = 0; i < 3; i++) {
    if (strcmp (name, names[i]) != 0)
      continue;
    h = calloc (1, sizeof *h);
    if (h == NULL) {
      nbdkit_error ("calloc: %m");
      return NULL;
    }
    h->index = i;
    strncpy (h->name, name, sizeof h->name - 1);
    return h;
  }
  nbdkit_error ("no export called '%s': try alpha, beta or gamma", name);
  return NULL;
}

static void
ex_close (void *handle)
{
  free (handle);
}

static const char *
ex_export_description (void *handle)
{
  struct handle *h = handle;

  return nbdkit_printf_intern ("%s, opened as '%s'", listed[h->index],
                               h->name);
}

static int64_t
ex_get_size (void *handle)
{
  struct handle *h = handle;

  return (int64_t) (h->index + 1) << 20;
}

static int
ex_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  struct handle *h = handle;
  size_t len = strlen (h->name);

  memset (buf, 0, count);
  if (offset < len)
    memcpy (buf, h->name + offset, len - offset < count ? len - offset
            : count);
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "exports",
  .list_exports = ex_list_exports,
  .default_export = ex_default_export,
  .open = ex_open,
  .close = ex_close,
  .export_description = ex_export_description,
  .get_size = ex_get_size,
  .pread = ex_pread,
};

NBDKIT_REGISTER_PLUGIN (plugin)

/* nbdsrv: export lists built by .list_exports (NBD_OPT_LIST).
 *
 * The list is filled by plugin code and sent to a client, so the
 * limits that keep a reply sendable are enforced here, when the plugin
 * adds an entry, where the message can name the offending export.
 */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* NBD limits names and descriptions to 4096 bytes; a plugin producing
 * more than MAX_EXPORTS entries is almost certainly looping, and the
 * reply would take minutes for a client to read.
 */
#define MAX_EXPORT_STRING 4096
#define MAX_EXPORTS 10000

_Static_assert (sizeof (struct export_entry) == sizeof (struct nbdkit_export)
                && offsetof (struct export_entry, description)
                   == offsetof (struct nbdkit_export, description),
                "export_entry must keep nbdkit_export's layout");

/* Logs its own failure, so callers only propagate NULL. */
struct nbdkit_exports *
exports_new (void)
{
  struct nbdkit_exports *exports;

  exports = calloc (1, sizeof *exports);
  if (exports == NULL)
    nbdkit_error ("cannot allocate the export list: %m");
  return exports;
}

void
exports_free (struct nbdkit_exports *exports)
{
  size_t i;

  if (exports == NULL)
    return;
  for (i = 0; i < exports->len; ++i) {
    free (exports->ptr[i].name);
    free (exports->ptr[i].description);
  }
  free (exports->ptr);
  free (exports);
}

struct nbdkit_exports *
nbdkit_exports_new (void)
{
  return exports_new ();
}

void
nbdkit_exports_free (struct nbdkit_exports *exports)
{
  exports_free (exports);
}

size_t
nbdkit_exports_count (const struct nbdkit_exports *exports)
{
  return exports->len;
}

/* The strings stay owned by the list: the caller copies them if it
 * needs them after nbdkit_exports_free.
 */
struct nbdkit_export
nbdkit_get_export (const struct nbdkit_exports *exports, size_t i)
{
  struct nbdkit_export e;

  assert (i < exports->len);
  e.name = exports->ptr[i].name;
  e.description = exports->ptr[i].description;
  return e;
}

/* Makes room for one more entry, doubling the array. */
static int
exports_reserve (struct nbdkit_exports *exports)
{
  struct export_entry *p;
  size_t cap;

  if (exports->len < exports->cap)
    return 0;
  cap = exports->cap ? exports->cap * 2 : 16;
  if (cap > MAX_EXPORTS)
    cap = MAX_EXPORTS;
  p = reallocarray (exports->ptr, cap, sizeof *p);
  if (p == NULL) {
    nbdkit_error ("nbdkit_add_export: cannot grow the export list: %m");
    return -1;
  }
  exports->ptr = p;
  exports->cap = cap;
  return 0;
}

static int
check_export_strings (const char *name, const char *description)
{
  size_t len;

  if (name == NULL) {
    nbdkit_error ("nbdkit_add_export: export name is NULL: "
                  "use \"\" for the default export");
    return -1;
  }
  len = strlen (name);
  if (len > MAX_EXPORT_STRING) {
    nbdkit_error ("nbdkit_add_export: export name \"%.32s...\" is %zu "
                  "bytes, the NBD limit is %d: shorten it",
                  name, len, MAX_EXPORT_STRING);
    return -1;
  }
  if (description && (len = strlen (description)) > MAX_EXPORT_STRING) {
    nbdkit_error ("nbdkit_add_export: description of export \"%s\" is "
                  "%zu bytes, the NBD limit is %d: shorten it",
                  name, len, MAX_EXPORT_STRING);
    return -1;
  }
  return 0;
}

int
nbdkit_add_export (struct nbdkit_exports *exports,
                   const char *name, const char *description)
{
  struct export_entry e = { NULL, NULL };

  if (check_export_strings (name, description) == -1) {
    errno = EINVAL;
    return -1;
  }
  if (exports->len >= MAX_EXPORTS) {
    nbdkit_error ("nbdkit_add_export: cannot add export \"%s\": the list "
                  "already has %d exports, the most nbdsrv will send",
                  name, MAX_EXPORTS);
    errno = E2BIG;
    return -1;
  }
  if (exports_reserve (exports) == -1)
    return -1;

  e.name = strdup (name);
  if (e.name == NULL)
    goto out_nomem;
  if (description) {
    e.description = strdup (description);
    if (e.description == NULL)
      goto out_free_name;
  }
  exports->ptr[exports->len++] = e;
  return 0;

 out_free_name:
  free (e.name);
 out_nomem:
  nbdkit_error ("nbdkit_add_export: strdup: %m");
  return -1;
}

/* The default export's name is only known once .default_export has
 * been asked, which the caller of .list_exports does afterwards.
 */
int
nbdkit_use_default_export (struct nbdkit_exports *exports)
{
  exports->use_default = true;
  return 0;
}

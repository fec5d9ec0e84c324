/* nbdsrv: parsing allocator= and opening the store it names
 * (allocator.h).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-plugin.h>

#include "allocator.h"

/* One KEY[=VALUE] of a malloc allocator; a KEY alone means KEY=1, as
 * in nbdkit.
 */
static int
allocator_malloc_param (const char *item, struct allocator_spec *spec)
{
  const char *eq = strchr (item, '=');
  size_t key_len = eq ? (size_t) (eq - item) : strlen (item);
  const char *value = eq ? eq + 1 : "1";
  int b;

  nbdkit_debug ("allocator parameter: %.*s=%s", (int) key_len, item, value);
  if (key_len != 5 || strncmp (item, "mlock", 5) != 0) {
    nbdkit_error ("allocator=malloc: unknown parameter %.*s",
                  (int) key_len, item);
    return -1;
  }
  b = nbdkit_parse_bool (value);
  if (b == -1)
    return -1;
  spec->mlock = b;
  return 0;
}

/* The parameters after TYPE: malloc takes mlock, the others none. */
static int
allocator_params (const char *type, char *params,
                  struct allocator_spec *spec)
{
  char *item, *save = NULL;

  for (item = strtok_r (params, ",", &save); item;
       item = strtok_r (NULL, ",", &save)) {
    if (spec->kind != ALLOCATOR_MALLOC) {
      nbdkit_error ("allocator=%s does not take extra parameters", type);
      return -1;
    }
    if (allocator_malloc_param (item, spec) == -1)
      return -1;
  }
  return 0;
}

/* nbdkit 1.32 matches TYPE as a prefix of the allocator names, so that
 * "allocator=" alone, or "allocator=s", silently picks one; only the
 * names themselves are taken here (docs/nbdkit-memory-plugin.md).
 */
int
allocator_spec_parse (const char *value, struct allocator_spec *spec)
{
  size_t type_len = strcspn (value, ",");
  char *type, *params;
  int r = -1;

  type = strndup (value, type_len);
  params = strdup (value + type_len);
  if (type == NULL || params == NULL) {
    nbdkit_error ("strdup: %m");
    goto out_free;
  }
  /* Here, not first: gcc 12's -fsanitize=undefined then sees VALUE
   * as possibly NULL in the format (-Wformat-overflow).
   */
  nbdkit_debug ("allocator: %s", value);
  *spec = (struct allocator_spec) { .kind = ALLOCATOR_SPARSE };
  if (strcmp (type, "malloc") == 0)
    spec->kind = ALLOCATOR_MALLOC;
  else if (strcmp (type, "zstd") == 0)
    spec->kind = ALLOCATOR_ZSTD;
  else if (strcmp (type, "sparse") != 0)
    goto out_unknown;
  if (allocator_params (type, params, spec) == 0) {
    r = 0;
    goto out_free;
  }
 out_unknown:
  nbdkit_error ("unknown allocator \"%s\"%s", value,
                type_len == strlen (value) ?
                ": use allocator=sparse, allocator=malloc[,mlock=true] or "
                "allocator=zstd" : "");
 out_free:
  free (type);
  free (params);
  return r;
}

const struct allocator_ops *
allocator_open (const struct allocator_spec *spec, uint64_t size)
{
  switch (spec->kind) {
  case ALLOCATOR_MALLOC:
    return flat_store_open (size, spec->mlock);
  case ALLOCATOR_ZSTD:
    return zstd_store_open ();
  case ALLOCATOR_SPARSE:
    break;
  }
  abort ();                     /* the plugins keep sparse themselves */
}

/* nbdsrv: the meta contexts the server offers (§1.6) and what their
 * block status says.
 *
 * base:allocation always.  qemu:allocation-depth when a filter in the
 * stack keeps blocks of its own (cow, cache): only then is there more
 * than one layer to tell apart, and a plain plugin's clients see the
 * same list of contexts as under nbdkit.  qemu:dirty-bitmap:NAME for
 * each bitmap a filter tracks (meta-ext.h).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "protocol.h"

static bool
stack_keeps_blocks (void)
{
  for (struct nbdkit_backend *b = stack.top; !b->is_plugin; b = b->next)
    if (b->keeps_blocks)
      return true;
  return false;
}

/* The dirty-bitmap layer with context ID, or NULL. */
struct nbdkit_backend *
meta_dirty_layer (uint32_t id)
{
  uint32_t next = META_DIRTY_FIRST;

  for (struct nbdkit_backend *b = stack.top; !b->is_plugin; b = b->next) {
    if (b->dirty_name == NULL || b->dirty_name () == NULL)
      continue;
    if (next++ == id)
      return b;
  }
  return NULL;
}

/* The full names of the dirty bitmaps, kept for the server's life. */
static char dirty_names[META_MAX][NBD_MAX_STRING + 1];

size_t
meta_offered (struct meta_offer *out, size_t max)
{
  size_t n = 0;

  if (n < max)
    out[n++] = (struct meta_offer) { META_BASE_ALLOCATION,
                                     "base:allocation" };
  if (n < max && stack_keeps_blocks ())
    out[n++] = (struct meta_offer) { META_ALLOCATION_DEPTH,
                                     "qemu:allocation-depth" };
  for (uint32_t id = META_DIRTY_FIRST; id <= META_MAX && n < max; id++) {
    struct nbdkit_backend *b = meta_dirty_layer (id);
    char *name = dirty_names[id - 1];

    if (b == NULL)
      break;
    snprintf (name, sizeof dirty_names[0], "qemu:dirty-bitmap:%s",
              b->dirty_name ());
    out[n++] = (struct meta_offer) { id, name };
  }
  return n;
}

/* A query selects a context by its full name; in LIST_META_CONTEXT a
 * query ending in ':' also lists every context whose name starts with
 * it ("base:", "qemu:", "qemu:dirty-bitmap:").
 */
bool
meta_matches (const char *name, const char *query, size_t qlen, bool list)
{
  size_t nlen = strlen (name);

  if (qlen == nlen && memcmp (name, query, qlen) == 0)
    return true;
  return list && qlen > 0 && query[qlen - 1] == ':' && qlen < nlen &&
    memcmp (name, query, qlen) == 0;
}

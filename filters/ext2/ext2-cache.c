/* nbdsrv ext2 filter: the I/O manager's block cache (ext2-cache.h). */
#include <stdlib.h>
#include <string.h>

#include "ext2-cache.h"

bool
ext2_cache_get (struct ext2_cache *c, uint64_t offset, size_t len,
                void *data)
{
  size_t i;

  for (i = 0; i < EXT2_CACHE_ENTRIES; i++) {
    struct ext2_cache_entry *e = &c->e[i];

    if (len > 0 && e->len == len && e->offset == offset) {
      memcpy (data, e->buf, len);
      e->used = ++c->tick;
      return true;
    }
  }
  return false;
}

void
ext2_cache_put (struct ext2_cache *c, uint64_t offset, size_t len,
                const void *data)
{
  struct ext2_cache_entry *victim = &c->e[0];
  size_t i;
  char *buf;

  if (len == 0 || len > EXT2_CACHE_LEN_MAX)
    return;
  for (i = 1; i < EXT2_CACHE_ENTRIES; i++)
    if (c->e[i].used < victim->used)
      victim = &c->e[i];
  buf = realloc (victim->buf, len);
  if (buf == NULL) {
    free (victim->buf);
    memset (victim, 0, sizeof *victim);
    return;
  }
  memcpy (buf, data, len);
  victim->buf = buf;
  victim->offset = offset;
  victim->len = len;
  victim->used = ++c->tick;
}

void
ext2_cache_drop (struct ext2_cache *c, uint64_t offset, uint64_t len)
{
  size_t i;

  for (i = 0; i < EXT2_CACHE_ENTRIES; i++) {
    struct ext2_cache_entry *e = &c->e[i];

    if (e->len > 0 && e->offset < offset + len
        && offset < e->offset + e->len) {
      e->len = 0;
      e->used = 0;
    }
  }
}

void
ext2_cache_free (struct ext2_cache *c)
{
  size_t i;

  for (i = 0; i < EXT2_CACHE_ENTRIES; i++)
    free (c->e[i].buf);
  memset (c, 0, sizeof *c);
}

/* nbdsrv ddrescue filter: serves a disk image rescued by GNU ddrescue
 * read-only, failing reads of the parts its mapfile does not mark as
 * rescued.
 *
 * Only ranges with status '+' (finished) are readable; a read that
 * touches anything else fails with EIO, as the bad sectors of the
 * original disk would.  Adjacent good ranges are merged, so a read may
 * cross from one to the next.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

struct range {
  uint64_t start, end;          /* [start, end) */
};

/* The rescued ranges, sorted and merged after config_complete. */
static struct range *good;
static size_t nr_good, cap_good;
static const char *mapfile;     /* the last one named, for messages */

static int
ddrescue_add (uint64_t start, uint64_t size)
{
  if (nr_good == cap_good) {
    size_t cap = cap_good ? 2 * cap_good : 64;
    struct range *p = reallocarray (good, cap, sizeof (*p));
    if (p == NULL) {
      nbdkit_error ("ddrescue: realloc: %m");
      return -1;
    }
    good = p;
    cap_good = cap;
  }
  good[nr_good].start = start;
  good[nr_good].end = start + size;
  nr_good++;
  return 0;
}

/* Reads the mapfile PATH.  Lines that are not "POS SIZE STATUS" (the
 * comments and the current-position line) are skipped.
 */
static int
ddrescue_load (const char *path)
{
  FILE *fp = fopen (path, "r");
  char line[256];
  int r = 0;

  if (fp == NULL) {
    nbdkit_error ("%s: ddrescue: fopen: %m", path);
    return -1;
  }
  while (r == 0 && fgets (line, sizeof line, fp) != NULL) {
    int64_t pos, size;
    char status;

    if (line[0] == '#')
      continue;
    if (sscanf (line, "%" SCNi64 " %" SCNi64 " %c", &pos, &size,
                &status) != 3 || pos < 0 || size <= 0 ||
        pos > INT64_MAX - size)
      continue;
    if (status == '+')
      r = ddrescue_add (pos, size);
  }
  fclose (fp);
  return r;
}

static int
ddrescue_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  if (strcmp (key, "ddrescue-mapfile") == 0) {
    mapfile = value;
    return ddrescue_load (value);
  }
  return next (nxdata, key, value);
}

static int
compare_start (const void *a, const void *b)
{
  const struct range *x = a, *y = b;

  return x->start < y->start ? -1 : x->start > y->start;
}

/* Sorts the ranges and merges those that touch or overlap. */
static int
ddrescue_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  size_t i, n = 0;

  if (mapfile == NULL) {
    nbdkit_error ("ddrescue: the ddrescue-mapfile parameter is required: "
                  "add ddrescue-mapfile=FILE");
    return -1;
  }
  if (nr_good > 0)
    qsort (good, nr_good, sizeof (*good), compare_start);
  for (i = 0; i < nr_good; ++i) {
    if (n > 0 && good[i].start <= good[n - 1].end) {
      if (good[i].end > good[n - 1].end)
        good[n - 1].end = good[i].end;
    }
    else
      good[n++] = good[i];
  }
  nr_good = n;
  nbdkit_debug ("ddrescue: %zu rescued ranges", nr_good);
  return next (nxdata);
}

#define ddrescue_config_help \
  "ddrescue-mapfile=FILE   The GNU ddrescue mapfile (required)."

static void
ddrescue_unload (void)
{
  free (good);
}

static int
ddrescue_can_write (nbdkit_next *next, void *handle)
{
  return 0;
}

static int
ddrescue_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_NONE;
}

/* Whether [offset, end) lies inside one merged good range. */
static bool
ddrescue_is_good (uint64_t offset, uint64_t end)
{
  size_t lo = 0, hi = nr_good;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (good[mid].end <= offset)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < nr_good && good[lo].start <= offset && end <= good[lo].end;
}

static int
ddrescue_pread (nbdkit_next *next, void *handle, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (!ddrescue_is_good (offset, offset + count)) {
    *err = EIO;
    return -1;
  }
  return next->pread (next, buf, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "ddrescue",
  .longname = "nbdsrv ddrescue filter",
  .unload = ddrescue_unload,
  .config = ddrescue_config,
  .config_complete = ddrescue_config_complete,
  .config_help = ddrescue_config_help,
  .can_write = ddrescue_can_write,
  .can_cache = ddrescue_can_cache,
  .pread = ddrescue_pread,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv extentlist filter: answer block status from a static list of
 * extents in a file, for plugins that cannot describe their own
 * sparseness (ssh, curl) when the list can be had elsewhere.
 *
 * Each line of the file is "offset length [type]": sizes as
 * nbdkit_parse_size reads them, type a number or a comma-separated
 * list of "hole" and "zero" (missing: 0, data).  As in nbdkit, there
 * are no blank lines or comments.  Lines may come in any
 * order but must not overlap; gaps are holes that read as zeroes.  The
 * list is not updated by writes, so the filter is only safe read-only.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "minmax.h"

struct extent {
  uint64_t offset, length;
  uint32_t type;
};

static char *extentlist;        /* owned: the file's absolute path */

/* Sorted, not overlapping, gaps filled, covering [0, UINT64_MAX).
 * Owned; built before the server starts, read-only afterwards.
 */
static struct extent *extents;
static size_t nr_extents;

static void
extentlist_unload (void)
{
  free (extentlist);
  free (extents);
}

static int
extentlist_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                   const char *key, const char *value)
{
  if (strcmp (key, "extentlist") != 0)
    return next (nxdata, key, value);
  free (extentlist);
  extentlist = nbdkit_absolute_path (value);
  return extentlist == NULL ? -1 : 0;
}

#define extentlist_config_help \
  "extentlist=<FILENAME>  (required) File of extents, one per line."

static int
extentlist_append (uint64_t offset, uint64_t length, uint32_t type)
{
  struct extent *e = realloc (extents, (nr_extents + 1) * sizeof *e);

  if (e == NULL) {
    nbdkit_error ("extentlist: cannot allocate the extent list: %m");
    return -1;
  }
  extents = e;
  extents[nr_extents++] = (struct extent) { offset, length, type };
  return 0;
}

/* TYPE as a number or words; -1 if it is neither. */
static int
extentlist_parse_type (const char *word, uint32_t *type)
{
  char *copy, *tok, *save;
  int r = 0;

  if (word == NULL) {
    *type = 0;
    return 0;
  }
  if (word[0] >= '0' && word[0] <= '9')
    return nbdkit_parse_uint32_t ("type", word, type);
  copy = strdup (word);
  if (copy == NULL)
    return -1;
  *type = 0;
  for (tok = strtok_r (copy, ",", &save); tok && r == 0;
       tok = strtok_r (NULL, ",", &save)) {
    if (strcmp (tok, "hole") == 0)
      *type |= NBDKIT_EXTENT_HOLE;
    else if (strcmp (tok, "zero") == 0)
      *type |= NBDKIT_EXTENT_ZERO;
    else
      r = -1;
  }
  free (copy);
  return r;
}

static int
extentlist_parse_line (char *line, size_t lineno)
{
  char *save, *off = strtok_r (line, " \t\n", &save);
  char *len = off ? strtok_r (NULL, " \t\n", &save) : NULL;
  char *type_word = len ? strtok_r (NULL, " \t\n", &save) : NULL;
  int64_t offset, length;
  uint32_t type;

  if (len == NULL) {
    nbdkit_error ("extentlist: %s:%zu: expected \"offset length [type]\"",
                  extentlist, lineno);
    return -1;
  }
  offset = nbdkit_parse_size (off);
  if (offset == -1)
    return -1;
  length = nbdkit_parse_size (len);
  if (length == -1)
    return -1;
  /* nbdkit 1.32 ignores unknown words, so a typo changes the map
   * silently; we refuse them.
   */
  if (extentlist_parse_type (type_word, &type) == -1) {
    nbdkit_error ("extentlist: %s:%zu: cannot parse type '%s': use a "
                  "number or hole,zero", extentlist, lineno, type_word);
    return -1;
  }
  if (length == 0)
    return 0;
  return extentlist_append (offset, length, type);
}

static int
extentlist_compare (const void *a, const void *b)
{
  const struct extent *x = a, *y = b;

  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Sort, refuse overlaps, and fill the gaps (and the end) with holes. */
static int
extentlist_complete_list (void)
{
  size_t i, n = nr_extents;
  uint64_t end = 0;

  /* qsort must not be given a NULL list, even an empty one. */
  if (n > 0)
    qsort (extents, n, sizeof *extents, extentlist_compare);
  for (i = 0; i < n; i++) {
    if (extents[i].offset < end) {
      nbdkit_error ("extentlist: %s: the extents at %" PRIu64 " and %"
                    PRIu64 " overlap: fix the list", extentlist,
                    extents[i - 1].offset, extents[i].offset);
      return -1;
    }
    if (extents[i].offset > end
        && extentlist_append (end, extents[i].offset - end,
                              NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == -1)
      return -1;
    end = extents[i].offset + extents[i].length;
  }
  if (end < UINT64_MAX
      && extentlist_append (end, UINT64_MAX - end,
                            NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == -1)
    return -1;
  qsort (extents, nr_extents, sizeof *extents, extentlist_compare);
  return 0;
}

static int
extentlist_config_complete (nbdkit_next_config_complete *next,
                            nbdkit_backend *nxdata)
{
  FILE *fp;
  char *line = NULL;
  size_t cap = 0, lineno = 0;
  int r = 0;

  if (extentlist == NULL) {
    nbdkit_error ("extentlist: the extentlist parameter is required: "
                  "extentlist=FILENAME");
    return -1;
  }
  fp = fopen (extentlist, "r");
  if (fp == NULL) {
    nbdkit_error ("extentlist: cannot open %s: %m", extentlist);
    return -1;
  }
  while (r == 0 && getline (&line, &cap, fp) != -1)
    r = extentlist_parse_line (line, ++lineno);
  free (line);
  fclose (fp);
  if (r == -1 || extentlist_complete_list () == -1)
    return -1;
  return next (nxdata);
}

static int
extentlist_can_extents (nbdkit_next *next, void *handle)
{
  return 1;
}

/* Index of the extent holding OFFSET. */
static size_t
extentlist_find (uint64_t offset)
{
  size_t lo = 0, hi = nr_extents;

  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;

    if (extents[mid].offset <= offset)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

static int
extentlist_extents (nbdkit_next *next, void *handle, uint32_t count,
                    uint64_t offset, uint32_t flags,
                    struct nbdkit_extents *out, int *err)
{
  uint64_t end = offset + count;
  size_t i;

  for (i = extentlist_find (offset);
       i < nr_extents && extents[i].offset < end; i++) {
    if (nbdkit_add_extent (out, extents[i].offset, extents[i].length,
                           extents[i].type) == -1) {
      *err = errno;
      return -1;
    }
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "extentlist",
  .longname = "nbdsrv extentlist filter",
  .unload = extentlist_unload,
  .config = extentlist_config,
  .config_complete = extentlist_config_complete,
  .config_help = extentlist_config_help,
  .can_extents = extentlist_can_extents,
  .extents = extentlist_extents,
};

NBDKIT_REGISTER_FILTER (filter)

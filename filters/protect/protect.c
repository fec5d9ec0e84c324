/* nbdsrv protect filter: write-protect byte ranges of the layer below.
 *
 * protect=START-END (inclusive, either end may be left out) protects a
 * range, protect=~START-END everything outside it; the parameter may
 * be repeated.  A write, trim or zero touching a protected range is
 * allowed only if it leaves the bytes there unchanged; otherwise the
 * client gets EPERM.  Reads are never restricted.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "iszero.h"
#include "minmax.h"

/* An inclusive range of protected bytes. */
struct range {
  uint64_t start, end;
};

/* Sorted, disjoint and not adjacent after config_complete.  Owned;
 * written only before the server starts, read-only afterwards.
 */
static struct range *ranges;
static size_t nr_ranges;

static void
protect_unload (void)
{
  free (ranges);
}

static int
protect_add (uint64_t start, uint64_t end)
{
  struct range *r;

  if (start > end)
    return 0;
  r = realloc (ranges, (nr_ranges + 1) * sizeof *r);
  if (r == NULL) {
    nbdkit_error ("protect: cannot allocate the range list: %m");
    return -1;
  }
  ranges = r;
  ranges[nr_ranges].start = start;
  ranges[nr_ranges].end = end;
  nr_ranges++;
  return 0;
}

/* One end of START-END: empty means DEFAULT. */
static int
protect_parse_end (const char *str, size_t len, uint64_t dflt,
                   uint64_t *out)
{
  char *s;
  int r;

  if (len == 0) {
    *out = dflt;
    return 0;
  }
  s = strndup (str, len);
  if (s == NULL) {
    nbdkit_error ("protect: %m");
    return -1;
  }
  r = nbdkit_parse_uint64_t ("protect", s, out);
  free (s);
  return r;
}

static int
protect_parse (const char *value)
{
  bool complement = value[0] == '~';
  const char *range = value + complement;
  const char *dash = strchr (range, '-');
  uint64_t start, end;

  if (dash == NULL) {
    nbdkit_error ("protect: cannot parse protect=%s: use START-END or "
                  "~START-END", value);
    return -1;
  }
  if (protect_parse_end (range, dash - range, 0, &start) == -1 ||
      protect_parse_end (dash + 1, strlen (dash + 1), UINT64_MAX,
                         &end) == -1)
    return -1;
  if (start > end) {
    nbdkit_error ("protect: protect=%s starts after it ends: swap START "
                  "and END", value);
    return -1;
  }
  if (!complement)
    return protect_add (start, end);
  if (start > 0 && protect_add (0, start - 1) == -1)
    return -1;
  if (end < UINT64_MAX && protect_add (end + 1, UINT64_MAX) == -1)
    return -1;
  return 0;
}

static int
protect_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                const char *key, const char *value)
{
  if (strcmp (key, "protect") == 0)
    return protect_parse (value);
  return next (nxdata, key, value);
}

#define protect_config_help \
  "protect=<START>-<END>   Protect bytes START to END (inclusive).\n" \
  "protect=~<START>-<END>  Protect all bytes outside START to END."

static int
protect_compare (const void *a, const void *b)
{
  const struct range *x = a, *y = b;

  return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort and merge overlapping or adjacent ranges. */
static int
protect_config_complete (nbdkit_next_config_complete *next,
                         nbdkit_backend *nxdata)
{
  size_t i, j = 0;

  /* qsort must not be given a NULL list, even an empty one. */
  if (nr_ranges > 0)
    qsort (ranges, nr_ranges, sizeof *ranges, protect_compare);
  for (i = 1; i < nr_ranges; i++) {
    if (ranges[j].end == UINT64_MAX
        || ranges[i].start <= ranges[j].end + 1)
      ranges[j].end = MAX (ranges[j].end, ranges[i].end);
    else
      ranges[++j] = ranges[i];
  }
  if (nr_ranges > 0)
    nr_ranges = j + 1;
  for (i = 0; i < nr_ranges; i++)
    nbdkit_debug ("protect: protecting %" PRIu64 "-%" PRIu64,
                  ranges[i].start, ranges[i].end);
  return next (nxdata);
}

static int
protect_refuse (const char *what, uint32_t count, uint64_t offset,
                int *err)
{
  nbdkit_error ("protect: %s of %" PRIu32 " bytes at %" PRIu64 " would "
                "change a protected range", what, count, offset);
  *err = EPERM;
  return -1;
}

/* Check that writing BUF (or zeroes, if BUF is NULL) to [OFFSET,
 * OFFSET+COUNT) changes no protected byte.
 */
static int
protect_check (nbdkit_next *next, const char *what, const void *buf,
               uint32_t count, uint64_t offset, int *err)
{
  uint64_t last = offset + count - 1, start, end;
  char *old = NULL;
  size_t i;
  int r = 0;

  for (i = 0; r == 0 && i < nr_ranges && ranges[i].start <= last; i++) {
    if (ranges[i].end < offset)
      continue;
    start = MAX (ranges[i].start, offset);
    end = MIN (ranges[i].end, last);
    if (old == NULL && (old = malloc (count)) == NULL) {
      *err = errno;
      nbdkit_error ("protect: cannot allocate %" PRIu32 " bytes: %m",
                    count);
      return -1;
    }
    r = next->pread (next, old, end - start + 1, start, 0, err);
    if (r == -1)
      break;
    if (buf ? memcmp (old, (const char *) buf + (start - offset),
                      end - start + 1) != 0
        : !is_zero (old, end - start + 1))
      r = protect_refuse (what, count, offset, err);
  }
  free (old);
  return r;
}

static int
protect_pwrite (nbdkit_next *next, void *handle, const void *buf,
                uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (count > 0 && protect_check (next, "write", buf, count, offset,
                                  err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
protect_trim (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  if (count > 0 && protect_check (next, "trim", NULL, count, offset,
                                  err) == -1)
    return -1;
  return next->trim (next, count, offset, flags, err);
}

static int
protect_zero (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  if (count > 0 && protect_check (next, "zero", NULL, count, offset,
                                  err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "protect",
  .longname = "nbdsrv protect filter",
  .unload = protect_unload,
  .config = protect_config,
  .config_complete = protect_config_complete,
  .config_help = protect_config_help,
  .pwrite = protect_pwrite,
  .trim = protect_trim,
  .zero = protect_zero,
};

NBDKIT_REGISTER_FILTER (filter)

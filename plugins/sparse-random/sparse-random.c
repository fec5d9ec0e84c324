/* nbdsrv sparse-random plugin: a disk shaped like a used virtual
 * machine disk, with runs of random data between long holes
 * (docs/nbdkit-sparse-random-plugin.md).
 *
 * The disk is made of 4 KiB blocks, the granularity nbdkit 1.32 uses
 * too.  At startup a generator seeded from seed= lays out alternating
 * hole and data runs; their lengths average runlength= for data and
 * the length that gives percent= of data for holes.  Only the run list is kept (a few
 * thousand entries for a 1 TiB disk with the defaults), and the bytes
 * of a data block are a hash of the seed and the block number, so the
 * disk is the same for every connection and every run with that seed.
 * The layout and the bytes differ from nbdkit's, whose generator we do
 * not copy; the proportions and shape are what the man page promises.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "splitmix.h"

#define SR_BLOCK_BITS 12
#define SR_BLOCK_SIZE (UINT64_C (1) << SR_BLOCK_BITS)

static int64_t size = 0;        /* nbdkit 1.32 also defaults to 0 */
static uint32_t seed;
static bool seed_given;
static double percent = 10;
static uint64_t runlength = UINT64_C (16) << 20;
static bool random_content;

/* Data runs, in blocks, sorted and disjoint: [start, end). */
struct sr_run {
  uint64_t start, end;
};
static struct sr_run *runs;     /* owned, built in get_ready */
static size_t nr_runs;

/* Uniform in (0, 1], from the layout generator's state. */
static double
sr_uniform (uint64_t *state)
{
  return ((splitmix_next (state) >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* A run length in blocks, uniformly distributed over [0, 2*MEAN) so
 * that it averages MEAN; at least MIN.  (Uniform rather than
 * exponential keeps the plugin free of libm: plugins/meson.build links
 * plugins with threads only.)
 */
static uint64_t
sr_run_length (uint64_t *state, double mean, uint64_t min)
{
  double len = sr_uniform (state) * 2 * mean;

  if (len < (double) min)
    return min;
  if (len > 1e18)
    return UINT64_C (1000000000000000000);
  return len;
}

static void
sparse_random_unload (void)
{
  free (runs);
}

static int
sparse_random_config (const char *key, const char *value)
{
  char *end;
  int r;

  if (strcmp (key, "size") == 0) {
    size = nbdkit_parse_size (value);
    return size == -1 ? -1 : 0;
  }
  if (strcmp (key, "seed") == 0) {
    if (nbdkit_parse_uint32_t ("seed", value, &seed) == -1)
      return -1;
    seed_given = true;
    return 0;
  }
  if (strcmp (key, "percent") == 0) {
    errno = 0;
    percent = strtod (value, &end);
    if (*end == '%')            /* nbdkit accepts percent=50% too */
      end++;
    if (errno || end == value || *end != '\0' || !(percent >= 0) ||
        percent > 100) {
      nbdkit_error ("percent=%s: expected a number from 0 to 100", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "runlength") == 0) {
    if (nbdkit_parse_uint64_t ("runlength", value, &runlength) == -1)
      return -1;
    if (runlength == 0) {
      nbdkit_error ("runlength=%s: the average data run length must be "
                    "at least 1 byte", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "random-content") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    random_content = r;
    return 0;
  }
  nbdkit_error ("unknown parameter '%s': sparse-random takes size=, seed=, "
                "percent=, runlength= and random-content=", key);
  return -1;
}

static int
sparse_random_config_complete (void)
{
  if (!seed_given)
    seed = (uint32_t) time (NULL) ^ (uint32_t) getpid ();
  nbdkit_debug ("sparse-random: seed=%" PRIu32, seed);
  return 0;
}

#define sparse_random_config_help \
  "[size=]<SIZE>        Size of the disk (default 0).\n" \
  "seed=<SEED>          Seed for the same disk on every run.\n" \
  "percent=<N>          Share of the disk that holds data (default 10).\n" \
  "runlength=<BYTES>    Average length of a data run (default 16M).\n" \
  "random-content=true  Random bytes in each block, not one byte repeated."

/* Lay out the runs.  The loop ends because each iteration moves at
 * least one block forward (data runs are at least one block).
 */
static int
sparse_random_get_ready (void)
{
  uint64_t nblocks = (size + SR_BLOCK_SIZE - 1) >> SR_BLOCK_BITS;
  uint64_t state = splitmix_mix (seed), pos = 0, len;
  double data_mean, hole_mean;
  size_t cap = 0;
  struct sr_run *r;

  if (percent <= 0 || nblocks == 0)
    return 0;
  data_mean = (double) runlength / SR_BLOCK_SIZE;
  if (data_mean < 1)
    data_mean = 1;
  hole_mean = data_mean * (100 - percent) / percent;

  while (pos < nblocks) {
    pos += sr_run_length (&state, hole_mean, 0);
    if (pos >= nblocks)
      break;
    len = sr_run_length (&state, data_mean, 1);
    if (nr_runs == cap) {
      cap = cap ? cap * 2 : 64;
      r = realloc (runs, cap * sizeof *r);
      if (r == NULL) {
        nbdkit_error ("realloc: %m");
        return -1;
      }
      runs = r;
    }
    runs[nr_runs].start = pos;
    runs[nr_runs].end = len < nblocks - pos ? pos + len : nblocks;
    pos = runs[nr_runs].end;
    /* Holes of length 0 (percent=100) join consecutive data runs. */
    if (nr_runs > 0 && runs[nr_runs-1].end == runs[nr_runs].start)
      runs[nr_runs-1].end = runs[nr_runs].end;
    else
      nr_runs++;
  }
  nbdkit_debug ("sparse-random: %zu data runs", nr_runs);
  return 0;
}

/* Index of the first run that ends after BLOCK. */
static size_t
sr_search (uint64_t block)
{
  size_t lo = 0, hi = nr_runs, mid;

  while (lo < hi) {
    mid = lo + (hi - lo) / 2;
    if (runs[mid].end <= block)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Whether BLOCK holds data; *NEXT is where its kind changes. */
static bool
sr_block_is_data (uint64_t block, uint64_t *next)
{
  size_t i = sr_search (block);

  if (i < nr_runs && runs[i].start <= block) {
    *next = runs[i].end;
    return true;
  }
  *next = i < nr_runs ? runs[i].start : UINT64_MAX;
  return false;
}

/* Fill BUF with the bytes at [OFFSET, OFFSET+COUNT) of data block
 * BLOCK (the range lies inside the block).
 */
static void
sr_fill_block (unsigned char *buf, uint32_t count, uint64_t offset,
               uint64_t block)
{
  uint64_t key = splitmix_mix (splitmix_mix (seed) ^
                               (block * SPLITMIX_GOLDEN));

  if (random_content)
    splitmix_fill (buf, count, offset, key);
  else                          /* one non-zero byte for the whole block */
    memset (buf, (splitmix_mix (key) % 255) + 1, count);
}

static void
sr_fill (unsigned char *buf, uint32_t count, uint64_t offset)
{
  uint64_t block, next, n;

  while (count > 0) {
    block = offset >> SR_BLOCK_BITS;
    n = SR_BLOCK_SIZE - (offset & (SR_BLOCK_SIZE - 1));
    if (n > count)
      n = count;
    if (sr_block_is_data (block, &next))
      sr_fill_block (buf, n, offset, block);
    else
      memset (buf, 0, n);
    buf += n;
    offset += n;
    count -= n;
  }
}

static void *
sparse_random_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
sparse_random_get_size (void *handle)
{
  return size;
}

static int
sparse_random_can_multi_conn (void *handle)
{
  return 1;
}

static int
sparse_random_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
sparse_random_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

static int
sparse_random_cache (void *handle, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  return 0;
}

static int
sparse_random_flush (void *handle, uint32_t flags)
{
  return 0;
}

static int
sparse_random_pread (void *handle, void *buf, uint32_t count,
                     uint64_t offset, uint32_t flags)
{
  sr_fill (buf, count, offset);
  return 0;
}

/* Nothing is stored: a write must write what is already there, so a
 * copy from this disk to itself checks the copying tool.
 */
static int
sparse_random_pwrite (void *handle, const void *buf, uint32_t count,
                      uint64_t offset, uint32_t flags)
{
  const unsigned char *in = buf;
  unsigned char expected[4096];
  uint32_t n;

  while (count > 0) {
    n = count < sizeof expected ? count : sizeof expected;
    sr_fill (expected, n, offset);
    if (memcmp (in, expected, n) != 0) {
      nbdkit_error ("write at offset %" PRIu64 " does not match the data "
                    "already there: this disk only accepts writes of what "
                    "it reads", offset);
      errno = EIO;
      return -1;
    }
    in += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* Zeroing is fine where the disk is already a hole. */
static int
sparse_random_zero (void *handle, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  uint64_t first, last, next;

  if (count == 0)
    return 0;
  first = offset >> SR_BLOCK_BITS;
  last = (offset + count - 1) >> SR_BLOCK_BITS;
  if (sr_block_is_data (first, &next) || next <= last) {
    nbdkit_error ("cannot trim or zero %" PRIu32 " bytes at offset %" PRIu64
                  ": the range holds data, and only holes can be zeroed",
                  count, offset);
    errno = EIO;
    return -1;
  }
  return 0;
}

static int
sparse_random_trim (void *handle, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  return sparse_random_zero (handle, count, offset, flags);
}

/* One extent per run, cut at the request end. */
static int
sparse_random_extents (void *handle, uint32_t count, uint64_t offset,
                       uint32_t flags, struct nbdkit_extents *extents)
{
  uint64_t end = offset + count, next, stop;
  bool data;

  while (offset < end) {
    data = sr_block_is_data (offset >> SR_BLOCK_BITS, &next);
    stop = next > (end >> SR_BLOCK_BITS) ? end : next << SR_BLOCK_BITS;
    if (nbdkit_add_extent (extents, offset, stop - offset,
                           data ? 0 : NBDKIT_EXTENT_HOLE |
                           NBDKIT_EXTENT_ZERO) == -1)
      return -1;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
    offset = stop;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "sparse-random",
  .longname          = "nbdsrv sparse random plugin",
  .version           = "0.1.0",
  .unload            = sparse_random_unload,
  .config            = sparse_random_config,
  .config_complete   = sparse_random_config_complete,
  .config_help       = sparse_random_config_help,
  .magic_config_key  = "size",
  .get_ready         = sparse_random_get_ready,
  .open              = sparse_random_open,
  .get_size          = sparse_random_get_size,
  .can_multi_conn    = sparse_random_can_multi_conn,
  .can_fua           = sparse_random_can_fua,
  .can_cache         = sparse_random_can_cache,
  .cache             = sparse_random_cache,
  .flush             = sparse_random_flush,
  .pread             = sparse_random_pread,
  .pwrite            = sparse_random_pwrite,
  .trim              = sparse_random_trim,
  .zero              = sparse_random_zero,
  .extents           = sparse_random_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

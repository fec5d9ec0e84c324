/* nbdsrv stats filter: count requests, bytes and time spent per
 * command, with a histogram of request sizes and offset alignments,
 * and write the summary to statsfile= when the server exits.
 *
 * The layout of the summary is nbdkit 1.32's, so scripts reading it
 * keep working (see docs/nbdkit-stats-filter.md for the histogram).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nbdkit-filter.h>

/* Size classes are floor(log2(count)); alignment classes are the
 * number of trailing zero bits of the offset, 64 standing for offset
 * 0 (aligned to everything).
 */
#define SIZE_CLASSES 33
#define ALIGN_CLASSES 65

struct stat_counts {
  const char *name;
  uint64_t ops, bytes, usecs;
  uint64_t hist[SIZE_CLASSES][ALIGN_CLASSES];
  uint64_t hist_bytes[SIZE_CLASSES];
};

enum { ST_READ, ST_WRITE, ST_TRIM, ST_ZERO, ST_EXTENTS, ST_CACHE,
       ST_FLUSH, ST_COUNT };

/* Guards stats (updated by every request, read at unload). */
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stat_counts stats[ST_COUNT] = {
  [ST_READ] = { .name = "read" }, [ST_WRITE] = { .name = "write" },
  [ST_TRIM] = { .name = "trim" }, [ST_ZERO] = { .name = "zero" },
  [ST_EXTENTS] = { .name = "extents" }, [ST_CACHE] = { .name = "cache" },
  [ST_FLUSH] = { .name = "flush" },
};

static char *statsfile;         /* owned */
static bool statsappend;
static int statsthreshold = 95;
static FILE *stats_fp;
static struct timespec start_time;

static uint64_t
stats_usecs_since (const struct timespec *t0)
{
  struct timespec t1;

  clock_gettime (CLOCK_MONOTONIC, &t1);
  return (t1.tv_sec - t0->tv_sec) * UINT64_C (1000000)
    + (t1.tv_nsec - t0->tv_nsec) / 1000;
}

/* "512 bytes", "4.00 KiB", "1.15 GiB" and so on. */
static void
stats_human (char *buf, size_t n, double bytes)
{
  static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
  int u = -1;

  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    u++;
  }
  if (u < 0)
    snprintf (buf, n, "%.0f bytes", bytes);
  else
    snprintf (buf, n, "%.2f %s", bytes, units[u]);
}

static void
stats_print_alignments (const uint64_t *aligns, uint64_t total)
{
  uint64_t above = total, covered = 0;

  for (int k = 0; k < ALIGN_CLASSES - 1; ++k) {
    if (aligns[k] == 0)
      continue;
    fprintf (stats_fp, "\n         %2d bit aligned: %5.1f%% (%" PRIu64 ")",
             k, 100.0 * above / total, above);
    covered += aligns[k];
    above -= aligns[k];
    if (covered * 100 >= (uint64_t) statsthreshold * total)
      break;
  }
}

/* Size classes by falling count; among equal counts the smaller size
 * first.  Printed until statsthreshold percent of requests are shown.
 */
static void
stats_print_histogram (const struct stat_counts *s)
{
  uint64_t counts[SIZE_CLASSES], bytes_left = s->bytes, covered = 0;
  bool done[SIZE_CLASSES] = { false };
  char size[32];
  int best;

  for (int b = 0; b < SIZE_CLASSES; ++b) {
    counts[b] = 0;
    for (int k = 0; k < ALIGN_CLASSES; ++k)
      counts[b] += s->hist[b][k];
  }
  fprintf (stats_fp, "\n  Request size and alignment breakdown:");
  while (covered * 100 < (uint64_t) statsthreshold * s->ops) {
    best = -1;
    for (int b = 0; b < SIZE_CLASSES; ++b)
      if (!done[b] && counts[b] > 0
          && (best < 0 || counts[b] > counts[best]))
        best = b;
    if (best < 0)
      break;
    done[best] = true;
    covered += counts[best];
    stats_human (size, sizeof size, (double) s->hist_bytes[best]);
    bytes_left -= s->hist_bytes[best];
    fprintf (stats_fp, "\n    %2d bits: %5.1f%% (%" PRIu64 " reqs, %s total)",
             best, 100.0 * counts[best] / s->ops, counts[best], size);
    stats_print_alignments (s->hist[best], counts[best]);
  }
  if (covered < s->ops) {
    stats_human (size, sizeof size, (double) bytes_left);
    fprintf (stats_fp, "\n    other sizes: %4.1f%% (%" PRIu64
             " reqs, %s total)", 100.0 * (s->ops - covered) / s->ops,
             s->ops - covered, size);
  }
  fputc ('\n', stats_fp);
}

static void
stats_print_op (const struct stat_counts *s, uint64_t elapsed)
{
  char size[32], op_rate[32], total_rate[32];

  stats_human (size, sizeof size, (double) s->bytes);
  if (s->usecs > 0)
    stats_human (op_rate, sizeof op_rate, s->bytes * 1e6 / s->usecs);
  else
    strcpy (op_rate, "(n/a)");
  stats_human (total_rate, sizeof total_rate,
               elapsed ? s->bytes * 1e6 / elapsed : 0);
  fprintf (stats_fp, "\n%s: %" PRIu64 " ops, %.6f s, %s, %s/s op, "
           "%s/s total", s->name, s->ops, s->usecs / 1e6, size, op_rate,
           total_rate);
  if (statsthreshold > 0 && s != &stats[ST_FLUSH])
    stats_print_histogram (s);
}

/* The totals count every command but cache, and the bytes of reads,
 * writes, trims and zeroes, as nbdkit 1.32 does.
 */
static void
stats_print (void)
{
  uint64_t elapsed = stats_usecs_since (&start_time), ops = 0, bytes = 0;
  char size[32], rate[32];

  for (int i = 0; i < ST_COUNT; ++i) {
    if (i != ST_CACHE)
      ops += stats[i].ops;
    if (i <= ST_ZERO)
      bytes += stats[i].bytes;
  }
  stats_human (size, sizeof size, (double) bytes);
  stats_human (rate, sizeof rate, elapsed ? bytes * 1e6 / elapsed : 0);
  fprintf (stats_fp, "total: %" PRIu64 " ops, %.6f s, %s, %s/s",
           ops, elapsed / 1e6, size, rate);
  for (int i = 0; i < ST_COUNT; ++i)
    if (stats[i].ops > 0)
      stats_print_op (&stats[i], elapsed);
}

static void
stats_unload (void)
{
  if (stats_fp) {
    pthread_mutex_lock (&stats_lock);
    stats_print ();
    pthread_mutex_unlock (&stats_lock);
    fclose (stats_fp);
  }
  free (statsfile);
}

static int
stats_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  int r;

  if (strcmp (key, "statsfile") == 0) {
    free (statsfile);
    statsfile = nbdkit_absolute_path (value);
    return statsfile ? 0 : -1;
  }
  if (strcmp (key, "statsappend") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    statsappend = r;
    return 0;
  }
  if (strcmp (key, "statsthreshold") == 0) {
    if (nbdkit_parse_int ("statsthreshold", value, &r) == -1)
      return -1;
    if (r < 0 || r > 100) {
      nbdkit_error ("statsthreshold must be between 0 and 100 (percent)");
      return -1;
    }
    statsthreshold = r;
    return 0;
  }
  return next (nxdata, key, value);
}

#define stats_config_help \
  "statsfile=<FILE>               (required) The file to place the log in.\n" \
  "statsappend=<BOOL>             True to append to the log (default false).\n" \
  "statsthreshold=<PERCENTILE>    Histogram shown up to this percent (95)."

static int
stats_config_complete (nbdkit_next_config_complete *next,
                       nbdkit_backend *nxdata)
{
  if (statsfile == NULL) {
    nbdkit_error ("stats filter requires statsfile parameter: add "
                  "statsfile=/path/to/file");
    return -1;
  }
  stats_fp = fopen (statsfile, statsappend ? "ae" : "we");
  if (stats_fp == NULL) {
    nbdkit_error ("%s: %m", statsfile);
    return -1;
  }
  clock_gettime (CLOCK_MONOTONIC, &start_time);
  return next (nxdata);
}

/* Count one successful request of command CMD that started at T0. */
static int
stats_record (int cmd, const struct timespec *t0, uint32_t count,
              uint64_t offset, int r)
{
  struct stat_counts *s = &stats[cmd];
  uint64_t usecs;
  int size_class, align_class;

  if (r == -1)
    return r;
  usecs = stats_usecs_since (t0);
  size_class = count ? 31 - __builtin_clz (count) : 0;
  align_class = offset ? __builtin_ctzll (offset) : ALIGN_CLASSES - 1;
  pthread_mutex_lock (&stats_lock);
  s->ops++;
  s->bytes += count;
  s->usecs += usecs;
  s->hist[size_class][align_class]++;
  s->hist_bytes[size_class] += count;
  pthread_mutex_unlock (&stats_lock);
  return r;
}

static int
stats_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  struct timespec t0;

  clock_gettime (CLOCK_MONOTONIC, &t0);
  return stats_record (ST_READ, &t0, count, offset,
                       next->pread (next, buf, count, offset, flags, err));
}

static int
stats_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct timespec t0;

  clock_gettime (CLOCK_MONOTONIC, &t0);
  return stats_record (ST_WRITE, &t0, count, offset,
                       next->pwrite (next, buf, count, offset, flags, err));
}

static int
stats_trim (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  struct timespec t0;

  clock_gettime (CLOCK_MONOTONIC, &t0);
  return stats_record (ST_TRIM, &t0, count, offset,
                       next->trim (next, count, offset, flags, err));
}

static int
stats_zero (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  struct timespec t0;

  clock_gettime (CLOCK_MONOTONIC, &t0);
  return stats_record (ST_ZERO, &t0, count, offset,
                       next->zero (next, count, offset, flags, err));
}

static int
stats_extents (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  struct timespec t0;

  clock_gettime (CLOCK_MONOTONIC, &t0);
  return stats_record (ST_EXTENTS, &t0, count, offset,
                       next->extents (next, count, offset, flags, extents,
                                      err));
}

static int
stats_cache (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  struct timespec t0;

  clock_gettime (CLOCK_MONOTONIC, &t0);
  return stats_record (ST_CACHE, &t0, count, offset,
                       next->cache (next, count, offset, flags, err));
}

/* A flush has no size: it is counted, not put in the histogram. */
static int
stats_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct timespec t0;
  int r;

  clock_gettime (CLOCK_MONOTONIC, &t0);
  r = next->flush (next, flags, err);
  if (r == 0) {
    uint64_t usecs = stats_usecs_since (&t0);
    pthread_mutex_lock (&stats_lock);
    stats[ST_FLUSH].ops++;
    stats[ST_FLUSH].usecs += usecs;
    pthread_mutex_unlock (&stats_lock);
  }
  return r;
}

static struct nbdkit_filter filter = {
  .name = "stats",
  .longname = "nbdsrv stats filter",
  .unload = stats_unload,
  .config = stats_config,
  .config_complete = stats_config_complete,
  .config_help = stats_config_help,
  .pread = stats_pread,
  .pwrite = stats_pwrite,
  .trim = stats_trim,
  .zero = stats_zero,
  .extents = stats_extents,
  .cache = stats_cache,
  .flush = stats_flush,
};

NBDKIT_REGISTER_FILTER (filter)

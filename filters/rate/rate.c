/* nbdsrv rate filter: limit read and write bandwidth, for the server
 * as a whole (rate=) and per connection (connection-rate=), with the
 * limits optionally re-read from files while the server runs.
 *
 * Each limit is a token bucket of bits, separate for reads and for
 * writes.  A request takes its size in bits; when that leaves the
 * bucket in debt the request sleeps until the debt is paid, so long
 * runs average out at the rate and a quiet client may burst for
 * burstiness seconds.  Zero, trim and the rest cost nothing on the
 * wire and are not limited.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nbdkit-filter.h>

struct bucket {
  pthread_mutex_t lock;         /* guards the fields below */
  double rate;                  /* bits per second; 0: no limit */
  double level;                 /* bits available; negative: debt */
  double capacity;
  struct timespec last;         /* when level was last brought up */
};

/* A limit and the file it may be re-read from. */
struct limit_source {
  const char *file;             /* borrowed from the command line */
  double rate;                  /* the latest rate, bits per second */
  time_t checked;               /* when the file was last read */
  pthread_mutex_t lock;         /* guards rate and checked */
};

static struct limit_source total_src = {
  .lock = PTHREAD_MUTEX_INITIALIZER };
static struct limit_source conn_src = {
  .lock = PTHREAD_MUTEX_INITIALIZER };
static double burstiness = 2.0;

static struct bucket read_bucket = { .lock = PTHREAD_MUTEX_INITIALIZER };
static struct bucket write_bucket = { .lock = PTHREAD_MUTEX_INITIALIZER };

struct rate_handle {
  struct bucket read, write;
};

static int
rate_parse (const char *key, const char *value, double *rate)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1)
    return -1;
  *rate = r;
  return 0;
}

static int
rate_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
             const char *key, const char *value)
{
  char *end;

  if (strcmp (key, "rate") == 0)
    return rate_parse (key, value, &total_src.rate);
  if (strcmp (key, "connection-rate") == 0)
    return rate_parse (key, value, &conn_src.rate);
  if (strcmp (key, "rate-file") == 0) {
    total_src.file = value;
    return 0;
  }
  if (strcmp (key, "connection-rate-file") == 0) {
    conn_src.file = value;
    return 0;
  }
  if (strcmp (key, "burstiness") == 0) {
    errno = 0;
    burstiness = strtod (value, &end);
    if (errno || end == value || *end != '\0' || !(burstiness > 0)) {
      nbdkit_error ("burstiness must be a floating point number (seconds) "
                    "above 0, for example burstiness=2.0");
      return -1;
    }
    return 0;
  }
  return next (nxdata, key, value);
}

#define rate_config_help \
  "rate=<BITSPERSEC>              Limit total bandwidth.\n" \
  "connection-rate=<BITSPERSEC>   Limit per-connection bandwidth.\n" \
  "rate-file=<FILENAME>           Dynamically adjust total bandwidth.\n" \
  "connection-rate-file=<FILENAME> Dynamically adjust per-connection\n" \
  "                               bandwidth.\n" \
  "burstiness=<SECS>              Bucket capacity in seconds (default 2)."

static void
bucket_set (struct bucket *b, double rate)
{
  b->rate = rate;
  b->capacity = rate * burstiness;
  if (b->level > b->capacity)
    b->level = b->capacity;
}

static void
bucket_init (struct bucket *b, double rate)
{
  pthread_mutex_init (&b->lock, NULL);
  b->level = rate * burstiness;     /* start full */
  bucket_set (b, rate);
  clock_gettime (CLOCK_MONOTONIC, &b->last);
}

/* Take BITS from B; return the seconds to sleep to pay any debt. */
static double
bucket_take (struct bucket *b, double rate, double bits)
{
  struct timespec now;
  double wait = 0;

  pthread_mutex_lock (&b->lock);
  if (rate != b->rate)
    bucket_set (b, rate);
  if (b->rate > 0) {
    clock_gettime (CLOCK_MONOTONIC, &now);
    b->level += ((now.tv_sec - b->last.tv_sec)
                 + (now.tv_nsec - b->last.tv_nsec) / 1e9) * b->rate;
    if (b->level > b->capacity)
      b->level = b->capacity;
    b->last = now;
    b->level -= bits;
    if (b->level < 0)
      wait = -b->level / b->rate;
  }
  pthread_mutex_unlock (&b->lock);
  return wait;
}

/* The current rate of SRC, re-reading its file at most once a second
 * (the file is meant to be replaced atomically; a missing or bad file
 * leaves the last rate in force).
 */
static double
rate_current (struct limit_source *src)
{
  char buf[64];
  time_t now;
  FILE *fp;
  int64_t r;
  double rate;

  pthread_mutex_lock (&src->lock);
  now = time (NULL);
  if (src->file && now != src->checked) {
    src->checked = now;
    fp = fopen (src->file, "re");
    if (fp) {
      if (fgets (buf, sizeof buf, fp)) {
        buf[strcspn (buf, " \t\r\n")] = '\0';
        r = nbdkit_parse_size (buf);
        if (r >= 0 && (double) r != src->rate) {
          nbdkit_debug ("rate: %s: rate changed to %" PRId64, src->file, r);
          src->rate = r;
        }
      }
      fclose (fp);
    }
  }
  rate = src->rate;
  pthread_mutex_unlock (&src->lock);
  return rate;
}

static int
rate_get_ready (int thread_model)
{
  bucket_init (&read_bucket, total_src.rate);
  bucket_init (&write_bucket, total_src.rate);
  return 0;
}

static void *
rate_open (nbdkit_next_open *next, nbdkit_context *nxdata,
           int readonly, const char *exportname, int is_tls)
{
  struct rate_handle *h;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  h = malloc (sizeof *h);
  if (h == NULL) {
    nbdkit_error ("rate: malloc: %m");
    return NULL;
  }
  bucket_init (&h->read, rate_current (&conn_src));
  bucket_init (&h->write, rate_current (&conn_src));
  return h;
}

static void
rate_close (void *handle)
{
  struct rate_handle *h = handle;

  pthread_mutex_destroy (&h->read.lock);
  pthread_mutex_destroy (&h->write.lock);
  free (h);
}

/* Wait until COUNT bytes fit both the connection's and the server's
 * bucket of one direction.
 */
static int
rate_wait (struct bucket *conn, struct bucket *total, uint32_t count,
           int *err)
{
  double bits = 8.0 * count, secs;

  secs = bucket_take (conn, rate_current (&conn_src), bits);
  secs += bucket_take (total, rate_current (&total_src), bits);
  if (secs <= 0)
    return 0;
  if (nbdkit_nanosleep ((unsigned) secs,
                        (unsigned) ((secs - (unsigned) secs) * 1e9)) == -1) {
    *err = errno;
    return -1;
  }
  return 0;
}

static int
rate_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  struct rate_handle *h = handle;

  if (rate_wait (&h->read, &read_bucket, count, err) == -1)
    return -1;
  return next->pread (next, buf, count, offset, flags, err);
}

static int
rate_pwrite (nbdkit_next *next, void *handle, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct rate_handle *h = handle;

  if (rate_wait (&h->write, &write_bucket, count, err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "rate",
  .longname = "nbdsrv rate filter",
  .config = rate_config,
  .config_help = rate_config_help,
  .get_ready = rate_get_ready,
  .open = rate_open,
  .close = rate_close,
  .pread = rate_pread,
  .pwrite = rate_pwrite,
};

NBDKIT_REGISTER_FILTER (filter)

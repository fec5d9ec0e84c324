/* nbdsrv log filter: one line per event, in nbdkit 1.32's format so
 * that existing log parsers keep working:
 *
 *   2020-08-06 02:07:23.080907 connection=1 Read id=1 offset=0x0 count=0x200 ...
 *   2020-08-06 02:07:23.080927 connection=1 ...Read id=1 return=0
 *
 * A request is logged when it enters the filter (ending in "...") and
 * when it leaves (starting with "..."), with the result and, on
 * failure, the errno name.  Lines may also go to a script (logscript=).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "log.h"

static const char *logfile;             /* borrowed from the command line */
static const char *logscript;           /* borrowed from the command line */
static bool logappend;

static FILE *log_fp;
/* Guards writes to log_fp and script runs, so lines never interleave. */
static pthread_mutex_t output_lock = PTHREAD_MUTEX_INITIALIZER;

static pid_t ready_pid;
static atomic_uint_fast64_t connection_counter;
static atomic_uint_fast64_t preconnect_counter;
static atomic_uint_fast64_t list_counter;

/* Per connection: the number printed as connection=N and the request
 * id counter.
 */
struct log_handle {
  uint64_t connection;
  atomic_uint_fast64_t ids;
  const char *exportname;       /* interned for the connection */
  int tls;
};

static void
log_unload (void)
{
  if (log_fp)
    fclose (log_fp);
}

static int
log_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  int r;

  if (strcmp (key, "logfile") == 0) {
    logfile = value;
    return 0;
  }
  if (strcmp (key, "logscript") == 0) {
    logscript = value;
    return 0;
  }
  if (strcmp (key, "logappend") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    logappend = r;
    return 0;
  }
  return next (nxdata, key, value);
}

#define log_config_help \
  "logfile=<FILE>                 The file to place the log in.\n" \
  "logappend=<BOOL>               True to append to the log (default false).\n" \
  "logscript=<SCRIPT>             Script to run for logging."

static int
log_config_complete (nbdkit_next_config_complete *next,
                     nbdkit_backend *nxdata)
{
  int fd, flags = O_CLOEXEC | O_WRONLY | O_CREAT;

  if (logfile) {
    flags |= logappend ? O_APPEND : O_TRUNC;
    fd = open (logfile, flags, 0666);
    if (fd == -1) {
      nbdkit_error ("open: %s: %m (check that the directory exists and is "
                    "writable)", logfile);
      return -1;
    }
    log_fp = fdopen (fd, logappend ? "a" : "w");
    if (log_fp == NULL) {
      nbdkit_error ("fdopen: %s: %m", logfile);
      close (fd);
      return -1;
    }
  }
  return next (nxdata);
}

static bool
log_active (void)
{
  return log_fp != NULL || logscript != NULL;
}

/* Write one finished entry E to the file and to the script. */
static void
log_emit (struct log_entry *e)
{
  pthread_mutex_lock (&output_lock);
  if (log_fp) {
    log_entry_write_line (e, log_fp);
    fflush (log_fp);
  }
  if (logscript)
    log_entry_run_script (e, logscript);
  pthread_mutex_unlock (&output_lock);
  log_entry_free (e);
}

/* Log a line that is not part of a request pair (Ready, Fork). */
static void
log_print (const char *act, const char *fmt, ...)
{
  struct log_entry e;
  va_list args;

  if (!log_active ())
    return;
  log_entry_init (&e, LOG_PRINT, act, 0, 0);
  va_start (args, fmt);
  log_entry_vadd (&e, fmt, args);
  va_end (args);
  log_emit (&e);
}

static int
log_get_ready (int thread_model)
{
  ready_pid = getpid ();
  log_print ("Ready", "thread_model=%d", thread_model);
  return 0;
}

/* nbdkit calls after_fork also when it runs in the foreground; "Fork"
 * is logged only when the server really became a daemon.
 */
static int
log_after_fork (nbdkit_backend *nxdata)
{
  if (getpid () != ready_pid)
    log_print ("Fork", "%s", "");
  return 0;
}

static int
log_preconnect (nbdkit_next_preconnect *next, nbdkit_backend *nxdata,
                int readonly)
{
  struct log_entry e;
  uint64_t id;
  int r;

  if (!log_active ())
    return next (nxdata, readonly);
  id = atomic_fetch_add (&preconnect_counter, 1) + 1;
  log_entry_init (&e, LOG_ENTER, "Preconnect", 0, id);
  log_entry_add (&e, "readonly=%d", readonly);
  log_emit (&e);
  r = next (nxdata, readonly);
  log_entry_init (&e, LOG_LEAVE, "Preconnect", 0, id);
  log_entry_result (&e, r, errno);
  log_emit (&e);
  return r;
}

static int
log_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                  int readonly, int is_tls, struct nbdkit_exports *exports)
{
  struct log_entry e;
  uint64_t id;
  int r;

  if (!log_active ())
    return next (nxdata, readonly, exports);
  id = atomic_fetch_add (&list_counter, 1) + 1;
  log_entry_init (&e, LOG_ENTER, "ListExports", 0, id);
  log_entry_add (&e, "readonly=%d tls=%d", readonly, is_tls);
  log_emit (&e);
  r = next (nxdata, readonly, exports);
  log_entry_init (&e, LOG_LEAVE, "ListExports", 0, id);
  if (r == 0)
    log_entry_add_exports (&e, exports);
  log_entry_result (&e, r, errno);
  log_emit (&e);
  return r;
}

static void *
log_open (nbdkit_next_open *next, nbdkit_context *nxdata,
          int readonly, const char *exportname, int is_tls)
{
  struct log_handle *h;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  h = malloc (sizeof *h);
  if (h == NULL) {
    nbdkit_error ("log: malloc: %m");
    return NULL;
  }
  h->connection = atomic_fetch_add (&connection_counter, 1) + 1;
  atomic_init (&h->ids, 0);
  h->exportname = nbdkit_strdup_intern (exportname);
  h->tls = is_tls;
  if (h->exportname == NULL) {
    free (h);
    return NULL;
  }
  return h;
}

static void
log_close (void *handle)
{
  struct log_handle *h = handle;

  if (log_active ()) {
    struct log_entry e;
    log_entry_init (&e, LOG_PRINT, "Disconnect", h->connection, 0);
    log_entry_add (&e, "transactions=%" PRIu64,
                   (uint64_t) atomic_load (&h->ids));
    log_emit (&e);
  }
  free (h);
}

/* The Connect line shows what the client will be told. */
static int
log_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct log_handle *h = handle;
  struct log_entry e;
  uint32_t minsize = 0, prefsize = 0, maxsize = 0;
  int64_t size;

  if (!log_active ())
    return 0;
  size = next->get_size (next);
  if (size == -1 || next->block_size (next, &minsize, &prefsize,
                                      &maxsize) == -1)
    return -1;
  log_entry_init (&e, LOG_PRINT, "Connect", h->connection, 0);
  log_entry_add (&e, "export=");
  log_entry_add_quoted (&e, h->exportname);
  log_entry_add (&e, " tls=%d size=0x%" PRIx64 " minsize=0x%" PRIx32
                 " prefsize=0x%" PRIx32 " maxsize=0x%" PRIx32
                 " write=%d flush=%d rotational=%d trim=%d zero=%d fua=%d"
                 " extents=%d cache=%d fast_zero=%d",
                 h->tls, (uint64_t) size, minsize, prefsize, maxsize,
                 next->can_write (next), next->can_flush (next),
                 next->is_rotational (next), next->can_trim (next),
                 next->can_zero (next), next->can_fua (next),
                 next->can_extents (next), next->can_cache (next),
                 next->can_fast_zero (next));
  log_emit (&e);
  return 0;
}

/* Start the log of one request: returns its id. */
static uint64_t
log_request_enter (struct log_handle *h, const char *act,
                   const char *fmt, ...)
{
  struct log_entry e;
  va_list args;
  uint64_t id = atomic_fetch_add (&h->ids, 1) + 1;

  log_entry_init (&e, LOG_ENTER, act, h->connection, id);
  va_start (args, fmt);
  log_entry_vadd (&e, fmt, args);
  va_end (args);
  log_emit (&e);
  return id;
}

static int
log_request_leave (struct log_handle *h, const char *act, uint64_t id,
                   int r, int err)
{
  struct log_entry e;

  log_entry_init (&e, LOG_LEAVE, act, h->connection, id);
  log_entry_result (&e, r, err);
  log_emit (&e);
  return r;
}

static int
log_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  uint64_t id;
  int r;

  if (!log_active ())
    return next->pread (next, buf, count, offset, flags, err);
  id = log_request_enter (handle, "Read", "offset=0x%" PRIx64
                          " count=0x%" PRIx32, offset, count);
  r = next->pread (next, buf, count, offset, flags, err);
  return log_request_leave (handle, "Read", id, r, *err);
}

static int
log_pwrite (nbdkit_next *next, void *handle, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  uint64_t id;
  int r;

  if (!log_active ())
    return next->pwrite (next, buf, count, offset, flags, err);
  id = log_request_enter (handle, "Write", "offset=0x%" PRIx64
                          " count=0x%" PRIx32 " fua=%d", offset, count,
                          !!(flags & NBDKIT_FLAG_FUA));
  r = next->pwrite (next, buf, count, offset, flags, err);
  return log_request_leave (handle, "Write", id, r, *err);
}

static int
log_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  uint64_t id;
  int r;

  if (!log_active ())
    return next->flush (next, flags, err);
  id = log_request_enter (handle, "Flush", "%s", "");
  r = next->flush (next, flags, err);
  return log_request_leave (handle, "Flush", id, r, *err);
}

static int
log_trim (nbdkit_next *next, void *handle, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  uint64_t id;
  int r;

  if (!log_active ())
    return next->trim (next, count, offset, flags, err);
  id = log_request_enter (handle, "Trim", "offset=0x%" PRIx64
                          " count=0x%" PRIx32 " fua=%d", offset, count,
                          !!(flags & NBDKIT_FLAG_FUA));
  r = next->trim (next, count, offset, flags, err);
  return log_request_leave (handle, "Trim", id, r, *err);
}

static int
log_zero (nbdkit_next *next, void *handle, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  uint64_t id;
  int r;

  if (!log_active ())
    return next->zero (next, count, offset, flags, err);
  id = log_request_enter (handle, "Zero", "offset=0x%" PRIx64
                          " count=0x%" PRIx32 " trim=%d fua=%d fast=%d",
                          offset, count, !!(flags & NBDKIT_FLAG_MAY_TRIM),
                          !!(flags & NBDKIT_FLAG_FUA),
                          !!(flags & NBDKIT_FLAG_FAST_ZERO));
  r = next->zero (next, count, offset, flags, err);
  return log_request_leave (handle, "Zero", id, r, *err);
}

static int
log_extents (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags,
             struct nbdkit_extents *extents, int *err)
{
  struct log_handle *h = handle;
  struct log_entry e;
  uint64_t id;
  int r;

  if (!log_active ())
    return next->extents (next, count, offset, flags, extents, err);
  id = log_request_enter (h, "Extents", "offset=0x%" PRIx64
                          " count=0x%" PRIx32 " req_one=%d", offset, count,
                          !!(flags & NBDKIT_FLAG_REQ_ONE));
  r = next->extents (next, count, offset, flags, extents, err);
  log_entry_init (&e, LOG_LEAVE, "Extents", h->connection, id);
  if (r == 0)
    log_entry_add_extents (&e, extents);
  log_entry_result (&e, r, *err);
  log_emit (&e);
  return r;
}

static int
log_cache (nbdkit_next *next, void *handle, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  uint64_t id;
  int r;

  if (!log_active ())
    return next->cache (next, count, offset, flags, err);
  id = log_request_enter (handle, "Cache", "offset=0x%" PRIx64
                          " count=0x%" PRIx32, offset, count);
  r = next->cache (next, count, offset, flags, err);
  return log_request_leave (handle, "Cache", id, r, *err);
}

static struct nbdkit_filter filter = {
  .name = "log",
  .longname = "nbdsrv log filter",
  .unload = log_unload,
  .config = log_config,
  .config_complete = log_config_complete,
  .config_help = log_config_help,
  .get_ready = log_get_ready,
  .after_fork = log_after_fork,
  .preconnect = log_preconnect,
  .list_exports = log_list_exports,
  .open = log_open,
  .close = log_close,
  .prepare = log_prepare,
  .pread = log_pread,
  .pwrite = log_pwrite,
  .flush = log_flush,
  .trim = log_trim,
  .zero = log_zero,
  .extents = log_extents,
  .cache = log_cache,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv multi-conn filter: give clients flush consistency across
 * connections (NBD_FLAG_CAN_MULTI_CONN) for plugins that lack it, or
 * change what is advertised, to test clients and plugins.
 *
 * In emulate mode a flush from any connection (or a FUA write) is
 * repeated on every open connection, so each connection's cache below
 * is written back.  Dirty tracking skips flushes that cannot matter:
 *
 * - off: every flush goes down;
 * - fast: one flag for the whole server, set by any write, cleared by
 *   any flush;
 * - connection: in emulate mode each connection notes its own writes
 *   and reads, and a flush goes to each connection that wrote or read,
 *   if any wrote; in the other modes, any write or read makes every
 *   connection dirty and each flush cleans its own one (over a plugin
 *   with multi-conn, whose flush is global, reads do not count and a
 *   flush cleans them all).
 *
 * These rules reproduce nbdkit 1.32's flush counts, which the tests
 * compare call by call.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

enum mode { MODE_AUTO, MODE_EMULATE, MODE_PLUGIN, MODE_UNSAFE,
            MODE_DISABLE };
enum track { TRACK_CONNECTION, TRACK_FAST, TRACK_OFF };

static enum mode mode = MODE_AUTO;
static enum track track = TRACK_CONNECTION;
static bool byname;
static int thread_model;

#define DIRTY_WRITE 1
#define DIRTY_READ  2

/* One per connection, from .prepare to .finalize on the list below. */
struct handle {
  struct handle *prev, *next_conn;
  nbdkit_next *next;            /* borrowed: this connection's layer */
  char *name;                   /* owned: export name, if byname */
  enum mode mode;               /* settled: never MODE_AUTO */
  bool plugin_mc;               /* the layer below has multi-conn */
  unsigned dirty;               /* DIRTY_* */
};

/* The open connections and the fast-mode flag, under conns_lock.  A
 * flush is repeated on other connections with the lock held, so none
 * of them can finalize meanwhile.
 */
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static struct handle *conns;
static bool dirty_fast;

static int
mc_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
           const char *key, const char *value)
{
  int r;

  if (strcmp (key, "multi-conn-mode") == 0) {
    if (strcmp (value, "auto") == 0) mode = MODE_AUTO;
    else if (strcmp (value, "emulate") == 0) mode = MODE_EMULATE;
    else if (strcmp (value, "plugin") == 0) mode = MODE_PLUGIN;
    else if (strcmp (value, "unsafe") == 0) mode = MODE_UNSAFE;
    else if (strcmp (value, "disable") == 0) mode = MODE_DISABLE;
    else {
      nbdkit_error ("multi-conn: unknown multi-conn-mode '%s': use auto, "
                    "emulate, plugin, unsafe or disable", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "multi-conn-track-dirty") == 0) {
    if (strcmp (value, "connection") == 0 || strcmp (value, "conn") == 0)
      track = TRACK_CONNECTION;
    else if (strcmp (value, "fast") == 0) track = TRACK_FAST;
    else if (strcmp (value, "off") == 0) track = TRACK_OFF;
    else {
      nbdkit_error ("multi-conn: unknown multi-conn-track-dirty '%s': use "
                    "connection, fast or off", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "multi-conn-exportname") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    byname = r;
    return 0;
  }
  return next (nxdata, key, value);
}

#define mc_config_help \
  "multi-conn-mode=<MODE>       'auto' (default), 'emulate', 'plugin',\n" \
  "                             'unsafe' or 'disable'.\n" \
  "multi-conn-track-dirty=<L>   'connection' (default), 'fast' or 'off'.\n" \
  "multi-conn-exportname=<BOOL> true to sync only one export's clients."

static int
mc_get_ready (int model)
{
  thread_model = model;
  return 0;
}

static void *
mc_open (nbdkit_next_open *next, nbdkit_context *nxdata, int readonly,
         const char *exportname, int is_tls)
{
  struct handle *h;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("multi-conn: %m");
    return NULL;
  }
  if (byname && (h->name = strdup (exportname)) == NULL) {
    nbdkit_error ("multi-conn: %m");
    free (h);
    return NULL;
  }
  return h;
}

static void
mc_close (void *handle)
{
  struct handle *h = handle;

  free (h->name);
  free (h);
}

/* Settle this connection's mode and join the list. */
static int
mc_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  int r = next->can_multi_conn (next);

  if (r == -1)
    return -1;
  h->plugin_mc = r;
  h->mode = mode;
  if (mode == MODE_AUTO)
    h->mode = r ? MODE_PLUGIN
      : thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS
      ? MODE_DISABLE : MODE_EMULATE;
  if (h->mode == MODE_EMULATE) {
    r = next->can_flush (next);
    if (r == -1)
      return -1;
    if (r == 0) {
      nbdkit_error ("multi-conn: emulating multi-conn needs a plugin that "
                    "can flush: use multi-conn-mode=disable");
      return -1;
    }
  }
  h->next = next;
  pthread_mutex_lock (&conns_lock);
  h->next_conn = conns;
  if (conns)
    conns->prev = h;
  conns = h;
  pthread_mutex_unlock (&conns_lock);
  return 0;
}

static int
mc_finalize (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  pthread_mutex_lock (&conns_lock);
  if (h->prev)
    h->prev->next_conn = h->next_conn;
  else
    conns = h->next_conn;
  if (h->next_conn)
    h->next_conn->prev = h->prev;
  pthread_mutex_unlock (&conns_lock);
  return 0;
}

static int
mc_can_multi_conn (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  switch (h->mode) {
  case MODE_EMULATE:
  case MODE_UNSAFE:
    return 1;
  case MODE_PLUGIN:
    return h->plugin_mc;
  default:
    return 0;
  }
}

/* Emulation does FUA by a flush of every connection. */
static int
mc_can_fua (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  if (h->mode == MODE_EMULATE)
    return NBDKIT_FUA_NATIVE;
  return next->can_fua (next);
}

/* Do O and H share an export, as far as flushing is concerned? */
static bool
mc_same_export (struct handle *o, struct handle *h)
{
  return !byname || strcmp (o->name, h->name) == 0;
}

/* Note a write (DIRTY_WRITE) or read by H. */
static void
mc_mark (struct handle *h, unsigned what)
{
  struct handle *o;

  if (track == TRACK_OFF)
    return;
  pthread_mutex_lock (&conns_lock);
  if (what == DIRTY_WRITE)
    dirty_fast = true;
  if (track == TRACK_CONNECTION) {
    if (h->mode == MODE_EMULATE)
      h->dirty |= what;
    else if (!h->plugin_mc || what == DIRTY_WRITE)
      for (o = conns; o; o = o->next_conn)
        o->dirty |= what;
  }
  pthread_mutex_unlock (&conns_lock);
}

/* Emulate mode: flush the connections that need it; conns_lock held. */
static int
mc_flush_all (struct handle *h, uint32_t flags, int *err)
{
  struct handle *o;
  bool wrote = false;

  if (track == TRACK_FAST && !dirty_fast)
    return 0;
  for (o = conns; o; o = o->next_conn)
    wrote |= mc_same_export (o, h) && (o->dirty & DIRTY_WRITE);
  if (track == TRACK_CONNECTION && !wrote)
    return 0;
  for (o = conns; o; o = o->next_conn) {
    if (!mc_same_export (o, h))
      continue;
    if (track == TRACK_CONNECTION && o->dirty == 0)
      continue;
    if (o->next->flush (o->next, flags, err) == -1)
      return -1;
    o->dirty = 0;
  }
  dirty_fast = false;
  return 0;
}

/* Other modes: flush this connection if it needs it; lock held. */
static int
mc_flush_one (struct handle *h, uint32_t flags, int *err)
{
  struct handle *o;

  if (track == TRACK_FAST && !dirty_fast)
    return 0;
  if (track == TRACK_CONNECTION && h->dirty == 0)
    return 0;
  if (h->next->flush (h->next, flags, err) == -1)
    return -1;
  dirty_fast = false;
  if (h->plugin_mc)
    for (o = conns; o; o = o->next_conn)
      o->dirty = 0;
  h->dirty = 0;
  return 0;
}

static int
mc_flush_locked (struct handle *h, uint32_t flags, int *err)
{
  int r;

  pthread_mutex_lock (&conns_lock);
  if (h->mode == MODE_EMULATE)
    r = mc_flush_all (h, flags, err);
  else
    r = mc_flush_one (h, flags, err);
  pthread_mutex_unlock (&conns_lock);
  return r;
}

static int
mc_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  return mc_flush_locked (handle, flags, err);
}

static int
mc_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  mc_mark (handle, DIRTY_READ);
  return next->pread (next, buf, count, offset, flags, err);
}

/* After a write-like call R: in emulate mode FUA became a flush of
 * every connection.  In the others a FUA write is durable, so it
 * leaves nothing to flush, except that without multi-conn below the
 * other connections may still hold stale data (as nbdkit counts it).
 */
static int
mc_after_write (struct handle *h, uint32_t flags, int r, int *err)
{
  if (r == -1)
    return -1;
  if (h->mode == MODE_EMULATE) {
    mc_mark (h, DIRTY_WRITE);
    return flags & NBDKIT_FLAG_FUA ? mc_flush_locked (h, 0, err) : 0;
  }
  if (!(flags & NBDKIT_FLAG_FUA)
      || (!h->plugin_mc && track == TRACK_CONNECTION))
    mc_mark (h, DIRTY_WRITE);
  return 0;
}

static uint32_t
mc_write_flags (struct handle *h, uint32_t flags)
{
  return h->mode == MODE_EMULATE ? flags & ~NBDKIT_FLAG_FUA : flags;
}

static int
mc_pwrite (nbdkit_next *next, void *handle, const void *buf,
           uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  int r = next->pwrite (next, buf, count, offset,
                        mc_write_flags (handle, flags), err);

  return mc_after_write (handle, flags, r, err);
}

static int
mc_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
         uint32_t flags, int *err)
{
  int r = next->trim (next, count, offset, mc_write_flags (handle, flags),
                      err);

  return mc_after_write (handle, flags, r, err);
}

static int
mc_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
         uint32_t flags, int *err)
{
  int r = next->zero (next, count, offset, mc_write_flags (handle, flags),
                      err);

  return mc_after_write (handle, flags, r, err);
}

static struct nbdkit_filter filter = {
  .name = "multi-conn",
  .longname = "nbdsrv multi-conn filter",
  .config = mc_config,
  .config_help = mc_config_help,
  .get_ready = mc_get_ready,
  .open = mc_open,
  .close = mc_close,
  .prepare = mc_prepare,
  .finalize = mc_finalize,
  .can_multi_conn = mc_can_multi_conn,
  .can_fua = mc_can_fua,
  .flush = mc_flush,
  .pread = mc_pread,
  .pwrite = mc_pwrite,
  .trim = mc_trim,
  .zero = mc_zero,
};

NBDKIT_REGISTER_FILTER (filter)

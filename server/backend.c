/* nbdsrv: an open export, and the calls the protocol layer makes on it.
 *
 * This is the one place that knows the plugin's callbacks and thread
 * model: it caches the capabilities when the export opens (§1.7),
 * emulates what the plugin lacks (FUA by flush, zero by write, cache by
 * read), and turns a failed callback into a host errno.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "minmax.h"

#define ZERO_CAN_NONE    0
#define ZERO_CAN_EMULATE 1
#define ZERO_CAN_NATIVE  2

/* Largest piece written or read at once when emulating zero or cache. */
#define EMULATE_CHUNK (64 * 1024)

static const char zero_chunk[EMULATE_CHUNK];

/* SERIALIZE_ALL_REQUESTS: one plugin call at a time in the process. */
static pthread_mutex_t all_requests_lock = PTHREAD_MUTEX_INITIALIZER;

static inline void
lock_request (void)
{
  if (plugin.thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS)
    pthread_mutex_lock (&all_requests_lock);
}

static inline void
unlock_request (void)
{
  if (plugin.thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS)
    pthread_mutex_unlock (&all_requests_lock);
}

/* The errno of a failed callback: nbdkit_set_error wins, then errno if
 * the plugin promises to preserve it, else EIO.
 */
static int
callback_errno (int saved_errno)
{
  struct thread_state *ts = thread_state ();

  if (ts->err)
    return ts->err;
  if (plugin.p.errno_is_preserved && saved_errno)
    return saved_errno;
  return EIO;
}

/* Capability callbacks answer -1 on error, else a value. */
static int
cap (int (*fn) (void *), void *handle, int dflt)
{
  return fn ? fn (handle) : dflt;
}

static int
caps_query (struct export *exp, bool readonly)
{
  const struct nbdkit_plugin *p = &plugin.p;
  struct export_caps *c = &exp->caps;
  void *h = exp->handle;
  int64_t size;
  int w, fl, rot, tr, z, fz = 0, fua, mc, ca, ex;

  size = p->get_size (h);
  if (size < 0) {
    nbdkit_error ("the plugin's get_size failed");
    return -1;
  }
  c->size = size;

  w = readonly ? 0 : cap (p->can_write, h, p->pwrite || p->_pwrite_v1);
  fl = cap (p->can_flush, h, p->flush || p->_flush_v1);
  rot = cap (p->is_rotational, h, 0);
  tr = cap (p->can_trim, h, p->trim || p->_trim_v1);
  if (p->can_zero) {
    z = p->can_zero (h);
    z = z == -1 ? -1 : z ? ZERO_CAN_NATIVE : ZERO_CAN_EMULATE;
  }
  else
    z = p->zero || p->_zero_v1 ? ZERO_CAN_NATIVE : ZERO_CAN_EMULATE;
  /* Without a version 2 .zero a fast zero fails at once, cheaply, so it
   * can be advertised (as nbdkit does, also for version 1 plugins).
   */
  if (p->can_fast_zero)
    fz = p->can_fast_zero (h);
  else
    fz = p->zero == NULL;
  if (p->can_fua && p->_api_version >= 2)
    fua = p->can_fua (h);
  else
    fua = p->flush || p->_flush_v1 ? NBDKIT_FUA_EMULATE : NBDKIT_FUA_NONE;
  mc = cap (p->can_multi_conn, h, 0);
  ca = cap (p->can_cache, h,
            p->cache ? NBDKIT_CACHE_NATIVE : NBDKIT_CACHE_NONE);
  ex = cap (p->can_extents, h, p->extents != NULL);
  if (w == -1 || fl == -1 || rot == -1 || tr == -1 || z == -1 ||
      fz == -1 || fua == -1 || mc == -1 || ca == -1 || ex == -1)
    return -1;

  c->eflags = NBD_FLAG_HAS_FLAGS;
  if (!w)
    c->eflags |= NBD_FLAG_READ_ONLY;
  if (fl)
    c->eflags |= NBD_FLAG_SEND_FLUSH;
  if (rot)
    c->eflags |= NBD_FLAG_ROTATIONAL;
  if (w && fua)
    c->eflags |= NBD_FLAG_SEND_FUA;
  if (w && tr)
    c->eflags |= NBD_FLAG_SEND_TRIM;
  if (w && z) {
    c->eflags |= NBD_FLAG_SEND_WRITE_ZEROES;
    if (fz)
      c->eflags |= NBD_FLAG_SEND_FAST_ZERO;
  }
  if (mc && plugin.thread_model > NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS)
    c->eflags |= NBD_FLAG_CAN_MULTI_CONN;
  if (ca)
    c->eflags |= NBD_FLAG_SEND_CACHE;
  c->can_zero = w ? z : ZERO_CAN_NONE;
  c->can_fast_zero = w && z && fz;
  c->can_fua = w ? fua : NBDKIT_FUA_NONE;
  c->can_cache = ca;
  c->can_extents = ex;

  if (p->block_size &&
      p->block_size (h, &c->block_min, &c->block_pref, &c->block_max) == -1)
    return -1;
  return 0;
}

int
backend_open (struct export *exp, const char *name, bool readonly)
{
  const struct nbdkit_plugin *p = &plugin.p;
  int r;

  exp->name = strdup (name);
  if (exp->name == NULL)
    return -1;
  lock_request ();
  exp->handle = p->open (readonly);
  if (exp->handle == NULL) {
    unlock_request ();
    free (exp->name);
    exp->name = NULL;
    return -1;
  }
  r = caps_query (exp, readonly);
  if (r == 0 && p->export_description) {
    const char *d = p->export_description (exp->handle);

    exp->description = d ? strdup (d) : NULL;
  }
  unlock_request ();
  if (r == -1)
    backend_close (exp);
  return r;
}

void
backend_close (struct export *exp)
{
  if (exp->handle) {
    lock_request ();
    if (plugin.p.close)
      plugin.p.close (exp->handle);
    unlock_request ();
  }
  exp->handle = NULL;
  free (exp->name);
  free (exp->description);
  exp->name = exp->description = NULL;
}

/* Run CALL under the thread model's lock; on failure store the errno. */
#define CALL(call)                                              \
  do {                                                          \
    int r_;                                                     \
    lock_request ();                                            \
    r_ = (call);                                                \
    *err = r_ == -1 ? callback_errno (errno) : 0;               \
    unlock_request ();                                          \
    if (r_ == -1)                                               \
      return -1;                                                \
  } while (0)

/* A plugin may advertise what it has no callback for: can_write
 * without .pwrite, can_fua emulated or can_flush without .flush,
 * can_trim without .trim.  Fail the request as nbdkit does instead of
 * calling NULL.
 */
#define HAS_CALLBACK(p, cb) \
  ((p)->_api_version == 1 ? (p)->_##cb##_v1 != NULL : (p)->cb != NULL)

static int
missing_callback (const char *cb, int errnum, int *err)
{
  nbdkit_error ("the plugin advertised a feature that needs .%s, but has "
                "no .%s callback: fix the plugin's can_* callbacks", cb, cb);
  *err = errnum;
  return -1;
}

int
backend_pread (struct export *exp, void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;

  if (p->_api_version == 1)
    CALL (p->_pread_v1 (exp->handle, buf, count, offset));
  else
    CALL (p->pread (exp->handle, buf, count, offset, 0));
  return 0;
}

int
backend_flush (struct export *exp, uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;

  if (!HAS_CALLBACK (p, flush))
    return missing_callback ("flush", EINVAL, err);
  if (p->_api_version == 1)
    CALL (p->_flush_v1 (exp->handle));
  else
    CALL (p->flush (exp->handle, 0));
  return 0;
}

/* FUA goes to the plugin only if it does it natively; otherwise the
 * caller flushes after the write (emulated FUA).
 */
static uint32_t
native_fua (struct export *exp, uint32_t flags, bool *flush_after)
{
  *flush_after = false;
  if (!(flags & NBDKIT_FLAG_FUA))
    return flags;
  if (exp->caps.can_fua == NBDKIT_FUA_NATIVE && plugin.p._api_version >= 2)
    return flags;
  *flush_after = true;
  return flags & ~NBDKIT_FLAG_FUA;
}

int
backend_pwrite (struct export *exp, const void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  bool flush_after;

  if (!HAS_CALLBACK (p, pwrite))
    return missing_callback ("pwrite", EROFS, err);
  flags = native_fua (exp, flags, &flush_after);
  if (p->_api_version == 1)
    CALL (p->_pwrite_v1 (exp->handle, buf, count, offset));
  else
    CALL (p->pwrite (exp->handle, buf, count, offset, flags));
  return flush_after ? backend_flush (exp, 0, err) : 0;
}

/* write-target.h: storage to receive a WRITE's payload into, and
 * *TOKEN for backend_write_target_done.  Only for a PARALLEL plugin (no
 * request lock spans the receive) and without FUA.  Returns -1 when the
 * caller should read into a buffer and pwrite instead.
 */
int
backend_write_target (struct export *exp, uint32_t count, uint64_t offset,
                      uint32_t flags, struct iovec *iov, int *iovcnt,
                      void **token)
{
  if (plugin.write_target == NULL ||
      plugin.thread_model != NBDKIT_THREAD_MODEL_PARALLEL ||
      (flags & NBDKIT_FLAG_FUA))
    return -1;
  return plugin.write_target (exp->handle, count, offset, iov, iovcnt,
                              token);
}

/* Commit the received payload (the WRITE's result), or drop it. */
int
backend_write_target_done (struct export *exp, void *token, bool commit,
                           int *err)
{
  CALL (plugin.write_target_done (exp->handle, token, commit));
  return 0;
}

int
backend_trim (struct export *exp, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  bool flush_after;

  if (!HAS_CALLBACK (p, trim))
    return missing_callback ("trim", EINVAL, err);
  flags = native_fua (exp, flags, &flush_after);
  if (p->_api_version == 1)
    CALL (p->_trim_v1 (exp->handle, count, offset));
  else
    CALL (p->trim (exp->handle, count, offset, flags));
  return flush_after ? backend_flush (exp, 0, err) : 0;
}

static int
zero_by_writing (struct export *exp, uint32_t count, uint64_t offset,
                 int *err)
{
  while (count > 0) {
    uint32_t n = MIN (count, (uint32_t) EMULATE_CHUNK);

    if (backend_pwrite (exp, zero_chunk, n, offset, 0, err) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

int
backend_zero (struct export *exp, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  bool fast = flags & NBDKIT_FLAG_FAST_ZERO;
  bool flush_after;
  int r;

  flags = native_fua (exp, flags, &flush_after);
  /* can_zero without .zero: emulated, as nbdkit does. */
  if (exp->caps.can_zero == ZERO_CAN_NATIVE && HAS_CALLBACK (p, zero)) {
    thread_clear_error ();
    lock_request ();
    if (p->_api_version == 1)
      r = p->_zero_v1 (exp->handle, count, offset,
                       !!(flags & NBDKIT_FLAG_MAY_TRIM));
    else
      r = p->zero (exp->handle, count, offset, flags);
    *err = r == -1 ? callback_errno (errno) : 0;
    unlock_request ();
    /* A plugin may decline at run time; then write zeroes ourselves
     * unless the client asked for a fast zero (§4.3).
     */
    if (r == -1 && (fast || (*err != ENOTSUP && *err != EOPNOTSUPP)))
      return -1;
    if (r == -1)
      thread_clear_error ();
  }
  else
    r = -1;
  if (r == -1) {
    if (fast) {
      *err = ENOTSUP;
      return -1;
    }
    if (zero_by_writing (exp, count, offset, err) == -1)
      return -1;
  }
  return flush_after ? backend_flush (exp, 0, err) : 0;
}

int
backend_cache (struct export *exp, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  char *buf;

  if (exp->caps.can_cache == NBDKIT_CACHE_NATIVE && p->cache) {
    CALL (p->cache (exp->handle, count, offset, 0));
    return 0;
  }
  /* Emulated: read the range so the plugin's own caches warm up. */
  buf = thread_buffer (EMULATE_CHUNK);
  if (buf == NULL) {
    *err = ENOMEM;
    return -1;
  }
  while (count > 0) {
    uint32_t n = MIN (count, (uint32_t) EMULATE_CHUNK);

    if (backend_pread (exp, buf, n, offset, 0, err) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

int
backend_extents (struct export *exp, uint32_t count, uint64_t offset,
                 uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;

  extents_reset (extents, offset, exp->caps.size);
  if (!exp->caps.can_extents || p->extents == NULL) {
    /* Without extents everything is data (§4.3). */
    if (nbdkit_add_extent (extents, offset, count, 0) == -1) {
      *err = errno;
      return -1;
    }
    return 0;
  }
  CALL (p->extents (exp->handle, count, offset, flags, extents));
  if (extents->len == 0) {
    nbdkit_error ("extents: the plugin returned no extent covering "
                  "offset %" PRIu64, offset);
    *err = EINVAL;
    return -1;
  }
  return 0;
}

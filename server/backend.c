/* nbdsrv: an open export, and the calls the protocol layer makes on it.
 *
 * The export is the top context of the stack (context.c) for one
 * connection.  This file opens and closes it, turns its layers'
 * answers into the capabilities the handshake advertises (§1.7), and
 * takes the thread model's lock around each request, which covers the
 * whole trip down the stack as in nbdkit.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* SERIALIZE_ALL_REQUESTS: one request at a time in the process. */
static pthread_mutex_t all_requests_lock = PTHREAD_MUTEX_INITIALIZER;

static inline void
lock_request (void)
{
  if (stack.thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS)
    pthread_mutex_lock (&all_requests_lock);
}

static inline void
unlock_request (void)
{
  if (stack.thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS)
    pthread_mutex_unlock (&all_requests_lock);
}

static int
caps_query (struct export *exp)
{
  struct context *t = exp->top;
  struct export_caps *c = &exp->caps;
  int64_t size;
  int w, fl, rot, tr, z, fz, fua, mc, ca, ex;

  size = ctx_get_size (t);
  if (size < 0) {
    nbdkit_error ("the %s layer's get_size failed", t->b->name);
    return -1;
  }
  c->size = size;

  w = ctx_can_write (t);
  fl = ctx_can_flush (t);
  rot = ctx_is_rotational (t);
  tr = ctx_can_trim (t);
  z = ctx_can_zero (t);
  fz = ctx_can_fast_zero (t);
  fua = ctx_can_fua (t);
  mc = ctx_can_multi_conn (t);
  ca = ctx_can_cache (t);
  ex = ctx_can_extents (t);
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
  if (fua)
    c->eflags |= NBD_FLAG_SEND_FUA;
  if (tr)
    c->eflags |= NBD_FLAG_SEND_TRIM;
  if (z) {
    c->eflags |= NBD_FLAG_SEND_WRITE_ZEROES;
    if (fz)
      c->eflags |= NBD_FLAG_SEND_FAST_ZERO;
  }
  if (mc && stack.thread_model > NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS)
    c->eflags |= NBD_FLAG_CAN_MULTI_CONN;
  if (ca)
    c->eflags |= NBD_FLAG_SEND_CACHE;
  c->can_zero = z;
  c->can_fast_zero = z && fz;
  c->can_fua = fua;
  c->can_cache = ca;
  c->can_extents = ex;

  return ctx_block_size (t, &c->block_min, &c->block_pref, &c->block_max);
}

/* Open the stack for NAME: every layer's .open top-down as each filter
 * passes it on, .prepare bottom-up, then the capabilities.
 *
 * A short name is kept in the export itself.  Whatever a connection
 * mallocs for its whole life lands in the arena of the thread that
 * accepted it, and after a burst of clients glibc leaves each thread
 * arena's freed top resident (up to its pad and trim threshold, about
 * 1 MiB over a burst's arenas), so the common case takes nothing from
 * malloc (issue 11).
 */
int
backend_open (struct export *exp, const char *name, bool readonly)
{
  size_t len = strlen (name);
  int r = -1;

  if (len < sizeof exp->name_inline)
    exp->name = memcpy (exp->name_inline, name, len + 1);
  else if ((exp->name = strdup (name)) == NULL)
    return -1;
  lock_request ();
  exp->top = ctx_open (stack.top, readonly, name, false);
  if (exp->top == NULL)
    goto out_unlock;
  if (ctx_prepare (exp->top) == -1 || caps_query (exp) == -1)
    goto out_unlock;
  r = 0;

 out_unlock:
  unlock_request ();
  if (r == -1)
    backend_close (exp);
  return r;
}

void
backend_close (struct export *exp)
{
  if (exp->top) {
    lock_request ();
    ctx_finalize (exp->top);
    ctx_close (exp->top);
    unlock_request ();
  }
  exp->top = NULL;
  exp->plugin_name = NULL;
  if (exp->name != exp->name_inline)
    free (exp->name);
  free (exp->description);
  exp->name = exp->description = NULL;
}

/* The export's description, asked of the stack only when a client
 * wants it (NBD_INFO_DESCRIPTION), as nbdkit does; NULL if none.  The
 * export keeps it until it closes.
 */
const char *
backend_export_description (struct export *exp)
{
  const char *d;

  if (exp->description == NULL) {
    lock_request ();
    d = ctx_export_description (exp->top);
    exp->description = d ? strdup (d) : NULL;
    unlock_request ();
  }
  return exp->description;
}

/* Run CALL under the thread model's lock. */
#define LOCKED(call)                            \
  do {                                          \
    int r_;                                     \
    lock_request ();                            \
    r_ = (call);                                \
    unlock_request ();                          \
    return r_;                                  \
  } while (0)

int
backend_pread (struct export *exp, void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  LOCKED (ctx_pread (exp->top, buf, count, offset, flags, err));
}

int
backend_pwrite (struct export *exp, const void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  LOCKED (ctx_pwrite (exp->top, buf, count, offset, flags, err));
}

int
backend_flush (struct export *exp, uint32_t flags, int *err)
{
  LOCKED (ctx_flush (exp->top, flags, err));
}

int
backend_trim (struct export *exp, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  LOCKED (ctx_trim (exp->top, count, offset, flags, err));
}

int
backend_zero (struct export *exp, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  LOCKED (ctx_zero (exp->top, count, offset, flags, err));
}

int
backend_cache (struct export *exp, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  LOCKED (ctx_cache (exp->top, count, offset, flags, err));
}

/* EXTENTS is the caller's, reset to start at OFFSET or continuing a
 * list that ends there.
 */
int
backend_extents (struct export *exp, uint32_t count, uint64_t offset,
                 uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  LOCKED (ctx_extents (exp->top, count, offset, flags, extents, err));
}

/* Context ID's dirty bitmap (meta-ext.h), from the layer B that tracks
 * it, for [offset, offset+count) into EXTENTS.
 */
int
backend_dirty_extents (struct export *exp, struct nbdkit_backend *b,
                       uint32_t count, uint64_t offset,
                       struct nbdkit_extents *extents, int *err)
{
  struct context *c = exp->top;
  int r;

  while (c && c->b != b)
    c = c->c_next;
  if (c == NULL) {
    nbdkit_error ("%s: the filter tracking the dirty bitmap is not open "
                  "on this connection", b->name);
    *err = EIO;
    return -1;
  }
  lock_request ();
  r = b->dirty_extents (c->handle, count, offset, extents);
  unlock_request ();
  if (r == -1)
    *err = EIO;
  return r;
}

/* The context that will run a WRITE: the first layer from the top
 * that intercepts pwrite.  Filters that let writes through unchanged
 * keep the plugin's in-place receive.
 */
static struct context *
pwrite_layer (struct export *exp)
{
  struct context *c = exp->top;

  while (c && !c->b->is_plugin && c->b->f.pwrite == NULL)
    c = c->c_next;
  return c;
}

/* write-target.h: storage to receive a WRITE's payload into, and
 * *TOKEN for backend_write_target_done.  Only when the plugin itself
 * runs the write, for a PARALLEL stack (no request lock spans the
 * receive) and without FUA.  Returns -1 when the caller should read
 * into a buffer and pwrite instead.
 */
int
backend_write_target (struct export *exp, uint32_t count, uint64_t offset,
                      uint32_t flags, struct iovec *iov, int *iovcnt,
                      void **token)
{
  struct context *c;

  if (stack.thread_model != NBDKIT_THREAD_MODEL_PARALLEL ||
      (flags & NBDKIT_FLAG_FUA))
    return -1;
  c = pwrite_layer (exp);
  if (c == NULL || !c->b->is_plugin)
    return -1;
  return plugin_write_target (c, count, offset, iov, iovcnt, token);
}

/* Commit the received payload (the WRITE's result), or drop it. */
int
backend_write_target_done (struct export *exp, void *token, bool commit,
                           int *err)
{
  return plugin_write_target_done (pwrite_layer (exp), token, commit, err);
}

/* read-source.h: where the plugin keeps a READ's bytes, so the reply
 * can splice them from there.  Only when the plugin is the top of the
 * stack (a filter may change or need the data, and proving that one
 * passes reads through unchanged is not worth its cost) and the stack
 * is PARALLEL (the bytes leave after the call returns, outside any
 * request lock).  Returns -1 when the caller should pread instead.
 */
int
backend_read_source (struct export *exp, uint32_t count, uint64_t offset,
                     int *fd, uint64_t *fd_offset, unsigned *flags)
{
  struct context *c = exp->top;

  if (stack.thread_model != NBDKIT_THREAD_MODEL_PARALLEL ||
      c == NULL || !c->b->is_plugin)
    return -1;
  return plugin_read_source (c, count, offset, fd, fd_offset, flags);
}

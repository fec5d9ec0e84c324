/* nbdsrv: the plugin as the bottom layer of the stack.
 *
 * The one place that knows the plugin's per-connection callbacks: it
 * answers the can_* questions with nbdkit's defaults for callbacks a
 * plugin leaves out, emulates what the plugin lacks (FUA by flush,
 * zero by writing zeroes) and turns a failed callback into a host
 * errno.  Locking for the thread model is the caller's (backend.c).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "connection.h"
#include "minmax.h"

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

#define HAS_CALLBACK(p, cb) \
  ((p)->_api_version == 1 ? (p)->_##cb##_v1 != NULL : (p)->cb != NULL)

/* Store the errno of a failed callback; R is its result. */
#define RESULT(r)                                       \
  do {                                                  \
    if ((r) == -1) {                                    \
      *err = callback_errno (errno);                    \
      return -1;                                        \
    }                                                   \
    return 0;                                           \
  } while (0)

/* A plugin may advertise what it has no callback for: can_write
 * without .pwrite, can_fua emulated or can_flush without .flush,
 * can_trim without .trim.  Fail the request as nbdkit does instead of
 * calling NULL.
 */
static int
missing_callback (const char *cb, int errnum, int *err)
{
  nbdkit_error ("the plugin advertised a feature that needs .%s, but has "
                "no .%s callback: fix the plugin's can_* callbacks", cb, cb);
  *err = errnum;
  return -1;
}

/* A filter may open the plugin under another name than the client
 * asked for (exportname filter): nbdkit_export_name tells the plugin
 * the name it was opened with.  Usually it is the client's, which the
 * export already keeps for as long as the connection.
 */
void *
plugin_open (struct context *c, const char *exportname)
{
  if (c->conn) {
    struct export *exp = &c->conn->exp;
    const char *name = exp->name && strcmp (exp->name, exportname) == 0
      ? exp->name : nbdkit_strdup_intern (exportname);

    if (name == NULL)
      return NULL;
    exp->plugin_name = name;
  }
  return plugin.p.open (c->readonly);
}

void
plugin_close (struct context *c)
{
  if (plugin.p.close)
    plugin.p.close (c->handle);
}

int64_t
plugin_get_size (struct context *c)
{
  return plugin.p.get_size (c->handle);
}

const char *
plugin_export_description (struct context *c)
{
  if (plugin.p.export_description == NULL)
    return NULL;
  return plugin.p.export_description (c->handle);
}

int
plugin_block_size (struct context *c, uint32_t *minimum,
                   uint32_t *preferred, uint32_t *maximum)
{
  if (plugin.p.block_size == NULL) {
    *minimum = *preferred = *maximum = 0;
    return 0;
  }
  return plugin.p.block_size (c->handle, minimum, preferred, maximum);
}

int
plugin_can_write (struct context *c)
{
  if (plugin.p.can_write)
    return plugin.p.can_write (c->handle);
  return HAS_CALLBACK (&plugin.p, pwrite);
}

int
plugin_can_flush (struct context *c)
{
  if (plugin.p.can_flush)
    return plugin.p.can_flush (c->handle);
  return HAS_CALLBACK (&plugin.p, flush);
}

int
plugin_is_rotational (struct context *c)
{
  return plugin.p.is_rotational ? plugin.p.is_rotational (c->handle) : 0;
}

int
plugin_can_trim (struct context *c)
{
  if (plugin.p.can_trim)
    return plugin.p.can_trim (c->handle);
  return HAS_CALLBACK (&plugin.p, trim);
}

/* A plugin's can_zero is a boolean: false still lets the server write
 * zeroes with .pwrite.
 */
int
plugin_can_zero (struct context *c)
{
  int r;

  if (plugin.p.can_zero) {
    r = plugin.p.can_zero (c->handle);
    if (r == -1)
      return -1;
    return r ? NBDKIT_ZERO_NATIVE : NBDKIT_ZERO_EMULATE;
  }
  return HAS_CALLBACK (&plugin.p, zero) ? NBDKIT_ZERO_NATIVE
    : NBDKIT_ZERO_EMULATE;
}

/* nbdkit-plugin(3): without can_fast_zero, fast zero is advertised
 * when there is no version 2 .zero or can_zero is false, since then a
 * fast zero fails at once instead of writing.
 */
int
plugin_can_fast_zero (struct context *c)
{
  int r;

  if (plugin.p.can_fast_zero)
    return plugin.p.can_fast_zero (c->handle);
  if (plugin.p.zero == NULL)
    return 1;
  r = ctx_can_zero (c);
  if (r == -1)
    return -1;
  return r == NBDKIT_ZERO_EMULATE;
}

int
plugin_can_extents (struct context *c)
{
  if (plugin.p.can_extents)
    return plugin.p.can_extents (c->handle);
  return plugin.p.extents != NULL;
}

int
plugin_can_fua (struct context *c)
{
  int r;

  if (plugin.p.can_fua && plugin.p._api_version >= 2)
    return plugin.p.can_fua (c->handle);
  r = ctx_can_flush (c);
  if (r == -1)
    return -1;
  return r ? NBDKIT_FUA_EMULATE : NBDKIT_FUA_NONE;
}

int
plugin_can_multi_conn (struct context *c)
{
  if (plugin.p.can_multi_conn)
    return plugin.p.can_multi_conn (c->handle);
  return 0;
}

/* NBDKIT_CACHE_NATIVE without .cache means "every cache request
 * succeeds at once" (nbdkit-plugin(3)); it stays NATIVE, so the
 * filters above see what they see under nbdkit (the memory plugin
 * does this).
 */
int
plugin_can_cache (struct context *c)
{
  if (plugin.p.can_cache == NULL)
    return plugin.p.cache ? NBDKIT_CACHE_NATIVE : NBDKIT_CACHE_NONE;
  return plugin.p.can_cache (c->handle);
}

int
plugin_pread (struct context *c, void *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  int r;

  if (p->_api_version == 1)
    r = p->_pread_v1 (c->handle, buf, count, offset);
  else
    r = p->pread (c->handle, buf, count, offset, 0);
  RESULT (r);
}

int
plugin_flush (struct context *c, uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  int r;

  if (!HAS_CALLBACK (p, flush))
    return missing_callback ("flush", EINVAL, err);
  if (p->_api_version == 1)
    r = p->_flush_v1 (c->handle);
  else
    r = p->flush (c->handle, 0);
  RESULT (r);
}

/* FUA goes to the plugin only if it does it natively; otherwise the
 * caller flushes after the write (emulated FUA).
 */
static uint32_t
native_fua (struct context *c, uint32_t flags, bool *flush_after)
{
  *flush_after = false;
  if (!(flags & NBDKIT_FLAG_FUA))
    return flags;
  if (plugin.p._api_version >= 2 && ctx_can_fua (c) == NBDKIT_FUA_NATIVE)
    return flags;
  *flush_after = true;
  return flags & ~NBDKIT_FLAG_FUA;
}

int
plugin_pwrite (struct context *c, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  bool flush_after;
  int r;

  if (!HAS_CALLBACK (p, pwrite))
    return missing_callback ("pwrite", EROFS, err);
  flags = native_fua (c, flags, &flush_after);
  if (p->_api_version == 1)
    r = p->_pwrite_v1 (c->handle, buf, count, offset);
  else
    r = p->pwrite (c->handle, buf, count, offset, flags);
  if (r == -1) {
    *err = callback_errno (errno);
    return -1;
  }
  return flush_after ? plugin_flush (c, 0, err) : 0;
}

int
plugin_trim (struct context *c, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  bool flush_after;
  int r;

  if (!HAS_CALLBACK (p, trim))
    return missing_callback ("trim", EINVAL, err);
  flags = native_fua (c, flags, &flush_after);
  if (p->_api_version == 1)
    r = p->_trim_v1 (c->handle, count, offset);
  else
    r = p->trim (c->handle, count, offset, flags);
  if (r == -1) {
    *err = callback_errno (errno);
    return -1;
  }
  return flush_after ? plugin_flush (c, 0, err) : 0;
}

/* Try the plugin's .zero; 1 when the plugin declined (ENOTSUP) and the
 * caller should write zeroes itself.
 */
static int
zero_natively (struct context *c, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  const struct nbdkit_plugin *p = &plugin.p;
  bool fast = flags & NBDKIT_FLAG_FAST_ZERO;
  int r;

  thread_clear_error ();
  if (p->_api_version == 1)
    r = p->_zero_v1 (c->handle, count, offset,
                     !!(flags & NBDKIT_FLAG_MAY_TRIM));
  else
    r = p->zero (c->handle, count, offset, flags);
  if (r == 0)
    return 0;
  *err = callback_errno (errno);
  /* A plugin may decline at run time; then write zeroes ourselves
   * unless the client asked for a fast zero (§4.3).
   */
  if (fast || (*err != ENOTSUP && *err != EOPNOTSUPP))
    return -1;
  thread_clear_error ();
  return 1;
}

int
plugin_zero (struct context *c, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  uint32_t native_flags;
  bool flush_after;
  int r;

  /* can_zero without .zero: emulated, as nbdkit does. */
  if (ctx_can_zero (c) != NBDKIT_ZERO_NATIVE ||
      !HAS_CALLBACK (&plugin.p, zero))
    return ctx_zero_by_writing (c, count, offset, flags, err);
  native_flags = native_fua (c, flags, &flush_after);
  r = zero_natively (c, count, offset, native_flags, err);
  if (r == 1)
    return ctx_zero_by_writing (c, count, offset, flags, err);
  if (r == -1)
    return -1;
  return flush_after ? plugin_flush (c, 0, err) : 0;
}

/* meta-ext.h: the plugin is the bottom layer, depth 1 where it has
 * data and 0 in its holes.  Plugins never see the flag.
 */
static void
plugin_depths (struct nbdkit_extents *extents, size_t from)
{
  for (size_t i = from; i < extents->len; i++) {
    uint32_t t = extents->ptr[i].type;

    extents->ptr[i].type =
      NBDSRV_WITH_DEPTH (t, (t & NBDKIT_EXTENT_HOLE) ? 0 : 1);
  }
}

int
plugin_extents (struct context *c, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  size_t from = extents->len;
  int r;

  /* can_extents without .extents: everything is data (§4.3). */
  if (plugin.p.extents == NULL)
    r = nbdkit_add_extent (extents, offset, count, 0);
  else
    r = plugin.p.extents (c->handle, count, offset,
                          flags & ~NBDSRV_FLAG_DEPTH, extents);
  if (r == 0 && (flags & NBDSRV_FLAG_DEPTH))
    plugin_depths (extents, from);
  RESULT (r);
}

int
plugin_cache (struct context *c, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  int r;

  if (plugin.p.cache == NULL)
    return 0;
  r = plugin.p.cache (c->handle, count, offset, 0);
  RESULT (r);
}

/* write-target.h, where the plugin offers it: -1 without an error
 * when it does not, so the caller receives into a buffer instead.
 */
int
plugin_write_target (struct context *c, uint32_t count, uint64_t offset,
                     struct iovec *iov, int *iovcnt, void **token)
{
  if (plugin.write_target == NULL)
    return -1;
  return plugin.write_target (c->handle, count, offset, iov, iovcnt, token);
}

int
plugin_write_target_done (struct context *c, void *token, bool commit,
                          int *err)
{
  int r = plugin.write_target_done (c->handle, token, commit);

  RESULT (r);
}

/* read-source.h, where the plugin offers it: -1 without an error when
 * it does not, so the caller reads into a buffer instead.
 */
int
plugin_read_source (struct context *c, uint32_t count, uint64_t offset,
                    int *fd, uint64_t *fd_offset, unsigned *flags)
{
  if (plugin.read_source == NULL)
    return -1;
  *flags = 0;
  return plugin.read_source (c->handle, count, offset, fd, fd_offset,
                             flags);
}

/* nbdsrv: contexts, one layer's state for one use of an export.
 *
 * A connection opens the top layer's context, whose filter opens the
 * one below (next_open), and so on down to the plugin.  This file owns
 * their life cycle in nbdkit's order (open top-down as each filter
 * calls next, prepare bottom-up, finalize and close top-down), caches
 * each layer's can_* answers and size for the life of the context, and
 * gives filters their nbdkit_next: the same calls, checked, because a
 * filter's mistake must fail one request, not the server.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "minmax.h"
#include "slab.h"

/* Emulated CACHE reads in pieces of nbdkit's largest request, so a
 * slow plugin is called as often as under nbdkit.
 */
#define CACHE_PIECE (64 * 1024 * 1024)

/* The answer of C's own layer, filter or plugin. */
#define LAYER(c, fn, ...)                                       \
  ((c)->b->is_plugin ? plugin_##fn ((c), ##__VA_ARGS__)         \
                     : filter_##fn ((c), ##__VA_ARGS__))

static const struct nbdkit_next_ops next_ops;

/* One context per layer per connection: from slabs, like the
 * connections themselves (slab.c).
 */
static struct slab_pool ctx_pool = SLAB_POOL_INIT (sizeof (struct context));

void
ctx_pool_trim (void)
{
  slab_trim (&ctx_pool);
}

struct context *
ctx_open (struct nbdkit_backend *b, bool readonly, const char *exportname,
          bool shared)
{
  struct context *c = slab_alloc (&ctx_pool);

  if (c == NULL) {
    nbdkit_error ("cannot open the %s layer: %m", b->name);
    return NULL;
  }
  c->ops = next_ops;
  c->b = b;
  c->conn = shared ? NULL : thread_state ()->conn;
  c->readonly = readonly;
  c->size = -1;
  c->can_write = readonly ? 0 : -1;
  c->can_flush = c->is_rotational = c->can_trim = c->can_zero = -1;
  c->can_fast_zero = c->can_extents = c->can_fua = -1;
  c->can_multi_conn = c->can_cache = -1;
  if (b->is_plugin)
    c->handle = plugin_open (c, exportname);
  else
    c->handle = filter_open (c, readonly, exportname);
  if (c->handle == NULL) {
    slab_free (&ctx_pool, c);
    return NULL;
  }
  return c;
}

/* Bottom-up, so a filter's .prepare may use the layer below. */
int
ctx_prepare (struct context *c)
{
  if (c->prepared)
    return 0;
  if (c->c_next && ctx_prepare (c->c_next) == -1)
    return -1;
  if (!c->b->is_plugin && filter_prepare (c) == -1)
    return -1;
  c->prepared = true;
  return 0;
}

/* Top-down, the reverse of prepare; every prepared layer is finalized
 * even when one above failed.
 */
int
ctx_finalize (struct context *c)
{
  int r = 0;

  if (c->prepared && !c->b->is_plugin)
    r = filter_finalize (c);
  c->prepared = false;
  if (c->c_next && ctx_finalize (c->c_next) == -1)
    r = -1;
  return r;
}

/* Top-down: a filter's .close, then whatever context is still
 * associated below it.
 */
void
ctx_close (struct context *c)
{
  if (c == NULL)
    return;
  if (c->b->is_plugin)
    plugin_close (c);
  else {
    filter_close (c);
    ctx_close (c->c_next);
  }
  slab_free (&ctx_pool, c);
}

int64_t
ctx_get_size (struct context *c)
{
  if (c->size == -1) {
    int64_t r = LAYER (c, get_size);

    if (r < -1) {
      nbdkit_error ("%s: get_size returned %" PRIi64 ", not a size",
                    c->b->name, r);
      return -1;
    }
    c->size = r;
  }
  return c->size;
}

const char *
ctx_export_description (struct context *c)
{
  return LAYER (c, export_description);
}

int
ctx_block_size (struct context *c, uint32_t *minimum, uint32_t *preferred,
                uint32_t *maximum)
{
  return LAYER (c, block_size, minimum, preferred, maximum);
}

/* A boolean answer: anything positive counts as 1. */
#define CACHED_BOOL(c, field, call)                             \
  do {                                                          \
    if ((c)->field == -1) {                                     \
      int r_ = (call);                                          \
      (c)->field = r_ == -1 ? -1 : r_ > 0;                      \
    }                                                           \
    return (c)->field;                                          \
  } while (0)

/* A three-way answer (NBDKIT_ZERO_*, _FUA_*, _CACHE_*, all 0..2). */
#define CACHED_TRI(c, field, call)                              \
  do {                                                          \
    if ((c)->field == -1) {                                     \
      int r_ = (call);                                          \
      (c)->field = r_ == -1 ? -1 : MIN (MAX (r_, 0), 2);        \
    }                                                           \
    return (c)->field;                                          \
  } while (0)

int
ctx_can_write (struct context *c)
{
  CACHED_BOOL (c, can_write, LAYER (c, can_write));
}

int
ctx_can_flush (struct context *c)
{
  CACHED_BOOL (c, can_flush, LAYER (c, can_flush));
}

int
ctx_is_rotational (struct context *c)
{
  CACHED_BOOL (c, is_rotational, LAYER (c, is_rotational));
}

/* Trim, zero and FUA only mean something on a writable layer, so a
 * read-only one is not asked (as nbdkit).
 */
int
ctx_can_trim (struct context *c)
{
  int w = ctx_can_write (c);

  if (w != 1)
    return w;
  CACHED_BOOL (c, can_trim, LAYER (c, can_trim));
}

int
ctx_can_zero (struct context *c)
{
  int w = ctx_can_write (c);

  if (w != 1)
    return w == -1 ? -1 : NBDKIT_ZERO_NONE;
  CACHED_TRI (c, can_zero, LAYER (c, can_zero));
}

int
ctx_can_fast_zero (struct context *c)
{
  int z = ctx_can_zero (c);

  if (z < NBDKIT_ZERO_EMULATE)
    return z;
  CACHED_BOOL (c, can_fast_zero, LAYER (c, can_fast_zero));
}

int
ctx_can_fua (struct context *c)
{
  int w = ctx_can_write (c);

  if (w != 1)
    return w == -1 ? -1 : NBDKIT_FUA_NONE;
  CACHED_TRI (c, can_fua, LAYER (c, can_fua));
}

int
ctx_can_extents (struct context *c)
{
  CACHED_BOOL (c, can_extents, LAYER (c, can_extents));
}

int
ctx_can_multi_conn (struct context *c)
{
  CACHED_BOOL (c, can_multi_conn, LAYER (c, can_multi_conn));
}

int
ctx_can_cache (struct context *c)
{
  CACHED_TRI (c, can_cache, LAYER (c, can_cache));
}

int
ctx_pread (struct context *c, void *buf, uint32_t count, uint64_t offset,
           uint32_t flags, int *err)
{
  return LAYER (c, pread, buf, count, offset, flags, err);
}

int
ctx_pwrite (struct context *c, const void *buf, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  return LAYER (c, pwrite, buf, count, offset, flags, err);
}

int
ctx_flush (struct context *c, uint32_t flags, int *err)
{
  return LAYER (c, flush, flags, err);
}

int
ctx_trim (struct context *c, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  return LAYER (c, trim, count, offset, flags, err);
}

/* Emulated zero writes from this buffer, in pieces of nbdkit's largest
 * request, so a slow plugin (a script) is called as often as under
 * nbdkit.  Never written itself, it stays in .bss and the shared zero
 * page and costs no memory.
 */
#define ZERO_PIECE (64 * 1024 * 1024)
static char zero_piece[ZERO_PIECE];

/* Write zeroes through C's own pwrite, FUA on the last piece; a fast
 * zero fails at once, as nbdkit's does (§4.3).  For a filter whose
 * can_zero is NBDKIT_ZERO_EMULATE, which is never called for zero
 * (nbdkit-filter(3)), and for a plugin that cannot zero or declines.
 */
int
ctx_zero_by_writing (struct context *c, uint32_t count, uint64_t offset,
                     uint32_t flags, int *err)
{
  uint32_t n;

  if (flags & NBDKIT_FLAG_FAST_ZERO) {
    *err = ENOTSUP;
    return -1;
  }
  while (count > 0) {
    n = MIN (count, (uint32_t) ZERO_PIECE);
    if (ctx_pwrite (c, zero_piece, n, offset,
                    n == count ? flags & NBDKIT_FLAG_FUA : 0, err) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

int
ctx_zero (struct context *c, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  if (!c->b->is_plugin && ctx_can_zero (c) == NBDKIT_ZERO_EMULATE)
    return ctx_zero_by_writing (c, count, offset, flags, err);
  return LAYER (c, zero, count, offset, flags, err);
}

/* A layer without extents describes everything as data (§4.3).  A
 * layer that succeeds without describing OFFSET would make its caller
 * loop for ever (nbdkit asserts): it fails the request instead.
 */
int
ctx_extents (struct context *c, uint32_t count, uint64_t offset,
             uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  size_t before = nbdkit_extents_count (extents);
  int r = ctx_can_extents (c);

  if (r == -1) {
    *err = EIO;
    return -1;
  }
  if (r == 0) {
    uint32_t type = flags & NBDSRV_FLAG_DEPTH ? NBDSRV_WITH_DEPTH (0, 1) : 0;

    if (nbdkit_add_extent (extents, offset, count, type) == -1) {
      *err = errno;
      return -1;
    }
    return 0;
  }
  if (LAYER (c, extents, count, offset, flags, extents, err) == -1)
    return -1;
  if (nbdkit_extents_count (extents) == before) {
    nbdkit_error ("extents: the %s layer returned no extent covering "
                  "offset %" PRIu64, c->b->name, offset);
    *err = EINVAL;
    return -1;
  }
  return 0;
}

/* Emulated: read the range, so the layer's own caches warm up.  Into a
 * buffer of its own: a filter may ask for CACHE while the caller's
 * thread buffer holds a READ's data (readahead does).
 */
static int
cache_by_reading (struct context *c, uint32_t count, uint64_t offset,
                  int *err)
{
  uint32_t piece = MIN (count, (uint32_t) CACHE_PIECE);
  char *buf = malloc (piece);
  int r = 0;

  if (buf == NULL) {
    *err = ENOMEM;
    return -1;
  }
  while (count > 0 && r == 0) {
    uint32_t n = MIN (count, piece);

    r = ctx_pread (c, buf, n, offset, 0, err);
    count -= n;
    offset += n;
  }
  free (buf);
  return r;
}

int
ctx_cache (struct context *c, uint32_t count, uint64_t offset,
           uint32_t flags, int *err)
{
  switch (ctx_can_cache (c)) {
  case NBDKIT_CACHE_NATIVE:
    return LAYER (c, cache, count, offset, flags, err);
  case NBDKIT_CACHE_EMULATE:
    return cache_by_reading (c, count, offset, err);
  default:
    *err = EINVAL;
    return -1;
  }
}

/* nbdkit_next: what a filter calls on the layer below.  The protocol
 * layer has validated the client's request against the top of the
 * stack, but a filter may compute ranges and flags of its own, so the
 * data calls check them against the layer they go to.
 */
#define CTX(n) ((struct context *) (n))

static int
next_prepare (nbdkit_next *n)
{
  return ctx_prepare (CTX (n));
}

static int
next_finalize (nbdkit_next *n)
{
  return ctx_finalize (CTX (n));
}

static int64_t
next_get_size (nbdkit_next *n)
{
  return ctx_get_size (CTX (n));
}

static const char *
next_export_description (nbdkit_next *n)
{
  return ctx_export_description (CTX (n));
}

static int
next_block_size (nbdkit_next *n, uint32_t *minimum, uint32_t *preferred,
                 uint32_t *maximum)
{
  return ctx_block_size (CTX (n), minimum, preferred, maximum);
}

#define NEXT_CAN(fn) \
  static int next_##fn (nbdkit_next *n) { return ctx_##fn (CTX (n)); }
NEXT_CAN (can_write)
NEXT_CAN (can_flush)
NEXT_CAN (is_rotational)
NEXT_CAN (can_trim)
NEXT_CAN (can_zero)
NEXT_CAN (can_fast_zero)
NEXT_CAN (can_extents)
NEXT_CAN (can_fua)
NEXT_CAN (can_multi_conn)
NEXT_CAN (can_cache)
#undef NEXT_CAN

/* A filter's request outside the layer below, or one the layer did
 * not advertise, fails with EINVAL and a message naming both.
 */
static int
next_misuse (struct context *c, const char *call, const char *why,
             int *err)
{
  nbdkit_error ("a filter called %s on the %s layer %s: this is a bug in "
                "the filter above %s", call, c->b->name, why, c->b->name);
  *err = EINVAL;
  return -1;
}

static int
next_check (struct context *c, const char *call, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  int64_t size = ctx_get_size (c);

  if (size == -1) {
    *err = EIO;
    return -1;
  }
  if (count == 0 || offset > (uint64_t) size || count > size - offset)
    return next_misuse (c, call, "outside its size", err);
  if ((flags & NBDKIT_FLAG_FUA) && ctx_can_fua (c) <= NBDKIT_FUA_NONE)
    return next_misuse (c, call, "with FUA, which it does not offer", err);
  return 0;
}

static int
next_check_write (struct context *c, const char *call, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  if (ctx_can_write (c) != 1) {
    *err = EROFS;
    return -1;
  }
  return next_check (c, call, count, offset, flags, err);
}

static int
next_pread (nbdkit_next *n, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags, int *err)
{
  if (next_check (CTX (n), "pread", count, offset, 0, err) == -1)
    return -1;
  return ctx_pread (CTX (n), buf, count, offset, flags, err);
}

static int
next_pwrite (nbdkit_next *n, const void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  if (next_check_write (CTX (n), "pwrite", count, offset, flags, err) == -1)
    return -1;
  return ctx_pwrite (CTX (n), buf, count, offset, flags, err);
}

static int
next_flush (nbdkit_next *n, uint32_t flags, int *err)
{
  if (ctx_can_flush (CTX (n)) != 1)
    return next_misuse (CTX (n), "flush", "which does not flush", err);
  return ctx_flush (CTX (n), flags, err);
}

static int
next_trim (nbdkit_next *n, uint32_t count, uint64_t offset, uint32_t flags,
           int *err)
{
  if (next_check_write (CTX (n), "trim", count, offset, flags, err) == -1)
    return -1;
  if (ctx_can_trim (CTX (n)) != 1)
    return next_misuse (CTX (n), "trim", "which does not trim", err);
  return ctx_trim (CTX (n), count, offset, flags, err);
}

static int
next_zero (nbdkit_next *n, uint32_t count, uint64_t offset, uint32_t flags,
           int *err)
{
  struct context *c = CTX (n);

  if (next_check_write (c, "zero", count, offset, flags, err) == -1)
    return -1;
  if (ctx_can_zero (c) <= NBDKIT_ZERO_NONE)
    return next_misuse (c, "zero", "which does not zero", err);
  /* A fast zero the layer cannot do fails at once, as the client's
   * would (§4.3).
   */
  if ((flags & NBDKIT_FLAG_FAST_ZERO) && ctx_can_fast_zero (c) != 1) {
    *err = ENOTSUP;
    return -1;
  }
  return ctx_zero (c, count, offset, flags, err);
}

static int
next_extents (nbdkit_next *n, uint32_t count, uint64_t offset,
              uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  if (next_check (CTX (n), "extents", count, offset, 0, err) == -1)
    return -1;
  return ctx_extents (CTX (n), count, offset, flags, extents, err);
}

static int
next_cache (nbdkit_next *n, uint32_t count, uint64_t offset,
            uint32_t flags, int *err)
{
  if (next_check (CTX (n), "cache", count, offset, 0, err) == -1)
    return -1;
  return ctx_cache (CTX (n), count, offset, flags, err);
}

static const struct nbdkit_next_ops next_ops = {
  .prepare = next_prepare,
  .finalize = next_finalize,
  .get_size = next_get_size,
  .export_description = next_export_description,
  .block_size = next_block_size,
  .can_write = next_can_write,
  .can_flush = next_can_flush,
  .is_rotational = next_is_rotational,
  .can_trim = next_can_trim,
  .can_zero = next_can_zero,
  .can_fast_zero = next_can_fast_zero,
  .can_extents = next_can_extents,
  .can_fua = next_can_fua,
  .can_multi_conn = next_can_multi_conn,
  .can_cache = next_can_cache,
  .pread = next_pread,
  .pwrite = next_pwrite,
  .flush = next_flush,
  .trim = next_trim,
  .zero = next_zero,
  .extents = next_extents,
  .cache = next_cache,
};

/* nbdsrv: a filter as one layer of a context, and the filter API for
 * contexts a filter manages itself (nbdkit_next_context_open and
 * friends).
 *
 * A callback the filter leaves out passes the call to the context
 * below unchanged, so a filter pays only for what it intercepts.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>

#include "internal.h"

#define FILTER(c) (&(c)->b->f)

/* The filter's view of the context below: NULL when it did not open
 * one (or dropped it with nbdkit_context_set_next).
 */
static nbdkit_next *
below (struct context *c)
{
  return c->c_next ? &c->c_next->ops : NULL;
}

/* A filter that skipped next_open cannot pass requests on. */
static struct context *
next_or_fail (struct context *c, int *err)
{
  if (c->c_next == NULL) {
    nbdkit_error ("%s: the filter has no layer below open, so it cannot "
                  "pass this request on", c->b->name);
    if (err)
      *err = EIO;
  }
  return c->c_next;
}

/* The filter's result: a filter that fails without an errno fails the
 * request with EIO.
 */
static int
result (int r, int *err)
{
  if (r == -1 && *err == 0)
    *err = EIO;
  return r == -1 ? -1 : 0;
}

/* The next_open a filter's .open receives. */
static int
next_open (nbdkit_context *context, int readonly, const char *exportname)
{
  struct context *c = (struct context *) context;
  struct context *n = ctx_open (c->b->next, readonly, exportname,
                                c->conn == NULL);

  if (n == NULL)
    return -1;
  ctx_close (c->c_next);        /* a second call replaces the first */
  c->c_next = n;
  return 0;
}

void *
filter_open (struct context *c, bool readonly, const char *exportname)
{
  const struct nbdkit_filter *f = FILTER (c);
  nbdkit_context *self = (nbdkit_context *) c;
  void *h;

  if (f->open)
    h = f->open (next_open, self, readonly, exportname, nbdkit_is_tls ());
  else
    h = next_open (self, readonly, exportname) == -1 ? NULL
      : NBDKIT_HANDLE_NOT_NEEDED;
  if (h == NULL) {
    ctx_close (c->c_next);
    c->c_next = NULL;
  }
  return h;
}

void
filter_close (struct context *c)
{
  if (FILTER (c)->close)
    FILTER (c)->close (c->handle);
}

int
filter_prepare (struct context *c)
{
  const struct nbdkit_filter *f = FILTER (c);

  return f->prepare ? f->prepare (below (c), c->handle, c->readonly) : 0;
}

int
filter_finalize (struct context *c)
{
  const struct nbdkit_filter *f = FILTER (c);

  return f->finalize ? f->finalize (below (c), c->handle) : 0;
}

/* Ask the filter, or the layer below when it does not intercept FN. */
#define ASK(c, fn, ...)                                                 \
  do {                                                                  \
    struct context *n_;                                                 \
    if (FILTER (c)->fn)                                                 \
      return FILTER (c)->fn (below (c), (c)->handle, ##__VA_ARGS__);    \
    n_ = next_or_fail ((c), NULL);                                      \
    return n_ ? ctx_##fn (n_, ##__VA_ARGS__) : -1;                      \
  } while (0)

int64_t
filter_get_size (struct context *c)
{
  ASK (c, get_size);
}

const char *
filter_export_description (struct context *c)
{
  if (FILTER (c)->export_description)
    return FILTER (c)->export_description (below (c), c->handle);
  return c->c_next ? ctx_export_description (c->c_next) : NULL;
}

int
filter_block_size (struct context *c, uint32_t *minimum,
                   uint32_t *preferred, uint32_t *maximum)
{
  ASK (c, block_size, minimum, preferred, maximum);
}

int filter_can_write (struct context *c) { ASK (c, can_write); }
int filter_can_flush (struct context *c) { ASK (c, can_flush); }
int filter_is_rotational (struct context *c) { ASK (c, is_rotational); }
int filter_can_trim (struct context *c) { ASK (c, can_trim); }
int filter_can_zero (struct context *c) { ASK (c, can_zero); }
int filter_can_fast_zero (struct context *c) { ASK (c, can_fast_zero); }
int filter_can_extents (struct context *c) { ASK (c, can_extents); }
int filter_can_fua (struct context *c) { ASK (c, can_fua); }
int filter_can_multi_conn (struct context *c) { ASK (c, can_multi_conn); }
int filter_can_cache (struct context *c) { ASK (c, can_cache); }

/* Data calls: the filter's, with an errno guaranteed on failure, or
 * the layer below's.
 */
#define PASS(c, fn, err, ...)                                           \
  do {                                                                  \
    struct context *n_;                                                 \
    if (FILTER (c)->fn) {                                               \
      *(err) = 0;                                                       \
      return result (FILTER (c)->fn (below (c), (c)->handle,            \
                                     __VA_ARGS__, (err)), (err));       \
    }                                                                   \
    n_ = next_or_fail ((c), (err));                                     \
    return n_ ? ctx_##fn (n_, __VA_ARGS__, (err)) : -1;                 \
  } while (0)

int
filter_pread (struct context *c, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  PASS (c, pread, err, buf, count, offset, flags);
}

int
filter_pwrite (struct context *c, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  PASS (c, pwrite, err, buf, count, offset, flags);
}

int
filter_flush (struct context *c, uint32_t flags, int *err)
{
  PASS (c, flush, err, flags);
}

int
filter_trim (struct context *c, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  PASS (c, trim, err, count, offset, flags);
}

int
filter_zero (struct context *c, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  PASS (c, zero, err, count, offset, flags);
}

int
filter_extents (struct context *c, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  PASS (c, extents, err, count, offset, flags, extents);
}

int
filter_cache (struct context *c, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  PASS (c, cache, err, count, offset, flags);
}

/* The filter API for contexts a filter manages itself (nbdkit-filter(3),
 * "nbdkit_next").  A filter's nbdkit_context is its own layer's context;
 * its nbdkit_backend is the layer below.
 */
nbdkit_backend *
nbdkit_context_get_backend (nbdkit_context *context)
{
  return ((struct context *) context)->b->next;
}

nbdkit_next *
nbdkit_next_context_open (nbdkit_backend *backend, int readonly,
                          const char *exportname, int shared)
{
  struct context *c;

  if (backend == NULL) {
    nbdkit_error ("nbdkit_next_context_open: no layer below");
    return NULL;
  }
  if (!shared && thread_state ()->conn == NULL) {
    nbdkit_error ("nbdkit_next_context_open: outside a connection only "
                  "a shared context can be opened");
    return NULL;
  }
  c = ctx_open (backend, readonly, exportname, shared);
  return c ? &c->ops : NULL;
}

void
nbdkit_next_context_close (nbdkit_next *next)
{
  ctx_close ((struct context *) next);
}

nbdkit_next *
nbdkit_context_set_next (nbdkit_context *context, nbdkit_next *next)
{
  struct context *c = (struct context *) context;
  struct context *old = c->c_next;

  c->c_next = (struct context *) next;
  return old ? &old->ops : NULL;
}

/* nbdsrv retry filter: when a request fails, close the layer below,
 * wait, open it again and repeat the request, up to retries= times,
 * so a long copy survives a plugin whose remote end went away for a
 * while.  The retry-request filter is the light version that does
 * not reopen.
 *
 * The reopened layer replaces the old one for the rest of the
 * connection (nbdkit_context_set_next), so later requests use it too.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

static unsigned retries = 5;
static unsigned initial_delay = 2;
static bool exponential = true;
static bool force_readonly;

struct retry_handle {
  nbdkit_context *context;      /* this filter's context */
  const char *exportname;       /* interned for the connection */
  int readonly;                 /* as opened, or 1 after retry-readonly */
  bool open;                    /* false after a reopen that failed */
  unsigned reopens;
  int64_t size;                 /* the export size the client was told */
};

static int
retry_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  int r;

  if (strcmp (key, "retries") == 0)
    return nbdkit_parse_unsigned ("retries", value, &retries);
  if (strcmp (key, "retry-delay") == 0) {
    if (nbdkit_parse_unsigned ("retry-delay", value, &initial_delay) == -1)
      return -1;
    if (initial_delay == 0) {
      nbdkit_error ("retry-delay cannot be 0: give 1 second or more");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "retry-exponential") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    exponential = r;
    return 0;
  }
  if (strcmp (key, "retry-readonly") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    force_readonly = r;
    return 0;
  }
  return next (nxdata, key, value);
}

#define retry_config_help \
  "retries=<N>                    Number of retries (default: 5).\n" \
  "retry-delay=<N>                Second to wait before retry.\n" \
  "retry-exponential=yes|no       Exponential back-off (default: yes).\n" \
  "retry-readonly=yes|no          Force read-only on failure (default: no)."

/* A reopen swaps the layer below under the connection's feet: no
 * other request of the connection may be using it meanwhile.
 */
static int
retry_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;
}

static void *
retry_open (nbdkit_next_open *next, nbdkit_context *nxdata,
            int readonly, const char *exportname, int is_tls)
{
  struct retry_handle *h;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  h = malloc (sizeof *h);
  if (h == NULL) {
    nbdkit_error ("retry: malloc: %m");
    return NULL;
  }
  h->context = nxdata;
  h->exportname = nbdkit_strdup_intern (exportname);
  h->readonly = readonly;
  h->open = true;
  h->reopens = 0;
  if (h->exportname == NULL) {
    free (h);
    return NULL;
  }
  return h;
}

static int
retry_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct retry_handle *h = handle;

  h->size = next->get_size (next);
  return h->size == -1 ? -1 : 0;
}

/* A reopened layer must show the client the same disk.  Asking every
 * capability also has the server record them for the new context, as
 * nbdkit needs before it passes data calls to it.
 */
static int
retry_check_reopened (struct retry_handle *h, nbdkit_next *fresh)
{
  int64_t size = fresh->get_size (fresh);

  if (size != h->size) {
    nbdkit_error ("retry: the export size changed from %" PRId64 " to %"
                  PRId64 " after a reopen: giving up on this connection",
                  h->size, size);
    return -1;
  }
  if (fresh->can_write (fresh) == -1 || fresh->can_flush (fresh) == -1
      || fresh->can_trim (fresh) == -1 || fresh->can_zero (fresh) == -1
      || fresh->can_fast_zero (fresh) == -1 || fresh->can_fua (fresh) == -1
      || fresh->can_extents (fresh) == -1 || fresh->can_cache (fresh) == -1
      || fresh->is_rotational (fresh) == -1
      || fresh->can_multi_conn (fresh) == -1)
    return -1;
  return 0;
}

static void
retry_close (void *handle)
{
  struct retry_handle *h = handle;

  nbdkit_debug ("retry: reopens needed: %u", h->reopens);
  free (h);
}

/* One request's retry state. */
struct attempt {
  unsigned retry;               /* retries done */
  unsigned delay;               /* seconds before the next one */
};

/* After a failure of WHAT: if retries remain, wait, reopen the layer
 * below into *NEXT and return true; else return false and leave *ERR.
 */
static bool
retry_again (struct retry_handle *h, struct attempt *a, nbdkit_next **next,
             const char *what, int *err)
{
  nbdkit_next *fresh;

  if (a->retry >= retries) {
    nbdkit_debug ("retry: %s: giving up after %u retries", what, a->retry);
    return false;
  }
  a->delay = a->retry == 0 ? initial_delay
    : exponential ? a->delay * 2 : a->delay;
  a->retry++;
  nbdkit_debug ("retry %u: %s failed with errno %d, retrying in %u s",
                a->retry, what, *err, a->delay);
  if (nbdkit_nanosleep (a->delay, 0) == -1) {
    *err = errno;
    return false;
  }
  if (force_readonly)
    h->readonly = 1;

  /* Close the old context first: a plugin may allow one connection
   * to its remote end at a time.
   */
  if (h->open) {
    (*next)->finalize (*next);
    nbdkit_next_context_close (*next);
    nbdkit_context_set_next (h->context, NULL);
    h->open = false;
  }
  fresh = nbdkit_next_context_open (nbdkit_context_get_backend (h->context),
                                    h->readonly, h->exportname, 0);
  if (fresh == NULL)
    return true;              /* counts as a retry; the request fails */
  if (fresh->prepare (fresh) == -1) {
    nbdkit_next_context_close (fresh);
    return true;
  }
  if (retry_check_reopened (h, fresh) == -1) {
    fresh->finalize (fresh);
    nbdkit_next_context_close (fresh);
    return true;
  }
  nbdkit_context_set_next (h->context, fresh);
  *next = fresh;
  h->open = true;
  h->reopens++;
  return true;
}

/* Run EXPR (which uses next) until it succeeds or retries run out.
 * With no open layer below (a reopen failed) the attempt fails with
 * ESHUTDOWN and the next retry reopens.  CHECK is an extra refusal,
 * for writes after retry-readonly.
 */
#define RETRY(what, check, expr)                                      \
  do {                                                                \
    struct retry_handle *h_ = handle;                                 \
    struct attempt a_ = { 0, 0 };                                     \
    int r_;                                                           \
    for (;;) {                                                        \
      if (!h_->open) {                                                \
        *err = ESHUTDOWN;                                             \
        r_ = -1;                                                      \
      }                                                               \
      else if (check) {                                               \
        *err = EROFS;                                                 \
        r_ = -1;                                                      \
      }                                                               \
      else                                                            \
        r_ = (expr);                                                  \
      if (r_ == 0 || !retry_again (h_, &a_, &next, what, err))        \
        return r_;                                                    \
    }                                                                 \
  } while (0)

#define READONLY_NOW (h_->readonly)

static int
retry_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  RETRY ("pread", false,
         next->pread (next, buf, count, offset, flags, err));
}

static int
retry_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  RETRY ("pwrite", READONLY_NOW,
         next->pwrite (next, buf, count, offset, flags, err));
}

static int
retry_trim (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  RETRY ("trim", READONLY_NOW,
         next->trim (next, count, offset, flags, err));
}

static int
retry_zero (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  RETRY ("zero", READONLY_NOW,
         next->zero (next, count, offset, flags, err));
}

static int
retry_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  RETRY ("flush", false, next->flush (next, flags, err));
}

static int
retry_extents (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  RETRY ("extents", false,
         next->extents (next, count, offset, flags, extents, err));
}

static int
retry_cache (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  RETRY ("cache", false, next->cache (next, count, offset, flags, err));
}

static struct nbdkit_filter filter = {
  .name = "retry",
  .longname = "nbdsrv retry filter",
  .config = retry_config,
  .config_help = retry_config_help,
  .thread_model = retry_thread_model,
  .open = retry_open,
  .prepare = retry_prepare,
  .close = retry_close,
  .pread = retry_pread,
  .pwrite = retry_pwrite,
  .trim = retry_trim,
  .zero = retry_zero,
  .flush = retry_flush,
  .extents = retry_extents,
  .cache = retry_cache,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv tls-fallback filter: give plaintext clients a harmless
 * 512-byte read-only disk holding a message, and only clients that
 * negotiated TLS the real export.
 *
 * For a plaintext client the layer below is never opened, so nothing
 * it does at open can be used by unauthenticated clients to tie it up.
 */
#include <string.h>

#include <nbdkit-filter.h>

#define FALLBACK_SIZE 512

static const char *tlsreadme =
  "This NBD server requires TLS authentication before it will serve "
  "useful data.\n";

/* The handle of a plaintext connection; TLS connections pass through
 * with NBDKIT_HANDLE_NOT_NEEDED.
 */
static char plaintext_marker;
#define PLAINTEXT(h) ((h) == &plaintext_marker)

static int
tlsf_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
             const char *key, const char *value)
{
  if (strcmp (key, "tlsreadme") == 0) {
    tlsreadme = value;
    return 0;
  }
  return next (nxdata, key, value);
}

#define tlsf_config_help \
  "tlsreadme=<MESSAGE>            Alternative contents for the plaintext\n" \
  "                               dummy export."

/* A plaintext client holding its connection would starve everybody
 * under a one-connection-at-a-time plugin.
 */
static int
tlsf_get_ready (int thread_model)
{
  if (thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS) {
    nbdkit_error ("the tls-fallback filter requires parallel connection "
                  "support: use a plugin whose thread model is at least "
                  "serialize_all_requests");
    return -1;
  }
  return 0;
}

static int
tlsf_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                   int readonly, int is_tls, struct nbdkit_exports *exports)
{
  if (!is_tls)
    return nbdkit_add_export (exports, "", NULL);
  return next (nxdata, readonly, exports);
}

static const char *
tlsf_default_export (nbdkit_next_default_export *next,
                     nbdkit_backend *nxdata, int readonly, int is_tls)
{
  if (!is_tls)
    return "";
  return next (nxdata, readonly);
}

static void *
tlsf_open (nbdkit_next_open *next, nbdkit_context *nxdata,
           int readonly, const char *exportname, int is_tls)
{
  if (!is_tls)
    return &plaintext_marker;
  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
tlsf_get_size (nbdkit_next *next, void *handle)
{
  return PLAINTEXT (handle) ? FALLBACK_SIZE : next->get_size (next);
}

static const char *
tlsf_export_description (nbdkit_next *next, void *handle)
{
  return PLAINTEXT (handle) ? NULL : next->export_description (next);
}

static int
tlsf_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                 uint32_t *preferred, uint32_t *maximum)
{
  if (PLAINTEXT (handle)) {
    *minimum = *preferred = *maximum = 0;
    return 0;
  }
  return next->block_size (next, minimum, preferred, maximum);
}

/* Every capability is off for the dummy export. */
#define CAN(fn)                                                 \
  static int                                                    \
  tlsf_##fn (nbdkit_next *next, void *handle)                   \
  {                                                             \
    return PLAINTEXT (handle) ? 0 : next->fn (next);            \
  }
CAN (can_write)
CAN (can_flush)
CAN (is_rotational)
CAN (can_trim)
CAN (can_zero)
CAN (can_fast_zero)
CAN (can_extents)
CAN (can_fua)
CAN (can_multi_conn)
CAN (can_cache)

/* The message, padded with NUL bytes to 512 (and cut there). */
static int
tlsf_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  size_t len;

  if (!PLAINTEXT (handle))
    return next->pread (next, buf, count, offset, flags, err);
  len = strnlen (tlsreadme, FALLBACK_SIZE);
  memset (buf, 0, count);
  if (offset < len)
    memcpy (buf, tlsreadme + offset,
            len - offset < count ? len - offset : count);
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "tls-fallback",
  .longname = "nbdsrv tls-fallback filter",
  .config = tlsf_config,
  .config_help = tlsf_config_help,
  .get_ready = tlsf_get_ready,
  .list_exports = tlsf_list_exports,
  .default_export = tlsf_default_export,
  .open = tlsf_open,
  .get_size = tlsf_get_size,
  .export_description = tlsf_export_description,
  .block_size = tlsf_block_size,
  .can_write = tlsf_can_write,
  .can_flush = tlsf_can_flush,
  .is_rotational = tlsf_is_rotational,
  .can_trim = tlsf_can_trim,
  .can_zero = tlsf_can_zero,
  .can_fast_zero = tlsf_can_fast_zero,
  .can_extents = tlsf_can_extents,
  .can_fua = tlsf_can_fua,
  .can_multi_conn = tlsf_can_multi_conn,
  .can_cache = tlsf_can_cache,
  .pread = tlsf_pread,
};

NBDKIT_REGISTER_FILTER (filter)

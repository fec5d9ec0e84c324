/* nbdsrv luks filter: serve the decrypted contents of a LUKS volume.
 *
 * Each connection reads the LUKS header in .prepare (LUKSv1 as nbdkit
 * 1.32 does, and LUKSv2 as well), unlocks a key slot with the
 * passphrase (once per volume: luks-keycache.c), and then decrypts
 * reads and encrypts writes sector by sector.  A wrong passphrase or a bad header fails that connection,
 * as in nbdkit: the filter cannot read the disk before a client comes.
 * Requests that cover part of a sector are read-modify-write.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"
#include "minmax.h"

/* The largest piece of a write encrypted at once: the bounce buffer
 * each thread keeps is this big at most.
 */
#define WRITE_PIECE (1024U * 1024)

/* Sector sizes go up to 4096 (LUKSv2). */
#define MAX_SECTOR 4096

const uint8_t luks_magic[LUKS_MAGIC_LEN] = { 'L', 'U', 'K', 'S', 0xba, 0xbe };

static char *passphrase;        /* owned; wiped at unload */

/* Two requests changing different bytes of one sector must not both
 * read it and write it back: partial sectors are written under this
 * lock (all connections may share the disk, so it is global).
 */
static pthread_mutex_t rmw_lock = PTHREAD_MUTEX_INITIALIZER;

struct handle {
  struct luks_header hdr;
  struct luks_pool pool;
  int unlocked;                 /* pool is set up */
  uint64_t size;                /* of the decrypted export, bytes */
};

static void
luks_unload (void)
{
  luks_keycache_wipe ();
  if (passphrase) {
    gnutls_memset (passphrase, 0, strlen (passphrase));
    free (passphrase);
  }
}

static int
luks_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
             const char *key, const char *value)
{
  if (strcmp (key, "passphrase") != 0)
    return next (nxdata, key, value);
  luks_unload ();
  passphrase = NULL;
  return nbdkit_read_password (value, &passphrase);
}

static int
luks_config_complete (nbdkit_next_config_complete *next,
                      nbdkit_backend *nxdata)
{
  if (passphrase == NULL) {
    nbdkit_error ("luks: the passphrase parameter is missing: give "
                  "passphrase=SECRET, passphrase=+FILE, passphrase=-FD "
                  "or passphrase=- to type it");
    return -1;
  }
  return next (nxdata);
}

#define luks_config_help \
  "passphrase=<SECRET>      Secret passphrase (or +FILE, -FD, - to ask)."

static void *
luks_open (nbdkit_next_open *next, nbdkit_context *nxdata,
           int readonly, const char *exportname, int is_tls)
{
  struct handle *h;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL)
    nbdkit_error ("luks: %m");
  return h;
}

static void
luks_close (void *handle)
{
  struct handle *h = handle;

  if (h->unlocked)
    luks_pool_free (&h->pool);
  gnutls_memset (h, 0, sizeof *h);
  free (h);
}

/* Read the first bytes of the disk and parse the header of whichever
 * LUKS version it is.
 */
static int
read_header (nbdkit_next *next, uint64_t disk_size, struct luks_header *h)
{
  uint8_t hdr[LUKS_V1_HEADER_SIZE];
  unsigned version;
  int err;

  if (disk_size < sizeof hdr) {
    nbdkit_error ("luks: the disk is too small (%" PRIu64 " bytes) to hold "
                  "a LUKS header: check that the plugin serves the whole "
                  "encrypted disk", disk_size);
    return -1;
  }
  if (next->pread (next, hdr, sizeof hdr, 0, 0, &err) == -1) {
    nbdkit_error ("luks: reading the LUKS header: %s", strerror (err));
    return -1;
  }
  if (memcmp (hdr, luks_magic, LUKS_MAGIC_LEN) != 0) {
    nbdkit_error ("luks: the disk has no LUKS header: check the file, or "
                  "stack --filter=partition after luks for a LUKS "
                  "partition");
    return -1;
  }
  version = hdr[6] << 8 | hdr[7];
  if (version == 1)
    return luks_header_v1_parse (hdr, disk_size, h);
  if (version == 2)
    return luks_header_v2_read (next, disk_size, h);
  nbdkit_error ("luks: the disk has a LUKS version %u header: only "
                "LUKSv1 and LUKSv2 are supported", version);
  return -1;
}

static int
luks_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  uint8_t key[LUKS_MAX_KEY];
  int64_t disk_size;
  uint64_t avail;

  disk_size = next->get_size (next);
  if (disk_size == -1)
    return -1;
  if (read_header (next, disk_size, &h->hdr) == -1)
    return -1;
  avail = disk_size - h->hdr.payload_offset;
  if (h->hdr.payload_size > avail) {
    nbdkit_error ("luks: the LUKS data segment ends at %" PRIu64 ", beyond "
                  "the end of the %" PRIu64 "-byte disk: the disk is "
                  "truncated", h->hdr.payload_offset + h->hdr.payload_size,
                  disk_size);
    return -1;
  }
  if (h->hdr.payload_size)
    avail = h->hdr.payload_size;
  h->size = avail / h->hdr.sector_size * h->hdr.sector_size;
  nbdkit_debug ("luks: LUKSv%u %s, %zu-bit key, %u-byte sectors, data at "
                "%" PRIu64 ", %" PRIu64 " bytes", h->hdr.version,
                h->hdr.cipher.name, h->hdr.key_bytes * 8,
                h->hdr.sector_size, h->hdr.payload_offset, h->size);

  if (luks_keycache_lookup (&h->hdr, key))
    nbdkit_debug ("luks: volume key unlocked by an earlier connection");
  else if (luks_keyslot_unlock (next, &h->hdr, passphrase, key) == -1)
    return -1;
  else
    luks_keycache_store (&h->hdr, key);
  luks_pool_init (&h->pool, &h->hdr.cipher, key);
  gnutls_memset (key, 0, sizeof key);
  h->unlocked = 1;
  return 0;
}

static int64_t
luks_get_size (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  return h->size;
}

/* Like nbdkit, advertise the sector as the minimum; smaller requests
 * from clients that ignore it still work by read-modify-write.
 */
static int
luks_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                 uint32_t *preferred, uint32_t *maximum)
{
  struct handle *h = handle;
  uint32_t ss = h->hdr.sector_size;

  if (next->block_size (next, minimum, preferred, maximum) == -1)
    return -1;
  if (*minimum == 0) {
    *preferred = ss;
    *maximum = 0xffffffff;
  }
  *minimum = MAX (*minimum, ss);
  *preferred = MAX (*preferred, ss);
  return 0;
}

/* Trim would expose which sectors were discarded, and reads of them
 * would decrypt garbage; zeroing must write encrypted zeroes.
 */
static int
luks_can_trim (nbdkit_next *next, void *handle)
{
  return 0;
}

static int
luks_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_EMULATE;
}

static int
luks_can_fast_zero (nbdkit_next *next, void *handle)
{
  return 0;
}

/* The plugin's holes are holes in the ciphertext, not zeroes in the
 * plaintext: report everything as data.
 */
static int
luks_can_extents (nbdkit_next *next, void *handle)
{
  return 0;
}

/* The IV of the sector at OFFSET.  As dm-crypt does for LUKSv2
 * (iv_large_sectors), the sector is counted in the volume's own sector
 * size; the tweak counts 512-byte sectors and is added first.
 */
static uint64_t
iv_sector (const struct handle *h, uint64_t offset)
{
  return (offset / LUKS_SECTOR + h->hdr.iv_tweak) /
    (h->hdr.sector_size / LUKS_SECTOR);
}

/* Read and decrypt whole sectors into BUF. */
static int
read_sectors (nbdkit_next *next, struct handle *h,
              struct luks_pool_entry *e, uint8_t *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  if (next->pread (next, buf, count, h->hdr.payload_offset + offset,
                   flags, err) == -1)
    return -1;
  if (luks_crypt_sectors (&e->k, 0, buf, count, iv_sector (h, offset),
                          h->hdr.sector_size) == -1) {
    *err = EIO;
    return -1;
  }
  return 0;
}

/* Encrypt whole sectors from BUF (left unchanged) and write them. */
static int
write_sectors (nbdkit_next *next, struct handle *h,
               struct luks_pool_entry *e, const uint8_t *buf,
               uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  uint32_t n;

  if (luks_pool_reserve (e, MIN (count, WRITE_PIECE)) == -1) {
    *err = ENOMEM;
    return -1;
  }
  for (; count > 0; count -= n, buf += n, offset += n) {
    n = MIN (count, WRITE_PIECE);
    memcpy (e->buf, buf, n);
    if (luks_crypt_sectors (&e->k, 1, e->buf, n, iv_sector (h, offset),
                            h->hdr.sector_size) == -1) {
      *err = EIO;
      return -1;
    }
    if (next->pwrite (next, e->buf, n, h->hdr.payload_offset + offset,
                      flags, err) == -1)
      return -1;
  }
  return 0;
}

/* Read-modify-write of part of the sector at START: copy COUNT bytes
 * at SKIP into it from WBUF, or out of it into RBUF.
 */
static int
partial_sector (nbdkit_next *next, struct handle *h,
                struct luks_pool_entry *e, uint8_t *rbuf,
                const uint8_t *wbuf, uint32_t count, uint64_t start,
                uint32_t skip, uint32_t flags, int *err)
{
  uint8_t sector[MAX_SECTOR] __attribute__ ((aligned (16)));
  uint32_t ss = h->hdr.sector_size;
  int r;

  if (wbuf)
    pthread_mutex_lock (&rmw_lock);
  r = read_sectors (next, h, e, sector, ss, start, 0, err);
  if (r == 0 && rbuf)
    memcpy (rbuf, sector + skip, count);
  if (r == 0 && wbuf) {
    memcpy (sector + skip, wbuf, count);
    r = write_sectors (next, h, e, sector, ss, start, flags, err);
  }
  if (wbuf)
    pthread_mutex_unlock (&rmw_lock);
  return r;
}

/* Split a request into partial sectors at either end and whole
 * sectors in the middle; RBUF for a read, WBUF for a write.
 */
static int
do_request (nbdkit_next *next, struct handle *h, uint8_t *rbuf,
            const uint8_t *wbuf, uint32_t count, uint64_t offset,
            uint32_t flags, int *err)
{
  struct luks_pool_entry *e = luks_pool_get (&h->pool);
  uint32_t ss = h->hdr.sector_size, skip, n;
  int r = 0;

  if (e == NULL) {
    *err = ENOMEM;
    return -1;
  }
  while (count > 0 && r == 0) {
    skip = offset % ss;
    if (skip || count < ss) {
      n = MIN (count, ss - skip);
      r = partial_sector (next, h, e, rbuf, wbuf, n, offset - skip, skip,
                          flags, err);
    }
    else {
      n = count / ss * ss;
      r = rbuf
        ? read_sectors (next, h, e, rbuf, n, offset, flags, err)
        : write_sectors (next, h, e, wbuf, n, offset, flags, err);
    }
    count -= n;
    offset += n;
    if (rbuf)
      rbuf += n;
    else
      wbuf += n;
  }
  luks_pool_put (&h->pool, e);
  return r;
}

static int
luks_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  return do_request (next, handle, buf, NULL, count, offset, flags, err);
}

static int
luks_pwrite (nbdkit_next *next, void *handle, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  return do_request (next, handle, NULL, buf, count, offset, flags, err);
}

/* Cache the ciphertext of the sectors that hold the range. */
static int
luks_cache (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;
  uint32_t ss = h->hdr.sector_size;
  uint64_t start = offset / ss * ss;
  uint64_t end = MIN ((offset + count + ss - 1) / ss * ss, h->size);

  /* Rounding out may pass what one request can carry. */
  if (end - start > UINT32_MAX)
    end -= ss;
  return next->cache (next, end - start, h->hdr.payload_offset + start,
                      flags, err);
}

static struct nbdkit_filter filter = {
  .name = "luks",
  .longname = "nbdsrv luks filter",
  .unload = luks_unload,
  .config = luks_config,
  .config_complete = luks_config_complete,
  .config_help = luks_config_help,
  .open = luks_open,
  .close = luks_close,
  .prepare = luks_prepare,
  .get_size = luks_get_size,
  .block_size = luks_block_size,
  .can_trim = luks_can_trim,
  .can_zero = luks_can_zero,
  .can_fast_zero = luks_can_fast_zero,
  .can_extents = luks_can_extents,
  .pread = luks_pread,
  .pwrite = luks_pwrite,
  .cache = luks_cache,
};

NBDKIT_REGISTER_FILTER (filter)

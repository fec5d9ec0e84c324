/* nbdsrv luks filter: the LUKSv1 header.
 *
 * A fixed 592-byte big-endian structure at the start of the disk: the
 * cipher and hash names, the payload offset in 512-byte sectors, the
 * volume key's PBKDF2 digest, and eight key slots, each with its own
 * PBKDF2 salt and iteration count and the sector of its key material.
 * Key material is encrypted with the volume's own cipher.
 */
#include <inttypes.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"

/* Offsets in the header (LUKS1 on-disk format specification). */
#define V1_CIPHER_NAME    8
#define V1_CIPHER_MODE    40
#define V1_HASH_SPEC      72
#define V1_PAYLOAD        104
#define V1_KEY_BYTES      108
#define V1_MK_DIGEST      112
#define V1_MK_SALT        132
#define V1_MK_ITER        164
#define V1_SLOTS          208
#define V1_SLOT_SIZE      48
#define V1_NR_SLOTS       8
#define V1_NAME_LEN       32
#define V1_DIGEST_LEN     20
#define V1_SALT_LEN       32

#define SLOT_ACTIVE       0x00AC71F3
#define SLOT_INACTIVE     0x0000DEAD

/* A key slot's stripes; cryptsetup always writes 4000. */
#define V1_MAX_STRIPES    65536

static uint32_t
be32 (const uint8_t *p)
{
  return (uint32_t) p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}

/* A name field must be NUL-terminated inside its 32 bytes. */
static int
name_field (const uint8_t *hdr, size_t off, const char *what, char *out)
{
  if (memchr (hdr + off, 0, V1_NAME_LEN) == NULL) {
    nbdkit_error ("luks: bad LUKSv1 header: the %s field is not "
                  "terminated: the header is corrupt", what);
    return -1;
  }
  memcpy (out, hdr + off, V1_NAME_LEN);
  return 0;
}

static int
parse_slot (const uint8_t *p, unsigned i, const struct luks_header *h,
            gnutls_digest_algorithm_t hash, uint64_t disk_size,
            struct luks_keyslot *s)
{
  uint32_t active = be32 (p);
  uint64_t len, end;

  if (active != SLOT_ACTIVE && active != SLOT_INACTIVE) {
    nbdkit_error ("luks: bad LUKSv1 header: key slot %u has an invalid "
                  "active flag 0x%08x: the header is corrupt", i, active);
    return -1;
  }
  if (active == SLOT_INACTIVE)
    return 0;
  memset (s, 0, sizeof *s);
  s->id = i;
  s->kdf.type = LUKS_KDF_PBKDF2;
  s->kdf.hash = (gnutls_mac_algorithm_t) hash;
  s->kdf.iterations = be32 (p + 4);
  memcpy (s->kdf.salt, p + 8, V1_SALT_LEN);
  s->kdf.salt_len = V1_SALT_LEN;
  s->area_offset = (uint64_t) be32 (p + 40) * LUKS_SECTOR;
  s->stripes = be32 (p + 44);
  s->af_hash = hash;
  s->area_cipher = h->cipher;
  len = h->key_bytes * (uint64_t) s->stripes;
  end = s->area_offset + (len + LUKS_SECTOR - 1) / LUKS_SECTOR * LUKS_SECTOR;
  if (s->kdf.iterations == 0 || s->stripes == 0 ||
      s->stripes > V1_MAX_STRIPES || end > disk_size) {
    nbdkit_error ("luks: bad LUKSv1 header: key slot %u (iterations %u, "
                  "stripes %u, key material at %" PRIu64 ") is corrupt or "
                  "the disk is truncated", i, s->kdf.iterations, s->stripes,
                  s->area_offset);
    return -1;
  }
  return 1;
}

int
luks_header_v1_parse (const uint8_t *hdr, uint64_t disk_size,
                      struct luks_header *h)
{
  char cipher[V1_NAME_LEN], mode[V1_NAME_LEN], hash_name[V1_NAME_LEN];
  gnutls_digest_algorithm_t hash;
  unsigned i;
  int r;

  memset (h, 0, sizeof *h);
  h->version = 1;
  if (name_field (hdr, V1_CIPHER_NAME, "cipher name", cipher) == -1 ||
      name_field (hdr, V1_CIPHER_MODE, "cipher mode", mode) == -1 ||
      name_field (hdr, V1_HASH_SPEC, "hash", hash_name) == -1)
    return -1;
  h->key_bytes = be32 (hdr + V1_KEY_BYTES);
  if (h->key_bytes == 0 || h->key_bytes > LUKS_MAX_KEY) {
    nbdkit_error ("luks: bad LUKSv1 header: a %zu-byte volume key: the "
                  "header is corrupt", h->key_bytes);
    return -1;
  }
  hash = luks_hash_parse (hash_name);
  if (hash == GNUTLS_DIG_UNKNOWN) {
    nbdkit_error ("luks: the LUKSv1 header uses hash \"%s\", which this "
                  "filter does not know: use sha256, sha1, sha512, ...",
                  hash_name);
    return -1;
  }
  if (luks_cipher_parse (cipher, mode, h->key_bytes, &h->cipher) == -1)
    return -1;
  h->sector_size = LUKS_SECTOR;
  h->payload_offset = (uint64_t) be32 (hdr + V1_PAYLOAD) * LUKS_SECTOR;
  if (h->payload_offset > disk_size) {
    nbdkit_error ("luks: bad LUKSv1 header: the payload offset %" PRIu64
                  " is beyond the end of the %" PRIu64 "-byte disk: the "
                  "disk is truncated or the header corrupt",
                  h->payload_offset, disk_size);
    return -1;
  }

  h->digest.hash = (gnutls_mac_algorithm_t) hash;
  h->digest.iterations = be32 (hdr + V1_MK_ITER);
  memcpy (h->digest.salt, hdr + V1_MK_SALT, V1_SALT_LEN);
  h->digest.salt_len = V1_SALT_LEN;
  memcpy (h->digest.digest, hdr + V1_MK_DIGEST, V1_DIGEST_LEN);
  h->digest.digest_len = V1_DIGEST_LEN;
  if (h->digest.iterations == 0) {
    nbdkit_error ("luks: bad LUKSv1 header: the volume key digest has 0 "
                  "iterations: the header is corrupt");
    return -1;
  }

  for (i = 0; i < V1_NR_SLOTS; i++) {
    r = parse_slot (hdr + V1_SLOTS + i * V1_SLOT_SIZE, i, h, hash,
                    disk_size, &h->slots[h->nr_slots]);
    if (r == -1)
      return -1;
    h->nr_slots += r;
  }
  return 0;
}

/* nbdsrv luks filter: unlocking a key slot with the passphrase.
 *
 * For each active slot: derive the slot key from the passphrase, read
 * and decrypt the slot's key material, merge its stripes into a
 * candidate volume key, and accept it if its PBKDF2 digest matches the
 * header's.  A wrong passphrase is only ever seen as a digest mismatch.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"

/* 4000 stripes of a 64-byte key is 250 KiB; refuse absurd areas that
 * a corrupt header could ask us to allocate and read.
 */
#define MAX_MATERIAL (16U * 1024 * 1024)

/* Compare without an early exit, so timing says nothing of where the
 * digests differ.
 */
static int
equal_ct (const uint8_t *a, const uint8_t *b, size_t n)
{
  uint8_t acc = 0;
  size_t i;

  for (i = 0; i < n; i++)
    acc |= a[i] ^ b[i];
  return acc == 0;
}

static int
digest_matches (const struct luks_digest *d, const uint8_t *key,
                size_t key_bytes)
{
  uint8_t out[LUKS_MAX_DIGEST];
  gnutls_datum_t k = { (unsigned char *) key, key_bytes };
  gnutls_datum_t salt = { (unsigned char *) d->salt, d->salt_len };
  int r, ok;

  r = gnutls_pbkdf2 (d->hash, &k, &salt, d->iterations, out, d->digest_len);
  if (r < 0) {
    nbdkit_error ("luks: volume key digest: %s", gnutls_strerror (r));
    return -1;
  }
  ok = equal_ct (out, d->digest, d->digest_len);
  gnutls_memset (out, 0, sizeof out);
  return ok;
}

/* Decrypt slot S's material (LEN bytes, whole sectors) with the key
 * derived from PASS, and merge it into KEY.
 */
static int
open_material (const struct luks_keyslot *s, const char *pass,
               uint8_t *material, size_t len, size_t key_bytes, uint8_t *key)
{
  uint8_t slot_key[LUKS_MAX_KEY];
  struct luks_crypt k;
  int r = -1;

  if (luks_kdf_derive (&s->kdf, pass, strlen (pass), slot_key,
                       s->area_cipher.key_bytes) == -1)
    goto out_wipe;
  if (luks_crypt_init (&k, &s->area_cipher, slot_key) == -1)
    goto out_wipe;
  r = luks_crypt_sectors (&k, 0, material, len, 0, LUKS_SECTOR);
  luks_crypt_free (&k);
  if (r == 0)
    r = luks_af_merge (material, key_bytes, s->stripes, s->af_hash, key);
 out_wipe:
  gnutls_memset (slot_key, 0, sizeof slot_key);
  return r;
}

/* 1 if slot S opens with PASS (KEY then holds the volume key), 0 if
 * not, -1 on error.
 */
static int
try_slot (nbdkit_next *next, const struct luks_header *h,
          const struct luks_keyslot *s, const char *pass, uint8_t *key)
{
  uint64_t len = (uint64_t) h->key_bytes * s->stripes;
  uint8_t *material;
  int err, r;

  len = (len + LUKS_SECTOR - 1) / LUKS_SECTOR * LUKS_SECTOR;
  if (len == 0 || len > MAX_MATERIAL) {
    nbdkit_error ("luks: key slot %u holds %" PRIu64 " bytes of key "
                  "material: the LUKS header is corrupt", s->id, len);
    return -1;
  }
  material = malloc (len);
  if (material == NULL) {
    nbdkit_error ("luks: key slot %u: %m", s->id);
    return -1;
  }
  r = next->pread (next, material, len, s->area_offset, 0, &err);
  if (r == -1)
    nbdkit_error ("luks: reading key slot %u at offset %" PRIu64 ": %s",
                  s->id, s->area_offset, strerror (err));
  else
    r = open_material (s, pass, material, len, h->key_bytes, key);
  if (r == 0)
    r = digest_matches (&h->digest, key, h->key_bytes);
  gnutls_memset (material, 0, len);
  free (material);
  return r;
}

int
luks_keyslot_unlock (nbdkit_next *next, const struct luks_header *h,
                     const char *pass, uint8_t *key)
{
  size_t i;
  int r;

  for (i = 0; i < h->nr_slots; i++) {
    r = try_slot (next, h, &h->slots[i], pass, key);
    if (r == -1)
      break;
    if (r == 1) {
      nbdkit_debug ("luks: key slot %u unlocked the volume", h->slots[i].id);
      return h->slots[i].id;
    }
  }
  gnutls_memset (key, 0, h->key_bytes);
  if (i == h->nr_slots)
    nbdkit_error ("luks: the passphrase is not correct: it unlocks none of "
                  "the %zu active key slots; check passphrase=",
                  h->nr_slots);
  return -1;
}

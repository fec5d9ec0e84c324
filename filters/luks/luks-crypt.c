/* nbdsrv luks filter: sector encryption with GnuTLS.
 *
 * A LUKS cipher is a block cipher, a chaining mode and an IV generator
 * ("aes", "xts-plain64").  Each sector is encrypted alone, its IV made
 * from the sector number.  GnuTLS has AES in CBC and XTS modes, which
 * is what cryptsetup and qemu-img make by default; ECB and CTR are not
 * in its cipher API, and nbdkit 1.32 refuses them too.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"

#define AES_BLOCK 16

gnutls_digest_algorithm_t
luks_hash_parse (const char *name)
{
  static const struct {
    const char *name;
    gnutls_digest_algorithm_t alg;
  } hashes[] = {
    { "md5", GNUTLS_DIG_MD5 },
    { "sha1", GNUTLS_DIG_SHA1 },
    { "sha224", GNUTLS_DIG_SHA224 },
    { "sha256", GNUTLS_DIG_SHA256 },
    { "sha384", GNUTLS_DIG_SHA384 },
    { "sha512", GNUTLS_DIG_SHA512 },
    { "ripemd160", GNUTLS_DIG_RMD160 },
  };
  size_t i;

  for (i = 0; i < sizeof hashes / sizeof hashes[0]; i++)
    if (strcmp (name, hashes[i].name) == 0)
      return hashes[i].alg;
  return GNUTLS_DIG_UNKNOWN;
}

static gnutls_cipher_algorithm_t
aes_cbc_of (size_t key_bytes)
{
  switch (key_bytes) {
  case 16: return GNUTLS_CIPHER_AES_128_CBC;
  case 24: return GNUTLS_CIPHER_AES_192_CBC;
  case 32: return GNUTLS_CIPHER_AES_256_CBC;
  default: return GNUTLS_CIPHER_UNKNOWN;
  }
}

static gnutls_cipher_algorithm_t
aes_xts_of (size_t key_bytes)
{
  switch (key_bytes) {
  case 32: return GNUTLS_CIPHER_AES_128_XTS;
  case 64: return GNUTLS_CIPHER_AES_256_XTS;
  default: return GNUTLS_CIPHER_UNKNOWN;
  }
}

/* The IV generator after the '-' of the mode: "plain", "plain64" or
 * "essiv:HASH".
 */
static int
parse_ivgen (const char *ivgen, struct luks_cipher *c)
{
  size_t hash_len;

  /* dm-crypt ignores options of the plain generators, and qemu-img
   * writes "plain64:sha256" when given an IV hash.
   */
  if (strcmp (ivgen, "plain") == 0 || strncmp (ivgen, "plain:", 6) == 0)
    c->iv = LUKS_IV_PLAIN;
  else if (strcmp (ivgen, "plain64") == 0 ||
           strncmp (ivgen, "plain64:", 8) == 0)
    c->iv = LUKS_IV_PLAIN64;
  else if (strncmp (ivgen, "essiv:", 6) == 0) {
    c->iv = LUKS_IV_ESSIV;
    c->essiv_hash = luks_hash_parse (ivgen + 6);
    if (c->essiv_hash == GNUTLS_DIG_UNKNOWN) {
      nbdkit_error ("luks: the disk uses ESSIV with hash \"%s\", which this "
                    "filter does not know: use sha256", ivgen + 6);
      return -1;
    }
    hash_len = gnutls_hash_get_len (c->essiv_hash);
    c->essiv_alg = aes_cbc_of (hash_len);
    if (c->essiv_alg == GNUTLS_CIPHER_UNKNOWN) {
      nbdkit_error ("luks: ESSIV hash %s gives a %zu-byte key, not an AES "
                    "key size: use essiv:sha256", ivgen + 6, hash_len);
      return -1;
    }
  }
  else {
    nbdkit_error ("luks: the disk uses IV generator \"%s\", which this "
                  "filter does not support: use plain64, plain or essiv",
                  ivgen);
    return -1;
  }
  return 0;
}

int
luks_cipher_parse (const char *cipher, const char *mode, size_t key_bytes,
                   struct luks_cipher *c)
{
  const char *dash = strchr (mode, '-');
  size_t mode_len = dash ? (size_t) (dash - mode) : strlen (mode);

  memset (c, 0, sizeof *c);
  snprintf (c->name, sizeof c->name, "%s-%s", cipher, mode);
  c->key_bytes = key_bytes;
  if (strcmp (cipher, "aes") != 0) {
    nbdkit_error ("luks: the disk is encrypted with %s, which this filter "
                  "does not support: only aes is (as in nbdkit)", c->name);
    return -1;
  }
  if (mode_len == 3 && strncmp (mode, "cbc", 3) == 0)
    c->alg = aes_cbc_of (key_bytes);
  else if (mode_len == 3 && strncmp (mode, "xts", 3) == 0)
    c->alg = aes_xts_of (key_bytes);
  else {
    nbdkit_error ("luks: the disk is encrypted with %s: cipher mode "
                  "%.*s is not supported, only cbc and xts are", c->name,
                  (int) mode_len, mode);
    return -1;
  }
  if (c->alg == GNUTLS_CIPHER_UNKNOWN) {
    nbdkit_error ("luks: the disk is encrypted with %s and a %zu-bit key, "
                  "which is not a valid AES key for that mode", c->name,
                  key_bytes * 8);
    return -1;
  }
  if (dash == NULL) {
    nbdkit_error ("luks: cipher mode \"%s\" names no IV generator: the "
                  "header is corrupt (expected MODE-IVGEN)", mode);
    return -1;
  }
  return parse_ivgen (dash + 1, c);
}

static int
cipher_open (gnutls_cipher_hd_t *hd, gnutls_cipher_algorithm_t alg,
             const uint8_t *key, size_t key_len)
{
  uint8_t iv[AES_BLOCK] = { 0 };
  gnutls_datum_t k = { (unsigned char *) key, key_len };
  gnutls_datum_t v = { iv, sizeof iv };
  int r;

  r = gnutls_cipher_init (hd, alg, &k, &v);
  if (r < 0) {
    nbdkit_error ("luks: cannot set up cipher %s: %s",
                  gnutls_cipher_get_name (alg), gnutls_strerror (r));
    return -1;
  }
  return 0;
}

int
luks_crypt_init (struct luks_crypt *k, const struct luks_cipher *c,
                 const uint8_t *key)
{
  uint8_t essiv_key[LUKS_MAX_DIGEST];
  size_t essiv_len;
  int r;

  memset (k, 0, sizeof *k);
  k->c = c;
  if (cipher_open (&k->data, c->alg, key, c->key_bytes) == -1)
    return -1;
  if (c->iv != LUKS_IV_ESSIV)
    return 0;

  /* ESSIV's key is the hash of the volume key. */
  essiv_len = gnutls_hash_get_len (c->essiv_hash);
  r = gnutls_hash_fast (c->essiv_hash, key, c->key_bytes, essiv_key);
  if (r == 0)
    r = cipher_open (&k->essiv, c->essiv_alg, essiv_key, essiv_len);
  else
    nbdkit_error ("luks: hash for ESSIV: %s", gnutls_strerror (r));
  gnutls_memset (essiv_key, 0, sizeof essiv_key);
  if (r != 0) {
    gnutls_cipher_deinit (k->data);
    k->data = NULL;
    return -1;
  }
  return 0;
}

/* GnuTLS wipes the key schedule in deinit. */
void
luks_crypt_free (struct luks_crypt *k)
{
  if (k->data)
    gnutls_cipher_deinit (k->data);
  if (k->essiv)
    gnutls_cipher_deinit (k->essiv);
  k->data = k->essiv = NULL;
}

static int
make_iv (struct luks_crypt *k, uint64_t sector, uint8_t *iv)
{
  unsigned i;
  uint64_t n = k->c->iv == LUKS_IV_PLAIN ? (uint32_t) sector : sector;
  uint8_t zero[AES_BLOCK] = { 0 };
  int r;

  memset (iv, 0, AES_BLOCK);
  for (i = 0; i < 8; i++)
    iv[i] = n >> (8 * i);
  if (k->c->iv != LUKS_IV_ESSIV)
    return 0;
  /* One CBC block from a zero IV is ECB, which GnuTLS lacks. */
  gnutls_cipher_set_iv (k->essiv, zero, sizeof zero);
  r = gnutls_cipher_encrypt (k->essiv, iv, AES_BLOCK);
  if (r < 0) {
    nbdkit_error ("luks: ESSIV: %s", gnutls_strerror (r));
    return -1;
  }
  return 0;
}

int
luks_crypt_sectors (struct luks_crypt *k, int encrypt, uint8_t *buf,
                    size_t len, uint64_t sector, uint32_t sector_size)
{
  uint8_t iv[AES_BLOCK];
  size_t done;
  int r;

  for (done = 0; done < len; done += sector_size, sector++) {
    if (make_iv (k, sector, iv) == -1)
      return -1;
    gnutls_cipher_set_iv (k->data, iv, sizeof iv);
    r = encrypt
      ? gnutls_cipher_encrypt (k->data, buf + done, sector_size)
      : gnutls_cipher_decrypt (k->data, buf + done, sector_size);
    if (r < 0) {
      nbdkit_error ("luks: %s sector %" PRIu64 ": %s",
                    encrypt ? "encrypting" : "decrypting", sector,
                    gnutls_strerror (r));
      errno = EIO;
      return -1;
    }
  }
  return 0;
}

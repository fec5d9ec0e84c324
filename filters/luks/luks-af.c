/* nbdsrv luks filter: the anti-forensic merge of LUKS key material.
 *
 * A key slot stores the key split into STRIPES stripes, so that
 * destroying any part of the area destroys the key.  Merging: D starts
 * at zero; for each stripe but the last, D = diffuse (D xor stripe);
 * the key is D xor the last stripe.  Diffusion hashes D in digest-sized
 * blocks, each prefixed with its big-endian 32-bit index.
 */
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"

static int
diffuse (uint8_t *d, size_t len, gnutls_digest_algorithm_t hash)
{
  size_t dlen = gnutls_hash_get_len (hash);
  uint8_t out[LUKS_MAX_DIGEST];
  gnutls_hash_hd_t hd;
  uint32_t i;
  size_t pos, n;
  int r = 0;

  for (i = 0, pos = 0; pos < len; i++, pos += dlen) {
    uint8_t be[4] = { i >> 24, i >> 16, i >> 8, i };

    n = len - pos < dlen ? len - pos : dlen;
    r = gnutls_hash_init (&hd, hash);
    if (r < 0)
      break;
    gnutls_hash (hd, be, sizeof be);
    gnutls_hash (hd, d + pos, n);
    gnutls_hash_deinit (hd, out);
    memcpy (d + pos, out, n);
  }
  gnutls_memset (out, 0, sizeof out);
  if (r < 0) {
    nbdkit_error ("luks: anti-forensic merge with %s: %s",
                  gnutls_digest_get_name (hash), gnutls_strerror (r));
    return -1;
  }
  return 0;
}

int
luks_af_merge (const uint8_t *split, size_t len, uint32_t stripes,
               gnutls_digest_algorithm_t hash, uint8_t *key)
{
  uint8_t d[LUKS_MAX_KEY] = { 0 };
  uint32_t s;
  size_t i;
  int r = 0;

  if (len > sizeof d || stripes == 0 ||
      gnutls_hash_get_len (hash) > LUKS_MAX_DIGEST) {
    nbdkit_error ("luks: key slot with %zu-byte key in %u stripes: "
                  "the LUKS header is corrupt", len, stripes);
    return -1;
  }
  for (s = 0; s + 1 < stripes && r == 0; s++) {
    for (i = 0; i < len; i++)
      d[i] ^= split[s * len + i];
    r = diffuse (d, len, hash);
  }
  if (r == 0)
    for (i = 0; i < len; i++)
      key[i] = d[i] ^ split[(size_t) (stripes - 1) * len + i];
  gnutls_memset (d, 0, sizeof d);
  return r;
}

/* nbdsrv luks filter: turning a passphrase into a key slot's key.
 *
 * LUKSv1 slots use PBKDF2; LUKSv2 slots use PBKDF2, Argon2i or
 * Argon2id (libargon2, the reference implementation cryptsetup uses).
 */
#include <argon2.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"

/* cryptsetup's own ceilings: a header asking for more is corrupt, and
 * honouring it would let a small file make the server allocate
 * gigabytes or spin for hours.
 */
#define ARGON2_MAX_MEMORY_KIB  (4U * 1024 * 1024)
#define ARGON2_MAX_CPUS        16

static int
derive_pbkdf2 (const struct luks_kdf_params *p, const char *pass,
               size_t pass_len, uint8_t *out, size_t out_len)
{
  gnutls_datum_t key = { (unsigned char *) pass, pass_len };
  gnutls_datum_t salt = { (unsigned char *) p->salt, p->salt_len };
  int r;

  r = gnutls_pbkdf2 (p->hash, &key, &salt, p->iterations, out, out_len);
  if (r < 0) {
    nbdkit_error ("luks: PBKDF2 with %s: %s", gnutls_mac_get_name (p->hash),
                  gnutls_strerror (r));
    return -1;
  }
  return 0;
}

static int
derive_argon2 (const struct luks_kdf_params *p, const char *pass,
               size_t pass_len, uint8_t *out, size_t out_len)
{
  int r;

  if (p->memory_kib > ARGON2_MAX_MEMORY_KIB || p->cpus > ARGON2_MAX_CPUS ||
      p->cpus == 0 || p->iterations == 0) {
    nbdkit_error ("luks: Argon2 parameters time=%u memory=%u cpus=%u are "
                  "out of range: the LUKS header is corrupt",
                  p->iterations, p->memory_kib, p->cpus);
    return -1;
  }
  if (p->type == LUKS_KDF_ARGON2I)
    r = argon2i_hash_raw (p->iterations, p->memory_kib, p->cpus,
                          pass, pass_len, p->salt, p->salt_len,
                          out, out_len);
  else
    r = argon2id_hash_raw (p->iterations, p->memory_kib, p->cpus,
                           pass, pass_len, p->salt, p->salt_len,
                           out, out_len);
  if (r != ARGON2_OK) {
    nbdkit_error ("luks: Argon2: %s", argon2_error_message (r));
    return -1;
  }
  return 0;
}

int
luks_kdf_derive (const struct luks_kdf_params *p, const char *pass,
                 size_t pass_len, uint8_t *out, size_t out_len)
{
  if (p->type == LUKS_KDF_PBKDF2)
    return derive_pbkdf2 (p, pass, pass_len, out, out_len);
  return derive_argon2 (p, pass, pass_len, out, out_len);
}

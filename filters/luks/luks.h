/* nbdsrv luks filter: what the header parsers (luks-header-v1.c,
 * luks-header-v2.c) hand to the key slot code (luks-keyslot.c) and the
 * sector code (luks-crypt.c).
 *
 * Both LUKS versions are reduced to one description of the volume:
 * where the encrypted data starts, how its sectors are encrypted, how
 * the volume key is checked, and the key slots that may unlock it.
 */
#ifndef NBDSRV_LUKS_H
#define NBDSRV_LUKS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>

#include <nbdkit-filter.h>

#define LUKS_MAGIC_LEN   6
#define LUKS_SECTOR      512      /* key material is always in 512-byte
                                   * sectors, and so is LUKSv1 data */
#define LUKS_MAX_KEY     128      /* bytes; real volumes use <= 64 */
#define LUKS_MAX_SALT    64
#define LUKS_MAX_DIGEST  64
#define LUKS_MAX_SLOTS   32       /* LUKSv1 has 8, LUKSv2 up to 32 */

extern const uint8_t luks_magic[LUKS_MAGIC_LEN];

enum luks_iv {
  LUKS_IV_PLAIN,                /* 32-bit little-endian sector number */
  LUKS_IV_PLAIN64,              /* 64-bit little-endian sector number */
  LUKS_IV_ESSIV,                /* E(hash(key), sector number) */
};

/* A sector cipher, parsed from "aes" + "xts-plain64" (v1) or
 * "aes-xts-plain64" (v2) and a key length.
 */
struct luks_cipher {
  gnutls_cipher_algorithm_t alg;
  enum luks_iv iv;
  gnutls_digest_algorithm_t essiv_hash;  /* LUKS_IV_ESSIV only */
  gnutls_cipher_algorithm_t essiv_alg;   /* AES-CBC of the hash's size */
  size_t key_bytes;
  char name[80];                         /* "aes-xts-plain64", for messages */
};

enum luks_kdf {
  LUKS_KDF_PBKDF2,
  LUKS_KDF_ARGON2I,
  LUKS_KDF_ARGON2ID,
};

struct luks_kdf_params {
  enum luks_kdf type;
  gnutls_mac_algorithm_t hash;  /* PBKDF2 only */
  uint32_t iterations;          /* PBKDF2 iterations, or Argon2 time */
  uint32_t memory_kib;          /* Argon2 only */
  uint32_t cpus;                /* Argon2 only */
  uint8_t salt[LUKS_MAX_SALT];
  size_t salt_len;
};

struct luks_keyslot {
  unsigned id;                  /* slot number, for messages */
  struct luks_kdf_params kdf;
  struct luks_cipher area_cipher;  /* encrypts the key material */
  gnutls_digest_algorithm_t af_hash;
  uint32_t stripes;
  uint64_t area_offset;         /* bytes from the start of the disk */
};

/* PBKDF2 of the volume key that must match DIGEST. */
struct luks_digest {
  gnutls_mac_algorithm_t hash;
  uint32_t iterations;
  uint8_t salt[LUKS_MAX_SALT];
  size_t salt_len;
  uint8_t digest[LUKS_MAX_DIGEST];
  size_t digest_len;
};

struct luks_header {
  unsigned version;
  size_t key_bytes;             /* volume key length */
  struct luks_cipher cipher;    /* of the data sectors */
  uint32_t sector_size;         /* of the data: 512, or up to 4096 (v2) */
  uint64_t payload_offset;      /* bytes */
  uint64_t payload_size;        /* bytes; 0: to the end of the disk */
  uint64_t iv_tweak;            /* 512-byte sectors added to the IV's (v2) */
  struct luks_digest digest;
  struct luks_keyslot slots[LUKS_MAX_SLOTS];
  size_t nr_slots;              /* active slots only */
};

/* luks-header-v1.c: HDR is the first LUKS_V1_HEADER_SIZE bytes of a
 * disk of DISK_SIZE bytes.  0, or -1 after nbdkit_error.
 */
#define LUKS_V1_HEADER_SIZE 592
extern int luks_header_v1_parse (const uint8_t *hdr, uint64_t disk_size,
                                 struct luks_header *h);

/* luks-header-v2.c: reads and checks the binary header and its JSON
 * metadata through NEXT.  0, or -1 after nbdkit_error.
 */
extern int luks_header_v2_read (nbdkit_next *next,
                                uint64_t disk_size, struct luks_header *h);

/* luks-crypt.c: parse CIPHER ("aes") and MODE ("xts-plain64",
 * "cbc-essiv:sha256", ...) for a key of KEY_BYTES.  0, or -1 after
 * nbdkit_error.
 */
extern int luks_cipher_parse (const char *cipher, const char *mode,
                              size_t key_bytes, struct luks_cipher *c);

/* One thread's cipher state for one key.  Not shared between threads
 * at the same time (luks-pool.c hands them out).
 */
struct luks_crypt {
  const struct luks_cipher *c;  /* borrowed */
  gnutls_cipher_hd_t data;
  gnutls_cipher_hd_t essiv;     /* LUKS_IV_ESSIV only */
};

extern int luks_crypt_init (struct luks_crypt *k, const struct luks_cipher *c,
                            const uint8_t *key);
extern void luks_crypt_free (struct luks_crypt *k);

/* Encrypt (ENCRYPT true) or decrypt BUF[LEN] in place: LEN is a whole
 * number of SECTOR_SIZE sectors, the first numbered SECTOR for the IV.
 * 0, or -1 after nbdkit_error.
 */
extern int luks_crypt_sectors (struct luks_crypt *k, int encrypt,
                               uint8_t *buf, size_t len, uint64_t sector,
                               uint32_t sector_size);

/* luks-kdf.c: derive OUT[OUT_LEN] from PASS with P.  0, or -1 after
 * nbdkit_error.
 */
extern int luks_kdf_derive (const struct luks_kdf_params *p,
                            const char *pass, size_t pass_len,
                            uint8_t *out, size_t out_len);

/* luks-af.c: the LUKS anti-forensic merge of STRIPES stripes of LEN
 * bytes in SPLIT into KEY[LEN], diffused with HASH.  0, or -1 after
 * nbdkit_error.
 */
extern int luks_af_merge (const uint8_t *split, size_t len, uint32_t stripes,
                          gnutls_digest_algorithm_t hash, uint8_t *key);

/* luks-keyslot.c: try PASS in every active key slot of H, reading key
 * material through NEXT.  On success the volume key is in KEY (of
 * H->key_bytes) and the slot number is returned; -1 after nbdkit_error.
 */
extern int luks_keyslot_unlock (nbdkit_next *next,
                                const struct luks_header *h,
                                const char *pass, uint8_t *key);

/* luks-pool.c: cipher handles for one open volume, one per request in
 * flight.  GnuTLS cipher handles carry the IV, so two threads never
 * share one; handles are reused, so requests do not allocate or
 * expand keys once the pool has grown to the number of threads.
 */
struct luks_pool_entry {
  struct luks_crypt k;
  uint8_t *buf;                 /* owned: bounce buffer for writes */
  size_t buf_len;
  struct luks_pool_entry *next; /* in the free list */
};

struct luks_pool {
  pthread_mutex_t free_lock;    /* guards free */
  struct luks_pool_entry *free; /* owned: entries not in use */
  const struct luks_cipher *c;  /* borrowed */
  uint8_t key[LUKS_MAX_KEY];    /* the volume key, wiped by free */
};

extern void luks_pool_init (struct luks_pool *p, const struct luks_cipher *c,
                            const uint8_t *key);
extern void luks_pool_free (struct luks_pool *p);
/* NULL after nbdkit_error. */
extern struct luks_pool_entry *luks_pool_get (struct luks_pool *p);
extern void luks_pool_put (struct luks_pool *p, struct luks_pool_entry *e);
/* Grow E's bounce buffer to at least LEN; -1 after nbdkit_error. */
extern int luks_pool_reserve (struct luks_pool_entry *e, size_t len);

/* luks-keycache.c: volume keys unlocked by earlier connections.
 * lookup copies the key for H's volume into KEY and returns 1, or
 * returns 0; store remembers KEY (H->key_bytes) for H's volume; wipe
 * forgets them all, at unload.
 */
extern int luks_keycache_lookup (const struct luks_header *h, uint8_t *key);
extern void luks_keycache_store (const struct luks_header *h,
                                 const uint8_t *key);
extern void luks_keycache_wipe (void);

/* Parse a hash name ("sha256", ...) as used in LUKS headers. */
extern gnutls_digest_algorithm_t luks_hash_parse (const char *name);

#endif /* NBDSRV_LUKS_H */

/* nbdsrv luks filter: volume keys already unlocked, for the next
 * connection to the same volume.
 *
 * Unlocking costs what the key slot's KDF asks for: cryptsetup's
 * default Argon2id takes about two seconds and up to 1 GiB of memory,
 * and nbdkit pays that again on every connection (four at once for
 * nbdcopy's default).  The passphrase never changes while the server
 * runs, so a key it unlocked once stays right for a header whose
 * volume key digest is unchanged: that digest (hash, iterations, salt,
 * value) names the entry.  Keeping the key as long as the passphrase
 * (until unload) exposes nothing the passphrase does not.
 */
#include <pthread.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"

/* Volumes one server serves at once; more only costs a new unlock. */
#define CACHE_ENTRIES 4

struct entry {
  int used;
  struct luks_digest digest;
  size_t key_bytes;
  uint8_t key[LUKS_MAX_KEY];
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry cache[CACHE_ENTRIES];   /* guarded by cache_lock */
static unsigned next_victim;                /* guarded by cache_lock */

static int
same_volume (const struct entry *e, const struct luks_header *h)
{
  const struct luks_digest *a = &e->digest, *b = &h->digest;

  return e->used && e->key_bytes == h->key_bytes && a->hash == b->hash &&
    a->iterations == b->iterations && a->salt_len == b->salt_len &&
    a->digest_len == b->digest_len &&
    memcmp (a->salt, b->salt, a->salt_len) == 0 &&
    memcmp (a->digest, b->digest, a->digest_len) == 0;
}

int
luks_keycache_lookup (const struct luks_header *h, uint8_t *key)
{
  unsigned i;
  int found = 0;

  pthread_mutex_lock (&cache_lock);
  for (i = 0; i < CACHE_ENTRIES && !found; i++)
    if (same_volume (&cache[i], h)) {
      memcpy (key, cache[i].key, h->key_bytes);
      found = 1;
    }
  pthread_mutex_unlock (&cache_lock);
  return found;
}

void
luks_keycache_store (const struct luks_header *h, const uint8_t *key)
{
  struct entry *e;
  unsigned i;

  pthread_mutex_lock (&cache_lock);
  for (i = 0; i < CACHE_ENTRIES; i++)
    if (same_volume (&cache[i], h))
      goto out_unlock;
  e = &cache[next_victim];
  next_victim = (next_victim + 1) % CACHE_ENTRIES;
  e->used = 1;
  e->digest = h->digest;
  e->key_bytes = h->key_bytes;
  memcpy (e->key, key, h->key_bytes);
 out_unlock:
  pthread_mutex_unlock (&cache_lock);
}

void
luks_keycache_wipe (void)
{
  pthread_mutex_lock (&cache_lock);
  gnutls_memset (cache, 0, sizeof cache);
  pthread_mutex_unlock (&cache_lock);
}

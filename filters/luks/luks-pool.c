/* nbdsrv luks filter: a free list of cipher handles for one volume.
 * See luks.h.
 */
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"

void
luks_pool_init (struct luks_pool *p, const struct luks_cipher *c,
                const uint8_t *key)
{
  pthread_mutex_init (&p->free_lock, NULL);
  p->free = NULL;
  p->c = c;
  memcpy (p->key, key, c->key_bytes);
}

void
luks_pool_free (struct luks_pool *p)
{
  struct luks_pool_entry *e;

  while ((e = p->free) != NULL) {
    p->free = e->next;
    luks_crypt_free (&e->k);
    free (e->buf);
    free (e);
  }
  gnutls_memset (p->key, 0, sizeof p->key);
  pthread_mutex_destroy (&p->free_lock);
}

struct luks_pool_entry *
luks_pool_get (struct luks_pool *p)
{
  struct luks_pool_entry *e;

  pthread_mutex_lock (&p->free_lock);
  e = p->free;
  if (e)
    p->free = e->next;
  pthread_mutex_unlock (&p->free_lock);
  if (e)
    return e;

  e = calloc (1, sizeof *e);
  if (e == NULL) {
    nbdkit_error ("luks: allocating a cipher handle: %m");
    return NULL;
  }
  if (luks_crypt_init (&e->k, p->c, p->key) == -1) {
    free (e);
    return NULL;
  }
  return e;
}

void
luks_pool_put (struct luks_pool *p, struct luks_pool_entry *e)
{
  pthread_mutex_lock (&p->free_lock);
  e->next = p->free;
  p->free = e;
  pthread_mutex_unlock (&p->free_lock);
}

int
luks_pool_reserve (struct luks_pool_entry *e, size_t len)
{
  uint8_t *b;

  if (e->buf_len >= len)
    return 0;
  b = realloc (e->buf, len);
  if (b == NULL) {
    nbdkit_error ("luks: allocating a %zu-byte write buffer: %m", len);
    return -1;
  }
  e->buf = b;
  e->buf_len = len;
  return 0;
}

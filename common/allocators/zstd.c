/* nbdsrv: allocator=zstd, 32 KiB pages each compressed with libzstd
 * (allocator.h).
 *
 * The pages follow the sparse store's rules (page-extents.h) but one,
 * as nbdkit 1.32's zstd allocator does: a write allocates the pages it
 * touches, zero and trim free the pages they cover fully, and block
 * status reports an unallocated page as a hole, an allocated one as
 * zero from where its last non-zero byte ends.  Unlike sparse, a page
 * zeroed only in part stays allocated even when it is left all zero.
 * The end of the data is kept beside each page, so block status never
 * decompresses.
 *
 * Pages sit in an array sorted by page number: a disk filled in order
 * only appends, and finding the next allocated page is a binary search.
 * Readers share the array; a writer has it alone, and with it the one
 * compression context and scratch page.  Each reading thread has its
 * own decompression context and page buffer.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include <nbdkit-plugin.h>

#include "allocator.h"
#include "page-extents.h"

#define ZPAGE_BITS 15
#define ZPAGE_SIZE (UINT64_C (1) << ZPAGE_BITS)
#define ZPAGE_MASK (ZPAGE_SIZE - 1)

/* libzstd's default level: pages of a typical disk compress 2-4:1 at
 * about 400 MB/s on one core.
 */
#define ZLEVEL ZSTD_CLEVEL_DEFAULT

struct zpage {
  uint32_t zlen;                /* bytes in z */
  uint32_t zero_from;           /* the page is zero from here to its end */
  unsigned char z[];            /* the compressed page */
};

struct zslot {
  uint64_t pageno;
  struct zpage *page;           /* owned */
};

/* Guarded by zlock. */
static struct zslot *slots;     /* owned, sorted by pageno */
static size_t nr_slots, cap_slots;
static ZSTD_CCtx *cctx;         /* owned; writers only */
static unsigned char scratch[ZPAGE_SIZE];       /* writers only */
static unsigned char *zbuf;     /* owned, zbuf_len; writers only */
static size_t zbuf_len;
static pthread_rwlock_t zlock = PTHREAD_RWLOCK_INITIALIZER;

/* A reading thread's own context and page buffer.  Every reader is
 * also on a list: pthread_key_delete runs no destructor, so at close
 * the readers of threads still alive (workers of a server shutting
 * down) must be freed from here.
 */
struct zreader {
  ZSTD_DCtx *dctx;              /* owned */
  struct zreader *next, **prevp;        /* readers, under readers_lock */
  unsigned char page[ZPAGE_SIZE];
};
static pthread_key_t reader_key;
static bool reader_key_made;
static pthread_mutex_t readers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct zreader *readers;

/* Index of the first slot whose page number is >= PAGENO. */
static size_t
zstd_search (uint64_t pageno)
{
  size_t lo = 0, hi = nr_slots, mid;

  while (lo < hi) {
    mid = lo + (hi - lo) / 2;
    if (slots[mid].pageno < pageno)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static struct zpage *
zstd_lookup (uint64_t pageno)
{
  size_t i = zstd_search (pageno);

  return i < nr_slots && slots[i].pageno == pageno ? slots[i].page : NULL;
}

static void
zstd_reader_free (void *p)
{
  struct zreader *r = p;

  pthread_mutex_lock (&readers_lock);
  if (r->next)
    r->next->prevp = r->prevp;
  *r->prevp = r->next;
  pthread_mutex_unlock (&readers_lock);
  ZSTD_freeDCtx (r->dctx);
  free (r);
}

static struct zreader *
zstd_reader (void)
{
  struct zreader *r = pthread_getspecific (reader_key);

  if (r)
    return r;
  r = malloc (sizeof *r);
  if (r == NULL)
    return NULL;
  r->dctx = ZSTD_createDCtx ();
  if (r->dctx == NULL || pthread_setspecific (reader_key, r) != 0) {
    ZSTD_freeDCtx (r->dctx);
    free (r);
    return NULL;
  }
  pthread_mutex_lock (&readers_lock);
  r->next = readers;
  r->prevp = &readers;
  if (readers)
    readers->prevp = &r->next;
  readers = r;
  pthread_mutex_unlock (&readers_lock);
  return r;
}

/* Decompress PAGE into OUT (ZPAGE_SIZE bytes) with DCTX. */
static int
zstd_unpack (ZSTD_DCtx *dctx, const struct zpage *page, void *out)
{
  size_t n = ZSTD_decompressDCtx (dctx, out, ZPAGE_SIZE, page->z,
                                  page->zlen);

  if (ZSTD_isError (n) || n != ZPAGE_SIZE) {
    nbdkit_error ("allocator=zstd: a stored page does not decompress: %s",
                  ZSTD_isError (n) ? ZSTD_getErrorName (n) : "short page");
    errno = EIO;
    return -1;
  }
  return 0;
}

static int
zstd_read (void *buf, uint64_t count, uint64_t offset)
{
  unsigned char *out = buf;
  struct zreader *r = zstd_reader ();
  int ret = 0;

  if (r == NULL) {
    nbdkit_error ("allocator=zstd: cannot make a decompression context");
    errno = ENOMEM;
    return -1;
  }
  pthread_rwlock_rdlock (&zlock);
  while (count > 0 && ret == 0) {
    uint64_t in_page = offset & ZPAGE_MASK;
    uint64_t n = ZPAGE_SIZE - in_page < count ? ZPAGE_SIZE - in_page : count;
    const struct zpage *page = zstd_lookup (offset >> ZPAGE_BITS);

    if (page == NULL)
      memset (out, 0, n);
    else if (n == ZPAGE_SIZE)
      ret = zstd_unpack (r->dctx, page, out);
    else if ((ret = zstd_unpack (r->dctx, page, r->page)) == 0)
      memcpy (out, r->page + in_page, n);
    out += n;
    offset += n;
    count -= n;
  }
  pthread_rwlock_unlock (&zlock);
  return ret;
}

/* Compress scratch into a new page; NULL after nbdkit_error. */
static struct zpage *
zstd_pack (void)
{
  size_t n = ZSTD_compressCCtx (cctx, zbuf, zbuf_len, scratch, ZPAGE_SIZE,
                                ZLEVEL);
  struct zpage *page;
  uint32_t end = ZPAGE_SIZE;

  if (ZSTD_isError (n)) {
    nbdkit_error ("allocator=zstd: compression failed: %s",
                  ZSTD_getErrorName (n));
    errno = EIO;
    return NULL;
  }
  page = malloc (sizeof *page + n);
  if (page == NULL) {
    nbdkit_error ("allocator=zstd: cannot allocate a page: %m");
    return NULL;
  }
  while (end > 0 && scratch[end - 1] == 0)
    end--;
  page->zlen = n;
  page->zero_from = end;
  memcpy (page->z, zbuf, n);
  return page;
}

/* Put PAGE in slot I (which holds PAGENO, or is where it goes). */
static int
zstd_store (size_t i, uint64_t pageno, struct zpage *page)
{
  struct zslot *s;

  if (i < nr_slots && slots[i].pageno == pageno) {
    free (slots[i].page);
    slots[i].page = page;
    return 0;
  }
  if (nr_slots == cap_slots) {
    size_t cap = cap_slots ? cap_slots * 2 : 64;

    s = realloc (slots, cap * sizeof *s);
    if (s == NULL) {
      nbdkit_error ("allocator=zstd: cannot grow the page table: %m");
      free (page);
      return -1;
    }
    slots = s;
    cap_slots = cap;
  }
  memmove (&slots[i + 1], &slots[i], (nr_slots - i) * sizeof *slots);
  slots[i] = (struct zslot) { .pageno = pageno, .page = page };
  nr_slots++;
  return 0;
}

static void
zstd_drop (size_t i)
{
  free (slots[i].page);
  memmove (&slots[i], &slots[i + 1], (nr_slots - i - 1) * sizeof *slots);
  nr_slots--;
}

/* Load page slot I holds (or zeroes if it holds another) into scratch,
 * unless the caller is about to overwrite all of it.  Writer only.
 */
static int
zstd_load (size_t i, uint64_t pageno, bool whole)
{
  if (i < nr_slots && slots[i].pageno == pageno && !whole) {
    struct zreader *r = zstd_reader ();

    if (r == NULL) {
      nbdkit_error ("allocator=zstd: cannot make a decompression context");
      errno = ENOMEM;
      return -1;
    }
    return zstd_unpack (r->dctx, slots[i].page, scratch);
  }
  if (!whole)
    memset (scratch, 0, ZPAGE_SIZE);
  return 0;
}

static int
zstd_write (const void *buf, uint64_t count, uint64_t offset)
{
  const unsigned char *in = buf;
  int ret = 0;

  pthread_rwlock_wrlock (&zlock);
  while (count > 0 && ret == 0) {
    uint64_t pageno = offset >> ZPAGE_BITS, in_page = offset & ZPAGE_MASK;
    uint64_t n = ZPAGE_SIZE - in_page < count ? ZPAGE_SIZE - in_page : count;
    size_t i = zstd_search (pageno);
    struct zpage *page;

    ret = zstd_load (i, pageno, n == ZPAGE_SIZE);
    if (ret == 0) {
      memcpy (scratch + in_page, in, n);
      page = zstd_pack ();
      ret = page ? zstd_store (i, pageno, page) : -1;
    }
    in += n;
    offset += n;
    count -= n;
  }
  pthread_rwlock_unlock (&zlock);
  return ret;
}

/* Only allocated pages are visited, so zeroing a huge range of a
 * sparse disk is cheap.
 */
static int
zstd_zero (uint64_t count, uint64_t offset)
{
  uint64_t end = offset + count;
  size_t i;
  int ret = 0;

  pthread_rwlock_wrlock (&zlock);
  i = zstd_search (offset >> ZPAGE_BITS);
  while (i < nr_slots && ret == 0) {
    uint64_t start = slots[i].pageno << ZPAGE_BITS;
    uint64_t from, to;
    struct zpage *page;

    if (start >= end)
      break;
    from = offset > start ? offset - start : 0;
    to = end - start < ZPAGE_SIZE ? end - start : ZPAGE_SIZE;
    if (from == 0 && to == ZPAGE_SIZE) {
      zstd_drop (i);            /* the next page moves to i */
      continue;
    }
    ret = zstd_load (i, slots[i].pageno, false);
    if (ret == -1)
      break;
    memset (scratch + from, 0, to - from);
    page = zstd_pack ();
    ret = page ? zstd_store (i, slots[i].pageno, page) : -1;
    i++;
  }
  pthread_rwlock_unlock (&zlock);
  return ret;
}

/* For page_extents_add; caller holds the read lock. */
static uint32_t
zstd_area_type (uint64_t offset, uint64_t *next)
{
  uint64_t pageno = offset >> ZPAGE_BITS;
  size_t i = zstd_search (pageno);

  if (i == nr_slots || slots[i].pageno != pageno) {
    *next = i < nr_slots ? slots[i].pageno << ZPAGE_BITS : UINT64_MAX;
    return NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
  }
  *next = (pageno + 1) << ZPAGE_BITS;
  if ((offset & ZPAGE_MASK) >= slots[i].page->zero_from)
    return NBDKIT_EXTENT_ZERO;
  return 0;
}

static int
zstd_extents (struct nbdkit_extents *extents, uint32_t count,
              uint64_t offset, uint32_t flags, uint64_t size)
{
  int r;

  pthread_rwlock_rdlock (&zlock);
  r = page_extents_add (extents, count, offset, flags, size, ZPAGE_SIZE,
                        zstd_area_type);
  pthread_rwlock_unlock (&zlock);
  return r;
}

static void
zstd_close (void)
{
  size_t i;

  for (i = 0; i < nr_slots; ++i)
    free (slots[i].page);
  free (slots);
  slots = NULL;
  nr_slots = cap_slots = 0;
  ZSTD_freeCCtx (cctx);
  cctx = NULL;
  free (zbuf);
  zbuf = NULL;
  if (reader_key_made) {
    pthread_key_delete (reader_key);
    reader_key_made = false;
    while (readers)
      zstd_reader_free (readers);
  }
}

static const struct allocator_ops zstd_ops = {
  .read = zstd_read,
  .write = zstd_write,
  .zero = zstd_zero,
  .extents = zstd_extents,
  .close = zstd_close,
};

const struct allocator_ops *
zstd_store_open (void)
{
  if (pthread_key_create (&reader_key, zstd_reader_free) != 0) {
    nbdkit_error ("allocator=zstd: pthread_key_create failed");
    return NULL;
  }
  reader_key_made = true;
  zbuf_len = ZSTD_compressBound (ZPAGE_SIZE);
  zbuf = malloc (zbuf_len);
  cctx = ZSTD_createCCtx ();
  if (zbuf == NULL || cctx == NULL) {
    nbdkit_error ("allocator=zstd: cannot make a compression context");
    zstd_close ();
    return NULL;
  }
  return &zstd_ops;
}

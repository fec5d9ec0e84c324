/* nbdsrv: an overlay of fixed-size blocks in a hidden temporary file.
 * See blockstore.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "blockstore.h"

/* One state byte per block: the state in the low two bits, and the
 * used mark the reclaim clock clears.  A byte, not two bits, because
 * neighbouring blocks change under different stripe locks: separate
 * bytes never share a read-modify-write.  A 1 TiB disk of 64 KiB blocks
 * costs 16 MiB.
 */
#define STATE_MASK 3
#define USED 4

/* 64 stripes: enough that unrelated requests rarely wait on each
 * other, few enough to sit in two cache lines of pointers.
 */
#define NR_STRIPES 64

struct blockstore {
  int fd;                       /* the hidden file, owned */
  uint32_t blksize;
  uint32_t fs_blksize;
  bool can_punch;

  pthread_mutex_t size_lock;    /* guards size, nr_blocks, states */
  uint64_t size;                /* 0 until blockstore_set_size */
  uint64_t nr_blocks;
  uint8_t *states;              /* nr_blocks bytes, owned */

  uint64_t stored;              /* CLEAN + DIRTY blocks, atomic */

  pthread_mutex_t clock_lock;   /* guards hand */
  uint64_t hand;

  pthread_mutex_t stripes[NR_STRIPES];
};

/* Opens an unlinked file in $TMPDIR or /var/tmp. */
static int
blockstore_open_tmp (const char *prefix)
{
  const char *dir = getenv ("TMPDIR");
  char *path;
  int fd;

  if (dir == NULL || *dir == '\0')
    dir = "/var/tmp";
  if (asprintf (&path, "%s/%s.XXXXXX", dir, prefix) == -1) {
    nbdkit_error ("%s: asprintf: %m", prefix);
    return -1;
  }
  fd = mkostemp (path, O_CLOEXEC);
  if (fd == -1)
    nbdkit_error ("%s: cannot create a temporary file in %s: %m: "
                  "set TMPDIR to a writable directory", prefix, dir);
  else
    unlink (path);
  free (path);
  return fd;
}

/* Punching a hole at the end of an empty file tells whether the
 * filesystem supports it at all.
 */
static bool
blockstore_probe_punch (int fd)
{
  return fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    0, 4096) == 0;
}

struct blockstore *
blockstore_new (const char *prefix, uint32_t blksize)
{
  struct blockstore *bs;
  struct stat st;
  size_t i;

  bs = calloc (1, sizeof (*bs));
  if (bs == NULL) {
    nbdkit_error ("%s: calloc: %m", prefix);
    return NULL;
  }
  bs->fd = blockstore_open_tmp (prefix);
  if (bs->fd == -1) {
    free (bs);
    return NULL;
  }
  bs->blksize = blksize;
  bs->fs_blksize = 4096;
  if (fstat (bs->fd, &st) == 0 && st.st_blksize > 0 &&
      st.st_blksize <= INT_MAX)
    bs->fs_blksize = st.st_blksize;
  bs->can_punch = blockstore_probe_punch (bs->fd);
  pthread_mutex_init (&bs->size_lock, NULL);
  pthread_mutex_init (&bs->clock_lock, NULL);
  for (i = 0; i < NR_STRIPES; ++i)
    pthread_mutex_init (&bs->stripes[i], NULL);
  return bs;
}

void
blockstore_free (struct blockstore *bs)
{
  size_t i;

  if (bs == NULL)
    return;
  close (bs->fd);
  free (bs->states);
  pthread_mutex_destroy (&bs->size_lock);
  pthread_mutex_destroy (&bs->clock_lock);
  for (i = 0; i < NR_STRIPES; ++i)
    pthread_mutex_destroy (&bs->stripes[i]);
  free (bs);
}

uint32_t
blockstore_fs_blksize (const struct blockstore *bs)
{
  return bs->fs_blksize;
}

bool
blockstore_can_punch (const struct blockstore *bs)
{
  return bs->can_punch;
}

int
blockstore_set_size (struct blockstore *bs, uint64_t size)
{
  uint64_t n = size / bs->blksize + (size % bs->blksize != 0);
  int r = 0;

  pthread_mutex_lock (&bs->size_lock);
  if (bs->states != NULL || bs->size != 0) {
    if (size != bs->size) {
      nbdkit_error ("the disk below changed size from %" PRIu64
                    " to %" PRIu64 " bytes: restart the server to use "
                    "the new size", bs->size, size);
      errno = EIO;
      r = -1;
    }
    goto out_unlock;
  }
  if (n > SIZE_MAX) {
    nbdkit_error ("a disk of %" PRIu64 " bytes has too many blocks of %"
                  PRIu32 " bytes for this machine: use a larger block "
                  "size", size, bs->blksize);
    errno = ENOMEM;
    r = -1;
    goto out_unlock;
  }
  bs->states = calloc (n ? n : 1, 1);
  if (bs->states == NULL) {
    nbdkit_error ("no memory for the state of %" PRIu64 " blocks: "
                  "use a larger block size", n);
    r = -1;
    goto out_unlock;
  }
  bs->size = size;
  bs->nr_blocks = n;
 out_unlock:
  pthread_mutex_unlock (&bs->size_lock);
  return r;
}

uint32_t
blockstore_blksize (const struct blockstore *bs)
{
  return bs->blksize;
}

uint64_t
blockstore_nr_blocks (const struct blockstore *bs)
{
  return bs->nr_blocks;
}

uint32_t
blockstore_block_len (const struct blockstore *bs, uint64_t blk)
{
  uint64_t start = blk * bs->blksize;

  if (bs->size - start < bs->blksize)
    return bs->size - start;
  return bs->blksize;
}

pthread_mutex_t *
blockstore_lock_for (struct blockstore *bs, uint64_t blk)
{
  return &bs->stripes[blk % NR_STRIPES];
}

enum blockstore_state
blockstore_get (const struct blockstore *bs, uint64_t blk)
{
  return __atomic_load_n (&bs->states[blk], __ATOMIC_RELAXED) & STATE_MASK;
}

static bool
is_stored (enum blockstore_state state)
{
  return state == BLOCKSTORE_CLEAN || state == BLOCKSTORE_DIRTY;
}

void
blockstore_set (struct blockstore *bs, uint64_t blk,
                enum blockstore_state state)
{
  uint8_t old = __atomic_exchange_n (&bs->states[blk], state | USED,
                                     __ATOMIC_RELAXED);
  bool was = is_stored (old & STATE_MASK), now = is_stored (state);

  if (was && !now)
    __atomic_fetch_sub (&bs->stored, 1, __ATOMIC_RELAXED);
  else if (!was && now)
    __atomic_fetch_add (&bs->stored, 1, __ATOMIC_RELAXED);
}

void
blockstore_touch (struct blockstore *bs, uint64_t blk)
{
  __atomic_fetch_or (&bs->states[blk], USED, __ATOMIC_RELAXED);
}

int
blockstore_read (struct blockstore *bs, uint64_t blk, uint32_t offset,
                 uint32_t len, void *buf)
{
  ssize_t r = pread (bs->fd, buf, len, blk * bs->blksize + offset);

  if (r == -1) {
    nbdkit_error ("reading block %" PRIu64 " of the temporary file: %m",
                  blk);
    return -1;
  }
  /* Past the end of the file (never written): zeroes. */
  if ((size_t) r < len)
    memset ((char *) buf + r, 0, len - r);
  return 0;
}

int
blockstore_write (struct blockstore *bs, uint64_t blk, uint32_t offset,
                  uint32_t len, const void *buf)
{
  const char *p = buf;
  uint64_t pos = blk * bs->blksize + offset;

  while (len > 0) {
    ssize_t r = pwrite (bs->fd, p, len, pos);
    if (r == -1) {
      nbdkit_error ("writing block %" PRIu64 " of the temporary file: %m: "
                    "is $TMPDIR full?", blk);
      return -1;
    }
    p += r;
    pos += r;
    len -= r;
  }
  return 0;
}

void
blockstore_drop (struct blockstore *bs, uint64_t blk,
                 enum blockstore_state state)
{
  if (bs->can_punch && is_stored (blockstore_get (bs, blk)))
    /* Best effort: if it fails the space stays used, nothing worse. */
    (void) fallocate (bs->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      blk * bs->blksize, bs->blksize);
  blockstore_set (bs, blk, state);
}

uint64_t
blockstore_stored (const struct blockstore *bs)
{
  return __atomic_load_n (&bs->stored, __ATOMIC_RELAXED);
}

int64_t
blockstore_clock_next (struct blockstore *bs)
{
  int64_t victim = -1;
  uint64_t i;

  if (bs->nr_blocks == 0 || blockstore_stored (bs) == 0)
    return -1;
  pthread_mutex_lock (&bs->clock_lock);
  /* Two turns: the first may only clear used marks. */
  for (i = 0; i < 2 * bs->nr_blocks; ++i) {
    uint64_t blk = bs->hand;
    uint8_t s;

    bs->hand = (bs->hand + 1) % bs->nr_blocks;
    s = __atomic_fetch_and (&bs->states[blk], (uint8_t) ~USED,
                            __ATOMIC_RELAXED);
    if (is_stored (s & STATE_MASK) && !(s & USED)) {
      victim = blk;
      break;
    }
  }
  pthread_mutex_unlock (&bs->clock_lock);
  return victim;
}

int64_t
blockstore_find (const struct blockstore *bs, uint64_t from,
                 enum blockstore_state state)
{
  uint64_t blk;

  for (blk = from; blk < bs->nr_blocks; ++blk)
    if (blockstore_get (bs, blk) == state)
      return blk;
  return -1;
}

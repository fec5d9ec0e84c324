/* nbdsrv memory plugin: a sparse RAM disk that is discarded on exit.
 * (allocator=malloc and allocator=zstd keep it in the shared stores of
 * common/allocators/ instead; what follows is the default, sparse.)
 *
 * The disk is split into 32 KiB pages.  Pages are reached through an
 * eight level radix tree of 64-slot nodes (6 bits per level, 48 bits
 * of page number, 15 bits of page offset: 63 bits in all), so any
 * virtual size up to 2^63-1 costs only the pages actually written plus
 * the nodes above them.  Nodes are kept small (520 bytes) because with
 * scattered writes each page needs several nodes of its own.  Measured
 * on a 1 TiB disk, 64 MiB contiguous plus 1024 scattered pages: 2.4%
 * RSS over the data, where 4096-slot nodes cost 32 KiB per lone page.
 *
 * Block status must agree with nbdkit's sparse allocator byte for byte,
 * which fixes the page size at 32768 and these rules, all observed from
 * nbdkit 1.32:
 *   - a page that was never written, or was freed, is a hole;
 *   - pwrite allocates the pages it touches, even when writing zeroes,
 *     and never frees them, so an allocated page may read as zero;
 *   - zero and trim free every page they cover fully, and also free a
 *     partially covered page when it ends up all zero;
 *   - an allocated page is reported as zero (not a hole) when the part
 *     of it from the current position to the page end is all zero.
 */

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "allocator.h"
#include "iszero.h"
#include "page-extents.h"
#include "write-target.h"

#define MEM_PAGE_BITS    15
#define MEM_PAGE_SIZE    (UINT64_C (1) << MEM_PAGE_BITS)
#define MEM_PAGE_MASK    (MEM_PAGE_SIZE - 1)
#define MEM_NODE_BITS    6
#define MEM_NODE_SLOTS   (1u << MEM_NODE_BITS)
#define MEM_LEVELS       8

/* One radix tree node.  At the last level the slots point at pages,
 * above it at child nodes.
 */
struct mem_node {
  uint32_t used;                /* non-NULL slots, to free empty nodes */
  void *slot[MEM_NODE_SLOTS];   /* owned: child nodes or pages */
};

static int64_t size = -1;               /* virtual disk size, -1 = unset */
static struct mem_node *root;           /* owned, created in get_ready */

/* allocator=: the value given, what it says, and (for malloc and zstd)
 * the store opened in get_ready, which then holds the disk instead of
 * the tree below.  NULL store: the default sparse tree.
 */
static const char *allocator_value = "sparse";
static struct allocator_spec allocator;
static const struct allocator_ops *store;       /* owned */

/* Readers (pread, extents) share the tree; writers (pwrite, trim,
 * zero) change it.  Writers are preferred so that a stream of reads
 * cannot starve them.
 */
static pthread_rwlock_t tree_lock;
static bool tree_lock_ready;

/* Bytes of pages freed since memory was last handed back to the
 * kernel; guarded by tree_lock (write side).  Freed 32 KiB chunks sit
 * in the middle of malloc's heap, where free() alone never releases
 * them, so after a large trim we ask malloc to give them back.
 */
static uint64_t freed_bytes;

#define MEM_TRIM_THRESHOLD (UINT64_C (64) << 20)

/* Pages that in-place writes replaced, kept for the next ones: a disk
 * being overwritten recycles its pages instead of allocating fresh
 * ones (page faults, and a heap that grows in every thread's arena).
 * At most SPARE_MAX are kept (32 MiB).
 */
#define SPARE_MAX 1024
static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static char *spare[SPARE_MAX];
static unsigned nspare;                 /* guarded by spare_lock */

/* Slot index of PAGENO in a node at LEVEL (0 = root). */
static inline unsigned
mem_slot_index (uint64_t pageno, int level)
{
  int shift = MEM_NODE_BITS * (MEM_LEVELS - 1 - level);

  return (pageno >> shift) & (MEM_NODE_SLOTS - 1);
}

/* Number of consecutive pages, starting at PAGENO, that share the slot
 * of PAGENO in a node at LEVEL.  Used to skip a missing subtree whole.
 */
static inline uint64_t
mem_slot_span (uint64_t pageno, int level)
{
  int shift = MEM_NODE_BITS * (MEM_LEVELS - 1 - level);
  uint64_t span = UINT64_C (1) << shift;

  return span - (pageno & (span - 1));
}

/* Return the page PAGENO, or NULL if it is not allocated.  In that
 * case *HOLE_PAGES is set to how many pages from PAGENO onwards are
 * certainly unallocated too (at least 1).
 */
static char *
mem_page_lookup (uint64_t pageno, uint64_t *hole_pages)
{
  struct mem_node *node = root;
  int level;

  for (level = 0; level < MEM_LEVELS - 1; ++level) {
    node = node->slot[mem_slot_index (pageno, level)];
    if (node == NULL) {
      *hole_pages = mem_slot_span (pageno, level);
      return NULL;
    }
  }

  *hole_pages = 1;
  return node->slot[mem_slot_index (pageno, level)];
}

/* Return the last-level node that holds page PAGENO, allocating any
 * missing nodes on the way; NULL with errno set if one cannot be.
 * Nodes created on the way stay in the tree, empty, which is harmless.
 */
static struct mem_node *
mem_leaf_get (uint64_t pageno)
{
  struct mem_node *node = root;
  void **slot;
  int level;

  for (level = 0; level < MEM_LEVELS - 1; ++level) {
    slot = &node->slot[mem_slot_index (pageno, level)];
    if (*slot == NULL) {
      *slot = calloc (1, sizeof (struct mem_node));
      if (*slot == NULL)
        return NULL;
      node->used++;
    }
    node = *slot;
  }
  return node;
}

/* Return the page PAGENO, allocating it (zero-filled) and any missing
 * nodes above it.  Returns NULL with errno set on allocation failure.
 */
static char *
mem_page_get (uint64_t pageno)
{
  struct mem_node *node = mem_leaf_get (pageno);
  void **slot;

  if (node == NULL)
    return NULL;
  slot = &node->slot[mem_slot_index (pageno, MEM_LEVELS - 1)];
  if (*slot == NULL) {
    *slot = calloc (1, MEM_PAGE_SIZE);
    if (*slot == NULL)
      return NULL;
    node->used++;
  }
  return *slot;
}

/* Free page PAGENO if allocated, then every node above it that is left
 * empty, so that trimming gives memory back.
 */
static void
mem_page_free (uint64_t pageno)
{
  struct mem_node *path[MEM_LEVELS];
  void **slot;
  int level;

  path[0] = root;
  for (level = 0; level < MEM_LEVELS - 1; ++level) {
    path[level + 1] = path[level]->slot[mem_slot_index (pageno, level)];
    if (path[level + 1] == NULL)
      return;
  }

  /* Walk back up: free the page, then each node that became empty.
   * The root is never freed.
   */
  for (level = MEM_LEVELS - 1; level >= 0; --level) {
    slot = &path[level]->slot[mem_slot_index (pageno, level)];
    if (*slot == NULL)
      return;
    free (*slot);
    *slot = NULL;
    path[level]->used--;
    if (level == MEM_LEVELS - 1)
      freed_bytes += MEM_PAGE_SIZE;
    if (level == 0 || path[level]->used > 0)
      return;
  }
}

/* Free a whole subtree.  LEVEL is the level of NODE; recursion depth is
 * bounded by MEM_LEVELS.
 */
static void
mem_node_free (struct mem_node *node, int level)
{
  unsigned i;

  if (node == NULL)
    return;
  for (i = 0; i < MEM_NODE_SLOTS; ++i) {
    if (level == MEM_LEVELS - 1)
      free (node->slot[i]);
    else
      mem_node_free (node->slot[i], level + 1);
  }
  free (node);
}

static void
memory_unload (void)
{
  if (store)
    store->close ();
  mem_node_free (root, 0);
  root = NULL;
  while (nspare > 0)
    free (spare[--nspare]);
  if (tree_lock_ready)
    pthread_rwlock_destroy (&tree_lock);
}

static void
memory_dump_plugin (void)
{
  /* nbdkit scripts probe these keys before choosing an allocator. */
  printf ("%s", ALLOCATOR_DUMP_PLUGIN);
}

static int
memory_config (const char *key, const char *value)
{
  if (strcmp (key, "size") == 0) {
    size = nbdkit_parse_size (value);
    if (size == -1)
      return -1;
    return 0;
  }
  if (strcmp (key, "allocator") == 0) {
    allocator_value = value;    /* parsed once all are given */
    return 0;
  }
  nbdkit_error ("unknown parameter '%s'", key);
  return -1;
}

static int
memory_config_complete (void)
{
  if (size == -1) {
    nbdkit_error ("size=<SIZE> is required: for example 'memory 1G'");
    return -1;
  }
  return allocator_spec_parse (allocator_value, &allocator);
}

#define memory_config_help \
  "size=<SIZE>   (required) Virtual size of the RAM disk.\n" \
  "allocator=sparse|malloc[,mlock=true]|zstd\n" \
  "                         How the disk is kept (default sparse)."

static int
memory_get_ready (void)
{
  pthread_rwlockattr_t attr;
  int err;

  pthread_rwlockattr_init (&attr);
  pthread_rwlockattr_setkind_np (&attr,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  err = pthread_rwlock_init (&tree_lock, &attr);
  pthread_rwlockattr_destroy (&attr);
  if (err != 0) {
    errno = err;
    nbdkit_error ("pthread_rwlock_init: %m");
    return -1;
  }
  tree_lock_ready = true;

  if (allocator.kind != ALLOCATOR_SPARSE) {
    store = allocator_open (&allocator, size);
    return store ? 0 : -1;
  }
  root = calloc (1, sizeof *root);
  if (root == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  return 0;
}

static void *
memory_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
memory_get_size (void *handle)
{
  return size;
}

static int
memory_can_fast_zero (void *handle)
{
  return 1;
}

/* Everything is in RAM already, so FUA and cache need no work. */
static int
memory_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
memory_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

/* All connections share one tree under one lock. */
static int
memory_can_multi_conn (void *handle)
{
  return 1;
}

static int
memory_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  char *out = buf;
  uint64_t hole_pages;
  uint32_t n;
  char *page;

  if (store)
    return store->read (buf, count, offset);
  pthread_rwlock_rdlock (&tree_lock);
  while (count > 0) {
    n = MEM_PAGE_SIZE - (offset & MEM_PAGE_MASK);
    if (n > count)
      n = count;
    page = mem_page_lookup (offset >> MEM_PAGE_BITS, &hole_pages);
    if (page)
      memcpy (out, page + (offset & MEM_PAGE_MASK), n);
    else
      memset (out, 0, n);
    out += n;
    offset += n;
    count -= n;
  }
  pthread_rwlock_unlock (&tree_lock);
  return 0;
}

/* A write that lands only on pages the disk already has changes no
 * page pointer, so it runs under the read lock beside other such
 * writes and reads: on a disk once filled, parallel writes no longer
 * queue behind each other.  Overlapping requests in flight at once have
 * no defined order in NBD, so bytes racing within a page are the
 * client's own affair.  Returns false, having copied nothing, when a
 * page is missing and the write must allocate.
 */
static bool
mem_write_existing (const char *in, uint32_t count, uint64_t offset)
{
  uint64_t first = offset >> MEM_PAGE_BITS;
  uint64_t last = (offset + count - 1) >> MEM_PAGE_BITS;
  char *pages[4];
  uint64_t hole_pages;
  uint32_t n;

  if (last - first >= sizeof pages / sizeof pages[0])
    return false;
  pthread_rwlock_rdlock (&tree_lock);
  for (uint64_t p = first; p <= last; p++) {
    pages[p - first] = mem_page_lookup (p, &hole_pages);
    if (pages[p - first] == NULL) {
      pthread_rwlock_unlock (&tree_lock);
      return false;
    }
  }
  for (uint64_t p = first; count > 0; p++) {
    n = MEM_PAGE_SIZE - (offset & MEM_PAGE_MASK);
    if (n > count)
      n = count;
    memcpy (pages[p - first] + (offset & MEM_PAGE_MASK), in, n);
    in += n;
    offset += n;
    count -= n;
  }
  pthread_rwlock_unlock (&tree_lock);
  return true;
}

static int
memory_pwrite (void *handle, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags)
{
  const char *in = buf;
  int r = 0;
  uint32_t n;
  char *page;

  if (store)
    return store->write (buf, count, offset);
  if (count == 0 || mem_write_existing (in, count, offset))
    return 0;
  pthread_rwlock_wrlock (&tree_lock);
  while (count > 0) {
    n = MEM_PAGE_SIZE - (offset & MEM_PAGE_MASK);
    if (n > count)
      n = count;
    page = mem_page_get (offset >> MEM_PAGE_BITS);
    if (page == NULL) {
      nbdkit_error ("cannot allocate a page for offset %" PRIu64 ": %m",
                    offset);
      r = -1;
      break;
    }
    memcpy (page + (offset & MEM_PAGE_MASK), in, n);
    in += n;
    offset += n;
    count -= n;
  }
  pthread_rwlock_unlock (&tree_lock);
  if (r == -1)
    errno = ENOMEM;
  return r;
}

/* write-target.h: nbdsrv receives a write into fresh pages, which
 * replace the disk's pages (or fill its holes) when it commits.  A page
 * the write covers only in part gets the rest of the old page (or
 * zeroes) copied around the new bytes at commit.
 */
struct mem_staged {
  uint64_t offset;
  uint32_t count;
  unsigned npages;
  char *page[];                 /* owned until committed */
};

/* Keep PAGE for reuse, or free it.  Caller holds spare_lock. */
static void
mem_spare_put (char *page)
{
  if (page == NULL)
    return;
  if (nspare < SPARE_MAX)
    spare[nspare++] = page;
  else
    free (page);
}

static void
mem_staged_free (struct mem_staged *st)
{
  pthread_mutex_lock (&spare_lock);
  for (unsigned i = 0; i < st->npages; ++i)
    mem_spare_put (st->page[i]);
  pthread_mutex_unlock (&spare_lock);
  free (st);
}

write_target_fn nbdsrv_write_target;
write_target_done_fn nbdsrv_write_target_done;

int
nbdsrv_write_target (void *handle, uint32_t count, uint64_t offset,
                     struct iovec *iov, int *iovcnt, void **token)
{
  uint64_t first = offset >> MEM_PAGE_BITS;
  uint64_t npages = count == 0 ? 0
    : ((offset + count - 1) >> MEM_PAGE_BITS) - first + 1;
  struct mem_staged *st;
  uint64_t pos = offset;

  /* Only the sparse tree can take a write's pages whole at commit. */
  if (store || npages == 0 || npages > (uint64_t) *iovcnt)
    return -1;
  st = malloc (sizeof *st + npages * sizeof st->page[0]);
  if (st == NULL)
    return -1;
  st->offset = offset;
  st->count = count;
  st->npages = 0;
  pthread_mutex_lock (&spare_lock);
  for (unsigned i = 0; i < npages && nspare > 0; ++i)
    st->page[st->npages++] = spare[--nspare];
  pthread_mutex_unlock (&spare_lock);
  for (unsigned i = 0; i < npages; ++i) {
    uint64_t in_page = pos & MEM_PAGE_MASK;
    uint64_t len = MEM_PAGE_SIZE - in_page;

    if (i >= st->npages &&
        (st->page[st->npages++] = malloc (MEM_PAGE_SIZE)) == NULL) {
      st->npages--;
      mem_staged_free (st);
      return -1;
    }
    if (len > offset + count - pos)
      len = offset + count - pos;
    iov[i].iov_base = st->page[i] + in_page;
    iov[i].iov_len = len;
    pos += len;
  }
  *iovcnt = npages;
  *token = st;
  return 0;
}

/* Link new page PAGE in as PAGENO, keeping the bytes of the old page
 * (or zeroes) outside [FROM, TO).  The old page, if any, is left in
 * *OLD_OUT.  Caller holds the write lock.
 */
static int
mem_page_replace (uint64_t pageno, char *page, uint64_t from, uint64_t to,
                  char **old_out)
{
  struct mem_node *leaf = mem_leaf_get (pageno);
  void **slot;
  char *old;

  if (leaf == NULL)
    return -1;
  slot = &leaf->slot[mem_slot_index (pageno, MEM_LEVELS - 1)];
  old = *slot;
  if (from > 0 || to < MEM_PAGE_SIZE) {
    if (old) {
      memcpy (page, old, from);
      memcpy (page + to, old + to, MEM_PAGE_SIZE - to);
    }
    else {
      memset (page, 0, from);
      memset (page + to, 0, MEM_PAGE_SIZE - to);
    }
  }
  if (old == NULL)
    leaf->used++;
  *old_out = old;
  *slot = page;
  return 0;
}

int
nbdsrv_write_target_done (void *handle, void *token, bool commit)
{
  struct mem_staged *st = token;
  uint64_t pos = st->offset, end = st->offset + st->count;
  unsigned i;

  if (!commit) {
    mem_staged_free (st);
    return 0;
  }
  pthread_rwlock_wrlock (&tree_lock);
  for (i = 0; i < st->npages; ++i) {
    uint64_t in_page = pos & MEM_PAGE_MASK;
    uint64_t to = MEM_PAGE_SIZE;

    if (to > in_page + (end - pos))
      to = in_page + (end - pos);
    /* The old page takes the new one's place in ST, to be recycled. */
    if (mem_page_replace (pos >> MEM_PAGE_BITS, st->page[i],
                          in_page, to, &st->page[i]) == -1)
      break;
    pos += to - in_page;
  }
  pthread_rwlock_unlock (&tree_lock);
  if (i < st->npages) {
    nbdkit_error ("cannot allocate a page for offset %" PRIu64 ": %m", pos);
    mem_staged_free (st);       /* the pages linked so far stay */
    errno = ENOMEM;
    return -1;
  }
  mem_staged_free (st);         /* the replaced pages */
  return 0;
}

static int
memory_flush (void *handle, uint32_t flags)
{
  return 0;
}

/* Make [offset, offset+count) read as zero, freeing pages as described
 * at the top of the file.  Caller holds the write lock.
 */
static void
mem_range_zero (uint32_t count, uint64_t offset)
{
  uint64_t end = offset + count;
  uint64_t pageno, hole_pages, skip;
  uint32_t pos_in_page, n;
  char *page;

  while (offset < end) {
    pageno = offset >> MEM_PAGE_BITS;
    pos_in_page = offset & MEM_PAGE_MASK;
    page = mem_page_lookup (pageno, &hole_pages);
    if (page == NULL) {
      /* Jump over the whole missing subtree, from the page start. */
      skip = (hole_pages << MEM_PAGE_BITS) - pos_in_page;
      if (skip >= end - offset)
        return;
      offset += skip;
      continue;
    }

    n = MEM_PAGE_SIZE - pos_in_page;
    if (n > end - offset)
      n = end - offset;
    if (n == MEM_PAGE_SIZE)
      mem_page_free (pageno);
    else {
      memset (page + pos_in_page, 0, n);
      if (is_zero (page, MEM_PAGE_SIZE))
        mem_page_free (pageno);
    }
    offset += n;
  }
}

/* Trim and zero do the same here: a freed page reads as zero, and a
 * fast zero is always fast.  malloc_trim walks the whole heap, so it
 * runs outside the lock and only once per MEM_TRIM_THRESHOLD freed.
 */
static int
memory_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  bool give_back = false;

  if (store)
    return store->zero (count, offset);
  pthread_rwlock_wrlock (&tree_lock);
  mem_range_zero (count, offset);
  if (freed_bytes >= MEM_TRIM_THRESHOLD) {
    freed_bytes = 0;
    give_back = true;
  }
  pthread_rwlock_unlock (&tree_lock);

  if (give_back)
    malloc_trim (0);
  return 0;
}

static int
memory_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return memory_trim (handle, count, offset, flags);
}

/* Type of the area at OFFSET for page_extents_add.  A missing subtree
 * is reported as one run of holes.
 */
static uint32_t
mem_area_type (uint64_t offset, uint64_t *next)
{
  uint64_t pageno = offset >> MEM_PAGE_BITS;
  uint32_t pos_in_page = offset & MEM_PAGE_MASK;
  uint64_t hole_pages;
  char *page;

  page = mem_page_lookup (pageno, &hole_pages);
  *next = (pageno + hole_pages) << MEM_PAGE_BITS;
  if (page == NULL)
    return NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
  if (is_zero (page + pos_in_page, MEM_PAGE_SIZE - pos_in_page))
    return NBDKIT_EXTENT_ZERO;
  return 0;
}

static int
memory_extents (void *handle, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents)
{
  int r;

  if (store)
    return store->extents (extents, count, offset, flags, size);
  pthread_rwlock_rdlock (&tree_lock);
  r = page_extents_add (extents, count, offset, flags, size, MEM_PAGE_SIZE,
                        mem_area_type);
  pthread_rwlock_unlock (&tree_lock);
  return r;
}

static struct nbdkit_plugin plugin = {
  .name              = "memory",
  .longname          = "nbdsrv RAM disk plugin",
  .version           = "0.1.0",
  .unload            = memory_unload,
  .dump_plugin       = memory_dump_plugin,
  .config            = memory_config,
  .config_complete   = memory_config_complete,
  .config_help       = memory_config_help,
  .magic_config_key  = "size",
  .get_ready         = memory_get_ready,
  .open              = memory_open,
  .get_size          = memory_get_size,
  .can_fast_zero     = memory_can_fast_zero,
  .can_fua           = memory_can_fua,
  .can_multi_conn    = memory_can_multi_conn,
  .can_cache         = memory_can_cache,
  .pread             = memory_pread,
  .pwrite            = memory_pwrite,
  .flush             = memory_flush,
  .trim              = memory_trim,
  .zero              = memory_zero,
  .extents           = memory_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

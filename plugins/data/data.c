/* nbdsrv data plugin: a RAM disk whose initial contents are given on
 * the command line as data=, raw= or base64= (docs/nbdkit-data-plugin.md).
 *
 * The disk is kept in 32 KiB pages so that block status agrees with
 * nbdkit's sparse allocator, with the rules the memory plugin lists:
 * writes allocate the pages they touch even when writing zeroes; zero
 * and trim free fully covered pages and partially covered ones that
 * end up all zero; an allocated page reads as a zero extent when the
 * rest of it from the current position is zero.
 *
 * The pages live in an array sorted by page number.  That is enough
 * here: the data string itself is small, a client filling the disk in
 * order only ever appends, and finding the next allocated page for
 * block status is a binary search, so @1T 1 costs two pages.
 */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

/* The parser lives in format.c (built beside this file, see
 * plugins/meson.build) so unit tests and fuzzers can compile it alone.
 */
#include "allocator.h"
#include "format.h"
#include "iszero.h"
#include "page-extents.h"

#define DATA_PAGE_BITS 15
#define DATA_PAGE_SIZE (UINT64_C (1) << DATA_PAGE_BITS)
#define DATA_PAGE_MASK (DATA_PAGE_SIZE - 1)

struct data_page {
  uint64_t pageno;
  unsigned char *bytes;         /* owned, DATA_PAGE_SIZE */
};

/* Guarded by store_lock. */
static struct data_page *pages; /* owned, sorted by pageno */
static size_t nr_pages, cap_pages;
static pthread_rwlock_t store_lock = PTHREAD_RWLOCK_INITIALIZER;

/* Configuration. */
static const char *source_key;  /* "data", "raw" or "base64" */
static const char *source_value;
static int64_t size = -1;       /* size=, -1 if not given */

/* allocator=, as in the memory plugin: with malloc or zstd the disk is
 * in STORE (opened once the size is known) instead of the pages above.
 */
static const char *allocator_value = "sparse";
static struct allocator_spec allocator;
static const struct allocator_ops *store;       /* owned */

/* Every other key=value is a variable for $NAME. */
struct data_var {
  const char *key, *value;      /* borrowed from the server */
};
static struct data_var *vars;   /* owned */
static size_t nr_vars;

/* -D data.AST=1: show what data= evaluated to, as debug lines. */
NBDKIT_DLL_PUBLIC int data_debug_AST = 0;

/* The longest string shown for one write in the -D data.AST dump. */
#define AST_DUMP_MAX 256

/* Index of the first page whose number is >= PAGENO. */
static size_t
store_search (uint64_t pageno)
{
  size_t lo = 0, hi = nr_pages, mid;

  while (lo < hi) {
    mid = lo + (hi - lo) / 2;
    if (pages[mid].pageno < pageno)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static unsigned char *
store_lookup (uint64_t pageno)
{
  size_t i = store_search (pageno);

  return i < nr_pages && pages[i].pageno == pageno ? pages[i].bytes : NULL;
}

/* Return page PAGENO, allocating a zeroed one if needed, or NULL. */
static unsigned char *
store_get (uint64_t pageno)
{
  size_t i = store_search (pageno), cap;
  struct data_page *p;
  unsigned char *bytes;

  if (i < nr_pages && pages[i].pageno == pageno)
    return pages[i].bytes;

  if (nr_pages == cap_pages) {
    cap = cap_pages ? cap_pages * 2 : 64;
    p = realloc (pages, cap * sizeof *p);
    if (p == NULL)
      return NULL;
    pages = p;
    cap_pages = cap;
  }
  bytes = calloc (1, DATA_PAGE_SIZE);
  if (bytes == NULL)
    return NULL;
  memmove (&pages[i+1], &pages[i], (nr_pages - i) * sizeof *pages);
  pages[i].pageno = pageno;
  pages[i].bytes = bytes;
  nr_pages++;
  return bytes;
}

static void
store_drop (uint64_t pageno)
{
  size_t i = store_search (pageno);

  if (i == nr_pages || pages[i].pageno != pageno)
    return;
  free (pages[i].bytes);
  memmove (&pages[i], &pages[i+1], (nr_pages - i - 1) * sizeof *pages);
  nr_pages--;
}

/* Caller holds the write lock (or has a STORE, which locks itself). */
static int
store_write (const unsigned char *in, uint64_t count, uint64_t offset)
{
  uint64_t n;
  unsigned char *page;

  if (store)
    return store->write (in, count, offset);
  while (count > 0) {
    n = DATA_PAGE_SIZE - (offset & DATA_PAGE_MASK);
    if (n > count)
      n = count;
    page = store_get (offset >> DATA_PAGE_BITS);
    if (page == NULL) {
      nbdkit_error ("cannot allocate a page for offset %" PRIu64 ": %m",
                    offset);
      errno = ENOMEM;
      return -1;
    }
    memcpy (page + (offset & DATA_PAGE_MASK), in, n);
    in += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* Caller holds the write lock.  Only allocated pages are visited, so
 * zeroing a huge range of a sparse disk is cheap.
 */
static int
store_zero (uint64_t count, uint64_t offset)
{
  uint64_t end = offset + count, page_start, from, to;
  size_t i = store_search (offset >> DATA_PAGE_BITS);
  unsigned char *bytes;

  if (store)
    return store->zero (count, offset);
  while (i < nr_pages) {
    page_start = pages[i].pageno << DATA_PAGE_BITS;
    if (page_start >= end)
      break;
    from = offset > page_start ? offset - page_start : 0;
    to = end - page_start < DATA_PAGE_SIZE ? end - page_start
      : DATA_PAGE_SIZE;
    bytes = pages[i].bytes;
    memset (bytes + from, 0, to - from);
    if (is_zero (bytes, DATA_PAGE_SIZE))
      store_drop (pages[i].pageno);   /* the next page moves to i */
    else
      i++;
  }
  return 0;
}

static void
data_unload (void)
{
  size_t i;

  for (i = 0; i < nr_pages; ++i)
    free (pages[i].bytes);
  free (pages);
  free (vars);
  if (store)
    store->close ();
}

static void
data_dump_plugin (void)
{
  printf ("data_base64=yes\n");
  /* Asked for by scripts before choosing an allocator. */
  printf ("%s", ALLOCATOR_DUMP_PLUGIN);
}

static int
data_config (const char *key, const char *value)
{
  struct data_var *v;

  if (strcmp (key, "data") == 0 || strcmp (key, "raw") == 0 ||
      strcmp (key, "base64") == 0) {
    if (source_key) {
      nbdkit_error ("%s= given after %s=: give exactly one of data=, raw= "
                    "or base64=", key, source_key);
      return -1;
    }
    source_key = key;
    source_value = value;
    return 0;
  }
  if (strcmp (key, "size") == 0) {
    size = nbdkit_parse_size (value);
    return size == -1 ? -1 : 0;
  }
  if (strcmp (key, "allocator") == 0) {
    allocator_value = value;    /* parsed once all are given */
    return 0;
  }

  /* Anything else may be used as $KEY in data=. */
  v = realloc (vars, (nr_vars + 1) * sizeof *v);
  if (v == NULL) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  vars = v;
  vars[nr_vars].key = key;
  vars[nr_vars].value = value;
  nr_vars++;
  return 0;
}

/* Parameters win over the environment; the last of repeated ones. */
static const char *
data_lookup (const char *name, void *opaque)
{
  size_t i;

  for (i = nr_vars; i > 0; --i)
    if (strcmp (vars[i-1].key, name) == 0)
      return vars[i-1].value;
  return getenv (name);
}

/* -D data.AST=1 in nbdkit's frame (BEGIN AST ... END AST).  nbdkit
 * prints the parsed expression; nbdsrv evaluates while it parses, so
 * it prints what the expression evaluated to: one line per write in
 * order, "@OFFSET" then a string or fill(0*LENGTH) for a zeroed run.
 */
static void
data_ast_dump (const struct data_format *f)
{
  char line[4 * AST_DUMP_MAX + 64];
  const struct data_write *w;
  size_t i, j, n, len;

  nbdkit_debug ("BEGIN AST (-D data.AST=1)");
  nbdkit_debug ("(");
  for (i = 0; i < f->nr_writes; ++i) {
    w = &f->writes[i];
    if (w->kind == DATA_WRITE_ZERO) {
      nbdkit_debug ("    @%" PRIu64 " fill(0*%" PRIu64 ")", w->offset, w->len);
      continue;
    }
    n = w->len < AST_DUMP_MAX ? w->len : AST_DUMP_MAX;
    len = 0;
    for (j = 0; j < n; ++j) {
      unsigned char c = w->bytes[j];

      if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
        line[len++] = c;
      else
        len += sprintf (line + len, "\\x%02x", c);
    }
    line[len] = '\0';
    nbdkit_debug ("    @%" PRIu64 " \"%s\"%s", w->offset, line,
                  w->len > n ? " ..." : "");
  }
  nbdkit_debug (")");
  nbdkit_debug ("END AST");
}

/* Apply the writes of a parsed data= string, clipped to the disk. */
static int
data_load_format (const struct data_format *f, uint64_t disk_size)
{
  const struct data_write *w;
  unsigned char zero = 0;
  uint64_t len;
  size_t i;

  for (i = 0; i < f->nr_writes; ++i) {
    w = &f->writes[i];
    if (w->offset >= disk_size)
      continue;
    len = w->len < disk_size - w->offset ? w->len : disk_size - w->offset;
    /* A lone zero byte is written, as nbdkit does; runs are zeroed. */
    if (w->kind == DATA_WRITE_ZERO && w->len > 1) {
      if (store_zero (len, w->offset) == -1)
        return -1;
    }
    else if (store_write (w->kind == DATA_WRITE_ZERO ? &zero : w->bytes,
                          len, w->offset) == -1)
      return -1;
  }
  return 0;
}

/* With allocator=malloc or zstd, open the store for a disk of SIZE. */
static int
data_open_store (void)
{
  if (allocator.kind == ALLOCATOR_SPARSE)
    return 0;
  store = allocator_open (&allocator, size);
  return store ? 0 : -1;
}

/* Write the LEN bytes of raw= or base64= at the start of the disk. */
static int
data_load_bytes (const unsigned char *bytes, size_t len)
{
  if (size == -1)
    size = len;
  if (data_open_store () == -1)
    return -1;
  return store_write (bytes, (uint64_t) size < len ? (size_t) size : len, 0);
}

static int
data_config_complete (void)
{
  struct data_format f;
  unsigned char *bytes = NULL;
  size_t len;
  int r = -1;

  if (source_key == NULL) {
    nbdkit_error ("no disk contents: give one of data=, raw= or base64= "
                  "(for example data='1 2 3')");
    return -1;
  }
  if (allocator_spec_parse (allocator_value, &allocator) == -1)
    return -1;

  if (strcmp (source_key, "data") == 0) {
    if (data_format_parse (source_value, data_lookup, NULL, &f) == -1) {
      nbdkit_error ("data parameter: %s (at offset %zu of %s)",
                    f.error, f.error_pos, f.error_source);
      data_format_free (&f);
      return -1;
    }
    if (data_debug_AST)
      data_ast_dump (&f);
    if (size == -1)
      size = f.size;
    r = data_open_store ();
    if (r == 0)
      r = data_load_format (&f, size);
    data_format_free (&f);
    return r;
  }

  /* Other parameters are only ever $VARIABLES of data=; nbdkit
   * refuses them beside raw= or base64=, so a typo does not go
   * unnoticed, and so do we.
   */
  if (nr_vars > 0) {
    nbdkit_error ("extra parameters passed and not using data='...': "
                  "%s=%s has no meaning beside %s=; drop it",
                  vars[0].key, vars[0].value, source_key);
    return -1;
  }

  if (strcmp (source_key, "raw") == 0)
    return data_load_bytes ((const unsigned char *) source_value,
                            strlen (source_value));
  if (data_base64_decode (source_value, &bytes, &len) == -1) {
    nbdkit_error ("base64 parameter is not valid base64: use only "
                  "A-Z a-z 0-9 + / with '=' padding to a multiple of "
                  "4 characters");
    return -1;
  }
  r = data_load_bytes (bytes, len);
  free (bytes);
  return r;
}

#define data_config_help \
  "[data=]<DATA>     Disk contents in the data format (see the man page).\n" \
  "raw=<BINARY>      Disk contents as raw bytes.\n" \
  "base64=<BASE64>   Disk contents in base64.\n" \
  "size=<SIZE>       Truncate or extend the disk to SIZE.\n" \
  "allocator=sparse|malloc[,mlock=true]|zstd\n" \
  "                  How the disk is kept (default sparse)."

static void *
data_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
data_get_size (void *handle)
{
  return size;
}

/* The disk is RAM shared by all connections, as in the memory plugin. */
static int
data_can_multi_conn (void *handle)
{
  return 1;
}

static int
data_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
data_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

static int
data_can_fast_zero (void *handle)
{
  return 1;
}

static int
data_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  unsigned char *out = buf, *page;
  uint32_t n;

  if (store)
    return store->read (buf, count, offset);
  pthread_rwlock_rdlock (&store_lock);
  while (count > 0) {
    n = DATA_PAGE_SIZE - (offset & DATA_PAGE_MASK);
    if (n > count)
      n = count;
    page = store_lookup (offset >> DATA_PAGE_BITS);
    if (page)
      memcpy (out, page + (offset & DATA_PAGE_MASK), n);
    else
      memset (out, 0, n);
    out += n;
    offset += n;
    count -= n;
  }
  pthread_rwlock_unlock (&store_lock);
  return 0;
}

static int
data_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  int r;

  if (store)
    return store->write (buf, count, offset);   /* locks itself */
  pthread_rwlock_wrlock (&store_lock);
  r = store_write (buf, count, offset);
  pthread_rwlock_unlock (&store_lock);
  return r;
}

static int
data_flush (void *handle, uint32_t flags)
{
  return 0;
}

static int
data_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  if (store)
    return store->zero (count, offset);         /* locks itself */
  pthread_rwlock_wrlock (&store_lock);
  r = store_zero (count, offset);
  pthread_rwlock_unlock (&store_lock);
  return r;
}

static int
data_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return data_zero (handle, count, offset, flags);
}

/* Type of the area at OFFSET for page_extents_add.  A run of holes is
 * measured up to the next allocated page in one step.
 */
static uint32_t
data_area_type (uint64_t offset, uint64_t *next)
{
  uint64_t pageno = offset >> DATA_PAGE_BITS;
  uint32_t pos_in_page = offset & DATA_PAGE_MASK;
  size_t i = store_search (pageno);

  if (i == nr_pages || pages[i].pageno != pageno) {
    *next = i < nr_pages ? pages[i].pageno << DATA_PAGE_BITS : UINT64_MAX;
    return NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
  }
  *next = (pageno + 1) << DATA_PAGE_BITS;
  if (is_zero (pages[i].bytes + pos_in_page, DATA_PAGE_SIZE - pos_in_page))
    return NBDKIT_EXTENT_ZERO;
  return 0;
}

static int
data_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
              struct nbdkit_extents *extents)
{
  int r;

  if (store)
    return store->extents (extents, count, offset, flags, size);
  pthread_rwlock_rdlock (&store_lock);
  r = page_extents_add (extents, count, offset, flags, size, DATA_PAGE_SIZE,
                        data_area_type);
  pthread_rwlock_unlock (&store_lock);
  return r;
}

static struct nbdkit_plugin plugin = {
  .name              = "data",
  .longname          = "nbdsrv data plugin",
  .version           = "0.1.0",
  .unload            = data_unload,
  .dump_plugin       = data_dump_plugin,
  .config            = data_config,
  .config_complete   = data_config_complete,
  .config_help       = data_config_help,
  .magic_config_key  = "data",
  .open              = data_open,
  .get_size          = data_get_size,
  .can_multi_conn    = data_can_multi_conn,
  .can_fua           = data_can_fua,
  .can_cache         = data_can_cache,
  .can_fast_zero     = data_can_fast_zero,
  .pread             = data_pread,
  .pwrite            = data_pwrite,
  .flush             = data_flush,
  .trim              = data_trim,
  .zero              = data_zero,
  .extents           = data_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)

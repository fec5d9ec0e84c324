/* nbdsrv xz filter: serves the uncompressed contents of an xz file.
 *
 * xz files are seekable at block boundaries: the first connection
 * reads the file's index (through liblzma's file-info decoder, which
 * asks for the parts of the file it needs), and each read uncompresses
 * the blocks it touches whole.  Each connection keeps the last
 * xz-max-depth blocks it uncompressed.  Read-only.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <lzma.h>

#include <nbdkit-filter.h>

#include "minmax.h"

/* Compressed bytes handed to the index decoder at a time. */
#define IN_CHUNK (64 * 1024)

static uint64_t max_block = 512 * 1024 * 1024;   /* xz-max-block */
static unsigned max_depth = 8;                    /* xz-max-depth */

static pthread_mutex_t index_lock = PTHREAD_MUTEX_INITIALIZER;
static lzma_index *xz_index;    /* owned, once read */

/* One uncompressed block a connection keeps. */
struct xz_block {
  uint64_t start, size;         /* in the uncompressed disk */
  uint8_t *data;                /* owned */
};

struct xz_handle {
  pthread_mutex_t lock;         /* guards blocks */
  struct xz_block *blocks;      /* max_depth, most recent first */
};

static int
xz_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
           const char *key, const char *value)
{
  if (strcmp (key, "xz-max-block") == 0) {
    int64_t n = nbdkit_parse_size (value);
    if (n == -1)
      return -1;
    if (n == 0) {
      nbdkit_error ("'xz-max-block' parameter must be greater than 0");
      return -1;
    }
    max_block = n;
    return 0;
  }
  if (strcmp (key, "xz-max-depth") == 0) {
    if (nbdkit_parse_unsigned ("xz-max-depth", value, &max_depth) == -1)
      return -1;
    if (max_depth == 0) {
      nbdkit_error ("'xz-max-depth' parameter must be >= 1");
      return -1;
    }
    return 0;
  }
  return next (nxdata, key, value);
}

#define xz_config_help \
  "xz-max-block=<SIZE> (optional) Maximum block size allowed (default: 512M)\n"\
  "xz-max-depth=<N>    (optional) Maximum blocks in cache (default: 8)\n"

static void
xz_unload (void)
{
  if (xz_index != NULL)
    lzma_index_end (xz_index, NULL);
}

static const char *
xz_strerror (lzma_ret r)
{
  switch (r) {
  case LZMA_FORMAT_ERROR: return "not an xz file";
  case LZMA_MEM_ERROR: return "out of memory";
  case LZMA_MEMLIMIT_ERROR: return "the index needs too much memory";
  case LZMA_DATA_ERROR: return "the file is corrupt";
  case LZMA_OPTIONS_ERROR: return "unsupported options in the file";
  case LZMA_BUF_ERROR: return "the file is truncated";
  default: return "internal error in liblzma";
  }
}

/* Reads the index of the whole file below into *IDX. */
static int
xz_read_index (nbdkit_next *next, lzma_index **idx)
{
  int64_t file_size = next->get_size (next);
  lzma_stream strm = LZMA_STREAM_INIT;
  uint8_t *buf = malloc (IN_CHUNK);
  uint64_t pos = 0;
  lzma_ret lr;
  int r = -1, err;

  if (file_size == -1 || buf == NULL)
    goto out_free;
  lr = lzma_file_info_decoder (&strm, idx, UINT64_MAX, file_size);
  while (lr == LZMA_OK) {
    if (strm.avail_in == 0) {
      uint32_t n = MIN ((uint64_t) IN_CHUNK, file_size - pos);
      if (n == 0) {
        lr = LZMA_BUF_ERROR;
        break;
      }
      if (next->pread (next, buf, n, pos, 0, &err) == -1) {
        nbdkit_error ("xz: reading the compressed file: %s",
                      strerror (err));
        goto out_end;
      }
      strm.next_in = buf;
      strm.avail_in = n;
      pos += n;
    }
    lr = lzma_code (&strm, LZMA_RUN);
    if (lr == LZMA_SEEK_NEEDED) {
      pos = strm.seek_pos;
      strm.avail_in = 0;
      lr = LZMA_OK;
    }
  }
  if (lr != LZMA_STREAM_END) {
    nbdkit_error ("xz: %s", xz_strerror (lr));
    goto out_end;
  }
  r = 0;
 out_end:
  lzma_end (&strm);
 out_free:
  free (buf);
  return r;
}

/* The largest uncompressed block must fit xz-max-block. */
static int
xz_check_blocks (lzma_index *idx)
{
  lzma_index_iter iter;
  uint64_t largest = 0;

  lzma_index_iter_init (&iter, idx);
  while (!lzma_index_iter_next (&iter, LZMA_INDEX_ITER_BLOCK))
    largest = MAX (largest, (uint64_t) iter.block.uncompressed_size);
  if (largest > max_block) {
    nbdkit_error ("xz file largest block is bigger than maxblock: "
                  "%" PRIu64 " bytes, more than xz-max-block=%" PRIu64
                  ": recompress with smaller blocks (xz --block-size) or "
                  "raise xz-max-block", largest, max_block);
    return -1;
  }
  return 0;
}

static int
xz_prepare (nbdkit_next *next, void *handle, int readonly)
{
  lzma_index *idx = NULL;
  int r = 0;

  /* Every connection asks: nbdkit checks reads below against the size
   * this connection's layer below has told.
   */
  if (next->get_size (next) == -1)
    return -1;
  pthread_mutex_lock (&index_lock);
  if (xz_index != NULL)
    goto out_unlock;
  r = xz_read_index (next, &idx);
  if (r == 0)
    r = xz_check_blocks (idx);
  if (r == 0) {
    nbdkit_debug ("xz: %" PRIu64 " streams, %" PRIu64 " blocks",
                  (uint64_t) lzma_index_stream_count (idx),
                  (uint64_t) lzma_index_block_count (idx));
    xz_index = idx;
  }
  else if (idx != NULL)
    lzma_index_end (idx, NULL);
 out_unlock:
  pthread_mutex_unlock (&index_lock);
  return r;
}

static void *
xz_open (nbdkit_next_open *next, nbdkit_context *context,
         int readonly, const char *exportname, int is_tls)
{
  struct xz_handle *h;

  if (next (context, readonly, exportname) == -1)
    return NULL;
  h = calloc (1, sizeof (*h));
  if (h != NULL)
    h->blocks = calloc (max_depth, sizeof (*h->blocks));
  if (h == NULL || h->blocks == NULL) {
    nbdkit_error ("xz: calloc: %m");
    free (h);
    return NULL;
  }
  pthread_mutex_init (&h->lock, NULL);
  return h;
}

static void
xz_close (void *handle)
{
  struct xz_handle *h = handle;
  unsigned i;

  for (i = 0; i < max_depth; ++i)
    free (h->blocks[i].data);
  free (h->blocks);
  pthread_mutex_destroy (&h->lock);
  free (h);
}

static int64_t
xz_get_size (nbdkit_next *next, void *handle)
{
  return lzma_index_uncompressed_size (xz_index);
}

static int
xz_can_write (nbdkit_next *next, void *handle)
{
  return 0;
}

/* The extents below are those of the compressed file. */
static int
xz_can_extents (nbdkit_next *next, void *handle)
{
  return 0;
}

/* Cache requests become reads, which keep the blocks uncompressed. */
static int
xz_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_EMULATE;
}

static void
xz_free_filters (lzma_filter *filters)
{
  size_t i;

  for (i = 0; filters[i].id != LZMA_VLI_UNKNOWN; ++i)
    free (filters[i].options);
}

/* Uncompresses the block ITER points at into OUT. */
static int
xz_decode_block (nbdkit_next *next, const lzma_index_iter *iter,
                 uint8_t *out, int *err)
{
  uint64_t total = iter->block.total_size;
  lzma_filter filters[LZMA_FILTERS_MAX + 1];
  lzma_block block = { .version = 0, .filters = filters,
                       .check = iter->stream.flags->check };
  size_t in_pos, out_pos = 0;
  uint8_t *in = malloc (total);
  int r = -1;

  if (in == NULL) {
    *err = errno;
    return -1;
  }
  if (next->pread (next, in, total, iter->block.compressed_file_offset, 0,
                   err) == -1)
    goto out_free;
  filters[0].id = LZMA_VLI_UNKNOWN;
  block.header_size = lzma_block_header_size_decode (in[0]);
  in_pos = block.header_size;
  if (block.header_size > total ||
      lzma_block_header_decode (&block, NULL, in) != LZMA_OK ||
      lzma_block_compressed_size (&block, iter->block.unpadded_size)
      != LZMA_OK ||
      lzma_block_buffer_decode (&block, NULL, in, &in_pos, total, out,
                                &out_pos, iter->block.uncompressed_size)
      != LZMA_OK) {
    nbdkit_error ("xz: the block at %" PRIu64 " of the compressed file "
                  "is corrupt", (uint64_t) iter->block.compressed_file_offset);
    *err = EIO;
  }
  else
    r = 0;
  xz_free_filters (filters);
 out_free:
  free (in);
  return r;
}

/* The uncompressed block holding OFFSET, from the connection's cache
 * or freshly uncompressed into it.  Caller holds H->lock.
 */
static struct xz_block *
xz_get_block (nbdkit_next *next, struct xz_handle *h, uint64_t offset,
              int *err)
{
  struct xz_block found;
  lzma_index_iter iter;
  unsigned i;

  for (i = 0; i < max_depth; ++i)
    if (h->blocks[i].data != NULL && h->blocks[i].start <= offset &&
        offset - h->blocks[i].start < h->blocks[i].size)
      break;
  if (i < max_depth)
    found = h->blocks[i];
  else {
    lzma_index_iter_init (&iter, xz_index);
    if (lzma_index_iter_locate (&iter, offset)) {
      *err = EIO;
      return NULL;
    }
    found.start = iter.block.uncompressed_file_offset;
    found.size = iter.block.uncompressed_size;
    found.data = malloc (found.size ? found.size : 1);
    if (found.data == NULL) {
      *err = errno;
      return NULL;
    }
    if (xz_decode_block (next, &iter, found.data, err) == -1) {
      free (found.data);
      return NULL;
    }
    i = max_depth - 1;          /* the least recently used goes */
    free (h->blocks[i].data);
  }
  memmove (&h->blocks[1], &h->blocks[0], i * sizeof (h->blocks[0]));
  h->blocks[0] = found;
  return &h->blocks[0];
}

static int
xz_pread (nbdkit_next *next, void *handle, void *buf,
          uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct xz_handle *h = handle;
  char *p = buf;
  int r = 0;

  pthread_mutex_lock (&h->lock);
  while (count > 0) {
    struct xz_block *b = xz_get_block (next, h, offset, err);
    uint64_t n;

    if (b == NULL) {
      r = -1;
      break;
    }
    n = MIN ((uint64_t) count, b->start + b->size - offset);
    memcpy (p, b->data + (offset - b->start), n);
    p += n;
    offset += n;
    count -= n;
  }
  pthread_mutex_unlock (&h->lock);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "xz",
  .longname = "nbdsrv XZ filter",
  .unload = xz_unload,
  .config = xz_config,
  .config_help = xz_config_help,
  .prepare = xz_prepare,
  .open = xz_open,
  .close = xz_close,
  .get_size = xz_get_size,
  .can_write = xz_can_write,
  .can_extents = xz_can_extents,
  .can_cache = xz_can_cache,
  .pread = xz_pread,
};

NBDKIT_REGISTER_FILTER (filter)

/* nbdsrv gzip filter: serves the uncompressed contents of a gzip file.
 *
 * gzip cannot seek, so the first connection uncompresses the whole
 * file below into a hidden temporary file, and every read after that
 * is served from there.  Read-only.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include <nbdkit-filter.h>

/* Compressed bytes read from below at a time, and uncompressed bytes
 * written to the file at a time.
 */
#define IN_CHUNK (1024 * 1024)
#define OUT_CHUNK (1024 * 1024)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int fd = -1;             /* the uncompressed data, owned */
static int64_t size = -1;       /* its size, once known */

static void
gzip_unload (void)
{
  if (fd >= 0)
    close (fd);
}

static int
gzip_open_tmp (void)
{
  const char *dir = getenv ("TMPDIR");
  char *path;
  int r;

  if (dir == NULL || *dir == '\0')
    dir = "/var/tmp";
  if (asprintf (&path, "%s/gzipXXXXXX", dir) == -1) {
    nbdkit_error ("gzip: asprintf: %m");
    return -1;
  }
  r = mkostemp (path, O_CLOEXEC);
  if (r == -1)
    nbdkit_error ("gzip: cannot create a temporary file in %s: %m: "
                  "set TMPDIR to a writable directory", dir);
  else
    unlink (path);
  free (path);
  return r;
}

static int
gzip_write_all (int out, const unsigned char *p, size_t n, uint64_t *pos)
{
  while (n > 0) {
    ssize_t r = pwrite (out, p, n, *pos);
    if (r == -1) {
      nbdkit_error ("gzip: writing the temporary file: %m: "
                    "is $TMPDIR full?");
      return -1;
    }
    p += r;
    n -= r;
    *pos += r;
  }
  return 0;
}

/* Inflates what is in STRM's input, writing it to OUT.  Returns the
 * zlib status (Z_OK, Z_STREAM_END, Z_BUF_ERROR when it needs more
 * input) or -1 after an error message.
 */
static int
gzip_inflate_some (z_stream *strm, unsigned char *obuf, int out,
                   uint64_t *pos)
{
  int r;

  do {
    strm->next_out = obuf;
    strm->avail_out = OUT_CHUNK;
    r = inflate (strm, Z_NO_FLUSH);
    if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR) {
      nbdkit_error ("gzip: inflate: %s",
                    strm->msg ? strm->msg : "corrupt data");
      return -1;
    }
    if (gzip_write_all (out, obuf, OUT_CHUNK - strm->avail_out, pos) == -1)
      return -1;
  } while (r == Z_OK && strm->avail_out == 0);
  return r;
}

/* Uncompresses the whole of the layer below into OUT; its size in
 * *OUT_SIZE.  Concatenated gzip members are one file, as gunzip says.
 */
static int
gzip_inflate_all (nbdkit_next *next, int out, uint64_t *out_size)
{
  int64_t in_size = next->get_size (next);
  unsigned char *ibuf = malloc (IN_CHUNK), *obuf = malloc (OUT_CHUNK);
  z_stream strm = { 0 };
  uint64_t in_pos = 0;
  int r = -1, zr = Z_OK, err;

  *out_size = 0;
  if (in_size == -1 || ibuf == NULL || obuf == NULL ||
      inflateInit2 (&strm, 16 + MAX_WBITS) != Z_OK) {
    nbdkit_error ("gzip: cannot start uncompressing: out of memory?");
    goto out_free;
  }
  while (in_pos < (uint64_t) in_size) {
    uint32_t n = in_size - in_pos < IN_CHUNK ? in_size - in_pos : IN_CHUNK;

    if (next->pread (next, ibuf, n, in_pos, 0, &err) == -1) {
      nbdkit_error ("gzip: reading the compressed file: %s",
                    strerror (err));
      goto out_end;
    }
    in_pos += n;
    strm.next_in = ibuf;
    strm.avail_in = n;
    while (strm.avail_in > 0) {
      if (zr == Z_STREAM_END)
        inflateReset (&strm);   /* another member follows */
      zr = gzip_inflate_some (&strm, obuf, out, out_size);
      if (zr == -1)
        goto out_end;
      if (zr != Z_STREAM_END)
        break;                  /* needs more input */
    }
  }
  if (zr != Z_STREAM_END) {
    nbdkit_error ("gzip: the compressed file is truncated: "
                  "check that it is complete (gzip -t)");
    goto out_end;
  }
  r = 0;
 out_end:
  inflateEnd (&strm);
 out_free:
  free (ibuf);
  free (obuf);
  return r;
}

/* The first connection uncompresses; later ones find it done. */
static int
gzip_prepare (nbdkit_next *next, void *handle, int readonly)
{
  uint64_t n;
  int r = 0;

  pthread_mutex_lock (&lock);
  if (size >= 0)
    goto out_unlock;
  if (fd == -1 && (fd = gzip_open_tmp ()) == -1) {
    r = -1;
    goto out_unlock;
  }
  if (ftruncate (fd, 0) == -1 || gzip_inflate_all (next, fd, &n) == -1) {
    r = -1;
    goto out_unlock;
  }
  nbdkit_debug ("gzip: uncompressed size %" PRIu64, n);
  size = n;
 out_unlock:
  pthread_mutex_unlock (&lock);
  return r;
}

static int64_t
gzip_get_size (nbdkit_next *next, void *handle)
{
  return size;
}

static int
gzip_can_write (nbdkit_next *next, void *handle)
{
  return 0;
}

/* The extents below are those of the compressed file. */
static int
gzip_can_extents (nbdkit_next *next, void *handle)
{
  return 0;
}

/* The data is already local: cache requests become reads of the
 * temporary file, which warm the page cache.
 */
static int
gzip_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_EMULATE;
}

static int
gzip_pread (nbdkit_next *next, void *handle, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (fd, p, count, offset);
    if (r <= 0) {
      *err = r == 0 ? EIO : errno;
      nbdkit_error ("gzip: reading the temporary file: %s",
                    r == 0 ? "unexpected end of file" : strerror (errno));
      return -1;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "gzip",
  .longname = "nbdsrv gzip filter",
  .unload = gzip_unload,
  .prepare = gzip_prepare,
  .get_size = gzip_get_size,
  .can_write = gzip_can_write,
  .can_extents = gzip_can_extents,
  .can_cache = gzip_can_cache,
  .pread = gzip_pread,
};

NBDKIT_REGISTER_FILTER (filter)

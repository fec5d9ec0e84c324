/* nbdsrv: sending replies (§5).  Each reply leaves whole under the
 * connection's write lock, so replies from parallel workers never
 * interleave.
 *
 * Replies to requests run inline by the worker that holds the read lock
 * (fast requests, see protocol.c) are batched in the connection's obuf
 * and leave in one write when that worker is about to block reading or
 * lets go of the read lock: the "before sleep" flush of an event loop.
 */
#include "config.h"

#include <endian.h>
#include <string.h>
#include <sys/uio.h>

#include "internal.h"
#include "connection.h"
#include "protocol.h"
#include "reply.h"

static int
send_locked (struct connection *conn, struct iovec *iov, int n)
{
  int r;

  pthread_mutex_lock (&conn->write_lock);
  r = conn_writev (conn, iov, n);
  pthread_mutex_unlock (&conn->write_lock);
  if (r == -1) {                                                  /* */
    if (atomic_load (&conn->status) > CONN_DEAD)
      debug ("sending reply: %m");
    conn_set_status (conn, CONN_DEAD);
  }
  return r;
}

/* Send the batched replies.  Caller holds read_lock (which owns obuf). */
int
reply_flush (struct connection *conn)
{
  struct iovec iov = { conn->obuf, conn->olen };
  int r;

  if (conn->olen == 0)
    return 0;
  r = send_locked (conn, &iov, 1);
  conn->olen = 0;
  return r;
}

/* Send now, or append to the batch when BATCH (caller holds read_lock).
 * A reply too large for the batch flushes it and goes out directly.
 */
static int
reply_send (struct connection *conn, bool batch, struct iovec *iov, int n)
{
  size_t len = 0;

  if (!batch)
    return send_locked (conn, iov, n);
  for (int i = 0; i < n; i++)
    len += iov[i].iov_len;
  if (len > CONN_OBUF_SIZE - conn->olen && reply_flush (conn) == -1)
    return -1;
  if (len > CONN_OBUF_SIZE)
    return send_locked (conn, iov, n);
  for (int i = 0; i < n; i++) {
    memcpy (conn->obuf + conn->olen, iov[i].iov_base, iov[i].iov_len);
    conn->olen += iov[i].iov_len;
  }
  return 0;
}

/* The header of one chunk into BUF, which has room for the larger,
 * extended one: structured, or extended with the request's offset
 * .  Returns its size.
 */
static size_t
chunk_header (const struct connection *conn, void *buf,
              const struct request *r, uint16_t flags, uint16_t type,
              uint64_t length)
{
  if (conn->extended) {
    struct nbd_extended_reply h = {
      .magic = htobe32 (NBD_EXTENDED_REPLY_MAGIC),
      .flags = htobe16 (flags),
      .type = htobe16 (type),
      .cookie = r->cookie,
      .offset = htobe64 (r->offset),
      .length = htobe64 (length),
    };

    memcpy (buf, &h, sizeof h);
    return sizeof h;
  }
  else {
    struct nbd_structured_reply h = {
      .magic = htobe32 (NBD_STRUCTURED_REPLY_MAGIC),
      .flags = htobe16 (flags),
      .type = htobe16 (type),
      .cookie = r->cookie,
      .length = htobe32 ((uint32_t) length),
    };

    memcpy (buf, &h, sizeof h);
    return sizeof h;
  }
}

/* Room for a chunk header and the fixed part of its payload. */
#define CHUNK_HEADER_MAX (sizeof (struct nbd_extended_reply) + 16)

int
reply_simple (struct connection *conn, bool batch, const struct request *r,
              uint32_t error)
{
  struct nbd_simple_reply h = {
    .magic = htobe32 (NBD_SIMPLE_REPLY_MAGIC),
    .error = htobe32 (error),
    .cookie = r->cookie,
  };
  struct iovec iov = { &h, sizeof h };

  return reply_send (conn, batch, &iov, 1);
}

/* Success without data: simple, or with extended headers (which have
 * no simple replies) a NONE chunk.
 */
int
reply_ok (struct connection *conn, bool batch, const struct request *r)
{
  char hdr[CHUNK_HEADER_MAX];
  struct iovec iov;

  if (!conn->extended)
    return reply_simple (conn, batch, r, 0);
  iov.iov_base = hdr;
  iov.iov_len = chunk_header (conn, hdr, r, NBD_REPLY_FLAG_DONE,
                              NBD_REPLY_TYPE_NONE, 0);
  return reply_send (conn, batch, &iov, 1);
}

_Static_assert (READ_HEADER_MAX >= CHUNK_HEADER_MAX,
                "READ_HEADER_MAX holds a chunk header and its offset");

/* What goes before the LEN bytes of a successful READ: a simple reply,
 * or the header of one OFFSET_DATA chunk and its offset.  BUF
 * has READ_HEADER_MAX bytes.  Returns the header's size.
 */
size_t
reply_read_header (const struct connection *conn, const struct request *r,
                   uint32_t len, void *buf)
{
  if (conn->structured) {
    uint64_t offset = htobe64 (r->offset);
    size_t n = chunk_header (conn, buf, r, NBD_REPLY_FLAG_DONE,
                             NBD_REPLY_TYPE_OFFSET_DATA, 8 + (uint64_t) len);

    memcpy ((char *) buf + n, &offset, 8);
    return n + 8;
  }
  else {
    struct nbd_simple_reply h = {
      .magic = htobe32 (NBD_SIMPLE_REPLY_MAGIC),
      .error = 0,
      .cookie = r->cookie,
    };

    memcpy (buf, &h, sizeof h);
    return sizeof h;
  }
}

/* A successful READ: simple, or one OFFSET_DATA chunk. */
int
reply_read (struct connection *conn, bool batch, const struct request *r,
            const void *data, uint32_t len)
{
  char hdr[READ_HEADER_MAX];
  struct iovec iov[2] = { { hdr, 0 }, { (void *) data, len } };

  iov[0].iov_len = reply_read_header (conn, r, len, hdr);
  return reply_send (conn, batch, iov, 2);
}

/* A successful READ as read_plan cut it: an OFFSET_DATA
 * chunk for each data piece, from BUF (which holds the request's whole
 * range), and an OFFSET_HOLE chunk for each hole, DONE on the last.
 * One write, so the chunks of the reply stay together.
 */
int
reply_read_pieces (struct connection *conn, bool batch,
                   const struct request *r, const char *buf,
                   const struct read_piece *p, size_t n)
{
  char hdr[READ_PIECES_MAX][CHUNK_HEADER_MAX];
  struct iovec iov[2 * READ_PIECES_MAX];
  int k = 0;

  for (size_t i = 0; i < n && i < READ_PIECES_MAX; i++) {
    uint16_t flags = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;
    uint64_t offset = htobe64 (p[i].offset);
    size_t h;

    if (p[i].hole) {
      uint32_t len = htobe32 (p[i].length);

      h = chunk_header (conn, hdr[i], r, flags, NBD_REPLY_TYPE_OFFSET_HOLE,
                        12);
      memcpy (hdr[i] + h, &offset, 8);
      memcpy (hdr[i] + h + 8, &len, 4);
      iov[k++] = (struct iovec) { hdr[i], h + 12 };
    }
    else {
      h = chunk_header (conn, hdr[i], r, flags, NBD_REPLY_TYPE_OFFSET_DATA,
                        8 + (uint64_t) p[i].length);
      memcpy (hdr[i] + h, &offset, 8);
      iov[k++] = (struct iovec) { hdr[i], h + 8 };
      iov[k++] = (struct iovec) {
        (void *) (buf + (p[i].offset - r->offset)), p[i].length
      };
    }
  }
  return reply_send (conn, batch, iov, k);
}

/* R-17 beyond: the ERROR chunk carries MSG (truncated to 4096 bytes at
 * a UTF-8 character boundary).
 */
int
reply_error (struct connection *conn, bool batch, const struct request *r,
             uint32_t error, const char *msg, size_t msglen)
{
  char hdr[CHUNK_HEADER_MAX];
  struct {
    uint32_t error;
    uint16_t msglen;
  } __attribute__ ((__packed__)) fixed;
  struct iovec iov[2];
  size_t n;

  if (msglen > NBD_MAX_STRING) {
    msglen = NBD_MAX_STRING;
    while (msglen > 0 && ((unsigned char) msg[msglen] & 0xc0) == 0x80)
      msglen--;
  }
  n = chunk_header (conn, hdr, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                    sizeof fixed + msglen);
  fixed.error = htobe32 (error);
  fixed.msglen = htobe16 (msglen);
  memcpy (hdr + n, &fixed, sizeof fixed);
  iov[0] = (struct iovec) { hdr, n + sizeof fixed };
  iov[1] = (struct iovec) { (void *) msg, msglen };
  return reply_send (conn, batch, iov, msglen ? 2 : 1);
}

/* Block status: a chunk per context, each with the descriptors
 * blockstatus_encode made at its offset in DESC, 32-bit, or 64-bit with
 * extended headers (BLOCK_STATUS_EXT, X-14); DONE on the last.
 */
int
reply_block_status (struct connection *conn, bool batch,
                    const struct request *r, const char *desc,
                    const struct bs_chunk *chunks, size_t k)
{
  char hdr[META_MAX][CHUNK_HEADER_MAX];
  struct iovec iov[2 * META_MAX];
  size_t size = conn->extended ? sizeof (struct nbd_block_descriptor_ext)
    : sizeof (struct nbd_block_descriptor);
  size_t fixed_len = conn->extended ? 8 : 4;
  int n = 0;

  for (size_t i = 0; i < k && i < META_MAX; i++) {
    uint32_t fixed[2] = {
      htobe32 (chunks[i].context_id), htobe32 (chunks[i].n)
    };
    size_t h = chunk_header (conn, hdr[i], r,
                             i == k - 1 ? NBD_REPLY_FLAG_DONE : 0,
                             conn->extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                             : NBD_REPLY_TYPE_BLOCK_STATUS,
                             fixed_len + chunks[i].n * size);

    memcpy (hdr[i] + h, fixed, fixed_len);
    iov[n++] = (struct iovec) { hdr[i], h + fixed_len };
    iov[n++] = (struct iovec) {
      (void *) (desc + chunks[i].desc_offset), chunks[i].n * size
    };
  }
  return reply_send (conn, batch, iov, n);
}

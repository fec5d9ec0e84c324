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

static void
structured_header (struct nbd_structured_reply *h, uint64_t cookie,
                   uint16_t type, uint32_t length)
{
  h->magic = htobe32 (NBD_STRUCTURED_REPLY_MAGIC);
  h->flags = htobe16 (NBD_REPLY_FLAG_DONE);
  h->type = htobe16 (type);
  h->cookie = cookie;
  h->length = htobe32 (length);
}

int
reply_simple (struct connection *conn, bool batch, uint64_t cookie,
              uint32_t error)
{
  struct nbd_simple_reply h = {
    .magic = htobe32 (NBD_SIMPLE_REPLY_MAGIC),
    .error = htobe32 (error),
    .cookie = cookie,
  };
  struct iovec iov = { &h, sizeof h };

  return reply_send (conn, batch, &iov, 1);
}

/* A successful READ's header: simple, or an OFFSET_DATA chunk
 * when structured replies are on.
 */
struct read_chunk_header {
  struct nbd_structured_reply h;
  uint64_t offset;
} __attribute__ ((__packed__));

/* Build the header into BUF; returns its size. */
static size_t
read_header_build (const struct connection *conn, void *buf,
                   uint64_t cookie, uint64_t offset, uint32_t len)
{
  if (conn->structured) {
    struct read_chunk_header h;

    structured_header (&h.h, cookie, NBD_REPLY_TYPE_OFFSET_DATA, 8 + len);
    h.offset = htobe64 (offset);
    memcpy (buf, &h, sizeof h);
    return sizeof h;
  }
  else {
    struct nbd_simple_reply h = {
      .magic = htobe32 (NBD_SIMPLE_REPLY_MAGIC),
      .error = 0,
      .cookie = cookie,
    };

    memcpy (buf, &h, sizeof h);
    return sizeof h;
  }
}

int
reply_read (struct connection *conn, bool batch, uint64_t cookie,
            uint64_t offset, const void *data, uint32_t len)
{
  char hdr[sizeof (struct read_chunk_header)];
  struct iovec iov[2] = {
    { hdr, read_header_build (conn, hdr, cookie, offset, len) },
    { (void *) data, len },
  };

  return reply_send (conn, batch, iov, 2);
}

/* R-17 beyond: the ERROR chunk carries MSG (truncated to 4096 bytes at
 * a UTF-8 character boundary).
 */
int
reply_error (struct connection *conn, bool batch, uint64_t cookie,
             uint32_t error, const char *msg, size_t msglen)
{
  struct {
    struct nbd_structured_reply h;
    uint32_t error;
    uint16_t msglen;
  } __attribute__ ((__packed__)) hdr;
  struct iovec iov[2];

  if (msglen > NBD_MAX_STRING) {
    msglen = NBD_MAX_STRING;
    while (msglen > 0 && ((unsigned char) msg[msglen] & 0xc0) == 0x80)
      msglen--;
  }
  structured_header (&hdr.h, cookie, NBD_REPLY_TYPE_ERROR, 6 + msglen);
  hdr.error = htobe32 (error);
  hdr.msglen = htobe16 (msglen);
  iov[0] = (struct iovec) { &hdr, sizeof hdr };
  iov[1] = (struct iovec) { (void *) msg, msglen };
  return reply_send (conn, batch, iov, msglen ? 2 : 1);
}

int
reply_block_status (struct connection *conn, bool batch, uint64_t cookie,
                    const struct nbd_block_descriptor *desc, size_t n)
{
  struct {
    struct nbd_structured_reply h;
    uint32_t context_id;
  } __attribute__ ((__packed__)) hdr;
  struct iovec iov[2] = {
    { &hdr, sizeof hdr }, { (void *) desc, n * sizeof *desc },
  };

  structured_header (&hdr.h, cookie, NBD_REPLY_TYPE_BLOCK_STATUS,
                     4 + n * sizeof *desc);                      /* */
  hdr.context_id = htobe32 (1);
  return reply_send (conn, batch, iov, 2);
}

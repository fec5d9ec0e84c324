/* nbdsrv: reply senders (reply.c).  R is the request answered: its
 * cookie (opaque, as received) and offset.  With BATCH the reply joins
 * the connection's batch (the caller holds read_lock); reply_flush
 * sends the batch.  Each returns 0, or -1 after marking the connection
 * dead.
 */
#ifndef NBDSRV_REPLY_H
#define NBDSRV_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct connection;
struct request;
struct read_piece;

/* Room for the header of a READ reply (reply_read_header). */
#define READ_HEADER_MAX 48

/* Most pieces one READ reply is cut into (reply_read_pieces). */
#define READ_PIECES_MAX 32

int reply_simple (struct connection *conn, bool batch,
                  const struct request *r, uint32_t error);
int reply_ok (struct connection *conn, bool batch, const struct request *r);
int reply_read (struct connection *conn, bool batch,
                const struct request *r, const void *data, uint32_t len);
size_t reply_read_header (const struct connection *conn,
                          const struct request *r, uint32_t len, void *buf);
int reply_read_pieces (struct connection *conn, bool batch,
                       const struct request *r, const char *buf,
                       const struct read_piece *p, size_t n);
int reply_error (struct connection *conn, bool batch,
                 const struct request *r, uint32_t error,
                 const char *msg, size_t msglen);
/* One context's block status chunk: N descriptors at DESC_OFFSET. */
struct bs_chunk {
  uint32_t context_id;
  size_t desc_offset;
  size_t n;
};
int reply_block_status (struct connection *conn, bool batch,
                        const struct request *r, const char *desc,
                        const struct bs_chunk *chunks, size_t k);
int reply_flush (struct connection *conn);

/* reply-splice.c: a successful READ whose LEN bytes are spliced from FD
 * at FD_OFFSET (read-source.h).  Returns 0 when sent, 1 when nothing
 * was sent and the caller should pread and reply as usual, -1 after
 * marking the connection dead.
 */
int reply_read_splice (struct connection *conn, bool batch,
                       const struct request *r, uint32_t len, int fd,
                       uint64_t fd_offset);

#endif /* NBDSRV_REPLY_H */

/* nbdsrv: reply senders (reply.c).  COOKIE is as received (opaque).
 * With BATCH the reply joins the connection's batch (the caller holds
 * read_lock); reply_flush sends the batch.  Each returns 0, or -1 after
 * marking the connection dead.
 */
#ifndef NBDSRV_REPLY_H
#define NBDSRV_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct connection;
struct nbd_block_descriptor;

int reply_simple (struct connection *conn, bool batch, uint64_t cookie,
                  uint32_t error);
int reply_read (struct connection *conn, bool batch, uint64_t cookie,
                uint64_t offset, const void *data, uint32_t len);
int reply_error (struct connection *conn, bool batch, uint64_t cookie,
                 uint32_t error, const char *msg, size_t msglen);
int reply_block_status (struct connection *conn, bool batch,
                        uint64_t cookie,
                        const struct nbd_block_descriptor *desc, size_t n);
int reply_flush (struct connection *conn);

#endif /* NBDSRV_REPLY_H */

/* nbdsrv: the server's wait set (park.c): listening sockets, the quit
 * pipe, parked connections and one timer, in one epoll set that the
 * acceptor threads wait on; and the cache of connection I/O buffers.
 */
#ifndef NBDSRV_PARK_H
#define NBDSRV_PARK_H

#include <stdbool.h>
#include <stdint.h>

/* What park_wait found ready. */
enum park_ready {
  PARK_QUIT,                    /* the server is quitting */
  PARK_TIMEOUT,                 /* nothing within the timeout */
  PARK_LISTENER,                /* *listener has a client to accept */
  PARK_CONN,                    /* *conn, parked, has input or hung up */
  PARK_TIMER,                   /* the time park_timer_set gave came */
};

struct connection;

bool park_on (void);           /* park_init succeeded */
int park_init (void);
int park_add_listener (int *fd);
enum park_ready park_wait (int timeout_ms, int **listener,
                           struct connection **conn);
int park_arm (int fd, bool added, struct connection *conn);
void park_timer_set (int64_t deadline_ms);
void park_drain_begin (void);

/* One connection's receive and batch buffers, CONN_RBUF_SIZE +
 * CONN_OBUF_SIZE bytes in one block.  NULL with errno ENOMEM.
 */
char *park_buffers_get (void);
void park_buffers_put (char *block);
void park_buffers_trim (void);

#endif /* NBDSRV_PARK_H */

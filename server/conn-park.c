/* nbdsrv: parking connections, so that an idle client holds no thread
 * and no I/O buffers (issue 11).
 *
 * A connection parks in two places: after its handshake's greeting,
 * while the client has not answered (conn_park_greeted), and when no
 * request arrives within PARK_GRACE_MS of the last answer (conn_idle,
 * from the request loop).  Its socket then waits in park.c's epoll set
 * for one wake-up, and the acceptor thread that receives it continues
 * the connection (conn_resume).  A parked connection is touched only by
 * that thread, so nothing else frees it; the greeted ones also sit in a
 * list, oldest first, that the --timeout sweep may cut.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "internal.h"
#include "connection.h"
#include "park.h"

/* Give a connection coming out of parking its buffers back; without
 * them it can only close.
 */
static void
conn_buffers_restore (struct connection *conn)
{
  conn->rbuf = park_buffers_get ();
  if (conn->rbuf == NULL) {
    server_error ("cannot wake an idle connection: out of memory: "
                  "disconnecting the client");
    conn_set_status (conn, CONN_DEAD);
    return;
  }
  conn->obuf = conn->rbuf + CONN_RBUF_SIZE;
}

/* After the handshake: may CONN park when idle?  Not with -s (the
 * server's only client, maybe on pipes) nor when connections are
 * serialized (the connection holds connection_lock until it closes).
 * In plain text the grace period is the socket's receive timeout, so a
 * busy connection makes no more system calls than before; over TLS
 * (where a record may already be buffered) it is a poll.
 */
void
conn_park_setup (struct connection *conn)
{
  struct timeval tv = { .tv_usec = PARK_GRACE_MS * 1000 };

  if (!park_on () || !conn->is_socket || cfg.single)
    return;
  if (conn->tls == NULL &&
      setsockopt (conn->fd_in, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv)
      == -1)
    return;
  conn->can_park = true;
  conn->park_now = true;
}

/* Parked connections, so that shutdown knows to collect them. */
static atomic_uint nparked;

unsigned
conns_parked (void)
{
  return atomic_load (&nparked);
}

/* Called by the worker holding read_lock when no request arrived
 * within the grace period (nothing buffered, the batch sent).  With
 * another worker queued to read after it, this one leaves; with other
 * requests still running and nobody queued, it keeps reading (a
 * request the client sends meanwhile must not wait for them); the last
 * worker parks the connection.  Returns false when this worker has
 * left the connection (read_lock released), true when it should go on
 * reading it.
 */
bool
conn_idle (struct connection *conn)
{
  int fd = conn->fd_in;
  bool added = conn->park_added;
  bool alone, leave;

  pthread_mutex_lock (&conn->workers_lock);
  alone = conn->nworkers == 1;
  leave = alone || atomic_load (&conn->readers_waiting) > 0;
  if (leave)
    conn->nworkers--;
  pthread_mutex_unlock (&conn->workers_lock);
  if (!leave)
    return true;
  if (!alone) {
    pthread_mutex_unlock (&conn->read_lock);
    return false;
  }
  park_buffers_put (conn->rbuf);
  conn->rbuf = conn->obuf = NULL;
  conn->rpos = conn->rlen = 0;
  conn->park_added = true;
  conn->park_now = false;
  atomic_fetch_add (&nparked, 1);
  pthread_mutex_unlock (&conn->read_lock);
  if (park_arm (fd, added, conn) == 0)
    return false;               /* CONN may be another thread's now */
  /* Still ours: serve it with this thread, as before parking existed. */
  atomic_fetch_sub (&nparked, 1);
  pthread_mutex_lock (&conn->read_lock);
  conn->park_added = added;
  conn->can_park = false;
  conn->nworkers = 1;
  conn_buffers_restore (conn);
  return true;
}

/* Greeted connections parked until the client answers, oldest first,
 * so that their --timeout deadlines come in order; the timer (park.c)
 * is set for the first.  A connection is taken off the list by the
 * thread that wakes it, or by the sweep when its time is up, whichever
 * comes first, under greeted_lock.
 */
static pthread_mutex_t greeted_lock = PTHREAD_MUTEX_INITIALIZER;
static struct connection *greeted_head;
static struct connection **greeted_tailp = &greeted_head;

static void
greeted_unlink (struct connection *conn)
{
  *conn->hs_prevp = conn->hs_next;
  if (conn->hs_next)
    conn->hs_next->hs_prevp = conn->hs_prevp;
  else
    greeted_tailp = conn->hs_prevp;
  conn->hs_listed = false;
}

/* The timer fired: cut the greeted connections whose time is up.
 * Shutting the socket down wakes the connection, whose handshake then
 * finds its deadline passed and says so, as a waiting one would.
 */
void
conns_sweep_greeted (void)
{
  int64_t now = conn_now_ms ();

  pthread_mutex_lock (&greeted_lock);
  while (greeted_head && greeted_head->deadline_ms <= now) {
    struct connection *conn = greeted_head;

    greeted_unlink (conn);
    shutdown (conn->fd_in, SHUT_RDWR);
  }
  if (greeted_head)
    park_timer_set (greeted_head->deadline_ms);
  pthread_mutex_unlock (&greeted_lock);
}

/* How long the accepting thread waits for the client's answer to the
 * greeting before parking.  Real clients (libnbd, qemu) answer within a
 * round trip, tens of microseconds, and must not pay a hand-off to
 * another thread on every connect: with 1 ms nbdsrv's connect + read +
 * disconnect costs the CPU it did before parking (84 against 86 us per
 * connection, three runs each), where parking at once cost about 20 us
 * more.  A client that stays silent holds the thread for 1 ms only: a
 * new client is still answered in about 10 ms behind 1,000 of them.
 */
#define GREETED_GRACE_MS 1

/* After the greeting, when the client has not answered yet: park the
 * connection until it does, so that a client that connects and says
 * nothing holds no thread (only --timeout ends it).  Returns true when
 * parked (CONN may be another thread's now), false to go on here.
 */
bool
conn_park_greeted (struct connection *conn)
{
  int fd = conn->fd_in;
  struct pollfd pfd = { .fd = fd, .events = POLLIN };

  if (!park_on () || !conn->is_socket || cfg.single || conn->tls ||
      conn->rpos != conn->rlen || poll (&pfd, 1, GREETED_GRACE_MS) != 0)
    return false;
  conn->greeted = true;
  park_buffers_put (conn->rbuf);
  conn->rbuf = conn->obuf = NULL;
  conn->park_added = true;
  conn->nworkers = 0;
  atomic_fetch_add (&nparked, 1);
  if (conn->deadline_ms) {
    pthread_mutex_lock (&greeted_lock);
    conn->hs_next = NULL;
    conn->hs_prevp = greeted_tailp;
    *greeted_tailp = conn;
    greeted_tailp = &conn->hs_next;
    conn->hs_listed = true;
    if (greeted_head == conn)
      park_timer_set (conn->deadline_ms);
    pthread_mutex_unlock (&greeted_lock);
  }
  if (park_arm (fd, false, conn) == 0)
    return true;
  pthread_mutex_lock (&greeted_lock);
  if (conn->hs_listed)
    greeted_unlink (conn);
  pthread_mutex_unlock (&greeted_lock);
  atomic_fetch_sub (&nparked, 1);
  conn->greeted = false;
  conn->park_added = false;
  conn->nworkers = 1;
  conn_buffers_restore (conn);
  return false;
}

/* A parked connection's socket became readable or hung up: serve it on
 * this thread (the rest of its handshake first, if it parked greeted)
 * until it parks again or closes.
 */
void
conn_resume (struct connection *conn)
{
  atomic_fetch_sub (&nparked, 1);
  conn->nworkers = 1;
  conn_buffers_restore (conn);
  if (!conn->greeted) {
    conn_worker_run (conn);
    return;
  }
  conn->greeted = false;
  pthread_mutex_lock (&greeted_lock);
  if (conn->hs_listed)
    greeted_unlink (conn);
  pthread_mutex_unlock (&greeted_lock);
  thread_state ()->conn = conn;
  conn_negotiate (conn, 0, false);
}

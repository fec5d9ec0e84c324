/* nbdsrv: a client connection's life: worker threads, socket I/O,
 * parking, shutdown.
 *
 * The thread that accepted the connection does the handshake and then
 * becomes the first worker.  More workers start only when a request
 * arrives while no worker is waiting to read the next one, so a client
 * that asks one thing and leaves costs one thread, and a client with 32
 * requests in flight gets up to -t workers.  When no request arrives
 * within PARK_GRACE_MS the workers leave one by one and the last parks
 * the connection (park.c): an idle client holds no thread and no I/O
 * buffers.  The last worker to leave a closing connection frees it.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

#include "internal.h"
#include "connection.h"
#include "minmax.h"
#include "monotonic.h"
#include "reply.h"
#include "tls.h"
#include "metrics.h"
#include "park.h"
#include "slab.h"

/* Live connections, for shutdown and for waiting at exit. */
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t conns_cond = PTHREAD_COND_INITIALIZER;
static struct connection *conns;
static unsigned nconns;
static unsigned conns_served;        /* ids handed out so far */

/* The average backend call time (as call_ns) of the last connection
 * that made calls.  A new connection starts from it, so once the
 * plugin has shown itself fast a client that asks one thing and leaves
 * gets its answer inline, without a second thread.  The first
 * connection assumes slow: a plugin whose first call hangs must not
 * hold up the requests behind it.
 */
static atomic_uint recent_call_ns = INLINE_MAX_NS;

/* The connections themselves (slab.c says why not malloc). */
static struct slab_pool conn_pool = SLAB_POOL_INIT (sizeof (struct connection));

/* Connections freed since the heap was last trimmed (conns_trim). */
static atomic_uint freed_since_trim;
#define TRIM_MIN 256

/* SERIALIZE_CONNECTIONS: one connection at a time in the process. */
static pthread_mutex_t connection_lock = PTHREAD_MUTEX_INITIALIZER;

int64_t
conn_now_ms (void)
{
  return monotonic_ns () / 1000000;
}

struct connection *
conn_new (int fd_in, int fd_out, const struct sockaddr_storage *peer,
          socklen_t peer_len)
{
  struct connection *conn = slab_alloc (&conn_pool);

  if (conn == NULL || (conn->rbuf = park_buffers_get ()) == NULL) {
    server_error ("cannot accept a connection: out of memory");
    slab_free (&conn_pool, conn);
    return NULL;
  }
  conn->obuf = conn->rbuf + CONN_RBUF_SIZE;
  conn->fd_in = fd_in;
  conn->fd_out = fd_out;
  if (peer) {
    conn->peer_len = MIN (peer_len, (socklen_t) sizeof conn->peer);
    memcpy (&conn->peer, peer, conn->peer_len);
    conn->is_socket = true;
  }
  else {
    conn->peer_len = sizeof conn->peer;
    conn->is_socket =
      getpeername (fd_in, (struct sockaddr *) &conn->peer,
                   &conn->peer_len) == 0 || errno != ENOTSOCK;
    if (!conn->is_socket)
      conn->peer_len = 0;
  }
  atomic_init (&conn->status, CONN_ACTIVE);
  atomic_init (&conn->readers_waiting, 0);
  conn->call_ns_start = atomic_load (&recent_call_ns);
  atomic_init (&conn->call_ns, conn->call_ns_start);
  pthread_mutex_init (&conn->read_lock, NULL);
  pthread_mutex_init (&conn->write_lock, NULL);
  pthread_mutex_init (&conn->workers_lock, NULL);
  pthread_mutex_init (&conn->big_lock, NULL);
  pthread_cond_init (&conn->big_cond, NULL);
  conn->max_workers =
    stack.thread_model == NBDKIT_THREAD_MODEL_PARALLEL ? cfg.threads : 1;
  if (cfg.handshake_timeout)
    conn->deadline_ms = conn_now_ms () + cfg.handshake_timeout * INT64_C (1000);

  pthread_mutex_lock (&conns_lock);
  if (cfg.max_connections && nconns >= cfg.max_connections) {
    pthread_mutex_unlock (&conns_lock);
    server_error ("%u clients are connected, the --max-connections "
                  "limit: refusing another", nconns);
    metrics_connection_refused ();
    park_buffers_put (conn->rbuf);
    slab_free (&conn_pool, conn);
    return NULL;
  }
  conn->id = ++conns_served;
  conn->next = conns;
  conn->prevp = &conns;
  if (conns)
    conns->prevp = &conn->next;
  conns = conn;
  nconns++;
  pthread_mutex_unlock (&conns_lock);
  conn->hs_fail = -1;
  metrics_connection_open ();
  return conn;
}

static void
conn_free (struct connection *conn)
{
  unsigned call_ns = atomic_load (&conn->call_ns);

  if (call_ns != conn->call_ns_start)  /* it made calls */
    atomic_store (&recent_call_ns, call_ns);
  thread_state ()->conn = conn;
  if (conn->exp.top)
    backend_close (&conn->exp);
  thread_state ()->conn = NULL;
  intern_set_free (&conn->interned);
  tls_session_free (conn->tls, atomic_load (&conn->status) > CONN_DEAD);
  if (conn->is_socket) {
    close (conn->fd_in);
  }
  else {
    /* -s: closing stdout tells the client we are gone. */
    close (conn->fd_in);
    close (conn->fd_out);
  }
  free (conn->meta_export);
  park_buffers_put (conn->rbuf);
  pthread_mutex_destroy (&conn->read_lock);
  pthread_mutex_destroy (&conn->write_lock);
  pthread_mutex_destroy (&conn->workers_lock);
  pthread_mutex_destroy (&conn->big_lock);
  pthread_cond_destroy (&conn->big_cond);

  pthread_mutex_lock (&conns_lock);
  *conn->prevp = conn->next;
  if (conn->next)
    conn->next->prevp = conn->prevp;
  nconns--;
  pthread_cond_broadcast (&conns_cond);
  pthread_mutex_unlock (&conns_lock);
  metrics_connection_close ();
  atomic_fetch_add (&freed_since_trim, 1);
  slab_free (&conn_pool, conn);
  if (cfg.single)               /* -s: the server's one client is gone */
    quit_set ();
}

/* Enough connections were freed for a trim to be worth it. */
bool
conns_trim_due (void)
{
  return atomic_load (&freed_since_trim) >= TRIM_MIN;
}

/* After a burst (an acceptor thread found nothing to do for a while):
 * if many connections were freed, give what they leave behind back to
 * the system.  The connections, their contexts and buffers went back
 * as they were freed (slab.c, park.c) but for the spares kept for the
 * next client; a plugin's or filter's own small allocations stay in
 * the malloc arenas, whose free pages only malloc_trim gives back, by
 * walking every arena, so only after TRIM_MIN.
 */
void
conns_trim (void)
{
  if (conns_trim_due ()) {
    atomic_store (&freed_since_trim, 0);
    slab_trim (&conn_pool);
    ctx_pool_trim ();
    park_buffers_trim ();
    malloc_trim (0);
  }
}

void
conn_set_status (struct connection *conn, enum conn_status s)
{
  int old = atomic_load (&conn->status);

  /* Status only ever goes down. */
  while ((int) s < old &&
         !atomic_compare_exchange_weak (&conn->status, &old, (int) s))
    ;
}

/* One worker: run the request loop; the last one out frees, unless it
 * left an idle connection (conn_idle counted it out).
 */
void
conn_worker_run (struct connection *conn)
{
  bool last, left;

  thread_state ()->conn = conn;
  left = protocol_worker (conn);
  thread_state ()->conn = NULL;
  if (left)
    return;
  pthread_mutex_lock (&conn->workers_lock);
  last = --conn->nworkers == 0;
  pthread_mutex_unlock (&conn->workers_lock);
  if (last)
    conn_free (conn);
}

static void *
worker_thread (void *arg)
{
  conn_worker_run (arg);
  return NULL;
}

/* Called by a worker that holds read_lock and has just taken a request:
 * if nobody is queued to read the next one, start another worker.
 */
void
conn_maybe_add_worker (struct connection *conn)
{
  /* Cheap checks first: this runs for every request. */
  if (atomic_load (&conn->readers_waiting) > 0 ||
      atomic_load (&conn->nworkers) >= conn->max_workers)
    return;
  pthread_mutex_lock (&conn->workers_lock);
  if (conn->nworkers < conn->max_workers &&
      thread_start_detached (worker_thread, conn) == 0)
    conn->nworkers++;
  pthread_mutex_unlock (&conn->workers_lock);
}

static void *
conn_thread (void *arg)
{
  conn_serve (arg);
  return NULL;
}

int
conn_spawn (struct connection *conn)
{
  int r = thread_start_detached (conn_thread, conn);

  if (r != 0) {
    errno = r;
    server_error ("cannot start a thread for a new client: %m");
    conn_set_status (conn, CONN_DEAD);
    conn_serve (conn);          /* runs nothing, frees the connection */
    return -1;
  }
  return 0;
}

/* The handshake from STAGE on (handshake_start's result: 0 the
 * client's turn, 1 done, -1 failed; -2 nothing to do), then the
 * requests.
 */
void
conn_negotiate (struct connection *conn, int stage, bool serialize)
{
  if (stage == 0)
    stage = handshake (conn) == -1 ? -1 : 1;
  if (stage == -1) {
    /* A reason the handshake gave, else how the last read ended. */
    int why = conn->hs_fail;

    if (why == -1)
      why = errno == ETIMEDOUT ? MH_TIMEOUT : errno == 0 ? MH_EOF
        : MH_OTHER;
    conn_set_status (conn, CONN_DEAD);
    metrics_handshake_failed (why);
  }
  else if (stage == 1) {
    if (metrics_on)
      conn->metrics_export = metrics_export_slot (conn->exp.name);
    if (!serialize)
      conn_park_setup (conn);
  }
  conn->deadline_ms = 0;
  if (serialize) {
    /* With one connection at a time there is one worker: this one. */
    conn_worker_run (conn);
    pthread_mutex_unlock (&connection_lock);
  }
  else
    conn_worker_run (conn);
}

void
conn_serve (struct connection *conn)
{
  bool serialize =
    stack.thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS;
  int stage = -2;

  if (serialize)
    pthread_mutex_lock (&connection_lock);
  thread_state ()->conn = conn;
  conn->nworkers = 1;
  if (atomic_load (&conn->status) == CONN_DEAD)
    ;
  else if (stack_preconnect (cfg.readonly) == -1) {
    conn_set_status (conn, CONN_DEAD);
    metrics_handshake_failed (MH_PRECONNECT);
  }
  else
    stage = handshake_start (conn);
  if (stage == 0 && !serialize && conn_park_greeted (conn)) {
    thread_state ()->conn = NULL;
    return;
  }
  conn_negotiate (conn, stage, serialize);
}

/* Wait for input during the handshake, honouring --timeout; and for -s
 * on pipes, where shutdown() cannot interrupt a read, wake on quit.
 */
static int
wait_readable (struct connection *conn)
{
  struct pollfd fds[2] = {
    { .fd = conn->fd_in, .events = POLLIN },
    { .fd = quit_fd, .events = POLLIN },
  };
  int timeout = -1;
  int r;

  if (conn->deadline_ms) {
    int64_t left = conn->deadline_ms - conn_now_ms ();

    if (left <= 0)
      goto timed_out;
    timeout = left > INT32_MAX ? INT32_MAX : (int) left;
  }
  do
    r = poll (fds, conn->is_socket ? 1 : 2, timeout);
  while (r == -1 && errno == EINTR);
  if (r == 0)
    goto timed_out;
  if (r > 0 && fds[0].revents == 0) {   /* quit */
    errno = ESHUTDOWN;
    return -1;
  }
  return r == -1 ? -1 : 0;

 timed_out:
  server_error ("client did not finish the handshake within %u seconds: "
                "disconnecting (see --timeout)", cfg.handshake_timeout);
  errno = ETIMEDOUT;
  return -1;
}

/* Read from the client into IOV.  Returns bytes read, 0 at EOF, -1 on
 * error.  Batched replies leave first: the read may block, and the
 * client may be waiting for them before it sends more.
 */
static ssize_t
conn_fill_tls (struct connection *conn, const struct iovec *iov, int iovcnt)
{
  ssize_t r;

  /* One TLS read brings what has arrived, not more: while requests are
   * already here the batched replies wait, and leave once the next read
   * would block, as a plain readv takes all the pipelined requests at
   * once.
   */
  if (conn->olen) {
    r = tls_readv (conn->tls, iov, iovcnt, true);
    if (r != -1 || errno != EAGAIN)
      return r;
    if (reply_flush (conn) == -1)
      return -1;
  }
  if ((conn->deadline_ms || !conn->is_socket) &&
      !tls_pending (conn->tls) && wait_readable (conn) == -1)
    return -1;
  return tls_readv (conn->tls, iov, iovcnt, false);
}

static ssize_t
conn_fill_iov (struct connection *conn, const struct iovec *iov, int iovcnt)
{
  ssize_t r;

  if (conn->tls)
    return conn_fill_tls (conn, iov, iovcnt);
  if (conn->olen && reply_flush (conn) == -1)
    return -1;
  if ((conn->deadline_ms || !conn->is_socket) && wait_readable (conn) == -1)
    return -1;
  for (;;) {
    r = readv (conn->fd_in, iov, MIN (iovcnt, IOV_MAX));
    if (r >= 0 || (errno != EINTR && errno != EAGAIN))
      return r;
    /* EAGAIN: the grace period (SO_RCVTIMEO) passed in the middle of a
     * request: wait for the rest as long as it takes.
     */
    if (errno == EAGAIN)
      poll (&(struct pollfd) { .fd = conn->fd_in, .events = POLLIN }, 1, -1);
  }
}

static ssize_t
conn_fill (struct connection *conn, void *dst, size_t n)
{
  struct iovec iov = { .iov_base = dst, .iov_len = n };

  return conn_fill_iov (conn, &iov, 1);
}

/* recvmsg without blocking until bytes arrive or END_NS passes,
 * yielding between tries (on a busy machine others run first).  Returns
 * what recvmsg returns: -1 with errno EAGAIN once END_NS has passed.
 */
static ssize_t
conn_recv_polling (int fd, struct msghdr *msg, int64_t end_ns)
{
  ssize_t r;

  for (;;) {
    r = recvmsg (fd, msg, MSG_DONTWAIT);
    if (r >= 0 || (errno != EAGAIN && errno != EINTR))
      return r;
    if (monotonic_ns () >= end_ns) {
      errno = EAGAIN;
      return -1;
    }
    sched_yield ();
  }
}

/* A client that sends its next request within SPIN_ON_NS of the last
 * reply (one request at a time, QD1) is polled for up to SPIN_NS before
 * the thread blocks: on a VM a vCPU that goes idle takes tens of us to
 * wake, more than the client needs to answer.  One poll that runs out
 * turns it off until the client is fast again, so an idle connection
 * spins once.  Returns what recv returns.
 */
#define SPIN_NS 100000
#define SPIN_ON_NS 300000

static ssize_t
conn_recv_adaptive (struct connection *conn, size_t want)
{
  struct iovec iov = { .iov_base = conn->rbuf, .iov_len = want };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  int64_t t;
  ssize_t r;

  if (conn->spin) {
    r = conn_recv_polling (conn->fd_in, &msg, monotonic_ns () + SPIN_NS);
    if (r != -1 || errno != EAGAIN)
      return r;
    conn->spin = false;
  }
  t = monotonic_ns ();
  do
    r = recv (conn->fd_in, conn->rbuf, want, 0);
  while (r == -1 && errno == EINTR);
  conn->spin = r > 0 && monotonic_ns () - t < SPIN_ON_NS;
  return r;
}

/* At a request boundary with nothing buffered, on a connection that
 * may park: fill rbuf with up to WANT bytes of what arrives within the
 * grace period (none with park_now).  Returns bytes, 0 at EOF, -1 with
 * errno (EAGAIN: the client is idle).
 */
static ssize_t
conn_fill_request (struct connection *conn, size_t want)
{
  struct iovec iov = { .iov_base = conn->rbuf, .iov_len = CONN_RBUF_SIZE };
  ssize_t r;

  if (conn->tls) {
    struct pollfd pfd = { .fd = conn->fd_in, .events = POLLIN };

    if (conn->olen) {
      r = tls_readv (conn->tls, &iov, 1, true);
      if (r != -1 || errno != EAGAIN)
        return r;
      if (reply_flush (conn) == -1)
        return -1;
    }
    if (!tls_pending (conn->tls) &&
        poll (&pfd, 1, conn->park_now ? 0 : PARK_GRACE_MS) == 0) {
      errno = EAGAIN;
      return -1;
    }
    return tls_readv (conn->tls, &iov, 1, false);
  }
  if (conn->olen && reply_flush (conn) == -1)
    return -1;
  if (conn->park_now) {
    do
      r = recv (conn->fd_in, conn->rbuf, want, MSG_DONTWAIT);
    while (r == -1 && errno == EINTR);
    return r;
  }
  return conn_recv_adaptive (conn, want);
}

/* How much to read into rbuf at a request boundary.  After a large
 * payload the next request is likely another large WRITE, already
 * queued behind its header: reading just the header lets its payload
 * go straight to its place (conn_readv) instead of up to 128 KiB of it
 * being copied out of rbuf.  Over TLS a read brings whole records
 * anyway.
 */
static size_t
conn_request_fill_size (const struct connection *conn)
{
  if (!conn->hdr_exact || conn->tls)
    return CONN_RBUF_SIZE;
  return conn->extended ? sizeof (struct nbd_request_ext)
    : sizeof (struct nbd_request);
}

/* conn_read for the start of a request, whose first read takes what
 * has arrived, or only the header after a large payload.  -1 with
 * errno EAGAIN when the client sent nothing within the grace period
 * and the connection may park.
 */
int
conn_read_request (struct connection *conn, void *buf, size_t n)
{
  size_t want = conn_request_fill_size (conn);
  bool header_only = want < CONN_RBUF_SIZE;

  conn->hdr_exact = false;
  if (conn->rpos == conn->rlen && (conn->can_park || header_only)) {
    ssize_t r = conn->can_park ? conn_fill_request (conn, want)
      : conn_fill (conn, conn->rbuf, want);

    if (r <= 0) {
      if (r == 0)
        errno = 0;
      return -1;
    }
    conn->rpos = 0;
    conn->rlen = r;
    conn->park_now = false;
  }
  return conn_read (conn, buf, n);
}

/* The rest of a WRITE payload that is not here yet.  The client is
 * refilling its socket buffer, which holds only about 200 KiB, so the
 * next part is a few us away: the thread polls before it blocks.
 * Blocking costs both sides: the vCPU that goes idle takes tens of us
 * to wake on a VM, and each part the client sends must then wake this
 * thread.  *SPIN_LEFT is what the payload may still spend polling
 * (payload_spin_budget), so a client that trickles it in tiny pieces
 * keeps the thread busy for no more than 1 ms per MiB; a client at
 * full speed used a sixth of that here (fio, 1 MiB writes at QD8).
 *
 * The blocking read of conn_fill_iov is kept where polling does not
 * apply: over TLS, whose records tls_readv decrypts; on a pipe (-s),
 * where MSG_DONTWAIT means nothing and quit_fd must be watched; and
 * during a handshake with a deadline, which wait_readable keeps.
 */
#define PAYLOAD_SPIN_NS 50000
#define PAYLOAD_SPIN_NS_PER_KIB 1000

static int64_t
payload_spin_budget (size_t len)
{
  return PAYLOAD_SPIN_NS + (int64_t) (len >> 10) * PAYLOAD_SPIN_NS_PER_KIB;
}

static ssize_t
conn_fill_payload (struct connection *conn, const struct iovec *iov,
                   int iovcnt, int64_t *spin_left)
{
  struct msghdr msg = {
    .msg_iov = (struct iovec *) iov,
    .msg_iovlen = MIN (iovcnt, IOV_MAX),
  };
  int64_t t;
  ssize_t r;

  if (conn->tls || conn->deadline_ms || !conn->is_socket || *spin_left <= 0)
    return conn_fill_iov (conn, iov, iovcnt);
  if (conn->olen && reply_flush (conn) == -1)
    return -1;
  t = monotonic_ns ();
  r = conn_recv_polling (conn->fd_in, &msg, t + *spin_left);
  *spin_left -= monotonic_ns () - t;
  if (r == -1 && errno == EAGAIN)
    return conn_fill_iov (conn, iov, iovcnt);
  return r;
}

/* Read exactly N bytes.  Small reads come through rbuf, so one read()
 * picks up many pipelined requests; large payloads go straight to BUF.
 * Returns 0, or -1 with errno (0 for EOF before the first byte).
 */
int
conn_read (struct connection *conn, void *buf, size_t n)
{
  char *p = buf;
  bool started = false;
  bool direct = n >= CONN_RBUF_SIZE / 2;        /* a payload */
  int64_t spin_left = direct ? payload_spin_budget (n) : 0;

  if (direct)
    conn->hdr_exact = true;

  while (n > 0) {
    size_t avail = conn->rlen - conn->rpos;
    ssize_t r;

    if (avail > 0) {
      size_t k = MIN (avail, n);

      memcpy (p, conn->rbuf + conn->rpos, k);
      conn->rpos += k;
      p += k;
      n -= k;
      started = true;
      continue;
    }
    if (direct)
      r = conn_fill_payload (conn, &(struct iovec) { p, n }, 1, &spin_left);
    else
      r = conn_fill (conn, conn->rbuf, CONN_RBUF_SIZE);
    if (r <= 0) {
      if (r == 0)
        errno = started ? EPIPE : 0;
      return -1;
    }
    started = true;
    if (direct) {
      p += r;
      n -= r;
    }
    else {
      conn->rpos = 0;
      conn->rlen = r;
    }
  }
  return 0;
}

/* Read exactly the bytes IOV describes (a WRITE payload received in
 * place, R-10): what rbuf holds first, then straight from the socket.
 * IOV is consumed.  Returns 0, or -1 with errno.
 */
int
conn_readv (struct connection *conn, struct iovec *iov, int iovcnt)
{
  size_t total = 0;
  int64_t spin_left;

  for (int i = 0; i < iovcnt; ++i)
    total += iov[i].iov_len;
  if (total >= CONN_RBUF_SIZE / 2)
    conn->hdr_exact = true;
  spin_left = payload_spin_budget (total);
  while (iovcnt > 0) {
    size_t avail = conn->rlen - conn->rpos;
    ssize_t r;

    if (iov->iov_len == 0) {
      iov++;
      iovcnt--;
      continue;
    }
    if (avail > 0) {
      r = MIN (avail, iov->iov_len);
      memcpy (iov->iov_base, conn->rbuf + conn->rpos, r);
      conn->rpos += r;
    }
    else if ((r = conn_fill_payload (conn, iov, iovcnt, &spin_left)) <= 0) {
      if (r == 0)
        errno = EPIPE;
      return -1;
    }
    /* Step over the R bytes just filled. */
    while (r > 0 && (size_t) r >= iov->iov_len) {
      r -= iov->iov_len;
      iov++;
      iovcnt--;
    }
    if (r > 0) {
      iov->iov_base = (char *) iov->iov_base + r;
      iov->iov_len -= r;
    }
  }
  return 0;
}

/* Read and drop N bytes (a rejected write's payload, R-9). */
int
conn_skip (struct connection *conn, uint64_t n)
{
  char junk[16384];

  while (n > 0) {
    size_t k = MIN (n, (uint64_t) sizeof junk);

    if (conn_read (conn, junk, k) == -1) {
      if (errno == 0)
        errno = EPIPE;
      return -1;
    }
    n -= k;
  }
  return 0;
}

/* Write the whole iovec.  Caller holds write_lock. */
int
conn_writev (struct connection *conn, struct iovec *iov, int iovcnt)
{
  if (conn->tls)
    return tls_writev (conn->tls, iov, iovcnt);
  while (iovcnt > 0) {
    ssize_t r = writev (conn->fd_out, iov, iovcnt);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    while (iovcnt > 0 && (size_t) r >= iov->iov_len) {
      r -= iov->iov_len;
      iov++;
      iovcnt--;
    }
    if (iovcnt > 0) {
      iov->iov_base = (char *) iov->iov_base + r;
      iov->iov_len -= r;
    }
  }
  return 0;
}

/* After NBD_OPT_STARTTLS was acknowledged: the TLS handshake, within
 * what is left of the --timeout bound.  Returns 0, or -1 (logged).
 */
int
conn_starttls (struct connection *conn)
{
  int64_t left = 0;

  if (conn->deadline_ms) {
    left = conn->deadline_ms - conn_now_ms ();
    if (left <= 0) {
      server_error ("client did not finish the handshake within %u "
                    "seconds: disconnecting (see --timeout)",
                    cfg.handshake_timeout);
      return -1;
    }
  }
  conn->tls = tls_session_new (conn->fd_in, conn->fd_out, left);
  return conn->tls ? 0 : -1;
}

/* SIGTERM/SIGINT: stop reading requests on every connection; requests
 * in flight still finish and reply.  A parked connection's
 * socket becomes ready as it is shut down, for conns_wait_all to
 * collect.  Called once no acceptor waits on park.c's set.
 */
void
conns_shutdown_all (void)
{
  park_drain_begin ();
  pthread_mutex_lock (&conns_lock);
  for (struct connection *c = conns; c; c = c->next) {
    conn_set_status (c, CONN_SHUTDOWN);
    if (c->is_socket)
      shutdown (c->fd_in, SHUT_RD);
  }
  pthread_mutex_unlock (&conns_lock);
}

/* Wait for every connection to close.  A client that stopped reading
 * can hold a worker in writev forever, so GRACE_SECONDS after shutdown
 * began the remaining connections are cut; a plugin call that never
 * returns cannot be cut, so after another GRACE_SECONDS we give up.
 * Returns 0, or -1 if connections are still open.
 */
#define GRACE_SECONDS 10

/* While connections are parked the main thread serves them (they only
 * close now), checking the time every PARKED_POLL_MS; otherwise it
 * waits for connections to close, looking every PARKED_CHECK_MS for
 * one that parked meanwhile (a worker may park just as shutdown
 * begins; its socket, shut down, wakes it at once).
 */
#define PARKED_POLL_MS 10
#define PARKED_CHECK_MS 100

static bool
ts_before (const struct timespec *a, const struct timespec *b)
{
  return a->tv_sec < b->tv_sec ||
    (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static bool
time_passed (const struct timespec *t)
{
  struct timespec now;

  clock_gettime (CLOCK_REALTIME, &now);
  return !ts_before (&now, t);
}

/* Wait until DEADLINE for a connection to close; serve parked ones
 * that woke meanwhile.  Caller holds conns_lock.  Returns ETIMEDOUT
 * once DEADLINE has passed.
 */
static int
conns_wait_some (const struct timespec *deadline)
{
  struct connection *conn;
  int *listener;

  if (conns_parked () == 0) {
    struct timespec soon;

    clock_gettime (CLOCK_REALTIME, &soon);
    soon.tv_nsec += PARKED_CHECK_MS * 1000000L;
    if (soon.tv_nsec >= 1000000000L) {
      soon.tv_sec++;
      soon.tv_nsec -= 1000000000L;
    }
    if (ts_before (deadline, &soon))
      soon = *deadline;
    pthread_cond_timedwait (&conns_cond, &conns_lock, &soon);
    return time_passed (deadline) ? ETIMEDOUT : 0;
  }
  pthread_mutex_unlock (&conns_lock);
  switch (park_wait (PARKED_POLL_MS, &listener, &conn)) {
  case PARK_CONN:
    conn_resume (conn);
    break;
  case PARK_TIMER:
    conns_sweep_greeted ();
    break;
  default:
    break;
  }
  pthread_mutex_lock (&conns_lock);
  return time_passed (deadline) ? ETIMEDOUT : 0;
}

int
conns_wait_all (void)
{
  struct timespec deadline;
  bool cut = false;
  int r = 0;

  clock_gettime (CLOCK_REALTIME, &deadline);
  deadline.tv_sec += GRACE_SECONDS;
  pthread_mutex_lock (&conns_lock);
  while (nconns > 0 && r == 0) {
    if (conns_wait_some (&deadline) != ETIMEDOUT)
      continue;
    if (cut) {
      server_error ("%u client(s) still busy in the plugin %d seconds "
                    "after they were cut: exiting without them",
                    nconns, 2 * GRACE_SECONDS);
      r = -1;
      break;
    }
    for (struct connection *c = conns; c; c = c->next) {
      conn_set_status (c, CONN_DEAD);
      if (c->is_socket)
        shutdown (c->fd_in, SHUT_RDWR);
    }
    server_error ("%u client(s) did not finish within %d seconds of "
                  "shutdown: disconnected", nconns, GRACE_SECONDS);
    cut = true;
    deadline.tv_sec += GRACE_SECONDS;
  }
  pthread_mutex_unlock (&conns_lock);
  return r;
}

/* nbdsrv: READ replies whose data goes from the plugin's file to the
 * socket by splice, never copied through user space (read-source.h).
 *
 * The data is first spliced from the file into the thread's pipe, which
 * moves page references, not bytes.  Only once the first pipeful is
 * there does the reply start, so a file that ends early (truncated
 * while served) or fails to read costs nothing on the wire: the caller
 * falls back to .pread, and the client gets the error that gives.  Then,
 * under write_lock so the reply stays whole, the header leaves
 * with MSG_MORE and the pipe is spliced into the socket.  A READ larger
 * than the pipe takes more rounds; a file error in a later round comes
 * after part of the reply has left, and a half reply cannot be taken
 * back, so the connection is cut.
 *
 * A pipe rather than sendfile for that reason: sendfile finds out that
 * the file ended only after the header is on its way.  The two cost
 * the same (sendfile goes through a pipe of its own inside the kernel).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "connection.h"
#include "protocol.h"
#include "reply.h"

/* Wait until FD takes more bytes, after EAGAIN on a socket that someone
 * made non-blocking.  Returns 0, or -1 with errno.
 */
static int
wait_writable (int fd)
{
  struct pollfd p = { .fd = fd, .events = POLLOUT };

  while (poll (&p, 1, -1) == -1)
    if (errno != EINTR)
      return -1;
  return 0;
}

/* Splice from FD at *OFF into the pipe until *LEFT bytes are in it or
 * the pipe is full, counting them off *LEFT and onto *INPIPE.  Returns
 * 0, or -1 with errno when the file failed or ended (EIO) first.
 */
static int
pipe_fill (int pipe_w, int fd, uint64_t *off, uint32_t *left,
           size_t *inpipe)
{
  while (*left > 0) {
    loff_t o = *off;
    ssize_t r = splice (fd, &o, pipe_w, NULL, *left, SPLICE_F_MOVE);

    if (r > 0) {
      *off += r;
      *left -= r;
      *inpipe += r;
      continue;
    }
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 && errno == EAGAIN && *inpipe > 0)
      return 0;                 /* the pipe is full: send, then refill */
    if (r == 0)
      errno = EIO;              /* the file is shorter than it was */
    return -1;
  }
  return 0;
}

/* Splice the *INPIPE bytes in the pipe to OUT; MORE: the reply goes
 * on after them.  Returns 0, or -1 with errno.
 */
static int
pipe_drain (int pipe_r, int out, size_t *inpipe, bool more)
{
  unsigned flags = SPLICE_F_MOVE | (more ? SPLICE_F_MORE : 0);

  while (*inpipe > 0) {
    ssize_t r = splice (pipe_r, NULL, out, NULL, *inpipe, flags);

    if (r > 0) {
      *inpipe -= r;
      continue;
    }
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 && errno == EAGAIN && wait_writable (out) == 0)
      continue;
    if (r == 0)
      errno = EPIPE;
    return -1;
  }
  return 0;
}

/* The header, held back (MSG_MORE) to leave with the data's first
 * bytes.  -s gives two descriptors that need not be sockets: plain
 * write there.
 */
static int
header_send (struct connection *conn, const char *buf, size_t n)
{
  while (n > 0) {
    ssize_t r = conn->fd_in == conn->fd_out
      ? send (conn->fd_out, buf, n, MSG_MORE)
      : write (conn->fd_out, buf, n);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN && wait_writable (conn->fd_out) == 0)
        continue;
      return -1;
    }
    buf += r;
    n -= r;
  }
  return 0;
}

/* The reply's header, then the pipe's bytes and the rest of the file's
 * range, round by round.  Caller holds write_lock.  Returns 0, or -1
 * with *FILE_FAILED telling whether the file (not the socket) failed.
 */
static int
splice_locked (struct connection *conn, const char *hdr, size_t hlen,
               int pipe_r, int pipe_w, int fd, uint64_t *off,
               uint32_t *left, size_t *inpipe, bool *file_failed)
{
  if (header_send (conn, hdr, hlen) == -1)
    return -1;
  for (;;) {
    if (pipe_drain (pipe_r, conn->fd_out, inpipe, *left > 0) == -1)
      return -1;
    if (*left == 0)
      return 0;
    if (pipe_fill (pipe_w, fd, off, left, inpipe) == -1) {
      *file_failed = true;
      return -1;
    }
  }
}

int
reply_read_splice (struct connection *conn, bool batch,
                   const struct request *r, uint32_t len, int fd,
                   uint64_t fd_offset)
{
  char hdr[READ_HEADER_MAX];
  size_t hlen, inpipe = 0;
  uint32_t left = len;
  bool file_failed = false;
  int pipe_r, pipe_w, ret;

  if (thread_pipe (&pipe_r, &pipe_w) == -1)
    return 1;
  if (pipe_fill (pipe_w, fd, &fd_offset, &left, &inpipe) == -1) {
    debug ("splicing READ at offset %" PRIu64 ": %m: reading it instead",
           r->offset);
    if (inpipe > 0)
      thread_pipe_discard ();
    return 1;
  }
  /* Inline requests' replies wait in the batch: they go first. */
  if (batch && reply_flush (conn) == -1) {
    thread_pipe_discard ();
    return -1;
  }
  hlen = reply_read_header (conn, r, len, hdr);
  pthread_mutex_lock (&conn->write_lock);
  ret = splice_locked (conn, hdr, hlen, pipe_r, pipe_w, fd, &fd_offset,
                       &left, &inpipe, &file_failed);
  if (ret == -1) {                                                /* */
    if (file_failed)
      server_error ("reading the data of a READ at offset %" PRIu64
                    " failed after its reply had started (%m): closing "
                    "the connection; was the file truncated while served?",
                    r->offset);
    else if (atomic_load (&conn->status) > CONN_DEAD)
      debug ("sending reply: %m");
    conn_set_status (conn, CONN_DEAD);
    /* Still under write_lock: nothing may follow the half reply. */
    shutdown (conn->fd_out, SHUT_RDWR);
    if (inpipe > 0)
      thread_pipe_discard ();
  }
  pthread_mutex_unlock (&conn->write_lock);
  return ret;
}

/* nbdsrv: the wait set of the acceptor threads, and parked connections.
 *
 * A connection with nothing to do does not keep a thread: its last
 * worker parks it here (connection.c: conn_park), giving its I/O
 * buffers back and registering its socket for one wake-up.  The
 * acceptor threads (socket.c) wait on one epoll set holding the
 * listening sockets, the quit pipe and the parked sockets, so the same
 * small pool of threads accepts new clients and picks up a parked
 * client when it sends the next request or hangs up.
 *
 * A parked connection is touched only by the thread that receives its
 * event (EPOLLONESHOT delivers it once), so nothing else may free it:
 * at shutdown its socket is shut down, which makes it ready, and the
 * main thread takes the events once the acceptors have left
 * (park_drain_begin, conns_wait_all).
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "internal.h"
#include "connection.h"
#include "park.h"

static int epfd = -1;
static int timer_fd = -1;          /* handshake deadlines (connection.c) */

/* Registered listening sockets: the event's pointer is one of these. */
#define LISTENERS_MAX 16
static int *listener_ptrs[LISTENERS_MAX];
static size_t nlisteners;

/* Freed connection buffers kept for the next connection or the next
 * wake-up, so that parking and resuming does not mmap and fault in
 * 384 KiB each time.  Each cached block holds at most its touched
 * pages (usually a few KiB); eight cover the wake-ups two cores can run
 * at once with room to spare, and cap the cache at 3 MiB.
 *
 * Blocks are mapped for themselves, not taken from malloc: after a
 * burst of clients each thread's malloc arena kept a block-sized free
 * top that glibc does not trim, megabytes in all.
 */
#define BUFFERS_CACHED 8
#define BUFFER_BYTES (CONN_RBUF_SIZE + CONN_OBUF_SIZE)
static pthread_mutex_t buffers_lock = PTHREAD_MUTEX_INITIALIZER;
static char *buffers[BUFFERS_CACHED];   /* owned; guarded by buffers_lock */
static size_t nbuffers;

bool
park_on (void)
{
  return epfd >= 0;
}

int
park_init (void)
{
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &quit_fd };
  struct epoll_event tev = { .events = EPOLLIN, .data.ptr = &timer_fd };

  epfd = epoll_create1 (EPOLL_CLOEXEC);
  timer_fd = timerfd_create (CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (epfd == -1 || timer_fd == -1 ||
      epoll_ctl (epfd, EPOLL_CTL_ADD, quit_fd, &ev) == -1 ||
      epoll_ctl (epfd, EPOLL_CTL_ADD, timer_fd, &tev) == -1) {
    server_error ("cannot create the server's epoll set: %m");
    if (epfd >= 0)
      close (epfd);
    epfd = -1;
    return -1;
  }
  return 0;
}

/* FD (non-blocking) stays registered, level-triggered, until closed. */
int
park_add_listener (int *fd)
{
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = fd };

  if (nlisteners >= LISTENERS_MAX ||
      epoll_ctl (epfd, EPOLL_CTL_ADD, *fd, &ev) == -1) {
    server_error ("cannot wait for clients on a listening socket: %m");
    return -1;
  }
  listener_ptrs[nlisteners++] = fd;
  return 0;
}

static bool
is_listener (const void *p)
{
  for (size_t i = 0; i < nlisteners; i++)
    if (listener_ptrs[i] == p)
      return true;
  return false;
}

/* Wait up to TIMEOUT_MS (-1: no limit) for one thing to do.  One event
 * per call, so the others stay for the other waiting threads.
 */
enum park_ready
park_wait (int timeout_ms, int **listener, struct connection **conn)
{
  struct epoll_event ev;
  int r;

  do
    r = epoll_wait (epfd, &ev, 1, timeout_ms);
  while (r == -1 && errno == EINTR);
  if (r == -1) {
    server_error ("epoll_wait: %m");
    poll (NULL, 0, 100);        /* do not spin on a persistent error */
    return PARK_TIMEOUT;
  }
  if (r == 0)
    return PARK_TIMEOUT;
  if (ev.data.ptr == &quit_fd)
    return PARK_QUIT;
  if (ev.data.ptr == &timer_fd) {
    uint64_t expirations;

    /* Several threads may wake for it: the one that reads it acts. */
    if (read (timer_fd, &expirations, sizeof expirations) !=
        sizeof expirations)
      return PARK_TIMEOUT;
    return PARK_TIMER;
  }
  if (is_listener (ev.data.ptr)) {
    *listener = ev.data.ptr;
    return PARK_LISTENER;
  }
  *conn = ev.data.ptr;
  return PARK_CONN;
}

/* Register CONN's socket FD for one wake-up when input arrives or the
 * client hangs up (ADDED: it was registered before).  From the moment
 * this succeeds another thread may own CONN.  Returns 0, or -1 (logged)
 * when the caller still owns CONN.
 */
int
park_arm (int fd, bool added, struct connection *conn)
{
  struct epoll_event ev = {
    .events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, .data.ptr = conn,
  };

  if (epoll_ctl (epfd, added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev)
      == -1) {
    server_error ("cannot park an idle connection: %m: serving it with "
                  "its own thread");
    return -1;
  }
  return 0;
}

/* Make the timer fire at DEADLINE_MS (CLOCK_MONOTONIC, milliseconds),
 * replacing any earlier setting.
 */
void
park_timer_set (int64_t deadline_ms)
{
  struct itimerspec its = {
    .it_value = {
      .tv_sec = deadline_ms / 1000,
      .tv_nsec = deadline_ms % 1000 * 1000000 + 1,  /* never 0: disarm */
    },
  };

  if (timer_fd >= 0 &&
      timerfd_settime (timer_fd, TFD_TIMER_ABSTIME, &its, NULL) == -1)
    server_error ("cannot set the handshake timer: %m");
}

/* At shutdown, once no acceptor waits any more: the quit pipe stays
 * readable, so take it out for the main thread to wait for the parked
 * connections alone.
 */
void
park_drain_begin (void)
{
  if (epfd >= 0)
    epoll_ctl (epfd, EPOLL_CTL_DEL, quit_fd, NULL);
}

char *
park_buffers_get (void)
{
  char *block = NULL;

  pthread_mutex_lock (&buffers_lock);
  if (nbuffers > 0)
    block = buffers[--nbuffers];
  pthread_mutex_unlock (&buffers_lock);
  if (block == NULL) {
    block = mmap (NULL, BUFFER_BYTES, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (block == MAP_FAILED) {
      errno = ENOMEM;
      block = NULL;
    }
  }
  return block;
}

/* After a burst: unmap the cached blocks.  Rare, so under the lock. */
void
park_buffers_trim (void)
{
  pthread_mutex_lock (&buffers_lock);
  while (nbuffers > 0)
    munmap (buffers[--nbuffers], BUFFER_BYTES);
  pthread_mutex_unlock (&buffers_lock);
}

void
park_buffers_put (char *block)
{
  if (block == NULL)
    return;
  pthread_mutex_lock (&buffers_lock);
  if (nbuffers < BUFFERS_CACHED) {
    buffers[nbuffers++] = block;
    block = NULL;
  }
  pthread_mutex_unlock (&buffers_lock);
  if (block)
    munmap (block, BUFFER_BYTES);
}

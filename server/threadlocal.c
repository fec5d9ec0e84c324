/* nbdsrv: per-thread state (current connection, error, data buffer),
 * and starting the server's threads.
 *
 * Each worker keeps its READ/WRITE buffer for its whole life and only
 * grows it, so a request never allocates (STYLE.md 8).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

static __thread struct thread_state tstate = { .pipe_r = -1, .pipe_w = -1 };
static pthread_key_t buffer_key;
static pthread_once_t buffer_key_once = PTHREAD_ONCE_INIT;

/* Runs at thread exit (the key's value is only a marker). */
static void
free_thread_state (void *unused)
{
  free (tstate.buf);
  tstate.buf = NULL;
  tstate.buf_size = 0;
  nbdkit_extents_free (tstate.extents);
  tstate.extents = NULL;
  thread_pipe_discard ();
}

static void
make_buffer_key (void)
{
  pthread_key_create (&buffer_key, free_thread_state);
}

struct thread_state *
thread_state (void)
{
  return &tstate;
}

void *
thread_buffer (size_t n)
{
  void *p;

  if (n <= tstate.buf_size)
    return tstate.buf;
  p = realloc (tstate.buf, n);
  if (p == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  tstate.buf = p;
  tstate.buf_size = n;
  pthread_once (&buffer_key_once, make_buffer_key);
  pthread_setspecific (buffer_key, &tstate);
  return p;
}

/* Give a large buffer back after a large request, so memory held by
 * idle workers stays small.
 */
void
thread_buffer_release (void)
{
  free (tstate.buf);
  tstate.buf = NULL;
  tstate.buf_size = 0;
}

struct nbdkit_extents *
thread_extents (void)
{
  if (tstate.extents == NULL) {
    tstate.extents = nbdkit_extents_new (0, 0);
    if (tstate.extents == NULL)
      return NULL;
    pthread_once (&buffer_key_once, make_buffer_key);
    pthread_setspecific (buffer_key, &tstate);
  }
  return tstate.extents;
}

/* A splice pipe's capacity: one request's worth of pages, so a 1 MiB
 * READ is filled before its reply starts (reply-splice.c).  The kernel
 * caps unprivileged pipes at /proc/sys/fs/pipe-max-size (1 MiB by
 * default); a smaller pipe only means more rounds.
 */
#define THREAD_PIPE_SIZE (1024 * 1024)

/* The thread's pipe for splicing, made on first use and kept for the
 * thread's life.  Its write end does not block, so filling it stops
 * when it is full instead of waiting for a reader that is this same
 * thread; its read end blocks, so splicing into a full socket waits in
 * the kernel.  Returns 0 with the two ends, or -1 with errno.
 */
int
thread_pipe (int *pipe_r, int *pipe_w)
{
  int fds[2];

  if (tstate.pipe_r == -1) {
    if (pipe2 (fds, O_CLOEXEC) == -1)
      return -1;
    if (fcntl (fds[1], F_SETFL, O_NONBLOCK) == -1) {
      close (fds[0]);
      close (fds[1]);
      return -1;
    }
    fcntl (fds[1], F_SETPIPE_SZ, THREAD_PIPE_SIZE); /* best effort */
    tstate.pipe_r = fds[0];
    tstate.pipe_w = fds[1];
    pthread_once (&buffer_key_once, make_buffer_key);
    pthread_setspecific (buffer_key, &tstate);
  }
  *pipe_r = tstate.pipe_r;
  *pipe_w = tstate.pipe_w;
  return 0;
}

/* Close the thread's pipe: at thread exit, or when bytes were left in
 * it (cheaper to make a new one than to drain it).
 */
void
thread_pipe_discard (void)
{
  if (tstate.pipe_r == -1)
    return;
  close (tstate.pipe_r);
  close (tstate.pipe_w);
  tstate.pipe_r = tstate.pipe_w = -1;
}

void
thread_clear_error (void)
{
  tstate.err = 0;
  tstate.last_error_len = 0;
}

void
nbdkit_set_error (int err)
{
  tstate.err = err;
}

/* Start FN (ARG) in a detached thread: the server's threads are never
 * joined, they count themselves out.  Returns 0 or an errno value.
 */
int
thread_start_detached (void *(*fn) (void *), void *arg)
{
  pthread_attr_t attr;
  pthread_t thread;
  int r;

  pthread_attr_init (&attr);
  pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
  r = pthread_create (&thread, &attr, fn, arg);
  pthread_attr_destroy (&attr);
  return r;
}

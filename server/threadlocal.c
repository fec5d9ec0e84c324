/* nbdsrv: per-thread state (current connection, error, data buffer),
 * and starting the server's threads.
 *
 * Each worker keeps its READ/WRITE buffer for its whole life and only
 * grows it, so a request never allocates (STYLE.md 8).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>

#include "internal.h"

static __thread struct thread_state tstate;
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

/* nbdsrv pause filter: hold new requests while paused, so the storage
 * below can be snapshotted, under control of a Unix socket.
 *
 * Control protocol, one byte each way: 'p' pauses and is answered 'P'
 * once every request that was already running has finished; 'r'
 * resumes and is answered 'R'; anything else is answered 'X'.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <nbdkit-filter.h>

static const char *control_path;        /* borrowed from the command line */
static int control_fd = -1;
static pthread_t control_thread;
static bool control_thread_started;
static _Atomic int client_fd = -1;      /* the control client, if any */

/* Guards paused and running; gate changes when either does. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate = PTHREAD_COND_INITIALIZER;
static bool paused;
static unsigned running;

static int
pause_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  if (strcmp (key, "pause-control") == 0) {
    control_path = value;
    return 0;
  }
  return next (nxdata, key, value);
}

#define pause_config_help \
  "pause-control=<SOCKET>         (required) The control socket."

/* Bind now so that a bad path stops the server at startup. */
static int
pause_config_complete (nbdkit_next_config_complete *next,
                       nbdkit_backend *nxdata)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };

  if (control_path == NULL) {
    nbdkit_error ("pause-control socket was not set: add "
                  "pause-control=/path/to/socket");
    return -1;
  }
  if (strlen (control_path) >= sizeof addr.sun_path) {
    nbdkit_error ("pause-control: socket path is too long (at most %zu "
                  "bytes): %s", sizeof addr.sun_path - 1, control_path);
    return -1;
  }
  strcpy (addr.sun_path, control_path);
  control_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (control_fd == -1) {
    nbdkit_error ("pause-control: socket: %m");
    return -1;
  }
  if (bind (control_fd, (struct sockaddr *) &addr, sizeof addr) == -1
      || listen (control_fd, 4) == -1) {
    nbdkit_error ("%s: %m", control_path);
    close (control_fd);
    control_fd = -1;
    return -1;
  }
  return next (nxdata);
}

/* The control thread runs this filter's code: end it before the
 * filter is unmapped.  shutdown() wakes a blocked accept() (close()
 * does not), and the same on the control client's socket wakes a
 * blocked read().
 */
static void
pause_unload (void)
{
  if (control_fd < 0)
    return;
  shutdown (control_fd, SHUT_RDWR);
  if (atomic_load (&client_fd) >= 0)
    shutdown (atomic_load (&client_fd), SHUT_RDWR);
  if (control_thread_started)
    pthread_join (control_thread, NULL);
  close (control_fd);
  unlink (control_path);
}

static char
pause_command (char c)
{
  pthread_mutex_lock (&gate_lock);
  switch (c) {
  case 'p':
    paused = true;
    while (running > 0)
      pthread_cond_wait (&gate, &gate_lock);
    pthread_mutex_unlock (&gate_lock);
    return 'P';
  case 'r':
    paused = false;
    pthread_cond_broadcast (&gate);
    pthread_mutex_unlock (&gate_lock);
    return 'R';
  default:
    pthread_mutex_unlock (&gate_lock);
    return 'X';
  }
}

static void
pause_serve_client (int fd)
{
  char c, reply;
  ssize_t r;

  while ((r = read (fd, &c, 1)) == 1 || (r == -1 && errno == EINTR)) {
    if (r != 1 || c == '\n' || c == '\r')
      continue;
    reply = pause_command (c);
    if (write (fd, &reply, 1) != 1)
      break;
  }
}

static void *
pause_control_thread (void *arg)
{
  int fd;

  for (;;) {
    fd = accept4 (control_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      /* EINVAL: pause_unload shut the socket down. */
      if (errno != EINVAL)
        nbdkit_error ("pause-control: accept: %m");
      return NULL;
    }
    atomic_store (&client_fd, fd);
    pause_serve_client (fd);
    atomic_store (&client_fd, -1);
    close (fd);
  }
}

/* The control thread starts after the server has forked, else a
 * daemonized server would lose it.
 */
static int
pause_after_fork (nbdkit_backend *nxdata)
{
  int err;

  err = pthread_create (&control_thread, NULL, pause_control_thread, NULL);
  if (err) {
    errno = err;
    nbdkit_error ("pause: cannot start the control thread: %m");
    return -1;
  }
  control_thread_started = true;
  return 0;
}

/* Wait while paused, then count this request as running. */
static void
pause_enter (void)
{
  pthread_mutex_lock (&gate_lock);
  while (paused)
    pthread_cond_wait (&gate, &gate_lock);
  running++;
  pthread_mutex_unlock (&gate_lock);
}

static int
pause_leave (int r)
{
  pthread_mutex_lock (&gate_lock);
  if (--running == 0)
    pthread_cond_broadcast (&gate);
  pthread_mutex_unlock (&gate_lock);
  return r;
}

static int
pause_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  pause_enter ();
  return pause_leave (next->pread (next, buf, count, offset, flags, err));
}

static int
pause_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  pause_enter ();
  return pause_leave (next->pwrite (next, buf, count, offset, flags, err));
}

static int
pause_zero (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  pause_enter ();
  return pause_leave (next->zero (next, count, offset, flags, err));
}

static int
pause_trim (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  pause_enter ();
  return pause_leave (next->trim (next, count, offset, flags, err));
}

static int
pause_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  pause_enter ();
  return pause_leave (next->flush (next, flags, err));
}

static int
pause_extents (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  pause_enter ();
  return pause_leave (next->extents (next, count, offset, flags, extents,
                                     err));
}

static int
pause_cache (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  pause_enter ();
  return pause_leave (next->cache (next, count, offset, flags, err));
}

static struct nbdkit_filter filter = {
  .name = "pause",
  .longname = "nbdsrv pause filter",
  .config = pause_config,
  .config_complete = pause_config_complete,
  .config_help = pause_config_help,
  .after_fork = pause_after_fork,
  .unload = pause_unload,
  .pread = pause_pread,
  .pwrite = pause_pwrite,
  .zero = pause_zero,
  .trim = pause_trim,
  .flush = pause_flush,
  .extents = pause_extents,
  .cache = pause_cache,
};

NBDKIT_REGISTER_FILTER (filter)

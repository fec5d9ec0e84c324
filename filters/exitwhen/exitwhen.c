/* nbdsrv exitwhen filter: shut the server down gracefully when an
 * outside event happens: a file appears or disappears, a pipe is
 * closed, a process exits, or a script says so (exit status 88).
 *
 * Once an event is seen, new clients are refused, and the server
 * exits when the last connected client leaves (at once if none is).
 * Events are checked whenever a client connects or disconnects, and
 * every exit-when-poll seconds while no client is connected.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

enum event_kind { EV_FILE_CREATED, EV_FILE_DELETED, EV_PIPE_CLOSED,
                  EV_PROCESS_EXITS, EV_SCRIPT };

struct event {
  enum event_kind kind;
  const char *arg;              /* file or script, borrowed */
  int fd;                       /* pipe */
  pid_t pid;                    /* process */
};

static struct event *events;    /* owned */
static size_t n_events;
static unsigned poll_secs = 60;

/* Guards connections and exiting; changed signals the poll thread. */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t state_changed = PTHREAD_COND_INITIALIZER;
static unsigned connections;
static bool exiting;
static bool stopping;           /* unload: the poll thread must end */

static pthread_t poll_thread;
static bool poll_thread_started;

/* The poll thread runs this filter's code: it must have ended before
 * the filter is unmapped, or its next wake-up crashes the exiting
 * server (Debian's nbdkit 1.32 does crash so, now and then).
 */
static void
exitwhen_unload (void)
{
  if (poll_thread_started) {
    pthread_mutex_lock (&state_lock);
    stopping = true;
    pthread_cond_signal (&state_changed);
    pthread_mutex_unlock (&state_lock);
    pthread_join (poll_thread, NULL);
  }
  free (events);
}

static int
event_add (const struct event *e)
{
  struct event *p = reallocarray (events, n_events + 1, sizeof *p);

  if (p == NULL) {
    nbdkit_error ("exitwhen: realloc: %m");
    return -1;
  }
  events = p;
  events[n_events++] = *e;
  return 0;
}

static int
exitwhen_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  struct event e = { .arg = value, .fd = -1, .pid = -1 };
  int n;

  if (strcmp (key, "exit-when-file-created") == 0)
    e.kind = EV_FILE_CREATED;
  else if (strcmp (key, "exit-when-file-deleted") == 0)
    e.kind = EV_FILE_DELETED;
  else if (strcmp (key, "exit-when-script") == 0)
    e.kind = EV_SCRIPT;
  else if (strcmp (key, "exit-when-pipe-closed") == 0) {
    if (nbdkit_parse_int (key, value, &n) == -1)
      return -1;
    if (n < 0) {
      nbdkit_error ("exitwhen: %s=%s is not a file descriptor", key, value);
      return -1;
    }
    e.kind = EV_PIPE_CLOSED;
    e.fd = n;
  }
  else if (strcmp (key, "exit-when-process-exits") == 0) {
    if (nbdkit_parse_int (key, value, &n) == -1)
      return -1;
    if (n <= 0) {
      nbdkit_error ("exitwhen: %s=%s is not a process ID", key, value);
      return -1;
    }
    e.kind = EV_PROCESS_EXITS;
    e.pid = n;
  }
  else if (strcmp (key, "exit-when-poll") == 0) {
    if (nbdkit_parse_unsigned (key, value, &poll_secs) == -1)
      return -1;
    /* nbdkit 1.32 takes 0 and then polls in a busy loop. */
    if (poll_secs == 0) {
      nbdkit_error ("exitwhen: exit-when-poll must be at least 1 second");
      return -1;
    }
    return 0;
  }
  else
    return next (nxdata, key, value);
  return event_add (&e);
}

#define exitwhen_config_help \
  "exit-when-file-created=FILE    Exit when FILE is created.\n" \
  "exit-when-file-deleted=FILE    Exit when FILE is deleted.\n" \
  "exit-when-pipe-closed=FD       Exit when pipe FD is closed.\n" \
  "exit-when-process-exits=PID    Exit when process PID exits.\n" \
  "exit-when-script=SCRIPT        Exit when SCRIPT exits with code 88.\n" \
  "exit-when-poll=SECS            Poll interval when idle (default 60)."

/* Run the event script: 88 means the event happened. */
static bool
event_script_fired (const char *script)
{
  pid_t pid = fork ();
  int status;

  if (pid == -1) {
    nbdkit_error ("exit-when-script: fork: %m");
    return false;
  }
  if (pid == 0) {
    execl ("/bin/sh", "sh", "-c", script, (char *) NULL);
    _exit (127);
  }
  while (waitpid (pid, &status, 0) == -1)
    if (errno != EINTR)
      return false;
  if (WIFEXITED (status) && WEXITSTATUS (status) == 88)
    return true;
  if (WIFEXITED (status) && WEXITSTATUS (status) != 0)
    nbdkit_error ("exit-when-script: command failed with exit code %d",
                  WEXITSTATUS (status));
  else if (!WIFEXITED (status))
    nbdkit_error ("exit-when-script: command was killed by a signal");
  return false;
}

static bool
event_fired (const struct event *e)
{
  struct pollfd pfd;

  switch (e->kind) {
  case EV_FILE_CREATED:
    return access (e->arg, F_OK) == 0;
  case EV_FILE_DELETED:
    return access (e->arg, F_OK) == -1 && errno == ENOENT;
  case EV_PIPE_CLOSED:
    /* Data waiting is not a close: only hang-up or a dead fd is. */
    pfd.fd = e->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (poll (&pfd, 1, 0) == -1)
      return false;
    return (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
  case EV_PROCESS_EXITS:
    return kill (e->pid, 0) == -1 && errno == ESRCH;
  case EV_SCRIPT:
    return event_script_fired (e->arg);
  }
  return false;
}

/* Check the events (once one has fired, no more); with the state lock
 * held.  Shut down if an event fired and no client is connected.
 */
static void
exitwhen_check_locked (void)
{
  for (size_t i = 0; !exiting && i < n_events; ++i) {
    if (event_fired (&events[i])) {
      nbdkit_debug ("exitwhen: event %zu fired: exiting when the last "
                    "client disconnects", i);
      exiting = true;
    }
  }
  if (exiting && connections == 0)
    nbdkit_shutdown ();
}

/* While idle, wake every poll_secs; connects and disconnects check
 * the events themselves.
 */
static void *
exitwhen_poll_thread (void *arg)
{
  struct timespec until;

  pthread_mutex_lock (&state_lock);
  while (!stopping) {
    exitwhen_check_locked ();
    clock_gettime (CLOCK_REALTIME, &until);
    until.tv_sec += poll_secs;
    while (pthread_cond_timedwait (&state_changed, &state_lock, &until) == 0
           && connections > 0 && !stopping)
      ;
  }
  pthread_mutex_unlock (&state_lock);
  return NULL;
}

static int
exitwhen_after_fork (nbdkit_backend *nxdata)
{
  int err;

  if (n_events == 0)
    return 0;
  err = pthread_create (&poll_thread, NULL, exitwhen_poll_thread, NULL);
  if (err) {
    errno = err;
    nbdkit_error ("exitwhen: cannot start the polling thread: %m");
    return -1;
  }
  poll_thread_started = true;
  return 0;
}

static int
exitwhen_preconnect (nbdkit_next_preconnect *next, nbdkit_backend *nxdata,
                     int readonly)
{
  bool refuse;

  pthread_mutex_lock (&state_lock);
  exitwhen_check_locked ();
  refuse = exiting;
  pthread_mutex_unlock (&state_lock);
  if (refuse) {
    nbdkit_error ("exitwhen: nbdkit is exiting: rejecting new connection");
    return -1;
  }
  return next (nxdata, readonly);
}

static void *
exitwhen_open (nbdkit_next_open *next, nbdkit_context *nxdata,
               int readonly, const char *exportname, int is_tls)
{
  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  pthread_mutex_lock (&state_lock);
  connections++;
  pthread_cond_signal (&state_changed);
  pthread_mutex_unlock (&state_lock);
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static void
exitwhen_close (void *handle)
{
  pthread_mutex_lock (&state_lock);
  connections--;
  exitwhen_check_locked ();
  pthread_cond_signal (&state_changed);
  pthread_mutex_unlock (&state_lock);
}

static struct nbdkit_filter filter = {
  .name = "exitwhen",
  .longname = "nbdsrv exitwhen filter",
  .unload = exitwhen_unload,
  .config = exitwhen_config,
  .config_help = exitwhen_config_help,
  .after_fork = exitwhen_after_fork,
  .preconnect = exitwhen_preconnect,
  .open = exitwhen_open,
  .close = exitwhen_close,
};

NBDKIT_REGISTER_FILTER (filter)

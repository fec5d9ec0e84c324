/* nbdsrv: messages, to stderr, syslog, a file or nowhere (--log).
 *
 * Every line names the program and, inside a connection, the plugin and
 * the connection number, so an operator can tell clients apart.  Errors
 * reported by a plugin during a request are also kept in the thread
 * state, so the reply to the client can carry the text (R-17 beyond).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "internal.h"
#include "connection.h"

static FILE *log_fp;            /* stderr or the --log=FILE stream */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void
log_open (void)
{
  switch (cfg.log_to) {
  case LOG_TO_SYSLOG:
    openlog ("nbdsrv", LOG_PID, LOG_DAEMON);
    break;
  case LOG_TO_FILE:
    log_fp = fopen (cfg.log_file, "a");
    if (log_fp == NULL) {
      fprintf (stderr, "nbdsrv: --log=%s: %m: "
               "give a writable file, or --log=stderr\n", cfg.log_file);
      exit (EXIT_FAILURE);
    }
    setvbuf (log_fp, NULL, _IOLBF, 0);
    break;
  case LOG_TO_STDERR:
  case LOG_TO_NULL:
    break;
  }
}

/* Build "nbdsrv: memory[3]: error: " style prefixes. */
static void
format_prefix (char *buf, size_t n, bool is_error)
{
  struct thread_state *ts = thread_state ();
  const char *kind = is_error ? "error: " : "debug: ";

  /* nbdkit's shapes, which scripts grep: "PROG: NAME[N]: debug: " in
   * a connection, "PROG: debug: " outside one.
   */
  if (ts->conn)
    snprintf (buf, n, "nbdsrv: %s[%u]: %s",
              ts->name ? ts->name : plugin.p.name, ts->conn->id, kind);
  else
    snprintf (buf, n, "nbdsrv: %s", kind);
}

void
log_msg (bool is_error, const char *fmt, va_list args)
{
  int saved_errno = errno;      /* so %m in FMT sees the caller's errno */
  char prefix[128];
  char msg[4096];

  if (cfg.log_to == LOG_TO_NULL)
    return;
  errno = saved_errno;
  vsnprintf (msg, sizeof msg, fmt, args);
  if (cfg.log_to == LOG_TO_SYSLOG) {
    syslog (is_error ? LOG_ERR : LOG_DEBUG, "%s", msg);
    errno = saved_errno;
    return;
  }
  format_prefix (prefix, sizeof prefix, is_error);
  pthread_mutex_lock (&log_lock);
  fprintf (log_fp ? log_fp : stderr, "%s%s\n", prefix, msg);
  pthread_mutex_unlock (&log_lock);
  errno = saved_errno;
}

void
server_error (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  log_msg (true, fmt, args);
  va_end (args);
}

/* Start-up messages ("nbdsrv: KIND: ...") always go to stderr, before
 * any log is set up, as nbdkit's do: the command line's errors, and
 * warnings such as an option that does nothing or a debug flag nothing
 * uses.
 */
void
startup_vmessage (const char *kind, const char *fmt, va_list args)
{
  fprintf (stderr, "nbdsrv: %s: ", kind);
  vfprintf (stderr, fmt, args);
  fputc ('\n', stderr);
}

void
startup_warning (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  startup_vmessage ("warning", fmt, args);
  va_end (args);
}

void
server_debug (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  log_msg (false, fmt, args);
  va_end (args);
}

/* The plugin API.  nbdkit_error also remembers the text for the reply. */
/* Format once into the thread's last_error, then log that text. */
void
nbdkit_verror (const char *fmt, va_list args)
{
  struct thread_state *ts = thread_state ();
  int saved_errno = errno;
  int n;

  n = vsnprintf (ts->last_error, sizeof ts->last_error, fmt, args);
  ts->last_error_len = n < 0 ? 0 :
    (size_t) n < sizeof ts->last_error ? (size_t) n
    : sizeof ts->last_error - 1;
  server_error ("%s", ts->last_error);
  errno = saved_errno;
}

void
nbdkit_error (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  nbdkit_verror (fmt, args);
  va_end (args);
}

void
nbdkit_vdebug (const char *fmt, va_list args)
{
  if (cfg.verbose)
    log_msg (false, fmt, args);
}

void
nbdkit_debug (const char *fmt, ...)
{
  va_list args;

  if (!cfg.verbose)
    return;
  va_start (args, fmt);
  log_msg (false, fmt, args);
  va_end (args);
}

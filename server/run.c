/* nbdsrv: --run CMD, --print-uri and the URIs they share.
 *
 * As with nbdkit, the command runs under /bin/sh with the variables
 * $uri, $nbd, $port, $unixsocket and $exportname set, on the stdin and
 * stdout the server was started with; the server stops when the
 * command exits and exits with its status.
 *
 * The server supervises its command: when it is told to stop (a signal,
 * its pidfile's pid killed) while the command runs, it stops serving
 * but still waits for the command and exits with its status, as nbdkit
 * does.  A caller such as `timeout 60 nbdsrv --run 'qemu-img convert
 * ...'` therefore never sees success while the command runs on alone.
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "internal.h"
#include "socket.h"
#include "run.h"

static pid_t run_pid;            /* 0 until the command is started */
static bool run_waiter_started;
static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t run_done = PTHREAD_COND_INITIALIZER;
static int run_status = -1;       /* under run_lock: CMD's status once known */

/* Quote S for the shell: 'like'\''this'. */
static void
shell_quote (FILE *fp, const char *s)
{
  fputc ('\'', fp);
  for (; *s; s++) {
    if (*s == '\'')
      fputs ("'\\''", fp);
    else
      fputc (*s, fp);
  }
  fputc ('\'', fp);
}

/* Percent-encode an export name for the path part of a URI. */
static void
uri_escape (FILE *fp, const char *s)
{
  for (; *s; s++) {
    unsigned char c = *s;

    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9') || strchr ("-._~/", c))
      fputc (c, fp);
    else
      fprintf (fp, "%%%02X", c);
  }
}

/* The -i address when given: nbdkit says "localhost" even for
 * -i 127.0.0.1, which fails for clients that resolve localhost to ::1
 * first.
 */
static const char *
uri_host (void)
{
  return cfg.ipaddr ? cfg.ipaddr : "localhost";
}

char *
uri_new (const struct listeners *l)
{
  const char *exp = cfg.exportname ? cfg.exportname : "";
  const char *s = cfg.tls == TLS_REQUIRE ? "s" : "";     /* TLS */
  char *uri = NULL;
  size_t len = 0;
  FILE *fp = open_memstream (&uri, &len);

  if (fp == NULL)
    return NULL;
  /* The same shapes as nbdkit's $uri: nbd+unix://?socket=PATH and
   * nbd://HOST:PORT, with /EXPORT only when there is one; nbds when
   * --tls=require, since a plain client would be refused.
   */
  if (l->unixpath) {
    fprintf (fp, "nbd%s+unix://", s);
    if (*exp) {
      fputc ('/', fp);
      uri_escape (fp, exp);
    }
    fprintf (fp, "?socket=%s", l->unixpath);
  }
  else {
    const char *host = uri_host ();

    if (cfg.vsock)
      fprintf (fp, "nbd%s+vsock://1:%d", s, l->port);
    else if (strchr (host, ':'))
      fprintf (fp, "nbd%s://[%s]:%d", s, host, l->port);
    else
      fprintf (fp, "nbd%s://%s:%d", s, host, l->port);
    if (*exp) {
      fputc ('/', fp);
      uri_escape (fp, exp);
    }
  }
  fclose (fp);
  return uri;
}

/* Reaps the command, records its status as a shell would ($?) and
 * stops the server.
 */
/* Reap the command and record its status as a shell would ($?). */
static void
run_reap (void)
{
  int status, r;

  while ((r = waitpid (run_pid, &status, 0)) == -1 && errno == EINTR)
    ;
  pthread_mutex_lock (&run_lock);
  if (r == -1)
    run_status = EXIT_FAILURE;
  else if (WIFEXITED (status))
    run_status = WEXITSTATUS (status);
  else {
    fprintf (stderr, "nbdsrv: external command was killed by signal %d\n",
             WTERMSIG (status));
    run_status = 128 + WTERMSIG (status);
  }
  pthread_cond_broadcast (&run_done);
  pthread_mutex_unlock (&run_lock);
}

/* The command ending stops the server. */
static void *
run_waiter (void *arg)
{
  run_reap ();
  quit_set ();
  return NULL;
}

/* In the child: the command gets the caller's stdin and stdout back
 * (the server's own point at /dev/null), and the signals a shell
 * expects.
 */
static void __attribute__ ((noreturn))
run_exec (const char *script)
{
  struct sigaction sa = { .sa_handler = SIG_DFL };
  sigset_t none;

  if (stdio_in >= 0)
    dup2 (stdio_in, STDIN_FILENO);
  if (stdio_out >= 0)
    dup2 (stdio_out, STDOUT_FILENO);
  sigemptyset (&sa.sa_mask);
  sigaction (SIGPIPE, &sa, NULL);
  sigemptyset (&none);
  sigprocmask (SIG_SETMASK, &none, NULL);
  execl ("/bin/sh", "sh", "-c", script, (char *) NULL);
  perror ("nbdsrv: --run: /bin/sh");
  _exit (127);
}

int
run_start (const struct listeners *l, const char *uri)
{
  char *script = NULL;
  size_t len = 0;
  FILE *fp = open_memstream (&script, &len);

  if (fp == NULL)
    return -1;
  fputs ("uri=", fp);
  shell_quote (fp, uri);
  fputs ("\nnbd=", fp);          /* nbdkit: the same as $uri */
  shell_quote (fp, uri);
  fputs ("\nport=", fp);
  if (l->unixpath == NULL)
    fprintf (fp, "%d", l->port);
  fputs ("\nunixsocket=", fp);
  shell_quote (fp, l->unixpath ? l->unixpath : "");
  fputs ("\nexportname=", fp);
  shell_quote (fp, cfg.exportname ? cfg.exportname : "");
  fprintf (fp, "\n%s\n", cfg.run);
  fclose (fp);
  fflush (stdout);
  run_pid = fork ();
  if (run_pid == -1) {
    fprintf (stderr, "nbdsrv: error: --run: fork: %m\n");
    free (script);
    return -1;
  }
  if (run_pid == 0)
    run_exec (script);
  free (script);
  if (thread_start_detached (run_waiter, NULL) != 0) {
    /* run_wait reaps the command itself once the server stops. */
    fprintf (stderr, "nbdsrv: error: --run: cannot start a thread\n");
    return -1;
  }
  run_waiter_started = true;
  return 0;
}

/* Wait for the command, however the server came to stop, and return
 * its status; failure if it could not be started.
 */
int
run_wait (void)
{
  int status;

  if (run_pid <= 0)
    return EXIT_FAILURE;
  if (!run_waiter_started)
    run_reap ();
  pthread_mutex_lock (&run_lock);
  while (run_status < 0)
    pthread_cond_wait (&run_done, &run_lock);
  status = run_status;
  pthread_mutex_unlock (&run_lock);
  return status;
}

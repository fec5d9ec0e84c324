/* nbdsrv: --run CMD, --print-uri and the URIs they share.
 *
 * As with nbdkit, the command runs under /bin/sh with the variables
 * $uri, $nbd, $port, $unixsocket and $exportname set; the server stops
 * when the command exits and exits with its status.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "internal.h"
#include "socket.h"
#include "run.h"

static pid_t run_pid;
static int run_status = -1;     /* exit status of CMD once known */

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
  char *uri = NULL;
  size_t len = 0;
  FILE *fp = open_memstream (&uri, &len);

  if (fp == NULL)
    return NULL;
  /* The same shapes as nbdkit's $uri: nbd+unix://?socket=PATH and
   * nbd://HOST:PORT, with /EXPORT only when there is one.
   */
  if (l->unixpath) {
    fputs ("nbd+unix://", fp);
    if (*exp) {
      fputc ('/', fp);
      uri_escape (fp, exp);
    }
    fprintf (fp, "?socket=%s", l->unixpath);
  }
  else {
    const char *host = uri_host ();

    if (cfg.vsock)
      fprintf (fp, "nbd+vsock://1:%d", l->port);
    else if (strchr (host, ':'))
      fprintf (fp, "nbd://[%s]:%d", host, l->port);
    else
      fprintf (fp, "nbd://%s:%d", host, l->port);
    if (*exp) {
      fputc ('/', fp);
      uri_escape (fp, exp);
    }
  }
  fclose (fp);
  return uri;
}

static void *
run_waiter (void *arg)
{
  int status;

  while (waitpid (run_pid, &status, 0) == -1 && errno == EINTR)
    ;
  if (WIFEXITED (status))
    run_status = WEXITSTATUS (status);
  else
    run_status = 128 + (WIFSIGNALED (status) ? WTERMSIG (status) : 0);
  quit_set ();
  return NULL;
}

int
run_start (const struct listeners *l, const char *uri)
{
  char *script = NULL;
  size_t len = 0;
  FILE *fp = open_memstream (&script, &len);
  pthread_t thread;

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
  if (run_pid == 0) {
    execl ("/bin/sh", "sh", "-c", script, (char *) NULL);
    perror ("nbdsrv: --run: /bin/sh");
    _exit (127);
  }
  free (script);
  if (pthread_create (&thread, NULL, run_waiter, NULL) != 0) {
    fprintf (stderr, "nbdsrv: error: --run: cannot start a thread\n");
    return -1;
  }
  pthread_detach (thread);
  return 0;
}

int
run_exit_status (void)
{
  return run_status < 0 ? 0 : run_status;
}

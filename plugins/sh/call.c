/* nbdsrv sh and eval plugins: running one method of a script.
 *
 * Each callback forks, runs the program with the method name and its
 * arguments, feeds it stdin and collects stdout and stderr.  The three
 * pipes are serviced by one poll loop, so a program that writes a
 * large pread reply before reading anything, or reads a large pwrite
 * payload while also writing, cannot deadlock against us the way a
 * write-all-then-read-all sequence would.  The child is always waited
 * for, also when something fails half way, so no zombies are left.
 *
 * The server may run callbacks on several threads at once, so nothing
 * here is global except the temporary directory, which is set up
 * before any connection exists.  Between fork and exec the child only
 * makes async-signal-safe calls.
 */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "call.h"

#define SH_MAX_ARGS   8                 /* method plus at most 7 arguments */
#define SH_READ_CHUNK (64 * 1024)

const char *sh_tmpdir;
static char tmpdir_buf[PATH_MAX];
static char **script_env;       /* owned array; the strings are environ's */
static char tmpdir_var[PATH_MAX + sizeof "tmpdir="];

extern char **environ;

/* The environment scripts run in: the server's, with tmpdir set to
 * our directory.  It is built once here instead of with setenv, so
 * that $tmpdir reaches only the scripts: the --run command keeps the
 * environment it was started with, a user's own tmpdir included, as
 * under nbdkit.
 */
static int
script_env_build (void)
{
  size_t n = 0, i, j = 0;

  while (environ[n])
    n++;
  script_env = calloc (n + 2, sizeof *script_env);
  if (script_env == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  snprintf (tmpdir_var, sizeof tmpdir_var, "tmpdir=%s", tmpdir_buf);
  script_env[j++] = tmpdir_var;
  for (i = 0; i < n; ++i)
    if (strncmp (environ[i], "tmpdir=", 7) != 0)
      script_env[j++] = environ[i];
  script_env[j] = NULL;
  return 0;
}

/* The directory scripts keep state in, exported as $tmpdir.  It is
 * made in load, before the server starts any thread, because setenv
 * is not safe once other threads may be reading the environment.
 */
int
sh_tmpdir_create (void)
{
  const char *base = getenv ("TMPDIR");

  if (base == NULL || *base == '\0')
    base = "/tmp";
  if (snprintf (tmpdir_buf, sizeof tmpdir_buf, "%s/nbdsrvXXXXXX", base)
      >= (int) sizeof tmpdir_buf) {
    nbdkit_error ("TMPDIR=%s is too long for a temporary directory: "
                  "set TMPDIR to a shorter path", base);
    return -1;
  }
  if (mkdtemp (tmpdir_buf) == NULL) {
    nbdkit_error ("mkdtemp: %s: %m: set TMPDIR to a writable directory",
                  tmpdir_buf);
    return -1;
  }
  if (script_env_build () == -1) {
    rmdir (tmpdir_buf);
    return -1;
  }
  sh_tmpdir = tmpdir_buf;
  return 0;
}

static int
tmpdir_remove_one (const char *path, const struct stat *st, int type,
                   struct FTW *ftw)
{
  if (remove (path) == -1)
    nbdkit_debug ("cannot remove %s: %m", path);
  return 0;                     /* carry on with the rest */
}

/* Remove $tmpdir and everything scripts left in it.  FTW_PHYS keeps
 * the walk from following symlinks a script made to files elsewhere.
 */
void
sh_tmpdir_remove (void)
{
  if (sh_tmpdir == NULL)
    return;
  nftw (sh_tmpdir, tmpdir_remove_one, 16, FTW_DEPTH | FTW_PHYS);
  sh_tmpdir = NULL;
  free (script_env);
  script_env = NULL;
}

/* A server may exit after a failed configuration without unloading
 * the plugin; the directory must not outlive the process even then.
 */
static void __attribute__ ((destructor))
sh_tmpdir_remove_at_exit (void)
{
  sh_tmpdir_remove ();
}

void
sh_buf_free (struct sh_buf *buf)
{
  if (!buf->fixed)
    free (buf->data);
  buf->data = NULL;
  buf->len = buf->cap = 0;
}

/* Remove one trailing newline, as the calling convention asks for
 * handles and export descriptions.
 */
void
sh_chomp (char *s)
{
  size_t len = strlen (s);

  if (len > 0 && s[len - 1] == '\n')
    s[len - 1] = '\0';
}

/* Make room for at least one more chunk in a growable buffer, plus the
 * terminating NUL.
 */
static int
buf_reserve (struct sh_buf *buf)
{
  size_t want, newcap;
  char *p;

  if (buf->cap - buf->len > SH_READ_CHUNK)
    return 0;
  want = buf->len + SH_READ_CHUNK + 1;
  newcap = buf->cap ? buf->cap : SH_READ_CHUNK;
  while (newcap < want) {
    if (newcap > SIZE_MAX / 2) {
      errno = ENOMEM;
      return -1;
    }
    newcap *= 2;
  }
  p = realloc (buf->data, newcap);
  if (p == NULL)
    return -1;
  buf->data = p;
  buf->cap = newcap;
  return 0;
}

/* Read what is available on FD into BUF.  Returns 1 while the pipe is
 * open, 0 at end of file, -1 on error.
 */
static int
buf_read (int fd, struct sh_buf *buf)
{
  char scratch[4096];
  ssize_t r;

  if (buf->fixed && buf->len >= buf->cap)
    /* Output beyond what the caller wants is counted, not kept, so
     * the caller can say by how much the program overshot.
     */
    r = read (fd, scratch, sizeof scratch);
  else if (buf->fixed)
    r = read (fd, buf->data + buf->len, buf->cap - buf->len);
  else {
    if (buf_reserve (buf) == -1)
      return -1;
    /* Terminate before reading: a program that prints nothing at all
     * ends with a read of 0, and the buffer must still be a string.
     */
    buf->data[buf->len] = '\0';
    r = read (fd, buf->data + buf->len, buf->cap - buf->len - 1);
  }
  if (r == -1)
    return errno == EINTR || errno == EAGAIN ? 1 : -1;
  if (r == 0)
    return 0;
  buf->len += r;
  if (!buf->fixed)
    buf->data[buf->len] = '\0';
  return 1;
}

/* In the child: move FD to TARGET (0, 1 or 2) without CLOEXEC. */
static void
child_setup_fd (int fd, int target)
{
  if (dup2 (fd, target) == -1)
    _exit (126);
}

static void
child_write_str (const char *s)
{
  size_t len = strlen (s);
  ssize_t r;

  while (len > 0) {
    r = write (STDERR_FILENO, s, len);
    if (r <= 0)
      return;
    s += r;
    len -= r;
  }
}

/* In the child, after fork: wire up the pipes and exec.  Only
 * async-signal-safe calls from here on.  The pipe ends are first
 * copied above 2 so that placing one on 0, 1 or 2 cannot overwrite
 * another, whatever numbers pipe2 happened to return.
 */
static void __attribute__ ((noreturn))
child_exec (int in_fd, int out_fd, int err_fd,
            char **argv, char **shargv)
{
  struct sigaction sa = { .sa_handler = SIG_DFL };
  sigset_t all;
  int fds[3] = { in_fd, out_fd, err_fd };
  int i;

  for (i = 0; i < 3; ++i) {
    fds[i] = fcntl (fds[i], F_DUPFD_CLOEXEC, 3);
    if (fds[i] == -1)
      _exit (126);
  }
  for (i = 0; i < 3; ++i)
    child_setup_fd (fds[i], i);
  close_range (3, ~0U, 0);

  /* The server ignores SIGPIPE and may block signals in its threads;
   * scripts expect the defaults (a pipeline like "dd | head" relies on
   * SIGPIPE to end).
   */
  sigemptyset (&sa.sa_mask);
  sigaction (SIGPIPE, &sa, NULL);
  sigemptyset (&all);
  sigprocmask (SIG_SETMASK, &all, NULL);

  execve (argv[0], argv, script_env ? script_env : environ);
  /* A script without "#!" is a /bin/sh script, as with execvp. */
  if (errno == ENOEXEC)
    execve (shargv[0], shargv, script_env ? script_env : environ);

  child_write_str (argv[0]);
  child_write_str (": ");
  child_write_str (strerrordesc_np (errno) ? strerrordesc_np (errno)
                   : "cannot execute");
  child_write_str ("\n");
  _exit (1);
}

static void
close_fd (int *fd)
{
  if (*fd >= 0) {
    close (*fd);
    *fd = -1;
  }
}

/* Service the child's three pipes until stdout and stderr reach end of
 * file.  IN/INLEN go to its stdin; if the child exits or closes stdin
 * without reading it all, the rest is dropped (the exit status then
 * says whether that was an error).  Returns 0 or -1 with errno set.
 */
static int
pipes_service (int *in_fd, int *out_fd, int *err_fd,
               const char *in, size_t inlen,
               struct sh_buf *out, struct sh_buf *err)
{
  struct pollfd pfd[3];
  size_t written = 0;
  ssize_t w;
  int n, r;

  while (*out_fd >= 0 || *err_fd >= 0) {
    n = 0;
    if (*in_fd >= 0)
      pfd[n++] = (struct pollfd) { .fd = *in_fd, .events = POLLOUT };
    if (*out_fd >= 0)
      pfd[n++] = (struct pollfd) { .fd = *out_fd, .events = POLLIN };
    if (*err_fd >= 0)
      pfd[n++] = (struct pollfd) { .fd = *err_fd, .events = POLLIN };
    if (poll (pfd, n, -1) == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }

    for (int i = 0; i < n; ++i) {
      if (pfd[i].revents == 0)
        continue;
      if (pfd[i].fd == *in_fd) {
        w = write (*in_fd, in + written, inlen - written);
        if (w > 0)
          written += w;
        /* EPIPE: the child will not read more; not our error. */
        if ((w == -1 && errno != EAGAIN && errno != EINTR) ||
            written == inlen)
          close_fd (in_fd);
        continue;
      }
      r = buf_read (pfd[i].fd, pfd[i].fd == *out_fd ? out : err);
      if (r == -1)
        return -1;
      if (r == 0)
        close_fd (pfd[i].fd == *out_fd ? out_fd : err_fd);
    }
  }
  return 0;
}

/* Run PATH with ARGS (a NULL-terminated list that becomes $1, $2, ...),
 * feeding IN to its stdin and collecting stdout into OUT and stderr
 * into ERR.  On return *STATUS is the wait status.  Returns 0, or -1
 * if the program could not be run at all (already reported).
 */
int
sh_run (const char *path, const char **args, const void *in, size_t inlen,
        struct sh_buf *out, struct sh_buf *err, int *status)
{
  char *argv[SH_MAX_ARGS + 2], *shargv[SH_MAX_ARGS + 3];
  int in_pipe[2] = { -1, -1 }, out_pipe[2] = { -1, -1 },
    err_pipe[2] = { -1, -1 };
  int r = -1, saved;
  size_t i;
  pid_t pid;

  /* Both vectors are built before fork: the child must not allocate. */
  argv[0] = (char *) path;
  shargv[0] = (char *) "/bin/sh";
  shargv[1] = (char *) path;
  for (i = 0; args[i] != NULL && i < SH_MAX_ARGS; ++i) {
    argv[i + 1] = (char *) args[i];
    shargv[i + 2] = (char *) args[i];
  }
  argv[i + 1] = NULL;
  shargv[i + 2] = NULL;

  if (pipe2 (in_pipe, O_CLOEXEC) == -1 ||
      pipe2 (out_pipe, O_CLOEXEC) == -1 ||
      pipe2 (err_pipe, O_CLOEXEC) == -1) {
    nbdkit_error ("%s: pipe2: %m", path);
    goto out_close;
  }

  pid = fork ();
  if (pid == -1) {
    nbdkit_error ("%s: fork: %m", path);
    goto out_close;
  }
  if (pid == 0)
    child_exec (in_pipe[0], out_pipe[1], err_pipe[1], argv, shargv);

  close_fd (&in_pipe[0]);
  close_fd (&out_pipe[1]);
  close_fd (&err_pipe[1]);
  if (inlen == 0)
    close_fd (&in_pipe[1]);
  else
    fcntl (in_pipe[1], F_SETFL, O_NONBLOCK);

  r = pipes_service (&in_pipe[1], &out_pipe[0], &err_pipe[0],
                     in, inlen, out, err);
  saved = errno;

  /* Closing our ends first means a child still blocked writing to us
   * gets EPIPE and ends, so the wait below cannot hang on it.
   */
  close_fd (&in_pipe[1]);
  close_fd (&out_pipe[0]);
  close_fd (&err_pipe[0]);
  while (waitpid (pid, status, 0) == -1) {
    if (errno != EINTR) {
      nbdkit_error ("%s: waitpid: %m", path);
      r = -1;
      goto out_close;
    }
  }
  if (r == -1) {
    errno = saved;
    nbdkit_error ("%s: reading the script's output: %m", path);
  }

 out_close:
  close_fd (&in_pipe[0]);
  close_fd (&in_pipe[1]);
  close_fd (&out_pipe[0]);
  close_fd (&out_pipe[1]);
  close_fd (&err_pipe[0]);
  close_fd (&err_pipe[1]);
  return r;
}

/* The errno names a script may start its stderr with.  Other names
 * are taken as part of the message and give EIO; this is the set
 * nbdkit 1.32 recognises, so a script fails the same way under both.
 */
static const struct {
  const char *name;
  int err;
} sh_errnos[] = {
  { "EPERM", EPERM }, { "EIO", EIO }, { "ENOMEM", ENOMEM },
  { "EINVAL", EINVAL }, { "ENOSPC", ENOSPC }, { "EROFS", EROFS },
  { "ESHUTDOWN", ESHUTDOWN }, { "ENOTSUP", ENOTSUP },
  { "EOPNOTSUPP", EOPNOTSUPP }, { "EDQUOT", EDQUOT }, { "EFBIG", EFBIG },
  { "EOVERFLOW", EOVERFLOW },
};

/* If LINE starts with a known errno name followed by whitespace or
 * the end, return the errno and point *MSG past the name and the
 * blanks after it; otherwise return EIO with *MSG = LINE.
 */
static int
sh_errno_parse (const char *line, const char **msg)
{
  size_t i, len;

  for (i = 0; i < sizeof sh_errnos / sizeof sh_errnos[0]; ++i) {
    len = strlen (sh_errnos[i].name);
    if (strncasecmp (line, sh_errnos[i].name, len) != 0)
      continue;
    if (line[len] != '\0' && line[len] != ' ' && line[len] != '\t')
      continue;
    line += len;
    while (*line == ' ' || *line == '\t')
      line++;
    *msg = line;
    return sh_errnos[i].err;
  }
  *msg = line;
  return EIO;
}

/* Report a failed method from its stderr and wait status. */
static void
sh_report_failure (const char *path, const char *method,
                   struct sh_buf *err, int status)
{
  const char *msg;
  char *nl;
  int e;

  if (err->len == 0) {
    if (WIFSIGNALED (status))
      nbdkit_error ("%s: method %s was killed by signal %d and printed "
                    "nothing on stderr", path, method, WTERMSIG (status));
    else
      nbdkit_error ("%s: method %s exited with status %d but printed no "
                    "reason on stderr: print an errno name and a message "
                    "there, for example 'EIO read failed'",
                    path, method, WEXITSTATUS (status));
    nbdkit_set_error (EIO);
    errno = EIO;
    return;
  }

  /* Only the first line counts, as with nbdkit. */
  nl = strchr (err->data, '\n');
  if (nl)
    *nl = '\0';
  e = sh_errno_parse (err->data, &msg);
  nbdkit_error ("%s: %s", path, msg);
  nbdkit_set_error (e);
  errno = e;
}

/* Run METHOD with ARGS through the program the plugin chose for it.
 * OUT, if not NULL, receives stdout.  Exit status 0, 2 and 3 are
 * returned as SH_OK, SH_MISSING and SH_FALSE; anything else is
 * reported (error message and errno from stderr) and returned as
 * SH_ERROR.
 */
enum sh_status
sh_call (const char *method, const char **args, const void *in,
         size_t inlen, struct sh_buf *out)
{
  const char *argv[SH_MAX_ARGS + 1];
  struct sh_buf discard = { 0 }, err = { 0 };
  const char *path = sh_method_script (method);
  enum sh_status ret = SH_ERROR;
  int status;
  size_t i;

  if (path == NULL)
    return SH_MISSING;

  argv[0] = method;
  for (i = 0; args && args[i] && i < SH_MAX_ARGS - 1; ++i)
    argv[i + 1] = args[i];
  argv[i + 1] = NULL;

  if (out == NULL)
    out = &discard;
  if (sh_run (path, argv, in, inlen, out, &err, &status) == -1)
    goto out_free;

  if (WIFEXITED (status) && WEXITSTATUS (status) <= SH_FALSE &&
      WEXITSTATUS (status) != SH_ERROR) {
    ret = WEXITSTATUS (status);
    if (err.len > 0)
      nbdkit_debug ("%s: %s: stderr: %s", path, method, err.data);
  }
  else
    sh_report_failure (path, method, &err, status);

 out_free:
  sh_buf_free (&discard);
  sh_buf_free (&err);
  return ret;
}

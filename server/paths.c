/* nbdsrv: file names, passwords, stdio and sleeping for plugins.
 *
 * These helpers run in .config and friends, before the server may
 * chdir ("/") and close stdin, so they resolve and read things while
 * the user's environment is still there.  nbdkit_nanosleep is the
 * exception: it runs during requests and must give way to shutdown.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

char *
nbdkit_absolute_path (const char *path)
{
  char *cwd, *ret;
  size_t n;
  int r;

  if (path == NULL || *path == '\0') {
    nbdkit_error ("cannot convert null or empty path to an absolute path");
    errno = EINVAL;
    return NULL;
  }
  if (*path == '/') {
    ret = strdup (path);
    if (ret == NULL)
      nbdkit_error ("strdup: %m");
    return ret;
  }

  cwd = getcwd (NULL, 0);
  if (cwd == NULL) {
    nbdkit_error ("cannot make %s absolute: getcwd: %m", path);
    return NULL;
  }
  /* Avoid "//file" when the current directory is the root. */
  n = strlen (cwd);
  r = asprintf (&ret, "%s%s%s", cwd,
                n > 0 && cwd[n-1] == '/' ? "" : "/", path);
  free (cwd);
  if (r == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  return ret;
}

char *
nbdkit_realpath (const char *path)
{
  char *ret;

  if (path == NULL || *path == '\0') {
    nbdkit_error ("cannot resolve a null or empty path");
    errno = EINVAL;
    return NULL;
  }
  ret = realpath (path, NULL);
  if (ret == NULL)
    nbdkit_error ("realpath: %s: %m", path);
  return ret;
}

/* With -s the client's NBD stream is on stdin and stdout, so a plugin
 * that prompted or read a script there would corrupt the protocol.
 */
int
nbdkit_stdio_safe (void)
{
  return !cfg.single;
}

/* Reads the first line of FP, without its newline, into *PASSWORD.
 * An empty stream gives an empty password, as in nbdkit.
 */
static int
read_first_line (FILE *fp, const char *from, char **password)
{
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;

  errno = 0;
  len = getline (&line, &cap, fp);
  if (len == -1 && errno != 0) {
    nbdkit_error ("could not read password from %s: %m", from);
    free (line);
    return -1;
  }
  if (len == -1) {
    free (line);
    line = strdup ("");
    if (line == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
    len = 0;
  }
  if (len > 0 && line[len-1] == '\n')
    line[len-1] = '\0';
  *password = line;
  return 0;
}

/* password=- : prompt on the terminal with echo turned off. */
static int
read_password_interactive (char **password)
{
  struct termios orig, noecho;
  bool restore = false;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int ret = -1;

  if (!nbdkit_stdio_safe ()) {
    nbdkit_error ("password=- cannot be used with -s, because stdin "
                  "carries the NBD connection: use password=+FILE");
    return -1;
  }
  if (!isatty (STDIN_FILENO)) {
    nbdkit_error ("stdin is not a tty, cannot read password "
                  "interactively: use password=+FILE or password=-FD");
    return -1;
  }

  printf ("password: ");
  fflush (stdout);
  if (tcgetattr (STDIN_FILENO, &orig) == 0) {
    noecho = orig;
    noecho.c_lflag &= ~ECHO;
    restore = tcsetattr (STDIN_FILENO, TCSAFLUSH, &noecho) == 0;
  }

  errno = 0;
  len = getline (&line, &cap, stdin);
  if (len == -1) {
    if (errno != 0)
      nbdkit_error ("could not read password from stdin: %m");
    else
      nbdkit_error ("could not read password from stdin: end of file");
    goto out_restore;
  }
  if (len > 0 && line[len-1] == '\n')
    line[len-1] = '\0';
  *password = line;
  line = NULL;
  ret = 0;

 out_restore:
  if (restore)
    tcsetattr (STDIN_FILENO, TCSAFLUSH, &orig);
  /* The user's Enter was not echoed, so end the prompt line here. */
  printf ("\n");
  fflush (stdout);
  free (line);
  return ret;
}

/* password=-FD : read the inherited descriptor, then close it. */
static int
read_password_from_fd (const char *fdstr, char **password)
{
  FILE *fp;
  int fd, r;

  if (nbdkit_parse_int ("password file descriptor", fdstr, &fd) == -1)
    return -1;
  /* Closing 0-2 after reading would break the server's own stdio. */
  if (fd >= 0 && fd <= 2) {
    nbdkit_error ("cannot use password -FD for stdin/stdout/stderr "
                  "(-%d): pass the password on another descriptor", fd);
    return -1;
  }
  fp = fdopen (fd, "r");
  if (fp == NULL) {
    nbdkit_error ("fdopen %d: %m", fd);
    return -1;
  }
  r = read_first_line (fp, "file descriptor", password);
  fclose (fp);
  return r;
}

/* password=+FILE */
static int
read_password_from_file (const char *filename, char **password)
{
  FILE *fp;
  int r;

  fp = fopen (filename, "re");
  if (fp == NULL) {
    nbdkit_error ("open %s: %m", filename);
    return -1;
  }
  r = read_first_line (fp, filename, password);
  fclose (fp);
  return r;
}

int
nbdkit_read_password (const char *value, char **password)
{
  char *pw = NULL;
  int r;

  if (value == NULL)
    value = "";
  if (strcmp (value, "-") == 0)
    r = read_password_interactive (&pw);
  else if (value[0] == '-')
    r = read_password_from_fd (&value[1], &pw);
  else if (value[0] == '+')
    r = read_password_from_file (&value[1], &pw);
  else {
    pw = strdup (value);
    r = pw ? 0 : -1;
    if (pw == NULL)
      nbdkit_error ("strdup: %m");
  }

  /* Only touch the caller's pointer on success, so a plugin can keep
   * an earlier value if this one is rejected.
   */
  if (r == 0)
    *password = pw;
  return r;
}

/* Sleeping.  The wait is a ppoll on quit_fd, so shutdown interrupts
 * it at once instead of waiting out a long delay in a plugin.
 */
static int64_t
timespec_to_ns (const struct timespec *ts)
{
  return (int64_t) ts->tv_sec * 1000000000 + ts->tv_nsec;
}

int
nbdkit_nanosleep (unsigned sec, unsigned nsec)
{
  struct timespec now, left;
  struct pollfd pfd;
  int64_t deadline, remaining;
  int r;

  /* nsec above one second is carried; the total in ns fits in int64. */
  if (sec > INT_MAX || (uint64_t) sec + nsec / 1000000000 > INT_MAX) {
    nbdkit_error ("nbdkit_nanosleep: cannot sleep for %u seconds: "
                  "the limit is %d", sec, INT_MAX);
    errno = EINVAL;
    return -1;
  }
  clock_gettime (CLOCK_MONOTONIC, &now);
  deadline = timespec_to_ns (&now) + (int64_t) sec * 1000000000 + nsec;

  /* Each pass either returns or waits until the deadline or a signal,
   * so the loop ends once the deadline has passed.
   */
  for (;;) {
    if (quit)
      goto out_shutdown;
    clock_gettime (CLOCK_MONOTONIC, &now);
    remaining = deadline - timespec_to_ns (&now);
    if (remaining <= 0)
      return 0;
    left.tv_sec = remaining / 1000000000;
    left.tv_nsec = remaining % 1000000000;
    /* A negative quit_fd (before quit_init) is ignored by ppoll. */
    pfd.fd = quit_fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    r = ppoll (&pfd, 1, &left, NULL);
    if (r > 0)
      goto out_shutdown;
    if (r == -1 && errno != EINTR) {
      nbdkit_error ("nbdkit_nanosleep: ppoll: %m");
      return -1;
    }
  }

 out_shutdown:
  nbdkit_error ("aborting sleep because the server is shutting down");
  errno = ESHUTDOWN;
  return -1;
}

/* nbdsrv unit test: paths, passwords, stdio and sleeping
 * (server/paths.c).  The globals the core owns are defined here.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#include "stubs.h"

struct server_config cfg;
volatile int quit;
int quit_fd = -1;

static char tmpdir[] = "/tmp/test-paths.XXXXXX";

static void
write_file (const char *name, const char *content)
{
  char path[256];
  FILE *fp;

  snprintf (path, sizeof path, "%s/%s", tmpdir, name);
  fp = fopen (path, "w");
  fputs (content, fp);
  fclose (fp);
}

static void
test_absolute_path (void)
{
  char *p;

  p = nbdkit_absolute_path ("/abs/x");
  check (p && strcmp (p, "/abs/x") == 0, "absolute stays: %s", p);
  free (p);
  p = nbdkit_absolute_path ("rel/y");
  check (p && strcmp (p, "/rel/y") == 0, "relative from /: %s", p);
  free (p);
  if (chdir (tmpdir) == 0) {
    p = nbdkit_absolute_path ("../z");
    check (p && strncmp (p, tmpdir, strlen (tmpdir)) == 0 &&
           strcmp (p + strlen (tmpdir), "/../z") == 0,
           "no normalisation: %s", p);
    free (p);
  }
  stub_reset ();
  check (nbdkit_absolute_path ("") == NULL &&
         error_contains ("null or empty path"), "empty path");
  check (nbdkit_absolute_path (NULL) == NULL, "NULL path");
}

static void
test_realpath (void)
{
  char *p;

  write_file ("f", "x");
  p = nbdkit_realpath ("f");
  check (p && strncmp (p, tmpdir, strlen (tmpdir)) == 0 &&
         strcmp (p + strlen (tmpdir), "/f") == 0, "realpath f: %s", p);
  free (p);
  p = nbdkit_realpath ("./.");
  check (p && strcmp (p, tmpdir) == 0, "realpath .: %s", p);
  free (p);
  stub_reset ();
  check (nbdkit_realpath ("nonexistent") == NULL &&
         error_contains ("realpath: nonexistent: No such file"),
         "missing file");
  stub_reset ();
  check (nbdkit_realpath ("") == NULL &&
         error_contains ("null or empty path"), "empty path");
}

static const struct {
  const char *content;
  const char *want;
} pw_files[] = {
  { "sec\n", "sec" },
  { "sec", "sec" },
  { "sec\n\n", "sec" },
  { "a\nb\n", "a" },            /* only the first line, as in nbdkit */
  { "x\r\n", "x\r" },
  { "", "" },
  { "\n", "" },
  { "-+ spaces +-\n", "-+ spaces +-" },
};

static void
test_password_files (void)
{
  char *pw, arg[256];
  size_t i;
  int fd;

  for (i = 0; i < sizeof pw_files / sizeof pw_files[0]; ++i) {
    write_file ("pw", pw_files[i].content);
    snprintf (arg, sizeof arg, "+%s/pw", tmpdir);
    pw = NULL;
    check (nbdkit_read_password (arg, &pw) == 0 && pw &&
           strcmp (pw, pw_files[i].want) == 0,
           "+FILE %zu: got \"%s\"", i, pw ? pw : "(null)");
    free (pw);

    /* The same through an inherited descriptor, which is closed. */
    snprintf (arg, sizeof arg, "%s/pw", tmpdir);
    fd = open (arg, O_RDONLY);
    snprintf (arg, sizeof arg, "-%d", fd);
    pw = NULL;
    check (nbdkit_read_password (arg, &pw) == 0 && pw &&
           strcmp (pw, pw_files[i].want) == 0,
           "-FD %zu: got \"%s\"", i, pw ? pw : "(null)");
    check (fcntl (fd, F_GETFD) == -1 && errno == EBADF,
           "-FD %zu: descriptor closed", i);
    free (pw);
  }
}

static void
test_password_other (void)
{
  char *pw = (char *) "unchanged";

  check (nbdkit_read_password ("plain", &pw) == 0 &&
         strcmp (pw, "plain") == 0, "literal password");
  free (pw);
  check (nbdkit_read_password ("", &pw) == 0 && strcmp (pw, "") == 0,
         "empty literal");
  free (pw);

  pw = (char *) "unchanged";
  stub_reset ();
  check (nbdkit_read_password ("+/nonexistent/pw", &pw) == -1 &&
         error_contains ("/nonexistent/pw") &&
         strcmp (pw, "unchanged") == 0, "missing file, output untouched");
  stub_reset ();
  check (nbdkit_read_password ("+", &pw) == -1, "\"+\" alone");
  stub_reset ();
  check (nbdkit_read_password ("-0", &pw) == -1 &&
         error_contains ("stdin/stdout/stderr"), "-0 rejected");
  stub_reset ();
  check (nbdkit_read_password ("-2", &pw) == -1 &&
         error_contains ("stdin/stdout/stderr"), "-2 rejected");
  stub_reset ();
  check (nbdkit_read_password ("-999", &pw) == -1 &&
         error_contains ("fdopen 999"), "closed descriptor");
  stub_reset ();
  check (nbdkit_read_password ("-abc", &pw) == -1 &&
         error_contains ("password file descriptor"), "-abc rejected");
  stub_reset ();
  check (nbdkit_read_password ("-5x", &pw) == -1 &&
         error_contains ("trailing garbage"), "-5x rejected");

  /* The tests run with stdin redirected, never from a terminal. */
  if (!isatty (STDIN_FILENO)) {
    stub_reset ();
    check (nbdkit_read_password ("-", &pw) == -1 &&
           error_contains ("not a tty"), "- without a tty");
  }
  cfg.single = true;
  stub_reset ();
  check (nbdkit_read_password ("-", &pw) == -1 &&
         error_contains ("-s"), "- with -s");
  cfg.single = false;
  check (strcmp (pw, "unchanged") == 0, "failures leave output alone");
}

static void
test_stdio_safe (void)
{
  cfg.single = false;
  check (nbdkit_stdio_safe () == 1, "stdio safe by default");
  cfg.single = true;
  check (nbdkit_stdio_safe () == 0, "stdio unsafe with -s");
  cfg.single = false;
}

static double
now_sec (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
test_nanosleep (void)
{
  int fds[2];
  double t;

  t = now_sec ();
  check (nbdkit_nanosleep (0, 50000000) == 0, "sleep 50ms");
  t = now_sec () - t;
  check (t >= 0.05 && t < 1, "slept %.3fs, at least 50ms", t);
  check (nbdkit_nanosleep (0, 0) == 0, "sleep 0");
  /* nsec of a second or more carries into the seconds. */
  t = now_sec ();
  check (nbdkit_nanosleep (0, 1000000000) == 0, "sleep 0s + 1e9 ns");
  t = now_sec () - t;
  check (t >= 1 && t < 2, "carried nsec slept %.3fs, at least 1s", t);

  stub_reset ();
  errno = 0;
  check (nbdkit_nanosleep ((unsigned) INT_MAX + 1, 0) == -1 &&
         errno == EINVAL && error_contains ("2147483648"),
         "more than INT_MAX seconds");

  /* Shutdown already under way: quit_fd readable. */
  if (pipe (fds) == 0) {
    quit_fd = fds[0];
    if (write (fds[1], "x", 1) != 1)
      check (false, "pipe write");
    t = now_sec ();
    stub_reset ();
    errno = 0;
    check (nbdkit_nanosleep (10, 0) == -1 && errno == ESHUTDOWN,
           "sleep interrupted by shutdown");
    t = now_sec () - t;
    check (t < 1, "returned at once (%.3fs)", t);
    check (error_contains ("shutting down"), "shutdown message");
    quit_fd = -1;
    close (fds[0]);
    close (fds[1]);
  }
  quit = 1;
  errno = 0;
  check (nbdkit_nanosleep (10, 0) == -1 && errno == ESHUTDOWN,
         "quit flag also stops the sleep");
  quit = 0;
}

int
main (void)
{
  int r;

  if (mkdtemp (tmpdir) == NULL) {
    perror ("mkdtemp");
    return 1;
  }
  if (chdir ("/") == -1)
    return 1;
  test_absolute_path ();        /* leaves the cwd in tmpdir */
  test_realpath ();
  test_password_files ();
  test_password_other ();
  test_stdio_safe ();
  test_nanosleep ();
  r = test_summary ();

  unlink ("f");
  unlink ("pw");
  if (chdir ("/") == 0)
    rmdir (tmpdir);
  return r;
}

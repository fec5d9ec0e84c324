/* limits: this machine's physical limits, for bench/bench.py.
 *
 *   limits memcpy SECONDS     memcpy bandwidth, 64 MiB buffers
 *   limits unix SECONDS       Unix stream socket, 1 MiB writes
 *   limits tcp SECONDS        TCP over 127.0.0.1, 1 MiB writes
 *   limits pingpong SECONDS   1-byte round trip over a Unix socket
 *
 * Prints one line "NAME VALUE UNIT".  Every loop stops after SECONDS
 * (at most 30) or after a fixed count, whichever comes first, and the
 * writer processes are bounded by alarm() in case the reader dies.
 * bench.py compiles this file into a temporary directory at run time.
 */

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "seconds.h"

#define CHUNK (1024 * 1024)
#define COPY_SIZE (64 * 1024 * 1024)
#define MAX_STREAM_BYTES (1024ULL * 1024 * 1024 * 1024) /* 1 TiB */
#define MAX_ROUND_TRIPS 50000000ULL

/* Copy 64 MiB buffers (larger than any cache here) back and forth. */
static int
limit_memcpy (double seconds)
{
  char *a = malloc (COPY_SIZE), *b = malloc (COPY_SIZE);
  double start, elapsed;
  uint64_t copied = 0, i;

  if (a == NULL || b == NULL) {
    perror ("malloc");
    return 1;
  }
  memset (a, 1, COPY_SIZE);
  memset (b, 2, COPY_SIZE);
  start = now ();
  for (i = 0; i < 100000; i++) {
    if (i & 1)
      memcpy (a, b, COPY_SIZE);
    else
      memcpy (b, a, COPY_SIZE);
    copied += COPY_SIZE;
    if (now () - start >= seconds)
      break;
  }
  elapsed = now () - start;
  /* Use the buffers so the copies cannot be optimised away. */
  if (a[12345] == 42 && b[54321] == 42)
    fputs ("", stderr);
  printf ("memcpy %.1f MiB/s\n", copied / elapsed / CHUNK);
  free (a);
  free (b);
  return 0;
}

/* Child side of a stream test: write 1 MiB chunks until the reader
 * closes its end, MAX_STREAM_BYTES, or the alarm.
 */
static void
stream_write (int fd, double seconds)
{
  char *buf = malloc (CHUNK);
  uint64_t sent = 0;

  if (buf == NULL)
    _exit (1);
  memset (buf, 'x', CHUNK);
  signal (SIGPIPE, SIG_IGN);
  alarm ((unsigned) seconds + 10);
  while (sent < MAX_STREAM_BYTES) {
    ssize_t n = write (fd, buf, CHUNK);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    sent += n;
  }
  _exit (0);
}

/* Parent side: read for SECONDS, then close and reap the writer. */
static int
stream_read (const char *name, int fd, pid_t writer, double seconds)
{
  char *buf = malloc (CHUNK);
  uint64_t got = 0;
  double start, elapsed;
  int status;

  if (buf == NULL) {
    perror ("malloc");
    return 1;
  }
  start = now ();
  while ((elapsed = now () - start) < seconds) {
    ssize_t n = read (fd, buf, CHUNK);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += n;
  }
  elapsed = now () - start;
  close (fd);
  waitpid (writer, &status, 0);
  free (buf);
  printf ("%s %.1f MiB/s\n", name, got / elapsed / CHUNK);
  return 0;
}

static int
limit_unix (double seconds)
{
  int sv[2];
  pid_t pid;

  if (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == -1) {
    perror ("socketpair");
    return 1;
  }
  pid = fork ();
  if (pid == -1) {
    perror ("fork");
    return 1;
  }
  if (pid == 0) {
    close (sv[0]);
    stream_write (sv[1], seconds);
  }
  close (sv[1]);
  return stream_read ("unix", sv[0], pid, seconds);
}

/* Listen on 127.0.0.1 with a port chosen by the kernel; only loopback. */
static int
tcp_listen (struct sockaddr_in *addr)
{
  socklen_t len = sizeof (*addr);
  int fd = socket (AF_INET, SOCK_STREAM, 0);

  if (fd == -1)
    return -1;
  memset (addr, 0, sizeof (*addr));
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl (INADDR_LOOPBACK);
  addr->sin_port = 0;
  if (bind (fd, (struct sockaddr *) addr, sizeof (*addr)) == -1 ||
      listen (fd, 1) == -1 ||
      getsockname (fd, (struct sockaddr *) addr, &len) == -1) {
    close (fd);
    return -1;
  }
  return fd;
}

static int
limit_tcp (double seconds)
{
  struct sockaddr_in addr;
  int lfd, fd;
  pid_t pid;

  lfd = tcp_listen (&addr);
  if (lfd == -1) {
    perror ("listen on 127.0.0.1");
    return 1;
  }
  pid = fork ();
  if (pid == -1) {
    perror ("fork");
    return 1;
  }
  if (pid == 0) {
    close (lfd);
    fd = socket (AF_INET, SOCK_STREAM, 0);
    if (fd == -1 ||
        connect (fd, (struct sockaddr *) &addr, sizeof (addr)) == -1)
      _exit (1);
    stream_write (fd, seconds);
  }
  fd = accept (lfd, NULL, NULL);
  close (lfd);
  if (fd == -1) {
    perror ("accept");
    kill (pid, SIGTERM);
    waitpid (pid, NULL, 0);
    return 1;
  }
  return stream_read ("tcp", fd, pid, seconds);
}

/* Child echoes each byte back until the parent closes its end. */
static void
pingpong_echo (int fd, double seconds)
{
  char c;

  alarm ((unsigned) seconds + 10);
  while (read (fd, &c, 1) == 1)
    if (write (fd, &c, 1) != 1)
      break;
  _exit (0);
}

static int
limit_pingpong (double seconds)
{
  int sv[2];
  pid_t pid;
  uint64_t trips = 0;
  double start, elapsed;
  char c = 'p';

  if (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == -1) {
    perror ("socketpair");
    return 1;
  }
  pid = fork ();
  if (pid == -1) {
    perror ("fork");
    return 1;
  }
  if (pid == 0) {
    close (sv[0]);
    pingpong_echo (sv[1], seconds);
  }
  close (sv[1]);
  start = now ();
  while (trips < MAX_ROUND_TRIPS) {
    if (write (sv[0], &c, 1) != 1 || read (sv[0], &c, 1) != 1)
      break;
    trips++;
    if ((trips & 255) == 0 && now () - start >= seconds)
      break;
  }
  elapsed = now () - start;
  close (sv[0]);
  waitpid (pid, NULL, 0);
  if (trips == 0) {
    fputs ("pingpong: no round trip completed\n", stderr);
    return 1;
  }
  printf ("pingpong %.3f us\n", elapsed / trips * 1e6);
  return 0;
}

int
main (int argc, char *argv[])
{
  double seconds;

  if (argc != 3) {
    fputs ("usage: limits memcpy|unix|tcp|pingpong SECONDS\n", stderr);
    return 2;
  }
  seconds = atof (argv[2]);
  if (seconds <= 0 || seconds > 30) {
    fputs ("limits: SECONDS must be in (0, 30]\n", stderr);
    return 2;
  }
  if (strcmp (argv[1], "memcpy") == 0)
    return limit_memcpy (seconds);
  if (strcmp (argv[1], "unix") == 0)
    return limit_unix (seconds);
  if (strcmp (argv[1], "tcp") == 0)
    return limit_tcp (seconds);
  if (strcmp (argv[1], "pingpong") == 0)
    return limit_pingpong (seconds);
  fprintf (stderr,
           "limits: unknown test %s: use memcpy, unix, tcp or pingpong\n",
           argv[1]);
  return 2;
}

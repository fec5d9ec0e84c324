/* idle_clients: hold many raw NBD clients open on a Unix socket, for
 * bench/idle_clients.py.
 *
 *   idle_clients fill SOCKET N SECONDS    N clients that finish
 *                                         NBD_OPT_GO, then sit idle
 *   idle_clients stall SOCKET N SECONDS   N clients that connect and
 *                                         send nothing
 *
 * Prints one line when done ("held H failed F seconds S"), then waits
 * for a line (or EOF) on stdin, closes every client and prints
 * "closed".  Handshakes are pipelined, WINDOW at a time, so the rate
 * measured is the server's, not a round trip per client.  Bounded:
 * stops after SECONDS, or after FAIL_MAX refused clients.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "seconds.h"

#define WINDOW 128
#define FAIL_MAX 1000
#define REPLY_MAX 512

#define NBDMAGIC UINT64_C (0x4e42444d41474943)
#define IHAVEOPT UINT64_C (0x49484156454F5054)
#define OPT_REPLY_MAGIC UINT64_C (0x0003e889045565a9)
#define OPT_GO 7
#define REP_ACK 1

struct client {
  int fd;
  size_t got;                   /* bytes of the handshake received */
  unsigned char buf[REPLY_MAX];
};

static int
open_client (const struct sockaddr_un *addr)
{
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

  if (fd == -1)
    return -1;
  if (connect (fd, (const struct sockaddr *) addr, sizeof *addr) == -1) {
    int e = errno;

    close (fd);
    errno = e;
    return -1;
  }
  return fd;
}

/* Client flags (fixed newstyle, no zeroes) and OPT_GO for the default
 * export with no info requests: all sent at once, before the greeting.
 */
static int
send_go (int fd)
{
  unsigned char m[26];
  uint32_t flags = htobe32 (3), opt = htobe32 (OPT_GO), len = htobe32 (6);
  uint64_t magic = htobe64 (IHAVEOPT);

  memcpy (m, &flags, 4);
  memcpy (m + 4, &magic, 8);
  memcpy (m + 12, &opt, 4);
  memcpy (m + 16, &len, 4);
  memset (m + 20, 0, 6);        /* name length 0, no info requests */
  return send (fd, m, sizeof m, MSG_NOSIGNAL) == sizeof m ? 0 : -1;
}

/* 1: the handshake is done; 0: more to read; -1: refused or broken. */
static int
parse (struct client *c)
{
  size_t pos = 18;              /* the greeting */

  if (c->got < pos)
    return 0;
  while (c->got >= pos + 20) {
    uint64_t magic;
    uint32_t type, len;

    memcpy (&magic, c->buf + pos, 8);
    memcpy (&type, c->buf + pos + 12, 4);
    memcpy (&len, c->buf + pos + 16, 4);
    if (be64toh (magic) != OPT_REPLY_MAGIC)
      return -1;
    type = be32toh (type);
    if (type == REP_ACK)
      return 1;
    if (type & 0x80000000)
      return -1;
    pos += 20 + be32toh (len);
  }
  return c->got >= sizeof c->buf ? -1 : 0;
}

static void
usage (void)
{
  fprintf (stderr, "usage: idle_clients fill|stall SOCKET N SECONDS\n");
  exit (2);
}

int
main (int argc, char **argv)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  int fill, n, ep, held = 0, failed = 0, pending = 0;
  double limit, start;
  int *fds;
  struct client *cs;
  char line[16];

  if (argc != 5 || strlen (argv[2]) >= sizeof addr.sun_path)
    usage ();
  fill = strcmp (argv[1], "fill") == 0;
  if (!fill && strcmp (argv[1], "stall") != 0)
    usage ();
  strcpy (addr.sun_path, argv[2]);
  n = atoi (argv[3]);
  limit = atof (argv[4]);
  fds = calloc (n, sizeof *fds);
  cs = calloc (WINDOW, sizeof *cs);
  ep = epoll_create1 (EPOLL_CLOEXEC);
  if (n <= 0 || fds == NULL || cs == NULL || ep == -1)
    usage ();
  for (int i = 0; i < WINDOW; i++)
    cs[i].fd = -1;

  start = now ();
  while (held < n && failed < FAIL_MAX && now () - start < limit) {
    struct epoll_event evs[WINDOW];
    int k;

    /* Start clients while the window has room. */
    for (int i = 0; i < WINDOW && held + pending < n; i++) {
      int fd;

      if (cs[i].fd != -1)
        continue;
      fd = open_client (&addr);
      if (fd == -1) {
        if (errno != EAGAIN)    /* EAGAIN: the backlog is full */
          failed++;
        break;
      }
      if (!fill) {
        fds[held++] = fd;
        continue;
      }
      if (send_go (fd) == -1) {
        close (fd);
        failed++;
        continue;
      }
      cs[i].fd = fd;
      cs[i].got = 0;
      epoll_ctl (ep, EPOLL_CTL_ADD, fd, &(struct epoll_event) {
          .events = EPOLLIN, .data.u32 = i });
      pending++;
    }
    if (pending == 0) {
      if (held + pending < n)
        usleep (1000);          /* backlog full: let the server accept */
      continue;
    }
    k = epoll_wait (ep, evs, WINDOW, 100);
    for (int e = 0; e < k; e++) {
      struct client *c = &cs[evs[e].data.u32];
      ssize_t r = recv (c->fd, c->buf + c->got, sizeof c->buf - c->got, 0);
      int done;

      if (r == -1 && errno == EAGAIN)
        continue;
      if (r > 0)
        c->got += r;
      done = r > 0 ? parse (c) : -1;
      if (done == 0)
        continue;
      epoll_ctl (ep, EPOLL_CTL_DEL, c->fd, NULL);
      if (done == 1)
        fds[held++] = c->fd;
      else {
        close (c->fd);
        failed++;
      }
      c->fd = -1;
      pending--;
    }
  }
  for (int i = 0; i < WINDOW; i++)
    if (cs[i].fd != -1)
      close (cs[i].fd);
  printf ("held %d failed %d seconds %.6f\n", held, failed, now () - start);
  fflush (stdout);
  if (fgets (line, sizeof line, stdin) == NULL && ferror (stdin))
    perror ("idle_clients: stdin");  /* close all the same */
  for (int i = 0; i < held; i++)
    close (fds[i]);
  printf ("closed\n");
  return 0;
}

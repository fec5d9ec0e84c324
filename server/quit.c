/* nbdsrv: the quit flag and a pipe that becomes readable when it is set.
 *
 * Signal handlers may only set the flag and write to the pipe; the
 * accept loop and nbdkit_nanosleep poll the read end.
 */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

volatile int quit;
int quit_fd = -1;
static int quit_wfd = -1;

void
quit_init (void)
{
  int fds[2];

  if (pipe2 (fds, O_CLOEXEC | O_NONBLOCK) == -1) {
    perror ("nbdsrv: pipe");
    exit (EXIT_FAILURE);
  }
  quit_fd = fds[0];
  quit_wfd = fds[1];
}

/* Async-signal-safe. */
void
quit_set (void)
{
  char c = 0;

  if (!quit) {
    quit = 1;
    if (write (quit_wfd, &c, 1) == -1) {
      /* The pipe is non-blocking and written once; nothing to do. */
    }
  }
}

void
nbdkit_shutdown (void)
{
  quit_set ();
}

/* nbdsrv: the server's own stdin and stdout once it serves.
 *
 * When configuration is over, before get_ready, fds 0 and 1 are
 * pointed at /dev/null, as nbdkit does in every mode: whatever a
 * plugin prints or reads from then on cannot reach a terminal, a
 * pipe the caller waits on, or (with -s) the client's NBD stream, and
 * a plugin may rely on it.  The originals are kept above 2, with
 * close-on-exec, for the three users that still need them: -s serves
 * its client on them, --run hands them to its command, and
 * --print-uri writes there.
 */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "internal.h"

int stdio_in = -1, stdio_out = -1;

/* Point DEVNULL (an open /dev/null) at TARGET unless it is TARGET. */
static void
stdio_null_onto (int devnull, int target)
{
  if (devnull != target)
    dup2 (devnull, target);
}

int
stdio_detach (void)
{
  int devnull;

  /* Flushing stdin puts the offset of a seekable stdin back where the
   * plugin stopped reading (glibc buffers ahead), so the --run command
   * reads on from there, as with nbdkit.
   */
  fflush (stdin);
  fflush (stdout);
  /* -1 if the caller closed them; the users then have nothing. */
  stdio_in = fcntl (STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
  stdio_out = fcntl (STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
  devnull = open ("/dev/null", O_RDWR);
  if (devnull == -1) {
    server_error ("/dev/null: %m: the server needs it for its stdin "
                  "and stdout");
    return -1;
  }
  stdio_null_onto (devnull, STDIN_FILENO);
  stdio_null_onto (devnull, STDOUT_FILENO);
  if (devnull > STDOUT_FILENO)
    close (devnull);
  return 0;
}
